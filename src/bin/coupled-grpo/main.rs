//! `coupled-grpo`: the command-line tool. One file per verb; each exposes `Args` and `run`.

use clap::{Parser, Subcommand};

mod bench;
mod eval;
mod generate;
mod model;
mod plan;
mod reward;
mod train;

/// Coupled-GRPO for masked-diffusion code LLMs.
#[derive(Parser)]
#[command(name = "coupled-grpo", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmarks of the project's own model (CPU or CUDA).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// pass@k on HumanEval, MBPP or the synthetic toy domain through the sandbox, with AR-ness.
    Eval(eval::Args),
    /// Sample completions (batched masked-diffusion decoding, optional decode-order traces).
    Generate(generate::Args),
    /// Create, inspect and run HF-format model directories.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Memory plan of an update: bytes per device by part, and whether it fits 80 / 141 GB.
    Plan(plan::Args),
    /// Score completions against their tests (format + pass rate) in the sandbox.
    Reward(reward::Args),
    /// Train with coupled-GRPO (or the d1 / full-mask / decoupled baselines) from a TOML config.
    Train(train::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Bench(cmd) => bench::run(cmd),
        Command::Eval(args) => eval::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Model(cmd) => model::run(cmd),
        Command::Plan(args) => plan::run(args),
        Command::Reward(args) => reward::run(args),
        Command::Train(args) => train::run(args),
    }
}
