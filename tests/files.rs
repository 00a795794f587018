//! Files (DESIGN §8): `.npy` in/out, codebook safetensors, and the index file — round trips
//! and every kind of broken file the loader must reject with a message naming the problem.

mod common;

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use half::f16;
use npyz::WriterBuilder;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use rqtree::index::codebook_file::{read_codebooks, write_codebooks};
use rqtree::index::file::{checksum, load, save};
use rqtree::index::{Codebooks, Codes, EmbeddingKind, Embeddings, Index, Tree};
use rqtree::matrix::norm_sq;
use rqtree::npy::{read_i64_1d, read_i64_2d, read_matrix, write_f32, write_i64};
use rqtree::{Error, Matrix, Metric};

use common::forged_npy;

fn random_matrix(rng: &mut Xoshiro256PlusPlus, rows: usize, cols: usize) -> Matrix {
    let data = (0..rows * cols)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    Matrix::new(rows, cols, data).unwrap()
}

/// A small valid index: `n` items with random codes (sorted lexicographically) under random
/// codebooks of sizes `sizes`, embeddings = reconstruction + noise.
fn build_index(
    n: usize,
    sizes: &[usize],
    d: usize,
    metric: Metric,
    kind: EmbeddingKind,
    seed: u64,
) -> Index {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mats = sizes
        .iter()
        .map(|&k| random_matrix(&mut rng, k, d))
        .collect();
    let codebooks = Codebooks::from_matrices(mats).unwrap();
    let mut paths: Vec<Vec<u32>> = (0..n)
        .map(|_| {
            sizes
                .iter()
                .map(|&k| rng.random_range(0..k as u32))
                .collect()
        })
        .collect();
    paths.sort();
    let flat: Vec<u32> = paths.concat();
    let codes = Codes::from_item_major(&flat, sizes).unwrap();
    let mut emb = Matrix::zeros(n, d);
    for (i, p) in paths.iter().enumerate() {
        let r = codebooks.reconstruct(p);
        for (o, v) in emb.row_mut(i).iter_mut().zip(r) {
            *o = v + rng.random_range(-0.05f32..0.05);
        }
    }
    let ids: Vec<i64> = (0..n as i64).map(|i| i * 7919 + 13).collect();
    let tree = Tree::build(&codes, &codebooks, &ids, &|i| emb.row(i).to_vec()).unwrap();
    let item_norms = paths
        .iter()
        .map(|p| norm_sq(&codebooks.reconstruct(p)))
        .collect();
    let index = Index {
        metric,
        codebooks,
        codes,
        ids,
        item_norms,
        tree,
        embeddings: Embeddings::store(emb, kind),
    };
    index.validate().unwrap();
    index
}

/// The default test index: u8 codes (K = 50, 37, 20), 300 items, d = 12.
fn small_index(kind: EmbeddingKind) -> Index {
    build_index(300, &[50, 37, 20], 12, Metric::Ip, kind, 1)
}

fn saved(dir: &tempfile::TempDir, index: &Index) -> PathBuf {
    let p = dir.path().join("index.rqt");
    save(index, &p).unwrap();
    p
}

fn file_msg(e: Error) -> String {
    match e {
        Error::File { msg, .. } => msg,
        other => panic!("expected Error::File, got {other:?}"),
    }
}

fn load_err(p: &Path) -> String {
    file_msg(load(p).expect_err("loading a broken file must fail"))
}

