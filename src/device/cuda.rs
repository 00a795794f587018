//! The `cuda` device: the kernels of `kernels/*.cu`, compiled by build.rs into fatbins
//! (`compute_80` PTX + `sm_90` code) and embedded, launched through cudarc's driver API with
//! the driver library loaded dynamically. One context, one stream; every kernel image is
//! loaded once at [`CudaDevice::open`], functions are looked up once and cached by name.

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    result, sys, CudaContext, CudaEvent, CudaSlice, CudaStream, DevicePtr, DevicePtrMut,
    PinnedHostSlice,
};
use rayon::prelude::*;

use crate::device::{Clock, Device, KernelArg, KernelTime, LaunchConfig, Timing};
use crate::error::{Error, Result};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// Uploads and downloads of at least this many bytes go through page-locked staging memory.
const STAGED_BYTES: usize = 256 << 10;
/// Bytes of each of the two halves of the staging memory (a transfer moves in chunks of at
/// most this size, the host copy of one chunk overlapping the other one's transfer).
const STAGING_HALF: usize = 8 << 20;
/// Bytes per task of the parallel copies into and out of the staging memory.
const COPY_TASK: usize = 1 << 20;

/// The most dynamic shared memory a block may take with two blocks per multiprocessor:
/// min(opt-in limit per block, memory per multiprocessor / 2 - memory reserved per block);
/// the kernels' common budget when the driver does not say.
fn shared_two_blocks(ctx: &CudaContext) -> usize {
    use sys::CUdevice_attribute as A;
    let attr = |a| ctx.attribute(a).ok().and_then(|v| usize::try_from(v).ok());
    match (
        attr(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN),
        attr(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR),
        attr(A::CU_DEVICE_ATTRIBUTE_RESERVED_SHARED_MEMORY_PER_BLOCK),
    ) {
        (Some(block), Some(sm), Some(reserved)) => block.min((sm / 2).saturating_sub(reserved)),
        _ => crate::kernels::MAX_SHARED_BYTES,
    }
}

/// Dynamic shared memory a launch may use without opting in (bytes).
const DEFAULT_SHARED_LIMIT: u32 = 48 * 1024;

fn dev_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Device(format!("{what}: {e:?}"))
}

/// A loaded module (`CUmodule`), unloaded on drop.
struct Module(sys::CUmodule);
// SAFETY: a CUmodule handle may be used from any thread once its context is current.
unsafe impl Send for Module {}
unsafe impl Sync for Module {}

/// A kernel handle (`CUfunction`) and the dynamic shared memory it was opted in to.
#[derive(Clone, Copy)]
struct Function {
    raw: sys::CUfunction,
    shared_limit: u32,
}
// SAFETY: a CUfunction handle may be used from any thread once its context is current.
unsafe impl Send for Function {}

/// A device buffer: `len` bytes (the allocation has at least one byte).
pub struct CudaBuffer {
    slice: CudaSlice<u8>,
    len: usize,
}

impl CudaBuffer {
    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True for a zero-byte buffer.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A launch timed inside [`Device::time`]: the kernel's name, events before and after.
type KernelEvents = (String, CudaEvent, CudaEvent);

/// A GPU with the rqtree kernels loaded.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: Vec<Module>,
    functions: Mutex<HashMap<String, Function>>,
    /// While [`Device::time`] runs: the kernel's name and a (start, end) event pair recorded
    /// around each launch.
    kernel_events: Mutex<Option<Vec<KernelEvents>>>,
    /// Page-locked memory large uploads and downloads are staged through (two halves of at
    /// most `STAGING_HALF` bytes), allocated on first use and kept: the driver's own copies
    /// from and to pageable memory run at a fraction of the bus speed (and a download maps
    /// the caller's fresh pages one by one).
    staging: Mutex<Option<PinnedHostSlice<u8>>>,
    /// Host time spent in each kind of driver call inside [`Device::time`], printed per
    /// timed region when `RQTREE_TRACE=1` (`None`: not tracing).
    trace: Option<Mutex<HostTrace>>,
    /// [`Device::shared_bytes_two_blocks`], from the device's attributes at open.
    shared_two_blocks: usize,
}

