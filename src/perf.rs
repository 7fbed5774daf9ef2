//! Measurement helpers shared by `benches/` and `coupled-grpo bench`: one training step of the
//! model (forward + cross-entropy + backward + AdamW), a rollout pass, a whole coupled-GRPO
//! update on synthetic rollouts, and a same-device matmul ceiling.

use std::time::Instant;

use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{activation::softmax, DType, Distribution, Int, Tensor, TensorData};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::cpu::ops::log_softmax_last;
use crate::data::{Task, TaskSource};
use crate::grpo::{AdvantageStats, IterationStats, Rewards, TrainConfig, Trainer};
use crate::model::{byte_level_tokenizer, DiffusionLm, ModelConfig};
use crate::rollout::RolloutBatch;
use crate::Result;

/// `--name VALUE` from the process arguments, parsed, else `default` (the benches' flags: a
/// `cargo bench` target gets its own arguments after `--`).
pub fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Whether the bare flag `name` is among the process arguments.
pub fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// Median of a non-empty sample.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Matmul FLOPs of one forward pass over `batch` sequences of length `seq`.
pub fn forward_flops(c: &ModelConfig, batch: usize, seq: usize) -> f64 {
    let (d, f, v) = (
        c.hidden_size as f64,
        c.intermediate_size as f64,
        c.vocab_size as f64,
    );
    let kv = (c.kv_heads() * c.head_dim()) as f64;
    let attn_proj = 2.0 * (2.0 * d * d + 2.0 * d * kv);
    let attn_core = 2.0 * 2.0 * seq as f64 * d; // QKᵀ and PV per token
    let per_token =
        c.num_hidden_layers as f64 * (attn_proj + attn_core + 6.0 * d * f) + 2.0 * d * v;
    (batch * seq) as f64 * per_token
}

/// Timings of one training step, medians over the measured steps (after one warm-up step).
#[derive(Debug, Clone, Copy)]
pub struct TrainStepStats {
    pub forward_s: f64,
    pub backward_s: f64,
    pub optimizer_s: f64,
    /// The first (warm-up) step, which includes one-off costs such as kernel compilation.
    pub first_step_s: f64,
    /// The first step's phases: forward (+ loss), backward, optimizer.
    pub first_phases_s: [f64; 3],
    /// Model initialisation (random weights on the device).
    pub init_s: f64,
    pub tokens_per_step: usize,
    /// Matmul FLOPs per step (x3 of the forward for fwd + bwd).
    pub flops_per_step: f64,
}

impl TrainStepStats {
    pub fn step_s(&self) -> f64 {
        self.forward_s + self.backward_s + self.optimizer_s
    }
    pub fn tokens_per_s(&self) -> f64 {
        self.tokens_per_step as f64 / self.step_s()
    }
    pub fn flops_per_s(&self) -> f64 {
        self.flops_per_step / self.step_s()
    }
}

/// A bench phase, reported to an observer as it ends (after a device sync).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Model initialisation.
    Init,
    /// Forward pass and loss.
    Forward,
    /// Backward pass.
    Backward,
    /// AdamW step.
    Optimizer,
    /// One forward-only (rollout) pass.
    Pass,
    /// One whole GRPO update ([`grpo_update`]).
    Update,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Init => "init",
            Phase::Forward => "forward",
            Phase::Backward => "backward",
            Phase::Optimizer => "optimizer",
            Phase::Pass => "pass",
            Phase::Update => "update",
        }
    }
}

/// Called with (step, phase, seconds) as each phase ends.
pub type Observer<'a> = &'a mut dyn FnMut(usize, Phase, f64);

/// Run `steps + 1` training steps of a random model of shape `config` on random tokens and time
/// each phase (the device is synchronised between phases).
pub fn train_step<B: AutodiffBackend>(
    config: &ModelConfig,
    batch: usize,
    seq: usize,
    steps: usize,
    dtype: DType,
    device: &B::Device,
) -> TrainStepStats {
    train_step_observed::<B>(
        config,
        None,
        batch,
        seq,
        steps,
        dtype,
        device,
        &mut |_, _, _| {},
    )
}

