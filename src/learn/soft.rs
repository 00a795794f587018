//! The soft assignment of one level (DESIGN §1, §6) and its backward pass: the operation the
//! learner runs on every batch, behind the [`SoftAssign`] trait, implemented by [`Reference`]
//! (the plain generic reference, every [`Real`]) and by [`KernelBackend`] (f32, the kernels of
//! `kernels/learn.cu`).
//!
//! ## Forward (one row `r`, `d` values; codebook `C`, `K × d`; norms `n_k = ||C[k]||²`)
//!
//! ```text
//! z_k = 2<r, C[k]> - n_k            logit (DESIGN §1, without the constant ||r||²)
//! a_k = softmax_k(α·z_k)            soft weight (computed in f64, max-subtracted)
//! c̄   = Σ_k a_k C[k]                soft output
//! ```
//!
//! ## Backward
//!
//! Given `g_c̄ = ∂L/∂c̄` (`d`) and an optional extra `g^a_k = ∂L/∂a_k` from terms that read the
//! weights directly (the balance regulariser):
//!
//! ```text
//! ∂L/∂a_k  = <g_c̄, C[k]> + g^a_k                           (c̄ is linear in a)
//! g_z,k    = α·a_k·(∂L/∂a_k - Σ_j a_j ∂L/∂a_j)              (softmax Jacobian α(diag a - a aᵀ))
//! ∂L/∂r    = Σ_k g_z,k ∂z_k/∂r = 2 Σ_k g_z,k C[k]
//! ∂L/∂C[k] = a_k g_c̄ + g_z,k ∂z_k/∂C[k] = a_k g_c̄ + 2 g_z,k (r - C[k])   (summed over rows)
//! ```
//!
//! The norms are a function of `C` (`∂n_k/∂C[k] = 2C[k]`), which gives the `-C[k]` term;
//! callers pass norms computed from the same codebook.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::KernelBackend;
use crate::reference::Reference;

/// The floating-point types the generic reference runs in: `f32` (training, agreement with
/// the kernels) and `f64` (finite-difference checks).
pub trait Real:
    Copy
    + Send
    + Sync
    + Default
    + PartialOrd
    + std::fmt::Debug
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
    + std::ops::AddAssign
    + std::ops::SubAssign
    + 'static
{
    /// Zero.
    const ZERO: Self;
    /// `v` rounded to `Self`.
    fn from_f64(v: f64) -> Self;
    /// `self` widened to f64.
    fn to_f64(self) -> f64;
    /// `self` as an f32 (rounded).
    fn to_f32(self) -> f32 {
        self.to_f64() as f32
    }
    /// `v` as `Self`.
    fn from_f32(v: f32) -> Self {
        Self::from_f64(v as f64)
    }
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
}

/// `<a, b>` with eight partial sums in `T` (vectorisable), combined in f64 in lane order;
/// for f32 this is the reference's `matrix::dot` and the kernels' `rq_dot`.
pub fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let d8 = a.len() / 8 * 8;
    let mut acc = [T::ZERO; 8];
    for (ca, cb) in a[..d8].chunks_exact(8).zip(b[..d8].chunks_exact(8)) {
        for j in 0..8 {
            acc[j] += ca[j] * cb[j];
        }
    }
    let tail: f64 = a[d8..]
        .iter()
        .zip(&b[d8..])
        .map(|(&x, &y)| x.to_f64() * y.to_f64())
        .sum();
    let mut s = 0.0f64;
    for v in acc {
        s += v.to_f64();
    }
    T::from_f64(s + tail)
}

/// `||C[k]||²` of every row of `cb` (`K × d`), accumulated in f64.
pub fn norms<T: Real>(cb: &[T], d: usize) -> Vec<T> {
    cb.chunks_exact(d.max(1))
        .map(|w| T::from_f64(w.iter().map(|&v| v.to_f64() * v.to_f64()).sum()))
        .collect()
}

