//! `rqtree bench`: timings of each kernel-level operation and of end-to-end search on seeded
//! synthetic data, with achieved GFLOP/s and GB/s. (Wall-clock medians on the CPU backends;
//! the cuda backend's timings come from CUDA events.)

use std::time::Instant;

use serde::Serialize;

use crate::backend::{AssignOptions, Backend};
use crate::error::Result;
use crate::index::build::{build, BuildOptions};
use crate::index::kmeans::KMeansOptions;
use crate::index::{Codebook, EmbeddingKind};
use crate::matrix::Matrix;
use crate::metric::Metric;
use crate::ops;
use crate::search::{search, Rerank, SearchParams};
use crate::synthetic::clustered;

/// One timed operation.
#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    /// Operation and its sizes.
    pub op: String,
    /// Median seconds.
    pub seconds: f64,
    /// Floating-point operations per run.
    pub flops: f64,
    /// Bytes that must be read or written per run.
    pub bytes: f64,
}

fn median_time(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f().map(|_| s.elapsed().as_secs_f64())
        })
        .collect::<Result<_>>()?;
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

/// Runs the benchmark on `be`; `quick` shrinks every size ~10×.
pub fn run(be: &dyn Backend, quick: bool, as_json: bool) -> Result<()> {
    let s = if quick { 10 } else { 1 };
    let (n, d, kk, b) = (100_000 / s, 128, 256, 1024 / s);
    let runs = 5;
    let data = clustered(n + b, d, 500, 0.4, false, 11);
    let items = data.slice_rows(0..n);
    let queries = data.slice_rows(n..n + b);
    let mut rows = Vec::new();

    let cb = Codebook::new(items.slice_rows(0..kk), "codebook")?;
    let t = median_time(runs, || {
        ops::assign(be, &items, &cb, &AssignOptions::default()).map(|_| ())
    })?;
    rows.push(BenchRow {
        op: format!("assign N={n} K={kk} d={d}"),
        seconds: t,
        flops: 2.0 * (n * kk * d) as f64,
        bytes: 4.0 * ((n + kk) * d + n) as f64,
    });

    let opts = BuildOptions {
        metric: Metric::Ip,
        keep_embeddings: EmbeddingKind::F32,
        encode_beam: 1,
        kmeans: KMeansOptions {
            levels: 2,
            codes: kk,
            iters: 4,
            max_train: 20_000 / s,
            seed: 3,
        },
        progress: false,
    };
    let t0 = Instant::now();
    let index = build(be, &items, None, None, &opts)?;
    rows.push(BenchRow {
        op: format!(
            "build N={n} L=2 K={kk} d={d} (k-means 4 iters on {} rows)",
            20_000 / s
        ),
        seconds: t0.elapsed().as_secs_f64(),
        flops: 0.0,
        bytes: 0.0,
    });

    let t = median_time(runs, || {
        ops::lookup_tables(be, &queries, &index.codebooks, Metric::Ip).map(|_| ())
    })?;
    rows.push(BenchRow {
        op: format!("lookup tables B={b} L=2 K={kk} d={d}"),
        seconds: t,
        flops: 2.0 * (b * 2 * kk * d) as f64,
        bytes: 4.0 * (b * d + 2 * kk * d + b * 2 * kk) as f64,
    });

    let tables = ops::lookup_tables(be, &queries, &index.codebooks, Metric::Ip)?;
    let beams = vec![16, 128];
    let t = median_time(runs, || {
        ops::traverse(be, &tables, &index.tree, &beams).map(|_| ())
    })?;
    rows.push(BenchRow {
        op: format!("traverse B={b} beam 16,128"),
        seconds: t,
        flops: 0.0,
        bytes: 0.0,
    });

    let cand = ops::traverse(be, &tables, &index.tree, &beams)?;
    let scanned: usize = (0..b).map(|q| cand.items_of(q, &index.tree)).sum();
    let t = median_time(runs, || {
        be.fused_topk(&tables, &index, &cand, 100).map(|_| ())
    })?;
    rows.push(BenchRow {
        op: format!(
            "fused lookup+top-100 B={b}, {} candidates/query",
            scanned / b.max(1)
        ),
        seconds: t,
        flops: (scanned * 2) as f64,
        bytes: (scanned * 2) as f64,
    });

    let scores = Matrix::new(b / 4, n, clustered(b / 4, n, 1, 1.0, false, 5).into_data())?;
    for k in [10, 100, 1000] {
        let t = median_time(runs, || ops::topk(be, &scores, k).map(|_| ()))?;
        rows.push(BenchRow {
            op: format!("top-{k} of {} rows x {n}", b / 4),
            seconds: t,
            flops: 0.0,
            bytes: 4.0 * (b / 4 * n) as f64,
        });
    }

    let params = SearchParams {
        k: 100,
        beams: beams.clone(),
        rerank: Rerank::Exact {
            rerank_k: Some(1000),
        },
    };
    let t = median_time(runs, || {
        search(be, &index, &queries, None, &params).map(|_| ())
    })?;
    rows.push(BenchRow {
        op: format!(
            "search B={b} beam 16,128 k=100 rerank 1000 ({:.0} queries/s)",
            b as f64 / t
        ),
        seconds: t,
        flops: 0.0,
        bytes: 0.0,
    });

    if as_json {
        let out = serde_json::json!({"backend": be.name(), "threads": rayon::current_num_threads(), "rows": rows});
        println!("{out}");
        return Ok(());
    }
    println!(
        "backend {} ({} threads)",
        be.name(),
        rayon::current_num_threads()
    );
    println!(
        "{:<64} {:>10} {:>10} {:>10}",
        "operation", "ms", "GFLOP/s", "GB/s"
    );
    for r in &rows {
        let rate = |x: f64| {
            if x > 0.0 {
                format!("{:.2}", x / r.seconds / 1e9)
            } else {
                "-".into()
            }
        };
        println!(
            "{:<64} {:>10.2} {:>10} {:>10}",
            r.op,
            r.seconds * 1e3,
            rate(r.flops),
            rate(r.bytes)
        );
    }
    Ok(())
}
