//! A training run with held-out evaluation: pass@1 before, every `eval_every` rounds and
//! after, with everything a user wants to look at afterwards in the run directory.
//!
//! | file | content |
//! |---|---|
//! | `config.resolved.toml` | the complete configuration |
//! | `metrics.jsonl` | one record per round (TRL names, see [`crate::metrics::names`]) |
//! | `evals.jsonl` | one record per evaluation: step, pass@k, pass rate, AR-ness, seconds |
//! | `completions.jsonl` | sampled completions with their rewards |
//! | `checkpoints/step-N` | the final policy (HF format, or PEFT adapters with LoRA) and trainer state |
//! | `curves.svg` | reward (smoothed) and held-out pass@1 over rounds |
//! | `summary.json` | [`RunSummary`] |

use std::path::Path;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Deserializer, Serialize};

use super::Trainer;
use crate::data::Task;
use crate::estimator::LikelihoodEstimator;
use crate::eval::{EvalConfig, EvalReport, Evaluator};
use crate::metrics::plot::{write_svg, Chart, Series};
use crate::metrics::{names, JsonlSink, Progress};
use crate::util::write_atomic;
use crate::{Error, Result};

/// What [`run_with_eval`] does besides training.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Rollout rounds to train.
    pub max_steps: u64,
    /// Evaluate every N rounds (0 = only before and after).
    pub eval_every: u64,
    /// Held-out tasks, never trained on.
    pub eval_tasks: Vec<Task>,
    pub eval: EvalConfig,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Save the final checkpoint.
    pub save_checkpoint: bool,
}

/// One evaluation during a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalPoint {
    /// Rounds done when it ran.
    pub step: u64,
    pub pass_at_1: f64,
    pub mean_pass_rate: f64,
    pub format_ok: f64,
    /// NaN (`null` in JSON) when no completion had two decoded tokens.
    #[serde(deserialize_with = "null_as_nan")]
    pub local_ar_1: f64,
    #[serde(deserialize_with = "null_as_nan")]
    pub global_ar_1: f64,
    pub seconds: f64,
}

impl EvalPoint {
    fn new(step: u64, r: &EvalReport) -> Self {
        Self {
            step,
            pass_at_1: r.pass_at_1(),
            mean_pass_rate: r.mean_pass_rate,
            format_ok: r.format_ok,
            local_ar_1: r.local_ar.first().copied().unwrap_or(f64::NAN),
            global_ar_1: r.global_ar.first().copied().unwrap_or(f64::NAN),
            seconds: r.seconds,
        }
    }
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    pub pass_at_1_before: f64,
    pub pass_at_1_after: f64,
    /// Rollout rounds trained.
    pub steps: u64,
    pub optimizer_steps: u64,
    pub estimator: String,
    pub seed: u64,
    pub eval_tasks: usize,
    /// Mean reward of the first and the last tenth of the rounds.
    pub reward_first: f64,
    pub reward_last: f64,
    /// Mean sequences forwarded per round: rollout steps and estimator passes.
    pub rollout_forward_passes_per_step: f64,
    pub estimator_forward_passes_per_step: f64,
    /// Training time, without the evaluations.
    pub train_seconds: f64,
    pub eval_seconds: f64,
    pub wall_seconds: f64,
    pub evals: Vec<EvalPoint>,
    /// `(round, mean reward)` of every round.
    pub rewards: Vec<(u64, f64)>,
}

/// serde_json writes a non-finite f64 as `null`.
fn null_as_nan<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

impl RunSummary {
    /// Reads `run_dir/summary.json` (written last, atomically, by [`run_with_eval`]).
    pub fn load(run_dir: &Path) -> Result<Self> {
        crate::util::read_json(&run_dir.join("summary.json"))
    }
}

