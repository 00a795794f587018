// Emulator self-test kernels that misuse the SIMT model; each must be reported as a launch
// error naming the kernel, block and thread.
#include <cuda_pipeline_primitives.h>

#include "rq_shared.cuh"

// A shuffle with a half-warp mask, in block 2 only.
extern "C" __global__ void rq_emu_test_partial_mask(int* out) {
  const unsigned mask = blockIdx.x == 2 ? 0x0000ffffu : 0xffffffffu;
  out[blockIdx.x * blockDim.x + threadIdx.x] =
      __shfl_sync(mask, static_cast<int>(threadIdx.x), 0);
}

// A barrier inside a branch only half the block takes.
extern "C" __global__ void rq_emu_test_divergent_barrier(int* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

// One thread returns early; the others then reach a barrier.
extern "C" __global__ void rq_emu_test_early_exit_barrier(int* out) {
  if (threadIdx.x == 37) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

// Reads one element past the end of the dynamic shared memory.
extern "C" __global__ void rq_emu_test_oob_dynamic(float* out) {
  RQ_DYNAMIC_SHARED(float, smem);
  smem[threadIdx.x] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = smem[threadIdx.x + 1];
}

// Lanes of a warp at different warp intrinsics.
extern "C" __global__ void rq_emu_test_warp_divergent(int* out) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  if (lane < 16) {
    out[threadIdx.x] = __shfl_sync(0xffffffffu, lane, 0);
  } else {
    out[threadIdx.x] = static_cast<int>(__ballot_sync(0xffffffffu, 1));
  }
}

// Some lanes at a shuffle, the others at a barrier.
extern "C" __global__ void rq_emu_test_warp_vs_barrier(int* out) {
  if (threadIdx.x % 32 < 8) {
    out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1, 1);
  }
  __syncthreads();
}

// A warp intrinsic in a block whose size is not a multiple of 32.
extern "C" __global__ void rq_emu_test_partial_warp(int* out) {
  out[threadIdx.x] = static_cast<int>(__ballot_sync(0xffffffffu, 1));
}

// Writes one element past the end of `out` (n elements): only AddressSanitizer catches this
// (scripts/emu-asan.sh runs it and expects the report).
extern "C" __global__ void rq_emu_test_heap_overflow(int* out, int n) {
  if (threadIdx.x == 0) out[n] = 1;
}

// Thread 0 writes one element past a static shared array (AddressSanitizer only: the
// emulator cannot see it otherwise; scripts/emu-asan.sh expects the report).
extern "C" __global__ void rq_emu_test_static_shared_overflow(int* out, int past) {
  __shared__ int s[64];
  s[threadIdx.x] = (int)threadIdx.x;
  __syncthreads();
  if (threadIdx.x == 0) s[64 * past] = 1;
  __syncthreads();
  out[threadIdx.x] = s[(threadIdx.x + 1) % 64];
}

// Thread 0 writes the byte at `at` of the dynamic shared memory through a raw pointer, which
// no bounds check sees (AddressSanitizer reports it when `at` is the launch's size).
extern "C" __global__ void rq_emu_test_dynamic_shared_overflow(int* out, int at) {
  RQ_DYNAMIC_SHARED(unsigned char, smem);
  unsigned char* raw = &smem[0];
  if (threadIdx.x == 0) raw[at] = 1;
  __syncthreads();
  out[threadIdx.x] = raw[0];
}

// A 16-byte asynchronous copy from an address 4 bytes past a 16-byte boundary, in thread 5.
extern "C" __global__ void rq_emu_test_async_misaligned(const float* in, float* out) {
  __shared__ __align__(16) float s[64 * 4];
  const unsigned t = threadIdx.x;
  __pipeline_memcpy_async(s + 4 * t, in + 4 * t + (t == 5 ? 1 : 0), 16);
  __pipeline_commit();
  __pipeline_wait_prior(0);
  out[t] = s[4 * t];
}

/// A 16-byte vector, as the kernels declare theirs.
struct alignas(16) RqEmuTestQuad {
  float v[4];
};

// Loads a 16-byte vector from an address 4 bytes past a 16-byte boundary, which faults on a
// GPU: only the alignment sanitizer catches this (scripts/emu-asan.sh runs it and expects the
// report).
extern "C" __global__ void rq_emu_test_misaligned_vector(const float* in, float* out) {
  const RqEmuTestQuad q = *reinterpret_cast<const RqEmuTestQuad*>(in + 1);
  out[threadIdx.x] = q.v[threadIdx.x % 4];
}
