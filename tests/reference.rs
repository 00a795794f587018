//! The reference backend against brute force on small random inputs: sizes that are not
//! multiples of 32, exact ties, k = 1 and k = n, empty batches.

mod common;

use common::*;
use rand::Rng;
use rqtree::backend::{AssignOptions, Backend};
use rqtree::index::{Codebook, EmbeddingKind};
use rqtree::matrix::Matrix;
use rqtree::metric::Metric;
use rqtree::ops;
use rqtree::reference::Reference;
use rqtree::topk::TopK;

const BE: &Reference = &Reference;

#[test]
fn topk_matches_full_sort_with_ties_and_all_k() {
    let mut rng = rng("topk_matches_full_sort_with_ties_and_all_k");
    for &(rows, n) in &[(1, 1), (3, 37), (5, 100), (2, 257)] {
        let m = tied_matrix(&mut rng, rows, n);
        for k in [1, 2, n / 2 + 1, n, n + 3] {
            let got = ops::topk(BE, &m, k).unwrap();
            for r in 0..rows {
                let all: Vec<(f32, i64)> = m
                    .row(r)
                    .iter()
                    .enumerate()
                    .map(|(j, &v)| (v, j as i64))
                    .collect();
                let want = brute_topk(&all, k);
                for (j, &(s, id)) in want.iter().enumerate() {
                    assert_eq!(got.row_scores(r)[j], s);
                    assert_eq!(got.row_ids(r)[j], id, "tie must go to the lower id");
                }
                for j in want.len()..k {
                    assert_eq!(got.row_ids(r)[j], -1);
                    assert_eq!(got.row_scores(r)[j], f32::NEG_INFINITY);
                }
            }
        }
    }
    let empty = ops::topk(BE, &Matrix::zeros(0, 5), 3).unwrap();
    assert_eq!(empty, TopK::empty(0, 3));
}

#[test]
fn segmented_topk_matches_per_segment_sort() {
    let mut rng = rng("segmented_topk_matches_per_segment_sort");
    let lens = [0usize, 1, 33, 5, 0, 70];
    let mut offsets = vec![0];
    for l in lens {
        offsets.push(offsets.last().unwrap() + l);
    }
    let values = tied_matrix(&mut rng, 1, *offsets.last().unwrap());
    for k in [1, 4, 70] {
        let got = ops::segmented_topk(BE, values.data(), &offsets, k).unwrap();
        for (s, w) in offsets.windows(2).enumerate() {
            let seg: Vec<(f32, i64)> = values.data()[w[0]..w[1]]
                .iter()
                .enumerate()
                .map(|(j, &v)| (v, j as i64))
                .collect();
            let want = brute_topk(&seg, k);
            let got_row: Vec<(f32, i64)> = got
                .row_scores(s)
                .iter()
                .zip(got.row_ids(s))
                .take(want.len())
                .map(|(&a, &b)| (a, b))
                .collect();
            assert_eq!(got_row, want, "segment {s}, k {k}");
        }
    }
}

#[test]
fn assign_is_nearest_codeword_with_topm_soft_and_residual() {
    let mut rng = rng("assign_is_nearest_codeword_with_topm_soft_and_residual");
    for &(n, k, d) in &[(0, 5, 3), (45, 37, 19), (10, 1, 4), (70, 100, 33)] {
        let r = rand_matrix(&mut rng, n, d);
        let cb = Codebook::new(rand_matrix(&mut rng, k, d), "cb").unwrap();
        let m = k.min(3);
        let opts = AssignOptions {
            top_m: m,
            alpha: Some(2.5),
            residual: true,
        };
        let a = ops::assign(BE, &r, &cb, &opts).unwrap();
        let soft = a.soft.as_ref().unwrap();
        let res = a.residual.as_ref().unwrap();
        for i in 0..n {
            let dist: Vec<(f32, i64)> = (0..k)
                .map(|c| {
                    let dd: f64 = r
                        .row(i)
                        .iter()
                        .zip(cb.word(c))
                        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
                        .sum();
                    (-dd as f32, c as i64)
                })
                .collect();
            let want = brute_topk(&dist, m);
            for (j, &(wd, wc)) in want.iter().enumerate() {
                let got = a.codes[i * m + j] as i64;
                if got != wc {
                    let lg = dist[got as usize].0;
                    assert!((lg - wd).abs() <= 1e-5 * (1.0 + lg.abs()), "row {i}");
                }
            }
            let logit: Vec<f64> = (0..k)
                .map(|c| 2.0 * dot64(r.row(i), cb.word(c)) - dot64(cb.word(c), cb.word(c)))
                .collect();
            let mx = logit.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = logit.iter().map(|&l| (2.5 * (l - mx)).exp()).sum();
            for (c, &l) in logit.iter().enumerate() {
                let p = (2.5 * (l - mx)).exp() / z;
                assert!(
                    (soft.row(i)[c] as f64 - p).abs() < 1e-5,
                    "soft weight {i},{c}"
                );
            }
            let code = a.codes[i * m] as usize;
            for j in 0..d {
                assert!((res.row(i)[j] - (r.row(i)[j] - cb.word(code)[j])).abs() < 1e-6);
            }
        }
    }
}