/// One level's codebook as the soft assignment reads it.
#[derive(Clone, Copy, Debug)]
pub struct SoftLevel<'a, T> {
    /// `K × d` codewords, row-major.
    pub words: &'a [T],
    /// `K` squared norms `||C[k]||²` (of `words`).
    pub norms: &'a [T],
    /// Dimension `d`.
    pub dim: usize,
}

impl<T> SoftLevel<'_, T> {
    /// Codewords `K`.
    pub fn codes(&self) -> usize {
        self.norms.len()
    }
}

/// Output of the forward pass over `n` rows.
#[derive(Clone, Debug, PartialEq)]
pub struct SoftForward<T> {
    /// `n × K` weights `a = softmax(α·z)`.
    pub weights: Vec<T>,
    /// `n × d` soft outputs `c̄ = Σ_k a_k C[k]`.
    pub output: Vec<T>,
}

/// Output of the backward pass over `n` rows.
#[derive(Clone, Debug, PartialEq)]
pub struct SoftBackward<T> {
    /// `n × d` `∂L/∂r = 2 Σ_k g_z,k C[k]` (only the path through the logits; a caller
    /// chaining residuals adds its own pass-through term).
    pub grad_input: Vec<T>,
    /// `K × d` `∂L/∂C = Σ_rows a_k g_c̄ + 2 g_z,k (r - C[k])`.
    pub grad_codebook: Vec<T>,
}

/// What the backward pass reads besides the rows.
#[derive(Clone, Copy, Debug)]
pub struct Upstream<'a, T> {
    /// `n × K` weights from the forward pass.
    pub weights: &'a [T],
    /// `n × d` `∂L/∂c̄`.
    pub grad_output: &'a [T],
    /// Optional `n × K` `∂L/∂a` of terms reading the weights directly.
    pub grad_weights: Option<&'a [T]>,
}

/// The soft assignment and its backward pass on some backend.
pub trait SoftAssign<T: Real>: Send + Sync {
    /// Short name of the implementation (`reference`, `emu`, `cuda`).
    fn soft_name(&self) -> &'static str;

    /// Forward pass of `rows` (`n × d`) over `level` at inverse temperature `alpha`.
    fn soft_forward(
        &self,
        rows: &[T],
        level: SoftLevel<'_, T>,
        alpha: f32,
    ) -> Result<SoftForward<T>>;

    /// Backward pass: `rows` as in the forward pass, `up` its weights and the gradients
    /// flowing in.
    fn soft_backward(
        &self,
        rows: &[T],
        level: SoftLevel<'_, T>,
        alpha: f32,
        up: Upstream<'_, T>,
    ) -> Result<SoftBackward<T>>;
}

/// Checks the shapes of a forward/backward call; returns `n`.
pub(crate) fn check_shapes<T>(
    rows: &[T],
    level: &SoftLevel<'_, T>,
    alpha: f32,
    extra: &[(&str, usize, usize)],
) -> Result<usize> {
    let (d, kk) = (level.dim, level.codes());
    if d == 0 || kk == 0 {
        return Err(Error::shape(format!(
            "soft assignment: codebook is {kk} x {d}, needs K ≥ 1 and d ≥ 1"
        )));
    }
    if kk.checked_mul(d) != Some(level.words.len()) {
        return Err(Error::shape(format!(
            "soft assignment: codebook has {} values, expected K x d = {kk} x {d}",
            level.words.len()
        )));
    }
    if rows.len() % d != 0 {
        return Err(Error::shape(format!(
            "soft assignment: rows have {} values, not a multiple of d = {d}",
            rows.len()
        )));
    }
    if !(alpha.is_finite() && alpha > 0.0) {
        return Err(Error::param(format!(
            "soft assignment: alpha = {alpha} must be finite and > 0"
        )));
    }
    let n = rows.len() / d;
    for &(name, len, cols) in extra {
        if n.checked_mul(cols) != Some(len) {
            return Err(Error::shape(format!(
                "soft assignment: {name} has {len} values, expected {n} x {cols}"
            )));
        }
    }
    Ok(n)
}

