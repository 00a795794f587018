//! The learner's objective over one batch and its gradient with respect to every codebook
//! (DESIGN §6), generic over [`Real`] so that the same code is checked against finite
//! differences in f64 and trained in f32.
//!
//! ## Forward (per row `x`, levels `l = 0..L-1`)
//!
//! ```text
//! r_0 = x,   (a_l, c̄_l) = soft(r_l; C_l, α),   r_{l+1} = r_l - c̄_l,   x̂ = Σ_l c̄_l = x - r_L
//! ```
//!
//! ## Loss of a batch (`B_r` reconstruction rows, `B_s` supervised triples `(u, x, y)`)
//!
//! ```text
//! L = L_rec + w_pre·L_pre + w_idx·L_idx + w_bal·L_bal
//! L_rec = (1/B_r) Σ_i ||x_i - x̂_i||² = (1/B_r) Σ_i ||r_L,i||²
//! L_pre = (1/B_r) Σ_i Σ_{0<l<L} ||r_l,i||²
//! L_idx = (1/B_s) Σ_j logloss(y_j, s_j),  s_j = <u_j, x̂_j>,
//!         logloss(y, s) = log(1 + e^s) - y·s   (binary cross-entropy on the logit s)
//! L_bal = Σ_l Σ_k p_l[k]²,  p_l[k] = (S_l[k] + Σ_{i<B_r} a_l[i,k]) / (N_prev + B_r)
//! ```
//!
//! `L_pre` is the reconstruction error of every intermediate depth: the tree scores a depth-`l`
//! node by its prefix `Σ_{m≤l} C_m[code_m]` (DESIGN §3), which joint training of `L_rec`
//! alone is free to move away from the mean of the node's items.
//!
//! where `S_l`/`N_prev` are the weight sums / row count of the recent batches of the balance
//! window (constants: no gradient flows into past batches). The balance term reads only the
//! reconstruction rows (the item distribution, not the engagement-biased supervised rows).
//!
//! ## Backward
//!
//! Every term is a function of `r_L` and of the weights `a_l`:
//!
//! ```text
//! ∂L_rec/∂r_L,i = 2 r_L,i / B_r
//! ∂L_pre/∂r_l,i = 2 r_l,i / B_r                      (0 < l < L, rows i < B_r)
//! ∂L_idx/∂r_L,j = -(σ(s_j) - y_j) u_j / B_s           (∂logloss/∂s = σ(s) - y, x̂ = x - r_L)
//! ∂L_bal/∂a_l[i,k] = 2 p_l[k] / (N_prev + B_r)        (rows i < B_r)
//! ```
//!
//! then, from the last level down, with `g_{L} = ∂L/∂r_L` (all terms reading `r_L`):
//!
//! ```text
//! ∂L/∂c̄_l = -g_{l+1}                                  (r_{l+1} = r_l - c̄_l)
//! (∂_r, ∂L/∂C_l) = soft_backward(r_l, a_l, ∂L/∂c̄_l, w_bal·∂L_bal/∂a_l)
//! g_l = g_{l+1} + ∂_r + w_pre·∂L_pre/∂r_l
//! ```
//!
//! (see [`super::soft`] for the soft assignment's own backward pass).

use super::soft::{norms, Real, SoftAssign, SoftLevel, Upstream};
use crate::error::{Error, Result};

/// One batch of the objective: rows and weights. All matrices row-major.
#[derive(Clone, Debug)]
pub struct Batch<'a, T> {
    /// `B_r × d` items for the reconstruction loss (and the balance window).
    pub recon: &'a [T],
    /// `B_s × d` items of the supervised triples.
    pub sup_items: &'a [T],
    /// `B_s × d` user embeddings of the supervised triples.
    pub sup_users: &'a [T],
    /// `B_s` labels `y ∈ [0, 1]`.
    pub sup_labels: &'a [T],
    /// Inverse temperature `α > 0`.
    pub alpha: f32,
    /// Weight `w_pre` of the intermediate-depth reconstruction loss (0 skips it).
    pub prefix_weight: f64,
    /// Weight `w_idx` of the index loss (0: no gradient from it; `L_idx` is still reported).
    pub index_weight: f64,
    /// Weight `w_bal` of the balance regulariser (0 skips it).
    pub balance_weight: f64,
    /// Balance window of the previous batches: per level the `K_l` weight sums, and the
    /// number of rows they cover (`None`: the window is empty).
    pub window: Option<(&'a [Vec<f64>], usize)>,
}

