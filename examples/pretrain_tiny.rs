//! Pretrains the embedded tiny masked-diffusion coder on the synthetic toy domain
//! (`coupled_grpo::data::synthetic`) with the diffusion SFT objective of spec §3.7, and writes
//! an HF model directory (config.json, model.safetensors, tokenizer.json) plus the command and
//! seed that reproduce it.
//!
//! Each training row is `prompt ++ completion`: the prompt is the chat template of the task's
//! user message (left-padded, attention-masked), the completion is
//! "```python\n<solution>\n```\n" + `<|im_end|>`, padded with `<|dlm_pad|>` to a fixed length K.
//! Per row, t ~ U(eps, 1) (stratified over the batch); each completion token is replaced by
//! `<|mask|>` with probability t; the loss is the cross-entropy of the masked tokens weighted by
//! 1/t, summed and divided by batch · K. Logits follow Dream's shift: the output at position
//! j − 1 predicts token j.
//!
//! ```text
//! cargo run --release --example pretrain_tiny -- --out assets/tiny-coder --seed 0
//! cargo run --release --example pretrain_tiny -- --eval-only assets/tiny-coder --eval-tasks 200
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::grad_clipping::GradientClippingConfig;
use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::{activation::log_softmax, backend::Backend, DType, Int, Tensor, TensorData};
use clap::Parser;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use coupled_grpo::backend::{Cpu, CpuAutodiff};
use coupled_grpo::data::synthetic::{
    completion_text, prompt_text, semantic_key, train_tokenizer, Generator, Split,
};
use coupled_grpo::data::Task;
use coupled_grpo::eval::{EvalConfig, EvalReport, Evaluator};
use coupled_grpo::model::{
    load_pretrained, load_tokenizer, save_pretrained, DiffusionLm, ModelConfig, SaveDtype,
    Tokenizer,
};
use coupled_grpo::rollout::RolloutConfig;
use coupled_grpo::sandbox::{Executor, Limits, Pool, ProcessConfig, ProcessExecutor};

#[derive(Parser, Debug, Clone, Serialize)]
#[command(about = "Pretrain the tiny masked-diffusion coder on the synthetic toy domain")]
struct Args {
    /// Output HF directory.
    #[arg(long, default_value = "runs/pretrain_tiny")]
    out: PathBuf,
    /// Optimizer steps.
    #[arg(long, default_value_t = 2500)]
    steps: usize,
    /// Seed of the weights, the training stream and the masks.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Rows per step.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Peak learning rate (linear warm-up, then cosine to 10%).
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f32,
    /// Per-parameter gradient-norm clip (0 = off).
    #[arg(long, default_value_t = 1.0)]
    grad_clip: f32,
    /// Tokenizer vocabulary (special + byte + merge tokens).
    #[arg(long, default_value_t = 1024)]
    vocab: usize,
    /// Training tasks the tokenizer is learned from.
    #[arg(long, default_value_t = 20_000)]
    tokenizer_tasks: usize,
    #[arg(long, default_value_t = 128)]
    hidden: usize,
    #[arg(long, default_value_t = 4)]
    layers: usize,
    #[arg(long, default_value_t = 4)]
    heads: usize,
    #[arg(long, default_value_t = 2)]
    kv_heads: usize,
    #[arg(long, default_value_t = 384)]
    intermediate: usize,
    /// Share the embedding with the output head.
    #[arg(long)]
    tie_embeddings: bool,
    /// Completion length K (answer + `<|im_end|>` + `<|dlm_pad|>` padding).
    #[arg(long, default_value_t = 48)]
    completion_len: usize,
    /// Initial probability factor of masking prompt tokens too (annealed to 0).
    #[arg(long, default_value_t = 1.0)]
    prompt_mask: f64,
    /// Steps over which the prompt masking anneals to 0 (0 = never mask the prompt).
    #[arg(long, default_value_t = 0)]
    prompt_mask_steps: usize,
    /// Lower bound of t ~ U(eps, 1).
    #[arg(long, default_value_t = 1e-3)]
    eps: f64,
    #[arg(long, default_value_t = 50)]
    log_every: usize,
    /// Evaluate held-out pass@1 every N steps (0 = only at the end).
    #[arg(long, default_value_t = 250)]
    eval_every: usize,
    /// Held-out tasks (distinct problems) in each evaluation; 0 skips evaluation.
    #[arg(long, default_value_t = 40)]
    eval_tasks: usize,
    /// Evaluate on the training split instead (to tell memorisation from generalisation).
    #[arg(long)]
    eval_train_split: bool,
    /// Seed of the held-out evaluation set (fixed across training seeds).
    #[arg(long, default_value_t = 0)]
    eval_seed: u64,
    /// Denoising steps of the greedy evaluation rollouts (default: K).
    #[arg(long)]
    eval_steps: Option<usize>,
    /// Continue training from this model directory (its weights and tokenizer; the model-size
    /// and vocabulary flags are then ignored).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Evaluate an existing model directory and exit.
    #[arg(long)]
    eval_only: Option<PathBuf>,
}

