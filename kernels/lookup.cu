// Lookup tables, the fused residual lookup + top-k, and exact (re-)scoring (DESIGN §3).
#include "common.cuh"

/// Score tiles (rq_lut, rq_exact_scores): a block of 16 × 16 threads computes a 32 × 32 tile
/// (queries × rows of a second matrix), each thread 2 × 2 outputs, staging RQ_LUT_CHUNK
/// dimensions of both operands per step in rows of RQ_LUT_LD floats (16-byte aligned: one
/// 16-byte load per 4 dimensions; the 16 rows a warp reads at once cover the banks twice,
/// the minimum for 256 bytes) or RQ_LUT_LD2 doubles (one 16-byte load per 2 dimensions, the
/// same bank pattern).
#define RQ_LUT_THREADS 16
#define RQ_LUT_TILE 32
#define RQ_LUT_CHUNK 32
#define RQ_LUT_LD 36
#define RQ_LUT_LD2 34

/// Eight consecutive floats of a staged row (two 16-byte loads on the GPU).
struct alignas(16) RqLutRow8 {
  float v[8];
};

/// Two consecutive doubles of a staged row (one 16-byte load on the GPU).
struct alignas(16) RqLutPair {
  double v[2];
};

/// Four consecutive floats (one 16-byte load on the GPU).
struct alignas(16) RqLutQuad {
  float v[4];
};

/// Stages dimensions c0 .. c0 + RQ_LUT_CHUNK of a tile's operands as T in rows of LD: the
/// 32 query rows from b0 into sq, the 32 rows of x from row0 + k0 into sc (x stored as
/// x_dtype, widened to f32, then converted to T); zeros past d, B and K. f32 tiles of f32
/// rows whose length is a multiple of 4 and whose bases are 16-byte aligned load one
/// 16-byte quad per operand and thread (2 loads and 2 16-byte stores, where the general
/// path takes 8 element loads, each with its index arithmetic and storage dispatch). All
/// threads of the block (256) take part (tid = their index); the caller synchronises.
template <class T, int LD>
__device__ inline void rq_stage_tile(T* sq, T* sc, int tid, const float* q, int B, int d,
                                     const unsigned char* x, int x_dtype, long long row0, int K,
                                     int b0, int k0, int c0) {
  const float* xf = reinterpret_cast<const float*>(x);
  if (sizeof(T) == 4 && x_dtype == RQ_DTYPE_F32 && d % 4 == 0 &&
      ((reinterpret_cast<unsigned long long>(q) |
        reinterpret_cast<unsigned long long>(xf + row0 * d)) &
       15) == 0) {
    // Four consecutive dimensions of one row per thread (row tid / 8), one 16-byte load per
    // operand: every row's start is 16-byte aligned, and a quad is wholly in or past d.
    const int rr = tid / 8, e = 4 * (tid % 8);
    const RqLutQuad zero = {{0.0f, 0.0f, 0.0f, 0.0f}};
    const bool in = c0 + e < d;
    const RqLutQuad a =
        in && b0 + rr < B
            ? *reinterpret_cast<const RqLutQuad*>(q + (long long)(b0 + rr) * d + c0 + e)
            : zero;
    const RqLutQuad b =
        in && k0 + rr < K
            ? *reinterpret_cast<const RqLutQuad*>(xf + (row0 + k0 + rr) * (long long)d + c0 + e)
            : zero;
RQ_UNROLL
    for (int j = 0; j < 4; ++j) {
      sq[rr * LD + e + j] = (T)a.v[j];
      sc[rr * LD + e + j] = (T)b.v[j];
    }
    return;
  }
  for (int i = tid; i < RQ_LUT_TILE * RQ_LUT_CHUNK; i += RQ_LUT_THREADS * RQ_LUT_THREADS) {
    const int rr = i / RQ_LUT_CHUNK, e = i % RQ_LUT_CHUNK;
    const bool in = c0 + e < d;
    sq[rr * LD + e] = in && b0 + rr < B ? (T)q[(long long)(b0 + rr) * d + c0 + e] : (T)0;
    sc[rr * LD + e] =
        in && k0 + rr < K
            ? (T)rq_load_widened(x, x_dtype, (row0 + k0 + rr) * (long long)d + c0 + e)
            : (T)0;
  }
}

