//! The exact brute-force top-k (`kernels/lookup.cu`'s `rq_exact_scores`, and with the
//! tensor-core screening `kernels/exact_tc.cu`'s `rq_exact_screened`), selected and merged
//! on the device by the row top-k kernels.

use crate::device::{Device, KernelArg, LaunchConfig};
use crate::error::Result;
use crate::matrix::Matrix;
use crate::metric::Metric;
use crate::topk::TopK;

use super::lookup::{metric_arg, tile_launch, LUT_LD2, LUT_TILE};
use super::resident::{Residency, Reuse};
use super::topk::{lists_into, merge_into, topk_into};
use super::{
    alloc, alloc_topk, arg_i32, arg_len, check_k, download_topk, grid_dim, grid_dim_yz, launch_1d,
};

/// `rq_exact_screened` (kernels/exact_tc.cu): queries × items per block, threads per block
/// and the staged rows' stride in floats (its shared memory: both operands' staged rows).
const SCREEN_QUERIES: usize = 64;
const SCREEN_ITEMS: usize = 128;
const SCREEN_THREADS: u32 = 256;
const SCREEN_LD: usize = 36;

/// Bytes of the score tile the exact brute-force top-k selects from per step: `rows ×
/// cols` f32 scores of a query batch against a block of items (256 MiB: 1024 queries ×
/// 65 536 items, about 1 ms of HBM traffic written and read back on an H200).
const EXACT_TILE_BYTES: usize = 256 << 20;
/// Fewest item columns per tile while queries allow (the per-block selection and merge are
/// paid once per block of columns).
const EXACT_MIN_COLS: usize = 4096;
/// Rows the selection wants to keep an H200 busy (132 SMs × 8 warp-rows × 2): a batch of
/// fewer queries has its rows split into segments selected separately.
const EXACT_SELECT_ROWS: usize = 2048;
/// Fewest columns of such a segment.
const EXACT_MIN_SEGMENT: usize = 1024;

/// Shape of the exact top-k's score tiles: at most `rows` queries × `cols` items per step,
/// each row selected as segments of `segment` columns (then merged) when set and narrower
/// than the block.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ExactTiles {
    pub rows: usize,
    pub cols: usize,
    pub segment: Option<usize>,
}

impl ExactTiles {
    /// Tiles of at most [`EXACT_TILE_BYTES`] for `b` queries and `n` items: all queries at
    /// once with ≥ [`EXACT_MIN_COLS`] columns when that fits, else batches of queries; rows
    /// split into segments (≥ [`EXACT_MIN_SEGMENT`] and ≥ 4k columns) until the selection
    /// has about [`EXACT_SELECT_ROWS`] rows.
    fn for_shape(b: usize, n: usize, k: usize) -> Self {
        let cells = EXACT_TILE_BYTES / 4;
        let rows = b.clamp(1, cells / EXACT_MIN_COLS);
        let cols = (cells / rows).min(n).max(1);
        let parts = EXACT_SELECT_ROWS.div_ceil(rows);
        let width = cols
            .div_ceil(parts)
            .next_multiple_of(32)
            .max(EXACT_MIN_SEGMENT)
            .max(4 * k);
        ExactTiles {
            rows,
            cols,
            segment: (width < cols).then_some(width),
        }
    }
}

/// Exact brute-force top-k of `queries` (`B × d`) against `items` (`N × d`) with `metric`;
/// ids are item rows. `1 ≤ k ≤ 2048`. Scores equal the reference's bit for bit. With
/// `screen` (the backend's tensor cores), the item blocks after the first are screened on
/// the tensor cores (`exact_topk_tiled`).
pub fn exact_topk<D: Device>(
    dev: &D,
    res: &Residency<D>,
    queries: &Matrix,
    items: &Matrix,
    metric: Metric,
    k: usize,
    screen: bool,
) -> Result<TopK> {
    let tiles = ExactTiles::for_shape(queries.rows(), items.rows(), k);
    exact_topk_tiled(dev, res, queries, items, metric, k, tiles, screen)
}

