// SIMT emulation of the CUDA device dialect used by kernels/*.cu, for the `emu` backend.
//
// The same .cu sources are compiled by the host C++ compiler (C++20) against this header and
// run on the CPU: blocks run on worker OS threads (one block per worker at a time), the
// threads of a block run as fibers on that worker (scheduled from Rust with `corosensei`, see
// src/device/emu/). A kernel thread yields to the scheduler at every `__syncthreads` and warp
// intrinsic through `rq_emu_block::yield`; the scheduler resumes it once its whole block
// (barrier) or its whole warp (warp intrinsic) has arrived, with the exchanged value.
//
// Shared memory:
//  * static `__shared__` variables are `static thread_local`: every fiber of a block runs on
//    the same worker OS thread and never migrates, and a worker runs one block at a time, so a
//    `__shared__` variable is shared by exactly the threads of one block and private from the
//    blocks running concurrently on other workers. As on a GPU, its contents at block start
//    are undefined (whatever the previous block on that worker left). Under AddressSanitizer
//    or ThreadSanitizer they are plain statics and blocks run one at a time in the process.
//  * dynamic shared memory goes through RQ_DYNAMIC_SHARED (kernels/rq_shared.cuh); it is a
//    per-worker buffer of the launch's `shared_bytes`, filled with 0xff bytes (a NaN pattern)
//    at every block start and bounds-checked in debug builds (RQ_EMU_CHECKS).
//
// Misuse is reported, never a hang: warp intrinsics with a mask other than 0xffffffff, warp
// intrinsics in a block whose size is not a multiple of 32, lanes of a warp at different
// warp intrinsics, a `__syncthreads` not reached by every thread of the block (including
// threads that exited), out-of-bounds dynamic shared memory indexing, and asynchronous copies
// of a size other than 4, 8 or 16 bytes or not aligned to it.
//
// Asynchronous copies (cp.async) land either at the wait that covers them or at issue, per
// launch (rq_emu_block::async_landing): see "asynchronous copies" below.
#pragma once

#include <atomic>
#include <bit>
#include <cstdarg>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <math.h>
#include <type_traits>
#include <utility>
#include <vector>

#ifndef RQ_EMU
#define RQ_EMU 1
#endif

// ---- qualifiers ------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __constant__
#if defined(RQ_EMU_TSAN) || defined(__SANITIZE_ADDRESS__)
// The sanitizers do not check thread-local storage (AddressSanitizer puts no redzones around
// it; ThreadSanitizer does not compare fibers' accesses to it), so under them static shared
// memory is a plain static; the scheduler then runs one block at a time in the whole process
// (src/device/emu.rs), which keeps it private to that block.
#define __shared__ static
#else
#define __shared__ static thread_local
#endif
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

// ---- geometry types ------------------------------------------------------------------------
struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x = 1, y = 1, z = 1;
  constexpr dim3() = default;
  constexpr dim3(unsigned int vx, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
};

// ---- the ABI shared with the Rust scheduler (src/device/emu/ffi.rs mirrors it) -----------------
extern "C" {
struct rq_emu_thread;

/// Per-block state the scheduler hands to every fiber of the block.
struct rq_emu_block {
  /// Suspends the calling fiber; returns when the scheduler resumes it.
  void (*yield)(rq_emu_thread*);
  /// Dynamic shared memory of this block and its size in bytes.
  unsigned char* dyn_smem;
  size_t dyn_smem_bytes;
  /// When asynchronous copies land (rq_emu::AsyncLanding).
  uint32_t async_landing;
};

/// Per-thread (per-fiber) state. `state`/`op`/`arg`/`width`/`value` describe the sync point the
/// thread is suspended at; the scheduler writes `result` before resuming it.
struct rq_emu_thread {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
  uint32_t state;
  uint32_t op;
  int32_t arg;
  uint32_t width;
  uint64_t value;
  uint64_t result;
  rq_emu_block* block;
  void* sched;
  char msg[200];
};

/// One registered kernel: its name, its parameter signature (one char per parameter:
/// p pointer, i int32, u uint32, l int64, m uint64, f float) and its entry point.
struct rq_emu_kernel {
  const char* name;
  const char* sig;
  void (*run)(void** params, rq_emu_thread* self);
};
}