/// An owned tensor of a rewritten file.
struct Owned {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

/// Reads the safetensors file `src`, lets `edit` change tensors and metadata, recomputes every
/// checksum when `fix_checksums`, and writes the result to `dst`.
fn rewrite(
    src: &Path,
    dst: &Path,
    fix_checksums: bool,
    edit: impl FnOnce(&mut HashMap<String, Owned>, &mut HashMap<String, String>),
) {
    let bytes = std::fs::read(src).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = header.metadata().clone().unwrap_or_default();
    let mut tensors: HashMap<String, Owned> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            (
                name,
                Owned {
                    dtype: v.dtype(),
                    shape: v.shape().to_vec(),
                    bytes: v.data().to_vec(),
                },
            )
        })
        .collect();
    edit(&mut tensors, &mut meta);
    if fix_checksums {
        meta.retain(|k, _| !k.starts_with("checksum."));
        for (name, t) in &tensors {
            meta.insert(format!("checksum.{name}"), checksum(&t.bytes));
        }
    }
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                TensorView::new(t.dtype, t.shape.clone(), &t.bytes).unwrap(),
            )
        })
        .collect();
    let out = safetensors::serialize(views, Some(meta)).unwrap();
    std::fs::write(dst, out).unwrap();
}

/// Byte range of tensor `name`'s data within the file `bytes`.
fn tensor_range(bytes: &[u8], name: &str) -> std::ops::Range<usize> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let off = &header[name]["data_offsets"];
    let (s, e) = (
        off[0].as_u64().unwrap() as usize,
        off[1].as_u64().unwrap() as usize,
    );
    8 + n + s..8 + n + e
}

// ---------------------------------------------------------------- index round trips

#[test]
fn round_trip_u8_codes_ip_all_embedding_kinds() {
    let dir = tempfile::tempdir().unwrap();
    for kind in [
        EmbeddingKind::None,
        EmbeddingKind::F32,
        EmbeddingKind::F16,
        EmbeddingKind::Bf16,
    ] {
        let index = small_index(kind);
        let p = saved(&dir, &index);
        let loaded = load(&p).unwrap();
        assert_eq!(loaded, index, "round trip with {kind:?} embeddings");
        assert_eq!(
            loaded.embeddings.as_ref().map(Embeddings::kind),
            index.embeddings.as_ref().map(Embeddings::kind)
        );
    }
}

#[test]
fn round_trip_u16_codes_l2_all_embedding_kinds() {
    let dir = tempfile::tempdir().unwrap();
    for kind in [
        EmbeddingKind::None,
        EmbeddingKind::F32,
        EmbeddingKind::F16,
        EmbeddingKind::Bf16,
    ] {
        let index = build_index(400, &[300, 45], 8, Metric::L2, kind, 2);
        assert!(matches!(
            index.codes.data(),
            rqtree::index::CodeData::U16(_)
        ));
        let p = saved(&dir, &index);
        assert_eq!(
            load(&p).unwrap(),
            index,
            "round trip with {kind:?} embeddings"
        );
    }
}

#[test]
fn round_trip_single_level() {
    let dir = tempfile::tempdir().unwrap();
    let index = build_index(200, &[70], 5, Metric::L2, EmbeddingKind::F32, 3);
    let p = saved(&dir, &index);
    assert_eq!(load(&p).unwrap(), index);
}

#[test]
fn save_leaves_no_temporary_file_and_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let a = small_index(EmbeddingKind::None);
    let b = build_index(250, &[40, 33], 6, Metric::L2, EmbeddingKind::F16, 9);
    let p = saved(&dir, &a);
    save(&b, &p).unwrap();
    assert_eq!(load(&p).unwrap(), b);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "left behind: {names:?}");
}

#[test]
fn save_rejects_an_invalid_index() {
    let dir = tempfile::tempdir().unwrap();
    let mut index = small_index(EmbeddingKind::None);
    index.ids[1] = index.ids[0];
    let p = dir.path().join("bad.rqt");
    let e = save(&index, &p).unwrap_err();
    assert!(e.to_string().contains("twice"), "{e}");
    assert!(!p.exists());
}

