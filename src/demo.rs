//! `rqtree demo`: seeded clustered data → index → search → a short report, no input needed.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::backend::{Backend, Resident};
use crate::error::Result;
use crate::eval::recall_at;
use crate::index::build::{build, BuildOptions};
use crate::index::kmeans::KMeansOptions;
use crate::index::EmbeddingKind;
use crate::metric::Metric;
use crate::ops;
use crate::search::{search, Rerank, SearchParams};
use crate::synthetic::clustered;

/// What the demo measured.
#[derive(Clone, Debug, Serialize)]
pub struct DemoReport {
    /// Backend used.
    pub backend: String,
    /// Items indexed.
    pub items: usize,
    /// Dimension.
    pub dim: usize,
    /// Queries searched.
    pub queries: usize,
    /// Levels × codes.
    pub levels: usize,
    /// Codewords per level.
    pub codes: usize,
    /// Seconds to build the index (k-means included).
    pub build_s: f64,
    /// Rows: one per beam setting.
    pub rows: Vec<DemoRow>,
}

/// One beam setting of the demo.
#[derive(Clone, Debug, Serialize)]
pub struct DemoRow {
    /// Beam widths.
    pub beam: Vec<usize>,
    /// Mean candidates scanned per query.
    pub candidates: f64,
    /// Recall@10 against exact search.
    pub recall10: f64,
    /// Queries per second (search only).
    pub qps: f64,
}

/// Runs the demo on `be`: 20,000 items, d = 64, 2 levels × 64 codes, 500 queries.
pub fn run(be: &dyn Backend, seed: u64, progress: bool) -> Result<DemoReport> {
    let (n, d, nq) = (20_000, 64, 500);
    let data = clustered(n + nq, d, 100, 1.2, true, seed);
    let items = data.slice_rows(0..n);
    let queries = data.slice_rows(n..n + nq);
    let opts = BuildOptions {
        metric: Metric::Ip,
        keep_embeddings: EmbeddingKind::F32,
        encode_beam: 1,
        kmeans: KMeansOptions {
            levels: 2,
            codes: 64,
            iters: 8,
            max_train: n,
            seed,
        },
        progress,
    };
    let t = Instant::now();
    let index = Arc::new(build(be, &items, None, None, &opts)?);
    let build_s = t.elapsed().as_secs_f64();
    be.keep_resident(Resident::Index(Arc::clone(&index)))?;
    let truth = ops::exact_topk(be, &queries, &items, Metric::Ip, 10)?;
    let mut rows = Vec::new();
    for beam in [vec![2, 8], vec![4, 16], vec![8, 32], vec![16, 64]] {
        let params = SearchParams {
            k: 10,
            beams: beam.clone(),
            rerank: Rerank::Exact { rerank_k: None },
        };
        let t = Instant::now();
        let out = search(be, &index, &queries, None, &params)?;
        let secs = t.elapsed().as_secs_f64();
        rows.push(DemoRow {
            beam,
            candidates: out.candidates.iter().sum::<usize>() as f64 / nq as f64,
            recall10: recall_at(&out.topk, &truth.ids, 10, 10)?,
            qps: nq as f64 / secs.max(1e-9),
        });
    }
    be.release_resident()?;
    Ok(DemoReport {
        backend: be.name().to_string(),
        items: n,
        dim: d,
        queries: nq,
        levels: 2,
        codes: 64,
        build_s,
        rows,
    })
}
