//! Codebooks: `L` levels of `K_l × d` codewords with their precomputed squared norms.

use crate::error::{Error, Result};
use crate::matrix::Matrix;

/// Largest number of codewords a level may have (codes are stored as `u16`).
pub const MAX_CODES: usize = 65536;
/// Largest number of levels.
pub const MAX_LEVELS: usize = 8;

/// One level's codebook `C_l` (`K × d`) and `||C_l[k]||²` for every `k`.
#[derive(Clone, Debug, PartialEq)]
pub struct Codebook {
    words: Matrix,
    norms: Vec<f32>,
}

impl Codebook {
    /// Validates `words` (`K × d`, `1 ≤ K ≤ 65536`, `d ≥ 1`, finite, every squared norm
    /// within `f32`) and precomputes norms. (DESIGN asks `K ≥ 2` of a useful level; a single
    /// codeword, a constant offset, is accepted because nothing breaks on it and the kernels'
    /// edge cases are tested with it.) A codeword whose squared norm overflows `f32` is an
    /// [`Error::Range`] naming the first: its stored norm would be infinite, and a logit
    /// `2<r, C[k]> - ||C[k]||²` of a large row NaN. `name` is used in error messages
    /// (`codebook.0`, …).
    pub fn new(words: Matrix, name: &str) -> Result<Self> {
        if words.cols() == 0 {
            return Err(Error::shape(format!("{name}: dimension d = 0")));
        }
        if words.rows() < 1 || words.rows() > MAX_CODES {
            return Err(Error::param(format!(
                "{name}: K = {} codewords, must be in 1..={MAX_CODES}",
                words.rows()
            )));
        }
        words.check_finite(name)?;
        let norms = words.row_norms_sq();
        if let Some(k) = norms.iter().position(|v| !v.is_finite()) {
            return Err(Error::Range(format!(
                "{name}, row {k}: the codeword's squared norm overflows f32 (scores against it \
                 would be infinite or NaN); scale the codebook"
            )));
        }
        Ok(Codebook { words, norms })
    }
    /// `K × d` codewords.
    pub fn words(&self) -> &Matrix {
        &self.words
    }
    /// `||C[k]||²`, length `K`.
    pub fn norms(&self) -> &[f32] {
        &self.norms
    }
    /// Number of codewords `K`.
    pub fn len(&self) -> usize {
        self.words.rows()
    }
    /// Always false (a codebook has at least one codeword).
    pub fn is_empty(&self) -> bool {
        self.words.rows() == 0
    }
    /// Dimension `d`.
    pub fn dim(&self) -> usize {
        self.words.cols()
    }
    /// Codeword `k`.
    pub fn word(&self, k: usize) -> &[f32] {
        self.words.row(k)
    }
}

/// All levels' codebooks; every level has the same `d`.
#[derive(Clone, Debug, PartialEq)]
pub struct Codebooks {
    levels: Vec<Codebook>,
}

impl Codebooks {
    /// Validates `1 ≤ L ≤ 8` levels of equal dimension.
    pub fn new(levels: Vec<Codebook>) -> Result<Self> {
        if levels.is_empty() || levels.len() > MAX_LEVELS {
            return Err(Error::param(format!(
                "{} codebook levels, must be in 1..={MAX_LEVELS}",
                levels.len()
            )));
        }
        let d = levels[0].dim();
        if let Some((l, c)) = levels.iter().enumerate().find(|(_, c)| c.dim() != d) {
            return Err(Error::shape(format!(
                "codebook.{l} has dimension {}, codebook.0 has {d}",
                c.dim()
            )));
        }
        Ok(Codebooks { levels })
    }
    /// Builds from raw matrices, naming them `codebook.{l}` in errors.
    pub fn from_matrices(mats: Vec<Matrix>) -> Result<Self> {
        let levels = mats
            .into_iter()
            .enumerate()
            .map(|(l, m)| Codebook::new(m, &format!("codebook.{l}")))
            .collect::<Result<Vec<_>>>()?;
        Codebooks::new(levels)
    }
    /// Number of levels `L`.
    pub fn levels(&self) -> usize {
        self.levels.len()
    }
    /// Level `l`'s codebook.
    pub fn level(&self, l: usize) -> &Codebook {
        &self.levels[l]
    }
    /// All levels.
    pub fn iter(&self) -> std::slice::Iter<'_, Codebook> {
        self.levels.iter()
    }
    /// Dimension `d`.
    pub fn dim(&self) -> usize {
        self.levels[0].dim()
    }
    /// `K_l` for every level.
    pub fn sizes(&self) -> Vec<usize> {
        self.levels.iter().map(Codebook::len).collect()
    }
    /// True when every `K_l ≤ 256`, so codes fit in `u8`.
    pub fn fits_u8(&self) -> bool {
        self.levels.iter().all(|c| c.len() <= 256)
    }
    /// `x̂ = Σ_l C_l[code_l]` for one item's code path (`codes.len() == L`).
    pub fn reconstruct(&self, codes: &[u32]) -> Vec<f32> {
        let mut out = vec![0.0f32; self.dim()];
        for (cb, &c) in self.levels.iter().zip(codes) {
            for (o, &w) in out.iter_mut().zip(cb.word(c as usize)) {
                *o += w;
            }
        }
        out
    }
}