/// Saving refuses what loading would refuse: infinite half-width embeddings (what f16 storage
/// makes of values above 65504) and an item id of -1 (the empty-slot marker); nothing is
/// written.
#[test]
fn save_refuses_what_load_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.rqt");
    let mut index = small_index(EmbeddingKind::F16);
    let d = index.dim();
    if let Some(Embeddings::F16(h)) = &mut index.embeddings {
        h.data_mut()[4 * d + 3] = f16::from_f32(1.0e5);
    }
    let e = save(&index, &p).unwrap_err().to_string();
    assert!(
        e.contains("non-finite") && e.contains("row 4, column 3"),
        "{e}"
    );
    assert!(!p.exists());
    let mut index = small_index(EmbeddingKind::None);
    index.ids[9] = -1;
    let e = save(&index, &p).unwrap_err().to_string();
    assert!(e.contains("item id -1 at position 9 is negative"), "{e}");
    assert!(!p.exists());
}

#[test]
fn negative_item_id_in_a_file_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = saved(&dir, &small_index(EmbeddingKind::None));
    let q = dir.path().join("negative.rqt");
    rewrite(&p, &q, true, |t, _| {
        t.get_mut("ids").unwrap().bytes[8 * 3..8 * 4].copy_from_slice(&(-1i64).to_le_bytes());
    });
    let msg = load_err(&q);
    assert!(
        msg.contains("item id -1 at position 3 is negative"),
        "{msg}"
    );
}

/// A failed write names the file the caller asked for, not the hidden temporary file (which
/// follows in parentheses), whichever writer failed.
#[test]
fn write_errors_name_the_destination() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let index = small_index(EmbeddingKind::None);
    let results = [
        ("o.npy", write_i64(missing.join("o.npy"), 1, 1, &[1])),
        (
            "s.npy",
            write_f32(missing.join("s.npy"), &Matrix::zeros(1, 1)),
        ),
        (
            "cb.safetensors",
            write_codebooks(missing.join("cb.safetensors"), &index.codebooks),
        ),
        ("ix.rqt", save(&index, missing.join("ix.rqt"))),
    ];
    for (name, r) in results {
        let dest = missing.join(name);
        let e = r.unwrap_err();
        let text = e.to_string();
        match e {
            Error::Io { path, .. } => assert_eq!(path, dest, "{text}"),
            other => panic!("{name}: expected Error::Io, got {other:?}"),
        }
        assert!(
            text.starts_with(&format!("I/O error on {}: ", dest.display()))
                && text.contains(&format!("(temporary file {}", missing.join(".").display())),
            "{text}"
        );
    }
    assert!(!missing.exists());
}

// ---------------------------------------------------------------- broken index files

#[test]
fn truncated_file_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = saved(&dir, &small_index(EmbeddingKind::F32));
    let bytes = std::fs::read(&p).unwrap();
    let q = dir.path().join("short.rqt");
    for keep in [0, 5, 20, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&q, &bytes[..keep]).unwrap();
        let msg = load_err(&q);
        assert!(msg.contains("truncated"), "{keep} bytes: {msg}");
    }
}

#[test]
fn not_a_safetensors_file_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("junk.rqt");
    std::fs::write(&q, b"this is not an index file at all, just some text").unwrap();
    assert!(load_err(&q).contains("safetensors"));
}

#[test]
fn flipped_byte_inside_a_tensor_fails_the_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let p = saved(&dir, &small_index(EmbeddingKind::F16));
    let bytes = std::fs::read(&p).unwrap();
    let q = dir.path().join("flipped.rqt");
    for name in [
        "codes",
        "tree.1.item_start",
        "embeddings",
        "codebook.2",
        "ids",
    ] {
        let r = tensor_range(&bytes, name);
        let mut b = bytes.clone();
        b[r.start + r.len() / 2] ^= 0x10;
        std::fs::write(&q, &b).unwrap();
        let msg = load_err(&q);
        assert!(
            msg.contains("checksum") && msg.contains(name),
            "{name}: {msg}"
        );
    }
}

#[test]
fn unknown_format_version_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = saved(&dir, &small_index(EmbeddingKind::None));
    let q = dir.path().join("v2.rqt");
    rewrite(&p, &q, true, |_, meta| {
        meta.insert("version".into(), "2".into());
    });
    let msg = load_err(&q);
    assert!(msg.contains("unknown index format version 2"), "{msg}");
}

