//! One test body per operation, run on every backend against the `reference` oracle:
//! `reference` itself, `emu` (the CUDA kernel sources emulated on the CPU) and `cuda` (a GPU;
//! prints `SKIP: <reason>` without one, fails instead when `REQUIRE_GPU=1`). Fresh seeded
//! inputs each run, sizes that are not multiples of 32, ties, k = 1, k = n, k > n, empty
//! batches; tolerances of DESIGN §4.

mod common;

use common::*;
use rand::Rng;
use std::sync::Arc;

use rqtree::backend::{self, AssignOptions, Backend, BackendKind, Encoding, Resident};
use rqtree::candidates::Candidates;
use rqtree::error::Error;
use rqtree::index::build::{build, BuildOptions};
use rqtree::index::{Codebook, Codebooks, EmbeddingKind, Embeddings, Index};
#[cfg(any(feature = "emu", feature = "cuda"))]
use rqtree::kernels::{FusedKernel, KernelBackend, Storage};
use rqtree::matrix::Matrix;
use rqtree::metric::Metric;
use rqtree::ops;
use rqtree::reference::Reference;
use rqtree::search::{search, Rerank, SearchParams};
use rqtree::topk::TopK;

/// Opens backend `kind`, or prints why it is skipped (a failure under `REQUIRE_GPU=1` for cuda).
fn open(kind: BackendKind) -> Option<Box<dyn Backend>> {
    match backend::open(kind) {
        Ok((be, _)) => Some(be),
        Err(e) => {
            let gpu = kind == BackendKind::Cuda;
            if gpu && std::env::var("REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("REQUIRE_GPU=1 but the cuda backend is unavailable: {e}");
            }
            println!("SKIP: {e}");
            None
        }
    }
}

/// Codes agree, or the two codes' logits are a near-tie (DESIGN §4).
fn codes_agree(got: &[u32], want: &[u32], logit: impl Fn(usize, u32) -> f32, per_row: usize) {
    for (p, (&g, &w)) in got.iter().zip(want).enumerate() {
        if g != w {
            let (lg, lw) = (logit(p / per_row, g), logit(p / per_row, w));
            assert!(
                (lg - lw).abs() <= 1e-5 * (1.0 + lw.abs()),
                "row {}: code {g} vs {w}",
                p / per_row
            );
        }
    }
}

/// Row-wise top-k of `m` on `be` equals the reference's, score bits included (`TopK`'s `==`
/// holds -0 equal to +0).
fn topk_agrees(be: &dyn Backend, m: &Matrix, k: usize, what: &str) {
    let (got, want) = (
        ops::topk(be, m, k).unwrap(),
        ops::topk(&Reference, m, k).unwrap(),
    );
    let shape = format!("top-{k} of {} x {} ({what})", m.rows(), m.cols());
    assert_eq!(got, want, "{shape}");
    let bits = |t: &TopK| t.scores.iter().map(|s| s.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&got), bits(&want), "{shape}: score bits");
}

fn topk_rows_and_segments(be: &dyn Backend) {
    let mut rng = rng("topk_rows_and_segments");
    // The warp paths read 32 × 32 = 1024 columns per chunk: n around chunk multiples, and
    // some not a multiple of 32.
    let shapes = [
        (5, 301),
        (3, 1500),
        (1, 1),
        (11, 45),
        (9, 32),
        (2, 7),
        (2, 1023),
        (2, 1024),
        (3, 1025),
        (2, 2048),
        (2, 3001),
    ];
    for &(rows, n) in &shapes {
        let mut m = tied_matrix(&mut rng, rows, n);
        // -0 ties +0 (the lower column first).
        for (i, v) in m.data_mut().iter_mut().enumerate() {
            if *v == 0.0 && i % 3 == 0 {
                *v = -0.0;
            }
        }
        for k in [
            1,
            2,
            7,
            31,
            32,
            33,
            64,
            65,
            100,
            128,
            129,
            256,
            n,
            n + 5,
            1000,
        ]
        .into_iter()
        .filter(|&k| k <= 2048)
        {
            topk_agrees(be, &m, k, "tied");
        }
    }
    // Distinct scores over several chunks (the per-lane queues and the per-32-column merges
    // both run), ascending rows (every column enters: the list is always filling) and
    // descending rows (nothing enters after the first chunk).
    for &(rows, n) in &[(3, 5000), (2, 4133)] {
        let mut m = rand_matrix(&mut rng, rows, n);
        let (up, down) = m.data_mut()[..2 * n].split_at_mut(n);
        for (j, (u, d)) in up.iter_mut().zip(down.iter_mut()).enumerate() {
            *u = j as f32 * 0.25 - 300.0;
            *d = -(j as f32) * 0.25;
        }
        for k in [1, 2, 10, 32, 100, 129, 256, 257, 1000] {
            let got = ops::topk(be, &m, k).unwrap();
            assert_eq!(
                got,
                ops::topk(&Reference, &m, k).unwrap(),
                "top-{k} of {rows} x {n} (distinct)"
            );
        }
    }
    // Radix select (256 < k ≤ 2048) paths, kernels/topk.cu `rq_topk_radix` (3 072 entry
    // slots): (a) normal rows: the k-th best's top-byte bucket fits the shared buffer after one
    // histogram pass; (b) every score in [1, 2): the top-byte bucket (all 4 000) overflows the
    // buffer, the second byte's fits; (c) 3 500 zeros (-0 and +0 mixed) tied at the k-th
    // key: the ties are cut by the multi-pass global path; (d) ties straddling the k-th
    // slot and -0/+0 at it, inside the shared buffer.
    let normal = |rng: &mut TestRng, rows: usize, n: usize| {
        let v = (0..rows * n).map(|_| rng.sample::<f32, _>(rand_distr::StandardNormal));
        Matrix::new(rows, n, v.collect()).unwrap()
    };
    let in_1_2 = |rng: &mut TestRng, rows: usize, n: usize| {
        let v = (0..rows * n).map(|_| 1.0 + rng.random_range(0.0f32..1.0));
        Matrix::new(rows, n, v.collect()).unwrap()
    };
    let zeros_cut = |rng: &mut TestRng, rows: usize, n: usize| {
        let mut v = Vec::with_capacity(rows * n);
        for _ in 0..rows {
            // 300 above zero, 3 500 zeros, the rest below, shuffled by a random rotation.
            let mut r: Vec<f32> = (0..n)
                .map(|j| match j {
                    0..300 => 1.0 + j as f32,
                    300..3800 => [0.0, -0.0][j % 2],
                    _ => -1.0 - j as f32,
                })
                .collect();
            r.rotate_left(rng.random_range(0..n));
            v.extend(r);
        }
        Matrix::new(rows, n, v).unwrap()
    };
    let straddle = |rng: &mut TestRng, rows: usize, n: usize| {
        let mut v = Vec::with_capacity(rows * n);
        for _ in 0..rows {
            // 700 values 0.01·(d - 460), d = (j + offset) mod 700, each about n / 700 times;
            // the zeros (d = 460, ranked near 240 · n / 700) alternate -0 and +0 by copy.
            let off = rng.random_range(0..700);
            v.extend((0..n).map(|j| match (j + off) % 700 {
                460 if (j / 700) % 2 == 0 => -0.0,
                d => (d as f32 - 460.0) * 0.01,
            }));
        }
        Matrix::new(rows, n, v).unwrap()
    };
    type Gen<'a> = &'a dyn Fn(&mut TestRng, usize, usize) -> Matrix;
    let cases: [(&str, Gen, usize, usize, &[usize]); 6] = [
        ("normal", &normal, 3, 5000, &[257, 1000, 2048]),
        ("normal", &normal, 2, 2500, &[300, 2048]),
        ("in [1, 2)", &in_1_2, 2, 4000, &[257, 1000, 2048]),
        ("zeros cut", &zeros_cut, 2, 4000, &[301, 1000, 2048]),
        (
            "straddle",
            &straddle,
            2,
            2900,
            &[257, 990, 992, 994, 996, 1000, 2048],
        ),
        ("straddle", &straddle, 1, 700, &[699, 700, 701, 2048]),
    ];
    for (what, make, rows, n, ks) in cases {
        let m = make(&mut rng, rows, n);
        for &k in ks {
            topk_agrees(be, &m, k, what);
        }
    }
    assert_eq!(
        ops::topk(be, &Matrix::zeros(0, 9), 4).unwrap(),
        TopK::empty(0, 4)
    );
    let lens = [0usize, 45, 1, 0, 300, 33];
    let mut offsets = vec![0];
    for l in lens {
        offsets.push(offsets.last().unwrap() + l);
    }
    let v = tied_matrix(&mut rng, 1, *offsets.last().unwrap());
    for k in [1, 10, 300] {
        let got = ops::segmented_topk(be, v.data(), &offsets, k).unwrap();
        assert_eq!(
            got,
            ops::segmented_topk(&Reference, v.data(), &offsets, k).unwrap(),
            "k {k}"
        );
    }
}

