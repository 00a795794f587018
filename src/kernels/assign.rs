//! Wrappers of `kernels/assign.cu`, `kernels/greedy.cu` and `kernels/greedy_tc.cu`: one level
//! of code assignment and the all-level encoding.

use crate::backend::{AssignOptions, Assignment, Encoding};
use crate::device::{Device, KernelArg};
use crate::error::{Error, Result};
use crate::index::{Codebook, Codebooks};
use crate::matrix::Matrix;

use super::backend::Storage;
use super::resident::{Residency, Reuse};
use super::{
    alloc, arg_i32, check_k, download, launch_1d, round16, select_bytes, select_cap,
    MAX_SHARED_BYTES,
};

/// Threads per block of the general assignment kernels (one row per block).
const THREADS: u32 = 128;
/// Threads per block of `rq_greedy_rows64` / `rq_greedy_rows16`.
const GREEDY_THREADS: u32 = 256;

/// Output of [`greedy_rows`]: `n × L` codes, one float per row, optional residuals.
struct Greedy {
    codes: Vec<u32>,
    err: Vec<f32>,
    residual: Option<Vec<f32>>,
}

/// Row stride (floats) of a greedy block's residuals in shared memory (greedy.cuh
/// `rq_greedy_stride`): 16-byte rows, two rows of a warp in different banks.
fn greedy_stride(d: usize) -> usize {
    let stride = d.div_ceil(4) * 4 + 4;
    if stride % 32 == 0 {
        stride + 4
    } else {
        stride
    }
}

/// Shared bytes of a `rq_greedy_rows64` / `rq_greedy_rows16` block of `rows` rows of
/// dimension `d` (greedy.cu's carving: residuals; two chunks of 32 dimensions of 64
/// codewords (rows of 36 floats), the area the decision then reuses for 16 candidate keys and
/// codes per row; per-row norms, candidate counts and scan flags).
fn greedy_shared(rows: usize, d: usize) -> usize {
    4 * rows * greedy_stride(d) + 4 * (2 * 64 * 36).max(2 * 16 * rows) + 12 * rows
}

/// Shared bytes of a `rq_greedy_rows64_tc` block (greedy_tc.cu's carving: 64 residual rows;
/// the 64 × 132 dot products of a group of 128 codewords and their norms; 16 candidate
/// values and codes per row; per-row norms, largest ĝ, candidate counts and scan flags).
fn greedy_tc_shared(d: usize) -> usize {
    4 * (64 * greedy_stride(d) + 64 * 132 + 128 + 2 * 16 * 64 + 4 * 64)
}

/// The tensor-core screening's codebooks (`rq_greedy_rows64_tc`'s `cbt` and `emax`): the
/// levels' words (`stacked`, `d` floats each; level l has `sizes[l]` words) centred on the
/// level's mean m (f64 mean rounded to f32; e = fl(w - m)), truncated to TF32, in the
/// tensor cores' B-fragment order. Per level, tile T of 8 words, step s of 8 dimensions and
/// lane 4g + t, two floats: tf32(e[8s + t]) and tf32(e[8s + t + 4]) of word 8T + g (zero
/// past d and past the level's words); then three zero tiles. With each level's radius, an
/// upper bound of max ||w - m|| in exact arithmetic, and the steps per word, ceil(d / 8).
fn tc_words(stacked: &[f32], d: usize, sizes: &[usize]) -> TcWords {
    let steps = d.div_ceil(8);
    // Three zero tiles after the last level: a warp reads four tiles, used or not.
    let tiles: usize = sizes.iter().map(|k| k.div_ceil(8)).sum::<usize>() + 3;
    let mut words = vec![0f32; tiles * steps * 32 * 2];
    let mut radius = Vec::with_capacity(sizes.len());
    let (mut first, mut at) = (0, 0);
    for &k in sizes {
        let level = &stacked[first * d..(first + k) * d];
        let mut mean = vec![0f64; d];
        for w in level.chunks_exact(d) {
            mean.iter_mut()
                .zip(w)
                .for_each(|(m, &v)| *m += f64::from(v));
        }
        let mean: Vec<f32> = mean.iter().map(|&m| (m / k.max(1) as f64) as f32).collect();
        let centred: Vec<f32> = level
            .chunks_exact(d)
            .flat_map(|w| w.iter().zip(&mean).map(|(&v, &m)| v - m))
            .collect();
        // ||w - m|| ≤ ||e|| / (1 - u): 1e-6 above the f64 norm of e covers that and the
        // rounding to f32.
        let largest = centred
            .chunks_exact(d)
            .map(|e| e.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>())
            .fold(0f64, f64::max);
        radius.push((largest.sqrt() * (1.0 + 1e-6)) as f32);
        for tile in 0..k.div_ceil(8) {
            for s in 0..steps {
                for lane in 0..32 {
                    let (w, t) = (8 * tile + lane / 4, lane % 4);
                    for (h, e) in [8 * s + t, 8 * s + t + 4].into_iter().enumerate() {
                        if w < k && e < d {
                            words[at + h] = tf32(centred[w * d + e]);
                        }
                    }
                    at += 2;
                }
            }
        }
        first += k;
    }
    TcWords {
        words,
        radius,
        steps,
    }
}

