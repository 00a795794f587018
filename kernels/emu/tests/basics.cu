// Emulator self-test kernels: barriers, warp intrinsics, atomics, shared memory, geometry,
// conversions and intrinsics. Compiled only into the emu build (kernels/emu/tests/).
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include "mma_tf32.cuh"
#include "rq_shared.cuh"

// Each thread writes its slot, then reads its neighbour's after a barrier, twice over.
extern "C" __global__ void rq_emu_test_barrier_order(int* out) {
  __shared__ int s[1024];
  const unsigned t = threadIdx.x, n = blockDim.x;
  s[t] = static_cast<int>(t * 2 + blockIdx.x * 10000);
  __syncthreads();
  const int a = s[(t + 1) % n];
  __syncthreads();
  s[t] = a + 1;
  __syncthreads();
  out[blockIdx.x * n + t] = s[(t + n - 1) % n];
}

// Eight results per thread: every shuffle flavour, with full and sub-warp widths.
extern "C" __global__ void rq_emu_test_shuffles(int* out) {
  const unsigned g = blockIdx.x * blockDim.x + threadIdx.x;
  const int v = static_cast<int>(g * 3 + 1);
  const int lane = static_cast<int>(threadIdx.x % 32);
  int* o = out + g * 8;
  o[0] = __shfl_sync(0xffffffffu, v, (lane * 7 + 3) % 32);
  o[1] = __shfl_sync(0xffffffffu, v, lane + 5, 8);
  o[2] = __shfl_up_sync(0xffffffffu, v, 3);
  o[3] = __shfl_up_sync(0xffffffffu, v, 2, 16);
  o[4] = __shfl_down_sync(0xffffffffu, v, 5);
  o[5] = __shfl_down_sync(0xffffffffu, v, 3, 8);
  o[6] = __shfl_xor_sync(0xffffffffu, v, 13);
  o[7] = __shfl_xor_sync(0xffffffffu, v, 9, 8);
}

// 64-bit and float payloads survive a shuffle bit-exactly.
extern "C" __global__ void rq_emu_test_shuffle_types(double* d, float* f, unsigned long long* u) {
  const unsigned g = blockIdx.x * blockDim.x + threadIdx.x;
  d[g] = __shfl_xor_sync(0xffffffffu, d[g], 1);
  f[g] = __shfl_down_sync(0xffffffffu, f[g], 1);
  u[g] = __shfl_sync(0xffffffffu, u[g], 0);
}

// Ballot, any and all of a per-thread predicate: three results per thread.
extern "C" __global__ void rq_emu_test_votes(const int* pred, unsigned* out) {
  const unsigned g = blockIdx.x * blockDim.x + threadIdx.x;
  const int p = pred[g];
  out[g * 4 + 0] = __ballot_sync(0xffffffffu, p);
  out[g * 4 + 1] = static_cast<unsigned>(__any_sync(0xffffffffu, p));
  out[g * 4 + 2] = static_cast<unsigned>(__all_sync(0xffffffffu, p));
  __syncwarp();
  out[g * 4 + 3] = __activemask();
}

// Every thread of every block hits the same counters.
extern "C" __global__ void rq_emu_test_atomics(float* fsum, int* isum, unsigned* usum,
                                               unsigned long long* u64sum, int* imin, int* imax,
                                               unsigned* cas_count, int* exch_seen) {
  const unsigned g = blockIdx.x * blockDim.x + threadIdx.x;
  atomicAdd(fsum, 1.0f);
  atomicAdd(isum, static_cast<int>(g % 7) - 3);
  atomicAdd(usum, g);
  atomicAdd(u64sum, static_cast<unsigned long long>(g) << 20);
  atomicMin(imin, -static_cast<int>(g));
  atomicMax(imax, static_cast<int>(g));
  // A first guess, corrected by the loop (a plain read of the counter would race with the
  // other threads' compare-and-swaps).
  unsigned old = 0;
  for (;;) {
    const unsigned seen = atomicCAS(cas_count, old, old + 1);
    if (seen == old) break;
    old = seen;
  }
  const int prev = atomicExch(exch_seen, static_cast<int>(g));
  (void)prev;
}

