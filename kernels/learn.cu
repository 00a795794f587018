// Soft assignment of one level and its backward pass (DESIGN §1, §6), for learning the
// codebooks. The formulas and their derivation are in src/learn/soft.rs; the arithmetic
// follows the reference there (logits with rq_dot, softmax in f64, sums in row / code order
// in f32), so results agree to rounding.
#include "common.cuh"

/// Forward pass. grid: n (one row per block); block: a power of two ≥ 32;
/// shared: round16(4·d) + 8·blockDim.x bytes.
///
/// x: n × d rows; cb: K × d codewords; cnorm: K squared norms ||C[k]||².
/// weights: n × K, softmax_k(alpha · (2<x, C[k]> - ||C[k]||²)) (f64 inside);
/// out: n × d, Σ_k weights[k] · C[k] summed in code order (f32).
extern "C" __global__ void rq_soft_forward(const float* x, int d, const float* cb,
                                           const float* cnorm, int K, float alpha,
                                           float* weights, float* out) {
  RQ_SHARED_BASE(smem);
  const unsigned row_bytes = ((unsigned)d * 4u + 15u) / 16u * 16u;
  float* r = reinterpret_cast<float*>(smem);
  double* scratch = reinterpret_cast<double*>(smem + row_bytes);
  const long long row = blockIdx.x;
  for (int e = threadIdx.x; e < d; e += blockDim.x) r[e] = x[row * d + e];
  __syncthreads();

  const double a = (double)alpha;
  double m = rq_neg_inf();  // online softmax state of this thread: running max, Σ exp
  double sum = 0.0;
  for (int k = threadIdx.x; k < K; k += blockDim.x) {
    const float z = 2.0f * rq_dot(r, cb + (long long)k * d, d) - cnorm[k];
    weights[row * K + k] = z;  // the logit, normalised below
    const double v = a * (double)z;
    if (v > m) {
      sum = sum * exp(m - v) + 1.0;
      m = v;
    } else if (v != (double)rq_neg_inf()) {
      // A -inf logit (its codeword's squared norm overflows f32) has weight 0, as in the
      // reference; while m is still -inf, exp(v - m) would be NaN.
      sum += exp(v - m);
    }
  }
  const double mx = rq_block_max_f64(m, scratch);
  const double part = sum == 0.0 ? 0.0 : sum * exp(m - mx);
  const double total = rq_block_sum_f64(part, scratch);
  // Each thread rewrites the logits it stored itself.
  for (int k = threadIdx.x; k < K; k += blockDim.x) {
    const double v = a * (double)weights[row * K + k];
    weights[row * K + k] = (float)(exp(v - mx) / total);
  }
  __syncthreads();  // every weight of the row is visible to the block
  for (int e = threadIdx.x; e < d; e += blockDim.x) {
    float acc = 0.0f;
    for (int k = 0; k < K; ++k) {
      const float w = weights[row * K + k];
      if (w != 0.0f) acc += w * cb[(long long)k * d + e];
    }
    out[row * d + e] = acc;
  }
}

/// Backward pass, per row. grid: n; block: a power of two ≥ 32;
/// shared: round16(4·d) + 8·blockDim.x bytes.
///
/// cb: K × d; weights: n × K (from the forward pass); gout: n × d, ∂L/∂c̄;
/// gw (when has_gw): n × K, extra ∂L/∂a.
/// gz: n × K, g_z = alpha · a_k · (∂L/∂a_k - Σ_j a_j ∂L/∂a_j), ∂L/∂a_k = <gout, C[k]> + gw_k;
/// gx: n × d, 2 Σ_k g_z,k C[k] summed in code order.
extern "C" __global__ void rq_soft_backward_rows(int d, const float* cb, int K, float alpha,
                                                 const float* weights, const float* gout,
                                                 int has_gw, const float* gw, float* gz,
                                                 float* gx) {
  RQ_SHARED_BASE(smem);
  const unsigned row_bytes = ((unsigned)d * 4u + 15u) / 16u * 16u;
  float* g = reinterpret_cast<float*>(smem);
  double* scratch = reinterpret_cast<double*>(smem + row_bytes);
  const long long row = blockIdx.x;
  for (int e = threadIdx.x; e < d; e += blockDim.x) g[e] = gout[row * d + e];
  __syncthreads();

  double part = 0.0;
  for (int k = threadIdx.x; k < K; k += blockDim.x) {
    float ga = rq_dot(g, cb + (long long)k * d, d);
    if (has_gw) ga += gw[row * K + k];
    gz[row * K + k] = ga;  // ∂L/∂a_k, turned into g_z below
    part += (double)weights[row * K + k] * (double)ga;
  }
  const float s = (float)rq_block_sum_f64(part, scratch);
  for (int k = threadIdx.x; k < K; k += blockDim.x) {
    const float ga = gz[row * K + k];
    gz[row * K + k] = alpha * weights[row * K + k] * (ga - s);
  }
  __syncthreads();  // every g_z of the row is visible to the block
  for (int e = threadIdx.x; e < d; e += blockDim.x) {
    float acc = 0.0f;
    for (int k = 0; k < K; ++k) {
      const float z = gz[row * K + k];
      if (z != 0.0f) acc += (2.0f * z) * cb[(long long)k * d + e];
    }
    gx[row * d + e] = acc;
  }
}

/// Backward pass, per codeword. grid: K (one codeword per block); block: any multiple of 32;
/// no shared memory.
///
/// x: n × d rows; cb: K × d; weights, gz: n × K; gout: n × d.
/// gcb: K × d, Σ_i weights[i,k] · gout[i] + 2 gz[i,k] · (x[i] - C[k]), rows in order.
extern "C" __global__ void rq_soft_backward_codes(const float* x, int n, int d, const float* cb,
                                                  int K, const float* weights, const float* gz,
                                                  const float* gout, float* gcb) {
  const long long k = blockIdx.x;
  for (int e = threadIdx.x; e < d; e += blockDim.x) {
    const float c = cb[k * d + e];
    float acc = 0.0f;
    for (long long i = 0; i < n; ++i) {
      const float a = weights[i * K + k];
      const float z = gz[i * K + k];
      if (a == 0.0f && z == 0.0f) continue;
      acc += a * gout[i * d + e] + (2.0f * z) * (x[i * d + e] - c);
    }
    gcb[k * d + e] = acc;
  }
}