/// Output of [`tc_words`].
struct TcWords {
    /// The centred, truncated words in fragment order.
    words: Vec<f32>,
    /// Per level, an upper bound of its words' distance to their centre.
    radius: Vec<f32>,
    /// Steps of 8 dimensions per word.
    steps: usize,
}

/// `v` truncated to TF32 (10 explicit mantissa bits: the low 13 bits cleared), as
/// mma_tf32.cuh `rq_tf32_bits`.
fn tf32(v: f32) -> f32 {
    f32::from_bits(v.to_bits() & 0xffff_e000)
}

/// The first `count` codes of `buf`, stored `code_bytes` (1 or 2) wide, widened to u32.
fn download_codes<D: Device>(
    dev: &D,
    buf: &D::Buffer,
    count: usize,
    code_bytes: usize,
) -> Result<Vec<u32>> {
    use rayon::prelude::*;
    Ok(if code_bytes == 1 {
        download::<D, u8>(dev, buf, count)?
            .par_iter()
            .map(|&c| u32::from(c))
            .collect()
    } else {
        download::<D, u16>(dev, buf, count)?
            .par_iter()
            .map(|&c| u32::from(c))
            .collect()
    })
}

/// Whether the certified greedy kernel takes rows of dimension `d` (16 of them must fit the
/// shared-memory budget: d ≤ 1240); larger d run the per-row kernels (`rq_assign` with
/// `top_m = 1`, `rq_encode` with beam 1), which compute the same exact keys.
fn greedy_fits(d: usize) -> bool {
    greedy_shared(16, d) <= MAX_SHARED_BYTES
}

