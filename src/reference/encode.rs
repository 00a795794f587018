//! Greedy and beam encoding over all levels (DESIGN §1): keep the `E` best partial code paths
//! by total squared reconstruction error; ties → the earlier parent, then the lower code.

use rayon::prelude::*;

use crate::backend::Encoding;
use crate::index::Codebooks;
use crate::matrix::{dist_sq, Matrix};

/// A partial code path: its codes, its residual and its squared error `||residual||²`.
struct Path {
    codes: Vec<u32>,
    residual: Vec<f32>,
    error: f32,
}

fn encode_one(x: &[f32], cbs: &Codebooks, beam: usize) -> (Vec<u32>, f32) {
    let mut paths = vec![Path {
        codes: Vec::new(),
        residual: x.to_vec(),
        error: 0.0,
    }];
    for cb in cbs.iter() {
        let mut cand: Vec<(f32, usize, u32)> = Vec::with_capacity(paths.len() * cb.len());
        for (p, path) in paths.iter().enumerate() {
            for k in 0..cb.len() {
                cand.push((dist_sq(&path.residual, cb.word(k)), p, k as u32));
            }
        }
        cand.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        cand.truncate(beam);
        paths = cand
            .into_iter()
            .map(|(error, p, k)| {
                let parent = &paths[p];
                let mut codes = parent.codes.clone();
                codes.push(k);
                let residual = parent
                    .residual
                    .iter()
                    .zip(cb.word(k as usize))
                    .map(|(&r, &c)| r - c)
                    .collect();
                Path {
                    codes,
                    residual,
                    error,
                }
            })
            .collect();
    }
    let best = &paths[0];
    (best.codes.clone(), best.error)
}

pub(crate) fn encode(items: &Matrix, cbs: &Codebooks, beam: usize) -> Encoding {
    let rows: Vec<(Vec<u32>, f32)> = (0..items.rows())
        .into_par_iter()
        .map(|i| encode_one(items.row(i), cbs, beam))
        .collect();
    let mut codes = Vec::with_capacity(items.rows() * cbs.levels());
    let mut error = Vec::with_capacity(items.rows());
    for (c, e) in rows {
        codes.extend(c);
        error.push(e);
    }
    Encoding {
        levels: cbs.levels(),
        codes,
        error,
    }
}