/// [`train_step`], reporting every phase to `observe` as it ends (progress lines, memory); with
/// `lora`, adapters on a frozen base are trained instead of every weight.
#[allow(clippy::too_many_arguments)]
pub fn train_step_observed<B: AutodiffBackend>(
    config: &ModelConfig,
    lora: Option<&crate::model::LoraConfig>,
    batch: usize,
    seq: usize,
    steps: usize,
    dtype: DType,
    device: &B::Device,
    observe: Observer<'_>,
) -> TrainStepStats {
    let sync = || B::sync(device).expect("device sync");
    let t_init = Instant::now();
    let mut model = DiffusionLm::<B>::init_on_device(config, device, dtype);
    if let Some(lora) = lora {
        model = crate::model::lora::attach(model, lora, 0).expect("a validated LoRA config");
    }
    let mut optim = crate::grpo::FusedAdamW::new(0.9, 0.99, 1e-5, 0.1).init::<B, DiffusionLm<B>>();
    let ids = Tensor::<B, 2, Int>::random(
        [batch, seq],
        Distribution::Uniform(0.0, config.vocab_size as f64),
        device,
    );
    sync();
    let init_s = t_init.elapsed().as_secs_f64();
    observe(0, Phase::Init, init_s);
    let (mut fwd, mut bwd, mut opt) = (Vec::new(), Vec::new(), Vec::new());
    let mut first = [0.0; 3];
    for step in 0..=steps.max(1) {
        let t0 = Instant::now();
        let logits = model.forward(ids.clone(), None).cast(DType::F32);
        let picked = log_softmax_last(logits).gather(2, ids.clone().unsqueeze_dim::<3>(2));
        let loss = picked.mean().neg();
        sync();
        let t1 = Instant::now();
        observe(step, Phase::Forward, (t1 - t0).as_secs_f64());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        sync();
        let t2 = Instant::now();
        observe(step, Phase::Backward, (t2 - t1).as_secs_f64());
        model = optim.step(1e-4, model, grads);
        sync();
        let t3 = Instant::now();
        observe(step, Phase::Optimizer, (t3 - t2).as_secs_f64());
        let phases = [t1 - t0, t2 - t1, t3 - t2].map(|d| d.as_secs_f64());
        if step == 0 {
            first = phases;
        } else {
            fwd.push(phases[0]);
            bwd.push(phases[1]);
            opt.push(phases[2]);
        }
    }
    TrainStepStats {
        forward_s: median(fwd),
        backward_s: median(bwd),
        optimizer_s: median(opt),
        first_step_s: first.iter().sum(),
        first_phases_s: first,
        init_s,
        tokens_per_step: batch * seq,
        flops_per_step: 3.0 * forward_flops(config, batch, seq),
    }
}

/// Timings of the rollout's forward-only pass at fixed shapes (median after one warm-up pass).
#[derive(Debug, Clone, Copy)]
pub struct RolloutStats {
    /// One pass: the model over `[rows, seq]` with a padding mask, then the LM head, a f32
    /// softmax, the confidence (max prob) and the argmax token over `cand` rows per sequence.
    pub pass_s: f64,
    /// The first pass, with one-off costs such as kernel compilation.
    pub first_pass_s: f64,
    pub init_s: f64,
    pub rows: usize,
    pub seq: usize,
    pub cand: usize,
    /// Matmul FLOPs of one pass.
    pub flops_per_pass: f64,
}

impl RolloutStats {
    pub fn passes_per_s(&self) -> f64 {
        1.0 / self.pass_s
    }
    pub fn tokens_per_s(&self) -> f64 {
        (self.rows * self.seq) as f64 / self.pass_s
    }
    pub fn flops_per_s(&self) -> f64 {
        self.flops_per_pass / self.pass_s
    }
}

