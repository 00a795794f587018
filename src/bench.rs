//! `rqtree bench`: timings of each kernel-level operation and of end-to-end search on seeded
//! synthetic data, with achieved GFLOP/s and GB/s and the fraction of the roofline floor of
//! DESIGN §11 (H200: 4.3 TB/s, 67 TFLOP/s fp32; 494.7 TFLOP/s TF32 for the rows that screen
//! on the tensor cores).
//!
//! The floor's bytes are those that must cross device memory: data that several queries
//! share (the codes of an item in several queries' candidate lists, a tree node whose parent
//! several queries keep) counts once, and intermediates of a composed operation (the search's
//! tables and kept nodes) not at all. Its FLOPs are every query's own.
//!
//! Every operation is run after warm-up and timed with [`Backend::time`]: CUDA events on the
//! `cuda` backend (median of [`CUDA_RUNS`] runs; rates use the kernels' own time), the wall
//! clock on `emu` and `reference` (which the output says). Inputs are kept resident on the
//! device ([`Backend::keep_resident`]) and rotated over several copies (at most 8) so that
//! the data each run reads from them adds up to twice the GPU's L2 cache ([`L2_BYTES`]);
//! where 8 copies are not enough (small inputs) a note names the operation.
//!
//! Sizes: small by default (`--quick`: ~10× smaller, seconds on `emu`); `--targets` runs the
//! issue's target sizes on seeded random-tree indexes (no k-means; labelled as such).

use std::sync::Arc;

use serde::Serialize;

use crate::backend::{self, Backend, BackendKind, OpenOptions, Resident};
use crate::candidates::Candidates;
use crate::device::{Clock, KernelTime};
use crate::error::{Error, Result};
use crate::index::build::{build, BuildOptions};
use crate::index::kmeans::KMeansOptions;
use crate::index::tree::Tree;
use crate::index::{CodeData, Codebooks, EmbeddingKind, Index};
use crate::kernels::FusedKernel;
use crate::matrix::Matrix;
use crate::metric::Metric;
use crate::ops;
use crate::reference::Reference;
use crate::search::{search, Rerank, SearchParams};
use crate::synthetic::{clustered, normal_matrix, random_tree_index};
use crate::tables::QueryTables;

/// Device memory bandwidth of the floor (bytes/s, H200 measured copy; DESIGN §11).
pub const PEAK_BYTES_PER_S: f64 = 4.3e12;
/// fp32 rate of the floor (FLOP/s, H200 SXM FMA peak; DESIGN §11).
pub const PEAK_FLOPS: f64 = 67e12;
/// TF32 tensor-core rate of the floor of the rows that screen on the tensor cores (FLOP/s,
/// H200 SXM dense; NVIDIA's data sheet gives 989 TFLOP/s with 2:4 sparsity).
pub const PEAK_TF32_FLOPS: f64 = 494.7e12;
/// L2 cache of the target GPU (H200 SXM, as H100 SXM: 50 MB; the full GH100 die has 60 MB):
/// rotated inputs add up to at least twice this.
pub const L2_BYTES: usize = 50 << 20;
/// Timed runs per operation on the cuda backend (after [`WARMUP`] untimed ones).
pub const CUDA_RUNS: usize = 20;
/// Untimed warm-up runs per operation on the cuda backend (one elsewhere).
pub const WARMUP: usize = 3;

/// What to run.
#[derive(Clone, Copy, Debug, Default)]
pub struct BenchOptions {
    /// ~10× smaller default sizes (smoke runs).
    pub quick: bool,
    /// The target sizes (GPU-sized: minutes on a CPU backend).
    pub targets: bool,
    /// One JSON object instead of a table.
    pub json: bool,
    /// The backend screens the greedy assignment and the exact top-k on the tensor cores
    /// (`--tensor-cores`); when it does not and it is a kernel backend, the bench adds
    /// `assign_tc` and `exact_topk_tc` rows from a second backend of the same kind that does.
    pub tensor_cores: bool,
    /// The backend's fused lookup + top-k kernel (`--fused-kernel`); when it is `auto` and a
    /// kernel backend, the bench adds a `fused_topk_walk` row from a second backend of the
    /// same kind that always walks the ranges (the `fused_topk` row then scans).
    pub fused_kernel: FusedKernel,
    /// The groups of operations to run (`--only`; default all).
    pub only: Groups,
}

/// Groups of benchmarked operations: `assign` (assign, assign_tc), `fused` (fused_topk),
/// `topk` (topk_k*), `exact` (exact_topk, exact_topk_tc), `search` (lookup_tables, traverse,
/// search).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Groups {
    /// assign, assign_tc.
    pub assign: bool,
    /// fused_topk.
    pub fused: bool,
    /// topk_k10, topk_k100, topk_k1000.
    pub topk: bool,
    /// exact_topk, exact_topk_tc.
    pub exact: bool,
    /// lookup_tables, traverse, search.
    pub search: bool,
}

impl Default for Groups {
    fn default() -> Self {
        Groups {
            assign: true,
            fused: true,
            topk: true,
            exact: true,
            search: true,
        }
    }
}

