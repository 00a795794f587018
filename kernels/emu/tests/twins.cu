// Deliberately broken reductions next to their correct twins: the tests check that comparing
// against a plain Rust result catches the broken ones.
#include <cuda_pipeline_primitives.h>

// Block sum through shared memory.
extern "C" __global__ void rq_emu_test_reduce_smem_ok(const float* in, float* out) {
  __shared__ float s[256];
  const unsigned t = threadIdx.x;
  s[t] = in[blockIdx.x * blockDim.x + t];
  __syncthreads();
  for (unsigned stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (t < stride) s[t] += s[t + stride];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = s[0];
}

// BROKEN: no barrier between filling shared memory and the first reduction step.
extern "C" __global__ void rq_emu_test_reduce_smem_broken(const float* in, float* out) {
  __shared__ float s[256];
  const unsigned t = threadIdx.x;
  s[t] = in[blockIdx.x * blockDim.x + t];
  for (unsigned stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (t < stride) s[t] += s[t + stride];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = s[0];
}

// Warp sum through shuffles, one result per warp.
extern "C" __global__ void rq_emu_test_reduce_shfl_ok(const float* in, float* out) {
  const unsigned g = blockIdx.x * blockDim.x + threadIdx.x;
  float v = in[g];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  if (threadIdx.x % 32 == 0) out[g / 32] = v;
}

// BROKEN: off by one in the loop bound, the last step (offset 1) is skipped.
extern "C" __global__ void rq_emu_test_reduce_shfl_broken(const float* in, float* out) {
  const unsigned g = blockIdx.x * blockDim.x + threadIdx.x;
  float v = in[g];
  for (int o = 16; o > 1; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  if (threadIdx.x % 32 == 0) out[g / 32] = v;
}

// Each thread reads its left neighbour's slot.
extern "C" __global__ void rq_emu_test_neighbour_ok(const float* in, float* out) {
  __shared__ float s[256];
  const unsigned t = threadIdx.x, g = blockIdx.x * blockDim.x + t;
  s[t] = in[g];
  __syncthreads();
  out[g] = t > 0 ? s[t - 1] : 0.0f;
}

// BROKEN: no barrier between the write and the neighbour's read. Thread order hides it (the
// left neighbour always ran first); reverse order exposes it.
extern "C" __global__ void rq_emu_test_neighbour_broken(const float* in, float* out) {
  __shared__ float s[256];
  const unsigned t = threadIdx.x, g = blockIdx.x * blockDim.x + t;
  s[t] = in[g];
  out[g] = t > 0 ? s[t - 1] : 0.0f;
}

// Two rounds of asynchronous copies through one shared buffer: in round r each thread copies
// its 16 bytes of `in` (row r: 4 floats per thread of the grid) into its slot and reads its
// right neighbour's slot into `out` (same layout). `variant` 0 is correct; 1 (BROKEN) skips
// the waits, so the barrier does not make the copies visible; 2 (BROKEN) skips the barrier
// between round 0's reads and round 1's copies, so a copy may land in a slot its neighbour
// has not read yet.
extern "C" __global__ void rq_emu_test_async_rounds(const float* in, float* out, int variant) {
  __shared__ __align__(16) float s[256 * 4];
  const unsigned t = threadIdx.x, g = blockIdx.x * blockDim.x + t;
  const unsigned n = (t + 1) % blockDim.x;
  const long long row = 4LL * blockDim.x * gridDim.x;
  for (int r = 0; r < 2; ++r) {
    if (r > 0 && variant != 2) __syncthreads();
    __pipeline_memcpy_async(s + 4 * t, in + r * row + 4 * g, 16);
    __pipeline_commit();
    __syncthreads();  // every thread's copies issued (as while a GPU kernel works on a chunk)
    if (variant != 1) __pipeline_wait_prior(0);
    __syncthreads();
    for (int e = 0; e < 4; ++e) out[r * row + 4 * g + e] = s[4 * n + e];
  }
}

// Each lane reads its partner's (lane ^ 1) slot after a warp-level exchange through shared
// memory. `variant` 0 orders the write before the partner's read with __syncwarp; 1 (BROKEN)
// relies on a shuffle instead, which orders no memory on a GPU (only __syncwarp and the
// barriers do). Both give the right values here, in either fiber order (every lane writes
// before any lane passes the shuffle): only the ThreadSanitizer run (scripts/emu-tsan.sh)
// reports the broken one.
extern "C" __global__ void rq_emu_test_warp_exchange(const float* in, float* out, int variant) {
  __shared__ float s[256];
  const unsigned t = threadIdx.x, g = blockIdx.x * blockDim.x + t;
  s[t] = in[g];
  if (variant == 0) {
    __syncwarp();
  } else {
    (void)__shfl_sync(0xffffffffu, 0, 0);
  }
  out[g] = s[t ^ 1u];
}
