//! The block scheduler: runs the threads of one block as `corosensei` fibers on the calling OS
//! thread. A fiber runs until it reaches a sync point (`__syncthreads*`, a warp intrinsic), a
//! reported misuse, or the end of the kernel. Ready fibers are resumed in FIFO order; a barrier
//! releases the block (in thread order, or reverse thread order with [`FiberOrder::Reverse`])
//! once every thread of the block has arrived; a warp intrinsic releases the warp (likewise
//! ordered) once all 32 lanes have arrived, after exchanging their values.
//! When nothing is ready but threads remain, the block is deadlocked and the culprit reported.

use std::collections::VecDeque;
use std::ffi::c_void;

use corosensei::stack::{DefaultStack, Stack};
use corosensei::{Coroutine, CoroutineResult, Yielder};

use super::ffi::{self, BlockCtx, Entry, ThreadCtx};
use super::tsan::BlockSync;

/// Bytes of stack per fiber (virtual; pages are committed on first touch).
#[cfg(not(rq_emu_asan))]
const STACK_BYTES: usize = 256 * 1024;
/// AddressSanitizer's redzones make frames larger.
#[cfg(rq_emu_asan)]
const STACK_BYTES: usize = 1024 * 1024;

/// One unit of dynamic shared memory, 256-byte aligned.
#[derive(Clone, Copy)]
#[repr(C, align(256))]
struct SmemChunk([u8; 256]);

/// The order in which the fibers of a block start and are released from a sync point.
///
/// Kernels that forget a barrier or a `__syncwarp` may still pass in one order (the reader
/// happens to run after the writer); running them in both orders exposes more such races.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FiberOrder {
    /// Thread 0 first.
    #[default]
    Forward,
    /// The last thread first.
    Reverse,
}

/// When the asynchronous global → shared copies of a kernel (`__pipeline_memcpy_async`,
/// cp.async on a GPU) land in shared memory.
///
/// A GPU lands a copy at some moment between its issue and the `__pipeline_wait_prior` that
/// covers it; a correct kernel must accept both ends. Landing at the wait exposes a read
/// before the wait (or before the barrier after every thread's wait): it sees the old
/// contents. Landing at issue exposes a copy into a buffer that other threads still read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AsyncCopies {
    /// At the wait that covers the copy (or at the end of the thread, if none does).
    #[default]
    AtWait,
    /// At once, when the copy is issued.
    AtIssue,
}

impl AsyncCopies {
    /// `rq_emu_block::async_landing` (`rq_emu::AsyncLanding` in cuda_emu.h).
    fn code(self) -> u32 {
        match self {
            AsyncCopies::AtWait => 0,
            AsyncCopies::AtIssue => 1,
        }
    }
}

/// Everything one launch's blocks share.
pub(crate) struct LaunchSpec {
    pub entry: Entry,
    pub order: FiberOrder,
    pub async_copies: AsyncCopies,
    pub params: *mut *mut c_void,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: usize,
}

// SAFETY: `params` points to the launch's argument block, which outlives the launch's worker
// threads; they only read it.
unsafe impl Send for LaunchSpec {}
// SAFETY: as above.
unsafe impl Sync for LaunchSpec {}

/// A misuse found in one thread of a block: the thread's linear index and what went wrong.
type Fault = (usize, String);

/// A worker's reusable state: fiber stacks, thread contexts and dynamic shared memory.
pub(crate) struct Worker {
    stacks: Vec<DefaultStack>,
    threads: Vec<ThreadCtx>,
    smem: Vec<SmemChunk>,
    block: BlockCtx,
    ready: VecDeque<u32>,
    warp_arrived: Vec<u32>,
    warp_exited: Vec<u32>,
    /// ThreadSanitizer's view of the block's threads and sync points (empty without it).
    sync: BlockSync,
    /// Context switches into fibers so far (for measurements).
    pub switches: u64,
}

// SAFETY: a worker's raw pointers point into its own allocations (or are null between
// blocks); it is used by one OS thread at a time and its fibers never outlive `run_block`.
unsafe impl Send for Worker {}

unsafe extern "C" fn yield_fiber(t: *mut ThreadCtx) {
    // SAFETY: `sched` was set to this fiber's yielder when the fiber started, and the fiber is
    // the one running now.
    unsafe {
        let y = (*t).sched as *const Yielder<(), ()>;
        (*y).suspend(());
    }
}

