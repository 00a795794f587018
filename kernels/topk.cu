// Row-wise and segmented top-k (DESIGN §4 order: score desc, equal scores → lower id).
//
// Output of every kernel: `k` (id, score) slots per row, best first; slots past the row's
// length are (-1, -inf). Ids are column indices (rows) or offsets within the segment.
#include "common.cuh"

/// Columns per thread loaded per round by the histogram passes of rq_topk_radix.
#define RQ_RADIX_LOADS 8

/// Columns per lane loaded per chunk by the warp-per-row paths (rq_topk_argmax,
/// rq_warp_select): lane `lane` loads x[j0 + u·32 + lane], u < RQ_TOPK_CHUNK, all loads issued
/// before any is used, so a warp keeps RQ_TOPK_CHUNK coalesced 128-byte loads (4 KiB) in flight.
#define RQ_TOPK_CHUNK 32
/// Entries of the per-lane queue of rq_warp_select (candidates of one chunk waiting for a merge).
#define RQ_TOPK_TQ 4

/// Order-preserving key of a score: a larger key is a larger float; -0 and +0 share a key
/// (they tie, and ties go to the lower id).
__device__ inline unsigned rq_radix_key(float v) {
  if (v == 0.0f) v = 0.0f;
  unsigned u;
  __builtin_memcpy(&u, &v, 4);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

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
  for (int i = threadIdx.x; i < q.k; i += blockDim.x) {
    const bool full = q.p[i] != RQ_NO_PAYLOAD;
    out_ids[i] = full ? q.r[i] : -1;
    out_scores[i] = full ? q.s[i] : rq_neg_inf();
  }
}

/// Segmented top-k, 1 ≤ k ≤ 2048: segment s is values[offsets[s], offsets[s+1]).
/// grid: segments; block: a power of two ≥ 32; shared: 16·cap + 16 bytes, cap = next power
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

/// Last step of rq_topk_radix when ties at the k-th key must be cut: the elements above
/// `prefix` go to slots [0, greater) (shared atomic), the first `need` with key == prefix in
/// column order to slots [greater, greater + need) (block scan per blockDim.x columns).
/// Every thread of the block must call it; ctrl[0] = ctrl[2] = 0 on entry.
__device__ inline void rq_radix_place_cut(const float* x, int n, int need, int greater,
                                          unsigned prefix, const RqSelect& q, int* ctrl,
                                          unsigned* flags) {
  for (int j0 = 0; j0 < n; j0 += blockDim.x) {
    const int j = j0 + (int)threadIdx.x;
    unsigned key = 0;
    if (j < n) key = rq_radix_key(x[j]);
    const bool gt = j < n && key > prefix;
    const bool eq = j < n && key == prefix;
    if (gt) {
      const int at = atomicAdd(&ctrl[0], 1);
      q.r[at] = j;
      q.s[at] = x[j];
      q.p[at] = 0u;
    }
    flags[threadIdx.x] = eq ? 1u : 0u;
    __syncthreads();
    rq_block_inclusive_scan(flags, (int)blockDim.x);
    const int before = ctrl[2] + (int)flags[threadIdx.x] - (eq ? 1 : 0);
    if (eq && before < need) {
      q.r[greater + before] = j;
      q.s[greater + before] = x[j];
      q.p[greater + before] = 0u;
    }
    __syncthreads();
    if (threadIdx.x == 0) ctrl[2] += (int)flags[blockDim.x - 1];
    __syncthreads();
  }
}

/// Top-k of each row by radix select, for large k (the host uses it for 256 < k ≤ 2048):
/// four 8-bit histogram passes (RQ_RADIX_LOADS independent loads per thread per round, then
/// shared atomics) find the key of the k-th best score and how many elements carry it. If
/// all of those are kept, every element with key ≥ that key takes a slot by a shared atomic;
/// otherwise (ties cut) the scores above it and, in column order, the first tied ones fill
/// the k slots (rq_radix_place_cut, a block scan per blockDim.x columns). A bitonic sort then
/// orders the slots best first. Work is O(n) per row whatever the data's order.
/// grid: rows; block: a power of two ≥ 32; shared: 1040 + 4·blockDim.x (rounded up to
/// 16) + 16·cap + 16 bytes, cap = next power of two ≥ k. scores: rows × n;
/// out_ids/out_scores: rows × k (slots past n: -1 / -inf).
extern "C" __global__ void rq_topk_radix(const float* scores, int n, int k, int cap,
                                         long long* out_ids, float* out_scores) {
  RQ_SHARED_BASE(smem);
  int* hist = reinterpret_cast<int*>(smem);  // 256 counters
  int* ctrl = hist + 256;  // [0] digit / next slot, [1] still needed, [2] taken, [3] tied
  unsigned* flags = reinterpret_cast<unsigned*>(smem + 1040);
  const RqSelect q =
      rq_select_carve(smem + 1040 + (4u * blockDim.x + 15u) / 16u * 16u, k, cap);
  const long long row = blockIdx.x;
  const float* x = scores + row * n;
  rq_select_init(q);

  unsigned prefix = 0, mask = 0;
  int need = k < n ? k : n;  // elements still to choose at the current prefix
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    // RQ_RADIX_LOADS independent loads per thread before any counting (bytes in flight).
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
        const unsigned key = rq_radix_key(v[u]);
        if (j < n && (key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 0xffu], 1);
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int above = 0, digit = 255;
      for (; digit > 0; --digit) {
        if (above + hist[digit] >= need) break;
        above += hist[digit];
      }
      ctrl[0] = digit;
      ctrl[1] = need - above;
      ctrl[3] = hist[digit];  // elements with this prefix (at shift 0: with exactly the key)
    }
    __syncthreads();
    prefix |= (unsigned)ctrl[0] << shift;
    mask |= 0xffu << shift;
    need = ctrl[1];
    __syncthreads();
  }
  // prefix is now the key of the k-th best; `need` of the `tied` elements with that key are
  // kept.
  const int greater = (k < n ? k : n) - need;
  const int tied = ctrl[3];
  __syncthreads();
  if (threadIdx.x == 0) {
    ctrl[0] = 0;  // next slot among the greater ones (all kept ones when every tie is kept)
    ctrl[2] = 0;  // tied ones taken so far
  }
  __syncthreads();
  if (need == tied) {
    // Every element with key ≥ prefix is kept: any slot order will do (the sort below orders
    // by (score, column)), so no scan.
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
        if (j < n && rq_radix_key(v[u]) >= prefix) {
          const int at = atomicAdd(&ctrl[0], 1);
          q.r[at] = j;
          q.s[at] = v[u];
          q.p[at] = 0u;
        }
      }
    }
    __syncthreads();
  } else {
    rq_radix_place_cut(x, n, need, greater, prefix, q, ctrl, flags);
  }
  rq_select_sort(q, (unsigned)cap);
  for (int i = threadIdx.x; i < k; i += blockDim.x) {
    const bool full = q.p[i] != RQ_NO_PAYLOAD;
    out_ids[row * k + i] = full ? q.r[i] : -1;
    out_scores[row * k + i] = full ? q.s[i] : rq_neg_inf();
  }
}
