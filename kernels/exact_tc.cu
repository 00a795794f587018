// The exact brute-force top-k's score tiles (ip and l2) with the screening on the tensor
// cores (`mma.sync` TF32, sm_80+), certified like the greedy assignment (greedy.cuh): a TF32
// GEMM tile gives every (query, item) an approximate score ŝ; only the items whose ŝ could
// reach the query's running k-th exact score (the best k of the items seen so far, which the
// final k-th can only exceed) get the reference's exact score, the others -inf. The row
// top-k and merge that follow (src/kernels/exact.rs) then select exactly the reference's
// top-k: every item of the final top-k has an exact score ≥ the running k-th, so ŝ within
// the window of it.
#include "common.cuh"
#include "mma_tf32.cuh"

/// Queries per block (two m16 tiles per warp, two warps down).
#define RQ_XS_QUERIES 64
/// Items per block (four n8 tiles per warp, four warps across).
#define RQ_XS_ITEMS 128
/// Dimensions per staged chunk.
#define RQ_XS_CHUNK 32
/// Row stride (floats) of a staged row: CHUNK + 4, so the fragments' rows g (0 .. 7) and
/// columns t (0 .. 3) fall in banks 4g + t, all distinct.
#define RQ_XS_LD 36

/// Four consecutive floats (one 16-byte load on the GPU).
struct alignas(16) RqXsQuad {
  float v[4];
};

/// Stages dimensions c0 .. c0 + CHUNK of ROWS rows of src (row r: src + (first + r)·d;
/// rows at or past `limit` and dimensions at or past d: zeros) into s (rows of LD floats).
/// QUADS (d a multiple of 4, src 16-byte aligned): one 16-byte load per 4 dimensions
/// (thread tid: rows tid / 8 + 32·i, dimensions 4·(tid % 8) ..); else one element per load
/// (rows tid / 32 + 8·i, dimension tid % 32). 256 threads; no barrier.
template <int ROWS, bool QUADS>
__device__ inline void rq_xs_stage(float* s, const float* src, long long first, int limit,
                                   int d, int c0) {
  const int tid = (int)threadIdx.x;
  constexpr int PER_ROW = QUADS ? RQ_XS_CHUNK / 4 : RQ_XS_CHUNK;  // threads per row
  constexpr int WIDTH = QUADS ? 4 : 1;                             // dimensions per load
  const int r0 = tid / PER_ROW, e = WIDTH * (tid % PER_ROW);
  const bool in = c0 + e < d;
RQ_UNROLL
  for (int i = 0; i < ROWS * PER_ROW / 256; ++i) {
    const int r = r0 + (256 / PER_ROW) * i;
    const float* p = src + (first + r) * d + c0 + e;
    if (QUADS) {
      const RqXsQuad zero = {{0.0f, 0.0f, 0.0f, 0.0f}};
      *reinterpret_cast<RqXsQuad*>(s + r * RQ_XS_LD + e) =
          in && r < limit ? *reinterpret_cast<const RqXsQuad*>(p) : zero;
    } else {
      s[r * RQ_XS_LD + e] = in && r < limit ? *p : 0.0f;
    }
  }
}

/// The block's 64 × 128 TF32 products over all d dimensions into each warp's acc (warp w:
/// queries 32·(w % 2) + 16·i + g + 8·(r / 2), items 32·(w / 2) + 8·j + 2t + r % 2, as
/// mma_tf32.cuh's D fragment), chunks staged through sq and sx (rq_xs_stage with QUADS).
template <bool QUADS>
__device__ inline void rq_xs_products(float (&acc)[2][4][4], float* sq, float* sx,
                                      const float* qb, int b0, int B, const float* xb, int j0,
                                      int n, int d) {
  const int warp = (int)threadIdx.x / RQ_WARP, lane = (int)threadIdx.x % RQ_WARP;
  const int g = lane / 4, t = lane % 4;
  const int r0 = 32 * (warp % 2), c0w = 32 * (warp / 2);
  for (int c0 = 0; c0 < d; c0 += RQ_XS_CHUNK) {
    rq_xs_stage<RQ_XS_QUERIES, QUADS>(sq, qb, b0, B - b0, d, c0);
    rq_xs_stage<RQ_XS_ITEMS, QUADS>(sx, xb, j0, n - j0, d, c0);
    __syncthreads();
RQ_UNROLL
    for (int s = 0; s < RQ_XS_CHUNK; s += 8) {
      // A: rows r0 + 16·i + g + 8·(r % 2), dimensions s + t + 4·(r / 2); B: items
      // c0w + 8·j + g, dimensions s + t + 4·r (mma_tf32.cuh's layouts).
      unsigned fa[2][4], fb[4][2];
RQ_UNROLL
      for (int i = 0; i < 2; ++i)
RQ_UNROLL
        for (int r = 0; r < 4; ++r)
          fa[i][r] = rq_tf32_bits(
              sq[(r0 + 16 * i + g + 8 * (r % 2)) * RQ_XS_LD + s + t + 4 * (r / 2)]);
RQ_UNROLL
      for (int j = 0; j < 4; ++j)
RQ_UNROLL
        for (int r = 0; r < 2; ++r)
          fb[j][r] = rq_tf32_bits(sx[(c0w + 8 * j + g) * RQ_XS_LD + s + t + 4 * r]);
      rq_mma_tf32_32x32(acc, fa, fb);
    }
    __syncthreads();
  }
}