static_assert(sizeof(rq_emu_thread) == 296 && offsetof(rq_emu_thread, value) == 64 &&
                  offsetof(rq_emu_thread, msg) == 96 && sizeof(rq_emu_block) == 32 &&
                  offsetof(rq_emu_block, async_landing) == 24,
              "rq_emu_thread/rq_emu_block must match src/device/emu/ffi.rs");

namespace rq_emu {

enum State : uint32_t { RUNNING = 0, BARRIER = 1, WARP = 2, FAILED = 3 };
enum BarrierOp : uint32_t { BAR_PLAIN = 0, BAR_COUNT = 1, BAR_AND = 2, BAR_OR = 3 };
enum WarpOp : uint32_t {
  W_SHFL_IDX = 1,
  W_SHFL_UP = 2,
  W_SHFL_DOWN = 3,
  W_SHFL_XOR = 4,
  W_BALLOT = 5,
  W_ANY = 6,
  W_ALL = 7,
  W_SYNCWARP = 8,
  W_ACTIVEMASK = 9,
};

#ifdef RQ_EMU_TSAN
extern "C" void __tsan_ignore_thread_begin(void);
extern "C" void __tsan_ignore_thread_end(void);
extern "C" void __tsan_read_range(void* addr, unsigned long size);
extern "C" void __tsan_write_range(void* addr, unsigned long size);
/// While alive, ThreadSanitizer ignores the calling fiber's memory accesses. For the
/// emulator's own bookkeeping that the fibers of a worker share (`cur`, the table of pending
/// asynchronous copies): its fibers take turns on one OS thread, which ThreadSanitizer, told
/// that each fiber is a thread of its own (src/device/emu/tsan.rs), would report as races.
/// Kernel memory is never accessed inside one.
struct internal_scope {
  internal_scope() { __tsan_ignore_thread_begin(); }
  ~internal_scope() { __tsan_ignore_thread_end(); }
  internal_scope(const internal_scope&) = delete;
  internal_scope& operator=(const internal_scope&) = delete;
};
/// Tells ThreadSanitizer that the calling thread accesses [addr, addr + bytes): for the
/// kernel's accesses the emulator makes through `memcpy`, whose interceptor scripts/emu-tsan.sh
/// tells ThreadSanitizer to ignore (the uninstrumented Rust side calls it too).
inline void note_access(const void* addr, size_t bytes, bool write) {
  if (write) {
    __tsan_write_range(const_cast<void*>(addr), bytes);
  } else {
    __tsan_read_range(const_cast<void*>(addr), bytes);
  }
}
#else
/// Marks the emulator's own bookkeeping (a ThreadSanitizer annotation; empty without it).
struct internal_scope {};
/// A ThreadSanitizer annotation of a kernel access made through `memcpy` (empty without it).
inline void note_access(const void*, size_t, bool) {}
#endif

/// The fiber running on this OS thread. Each fiber re-installs itself after every yield.
inline thread_local rq_emu_thread* cur = nullptr;

/// Makes `me` the current fiber of this OS thread.
inline void install(rq_emu_thread* me) {
  [[maybe_unused]] internal_scope quiet;
  cur = me;
}

/// Suspends the current fiber at the sync point already described in its state.
inline void sync_point(rq_emu_thread* me) {
  me->block->yield(me);
  install(me);
}

/// Reports a misuse: the scheduler records `msg` with the kernel/block/thread and abandons the
/// block; the fiber is never resumed.
[[gnu::format(printf, 1, 2)]] inline void fail(const char* fmt, ...) {
  rq_emu_thread* me = cur;
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(me->msg, sizeof me->msg, fmt, ap);
  va_end(ap);
  me->state = FAILED;
  for (;;) {
    sync_point(me);  // a failed fiber is never resumed; it would only suspend again
  }
}

inline void barrier(uint32_t op, int pred, int& out) {
  rq_emu_thread* me = cur;
  me->state = BARRIER;
  me->op = op;
  me->value = pred != 0;
  sync_point(me);
  me->state = RUNNING;
  out = static_cast<int>(me->result);
}

inline uint64_t warp_op(const char* what, unsigned mask, uint32_t op, uint64_t value, int arg,
                        int width) {
  if (mask != 0xffffffffu) {
    fail("%s with mask 0x%08x: only full-mask (0xffffffff) warp intrinsics are supported", what,
         mask);
  }
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
    fail("%s with width %d: width must be a power of two in 1..=32", what, width);
  }
  rq_emu_thread* me = cur;
  me->state = WARP;
  me->op = op;
  me->value = value;
  me->arg = arg;
  me->width = static_cast<uint32_t>(width);
  sync_point(me);
  me->state = RUNNING;
  return me->result;
}

