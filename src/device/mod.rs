//! The launch abstraction shared by the `emu` and `cuda` backends (DESIGN §5): a [`Device`]
//! allocates buffers, copies bytes in and out, and launches a kernel of `kernels/*.cu` by its
//! `extern "C"` name with `cuLaunchKernel`-style arguments. Host wrappers of the kernels are
//! written once against this trait.
//!
//! Kernel-author conventions (both backends): kernels are `extern "C" __global__ void
//! NAME(...)` in `kernels/*.cu`; parameters are pointers, `int`, `unsigned`, 64-bit integers
//! or `float`, passed in order as [`KernelArg`]s; dynamic shared memory goes through
//! `RQ_DYNAMIC_SHARED(T, name)` from `kernels/rq_shared.cuh`; warp intrinsics use the full
//! mask and are reached by every lane; `__syncthreads` is reached by every thread.

#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "emu")]
pub mod emu;

/// Launch geometry of one kernel launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    /// Blocks per grid (`x`, `y`, `z`).
    pub grid: [u32; 3],
    /// Threads per block (`x`, `y`, `z`).
    pub block: [u32; 3],
    /// Bytes of dynamic shared memory per block.
    pub shared_bytes: u32,
}

impl LaunchConfig {
    /// A one-dimensional launch of `blocks` blocks of `threads` threads, no dynamic shared memory.
    pub fn linear(blocks: u32, threads: u32) -> Self {
        LaunchConfig {
            grid: [blocks, 1, 1],
            block: [threads, 1, 1],
            shared_bytes: 0,
        }
    }

    /// The same launch with `bytes` of dynamic shared memory per block.
    pub fn with_shared(self, bytes: u32) -> Self {
        LaunchConfig {
            shared_bytes: bytes,
            ..self
        }
    }

    /// Threads per block (the product of `block`).
    pub fn threads_per_block(&self) -> u64 {
        self.block.iter().map(|&d| u64::from(d)).product()
    }

    /// Blocks in the grid (the product of `grid`).
    pub fn num_blocks(&self) -> u64 {
        self.grid.iter().map(|&d| u64::from(d)).product()
    }
}

/// One kernel argument, passed like cuLaunchKernel's kernelParams (a pointer to each value).
pub enum KernelArg<'a, B> {
    /// A device buffer, passed as its device pointer.
    Buf(&'a B),
    /// A 32-bit signed integer (`int`).
    I32(i32),
    /// A 32-bit unsigned integer (`unsigned`).
    U32(u32),
    /// A 64-bit signed integer (`long long`, `int64_t`).
    I64(i64),
    /// A 64-bit unsigned integer (`unsigned long long`, `size_t`).
    U64(u64),
    /// A 32-bit float.
    F32(f32),
}

/// A place kernels run: host-emulated (`emu`) or a GPU (`cuda`).
pub trait Device: Send + Sync {
    /// A device allocation.
    type Buffer: Send + Sync;
    /// Short name of the device kind (`emu`, `cuda`).
    fn name(&self) -> &'static str;
    /// Zero-filled device buffer of `bytes` bytes (aligned to at least 256 bytes).
    fn alloc(&self, bytes: usize) -> crate::Result<Self::Buffer>;
    /// Copies `src` into `dst` from byte `at` on (`at + src.len()` must not exceed `dst`).
    fn upload_at(&self, dst: &mut Self::Buffer, at: usize, src: &[u8]) -> crate::Result<()>;
    /// Copies `src` to the start of `dst` (`src` must not be longer than `dst`).
    fn upload(&self, dst: &mut Self::Buffer, src: &[u8]) -> crate::Result<()> {
        self.upload_at(dst, 0, src)
    }
    /// Copies the first `dst.len()` bytes of `src` to `dst` (which must not be longer).
    fn download(&self, src: &Self::Buffer, dst: &mut [u8]) -> crate::Result<()>;
    /// Launches `kernel` (its `extern "C"` name in kernels/*.cu) and checks the launch's error.
    fn launch(
        &self,
        kernel: &str,
        cfg: LaunchConfig,
        args: &[KernelArg<'_, Self::Buffer>],
    ) -> crate::Result<()>;
    /// Waits for all launched work to finish and reports its errors.
    fn synchronize(&self) -> crate::Result<()>;
    /// The most dynamic shared memory (bytes) one block may take so that two blocks fit on a
    /// multiprocessor (the per-block opt-in limit, or half the multiprocessor's memory less
    /// the memory reserved per block, whichever is smaller). Kernels built to run two blocks
    /// per SM size themselves to it. The default, for a device that cannot say: the kernels'
    /// common budget.
    fn shared_bytes_two_blocks(&self) -> usize {
        crate::kernels::MAX_SHARED_BYTES
    }
    /// Runs `f` (which launches work on this device) and times it. The default measures the
    /// wall clock from an idle device to the end of `f`'s work and reports no kernel time;
    /// `cuda` records events on its stream around `f` and around every kernel `f` launches.
    fn time(&self, f: &mut dyn FnMut() -> crate::Result<()>) -> crate::Result<Timing> {
        self.synchronize()?;
        let start = std::time::Instant::now();
        f()?;
        self.synchronize()?;
        Ok(Timing::wall(start.elapsed().as_secs_f64() * 1e3))
    }
}

/// The clock a [`Timing`] was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Clock {
    /// CUDA events recorded on the device's stream (GPU time).
    CudaEvents,
    /// The host's wall clock (CPU backends and the emulator).
    Wall,
}

