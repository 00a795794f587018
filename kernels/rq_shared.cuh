// Dynamic shared memory through one macro, for both the nvcc and the emu build.
//
//   RQ_DYNAMIC_SHARED(float, smem);   // smem[i] addresses the launch's dynamic shared memory
//
// nvcc: `smem` is a `T*` into `extern __shared__` storage aligned to 16 bytes.
// emu:  `smem` is a `T*` in release builds; with RQ_EMU_CHECKS (debug builds) it is a checked
//       pointer whose indexing (and offsets `smem + k`) is bounds-checked against the launch's
//       `shared_bytes`; an out-of-bounds access is reported as a launch error naming the
//       kernel, block and thread. Raw pointers obtained by casts are not checked.
#pragma once

#ifdef RQ_EMU
#define RQ_DYNAMIC_SHARED(T, name) auto name = ::rq_emu::dynamic_shared<T>()
#else
#define RQ_DYNAMIC_SHARED(T, name)                                                     \
  extern __shared__ __align__(16) unsigned char rq_dynamic_smem_[];                    \
  T* name = reinterpret_cast<T*>(rq_dynamic_smem_)
#endif