/// One 32 × 32 tile of inner products with the reference's dot (eight f32 partial sums
/// without FMA over the first d/8·8 elements, the rest in f64, combined in f64), so every
/// output equals the reference's `dot(q_b, x_j)` bit for bit:
/// out[out_at + b·ld + j] = <q_b, x[row0 + j]> for the tile's b < B, j < K, and -inf for
/// K ≤ j < ld (padding columns, ld ≥ K: the row stride of out).
/// The tile covers queries b0 .. b0 + 32 and rows j0 .. j0 + 32 (the caller maps its block
/// index to them); block: (16, 16); smem: 2 · 32 · 36 · 4 bytes. q: B × d (f32); x: rows × d
/// stored as x_dtype (RQ_DTYPE_*, widened to f32 when staged).
__device__ inline void rq_ip_tile(unsigned char* smem, int b0, int k0, const float* q, int B,
                                  int d, const unsigned char* x, int x_dtype, long long row0,
                                  int K, int ld, float* out, long long out_at) {
  float* sq = reinterpret_cast<float*>(smem);  // [32][36] query chunk
  float* sc = sq + RQ_LUT_TILE * RQ_LUT_LD;     // [32][36] row chunk
  const int tx = (int)threadIdx.x, ty = (int)threadIdx.y;
  const int tid = ty * RQ_LUT_THREADS + tx;
  const int d8 = d / 8 * 8;
  // Output (i, j) is query b0 + ty + 16·i, row k0 + tx + 16·j.
  float acc[2][2][8];
  double tail[2][2];
RQ_UNROLL
  for (int i = 0; i < 2; ++i)
RQ_UNROLL
    for (int j = 0; j < 2; ++j) {
      tail[i][j] = 0.0;
RQ_UNROLL
      for (int h = 0; h < 8; ++h) acc[i][j][h] = 0.0f;
    }
  for (int c0 = 0; c0 < d; c0 += RQ_LUT_CHUNK) {
    rq_stage_tile<float, RQ_LUT_LD>(sq, sc, tid, q, B, d, x, x_dtype, row0, K, b0, k0, c0);
    __syncthreads();
    for (int e = 0; e < RQ_LUT_CHUNK; e += 8) {
      if (c0 + e < d8) {  // a whole group of eight: one element per partial sum
        RqLutRow8 xs[2], ys[2];
RQ_UNROLL
        for (int i = 0; i < 2; ++i) {
          xs[i] = *reinterpret_cast<const RqLutRow8*>(sq + (ty + 16 * i) * RQ_LUT_LD + e);
          ys[i] = *reinterpret_cast<const RqLutRow8*>(sc + (tx + 16 * i) * RQ_LUT_LD + e);
        }
RQ_UNROLL
        for (int i = 0; i < 2; ++i)
RQ_UNROLL
          for (int j = 0; j < 2; ++j)
RQ_UNROLL
            for (int h = 0; h < 8; ++h) acc[i][j][h] += xs[i].v[h] * ys[j].v[h];
      } else {
        for (int h = 0; h < 8; ++h) {
          if (c0 + e + h < d) {
RQ_UNROLL
            for (int i = 0; i < 2; ++i)
RQ_UNROLL
              for (int j = 0; j < 2; ++j)
                tail[i][j] += (double)sq[(ty + 16 * i) * RQ_LUT_LD + e + h] *
                              (double)sc[(tx + 16 * j) * RQ_LUT_LD + e + h];
          }
        }
      }
    }
    __syncthreads();
  }
RQ_UNROLL
  for (int i = 0; i < 2; ++i)
RQ_UNROLL
    for (int j = 0; j < 2; ++j) {
      const int b = b0 + ty + 16 * i, k = k0 + tx + 16 * j;
      if (b < B && k < ld) {
        double s = 0.0;
RQ_UNROLL
        for (int h = 0; h < 8; ++h) s += (double)acc[i][j][h];
        out[out_at + (long long)b * ld + k] = k < K ? (float)(s + tail[i][j]) : rq_neg_inf();
      }
    }
}

