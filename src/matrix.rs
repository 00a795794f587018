//! A dense row-major `f32` matrix, the currency of every API in the crate.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use rayon::prelude::*;

use crate::error::{Error, Result};

/// Dense row-major matrix of `f32`: `rows × cols`, `data.len() == rows * cols`.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
    finite: FiniteMemo,
}

/// Whether a matrix's values were found finite since they last changed, and their largest
/// magnitude once asked for, so that a matrix passed to many calls (a resident item set, a
/// query batch searched twice) is scanned once. Cleared by every mutable access; ignored by
/// equality.
#[derive(Clone, Debug, Default, PartialEq)]
struct FiniteMemo(FlagMemo, MaxAbsMemo);

impl FiniteMemo {
    /// Forgets everything (the values are about to change).
    fn clear(&mut self) {
        *self.0 .0.get_mut() = false;
        self.1.clear();
    }
}

/// "Found finite" of [`FiniteMemo`]: an atomic flag that clones its value and never makes
/// two matrices unequal.
#[derive(Debug, Default)]
struct FlagMemo(AtomicBool);

impl Clone for FlagMemo {
    fn clone(&self) -> Self {
        FlagMemo(AtomicBool::new(self.0.load(Ordering::Relaxed)))
    }
}

impl PartialEq for FlagMemo {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// The remembered largest magnitude of a value set (f32 bits, or `UNKNOWN`), shared by
/// [`Matrix`] and the half-width embedding rows. Its owner clears it on every mutable access;
/// clones keep it; equality ignores it.
#[derive(Debug)]
pub(crate) struct MaxAbsMemo(AtomicU32);

/// [`MaxAbsMemo`]'s "largest magnitude not known" (a NaN pattern no scan produces).
const UNKNOWN: u32 = u32::MAX;

impl MaxAbsMemo {
    /// The remembered magnitude, or `scan()`'s, remembered from now on.
    pub(crate) fn get_or(&self, scan: impl FnOnce() -> f32) -> f32 {
        let bits = self.0.load(Ordering::Relaxed);
        if bits != UNKNOWN {
            return f32::from_bits(bits);
        }
        let m = scan();
        self.0.store(m.to_bits(), Ordering::Relaxed);
        m
    }

    /// Forgets the magnitude (the values are about to change).
    pub(crate) fn clear(&mut self) {
        *self.0.get_mut() = UNKNOWN;
    }
}

impl Default for MaxAbsMemo {
    fn default() -> Self {
        MaxAbsMemo(AtomicU32::new(UNKNOWN))
    }
}

impl Clone for MaxAbsMemo {
    fn clone(&self) -> Self {
        MaxAbsMemo(AtomicU32::new(self.0.load(Ordering::Relaxed)))
    }
}

impl PartialEq for MaxAbsMemo {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Matrix {
    /// Wraps `data` as `rows × cols`; errors when the length does not match.
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(Error::shape(format!(
                "a {rows} x {cols} matrix needs {} values, got {}",
                rows.saturating_mul(cols),
                data.len()
            )));
        }
        Ok(Matrix {
            rows,
            cols,
            data,
            finite: FiniteMemo::default(),
        })
    }

