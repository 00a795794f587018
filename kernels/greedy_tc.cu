// Certified greedy assignment with the screening on the tensor cores (greedy.cuh has the
// scheme; `mma.sync` TF32, sm_80+). One TF32 product per element, against the level's
// codewords centred on their mean (rq_certify_margin_tf32 bounds the error; the window is
// ~0.016·||r||·max ||C[k] - m|| at d = 128, about 1.1 to 1.4 candidates per row on the
// bench's data and on real embeddings). The host lays the centred codewords out in the
// tensor cores' fragment order, truncated to TF32 (`cbt`), so the screening reads its B
// operand straight from global memory (one coalesced 8-byte load per lane per 8 × 8 tile;
// a level's words are shared by every block, so they stay in L1/L2) with no staging and no
// barrier; the residuals stay in shared memory in f32 (the decision's exact keys need them)
// and are truncated as loaded.
#include "greedy.cuh"
#include "mma_tf32.cuh"

/// Rows per block.
#define RQ_GT_ROWS 64
/// Codewords per screening group: the block screens its rows against this many codewords at
/// a time, into a tile of dot products in shared memory, then folds the tile into each row's
/// candidates.
#define RQ_GT_GROUP 128
/// Row stride (floats) of the group's dot-product tile: GROUP + 4 (the fold's loads, rows
/// r and columns q + 4·i of a warp's 32 threads, fall in distinct banks).
#define RQ_GT_SCS 132

/// Two floats loaded together (an 8-byte load on the GPU): a lane's B fragment of a tile.
struct alignas(8) RqTcWord2 {
  float v[2];
};

/// Dot products of the block's 64 residual rows with one group's centred codewords (TF32):
/// warp w multiplies rows 32·(w % 2) .. + 32 (two m16 tiles) by the group's 8-codeword
/// tiles 4·(w / 2) + j (j < 4; tiles at or past `tiles` skipped) over `steps` steps of 8
/// dimensions, into sc[row · SCS + codeword]. A: `res` (64 × rs, f32, zero past d), each
/// value truncated to TF32 as loaded; B: `bt`, the group's first tile in the fragment order
/// of greedy_rows64_tc's `cbt`. Block: 256 threads; no barrier.
__device__ inline void rq_greedy_tc_group(const float* res, int rs, const RqTcWord2* bt,
                                          int steps, int tiles, float* sc) {
  const int warp = (int)threadIdx.x / RQ_WARP, lane = (int)threadIdx.x % RQ_WARP;
  const int g = lane / 4, t = lane % 4;
  const int r0 = 32 * (warp % 2), j0 = 4 * (warp / 2);
  if (j0 >= tiles) return;  // the whole warp
  const int nt = tiles - j0 < 4 ? tiles - j0 : 4;
  float acc[2][4][4];
  rq_mma_clear_32x32(acc);
  // This lane's elements of the step (A: rows +16·i + 8·(r % 2), dimensions +4·(r / 2);
  // B: tile j's word j·tile_stride), both pointers advanced by one step per iteration.
  const float* a = res + (r0 + g) * rs + t;
  const RqTcWord2* b = bt + j0 * steps * RQ_WARP + lane;
  const int tile_stride = steps * RQ_WARP;
  // Four steps' B loads in flight (the full unroll the compiler picks spills at 128
  // registers).
RQ_UNROLL_BY(4)
  for (int s = 0; s < steps; ++s, a += 8, b += RQ_WARP) {
    unsigned fa[2][4];
RQ_UNROLL
    for (int i = 0; i < 2; ++i)
RQ_UNROLL
      for (int r = 0; r < 4; ++r)
        fa[i][r] = rq_tf32_bits(a[(16 * i + 8 * (r % 2)) * rs + 4 * (r / 2)]);
    // B of the four tiles. Tiles past nt read the next level's words or the buffer's
    // padding (cbt ends with three zero tiles): products that are never stored, so no
    // branch.
    unsigned fb[4][2];
RQ_UNROLL
    for (int j = 0; j < 4; ++j) {
      const RqTcWord2 w = b[j * tile_stride];
      fb[j][0] = __float_as_uint(w.v[0]);
      fb[j][1] = __float_as_uint(w.v[1]);
    }
    rq_mma_tf32_32x32(acc, fa, fb);
  }
RQ_UNROLL
  for (int i = 0; i < 2; ++i)
RQ_UNROLL
    for (int j = 0; j < 4; ++j) {
      if (j >= nt) break;
RQ_UNROLL
      for (int h = 0; h < 2; ++h) {
        float* o = sc + (r0 + 16 * i + g + 8 * h) * RQ_GT_SCS + 8 * (j0 + j) + 2 * t;
        o[0] = acc[i][j][2 * h];
        o[1] = acc[i][j][2 * h + 1];
      }
    }
}

