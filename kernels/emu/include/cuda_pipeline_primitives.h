// emu shim: CUDA's pipeline primitives (asynchronous global → shared copies, cp.async on
// sm_80+), on the emulator's per-thread copy queues (cuda_emu.h). A GPU lands a copy at some
// moment between its issue and the wait that covers it; the emulator lands it at one end,
// chosen per launch (rq_emu::AsyncLanding; `AsyncCopies` on the Rust side): at the wait, so a
// read before the wait sees the old contents, or at issue, so a copy into a buffer that other
// threads still read overwrites it under them.
#pragma once
#include <cstddef>

#include "cuda_emu.h"

/// Copies `size_and_align` (4, 8 or 16) bytes from `src` to `dst`, the last `zfill` of them
/// as zeros instead.
inline void __pipeline_memcpy_async(void* dst, const void* src, size_t size_and_align,
                                    size_t zfill = 0) {
  ::rq_emu::async_issue(dst, src, size_and_align, zfill);
}

/// Closes the calling thread's current group of copies.
inline void __pipeline_commit() { ::rq_emu::async_commit(); }

/// Waits until at most `prior` of the calling thread's committed groups are pending.
inline void __pipeline_wait_prior(size_t prior) { ::rq_emu::async_wait_prior(prior); }
