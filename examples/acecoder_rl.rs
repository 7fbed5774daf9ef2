//! The main job: coupled-GRPO on a masked-diffusion coder, with held-out pass@1 before and
//! after.
//!
//! With no arguments it runs on the embedded default (a ~1M-parameter diffusion coder in
//! `assets/tiny-coder`, pretrained by `examples/pretrain_tiny.rs` on the synthetic toy domain of
//! `coupled_grpo::data::synthetic`) with the wasm sandbox, and finishes in minutes on a laptop:
//!
//! ```text
//! cargo run --release --example acecoder_rl
//! cargo run --release --example acecoder_rl -- --estimator d1 --seed 1 --out runs/d1-s1
//! cargo run --release --example acecoder_rl -- --model DIR --data acecoder.parquet --hard \
//!     --config my.toml --backend cuda --max-steps 100
//! ```
//!
//! `--model DIR` takes any HF DiffuCoder/Dream directory (config.json, safetensors,
//! tokenizer.json); `--data FILE` AceCoder parquet/JSONL (the last `--eval-tasks` rows are held
//! out for evaluation and never trained on). `--config FILE` replaces the embedded tiny-model
//! config (`examples/configs/acecoder_rl.toml`); flags override the file.
//!
//! The run directory (`--out`, default `runs/<UTC timestamp>`) gets config.resolved.toml,
//! metrics.jsonl, evals.jsonl, completions.jsonl, the final checkpoint, curves.svg and
//! summary.json (`pass_at_1_before`, `pass_at_1_after`, `steps`, `estimator`, `seed`, …).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::Parser;

use coupled_grpo::eval::Evaluator;
use coupled_grpo::grpo::trainer::{build_executor, sandbox_limits};
use coupled_grpo::grpo::{parallel, run_with_eval, DeviceSpec, RunOptions, TrainConfig, Trainer};
use coupled_grpo::sandbox::Pool;

mod common;
use common::{default_run_dir, embedded, eval_config, split_tasks, toml_str};

const DEFAULT_CONFIG: &str = include_str!("configs/acecoder_rl.toml");

#[derive(Parser, Debug)]
#[command(about = "coupled-GRPO with held-out pass@1 before and after")]
struct Args {
    /// HF model directory (default: the embedded assets/tiny-coder).
    #[arg(long)]
    model: Option<PathBuf>,
    /// AceCoder parquet/JSONL file or directory (default: the synthetic toy domain).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Keep only AceCoder's hard subset (the released filter).
    #[arg(long)]
    hard: bool,
    /// Training config (TOML); default: the embedded tiny-model config.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data-parallel workers: `cpu`, `cpu:N`, and in builds with the `cuda` feature `cuda`,
    /// `cuda:0,1,…` or `cuda:all` (a round's prompts are split across them).
    #[arg(long, alias = "backend", default_value = "cpu")]
    devices: DeviceSpec,
    /// coupled | decoupled | d1 | full_mask.
    #[arg(long)]
    estimator: Option<String>,
    /// Seed of the rollouts, the masks and the task order.
    #[arg(long)]
    seed: Option<u64>,
    /// Rollout rounds.
    #[arg(long)]
    max_steps: Option<u64>,
    /// Held-out tasks evaluated before, during and after training.
    #[arg(long, default_value_t = 100)]
    eval_tasks: usize,
    /// Evaluate every N rounds (0 = before and after only; default: a quarter of the run).
    #[arg(long)]
    eval_every: Option<u64>,
    /// Run directory (default: runs/<UTC timestamp>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Override any config value: `--set grpo.beta=0.02`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Evaluate with the rollouts' cache and parallel decoding (greedy) instead of exact
    /// greedy decoding.
    #[arg(long)]
    eval_as_rollouts: bool,
    /// No progress bar (for logs).
    #[arg(long)]
    quiet: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    args.devices.check_build()?;
    match &args.devices {
        DeviceSpec::Cpu(n) => {
            run::<coupled_grpo::backend::CpuAutodiff>(&args, vec![Default::default(); *n])
        }
        #[cfg(feature = "cuda")]
        cuda => {
            let devices = coupled_grpo::backend::cuda_devices(cuda)?;
            run::<coupled_grpo::backend::CudaAutodiff>(&args, devices)
        }
        #[cfg(not(feature = "cuda"))]
        _ => unreachable!("check_build refuses CUDA without the feature"),
    }
}