/// Checks the shapes of a backward call; returns `n`.
pub(crate) fn check_backward_shapes<T>(
    rows: &[T],
    level: &SoftLevel<'_, T>,
    alpha: f32,
    up: &Upstream<'_, T>,
) -> Result<usize> {
    let (d, kk) = (level.dim, level.codes());
    let mut extra = vec![
        ("weights", up.weights.len(), kk),
        ("grad_output", up.grad_output.len(), d),
    ];
    if let Some(g) = up.grad_weights {
        extra.push(("grad_weights", g.len(), kk));
    }
    check_shapes(rows, level, alpha, &extra)
}

impl<T: Real> SoftAssign<T> for Reference {
    fn soft_name(&self) -> &'static str {
        "reference"
    }
    /// The reference forward pass; rows in parallel.
    fn soft_forward(
        &self,
        rows: &[T],
        level: SoftLevel<'_, T>,
        alpha: f32,
    ) -> Result<SoftForward<T>> {
        let n = check_shapes(rows, &level, alpha, &[])?;
        let (d, kk) = (level.dim, level.codes());
        let mut weights = vec![T::ZERO; n * kk];
        let mut output = vec![T::ZERO; n * d];
        let a = alpha as f64;
        weights
            .par_chunks_mut(kk)
            .zip(output.par_chunks_mut(d))
            .zip(rows.par_chunks(d))
            .for_each(|((w, out), r)| {
                let z: Vec<f64> = (0..kk)
                    .map(|k| {
                        let two = T::from_f64(2.0);
                        (two * dot(r, &level.words[k * d..(k + 1) * d]) - level.norms[k]).to_f64()
                    })
                    .collect();
                let m = z.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(a * v));
                let e: Vec<f64> = z.iter().map(|&v| (a * v - m).exp()).collect();
                let s: f64 = e.iter().sum();
                for (wk, ek) in w.iter_mut().zip(&e) {
                    *wk = T::from_f64(ek / s);
                }
                for (k, &wk) in w.iter().enumerate() {
                    if wk == T::ZERO {
                        continue;
                    }
                    for (o, &c) in out.iter_mut().zip(&level.words[k * d..(k + 1) * d]) {
                        *o += wk * c;
                    }
                }
            });
        Ok(SoftForward { weights, output })
    }
    /// The reference backward pass. `g_z` per row is computed in parallel over
    /// rows; `∂L/∂C[k]` sums its rows in row order, in parallel over codewords (the kernels'
    /// order). Terms with `a_k = 0` and `g_z,k = 0` are skipped (they add exact zeros).
    fn soft_backward(
        &self,
        rows: &[T],
        level: SoftLevel<'_, T>,
        alpha: f32,
        up: Upstream<'_, T>,
    ) -> Result<SoftBackward<T>> {
        let n = check_backward_shapes(rows, &level, alpha, &up)?;
        let Upstream {
            weights,
            grad_output,
            grad_weights,
        } = up;
        let (d, kk) = (level.dim, level.codes());
        let al = T::from_f64(alpha as f64);
        let two = T::from_f64(2.0);
        // Per row: g_z (n × K) and ∂L/∂r (n × d).
        let mut gz = vec![T::ZERO; n * kk];
        let mut grad_input = vec![T::ZERO; n * d];
        gz.par_chunks_mut(kk)
            .zip(grad_input.par_chunks_mut(d))
            .enumerate()
            .for_each(|(i, (gzi, gri))| {
                let a = &weights[i * kk..(i + 1) * kk];
                let go = &grad_output[i * d..(i + 1) * d];
                let mut s = 0.0f64;
                for k in 0..kk {
                    let mut ga = dot(go, &level.words[k * d..(k + 1) * d]);
                    if let Some(g) = grad_weights {
                        ga += g[i * kk + k];
                    }
                    gzi[k] = ga;
                    s += a[k].to_f64() * ga.to_f64();
                }
                let s = T::from_f64(s);
                for k in 0..kk {
                    gzi[k] = al * a[k] * (gzi[k] - s);
                }
                for (&z, w) in gzi.iter().zip(level.words.chunks_exact(d)) {
                    if z == T::ZERO {
                        continue;
                    }
                    let c = two * z;
                    for (o, &w) in gri.iter_mut().zip(w) {
                        *o += c * w;
                    }
                }
            });
        // Per codeword: Σ_i a_ik g_c̄_i + 2 g_z,ik (r_i - C[k]), rows in order.
        let mut grad_codebook = vec![T::ZERO; kk * d];
        grad_codebook
            .par_chunks_mut(d)
            .enumerate()
            .for_each(|(k, g)| {
                let ck = &level.words[k * d..(k + 1) * d];
                for i in 0..n {
                    let (a, z) = (weights[i * kk + k], gz[i * kk + k]);
                    if a == T::ZERO && z == T::ZERO {
                        continue;
                    }
                    let z2 = two * z;
                    let r = &rows[i * d..(i + 1) * d];
                    let go = &grad_output[i * d..(i + 1) * d];
                    for e in 0..d {
                        g[e] += a * go[e] + z2 * (r[e] - ck[e]);
                    }
                }
            });
        Ok(SoftBackward {
            grad_input,
            grad_codebook,
        })
    }
}

