// Row-wise and segmented top-k (DESIGN §4 order: score desc, equal scores → lower id).
//
// Output of every kernel: `k` (id, score) slots per row, best first; slots past the row's
// length are (-1, -inf). Ids are column indices (rows) or offsets within the segment.
#include "radix.cuh"

/// Columns per thread loaded per round by the histogram passes of rq_topk_radix.
#define RQ_RADIX_LOADS 8

/// Columns per lane loaded per chunk by the warp-per-row paths (rq_topk_argmax,
/// rq_warp_select): lane `lane` loads x[j0 + u·32 + lane], u < RQ_TOPK_CHUNK, all loads issued
/// before any is used, so a warp keeps RQ_TOPK_CHUNK coalesced 128-byte loads (4 KiB) in flight.
#define RQ_TOPK_CHUNK 32
/// Entries of the per-lane queue of rq_warp_select (candidates of one chunk waiting for a merge).
#define RQ_TOPK_TQ 4

/// Empty entry of a warp list: below every real entry.
#define RQ_TOPK_EMPTY ((long long)0x8000000000000000ull)

/// Entry key of (score, column) for the warp lists: a larger key ranks first (higher score,
/// then lower column; -0 ties +0), compared as a signed 64-bit integer: the score's radix key
/// in the high word, ~column in the low word, the top bit flipped. A real entry is > EMPTY.
__device__ inline long long rq_topk_key(float v, int col) {
  const unsigned long long u =
      ((unsigned long long)rq_radix_key(v) << 32) | (unsigned long long)(unsigned)~col;
  return (long long)(u ^ 0x8000000000000000ull);
}

/// The column of a real entry key.
__device__ inline int rq_topk_col(long long key) { return (int)~(unsigned)(key & 0xffffffffLL); }

/// A score with the key's radix key (-0 comes back as +0, which compares equal).
__device__ inline float rq_topk_key_score(long long key) {
  const unsigned k = (unsigned)((unsigned long long)key >> 32) ^ 0x80000000u;
  const unsigned u = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}

/// Top-1 of each row: one warp per row. grid: ceil(rows / warps per block); block: a
/// multiple of 32 threads; no shared memory. Each lane scans its columns in chunks of
/// RQ_TOPK_CHUNK independent loads, then the warp reduces.
/// scores: rows × n (f32, row-major); out_ids/out_scores: rows (i64 / f32).
extern "C" __global__ void rq_topk_argmax(const float* scores, int rows, int n,
                                          long long* out_ids, float* out_scores) {
  const int warps = (int)(blockDim.x / RQ_WARP);
  const int row = (int)blockIdx.x * warps + (int)(threadIdx.x / RQ_WARP);
  const int lane = (int)(threadIdx.x % RQ_WARP);
  // Every lane of the warp takes part in the reduction, also past the last row.
  float s = rq_neg_inf();
  long long r = RQ_MAX_RANK;
  if (row < rows) {
    const float* x = scores + (long long)row * n;
    for (int j0 = 0; j0 < n; j0 += RQ_WARP * RQ_TOPK_CHUNK) {
      float v[RQ_TOPK_CHUNK];
RQ_UNROLL
      for (int u = 0; u < RQ_TOPK_CHUNK; ++u) {
        const int j = j0 + u * RQ_WARP + lane;
        v[u] = j < n ? x[j] : rq_neg_inf();
      }
RQ_UNROLL
      for (int u = 0; u < RQ_TOPK_CHUNK; ++u) {
        const int j = j0 + u * RQ_WARP + lane;
        const long long rj = j < n ? (long long)j : RQ_MAX_RANK;  // padding never wins
        if (rq_better(v[u], rj, s, r)) {
          s = v[u];
          r = rj;
        }
      }
    }
  }
  rq_warp_argmax(s, r);
  if (row < rows && lane == 0) {
    out_ids[row] = r == RQ_MAX_RANK ? -1 : r;
    out_scores[row] = s;
  }
}

