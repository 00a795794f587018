//! The index as one safetensors file (DESIGN §8), memory-mapped on load.
//!
//! Metadata (all values are strings): `format = "rqtree-index"`, `version = "1"`,
//! `metric = "ip" | "l2"`, `levels = "L"`, and `checksum.<tensor> = ` 16 hex digits of the
//! XXH64 (seed 0) of every tensor's bytes.
//!
//! Tensors (`l` is 0-based: `tree.0` is depth 1; `nodes_l` is the number of nodes at it):
//!
//! | name                     | dtype       | shape           |
//! |--------------------------|-------------|-----------------|
//! | `codebook.{l}`           | F32         | `[K_l, d]`      |
//! | `codes`                  | U8 or U16   | `[L, N]` (level-major, item order) |
//! | `ids`                    | I64         | `[N]`           |
//! | `item_norms`             | F32         | `[N]`           |
//! | `tree.{l}.code`          | U16 or U32  | `[nodes_l]`     |
//! | `tree.{l}.item_start`    | U32         | `[nodes_l + 1]` |
//! | `tree.{l}.child_start`   | U32         | `[nodes_l + 1]`, absent at the last depth |
//! | `tree.{l}.centroid_norm` | F32         | `[nodes_l]`     |
//! | `tree.{l}.representative`| U32         | `[nodes_l]`     |
//! | `embeddings` (optional)  | F32, F16 or BF16 | `[N, d]`        |
//!
//! [`load`] checks, in order: the safetensors header (a truncated or non-safetensors file),
//! the format and version, that the tensor set is exactly the expected one, every tensor's
//! checksum, every dtype and shape, then [`Index::validate`]. Any problem is an
//! [`Error::File`] naming the file and saying what is wrong; no byte sequence makes it panic.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::Path;

use memmap2::Mmap;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use xxhash_rust::xxh64::xxh64;

use crate::error::{Error, Result};
use crate::index::codebook_file::{
    codebook_tensors, codebooks_from, parse_safetensors, pod_vec, write_safetensors, RawTensor,
};
use crate::index::codebooks::MAX_LEVELS;
use crate::index::codes::{CodeData, Codes};
use crate::index::embeddings::{Embeddings, HalfRows};
use crate::index::tree::{Depth, Tree};
use crate::index::Index;
use crate::matrix::Matrix;
use crate::metric::Metric;

/// The `format` metadata value of an index file.
pub const FORMAT: &str = "rqtree-index";
/// The `version` metadata value written (and the only one read) by this build.
pub const VERSION: &str = "1";

/// The checksum stored as `checksum.<tensor>`: XXH64 (seed 0) of the tensor's bytes as 16
/// lowercase hex digits.
pub fn checksum(bytes: &[u8]) -> String {
    format!("{:016x}", xxh64(bytes, 0))
}

fn raw<T: bytemuck::Pod>(dtype: Dtype, shape: Vec<usize>, data: &[T]) -> RawTensor<'_> {
    RawTensor {
        dtype,
        shape,
        bytes: Cow::Borrowed(bytemuck::cast_slice(data)),
    }
}

/// Saves `index` (validated first: an invalid index is an [`Error::Index`] and nothing is
/// written) to `path` atomically: a temporary file in the same directory is written, fsynced
/// and renamed over `path`.
pub fn save(index: &Index, path: impl AsRef<Path>) -> Result<()> {
    index.validate()?;
    let levels = index.levels();
    let n = index.len();
    let mut tensors = codebook_tensors(&index.codebooks);
    tensors.push((
        "codes".into(),
        match index.codes.data() {
            CodeData::U8(v) => raw(Dtype::U8, vec![levels, n], v),
            CodeData::U16(v) => raw(Dtype::U16, vec![levels, n], v),
        },
    ));
    tensors.push(("ids".into(), raw(Dtype::I64, vec![n], &index.ids)));
    tensors.push((
        "item_norms".into(),
        raw(Dtype::F32, vec![n], &index.item_norms),
    ));
    for (l, dep) in index.tree.depths.iter().enumerate() {
        let nodes = dep.len();
        // Validated: every code is < K_l ≤ 65536, so it fits in u16.
        let code: Vec<u16> = dep.code.iter().map(|&c| c as u16).collect();
        tensors.push((
            format!("tree.{l}.code"),
            RawTensor {
                dtype: Dtype::U16,
                shape: vec![nodes],
                bytes: Cow::Owned(bytemuck::cast_slice(&code).to_vec()),
            },
        ));
        tensors.push((
            format!("tree.{l}.item_start"),
            raw(Dtype::U32, vec![nodes + 1], &dep.item_start),
        ));
        if l + 1 < levels {
            tensors.push((
                format!("tree.{l}.child_start"),
                raw(Dtype::U32, vec![nodes + 1], &dep.child_start),
            ));
        }
        tensors.push((
            format!("tree.{l}.centroid_norm"),
            raw(Dtype::F32, vec![nodes], &dep.centroid_norm),
        ));
        tensors.push((
            format!("tree.{l}.representative"),
            raw(Dtype::U32, vec![nodes], &dep.representative),
        ));
    }
    match &index.embeddings {
        None => {}
        Some(Embeddings::F32(m)) => tensors.push((
            "embeddings".into(),
            raw(Dtype::F32, vec![m.rows(), m.cols()], m.data()),
        )),
        Some(Embeddings::F16(h)) => tensors.push((
            "embeddings".into(),
            raw(Dtype::F16, vec![h.rows(), h.cols()], h.data()),
        )),
        Some(Embeddings::Bf16(h)) => tensors.push((
            "embeddings".into(),
            raw(Dtype::BF16, vec![h.rows(), h.cols()], h.data()),
        )),
    }
    let mut meta: HashMap<String, String> = HashMap::new();
    meta.insert("format".into(), FORMAT.into());
    meta.insert("version".into(), VERSION.into());
    meta.insert("metric".into(), index.metric.name().into());
    meta.insert("levels".into(), levels.to_string());
    for (name, t) in &tensors {
        meta.insert(format!("checksum.{name}"), checksum(&t.bytes));
    }
    write_safetensors(path.as_ref(), tensors, Some(meta))
}

