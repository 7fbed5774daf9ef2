//! Compare the likelihood estimators under the same budget and seeds on the embedded default:
//! coupled (DiffuCoder), decoupled, d1 (prompt masked w.p. 0.15) and full-mask.
//!
//! ```text
//! cargo run --release --example compare_estimators
//! cargo run --release --example compare_estimators -- --seeds 0,1,2 --max-steps 40 --out runs/compare
//! ```
//!
//! Every (estimator, seed) run is the `acecoder_rl` job with the embedded config; each starts
//! from the same checkpoint with the same rollout seed, so the first rollouts coincide and the
//! estimators differ only in how they score them. Writes into `--out` (default
//! `runs/compare-<UTC timestamp>`): one run directory per estimator and seed, `rewards.svg`
//! (mean reward per round, smoothed, mean ± one standard deviation over seeds) and
//! `table.md` / `results.json` with, per estimator: held-out pass@1 before and after (mean
//! over seeds), the per-token score variance (the same rollouts scored under 8 mask seeds with
//! the initial model, variance across seeds averaged over completion tokens), forward passes
//! per round, and training time.
//!
//! A run directory whose `summary.json` exists and whose `config.resolved.toml` matches is
//! reused (`--fresh` reruns it), so an interrupted comparison resumes, and
//! `acecoder_rl --seed S --out OUT/coupled-seedS` can stand in for the coupled arm.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use clap::Parser;
use serde::Serialize;

use coupled_grpo::backend::{Cpu, CpuAutodiff};
use coupled_grpo::estimator::{EstimatorKind, LikelihoodEstimator, MaskSeed, ScoreBatch};
use coupled_grpo::eval::Evaluator;
use coupled_grpo::grpo::trainer::{build_executor, load_tasks, sandbox_limits};
use coupled_grpo::grpo::{run_with_eval, RunOptions, RunSummary, TrainConfig, Trainer};
use coupled_grpo::metrics::plot::{write_svg, Chart, Series};
use coupled_grpo::model::{load_pretrained, load_tokenizer};
use coupled_grpo::rollout::generate;
use coupled_grpo::sandbox::Pool;
use coupled_grpo::util::write_atomic;

mod common;
use common::{default_run_dir, embedded, eval_config, split_tasks, toml_str};

const DEFAULT_CONFIG: &str = include_str!("configs/acecoder_rl.toml");

#[derive(Parser, Debug)]
#[command(about = "coupled vs decoupled vs d1 vs full-mask under the same budget and seeds")]
struct Args {
    /// Seeds (comma-separated); every estimator runs every seed.
    #[arg(long, value_delimiter = ',', default_values_t = [0u64, 1])]
    seeds: Vec<u64>,
    /// Estimators to compare (comma-separated; default: all of coupled, decoupled, d1, full_mask).
    #[arg(long, value_delimiter = ',')]
    estimators: Vec<String>,
    /// Rollout rounds per run (default: the embedded config's, as `acecoder_rl` runs).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Held-out tasks evaluated before and after each run.
    #[arg(long, default_value_t = 100)]
    eval_tasks: usize,
    /// Mask seeds of the score-variance measurement.
    #[arg(long, default_value_t = 8)]
    variance_seeds: u64,
    /// HF model directory (default: the embedded assets/tiny-coder).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Output directory (default: runs/compare-<UTC timestamp>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Override any config value: `--set grpo.beta=0.02`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Rerun runs that already finished in `--out` (by default a run directory whose
    /// summary.json exists and whose config.resolved.toml matches is reused, so an interrupted
    /// comparison resumes where it stopped).
    #[arg(long)]
    fresh: bool,
}

