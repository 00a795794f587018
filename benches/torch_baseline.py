#!/usr/bin/env python3
"""PyTorch baseline of `rqtree bench`: the same operations written the obvious way, on the
same sizes and the same synthetic generator semantics, timed with CUDA events (median of 20
runs after 3 warm-up runs, inputs rotated over copies (at most 8) so that what the runs read
from them adds up to twice the L2, as in src/bench.rs). The floor's bytes follow src/bench.rs:
data several queries share (an item in several candidate lists, a node several queries
expand) counts once, a composed operation's intermediates (the search's tables) not at all.

    python3 benches/torch_baseline.py [--targets | --quick] [--json] [--device cpu]

Operations (keys shared with `rqtree bench --json`):
  assign          greedy residual assignment over L levels: matmul + argmax + gather
  fused_topk      fused lookup: gather codes + gather table entries + sum + topk
  fused_topk_disjoint  the same, each query's candidates its own (depth-2 nodes)
  topk_k{10,100,1000}  torch.topk over rows
  exact_topk      matmul + topk
  lookup_tables   matmul per level (+ row norms)
  traverse        per depth: (parent score + table) + topk, children of nonexistent nodes masked
  search          lookup_tables + traverse + fused lookup of the kept nodes' items + topk

Synthetic data (as in rqtree): codebook level l is standard normal scaled by 1/(l+1);
code paths are uniformly random, sorted into code order (a "random tree"); queries and items
standard normal. Values differ from rqtree's (different generators), distributions do not.
Exits with status 2 and a message when PyTorch or a CUDA device is missing. `--device cpu`
runs the same code on the CPU with the wall clock (a smoke test of the script, not a baseline).
"""

import argparse
import json
import statistics
import sys
import time

PEAK_BYTES_PER_S = 4.3e12
PEAK_FLOPS = 67e12
L2_BYTES = 50 << 20  # H200 SXM (as H100 SXM): 50 MB
WARMUP = 3
RUNS = 20
D = 128