/// Typed access to a parsed file's tensors, every error naming the file.
struct Tensors<'a> {
    st: SafeTensors<'a>,
    path: &'a Path,
}

impl<'a> Tensors<'a> {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::file(self.path, msg)
    }

    /// Tensor `name`, which must exist, have one of `dtypes` and (where given) `shape`.
    fn get(&self, name: &str, dtypes: &[Dtype], shape: Option<&[usize]>) -> Result<TensorView<'a>> {
        let view = self
            .st
            .tensor(name)
            .map_err(|_| self.err(format!("missing tensor {name}")))?;
        if !dtypes.contains(&view.dtype()) {
            return Err(self.err(format!(
                "tensor {name} has dtype {:?}, expected {}",
                view.dtype(),
                dtypes
                    .iter()
                    .map(|d| format!("{d:?}"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            )));
        }
        if let Some(shape) = shape {
            if view.shape() != shape {
                return Err(self.err(format!(
                    "tensor {name} has shape {:?}, expected {shape:?}",
                    view.shape()
                )));
            }
        }
        Ok(view)
    }

    /// Length of 1-D tensor `name` (any of `dtypes`).
    fn len_1d(&self, name: &str, dtypes: &[Dtype]) -> Result<usize> {
        let view = self.get(name, dtypes, None)?;
        match view.shape() {
            &[n] => Ok(n),
            s => Err(self.err(format!("tensor {name} has shape {s:?}, expected 1-D"))),
        }
    }

    /// `U32` tensor `name` of shape `[len]`.
    fn u32s(&self, name: &str, len: usize) -> Result<Vec<u32>> {
        Ok(pod_vec(self.get(name, &[Dtype::U32], Some(&[len]))?.data()))
    }

    /// `F32` tensor `name` of shape `[len]`.
    fn f32s(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        Ok(pod_vec(self.get(name, &[Dtype::F32], Some(&[len]))?.data()))
    }
}

/// The metadata value `key`, or an error saying it is missing.
fn meta_value<'m>(meta: &'m HashMap<String, String>, key: &str, path: &Path) -> Result<&'m str> {
    meta.get(key)
        .map(String::as_str)
        .ok_or_else(|| Error::file(path, format!("missing \"{key}\" metadata")))
}