impl std::str::FromStr for Groups {
    type Err = Error;
    /// A comma-separated list of group names, e.g. `assign,search`.
    fn from_str(s: &str) -> Result<Self> {
        let mut g = Groups {
            assign: false,
            fused: false,
            topk: false,
            exact: false,
            search: false,
        };
        for name in s.split(',').map(str::trim) {
            match name {
                "assign" => g.assign = true,
                "fused" => g.fused = true,
                "topk" => g.topk = true,
                "exact" => g.exact = true,
                "search" => g.search = true,
                other => {
                    return Err(Error::param(format!(
                    "bench: unknown group {other:?} (expected assign, fused, topk, exact, search)"
                )))
                }
            }
        }
        Ok(g)
    }
}

/// One timed operation.
#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    /// Stable operation key (shared with `benches/torch_baseline.py`).
    pub op: String,
    /// Sizes and details.
    pub label: String,
    /// Median time of the whole call (uploads of per-call inputs, launches, downloads), ms.
    pub ms: f64,
    /// Median time of the kernels alone (cuda only), ms.
    pub kernel_ms: Option<f64>,
    /// Per kernel (cuda only, in order of first launch): launches per run and the median
    /// over the runs of its summed time, ms — which kernel an operation's time goes to.
    pub kernels: Vec<KernelTime>,
    /// Where the times come from.
    pub clock: Clock,
    /// Timed runs (after warm-up).
    pub runs: usize,
    /// Input copies rotated over the runs.
    pub copies: usize,
    /// Floating-point operations per run (the model; 0 when not meaningful).
    pub flops: f64,
    /// Bytes that must cross device memory per run (the model).
    pub bytes: f64,
    /// FLOP rate of the floor: the fp32 FMA peak, or the TF32 tensor-core peak for a row
    /// that screens on the tensor cores.
    pub peak_flops: f64,
    /// Achieved GFLOP/s (over the kernel time when known, else the whole call).
    pub gflops: f64,
    /// Achieved GB/s (same time base).
    pub gbps: f64,
    /// The floor: max(bytes / 4.3 TB/s, flops / peak_flops), ms.
    pub floor_ms: f64,
    /// floor / measured (1 = at the floor).
    pub floor_fraction: f64,
}

/// What one run of an operation must do: the model behind its floor.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Work {
    /// Floating-point operations.
    flops: f64,
    /// Bytes that must cross device memory.
    bytes: f64,
    /// Rate of the unit that runs the FLOPs (FLOP/s).
    peak_flops: f64,
}

impl Work {
    /// FLOPs on the fp32 FMA units.
    fn fp32(flops: f64, bytes: f64) -> Self {
        Work {
            flops,
            bytes,
            peak_flops: PEAK_FLOPS,
        }
    }

    /// FLOPs on the TF32 tensor cores (the screened assignment and exact top-k).
    fn tf32(flops: f64, bytes: f64) -> Self {
        Work {
            peak_flops: PEAK_TF32_FLOPS,
            ..Work::fp32(flops, bytes)
        }
    }

    /// The roofline floor, ms.
    fn floor_ms(&self) -> f64 {
        (self.bytes / PEAK_BYTES_PER_S).max(self.flops / self.peak_flops) * 1e3
    }
}

/// Sizes of one bench run.
struct Sizes {
    /// Greedy encode (= L levels of assignment): items, levels, codes per level.
    assign: (usize, usize, usize),
    /// Fused lookup + top-k: queries, candidates per query, levels, codes per level.
    fused: (usize, usize, usize, usize),
    /// Row-wise top-k: rows, columns.
    topk: (usize, usize),
    /// Exact top-k: queries, items.
    exact: (usize, usize),
    /// Search index: items, levels, codes per level, queries, beams; `None`: k-means index.
    search: (usize, usize, usize, usize, [usize; 2]),
    /// Whether the search index is a seeded random tree (else residual k-means).
    random_tree: bool,
}

const D: usize = 128;

fn sizes(o: &BenchOptions) -> Sizes {
    if o.targets {
        return Sizes {
            assign: (4 << 20, 3, 256),
            fused: (1024, 100_000, 3, 256),
            topk: (1024, 100_000),
            exact: (1024, 1 << 20),
            search: (10_000_000, 2, 1024, 1024, [64, 1024]),
            random_tree: true,
        };
    }
    let s = if o.quick { 10 } else { 1 };
    Sizes {
        assign: (100_000 / s, 3, 256),
        fused: (1024 / s, 10_000 / s, 3, 256),
        topk: (256 / s, 100_000 / s),
        exact: (1024 / s, 100_000 / s),
        search: (100_000 / s, 2, 256, 1024 / s, [16, 128]),
        random_tree: false,
    }
}

/// Copies of an input of `bytes` so that the copies exceed twice the L2 (at most 8; at most 2
/// off the GPU, where they only exercise the rotation).
fn copies_for(be: &dyn Backend, bytes: usize) -> usize {
    let want = (2 * L2_BYTES).div_ceil(bytes.max(1)).clamp(1, 8);
    if be.name() == "cuda" {
        want
    } else {
        want.min(2)
    }
}

/// Median of `v` (not empty).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times `f(copy)` over rotating copies: warm-up, then `runs` timed runs.
struct Timer<'a> {
    be: &'a dyn Backend,
    warmup: usize,
    runs: usize,
}

