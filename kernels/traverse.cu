// Beam traversal (DESIGN §3), one launch per depth: score nodes from the lookup tables
// (ip accumulated along the path; l2 adds the centroid norm), keep the best W per query.
// Ties → lower node id. Kept lists: B × W node ids (u32), their path ip (f32) and a count.
#include "radix.cuh"

/// Depth 1: every depth-1 node j scores LUT_0[code[j]] (+ norms for l2); keep the best W.
/// lut: the B × K level-1 table at element lut_at of `lut`; code / cnorm: the depth-1 nodes' last code and ||centroid||²;
/// qnorm: B; metric: 0 ip, 1 l2. out_nodes / out_ip: B × W; out_count: B (= min(W, nodes)).
/// grid: B; block: a power of two ≥ 32; 1 ≤ W ≤ 2048;
/// shared: 16·cap + 1104 bytes, cap = next power of two ≥ W + blockDim.x.
extern "C" __global__ void rq_beam_first(const float* lut, long long lut_at, int K,
                                         const unsigned* code,
                                         int nodes, const float* cnorm, const float* qnorm,
                                         int metric, int W, int cap, unsigned* out_nodes,
                                         float* out_ip, int* out_count) {
  RQ_SHARED_BASE(smem);
  const RqSelect q = rq_select_carve(smem, W, cap);
  const long long b = blockIdx.x;
  const float* t = lut + lut_at + b * K;
  const float qn = qnorm[b];
  rq_select_init(q);
  for (int j0 = 0; j0 < nodes; j0 += blockDim.x) {
    const int j = j0 + (int)threadIdx.x;
    const bool valid = j < nodes;
    float s = 0.0f;
    if (valid) s = metric == RQ_METRIC_L2 ? rq_metric_score(metric, t[code[j]], qn, cnorm[j])
                                          : t[code[j]];
    rq_select_push(q, valid, s, j, (unsigned)j);
  }
  rq_select_finish(q);
  const int cnt = nodes < W ? nodes : W;
  for (int i = threadIdx.x; i < cnt; i += blockDim.x) {
    const unsigned node = q.p[i];
    out_nodes[b * W + i] = node;
    out_ip[b * W + i] = t[code[node]];
  }
  if (threadIdx.x == 0) out_count[b] = cnt;
}

/// Largest table (codes of the level) that rq_beam_step stages in shared memory.
#define RQ_STEP_LUT_MAX 4096

/// Children each thread scores per step of a rq_beam_step sweep (their loads are issued
/// together; a warp's 32 · RQ_STEP_RUN children are contiguous).
#define RQ_STEP_RUN 8

