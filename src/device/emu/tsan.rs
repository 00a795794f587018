//! ThreadSanitizer annotations of the block scheduler (cfg `rq_emu_tsan`, set by
//! `RQTREE_EMU_TSAN=1`; `scripts/emu-tsan.sh`). Every thread of a block is announced as a
//! ThreadSanitizer fiber, switched to just before the scheduler resumes it, without the
//! synchronisation such a switch implies by default. So the only happens-before edges between
//! the threads of a block are the ones CUDA's memory model gives, which [`BlockSync`] adds:
//!
//! * `__syncthreads` (and `_count`/`_and`/`_or`): every thread releases the barrier's sync
//!   object on arrival and acquires it when the barrier lets it go;
//! * `__syncwarp`: the same, per warp. The other warp intrinsics (shuffles, votes) exchange
//!   values but order no memory, as on a GPU;
//! * a block's threads start after everything their worker did before (the previous blocks
//!   and launches), and the worker goes on after every thread of the block has ended.
//!
//! A thread reading another's write with no such edge between them (a missing barrier or
//! `__syncwarp`) is then a data race that ThreadSanitizer reports, whatever order the fibers
//! ran in. The blocks one worker runs are ordered (they reuse its shared memory), so races
//! between blocks are not reported. Without the cfg, [`BlockSync`] is empty and does nothing.

#[cfg(rq_emu_tsan)]
pub(crate) use annotated::{ordered, BlockSync};
#[cfg(not(rq_emu_tsan))]
pub(crate) use plain::{ordered, BlockSync};

#[cfg(rq_emu_tsan)]
mod sys {
    use std::ffi::{c_uint, c_void};

    /// `__tsan_switch_to_fiber_no_sync`: the switch orders nothing.
    pub const NO_SYNC: c_uint = 1;

    extern "C" {
        pub fn __tsan_get_current_fiber() -> *mut c_void;
        pub fn __tsan_create_fiber(flags: c_uint) -> *mut c_void;
        pub fn __tsan_destroy_fiber(fiber: *mut c_void);
        pub fn __tsan_switch_to_fiber(fiber: *mut c_void, flags: c_uint);
        pub fn __tsan_acquire(addr: *mut c_void);
        pub fn __tsan_release(addr: *mut c_void);
    }
}

#[cfg(rq_emu_tsan)]
mod annotated {
    use std::ffi::c_void;

    use super::sys;
    use crate::device::emu::ffi;

    /// Sync objects: only their addresses matter (one byte each).
    const BEGIN: usize = 0;
    const END: usize = 1;
    const BARRIER: usize = 2;
    const WARP: usize = 4;
    /// Warps of the largest block (1024 threads).
    const MAX_WARPS: usize = 32;

    /// Runs `launch`, which the caller runs while no other launch of the process runs,
    /// ordered after the launches before it for ThreadSanitizer (the lock that serialises
    /// them is invisible to it: the Rust side is not instrumented).
    pub(crate) fn ordered<R>(launch: impl FnOnce() -> R) -> R {
        static LAUNCHES: u8 = 0;
        let order = (&LAUNCHES as *const u8).cast_mut().cast();
        // SAFETY: the address names a sync object; nothing is accessed.
        unsafe { sys::__tsan_acquire(order) };
        let result = launch();
        // SAFETY: as above.
        unsafe { sys::__tsan_release(order) };
        result
    }

    /// A worker's fibers and the sync objects of the block it runs.
    pub(crate) struct BlockSync {
        fibers: Vec<*mut c_void>,
        /// The worker's own fiber while it runs a block.
        worker: *mut c_void,
        /// Heap-allocated so their addresses stay put while the worker moves.
        objects: Box<[u8; WARP + 2 * MAX_WARPS]>,
        /// Per thread: the object to acquire when it is next resumed (after a sync point).
        pending: Vec<Option<usize>>,
        barriers: usize,
        warp_ops: Vec<usize>,
    }

    impl BlockSync {
        pub fn new() -> Self {
            BlockSync {
                fibers: Vec::new(),
                worker: std::ptr::null_mut(),
                objects: Box::new([0; WARP + 2 * MAX_WARPS]),
                pending: Vec::new(),
                barriers: 0,
                warp_ops: Vec::new(),
            }
        }

        fn object(&self, i: usize) -> *mut c_void {
            (&self.objects[i] as *const u8).cast_mut().cast()
        }

