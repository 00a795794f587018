#!/usr/bin/env bash
# Runs the emu runtime, backend (every kernel on emu) and learn (the soft-assignment kernels)
# tests with ThreadSanitizer on the C++ side (the kernels and the emulation header), then
# checks that it reports the races a GPU would have and the fiber scheduler hides: a missing
# __syncthreads, a shuffle in place of __syncwarp, and asynchronous copies landing in slots
# other threads may still read.
#
# How: RQTREE_EMU_TSAN=1 makes build_support/emu.rs compile the C++ with -fsanitize=thread,
# link libtsan and set the cfg `rq_emu_tsan`, under which the scheduler announces every thread
# of a block as a ThreadSanitizer fiber and adds exactly the happens-before edges of CUDA's
# memory model (barriers, __syncwarp, block and launch boundaries; src/device/emu/tsan.rs).
# The Rust side is not instrumented, so libtsan is LD_PRELOADed through cargo's target runner
# (only the test binaries get it). halt_on_error: the first race fails the test binary.
# Builds go to target/tsan so the normal build is not invalidated.
#
#   scripts/emu-tsan.sh              # emu runtime, backend and learn tests under ThreadSanitizer
#   scripts/emu-tsan.sh greedy       # extra arguments filter the tests
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/lib/preload-sanitizer.sh
source scripts/lib/preload-sanitizer.sh
preload_sanitizer tsan
export RQTREE_EMU_TSAN=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/tsan}"
# ignore_interceptors_accesses: the Rust side is not instrumented, so ThreadSanitizer sees its
# calls of intercepted functions (memcpy, free, ...) but not the atomics that order them, and
# would report races between them that are not there; the emulator annotates the kernel
# accesses it makes through memcpy itself (rq_emu::note_access). report_signal_unsafe: the
# Rust side's signal handlers are not instrumented either.
export TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1:ignore_interceptors_accesses=1:report_signal_unsafe=0}"

cargo test --features emu --test emu_runtime --test backends --test learn -- "$@"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
for probe in barrier syncwarp async; do
  echo "emu-tsan: checking that ThreadSanitizer reports the $probe probe's race"
  if RQTREE_EMU_TSAN_PROBE=$probe cargo test --features emu --test emu_runtime -- --exact tsan_reports_races >"$log" 2>&1; then
    cat "$log"
    echo "emu-tsan: FAILED: the $probe probe's race was not reported" >&2
    exit 1
  fi
  if ! grep -q "WARNING: ThreadSanitizer: data race" "$log"; then
    cat "$log"
    echo "emu-tsan: FAILED: the $probe probe failed without a data-race report" >&2
    exit 1
  fi
  grep -m1 -A3 "WARNING: ThreadSanitizer: data race" "$log"
done
echo "emu-tsan: ok"
