//! The `reference` backend: plain, obviously-correct Rust with `rayon` over rows/queries.
//! It is the oracle every other backend is tested against.

mod assign;
mod encode;
mod exact;
mod lookup;
mod select;
mod traverse;

use crate::backend::{AssignOptions, Assignment, Backend, Encoding};
use crate::candidates::Candidates;
use crate::error::Result;
use crate::index::{Codebook, Codebooks, Embeddings, Index, Tree};
use crate::matrix::Matrix;
use crate::metric::Metric;
use crate::tables::QueryTables;
use crate::topk::TopK;

/// The CPU reference backend.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reference;

impl Backend for Reference {
    fn name(&self) -> &'static str {
        "reference"
    }
    fn assign(&self, r: &Matrix, cb: &Codebook, o: &AssignOptions) -> Result<Assignment> {
        Ok(assign::assign(r, cb, o))
    }
    fn encode(&self, items: &Matrix, cbs: &Codebooks, beam: usize) -> Result<Encoding> {
        Ok(encode::encode(items, cbs, beam))
    }
    fn lookup_tables(&self, q: &Matrix, cbs: &Codebooks, metric: Metric) -> Result<QueryTables> {
        Ok(lookup::tables(q, cbs, metric))
    }
    fn traverse(&self, t: &QueryTables, tree: &Tree, beams: &[usize]) -> Result<Candidates> {
        Ok(traverse::traverse(t, tree, beams))
    }
    fn fused_topk(&self, t: &QueryTables, ix: &Index, c: &Candidates, k: usize) -> Result<TopK> {
        Ok(lookup::fused_topk(t, ix, c, k))
    }
    fn rerank(
        &self,
        q: &Matrix,
        e: &Embeddings,
        ids: &[i64],
        metric: Metric,
        offsets: &[usize],
        positions: &[u32],
        k: usize,
    ) -> Result<TopK> {
        Ok(exact::rerank(q, e, ids, metric, offsets, positions, k))
    }
    fn topk(&self, scores: &Matrix, k: usize) -> Result<TopK> {
        Ok(select::topk(scores, k))
    }
    fn segmented_topk(&self, values: &[f32], offsets: &[usize], k: usize) -> Result<TopK> {
        Ok(select::segmented_topk(values, offsets, k))
    }
    fn exact_topk(&self, q: &Matrix, items: &Matrix, metric: Metric, k: usize) -> Result<TopK> {
        Ok(exact::exact_topk(q, items, metric, k))
    }
}
