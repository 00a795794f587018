//! A dense row-major `f32` matrix, the currency of every API in the crate.

use crate::error::{Error, Result};

/// Dense row-major matrix of `f32`: `rows × cols`, `data.len() == rows * cols`.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
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
        Ok(Matrix { rows, cols, data })
    }

    /// A `rows × cols` matrix of zeros.
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Matrix {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    /// A `rows × cols` matrix filled with `value`.
    pub fn filled(rows: usize, cols: usize, value: f32) -> Self {
        Matrix {
            rows,
            cols,
            data: vec![value; rows * cols],
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
        &mut self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// The rows in `range` as a new matrix.
    pub fn slice_rows(&self, range: std::ops::Range<usize>) -> Matrix {
        Matrix {
            rows: range.len(),
            cols: self.cols,
            data: self.data[range.start * self.cols..range.end * self.cols].to_vec(),
        }
    }

    /// Errors with [`Error::NonFinite`] naming `tensor` and the first NaN/inf's position.
    pub fn check_finite(&self, tensor: &str) -> Result<()> {
        check_finite(&self.data, self.cols, tensor)
    }

    /// Errors unless the matrix has `cols` columns; `tensor` names it in the message.
    pub fn check_cols(&self, cols: usize, tensor: &str) -> Result<()> {
        if self.cols != cols {
            return Err(Error::shape(format!(
                "{tensor} has {} columns, expected {cols}",
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

/// Errors with [`Error::NonFinite`] at the first NaN/inf of a row-major `? × cols` buffer.
pub fn check_finite(data: &[f32], cols: usize, tensor: &str) -> Result<()> {
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
