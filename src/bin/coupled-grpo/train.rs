//! `coupled-grpo train`: coupled-GRPO (or a baseline estimator) from a TOML config.

use std::path::PathBuf;

use anyhow::{bail, Context};
use burn::tensor::backend::AutodiffBackend;
use coupled_grpo::estimator::LikelihoodEstimator;
use coupled_grpo::grpo::checkpoint::list_checkpoints;
use coupled_grpo::grpo::{TrainConfig, Trainer};

#[derive(clap::Args)]
pub struct Args {
    /// Training config (TOML; every field has a default, see examples/configs/tiny.toml).
    #[arg(long)]
    config: PathBuf,
    /// Run directory: config.resolved.toml, metrics.jsonl, completions.jsonl, checkpoints/.
    #[arg(long)]
    out: PathBuf,
    /// Rollout rounds to train for (overrides grpo.max_steps).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Continue from a checkpoint directory (`RUN/checkpoints/step-N`), or `latest` for the
    /// newest checkpoint under --out.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Override a config value: `--set grpo.beta=0.02 --set estimator.kind=d1`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// `cpu`, or `cuda` in builds with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// CUDA only: keep compiled kernels and autotune results in this directory, so a restarted
    /// or resumed run skips their JIT compilation (default: `<out>/kernel-cache`).
    #[arg(long)]
    kernel_cache: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut config = TrainConfig::load(&args.config, &args.set)?;
    if let Some(n) = args.max_steps {
        config.grpo.max_steps = n;
    }
    let resume = match &args.resume {
        Some(p) if p.as_os_str() == "latest" => Some(
            list_checkpoints(&args.out)?
                .pop()
                .map(|(_, p)| p)
                .with_context(|| format!("no checkpoint under {}", args.out.display()))?,
        ),
        other => other.clone(),
    };
    if args.device != "cuda" && args.kernel_cache.is_some() {
        bail!("--kernel-cache only applies to --device cuda");
    }
    match args.device.as_str() {
        "cpu" => train::<coupled_grpo::backend::CpuAutodiff>(
            config,
            args.out,
            resume,
            Default::default(),
        ),
        #[cfg(feature = "cuda")]
        "cuda" => {
            // Before the first CUDA tensor: CubeCL reads its configuration once.
            let cache =
                (args.kernel_cache.clone()).unwrap_or_else(|| args.out.join("kernel-cache"));
            coupled_grpo::backend::configure_cubecl(Some(&cache), None);
            train::<coupled_grpo::backend::CudaAutodiff>(
                config,
                args.out,
                resume,
                Default::default(),
            )
        }
        other => bail!(
            "unknown device `{other}` (cpu{})",
            if cfg!(feature = "cuda") { ", cuda" } else { "" }
        ),
    }
}

fn train<B: AutodiffBackend>(
    config: TrainConfig,
    out: PathBuf,
    resume: Option<PathBuf>,
    device: B::Device,
) -> anyhow::Result<()> {
    let max_steps = config.grpo.max_steps;
    let mut trainer = match &resume {
        Some(dir) => Trainer::<B>::resume(config, dir, device)
            .with_context(|| format!("resuming from {}", dir.display()))?,
        None => Trainer::<B>::new(config, device)?,
    };
    let c = trainer.config();
    let rows = c.grpo.prompts_per_step * c.rollout.num_completions;
    eprintln!(
        "coupled-grpo train: {} ({} parameters) · estimator {} ({} passes/sequence) · {} prompts × {} completions = {rows} rows/round · μ = {} · GA = {} · β = {} · {} rounds{}",
        c.model.path.display(),
        trainer.policy().config().num_parameters(),
        trainer.estimator().name(),
        trainer.estimator().passes_per_sequence(),
        c.grpo.prompts_per_step,
        c.rollout.num_completions,
        c.grpo.num_iterations,
        c.grpo.gradient_accumulation_steps,
        c.grpo.beta,
        max_steps,
        resume
            .as_ref()
            .map(|d| format!(" (resumed at round {} from {})", trainer.current_step(), d.display()))
            .unwrap_or_default(),
    );
    let last = trainer.fit(&out, max_steps)?;
    match last {
        Some(s) => eprintln!(
            "done: round {} · reward {:.3} · kl {:.5} · grad_norm {:.4} · {:.1}s/round · metrics in {}",
            s.step,
            s.reward,
            s.kl,
            s.grad_norm,
            s.step_time,
            out.join(&trainer.config().logging.metrics_file).display()
        ),
        None => eprintln!("nothing to do: already at round {}", trainer.current_step()),
    }
    Ok(())
}
