//! Model training-step benchmark on CPU (flex): forward + backward + AdamW for a small
//! Dream-shaped model, next to a same-run matmul of the model's own GEMM shapes (the ceiling).
//!
//!     cargo bench --bench model                       # small: d256, 4 layers, B8 x S256
//!     cargo bench --bench model -- --batch 4 --seq 128 --steps 3
//!
//! Prints ms/step, tokens/s, achieved GFLOP/s (matmul FLOPs, x3 for fwd+bwd) and the ratio to
//! the best matmul GFLOP/s measured in the same run. The ceiling is sampled between the timed
//! steps (3 products per shape after each step), so that both see the same machine: on a shared
//! VM the GEMM speed drifts by 20–40 % within a minute.

use burn::tensor::DType;
use coupled_grpo::backend::{Cpu, CpuAutodiff};
use coupled_grpo::model::ModelConfig;
use coupled_grpo::perf::{arg, matmul_flops, median, train_step_observed, Phase};

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
    let (d, f, v) = (
        config.hidden_size,
        config.intermediate_size,
        config.vocab_size,
    );
    let shapes = [
        (tokens, d, f),
        (tokens, f, d),
        (tokens, d, v),
        (tokens, d, d),
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); shapes.len()];
    let s = train_step_observed::<CpuAutodiff>(
        &config,
        None,
        batch,
        seq,
        steps,
        DType::F32,
        &device,
        &mut |step, phase, _| {
            // After each timed step (not the first, which warms up): outside the step's clock.
            if step > 0 && matches!(phase, Phase::Optimizer) {
                for (&(m, k, n), out) in shapes.iter().zip(samples.iter_mut()) {
                    out.push(matmul_flops::<Cpu>(m, k, n, 3, DType::F32, &device) / 1e9);
                }
            }
        },
    );
    let mut ceiling: f64 = 0.0;
    for (&(m, k, n), g) in shapes.iter().zip(samples) {
        let g = median(g);
        println!("matmul [{m}x{k}]x[{k}x{n}]: {g:.1} GFLOP/s");
        ceiling = ceiling.max(g);
    }
    let gflops = s.flops_per_s() / 1e9;
    println!(
        "train step: {:.1} ms (fwd {:.1} + bwd {:.1} + AdamW {:.1}), {:.0} tokens/s, {gflops:.1} GFLOP/s",
        s.step_s() * 1e3,
        s.forward_s * 1e3,
        s.backward_s * 1e3,
        s.optimizer_s * 1e3,
        s.tokens_per_s()
    );
    println!(
        "ratio to the same-run matmul ceiling ({ceiling:.1} GFLOP/s): {:.0}%",
        100.0 * gflops / ceiling
    );
}