/// One compare-exchange step of a warp-wide bitonic network over one entry key per lane: the
/// lane keeps the better (keep_better) or the worse of itself and lane ^ stride.
/// Every lane of the warp must call it.
__device__ inline void rq_warp_cmpx(long long& e, int stride, bool keep_better) {
  const long long o = __shfl_xor_sync(RQ_FULL_MASK, e, stride);
  if ((o > e) == keep_better) e = o;
}

/// Sorts the warp's 32 entry keys best first across lanes (bitonic sort, 15 steps).
/// Every lane of the warp must call it.
__device__ inline void rq_warp_sort(long long& e, int lane) {
  for (int size = 2; size <= RQ_WARP; size <<= 1) {
    for (int stride = size / 2; stride > 0; stride >>= 1) {
      const bool best_first = (lane & size) == 0;  // always true at size 32
      rq_warp_cmpx(e, stride, ((lane & stride) == 0) == best_first);
    }
  }
}

/// Bitonic clean-up of a warp list of 32·Q entry keys, entry i = q·32 + lane in register q of
/// lane `lane`: sorts a bitonic sequence best first. Strides ≥ 32 swap registers within a
/// lane, smaller strides exchange across lanes. Every lane of the warp must call it.
template <int Q>
__device__ inline void rq_warp_clean(long long (&e)[Q], int lane) {
RQ_UNROLL
  for (int h = Q / 2; h > 0; h /= 2) {
RQ_UNROLL
    for (int q = 0; q < Q; ++q) {
      if ((q & h) == 0 && e[q + h] > e[q]) {
        const long long t = e[q];
        e[q] = e[q + h];
        e[q + h] = t;
      }
    }
  }
  for (int stride = RQ_WARP / 2; stride > 0; stride >>= 1) {
RQ_UNROLL
    for (int q = 0; q < Q; ++q) rq_warp_cmpx(e[q], stride, (lane & stride) == 0);
  }
}

/// Offers one candidate key per lane (RQ_TOPK_EMPTY: none) to the warp list `e` (32·Q keys,
/// sorted best first, entry q·32 + lane in register q) whose k-th best key is `kkey`.
/// Nothing happens unless some candidate beats kkey (`__any_sync`). Otherwise those that
/// cannot enter are blanked, the 32 are sorted (warp bitonic sort) and merged: the last 32
/// entries i = 32·Q - 32 + lane take the better of themselves and candidate 31 - lane. With
/// the candidates padded by empty entries this is the classic "better of A[i] and
/// B[N-1-i]": the list is now a bitonic sequence holding the best 32·Q of the union, which
/// the clean-up sorts again; then kkey is refreshed (entry kq·32 + kl).
/// Every lane of the warp must call it.
template <int Q>
__device__ inline void rq_warp_offer(long long (&e)[Q], long long c, long long& kkey, int kq,
                                     int kl, int lane) {
  const bool enters = c > kkey;
  if (!__any_sync(RQ_FULL_MASK, enters)) return;  // the same decision on every lane
  long long cs = enters ? c : RQ_TOPK_EMPTY;
  rq_warp_sort(cs, lane);
  const long long rs = __shfl_sync(RQ_FULL_MASK, cs, RQ_WARP - 1 - lane);
  if (rs > e[Q - 1]) e[Q - 1] = rs;
  rq_warp_clean<Q>(e, lane);
  long long t = e[0];
RQ_UNROLL
  for (int q = 1; q < Q; ++q) {
    if (q == kq) t = e[q];
  }
  kkey = __shfl_sync(RQ_FULL_MASK, t, kl);
}

