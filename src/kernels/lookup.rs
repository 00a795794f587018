//! Wrappers of `kernels/lookup.cu`: lookup tables, the fused residual lookup + top-k and
//! exact re-rank (the exact brute-force top-k, which shares the score tiles, is in
//! `exact.rs`).

use crate::candidates::Candidates;
use crate::device::{Device, KernelArg, LaunchConfig};
use crate::error::{Error, Result};
use crate::index::codebooks::MAX_LEVELS;
use crate::index::{CodeData, Codebooks, Embeddings, Index};
use crate::matrix::Matrix;
use crate::metric::Metric;
use crate::tables::QueryTables;
use crate::topk::TopK;

use super::backend::Storage;
use super::fused_scan::{launch_scan, scan_plan, FusedKernel};
use super::resident::{Held, Residency, Reuse};
use super::{
    alloc, alloc_topk, arg_i32, arg_len, check_k, download, download_topk, grid_dim, grid_dim_yz,
    launch_1d, launch_select_on_device, range_per_thread, round16, select_bytes, select_cap,
    upload, MAX_LOOP_LEN, MAX_SHARED_BYTES, SELECT_THREADS,
};

/// `rq_lut` and `rq_exact_scores`: threads per block edge, tile edge (queries × rows per
/// block), staged row stride in floats and in doubles (32 staged dimensions per step).
const LUT_THREADS: usize = 16;
pub(super) const LUT_TILE: usize = 32;
const LUT_LD: usize = 36;
pub(super) const LUT_LD2: usize = 34;
/// Largest Σ K_l whose table rows the fused kernel stages in shared memory (floats).
const FUSED_SHARED_TABLES: usize = 8192;

/// The kernels' metric code (`RQ_METRIC_*`).
pub(crate) fn metric_arg(m: Metric) -> i32 {
    match m {
        Metric::Ip => 0,
        Metric::L2 => 1,
    }
}

/// Lookup tables on the device: level `l`'s `B × K_l` table starts at element `at[l]` of
/// `luts` (the levels stacked, which is how `rq_fused_topk` and the beam kernels read them),
/// `qnorm` holds `||q_b||²`.
pub(crate) struct DeviceTables<B> {
    pub metric: Metric,
    pub queries: usize,
    pub luts: B,
    pub at: Vec<usize>,
    pub ks: Vec<usize>,
    /// `at` (i64) and `ks` (i32) on the device, for the kernels that read every level
    /// (through the residency's content cache: the same shapes reuse one copy).
    pub at_dev: Held<B>,
    pub ks_dev: Held<B>,
    pub qnorm: B,
}

/// A launch of the 32 × 32 score tiles (`rq_lut`, `rq_exact_scores`): `x.0` and `y.0`
/// elements (named by `x.1`, `y.1` in errors) in tiles of 32 on the grid's x and y
/// (y ≤ 65 535 tiles), 16 × 16 threads, `shared` bytes.
pub(super) fn tile_launch(
    x: (usize, &str),
    y: (usize, &str),
    shared: usize,
) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        grid: [
            grid_dim(x.0.div_ceil(LUT_TILE), x.1)?,
            grid_dim_yz(y.0.div_ceil(LUT_TILE), y.1)?,
            1,
        ],
        block: [LUT_THREADS as u32, LUT_THREADS as u32, 1],
        shared_bytes: shared as u32,
    })
}

/// The layout of `B × K_l` tables stacked level after level: each level's element offset,
/// and the offsets (i64) and sizes (i32) on the device (content-cached, so repeated calls of
/// one shape upload nothing). Called before a call's first launch (an upload waits for the
/// stream, so one between launches would stall it).
#[allow(clippy::type_complexity)]
fn stacked_layout<D: Device>(
    dev: &D,
    res: &Residency<D>,
    b: usize,
    ks: &[usize],
) -> Result<(Vec<usize>, Held<D::Buffer>, Held<D::Buffer>)> {
    let at: Vec<usize> = ks
        .iter()
        .scan(0, |acc, &k| {
            let at = *acc;
            *acc += b * k;
            Some(at)
        })
        .collect();
    let at64: Vec<i64> = at.iter().map(|&a| a as i64).collect();
    let ks32 = ks
        .iter()
        .map(|&k| arg_i32(k, "lookup tables: K"))
        .collect::<Result<Vec<i32>>>()?;
    Ok((
        at,
        res.input(dev, &at64, Reuse::Content)?,
        res.input(dev, &ks32, Reuse::Content)?,
    ))
}

