// Code assignment (DESIGN §1): one level (logits, top-m, soft weights, hard residual) and
// the all-level encoding with the residual kept in shared memory across levels.
//
// One block per row: the row (its residual) sits in shared memory, each thread scores one
// codeword per round with the reference's exact dot, and the block-wide selector keeps the
// best codes, so ties go to the lowest code exactly as in the reference.
#include "common.cuh"


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
