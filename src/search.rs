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

/// Item positions re-ranked per backend call when every candidate is re-ranked: the
/// queries go in consecutive chunks whose candidates together stay within this many (a
/// query with more is a chunk alone), so the host's position list (4 bytes each: 64 MiB)
/// and a backend's buffers for it are bounded by the chunk rather than the batch.
const RERANK_ALL_CHUNK: usize = 1 << 24;

/// Consecutive ranges of queries covering `0..counts.len()`, each as long as it can be with
/// its queries' `counts` summing to at most `cap` (a query whose count alone exceeds `cap`
/// is a range alone).
fn query_chunks(counts: &[usize], cap: usize) -> Vec<std::ops::Range<usize>> {
    let mut chunks = Vec::new();
    let mut first = 0;
    while first < counts.len() {
        let mut end = first + 1;
        let mut total = counts[first];
        while end < counts.len() && total.saturating_add(counts[end]) <= cap {
            total += counts[end];
            end += 1;
        }
        chunks.push(first..end);
        first = end;
    }
    chunks
}

/// Exact re-rank of every candidate of every query (`counts[b]` of them for query `b`, the
/// items under its kept nodes `cand`), `chunk` positions per backend call as
/// [`RERANK_ALL_CHUNK`] says; `B × k` item positions and scores.
#[allow(clippy::too_many_arguments)]
fn rerank_every_candidate(
    be: &dyn Backend,
    index: &Index,
    embeddings: &crate::index::Embeddings,
    queries: &Matrix,
    cand: &Candidates,
    counts: &[usize],
    k: usize,
    chunk: usize,
) -> Result<TopK> {
    let dep = &index.tree.depths[cand.depth - 1];
    let mut top = TopK::empty(0, k);
    for queries_in in query_chunks(counts, chunk) {
        let mut offsets = Vec::with_capacity(queries_in.len() + 1);
        offsets.push(0);
        let mut positions = Vec::with_capacity(counts[queries_in.clone()].iter().sum());
        for b in queries_in.clone() {
            for &j in cand.nodes_of(b) {
                positions.extend(dep.items(j as usize).map(|p| p as u32));
            }
            offsets.push(positions.len());
        }
        let part = be.rerank(
            &queries.slice_rows(queries_in),
            embeddings,
            &index.ids,
            index.metric,
            &offsets,
            &positions,
            k,
        )?;
        top.rows += part.rows;
        top.ids.extend(part.ids);
        top.scores.extend(part.scores);
    }
    Ok(top)
}

/// Candidates per query the fused lookup keeps: `k` without re-rank, `rerank_k` with it,
/// `None` when every candidate is re-ranked. Errors when re-ranking is asked of an index
/// without stored embeddings, or `rerank_k < k`.
pub(crate) fn shortlist(index: &Index, params: &SearchParams) -> Result<Option<usize>> {
    match params.rerank {
        Rerank::None => Ok(Some(params.k)),
        Rerank::Exact { .. } if index.embeddings.is_none() => Err(Error::param(
            "rerank = exact needs stored embeddings; build with --keep-embeddings f32, f16 or bf16",
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
    let top = match (params.rerank, &index.embeddings, shortlist) {
        (Rerank::Exact { .. }, Some(e), None) => rerank_every_candidate(
            be,
            index,
            e,
            queries,
            &cand,
            &candidates,
            params.k,
            RERANK_ALL_CHUNK,
        )?,
        (Rerank::Exact { .. }, Some(e), Some(s)) => {
            // The shortlist: the best rerank_k by the lookup-table scores (a backend's
            // refusal of that length names rerank-k, the caller's parameter, not the fused
            // top-k's k).
            let (offsets, positions) = be
                .fused_topk(&tables, index, &cand, s)
                .map_err(|e| match e {
                    Error::Param(m) => Error::param(format!("rerank-k = {s}: {m}")),
                    e => e,
                })?
                .to_csr();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Embeddings;
    use crate::metric::Metric;
    use crate::reference::Reference;
    use crate::synthetic::{normal_matrix, random_tree_index};

    /// Chunks are consecutive, cover every query, stay within the cap unless one query
    /// alone exceeds it, and are maximal (the next query would not fit).
    #[test]
    fn query_chunks_are_maximal_within_the_cap() {
        assert!(query_chunks(&[], 5).is_empty());
        assert_eq!(query_chunks(&[3, 2, 9, 0, 1, 4], 5), vec![0..2, 2..3, 3..6]);
        assert_eq!(query_chunks(&[0, 0, 0], 0), vec![0..3]);
        assert_eq!(query_chunks(&[7, 7], 1), vec![0..1, 1..2]);
        assert_eq!(query_chunks(&[4, 1, 0], 4), vec![0..1, 1..3]);
    }

    /// Re-ranking every candidate in chunks of any size (one query per call, a few, a chunk
    /// smaller than one query's list, the whole batch) gives the whole batch's answer, and
    /// so does `search` (one chunk here); an empty batch gives no rows.
    #[test]
    fn rerank_of_every_candidate_is_the_same_in_any_chunks() {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        eprintln!("rerank chunks: seed = {seed}");
        for metric in [Metric::Ip, Metric::L2] {
            let mut index = random_tree_index(700, 9, &[5, 4], metric, seed).expect("index");
            index.embeddings = Some(Embeddings::F32(normal_matrix(700, 9, 1.0, seed ^ 1)));
            let queries = normal_matrix(11, 9, 1.0, seed ^ 2);
            let params = SearchParams {
                k: 13,
                beams: vec![2, 3],
                rerank: Rerank::Exact { rerank_k: None },
            };
            let tables = Reference
                .lookup_tables(&queries, &index.codebooks, metric)
                .expect("tables");
            let cand = Reference
                .traverse(&tables, &index.tree, &params.beams)
                .expect("traversal");
            let counts: Vec<usize> = (0..11).map(|b| cand.items_of(b, &index.tree)).collect();
            let e = index.embeddings.as_ref().expect("embeddings");
            let run = |chunk: usize| {
                rerank_every_candidate(&Reference, &index, e, &queries, &cand, &counts, 13, chunk)
                    .expect("re-rank")
            };
            let whole = run(usize::MAX);
            assert_eq!(whole.rows, 11);
            for chunk in [1, counts[0] / 2, counts[0] + counts[1], 3 * counts[0]] {
                assert_eq!(run(chunk), whole, "{metric:?}, chunks of {chunk}");
            }
            let out = search(&Reference, &index, &queries, None, &params).expect("search");
            assert_eq!(out.topk, caller_ids(whole, &index), "{metric:?}, search");
            let none = rerank_every_candidate(
                &Reference,
                &index,
                e,
                &queries.slice_rows(0..0),
                &Candidates {
                    depth: 2,
                    offsets: vec![0],
                    nodes: Vec::new(),
                },
                &[],
                13,
                1,
            )
            .expect("empty batch");
            assert_eq!((none.rows, none.ids.len()), (0, 0));
        }
    }
}
