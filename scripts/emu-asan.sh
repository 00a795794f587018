#!/usr/bin/env bash
# Runs the emu runtime tests and the backend tests (every kernel on emu) with AddressSanitizer
# on the C++ side (the kernels and the emulation header), then checks that ASan really is
# active by running a kernel that writes past the end of its buffer and expecting the
# heap-buffer-overflow report.
#
# How: RQTREE_EMU_ASAN=1 makes build_support/emu.rs compile the C++ with -fsanitize=address
# and link libasan. The Rust test binaries are not instrumented, so libasan must come first in
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

libasan=$("${CXX:-g++}" -print-file-name=libasan.so)
if [ ! -e "$libasan" ]; then
  echo "emu-asan: libasan.so not found (install the compiler's libasan)" >&2
  exit 1
fi
host=$(rustc -vV | sed -n 's/^host: //p')
runner_var="CARGO_TARGET_$(echo "$host" | tr 'a-z-' 'A-Z_')_RUNNER"
export "$runner_var"="env LD_PRELOAD=$libasan"
export RQTREE_EMU_ASAN=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/asan}"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0}"

cargo test --features emu,corosensei/sanitizer --test emu_runtime --test backends -- "$@"

echo "emu-asan: checking that AddressSanitizer catches an out-of-bounds kernel write"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if RQTREE_EMU_ASAN_PROBE=1 cargo test --features emu,corosensei/sanitizer --test emu_runtime -- --exact asan_catches_heap_overflow >"$log" 2>&1; then
  cat "$log"
  echo "emu-asan: FAILED: the out-of-bounds write was not caught" >&2
  exit 1
fi
if ! grep -q "heap-buffer-overflow" "$log"; then
  cat "$log"
  echo "emu-asan: FAILED: no heap-buffer-overflow report" >&2
  exit 1
fi
grep -m1 "ERROR: AddressSanitizer" "$log"
echo "emu-asan: ok"
