#!/usr/bin/env bash
# The kernels under NVIDIA's compute-sanitizer on a GPU machine: `scripts/gpu-bundle.sh` puts
# this script in the bundle as `sanitize.sh`, next to the test binaries it runs. Each tool
# runs the cuda cases of the backends tests (REQUIRE_GPU=1) once:
#   racecheck  shared-memory hazards between the threads of a block (what scripts/emu-tsan.sh
#              checks on the emulator, here on the hardware's own scheduling);
#   synccheck  barriers and warp synchronisation used illegally (divergent __syncthreads,
#              __syncwarp masks);
#   memcheck   out-of-bounds and misaligned global and shared accesses.
# Writes one log per tool to $OUT and prints a line per tool with its error summary; exits 1
# when a tool reports an error or fails.
#
#   OUT=dir sanitize.sh                          # all three tools (default ./out-sanitize)
#   TOOLS="racecheck" TEST_FILTER=cuda_options sanitize.sh
#   STEP_TIMEOUT=s                               # limit of each tool's run (default 300 s)
#   COMPUTE_SANITIZER=path                       # else PATH, $CUDA_HOME/bin, /usr/local/cuda/bin
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${OUT:-./out-sanitize}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export REQUIRE_GPU=1
TOOLS="${TOOLS:-racecheck synccheck memcheck}"
FILTER="${TEST_FILTER-cuda}"
LIMIT="${STEP_TIMEOUT:-300}"

cs="${COMPUTE_SANITIZER:-}"
if [[ -z "$cs" ]]; then
  for c in "$(command -v compute-sanitizer || true)" "${CUDA_HOME:-/nonexistent}/bin/compute-sanitizer" \
    /usr/local/cuda/bin/compute-sanitizer; do
    if [[ -n "$c" && -x "$c" ]]; then
      cs="$c"
      break
    fi
  done
fi
if [[ -z "$cs" || ! -x "$cs" ]]; then
  echo "sanitize: compute-sanitizer not found (${cs:-set COMPUTE_SANITIZER})" | tee "$OUT/sanitize.txt"
  exit 1
fi
tests="$HERE/tests/backends"
[[ -x "$tests" ]] || { echo "sanitize: no test binary at $tests" >&2; exit 1; }

status=0
: >"$OUT/sanitize.txt"
for tool in $TOOLS; do
  start=$SECONDS
  log="$OUT/sanitize-$tool.log"
  # Test binaries run from the output folder (some tests write temporary files).
  # shellcheck disable=SC2086
  (cd "$OUT" && timeout "$LIMIT" "$cs" --tool "$tool" --error-exitcode 86 --print-limit 20 \
    "$tests" $FILTER --test-threads=1) >"$log" 2>&1
  rc=$?
  summary="$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -1)"
  tests_line="$(grep -E '^test result:' "$log" | tail -1)"
  if [[ $rc -eq 0 ]]; then
    line="PASS $tool: ${summary:-no summary} | ${tests_line:-no test result} ($((SECONDS - start)) s)"
  else
    line="FAIL $tool (exit $rc): ${summary:-see $log} | ${tests_line:-no test result} ($((SECONDS - start)) s)"
    status=1
  fi
  echo "$line" | tee -a "$OUT/sanitize.txt"
done
exit $status
