//! Bad input is an `Error` whose message names the problem — never a panic.

mod common;

use common::*;
use rqtree::backend::AssignOptions;
use rqtree::index::build::{build, BuildOptions};
use rqtree::index::{Codebook, Codebooks, EmbeddingKind};
use rqtree::matrix::Matrix;
use rqtree::metric::Metric;
use rqtree::ops;
use rqtree::reference::Reference;
use rqtree::search::{search, Rerank, SearchParams};

fn msg<T: std::fmt::Debug>(r: rqtree::Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

fn params(k: usize, beams: Vec<usize>) -> SearchParams {
    SearchParams {
        k,
        beams,
        rerank: Rerank::None,
    }
}

#[test]
fn non_finite_values_are_rejected_with_tensor_and_row() {
    let mut rng = rng("non_finite_values_are_rejected_with_tensor_and_row");
    let mut items = rand_matrix(&mut rng, 30, 4);
    items.row_mut(17)[2] = f32::NAN;
    let m = msg(build(
        &Reference,
        &items,
        None,
        None,
        &BuildOptions::default(),
    ));
    assert!(m.contains("items") && m.contains("row 17"), "{m}");

    let mut cb = rand_matrix(&mut rng, 5, 4);
    cb.row_mut(3)[0] = f32::INFINITY;
    let m = msg(Codebooks::from_matrices(vec![cb]));
    assert!(m.contains("codebook.0") && m.contains("row 3"), "{m}");

    let (index, _, _) = rand_index(&mut rng, 40, 4, 2, 3, Metric::Ip, EmbeddingKind::None);
    let mut q = rand_matrix(&mut rng, 3, 4);
    q.row_mut(1)[1] = f32::NEG_INFINITY;
    let m = msg(search(&Reference, &index, &q, None, &params(2, vec![1])));
    assert!(m.contains("queries") && m.contains("row 1"), "{m}");
}

#[test]
fn shapes_and_parameters_are_checked() {
    let mut rng = rng("shapes_and_parameters_are_checked");
    let (index, _, _) = rand_index(&mut rng, 40, 4, 2, 3, Metric::L2, EmbeddingKind::None);
    let q = rand_matrix(&mut rng, 3, 5);
    let m = msg(search(&Reference, &index, &q, None, &params(2, vec![1])));
    assert!(m.contains("5 columns, expected 4"), "{m}");

    let q = rand_matrix(&mut rng, 3, 4);
    let m = msg(search(&Reference, &index, &q, None, &params(0, vec![1])));
    assert!(m.contains("k = 0"), "{m}");
    let m = msg(search(&Reference, &index, &q, None, &params(3, vec![2, 0])));
    assert!(m.contains("beam width at depth 2 is 0"), "{m}");
    let m = msg(search(&Reference, &index, &q, None, &params(3, vec![])));
    assert!(m.contains("empty beam"), "{m}");
    let m = msg(search(
        &Reference,
        &index,
        &q,
        None,
        &params(3, vec![1, 2, 3]),
    ));
    assert!(m.contains("3 beam widths") && m.contains("2 levels"), "{m}");
    let p = SearchParams {
        k: 3,
        beams: vec![1],
        rerank: Rerank::Exact { rerank_k: None },
    };
    let m = msg(search(&Reference, &index, &q, None, &p));
    assert!(m.contains("stored embeddings"), "{m}");

    let m = msg(Codebook::new(Matrix::zeros(65537, 1), "codebook.0"));
    assert!(m.contains("K = 65537"), "{m}");
    let m = msg(Codebook::new(Matrix::zeros(3, 0), "codebook.0"));
    assert!(m.contains("d = 0"), "{m}");

    let m = msg(build(
        &Reference,
        &Matrix::zeros(0, 4),
        None,
        None,
        &BuildOptions::default(),
    ));
    assert!(m.contains("empty item set"), "{m}");
    let m = msg(build(
        &Reference,
        &Matrix::zeros(5, 0),
        None,
        None,
        &BuildOptions::default(),
    ));
    assert!(m.contains("d = 0"), "{m}");
    let items = rand_matrix(&mut rng, 10, 4);
    let m = msg(build(
        &Reference,
        &items,
        Some(vec![1, 2]),
        None,
        &BuildOptions::default(),
    ));
    assert!(m.contains("2 ids for 10 items"), "{m}");
    let cbs = rand_codebooks(&mut rng, 1, 3, 6);
    let m = msg(build(
        &Reference,
        &items,
        None,
        Some(cbs),
        &BuildOptions::default(),
    ));
    assert!(m.contains("dimension"), "{m}");
    let dup = (0..10).map(|i| i % 9).collect();
    let cbs = rand_codebooks(&mut rng, 1, 3, 4);
    let m = msg(build(
        &Reference,
        &items,
        Some(dup),
        Some(cbs),
        &BuildOptions::default(),
    ));
    assert!(m.contains("appears twice"), "{m}");

    let cb = Codebook::new(rand_matrix(&mut rng, 4, 4), "cb").unwrap();
    let o = AssignOptions {
        top_m: 5,
        ..AssignOptions::default()
    };
    let m = msg(ops::assign(&Reference, &items, &cb, &o));
    assert!(m.contains("top_m = 5"), "{m}");
    let o = AssignOptions {
        alpha: Some(f32::NAN),
        ..AssignOptions::default()
    };
    let m = msg(ops::assign(&Reference, &items, &cb, &o));
    assert!(m.contains("alpha"), "{m}");
    let m = msg(ops::segmented_topk(&Reference, &[1.0, 2.0], &[0, 2, 1], 1));
    assert!(m.contains("offsets"), "{m}");
    let m = msg(ops::topk(
        &Reference,
        &Matrix::new(1, 1, vec![f32::NAN]).unwrap(),
        1,
    ));
    assert!(m.contains("scores"), "{m}");
}

#[test]
fn codes_out_of_range_and_broken_trees_fail_validation() {
    let mut rng = rng("codes_out_of_range_and_broken_trees_fail_validation");
    let (index, _, _) = rand_index(&mut rng, 60, 4, 2, 5, Metric::Ip, EmbeddingKind::None);
    let mut bad = index.clone();
    bad.tree.depths[0].code[0] = 9;
    let m = msg(bad.validate());
    assert!(m.contains("out of range"), "{m}");
    let mut bad = index.clone();
    let cs = &mut bad.tree.depths[0].child_start;
    cs.swap(1, 2);
    let m = msg(bad.validate());
    assert!(m.contains("child offsets"), "{m}");
    let mut bad = index.clone();
    let is = &mut bad.tree.depths[1].item_start;
    is.swap(1, 2);
    let m = msg(bad.validate());
    assert!(
        m.contains("strictly increasing") || m.contains("cover"),
        "{m}"
    );
    let codes: Vec<u32> = vec![0, 7];
    let m = msg(rqtree::index::Codes::from_item_major(&codes, &[3, 5]));
    assert!(m.contains("code 7") && m.contains("out of range"), "{m}");
}
