#!/usr/bin/env bash
# Runs the emu runtime tests and the backend tests (every kernel on emu) with AddressSanitizer
# on the C++ side (the kernels and the emulation header), then checks that ASan really is
# active by running a kernel that writes past the end of its buffer and expecting the
# heap-buffer-overflow report, and that UBSan's alignment check (a misaligned vector access
# faults on a GPU) is active by running a kernel that loads a 16-byte vector from an address
# 4 bytes past a 16-byte boundary, and that writes past a static __shared__ array (a plain
# static under ASan, which puts no redzones around thread-local storage) and past a launch's
# dynamic shared memory through a raw pointer (the rest of the worker's buffer is poisoned)
# are reported.
#
# How: RQTREE_EMU_ASAN=1 makes build_support/emu.rs compile the C++ with -fsanitize=address
# and -fsanitize=alignment (not recoverable), and link libasan and libubsan. The Rust test binaries are not instrumented, so libasan must come first in
# the process: it is LD_PRELOADed through cargo's target runner (only the test binaries get
# it, not cargo or rustc). Leak detection is off (the Rust side is not instrumented).
# corosensei's `sanitizer` feature tells ASan about every fiber switch, so stack accesses on
# fiber stacks are checked without "ignoring __asan_handle_no_return" false positives.
# Builds go to target/asan so the normal build is not invalidated.
#
#   scripts/emu-asan.sh            # emu runtime and backend tests under ASan
#   scripts/emu-asan.sh shuffle    # extra arguments filter the tests
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/lib/preload-sanitizer.sh
source scripts/lib/preload-sanitizer.sh
preload_sanitizer asan
export RQTREE_EMU_ASAN=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/asan}"
# allocator_may_return_null: an absurd allocation is refused (null) as without ASan, so
# fallible reservations (`try_reserve`, the check of a huge `B × k` result) report it.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:allocator_may_return_null=1}"

cargo test --features emu,corosensei/sanitizer --test emu_runtime --test backends -- "$@"

# probe ENV[=VALUE] TEST PATTERN WHAT: runs the probe test TEST with ENV=VALUE (default 1); it
# must fail with PATTERN.
probe() {
  local env=$1 test=$2 pattern=$3 what=$4
  [[ "$env" == *=* ]] || env="$env=1"
  echo "emu-asan: checking that the sanitizers catch $what"
  if env "$env" cargo test --features emu,corosensei/sanitizer --test emu_runtime -- --exact "$test" >"$log" 2>&1; then
    cat "$log"
    echo "emu-asan: FAILED: $what was not caught" >&2
    exit 1
  fi
  if ! grep -q "$pattern" "$log"; then
    cat "$log"
    echo "emu-asan: FAILED: no \"$pattern\" report" >&2
    exit 1
  fi
  grep -m1 "$pattern" "$log"
}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
probe RQTREE_EMU_ASAN_PROBE asan_catches_heap_overflow "heap-buffer-overflow" \
  "an out-of-bounds kernel write"
probe RQTREE_EMU_ALIGN_PROBE ubsan_catches_misaligned_vector "misaligned address" \
  "a misaligned 16-byte vector load"
probe RQTREE_EMU_SHARED_PROBE=static asan_catches_shared_overflow "global-buffer-overflow" \
  "a write past a static __shared__ array"
probe RQTREE_EMU_SHARED_PROBE=dynamic asan_catches_shared_overflow "use-after-poison" \
  "a write past the dynamic shared memory through a raw pointer"
echo "emu-asan: ok"
