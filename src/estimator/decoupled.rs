//! Decoupled sampling, the paper's "without the complementary constraint" baseline (§5,
//! Fig. 7 middle, Table 2). **A reconstruction**: the paper gives no formula and the code is
//! not released.
//!
//! We keep the passes and weights of [`super::Coupled`] and only break the coupling: for pair
//! `j`, `v1` masks each completion token with probability `t_j` and `v2` with probability
//! `1 − t_j`, from two independent uniform draws. Then
//!
//! `score(k) = ( lp0(k) + Σ_j [M1_jk·lp1_j(k)/t_j + M2_jk·lp2_j(k)/(1−t_j)] ) / (λ + 1)`.
//!
//! A token may be masked in both passes of a pair or in neither. Each weighted term is
//! unbiased on its own, so the expectation equals the coupled estimator's, which makes the two
//! directly comparable at equal forward passes; only the variance differs. (Spec §2.3 sketches
//! an alternative that averages the terms of the passes that mask a token and falls back to
//! `lp0` otherwise; it changes the expectation, so we do not use it.)

use burn::tensor::backend::Backend;

use super::base::{LikelihoodEstimator, ScoreBatch, Scores, ScoringPath};
use super::coupled::{pair_scores, PairOptions};
use super::masks::MaskSeed;
use crate::model::DiffusionLm;
use crate::Result;

/// The decoupled (independent-mask) reconstruction; see the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoupled {
    pub options: PairOptions,
    pub max_logit_bytes: usize,
    pub path: ScoringPath,
}

impl Decoupled {
    pub fn new(options: PairOptions, max_logit_bytes: usize) -> Result<Self> {
        options.validate()?;
        Ok(Self {
            options,
            max_logit_bytes,
            path: ScoringPath::Lean,
        })
    }
}

impl LikelihoodEstimator for Decoupled {
    fn name(&self) -> &'static str {
        "decoupled"
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
            false,
            self.max_logit_bytes,
            self.path,
        )
    }
}
