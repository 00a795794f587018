//! `.npy` files (DESIGN §8): embeddings and queries in (2-D, C order, `f32` or `f16`), ids and
//! ground truth in (1-D / 2-D, `i64` or `i32`), search results out (`i64` and `f32`, 2-D).
//!
//! Every problem with a file's content (wrong dtype, wrong rank, Fortran order, a truncated
//! data section, a malformed header, a shape whose product overflows) is an [`Error::File`]
//! naming the file and the problem, found without a panic; failures of the operating system
//! are [`Error::Io`]. Readers do not check float values for finiteness: callers do, naming the
//! tensor (`items`, `queries`, …).
//!
//! Writers go through [`write_atomic`]: the data goes to a temporary name in the same
//! directory, is flushed to disk and renamed over the target, so a reader never sees a
//! half-written file.

use std::fs::File;
use std::io::{BufWriter, Cursor};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use half::f16;
use memmap2::Mmap;
use npyz::{DType, NpyFile, NpyHeader, Order, TypeChar, WriterBuilder};

use crate::error::{Error, Result};
use crate::matrix::Matrix;

/// A 2-D `i64` array (`rows × cols`, row-major), e.g. ground-truth ids (`B × k`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct I64Matrix {
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Values, row-major, `rows * cols` of them.
    pub data: Vec<i64>,
}

/// A parsed `.npy` file: its header and the raw data bytes that follow it, with the shape
/// already checked to fit in memory and the data section checked to be complete.
struct Parsed {
    header: NpyHeader,
    shape: Vec<usize>,
    bytes: Mmap,
    data_start: usize,
}

impl Parsed {
    /// The data section, exactly `len × itemsize` bytes (a trailing surplus is ignored).
    fn data(&self) -> &[u8] {
        &self.bytes[self.data_start..]
    }
}

fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::file(path, msg)
}

/// Maps the file and parses its header; checks the element count against the size of the
/// data section (a short file is reported as truncated).
fn parse(path: &Path) -> Result<Parsed> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the mapping is only read; as with any mapped file, another process truncating
    // it while we read is outside our control.
    let bytes = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    check_header_shape(&bytes, path)?;
    let mut cursor = Cursor::new(&bytes[..]);
    let header = NpyHeader::from_reader(&mut cursor).map_err(|e| {
        // A safetensors file (an index or codebooks) starts with its header's length, then
        // the JSON header.
        let hint = if bytes.get(8) == Some(&b'{') {
            " (it looks like a safetensors file, e.g. an rqtree index or codebooks: this \
             option takes a .npy array)"
        } else {
            ""
        };
        bad(path, format!("not a valid .npy file: {e}{hint}"))
    })?;
    let pos = cursor.position();
    let shape = header
        .shape()
        .iter()
        .map(|&s| usize::try_from(s).ok())
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| bad(path, "shape does not fit in memory"))?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, &s| a.checked_mul(s))
        .ok_or_else(|| bad(path, format!("shape {shape:?} overflows")))?;
    let item = header
        .dtype()
        .num_bytes()
        .ok_or_else(|| bad(path, "dtype has no fixed size"))?;
    let need = count
        .checked_mul(item)
        .ok_or_else(|| bad(path, format!("shape {shape:?} overflows")))?;
    let data_start = usize::try_from(pos).unwrap_or(usize::MAX).min(bytes.len());
    let have = bytes.len() - data_start;
    if have < need {
        return Err(bad(
            path,
            format!("truncated: shape {shape:?} needs {need} data bytes, the file has {have}"),
        ));
    }
    Ok(Parsed {
        header,
        shape,
        bytes,
        data_start,
    })
}

/// The header dict of a `.npy` file (the bytes after the magic, version and length), or
/// `None` when the preamble is not one of versions 1–3 or the dict is cut short (npyz then
/// reports the problem).
fn header_dict(bytes: &[u8]) -> Option<&[u8]> {
    if bytes.get(..6)? != b"\x93NUMPY" {
        return None;
    }
    let (len, start): (usize, usize) = match bytes.get(6)? {
        1 => (
            usize::from(u16::from_le_bytes(bytes.get(8..10)?.try_into().ok()?)),
            10,
        ),
        2 | 3 => {
            let len = u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?);
            (usize::try_from(len).ok()?, 12)
        }
        _ => return None,
    };
    bytes.get(start..start.checked_add(len)?)
}