/// Launches the certified greedy kernel over `levels` (codebooks, values already rounded to
/// `storage`, which is how they are uploaded), `mode` 0 (encode) or 1 (assign): 64 rows
/// per block, screened on the tensor cores (`rq_greedy_rows64_tc`, with the codebooks also
/// uploaded in fragment order, [`tc_words`]) when `tensor_cores` is set and d ≤ 208, else
/// with FMAs (`rq_greedy_rows64`); 16 rows with FMAs (`rq_greedy_rows16`) when 64 rows of
/// dimension `d` exceed the shared-memory budget.
#[allow(clippy::too_many_arguments)]
fn greedy_rows<D: Device>(
    dev: &D,
    res: &Residency<D>,
    x: &Matrix,
    levels: &[&Codebook],
    mode: i32,
    want_residual: bool,
    storage: Storage,
    tensor_cores: bool,
) -> Result<Greedy> {
    let (n, d, l) = (x.rows(), x.cols(), levels.len());
    let tc = tensor_cores && greedy_tc_shared(d) <= MAX_SHARED_BYTES;
    let (kernel, rows, shared) = if tc {
        ("rq_greedy_rows64_tc", 64, greedy_tc_shared(d))
    } else if greedy_shared(64, d) <= MAX_SHARED_BYTES {
        ("rq_greedy_rows64", 64, greedy_shared(64, d))
    } else {
        ("rq_greedy_rows16", 16, greedy_shared(16, d))
    };
    let cfg = launch_1d(
        n.div_ceil(rows),
        GREEDY_THREADS,
        shared,
        "greedy assignment",
    )?;
    let mut stacked = Vec::new();
    let mut norms = Vec::new();
    let mut cb_rows = vec![0i64];
    // Upper bounds of each level's largest codeword norm: the stored squared norms are the
    // f64 sums rounded to f32, so 1e-6 above their square root is above the true norm.
    let mut cmax = Vec::with_capacity(l);
    for cb in levels {
        stacked.extend_from_slice(cb.words().data());
        norms.extend_from_slice(cb.norms());
        cb_rows.push(cb_rows[cb_rows.len() - 1] + cb.len() as i64);
        let largest = cb.norms().iter().fold(0.0f32, |m, &v| m.max(v));
        cmax.push((f64::from(largest).sqrt() * (1.0 + 1e-6)) as f32);
    }
    let d_x = res.input(dev, x.data(), Reuse::PinnedOnly)?;
    let d_cb = storage.input(dev, res, &stacked)?;
    let d_rows = res.input(dev, &cb_rows, Reuse::Content)?;
    let d_norms = res.input(dev, &norms, Reuse::Content)?;
    let d_cmax = res.input(dev, &cmax, Reuse::Content)?;
    // Codes as narrow as the largest level allows (K ≤ 65536): a quarter of the download
    // when K ≤ 256, half otherwise.
    let widest = levels.iter().map(|cb| cb.len()).max().unwrap_or(0);
    let code_bytes: usize = if widest <= 256 { 1 } else { 2 };
    let codes = alloc::<D, u8>(dev, n * l * code_bytes)?;
    let err = alloc::<D, f32>(dev, n)?;
    let d_res = alloc::<D, f32>(dev, if want_residual { n * d } else { 0 })?;
    let tc_in = if tc {
        let sizes: Vec<usize> = levels.iter().map(|cb| cb.len()).collect();
        let TcWords {
            words,
            radius,
            steps,
        } = tc_words(&stacked, d, &sizes);
        Some((
            res.input(dev, &words, Reuse::Content)?,
            res.input(dev, &radius, Reuse::Content)?,
            steps,
        ))
    } else {
        None
    };
    let mut args = vec![
        KernelArg::Buf(&*d_x),
        KernelArg::I32(arg_i32(n, "greedy assignment: rows")?),
        KernelArg::I32(arg_i32(d, "greedy assignment: d")?),
        KernelArg::I32(l as i32),
        KernelArg::Buf(&*d_cb),
        KernelArg::I32(storage.dtype_arg()),
        KernelArg::Buf(&d_rows),
        KernelArg::Buf(&*d_norms),
        KernelArg::Buf(&d_cmax),
        KernelArg::I32(mode),
        KernelArg::Buf(&codes),
        KernelArg::I32(code_bytes as i32),
        KernelArg::Buf(&err),
        KernelArg::I32(want_residual as i32),
        KernelArg::Buf(&d_res),
    ];
    if let Some((words, radius, steps)) = &tc_in {
        args.push(KernelArg::Buf(words));
        args.push(KernelArg::Buf(radius));
        args.push(KernelArg::I32(arg_i32(*steps, "greedy assignment: steps")?));
    }
    dev.launch(kernel, cfg, &args)?;
    dev.synchronize()?;
    Ok(Greedy {
        codes: download_codes(dev, &codes, n * l, code_bytes)?,
        err: download(dev, &err, n)?,
        residual: if want_residual {
            Some(download(dev, &d_res, n * d)?)
        } else {
            None
        },
    })
}