/// Computes the lookup tables of `queries` (`B ≥ 1` rows × d) on the device (launched, not
/// synchronised). The codebooks are uploaded as `storage` (their values must be rounded to it
/// already).
pub(crate) fn tables_on_device<D: Device>(
    dev: &D,
    res: &Residency<D>,
    queries: &Matrix,
    codebooks: &Codebooks,
    metric: Metric,
    storage: Storage,
) -> Result<DeviceTables<D::Buffer>> {
    let (b, d) = (queries.rows(), codebooks.dim());
    queries.check_cols(d, "queries")?;
    let b32 = arg_i32(b, "lookup_tables: queries")?;
    let d32 = arg_len(d, "lookup_tables: d")?;
    let ks = codebooks.sizes();
    let (at, at_dev, ks_dev) = stacked_layout(dev, res, b, &ks)?;
    let q = res.input(dev, queries.data(), Reuse::PinnedOnly)?;
    let luts = alloc::<D, f32>(dev, b * ks.iter().sum::<usize>())?;
    for (cb, &off) in codebooks.iter().zip(&at) {
        let kk = cb.len();
        let c = storage.input(dev, res, cb.words().data())?;
        let cfg = tile_launch(
            (b, "lookup_tables: query tiles"),
            (kk, "lookup_tables: codeword tiles"),
            2 * LUT_TILE * LUT_LD * 4,
        )?;
        dev.launch(
            "rq_lut",
            cfg,
            &[
                KernelArg::Buf(&*q),
                KernelArg::I32(b32),
                KernelArg::I32(d32),
                KernelArg::Buf(&*c),
                KernelArg::I32(storage.dtype_arg()),
                KernelArg::I32(kk as i32),
                KernelArg::Buf(&luts),
                KernelArg::I64(off as i64),
            ],
        )?;
    }
    let qnorm = alloc::<D, f32>(dev, b)?;
    dev.launch(
        "rq_row_norms",
        launch_1d(b.div_ceil(128), 128, 0, "lookup_tables")?,
        &[
            KernelArg::Buf(&*q),
            KernelArg::I32(b32),
            KernelArg::I32(d32),
            KernelArg::Buf(&qnorm),
        ],
    )?;
    Ok(DeviceTables {
        metric,
        queries: b,
        luts,
        at,
        ks,
        at_dev,
        ks_dev,
        qnorm,
    })
}

/// Host tables uploaded in the device layout of [`DeviceTables`].
pub(crate) fn upload_tables<D: Device>(
    dev: &D,
    res: &Residency<D>,
    tables: &QueryTables,
) -> Result<DeviceTables<D::Buffer>> {
    let b = tables.queries();
    let ks: Vec<usize> = tables.levels.iter().map(Matrix::cols).collect();
    let (at, at_dev, ks_dev) = stacked_layout(dev, res, b, &ks)?;
    // Each level straight into its place in the stacked buffer (no host copy).
    let mut luts = alloc::<D, f32>(dev, b * ks.iter().sum::<usize>())?;
    for (m, &off) in tables.levels.iter().zip(&at) {
        dev.upload_at(&mut luts, 4 * off, bytemuck::cast_slice(m.data()))?;
    }
    Ok(DeviceTables {
        metric: tables.metric,
        queries: b,
        luts,
        at,
        ks,
        at_dev,
        ks_dev,
        qnorm: upload(dev, &tables.qnorm)?,
    })
}

/// Lookup tables of `queries` (`B × d`): per level `B × K_l`, `<q_b, C_l[k]>`, and `||q||²`.
/// The codebooks are uploaded as `storage` (their values must be rounded to it already).
pub fn lookup_tables<D: Device>(
    dev: &D,
    res: &Residency<D>,
    queries: &Matrix,
    codebooks: &Codebooks,
    metric: Metric,
    storage: Storage,
) -> Result<QueryTables> {
    let b = queries.rows();
    queries.check_cols(codebooks.dim(), "queries")?;
    if b == 0 {
        return Ok(QueryTables {
            metric,
            qnorm: Vec::new(),
            levels: codebooks
                .sizes()
                .into_iter()
                .map(|k| Matrix::zeros(0, k))
                .collect(),
        });
    }
    let t = tables_on_device(dev, res, queries, codebooks, metric, storage)?;
    dev.synchronize()?;
    let all: Vec<f32> = download(dev, &t.luts, b * t.ks.iter().sum::<usize>())?;
    let mut levels = Vec::with_capacity(t.ks.len());
    for (&at, &kk) in t.at.iter().zip(&t.ks) {
        levels.push(Matrix::new(b, kk, all[at..at + b * kk].to_vec())?);
    }
    Ok(QueryTables {
        metric,
        qnorm: download(dev, &t.qnorm, b)?,
        levels,
    })
}

