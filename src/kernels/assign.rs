//! Wrappers of `kernels/assign.cu`: one level of code assignment and the all-level encoding.

use crate::backend::{AssignOptions, Assignment, Encoding};
use crate::device::{Device, KernelArg};
use crate::error::{Error, Result};
use crate::index::{Codebook, Codebooks};
use crate::matrix::Matrix;

use super::{
    alloc, arg_i32, check_k, download, launch_1d, round16, select_bytes, select_cap, upload,
};

/// Threads per block of the assignment kernels (one row per block).
const THREADS: u32 = 128;

/// One level of assignment of `residuals` (`n × d`) over `codebook` (`K × d`): the
/// `top_m` best codes (`1 ≤ top_m ≤ min(K, 2048)`) with their logits
/// `2<r, C[k]> - ||C[k]||²`, optionally the soft weights `softmax(α·logit)` (`n × K`) and the
/// hard residual `r - C[code]` (`n × d`). Ties → lowest code.
pub fn assign<D: Device>(
    dev: &D,
    residuals: &Matrix,
    codebook: &Codebook,
    opts: &AssignOptions,
) -> Result<Assignment> {
    let (n, d, kk) = (residuals.rows(), codebook.dim(), codebook.len());
    residuals.check_cols(d, "residuals")?;
    if opts.top_m == 0 || opts.top_m > kk {
        return Err(Error::param(format!(
            "assign: top_m = {} must be in 1..={kk}",
            opts.top_m
        )));
    }
    check_k(opts.top_m, "assign: top_m")?;
    let m = opts.top_m;
    if n == 0 {
        return Ok(Assignment {
            top_m: m,
            codes: Vec::new(),
            logits: Vec::new(),
            soft: opts.alpha.map(|_| Matrix::zeros(0, kk)),
            residual: opts.residual.then(|| Matrix::zeros(0, d)),
        });
    }
    let cap = select_cap(m, THREADS);
    let shared = round16(4 * d) + 8 * THREADS as usize + select_bytes(cap);
    let cfg = launch_1d(n, THREADS, shared, "assign")?;
    let x = upload(dev, residuals.data())?;
    let cb = upload(dev, codebook.words().data())?;
    let norms = upload(dev, codebook.norms())?;
    let codes = alloc::<D, u32>(dev, n * m)?;
    let logits = alloc::<D, f32>(dev, n * m)?;
    let soft = alloc::<D, f32>(dev, if opts.alpha.is_some() { n * kk } else { 0 })?;
    let res = alloc::<D, f32>(dev, if opts.residual { n * d } else { 0 })?;
    dev.launch(
        "rq_assign",
        cfg,
        &[
            KernelArg::Buf(&x),
            KernelArg::I32(arg_i32(d, "assign: d")?),
            KernelArg::Buf(&cb),
            KernelArg::Buf(&norms),
            KernelArg::I32(arg_i32(kk, "assign: K")?),
            KernelArg::I32(m as i32),
            KernelArg::I32(cap as i32),
            KernelArg::I32(opts.alpha.is_some() as i32),
            KernelArg::F32(opts.alpha.unwrap_or(1.0)),
            KernelArg::I32(opts.residual as i32),
            KernelArg::Buf(&codes),
            KernelArg::Buf(&logits),
            KernelArg::Buf(&soft),
            KernelArg::Buf(&res),
        ],
    )?;
    dev.synchronize()?;
    let soft = match opts.alpha {
        Some(_) => Some(Matrix::new(n, kk, download(dev, &soft, n * kk)?)?),
        None => None,
    };
    let residual = if opts.residual {
        Some(Matrix::new(n, d, download(dev, &res, n * d)?)?)
    } else {
        None
    };
    Ok(Assignment {
        top_m: m,
        codes: download(dev, &codes, n * m)?,
        logits: download(dev, &logits, n * m)?,
        soft,
        residual,
    })
}

/// Encodes `items` (`n × d`) over all levels keeping the `beam` best partial paths by
/// squared reconstruction error (`1 ≤ beam ≤ 2048`; 1 = greedy): `n × L` codes and
/// `||x - x̂||²` per item. The residuals stay in shared memory across levels.
pub fn encode<D: Device>(
    dev: &D,
    items: &Matrix,
    cbs: &Codebooks,
    beam: usize,
) -> Result<Encoding> {
    let (n, d, levels) = (items.rows(), cbs.dim(), cbs.levels());
    items.check_cols(d, "items")?;
    check_k(beam, "encode: beam")?;
    if n == 0 {
        return Ok(Encoding {
            levels,
            codes: Vec::new(),
            error: Vec::new(),
        });
    }
    let cap = select_cap(beam, THREADS);
    let shared = 2 * round16(4 * beam * d) + 2 * round16(4 * beam * levels) + select_bytes(cap);
    let cfg = launch_1d(n, THREADS, shared, "encode")?;
    let mut stacked = Vec::with_capacity(cbs.sizes().iter().sum::<usize>() * d);
    let mut rows = vec![0i64];
    for cb in cbs.iter() {
        stacked.extend_from_slice(cb.words().data());
        rows.push(rows[rows.len() - 1] + cb.len() as i64);
    }
    let x = upload(dev, items.data())?;
    let cb = upload(dev, &stacked)?;
    let cb_rows = upload(dev, &rows)?;
    let codes = alloc::<D, u32>(dev, n * levels)?;
    let err = alloc::<D, f32>(dev, n)?;
    dev.launch(
        "rq_encode",
        cfg,
        &[
            KernelArg::Buf(&x),
            KernelArg::I32(arg_i32(d, "encode: d")?),
            KernelArg::I32(levels as i32),
            KernelArg::Buf(&cb),
            KernelArg::Buf(&cb_rows),
            KernelArg::I32(beam as i32),
            KernelArg::I32(cap as i32),
            KernelArg::Buf(&codes),
            KernelArg::Buf(&err),
        ],
    )?;
    dev.synchronize()?;
    Ok(Encoding {
        levels,
        codes: download(dev, &codes, n * levels)?,
        error: download(dev, &err, n)?,
    })
}
