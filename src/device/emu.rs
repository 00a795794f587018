//! The `emu` device: the kernels of `kernels/*.cu` compiled by the host C++ compiler against
//! `kernels/emu/cuda_emu.h` (see `build_support/emu.rs`) and run on the CPU.
//!
//! Blocks run on a pool of worker OS threads, one block per worker at a time; the threads of
//! a block run as fibers on their worker (`src/device/emu/sched.rs`). Launches are
//! synchronous. Misuse found while running (partial warp masks, divergent barriers,
//! out-of-bounds dynamic shared memory in debug builds, …) comes back from
//! [`Device::launch`] as [`Error::Device`] naming the kernel, block and thread. See
//! `kernels/emu/README.md` for the emulation model and the kernel-author conventions.

mod ffi;
mod sched;
mod tsan;

#[cfg(target_endian = "big")]
compile_error!("the emu backend passes kernel arguments in little-endian 8-byte slots");

use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use super::{Device, KernelArg, LaunchConfig};
use crate::error::{Error, Result};
pub use sched::{AsyncCopies, FiberOrder};
use sched::{LaunchSpec, Worker};

/// Alignment of every [`EmuBuffer`].
const BUFFER_ALIGN: usize = 256;
/// Largest dynamic shared memory per block (an H100/H200 block's opt-in maximum).
pub const MAX_SHARED_BYTES: u32 = 227 * 1024;
/// [`Device::shared_bytes_two_blocks`] of the emulator: an H200's (228 KiB per
/// multiprocessor, 1 KiB reserved per block), so the emulator runs the kernels with the
/// shared-memory layouts they get on the lent GPU.
const SHARED_BYTES_TWO_BLOCKS: usize = 228 * 1024 / 2 - 1024;
/// Largest number of threads per block.
pub const MAX_THREADS_PER_BLOCK: u64 = 1024;

/// Host memory standing in for a device allocation (zero-filled, 256-byte aligned).
pub struct EmuBuffer {
    ptr: NonNull<u8>,
    bytes: usize,
}

// SAFETY: the buffer owns its allocation; kernels and copies access it through raw pointers.
unsafe impl Send for EmuBuffer {}
// SAFETY: as above; `&EmuBuffer` exposes no references into the memory.
unsafe impl Sync for EmuBuffer {}

impl EmuBuffer {
    fn layout(bytes: usize) -> Result<std::alloc::Layout> {
        std::alloc::Layout::from_size_align(bytes.max(1), BUFFER_ALIGN)
            .map_err(|e| Error::Device(format!("emu: cannot allocate {bytes} bytes: {e}")))
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Whether the buffer holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// The address kernels see.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for EmuBuffer {
    fn drop(&mut self) {
        if let Ok(layout) = Self::layout(self.bytes) {
            // SAFETY: allocated in `EmuDevice::alloc` with this layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) };
        }
    }
}

impl std::fmt::Debug for EmuBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EmuBuffer({} bytes at {:p})", self.bytes, self.ptr)
    }
}

/// Whether static `__shared__` variables are plain statics (under AddressSanitizer or
/// ThreadSanitizer, which do not check thread-local storage; `kernels/emu/cuda_emu.h`): then
/// launches run one at a time in the process and their blocks one after another, so a static
/// is private to the block running.
const STATIC_SHARED_IS_GLOBAL: bool = cfg!(rq_emu_asan) || cfg!(rq_emu_tsan);

/// The host-emulated device.
pub struct EmuDevice {
    workers: usize,
    order: FiberOrder,
    async_copies: AsyncCopies,
    pool: Mutex<Vec<Worker>>,
    switches: AtomicU64,
    uploads: AtomicU64,
}

impl Default for EmuDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for EmuDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "EmuDevice({} workers, {:?} fiber order, async copies land {:?})",
            self.workers, self.order, self.async_copies
        )
    }
}

impl EmuDevice {
    /// A device with one worker per available CPU, or `RQTREE_EMU_WORKERS` workers when that
    /// environment variable holds a positive integer; fibers in [`FiberOrder::Reverse`] when
    /// `RQTREE_EMU_ORDER=reverse`, else forward; asynchronous copies landing
    /// [`AsyncCopies::AtIssue`] when `RQTREE_EMU_ASYNC=issue`, else at their wait.
    pub fn new() -> Self {
        let workers = std::env::var("RQTREE_EMU_WORKERS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let order = match std::env::var("RQTREE_EMU_ORDER").as_deref() {
            Ok("reverse") => FiberOrder::Reverse,
            _ => FiberOrder::Forward,
        };
        let async_copies = match std::env::var("RQTREE_EMU_ASYNC").as_deref() {
            Ok("issue") => AsyncCopies::AtIssue,
            _ => AsyncCopies::AtWait,
        };
        Self::with_workers(workers)
            .with_order(order)
            .with_async_copies(async_copies)
    }