/// Warp select of the top k ≤ 32·Q of x[0, n) (FAISS-style warp queue with per-lane queues):
/// the warp keeps the best 32·Q entries seen so far as entry keys (rq_topk_key), sorted best
/// first, entry q·32 + lane in register q, and the k-th best key `kkey` (with its score `ks`)
/// in registers, refreshed only by a merge.
/// The row is read in chunks of 32·RQ_TOPK_CHUNK columns, RQ_TOPK_CHUNK loads per lane in
/// flight (see RQ_TOPK_CHUNK). Each lane counts its columns that beat the chunk-start
/// threshold (a float compare: every column of a chunk lies after every listed column, so
/// "beats (ks, kr)" is "score > ks"; before the list holds k entries every column counts):
/// - none on any lane (`__any_sync`): the chunk is skipped (the common case);
/// - at most RQ_TOPK_TQ on every lane: each lane queues its hits in registers, then the
///   queue slots are offered one by one (rq_warp_offer: one merge per slot, not per 32
///   columns; a queued key that no longer beats the refreshed kkey is dropped there);
/// - otherwise (the list is still filling): the 32-column sub-rounds are offered in order.
/// Ties → lower column; no shared memory, no barriers. Every lane of the warp must call it.
template <int Q>
__device__ inline void rq_warp_select(const float* x, int n, int k, long long* out_ids,
                                      float* out_scores) {
  const int lane = (int)(threadIdx.x % RQ_WARP);
  long long e[Q];
RQ_UNROLL
  for (int q = 0; q < Q; ++q) e[q] = RQ_TOPK_EMPTY;
  const int kq = (k - 1) / RQ_WARP, kl = (k - 1) % RQ_WARP;  // where the k-th best lives
  long long kkey = RQ_TOPK_EMPTY;
  float ks = rq_neg_inf();
  bool kfull = false;  // kkey is a real entry
  for (int j0 = 0; j0 < n; j0 += RQ_WARP * RQ_TOPK_CHUNK) {
    float v[RQ_TOPK_CHUNK];
RQ_UNROLL
    for (int u = 0; u < RQ_TOPK_CHUNK; ++u) {
      const int j = j0 + u * RQ_WARP + lane;
      v[u] = j < n ? x[j] : rq_neg_inf();  // padding never beats ks (≥ -inf)
    }
    int hits = 0;
    if (kfull) {
RQ_UNROLL
      for (int u = 0; u < RQ_TOPK_CHUNK; ++u) hits += v[u] > ks ? 1 : 0;
    } else {
      // Every valid column enters: this lane's columns j0 + u·32 + lane < n.
      const int left = n - j0 - lane;
      hits = left <= 0 ? 0 : (left + RQ_WARP - 1) / RQ_WARP;
      if (hits > RQ_TOPK_CHUNK) hits = RQ_TOPK_CHUNK;
    }
    if (!__any_sync(RQ_FULL_MASK, hits > 0)) continue;
    if (!__any_sync(RQ_FULL_MASK, hits > RQ_TOPK_TQ)) {
      long long tq[RQ_TOPK_TQ];
RQ_UNROLL
      for (int t = 0; t < RQ_TOPK_TQ; ++t) tq[t] = RQ_TOPK_EMPTY;
RQ_UNROLL
      for (int u = 0; u < RQ_TOPK_CHUNK; ++u) {
        const int j = j0 + u * RQ_WARP + lane;
        if (j < n && (v[u] > ks || !kfull)) {
RQ_UNROLL
          for (int t = RQ_TOPK_TQ - 1; t > 0; --t) tq[t] = tq[t - 1];
          tq[0] = rq_topk_key(v[u], j);
        }
      }
      for (int t = 0; t < RQ_TOPK_TQ; ++t) {
        const long long c = tq[0];
RQ_UNROLL
        for (int i = 0; i + 1 < RQ_TOPK_TQ; ++i) tq[i] = tq[i + 1];
        tq[RQ_TOPK_TQ - 1] = RQ_TOPK_EMPTY;
        rq_warp_offer<Q>(e, c, kkey, kq, kl, lane);
      }
    } else {
      for (int u = 0; u < RQ_TOPK_CHUNK; ++u) {
        const float c = v[0];
RQ_UNROLL
        for (int i = 0; i + 1 < RQ_TOPK_CHUNK; ++i) v[i] = v[i + 1];
        const int j = j0 + u * RQ_WARP + lane;
        rq_warp_offer<Q>(e, j < n ? rq_topk_key(c, j) : RQ_TOPK_EMPTY, kkey, kq, kl, lane);
      }
    }
    kfull = kkey != RQ_TOPK_EMPTY;
    ks = kfull ? rq_topk_key_score(kkey) : rq_neg_inf();
  }
  // Scores are read back from the row: the key keeps -0 and +0 apart only by column.
RQ_UNROLL
  for (int q = 0; q < Q; ++q) {
    const int i = q * RQ_WARP + lane;
    if (i < k) {
      const bool full = e[q] != RQ_TOPK_EMPTY;
      const int col = rq_topk_col(e[q]);
      out_ids[i] = full ? col : -1;
      out_scores[i] = full ? x[col] : rq_neg_inf();
    }
  }
}