impl Timer<'_> {
    /// The row `op` of a variant of an operation (`assign_tc`, `exact_topk_tc`,
    /// `fused_topk_walk`), timed like [`Timer::row`] on a second backend of this timer's
    /// kind opened with `o` and holding `resident`; `f` runs the operation on that backend
    /// for an input copy. The variant's resident copies are released after.
    #[allow(clippy::too_many_arguments)]
    fn variant_row(
        &self,
        o: OpenOptions,
        resident: impl IntoIterator<Item = Resident>,
        op: &str,
        label: String,
        copies: usize,
        work: Work,
        mut f: impl FnMut(&dyn Backend, usize) -> Result<()>,
    ) -> Result<BenchRow> {
        let kind = self.be.name().parse::<BackendKind>()?;
        let (v, _) = backend::open_with(kind, o)?;
        for r in resident {
            v.keep_resident(r)?;
        }
        let timer = Timer {
            be: v.as_ref(),
            ..*self
        };
        let row = timer.row(op, label, copies, work, |c| f(v.as_ref(), c))?;
        v.release_resident()?;
        Ok(row)
    }

    /// The fused lookup's rows over `index` (`index.levels()` u8 levels) and the candidates
    /// `cand` (`candidates` says what they are): `op` on this timer's backend and, when
    /// `walk_too`, `{op}_walk` on a backend that always walks the ranges. Each run reads
    /// the codes of the distinct candidates of its copy of the index (resident while timed);
    /// the copies exceed twice the L2 where they can, else the note says so.
    #[allow(clippy::too_many_arguments)]
    fn fused_rows(
        &self,
        op: &str,
        candidates: &str,
        index: Index,
        tables: &QueryTables,
        cand: &Candidates,
        k: usize,
        walk_too: bool,
    ) -> Result<(Vec<BenchRow>, Option<String>)> {
        let be = self.be;
        let b = tables.queries();
        let scanned: usize = (0..b).map(|q| cand.items_of(q, &index.tree)).sum();
        let distinct = distinct_items(cand, &index.tree);
        let work = Work::fp32(
            (scanned * index.levels()) as f64,
            fused_bytes(&index, tables, distinct, k),
        );
        let read = code_bytes(&index, distinct);
        let copies = copies_for(be, read as usize);
        let note = warm_l2_note(op, copies as f64 * read);
        let label = format!(
            "fused lookup + top-{k} B={b}, {} candidates/query ({distinct} distinct items; \
             {candidates}), L={} u8 codes (random tree, N={})",
            scanned / b.max(1),
            index.levels(),
            index.len()
        );
        let copies_of: Vec<Arc<Index>> = (0..copies).map(|_| Arc::new(index.clone())).collect();
        drop(index);
        for ix in &copies_of {
            be.keep_resident(Resident::Index(Arc::clone(ix)))?;
        }
        let mut rows = vec![self.row(op, label, copies, work, |c| {
            be.fused_topk(tables, &copies_of[c], cand, k).map(|_| ())
        })?];
        be.release_resident()?;
        if walk_too {
            let o = OpenOptions {
                fused_kernel: FusedKernel::Walk,
                ..OpenOptions::default()
            };
            let resident = copies_of.iter().map(|ix| Resident::Index(Arc::clone(ix)));
            rows.push(self.variant_row(
                o,
                resident,
                &format!("{op}_walk"),
                format!("fused lookup + top-{k} B={b}, {candidates}, the range-walking kernel"),
                copies,
                work,
                |walk, c| walk.fused_topk(tables, &copies_of[c], cand, k).map(|_| ()),
            )?);
        }
        Ok((rows, note))
    }

    fn row(
        &self,
        op: &str,
        label: String,
        copies: usize,
        work: Work,
        mut f: impl FnMut(usize) -> Result<()>,
    ) -> Result<BenchRow> {
        for i in 0..self.warmup {
            f(i % copies)?;
        }
        let mut ms = Vec::with_capacity(self.runs);
        let mut kms = Vec::with_capacity(self.runs);
        let mut per_run = Vec::with_capacity(self.runs);
        let mut clock = Clock::Wall;
        for i in 0..self.runs {
            let t = self.be.time(&mut || f(i % copies))?;
            ms.push(t.ms);
            kms.extend(t.kernel_ms);
            per_run.push(t.kernels);
            clock = t.clock;
        }
        let ms = median(ms);
        let kernel_ms = (!kms.is_empty()).then(|| median(kms));
        let kernels = kernel_medians(&per_run);
        let base = kernel_ms.unwrap_or(ms).max(1e-9);
        let floor_ms = work.floor_ms();
        // Progress on stderr: a run cut short still leaves the rows it finished.
        eprintln!(
            "bench: {op:<24} {:10.3} ms  {:6.2}% of floor",
            base,
            100.0 * floor_ms / base
        );
        Ok(BenchRow {
            op: op.into(),
            label,
            ms,
            kernel_ms,
            kernels,
            clock,
            runs: self.runs,
            copies,
            flops: work.flops,
            bytes: work.bytes,
            peak_flops: work.peak_flops,
            gflops: work.flops / base / 1e6,
            gbps: work.bytes / base / 1e6,
            floor_ms,
            floor_fraction: floor_ms / base,
        })
    }
}

/// Per kernel name (in order of first launch over the runs): the most launches in one run
/// and the median over the runs of its summed time (0 in a run that did not launch it).
fn kernel_medians(runs: &[Vec<KernelTime>]) -> Vec<KernelTime> {
    let mut names: Vec<&str> = Vec::new();
    for k in runs.iter().flatten() {
        if !names.contains(&k.name.as_str()) {
            names.push(&k.name);
        }
    }
    names
        .into_iter()
        .map(|name| {
            let of_run = |run: &Vec<KernelTime>| run.iter().find(|k| k.name == name).cloned();
            KernelTime {
                name: name.to_string(),
                launches: runs
                    .iter()
                    .filter_map(of_run)
                    .map(|k| k.launches)
                    .max()
                    .unwrap_or(0),
                ms: median(
                    runs.iter()
                        .map(|run| of_run(run).map_or(0.0, |k| k.ms))
                        .collect(),
                ),
            }
        })
        .collect()
}