fn assign_levels(be: &dyn Backend) {
    let mut rng = rng("assign_levels");
    for &(n, k, d) in &[(77, 37, 19), (33, 300, 8), (0, 5, 3), (1, 1, 1)] {
        let r = rand_matrix(&mut rng, n, d);
        let cb = Codebook::new(rand_matrix(&mut rng, k, d), "cb").unwrap();
        for opts in [
            AssignOptions::default(),
            AssignOptions {
                top_m: k.min(4),
                alpha: Some(1.7),
                residual: true,
            },
        ] {
            let got = ops::assign(be, &r, &cb, &opts).unwrap();
            let want = ops::assign(&Reference, &r, &cb, &opts).unwrap();
            let logit = |row: usize, c: u32| {
                2.0 * rqtree::matrix::dot(r.row(row), cb.word(c as usize)) - cb.norms()[c as usize]
            };
            codes_agree(&got.codes, &want.codes, logit, opts.top_m);
            if n > 0 {
                rel_close(&got.logits, &want.logits, 1e-5, "logits");
                if let (Some(g), Some(w)) = (&got.soft, &want.soft) {
                    rel_close(g.data(), w.data(), 1e-5, "soft weights");
                }
                if let (Some(g), Some(w)) = (&got.residual, &want.residual) {
                    if got.codes == want.codes {
                        rel_close(g.data(), w.data(), 1e-5, "residual");
                    }
                }
            }
        }
    }
}

/// Per item: the same codes, or encoding errors within DESIGN §4's near-tie tolerance; all
/// errors within a relative 1e-5.
fn encodings_agree(got: &Encoding, want: &Encoding, what: &str) {
    let levels = want.levels;
    assert_eq!(got.levels, levels, "{what}: levels");
    assert_eq!(got.error.len(), want.error.len(), "{what}: items");
    for (i, (&eg, &ew)) in got.error.iter().zip(&want.error).enumerate() {
        let (g, w) = (
            &got.codes[i * levels..(i + 1) * levels],
            &want.codes[i * levels..(i + 1) * levels],
        );
        assert!(
            g == w || (eg - ew).abs() <= 1e-5 * (1.0 + ew.abs()),
            "{what} item {i}: {g:?} vs {w:?}"
        );
    }
    rel_close(&got.error, &want.error, 1e-5, "encoding error");
}

fn encode_greedy_and_beam(be: &dyn Backend) {
    let mut rng = rng("encode_greedy_and_beam");
    for (levels, k, beam) in [(2, 23, 1), (3, 17, 4), (2, 40, 8), (1, 5, 1)] {
        let cbs = rand_codebooks(&mut rng, levels, k, 11);
        let x = rand_matrix(&mut rng, 67, 11);
        let got = ops::encode(be, &x, &cbs, beam).unwrap();
        let want = ops::encode(&Reference, &x, &cbs, beam).unwrap();
        encodings_agree(&got, &want, &format!("beam {beam}"));
    }
}

/// Greedy encoding (beam 1) and hard assignment (top-1) equal the reference bit for bit: the
/// kernels screen codewords approximately and decide among the candidates the screening
/// cannot rule out with the reference's arithmetic (kernels/README.md, "Certified greedy
/// assignment"). Cases: sizes off the kernel's tiles (rows of 64, codeword tiles of 64,
/// dimension chunks of 32; the tensor-core screening's tiles of 8 and groups of 128: K = 1,
/// 8, 129, d = 1, 9, four levels), exact ties (duplicated codewords), near-ties one thread sees
/// together (codeword pairs 1e-7 apart: the exact scan of all codewords), 16-row blocks for
/// a large d, the per-row kernels beyond the tiled kernel's shared memory (d = 1536),
/// residual norms whose square overflows f32 and logits that overflow (a non-finite window:
/// the exact scan), products below f32's normal range, codewords sharing a large common part (the tensor-core screening's
/// centring and radius) and best codewords that only a screening finer than TF32, or a
/// window sized for TF32 (within a factor of ten), keeps.
fn greedy_is_exact(be: &dyn Backend) {
    let mut rng = rng("greedy_is_exact");
    let near_pairs = |rng: &mut TestRng, k: usize, d: usize| {
        let mut m = rand_matrix(rng, k, d);
        for w in (0..k - 1).step_by(2) {
            let (a, b) = m.data_mut().split_at_mut((w + 1) * d);
            b[..d].copy_from_slice(&a[w * d..]);
            b[0] += 1e-7;
        }
        m
    };
    let cases: Vec<(&str, Matrix, Vec<Matrix>)> = vec![
        (
            "random",
            rand_matrix(&mut rng, 200, 37),
            (0..3).map(|_| rand_matrix(&mut rng, 150, 37)).collect(),
        ),
        (
            "ties",
            tied_matrix(&mut rng, 131, 3),
            (0..2).map(|_| tied_matrix(&mut rng, 100, 3)).collect(),
        ),
        (
            "near ties",
            rand_matrix(&mut rng, 70, 33),
            vec![near_pairs(&mut rng, 64, 33), near_pairs(&mut rng, 9, 33)],
        ),
        (
            "whole chunks, copied asynchronously (f32, d a multiple of 4, tiles of 64)",
            rand_matrix(&mut rng, 150, 72),
            [130, 64, 200]
                .iter()
                .map(|&k| rand_matrix(&mut rng, k, 72))
                .collect(),
        ),
        (
            "edge shapes: one codeword, a single tile, a group and one more; d of 1 and 9; \
             a row over a block",
            rand_matrix(&mut rng, 65, 9),
            [1, 8, 129]
                .iter()
                .map(|&k| rand_matrix(&mut rng, k, 9))
                .collect(),
        ),
        (
            "two-byte codes (K = 300)",
            rand_matrix(&mut rng, 20, 3),
            [300, 40]
                .iter()
                .map(|&k| rand_matrix(&mut rng, k, 3))
                .collect(),
        ),
        (
            "the largest code (K = 65536)",
            rand_matrix(&mut rng, 3, 1),
            vec![rand_matrix(&mut rng, 65536, 1)],
        ),
        (
            "d = 1, four levels",
            rand_matrix(&mut rng, 7, 1),
            (0..4).map(|_| rand_matrix(&mut rng, 3, 1)).collect(),
        ),
        (
            "the bench's shape, scaled down",
            rand_matrix(&mut rng, 129, 128),
            (0..2).map(|_| rand_matrix(&mut rng, 256, 128)).collect(),
        ),
        (
            "large d",
            rand_matrix(&mut rng, 40, 333),
            (0..2).map(|_| rand_matrix(&mut rng, 70, 333)).collect(),
        ),
        (
            "overflowing norms",
            Matrix::new(
                5,
                8,
                (0..40)
                    .map(|i| if i % 2 == 0 { 2e19 } else { -3e19 })
                    .collect(),
            )
            .unwrap(),
            (0..2).map(|_| rand_matrix(&mut rng, 20, 8)).collect(),
        ),
        (
            "d beyond the tiled kernel (per-row kernels)",
            rand_matrix(&mut rng, 9, 1536),
            (0..2).map(|_| rand_matrix(&mut rng, 12, 1536)).collect(),
        ),
        {
            // Codewords 300·c + noise in [-1, 1), rows at the midpoints of codeword pairs (plus
            // 1e-3 of noise): each row's two nearest codewords nearly tie, ~8 ahead of the rest.
            // A TF32 screening of the words as they are errs by up to ~2^-9·||r||·||300·c||
            // (hundreds), far beyond a window sized by the noise's spread (~40): the
            // tensor-core screening must centre the words its radius describes.
            let d = 24;
            let common: Vec<f32> = rand_matrix(&mut rng, 1, d).data().to_vec();
            let mut words = rand_matrix(&mut rng, 150, d);
            for w in words.data_mut().chunks_exact_mut(d) {
                w.iter_mut().zip(&common).for_each(|(v, c)| *v += 300.0 * c);
            }
            let jitter = rand_matrix(&mut rng, 150, d);
            let rows: Vec<f32> = (0..150 * d)
                .map(|i| {
                    let (r, e) = (i / d, i % d);
                    let (a, b) = (r, (r + 1) % 150);
                    let w = words.data();
                    (w[a * d + e] + w[b * d + e]) / 2.0 + 1e-3 * jitter.data()[i]
                })
                .collect();
            (
                "codewords sharing a large common part, rows between two of them",
                Matrix::new(150, d, rows).unwrap(),
                vec![words],
            )
        },
        {
            // Rows and codewords of ~2^-64: their products lie in f32's subnormal range (the
            // windows' absolute floors; on a GPU, whether the tensor cores flush them).
            let tiny = |m: Matrix| {
                let (r, c) = (m.rows(), m.cols());
                Matrix::new(r, c, m.data().iter().map(|v| v * 2f32.powi(-64)).collect()).unwrap()
            };
            (
                "products below f32's normal range",
                tiny(rand_matrix(&mut rng, 70, 24)),
                (0..2)
                    .map(|_| tiny(rand_matrix(&mut rng, 40, 24)))
                    .collect(),
            )
        },
        (
            "overflowing logits",
            Matrix::new(3, 8, vec![3e38; 24]).unwrap(),
            vec![rand_matrix(&mut rng, 20, 8)],
        ),
        {
            // Rows of 1 + 2^-11 (below TF32's resolution) and a codebook with that row itself
            // (the best, by 16·2^-22) after a row of ones: a TF32 screening ranks the ones
            // ahead, outside any window sized for a finer screening, and finds the best only
            // with the window of its own precision.
            let fine = 1.0 + 2f32.powi(-11);
            let mut words = rand_matrix(&mut rng, 6, 16);
            words.data_mut()[16..32].fill(1.0);
            words.data_mut()[48..64].fill(fine);
            (
                "below TF32 resolution",
                Matrix::new(3, 16, vec![fine; 48]).unwrap(),
                vec![words],
            )
        },
        {
            // TF32 truncation at its worst: rows ρ·1 and words ±1, ±ρ·1 (mean exactly 0, so
            // the centred words are the words), ρ = 1 + 8191·2^-23 (every bit TF32 drops is
            // set). The best word is ρ·1 (by 16·(ρ - 1)² ≈ 1.5e-5), but truncated it reads as
            // 1: its screening logit is 98.6 % of E1 low and ranks it 0.031 behind the word
            // of ones, 0.12 of the TF32 window: a window a tenth of it, or sized for 3xTF32,
            // loses the best.
            let rho = 1.0 + 8191.0 * 2f32.powi(-23);
            let words: Vec<f32> = [1.0, rho, -1.0, -rho]
                .iter()
                .flat_map(|&v| [v; 16])
                .collect();
            (
                "TF32 truncation at its worst",
                Matrix::new(2, 16, vec![rho; 32]).unwrap(),
                vec![Matrix::new(4, 16, words).unwrap()],
            )
        },
    ];
    for (what, x, words) in cases {
        let cbs = Codebooks::from_matrices(words).unwrap();
        let got = ops::encode(be, &x, &cbs, 1).unwrap();
        let want = ops::encode(&Reference, &x, &cbs, 1).unwrap();
        assert_eq!(got.codes, want.codes, "{what}: encode codes");
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got.error), bits(&want.error), "{what}: encode error");
        let opts = AssignOptions {
            residual: true,
            ..AssignOptions::default()
        };
        let cb = cbs.level(0);
        let got = ops::assign(be, &x, cb, &opts).unwrap();
        let want = ops::assign(&Reference, &x, cb, &opts).unwrap();
        assert_eq!(got.codes, want.codes, "{what}: assign codes");
        assert_eq!(
            bits(&got.logits),
            bits(&want.logits),
            "{what}: assign logits"
        );
        let (g, w) = (got.residual.unwrap(), want.residual.unwrap());
        assert_eq!(bits(g.data()), bits(w.data()), "{what}: assign residual");
    }
}