/// Host wall time per kind of driver call (name, calls, seconds) of one timed region.
#[derive(Default)]
struct HostTrace(Vec<(&'static str, usize, f64)>);

impl HostTrace {
    fn add(&mut self, what: &'static str, secs: f64) {
        match self.0.iter_mut().find(|e| e.0 == what) {
            Some(e) => {
                e.1 += 1;
                e.2 += secs;
            }
            None => self.0.push((what, 1, secs)),
        }
    }
}

impl CudaDevice {
    /// Opens GPU 0 and loads the embedded kernels, without panicking: errors with
    /// [`Error::BackendUnavailable`] when there is no driver or device,
    /// [`Error::KernelsUnavailable`] when the crate was built without nvcc, and
    /// [`Error::Device`] when a module fails to load. cudarc panics when the driver library
    /// lacks a symbol (a driver older than CUDA 13); that too becomes `BackendUnavailable`.
    pub fn open() -> Result<Self> {
        match std::panic::catch_unwind(Self::open_inner) {
            Ok(r) => r,
            Err(payload) => {
                let msg = payload
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| payload.downcast_ref::<&str>().copied())
                    .unwrap_or("panic");
                Err(Error::BackendUnavailable(format!(
                    "the CUDA driver library is unusable: {msg}"
                )))
            }
        }
    }

    fn open_inner() -> Result<Self> {
        if let Some(why) = embedded::KERNELS_MISSING {
            return Err(Error::KernelsUnavailable(why.to_string()));
        }
        // SAFETY: only tries to dlopen the driver library.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::BackendUnavailable(
                "no CUDA driver library (libcuda) found".into(),
            ));
        }
        let count = CudaContext::device_count()
            .map_err(|e| Error::BackendUnavailable(format!("CUDA driver: {e:?}")))?;
        if count < 1 {
            return Err(Error::BackendUnavailable("no CUDA device".into()));
        }
        let ctx = CudaContext::new(0)
            .map_err(|e| Error::BackendUnavailable(format!("CUDA context: {e:?}")))?;
        // SAFETY: every allocation, copy, launch and free of this device goes to its one
        // stream, which orders them, so cudarc's cross-stream event tracking (an event
        // created per buffer, recorded and waited on at every use) only costs host time.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(|e| Error::BackendUnavailable(format!("CUDA stream: {e:?}")))?;
        ctx.bind_to_thread()
            .map_err(|e| dev_err("bind context", e))?;
        if ctx.has_async_alloc() {
            // A performance setting only: where the driver refuses it, allocation still works
            // (memory then goes back to the driver at synchronisations).
            let _ = keep_pool_memory(ctx.cu_device());
        }
        let mut modules = Vec::with_capacity(embedded::KERNEL_IMAGES.len());
        for (name, image) in embedded::KERNEL_IMAGES {
            // cuModuleLoadData wants an aligned image: copy into u64 storage.
            let mut aligned = vec![0u64; image.len().div_ceil(8)];
            bytemuck::cast_slice_mut::<u64, u8>(&mut aligned)[..image.len()].copy_from_slice(image);
            // SAFETY: `aligned` holds a complete fatbin produced by nvcc.
            let m = unsafe { result::module::load_data(aligned.as_ptr() as *const c_void) }
                .map_err(|e| dev_err(&format!("loading kernels/{name}.cu"), e))?;
            modules.push(Module(m));
        }
        let shared_two_blocks = shared_two_blocks(&ctx);
        Ok(CudaDevice {
            shared_two_blocks,
            ctx,
            stream,
            modules,
            functions: Mutex::new(HashMap::new()),
            kernel_events: Mutex::new(None),
            staging: Mutex::new(None),
            trace: std::env::var("RQTREE_TRACE")
                .is_ok_and(|v| v == "1")
                .then(|| Mutex::new(HostTrace::default())),
        })
    }

    /// The device's name as the driver reports it.
    pub fn device_name(&self) -> Result<String> {
        self.ctx.name().map_err(|e| dev_err("device name", e))
    }

    /// A new event that records timestamps, recorded now on the stream.
    fn timestamp(&self) -> Result<CudaEvent> {
        self.stream
            .record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| dev_err("recording a timing event", e))
    }

    /// Runs `f`, adding its host time to the trace under `what` when tracing.
    fn traced<T>(&self, what: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let Some(trace) = &self.trace else {
            return f();
        };
        let t0 = std::time::Instant::now();
        let r = f();
        if let Ok(mut t) = trace.lock() {
            t.add(what, t0.elapsed().as_secs_f64());
        }
        r
    }

    /// The staging memory (two halves of [`STAGING_HALF`] page-locked bytes), allocated on
    /// first use and held for the caller's transfer (`what`, for messages).
    fn staging_memory(
        &self,
        what: &str,
    ) -> Result<std::sync::MutexGuard<'_, Option<PinnedHostSlice<u8>>>> {
        let mut staging = self
            .staging
            .lock()
            .map_err(|_| Error::Device("staging lock poisoned".into()))?;
        if staging.is_none() {
            // SAFETY: the memory is only read after a copy has filled it (from the device for
            // a download, from the caller for an upload); flags 0: cached (not
            // write-combined), as the host reads it after downloads.
            *staging = Some(
                unsafe { self.ctx.alloc_pinned_with_flags::<u8>(2 * STAGING_HALF, 0) }
                    .map_err(|e| dev_err(what, e))?,
            );
        }
        Ok(staging)
    }

    /// An upload through the staging memory: chunk i of `src` is copied (in parallel) into
    /// half i % 2 while chunk i - 1 moves from the other half to the device; a half is
    /// refilled only after the event recorded behind its previous transfer. `at + src.len()`
    /// ≤ `dst.len`; returns once everything has arrived.
    fn upload_staged(&self, dst: &mut CudaBuffer, at: usize, src: &[u8]) -> Result<()> {
        let err = |e| dev_err("upload", e);
        let mut staging = self.staging_memory("upload")?;
        let Some(pinned) = staging.as_mut() else {
            return Err(Error::Device("upload: no staging memory".into()));
        };
        let host = pinned.as_mut_slice().map_err(err)?;
        let (base, _guard) = dst.slice.device_ptr_mut(&self.stream);
        let (even, odd) = host.split_at_mut(STAGING_HALF);
        let mut sent: [Option<CudaEvent>; 2] = [None, None];
        for (i, chunk) in src.chunks(STAGING_HALF).enumerate() {
            let half = if i % 2 == 0 { &mut *even } else { &mut *odd };
            if let Some(done) = sent[i % 2].take() {
                done.synchronize().map_err(err)?;
            }
            let n = chunk.len();
            half[..n]
                .par_chunks_mut(COPY_TASK)
                .zip(chunk.par_chunks(COPY_TASK))
                .for_each(|(h, c)| h.copy_from_slice(c));
            // SAFETY: the device range [base + at + i·HALF, + n) lies inside `dst` (at +
            // src.len() ≤ dst.len); the host range is a half of the staging memory that is
            // not written again until this transfer's event has completed.
            unsafe {
                result::memcpy_htod_async(
                    base + (at + i * STAGING_HALF) as u64,
                    &half[..n],
                    self.stream.cu_stream(),
                )
            }
            .map_err(err)?;
            sent[i % 2] = Some(self.stream.record_event(None).map_err(err)?);
        }
        self.stream.synchronize().map_err(err)
    }

    /// A download through the staging memory: chunk i + 1 is copied from the device into one
    /// half while chunk i is copied out of the other to `dst` (in parallel, which also maps
    /// a fresh destination's pages from all cores). `dst.len() ≤ src.len`.
    fn download_staged(&self, src: &CudaBuffer, dst: &mut [u8]) -> Result<()> {
        let err = |e| dev_err("download", e);
        let mut staging = self.staging_memory("download")?;
        let Some(pinned) = staging.as_mut() else {
            return Err(Error::Device("download: no staging memory".into()));
        };
        let host = pinned.as_mut_slice().map_err(err)?;
        let (base, _guard) = src.slice.device_ptr(&self.stream);
        let total = dst.len();
        let chunks = total.div_ceil(STAGING_HALF);
        let len_of = |i: usize| STAGING_HALF.min(total - i * STAGING_HALF);
        // Chunk i goes to half i % 2.
        let issue = |half: &mut [u8], i: usize| {
            // SAFETY: the device range [base + i·HALF, + len) lies inside `src` (dst.len() ≤
            // src.len); the host range is a half of the staging memory that nothing reads
            // until the stream is synchronised.
            unsafe {
                result::memcpy_dtoh_async(
                    &mut half[..len_of(i)],
                    base + (i * STAGING_HALF) as u64,
                    self.stream.cu_stream(),
                )
            }
            .map_err(err)
        };
        let (even, odd) = host.split_at_mut(STAGING_HALF);
        issue(even, 0)?;
        for (i, out) in dst.chunks_mut(STAGING_HALF).enumerate() {
            self.stream.synchronize().map_err(err)?;
            let (ready, next) = if i % 2 == 0 {
                (&*even, &mut *odd)
            } else {
                (&*odd, &mut *even)
            };
            if i + 1 < chunks {
                // The other half's chunk (i - 1) was copied out in the previous step.
                issue(next, i + 1)?;
            }
            let n = out.len();
            out.par_chunks_mut(COPY_TASK)
                .zip(ready[..n].par_chunks(COPY_TASK))
                .for_each(|(o, r)| o.copy_from_slice(r));
        }
        Ok(())
    }

    /// [`Device::launch`] (untraced).
    fn launch_untraced(
        &self,
        kernel: &str,
        cfg: LaunchConfig,
        args: &[KernelArg<'_, CudaBuffer>],
    ) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| dev_err("bind context", e))?;
        let f = self.function(kernel)?;
        let f = self.ensure_shared(kernel, f, cfg.shared_bytes)?;
        // One 8-byte slot per argument; cuLaunchKernel reads each parameter's size from the
        // start of its slot (little-endian, so narrower values sit in the low bytes).
        let mut slots: Vec<u64> = Vec::with_capacity(args.len());
        let mut guards = Vec::new();
        for a in args {
            slots.push(match a {
                KernelArg::Buf(b) => {
                    let (ptr, guard) = b.slice.device_ptr(&self.stream);
                    guards.push(guard);
                    ptr
                }
                KernelArg::I32(v) => *v as u32 as u64,
                KernelArg::U32(v) => *v as u64,
                KernelArg::I64(v) => *v as u64,
                KernelArg::U64(v) => *v,
                KernelArg::F32(v) => v.to_bits() as u64,
            });
        }
        let mut params: Vec<*mut c_void> = slots
            .iter_mut()
            .map(|s| s as *mut u64 as *mut c_void)
            .collect();
        let g = cfg.grid;
        let b = cfg.block;
        let started = if self.timing_kernels()? {
            Some(self.timestamp()?)
        } else {
            None
        };
        // SAFETY: the parameters match the kernel's `extern "C"` signature (the typed
        // wrappers in crate::kernels guarantee it) and every buffer outlives the launch
        // (`guards` orders later work after it on the stream).
        unsafe {
            result::launch_kernel(
                f.raw,
                (g[0], g[1], g[2]),
                (b[0], b[1], b[2]),
                cfg.shared_bytes,
                self.stream.cu_stream(),
                &mut params,
            )
        }
        .map_err(|e| dev_err(&format!("launching {kernel}"), e))?;
        if let Some(start) = started {
            let end = self.timestamp()?;
            if let Some(v) = self
                .kernel_events
                .lock()
                .map_err(|_| Error::Device("timing lock poisoned".into()))?
                .as_mut()
            {
                v.push((kernel.to_string(), start, end));
            }
        }
        drop(guards);
        self.stream
            .context()
            .check_err()
            .map_err(|e| dev_err(kernel, e))
    }

    /// Whether launches are being timed (inside [`Device::time`]).
    fn timing_kernels(&self) -> Result<bool> {
        Ok(self
            .kernel_events
            .lock()
            .map_err(|_| Error::Device("timing lock poisoned".into()))?
            .is_some())
    }

    /// The cached handle of `kernel`, looked up in every loaded module the first time.
    fn function(&self, kernel: &str) -> Result<Function> {
        let mut map = self
            .functions
            .lock()
            .map_err(|_| Error::Device("kernel cache lock poisoned".into()))?;
        if let Some(f) = map.get(kernel) {
            return Ok(*f);
        }
        let cname = CString::new(kernel)
            .map_err(|_| Error::Device(format!("kernel name {kernel:?} contains NUL")))?;
        for m in &self.modules {
            // SAFETY: the module is loaded in this context; a missing name is an error code.
            if let Ok(raw) = unsafe { result::module::get_function(m.0, cname.clone()) } {
                let f = Function {
                    raw,
                    shared_limit: DEFAULT_SHARED_LIMIT,
                };
                map.insert(kernel.to_string(), f);
                return Ok(f);
            }
        }
        Err(Error::Device(format!(
            "kernel {kernel} is not in the embedded images"
        )))
    }

    /// Opts `kernel` in to `bytes` of dynamic shared memory when it needs more than its
    /// current limit (48 KiB at first). The limit only grows, and is raised under the cache's
    /// lock, so a launch on another thread never finds it lowered below what it set.
    fn ensure_shared(&self, kernel: &str, f: Function, bytes: u32) -> Result<Function> {
        if bytes <= f.shared_limit {
            return Ok(f);
        }
        let mut map = self
            .functions
            .lock()
            .map_err(|_| Error::Device("kernel cache lock poisoned".into()))?;
        let current = map.get(kernel).copied().unwrap_or(f);
        if bytes <= current.shared_limit {
            return Ok(current);
        }
        // SAFETY: `current.raw` is a live function of this context.
        unsafe {
            result::function::set_function_attribute(
                current.raw,
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes as i32,
            )
        }
        .map_err(|e| dev_err(&format!("{kernel}: {bytes} bytes of shared memory"), e))?;
        let raised = Function {
            raw: current.raw,
            shared_limit: bytes,
        };
        map.insert(kernel.to_string(), raised);
        Ok(raised)
    }
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            let _ = self.stream.synchronize();
            for m in self.modules.drain(..) {
                // SAFETY: no launch is in flight (synchronised) and the handle is dropped.
                let _ = unsafe { result::module::unload(m.0) };
            }
        }
    }
}