/// `copies` matrices of `rows × cols` (seeds `seed..`), each kept resident on `be`.
fn resident_matrices(
    be: &dyn Backend,
    rows: usize,
    cols: usize,
    copies: usize,
    seed: u64,
) -> Result<Vec<Arc<Matrix>>> {
    (0..copies)
        .map(|c| {
            let m = Arc::new(normal_matrix(rows, cols, 1.0, seed + 1000 * c as u64));
            be.keep_resident(Resident::Matrix(Arc::clone(&m)))?;
            Ok(m)
        })
        .collect()
}

/// The distinct nodes of `cand` (a node kept by several queries counts once), at a depth of
/// `nodes` nodes.
fn distinct_nodes(cand: &Candidates, nodes: usize) -> impl Iterator<Item = usize> {
    let mut seen = vec![false; nodes];
    let mut out = Vec::new();
    for &j in &cand.nodes {
        if !std::mem::replace(&mut seen[j as usize], true) {
            out.push(j as usize);
        }
    }
    out.into_iter()
}

/// Items of the candidates of all queries, each item once: the nodes of one depth cover
/// disjoint item ranges, so these are the items of the distinct nodes.
fn distinct_items(cand: &Candidates, tree: &Tree) -> usize {
    let dep = &tree.depths[cand.depth - 1];
    distinct_nodes(cand, dep.len()).map(|j| dep.count(j)).sum()
}

/// The nodes a traversal keeps at each depth `1..=beams.len()` for `tables` (the reference's
/// traversal, stopped at each depth in turn).
fn kept_per_depth(index: &Index, tables: &QueryTables, beams: &[usize]) -> Result<Vec<Candidates>> {
    (1..=beams.len())
        .map(|l| ops::traverse(&Reference, tables, &index.tree, &beams[..l]))
        .collect()
}

/// Bytes of the tree a traversal must read, each node once however many queries reach it:
/// every depth-1 node, then at each deeper depth the children of the distinct nodes kept at
/// the depth above (code, centroid norm, CSR: 12 bytes a node). `kept[l]`: the nodes kept
/// at depth `l + 1`.
fn tree_bytes(tree: &Tree, kept: &[Candidates]) -> f64 {
    let parents = &kept[..kept.len().saturating_sub(1)];
    let children: usize = parents
        .iter()
        .map(|p| {
            let dep = &tree.depths[p.depth - 1];
            distinct_nodes(p, dep.len())
                .map(|j| dep.children(j).len())
                .sum::<usize>()
        })
        .sum();
    12.0 * (tree.depths[0].len() + children) as f64
}

/// Bytes a traversal must read and write: its queries' tables of the levels it walks, the
/// tree's nodes ([`tree_bytes`]) and the ids of the nodes it keeps.
fn traverse_bytes(index: &Index, b: usize, kept: &[Candidates]) -> f64 {
    let table: usize = (0..kept.len())
        .map(|l| index.codebooks.level(l).len())
        .sum();
    let out = kept.last().map_or(0, |c| c.nodes.len());
    (4 * b * table + 4 * out) as f64 + tree_bytes(&index.tree, kept)
}

/// Bytes of the codes (and norms under `l2`) of `items` distinct items.
fn code_bytes(index: &Index, items: usize) -> f64 {
    let code = match index.codes.data() {
        CodeData::U8(_) => 1,
        CodeData::U16(_) => 2,
    };
    let norm = if index.metric == Metric::L2 { 4 } else { 0 };
    (items * (index.levels() * code + norm)) as f64
}

/// Bytes the fused lookup must read and write: the codes of the candidates' distinct items
/// ([`code_bytes`]), the tables, the results.
fn fused_bytes(index: &Index, tables: &QueryTables, items: usize, k: usize) -> f64 {
    let b = tables.queries();
    let ksum: usize = tables.levels.iter().map(Matrix::cols).sum();
    code_bytes(index, items) + (4 * b * ksum + 12 * b * k) as f64
}

/// Bytes an end-to-end search (no re-rank) must read and write: the queries, the codebooks,
/// the tree nodes it walks, the codes of its candidates' distinct items and the results.
/// Its tables and kept nodes are intermediates: a few MB that need not leave the L2.
fn search_bytes(index: &Index, b: usize, kept: &[Candidates], k: usize) -> f64 {
    let d = index.codebooks.dim();
    let words: usize = (0..index.levels())
        .map(|l| index.codebooks.level(l).len())
        .sum();
    let items = kept.last().map_or(0, |c| distinct_items(c, &index.tree));
    (4 * (b * d + words * d) + 12 * b * k) as f64
        + tree_bytes(&index.tree, kept)
        + code_bytes(index, items)
}

/// A note when an operation's rotated inputs, of which the runs read `rotated` bytes in all
/// (every copy once), stay under twice the L2: its runs may read them from a warm L2.
fn warm_l2_note(op: &str, rotated: f64) -> Option<String> {
    (rotated < 2.0 * L2_BYTES as f64).then(|| {
        format!(
            "{op}: the runs read {:.1} MB of rotated inputs in all, under twice the L2 \
             ({:.0} MB): its reads may hit a warm L2",
            rotated / 1e6,
            2.0 * L2_BYTES as f64 / 1e6
        )
    })
}

