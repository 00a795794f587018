#!/usr/bin/env python3
"""Static SASS counts of a kernel's hot loop, without a GPU (DEVELOPERS.md, "Reading the SASS").

Compiles one kernels/*.cu file for sm_90 with the project's nvcc (the flags build.rs uses),
disassembles it with nvdisasm, and prints for the named kernel the loop (a backward branch and
its target) densest in instructions whose opcode starts with MARKER: its instruction count
and the counts per opcode. These are the figures kernels/README.md quotes
for loops that have not been timed; they count instructions, not time.

    python3 scripts/sass-loop.py kernels/greedy_tc.cu rq_greedy_rows64_tc HMMA
    python3 scripts/sass-loop.py kernels/greedy.cu rq_greedy_rows64 FFMA

nvcc: $NVCC or .cuda-toolchain/site/nvidia/cu13/bin/nvcc. nvdisasm: $NVDISASM, else PATH,
else a `nvidia-cuda-nvdisasm==13.2.51` wheel in /tmp/venv (pip install into a throwaway venv).
"""
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)")
BRANCH = re.compile(r"\bBRA\b.*`\((\.L_x_\d+)\)")


def tool(env, *candidates):
    if os.environ.get(env):
        return os.environ[env]
    for c in candidates:
        for path in sorted(glob.glob(c)):
            if os.access(path, os.X_OK):
                return path
    sys.exit(f"sass-loop: no {env.lower()} (set ${env})")


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    cu, kernel, marker = sys.argv[1:]
    nvcc = tool("NVCC", os.path.join(ROOT, ".cuda-toolchain/site/nvidia/cu13/bin/nvcc"))
    nvdisasm = tool(
        "NVDISASM",
        shutil.which("nvdisasm") or "",
        "/tmp/venv/lib/python3.*/site-packages/nvidia/cu13/bin/nvdisasm",
    )
    inc = os.path.join(os.path.dirname(os.path.dirname(nvcc)), "include")
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "k.cubin")
        subprocess.run(
            [nvcc, "-arch=sm_90", "-cubin", "-O3", "-fmad=false", "-std=c++17", f"-I{inc}",
             f"-I{os.path.join(ROOT, 'kernels')}", "-o", cubin, cu],
            check=True, stderr=subprocess.DEVNULL)
        sass = subprocess.run([nvdisasm, "-c", cubin], check=True, capture_output=True,
                              text=True).stdout.split("\n")
    # The kernel's section: from its .text label to the next section.
    lines, inside = [], False
    for line in sass:
        s = line.strip()
        if s.startswith(f".text.{kernel}:"):
            inside = True
            continue
        if inside and s.startswith((".section", ".text.")):
            break
        if inside:
            lines.append(s)
    if not lines:
        sys.exit(f"sass-loop: no kernel {kernel} in {cu}")
    labels = {s[:-1]: i for i, s in enumerate(lines) if re.fullmatch(r"\.L_x_\d+:", s)}
    marks = [i for i, s in enumerate(lines)
             if (m := INSN.search(s)) and m.group(3).startswith(marker)]
    if not marks:
        sys.exit(f"sass-loop: no {marker} in {kernel}")
    # Loops: a branch back to a label above it; the smallest one around a marker.
    loops = []
    for i, s in enumerate(lines):
        m = BRANCH.search(s)
        if m and m.group(1) in labels and labels[m.group(1)] < i:
            loops.append((labels[m.group(1)], i))
    around = [(b, e) for b, e in loops if any(b <= k <= e for k in marks)]
    if not around:
        sys.exit(f"sass-loop: no loop around {marker} in {kernel}")
    # The loop densest in marker instructions (the hot one: not an outer loop around it, nor
    # a remainder loop).
    b, e = max(around, key=lambda be: sum(be[0] <= k <= be[1] for k in marks)
               / (be[1] - be[0] + 1))
    ops = Counter(INSN.search(s).group(3).split(".")[0] for s in lines[b:e + 1]
                  if INSN.search(s))
    print(f"{kernel}: loop around {marker}: {sum(ops.values())} instructions")
    print("  " + ", ".join(f"{op} {n}" for op, n in ops.most_common()))


if __name__ == "__main__":
    main()