#[test]
fn wrong_format_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = saved(&dir, &small_index(EmbeddingKind::None));
    let q = dir.path().join("other.rqt");
    rewrite(&p, &q, true, |_, meta| {
        meta.insert("format".into(), "pt".into());
    });
    assert!(load_err(&q).contains("not an rqtree index"));
}

#[test]
fn missing_tensor_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = saved(&dir, &small_index(EmbeddingKind::None));
    let q = dir.path().join("missing.rqt");
    rewrite(&p, &q, true, |t, _| {
        t.remove("item_norms");
    });
    let msg = load_err(&q);
    assert!(msg.contains("missing tensor item_norms"), "{msg}");
}

#[test]
fn wrong_dtype_in_index_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = saved(&dir, &small_index(EmbeddingKind::None));
    let q = dir.path().join("dtype.rqt");
    rewrite(&p, &q, true, |t, _| {
        t.get_mut("item_norms").unwrap().dtype = Dtype::I32;
    });
    let msg = load_err(&q);
    assert!(msg.contains("dtype") && msg.contains("item_norms"), "{msg}");
}

#[test]
fn wrong_shape_in_index_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = saved(&dir, &small_index(EmbeddingKind::F32));
    let q = dir.path().join("shape.rqt");
    rewrite(&p, &q, true, |t, _| {
        let e = t.get_mut("embeddings").unwrap();
        e.shape = vec![e.shape[1], e.shape[0]];
    });
    let msg = load_err(&q);
    assert!(msg.contains("shape") && msg.contains("embeddings"), "{msg}");
}

#[test]
fn non_finite_half_width_embeddings_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    // f16 infinity is 0x7c00, bf16 infinity 0x7f80; NaN patterns above them.
    for (kind, bits) in [
        (EmbeddingKind::F16, [0x7c00u16, 0x7e01]),
        (EmbeddingKind::Bf16, [0x7f80u16, 0xffc1]),
    ] {
        let index = small_index(kind);
        let d = index.dim();
        let p = saved(&dir, &index);
        let q = dir.path().join("nonfinite.rqt");
        for b in bits {
            rewrite(&p, &q, true, |t, _| {
                let e = &mut t.get_mut("embeddings").unwrap().bytes;
                // Row 2, column 1.
                let at = 2 * (2 * d + 1);
                e[at..at + 2].copy_from_slice(&b.to_le_bytes());
            });
            let msg = load_err(&q);
            assert!(
                msg.contains("non-finite") && msg.contains("row 2, column 1"),
                "{kind:?} {b:#x}: {msg}"
            );
        }
    }
}

#[test]
fn code_out_of_range_is_caught_by_the_validator() {
    let dir = tempfile::tempdir().unwrap();
    let index = small_index(EmbeddingKind::None);
    let n = index.len();
    let p = saved(&dir, &index);
    let q = dir.path().join("badcode.rqt");
    // Level 1 has K = 37; write code 200 for item position 0 with a valid checksum.
    rewrite(&p, &q, true, |t, _| {
        t.get_mut("codes").unwrap().bytes[n] = 200;
    });
    let msg = load_err(&q);
    assert!(msg.contains("out of range"), "{msg}");
}

#[test]
fn non_monotone_item_csr_is_caught_by_the_validator() {
    let dir = tempfile::tempdir().unwrap();
    let p = saved(&dir, &small_index(EmbeddingKind::None));
    let q = dir.path().join("csr.rqt");
    rewrite(&p, &q, true, |t, _| {
        let b = &mut t.get_mut("tree.1.item_start").unwrap().bytes;
        // Swap entries 1 and 2 (u32 little-endian).
        let (x, y) = (b[4..8].to_vec(), b[8..12].to_vec());
        b[4..8].copy_from_slice(&y);
        b[8..12].copy_from_slice(&x);
    });
    let msg = load_err(&q);
    assert!(msg.contains("not strictly increasing"), "{msg}");
}