/// The fibers of one block. Dropping it abandons fibers still suspended inside the kernel
/// (after a reported misuse): their C++ frames are discarded without running destructors,
/// which kernels (plain data on the stack) do not need.
struct Fibers<'s> {
    co: Vec<Coroutine<(), (), (), &'s mut DefaultStack>>,
}

impl Drop for Fibers<'_> {
    fn drop(&mut self) {
        for mut c in self.co.drain(..) {
            if c.started() && !c.done() {
                // SAFETY: the fiber is suspended in `yield_fiber` with only C++ kernel frames
                // and this scheduler's closure above it, none of which needs dropping.
                unsafe { c.force_reset() };
                let stack = c.into_stack();
                let (base, limit) = (stack.base().get(), stack.limit().get());
                // SAFETY: [limit, base) is this fiber's own stack.
                unsafe { ffi::rq_emu_unpoison(limit as *mut c_void, base - limit) };
            }
        }
    }
}

impl Worker {
    /// A worker with no stacks yet.
    pub fn new() -> Self {
        Worker {
            stacks: Vec::new(),
            threads: Vec::new(),
            smem: Vec::new(),
            block: BlockCtx {
                yield_fn: yield_fiber,
                dyn_smem: std::ptr::null_mut(),
                dyn_smem_bytes: 0,
                async_landing: 0,
            },
            ready: VecDeque::new(),
            warp_arrived: Vec::new(),
            warp_exited: Vec::new(),
            sync: BlockSync::new(),
            switches: 0,
        }
    }

    /// Runs block `bid` of the launch; on a misuse returns the message naming the thread.
    pub fn run_block(&mut self, spec: &LaunchSpec, bid: [u32; 3]) -> Result<(), String> {
        let [bx, by, _] = spec.block;
        let n = spec.block.iter().map(|&d| d as usize).product::<usize>();
        self.prepare(spec, bid, n)?;
        self.schedule(spec, n).map_err(|(t, msg)| {
            let linear = t as u32;
            let tid = [linear % bx, (linear / bx) % by, linear / (bx * by)];
            format!(
                "kernel `{}` block ({}, {}, {}) thread ({}, {}, {}): {msg}",
                spec.entry.name, bid[0], bid[1], bid[2], tid[0], tid[1], tid[2]
            )
        })
    }

    fn prepare(&mut self, spec: &LaunchSpec, bid: [u32; 3], n: usize) -> Result<(), String> {
        while self.stacks.len() < n {
            let s = DefaultStack::new(STACK_BYTES)
                .map_err(|e| format!("cannot allocate a fiber stack: {e}"))?;
            self.stacks.push(s);
        }
        let chunks = spec.shared_bytes.div_ceil(256);
        let held = self.smem.len() * 256;
        // SAFETY: the buffer is the worker's own; no fiber runs.
        unsafe { ffi::rq_emu_unpoison(self.smem.as_mut_ptr().cast(), held) };
        if self.smem.len() < chunks {
            self.smem.resize(chunks, SmemChunk([0; 256]));
        }
        let held = self.smem.len() * 256;
        // Under AddressSanitizer, the bytes past the launch's dynamic shared memory are
        // unaddressable: a kernel reaching past it through a raw pointer is reported.
        // SAFETY: [shared_bytes, held) lies within the worker's buffer.
        unsafe {
            ffi::rq_emu_poison(
                self.smem
                    .as_mut_ptr()
                    .cast::<u8>()
                    .add(spec.shared_bytes)
                    .cast(),
                held - spec.shared_bytes,
            )
        };
        if cfg!(debug_assertions) {
            // A NaN pattern, so reads of never-written dynamic shared memory stand out.
            self.smem[..chunks].fill(SmemChunk([0xff; 256]));
        }
        self.block.dyn_smem = self.smem.as_mut_ptr().cast();
        self.block.dyn_smem_bytes = spec.shared_bytes;
        self.block.async_landing = spec.async_copies.code();
        if self.threads.len() < n {
            self.threads.resize_with(n, ThreadCtx::empty);
        }
        let [bx, by, _] = spec.block;
        let block_ptr: *mut BlockCtx = &mut self.block;
        for (i, t) in self.threads[..n].iter_mut().enumerate() {
            let i = i as u32;
            t.thread_idx = [i % bx, (i / bx) % by, i / (bx * by)];
            t.block_idx = bid;
            t.block_dim = spec.block;
            t.grid_dim = spec.grid;
            t.state = 0;
            t.block = block_ptr;
        }
        let warps = n.div_ceil(32);
        self.warp_arrived.clear();
        self.warp_arrived.resize(warps, 0);
        self.warp_exited.clear();
        self.warp_exited.resize(warps, 0);
        self.ready.clear();
        push_range(&mut self.ready, spec.order, 0, n as u32);
        Ok(())
    }