def sizes(targets, quick):
    """The same sizes as src/bench.rs (`search` always over a random tree here)."""
    if targets:
        return dict(assign=(4 << 20, 3, 256), fused=(1024, 100_000, 3, 256),
                    topk=(1024, 100_000), exact=(1024, 1 << 20),
                    search=(10_000_000, 2, 1024, 1024, (64, 1024)))
    s = 10 if quick else 1
    return dict(assign=(100_000 // s, 3, 256), fused=(1024 // s, 10_000 // s, 3, 256),
                topk=(256 // s, 100_000 // s), exact=(1024 // s, 100_000 // s),
                search=(100_000 // s, 2, 256, 1024 // s, (16, 128)))


def copies_for(nbytes):
    return max(1, min(8, -(-2 * L2_BYTES // max(nbytes, 1))))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--targets", action="store_true", help="the issue's target sizes")
    g.add_argument("--quick", action="store_true", help="~10x smaller default sizes")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cpu: smoke-test the script with the wall clock")
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        print("torch_baseline: PyTorch is not installed (pip install torch); nothing measured",
              file=sys.stderr)
        return 2
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print("torch_baseline: PyTorch sees no CUDA device "
              f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); nothing measured",
              file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device(args.device)
    gen = torch.Generator(device=dev)
    gen.manual_seed(args.seed)
    sz = sizes(args.targets, args.quick)
    rows = []

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, device=dev, generator=gen) * scale

    def timed(op, label, copies, flops, nbytes, fn):
        for i in range(WARMUP if cuda else 1):
            fn(i % copies)
        if cuda:
            torch.cuda.synchronize()
        times = []
        for i in range(RUNS if cuda else 3):
            if cuda:
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                fn(i % copies)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn(i % copies)
                times.append((time.perf_counter() - t0) * 1e3)
        ms = statistics.median(times)
        floor_ms = max(nbytes / PEAK_BYTES_PER_S, flops / PEAK_FLOPS) * 1e3
        rows.append(dict(op=op, label=label, ms=ms, kernel_ms=None,
                         clock="cuda-events" if cuda else "wall", runs=len(times),
                         copies=copies, flops=flops, bytes=nbytes,
                         gflops=flops / ms / 1e6, gbps=nbytes / ms / 1e6, floor_ms=floor_ms,
                         floor_fraction=floor_ms / ms))
        line = f"{op:<14} {ms:10.3f} ms  {100 * floor_ms / ms:6.2f}% of floor  {label}"
        # With --json, progress goes to stderr so a run cut short still shows its rows.
        print(line, flush=True, file=sys.stderr if args.json else sys.stdout)

    def codebooks(levels, k):
        return [randn(k, D, scale=1.0 / (l + 1)) for l in range(levels)]

    def random_tree(n, levels, k):
        """Sorted uniformly random code paths: codes (L x N, int64) and, per depth, the
        CSR item_start over all K^depth possible nodes (node id = flat code prefix)."""
        paths = torch.randint(0, k, (n, levels), device=dev, generator=gen)
        key = torch.zeros(n, dtype=torch.int64, device=dev)
        for l in range(levels):
            key = key * k + paths[:, l]
        key, _ = torch.sort(key)
        codes = []
        rem = key.clone()
        for l in reversed(range(levels)):
            codes.append(rem % k)
            rem = rem // k
        codes = torch.stack(list(reversed(codes)))
        starts = []
        for depth in range(1, levels + 1):
            node = key // (k ** (levels - depth))
            counts = torch.bincount(node, minlength=k ** depth)
            start = torch.zeros(k ** depth + 1, dtype=torch.int64, device=dev)
            start[1:] = torch.cumsum(counts, 0)
            starts.append(start)
        return codes, starts

    def tables(q, cbs):
        return [q @ c.T for c in cbs]

    # assign: greedy residual assignment, L levels.
    n, levels, k = sz["assign"]
    copies = copies_for(n * D * 4)
    items = [randn(n, D) for _ in range(copies)]
    cbs = codebooks(levels, k)
    norms = [(c * c).sum(1) for c in cbs]

    def assign(c):
        r = items[c]
        out = []
        for cb, nm in zip(cbs, norms):
            code = torch.argmax(2 * (r @ cb.T) - nm, dim=1)
            out.append(code)
            r = r - cb.index_select(0, code)
        return out

    timed("assign", f"greedy encode N={n} d={D} L={levels} K={k} f32 (matmul+argmax+gather)",
          copies, 2.0 * n * k * D * levels, n * D * 4 + n * levels * 4 + n * 4, assign)
    del items

    # fused lookup + top-k over candidates = consecutive depth-1 nodes per query.
    b, per_query, flevels, fk = sz["fused"]
    topk_k = 100
    fn_items = max(1, per_query * fk // 4)
    codes, starts = random_tree(fn_items, flevels, fk)
    codes_u8 = codes.to(torch.uint8)
    nodes1 = fk
    per_node = fn_items // nodes1
    want = max(1, min(nodes1, -(-per_query // max(per_node, 1))))
    first = torch.randint(0, nodes1, (b, 1), device=dev, generator=gen)
    nodes = (first + torch.arange(want, device=dev)) % nodes1
    s1 = starts[0]
    lo, hi = s1[nodes], s1[nodes + 1]
    maxcnt = int((hi - lo).max())
    pos = lo[:, :, None] + torch.arange(maxcnt, device=dev)
    valid = (pos < hi[:, :, None]).reshape(b, -1)
    pos = torch.where(valid, pos.reshape(b, -1), torch.zeros_like(valid, dtype=torch.int64))
    scanned = int(valid.sum())
    # Nodes of one depth cover disjoint item ranges: the distinct items are those of the
    # distinct nodes. Each run reads their codes (u8) from its copy.
    distinct = int((s1[1:] - s1[:-1])[torch.unique(nodes)].sum())
    fcbs = codebooks(flevels, fk)
    copies = copies_for(distinct * flevels)
    fcodes = [codes_u8.clone() for _ in range(copies)]
    q = randn(b, D)
    luts = tables(q, fcbs)

    def fused(c):
        s = torch.zeros(pos.shape, device=dev)
        for l in range(flevels):
            cl = fcodes[c][l][pos].long()
            s += torch.gather(luts[l], 1, cl)
        s = s.masked_fill(~valid, float("-inf"))
        return torch.topk(s, topk_k, dim=1)

    fbytes = distinct * flevels + 4 * b * flevels * fk + 12 * b * topk_k
    timed("fused_topk", f"fused lookup + top-{topk_k} B={b}, {scanned // b} candidates/query "
          f"({distinct} distinct items), L={flevels} u8 codes (random tree, N={fn_items}; "
          "gather+sum+topk)",
          copies, float(scanned * flevels), fbytes, fused)
    del fcodes, codes, codes_u8, pos, valid

    # The same sizes with every query's candidates its own: query q scans depth-2 nodes
    # q·m .. (q+1)·m (m = K² // B) of an index of B × candidates items, one contiguous item
    # range per query, no item shared (rqtree's fused_topk_disjoint).
    dn_items = max(1, b * per_query)
    codes, starts = random_tree(dn_items, flevels, fk)
    s2 = starts[1]
    m = (fk * fk) // b
    qs = torch.arange(b, device=dev)
    lo, hi = s2[qs * m], s2[(qs + 1) * m]
    maxcnt = int((hi - lo).max())
    pos = lo[:, None] + torch.arange(maxcnt, device=dev)
    valid = pos < hi[:, None]
    pos = torch.where(valid, pos, torch.zeros_like(pos))
    scanned = int(valid.sum())
    copies = copies_for(scanned * flevels)
    fcodes = [codes.to(torch.uint8) for _ in range(copies)]
    del codes

    def fused_disjoint(c, fc=fcodes, p=pos, v=valid):
        s = torch.zeros(p.shape, device=dev)
        for l in range(flevels):
            s += torch.gather(luts[l], 1, fc[c][l][p].long())
        return torch.topk(s.masked_fill(~v, float("-inf")), topk_k, dim=1)

    # (Off --targets, depth-2 nodes here are all K² code prefixes, empty ones included, and
    # rqtree's are the non-empty ones, so m and the per-query counts differ between the two;
    # at the target sizes every prefix holds ~1560 items and both take m = 64.)
    dbytes = scanned * flevels + 4 * b * flevels * fk + 12 * b * topk_k
    timed("fused_topk_disjoint", f"fused lookup + top-{topk_k} B={b}, {scanned // b} "
          f"candidates/query, no item shared between queries (depth-2 nodes), L={flevels} u8 "
          f"codes (random tree, N={dn_items}; gather+sum+topk)",
          copies, float(scanned * flevels), dbytes, fused_disjoint)
    del fcodes, pos, valid, fused_disjoint

    # Row-wise top-k.
    tr, tn = sz["topk"]
    copies = copies_for(tr * tn * 4)
    scores = [randn(tr, tn) for _ in range(copies)]
    for kk in (10, 100, 1000):
        timed(f"topk_k{kk}", f"top-{kk} of {tr} rows x {tn} f32 (torch.topk)", copies, 0.0,
              tr * tn * 4 + tr * kk * 12, lambda c, kk=kk: torch.topk(scores[c], kk, dim=1))
    del scores

    # Exact top-k.
    eb, en = sz["exact"]
    copies = copies_for(en * D * 4)
    eitems = [randn(en, D) for _ in range(copies)]
    eq = randn(eb, D)
    timed("exact_topk", f"exact top-{topk_k} B={eb} N={en} d={D} ip (matmul+topk)", copies,
          2.0 * eb * en * D, en * D * 4 + eb * D * 4 + eb * topk_k * 12,
          lambda c: torch.topk(eq @ eitems[c].T, topk_k, dim=1))
    del eitems

    # Search over a random tree: tables, traversal, fused lookup of the kept nodes' items.
    sn, slevels, sk, sb, beams = sz["search"]
    scodes, sstarts = random_tree(sn, slevels, sk)
    scbs = codebooks(slevels, sk)
    exists2 = (sstarts[1][1:] > sstarts[1][:-1]).reshape(sk, sk)
    s2 = sstarts[1]
    counts = s2[1:] - s2[:-1]
    maxcnt = int(counts.max())
    ksum = sk * slevels
    copies = copies_for(sb * D * 4 + sb * ksum * 4)
    queries = [randn(sb, D) for _ in range(copies)]
    w1, w2 = beams

    def tables_norms(qq, cbs):
        return tables(qq, cbs), (qq * qq).sum(1)

    def traverse(luts, ex):
        s1v, n1 = torch.topk(luts[0], w1, dim=1)
        child = s1v[:, :, None] + luts[1][:, None, :]
        child = child.masked_fill(~ex[n1], float("-inf")).reshape(sb, -1)
        s2v, j = torch.topk(child, w2, dim=1)
        return n1.gather(1, j // sk) * sk + j % sk, s2v

    # The floor's bytes, from copy 0's queries (as src/bench.rs): the tree nodes read (every
    # depth-1 node, the children of the distinct kept depth-1 nodes; 12 bytes a node) and
    # the codes (u16 in rqtree) of the distinct candidates.
    luts0 = tables(queries[0], scbs)
    kept1 = torch.topk(luts0[0], w1, dim=1)[1]
    kept, _ = traverse(luts0, exists2)
    scanned = int(counts[kept].sum())
    distinct = int(counts[torch.unique(kept)].sum())
    tree_bytes = 12 * (sk + int(exists2[torch.unique(kept1)].sum()))
    index_read = tree_bytes + distinct * slevels * 2
    # The index rotates too: codebooks, tree and codes per copy.
    icopies = copies_for(index_read)
    ix = [dict(cbs=[c.clone() for c in scbs], exists2=exists2.clone(), s2=s2.clone(),
               codes=scodes.clone()) for _ in range(icopies)]
    del luts0, kept1, kept

    def lookup(c):
        return tables_norms(queries[c], ix[c % icopies]["cbs"])

    timed("lookup_tables", f"lookup tables B={sb} L={slevels} K={sk} d={D} (matmul)", copies,
          2.0 * sb * ksum * D, 4.0 * (sb * D + ksum * D + sb * ksum), lookup)
    all_luts = [lookup(c)[0] for c in range(copies)]
    node_bytes = 4 * sb * ksum + 4 * sb * w2 + tree_bytes
    timed("traverse", f"traverse B={sb} beams {w1},{w2} (random tree, N={sn}; add+topk per depth)",
          copies, 0.0, float(node_bytes),
          lambda c: traverse(all_luts[c], ix[c % icopies]["exists2"]))

    def search(c):
        x = ix[c % icopies]
        luts, _ = lookup(c)
        kept, _ = traverse(luts, x["exists2"])
        lo = x["s2"][kept]
        p = lo[:, :, None] + torch.arange(maxcnt, device=dev)
        ok = (p < x["s2"][kept + 1][:, :, None]).reshape(sb, -1)
        p = torch.where(ok, p.reshape(sb, -1), torch.zeros_like(ok, dtype=torch.int64))
        s = torch.zeros(p.shape, device=dev)
        for l in range(slevels):
            s += torch.gather(luts[l], 1, x["codes"][l][p])
        s = s.masked_fill(~ok, float("-inf"))
        return torch.topk(s, topk_k, dim=1)

    sbytes = 4.0 * (sb * D + ksum * D) + 12 * sb * topk_k + index_read
    timed("search", f"search B={sb} N={sn} d={D} L={slevels}x{sk} beams {w1},{w2} k={topk_k} "
          f"no rerank (random tree, {scanned // sb} candidates/query, {distinct} distinct items)",
          copies, 2.0 * sb * ksum * D, sbytes, search)

    if args.json:
        name = torch.cuda.get_device_name(0) if cuda else "cpu"
        print(json.dumps(dict(tool="torch", backend=f"torch-{args.device}", torch=torch.__version__,
                              device=name, targets=args.targets,
                              peak_bytes_per_s=PEAK_BYTES_PER_S, peak_flops=PEAK_FLOPS,
                              rows=rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
