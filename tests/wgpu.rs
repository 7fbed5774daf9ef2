//! The CubeCL code paths on wgpu against flex, on whatever Vulkan device the machine has: on a
//! machine without a GPU, Mesa's lavapipe (a Vulkan 1.3 device on the CPU; `mesa-vulkan-drivers`
//! and `libvulkan1` on Debian). Build with `--features wgpu`.
//!
//! `cargo test --features wgpu --test wgpu`: about 30 s on lavapipe (2 cores), all tests
//! together. `COUPLED_GRPO_WGPU_DEVICE=default` picks the default adapter instead of lavapipe
//! (`coupled_grpo::backend::wgpu_device`).
#![cfg(feature = "wgpu")]

mod common;

use burn::tensor::activation::softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Int, Tensor, TensorData};
use common::{host, params, tasks, tensor, tiny_config, train_config, values};
use coupled_grpo::backend::{
    wgpu_device as device, Cpu, CpuAutodiff, Wgpu, WgpuAutodiff, WgpuUnfused,
};
use coupled_grpo::cube;
use coupled_grpo::grpo::advantage::AdvantageStats;
use coupled_grpo::grpo::Trainer;
use coupled_grpo::model::{byte_level_tokenizer, chat_prompt, DiffusionLm, ModelConfig};
use coupled_grpo::rollout::{generate, Alg, RolloutBatch, RolloutConfig};

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
#[test]
fn smoke_matmul_and_softmax_match_flex() {
    let (a, b) = (values(37 * 53, 1, 1.0), values(53 * 29, 2, 1.0));
    let x = tensor::<Cpu, 2>(&a, [37, 53], &Default::default());
    let y = tensor::<Cpu, 2>(&b, [53, 29], &Default::default());
    let p = x.matmul(y);
    let (flex_mm, flex_sm) = (host(p.clone()), host(softmax(p, 1)));
    let dev = device();
    let x = tensor::<Wgpu, 2>(&a, [37, 53], &dev);
    let y = tensor::<Wgpu, 2>(&b, [53, 29], &dev);
    let p = x.matmul(y);
    let (mm, sm) = (host(p.clone()), host(softmax(p, 1)));
    assert!(max_abs_diff(&mm, &flex_mm) < 1e-4, "matmul");
    assert!(max_abs_diff(&sm, &flex_sm) < 1e-6, "softmax");
    assert!(cube::is_cube::<Wgpu>() && cube::is_fused_cube::<Wgpu>());
    assert!(cube::is_cube::<WgpuUnfused>() && !cube::is_fused_cube::<WgpuUnfused>());
    assert!(!cube::is_cube::<WgpuAutodiff>() && !cube::is_cube::<Cpu>());
}

/// One attention problem: q `[b, sq, h, hd]`, k/v `[b, sk, kv, hd]`, a padding bias.
struct Problem {
    dims: [usize; 6], // b, sq, sk, h, kv, hd
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    bias: Vec<f32>,
}

impl Problem {
    /// Row `r` of the batch has `r + 1` left-padded keys blocked (a pad key is still seen by the
    /// query at its own position when `sq == sk`, as Dream's bias does).
    fn new(dims: [usize; 6], seed: u64) -> Self {
        let [b, sq, sk, h, kv, hd] = dims;
        let scale = (hd as f32).powf(-0.5);
        let q = values(b * sq * h * hd, seed, 1.0)
            .into_iter()
            .map(|x| 3.0 * x * scale)
            .collect();
        let mut bias = vec![0.0; b * sq * sk];
        for r in 0..b {
            for i in 0..sq {
                for j in 0..(r + 1).min(sk - 1) {
                    if !(sq == sk && i == j) {
                        bias[(r * sq + i) * sk + j] = -1e9;
                    }
                }
            }
        }
        Self {
            dims,
            q,
            k: values(b * sk * kv * hd, seed + 1, 1.0)
                .into_iter()
                .map(|x| 3.0 * x)
                .collect(),
            v: values(b * sk * kv * hd, seed + 2, 1.0),
            bias,
        }
    }