/// Top-k of each row for 2 ≤ k ≤ 256, one warp per row (the warp-queue path; see
/// rq_warp_select): the warp keeps 32·Q entries, Q = 1, 2, 4 or 8 the least with k ≤ 32·Q.
/// grid: ceil(rows / warps per block); block: a multiple of 32 threads; no shared memory.
/// scores: rows × n; out_ids/out_scores: rows × k (slots past n: -1 / -inf).
extern "C" __global__ void rq_topk_warp(const float* scores, int rows, int n, int k,
                                        long long* out_ids, float* out_scores) {
  const int warps = (int)(blockDim.x / RQ_WARP);
  const int row = (int)blockIdx.x * warps + (int)(threadIdx.x / RQ_WARP);
  if (row >= rows) return;  // the whole warp: its lanes share the row
  const float* x = scores + (long long)row * n;
  long long* ids = out_ids + (long long)row * k;
  float* sc = out_scores + (long long)row * k;
  if (k <= RQ_WARP)
    rq_warp_select<1>(x, n, k, ids, sc);
  else if (k <= 2 * RQ_WARP)
    rq_warp_select<2>(x, n, k, ids, sc);
  else if (k <= 4 * RQ_WARP)
    rq_warp_select<4>(x, n, k, ids, sc);
  else
    rq_warp_select<8>(x, n, k, ids, sc);
}

/// Stores a finished selector's k entries, best first: ids = ranks, scores; empty slots
/// (-1, -inf).
__device__ inline void rq_select_store_ranks(const RqSelect& q, long long* out_ids,
                                             float* out_scores) {
  for (int i = threadIdx.x; i < q.k; i += blockDim.x) {
    const bool full = q.p[i] != RQ_NO_PAYLOAD;
    out_ids[i] = full ? q.r[i] : -1;
    out_scores[i] = full ? q.s[i] : rq_neg_inf();
  }
}

/// Top-k of values[begin, end) into out_ids/out_scores[0, k): ids are offsets from begin.
__device__ inline void rq_topk_range(const float* values, long long begin, long long end,
                                     const RqSelect& q, long long* out_ids,
                                     float* out_scores) {
  rq_select_init(q);
  const long long n = end - begin;
  for (long long j0 = 0; j0 < n; j0 += blockDim.x) {
    const long long j = j0 + threadIdx.x;
    const bool valid = j < n;
    rq_select_push(q, valid, valid ? values[begin + j] : 0.0f, j, 0u);
  }
  rq_select_finish(q);
  rq_select_store_ranks(q, out_ids, out_scores);
}

/// Segmented top-k, 1 ≤ k ≤ 2048: segment s is values[offsets[s], offsets[s+1]).
/// grid: segments; block: a power of two ≥ 32; shared: 16·cap + 1104 bytes, cap = next power
/// of two ≥ k + blockDim.x.
/// offsets: segments + 1 (i64, non-decreasing); out_ids/out_scores: segments × k.
extern "C" __global__ void rq_segmented_topk(const float* values, const long long* offsets,
                                             int k, int cap, long long* out_ids,
                                             float* out_scores) {
  RQ_SHARED_BASE(smem);
  const RqSelect q = rq_select_carve(smem, k, cap);
  const long long seg = blockIdx.x;
  rq_topk_range(values, offsets[seg], offsets[seg + 1], q, out_ids + seg * k,
                out_scores + seg * k);
}