template <class T>
inline T shfl(const char* what, uint32_t op, unsigned mask, T var, int arg, int width) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8,
                "warp shuffles move trivially copyable values of at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &var, sizeof(T));
  bits = warp_op(what, mask, op, bits, arg, width);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

/// A bounds-checked pointer into the block's dynamic shared memory (debug builds).
template <class T>
struct dyn_shared_ptr {
  T* p;
  T* lo;
  T* hi;

  T& at(std::ptrdiff_t i) const {
    T* q = p + i;
    if (q < lo || q >= hi) {
      fail("dynamic shared memory index out of bounds: element %td of %td (%zu-byte elements, "
           "%td bytes of dynamic shared memory)",
           q - lo, hi - lo, sizeof(T), (hi - lo) * static_cast<std::ptrdiff_t>(sizeof(T)));
    }
    return *q;
  }
  T& operator[](std::ptrdiff_t i) const { return at(i); }
  T& operator*() const { return at(0); }
  T* operator->() const { return &at(0); }
  dyn_shared_ptr operator+(std::ptrdiff_t d) const { return {p + d, lo, hi}; }
  dyn_shared_ptr operator-(std::ptrdiff_t d) const { return {p - d, lo, hi}; }
  operator T*() const { return p; }
  template <class U>
  explicit operator U*() const {
    return reinterpret_cast<U*>(p);
  }
};

#ifdef RQ_EMU_CHECKS
template <class T>
inline dyn_shared_ptr<T> dynamic_shared() {
  rq_emu_block* b = cur->block;
  T* base = reinterpret_cast<T*>(b->dyn_smem);
  return {base, base, base + b->dyn_smem_bytes / sizeof(T)};
}
#else
template <class T>
inline T* dynamic_shared() {
  return reinterpret_cast<T*>(cur->block->dyn_smem);
}
#endif

// ---- asynchronous copies (cp.async; kernels use them through cuda_pipeline_primitives.h) ----
/// When a thread's asynchronous copies land (rq_emu_block::async_landing; AsyncCopies in
/// src/device/emu/sched.rs).
enum AsyncLanding : uint32_t { LAND_AT_WAIT = 0, LAND_AT_ISSUE = 1 };

/// One pending copy: its destination and the bytes it will write (the source is read at issue:
/// kernels only copy from global memory they do not write during the launch).
struct async_copy {
  void* dst;
  size_t bytes;
  unsigned char data[16];
};

/// A thread's pending copies, oldest first, and the ends of its committed groups in them.
struct async_queue {
  std::vector<async_copy> copies;
  std::vector<size_t> group_ends;
};

/// The pending copies of every thread of the block running on this worker (by linear thread
/// index; a worker runs one block at a time and its fibers share the OS thread).
inline async_queue& async_of(rq_emu_thread* me) {
  [[maybe_unused]] internal_scope quiet;
  static thread_local std::vector<async_queue> queues;
  const size_t i = me->thread_idx.x +
                   me->block_dim.x * (me->thread_idx.y + me->block_dim.y * me->thread_idx.z);
  if (queues.size() <= i) queues.resize(i + 1);
  return queues[i];
}

