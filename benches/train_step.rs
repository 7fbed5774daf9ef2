//! One coupled-GRPO rollout round on a small model, broken into phases, for the coupled
//! estimator (3 passes per sequence) against d1 (1 pass): the cost of the two extra passes.
//!
//!     cargo bench --bench train_step                      # small preset, 2 prompts x 4, K = 64
//!     cargo bench --bench train_step -- --rounds 3 --k 128 --steps 64 --prompts 2 --g 4
//!     cargo bench --features cuda --bench train_step -- --device cuda --preset qwen2.5-0.5b \
//!         --reward length --k 256 --steps 64 --prompts 4 --g 8
//!
//! Phases (seconds per round, median over rounds after one warm-up round):
//! rollout (diffusion decoding), reward (format regex + sandbox), old/ref (no-grad scoring of
//! π_old and π_ref for μ iterations), forward (scoring with the autodiff graph + loss), backward,
//! optimizer (global clip + AdamW). `--reward sandbox` (default with the `wasm` feature) is the
//! released combination over the wasm sandbox; `--reward length` a sandbox-free stand-in.
//! Presets with a Qwen-sized vocabulary use the vendored Qwen tokenizer, others the byte-level one.
//! `--data FILE` / `--tokenizer FILE` point at MBPP / the Qwen tokenizer when the binary runs
//! outside this source tree.

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::DType;
use coupled_grpo::data::{self, Task};
use coupled_grpo::grpo::{Rewards, StepStats, TrainConfig, Trainer, WeightedReward};
use coupled_grpo::model::{
    byte_level_tokenizer, vendored_qwen_tokenizer, DiffusionLm, ModelConfig, Tokenizer,
};
use coupled_grpo::perf::{arg, median};
use coupled_grpo::reward::RewardFn;

/// A sandbox-free reward (completion length), so the bench runs where the sandbox cannot.
struct Length;

impl RewardFn for Length {
    fn name(&self) -> &str {
        "length"
    }
    fn score(&self, completions: &[String], _: &[&Task]) -> coupled_grpo::Result<Vec<Option<f32>>> {
        Ok(completions
            .iter()
            .map(|c| Some(c.len() as f32 / 100.0))
            .collect())
    }
}

fn rewards(config: &TrainConfig, kind: &str) -> Rewards {
    if kind == "sandbox" {
        let executor =
            coupled_grpo::grpo::trainer::build_executor(config).expect("sandbox executor");
        return Rewards::combined(
            executor,
            config.sandbox.workers,
            coupled_grpo::grpo::trainer::sandbox_limits(config),
            config.reward.weights,
        );
    }
    Rewards::Functions(vec![WeightedReward {
        reward: std::sync::Arc::new(Length),
        weight: 1.0,
    }])
}

fn main() {
    match arg("--device", "cpu".to_string()).as_str() {
        "cpu" => run::<coupled_grpo::backend::CpuAutodiff>(Default::default(), "CPU flex"),
        #[cfg(feature = "cuda")]
        "cuda" => run::<coupled_grpo::backend::CudaAutodiff>(Default::default(), "CUDA"),
        other => panic!("unknown --device {other} (cpu, or cuda with the `cuda` feature)"),
    }
}

