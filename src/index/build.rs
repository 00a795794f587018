//! Index building (DESIGN §2): items + codebooks (given, or trained by residual k-means) →
//! codes → items permuted into lexicographic code order → tree → norms → [`Index`].

use rayon::prelude::*;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::index::codebooks::Codebooks;
use crate::index::codes::Codes;
use crate::index::embeddings::{check_storable, EmbeddingKind, Embeddings};
use crate::index::kmeans::{residual_kmeans, KMeansOptions};
use crate::index::tree::Tree;
use crate::index::Index;
use crate::matrix::{norm_sq, Matrix};
use crate::metric::Metric;
use crate::ops;
use crate::progress::Progress;
use crate::topk::NO_ID;

/// How to build an index.
#[derive(Clone, Debug, PartialEq)]
pub struct BuildOptions {
    /// Search metric.
    pub metric: Metric,
    /// Which embeddings to keep for exact re-ranking.
    pub keep_embeddings: EmbeddingKind,
    /// Beam of the encoder (`1` = greedy).
    pub encode_beam: usize,
    /// Residual k-means parameters, used when no codebooks are given.
    pub kmeans: KMeansOptions,
    /// Draw a progress bar on a terminal.
    pub progress: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            metric: Metric::Ip,
            keep_embeddings: EmbeddingKind::F32,
            encode_beam: 1,
            kmeans: KMeansOptions::default(),
            progress: false,
        }
    }
}

/// Errors with [`Error::Range`] at the first item (row of `items`, finite) whose squared
/// norm overflows `f32`: the index stores squared norms (items', nodes') as `f32`, so such an
/// item would make them infinite (and every score involving it could overflow).
fn check_item_norms(items: &Matrix) -> Result<()> {
    let norm = |i: usize| -> f64 { items.row(i).iter().map(|&v| f64::from(v).powi(2)).sum() };
    match (0..items.rows())
        .into_par_iter()
        .find_first(|&i| norm(i) > f64::from(f32::MAX))
    {
        None => Ok(()),
        Some(i) => Err(Error::Range(format!(
            "items row {i}: squared norm {:.3e} overflows f32 (the index stores squared norms \
             as f32); scale the items",
            norm(i)
        ))),
    }
}

/// Builds an index over `items` (`N × d`, finite, `N ≥ 1`; within the range of the kept
/// embeddings' storage, e.g. `|x| ≤ 65504` for f16). `ids` are the caller's item ids
/// (distinct and non-negative, since `-1` marks an empty result slot; default `0..N`);
/// `codebooks` default to residual k-means on the items. Items whose squared norm overflows
/// `f32` are an [`Error::Range`] naming the first.
pub fn build(
    be: &dyn Backend,
    items: &Matrix,
    ids: Option<Vec<i64>>,
    codebooks: Option<Codebooks>,
    opts: &BuildOptions,
) -> Result<Index> {
    let n = items.rows();
    if n == 0 {
        return Err(Error::param("empty item set: nothing to index"));
    }
    if n > u32::MAX as usize {
        // Refused before the encoding rather than by the tree after it.
        return Err(Error::param(format!(
            "{n} items exceed the index's u32 item positions"
        )));
    }
    if items.cols() == 0 {
        return Err(Error::shape("items have dimension d = 0"));
    }
    items.check_finite("items")?;
    check_storable(items, opts.keep_embeddings, "items")?;
    check_item_norms(items)?;
    let ids = match ids {
        Some(ids) if ids.len() != n => {
            return Err(Error::shape(format!("{} ids for {n} items", ids.len())));
        }
        Some(ids) => {
            if let Some(r) = ids.iter().position(|&id| id < 0) {
                return Err(Error::param(format!(
                    "ids, row {r}: id {} is negative; item ids must be >= 0 ({NO_ID} marks an \
                     empty result slot)",
                    ids[r]
                )));
            }
            ids
        }
        None => (0..n as i64).collect(),
    };
    let trained = codebooks.is_none();
    let progress = Progress::new(
        if trained {
            opts.kmeans.levels as u64
        } else {
            0
        } + 3,
        opts.progress,
    );
    let codebooks = match codebooks {
        Some(c) => c,
        None => residual_kmeans(be, items, &opts.kmeans, &progress)?,
    };
    if codebooks.dim() != items.cols() {
        return Err(Error::shape(format!(
            "codebooks have dimension {}, items {}",
            codebooks.dim(),
            items.cols()
        )));
    }
    progress.message("encoding".into());
    let enc = ops::encode(be, items, &codebooks, opts.encode_beam)?;
    progress.inc(1);
    let levels = codebooks.levels();
    let path = |i: usize| &enc.codes[i * levels..(i + 1) * levels];
    let mut order: Vec<usize> = (0..n).collect();
    order.par_sort_by(|&a, &b| path(a).cmp(path(b)).then(ids[a].cmp(&ids[b])));
    let sorted_codes: Vec<u32> = order.iter().flat_map(|&i| path(i).to_vec()).collect();
    let codes = Codes::from_item_major(&sorted_codes, &codebooks.sizes())?;
    let sorted_ids: Vec<i64> = order.iter().map(|&i| ids[i]).collect();
    let item_norms: Vec<f32> = order
        .par_iter()
        .map(|&i| norm_sq(&codebooks.reconstruct(path(i))))
        .collect();
    progress.message("building the tree".into());
    let tree = Tree::build(&codes, &codebooks, &sorted_ids, &|p| {
        items.row(order[p]).to_vec()
    })?;
    progress.inc(1);
    let embeddings = if opts.keep_embeddings == EmbeddingKind::None {
        None
    } else {
        let mut m = Matrix::zeros(n, items.cols());
        for (p, &i) in order.iter().enumerate() {
            m.row_mut(p).copy_from_slice(items.row(i));
        }
        Embeddings::store(m, opts.keep_embeddings)
    };
    let index = Index {
        metric: opts.metric,
        codebooks,
        codes,
        ids: sorted_ids,
        item_norms,
        tree,
        embeddings,
    };
    index.validate()?;
    progress.inc(1);
    progress.finish();
    Ok(index)
}