/// Lookup tables equal the reference's bit for bit (same summation order, no FMA), for
/// sizes off the kernel's 32 × 32 tiles and 32-dimension chunks, with and without the f64
/// tail (d not a multiple of 8).
fn lookup_tables_exact(be: &dyn Backend) {
    let mut rng = rng("lookup_tables_exact");
    for &(b, k, d, levels) in &[
        (45, 77, 70, 2),
        (33, 300, 8, 1),
        (1, 1, 1, 1),
        (70, 31, 131, 3),
    ] {
        let q = rand_matrix(&mut rng, b, d);
        let cbs = rand_codebooks(&mut rng, levels, k, d);
        for metric in [Metric::Ip, Metric::L2] {
            let got = ops::lookup_tables(be, &q, &cbs, metric).unwrap();
            let want = ops::lookup_tables(&Reference, &q, &cbs, metric).unwrap();
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            for (l, (g, w)) in got.levels.iter().zip(&want.levels).enumerate() {
                assert_eq!(bits(g.data()), bits(w.data()), "{b} x {k} x {d}, level {l}");
            }
            assert_eq!(bits(&got.qnorm), bits(&want.qnorm), "query norms");
        }
    }
}

fn tables_traversal_fused_and_rerank(be: &dyn Backend) {
    let mut rng = rng("tables_traversal_fused_and_rerank");
    for (metric, keep, levels, k_codes, tol) in [
        (Metric::Ip, EmbeddingKind::F32, 2, 13, 1e-5),
        (Metric::L2, EmbeddingKind::F16, 3, 5, 1e-2),
        (Metric::Ip, EmbeddingKind::Bf16, 2, 13, 1e-2),
        (Metric::L2, EmbeddingKind::Bf16, 2, 9, 1e-2),
        (Metric::Ip, EmbeddingKind::F32, 2, 300, 1e-5),
        // More than 4 levels: the fused kernel's 8-level entry point (u8 and u16 codes).
        (Metric::L2, EmbeddingKind::F32, 6, 4, 1e-5),
        (Metric::Ip, EmbeddingKind::F32, 5, 260, 1e-5),
    ] {
        let n = rng.random_range(150..400);
        let (index, _, _) = rand_index(&mut rng, n, 10, levels, k_codes, metric, keep);
        let q = rand_matrix(&mut rng, 9, 10);
        let t = ops::lookup_tables(be, &q, &index.codebooks, metric).unwrap();
        let tr = ops::lookup_tables(&Reference, &q, &index.codebooks, metric).unwrap();
        for (g, w) in t.levels.iter().zip(&tr.levels) {
            rel_close(g.data(), w.data(), 1e-5, "lookup table");
        }
        let full: Vec<usize> = index.tree.depths.iter().map(|d| d.len()).collect();
        for beams in [vec![1], vec![3, 7], full.clone(), vec![2; levels]] {
            let c = ops::traverse(be, &tr, &index.tree, &beams).unwrap();
            let cr = ops::traverse(&Reference, &tr, &index.tree, &beams).unwrap();
            assert_eq!(c, cr, "traverse {beams:?}");
            for k in [1, 10, n, n + 3] {
                let f = be.fused_topk(&tr, &index, &cr, k).unwrap();
                let fr = Reference.fused_topk(&tr, &index, &cr, k).unwrap();
                assert_topk_close(&f, &fr, 1e-5, "fused top-k");
            }
            let fr = Reference.fused_topk(&tr, &index, &cr, 50).unwrap();
            let (off, pos) = fr.to_csr();
            let e = index.embeddings.as_ref().unwrap();
            for k in [1, 5, 50] {
                let r = be.rerank(&q, e, &index.ids, metric, &off, &pos, k).unwrap();
                let rr = Reference
                    .rerank(&q, e, &index.ids, metric, &off, &pos, k)
                    .unwrap();
                assert_topk_close(&r, &rr, tol, "rerank");
            }
        }
    }
}

/// `m` with every value multiplied by `s`.
fn scaled(m: &Matrix, s: f32) -> Matrix {
    let mut m = m.clone();
    m.data_mut().iter_mut().for_each(|v| *v *= s);
    m
}

