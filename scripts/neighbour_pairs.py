#!/usr/bin/env python3
"""Self-supervision for `rqtree learn` from the items alone: a seeded sample of items act as
pseudo-users; each gets positive pairs with items among its exact inner-product top
`--pos-top` neighbours (itself excluded) and negative pairs with items ranked
`--neg-from`..`--neg-to` (near misses: the boundary the index has to get right). No query and
no ground truth are read.

    neighbour_pairs.py --items items.npy --users 5000 --users-out users.npy --pairs-out pairs.npy

Writes the pseudo-users' embeddings (U x d, f32) and the pairs (M x 3 int64
`[user_row, item_row, label]`), the formats of `rqtree learn --users --pairs`."""
import argparse
import json

import numpy as np

p = argparse.ArgumentParser()
p.add_argument("--items", required=True)
p.add_argument("--users", type=int, default=5000, help="pseudo-users sampled from the items")
p.add_argument("--pos-top", type=int, default=100, help="positives come from this exact top")
p.add_argument("--pos", type=int, default=20, help="positives per pseudo-user")
p.add_argument("--neg-from", type=int, default=100, help="negatives: first rank (0-based)")
p.add_argument("--neg-to", type=int, default=1000, help="negatives: rank bound (exclusive)")
p.add_argument("--neg", type=int, default=20, help="negatives per pseudo-user")
p.add_argument("--seed", type=int, default=7)
p.add_argument("--users-out", required=True)
p.add_argument("--pairs-out", required=True)
a = p.parse_args()
x = np.ascontiguousarray(np.load(a.items).astype(np.float32))
n = x.shape[0]
if not (a.pos <= a.pos_top and a.neg <= a.neg_to - a.neg_from and a.neg_to < n and a.users <= n):
    raise SystemExit(f"neighbour_pairs: inconsistent sizes for {n} items: {vars(a)}")
rng = np.random.default_rng(a.seed)
users = rng.choice(n, a.users, replace=False)
rows = []
for start in range(0, a.users, 1000):
    u = users[start:start + 1000]
    s = x[u] @ x.T
    s[np.arange(len(u)), u] = -np.inf
    top = np.argpartition(-s, a.neg_to, axis=1)[:, :a.neg_to]
    order = np.argsort(-np.take_along_axis(s, top, 1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, 1)
    for j in range(len(u)):
        for i in rng.choice(top[j, :a.pos_top], a.pos, replace=False):
            rows.append((start + j, i, 1))
        for i in rng.choice(top[j, a.neg_from:a.neg_to], a.neg, replace=False):
            rows.append((start + j, i, 0))
np.save(a.users_out, x[users])
np.save(a.pairs_out, np.asarray(rows, dtype=np.int64))
print(json.dumps({"users": a.users, "pairs": len(rows), **{k: v for k, v in vars(a).items()
                                                             if k not in ("users",)}}))
