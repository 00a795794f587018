// Code assignment (DESIGN §1): one level (logits, top-m, soft weights, hard residual) and
// the all-level encoding with the residual kept in shared memory across levels.
//
// One block per row: the row (its residual) sits in shared memory, each thread scores one
// codeword per round with the reference's exact dot, and the block-wide selector keeps the
// best codes, so ties go to the lowest code exactly as in the reference.
#include "common.cuh"

#include <cuda_pipeline_primitives.h>
#include <mma.h>

/// One level of assignment. grid: n (one row per block); block: a power of two ≥ 32;
/// shared: 4·d (rounded up to 16) + 8·blockDim.x + 16·cap + 1104 bytes,
/// cap = next power of two ≥ top_m + blockDim.x.
///
/// x: n × d residuals; cb: K × d codewords; cnorm: K squared norms ||C[k]||².
/// codes/logits: n × top_m (u32 / f32), best first; logit = 2<r, C[k]> - ||C[k]||².
/// soft (when want_soft): n × K, softmax_k(alpha · logit_k) (f64 inside).
/// residual (when want_residual): n × d, r - C[codes[0]]. Unused outputs may be null.
/// 1 ≤ top_m ≤ min(K, 2048).
extern "C" __global__ void rq_assign(const float* x, int d, const float* cb, const float* cnorm,
                                     int K, int top_m, int cap, int want_soft, float alpha,
                                     int want_residual, unsigned* codes, float* logits,
                                     float* soft, float* residual) {
  RQ_SHARED_BASE(smem);
  const unsigned row_bytes = ((unsigned)d * 4u + 15u) / 16u * 16u;
  float* r = reinterpret_cast<float*>(smem);
  double* scratch = reinterpret_cast<double*>(smem + row_bytes);
  const RqSelect q = rq_select_carve(smem + row_bytes + 8u * blockDim.x, top_m, cap);
  const long long row = blockIdx.x;

  for (int e = threadIdx.x; e < d; e += blockDim.x) r[e] = x[row * d + e];
  rq_select_init(q);  // synchronises: r is visible

  const double a = (double)alpha;
  double m = rq_neg_inf();  // online softmax state of this thread: running max, Σ exp
  double sum = 0.0;
  for (int k0 = 0; k0 < K; k0 += blockDim.x) {
    const int k = k0 + (int)threadIdx.x;
    const bool valid = k < K;
    float z = 0.0f;
    if (valid) {
      z = 2.0f * rq_dot(r, cb + (long long)k * d, d) - cnorm[k];
      if (want_soft) {
        soft[row * K + k] = z;  // the logit, normalised below
        const double v = a * (double)z;
        if (v > m) {
          sum = sum * exp(m - v) + 1.0;
          m = v;
        } else {
          sum += exp(v - m);
        }
      }
    }
    rq_select_push(q, valid, z, k, (unsigned)k);
  }
  rq_select_finish(q);

  for (int i = threadIdx.x; i < top_m; i += blockDim.x) {
    codes[row * top_m + i] = q.p[i];
    logits[row * top_m + i] = q.s[i];
  }
  if (want_residual) {
    const long long c = q.p[0];
    for (int e = threadIdx.x; e < d; e += blockDim.x)
      residual[row * d + e] = r[e] - cb[c * d + e];
  }
  if (want_soft) {
    const double mx = rq_block_max_f64(m, scratch);
    const double part = sum == 0.0 ? 0.0 : sum * exp(m - mx);
    const double total = rq_block_sum_f64(part, scratch);
    // Each thread rewrites the logits it stored itself: no barrier needed.
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
      const double v = a * (double)soft[row * K + k];
      soft[row * K + k] = (float)(exp(v - mx) / total);
    }
  }
}

