//! Criterion: one exact re-rank call on the reference backend against 16-bit embeddings held
//! by a served index (1M × 128, bf16 and f16): 32 queries × 1000 shortlisted positions each.
//! What it shows is the per-call overhead beside the re-rank itself, chiefly the range
//! bound of the stored embeddings (their largest magnitude), which is scanned once and
//! remembered (benches/results/cpu-2026-11-29/rerank.md).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use rqtree::index::{EmbeddingKind, Embeddings};
use rqtree::metric::Metric;
use rqtree::ops;
use rqtree::reference::Reference;
use rqtree::Matrix;

const ITEMS: usize = 1_000_000;
const DIM: usize = 128;
const QUERIES: usize = 32;
const SHORTLIST: usize = 1000;

fn rerank(c: &mut Criterion) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(20261129);
    let mut uniform =
        |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random::<f32>() - 0.5).collect() };
    let items = Matrix::new(ITEMS, DIM, uniform(ITEMS * DIM)).expect("items");
    let queries = Matrix::new(QUERIES, DIM, uniform(QUERIES * DIM)).expect("queries");
    let ids: Vec<i64> = (0..ITEMS as i64).collect();
    let offsets: Vec<usize> = (0..=QUERIES).map(|b| b * SHORTLIST).collect();
    let positions: Vec<u32> = (0..QUERIES * SHORTLIST)
        .map(|_| rng.random_range(0..ITEMS as u32))
        .collect();
    let mut g = c.benchmark_group("rerank_reference");
    g.sample_size(20);
    g.throughput(Throughput::Elements(QUERIES as u64));
    for (kind, name) in [(EmbeddingKind::Bf16, "bf16"), (EmbeddingKind::F16, "f16")] {
        let e: Embeddings = Embeddings::store(items.clone(), kind).expect("16-bit embeddings");
        g.bench_function(format!("{name}_1Mx128_32q_x1000_k10"), |b| {
            b.iter(|| {
                ops::rerank(
                    &Reference,
                    &queries,
                    &e,
                    &ids,
                    Metric::Ip,
                    &offsets,
                    &positions,
                    10,
                )
                .expect("rerank")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, rerank);
criterion_main!(benches);