/// Lands the oldest `n` pending copies of `q`.
inline void async_land(async_queue& q, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    note_access(q.copies[i].dst, q.copies[i].bytes, true);
    std::memcpy(q.copies[i].dst, q.copies[i].data, q.copies[i].bytes);
  }
  q.copies.erase(q.copies.begin(), q.copies.begin() + static_cast<std::ptrdiff_t>(n));
  size_t kept = 0;
  for (size_t e : q.group_ends) {
    if (e > n) q.group_ends[kept++] = e - n;
  }
  q.group_ends.resize(kept);
}

/// Issues a copy of `bytes` (≤ 16) bytes, `src` first read now: lands at once or is queued.
inline void async_issue(void* dst, const void* src, size_t bytes, size_t zfill) {
  rq_emu_thread* me = cur;
  if ((bytes != 4 && bytes != 8 && bytes != 16) || zfill > bytes) {
    fail("__pipeline_memcpy_async of %zu bytes (%zu zero-filled): the size must be 4, 8 or 16",
         bytes, zfill);
  }
  if (reinterpret_cast<uintptr_t>(dst) % bytes != 0 ||
      reinterpret_cast<uintptr_t>(src) % bytes != 0) {
    fail("__pipeline_memcpy_async of %zu bytes from %p to %p: both addresses must be aligned "
         "to the size",
         bytes, src, dst);
  }
  // The copy may land at any moment from its issue to its wait: for ThreadSanitizer it writes
  // at both ends (here, and in async_land when it lands at the wait).
  note_access(src, bytes - zfill, false);
  note_access(dst, bytes, true);
  if (me->block->async_landing == LAND_AT_ISSUE) {
    std::memcpy(dst, src, bytes - zfill);
    std::memset(static_cast<char*>(dst) + (bytes - zfill), 0, zfill);
    return;
  }
  async_copy c{dst, bytes, {}};
  std::memcpy(c.data, src, bytes - zfill);
  async_of(me).copies.push_back(c);
}

/// Closes the current group of the calling thread's copies.
inline void async_commit() {
  async_queue& q = async_of(cur);
  q.group_ends.push_back(q.copies.size());
}

/// Lands the calling thread's committed groups but the newest `prior`.
inline void async_wait_prior(size_t prior) {
  async_queue& q = async_of(cur);
  if (q.group_ends.size() > prior) async_land(q, q.group_ends[q.group_ends.size() - 1 - prior]);
}

// ---- kernel registration -------------------------------------------------------------------
template <class T>
constexpr char arg_code() {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_pointer_v<U>) {
    return 'p';
  } else if constexpr (std::is_same_v<U, int>) {
    return 'i';
  } else if constexpr (std::is_same_v<U, unsigned int>) {
    return 'u';
  } else if constexpr (std::is_same_v<U, long> || std::is_same_v<U, long long>) {
    return 'l';
  } else if constexpr (std::is_same_v<U, unsigned long> || std::is_same_v<U, unsigned long long>) {
    return 'm';
  } else if constexpr (std::is_same_v<U, float>) {
    return 'f';
  } else {
    static_assert(sizeof(U) == 0,
                  "kernel parameters must be pointers, int, unsigned, 64-bit integers or float");
    return '?';
  }
}

template <auto F>
struct kernel_traits;

template <class... A, void (*F)(A...)>
struct kernel_traits<F> {
  static constexpr char sig[] = {arg_code<A>()..., '\0'};

  template <std::size_t... I>
  static void call(void** params, std::index_sequence<I...>) {
    F(*static_cast<std::remove_cv_t<A>*>(params[I])...);
  }
  /// Runs the thread; its copies still pending at its end land then (a thread abandoned
  /// after a misuse leaves its queue to be cleared when the next kernel thread starts).
  static void run(void** params, rq_emu_thread* self) {
    install(self);
    async_queue& q = async_of(self);
    q.copies.clear();
    q.group_ends.clear();
    call(params, std::index_sequence_for<A...>{});
    async_land(async_of(self), async_of(self).copies.size());
  }
};

}  // namespace rq_emu

