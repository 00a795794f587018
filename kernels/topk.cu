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

/// Top-k of each row, 1 ≤ k ≤ 2048. grid: rows; block: a power of two ≥ 32;
/// shared: 16·cap + 16 bytes, cap = next power of two ≥ k + blockDim.x.
/// scores: rows × n; out_ids/out_scores: rows × k.
extern "C" __global__ void rq_topk_rows(const float* scores, int n, int k, int cap,
                                        long long* out_ids, float* out_scores) {
  RQ_SHARED_BASE(smem);
  const RqSelect q = rq_select_carve(smem, k, cap);
  const long long row = blockIdx.x;
  rq_topk_range(scores, row * n, row * n + n, q, out_ids + row * k, out_scores + row * k);
}

/// Segmented top-k, 1 ≤ k ≤ 2048: segment s is values[offsets[s], offsets[s+1]).
/// grid: segments; block: a power of two ≥ 32; shared as rq_topk_rows.
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