/// Checks the `shape` entry of the header dict before npyz sees it: npyz multiplies the
/// dimensions unchecked (a panic on a forged header where overflow checks are on, a wrapped
/// count elsewhere). The dict is read as npyz reads it (UTF-8, one trailing newline dropped,
/// a Python literal parsed by `py_literal`), so the key is found however it is spelled
/// (escapes included), and a record field named `shape` inside `descr` is not taken
/// for it. The product of the integer dimensions (zeros counted as ones, so that every
/// partial product is covered) must fit in `u64`. Whatever npyz rejects by itself (a dict
/// that does not parse, a negative or non-integer dimension) is left to it.
fn check_header_shape(bytes: &[u8], path: &Path) -> Result<()> {
    let Some(dict) = header_dict(bytes) else {
        return Ok(());
    };
    let dict = dict.strip_suffix(b"\n").unwrap_or(dict);
    let Some(py_literal::Value::Dict(entries)) = std::str::from_utf8(dict)
        .ok()
        .and_then(|text| text.parse::<py_literal::Value>().ok())
    else {
        return Ok(());
    };
    for (key, value) in &entries {
        let (py_literal::Value::Tuple(dims) | py_literal::Value::List(dims)) = value else {
            continue;
        };
        if key.as_string().map(String::as_str) != Some("shape") {
            continue;
        }
        let mut product = 1u64;
        for dim in dims {
            let py_literal::Value::Integer(d) = dim else {
                continue;
            };
            let Ok(d) = d.to_string().parse::<u64>() else {
                continue;
            };
            product = product.checked_mul(d.max(1)).ok_or_else(|| {
                let text = dims
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                bad(
                    path,
                    format!("not a valid .npy file: shape ({text}) overflows"),
                )
            })?;
        }
    }
    Ok(())
}

/// The dtype as numpy writes it (`<f4`, `<i4`, …), for error messages.
fn dtype_name(dtype: &DType) -> String {
    match dtype {
        DType::Plain(t) => t.to_string(),
        other => format!("{:?}", other.descr()),
    }
}

/// `(type char, bytes)` of a plain dtype, `None` for records and arrays.
fn plain(dtype: &DType) -> Option<(TypeChar, usize)> {
    match dtype {
        DType::Plain(t) => Some((t.type_char(), t.num_bytes()?)),
        _ => None,
    }
}

fn check_c_order(p: &Parsed, path: &Path) -> Result<()> {
    if p.header.order() == Order::Fortran && p.shape.len() > 1 {
        return Err(bad(
            path,
            "array is in Fortran order; save it in C order (numpy.ascontiguousarray)",
        ));
    }
    Ok(())
}

fn check_rank(p: &Parsed, path: &Path, ranks: &[usize], what: &str) -> Result<()> {
    if !ranks.contains(&p.shape.len()) {
        return Err(bad(
            path,
            format!(
                "{what} must be a {}-D array, got rank {} (shape {:?})",
                ranks
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join("-D or "),
                p.shape.len(),
                p.shape
            ),
        ));
    }
    Ok(())
}

/// Decodes the data section with npyz as `T` (npyz handles byte order).
fn decode<T: npyz::Deserialize>(p: &Parsed, path: &Path) -> Result<Vec<T>> {
    NpyFile::with_header(p.header.clone(), p.data())
        .into_vec::<T>()
        .map_err(|e| bad(path, format!("cannot decode data: {e}")))
}

/// Reads a 2-D, C-order `f32` or `f16` array (`f16` is widened) as a `rows × cols` [`Matrix`].
/// Values are not checked for finiteness.
pub fn read_matrix(path: impl AsRef<Path>) -> Result<Matrix> {
    let path = path.as_ref();
    let p = parse(path)?;
    check_rank(&p, path, &[2], "an embedding matrix")?;
    check_c_order(&p, path)?;
    let dtype = p.header.dtype();
    let data = match plain(&dtype) {
        Some((TypeChar::Float, 4)) => decode::<f32>(&p, path)?,
        Some((TypeChar::Float, 2)) => decode::<f16>(&p, path)?
            .into_iter()
            .map(f16::to_f32)
            .collect(),
        _ => {
            return Err(bad(
                path,
                format!(
                    "dtype {} is not supported for embeddings: expected float32 or float16",
                    dtype_name(&dtype)
                ),
            ))
        }
    };
    Matrix::new(p.shape[0], p.shape[1], data).map_err(|e| bad(path, e.to_string()))
}

