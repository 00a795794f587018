//! Bad input is an `Error` whose message names the problem — never a panic.

mod common;

use common::*;
use rqtree::backend::AssignOptions;
use rqtree::index::build::{build, BuildOptions};
use rqtree::index::{Codebook, Codebooks, EmbeddingKind, Embeddings, HalfRows};
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
    // Tree::validate is public: a sizes list that does not cover every depth is an error,
    // not an index out of bounds.
    let m = msg(index.tree.validate(&index.codes, &[5]));
    assert!(m.contains("1 codebook sizes for a tree of 2 depths"), "{m}");
    let codes: Vec<u32> = vec![0, 7];
    let m = msg(rqtree::index::Codes::from_item_major(&codes, &[3, 5]));
    assert!(m.contains("code 7") && m.contains("out of range"), "{m}");
}

/// `n × d` deterministic items in `[-1, 1)` (no randomness: the cases below are exact).
fn fixed_items(n: usize, d: usize) -> Matrix {
    let data = (0..n * d)
        .map(|i| (i * 7919 % 1000) as f32 / 500.0 - 1.0)
        .collect();
    Matrix::new(n, d, data).unwrap()
}

fn small_build(kind: EmbeddingKind) -> BuildOptions {
    let mut o = BuildOptions {
        keep_embeddings: kind,
        ..BuildOptions::default()
    };
    o.kmeans.levels = 2;
    o.kmeans.codes = 4;
    o
}

/// Finite items whose squared norm overflows f32 are refused by the build with a range error
/// naming the row (the stored norms would be infinite; the build used to fail after encoding
/// on "item norm … invalid (inf)").
#[test]
fn items_whose_norm_overflows_are_refused_at_build() {
    let mut items = fixed_items(40, 4);
    items.row_mut(7).copy_from_slice(&[3e19, -3e19, 1.0, 0.0]);
    let opts = small_build(EmbeddingKind::F32);
    match build(&Reference, &items, None, None, &opts) {
        Err(rqtree::Error::Range(m)) => assert!(m.contains("items row 7"), "{m}"),
        other => panic!("expected a range error, got {:?}", other.map(|_| ())),
    }
    items.row_mut(7).copy_from_slice(&[1e19, -1e19, 1.0, 0.0]);
    assert!(build(&Reference, &items, None, None, &opts).is_ok());
}

/// Finite codewords whose squared norm overflows f32 are refused with a range error naming
/// the codebook and row: with `||C[k]||² = inf` the logit `2<r, C[k]> - ||C[k]||²` of a large
/// row was inf - inf = NaN, and the reference assigned that codeword (code 0 with a NaN logit,
/// where the nearest codeword is 1, as the kernels found).
#[test]
fn codewords_whose_norm_overflows_are_refused() {
    let words = Matrix::new(2, 1, vec![1e20, 0.0]).unwrap();
    match Codebook::new(words, "codebook.1") {
        Err(rqtree::Error::Range(m)) => {
            assert!(m.contains("codebook.1") && m.contains("row 0"), "{m}")
        }
        other => panic!("expected a range error, got {:?}", other.map(|_| ())),
    }
    let fine = Matrix::new(2, 1, vec![1e19, 0.0]).unwrap();
    let cb = Codebook::new(fine, "codebook.0").unwrap();
    let r = Matrix::new(1, 1, vec![1.8e19]).unwrap();
    let a = ops::assign(&Reference, &r, &cb, &AssignOptions::default()).unwrap();
    assert_eq!(a.codes, vec![0], "logits {:?}", a.logits);
}

/// Finite f32 items beyond the range of half-width embeddings used to become infinities in
/// the index: saved without complaint, refused on load. Now the build refuses them, naming the
/// item row and column; f32 (and bf16, whose range is f32's) keep them.
#[test]
fn items_beyond_half_width_range_are_refused_at_build() {
    let mut items = fixed_items(40, 4);
    items.row_mut(17)[2] = 1.0e5;
    let m = msg(build(
        &Reference,
        &items,
        None,
        None,
        &small_build(EmbeddingKind::F16),
    ));
    assert!(
        m.contains("items, row 17, column 2") && m.contains("f16"),
        "{m}"
    );
    for kind in [EmbeddingKind::F32, EmbeddingKind::Bf16] {
        let index = build(&Reference, &items, None, None, &small_build(kind)).unwrap();
        index.validate().unwrap();
    }
    // bf16 overflows only within half a unit of f32::MAX (rounding up to infinity).
    items.row_mut(3)[1] = f32::MAX;
    let m = msg(build(
        &Reference,
        &items,
        None,
        None,
        &small_build(EmbeddingKind::Bf16),
    ));
    assert!(
        m.contains("items, row 3, column 1") && m.contains("bf16"),
        "{m}"
    );
}

/// `validate` (and so `save`) checks stored embeddings as `load` does: finite values, and
/// exactly `rows × cols` of them in the public half-width fields.
#[test]
fn validate_checks_half_width_embedding_values_and_length() {
    let items = fixed_items(40, 4);
    for kind in [EmbeddingKind::F16, EmbeddingKind::Bf16] {
        let index = build(&Reference, &items, None, None, &small_build(kind)).unwrap();
        let mut inf = index.clone();
        let short = match &mut inf.embeddings {
            Some(Embeddings::F16(h)) => {
                h.data_mut()[2 * 4 + 1] = half::f16::INFINITY;
                HalfRows::new(40, 4, vec![half::f16::ZERO; 3]).map(|_| ())
            }
            Some(Embeddings::Bf16(h)) => {
                h.data_mut()[2 * 4 + 1] = half::bf16::NAN;
                HalfRows::new(40, 4, vec![half::bf16::ZERO; 3]).map(|_| ())
            }
            other => panic!("{kind:?}: unexpected embeddings {other:?}"),
        };
        let m = msg(inf.validate());
        assert!(
            m.contains("non-finite") && m.contains("embeddings, row 2, column 1"),
            "{kind:?}: {m}"
        );
        let m = msg(short);
        assert!(
            m.contains("40 x 4 embeddings need 160 values, got 3"),
            "{kind:?}: {m}"
        );
        // What store() makes of out-of-range values is caught too.
        let mut big = items.clone();
        big.row_mut(5)[0] = -7.0e4;
        let mut stored = index.clone();
        stored.embeddings = Embeddings::store(big, EmbeddingKind::F16);
        let m = msg(stored.validate());
        assert!(m.contains("row 5, column 0"), "{kind:?}: {m}");
    }
}

/// Id -1 marks an empty result slot; an item carrying it (or any negative id) is refused by
/// the builder, naming the row of the ids, and by `validate`, naming the position.
#[test]
fn negative_item_ids_are_refused() {
    let items = fixed_items(40, 4);
    for bad in [-1i64, -5, i64::MIN] {
        let mut ids: Vec<i64> = (0..40).collect();
        ids[6] = bad;
        let m = msg(build(
            &Reference,
            &items,
            Some(ids),
            None,
            &small_build(EmbeddingKind::None),
        ));
        assert!(
            m.contains("ids, row 6") && m.contains(&format!("id {bad} is negative")),
            "{m}"
        );
    }
    let mut index = build(
        &Reference,
        &items,
        None,
        None,
        &small_build(EmbeddingKind::None),
    )
    .unwrap();
    let p = index.ids.iter().position(|&id| id == 0).unwrap();
    index.ids[p] = -1;
    let m = msg(index.validate());
    assert!(
        m.contains(&format!("item id -1 at position {p} is negative")),
        "{m}"
    );
}
