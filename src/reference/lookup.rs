//! Lookup tables `LUT_l[k] = <q, C_l[k]>` and the fused residual lookup + top-k (DESIGN §3).

use rayon::prelude::*;

use crate::candidates::Candidates;
use crate::index::{Codebooks, Index};
use crate::matrix::{dot, Matrix};
use crate::metric::Metric;
use crate::tables::QueryTables;
use crate::topk::{TopK, TopKHeap};

pub(crate) fn tables(q: &Matrix, cbs: &Codebooks, metric: Metric) -> QueryTables {
    let levels = cbs
        .iter()
        .map(|cb| {
            let kk = cb.len();
            let data: Vec<f32> = (0..q.rows())
                .into_par_iter()
                .flat_map_iter(|b| (0..kk).map(move |k| dot(q.row(b), cb.word(k))))
                .collect();
            Matrix::new(q.rows(), kk, data).expect("B x K table")
        })
        .collect();
    QueryTables {
        metric,
        qnorm: q.row_norms_sq(),
        levels,
    }
}

/// Score of item position `i` for query `b`: `Σ_l LUT_l[code_l]`, then the metric.
#[inline]
pub(crate) fn item_score(t: &QueryTables, ix: &Index, b: usize, i: usize) -> f32 {
    let ip: f32 = (0..ix.levels())
        .map(|l| t.get(b, l, ix.codes.get(l, i)))
        .sum();
    t.metric.score(ip, t.qnorm[b], ix.item_norms[i])
}

pub(crate) fn fused_topk(t: &QueryTables, ix: &Index, c: &Candidates, k: usize) -> TopK {
    let dep = &ix.tree.depths[c.depth - 1];
    let rows = (0..c.queries())
        .into_par_iter()
        .map(|b| {
            let mut heap = TopKHeap::new(k);
            for &j in c.nodes_of(b) {
                for i in dep.items(j as usize) {
                    heap.push(item_score(t, ix, b, i), ix.ids[i], i as i64);
                }
            }
            heap.into_sorted()
        })
        .collect();
    TopK::from_rows(k, rows)
}