/// Depth l+1, two launches on the same arguments (rq_beam_step, then rq_beam_step_rest):
/// expand the children of query b's kept depth-l nodes, score child c as
/// parent_ip + LUT_l[code[c]] (+ norms for l2), keep the best W (ties → lower node id), by
/// radix selection over sweeps that recompute the scores (no score is written to memory,
/// and the work is linear in the children whatever W): a 1-in-s sample of the children
/// gives a threshold, one sweep gathers the children at or above it, and a selection in
/// shared memory finishes (rq_radix_block_select_sampled); rq_beam_step_rest runs the full
/// radix selection for the queries whose sample misjudged the threshold.
/// 1. The kept parents are sorted by node id (bitonic sort of (node, slot)), so that the
///    concatenation of their child ranges (CSR: children of lower nodes have lower ids)
///    lists the children in id order: a child's position f in it orders ties like its id,
///    and its entry is (score's radix key, ~f).
/// 2. Prefix sums of the range lengths; a sweep gives each warp 32 · RQ_STEP_RUN positions per
///    step, to each thread RQ_STEP_RUN of them 32 apart (long ranges: coalesced loads) or
///    consecutive (short ranges), one binary search, then a forward walk over the ranges.
/// 3. The winners' positions give back their node and parent (same binary search).
/// lut: this level's B × K table at element lut_at of `lut`; child_start: the parent
/// depth's child CSR (u32); code / cnorm: this depth's nodes (cnorm read under l2 only);
/// prev_nodes / prev_ip: B × Wp, prev_count: B (≤ Wp). Outputs as rq_beam_first (sorted
/// best first). grid: B; block: a power of two, 32 … 256 (launch bounds (256, 4): at most 64
/// registers, so four blocks share an SM); 1 ≤ W ≤ 2048, 1 ≤ Wp ≤ 2048; fewer
/// than 2^31 children per query; shared: RQ_RADIX_HEAD + 8 · slots + 8 · P + 12 · Wp + 4
/// (+ 4 · K when K ≤ RQ_STEP_LUT_MAX) bytes, rounded up to 16, P = next power of two ≥ Wp,
/// slots ≥ next power of two ≥ W (the host passes 3 072).
/// SAMPLED: rq_beam_step (the sampled threshold; out_count[b] = -1 when it misjudged),
/// otherwise rq_beam_step_rest (the full radix selection for the queries it left at -1).
template <bool SAMPLED>
__device__ inline void rq_beam_step_body(unsigned char* smem, const float* lut,
                                         long long lut_at, int K, const unsigned* child_start,
                                         const unsigned* code, const float* cnorm,
                                         const unsigned* prev_nodes, const float* prev_ip,
                                         const int* prev_count, int Wp, const float* qnorm,
                                         int metric, int W, int slots, unsigned* out_nodes,
                                         float* out_ip, int* out_count) {
  int* hist = reinterpret_cast<int*>(smem);
  int* ctrl = hist + 256;
  unsigned long long* a = reinterpret_cast<unsigned long long*>(smem + RQ_RADIX_HEAD);
  unsigned P = 1;
  while (P < (unsigned)Wp) P <<= 1;
  unsigned long long* par = a + slots;  // P entries: ~(node << 32 | slot), sorted
  unsigned* pre = reinterpret_cast<unsigned*>(par + P);  // Wp + 1 prefix sums
  unsigned* base = pre + Wp + 1;                          // Wp first children
  float* pj = reinterpret_cast<float*>(base + Wp);        // Wp parent ips
  const long long b = blockIdx.x;
  // The table in shared memory when it fits (a warp's 32 random reads of it then cost a
  // few bank conflicts instead of a cache line each); read from global memory otherwise.
  float* staged = pj + Wp;
  const bool stage = K <= RQ_STEP_LUT_MAX;
  const float* t = stage ? staged : lut + lut_at + b * K;
  const float qn = qnorm[b];
  const int T = (int)blockDim.x;
  const int tid = (int)threadIdx.x;
  const int cnt = prev_count[b];
  // 1. Parents by node id: the complement makes the largest-first sort ascending (empty
  // slots, 0, last).
  for (unsigned i = tid; i < P; i += T)
    par[i] = (int)i < cnt ? ~(((unsigned long long)prev_nodes[b * Wp + i] << 32) | i) : 0ull;
  __syncthreads();
  rq_radix_sort(par, P);
  // 2. Ranges and their prefix sums (block scans of T lengths, carried across chunks).
  if (tid == 0) pre[0] = 0;
  for (int j = tid; j < cnt; j += T) {
    const unsigned long long v = ~par[j];
    const unsigned node = (unsigned)(v >> 32);
    base[j] = child_start[node];
    pre[j + 1] = child_start[node + 1] - base[j];
    pj[j] = prev_ip[b * Wp + (unsigned)v];
  }
  if (stage)
    for (int c = tid; c < K; c += T) staged[c] = lut[lut_at + b * K + c];
  __syncthreads();
  for (int j0 = 0; j0 < cnt; j0 += T) {
    const int nb = cnt - j0 < T ? cnt - j0 : T;
    rq_block_inclusive_scan(pre + 1 + j0, nb);
    if (tid < nb) pre[1 + j0 + tid] += pre[j0];
    __syncthreads();
  }
  const unsigned total = cnt > 0 ? pre[cnt] : 0u;
  // The range holding position f: the largest j with pre[j] <= f (so range j is not empty).
  const auto locate = [&](unsigned f) {
    int lo = 0, hi = cnt - 1;
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (pre[mid] <= f) lo = mid; else hi = mid - 1;
    }
    return lo;
  };
  // The entry of the child at position x: parent ip pp, code cd, centroid norm nm (l2).
  const auto entry = [&](unsigned x, float pp, unsigned cd, float nm) {
    const float ip = pp + t[cd];
    const float s = metric == RQ_METRIC_L2 ? rq_metric_score(metric, ip, qn, nm) : ip;
    return rq_radix_entry(rq_radix_key(s), (int)x);
  };
  const auto sweep = [&](auto f) {
    // Warp w takes positions f0 .. f0 + 32·RQ_STEP_RUN, f0 = 32·RQ_STEP_RUN·w (+ T·RQ_STEP_RUN
    // per step). With long child ranges (RQ_STEP_RUN·32 or more on average) lane l takes
    // f0 + l + 32·u, so each load instruction reads 32 consecutive codes; with short ones it
    // takes RQ_STEP_RUN consecutive positions (32 apart, its forward walk would step over up
    // to 32 ranges per child). Increasing per thread either way (the forward walk).
    const unsigned lane = (unsigned)tid % RQ_WARP;
    const bool spread = cnt > 0 && total >= RQ_WARP * RQ_STEP_RUN * (unsigned)cnt;
    const unsigned step = spread ? RQ_WARP : 1u, first = spread ? lane : lane * RQ_STEP_RUN;
    for (unsigned f0 = ((unsigned)tid - lane) * RQ_STEP_RUN; f0 < total;
         f0 += (unsigned)T * RQ_STEP_RUN) {
      // The current range in registers: its end position, base - start (so that child =
      // off + x, modulo 2^32) and parent ip; reloaded only when x passes the end.
      int j = locate(f0 + first);
      unsigned end = pre[j + 1], off = base[j] - pre[j];
      float pp = pj[j];
      unsigned c[RQ_STEP_RUN], cd[RQ_STEP_RUN];
      float pi[RQ_STEP_RUN], nm[RQ_STEP_RUN];
RQ_UNROLL
      for (int u = 0; u < RQ_STEP_RUN; ++u) {
        const unsigned x = f0 + first + step * u;
        if (x < total) {
          while (x >= end) {
            ++j;
            end = pre[j + 1];
            off = base[j] - pre[j];
            pp = pj[j];
          }
          c[u] = off + x;
          pi[u] = pp;
          cd[u] = code[c[u]];
          nm[u] = metric == RQ_METRIC_L2 ? cnorm[c[u]] : 0.0f;
        }
      }
RQ_UNROLL
      for (int u = 0; u < RQ_STEP_RUN; ++u) {
        const unsigned x = f0 + first + step * u;
        if (x < total) f(entry(x, pi[u], cd[u], nm[u]));
      }
    }
  };
  // The sample: every `stride`-th position (odd, so that it does not stay in step with
  // power-of-two child ranges), r of them expected above the gathered threshold, aiming at
  // about (W + slots) / 2 gathered children. Only worth it when the sample is small beside
  // the children.
  const int target = (W + slots) / 2;
  const unsigned stride = (unsigned)(target / 64) | 1u;
  const int r = target / (int)stride;
  const unsigned ns = total >= 4u * (unsigned)target ? (total - 1) / stride + 1 : 0u;
  const auto sample = [&](auto f) {
    for (unsigned i = (unsigned)tid; i < ns; i += (unsigned)T) {
      const unsigned x = i * stride;
      const int j = locate(x);
      const unsigned c = base[j] - pre[j] + x;
      f(entry(x, pj[j], code[c], metric == RQ_METRIC_L2 ? cnorm[c] : 0.0f));
    }
  };
  // Under ip every child scores pj[j] + t[code] with both in known ranges, and rounding is
  // monotone, so every key lies in [key(min + min), key(max + max)]: the first radix digit
  // then starts just below the bits those bounds share (one histogram spread over the
  // scores' actual range, usually saving a sweep). l2 starts at the top byte.
  unsigned long long prefix0 = 0, mask0 = 0;
  int shift0 = 56;
  if (metric != RQ_METRIC_L2 && total > 0) {
    float lo = __builtin_huge_valf(), hi = -__builtin_huge_valf();
    for (int c = tid; c < K; c += T) {
      lo = fminf(lo, t[c]);
      hi = fmaxf(hi, t[c]);
    }
    float plo = __builtin_huge_valf(), phi = -__builtin_huge_valf();
    for (int j = tid; j < cnt; j += T) {
      plo = fminf(plo, pj[j]);
      phi = fmaxf(phi, pj[j]);
    }
    float* scratch = reinterpret_cast<float*>(hist);
    rq_block_min_max(lo, hi, scratch);
    rq_block_min_max(plo, phi, scratch);
    const unsigned klo = rq_radix_key(plo + lo), khi = rq_radix_key(phi + hi);
    const unsigned diff = klo ^ khi;
    // Bits above the highest differing one are common to every key in [klo, khi].
    const int top = diff == 0 ? -1 : 31 - __clz((int)diff);
    const unsigned m32 = top < 0 ? ~0u : (top == 31 ? 0u : ~((2u << top) - 1u));
    prefix0 = (unsigned long long)(klo & m32) << 32;
    mask0 = (unsigned long long)m32 << 32;
    // One score: the positions decide, from their top byte.
    shift0 = top < 0 ? 24 : 32 + (top < 7 ? 0 : top - 7);
  }
  int kept;
  if constexpr (SAMPLED) {
    kept = rq_radix_block_select_sampled(sweep, sample, (long long)ns, r, (long long)total, W,
                                         slots, a, hist, ctrl, prefix0, mask0, shift0);
    if (kept < 0) {  // the same on every thread
      if (tid == 0) out_count[b] = -1;
      return;
    }
  } else {
    kept = rq_radix_block_select(sweep, (long long)total, W, slots, a, hist, ctrl, prefix0,
                                 mask0, shift0);
  }
  // 3. Winners back to nodes and path ips.
  for (int i = tid; i < kept; i += T) {
    const unsigned x = ~(unsigned)a[i];
    const int j = locate(x);
    const unsigned node = base[j] + (x - pre[j]);
    out_nodes[b * W + i] = node;
    out_ip[b * W + i] = pj[j] + t[code[node]];
  }
  if (tid == 0) out_count[b] = kept;
}