/// One 32 × 32 tile of negated squared distances with the reference's `dist_sq` (the
/// differences and their squares accumulated in f64 in element order, rounded to f32):
/// out[b·ld + j] = -||q_b - x[row0 + j]||², bit for bit (-inf for K ≤ j < ld). Operands are
/// staged as doubles (converted once per staged element, not per product); the zero padding
/// past d adds exact zeros to a non-negative sum, which changes nothing. Tile and block as
/// rq_ip_tile; smem: 2 · 32 · 34 · 8 bytes. q: B × d; x: rows × d (f32).
__device__ inline void rq_l2_tile(unsigned char* smem, int b0, int k0, const float* q, int B,
                                  int d, const float* x, long long row0, int K, int ld,
                                  float* out) {
  double* sq = reinterpret_cast<double*>(smem);  // [32][34] query chunk
  double* sc = sq + RQ_LUT_TILE * RQ_LUT_LD2;     // [32][34] row chunk
  const int tx = (int)threadIdx.x, ty = (int)threadIdx.y;
  const int tid = ty * RQ_LUT_THREADS + tx;
  double acc[2][2];
RQ_UNROLL
  for (int i = 0; i < 2; ++i)
RQ_UNROLL
    for (int j = 0; j < 2; ++j) acc[i][j] = 0.0;
  for (int c0 = 0; c0 < d; c0 += RQ_LUT_CHUNK) {
    rq_stage_tile<double, RQ_LUT_LD2>(sq, sc, tid, q, B, d,
                                      reinterpret_cast<const unsigned char*>(x), RQ_DTYPE_F32,
                                      row0, K, b0, k0, c0);
    __syncthreads();
    for (int e = 0; e < RQ_LUT_CHUNK; e += 2) {
      RqLutPair xs[2], ys[2];
RQ_UNROLL
      for (int i = 0; i < 2; ++i) {
        xs[i] = *reinterpret_cast<const RqLutPair*>(sq + (ty + 16 * i) * RQ_LUT_LD2 + e);
        ys[i] = *reinterpret_cast<const RqLutPair*>(sc + (tx + 16 * i) * RQ_LUT_LD2 + e);
      }
RQ_UNROLL
      for (int h = 0; h < 2; ++h)
RQ_UNROLL
        for (int i = 0; i < 2; ++i)
RQ_UNROLL
          for (int j = 0; j < 2; ++j) {
            const double t = xs[i].v[h] - ys[j].v[h];
            acc[i][j] += t * t;
          }
    }
    __syncthreads();
  }
RQ_UNROLL
  for (int i = 0; i < 2; ++i)
RQ_UNROLL
    for (int j = 0; j < 2; ++j) {
      const int b = b0 + ty + 16 * i, k = k0 + tx + 16 * j;
      if (b < B && k < ld) out[(long long)b * ld + k] = k < K ? -(float)acc[i][j] : rq_neg_inf();
    }
}