/// Calls f(j, x[j]) for every column j < n of the row, RQ_RADIX_LOADS independent loads per
/// thread issued before any is used (bytes in flight). f must not synchronise.
template <class F>
__device__ inline void rq_radix_sweep(const float* x, int n, F f) {
  for (int j0 = 0; j0 < n; j0 += RQ_RADIX_LOADS * (int)blockDim.x) {
    float v[RQ_RADIX_LOADS];
RQ_UNROLL
    for (int u = 0; u < RQ_RADIX_LOADS; ++u) {
      const int j = j0 + u * (int)blockDim.x + (int)threadIdx.x;
      v[u] = j < n ? x[j] : 0.0f;
    }
RQ_UNROLL
    for (int u = 0; u < RQ_RADIX_LOADS; ++u) {
      const int j = j0 + u * (int)blockDim.x + (int)threadIdx.x;
      if (j < n) f(j, v[u]);
    }
  }
}

/// Slow path of rq_topk_radix, when ties at the k-th key must be cut and do not fit the
/// shared buffer: the elements above `prefix` (the k-th radix key) go to a[0, greater)
/// (shared atomic ctrl[4]), the first `need` with key == prefix in column order to
/// a[greater, greater + need) (block scan per blockDim.x columns). Every thread of the block
/// must call it; ctrl[2] = ctrl[4] = 0 on entry.
__device__ inline void rq_radix_place_cut(const float* x, int n, int need, int greater,
                                          unsigned prefix, unsigned long long* a, int* ctrl,
                                          unsigned* flags) {
  for (int j0 = 0; j0 < n; j0 += blockDim.x) {
    const int j = j0 + (int)threadIdx.x;
    unsigned key = 0;
    if (j < n) key = rq_radix_key(x[j]);
    const bool gt = j < n && key > prefix;
    const bool eq = j < n && key == prefix;
    if (gt) a[atomicAdd(&ctrl[4], 1)] = rq_radix_entry(key, j);
    flags[threadIdx.x] = eq ? 1u : 0u;
    __syncthreads();
    rq_block_inclusive_scan(flags, (int)blockDim.x);
    const int before = ctrl[2] + (int)flags[threadIdx.x] - (eq ? 1 : 0);
    if (eq && before < need) a[greater + before] = rq_radix_entry(key, j);
    __syncthreads();
    if (threadIdx.x == 0) ctrl[2] += (int)flags[blockDim.x - 1];
    __syncthreads();
  }
}

