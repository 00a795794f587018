//! Validated entry points to the kernel-level operations: every shape, range and value is
//! checked on the host here, before any backend (and so any kernel launch) sees it.

use crate::backend::{AssignOptions, Assignment, Backend, Encoding};
use crate::candidates::Candidates;
use crate::error::{Error, Result};
use crate::index::{Codebook, Codebooks, Tree};
use crate::matrix::{check_finite, Matrix};
use crate::metric::Metric;
use crate::tables::QueryTables;
use crate::topk::TopK;

/// Largest beam width accepted for encoding (DESIGN: the kernels support `E ≤ 32`; the
/// reference accepts more).
pub const MAX_ENCODE_BEAM: usize = 1024;

/// Errors unless `k ≥ 1`.
pub fn check_k(k: usize) -> Result<()> {
    if k == 0 {
        return Err(Error::param(
            "k = 0: at least one result per query is needed",
        ));
    }
    Ok(())
}

/// Errors unless `beams` is non-empty, at most `levels` long and free of zeros.
pub fn check_beams(beams: &[usize], levels: usize) -> Result<()> {
    if beams.is_empty() {
        return Err(Error::param("empty beam list: give one width per depth"));
    }
    if beams.len() > levels {
        return Err(Error::param(format!(
            "{} beam widths given but the index has {levels} levels",
            beams.len()
        )));
    }
    if let Some(l) = beams.iter().position(|&w| w == 0) {
        return Err(Error::param(format!("beam width at depth {} is 0", l + 1)));
    }
    Ok(())
}

/// Errors unless `m` is finite with `d` columns.
pub fn check_input(m: &Matrix, d: usize, tensor: &str) -> Result<()> {
    m.check_cols(d, tensor)?;
    m.check_finite(tensor)
}

/// One level of code assignment (DESIGN §1).
pub fn assign(
    be: &dyn Backend,
    residuals: &Matrix,
    codebook: &Codebook,
    opts: &AssignOptions,
) -> Result<Assignment> {
    check_input(residuals, codebook.dim(), "residuals")?;
    if opts.top_m == 0 || opts.top_m > codebook.len() {
        return Err(Error::param(format!(
            "top_m = {} must be in 1..={} (K)",
            opts.top_m,
            codebook.len()
        )));
    }
    if let Some(a) = opts.alpha {
        if !a.is_finite() || a <= 0.0 {
            return Err(Error::param(format!(
                "inverse temperature alpha = {a} must be finite and > 0"
            )));
        }
    }
    be.assign(residuals, codebook, opts)
}

/// Greedy (`beam = 1`) or beam encoding of `items` over all levels.
pub fn encode(
    be: &dyn Backend,
    items: &Matrix,
    codebooks: &Codebooks,
    beam: usize,
) -> Result<Encoding> {
    check_input(items, codebooks.dim(), "items")?;
    if beam == 0 || beam > MAX_ENCODE_BEAM {
        return Err(Error::param(format!(
            "encoding beam = {beam} must be in 1..={MAX_ENCODE_BEAM}"
        )));
    }
    be.encode(items, codebooks, beam)
}

/// Lookup tables of a query batch.
pub fn lookup_tables(
    be: &dyn Backend,
    queries: &Matrix,
    codebooks: &Codebooks,
    metric: Metric,
) -> Result<QueryTables> {
    check_input(queries, codebooks.dim(), "queries")?;
    be.lookup_tables(queries, codebooks, metric)
}

/// Beam traversal over `tree` (the tables must come from the same codebooks).
pub fn traverse(
    be: &dyn Backend,
    tables: &QueryTables,
    tree: &Tree,
    beams: &[usize],
) -> Result<Candidates> {
    check_beams(beams, tree.depths.len())?;
    if tables.levels.len() != tree.depths.len() {
        return Err(Error::shape(format!(
            "{} lookup tables for a tree of {} depths",
            tables.levels.len(),
            tree.depths.len()
        )));
    }
    be.traverse(tables, tree, beams)
}

/// Row-wise top-k of a finite score matrix.
pub fn topk(be: &dyn Backend, scores: &Matrix, k: usize) -> Result<TopK> {
    check_k(k)?;
    scores.check_finite("scores")?;
    be.topk(scores, k)
}

/// Segmented top-k: `offsets` (non-decreasing, from 0 to `values.len()`) delimit segments.
pub fn segmented_topk(
    be: &dyn Backend,
    values: &[f32],
    offsets: &[usize],
    k: usize,
) -> Result<TopK> {
    check_k(k)?;
    check_finite(values, 1, "values")?;
    if offsets.first() != Some(&0) || offsets.last() != Some(&values.len()) {
        return Err(Error::shape(format!(
            "segment offsets must run from 0 to {}",
            values.len()
        )));
    }
    if let Some(s) = offsets.windows(2).position(|w| w[0] > w[1]) {
        return Err(Error::shape(format!(
            "segment offsets decrease at segment {s}"
        )));
    }
    be.segmented_topk(values, offsets, k)
}

/// Exact brute-force top-k (the recall oracle); ids are item rows.
pub fn exact_topk(
    be: &dyn Backend,
    queries: &Matrix,
    items: &Matrix,
    metric: Metric,
    k: usize,
) -> Result<TopK> {
    check_k(k)?;
    if items.cols() == 0 {
        return Err(Error::shape("items have dimension d = 0"));
    }
    check_input(items, items.cols(), "items")?;
    check_input(queries, items.cols(), "queries")?;
    be.exact_topk(queries, items, metric, k)
}