/// Makes the device's default stream-ordered memory pool (which cudarc allocates from when
/// the device supports it) keep freed memory instead of returning it to the driver at each
/// synchronisation: the per-call scratch and output buffers of the kernels are then served
/// from memory the pool already holds, so repeated calls of the same shapes reuse the same
/// device memory without a `cuMemAlloc` each (the behaviour of PyTorch's caching allocator).
fn keep_pool_memory(dev: sys::CUdevice) -> Result<()> {
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut threshold = u64::MAX;
    // SAFETY: `pool` receives the device's current pool handle; the attribute value is a
    // `u64` as the driver API documents for the release threshold.
    unsafe {
        sys::cuDeviceGetMemPool(&mut pool, dev)
            .result()
            .map_err(|e| dev_err("memory pool", e))?;
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast::<c_void>(),
        )
        .result()
        .map_err(|e| dev_err("memory pool release threshold", e))
    }
}

impl Device for CudaDevice {
    type Buffer = CudaBuffer;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn shared_bytes_two_blocks(&self) -> usize {
        self.shared_two_blocks
    }

    fn alloc(&self, bytes: usize) -> Result<CudaBuffer> {
        self.traced("alloc", || {
            // cuMemAlloc returns 256-byte (or more) aligned memory; it refuses zero bytes.
            let slice = self
                .stream
                .alloc_zeros::<u8>(bytes.max(1))
                .map_err(|e| dev_err(&format!("alloc {bytes} bytes"), e))?;
            Ok(CudaBuffer { slice, len: bytes })
        })
    }