#[test]
fn assign_ties_go_to_the_lowest_code() {
    let cb = Codebook::new(
        Matrix::new(4, 2, vec![1.0, 0.0, 0.0, 1.0, 1.0, 0.0, -1.0, 0.0]).unwrap(),
        "cb",
    )
    .unwrap();
    // (0.5, 0.5) is equidistant from words 0, 1 and 2.
    let r = Matrix::new(1, 2, vec![0.5, 0.5]).unwrap();
    let a = ops::assign(
        BE,
        &r,
        &cb,
        &AssignOptions {
            top_m: 3,
            ..AssignOptions::default()
        },
    )
    .unwrap();
    assert_eq!(a.codes, vec![0, 1, 2]);
}

#[test]
fn greedy_one_level_encoding_is_the_nearest_codeword() {
    let mut rng = rng("greedy_one_level_encoding_is_the_nearest_codeword");
    let cbs = rand_codebooks(&mut rng, 1, 53, 11);
    let x = rand_matrix(&mut rng, 77, 11);
    let enc = ops::encode(BE, &x, &cbs, 1).unwrap();
    for i in 0..77 {
        let dist = |c: usize| -> f64 {
            x.row(i)
                .iter()
                .zip(cbs.level(0).word(c))
                .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                .sum()
        };
        let best = (0..53)
            .min_by(|&a, &b| dist(a).total_cmp(&dist(b)))
            .unwrap();
        let got = enc.codes[i] as usize;
        assert!(got == best || (dist(got) - dist(best)).abs() <= 1e-5 * (1.0 + dist(best)));
        assert!((enc.error[i] as f64 - dist(got)).abs() <= 1e-4 * (1.0 + dist(got)));
    }
}

#[test]
fn beam_encoding_never_worse_than_greedy() {
    let mut rng = rng("beam_encoding_never_worse_than_greedy");
    // Two levels: the greedy path is always among the beam's final candidates, so the beam's
    // error is never higher per item.
    let cbs = rand_codebooks(&mut rng, 2, 23, 9);
    let x = rand_matrix(&mut rng, 101, 9);
    let greedy = ops::encode(BE, &x, &cbs, 1).unwrap();
    for beam in [2, 4, 16] {
        let b = ops::encode(BE, &x, &cbs, beam).unwrap();
        for i in 0..101 {
            assert!(
                b.error[i] <= greedy.error[i] * (1.0 + 1e-6) + 1e-7,
                "item {i}"
            );
        }
    }
    // Three levels: per-item dominance is not guaranteed by beam search; the mean is.
    let cbs = rand_codebooks(&mut rng, 3, 17, 9);
    let greedy = ops::encode(BE, &x, &cbs, 1).unwrap();
    let b = ops::encode(BE, &x, &cbs, 8).unwrap();
    let mean = |e: &[f32]| e.iter().map(|&v| v as f64).sum::<f64>() / e.len() as f64;
    assert!(mean(&b.error) <= mean(&greedy.error));
}

#[test]
fn lookup_tables_are_inner_products() {
    let mut rng = rng("lookup_tables_are_inner_products");
    let cbs = rand_codebooks(&mut rng, 3, 29, 13);
    let q = rand_matrix(&mut rng, 7, 13);
    let t = ops::lookup_tables(BE, &q, &cbs, Metric::L2).unwrap();
    for (l, cb) in cbs.iter().enumerate() {
        for b in 0..7 {
            for k in 0..29 {
                let want = dot64(q.row(b), cb.word(k));
                assert!((t.get(b, l, k as u32) as f64 - want).abs() < 1e-5);
            }
        }
    }
    for b in 0..7 {
        assert!((t.qnorm[b] as f64 - dot64(q.row(b), q.row(b))).abs() < 1e-5);
    }
}

