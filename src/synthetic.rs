//! Seeded synthetic data: clustered Gaussian embeddings, for the demo, benches and tests.

use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::matrix::Matrix;

/// `n × d` points around `clusters` random centres (unit-variance centres, `spread` noise),
/// each row L2-normalised when `normalise`.
pub fn clustered(
    n: usize,
    d: usize,
    clusters: usize,
    spread: f32,
    normalise: bool,
    seed: u64,
) -> Matrix {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 1.0).expect("unit normal");
    let centres: Vec<f32> = (0..clusters.max(1) * d)
        .map(|_| normal.sample(&mut rng))
        .collect();
    let mut m = Matrix::zeros(n, d);
    for i in 0..n {
        let c = rng.random_range(0..clusters.max(1));
        let row = m.row_mut(i);
        for (j, v) in row.iter_mut().enumerate() {
            *v = centres[c * d + j] + spread * normal.sample(&mut rng);
        }
        if normalise {
            let norm = row
                .iter()
                .map(|v| v * v)
                .sum::<f32>()
                .sqrt()
                .max(f32::MIN_POSITIVE);
            row.iter_mut().for_each(|v| *v /= norm);
        }
    }
    m
}