/// A query batch's candidate nodes on the device: query `b`'s are
/// `nodes[start[b] .. start[b] + count[b])` (u32 node ids at `depth`; `start` i64, `count`
/// i32, `B` each) — a CSR list or the beam kernels' padded `B × W` lists.
pub(crate) struct DeviceCandidates<'a, B> {
    pub depth: usize,
    pub nodes: &'a B,
    pub start: &'a B,
    pub count: &'a B,
}

/// Device outputs of the fused lookup: `B × k` positions (i64, `-1` empty) and scores, the
/// candidate items of each query (i64), and the device copy of the index's caller ids the
/// kernel ranked by (for the steps after it: one residency lookup per call).
pub(crate) struct FusedOut<B> {
    pub pos: B,
    pub scores: B,
    pub scanned: B,
    pub ids: Held<B>,
}

/// What both fused kernels read besides the tables, codes and candidates (the depth's item
/// CSR, the items' norms; the caller ids travel in `out`) and the outputs they write.
pub(crate) struct FusedIo<B> {
    pub items: Held<B>,
    pub norms: Held<B>,
    pub out: FusedOut<B>,
}

/// Launches the fused residual lookup + top-k (`1 ≤ k ≤ 2048`) over device tables and
/// candidates (not synchronised): the scan kernel when `kernel` chooses it for these inputs
/// (`fused_scan.rs`), else the range walk.
pub(crate) fn fused_on_device<D: Device>(
    dev: &D,
    res: &Residency<D>,
    tables: &DeviceTables<D::Buffer>,
    index: &Index,
    cand: &DeviceCandidates<'_, D::Buffer>,
    k: usize,
    kernel: FusedKernel,
) -> Result<FusedOut<D::Buffer>> {
    let b = tables.queries;
    check_k(k, "fused_topk: k")?;
    let levels = index.levels();
    let depth = cand.depth;
    if depth == 0 || depth > levels || levels > MAX_LEVELS || tables.ks.len() != levels {
        return Err(Error::shape(format!(
            "fused_topk: {} table levels, candidates of depth {depth}, an index of {levels} \
             levels",
            tables.ks.len()
        )));
    }
    // Item positions and each query's count of candidate items are 32-bit in the kernels.
    let n = arg_i32(index.len(), "fused_topk: items")?;
    let (pos, scores) = alloc_topk(dev, b, k)?;
    let io = FusedIo {
        items: res.input(
            dev,
            &index.tree.depths[depth - 1].item_start,
            Reuse::Content,
        )?,
        norms: res.input(dev, &index.item_norms, Reuse::Content)?,
        out: FusedOut {
            pos,
            scores,
            scanned: alloc::<D, i64>(dev, b)?,
            ids: res.input(dev, &index.ids, Reuse::Content)?,
        },
    };
    let ksum: usize = tables.ks.iter().sum();
    if let Some(plan) = scan_plan(dev, kernel, index, depth, ksum, k) {
        launch_scan(dev, res, tables, index, cand, plan, &io)?;
        return Ok(io.out);
    }
    let (codes, code_bytes) = match index.codes.data() {
        CodeData::U8(v) => (res.input(dev, v, Reuse::Content)?, 1),
        CodeData::U16(v) => (res.input(dev, v, Reuse::Content)?, 2),
    };
    let per_thread = range_per_thread(k);
    let cap = select_cap(k, SELECT_THREADS * per_thread as u32);
    let rest = round16(8 * SELECT_THREADS as usize + 8) + select_bytes(cap);
    // The query's table rows go to shared memory when they fit beside the selector.
    let lut_shared = ksum <= FUSED_SHARED_TABLES && round16(4 * ksum) + rest <= MAX_SHARED_BYTES;
    let shared = if lut_shared { round16(4 * ksum) } else { 0 } + rest;
    let cfg = launch_1d(b, SELECT_THREADS, shared, "fused_topk")?;
    // Up to 4 levels: the entry point with 4-level loops (fewer registers, more blocks/SM).
    let entry = if levels <= 4 {
        "rq_fused_topk_l4"
    } else {
        "rq_fused_topk"
    };
    dev.launch(
        entry,
        cfg,
        &[
            KernelArg::Buf(&tables.luts),
            KernelArg::Buf(&*tables.at_dev),
            KernelArg::Buf(&*tables.ks_dev),
            KernelArg::I32(levels as i32),
            KernelArg::I32(lut_shared as i32),
            KernelArg::Buf(&*codes),
            KernelArg::I32(code_bytes),
            KernelArg::I32(n),
            KernelArg::Buf(&*io.items),
            KernelArg::Buf(cand.start),
            KernelArg::Buf(cand.count),
            KernelArg::Buf(cand.nodes),
            KernelArg::Buf(&*io.norms),
            KernelArg::Buf(&tables.qnorm),
            KernelArg::I32(metric_arg(tables.metric)),
            KernelArg::Buf(&*io.out.ids),
            KernelArg::I32(per_thread as i32),
            KernelArg::Buf(&io.out.scanned),
            KernelArg::I32(k as i32),
            KernelArg::I32(cap as i32),
            KernelArg::Buf(&io.out.pos),
            KernelArg::Buf(&io.out.scores),
        ],
    )?;
    Ok(io.out)
}