    /// A device running blocks on `workers` OS threads (at least one).
    pub fn with_workers(workers: usize) -> Self {
        EmuDevice {
            workers: workers.max(1),
            order: FiberOrder::Forward,
            async_copies: AsyncCopies::AtWait,
            pool: Mutex::new(Vec::new()),
            switches: AtomicU64::new(0),
            uploads: AtomicU64::new(0),
        }
    }

    /// The same device running the fibers of each block in `order`.
    pub fn with_order(self, order: FiberOrder) -> Self {
        EmuDevice { order, ..self }
    }

    /// The order fibers run in.
    pub fn order(&self) -> FiberOrder {
        self.order
    }

    /// The same device landing asynchronous copies as `async_copies` says.
    pub fn with_async_copies(self, async_copies: AsyncCopies) -> Self {
        EmuDevice {
            async_copies,
            ..self
        }
    }

    /// When asynchronous copies land.
    pub fn async_copies(&self) -> AsyncCopies {
        self.async_copies
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Names of all kernels compiled into this build, sorted.
    pub fn kernels() -> Vec<&'static str> {
        let mut names: Vec<&'static str> = ffi::registry().keys().copied().collect();
        names.sort_unstable();
        names
    }

    /// Whether a kernel named `name` is compiled into this build.
    pub fn has_kernel(name: &str) -> bool {
        ffi::registry().contains_key(name)
    }

    /// Whether the kernels were built with debug checks (bounds-checked dynamic shared
    /// memory); on in debug profiles.
    pub fn bounds_checks() -> bool {
        // SAFETY: a pure function without arguments.
        unsafe { ffi::rq_emu_checks_enabled() != 0 }
    }

    /// Host-to-device copies (non-empty uploads) made so far.
    pub fn uploads(&self) -> u64 {
        self.uploads.load(Ordering::Relaxed)
    }

    /// Fiber context switches performed by this device's launches so far.
    pub fn context_switches(&self) -> u64 {
        self.switches.load(Ordering::Relaxed)
    }

    fn check_config(kernel: &str, cfg: &LaunchConfig) -> Result<()> {
        let bad = |what: String| {
            Err(Error::Device(format!(
                "emu: invalid launch configuration for `{kernel}` ({cfg:?}): {what}"
            )))
        };
        if cfg.grid.contains(&0) || cfg.block.contains(&0) {
            return bad("every grid and block dimension must be at least 1".into());
        }
        if cfg.threads_per_block() > MAX_THREADS_PER_BLOCK
            || cfg.block[0] > 1024
            || cfg.block[1] > 1024
            || cfg.block[2] > 64
        {
            return bad(format!(
                "at most {MAX_THREADS_PER_BLOCK} threads per block (x, y ≤ 1024, z ≤ 64)"
            ));
        }
        if cfg.grid[0] > i32::MAX as u32 || cfg.grid[1] > 65535 || cfg.grid[2] > 65535 {
            return bad("grid dimensions exceed (2^31 - 1, 65535, 65535)".into());
        }
        if cfg.shared_bytes > MAX_SHARED_BYTES {
            return bad(format!(
                "at most {MAX_SHARED_BYTES} bytes of dynamic shared memory per block"
            ));
        }
        Ok(())
    }

    fn run_blocks(&self, spec: &LaunchSpec, blocks: u64) -> Result<()> {
        if STATIC_SHARED_IS_GLOBAL {
            static LAUNCHES: Mutex<()> = Mutex::new(());
            let _one_at_a_time = LAUNCHES.lock().unwrap_or_else(|e| e.into_inner());
            tsan::ordered(|| self.run_blocks_on_workers(spec, blocks))
        } else {
            self.run_blocks_on_workers(spec, blocks)
        }
    }

    fn run_blocks_on_workers(&self, spec: &LaunchSpec, blocks: u64) -> Result<()> {
        let next = AtomicU64::new(0);
        let abort = AtomicBool::new(false);
        let first_error: Mutex<Option<(u64, String)>> = Mutex::new(None);
        let work = || {
            let mut worker = self.take_worker();
            while !abort.load(Ordering::Relaxed) {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= blocks {
                    break;
                }
                let gx = u64::from(spec.grid[0]);
                let gy = u64::from(spec.grid[1]);
                let bid = [
                    (b % gx) as u32,
                    ((b / gx) % gy) as u32,
                    (b / (gx * gy)) as u32,
                ];
                if let Err(msg) = worker.run_block(spec, bid) {
                    abort.store(true, Ordering::Relaxed);
                    let mut slot = first_error.lock().unwrap_or_else(|e| e.into_inner());
                    if slot.as_ref().is_none_or(|(fb, _)| b < *fb) {
                        *slot = Some((b, msg));
                    }
                }
            }
            self.switches
                .fetch_add(std::mem::take(&mut worker.switches), Ordering::Relaxed);
            self.pool
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(worker);
        };
        let workers = (self.workers as u64).min(blocks) as usize;
        if workers <= 1 || STATIC_SHARED_IS_GLOBAL {
            work();
        } else {
            std::thread::scope(|s| {
                for _ in 1..workers {
                    s.spawn(work);
                }
                work();
            });
        }
        match first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some((_, msg)) => Err(Error::Device(msg)),
            None => Ok(()),
        }
    }

    fn take_worker(&self) -> Worker {
        self.pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_else(Worker::new)
    }
}