/// One pre-tokenized training row.
struct Row {
    prompt: Vec<u32>,
    completion: Vec<u32>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.eval_only {
        let device = Default::default();
        let model = load_pretrained::<Cpu>(dir, &device)?;
        let tokenizer = load_tokenizer(dir, model.config())?;
        let report = HeldOut::new(&args)?.run(&model, &tokenizer)?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    train(&args)
}

fn train(args: &Args) -> Result<()> {
    if args.batch == 0 || args.steps == 0 || args.completion_len < 8 {
        bail!("--batch and --steps must be positive and --completion-len at least 8");
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let started = Instant::now();

    let device = Default::default();
    let (tokenizer, config, mut model) = match &args.init {
        Some(dir) => {
            let model = load_pretrained::<CpuAutodiff>(dir, &device)?;
            let tokenizer = load_tokenizer(dir, model.config())?;
            (tokenizer, model.config().clone(), model)
        }
        None => {
            let tokenizer = build_tokenizer(args)?;
            let config = model_config(args, &tokenizer)?;
            let model =
                DiffusionLm::<CpuAutodiff>::init_with(&config, &device, args.seed, DType::F32);
            (tokenizer, config, model)
        }
    };
    report_lengths(&tokenizer, args)?;
    println!(
        "model: {} parameters ({:.1} MB in f32): hidden {}, {} layers, {} heads ({} kv), ffn {}, vocab {}",
        config.num_parameters(),
        config.num_parameters() as f64 * 4.0 / 1e6,
        config.hidden_size,
        config.num_hidden_layers,
        config.num_attention_heads,
        config.kv_heads(),
        config.intermediate_size,
        config.vocab_size
    );
    let mut optim = AdamWConfig::new()
        .with_beta_2(0.99)
        .with_epsilon(1e-8)
        .with_weight_decay(args.weight_decay)
        .with_grad_clipping(
            (args.grad_clip > 0.0).then_some(GradientClippingConfig::Norm(args.grad_clip)),
        )
        .init::<CpuAutodiff, DiffusionLm<CpuAutodiff>>();

    let evaluator = (args.eval_tasks > 0)
        .then(|| HeldOut::new(args))
        .transpose()?;
    let mut stream = Generator::new(Split::Train, args.seed);
    let mut mask_rng = ChaCha8Rng::seed_from_u64(args.seed.wrapping_add(1));
    let mut batches: Vec<Vec<Row>> = Vec::new();
    let mut log = std::fs::File::create(args.out.join("train_log.jsonl"))
        .context("creating train_log.jsonl")?;
    let (mut skipped, mut loss_sum, mut loss_n) = (0usize, 0.0f64, 0usize);
    let (mut compute_s, mut cpu_s) = (0.0f64, 0.0f64);
    let mut evals = Vec::new();

    for step in 0..args.steps {
        if batches.is_empty() {
            skipped += refill(&mut batches, &mut stream, &tokenizer, args, &mut mask_rng)?;
        }
        let rows = batches.pop().expect("refilled");
        let lr = lr_at(args, step);
        let (t0, c0) = (Instant::now(), cpu_seconds());
        let prompt_ratio = prompt_mask_ratio(args, step);
        let loss = sft_loss(
            &model,
            &rows,
            &tokenizer,
            args.eps,
            prompt_ratio,
            &mut mask_rng,
            &device,
        );
        let loss_value: f32 = loss.clone().into_scalar();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(lr, model, grads);
        compute_s += t0.elapsed().as_secs_f64();
        cpu_s += cpu_seconds() - c0;
        if !loss_value.is_finite() {
            bail!("step {step}: loss is {loss_value}");
        }
        loss_sum += f64::from(loss_value);
        loss_n += 1;
        let last = step + 1 == args.steps;
        if (step + 1).is_multiple_of(args.log_every) || last {
            let record = serde_json::json!({
                "step": step + 1, "loss": loss_sum / loss_n as f64, "lr": lr, "prompt_mask": prompt_ratio,
                "sec_per_step": compute_s / (step + 1) as f64, "cpu_sec_per_step": cpu_s / (step + 1) as f64,
                "elapsed_s": started.elapsed().as_secs_f64(),
            });
            println!("{record}");
            writeln!(log, "{record}")?;
            (loss_sum, loss_n) = (0.0, 0);
        }
        let eval_now = args.eval_every > 0 && (step + 1).is_multiple_of(args.eval_every);
        if let Some(ev) = &evaluator {
            if eval_now || last {
                // Keep a usable directory at every evaluation, so a cut run still leaves one.
                save_pretrained(&model.valid(), &args.out, SaveDtype::F32)?;
                tokenizer.save(args.out.join("tokenizer.json"))?;
                let report = ev.run(&model.valid(), &tokenizer)?;
                let record = serde_json::json!({"step": step + 1, "eval": report});
                println!("{record}");
                writeln!(log, "{record}")?;
                evals.push(record);
            }
        }
    }

    save_pretrained(&model.valid(), &args.out, SaveDtype::F32)?;
    tokenizer.save(args.out.join("tokenizer.json"))?;
    write_reproduce(
        args,
        &config,
        skipped,
        (compute_s, cpu_s),
        started.elapsed().as_secs_f64(),
        &evals,
    )?;
    println!(
        "wrote {} ({} over-long tasks skipped, {:.0}s in all)",
        args.out.display(),
        skipped,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A BPE tokenizer learned from training-split text only, drawn from a stream apart from the
/// training one.
fn build_tokenizer(args: &Args) -> Result<Tokenizer> {
    let t0 = Instant::now();
    let corpus = Generator::new(Split::Train, args.seed ^ 0x746f_6b65)
        .take(args.tokenizer_tasks)
        .map(|t| {
            Ok(format!(
                "{}{}<|im_end|>",
                prompt_text(&t),
                completion_text(&t)?
            ))
        })
        .collect::<coupled_grpo::Result<Vec<String>>>()?;
    let tokenizer = train_tokenizer(corpus.iter(), args.vocab)?;
    println!(
        "tokenizer: {} ids trained on {} tasks in {:.1}s",
        tokenizer.vocab_size(),
        corpus.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(tokenizer)
}

fn model_config(args: &Args, tokenizer: &Tokenizer) -> Result<ModelConfig> {
    if !args.hidden.is_multiple_of(args.heads) || !args.heads.is_multiple_of(args.kv_heads) {
        bail!("--hidden must be divisible by --heads, and --heads by --kv-heads");
    }
    let s = tokenizer.special();
    let mut c = ModelConfig::preset("tiny")?;
    c.vocab_size = tokenizer.vocab_size();
    c.hidden_size = args.hidden;
    c.intermediate_size = args.intermediate;
    c.num_hidden_layers = args.layers;
    c.num_attention_heads = args.heads;
    c.num_key_value_heads = Some(args.kv_heads);
    c.tie_word_embeddings = args.tie_embeddings;
    c.max_position_embeddings = 512;
    c.mask_token_id = Some(s.mask);
    c.pad_token_id = Some(s.pad);
    c.bos_token_id = Some(s.eos);
    c.eos_token_id = Some(s.eos);
    c.validate(None)?;
    Ok(c)
}

/// Draws `BUCKETS` batches at once and groups rows of similar prompt length, so that little
/// compute goes to left padding; the batches come out in random order. Returns the number of
/// tasks skipped for an answer longer than K.
fn refill(
    batches: &mut Vec<Vec<Row>>,
    stream: &mut Generator,
    tokenizer: &Tokenizer,
    args: &Args,
    rng: &mut ChaCha8Rng,
) -> Result<usize> {
    const BUCKETS: usize = 8;
    let mut rows = Vec::with_capacity(BUCKETS * args.batch);
    let mut skipped = 0;
    while rows.len() < BUCKETS * args.batch {
        match encode_row(tokenizer, &stream.next_task(), args.completion_len)? {
            Some(row) => rows.push(row),
            None => skipped += 1,
        }
    }
    rows.sort_by_key(|r| r.prompt.len());
    let mut chunks = Vec::with_capacity(BUCKETS);
    while !rows.is_empty() {
        let rest = rows.split_off(args.batch.min(rows.len()));
        chunks.push(std::mem::replace(&mut rows, rest));
    }
    chunks.shuffle(rng);
    batches.extend(chunks);
    Ok(skipped)
}

/// Prompt ids and the fixed-length completion; `None` when the answer does not fit in K.
fn encode_row(tokenizer: &Tokenizer, task: &Task, k: usize) -> Result<Option<Row>> {
    let s = tokenizer.special();
    let mut completion = tokenizer.encode(&completion_text(task)?)?;
    completion.push(s.im_end);
    if completion.len() > k {
        return Ok(None);
    }
    completion.resize(k, s.pad);
    Ok(Some(Row {
        prompt: tokenizer.encode(&prompt_text(task))?,
        completion,
    }))
}

/// Prints prompt and answer lengths in tokens over a sample of training tasks.
fn report_lengths(tokenizer: &Tokenizer, args: &Args) -> Result<()> {
    let (mut prompt, mut answer, mut over) = (Vec::new(), Vec::new(), 0usize);
    for task in Generator::new(Split::Train, args.seed ^ 0x6c65_6e73).take(500) {
        prompt.push(tokenizer.encode(&prompt_text(&task))?.len());
        let a = tokenizer.encode(&completion_text(&task)?)?.len() + 1;
        over += usize::from(a > args.completion_len);
        answer.push(a);
    }
    let mean = |v: &[usize]| v.iter().sum::<usize>() as f64 / v.len() as f64;
    println!(
        "lengths over 500 tasks: prompt mean {:.1} max {}, answer+<|im_end|> mean {:.1} max {} ({} longer than K = {})",
        mean(&prompt),
        prompt.iter().max().unwrap_or(&0),
        mean(&answer),
        answer.iter().max().unwrap_or(&0),
        over,
        args.completion_len
    );
    Ok(())
}

/// CPU time of this process (user + system), to compare step costs on a shared machine.
fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a full rusage into the pointer it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// The prompt-masking ratio at `step`: linear from `--prompt-mask` to 0 over the first
/// `--prompt-mask-steps` steps.
fn prompt_mask_ratio(args: &Args, step: usize) -> f64 {
    if step >= args.prompt_mask_steps {
        return 0.0;
    }
    args.prompt_mask * (1.0 - step as f64 / args.prompt_mask_steps as f64)
}

/// Warm-up then cosine from `lr` to `lr / 10`.
fn lr_at(args: &Args, step: usize) -> f64 {
    if step < args.warmup {
        return args.lr * (step + 1) as f64 / args.warmup as f64;
    }
    let span = (args.steps - args.warmup).max(1) as f64;
    let progress = ((step - args.warmup) as f64 / span).min(1.0);
    args.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()))
}

/// The diffusion SFT loss of one batch (a scalar tensor).
///
/// `prompt_ratio` > 0 also masks prompt tokens (special tokens excepted) with probability
/// `t · prompt_ratio` and scores them the same way: DiffuCoder anneals this "conditional mask"
/// to zero over its first SFT epoch (spec §3.7). With 0 only the completion is scored.
fn sft_loss<B: Backend>(
    model: &DiffusionLm<B>,
    rows: &[Row],
    tokenizer: &Tokenizer,
    eps: f64,
    prompt_ratio: f64,
    rng: &mut ChaCha8Rng,
    device: &B::Device,
) -> Tensor<B, 1> {
    let s = tokenizer.special();
    let specials = [s.eos, s.im_start, s.im_end, s.mask, s.pad];
    let b = rows.len();
    let k = rows[0].completion.len();
    let p = rows
        .iter()
        .map(|r| r.prompt.len())
        .max()
        .expect("non-empty batch");
    // Scored positions: the completion, or everything after position 0 with prompt masking.
    let first = if prompt_ratio > 0.0 { 1 } else { p };
    let n = p + k - first;
    let (mut ids, mut attn) = (
        Vec::with_capacity(b * (p + k)),
        Vec::with_capacity(b * (p + k)),
    );
    let (mut targets, mut weights) = (Vec::with_capacity(b * n), Vec::with_capacity(b * n));
    // Stratified t (one uniform offset, b evenly spaced strata, as MDLM does): every batch
    // spans the whole masking range, which cuts the variance the 1/t weights add.
    // Rows are bucketed by prompt length, so the strata are shuffled across them.
    let offset = rng.random::<f64>();
    let mut ts: Vec<f64> = (0..b)
        .map(|i| eps + (1.0 - eps) * (i as f64 + offset) / b as f64)
        .collect();
    ts.shuffle(rng);
    for (row, &t) in rows.iter().zip(&ts) {
        let pad = p - row.prompt.len();
        let tokens = std::iter::repeat_n(None, pad)
            .chain(row.prompt.iter().map(|&tok| Some((tok, t * prompt_ratio))))
            .chain(row.completion.iter().map(|&tok| Some((tok, t))));
        for (pos, slot) in tokens.enumerate() {
            let (id, weight) = match slot {
                None => (s.pad, 0.0),
                Some((tok, prob)) => {
                    let maskable = prob > 0.0 && !(pos < p && specials.contains(&tok));
                    if maskable && rng.random::<f64>() < prob {
                        (s.mask, (1.0 / t) as f32)
                    } else {
                        (tok, 0.0)
                    }
                }
            };
            ids.push(i64::from(id));
            attn.push(i64::from(slot.is_some()));
            if pos >= first {
                targets.push(i64::from(slot.map_or(s.pad, |(tok, _)| tok)));
                weights.push(weight);
            }
        }
    }
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, p + k]), device);
    let attn = Tensor::<B, 2, Int>::from_data(TensorData::new(attn, [b, p + k]), device);
    let targets = Tensor::<B, 2, Int>::from_data(TensorData::new(targets, [b, n]), device);
    let weights = Tensor::<B, 2>::from_data(TensorData::new(weights, [b, n]), device);
    let hidden = model.forward_hidden(ids, Some(attn));
    let d = hidden.dims()[2];
    // Dream's shift (`shift_logits`): the token at position j is scored by output row j − 1.
    // Slicing the hidden states first runs the vocabulary projection on scored rows only.
    let hidden = hidden.slice([0..b, first - 1..p + k - 1, 0..d]);
    let logp = log_softmax(model.logits_from_hidden(hidden), 2);
    let token_logp = logp
        .gather(2, targets.unsqueeze_dim::<3>(2))
        .squeeze_dim::<2>(2);
    (token_logp * weights).sum().neg() / (b * k) as f32
}

