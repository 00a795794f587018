//! The `rqtree` binary end to end: build → info → search → eval, and bad input reported as
//! a one-line error with exit status 2, never a panic.

mod common;

use std::path::Path;

use common::*;
use rqtree::npy;

fn p(dir: &Path, name: &str) -> String {
    dir.join(name).to_string_lossy().into_owned()
}

#[test]
fn bf16_embeddings_build_and_rerank() {
    let mut rng = rng("bf16_embeddings_build_and_rerank");
    let dir = tempfile::tempdir().unwrap();
    let cbs = rand_codebooks(&mut rng, 2, 5, 6);
    let items = rand_items(&mut rng, &cbs, 80, 0.1);
    npy::write_f32(p(dir.path(), "items.npy"), &items).unwrap();
    npy::write_f32(p(dir.path(), "q.npy"), &rand_matrix(&mut rng, 3, 6)).unwrap();
    let ix = p(dir.path(), "ix.rqt");
    ok(&[
        "build",
        "--items",
        &p(dir.path(), "items.npy"),
        "--levels",
        "2",
        "--codes",
        "5",
        "--keep-embeddings",
        "bf16",
        "-o",
        &ix,
    ]);
    let info: serde_json::Value = serde_json::from_str(&ok(&["info", &ix, "--json"])).unwrap();
    assert_eq!(info["embeddings"], "bf16", "{info}");
    ok(&[
        "search",
        "--index",
        &ix,
        "--queries",
        &p(dir.path(), "q.npy"),
        "-k",
        "4",
        "--beam",
        "5,25",
        "--rerank",
        "exact",
        "--out-ids",
        &p(dir.path(), "ids.npy"),
    ]);
    let d = dir.path();
    fails(
        &[
            "build",
            "--items",
            &p(d, "items.npy"),
            "--keep-embeddings",
            "f8",
            "-o",
            &ix,
        ],
        "none, f16, bf16 or f32",
    );
}

