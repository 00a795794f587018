//! [`KernelBackend`]: the [`Backend`] whose every operation runs the kernels of
//! `kernels/*.cu` on a [`Device`] (uploading inputs, launching, downloading results).
//! Operations outside the kernels' limits (`k`, beam widths or `top_m` above
//! [`super::MAX_K`], shared memory above [`super::MAX_SHARED_BYTES`]) are errors naming the
//! operation, never a silent CPU fallback.

use crate::backend::{AssignOptions, Assignment, Backend, Encoding, Resident};
use crate::candidates::Candidates;
use crate::device::{Device, Timing};
use crate::error::{Error, Result};
use crate::index::{Codebook, Codebooks, Embeddings, Index, Tree};
use crate::matrix::Matrix;
use crate::metric::Metric;
use crate::search::SearchParams;
use crate::tables::QueryTables;
use crate::topk::TopK;

use super::fused_scan::FusedKernel;
use super::resident::{Held, Residency, ResidencyStats, Reuse, DEFAULT_CACHE_BYTES};

/// How codebook values are stored on the device (accumulation is always f32).
///
/// With `F16` or `Bf16` every operation that takes codebooks (lookup tables, assignment,
/// encoding) computes with the codebooks rounded to that format: the host rounds them once
/// per call (norms included), `rq_lut` and `rq_greedy_rows{64,16}` read the 16-bit values and widen
/// them on load, the other kernels read the rounded values as f32. Results therefore equal the
/// reference's on the rounded codebooks. A value outside the format's range is an error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Storage {
    /// Single precision: results equal the reference's.
    #[default]
    F32,
    /// IEEE half precision (round to nearest even).
    F16,
    /// bfloat16 (round to nearest even).
    Bf16,
}

impl Storage {
    /// The kernels' dtype argument (`RQ_DTYPE_*` in `kernels/common.cuh`).
    pub(crate) fn dtype_arg(self) -> i32 {
        match self {
            Storage::F32 => 0,
            Storage::F16 => 1,
            Storage::Bf16 => 2,
        }
    }

    /// `v` rounded to this storage and widened back to f32.
    pub fn round(self, v: f32) -> f32 {
        match self {
            Storage::F32 => v,
            Storage::F16 => half::f16::from_f32(v).to_f32(),
            Storage::Bf16 => half::bf16::from_f32(v).to_f32(),
        }
    }

    /// `cb` with every value rounded to this storage (norms recomputed); an error names a
    /// value that does not fit the format.
    pub fn round_codebook(self, cb: &Codebook) -> Result<Codebook> {
        let w = cb.words();
        let data = w.data().iter().map(|&v| self.round(v)).collect();
        Codebook::new(Matrix::new(w.rows(), w.cols(), data)?, "codebook").map_err(|e| {
            Error::param(format!(
                "codebook storage {self:?}: a value does not fit the format ({e})"
            ))
        })
    }

    /// Device buffer of codebook values already rounded to this storage: the f32 values
    /// themselves, or their 16-bit patterns (exact, being rounded already). Cached by content.
    pub(crate) fn input<D: Device>(
        self,
        dev: &D,
        res: &Residency<D>,
        rounded: &[f32],
    ) -> Result<Held<D::Buffer>> {
        let bits: Vec<u16> = match self {
            Storage::F32 => return res.input(dev, rounded, Reuse::Content),
            Storage::F16 => rounded
                .iter()
                .map(|&v| half::f16::from_f32(v).to_bits())
                .collect(),
            Storage::Bf16 => rounded
                .iter()
                .map(|&v| half::bf16::from_f32(v).to_bits())
                .collect(),
        };
        res.input(dev, &bits, Reuse::Content)
    }
}

/// A backend running the rqtree kernels on device `D`. Index and codebook inputs stay on the
/// device across calls ([`Residency`]): pinned with [`Backend::keep_resident`], or cached by
/// content (a modified index is uploaded again, never served stale).
pub struct KernelBackend<D: Device> {
    dev: D,
    res: Residency<D>,
    storage: Storage,
    tensor_cores: bool,
    fused: FusedKernel,
}