    fn schedule(&mut self, spec: &LaunchSpec, n: usize) -> Result<(), Fault> {
        let mut stacks = std::mem::take(&mut self.stacks);
        let result = self.schedule_on(&mut stacks[..n], spec, n);
        self.stacks = stacks;
        result
    }

    fn schedule_on(
        &mut self,
        stacks: &mut [DefaultStack],
        spec: &LaunchSpec,
        n: usize,
    ) -> Result<(), Fault> {
        let base = self.threads.as_mut_ptr();
        let run = spec.entry.run;
        let params = spec.params;
        let mut fibers = Fibers {
            co: stacks
                .iter_mut()
                .enumerate()
                .map(|(i, stack)| {
                    // SAFETY: `i < n <= threads.len()`, and `threads` is not resized while
                    // the fibers live.
                    let ctx = unsafe { base.add(i) };
                    let body = move |y: &Yielder<(), ()>, ()| {
                        // SAFETY: `ctx` and `params` outlive the fiber (both are owned by the
                        // launch, which drops the fibers before returning).
                        unsafe {
                            (*ctx).sched = y as *const Yielder<(), ()> as *mut c_void;
                            run(params, ctx);
                        }
                    };
                    // SAFETY: the stack borrow outlives the fibers (`Fibers` is dropped at the
                    // end of this function) and the body borrows nothing.
                    unsafe { Coroutine::with_stack_unchecked(stack, body) }
                })
                .collect(),
        };
        self.sync.begin_block(n);
        let result = self.drive(&mut fibers, spec, n);
        let abandoned = (0..n).filter(|&t| fibers.co[t].started() && !fibers.co[t].done());
        self.sync.end_block(abandoned);
        result
    }

