//! The `Backend` trait (DESIGN §5): the kernel-level operations that `reference`, `emu` and
//! `cuda` implement. Inputs reaching a backend are already validated by [`crate::ops`] (shapes,
//! finiteness, code and node ranges, score magnitudes: [`crate::range`]) or built by
//! [`crate::search::search`] from validated inputs; a backend may assume them (call these
//! methods through `ops`, not directly, with inputs of your own) and must return results
//! obeying the tie rule of DESIGN §4 (higher score first, equal scores → lower id).

use std::sync::Arc;

use crate::candidates::Candidates;
use crate::device::Timing;
use crate::error::{Error, Result};
use crate::index::{Codebook, Codebooks, Embeddings, Index, Tree};
use crate::matrix::Matrix;
use crate::metric::Metric;
use crate::search::SearchParams;
use crate::tables::QueryTables;
use crate::topk::TopK;

/// What [`Backend::assign`] computes besides the hard code.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AssignOptions {
    /// Best codes kept per row (`1 ≤ top_m ≤ K`).
    pub top_m: usize,
    /// Inverse temperature `α` for soft weights `softmax_k(α·logit_k)`; `None` skips them.
    /// `ops::assign` refuses rows whose scaled logits could overflow
    /// ([`crate::range::check_soft_logits`]).
    pub alpha: Option<f32>,
    /// Also return the hard residual `r - C[code]`.
    pub residual: bool,
}

impl Default for AssignOptions {
    fn default() -> Self {
        AssignOptions {
            top_m: 1,
            alpha: None,
            residual: false,
        }
    }
}

/// One level's assignment of `n` rows.
#[derive(Clone, Debug, PartialEq)]
pub struct Assignment {
    /// Codes kept per row (`top_m`).
    pub top_m: usize,
    /// `n × top_m` codes, best first (highest logit, ties → lowest code).
    pub codes: Vec<u32>,
    /// `n × top_m` logits at `α = 1` without the constant: `2<r, C[k]> - ||C[k]||²`.
    pub logits: Vec<f32>,
    /// `n × K` soft weights `softmax_k(α·logit_k)` when asked for.
    pub soft: Option<Matrix>,
    /// `n × d` hard residuals `r - C[code]` when asked for.
    pub residual: Option<Matrix>,
}

/// Codes of `n` items over all levels.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoding {
    /// Number of levels `L`.
    pub levels: usize,
    /// `n × L` codes, item-major.
    pub codes: Vec<u32>,
    /// `||x - x̂||²` per item.
    pub error: Vec<f32>,
}

/// Host data a backend may keep on its device for as long as it holds the `Arc` (see
/// [`Backend::keep_resident`]).
#[derive(Clone, Debug)]
pub enum Resident {
    /// A whole index: codebooks, codes, ids, norms, tree tables, embeddings.
    Index(Arc<Index>),
    /// One matrix (items, queries or scores passed to later calls).
    Matrix(Arc<Matrix>),
}

/// The kernel-level operations of one backend. See the module docs for the contract.
pub trait Backend: Send + Sync {
    /// Short name (`reference`, `emu`, `cuda`).
    fn name(&self) -> &'static str;

    /// One level of code assignment for `residuals` (`n × d`) over `codebook` (`K × d`).
    fn assign(
        &self,
        residuals: &Matrix,
        codebook: &Codebook,
        opts: &AssignOptions,
    ) -> Result<Assignment>;

    /// Encodes `items` (`n × d`) over all levels keeping the `beam` best partial paths by
    /// squared reconstruction error (`beam = 1`: greedy).
    fn encode(&self, items: &Matrix, codebooks: &Codebooks, beam: usize) -> Result<Encoding>;

    /// Lookup tables of `queries` (`B × d`).
    fn lookup_tables(
        &self,
        queries: &Matrix,
        codebooks: &Codebooks,
        metric: Metric,
    ) -> Result<QueryTables>;

    /// Beam traversal: keep `beams[l]` nodes per query at depth `l+1`
    /// (`1 ≤ beams.len() ≤ L`).
    fn traverse(&self, tables: &QueryTables, tree: &Tree, beams: &[usize]) -> Result<Candidates>;

    /// Fused residual lookup + top-k over each query's candidate items. Returned ids are
    /// item positions, ranked by (score, caller id `index.ids[pos]`) so that ties follow the
    /// caller's ids; missing slots are `-1` / `-inf`.
    fn fused_topk(
        &self,
        tables: &QueryTables,
        index: &Index,
        candidates: &Candidates,
        k: usize,
    ) -> Result<TopK>;

    /// The whole search pipeline (DESIGN §3) run without returning to the host between its
    /// steps, when the backend has such a path: `B × k` caller ids (`-1` for empty slots) and
    /// scores, and the candidate items of each query; `None` (the default) when it
    /// has none, and the caller composes the operations above. [`crate::search::search`]
    /// calls it after validating `queries` and `params`, only without caller level-1 scores.
    fn search_on_device(
        &self,
        index: &Index,
        queries: &Matrix,
        params: &SearchParams,
    ) -> Result<Option<(TopK, Vec<usize>)>> {
        let _ = (index, queries, params);
        Ok(None)
    }

    /// Re-scores each query's shortlist exactly against `embeddings` (rows = positions) and
    /// keeps the best `k`, ranked by (score, `ids[pos]`); returned ids are positions. The
    /// shortlist of query `b` is `positions[offsets[b]..offsets[b+1]]`.
    #[allow(clippy::too_many_arguments)]
    fn rerank(
        &self,
        queries: &Matrix,
        embeddings: &Embeddings,
        ids: &[i64],
        metric: Metric,
        offsets: &[usize],
        positions: &[u32],
        k: usize,
    ) -> Result<TopK>;

