//! Wrapper of `kernels/traverse.cu`: the beam traversal, one launch per depth.

use crate::candidates::Candidates;
use crate::device::{Device, KernelArg};
use crate::error::{Error, Result};
use crate::index::Tree;
use crate::tables::QueryTables;

use super::lookup::{metric_arg, upload_tables, DeviceTables};
use super::resident::{Residency, Reuse};
use super::{
    alloc, arg_i32, arg_len, check_k, download, launch_1d, round16, select_bytes, select_cap,
    RADIX_HEAD, RADIX_SLOTS, SELECT_THREADS,
};

/// Largest `K` whose lookup table `rq_beam_step` stages in shared memory (the kernel's
/// `RQ_STEP_LUT_MAX`).
const STEP_LUT_MAX: usize = 4096;

/// Beam traversal: keeps `beams[l]` nodes per query at depth `l + 1`
/// (`1 ≤ beams.len() ≤ L`, every width in `1..=2048`); returns the nodes kept at the last
/// searched depth, best first, per query.
pub fn traverse<D: Device>(
    dev: &D,
    res: &Residency<D>,
    tables: &QueryTables,
    tree: &Tree,
    beams: &[usize],
) -> Result<Candidates> {
    let b = tables.queries();
    check_beams(tables.levels.len(), tree, beams)?;
    if b == 0 {
        return Ok(Candidates {
            depth: beams.len(),
            offsets: vec![0],
            nodes: Vec::new(),
        });
    }
    let t = upload_tables(dev, res, tables)?;
    let kept = traverse_on_device(dev, res, &t, tree, beams)?;
    dev.synchronize()?;
    let w = kept.w;
    let nodes: Vec<u32> = download(dev, &kept.nodes, b * w)?;
    let counts: Vec<i32> = download(dev, &kept.count, b)?;
    let mut offsets = Vec::with_capacity(b + 1);
    offsets.push(0);
    let mut out = Vec::new();
    for (q, &c) in counts.iter().enumerate() {
        let c = (c.max(0) as usize).min(w);
        out.extend_from_slice(&nodes[q * w..q * w + c]);
        offsets.push(out.len());
    }
    Ok(Candidates {
        depth: beams.len(),
        offsets,
        nodes: out,
    })
}

/// Errors unless `1 ≤ beams.len() ≤` the tree's depths and the tables' levels, and every
/// width is in `1..=2048`.
fn check_beams(table_levels: usize, tree: &Tree, beams: &[usize]) -> Result<()> {
    if beams.is_empty() || beams.len() > tree.depths.len() || beams.len() > table_levels {
        return Err(Error::param(format!(
            "traverse: {} beam widths for a tree of {} depths",
            beams.len(),
            tree.depths.len()
        )));
    }
    for &w in beams {
        check_k(w, "traverse: beam width")?;
    }
    Ok(())
}