/// Exports kernel NAME (an `extern "C" __global__` function defined above) to the registry.
#define RQ_EMU_EXPORT(NAME)                                                                \
  extern "C" const rq_emu_kernel rq_emu_entry_##NAME = {                                  \
      #NAME, ::rq_emu::kernel_traits<&NAME>::sig, &::rq_emu::kernel_traits<&NAME>::run};

// ---- built-in variables ----------------------------------------------------------------------
#define threadIdx (::rq_emu::cur->thread_idx)
#define blockIdx (::rq_emu::cur->block_idx)
#define blockDim (::rq_emu::cur->block_dim)
#define gridDim (::rq_emu::cur->grid_dim)
constexpr int warpSize = 32;

// ---- synchronisation -------------------------------------------------------------------------
inline void __syncthreads() {
  int ignored;
  ::rq_emu::barrier(::rq_emu::BAR_PLAIN, 0, ignored);
}
inline int __syncthreads_count(int pred) {
  int out;
  ::rq_emu::barrier(::rq_emu::BAR_COUNT, pred, out);
  return out;
}
inline int __syncthreads_and(int pred) {
  int out;
  ::rq_emu::barrier(::rq_emu::BAR_AND, pred, out);
  return out;
}
inline int __syncthreads_or(int pred) {
  int out;
  ::rq_emu::barrier(::rq_emu::BAR_OR, pred, out);
  return out;
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_signal_fence(std::memory_order_seq_cst); }
inline void __nanosleep(unsigned) {}

// ---- warp intrinsics (full mask only) --------------------------------------------------------
template <class T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
  return ::rq_emu::shfl("__shfl_sync", ::rq_emu::W_SHFL_IDX, mask, var, src_lane, width);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  return ::rq_emu::shfl("__shfl_up_sync", ::rq_emu::W_SHFL_UP, mask, var,
                        static_cast<int>(delta), width);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  return ::rq_emu::shfl("__shfl_down_sync", ::rq_emu::W_SHFL_DOWN, mask, var,
                        static_cast<int>(delta), width);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
  return ::rq_emu::shfl("__shfl_xor_sync", ::rq_emu::W_SHFL_XOR, mask, var, lane_mask, width);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  return static_cast<unsigned>(
      ::rq_emu::warp_op("__ballot_sync", mask, ::rq_emu::W_BALLOT, pred != 0, 0, 32));
}
inline int __any_sync(unsigned mask, int pred) {
  return static_cast<int>(::rq_emu::warp_op("__any_sync", mask, ::rq_emu::W_ANY, pred != 0, 0, 32));
}
inline int __all_sync(unsigned mask, int pred) {
  return static_cast<int>(::rq_emu::warp_op("__all_sync", mask, ::rq_emu::W_ALL, pred != 0, 0, 32));
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::rq_emu::warp_op("__syncwarp", mask, ::rq_emu::W_SYNCWARP, 0, 0, 32);
}
/// Synchronises the warp like `__syncwarp` and returns the full mask: the emulator requires
/// converged warps, so calling it from divergent code is reported.
inline unsigned __activemask() {
  return static_cast<unsigned>(
      ::rq_emu::warp_op("__activemask", 0xffffffffu, ::rq_emu::W_ACTIVEMASK, 0, 0, 32));
}

// ---- atomics (relaxed, device scope; correct across concurrently running blocks) -------------
namespace rq_emu {
template <class T, class F>
inline T atomic_update(T* addr, F f) {
  std::atomic_ref<T> a(*addr);
  T old = a.load(std::memory_order_relaxed);
  while (!a.compare_exchange_weak(old, f(old), std::memory_order_relaxed)) {
  }
  return old;
}
}  // namespace rq_emu

#define RQ_EMU_ATOMIC_ARITH(T)                                                             \
  inline T atomicAdd(T* a, T v) {                                                           \
    return std::atomic_ref<T>(*a).fetch_add(v, std::memory_order_relaxed);                  \
  }                                                                                         \
  inline T atomicExch(T* a, T v) {                                                          \
    return std::atomic_ref<T>(*a).exchange(v, std::memory_order_relaxed);                   \
  }
