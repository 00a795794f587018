#!/usr/bin/env python3
"""Trains FAISS's ResidualQuantizer (L levels x 2^nbits codes) on item embeddings and exports
its codebooks as rqtree codebooks (safetensors, codebook.0 .. codebook.{L-1}, K x d, F32).

    faiss_rq_codebooks.py --items items.npy --levels 2 --nbits 8 --beam 8 -o cb.safetensors [--json out.json]

Also reports FAISS's own reconstruction MSE (its encoder, with the same beam) and the training
time."""
import argparse
import json
import time

import faiss
import numpy as np
from safetensors.numpy import save_file

p = argparse.ArgumentParser()
p.add_argument("--items", required=True)
p.add_argument("--levels", type=int, default=2)
p.add_argument("--nbits", type=int, default=8)
p.add_argument("--beam", type=int, default=1)
p.add_argument("--threads", type=int, default=2)
p.add_argument("-o", "--out", required=True)
p.add_argument("--json")
a = p.parse_args()
faiss.omp_set_num_threads(a.threads)
x = np.ascontiguousarray(np.load(a.items).astype(np.float32))
n, d = x.shape
rq = faiss.ResidualQuantizer(d, a.levels, a.nbits)
rq.max_beam_size = a.beam
t = time.time()
rq.train(x)
train_s = time.time() - t
k = 1 << a.nbits
cb = faiss.vector_to_array(rq.codebooks).reshape(a.levels * k, d)
save_file({f"codebook.{l}": np.ascontiguousarray(cb[l * k:(l + 1) * k]) for l in range(a.levels)}, a.out)
codes = rq.compute_codes(x)
mse = float(((rq.decode(codes) - x) ** 2).sum(axis=1).mean())
r = {"levels": a.levels, "codes": k, "beam": a.beam, "train_s": train_s, "faiss_mse": mse, "out": a.out}
print(json.dumps(r))
if a.json:
    json.dump(r, open(a.json, "w"))
