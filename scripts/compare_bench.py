#!/usr/bin/env python3
"""Merges `rqtree bench --json` and `benches/torch_baseline.py --json` into one table:
operation, rqtree ms (whole call; kernels alone in brackets), torch ms, speed-up of rqtree
over torch on the whole call and on the kernels alone (torch's tensors stay on the device,
so its time compares with rqtree's kernels; rqtree's whole call adds its host transfers),
and each side's fraction of the roofline floor. The like-for-like figure lies between the
two: rqtree's kernel time is the sum of its kernels' own event times, without the gaps
between launches that torch's events (around the whole sequence) include. A rqtree
variant row (`assign_tc`, `exact_topk_tc`: the tensor-core screening; `fused_topk_walk`: the
range-walking fused kernel) is set against torch's base row.

    python3 scripts/compare_bench.py RQTREE_JSON TORCH_JSON

A missing or unreadable file leaves its columns as "-" (and says why); the exit status is 0
whenever at least one side could be read.
"""

import json
import sys

FP32_PEAK = 67e12


def load(path, what):
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        print(f"compare_bench: no {what} results ({e.strerror}: {path})", file=sys.stderr)
        return {}
    # The JSON object is the last non-empty line (anything before it is diagnostics).
    lines = [l for l in text.splitlines() if l.strip().startswith("{")]
    if not lines:
        print(f"compare_bench: {path} holds no JSON object ({what})", file=sys.stderr)
        return {}
    try:
        doc = json.loads(lines[-1])
    except json.JSONDecodeError as e:
        print(f"compare_bench: {path}: {e} ({what})", file=sys.stderr)
        return {}
    return {r["op"]: r for r in doc.get("rows", []) if "op" in r}


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    ours, theirs = load(argv[1], "rqtree"), load(argv[2], "torch")
    if not ours and not theirs:
        print("compare_bench: nothing to compare", file=sys.stderr)
        return 1
    ops = list(ours) + [op for op in theirs if op not in ours]
    head = f"{'op':<24} {'rqtree ms':>22} {'torch ms':>10} {'speed-up':>9} {'kernels':>8} {'rq floor':>9} {'torch floor':>12}"
    print(head)
    print("-" * len(head))
    for op in ops:
        # A variant row of rqtree (`assign_tc`, `exact_topk_tc`, `fused_topk_walk`) is set
        # against torch's row of its base op.
        base = op.removesuffix("_tc").removesuffix("_walk")
        r, t = ours.get(op, {}), theirs.get(op, theirs.get(base, {}))
        rms, tms = r.get("ms"), t.get("ms")
        kms = r.get("kernel_ms")
        rq = fmt(rms, ".3f") + (f" [{kms:.3f}]" if kms is not None else "")
        speed = tms / rms if rms and tms else None
        kspeed = tms / kms if kms and tms else None
        rf, tf = r.get("floor_fraction"), t.get("floor_fraction")
        print(f"{op:<24} {rq:>22} {fmt(tms, '.3f'):>10} {fmt(speed, '.2f') + ('x' if speed else ''):>9} "
              f"{fmt(kspeed, '.2f') + ('x' if kspeed else ''):>8} "
              f"{fmt(rf and 100 * rf, '.2f') + ('%' if rf else ''):>9} "
              f"{fmt(tf and 100 * tf, '.2f') + ('%' if tf else ''):>12}")
    print("speed-up = torch ms / rqtree ms (whole call); kernels = torch ms / rqtree kernel ms; "
          "[..] = rqtree kernels alone; "
          "floor = max(bytes/4.3 TB/s, flops/67 TFLOP/s fp32) / time")
    # Rows whose FLOPs run on another unit (rqtree's tensor-core screenings: TF32).
    for op, r in ours.items():
        peak = r.get("peak_flops")
        if peak is not None and peak != FP32_PEAK:
            print(f"  {op} floor: flops/{peak / 1e12:.1f} TFLOP/s (tensor cores)")
    # Where rqtree's kernel time goes in operations that launch several kernels.
    for op in ours:
        kernels = ours[op].get("kernels") or []
        if len(kernels) > 1:
            parts = ", ".join(f"{k['name']} {k['ms']:.3f} ({k['launches']}x)" for k in kernels)
            print(f"  {op} kernels (ms): {parts}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