impl<B> KernelArg<'_, B> {
    /// The signature character of this argument (see `kernels/emu/cuda_emu.h`).
    fn code(&self) -> char {
        match self {
            KernelArg::Buf(_) => 'p',
            KernelArg::I32(_) => 'i',
            KernelArg::U32(_) => 'u',
            KernelArg::I64(_) => 'l',
            KernelArg::U64(_) => 'm',
            KernelArg::F32(_) => 'f',
        }
    }
}

/// A signature string spelled out with C types.
fn spell(sig: impl Iterator<Item = char>) -> String {
    let names: Vec<&str> = sig
        .map(|c| match c {
            'p' => "pointer",
            'i' => "int",
            'u' => "unsigned",
            'l' => "int64",
            'm' => "uint64",
            'f' => "float",
            _ => "?",
        })
        .collect();
    format!("({})", names.join(", "))
}

impl Device for EmuDevice {
    type Buffer = EmuBuffer;

    fn name(&self) -> &'static str {
        "emu"
    }

    fn shared_bytes_two_blocks(&self) -> usize {
        SHARED_BYTES_TWO_BLOCKS
    }

    fn alloc(&self, bytes: usize) -> Result<EmuBuffer> {
        let layout = EmuBuffer::layout(bytes)?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr)
            .ok_or_else(|| Error::Device(format!("emu: out of memory allocating {bytes} bytes")))?;
        Ok(EmuBuffer { ptr, bytes })
    }

    fn upload_at(&self, dst: &mut EmuBuffer, at: usize, src: &[u8]) -> Result<()> {
        if at.checked_add(src.len()).is_none_or(|end| end > dst.bytes) {
            return Err(Error::Device(format!(
                "emu: upload of {} bytes at byte {at} into a {}-byte buffer",
                src.len(),
                dst.bytes
            )));
        }
        if !src.is_empty() {
            self.uploads.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: `dst` holds at least `at + src.len()` bytes and is exclusively borrowed.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.ptr.as_ptr().add(at), src.len()) };
        Ok(())
    }

    fn download(&self, src: &EmuBuffer, dst: &mut [u8]) -> Result<()> {
        if dst.len() > src.bytes {
            return Err(Error::Device(format!(
                "emu: download of {} bytes from a {}-byte buffer",
                dst.len(),
                src.bytes
            )));
        }
        // SAFETY: `src` holds at least `dst.len()` bytes; no kernel runs (launches are
        // synchronous).
        unsafe { std::ptr::copy_nonoverlapping(src.ptr.as_ptr(), dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn launch(
        &self,
        kernel: &str,
        cfg: LaunchConfig,
        args: &[KernelArg<'_, EmuBuffer>],
    ) -> Result<()> {
        let entry = *ffi::registry().get(kernel).ok_or_else(|| {
            Error::Device(format!("emu: no kernel named `{kernel}` in this build"))
        })?;
        Self::check_config(kernel, &cfg)?;
        if !args.iter().map(KernelArg::code).eq(entry.sig.chars()) {
            return Err(Error::Device(format!(
                "emu: kernel `{kernel}` takes {} but was launched with {}",
                spell(entry.sig.chars()),
                spell(args.iter().map(KernelArg::code))
            )));
        }
        // One 8-byte slot per argument; `params[i]` points at slot i, as for cuLaunchKernel.
        let mut slots: Vec<u64> = args
            .iter()
            .map(|a| match *a {
                KernelArg::Buf(b) => b.as_ptr() as usize as u64,
                KernelArg::I32(v) => u64::from(v as u32),
                KernelArg::U32(v) => u64::from(v),
                KernelArg::I64(v) => v as u64,
                KernelArg::U64(v) => v,
                KernelArg::F32(v) => u64::from(v.to_bits()),
            })
            .collect();
        let mut params: Vec<*mut c_void> = slots
            .iter_mut()
            .map(|s| s as *mut u64 as *mut c_void)
            .collect();
        let spec = LaunchSpec {
            entry,
            order: self.order,
            async_copies: self.async_copies,
            params: params.as_mut_ptr(),
            grid: cfg.grid,
            block: cfg.block,
            shared_bytes: cfg.shared_bytes as usize,
        };
        self.run_blocks(&spec, cfg.num_blocks())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}