extern "C" __global__ void __launch_bounds__(256, 4)
    rq_beam_step(const float* lut, long long lut_at, int K, const unsigned* child_start,
                 const unsigned* code, const float* cnorm, const unsigned* prev_nodes,
                 const float* prev_ip, const int* prev_count, int Wp, const float* qnorm,
                 int metric, int W, int slots, unsigned* out_nodes, float* out_ip,
                 int* out_count) {
  RQ_SHARED_BASE(smem);
  rq_beam_step_body<true>(smem, lut, lut_at, K, child_start, code, cnorm, prev_nodes, prev_ip,
                          prev_count, Wp, qnorm, metric, W, slots, out_nodes, out_ip,
                          out_count);
}

/// Second launch of a beam step, same arguments: the queries rq_beam_step left at
/// out_count = -1 get the full radix selection; the others return at once.
extern "C" __global__ void __launch_bounds__(256, 4)
    rq_beam_step_rest(const float* lut, long long lut_at, int K, const unsigned* child_start,
                      const unsigned* code, const float* cnorm, const unsigned* prev_nodes,
                      const float* prev_ip, const int* prev_count, int Wp, const float* qnorm,
                      int metric, int W, int slots, unsigned* out_nodes, float* out_ip,
                      int* out_count) {
  if (out_count[blockIdx.x] >= 0) return;
  RQ_SHARED_BASE(smem);
  rq_beam_step_body<false>(smem, lut, lut_at, K, child_start, code, cnorm, prev_nodes,
                           prev_ip, prev_count, Wp, qnorm, metric, W, slots, out_nodes,
                           out_ip, out_count);
}
