//! One level of code assignment (DESIGN §1): logits `2<r, C[k]> - ||C[k]||²`, hard code by
//! argmax (ties → lowest k), top-m, soft weights `softmax(α·logit)`, hard residual.

use rayon::prelude::*;

use crate::backend::{AssignOptions, Assignment};
use crate::index::Codebook;
use crate::matrix::{dot, Matrix};
use crate::topk::TopKHeap;

/// Logits of one row against every codeword.
pub(crate) fn logits(r: &[f32], cb: &Codebook) -> Vec<f32> {
    (0..cb.len())
        .map(|k| 2.0 * dot(r, cb.word(k)) - cb.norms()[k])
        .collect()
}

/// `softmax(α·z)` in f64, max-subtracted.
pub(crate) fn softmax(z: &[f32], alpha: f32) -> Vec<f32> {
    let a = alpha as f64;
    let m = z
        .iter()
        .fold(f64::NEG_INFINITY, |m, &v| m.max(a * v as f64));
    let e: Vec<f64> = z.iter().map(|&v| (a * v as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|&v| (v / s) as f32).collect()
}

/// One row's best (logit, code) pairs and, when asked for, its soft weights.
type RowAssignment = (Vec<(f32, i64)>, Option<Vec<f32>>);

pub(crate) fn assign(r: &Matrix, cb: &Codebook, o: &AssignOptions) -> Assignment {
    let n = r.rows();
    let kk = cb.len();
    let rows: Vec<RowAssignment> = (0..n)
        .into_par_iter()
        .map(|i| {
            let z = logits(r.row(i), cb);
            let mut heap = TopKHeap::new(o.top_m);
            for (k, &v) in z.iter().enumerate() {
                heap.push(v, k as i64, k as i64);
            }
            (heap.into_sorted(), o.alpha.map(|a| softmax(&z, a)))
        })
        .collect();
    let mut codes = Vec::with_capacity(n * o.top_m);
    let mut logit = Vec::with_capacity(n * o.top_m);
    let mut soft = Vec::with_capacity(if o.alpha.is_some() { n * kk } else { 0 });
    for (best, s) in &rows {
        for &(v, k) in best {
            codes.push(k as u32);
            logit.push(v);
        }
        if let Some(s) = s {
            soft.extend_from_slice(s);
        }
    }
    let residual = o.residual.then(|| {
        let mut out = r.clone();
        for i in 0..n {
            let w = cb.word(codes[i * o.top_m] as usize);
            for (x, &c) in out.row_mut(i).iter_mut().zip(w) {
                *x -= c;
            }
        }
        out
    });
    Assignment {
        top_m: o.top_m,
        codes,
        logits: logit,
        soft: o
            .alpha
            .map(|_| Matrix::new(n, kk, soft).expect("n x K soft weights")),
        residual,
    }
}
