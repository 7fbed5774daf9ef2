//! `coupled-grpo bench train-step | rollout | grpo-step`: time the project's own model on CPU or
//! CUDA, for comparison with the PyTorch twin `tools/torch_bench.py` (same shapes, same output
//! lines); `grpo-step` times a whole coupled-GRPO update (scoring passes, backward, AdamW).
//!
//! Progress goes to stderr as each phase ends (`[bench] step 0 forward 12.3 s ...`), and with
//! `--watchdog N` a line every N seconds says which phase is running and how much CPU time the
//! process used meanwhile, so that a run cut off by a time limit still tells where it was.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use burn::tensor::DType;
use clap::builder::PossibleValuesParser;
use clap::{Args as ClapArgs, Subcommand};
use coupled_grpo::grpo::TrainConfig;
use coupled_grpo::model::{ModelConfig, PRESETS};
use coupled_grpo::perf::{self, GrpoUpdateStats, Phase, RolloutStats, TrainStepStats};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Forward + cross-entropy + backward + AdamW on random tokens.
    TrainStep(TrainStepArgs),
    /// Forward-only denoising passes at fixed shapes (the rollout's hot loop).
    Rollout(RolloutArgs),
    /// Whole coupled-GRPO updates on synthetic rollouts: π_old/π_ref scoring, the estimator's
    /// scoring passes with the graph, backward, clipping and AdamW (with f32 master weights
    /// for bf16 unless `--set optimizer.master_weights=false`). `--batch` is the rows, `--seq`
    /// prompt + completion.
    GrpoStep(GrpoStepArgs),
}

#[derive(ClapArgs)]
pub struct CommonArgs {
    /// Model shape.
    #[arg(long, default_value = "small", value_parser = PossibleValuesParser::new(PRESETS))]
    preset: String,
    #[arg(long, default_value_t = 4)]
    batch: usize,
    #[arg(long, default_value_t = 512)]
    seq: usize,
    /// Measured steps / passes (after one warm-up, reported separately).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    dtype: String,
    /// cpu (flex), cuda (burn-cuda with fusion) or cuda-unfused (CubeCL without burn-fusion);
    /// the cuda ones need the `cuda` feature.
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda", "cuda-unfused"])]
    backend: String,
    /// Persistent cache of compiled kernels (PTX) and autotune results in this directory
    /// (CUDA only). A second run on the same machine then skips JIT compilation and autotune.
    #[arg(long)]
    kernel_cache: Option<PathBuf>,
    /// Print a progress line to stderr every this many seconds (0 = off).
    #[arg(long, default_value_t = 0)]
    watchdog: u64,
    /// CubeCL's kernel profiler (CUDA only): every kernel is timed on the device, and at each
    /// device sync (each phase end) a table of the time per kernel name is appended to this
    /// file, which is replaced. Slows the run (each kernel is waited for); summarise it with
    /// `tools/kernel_profile.py`.
    #[arg(long, value_name = "FILE")]
    kernel_profile: Option<PathBuf>,
}

#[derive(ClapArgs)]
pub struct TrainStepArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Train LoRA adapters of this rank (alpha = 2r, the seven projections) on a frozen base
    /// instead of every weight; 0 = full fine-tuning.
    #[arg(long, default_value_t = 0)]
    lora_r: usize,
}

#[derive(ClapArgs)]
pub struct GrpoStepArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Completion tokens per row (the rest of `--seq` is prompt).
    #[arg(long, default_value_t = 256)]
    completion_len: usize,
    /// Training-config overrides, `section.key=value` (as `train --set`), e.g.
    /// `grpo.num_iterations=2`, `grpo.beta=0`, `estimator.kind=d1`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Burn's balanced checkpointing: recompute memory-bound (element-wise) results in the
    /// backward pass instead of keeping them.
    #[arg(long)]
    checkpointing: bool,
    /// Target log-probs: `lean` (the fused head on scored positions only), `full` (the
    /// reference path that keeps every view's vocabulary-wide log-probs), or `both`: this bench
    /// in two child processes, lean then full, and each one's peak RSS.
    #[arg(long, default_value = "lean", value_parser = ["lean", "full", "both"])]
    scoring: String,
}

#[derive(ClapArgs)]
pub struct RolloutArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Candidate (still masked) positions per row whose logits are computed each pass.
    #[arg(long, default_value_t = 128)]
    cand: usize,
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::TrainStep(args) => train_step(args),
        BenchCommand::Rollout(args) => rollout(args),
        BenchCommand::GrpoStep(args) => grpo_step(args),
    }
}

fn dtype(name: &str) -> DType {
    if name == "bf16" {
        DType::BF16
    } else {
        DType::F32
    }
}

