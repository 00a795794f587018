// Host-side helpers of the emu runtime that need the C++ toolchain (linked into rq_emu).
#include <cstddef>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

/// Clears AddressSanitizer's stack poisoning of [addr, addr+len): a fiber abandoned in the
/// middle of a kernel (after a reported misuse) leaves its frames' redzones poisoned, and its
/// stack is reused by the next block. A no-op without AddressSanitizer.
extern "C" void rq_emu_unpoison(void* addr, size_t len) {
#if defined(__SANITIZE_ADDRESS__)
  ASAN_UNPOISON_MEMORY_REGION(addr, len);
#else
  (void)addr;
  (void)len;
#endif
}

/// Marks [addr, addr+len) unaddressable for AddressSanitizer: the part of a worker's dynamic
/// shared memory buffer past the launch's size, so a kernel reaching beyond its dynamic shared
/// memory through a raw pointer is reported. A no-op without AddressSanitizer.
extern "C" void rq_emu_poison(void* addr, size_t len) {
#if defined(__SANITIZE_ADDRESS__)
  ASAN_POISON_MEMORY_REGION(addr, len);
#else
  (void)addr;
  (void)len;
#endif
}

/// Whether the kernels were compiled with RQ_EMU_CHECKS (bounds-checked dynamic shared memory).
extern "C" int rq_emu_checks_enabled() {
#ifdef RQ_EMU_CHECKS
  return 1;
#else
  return 0;
#endif
}
