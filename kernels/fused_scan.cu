// Fused residual lookup + top-k over long candidate ranges (DESIGN §3): the scan variant of
// lookup.cu's rq_fused_topk, for u8 codes, at most 4 levels and ranges of hundreds of items
// or more (the host chooses; both kernels rank exactly as the reference).
//
// What bounds rq_fused_topk on long ranges is per-candidate work: a binary search and a
// range walk per element, byte loads, and table lookups whose 32 random addresses collide
// in the 32 banks (3.5 wavefronts per lookup on average). Here:
// - the work unit is a group of 16 consecutive items; a level's codes of a group are one
//   aligned 16-byte load (the host pads each level's row of codes to a multiple of 16
//   bytes), a warp's 32 lanes read 512 consecutive bytes per level, and the range lookup is
//   paid once per 16 items;
// - the query's table rows are replicated: entry e of copy r at word e·R + r, lane l reads
//   copy l % R: one wavefront per lookup at R = 32, at most two at R = 16 (lanes l and
//   l + 16 share a copy and collide when their entries differ but fall in one bank);
// - the selector's threshold is seeded before the scan: each thread offers the best of its
//   first group, one merge makes the k-th best of those maxima the threshold, so later
//   offers are rare (~k·ln(n/k) per query); the buffer need not hold a whole round's
//   candidates: an offer that finds it full stays pending in the thread (a bit per item)
//   and is offered again after the merge the round's end then makes.
#include "common.cuh"

/// Consecutive items of a group (one 16-byte load of u8 codes per level).
#define RQ_SCAN_GROUP 16

/// One level's codes of a group: item 16·g + 4·w + j's code in byte j of w[w].
struct alignas(16) RqScanCodes {
  unsigned w[4];
};

/// A thread's group: the codes of each level, the group's first item, and the items that
/// belong to the range, bytes lo ≤ u < hi (none when lo ≥ hi).
template <int L>
struct RqScanGroup {
  RqScanCodes c[L];
  unsigned item0;
  int lo, hi;
};

/// Locates group f of the current chunk of ranges and issues its loads. pre: group prefix
/// sums (pre[j] ≤ f < pre[j + 1] for f's range j); beg / end: the ranges' items; nb: ranges
/// in the chunk; total = pre[nb]. codes: L rows of `ld` bytes (ld a multiple of 16).
template <int L>
__device__ inline RqScanGroup<L> rq_scan_fetch(unsigned f, unsigned total, const unsigned* pre,
                                               const unsigned* beg, const unsigned* end, int nb,
                                               const unsigned char* codes, long long ld) {
  RqScanGroup<L> g{};
  if (f >= total) return g;  // lo = hi = 0: no items
  // A binary search per group (log2 of the ranges in the chunk: 2 steps at the fused
  // target). Carrying the thread's last range across rounds instead made the compiler stop
  // folding the tables' shared base into the loads (one more add per lookup).
  int lo = 0, hi = nb - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (pre[mid] <= f) lo = mid; else hi = mid - 1;
  }
  const unsigned b = beg[lo], e = end[lo];
  g.item0 = (b / RQ_SCAN_GROUP + (f - pre[lo])) * RQ_SCAN_GROUP;
  g.lo = b > g.item0 ? (int)(b - g.item0) : 0;
  g.hi = e - g.item0 < RQ_SCAN_GROUP ? (int)(e - g.item0) : RQ_SCAN_GROUP;
RQ_UNROLL
  for (int l = 0; l < L; ++l)
    g.c[l] = *reinterpret_cast<const RqScanCodes*>(codes + (long long)l * ld + g.item0);
  return g;
}

