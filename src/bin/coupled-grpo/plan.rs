//! `coupled-grpo plan`: the memory plan of one coupled-GRPO update (bytes per device by part)
//! and whether it fits an 80 GB or a 141 GB device.

use burn::tensor::DType;
use clap::builder::PossibleValuesParser;
use clap::Args as ClapArgs;
use coupled_grpo::estimator::DEFAULT_MAX_LOGIT_BYTES;
use coupled_grpo::model::lora::DEFAULT_TARGET_MODULES;
use coupled_grpo::model::{ModelConfig, PRESETS};
use coupled_grpo::plan::{plan, PlanInput};

#[derive(ClapArgs)]
pub struct Args {
    /// Model shape.
    #[arg(long, default_value = "diffucoder-7b", value_parser = PossibleValuesParser::new(PRESETS))]
    preset: String,
    /// LoRA rank (adapters on q/k/v/o/gate/up/down, base frozen); full fine-tune without it
    /// or with 0.
    #[arg(long)]
    lora_r: Option<usize>,
    #[arg(long, default_value = "bf16", value_parser = ["f32", "bf16"])]
    dtype: String,
    /// Burn's balanced checkpointing: not modelled; it only lowers the activations, so the plan
    /// printed is an upper bound, and says so.
    #[arg(long)]
    checkpointing: bool,
    /// Rows per forward.
    #[arg(long, default_value_t = 1)]
    micro_batch_rows: usize,
    /// Prompt + completion tokens per row.
    #[arg(long, default_value_t = 512)]
    seq: usize,
    /// Completion tokens per row.
    #[arg(long, default_value_t = 256)]
    completion_len: usize,
    /// Scoring views per row (coupled with the full-mask pass: 3).
    #[arg(long, default_value_t = 3)]
    views: usize,
    /// Data-parallel devices sharing master weights and moments (ZeRO-1).
    #[arg(long, default_value_t = 1)]
    devices: usize,
    /// π_ref is not kept (β = 0).
    #[arg(long)]
    no_reference: bool,
    /// Plan the full-logit reference scoring instead of the lean path.
    #[arg(long)]
    full_scoring: bool,
    /// The CPU backend (its attention keeps no scores for backward).
    #[arg(long)]
    cpu: bool,
}

const GB: f64 = 1e9;

pub fn run(args: Args) -> anyhow::Result<()> {
    let model = ModelConfig::preset(&args.preset)?;
    let input = PlanInput {
        model,
        dtype: if args.dtype == "bf16" {
            DType::BF16
        } else {
            DType::F32
        },
        // r = 0 is full fine-tuning, as `lora.r = 0` in a training config.
        lora: args.lora_r.filter(|&r| r > 0).map(|r| {
            (
                r,
                DEFAULT_TARGET_MODULES
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            )
        }),
        micro_batch_rows: args.micro_batch_rows,
        seq: args.seq,
        completion_len: args.completion_len,
        views: args.views,
        devices: args.devices,
        master_weights: true,
        reference: !args.no_reference,
        lean_scoring: !args.full_scoring,
        max_logit_bytes: DEFAULT_MAX_LOGIT_BYTES,
        attention_scores: !args.cpu,
    };
    let p = plan(&input)?;
    println!(
        "{} ({} parameters, {} trainable), {}, {} rows x {} tokens x {} views per forward, {} device(s)",
        args.preset,
        p.parameters,
        p.trainable,
        args.dtype,
        args.micro_batch_rows,
        args.seq,
        args.views,
        args.devices
    );
    println!("| part | GB per device |\n|---|---|");
    for (part, bytes) in &p.parts {
        println!("| {} | {:.2} |", part.name(), *bytes as f64 / GB);
    }
    println!("| **total** | **{:.2}** |", p.total() as f64 / GB);
    for (name, bytes) in [("80 GB (H100)", 80e9), ("141 GB (H200)", 141e9)] {
        let verdict = if p.fits(bytes as u64) {
            "fits"
        } else {
            "does not fit"
        };
        println!("{name}: {verdict}");
    }
    if args.checkpointing {
        println!(
            "balanced checkpointing is not modelled: it only lowers the activations row, so these figures are an upper bound"
        );
    }
    Ok(())
}
