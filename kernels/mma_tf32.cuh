// One warp-wide TF32 tensor-core tile product, D += A·B, m16n8k8 (`mma.sync`, sm_80+), with
// the PTX ISA's documented fragment layouts, so a kernel can load its fragments straight
// from memory it lays out itself. Lane l = 4g + t (g = l / 4, t = l % 4) holds:
//   a[r]: A (16 × 8, row-major) element (g + 8·(r % 2), t + 4·(r / 2)), r < 4;
//   b[r]: B (8 × 8, K × N)      element (t + 4·r, g),                   r < 2;
//   d[r]: D (16 × 8)            element (g + 8·(r / 2), 2t + r % 2),     r < 4.
// A and B are the bit patterns of TF32 values (f32 with the low 13 mantissa bits clear:
// rq_tf32_bits). The products of TF32 values are exact; their accumulation order and
// rounding are the hardware's (kernels only use these sums through error bounds), which the
// emulator models at its pessimistic end (rq_emu_mma_sum).
#pragma once

#include "common.cuh"

/// The bits of v truncated to TF32 (10 explicit mantissa bits; |v - tf32(v)| < 2^-10·|v|
/// for normal v, < 2^-136 for subnormal v).
__device__ inline unsigned rq_tf32_bits(float v) { return __float_as_uint(v) & 0xffffe000u; }

#ifdef RQ_EMU
/// One output of the emulated tile product: c plus eight exact TF32 products, summed as a
/// tensor core without extra bits would (the pessimistic end of what the PTX ISA leaves
/// unspecified; Fasi et al. 2021 measured products exact, addends aligned to the largest by
/// truncation and the result normalised toward zero): every addend truncated toward zero to
/// the largest addend's f32 grid, the truncated addends summed exactly, the sum truncated
/// toward zero to f32 (an overflow stays ±inf). Infinite or NaN addends sum as IEEE floats.
inline float rq_emu_mma_sum(float c, const double (&p)[8]) {
  double t[9] = {c, p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]};
  double big = 0.0;
  bool finite = true;
  for (double v : t) {
    finite = finite && std::isfinite(v);
    big = std::fmax(big, std::fabs(v));
  }
  if (!finite || big == 0.0) {
    float s = c;
    for (double v : p) s += (float)v;
    return s;
  }
  int e;
  std::frexp(big, &e);                           // big = m·2^e, 0.5 ≤ m < 1
  const double grid = std::ldexp(1.0, e - 24);  // the f32 ulp of big's binade
  double s = 0.0;                                // exact: 9 multiples of grid below 2^(e+4)
  for (double v : t) s += std::trunc(v / grid) * grid;
  float f = (float)s;
  if (std::isfinite(f) && std::fabs((double)f) > std::fabs(s)) f = std::nextafter(f, 0.0f);
  return f;
}

/// The emulator's tile product: the lanes publish their fragments in a per-warp scratch
/// (block-private: the fibers of a block share their worker thread), each computes its own
/// four outputs (rq_emu_mma_sum), and the warp meets again before the scratch is reused.
/// Every lane of the warp must call it. The warp meets at `__activemask`, which orders no
/// memory (unlike `__syncwarp`), and the scratch is the emulator's, not the kernel's
/// (rq_emu::internal_scope): under ThreadSanitizer a tile product gives a kernel no more
/// ordering than `mma.sync` does on a GPU, which is none.
__device__ inline void rq_mma_tf32(float (&d)[4], const unsigned (&a)[4],
                                   const unsigned (&b)[2]) {
  struct Frags {
    unsigned a[RQ_WARP][4];
    unsigned b[RQ_WARP][2];
  };
  static thread_local Frags scratch[1024 / RQ_WARP];
  const int lane = (int)threadIdx.x % RQ_WARP;
  Frags& f = scratch[threadIdx.x / RQ_WARP];
  {
    [[maybe_unused]] rq_emu::internal_scope quiet;
    for (int r = 0; r < 4; ++r) f.a[lane][r] = a[r];
    for (int r = 0; r < 2; ++r) f.b[lane][r] = b[r];
  }
  (void)__activemask();
  {
    [[maybe_unused]] rq_emu::internal_scope quiet;
    const int g = lane / 4, t = lane % 4;
    const auto tf32 = [](unsigned bits) { return (double)__uint_as_float(bits & 0xffffe000u); };
    for (int r = 0; r < 4; ++r) {
      const int row = g + 8 * (r / 2), col = 2 * t + r % 2;
      double p[8];
      for (int k = 0; k < 8; ++k)
        p[k] = tf32(f.a[4 * (row % 8) + k % 4][row / 8 + 2 * (k / 4)]) *
               tf32(f.b[4 * col + k % 4][k / 4]);
      d[r] = rq_emu_mma_sum(d[r], p);
    }
  }
  (void)__activemask();
}
#else
/// D += A·B on the tensor cores (one `mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32`).
/// Every lane of the warp must call it.
__device__ inline void rq_mma_tf32(float (&d)[4], const unsigned (&a)[4],
                                   const unsigned (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

/// A warp's 32 × 32 tile of two m16 A fragments by four n8 B fragments:
/// acc[i][j] += A_i·B_j, the eight products independent (consecutive tensor-core
/// instructions do not wait on each other). Every lane of the warp must call it.
__device__ inline void rq_mma_tf32_32x32(float (&acc)[2][4][4], const unsigned (&fa)[2][4],
                                         const unsigned (&fb)[4][2]) {
RQ_UNROLL
  for (int j = 0; j < 4; ++j)
RQ_UNROLL
    for (int i = 0; i < 2; ++i) rq_mma_tf32(acc[i][j], fa[i], fb[j]);
}

/// Zeroes a warp's 32 × 32 accumulator tile (rq_mma_tf32_32x32).
__device__ inline void rq_mma_clear_32x32(float (&acc)[2][4][4]) {
RQ_UNROLL
  for (int i = 0; i < 2; ++i)
RQ_UNROLL
    for (int j = 0; j < 4; ++j)
RQ_UNROLL
      for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;
}