/// Time `passes + 1` forward-only denoising passes of a random model: the shape of one rollout
/// step of `rollout::decode` (left-padded prompts, `cand` candidate positions per row whose
/// logits are computed, sampled greedily and scored by their probability).
#[allow(clippy::too_many_arguments)]
pub fn rollout_pass<B: Backend>(
    config: &ModelConfig,
    rows: usize,
    seq: usize,
    cand: usize,
    passes: usize,
    dtype: DType,
    device: &B::Device,
    observe: Observer<'_>,
) -> RolloutStats {
    let cand = cand.clamp(1, seq);
    let sync = || B::sync(device).expect("device sync");
    let t_init = Instant::now();
    let model = DiffusionLm::<B>::init_on_device(config, device, dtype);
    let ids = Tensor::<B, 2, Int>::random(
        [rows, seq],
        Distribution::Uniform(0.0, config.vocab_size as f64),
        device,
    );
    // Odd rows carry a left pad of seq/8 tokens, as left-padded prompts do.
    let pad = seq / 8;
    let mask: Vec<i64> = (0..rows)
        .flat_map(|r| (0..seq).map(move |j| i64::from(r % 2 == 0 || j >= pad)))
        .collect();
    let mask = Tensor::<B, 2, Int>::from_data(TensorData::new(mask, [rows, seq]), device);
    // The last `cand` positions of every row.
    let index: Vec<i64> = (0..rows)
        .flat_map(|r| (seq - cand..seq).map(move |j| (r * seq + j) as i64))
        .collect();
    let index = Tensor::<B, 1, Int>::from_data(TensorData::new(index, [rows * cand]), device);
    sync();
    let init_s = t_init.elapsed().as_secs_f64();
    observe(0, Phase::Init, init_s);
    let (h, v) = (config.hidden_size, config.vocab_size);
    let mut times = Vec::new();
    let mut first = 0.0;
    for pass in 0..=passes.max(1) {
        let t0 = Instant::now();
        let hidden = model.forward_hidden(ids.clone(), Some(mask.clone()));
        let picked = hidden.reshape([rows * seq, h]).select(0, index.clone());
        let logits = model
            .logits_from_hidden(picked.unsqueeze::<3>())
            .cast(DType::F32)
            .reshape([rows * cand, v]);
        // Kept alive over the sync so that a lazy backend must compute them.
        let outputs = (softmax(logits.clone(), 1).max_dim(1), logits.argmax(1));
        sync();
        let dt = t0.elapsed().as_secs_f64();
        drop(outputs);
        observe(pass, Phase::Pass, dt);
        if pass == 0 {
            first = dt;
        } else {
            times.push(dt);
        }
    }
    // Forward FLOPs of the trunk over all tokens plus the head over the candidates only.
    let head = 2.0 * (h * v) as f64;
    let trunk = forward_flops(config, rows, seq) - (rows * seq) as f64 * head;
    RolloutStats {
        pass_s: median(times),
        first_pass_s: first,
        init_s,
        rows,
        seq,
        cand,
        flops_per_pass: trunk + (rows * cand) as f64 * head,
    }
}

/// Timings of coupled-GRPO updates on synthetic rollouts (medians after one warm-up update).
#[derive(Debug, Clone, Copy)]
pub struct GrpoUpdateStats {
    /// One whole [`Trainer::update`]: π_old/π_ref scoring, the μ scoring forwards with the
    /// autodiff graph, backward, clipping and AdamW.
    pub update_s: f64,
    /// π_old and π_ref scoring (no graph).
    pub old_ref_s: f64,
    /// Scoring forwards with the graph, and the loss.
    pub forward_s: f64,
    pub backward_s: f64,
    pub optimizer_s: f64,
    /// The warm-up update, with one-off costs such as kernel compilation.
    pub first_update_s: f64,
    pub init_s: f64,
    /// Sequences forwarded per update (every scoring pass of every row).
    pub forward_passes: usize,
    pub rows: usize,
    /// Prompt + completion tokens of one row.
    pub seq: usize,
    /// The last update's loss.
    pub loss: f64,
}

impl GrpoUpdateStats {
    /// Scored tokens per second (every pass counts its whole sequence).
    pub fn tokens_per_s(&self) -> f64 {
        (self.forward_passes * self.seq) as f64 / self.update_s
    }
}