/// g with its codes read again from global memory. After a fence (a memory barrier to the
/// compiler) this is a new load, so the scores computed from it share no arithmetic with
/// earlier ones: otherwise the compiler keeps the 16·L table addresses of the fast pass live
/// for the rare offers, far beyond 64 registers.
template <int L>
__device__ inline RqScanGroup<L> rq_scan_reload(const RqScanGroup<L>& g,
                                                const unsigned char* codes, long long ld) {
  RqScanGroup<L> r = g;
RQ_UNROLL
  for (int l = 0; l < L; ++l)
    r.c[l] = *reinterpret_cast<const RqScanCodes*>(codes + (long long)l * ld + g.item0);
  return r;
}

/// The table entries of one lane, as byte offsets from the start of the staged tables: level
/// l's entry c of the lane's copy is at at[l] + c · stride (stride = 4 · R).
template <int L>
struct RqScanTables {
  const unsigned char* base;
  unsigned at[L];
  unsigned stride;
};

/// Score of byte u of group g: Σ_l tab[l][code] in level order from -0.0 (the reference's
/// f32 sum: -0 is the identity, so a sum of -0 entries stays -0), then the metric (l2: the
/// item's norm, read only when bit u of `valid` is set: the bytes past the range may lie
/// past the last item). Per level: a byte extract (one PRMT), one multiply-add for the
/// address, a shared load (the shared base folded into it).
template <int L>
__device__ inline float rq_scan_score(const RqScanGroup<L>& g, int u, unsigned valid,
                                      const RqScanTables<L>& tb, int metric, float qn,
                                      const float* item_norms) {
  float ip = -0.0f;
RQ_UNROLL
  for (int l = 0; l < L; ++l) {
    const unsigned c = __byte_perm(g.c[l].w[u / 4], 0u, 0x4440u | (unsigned)(u % 4));
    ip += *reinterpret_cast<const float*>(tb.base + (tb.at[l] + c * tb.stride));
  }
  if (metric != RQ_METRIC_L2) return ip;
  return rq_metric_score(metric, ip, qn, valid >> u & 1u ? item_norms[g.item0 + u] : 0.0f);
}

/// Bit u set for the bytes u of group g that belong to its range (lo ≤ u < hi).
template <int L>
__device__ inline unsigned rq_scan_valid(const RqScanGroup<L>& g) {
  const unsigned below_hi = g.hi >= 32 ? ~0u : (1u << g.hi) - 1u;
  return g.lo >= g.hi ? 0u : below_hi & ~((1u << g.lo) - 1u);
}

/// Offers item i with score s against the k-th entry (ts, and its rank in q.r[k - 1]):
/// true when it is dropped or buffered, false when it ranks before the k-th entry but the
/// buffer is full (the caller keeps it pending; the count still grew, so the round's end
/// merges).
__device__ inline bool rq_scan_offer(const RqSelect& q, float ts, float s, unsigned i,
                                     const long long* ids) {
  if (s < ts) return true;
  const long long r = ids[i];
  if (s == ts && r >= q.r[q.k - 1]) return true;
  const int pos = atomicAdd(q.count, 1);
  if (pos >= q.cap - q.k) return false;
  q.r[q.k + pos] = r;
  q.s[q.k + pos] = s;
  q.p[q.k + pos] = i;
  return true;
}