/// Lookup table of one level: out[out_at + b·K + k] = <q_b, C[k]>, equal to the reference's
/// tables bit for bit (rq_ip_tile). grid: (ceil(B / 32), ceil(K / 32)) (K ≤ 65536 keeps y in
/// range); block: (16, 16); shared: 2 · 32 · 36 · 4 bytes.
/// q: B × d; cb: K × d stored as cb_dtype (0 f32, 1 f16 bits, 2 bf16 bits; the tables are
/// those of the widened codebook); out: the B × K table at element out_at (the levels of a
/// search share one stacked buffer).
extern "C" __global__ void rq_lut(const float* q, int B, int d, const unsigned char* cb,
                                  int cb_dtype, int K, float* out, long long out_at) {
  RQ_SHARED_BASE(smem);
  rq_ip_tile(smem, (int)blockIdx.x * RQ_LUT_TILE, (int)blockIdx.y * RQ_LUT_TILE, q, B, d, cb,
             cb_dtype, 0, K, K, out, out_at);
}

/// Exact scores of a query batch against a block of item rows, the reference's exact
/// scoring bit for bit: out[b·ld + j] = <q_b, x_{row0+j}> (metric 0, ip) or
/// -||q_b - x_{row0+j}||² (metric 1, l2) for b < B, j < n, where q_b is the query row
/// starting at element q_at + b·d; columns n ≤ j < ld are -inf (padding that lets the
/// selection view each row as equal segments). The first step of the exact brute-force
/// top-k, which selects from these B × ld tiles.
/// grid: (ceil(ld / 32), ceil(B / 32)) — item tiles on x (no 65535 limit; consecutive blocks
/// share the query tile), so ceil(B / 32) ≤ 65535; block: (16, 16); shared: 2 · 32 · 34 · 8
/// bytes (the larger of the two tiles). items: rows × d (f32), rows ≥ row0 + n; out: B × ld.
extern "C" __global__ void __launch_bounds__(256, 3) rq_exact_scores(const float* q, long long q_at, int B, int d,
                                           const float* items, long long row0, int n, int ld,
                                           int metric, float* out) {
  RQ_SHARED_BASE(smem);
  const int b0 = (int)blockIdx.y * RQ_LUT_TILE, k0 = (int)blockIdx.x * RQ_LUT_TILE;
  if (metric == RQ_METRIC_L2) {
    rq_l2_tile(smem, b0, k0, q + q_at, B, d, items, row0, n, ld, out);
  } else {
    rq_ip_tile(smem, b0, k0, q + q_at, B, d, reinterpret_cast<const unsigned char*>(items),
               RQ_DTYPE_F32, row0, n, ld, out, 0);
  }
}

/// Squared norm of each row in f64, rounded to f32 (the reference's `row_norms_sq`).
/// grid: ceil(rows / blockDim.x); no shared memory. x: rows × d; out: rows.
extern "C" __global__ void rq_row_norms(const float* x, int rows, int d, float* out) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < rows) out[i] = rq_norm_sq(x + i * d, d);
}

/// The global reads of one candidate of rq_fused_topk: its L ≤ MAXL codes (< 65536), two
/// per word (level l in bits 16·(l % 2) of w[l / 2]; fewer registers to carry a round
/// ahead) and, under l2, its norm.
/// Most candidates a thread scores per round of rq_fused_topk (the host's per_thread ≤ it).
#define RQ_FUSED_RUN 4

template <int MAXL>
struct RqItemCodes {
  unsigned w[(MAXL + 1) / 2];
  float norm;
};