/// Each query's candidates: enough consecutive depth-1 nodes (from a random start, wrapping)
/// to cover about `per_query` items.
fn depth1_candidates(index: &Index, b: usize, per_query: usize, seed: u64) -> Candidates {
    use rand::{Rng, SeedableRng};
    let nodes = index.tree.depths[0].len();
    let per_node = index.len() / nodes.max(1);
    let want = per_query.div_ceil(per_node.max(1)).clamp(1, nodes);
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut out = Candidates {
        depth: 1,
        offsets: vec![0],
        nodes: Vec::with_capacity(b * want),
    };
    for _ in 0..b {
        let start = rng.random_range(0..nodes);
        out.nodes
            .extend((0..want).map(|j| ((start + j) % nodes) as u32));
        out.offsets.push(out.nodes.len());
    }
    out
}

/// Query `q`'s candidates: depth-2 nodes `q·m .. (q+1)·m`, `m = ⌊nodes / b⌋` (≥ 1), so every
/// query scans its own contiguous item range and no item is a candidate of two queries: the
/// codes the fused lookup must read are then all the candidates' codes.
fn disjoint_candidates(index: &Index, b: usize) -> Result<Candidates> {
    let nodes = index.tree.depths.get(1).map_or(0, |d| d.len());
    if nodes < b {
        return Err(Error::param(format!(
            "bench: {b} queries need as many depth-2 nodes, the index has {nodes}"
        )));
    }
    let m = nodes / b;
    Ok(Candidates {
        depth: 2,
        offsets: (0..=b).map(|q| q * m).collect(),
        nodes: (0..(b * m) as u32).collect(),
    })
}