#[test]
fn non_monotone_child_csr_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = saved(&dir, &small_index(EmbeddingKind::None));
    let q = dir.path().join("children.rqt");
    rewrite(&p, &q, true, |t, _| {
        let b = &mut t.get_mut("tree.0.child_start").unwrap().bytes;
        // Entry 1 far beyond the next depth's node count.
        b[4..8].copy_from_slice(&100_000u32.to_le_bytes());
    });
    let msg = load_err(&q);
    assert!(msg.contains("child offsets"), "{msg}");
}

#[test]
fn unexpected_tensor_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = saved(&dir, &small_index(EmbeddingKind::None));
    let q = dir.path().join("extra.rqt");
    rewrite(&p, &q, true, |t, _| {
        t.insert(
            "codebook.3".into(),
            Owned {
                dtype: Dtype::F32,
                shape: vec![1, 1],
                bytes: vec![0; 4],
            },
        );
    });
    let msg = load_err(&q);
    assert!(msg.contains("unexpected tensor codebook.3"), "{msg}");
}

#[test]
fn random_corruption_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let p = saved(&dir, &small_index(EmbeddingKind::F16));
    let bytes = std::fs::read(&p).unwrap();
    let q = dir.path().join("fuzz.rqt");
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
    for _ in 0..300 {
        let mut b = bytes.clone();
        for _ in 0..rng.random_range(1..4) {
            let i = rng.random_range(0..b.len());
            b[i] = rng.random();
        }
        if rng.random_bool(0.2) {
            b.truncate(rng.random_range(0..b.len()));
        }
        std::fs::write(&q, &b).unwrap();
        // Any outcome but a panic is acceptable; almost all must be errors.
        let _ = load(&q);
    }
}

// ---------------------------------------------------------------- .npy

fn write_npy<T: npyz::AutoSerialize + Copy>(p: &Path, shape: &[u64], data: &[T], fortran: bool) {
    let order = if fortran {
        npyz::Order::Fortran
    } else {
        npyz::Order::C
    };
    let mut w = npyz::WriteOptions::<T>::new()
        .default_dtype()
        .order(order)
        .shape(shape)
        .writer(BufWriter::new(File::create(p).unwrap()))
        .begin_nd()
        .unwrap();
    w.extend(data.iter().copied()).unwrap();
    w.finish().unwrap();
}

#[test]
fn npy_f32_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(4);
    let m = random_matrix(&mut rng, 7, 5);
    let p = dir.path().join("scores.npy");
    write_f32(&p, &m).unwrap();
    assert_eq!(read_matrix(&p).unwrap(), m);
}

