//! The launch abstraction the kernel wrappers are written against (DESIGN §5): a device owns
//! buffers, copies bytes in and out and launches the `extern "C"` kernels of `kernels/*.cu`.

#[cfg(feature = "cuda")]
pub mod cuda;

/// Launch geometry of one kernel launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
}
/// One kernel argument, passed like cuLaunchKernel's kernelParams (a pointer to each value).
pub enum KernelArg<'a, B> {
    Buf(&'a B),
    I32(i32),
    U32(u32),
    I64(i64),
    U64(u64),
    F32(f32),
}
/// A place kernels run: host-emulated (`emu`) or a GPU (`cuda`).
pub trait Device: Send + Sync {
    type Buffer: Send + Sync;
    fn name(&self) -> &'static str;
    /// Zero-filled device buffer of `bytes` bytes (aligned to at least 256 bytes).
    fn alloc(&self, bytes: usize) -> crate::Result<Self::Buffer>;
    fn upload(&self, dst: &mut Self::Buffer, src: &[u8]) -> crate::Result<()>;
    fn download(&self, src: &Self::Buffer, dst: &mut [u8]) -> crate::Result<()>;
    /// Launches `kernel` (its `extern "C"` name in kernels/*.cu) and checks the launch's error.
    fn launch(
        &self,
        kernel: &str,
        cfg: LaunchConfig,
        args: &[KernelArg<'_, Self::Buffer>],
    ) -> crate::Result<()>;
    fn synchronize(&self) -> crate::Result<()>;
}