        fn release(&self, i: usize) {
            // SAFETY: the address names a sync object; nothing is accessed.
            unsafe { sys::__tsan_release(self.object(i)) };
        }

        fn acquire(&self, i: usize) {
            // SAFETY: as in `release`.
            unsafe { sys::__tsan_acquire(self.object(i)) };
        }

        fn switch_to(fiber: *mut c_void) {
            // SAFETY: `fiber` is live (made by `__tsan_create_fiber` or the current one).
            unsafe { sys::__tsan_switch_to_fiber(fiber, sys::NO_SYNC) };
        }

        /// A block of `n` threads starts on the calling (worker) thread.
        pub fn begin_block(&mut self, n: usize) {
            while self.fibers.len() < n {
                // SAFETY: creates runtime state only.
                self.fibers.push(unsafe { sys::__tsan_create_fiber(0) });
            }
            // SAFETY: a query of the runtime's state.
            self.worker = unsafe { sys::__tsan_get_current_fiber() };
            self.pending.clear();
            self.pending.resize(n, None);
            self.barriers = 0;
            self.warp_ops.clear();
            self.warp_ops.resize(n.div_ceil(32), 0);
            self.release(BEGIN);
        }

        /// Thread `t` is about to be resumed (`started`: not for the first time).
        pub fn enter(&mut self, t: usize, started: bool) {
            Self::switch_to(self.fibers[t]);
            if !started {
                self.acquire(BEGIN);
            } else if let Some(i) = self.pending[t].take() {
                self.acquire(i);
            }
        }

        /// Thread `t` has returned to the scheduler: ended (`done`), or suspended at the sync
        /// point `state`/`op` of its context. Switches back to the worker.
        pub fn leave(&mut self, t: usize, done: bool, state: u32, op: u32) {
            let object = if done {
                Some(END)
            } else if state == ffi::STATE_BARRIER {
                Some(BARRIER + self.barriers % 2)
            } else if state == ffi::STATE_WARP && op == ffi::W_SYNCWARP {
                Some(WARP + 2 * (t / 32) + self.warp_ops[t / 32] % 2)
            } else {
                None
            };
            if let Some(i) = object {
                self.release(i);
                if !done {
                    self.pending[t] = Some(i);
                }
            }
            Self::switch_to(self.worker);
        }

        /// Every thread of the block has arrived at a barrier.
        pub fn barrier_completed(&mut self) {
            self.barriers += 1;
        }

        /// Every lane of warp `w` has arrived at a warp intrinsic.
        pub fn warp_op_completed(&mut self, w: usize) {
            self.warp_ops[w] += 1;
        }

        /// The block is over; `abandoned` lists the threads left suspended after a misuse.
        /// Their history is released too, then the worker acquires every thread's.
        pub fn end_block(&mut self, abandoned: impl Iterator<Item = usize>) {
            for t in abandoned {
                Self::switch_to(self.fibers[t]);
                self.release(END);
                Self::switch_to(self.worker);
            }
            self.acquire(END);
        }
    }

    impl Drop for BlockSync {
        fn drop(&mut self) {
            for f in self.fibers.drain(..) {
                // SAFETY: made by `__tsan_create_fiber`; no block runs, so none is current.
                unsafe { sys::__tsan_destroy_fiber(f) };
            }
        }
    }
}

#[cfg(not(rq_emu_tsan))]
mod plain {
    /// Runs `launch` (no ordering to announce without ThreadSanitizer).
    #[inline(always)]
    pub(crate) fn ordered<R>(launch: impl FnOnce() -> R) -> R {
        launch()
    }

    /// Without ThreadSanitizer: nothing to announce.
    pub(crate) struct BlockSync;

    impl BlockSync {
        pub fn new() -> Self {
            BlockSync
        }
        #[inline(always)]
        pub fn begin_block(&mut self, _n: usize) {}
        #[inline(always)]
        pub fn enter(&mut self, _t: usize, _started: bool) {}
        #[inline(always)]
        pub fn leave(&mut self, _t: usize, _done: bool, _state: u32, _op: u32) {}
        #[inline(always)]
        pub fn barrier_completed(&mut self) {}
        #[inline(always)]
        pub fn warp_op_completed(&mut self, _w: usize) {}
        #[inline(always)]
        pub fn end_block(&mut self, _abandoned: impl Iterator<Item = usize>) {}
    }
}
