// emu shim: CUDA's pipeline primitives (asynchronous global → shared copies, cp.async on
// sm_80+). The emulator copies at once: a copy may land any time before the wait that covers
// it, so landing at issue is one of the behaviours a correct kernel must already accept (it
// cannot expose a missing wait; the reverse fiber order and the GPU tests remain for that).
#pragma once
#include <cstddef>
#include <cstring>

#include "cuda_emu.h"

/// Copies `size_and_align` (4, 8 or 16) bytes from `src` to `dst`, the last `zfill` of them
/// as zeros instead.
inline void __pipeline_memcpy_async(void* dst, const void* src, size_t size_and_align,
                                    size_t zfill = 0) {
  std::memcpy(dst, src, size_and_align - zfill);
  std::memset(static_cast<char*>(dst) + (size_and_align - zfill), 0, zfill);
}

/// Closes the current group of copies (nothing to do: they have landed).
inline void __pipeline_commit() {}

/// Waits until at most `prior` groups are pending (none ever are).
inline void __pipeline_wait_prior(size_t) {}
