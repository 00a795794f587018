// Radix selection over unique 64-bit entries, shared by rq_topk_radix (topk.cu) and
// rq_beam_step (traverse.cu): an entry is (a score's radix key, ~id), so a larger entry ranks
// first and no two tie; the bitonic sort of entries, a selection inside a shared buffer and
// a block-wide exact top-k of entries produced by a caller's sweep. The key itself, the
// digit search and one histogram pass (rq_radix_key, rq_radix_digit, rq_radix_pass) are in
// common.cuh, where the block selector's merge uses them too.
#pragma once
#include "common.cuh"

/// Bytes of the 256 histogram counters and 16 control words that head the shared memory of
/// the radix kernels (rq_topk_radix's block-scan flags follow them).
#define RQ_RADIX_HEAD 1088

/// Entry of (radix key, column): see the file's head.
__device__ inline unsigned long long rq_radix_entry(unsigned key, int col) {
  return ((unsigned long long)key << 32) | (unsigned long long)(unsigned)~col;
}

/// The score whose radix key is `key` (exact bits, except that -0 comes back as +0).
__device__ inline float rq_radix_score(unsigned key) {
  const unsigned u = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}

/// Bitonic sort of the entries a[0, n) in shared memory, largest first; n a power of two.
/// Every thread of the block must call it.
__device__ inline void rq_radix_sort(unsigned long long* a, unsigned n) {
  for (unsigned size = 2; size <= n; size <<= 1) {
    for (unsigned stride = size >> 1; stride > 0; stride >>= 1) {
      for (unsigned i = threadIdx.x; i < n / 2; i += blockDim.x) {
        const unsigned lo = 2 * i - (i & (stride - 1));
        const unsigned hi = lo + stride;
        const unsigned long long a_lo = a[lo], a_hi = a[hi];
        const bool best_first = (lo & size) == 0;
        if (best_first ? a_hi > a_lo : a_lo > a_hi) {
          a[lo] = a_hi;
          a[hi] = a_lo;
        }
      }
      __syncthreads();
    }
  }
}

/// Zeros a[kk, P), P the next power of two ≥ kk, and sorts a[0, P) largest first: the
/// winners of a selection, in order. Every thread of the block must call it.
__device__ inline void rq_radix_sort_winners(unsigned long long* a, int kk) {
  unsigned sorted = 1;
  while (sorted < (unsigned)kk) sorted <<= 1;
  for (unsigned i = (unsigned)kk + threadIdx.x; i < sorted; i += blockDim.x) a[i] = 0ull;
  __syncthreads();
  rq_radix_sort(a, sorted);
}

/// Shared-memory part of a radix select: the m entries b[0, m) (all with (e & mask) ==
/// prefix, mask covering the bits above `shift + 8`) hold `need` ≥ 1 winners. 8-bit radix
/// passes over b (digit at `shift`, `shift` - 8, …, the last clamped to bits 0..7) narrow
/// prefix/mask until every entry
/// left under the prefix is a winner (entries are unique, so at the latest when the mask is
/// complete); the winners are then those with (e & mask) ≥ prefix, moved to b[0, need) by
/// an in-place compaction (see below). Every thread of the block must call it; `hist` and
/// `ctrl` as in rq_radix_block_select.
__device__ inline void rq_radix_select_smem(unsigned long long* b, int m, int need,
                                            unsigned long long prefix,
                                            unsigned long long mask, int shift, int* hist,
                                            int* ctrl) {
  const auto entries = [&](auto f) {
    for (int i = threadIdx.x; i < m; i += blockDim.x) f(b[i]);
  };
  for (; shift > -8; shift -= 8) {
    // A digit below bit 0 is clamped to bits 0..7 (its upper bits are already in the mask).
    const int sh = shift < 0 ? 0 : shift;
    if (rq_radix_pass(entries, sh, prefix, mask, need, hist, ctrl) == need) break;
  }
  // Compaction in chunks of blockDim.x: a chunk is read into registers, a barrier, then its
  // winners take slots by a shared atomic. Slots handed out up to chunk c lie below the end
  // of chunk c (at most one per entry read so far), so no entry is overwritten before it
  // has been read.
  if (threadIdx.x == 0) ctrl[6] = 0;
  __syncthreads();
  for (int i0 = 0; i0 < m; i0 += blockDim.x) {
    const int i = i0 + (int)threadIdx.x;
    const unsigned long long e = i < m ? b[i] : 0ull;
    const bool keep = i < m && (e & mask) >= prefix;
    __syncthreads();
    if (keep) b[atomicAdd(&ctrl[6], 1)] = e;
  }
  __syncthreads();
}


