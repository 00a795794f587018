//! Recall of approximate results against exact ground truth.

use crate::error::{Error, Result};
use crate::topk::{TopK, NO_ID};

/// Mean over queries of `|found[..k] ∩ truth[..k]| / |truth[..k]|`, where `|truth[..k]|`
/// counts the real ids of the row's first `k` truth slots: with fewer than `k` items the exact
/// top-k ends in empty slots (id `-1`), which are neither found nor missed. Rows without any
/// truth id are left out of the mean (0 when every row is). `truth` holds `truth_k ≥ k` ids per
/// row, row-major, for `found.rows` rows; `found` must have `k` or more slots. Other shapes
/// are an [`Error::Shape`].
pub fn recall_at(found: &TopK, truth: &[i64], truth_k: usize, k: usize) -> Result<f64> {
    if found.rows.checked_mul(truth_k) != Some(truth.len()) || k > truth_k || k > found.k {
        return Err(Error::shape(format!(
            "recall@{k}: {} truth ids for {} rows of {truth_k}, results of {} slots per row \
             (needs k ≤ {truth_k} and k ≤ {})",
            truth.len(),
            found.rows,
            found.k,
            found.k
        )));
    }
    let (sum, rows) = (0..found.rows)
        .filter_map(|b| {
            let want = &truth[b * truth_k..b * truth_k + k];
            let real = want.iter().filter(|&&id| id != NO_ID).count();
            let hit = found.row_ids(b)[..k]
                .iter()
                .filter(|&&id| id != NO_ID && want.contains(&id))
                .count();
            (real > 0).then(|| hit as f64 / real as f64)
        })
        .fold((0.0, 0usize), |(s, n), r| (s + r, n + 1));
    Ok(if rows == 0 { 0.0 } else { sum / rows as f64 })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Empty truth slots (fewer items than `k`) are neither found nor missed.
    #[test]
    fn empty_truth_slots_do_not_count() {
        let found = TopK::from_rows(3, vec![vec![(1.0, 7), (0.5, 4)], vec![(1.0, 9)]]);
        let truth = [7, 4, NO_ID, 9, 8, NO_ID];
        assert_eq!(recall_at(&found, &truth, 3, 3).unwrap(), (1.0 + 0.5) / 2.0);
        assert_eq!(recall_at(&found, &truth, 3, 1).unwrap(), 1.0);
        let none = [NO_ID; 6];
        assert_eq!(recall_at(&found, &none, 3, 3).unwrap(), 0.0);
    }

    /// Truth of the wrong length, or a cut-off beyond the truth's or the results' width.
    #[test]
    fn mismatched_shapes_are_errors() {
        let found = TopK::from_rows(2, vec![vec![(1.0, 7)], vec![(1.0, 9)]]);
        for (truth, truth_k, k) in [(&[7, 4, 9][..], 2, 1), (&[7, 4, 9, 8][..], 2, 3)] {
            let e = recall_at(&found, truth, truth_k, k).unwrap_err();
            assert!(matches!(e, Error::Shape(_)), "{e}");
        }
        let narrow = TopK::from_rows(1, vec![vec![(1.0, 7)]]);
        assert!(recall_at(&narrow, &[7, 4], 2, 2).is_err());
    }
}
