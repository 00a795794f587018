//! Learning the index (DESIGN §6): residual k-means initialisation, then joint soft training
//! of all levels with the cross-attention soft assignment, a reconstruction loss of the leaves
//! and of the intermediate depths (the code prefixes that score the tree's inner nodes), an
//! optional supervised index loss over (user, item, label) triples and a balance regulariser,
//! under an inverse-temperature schedule `α_t = max(α_max·(t/(T−1))^p, α_floor)` (steps
//! `t = 0 … T−1`), with Adam on
//! the codebooks (learning rate decayed to 0 by a cosine over the `T` steps).
//!
//! - [`soft`]: the soft assignment of one level, forward and backward ([`soft::SoftAssign`],
//!   reference and kernels);
//! - [`model`]: the batch objective and its hand-derived gradient;
//! - [`learn`]: the training loop.

pub mod model;
pub mod soft;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::index::kmeans::{residual_kmeans, KMeansOptions};
use crate::index::Codebooks;
use crate::matrix::Matrix;
use crate::progress::Progress;
use model::{loss_and_grad, Batch, Losses};
use soft::SoftAssign;

/// Parameters of [`learn`].
#[derive(Clone, Debug, PartialEq)]
pub struct LearnOptions {
    /// Levels `L` (1..=8).
    pub levels: usize,
    /// Codewords per level `K`.
    pub codes: usize,
    /// Passes over the training rows.
    pub epochs: usize,
    /// Reconstruction rows per batch (also supervised triples per batch).
    pub batch: usize,
    /// Peak Adam learning rate (units of the embedding coordinates), decayed to 0 by a cosine.
    pub lr: f64,
    /// Final inverse temperature `α_max` (on the logit `2<r,C[k]> - ||C[k]||²`, whose
    /// differences between codewords are squared distances: choose `α_max` so that
    /// `α_max·(typical distance gap)` is ≫ 1).
    pub alpha_max: f64,
    /// Schedule exponent `p` of `α_t = α_max·(t/(T−1))^p` (steps `t = 0 … T−1`).
    pub alpha_power: f64,
    /// Floor of the schedule as a fraction of `α_max` (so `α > 0` at `t = 0`).
    pub alpha_floor: f64,
    /// Weight `w_pre` of the reconstruction error of the intermediate depths (the prefixes
    /// `Σ_{m≤l} c̄_m`, `l < L`, that score the tree's inner nodes).
    pub prefix_weight: f64,
    /// Weight `w_bal` of the balance regulariser.
    pub balance: f64,
    /// Batches in the balance window (the current one included).
    pub balance_window: usize,
    /// Final weight `w_idx` of the supervised index loss.
    pub index_weight: f64,
    /// Fraction of the steps over which `w_idx` ramps linearly from 0 to `index_weight`.
    pub warmup: f64,
    /// Seed of the sampling, the initialisation and the batch order.
    pub seed: u64,
    /// At most this many item rows (a seeded sample) train the codebooks, in the k-means
    /// initialisation (its own sample, as `rqtree build --train-sample`) and in the soft
    /// training.
    pub max_train: usize,
    /// Lloyd iterations per level of the residual k-means initialisation.
    pub kmeans_iters: usize,
}

/// Defaults: those measured best on unit-norm embeddings (gcide, `d = 384`, `K = 256`,
/// `benches/results/learn_gcide.md`); other data scales need `alpha_max` scaled by the inverse
/// of their squared distances and `lr` by their coordinate scale.
impl Default for LearnOptions {
    fn default() -> Self {
        LearnOptions {
            levels: 2,
            codes: 256,
            epochs: 8,
            batch: 512,
            lr: 2e-4,
            alpha_max: 1e7,
            alpha_power: 1.0,
            alpha_floor: 0.25,
            prefix_weight: 3.0,
            balance: 0.0,
            balance_window: 8,
            index_weight: 1.0,
            warmup: 0.2,
            seed: 20240601,
            max_train: 100_000,
            kmeans_iters: 10,
        }
    }
}

/// Supervision for the index loss: user embeddings and `(user_row, item_row, label)` triples.
#[derive(Clone, Debug)]
pub struct Supervision<'a> {
    /// `U × d` user embeddings.
    pub users: &'a Matrix,
    /// `M × 3` triples `[user_row, item_row, label]`, row-major (`M ≥ 1`, label 0 or 1).
    pub pairs: &'a [i64],
}