impl<D: Device> KernelBackend<D> {
    /// Wraps an opened device, with a content cache of [`DEFAULT_CACHE_BYTES`].
    pub fn new(dev: D) -> Self {
        Self::with_cache_budget(dev, DEFAULT_CACHE_BYTES)
    }
    /// Wraps an opened device whose content cache holds at most `bytes` (0: no caching of
    /// unpinned inputs).
    pub fn with_cache_budget(dev: D, bytes: usize) -> Self {
        KernelBackend {
            dev,
            res: Residency::new(bytes),
            storage: Storage::F32,
            tensor_cores: false,
            fused: FusedKernel::Auto,
        }
    }
    /// Screens codewords for the greedy assignment and encoding on the tensor cores (TF32
    /// `mma` against centred codewords, `rq_greedy_rows64_tc`; sm_80+) instead of with FMAs,
    /// and the items of the exact top-k after each batch's first block
    /// (`rq_exact_screened`) instead of scoring every item exactly (default off). Results are
    /// the same either way (the decision is certified exact, kernels/README.md); only the
    /// speed differs.
    pub fn with_tensor_cores(mut self, on: bool) -> Self {
        self.tensor_cores = on;
        self
    }
    /// Whether the greedy and exact top-k screenings run on the tensor cores.
    pub fn tensor_cores(&self) -> bool {
        self.tensor_cores
    }
    /// Chooses the fused lookup + top-k kernel (default [`FusedKernel::Auto`]: the scan
    /// kernel over long candidate ranges, the range walk otherwise). Results are the same
    /// either way; only the speed differs.
    pub fn with_fused_kernel(mut self, kernel: FusedKernel) -> Self {
        self.fused = kernel;
        self
    }
    /// The fused lookup + top-k kernel choice.
    pub fn fused_kernel(&self) -> FusedKernel {
        self.fused
    }
    /// Stores codebooks on the device as `storage` (default [`Storage::F32`]).
    pub fn with_codebook_storage(mut self, storage: Storage) -> Self {
        self.storage = storage;
        self
    }
    /// The codebook storage.
    pub fn codebook_storage(&self) -> Storage {
        self.storage
    }
    /// `cbs` rounded to the codebook storage (borrowed unchanged for f32).
    fn rounded<'a>(&self, cbs: &'a Codebooks) -> Result<std::borrow::Cow<'a, Codebooks>> {
        if self.storage == Storage::F32 {
            return Ok(std::borrow::Cow::Borrowed(cbs));
        }
        let levels = cbs
            .iter()
            .map(|cb| self.storage.round_codebook(cb))
            .collect::<Result<Vec<_>>>()?;
        Ok(std::borrow::Cow::Owned(Codebooks::new(levels)?))
    }
    /// The device.
    pub fn device(&self) -> &D {
        &self.dev
    }
    /// Upload and reuse counters of the resident copies.
    pub fn residency_stats(&self) -> Result<ResidencyStats> {
        self.res.stats()
    }
}