/// The loss terms of a batch (unweighted) and the total (weighted).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Losses {
    /// `L_rec`, mean squared reconstruction error per row.
    pub recon: f64,
    /// `L_pre`, squared error of the intermediate depths per row (0 when `L = 1`).
    pub prefix: f64,
    /// `L_idx`, mean log loss per triple (0 without triples).
    pub index: f64,
    /// `L_bal`, summed over levels (`1/K` per level is perfect balance, 1 collapse).
    pub balance: f64,
    /// `L_rec + w_pre·L_pre + w_idx·L_idx + w_bal·L_bal`.
    pub total: f64,
}

/// Loss, gradients and the batch's balance statistics.
#[derive(Clone, Debug)]
pub struct Step<T> {
    /// The loss terms.
    pub losses: Losses,
    /// Per level, `K_l × d` gradients `∂L/∂C_l`.
    pub grads: Vec<Vec<T>>,
    /// Per level, the `K_l` sums `Σ_{i<B_r} a_l[i,k]` of this batch (for the window).
    pub weight_sums: Vec<Vec<f64>>,
}

/// `log(1 + e^s)`, stable.
fn softplus(s: f64) -> f64 {
    s.max(0.0) + (-s.abs()).exp().ln_1p()
}

/// `1 / (1 + e^{-s})`, stable.
fn sigmoid(s: f64) -> f64 {
    if s >= 0.0 {
        1.0 / (1.0 + (-s).exp())
    } else {
        let e = s.exp();
        e / (1.0 + e)
    }
}

