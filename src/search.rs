//! The search pipeline of DESIGN §3: lookup tables → beam traversal → fused residual lookup
//! with top-k → optional exact re-rank → the caller's ids and scores, best first.

use crate::backend::Backend;
use crate::candidates::Candidates;
use crate::error::{Error, Result};
use crate::index::Index;
use crate::matrix::Matrix;
use crate::ops;
use crate::range;
use crate::tables::QueryTables;
use crate::topk::{TopK, NO_ID};

/// Whether to re-score the approximate shortlist against stored embeddings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Rerank {
    /// Return the lookup-table scores.
    #[default]
    None,
    /// Re-score the best `rerank_k` candidates exactly (`None`: all candidates).
    Exact {
        /// Shortlist length per query; at least `k`.
        rerank_k: Option<usize>,
    },
}

/// Search parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchParams {
    /// Results per query.
    pub k: usize,
    /// Beam width per depth; the search goes `beams.len()` levels deep.
    pub beams: Vec<usize>,
    /// Exact re-rank.
    pub rerank: Rerank,
}

/// Results of a batch search.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchOutput {
    /// `B × k` caller ids and scores, best first; `-1` / `-inf` where fewer than `k`
    /// candidates were found.
    pub topk: TopK,
    /// Candidate items scanned per query (items under its kept nodes).
    pub candidates: Vec<usize>,
}

/// Errors unless a caller's level-1 scores are finite, `B × n1` (a score per query and
/// depth-1 node).
fn check_level1(index: &Index, queries: usize, scores: &Matrix) -> Result<()> {
    let nodes = index.tree.depths[0].len();
    if scores.rows() != queries || scores.cols() != nodes {
        return Err(Error::shape(format!(
            "level-1 scores are {} x {}, expected {queries} queries x {nodes} depth-1 nodes",
            scores.rows(),
            scores.cols(),
        )));
    }
    scores.check_finite("level-1 scores")
}

/// Replaces the level-1 lookup table with a caller's scores of every depth-1 node
/// (`B × n1`, checked by [`check_level1`]): the score of depth-1 node `j` stands in for
/// `LUT_1[code_j]` in every sum.
fn fold_level1(tables: &mut QueryTables, index: &Index, scores: &Matrix) {
    let d1 = &index.tree.depths[0];
    let lut = &mut tables.levels[0];
    let kk = lut.cols();
    for b in 0..scores.rows() {
        let row = &mut lut.data_mut()[b * kk..(b + 1) * kk];
        row.fill(0.0);
        for (j, &s) in scores.row(b).iter().enumerate() {
            row[d1.code[j] as usize] = s;
        }
    }
}

/// Every candidate item position of every query, in CSR form (`B + 1` offsets).
fn candidate_positions(index: &Index, cand: &Candidates) -> (Vec<usize>, Vec<u32>) {
    let dep = &index.tree.depths[cand.depth - 1];
    let mut offsets = vec![0];
    let mut positions = Vec::new();
    for b in 0..cand.queries() {
        for &j in cand.nodes_of(b) {
            positions.extend(dep.items(j as usize).map(|p| p as u32));
        }
        offsets.push(positions.len());
    }
    (offsets, positions)
}

/// Candidates per query the fused lookup keeps: `k` without re-rank, `rerank_k` with it,
/// `None` when every candidate is re-ranked. Errors when re-ranking is asked of an index
/// without stored embeddings, or `rerank_k < k`.
pub(crate) fn shortlist(index: &Index, params: &SearchParams) -> Result<Option<usize>> {
    match params.rerank {
        Rerank::None => Ok(Some(params.k)),
        Rerank::Exact { .. } if index.embeddings.is_none() => Err(Error::param(
            "rerank = exact needs stored embeddings; build with --keep-embeddings f16|f32",
        )),
        Rerank::Exact { rerank_k: Some(r) } if r < params.k => Err(Error::param(format!(
            "rerank-k = {r} is smaller than k = {}",
            params.k
        ))),
        Rerank::Exact { rerank_k } => Ok(rerank_k),
    }
}

/// Searches `queries` (`B × d`, finite) in `index`. `level1` optionally replaces the level-1
/// lookup table with the caller's `B × (#depth-1 nodes)` scores. Beam widths above a depth's
/// node count keep every node.
pub fn search(
    be: &dyn Backend,
    index: &Index,
    queries: &Matrix,
    level1: Option<&Matrix>,
    params: &SearchParams,
) -> Result<SearchOutput> {
    ops::check_k_rows(queries.rows(), params.k)?;
    ops::check_beams(&params.beams, index.levels())?;
    ops::check_input(queries, index.dim(), "queries")?;
    let shortlist = shortlist(index, params)?;
    if let Some(s) = shortlist {
        // The fused lookup's output is B × shortlist before the re-rank cuts it to k.
        crate::topk::check_result_size(queries.rows(), s, "rerank-k")?;
    }
    if let Some(s) = level1 {
        check_level1(index, queries.rows(), s)?;
    }
    range::check_query_scores(queries, &index.codebooks, index.metric, level1)?;
    if let (Rerank::Exact { .. }, Some(e)) = (params.rerank, &index.embeddings) {
        ops::check_rerank_range(queries, e, index.metric)?;
    }
    // Everything below is built from validated inputs, so the backends are called directly.
    let params = SearchParams {
        beams: ops::clamp_beams(&params.beams, &index.tree),
        ..params.clone()
    };
    if level1.is_none() {
        if let Some((topk, candidates)) = be.search_on_device(index, queries, &params)? {
            return Ok(SearchOutput { topk, candidates });
        }
    }
    let mut tables = be.lookup_tables(queries, &index.codebooks, index.metric)?;
    if let Some(s) = level1 {
        fold_level1(&mut tables, index, s);
    }
    let cand = be.traverse(&tables, &index.tree, &params.beams)?;
    let candidates: Vec<usize> = (0..queries.rows())
        .map(|b| cand.items_of(b, &index.tree))
        .collect();
    let top = match (params.rerank, &index.embeddings) {
        (Rerank::Exact { .. }, Some(e)) => {
            // The shortlist: every candidate (rerank_k unset), or the best rerank_k by the
            // lookup-table scores (a backend's refusal of that length names rerank-k, the
            // caller's parameter, not the fused top-k's k).
            let (offsets, positions) = match shortlist {
                None => candidate_positions(index, &cand),
                Some(s) => be
                    .fused_topk(&tables, index, &cand, s)
                    .map_err(|e| match e {
                        Error::Param(m) => Error::param(format!("rerank-k = {s}: {m}")),
                        e => e,
                    })?
                    .to_csr(),
            };
            be.rerank(
                queries,
                e,
                &index.ids,
                index.metric,
                &offsets,
                &positions,
                params.k,
            )?
        }
        _ => be.fused_topk(&tables, index, &cand, params.k)?,
    };
    Ok(SearchOutput {
        topk: caller_ids(top, index),
        candidates,
    })
}

/// `top` with its item positions replaced by the caller's ids (empty slots stay `-1`).
fn caller_ids(mut top: TopK, index: &Index) -> TopK {
    for id in top.ids.iter_mut() {
        if *id != NO_ID {
            *id = index.ids[*id as usize];
        }
    }
    top
}