/// The beam traversal over device tables (`B ≥ 1` queries), one launch per depth: the lists
/// kept at the last searched depth, on the device (launched, not synchronised).
pub(crate) fn traverse_on_device<D: Device>(
    dev: &D,
    res: &Residency<D>,
    tables: &DeviceTables<D::Buffer>,
    tree: &Tree,
    beams: &[usize],
) -> Result<Kept<D::Buffer>> {
    check_beams(tables.ks.len(), tree, beams)?;
    let b = tables.queries;
    let metric = metric_arg(tables.metric);
    // The kernels walk a depth's nodes (depth 1) or a query's children, at most the depth's
    // nodes (their parents are distinct), with 32-bit positions.
    for (l, dep) in tree.depths.iter().take(beams.len()).enumerate() {
        arg_len(dep.len(), &format!("traverse: nodes at depth {}", l + 1))?;
    }
    let d1 = &tree.depths[0];
    let code0 = res.input(dev, &d1.code, Reuse::Content)?;
    let cn0 = res.input(dev, &d1.centroid_norm, Reuse::Content)?;
    let mut prev = kept_launch(
        dev,
        b,
        beams[0],
        vec![
            KernelArg::Buf(&tables.luts),
            KernelArg::I64(tables.at[0] as i64),
            KernelArg::I32(arg_i32(tables.ks[0], "traverse: K")?),
            KernelArg::Buf(&*code0),
            KernelArg::I32(arg_i32(d1.len(), "traverse: depth-1 nodes")?),
            KernelArg::Buf(&*cn0),
            KernelArg::Buf(&tables.qnorm),
            KernelArg::I32(metric),
        ],
    )?;
    for (l, &w) in beams.iter().enumerate().skip(1) {
        let parent = &tree.depths[l - 1];
        let dep = &tree.depths[l];
        let cs = res.input(dev, &parent.child_start, Reuse::Content)?;
        let code = res.input(dev, &dep.code, Reuse::Content)?;
        let cn = res.input(dev, &dep.centroid_norm, Reuse::Content)?;
        let slots = RADIX_SLOTS.max(w.next_power_of_two());
        let wp = prev.w;
        let k = tables.ks[l];
        let lut = if k <= STEP_LUT_MAX { 4 * k } else { 0 };
        let shared =
            round16(RADIX_HEAD + 8 * slots + 8 * wp.next_power_of_two() + 12 * wp + 4 + lut);
        let cfg = launch_1d(b, SELECT_THREADS, shared, "traverse")?;
        let next = Kept::alloc(dev, b, w)?;
        let args = [
            KernelArg::Buf(&tables.luts),
            KernelArg::I64(tables.at[l] as i64),
            KernelArg::I32(arg_i32(tables.ks[l], "traverse: K")?),
            KernelArg::Buf(&*cs),
            KernelArg::Buf(&*code),
            KernelArg::Buf(&*cn),
            KernelArg::Buf(&prev.nodes),
            KernelArg::Buf(&prev.ip),
            KernelArg::Buf(&prev.count),
            KernelArg::I32(wp as i32),
            KernelArg::Buf(&tables.qnorm),
            KernelArg::I32(metric),
            KernelArg::I32(w as i32),
            KernelArg::I32(slots as i32),
            KernelArg::Buf(&next.nodes),
            KernelArg::Buf(&next.ip),
            KernelArg::Buf(&next.count),
        ];
        // The sampled threshold, then the full selection for the queries it left at -1.
        dev.launch("rq_beam_step", cfg, &args)?;
        dev.launch("rq_beam_step_rest", cfg, &args)?;
        // The previous depth's lists are read by this launch; dropping them is safe without a
        // wait: the cuda device frees stream-ordered (after the launch), emu launches return
        // when done.
        prev = next;
    }
    Ok(prev)
}

/// One depth's kept lists on the device: `B × w` node ids (u32) and path ip (f32), `B` counts
/// (i32; the kept entries of query `b` are its first `count[b]`).
pub(crate) struct Kept<B> {
    pub w: usize,
    pub nodes: B,
    pub ip: B,
    pub count: B,
}

impl<B> Kept<B> {
    /// Uninitialised lists for `b` queries keeping `w` nodes.
    fn alloc<D: Device<Buffer = B>>(dev: &D, b: usize, w: usize) -> Result<Self> {
        Ok(Kept {
            w,
            nodes: alloc::<D, u32>(dev, b * w)?,
            ip: alloc::<D, f32>(dev, b * w)?,
            count: alloc::<D, i32>(dev, b)?,
        })
    }
}

/// Launches `rq_beam_first` for `b` queries keeping `w` nodes: one block per query with a
/// `w` selector; arguments `(head…, W, cap, out_nodes, out_ip, out_count)`. Returns the new
/// lists (not synchronised).
fn kept_launch<D: Device>(
    dev: &D,
    b: usize,
    w: usize,
    head: Vec<KernelArg<'_, D::Buffer>>,
) -> Result<Kept<D::Buffer>> {
    let cap = select_cap(w, SELECT_THREADS);
    let cfg = launch_1d(b, SELECT_THREADS, select_bytes(cap), "traverse")?;
    let kept = Kept::alloc(dev, b, w)?;
    let mut args = Vec::with_capacity(head.len() + 5);
    args.extend(head);
    args.extend([
        KernelArg::I32(w as i32),
        KernelArg::I32(cap as i32),
        KernelArg::Buf(&kept.nodes),
        KernelArg::Buf(&kept.ip),
        KernelArg::Buf(&kept.count),
    ]);
    dev.launch("rq_beam_first", cfg, &args)?;
    drop(args);
    Ok(kept)
}