#[test]
fn build_info_search_eval_round_trip() {
    let mut rng = rng("build_info_search_eval_round_trip");
    let dir = tempfile::tempdir().unwrap();
    let cbs = rand_codebooks(&mut rng, 2, 9, 8);
    let items = rand_items(&mut rng, &cbs, 300, 0.1);
    let queries = rand_matrix(&mut rng, 7, 8);
    npy::write_f32(p(dir.path(), "items.npy"), &items).unwrap();
    npy::write_f32(p(dir.path(), "q.npy"), &queries).unwrap();
    let ids: Vec<i64> = (0..300).map(|i| 1000 + i).collect();
    npy::write_i64(p(dir.path(), "ids.npy"), 300, 1, &ids).unwrap();
    let out = ok(&[
        "build",
        "--items",
        &p(dir.path(), "items.npy"),
        "--levels",
        "2",
        "--codes",
        "9",
        "--metric",
        "l2",
        "--keep-embeddings",
        "f16",
        "-o",
        &p(dir.path(), "ix.rqt"),
    ]);
    assert!(out.contains("built 300 items"), "{out}");
    let info = ok(&["info", &p(dir.path(), "ix.rqt")]);
    assert!(
        info.contains("300 items") && info.contains("metric l2"),
        "{info}"
    );
    // Search on a backend; returns the ids and scores it wrote.
    let search_on = |backend: &str| {
        let (ids, scores) = (
            p(dir.path(), &format!("ids_{backend}.npy")),
            p(dir.path(), &format!("s_{backend}.npy")),
        );
        ok(&[
            "search",
            "--backend",
            backend,
            "--index",
            &p(dir.path(), "ix.rqt"),
            "--queries",
            &p(dir.path(), "q.npy"),
            "-k",
            "5",
            "--beam",
            "9,81",
            "--rerank",
            "exact",
            "--out-ids",
            &ids,
            "--out-scores",
            &scores,
        ]);
        (
            npy::read_i64_2d(ids).unwrap(),
            npy::read_matrix(scores).unwrap(),
        )
    };
    let (got, scores) = search_on("reference");
    assert_eq!((got.rows, got.cols), (7, 5));
    assert!(scores.data().iter().all(|s| s.is_finite()));
    // The emulated kernels, with the index kept resident for the command, agree.
    let (emu, emu_scores) = search_on("emu");
    assert_eq!(emu.data, got.data, "emu vs reference ids");
    rel_close(
        emu_scores.data(),
        scores.data(),
        1e-5,
        "emu vs reference scores",
    );
    // A full beam with exact re-rank is exact search: recall 1 (up to f16 storage ties).
    let eval = ok(&[
        "eval",
        "--index",
        &p(dir.path(), "ix.rqt"),
        "--queries",
        &p(dir.path(), "q.npy"),
        "--items",
        &p(dir.path(), "items.npy"),
        "-k",
        "1,5",
        "--beam",
        "9,81",
        "--rerank",
        "exact",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&eval).unwrap();
    assert!(
        v["rows"][0]["recall"]["5"].as_f64().unwrap() >= 0.95,
        "{eval}"
    );
    assert_eq!(v["rows"][0]["candidates"].as_f64().unwrap(), 300.0);
    // Custom ids flow through.
    ok(&[
        "build",
        "--items",
        &p(dir.path(), "items.npy"),
        "--ids",
        &p(dir.path(), "ids.npy"),
        "--levels",
        "1",
        "--codes",
        "5",
        "-o",
        &p(dir.path(), "ix2.rqt"),
    ]);
    ok(&[
        "search",
        "--index",
        &p(dir.path(), "ix2.rqt"),
        "--queries",
        &p(dir.path(), "q.npy"),
        "-k",
        "3",
        "--beam",
        "2",
        "--out-ids",
        &p(dir.path(), "ids2.npy"),
    ]);
    let got = npy::read_i64_2d(p(dir.path(), "ids2.npy")).unwrap();
    assert!(got.data.iter().all(|&i| (1000..1300).contains(&i)));
}

#[test]
fn bad_input_is_an_error_message_not_a_panic() {
    let mut rng = rng("bad_input_is_an_error_message_not_a_panic");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut items = rand_matrix(&mut rng, 50, 4);
    npy::write_f32(p(d, "items.npy"), &items).unwrap();
    items.row_mut(13)[1] = f32::NAN;
    npy::write_f32(p(d, "nan.npy"), &items).unwrap();
    npy::write_i64(p(d, "int.npy"), 2, 2, &[1, 2, 3, 4]).unwrap();
    let q = rand_matrix(&mut rng, 3, 4);
    npy::write_f32(p(d, "q.npy"), &q).unwrap();
    let mut qn = q.clone();
    qn.row_mut(2)[0] = f32::INFINITY;
    npy::write_f32(p(d, "qinf.npy"), &qn).unwrap();
    npy::write_f32(p(d, "q5.npy"), &rand_matrix(&mut rng, 3, 5)).unwrap();
    let ix = p(d, "ix.rqt");
    ok(&[
        "build",
        "--items",
        &p(d, "items.npy"),
        "--codes",
        "4",
        "-o",
        &ix,
    ]);

    fails(
        &["build", "--items", &p(d, "nan.npy"), "-o", &p(d, "x.rqt")],
        "row 13",
    );
    fails(
        &["build", "--items", &p(d, "int.npy"), "-o", &p(d, "x.rqt")],
        "dtype",
    );
    fails(
        &[
            "build",
            "--items",
            &p(d, "items.npy"),
            "--codes",
            "70000",
            "-o",
            &p(d, "x.rqt"),
        ],
        "65536",
    );
    fails(
        &[
            "build",
            "--items",
            &p(d, "items.npy"),
            "--metric",
            "cos",
            "-o",
            &p(d, "x.rqt"),
        ],
        "metric",
    );
    assert!(
        !Path::new(&p(d, "x.rqt")).exists(),
        "a failed build must not leave a file"
    );
    let search = |q: &str, k: &str, beam: &str| {
        vec![
            "search".to_string(),
            "--index".into(),
            ix.clone(),
            "--queries".into(),
            p(d, q),
            "-k".into(),
            k.into(),
            "--beam".into(),
            beam.into(),
            "--out-ids".into(),
            p(d, "o.npy"),
        ]
    };
    let run = |v: Vec<String>, needle: &str| {
        let a: Vec<&str> = v.iter().map(String::as_str).collect();
        fails(&a, needle);
    };
    run(search("q.npy", "0", "2,4"), "k = 0");
    run(search("q.npy", "3", "2,0"), "beam width at depth 2 is 0");
    run(search("qinf.npy", "3", "2,4"), "row 2");
    run(search("q5.npy", "3", "2,4"), "5 columns, expected 4");
    run(search("q.npy", "3", "2,x"), "beam");
    npy::write_f32(p(d, "empty.npy"), &rqtree::Matrix::zeros(0, 4)).unwrap();
    fails(
        &["build", "--items", &p(d, "empty.npy"), "-o", &p(d, "x.rqt")],
        "empty item set",
    );
    npy::write_f32(p(d, "d0.npy"), &rqtree::Matrix::zeros(5, 0)).unwrap();
    fails(
        &["build", "--items", &p(d, "d0.npy"), "-o", &p(d, "x.rqt")],
        "d = 0",
    );
    // A flipped byte inside the last tensor's data, then a truncated index file.
    let mut bytes = std::fs::read(&ix).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x40;
    std::fs::write(p(d, "flipped.rqt"), &bytes).unwrap();
    fails(&["info", &p(d, "flipped.rqt")], "checksum");
    let bytes = std::fs::read(&ix).unwrap();
    std::fs::write(&ix, &bytes[..bytes.len() / 2]).unwrap();
    fails(&["info", &ix], "invalid file");
    fails(&["info", &p(d, "missing.rqt")], "I/O error");
}

/// A deterministic 5-item set (`items.npy`, 5 × 4; ids 100..=104 in `ids.npy`), two queries
/// (`q.npy`) and a one-level index over them (`ix.rqt`, K = 2, f32 embeddings) in a fresh
/// folder: the fixture of the edge cases below.
struct Five {
    dir: tempfile::TempDir,
    items: rqtree::Matrix,
}

impl Five {
    fn new() -> Five {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let data: Vec<f32> = (0..5 * 4)
            .map(|i| (i * 7919 % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let items = rqtree::Matrix::new(5, 4, data).unwrap();
        npy::write_f32(p(d, "items.npy"), &items).unwrap();
        npy::write_i64(p(d, "ids.npy"), 5, 1, &[100, 101, 102, 103, 104]).unwrap();
        let q = rqtree::Matrix::new(2, 4, items.data()[4..12].to_vec()).unwrap();
        npy::write_f32(p(d, "q.npy"), &q).unwrap();
        let five = Five { dir, items };
        ok(&five.build(&["--ids", &five.path("ids.npy")], "ix.rqt"));
        five
    }
    fn path(&self, name: &str) -> String {
        p(self.dir.path(), name)
    }
    /// `rqtree build` of `items.npy` (1 level, K = 2) into `out`, with `extra` arguments.
    fn build(&self, extra: &[&str], out: &str) -> Vec<String> {
        let (items, out) = (self.path("items.npy"), self.path(out));
        let base = ["build", "--items", &items, "--levels", "1", "--codes", "2"];
        base.iter()
            .chain(extra)
            .chain(&["-o", out.as_str()])
            .map(|s| s.to_string())
            .collect()
    }
    /// `rqtree search` of `q.npy` in `ix.rqt` with `k`, beam 2, ids written to `out_ids`.
    fn search(&self, k: &str, out_ids: &str) -> Vec<String> {
        let (ix, q) = (self.path("ix.rqt"), self.path("q.npy"));
        let a = [
            "search",
            "--index",
            &ix,
            "--queries",
            &q,
            "-k",
            k,
            "--beam",
            "2",
        ];
        a.iter()
            .chain(&["--out-ids", out_ids])
            .map(|s| s.to_string())
            .collect()
    }
}

/// 5 items, k = 10: the exact top-k of `eval --items --ids` ends in empty slots (id -1),
/// which used to index the ids with -1 (a panic); recall counts the 5 real ones.
#[test]
fn eval_with_fewer_items_than_k() {
    let f = Five::new();
    let (ix, q, items, ids) = (
        f.path("ix.rqt"),
        f.path("q.npy"),
        f.path("items.npy"),
        f.path("ids.npy"),
    );
    let out = ok(&[
        "eval",
        "--index",
        &ix,
        "--queries",
        &q,
        "--items",
        &items,
        "--ids",
        &ids,
        "-k",
        "10",
        "--beam",
        "2",
        "--rerank",
        "exact",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["rows"][0]["recall"]["10"].as_f64(), Some(1.0), "{v}");
}

/// DESIGN §4 (equal scores → lower item id first, everywhere): `eval --items --ids` ranks the
/// exact ground truth's ties by the caller's ids, as search does. Three identical items whose
/// ids fall as their rows rise: search's best is id 100 (row 2), so recall@1 is 1; ranking
/// the truth's ties by row made it id 102 and recall@1 0.
#[test]
fn eval_ground_truth_ties_follow_the_caller_ids() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (items, ids, q, ix) = (
        p(d, "items.npy"),
        p(d, "ids.npy"),
        p(d, "q.npy"),
        p(d, "ix.rqt"),
    );
    npy::write_f32(&items, &rqtree::Matrix::filled(3, 2, 0.5)).unwrap();
    npy::write_i64(&ids, 3, 1, &[102, 101, 100]).unwrap();
    npy::write_f32(&q, &rqtree::Matrix::filled(1, 2, 1.0)).unwrap();
    ok(&[
        "build", "--items", &items, "--ids", &ids, "--levels", "1", "--codes", "1", "-o", &ix,
    ]);
    for rerank in ["none", "exact"] {
        let out = ok(&[
            "eval",
            "--index",
            &ix,
            "--queries",
            &q,
            "--items",
            &items,
            "--ids",
            &ids,
            "-k",
            "1,2",
            "--beam",
            "1",
            "--rerank",
            rerank,
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        for k in ["1", "2"] {
            assert_eq!(
                v["rows"][0]["recall"][k].as_f64(),
                Some(1.0),
                "{rerank}: {v}"
            );
        }
    }
}

/// `eval --items` of another dimension than the index is an error naming the items file; it
/// blamed the queries ("queries has 4 columns, expected 3"), which match the index.
#[test]
fn eval_items_of_another_dimension_are_named() {
    let f = Five::new();
    let (ix, q, items3) = (f.path("ix.rqt"), f.path("q.npy"), f.path("items3.npy"));
    npy::write_f32(&items3, &rqtree::Matrix::zeros(5, 3)).unwrap();
    fails(
        &[
            "eval",
            "--index",
            &ix,
            "--queries",
            &q,
            "--items",
            &items3,
            "-k",
            "2",
            "--beam",
            "2",
        ],
        "items (",
    );
}

/// A recall cut-off of 0 in `-k` is an error like `k = 0` alone, not a reported recall@0.
#[test]
fn eval_zero_in_the_k_list_is_an_error() {
    let f = Five::new();
    let (ix, q, items) = (f.path("ix.rqt"), f.path("q.npy"), f.path("items.npy"));
    fails(
        &[
            "eval",
            "--index",
            &ix,
            "--queries",
            &q,
            "--items",
            &items,
            "-k",
            "0,3",
            "--beam",
            "2",
        ],
        "k = 0",
    );
}

/// `eval` of a query file with no rows is an error naming the file (recall over no queries
/// is undefined), and `--repeats 0` is refused rather than run once.
#[test]
fn eval_needs_queries_and_a_repetition() {
    let f = Five::new();
    let (ix, q, q0, items) = (
        f.path("ix.rqt"),
        f.path("q.npy"),
        f.path("q0.npy"),
        f.path("items.npy"),
    );
    npy::write_f32(&q0, &rqtree::Matrix::zeros(0, 4)).unwrap();
    let eval = |queries: &str, rest: &[&str]| -> Vec<String> {
        [
            "eval",
            "--index",
            &ix,
            "--queries",
            queries,
            "--items",
            &items,
        ]
        .iter()
        .chain(rest)
        .chain(&["-k", "2", "--beam", "2"])
        .map(|a| a.to_string())
        .collect()
    };
    fails(&eval(&q0, &[]), "no queries (0 rows)");
    fails(&eval(&q, &["--repeats", "0"]), "--repeats");
    ok(&eval(&q, &["--repeats", "2"]));
}

/// k beyond any address space (2 × 10^13 slots: 240 TB) or overflowing B × k is an error, not
/// an abort on allocation or an overflow.
#[test]
fn huge_k_is_an_error() {
    let f = Five::new();
    let (ix, q, o) = (f.path("ix.rqt"), f.path("q.npy"), f.path("o.npy"));
    for k in ["20000000000000", "18446744073709551615"] {
        fails(&f.search(k, &o), "does not fit in memory");
        fails(
            &[
                "eval",
                "--index",
                &ix,
                "--queries",
                &q,
                "--gt",
                &o,
                "-k",
                k,
                "--beam",
                "2",
            ],
            "does not fit in memory",
        );
    }
}

/// A forged shape whose product overflows is an error before npyz multiplies it: no panic
/// message on stderr (`fails` checks), in this build with overflow checks.
#[test]
fn overflowing_npy_shape_is_an_error_without_a_panic() {
    let f = Five::new();
    let huge = f.path("huge.npy");
    for shape in [
        "(8589934592, 8589934592)",
        "(1099511627776, 1099511627776, 0)",
    ] {
        let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
        forged_npy(std::path::Path::new(&huge), &dict, &[0; 64]);
        fails(
            &["build", "--items", &huge, "-o", &f.path("x.rqt")],
            "overflows",
        );
    }
}

/// What the index could not hold is refused at build, naming the row: an item id of -1 (the
/// empty-slot marker), an item value beyond f16's range with `--keep-embeddings f16`.
#[test]
fn build_refuses_negative_ids_and_values_beyond_f16() {
    let f = Five::new();
    npy::write_i64(f.path("neg.npy"), 5, 1, &[100, 101, -1, 103, 104]).unwrap();
    fails(
        &f.build(&["--ids", &f.path("neg.npy")], "x.rqt"),
        "ids, row 2: id -1 is negative",
    );
    let mut big = f.items.clone();
    big.row_mut(3)[1] = 1.0e5;
    npy::write_f32(f.path("items.npy"), &big).unwrap();
    fails(
        &f.build(&["--keep-embeddings", "f16"], "x.rqt"),
        "row 3, column 1",
    );
    assert!(!Path::new(&f.path("x.rqt")).exists());
    ok(&f.build(&["--keep-embeddings", "f32"], "x.rqt"));
}

/// A new user's mistakes name the file at fault and the fix: an ids file of the wrong length
/// or with a repeated id (build and eval), exact re-rank of an index without embeddings
/// (search and eval), a transposed query or item matrix.
#[test]
fn user_mistakes_name_the_file_and_the_fix() {
    let f = Five::new();
    let (ix, q, items) = (f.path("ix.rqt"), f.path("q.npy"), f.path("items.npy"));
    npy::write_i64(f.path("short.npy"), 4, 1, &[100, 101, 102, 103]).unwrap();
    npy::write_i64(f.path("dup.npy"), 5, 1, &[100, 101, 102, 101, 104]).unwrap();
    fails(
        &f.build(&["--ids", &f.path("short.npy")], "x.rqt"),
        "short.npy: 4 ids for the 5 item rows of",
    );
    fails(
        &f.build(&["--ids", &f.path("dup.npy")], "x.rqt"),
        "dup.npy: ids, rows 1 and 3: id 101 appears twice",
    );
    let eval_ids = |ids: &str| {
        [
            "eval",
            "--index",
            &ix,
            "--queries",
            &q,
            "--items",
            &items,
            "--ids",
            ids,
            "-k",
            "2",
            "--beam",
            "2",
        ]
        .map(String::from)
    };
    fails(&eval_ids(&f.path("short.npy")), "short.npy: 4 ids");
    fails(&eval_ids(&f.path("dup.npy")), "id 101 appears twice");

    ok(&f.build(&["--keep-embeddings", "none"], "bare.rqt"));
    let bare = f.path("bare.rqt");
    let mut search = f.search("2", &f.path("o.npy"));
    search[2] = bare.clone();
    search.extend(["--rerank".to_string(), "exact".to_string()]);
    fails(&search, "bare.rqt: the index stores no embeddings");
    fails(
        &search,
        "--keep-embeddings f32, f16 or bf16, or search with --rerank none",
    );
    let eval = [
        "eval",
        "--index",
        &bare,
        "--queries",
        &q,
        "--items",
        &items,
        "--beam",
        "2",
        "-k",
        "2",
        "--rerank",
        "exact",
    ];
    fails(&eval, "bare.rqt: the index stores no embeddings");

    // q.npy is 2 x 4; its transpose is 4 x 2, and the items' transpose 4 x 5.
    let t = |m: &rqtree::Matrix| {
        let data = (0..m.cols())
            .flat_map(|c| (0..m.rows()).map(move |r| m.row(r)[c]))
            .collect();
        rqtree::Matrix::new(m.cols(), m.rows(), data).unwrap()
    };
    npy::write_f32(f.path("qt.npy"), &t(&npy::read_matrix(&q).unwrap())).unwrap();
    let mut search = f.search("2", &f.path("o.npy"));
    search[4] = f.path("qt.npy");
    fails(
        &search,
        "has 2 columns, expected 4 (it is 4 x 2: transposed?",
    );
    npy::write_f32(f.path("itemst.npy"), &t(&f.items)).unwrap();
    let out = rqtree(&[
        "build",
        "--items",
        &f.path("itemst.npy"),
        "--levels",
        "1",
        "--codes",
        "2",
        "-o",
        &f.path("t.rqt"),
    ]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("itemst.npy) are 4 x 5: fewer items (rows) than dimensions"),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&rqtree(&f.build(&[], "y.rqt")).stderr).contains("warning"));

    // An .npy array where an index goes, and an index where an .npy array goes.
    fails(&["info", &items], "is a .npy array, not a safetensors file");
    let mut search = f.search("2", &f.path("o.npy"));
    search[4] = ix.clone();
    fails(&search, "it looks like a safetensors file");
}

/// Output into a missing folder: the error names the requested file, not the hidden
/// temporary one.
#[test]
fn write_error_names_the_output_file() {
    let f = Five::new();
    let dest = f.path("missing/o.npy");
    fails(
        &f.search("3", &dest),
        &format!("error: I/O error on {dest}: "),
    );
}

/// `bench --quick --json` on the emu backend: one row per operation (the assignment and the
/// exact top-k also with the tensor-core screening), each with its clock, a positive median and the floor fraction
/// (the plumbing the GPU bundle relies on).
#[test]
fn bench_quick_json_rows() {
    let out = ok(&["bench", "--backend", "emu", "--quick", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("bench JSON");
    assert_eq!(v["backend"], "emu");
    let rows = v["rows"].as_array().expect("rows");
    let ops: Vec<&str> = rows.iter().filter_map(|r| r["op"].as_str()).collect();
    for want in [
        "assign",
        "assign_tc",
        "fused_topk",
        "topk_k10",
        "topk_k100",
        "topk_k1000",
        "exact_topk",
        "exact_topk_tc",
        "lookup_tables",
        "traverse",
        "search",
    ] {
        assert!(ops.contains(&want), "{want} missing from {ops:?}");
    }
    for r in rows {
        assert_eq!(r["clock"], "wall", "{r}");
        assert!(r["ms"].as_f64().is_some_and(|m| m > 0.0), "{r}");
        assert!(r["floor_fraction"].as_f64().is_some(), "{r}");
        // The per-kernel breakdown exists on every backend; only cuda fills it.
        assert_eq!(r["kernels"].as_array().map(Vec::len), Some(0), "{r}");
        // The tensor-core screenings' floor is the TF32 rate, every other row's fp32.
        let tc = r["op"].as_str().is_some_and(|op| op.ends_with("_tc"));
        let peak = if tc { 494.7e12 } else { 67e12 };
        assert_eq!(r["peak_flops"].as_f64(), Some(peak), "{r}");
    }
    // scripts/compare_bench.py reads this JSON: a line per operation, set against a torch
    // row of every op at twice rqtree's time.
    let torch_rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| serde_json::json!({"op": r["op"], "ms": 2.0 * r["ms"].as_f64().unwrap()}))
        .collect();
    let torch = serde_json::json!({"tool": "torch", "rows": torch_rows});
    let table = compare_bench(&out, &torch.to_string());
    for op in ops
        .iter()
        .filter(|op| !op.ends_with("_tc") && !op.ends_with("_walk"))
    {
        let cols = compare_line(&table, op);
        assert_eq!(cols[3], "2.00x", "{op}: {table}");
        assert_eq!(cols[4], "-", "{op}: no kernel time on emu: {table}");
    }
    assert!(
        table.contains("  assign_tc floor: flops/494.7 TFLOP/s"),
        "{table}"
    );
    fails(&["bench", "--quick", "--targets"], "cannot be used with");
}

/// Runs `scripts/compare_bench.py` (python3, standard library only) on an rqtree and a torch
/// JSON document and returns its table.
fn compare_bench(rqtree_json: &str, torch_json: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (rq, torch) = (dir.path().join("rq.json"), dir.path().join("torch.json"));
    std::fs::write(&rq, rqtree_json).unwrap();
    std::fs::write(&torch, torch_json).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/compare_bench.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .args([&rq, &torch])
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The whitespace-separated columns of `op`'s line of a compare_bench table, the rqtree
/// kernel time in brackets its own column: op, rqtree ms, [kernel ms], torch ms, speed-up,
/// kernels speed-up, rqtree floor, torch floor.
fn compare_line<'a>(table: &'a str, op: &str) -> Vec<&'a str> {
    let line = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(op))
        .unwrap_or_else(|| panic!("no {op} line in {table}"));
    let mut cols: Vec<&str> = line.split_whitespace().collect();
    if !cols[2].starts_with('[') {
        cols.insert(2, "-");
    }
    cols.remove(2);
    cols
}

/// compare_bench.py on the recorded H200 run (`benches/results/h200-2026-11-28/final`) and a
/// made-up torch run: speed-ups are torch / rqtree, on the whole call and on the kernels; a
/// variant row (`_tc`, `_walk`) is set against torch's row of its base op; an op of one side
/// only leaves the other's columns "-".
#[test]
fn compare_bench_pairs_rows() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let recorded = std::fs::read_to_string(
        root.join("benches/results/h200-2026-11-28/final/bench-rqtree.json"),
    )
    .unwrap();
    let mut rq: serde_json::Value = serde_json::from_str(&recorded).unwrap();
    let rows = rq["rows"].as_array_mut().unwrap();
    let mut walk = rows
        .iter()
        .find(|r| r["op"] == "fused_topk")
        .unwrap()
        .clone();
    walk["op"] = "fused_topk_walk".into();
    walk["ms"] = 3.0.into();
    walk["kernel_ms"] = 1.5.into();
    rows.push(walk);
    let torch = serde_json::json!({"tool": "torch", "rows": [
        {"op": "assign", "ms": 153.02, "floor_fraction": 0.1},
        {"op": "fused_topk", "ms": 6.0},
        {"op": "only_torch", "ms": 1.0},
    ]});
    let table = compare_bench(&rq.to_string(), &torch.to_string());
    // assign: call 76.510 ms, kernels 63.262 ms (recorded).
    assert_eq!(
        compare_line(&table, "assign")[..7],
        ["assign", "76.510", "153.020", "2.00x", "2.42x", "19.46%", "10.00%"]
    );
    // assign_tc (85.444 / 72.603 ms) against torch's assign.
    assert_eq!(compare_line(&table, "assign_tc")[3..5], ["1.79x", "2.11x"]);
    assert_eq!(
        compare_line(&table, "fused_topk_walk")[3..5],
        ["2.00x", "4.00x"]
    );
    assert_eq!(compare_line(&table, "exact_topk")[2..5], ["-", "-", "-"]);
    assert_eq!(
        compare_line(&table, "only_torch")[1..4],
        ["-", "1.000", "-"]
    );
    assert!(
        table.contains("  search kernels (ms): rq_lut 0.086 (2x)"),
        "{table}"
    );
}

/// `bench --only` runs just the named groups and names a wrong one.
#[test]
fn bench_only_groups() {
    let out = ok(&[
        "bench",
        "--backend",
        "reference",
        "--quick",
        "--json",
        "--only",
        "topk,fused",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("bench JSON");
    let ops: Vec<&str> = v["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["op"].as_str())
        .collect();
    assert_eq!(
        ops,
        [
            "fused_topk",
            "fused_topk_disjoint",
            "topk_k10",
            "topk_k100",
            "topk_k1000"
        ]
    );
    fails(
        &["bench", "--quick", "--only", "topk,sort"],
        "unknown group \"sort\"",
    );
}

/// `search` writes its two outputs together: a `--out-scores` that cannot be written leaves
/// an earlier `--out-ids` untouched (the ids used to be replaced before the scores failed),
/// and one path for both is refused (the scores used to overwrite the ids, exit status 0).
#[test]
fn search_writes_both_outputs_or_neither() {
    let f = Five::new();
    let ids = f.path("o.npy");
    ok(&f.search("3", &ids));
    let with_scores = |scores: &str| {
        let mut a = f.search("2", &ids);
        a.extend(["--out-scores".to_string(), scores.to_string()]);
        a
    };
    fails(&with_scores(&f.path("missing/s.npy")), "missing/s.npy");
    assert_eq!(
        npy::read_i64_2d(&ids).unwrap().cols,
        3,
        "earlier ids replaced"
    );
    fails(&with_scores(&ids), "--out-scores");
    fails(&with_scores(&f.path("./o.npy")), "--out-scores");
    assert_eq!(
        npy::read_i64_2d(&ids).unwrap().cols,
        3,
        "earlier ids replaced"
    );
    ok(&with_scores(&f.path("s.npy")));
    assert_eq!(npy::read_i64_2d(&ids).unwrap().cols, 2);
    assert_eq!(npy::read_matrix(f.path("s.npy")).unwrap().cols(), 2);
}

/// An output that names one of the command's inputs is refused before any work, and the
/// input is left as it was (`search --out-ids ix.rqt` used to replace the index with the
/// results; `build -o items.npy` the embeddings with an index).
#[test]
fn outputs_never_replace_inputs() {
    let f = Five::new();
    let (ix, q, items) = (f.path("ix.rqt"), f.path("q.npy"), f.path("items.npy"));
    let before = |p: &str| std::fs::read(p).unwrap();
    let (ix0, q0, items0) = (before(&ix), before(&q), before(&items));
    fails(&f.search("2", &ix), "--out-ids");
    fails(&f.search("2", &f.path("./q.npy")), "is the --queries input");
    let mut scores_over_index = f.search("2", &f.path("o.npy"));
    scores_over_index.extend(["--out-scores".to_string(), ix.clone()]);
    fails(&scores_over_index, "--out-scores");
    fails(&f.build(&[], "items.npy"), "is the --items input");
    let ids = f.path("ids.npy");
    fails(&f.build(&["--ids", &ids], "ids.npy"), "is the --ids input");
    fails(
        &[
            "learn", "--items", &items, "--levels", "1", "--codes", "2", "-o", &items,
        ],
        "is the --items input",
    );
    assert!(before(&ix) == ix0 && before(&q) == q0 && before(&items) == items0);
    ok(&f.search("2", &f.path("o.npy")));
}

/// `learn -o cb --index ix` writes both or neither: an index path in a missing folder used to
/// fail after the codebooks were written; `--index` equal to `-o` is refused (the index used
/// to overwrite the codebooks).
#[test]
fn learn_writes_codebooks_and_index_or_neither() {
    let f = Five::new();
    let (items, cb) = (f.path("items.npy"), f.path("cb.safetensors"));
    let learn = |index: &str| {
        let a = [
            "learn", "--items", &items, "--levels", "1", "--codes", "2", "--epochs", "1", "-o",
            &cb, "--index", index,
        ];
        a.map(str::to_string)
    };
    fails(&learn(&f.path("missing/ix.rqt")), "missing/ix.rqt");
    assert!(
        !Path::new(&cb).exists(),
        "codebooks written by a failed learn"
    );
    fails(&learn(&cb), "--index");
    assert!(
        !Path::new(&cb).exists(),
        "codebooks written by a failed learn"
    );
    ok(&learn(&f.path("ix2.rqt")));
    assert!(Path::new(&cb).exists() && Path::new(&f.path("ix2.rqt")).exists());
}

/// `build --codebooks` with k-means options (`--levels`, `--codes`, `--iters`,
/// `--train-sample`, `--seed`) is refused: they used to be accepted and silently ignored.
#[test]
fn build_with_codebooks_refuses_kmeans_options() {
    let f = Five::new();
    let cb = f.path("cb.safetensors");
    let cbs = rqtree::index::Codebooks::from_matrices(vec![rqtree::Matrix::new(
        2,
        4,
        f.items.data()[..8].to_vec(),
    )
    .unwrap()])
    .unwrap();
    rqtree::index::codebook_file::write_codebooks(&cb, &cbs).unwrap();
    let (items, out) = (f.path("items.npy"), f.path("x.rqt"));
    let build = ["build", "--items", &items, "--codebooks", &cb, "-o", &out];
    for extra in [
        ["--levels", "3"],
        ["--codes", "7"],
        ["--iters", "2"],
        ["--train-sample", "9"],
        ["--seed", "1"],
    ] {
        let a: Vec<&str> = build.iter().chain(&extra).copied().collect();
        fails(&a, "cannot be used with");
    }
    assert!(!Path::new(&out).exists());
    ok(&build);
}

/// `--threads 1` bounds the emu backend's block workers too, not only the reference pool:
/// with RQTREE_EMU_WORKERS=4 in the environment, a kernel bench used to run 3 more threads.
/// The process's threads are sampled from /proc while it runs (Linux only).
#[cfg(target_os = "linux")]
#[test]
fn threads_bound_the_emu_workers() {
    let bin = std::env::var_os("RQTREE_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_rqtree").into());
    let mut child = std::process::Command::new(bin)
        .args(["--threads", "1", "bench", "--backend", "emu", "--quick"])
        .args(["--only", "topk", "--json"])
        .env("RQTREE_EMU_WORKERS", "4")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run rqtree");
    let tasks = format!("/proc/{}/task", child.id());
    let mut most = 0;
    while child.try_wait().expect("wait").is_none() {
        if let Ok(dir) = std::fs::read_dir(&tasks) {
            most = most.max(dir.count());
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(child.wait().expect("wait").success());
    // The main thread and one rayon worker.
    assert!(most <= 2, "{most} threads with --threads 1");
}

/// `rqtree learn`: the codebooks it writes are those of the library's `learn` with the same
/// options (the same bytes on a second run: seeded), load back, and build an index that
/// searches; bad options and supervision are one-line errors naming them, and an empty
/// `--pairs` file is refused (it used to train without supervision, silently).
#[test]
fn learn_codebooks_load_back_and_bad_options_are_named() {
    use rqtree::learn::{learn, LearnOptions};
    let f = Five::new();
    let items = f.path("items.npy");
    let args = |out: &str, extra: &[&str]| {
        let base = [
            "learn",
            "--items",
            &items,
            "--levels",
            "2",
            "--codes",
            "2",
            "--epochs",
            "3",
            "--batch",
            "2",
            "--alpha-max",
            "5",
            "--lr",
            "0.01",
            "--seed",
            "7",
        ];
        let out = f.path(out);
        base.iter()
            .chain(extra)
            .chain(&["--json", "-o", out.as_str()])
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    };
    ok(&args("cb1.safetensors", &[]));
    ok(&args("cb2.safetensors", &[]));
    let (cb1, cb2) = (f.path("cb1.safetensors"), f.path("cb2.safetensors"));
    assert_eq!(std::fs::read(&cb1).unwrap(), std::fs::read(&cb2).unwrap());
    let read = rqtree::index::codebook_file::read_codebooks(&cb1).unwrap();
    let opts = LearnOptions {
        levels: 2,
        codes: 2,
        epochs: 3,
        batch: 2,
        alpha_max: 5.0,
        lr: 0.01,
        seed: 7,
        ..LearnOptions::default()
    };
    let reference = rqtree::reference::Reference;
    let (want, _) = learn(&reference, &reference, &f.items, None, &opts, false).unwrap();
    assert_eq!(read, want);
    let ix = f.path("learned.rqt");
    ok(&["build", "--items", &items, "--codebooks", &cb1, "-o", &ix]);
    assert_eq!(rqtree::index::file::load(&ix).unwrap().codebooks, want);
    ok(&[
        "search",
        "--index",
        &ix,
        "--queries",
        &f.path("q.npy"),
        "-k",
        "2",
        "--beam",
        "2,4",
        "--out-ids",
        &f.path("learned_ids.npy"),
    ]);

    let users = rqtree::Matrix::new(2, 4, vec![0.5; 8]).unwrap();
    npy::write_f32(f.path("users.npy"), &users).unwrap();
    let pairs = |name: &str, rows: usize, data: &[i64]| {
        npy::write_i64(f.path(name), rows, 3, data).unwrap();
        f.path(name)
    };
    let (u, empty) = (f.path("users.npy"), pairs("empty.npy", 0, &[]));
    let (label, row) = (
        pairs("label.npy", 1, &[0, 1, 2]),
        pairs("row.npy", 1, &[1, 5, 1]),
    );
    let sup = |p: &str| args("sup.safetensors", &["--users", &u, "--pairs", p]);
    fails(&sup(&empty), "pairs");
    fails(&sup(&label), "pairs row 0: label 2");
    fails(&sup(&row), "pairs row 0: item_row 5");
    ok(&sup(&pairs("good.npy", 2, &[0, 1, 1, 1, 4, 0])));
    npy::write_f32(f.path("users3.npy"), &rqtree::Matrix::zeros(2, 3)).unwrap();
    fails(
        &args(
            "sup.safetensors",
            &["--users", &f.path("users3.npy"), "--pairs", &label],
        ),
        "users3.npy) has 3 columns, expected 4",
    );
    for (extra, needle) in [
        (["--lr", "0"], "lr = 0"),
        (["--lr", "NaN"], "lr = NaN"),
        (["--batch", "0"], "batch"),
        (["--alpha-floor", "0"], "alpha floor = 0"),
        (["--alpha-power", "inf"], "alpha-power = inf"),
        (["--codes", "6"], "K = 6 codewords but only 5"),
        (["--warmup", "1.5"], "warmup = 1.5"),
    ] {
        let mut a = args("bad.safetensors", &[]);
        // The later of a repeated option is refused by clap: replace the base value instead.
        match a.iter().position(|s| s == extra[0]) {
            Some(i) => a[i + 1] = extra[1].to_string(),
            None => {
                a.insert(1, extra[1].to_string());
                a.insert(1, extra[0].to_string());
            }
        }
        fails(&a, needle);
    }
    assert!(!Path::new(&f.path("bad.safetensors")).exists());
}
