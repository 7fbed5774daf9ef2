//! The clipped-surrogate GRPO loss with a k3 KL penalty (spec §1.5).

use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Loss hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossConfig {
    /// Lower clip `1 − ε_low` of the ratio.
    pub epsilon_low: f32,
    /// Upper clip `1 + ε_high` of the ratio.
    pub epsilon_high: f32,
    /// KL coefficient β (0 disables the reference model).
    pub beta: f32,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            epsilon_low: 0.5,
            epsilon_high: 0.5,
            beta: 0.01,
        }
    }
}

/// Token-level sums of one micro-batch, so statistics aggregate exactly across micro-batches
/// and iterations. Divide by `tokens` for TRL's masked means.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LossSums {
    /// Completion-mask tokens.
    pub tokens: f64,
    /// Σ k3 KL over masked tokens (0 when β = 0 and no reference is given).
    pub kl: f64,
    /// Tokens with ratio < 1 − ε_low and a negative advantage.
    pub clipped_low: f64,
    /// Tokens with ratio > 1 + ε_high and a positive advantage.
    pub clipped_high: f64,
    /// Σ ratio over masked tokens.
    pub ratio: f64,
    /// Σ unnormalised per-token loss over masked tokens.
    pub loss: f64,
}

impl LossSums {
    pub fn add(&mut self, other: &LossSums) {
        self.tokens += other.tokens;
        self.kl += other.kl;
        self.clipped_low += other.clipped_low;
        self.clipped_high += other.clipped_high;
        self.ratio += other.ratio;
        self.loss += other.loss;
    }

    /// The sums in a fixed order (tokens, kl, clipped_low, clipped_high, ratio, loss), the
    /// order [`Self::from_values`] reads and [`grpo_loss`] computes them in.
    pub fn values(&self) -> [f64; 6] {
        [
            self.tokens,
            self.kl,
            self.clipped_low,
            self.clipped_high,
            self.ratio,
            self.loss,
        ]
    }

    /// Sums from the first six of `v`, in [`Self::values`]' order.
    pub fn from_values(v: &[f32]) -> Self {
        Self {
            tokens: v[0] as f64,
            kl: v[1] as f64,
            clipped_low: v[2] as f64,
            clipped_high: v[3] as f64,
            ratio: v[4] as f64,
            loss: v[5] as f64,
        }
    }

    fn mean(&self, x: f64) -> f32 {
        (x / self.tokens.max(1.0)) as f32
    }

    /// `kl`: masked-mean k3 KL.
    pub fn kl_mean(&self) -> f32 {
        self.mean(self.kl)
    }
    /// `clip_ratio/low_mean`.
    pub fn clip_low_mean(&self) -> f32 {
        self.mean(self.clipped_low)
    }
    /// `clip_ratio/high_mean`.
    pub fn clip_high_mean(&self) -> f32 {
        self.mean(self.clipped_high)
    }
    /// `clip_ratio/region_mean` (low and high are disjoint).
    pub fn clip_region_mean(&self) -> f32 {
        self.mean(self.clipped_low + self.clipped_high)
    }
    /// Masked-mean importance ratio.
    pub fn ratio_mean(&self) -> f32 {
        self.mean(self.ratio)
    }
}

