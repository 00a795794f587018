//! Test-time-training data (DESIGN §7) against a brute-force computation, its bad input, and
//! the `learn` / `ttt` subcommands end to end.

mod common;

use std::collections::BTreeMap;

use common::*;
use rand::Rng;
use rqtree::index::{EmbeddingKind, Index};
use rqtree::metric::Metric;
use rqtree::npy;
use rqtree::ttt::{to_rows, ttt_pairs};

/// Brute force: for every user and every node of `depth`, scan all engagements.
fn brute(index: &Index, engagements: &[i64], depth: usize, rate: f64) -> Vec<[i64; 4]> {
    let dep = &index.tree.depths[depth - 1];
    let mut users: Vec<i64> = engagements.chunks(2).map(|e| e[0]).collect();
    users.sort_unstable();
    users.dedup();
    let mut out = Vec::new();
    for &u in &users {
        let mine: Vec<i64> = engagements
            .chunks(2)
            .filter(|e| e[0] == u)
            .map(|e| e[1])
            .collect();
        for j in 0..dep.len() {
            let under = mine
                .iter()
                .filter(|&&id| dep.items(j).any(|p| index.ids[p] == id))
                .count();
            if under > 0 && under as f64 / mine.len() as f64 >= rate {
                let rep = index.ids[dep.representative[j] as usize];
                out.push([u, depth as i64, j as i64, rep]);
            }
        }
    }
    out
}

#[test]
fn ttt_matches_brute_force() {
    let mut rng = rng("ttt_matches_brute_force");
    let (index, _, ids) = rand_index(&mut rng, 300, 6, 3, 4, Metric::Ip, EmbeddingKind::None);
    let users = 12usize;
    for &rate in &[1.0, 0.5, 0.4, 0.25, 0.01] {
        // Users concentrated on a few items (so some nodes pass high rates), duplicates kept.
        let mut e = Vec::new();
        for u in 0..users {
            let favourite: Vec<i64> = (0..3)
                .map(|_| ids[rng.random_range(0..ids.len())])
                .collect();
            for _ in 0..rng.random_range(1..15) {
                let id = if rng.random_bool(0.7) {
                    favourite[rng.random_range(0..3)]
                } else {
                    ids[rng.random_range(0..ids.len())]
                };
                e.extend_from_slice(&[u as i64, id]);
            }
        }
        for depth in 1..=3 {
            let got = ttt_pairs(&index, users, &e, depth, rate).unwrap();
            let want = brute(&index, &e, depth, rate);
            let rows = to_rows(&got);
            assert_eq!(rows.len(), want.len() * 4, "depth {depth}, rate {rate}");
            for (g, w) in rows.chunks(4).zip(&want) {
                assert_eq!(g, w, "depth {depth}, rate {rate}");
            }
            for p in &got {
                assert!(p.share >= rate && p.share <= 1.0);
            }
            if rate == 0.01 {
                // Every engaged node is kept; shares of a user sum to 1.
                let mut sums: BTreeMap<i64, f64> = BTreeMap::new();
                for p in &got {
                    *sums.entry(p.user_row).or_default() += p.share;
                }
                for s in sums.values() {
                    assert!((s - 1.0).abs() < 1e-9);
                }
            }
        }
    }
    assert!(ttt_pairs(&index, users, &[], 2, 0.5).unwrap().is_empty());
}

#[test]
fn ttt_bad_input_is_an_error() {
    let mut rng = rng("ttt_bad_input_is_an_error");
    let (index, _, ids) = rand_index(&mut rng, 50, 4, 2, 3, Metric::Ip, EmbeddingKind::None);
    let absent = ids.iter().max().unwrap() + 1;
    let msg = |r: rqtree::Result<_>| match r {
        Err(e) => e.to_string(),
        Ok(_) => panic!("expected an error"),
    };
    let e = [0, ids[0], 1, ids[1]];
    assert!(msg(ttt_pairs(&index, 2, &e, 0, 0.5)).contains("depth 0 outside 1..=2"));
    assert!(msg(ttt_pairs(&index, 2, &e, 3, 0.5)).contains("depth 3"));
    for rate in [0.0, -0.1, 1.5, f64::NAN] {
        assert!(msg(ttt_pairs(&index, 2, &e, 1, rate)).contains("interest rate"));
    }
    assert!(
        msg(ttt_pairs(&index, 2, &[0, ids[0], 1, absent], 1, 0.5)).contains(&format!(
            "engagements row 1: item id {absent} is not in the index"
        ))
    );
    assert!(msg(ttt_pairs(&index, 2, &[2, ids[0]], 1, 0.5)).contains("user_row 2 outside 0..2"));
    assert!(msg(ttt_pairs(&index, 2, &[-1, ids[0]], 1, 0.5)).contains("user_row -1"));
    assert!(msg(ttt_pairs(&index, 2, &[0, ids[0], 1], 1, 0.5)).contains("M x 2"));
}

