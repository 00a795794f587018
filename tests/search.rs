//! The search pipeline: full beams equal brute force (property test), padding, re-rank,
//! caller-supplied level-1 scores, and the built tree's invariants.

mod common;

use common::*;
use proptest::prelude::*;
use rand::SeedableRng;
use rqtree::index::EmbeddingKind;
use rqtree::metric::Metric;
use rqtree::ops;
use rqtree::reference::Reference;
use rqtree::search::{search, Rerank, SearchParams};
use rqtree::topk::TopK;
use rqtree::Matrix;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn full_beam_is_brute_force_over_reconstructions(
        seed in any::<u64>(),
        n in 1usize..150,
        d in 1usize..12,
        levels in 1usize..4,
        k_codes in 1usize..9,
        k in 1usize..40,
        l2 in any::<bool>(),
    ) {
        let mut rng = TestRng::seed_from_u64(seed);
        let metric = if l2 { Metric::L2 } else { Metric::Ip };
        let (index, _, _) = rand_index(&mut rng, n, d, levels, k_codes, metric, EmbeddingKind::None);
        let q = rand_matrix(&mut rng, 3, d);
        let beams: Vec<usize> = index.tree.depths.iter().map(|dep| dep.len()).collect();
        let params = SearchParams { k, beams, rerank: Rerank::None };
        let out = search(&Reference, &index, &q, None, &params).unwrap();
        let rows = (0..3).map(|b| brute_topk(&recon_scores(&index, q.row(b)), k)).collect();
        assert_topk_close(&out.topk, &TopK::from_rows(k, rows), 1e-5, "full beam");
        prop_assert!(out.candidates.iter().all(|&c| c == n));
    }
}

#[test]
fn built_tree_satisfies_its_invariants() {
    let mut rng = rng("built_tree_satisfies_its_invariants");
    for (levels, k) in [(1, 5), (2, 37), (3, 4)] {
        let (index, items, ids) =
            rand_index(&mut rng, 333, 7, levels, k, Metric::L2, EmbeddingKind::F32);
        index.validate().unwrap();
        let codes = &index.codes;
        // Lexicographic order of items, and one node per distinct prefix.
        for i in 1..index.len() {
            assert!(codes.path(i - 1) <= codes.path(i));
        }
        for (l, dep) in index.tree.depths.iter().enumerate() {
            let mut prefixes: Vec<Vec<u32>> = (0..index.len())
                .map(|i| codes.path(i)[..=l].to_vec())
                .collect();
            prefixes.dedup();
            assert_eq!(dep.len(), prefixes.len());
            for (j, prefix) in prefixes.iter().enumerate() {
                let c = index.codebooks.reconstruct(prefix);
                let n2: f64 = c.iter().map(|&v| v as f64 * v as f64).sum();
                assert!((dep.centroid_norm[j] as f64 - n2).abs() < 1e-4);
                // Representative: nearest item of the subtree to the centroid.
                let emb = index.embeddings.as_ref().unwrap();
                let dist = |p: usize| -> f64 {
                    emb.row(p)
                        .iter()
                        .zip(&c)
                        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                        .sum()
                };
                let rep = dep.representative[j] as usize;
                assert!(dep.items(j).all(|p| dist(rep) <= dist(p) + 1e-9));
            }
        }
        // Embeddings are stored in item order.
        let emb = index.embeddings.as_ref().unwrap();
        for p in 0..index.len() {
            let row = ids.iter().position(|&i| i == index.ids[p]).unwrap();
            assert_eq!(emb.row(p), items.row(row));
        }
    }
}

#[test]
fn fewer_candidates_than_k_are_padded() {
    let mut rng = rng("fewer_candidates_than_k_are_padded");
    let (index, _, _) = rand_index(&mut rng, 40, 6, 2, 9, Metric::Ip, EmbeddingKind::F16);
    let q = rand_matrix(&mut rng, 4, 6);
    let params = SearchParams {
        k: 45,
        beams: vec![1, 1],
        rerank: Rerank::Exact { rerank_k: None },
    };
    let out = search(&Reference, &index, &q, None, &params).unwrap();
    for b in 0..4 {
        let c = out.candidates[b];
        assert!(c < 45);
        assert!(out.topk.row_ids(b)[..c].iter().all(|&i| i >= 0));
        assert!(out.topk.row_ids(b)[c..].iter().all(|&i| i == -1));
        assert!(out.topk.row_scores(b)[c..]
            .iter()
            .all(|&s| s == f32::NEG_INFINITY));
    }
}