/// Writing to a symbolic link replaces the file it names (relative and chained links) and
/// leaves the link; a replaced file keeps its permissions; a dangling link creates the file
/// it names.
#[cfg(unix)]
#[test]
fn atomic_writes_follow_links_and_keep_permissions() {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
    let (a, b, c) = (
        random_matrix(&mut rng, 3, 2),
        random_matrix(&mut rng, 4, 2),
        random_matrix(&mut rng, 5, 2),
    );
    std::fs::create_dir(dir.path().join("real")).unwrap();
    let real = dir.path().join("real/scores.npy");
    write_f32(&real, &a).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o640)).unwrap();
    let link = dir.path().join("link.npy");
    let chain = dir.path().join("chain.npy");
    symlink("real/scores.npy", &link).unwrap();
    symlink("link.npy", &chain).unwrap();
    write_f32(&chain, &b).unwrap();
    for l in [&link, &chain] {
        assert!(std::fs::symlink_metadata(l)
            .unwrap()
            .file_type()
            .is_symlink());
    }
    assert_eq!(read_matrix(&real).unwrap(), b);
    let mode = std::fs::metadata(&real).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    let dangling = dir.path().join("dangling.npy");
    symlink("real/new.npy", &dangling).unwrap();
    write_f32(&dangling, &c).unwrap();
    assert_eq!(read_matrix(dir.path().join("real/new.npy")).unwrap(), c);
    assert!(std::fs::symlink_metadata(&dangling)
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn npy_i64_round_trip_and_i32_widening() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ids.npy");
    let data: Vec<i64> = (0..12).map(|i| i * 1_000_000_007 - 5).collect();
    write_i64(&p, 3, 4, &data).unwrap();
    let got = read_i64_2d(&p).unwrap();
    assert_eq!((got.rows, got.cols, &got.data), (3, 4, &data));

    let q = dir.path().join("ids32.npy");
    let small: Vec<i32> = vec![5, -1, 7, 1 << 30];
    write_npy(&q, &[4], &small, false);
    assert_eq!(read_i64_1d(&q).unwrap(), vec![5, -1, 7, 1 << 30]);
    // A 1-D array is not a 2-D id matrix.
    let msg = file_msg(read_i64_2d(&q).unwrap_err());
    assert!(msg.contains("rank 1"), "{msg}");
}

#[test]
fn npy_write_rejects_wrong_length() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.npy");
    assert!(matches!(write_i64(&p, 2, 3, &[1, 2]), Err(Error::Shape(_))));
    assert!(!p.exists());
}

#[test]
fn npy_f16_is_widened() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("emb16.npy");
    let vals: Vec<f16> = (0..6)
        .map(|i| f16::from_f32(i as f32 * 0.25 - 0.5))
        .collect();
    write_npy(&p, &[2, 3], &vals, false);
    let m = read_matrix(&p).unwrap();
    assert_eq!((m.rows(), m.cols()), (2, 3));
    let want: Vec<f32> = vals.iter().map(|v| v.to_f32()).collect();
    assert_eq!(m.data(), &want[..]);
}

#[test]
fn npy_wrong_dtype_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("emb_i32.npy");
    write_npy(&p, &[2, 2], &[1i32, 2, 3, 4], false);
    let e = read_matrix(&p).unwrap_err();
    assert!(e.to_string().contains("emb_i32.npy"), "{e}");
    let msg = file_msg(e);
    assert!(msg.contains("dtype") && msg.contains("<i4"), "{msg}");

    let q = dir.path().join("ids_f32.npy");
    write_npy(&q, &[3], &[1.0f32, 2.0, 3.0], false);
    let msg = file_msg(read_i64_1d(&q).unwrap_err());
    assert!(msg.contains("dtype"), "{msg}");
}

#[test]
fn npy_wrong_rank_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("flat.npy");
    write_npy(&p, &[6], &[0.0f32; 6], false);
    let msg = file_msg(read_matrix(&p).unwrap_err());
    assert!(msg.contains("2-D") && msg.contains("rank 1"), "{msg}");
    let q = dir.path().join("cube.npy");
    write_npy(&q, &[2, 2, 2], &[0.0f32; 8], false);
    let msg = file_msg(read_matrix(&q).unwrap_err());
    assert!(msg.contains("rank 3"), "{msg}");
}

#[test]
fn npy_fortran_order_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("fortran.npy");
    write_npy(&p, &[2, 3], &[0.0f32; 6], true);
    let msg = file_msg(read_matrix(&p).unwrap_err());
    assert!(msg.contains("Fortran"), "{msg}");
}

#[test]
fn npy_truncated_and_garbage_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("full.npy");
    write_f32(&p, &Matrix::filled(10, 4, 1.5)).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    let q = dir.path().join("short.npy");
    std::fs::write(&q, &bytes[..bytes.len() - 3]).unwrap();
    let msg = file_msg(read_matrix(&q).unwrap_err());
    assert!(msg.contains("truncated"), "{msg}");
    std::fs::write(&q, &bytes[..20]).unwrap();
    assert!(file_msg(read_matrix(&q).unwrap_err()).contains("npy"));
    std::fs::write(&q, b"garbage").unwrap();
    assert!(file_msg(read_matrix(&q).unwrap_err()).contains("npy"));
    std::fs::write(&q, b"").unwrap();
    assert!(file_msg(read_matrix(&q).unwrap_err()).contains("npy"));
}

