//! The total reward as released: `2.0 · code + 0.5 · format` (maximum 2.5), weights
//! configurable. A `None` component (no tests) is left out of the sum, like TRL's `nansum`.

use serde::{Deserialize, Serialize};

use crate::data::Task;
use crate::sandbox::{Limits, Pool};
use crate::Result;

use super::base::RewardFn;
use super::code::{CodeReward, Evaluation};

/// Weights of the reward components (`reward_weights` in the reference config).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewardWeights {
    /// Weight of the pass rate.
    pub code: f32,
    /// Weight of the format score.
    pub format: f32,
}

impl Default for RewardWeights {
    fn default() -> Self {
        Self {
            code: 2.0,
            format: 0.5,
        }
    }
}

impl RewardWeights {
    /// Weighted sum of an evaluation's components.
    pub fn total(&self, e: &Evaluation) -> f32 {
        self.code * e.code.unwrap_or(0.0) + self.format * e.format
    }
}

/// Format and code rewards from one evaluation, weighted ([`RewardFn`] name `reward`).
#[derive(Debug, Clone)]
pub struct CombinedReward {
    code: CodeReward,
    weights: RewardWeights,
}

impl CombinedReward {
    pub fn new(pool: Pool, limits: Limits, weights: RewardWeights) -> Self {
        Self {
            code: CodeReward::new(pool, limits),
            weights,
        }
    }

    pub fn weights(&self) -> &RewardWeights {
        &self.weights
    }

    /// The underlying code reward (its `evaluate` gives per-sample results).
    pub fn code_reward(&self) -> &CodeReward {
        &self.code
    }

    /// Per-completion components and per-test outcomes, for metrics and logs.
    pub fn evaluate_tasks(
        &self,
        completions: &[String],
        tasks: &[&Task],
    ) -> Result<Vec<Evaluation>> {
        self.code.evaluate_tasks(completions, tasks)
    }
}

impl RewardFn for CombinedReward {
    fn name(&self) -> &str {
        "reward"
    }

    fn score(&self, completions: &[String], tasks: &[&Task]) -> Result<Vec<Option<f32>>> {
        Ok(self
            .evaluate_tasks(completions, tasks)?
            .iter()
            .map(|e| Some(self.weights.total(e)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::Outcome;

    fn eval(format: f32, code: Option<f32>) -> Evaluation {
        Evaluation {
            format,
            syntax_error: None,
            code,
            tests: vec![Outcome::Passed],
        }
    }

    #[test]
    fn weights_as_released() {
        let w = RewardWeights::default();
        assert_eq!(w.total(&eval(1.0, Some(1.0))), 2.5);
        assert_eq!(w.total(&eval(1.0, Some(0.5))), 1.5);
        assert_eq!(w.total(&eval(0.5, Some(0.0))), 0.25);
        assert_eq!(w.total(&eval(0.0, Some(0.0))), 0.0);
        assert_eq!(w.total(&eval(1.0, None)), 0.5, "no tests: format only");
        let w: RewardWeights = toml::from_str("code = 1.0").unwrap();
        assert_eq!(
            w,
            RewardWeights {
                code: 1.0,
                format: 0.5
            }
        );
        assert!(toml::from_str::<RewardWeights>("cod = 1.0").is_err());
    }
}
