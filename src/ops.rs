//! Validated entry points to the kernel-level operations: every shape, range and value is
//! checked on the host here, before any backend (and so any kernel launch) sees it.

use crate::backend::{AssignOptions, Assignment, Backend, Encoding};
use crate::candidates::Candidates;
use crate::error::{Error, Result};
use crate::index::{Codebook, Codebooks, Embeddings, Index, Tree};
use crate::matrix::{check_finite, Matrix};
use crate::metric::Metric;
use crate::range;
use crate::tables::QueryTables;
use crate::topk::TopK;
use rayon::prelude::*;

/// Largest beam width accepted for encoding (the reference's limit; the kernel backends
/// also need `8·E·d` bytes of shared memory per block and say so when that is too much).
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

/// Errors unless `1 ≤ k` and a `rows × k` result can be held
/// ([`crate::topk::check_result_size`]).
pub fn check_k_rows(rows: usize, k: usize) -> Result<()> {
    check_k(k)?;
    crate::topk::check_result_size(rows, k, "k")
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
        range::check_soft_logits(residuals, codebook, a)?;
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
    range::check_query_scores(queries, codebooks, metric, None)?;
    be.lookup_tables(queries, codebooks, metric)
}

/// `beams` with each width capped at the number of nodes of its depth (keeping more nodes
/// than there are keeps them all, so the result is the same, and no backend sizes buffers
/// from an absurd width).
pub fn clamp_beams(beams: &[usize], tree: &Tree) -> Vec<usize> {
    beams
        .iter()
        .zip(&tree.depths)
        .map(|(&w, depth)| w.min(depth.len().max(1)))
        .collect()
}

/// Errors unless `tables` fit `tree`: one table per depth, each with a row per query
/// (`qnorm.len()`) and a column for every code of its depth; and their summed scores stay
/// within range (norms: the depths' largest stored centroid norm, under `l2`).
fn check_tables_for_tree(tables: &QueryTables, tree: &Tree) -> Result<()> {
    if tables.levels.len() != tree.depths.len() {
        return Err(Error::shape(format!(
            "{} lookup tables for a tree of {} depths",
            tables.levels.len(),
            tree.depths.len()
        )));
    }
    let b = tables.queries();
    let mut norm = 0.0f32;
    for (l, (m, depth)) in tables.levels.iter().zip(&tree.depths).enumerate() {
        let codes = depth.code.iter().max().map_or(0, |&c| c as usize + 1);
        if m.rows() != b || m.cols() < codes {
            return Err(Error::shape(format!(
                "the lookup table of level {} is {} x {}, expected {b} queries x at least \
                 {codes} codes",
                l + 1,
                m.rows(),
                m.cols()
            )));
        }
        norm = depth.centroid_norm.iter().fold(norm, |a, &v| a.max(v));
    }
    range::check_table_scores(tables, f64::from(norm))
}

/// Beam traversal over `tree` (the tables must come from the same codebooks); widths above
/// a depth's node count keep every node.
pub fn traverse(
    be: &dyn Backend,
    tables: &QueryTables,
    tree: &Tree,
    beams: &[usize],
) -> Result<Candidates> {
    check_beams(beams, tree.depths.len())?;
    check_tables_for_tree(tables, tree)?;
    be.traverse(tables, tree, &clamp_beams(beams, tree))
}

/// Errors unless `offsets` (`B + 1` of them, from 0, non-decreasing) delimit `len` entries
/// for `queries` queries; `what` names the list.
fn check_offsets(offsets: &[usize], queries: usize, len: usize, what: &str) -> Result<()> {
    if offsets.len() != queries + 1 || offsets.first() != Some(&0) || offsets.last() != Some(&len) {
        return Err(Error::shape(format!(
            "{what}: {} offsets for {queries} queries must run from 0 to {len}",
            offsets.len()
        )));
    }
    if let Some(q) = offsets.windows(2).position(|w| w[0] > w[1]) {
        return Err(Error::shape(format!(
            "{what}: offsets decrease at query {q}"
        )));
    }
    Ok(())
}

/// Errors unless each query's entries (`entries[offsets[b]..offsets[b + 1]]`, valid offsets,
/// every entry `< universe`) are distinct: an entry listed twice would be scored twice and
/// could fill two result slots with one item. `what` names the entries. `O(len)` work and a
/// `universe`-bit set per worker.
fn check_distinct(offsets: &[usize], entries: &[u32], universe: usize, what: &str) -> Result<()> {
    let twice = (0..offsets.len().saturating_sub(1))
        .into_par_iter()
        .map_init(
            || vec![0u64; universe.div_ceil(64)],
            |seen, b| {
                let list = &entries[offsets[b]..offsets[b + 1]];
                let dup = list.iter().find(|&&e| {
                    let (w, bit) = (e as usize / 64, 1u64 << (e % 64));
                    let had = seen[w] & bit != 0;
                    seen[w] |= bit;
                    had
                });
                for &e in list {
                    seen[e as usize / 64] = 0;
                }
                dup.map(|&e| (b, e))
            },
        )
        .find_first(Option::is_some)
        .flatten();
    match twice {
        Some((b, e)) => Err(Error::shape(format!("{what}: query {b} lists {e} twice"))),
        None => Ok(()),
    }
}

