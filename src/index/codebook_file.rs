//! Codebooks in and out as safetensors (DESIGN §8): tensors `codebook.0 … codebook.{L-1}`,
//! each `K_l × d`, as PyTorch's `safetensors.torch.save_file` writes them. Written as `F32`;
//! `F32`, `F16` and `BF16` are accepted on read (widened to `f32`). Tensors with other names
//! are ignored, so a training checkpoint that also holds other state can be read directly.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use half::{bf16, f16};
use safetensors::tensor::{Dtype, TensorView, View};
use safetensors::SafeTensors;

use crate::error::{Error, Result};
use crate::index::codebooks::{Codebooks, MAX_LEVELS};
use crate::matrix::Matrix;
use crate::npy::write_atomic;

/// A tensor to be written: dtype, shape and little-endian bytes (borrowed where the in-memory
/// layout already matches).
pub(crate) struct RawTensor<'a> {
    pub(crate) dtype: Dtype,
    pub(crate) shape: Vec<usize>,
    pub(crate) bytes: Cow<'a, [u8]>,
}

impl View for RawTensor<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Writes `tensors` and `metadata` as a safetensors file at `path`, atomically (temporary
/// name in the same directory, fsync, rename).
pub(crate) fn write_safetensors(
    path: &Path,
    tensors: Vec<(String, RawTensor<'_>)>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    write_atomic(path, |tmp| {
        safetensors::serialize_to_file(tensors, metadata, tmp).map_err(|e| match e {
            safetensors::SafeTensorError::IoError(io) => Error::io(tmp, io),
            other => Error::file(tmp, format!("cannot serialize: {other}")),
        })
    })
}

/// Copies little-endian bytes into an owned, aligned `Vec<T>` (tensor data in a mapped file
/// may be unaligned). A trailing partial element is ignored; safetensors has already checked
/// that the byte length equals `elements × size_of::<T>()`. Assumes a little-endian host.
pub(crate) fn pod_vec<T: bytemuck::Pod>(bytes: &[u8]) -> Vec<T> {
    let n = bytes.len() / std::mem::size_of::<T>();
    let mut v = vec![T::zeroed(); n];
    bytemuck::cast_slice_mut::<T, u8>(&mut v)
        .copy_from_slice(&bytes[..n * std::mem::size_of::<T>()]);
    v
}

/// The values of a floating-point tensor widened to `f32` (`F32`, `F16` or `BF16`); any other
/// dtype is an [`Error::File`] naming the tensor.
pub(crate) fn tensor_f32(view: &TensorView<'_>, name: &str, path: &Path) -> Result<Vec<f32>> {
    match view.dtype() {
        Dtype::F32 => Ok(pod_vec::<f32>(view.data())),
        Dtype::F16 => Ok(pod_vec::<f16>(view.data())
            .into_iter()
            .map(f16::to_f32)
            .collect()),
        Dtype::BF16 => Ok(pod_vec::<bf16>(view.data())
            .into_iter()
            .map(bf16::to_f32)
            .collect()),
        other => Err(Error::file(
            path,
            format!("tensor {name} has dtype {other:?}, expected F32, F16 or BF16"),
        )),
    }
}

/// Parses a safetensors buffer, reporting header problems (not safetensors, truncated,
/// inconsistent offsets) as [`Error::File`].
pub(crate) fn parse_safetensors<'a>(bytes: &'a [u8], path: &Path) -> Result<SafeTensors<'a>> {
    if bytes.starts_with(b"\x93NUMPY") {
        return Err(Error::file(
            path,
            "this is a .npy array, not a safetensors file (an rqtree index or codebooks)",
        ));
    }
    SafeTensors::deserialize(bytes).map_err(|e| {
        Error::file(
            path,
            format!("not a valid safetensors file (corrupted or truncated): {e}"),
        )
    })
}

/// Reads tensors `codebook.0 … codebook.{levels-1}` from a parsed file (each 2-D `K × d`,
/// float), validated by [`Codebooks::from_matrices`]; all errors name `path`.
pub(crate) fn codebooks_from(
    st: &SafeTensors<'_>,
    levels: usize,
    path: &Path,
) -> Result<Codebooks> {
    let mut mats = Vec::with_capacity(levels);
    for l in 0..levels {
        let name = format!("codebook.{l}");
        let view = st
            .tensor(&name)
            .map_err(|_| Error::file(path, format!("missing tensor {name}")))?;
        let &[k, d] = view.shape() else {
            return Err(Error::file(
                path,
                format!(
                    "tensor {name} has shape {:?}, expected 2-D [K, d]",
                    view.shape()
                ),
            ));
        };
        let data = tensor_f32(&view, &name, path)?;
        mats.push(Matrix::new(k, d, data).map_err(|e| Error::file(path, e.to_string()))?);
    }
    Codebooks::from_matrices(mats).map_err(|e| Error::file(path, e.to_string()))
}

/// Reads codebooks from a safetensors file holding `codebook.0 … codebook.{L-1}` (`K_l × d`,
/// `F32`/`F16`/`BF16`, `1 ≤ L ≤ 8`, equal `d`, finite values). The levels must be numbered
/// without gaps; tensors not named `codebook.*` are ignored.
pub fn read_codebooks(path: impl AsRef<Path>) -> Result<Codebooks> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = parse_safetensors(&bytes, path)?;
    let mut found = Vec::new();
    for name in st.names() {
        if let Some(suffix) = name.strip_prefix("codebook.") {
            match suffix.parse::<usize>() {
                Ok(l) if l < MAX_LEVELS && suffix == l.to_string() => found.push(l),
                _ => {
                    return Err(Error::file(
                        path,
                        format!(
                            "tensor {name}: expected codebook.0 … codebook.{}",
                            MAX_LEVELS - 1
                        ),
                    ))
                }
            }
        }
    }
    found.sort_unstable();
    if found.is_empty() {
        return Err(Error::file(path, "no codebook.0 … tensors in the file"));
    }
    if let Some(l) = (0..found.len()).find(|&l| found[l] != l) {
        return Err(Error::file(
            path,
            format!("missing tensor codebook.{l} (levels must be numbered 0, 1, …)"),
        ));
    }
    codebooks_from(&st, found.len(), path)
}

/// The codebooks as `codebook.{l}` tensors (`F32`, `K_l × d`), borrowing their data.
pub(crate) fn codebook_tensors(cb: &Codebooks) -> Vec<(String, RawTensor<'_>)> {
    cb.iter()
        .enumerate()
        .map(|(l, c)| {
            (
                format!("codebook.{l}"),
                RawTensor {
                    dtype: Dtype::F32,
                    shape: vec![c.len(), c.dim()],
                    bytes: Cow::Borrowed(bytemuck::cast_slice(c.words().data())),
                },
            )
        })
        .collect()
}

/// Writes codebooks as a safetensors file (`codebook.{l}`, `F32`, `K_l × d`) that
/// `safetensors.torch.load_file` reads back, atomically.
pub fn write_codebooks(path: impl AsRef<Path>, cb: &Codebooks) -> Result<()> {
    write_safetensors(path.as_ref(), codebook_tensors(cb), None)
}
