// Greedy hard assignment of a row tile over all L levels, certified: what the FMA screening
// (greedy.cu) and the tensor-core screening (greedy_tc.cu) share.
//
// Every level has two phases. (1) Screening: an f32 GEMM (fused multiply-adds, or TF32 on
// the tensor cores against centred codewords) gives every (row, codeword) an approximate
// logit ĝ_k = 2<r, C[k]> - ||C[k]||², up to an offset common to the row's codewords.
// (2) Decision: a codeword is a candidate when its ĝ is within the screening's window
// (`rq_certify_margin`, `rq_certify_margin_tf32`) of the row's largest ĝ; the candidates,
// and only they, are scored with the reference's exact arithmetic (rq_dot / rq_dist_sq),
// and the best exact key wins, ties → lowest code. The margin bounds the error of the screening's ĝ plus the error of the
// reference's own key, so the reference's choice is always a candidate: the codes, keys and
// residuals equal the reference's bit for bit, at GEMM speed. A row with more candidates
// than the screening can hold (see each screening), or a margin that is not finite, goes to
// the exact scan of all K codewords (correct, slow, rare).
//
// Per-row decision state in shared memory (R rows of a block): rn (the screening's
// ||r||²), cand_n (candidates), over (1 = scan all K exactly), and the candidates slot-major
// (slot s of row r at s·R + r): cand (codes) and cval (their exact keys once decided).
#pragma once

#include "common.cuh"

/// Candidate slots per row.
#define RQ_GR_CAND 16

/// Row stride (floats) of the residuals in shared memory: d rounded up to a multiple of 4
/// (16-byte aligned rows for 4-dimension loads) plus 4, plus 4 more when that is a multiple
/// of 32 (the two rows a warp reads at once then fall in different banks).
__device__ inline int rq_greedy_stride(int d) {
  const int s = (d + 3) / 4 * 4 + 4;
  return s % 32 == 0 ? s + 4 : s;
}

/// Error bound E2 of the reference's own key for a residual of norm `rnorm`, codewords of
/// norm ≤ `cmax` and dimension d (u = 2^-24, S = rnorm·cmax ≥ Σ|r_e·c_e|, Q = cmax² ≥
/// ||c||², T = (rnorm + cmax)² ≥ ||r - c||²): logit mode (8 f32 partial sums of d/8 rounded
/// products, f32 result, minus the stored norm) (0.26d + 6.4)uS + 1.01uQ; distance mode (f64
/// rounded to f32, against g - ||r||² with the stored norm) 1.01u(T + Q); E2 is their sum.
__device__ inline float rq_reference_key_error(int d, float rnorm, float cmax) {
  const float u = 5.9604645e-8f;
  const float S = rnorm * cmax, Q = cmax * cmax, T = (rnorm + cmax) * (rnorm + cmax);
  return (0.26f * (float)d + 6.4f) * u * S + 1.01f * u * Q + 1.01f * u * (T + Q);
}

/// Width of the candidate window below a row's largest screening logit when the screening's
/// ĝ is within E1 of the true g - c (c: the same offset for every codeword of the row) and
/// the reference's key within E2 (rq_reference_key_error) of g. The reference's best code
/// k* then has ĝ_k* ≥ max ĝ - 2(E1 + E2): for j = argmax ĝ, key_k* ≥ key_j and |key - g| ≤
/// E2 give g_k* ≥ g_j - 2·E2, and |ĝ - (g - c)| ≤ E1 at k* and at j give ĝ_k* ≥ ĝ_j - 2·E1
/// - 2·E2 (ties included); the window is twice that (slack for the approximate rnorm and
/// the margin's own rounding), plus an absolute d·1e-38 for underflow. (When every codeword
/// norm of a level is below ~1e-19, the host's cmax, the square root of an f32 squared norm,
/// may fall short of them; the terms in T and the absolute floor then dominate the window.)
__device__ inline float rq_window(int d, float e1, float e2) {
  return 4.0f * (e1 + e2) + (float)d * 1e-38f;
}

/// The window of the FMA screening (greedy.cu; offset c = 0): any order, FMA or not, |ĝ -
/// g| ≤ E1 = (2.02d + 2.02)uS + 1.01uQ (S, Q of rq_reference_key_error).
__device__ inline float rq_certify_margin(int d, float rnorm, float cmax) {
  const float u = 5.9604645e-8f;
  const float S = rnorm * cmax, Q = cmax * cmax;
  const float e1 = (2.02f * (float)d + 2.02f) * u * S + 1.01f * u * Q;
  return rq_window(d, e1, rq_reference_key_error(d, rnorm, cmax));
}