/// Loss and gradient of `batch` for the codebooks `levels` (each `K_l × d`, row-major).
pub fn loss_and_grad<T: Real>(
    engine: &dyn SoftAssign<T>,
    levels: &[Vec<T>],
    d: usize,
    batch: &Batch<'_, T>,
) -> Result<Step<T>> {
    if d == 0 || levels.is_empty() {
        return Err(Error::shape("learn: needs d ≥ 1 and at least one level"));
    }
    if batch.recon.len() % d != 0 || batch.sup_items.len() % d != 0 {
        return Err(Error::shape(format!(
            "learn: batch rows are not multiples of d = {d}"
        )));
    }
    let nr = batch.recon.len() / d;
    let ns = batch.sup_items.len() / d;
    if batch.sup_users.len() != ns * d || batch.sup_labels.len() != ns {
        return Err(Error::shape(format!(
            "learn: {ns} supervised items need {ns} x {d} users and {ns} labels"
        )));
    }
    let n = nr + ns;
    let norm_sets: Vec<Vec<T>> = levels.iter().map(|c| norms(c, d)).collect();
    if let Some((prev, _)) = batch.window {
        let want: Vec<usize> = norm_sets.iter().map(Vec::len).collect();
        let got: Vec<usize> = prev.iter().map(Vec::len).collect();
        if got != want {
            return Err(Error::shape(format!(
                "learn: the balance window holds weight sums of sizes {got:?}, expected one per \
                 codeword of each level, {want:?}"
            )));
        }
    }
    let level = |l: usize| SoftLevel {
        words: &levels[l],
        norms: &norm_sets[l],
        dim: d,
    };
    // Forward: residual chain over the stacked rows [recon; supervised].
    let mut res: Vec<Vec<T>> = Vec::with_capacity(levels.len() + 1);
    let mut x = Vec::with_capacity(n * d);
    x.extend_from_slice(batch.recon);
    x.extend_from_slice(batch.sup_items);
    res.push(x);
    let mut weights = Vec::with_capacity(levels.len());
    for l in 0..levels.len() {
        let f = engine.soft_forward(&res[l], level(l), batch.alpha)?;
        let next: Vec<T> = res[l].iter().zip(&f.output).map(|(&r, &c)| r - c).collect();
        res.push(next);
        weights.push(f.weights);
    }
    let r_last = &res[levels.len()];
    let mut losses = Losses::default();
    let mut g = vec![T::ZERO; n * d];
    // Reconstruction.
    if nr > 0 {
        let mut sum = 0.0f64;
        for (gi, &ri) in g[..nr * d].iter_mut().zip(&r_last[..nr * d]) {
            sum += ri.to_f64() * ri.to_f64();
            *gi = T::from_f64(2.0 * ri.to_f64() / nr as f64);
        }
        losses.recon = sum / nr as f64;
    }
    // Supervised index loss (reported even at weight 0, e.g. the first step of a warm-up).
    if ns > 0 {
        let mut sum = 0.0f64;
        for j in 0..ns {
            let xs = &batch.sup_items[j * d..(j + 1) * d];
            let rs = &r_last[(nr + j) * d..(nr + j + 1) * d];
            let u = &batch.sup_users[j * d..(j + 1) * d];
            let s: f64 = (0..d)
                .map(|e| u[e].to_f64() * (xs[e].to_f64() - rs[e].to_f64()))
                .sum();
            let y = batch.sup_labels[j].to_f64();
            sum += softplus(s) - y * s;
            let gs = batch.index_weight * (sigmoid(s) - y) / ns as f64;
            for (ge, &ue) in g[(nr + j) * d..(nr + j + 1) * d].iter_mut().zip(u) {
                *ge = T::from_f64(-gs * ue.to_f64());
            }
        }
        losses.index = sum / ns as f64;
    }
    // Balance: per level, ∂L_bal/∂a for the reconstruction rows.
    let mut weight_sums = Vec::with_capacity(levels.len());
    let mut grad_w: Vec<Option<Vec<T>>> = Vec::with_capacity(levels.len());
    for (l, w) in weights.iter().enumerate() {
        let kk = norm_sets[l].len();
        let mut sums = vec![0.0f64; kk];
        for row in w[..nr * kk].chunks_exact(kk) {
            for (s, &a) in sums.iter_mut().zip(row) {
                *s += a.to_f64();
            }
        }
        if batch.balance_weight != 0.0 && nr > 0 {
            let (prev, prev_n) = match batch.window {
                Some((p, c)) => (Some(&p[l]), c),
                None => (None, 0),
            };
            let total = (prev_n + nr) as f64;
            let p: Vec<f64> = (0..kk)
                .map(|k| (prev.map_or(0.0, |p| p[k]) + sums[k]) / total)
                .collect();
            losses.balance += p.iter().map(|v| v * v).sum::<f64>();
            let gk: Vec<T> = p
                .iter()
                .map(|&pk| T::from_f64(batch.balance_weight * 2.0 * pk / total))
                .collect();
            let mut gw = vec![T::ZERO; n * kk];
            for row in gw[..nr * kk].chunks_exact_mut(kk) {
                row.copy_from_slice(&gk);
            }
            grad_w.push(Some(gw));
        } else {
            grad_w.push(None);
        }
        weight_sums.push(sums);
    }
    if nr > 0 {
        losses.prefix = res[1..levels.len()]
            .iter()
            .map(|r| r[..nr * d].iter().map(|v| v.to_f64().powi(2)).sum::<f64>())
            .sum::<f64>()
            / nr as f64;
    }
    losses.total = losses.recon
        + batch.prefix_weight * losses.prefix
        + batch.index_weight * losses.index
        + batch.balance_weight * losses.balance;
    // Backward, last level first.
    let mut grads = vec![Vec::new(); levels.len()];
    for l in (0..levels.len()).rev() {
        if l + 1 < levels.len() && batch.prefix_weight != 0.0 {
            let scale = 2.0 * batch.prefix_weight / nr as f64;
            for (gi, &ri) in g[..nr * d].iter_mut().zip(&res[l + 1][..nr * d]) {
                *gi = T::from_f64(gi.to_f64() + scale * ri.to_f64());
            }
        }
        let gout: Vec<T> = g.iter().map(|&v| -v).collect();
        let up = Upstream {
            weights: &weights[l],
            grad_output: &gout,
            grad_weights: grad_w[l].as_deref(),
        };
        let b = engine.soft_backward(&res[l], level(l), batch.alpha, up)?;
        for (gi, &bi) in g.iter_mut().zip(&b.grad_input) {
            *gi += bi;
        }
        grads[l] = b.grad_codebook;
    }
    Ok(Step {
        losses,
        grads,
        weight_sums,
    })
}
