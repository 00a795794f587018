//! Wrapper of `kernels/fused_scan.cu`: the scan variant of the fused residual lookup + top-k
//! (u8 codes, at most 4 levels, long candidate ranges), and the choice between it and the
//! range-walking `rq_fused_topk` (`lookup.rs`). Both rank exactly as the reference.

use crate::device::{Device, KernelArg};
use crate::error::{Error, Result};
use crate::index::{CodeData, Index};

use super::lookup::{metric_arg, DeviceCandidates, DeviceTables, FusedIo};
use super::resident::{Layout, Residency, Reuse};
use super::{launch_1d_within, round16, select_bytes, select_cap};

/// Threads of a scan block (the kernel's launch bounds: 256 threads, two blocks per SM).
const SCAN_THREADS: u32 = 256;
/// Items per group: a level's codes of a group are one aligned 16-byte load, so each level's
/// row of codes is padded to a multiple of this on the device.
const SCAN_GROUP: usize = 16;
/// Most levels the scan kernel handles.
const SCAN_LEVELS: usize = 4;
/// Most copies of the query's table rows in shared memory (32: one per bank, so a warp's
/// lookups never collide), as a shift.
const MAX_REP_SHIFT: u32 = 5;
/// Items per node at the candidates' depth (the index's average) from which
/// [`FusedKernel::Auto`] scans: 16 groups, of which the partly used ones at a range's ends
/// waste about one on average (~6 % of the loads). Chosen by that count, not yet by a GPU
/// timing.
const SCAN_MIN_ITEMS_PER_NODE: usize = 256;

/// Which kernel serves the fused residual lookup + top-k. The results are the same (both
/// are checked against the reference); only the speed differs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FusedKernel {
    /// The scan kernel when the index's nodes at the candidates' depth average
    /// ≥ 256 items and the scan can serve the inputs, else the range walk.
    #[default]
    Auto,
    /// Always the range-walking `rq_fused_topk` / `rq_fused_topk_l4`.
    Walk,
    /// `rq_fused_scan` whenever it can serve the inputs (u8 codes, at most 4 levels, the
    /// tables and the selector within shared memory), whatever the range lengths.
    Scan,
}

impl std::str::FromStr for FusedKernel {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(FusedKernel::Auto),
            "walk" => Ok(FusedKernel::Walk),
            "scan" => Ok(FusedKernel::Scan),
            _ => Err(Error::param(format!(
                "fused kernel '{s}': expected auto, walk or scan"
            ))),
        }
    }
}

/// How the scan kernel is launched: copies of the tables (as a shift), the best k, selector
/// entries, shared bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ScanPlan {
    rep_shift: u32,
    k: usize,
    cap: usize,
    shared: usize,
}

/// The scan kernel's launch for `levels` levels of u8 codes (`code_bytes` = 1), tables of
/// Σ K_l = `ksum` entries and `k` best, with as many table copies (≤ 32) as fit beside the
/// selector in `budget` bytes of shared memory per block (the device's share of two blocks
/// per SM, [`Device::shared_bytes_two_blocks`]); `None` when it cannot serve them.
fn scan_fit(
    code_bytes: usize,
    levels: usize,
    ksum: usize,
    k: usize,
    budget: usize,
) -> Option<ScanPlan> {
    if code_bytes != 1 || levels == 0 || levels > SCAN_LEVELS {
        return None;
    }
    let cap = select_cap(k, SCAN_THREADS);
    let rest = round16(12 * SCAN_THREADS as usize + 8) + select_bytes(cap);
    (0..=MAX_REP_SHIFT).rev().find_map(|rep_shift| {
        let shared = round16((4 * ksum) << rep_shift) + rest;
        (shared <= budget).then_some(ScanPlan {
            rep_shift,
            k,
            cap,
            shared,
        })
    })
}

/// The scan kernel's launch on `dev` when `kernel` chooses it for these inputs, else `None`
/// (the range walk serves them).
pub(crate) fn scan_plan<D: Device>(
    dev: &D,
    kernel: FusedKernel,
    index: &Index,
    depth: usize,
    ksum: usize,
    k: usize,
) -> Option<ScanPlan> {
    let code_bytes = match index.codes.data() {
        CodeData::U8(_) => 1,
        CodeData::U16(_) => 2,
    };
    let nodes = index.tree.depths[depth - 1].len().max(1);
    let long = index.len() / nodes >= SCAN_MIN_ITEMS_PER_NODE;
    match kernel {
        FusedKernel::Walk => None,
        FusedKernel::Auto if !long => None,
        _ => scan_fit(code_bytes, index.levels(), ksum, k, budget(dev)),
    }
}