    fn upload_at(&self, dst: &mut CudaBuffer, at: usize, src: &[u8]) -> Result<()> {
        let Some(end) = at.checked_add(src.len()).filter(|&end| end <= dst.len) else {
            return Err(Error::Device(format!(
                "upload of {} bytes at byte {at} into a {}-byte buffer",
                src.len(),
                dst.len
            )));
        };
        if src.is_empty() {
            return Ok(());
        }
        self.traced("upload", || {
            if src.len() >= STAGED_BYTES {
                return self.upload_staged(dst, at, src);
            }
            let mut view = dst.slice.slice_mut(at..end);
            self.stream
                .memcpy_htod(src, &mut view)
                .map_err(|e| dev_err("upload", e))?;
            self.stream.synchronize().map_err(|e| dev_err("upload", e))
        })
    }

    fn download(&self, src: &CudaBuffer, dst: &mut [u8]) -> Result<()> {
        if dst.len() > src.len {
            return Err(Error::Device(format!(
                "download of {} bytes from a {}-byte buffer",
                dst.len(),
                src.len
            )));
        }
        if dst.is_empty() {
            return Ok(());
        }
        self.traced("download", || {
            if dst.len() >= STAGED_BYTES {
                return self.download_staged(src, dst);
            }
            let view = src.slice.slice(0..dst.len());
            self.stream
                .memcpy_dtoh(&view, dst)
                .map_err(|e| dev_err("download", e))?;
            self.stream
                .synchronize()
                .map_err(|e| dev_err("download", e))
        })
    }