/// Fused residual lookup + top-k, scan variant: query b (one block) scores every item of
/// its candidate nodes, Σ_l LUT_l[code_l(i)] (+ the metric's norms), and keeps the best k
/// by (score, ids[i]) with payload i, as rq_fused_topk (same candidates, outputs and
/// order; the results are identical).
///
/// luts: the L tables stacked, level l's B × K_l table at element lut_off[l]; lut_k: K_l;
/// L = the template's levels (1..4), Σ K_l · R floats staged in shared memory, R = 1 <<
/// rep_shift copies (R ≤ 32). codes: L rows of `ld` bytes (u8 codes, item i of level l at
/// l·ld + i; ld a multiple of 16 ≥ N; the buffer 16-byte aligned). item_start: the depth's
/// item CSR; query b's nodes: cand_nodes[cand_start[b] ..][.. cand_count[b]]; item_norms
/// (l2 only), qnorm, metric, ids, out_scanned, out_pos, out_scores as rq_fused_topk.
/// grid: B; block: 256 threads (launch bounds (256, 2): at most 128 registers, two blocks
/// per SM; the compiler spends them on the fast pass's 16·L table reads in flight per
/// thread); 1 ≤ k ≤ 2048; cap: a power of two ≥ k + blockDim.x (the seeding offers one item
/// per thread). shared: round16(4 · R · Σ K_l) + round16(12 · blockDim.x + 8) + 16·cap + 1104.
template <int L>
__device__ inline void rq_fused_scan_body(
    const float* luts, const long long* lut_off, const int* lut_k, int rep_shift,
    const unsigned char* codes, long long ld, const unsigned* item_start,
    const long long* cand_start, const int* cand_count, const unsigned* cand_nodes,
    const float* item_norms, const float* qnorm, int metric, const long long* ids,
    long long* out_scanned, int k, int cap, long long* out_pos, float* out_scores) {
  RQ_SHARED_BASE(smem);
  const long long b = blockIdx.x;
  const int T = (int)blockDim.x, t = (int)threadIdx.x;
  int ksum = 0;
RQ_UNROLL
  for (int l = 0; l < L; ++l) ksum += lut_k[l];
  const unsigned tab_bytes = (((unsigned)ksum * 4u << rep_shift) + 15u) & ~15u;
  float* tab = reinterpret_cast<float*>(smem);
  unsigned* pre = reinterpret_cast<unsigned*>(smem + tab_bytes);
  unsigned* beg = pre + T + 1;
  unsigned* end = beg + T;
  int* scanned = reinterpret_cast<int*>(end + T);
  const RqSelect q =
      rq_select_carve(smem + tab_bytes + ((12u * (unsigned)T + 8u + 15u) & ~15u), k, cap);

  // Replicated table rows: entry e (levels concatenated) of copy r at word (e << shift) + r;
  // lane l reads copy l % R.
  RqScanTables<L> tb;
  tb.base = smem;
  tb.stride = 4u << rep_shift;
  {
    const unsigned lane_copy = (unsigned)(t % RQ_WARP) & ((1u << rep_shift) - 1u);
    int off = 0;
RQ_UNROLL
    for (int l = 0; l < L; ++l) {
      const int kl = lut_k[l];
      const float* row = luts + lut_off[l] + b * kl;
      float* dst = tab + (off << rep_shift);
      for (int x = t; x < kl << rep_shift; x += T) dst[x] = row[x >> rep_shift];
      tb.at[l] = 4u * (((unsigned)off << rep_shift) + lane_copy);
      off += kl;
    }
  }
  if (t == 0) *scanned = 0;
  rq_select_init(q);  // synchronises: the tables and the counter are visible

  const float qn = qnorm[b];
  const long long c0 = cand_start[b];
  const int m = cand_count[b];
  float ts = q.s[q.k - 1];
  bool seeded = false;
  for (int j0 = 0; j0 < m; j0 += T) {
    const int nb = m - j0 < T ? m - j0 : T;
    if (t < nb) {
      const unsigned node = cand_nodes[c0 + j0 + t];
      const unsigned bi = item_start[node], ei = item_start[node + 1];
      beg[t] = bi;
      end[t] = ei;
      pre[t + 1] = ei > bi ? (ei - 1) / RQ_SCAN_GROUP - bi / RQ_SCAN_GROUP + 1 : 0;
      atomicAdd(scanned, (int)(ei - bi));
    }
    if (t == 0) pre[0] = 0;
    __syncthreads();
    rq_block_inclusive_scan(pre + 1, nb);
    const unsigned total = pre[nb];
    RqScanGroup<L> cur =
        rq_scan_fetch<L>((unsigned)t, total, pre, beg, end, nb, codes, ld);
    // Items of the current group already offered (the seed).
    unsigned skip = 0;
    if (!seeded && total > 0) {
      // Seed the threshold: each thread offers the best item of its first group (at most
      // blockDim.x offers, which the buffer holds), and a merge makes the k-th best of those
      // maxima the k-th entry, before any other offer. For k > blockDim.x the threshold
      // stays -inf until the first round's merges (once per query: its offers go through
      // the pending passes). A thread with an empty group reloads the 16 bytes at item 0
      // (in bounds, unused), so the fence and reload stay uniform.
      float best = rq_neg_inf();
      int bu = -1;
      const unsigned valid = rq_scan_valid<L>(cur);
      __syncwarp();  // rq_scan_reload's fence
      const RqScanGroup<L> seed = rq_scan_reload<L>(cur, codes, ld);
RQ_UNROLL
      for (int u = 0; u < RQ_SCAN_GROUP; ++u) {
        const float s = rq_scan_score<L>(seed, u, valid, tb, metric, qn, item_norms);
        const bool better = (valid >> u & 1u) && (bu < 0 || s > best);
        best = better ? s : best;
        bu = better ? u : bu;
      }
      if (bu >= 0) {
        rq_scan_offer(q, ts, best, cur.item0 + (unsigned)bu, ids);
        skip = 1u << bu;
      }
      __syncthreads();
      const int c = *q.count;
      __syncthreads();
      rq_select_merge(q, c);
      ts = q.s[q.k - 1];
      seeded = true;
    }
    for (unsigned f0 = 0; f0 < total; f0 += (unsigned)T) {
      const RqScanGroup<L> nxt =
          rq_scan_fetch<L>(f0 + (unsigned)(T + t), total, pre, beg, end, nb, codes, ld);
      // Scores without a branch per item: a bit per item that reaches the k-th score, then
      // (rarely, once the threshold is seeded) the offers, each item scored again.
      const unsigned valid = rq_scan_valid<L>(cur) & ~skip;
      unsigned hit = 0;
RQ_UNROLL
      for (int u = 0; u < RQ_SCAN_GROUP; ++u) {
        const float s = rq_scan_score<L>(cur, u, valid, tb, metric, qn, item_norms);
        hit |= (s >= ts ? 1u : 0u) << u;
      }
      hit &= valid;
      __syncwarp();  // rq_scan_reload's fence
      unsigned pending = 0;
      if (hit != 0) {
        const RqScanGroup<L> again = rq_scan_reload<L>(cur, codes, ld);
RQ_UNROLL
        for (int u = 0; u < RQ_SCAN_GROUP; ++u) {
          if (hit >> u & 1u) {
            const float s = rq_scan_score<L>(again, u, ~0u, tb, metric, qn, item_norms);
            if (!rq_scan_offer(q, ts, s, cur.item0 + (unsigned)u, ids)) pending |= 1u << u;
          }
        }
      }
      skip = 0;
      // The round's end: merge when the buffer is half full or an offer found it full, then
      // offer the pending items again (against the new k-th entry) until none remain; each
      // merge empties the buffer, so every pass buffers at least one of them.
      for (;;) {
        __syncthreads();
        const int c = *q.count;
        const int any = __syncthreads_or(pending != 0);
        if (!any && c <= (q.cap - q.k) / 2) break;
        rq_select_merge(q, c < q.cap - q.k ? c : q.cap - q.k);
        ts = q.s[q.k - 1];
        if (!any) break;
        unsigned still = 0;
        const RqScanGroup<L> again = rq_scan_reload<L>(cur, codes, ld);  // fenced: a merge
RQ_UNROLL
        for (int u = 0; u < RQ_SCAN_GROUP; ++u) {
          if (pending >> u & 1u) {
            const float s = rq_scan_score<L>(again, u, ~0u, tb, metric, qn, item_norms);
            if (!rq_scan_offer(q, ts, s, cur.item0 + (unsigned)u, ids)) still |= 1u << u;
          }
        }
        pending = still;
      }
      cur = nxt;
    }
    __syncthreads();  // the chunk's ranges are read before the next chunk's overwrite them
  }
  rq_select_finish(q);  // synchronises: the counter is complete
  if (t == 0) out_scanned[b] = *scanned;
  for (int i = t; i < k; i += T) {
    const bool full = q.p[i] != RQ_NO_PAYLOAD;
    out_pos[b * k + i] = full ? (long long)q.p[i] : -1;
    out_scores[b * k + i] = full ? q.s[i] : rq_neg_inf();
  }
}