/// Inputs every backend refuses with the same error kind: finite values large enough that
/// scores could overflow f32 (they would reach the selectors as ±inf or NaN: a depth-1 beam
/// then read a node id from an empty slot), tables that do not fit the tree, candidate and
/// shortlist lists out of range. And beam widths beyond a depth's node count, which keep
/// every node rather than sizing anything from the width.
fn out_of_range_inputs_are_errors(be: &dyn Backend) {
    let mut rng = rng("out_of_range_inputs_are_errors");
    fn range<T>(r: rqtree::Result<T>, what: &str) {
        match r {
            Err(Error::Range(m)) => println!("{what}: {m}"),
            other => panic!(
                "{what}: expected a range error, got {:?}",
                other.map(|_| ())
            ),
        }
    }
    fn shape<T>(r: rqtree::Result<T>, what: &str) {
        match r {
            Err(Error::Shape(m)) => println!("{what}: {m}"),
            other => panic!(
                "{what}: expected a shape error, got {:?}",
                other.map(|_| ())
            ),
        }
    }
    for metric in [Metric::Ip, Metric::L2] {
        let (index, _, _) = rand_index(&mut rng, 200, 8, 2, 7, metric, EmbeddingKind::F32);
        let q = rand_matrix(&mut rng, 5, 8);
        let params = SearchParams {
            k: 5,
            beams: vec![2, 4],
            rerank: Rerank::None,
        };
        // Scores of queries scaled by 1e38 could overflow; by 1e15 they cannot, and agree.
        let huge = scaled(&q, 1e38);
        range(
            search(be, &index, &huge, None, &params),
            "search, huge queries",
        );
        range(
            ops::lookup_tables(be, &huge, &index.codebooks, metric),
            "lookup tables, huge queries",
        );
        let big = scaled(&q, 1e15);
        let got = search(be, &index, &big, None, &params).unwrap();
        let want = search(&Reference, &index, &big, None, &params).unwrap();
        assert_topk_close(
            &got.topk,
            &want.topk,
            1e-5,
            "search, queries scaled by 1e15",
        );
        // The exact scores of finite vectors whose products overflow (inf - inf: NaN).
        let items = Matrix::new(2, 8, [[1e19f32; 8], [-1e19; 8]].concat()).unwrap();
        let q20 = Matrix::filled(1, 8, 1e20);
        range(ops::exact_topk(be, &q20, &items, metric, 1), "exact top-k");
        let e = Embeddings::F32(Matrix::filled(index.len(), 8, 1e19));
        let (off, pos) = (vec![0, 3], vec![0, 1, 2]);
        range(
            ops::rerank(be, &q20, &e, &index.ids, metric, &off, &pos, 1),
            "rerank",
        );
        // Half-width rows are bounded by their own largest value, not their format's range:
        // bf16 rows of 1e19 against queries of 1e20 are refused; f16 rows of a few units
        // against queries of 1e34 (ip) are scored, where f16's largest finite value (65504)
        // would have refused them.
        let e =
            Embeddings::store(Matrix::filled(index.len(), 8, 1e19), EmbeddingKind::Bf16).unwrap();
        range(
            ops::rerank(be, &q20, &e, &index.ids, metric, &off, &pos, 1),
            "rerank, bf16",
        );
        if metric == Metric::Ip {
            let rows = rand_matrix(&mut rng, index.len(), 8);
            let e = Embeddings::store(rows, EmbeddingKind::F16).unwrap();
            let q34 = scaled(&q, 1e34);
            let off = [0, 3, 3, 5, 6, 9];
            let pos = [0, 1, 2, 7, 8, 3, 4, 5, 6];
            let got = ops::rerank(be, &q34, &e, &index.ids, metric, &off, &pos, 2).unwrap();
            let want =
                ops::rerank(&Reference, &q34, &e, &index.ids, metric, &off, &pos, 2).unwrap();
            assert_topk_close(&got, &want, 1e-5, "rerank, f16 rows, queries of 1e34");
        }
        // Tables that do not fit the tree, or whose sums overflow.
        let t = ops::lookup_tables(&Reference, &q, &index.codebooks, metric).unwrap();
        let mut narrow = t.clone();
        narrow.levels[1] = Matrix::zeros(5, 2);
        shape(
            ops::traverse(be, &narrow, &index.tree, &[2, 4]),
            "traverse, too few codes",
        );
        let mut short = t.clone();
        short.qnorm.pop();
        shape(
            ops::traverse(be, &short, &index.tree, &[2, 4]),
            "traverse, a query norm missing",
        );
        let mut loud = t.clone();
        loud.levels[0] = Matrix::filled(5, 7, 3e38);
        range(
            ops::traverse(be, &loud, &index.tree, &[2]),
            "traverse, huge tables",
        );
        // Candidates and shortlists out of range.
        let c = ops::traverse(&Reference, &t, &index.tree, &[2]).unwrap();
        assert!(ops::fused_topk(be, &t, &index, &c, 3).is_ok());
        range(
            ops::fused_topk(be, &loud, &index, &c, 3),
            "fused, huge tables",
        );
        let mut bad = c.clone();
        bad.nodes[0] = index.tree.depths[0].len() as u32;
        shape(ops::fused_topk(be, &t, &index, &bad, 3), "fused, node id");
        let mut bad = c.clone();
        bad.depth = 0;
        shape(ops::fused_topk(be, &t, &index, &bad, 3), "fused, depth 0");
        let mut bad = c.clone();
        bad.offsets[1] = bad.offsets[2] + 1;
        shape(ops::fused_topk(be, &t, &index, &bad, 3), "fused, offsets");
        // A node or position listed twice for one query (it would fill two slots), while
        // lists of different queries may share entries.
        let mut bad = c.clone();
        bad.nodes[3] = bad.nodes[2];
        shape(
            ops::fused_topk(be, &t, &index, &bad, 3),
            "fused, a node twice",
        );
        let shared = Candidates {
            depth: 1,
            offsets: vec![0, 1, 2, 3, 4, 5],
            nodes: vec![c.nodes[0]; 5],
        };
        assert!(ops::fused_topk(be, &t, &index, &shared, 3).is_ok());
        let e = index.embeddings.as_ref().unwrap();
        let (off, pos) = (vec![0, 2, 3, 3, 3, 3], vec![0, 5, index.len() as u32]);
        shape(
            ops::rerank(be, &q, e, &index.ids, metric, &off, &pos, 1),
            "rerank, position",
        );
        let off = vec![0, 2, 1, 2, 2, 2];
        shape(
            ops::rerank(be, &q, e, &index.ids, metric, &off, &pos[..2], 1),
            "rerank, offsets",
        );
        let (off, pos) = (vec![0, 1, 2, 2, 2, 5], vec![7, 7, 3, 9, 3]);
        shape(
            ops::rerank(be, &q, e, &index.ids, metric, &off, &pos, 1),
            "rerank, a position twice",
        );
        let off = vec![0, 1, 2, 2, 2, 4];
        assert!(ops::rerank(be, &q, e, &index.ids, metric, &off, &pos[..4], 1).is_ok());
        // A k whose B × k result cannot be held is an error, not an abort.
        let absurd = SearchParams {
            k: 1 << 50,
            ..params.clone()
        };
        match search(be, &index, &q, None, &absurd) {
            Err(Error::Param(m)) => println!("search, k = 2^50: {m}"),
            other => panic!(
                "k = 2^50: expected a parameter error, got {:?}",
                other.map(|_| ())
            ),
        }
        // So is a re-rank shortlist whose B × rerank-k cannot be held (the composed path
        // sized its fused output from it: an abort on allocation).
        let absurd = SearchParams {
            rerank: Rerank::Exact {
                rerank_k: Some(1 << 50),
            },
            ..params.clone()
        };
        match search(be, &index, &q, None, &absurd) {
            Err(Error::Param(m)) => assert!(m.contains("rerank-k = 1125899906842624"), "{m}"),
            other => panic!(
                "rerank-k = 2^50: expected a parameter error, got {:?}",
                other.map(|_| ())
            ),
        }
        // The kernels select at most 2048 per query; a longer re-rank shortlist is named, on
        // the device pipeline and on the composed path (caller level-1 scores).
        if be.name() != "reference" {
            let long = SearchParams {
                rerank: Rerank::Exact {
                    rerank_k: Some(3000),
                },
                ..params.clone()
            };
            let level1 = Matrix::filled(5, index.tree.depths[0].len(), 0.5);
            for l1 in [None, Some(&level1)] {
                match search(be, &index, &q, l1, &long) {
                    Err(Error::Param(m)) => assert!(m.contains("rerank-k = 3000"), "{m}"),
                    other => panic!("rerank-k = 3000: got {:?}", other.map(|_| ())),
                }
            }
        }
        // Beams wider than the tree keep every node.
        let every: Vec<usize> = index.tree.depths.iter().map(|d| d.len()).collect();
        for beams in [vec![usize::MAX, usize::MAX], every] {
            let wide = SearchParams {
                beams: beams.clone(),
                ..params.clone()
            };
            let got = search(be, &index, &q, None, &wide).unwrap();
            let want = search(&Reference, &index, &q, None, &wide).unwrap();
            assert_topk_close(&got.topk, &want.topk, 1e-5, "search, beams {beams:?}");
            assert_eq!(got.candidates, vec![index.len(); 5], "beams {beams:?}");
        }
    }
    // Items whose squared norms (~1.5e38) are finite but beyond the score limit: under `l2`
    // the fused scores add them, so modest tables are refused; under `ip` they are scored.
    let items = Matrix::new(
        12,
        8,
        (0..12)
            .flat_map(|i| {
                let s = 4e18 * (1.0 + i as f32 / 100.0);
                (0..8).map(move |j| if i < 6 || j % 2 == 0 { s } else { -s })
            })
            .collect(),
    )
    .unwrap();
    let words = |rows: Vec<f32>| Codebook::new(Matrix::new(2, 8, rows).unwrap(), "cb").unwrap();
    let cbs = Codebooks::new(vec![
        words([items.row(0), items.row(6)].concat()),
        words([[0.5f32; 8], [-0.5; 8]].concat()),
    ])
    .unwrap();
    let q = rand_matrix(&mut rng, 2, 8);
    for metric in [Metric::Ip, Metric::L2] {
        let opts = BuildOptions {
            metric,
            keep_embeddings: EmbeddingKind::None,
            ..BuildOptions::default()
        };
        let index = build(&Reference, &items, None, Some(cbs.clone()), &opts).unwrap();
        let t = Reference
            .lookup_tables(&q, &index.codebooks, metric)
            .unwrap();
        let all: Vec<u32> = (0..index.tree.depths[0].len() as u32).collect();
        let c = Candidates {
            depth: 1,
            offsets: vec![0, all.len(), 2 * all.len()],
            nodes: [all.clone(), all].concat(),
        };
        let r = ops::fused_topk(be, &t, &index, &c, 3);
        match metric {
            Metric::Ip => assert!(r.is_ok(), "fused, ip over huge items: {:?}", r.err()),
            Metric::L2 => range(r, "fused, l2 over huge items"),
        }
    }
    // Soft weights whose scaled logits could overflow (the softmax would meet inf − inf) are
    // refused; the hard codes of the same rows, and mild soft weights, are computed.
    let cb = Codebook::new(rand_matrix(&mut rng, 5, 8), "cb").unwrap();
    let huge = Matrix::filled(3, 8, 1e19);
    let soft = AssignOptions {
        top_m: 2,
        alpha: Some(1e20),
        residual: false,
    };
    range(
        ops::assign(be, &huge, &cb, &soft),
        "soft weights, huge logits",
    );
    let hard = AssignOptions {
        alpha: None,
        ..soft
    };
    assert!(ops::assign(be, &huge, &cb, &hard).is_ok());
    let mild = AssignOptions {
        alpha: Some(1.0),
        ..soft
    };
    let a = ops::assign(be, &rand_matrix(&mut rng, 3, 8), &cb, &mild).unwrap();
    assert!(a.soft.unwrap().data().iter().all(|w| w.is_finite()));
}