/// What training did, per epoch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LearnReport {
    /// Mean batch losses of each epoch.
    pub epochs: Vec<Losses>,
    /// Steps taken.
    pub steps: usize,
    /// Final `α`.
    pub alpha: f64,
}

/// Checks the options.
fn check_options(o: &LearnOptions) -> Result<()> {
    let bad = |m: String| Err(Error::param(m));
    if o.epochs == 0 {
        return bad("learn: epochs must be ≥ 1".into());
    }
    if o.batch == 0 {
        return bad("learn: batch must be ≥ 1".into());
    }
    if !(o.lr.is_finite() && o.lr > 0.0) {
        return bad(format!("learn: lr = {} must be finite and > 0", o.lr));
    }
    if !(o.alpha_max.is_finite() && o.alpha_max > 0.0) {
        return bad(format!(
            "learn: alpha-max = {} must be finite and > 0",
            o.alpha_max
        ));
    }
    if !(o.alpha_power.is_finite() && o.alpha_power >= 0.0) {
        return bad(format!(
            "learn: alpha-power = {} must be finite and ≥ 0",
            o.alpha_power
        ));
    }
    if !(o.alpha_floor > 0.0 && o.alpha_floor <= 1.0) {
        return bad(format!(
            "learn: alpha floor = {} must be in (0, 1]",
            o.alpha_floor
        ));
    }
    // The soft assignment takes α as an f32: every α of the schedule, from
    // alpha-max × alpha floor up to alpha-max, must be a positive finite f32.
    if !(o.alpha_max as f32).is_finite() {
        return bad(format!(
            "learn: alpha-max = {:e} is beyond f32 (the soft assignment's α)",
            o.alpha_max
        ));
    }
    if (o.alpha_max * o.alpha_floor) as f32 <= 0.0 {
        return bad(format!(
            "learn: the smallest α, alpha-max × alpha floor = {:e} × {:e}, rounds to 0 in f32 \
             (the soft assignment's α)",
            o.alpha_max, o.alpha_floor
        ));
    }
    for (name, v) in [
        ("prefix-weight", o.prefix_weight),
        ("balance", o.balance),
        ("index-weight", o.index_weight),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return bad(format!("learn: {name} = {v} must be finite and ≥ 0"));
        }
    }
    if !(0.0..=1.0).contains(&o.warmup) {
        return bad(format!("learn: warmup = {} must be in [0, 1]", o.warmup));
    }
    if o.balance_window == 0 {
        return bad("learn: balance window must be ≥ 1".into());
    }
    if o.max_train == 0 {
        return bad("learn: the training sample (--train-sample, max_train) must be ≥ 1".into());
    }
    Ok(())
}

/// Checks the supervision against the items (`n` rows of dimension `d`): at least one
/// triple, rows in range, labels 0 or 1; returns the triples as `(user_row, item_row, label)`.
fn check_supervision(s: &Supervision<'_>, n: usize, d: usize) -> Result<Vec<(usize, usize, f32)>> {
    s.users.check_cols(d, "users")?;
    s.users.check_finite("users")?;
    if s.pairs.len() % 3 != 0 {
        return Err(Error::shape(format!(
            "pairs: {} values are not M x 3 [user_row, item_row, label]",
            s.pairs.len()
        )));
    }
    if s.pairs.is_empty() {
        return Err(Error::param(
            "pairs: no triples (0 x 3); the supervised index loss needs at least one \
             (train without supervision by giving none)",
        ));
    }
    s.pairs
        .chunks_exact(3)
        .enumerate()
        .map(|(m, t)| {
            let (u, i, y) = (t[0], t[1], t[2]);
            if u < 0 || u as usize >= s.users.rows() {
                return Err(Error::param(format!(
                    "pairs row {m}: user_row {u} outside 0..{}",
                    s.users.rows()
                )));
            }
            if i < 0 || i as usize >= n {
                return Err(Error::param(format!(
                    "pairs row {m}: item_row {i} outside 0..{n}"
                )));
            }
            if y != 0 && y != 1 {
                return Err(Error::param(format!(
                    "pairs row {m}: label {y} must be 0 or 1"
                )));
            }
            Ok((u as usize, i as usize, y as f32))
        })
        .collect()
}

/// `α_t` at step `t` of `total` (see [`LearnOptions::alpha_max`]).
pub fn alpha_at(o: &LearnOptions, t: usize, total: usize) -> f64 {
    let frac = if total <= 1 {
        1.0
    } else {
        t as f64 / (total - 1) as f64
    };
    (o.alpha_max * frac.powf(o.alpha_power)).max(o.alpha_max * o.alpha_floor)
}

