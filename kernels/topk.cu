// Row-wise and segmented top-k (DESIGN §4 order: score desc, equal scores → lower id).
//
// Output of every kernel: `k` (id, score) slots per row, best first; slots past the row's
// length are (-1, -inf). Ids are column indices (rows) or offsets within the segment.
#include "common.cuh"

/// Top-1 of each row: one warp per row. grid: ceil(rows / warps per block); block: a
/// multiple of 32 threads; no shared memory.
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
    for (int j = lane; j < n; j += RQ_WARP) {
      if (rq_better(x[j], j, s, r)) {
        s = x[j];
        r = j;
      }
    }
  }
  rq_warp_argmax(s, r);
  if (row < rows && lane == 0) {
    out_ids[row] = r == RQ_MAX_RANK ? -1 : r;
    out_scores[row] = s;
  }
}

/// One compare-exchange step of a warp-wide bitonic network over one (score, rank) entry per
/// lane: the lane keeps the better (keep_better) or the worse of itself and lane ^ stride.
/// Every lane of the warp must call it.
__device__ inline void rq_warp_cmpx(float& s, long long& r, int stride, bool keep_better) {
  const float os = __shfl_xor_sync(RQ_FULL_MASK, s, stride);
  const long long orr = __shfl_xor_sync(RQ_FULL_MASK, r, stride);
  if (rq_better(os, orr, s, r) == keep_better) {
    s = os;
    r = orr;
  }
}

/// Sorts the warp's 32 entries best first across lanes (bitonic sort, 15 steps).
/// Every lane of the warp must call it.
__device__ inline void rq_warp_sort(float& s, long long& r) {
  const int lane = (int)(threadIdx.x % RQ_WARP);
  for (int size = 2; size <= RQ_WARP; size <<= 1) {
    for (int stride = size / 2; stride > 0; stride >>= 1) {
      const bool best_first = (lane & size) == 0;  // always true at size 32
      rq_warp_cmpx(s, r, stride, ((lane & stride) == 0) == best_first);
    }
  }
}

/// Bitonic clean-up of a warp list of 32·Q entries, entry e = q·32 + lane in register q of
/// lane `lane`: sorts a bitonic sequence best first. Strides ≥ 32 swap registers within a
/// lane, smaller strides exchange across lanes. Every lane of the warp must call it.
template <int Q>
__device__ inline void rq_warp_clean(float (&s)[Q], long long (&r)[Q], int lane) {
RQ_UNROLL
  for (int h = Q / 2; h > 0; h /= 2) {
RQ_UNROLL
    for (int q = 0; q < Q; ++q) {
      if ((q & h) == 0 && rq_better(s[q + h], r[q + h], s[q], r[q])) {
        const float ts = s[q];
        const long long tr = r[q];
        s[q] = s[q + h];
        r[q] = r[q + h];
        s[q + h] = ts;
        r[q + h] = tr;
      }
    }
  }
  for (int stride = RQ_WARP / 2; stride > 0; stride >>= 1) {
RQ_UNROLL
    for (int q = 0; q < Q; ++q) rq_warp_cmpx(s[q], r[q], stride, (lane & stride) == 0);
  }
}

