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