/// Traversal and fused lookup over more candidates than one round of the range-walking
/// kernels scores (256 threads × 4 per thread for k ≤ 512, × 1 above), with many tied
/// scores (items sharing a code path), so that rounds, merges and the lazily read ids of
/// tied candidates are all exercised; candidates in short ranges (leaves of a few items:
/// each thread walks consecutive items) and in long ones (depth-1 nodes of hundreds of
/// items: a warp's lanes take items 32 apart).
fn fused_and_traversal_many_rounds(be: &dyn Backend) {
    let mut rng = rng("fused_and_traversal_many_rounds");
    for metric in [Metric::Ip, Metric::L2] {
        let n = rng.random_range(2500..3500);
        let (index, _, _) = rand_index(&mut rng, n, 8, 2, 4, metric, EmbeddingKind::None);
        let q = rand_matrix(&mut rng, 5, 8);
        let tr = ops::lookup_tables(&Reference, &q, &index.codebooks, metric).unwrap();
        for beams in [vec![4], vec![2], vec![1]] {
            let c = ops::traverse(&Reference, &tr, &index.tree, &beams).unwrap();
            for k in [1, 100, 512, 513] {
                let f = be.fused_topk(&tr, &index, &c, k).unwrap();
                let fr = Reference.fused_topk(&tr, &index, &c, k).unwrap();
                assert_topk_close(&f, &fr, 1e-5, "fused top-k over long ranges");
            }
        }
    }
    for metric in [Metric::Ip, Metric::L2] {
        let n = rng.random_range(2500..3500);
        let (index, _, _) = rand_index(&mut rng, n, 8, 2, 40, metric, EmbeddingKind::None);
        let q = rand_matrix(&mut rng, 5, 8);
        let tr = ops::lookup_tables(&Reference, &q, &index.codebooks, metric).unwrap();
        let full: Vec<usize> = index.tree.depths.iter().map(|d| d.len()).collect();
        for beams in [vec![40, 300], vec![40, 600], full.clone(), vec![7, 2048]] {
            let c = ops::traverse(be, &tr, &index.tree, &beams).unwrap();
            let cr = ops::traverse(&Reference, &tr, &index.tree, &beams).unwrap();
            assert_eq!(c, cr, "traverse {beams:?} over {full:?} nodes");
            for k in [1, 100, 512, 513, 2048] {
                let f = be.fused_topk(&tr, &index, &cr, k).unwrap();
                let fr = Reference.fused_topk(&tr, &index, &cr, k).unwrap();
                assert_topk_close(&f, &fr, 1e-5, "fused top-k");
            }
        }
    }
}

/// The fused lookup + top-k over what the scan kernel (`rq_fused_scan`, 16-item groups) must
/// get right, compared bit for bit with the reference: 1 to 4 levels; tables of up to 800
/// entries (fewer copies of them in shared memory at large k); ranges longer than a round of
/// the scan (a thread's next group in the same range); item counts that are not multiples
/// of 16 (ranges that start and end inside a group; the device pads each level's row of
/// codes); ranges of one item; more candidate nodes than a block has threads (chunks of
/// ranges); heavy ties (one query's tables all -0, so the rank decides and an inner-product
/// score is -0 as the reference's f32 sum gives it; one's on a coarse grid), under which
/// offers find the selector's buffer full and must be offered again after its merge;
/// k = 1, 100, 513 and 2048, beyond the candidates of one leaf.
fn fused_long_ranges(be: &dyn Backend) {
    let mut rng = rng("fused_long_ranges");
    for (levels, k_codes, metric, n_min) in [
        // Nodes of ~5000 items: more than a round of the scan (256 groups of 16) per range.
        (1, 2, Metric::Ip, 9000),
        (1, 3, Metric::Ip, 4000),
        (2, 4, Metric::L2, 4000),
        (3, 5, Metric::Ip, 4000),
        (4, 3, Metric::L2, 4000),
        (2, 30, Metric::Ip, 4000),
        // Tables of 768 and 800 entries: the scan kernel's copies of them no longer fit 32
        // times beside a larger selector (k = 513: 16 copies, k = 2048: 8).
        (3, 256, Metric::L2, 4000),
        (4, 200, Metric::Ip, 4000),
    ] {
        let n = rng.random_range(n_min..n_min * 3 / 2) | 1;
        let (index, _, _) =
            rand_index(&mut rng, n, 6, levels, k_codes, metric, EmbeddingKind::None);
        let q = rand_matrix(&mut rng, 4, 6);
        let mut tr = ops::lookup_tables(&Reference, &q, &index.codebooks, metric).unwrap();
        for t in tr.levels.iter_mut() {
            // -0: every score ties (ip: at -0, the sign of a sum of -0 entries).
            t.row_mut(0).fill(-0.0);
            for v in t.row_mut(1) {
                *v = (*v * 2.0).round() / 2.0;
            }
        }
        let full: Vec<usize> = index.tree.depths.iter().map(|d| d.len()).collect();
        let mut beam_sets = vec![vec![full[0]], vec![2]];
        if levels > 1 {
            beam_sets.push(full.clone());
            beam_sets.push(vec![1; levels]);
        }
        for beams in beam_sets {
            let c = ops::traverse(&Reference, &tr, &index.tree, &beams).unwrap();
            for k in [1, 100, 513, 2048] {
                let f = be.fused_topk(&tr, &index, &c, k).unwrap();
                let fr = Reference.fused_topk(&tr, &index, &c, k).unwrap();
                let same = |j: usize| {
                    f.ids[j] == fr.ids[j] && f.scores[j].to_bits() == fr.scores[j].to_bits()
                };
                if let Some(j) = (0..f.ids.len()).find(|&j| !same(j)) {
                    panic!(
                        "{levels} levels of {k_codes}, beams {beams:?} of {full:?}, k {k}: query \
                         {} slot {}: ({}, {}) instead of ({}, {})",
                        j / k,
                        j % k,
                        f.ids[j],
                        f.scores[j],
                        fr.ids[j],
                        fr.scores[j]
                    );
                }
            }
        }
    }
}

/// Beam steps from many parents (more kept nodes than a block has threads, so the step's
/// range scan spans several chunks) into wide beams, with heavy ties: one query's tables are
/// all zero (every node ties, so the order is the node ids') and one's are rounded to a
/// coarse grid; both metrics, beams wider than a depth, a beam of 1.
fn traversal_wide_beams_and_ties(be: &dyn Backend) {
    let mut rng = rng("traversal_wide_beams_and_ties");
    for metric in [Metric::Ip, Metric::L2] {
        let n = rng.random_range(5000..7000);
        let (index, _, _) = rand_index(&mut rng, n, 6, 3, 24, metric, EmbeddingKind::None);
        let q = rand_matrix(&mut rng, 6, 6);
        let mut tr = ops::lookup_tables(&Reference, &q, &index.codebooks, metric).unwrap();
        for t in tr.levels.iter_mut() {
            t.row_mut(0).fill(0.0);
            for v in t.row_mut(1) {
                *v = (*v * 2.0).round() / 2.0;
            }
        }
        let full: Vec<usize> = index.tree.depths.iter().map(|d| d.len()).collect();
        assert!(full[1] > 500, "depth sizes {full:?}");
        for beams in [
            vec![full[0], 300, 100],
            vec![full[0], full[1], 2048],
            vec![full[0], 500, 1],
            vec![5, 40, 7],
        ] {
            let c = ops::traverse(be, &tr, &index.tree, &beams).unwrap();
            let cr = ops::traverse(&Reference, &tr, &index.tree, &beams).unwrap();
            assert_eq!(c, cr, "traverse {beams:?} over {full:?} nodes");
        }
    }
}

/// Two levels of codebooks: `parents` level-1 words 50 apart on distinct axes, `children`
/// random level-2 words (of norm ~1), so that greedy encoding gives every reconstruction of
/// a code path that path back.
fn two_level_codebooks(rng: &mut TestRng, parents: usize, children: usize, d: usize) -> Codebooks {
    let mut top = Matrix::zeros(parents, d);
    for p in 0..parents {
        top.row_mut(p)[p] = 50.0;
    }
    Codebooks::from_matrices(vec![top, rand_matrix(rng, children, d)]).unwrap()
}

