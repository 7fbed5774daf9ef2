//! Measurement helpers shared by `benches/` and `coupled-grpo bench`: one training step of the
//! model (forward + cross-entropy + backward + AdamW) and a same-device matmul ceiling.

use std::time::Instant;

use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{activation::log_softmax, DType, Distribution, Int, Tensor};

use crate::model::{DiffusionLm, ModelConfig};

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
    let mut model = DiffusionLm::<B>::init_with(config, device, 0, dtype);
    let mut optim = AdamWConfig::new()
        .with_beta_2(0.99)
        .with_weight_decay(0.1)
        .init::<B, DiffusionLm<B>>();
    let ids = Tensor::<B, 2, Int>::random(
        [batch, seq],
        Distribution::Uniform(0.0, config.vocab_size as f64),
        device,
    );
    let sync = || B::sync(device).expect("device sync");
    let (mut fwd, mut bwd, mut opt) = (Vec::new(), Vec::new(), Vec::new());
    let mut first = 0.0;
    for step in 0..=steps.max(1) {
        let t0 = Instant::now();
        let logits = model.forward(ids.clone(), None).cast(DType::F32);
        let picked = log_softmax(logits, 2).gather(2, ids.clone().unsqueeze_dim::<3>(2));
        let loss = picked.mean().neg();
        sync();
        let t1 = Instant::now();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        sync();
        let t2 = Instant::now();
        model = optim.step(1e-4, model, grads);
        sync();
        let t3 = Instant::now();
        if step == 0 {
            first = (t3 - t0).as_secs_f64();
        } else {
            fwd.push((t1 - t0).as_secs_f64());
            bwd.push((t2 - t1).as_secs_f64());
            opt.push((t3 - t2).as_secs_f64());
        }
    }
    TrainStepStats {
        forward_s: median(fwd),
        backward_s: median(bwd),
        optimizer_s: median(opt),
        first_step_s: first,
        tokens_per_step: batch * seq,
        flops_per_step: 3.0 * forward_flops(config, batch, seq),
    }
}

/// FLOP/s of `[m, k] x [k, n]` in `dtype` on `device` (median of `reps` after a warm-up).
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
    let _ = a.clone().matmul(b.clone());
    sync();
    let times: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            let _ = a.clone().matmul(b.clone());
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