/// Fused residual lookup + top-k over each query's candidates (the items of its kept nodes
/// at depth `candidates.depth`): `B × k` item positions (ranked by score, then the caller's
/// id `index.ids[pos]`) and scores; missing slots `-1` / `-inf`. `1 ≤ k ≤ 2048`. `kernel`
/// chooses the kernel (the results do not depend on it).
pub fn fused_topk<D: Device>(
    dev: &D,
    res: &Residency<D>,
    tables: &QueryTables,
    index: &Index,
    candidates: &Candidates,
    k: usize,
    kernel: FusedKernel,
) -> Result<TopK> {
    let b = candidates.queries();
    if b == 0 || k == 0 {
        return Ok(TopK::empty(b, k));
    }
    if tables.queries() != b {
        return Err(Error::shape(format!(
            "fused_topk: tables of {} queries for candidates of {b}",
            tables.queries()
        )));
    }
    check_candidate_items(index, candidates)?;
    let (d_start, d_count) = upload_csr(dev, &candidates.offsets, "fused_topk: candidate nodes")?;
    let t = upload_tables(dev, res, tables)?;
    let d_nodes = upload(dev, &candidates.nodes)?;
    let cand = DeviceCandidates {
        depth: candidates.depth,
        nodes: &d_nodes,
        start: &d_start,
        count: &d_count,
    };
    let out = fused_on_device(dev, res, &t, index, &cand, k, kernel)?;
    dev.synchronize()?;
    download_topk(dev, &out.pos, &out.scores, b, k)
}

/// Errors unless each query's candidate items (the items of its candidate nodes, counted
/// again for a node listed twice, so possibly more than the index holds) number at most
/// [`MAX_LOOP_LEN`]: the fused kernels count them in an `int`, and sum the item ranges of up
/// to a block's threads' nodes at a time in 32 bits. Nodes out of range are left to the
/// caller's checks.
fn check_candidate_items(index: &Index, candidates: &Candidates) -> Result<()> {
    let Some(dep) = index.tree.depths.get(candidates.depth.wrapping_sub(1)) else {
        return Ok(());
    };
    let items = |&j: &u32| {
        let j = j as usize;
        match (dep.item_start.get(j), dep.item_start.get(j + 1)) {
            (Some(&a), Some(&b)) => b.saturating_sub(a) as usize,
            _ => 0,
        }
    };
    for (q, w) in candidates.offsets.windows(2).enumerate() {
        let nodes = candidates.nodes.get(w[0]..w[1]).unwrap_or_default();
        let total: usize = nodes.iter().map(items).sum();
        if total > MAX_LOOP_LEN {
            return Err(Error::param(format!(
                "fused_topk: query {q}'s candidate nodes hold {total} candidate items, more \
                 than the kernels' limit of {MAX_LOOP_LEN} (32-bit counts)"
            )));
        }
    }
    Ok(())
}

