//! Item embeddings kept in the index for exact re-ranking, in item (code) order.

use half::{bf16, f16};

use crate::error::{Error, Result};
use crate::matrix::{check_finite, Matrix};

/// How stored embeddings are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmbeddingKind {
    /// Not stored; `rerank = exact` is unavailable.
    None,
    /// Half precision (2 bytes per value).
    F16,
    /// bfloat16 (2 bytes per value: f32's exponent range, 8 significant bits).
    Bf16,
    /// Single precision.
    F32,
}

impl std::str::FromStr for EmbeddingKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(EmbeddingKind::None),
            "f16" => Ok(EmbeddingKind::F16),
            "bf16" => Ok(EmbeddingKind::Bf16),
            "f32" => Ok(EmbeddingKind::F32),
            _ => Err(Error::param(format!(
                "embedding storage '{s}': expected none, f16, bf16 or f32"
            ))),
        }
    }
}

/// `N × d` embeddings, row `i` = item position `i`.
#[derive(Clone, Debug, PartialEq)]
pub enum Embeddings {
    /// f32 rows.
    F32(Matrix),
    /// f16 rows, row-major, `rows × cols`.
    F16 {
        /// Number of rows `N`.
        rows: usize,
        /// Dimension `d`.
        cols: usize,
        /// Values, row-major.
        data: Vec<f16>,
    },
    /// bf16 rows, row-major, `rows × cols`.
    Bf16 {
        /// Number of rows `N`.
        rows: usize,
        /// Dimension `d`.
        cols: usize,
        /// Values, row-major.
        data: Vec<bf16>,
    },
}

/// Errors unless every value of `m` (`rows × cols`, finite) stays finite in `kind`'s storage:
/// f16 overflows above 65504 in magnitude, bf16 only within half a unit of `f32::MAX`. The
/// error names `tensor` and the row and column of the first such value, so that an index is
/// never built with embeddings that [`Embeddings::check`] (and so saving and loading) would
/// reject.
pub fn check_storable(m: &Matrix, kind: EmbeddingKind, tensor: &str) -> Result<()> {
    let (name, fits): (&str, fn(f32) -> bool) = match kind {
        EmbeddingKind::None | EmbeddingKind::F32 => return Ok(()),
        EmbeddingKind::F16 => ("f16", |v| f16::from_f32(v).is_finite()),
        EmbeddingKind::Bf16 => ("bf16", |v| bf16::from_f32(v).is_finite()),
    };
    match m.data().iter().position(|&v| !fits(v)) {
        None => Ok(()),
        Some(p) => {
            let cols = m.cols().max(1);
            Err(Error::param(format!(
                "{tensor}, row {}, column {}: {} is out of the range of {name} embeddings \
                 (keep f32 embeddings, or scale the items)",
                p / cols,
                p % cols,
                m.data()[p]
            )))
        }
    }
}

/// Errors unless a half-width `rows × cols` array holds exactly `rows · cols` values, all
/// finite (`finite` tests one value, `widen` gives it for the message); the first non-finite
/// value is an [`Error::NonFinite`] of `embeddings` with its row (item position) and column.
fn check_half<T: Copy>(
    rows: usize,
    cols: usize,
    data: &[T],
    finite: fn(T) -> bool,
    widen: fn(T) -> f32,
) -> Result<()> {
    if rows.checked_mul(cols) != Some(data.len()) {
        return Err(Error::index(format!(
            "embeddings are {rows} x {cols} but hold {} values",
            data.len()
        )));
    }
    match data.iter().position(|&v| !finite(v)) {
        None => Ok(()),
        Some(p) => Err(Error::NonFinite {
            tensor: "embeddings".into(),
            row: p / cols.max(1),
            col: p % cols.max(1),
            value: widen(data[p]),
        }),
    }
}

impl Embeddings {
    /// Errors unless the data holds exactly `rows × cols` values (the half-width variants'
    /// fields are public, so this is not guaranteed by construction) and every value is
    /// finite; rows are item positions, named in the error as rows of `embeddings`.
    pub fn check(&self) -> Result<()> {
        match self {
            Embeddings::F32(m) => check_finite(m.data(), m.cols(), "embeddings"),
            Embeddings::F16 { rows, cols, data } => {
                check_half(*rows, *cols, data, f16::is_finite, f16::to_f32)
            }
            Embeddings::Bf16 { rows, cols, data } => {
                check_half(*rows, *cols, data, bf16::is_finite, bf16::to_f32)
            }
        }
    }

    /// Converts `m` into the requested storage (`None` for [`EmbeddingKind::None`]). Values
    /// beyond the range of a half-width kind become infinite, which [`Embeddings::check`]
    /// rejects: check them first with [`check_storable`].
    pub fn store(m: Matrix, kind: EmbeddingKind) -> Option<Embeddings> {
        match kind {
            EmbeddingKind::None => None,
            EmbeddingKind::F32 => Some(Embeddings::F32(m)),
            EmbeddingKind::F16 => Some(Embeddings::F16 {
                rows: m.rows(),
                cols: m.cols(),
                data: m.data().iter().map(|&v| f16::from_f32(v)).collect(),
            }),
            EmbeddingKind::Bf16 => Some(Embeddings::Bf16 {
                rows: m.rows(),
                cols: m.cols(),
                data: m.data().iter().map(|&v| bf16::from_f32(v)).collect(),
            }),
        }
    }
    /// Number of rows.
    pub fn rows(&self) -> usize {
        match self {
            Embeddings::F32(m) => m.rows(),
            Embeddings::F16 { rows, .. } | Embeddings::Bf16 { rows, .. } => *rows,
        }
    }
    /// Dimension.
    pub fn cols(&self) -> usize {
        match self {
            Embeddings::F32(m) => m.cols(),
            Embeddings::F16 { cols, .. } | Embeddings::Bf16 { cols, .. } => *cols,
        }
    }
    /// The storage kind.
    pub fn kind(&self) -> EmbeddingKind {
        match self {
            Embeddings::F32(_) => EmbeddingKind::F32,
            Embeddings::F16 { .. } => EmbeddingKind::F16,
            Embeddings::Bf16 { .. } => EmbeddingKind::Bf16,
        }
    }
    /// Row `i` widened to f32 into `out` (`out.len() == cols`).
    pub fn row_into(&self, i: usize, out: &mut [f32]) {
        match self {
            Embeddings::F32(m) => out.copy_from_slice(m.row(i)),
            Embeddings::F16 { cols, data, .. } => {
                for (o, v) in out.iter_mut().zip(&data[i * cols..(i + 1) * cols]) {
                    *o = v.to_f32();
                }
            }
            Embeddings::Bf16 { cols, data, .. } => {
                for (o, v) in out.iter_mut().zip(&data[i * cols..(i + 1) * cols]) {
                    *o = v.to_f32();
                }
            }
        }
    }
    /// Row `i` widened to f32.
    pub fn row(&self, i: usize) -> Vec<f32> {
        let mut out = vec![0.0; self.cols()];
        self.row_into(i, &mut out);
        out
    }
}