#[derive(Debug, Serialize)]
struct Row {
    estimator: String,
    seeds: Vec<u64>,
    /// Rollout rounds of every run.
    rounds: u64,
    pass_at_1_before: f64,
    pass_at_1_after: f64,
    pass_at_1_after_std: f64,
    reward_last: f64,
    score_variance: f64,
    forward_passes_per_sequence: usize,
    estimator_forward_passes_per_step: f64,
    /// Training time per run, without the held-out evaluations (runs reused from
    /// `acecoder_rl` evaluate more often).
    train_seconds_per_run: f64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let out = args.out.clone().unwrap_or_else(|| {
        let d = default_run_dir();
        d.with_file_name(format!(
            "compare-{}",
            d.file_name().unwrap().to_string_lossy()
        ))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let model_dir = args
        .model
        .clone()
        .unwrap_or_else(|| embedded("assets/tiny-coder"));
    if !model_dir.join("config.json").exists() {
        anyhow::bail!(
            "no model at {}: pass --model DIR (an HF directory, e.g. from examples/pretrain_tiny.rs)",
            model_dir.display()
        );
    }
    if args.seeds.is_empty() {
        anyhow::bail!("--seeds needs at least one value");
    }
    let kinds = if args.estimators.is_empty() {
        EstimatorKind::ALL.to_vec()
    } else {
        args.estimators
            .iter()
            .map(|s| s.parse::<EstimatorKind>())
            .collect::<coupled_grpo::Result<Vec<_>>>()?
    };

    let mut rows = Vec::new();
    let mut curves = Vec::new();
    for &kind in &kinds {
        let mut summaries: Vec<RunSummary> = Vec::new();
        for &seed in &args.seeds {
            let config = config_for(&args, &model_dir, kind, seed)?;
            let dir = out.join(format!("{}-seed{seed}", kind.name()));
            // Compared as configs, not text: a field added later with its default still matches.
            let resolved = dir.join("config.resolved.toml");
            let done = !args.fresh
                && TrainConfig::load(&resolved, &[]).is_ok_and(|c| c == config)
                && dir.join("summary.json").exists();
            if done {
                println!("== {} seed {seed}: reusing {}", kind.name(), dir.display());
                summaries.push(RunSummary::load(&dir)?);
            } else {
                println!("== {} seed {seed} -> {}", kind.name(), dir.display());
                summaries.push(run_one(&args, config, &dir)?);
            }
            let s = summaries.last().unwrap();
            println!(
                "   pass@1 {:.3} -> {:.3}, reward {:.3} -> {:.3}, {:.0}s",
                s.pass_at_1_before,
                s.pass_at_1_after,
                s.reward_first,
                s.reward_last,
                s.wall_seconds
            );
        }
        let config = config_for(&args, &model_dir, kind, args.seeds[0])?;
        let variance = score_variance(&config, args.variance_seeds)?;
        let after: Vec<f64> = summaries.iter().map(|s| s.pass_at_1_after).collect();
        rows.push(Row {
            estimator: kind.name().into(),
            seeds: args.seeds.clone(),
            rounds: config.grpo.max_steps,
            pass_at_1_before: mean(summaries.iter().map(|s| s.pass_at_1_before)),
            pass_at_1_after: mean(after.iter().copied()),
            pass_at_1_after_std: std(&after),
            reward_last: mean(summaries.iter().map(|s| s.reward_last)),
            score_variance: variance,
            forward_passes_per_sequence: config.estimator.build()?.passes_per_sequence(),
            estimator_forward_passes_per_step: mean(
                summaries
                    .iter()
                    .map(|s| s.estimator_forward_passes_per_step),
            ),
            train_seconds_per_run: mean(summaries.iter().map(|s| s.train_seconds)),
        });
        let runs: Vec<Vec<(f64, f64)>> = summaries
            .iter()
            .map(|s| s.rewards.iter().map(|&(x, y)| (x as f64, y)).collect())
            .collect();
        curves.push(Series::mean_band(kind.name(), &runs, false).smoothed(0.3));
    }

    let chart = Chart {
        title: format!(
            "reward per round (EMA 0.3; mean ± sd over seeds {:?})",
            args.seeds
        ),
        x_label: "round".into(),
        y_label: "reward".into(),
        series: curves,
        y_range: None,
    };
    write_svg(&out.join("rewards.svg"), &[chart], 1)?;
    let table = markdown_table(&rows, &args);
    write_atomic(&out.join("table.md"), table.as_bytes())?;
    let json = serde_json::to_string_pretty(&rows)?;
    write_atomic(&out.join("results.json"), json.as_bytes())?;
    println!("\n{table}");
    println!(
        "wrote {}/{{rewards.svg, table.md, results.json}}",
        out.display()
    );
    Ok(())
}

fn config_for(
    args: &Args,
    model: &std::path::Path,
    kind: EstimatorKind,
    seed: u64,
) -> Result<TrainConfig> {
    let mut overrides = vec![
        format!("model.path={}", toml_str(model)),
        format!("estimator.kind=\"{}\"", kind.name()),
        format!("grpo.seed={seed}"),
        format!("rollout.seed={seed}"),
    ];
    if let Some(n) = args.max_steps {
        overrides.push(format!("grpo.max_steps={n}"));
    }
    overrides.extend(args.set.iter().cloned());
    Ok(TrainConfig::from_toml_str(
        DEFAULT_CONFIG,
        &overrides,
        Some(std::path::Path::new("examples/configs/acecoder_rl.toml")),
    )?)
}

fn run_one(args: &Args, config: TrainConfig, dir: &std::path::Path) -> Result<RunSummary> {
    let (train, held_out) = split_tasks(&config, args.eval_tasks)?;
    let evaluator = Evaluator::new(
        Pool::new(build_executor(&config)?, config.sandbox.workers),
        sandbox_limits(&config),
    );
    let options = RunOptions {
        max_steps: config.grpo.max_steps,
        eval_every: 0,
        eval_tasks: held_out,
        eval: eval_config(&config),
        progress: false,
        save_checkpoint: false,
    };
    let mut trainer = Trainer::<CpuAutodiff>::with_tasks(config, train, Default::default())?;
    Ok(run_with_eval(&mut trainer, &evaluator, &options, dir)?)
}

/// Per-token variance of the estimator's scores across mask seeds, on one rollout batch of the
/// initial model (the first round's prompts and rollout settings), averaged over the
/// completion tokens up to and including `<|im_end|>`.
fn score_variance(config: &TrainConfig, seeds: u64) -> Result<f64> {
    let device = Default::default();
    let model = load_pretrained::<Cpu>(&config.model.path, &device)?;
    let tokenizer = load_tokenizer(&config.model.path, model.config())?;
    let tasks = load_tasks(config)?;
    // The trainer's prompt: the evaluation's training style builds it the same way.
    let style = eval_config(config);
    let prompts = tasks
        .iter()
        .take(config.grpo.prompts_per_step)
        .map(|t| Evaluator::prompt(model.config().family, t, &style))
        .collect::<coupled_grpo::Result<Vec<_>>>()?;
    let batch = generate(&model, &tokenizer, &prompts, &config.rollout)?;
    let score_batch = ScoreBatch::new(
        batch.prompt_ids.clone(),
        batch.prompt_mask.clone(),
        batch.completion_ids.clone(),
    )?;
    let estimator = config.estimator.build()?;
    let draws = (0..seeds.max(2))
        .map(|s| {
            let scores = estimator.score(&model, &score_batch, MaskSeed::new(s, 0, 0))?;
            Ok(host(scores.per_token))
        })
        .collect::<coupled_grpo::Result<Vec<Vec<f32>>>>()?;
    let k = score_batch.completion_len();
    let (mut sum, mut count) = (0.0f64, 0usize);
    for (r, mask) in batch.completion_mask.iter().enumerate() {
        for (j, &m) in mask.iter().enumerate() {
            if m == 0 {
                continue;
            }
            let xs: Vec<f64> = draws.iter().map(|d| f64::from(d[r * k + j])).collect();
            sum += std(&xs).powi(2);
            count += 1;
        }
    }
    Ok(sum / count.max(1) as f64)
}

fn host<B: Backend>(t: burn::tensor::Tensor<B, 2>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("f32 scores")
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = xs.collect();
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Sample standard deviation (0 for fewer than two values).
fn std(xs: &[f64]) -> f64 {
    if xs.len() < 2 {
        return 0.0;
    }
    let m = mean(xs.iter().copied());
    (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len() - 1) as f64).sqrt()
}

fn markdown_table(rows: &[Row], args: &Args) -> String {
    let mut t = format!(
        "Seeds {:?}, {} rounds each, {} held-out tasks (greedy pass@1).\n\n\
         | estimator | pass@1 before | pass@1 after (± sd) | final reward | per-token score variance | passes / sequence | scoring passes / round | train s / run |\n\
         |---|---|---|---|---|---|---|---|\n",
        args.seeds, rows[0].rounds, args.eval_tasks
    );
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {:.3} | {:.3} ± {:.3} | {:.3} | {:.4} | {} | {:.0} | {:.0} |",
            r.estimator,
            r.pass_at_1_before,
            r.pass_at_1_after,
            r.pass_at_1_after_std,
            r.reward_last,
            r.score_variance,
            r.forward_passes_per_sequence,
            r.estimator_forward_passes_per_step,
            r.train_seconds_per_run
        );
    }
    t
}