impl<D: crate::device::Device> SoftAssign<f32> for KernelBackend<D> {
    fn soft_name(&self) -> &'static str {
        self.device().name()
    }
    fn soft_forward(
        &self,
        rows: &[f32],
        level: SoftLevel<'_, f32>,
        alpha: f32,
    ) -> Result<SoftForward<f32>> {
        crate::kernels::learn::soft_forward(self.device(), rows, level, alpha)
    }
    fn soft_backward(
        &self,
        rows: &[f32],
        level: SoftLevel<'_, f32>,
        alpha: f32,
        up: Upstream<'_, f32>,
    ) -> Result<SoftBackward<f32>> {
        crate::kernels::learn::soft_backward(self.device(), rows, level, alpha, up)
    }
}

/// Opens the soft-assignment implementation of backend `kind` (as [`crate::backend::open`]
/// does for [`crate::Backend`]); also says why.
pub fn open(kind: crate::backend::BackendKind) -> Result<(Box<dyn SoftAssign<f32>>, String)> {
    use crate::backend::BackendKind;
    #[cfg(feature = "cuda")]
    fn cuda() -> Result<Box<dyn SoftAssign<f32>>> {
        let dev = crate::device::cuda::CudaDevice::open()?;
        Ok(Box::new(KernelBackend::new(dev)))
    }
    #[cfg(not(feature = "cuda"))]
    fn cuda() -> Result<Box<dyn SoftAssign<f32>>> {
        Err(Error::BackendUnavailable(
            "the cuda backend is not part of this build (feature `cuda`)".into(),
        ))
    }
    #[cfg(feature = "emu")]
    fn emu() -> Result<Box<dyn SoftAssign<f32>>> {
        Ok(Box::new(KernelBackend::new(
            crate::device::emu::EmuDevice::new(),
        )))
    }
    #[cfg(not(feature = "emu"))]
    fn emu() -> Result<Box<dyn SoftAssign<f32>>> {
        Err(Error::BackendUnavailable(
            "the emu backend is not part of this build (feature `emu`)".into(),
        ))
    }
    match kind {
        BackendKind::Reference => Ok((Box::new(Reference), "reference: requested".into())),
        BackendKind::Emu => Ok((emu()?, "emu: requested".into())),
        BackendKind::Cuda => Ok((cuda()?, "cuda: requested".into())),
        BackendKind::Auto => match cuda() {
            Ok(be) => Ok((be, "cuda: a device and kernels are present".into())),
            Err(e) => Ok((
                Box::new(Reference),
                format!("reference, because cuda is unavailable ({e})"),
            )),
        },
    }
}