    fn launch(
        &self,
        kernel: &str,
        cfg: LaunchConfig,
        args: &[KernelArg<'_, CudaBuffer>],
    ) -> Result<()> {
        self.traced("launch", || self.launch_untraced(kernel, cfg, args))
    }

    fn synchronize(&self) -> Result<()> {
        self.traced("synchronize", || {
            self.stream
                .synchronize()
                .map_err(|e| dev_err("synchronize", e))
        })
    }

    /// CUDA events on the stream around `f` (the whole region) and around each kernel it
    /// launches (their sum is `kernel_ms`).
    fn time(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<Timing> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| dev_err("bind context", e))?;
        self.synchronize()?;
        let lock = || {
            self.kernel_events
                .lock()
                .map_err(|_| Error::Device("timing lock poisoned".into()))
        };
        *lock()? = Some(Vec::new());
        if let Some(t) = &self.trace {
            if let Ok(mut t) = t.lock() {
                t.0.clear();
            }
        }
        let wall = std::time::Instant::now();
        let start = self.timestamp();
        let run = start.and_then(|s| f().map(|()| s));
        let end = self.timestamp();
        let wall = wall.elapsed().as_secs_f64();
        let pairs = lock()?.take().unwrap_or_default();
        let (start, end) = (run?, end?);
        let elapsed = |a: &CudaEvent, b: &CudaEvent| {
            a.elapsed_ms(b)
                .map(f64::from)
                .map_err(|e| dev_err("event elapsed time", e))
        };
        let mut kernels: Vec<KernelTime> = Vec::new();
        for (name, a, b) in &pairs {
            let ms = elapsed(a, b)?;
            match kernels.iter_mut().find(|k| k.name == *name) {
                Some(k) => {
                    k.launches += 1;
                    k.ms += ms;
                }
                None => kernels.push(KernelTime {
                    name: name.clone(),
                    launches: 1,
                    ms,
                }),
            }
        }
        let ms = elapsed(&start, &end)?;
        if let Some(t) = &self.trace {
            if let Ok(t) = t.lock() {
                let calls: Vec<String> =
                    t.0.iter()
                        .map(|(what, n, secs)| format!("{what} {n}x {:.3} ms", secs * 1e3))
                        .collect();
                let traced: f64 = t.0.iter().map(|e| e.2).sum();
                eprintln!(
                    "rqtree-trace: region {ms:.3} ms (events), {:.3} ms host wall: {}, other host {:.3} ms",
                    wall * 1e3,
                    calls.join(", "),
                    (wall - traced) * 1e3
                );
            }
        }
        Ok(Timing {
            ms,
            kernel_ms: Some(kernels.iter().map(|k| k.ms).sum()),
            kernels,
            clock: Clock::CudaEvents,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens the device, or prints `SKIP: <reason>` and returns `None` unless
    /// `REQUIRE_GPU=1`, which turns a missing device into a failure.
    fn device_or_skip() -> Option<CudaDevice> {
        match CudaDevice::open() {
            Ok(d) => Some(d),
            Err(e) => {
                if std::env::var("REQUIRE_GPU").is_ok_and(|v| v == "1") {
                    panic!("REQUIRE_GPU=1 but the CUDA device is unavailable: {e}");
                }
                println!("SKIP: {e}");
                None
            }
        }
    }

    #[test]
    fn open_never_panics() {
        match CudaDevice::open() {
            Ok(d) => assert_eq!(d.name(), "cuda"),
            Err(Error::BackendUnavailable(_)) | Err(Error::KernelsUnavailable(_)) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    #[test]
    fn round_trip_and_argmax() {
        let Some(dev) = device_or_skip() else { return };
        let data: Vec<f32> = vec![1.0, 3.0, 3.0, -2.0, 0.5, 0.25, 7.0, 7.0, 7.0];
        let mut buf = dev.alloc(data.len() * 4).expect("alloc");
        dev.upload(&mut buf, bytemuck::cast_slice(&data))
            .expect("upload");
        let mut back = vec![0f32; data.len()];
        dev.download(&buf, bytemuck::cast_slice_mut(&mut back))
            .expect("download");
        assert_eq!(back, data);
        // An upload at an offset lands there; one past the end is refused.
        let mut part = dev.alloc(8).expect("alloc");
        dev.upload_at(&mut part, 3, &[5, 6]).expect("upload_at");
        let mut bytes = [1u8; 8];
        dev.download(&part, &mut bytes).expect("download");
        assert_eq!(bytes, [0, 0, 0, 5, 6, 0, 0, 0]);
        assert!(dev.upload_at(&mut part, 7, &[1, 2]).is_err());
        let ids = dev.alloc(3 * 8).expect("alloc");
        let scores = dev.alloc(3 * 4).expect("alloc");
        let cfg = LaunchConfig {
            grid: [1, 1, 1],
            block: [96, 1, 1],
            shared_bytes: 0,
        };
        dev.launch(
            "rq_topk_argmax",
            cfg,
            &[
                KernelArg::Buf(&buf),
                KernelArg::I32(3),
                KernelArg::I32(3),
                KernelArg::Buf(&ids),
                KernelArg::Buf(&scores),
            ],
        )
        .expect("launch");
        dev.synchronize().expect("sync");
        let mut got = vec![0i64; 3];
        dev.download(&ids, bytemuck::cast_slice_mut(&mut got))
            .expect("download");
        assert_eq!(got, vec![1, 1, 0]);
    }

    /// Uploads and downloads through the staging memory: one chunk, several chunks of both
    /// halves with a short last one, a prefix of a larger buffer, and uploads at offsets
    /// that straddle the chunks, byte for byte against a host copy.
    #[test]
    fn staged_transfers_round_trip() {
        let Some(dev) = device_or_skip() else { return };
        let big = 2 * STAGING_HALF + STAGING_HALF / 2 + 3;
        let mut data: Vec<u8> = (0..big).map(|i| (i * 7 + i / 4099) as u8).collect();
        let mut buf = dev.alloc(big).expect("alloc");
        dev.upload(&mut buf, &data).expect("upload");
        for n in [STAGED_BYTES, STAGING_HALF + 1, big - 5, big] {
            let mut back = vec![0u8; n];
            dev.download(&buf, &mut back).expect("download");
            assert!(back == data[..n], "download of {n} bytes");
        }
        for (at, n, fill) in [
            (5, STAGED_BYTES, 1u8),
            (STAGING_HALF - 3, STAGING_HALF + 7, 2),
            (1, big - 1, 3),
        ] {
            let part: Vec<u8> = (0..n).map(|i| (i % 251) as u8 ^ fill).collect();
            dev.upload_at(&mut buf, at, &part).expect("upload_at");
            data[at..at + n].copy_from_slice(&part);
            let mut back = vec![0u8; big];
            dev.download(&buf, &mut back).expect("download");
            assert!(back == data, "upload of {n} bytes at byte {at}");
        }
    }

    #[test]
    fn events_time_a_region_and_its_kernels() {
        let Some(dev) = device_or_skip() else { return };
        let rows = 4096;
        let data: Vec<f32> = (0..rows * 64).map(|i| (i % 97) as f32).collect();
        let mut buf = dev.alloc(data.len() * 4).expect("alloc");
        dev.upload(&mut buf, bytemuck::cast_slice(&data))
            .expect("upload");
        let ids = dev.alloc(rows * 8).expect("alloc");
        let scores = dev.alloc(rows * 4).expect("alloc");
        let cfg = LaunchConfig::linear((rows / 8) as u32, 256);
        let t = dev
            .time(&mut || {
                for _ in 0..3 {
                    dev.launch(
                        "rq_topk_argmax",
                        cfg,
                        &[
                            KernelArg::Buf(&buf),
                            KernelArg::I32(rows as i32),
                            KernelArg::I32(64),
                            KernelArg::Buf(&ids),
                            KernelArg::Buf(&scores),
                        ],
                    )?;
                }
                Ok(())
            })
            .expect("time");
        assert_eq!(t.clock, Clock::CudaEvents);
        let k = t.kernel_ms.expect("kernel time");
        assert!(k > 0.0 && k <= t.ms + 1e-3, "{t:?}");
        assert_eq!(t.kernels.len(), 1, "{t:?}");
        assert_eq!(
            (t.kernels[0].name.as_str(), t.kernels[0].launches),
            ("rq_topk_argmax", 3)
        );
        // Launches outside a timed region are not recorded.
        assert!(!dev.timing_kernels().expect("lock"));
    }

    #[test]
    fn unknown_kernel_is_an_error() {
        let Some(dev) = device_or_skip() else { return };
        let cfg = LaunchConfig {
            grid: [1, 1, 1],
            block: [32, 1, 1],
            shared_bytes: 0,
        };
        assert!(matches!(
            dev.launch("no_such_kernel", cfg, &[]),
            Err(Error::Device(_))
        ));
    }
}