/// The window of the tensor-core screening (greedy_tc.cu): one TF32 product per element of
/// the residual r and the level's codewords centred on an offset m (e = fl(C[k] - m), the
/// same m for every codeword of the level, ||C[k] - m|| ≤ `emax`), so ĝ approximates
/// g - 2<r, m>. Both operands are truncated to TF32 (|v - tf32(v)| < 2^-10·|v| for normal
/// v; rounding would halve that), so with e's own rounding (u) each product is within
/// (1 + 2^-10)²(1 + u) - 1 < 32785u of |r_i·(C[k] - m)_i|; the TF32 products are exact and
/// the tensor cores sum them in an unspecified order and rounding (allowed 4.07u per term:
/// 4.07d·u·S', S' = rnorm·emax ≥ Σ|r_i·(C[k] - m)_i|); 2·acc is exact and its f32 difference
/// with ||C[k]||² rounds by at most 2.004u·S' + uQ (Q = cmax²). Doubled: E1 = (8.2d +
/// 66195)uS' + 1.01uQ, which covers (8.14d + 65574)uS' + uQ with room to spare (the "TF32
/// truncation at its worst" case of tests/backends.rs reaches 98.6 % of E1 at d = 16).
/// Subnormal operands (truncated by up to 2^-136 absolute, or flushed) are covered by E2's
/// T and Q terms and the window's absolute floor; should the tensor cores flush subnormal
/// products or partial sums (< 2^-126 each, at most 2d of them per dot product), E1 has an
/// absolute d·1e-37 ≥ 2·2d·2^-126 as well. Centring keeps S' small when the
/// codewords share a large common part (a window ~0.016·S' at d = 128, ~20× the 3xTF32
/// window; S' ≤ S when m is the mean of well-spread codewords).
__device__ inline float rq_certify_margin_tf32(int d, float rnorm, float cmax, float emax) {
  const float u = 5.9604645e-8f;
  const float S1 = rnorm * emax, Q = cmax * cmax;
  const float e1 = (8.2f * (float)d + 66195.0f) * u * S1 + 1.01f * u * Q + (float)d * 1e-37f;
  return rq_window(d, e1, rq_reference_key_error(d, rnorm, cmax));
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

/// Loads rows row0 .. row0 + R of x (n × d) into `res` (R × rs, zeros past d and past n: the
/// tensor-core screening reads the padding in steps of 8). No barrier.
__device__ inline void rq_greedy_load_rows(float* res, int rs, int R, const float* x, int n,
                                           int d, long long row0) {
  for (int i = threadIdx.x; i < R * rs; i += (int)blockDim.x) {
    const int r = i / rs, e = i % rs;
    res[i] = row0 + r < n && e < d ? x[(row0 + r) * d + e] : 0.0f;
  }
}

/// Start of a level: each residual row's screening norm rn[r] = ||r||² (f32, any order: it
/// only sizes the window) and its decision state cleared (cand_n = 0, over = 0). One warp
/// per row; no barrier (the caller synchronises before reading the state).
__device__ inline void rq_greedy_level_start(const float* res, int rs, int R, int d, float* rn,
                                             int* cand_n, int* over) {
  const int lane = (int)threadIdx.x % RQ_WARP;
  const int warps = (int)blockDim.x / RQ_WARP;
  for (int r = (int)threadIdx.x / RQ_WARP; r < R; r += warps) {
    float s = 0.0f;
    for (int e = lane; e < d; e += RQ_WARP) s = __fmaf_rn(res[r * rs + e], res[r * rs + e], s);
    s = rq_warp_sum(s);
    if (lane == 0) {
      rn[r] = s;
      cand_n[r] = 0;
      over[r] = 0;
    }
  }
}

/// Row r's result of level l: its code bk to codes[row·L + l] (code_bytes wide: 1 when
/// every K ≤ 256, else 2; K ≤ 65536), err[row] (mode 1: the logit bs; mode 0 after the
/// last level: the squared error -bs), and the residual update r -= C[bk] by the `width`
/// threads of the row (thread q: dimensions q + width·i; thread 0 writes code and error).
__device__ inline void rq_greedy_commit(long long row, int L, int l, int mode, float* rr,
                                        const unsigned char* cbs, int cb_dtype, long long c0,
                                        int d, float bs, long long bk, int q, int width,
                                        unsigned char* codes, int code_bytes, float* err) {
  if (q == 0) {
    const long long at = row * L + l;
    if (code_bytes == 1)
      codes[at] = (unsigned char)bk;
    else
      reinterpret_cast<unsigned short*>(codes)[at] = (unsigned short)bk;
    if (mode == 1 || l == L - 1) err[row] = mode == 1 ? bs : -bs;
  }
  const long long c = (c0 + bk) * d;
  for (int e = q; e < d; e += width) rr[e] = rr[e] - rq_load_widened(cbs, cb_dtype, c + e);
}

/// The decision of level l (codebook rows c0 .. c0 + K of `cbs`, stored as cb_dtype), once
/// the screening has filled cand_n, over and cand: (2b) the exact keys of the candidates into
/// cval, slot-major so that slot 0 of every row runs at once; (2c) the blockDim.x / R threads
/// of each row (a power of two ≤ 32: 4 for 64 rows of 256 threads; a warp holds several
/// rows, all at once) take the best exact key of its candidates, commit it
/// (rq_greedy_commit: codes code_bytes wide) and update the residual; (2d) one warp per row
/// sent to the exact scan of all K (rare) does the same. Every thread of the block calls it
/// (barriers); it begins with one, so the screening's last writes are visible.
__device__ inline void rq_greedy_decide(int R, long long row0, int n, int L, int l, int mode,
                                        float* res, int rs, const unsigned char* cbs,
                                        int cb_dtype, long long c0, int K, int d,
                                        const float* cnorms, const int* cand_n, const int* over,
                                        const int* cand, float* cval, unsigned char* codes,
                                        int code_bytes, float* err) {
  const int tid = (int)threadIdx.x, lane = tid % RQ_WARP;
  const int warps = (int)blockDim.x / RQ_WARP;
  __syncthreads();
  for (int p = tid; p < RQ_GR_CAND * R; p += (int)blockDim.x) {
    const int slot = p / R, r = p % R;
    if (row0 + r < n && !over[r] && slot < cand_n[r]) {
      const long long k = cand[p];
      cval[p] = rq_exact_key(mode, res + r * rs, cbs, cb_dtype, c0 + k, d, cnorms[c0 + k]);
    }
  }
  __syncthreads();
  {
    const int width = (int)blockDim.x / R;
    const int r = tid / width, q = tid % width;
    const bool mine = row0 + r < n && !over[r];  // the same on the row's threads
    float bs = rq_neg_inf();
    long long bk = RQ_MAX_RANK;
    if (mine) {
      for (int slot = q; slot < cand_n[r]; slot += width) {
        const float sv = cval[slot * R + r];
        const long long kv = cand[slot * R + r];
        if (rq_better(sv, kv, bs, bk)) {
          bs = sv;
          bk = kv;
        }
      }
    }
    rq_warp_argmax(bs, bk, width);  // the best of the row's threads
    if (mine)
      rq_greedy_commit(row0 + r, L, l, mode, res + r * rs, cbs, cb_dtype, c0, d, bs, bk, q,
                       width, codes, code_bytes, err);
  }
  for (int r = tid / RQ_WARP; r < R; r += warps) {
    if (row0 + r >= n || !over[r]) continue;  // the whole warp: r is the warp's
    float* rr = res + r * rs;
    float bs = rq_neg_inf();
    long long bk = RQ_MAX_RANK;
    for (int k = lane; k < K; k += RQ_WARP) {
      const float sv = rq_exact_key(mode, rr, cbs, cb_dtype, c0 + k, d, cnorms[c0 + k]);
      if (rq_better(sv, k, bs, bk)) {
        bs = sv;
        bk = k;
      }
    }
    rq_warp_argmax(bs, bk);
    // Every lane has read the residual before any lane updates it (the shuffles of the
    // argmax order no memory).
    __syncwarp();
    rq_greedy_commit(row0 + r, L, l, mode, rr, cbs, cb_dtype, c0, d, bs, bk, lane, RQ_WARP,
                     codes, code_bytes, err);
  }
}

/// The final residuals of rows row0 .. row0 + R (below n) to residual (n × d). Every thread
/// calls it (it begins with a barrier).
__device__ inline void rq_greedy_store_residual(const float* res, int rs, int R, int n, int d,
                                                long long row0, float* residual) {
  __syncthreads();
  for (int i = threadIdx.x; i < R * d; i += (int)blockDim.x) {
    const int r = i / d, e = i % d;
    if (row0 + r < n) residual[(row0 + r) * d + e] = res[r * rs + e];
  }
}