/// Fused residual lookup + top-k: for query b (one block), the candidates are the items of
/// its kept nodes; each is scored Σ_l LUT_l[code_l(i)] (+ the metric's norms) straight from
/// the tables and offered to the block's selector, so no candidate-score matrix exists.
/// Ranked by (score, ids[i]); the payload is the item position i. Per item the kernel reads
/// its L codes (and its norm under l2); the caller's id only when the item's score reaches
/// the current k-th best (rq_select_offer), so a scan reads ~L bytes per item.
///
/// luts: the L tables stacked; level l's B × K_l table starts at element lut_off[l];
/// lut_k: K_l; 1 ≤ L ≤ RQ_MAX_LEVELS. lut_shared = 1: the query's L table rows are staged in
/// shared memory (Σ K_l floats); 0: read from global memory.
/// codes: L × N level-major, code_bytes = 1 (u8) or 2 (u16).
/// item_start: the depth's item CSR (nodes + 1, u32); query b's candidate nodes are
/// cand_nodes[cand_start[b] .. cand_start[b] + cand_count[b]) (u32 node ids at that depth;
/// cand_start: B i64, cand_count: B i32 — a CSR list or the beam's padded B × W lists).
/// item_norms: N (||x̂||², read under l2 only); qnorm: B; metric: 0 ip, 1 l2; ids: N caller
/// ids (i64). per_thread: consecutive candidates each thread scores per round
/// (rq_for_ranges; 1 ≤ per_thread ≤ RQ_FUSED_RUN). out_pos / out_scores: B × k, positions
/// (-1 when empty) and scores (-inf), best first; out_scanned: B (i64), the candidate items of each query.
/// grid: B; block: a power of two, 32 … 256 (rq_fused_topk_l4's launch bounds (256, 3): at
/// most 80 registers, three blocks per SM); 1 ≤ k ≤ 2048;
/// shared: 4·Σ K_l·lut_shared (rounded up to 16) + round16(8·blockDim.x + 8) + 16·cap + 1104
/// bytes, cap = next power of two ≥ k + blockDim.x · per_thread.
/// Entry points: rq_fused_topk (L ≤ RQ_MAX_LEVELS) and rq_fused_topk_l4 (L ≤ 4: fewer
/// registers for the per-level loops and the codes of the next round carried ahead, so more
/// blocks per SM), the same body and arguments.
template <int MAXL>
__device__ inline void rq_fused_topk_body(
    const float* luts, const long long* lut_off, const int* lut_k, int L, int lut_shared,
    const unsigned char* codes, int code_bytes, int N, const unsigned* item_start,
    const long long* cand_start, const int* cand_count, const unsigned* cand_nodes,
    const float* item_norms, const float* qnorm, int metric, const long long* ids,
    int per_thread, long long* out_scanned, int k, int cap, long long* out_pos,
    float* out_scores) {
  RQ_SHARED_BASE(smem);
  const long long b = blockIdx.x;
  // Where level l's entries start in the staged table rows (lut_shared).
  int toff[MAXL];
  int ksum = 0;
RQ_UNROLL
  for (int l = 0; l < MAXL; ++l) {
    toff[l] = ksum;
    if (l < L) ksum += lut_k[l];
  }
  const unsigned tab_bytes = lut_shared ? ((unsigned)ksum * 4u + 15u) / 16u * 16u : 0u;
  float* tab = reinterpret_cast<float*>(smem);
  unsigned* pre = reinterpret_cast<unsigned*>(smem + tab_bytes);
  unsigned* base = pre + blockDim.x + 1;
  int* scanned = reinterpret_cast<int*>(base + blockDim.x);  // items of the visited ranges
  const RqSelect q =
      rq_select_carve(smem + tab_bytes + ((8u * blockDim.x + 8u + 15u) / 16u * 16u), k, cap);

  if (lut_shared) {
    int off = 0;
    for (int l = 0; l < L; ++l) {
      const int kl = lut_k[l];
      const float* row = luts + lut_off[l] + b * kl;
      for (int c = threadIdx.x; c < kl; c += blockDim.x) tab[off + c] = row[c];
      off += kl;
    }
  }
  if (threadIdx.x == 0) *scanned = 0;
  rq_select_init(q);  // synchronises: the tables and the counter are visible

  const float qn = qnorm[b];
  const long long c0 = cand_start[b];
  const int m = cand_count[b];
  const unsigned short* codes16 = reinterpret_cast<const unsigned short*>(codes);
  const int round = (int)blockDim.x * per_thread;
  // The current k-th score, re-read after each round's merge.
  float ts = q.s[q.k - 1];
  rq_for_ranges<RQ_FUSED_RUN>(
      m, per_thread, pre, base,
      [&](int j, unsigned& begin, unsigned& len) {
        const unsigned node = cand_nodes[c0 + j];
        begin = item_start[node];
        len = item_start[node + 1] - begin;
        atomicAdd(scanned, (int)len);
      },
      [&](unsigned i) {
        RqItemCodes<MAXL> v{};
RQ_UNROLL
        for (int l = 0; l < MAXL; ++l) {
          if (l < L) {
            const long long at = (long long)l * N + i;
            const unsigned c = code_bytes == 1 ? (unsigned)codes[at] : (unsigned)codes16[at];
            v.w[l / 2] |= c << (16 * (l % 2));
          }
        }
        v.norm = metric == RQ_METRIC_L2 ? item_norms[i] : 0.0f;
        return v;
      },
      [&](unsigned, const RqItemCodes<MAXL>& v) {
        // The reference's f32 sum starts at -0.0 (x + -0 = x; a sum of -0 entries is -0).
        float ip = -0.0f;
RQ_UNROLL
        for (int l = 0; l < MAXL; ++l) {
          if (l < L) {
            const int c = (int)((v.w[l / 2] >> (16 * (l % 2))) & 0xffffu);
            ip += lut_shared ? tab[toff[l] + c] : luts[lut_off[l] + b * lut_k[l] + c];
          }
        }
        return metric == RQ_METRIC_L2 ? rq_metric_score(metric, ip, qn, v.norm) : ip;
      },
      [&](unsigned i, float s) { rq_select_offer_at(q, ts, s, [&] { return ids[i]; }, i); },
      [&] {
        rq_select_round_end(q, round);
        ts = q.s[q.k - 1];
      });
  rq_select_finish(q);  // synchronises: the counter is complete
  if (threadIdx.x == 0) out_scanned[b] = *scanned;
  for (int i = threadIdx.x; i < k; i += blockDim.x) {
    const bool full = q.p[i] != RQ_NO_PAYLOAD;
    out_pos[b * k + i] = full ? (long long)q.p[i] : -1;
    out_scores[b * k + i] = full ? q.s[i] : rq_neg_inf();
  }
}