/// How long one timed region took.
#[derive(Clone, Debug, PartialEq)]
pub struct Timing {
    /// The whole region: uploads, launches, downloads (milliseconds).
    pub ms: f64,
    /// The sum of the kernels launched inside it, when the device can tell (milliseconds).
    pub kernel_ms: Option<f64>,
    /// The kernels launched inside it by name, in order of first launch (empty when the
    /// device cannot tell); their `ms` add up to `kernel_ms`.
    pub kernels: Vec<KernelTime>,
    /// Where the times come from.
    pub clock: Clock,
}

impl Timing {
    /// A wall-clock timing of `ms` milliseconds with no kernel breakdown.
    pub fn wall(ms: f64) -> Self {
        Timing {
            ms,
            kernel_ms: None,
            kernels: Vec::new(),
            clock: Clock::Wall,
        }
    }
}

/// The launches of one kernel inside a timed region.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct KernelTime {
    /// The kernel's `extern "C"` name.
    pub name: String,
    /// How many times it was launched.
    pub launches: usize,
    /// The sum of its launches' times (milliseconds).
    pub ms: f64,
}

/// Typed helpers over any [`Device`], for slices of plain-old-data values.
pub trait DeviceExt: Device {
    /// Zero-filled buffer holding `len` values of `T`.
    fn alloc_zeroed<T: bytemuck::Pod>(&self, len: usize) -> crate::Result<Self::Buffer> {
        let bytes = len.checked_mul(std::mem::size_of::<T>()).ok_or_else(|| {
            crate::Error::Device(format!("buffer of {len} elements overflows usize"))
        })?;
        self.alloc(bytes)
    }
    /// A new buffer holding a copy of `src`.
    fn alloc_from<T: bytemuck::Pod>(&self, src: &[T]) -> crate::Result<Self::Buffer> {
        let mut buf = self.alloc(std::mem::size_of_val(src))?;
        self.upload(&mut buf, bytemuck::cast_slice(src))?;
        Ok(buf)
    }
    /// Copies `src` to the start of `dst`.
    fn upload_slice<T: bytemuck::Pod>(
        &self,
        dst: &mut Self::Buffer,
        src: &[T],
    ) -> crate::Result<()> {
        self.upload(dst, bytemuck::cast_slice(src))
    }
    /// Copies the first `dst.len()` values of `src` to `dst`.
    fn download_slice<T: bytemuck::Pod>(
        &self,
        src: &Self::Buffer,
        dst: &mut [T],
    ) -> crate::Result<()> {
        self.download(src, bytemuck::cast_slice_mut(dst))
    }
    /// The first `len` values of `src`.
    fn download_vec<T: bytemuck::Pod>(
        &self,
        src: &Self::Buffer,
        len: usize,
    ) -> crate::Result<Vec<T>> {
        let mut v = vec![T::zeroed(); len];
        self.download_slice(src, &mut v)?;
        Ok(v)
    }
}

impl<D: Device + ?Sized> DeviceExt for D {}