/// [`exact_topk`] with explicit tiles (tests use small ones to reach every merge). Per batch
/// of `tiles.rows` queries and block of `tiles.cols` items, `rq_exact_scores` writes the
/// scores (a tiled GEMM-like kernel: every item row is read once per 32 queries, not once
/// per query), the row-wise top-k selects the block's best `k` (warp queues or radix select;
/// with segments, the best `k` of each segment, then `rq_topk_lists` the best of those) and
/// `rq_topk_merge` merges them into the batch's running list; only the final `B × k` result
/// crosses to the host.
/// With `screen`, every block after a batch's first is scored by
/// `rq_exact_screened` instead: a TF32 tensor-core screening, and the reference's exact
/// score only for the items whose screening score is within its error bound of the batch's
/// running k-th exact score (the others -inf, which the final k-th, never below the running
/// one, cannot include); the selection and merges are the same, so is the result.
#[allow(clippy::too_many_arguments)]
pub(crate) fn exact_topk_tiled<D: Device>(
    dev: &D,
    res: &Residency<D>,
    queries: &Matrix,
    items: &Matrix,
    metric: Metric,
    k: usize,
    tiles: ExactTiles,
    screen: bool,
) -> Result<TopK> {
    let (b, d, n) = (queries.rows(), items.cols(), items.rows());
    queries.check_cols(d, "queries")?;
    if b == 0 || k == 0 {
        return Ok(TopK::empty(b, k));
    }
    check_k(k, "exact_topk: k")?;
    if n == 0 {
        return Ok(TopK::empty(b, k));
    }
    let d32 = arg_len(d, "exact_topk: d")?;
    let (rows, cols) = (tiles.rows.clamp(1, b), tiles.cols.clamp(1, n));
    let segment = tiles.segment.filter(|&w| w >= 1 && w < cols);
    // Row stride of the score tile: whole segments (padding columns hold -inf).
    let ld = segment.map_or(cols, |w| cols.next_multiple_of(w));
    arg_i32(n.max(ld), "exact_topk: items")?;
    let q = res.input(dev, queries.data(), Reuse::PinnedOnly)?;
    let x = res.input(dev, items.data(), Reuse::PinnedOnly)?;
    let scores = alloc::<D, f32>(dev, rows * ld)?;
    let lists = match segment {
        Some(w) => Some(alloc_topk(dev, rows * (ld / w), k)?),
        None => None,
    };
    let mut run = alloc_topk(dev, rows, k)?;
    let mut spare = alloc_topk(dev, rows, k)?;
    let block = alloc_topk(dev, rows, k)?;
    // The screening's norms: every query's and every item's squared norm (rq_row_norms).
    let norms = if screen && cols < n {
        Some((row_norms(dev, &q, b, d)?, row_norms(dev, &x, n, d)?))
    } else {
        None
    };
    let mut out = TopK::empty(b, k);
    for q0 in (0..b).step_by(rows) {
        let qb = rows.min(b - q0);
        for c0 in (0..n).step_by(cols) {
            let nc = cols.min(n - c0);
            let target = if c0 == 0 { &run } else { &block };
            let target = (&target.0, &target.1);
            let w = segment.filter(|&w| w < nc);
            let width = w.map_or(nc, |w| nc.next_multiple_of(w));
            match (&norms, c0 > 0) {
                (Some((qn, xn)), true) => {
                    // Item tiles of 128 on x, query tiles of 64 on y.
                    let cfg = LaunchConfig {
                        grid: [
                            grid_dim(width.div_ceil(SCREEN_ITEMS), "exact_topk: item tiles")?,
                            grid_dim_yz(qb.div_ceil(SCREEN_QUERIES), "exact_topk: query tiles")?,
                            1,
                        ],
                        block: [SCREEN_THREADS, 1, 1],
                        shared_bytes: (4 * (SCREEN_QUERIES + SCREEN_ITEMS) * SCREEN_LD) as u32,
                    };
                    dev.launch(
                        "rq_exact_screened",
                        cfg,
                        &[
                            KernelArg::Buf(&*q),
                            KernelArg::I64(q0 as i64),
                            KernelArg::I32(qb as i32),
                            KernelArg::I32(d32),
                            KernelArg::Buf(qn),
                            KernelArg::Buf(&*x),
                            KernelArg::I64(c0 as i64),
                            KernelArg::I32(nc as i32),
                            KernelArg::I32(width as i32),
                            KernelArg::Buf(xn),
                            KernelArg::Buf(&run.1),
                            KernelArg::I32(arg_i32(k, "exact_topk: k")?),
                            KernelArg::I32(metric_arg(metric)),
                            KernelArg::Buf(&scores),
                        ],
                    )?;
                }
                _ => {
                    // Item tiles on x, query tiles on y (≤ 65535: at most 16384 queries).
                    let cfg = tile_launch(
                        (width, "exact_topk: item tiles"),
                        (qb, "exact_topk: query tiles"),
                        2 * LUT_TILE * LUT_LD2 * 8,
                    )?;
                    dev.launch(
                        "rq_exact_scores",
                        cfg,
                        &[
                            KernelArg::Buf(&*q),
                            KernelArg::I64((q0 * d) as i64),
                            KernelArg::I32(qb as i32),
                            KernelArg::I32(d32),
                            KernelArg::Buf(&*x),
                            KernelArg::I64(c0 as i64),
                            KernelArg::I32(nc as i32),
                            KernelArg::I32(width as i32),
                            KernelArg::I32(metric_arg(metric)),
                            KernelArg::Buf(&scores),
                        ],
                    )?;
                }
            }
            match (w, &lists) {
                (Some(w), Some(lists)) => {
                    // Each row as width / w segments: their top-k lists, then the best of them.
                    let parts = width / w;
                    topk_into(dev, &scores, (qb * parts, w), k, (&lists.0, &lists.1))?;
                    lists_into(dev, (qb, parts, w, nc), k, (&lists.0, &lists.1), target)?;
                }
                _ => topk_into(dev, &scores, (qb, nc), k, target)?,
            }
            if c0 > 0 {
                merge_into(
                    dev,
                    qb,
                    k,
                    (&run.0, &run.1),
                    ((&block.0, &block.1), c0),
                    (&spare.0, &spare.1),
                )?;
                std::mem::swap(&mut run, &mut spare);
            }
        }
        let part = download_topk(dev, &run.0, &run.1, qb, k)?;
        out.ids[q0 * k..(q0 + qb) * k].copy_from_slice(&part.ids);
        out.scores[q0 * k..(q0 + qb) * k].copy_from_slice(&part.scores);
    }
    Ok(out)
}

/// The squared norms of the `rows` rows of `x` (`rows × d` f32 on the device), f64 sums
/// rounded to f32 (`rq_row_norms`).
fn row_norms<D: Device>(dev: &D, x: &D::Buffer, rows: usize, d: usize) -> Result<D::Buffer> {
    let out = alloc::<D, f32>(dev, rows)?;
    dev.launch(
        "rq_row_norms",
        launch_1d(rows.div_ceil(256), 256, 0, "exact_topk: norms")?,
        &[
            KernelArg::Buf(x),
            KernelArg::I32(arg_i32(rows, "exact_topk: rows")?),
            KernelArg::I32(arg_len(d, "exact_topk: d")?),
            KernelArg::Buf(&out),
        ],
    )?;
    Ok(out)
}
