//! Typed launch wrappers of the kernels in `kernels/*.cu`, written once against the
//! [`Device`] abstraction so that the `cuda` and `emu` devices share them, and
//! [`KernelBackend`], the [`crate::Backend`] built from them.
//!
//! Every wrapper validates what its kernel assumes (sizes that fit the kernel's `i32`/`u32`
//! arguments, counts its `int` loops walk within [`MAX_LOOP_LEN`], `k` within the selector's
//! limit, shared memory within budget) and returns an [`Error`] otherwise; nothing falls back
//! to the CPU silently.

pub mod assign;
pub mod backend;
pub mod exact;
mod fused_scan;
pub mod learn;
pub mod lookup;
mod pipeline;
pub mod resident;
pub mod topk;
pub mod traverse;

pub use backend::{KernelBackend, Storage};
pub use fused_scan::FusedKernel;
pub use resident::{Residency, ResidencyStats};

use crate::device::{Device, KernelArg, LaunchConfig};
use crate::error::{Error, Result};
use crate::topk::TopK;

/// Largest `k` (and beam width, `top_m`, encoding beam) the block-wide selector handles.
pub const MAX_K: usize = 2048;

/// Most dynamic shared memory a wrapper asks for (bytes): below every sm_80+ opt-in limit.
pub const MAX_SHARED_BYTES: usize = 96 * 1024;

/// 64-bit entry slots of the radix kernels' shared memory (`rq_topk_radix`, `rq_beam_step`):
/// the certain winners, then the undecided bucket selected from in shared memory while both fit;
/// larger buckets take more global histogram passes first. 3 072 holds the bucket of normal
/// rows of 100 000 for every k ≤ 2048 (the top byte of the k-th best's key covers [2, 8):
/// ~2 275 ± 47 values, 74 % of the slots; nothing above it), and keeps the block at 26 688
/// bytes, so shared memory alone would let 8 blocks of 256 threads share an H200 SM (228 KiB,
/// 27 712 bytes each with the 1 KiB reserved per block); its 39 registers allow 6.
/// At least the next power of two ≥ k (the final sort).
pub(crate) const RADIX_SLOTS: usize = 3072;
/// Histogram and control words heading the radix kernels' shared memory (`RQ_RADIX_HEAD`).
pub(crate) const RADIX_HEAD: usize = 1088;

/// Threads per block of the selecting kernels (a power of two ≥ 32).
pub(crate) const SELECT_THREADS: u32 = 256;

/// Entries of a selector for `k` best with `threads` threads: the next power of two
/// ≥ `k + threads` (the kernels' `cap` argument).
pub(crate) fn select_cap(k: usize, threads: u32) -> usize {
    (k + threads as usize).next_power_of_two()
}

/// Candidates each thread scores per round in the kernels that walk CSR ranges
/// (`rq_fused_topk`; common.cuh `rq_for_ranges`, at most `RQ_FUSED_RUN` = 4) when keeping the
/// best `k`: 4 for `k ≤ 512`, so that a round (two barriers) covers 4 · 256 candidates while the
/// selector (cap = next power of two ≥ k + 1024) keeps ≥ 512 free buffer slots; 1 above,
/// where 4 would leave the buffer so little room that nearly every round would merge.
pub(crate) fn range_per_thread(k: usize) -> usize {
    if k <= 512 {
        4
    } else {
        1
    }
}

/// Shared bytes of a selector of `cap` entries (common.cuh `rq_select_bytes`): 16 per entry,
/// the counter, the merge's histogram and control words (`RADIX_HEAD`).
pub(crate) fn select_bytes(cap: usize) -> usize {
    16 * cap + 16 + RADIX_HEAD
}

/// `bytes` rounded up to a multiple of 16 (the kernels' shared-memory carving).
pub(crate) fn round16(bytes: usize) -> usize {
    bytes.div_ceil(16) * 16
}

/// Errors unless `1 ≤ k ≤ MAX_K`; `what` names the parameter and the operation.
pub(crate) fn check_k(k: usize, what: &str) -> Result<()> {
    if k == 0 || k > MAX_K {
        return Err(Error::param(format!(
            "{what} = {k}: the CUDA kernels select 1..={MAX_K}"
        )));
    }
    Ok(())
}

