//! Wrappers of `kernels/topk.cu`: row-wise and segmented top-k.

use crate::device::{Device, KernelArg, LaunchConfig};
use crate::error::Result;
use crate::matrix::Matrix;
use crate::topk::TopK;

use super::resident::{Residency, Reuse};
use super::{
    alloc_topk, arg_i32, arg_len, check_k, download_topk, grid_dim, grid_dim_yz, launch_1d,
    launch_select, round16, select_bytes, select_cap, upload, RADIX_HEAD, RADIX_SLOTS,
    SELECT_THREADS,
};

/// Warps (rows) per block of `rq_topk_argmax` and `rq_topk_warp`.
const ROW_WARPS: usize = 8;
/// Largest `k` served by the warp queues (one warp per row, no shared memory; `k / 32`
/// rounded up to a power of two entries per lane); larger `k` (up to [`super::MAX_K`]) by
/// radix select.
const WARP_MAX_K: usize = 256;
/// Row-wise top-k of `scores` (`rows × n`): `rows × k` (column id, score), best first,
/// ties → lower column, missing slots `-1` / `-inf`. `k = 1` runs the warp argmax,
/// `2 ≤ k ≤ 256` the warp queues, `256 < k ≤ 2048` the radix select.
pub fn topk<D: Device>(dev: &D, res: &Residency<D>, scores: &Matrix, k: usize) -> Result<TopK> {
    let (rows, n) = (scores.rows(), scores.cols());
    if rows == 0 || k == 0 {
        return Ok(TopK::empty(rows, k));
    }
    check_k(k, "topk: k")?;
    // The limits of `topk_into`, before any copy.
    arg_i32(rows, "topk: rows")?;
    arg_len(n, "topk: columns")?;
    let x = res.input(dev, scores.data(), Reuse::PinnedOnly)?;
    let (ids, out) = alloc_topk(dev, rows, k)?;
    topk_into(dev, &x, (rows, n), k, (&ids, &out))?;
    download_topk(dev, &ids, &out, rows, k)
}

/// Launches the row-wise top-k of the `rows × n` f32 matrix in `x` (`rows ≥ 1`,
/// `1 ≤ k ≤ 2048`) into `out` (`rows × k` i64 column ids and f32 scores, the layout of
/// [`topk`]'s result); not synchronised. `n` at most [`super::MAX_LOOP_LEN`] (the kernels
/// walk a row with `int` column indices), else an error.
pub(crate) fn topk_into<D: Device>(
    dev: &D,
    x: &D::Buffer,
    (rows, n): (usize, usize),
    k: usize,
    out: (&D::Buffer, &D::Buffer),
) -> Result<()> {
    let n32 = arg_len(n, "topk: columns")?;
    let k32 = arg_i32(k, "topk: k")?;
    if k > WARP_MAX_K {
        // Radix select, one block per row: (scores, n, k, slots, ids, scores out).
        let slots = RADIX_SLOTS.max(k.next_power_of_two());
        let shared = RADIX_HEAD + round16(4 * SELECT_THREADS as usize) + 8 * slots;
        let cfg = launch_1d(rows, SELECT_THREADS, shared, "topk")?;
        return dev.launch(
            "rq_topk_radix",
            cfg,
            &[
                KernelArg::Buf(x),
                KernelArg::I32(n32),
                KernelArg::I32(k32),
                KernelArg::I32(arg_i32(slots, "topk: slots")?),
                KernelArg::Buf(out.0),
                KernelArg::Buf(out.1),
            ],
        );
    }
    // One warp per row: (scores, rows, n[, k], ids, scores out).
    let cfg = launch_1d(rows.div_ceil(ROW_WARPS), (ROW_WARPS * 32) as u32, 0, "topk")?;
    let mut args = vec![
        KernelArg::Buf(x),
        KernelArg::I32(arg_i32(rows, "topk: rows")?),
        KernelArg::I32(n32),
    ];
    let name = if k == 1 {
        "rq_topk_argmax"
    } else {
        args.push(KernelArg::I32(k32));
        "rq_topk_warp"
    };
    args.extend([KernelArg::Buf(out.0), KernelArg::Buf(out.1)]);
    dev.launch(name, cfg, &args)
}