/// A CSR's `B + 1` `offsets` on the device as the kernels read them: each row's start (i64)
/// and length (i32, at most [`MAX_LOOP_LEN`]: the kernels walk a row with `int` indices;
/// `what` names a longer one in the error).
fn upload_csr<D: Device>(dev: &D, offsets: &[usize], what: &str) -> Result<(D::Buffer, D::Buffer)> {
    let rows = offsets.len().saturating_sub(1);
    let count = offsets
        .windows(2)
        .map(|w| arg_len(w[1].saturating_sub(w[0]), what))
        .collect::<Result<Vec<i32>>>()?;
    let start: Vec<i64> = offsets[..rows].iter().map(|&o| o as i64).collect();
    Ok((upload(dev, &start)?, upload(dev, &count)?))
}

/// Exact re-rank: each query's shortlist (`positions[offsets[b]..offsets[b+1]]`, item
/// positions) re-scored against `embeddings` (f32, f16 or bf16 rows = positions) with
/// `metric`; the best `k` by (score, `ids[pos]`), returned as positions. `1 ≤ k ≤ 2048`.
#[allow(clippy::too_many_arguments)]
pub fn rerank<D: Device>(
    dev: &D,
    res: &Residency<D>,
    queries: &Matrix,
    embeddings: &Embeddings,
    ids: &[i64],
    metric: Metric,
    offsets: &[usize],
    positions: &[u32],
    k: usize,
) -> Result<TopK> {
    let (b, d) = (queries.rows(), embeddings.cols());
    queries.check_cols(d, "queries")?;
    if offsets.len() != b + 1 || offsets.last() != Some(&positions.len()) {
        return Err(Error::shape(format!(
            "rerank: {} shortlist offsets for {b} queries and {} positions",
            offsets.len(),
            positions.len()
        )));
    }
    if b == 0 || k == 0 {
        return Ok(TopK::empty(b, k));
    }
    // The CSR as the kernel reads it: i64 positions, each query's start and count.
    let (d_start, d_count) = upload_csr(dev, offsets, "rerank: shortlist length")?;
    let list: Vec<i64> = positions.iter().map(|&p| i64::from(p)).collect();
    let d_list = upload(dev, &list)?;
    let d_ids = res.input(dev, ids, Reuse::Content)?;
    let shortlist = DeviceShortlist {
        list: &d_list,
        start: &d_start,
        count: &d_count,
    };
    let (pos, scores) =
        rerank_shortlist(dev, res, queries, embeddings, &d_ids, metric, &shortlist, k)?;
    download_topk(dev, &pos, &scores, b, k)
}

/// Each query's shortlist on the device: query `b`'s `count[b]` (i32) item positions at
/// `list[start[b]..]` (i64, `-1` empty, skipped): a CSR list, or the fused lookup's `B × S`
/// output with `start[b] = b·S`, `count[b] = S`.
pub(crate) struct DeviceShortlist<'a, B> {
    /// Item positions.
    pub list: &'a B,
    /// `B` first indices into `list` (i64).
    pub start: &'a B,
    /// `B` lengths (i32).
    pub count: &'a B,
}