    fn tensors<B: Backend>(&self, device: &B::Device) -> [Tensor<B, 4>; 4] {
        let [b, sq, sk, h, kv, hd] = self.dims;
        [
            tensor(&self.q, [b, sq, h, hd], device),
            tensor(&self.k, [b, sk, kv, hd], device),
            tensor(&self.v, [b, sk, kv, hd], device),
            tensor(&self.bias, [b, 1, sq, sk], device),
        ]
    }

    /// The flex CPU kernel (checked against Burn's ops in the CPU tests).
    fn flex(&self, with_bias: bool) -> Vec<f32> {
        let [q, k, v, bias] = self.tensors::<Cpu>(&Default::default());
        host(coupled_grpo::cpu::attention::grouped_attention(
            q,
            k,
            v,
            with_bias.then_some(bias),
        ))
    }

    /// Burn's ops on `B`: K/V repeated per query head, the scores materialised.
    fn generic<B: Backend>(&self, device: &B::Device, with_bias: bool) -> Vec<f32> {
        let [b, sq, sk, h, kv, hd] = self.dims;
        let [q, k, v, bias] = self.tensors::<B>(device);
        let rep = h / kv;
        let expand = |t: Tensor<B, 4>| {
            t.swap_dims(1, 2)
                .reshape([b, kv, 1, sk, hd])
                .repeat_dim(2, rep)
                .reshape([b, h, sk, hd])
        };
        let scores = q.swap_dims(1, 2).matmul(expand(k).swap_dims(2, 3));
        let scores = match with_bias {
            true => scores + bias,
            false => scores,
        };
        let out = softmax(scores, 3).matmul(expand(v));
        host(out.swap_dims(1, 2).reshape([b, sq, h * hd]))
    }

    fn cube<B: Backend>(&self, device: &B::Device, with_bias: bool) -> Vec<f32> {
        let [q, k, v, bias] = self.tensors::<B>(device);
        let bias = with_bias.then_some(&bias);
        let out = cube::attention::grouped_attention(&q, &k, &v, bias)
            .expect("the kernel applies on a CubeCL backend");
        host(out)
    }
}

/// The flash kernel on wgpu (fused: a custom fusion operation; unfused: launched directly)
/// equals the flex kernel and Burn's materialised attention on wgpu.
#[test]
fn flash_attention_matches_the_generic_path() {
    let dev = device();
    // (b, sq, sk, h, kv, hd): GQA rep 2 and 4, sq ≠ sk (a window over cached keys), lengths that
    // are not multiples of the tiles, head dims 16/32/64, and rep 1.
    let cases = [
        [2, 40, 40, 4, 2, 16],
        [3, 7, 75, 8, 2, 32],
        [1, 33, 9, 2, 2, 64],
        [2, 70, 130, 4, 1, 32],
    ];
    for (i, dims) in cases.into_iter().enumerate() {
        let p = Problem::new(dims, 10 + i as u64);
        for with_bias in [true, false] {
            let flex = p.flex(with_bias);
            let generic = p.generic::<Wgpu>(&dev, with_bias);
            let fused = p.cube::<Wgpu>(&dev, with_bias);
            let unfused = p.cube::<WgpuUnfused>(&dev, with_bias);
            let what = format!("{dims:?} bias {with_bias}");
            let scale = flex.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            eprintln!(
                "{what}: |out| ≤ {scale:.3}, Δ generic {:e}, fused {:e}, unfused {:e}",
                max_abs_diff(&generic, &flex),
                max_abs_diff(&fused, &flex),
                max_abs_diff(&unfused, &flex)
            );
            assert!(max_abs_diff(&generic, &flex) < 1e-5, "{what}: generic");
            assert!(max_abs_diff(&fused, &flex) < 1e-5, "{what}: fused");
            assert!(max_abs_diff(&unfused, &flex) < 1e-5, "{what}: unfused");
        }
    }
}