/// `v` as a kernel's `i32` argument, or an error naming it.
pub(crate) fn arg_i32(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v)
        .map_err(|_| Error::param(format!("{what} = {v} exceeds the kernels' i32 range")))
}

/// Largest count a kernel walks with `int` indices (a top-k row's columns, a query's
/// shortlist or candidate nodes, depth-1 nodes, dimensions): its loops advance an `int` by up
/// to 4096 (a block's threads × loads per thread) past an index below the count, which must
/// not overflow, so counts stay at most 2³¹ − 4096.
pub const MAX_LOOP_LEN: usize = (1 << 31) - 4096;

/// `v` as a kernel's `int` count that it loops over (at most [`MAX_LOOP_LEN`]), or an error
/// naming it.
pub(crate) fn arg_len(v: usize, what: &str) -> Result<i32> {
    if v > MAX_LOOP_LEN {
        return Err(Error::param(format!(
            "{what} = {v} exceeds the kernels' limit of {MAX_LOOP_LEN} (their 32-bit loop \
             indices)"
        )));
    }
    arg_i32(v, what)
}

/// `v` as a grid dimension, or an error naming it.
pub(crate) fn grid_dim(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v)
        .ok()
        .filter(|&g| g <= i32::MAX as u32)
        .ok_or_else(|| Error::param(format!("{what} = {v} exceeds the launch grid")))
}

/// `v` as a grid's `y` or `z` dimension (at most 65 535), or an error naming it.
pub(crate) fn grid_dim_yz(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v)
        .ok()
        .filter(|&g| g <= 65_535)
        .ok_or_else(|| Error::param(format!("{what} = {v} exceeds a grid's y/z limit of 65535")))
}

/// A 1-D launch of `blocks × threads` with `shared` bytes, checked against the budget.
pub(crate) fn launch_1d(
    blocks: usize,
    threads: u32,
    shared: usize,
    what: &str,
) -> Result<LaunchConfig> {
    launch_1d_within(blocks, threads, shared, MAX_SHARED_BYTES, what)
}

/// [`launch_1d`] checked against a kernel's own shared-memory `budget` (a kernel sized to
/// the device, e.g. by [`Device::shared_bytes_two_blocks`]).
pub(crate) fn launch_1d_within(
    blocks: usize,
    threads: u32,
    shared: usize,
    budget: usize,
    what: &str,
) -> Result<LaunchConfig> {
    if shared > budget {
        return Err(Error::param(format!(
            "{what} needs {shared} bytes of shared memory per block, more than its \
             budget of {budget}"
        )));
    }
    Ok(LaunchConfig {
        grid: [grid_dim(blocks, what)?, 1, 1],
        block: [threads, 1, 1],
        shared_bytes: shared as u32,
    })
}

/// Uploads `data` into a new device buffer.
pub(crate) fn upload<D: Device, T: bytemuck::Pod>(dev: &D, data: &[T]) -> Result<D::Buffer> {
    let bytes: &[u8] = bytemuck::cast_slice(data);
    let mut buf = dev.alloc(bytes.len())?;
    dev.upload(&mut buf, bytes)?;
    Ok(buf)
}

/// A zero-filled device buffer of `n` values of `T`.
pub(crate) fn alloc<D: Device, T>(dev: &D, n: usize) -> Result<D::Buffer> {
    let bytes = n
        .checked_mul(std::mem::size_of::<T>())
        .ok_or_else(|| Error::param(format!("a device buffer of {n} values overflows")))?;
    dev.alloc(bytes)
}

/// Downloads the first `n` values of `T` of `buf`.
pub(crate) fn download<D: Device, T: bytemuck::Pod>(
    dev: &D,
    buf: &D::Buffer,
    n: usize,
) -> Result<Vec<T>> {
    let mut out = vec![T::zeroed(); n];
    dev.download(buf, bytemuck::cast_slice_mut(&mut out))?;
    Ok(out)
}

/// Launches a selecting kernel whose arguments are `(head…, k, cap, out ids, out scores)`
/// (outputs `rows × k`, i64 and f32) and downloads its result.
pub(crate) fn launch_select<D: Device>(
    dev: &D,
    name: &str,
    cfg: LaunchConfig,
    (rows, k, cap): (usize, usize, usize),
    head: Vec<KernelArg<'_, D::Buffer>>,
) -> Result<TopK> {
    let (ids, scores) = launch_select_on_device(dev, name, cfg, (rows, k, cap), head)?;
    download_topk(dev, &ids, &scores, rows, k)
}