/// Greedy held-out pass@1: the library's evaluator (rollout engine + process sandbox), plus a
/// tally per task family, which shows which templates the model has learned.
struct HeldOut {
    tasks: Vec<Task>,
    evaluator: Evaluator,
    config: EvalConfig,
}

#[derive(Debug, Serialize)]
struct HeldOutReport {
    #[serde(flatten)]
    report: EvalReport,
    /// family → (tasks passed, tasks)
    by_family: BTreeMap<String, (usize, usize)>,
}

impl HeldOut {
    fn new(args: &Args) -> Result<Self> {
        let split = if args.eval_train_split {
            Split::Train
        } else {
            Split::HeldOut
        };
        let tasks = Generator::new(split, args.eval_seed).distinct(args.eval_tasks)?;
        let executor: Arc<dyn Executor> = Arc::new(
            ProcessExecutor::new(ProcessConfig {
                workers: 2,
                ..ProcessConfig::default()
            })
            .context("starting the process sandbox for evaluation")?,
        );
        let limits = Limits {
            test_timeout: std::time::Duration::from_secs(2),
            ..Limits::default()
        };
        let k = args.completion_len;
        let defaults = EvalConfig::default();
        let config = EvalConfig {
            rollout: RolloutConfig {
                max_new_tokens: k,
                steps: args.eval_steps.unwrap_or(k),
                max_prompt_length: 512,
                ..defaults.rollout.clone()
            },
            tasks_per_batch: 25,
            keep_samples: 3,
            ..defaults
        };
        Ok(Self {
            tasks,
            evaluator: Evaluator::new(Pool::new(executor, 2), limits),
            config,
        })
    }