/// The scan kernel's shared-memory budget per block on `dev`: its share of two blocks per SM
/// (launch bounds (256, 2)).
fn budget<D: Device>(dev: &D) -> usize {
    dev.shared_bytes_two_blocks()
}

/// Launches `rq_fused_scan` (not synchronised) with `plan` from [`scan_plan`], reading and
/// writing `io` as the range walk does. `index` has u8 codes, at most 4 levels and fewer
/// than 2³¹ items (the plan's and the caller's checks).
pub(crate) fn launch_scan<D: Device>(
    dev: &D,
    res: &Residency<D>,
    tables: &DeviceTables<D::Buffer>,
    index: &Index,
    cand: &DeviceCandidates<'_, D::Buffer>,
    plan: ScanPlan,
    io: &FusedIo<D::Buffer>,
) -> Result<()> {
    let levels = index.levels();
    let ld = index.len().div_ceil(SCAN_GROUP).max(1) * SCAN_GROUP;
    let CodeData::U8(codes) = index.codes.data() else {
        unreachable!("scan_plan serves u8 codes only")
    };
    let layout = Layout::PaddedRows { rows: levels, ld };
    let codes = res.input_laid(dev, codes, Reuse::Content, layout)?;
    let cfg = launch_1d_within(
        tables.queries,
        SCAN_THREADS,
        plan.shared,
        budget(dev),
        "fused_topk (scan)",
    )?;
    const ENTRIES: [&str; SCAN_LEVELS] = [
        "rq_fused_scan_l1",
        "rq_fused_scan_l2",
        "rq_fused_scan_l3",
        "rq_fused_scan_l4",
    ];
    dev.launch(
        ENTRIES[levels - 1],
        cfg,
        &[
            KernelArg::Buf(&tables.luts),
            KernelArg::Buf(&*tables.at_dev),
            KernelArg::Buf(&*tables.ks_dev),
            KernelArg::I32(plan.rep_shift as i32),
            KernelArg::Buf(&*codes),
            KernelArg::I64(ld as i64),
            KernelArg::Buf(&*io.items),
            KernelArg::Buf(cand.start),
            KernelArg::Buf(cand.count),
            KernelArg::Buf(cand.nodes),
            KernelArg::Buf(&*io.norms),
            KernelArg::Buf(&tables.qnorm),
            KernelArg::I32(metric_arg(tables.metric)),
            KernelArg::Buf(&*io.out.ids),
            KernelArg::Buf(&io.out.scanned),
            KernelArg::I32(plan.k as i32),
            KernelArg::I32(plan.cap as i32),
            KernelArg::Buf(&io.out.pos),
            KernelArg::Buf(&io.out.scores),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fused_kernel_names() {
        assert_eq!("auto".parse::<FusedKernel>().unwrap(), FusedKernel::Auto);
        assert_eq!("walk".parse::<FusedKernel>().unwrap(), FusedKernel::Walk);
        assert_eq!("scan".parse::<FusedKernel>().unwrap(), FusedKernel::Scan);
        let e = "fast".parse::<FusedKernel>().unwrap_err().to_string();
        assert!(
            e.contains("'fast'") && e.contains("auto, walk or scan"),
            "{e}"
        );
    }

    #[test]
    fn scan_fit_replicates_the_tables_as_far_as_shared_memory_allows() {
        use crate::kernels::MAX_SHARED_BYTES;
        // An H200's share of two blocks per SM (228 KiB / 2 - 1 KiB): the fused target's
        // 3 × 256 entries at k = 100 get one copy per bank (96 KiB of tables).
        let h200 = 228 * 1024 / 2 - 1024;
        let p = scan_fit(1, 3, 768, 100, h200).expect("fits");
        assert_eq!(p.rep_shift, MAX_REP_SHIFT);
        assert_eq!(p.cap, 512);
        assert!(p.shared <= h200 && p.shared > MAX_SHARED_BYTES);
        // Within the kernels' common 96 KiB: 16 copies.
        assert_eq!(
            scan_fit(1, 3, 768, 100, MAX_SHARED_BYTES)
                .expect("fits")
                .rep_shift,
            4
        );
        assert_eq!(
            scan_fit(1, 1, 64, 1, MAX_SHARED_BYTES)
                .expect("fits")
                .rep_shift,
            5
        );
        // k = 2048: a 4096-entry selector (64 KiB) leaves room for fewer copies.
        assert_eq!(scan_fit(1, 3, 768, 2048, h200).expect("fits").rep_shift, 3);
        assert_eq!(scan_fit(2, 3, 768, 100, h200), None, "u16 codes");
        assert_eq!(scan_fit(1, 5, 80, 100, h200), None, "5 levels");
        assert_eq!(
            scan_fit(1, 2, 40_000, 100, h200),
            None,
            "tables beyond shared memory"
        );
    }
}