/// The GRPO loss of one micro-batch:
///
/// ```text
/// ρ = exp(s_θ − s_old)
/// ℓ = −min(ρ·A, clip(ρ, 1−ε_low, 1+ε_high)·A) + β·(exp(s_ref − s_θ) − (s_ref − s_θ) − 1)
/// loss = Σ ℓ·cm / normalizer
/// ```
///
/// `normalizer` is the completion-mask token count of the whole gradient-accumulation chunk
/// (times the number of chunks), so splitting a chunk into micro-batches for memory leaves the
/// gradient unchanged. Returns the scalar loss (with the graph of `current`) and host-side sums.
///
/// # Shapes
/// - current, old, reference, completion_mask: `[rows, K]` (mask as 0/1 floats)
/// - advantages: `[rows]`
/// - returns loss `[1]`
pub fn grpo_loss<B: Backend>(
    current: Tensor<B, 2>,
    old: Tensor<B, 2>,
    reference: Option<Tensor<B, 2>>,
    advantages: Tensor<B, 1>,
    completion_mask: Tensor<B, 2>,
    config: &LossConfig,
    normalizer: f32,
) -> Result<(Tensor<B, 1>, LossSums)> {
    let [rows, k] = current.dims();
    if old.dims() != [rows, k] || completion_mask.dims() != [rows, k] || advantages.dims() != [rows]
    {
        return Err(Error::invalid(
            "loss inputs",
            "scores, old scores, mask and advantages disagree in shape",
        ));
    }
    if normalizer.is_nan() || normalizer <= 0.0 {
        return Err(Error::invalid("normalizer", "must be positive"));
    }
    let adv = advantages.unsqueeze_dim::<2>(1); // [rows, 1]
    let ratio = (current.clone() - old).exp();
    let clipped = ratio
        .clone()
        .clamp(1.0 - config.epsilon_low, 1.0 + config.epsilon_high);
    let surrogate = (ratio.clone() * adv.clone()).min_pair(clipped * adv.clone());
    let mut per_token = surrogate.neg();
    let mut kl_tensor = None;
    if config.beta != 0.0 {
        let reference =
            reference.ok_or_else(|| Error::invalid("reference", "β ≠ 0 needs reference scores"))?;
        if reference.dims() != [rows, k] {
            return Err(Error::invalid(
                "reference",
                "reference scores do not match [rows, K]",
            ));
        }
        let delta = reference - current.clone();
        let kl = delta.clone().exp() - delta - 1.0;
        per_token = per_token + kl.clone() * config.beta;
        kl_tensor = Some(kl);
    }
    let loss = (per_token.clone() * completion_mask.clone()).sum() / normalizer;

    // Statistics on detached values (one host read).
    let ratio_d = ratio.detach();
    let adv_b = adv.detach().expand([rows, k]);
    let low = ratio_d.clone().lower_elem(1.0 - config.epsilon_low).float()
        * adv_b.clone().lower_elem(0.0).float();
    let high = ratio_d
        .clone()
        .greater_elem(1.0 + config.epsilon_high)
        .float()
        * adv_b.greater_elem(0.0).float();
    let m = completion_mask;
    let kl_sum = match kl_tensor {
        Some(kl) => (kl.detach() * m.clone()).sum(),
        None => Tensor::zeros([1], &m.device()),
    };
    let parts = Tensor::cat(
        vec![
            m.clone().sum(),
            kl_sum,
            (low * m.clone()).sum(),
            (high * m.clone()).sum(),
            (ratio_d * m.clone()).sum(),
            (per_token.detach() * m).sum(),
        ],
        0,
    );
    let v = parts
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("f32 stats");
    Ok((loss, LossSums::from_values(&v)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Cpu, CpuAutodiff};

    fn t2(v: &[[f32; 3]; 2]) -> Tensor<Cpu, 2> {
        Tensor::from_floats(*v, &Default::default())
    }

    #[test]
    fn ratio_one_means_no_clipping_and_plain_policy_gradient_loss() {
        let s = t2(&[[-1.0, -2.0, -3.0], [-0.5, -0.1, -4.0]]);
        let adv = Tensor::<Cpu, 1>::from_floats([1.0, -2.0], &Default::default());
        let mask = t2(&[[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]);
        let cfg = LossConfig::default();
        let (loss, sums) = grpo_loss(s.clone(), s.clone(), Some(s), adv, mask, &cfg, 5.0).unwrap();
        assert_eq!(sums.clipped_low + sums.clipped_high, 0.0);
        assert_eq!(sums.kl, 0.0);
        assert!((sums.ratio_mean() - 1.0).abs() < 1e-7);
        // −(2·1 + 3·(−2)) / 5 = 0.8
        assert!((loss.into_scalar() - 0.8).abs() < 1e-6);
    }

    #[test]
    fn clipping_regions_and_kl() {
        // ratio = e^1 ≈ 2.72 (> 1.5) and e^-1 ≈ 0.37 (< 0.5).
        let old = t2(&[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]);
        let cur = t2(&[[1.0, -1.0, 0.0], [1.0, -1.0, 0.0]]);
        let adv = Tensor::<Cpu, 1>::from_floats([1.0, -1.0], &Default::default());
        let mask = t2(&[[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]);
        let cfg = LossConfig {
            beta: 0.5,
            ..Default::default()
        };
        let (_, sums) = grpo_loss(cur, old.clone(), Some(old), adv, mask, &cfg, 6.0).unwrap();
        // High clip: row 0 token 0 (A > 0); low clip: row 1 token 1 (A < 0).
        assert_eq!(sums.clipped_high, 1.0);
        assert_eq!(sums.clipped_low, 1.0);
        let k3 = |d: f64| d.exp() - d - 1.0;
        let expected = 2.0 * (k3(-1.0) + k3(1.0));
        assert!((sums.kl - expected).abs() < 1e-5);
    }

    #[test]
    fn clipped_tokens_get_no_gradient() {
        let device = Default::default();
        let cur = Tensor::<CpuAutodiff, 2>::from_floats([[1.0, 0.1]], &device).require_grad();
        let old = Tensor::<CpuAutodiff, 2>::from_floats([[0.0, 0.0]], &device);
        let adv = Tensor::<CpuAutodiff, 1>::from_floats([1.0], &device);
        let mask = Tensor::<CpuAutodiff, 2>::from_floats([[1.0, 1.0]], &device);
        let cfg = LossConfig {
            beta: 0.0,
            ..Default::default()
        };
        let (loss, _) = grpo_loss(cur.clone(), old, None, adv, mask, &cfg, 2.0).unwrap();
        let grads = loss.backward();
        let g = cur
            .grad(&grads)
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert_eq!(g[0], 0.0, "ratio e > 1.5 with A > 0 is clipped");
        // d/ds (−e^s · 1 / 2) at s = 0.1
        assert!((g[1] + (0.1f32).exp() / 2.0).abs() < 1e-5);
    }
}