/// Fused residual lookup + top-k over each query's candidate nodes (DESIGN §3): `tables`
/// from `index`'s codebooks and metric, `candidates` nodes of one depth of its tree.
pub fn fused_topk(
    be: &dyn Backend,
    tables: &QueryTables,
    index: &Index,
    candidates: &Candidates,
    k: usize,
) -> Result<TopK> {
    check_k_rows(tables.queries(), k)?;
    if tables.metric != index.metric {
        return Err(Error::param(format!(
            "lookup tables for {:?} used on a {:?} index",
            tables.metric, index.metric
        )));
    }
    let sizes = index.codebooks.sizes();
    let b = tables.queries();
    if tables.levels.len() != sizes.len()
        || tables
            .levels
            .iter()
            .zip(&sizes)
            .any(|(m, &kk)| m.rows() != b || m.cols() != kk)
    {
        return Err(Error::shape(format!(
            "lookup tables do not match {b} queries over codebooks of sizes {sizes:?}"
        )));
    }
    let depths = index.tree.depths.len();
    if candidates.depth == 0 || candidates.depth > depths {
        return Err(Error::shape(format!(
            "candidates at depth {} of a tree of {depths} depths",
            candidates.depth
        )));
    }
    check_offsets(&candidates.offsets, b, candidates.nodes.len(), "candidates")?;
    let nodes = index.tree.depths[candidates.depth - 1].len();
    if let Some(&j) = candidates.nodes.iter().find(|&&j| j as usize >= nodes) {
        return Err(Error::shape(format!(
            "candidate node {j} at depth {} of {nodes} nodes",
            candidates.depth
        )));
    }
    check_distinct(
        &candidates.offsets,
        &candidates.nodes,
        nodes,
        "candidate nodes",
    )?;
    // The items' norms are bounded from the codebooks (`O(Σ K_l)`) rather than scanned
    // (`O(N)` on every call).
    range::check_table_scores(tables, range::reconstruction_norm_bound(&index.codebooks))?;
    be.fused_topk(tables, index, candidates, k)
}

/// Exact re-rank of each query's shortlist (`positions[offsets[b]..offsets[b+1]]`, item
/// positions) against `embeddings`, ranked by (score, `ids[pos]`); returned ids are positions.
#[allow(clippy::too_many_arguments)]
pub fn rerank(
    be: &dyn Backend,
    queries: &Matrix,
    embeddings: &Embeddings,
    ids: &[i64],
    metric: Metric,
    offsets: &[usize],
    positions: &[u32],
    k: usize,
) -> Result<TopK> {
    check_k_rows(queries.rows(), k)?;
    check_input(queries, embeddings.cols(), "queries")?;
    let n = embeddings.rows();
    if ids.len() != n {
        return Err(Error::shape(format!(
            "{} ids for {n} embeddings",
            ids.len()
        )));
    }
    check_offsets(offsets, queries.rows(), positions.len(), "shortlist")?;
    if let Some(&p) = positions.iter().find(|&&p| p as usize >= n) {
        return Err(Error::shape(format!(
            "shortlist position {p} of an index of {n} items"
        )));
    }
    check_distinct(offsets, positions, n, "shortlist positions")?;
    check_rerank_range(queries, embeddings, metric)?;
    be.rerank(queries, embeddings, ids, metric, offsets, positions, k)
}

/// Errors when exact scores of `queries` (finite) against `embeddings` could overflow.
pub fn check_rerank_range(queries: &Matrix, embeddings: &Embeddings, metric: Metric) -> Result<()> {
    range::check_exact_scores(
        queries.cols(),
        queries.max_abs("queries")?,
        embeddings.max_abs()?,
        metric,
        "the stored embeddings",
    )
}

/// Row-wise top-k of a finite score matrix.
pub fn topk(be: &dyn Backend, scores: &Matrix, k: usize) -> Result<TopK> {
    check_k_rows(scores.rows(), k)?;
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
    check_k_rows(offsets.len().saturating_sub(1), k)?;
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
    check_k_rows(queries.rows(), k)?;
    if items.cols() == 0 {
        return Err(Error::shape("items have dimension d = 0"));
    }
    check_input(items, items.cols(), "items")?;
    check_input(queries, items.cols(), "queries")?;
    range::check_exact_scores(
        items.cols(),
        queries.max_abs("queries")?,
        items.max_abs("items")?,
        metric,
        "items",
    )?;
    be.exact_topk(queries, items, metric, k)
}