/// Reads a 1-D or 2-D `i64` (or `i32`, widened) array: its shape and values in C order.
fn read_ints(path: &Path, ranks: &[usize], what: &str) -> Result<(Vec<usize>, Vec<i64>)> {
    let p = parse(path)?;
    check_rank(&p, path, ranks, what)?;
    check_c_order(&p, path)?;
    let dtype = p.header.dtype();
    let data = match plain(&dtype) {
        Some((TypeChar::Int, 8)) => decode::<i64>(&p, path)?,
        Some((TypeChar::Int, 4)) => decode::<i32>(&p, path)?
            .into_iter()
            .map(i64::from)
            .collect(),
        _ => {
            return Err(bad(
                path,
                format!(
                    "dtype {} is not supported for {what}: expected int64 or int32",
                    dtype_name(&dtype)
                ),
            ))
        }
    };
    Ok((p.shape, data))
}

/// Reads a 1-D `i64` (or `i32`, widened) array, e.g. item ids (`N`).
pub fn read_i64_1d(path: impl AsRef<Path>) -> Result<Vec<i64>> {
    read_ints(path.as_ref(), &[1], "an id array").map(|(_, data)| data)
}

/// Reads item ids: a 1-D array `N`, or a 2-D column `N × 1`, of `i64` (or `i32`, widened).
pub fn read_ids(path: impl AsRef<Path>) -> Result<Vec<i64>> {
    let path = path.as_ref();
    let (shape, data) = read_ints(path, &[1, 2], "an id array")?;
    if shape.len() == 2 && shape[1] != 1 {
        return Err(bad(
            path,
            format!("ids must be N or N x 1, got shape {shape:?}"),
        ));
    }
    Ok(data)
}

/// Reads a 2-D C-order `i64` (or `i32`, widened) array, e.g. ground truth (`B × k`).
pub fn read_i64_2d(path: impl AsRef<Path>) -> Result<I64Matrix> {
    let (shape, data) = read_ints(path.as_ref(), &[2], "an id matrix")?;
    Ok(I64Matrix {
        rows: shape[0],
        cols: shape[1],
        data,
    })
}

/// Writes to `path` atomically: `write` receives a temporary path in the same directory and
/// must create and fill it; the file is then fsynced and renamed over `path`, and on Unix the
/// directory is fsynced so that the rename itself survives a crash. On any error before the
/// rename the temporary file is removed and `path` is left untouched; the error names `path`
/// (the temporary name in parentheses), never the temporary file alone. An error syncing the
/// directory comes after the rename: `path` then holds the complete new file. A symbolic link
/// at `path` is written through (the file it names is replaced, the link stays), and a file
/// replaced keeps its permissions.
pub fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let requested = path;
    let target = through_links(path)?;
    let path = target.as_path();
    let name = path
        .file_name()
        .ok_or_else(|| Error::param(format!("{} is not a file path", requested.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, AtomicOrdering::Relaxed);
    tmp_name.push(format!(".tmp{}.{seq}", std::process::id()));
    let tmp: PathBuf = path.with_file_name(tmp_name);
    let permissions = std::fs::metadata(path).ok().map(|m| m.permissions());
    let result = write(&tmp)
        .and_then(|()| match permissions {
            Some(p) => std::fs::set_permissions(&tmp, p).map_err(|e| Error::io(&tmp, e)),
            None => Ok(()),
        })
        .and_then(|()| {
            File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io(&tmp, e))
        })
        .map_err(|e| name_destination(e, &tmp, requested))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(requested, e)));
    if result.is_err() {
        // Best effort: the temporary file may not exist if `write` failed early.
        let _ = std::fs::remove_file(&tmp);
    }
    result.and_then(|()| sync_parent(path))
}