/// [`launch_select`] leaving the `rows × k` ids and scores on the device (not synchronised).
pub(crate) fn launch_select_on_device<D: Device>(
    dev: &D,
    name: &str,
    cfg: LaunchConfig,
    (rows, k, cap): (usize, usize, usize),
    head: Vec<KernelArg<'_, D::Buffer>>,
) -> Result<(D::Buffer, D::Buffer)> {
    let (ids, scores) = alloc_topk(dev, rows, k)?;
    let mut args = Vec::with_capacity(head.len() + 4);
    args.extend(head);
    args.extend([
        KernelArg::I32(k as i32),
        KernelArg::I32(cap as i32),
        KernelArg::Buf(&ids),
        KernelArg::Buf(&scores),
    ]);
    dev.launch(name, cfg, &args)?;
    drop(args);
    Ok((ids, scores))
}

/// Device buffers of a `rows × k` (id, score) result: i64 ids and f32 scores.
pub(crate) fn alloc_topk<D: Device>(
    dev: &D,
    rows: usize,
    k: usize,
) -> Result<(D::Buffer, D::Buffer)> {
    Ok((
        alloc::<D, i64>(dev, rows * k)?,
        alloc::<D, f32>(dev, rows * k)?,
    ))
}

/// Downloads a `rows × k` (id, score) result.
pub(crate) fn download_topk<D: Device>(
    dev: &D,
    ids: &D::Buffer,
    scores: &D::Buffer,
    rows: usize,
    k: usize,
) -> Result<TopK> {
    dev.synchronize()?;
    Ok(TopK {
        rows,
        k,
        ids: download(dev, ids, rows * k)?,
        scores: download(dev, scores, rows * k)?,
    })
}

/// A [`Device`] for testing the wrappers' validation: buffers are host memory, and every
/// launch is refused with an error naming the kernel, so a test tells a wrapper's own refusal
/// (a parameter error) from a launch it let through, with sizes no kernel could run.
#[cfg(test)]
pub(crate) mod no_launch {
    use super::*;

    pub(crate) struct NoLaunch;

    /// The error of [`NoLaunch::launch`] for `kernel`.
    pub(crate) fn launched(kernel: &str) -> String {
        format!("launched {kernel}")
    }

    impl Device for NoLaunch {
        type Buffer = Vec<u8>;
        fn name(&self) -> &'static str {
            "no-launch"
        }
        fn alloc(&self, bytes: usize) -> Result<Vec<u8>> {
            Ok(vec![0; bytes])
        }
        fn upload_at(&self, dst: &mut Vec<u8>, at: usize, src: &[u8]) -> Result<()> {
            let end = at + src.len();
            dst.get_mut(at..end)
                .ok_or_else(|| Error::Device(format!("upload to {at}..{end}")))?
                .copy_from_slice(src);
            Ok(())
        }
        fn download(&self, src: &Vec<u8>, dst: &mut [u8]) -> Result<()> {
            let n = dst.len();
            dst.copy_from_slice(
                src.get(..n)
                    .ok_or_else(|| Error::Device(format!("download of {n} bytes")))?,
            );
            Ok(())
        }
        fn launch(
            &self,
            kernel: &str,
            _: LaunchConfig,
            _: &[KernelArg<'_, Vec<u8>>],
        ) -> Result<()> {
            Err(Error::Device(launched(kernel)))
        }
        fn synchronize(&self) -> Result<()> {
            Ok(())
        }
    }

    /// `arg_len` takes counts up to `MAX_LOOP_LEN` and names the one it refuses.
    #[test]
    fn loop_lengths_stay_below_the_int_range() {
        assert_eq!(arg_len(0, "x").unwrap(), 0);
        assert_eq!(arg_len(MAX_LOOP_LEN, "x").unwrap() as usize, MAX_LOOP_LEN);
        // The largest index below the limit plus the longest stride stays in int.
        assert!((MAX_LOOP_LEN - 1 + 4096) as u64 <= i32::MAX as u64);
        let e = arg_len(MAX_LOOP_LEN + 1, "topk: columns").unwrap_err();
        assert!(
            matches!(&e, Error::Param(m) if m.contains("topk: columns = 2147479553")),
            "{e}"
        );
    }
}