/// f16 inputs on wgpu (lavapipe has f16, not bf16): f32 accumulation, f16 output.
#[test]
fn flash_attention_in_f16() {
    let dev = device();
    let p = Problem::new([2, 24, 24, 4, 2, 32], 3);
    let flex = p.flex(true);
    let [q, k, v, bias] = p.tensors::<Wgpu>(&dev);
    let half = |t: Tensor<Wgpu, 4>| t.cast(DType::F16);
    let out = cube::attention::grouped_attention(&half(q), &half(k), &half(v), Some(&bias))
        .expect("f16 applies");
    assert_eq!(out.dtype(), DType::F16);
    let diff = max_abs_diff(&host(out), &flex);
    eprintln!("f16: Δ {diff:e}");
    assert!(diff < 5e-3, "f16: {diff}");
}

#[test]
fn flash_attention_does_not_apply_off_cubecl() {
    let p = Problem::new([1, 4, 4, 2, 1, 8], 1);
    let [q, k, v, _] = p.tensors::<Cpu>(&Default::default());
    assert!(cube::attention::grouped_attention(&q, &k, &v, None).is_none());
    let dev = device();
    let [q, k, v, _] = p.tensors::<WgpuAutodiff>(&dev);
    assert!(cube::attention::grouped_attention(&q, &k, &v, None).is_none());
}

/// Left-padded ids and mask: row `r` has `r` pads.
fn padded_batch(rows: usize, seq: usize, vocab: usize) -> (Vec<i64>, Vec<i64>) {
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for r in 0..rows {
        for j in 0..seq {
            let pad = j < r;
            ids.push(if pad {
                4
            } else {
                (7 + 13 * r + 31 * j) as i64 % vocab as i64
            });
            mask.push(if pad { 0 } else { 1 });
        }
    }
    (ids, mask)
}

fn logits<B: Backend>(config: &ModelConfig, device: &B::Device) -> Vec<f32> {
    let (rows, seq) = (3, 45);
    let model = DiffusionLm::<B>::init_with(config, device, 7, DType::F32);
    let (ids, mask) = padded_batch(rows, seq, config.vocab_size);
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [rows, seq]), device);
    let mask = Tensor::<B, 2, Int>::from_data(TensorData::new(mask, [rows, seq]), device);
    host(model.forward(ids, Some(mask)))
}

/// The model forward (with flash attention on wgpu) equals flex's, for the tiny and the small
/// preset.
#[test]
fn model_forward_matches_flex() {
    for preset in ["tiny", "small"] {
        let mut config = ModelConfig::preset(preset).unwrap();
        config.initializer_range = 0.1;
        let flex = logits::<Cpu>(&config, &Default::default());
        let fused = logits::<Wgpu>(&config, &device());
        let unfused = logits::<WgpuUnfused>(&config, &device());
        let scale = flex.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let (d_fused, d_unfused) = (max_abs_diff(&fused, &flex), max_abs_diff(&unfused, &flex));
        eprintln!("{preset}: |logits| ≤ {scale}, fused Δ {d_fused:e}, unfused Δ {d_unfused:e}");
        assert!(d_fused < 1e-4 * scale.max(1.0), "{preset} fused: {d_fused}");
        assert!(
            d_unfused < 1e-4 * scale.max(1.0),
            "{preset} unfused: {d_unfused}"
        );
    }
}

/// Greedy decoding of padded prompts gives flex's completions on wgpu.
#[test]
fn greedy_rollout_matches_flex() {
    let mut config = ModelConfig::preset("tiny").unwrap();
    // Wide init: peaked predictions, so no near-ties for float noise to flip.
    config.initializer_range = 0.3;
    let tok = byte_level_tokenizer().unwrap();
    let prompts = vec![
        chat_prompt("You are a helpful assistant.", "Write add(a, b).", None),
        "x".into(),
    ];
    let rollout = RolloutConfig {
        max_new_tokens: 12,
        steps: 12,
        temperature: 0.0,
        top_p: None,
        alg: Alg::Entropy,
        num_completions: 2,
        ..RolloutConfig::default()
    };
    let flex_model = DiffusionLm::<Cpu>::init_with(&config, &Default::default(), 3, DType::F32);
    let flex = generate(&flex_model, &tok, &prompts, &rollout).unwrap();
    let wgpu_model = DiffusionLm::<Wgpu>::init_with(&config, &device(), 3, DType::F32);
    let wgpu = generate(&wgpu_model, &tok, &prompts, &rollout).unwrap();
    assert!(flex.prompt_mask[2].contains(&0), "the batch is padded");
    assert_eq!(wgpu.completion_ids, flex.completion_ids);
}