/// An index (reference-built, `metric`) over the reconstructions of `paths` under `cbs`:
/// one item per path, the tree's nodes exactly the paths' prefixes.
fn path_index(cbs: &Codebooks, paths: &[[u32; 2]], metric: Metric) -> Index {
    let data = paths.iter().flat_map(|p| cbs.reconstruct(p)).collect();
    let items = Matrix::new(paths.len(), cbs.dim(), data).unwrap();
    let opts = BuildOptions {
        metric,
        ..BuildOptions::default()
    };
    build(&Reference, &items, None, Some(cbs.clone()), &opts).unwrap()
}

/// A beam step from one parent with 10 400 children into beams of 1 … 2 048, tables shaped so
/// that each outcome of the kernels' sampled threshold (one child in s sampled, s =
/// ((W + 3072) / 2 / 64) | 1 as rq_beam_step picks it) happens: a sample like the whole
/// (random and tied tables; the gathered children are then selected in shared memory), a
/// sample far above the rest (too few gathered: the full selection runs) and far below it
/// (too many gathered: the full selection runs); then four parents of 3 000 children, whose
/// level table the kernel stages in shared memory. Every backend must give the reference's
/// nodes whatever the sample did.
fn traversal_sampled_threshold(be: &dyn Backend) {
    let mut rng = rng("traversal_sampled_threshold");
    let (d, wide) = (8, 10_400);
    let cbs = two_level_codebooks(&mut rng, 2, wide, d);
    let paths: Vec<[u32; 2]> = (0..wide + 40)
        .map(|i| [(i >= wide) as u32, (i % wide) as u32])
        .collect();
    for metric in [Metric::Ip, Metric::L2] {
        let index = path_index(&cbs, &paths, metric);
        let tree = &index.tree;
        let big = (0..tree.depths[0].len())
            .max_by_key(|&j| tree.depths[0].children(j).len())
            .unwrap();
        let children = tree.depths[0].children(big);
        assert!(children.len() >= wide - 10, "{} children", children.len());
        let q = rand_matrix(&mut rng, 5, d);
        for w in [1, 100, 1024, 2048] {
            let s = ((w + 3072) / 2 / 64) | 1;
            let mut tr = ops::lookup_tables(&Reference, &q, &index.codebooks, metric).unwrap();
            let l1 = &mut tr.levels[0];
            for b in 0..q.rows() {
                l1.row_mut(b).fill(0.0);
                l1.row_mut(b)[tree.depths[0].code[big] as usize] = 1.0;
            }
            let l2 = &mut tr.levels[1];
            l2.row_mut(1).fill(0.0);
            for v in l2.row_mut(2) {
                *v = (*v * 2.0).round() / 2.0;
            }
            for (x, node) in children.clone().enumerate() {
                let code = tree.depths[1].code[node] as usize;
                let sampled = x % s == 0;
                l2.row_mut(3)[code] = if sampled {
                    1000.0
                } else {
                    rng.random_range(-1.0..1.0)
                };
                l2.row_mut(4)[code] = if sampled {
                    -1000.0
                } else {
                    rng.random_range(-1.0..1.0)
                };
            }
            for beams in [vec![1, w], vec![2, w]] {
                let c = ops::traverse(be, &tr, tree, &beams).unwrap();
                let cr = ops::traverse(&Reference, &tr, tree, &beams).unwrap();
                assert_eq!(c, cr, "traverse {beams:?} ({metric:?})");
            }
        }
    }
    // Four parents of 3 000 children each: a level table small enough for the beam step to
    // stage in shared memory (K ≤ 4096), children enough for the sample (≥ 4·(W + 3072)/2).
    let (parents, codes) = (4, 3000);
    let cbs = two_level_codebooks(&mut rng, parents, codes, d);
    let paths: Vec<[u32; 2]> = (0..parents * codes)
        .map(|i| [(i / codes) as u32, (i % codes) as u32])
        .collect();
    for metric in [Metric::Ip, Metric::L2] {
        let index = path_index(&cbs, &paths, metric);
        let q = rand_matrix(&mut rng, 3, d);
        let mut tr = ops::lookup_tables(&Reference, &q, &index.codebooks, metric).unwrap();
        tr.levels[1].row_mut(1).fill(0.0);
        for v in tr.levels[1].row_mut(2) {
            *v = (*v * 2.0).round() / 2.0;
        }
        for w in [1, 100, 1024, 2048] {
            let beams = vec![parents, w];
            let c = ops::traverse(be, &tr, &index.tree, &beams).unwrap();
            let cr = ops::traverse(&Reference, &tr, &index.tree, &beams).unwrap();
            assert_eq!(c, cr, "traverse {beams:?} over staged tables ({metric:?})");
        }
    }
}

/// Exact brute-force top-k equals the reference's, score bits included: tied and random
/// values, d below, across and not a multiple of the kernels' 8-element groups and 32-element
/// staging steps (d = 68: staged four dimensions at a time), sizes that are not multiples of 32, k = 1 … N + 5 (warp queues and radix
/// select), items fewer than k, an empty batch.
fn exact_topk_both_metrics(be: &dyn Backend) {
    let mut rng = rng("exact_topk_both_metrics");
    let bits = |t: &TopK| t.scores.iter().map(|s| s.to_bits()).collect::<Vec<_>>();
    for (n, d, tied) in [
        (203, 6, true),
        (700, 45, true),
        (301, 130, false),
        (517, 68, true),
        (3, 9, false),
    ] {
        let items = if tied {
            tied_matrix(&mut rng, n, d)
        } else {
            rand_matrix(&mut rng, n, d)
        };
        let q = if tied {
            tied_matrix(&mut rng, 33, d)
        } else {
            rand_matrix(&mut rng, 7, d)
        };
        for metric in [Metric::Ip, Metric::L2] {
            for k in [1, 20, 257, n, n + 5] {
                let got = ops::exact_topk(be, &q, &items, metric, k).unwrap();
                let want = ops::exact_topk(&Reference, &q, &items, metric, k).unwrap();
                let what = format!("exact top-{k} of {n} x {d} ({metric:?})");
                assert_eq!(got, want, "{what}");
                assert_eq!(bits(&got), bits(&want), "{what}: score bits");
            }
        }
    }
    let items = rand_matrix(&mut rng, 10, 6);
    let none = ops::exact_topk(be, &Matrix::zeros(0, 6), &items, Metric::Ip, 3).unwrap();
    assert_eq!(none.rows, 0);
}

/// Search on every backend against the reference. The kernel backends run it on the device
/// (`search_on_device`: tables, traversal, fused lookup and re-rank of a fixed shortlist
/// without host round trips) except when every candidate is re-ranked or level-1 scores come
/// from the caller, which compose the operations.
fn search_pipeline(be: &dyn Backend) {
    let mut rng = rng("search_pipeline");
    for metric in [Metric::L2, Metric::Ip] {
        let (index, _, _) = rand_index(&mut rng, 321, 12, 2, 19, metric, EmbeddingKind::F32);
        let q = rand_matrix(&mut rng, 11, 12);
        for (k, beams, rerank) in [
            (25, vec![4, 16], Rerank::None),
            (25, vec![4, 16], Rerank::Exact { rerank_k: None }),
            (25, vec![2, 9], Rerank::Exact { rerank_k: Some(25) }),
            (
                7,
                vec![19],
                Rerank::Exact {
                    rerank_k: Some(600),
                },
            ),
            (600, vec![19, 400], Rerank::None),
            (1, vec![1, 1], Rerank::None),
        ] {
            let p = SearchParams { k, beams, rerank };
            let got = search(be, &index, &q, None, &p).unwrap();
            let want = search(&Reference, &index, &q, None, &p).unwrap();
            assert_eq!(got.candidates, want.candidates, "{p:?}");
            assert_topk_close(&got.topk, &want.topk, 1e-5, "search");
            let on_device = be.search_on_device(&index, &q, &p).unwrap();
            let expected = be.name() != "reference" && rerank != (Rerank::Exact { rerank_k: None });
            assert_eq!(on_device.is_some(), expected, "{} {p:?}", be.name());
        }
        let level1 = rand_matrix(&mut rng, 11, index.tree.depths[0].len());
        let p = SearchParams {
            k: 10,
            beams: vec![3, 12],
            rerank: Rerank::None,
        };
        let got = search(be, &index, &q, Some(&level1), &p).unwrap();
        let want = search(&Reference, &index, &q, Some(&level1), &p).unwrap();
        assert_eq!(got.candidates, want.candidates, "level-1 scores");
        assert_topk_close(&got.topk, &want.topk, 1e-5, "search with level-1 scores");
        let none = search(be, &index, &Matrix::zeros(0, 12), None, &p).unwrap();
        assert_eq!((none.topk.rows, none.candidates.len()), (0, 0));
    }
    // Re-ranking an index without embeddings is an error on the device path too (called
    // directly, without `search`'s own check).
    let (bare, _, _) = rand_index(&mut rng, 100, 12, 2, 7, Metric::Ip, EmbeddingKind::None);
    let q = rand_matrix(&mut rng, 3, 12);
    let p = SearchParams {
        k: 5,
        beams: vec![3, 9],
        rerank: Rerank::Exact { rerank_k: Some(20) },
    };
    let direct = be.search_on_device(&bare, &q, &p);
    if be.name() == "reference" {
        assert!(direct.unwrap().is_none());
    } else {
        assert!(direct.is_err(), "{}: re-rank without embeddings", be.name());
    }
    // Large tables (2 × 4096 codes: Σ K > 7680) with a large k: the fused lookup reads the
    // tables from global memory when they do not fit beside the selector.
    let (big, _, _) = rand_index(&mut rng, 3000, 8, 2, 4096, Metric::L2, EmbeddingKind::None);
    let q = rand_matrix(&mut rng, 3, 8);
    let p = SearchParams {
        k: 2000,
        beams: vec![64, 2048],
        rerank: Rerank::None,
    };
    let got = search(be, &big, &q, None, &p).unwrap();
    let want = search(&Reference, &big, &q, None, &p).unwrap();
    assert_eq!(got.candidates, want.candidates, "large tables");
    assert_topk_close(&got.topk, &want.topk, 1e-5, "search over large tables");
}