/// Shared progress state: the phase now running, for the watchdog.
struct Progress {
    start: Instant,
    phase: AtomicUsize,
    step: AtomicUsize,
    done: AtomicBool,
    cuda: bool,
    peak_in_use: AtomicUsize,
    peak_reserved: AtomicUsize,
}

const PHASES: [&str; 6] = ["init", "forward", "backward", "optimizer", "pass", "update"];

impl Progress {
    fn new(cuda: bool) -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            phase: AtomicUsize::new(0),
            step: AtomicUsize::new(0),
            done: AtomicBool::new(false),
            cuda,
            peak_in_use: AtomicUsize::new(0),
            peak_reserved: AtomicUsize::new(0),
        })
    }

    /// A phase ended: print it with the device memory, and note which phase runs next.
    fn ended(&self, step: usize, phase: Phase, seconds: f64, next: Phase) {
        let memory = match self.cuda.then(device_memory).flatten() {
            Some((used, reserved)) => {
                self.peak_in_use.fetch_max(used as usize, Ordering::Relaxed);
                self.peak_reserved
                    .fetch_max(reserved as usize, Ordering::Relaxed);
                format!(
                    ", pool {:.2} GiB in use / {:.2} GiB reserved",
                    gib(used),
                    gib(reserved)
                )
            }
            None => String::new(),
        };
        let (user, sys) = cpu_times();
        eprintln!(
            "[bench] t={:.1}s step {step} {} {:.3} s (cpu user {user:.1} s, sys {sys:.1} s{memory})",
            self.start.elapsed().as_secs_f64(),
            phase.name(),
            seconds
        );
        let step = if matches!(phase, Phase::Optimizer | Phase::Pass | Phase::Update) {
            step + 1
        } else {
            step
        };
        self.step.store(step, Ordering::Relaxed);
        self.phase.store(next as usize, Ordering::Relaxed);
    }

    fn watch(self: &Arc<Self>, every: u64) {
        if every == 0 {
            return;
        }
        let me = self.clone();
        std::thread::spawn(move || {
            let mut since = Instant::now();
            while !me.done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                if since.elapsed() < Duration::from_secs(every) {
                    continue;
                }
                since = Instant::now();
                let (user, sys) = cpu_times();
                eprintln!(
                    "[watchdog] t={:.1}s in step {} {} (cpu user {user:.1} s, sys {sys:.1} s, rss {:.2} GiB)",
                    me.start.elapsed().as_secs_f64(),
                    me.step.load(Ordering::Relaxed),
                    PHASES[me.phase.load(Ordering::Relaxed)],
                    gib(current_rss_bytes()),
                );
            }
        });
    }
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// (user, system) CPU seconds of this process so far.
fn cpu_times() -> (f64, f64) {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    (secs(usage.ru_utime), secs(usage.ru_stime))
}

/// Resident memory now (Linux /proc/self/statm), 0 if unknown.
fn current_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

#[cfg(feature = "cuda")]
fn device_memory() -> Option<(u64, u64)> {
    coupled_grpo::backend::cuda_memory_usage()
}

#[cfg(not(feature = "cuda"))]
fn device_memory() -> Option<(u64, u64)> {
    None
}

fn prepare(c: &CommonArgs, what: &str, config: &ModelConfig) -> anyhow::Result<Arc<Progress>> {
    let cuda = c.backend != "cpu";
    if cuda {
        if let Some(file) = &c.kernel_profile {
            match std::fs::remove_file(file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    bail!("--kernel-profile {}: {e}", file.display())
                }
                _ => {}
            }
        }
        #[cfg(feature = "cuda")]
        coupled_grpo::backend::configure_cubecl(
            c.kernel_cache.as_deref(),
            c.kernel_profile.as_deref(),
        );
        #[cfg(not(feature = "cuda"))]
        bail!(
            "backend `{}` is not compiled in (build with --features cuda)",
            c.backend
        );
    } else if c.kernel_cache.is_some() || c.kernel_profile.is_some() {
        bail!("--kernel-cache and --kernel-profile only apply to the cuda backends");
    }
    let autotune = if !cuda {
        ""
    } else if cfg!(feature = "cuda-autotune") {
        " (CubeCL autotune on)"
    } else {
        " (CubeCL autotune off)"
    };
    println!(
        "{what} bench: {} ({} params), batch {} x seq {}, {}, backend {}{autotune}",
        c.preset,
        config.num_parameters(),
        c.batch,
        c.seq,
        c.dtype,
        c.backend
    );
    let progress = Progress::new(cuda);
    progress.watch(c.watchdog);
    Ok(progress)
}

