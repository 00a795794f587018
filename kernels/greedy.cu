// Certified greedy assignment with the FMA screening (greedy.cuh has the scheme): a
// register-tiled f32 GEMM with fused multiply-adds (__fmaf_rn), the codeword chunks staged
// through shared memory.
#include "greedy.cuh"

#include <cuda_pipeline_primitives.h>

/// Dimensions per staged chunk of a screening tile.
#define RQ_GR_DC 32
/// Row stride (floats) of a staged chunk, one row per codeword: DC + 4, so rows are 16-byte
/// aligned and the 16-byte loads of a half-warp (threads cg read codewords cg + 16·j) fall
/// in distinct banks.
#define RQ_GR_DCS 36

/// Four floats loaded together (a 16-byte shared-memory load on the GPU).
struct alignas(16) RqFloat4 {
  float v[4];
};

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

/// Starts staging chunk (t0, e0) as rq_greedy_fill lays it out (dc = min(d - e0, DC)), into
/// `tile`, without barriers: when the chunk is whole (TK codewords, DC dimensions), f32 and d
/// a multiple of 4, as
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

/// Body of the rq_greedy_rows* kernels (`smem`: the launch's dynamic shared memory): a
/// block of 256 threads holds R = 16·RM rows and screens them against tiles of TK = 64
/// codewords. Thread t = 16·rg + cg screens rows rg + 16·i (i < RM) against codewords
/// cg + 16·j (j < CN = 4) of each tile, so the 16 threads of a row are one half-warp. Per
/// four dimensions a thread loads CN + RM 16-byte words for 4·RM·CN fused multiply-adds (a
/// row's word is the same for its half-warp). (Tiles of 8 rows × 8 or × 4 codewords per
/// thread, 128 rows per block, measured slower on the H200: 67.3 and 70.3 ms against 63.1
/// for the 4M × 128 encode of the bench; benches/results/h200-2026-11-28/runs/12-9ac956c.txt.)
/// The screening walks the chunks (tile, then dimensions) through two buffers: chunk i + 1
/// is copied in (rq_greedy_issue) while chunk i is screened, one barrier per chunk. A
/// thread keeps its best and second-best ĝ per row: a second one within the window sends
/// the row to the exact scan (a row has at most one candidate per thread: ≤ 16).
/// Shared memory (greedy_shared in src/kernels/assign.rs): residuals R × rs; then the two
/// chunk buffers (TK × DCS each), which the decision reuses for its candidate keys and codes
/// (CAND × R each); then R screening norms, candidate counts and scan flags.
template <int RM>
__device__ inline void rq_greedy_rows_body(unsigned char* smem, const float* x, int n, int d,
                                           int L, const unsigned char* cbs, int cb_dtype,
                                           const long long* cb_rows, const float* cnorms,
                                           const float* cmax, int mode, unsigned char* codes,
                                           int code_bytes, float* err, int want_residual,
                                           float* residual) {
  constexpr int CN = 4, R = 16 * RM, TK = 16 * CN;
  constexpr int TILE = 2 * TK * RQ_GR_DCS;
  constexpr int DECIDE = 2 * RQ_GR_CAND * R;
  const int rs = rq_greedy_stride(d);
  const unsigned res_bytes = (unsigned)R * (unsigned)rs * 4u;
  float* res = reinterpret_cast<float*>(smem);  // R × rs, row-major
  float* tile = reinterpret_cast<float*>(smem + res_bytes);  // TK × DCS, codeword-major
  float* tile2 = tile + TK * RQ_GR_DCS;                      // the second chunk buffer
  float* cval = tile;                                         // CAND × R exact keys
  int* cand = reinterpret_cast<int*>(cval + RQ_GR_CAND * R);  // CAND × R candidate codes
  float* rn = tile + (TILE > DECIDE ? TILE : DECIDE);         // R: screening ||r||²
  int* cand_n = reinterpret_cast<int*>(rn + R);               // R
  int* over = cand_n + R;                                     // R: 1 = scan all K exactly
  const int tid = (int)threadIdx.x;
  const int rg = tid / 16, cg = tid % 16;
  const long long row0 = (long long)blockIdx.x * R;

  rq_greedy_load_rows(res, rs, R, x, n, d, row0);
  for (int l = 0; l < L; ++l) {
    const long long c0 = cb_rows[l];
    const int K = (int)(cb_rows[l + 1] - c0);
    __syncthreads();  // the residuals of the previous level are complete
    // The first chunk starts copying (the decision of the previous level, which reused this
    // space, is over).
    rq_greedy_issue<TK>(tile, cbs, cb_dtype, c0, 0, K, d, 0);
    int chunk = 0;  // chunks screened so far: chunk i is in buffer i % 2
    rq_greedy_level_start(res, rs, R, d, rn, cand_n, over);
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
      for (int e0 = 0; e0 < d; e0 += RQ_GR_DC) {
        const int dc = d - e0 < RQ_GR_DC ? d - e0 : RQ_GR_DC;
        // This chunk's copies have landed (this thread's, then everyone's); every thread is
        // done screening the previous chunk, so its buffer takes the next one.
        __pipeline_wait_prior(0);
        __syncthreads();
        {
          const bool last_e = e0 + RQ_GR_DC >= d;
          const int nt = last_e ? t0 + TK : t0, ne = last_e ? 0 : e0 + RQ_GR_DC;
          if (nt < K)
            rq_greedy_issue<TK>(chunk % 2 ? tile : tile2, cbs, cb_dtype, c0, nt, K, d, ne);
        }
        const float* cur = chunk % 2 ? tile2 : tile;
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
            const RqFloat4 rv =
                *reinterpret_cast<const RqFloat4*>(res + (rg + 16 * i) * rs + e0 + e);
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
      const float thr = g - rq_certify_margin(d, sqrtf(rn[r]), cm);
      const bool finite = thr - thr == 0.0f;
      if (!finite || v2[i] >= thr) {
        atomicOr(&over[r], 1);  // the row's 16 threads may all set it
      } else if (v1[i] >= thr) {
        const int at = atomicAdd(&cand_n[r], 1);
        cand[at * R + r] = k1[i];
      }
    }
    rq_greedy_decide(R, row0, n, L, l, mode, res, rs, cbs, cb_dtype, c0, K, d, cnorms, cand_n,
                     over, cand, cval, codes, code_bytes, err);
  }
  if (want_residual) rq_greedy_store_residual(res, rs, R, n, d, row0, residual);
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
/// codes: n × L, code_bytes (1 or 2) each, item-major; err: n; residual (when
/// want_residual): n × d final residuals.
/// grid: ceil(n / R); block: 256 threads; shared: 4·R·rs + 4·max(2·TK·DCS, 2·CAND·R) + 12·R
/// bytes (rs = rq_greedy_stride(d), TK = 64, DCS = 36, CAND = 16).
extern "C" __global__ void rq_greedy_rows64(const float* x, int n, int d, int L,
                                            const unsigned char* cbs, int cb_dtype,
                                            const long long* cb_rows, const float* cnorms,
                                            const float* cmax, int mode, unsigned char* codes,
                                            int code_bytes, float* err, int want_residual,
                                            float* residual) {
  RQ_SHARED_BASE(smem);
  rq_greedy_rows_body<4>(smem, x, n, d, L, cbs, cb_dtype, cb_rows, cnorms, cmax, mode, codes,
                         code_bytes, err, want_residual, residual);
}

extern "C" __global__ void rq_greedy_rows16(const float* x, int n, int d, int L,
                                            const unsigned char* cbs, int cb_dtype,
                                            const long long* cb_rows, const float* cnorms,
                                            const float* cmax, int mode, unsigned char* codes,
                                            int code_bytes, float* err, int want_residual,
                                            float* residual) {
  RQ_SHARED_BASE(smem);
  rq_greedy_rows_body<1>(smem, x, n, d, L, cbs, cb_dtype, cb_rows, cnorms, cmax, mode, codes,
                         code_bytes, err, want_residual, residual);
}