#define RQ_EMU_ATOMIC_INT(T)                                                               \
  RQ_EMU_ATOMIC_ARITH(T)                                                                    \
  inline T atomicSub(T* a, T v) {                                                           \
    return std::atomic_ref<T>(*a).fetch_sub(v, std::memory_order_relaxed);                  \
  }                                                                                         \
  inline T atomicAnd(T* a, T v) {                                                           \
    return std::atomic_ref<T>(*a).fetch_and(v, std::memory_order_relaxed);                  \
  }                                                                                         \
  inline T atomicOr(T* a, T v) {                                                            \
    return std::atomic_ref<T>(*a).fetch_or(v, std::memory_order_relaxed);                   \
  }                                                                                         \
  inline T atomicXor(T* a, T v) {                                                           \
    return std::atomic_ref<T>(*a).fetch_xor(v, std::memory_order_relaxed);                  \
  }                                                                                         \
  inline T atomicMin(T* a, T v) {                                                           \
    return ::rq_emu::atomic_update(a, [v](T o) { return v < o ? v : o; });                  \
  }                                                                                         \
  inline T atomicMax(T* a, T v) {                                                           \
    return ::rq_emu::atomic_update(a, [v](T o) { return v > o ? v : o; });                  \
  }                                                                                         \
  inline T atomicCAS(T* a, T compare, T v) {                                                \
    std::atomic_ref<T>(*a).compare_exchange_strong(compare, v, std::memory_order_relaxed);  \
    return compare;                                                                         \
  }
RQ_EMU_ATOMIC_INT(int)
RQ_EMU_ATOMIC_INT(unsigned int)
RQ_EMU_ATOMIC_INT(unsigned long long)
RQ_EMU_ATOMIC_INT(long long)
RQ_EMU_ATOMIC_ARITH(float)
RQ_EMU_ATOMIC_ARITH(double)
#undef RQ_EMU_ATOMIC_INT
#undef RQ_EMU_ATOMIC_ARITH

// ---- half precision ----------------------------------------------------------------------
namespace rq_emu {
inline uint16_t float_to_half_bits(float f) {
  uint32_t x = std::bit_cast<uint32_t>(f);
  const uint32_t sign = x & 0x80000000u;
  x ^= sign;
  uint16_t o;
  if (x >= (127u + 16u) << 23) {
    o = x > (255u << 23) ? 0x7e00 : 0x7c00;  // NaN stays NaN, overflow rounds to infinity
  } else if (x < (113u << 23)) {
    // Subnormal half: let the FPU round (round-to-nearest-even) by adding a magic number.
    const uint32_t magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
    const float t = std::bit_cast<float>(x) + std::bit_cast<float>(magic);
    o = static_cast<uint16_t>(std::bit_cast<uint32_t>(t) - magic);
  } else {
    const uint32_t mant_odd = (x >> 13) & 1u;
    x += ((15u - 127u) << 23) + 0xfffu;
    x += mant_odd;
    o = static_cast<uint16_t>(x >> 13);
  }
  return static_cast<uint16_t>(o | (sign >> 16));
}
inline float half_bits_to_float(uint16_t h) {
  const uint32_t shifted_exp = 0x7c00u << 13;
  uint32_t o = (h & 0x7fffu) << 13;
  const uint32_t exp = shifted_exp & o;
  o += (127u - 15u) << 23;
  if (exp == shifted_exp) {
    o += (128u - 16u) << 23;  // Inf/NaN
  } else if (exp == 0) {
    o += 1u << 23;  // zero/subnormal: renormalise
    o = std::bit_cast<uint32_t>(std::bit_cast<float>(o) - std::bit_cast<float>(113u << 23));
  }
  o |= static_cast<uint32_t>(h & 0x8000u) << 16;
  return std::bit_cast<float>(o);
}
inline uint16_t float_to_bf16_bits(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  }
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}
inline float bf16_bits_to_float(uint16_t b) { return std::bit_cast<float>(uint32_t{b} << 16); }
}  // namespace rq_emu