/// Run `updates + 1` coupled-GRPO updates ([`Trainer::update`] with `train`'s estimator, loss
/// and optimizer) of a random model of shape `model` on synthetic rollouts: `rows` rows of
/// `prompt_len` prompt tokens (odd rows left-padded by an eighth) and `completion_len`
/// completion tokens (each at least 1), with advantages ±1. This is the training half of a
/// round at real shapes, without rollouts or rewards.
#[allow(clippy::too_many_arguments)]
pub fn grpo_update<B: AutodiffBackend>(
    model: &ModelConfig,
    train: TrainConfig,
    rows: usize,
    prompt_len: usize,
    completion_len: usize,
    updates: usize,
    dtype: DType,
    device: &B::Device,
    observe: Observer<'_>,
) -> Result<GrpoUpdateStats> {
    let (p, k) = (prompt_len.max(1), completion_len.max(1));
    let t_init = Instant::now();
    let policy = DiffusionLm::<B>::init_on_device(model, device, dtype);
    let rollout = synthetic_rollout(model, rows, p, k)?;
    let task = Task {
        id: "synthetic".into(),
        question: String::new(),
        tests: Vec::new(),
        entry_point: None,
        reference_solution: None,
        source: TaskSource::Synthetic,
    };
    let mut trainer = Trainer::from_parts(
        train,
        policy,
        byte_level_tokenizer()?, // the update never tokenizes
        vec![task],
        Rewards::Functions(Vec::new()),
        device.clone(),
    )?;
    B::sync(device).map_err(|e| crate::Error::invalid("device", format!("{e:?}")))?;
    let init_s = t_init.elapsed().as_secs_f64();
    observe(0, Phase::Init, init_s);
    let advantages: Vec<f32> = (0..rows)
        .map(|r| if r % 2 == 0 { 1.0 } else { -1.0 })
        .collect();
    let adv_stats = AdvantageStats::default();
    let mut samples: Vec<[f64; 5]> = Vec::new();
    let (mut first, mut passes, mut loss) = (0.0, 0, 0.0);
    for u in 0..=updates.max(1) {
        let stats = trainer.update(u as u64, &rollout, &advantages, adv_stats)?;
        let sum = |f: fn(&IterationStats) -> f64| stats.iterations.iter().map(f).sum();
        let times = [
            stats.old_ref_time + stats.update_time,
            stats.old_ref_time,
            sum(|i| i.forward_time),
            sum(|i| i.backward_time),
            sum(|i| i.optimizer_time),
        ];
        observe(u, Phase::Update, times[0]);
        (passes, loss) = (stats.estimator_forward_passes, stats.loss);
        if u == 0 {
            first = times[0];
        } else {
            samples.push(times);
        }
    }
    let column = |i: usize| median(samples.iter().map(|t| t[i]).collect());
    Ok(GrpoUpdateStats {
        update_s: column(0),
        old_ref_s: column(1),
        forward_s: column(2),
        backward_s: column(3),
        optimizer_s: column(4),
        first_update_s: first,
        init_s,
        forward_passes: passes,
        rows,
        seq: p + k,
        loss,
    })
}

/// Random prompt and completion tokens (never the mask token) for [`grpo_update`].
fn synthetic_rollout(model: &ModelConfig, rows: usize, p: usize, k: usize) -> Result<RolloutBatch> {
    let mask = model.mask_token()? as u64;
    let pad = model.pad_token_id.unwrap_or(0);
    let vocab = model.vocab_size as u64;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut token = || loop {
        let t = rng.random_range(0..vocab);
        if t != mask {
            return t as u32;
        }
    };
    let padded = p / 8;
    let mut prompt_ids = Vec::with_capacity(rows);
    let mut prompt_mask = Vec::with_capacity(rows);
    let mut completion_ids = Vec::with_capacity(rows);
    for r in 0..rows {
        let pads = if r % 2 == 1 { padded } else { 0 };
        prompt_ids.push(
            (0..p)
                .map(|j| if j < pads { pad } else { token() })
                .collect(),
        );
        prompt_mask.push((0..p).map(|j| u32::from(j >= pads)).collect());
        completion_ids.push((0..k).map(|_| token()).collect());
    }
    Ok(RolloutBatch {
        prompt_ids,
        prompt_mask,
        completion_ids,
        completion_mask: vec![vec![1; k]; rows],
        texts: vec![String::new(); rows],
        group: (0..rows).collect(),
        traces: None,
        forward_passes: 0,
        cost: Default::default(),
    })
}

/// FLOP/s of `[m, k] x [k, n]` in `dtype` on `device` (median of `reps` after a warm-up),
/// through the product the model's projections use ([`crate::cpu::ops::linear`]: straight into
/// the output buffer on flex f32, Burn's matmul elsewhere).
pub fn matmul_flops<B: Backend>(
    m: usize,
    k: usize,
    n: usize,
    reps: usize,
    dtype: DType,
    device: &B::Device,
) -> f64 {
    let a = Tensor::<B, 2>::random([m, k], Distribution::Default, device).cast(dtype);
    let b = Tensor::<B, 2>::random([k, n], Distribution::Default, device).cast(dtype);
    let sync = || B::sync(device).expect("device sync");
    let product = || crate::cpu::ops::linear(a.clone(), b.clone(), None);
    let _ = product();
    sync();
    let times: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            let _ = product();
            sync();
            t.elapsed().as_secs_f64()
        })
        .collect();
    2.0 * (m * k * n) as f64 / median(times)
}

/// Peak resident memory of this process in bytes (Linux `ru_maxrss`).
pub fn peak_rss_bytes() -> u64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_maxrss as u64 * 1024
}
