#!/usr/bin/env python3
"""Candidates per row of the certified greedy screenings' windows, counted on the CPU.

For each data set, three greedy levels of K = 256 codewords (d = 128) and every row, counts
the codewords whose exact logit 2<r, C[k]> - ||C[k]||^2 lies within each screening's window
of the row's best: the FMA window (`rq_certify_margin`), the 3xTF32 window of session 7 and
the TF32 window (`rq_certify_margin_tf32`) with the codewords centred on the level's mean, as
`rq_greedy_rows64_tc` does, and without. The formulas are kernels/greedy.cuh's. More than 16
candidates sends a row to the exact scan of all K codewords (kernels/README.md, "Certified
greedy assignment"). A model of the window's width on real data, not a timing.

    .venv-bench/bin/python scripts/tc_window.py [--gcide ../shared/data/gcide_items_f16.npy]
"""
import argparse

import numpy as np

U = 2.0**-24
K, D, LEVELS, SLOTS = 256, 128, 3, 16


def window(d, rnorm, cmax, radius, kind):
    """kernels/greedy.cuh: 4·(E1 + E2) + d·1e-38 (rnorm per row; cmax, radius per level)."""
    s, q, t = rnorm * cmax, cmax * cmax, (rnorm + cmax) ** 2
    e2 = (0.26 * d + 6.4) * U * s + 1.01 * U * q + 1.01 * U * (t + q)
    if kind == "fma":
        e1 = (2.02 * d + 2.02) * U * s + 1.01 * U * q
    elif kind == "tf32x3":
        e1 = (24.4 * d + 99.1) * U * s + 1.01 * U * q
    else:
        e1 = (8.2 * d + 66195) * U * rnorm * radius + 1.01 * U * q
    return 4 * (e1 + e2) + d * 1e-38


def count(x, codebooks, name):
    """Prints, per level, each window's mean, p99 and max candidates and its rows over 16."""
    r = x.astype(np.float64)
    for level, words in enumerate(codebooks):
        c = words.astype(np.float64)
        norms = (c * c).sum(1)
        cmax = np.sqrt(norms.max())
        centred = np.sqrt(((c - c.mean(0)) ** 2).sum(1).max())
        logits = 2 * r @ c.T - norms
        best = logits.max(1)
        rnorm = np.sqrt((r * r).sum(1))
        cells = []
        for label, kind, radius in (
            ("fma", "fma", cmax),
            ("tf32x3", "tf32x3", cmax),
            ("tf32 centred", "tf32", centred),
            ("tf32 uncentred", "tf32", cmax),
        ):
            n = (logits >= (best - window(D, rnorm, cmax, radius, kind))[:, None]).sum(1)
            over = (n > SLOTS).mean() * 100
            cells.append(
                f"{label}: mean {n.mean():.3f} p99 {np.percentile(n, 99):.0f} "
                f"max {n.max()} over {over:.2f}%"
            )
        print(f"{name} level {level}: " + " | ".join(cells))
        r = r - c[logits.argmax(1)]


def kmeans_levels(rng, x, iters=15):
    """Residual k-means codebooks (K words per level) of x, float32."""
    r, books = x.copy(), []
    for _ in range(LEVELS):
        c = r[rng.choice(len(r), K, replace=False)].copy()
        for _ in range(iters):
            a = (2 * r @ c.T - (c * c).sum(1)).argmax(1)
            for j in range(K):
                members = a == j
                if members.any():
                    c[j] = r[members].mean(0)
        a = (2 * r @ c.T - (c * c).sum(1)).argmax(1)
        books.append(c)
        r = r - c[a]
    return books


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gcide", default="../shared/data/gcide_items_f16.npy")
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    print(f"seed {a.seed}, K = {K}, d = {D}, {LEVELS} greedy levels")

    # The bench's assign data: N(0, 1) rows, level l's codewords N(0, 1) / (l + 1).
    x = rng.standard_normal((a.rows, D)).astype(np.float32)
    books = [rng.standard_normal((K, D)).astype(np.float32) / (l + 1) for l in range(LEVELS)]
    count(x, books, "bench N(0,1)")

    items = np.load(a.gcide).astype(np.float32)
    unit = lambda m: m / np.linalg.norm(m, axis=1, keepdims=True)
    centred = items - items.mean(0)
    _, _, vt = np.linalg.svd(centred[: a.rows], full_matrices=False)
    for name, x in (
        ("gcide pca128", unit(centred @ vt[:D].T)),
        ("gcide first128", unit(items[:, :D])),
    ):
        count(x[: a.rows], kmeans_levels(rng, x[: a.rows]), name)

    # Codewords sharing a large common part: 2·c + N(0, 0.1²), c ~ N(0, 1) (one level).
    common = 2 * rng.standard_normal(D).astype(np.float32)
    words = common + 0.1 * rng.standard_normal((K, D)).astype(np.float32)
    count(rng.standard_normal((a.rows // 4, D)).astype(np.float32), [words], "common part")


if __name__ == "__main__":
    main()
