// Portability layer shared by every kernel: under nvcc it is plain CUDA; under a host C++20
// compiler (the `emu` backend) it pulls in the SIMT emulation header instead.
//
// RQ_DYNAMIC_SHARED(T, name) declares `T* name` pointing at the block's dynamic shared memory
// (the launch's `shared_bytes`). It is the only way kernels reach shared memory: no static
// `__shared__` arrays, so the emulator has one per-block allocation to manage.
#pragma once

#ifdef __CUDACC__
#define RQ_DYNAMIC_SHARED(T, name)                                                        \
  extern __shared__ __align__(16) unsigned char rq_dynamic_smem_[];                      \
  T* name = reinterpret_cast<T*>(rq_dynamic_smem_)
#else
#include "emu/cuda_emu.h"
#endif