/// Block-wide exact top-k of `n` entries that a caller generates: `sweep(f)`, called by
/// every thread of the block, calls `f(e)` once per entry (spread over the threads in any
/// way, the same entries every time; `f` does not synchronise, `sweep` may not either).
/// Entries are unique and non-zero, a larger one ranks first (rq_radix_entry of a score and
/// an id). Histogram sweeps over 8-bit digits from the top narrow the prefix of the k-th
/// largest until the entries under it are all winners or, with the certain winners above
/// it, fit the `slots` entries of `a`; one more sweep places them (the certain winners by a
/// shared atomic, the undecided ones after them, finished by rq_radix_select_smem). With
/// distinct-ish scores that is two or three sweeps; never more than nine, as entries are
/// unique. A caller that knows the entries share the bits of `mask` (= `prefix` there) may
/// start the passes at digit `shift` (bits shift .. shift + 7, below the mask) instead of
/// the top byte, so that the first histogram spreads over the entries' actual range.
/// Result: a[0, min(k, n)) the winners, largest first, then zeros up to the next power of
/// two ≥ min(k, n); returns min(k, n). Requires slots ≥ that power of two;
/// `hist` (256 ints) and `ctrl` (16 ints) are scratch in shared memory (RQ_RADIX_HEAD
/// bytes). Every thread of the block must call it; it ends with a barrier.
template <class Sweep>
__device__ inline int rq_radix_block_select(Sweep sweep, long long n, int k, int slots,
                                            unsigned long long* a, int* hist, int* ctrl,
                                            unsigned long long prefix = 0,
                                            unsigned long long mask = 0, int shift = 56) {
  const int kk = n < (long long)k ? (int)n : k;
  int need = kk, m = 0;
  bool all = true;
  for (; kk > 0; shift -= 8) {
    // A digit below bit 0 is clamped to bits 0..7 (its upper bits are already in the mask).
    if (shift < 0) shift = 0;
    m = rq_radix_pass(sweep, shift, prefix, mask, need, hist, ctrl);
    // The same on every thread. With the mask complete (shift 0) m == 1 == need.
    if (m == need || shift == 0) break;
    if (kk - need + m <= slots) {
      all = false;
      break;
    }
  }
  const int greater = kk - need;
  if (threadIdx.x == 0) {
    ctrl[4] = 0;
    ctrl[5] = greater;
  }
  __syncthreads();
  if (kk > 0) {
    sweep([&](unsigned long long e) {
      const unsigned long long em = e & mask;
      if (em > prefix || (all && em == prefix)) {
        const int at = atomicAdd(&ctrl[4], 1);
        if (at < slots) a[at] = e;
      } else if (em == prefix) {
        a[atomicAdd(&ctrl[5], 1)] = e;
      }
    });
    __syncthreads();
    if (!all) rq_radix_select_smem(a + greater, m, need, prefix, mask, shift - 8, hist, ctrl);
  }
  rq_radix_sort_winners(a, kk);
  return kk;
}

/// A selection like rq_radix_block_select by a single sweep against a sampled threshold.
/// `sample(f)` calls f(e) once per entry of a fixed subset of `ns` of the sweep's entries,
/// meant as a uniform 1-in-s sample. Its r-th largest entry τ (rq_radix_block_select over
/// the sample) has about r·s entries of the sweep at or above it; one sweep gathers them
/// into `a`. When their number m lies in [k, slots], the k largest of them are the k largest
/// of all (every entry left out is below τ, every gathered one at or above it), and a
/// shared-memory selection over a[0, m) finishes, starting below the key bits every
/// gathered entry shares with τ: a sample sweep plus one sweep, instead of rq_radix_block_
/// select's two or three. Otherwise (a sample unlike the whole: τ too high or too low; or
/// ns < r, r < 1, n ≤ k) it returns -1 and the caller runs rq_radix_block_select, so the
/// result never depends on the sample, only the time does. (rq_beam_step runs that in a
/// second launch: inlined next to this one, its sweep makes the kernel spill registers.)
/// Result (unless -1), requirements and the other arguments as rq_radix_block_select;
/// prefix/mask/shift hold for the sample, a subset of the entries.
template <class Sweep, class Sample>
__device__ inline int rq_radix_block_select_sampled(Sweep sweep, Sample sample, long long ns,
                                                    int r, long long n, int k, int slots,
                                                    unsigned long long* a, int* hist,
                                                    int* ctrl, unsigned long long prefix,
                                                    unsigned long long mask, int shift) {
  if (r >= 1 && ns >= r && n > k) {
    const int got = rq_radix_block_select(sample, ns, r, slots, a, hist, ctrl, prefix, mask, shift);
    const unsigned long long tau = a[got - 1];
    const unsigned tkey = (unsigned)(tau >> 32);
    __syncthreads();
    if (threadIdx.x == 0) {
      ctrl[4] = 0;
      ctrl[7] = 0;
    }
    __syncthreads();
    sweep([&](unsigned long long e) {
      if (e >= tau) {
        const int at = atomicAdd(&ctrl[4], 1);
        if (at < slots) a[at] = e;
        atomicOr(&ctrl[7], (int)((unsigned)(e >> 32) ^ tkey));
      }
    });
    __syncthreads();
    const int m = ctrl[4];
    const unsigned diff = (unsigned)ctrl[7];
    __syncthreads();
    if (m >= k && m <= slots) {
      // Key bits above the highest one any gathered key differs from τ's in are shared.
      const int top = diff == 0 ? -1 : 31 - __clz((int)diff);
      const unsigned m32 = top < 0 ? ~0u : (top == 31 ? 0u : ~((2u << top) - 1u));
      rq_radix_select_smem(a, m, k, (unsigned long long)(tkey & m32) << 32,
                           (unsigned long long)m32 << 32,
                           top < 0 ? 24 : 32 + (top < 7 ? 0 : top - 7), hist, ctrl);
      rq_radix_sort_winners(a, k);
      return k;
    }
  }
  return -1;
}
