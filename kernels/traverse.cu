// Beam traversal (DESIGN §3), one launch per depth: score nodes from the lookup tables
// (ip accumulated along the path; l2 adds the centroid norm), keep the best W per query.
// Ties → lower node id. Kept lists: B × W node ids (u32), their path ip (f32) and a count.
#include "common.cuh"

/// Depth 1: every depth-1 node j scores LUT_0[code[j]] (+ norms for l2); keep the best W.
/// lut: the B × K level-1 table at element lut_at of `lut`; code / cnorm: the depth-1 nodes' last code and ||centroid||²;
/// qnorm: B; metric: 0 ip, 1 l2. out_nodes / out_ip: B × W; out_count: B (= min(W, nodes)).
/// grid: B; block: a power of two ≥ 32; 1 ≤ W ≤ 2048;
/// shared: 16·cap + 16 bytes, cap = next power of two ≥ W + blockDim.x.
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

/// The global reads of one child of rq_beam_step: its code and, under l2, its norm.
struct RqChildCode {
  unsigned code;
  float norm;
};

/// Depth l+1: expand the children of query b's kept depth-l nodes, score child c as
/// parent_ip + LUT_l[code[c]] (+ norms for l2), keep the best W. The selector's payload is
/// the parent's slot in the previous list; the child's ip is recomputed from it.
/// lut: this level's B × K table at element lut_at of `lut`; child_start: the parent depth's child CSR (u32);
/// code / cnorm: this depth's nodes (cnorm read under l2 only); prev_nodes / prev_ip: B × Wp,
/// prev_count: B. per_thread: consecutive children each thread scores per round
/// (rq_for_ranges). Outputs as rq_beam_first. grid: B; block: a power of two ≥ 32;
/// 1 ≤ W ≤ 2048; shared: 8·blockDim.x + 16 (rounded up to 16) + 16·cap + 16 bytes,
/// cap = next power of two ≥ W + blockDim.x · per_thread.
extern "C" __global__ void rq_beam_step(const float* lut, long long lut_at, int K,
                                        const unsigned* child_start,
                                        const unsigned* code, const float* cnorm,
                                        const unsigned* prev_nodes, const float* prev_ip,
                                        const int* prev_count, int Wp, const float* qnorm,
                                        int metric, int per_thread, int W, int cap,
                                        unsigned* out_nodes, float* out_ip, int* out_count) {
  RQ_SHARED_BASE(smem);
  unsigned* pre = reinterpret_cast<unsigned*>(smem);
  unsigned* base = pre + blockDim.x + 1;
  const RqSelect q = rq_select_carve(smem + (8u * blockDim.x + 4u + 15u) / 16u * 16u, W, cap);
  const long long b = blockIdx.x;
  const float* t = lut + lut_at + b * K;
  const float qn = qnorm[b];
  const unsigned* pn = prev_nodes + b * Wp;
  const float* pip = prev_ip + b * Wp;
  rq_select_init(q);
  const int round = (int)blockDim.x * per_thread;
  rq_for_ranges(
      prev_count[b], per_thread, pre, base,
      [&](int j, unsigned& begin, unsigned& len) {
        begin = child_start[pn[j]];
        len = child_start[pn[j] + 1] - begin;
      },
      [&](unsigned c) {
        RqChildCode v;
        v.code = code[c];
        v.norm = metric == RQ_METRIC_L2 ? cnorm[c] : 0.0f;
        return v;
      },
      [&](int slot, unsigned c, const RqChildCode& v) {
        const float ip = pip[slot] + t[v.code];
        const float s = metric == RQ_METRIC_L2 ? rq_metric_score(metric, ip, qn, v.norm) : ip;
        rq_select_offer(q, s, [&] { return (long long)c; }, (unsigned)slot);
      },
      [&] { rq_select_round_end(q, round); });
  rq_select_finish(q);
  for (int i = threadIdx.x; i < W; i += blockDim.x) {
    if (q.p[i] != RQ_NO_PAYLOAD) {
      const unsigned node = (unsigned)q.r[i];
      out_nodes[b * W + i] = node;
      out_ip[b * W + i] = pip[q.p[i]] + t[code[node]];
    }
  }
  // The kept entries are a prefix: count them.
  if (threadIdx.x == 0) {
    int cnt = 0;
    while (cnt < W && q.p[cnt] != RQ_NO_PAYLOAD) ++cnt;
    out_count[b] = cnt;
  }
}
