// Reusable device utilities of the rqtree kernels (in the spirit of FAISS's GPU utils):
// the crate's rank order, the exact dot/distance arithmetic of the CPU reference, warp and
// block reductions, and the block-wide top-k selector every selecting kernel is built on.
//
// Arithmetic contract: the kernels are compiled with `-fmad=false`, so `a * b + c` is a
// rounded multiply then a rounded add, exactly as the Rust reference computes it. With the
// same summation order (rq_dot, rq_dist_sq, rq_norm_sq below) the results are bitwise equal
// to the reference's, which makes ties (and therefore ids) reproducible.
//
// Rules (DESIGN §5): full-mask `*_sync` warp intrinsics reached by every lane, no implicit
// warp-synchronous code, no inline PTX, shared memory only through RQ_DYNAMIC_SHARED.
#pragma once

#include <math.h>

#include "rq_shared.cuh"

/// Declares `unsigned char* name`, the raw base of the launch's dynamic shared memory, which
/// the kernels carve by hand (RQ_DYNAMIC_SHARED may yield a checked pointer under the
/// emulator; `&x[0]` is a plain pointer in both builds).
#define RQ_SHARED_BASE(name)                  \
  RQ_DYNAMIC_SHARED(unsigned char, name##_dyn); \
  unsigned char* name = &name##_dyn[0]

/// Before a loop with a compile-time trip count over a register array: nvcc unrolls it fully,
/// so the array stays in registers (no stack frame). The emulator's host build, which would
/// warn about an unknown pragma, leaves the loop to its own optimiser.
#ifdef RQ_EMU
#define RQ_UNROLL
#define RQ_NO_UNROLL
#define RQ_UNROLL_BY(n)
#else
#define RQ_UNROLL _Pragma("unroll")
/// A loop kept rolled (its body is already wide; unrolling would only cost registers).
#define RQ_NO_UNROLL _Pragma("unroll 1")
#define RQ_PRAGMA(text) _Pragma(#text)
/// A loop unrolled n times (n iterations' loads issued together, within a register budget).
#define RQ_UNROLL_BY(n) RQ_PRAGMA(unroll n)
#endif

#define RQ_FULL_MASK 0xffffffffu
#define RQ_WARP 32
/// Payload of an empty selector slot.
#define RQ_NO_PAYLOAD 0xffffffffu
/// Rank id of an empty selector slot (ranks after every real id).
#define RQ_MAX_RANK 0x7fffffffffffffffLL
/// Metric codes passed by the host: inner product, negated squared L2.
#define RQ_METRIC_IP 0
#define RQ_METRIC_L2 1
/// Most levels of an index (the host's MAX_LEVELS).
#define RQ_MAX_LEVELS 8

/// Block-wide min of `lo` and max of `hi` through `scratch` (2 floats per warp of shared
/// memory); every thread gets both. Every thread of the block must call it; it starts and
/// ends with a barrier.
__device__ inline void rq_block_min_max(float& lo, float& hi, float* scratch) {
  for (int o = RQ_WARP / 2; o > 0; o >>= 1) {
    lo = fminf(lo, __shfl_xor_sync(RQ_FULL_MASK, lo, o));
    hi = fmaxf(hi, __shfl_xor_sync(RQ_FULL_MASK, hi, o));
  }
  __syncthreads();
  const int warp = (int)threadIdx.x / RQ_WARP;
  if ((int)threadIdx.x % RQ_WARP == 0) {
    scratch[2 * warp] = lo;
    scratch[2 * warp + 1] = hi;
  }
  __syncthreads();
  for (int w = 0; w < (int)blockDim.x / RQ_WARP; ++w) {
    lo = fminf(lo, scratch[2 * w]);
    hi = fmaxf(hi, scratch[2 * w + 1]);
  }
  __syncthreads();
}

/// -inf as a float.
__device__ inline float rq_neg_inf() { return -__builtin_huge_valf(); }

/// The crate's rank order: true when (s1, r1) ranks strictly before (s2, r2), i.e. a higher
/// score, or an equal score and a lower id. Scores are finite or -inf, never NaN.
__device__ inline bool rq_better(float s1, long long r1, float s2, long long r2) {
  return s1 > s2 || (s1 == s2 && r1 < r2);
}

/// `Metric::score`: `ip` for inner product, `-(qn - 2 ip + xn)` for l2 (f32, same order).
__device__ inline float rq_metric_score(int metric, float ip, float qn, float xn) {
  return metric == RQ_METRIC_L2 ? -(qn - 2.0f * ip + xn) : ip;
}

/// `<a, b>` exactly as the reference's `matrix::dot`: eight f32 partial sums over the first
/// `d / 8 * 8` elements, the rest in f64, all combined in f64, rounded to f32.
__device__ inline float rq_dot(const float* a, const float* b, int d) {
  float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f, a4 = 0.f, a5 = 0.f, a6 = 0.f, a7 = 0.f;
  const int d8 = d / 8 * 8;
  for (int e = 0; e < d8; e += 8) {
    a0 += a[e] * b[e];
    a1 += a[e + 1] * b[e + 1];
    a2 += a[e + 2] * b[e + 2];
    a3 += a[e + 3] * b[e + 3];
    a4 += a[e + 4] * b[e + 4];
    a5 += a[e + 5] * b[e + 5];
    a6 += a[e + 6] * b[e + 6];
    a7 += a[e + 7] * b[e + 7];
  }
  double tail = 0.0;
  for (int e = d8; e < d; ++e) tail += (double)a[e] * (double)b[e];
  double s = 0.0;
  s += (double)a0; s += (double)a1; s += (double)a2; s += (double)a3;
  s += (double)a4; s += (double)a5; s += (double)a6; s += (double)a7;
  return (float)(s + tail);
}

/// IEEE binary16 bits → f32 (exact, subnormals and inf included; no NaN reaches a kernel).
__device__ inline float rq_half_to_float(unsigned short h) {
  const unsigned sign = (unsigned)(h & 0x8000u) << 16;
  const unsigned exp = (h >> 10) & 0x1fu;
  const unsigned man = h & 0x3ffu;
  float v;
  if (exp == 0) {
    v = (float)man * (1.0f / 16777216.0f);  // man · 2^-24
  } else if (exp == 31) {
    v = man == 0 ? __builtin_huge_valf() : __builtin_nanf("");
  } else {
    // 2^(exp-15) · (1 + man/1024), exact in f32.
    v = (1.0f + (float)man * (1.0f / 1024.0f));
    int e = (int)exp - 15;
    for (; e > 0; --e) v *= 2.0f;
    for (; e < 0; ++e) v *= 0.5f;
  }
  return sign ? -v : v;
}

/// bfloat16 bits → f32 (exact: a bf16 is the top half of an f32).
__device__ inline float rq_bf16_to_float(unsigned short h) {
  return __uint_as_float((unsigned)h << 16);
}

/// Storage codes of stored floats (embeddings, codebooks on the device), passed by the host.
#define RQ_DTYPE_F32 0
#define RQ_DTYPE_F16 1
#define RQ_DTYPE_BF16 2

/// Widening of 16-bit storage, as a type for the templates below.
struct RqWidenF16 {
  __device__ static float at(unsigned short h) { return rq_half_to_float(h); }
};
struct RqWidenBf16 {
  __device__ static float at(unsigned short h) { return rq_bf16_to_float(h); }
};

/// Element i of a float array stored as `dtype` (RQ_DTYPE_*), widened to f32.
__device__ inline float rq_load_widened(const unsigned char* base, int dtype, long long i) {
  const unsigned short* h = reinterpret_cast<const unsigned short*>(base);
  if (dtype == RQ_DTYPE_F16) return rq_half_to_float(h[i]);
  if (dtype == RQ_DTYPE_BF16) return rq_bf16_to_float(h[i]);
  return reinterpret_cast<const float*>(base)[i];
}

/// `<a, widen(b)>` for a 16-bit row `b` (W: RqWidenF16 or RqWidenBf16): the reference widens
/// the row to f32, then `rq_dot`.
template <class W>
__device__ inline float rq_dot_w(const float* a, const unsigned short* b, int d) {
  float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f, a4 = 0.f, a5 = 0.f, a6 = 0.f, a7 = 0.f;
  const int d8 = d / 8 * 8;
  for (int e = 0; e < d8; e += 8) {
    a0 += a[e] * W::at(b[e]);
    a1 += a[e + 1] * W::at(b[e + 1]);
    a2 += a[e + 2] * W::at(b[e + 2]);
    a3 += a[e + 3] * W::at(b[e + 3]);
    a4 += a[e + 4] * W::at(b[e + 4]);
    a5 += a[e + 5] * W::at(b[e + 5]);
    a6 += a[e + 6] * W::at(b[e + 6]);
    a7 += a[e + 7] * W::at(b[e + 7]);
  }
  double tail = 0.0;
  for (int e = d8; e < d; ++e) tail += (double)a[e] * (double)W::at(b[e]);
  double s = 0.0;
  s += (double)a0; s += (double)a1; s += (double)a2; s += (double)a3;
  s += (double)a4; s += (double)a5; s += (double)a6; s += (double)a7;
  return (float)(s + tail);
}

/// `||a - b||²` accumulated in f64 in element order, rounded to f32 (reference `dist_sq`).
__device__ inline float rq_dist_sq(const float* a, const float* b, int d) {
  double s = 0.0;
  for (int e = 0; e < d; ++e) {
    const double t = (double)a[e] - (double)b[e];
    s += t * t;
  }
  return (float)s;
}

/// `||a - widen(b)||²` for a 16-bit row `b` (W as for rq_dot_w).
template <class W>
__device__ inline float rq_dist_sq_w(const float* a, const unsigned short* b, int d) {
  double s = 0.0;
  for (int e = 0; e < d; ++e) {
    const double t = (double)a[e] - (double)W::at(b[e]);
    s += t * t;
  }
  return (float)s;
}

/// `||a||²` accumulated in f64 in element order, rounded to f32 (reference `norm_sq`).
__device__ inline float rq_norm_sq(const float* a, int d) {
  double s = 0.0;
  for (int e = 0; e < d; ++e) s += (double)a[e] * (double)a[e];
  return (float)s;
}

/// Sum over the warp; every lane gets the result. Every lane of the warp must call it.
__device__ inline float rq_warp_sum(float v) {
  for (int o = RQ_WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(RQ_FULL_MASK, v, o);
  return v;
}

/// Best (score, id) under the rank order over each aligned group of `width` lanes (a power
/// of two ≤ 32; default the whole warp); every lane gets its group's result. Every lane of
/// the warp must call it.
__device__ inline void rq_warp_argmax(float& s, long long& r, int width = RQ_WARP) {
  for (int o = width / 2; o > 0; o >>= 1) {
    const float os = __shfl_xor_sync(RQ_FULL_MASK, s, o);
    const long long orr = __shfl_xor_sync(RQ_FULL_MASK, r, o);
    if (rq_better(os, orr, s, r)) {
      s = os;
      r = orr;
    }
  }
}

/// Block-wide max and sum of doubles through `scratch` (blockDim.x doubles of shared
/// memory); blockDim.x must be a power of two. Every thread of the block must call them;
/// every thread gets the result.
__device__ inline double rq_block_max_f64(double v, double* scratch) {
  scratch[threadIdx.x] = v;
  __syncthreads();
  for (unsigned h = blockDim.x / 2; h > 0; h >>= 1) {
    if (threadIdx.x < h && scratch[threadIdx.x + h] > scratch[threadIdx.x])
      scratch[threadIdx.x] = scratch[threadIdx.x + h];
    __syncthreads();
  }
  const double r = scratch[0];
  __syncthreads();
  return r;
}

__device__ inline double rq_block_sum_f64(double v, double* scratch) {
  scratch[threadIdx.x] = v;
  __syncthreads();
  for (unsigned h = blockDim.x / 2; h > 0; h >>= 1) {
    if (threadIdx.x < h) scratch[threadIdx.x] += scratch[threadIdx.x + h];
    __syncthreads();
  }
  const double r = scratch[0];
  __syncthreads();
  return r;
}

/// Order-preserving key of a score: a larger key is a larger float; -0 and +0 share a key
/// (they tie, and ties go to the lower id).
__device__ inline unsigned rq_radix_key(float v) {
  if (v == 0.0f) v = 0.0f;
  unsigned u;
  __builtin_memcpy(&u, &v, 4);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// ---------------------------------------------------------------------------------------
// Radix select (rq_topk_radix, rq_beam_step).
//
// Every element of a row gets a unique 64-bit entry: its score's radix key (rq_radix_key) in
// the high word, ~column in the low word. A larger entry ranks first (higher score, then the
// lower column; -0 ties +0), and no two columns share one, so selecting by entry never has
// to cut ties. No real entry is 0 (the radix key of -inf is 0x007fffff): 0 marks an empty
// slot.
// ---------------------------------------------------------------------------------------

/// One radix-select step: given the 256 digit counters `hist` (digit 255 ranks first) and
/// 1 ≤ need ≤ their sum, finds the digit d holding the need-th best: ctrl[0] = d,
/// ctrl[1] = need minus the count above d, ctrl[3] = hist[d]. Warp 0 computes it in
/// parallel (lane l sums digits 255 - 8l - u, u < 8, then a warp scan of the lane sums).
/// Every thread of the block must call it, after a barrier that follows the last update of
/// `hist`; it ends with a barrier.
__device__ inline void rq_radix_digit(const int* hist, int need, int* ctrl) {
  if (threadIdx.x < RQ_WARP) {
    const int lane = (int)threadIdx.x;
    int c[8];
    int tot = 0;
RQ_UNROLL
    for (int u = 0; u < 8; ++u) {
      c[u] = hist[255 - 8 * lane - u];
      tot += c[u];
    }
    int incl = tot;  // inclusive scan of the lane sums, lane 0 (digits 255..248) first
    for (int o = 1; o < RQ_WARP; o <<= 1) {
      const int y = __shfl_sync(RQ_FULL_MASK, incl, (lane - o) & (RQ_WARP - 1));
      if (lane >= o) incl += y;
    }
    int before = incl - tot;  // elements in better digits than this lane's first
RQ_UNROLL
    for (int u = 0; u < 8; ++u) {
      if (before < need && before + c[u] >= need) {  // exactly one (lane, u)
        ctrl[0] = 255 - 8 * lane - u;
        ctrl[1] = need - before;
        ctrl[3] = c[u];
      }
      before += c[u];
    }
  }
  __syncthreads();
}

/// One radix pass over keys of type K (unsigned or unsigned long long): `count(f)`, called by
/// every thread, calls f(key) for its share of the keys (the same keys on every pass); the
/// 8-bit digit at `shift` of the keys under (prefix, mask) is counted in `hist`, and the
/// digit holding the need-th largest joins prefix/mask (rq_radix_digit). Updates `need` to
/// the count still wanted under the longer prefix and returns how many keys are under it.
/// Every thread of the block must call it; it starts after and ends with a barrier.
template <class K, class Count>
__device__ inline int rq_radix_pass(Count count, int shift, K& prefix, K& mask, int& need,
                                    int* hist, int* ctrl) {
  for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
  __syncthreads();
  count([&](K key) {
    if ((key & mask) == prefix) atomicAdd(&hist[(int)((key >> shift) & 0xffu)], 1);
  });
  __syncthreads();
  rq_radix_digit(hist, need, ctrl);
  prefix |= (K)(unsigned)ctrl[0] << shift;
  mask |= (K)0xffu << shift;
  need = ctrl[1];
  const int under = ctrl[3];
  __syncthreads();
  return under;
}

// ---------------------------------------------------------------------------------------
// Block-wide top-k selector (k ≤ 2048).
//
// Shared layout (carved by rq_select_carve from `cap` entries; the host sizes it with
// `rq_select_bytes`): rank ids r[cap] (i64), scores s[cap], payloads p[cap], one counter,
// the merge's 256 histogram counters and 16 control words.
// Slots [0, k) hold the best entries seen so far (after a merge: unsorted, the k-th best in
// slot k - 1); slots [k, k + count) are a buffer of candidates that beat the current k-th
// entry. `cap` is a power of two with cap ≥ k + blockDim.x, so a round never overflows the
// buffer. When the buffer might overflow on the next round, a radix selection merges it
// into [0, k) (rq_select_merge); rq_select_finish sorts [0, k) best first.
// Entries order by (score desc, rank asc); the payload rides along (an item position, a
// parent slot, …). Empty slots are (-inf, RQ_MAX_RANK, RQ_NO_PAYLOAD).
// Every function below must be called by every thread of the block (they synchronise).
// ---------------------------------------------------------------------------------------

struct RqSelect {
  long long* r;
  float* s;
  unsigned* p;
  int* count;
  int* hist;  // 256 counters of the merge's radix passes
  int* ctrl;  // 16 control words of the merge
  int k;
  int cap;
};

/// Bytes of shared memory a selector of `cap` entries takes (mirrors the host's formula):
/// the entries, the counter (16 bytes) and the merge's histogram and control words.
__device__ inline unsigned rq_select_bytes(int cap) { return 16u * (unsigned)cap + 16u + 1088u; }

/// Lays a selector over `base` (16-byte aligned, rq_select_bytes(cap) bytes).
__device__ inline RqSelect rq_select_carve(unsigned char* base, int k, int cap) {
  RqSelect q;
  q.r = reinterpret_cast<long long*>(base);
  q.s = reinterpret_cast<float*>(base + 8u * (unsigned)cap);
  q.p = reinterpret_cast<unsigned*>(base + 12u * (unsigned)cap);
  q.count = reinterpret_cast<int*>(base + 16u * (unsigned)cap);
  q.hist = reinterpret_cast<int*>(base + 16u * (unsigned)cap + 16u);
  q.ctrl = q.hist + 256;
  q.k = k;
  q.cap = cap;
  return q;
}

/// Empties the selector.
__device__ inline void rq_select_init(const RqSelect& q) {
  for (int i = threadIdx.x; i < q.cap; i += blockDim.x) {
    q.r[i] = RQ_MAX_RANK;
    q.s[i] = rq_neg_inf();
    q.p[i] = RQ_NO_PAYLOAD;
  }
  if (threadIdx.x == 0) *q.count = 0;
  __syncthreads();
}

/// Exchanges slots a and b (rank, score, payload).
__device__ inline void rq_select_swap(const RqSelect& q, unsigned a, unsigned b) {
  const long long tr = q.r[a];
  const float ts = q.s[a];
  const unsigned tp = q.p[a];
  q.r[a] = q.r[b];
  q.s[a] = q.s[b];
  q.p[a] = q.p[b];
  q.r[b] = tr;
  q.s[b] = ts;
  q.p[b] = tp;
}

/// Bitonic sort of slots [0, n) best first; n is a power of two ≤ cap.
__device__ inline void rq_select_sort(const RqSelect& q, unsigned n) {
  for (unsigned size = 2; size <= n; size <<= 1) {
    for (unsigned stride = size >> 1; stride > 0; stride >>= 1) {
      for (unsigned i = threadIdx.x; i < n / 2; i += blockDim.x) {
        const unsigned lo = 2 * i - (i & (stride - 1));
        const unsigned hi = lo + stride;
        const bool best_first = (lo & size) == 0;
        const bool hi_better = rq_better(q.s[hi], q.r[hi], q.s[lo], q.r[lo]);
        const bool lo_better = rq_better(q.s[lo], q.r[lo], q.s[hi], q.r[hi]);
        if (best_first ? hi_better : lo_better) rq_select_swap(q, lo, hi);
      }
      __syncthreads();
    }
  }
}

/// Order-preserving key of a rank for the merge's radix passes: a larger key is a lower
/// rank (ranks before).
__device__ inline unsigned long long rq_rank_key(long long r) {
  return ~((unsigned long long)r ^ 0x8000000000000000ull);
}

/// Keeps the best k of the k + c entries in slots [0, k + c) in [0, k) and empties the
/// buffer. [0, k) is left unsorted except that slot k - 1 holds the k-th best (what offers
/// compare with); rq_select_finish sorts. Radix selection in shared memory, O(k + c) per
/// pass: 8-bit digits of the scores' radix keys from the top (rq_radix_digit) narrow down
/// the k-th best score until every entry under the prefix wins (usually one or two passes);
/// only when the k-th score is tied beyond the slots left do the ranks of the tied entries
/// go through the same passes (lowest rank first). An in-place compaction moves the winners
/// to [0, k) (slots handed out up to a chunk lie below the chunk's end, so no entry is
/// overwritten before it is read), and a block reduction puts the worst winner in slot
/// k - 1. Of the entries tied in both score and rank at the boundary (empty slots, a
/// caller's duplicate ids) the first admitted are kept.
__device__ inline void rq_select_merge(const RqSelect& q, int c) {
  if (c == 0) return;
  const int n = q.k + c;
  const int T = (int)blockDim.x, tid = (int)threadIdx.x;
  int* hist = q.hist;
  int* ctrl = q.ctrl;
  unsigned prefix = 0, mask = 0;
  int need = q.k;
  bool cut = true;  // whether the entries scoring exactly `prefix` are cut by rank
  const auto scores = [&](auto f) {
    for (int i = tid; i < n; i += T) f(rq_radix_key(q.s[i]));
  };
  for (int shift = 24; shift >= 0; shift -= 8) {
    if (rq_radix_pass(scores, shift, prefix, mask, need, hist, ctrl) == need) {
      cut = false;  // the same on every thread
      break;
    }
  }
  unsigned long long rprefix = 0, rmask = 0;
  if (cut) {
    // The ranks of the entries scoring exactly `prefix`.
    const auto ranks = [&](auto f) {
      for (int i = tid; i < n; i += T)
        if (rq_radix_key(q.s[i]) == prefix) f(rq_rank_key(q.r[i]));
    };
    for (int shift = 56; shift >= 0; shift -= 8)
      if (rq_radix_pass(ranks, shift, rprefix, rmask, need, hist, ctrl) == need) break;
  }
  // 1: ranks strictly before the boundary (a winner), 0: on it (`need` of those win), -1: after.
  const auto side = [&](float s, long long r) {
    const unsigned key = rq_radix_key(s) & mask;
    if (key != prefix) return key > prefix ? 1 : -1;
    if (!cut) return 0;
    const unsigned long long e = rq_rank_key(r) & rmask;
    return e == rprefix ? 0 : (e > rprefix ? 1 : -1);
  };
  if (tid == 0) {
    ctrl[6] = 0;
    ctrl[7] = 0;
  }
  __syncthreads();
  for (int i0 = 0; i0 < n; i0 += T) {
    const int i = i0 + tid;
    long long r = RQ_MAX_RANK;
    float s = rq_neg_inf();
    unsigned p = RQ_NO_PAYLOAD;
    if (i < n) {
      r = q.r[i];
      s = q.s[i];
      p = q.p[i];
    }
    const int at_side = i < n ? side(s, r) : -1;
    // Exactly `need` boundary entries are admitted (all of them unless score and rank are
    // both tied), so exactly k entries are kept and take the slots [0, k).
    const bool keep = at_side > 0 || (at_side == 0 && atomicAdd(&ctrl[7], 1) < need);
    __syncthreads();
    if (keep) {
      const int at = atomicAdd(&ctrl[6], 1);
      q.r[at] = r;
      q.s[at] = s;
      q.p[at] = p;
    }
  }
  __syncthreads();
  // The worst winner to slot k - 1: per thread, per warp, then thread 0 over the warps.
  float ws = __builtin_huge_valf();
  long long wr = RQ_MAX_RANK;
  int wi = -1;
  for (int i = tid; i < q.k; i += T) {
    if (wi < 0 || rq_better(ws, wr, q.s[i], q.r[i])) {
      ws = q.s[i];
      wr = q.r[i];
      wi = i;
    }
  }
  for (int o = RQ_WARP / 2; o > 0; o >>= 1) {
    const float os = __shfl_xor_sync(RQ_FULL_MASK, ws, o);
    const long long orr = __shfl_xor_sync(RQ_FULL_MASK, wr, o);
    const int oi = __shfl_xor_sync(RQ_FULL_MASK, wi, o);
    if (oi >= 0 && (wi < 0 || rq_better(ws, wr, os, orr))) {
      ws = os;
      wr = orr;
      wi = oi;
    }
  }
  // Per-warp worst slots in hist (no longer needed); thread 0 picks and swaps.
  if (tid % RQ_WARP == 0) hist[tid / RQ_WARP] = wi;
  __syncthreads();
  if (tid == 0) {
    int w = -1;
    for (int j = 0; j < T / RQ_WARP; ++j) {
      const int i = hist[j];
      if (i >= 0 && (w < 0 || rq_better(q.s[w], q.r[w], q.s[i], q.r[i]))) w = i;
    }
    const int last = q.k - 1;
    if (w >= 0 && w != last) rq_select_swap(q, w, last);
    *q.count = 0;
  }
  __syncthreads();
}

/// rq_select_offer with the current k-th score `ts` = q.s[q.k - 1] held by the caller (in a
/// register: it changes only in merges, i.e. in rq_select_round_end / rq_select_finish).
template <class Rank>
__device__ inline void rq_select_offer_at(const RqSelect& q, float ts, float s, Rank rank,
                                          unsigned p) {
  if (s < ts) return;
  const long long r = rank();
  if (s > ts || r < q.r[q.k - 1]) {
    const int pos = atomicAdd(q.count, 1);
    q.r[q.k + pos] = r;
    q.s[q.k + pos] = s;
    q.p[q.k + pos] = p;
  }
}

/// Offers one candidate without synchronising: it joins the buffer when it ranks before the
/// current k-th entry. `rank()` (the candidate's rank id) is evaluated only when the score
/// alone cannot decide, i.e. when the score is not below the k-th score, so a rank that
/// costs a memory read (a caller's item id) is read for few candidates. Between two
/// rq_select_round_end calls the block may offer at most the `round` passed to them.
template <class Rank>
__device__ inline void rq_select_offer(const RqSelect& q, float s, Rank rank, unsigned p) {
  rq_select_offer_at(q, q.s[q.k - 1], s, rank, p);
}

/// Ends a round of offers: merges the buffer when the next round, which offers at most
/// `round` candidates, could overflow it (cap ≥ k + round).
__device__ inline void rq_select_round_end(const RqSelect& q, int round) {
  __syncthreads();
  const int c = *q.count;
  __syncthreads();
  if (c > q.cap - q.k - round) rq_select_merge(q, c);
}

/// One round: every thread offers at most one candidate (`valid`).
__device__ inline void rq_select_push(const RqSelect& q, bool valid, float s, long long r,
                                      unsigned p) {
  if (valid) rq_select_offer(q, s, [&] { return r; }, p);
  rq_select_round_end(q, (int)blockDim.x);
}

/// Final merge: afterwards slots [0, k) hold the best k entries, best first (a bitonic sort
/// of the next power of two ≥ k slots, those past k emptied first).
__device__ inline void rq_select_finish(const RqSelect& q) {
  __syncthreads();
  const int c = *q.count;
  __syncthreads();
  rq_select_merge(q, c);
  unsigned n = 1;
  while (n < (unsigned)q.k) n <<= 1;
  for (unsigned i = (unsigned)q.k + threadIdx.x; i < n; i += blockDim.x) {
    q.r[i] = RQ_MAX_RANK;
    q.s[i] = rq_neg_inf();
    q.p[i] = RQ_NO_PAYLOAD;
  }
  __syncthreads();
  rq_select_sort(q, n);
}

/// Block-wide inclusive prefix sum of v[0..n) in place (n ≤ blockDim.x, shared memory).
__device__ inline void rq_block_inclusive_scan(unsigned* v, int n) {
  for (int off = 1; off < n; off <<= 1) {
    unsigned add = 0;
    const int t = (int)threadIdx.x;
    if (t < n && t >= off) add = v[t - off];
    __syncthreads();
    if (t < n) v[t] += add;
    __syncthreads();
  }
}

/// Visits the concatenation of `m` ranges in rounds of blockDim.x · `per_thread` elements
/// (1 ≤ per_thread ≤ RUN), so that tiny and empty ranges cost nothing: in a round, a warp
/// visits 32·per_thread consecutive elements, one binary search per thread, then a forward
/// walk. When the ranges of a batch average 32·per_thread elements or more, lane l takes the
/// warp's elements l + 32·u (each load instruction of a warp reads 32 consecutive elements);
/// otherwise per_thread consecutive ones (a lane's walk then crosses few ranges).
/// `range(j, begin, len)` gives range j (called by one thread); `load(x)` issues the global
/// reads element x needs and returns them (a small struct); `score(x, loaded)` computes what
/// element x = begin_j + offset of a range needs from them (a value; it must not write
/// memory, and must be safe on x = 0 with `Loaded{}`, which it gets for the unused slots of a
/// round's last elements), and `visit(x, scored)` acts on it (it must not synchronise): a
/// thread scores its elements of a round before visiting the first, so their reads (e.g.
/// table lookups) are in flight together and none waits behind another element's writes;
/// `round_end()` is called by every thread once per round, the same number of times (it may
/// synchronise, e.g. rq_select_round_end).
/// Scratch: `pre` (blockDim.x + 1 unsigned) and `base` (blockDim.x unsigned) in shared
/// memory. The concatenation holds fewer than 2^31 elements.
///
/// Software pipelining: before visiting its elements of a round, a thread locates all its
/// elements of the next round (same batch of ranges) and issues their loads, so up to
/// 2 · RUN elements' reads are in flight during this round's visits and barriers.
template <int RUN, class Range, class Load, class Score, class Visit, class RoundEnd>
__device__ inline void rq_for_ranges(int m, int per_thread, unsigned* pre, unsigned* base,
                                     Range range, Load load, Score score, Visit visit,
                                     RoundEnd round_end) {
  using Loaded = decltype(load(0u));
  using Scored = decltype(score(0u, Loaded{}));
  const int T = (int)blockDim.x;
  const int t = (int)threadIdx.x;
  const unsigned span = (unsigned)T * (unsigned)per_thread;
  for (int j0 = 0; j0 < m; j0 += T) {
    const int nb = m - j0 < T ? m - j0 : T;
    if (t < nb) {
      unsigned b = 0, len = 0;
      range(j0 + t, b, len);
      base[t] = b;
      pre[t + 1] = len;
    }
    if (t == 0) pre[0] = 0;
    __syncthreads();
    rq_block_inclusive_scan(pre + 1, nb);
    const unsigned total = pre[nb];
    // Long ranges (at least 32·per_thread elements on average): lane l of warp w takes the
    // elements 32·per_thread·w + l + 32·u of a round, so each load instruction reads 32
    // consecutive elements. Short ones: it takes per_thread consecutive elements (32 apart,
    // a lane's forward walk would step over up to 32 ranges per element). Uniform over the
    // block (total and nb are shared).
    const unsigned step = total >= RQ_WARP * (unsigned)per_thread * (unsigned)nb ? RQ_WARP : 1u;
    // The elements first + step·u, u < per_thread (below total), of this thread's round:
    // their positions and loads. The range holding element f is the largest j with
    // pre[j] <= f (pre[j + 1] > f, so range j is not empty).
    const auto fetch = [&](unsigned first, unsigned (&xs)[RUN], Loaded (&v)[RUN]) {
      if (first >= total) return;
      int lo = 0, hi = nb - 1;
      while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (pre[mid] <= first) lo = mid; else hi = mid - 1;
      }
      // The current range's end and offset (element f is at f + off) in registers: a
      // lane's elements of a round mostly lie in one range.
      int j = lo;
      unsigned end = pre[j + 1], off = base[j] - pre[j];
RQ_UNROLL
      for (int u = 0; u < RUN; ++u) {
        const unsigned f = first + step * (unsigned)u;
        if (u < per_thread && f < total) {
          while (end <= f) {  // skips the ranges (empty ones too) before f
            ++j;
            end = pre[j + 1];
            off = base[j] - pre[j];
          }
          xs[u] = f + off;
          v[u] = load(xs[u]);
        }
      }
    };
    const unsigned lane = (unsigned)t % RQ_WARP;
    unsigned first = ((unsigned)t - lane) * (unsigned)per_thread +
                     (step == 1 ? lane * (unsigned)per_thread : lane);
    unsigned xs[RUN] = {};
    Loaded v[RUN] = {};
    fetch(first, xs, v);
    for (unsigned f0 = 0; f0 < total; f0 += span) {
      const unsigned next = first + span;
      unsigned nxs[RUN] = {};
      Loaded nv[RUN] = {};
      fetch(next, nxs, nv);
      // With RUN elements per thread, no branch per element: the reads of two elements at a
      // time issue together (a slot past `total` scores its zero-initialised loads; unused).
      // The __syncwarp between the pairs fences the compiler's scheduling: all RUN at once
      // would need more registers than rq_fused_topk_l4's three blocks per SM allow.
      Scored sc[RUN] = {};
      if (per_thread == RUN) {
RQ_UNROLL
        for (int h = 0; h < RUN; h += 2) {
RQ_UNROLL
          for (int u = h; u < h + 2 && u < RUN; ++u) sc[u] = score(xs[u], v[u]);
          __syncwarp();
        }
      } else {
RQ_UNROLL
        for (int u = 0; u < RUN; ++u)
          if (u < per_thread) sc[u] = score(xs[u], v[u]);
      }
RQ_UNROLL
      for (int u = 0; u < RUN; ++u)
        if (u < per_thread && first + step * (unsigned)u < total) visit(xs[u], sc[u]);
      round_end();
      first = next;
RQ_UNROLL
      for (int u = 0; u < RUN; ++u) {
        xs[u] = nxs[u];
        v[u] = nv[u];
      }
    }
    __syncthreads();
  }
}
