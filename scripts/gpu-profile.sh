#!/usr/bin/env bash
# Where the time of rqtree's GPU operations goes, on a GPU machine (copied into the GPU
# bundle by scripts/gpu-bundle.sh; run from the bundle folder):
#   1. the bench at the target sizes with RQTREE_TRACE=1: per timed call, the host time in
#      allocations, uploads, launches, synchronisations and downloads (trace.log);
#   2. Nsight Compute (`ncu`, when present and allowed) on one launch of each main kernel:
#      speed of light, occupancy, warp stall reasons (ncu-<kernel>.txt).
#
#   3. with SOURCE=1, per kernel also the SASS source page (every instruction's executed
#      count and warp-stall samples, CSV, gzipped: ncu-<kernel>-sass.csv.gz): where the
#      instructions and stalls of a kernel actually are.
#
#   OUT=dir rqtree-gpu/profile.sh        # logs in $OUT (default ./out)
#   KERNELS="rq_beam_step:search ..."    # kernel:bench-group pairs to profile
#   SOURCE=1                             # add the SASS source pages
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${OUT:-./out}"
mkdir -p "$OUT"
BIN="$HERE/bin/rqtree"
LIMIT="${STEP_TIMEOUT:-120}"
KERNELS="${KERNELS:-rq_greedy_rows64:assign rq_fused_scan_l3:fused rq_beam_step:search rq_exact_scores:exact}"

RQTREE_TRACE=1 timeout "$LIMIT" "$BIN" bench --backend cuda --targets --json \
  >"$OUT/trace.json" 2>"$OUT/trace.log"
echo "== trace (exit $?): last timed call of each operation"
python3 - "$OUT/trace.log" <<'PY'
import sys
last = {}
op = None
for line in open(sys.argv[1]):
    if line.startswith("rqtree-trace:"):
        pending = line.strip()
    elif line.startswith("bench:"):
        op = line.split()[1]
        last[op] = pending
for op, line in last.items():
    print(f"{op:<14} {line.removeprefix('rqtree-trace: ')}")
PY

NCU="$(command -v ncu || echo /usr/local/cuda/bin/ncu)"
if [[ ! -x "$NCU" ]]; then
  echo "== ncu not found: no kernel profiles"
  exit 0
fi
for pair in $KERNELS; do
  kernel="${pair%%:*}" group="${pair##*:}"
  timeout "$LIMIT" "$NCU" --kernel-name "$kernel" --launch-skip 2 --launch-count 1 \
    --section SpeedOfLight --section Occupancy --section LaunchStats \
    --section WarpStateStats --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
    "$BIN" bench --backend cuda --targets --only "$group" >"$OUT/ncu-$kernel.txt" 2>&1
  echo "== ncu $kernel (exit $?)"
  if [[ "${SOURCE:-0}" == 1 ]]; then
    timeout "$LIMIT" "$NCU" --kernel-name "$kernel" --launch-skip 2 --launch-count 1 \
      --section SourceCounters --section WarpStateStats --import-source no \
      -o "$OUT/ncu-$kernel" -f "$BIN" bench --backend cuda --targets --only "$group" >/dev/null 2>&1 &&
      "$NCU" -i "$OUT/ncu-$kernel.ncu-rep" --page source --csv --print-source sass \
        | gzip >"$OUT/ncu-$kernel-sass.csv.gz"
    echo "== ncu $kernel SASS source page (exit $?)"
    rm -f "$OUT/ncu-$kernel.ncu-rep"
  fi
  grep -E "Duration|Compute \(SM\) Throughput|Memory Throughput|DRAM Throughput|Achieved Occupancy|Registers Per|Issue Slots Busy|Executed Ipc Active|Warp Cycles Per Issued|L1/TEX Hit|L2 Hit|stall|Stall|bank|ERR_NVGPUCTRPERM|==ERROR==" \
    "$OUT/ncu-$kernel.txt" | head -30
done