/// IEEE binary16, stored as its bits (as CUDA's `__half`).
struct __half {
  uint16_t x;
  __half() = default;
  __half(float f) : x(::rq_emu::float_to_half_bits(f)) {}
  operator float() const { return ::rq_emu::half_bits_to_float(x); }
};
/// bfloat16, stored as its bits (as CUDA's `__nv_bfloat16`).
struct __nv_bfloat16 {
  uint16_t x;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) : x(::rq_emu::float_to_bf16_bits(f)) {}
  operator float() const { return ::rq_emu::bf16_bits_to_float(x); }
};
using half = __half;
using nv_bfloat16 = __nv_bfloat16;

inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __half2float(__half h) { return ::rq_emu::half_bits_to_float(h.x); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return ::rq_emu::bf16_bits_to_float(b.x); }
inline unsigned short __half_as_ushort(__half h) { return h.x; }
inline __half __ushort_as_half(unsigned short u) {
  __half h;
  h.x = u;
  return h;
}
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) {
  __nv_bfloat16 b;
  b.x = u;
  return b;
}

// ---- math and bit intrinsics -------------------------------------------------------------
inline unsigned int __float_as_uint(float f) { return std::bit_cast<unsigned int>(f); }
inline float __uint_as_float(unsigned int u) { return std::bit_cast<float>(u); }
inline int __float_as_int(float f) { return std::bit_cast<int>(f); }
inline float __int_as_float(int i) { return std::bit_cast<float>(i); }
inline long long __double_as_longlong(double d) { return std::bit_cast<long long>(d); }
inline double __longlong_as_double(long long l) { return std::bit_cast<double>(l); }
inline int __popc(unsigned int x) { return std::popcount(x); }
inline int __popcll(unsigned long long x) { return std::popcount(x); }
inline int __clz(int x) { return std::countl_zero(static_cast<unsigned int>(x)); }
inline int __clzll(long long x) { return std::countl_zero(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) {
  return x == 0 ? 0 : std::countr_zero(static_cast<unsigned int>(x)) + 1;
}
inline int __ffsll(long long x) {
  return x == 0 ? 0 : std::countr_zero(static_cast<unsigned long long>(x)) + 1;
}
inline unsigned int __brev(unsigned int x) {
  unsigned int r = 0;
  for (int i = 0; i < 32; ++i) {
    r = (r << 1) | ((x >> i) & 1u);
  }
  return r;
}
/// Byte n of the result is byte (s >> 4n) & 7 of the 8 bytes {y, x} (x holds bytes 0-3).
inline unsigned int __byte_perm(unsigned int x, unsigned int y, unsigned int s) {
  const unsigned long long v = (static_cast<unsigned long long>(y) << 32) | x;
  unsigned int r = 0;
  for (int n = 0; n < 4; ++n) {
    const unsigned int byte = static_cast<unsigned int>(v >> (8 * ((s >> (4 * n)) & 7u))) & 0xffu;
    r |= byte << (8 * n);
  }
  return r;
}
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
template <class T>
inline T __ldg(const T* p) {
  return *p;
}

// CUDA's global min/max overloads (mixed signed/unsigned arguments go unsigned, as in CUDA).
#define RQ_EMU_MINMAX(T)                                  \
  inline T min(T a, T b) { return b < a ? b : a; }        \
  inline T max(T a, T b) { return a < b ? b : a; }
RQ_EMU_MINMAX(int)
RQ_EMU_MINMAX(unsigned int)
RQ_EMU_MINMAX(long long)
RQ_EMU_MINMAX(unsigned long long)
RQ_EMU_MINMAX(long)
RQ_EMU_MINMAX(unsigned long)
RQ_EMU_MINMAX(float)
RQ_EMU_MINMAX(double)
#undef RQ_EMU_MINMAX
inline unsigned int min(int a, unsigned int b) { return min(static_cast<unsigned int>(a), b); }
inline unsigned int min(unsigned int a, int b) { return min(a, static_cast<unsigned int>(b)); }
inline unsigned int max(int a, unsigned int b) { return max(static_cast<unsigned int>(a), b); }
inline unsigned int max(unsigned int a, int b) { return max(a, static_cast<unsigned int>(b)); }
