//! Bounds on score magnitudes. Finite inputs can still be large enough that a score
//! overflows `f32` (a table entry of ±inf, a NaN from inf − inf): no selector orders such
//! scores and no kernel expects them (DESIGN §4 keeps non-finite values away from kernels),
//! so every operation that computes scores first bounds them from its inputs' magnitudes and
//! rejects, with [`Error::Range`], inputs whose bound exceeds [`SCORE_LIMIT`]. The bounds are
//! Cauchy–Schwarz bounds (`|<q, x>| ≤ ||q||·||x||`), so only inputs within a few orders of
//! magnitude of `f32`'s range are refused. Code assignment needs no bound: its keys may
//! overflow to ±inf (never NaN: codeword norms are finite, [`crate::index::Codebook::new`]),
//! which the kernels handle exactly as the reference does (`greedy_is_exact`'s "overflowing
//! norms" and "overflowing logits").

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::index::{Codebook, Codebooks};
use crate::matrix::Matrix;
use crate::metric::Metric;
use crate::tables::QueryTables;

/// The largest score magnitude an operation may reach: a quarter of `f32`'s range, room for
/// the rounding of partial sums and the few additions after them.
pub const SCORE_LIMIT: f64 = f32::MAX as f64 / 4.0;

/// Errors unless `bound ≤ SCORE_LIMIT`; `what` names the query or tensors.
fn within(bound: f64, what: impl FnOnce() -> String) -> Result<()> {
    if bound <= SCORE_LIMIT {
        return Ok(());
    }
    Err(Error::Range(format!(
        "{}: scores could reach {bound:.3e}, beyond {SCORE_LIMIT:.3e} (a quarter of f32's \
         range); scale the inputs down",
        what()
    )))
}

/// A score bound from the bound `ip` on the inner-product part: itself under `ip`; under `l2`
/// `||q||² + 2·ip + xn`, `qn2` bounding `||q||²` and `xn` the node or item norm.
fn score_bound(metric: Metric, ip: f64, qn2: f64, xn: f64) -> f64 {
    match metric {
        Metric::Ip => ip,
        Metric::L2 => qn2 + 2.0 * ip + xn,
    }
}

/// `||x||²` in `f64` (no overflow for finite `f32` values), eight independent sums so that
/// the loop vectorises.
fn norm_sq_f64(x: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = x.chunks_exact(8);
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|&v| f64::from(v).powi(2))
        .sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f64::from(v) * f64::from(v);
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// Upper bounds of each level's codeword norms (the stored squared norms are `f64` sums
/// rounded to `f32`: 1e-6 above their square root is above the true norm).
fn codeword_norms(codebooks: &Codebooks) -> Vec<f64> {
    codebooks
        .iter()
        .map(|cb| {
            let largest = cb.norms().iter().fold(0.0f32, |m, &v| m.max(v));
            f64::from(largest).sqrt() * (1.0 + 1e-6)
        })
        .collect()
}

/// Scores of lookup tables, a traversal and the fused lookup for `queries` (`B × d`, finite)
/// over `codebooks`: `|LUT_l[k]| ≤ ||q||·c_l` (`c_l` the level's largest codeword norm), a
/// path's inner product `≤ ||q||·Σ c_l` (with a caller's level-1 scores `s`, `max |s_b|`
/// replaces `||q||·c_1`), and under `l2` a centroid's or reconstruction's norm `≤ (Σ c_l)²`.
pub fn check_query_scores(
    queries: &Matrix,
    codebooks: &Codebooks,
    metric: Metric,
    level1: Option<&Matrix>,
) -> Result<()> {
    let c = codeword_norms(codebooks);
    let total: f64 = c.iter().sum();
    let deeper: f64 = c.iter().skip(1).sum();
    let bound = |b: usize| {
        let qn2 = norm_sq_f64(queries.row(b));
        let qn = qn2.sqrt();
        let first = level1.map_or(qn * c.first().copied().unwrap_or(0.0), |s| {
            s.row(b)
                .iter()
                .fold(0.0f64, |m, &v| m.max(f64::from(v).abs()))
        });
        score_bound(metric, first + qn * deeper, qn2, total * total)
    };
    match (0..queries.rows())
        .into_par_iter()
        .find_first(|&b| bound(b) > SCORE_LIMIT)
    {
        Some(b) => within(bound(b), || format!("query {b}")),
        None => Ok(()),
    }
}

