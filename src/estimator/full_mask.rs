//! The "full-mask completion" baseline (spec §2.2, the paper's `P_{t=T}`): d1's estimator with
//! `p = 0`. One pass with the prompt clean and every completion token masked; the score is
//! `lp0(k)`. Deterministic: the seed is unused.

use burn::tensor::backend::Backend;

use super::base::{LikelihoodEstimator, ScoreBatch, Scores, ScoringPath};
use super::d1::full_completion_scores;
use super::masks::MaskSeed;
use crate::model::DiffusionLm;
use crate::Result;

/// One full-mask pass, no prompt masking.
#[derive(Debug, Clone, PartialEq)]
pub struct FullMask {
    pub max_logit_bytes: usize,
    pub path: ScoringPath,
}

impl LikelihoodEstimator for FullMask {
    fn name(&self) -> &'static str {
        "full_mask"
    }

    fn passes_per_sequence(&self) -> usize {
        1
    }

    fn score<B: Backend>(
        &self,
        model: &DiffusionLm<B>,
        batch: &ScoreBatch,
        seed: MaskSeed,
    ) -> Result<Scores<B>> {
        full_completion_scores(model, batch, &seed, 0.0, (self.max_logit_bytes, self.path))
    }
}
