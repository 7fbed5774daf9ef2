//! Likelihood estimators for masked-diffusion policies (spec §1.2–1.4, §2).
//!
//! | estimator | passes | score of completion token `k` |
//! |---|---|---|
//! | [`Coupled`] (default) | `2λ + 1` | `(lp0 + Σ_j [U<t_j ? lp1_j/t_j : lp2_j/(1−t_j)]) / (λ+1)` |
//! | [`Decoupled`] (reconstruction) | `2λ + 1` | same weights, independent masks |
//! | [`D1`] | 1 | `lp` with the completion fully masked and prompt tokens masked w.p. `p` |
//! | [`FullMask`] | 1 | `lp0` (d1 with `p = 0`) |
//!
//! Masks come from [`MaskSeed`]-keyed ChaCha streams ([`masks`]); the output head and
//! log-softmax run only on the positions a view scores, fused so that training keeps no
//! vocabulary-wide logits ([`head`]).

pub mod base;
pub mod coupled;
pub mod d1;
pub mod decoupled;
pub mod elbo;
pub mod full_mask;
pub mod head;
pub mod masks;

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

pub use base::{
    completion_log_probs, score_views, LikelihoodEstimator, ScoreBatch, Scores, ScoringPath, View,
    DEFAULT_MAX_LOGIT_BYTES,
};
pub use coupled::{Coupled, PairOptions};
pub use d1::D1;
pub use decoupled::Decoupled;
pub use elbo::mc_elbo;
pub use full_mask::FullMask;
pub use head::{target_log_probs, HeadLayout, HeadWeight};
pub use masks::MaskSeed;

use crate::model::DiffusionLm;
use crate::Result;

/// Which estimator the trainer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EstimatorKind {
    /// Coupled sampling (DiffuCoder).
    #[default]
    Coupled,
    /// Independent masks with the coupled weights (a reconstruction).
    Decoupled,
    /// d1 / diffu-GRPO: prompt masked w.p. `prompt_mask_prob`, completion fully masked.
    D1,
    /// d1 with `p = 0`.
    FullMask,
}

impl EstimatorKind {
    /// All kinds, in the order of the paper's comparison.
    pub const ALL: [EstimatorKind; 4] = [Self::Coupled, Self::Decoupled, Self::D1, Self::FullMask];

    /// The config name (`coupled`, `decoupled`, `d1`, `full_mask`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Coupled => "coupled",
            Self::Decoupled => "decoupled",
            Self::D1 => "d1",
            Self::FullMask => "full_mask",
        }
    }
}

impl std::str::FromStr for EstimatorKind {
    type Err = crate::Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|k| k.name()).collect();
                crate::Error::config(
                    "estimator.kind",
                    format!("unknown estimator `{s}` ({})", names.join(", ")),
                )
            })
    }
}

/// `[estimator]` section of the training config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EstimatorConfig {
    /// `coupled` | `decoupled` | `d1` | `full_mask`.
    pub kind: EstimatorKind,
    /// λ: complementary (or independent) mask pairs per iteration (coupled/decoupled).
    pub pairs: usize,
    /// Include the full-mask pass v0 (coupled/decoupled; released: true).
    pub full_mask_pass: bool,
    /// Mask-ratio range `t ~ U(t_min, t_max)` (released: 0.2, 0.8).
    pub t_min: f32,
    pub t_max: f32,
    /// d1: probability of masking each prompt token (d1's train.yaml: 0.15).
    pub prompt_mask_prob: f32,
    /// Cap on f32 logits materialised at once when gathering target log-probs, in MiB.
    pub max_logit_mib: usize,
    /// `lean` (default): head and log-softmax only on scored positions, no logits kept for
    /// backward. `full`: the reference path that keeps every view's log-probs (for comparison).
    pub scoring: ScoringPath,
}

impl Default for EstimatorConfig {
    fn default() -> Self {
        let pair = PairOptions::default();
        Self {
            kind: EstimatorKind::Coupled,
            pairs: pair.pairs,
            full_mask_pass: pair.full_mask_pass,
            t_min: pair.t_min,
            t_max: pair.t_max,
            prompt_mask_prob: 0.15,
            max_logit_mib: DEFAULT_MAX_LOGIT_BYTES >> 20,
            scoring: ScoringPath::Lean,
        }
    }
}

impl EstimatorConfig {
    /// Build the configured estimator (validating its options).
    pub fn build(&self) -> Result<Estimator> {
        let bytes = self.max_logit_mib.max(1) << 20;
        let pair = PairOptions {
            pairs: self.pairs,
            full_mask_pass: self.full_mask_pass,
            t_min: self.t_min,
            t_max: self.t_max,
        };
        let path = self.scoring;
        Ok(match self.kind {
            EstimatorKind::Coupled => Estimator::Coupled(Coupled {
                path,
                ..Coupled::new(pair, bytes)?
            }),
            EstimatorKind::Decoupled => Estimator::Decoupled(Decoupled {
                path,
                ..Decoupled::new(pair, bytes)?
            }),
            EstimatorKind::D1 => Estimator::D1(D1 {
                path,
                ..D1::new(self.prompt_mask_prob, bytes)?
            }),
            EstimatorKind::FullMask => Estimator::FullMask(FullMask {
                max_logit_bytes: bytes,
                path,
            }),
        })
    }
}

/// Any of the four estimators (static dispatch; the trait has a generic method).
#[derive(Debug, Clone, PartialEq)]
pub enum Estimator {
    Coupled(Coupled),
    Decoupled(Decoupled),
    D1(D1),
    FullMask(FullMask),
}

impl LikelihoodEstimator for Estimator {
    fn name(&self) -> &'static str {
        match self {
            Estimator::Coupled(e) => e.name(),
            Estimator::Decoupled(e) => e.name(),
            Estimator::D1(e) => e.name(),
            Estimator::FullMask(e) => e.name(),
        }
    }

    fn passes_per_sequence(&self) -> usize {
        match self {
            Estimator::Coupled(e) => e.passes_per_sequence(),
            Estimator::Decoupled(e) => e.passes_per_sequence(),
            Estimator::D1(e) => e.passes_per_sequence(),
            Estimator::FullMask(e) => e.passes_per_sequence(),
        }
    }

    fn score<B: Backend>(
        &self,
        model: &DiffusionLm<B>,
        batch: &ScoreBatch,
        seed: MaskSeed,
    ) -> Result<Scores<B>> {
        match self {
            Estimator::Coupled(e) => e.score(model, batch, seed),
            Estimator::Decoupled(e) => e.score(model, batch, seed),
            Estimator::D1(e) => e.score(model, batch, seed),
            Estimator::FullMask(e) => e.score(model, batch, seed),
        }
    }
}

#[cfg(test)]
mod lean_tests;
#[cfg(test)]
mod tests;