/// A bound on `||x̂||²` of any reconstruction from `codebooks` (an item's or a node
/// centroid's: a sum of one codeword per level, a prefix for a node): `(Σ_l c_l)²`, `c_l` the
/// level's largest codeword norm. `O(Σ K_l)`, where the stored norms are `O(N)`.
pub fn reconstruction_norm_bound(codebooks: &Codebooks) -> f64 {
    let total: f64 = codeword_norms(codebooks).iter().sum();
    total * total
}

/// Scores summed from given tables (a traversal or fused lookup on a caller's tables): per
/// query `Σ_l max_k |LUT_l[b, k]|`, and under `l2` the stored `||q||²` and `norm`, a bound on
/// the node or item norms the scores add. The tables must be finite.
pub fn check_table_scores(tables: &QueryTables, norm: f64) -> Result<()> {
    for (l, m) in tables.levels.iter().enumerate() {
        m.check_finite(&format!("lookup table of level {}", l + 1))?;
    }
    crate::matrix::check_finite(&tables.qnorm, 1, "query norms")?;
    let bound = |b: usize| {
        let ip: f64 = tables
            .levels
            .iter()
            .map(|m| {
                m.row(b)
                    .iter()
                    .fold(0.0f64, |a, &v| a.max(f64::from(v).abs()))
            })
            .sum();
        score_bound(tables.metric, ip, f64::from(tables.qnorm[b]), norm)
    };
    match (0..tables.queries())
        .into_par_iter()
        .find_first(|&b| bound(b) > SCORE_LIMIT)
    {
        Some(b) => within(bound(b), || format!("query {b}")),
        None => Ok(()),
    }
}

/// Soft weights `softmax_k(α·logit_k)` of `rows` (`n × d`, finite) over `codebook`, with
/// `logit_k = 2<r, C[k]> − ||C[k]||²` (DESIGN §1): `α·|logit_k| ≤ α·(2·||r||·c + c²)`, `c` the
/// largest codeword norm. Beyond [`SCORE_LIMIT`] the scaled logits could overflow to ±inf
/// and the softmax meet `inf − inf` (NaN weights); such a row is an error naming it. (Hard
/// codes need no bound: their keys may overflow, never to NaN.)
pub fn check_soft_logits(rows: &Matrix, codebook: &Codebook, alpha: f32) -> Result<()> {
    let largest = codebook.norms().iter().fold(0.0f32, |m, &v| m.max(v));
    let c = f64::from(largest).sqrt() * (1.0 + 1e-6);
    let bound = |i: usize| f64::from(alpha) * (2.0 * norm_sq_f64(rows.row(i)).sqrt() * c + c * c);
    match (0..rows.rows())
        .into_par_iter()
        .find_first(|&i| bound(i) > SCORE_LIMIT)
    {
        Some(i) => within(bound(i), || {
            format!("soft weights at alpha = {alpha:e}, residuals row {i}")
        }),
        None => Ok(()),
    }
}

/// Exact scores of vectors of dimension `d` with components of magnitude at most `mq`
/// (queries) and `mx` (items, named `items`): `|<q, x>| ≤ d·mq·mx`,
/// `||q - x||² ≤ d·(mq + mx)²`.
pub fn check_exact_scores(d: usize, mq: f32, mx: f32, metric: Metric, items: &str) -> Result<()> {
    let (d, mq, mx) = (d as f64, f64::from(mq), f64::from(mx));
    let bound = match metric {
        Metric::Ip => d * mq * mx,
        Metric::L2 => d * (mq + mx) * (mq + mx),
    };
    within(bound, || {
        format!("queries (largest |value| {mq:.3e}) against {items} (largest {mx:.3e})")
    })
}