/// Warp select of the top k ≤ 32·Q of x[0, n) (FAISS-style warp queue): the warp keeps the
/// best 32·Q entries seen so far, sorted best first, entry e = q·32 + lane in register q.
/// Each round loads 32 columns; unless one beats the current k-th best (`__any_sync`) the
/// round is skipped. Otherwise the candidates that cannot enter are blanked, the 32 are
/// sorted (warp bitonic sort) and merged: the last 32 entries e = 32·Q - 32 + lane take the
/// better of themselves and candidate 31 - lane. With the candidates padded by empty
/// entries this is the classic "better of A[i] and B[N-1-i]": the list is now a bitonic
/// sequence holding the best 32·Q of the union, which the clean-up sorts again.
/// Ties → lower column; no shared memory, no barriers. Every lane of the warp must call it.
template <int Q>
__device__ inline void rq_warp_select(const float* x, int n, int k, long long* out_ids,
                                      float* out_scores) {
  const int lane = (int)(threadIdx.x % RQ_WARP);
  float s[Q];
  long long r[Q];
RQ_UNROLL
  for (int q = 0; q < Q; ++q) {
    s[q] = rq_neg_inf();
    r[q] = RQ_MAX_RANK;
  }
  const int kq = (k - 1) / RQ_WARP, kl = (k - 1) % RQ_WARP;  // where the k-th best lives
  for (int j0 = 0; j0 < n; j0 += RQ_WARP) {
    const int j = j0 + lane;
    float cs = rq_neg_inf();
    long long cr = RQ_MAX_RANK;
    if (j < n) {
      cs = x[j];
      cr = j;
    }
    float ks = s[0];
    long long kr = r[0];
RQ_UNROLL
    for (int q = 1; q < Q; ++q) {
      if (q == kq) {
        ks = s[q];
        kr = r[q];
      }
    }
    ks = __shfl_sync(RQ_FULL_MASK, ks, kl);
    kr = __shfl_sync(RQ_FULL_MASK, kr, kl);
    const bool enters = rq_better(cs, cr, ks, kr);
    if (!__any_sync(RQ_FULL_MASK, enters)) continue;  // the same decision on every lane
    if (!enters) {
      cs = rq_neg_inf();
      cr = RQ_MAX_RANK;
    }
    rq_warp_sort(cs, cr);
    const float rs = __shfl_sync(RQ_FULL_MASK, cs, RQ_WARP - 1 - lane);
    const long long rr = __shfl_sync(RQ_FULL_MASK, cr, RQ_WARP - 1 - lane);
    if (rq_better(rs, rr, s[Q - 1], r[Q - 1])) {
      s[Q - 1] = rs;
      r[Q - 1] = rr;
    }
    rq_warp_clean<Q>(s, r, lane);
  }
RQ_UNROLL
  for (int q = 0; q < Q; ++q) {
    const int e = q * RQ_WARP + lane;
    if (e < k) {
      const bool full = r[q] != RQ_MAX_RANK;
      out_ids[e] = full ? r[q] : -1;
      out_scores[e] = full ? s[q] : rq_neg_inf();
    }
  }
}

/// Top-k of each row for 1 ≤ k ≤ 256, one warp per row (the warp-queue path; see
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

/// Order-preserving key of a score: a larger key is a larger float; -0 and +0 share a key
/// (they tie, and ties go to the lower id).
__device__ inline unsigned rq_radix_key(float v) {
  if (v == 0.0f) v = 0.0f;
  unsigned u;
  __builtin_memcpy(&u, &v, 4);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/// Top-k of each row by radix select, for large k (the host uses it for 256 < k ≤ 2048):
/// four 8-bit histogram passes find the key of the k-th best score; the scores above it and,
/// in column order, the first tied ones fill k slots, which a bitonic sort orders best first.
/// Work is O(n) per row whatever the data's order.
/// grid: rows; block: a power of two ≥ 32; shared: 1040 + 4·blockDim.x (rounded up to
/// 16) + 16·cap + 16 bytes, cap = next power of two ≥ k. scores: rows × n;
/// out_ids/out_scores: rows × k (slots past n: -1 / -inf).
extern "C" __global__ void rq_topk_radix(const float* scores, int n, int k, int cap,
                                         long long* out_ids, float* out_scores) {
  RQ_SHARED_BASE(smem);
  int* hist = reinterpret_cast<int*>(smem);  // 256 counters
  int* ctrl = hist + 256;                     // [0] digit, [1] still needed, [2] taken
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
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
      const unsigned key = rq_radix_key(x[j]);
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 0xffu], 1);
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
    }
    __syncthreads();
    prefix |= (unsigned)ctrl[0] << shift;
    mask |= 0xffu << shift;
    need = ctrl[1];
    __syncthreads();
  }
  // prefix is now the key of the k-th best; `need` of the elements with that key are kept.
  const int greater = (k < n ? k : n) - need;
  if (threadIdx.x == 0) {
    ctrl[0] = 0;  // next slot among the greater ones
    ctrl[2] = 0;  // tied ones taken so far
  }
  __syncthreads();
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
  rq_select_sort(q, (unsigned)cap);
  for (int i = threadIdx.x; i < k; i += blockDim.x) {
    const bool full = q.p[i] != RQ_NO_PAYLOAD;
    out_ids[row * k + i] = full ? q.r[i] : -1;
    out_scores[row * k + i] = full ? q.s[i] : rq_neg_inf();
  }
}
