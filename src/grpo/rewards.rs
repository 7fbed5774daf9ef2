//! Where a round's rewards come from, and what the trainer keeps of them: per-row totals, per-row
//! component values and sandbox outcome counts. Everything is per row or a count, so the parts
//! scored by data-parallel workers add up to the whole round exactly ([`RewardOutput::gather`]).

use std::ops::Range;
use std::sync::Arc;

use burn::tensor::backend::Backend;

use super::parallel::Shard;
use crate::data::Task;
use crate::reward::{CombinedReward, RewardFn};
use crate::sandbox::{Executor, Limits, Outcome, Pool};
use crate::{Error, Result};

/// A user reward function and its weight in the total.
#[derive(Clone)]
pub struct WeightedReward {
    pub reward: Arc<dyn RewardFn>,
    pub weight: f32,
}

/// Where rewards come from.
#[derive(Clone)]
pub enum Rewards {
    /// The released `code · w_c + format · w_f`, evaluated once per batch through a sandbox
    /// pool; logs both components (`rewards/code_reward/mean`, `rewards/code_format_reward/mean`)
    /// and sandbox outcomes.
    Combined(CombinedReward),
    /// Any weighted set of [`RewardFn`]s; the total is `Σ weight · value`, a `None` value
    /// skipped (TRL's `nansum`).
    Functions(Vec<WeightedReward>),
}

/// Outcome counts of the sandbox for one round.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SandboxStats {
    pub tests: usize,
    pub passed: usize,
    pub timeouts: usize,
    pub crashes: usize,
    pub memory: usize,
    pub syntax_errors: usize,
}

impl SandboxStats {
    fn counts(&self) -> [usize; 6] {
        [
            self.tests,
            self.passed,
            self.timeouts,
            self.crashes,
            self.memory,
            self.syntax_errors,
        ]
    }

    fn from_counts(c: &[f32]) -> Self {
        let n = |i: usize| c[i].round() as usize;
        Self {
            tests: n(0),
            passed: n(1),
            timeouts: n(2),
            crashes: n(3),
            memory: n(4),
            syntax_errors: n(5),
        }
    }
}

/// The rewards of a round's rows.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardOutput {
    /// `[rows]` weighted totals.
    pub totals: Vec<f32>,
    /// Per component: its name and `[rows]` values (`None` where it does not apply).
    pub components: Vec<(String, Vec<Option<f32>>)>,
    pub sandbox: Option<SandboxStats>,
}

/// Sample mean and standard deviation (n − 1), in f64.
pub fn mean_std(values: &[f32]) -> (f32, f32) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let n = values.len() as f64;
    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = if values.len() > 1 {
        values
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / (n - 1.0)
    } else {
        0.0
    };
    (mean as f32, var.sqrt() as f32)
}

impl RewardOutput {
    /// Per component: (name, mean over the rows it applies to, std).
    pub fn component_stats(&self) -> Vec<(String, f32, f32)> {
        self.components
            .iter()
            .map(|(name, values)| {
                let present: Vec<f32> = values.iter().flatten().copied().collect();
                let (m, s) = mean_std(&present);
                (name.clone(), m, s)
            })
            .collect()
    }

    /// The whole round's rewards from each worker's rows `rows` of `total` (every worker calls
    /// this with its own part). Each worker fills its own slots and zeros elsewhere, so the sum
    /// is exact; a missing component value travels as NaN.
    pub fn gather<I: Backend>(
        self,
        shard: &Shard<I>,
        rows: Range<usize>,
        total: usize,
    ) -> Result<Self> {
        let width = 1 + self.components.len();
        let mut v = vec![0f32; total * width + 6];
        for (i, r) in rows.clone().enumerate() {
            v[r * width] = self.totals[i];
            for (c, (_, values)) in self.components.iter().enumerate() {
                v[r * width + 1 + c] = values[i].unwrap_or(f32::NAN);
            }
        }
        if let Some(s) = &self.sandbox {
            for (slot, count) in v[total * width..].iter_mut().zip(s.counts()) {
                *slot = count as f32;
            }
        }
        let v = shard.sum("rewards", v)?;
        let v = &v;
        let column = |c: usize| (0..total).map(move |r| v[r * width + c]);
        Ok(Self {
            totals: column(0).collect(),
            components: self
                .components
                .iter()
                .enumerate()
                .map(|(c, (name, _))| {
                    let values = column(1 + c).map(|x| (!x.is_nan()).then_some(x)).collect();
                    (name.clone(), values)
                })
                .collect(),
            sandbox: self
                .sandbox
                .map(|_| SandboxStats::from_counts(&v[total * width..])),
        })
    }
}

impl Rewards {
    /// The released reward over any [`Executor`].
    pub fn combined(
        executor: Arc<dyn Executor>,
        workers: usize,
        limits: Limits,
        weights: crate::reward::RewardWeights,
    ) -> Self {
        Rewards::Combined(CombinedReward::new(
            Pool::new(executor, workers),
            limits,
            weights,
        ))
    }

    /// Rewards of `texts` (row `i` answers `tasks[i]`).
    pub fn score(&self, texts: &[String], tasks: &[&Task]) -> Result<RewardOutput> {
        match self {
            Rewards::Combined(combined) => {
                let evals = combined.evaluate_tasks(texts, tasks)?;
                let w = combined.weights();
                let mut sandbox = SandboxStats::default();
                for e in &evals {
                    sandbox.syntax_errors += usize::from(e.syntax_error.is_some());
                    for t in &e.tests {
                        sandbox.tests += 1;
                        match t {
                            Outcome::Passed => sandbox.passed += 1,
                            Outcome::Timeout => sandbox.timeouts += 1,
                            Outcome::Crashed { .. } => sandbox.crashes += 1,
                            Outcome::Memory => sandbox.memory += 1,
                            Outcome::Failed { .. } => {}
                        }
                    }
                }
                Ok(RewardOutput {
                    totals: evals.iter().map(|e| w.total(e)).collect(),
                    components: vec![
                        ("code_reward".into(), evals.iter().map(|e| e.code).collect()),
                        (
                            "code_format_reward".into(),
                            evals.iter().map(|e| Some(e.format)).collect(),
                        ),
                    ],
                    sandbox: Some(sandbox),
                })
            }
            Rewards::Functions(fns) => {
                let mut totals = vec![0f32; texts.len()];
                let mut components = Vec::with_capacity(fns.len());
                for f in fns {
                    let values = f.reward.score(texts, tasks)?;
                    if values.len() != texts.len() {
                        return Err(Error::invalid(
                            "reward",
                            format!(
                                "`{}` returned {} values for {} completions",
                                f.reward.name(),
                                values.len(),
                                texts.len()
                            ),
                        ));
                    }
                    for (t, v) in totals.iter_mut().zip(&values) {
                        if let Some(v) = v {
                            *t += f.weight * v;
                        }
                    }
                    components.push((f.reward.name().to_string(), values));
                }
                Ok(RewardOutput {
                    totals,
                    components,
                    sandbox: None,
                })
            }
        }
    }
}
