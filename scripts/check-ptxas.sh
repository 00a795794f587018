#!/usr/bin/env bash
# Fails when a kernel spills registers or uses a stack frame on sm_90, unless allow-listed in
# kernels/ptxas-allow.txt (lines `kernel_name  reason`; '#' comments).
#
#   scripts/check-ptxas.sh [REPORT]
#
# REPORT is a `ptxas -v` report (e.g. target/*/build/rqtree-*/out/ptxas.txt from a
# `--features cuda` build). Without one the script compiles kernels/*.cu itself with the
# nvcc that build.rs would use ($NVCC, $CUDA_HOME/bin, PATH, .cuda-toolchain/).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ALLOW="$ROOT/kernels/ptxas-allow.txt"

if [[ $# -ge 1 ]]; then
  REPORT="$1"
else
  NVCC_BIN="${NVCC:-}"
  if [[ -z "$NVCC_BIN" && -n "${CUDA_HOME:-}" && -x "$CUDA_HOME/bin/nvcc" ]]; then NVCC_BIN="$CUDA_HOME/bin/nvcc"; fi
  if [[ -z "$NVCC_BIN" ]]; then NVCC_BIN="$(command -v nvcc || true)"; fi
  if [[ -z "$NVCC_BIN" && -x "$ROOT/.cuda-toolchain/site/nvidia/cu13/bin/nvcc" ]]; then
    NVCC_BIN="$ROOT/.cuda-toolchain/site/nvidia/cu13/bin/nvcc"
  fi
  [[ -n "$NVCC_BIN" ]] || { echo "check-ptxas: no nvcc (run scripts/install-cuda-toolchain.sh)" >&2; exit 2; }
  INC=()
  TCROOT="$(dirname "$(dirname "$NVCC_BIN")")"
  for d in "$TCROOT/include" "$TCROOT/include/cccl"; do [[ -d "$d" ]] && INC+=("-I$d"); done
  REPORT="$(mktemp)"
  trap 'rm -f "$REPORT" "$REPORT.cubin"' EXIT
  for f in "$ROOT"/kernels/*.cu; do
    echo "# $f" >>"$REPORT"
    "$NVCC_BIN" -cubin -std=c++17 -O3 -fmad=false -arch=sm_90 -Xptxas -v -I"$ROOT/kernels" "${INC[@]}" \
      "$f" -o "$REPORT.cubin" 2>>"$REPORT"
  done
fi

awk -v allowfile="$ALLOW" '
  BEGIN {
    while ((getline line < allowfile) > 0) {
      if (line ~ /^[ \t]*(#|$)/) continue
      split(line, f, /[ \t]+/); allow[f[1]] = 1
    }
  }
  /Compiling entry function/ { match($0, /'\''[^'\'']+'\''/); fn = substr($0, RSTART + 1, RLENGTH - 2); arch = $NF; next }
  /bytes stack frame/ {
    stack = $1; spst = $5; spld = $9
    bad = (stack + 0 > 0 || spst + 0 > 0 || spld + 0 > 0)
    line = sprintf("%-22s %-7s stack %4d  spill stores %4d  spill loads %4d", fn, arch, stack, spst, spld)
    if (bad && !(fn in allow)) { print "FAIL " line; fails++ }
    else if (bad) { print "ALLOWED " line }
    else { print "ok   " line }
    next
  }
  /Used [0-9]+ registers/ { match($0, /Used [0-9]+ registers/); print "     " fn " " substr($0, RSTART, RLENGTH) }
  END { if (fails) { print fails " kernel(s) spill or use a stack frame"; exit 1 } }
' "$REPORT"