    /// Resumes the ready fibers until every thread has ended or a misuse is found.
    fn drive(&mut self, fibers: &mut Fibers<'_>, spec: &LaunchSpec, n: usize) -> Result<(), Fault> {
        let base = self.threads.as_mut_ptr();
        let warps_ok = n % 32 == 0;
        let mut at_barrier = 0usize;
        let mut exited = 0usize;
        let mut first_exited = 0usize;
        while let Some(t) = self.ready.pop_front() {
            let t = t as usize;
            self.switches += 1;
            let w = t / 32;
            self.sync.enter(t, fibers.co[t].started());
            let resumed = fibers.co[t].resume(());
            // SAFETY: `t < n`; the fiber has returned or is suspended, so nothing else
            // accesses its context.
            let (state, op) = unsafe { ((*base.add(t)).state, (*base.add(t)).op) };
            let done = matches!(resumed, CoroutineResult::Return(()));
            self.sync.leave(t, done, state, op);
            match resumed {
                CoroutineResult::Return(()) => {
                    if exited == 0 {
                        first_exited = t;
                    }
                    exited += 1;
                    self.warp_exited[w] += 1;
                    if at_barrier > 0 {
                        return Err((
                            t,
                            format!(
                                "exited while {at_barrier} threads of its block wait at \
                                 __syncthreads (every thread must reach every __syncthreads)"
                            ),
                        ));
                    }
                    if self.warp_arrived[w] > 0 {
                        let op = self.first_waiting_op(w, n);
                        return Err((
                            t,
                            format!(
                                "exited while lanes of its warp wait at {} (full-mask warp \
                                 intrinsics must be reached by all 32 lanes)",
                                ffi::warp_op_name(op)
                            ),
                        ));
                    }
                }
                CoroutineResult::Yield(()) => {
                    match state {
                        ffi::STATE_BARRIER => {
                            if exited > 0 {
                                return Err((
                                    t,
                                    format!(
                                        "reached {} after thread {} of its block exited (every \
                                         thread must reach every __syncthreads)",
                                        ffi::barrier_op_name(op),
                                        self.thread_name(spec, first_exited)
                                    ),
                                ));
                            }
                            at_barrier += 1;
                            if at_barrier == n {
                                // SAFETY: all n fibers are suspended at the barrier.
                                unsafe { release_barrier(base, n)? };
                                self.sync.barrier_completed();
                                at_barrier = 0;
                                push_range(&mut self.ready, spec.order, 0, n as u32);
                            }
                        }
                        ffi::STATE_WARP => {
                            if !warps_ok {
                                return Err((
                                    t,
                                    format!(
                                        "{} in a block of {n} threads: blocks using warp \
                                         intrinsics must have a multiple of 32 threads",
                                        ffi::warp_op_name(op)
                                    ),
                                ));
                            }
                            if self.warp_exited[w] > 0 {
                                return Err((
                                    t,
                                    format!(
                                        "reached {} after a lane of its warp exited (full-mask \
                                         warp intrinsics must be reached by all 32 lanes)",
                                        ffi::warp_op_name(op)
                                    ),
                                ));
                            }
                            self.warp_arrived[w] += 1;
                            if self.warp_arrived[w] == 32 {
                                // SAFETY: the warp's 32 fibers are suspended at a warp op.
                                unsafe { resolve_warp(base, w)? };
                                self.sync.warp_op_completed(w);
                                self.warp_arrived[w] = 0;
                                let first = (w * 32) as u32;
                                push_range(&mut self.ready, spec.order, first, first + 32);
                            }
                        }
                        ffi::STATE_FAILED => {
                            // SAFETY: as above.
                            return Err((t, unsafe { (*base.add(t)).message() }));
                        }
                        other => {
                            return Err((t, format!("suspended in unknown state {other}")));
                        }
                    }
                }
            }
        }
        if exited < n {
            return Err(self.diagnose_deadlock(n));
        }
        Ok(())
    }

    fn thread_name(&self, spec: &LaunchSpec, t: usize) -> String {
        let [bx, by, _] = spec.block;
        let t = t as u32;
        format!("({}, {}, {})", t % bx, (t / bx) % by, t / (bx * by))
    }

    /// The op of the first lane of warp `w` waiting at a warp intrinsic.
    fn first_waiting_op(&self, w: usize, n: usize) -> u32 {
        self.threads[w * 32..(w * 32 + 32).min(n)]
            .iter()
            .find(|t| t.state == ffi::STATE_WARP)
            .map_or(0, |t| t.op)
    }

    /// Nothing is ready but some threads have not finished: some lanes of a warp wait at a
    /// warp intrinsic while others wait at a barrier.
    fn diagnose_deadlock(&self, n: usize) -> Fault {
        for w in 0..n.div_ceil(32) {
            if self.warp_arrived[w] == 0 {
                continue;
            }
            let lanes = w * 32..(w * 32 + 32).min(n);
            let at_warp = lanes
                .clone()
                .find(|&t| self.threads[t].state == ffi::STATE_WARP);
            let at_bar = lanes
                .clone()
                .find(|&t| self.threads[t].state == ffi::STATE_BARRIER);
            if let (Some(a), Some(b)) = (at_warp, at_bar) {
                return (
                    a,
                    format!(
                        "deadlock: waits at {} while lane {} of its warp waits at {}",
                        ffi::warp_op_name(self.threads[a].op),
                        b % 32,
                        ffi::barrier_op_name(self.threads[b].op)
                    ),
                );
            }
        }
        let first = (0..n)
            .find(|&t| self.threads[t].state != 0)
            .unwrap_or_default();
        (
            first,
            "deadlock: no thread of the block can make progress".to_string(),
        )
    }
}

/// Queues threads `lo..hi` in `order`.
fn push_range(ready: &mut VecDeque<u32>, order: FiberOrder, lo: u32, hi: u32) {
    match order {
        FiberOrder::Forward => ready.extend(lo..hi),
        FiberOrder::Reverse => ready.extend((lo..hi).rev()),
    }
}