/// Encoding over all L levels keeping the `E` best partial paths by squared reconstruction
/// error (E = 1: greedy). Ties → the earlier parent path, then the lower code (the
/// reference's order). grid: n; block: a power of two ≥ 32;
/// shared: 8·E·d + 8·E·L (each rounded up to 16) + 16·cap + 1104 bytes,
/// cap = next power of two ≥ E + blockDim.x. 1 ≤ E ≤ 2048.
///
/// x: n × d items; cbs: the L codebooks stacked (Σ K_l rows × d); cb_rows: L + 1 row offsets
/// of each level in cbs (level l has K_l = cb_rows[l+1] - cb_rows[l] words).
/// codes: n × L (u32, item-major); err: n, ||x - x̂||² of the best path (f32).
extern "C" __global__ void rq_encode(const float* x, int d, int L, const float* cbs,
                                     const long long* cb_rows, int E, int cap, unsigned* codes,
                                     float* err) {
  RQ_SHARED_BASE(smem);
  const unsigned res_bytes = ((unsigned)E * (unsigned)d * 4u + 15u) / 16u * 16u;
  const unsigned path_bytes = ((unsigned)E * (unsigned)L * 4u + 15u) / 16u * 16u;
  // Double-buffered paths: (res_cur, path_cur) are read, (res_nxt, path_nxt) written.
  float* res_cur = reinterpret_cast<float*>(smem);
  float* res_nxt = reinterpret_cast<float*>(smem + res_bytes);
  unsigned* path_cur = reinterpret_cast<unsigned*>(smem + 2u * res_bytes);
  unsigned* path_nxt = reinterpret_cast<unsigned*>(smem + 2u * res_bytes + path_bytes);
  const RqSelect q = rq_select_carve(smem + 2u * res_bytes + 2u * path_bytes, E, cap);
  const long long row = blockIdx.x;

  for (int e = threadIdx.x; e < d; e += blockDim.x) res_cur[e] = x[row * d + e];
  int np = 1;  // live paths
  float best_err = 0.0f;
  for (int l = 0; l < L; ++l) {
    const float* cb = cbs + cb_rows[l] * d;
    const int K = (int)(cb_rows[l + 1] - cb_rows[l]);
    rq_select_init(q);  // synchronises: the current residuals are visible
    const long long total = (long long)np * K;
    for (long long f0 = 0; f0 < total; f0 += blockDim.x) {
      const long long f = f0 + threadIdx.x;
      const bool valid = f < total;
      float dist = 0.0f;
      if (valid) {
        const long long p = f / K;
        const long long k = f % K;
        dist = rq_dist_sq(res_cur + p * d, cb + k * d, d);
      }
      // Rank by -error (higher is better), then by (parent, code) = f.
      rq_select_push(q, valid, -dist, f, 0u);
    }
    rq_select_finish(q);
    const int nn = total < E ? (int)total : E;
    for (int i = threadIdx.x; i < nn * d; i += blockDim.x) {
      const int j = i / d, e = i % d;
      const long long f = q.r[j];
      const long long p = f / K, k = f % K;
      res_nxt[j * d + e] = res_cur[p * d + e] - cb[k * d + e];
    }
    for (int i = threadIdx.x; i < nn * L; i += blockDim.x) {
      const int j = i / L, m = i % L;
      const long long f = q.r[j];
      const long long p = f / K, k = f % K;
      if (m < l) path_nxt[j * L + m] = path_cur[p * L + m];
      else if (m == l) path_nxt[j * L + m] = (unsigned)k;
    }
    best_err = -q.s[0];
    np = nn;
    __syncthreads();
    float* rt = res_cur;
    res_cur = res_nxt;
    res_nxt = rt;
    unsigned* pt = path_cur;
    path_cur = path_nxt;
    path_nxt = pt;
  }
  for (int m = threadIdx.x; m < L; m += blockDim.x) codes[row * L + m] = path_cur[m];
  if (threadIdx.x == 0) err[row] = best_err;
}

// ---------------------------------------------------------------------------------------
// Greedy hard assignment of a row tile over all L levels, certified.
//
// Every level has two phases. (1) Screening: a register-tiled f32 GEMM with fused
// multiply-adds (__fmaf_rn) gives every (row, codeword) an approximate logit
// ĝ_k = 2<r, C[k]> - ||C[k]||². (2) Decision: a codeword is a candidate when its ĝ is within
// `rq_certify_margin` of the row's largest ĝ; the candidates, and only they, are scored with
// the reference's exact arithmetic (rq_dot / rq_dist_sq), and the best exact key wins, ties
// → lowest code. The margin bounds the error of any f32 evaluation order of ĝ plus the error
// of the reference's own key, so the reference's choice is always a candidate: the codes,
// keys and residuals equal the reference's bit for bit, at GEMM speed. A thread that holds
// two candidates of a row (it keeps only its best and second-best ĝ), or a margin that is
// not finite, sends the row to the exact scan of all K codewords (correct, slow, rare).
// ---------------------------------------------------------------------------------------