    fn run<B: Backend>(
        &self,
        model: &DiffusionLm<B>,
        tokenizer: &Tokenizer,
    ) -> Result<HeldOutReport> {
        let report = self
            .evaluator
            .evaluate(model, tokenizer, &self.tasks, &self.config)?;
        let mut by_family: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for task in &report.per_task {
            let family = semantic_key(&task.id)
                .and_then(|k| k.split(':').next())
                .unwrap_or("?");
            let entry = by_family.entry(family.to_string()).or_default();
            entry.0 += usize::from(task.passed == task.n);
            entry.1 += 1;
        }
        Ok(HeldOutReport { report, by_family })
    }
}

fn write_reproduce(
    args: &Args,
    config: &ModelConfig,
    skipped: usize,
    (compute_s, cpu_s): (f64, f64),
    total_s: f64,
    evals: &[serde_json::Value],
) -> Result<()> {
    let command = format!(
        "cargo run --release --example pretrain_tiny -- {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    let record = serde_json::json!({
        "command": command,
        "seed": args.seed,
        "args": args,
        "parameters": config.num_parameters(),
        "skipped_long_tasks": skipped,
        "train_seconds_compute": compute_s,
        "train_cpu_seconds": cpu_s,
        "seconds_total": total_s,
        "evals": evals,
        "note": "CPU (burn flex) training; float reductions across threads may differ in the last bits between machines",
    });
    let path: &Path = &args.out.join("pretrain.json");
    std::fs::write(path, serde_json::to_string_pretty(&record)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