/// Loads and validates an index file (see the module docs for the format and the checks).
/// The file is memory-mapped; arrays are copied into the returned [`Index`].
pub fn load(path: impl AsRef<Path>) -> Result<Index> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the mapping is only read, and only while `file` is open in this function; as
    // with any mapped file, another process truncating it meanwhile is outside our control.
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let bytes: &[u8] = &mmap;
    let st = parse_safetensors(bytes, path)?;
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::file(path, format!("not a valid safetensors file: {e}")))?;
    let meta = header
        .metadata()
        .clone()
        .ok_or_else(|| Error::file(path, "no metadata: not an rqtree index file"))?;

    match meta.get("format").map(String::as_str) {
        Some(FORMAT) => {}
        Some(f) => {
            return Err(Error::file(
                path,
                format!("format is \"{f}\", not \"{FORMAT}\": not an rqtree index file"),
            ))
        }
        None => {
            return Err(Error::file(
                path,
                "no \"format\" metadata: not an rqtree index file",
            ))
        }
    }
    let version = meta_value(&meta, "version", path)?;
    if version != VERSION {
        return Err(Error::file(
            path,
            format!("unknown index format version {version} (this build reads version {VERSION})"),
        ));
    }
    let metric_name = meta_value(&meta, "metric", path)?;
    let metric: Metric = metric_name.parse().map_err(|_| {
        Error::file(
            path,
            format!("unknown metric \"{metric_name}\" (expected ip or l2)"),
        )
    })?;
    let levels_str = meta_value(&meta, "levels", path)?;
    let levels = match levels_str.parse::<usize>() {
        Ok(l) if (1..=MAX_LEVELS).contains(&l) => l,
        _ => {
            return Err(Error::file(
                path,
                format!("levels = \"{levels_str}\", expected a number in 1..={MAX_LEVELS}"),
            ))
        }
    };

    // Exactly the expected tensor set.
    let mut expected: HashSet<String> = ["codes", "ids", "item_norms", "embeddings"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for l in 0..levels {
        expected.insert(format!("codebook.{l}"));
        for part in ["code", "item_start", "centroid_norm", "representative"] {
            expected.insert(format!("tree.{l}.{part}"));
        }
        if l + 1 < levels {
            expected.insert(format!("tree.{l}.child_start"));
        }
    }
    let mut names = st.names();
    names.sort_unstable();
    if let Some(name) = names.iter().find(|n| !expected.contains(**n)) {
        return Err(Error::file(
            path,
            format!("unexpected tensor {name} in an index with {levels} levels"),
        ));
    }

    // Integrity: every tensor's bytes against its stored checksum.
    for name in &names {
        let view = st
            .tensor(name)
            .map_err(|e| Error::file(path, format!("tensor {name}: {e}")))?;
        let stored = meta.get(&format!("checksum.{name}")).ok_or_else(|| {
            Error::file(
                path,
                format!("tensor {name} has no checksum.{name} metadata"),
            )
        })?;
        let computed = checksum(view.data());
        if *stored != computed {
            return Err(Error::file(
                path,
                format!(
                    "checksum mismatch in tensor {name} (stored {stored}, computed {computed}): \
                     the file is corrupted"
                ),
            ));
        }
    }

    let t = Tensors { st, path };
    let codebooks = codebooks_from(&t.st, levels, path)?;
    let d = codebooks.dim();
    let n = t.len_1d("ids", &[Dtype::I64])?;
    let ids: Vec<i64> = pod_vec(t.get("ids", &[Dtype::I64], None)?.data());
    let codes_view = t.get("codes", &[Dtype::U8, Dtype::U16], Some(&[levels, n]))?;
    let code_data = match codes_view.dtype() {
        Dtype::U8 => CodeData::U8(codes_view.data().to_vec()),
        _ => CodeData::U16(pod_vec(codes_view.data())),
    };
    let codes = Codes::new(levels, n, code_data).map_err(|e| t.err(e.to_string()))?;
    let item_norms = t.f32s("item_norms", n)?;

    let mut nodes = Vec::with_capacity(levels);
    for l in 0..levels {
        nodes.push(t.len_1d(&format!("tree.{l}.code"), &[Dtype::U16, Dtype::U32])?);
    }
    let mut depths = Vec::with_capacity(levels);
    for (l, &m) in nodes.iter().enumerate() {
        let name = format!("tree.{l}.code");
        let view = t.get(&name, &[Dtype::U16, Dtype::U32], Some(&[m]))?;
        let code: Vec<u32> = match view.dtype() {
            Dtype::U16 => pod_vec::<u16>(view.data())
                .into_iter()
                .map(u32::from)
                .collect(),
            _ => pod_vec(view.data()),
        };
        let child_start = match nodes.get(l + 1) {
            Some(&next) => {
                let cs = t.u32s(&format!("tree.{l}.child_start"), m + 1)?;
                // Bounds first, so that the tree validator can index the next depth safely.
                if cs.windows(2).any(|w| w[0] > w[1]) || cs.iter().any(|&c| c as usize > next) {
                    return Err(t.err(format!(
                        "tensor tree.{l}.child_start: child offsets must be non-decreasing \
                         and at most {next} (the node count of depth {})",
                        l + 2
                    )));
                }
                cs
            }
            None => Vec::new(),
        };
        depths.push(Depth {
            code,
            child_start,
            item_start: t.u32s(&format!("tree.{l}.item_start"), m + 1)?,
            centroid_norm: t.f32s(&format!("tree.{l}.centroid_norm"), m)?,
            representative: t.u32s(&format!("tree.{l}.representative"), m)?,
        });
    }

    let embeddings = if t.st.names().contains(&"embeddings") {
        let view = t.get(
            "embeddings",
            &[Dtype::F32, Dtype::F16, Dtype::BF16],
            Some(&[n, d]),
        )?;
        // Values are checked (finite) by `Index::validate` below, as when saving.
        Some(match view.dtype() {
            Dtype::F32 => Embeddings::F32(
                Matrix::new(n, d, pod_vec(view.data())).map_err(|e| t.err(e.to_string()))?,
            ),
            Dtype::F16 => Embeddings::F16(
                HalfRows::new(n, d, pod_vec(view.data())).map_err(|e| t.err(e.to_string()))?,
            ),
            _ => Embeddings::Bf16(
                HalfRows::new(n, d, pod_vec(view.data())).map_err(|e| t.err(e.to_string()))?,
            ),
        })
    } else {
        None
    };

    let index = Index {
        metric,
        codebooks,
        codes,
        ids,
        item_norms,
        tree: Tree { depths },
        embeddings,
    };
    index.validate().map_err(|e| t.err(e.to_string()))?;
    Ok(index)
}