/// Completes a barrier: all `n` threads wait at it.
///
/// # Safety
/// `base` points to `n` thread contexts whose fibers are all suspended.
unsafe fn release_barrier(base: *mut ThreadCtx, n: usize) -> Result<(), Fault> {
    // SAFETY: per the contract.
    let threads = unsafe { std::slice::from_raw_parts_mut(base, n) };
    let op = threads[0].op;
    if let Some(t) = threads.iter().position(|t| t.op != op) {
        return Err((
            t,
            format!(
                "reached {} while thread 0 of its block is at {}",
                ffi::barrier_op_name(threads[t].op),
                ffi::barrier_op_name(op)
            ),
        ));
    }
    let count = threads.iter().filter(|t| t.value != 0).count() as u64;
    let result = match op {
        ffi::BAR_COUNT => count,
        ffi::BAR_AND => u64::from(count == n as u64),
        ffi::BAR_OR => u64::from(count > 0),
        _ => 0,
    };
    for t in threads {
        t.result = result;
    }
    Ok(())
}

/// Completes a warp intrinsic: all 32 lanes of warp `w` wait at one.
///
/// # Safety
/// `base` points to thread contexts covering warp `w`, whose fibers are all suspended.
unsafe fn resolve_warp(base: *mut ThreadCtx, w: usize) -> Result<(), Fault> {
    // SAFETY: per the contract.
    let lanes = unsafe { std::slice::from_raw_parts_mut(base.add(w * 32), 32) };
    let (op, width) = (lanes[0].op, lanes[0].width);
    if let Some(l) = lanes.iter().position(|t| t.op != op || t.width != width) {
        return Err((
            w * 32 + l,
            format!(
                "reached {} (width {}) while lane 0 of its warp is at {} (width {}): the lanes \
                 of a warp must reach the same warp intrinsics",
                ffi::warp_op_name(lanes[l].op),
                lanes[l].width,
                ffi::warp_op_name(op),
                width
            ),
        ));
    }
    let mut vals = [0u64; 32];
    for (v, t) in vals.iter_mut().zip(lanes.iter()) {
        *v = t.value;
    }
    let ballot = vals
        .iter()
        .enumerate()
        .fold(0u64, |m, (l, &v)| m | (u64::from(v != 0) << l));
    let wd = width as usize;
    for (l, t) in lanes.iter_mut().enumerate() {
        let seg = l & !(wd - 1);
        let pos = l & (wd - 1);
        let arg = t.arg;
        t.result = match op {
            ffi::W_SHFL_IDX => vals[seg + (arg as usize & (wd - 1))],
            ffi::W_SHFL_UP => {
                let d = arg as u32 as usize;
                if pos >= d {
                    vals[l - d]
                } else {
                    vals[l]
                }
            }
            ffi::W_SHFL_DOWN => {
                let d = arg as u32 as usize;
                if pos + d < wd {
                    vals[l + d]
                } else {
                    vals[l]
                }
            }
            ffi::W_SHFL_XOR => {
                // As PTX `shfl.bfly`: a source past the end of the lane's segment (including
                // any lane mask of 32 or more) yields the lane's own value.
                let src = l ^ (arg as u32 as usize);
                if src < seg + wd {
                    vals[src]
                } else {
                    vals[l]
                }
            }
            ffi::W_BALLOT => ballot,
            ffi::W_ANY => u64::from(ballot != 0),
            ffi::W_ALL => u64::from(ballot == 0xffff_ffff),
            ffi::W_SYNCWARP => 0,
            ffi::W_ACTIVEMASK => 0xffff_ffff,
            other => return Err((w * 32 + l, format!("unknown warp intrinsic code {other}"))),
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abi_layout_matches_the_header() {
        assert_eq!(std::mem::size_of::<ThreadCtx>(), 296);
        assert_eq!(std::mem::offset_of!(ThreadCtx, value), 64);
        assert_eq!(std::mem::offset_of!(ThreadCtx, block), 80);
        assert_eq!(std::mem::offset_of!(ThreadCtx, msg), 96);
        assert_eq!(std::mem::size_of::<BlockCtx>(), 32);
        assert_eq!(std::mem::offset_of!(BlockCtx, async_landing), 24);
    }
}
