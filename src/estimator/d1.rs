//! d1's "diffu-GRPO" one-step estimator (spec §2.1): prompt tokens masked independently with
//! probability `p` (default 0.15), the whole completion masked, one forward pass, per-token
//! log-prob with no weighting. The prompt mask is redrawn per iteration from the [`MaskSeed`].
//! Left pads are never masked. The model family's logit shift applies (none for LLaDA, as in
//! d1; one position for Dream).

use burn::tensor::backend::Backend;

use super::base::{build_view, score_views, LikelihoodEstimator, ScoreBatch, Scores, ScoringPath};
use super::masks::{bernoulli_mask, row_uniforms, MaskSeed};
use crate::model::DiffusionLm;
use crate::{Error, Result};

/// d1's estimator; [`super::FullMask`] is the same with `p = 0`.
#[derive(Debug, Clone, PartialEq)]
pub struct D1 {
    /// Probability of masking each (non-pad) prompt token.
    pub prompt_mask_prob: f32,
    pub max_logit_bytes: usize,
    pub path: ScoringPath,
}

impl D1 {
    pub fn new(prompt_mask_prob: f32, max_logit_bytes: usize) -> Result<Self> {
        if !(0.0..1.0).contains(&prompt_mask_prob) {
            return Err(Error::config(
                "estimator.prompt_mask_prob",
                format!("must be in [0, 1), got {prompt_mask_prob}"),
            ));
        }
        Ok(Self {
            prompt_mask_prob,
            max_logit_bytes,
            path: ScoringPath::Lean,
        })
    }
}

/// One full-completion-mask pass with prompt tokens masked with probability `p` (none for 0).
pub(crate) fn full_completion_scores<B: Backend>(
    model: &DiffusionLm<B>,
    batch: &ScoreBatch,
    seed: &MaskSeed,
    p: f32,
    (max_logit_bytes, path): (usize, ScoringPath),
) -> Result<Scores<B>> {
    let mask_id = model.config().mask_token()?;
    let (k, plen) = (batch.completion_len(), batch.prompt_len());
    let view = build_view(
        batch,
        mask_id,
        |r| {
            let prompt = (p > 0.0)
                .then(|| bernoulli_mask(&row_uniforms(seed, batch.row_index[r], 1, plen)[0], p));
            (prompt, vec![true; k])
        },
        |_, _| 1.0,
    );
    let per_token = score_views(model, batch, &[view], max_logit_bytes, path)?;
    Ok(Scores {
        per_token,
        forward_passes: batch.rows(),
        ratios: Vec::new(),
    })
}

impl LikelihoodEstimator for D1 {
    fn name(&self) -> &'static str {
        "d1"
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
        full_completion_scores(
            model,
            batch,
            &seed,
            self.prompt_mask_prob,
            (self.max_logit_bytes, self.path),
        )
    }
}