extern "C" __global__ void rq_fused_topk(
    const float* luts, const long long* lut_off, const int* lut_k, int L, int lut_shared,
    const unsigned char* codes, int code_bytes, int N, const unsigned* item_start,
    const long long* cand_start, const int* cand_count, const unsigned* cand_nodes,
    const float* item_norms, const float* qnorm, int metric, const long long* ids,
    int per_thread, long long* out_scanned, int k, int cap, long long* out_pos,
    float* out_scores) {
  rq_fused_topk_body<RQ_MAX_LEVELS>(luts, lut_off, lut_k, L, lut_shared, codes, code_bytes, N,
                                    item_start, cand_start, cand_count, cand_nodes, item_norms,
                                    qnorm, metric, ids, per_thread, out_scanned, k, cap, out_pos,
                                    out_scores);
}

extern "C" __global__ void __launch_bounds__(256, 3) rq_fused_topk_l4(
    const float* luts, const long long* lut_off, const int* lut_k, int L, int lut_shared,
    const unsigned char* codes, int code_bytes, int N, const unsigned* item_start,
    const long long* cand_start, const int* cand_count, const unsigned* cand_nodes,
    const float* item_norms, const float* qnorm, int metric, const long long* ids,
    int per_thread, long long* out_scanned, int k, int cap, long long* out_pos,
    float* out_scores) {
  rq_fused_topk_body<4>(luts, lut_off, lut_k, L, lut_shared, codes, code_bytes, N, item_start,
                        cand_start, cand_count, cand_nodes, item_norms, qnorm, metric, ids,
                        per_thread, out_scanned, k, cap, out_pos, out_scores);
}

