//! Item embeddings kept in the index for exact re-ranking, in item (code) order.

use half::{bf16, f16};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::matrix::{check_finite, Matrix, MaxAbsMemo};

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
    /// f16 rows.
    F16(HalfRows<f16>),
    /// bf16 rows.
    Bf16(HalfRows<bf16>),
}

/// A 16-bit float format embeddings may be stored in ([`struct@f16`] or [`bf16`]): sign in the top
/// bit, so the magnitudes of non-NaN values order as their low 15 bits.
pub trait HalfFloat: Copy + Send + Sync + Into<f32> + 'static {
    /// The bit pattern of +∞; larger 15-bit magnitudes are NaNs.
    const INFINITY_BITS: u16;
    /// The value's bits.
    fn to_bits(self) -> u16;
    /// The value of `bits`.
    fn from_bits(bits: u16) -> Self;
}

impl HalfFloat for f16 {
    const INFINITY_BITS: u16 = 0x7c00;
    fn to_bits(self) -> u16 {
        f16::to_bits(self)
    }
    fn from_bits(bits: u16) -> Self {
        f16::from_bits(bits)
    }
}

impl HalfFloat for bf16 {
    const INFINITY_BITS: u16 = 0x7f80;
    fn to_bits(self) -> u16 {
        bf16::to_bits(self)
    }
    fn from_bits(bits: u16) -> Self {
        bf16::from_bits(bits)
    }
}

/// `rows × cols` values of a 16-bit float format, row-major (`data.len() == rows · cols`, by
/// construction). Their largest magnitude is scanned once when first asked for and
/// remembered until the next mutable access, so re-ranking against resident embeddings does
/// not rescan them on every call.
#[derive(Clone, Debug, PartialEq)]
pub struct HalfRows<T> {
    rows: usize,
    cols: usize,
    data: Vec<T>,
    max_abs: MaxAbsMemo,
}

/// Values per task of the parallel magnitude scan.
const SCAN_CHUNK: usize = 1 << 16;

impl<T: HalfFloat> HalfRows<T> {
    /// Wraps `data` as `rows × cols`; an [`Error::Shape`] when the length does not match.
    pub fn new(rows: usize, cols: usize, data: Vec<T>) -> Result<Self> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(Error::shape(format!(
                "{rows} x {cols} embeddings need {} values, got {}",
                rows.saturating_mul(cols),
                data.len()
            )));
        }
        Ok(HalfRows {
            rows,
            cols,
            data,
            max_abs: MaxAbsMemo::default(),
        })
    }
    /// Number of rows `N`.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Dimension `d`.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// All values, row-major.
    pub fn data(&self) -> &[T] {
        &self.data
    }
    /// All values, row-major, mutable (forgets the remembered magnitude).
    pub fn data_mut(&mut self) -> &mut [T] {
        self.max_abs.clear();
        &mut self.data
    }
    /// Consumes the rows, returning their values.
    pub fn into_data(self) -> Vec<T> {
        self.data
    }
    /// The largest magnitude of the values widened to f32 (0 when empty; NaNs ignored, an
    /// infinity is infinite), scanned in parallel the first time and remembered. The scan
    /// compares bit patterns (sign cleared), which order as the magnitudes, and widens one
    /// value at the end.
    pub fn max_abs(&self) -> f32 {
        self.max_abs.get_or(|| {
            let magnitude = |v: T| {
                let m = v.to_bits() & 0x7fff;
                if m > T::INFINITY_BITS {
                    0
                } else {
                    m
                }
            };
            let bits = self
                .data
                .par_chunks(SCAN_CHUNK)
                .map(|c| c.iter().map(|&v| magnitude(v)).max().unwrap_or(0))
                .reduce(|| 0, u16::max);
            T::from_bits(bits).into()
        })
    }
    /// Errors with [`Error::NonFinite`] of `embeddings` at the first NaN/inf, with its row
    /// (item position) and column.
    fn check_finite(&self) -> Result<()> {
        let widen = |v: T| -> f32 { v.into() };
        match self.data.iter().position(|&v| !widen(v).is_finite()) {
            None => Ok(()),
            Some(p) => Err(Error::NonFinite {
                tensor: "embeddings".into(),
                row: p / self.cols.max(1),
                col: p % self.cols.max(1),
                value: widen(self.data[p]),
            }),
        }
    }
    /// Row `i` widened into `out` (`out.len() == cols`).
    fn row_into(&self, i: usize, out: &mut [f32]) {
        let row = &self.data[i * self.cols..(i + 1) * self.cols];
        for (o, &v) in out.iter_mut().zip(row) {
            *o = v.into();
        }
    }
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

impl Embeddings {
    /// Errors unless every value is finite; rows are item positions, named in the error as
    /// rows of `embeddings`.
    pub fn check(&self) -> Result<()> {
        match self {
            Embeddings::F32(m) => check_finite(m.data(), m.cols(), "embeddings"),
            Embeddings::F16(h) => h.check_finite(),
            Embeddings::Bf16(h) => h.check_finite(),
        }
    }