/// Runs the benchmark on `be` and prints a table or JSON.
pub fn run(be: &dyn Backend, opts: &BenchOptions) -> Result<()> {
    let sz = sizes(opts);
    let cuda = be.name() == "cuda";
    // A kernel backend: the bench adds rows of its variants (`assign_tc`, `exact_topk_tc`,
    // `fused_topk_walk`).
    let kernels = matches!(be.name(), "emu" | "cuda");
    let timer = Timer {
        be,
        warmup: if cuda { WARMUP } else { 1 },
        runs: if cuda {
            CUDA_RUNS
        } else if opts.quick {
            3
        } else {
            5
        },
    };
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    // k of the fused, exact and search rows.
    let k = 100;
    if !cuda {
        notes.push(format!(
            "{} backend: wall-clock medians, not CUDA events; the floor is the H200's",
            be.name()
        ));
    }

    if opts.only.assign {
        // Assignment: greedy encoding over L levels (one assignment per level).
        let (n, levels, kk) = sz.assign;
        let copies = copies_for(be, n * D * 4);
        let items = resident_matrices(be, n, D, copies, 1)?;
        let cbs = Codebooks::from_matrices(
            (0..levels)
                .map(|l| normal_matrix(kk, D, 1.0 / (l + 1) as f32, 50 + l as u64))
                .collect(),
        )?;
        let screening = if opts.tensor_cores {
            "tensor-core screening"
        } else {
            "FMA screening"
        };
        let assign_flops = 2.0 * (n * kk * D * levels) as f64;
        let assign_bytes = (n * D * 4 + n * levels * 4 + n * 4) as f64;
        let assign_work = if kernels && opts.tensor_cores {
            Work::tf32(assign_flops, assign_bytes)
        } else {
            Work::fp32(assign_flops, assign_bytes)
        };
        rows.push(timer.row(
            "assign",
            format!(
                "greedy encode N={n} d={D} L={levels} K={kk} f32{}",
                if kernels {
                    format!(" ({screening})")
                } else {
                    String::new()
                }
            ),
            copies,
            assign_work,
            |c| ops::encode(be, &items[c], &cbs, 1).map(|_| ()),
        )?);
        if kernels && !opts.tensor_cores {
            let o = OpenOptions {
                tensor_cores: true,
                ..OpenOptions::default()
            };
            let resident = items.iter().map(|m| Resident::Matrix(Arc::clone(m)));
            rows.push(timer.variant_row(
                o,
                resident,
                "assign_tc",
                format!("greedy encode N={n} d={D} L={levels} K={kk} f32 (tensor-core screening)"),
                copies,
                Work::tf32(assign_flops, assign_bytes),
                |tc, c| ops::encode(tc, &items[c], &cbs, 1).map(|_| ()),
            )?);
        }
        drop(items);
        be.release_resident()?;
    }

    if opts.only.fused {
        // Fused residual lookup + top-k: each query's candidates are depth-1 nodes shared
        // with other queries; then the same sizes with every query's candidates its own
        // (depth-2 nodes of an index of B × candidates items), whose bytes are every
        // candidate's codes: the bandwidth target.
        let (b, per_query, flevels, fk) = sz.fused;
        let walk_too = kernels && opts.fused_kernel == FusedKernel::Auto;
        let sizes = vec![fk; flevels];
        let shared = random_tree_index((per_query * fk / 4).max(1), D, &sizes, Metric::Ip, 7)?;
        let fq = normal_matrix(b, D, 1.0, 8);
        let tables = ops::lookup_tables(&Reference, &fq, &shared.codebooks, Metric::Ip)?;
        let cand = depth1_candidates(&shared, b, per_query, 9);
        let shared_rows = timer.fused_rows(
            "fused_topk",
            "depth-1 nodes",
            shared,
            &tables,
            &cand,
            k,
            walk_too,
        )?;
        let own = random_tree_index((b * per_query).max(1), D, &sizes, Metric::Ip, 10)?;
        let cand = disjoint_candidates(&own, b)?;
        let own_rows = timer.fused_rows(
            "fused_topk_disjoint",
            "depth-2 nodes, none shared between queries",
            own,
            &tables,
            &cand,
            k,
            walk_too,
        )?;
        for (r, note) in [shared_rows, own_rows] {
            rows.extend(r);
            notes.extend(note.filter(|_| cuda));
        }
    }

    if opts.only.topk {
        // Row-wise top-k.
        let (tr, tn) = sz.topk;
        let copies = copies_for(be, tr * tn * 4);
        let scores = resident_matrices(be, tr, tn, copies, 20)?;
        for k in [10, 100, 1000] {
            rows.push(timer.row(
                &format!("topk_k{k}"),
                format!("top-{k} of {tr} rows x {tn} f32"),
                copies,
                Work::fp32(0.0, (tr * tn * 4 + tr * k * 12) as f64),
                |c| ops::topk(be, &scores[c], k).map(|_| ()),
            )?);
        }
        drop(scores);
        be.release_resident()?;
    }

    if opts.only.exact {
        // Exact brute-force top-k.
        let (eb, en) = sz.exact;
        let copies = copies_for(be, en * D * 4);
        let eitems = resident_matrices(be, en, D, copies, 30)?;
        let eq = resident_matrices(be, eb, D, 1, 40)?;
        let exact_flops = 2.0 * (eb * en * D) as f64;
        let exact_bytes = (en * D * 4 + eb * D * 4 + eb * k * 12) as f64;
        let exact_work = if kernels && opts.tensor_cores {
            Work::tf32(exact_flops, exact_bytes)
        } else {
            Work::fp32(exact_flops, exact_bytes)
        };
        let screening = if kernels && opts.tensor_cores {
            " (tensor-core screening)"
        } else {
            ""
        };
        rows.push(timer.row(
            "exact_topk",
            format!("exact top-{k} B={eb} N={en} d={D} ip{screening}"),
            copies,
            exact_work,
            |c| ops::exact_topk(be, &eq[0], &eitems[c], Metric::Ip, k).map(|_| ()),
        )?);
        if kernels && !opts.tensor_cores {
            let o = OpenOptions {
                tensor_cores: true,
                ..OpenOptions::default()
            };
            let resident = eitems.iter().chain(&eq);
            rows.push(timer.variant_row(
                o,
                resident.map(|m| Resident::Matrix(Arc::clone(m))),
                "exact_topk_tc",
                format!("exact top-{k} B={eb} N={en} d={D} ip (tensor-core screening)"),
                copies,
                Work::tf32(exact_flops, exact_bytes),
                |tc, c| ops::exact_topk(tc, &eq[0], &eitems[c], Metric::Ip, k).map(|_| ()),
            )?);
        }
        drop(eitems);
        be.release_resident()?;
    }

    if opts.only.search {
        // The search index: a random tree (targets) or residual k-means (default sizes).
        let (sn, slevels, sk, sb, beams) = sz.search;
        let index = if sz.random_tree {
            random_tree_index(sn, D, &vec![sk; slevels], Metric::Ip, 11)?
        } else {
            let data = clustered(sn, D, 500, 0.4, false, 11);
            let bopts = BuildOptions {
                metric: Metric::Ip,
                keep_embeddings: EmbeddingKind::F32,
                encode_beam: 1,
                kmeans: KMeansOptions {
                    levels: slevels,
                    codes: sk,
                    iters: 4,
                    max_train: (sn / 5).max(sk),
                    seed: 3,
                },
                progress: false,
            };
            let t0 = std::time::Instant::now();
            let ix = build(be, &data, None, None, &bopts)?;
            let secs = t0.elapsed().as_secs_f64();
            notes.push(format!(
                "build N={sn} L={slevels} K={sk} (k-means 4 iters on {} rows): {:.0} ms wall",
                (sn / 5).max(sk),
                secs * 1e3
            ));
            ix
        };
        let kind = if sz.random_tree {
            "random tree"
        } else {
            "k-means"
        };
        let ksum = sk * slevels;
        // Queries rotate over copies, and so does the index: each run reads its tree nodes
        // and its candidates' codes from its own copy.
        let copies = copies_for(be, sb * D * 4 + sb * ksum * 4);
        let queries = resident_matrices(be, sb, D, copies, 60)?;
        let all_tables: Vec<QueryTables> = queries
            .iter()
            .map(|q| ops::lookup_tables(&Reference, q, &index.codebooks, Metric::Ip))
            .collect::<Result<_>>()?;
        let kept = kept_per_depth(&index, &all_tables[0], &beams)?;
        let cand0 = kept.last().expect("two beams");
        let scanned: usize = (0..sb).map(|q| cand0.items_of(q, &index.tree)).sum();
        if scanned == 0 {
            return Err(Error::param("bench: the search found no candidates"));
        }
        let distinct = distinct_items(cand0, &index.tree);
        let index_read = tree_bytes(&index.tree, &kept) + code_bytes(&index, distinct);
        let icopies = copies_for(be, index_read as usize);
        let ix: Vec<Arc<Index>> = (0..icopies).map(|_| Arc::new(index.clone())).collect();
        drop(index);
        for i in &ix {
            be.keep_resident(Resident::Index(Arc::clone(i)))?;
        }
        // Rotated bytes read: per query copy (queries; the traversal's tables, uploaded by
        // every call) and per index copy (codebooks, tree nodes, codes).
        let (q, t, w) = (4 * sb * D, 4 * sb * ksum, 4 * ksum * D);
        for (op, rotated) in [
            ("lookup_tables", copies * q + icopies * w),
            (
                "traverse",
                copies * t + icopies * tree_bytes(&ix[0].tree, &kept) as usize,
            ),
            ("search", copies * q + icopies * (w + index_read as usize)),
        ] {
            notes.extend(cuda.then(|| warm_l2_note(op, rotated as f64)).flatten());
        }
        let ix_of = |c: usize| &ix[c % icopies];
        rows.push(timer.row(
            "lookup_tables",
            format!("lookup tables B={sb} L={slevels} K={sk} d={D}"),
            copies,
            Work::fp32(
                2.0 * (sb * ksum * D) as f64,
                (4 * (sb * D + ksum * D + sb * ksum)) as f64,
            ),
            |c| ops::lookup_tables(be, &queries[c], &ix_of(c).codebooks, Metric::Ip).map(|_| ()),
        )?);
        rows.push(timer.row(
            "traverse",
            format!(
                "traverse B={sb} beams {},{} over {} + {} nodes ({kind}, N={sn})",
                beams[0],
                beams[1],
                ix[0].tree.depths[0].len(),
                ix[0].tree.depths[1].len()
            ),
            copies,
            Work::fp32(0.0, traverse_bytes(&ix[0], sb, &kept)),
            |c| ops::traverse(be, &all_tables[c], &ix_of(c).tree, &beams).map(|_| ()),
        )?);
        let rerank = if sz.random_tree {
            Rerank::None
        } else {
            Rerank::Exact {
                rerank_k: Some(1000),
            }
        };
        let params = SearchParams {
            k,
            beams: beams.to_vec(),
            rerank,
        };
        rows.push(timer.row(
            "search",
            format!(
                "search B={sb} N={sn} d={D} L={slevels}x{sk} beams {},{} k={k} {} ({kind}, {} candidates/query, {distinct} distinct items)",
                beams[0],
                beams[1],
                if sz.random_tree { "no rerank" } else { "rerank 1000" },
                scanned / sb.max(1)
            ),
            copies,
            Work::fp32(
                2.0 * (sb * ksum * D) as f64,
                search_bytes(&ix[0], sb, &kept, k),
            ),
            |c| search(be, ix_of(c), &queries[c], None, &params).map(|_| ()),
        )?);
        be.release_resident()?;
    }
    print(be, &rows, &notes, opts)
}

