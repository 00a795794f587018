#!/usr/bin/env python3
"""FAISS IVFFlat (inner product) baseline on the GCIDE dev set.

Builds a FAISS ``IndexIVFFlat`` (METRIC_INNER_PRODUCT) over the item vectors,
then for each nprobe measures recall@10 / recall@100 against the exact
ground truth, the mean number of candidates scanned per query (sum of the
inverted-list sizes of the probed lists) and queries/s (best of N runs of the
whole query batch, k=100).  One exact ``IndexFlatIP`` row gives the brute-force
qps for reference.

Examples (from the repo root):

    python scripts/faiss_baseline.py --threads 2 --json faiss.json
    python scripts/faiss_baseline.py --interpolate --at 1000,2000,4000
    # interpolate from an earlier run without re-measuring:
    python scripts/faiss_baseline.py --from-json faiss.json --interpolate --at 1000,2000

Data paths default to ``../shared/data/...`` relative to the repo root (the
parent of this script's directory).  Vectors are float16 on disk and are
cast to float32 for FAISS (FAISS has no float16 IVFFlat).
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(REPO_ROOT, "..", "shared", "data")


def default_path(name):
    return os.path.normpath(os.path.join(DATA_DIR, name))


def parse_int_list(s):
    return [int(v) for v in s.split(",") if v.strip()]


def parse_float_list(s):
    return [float(v) for v in s.split(",") if v.strip()]


def recall_at(I, gt, k):
    """Mean over queries of |retrieved top-k ∩ gt top-k| / k."""
    hits = 0
    for row, g in zip(I[:, :k], gt[:, :k]):
        hits += len(np.intersect1d(row, g, assume_unique=False))
    return hits / (k * I.shape[0])


def best_time(fn, repeats):
    best = math.inf
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def interpolate_recall(rows, budgets, key="recall100"):
    """Linear interpolation of `key` (default recall@100) in mean candidates
    scanned between measured rows.  Budgets outside the measured range give
    None (no extrapolation)."""
    pts = sorted((r["candidates"], r[key]) for r in rows)
    xs = np.array([p[0] for p in pts], dtype=np.float64)
    ys = np.array([p[1] for p in pts], dtype=np.float64)
    out = []
    for b in budgets:
        if b < xs[0] or b > xs[-1]:
            out.append({"candidates": b, key: None})
        else:
            out.append({"candidates": b, key: float(np.interp(b, xs, ys))})
    return out


def measure(args):
    import faiss

    faiss.omp_set_num_threads(args.threads)

    xb = np.ascontiguousarray(np.load(args.items, allow_pickle=False).astype(np.float32))
    xq = np.ascontiguousarray(np.load(args.queries, allow_pickle=False).astype(np.float32))
    gt = np.load(args.gt, allow_pickle=False)
    if args.max_queries:
        xq, gt = xq[: args.max_queries], gt[: args.max_queries]
    n, d = xb.shape
    nq = xq.shape[0]
    k = args.k
    assert gt.shape[1] >= 100 and k >= 100, "need k >= 100 for recall@100"
    print(f"# faiss {faiss.__version__}, items {n}x{d}, queries {nq}, "
          f"nlist {args.nlist}, threads {args.threads}", file=sys.stderr)

    # --- build ---
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, args.nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = args.seed
    index.cp.niter = args.niter
    t0 = time.perf_counter()
    index.train(xb)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    index.add(xb)
    t_add = time.perf_counter() - t0
    sizes = np.array([index.invlists.list_size(l) for l in range(args.nlist)], dtype=np.int64)
    assert sizes.sum() == n
    print(f"# train {t_train:.2f}s, add {t_add:.2f}s, list sizes min/median/max "
          f"{sizes.min()}/{int(np.median(sizes))}/{sizes.max()}", file=sys.stderr)

    # --- exact reference ---
    flat = faiss.IndexFlatIP(d)
    flat.add(xb)
    t_flat, (_, I_flat) = best_time(lambda: flat.search(xq, k), args.repeats)
    flat_qps = nq / t_flat
    flat_r10 = recall_at(I_flat, gt, 10)
    flat_r100 = recall_at(I_flat, gt, 100)

    # --- IVF sweep ---
    rows = []
    for nprobe in args.nprobe:
        nprobe = min(nprobe, args.nlist)
        index.nprobe = nprobe
        _, L = index.quantizer.search(xq, nprobe)
        cand = float(sizes[L[L >= 0]].sum() / nq)
        t, (_, I) = best_time(lambda: index.search(xq, k), args.repeats)
        rows.append({
            "nprobe": nprobe,
            "candidates": cand,
            "recall10": recall_at(I, gt, 10),
            "recall100": recall_at(I, gt, 100),
            "qps": nq / t,
        })
        print(f"# nprobe {nprobe} done ({t:.3f}s)", file=sys.stderr)

    return {
        "faiss_version": faiss.__version__,
        "numpy_version": np.__version__,
        "nlist": args.nlist,
        "threads": args.threads,
        "k": k,
        "n_items": n,
        "n_queries": nq,
        "seed": args.seed,
        "niter": args.niter,
        "repeats": args.repeats,
        "train_s": t_train,
        "add_s": t_add,
        "list_size_min": int(sizes.min()),
        "list_size_max": int(sizes.max()),
        "rows": rows,
        "flat_qps": flat_qps,
        "flat_recall10": flat_r10,
        "flat_recall100": flat_r100,
    }


def print_table(res):
    print(f"FAISS {res['faiss_version']} IndexIVFFlat (IP), nlist={res['nlist']}, "
          f"threads={res['threads']}, k={res.get('k', 100)}, "
          f"qps = best of {res.get('repeats', 3)} batch runs")
    print()
    print("| nprobe | candidates | recall@10 | recall@100 | qps |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for r in res["rows"]:
        print(f"| {r['nprobe']} | {r['candidates']:.0f} | {r['recall10']:.4f} | "
              f"{r['recall100']:.4f} | {r['qps']:.0f} |")
    r10 = res.get("flat_recall10")
    r100 = res.get("flat_recall100")
    fmt = lambda v: "-" if v is None else f"{v:.4f}"
    print(f"| flat (exact) | {res.get('n_items', '-')} | {fmt(r10)} | {fmt(r100)} | "
          f"{res['flat_qps']:.0f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", default=default_path("gcide_items_f16.npy"))
    ap.add_argument("--queries", default=default_path("gcide_queries_f16.npy"))
    ap.add_argument("--gt", default=default_path("gcide_gt_top100.npy"))
    ap.add_argument("--nlist", type=int, default=256)
    ap.add_argument("--nprobe", type=parse_int_list, default=[1, 2, 4, 8, 16, 32, 64, 128],
                    help="comma-separated list (default 1,2,4,8,16,32,64,128)")
    ap.add_argument("--threads", type=int, default=2, help="faiss.omp_set_num_threads")
    ap.add_argument("--k", type=int, default=100, help="search depth (>= 100)")
    ap.add_argument("--seed", type=int, default=1234, help="k-means seed (index.cp.seed)")
    ap.add_argument("--niter", type=int, default=20, help="k-means iterations (index.cp.niter)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per row; best is kept")
    ap.add_argument("--max-queries", type=int, default=0, help="use only the first N queries (0 = all)")
    ap.add_argument("--json", metavar="OUT", help="write results as JSON")
    ap.add_argument("--from-json", metavar="IN",
                    help="skip measuring; load rows from an earlier --json output")
    ap.add_argument("--interpolate", action="store_true",
                    help="print recall@100 interpolated (linearly in candidates) at --at budgets")
    ap.add_argument("--at", type=parse_float_list, default=[1000, 2000, 4000, 8000, 16000],
                    help="candidate budgets for --interpolate (comma-separated)")
    args = ap.parse_args()

    if args.from_json:
        with open(args.from_json) as f:
            res = json.load(f)
    else:
        res = measure(args)

    print_table(res)

    if args.interpolate:
        interp = interpolate_recall(res["rows"], args.at, "recall100")
        interp10 = interpolate_recall(res["rows"], args.at, "recall10")
        res["interpolated"] = [dict(a, recall10=b["recall10"]) for a, b in zip(interp, interp10)]
        print()
        print("Interpolated at equal candidates scanned (linear in candidates; "
              "'-' = outside measured range):")
        print()
        print("| candidates | recall@100 | recall@10 |")
        print("| ---: | ---: | ---: |")
        for r in res["interpolated"]:
            f = lambda v: "-" if v is None else f"{v:.4f}"
            print(f"| {r['candidates']:.0f} | {f(r['recall100'])} | {f(r['recall10'])} |")

    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
        print(f"\n# wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