/// Folds one group's dot products into the rows' candidates, four threads per row (thread
/// t: row t / 4, the group's columns t % 4 + 4·i; a warp holds 8 rows, all at once): for a
/// row below n not yet sent to the exact scan, ĝ = 2·dot - cns[c] for the group's codewords
/// g0 + c (c < cnt); m = max(best[r], the group's largest ĝ); thr = m - the row's window
/// (rq_certify_margin_tf32 with the level's cm and em); the row's candidates below thr are
/// dropped and the group's codewords at or above it appended; more than CAND, or a thr that
/// is not finite, → over.
/// A candidate's ĝ rides in cval until the decision replaces it by the exact key. Anything
/// dropped is below the final max's window (m only grows), so every codeword within the
/// final window stays a candidate. Block: 256 threads; no barrier.
__device__ inline void rq_greedy_tc_fold(const float* sc, const float* cns, int g0, int cnt,
                                         long long row0, int n, int d, float cm,
                                         float em, const float* rn, float* best, int* cand_n,
                                         int* over, int* cand, float* cval) {
  constexpr int R = RQ_GT_ROWS, PER = RQ_GT_GROUP / 4;
  const int tid = (int)threadIdx.x, lane = tid % RQ_WARP;
  const int r = tid / 4, q = tid % 4, lead = lane & ~3;  // lead: the row's first lane
  const bool live = row0 + r < n && !over[r];  // the same on the row's four threads
  float g[PER];
  float m = best[r];
RQ_UNROLL
  for (int i = 0; i < PER; ++i) {
    const int c = q + 4 * i;
    g[i] = c < cnt ? 2.0f * sc[r * RQ_GT_SCS + c] - cns[c] : rq_neg_inf();
    m = g[i] > m ? g[i] : m;
  }
RQ_UNROLL
  for (int o = 1; o < 4; o <<= 1) {
    const float om = __shfl_xor_sync(RQ_FULL_MASK, m, o);
    m = om > m ? om : m;
  }
  const float thr = m - rq_certify_margin_tf32(d, sqrtf(rn[r]), cm, em);
  const bool finite = thr - thr == 0.0f;
  // This thread's old slots q, q + 4, … that stay, and its new codewords at or above thr.
  const int had = live ? cand_n[r] : 0;
  float kv[RQ_GR_CAND / 4];
  int kc[RQ_GR_CAND / 4];
  int kept = 0, fresh = 0;
RQ_UNROLL
  for (int u = 0; u < RQ_GR_CAND / 4; ++u) {
    const int slot = q + 4 * u;
    kv[u] = slot < had ? cval[slot * R + r] : rq_neg_inf();
    kc[u] = slot < had ? cand[slot * R + r] : 0;
    kept += slot < had && kv[u] >= thr;
  }
RQ_UNROLL
  for (int i = 0; i < PER; ++i) fresh += g[i] >= thr;
  // The row's counts: its four threads' kept and fresh, and where this thread's go.
  int total = 0, kept_before = 0, kept_all = 0, fresh_before = 0;
RQ_UNROLL
  for (int k = 0; k < 4; ++k) {
    const int ok = __shfl_sync(RQ_FULL_MASK, kept, lead + k);
    const int of = __shfl_sync(RQ_FULL_MASK, fresh, lead + k);
    total += ok + of;
    kept_all += ok;
    kept_before += k < q ? ok : 0;
    fresh_before += k < q ? of : 0;
  }
  const bool fits = finite && total <= RQ_GR_CAND;
  __syncwarp();  // every thread has read its old slots before any is rewritten
  if (!live) return;
  if (!fits) {
    if (q == 0) over[r] = 1;
    return;
  }
  int at = kept_before;
RQ_UNROLL
  for (int u = 0; u < RQ_GR_CAND / 4; ++u) {
    if (q + 4 * u < had && kv[u] >= thr) {
      cval[at * R + r] = kv[u];
      cand[at * R + r] = kc[u];
      ++at;
    }
  }
  at = kept_all + fresh_before;
RQ_UNROLL
  for (int i = 0; i < PER; ++i) {
    if (g[i] >= thr) {
      cval[at * R + r] = g[i];
      cand[at * R + r] = g0 + q + 4 * i;
      ++at;
    }
  }
  if (q == 0) {
    best[r] = m;
    cand_n[r] = total;
  }
}

