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

/// `rows × cols` standard-normal entries times `scale`, generated in parallel chunks of 4096
/// rows (chunk `c` seeded with `seed + c`): fast enough for the bench's multi-GB inputs.
pub fn normal_matrix(rows: usize, cols: usize, scale: f32, seed: u64) -> Matrix {
    use rayon::prelude::*;
    const CHUNK_ROWS: usize = 4096;
    let mut data = vec![0f32; rows * cols];
    let normal = Normal::new(0.0f32, 1.0).expect("unit normal");
    data.par_chunks_mut((CHUNK_ROWS * cols).max(1))
        .enumerate()
        .for_each(|(c, chunk)| {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed.wrapping_add(c as u64));
            chunk
                .iter_mut()
                .for_each(|v| *v = scale * normal.sample(&mut rng));
        });
    Matrix::new(rows, cols, data).expect("rows × cols values")
}

/// A seeded **random-tree** index for benchmarks, built without k-means: codebook level `l`
/// has `sizes[l]` standard-normal codewords scaled by `1/(l+1)`; every item's code path is
/// uniformly random (sorted into code order); caller ids are a random permutation of
/// `0..n`; item norms are the norms of the reconstructions; each node's representative is
/// its first item. No embeddings are kept. `sizes` has 1 to 4 levels of at most 65536 codes.
pub fn random_tree_index(
    n: usize,
    d: usize,
    sizes: &[usize],
    metric: crate::metric::Metric,
    seed: u64,
) -> crate::Result<crate::index::Index> {
    use crate::index::{Codebooks, Codes, Depth, Index, Tree};
    use rayon::prelude::*;
    let levels = sizes.len();
    if n == 0 || n > u32::MAX as usize || !(1..=4).contains(&levels) {
        return Err(crate::Error::param(format!(
            "random tree index: {n} items over {levels} levels"
        )));
    }
    if let Some(&k) = sizes.iter().find(|&&k| k == 0 || k > 1 << 16) {
        return Err(crate::Error::param(format!(
            "random tree index: {k} codes per level (1..=65536)"
        )));
    }
    let cbs = Codebooks::from_matrices(
        sizes
            .iter()
            .enumerate()
            .map(|(l, &k)| normal_matrix(k, d, 1.0 / (l + 1) as f32, seed ^ (l as u64 + 1)))
            .collect(),
    )?;
    // Code paths packed 16 bits per level (level 0 highest), so sorting the keys sorts the
    // paths lexicographically.
    const CHUNK: usize = 1 << 16;
    let mut keys = vec![0u64; n];
    keys.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            let mut rng =
                Xoshiro256PlusPlus::seed_from_u64(seed.wrapping_mul(31).wrapping_add(c as u64));
            for key in chunk.iter_mut() {
                *key = sizes
                    .iter()
                    .fold(0u64, |acc, &k| (acc << 16) | rng.random_range(0..k as u64));
            }
        });
    keys.par_sort_unstable();
    let code_of = |key: u64, l: usize| ((key >> (16 * (levels - 1 - l))) & 0xffff) as u32;
    let item_major: Vec<u32> = keys
        .par_iter()
        .flat_map_iter(|&key| (0..levels).map(move |l| code_of(key, l)))
        .collect();
    let codes = Codes::from_item_major(&item_major, sizes)?;
    let item_norms: Vec<f32> = item_major
        .par_chunks(levels)
        .map(|path| crate::matrix::norm_sq(&cbs.reconstruct(path)))
        .collect();
    let mut depths: Vec<Depth> = Vec::with_capacity(levels);
    for l in 0..levels {
        let shift = 16 * (levels - 1 - l);
        let mut item_start = vec![0u32];
        item_start.extend(
            (1..n)
                .filter(|&i| keys[i] >> shift != keys[i - 1] >> shift)
                .map(|i| i as u32),
        );
        item_start.push(n as u32);
        let nodes = item_start.len() - 1;
        let first: Vec<usize> = item_start[..nodes].iter().map(|&s| s as usize).collect();
        let centroid_norm = first
            .par_iter()
            .map(|&i| {
                crate::matrix::norm_sq(
                    &cbs.reconstruct(&item_major[i * levels..i * levels + l + 1]),
                )
            })
            .collect();
        depths.push(Depth {
            code: first.iter().map(|&i| code_of(keys[i], l)).collect(),
            child_start: Vec::new(),
            representative: item_start[..nodes].to_vec(),
            item_start,
            centroid_norm,
        });
    }
    for l in 0..levels - 1 {
        let (upper, lower) = depths.split_at_mut(l + 1);
        let (parent, child) = (&mut upper[l], &lower[0]);
        let mut child_start = Vec::with_capacity(parent.len() + 1);
        let mut c = 0usize;
        for j in 0..parent.len() {
            child_start.push(c as u32);
            while c < child.len() && child.item_start[c] < parent.item_start[j + 1] {
                c += 1;
            }
        }
        child_start.push(c as u32);
        parent.child_start = child_start;
    }
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x1d5);
    let mut ids: Vec<i64> = (0..n as i64).collect();
    for i in (1..n).rev() {
        ids.swap(i, rng.random_range(0..=i));
    }
    let index = Index {
        metric,
        codebooks: cbs,
        codes,
        ids,
        item_norms,
        tree: Tree { depths },
        embeddings: None,
    };
    index.validate()?;
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Tree;
    use crate::metric::Metric;

    /// The random tree has the structure `Tree::build` derives from the same codes.
    #[test]
    fn random_tree_matches_tree_build() {
        let ix = random_tree_index(3000, 8, &[7, 5, 3], Metric::Ip, 9).expect("index");
        let cbs = &ix.codebooks;
        let t = Tree::build(&ix.codes, cbs, &ix.ids, &|i| {
            cbs.reconstruct(&ix.codes.path(i))
        })
        .expect("tree");
        for (a, b) in ix.tree.depths.iter().zip(&t.depths) {
            assert_eq!(a.code, b.code);
            assert_eq!(a.item_start, b.item_start);
            assert_eq!(a.child_start, b.child_start);
            for (x, y) in a.centroid_norm.iter().zip(&b.centroid_norm) {
                assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()));
            }
        }
        let mut ids = ix.ids.clone();
        ids.sort_unstable();
        assert_eq!(ids, (0..3000).collect::<Vec<i64>>());
    }
}
