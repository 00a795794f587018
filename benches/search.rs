//! Criterion: reference search throughput on the gcide set (../shared/data) at the beam
//! setting that reaches recall@100 ≥ 0.95 (see benches/results/gcide_recall.md), and the
//! pieces of the pipeline. Skips with a message when the data set is absent.

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rqtree::index::build::{build, BuildOptions};
use rqtree::index::kmeans::KMeansOptions;
use rqtree::index::EmbeddingKind;
use rqtree::metric::Metric;
use rqtree::ops;
use rqtree::reference::Reference;
use rqtree::search::{search, Rerank, SearchParams};

/// Beam reaching recall@100 ≥ 0.95 on gcide with 2 × 256 codes (benches/results).
const BEAM: [usize; 2] = [64, 4096];

fn gcide(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    let (Ok(items), Ok(queries)) = (
        rqtree::npy::read_matrix(dir.join("gcide_items_f16.npy")),
        rqtree::npy::read_matrix(dir.join("gcide_queries_f16.npy")),
    ) else {
        eprintln!("SKIP: gcide data not found under {}", dir.display());
        return;
    };
    let opts = BuildOptions {
        metric: Metric::Ip,
        keep_embeddings: EmbeddingKind::F32,
        encode_beam: 1,
        kmeans: KMeansOptions::default(),
        progress: false,
    };
    let index = build(&Reference, &items, None, None, &opts).expect("gcide index");
    let mut g = c.benchmark_group("gcide_reference");
    g.sample_size(10);
    g.throughput(Throughput::Elements(queries.rows() as u64));
    let params = SearchParams {
        k: 100,
        beams: BEAM.to_vec(),
        rerank: Rerank::Exact { rerank_k: None },
    };
    g.bench_function("search_1000q_k100_beam64x4096_rerank", |b| {
        b.iter(|| search(&Reference, &index, &queries, None, &params).expect("search"))
    });
    let tables = ops::lookup_tables(&Reference, &queries, &index.codebooks, Metric::Ip).unwrap();
    g.bench_function("lookup_tables_1000q", |b| {
        b.iter(|| ops::lookup_tables(&Reference, &queries, &index.codebooks, Metric::Ip).unwrap())
    });
    g.bench_function("traverse_1000q_beam64x4096", |b| {
        b.iter(|| ops::traverse(&Reference, &tables, &index.tree, &BEAM).unwrap())
    });
    g.finish();
}

criterion_group!(benches, gcide);
criterion_main!(benches);