/// DESIGN §4 on the whole search, strictly (not within a tolerance): equal scores rank the
/// lower caller id first in the fused lookup, the re-rank (of every candidate and of a
/// shortlist) and the traversal (lower node id), on both metrics. Level 1 is ±e0, e1 and
/// level 2 ±e2, ±e3: every path's reconstruction is stored twice, under ids that do not
/// follow the code order, and a query without e2, e3 parts ties the 8 items of a depth-1 node
/// across 4 codes (ranking by position in code order picks 100, 107, 114, 121, 104). Caller
/// level-1 scores 1, 2, -5 with LUT_2 = 1, -1, 0, 0 tie node 0 (child of the second-kept
/// parent) with nodes 6 and 7 (children of the first): node 0 must be kept. A zero query, and
/// level-1 scores of ±0, tie every node.
fn search_ties_follow_caller_ids(be: &dyn Backend) {
    let words = |v: &[[f32; 4]]| Matrix::new(v.len(), 4, v.concat()).unwrap();
    let cbs = Codebooks::from_matrices(vec![
        words(&[[1., 0., 0., 0.], [0., 1., 0., 0.], [-1., 0., 0., 0.]]),
        words(&[
            [0., 0., 1., 0.],
            [0., 0., -1., 0.],
            [0., 0., 0., 1.],
            [0., 0., 0., -1.],
        ]),
    ])
    .unwrap();
    let rows: Vec<f32> = (0..24u32)
        .flat_map(|r| cbs.reconstruct(&[r / 8, r / 2 % 4]))
        .collect();
    let items = Matrix::new(24, 4, rows).unwrap();
    let ids: Vec<i64> = (0..24).map(|r| r * 7 % 24 + 100).collect();
    let params = |k, beams, rerank| SearchParams { k, beams, rerank };
    for metric in [Metric::Ip, Metric::L2] {
        let opts = BuildOptions {
            metric,
            ..BuildOptions::default()
        };
        let index = build(
            &Reference,
            &items,
            Some(ids.clone()),
            Some(cbs.clone()),
            &opts,
        )
        .unwrap();
        let q = Matrix::new(1, 4, vec![0.5, 0.25, 0.0, 0.0]).unwrap();
        for rerank in [
            Rerank::None,
            Rerank::Exact { rerank_k: None },
            Rerank::Exact { rerank_k: Some(6) },
        ] {
            let got = search(be, &index, &q, None, &params(5, vec![3, 12], rerank)).unwrap();
            let want = [100, 101, 104, 107, 111];
            assert_eq!(got.topk.row_ids(0), want, "{metric:?}, {rerank:?}");
        }
        let q = Matrix::new(1, 4, vec![0.0, 0.0, 1.0, 0.0]).unwrap();
        let level1 = Matrix::new(1, 3, vec![1.0, 2.0, -5.0]).unwrap();
        let got = search(
            be,
            &index,
            &q,
            Some(&level1),
            &params(4, vec![2, 2], Rerank::None),
        );
        assert_eq!(
            got.unwrap().topk.row_ids(0),
            [108, 115, 100, 107],
            "{metric:?}: tied nodes under different parents"
        );
        let zero = Matrix::zeros(1, 4);
        let signed = Matrix::new(1, 3, vec![-0.0, 0.0, -0.0]).unwrap();
        for level1 in [None, Some(&signed)] {
            let got = search(
                be,
                &index,
                &zero,
                level1,
                &params(3, vec![1, 1], Rerank::None),
            );
            assert_eq!(
                got.unwrap().topk.row_ids(0),
                [100, 107, -1],
                "{metric:?}: every node tied, level-1 scores {level1:?}"
            );
        }
    }
}

/// Repeated calls on an index modified in place (same allocations, new contents) never see
/// the previous contents; an index kept resident gives the same results as the reference.
fn resident_copies_follow_changes(be: &dyn Backend) {
    let mut rng = rng("resident_copies_follow_changes");
    let (mut index, _, _) = rand_index(&mut rng, 257, 10, 2, 13, Metric::L2, EmbeddingKind::F32);
    let q = rand_matrix(&mut rng, 9, 10);
    let beams = [3, 8];
    let check = |index: &Index, round: usize| {
        let t = ops::lookup_tables(&Reference, &q, &index.codebooks, Metric::L2).unwrap();
        let c = be.traverse(&t, &index.tree, &beams).unwrap();
        let cr = Reference.traverse(&t, &index.tree, &beams).unwrap();
        assert_eq!(c, cr, "traverse, round {round}");
        let f = be.fused_topk(&t, index, &cr, 20).unwrap();
        let fr = Reference.fused_topk(&t, index, &cr, 20).unwrap();
        assert_topk_close(&f, &fr, 1e-5, &format!("fused top-k, round {round}"));
        let (off, pos) = fr.to_csr();
        let e = index.embeddings.as_ref().unwrap();
        let r = be
            .rerank(&q, e, &index.ids, Metric::L2, &off, &pos, 7)
            .unwrap();
        let rr = Reference
            .rerank(&q, e, &index.ids, Metric::L2, &off, &pos, 7)
            .unwrap();
        assert_topk_close(&r, &rr, 1e-5, &format!("rerank, round {round}"));
    };
    for round in 0..3 {
        check(&index, round);
        check(&index, round);
        for v in &mut index.item_norms {
            *v = *v * 1.5 + 0.25;
        }
        index.ids.reverse();
        for v in &mut index.tree.depths[0].centroid_norm {
            *v *= 3.0;
        }
        match &mut index.embeddings {
            Some(Embeddings::F32(m)) => m.data_mut().iter_mut().for_each(|v| *v = -*v),
            _ => panic!("the test index keeps f32 embeddings"),
        }
    }
    let pinned = Arc::new(index);
    be.keep_resident(Resident::Index(Arc::clone(&pinned)))
        .unwrap();
    check(&pinned, 3);
    check(&pinned, 4);
    be.release_resident().unwrap();
    check(&pinned, 5);
}

