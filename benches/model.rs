//! Model training-step benchmark on CPU (flex): forward + backward + AdamW for a small
//! Dream-shaped model, next to a same-run matmul of the model's own GEMM shapes (the ceiling).
//!
//!     cargo bench --bench model                       # small: d256, 4 layers, B8 x S256
//!     cargo bench --bench model -- --batch 4 --seq 128 --steps 3
//!
//! Prints ms/step, tokens/s, achieved GFLOP/s (matmul FLOPs, x3 for fwd+bwd) and the ratio to
//! the best matmul GFLOP/s measured in the same run.

use std::time::Instant;

use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::{activation::log_softmax, backend::Backend, Distribution, Int, Tensor};
use coupled_grpo::backend::{Cpu, CpuAutodiff};
use coupled_grpo::model::{DiffusionLm, ModelConfig};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Matmul FLOPs of one forward pass over `tokens` tokens of length-`seq` sequences.
fn forward_flops(c: &ModelConfig, tokens: usize, seq: usize) -> f64 {
    let (d, f, v) = (c.hidden_size as f64, c.intermediate_size as f64, c.vocab_size as f64);
    let kv = (c.kv_heads() * c.head_dim()) as f64;
    let per_token_layer = 2.0 * (d * d + 2.0 * d * kv + d * d) + 2.0 * 3.0 * d * f + 2.0 * 2.0 * seq as f64 * d;
    tokens as f64 * (c.num_hidden_layers as f64 * per_token_layer + 2.0 * d * v)
}

/// GFLOP/s of `[m, k] x [k, n]` on the flex backend (median of `reps`).
fn matmul_gflops(m: usize, k: usize, n: usize, reps: usize) -> f64 {
    let device = Default::default();
    let a = Tensor::<Cpu, 2>::random([m, k], Distribution::Default, &device);
    let b = Tensor::<Cpu, 2>::random([k, n], Distribution::Default, &device);
    let _ = a.clone().matmul(b.clone()).into_data(); // warm-up
    let times: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            let _ = a.clone().matmul(b.clone()).into_data();
            t.elapsed().as_secs_f64()
        })
        .collect();
    2.0 * (m * k * n) as f64 / median(times) / 1e9
}

fn main() {
    let batch = arg("--batch", 8);
    let seq = arg("--seq", 256);
    let steps = arg("--steps", 5);
    let config = ModelConfig::preset("small").unwrap();
    let device = Default::default();
    println!(
        "model bench (flex CPU, {} threads): preset small (d{} x {}L, ffn {}, heads {}/{}, vocab {}), batch {batch} x seq {seq}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        config.hidden_size,
        config.num_hidden_layers,
        config.intermediate_size,
        config.num_attention_heads,
        config.kv_heads(),
        config.vocab_size
    );

    let tokens = batch * seq;
    let (d, f, v) = (config.hidden_size, config.intermediate_size, config.vocab_size);
    let shapes = [(tokens, d, f), (tokens, f, d), (tokens, d, v), (tokens, d, d)];
    let mut ceiling: f64 = 0.0;
    for (m, k, n) in shapes {
        let g = matmul_gflops(m, k, n, 5);
        println!("matmul [{m}x{k}]x[{k}x{n}]: {g:.1} GFLOP/s");
        ceiling = ceiling.max(g);
    }

    let mut model = DiffusionLm::<CpuAutodiff>::init_with(&config, &device, 0, burn::tensor::DType::F32);
    let mut optim = AdamWConfig::new()
        .with_beta_2(0.99)
        .with_weight_decay(0.1)
        .init::<CpuAutodiff, DiffusionLm<CpuAutodiff>>();
    let ids = Tensor::<CpuAutodiff, 2, Int>::random([batch, seq], Distribution::Uniform(5.0, v as f64), &device);

    let mut fwd_t = Vec::new();
    let mut bwd_t = Vec::new();
    let mut opt_t = Vec::new();
    for step in 0..=steps {
        let t0 = Instant::now();
        let logits = model.forward(ids.clone(), None);
        let lp = log_softmax(logits, 2);
        let picked = lp.gather(2, ids.clone().unsqueeze_dim::<3>(2));
        let loss = picked.mean().neg();
        let _ = <CpuAutodiff as Backend>::sync(&device);
        let t1 = Instant::now();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let t2 = Instant::now();
        model = optim.step(1e-4, model, grads);
        let _ = model.embed_tokens.val().slice([0..1, 0..1]).into_data();
        let t3 = Instant::now();
        if step > 0 {
            fwd_t.push((t1 - t0).as_secs_f64());
            bwd_t.push((t2 - t1).as_secs_f64());
            opt_t.push((t3 - t2).as_secs_f64());
        }
    }
    let (fwd, bwd, opt) = (median(fwd_t), median(bwd_t), median(opt_t));
    let step = fwd + bwd + opt;
    let gflops = 3.0 * forward_flops(&config, tokens, seq) / step / 1e9;
    println!(
        "train step: {:.1} ms (fwd {:.1} + bwd {:.1} + AdamW {:.1}), {:.0} tokens/s, {gflops:.1} GFLOP/s",
        step * 1e3,
        fwd * 1e3,
        bwd * 1e3,
        opt * 1e3,
        tokens as f64 / step
    );
    println!(
        "ratio to the same-run matmul ceiling ({ceiling:.1} GFLOP/s): {:.0}%",
        100.0 * gflops / ceiling
    );
}
