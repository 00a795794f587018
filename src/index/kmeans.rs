//! Residual k-means (DESIGN §6 initialisation, and the default codebooks of `build`):
//! per level, k-means++ seeding then Lloyd iterations on the residuals of the previous levels.

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;

use crate::backend::{AssignOptions, Backend};
use crate::error::{Error, Result};
use crate::index::codebooks::{Codebook, Codebooks, MAX_CODES, MAX_LEVELS};
use crate::matrix::{dist_sq, Matrix};
use crate::ops;
use crate::progress::Progress;

/// Parameters of residual k-means.
#[derive(Clone, Debug, PartialEq)]
pub struct KMeansOptions {
    /// Levels `L` (1..=8).
    pub levels: usize,
    /// Codewords per level `K` (1..=65536).
    pub codes: usize,
    /// Lloyd iterations per level.
    pub iters: usize,
    /// At most this many rows (a seeded sample) train the codebooks; all rows when larger.
    pub max_train: usize,
    /// Seed of every random choice.
    pub seed: u64,
}

impl Default for KMeansOptions {
    fn default() -> Self {
        KMeansOptions {
            levels: 2,
            codes: 256,
            iters: 10,
            max_train: 100_000,
            seed: 20240601,
        }
    }
}

/// k-means++ seeding: the first centre uniformly, each next one with probability ∝ D².
fn seed_plus_plus(x: &Matrix, k: usize, rng: &mut Xoshiro256PlusPlus) -> Matrix {
    let n = x.rows();
    let mut centres = Matrix::zeros(k, x.cols());
    let first = rng.random_range(0..n);
    centres.row_mut(0).copy_from_slice(x.row(first));
    let mut d2: Vec<f32> = (0..n)
        .into_par_iter()
        .map(|i| dist_sq(x.row(i), centres.row(0)))
        .collect();
    for c in 1..k {
        let total: f64 = d2.iter().map(|&v| v as f64).sum();
        let pick = if total > 0.0 {
            let mut t = rng.random::<f64>() * total;
            let mut pick = n - 1;
            for (i, &v) in d2.iter().enumerate() {
                t -= v as f64;
                if t < 0.0 {
                    pick = i;
                    break;
                }
            }
            pick
        } else {
            rng.random_range(0..n)
        };
        centres.row_mut(c).copy_from_slice(x.row(pick));
        let centre = centres.row(c).to_vec();
        d2.par_iter_mut().enumerate().for_each(|(i, v)| {
            *v = v.min(dist_sq(x.row(i), &centre));
        });
    }
    centres
}

/// Lloyd iterations from `centres`; an emptied cluster is re-seeded with the row farthest
/// from its centre. Returns the final centres.
fn lloyd(be: &dyn Backend, x: &Matrix, mut centres: Matrix, iters: usize) -> Result<Matrix> {
    let d = x.cols();
    let k = centres.rows();
    for _ in 0..iters {
        let cb = Codebook::new(centres.clone(), "k-means centres")?;
        let a = ops::assign(be, x, &cb, &AssignOptions::default())?;
        let mut sums = vec![0.0f64; k * d];
        let mut counts = vec![0usize; k];
        for (i, &c) in a.codes.iter().enumerate() {
            counts[c as usize] += 1;
            for (s, &v) in sums[c as usize * d..(c as usize + 1) * d]
                .iter_mut()
                .zip(x.row(i))
            {
                *s += v as f64;
            }
        }
        // Rows by decreasing distance to their centre, for re-seeding empty clusters.
        let mut far: Vec<(f32, usize)> = (0..x.rows())
            .map(|i| (dist_sq(x.row(i), cb.word(a.codes[i] as usize)), i))
            .collect();
        far.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut far = far.into_iter();
        for c in 0..k {
            if counts[c] > 0 {
                for (o, &s) in centres.row_mut(c).iter_mut().zip(&sums[c * d..(c + 1) * d]) {
                    *o = (s / counts[c] as f64) as f32;
                }
            } else if let Some((_, i)) = far.next() {
                centres.row_mut(c).copy_from_slice(x.row(i));
            }
        }
    }
    Ok(centres)
}

/// Trains `opts.levels` codebooks of `opts.codes` words on `items` (`N × d`, finite) by
/// residual k-means. `K` larger than the training rows is an error.
pub fn residual_kmeans(
    be: &dyn Backend,
    items: &Matrix,
    opts: &KMeansOptions,
    progress: &Progress,
) -> Result<Codebooks> {
    if opts.levels == 0 || opts.levels > MAX_LEVELS {
        return Err(Error::param(format!(
            "levels = {} must be in 1..={MAX_LEVELS}",
            opts.levels
        )));
    }
    if opts.codes == 0 || opts.codes > MAX_CODES {
        return Err(Error::param(format!(
            "codes per level K = {} must be in 1..={MAX_CODES}",
            opts.codes
        )));
    }
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(opts.seed);
    let mut x = if items.rows() > opts.max_train {
        let mut rows: Vec<usize> = (0..items.rows()).collect();
        for i in 0..opts.max_train {
            let j = rng.random_range(i..rows.len());
            rows.swap(i, j);
        }
        let mut sample = Matrix::zeros(opts.max_train, items.cols());
        for (o, &r) in rows[..opts.max_train].iter().enumerate() {
            sample.row_mut(o).copy_from_slice(items.row(r));
        }
        sample
    } else {
        items.clone()
    };
    if opts.codes > x.rows() {
        return Err(Error::param(format!(
            "K = {} codewords but only {} training rows",
            opts.codes,
            x.rows()
        )));
    }
    let mut levels = Vec::with_capacity(opts.levels);
    for l in 0..opts.levels {
        progress.message(format!("k-means level {}/{}", l + 1, opts.levels));
        let centres = seed_plus_plus(&x, opts.codes, &mut rng);
        let centres = lloyd(be, &x, centres, opts.iters)?;
        let cb = Codebook::new(centres, &format!("codebook.{l}"))?;
        let a = ops::assign(
            be,
            &x,
            &cb,
            &AssignOptions {
                residual: true,
                ..AssignOptions::default()
            },
        )?;
        x = a
            .residual
            .ok_or_else(|| Error::Device("backend returned no residual".into()))?;
        levels.push(cb);
        progress.inc(1);
    }
    Codebooks::new(levels)
}
