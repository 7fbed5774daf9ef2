//! Evaluation: pass@k of a model on a task set, scored in the sandbox, with the AR-ness of the
//! rollouts that produced the samples (spec §4).
//!
//! Two prompt styles:
//! - [`PromptStyle::Training`]: the chat template with the system prompt and the training user
//!   message (AceCoder rule), and the code is the completion's python block, exactly as the
//!   RL reward reads it. Used for the synthetic toy domain and AceCoder-style tasks.
//! - [`PromptStyle::Benchmark`]: the paper's HumanEval/MBPP templates with the assistant
//!   prefill (`Here is the code to solve this problem:\n```python`); the program is the text
//!   up to the closing fence. A HumanEval answer that does not define the entry point is run
//!   after the task's prompt (the signature and docstring), as EvalPlus does.
//!
//! A sample passes when every test of its task passes. pass@k uses the unbiased estimator
//! over `n` samples per task; with temperature 0 all samples of a task coincide, so `n = 1`.

use std::collections::BTreeMap;
use std::time::Instant;

use burn::tensor::backend::Backend;
use serde::Serialize;

use crate::data::prompt::{code_after_prefill, eval_user_message, user_message, SYSTEM_PROMPT};
use crate::data::{Task, TaskSource};
use crate::metrics::pass_at_k::mean_pass_at_k;
use crate::model::{DiffusionLm, ModelFamily, Tokenizer};
use crate::reward::CodeReward;
use crate::rollout::{generate, Alg, RolloutConfig};
use crate::sandbox::{Limits, Pool, Program};
use crate::{Error, Result};

/// How prompts are built and code is read from completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptStyle {
    /// Training prompt; code = the completion's python block (format-gated, as the reward).
    Training,
    /// The paper's HumanEval/MBPP evaluation templates with the assistant prefill.
    Benchmark,
}

/// What to evaluate and how to sample.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    /// Samples per task (`n` of pass@k).
    pub samples_per_task: usize,
    /// The k of each reported pass@k (k > n is reported as pass@n).
    pub ks: Vec<usize>,
    /// Decoding; `num_completions` is replaced by `samples_per_task` and traces are recorded.
    pub rollout: RolloutConfig,
    pub prompt_style: PromptStyle,
    /// System prompt of the chat template.
    pub system_prompt: String,
    /// Tasks decoded together in one rollout batch (rows = tasks × n).
    pub tasks_per_batch: usize,
    /// Completions kept in the report, for eyeballing.
    pub keep_samples: usize,
}

impl Default for EvalConfig {
    /// Greedy pass@1 with one sample per task (deterministic).
    fn default() -> Self {
        Self {
            samples_per_task: 1,
            ks: vec![1],
            rollout: RolloutConfig {
                temperature: 0.0,
                top_p: None,
                alg: Alg::Entropy,
                truncate_text: false,
                ..RolloutConfig::default()
            },
            prompt_style: PromptStyle::Training,
            system_prompt: SYSTEM_PROMPT.into(),
            tasks_per_batch: 16,
            keep_samples: 5,
        }
    }
}

/// One task's tally.
#[derive(Debug, Clone, Serialize)]
pub struct TaskResult {
    pub id: String,
    /// Samples drawn.
    pub n: usize,
    /// Samples that passed every test.
    pub passed: usize,
    /// Mean fraction of tests passed over the samples.
    pub pass_rate: f64,
}

/// One kept completion.
#[derive(Debug, Clone, Serialize)]
pub struct EvalSample {
    pub id: String,
    pub completion: String,
    pub passed: bool,
}

/// The result of [`Evaluator::evaluate`].
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub tasks: usize,
    pub samples_per_task: usize,
    /// `"pass@k"` → mean unbiased pass@k over tasks.
    pub pass_at_k: BTreeMap<String, f64>,
    /// Mean fraction of tests passed per sample.
    pub mean_pass_rate: f64,
    /// Share of samples whose code could be read (training style: format reward 1; benchmark
    /// style: a non-empty program).
    pub format_ok: f64,
    /// Mean local AR-ness@k over rollouts, k = 1..=9.
    pub local_ar: Vec<f64>,
    /// Mean global AR-ness@k over rollouts, k = 1..=4.
    pub global_ar: Vec<f64>,
    pub forward_passes: usize,
    pub seconds: f64,
    pub per_task: Vec<TaskResult>,
    pub samples: Vec<EvalSample>,
}

impl EvalReport {
    /// pass@1 (0 when it was not requested).
    pub fn pass_at_1(&self) -> f64 {
        self.pass_at_k.get("pass@1").copied().unwrap_or(0.0)
    }
}

/// Evaluates models on tasks through a sandbox pool.
#[derive(Debug, Clone)]
pub struct Evaluator {
    reward: CodeReward,
}

impl Evaluator {
    /// Programs run on `pool` under `limits`.
    pub fn new(pool: Pool, limits: Limits) -> Self {
        Self {
            reward: CodeReward::new(pool, limits),
        }
    }