/// Dimensions per staged chunk of a screening tile.
#define RQ_GR_DC 32
/// Row stride (floats) of a staged chunk, one row per codeword: DC + 4, so rows are 16-byte
/// aligned and the 16-byte loads of a half-warp (threads cg read codewords cg + 16·j) fall
/// in distinct banks.
#define RQ_GR_DCS 36
/// Candidate slots per row (one per thread of the row's half-warp).
#define RQ_GR_CAND 16

/// Row stride (floats) of the residuals in shared memory: d rounded up to a multiple of 4
/// (16-byte aligned rows for 4-dimension loads) plus 4, plus 4 more when that is a multiple
/// of 32 (the two rows a warp reads at once then fall in different banks).
__device__ inline int rq_greedy_stride(int d) {
  const int s = (d + 3) / 4 * 4 + 4;
  return s % 32 == 0 ? s + 4 : s;
}

/// Four floats loaded together (a 16-byte shared-memory load on the GPU).
struct alignas(16) RqFloat4 {
  float v[4];
};

/// Width of the candidate window below a row's largest screening logit, for a residual of
/// norm `rnorm`, codewords of norm ≤ `cmax` and dimension d (u = 2^-24, S = rnorm·cmax ≥
/// Σ|r_e·c_e|, Q = cmax² ≥ ||c||², T = (rnorm + cmax)² ≥ ||r - c||²):
///   screening (any order, FMA or not): |ĝ - g| ≤ E1 = (2.02d + 2.02)uS + 1.01uQ;
///   reference key, logit mode (8 f32 partial sums of d/8 rounded products, f32 result,
///   minus the stored norm): (0.26d + 6.4)uS + 1.01uQ; distance mode (f64 rounded to f32,
///   against g - ||r||² with the stored norm): 1.01u(T + Q);
///   E2 = their sum. The reference's best code k* then has ĝ_k* ≥ max ĝ - 2(E1 + E2): for
///   j = argmax ĝ, key_k* ≥ key_j and |key - g| ≤ E2 give g_k* ≥ g_j - 2·E2, and
///   |ĝ - g| ≤ E1 at k* and at j give ĝ_k* ≥ ĝ_j - 2·E1 - 2·E2 (ties included);
/// the window is twice that (slack for the approximate rnorm and the margin's own rounding),
/// plus an absolute d·1e-38 for underflow. (When every codeword norm of a level is below
/// ~1e-19, the host's cmax, the square root of an f32 squared norm, may fall short of them;
/// the terms in T and the absolute floor then dominate the window.)
/// With `tc` the screening is the tensor cores' 3xTF32 product (rq_greedy_screen_tc): each
/// product a·b is taken as a_big·b_big + a_big·b_small + a_small·b_big of TF32 parts
/// (|error| ≤ 3·2^-22·|a·b|·1.01 = 12.12u|a·b|), summed by the tensor cores in an unspecified
/// order and rounding (allowed 4u per term and addition: 12.2d·u·S): E1 = (24.4d + 26.3)uS +
/// 1.01uQ.
__device__ inline float rq_certify_margin(int d, float rnorm, float cmax, bool tc) {
  const float u = 5.9604645e-8f;
  const float df = (float)d;
  const float S = rnorm * cmax, Q = cmax * cmax, T = (rnorm + cmax) * (rnorm + cmax);
  const float e1 = (tc ? 24.4f * df + 26.3f : 2.02f * df + 2.02f) * u * S + 1.01f * u * Q;
  const float e2 = (0.26f * df + 6.4f) * u * S + 1.01f * u * Q + 1.01f * u * (T + Q);
  return 4.0f * (e1 + e2) + df * 1e-38f;
}

/// The reference's key of codeword `k` (row k of `cb`, stored as `dtype`) for residual `r`:
/// mode 1 the logit 2<r, C[k]> - cnorm, mode 0 the negated squared distance -||r - C[k]||².
__device__ inline float rq_exact_key(int mode, const float* r, const unsigned char* cb,
                                     int dtype, long long k, int d, float cnorm) {
  const unsigned short* h = reinterpret_cast<const unsigned short*>(cb) + k * d;
  const float* f = reinterpret_cast<const float*>(cb) + k * d;
  if (mode == 1) {
    const float dot = dtype == RQ_DTYPE_F32    ? rq_dot(r, f, d)
                      : dtype == RQ_DTYPE_BF16 ? rq_dot_w<RqWidenBf16>(r, h, d)
                                               : rq_dot_w<RqWidenF16>(r, h, d);
    return 2.0f * dot - cnorm;
  }
  return -(dtype == RQ_DTYPE_F32    ? rq_dist_sq(r, f, d)
           : dtype == RQ_DTYPE_BF16 ? rq_dist_sq_w<RqWidenBf16>(r, h, d)
                                    : rq_dist_sq_w<RqWidenF16>(r, h, d));
}