#[test]
fn npy_missing_file_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = read_matrix(dir.path().join("nope.npy")).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
}

// ---------------------------------------------------------------- codebook safetensors

#[test]
fn codebook_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let index = small_index(EmbeddingKind::None);
    let p = dir.path().join("codebooks.safetensors");
    write_codebooks(&p, &index.codebooks).unwrap();
    assert_eq!(read_codebooks(&p).unwrap(), index.codebooks);
}

/// Writes `codebook.{l}` tensors as F16 (as `save_file` does for a half-precision model),
/// plus an unrelated tensor that the reader must ignore.
#[test]
fn codebook_f16_file_is_widened() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
    let shapes = [(33usize, 6usize), (21, 6)];
    let halves: Vec<Vec<f16>> = shapes
        .iter()
        .map(|&(k, d)| {
            (0..k * d)
                .map(|_| f16::from_f32(rng.random_range(-1.0f32..1.0)))
                .collect()
        })
        .collect();
    let bytes: Vec<Vec<u8>> = halves
        .iter()
        .map(|h| bytemuck::cast_slice(h).to_vec())
        .collect();
    let mut views: Vec<(String, TensorView<'_>)> = shapes
        .iter()
        .zip(&bytes)
        .enumerate()
        .map(|(l, (&(k, d), b))| {
            (
                format!("codebook.{l}"),
                TensorView::new(Dtype::F16, vec![k, d], b).unwrap(),
            )
        })
        .collect();
    let step = 7i64.to_le_bytes();
    views.push((
        "step".into(),
        TensorView::new(Dtype::I64, vec![1], &step).unwrap(),
    ));
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let p = dir.path().join("cb16.safetensors");
    std::fs::write(&p, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();

    let cb = read_codebooks(&p).unwrap();
    assert_eq!(cb.sizes(), vec![33, 21]);
    assert_eq!(cb.dim(), 6);
    for (l, h) in halves.iter().enumerate() {
        let want: Vec<f32> = h.iter().map(|v| v.to_f32()).collect();
        assert_eq!(cb.level(l).words().data(), &want[..]);
    }
}

#[test]
fn codebook_file_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let one = [0u8; 4 * 6];
    let write = |name: &str, tensors: Vec<(&str, Dtype, Vec<usize>)>| {
        let views: Vec<(String, TensorView<'_>)> = tensors
            .into_iter()
            .map(|(n, dt, shape)| {
                let len = shape.iter().product::<usize>() * dt.bitsize() / 8;
                (
                    n.to_string(),
                    TensorView::new(dt, shape, &one[..len]).unwrap(),
                )
            })
            .collect();
        let p = dir.path().join(name);
        std::fs::write(&p, safetensors::serialize(views, None).unwrap()).unwrap();
        p
    };
    let gap = write(
        "gap.safetensors",
        vec![
            ("codebook.0", Dtype::F32, vec![2, 3]),
            ("codebook.2", Dtype::F32, vec![2, 3]),
        ],
    );
    let msg = file_msg(read_codebooks(&gap).unwrap_err());
    assert!(msg.contains("missing tensor codebook.1"), "{msg}");

    let rank = write(
        "rank.safetensors",
        vec![("codebook.0", Dtype::F32, vec![6])],
    );
    let msg = file_msg(read_codebooks(&rank).unwrap_err());
    assert!(msg.contains("shape"), "{msg}");

    let dtype = write(
        "dtype.safetensors",
        vec![("codebook.0", Dtype::I32, vec![2, 3])],
    );
    let msg = file_msg(read_codebooks(&dtype).unwrap_err());
    assert!(msg.contains("dtype"), "{msg}");

    let dims = write(
        "dims.safetensors",
        vec![
            ("codebook.0", Dtype::F32, vec![2, 3]),
            ("codebook.1", Dtype::F32, vec![3, 2]),
        ],
    );
    let msg = file_msg(read_codebooks(&dims).unwrap_err());
    assert!(msg.contains("dimension"), "{msg}");

    let none = write(
        "none.safetensors",
        vec![("weights", Dtype::F32, vec![2, 3])],
    );
    let msg = file_msg(read_codebooks(&none).unwrap_err());
    assert!(msg.contains("no codebook"), "{msg}");
}

#[test]
fn random_structural_edits_with_valid_checksums_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let index = small_index(EmbeddingKind::F32);
    let p = saved(&dir, &index);
    let q = dir.path().join("edited.rqt");
    let targets = [
        "codes",
        "tree.0.code",
        "tree.0.item_start",
        "tree.0.child_start",
        "tree.1.item_start",
        "tree.1.child_start",
        "tree.1.representative",
        "tree.2.item_start",
        "tree.2.representative",
        "tree.2.centroid_norm",
        "item_norms",
        "ids",
    ];
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
    let mut rejected = 0;
    for _ in 0..200 {
        let name = targets[rng.random_range(0..targets.len())];
        let byte: u8 = rng.random();
        let at: f64 = rng.random();
        rewrite(&p, &q, true, |t, _| {
            let b = &mut t.get_mut(name).unwrap().bytes;
            let i = ((b.len() as f64 * at) as usize).min(b.len() - 1);
            b[i] = byte;
        });
        if load(&q).is_err() {
            rejected += 1;
        }
    }
    assert!(rejected > 100, "only {rejected} of 200 edits were rejected");
}

