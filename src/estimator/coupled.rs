//! Coupled sampling (DiffuCoder's estimator, spec §1.2): per iteration one ratio
//! `t ~ U(0.2, 0.8)`, a complementary pair of completion masks and, by default, a full-mask pass.

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::base::{
    build_view, score_views, LikelihoodEstimator, ScoreBatch, Scores, ScoringPath, View,
};
use super::masks::{complementary_pair, draw_ratios, row_uniforms, MaskSeed};
use crate::model::DiffusionLm;
use crate::{Error, Result};

/// Options shared by the coupled and decoupled estimators.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PairOptions {
    /// λ: mask pairs per iteration (each pair has its own `t`).
    pub pairs: usize,
    /// Add the full-mask pass `v0` ("t = T"), as released.
    pub full_mask_pass: bool,
    /// Lower end of the mask-ratio range (released: 0.2, to avoid extreme weights).
    pub t_min: f32,
    /// Upper end of the mask-ratio range (released: 0.8).
    pub t_max: f32,
}

impl Default for PairOptions {
    fn default() -> Self {
        Self {
            pairs: 1,
            full_mask_pass: true,
            t_min: 0.2,
            t_max: 0.8,
        }
    }
}

impl PairOptions {
    /// Check ranges: `λ ≥ 1`, `0 < t_min ≤ t_max < 1`.
    pub fn validate(&self) -> Result<()> {
        if self.pairs == 0 {
            return Err(Error::config("estimator.pairs", "must be at least 1"));
        }
        if !(self.t_min > 0.0 && self.t_min <= self.t_max && self.t_max < 1.0) {
            return Err(Error::config(
                "estimator.t_min",
                format!(
                    "need 0 < t_min ≤ t_max < 1, got [{}, {}]",
                    self.t_min, self.t_max
                ),
            ));
        }
        Ok(())
    }

    /// Passes per sequence: `2λ` plus the full-mask pass.
    pub fn passes(&self) -> usize {
        2 * self.pairs + usize::from(self.full_mask_pass)
    }

    /// Normaliser of the released combination: `λ + 1` with the full-mask pass, else `λ`.
    fn norm(&self) -> f32 {
        (self.pairs + usize::from(self.full_mask_pass)) as f32
    }
}

/// The coupled estimator. For pair `j` with ratio `t_j` and row uniforms `U`:
/// `v1` masks completion tokens with `U < t_j`, `v2` the complement, `v0` the whole completion.
/// Every completion token is masked in exactly one pass of each pair, and
///
/// `score(k) = ( lp0(k) + Σ_j [U_jk < t_j ? lp1_j(k)/t_j : lp2_j(k)/(1−t_j)] ) / (λ + 1)`,
///
/// which for λ = 1 is the released `½·(lp0 + [M ? lp1/t : lp2/(1−t)])` (paper Eq. 13). Without
/// the full-mask pass the sum is divided by λ. The score is a weighted ELBO-style quantity,
/// not a log-probability: `E[score(k)] = (lp0(k) + 2λ·ELBO(k)) / (λ+1)` where
/// `ELBO(k) = E_{t,M}[M_k·lp_t(k)/t]` (see [`super::elbo`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Coupled {
    pub options: PairOptions,
    /// Cap on f32 logits held at once (see [`super::completion_log_probs`]).
    pub max_logit_bytes: usize,
    /// How the target log-probs are computed (lean unless comparing against the reference).
    pub path: ScoringPath,
}

impl Coupled {
    pub fn new(options: PairOptions, max_logit_bytes: usize) -> Result<Self> {
        options.validate()?;
        Ok(Self {
            options,
            max_logit_bytes,
            path: ScoringPath::Lean,
        })
    }
}

/// The views of a pair-based estimator: `v0` (optional), then `v1_j`, `v2_j` per pair. With
/// `coupled`, `v2_j` is the complement of `v1_j`; otherwise an independent Bernoulli(1 − t_j)
/// draw (the decoupled reconstruction).
pub(crate) fn pair_views(
    options: &PairOptions,
    batch: &ScoreBatch,
    seed: &MaskSeed,
    mask_id: u32,
    coupled: bool,
) -> (Vec<View>, Vec<f32>) {
    let (rows, k) = (batch.rows(), batch.completion_len());
    let ratios = draw_ratios(seed, options.pairs, options.t_min, options.t_max);
    let norm = options.norm();
    // Per row: λ uniform vectors (coupled) or 2λ (decoupled: v1 and v2 drawn independently).
    let draws_per_row = if coupled {
        options.pairs
    } else {
        2 * options.pairs
    };
    let uniforms: Vec<Vec<Vec<f32>>> = (0..rows)
        .map(|r| row_uniforms(seed, batch.row_index[r], draws_per_row, k))
        .collect();
    let mut views = Vec::with_capacity(options.passes());
    if options.full_mask_pass {
        views.push(build_view(
            batch,
            mask_id,
            |_| (None, vec![true; k]),
            |_, _| 1.0 / norm,
        ));
    }
    for (j, &t) in ratios.iter().enumerate() {
        let masks: Vec<(Vec<bool>, Vec<bool>)> = uniforms
            .iter()
            .map(|u| {
                if coupled {
                    complementary_pair(&u[j], t)
                } else {
                    // Decoupled: v1 ~ Bernoulli(t), v2 ~ Bernoulli(1 − t), independent.
                    let v1 = super::masks::bernoulli_mask(&u[2 * j], t);
                    let v2 = super::masks::bernoulli_mask(&u[2 * j + 1], 1.0 - t);
                    (v1, v2)
                }
            })
            .collect();
        views.push(build_view(
            batch,
            mask_id,
            |r| (None, masks[r].0.clone()),
            |r, kk| {
                if masks[r].0[kk] {
                    1.0 / (t * norm)
                } else {
                    0.0
                }
            },
        ));
        views.push(build_view(
            batch,
            mask_id,
            |r| (None, masks[r].1.clone()),
            |r, kk| {
                if masks[r].1[kk] {
                    1.0 / ((1.0 - t) * norm)
                } else {
                    0.0
                }
            },
        ));
    }
    (views, ratios)
}

/// The `score` of a pair-based estimator: the [`pair_views`] (complementary pairs with
/// `coupled`), scored in one [`score_views`].
pub(crate) fn pair_scores<B: Backend>(
    model: &DiffusionLm<B>,
    batch: &ScoreBatch,
    seed: &MaskSeed,
    options: &PairOptions,
    coupled: bool,
    max_logit_bytes: usize,
    path: ScoringPath,
) -> Result<Scores<B>> {
    let mask_id = model.config().mask_token()?;
    let (views, ratios) = pair_views(options, batch, seed, mask_id, coupled);
    let per_token = score_views(model, batch, &views, max_logit_bytes, path)?;
    Ok(Scores {
        per_token,
        forward_passes: batch.rows() * views.len(),
        ratios,
    })
}

impl LikelihoodEstimator for Coupled {
    fn name(&self) -> &'static str {
        "coupled"
    }

    fn passes_per_sequence(&self) -> usize {
        self.options.passes()
    }

    fn score<B: Backend>(
        &self,
        model: &DiffusionLm<B>,
        batch: &ScoreBatch,
        seed: MaskSeed,
    ) -> Result<Scores<B>> {
        pair_scores(
            model,
            batch,
            &seed,
            &self.options,
            true,
            self.max_logit_bytes,
            self.path,
        )
    }
}
