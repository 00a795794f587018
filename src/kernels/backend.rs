//! [`KernelBackend`]: the [`Backend`] whose every operation runs the kernels of
//! `kernels/*.cu` on a [`Device`] (uploading inputs, launching, downloading results).
//! Operations outside the kernels' limits (`k`, beam widths or `top_m` above
//! [`super::MAX_K`], shared memory above [`super::MAX_SHARED_BYTES`]) are errors naming the
//! operation, never a silent CPU fallback.

use crate::backend::{AssignOptions, Assignment, Backend, Encoding};
use crate::candidates::Candidates;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::index::{Codebook, Codebooks, Embeddings, Index, Tree};
use crate::matrix::Matrix;
use crate::metric::Metric;
use crate::tables::QueryTables;
use crate::topk::TopK;

/// A backend running the rqtree kernels on device `D`.
pub struct KernelBackend<D: Device> {
    dev: D,
}

impl<D: Device> KernelBackend<D> {
    /// Wraps an opened device.
    pub fn new(dev: D) -> Self {
        KernelBackend { dev }
    }
    /// The device.
    pub fn device(&self) -> &D {
        &self.dev
    }
}

impl<D: Device> Backend for KernelBackend<D> {
    fn name(&self) -> &'static str {
        self.dev.name()
    }

    fn assign(&self, r: &Matrix, cb: &Codebook, o: &AssignOptions) -> Result<Assignment> {
        super::assign::assign(&self.dev, r, cb, o)
    }

    fn encode(&self, items: &Matrix, cbs: &Codebooks, beam: usize) -> Result<Encoding> {
        super::assign::encode(&self.dev, items, cbs, beam)
    }

    fn lookup_tables(&self, q: &Matrix, cbs: &Codebooks, metric: Metric) -> Result<QueryTables> {
        super::lookup::lookup_tables(&self.dev, q, cbs, metric)
    }

    fn traverse(&self, t: &QueryTables, tree: &Tree, beams: &[usize]) -> Result<Candidates> {
        super::traverse::traverse(&self.dev, t, tree, beams)
    }

    fn fused_topk(&self, t: &QueryTables, ix: &Index, c: &Candidates, k: usize) -> Result<TopK> {
        super::lookup::fused_topk(&self.dev, t, ix, c, k)
    }

    fn rerank(
        &self,
        q: &Matrix,
        e: &Embeddings,
        ids: &[i64],
        metric: Metric,
        shortlist: &TopK,
        k: usize,
    ) -> Result<TopK> {
        if ids.len() != e.rows() {
            return Err(Error::shape(format!(
                "rerank: {} ids for {} embedding rows",
                ids.len(),
                e.rows()
            )));
        }
        super::lookup::rerank(&self.dev, q, e, ids, metric, shortlist, k)
    }

    fn topk(&self, scores: &Matrix, k: usize) -> Result<TopK> {
        super::topk::topk(&self.dev, scores, k)
    }

    fn segmented_topk(&self, values: &[f32], offsets: &[usize], k: usize) -> Result<TopK> {
        super::topk::segmented_topk(&self.dev, values, offsets, k)
    }

    fn exact_topk(&self, q: &Matrix, items: &Matrix, metric: Metric, k: usize) -> Result<TopK> {
        super::lookup::exact_topk(&self.dev, q, items, metric, k)
    }
}