/// Writes dimensions e0 .. e0 + dc (dc ≤ DC) of codewords t0 .. t0 + TK of a level (rows
/// c0 + t0 + c of `cbs`, widened to f32) into `tile`, codeword-major (row c at c · DCS);
/// dimensions ≥ dc and codewords ≥ K are zero. Consecutive threads read consecutive
/// dimensions of a codeword (coalesced). No barriers.
template <int TK>
__device__ inline void rq_greedy_fill(float* tile, const unsigned char* cbs, int cb_dtype,
                                      long long c0, int t0, int K, int d, int e0, int dc) {
  for (int i = threadIdx.x; i < TK * RQ_GR_DC; i += (int)blockDim.x) {
    const int c = i / RQ_GR_DC, e = i % RQ_GR_DC;
    tile[c * RQ_GR_DCS + e] = e < dc && t0 + c < K
                                  ? rq_load_widened(cbs, cb_dtype, (c0 + t0 + c) * d + e0 + e)
                                  : 0.0f;
  }
}

/// rq_greedy_fill between two barriers (the previous chunk is consumed; this one is
/// complete): the tensor-core screening's staging. Every thread of the block must call it.
template <int TK>
__device__ inline void rq_greedy_stage(float* tile, const unsigned char* cbs, int cb_dtype,
                                       long long c0, int t0, int K, int d, int e0, int dc) {
  __syncthreads();
  rq_greedy_fill<TK>(tile, cbs, cb_dtype, c0, t0, K, d, e0, dc);
  __syncthreads();
}

/// Starts staging chunk (t0, e0) as rq_greedy_stage lays it out (dc = min(d - e0, DC)),
/// into `tile`, without barriers: when the chunk is whole (TK codewords, DC dimensions), f32 and d a multiple of 4, as
/// asynchronous 16-byte copies (cp.async, one commit group; the caller waits with
/// __pipeline_wait_prior and a barrier before reading, so the copies run while it screens
/// the previous chunk); otherwise by rq_greedy_fill (plain loads and stores, visible after
/// the caller's barrier). The caller must not let another thread still read `tile`.
template <int TK>
__device__ inline void rq_greedy_issue(float* tile, const unsigned char* cbs, int cb_dtype,
                                       long long c0, int t0, int K, int d, int e0) {
  const int dc = d - e0 < RQ_GR_DC ? d - e0 : RQ_GR_DC;
  if (cb_dtype == RQ_DTYPE_F32 && d % 4 == 0 && dc == RQ_GR_DC && t0 + TK <= K) {
    const float* src = reinterpret_cast<const float*>(cbs) + (c0 + t0) * d + e0;
    for (int q = threadIdx.x; q < TK * RQ_GR_DC / 4; q += (int)blockDim.x) {
      const int c = q / (RQ_GR_DC / 4), e = 4 * (q % (RQ_GR_DC / 4));
      __pipeline_memcpy_async(tile + c * RQ_GR_DCS + e, src + (long long)c * d + e, 16);
    }
  } else {
    rq_greedy_fill<TK>(tile, cbs, cb_dtype, c0, t0, K, d, e0, dc);
  }
  __pipeline_commit();
}

/// Row stride (floats) of the tensor-core screening's accumulator tile (64 × 64 logits).
#define RQ_GR_SLD 68