    /// A `rows × cols` matrix of zeros.
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Matrix {
            rows,
            cols,
            data: vec![0.0; rows * cols],
            finite: FiniteMemo::default(),
        }
    }

    /// A `rows × cols` matrix filled with `value`.
    pub fn filled(rows: usize, cols: usize, value: f32) -> Self {
        Matrix {
            rows,
            cols,
            data: vec![value; rows * cols],
            finite: FiniteMemo::default(),
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// All values, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }
    /// All values, row-major, mutable.
    pub fn data_mut(&mut self) -> &mut [f32] {
        self.finite.clear();
        &mut self.data
    }
    /// Consumes the matrix, returning its values.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }
    /// Row `i` (panics when out of range: an internal invariant, not user input).
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
    /// Row `i`, mutable.
    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        self.finite.clear();
        &mut self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// The rows in `range` as a new matrix.
    pub fn slice_rows(&self, range: std::ops::Range<usize>) -> Matrix {
        Matrix {
            rows: range.len(),
            cols: self.cols,
            data: self.data[range.start * self.cols..range.end * self.cols].to_vec(),
            // Finite rows stay finite; their largest magnitude is rescanned when asked.
            finite: FiniteMemo(self.finite.0.clone(), MaxAbsMemo::default()),
        }
    }

    /// Errors with [`Error::NonFinite`] naming `tensor` and the first NaN/inf's position.
    /// A matrix found finite remembers it until its next mutable access, so checking the
    /// same matrix again costs nothing.
    pub fn check_finite(&self, tensor: &str) -> Result<()> {
        if self.finite.0 .0.load(Ordering::Relaxed) {
            return Ok(());
        }
        check_finite(&self.data, self.cols, tensor)?;
        self.finite.0 .0.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// The largest magnitude of the values (0 for an empty matrix), after
    /// [`Matrix::check_finite`]; remembered like finiteness.
    pub fn max_abs(&self, tensor: &str) -> Result<f32> {
        self.check_finite(tensor)?;
        Ok(self.finite.1.get_or(|| max_abs(&self.data)))
    }

    /// Errors unless the matrix has `cols` columns; `tensor` names it in the message, which
    /// suggests a transposed matrix when the rows are `cols` long.
    pub fn check_cols(&self, cols: usize, tensor: &str) -> Result<()> {
        if self.cols != cols {
            let hint = if self.rows == cols {
                format!(
                    " (it is {} x {}: transposed? Rows must be the vectors)",
                    self.rows, self.cols
                )
            } else {
                String::new()
            };
            return Err(Error::shape(format!(
                "{tensor} has {} columns, expected {cols}{hint}",
                self.cols
            )));
        }
        Ok(())
    }

    /// Squared L2 norm of every row, accumulated in `f64`.
    pub fn row_norms_sq(&self) -> Vec<f32> {
        (0..self.rows).map(|i| norm_sq(self.row(i))).collect()
    }
}

/// Values per task of the parallel finiteness scan.
const FINITE_CHUNK: usize = 1 << 16;

/// The largest magnitude in `data` (finite values; 0 when empty), scanned in parallel chunks.
pub fn max_abs(data: &[f32]) -> f32 {
    let chunk_max = |c: &[f32]| c.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if data.len() <= FINITE_CHUNK {
        chunk_max(data)
    } else {
        data.par_chunks(FINITE_CHUNK)
            .map(chunk_max)
            .reduce(|| 0.0, f32::max)
    }
}

/// Errors with [`Error::NonFinite`] at the first NaN/inf of a row-major `? × cols` buffer.
/// The scan runs in parallel chunks without early exit (so that it vectorises); the
/// position is searched only when there is a non-finite value.
pub fn check_finite(data: &[f32], cols: usize, tensor: &str) -> Result<()> {
    let all_finite = |c: &[f32]| c.iter().fold(true, |ok, v| ok & v.is_finite());
    let ok = if data.len() <= FINITE_CHUNK {
        all_finite(data)
    } else {
        data.par_chunks(FINITE_CHUNK).all(all_finite)
    };
    if ok {
        return Ok(());
    }
    match data.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(p) => Err(Error::NonFinite {
            tensor: tensor.to_string(),
            row: p / cols.max(1),
            col: p % cols.max(1),
            value: data[p],
        }),
    }
}

/// `<a, b>`: eight `f32` partial sums (as a BLAS kernel keeps them), combined in `f64`.
/// The hot loop of every reference operation; its error is that of an sgemm.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, ra) = a.split_at(a.len() / 8 * 8);
    let (cb, rb) = b.split_at(ca.len());
    for (x, y) in ca.chunks_exact(8).zip(cb.chunks_exact(8)) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    let tail: f64 = ra.iter().zip(rb).map(|(&x, &y)| x as f64 * y as f64).sum();
    (acc.iter().map(|&v| v as f64).sum::<f64>() + tail) as f32
}

/// `||a||²` accumulated in `f64`.
pub fn norm_sq(a: &[f32]) -> f32 {
    a.iter().map(|&x| x as f64 * x as f64).sum::<f64>() as f32
}

/// `||a - b||²` accumulated in `f64`.
pub fn dist_sq(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let t = x as f64 - y as f64;
            t * t
        })
        .sum::<f64>() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finite_check_names_the_first_bad_value_and_forgets_after_mutation() {
        // Larger than one parallel chunk, with the bad values in a later chunk.
        let cols = 7;
        let rows = 3 * FINITE_CHUNK / cols;
        let mut m = Matrix::filled(rows, cols, 1.5);
        assert!(m.check_finite("m").is_ok());
        let at = 2 * FINITE_CHUNK + 12;
        m.data_mut()[at] = f32::NAN;
        m.data_mut()[at + 40] = f32::INFINITY;
        match m.check_finite("m") {
            Err(Error::NonFinite { row, col, .. }) => {
                assert_eq!((row, col), (at / cols, at % cols))
            }
            other => panic!("expected NonFinite, got {other:?}"),
        }
        m.data_mut()[at] = 0.0;
        m.row_mut((at + 40) / cols)[(at + 40) % cols] = 2.0;
        assert!(m.check_finite("m").is_ok());
        // A checked matrix edited through row_mut is scanned again.
        m.row_mut(1)[3] = f32::NEG_INFINITY;
        assert!(m.check_finite("m").is_err());
        let small = Matrix::new(1, 2, vec![f32::NAN, 0.0]).unwrap();
        assert!(small.clone().check_finite("s").is_err());
    }
}
