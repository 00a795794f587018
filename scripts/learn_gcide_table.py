#!/usr/bin/env python3
"""The report of scripts/learn_gcide.sh: reads its work folder, writes learn_gcide.{md,json}.

Recall is compared at fixed candidate budgets (items scanned per query): every codebook set is
evaluated on a sweep of beams, and recall@100 (@10) at each budget is interpolated linearly in
candidates between the two bracketing measured settings (`recall_table.interp`).
Usage: learn_gcide_table.py WORK OUT THREADS BUDGETS SEEDS NAME=TITLE... (`--` then, per
learned run, NAME=ARGS). SEEDS (space-separated) names the repeated runs `a_sS`, `b_sS`, `bs_sS`.
"""
import datetime
import json
import os
import sys

from recall_table import bracket, interp


def beam(r):
    return ",".join(map(str, r["beam"]))


def at_budget(rows, cand, k):
    return interp(rows, cand, lambda r: r["recall"][k])


def main():
    w, out, threads, budgets, seeds = sys.argv[1:6]
    budgets = [int(b) for b in budgets.split(",")]
    seeds = seeds.split()
    rest = sys.argv[6:]
    sep = rest.index("--")
    names = dict(a.split("=", 1) for a in rest[:sep])
    learn_args = dict(a.split("=", 1) for a in rest[sep + 1:])
    res = {}
    for v in names:
        res[v] = {"info": json.load(open(f"{w}/{v}.info.json")),
                  "eval": json.load(open(f"{w}/{v}.eval.json")),
                  "train_s": float(open(f"{w}/{v}.time").read().split()[-1])}
        if v.startswith("c"):
            res[v]["faiss"] = json.load(open(f"{w}/{v}.faiss.json"))
        if v in learn_args:
            res[v]["learn"] = json.load(open(f"{w}/{v}.learn.json"))
        rows = res[v]["eval"]["rows"]
        res[v]["budgets"] = {
            str(c): {"recall100": at_budget(rows, c, "100"), "recall10": at_budget(rows, c, "10"),
                     "between": [{"beam": r["beam"], "candidates": r["candidates"],
                                  "recall": r["recall"]} for r in (bracket(rows, c) or ())]}
            for c in budgets}
    seeded = {}
    for s in seeds:
        for v in ("a", "b", "bs"):
            info = json.load(open(f"{w}/{v}_s{s}.info.json"))
            rows = json.load(open(f"{w}/{v}_s{s}.eval.json"))["rows"]
            seeded[f"{v}_s{s}"] = {"mse": info["reconstruction_mse"],
                                   "recall100": {str(c): at_budget(rows, c, "100")
                                                 for c in budgets}}
    json.dump({"runs": res, "seeds": seeded}, open(f"{out}/learn_gcide.json", "w"), indent=1)

    def rec(v, c):
        return res[v]["budgets"][str(c)]["recall100"]

    L = ["# Learned codebooks on gcide (2 levels x 256 codes)\n",
         "60000 items x 384 (unit norm, f16), 1000 held-out queries, exact top-100 ground truth "
         "(`../shared/data`). Every index is built by `rqtree build` (metric ip, f32 embeddings "
         "kept) and searched by `rqtree eval --rerank exact` on the reference backend.\n",
         "| codebooks | train s | recon. MSE | depth-1 nodes: cv / largest share / entropy bits "
         "| depth-2 nodes: count / cv / largest / entropy bits |",
         "|---|---:|---:|---|---|"]
    for v, nm in names.items():
        i = res[v]["info"]
        d1, d2 = i["depths"]
        L.append(f"| {nm} | {res[v]['train_s']:.0f} | {i['reconstruction_mse']:.6f} | "
                 f"{d1['items_cv']:.3f} / {d1['largest_share']:.4f} / {d1['code_entropy_bits']:.3f} | "
                 f"{d2['nodes']} / {d2['items_cv']:.3f} / {d2['largest_share']:.5f} / "
                 f"{d2['code_entropy_bits']:.3f} |")
    L += ["",
          "train s: wall seconds of `rqtree build` for (a) (k-means, encoding and tree), of "
          "`rqtree learn` for (b) (k-means initialisation and training; the index build is "
          "separate), of FAISS's `ResidualQuantizer.train` for (c). Balance: cv = standard "
          "deviation / mean of the items per node, largest = the largest node's share of the "
          "items, entropy of the level's code distribution (8 bits = perfectly balanced). MSE = "
          "mean over items of ||x - x̂||² with the encoding stored in the index.\n",
          f"recall@100 (recall@10) at fixed budgets of {', '.join(map(str, budgets))} candidates "
          "(items scanned per query). Each index is evaluated at the beams "
          + ", ".join(beam(r) for r in res["a"]["eval"]["rows"])
          + "; the value at a budget is interpolated linearly in candidates between the two "
          "measured settings that bracket it, listed as beam: candidates → recall@100.\n",
          "| codebooks | " + " | ".join(f"{c} cand.: recall@100 (@10) | measured" for c in budgets)
          + " |",
          "|---|" + "---:|---|" * len(budgets)]
    for v, nm in names.items():
        cells = []
        for c in budgets:
            b = res[v]["budgets"][str(c)]
            if b["recall100"] is None:
                cells.append("– | outside the sweep")
                continue
            cells.append(f"{b['recall100']:.4f} ({b['recall10']:.4f}) | "
                         + "; ".join(f"{beam(r)}: {r['candidates']:.0f} → {r['recall']['100']:.4f}"
                                     for r in b["between"]))
        L.append(f"| {nm} | " + " | ".join(cells) + " |")
    L.append("")

    def diffs(v, u):
        return ", ".join(f"{rec(v, c) - rec(u, c):+.4f} at {c}" if None not in (rec(v, c), rec(u, c))
                         else f"– at {c}" for c in budgets)

    ma = res["a"]["info"]["reconstruction_mse"]
    for v in learn_args:
        mb = res[v]["info"]["reconstruction_mse"]
        L.append(f"{names[v]} vs (a): MSE {mb:.6f} vs {ma:.6f} ({100 * (mb - ma) / ma:+.2f} %); "
                 f"recall@100 {diffs(v, 'a')} candidates.")
    for v in learn_args:
        for c in (u for u in names if u.startswith("c")):
            mb, mc = res[v]["info"]["reconstruction_mse"], res[c]["info"]["reconstruction_mse"]
            L.append(f"{names[v]} vs {names[c]}: MSE {mb:.6f} vs {mc:.6f} "
                     f"({100 * (mb - mc) / mc:+.2f} %); recall@100 {diffs(v, c)} candidates.")
    L += ["", "Other seeds (k-means initialisation, sample and batch order; the item-neighbour pairs "
          "stay those of seed 7): each learned run against (a) with the same seed, MSE and "
          "recall@100 difference at each budget.\n",
          "| seed | (a) MSE | (b) MSE | (bs) MSE | (b) − (a) recall@100 | (bs) − (a) recall@100 |",
          "|---|---:|---:|---:|---|---|"]
    for s in seeds:
        a, b, bs = (seeded[f"{v}_s{s}"] for v in ("a", "b", "bs"))

        def d(x):
            return ", ".join(f"{x['recall100'][str(c)] - a['recall100'][str(c)]:+.4f}"
                             for c in budgets)
        L.append(f"| {s} | {a['mse']:.6f} | {b['mse']:.6f} | {bs['mse']:.6f} | {d(b)} | {d(bs)} |")
    L.append("")
    for v in (u for u in names if u.startswith("c")):
        f = res[v]["faiss"]
        L.append(f"FAISS beam {f['beam']}: its own encoder's MSE {f['faiss_mse']:.6f}, "
                 f"training {f['train_s']:.0f} s.")
    for v, args in learn_args.items():
        lr = res[v]["learn"]
        L.append(f"{names[v]}: `rqtree learn {args}` ({lr['steps']} steps, final alpha "
                 f"{lr['alpha']:.3g}, soft-training reconstruction loss per epoch "
                 + ", ".join(f"{e['recon']:.5f}" for e in lr["epochs"])
                 + f"; {lr['learn_s']:.0f} s including the k-means initialisation).")
    L += ["", f"Command: `THREADS={threads} scripts/learn_gcide.sh` on {os.cpu_count()} cores, "
              f"{datetime.date.today().isoformat()}."]
    open(f"{out}/learn_gcide.md", "w").write("\n".join(L) + "\n")
    print("\n".join(L))


if __name__ == "__main__":
    main()