/// 3xTF32 tensor-core screening of one 64-codeword tile (the 64-row variant): warp w
/// multiplies the 16 residual rows 16·(w / 2) .. against codewords 16·(2·(w % 2) + t), t < 2,
/// over all d dimensions (staged through `tile` in chunks of RQ_GR_DC, as the FFMA screening),
/// splitting every input into TF32 big and small parts, and stores the 64 × 64 dot products
/// to `sacc` (row stride RQ_GR_SLD). Every thread of the block must call it (barriers).
/// Requires d padded with zeros to a multiple of 8 in `res` (stride rs ≥ that).
__device__ inline void rq_greedy_screen_tc(const float* res, int rs, float* tile, float* sacc,
                                           const unsigned char* cbs, int cb_dtype,
                                           long long c0, int t0, int K, int d) {
  using namespace nvcuda;
  const int tid = (int)threadIdx.x, warp = tid / RQ_WARP;
  const int rt = warp / 2, ct0 = 2 * (warp % 2);
  wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc[2];
  wmma::fill_fragment(acc[0], 0.0f);
  wmma::fill_fragment(acc[1], 0.0f);
  for (int e0 = 0; e0 < d; e0 += RQ_GR_DC) {
    const int dc = d - e0 < RQ_GR_DC ? d - e0 : RQ_GR_DC;
    rq_greedy_stage<64>(tile, cbs, cb_dtype, c0, t0, K, d, e0, dc);
    for (int kk = 0; kk < dc; kk += 8) {
      wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> ab, as;
      wmma::load_matrix_sync(ab, res + 16 * rt * rs + e0 + kk, (unsigned)rs);
      for (int i = 0; i < ab.num_elements; ++i) {
        const float v = ab.x[i], big = wmma::__float_to_tf32(v);
        ab.x[i] = big;
        as.x[i] = wmma::__float_to_tf32(v - big);
      }
      for (int t = 0; t < 2; ++t) {
        // The codeword-major tile is the K × N operand in column-major order.
        wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major> bb, bs;
        wmma::load_matrix_sync(bb, tile + 16 * (ct0 + t) * RQ_GR_DCS + kk, RQ_GR_DCS);
        for (int i = 0; i < bb.num_elements; ++i) {
          const float v = bb.x[i], big = wmma::__float_to_tf32(v);
          bb.x[i] = big;
          bs.x[i] = wmma::__float_to_tf32(v - big);
        }
        wmma::mma_sync(acc[t], as, bb, acc[t]);
        wmma::mma_sync(acc[t], ab, bs, acc[t]);
        wmma::mma_sync(acc[t], ab, bb, acc[t]);
      }
    }
  }
  for (int t = 0; t < 2; ++t)
    wmma::store_matrix_sync(sacc + 16 * rt * RQ_GR_SLD + 16 * (ct0 + t), acc[t], RQ_GR_SLD,
                            wmma::mem_row_major);
  __syncthreads();
}