/// Launches `rq_topk_lists`: for each of `rows` rows selected as `parts` segments of `w`
/// columns (`lists`: `(rows · parts) × k`, ids local to their segment), the row's best `k`
/// by column id (columns ≥ `n` are padding and dropped) into `out` (`rows × k`). Not
/// synchronised.
pub(crate) fn lists_into<D: Device>(
    dev: &D,
    (rows, parts, w, n): (usize, usize, usize, usize),
    k: usize,
    lists: (&D::Buffer, &D::Buffer),
    out: (&D::Buffer, &D::Buffer),
) -> Result<()> {
    let cap = select_cap(k, SELECT_THREADS);
    let cfg = launch_1d(rows, SELECT_THREADS, select_bytes(cap), "topk lists")?;
    dev.launch(
        "rq_topk_lists",
        cfg,
        &[
            KernelArg::Buf(lists.0),
            KernelArg::Buf(lists.1),
            KernelArg::I32(arg_i32(parts, "topk lists: segments")?),
            KernelArg::I32(arg_i32(k, "topk lists: k")?),
            KernelArg::I32(arg_i32(w, "topk lists: segment width")?),
            KernelArg::I32(arg_i32(n, "topk lists: columns")?),
            KernelArg::I32(arg_i32(k, "topk lists: k")?),
            KernelArg::I32(arg_i32(cap, "topk lists: cap")?),
            KernelArg::Buf(out.0),
            KernelArg::Buf(out.1),
        ],
    )
}

/// Launches the merge of two `rows × k` top-k lists on the device (`rq_topk_merge`): `a`
/// holds global ids, `b` ids relative to `b_base` (all above `a`'s); `out` receives the best
/// `k` of both, in the same layout. Not synchronised.
pub(crate) fn merge_into<D: Device>(
    dev: &D,
    rows: usize,
    k: usize,
    a: (&D::Buffer, &D::Buffer),
    (b, b_base): ((&D::Buffer, &D::Buffer), usize),
    out: (&D::Buffer, &D::Buffer),
) -> Result<()> {
    const THREADS: usize = 256;
    let cfg = LaunchConfig {
        grid: [
            grid_dim(rows, "topk merge: rows")?,
            grid_dim_yz((2 * k).div_ceil(THREADS), "topk merge: slots")?,
            1,
        ],
        block: [THREADS as u32, 1, 1],
        shared_bytes: 0,
    };
    dev.launch(
        "rq_topk_merge",
        cfg,
        &[
            KernelArg::Buf(a.0),
            KernelArg::Buf(a.1),
            KernelArg::Buf(b.0),
            KernelArg::Buf(b.1),
            KernelArg::I64(i64::try_from(b_base).map_err(|_| {
                crate::error::Error::param(format!("topk merge: base {b_base} overflows i64"))
            })?),
            KernelArg::I32(arg_i32(k, "topk merge: k")?),
            KernelArg::Buf(out.0),
            KernelArg::Buf(out.1),
        ],
    )
}

/// Segmented top-k: segment `s` is `values[offsets[s]..offsets[s+1]]` (offsets
/// non-decreasing, last ≤ `values.len()`, as validated by the caller); ids are offsets
/// within the segment. `1 ≤ k ≤ 2048`.
pub fn segmented_topk<D: Device>(
    dev: &D,
    values: &[f32],
    offsets: &[usize],
    k: usize,
) -> Result<TopK> {
    let segs = offsets.len().saturating_sub(1);
    if segs == 0 || k == 0 {
        return Ok(TopK::empty(segs, k));
    }
    check_k(k, "segmented_topk: k")?;
    let offs: Vec<i64> = offsets.iter().map(|&o| o as i64).collect();
    let x = upload(dev, values)?;
    let o = upload(dev, &offs)?;
    let cap = select_cap(k, SELECT_THREADS);
    let cfg = launch_1d(segs, SELECT_THREADS, select_bytes(cap), "segmented_topk")?;
    launch_select(
        dev,
        "rq_segmented_topk",
        cfg,
        (segs, k, cap),
        vec![KernelArg::Buf(&x), KernelArg::Buf(&o)],
    )
}

#[cfg(test)]
mod tests {
    use super::super::no_launch::{launched, NoLaunch};
    use super::*;
    use crate::error::Error;

    /// A row as long as the kernels' `int` column allows (2³¹ − 1) is refused before any
    /// launch on every path (argmax, warp queues, radix select): their loops step an `int`
    /// column index by up to 2048 past the last chunk start, which would overflow and read
    /// before the row.
    #[test]
    fn rows_beyond_the_int_loops_are_refused() {
        let dev = NoLaunch;
        let x = upload(&dev, &[0f32; 4]).unwrap();
        for k in [1, 100, 300] {
            let (ids, out) = alloc_topk(&dev, 1, k).unwrap();
            match topk_into(&dev, &x, (1, i32::MAX as usize), k, (&ids, &out)) {
                Err(Error::Param(m)) => assert!(m.contains("topk: columns = 2147483647"), "{m}"),
                other => panic!("k = {k}: expected a parameter error, got {other:?}"),
            }
        }
        // Within the limit the launch happens.
        let (ids, out) = alloc_topk(&dev, 1, 1).unwrap();
        match topk_into(&dev, &x, (1, super::super::MAX_LOOP_LEN), 1, (&ids, &out)) {
            Err(Error::Device(m)) => assert_eq!(m, launched("rq_topk_argmax")),
            other => panic!("expected the launch, got {other:?}"),
        }
    }
}