#[test]
fn npy_forged_huge_shapes_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("huge.npy");
    for shape in [
        "(8589934592, 8589934592)",
        "(2147483648, 2147483648)",
        "(4, 1000000)",
        // Zero elements, but npyz's stride products overflow: refused before npyz sees it.
        "(1099511627776, 1099511627776, 0)",
        "[4294967296, 4294967296]",
    ] {
        forged_npy(
            &p,
            &format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"),
            &[0u8; 64],
        );
        let msg = file_msg(read_matrix(&p).unwrap_err());
        assert!(
            msg.contains("overflow") || msg.contains("truncated"),
            "{shape}: {msg}"
        );
    }
    // The forger itself writes a readable file.
    forged_npy(
        &p,
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }",
        &[0u8; 16],
    );
    assert_eq!(read_matrix(&p).unwrap(), Matrix::zeros(2, 2));
}

/// Stored norms that are not those of the reconstructions (a file rewritten with valid
/// checksums; l2 search would add them to every score) are refused, by position or node.
#[test]
fn norms_that_do_not_match_the_codes_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = saved(&dir, &small_index(EmbeddingKind::None));
    for (tensor, at, what) in [
        ("item_norms", 5, "item norm at position 5"),
        (
            "tree.1.centroid_norm",
            3,
            "centroid norm of node 3 at depth 2",
        ),
    ] {
        let q = dir.path().join("norms.rqt");
        rewrite(&p, &q, true, |t, _| {
            let b = &mut t.get_mut(tensor).unwrap().bytes[4 * at..4 * at + 4];
            let v = f32::from_le_bytes(b.try_into().unwrap());
            b.copy_from_slice(&(v * 1.5 + 1.0).to_le_bytes());
        });
        let msg = load_err(&q);
        assert!(msg.contains(what), "{tensor}: {msg}");
    }
    let mut index = load(&p).unwrap();
    index.tree.depths[0].centroid_norm[0] += 1.0;
    let e = index.validate().expect_err("a wrong centroid norm");
    assert!(
        e.to_string().contains("centroid norm of node 0 at depth 1"),
        "{e}"
    );
}