/// One GRPO update (coupled estimator, one iteration, gradient accumulation over micro-batches of
/// 3 rows, KL to the reference) on a fixed rollout: the loss, the gradient norm and the updated
/// parameters of wgpu equal flex's.
#[test]
fn train_step_matches_flex() {
    fn update<B: AutodiffBackend>(device: &B::Device) -> (Vec<Vec<f32>>, f64, f64) {
        let config = train_config(&["grpo.num_iterations=1"]);
        let policy = DiffusionLm::<B>::init_with(&tiny_config(), device, 5, DType::F32);
        let mut t = Trainer::<B>::from_parts(
            config,
            policy,
            byte_level_tokenizer().unwrap(),
            tasks(),
            common::letters_reward(),
            device.clone(),
        )
        .unwrap();
        let rows: Vec<Vec<u32>> = (0..4)
            .map(|r| (0..6).map(|j| 10 + 7 * r + j).collect())
            .collect();
        let mut prompt_mask = vec![vec![1u32; 6]; 4];
        prompt_mask[1][..2].fill(0);
        let rollout = RolloutBatch {
            prompt_ids: rows,
            prompt_mask,
            completion_ids: (0..4)
                .map(|r| (0..8).map(|k| 60 + 10 * r + k).collect())
                .collect(),
            completion_mask: vec![vec![1; 8]; 4],
            texts: vec![String::new(); 4],
            group: vec![0, 0, 1, 1],
            traces: None,
            forward_passes: 0,
            cost: Default::default(),
        };
        let stats = t
            .update(
                0,
                &rollout,
                &[1.0, -0.5, -1.0, 0.5],
                AdvantageStats::default(),
            )
            .unwrap();
        let it = &stats.iterations[0];
        assert!(it.applied);
        (params(t.policy()), it.loss, it.grad_norm)
    }
    let (flex, flex_loss, flex_norm) = update::<CpuAutodiff>(&Default::default());
    let (wgpu, loss, norm) = update::<WgpuAutodiff>(&device());
    eprintln!("loss {flex_loss} / {loss}, grad norm {flex_norm} / {norm}");
    assert!((loss - flex_loss).abs() < 1e-5 * flex_loss.abs().max(1.0));
    assert!((norm - flex_norm).abs() < 1e-4 * flex_norm);
    let start = params(&DiffusionLm::<Cpu>::init_with(
        &tiny_config(),
        &Default::default(),
        5,
        DType::F32,
    ));
    // AdamW's first step moves each weight by about ±lr whatever the gradient's size, so a
    // gradient within float noise of zero may step the other way: allow that for a few weights.
    let lr = 1e-3;
    let (mut moved, mut total, mut flipped) = (0usize, 0usize, 0usize);
    for ((w, f), s) in wgpu.iter().zip(&flex).zip(&start) {
        for ((w, f), s) in w.iter().zip(f).zip(s) {
            total += 1;
            moved += usize::from((f - s).abs() > lr / 2.0);
            let d = (w - f).abs();
            assert!(d < 2.5 * lr, "a weight differs by {d}");
            flipped += usize::from(d > 1e-5);
        }
    }
    eprintln!("{flipped} of {total} weights differ by more than 1e-5 ({moved} moved)");
    assert!(moved > total / 2, "the update moved {moved} of {total}");
    assert!(
        flipped * 1000 < total,
        "{flipped} of {total} weights differ"
    );
}