/// The scan kernel's entry points, one per level count L (1..4): each is the body compiled
/// for its L, so that a thread's groups take 4·L registers each (one kernel switching over
/// the four bodies spilled; each alone does not). Arguments as rq_fused_scan_body.
extern "C" __global__ void __launch_bounds__(256, 2) rq_fused_scan_l1(
    const float* luts, const long long* lut_off, const int* lut_k, int rep_shift,
    const unsigned char* codes, long long ld, const unsigned* item_start,
    const long long* cand_start, const int* cand_count, const unsigned* cand_nodes,
    const float* item_norms, const float* qnorm, int metric, const long long* ids,
    long long* out_scanned, int k, int cap, long long* out_pos, float* out_scores) {
  rq_fused_scan_body<1>(luts, lut_off, lut_k, rep_shift, codes, ld, item_start, cand_start,
                         cand_count, cand_nodes, item_norms, qnorm, metric, ids, out_scanned, k,
                         cap, out_pos, out_scores);
}

extern "C" __global__ void __launch_bounds__(256, 2) rq_fused_scan_l2(
    const float* luts, const long long* lut_off, const int* lut_k, int rep_shift,
    const unsigned char* codes, long long ld, const unsigned* item_start,
    const long long* cand_start, const int* cand_count, const unsigned* cand_nodes,
    const float* item_norms, const float* qnorm, int metric, const long long* ids,
    long long* out_scanned, int k, int cap, long long* out_pos, float* out_scores) {
  rq_fused_scan_body<2>(luts, lut_off, lut_k, rep_shift, codes, ld, item_start, cand_start,
                         cand_count, cand_nodes, item_norms, qnorm, metric, ids, out_scanned, k,
                         cap, out_pos, out_scores);
}