fn print(be: &dyn Backend, rows: &[BenchRow], notes: &[String], opts: &BenchOptions) -> Result<()> {
    if opts.json {
        let out = serde_json::json!({
            "tool": "rqtree",
            "backend": be.name(),
            "threads": rayon::current_num_threads(),
            "targets": opts.targets,
            "peak_bytes_per_s": PEAK_BYTES_PER_S,
            "peak_flops": PEAK_FLOPS,
            "notes": notes,
            "rows": rows,
        });
        println!("{out}");
        return Ok(());
    }
    println!(
        "backend {} ({} threads)",
        be.name(),
        rayon::current_num_threads()
    );
    for n in notes {
        println!("note: {n}");
    }
    println!(
        "{:<24} {:>10} {:>10} {:>10} {:>10} {:>8}  sizes",
        "operation", "ms", "kernel ms", "GFLOP/s", "GB/s", "floor"
    );
    for r in rows {
        let kernel = r
            .kernel_ms
            .map_or_else(|| "-".to_string(), |v| format!("{v:.3}"));
        println!(
            "{:<24} {:>10.3} {:>10} {:>10.2} {:>10.2} {:>7.2}%  {}",
            r.op,
            r.ms,
            kernel,
            r.gflops,
            r.gbps,
            100.0 * r.floor_fraction,
            r.label
        );
    }
    // Where each multi-kernel operation's kernel time goes.
    for r in rows.iter().filter(|r| r.kernels.len() > 1) {
        let parts: Vec<String> = r
            .kernels
            .iter()
            .map(|k| format!("{} {:.3} ms ({}x)", k.name, k.ms, k.launches))
            .collect();
        println!("kernels of {}: {}", r.op, parts.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kt(name: &str, launches: usize, ms: f64) -> KernelTime {
        KernelTime {
            name: name.into(),
            launches,
            ms,
        }
    }

    /// Per-kernel medians: names in order of first launch over the runs, a run without a
    /// kernel counts 0 ms for it, launches are the most in one run.
    #[test]
    fn kernel_medians_per_name() {
        let runs = vec![
            vec![kt("a", 2, 1.0), kt("b", 1, 5.0)],
            vec![kt("a", 2, 3.0)],
            vec![kt("c", 4, 0.5), kt("a", 2, 2.0), kt("b", 3, 7.0)],
        ];
        assert_eq!(
            kernel_medians(&runs),
            vec![kt("a", 2, 2.0), kt("b", 3, 5.0), kt("c", 4, 0.0)]
        );
        assert!(kernel_medians(&[]).is_empty());
    }

    fn cands(depth: usize, lists: &[&[u32]]) -> Candidates {
        let mut c = Candidates {
            depth,
            offsets: vec![0],
            nodes: Vec::new(),
        };
        for l in lists {
            c.nodes.extend_from_slice(l);
            c.offsets.push(c.nodes.len());
        }
        c
    }

    /// Disjoint candidates: `⌊nodes / b⌋` depth-2 nodes per query, no item listed twice
    /// (distinct items = items scanned), every item scanned with one query; too many queries
    /// for the nodes are an error.
    #[test]
    fn disjoint_candidates_share_no_item() {
        let ix = random_tree_index(3000, 4, &[6, 9, 5], Metric::Ip, 11).expect("index");
        let nodes = ix.tree.depths[1].len();
        for b in [1, 7, nodes] {
            let c = disjoint_candidates(&ix, b).expect("candidates");
            assert_eq!((c.depth, c.queries()), (2, b));
            assert!((0..b).all(|q| c.nodes_of(q).len() == nodes / b), "b = {b}");
            let scanned: usize = (0..b).map(|q| c.items_of(q, &ix.tree)).sum();
            assert_eq!(distinct_items(&c, &ix.tree), scanned, "b = {b}");
            assert!(scanned <= ix.len());
        }
        let one = disjoint_candidates(&ix, 1).expect("candidates");
        assert_eq!(one.items_of(0, &ix.tree), ix.len());
        assert!(disjoint_candidates(&ix, nodes + 1).is_err());
    }

    /// An item (or a node) several queries read counts once in the bytes: the fused lookup
    /// counts the codes of the distinct candidate items, a traversal the children of the
    /// distinct kept parents; the FLOPs stay every query's own.
    #[test]
    fn shared_data_counts_once() {
        use std::collections::HashSet;
        let ix = random_tree_index(500, 4, &[4, 8], Metric::Ip, 5).expect("index");
        let d1 = &ix.tree.depths[0];
        let once = cands(1, &[&[0, 1], &[1, 2], &[0]]);
        let items: HashSet<usize> = [0, 1, 2].iter().flat_map(|&j| d1.items(j)).collect();
        assert_eq!(distinct_items(&once, &ix.tree), items.len());
        // Every query listing the same nodes reads no more memory.
        let twice = cands(1, &[&[0, 1], &[1, 2], &[0], &[2, 1, 0]]);
        assert_eq!(distinct_items(&twice, &ix.tree), items.len());
        let q = normal_matrix(4, 4, 1.0, 6);
        let tables = ops::lookup_tables(&Reference, &q, &ix.codebooks, Metric::Ip).expect("t");
        assert_eq!(
            fused_bytes(&ix, &tables, items.len(), 10),
            (items.len() * 2 + 4 * 4 * 12 + 12 * 4 * 10) as f64
        );
        assert_eq!(code_bytes(&ix, 7), 14.0);

        // Depth-2 nodes kept: their parents' children are read once.
        let d2 = &ix.tree.depths[1];
        let last = cands(2, &[&[0, 1], &[0], &[2], &[1]]);
        let kept = [twice, last];
        let children: HashSet<usize> = [0, 1, 2].iter().flat_map(|&j| d1.children(j)).collect();
        let tree = 12.0 * (d1.len() + children.len()) as f64;
        assert_eq!(tree_bytes(&ix.tree, &kept), tree);
        assert_eq!(
            traverse_bytes(&ix, 4, &kept),
            (4 * 4 * (4 + 8) + 4 * 5) as f64 + tree
        );
        let last_items: usize = [0, 1, 2].iter().map(|&j| d2.count(j)).sum();
        assert_eq!(
            search_bytes(&ix, 4, &kept, 10),
            (4 * (4 * 4 + 12 * 4) + 12 * 4 * 10 + 2 * last_items) as f64 + tree
        );
    }

    /// The kept nodes per depth are the traversal's, stopped at each depth.
    #[test]
    fn kept_per_depth_is_the_traversal() {
        let ix = random_tree_index(300, 4, &[4, 4], Metric::Ip, 9).expect("index");
        let q = normal_matrix(3, 4, 1.0, 10);
        let tables = ops::lookup_tables(&Reference, &q, &ix.codebooks, Metric::Ip).expect("t");
        let kept = kept_per_depth(&ix, &tables, &[2, 3]).expect("kept");
        assert_eq!(kept.len(), 2);
        assert_eq!((kept[0].depth, kept[0].nodes.len()), (1, 6));
        let full = ops::traverse(&Reference, &tables, &ix.tree, &[2, 3]).expect("traverse");
        assert_eq!(kept[1], full);
    }

    /// The floor divides the FLOPs by the rate of the unit that runs them.
    #[test]
    fn floor_per_unit() {
        assert_eq!(Work::fp32(67e12, 0.0).floor_ms(), 1e3);
        assert_eq!(Work::tf32(494.7e12, 0.0).floor_ms(), 1e3);
        assert_eq!(Work::tf32(0.0, 4.3e12).floor_ms(), 1e3);
    }

    /// Rotated inputs under twice the L2 get a note naming the operation.
    #[test]
    fn warm_l2_is_noted() {
        let l2 = L2_BYTES as f64;
        assert_eq!(warm_l2_note("topk_k10", 2.0 * l2), None);
        let note = warm_l2_note("lookup_tables", l2).expect("a note");
        assert!(note.starts_with("lookup_tables: "), "{note}");
    }
}