/// The norm the window takes for a squared norm `sq` (f64 sum rounded to f32, rq_row_norms):
/// the true squared norm is at most sq·(1 + u) or sq + 2^-150 (rounded in f32's subnormal
/// range, or to 0), both ≤ 1.25·max(sq, 2^-148), within the window's slack.
__device__ inline float rq_xs_norm(float sq) { return sqrtf(fmaxf(sq, 0x1p-148f)); }

/// Window below a query's running k-th exact score within which an item's screening score
/// ŝ keeps it, for ||q|| ≤ qn, ||x|| ≤ xn (S = qn·xn ≥ Σ|q_e·x_e|, u = 2^-24):
///   screening: both operands truncated to TF32 (|v - tf32(v)| < 2^-10·|v| for normal v),
///   each product within (1 + 2^-10)² - 1 = 32784u of |q_e·x_e|, exact in the tensor cores,
///   summed with up to 4.07u per term: (32784 + 4.07d)uS; the reference's `dot` (eight f32
///   partial sums without FMA, combined in f64, rounded): (0.26d + 6.4)uS; so
///   E = (33200 + 4.4d)uS ≥ |ŝ - score|. Subnormal operands (truncated by < 2^-136, or
///   flushed: < 2^-126 each) add at most 2^-126·√d·(qn + xn); flushed subnormal products or
///   partial sums at most 2d·2^-126 (the absolute d·1e-37).
/// A final top-k item j has score_j ≥ the running k-th T, so ŝ_j ≥ T - E: the window is
/// 2.02·E (slack for the norms' own rounding) plus those absolute terms. qn and xn come from
/// f32 squared norms floored at 2^-148 (rq_xs_norm): a squared norm below f32's range
/// rounds to 0 while the vector's products do not.
/// Overflow: a partial sum of the tile products exceeds f32's range M only when Σ|q_e·x_e|,
/// which S bounds, is within ~du of M; the item's score is then within ~2du·M of ±M, so when
/// ŝ overflows to -inf and the exact score could still reach the running k-th T, T - window
/// (window ≥ 4·10^-3·S) overflows to -inf too and the item is kept.
__device__ inline float rq_xs_window(int d, float qn, float xn) {
  const float u = 5.9604645e-8f;
  const float df = (float)d;
  return 2.02f * (33200.0f + 4.4f * df) * u * qn * xn +
         2.4e-38f * sqrtf(df) * (qn + xn) + df * 1e-37f;
}

/// The window for l2, where the score is -||q - x||² and the screening's
/// ŝ = (2·<q, x>_TF32 - ||x||²) - ||q||² in f32 with the stored squared norms (within u of
/// theirs, or 2^-150 when below f32's range): twice the dot's error, the norms' u(X + Q),
/// the two f32 roundings 2.02u(2S + X + Q); the reference's -(f32)(f64 Σ(q_e - x_e)²) is
/// within 1.01u||q - x||² ≤ 1.01u(Q + X + 2S) (X = xn², Q = qn², S = qn·xn):
/// E = (66000 + 8.2d)uS + 4.1u(X + Q); the window 2.02·E, twice ip's subnormal terms (the
/// products are doubled) and the absolute d·2e-37 (which also covers the norms' 2^-150).
__device__ inline float rq_xs_window_l2(int d, float qn, float xn) {
  const float u = 5.9604645e-8f;
  const float df = (float)d;
  return 2.02f * ((66000.0f + 8.2f * df) * u * qn * xn + 4.1f * u * (qn * qn + xn * xn)) +
         4.8e-38f * sqrtf(df) * (qn + xn) + df * 2e-37f;
}