fn train_step(args: TrainStepArgs) -> anyhow::Result<()> {
    let c = &args.common;
    let config = ModelConfig::preset(&c.preset)?;
    let lora = (args.lora_r > 0).then(|| coupled_grpo::model::LoraConfig {
        r: args.lora_r,
        alpha: 2.0 * args.lora_r as f64,
        ..Default::default()
    });
    if let Some(l) = &lora {
        l.validate()?;
        println!(
            "LoRA r {} (alpha {}): only the adapters train",
            l.r, l.alpha
        );
    }
    let progress = prepare(c, "train-step", &config)?;
    let p = progress.clone();
    let mut observe = move |step: usize, phase: Phase, s: f64| {
        let next = match phase {
            Phase::Init | Phase::Optimizer => Phase::Forward,
            Phase::Forward => Phase::Backward,
            Phase::Backward | Phase::Pass | Phase::Update => Phase::Optimizer,
        };
        p.ended(step, phase, s, next);
    };
    macro_rules! go {
        ($b:ty) => {
            perf::train_step_observed::<$b>(
                &config,
                lora.as_ref(),
                c.batch,
                c.seq,
                c.steps,
                dtype(&c.dtype),
                &Default::default(),
                &mut observe,
            )
        };
    }
    let stats = match c.backend.as_str() {
        "cpu" => go!(coupled_grpo::backend::CpuAutodiff),
        #[cfg(feature = "cuda")]
        "cuda" => go!(coupled_grpo::backend::CudaAutodiff),
        #[cfg(feature = "cuda")]
        "cuda-unfused" => go!(coupled_grpo::backend::CudaUnfusedAutodiff),
        other => bail!("backend `{other}` is not compiled in (build with --features cuda)"),
    };
    progress.done.store(true, Ordering::Relaxed);
    print_train(&stats);
    print_memory(&progress);
    settle_kernel_profile(c);
    Ok(())
}

fn rollout(args: RolloutArgs) -> anyhow::Result<()> {
    let c = &args.common;
    let config = ModelConfig::preset(&c.preset)?;
    let progress = prepare(c, "rollout", &config)?;
    let p = progress.clone();
    let mut observe = move |step: usize, phase: Phase, s: f64| p.ended(step, phase, s, Phase::Pass);
    macro_rules! go {
        ($b:ty) => {
            perf::rollout_pass::<$b>(
                &config,
                c.batch,
                c.seq,
                args.cand,
                c.steps,
                dtype(&c.dtype),
                &Default::default(),
                &mut observe,
            )
        };
    }
    let stats = match c.backend.as_str() {
        "cpu" => go!(coupled_grpo::backend::Cpu),
        #[cfg(feature = "cuda")]
        "cuda" => go!(coupled_grpo::backend::Cuda),
        #[cfg(feature = "cuda")]
        "cuda-unfused" => go!(coupled_grpo::backend::CudaUnfused),
        other => bail!("backend `{other}` is not compiled in (build with --features cuda)"),
    };
    progress.done.store(true, Ordering::Relaxed);
    print_rollout(&stats);
    print_memory(&progress);
    settle_kernel_profile(c);
    Ok(())
}

fn grpo_step(args: GrpoStepArgs) -> anyhow::Result<()> {
    let c = &args.common;
    let config = ModelConfig::preset(&c.preset)?;
    if args.completion_len == 0 || args.completion_len >= c.seq {
        bail!(
            "--completion-len must be in 1..{} (--seq is prompt + completion)",
            c.seq
        );
    }
    if args.scoring == "both" {
        return compare_scoring();
    }
    let mut overrides = args.overrides.clone();
    overrides.push(format!("estimator.scoring={}", args.scoring));
    let train = TrainConfig::from_toml_str("", &overrides, None)?;
    let what = if args.checkpointing {
        "grpo-step (balanced checkpointing)"
    } else {
        "grpo-step"
    };
    let progress = prepare(c, what, &config)?;
    println!(
        "estimator {} ({} scoring), num_iterations {}, beta {}, master weights {}",
        train.estimator.kind.name(),
        args.scoring,
        train.grpo.num_iterations,
        train.grpo.beta,
        train.optimizer.master_weights
    );
    let p = progress.clone();
    let mut observe =
        move |step: usize, phase: Phase, s: f64| p.ended(step, phase, s, Phase::Update);
    macro_rules! go {
        ($b:ty) => {
            perf::grpo_update::<$b>(
                &config,
                train,
                c.batch,
                c.seq - args.completion_len,
                args.completion_len,
                c.steps,
                dtype(&c.dtype),
                &Default::default(),
                &mut observe,
            )?
        };
    }
    use coupled_grpo::backend as be;
    let stats = match (c.backend.as_str(), args.checkpointing) {
        ("cpu", false) => go!(be::CpuAutodiff),
        ("cpu", true) => go!(be::CpuAutodiffCheckpointed),
        #[cfg(feature = "cuda")]
        ("cuda", false) => go!(be::CudaAutodiff),
        #[cfg(feature = "cuda")]
        ("cuda", true) => go!(be::CudaAutodiffCheckpointed),
        #[cfg(feature = "cuda")]
        ("cuda-unfused", false) => go!(be::CudaUnfusedAutodiff),
        #[cfg(feature = "cuda")]
        ("cuda-unfused", true) => go!(be::CudaUnfusedAutodiffCheckpointed),
        (other, _) => bail!("backend `{other}` is not compiled in (build with --features cuda)"),
    };
    progress.done.store(true, Ordering::Relaxed);
    print_grpo(&stats);
    print_memory(&progress);
    settle_kernel_profile(c);
    Ok(())
}

