//! The index: codebooks, item codes in code order, the caller's ids, the tree, norms and
//! optional embeddings — everything search needs, validated as a whole.

pub mod build;
pub mod codebook_file;
pub mod codebooks;
pub mod codes;
pub mod embeddings;
pub mod file;
pub mod kmeans;
pub mod stats;
pub mod tree;

use crate::error::{Error, Result};
use crate::metric::Metric;
use crate::topk::NO_ID;
pub use codebooks::{Codebook, Codebooks};
pub use codes::{CodeData, Codes};
pub use embeddings::{EmbeddingKind, Embeddings, HalfFloat, HalfRows};
pub use tree::{Depth, Tree};

/// A built index. Item arrays are indexed by *position* (code order), not by caller id.
/// Building and loading validate every invariant ([`Index::validate`]); the operations trust
/// them, so an index changed through its public fields must be validated again before use.
#[derive(Clone, Debug, PartialEq)]
pub struct Index {
    /// Similarity used by search.
    pub metric: Metric,
    /// The `L` codebooks.
    pub codebooks: Codebooks,
    /// `L × N` codes in item (code) order.
    pub codes: Codes,
    /// The caller's id of each item position, length `N`, distinct and non-negative (`-1`,
    /// [`NO_ID`], marks an empty result slot, so no item may carry it).
    pub ids: Vec<i64>,
    /// `||x̂||²` of each item position's reconstruction, length `N`.
    pub item_norms: Vec<f32>,
    /// The code tree.
    pub tree: Tree,
    /// Embeddings in item order, when kept.
    pub embeddings: Option<Embeddings>,
}

impl Index {
    /// Number of items `N`.
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    /// True for an index without items (never produced by the builder or the loader).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    /// Dimension `d`.
    pub fn dim(&self) -> usize {
        self.codebooks.dim()
    }
    /// Number of levels `L`.
    pub fn levels(&self) -> usize {
        self.codebooks.levels()
    }

    /// Checks every invariant: lengths, code ranges, tree structure, distinct non-negative
    /// ids, norms equal to their recomputation, embedding shape, length and finiteness. The builder, [`file::save`]
    /// and [`file::load`] call this, so what can be saved can be loaded; so can anyone who
    /// edits an index.
    pub fn validate(&self) -> Result<()> {
        let n = self.codes.items();
        if n == 0 {
            return Err(Error::index("the index has no items"));
        }
        if self.ids.len() != n || self.item_norms.len() != n {
            return Err(Error::index(format!(
                "{n} items in codes, {} ids, {} item norms",
                self.ids.len(),
                self.item_norms.len()
            )));
        }
        let sizes = self.codebooks.sizes();
        self.codes.check_range(&sizes)?;
        let narrow = matches!(self.codes.data(), CodeData::U8(_));
        if narrow != self.codebooks.fits_u8() {
            return Err(Error::index(
                "code width does not match codebook sizes (u8 iff every K <= 256)",
            ));
        }
        self.tree.validate(&self.codes, &sizes)?;
        if let Some(p) = self.ids.iter().position(|&id| id < 0) {
            return Err(Error::index(format!(
                "item id {} at position {p} is negative: ids must be >= 0 ({} marks an empty \
                 result slot)",
                self.ids[p], NO_ID
            )));
        }
        let mut sorted = self.ids.clone();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::index(format!("item id {} appears twice", w[0])));
        }
        if let Some(i) = self
            .item_norms
            .iter()
            .position(|v| !v.is_finite() || *v < 0.0)
        {
            return Err(Error::index(format!(
                "item norm at position {i} is invalid ({})",
                self.item_norms[i]
            )));
        }
        self.check_derived_norms()?;
        if let Some(e) = &self.embeddings {
            if e.rows() != n || e.cols() != self.dim() {
                return Err(Error::index(format!(
                    "embeddings are {} x {}, expected {n} x {}",
                    e.rows(),
                    e.cols(),
                    self.dim()
                )));
            }
            e.check()?;
        }
        Ok(())
    }
}

impl Index {
    /// Errors unless every stored norm is the one the builder computes, bit for bit:
    /// `||x̂||²` of each item's reconstruction and of each node's centroid (the reconstruction
    /// of its code prefix), `matrix::norm_sq` of `Codebooks::reconstruct`. The scores of
    /// `l2` search add them, so a wrong one would rank silently wrong. `N·L·d` additions.
    fn check_derived_norms(&self) -> Result<()> {
        use rayon::prelude::*;
        let norm_of = |i: usize, depth: usize| {
            let path = self.codes.path(i);
            crate::matrix::norm_sq(&self.codebooks.reconstruct(&path[..depth]))
        };
        let levels = self.levels();
        if let Some(i) = (0..self.len())
            .into_par_iter()
            .find_first(|&i| norm_of(i, levels).to_bits() != self.item_norms[i].to_bits())
        {
            return Err(Error::index(format!(
                "item norm at position {i} is {} but its reconstruction's is {}",
                self.item_norms[i],
                norm_of(i, levels)
            )));
        }
        for (l, dep) in self.tree.depths.iter().enumerate() {
            let first = |j: usize| dep.item_start[j] as usize;
            if let Some(j) = (0..dep.len()).into_par_iter().find_first(|&j| {
                norm_of(first(j), l + 1).to_bits() != dep.centroid_norm[j].to_bits()
            }) {
                return Err(Error::index(format!(
                    "centroid norm of node {j} at depth {} is {} but its centroid's is {}",
                    l + 1,
                    dep.centroid_norm[j],
                    norm_of(first(j), l + 1)
                )));
            }
        }
        Ok(())
    }
}
