#!/usr/bin/env python3
"""Merge `rqtree eval --json` and `faiss_baseline.py --json` into the markdown recall table.

For every rqtree beam setting, FAISS IVF-Flat's recall@100 at the same mean number of
candidates scanned per query is interpolated linearly between its measured nprobe rows.
Usage: recall_table.py RQTREE.json FAISS.json [--build-json BUILD.json]
"""
import argparse
import json


def bracket(rows, cand):
    """The two rows, adjacent in candidates, whose candidates/query bracket `cand`; None outside."""
    pts = sorted(rows, key=lambda r: r["candidates"])
    for r0, r1 in zip(pts, pts[1:]):
        if r0["candidates"] <= cand <= r1["candidates"]:
            return r0, r1
    return None


def interp(rows, cand, key):
    """`key` of the rows (a field name or a function of a row) interpolated linearly in
    candidates/query at `cand`, between the two bracketing rows; None outside the rows."""
    get = key if callable(key) else (lambda r: r[key])
    b = bracket(rows, cand)
    if b is None:
        return None
    (c0, v0), (c1, v1) = ((r["candidates"], get(r)) for r in b)
    return v0 if c1 == c0 else v0 + (v1 - v0) * (cand - c0) / (c1 - c0)


def fmt(v, spec):
    return "–" if v is None else format(v, spec)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rqtree")
    ap.add_argument("faiss")
    ap.add_argument("--build-json")
    a = ap.parse_args()
    rq = json.load(open(a.rqtree))
    fa = json.load(open(a.faiss))
    out = []
    if a.build_json:
        b = json.load(open(a.build_json))
        out.append(f"rqtree index: {b['items']} items, d = {b['dim']}, codes {b['codes']}, "
                   f"nodes per depth {b['nodes']}, built in {b['build_s']:.1f} s.\n")
    out.append(f"rqtree {rq['backend']} backend, rerank {rq['rerank']}, {rq['queries']} queries; "
               f"FAISS {fa['faiss_version']} IndexIVFFlat nlist {fa['nlist']}, "
               f"{fa['threads']} threads, k = {fa['k']}.\n")
    out.append("| rqtree beam | candidates/query | recall@10 | recall@100 | queries/s "
               "| FAISS recall@100 at equal candidates | difference |")
    out.append("|---|---:|---:|---:|---:|---:|---:|")
    for r in rq["rows"]:
        f = interp(fa["rows"], r["candidates"], "recall100")
        diff = None if f is None else r["recall"]["100"] - f
        out.append(f"| {','.join(map(str, r['beam']))} | {r['candidates']:.0f} "
                   f"| {r['recall']['10']:.4f} | {r['recall']['100']:.4f} | {r['qps']:.0f} "
                   f"| {fmt(f, '.4f')} | {fmt(diff, '+.4f')} |")
    out.append("\nFAISS IVF-Flat rows as measured:\n")
    out.append("| nprobe | candidates/query | recall@10 | recall@100 | queries/s |")
    out.append("|---:|---:|---:|---:|---:|")
    for r in fa["rows"]:
        out.append(f"| {r['nprobe']} | {r['candidates']:.0f} | {r['recall10']:.4f} "
                   f"| {r['recall100']:.4f} | {r['qps']:.0f} |")
    out.append(f"| flat (exact) | {fa['n_items']} | 1.0000 | 1.0000 | {fa['flat_qps']:.0f} |")
    first_rq = next((r for r in rq["rows"] if r["recall"]["100"] >= 0.95), None)
    first_fa = next((r for r in fa["rows"] if r["recall100"] >= 0.95), None)
    if first_rq and first_fa:
        out.append(f"\nAt recall@100 ≥ 0.95: rqtree beam {','.join(map(str, first_rq['beam']))} "
                   f"reaches {first_rq['recall']['100']:.4f} at {first_rq['qps']:.0f} queries/s "
                   f"({first_rq['candidates']:.0f} candidates); FAISS nprobe {first_fa['nprobe']} "
                   f"reaches {first_fa['recall100']:.4f} at {first_fa['qps']:.0f} queries/s "
                   f"({first_fa['candidates']:.0f} candidates).")
    print("\n".join(out))


if __name__ == "__main__":
    main()