/// Body of the rq_greedy_rows* kernels (`smem`: the launch's dynamic shared memory): a
/// block of 256 threads holds R = 16·RM rows and screens them against tiles of TK = 64
/// codewords. Thread t = 16·rg + cg screens rows rg + 16·i (i < RM) against codewords
/// cg + 16·j (j < CN = 4) of each tile, so the 16 threads of a row are one half-warp. Per
/// four dimensions a thread loads CN + RM 16-byte words for 4·RM·CN fused multiply-adds (a
/// row's word is the same for its half-warp). (Tiles of 8 rows × 8 or × 4 codewords per
/// thread, 128 rows per block, measured slower on the H200: 67.3 and 70.3 ms against 63.1
/// for the 4M × 128 encode of the bench; benches/results/h200-2026-11-28/runs/12-9ac956c.txt.)
/// The FMA screening walks the chunks (tile, then dimensions) through two buffers: chunk
/// i + 1 is copied in (rq_greedy_issue) while chunk i is screened, one barrier per chunk.
/// Shared memory (greedy_shared in src/kernels/assign.rs): residuals R × rs; then the two
/// chunk buffers (TK × DCS each; TC: one chunk and the 64 × SLD accumulators), which the
/// decision reuses for its candidate keys and codes (CAND × R each); then R screening norms,
/// candidate counts and scan flags.
template <int RM, bool TC>
__device__ inline void rq_greedy_rows_body(unsigned char* smem, const float* x, int n, int d,
                                           int L,
                                           const unsigned char* cbs, int cb_dtype,
                                           const long long* cb_rows, const float* cnorms,
                                           const float* cmax, int mode, unsigned* codes,
                                           float* err, int want_residual, float* residual) {
  static_assert(!TC || RM == 4, "the tensor-core screening is 64 x 64");
  constexpr int CN = 4, R = 16 * RM, TK = 16 * CN;
  // FMA screening: two chunk buffers (one screened while the next is copied in); TC: one
  // chunk and the accumulators.
  constexpr int TILE = TK * RQ_GR_DCS + (TC ? 64 * RQ_GR_SLD : TK * RQ_GR_DCS);
  constexpr int DECIDE = 2 * RQ_GR_CAND * R;
  const int rs = rq_greedy_stride(d);
  const unsigned res_bytes = (unsigned)R * (unsigned)rs * 4u;
  float* res = reinterpret_cast<float*>(smem);  // R × rs, row-major
  float* tile = reinterpret_cast<float*>(smem + res_bytes);  // TK × DCS, codeword-major
  float* sacc = tile + TK * RQ_GR_DCS;  // TC: 64 × SLD dot products; FMA: the second buffer
  float* cval = tile;                                         // CAND × R exact keys
  int* cand = reinterpret_cast<int*>(cval + RQ_GR_CAND * R);  // CAND × R candidate codes
  float* rn = tile + (TILE > DECIDE ? TILE : DECIDE);         // R: screening ||r||²
  int* cand_n = reinterpret_cast<int*>(rn + R);               // R
  int* over = cand_n + R;                                     // R: 1 = scan all K exactly
  const int tid = (int)threadIdx.x;
  const int rg = tid / 16, cg = tid % 16;
  const int warp = tid / RQ_WARP, lane = tid % RQ_WARP;
  const int warps = (int)(blockDim.x / RQ_WARP);
  const long long row0 = (long long)blockIdx.x * R;

  // The padding after d stays zero (the tensor-core screening reads it in steps of 8).
  for (int i = tid; i < R * rs; i += (int)blockDim.x) {
    const int r = i / rs, e = i % rs;
    res[i] = row0 + r < n && e < d ? x[(row0 + r) * d + e] : 0.0f;
  }
  for (int l = 0; l < L; ++l) {
    const long long c0 = cb_rows[l];
    const int K = (int)(cb_rows[l + 1] - c0);
    __syncthreads();  // the residuals of the previous level are complete
    // The FMA screening's first chunk starts copying (the decision of the previous level,
    // which reused this space, is over).
    if constexpr (!TC) rq_greedy_issue<TK>(tile, cbs, cb_dtype, c0, 0, K, d, 0);
    int chunk = 0;  // chunks screened so far: chunk i is in buffer i % 2
    for (int r = warp; r < R; r += warps) {
      float s = 0.0f;
      for (int e = lane; e < d; e += RQ_WARP) s = __fmaf_rn(res[r * rs + e], res[r * rs + e], s);
      s = rq_warp_sum(s);
      if (lane == 0) {
        rn[r] = s;
        cand_n[r] = 0;
        over[r] = 0;
      }
    }
    // (1) Screening: best and second-best ĝ of each of this thread's rows.
    float v1[RM], v2[RM];
    int k1[RM];
RQ_UNROLL
    for (int i = 0; i < RM; ++i) {
      v1[i] = rq_neg_inf();
      v2[i] = rq_neg_inf();
      k1[i] = 0;
    }
    for (int t0 = 0; t0 < K; t0 += TK) {
      float acc[RM][CN];
RQ_UNROLL
      for (int i = 0; i < RM; ++i)
RQ_UNROLL
        for (int j = 0; j < CN; ++j) acc[i][j] = 0.0f;
      // This thread's codeword norms of the tile, loaded before the screening needs them.
      float cn[CN];
RQ_UNROLL
      for (int j = 0; j < CN; ++j) {
        const int k = t0 + cg + 16 * j;
        cn[j] = k < K ? cnorms[c0 + k] : 0.0f;
      }
      if constexpr (TC) {
        rq_greedy_screen_tc(res, rs, tile, sacc, cbs, cb_dtype, c0, t0, K, d);
RQ_UNROLL
        for (int i = 0; i < RM; ++i)
RQ_UNROLL
          for (int j = 0; j < CN; ++j) acc[i][j] = sacc[(rg + 16 * i) * RQ_GR_SLD + cg + 16 * j];
      }
      for (int e0 = 0; e0 < (TC ? 0 : d); e0 += RQ_GR_DC) {
        const int dc = d - e0 < RQ_GR_DC ? d - e0 : RQ_GR_DC;
        // This chunk's copies have landed (this thread's, then everyone's); every thread is
        // done screening the previous chunk, so its buffer takes the next one.
        __pipeline_wait_prior(0);
        __syncthreads();
        {
          const bool last_e = e0 + RQ_GR_DC >= d;
          const int nt = last_e ? t0 + TK : t0, ne = last_e ? 0 : e0 + RQ_GR_DC;
          if (nt < K) rq_greedy_issue<TK>(chunk % 2 ? tile : sacc, cbs, cb_dtype, c0, nt, K, d, ne);
        }
        const float* cur = chunk % 2 ? sacc : tile;
        ++chunk;
        // Four dimensions per step: one 16-byte load per codeword and per row.
        int e = 0;
RQ_NO_UNROLL
        for (; e + 4 <= dc; e += 4) {
          RqFloat4 w[CN];
RQ_UNROLL
          for (int j = 0; j < CN; ++j)
            w[j] = *reinterpret_cast<const RqFloat4*>(cur + (cg + 16 * j) * RQ_GR_DCS + e);
RQ_UNROLL
          for (int i = 0; i < RM; ++i) {
            const RqFloat4 rv = *reinterpret_cast<const RqFloat4*>(res + (rg + 16 * i) * rs + e0 + e);
RQ_UNROLL
            for (int h = 0; h < 4; ++h)
RQ_UNROLL
              for (int j = 0; j < CN; ++j) acc[i][j] = __fmaf_rn(rv.v[h], w[j].v[h], acc[i][j]);
          }
        }
        for (; e < dc; ++e) {
          float w[CN];
RQ_UNROLL
          for (int j = 0; j < CN; ++j) w[j] = cur[(cg + 16 * j) * RQ_GR_DCS + e];
RQ_UNROLL
          for (int i = 0; i < RM; ++i) {
            const float rv = res[(rg + 16 * i) * rs + e0 + e];
RQ_UNROLL
            for (int j = 0; j < CN; ++j) acc[i][j] = __fmaf_rn(rv, w[j], acc[i][j]);
          }
        }
      }
RQ_UNROLL
      for (int j = 0; j < CN; ++j) {
        const int k = t0 + cg + 16 * j;
        if (k < K) {
RQ_UNROLL
          for (int i = 0; i < RM; ++i) {
            const float g = 2.0f * acc[i][j] - cn[j];
            if (g > v1[i]) {
              v2[i] = v1[i];
              v1[i] = g;
              k1[i] = k;
            } else if (g > v2[i]) {
              v2[i] = g;
            }
          }
        }
      }
    }
    // (2a) Candidates: within the margin of the row's largest ĝ (over its half-warp). The
    // candidate arrays reuse the staged chunk: every thread must be done reading it.
    __syncthreads();
    const float cm = cmax[l];
RQ_UNROLL
    for (int i = 0; i < RM; ++i) {
      float g = v1[i];
      for (int o = 8; o > 0; o >>= 1) {
        const float og = __shfl_xor_sync(RQ_FULL_MASK, g, o);
        g = og > g ? og : g;
      }
      const int r = rg + 16 * i;
      const float thr = g - rq_certify_margin(d, sqrtf(rn[r]), cm, TC);
      const bool finite = thr - thr == 0.0f;
      if (!finite || v2[i] >= thr) {
        over[r] = 1;
      } else if (v1[i] >= thr) {
        const int at = atomicAdd(&cand_n[r], 1);
        cand[at * R + r] = k1[i];
      }
    }
    __syncthreads();
    // (2b) Exact keys of the candidates, slot-major so that slot 0 of every row runs at once.
    for (int p = tid; p < RQ_GR_CAND * R; p += (int)blockDim.x) {
      const int slot = p / R, r = p % R;
      if (row0 + r < n && !over[r] && slot < cand_n[r]) {
        const long long k = cand[p];
        cval[p] = rq_exact_key(mode, res + r * rs, cbs, cb_dtype, c0 + k, d, cnorms[c0 + k]);
      }
    }
    __syncthreads();
    // (2c) One warp per row: the best exact key (or the exact scan of all K), then the
    // residual update.
    for (int r = warp; r < R; r += warps) {
      const long long row = row0 + r;
      if (row >= n) continue;  // the whole warp: r is the warp's
      float* rr = res + r * rs;
      float bs = rq_neg_inf();
      long long bk = RQ_MAX_RANK;
      if (over[r]) {
        for (int k = lane; k < K; k += RQ_WARP) {
          const float s = rq_exact_key(mode, rr, cbs, cb_dtype, c0 + k, d, cnorms[c0 + k]);
          if (rq_better(s, k, bs, bk)) {
            bs = s;
            bk = k;
          }
        }
      } else if (lane < cand_n[r]) {
        bs = cval[lane * R + r];
        bk = cand[lane * R + r];
      }
      rq_warp_argmax(bs, bk);
      if (lane == 0) codes[row * L + l] = (unsigned)bk;
      const long long c = (c0 + bk) * d;
      for (int e = lane; e < d; e += RQ_WARP)
        rr[e] = rr[e] - rq_load_widened(cbs, cb_dtype, c + e);
      if (lane == 0 && (mode == 1 || l == L - 1)) err[row] = mode == 1 ? bs : -bs;
    }
  }
  if (want_residual) {
    __syncthreads();
    for (int i = tid; i < R * d; i += (int)blockDim.x) {
      const int r = i / d, e = i % d;
      if (row0 + r < n) residual[(row0 + r) * d + e] = res[r * rs + e];
    }
  }
}

