//! Wrapper of `kernels/traverse.cu`: the beam traversal, one launch per depth.

use crate::candidates::Candidates;
use crate::device::{Device, KernelArg};
use crate::error::{Error, Result};
use crate::index::Tree;
use crate::tables::QueryTables;

use super::resident::{Residency, Reuse};
use super::{
    alloc, arg_i32, check_k, download, launch_1d, range_per_thread, round16, select_bytes,
    select_cap, upload, SELECT_THREADS,
};

fn metric_arg(t: &QueryTables) -> i32 {
    match t.metric {
        crate::metric::Metric::Ip => 0,
        crate::metric::Metric::L2 => 1,
    }
}

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
    if beams.is_empty() || beams.len() > tree.depths.len() || beams.len() > tables.levels.len() {
        return Err(Error::param(format!(
            "traverse: {} beam widths for a tree of {} depths",
            beams.len(),
            tree.depths.len()
        )));
    }
    for &w in beams {
        check_k(w, "traverse: beam width")?;
    }
    if b == 0 {
        return Ok(Candidates {
            depth: beams.len(),
            offsets: vec![0],
            nodes: Vec::new(),
        });
    }
    let metric = metric_arg(tables);
    let qn = upload(dev, &tables.qnorm)?;
    let d1 = &tree.depths[0];
    let w0 = beams[0];
    let lut0 = upload(dev, tables.levels[0].data())?;
    let code0 = res.input(dev, &d1.code, Reuse::Content)?;
    let cn0 = res.input(dev, &d1.centroid_norm, Reuse::Content)?;
    let mut prev = kept_launch(
        dev,
        "rq_beam_first",
        b,
        w0,
        1,
        0,
        vec![
            KernelArg::Buf(&lut0),
            KernelArg::I32(arg_i32(tables.levels[0].cols(), "traverse: K")?),
            KernelArg::Buf(&*code0),
            KernelArg::I32(arg_i32(d1.len(), "traverse: depth-1 nodes")?),
            KernelArg::Buf(&*cn0),
            KernelArg::Buf(&qn),
            KernelArg::I32(metric),
        ],
    )?;
    for (l, &w) in beams.iter().enumerate().skip(1) {
        let parent = &tree.depths[l - 1];
        let dep = &tree.depths[l];
        let lut = upload(dev, tables.levels[l].data())?;
        let cs = res.input(dev, &parent.child_start, Reuse::Content)?;
        let code = res.input(dev, &dep.code, Reuse::Content)?;
        let cn = res.input(dev, &dep.centroid_norm, Reuse::Content)?;
        let per_thread = range_per_thread(w);
        let next = kept_launch(
            dev,
            "rq_beam_step",
            b,
            w,
            per_thread,
            round16(8 * SELECT_THREADS as usize + 4),
            vec![
                KernelArg::Buf(&lut),
                KernelArg::I32(arg_i32(tables.levels[l].cols(), "traverse: K")?),
                KernelArg::Buf(&*cs),
                KernelArg::Buf(&*code),
                KernelArg::Buf(&*cn),
                KernelArg::Buf(&prev.nodes),
                KernelArg::Buf(&prev.ip),
                KernelArg::Buf(&prev.count),
                KernelArg::I32(prev.w as i32),
                KernelArg::Buf(&qn),
                KernelArg::I32(metric),
                KernelArg::I32(per_thread as i32),
            ],
        )?;
        // The previous depth's lists are read by this launch: keep them until it is done.
        dev.synchronize()?;
        prev = next;
    }
    dev.synchronize()?;
    let w = prev.w;
    let kept: Vec<u32> = download(dev, &prev.nodes, b * w)?;
    let counts: Vec<i32> = download(dev, &prev.count, b)?;
    let mut offsets = Vec::with_capacity(b + 1);
    offsets.push(0);
    let mut out = Vec::new();
    for (q, &c) in counts.iter().enumerate() {
        let c = (c.max(0) as usize).min(w);
        out.extend_from_slice(&kept[q * w..q * w + c]);
        offsets.push(out.len());
    }
    Ok(Candidates {
        depth: beams.len(),
        offsets,
        nodes: out,
    })
}

/// One depth's kept lists on the device: `B × w` node ids (u32) and path ip (f32), `B` counts.
struct Kept<B> {
    w: usize,
    nodes: B,
    ip: B,
    count: B,
}

/// Launches a beam kernel (`rq_beam_first`, `rq_beam_step`) for `b` queries keeping `w`
/// nodes: one block per query, `extra_shared` bytes before a `w` selector sized for rounds of
/// `per_thread` candidates per thread (1 for `rq_beam_first`); arguments
/// `(head…, W, cap, out_nodes, out_ip, out_count)`. Returns the new lists (not synchronised).
fn kept_launch<D: Device>(
    dev: &D,
    name: &str,
    b: usize,
    w: usize,
    per_thread: usize,
    extra_shared: usize,
    head: Vec<KernelArg<'_, D::Buffer>>,
) -> Result<Kept<D::Buffer>> {
    let cap = select_cap(w, SELECT_THREADS * per_thread as u32);
    let cfg = launch_1d(
        b,
        SELECT_THREADS,
        extra_shared + select_bytes(cap),
        "traverse",
    )?;
    let kept = Kept {
        w,
        nodes: alloc::<D, u32>(dev, b * w)?,
        ip: alloc::<D, f32>(dev, b * w)?,
        count: alloc::<D, i32>(dev, b)?,
    };
    let mut args = Vec::with_capacity(head.len() + 5);
    args.extend(head);
    args.extend([
        KernelArg::I32(w as i32),
        KernelArg::I32(cap as i32),
        KernelArg::Buf(&kept.nodes),
        KernelArg::Buf(&kept.ip),
        KernelArg::Buf(&kept.count),
    ]);
    dev.launch(name, cfg, &args)?;
    drop(args);
    Ok(kept)
}
