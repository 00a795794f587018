//! Wrappers of `kernels/learn.cu`: the soft assignment of one level and its backward pass
//! (formulas in [`crate::learn::soft`]).

use crate::device::{Device, KernelArg};
use crate::error::Result;
use crate::learn::soft::{
    check_backward_shapes, check_shapes, SoftBackward, SoftForward, SoftLevel, Upstream,
};

use super::{alloc, arg_i32, arg_len, download, launch_1d, round16, upload};

/// Threads per block of the per-row kernels (a power of two).
const THREADS: u32 = 128;
/// Threads per block of the per-codeword kernel.
const CODE_THREADS: u32 = 128;

/// Forward pass of `rows` (`n × d`) over `level` at `alpha`: weights (`n × K`) and soft
/// outputs (`n × d`).
pub fn soft_forward<D: Device>(
    dev: &D,
    rows: &[f32],
    level: SoftLevel<'_, f32>,
    alpha: f32,
) -> Result<SoftForward<f32>> {
    let n = check_shapes(rows, &level, alpha, &[])?;
    let (d, kk) = (level.dim, level.codes());
    if n == 0 {
        return Ok(SoftForward {
            weights: Vec::new(),
            output: Vec::new(),
        });
    }
    let d32 = arg_i32(d, "soft assignment: d")?;
    let k32 = arg_len(kk, "soft assignment: K")?;
    let shared = round16(4 * d) + 8 * THREADS as usize;
    let cfg = launch_1d(n, THREADS, shared, "soft assignment forward")?;
    let x = upload(dev, rows)?;
    let cb = upload(dev, level.words)?;
    let norms = upload(dev, level.norms)?;
    let w = alloc::<D, f32>(dev, n * kk)?;
    let out = alloc::<D, f32>(dev, n * d)?;
    dev.launch(
        "rq_soft_forward",
        cfg,
        &[
            KernelArg::Buf(&x),
            KernelArg::I32(d32),
            KernelArg::Buf(&cb),
            KernelArg::Buf(&norms),
            KernelArg::I32(k32),
            KernelArg::F32(alpha),
            KernelArg::Buf(&w),
            KernelArg::Buf(&out),
        ],
    )?;
    dev.synchronize()?;
    Ok(SoftForward {
        weights: download(dev, &w, n * kk)?,
        output: download(dev, &out, n * d)?,
    })
}

/// Backward pass (see [`crate::learn::soft::SoftAssign::soft_backward`]): `∂L/∂rows`
/// (`n × d`, the path through the logits) and `∂L/∂C` (`K × d`).
pub fn soft_backward<D: Device>(
    dev: &D,
    rows: &[f32],
    level: SoftLevel<'_, f32>,
    alpha: f32,
    up: Upstream<'_, f32>,
) -> Result<SoftBackward<f32>> {
    let n = check_backward_shapes(rows, &level, alpha, &up)?;
    let (d, kk) = (level.dim, level.codes());
    if n == 0 {
        return Ok(SoftBackward {
            grad_input: Vec::new(),
            grad_codebook: vec![0.0; kk * d],
        });
    }
    let d32 = arg_i32(d, "soft assignment: d")?;
    let k32 = arg_len(kk, "soft assignment: K")?;
    let n32 = arg_i32(n, "soft assignment: rows")?;
    let shared = round16(4 * d) + 8 * THREADS as usize;
    let cfg_rows = launch_1d(n, THREADS, shared, "soft assignment backward (rows)")?;
    let cfg_codes = launch_1d(kk, CODE_THREADS, 0, "soft assignment backward (codewords)")?;
    let x = upload(dev, rows)?;
    let cb = upload(dev, level.words)?;
    let w = upload(dev, up.weights)?;
    let go = upload(dev, up.grad_output)?;
    let gw = upload(dev, up.grad_weights.unwrap_or(&[0.0]))?;
    let gz = alloc::<D, f32>(dev, n * kk)?;
    let gx = alloc::<D, f32>(dev, n * d)?;
    let gcb = alloc::<D, f32>(dev, kk * d)?;
    dev.launch(
        "rq_soft_backward_rows",
        cfg_rows,
        &[
            KernelArg::I32(d32),
            KernelArg::Buf(&cb),
            KernelArg::I32(k32),
            KernelArg::F32(alpha),
            KernelArg::Buf(&w),
            KernelArg::Buf(&go),
            KernelArg::I32(up.grad_weights.is_some() as i32),
            KernelArg::Buf(&gw),
            KernelArg::Buf(&gz),
            KernelArg::Buf(&gx),
        ],
    )?;
    dev.launch(
        "rq_soft_backward_codes",
        cfg_codes,
        &[
            KernelArg::Buf(&x),
            KernelArg::I32(n32),
            KernelArg::I32(d32),
            KernelArg::Buf(&cb),
            KernelArg::I32(k32),
            KernelArg::Buf(&w),
            KernelArg::Buf(&gz),
            KernelArg::Buf(&go),
            KernelArg::Buf(&gcb),
        ],
    )?;
    dev.synchronize()?;
    Ok(SoftBackward {
        grad_input: download(dev, &gx, n * d)?,
        grad_codebook: download(dev, &gcb, kk * d)?,
    })
}
