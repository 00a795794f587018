// Deliberately broken reductions next to their correct twins: the tests check that comparing
// against a plain Rust result catches the broken ones.

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