/// One level of assignment of `residuals` (`n × d`) over `codebook` (`K × d`): the
/// `top_m` best codes (`1 ≤ top_m ≤ min(K, 2048)`) with their logits
/// `2<r, C[k]> - ||C[k]||²`, optionally the soft weights `softmax(α·logit)` (`n × K`) and the
/// hard residual `r - C[code]` (`n × d`). Ties → lowest code. The hard-code-only case
/// (`top_m = 1`, no soft weights, `d ≤ 1240`) runs the certified row-tiled kernel (its
/// screening on the tensor cores with `tensor_cores`), which reads the codebook as `storage`
/// (its values rounded to it already); the general kernel reads the f32 values.
pub fn assign<D: Device>(
    dev: &D,
    res: &Residency<D>,
    residuals: &Matrix,
    codebook: &Codebook,
    opts: &AssignOptions,
    storage: Storage,
    tensor_cores: bool,
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
    if m == 1 && opts.alpha.is_none() && greedy_fits(d) {
        // Hard code only: the certified row-tiled kernel.
        let g = greedy_rows(
            dev,
            res,
            residuals,
            &[codebook],
            1,
            opts.residual,
            storage,
            tensor_cores,
        )?;
        return Ok(Assignment {
            top_m: 1,
            codes: g.codes,
            logits: g.err,
            soft: None,
            residual: g.residual.map(|r| Matrix::new(n, d, r)).transpose()?,
        });
    }
    let cap = select_cap(m, THREADS);
    let shared = round16(4 * d) + 8 * THREADS as usize + select_bytes(cap);
    let cfg = launch_1d(n, THREADS, shared, "assign")?;
    let x = res.input(dev, residuals.data(), Reuse::PinnedOnly)?;
    let cb = res.input(dev, codebook.words().data(), Reuse::Content)?;
    let norms = res.input(dev, codebook.norms(), Reuse::Content)?;
    let codes = alloc::<D, u32>(dev, n * m)?;
    let logits = alloc::<D, f32>(dev, n * m)?;
    let soft = alloc::<D, f32>(dev, if opts.alpha.is_some() { n * kk } else { 0 })?;
    let d_res = alloc::<D, f32>(dev, if opts.residual { n * d } else { 0 })?;
    dev.launch(
        "rq_assign",
        cfg,
        &[
            KernelArg::Buf(&*x),
            KernelArg::I32(arg_i32(d, "assign: d")?),
            KernelArg::Buf(&*cb),
            KernelArg::Buf(&*norms),
            KernelArg::I32(arg_i32(kk, "assign: K")?),
            KernelArg::I32(m as i32),
            KernelArg::I32(cap as i32),
            KernelArg::I32(opts.alpha.is_some() as i32),
            KernelArg::F32(opts.alpha.unwrap_or(1.0)),
            KernelArg::I32(opts.residual as i32),
            KernelArg::Buf(&codes),
            KernelArg::Buf(&logits),
            KernelArg::Buf(&soft),
            KernelArg::Buf(&d_res),
        ],
    )?;
    dev.synchronize()?;
    let soft = match opts.alpha {
        Some(_) => Some(Matrix::new(n, kk, download(dev, &soft, n * kk)?)?),
        None => None,
    };
    let residual = if opts.residual {
        Some(Matrix::new(n, d, download(dev, &d_res, n * d)?)?)
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
/// `||x - x̂||²` per item. The residuals stay in shared memory across levels; `beam = 1`
/// (with `d ≤ 1240`) runs the certified row-tiled greedy kernel (codebooks read as
/// `storage`, values rounded to it already; screening on the tensor cores with
/// `tensor_cores`), wider beams and larger d the per-row beam kernel (f32 values).
pub fn encode<D: Device>(
    dev: &D,
    res: &Residency<D>,
    items: &Matrix,
    cbs: &Codebooks,
    beam: usize,
    storage: Storage,
    tensor_cores: bool,
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
    if beam == 1 && greedy_fits(d) {
        let levels_ref: Vec<&Codebook> = cbs.iter().collect();
        let g = greedy_rows(
            dev,
            res,
            items,
            &levels_ref,
            0,
            false,
            storage,
            tensor_cores,
        )?;
        return Ok(Encoding {
            levels,
            codes: g.codes,
            error: g.err,
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
    let x = res.input(dev, items.data(), Reuse::PinnedOnly)?;
    let cb = res.input(dev, &stacked, Reuse::Content)?;
    let cb_rows = res.input(dev, &rows, Reuse::Content)?;
    let codes = alloc::<D, u32>(dev, n * levels)?;
    let err = alloc::<D, f32>(dev, n)?;
    dev.launch(
        "rq_encode",
        cfg,
        &[
            KernelArg::Buf(&*x),
            KernelArg::I32(arg_i32(d, "encode: d")?),
            KernelArg::I32(levels as i32),
            KernelArg::Buf(&*cb),
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

#[cfg(test)]
mod tests {
    use super::{greedy_fits, greedy_tc_shared, tc_words, tf32, TcWords, MAX_SHARED_BYTES};

    /// The documented limit of the certified greedy kernel (d ≤ 1240: 16 rows and two chunk
    /// buffers within the shared-memory budget) is the one the wrapper applies.
    #[test]
    fn greedy_dimension_limit() {
        assert!(greedy_fits(1240));
        assert!(!greedy_fits(1241));
    }

    /// The tensor-core screening takes d ≤ 208 (64 rows and the group's dot products within
    /// the budget), as documented; larger d fall back to the FMA screening.
    #[test]
    fn tensor_core_dimension_limit() {
        assert!(greedy_tc_shared(208) <= MAX_SHARED_BYTES);
        assert!(greedy_tc_shared(209) > MAX_SHARED_BYTES);
    }

    /// The fragment order of the tensor-core codebooks: lane 4g + t of tile T, step s holds
    /// word 8T + g's dimensions 8s + t and 8s + t + 4, centred on the level's mean and
    /// truncated to TF32, zero past d and past the level's words; each level starts on a
    /// fresh tile; each level's radius bounds its words' distance to the mean, closely.
    #[test]
    fn tensor_core_words_in_fragment_order() {
        let (d, sizes) = (11, [3usize, 9]);
        let total: usize = sizes.iter().sum();
        // Word w, dimension e: w·(1 + 2^-12) + e / 16. Centred, level 0's words are
        // ±(1 + 2^-12) and 0, level 1's (j - 4)·(1 + 2^-12): bits below TF32's resolution.
        let value = |w: usize, e: usize| w as f32 * (1.0 + 2f32.powi(-12)) + e as f32 / 16.0;
        let stacked: Vec<f32> = (0..total * d).map(|i| value(i / d, i % d)).collect();
        let TcWords {
            words,
            radius,
            steps,
        } = tc_words(&stacked, d, &sizes);
        assert_eq!(steps, 2);
        assert_eq!(words.len(), (1 + 2 + 3) * steps * 32 * 2);
        let at = |tile: usize, s: usize, lane: usize| ((tile * steps + s) * 32 + lane) * 2;
        // Word j of the level of k words from `first`, dimension e, centred (f64 mean).
        let centred = |first: usize, k: usize, j: usize, e: usize| {
            let mean = (first..first + k)
                .map(|w| f64::from(value(w, e)))
                .sum::<f64>()
                / k as f64;
            value(first + j, e) - mean as f32
        };
        // Level 1 (words 3..), tile 1 (its words 8..), step 1, lane 4·0 + 2: its word 8,
        // dimensions 10 and 14 (past d: zero).
        let q = at(1 + 1, 1, 2);
        let exact = centred(3, 9, 8, 10);
        assert_eq!(words[q], tf32(exact));
        assert_eq!(words[q].to_bits() & 0x1fff, 0);
        assert!(
            words[q] != exact && (words[q] - 4.0).abs() < 1e-6,
            "{}",
            words[q]
        );
        assert_eq!(words[q + 1], 0.0);
        // Level 0, tile 0, lane 4·3 + 1 (word 3: past the level's 3 words): zero.
        assert_eq!(&words[at(0, 0, 13)..at(0, 0, 13) + 2], &[0.0, 0.0]);
        // Level 0, word 2, step 0, t = 1: dimensions 1 and 5.
        let q = at(0, 0, 4 * 2 + 1);
        assert_eq!(words[q], tf32(centred(0, 3, 2, 1)));
        assert_eq!(words[q + 1], tf32(centred(0, 3, 2, 5)));
        assert_eq!(words[q], 1.0);
        // Radii: level 0's largest centred word is 11 dimensions of 1 + 2^-12, level 1's
        // 11 of 4·(1 + 2^-12).
        let base = (11f64).sqrt() * (1.0 + 2f64.powi(-12));
        for (r, want) in radius.iter().zip([base, 4.0 * base]) {
            let r = f64::from(*r);
            assert!(
                r >= want && r <= want * (1.0 + 1e-5),
                "radius {r} for {want}"
            );
        }
    }
}
