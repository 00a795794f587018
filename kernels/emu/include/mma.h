// emu shim: the warp matrix (WMMA) API of CUDA's mma.h, for the TF32 shapes the kernels use
// (m16n16k8, row-major A, row- or column-major B, f32 accumulators).
//
// A fragment is opaque in CUDA: a program may only load, store, fill, multiply-accumulate it
// and apply the same element-wise operation to all of `x[0..num_elements)`. The emulator
// therefore gives every lane a full copy of the tile (x[i] is element i of the row-major
// tile, whatever the layout it was loaded from), which needs no communication between lanes and behaves as CUDA's distributed
// fragments do for every such program. `mma_sync` multiplies the (TF32-valued) inputs exactly
// and accumulates in f32 in k order; the hardware's accumulation order and rounding are
// unspecified, which is why the kernels only use these results through error bounds.
#pragma once
#include "cuda_emu.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment;

template <>
struct fragment<matrix_a, 16, 16, 8, precision::tf32, row_major> {
  static constexpr int rows = 16, cols = 8, num_elements = 128;
  float x[num_elements];
};
template <>
struct fragment<matrix_b, 16, 16, 8, precision::tf32, row_major> {
  static constexpr int rows = 8, cols = 16, num_elements = 128;
  float x[num_elements];
};
template <>
struct fragment<matrix_b, 16, 16, 8, precision::tf32, col_major> {
  static constexpr int rows = 8, cols = 16, num_elements = 128;
  static constexpr bool col_major_memory = true;
  float x[num_elements];
};
template <>
struct fragment<accumulator, 16, 16, 8, float, void> {
  static constexpr int rows = 16, cols = 16, num_elements = 256;
  float x[num_elements];
};

/// Whether fragment type F is loaded from column-major memory.
template <class F, class = void>
struct is_col_major {
  static constexpr bool value = false;
};
template <class F>
struct is_col_major<F, std::void_t<decltype(F::col_major_memory)>> {
  static constexpr bool value = F::col_major_memory;
};

/// Loads an A (16 × 8) or B (8 × 16) tile, row-major or (B) column-major as the fragment
/// type says; `ldm` in elements.
template <class F>
inline void load_matrix_sync(F& f, const float* p, unsigned ldm) {
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c)
      f.x[r * F::cols + c] =
          is_col_major<F>::value ? p[(size_t)c * ldm + r] : p[(size_t)r * ldm + c];
}

inline void fill_fragment(fragment<accumulator, 16, 16, 8, float, void>& f, float v) {
  for (float& e : f.x) e = v;
}

template <class LayoutB>
inline void mma_sync(fragment<accumulator, 16, 16, 8, float, void>& d,
                     const fragment<matrix_a, 16, 16, 8, precision::tf32, row_major>& a,
                     const fragment<matrix_b, 16, 16, 8, precision::tf32, LayoutB>& b,
                     const fragment<accumulator, 16, 16, 8, float, void>& c) {
  float out[256];
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      float s = c.x[i * 16 + j];
      for (int k = 0; k < 8; ++k) s += a.x[i * 8 + k] * b.x[k * 16 + j];
      out[i * 16 + j] = s;
    }
  for (int i = 0; i < 256; ++i) d.x[i] = out[i];
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 8, float, void>& f,
                              unsigned ldm, layout_t layout) {
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      const size_t at = layout == mem_row_major ? (size_t)i * ldm + j : (size_t)j * ldm + i;
      p[at] = f.x[i * 16 + j];
    }
}

/// f32 → TF32 (10 explicit mantissa bits), rounded to nearest, ties away from zero, as
/// `cvt.rna.tf32.f32`; the result is an f32 with the low 13 mantissa bits clear.
inline float __float_to_tf32(float v) {
  unsigned u = std::bit_cast<unsigned>(v);
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;  // finite
  return std::bit_cast<float>(u);
}

}  // namespace wmma
}  // namespace nvcuda
