//! `coupled-grpo eval`: pass@k of a model on HumanEval, MBPP or the synthetic toy domain,
//! through the sandbox, with the AR-ness of its rollouts.
//!
//! HumanEval and MBPP use the paper's evaluation templates (assistant prefill); the synthetic
//! domain uses the training prompt. Defaults are the paper's evaluation decoding (greedy,
//! 512 tokens, one token per step) for the benchmarks.

use std::path::PathBuf;

use anyhow::{bail, Context};
use burn::tensor::DType;
use clap::ValueEnum;
use coupled_grpo::backend::Cpu;
use coupled_grpo::data::synthetic::{Generator, Split};
use coupled_grpo::data::{self, OnError, Task};
use coupled_grpo::eval::{EvalConfig, Evaluator, PromptStyle};
use coupled_grpo::model::{load_tokenizer, load_with_adapter};
use coupled_grpo::rollout::{Alg, RolloutConfig};

use crate::reward::SandboxArgs;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Bench {
    Humaneval,
    Mbpp,
    Synthetic,
}

#[derive(clap::Args)]
pub struct Args {
    /// HF model directory (config.json, safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// A PEFT LoRA adapter directory to run on top of the model (unmerged).
    #[arg(long)]
    adapter: Option<PathBuf>,
    #[arg(long, value_enum)]
    bench: Bench,
    /// Data file (default: the vendored HumanEval / MBPP under assets/data).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Evaluate only the first N tasks (synthetic: draw N held-out problems; default 100).
    #[arg(long)]
    limit: Option<usize>,
    /// Samples per task.
    #[arg(long, default_value_t = 1)]
    n: usize,
    /// pass@k to report (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize])]
    k: Vec<usize>,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long)]
    top_p: Option<f32>,
    /// Completion length (default: 512 for the benchmarks, 48 for synthetic).
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Denoising steps (default: max-new-tokens, one token per step).
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long, default_value = "entropy")]
    alg: Alg,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 512)]
    max_prompt_length: usize,
    /// Tasks decoded together.
    #[arg(long, default_value_t = 8)]
    batch_tasks: usize,
    #[command(flatten)]
    sandbox: SandboxArgs,
    /// Write the full report (per task, samples) as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.n == 0 {
        bail!("--n must be at least 1");
    }
    if args.temperature == 0.0 && args.n > 1 {
        bail!(
            "--n {} with --temperature 0 draws the same greedy sample n times; set a temperature",
            args.n
        );
    }
    let device = Default::default();
    let model = load_with_adapter::<Cpu>(&args.model, args.adapter.as_deref(), &device, DType::F32)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let tokenizer = load_tokenizer(&args.model, model.config())?;
    let tasks = load(&args)?;
    let synthetic = args.bench == Bench::Synthetic;
    let k = args
        .max_new_tokens
        .unwrap_or(if synthetic { 48 } else { 512 });
    let config = EvalConfig {
        samples_per_task: args.n,
        ks: args.k.clone(),
        rollout: RolloutConfig {
            max_new_tokens: k,
            steps: args.steps.unwrap_or(k),
            temperature: args.temperature,
            top_p: args.top_p,
            top_k: None,
            alg: args.alg,
            seed: args.seed,
            max_prompt_length: args.max_prompt_length,
            truncate_text: !synthetic,
            ..RolloutConfig::default()
        },
        prompt_style: if synthetic {
            PromptStyle::Training
        } else {
            PromptStyle::Benchmark
        },
        tasks_per_batch: args.batch_tasks,
        ..EvalConfig::default()
    };
    let (pool, limits) = args.sandbox.pool_and_limits()?;
    let evaluator = Evaluator::new(pool, limits);
    eprintln!(
        "evaluating {} on {} {:?} tasks: n {}, K {}, {} steps, temperature {}",
        args.model.display(),
        tasks.len(),
        args.bench,
        args.n,
        k,
        config.rollout.steps,
        args.temperature
    );
    let report = evaluator.evaluate(&model, &tokenizer, &tasks, &config)?;
    for (name, v) in &report.pass_at_k {
        println!("{name}: {:.4}", v);
    }
    println!(
        "mean pass rate {:.4} | readable code {:.3} | {} tasks x {} samples | {} forward passes in {:.1}s",
        report.mean_pass_rate,
        report.format_ok,
        report.tasks,
        report.samples_per_task,
        report.forward_passes,
        report.seconds
    );
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "local AR-ness@1..{}: {}",
        report.local_ar.len(),
        fmt(&report.local_ar)
    );
    println!(
        "global AR-ness@1..{}: {}",
        report.global_ar.len(),
        fmt(&report.global_ar)
    );
    if let Some(path) = &args.out {
        let json = serde_json::to_string_pretty(&report)?;
        coupled_grpo::util::write_atomic(path, json.as_bytes())?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn load(args: &Args) -> anyhow::Result<Vec<Task>> {
    let asset = |rel: &str| {
        let p = PathBuf::from(rel);
        if p.exists() {
            p
        } else {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
        }
    };
    let mut tasks = match args.bench {
        Bench::Humaneval => {
            let path = args
                .data
                .clone()
                .unwrap_or_else(|| asset("assets/data/humaneval/HumanEval.jsonl.gz"));
            data::humaneval::load(&path, OnError::Fail)?.rows
        }
        Bench::Mbpp => {
            let path = args
                .data
                .clone()
                .unwrap_or_else(|| asset("assets/data/mbpp/mbpp.jsonl"));
            let opts = data::mbpp::MbppOptions {
                split: "test".parse()?,
                ..Default::default()
            };
            data::mbpp::load(&path, &opts)?.rows
        }
        Bench::Synthetic => {
            if args.data.is_some() {
                bail!("--data does not apply to --bench synthetic (the tasks are generated)");
            }
            return Ok(Generator::new(Split::HeldOut, 0).distinct(args.limit.unwrap_or(100))?);
        }
    };
    if let Some(n) = args.limit {
        tasks.truncate(n);
    }
    if tasks.is_empty() {
        bail!("no tasks to evaluate");
    }
    Ok(tasks)
}
