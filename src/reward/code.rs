//! The code reward as released (`code_reward`, spec §1.10): the fraction of a task's tests
//! that pass, computed only when the format reward is 1 (else 0).
//!
//! Each test runs after the extracted (unstripped) first python block, as the reference's
//! `python3 -c f"{code}\n{case}"` does, through the sandbox [`Pool`]. Unlike the reference, a
//! test that times out fails alone; the other tests still count (spec §9).

use crate::data::Task;
use crate::sandbox::{Limits, Outcome, Pool, Program};
use crate::Result;

use super::base::{check_batch, RewardFn};
use super::format::{count_mismatch, format_scores, SyntaxChecker};

/// Everything the rewards know about one completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Format reward: 1.0, 0.5 or 0.0.
    pub format: f32,
    /// Why the python block does not parse (format 0.5).
    pub syntax_error: Option<String>,
    /// Pass rate; `Some(0.0)` when the format is below 1 (tests not run), `None` when the task
    /// has no tests.
    pub code: Option<f32>,
    /// Per-test outcomes, in test order; empty when the tests were not run.
    pub tests: Vec<Outcome>,
}

/// Pass rate through a sandbox pool ([`RewardFn`] name `code_reward`).
#[derive(Debug, Clone)]
pub struct CodeReward {
    checker: SyntaxChecker,
}

impl CodeReward {
    /// Rewards run on `pool` under `limits` (per-test timeout 5 s by default).
    pub fn new(pool: Pool, limits: Limits) -> Self {
        Self {
            checker: SyntaxChecker::new(pool, limits),
        }
    }

    /// The syntax checker (and with it the pool and limits) this reward uses.
    pub fn checker(&self) -> &SyntaxChecker {
        &self.checker
    }

    /// Format and code verdicts for `completions[i]` against `tests[i]`. Element `i` is `Err`
    /// only when the sandbox failed on that completion; the others are still scored. The outer
    /// `Err` is for mismatched batch lengths.
    pub fn evaluate(
        &self,
        completions: &[&str],
        tests: &[&[String]],
    ) -> Result<Vec<Result<Evaluation>>> {
        check_batch(completions.len(), tests.len())?;
        let formats = format_scores(&self.checker, completions);
        // Only well-formatted completions with tests go to the sandbox.
        let mut programs = Vec::new();
        let mut program_of = vec![None; completions.len()];
        for (i, f) in formats.iter().enumerate() {
            if let Ok(f) = f {
                if f.score == 1.0 && !tests[i].is_empty() {
                    program_of[i] = Some(programs.len());
                    programs.push(Program {
                        code: f.code.clone().expect("a format score of 1 has a block"),
                        tests: tests[i].to_vec(),
                    });
                }
            }
        }
        let mut results: Vec<Option<Result<Vec<Outcome>>>> = self
            .checker
            .pool()
            .execute_batch(&programs, self.checker.limits())
            .into_iter()
            .map(Some)
            .collect();
        Ok(formats
            .into_iter()
            .enumerate()
            .map(|(i, f)| {
                let f = f?;
                let mut eval = Evaluation {
                    format: f.score,
                    syntax_error: f.syntax_error,
                    code: (!tests[i].is_empty()).then_some(0.0),
                    tests: Vec::new(),
                };
                if let Some(p) = program_of[i] {
                    let outcomes = results[p].take().expect("each program is read once")?;
                    if outcomes.len() != tests[i].len() {
                        return Err(count_mismatch(
                            self.checker.pool(),
                            tests[i].len(),
                            outcomes.len(),
                        ));
                    }
                    let passed = outcomes.iter().filter(|o| o.passed()).count();
                    eval.code = Some(passed as f32 / outcomes.len() as f32);
                    eval.tests = outcomes;
                }
                Ok(eval)
            })
            .collect())
    }

    /// [`CodeReward::evaluate`] for tasks, failing on the first sandbox error.
    pub fn evaluate_tasks(
        &self,
        completions: &[String],
        tasks: &[&Task],
    ) -> Result<Vec<Evaluation>> {
        check_batch(completions.len(), tasks.len())?;
        let texts: Vec<&str> = completions.iter().map(String::as_str).collect();
        let tests: Vec<&[String]> = tasks.iter().map(|t| t.tests.as_slice()).collect();
        self.evaluate(&texts, &tests)?.into_iter().collect()
    }
}

impl RewardFn for CodeReward {
    fn name(&self) -> &str {
        "code_reward"
    }

    fn score(&self, completions: &[String], tasks: &[&Task]) -> Result<Vec<Option<f32>>> {
        Ok(self
            .evaluate_tasks(completions, tasks)?
            .into_iter()
            .map(|e| e.code)
            .collect())
    }
}