#[test]
fn learn_and_ttt_cli() {
    let mut rng = rng("learn_and_ttt_cli");
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let cbs = rand_codebooks(&mut rng, 2, 6, 8);
    let items = rand_items(&mut rng, &cbs, 240, 0.1);
    let users = rand_matrix(&mut rng, 5, 8);
    npy::write_f32(p("items.npy"), &items).unwrap();
    npy::write_f32(p("users.npy"), &users).unwrap();
    let pairs: Vec<i64> = (0..60)
        .flat_map(|m| [m % 5, rng.random_range(0..240), rng.random_range(0..2)])
        .collect();
    npy::write_i64(p("pairs.npy"), 60, 3, &pairs).unwrap();
    let learn = [
        "learn",
        "--items",
        &p("items.npy"),
        "--levels",
        "2",
        "--codes",
        "6",
        "--users",
        &p("users.npy"),
        "--pairs",
        &p("pairs.npy"),
        "--epochs",
        "2",
        "--batch",
        "64",
        "--alpha-max",
        "5",
        "--balance",
        "0.1",
        "-o",
        &p("cb.safetensors"),
        "--index",
        &p("ix.rqt"),
        "--json",
    ];
    let report: serde_json::Value = serde_json::from_str(&ok(&learn)).unwrap();
    assert_eq!(report["epochs"].as_array().unwrap().len(), 2);
    assert_eq!(report["steps"], 8);
    let cb = rqtree::index::codebook_file::read_codebooks(p("cb.safetensors")).unwrap();
    assert_eq!(cb.sizes(), vec![6, 6]);
    let index = rqtree::index::file::load(p("ix.rqt")).unwrap();
    assert_eq!(index.codebooks, cb);
    // ttt on the learned index: the file holds exactly the library's rows.
    let e: Vec<i64> = (0..40)
        .flat_map(|m| [m % 5, rng.random_range(0..240)])
        .collect();
    npy::write_i64(p("e.npy"), 40, 2, &e).unwrap();
    // `rqtree ttt` on the learned index with these engagements and further arguments.
    let ttt = |engagements: &str, rest: &[&str]| -> Vec<String> {
        let (ix, users) = (p("ix.rqt"), p("users.npy"));
        let head = [
            "ttt",
            "--index",
            &ix,
            "--users",
            &users,
            "--engagements",
            engagements,
        ];
        head.iter().chain(rest).map(|a| a.to_string()).collect()
    };
    let out = p("ttt.npy");
    ok(&ttt(
        &p("e.npy"),
        &["--depth", "1", "--interest-rate", "0.3", "-o", &out],
    ));
    let got = npy::read_i64_2d(p("ttt.npy")).unwrap();
    let want = to_rows(&ttt_pairs(&index, 5, &e, 1, 0.3).unwrap());
    assert_eq!((got.cols, got.data), (4, want));
    // Errors are one line, exit status 2.
    let (items, t, x) = (p("items.npy"), p("t.npy"), p("x.safetensors"));
    let learn = |rest: &[&str]| -> Vec<String> {
        ["learn", "--items", &items]
            .iter()
            .chain(rest)
            .chain(&["-o", &x])
            .map(|a| a.to_string())
            .collect()
    };
    npy::write_f32(p("users7.npy"), &rand_matrix(&mut rng, 5, 7)).unwrap();
    let mut wrong_dim = ttt(&p("e.npy"), &["-o", &t]);
    wrong_dim[4] = p("users7.npy");
    // DESIGN §4: non-finite user embeddings are refused naming the tensor and row (they were
    // accepted, and the pairs written for training with them).
    let mut bad = users.clone();
    bad.row_mut(3)[6] = f32::INFINITY;
    npy::write_f32(p("users_inf.npy"), &bad).unwrap();
    let mut non_finite = ttt(&p("e.npy"), &["-o", &t]);
    non_finite[4] = p("users_inf.npy");
    for (args, needle) in [
        (wrong_dim, "index's dimension is 8"),
        (non_finite, "users_inf.npy), row 3, column 6"),
        (ttt(&p("e.npy"), &["--depth", "3", "-o", &t]), "depth 3"),
        (ttt(&p("pairs.npy"), &["-o", &t]), "M x 2"),
        (
            learn(&["--users", &p("users.npy"), "--pairs", &p("e.npy")]),
            "M x 3",
        ),
        (learn(&["--codes", "6", "--lr", "0"]), "lr = 0"),
    ] {
        fails(&args, needle);
    }
}
