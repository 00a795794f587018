//! Exact scoring: brute-force top-k over embeddings (the recall oracle) and the re-rank of
//! a shortlist against stored embeddings.

use rayon::prelude::*;

use crate::index::Embeddings;
use crate::matrix::{dist_sq, dot, Matrix};
use crate::metric::Metric;
use crate::topk::{TopK, TopKHeap};

#[inline]
fn exact_score(metric: Metric, q: &[f32], x: &[f32]) -> f32 {
    match metric {
        Metric::Ip => dot(q, x),
        Metric::L2 => -dist_sq(q, x),
    }
}

pub(crate) fn exact_topk(q: &Matrix, items: &Matrix, metric: Metric, k: usize) -> TopK {
    let rows = (0..q.rows())
        .into_par_iter()
        .map(|b| {
            let mut heap = TopKHeap::new(k);
            for i in 0..items.rows() {
                heap.push(
                    exact_score(metric, q.row(b), items.row(i)),
                    i as i64,
                    i as i64,
                );
            }
            heap.into_sorted()
        })
        .collect();
    TopK::from_rows(k, rows)
}

pub(crate) fn rerank(
    q: &Matrix,
    e: &Embeddings,
    ids: &[i64],
    metric: Metric,
    offsets: &[usize],
    positions: &[u32],
    k: usize,
) -> TopK {
    let rows = (0..q.rows())
        .into_par_iter()
        .map(|b| {
            let mut heap = TopKHeap::new(k);
            let mut widened = vec![0.0f32; e.cols()];
            for &p in &positions[offsets[b]..offsets[b + 1]] {
                let x = match e {
                    Embeddings::F32(m) => m.row(p as usize),
                    Embeddings::F16(_) | Embeddings::Bf16(_) => {
                        e.row_into(p as usize, &mut widened);
                        &widened
                    }
                };
                heap.push(exact_score(metric, q.row(b), x), ids[p as usize], p as i64);
            }
            heap.into_sorted()
        })
        .collect();
    TopK::from_rows(k, rows)
}