fn run<B: AutodiffBackend>(args: &Args, devices: Vec<B::Device>) -> Result<()> {
    let config = resolve_config(args)?;
    args.devices.check_prompts(config.grpo.prompts_per_step)?;
    let (train_tasks, eval_tasks) = split_tasks(&config, args.eval_tasks)?;
    let out = args.out.clone().unwrap_or_else(default_run_dir);
    println!(
        "model {} | {} training tasks, {} held-out | estimator {} | seed {} | {} rounds of {}×{} rollouts | sandbox {} | out {}",
        config.model.path.display(),
        train_tasks.len(),
        eval_tasks.len(),
        config.estimator.kind.name(),
        config.grpo.seed,
        config.grpo.max_steps,
        config.grpo.prompts_per_step,
        config.rollout.num_completions,
        config.sandbox.executor,
        out.display()
    );
    let evaluator = Evaluator::new(
        Pool::new(build_executor(&config)?, config.sandbox.workers),
        sandbox_limits(&config),
    );
    let mut eval = eval_config(&config);
    if args.eval_as_rollouts {
        eval.rollout = coupled_grpo::rollout::RolloutConfig {
            cache: config.rollout.cache,
            cache_refresh: config.rollout.cache_refresh,
            confidence_threshold: config.rollout.confidence_threshold,
            max_tokens_per_step: config.rollout.max_tokens_per_step,
            early_completion: config.rollout.early_completion,
            ..eval.rollout
        };
    }
    let max_steps = config.grpo.max_steps;
    let options = RunOptions {
        max_steps,
        eval_every: args.eval_every.unwrap_or((max_steps / 4).max(1)),
        eval_tasks,
        eval,
        progress: !args.quiet,
        save_checkpoint: true,
    };
    let build = |_rank: usize, device: &B::Device| {
        Trainer::<B>::with_tasks(config.clone(), train_tasks.clone(), device.clone())
    };
    let body = |trainer: &mut Trainer<B>| run_with_eval(trainer, &evaluator, &options, &out);
    let summary = parallel::run(&devices, build, body)?;
    println!(
        "held-out pass@1: {:.3} -> {:.3} ({:+.1} points) | reward {:.3} -> {:.3} | {} rounds in {:.0}s (+{:.0}s evaluating)",
        summary.pass_at_1_before,
        summary.pass_at_1_after,
        100.0 * (summary.pass_at_1_after - summary.pass_at_1_before),
        summary.reward_first,
        summary.reward_last,
        summary.steps,
        summary.train_seconds,
        summary.eval_seconds
    );
    println!(
        "wrote {} (summary.json, curves.svg, metrics.jsonl, evals.jsonl, checkpoints/)",
        out.display()
    );
    Ok(())
}

/// The embedded config (or `--config`), with the flags applied on top.
fn resolve_config(args: &Args) -> Result<TrainConfig> {
    let mut overrides = Vec::new();
    let mut set = |k: &str, v: String| overrides.push(format!("{k}={v}"));
    let model = match &args.model {
        Some(dir) => dir.clone(),
        None if args.config.is_none() => {
            let dir = embedded("assets/tiny-coder");
            if !dir.join("config.json").exists() {
                bail!(
                    "the embedded model {} is not in this checkout: pass --model DIR, e.g. a \
                     directory written by `cargo run --release --example pretrain_tiny -- --out DIR`",
                    dir.display()
                );
            }
            dir
        }
        None => PathBuf::new(),
    };
    if !model.as_os_str().is_empty() {
        set("model.path", toml_str(&model));
    }
    if let Some(data) = &args.data {
        set("data.path", toml_str(data));
        set("data.format", "\"acecoder\"".into());
        set("data.hard", args.hard.to_string());
    } else if args.hard {
        bail!("--hard filters AceCoder data: give --data FILE too");
    }
    if let Some(e) = &args.estimator {
        set("estimator.kind", format!("\"{e}\""));
    }
    if let Some(seed) = args.seed {
        set("grpo.seed", seed.to_string());
        set("rollout.seed", seed.to_string());
    }
    if let Some(n) = args.max_steps {
        set("grpo.max_steps", n.to_string());
    }
    overrides.extend(args.set.iter().cloned());
    let config = match &args.config {
        Some(path) => TrainConfig::load(path, &overrides)?,
        None => TrainConfig::from_toml_str(
            DEFAULT_CONFIG,
            &overrides,
            Some(Path::new("examples/configs/acecoder_rl.toml")),
        )?,
    };
    Ok(config)
}