/// Top-k of each row by radix select, for large k (the host uses it for 256 < k ≤ 2048);
/// the row is read from global memory twice in the common case.
/// 1. Histogram passes over the row (8-bit digits of the radix key from the top,
///    RQ_RADIX_LOADS independent loads per thread per round, shared atomics) narrow the
///    prefix holding the k-th best; after each, the elements above the prefix are certain
///    winners (`greater`) and `need` more come from the `m` elements under it. Stop as soon
///    as (a) all m are kept, or (b) greater + m ≤ slots (the m fit the shared buffer). For
///    distinct-ish data (b) holds after the first pass (normal rows of 100 000, k = 1000:
///    m ≈ 2 300 ≤ 3 072 − greater), so this is one read.
/// 2. One more pass places the certain winners into a[0, greater) by a shared atomic; in
///    (a) the m join them, in (b) they are copied as entries (rq_radix_entry) to
///    a[greater, greater + m) and rq_radix_select_smem picks the best `need` of them in
///    shared memory (radix passes over the buffer, then a compaction).
/// 3. Only when the four passes end with more elements carrying the k-th key than fit
///    (heavy ties) are the ties cut in column order by rq_radix_place_cut (block scan per
///    blockDim.x columns): the old general path, up to five reads of the row.
/// A bitonic sort of the entries a[0, next power of two ≥ k) orders them best first; scores
/// come back from the keys (exact, a zero score is re-read from the row for its sign).
/// Work is O(n) per row whatever the data's order.
/// grid: rows; block: a power of two ≥ 32; shared: 1088 + 4·blockDim.x (rounded up to 16)
/// + 8·slots bytes, slots ≥ next power of two ≥ k (the host passes 3 072).
/// scores: rows × n; out_ids/out_scores: rows × k (slots past n: -1 / -inf).
extern "C" __global__ void rq_topk_radix(const float* scores, int n, int k, int slots,
                                         long long* out_ids, float* out_scores) {
  RQ_SHARED_BASE(smem);
  int* hist = reinterpret_cast<int*>(smem);  // 256 counters
  // ctrl: [0] digit, [1] need, [3] count at the digit (rq_radix_digit), [2] ties taken
  // (rq_radix_place_cut), [4] next winner slot, [5] next buffer slot, [6] compaction slot.
  int* ctrl = hist + 256;
  unsigned* flags = reinterpret_cast<unsigned*>(smem + RQ_RADIX_HEAD);
  unsigned long long* a = reinterpret_cast<unsigned long long*>(
      smem + RQ_RADIX_HEAD + (4u * blockDim.x + 15u) / 16u * 16u);
  const long long row = blockIdx.x;
  const float* x = scores + row * n;
  const int kk = k < n ? k : n;  // real winners

  unsigned prefix = 0, mask = 0;
  int need = kk, m = 0, shift = 24;
  int mode = 0;  // 0: cut ties (slow), 1: every element under the prefix kept, 2: buffer
  for (; kk > 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    rq_radix_sweep(x, n, [&](int, float v) {
      const unsigned key = rq_radix_key(v);
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 0xffu], 1);
    });
    __syncthreads();
    rq_radix_digit(hist, need, ctrl);
    prefix |= (unsigned)ctrl[0] << shift;
    mask |= 0xffu << shift;
    need = ctrl[1];
    m = ctrl[3];
    __syncthreads();
    if (m == need) {
      mode = 1;
      break;
    }
    if (kk - need + m <= slots) {
      mode = 2;
      break;
    }
    if (shift == 0) break;  // the k-th key itself is tied beyond the buffer
  }
  const int greater = kk - need;
  if (threadIdx.x == 0) {
    ctrl[2] = 0;
    ctrl[4] = 0;
    ctrl[5] = greater;
  }
  __syncthreads();
  if (kk > 0 && mode == 0) {
    rq_radix_place_cut(x, n, need, greater, prefix, a, ctrl, flags);
  } else if (kk > 0) {
    const bool all = mode == 1;
    rq_radix_sweep(x, n, [&](int j, float v) {
      const unsigned key = rq_radix_key(v);
      const unsigned km = key & mask;
      if (km > prefix || (all && km == prefix))
        a[atomicAdd(&ctrl[4], 1)] = rq_radix_entry(key, j);
      else if (km == prefix)
        a[atomicAdd(&ctrl[5], 1)] = rq_radix_entry(key, j);
    });
    __syncthreads();
    if (!all)
      rq_radix_select_smem(a + greater, m, need, (unsigned long long)prefix << 32,
                           (unsigned long long)mask << 32, shift + 24, hist, ctrl);
  }
  unsigned sorted = 1;
  while (sorted < (unsigned)k) sorted <<= 1;
  for (unsigned i = (unsigned)kk + threadIdx.x; i < sorted; i += blockDim.x) a[i] = 0ull;
  __syncthreads();
  rq_radix_sort(a, sorted);
  for (int i = threadIdx.x; i < k; i += blockDim.x) {
    const unsigned long long e = a[i];
    const bool full = e != 0ull;
    const int col = (int)~(unsigned)e;
    float s = rq_radix_score((unsigned)(e >> 32));
    if (full && s == 0.0f) s = x[col];  // -0 or +0: the key does not tell
    out_ids[row * k + i] = full ? col : -1;
    out_scores[row * k + i] = full ? s : rq_neg_inf();
  }
}

