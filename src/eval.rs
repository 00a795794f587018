//! Recall of approximate results against exact ground truth.

use crate::topk::{TopK, NO_ID};

/// Mean over queries of `|found[..k] ∩ truth[..k]| / k`. `truth` rows hold at least `k`
/// ids (`truth_k` per row, row-major); `found` must have `k` or more slots.
pub fn recall_at(found: &TopK, truth: &[i64], truth_k: usize, k: usize) -> f64 {
    if found.rows == 0 {
        return 0.0;
    }
    let total: f64 = (0..found.rows)
        .map(|b| {
            let want = &truth[b * truth_k..b * truth_k + k];
            let hit = found.row_ids(b)[..k]
                .iter()
                .filter(|&&id| id != NO_ID && want.contains(&id))
                .count();
            hit as f64 / k as f64
        })
        .sum();
    total / found.rows as f64
}