/// Exact re-rank of a device shortlist; the best `k` (`1 ≤ k ≤ 2048`) by (score,
/// `ids[pos]`, `ids` the device copy of the caller ids): `B × k` positions (i64, `-1` empty)
/// and scores on the device (not synchronised).
#[allow(clippy::too_many_arguments)]
pub(crate) fn rerank_shortlist<D: Device>(
    dev: &D,
    res: &Residency<D>,
    queries: &Matrix,
    embeddings: &Embeddings,
    ids: &D::Buffer,
    metric: Metric,
    shortlist: &DeviceShortlist<'_, D::Buffer>,
    k: usize,
) -> Result<(D::Buffer, D::Buffer)> {
    check_k(k, "rerank: k")?;
    let (emb, dtype) = match embeddings {
        Embeddings::F32(m) => (res.input(dev, m.data(), Reuse::Content)?, Storage::F32),
        Embeddings::F16(h) => (res.input(dev, h.data(), Reuse::Content)?, Storage::F16),
        Embeddings::Bf16(h) => (res.input(dev, h.data(), Reuse::Content)?, Storage::Bf16),
    };
    // One block per query: the query row (`4·d` bytes) and a `k` selector in shared memory.
    let (b, d) = (queries.rows(), embeddings.cols());
    let cap = select_cap(k, SELECT_THREADS);
    let cfg = launch_1d(
        b,
        SELECT_THREADS,
        round16(4 * d) + select_bytes(cap),
        "rerank",
    )?;
    let q = res.input(dev, queries.data(), Reuse::PinnedOnly)?;
    let head = vec![
        KernelArg::Buf(&*q),
        KernelArg::I32(arg_i32(d, "rerank: d")?),
        KernelArg::Buf(&*emb),
        KernelArg::I32(dtype.dtype_arg()),
        KernelArg::Buf(shortlist.list),
        KernelArg::Buf(shortlist.start),
        KernelArg::Buf(shortlist.count),
        KernelArg::Buf(ids),
        KernelArg::I32(metric_arg(metric)),
    ];
    launch_select_on_device(dev, "rq_rerank", cfg, (b, k, cap), head)
}

#[cfg(test)]
mod tests {
    use super::super::no_launch::NoLaunch;
    use super::*;
    use crate::backend::Backend;
    use crate::index::build::{build, BuildOptions};
    use crate::reference::Reference;

    /// A query's shortlist or candidate-node list longer than the kernels' `int` loops walk
    /// (`rq_rerank`, `rq_for_ranges` step a list index by the block's threads past it) is an
    /// error naming the list, before anything is uploaded.
    #[test]
    fn csr_lists_beyond_the_int_loops_are_refused() {
        let long = i32::MAX as usize - 100;
        match upload_csr(&NoLaunch, &[0, 3, 3 + long], "rerank: shortlist length") {
            Err(Error::Param(m)) => {
                assert!(m.contains("rerank: shortlist length = 2147483547"), "{m}")
            }
            other => panic!("expected a parameter error, got {:?}", other.map(|_| ())),
        }
        assert!(upload_csr(&NoLaunch, &[0, 3, 3 + MAX_LOOP_LEN], "list").is_ok());
    }

    /// Candidate nodes may repeat, so a query's candidate items can outnumber the index's
    /// items; the fused kernels count them (and sum the item ranges of 256 nodes at a time)
    /// in 32 bits, so more than `MAX_LOOP_LEN` of them is an error naming the query, before
    /// any upload. (Before, the launch went through: the count wrapped, and on the emulator
    /// a node of 2²⁴ items listed 256 times, one round's ranges summing to 2³², came back
    /// from the range walk with no candidates at all.)
    #[test]
    fn candidate_items_beyond_32_bits_are_refused() {
        let items = Matrix::new(4096, 2, (0..8192).map(|i| (i % 7) as f32).collect()).unwrap();
        let cbs =
            Codebooks::from_matrices(vec![Matrix::new(1, 2, vec![0.5, 1.0]).unwrap()]).unwrap();
        let ix = build(
            &Reference,
            &items,
            None,
            Some(cbs),
            &BuildOptions::default(),
        )
        .unwrap();
        assert_eq!(
            ix.tree.depths[0].count(0),
            4096,
            "one node holds every item"
        );
        let q = Matrix::new(2, 2, vec![1.0, 0.0, 0.0, 1.0]).unwrap();
        let t = Reference
            .lookup_tables(&q, &ix.codebooks, ix.metric)
            .unwrap();
        // Query 1 lists the node 2^19 + 1 times: 2^31 + 4096 items.
        let repeats = (1 << 19) + 1;
        let cand = Candidates {
            depth: 1,
            offsets: vec![0, 1, 1 + repeats],
            nodes: vec![0; 1 + repeats],
        };
        let res = Residency::<NoLaunch>::default();
        for kernel in [FusedKernel::Walk, FusedKernel::Scan] {
            match fused_topk(&NoLaunch, &res, &t, &ix, &cand, 5, kernel) {
                Err(Error::Param(m)) => assert!(
                    m.contains("query 1") && m.contains("2147487744 candidate items"),
                    "{m}"
                ),
                other => panic!("{kernel:?}: expected a parameter error, got {other:?}"),
            }
        }
        assert_eq!(res.stats().unwrap().uploads, 0, "nothing was uploaded");
    }
}