fn run<B: AutodiffBackend>(device: B::Device, device_name: &str) {
    let preset: String = arg("--preset", "small".to_string());
    let rounds: usize = arg("--rounds", 3);
    let prompts: usize = arg("--prompts", 2);
    let g: usize = arg("--g", 4);
    let k: usize = arg("--k", 64);
    let steps: usize = arg("--steps", 32);
    let plen: usize = arg("--prompt-len", 128);
    let micro: usize = arg("--micro-batch-rows", 0);
    let default_reward = if cfg!(feature = "wasm") {
        "sandbox"
    } else {
        "length"
    };
    let reward_kind: String = arg("--reward", default_reward.to_string());
    let dtype = if arg("--dtype", "f32".to_string()) == "bf16" {
        DType::BF16
    } else {
        DType::F32
    };
    let model_config = ModelConfig::preset(&preset).expect("preset");
    let tokenizer = if model_config.vocab_size > 151_000 {
        let path: String = arg(
            "--tokenizer",
            vendored_qwen_tokenizer().display().to_string(),
        );
        Tokenizer::from_file(path).expect("Qwen tokenizer")
    } else {
        byte_level_tokenizer().expect("tokenizer")
    };
    // Paths default to this source tree; pass --data / --tokenizer when running elsewhere.
    let data_path: String = arg("--data", data::mbpp::vendored_path().display().to_string());
    let tasks: Vec<Task> = data::mbpp::load(
        std::path::Path::new(&data_path),
        &data::mbpp::MbppOptions {
            split: data::mbpp::Split::Train,
            ..Default::default()
        },
    )
    .expect("vendored MBPP")
    .rows
    .into_iter()
    .take(64)
    .collect();
    println!(
        "train_step bench: preset {preset} ({} params, vocab {}, {dtype:?}), {prompts} prompts x G={g} = {} rows, K={k}, {steps} decode steps, prompt ≤ {plen} tokens, μ=2, GA=2, micro-batch {micro}, reward {reward_kind}, {device_name}, {} CPU threads",
        model_config.num_parameters(),
        model_config.vocab_size,
        prompts * g,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{:<9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "estimator",
        "rollout",
        "reward",
        "old/ref",
        "forward",
        "backward",
        "optim",
        "total",
        "passes"
    );
    let mut totals = Vec::new();
    for kind in ["coupled", "d1"] {
        let overrides: Vec<String> = [
            format!("estimator.kind={kind}"),
            format!("rollout.max_new_tokens={k}"),
            format!("rollout.steps={steps}"),
            format!("rollout.num_completions={g}"),
            format!("rollout.max_prompt_length={plen}"),
            format!("grpo.prompts_per_step={prompts}"),
            format!("grpo.micro_batch_rows={micro}"),
            "grpo.num_iterations=2".into(),
            "grpo.gradient_accumulation_steps=2".into(),
            "optimizer.lr=1e-5".into(),
            "logging.progress=false".into(),
            "logging.completions_every=0".into(),
            "sandbox.workers=2".into(),
        ]
        .into();
        let config = TrainConfig::from_toml_str("", &overrides, None).expect("config");
        let policy = DiffusionLm::<B>::init_with(&model_config, &device, 0, dtype);
        let rewards = rewards(&config, &reward_kind);
        let mut trainer = Trainer::from_parts(
            config,
            policy,
            tokenizer.clone(),
            tasks.clone(),
            rewards,
            device.clone(),
        )
        .expect("trainer");
        let mut stats: Vec<StepStats> = Vec::new();
        for r in 0..=rounds {
            let s = trainer.step().expect("round");
            // Per-round progress, so a run cut off by a time limit still says something.
            eprintln!(
                "  {kind} round {r}{}: {:.2}s (rollout {:.2}s, old/ref {:.2}s, update {:.2}s)",
                if r == 0 { " (warm-up)" } else { "" },
                s.step_time,
                s.rollout_time,
                s.old_ref_time,
                s.update_time
            );
            if r > 0 {
                stats.push(s);
            }
        }
        let col = |f: &dyn Fn(&StepStats) -> f64| median(stats.iter().map(f).collect());
        let forward = col(&|s| s.iterations.iter().map(|i| i.forward_time).sum());
        let backward = col(&|s| s.iterations.iter().map(|i| i.backward_time).sum());
        let optim = col(&|s| s.iterations.iter().map(|i| i.optimizer_time).sum());
        let old_ref = col(&|s| s.old_ref_time);
        let total = col(&|s| s.step_time);
        println!(
            "{kind:<9} {:>8.3} {:>8.3} {old_ref:>8.3} {forward:>8.3} {backward:>8.3} {optim:>8.3} {total:>8.3} {:>9}",
            col(&|s| s.rollout_time),
            col(&|s| s.reward_time),
            stats[0].estimator_forward_passes
        );
        totals.push((total, old_ref + forward + backward));
    }
    let (c, d) = (totals[0], totals[1]);
    println!(
        "coupled / d1: round {:.2}x, scoring+backward {:.2}x (seconds per round, median of {rounds})",
        c.0 / d.0,
        c.1 / d.1
    );
}
