//! `coupled-grpo train`: coupled-GRPO (or a baseline estimator) from a TOML config.

use std::path::PathBuf;

use anyhow::{bail, Context};
use burn::tensor::backend::AutodiffBackend;
use coupled_grpo::estimator::LikelihoodEstimator;
use coupled_grpo::grpo::checkpoint::list_checkpoints;
use coupled_grpo::grpo::{parallel, DeviceSpec, TrainConfig, Trainer};

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
    /// Data-parallel workers: `cpu`, `cpu:N` (N workers on the CPU), and in builds with the
    /// `cuda` feature `cuda`, `cuda:0,1,2,3` or `cuda:all`. A round's prompts are split across
    /// the workers; the result does not depend on their number.
    #[arg(long, alias = "device", default_value = "cpu")]
    devices: DeviceSpec,
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
    // Every check that needs no device runs before any work starts.
    config.validate()?;
    args.devices.check_build()?;
    args.devices.check_prompts(config.grpo.prompts_per_step)?;
    match &args.devices {
        DeviceSpec::Cpu(n) => {
            if args.kernel_cache.is_some() {
                bail!("--kernel-cache only applies to CUDA devices");
            }
            let devices = vec![Default::default(); *n];
            train::<coupled_grpo::backend::CpuAutodiff>(config, args.out, resume, devices)
        }
        #[cfg(feature = "cuda")]
        cuda => {
            // Before the first CUDA tensor: CubeCL reads its configuration once.
            let cache =
                (args.kernel_cache.clone()).unwrap_or_else(|| args.out.join("kernel-cache"));
            coupled_grpo::backend::configure_cubecl(Some(&cache), None);
            let devices = coupled_grpo::backend::cuda_devices(cuda)?;
            train::<coupled_grpo::backend::CudaAutodiff>(config, args.out, resume, devices)
        }
        #[cfg(not(feature = "cuda"))]
        _ => unreachable!("check_build refuses CUDA without the feature"),
    }
}

fn train<B: AutodiffBackend>(
    config: TrainConfig,
    out: PathBuf,
    resume: Option<PathBuf>,
    devices: Vec<B::Device>,
) -> anyhow::Result<()> {
    let max_steps = config.grpo.max_steps;
    let build = |_rank: usize, device: &B::Device| match &resume {
        Some(dir) => Trainer::<B>::resume(config.clone(), dir, device.clone()),
        None => Trainer::<B>::new(config.clone(), device.clone()),
    };
    let body = |trainer: &mut Trainer<B>| {
        if trainer.is_lead() {
            banner(trainer, max_steps, resume.as_deref(), devices.len());
        }
        let last = trainer.fit(&out, max_steps)?;
        Ok((last, trainer.current_step()))
    };
    let (last, step) = parallel::run(&devices, build, body).with_context(|| match &resume {
        Some(dir) => format!("resuming from {}", dir.display()),
        None => "training".into(),
    })?;
    match last {
        Some(s) => eprintln!(
            "done: round {} · reward {:.3} · kl {:.5} · grad_norm {:.4} · {:.1}s/round · metrics in {}",
            s.step,
            s.reward,
            s.kl,
            s.grad_norm,
            s.step_time,
            out.join(&config.logging.metrics_file).display()
        ),
        None => eprintln!("nothing to do: already at round {step}"),
    }
    Ok(())
}

fn banner<B: AutodiffBackend>(
    trainer: &Trainer<B>,
    max_steps: u64,
    resume: Option<&std::path::Path>,
    workers: usize,
) {
    let c = trainer.config();
    let rows = c.grpo.prompts_per_step * c.rollout.num_completions;
    eprintln!(
        "coupled-grpo train: {} ({} parameters) · estimator {} ({} passes/sequence) · {} prompts × {} completions = {rows} rows/round · μ = {} · GA = {} · β = {} · {} rounds{}{}",
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
        if workers > 1 {
            format!(" · {workers} workers")
        } else {
            String::new()
        },
        resume
            .map(|d| format!(" (resumed at round {} from {})", trainer.current_step(), d.display()))
            .unwrap_or_default(),
    );
}