// Sum of each block's values through static shared memory (tree reduction).
extern "C" __global__ void rq_emu_test_static_shared(const int* in, int* out) {
  __shared__ int s[256];
  const unsigned t = threadIdx.x;
  s[t] = in[blockIdx.x * blockDim.x + t];
  __syncthreads();
  for (unsigned stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (t < stride) s[t] += s[t + stride];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = s[0];
}

// Reverses each block's segment through dynamic shared memory: floats, then ints after them.
extern "C" __global__ void rq_emu_test_dynamic_shared(const float* in, float* out, int* idx) {
  RQ_DYNAMIC_SHARED(float, smem);
  const unsigned t = threadIdx.x, n = blockDim.x;
  smem[t] = in[blockIdx.x * n + t];
  int* tail = reinterpret_cast<int*>(&smem[n]);
  tail[t] = static_cast<int>(t);
  __syncthreads();
  out[blockIdx.x * n + t] = smem[n - 1 - t];
  idx[blockIdx.x * n + t] = tail[n - 1 - t];
}

// Built-in variables of a 3-D launch: 12 values per thread.
extern "C" __global__ void rq_emu_test_geometry(unsigned* out) {
  const unsigned block =
      blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const unsigned thread =
      threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  unsigned* o = out + (block * blockDim.x * blockDim.y * blockDim.z + thread) * 12;
  const unsigned v[12] = {threadIdx.x, threadIdx.y, threadIdx.z, blockIdx.x,
                          blockIdx.y,  blockIdx.z,  blockDim.x,  blockDim.y,
                          blockDim.z,  gridDim.x,   gridDim.y,   gridDim.z};
  for (int i = 0; i < 12; ++i) o[i] = v[i];
}

// __syncthreads_count/and/or of the predicate (t % 3 == 0).
extern "C" __global__ void rq_emu_test_sync_variants(int* out) {
  const int p = threadIdx.x % 3 == 0;
  const int c = __syncthreads_count(p);
  const int a = __syncthreads_and(p);
  const int o = __syncthreads_or(p);
  const int all = __syncthreads_and(1);
  if (threadIdx.x == 0) {
    out[blockIdx.x * 4 + 0] = c;
    out[blockIdx.x * 4 + 1] = a;
    out[blockIdx.x * 4 + 2] = o;
    out[blockIdx.x * 4 + 3] = all;
  }
}

// f32 → f16/bf16 bits and back.
extern "C" __global__ void rq_emu_test_half(const float* in, unsigned short* h, unsigned short* b,
                                            float* hf, float* bf, int n) {
  const int g = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (g >= n) return;
  const __half x = __float2half(in[g]);
  const __nv_bfloat16 y = __float2bfloat16(in[g]);
  h[g] = __half_as_ushort(x);
  b[g] = __bfloat16_as_ushort(y);
  hf[g] = __half2float(x);
  bf[g] = __bfloat162float(y);
}

// Bit and math intrinsics: 9 results per input.
extern "C" __global__ void rq_emu_test_intrinsics(const unsigned* in, unsigned* out, int n) {
  const int g = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (g >= n) return;
  const unsigned x = in[g];
  unsigned* o = out + g * 9;
  o[0] = static_cast<unsigned>(__popc(x));
  o[1] = static_cast<unsigned>(__clz(static_cast<int>(x)));
  o[2] = static_cast<unsigned>(__ffs(static_cast<int>(x)));
  o[3] = __float_as_uint(__uint_as_float(x));
  o[4] = static_cast<unsigned>(__float_as_int(static_cast<float>(x & 0xffff)));
  o[5] = max(x, 1000u) - min(x, 1000u);
  o[6] = __float_as_uint(fmaxf(fminf(__uint_as_float(x & 0x3fffffffu), 2.0f), -INFINITY));
  o[7] = __float_as_uint(__fdividef(__expf(1.0f), expf(0.0f)));
  o[8] = __byte_perm(x, ~x, 0x7340u);
}

// Scalar argument passing: echoes each argument.
extern "C" __global__ void rq_emu_test_args(unsigned long long* out, int i, unsigned u,
                                            long long l, unsigned long long m, float f) {
  out[0] = static_cast<unsigned long long>(static_cast<long long>(i));
  out[1] = u;
  out[2] = static_cast<unsigned long long>(l);
  out[3] = m;
  out[4] = __float_as_uint(f);
}

// The scheduler benchmark: a 5-step shuffle reduction per warp, a barrier, a block sum.
extern "C" __global__ void __launch_bounds__(256) rq_emu_test_switch_bench(float* out) {
  __shared__ float warp_sums[32];
  float v = static_cast<float>(threadIdx.x);
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0.0f;
    for (unsigned w = 0; w < blockDim.x / 32; ++w) s += warp_sums[w];
    out[blockIdx.x] = s;
  }
}

// Static shared memory is private to a block while blocks run concurrently on other workers:
// counts the times a thread sees another block's value.
extern "C" __global__ void rq_emu_test_shared_private(int* mismatches) {
  __shared__ unsigned owner[2];
  for (int i = 0; i < 40; ++i) {
    if (threadIdx.x == 0) owner[i & 1] = blockIdx.x * 1000u + static_cast<unsigned>(i);
    __syncthreads();
    if (owner[i & 1] != blockIdx.x * 1000u + static_cast<unsigned>(i)) atomicAdd(mismatches, 1);
  }
}

// One warp's m16n8k8 TF32 tile product D = A·B + C through rq_mma_tf32, the fragments loaded
// and stored by the PTX ISA's layouts (mma_tf32.cuh): A 16 × 8, B 8 × 8 (K × N), C and D
// 16 × 8, all row-major; A and B truncated to TF32.
extern "C" __global__ void rq_emu_test_mma_tf32(const float* a, const float* b, const float* c,
                                                float* d) {
  const int lane = (int)threadIdx.x, g = lane / 4, t = lane % 4;
  unsigned fa[4], fb[2];
  float acc[4];
  for (int r = 0; r < 4; ++r) fa[r] = rq_tf32_bits(a[(g + 8 * (r % 2)) * 8 + t + 4 * (r / 2)]);
  for (int r = 0; r < 2; ++r) fb[r] = rq_tf32_bits(b[(t + 4 * r) * 8 + g]);
  for (int r = 0; r < 4; ++r) acc[r] = c[(g + 8 * (r / 2)) * 8 + 2 * t + r % 2];
  rq_mma_tf32(acc, fa, fb);
  for (int r = 0; r < 4; ++r) d[(g + 8 * (r / 2)) * 8 + 2 * t + r % 2] = acc[r];
}
