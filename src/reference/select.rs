//! Row-wise and segmented top-k (ties → lower id).

use rayon::prelude::*;

use crate::matrix::Matrix;
use crate::topk::{TopK, TopKHeap};

fn best(values: &[f32], k: usize) -> Vec<(f32, i64)> {
    let mut heap = TopKHeap::new(k);
    for (j, &v) in values.iter().enumerate() {
        heap.push(v, j as i64, j as i64);
    }
    heap.into_sorted()
}

pub(crate) fn topk(scores: &Matrix, k: usize) -> TopK {
    let rows = (0..scores.rows())
        .into_par_iter()
        .map(|r| best(scores.row(r), k))
        .collect();
    TopK::from_rows(k, rows)
}

pub(crate) fn segmented_topk(values: &[f32], offsets: &[usize], k: usize) -> TopK {
    let rows = offsets
        .par_windows(2)
        .map(|w| best(&values[w[0]..w[1]], k))
        .collect();
    TopK::from_rows(k, rows)
}
