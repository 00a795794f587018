//! The search pipeline of DESIGN §3 on the device: lookup tables → beam traversal → fused
//! lookup + top-k (→ exact re-rank of its shortlist), each step reading the previous one's
//! output where it lies. Only the queries go up (with the per-call scalars) and only the
//! results come down, so a batch does not pay a round trip through host memory per step.

use crate::device::{Device, KernelArg};
use crate::error::Result;
use crate::index::{Codebooks, Index};
use crate::matrix::Matrix;
use crate::search::{Rerank, SearchParams};
use crate::topk::TopK;

use super::backend::Storage;
use super::fused_scan::FusedKernel;
use super::lookup::{
    fused_on_device, rerank_shortlist, tables_on_device, DeviceCandidates, DeviceShortlist,
    FusedOut,
};
use super::resident::{Residency, Reuse};
use super::traverse::traverse_on_device;
use super::{alloc, arg_i32, check_k, download, download_topk, launch_1d};

/// Runs the pipeline for `queries` (`B × d`) with `codebooks` (the index's, rounded to
/// `storage`): `B × k` caller ids (mapped from item positions on the device) and scores, and
/// the candidate items of each query.
/// `None` when every candidate is to be re-ranked (`rerank_k` unset), whose shortlist is not
/// a fixed-length list: the caller composes that case. Bad parameters (re-rank without
/// embeddings, `rerank_k < k`, beams, `k`) are errors.
#[allow(clippy::too_many_arguments)]
pub(crate) fn search<D: Device>(
    dev: &D,
    res: &Residency<D>,
    storage: Storage,
    fused: FusedKernel,
    codebooks: &Codebooks,
    index: &Index,
    queries: &Matrix,
    params: &SearchParams,
) -> Result<Option<(TopK, Vec<usize>)>> {
    let Some(shortlist) = crate::search::shortlist(index, params)? else {
        return Ok(None);
    };
    check_k(params.k, "search: k")?;
    if shortlist != params.k {
        check_k(shortlist, "search: rerank-k")?;
    }
    let b = queries.rows();
    if b == 0 {
        return Ok(Some((TopK::empty(0, params.k), Vec::new())));
    }
    // Query q's candidate nodes start at q · w in the last depth's kept lists. On the device
    // before the first launch (an upload waits for the stream), content-cached (the same
    // batch shape reuses one copy).
    let w = params.beams.last().copied().unwrap_or(0);
    let start: Vec<i64> = (0..b).map(|q| (q * w) as i64).collect();
    let start = res.input(dev, &start, Reuse::Content)?;
    let tables = tables_on_device(dev, res, queries, codebooks, index.metric, storage)?;
    let kept = traverse_on_device(dev, res, &tables, &index.tree, &params.beams)?;
    debug_assert_eq!(kept.w, w);
    let cand = DeviceCandidates {
        depth: params.beams.len(),
        nodes: &kept.nodes,
        start: &*start,
        count: &kept.count,
    };
    let FusedOut {
        pos,
        scores,
        scanned,
        ids,
    } = fused_on_device(dev, res, &tables, index, &cand, shortlist, fused)?;
    // The best k positions and scores, on the device.
    let (pos, scores) = match (params.rerank, &index.embeddings) {
        (Rerank::Exact { .. }, Some(e)) => {
            // The fused output is B × shortlist (content-cached: one copy per batch shape).
            let start: Vec<i64> = (0..b).map(|q| (q * shortlist) as i64).collect();
            let count = vec![arg_i32(shortlist, "search: rerank-k")?; b];
            let (start, count) = (
                res.input(dev, &start, Reuse::Content)?,
                res.input(dev, &count, Reuse::Content)?,
            );
            let list = DeviceShortlist {
                list: &pos,
                start: &start,
                count: &count,
            };
            rerank_shortlist(dev, res, queries, e, &ids, index.metric, &list, params.k)?
        }
        _ => (pos, scores),
    };
    let n = b * params.k;
    let caller = alloc::<D, i64>(dev, n)?;
    dev.launch(
        "rq_gather_ids",
        launch_1d(n.div_ceil(256), 256, 0, "search")?,
        &[
            KernelArg::Buf(&pos),
            KernelArg::I64(n as i64),
            KernelArg::Buf(&*ids),
            KernelArg::Buf(&caller),
        ],
    )?;
    let top = download_topk(dev, &caller, &scores, b, params.k)?;
    let scanned: Vec<i64> = download(dev, &scanned, b)?;
    let scanned = scanned.into_iter().map(|s| s.max(0) as usize).collect();
    Ok(Some((top, scanned)))
}
