//! Shared test helpers: fresh seeded randomness (printed), random data and indexes, brute
//! force oracles, and the tolerance comparisons of DESIGN §4.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fmt::Debug;
use std::process::{Command, Output};

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use rqtree::backend::Backend;
use rqtree::index::build::{build, BuildOptions};
use rqtree::index::{Codebooks, EmbeddingKind, Index};
use rqtree::matrix::Matrix;
use rqtree::metric::Metric;
use rqtree::reference::Reference;
use rqtree::topk::TopK;

pub type TestRng = Xoshiro256PlusPlus;

/// A fresh seed per run (or `RQTREE_TEST_SEED`), printed so a failure can be replayed.
pub fn rng(test: &str) -> TestRng {
    let seed = std::env::var("RQTREE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("{test}: seed = {seed} (replay with RQTREE_TEST_SEED={seed})");
    Xoshiro256PlusPlus::seed_from_u64(seed)
}

/// `r × c` uniform values in `[-1, 1)`.
pub fn rand_matrix(rng: &mut TestRng, r: usize, c: usize) -> Matrix {
    Matrix::new(
        r,
        c,
        (0..r * c).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
    )
    .unwrap()
}

/// `r × c` values from `{-1, -0.5, 0, 0.5, 1}`: many exact ties.
pub fn tied_matrix(rng: &mut TestRng, r: usize, c: usize) -> Matrix {
    Matrix::new(
        r,
        c,
        (0..r * c)
            .map(|_| rng.random_range(-2i32..=2) as f32 * 0.5)
            .collect(),
    )
    .unwrap()
}

/// Random codebooks: `levels` levels of `k` words, later levels smaller in scale.
pub fn rand_codebooks(rng: &mut TestRng, levels: usize, k: usize, d: usize) -> Codebooks {
    Codebooks::from_matrices(
        (0..levels)
            .map(|l| {
                let mut m = rand_matrix(rng, k, d);
                let s = 0.5f32.powi(l as i32);
                m.data_mut().iter_mut().for_each(|v| *v *= s);
                m
            })
            .collect(),
    )
    .unwrap()
}

/// Items near reconstructions of random code paths (so nodes share prefixes), plus noise.
pub fn rand_items(rng: &mut TestRng, cbs: &Codebooks, n: usize, noise: f32) -> Matrix {
    let d = cbs.dim();
    let mut m = Matrix::zeros(n, d);
    for i in 0..n {
        let path: Vec<u32> = cbs
            .iter()
            .map(|c| rng.random_range(0..c.len() as u32))
            .collect();
        let x = cbs.reconstruct(&path);
        for (o, v) in m.row_mut(i).iter_mut().zip(x) {
            *o = v + noise * rng.random_range(-1.0f32..1.0);
        }
    }
    m
}

/// A random index of `n` items over fresh random codebooks; returns it, the items and the
/// ids given to the items' rows (shuffled distinct values).
pub fn rand_index(
    rng: &mut TestRng,
    n: usize,
    d: usize,
    levels: usize,
    k: usize,
    metric: Metric,
    keep: EmbeddingKind,
) -> (Index, Matrix, Vec<i64>) {
    let cbs = rand_codebooks(rng, levels, k, d);
    let items = rand_items(rng, &cbs, n, 0.05);
    let mut ids: Vec<i64> = (0..n as i64).map(|i| i * 7 + 3).collect();
    for i in (1..n).rev() {
        ids.swap(i, rng.random_range(0..=i));
    }
    let opts = BuildOptions {
        metric,
        keep_embeddings: keep,
        ..BuildOptions::default()
    };
    let index = build(&Reference, &items, Some(ids.clone()), Some(cbs), &opts).unwrap();
    (index, items, ids)
}

/// Brute-force top-k by full sort under the crate's order (higher score, then lower id).
pub fn brute_topk(scores: &[(f32, i64)], k: usize) -> Vec<(f32, i64)> {
    let mut v = scores.to_vec();
    v.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
    v.truncate(k);
    v
}

/// `<a, b>` in f64.
pub fn dot64(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// DESIGN §4: scores equal within `rel` (relative, `1 + |s|` scaled); ids differ only where
/// the scores tie within that tolerance.
pub fn assert_topk_close(got: &TopK, want: &TopK, rel: f32, what: &str) {
    assert_eq!(got.rows, want.rows, "{what}: rows");
    assert_eq!(got.k, want.k, "{what}: k");
    for r in 0..got.rows {
        let (gi, gs) = (got.row_ids(r), got.row_scores(r));
        let (wi, ws) = (want.row_ids(r), want.row_scores(r));
        let tol = |s: f32| rel * (1.0 + s.abs());
        for j in 0..got.k {
            let both_empty = gs[j] == f32::NEG_INFINITY && ws[j] == f32::NEG_INFINITY;
            assert!(
                both_empty || (gs[j] - ws[j]).abs() <= tol(ws[j]),
                "{what}: row {r} slot {j}: score {} vs {}",
                gs[j],
                ws[j]
            );
            if gi[j] != wi[j] {
                let tied_elsewhere = wi
                    .iter()
                    .zip(ws)
                    .any(|(&id, &s)| id == gi[j] && (s - gs[j]).abs() <= tol(s));
                let at_boundary = (gs[j] - ws[got.k - 1]).abs() <= tol(ws[got.k - 1]);
                assert!(
                    tied_elsewhere || at_boundary,
                    "{what}: row {r} slot {j}: id {} vs {} without a tie (scores {} / {})",
                    gi[j],
                    wi[j],
                    gs[j],
                    ws[j]
                );
            }
        }
    }
}

/// A backend to test, or why it is skipped. `REQUIRE_GPU=1` turns a skip of the cuda
/// backend into a failure.
pub fn reference() -> Option<Box<dyn Backend>> {
    Some(Box::new(Reference))
}

/// Brute-force (score, caller id) of every item of `index` for query `q`, scored against the
/// item's reconstruction `x̂` with the index's metric, in f64.
pub fn recon_scores(index: &Index, q: &[f32]) -> Vec<(f32, i64)> {
    (0..index.len())
        .map(|p| {
            let x = index.codebooks.reconstruct(&index.codes.path(p));
            let s = match index.metric {
                Metric::Ip => dot64(q, &x),
                Metric::L2 => -q
                    .iter()
                    .zip(&x)
                    .map(|(&a, &c)| (a as f64 - c as f64).powi(2))
                    .sum::<f64>(),
            };
            (s as f32, index.ids[p])
        })
        .collect()
}

/// `||a - b|| / ||b|| ≤ rel` (DESIGN §4 for float outputs).
pub fn rel_close(a: &[f32], b: &[f32], rel: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum();
    let den: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
    assert!(
        num.sqrt() <= rel * den.sqrt().max(1e-30),
        "{what}: relative error {}",
        num.sqrt() / den.sqrt()
    );
}

/// The binary under test: `RQTREE_BIN` when set (a test binary run away from its build
/// tree, e.g. from the GPU bundle), else the one cargo built.
pub fn rqtree<S: AsRef<OsStr> + Debug>(args: &[S]) -> Output {
    let bin = std::env::var_os("RQTREE_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_rqtree").into());
    Command::new(bin).args(args).output().expect("run rqtree")
}

/// Runs rqtree, asserts success, returns its stdout.
pub fn ok<S: AsRef<OsStr> + Debug>(args: &[S]) -> String {
    let out = rqtree(args);
    assert!(
        out.status.success(),
        "rqtree {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs rqtree, asserts the one-line error of a bad input (exit status 2) containing `needle`.
pub fn fails<S: AsRef<OsStr> + Debug>(args: &[S], needle: &str) {
    let out = rqtree(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "rqtree {args:?}: {err}");
    assert!(
        err.contains("error: ") && err.contains(needle),
        "rqtree {args:?}: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// Writes a version-1 `.npy` whose header is `dict` (padded to a 64-byte boundary) followed by
/// `data`.
pub fn forged_npy(p: &std::path::Path, dict: &str, data: &[u8]) {
    let mut header = dict.to_string();
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend((header.len() as u16).to_le_bytes());
    b.extend(header.as_bytes());
    b.extend(data);
    std::fs::write(p, b).unwrap();
}
