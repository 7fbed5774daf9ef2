//! `coupled-grpo bench train-step`: time the project's own model on CPU or CUDA, for
//! comparison with the PyTorch twin `tools/torch_bench.py` (same shapes, same output lines).

use anyhow::bail;
use burn::tensor::DType;
use clap::{Args as ClapArgs, Subcommand};
use coupled_grpo::model::ModelConfig;
use coupled_grpo::perf::{self, TrainStepStats};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Forward + cross-entropy + backward + AdamW on random tokens.
    TrainStep(TrainStepArgs),
}

#[derive(ClapArgs)]
pub struct TrainStepArgs {
    /// Model shape (tiny, small, qwen2.5-0.5b, diffucoder-7b).
    #[arg(long, default_value = "small")]
    preset: String,
    #[arg(long, default_value_t = 4)]
    batch: usize,
    #[arg(long, default_value_t = 512)]
    seq: usize,
    /// Measured steps (after one warm-up step, reported separately).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    dtype: String,
    /// cpu (flex) or cuda (needs the `cuda` feature).
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
    backend: String,
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::TrainStep(args) => train_step(args),
    }
}

fn train_step(args: TrainStepArgs) -> anyhow::Result<()> {
    let config = ModelConfig::preset(&args.preset)?;
    let dtype = if args.dtype == "bf16" {
        DType::BF16
    } else {
        DType::F32
    };
    println!(
        "train-step bench: {} ({} params), batch {} x seq {}, {}, backend {}",
        args.preset,
        config.num_parameters(),
        args.batch,
        args.seq,
        args.dtype,
        args.backend
    );
    let stats = match args.backend.as_str() {
        "cpu" => perf::train_step::<coupled_grpo::backend::CpuAutodiff>(
            &config,
            args.batch,
            args.seq,
            args.steps,
            dtype,
            &Default::default(),
        ),
        #[cfg(feature = "cuda")]
        "cuda" => perf::train_step::<coupled_grpo::backend::CudaAutodiff>(
            &config,
            args.batch,
            args.seq,
            args.steps,
            dtype,
            &Default::default(),
        ),
        other => bail!("backend `{other}` is not compiled in (build with --features cuda)"),
    };
    print_stats(&stats);
    Ok(())
}

fn print_stats(s: &TrainStepStats) {
    println!(
        "first step (warm-up, incl. compilation): {:.2} s",
        s.first_step_s
    );
    println!(
        "step: {:.1} ms (fwd {:.1} + bwd {:.1} + AdamW {:.1})",
        s.step_s() * 1e3,
        s.forward_s * 1e3,
        s.backward_s * 1e3,
        s.optimizer_s * 1e3
    );
    println!("tokens/s: {:.0}", s.tokens_per_s());
    println!("TFLOP/s: {:.2}", s.flops_per_s() / 1e12);
    println!(
        "peak host RSS: {:.2} GiB",
        perf::peak_rss_bytes() as f64 / (1u64 << 30) as f64
    );
}