    /// Row-wise top-k of `scores` (`rows × n`); ids are column indices.
    fn topk(&self, scores: &Matrix, k: usize) -> Result<TopK>;

    /// Segmented top-k: segment `s` is `values[offsets[s]..offsets[s+1]]`; ids are offsets
    /// within the segment.
    fn segmented_topk(&self, values: &[f32], offsets: &[usize], k: usize) -> Result<TopK>;

    /// Exact brute-force top-k of `queries` against `items` (ids are item rows).
    fn exact_topk(
        &self,
        queries: &Matrix,
        items: &Matrix,
        metric: Metric,
        k: usize,
    ) -> Result<TopK>;

    /// Keeps `data` resident on the device until [`Backend::release_resident`]: later calls
    /// passing (parts of) it read the device copy without hashing or uploading it (what the
    /// host derives from it per call, such as f16/bf16-rounded codebooks, is still derived).
    /// Data not kept this way is still cached by content where the backend can (index data on
    /// `emu`/`cuda`).
    /// The default (CPU backends) does nothing.
    fn keep_resident(&self, data: Resident) -> Result<()> {
        let _ = data;
        Ok(())
    }

    /// Drops everything kept by [`Backend::keep_resident`] and any cached device copies.
    fn release_resident(&self) -> Result<()> {
        Ok(())
    }

    /// Runs `f` (calls of this backend) and times it: CUDA events on `cuda` (with the time
    /// of the kernels alone), the wall clock elsewhere. A benchmarking aid: the backend's
    /// work from other threads while `f` runs is counted in the timing too.
    fn time(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<Timing> {
        let start = std::time::Instant::now();
        f()?;
        Ok(Timing::wall(start.elapsed().as_secs_f64() * 1e3))
    }
}

/// Which backend to run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// `cuda` when a device and kernels are present, else `reference`.
    Auto,
    /// The CPU reference.
    Reference,
    /// The CUDA kernels emulated on the CPU.
    Emu,
    /// The CUDA kernels on a GPU.
    Cuda,
}

impl std::str::FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(BackendKind::Auto),
            "reference" => Ok(BackendKind::Reference),
            "emu" => Ok(BackendKind::Emu),
            "cuda" => Ok(BackendKind::Cuda),
            _ => Err(Error::param(format!(
                "backend '{s}': expected auto, reference, emu or cuda"
            ))),
        }
    }
}

/// How to open a backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// The kernel backends screen codewords for the greedy assignment, and items for the
    /// exact top-k, on the tensor cores
    /// ([`crate::kernels::KernelBackend::with_tensor_cores`]; same results, other speed).
    /// Ignored by `reference`.
    pub tensor_cores: bool,
    /// The kernel backends' fused lookup + top-k kernel
    /// ([`crate::kernels::KernelBackend::with_fused_kernel`]; same results, other speed).
    /// Ignored by `reference`.
    pub fused_kernel: crate::kernels::FusedKernel,
}

/// Opens the cuda backend, or says why it cannot run here.
#[cfg(feature = "cuda")]
fn open_cuda(o: OpenOptions) -> Result<Box<dyn Backend>> {
    let dev = crate::device::cuda::CudaDevice::open()?;
    Ok(Box::new(
        crate::kernels::KernelBackend::new(dev)
            .with_tensor_cores(o.tensor_cores)
            .with_fused_kernel(o.fused_kernel),
    ))
}

/// Without the `cuda` feature there is no cuda backend.
#[cfg(not(feature = "cuda"))]
fn open_cuda(_: OpenOptions) -> Result<Box<dyn Backend>> {
    Err(Error::BackendUnavailable(
        "the cuda backend is not part of this build (feature `cuda`)".into(),
    ))
}

/// Opens the emu backend (the CUDA kernel sources emulated on the CPU).
#[cfg(feature = "emu")]
fn open_emu(o: OpenOptions) -> Result<Box<dyn Backend>> {
    let dev = crate::device::emu::EmuDevice::new();
    Ok(Box::new(
        crate::kernels::KernelBackend::new(dev)
            .with_tensor_cores(o.tensor_cores)
            .with_fused_kernel(o.fused_kernel),
    ))
}

/// Without the `emu` feature there is no emu backend.
#[cfg(not(feature = "emu"))]
fn open_emu(_: OpenOptions) -> Result<Box<dyn Backend>> {
    Err(Error::BackendUnavailable(
        "the emu backend is not part of this build (feature `emu`)".into(),
    ))
}

/// Opens the backend `kind` with default options ([`open_with`]).
pub fn open(kind: BackendKind) -> Result<(Box<dyn Backend>, String)> {
    open_with(kind, OpenOptions::default())
}

/// Opens the backend `kind` with options `o`; also says why it chose what it chose (for
/// `Auto`: `cuda` when a device and kernels are present, else `reference`, with the reason).
pub fn open_with(kind: BackendKind, o: OpenOptions) -> Result<(Box<dyn Backend>, String)> {
    match kind {
        BackendKind::Reference => Ok((
            Box::new(crate::reference::Reference),
            "reference: requested".into(),
        )),
        BackendKind::Emu => Ok((open_emu(o)?, "emu: requested".into())),
        BackendKind::Cuda => Ok((open_cuda(o)?, "cuda: requested".into())),
        BackendKind::Auto => match open_cuda(o) {
            Ok(be) => Ok((be, "cuda: a device and kernels are present".into())),
            Err(e) => Ok((
                Box::new(crate::reference::Reference),
                format!("reference, because cuda is unavailable ({e})"),
            )),
        },
    }
}