/// Greedy hard assignment over all L levels, the residual kept in shared memory, each
/// level's code certified exact (see above): rq_greedy_rows64 holds 64 rows per block,
/// rq_greedy_rows16 16 (for large d).
///
/// mode 0 (encoding, the reference's `encode` with beam 1): key = -||r - C[k]||² (f64 inside);
///   err[row] = ||x - x̂||² after the last level.
/// mode 1 (one level of assignment, L = 1): key = 2<r, C[k]> - ||C[k]||²; err[row] = the
///   best key (the logit).
/// x: n × d; cbs / cb_rows: the L codebooks stacked, level l = rows cb_rows[l]..cb_rows[l+1],
/// stored as cb_dtype (0 f32, 1 f16 bits, 2 bf16 bits; widened to f32 on load);
/// cnorms: their squared norms ||C[k]||² (f32 of the f64 sum) stacked the same way;
/// cmax: L, an upper bound of each level's largest codeword norm ||C[k]||.
/// codes: n × L (u32); err: n; residual (when want_residual): n × d final residuals.
/// grid: ceil(n / R); block: 256 threads; shared: 4·R·rs + 4·max(2·TK·DCS, 2·CAND·R) + 12·R
/// bytes (rs = rq_greedy_stride(d), TK = 64, DCS = 36, CAND = 16).
extern "C" __global__ void rq_greedy_rows64(const float* x, int n, int d, int L,
                                            const unsigned char* cbs, int cb_dtype,
                                            const long long* cb_rows, const float* cnorms,
                                            const float* cmax, int mode, unsigned* codes,
                                            float* err, int want_residual, float* residual) {
  RQ_SHARED_BASE(smem);
  rq_greedy_rows_body<4, false>(smem, x, n, d, L, cbs, cb_dtype, cb_rows, cnorms, cmax,
                                   mode, codes, err, want_residual, residual);
}