/// Greedy hard assignment over all L levels with the tensor-core screening: the arguments,
/// results and modes of rq_greedy_rows64 (greedy.cu), plus the centred codebooks in
/// fragment order and their radii:
/// cbt: per level l, with m_l a vector of d floats common to the level (the host takes the
/// mean) and e_k = fl(C[k] - m_l): T_l = ceil(K_l / 8) tiles of 8 codewords × `steps` steps
/// of 8 dimensions (steps = ceil(d / 8)), 32 lanes, 2 floats: float2 ((T·steps + s)·32 +
/// lane) of level l (which starts after the previous levels' T_j·steps·32 float2s) holds,
/// for lane 4g + t and codeword k = 8·T + g, tf32(e_k[8s + t]) and tf32(e_k[8s + t + 4])
/// (truncations, rq_tf32_bits; zero past d and past K_l): each lane's B fragment of a tile
/// and step in one 8-byte word; then three zero tiles (the screening reads four tiles a
/// warp, used or not);
/// emax: L floats, emax[l] ≥ max_k ||C[k] - m_l|| (exact arithmetic).
/// grid: ceil(n / 64); block: 256 threads (two blocks per SM: ≤ 128 registers); shared:
/// 4·(64·rs + 64·SCS + GROUP + 2·CAND·64 + 4·64) bytes (rs = rq_greedy_stride(d), SCS = 132,
/// GROUP = 128, CAND = 16).
extern "C" __global__ void __launch_bounds__(256, 2) rq_greedy_rows64_tc(
    const float* x, int n, int d, int L, const unsigned char* cbs, int cb_dtype,
    const long long* cb_rows, const float* cnorms, const float* cmax, int mode,
    unsigned char* codes, int code_bytes, float* err, int want_residual, float* residual,
    const float* cbt, const float* emax, int steps) {
  RQ_SHARED_BASE(smem);
  constexpr int R = RQ_GT_ROWS;
  const int rs = rq_greedy_stride(d);
  float* res = reinterpret_cast<float*>(smem);               // R × rs residuals
  float* sc = res + R * rs;                                   // R × SCS dot products
  float* cns = sc + R * RQ_GT_SCS;                            // GROUP codeword norms
  float* cval = cns + RQ_GT_GROUP;                            // CAND × R: ĝ, then exact keys
  int* cand = reinterpret_cast<int*>(cval + RQ_GR_CAND * R);  // CAND × R candidate codes
  float* rn = reinterpret_cast<float*>(cand + RQ_GR_CAND * R);  // R: screening ||r||²
  float* best = rn + R;                                         // R: largest ĝ so far
  int* cand_n = reinterpret_cast<int*>(best + R);               // R
  int* over = cand_n + R;                                       // R: 1 = scan all K exactly
  const int tid = (int)threadIdx.x;
  const long long row0 = (long long)blockIdx.x * R;
  const RqTcWord2* words = reinterpret_cast<const RqTcWord2*>(cbt);

  rq_greedy_load_rows(res, rs, R, x, n, d, row0);
  for (int l = 0; l < L; ++l) {
    const long long c0 = cb_rows[l];
    const int K = (int)(cb_rows[l + 1] - c0);
    const float cm = cmax[l], em = emax[l];
    __syncthreads();  // the residuals of the previous level are complete
    rq_greedy_level_start(res, rs, R, d, rn, cand_n, over);
    for (int r = tid; r < R; r += (int)blockDim.x) best[r] = rq_neg_inf();
    for (int g0 = 0; g0 < K; g0 += RQ_GT_GROUP) {
      const int cnt = K - g0 < RQ_GT_GROUP ? K - g0 : RQ_GT_GROUP;
      for (int c = tid; c < cnt; c += (int)blockDim.x) cns[c] = cnorms[c0 + g0 + c];
      rq_greedy_tc_group(res, rs, words + (long long)(g0 / 8) * steps * RQ_WARP, steps,
                         (cnt + 7) / 8, sc);
      __syncthreads();  // the tile, the norms and the rows' state are complete
      rq_greedy_tc_fold(sc, cns, g0, cnt, row0, n, d, cm, em, rn, best, cand_n, over, cand,
                        cval);
      if (g0 + RQ_GT_GROUP < K) __syncthreads();  // the next group reuses sc and cns
    }
    rq_greedy_decide(R, row0, n, L, l, mode, res, rs, cbs, cb_dtype, c0, K, d, cnorms, cand_n,
                     over, cand, cval, codes, code_bytes, err);
    words += (long long)(K + 7) / 8 * steps * RQ_WARP;
  }
  if (want_residual) rq_greedy_store_residual(res, rs, R, n, d, row0, residual);
}