extern "C" __global__ void __launch_bounds__(256, 2) rq_fused_scan_l3(
    const float* luts, const long long* lut_off, const int* lut_k, int rep_shift,
    const unsigned char* codes, long long ld, const unsigned* item_start,
    const long long* cand_start, const int* cand_count, const unsigned* cand_nodes,
    const float* item_norms, const float* qnorm, int metric, const long long* ids,
    long long* out_scanned, int k, int cap, long long* out_pos, float* out_scores) {
  rq_fused_scan_body<3>(luts, lut_off, lut_k, rep_shift, codes, ld, item_start, cand_start,
                         cand_count, cand_nodes, item_norms, qnorm, metric, ids, out_scanned, k,
                         cap, out_pos, out_scores);
}

extern "C" __global__ void __launch_bounds__(256, 2) rq_fused_scan_l4(
    const float* luts, const long long* lut_off, const int* lut_k, int rep_shift,
    const unsigned char* codes, long long ld, const unsigned* item_start,
    const long long* cand_start, const int* cand_count, const unsigned* cand_nodes,
    const float* item_norms, const float* qnorm, int metric, const long long* ids,
    long long* out_scanned, int k, int cap, long long* out_pos, float* out_scores) {
  rq_fused_scan_body<4>(luts, lut_off, lut_k, rep_shift, codes, ld, item_start, cand_start,
                         cand_count, cand_nodes, item_norms, qnorm, metric, ids, out_scanned, k,
                         cap, out_pos, out_scores);
}