    /// The full prompt text of `task` in `config`'s style, in `family`'s chat template.
    pub fn prompt(family: ModelFamily, task: &Task, config: &EvalConfig) -> Result<String> {
        Ok(match config.prompt_style {
            PromptStyle::Training => {
                family.chat_prompt(&config.system_prompt, &user_message(task), None)
            }
            PromptStyle::Benchmark => family.chat_prompt(
                &config.system_prompt,
                &eval_user_message(task)?,
                Some(crate::data::prompt::EVAL_ASSISTANT_PREFILL),
            ),
        })
    }

    /// Sample `n` completions per task with `model`, run the tests, and tally pass@k.
    pub fn evaluate<B: Backend>(
        &self,
        model: &DiffusionLm<B>,
        tokenizer: &Tokenizer,
        tasks: &[Task],
        config: &EvalConfig,
    ) -> Result<EvalReport> {
        validate(tasks, config)?;
        let t0 = Instant::now();
        let prompts = tasks
            .iter()
            .map(|t| Self::prompt(model.config().family, t, config))
            .collect::<Result<Vec<_>>>()?;
        let mut rollout = config.rollout.clone();
        rollout.num_completions = config.samples_per_task;
        rollout.record_trace = true;
        let base_seed = rollout.seed;
        let mut texts = Vec::with_capacity(tasks.len() * config.samples_per_task);
        let (mut local, mut global, mut traced, mut passes) = (Vec::new(), Vec::new(), 0usize, 0);
        for (b, chunk) in prompts.chunks(config.tasks_per_batch).enumerate() {
            // Distinct randomness per batch: rows draw from streams 0.. of their call's seed.
            rollout.seed = base_seed.wrapping_add(b as u64);
            let batch = generate(model, tokenizer, chunk, &rollout)?;
            passes += batch.forward_passes;
            for trace in batch.traces.iter().flatten() {
                add_into(&mut local, &trace.local_ar());
                add_into(&mut global, &trace.global_ar());
                traced += 1;
            }
            texts.extend(batch.texts);
        }
        let mut report = self.score(tasks, &texts, config)?;
        let mean = |v: Vec<f64>| v.into_iter().map(|s| s / traced.max(1) as f64).collect();
        report.local_ar = mean(local);
        report.global_ar = mean(global);
        report.forward_passes = passes;
        report.seconds = t0.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Tally given completions: `completions[i * n + j]` is sample `j` of `tasks[i]`
    /// (`n = config.samples_per_task`). The AR-ness fields stay empty (no rollouts ran).
    pub fn score(
        &self,
        tasks: &[Task],
        completions: &[String],
        config: &EvalConfig,
    ) -> Result<EvalReport> {
        validate(tasks, config)?;
        let t0 = Instant::now();
        let n = config.samples_per_task;
        if completions.len() != tasks.len() * n {
            return Err(Error::invalid(
                "completions",
                format!(
                    "{} completions for {} tasks x {n} samples",
                    completions.len(),
                    tasks.len()
                ),
            ));
        }
        let row_tasks: Vec<&Task> = tasks
            .iter()
            .flat_map(|t| std::iter::repeat_n(t, n))
            .collect();
        let verdicts = self.verdicts(completions, &row_tasks, config.prompt_style)?;
        let mut per_task = Vec::with_capacity(tasks.len());
        let mut samples = Vec::new();
        let (mut rate_sum, mut readable) = (0.0f64, 0usize);
        for (i, task) in tasks.iter().enumerate() {
            let (mut passed, mut rate) = (0, 0.0);
            for r in i * n..(i + 1) * n {
                let v = &verdicts[r];
                passed += usize::from(v.passed);
                rate += v.pass_rate;
                readable += usize::from(v.readable);
                if samples.len() < config.keep_samples {
                    samples.push(EvalSample {
                        id: task.id.clone(),
                        completion: completions[r].clone(),
                        passed: v.passed,
                    });
                }
            }
            rate_sum += rate;
            per_task.push(TaskResult {
                id: task.id.clone(),
                n,
                passed,
                pass_rate: rate / n as f64,
            });
        }
        let tally: Vec<(usize, usize)> = per_task.iter().map(|t| (t.n, t.passed)).collect();
        let total = completions.len() as f64;
        Ok(EvalReport {
            tasks: tasks.len(),
            samples_per_task: n,
            pass_at_k: config
                .ks
                .iter()
                .map(|&k| (format!("pass@{k}"), mean_pass_at_k(&tally, k)))
                .collect(),
            mean_pass_rate: rate_sum / total,
            format_ok: readable as f64 / total,
            local_ar: Vec::new(),
            global_ar: Vec::new(),
            forward_passes: 0,
            seconds: t0.elapsed().as_secs_f64(),
            per_task,
            samples,
        })
    }

    fn verdicts(
        &self,
        texts: &[String],
        tasks: &[&Task],
        style: PromptStyle,
    ) -> Result<Vec<Verdict>> {
        match style {
            PromptStyle::Training => Ok(self
                .reward
                .evaluate_tasks(texts, tasks)?
                .into_iter()
                .map(|e| {
                    let rate = f64::from(e.code.unwrap_or(0.0));
                    Verdict {
                        passed: !e.tests.is_empty() && e.tests.iter().all(|o| o.passed()),
                        pass_rate: rate,
                        readable: e.format == 1.0,
                    }
                })
                .collect()),
            PromptStyle::Benchmark => {
                let programs: Vec<Program> = texts
                    .iter()
                    .zip(tasks)
                    .map(|(text, task)| Program {
                        code: benchmark_program(text, task),
                        tests: task.tests.clone(),
                    })
                    .collect();
                let checker = self.reward.checker();
                checker
                    .pool()
                    .execute_batch(&programs, checker.limits())
                    .into_iter()
                    .zip(&programs)
                    .map(|(outcomes, program)| {
                        let outcomes = outcomes?;
                        let ok = outcomes.iter().filter(|o| o.passed()).count();
                        Ok(Verdict {
                            passed: !outcomes.is_empty() && ok == outcomes.len(),
                            pass_rate: ok as f64 / outcomes.len().max(1) as f64,
                            readable: !program.code.trim().is_empty(),
                        })
                    })
                    .collect()
            }
        }
    }
}

struct Verdict {
    passed: bool,
    pass_rate: f64,
    readable: bool,
}

/// The program a benchmark-style completion stands for.
fn benchmark_program(completion: &str, task: &Task) -> String {
    let code = code_after_prefill(completion);
    match (&task.source, &task.entry_point) {
        (TaskSource::HumanEval, Some(entry)) if !code.contains(&format!("def {entry}")) => {
            format!("{}{code}", task.question)
        }
        _ => code.to_string(),
    }
}

fn add_into(sum: &mut Vec<f64>, values: &[f64]) {
    if sum.len() < values.len() {
        sum.resize(values.len(), 0.0);
    }
    for (s, v) in sum.iter_mut().zip(values) {
        *s += v;
    }
}

fn validate(tasks: &[Task], config: &EvalConfig) -> Result<()> {
    if tasks.is_empty() {
        return Err(Error::invalid("tasks", "no tasks to evaluate"));
    }
    if config.samples_per_task == 0 {
        return Err(Error::invalid("samples_per_task", "must be at least 1"));
    }
    if config.tasks_per_batch == 0 {
        return Err(Error::invalid("tasks_per_batch", "must be at least 1"));
    }
    if let Some(&k) = config.ks.iter().find(|&&k| k == 0) {
        return Err(Error::invalid(
            "ks",
            format!("k = {k}: k must be at least 1"),
        ));
    }
    if let Some(task) = tasks.iter().find(|t| t.tests.is_empty()) {
        return Err(Error::invalid(
            "tasks",
            format!("{}: a task without tests cannot be evaluated", task.id),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(source: TaskSource, question: &str, entry: Option<&str>) -> Task {
        Task {
            id: "t".into(),
            question: question.into(),
            tests: vec!["assert f(1) == 2".into()],
            entry_point: entry.map(Into::into),
            reference_solution: None,
            source,
        }
    }

    #[test]
    fn humaneval_body_only_answers_run_after_the_prompt() {
        let t = task(
            TaskSource::HumanEval,
            "def f(x):\n    \"\"\"doc\"\"\"\n",
            Some("f"),
        );
        assert_eq!(
            benchmark_program("\n    return x + 1\n```\n", &t),
            "def f(x):\n    \"\"\"doc\"\"\"\n    return x + 1\n"
        );
        // A full definition is run as written.
        assert_eq!(
            benchmark_program("\ndef f(x):\n    return x + 1\n```", &t),
            "def f(x):\n    return x + 1\n"
        );
        let m = task(TaskSource::Mbpp, "q", None);
        assert_eq!(benchmark_program("\nx = 1\n```\nprose", &m), "x = 1\n");
    }

    #[test]
    fn bad_configs_are_typed_errors_naming_the_field() {
        let t = vec![task(TaskSource::Custom, "q", None)];
        let zero_k = EvalConfig {
            ks: vec![1, 0],
            ..EvalConfig::default()
        };
        assert!(validate(&t, &zero_k)
            .unwrap_err()
            .to_string()
            .contains("ks"));
        let zero_n = EvalConfig {
            samples_per_task: 0,
            ..EvalConfig::default()
        };
        assert!(validate(&t, &zero_n)
            .unwrap_err()
            .to_string()
            .contains("samples_per_task"));
        assert!(validate(&[], &EvalConfig::default()).is_err());
        let mut no_tests = t.clone();
        no_tests[0].tests.clear();
        assert!(validate(&no_tests, &EvalConfig::default())
            .unwrap_err()
            .to_string()
            .contains("without tests"));
    }
}