impl<D: Device> Backend for KernelBackend<D> {
    fn name(&self) -> &'static str {
        self.dev.name()
    }

    fn assign(&self, r: &Matrix, cb: &Codebook, o: &AssignOptions) -> Result<Assignment> {
        let (st, tc) = (self.storage, self.tensor_cores);
        if st == Storage::F32 {
            return super::assign::assign(&self.dev, &self.res, r, cb, o, st, tc);
        }
        let cb = st.round_codebook(cb)?;
        super::assign::assign(&self.dev, &self.res, r, &cb, o, st, tc)
    }

    fn encode(&self, items: &Matrix, cbs: &Codebooks, beam: usize) -> Result<Encoding> {
        let cbs = self.rounded(cbs)?;
        let (st, tc) = (self.storage, self.tensor_cores);
        super::assign::encode(&self.dev, &self.res, items, &cbs, beam, st, tc)
    }

    fn lookup_tables(&self, q: &Matrix, cbs: &Codebooks, metric: Metric) -> Result<QueryTables> {
        let cbs = self.rounded(cbs)?;
        super::lookup::lookup_tables(&self.dev, &self.res, q, &cbs, metric, self.storage)
    }

    fn traverse(&self, t: &QueryTables, tree: &Tree, beams: &[usize]) -> Result<Candidates> {
        super::traverse::traverse(&self.dev, &self.res, t, tree, beams)
    }

    fn fused_topk(&self, t: &QueryTables, ix: &Index, c: &Candidates, k: usize) -> Result<TopK> {
        super::lookup::fused_topk(&self.dev, &self.res, t, ix, c, k, self.fused)
    }

    fn search_on_device(
        &self,
        ix: &Index,
        q: &Matrix,
        p: &SearchParams,
    ) -> Result<Option<(TopK, Vec<usize>)>> {
        let cbs = self.rounded(&ix.codebooks)?;
        let (st, fk) = (self.storage, self.fused);
        super::pipeline::search(&self.dev, &self.res, st, fk, &cbs, ix, q, p)
    }

    fn rerank(
        &self,
        q: &Matrix,
        e: &Embeddings,
        ids: &[i64],
        metric: Metric,
        offsets: &[usize],
        positions: &[u32],
        k: usize,
    ) -> Result<TopK> {
        if ids.len() != e.rows() {
            return Err(Error::shape(format!(
                "rerank: {} ids for {} embedding rows",
                ids.len(),
                e.rows()
            )));
        }
        super::lookup::rerank(
            &self.dev, &self.res, q, e, ids, metric, offsets, positions, k,
        )
    }

    fn topk(&self, scores: &Matrix, k: usize) -> Result<TopK> {
        super::topk::topk(&self.dev, &self.res, scores, k)
    }

    fn segmented_topk(&self, values: &[f32], offsets: &[usize], k: usize) -> Result<TopK> {
        super::topk::segmented_topk(&self.dev, values, offsets, k)
    }

    fn exact_topk(&self, q: &Matrix, items: &Matrix, metric: Metric, k: usize) -> Result<TopK> {
        super::exact::exact_topk(&self.dev, &self.res, q, items, metric, k, self.tensor_cores)
    }

    fn keep_resident(&self, data: Resident) -> Result<()> {
        match data {
            Resident::Index(ix) => self.res.pin_index(ix),
            Resident::Matrix(m) => self.res.pin_matrix(m),
        }
    }

    fn release_resident(&self) -> Result<()> {
        self.res.release()
    }

    fn time(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<Timing> {
        self.dev.time(f)
    }
}

/// The agreement check of DESIGN §4, written once for any device: every operation of
/// [`KernelBackend`] against the CPU reference on small inputs with ties, sizes that are not
/// multiples of 32, `k` larger than the candidate count and empty results.
#[cfg(test)]
pub(crate) mod agreement {
    use super::*;
    use crate::index::{CodeData, Codes};
    use crate::kernels::exact::{exact_topk_tiled, ExactTiles};
    use crate::reference::Reference;
    use rand::{Rng, SeedableRng};

    fn matrix(
        rng: &mut rand_xoshiro::Xoshiro256PlusPlus,
        rows: usize,
        cols: usize,
        levels: i32,
    ) -> Matrix {
        let data = (0..rows * cols)
            .map(|_| {
                if levels > 0 {
                    rng.random_range(0..levels) as f32 - (levels / 2) as f32
                } else {
                    rng.random_range(-1.0f32..1.0)
                }
            })
            .collect();
        Matrix::new(rows, cols, data).expect("shape")
    }