#[test]
fn exact_topk_matches_brute_force_for_both_metrics() {
    let mut rng = rng("exact_topk_matches_brute_force_for_both_metrics");
    let items = tied_matrix(&mut rng, 61, 5);
    let q = tied_matrix(&mut rng, 4, 5);
    for metric in [Metric::Ip, Metric::L2] {
        for k in [1, 10, 61] {
            let got = ops::exact_topk(BE, &q, &items, metric, k).unwrap();
            for b in 0..4 {
                let all: Vec<(f32, i64)> = (0..61)
                    .map(|i| {
                        let s = match metric {
                            Metric::Ip => dot64(q.row(b), items.row(i)),
                            Metric::L2 => -q
                                .row(b)
                                .iter()
                                .zip(items.row(i))
                                .map(|(&a, &c)| (a as f64 - c as f64).powi(2))
                                .sum::<f64>(),
                        };
                        (s as f32, i as i64)
                    })
                    .collect();
                let want = brute_topk(&all, k);
                let got_row: Vec<(f32, i64)> = got
                    .row_scores(b)
                    .iter()
                    .zip(got.row_ids(b))
                    .map(|(&s, &i)| (s, i))
                    .collect();
                assert_eq!(got_row, want, "{metric:?} k={k} query {b}");
            }
        }
    }
}

#[test]
fn fused_lookup_and_traversal_match_brute_force() {
    let mut rng = rng("fused_lookup_and_traversal_match_brute_force");
    for metric in [Metric::Ip, Metric::L2] {
        let (index, _, _) = rand_index(&mut rng, 203, 10, 2, 7, metric, EmbeddingKind::None);
        let q = rand_matrix(&mut rng, 5, 10);
        let t = ops::lookup_tables(BE, &q, &index.codebooks, metric).unwrap();
        let n1 = index.tree.depths[0].len();
        let n2 = index.tree.depths[1].len();
        // Beam keeping one depth-1 node: its items are exactly the best node's items.
        let c = ops::traverse(BE, &t, &index.tree, &[1]).unwrap();
        for b in 0..5 {
            let d1 = &index.tree.depths[0];
            let node_scores: Vec<(f32, i64)> = (0..n1)
                .map(|j| {
                    let cen = index.codebooks.reconstruct(&[d1.code[j]]);
                    let s = match metric {
                        Metric::Ip => dot64(q.row(b), &cen),
                        Metric::L2 => -q
                            .row(b)
                            .iter()
                            .zip(&cen)
                            .map(|(&a, &c)| (a as f64 - c as f64).powi(2))
                            .sum::<f64>(),
                    };
                    (s as f32, j as i64)
                })
                .collect();
            let best = brute_topk(&node_scores, 1)[0];
            let got = c.nodes_of(b)[0] as usize;
            assert!(
                got as i64 == best.1
                    || (node_scores[got].0 - best.0).abs() <= 1e-5 * (1.0 + best.0.abs())
            );
        }
        // Full beam: every item is a candidate; the fused top-k is the brute-force top-k.
        let c = ops::traverse(BE, &t, &index.tree, &[n1, n2]).unwrap();
        for k in [1, 17, 203] {
            let got = BE.fused_topk(&t, &index, &c, k).unwrap();
            let mut mapped = got.clone();
            mapped
                .ids
                .iter_mut()
                .filter(|i| **i >= 0)
                .for_each(|i| *i = index.ids[*i as usize]);
            let rows: Vec<Vec<(f32, i64)>> = (0..5)
                .map(|b| brute_topk(&recon_scores(&index, q.row(b)), k))
                .collect();
            let want = TopK::from_rows(k, rows);
            assert_topk_close(&mapped, &want, 1e-5, "fused top-k");
        }
    }
}

#[test]
fn segments_with_random_lengths_including_empty_batches() {
    let mut rng = rng("segments_with_random_lengths_including_empty_batches");
    assert_eq!(ops::segmented_topk(BE, &[], &[0], 3).unwrap().rows, 0);
    let got = ops::segmented_topk(BE, &[], &[0, 0], 3).unwrap();
    assert_eq!(got.rows, 1);
    assert!(got.ids.iter().all(|&i| i == -1));
    let n = rng.random_range(1..200);
    let v = rand_matrix(&mut rng, 1, n);
    let got = ops::segmented_topk(BE, v.data(), &[0, n], n).unwrap();
    let mut sorted = v.data().to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    assert_eq!(got.scores, sorted);
}