/// Exact score of query row `qs` (shared) against row `p` of embeddings stored as `emb_dtype`
/// (RQ_DTYPE_F32, _F16 or _BF16; 16-bit rows are widened to f32 element by element).
__device__ inline float rq_exact_score(int metric, const float* qs, const unsigned char* emb,
                                       int emb_dtype, long long p, int d) {
  if (emb_dtype != RQ_DTYPE_F32) {
    const unsigned short* x = reinterpret_cast<const unsigned short*>(emb) + p * d;
    if (emb_dtype == RQ_DTYPE_BF16)
      return metric == RQ_METRIC_L2 ? -rq_dist_sq_w<RqWidenBf16>(qs, x, d)
                                    : rq_dot_w<RqWidenBf16>(qs, x, d);
    return metric == RQ_METRIC_L2 ? -rq_dist_sq_w<RqWidenF16>(qs, x, d)
                                  : rq_dot_w<RqWidenF16>(qs, x, d);
  }
  const float* x = reinterpret_cast<const float*>(emb) + p * d;
  return metric == RQ_METRIC_L2 ? -rq_dist_sq(qs, x, d) : rq_dot(qs, x, d);
}

/// Exact re-rank of a shortlist: query b (one block) re-scores its count[b] shortlisted item
/// positions shortlist[start[b] + j] (-1 = empty, skipped) against the stored embeddings (ip:
/// <q, x>; l2: -||q - x||²) and keeps the best k, ranked by (score, ids[pos]); payload =
/// position. q: B × d; emb: N × d stored as emb_dtype: 0 f32, 1 f16 bits, 2 bf16 bits;
/// shortlist: i64 positions (a CSR list, or B × S padded with -1: start[b] = b·S, count[b] =
/// S); start: B (i64); count: B (i32); ids: N (i64); out_pos / out_scores: B × k. grid: B; block: a
/// power of two ≥ 32; shared: 4·d (rounded up to 16) + 16·cap + 1104 bytes, cap = next pow2
/// ≥ k + blockDim.x.
extern "C" __global__ void rq_rerank(const float* q, int d, const unsigned char* emb,
                                     int emb_dtype, const long long* shortlist,
                                     const long long* start, const int* count,
                                     const long long* ids, int metric, int k, int cap,
                                     long long* out_pos, float* out_scores) {
  RQ_SHARED_BASE(smem);
  const long long b = blockIdx.x;
  float* qs = reinterpret_cast<float*>(smem);
  const RqSelect sel = rq_select_carve(smem + ((unsigned)d * 4u + 15u) / 16u * 16u, k, cap);
  for (int e = threadIdx.x; e < d; e += blockDim.x) qs[e] = q[b * d + e];
  rq_select_init(sel);
  const long long* list = shortlist + start[b];
  const int S = count[b];
  for (int j0 = 0; j0 < S; j0 += blockDim.x) {
    const int j = j0 + (int)threadIdx.x;
    const long long p = j < S ? list[j] : -1;
    const bool valid = p >= 0;
    const float s = valid ? rq_exact_score(metric, qs, emb, emb_dtype, p, d) : 0.0f;
    rq_select_push(sel, valid, s, valid ? ids[p] : 0, valid ? (unsigned)p : 0u);
  }
  rq_select_finish(sel);
  for (int i = threadIdx.x; i < k; i += blockDim.x) {
    const bool full = sel.p[i] != RQ_NO_PAYLOAD;
    out_pos[b * k + i] = full ? (long long)sel.p[i] : -1;
    out_scores[b * k + i] = full ? sel.s[i] : rq_neg_inf();
  }
}

/// Caller ids of item positions: out[i] = ids[pos[i]], -1 where pos[i] < 0 (empty slots).
/// pos / out: n (i64); ids: N (i64). grid: ceil(n / blockDim.x); block: any size.
extern "C" __global__ void rq_gather_ids(const long long* pos, long long n, const long long* ids,
                                         long long* out) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const long long p = pos[i];
  out[i] = p < 0 ? -1 : ids[p];
}