    fn close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
            let ok = x == y || (x - y).abs() <= 1e-5 * (1.0 + y.abs());
            assert!(ok, "{what}[{i}]: {x} vs reference {y}");
        }
    }

    fn same_topk(a: &TopK, b: &TopK, what: &str) {
        assert_eq!((a.rows, a.k), (b.rows, b.k), "{what}: shape");
        assert_eq!(a.ids, b.ids, "{what}: ids");
        close(&a.scores, &b.scores, what);
    }

    /// A small index over `items` with codebooks `cbs` (items sorted into code order).
    fn index(items: &Matrix, cbs: &Codebooks, metric: Metric) -> Index {
        let enc = Reference.encode(items, cbs, 1).expect("encode");
        let l = cbs.levels();
        let mut order: Vec<usize> = (0..items.rows()).collect();
        order.sort_by(|&a, &b| enc.codes[a * l..(a + 1) * l].cmp(&enc.codes[b * l..(b + 1) * l]));
        let item_major: Vec<u32> = order
            .iter()
            .flat_map(|&i| enc.codes[i * l..(i + 1) * l].to_vec())
            .collect();
        let codes = Codes::from_item_major(&item_major, &cbs.sizes()).expect("codes");
        let rows: Vec<f32> = order.iter().flat_map(|&i| items.row(i).to_vec()).collect();
        let sorted = Matrix::new(items.rows(), items.cols(), rows).expect("items");
        let ids: Vec<i64> = order.iter().map(|&i| 1000 - 3 * i as i64).collect();
        let tree = Tree::build(&codes, cbs, &ids, &|i| sorted.row(i).to_vec()).expect("tree");
        let item_norms = (0..items.rows())
            .map(|i| crate::matrix::norm_sq(&cbs.reconstruct(&codes.path(i))))
            .collect();
        let ix = Index {
            metric,
            codebooks: cbs.clone(),
            codes,
            ids,
            item_norms,
            tree,
            embeddings: Embeddings::store(sorted, crate::index::EmbeddingKind::F16),
        };
        ix.validate().expect("valid index");
        ix
    }

    /// Runs every operation on `b` and on the reference and asserts agreement.
    pub(crate) fn check<B: Backend>(b: &B) {
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(11);
        // top-k: ties (few distinct values), k = 1, small, > 256 (radix), > n.
        let scores = matrix(&mut rng, 5, 301, 7);
        for k in [1, 3, 40, 300, 400] {
            same_topk(
                &b.topk(&scores, k).expect("topk"),
                &Reference.topk(&scores, k).expect("ref"),
                "topk",
            );
        }
        let values = scores.data()[..120].to_vec();
        let offsets = [0, 0, 7, 7, 100, 120];
        for k in [1, 9] {
            same_topk(
                &b.segmented_topk(&values, &offsets, k).expect("segmented"),
                &Reference.segmented_topk(&values, &offsets, k).expect("ref"),
                "segmented_topk",
            );
        }
        // assignment: duplicated codewords force ties.
        let d = 13;
        let mut words = matrix(&mut rng, 37, d, 3);
        let dup = words.row(3).to_vec();
        words.row_mut(20).copy_from_slice(&dup);
        let cb = Codebook::new(words, "codebook.0").expect("codebook");
        let x = matrix(&mut rng, 45, d, 3);
        for opts in [
            AssignOptions::default(),
            AssignOptions {
                top_m: 1,
                alpha: None,
                residual: true,
            },
            AssignOptions {
                top_m: 5,
                alpha: Some(0.5),
                residual: true,
            },
        ] {
            let got = b.assign(&x, &cb, &opts).expect("assign");
            let want = Reference.assign(&x, &cb, &opts).expect("ref");
            assert_eq!(got.codes, want.codes, "assign codes {opts:?}");
            close(&got.logits, &want.logits, "assign logits");
            match (&got.soft, &want.soft) {
                (Some(g), Some(w)) => close(g.data(), w.data(), "assign soft"),
                (None, None) => {}
                _ => panic!("assign soft presence differs"),
            }
            match (&got.residual, &want.residual) {
                (Some(g), Some(w)) => close(g.data(), w.data(), "assign residual"),
                (None, None) => {}
                _ => panic!("assign residual presence differs"),
            }
        }
        // encoding and a small index.
        let cbs = Codebooks::from_matrices(vec![
            matrix(&mut rng, 6, d, 0),
            matrix(&mut rng, 5, d, 0),
            matrix(&mut rng, 4, d, 0),
        ])
        .expect("codebooks");
        let items = matrix(&mut rng, 150, d, 0);
        for beam in [1, 3] {
            let got = b.encode(&items, &cbs, beam).expect("encode");
            let want = Reference.encode(&items, &cbs, beam).expect("ref");
            assert_eq!(got.codes, want.codes, "encode beam {beam}");
            close(&got.error, &want.error, "encode error");
        }
        let queries = matrix(&mut rng, 7, d, 0);
        for metric in [Metric::Ip, Metric::L2] {
            let ix = index(&items, &cbs, metric);
            let t = b.lookup_tables(&queries, &cbs, metric).expect("tables");
            let tr = Reference
                .lookup_tables(&queries, &cbs, metric)
                .expect("ref");
            close(&t.qnorm, &tr.qnorm, "qnorm");
            for (g, w) in t.levels.iter().zip(&tr.levels) {
                close(g.data(), w.data(), "lookup table");
            }
            for beams in [vec![2], vec![2, 5], vec![1, 3, 100]] {
                let c = b.traverse(&tr, &ix.tree, &beams).expect("traverse");
                let cr = Reference.traverse(&tr, &ix.tree, &beams).expect("ref");
                assert_eq!(c, cr, "traverse {beams:?}");
                for k in [1, 10, 200] {
                    let f = b.fused_topk(&tr, &ix, &cr, k).expect("fused");
                    let fr = Reference.fused_topk(&tr, &ix, &cr, k).expect("ref");
                    same_topk(&f, &fr, "fused_topk");
                    let e = ix.embeddings.as_ref().expect("embeddings");
                    let (off, pos) = fr.to_csr();
                    let r = b
                        .rerank(&queries, e, &ix.ids, metric, &off, &pos, 4)
                        .expect("rerank");
                    let rr = Reference
                        .rerank(&queries, e, &ix.ids, metric, &off, &pos, 4)
                        .expect("ref");
                    same_topk(&r, &rr, "rerank");
                }
            }
            for k in [1, 5, 200] {
                same_topk(
                    &b.exact_topk(&queries, &items, metric, k).expect("exact"),
                    &Reference
                        .exact_topk(&queries, &items, metric, k)
                        .expect("ref"),
                    "exact_topk",
                );
            }
        }
        // u16 codes (a level with K > 256).
        let big =
            Codebooks::from_matrices(vec![matrix(&mut rng, 300, d, 0), matrix(&mut rng, 3, d, 0)])
                .expect("codebooks");
        let ix = index(&items, &big, Metric::Ip);
        assert!(matches!(ix.codes.data(), CodeData::U16(_)));
        let tr = Reference
            .lookup_tables(&queries, &big, Metric::Ip)
            .expect("ref");
        let cr = Reference.traverse(&tr, &ix.tree, &[20, 40]).expect("ref");
        same_topk(
            &b.fused_topk(&tr, &ix, &cr, 30).expect("fused u16"),
            &Reference.fused_topk(&tr, &ix, &cr, 30).expect("ref"),
            "fused_topk u16",
        );
    }

    /// Index data crosses to the device once: later calls hit the content cache, and a
    /// pinned index is served without hashing; a changed index is uploaded again.
    #[cfg(feature = "emu")]
    #[test]
    fn index_stays_resident_across_calls() {
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(5);
        let d = 9;
        let cbs =
            Codebooks::from_matrices(vec![matrix(&mut rng, 6, d, 0), matrix(&mut rng, 5, d, 0)])
                .expect("codebooks");
        let mut ix = index(&matrix(&mut rng, 90, d, 0), &cbs, Metric::L2);
        let q = matrix(&mut rng, 4, d, 0);
        let b = KernelBackend::new(crate::device::emu::EmuDevice::new());
        let t = Reference.lookup_tables(&q, &cbs, Metric::L2).expect("ref");
        let c = Reference.traverse(&t, &ix.tree, &[2, 4]).expect("ref");
        let stats = || b.residency_stats().expect("stats");
        b.fused_topk(&t, &ix, &c, 5).expect("fused");
        let first = stats();
        assert_eq!(
            first.uploads, 6,
            "codes, item ranges, norms, ids, the tables' level offsets and sizes"
        );
        b.fused_topk(&t, &ix, &c, 5).expect("fused");
        let second = stats();
        assert_eq!(
            second.uploads, first.uploads,
            "no upload on the second call"
        );
        assert_eq!(second.hits, first.hits + 6);
        ix.item_norms[0] += 1.0;
        b.fused_topk(&t, &ix, &c, 5).expect("fused");
        assert_eq!(
            stats().uploads,
            second.uploads + 1,
            "only the changed norms"
        );
        let pinned = std::sync::Arc::new(ix);
        b.keep_resident(Resident::Index(pinned.clone()))
            .expect("pin");
        b.fused_topk(&t, &pinned, &c, 5).expect("fused");
        let third = stats();
        b.fused_topk(&t, &pinned, &c, 5).expect("fused");
        assert_eq!(stats().uploads, third.uploads);
        assert_eq!(stats().hits, third.hits + 6);
        b.release_resident().expect("release");
    }

    /// A repeated search of one batch shape on the device makes one host-to-device copy, its
    /// queries: the index, the codebooks, the tables' layout and the candidate lists' starts
    /// are found on the device again (each upload waits for the stream, so every one saved
    /// is a stall saved). Counted by the emu device, so copies that bypass the residency
    /// count too.
    #[cfg(feature = "emu")]
    #[test]
    fn repeated_search_uploads_only_the_queries() {
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(6);
        let d = 9;
        let cbs =
            Codebooks::from_matrices(vec![matrix(&mut rng, 6, d, 0), matrix(&mut rng, 5, d, 0)])
                .expect("codebooks");
        let ix = index(&matrix(&mut rng, 90, d, 0), &cbs, Metric::Ip);
        let q = matrix(&mut rng, 4, d, 0);
        let b = KernelBackend::new(crate::device::emu::EmuDevice::new());
        let params = crate::search::SearchParams {
            k: 5,
            beams: vec![2, 4],
            rerank: crate::search::Rerank::None,
        };
        let want = crate::search::search(&Reference, &ix, &q, None, &params).expect("ref");
        crate::search::search(&b, &ix, &q, None, &params).expect("search");
        let first = b.device().uploads();
        let got = crate::search::search(&b, &ix, &q, None, &params).expect("search");
        assert_eq!(got.candidates, want.candidates);
        assert_eq!(b.device().uploads(), first + 1, "the queries only");
    }

    /// The exact top-k's tiling (`exact::exact_topk_tiled`) against the reference, ids and
    /// score bits: query batches, item blocks narrower than `k` (lists with missing slots
    /// merged), ragged last tiles, one-item blocks, ties across blocks (decided by the lower
    /// id), both metrics and both selection paths, each with and without the tensor-core
    /// screening (which takes every block after a batch's first), and the screening's
    /// window at its scale. Seeded from `RQTREE_TEST_SEED` or the
    /// clock, printed.
    pub(crate) fn check_exact_tiles<D: crate::device::Device>(b: &KernelBackend<D>) {
        let seed = std::env::var("RQTREE_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |t| t.as_nanos() as u64)
            });
        eprintln!("check_exact_tiles: seed = {seed} (replay with RQTREE_TEST_SEED={seed})");
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed);
        // (items, d, value levels (0: uniform), tiles (queries × items, row segments),
        // k values)
        let ties = (
            611,
            19,
            3,
            [
                (3, 37, None),
                (32, 64, Some(10)),
                (11, 611, Some(64)),
                (5, 611, Some(7)),
            ],
            [1, 2, 40, 300, 650],
        );
        let tiny = (
            23,
            9,
            0,
            [
                (1, 1, None),
                (4, 5, Some(2)),
                (11, 23, Some(4)),
                (2, 23, None),
            ],
            [1, 5, 23, 30, 31],
        );
        // d a multiple of 4 over two staged chunks (the screening's 16-byte staging), more
        // queries than a screening block's 64.
        let quads = (
            300,
            36,
            0,
            [
                (70, 50, None),
                (67, 129, Some(40)),
                (70, 300, None),
                (3, 7, None),
            ],
            [1, 17, 100, 300, 301],
        );
        // Element staging over two chunks and two query tiles.
        let elements = (
            200,
            37,
            0,
            [
                (70, 97, None),
                (66, 200, Some(33)),
                (65, 129, None),
                (3, 50, None),
            ],
            [1, 10, 97, 200, 201],
        );
        for (n, d, levels, tiles, ks) in [ties, tiny, quads, elements] {
            let items = matrix(&mut rng, n, d, levels);
            let queries = matrix(&mut rng, if d >= 36 { 70 } else { 11 }, d, levels);
            for metric in [Metric::Ip, Metric::L2] {
                for k in ks {
                    let want = Reference
                        .exact_topk(&queries, &items, metric, k)
                        .expect("reference");
                    for ((rows, cols, segment), screen) in
                        tiles.into_iter().flat_map(|t| [(t, false), (t, true)])
                    {
                        let tiles = ExactTiles {
                            rows,
                            cols,
                            segment,
                        };
                        let got = exact_topk_tiled(
                            &b.dev, &b.res, &queries, &items, metric, k, tiles, screen,
                        )
                        .expect("exact_topk_tiled");
                        let what = format!(
                            "exact top-{k} of {n} ({metric:?}) in {rows} x {cols} by \
                             {segment:?}, screened: {screen}"
                        );
                        same_bits(&got, &want, &what);
                    }
                }
            }
        }
        // The screening's window at its scale: queries ρ·1 with every bit TF32 drops set
        // (ρ = 1 + 8191·2^-23), items 1 and ρ·1, one item per block, k = 1. Truncated, item
        // 1 screens at 16, its exact score 16ρ² beats item 0's 16ρ: a window below a fifth
        // of rq_xs_window's (0.064 here) drops it. The same at scales whose squared norms
        // round to 0 in f32 (the window's norms are floored): a query of ~2^-80 against
        // items of ~1, and one of ~2^60 against items of ~2^-78. Under l2 (item 1 at
        // distance 0, item 0 at 16(ρ - 1)²) item 1 screens 0.0625 below its score, half of
        // rq_xs_window_l2.
        let rho = 1.0 + 8191.0 * 2f32.powi(-23);
        let (tiny, huge, small) = (2f32.powi(-80), 2f32.powi(60), 2f32.powi(-78));
        for (what, metric, q, x) in [
            ("TF32 truncation at its worst", Metric::Ip, 1.0, 1.0),
            (
                "the same, a query's squared norm below f32",
                Metric::Ip,
                tiny,
                1.0,
            ),
            (
                "the same, items' squared norms below f32",
                Metric::Ip,
                huge,
                small,
            ),
            ("the same under l2", Metric::L2, 1.0, 1.0),
        ] {
            let items = Matrix::new(2, 16, [[x; 16], [x * rho; 16]].concat()).expect("shape");
            let queries = Matrix::new(3, 16, vec![q * rho; 48]).expect("shape");
            let want = Reference
                .exact_topk(&queries, &items, metric, 1)
                .expect("reference");
            assert_eq!(want.ids, vec![1; 3], "{what}");
            let tiles = ExactTiles {
                rows: 3,
                cols: 1,
                segment: None,
            };
            let got = exact_topk_tiled(&b.dev, &b.res, &queries, &items, metric, 1, tiles, true)
                .expect("exact_topk_tiled");
            same_bits(&got, &want, &format!("{what}, screened"));
        }
    }

    /// `got` equals `want`, score bits included.
    fn same_bits(got: &TopK, want: &TopK, what: &str) {
        assert_eq!(got, want, "{what}");
        let bits = |t: &TopK| t.scores.iter().map(|s| s.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(got), bits(want), "{what}: score bits");
    }

    /// The exact top-k of one query over more items than 65 535 tiles of 32 (a launch whose
    /// item tiles would overflow a grid's y dimension) with the default tiles.
    pub(crate) fn check_exact_many_items<D: crate::device::Device>(b: &KernelBackend<D>) {
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(17);
        let items = matrix(&mut rng, 2_100_000, 2, 0);
        let queries = matrix(&mut rng, 1, 2, 0);
        for metric in [Metric::Ip, Metric::L2] {
            same_topk(
                &b.exact_topk(&queries, &items, metric, 7)
                    .expect("exact top-k"),
                &Reference
                    .exact_topk(&queries, &items, metric, 7)
                    .expect("reference"),
                "exact top-k of 2.1M items",
            );
        }
    }

    /// The harness itself (index construction, shapes) checked on the reference.
    #[test]
    fn harness_runs_on_the_reference() {
        check(&Reference);
    }

    /// The kernel sources, emulated on the CPU, against the reference.
    #[cfg(feature = "emu")]
    #[test]
    fn emu_agrees_with_reference() {
        let b = KernelBackend::new(crate::device::emu::EmuDevice::new());
        check(&b);
        check_exact_tiles(&b);
        check_exact_many_items(&b);
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_agrees_with_reference() {
        match crate::device::cuda::CudaDevice::open() {
            Ok(dev) => {
                let b = KernelBackend::new(dev);
                check(&b);
                check_exact_tiles(&b);
                check_exact_many_items(&b);
            }
            Err(e) => {
                if std::env::var("REQUIRE_GPU").is_ok_and(|v| v == "1") {
                    panic!("REQUIRE_GPU=1 but the CUDA device is unavailable: {e}");
                }
                println!("SKIP: {e}");
            }
        }
    }
}