/// Learning rate at step `t` of `total`: cosine decay from `lr` to 0.
pub fn lr_at(lr: f64, t: usize, total: usize) -> f64 {
    let frac = t as f64 / total.max(1) as f64;
    lr * 0.5 * (1.0 + (std::f64::consts::PI * frac).cos())
}

/// Adam state of one parameter vector.
struct Adam {
    m: Vec<f64>,
    v: Vec<f64>,
}

impl Adam {
    const B1: f64 = 0.9;
    const B2: f64 = 0.999;
    const EPS: f64 = 1e-8;

    fn new(len: usize) -> Self {
        Adam {
            m: vec![0.0; len],
            v: vec![0.0; len],
        }
    }

    /// One update of `p` with gradient `g` at step `t ≥ 1`.
    fn step(&mut self, p: &mut [f32], g: &[f32], lr: f64, t: usize) {
        let c1 = 1.0 - Self::B1.powi(t as i32);
        let c2 = 1.0 - Self::B2.powi(t as i32);
        for (((pi, &gi), mi), vi) in p.iter_mut().zip(g).zip(&mut self.m).zip(&mut self.v) {
            let gi = gi as f64;
            *mi = Self::B1 * *mi + (1.0 - Self::B1) * gi;
            *vi = Self::B2 * *vi + (1.0 - Self::B2) * gi * gi;
            let upd = lr * (*mi / c1) / ((*vi / c2).sqrt() + Self::EPS);
            *pi = (*pi as f64 - upd) as f32;
        }
    }
}

/// Seeded sample of at most `max` row indices of `0..n` (all rows, shuffled, when `n ≤ max`).
fn sample_rows(n: usize, max: usize, rng: &mut Xoshiro256PlusPlus) -> Vec<usize> {
    let mut rows: Vec<usize> = (0..n).collect();
    rows.shuffle(rng);
    rows.truncate(max);
    rows
}

/// Gathers `rows` of `m` (`· × d`) into a flat buffer.
fn gather(m: &Matrix, rows: impl Iterator<Item = usize>, out: &mut Vec<f32>) {
    out.clear();
    for r in rows {
        out.extend_from_slice(m.row(r));
    }
}