    /// Converts `m` into the requested storage (`None` for [`EmbeddingKind::None`]). Values
    /// beyond the range of a half-width kind become infinite, which [`Embeddings::check`]
    /// rejects: check them first with [`check_storable`].
    pub fn store(m: Matrix, kind: EmbeddingKind) -> Option<Embeddings> {
        fn narrow<T: HalfFloat>(m: &Matrix, to: fn(f32) -> T) -> HalfRows<T> {
            HalfRows {
                rows: m.rows(),
                cols: m.cols(),
                data: m.data().iter().map(|&v| to(v)).collect(),
                max_abs: MaxAbsMemo::default(),
            }
        }
        match kind {
            EmbeddingKind::None => None,
            EmbeddingKind::F32 => Some(Embeddings::F32(m)),
            EmbeddingKind::F16 => Some(Embeddings::F16(narrow(&m, f16::from_f32))),
            EmbeddingKind::Bf16 => Some(Embeddings::Bf16(narrow(&m, bf16::from_f32))),
        }
    }
    /// Number of rows.
    pub fn rows(&self) -> usize {
        match self {
            Embeddings::F32(m) => m.rows(),
            Embeddings::F16(h) => h.rows(),
            Embeddings::Bf16(h) => h.rows(),
        }
    }
    /// Dimension.
    pub fn cols(&self) -> usize {
        match self {
            Embeddings::F32(m) => m.cols(),
            Embeddings::F16(h) => h.cols(),
            Embeddings::Bf16(h) => h.cols(),
        }
    }
    /// The storage kind.
    pub fn kind(&self) -> EmbeddingKind {
        match self {
            Embeddings::F32(_) => EmbeddingKind::F32,
            Embeddings::F16(_) => EmbeddingKind::F16,
            Embeddings::Bf16(_) => EmbeddingKind::Bf16,
        }
    }
    /// The largest magnitude of the values widened to f32, after checking that they are
    /// finite (f32 rows; the 16-bit rows' finiteness is the index's invariant), scanned once
    /// and remembered until the values change.
    pub fn max_abs(&self) -> Result<f32> {
        match self {
            Embeddings::F32(m) => m.max_abs("embeddings"),
            Embeddings::F16(h) => Ok(h.max_abs()),
            Embeddings::Bf16(h) => Ok(h.max_abs()),
        }
    }
    /// Row `i` widened to f32 into `out` (`out.len() == cols`).
    pub fn row_into(&self, i: usize, out: &mut [f32]) {
        match self {
            Embeddings::F32(m) => out.copy_from_slice(m.row(i)),
            Embeddings::F16(h) => h.row_into(i, out),
            Embeddings::Bf16(h) => h.row_into(i, out),
        }
    }
    /// Row `i` widened to f32.
    pub fn row(&self, i: usize) -> Vec<f32> {
        let mut out = vec![0.0; self.cols()];
        self.row_into(i, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest magnitude equals a plain scan over values spread across several scan
    /// chunks, stays the same when asked again and in a clone, and follows a mutation.
    #[test]
    fn half_rows_max_abs_is_remembered_until_mutation() {
        let cols = 7;
        let rows = (3 * SCAN_CHUNK) / cols + 5;
        let data: Vec<bf16> = (0..rows * cols)
            .map(|i| bf16::from_f32(((i * 37 % 1001) as f32 - 500.0) * 0.25))
            .collect();
        let want = data.iter().fold(0.0f32, |m, v| m.max(v.to_f32().abs()));
        let mut h = HalfRows::new(rows, cols, data).unwrap();
        assert_eq!(h.max_abs(), want);
        assert_eq!(h.max_abs(), want);
        assert_eq!(h.clone().max_abs(), want);
        let at = 2 * SCAN_CHUNK + 3;
        h.data_mut()[at] = bf16::from_f32(-3.0e30);
        assert_eq!(h.max_abs(), bf16::from_f32(3.0e30).to_f32());
        let e = Embeddings::Bf16(h);
        assert_eq!(e.max_abs().unwrap(), bf16::from_f32(3.0e30).to_f32());
        let halves = [0.5f32, -65504.0, 3.0e-7, -0.0]
            .map(f16::from_f32)
            .into_iter()
            .chain([f16::NAN, -f16::NAN])
            .collect();
        let h = HalfRows::new(2, 3, halves).unwrap();
        assert_eq!(h.max_abs(), 65504.0);
        let h = HalfRows::new(1, 2, vec![f16::NEG_INFINITY, f16::NAN]).unwrap();
        assert_eq!(h.max_abs(), f32::INFINITY);
        let empty = HalfRows::<f16>::new(0, 4, Vec::new()).unwrap();
        assert_eq!(empty.max_abs(), 0.0);
        let msg = HalfRows::<f16>::new(2, 3, vec![f16::ZERO; 5])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("2 x 3 embeddings need 6 values, got 5"),
            "{msg}"
        );
    }
}