/// Merges two sorted top-k lists per row into one: list A (global ids) and list B (ids local
/// to a block of columns that starts at b_base, so every B id is above every A id), each
/// `rows × k`, best first, missing slots id -1 (last). out[row] = the best k of both by
/// (score desc, id asc); equal scores (-0 ties +0) go to A, whose ids are lower. Each thread
/// places one entry at its rank in the merged list: its index in its own list plus the
/// number of the other list's entries that rank before it (a binary search, the lists being
/// sorted), so the merge is parallel and needs no shared memory; entries ranked k or later
/// are dropped. Missing A entries fill the slots after the real ones.
/// grid: (rows, ceil(2k / blockDim.x)); block: any size; a_*, b_*, out_*: rows × k.
extern "C" __global__ void rq_topk_merge(const long long* a_ids, const float* a_scores,
                                         const long long* b_ids, const float* b_scores,
                                         long long b_base, int k, long long* out_ids,
                                         float* out_scores) {
  const long long row = blockIdx.x;
  const int e = (int)(blockIdx.y * blockDim.x + threadIdx.x);
  if (e >= 2 * k) return;
  const long long* ai = a_ids + row * k;
  const float* as = a_scores + row * k;
  const long long* bi = b_ids + row * k;
  const float* bs = b_scores + row * k;
  const bool from_a = e < k;
  const int j = from_a ? e : e - k;
  const long long id = from_a ? ai[j] : bi[j];
  const float s = from_a ? as[j] : bs[j];
  // Entries of the other list ranked before this one: a true prefix of it (real entries
  // sorted best first, missing ones last), found by binary search.
  int lo = 0, hi = k;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    const bool before = from_a ? (bi[mid] >= 0 && (id < 0 || bs[mid] > s))
                               : (ai[mid] >= 0 && (id < 0 || as[mid] >= s));
    if (before) lo = mid + 1;
    else hi = mid;
  }
  // A missing B entry goes after every A entry: its rank k + j is dropped.
  const int pos = from_a || id >= 0 ? j + lo : k + j;
  if (pos < k) {
    out_ids[row * k + pos] = id < 0 ? -1 : (from_a ? id : b_base + id);
    out_scores[row * k + pos] = s;
  }
}

/// Best k of the m top-k lists of each row, when the row was selected as m segments of w
/// columns (the exact top-k's split of a wide row, so that few queries still occupy the
/// GPU): row r's lists are ids/scores[(r·m + s)·kin + slot], s < m, slot < kin, each sorted
/// best first with column ids local to segment s (-1 missing). Entry (s, local) is column
/// s·w + local of the row and is kept when below n (columns ≥ n are padding). Output: row
/// r's best k by (score desc, column asc), columns as ids, missing slots (-1, -inf).
/// grid: rows; block: a power of two ≥ 32; shared: 16·cap + 1104 bytes, cap = next power of
/// two ≥ k + blockDim.x; 1 ≤ k ≤ 2048.
extern "C" __global__ void rq_topk_lists(const long long* ids, const float* scores, int m,
                                         int kin, int w, int n, int k, int cap,
                                         long long* out_ids, float* out_scores) {
  RQ_SHARED_BASE(smem);
  const RqSelect q = rq_select_carve(smem, k, cap);
  const long long row = blockIdx.x;
  const long long total = (long long)m * kin;
  const long long* ri = ids + row * total;
  const float* rs = scores + row * total;
  rq_select_init(q);
  for (long long e0 = 0; e0 < total; e0 += blockDim.x) {
    const long long e = e0 + threadIdx.x;
    const long long local = e < total ? ri[e] : -1;
    const long long col = local < 0 ? -1 : (e / kin) * (long long)w + local;
    const bool valid = col >= 0 && col < n;
    rq_select_push(q, valid, valid ? rs[e] : 0.0f, col, 0u);
  }
  rq_select_finish(q);
  rq_select_store_ranks(q, out_ids + row * k, out_scores + row * k);
}