/// Runs this command again as two child processes, `--scoring lean` then `--scoring full`, and
/// reports each child's peak RSS (separate processes: neither inherits the other's heap).
fn compare_scoring() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--scoring") {
        args.drain(i..(i + 2).min(args.len()));
    }
    args.retain(|a| !a.starts_with("--scoring="));
    let exe = std::env::current_exe()?;
    let mut peaks = Vec::new();
    for scoring in ["lean", "full"] {
        println!("== --scoring {scoring}");
        let child = std::process::Command::new(&exe)
            .args(&args)
            .args(["--scoring", scoring])
            .spawn()?;
        let (status, peak) = wait_with_peak_rss(child.id())?;
        if status != 0 {
            bail!("the --scoring {scoring} run failed (wait status {status})");
        }
        peaks.push(peak);
    }
    println!(
        "peak RSS by scoring path: lean {:.2} GiB, full {:.2} GiB (full / lean = {:.2})",
        gib(peaks[0]),
        gib(peaks[1]),
        peaks[1] as f64 / peaks[0].max(1) as f64
    );
    Ok(())
}

/// Waits for child `pid`; returns its wait status and peak resident memory in bytes.
fn wait_with_peak_rss(pid: u32) -> anyhow::Result<(i32, u64)> {
    let mut status = 0;
    // SAFETY: wait4 writes the status and the child's usage into the locals we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let got = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    if got != pid as libc::pid_t {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    Ok((status, usage.ru_maxrss as u64 * 1024))
}

fn print_grpo(s: &GrpoUpdateStats) {
    println!(
        "grpo update: {} rows x {} tokens, {} scoring passes per update",
        s.rows, s.seq, s.forward_passes
    );
    println!("init: {:.2} s", s.init_s);
    println!(
        "first update (warm-up, incl. compilation): {:.2} s",
        s.first_update_s
    );
    println!(
        "update: {:.1} ms (old/ref scoring {:.1} + scoring fwd {:.1} + bwd {:.1} + clip/AdamW {:.1}), loss {:.4}",
        s.update_s * 1e3,
        s.old_ref_s * 1e3,
        s.forward_s * 1e3,
        s.backward_s * 1e3,
        s.optimizer_s * 1e3,
        s.loss
    );
    println!("scored tokens/s: {:.0}", s.tokens_per_s());
}

fn print_train(s: &TrainStepStats) {
    println!("init: {:.2} s", s.init_s);
    println!(
        "first step (warm-up, incl. compilation): {:.2} s (fwd {:.2} + bwd {:.2} + AdamW {:.2})",
        s.first_step_s, s.first_phases_s[0], s.first_phases_s[1], s.first_phases_s[2]
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
}

fn print_rollout(s: &RolloutStats) {
    println!(
        "rollout pass: rows {} x seq {}, {} candidate positions per row",
        s.rows, s.seq, s.cand
    );
    println!("init: {:.2} s", s.init_s);
    println!(
        "first pass (warm-up, incl. compilation): {:.2} s",
        s.first_pass_s
    );
    println!(
        "pass: {:.2} ms, forward passes/s: {:.1}",
        s.pass_s * 1e3,
        s.passes_per_s()
    );
    println!("tokens/s: {:.0}", s.tokens_per_s());
    println!("TFLOP/s: {:.2}", s.flops_per_s() / 1e12);
}

/// CubeCL writes its profile from a logger thread that is still catching up with the last
/// device sync: wait until the file has stopped growing (at most 10 s) before exiting.
fn settle_kernel_profile(c: &CommonArgs) {
    let Some(file) = &c.kernel_profile else {
        return;
    };
    let size = || std::fs::metadata(file).map_or(0, |m| m.len());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = size();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        let now = size();
        if now == last && now > 0 {
            break;
        }
        last = now;
    }
    println!("kernel profile: {} ({} bytes)", file.display(), last);
}

fn print_memory(p: &Progress) {
    if p.cuda {
        println!(
            "peak GPU memory (CubeCL pool, sampled at phase ends): {:.2} GiB in use, {:.2} GiB reserved",
            gib(p.peak_in_use.load(Ordering::Relaxed) as u64),
            gib(p.peak_reserved.load(Ordering::Relaxed) as u64)
        );
    }
    println!("peak host RSS: {:.2} GiB", gib(perf::peak_rss_bytes()));
}