extern "C" __global__ void rq_greedy_rows16(const float* x, int n, int d, int L,
                                            const unsigned char* cbs, int cb_dtype,
                                            const long long* cb_rows, const float* cnorms,
                                            const float* cmax, int mode, unsigned* codes,
                                            float* err, int want_residual, float* residual) {
  RQ_SHARED_BASE(smem);
  rq_greedy_rows_body<1, false>(smem, x, n, d, L, cbs, cb_dtype, cb_rows, cnorms, cmax,
                                   mode, codes, err, want_residual, residual);
}

/// rq_greedy_rows64 with the screening on the tensor cores (3xTF32, rq_greedy_screen_tc;
/// sm_80+): same arguments, results and geometry; shared memory 64 · 68 · 4 bytes more
/// (the accumulator tile, after the codeword chunk).
extern "C" __global__ void rq_greedy_rows64_tc(const float* x, int n, int d, int L,
                                               const unsigned char* cbs, int cb_dtype,
                                               const long long* cb_rows, const float* cnorms,
                                               const float* cmax, int mode, unsigned* codes,
                                               float* err, int want_residual,
                                               float* residual) {
  RQ_SHARED_BASE(smem);
  rq_greedy_rows_body<4, true>(smem, x, n, d, L, cbs, cb_dtype, cb_rows, cnorms, cmax,
                                  mode, codes, err, want_residual, residual);
}