/// `path` with symbolic links at its last component followed (a link's target is relative
/// to the link's folder), so that writing replaces the file a link names rather than the
/// link; a dangling link gives the path it names. More than 40 links in a row is an error.
fn through_links(path: &Path) -> Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let link = std::fs::read_link(&p).map_err(|e| Error::io(&p, e))?;
                p = match p.parent() {
                    Some(dir) => dir.join(link),
                    None => link,
                };
            }
            _ => return Ok(p),
        }
    }
    Err(Error::file(path, "too many levels of symbolic links"))
}

/// Flushes the directory entry of `path` (its parent directory) to disk, on Unix; elsewhere a
/// directory cannot be opened for syncing and this does nothing.
fn sync_parent(path: &Path) -> Result<()> {
    if cfg!(unix) {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(dir, e))?;
    }
    Ok(())
}

/// `e` with the hidden temporary file `tmp` replaced by the destination `path` the caller
/// asked for; the temporary name follows in parentheses. Errors about other paths pass as they
/// are.
fn name_destination(e: Error, tmp: &Path, path: &Path) -> Error {
    let note = format!("(temporary file {})", tmp.display());
    match e {
        Error::Io { path: p, source } if p == tmp => Error::io(
            path,
            std::io::Error::new(source.kind(), format!("{source} {note}")),
        ),
        Error::File { path: p, msg } if p == tmp => Error::file(path, format!("{msg} {note}")),
        other => other,
    }
}

/// Writes `data` (`rows × cols`, row-major) as a 2-D C-order `.npy` of `T`'s default dtype.
fn write_2d<T: npyz::AutoSerialize + Copy>(
    path: &Path,
    rows: usize,
    cols: usize,
    data: &[T],
) -> Result<()> {
    if rows.checked_mul(cols) != Some(data.len()) {
        return Err(Error::shape(format!(
            "writing {}: {rows} x {cols} needs {} values, got {}",
            path.display(),
            rows.saturating_mul(cols),
            data.len()
        )));
    }
    write_atomic(path, |tmp| {
        let io = |e| Error::io(tmp, e);
        let file = BufWriter::new(File::create(tmp).map_err(io)?);
        let mut w = npyz::WriteOptions::<T>::new()
            .default_dtype()
            .shape(&[rows as u64, cols as u64])
            .writer(file)
            .begin_nd()
            .map_err(io)?;
        w.extend(data.iter().copied()).map_err(io)?;
        w.finish().map_err(io)
    })
}

/// Writes a `rows × cols` `i64` array (e.g. result ids `B × k`) as `.npy`, atomically.
pub fn write_i64(path: impl AsRef<Path>, rows: usize, cols: usize, data: &[i64]) -> Result<()> {
    write_2d(path.as_ref(), rows, cols, data)
}

/// Writes a matrix (e.g. result scores `B × k`) as a 2-D `f32` `.npy`, atomically.
pub fn write_f32(path: impl AsRef<Path>, m: &Matrix) -> Result<()> {
    write_2d(path.as_ref(), m.rows(), m.cols(), m.data())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version-1 `.npy` preamble and header `dict` (no data).
    fn forged(dict: &str) -> Vec<u8> {
        let mut header = dict.to_string();
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend((header.len() as u16).to_le_bytes());
        b.extend(header.as_bytes());
        b
    }

    /// npyz reads the header dict as a Python literal, so the key `shape` may be spelled with
    /// escape sequences (`\x73hape`); an overflowing shape behind such a key must still be refused
    /// before npyz multiplies it (a panic in builds with overflow checks).
    #[test]
    fn overflowing_shapes_are_found_however_the_key_is_spelled() {
        let path = Path::new("forged.npy");
        for key in ["'shape'", "\"shape\"", "'\\x73hape'", "'sh\\u0061pe'"] {
            let dict = format!(
                "{{'descr': '<f4', 'fortran_order': False, {key}: (8589934592, 8589934592), }}"
            );
            let e = check_header_shape(&forged(&dict), path)
                .expect_err(&format!("{key}: overflow not found"));
            assert!(e.to_string().contains("overflows"), "{key}: {e}");
        }
        // A record field named `shape` inside `descr` is not the array's shape.
        let dict = "{'descr': [('shape', '<f4', (8589934592,))], 'fortran_order': False, \
                    'shape': (2,), }";
        check_header_shape(&forged(dict), path).unwrap();
    }
}