/// Screened exact scores of a query batch against a block of items: out[b·ld + j] =
/// <q_b, x_{row0+j}> (metric 0, ip: the reference's `dot`) or -||q_b - x_{row0+j}||²
/// (metric 1, l2: its `dist_sq`), bit for bit, when the pair's TF32 screening score is not
/// below kth[b·k + k - 1] - the metric's window (rq_xs_window, rq_xs_window_l2), or is NaN;
/// else -inf; -inf for n ≤ j < ld (padding columns, as rq_exact_scores).
/// q: the queries, query b at q + (q_row0 + b)·d (f32); qnorm_sq: their squared norms
/// (rq_row_norms), query b's at q_row0 + b; items: rows × d (f32), xnorm_sq their squared
/// norms (row i's at i); kth: the batch's running top-k scores (B × k, best first; a row
/// with fewer than k items has -inf or NaN at its end, which keeps every item).
/// grid: (ceil(ld / 128), ceil(B / 64)); block: 256 threads (8 warps: warp w multiplies
/// queries 32·(w % 2) .. + 32 by items 32·(w / 2) .. + 32); shared: (64 + 128)·LD·4 bytes.
extern "C" __global__ void __launch_bounds__(256) rq_exact_screened(
    const float* q, long long q_row0, int B, int d, const float* qnorm_sq, const float* items,
    long long row0, int n, int ld, const float* xnorm_sq, const float* kth, int k, int metric,
    float* out) {
  RQ_SHARED_BASE(smem);
  float* sq = reinterpret_cast<float*>(smem);  // [64][LD] query chunk
  float* sx = sq + RQ_XS_QUERIES * RQ_XS_LD;    // [128][LD] item chunk
  const int warp = (int)threadIdx.x / RQ_WARP, lane = (int)threadIdx.x % RQ_WARP;
  const int g = lane / 4, t = lane % 4;
  const int b0 = (int)blockIdx.y * RQ_XS_QUERIES, j0 = (int)blockIdx.x * RQ_XS_ITEMS;
  const int r0 = 32 * (warp % 2), c0w = 32 * (warp / 2);
  const float* qb = q + q_row0 * d;
  const float* xb = items + row0 * d;
  const bool quads =
      d % 4 == 0 &&
      ((reinterpret_cast<unsigned long long>(qb) | reinterpret_cast<unsigned long long>(xb)) &
       15) == 0;
  float acc[2][4][4];
  rq_mma_clear_32x32(acc);
  if (quads)
    rq_xs_products<true>(acc, sq, sx, qb, b0, B, xb, j0, n, d);
  else
    rq_xs_products<false>(acc, sq, sx, qb, b0, B, xb, j0, n, d);
  // This lane's outputs: queries r0 + 16·i + g + 8·h, items c0w + 8·j + 2t + e (their
  // norms first: eight items, four queries).
  float xn[4][2];
RQ_UNROLL
  for (int j = 0; j < 4; ++j)
RQ_UNROLL
    for (int e = 0; e < 2; ++e) {
      const int col = j0 + c0w + 8 * j + 2 * t + e;
      xn[j][e] = col < n ? rq_xs_norm(xnorm_sq[row0 + col]) : 0.0f;
    }
RQ_UNROLL
  for (int i = 0; i < 2; ++i)
RQ_UNROLL
    for (int h = 0; h < 2; ++h) {
      const int b = b0 + r0 + 16 * i + g + 8 * h;
      if (b >= B) continue;
      const float qsq = qnorm_sq[q_row0 + b], qn = rq_xs_norm(qsq);
      const float thr = kth[(long long)b * k + k - 1];
RQ_UNROLL
      for (int j = 0; j < 4; ++j)
RQ_UNROLL
        for (int e = 0; e < 2; ++e) {
          const int col = j0 + c0w + 8 * j + 2 * t + e;
          if (col >= ld) continue;
          float v = rq_neg_inf();
          if (col < n) {
            const float* qr = qb + (long long)b * d;
            const float* xr = xb + (long long)col * d;
            const float dot = acc[i][j][2 * h + e];
            if (metric == RQ_METRIC_L2) {
              const float screened = (2.0f * dot - xnorm_sq[row0 + col]) - qsq;
              if (!(screened < thr - rq_xs_window_l2(d, qn, xn[j][e])))
                v = -rq_dist_sq(qr, xr, d);
            } else if (!(dot < thr - rq_xs_window(d, qn, xn[j][e]))) {
              v = rq_dot(qr, xr, d);
            }
          }
          out[(long long)b * ld + col] = v;
        }
    }
}