/// Train `trainer` for `options.max_steps` rounds into `run_dir`, evaluating held-out pass@1
/// with `evaluator` before, periodically and after (see the module docs for the files). In a
/// data-parallel run every worker calls this; worker 0 alone evaluates and writes, and only its
/// summary holds the evaluations.
pub fn run_with_eval<B: AutodiffBackend>(
    trainer: &mut Trainer<B>,
    evaluator: &Evaluator,
    options: &RunOptions,
    run_dir: &Path,
) -> Result<RunSummary> {
    let wall = Instant::now();
    let lead = trainer.is_lead();
    let mut sinks = match lead {
        true => Some(RunSinks::create(trainer, run_dir)?),
        false => None,
    };
    let progress = Progress::new(trainer.current_step(), options.max_steps, options.progress);

    let tokenizer = trainer.tokenizer().clone();
    let mut eval_seconds = 0.0;
    let mut evals = Vec::new();
    let mut evaluate = |trainer: &Trainer<B>,
                        evals: &mut Vec<EvalPoint>,
                        sinks: &mut Option<RunSinks>|
     -> Result<()> {
        let Some(sinks) = sinks else {
            return Ok(());
        };
        let report = evaluator.evaluate(
            &trainer.policy().valid(),
            &tokenizer,
            &options.eval_tasks,
            &options.eval,
        )?;
        let point = EvalPoint::new(trainer.current_step(), &report);
        eval_seconds += report.seconds;
        progress.message(&format!(
            "eval at step {}: held-out pass@1 {:.3} ({} tasks, mean pass rate {:.3}, format ok {:.2}, {:.0}s)",
            point.step, point.pass_at_1, report.tasks, point.mean_pass_rate, point.format_ok, point.seconds
        ));
        sinks.evals.write(&point)?;
        evals.push(point);
        Ok(())
    };

    evaluate(trainer, &mut evals, &mut sinks)?;
    let (mut rewards, mut rollout_passes, mut estimator_passes) = (Vec::new(), 0usize, 0usize);
    let mut train_seconds = 0.0;
    while trainer.current_step() < options.max_steps {
        let stats = trainer.step()?;
        train_seconds += stats.step_time;
        if let Some(sinks) = &mut sinks {
            sinks.metrics.write(&stats.metrics())?;
            for s in &stats.samples {
                sinks.samples.write(s)?;
            }
            progress.update(stats.step, &stats.metrics());
        }
        rewards.push((stats.step, f64::from(stats.reward)));
        rollout_passes += stats.rollout_forward_passes;
        estimator_passes += stats.estimator_forward_passes;
        let step = trainer.current_step();
        let due = options.eval_every > 0 && step.is_multiple_of(options.eval_every);
        if due && step < options.max_steps {
            evaluate(trainer, &mut evals, &mut sinks)?;
        }
    }
    if evals.last().map(|e| e.step) != Some(trainer.current_step()) {
        evaluate(trainer, &mut evals, &mut sinks)?;
    }
    if options.save_checkpoint {
        let path = trainer.save_checkpoint(run_dir)?;
        if lead {
            progress.message(&format!("saved {}", path.display()));
        }
    }

    let rounds = rewards.len().max(1) as f64;
    let tenth = rewards.len().div_ceil(10).max(1);
    let mean = |r: &[(u64, f64)]| r.iter().map(|p| p.1).sum::<f64>() / r.len().max(1) as f64;
    let summary = RunSummary {
        pass_at_1_before: evals.first().map_or(f64::NAN, |e| e.pass_at_1),
        pass_at_1_after: evals.last().map_or(f64::NAN, |e| e.pass_at_1),
        steps: trainer.current_step(),
        optimizer_steps: trainer.optimizer_step(),
        estimator: trainer.estimator().name().to_string(),
        seed: trainer.config().grpo.seed,
        eval_tasks: options.eval_tasks.len(),
        reward_first: mean(&rewards[..tenth.min(rewards.len())]),
        reward_last: mean(&rewards[rewards.len().saturating_sub(tenth)..]),
        rollout_forward_passes_per_step: rollout_passes as f64 / rounds,
        estimator_forward_passes_per_step: estimator_passes as f64 / rounds,
        train_seconds,
        eval_seconds,
        wall_seconds: wall.elapsed().as_secs_f64(),
        evals,
        rewards,
    };
    if lead {
        write_svg(&run_dir.join("curves.svg"), &curves(&summary), 2)?;
        let json = serde_json::to_string_pretty(&summary).expect("the summary serialises");
        write_atomic(&run_dir.join("summary.json"), json.as_bytes())?;
    }
    Ok(summary)
}

/// The files [`run_with_eval`] writes as it goes.
struct RunSinks {
    metrics: JsonlSink,
    samples: JsonlSink,
    evals: JsonlSink,
}

impl RunSinks {
    fn create<B: AutodiffBackend>(trainer: &Trainer<B>, run_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
        trainer.config().save_resolved(run_dir)?;
        Ok(Self {
            metrics: JsonlSink::create(run_dir.join(&trainer.config().logging.metrics_file))?,
            samples: JsonlSink::create(run_dir.join("completions.jsonl"))?,
            evals: JsonlSink::create(run_dir.join("evals.jsonl"))?,
        })
    }
}

/// The two panels of `curves.svg`.
pub fn curves(s: &RunSummary) -> Vec<Chart> {
    let reward: Vec<(f64, f64)> = s.rewards.iter().map(|&(x, y)| (x as f64, y)).collect();
    let pass: Vec<(f64, f64)> = s
        .evals
        .iter()
        .map(|e| (e.step as f64, e.pass_at_1))
        .collect();
    vec![
        Chart {
            title: format!("{}: reward per round", s.estimator),
            x_label: "round".into(),
            y_label: names::REWARD.into(),
            series: vec![
                Series::line("reward", reward.clone()),
                Series::line("EMA 0.2", reward).smoothed(0.2),
            ],
            y_range: None,
        },
        Chart {
            title: format!("held-out pass@1 ({} tasks)", s.eval_tasks),
            x_label: "round".into(),
            y_label: "pass@1".into(),
            series: vec![Series::line("pass@1", pass)],
            y_range: Some((0.0, 1.0)),
        },
    ]
}