/// Learns `opts.levels` codebooks of `opts.codes` words on `items` (`N × d`, finite):
/// residual k-means on a sample (through `be`), then joint soft training (through
/// `engine`), optionally supervised. Returns the codebooks and a report. Training that
/// diverges is an error: [`Error::Range`] at the first step whose loss is not finite, or
/// [`Error::NonFinite`] naming the learned codebook when the last update made it so.
pub fn learn(
    be: &dyn Backend,
    engine: &dyn SoftAssign<f32>,
    items: &Matrix,
    supervision: Option<&Supervision<'_>>,
    opts: &LearnOptions,
    progress_enabled: bool,
) -> Result<(Codebooks, LearnReport)> {
    check_options(opts)?;
    let (n, d) = (items.rows(), items.cols());
    if n == 0 || d == 0 {
        return Err(Error::shape(format!(
            "learn: items are {n} x {d}, need at least one row and column"
        )));
    }
    items.check_finite("items")?;
    let triples = supervision
        .map(|s| check_supervision(s, n, d))
        .transpose()?
        .unwrap_or_default();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(opts.seed);
    let train = sample_rows(n, opts.max_train, &mut rng);
    let mut sample = Vec::with_capacity(train.len() * d);
    gather(items, train.iter().copied(), &mut sample);
    let sample = Matrix::new(train.len(), d, sample)?;
    let steps_per_epoch = train.len().div_ceil(opts.batch);
    let total = steps_per_epoch.checked_mul(opts.epochs).ok_or_else(|| {
        Error::param(format!(
            "learn: {} epochs of {steps_per_epoch} steps overflow the step count",
            opts.epochs
        ))
    })?;
    let progress = Progress::new(
        (opts.levels as u64).saturating_add(total as u64),
        progress_enabled,
    );
    progress.message("residual k-means".into());
    // The same initialisation `rqtree build` trains with these parameters, so that learning
    // is a refinement of the residual k-means codebooks.
    let init = residual_kmeans(
        be,
        items,
        &KMeansOptions {
            levels: opts.levels,
            codes: opts.codes,
            iters: opts.kmeans_iters,
            max_train: opts.max_train,
            seed: opts.seed,
        },
        &progress,
    )?;
    let mut levels: Vec<Vec<f32>> = init.iter().map(|c| c.words().data().to_vec()).collect();
    let mut adam: Vec<Adam> = levels.iter().map(|c| Adam::new(c.len())).collect();
    let mut window: std::collections::VecDeque<(Vec<Vec<f64>>, usize)> =
        std::collections::VecDeque::new();
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut sup_order: Vec<usize> = (0..triples.len()).collect();
    sup_order.shuffle(&mut rng);
    let mut sup_pos = 0usize;
    let (mut recon, mut sup_items, mut sup_users, mut sup_labels) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut report = LearnReport::default();
    let mut t = 0usize;
    for _ in 0..opts.epochs {
        order.shuffle(&mut rng);
        let mut sum = Losses::default();
        for chunk in order.chunks(opts.batch) {
            let alpha = alpha_at(opts, t, total);
            let warm = if opts.warmup > 0.0 {
                (t as f64 / (opts.warmup * total as f64)).min(1.0)
            } else {
                1.0
            };
            gather(&sample, chunk.iter().copied(), &mut recon);
            sup_items.clear();
            sup_users.clear();
            sup_labels.clear();
            if !triples.is_empty() && opts.index_weight > 0.0 {
                for _ in 0..opts.batch.min(triples.len()) {
                    if sup_pos == sup_order.len() {
                        sup_order.shuffle(&mut rng);
                        sup_pos = 0;
                    }
                    let (u, i, y) = triples[sup_order[sup_pos]];
                    sup_pos += 1;
                    sup_items.extend_from_slice(items.row(i));
                    if let Some(s) = supervision {
                        sup_users.extend_from_slice(s.users.row(u));
                    }
                    sup_labels.push(y);
                }
            }
            let mut prev = vec![Vec::new(); opts.levels];
            let mut prev_n = 0;
            for (sums, c) in &window {
                for (p, s) in prev.iter_mut().zip(sums) {
                    if p.is_empty() {
                        p.clone_from(s);
                    } else {
                        p.iter_mut().zip(s).for_each(|(a, b)| *a += b);
                    }
                }
                prev_n += c;
            }
            let batch = Batch {
                recon: &recon,
                sup_items: &sup_items,
                sup_users: &sup_users,
                sup_labels: &sup_labels,
                alpha: alpha as f32,
                prefix_weight: opts.prefix_weight,
                index_weight: opts.index_weight * warm,
                balance_weight: opts.balance,
                window: (prev_n > 0).then_some((prev.as_slice(), prev_n)),
            };
            let step = loss_and_grad(engine, &levels, d, &batch)?;
            t += 1;
            let lr = lr_at(opts.lr, t - 1, total);
            for ((p, g), a) in levels.iter_mut().zip(&step.grads).zip(&mut adam) {
                a.step(p, g, lr, t);
            }
            window.push_back((step.weight_sums, chunk.len()));
            while window.len() >= opts.balance_window {
                window.pop_front();
            }
            let l = step.losses;
            if !l.total.is_finite() {
                return Err(Error::Range(format!(
                    "learn: the training loss became {} at step {t} of {total} (α {alpha:.3e}, \
                     learning rate {lr:e}): the codebooks diverge; lower --lr",
                    l.total
                )));
            }
            sum.recon += l.recon;
            sum.prefix += l.prefix;
            sum.index += l.index;
            sum.balance += l.balance;
            sum.total += l.total;
            progress.message(format!(
                "α {alpha:.3e} rec {:.5} pre {:.5} idx {:.4} bal {:.4}",
                l.recon, l.prefix, l.index, l.balance
            ));
            progress.inc(1);
            report.alpha = alpha;
        }
        let s = steps_per_epoch as f64;
        report.epochs.push(Losses {
            recon: sum.recon / s,
            prefix: sum.prefix / s,
            index: sum.index / s,
            balance: sum.balance / s,
            total: sum.total / s,
        });
    }
    progress.finish();
    report.steps = t;
    let mats = levels
        .into_iter()
        .map(|w| Matrix::new(w.len() / d, d, w))
        .collect::<Result<Vec<_>>>()?;
    // Before `from_matrices`, whose own check would name them as if they were an input.
    for (l, m) in mats.iter().enumerate() {
        m.check_finite(&format!("learned codebook.{l}"))?;
    }
    let cbs = Codebooks::from_matrices(mats)?;
    Ok((cbs, report))
}