/// One backend shared by several threads, as a serving stack shares it between requests:
/// searches (with and without re-rank, two indexes, one of them pinned resident half way),
/// greedy encodings and exact top-k run at the same time from four threads, each result
/// equal to the same call made alone beforehand. Catches per-call state shared between
/// calls (scratch buffers, staging memory, cache entries evicted while in use).
fn concurrent_calls_agree(be: &dyn Backend) {
    let mut rng = rng("concurrent_calls_agree");
    let (a, _, _) = rand_index(&mut rng, 611, 12, 2, 9, Metric::L2, EmbeddingKind::F32);
    let (b, items_b, _) = rand_index(&mut rng, 403, 12, 3, 5, Metric::Ip, EmbeddingKind::Bf16);
    let (a, b) = (Arc::new(a), Arc::new(b));
    let exact = SearchParams {
        k: 10,
        beams: vec![3, 20],
        rerank: Rerank::Exact { rerank_k: None },
    };
    let lookup = SearchParams {
        k: 7,
        beams: vec![2, 6, 12],
        rerank: Rerank::None,
    };
    let queries: Vec<Matrix> = (0..8)
        .map(|i| rand_matrix(&mut rng, 5 + 9 * i, 12))
        .collect();
    /// One call of the mix: job `j` on queries `q`, its result as comparable values.
    #[derive(Debug, PartialEq)]
    enum Out {
        TopK(TopK),
        Encoding(Vec<u32>, Vec<u32>),
    }
    let call = |j: usize, q: &Matrix| -> Out {
        match j % 4 {
            0 => Out::TopK(search(be, &a, q, None, &exact).unwrap().topk),
            1 => Out::TopK(search(be, &b, q, None, &lookup).unwrap().topk),
            2 => {
                let e = ops::encode(be, q, &b.codebooks, 1).unwrap();
                Out::Encoding(e.codes, e.error.iter().map(|v| v.to_bits()).collect())
            }
            _ => Out::TopK(ops::exact_topk(be, q, &items_b, Metric::Ip, 6).unwrap()),
        }
    };
    let alone: Vec<Out> = queries
        .iter()
        .enumerate()
        .map(|(j, q)| call(j, q))
        .collect();
    for round in 0..2 {
        if round == 1 {
            be.keep_resident(Resident::Index(Arc::clone(&a))).unwrap();
        }
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|t| {
                    let (queries, alone, call) = (&queries, &alone, &call);
                    s.spawn(move || {
                        for rep in 0..3 {
                            for i in 0..queries.len() {
                                let j = (i + t + rep) % queries.len();
                                let got = call(j, &queries[j]);
                                assert!(
                                    got == alone[j],
                                    "round {round}, thread {t}, job {j}: {got:?} vs {:?}",
                                    alone[j]
                                );
                            }
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
        });
    }
    be.release_resident().unwrap();
}

/// Codebooks kept on the device as f16 or bf16 (`be` stores them as `storage`): lookup tables,
/// assignment (greedy and top-m) and encoding (greedy and beam) equal the reference's on the
/// codebooks rounded to `storage`, within the f32 tolerances; a value outside the format's
/// range is an error.
#[cfg(any(feature = "emu", feature = "cuda"))]
fn codebook_storage(be: &dyn Backend, storage: Storage) {
    let mut rng = rng("codebook_storage");
    let round = |cbs: &Codebooks| {
        Codebooks::new(
            cbs.iter()
                .map(|cb| storage.round_codebook(cb).unwrap())
                .collect(),
        )
        .unwrap()
    };
    for (levels, k, d) in [(2, 23, 11), (3, 40, 33), (1, 300, 8)] {
        let cbs = rand_codebooks(&mut rng, levels, k, d);
        let rounded = round(&cbs);
        assert_ne!(
            rounded, cbs,
            "{storage:?} rounding changes random codebooks"
        );
        let q = rand_matrix(&mut rng, 37, d);
        for metric in [Metric::Ip, Metric::L2] {
            let t = ops::lookup_tables(be, &q, &cbs, metric).unwrap();
            let tr = ops::lookup_tables(&Reference, &q, &rounded, metric).unwrap();
            for (g, w) in t.levels.iter().zip(&tr.levels) {
                rel_close(g.data(), w.data(), 1e-5, "lookup table");
            }
        }
        let x = rand_matrix(&mut rng, 67, d);
        for beam in [1, 4] {
            let got = ops::encode(be, &x, &cbs, beam).unwrap();
            let want = ops::encode(&Reference, &x, &rounded, beam).unwrap();
            encodings_agree(&got, &want, &format!("beam {beam}"));
        }
        let cb = cbs.level(0);
        let rcb = rounded.level(0);
        for opts in [
            AssignOptions::default(),
            AssignOptions {
                top_m: 1,
                alpha: None,
                residual: true,
            },
            AssignOptions {
                top_m: 3,
                alpha: Some(0.5),
                residual: true,
            },
        ] {
            let got = ops::assign(be, &x, cb, &opts).unwrap();
            let want = ops::assign(&Reference, &x, rcb, &opts).unwrap();
            let logit = |row: usize, c: u32| {
                2.0 * rqtree::matrix::dot(x.row(row), rcb.word(c as usize))
                    - rcb.norms()[c as usize]
            };
            codes_agree(&got.codes, &want.codes, logit, opts.top_m);
            rel_close(&got.logits, &want.logits, 1e-5, "logits");
            if let (Some(g), Some(w)) = (&got.residual, &want.residual) {
                if got.codes == want.codes {
                    rel_close(g.data(), w.data(), 1e-5, "residual");
                }
            }
        }
    }
    // 1e6 is finite in f32 and bf16, infinite in f16.
    let mut big = rand_matrix(&mut rng, 4, 3);
    big.data_mut()[5] = 1.0e6;
    let cbs = Codebooks::from_matrices(vec![big]).unwrap();
    let q = rand_matrix(&mut rng, 2, 3);
    let r = ops::lookup_tables(be, &q, &cbs, Metric::Ip);
    match storage {
        Storage::F16 => {
            let e = r.unwrap_err().to_string();
            assert!(e.contains("F16"), "{e}");
        }
        _ => {
            r.unwrap();
        }
    }
}

/// Options of a kernel backend under test.
#[cfg(any(feature = "emu", feature = "cuda"))]
#[derive(Clone, Copy)]
struct KernelOpts {
    storage: Storage,
    tensor_cores: bool,
    fused: FusedKernel,
}

#[cfg(any(feature = "emu", feature = "cuda"))]
impl KernelOpts {
    const DEFAULT: KernelOpts = KernelOpts {
        storage: Storage::F32,
        tensor_cores: false,
        fused: FusedKernel::Auto,
    };
    fn configure<D: rqtree::device::Device>(self, b: KernelBackend<D>) -> KernelBackend<D> {
        b.with_codebook_storage(self.storage)
            .with_tensor_cores(self.tensor_cores)
            .with_fused_kernel(self.fused)
    }
}

/// A kernel backend on `kind`'s device with options `o`, or why it is skipped.
#[cfg(any(feature = "emu", feature = "cuda"))]
fn kernel_backend(kind: BackendKind, o: KernelOpts) -> Option<Box<dyn Backend>> {
    // Opening through `backend::open` first gives the uniform SKIP/REQUIRE_GPU behaviour.
    open(kind)?;
    match kind {
        #[cfg(feature = "emu")]
        BackendKind::Emu => Some(Box::new(
            o.configure(KernelBackend::new(rqtree::device::emu::EmuDevice::new())),
        )),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => Some(Box::new(o.configure(KernelBackend::new(
            rqtree::device::cuda::CudaDevice::open().unwrap(),
        )))),
        _ => unreachable!("these are options of the kernel backends"),
    }
}

/// The kernel backends' options: codebook storage, the greedy screening on the tensor cores
/// (its results must equal the reference's bit for bit, as the FMA screening's), and each
/// fused lookup + top-k kernel forced over every fused test body.
macro_rules! options_suite {
    ($name:ident, $kind:expr) => {
        mod $name {
            use super::*;

            fn with(o: impl FnOnce(&mut KernelOpts)) -> Option<Box<dyn Backend>> {
                let mut opts = KernelOpts::DEFAULT;
                o(&mut opts);
                kernel_backend($kind, opts)
            }

            #[test]
            fn codebook_storage_f16() {
                if let Some(b) = with(|o| o.storage = Storage::F16) {
                    super::codebook_storage(b.as_ref(), Storage::F16);
                }
            }
            #[test]
            fn codebook_storage_bf16() {
                if let Some(b) = with(|o| o.storage = Storage::Bf16) {
                    super::codebook_storage(b.as_ref(), Storage::Bf16);
                }
            }
            #[test]
            fn tensor_core_screening() {
                if let Some(b) = with(|o| o.tensor_cores = true) {
                    super::greedy_is_exact(b.as_ref());
                    super::assign_levels(b.as_ref());
                    super::encode_greedy_and_beam(b.as_ref());
                }
                let bf16_tc = |o: &mut KernelOpts| {
                    o.storage = Storage::Bf16;
                    o.tensor_cores = true;
                };
                if let Some(b) = with(bf16_tc) {
                    super::codebook_storage(b.as_ref(), Storage::Bf16);
                }
            }
            #[test]
            fn fused_scan_kernel() {
                if let Some(b) = with(|o| o.fused = FusedKernel::Scan) {
                    super::fused_long_ranges(b.as_ref());
                    super::fused_and_traversal_many_rounds(b.as_ref());
                    super::tables_traversal_fused_and_rerank(b.as_ref());
                    super::search_pipeline(b.as_ref());
                }
            }
            #[test]
            fn fused_walk_kernel() {
                if let Some(b) = with(|o| o.fused = FusedKernel::Walk) {
                    super::fused_long_ranges(b.as_ref());
                    super::search_pipeline(b.as_ref());
                }
            }
        }
    };
}

#[cfg(feature = "emu")]
options_suite!(emu_options, BackendKind::Emu);
#[cfg(feature = "cuda")]
options_suite!(cuda_options, BackendKind::Cuda);

/// One `#[test]` per body, each opening backend `$kind` (or printing why it is skipped).
macro_rules! backend_suite {
    ($name:ident, $kind:expr, [$($body:ident),* $(,)?]) => {
        mod $name {
            use super::*;
            $(
                #[test]
                fn $body() {
                    if let Some(b) = open($kind) {
                        super::$body(b.as_ref());
                    }
                }
            )*
        }
    };
    ($name:ident, $kind:expr) => {
        backend_suite!($name, $kind, [
            topk_rows_and_segments,
            assign_levels,
            encode_greedy_and_beam,
            greedy_is_exact,
            lookup_tables_exact,
            tables_traversal_fused_and_rerank,
            fused_and_traversal_many_rounds,
            fused_long_ranges,
            traversal_wide_beams_and_ties,
            traversal_sampled_threshold,
            exact_topk_both_metrics,
            resident_copies_follow_changes,
            concurrent_calls_agree,
            search_pipeline,
            search_ties_follow_caller_ids,
            out_of_range_inputs_are_errors,
        ]);
    };
}

backend_suite!(reference, BackendKind::Reference);
#[cfg(feature = "emu")]
backend_suite!(emu, BackendKind::Emu);
#[cfg(feature = "cuda")]
backend_suite!(cuda, BackendKind::Cuda);