#[test]
fn exact_rerank_with_full_beam_is_exact_search() {
    let mut rng = rng("exact_rerank_with_full_beam_is_exact_search");
    for (metric, keep, tol) in [
        (Metric::Ip, EmbeddingKind::F32, 1e-5),
        (Metric::L2, EmbeddingKind::F32, 1e-5),
        (Metric::Ip, EmbeddingKind::F16, 1e-2),
    ] {
        let (index, items, ids) = rand_index(&mut rng, 250, 9, 2, 6, metric, keep);
        let q = rand_matrix(&mut rng, 6, 9);
        let beams: Vec<usize> = index.tree.depths.iter().map(|dep| dep.len()).collect();
        let params = SearchParams {
            k: 20,
            beams,
            rerank: Rerank::Exact { rerank_k: None },
        };
        let out = search(&Reference, &index, &q, None, &params).unwrap();
        let mut exact = ops::exact_topk(&Reference, &q, &items, metric, 20).unwrap();
        // Exact ids are item rows; search returns the caller's ids of those rows.
        exact.ids.iter_mut().for_each(|i| *i = ids[*i as usize]);
        for b in 0..6 {
            let mut got: Vec<i64> = out.topk.row_ids(b).to_vec();
            let mut want: Vec<i64> = exact.row_ids(b).to_vec();
            got.sort_unstable();
            want.sort_unstable();
            let common = got.iter().filter(|i| want.contains(i)).count();
            assert!(
                common >= 19,
                "query {b}: {common}/20 in common ({metric:?}, {keep:?})"
            );
            for (g, w) in out.topk.row_scores(b).iter().zip(exact.row_scores(b)) {
                assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{g} vs {w}");
            }
        }
    }
}

#[test]
fn level1_scores_replace_the_level1_table() {
    let mut rng = rng("level1_scores_replace_the_level1_table");
    let (index, _, _) = rand_index(&mut rng, 120, 5, 2, 8, Metric::Ip, EmbeddingKind::None);
    let q = rand_matrix(&mut rng, 3, 5);
    let n1 = index.tree.depths[0].len();
    // The caller's model favours depth-1 node (b mod n1) overwhelmingly for query b.
    let mut ext = Matrix::zeros(3, n1);
    for b in 0..3 {
        ext.row_mut(b)[b % n1] = 100.0;
    }
    let params = SearchParams {
        k: 5,
        beams: vec![1, 4],
        rerank: Rerank::None,
    };
    let out = search(&Reference, &index, &q, Some(&ext), &params).unwrap();
    let d1 = &index.tree.depths[0];
    for b in 0..3 {
        let node = b % n1;
        let allowed: Vec<i64> = d1.items(node).map(|p| index.ids[p]).collect();
        for &id in out.topk.row_ids(b).iter().filter(|&&i| i >= 0) {
            assert!(
                allowed.contains(&id),
                "query {b} got item {id} outside node {node}"
            );
        }
        assert!(out.topk.row_scores(b)[0] > 99.0);
    }
    let bad = Matrix::zeros(3, n1 + 1);
    let err = search(&Reference, &index, &q, Some(&bad), &params).unwrap_err();
    assert!(err.to_string().contains("level-1 scores"), "{err}");
}

#[test]
fn empty_query_batch_gives_empty_results() {
    let mut rng = rng("empty_query_batch_gives_empty_results");
    let (index, _, _) = rand_index(&mut rng, 50, 4, 2, 5, Metric::Ip, EmbeddingKind::None);
    let q = Matrix::zeros(0, 4);
    let params = SearchParams {
        k: 3,
        beams: vec![2, 3],
        rerank: Rerank::None,
    };
    let out = search(&Reference, &index, &q, None, &params).unwrap();
    assert_eq!(out.topk.rows, 0);
    assert!(out.candidates.is_empty());
}

/// Representative ties go to the lowest item id (DESIGN §4), not the first position in code
/// order: two items equidistant from their depth-1 centroid, in different depth-2 nodes, the
/// later one (code order) with the lower id.
#[test]
fn representative_ties_go_to_the_lowest_id() {
    use rqtree::index::build::{build, BuildOptions};
    use rqtree::index::{Codebook, Codebooks};
    let word = |v: &[f32]| Matrix::new(v.len(), 1, v.to_vec()).unwrap();
    let cbs = Codebooks::new(vec![
        Codebook::new(word(&[0.0]), "level 0").unwrap(),
        Codebook::new(word(&[-1.0, 1.0]), "level 1").unwrap(),
    ])
    .unwrap();
    for (ids, want) in [(vec![10, 5], 5), (vec![4, 9], 4)] {
        let items = word(&[-1.0, 1.0]);
        let opts = BuildOptions {
            keep_embeddings: EmbeddingKind::F32,
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
        let d1 = &index.tree.depths[0];
        assert_eq!(d1.len(), 1);
        let rep = index.ids[d1.representative[0] as usize];
        assert_eq!(rep, want, "ids {ids:?}");
    }
}
