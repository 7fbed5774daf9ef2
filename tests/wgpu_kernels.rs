//! The fused CubeCL kernels of `coupled_grpo::cube` (log-softmax + gather, RMSNorm, SiLU·up,
//! RoPE) against Burn's generic composition on the same wgpu device and against flex, forward
//! and gradients, on the plain (`WgpuUnfused`) and the fused (`Wgpu`) backend. On a machine
//! without a GPU the device is Mesa's lavapipe (`WgpuDevice::Cpu`, storage buffers ≤ 128 MiB:
//! the largest tensor here is 4 × 152064 f32 = 2.3 MiB); `COUPLED_GRPO_WGPU_DEVICE=default`
//! picks the default adapter instead (`coupled_grpo::backend::wgpu_device`). Build with
//! `--features wgpu`.
//!
//! Tolerances (absolute): log-probabilities 2e-4 over a 152k vocabulary (an f32 sum of 152k
//! exponentials, summed in a different order than Burn's reduction), 1e-5 elsewhere in f32,
//! 2e-2 for the f16 forward checks.
//!
//! The fused side of each comparison calls the kernel's `try_*` entry point and fails if it
//! declines the backend, so no comparison is silently generic against generic; the model's
//! entry points (`cpu::ops::{rms_norm, silu_mul, rope, log_softmax_gather}`) are checked too.
#![cfg(feature = "wgpu")]

mod common;

use burn::backend::Autodiff;
use burn::tensor::activation::{log_softmax, silu};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Int, Tensor, TensorData, Tolerance};
use common::{tensor, values};
use coupled_grpo::backend::{wgpu_device as device, Cpu, Wgpu, WgpuUnfused};
use coupled_grpo::cpu::ops;
use coupled_grpo::cube::{self, log_prob};
use coupled_grpo::estimator::{target_log_probs, HeadLayout, HeadWeight};
use coupled_grpo::model::rope::{rope_reference, rotate_half_matrix};

fn ids<B: Backend>(values: &[i64], device: &B::Device) -> Tensor<B, 1, Int> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> TensorData {
    t.into_data().convert::<f32>()
}

fn close(got: TensorData, want: TensorData, tol: f32) {
    got.assert_approx_eq::<f32>(&want, Tolerance::absolute(tol));
}

/// The generic composition the kernel replaces.
fn reference_log_probs<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> Tensor<B, 1> {
    log_softmax(logits, 1)
        .gather(1, targets.unsqueeze_dim::<2>(1))
        .squeeze_dim::<1>(1)
}

/// Rows of 152064 (Qwen2's vocabulary: not a multiple of the 256-unit block), of 1000, and of
/// 7 (fewer elements than units): logits spread enough that the softmax is far from uniform.
const LOG_PROB_SHAPES: [(usize, usize); 3] = [(4, 152_064), (5, 1000), (3, 7)];

/// Valid targets at both ends of the vocabulary and inside.
fn targets_for(rows: usize, vocab: usize) -> Vec<i64> {
    (0..rows)
        .map(|r| match r % 3 {
            0 => 0,
            1 => vocab as i64 - 1,
            _ => (vocab / 2 + r) as i64 % vocab as i64,
        })
        .collect()
}

fn log_prob_forward_matches<B: Backend>(device: &B::Device) {
    for (i, &(rows, vocab)) in LOG_PROB_SHAPES.iter().enumerate() {
        let x = values(rows * vocab, 10 + i as u64, 8.0);
        let t = targets_for(rows, vocab);
        let logits = tensor::<B, 2>(&x, [rows, vocab], device);
        let got = log_prob::try_log_softmax_gather(logits.clone(), ids::<B>(&t, device))
            .unwrap_or_else(|_| panic!("the kernel must take a CubeCL backend"));
        let want = reference_log_probs(logits.clone(), ids::<B>(&t, device));
        let flex = reference_log_probs(
            tensor::<Cpu, 2>(&x, [rows, vocab], &Default::default()),
            ids::<Cpu>(&t, &Default::default()),
        );
        let got = host(got);
        close(got.clone(), host(want), 2e-4);
        close(got, host(flex), 2e-4);
        // The log-partition that `try_forward` also returns.
        let (_, lse) = log_prob::try_forward(logits.clone(), ids::<B>(&t, device))
            .unwrap_or_else(|_| panic!("CubeCL backend"));
        let max = logits.clone().max_dim(1);
        let want_lse = ((logits - max.clone()).exp().sum_dim(1).log() + max).squeeze_dim::<1>(1);
        close(host(lse), host(want_lse), 2e-4);
    }
}

#[test]
fn log_softmax_gather_forward_matches_burn_and_flex() {
    log_prob_forward_matches::<WgpuUnfused>(&device());
    log_prob_forward_matches::<Wgpu>(&device());
}

/// Gradients of `Σ_r w_r · log p(target_r)` with some `w_r = 0` (padding rows: their targets
/// are real ids but their weight is zero, as in the estimator).
fn log_prob_gradients_match<B: AutodiffBackend>(device: &B::Device) {
    for (i, &(rows, vocab)) in LOG_PROB_SHAPES.iter().enumerate() {
        let x = values(rows * vocab, 20 + i as u64, 8.0);
        let t = targets_for(rows, vocab);
        let w: Vec<f32> = (0..rows)
            .map(|r| if r == 1 { 0.0 } else { r as f32 - 1.5 })
            .collect();
        let grad_of = |fused: bool| {
            let logits = tensor::<B, 2>(&x, [rows, vocab], device).require_grad();
            let targets = ids::<B>(&t, device);
            let lp = if fused {
                log_prob::try_log_softmax_gather(logits.clone(), targets)
                    .unwrap_or_else(|_| panic!("the kernel must take autodiff over CubeCL"))
            } else {
                reference_log_probs(logits.clone(), targets)
            };
            let loss = (lp * tensor::<B, 1>(&w, [rows], device)).sum();
            host(logits.grad(&loss.backward()).expect("logits are tracked"))
        };
        let got = grad_of(true);
        // A zero-weight row has a zero gradient.
        let row1 = &got.as_slice::<f32>().expect("f32")[vocab..2 * vocab];
        assert!(row1.iter().all(|&g| g == 0.0), "padding row has a gradient");
        close(got, grad_of(false), 1e-5);
    }
}

#[test]
fn log_softmax_gather_gradients_match_burn() {
    log_prob_gradients_match::<Autodiff<WgpuUnfused>>(&device());
    log_prob_gradients_match::<Autodiff<Wgpu>>(&device());
}

#[test]
fn log_softmax_gather_ignores_out_of_vocabulary_targets() {
    let device = device();
    let (rows, vocab) = (3, 300);
    let x = values(rows * vocab, 3, 4.0);
    type B = Autodiff<WgpuUnfused>;
    let logits = tensor::<B, 2>(&x, [rows, vocab], &device).require_grad();
    let lp = log_prob::try_log_softmax_gather(logits.clone(), ids::<B>(&[-100, 5, 300], &device))
        .unwrap_or_else(|_| panic!("CubeCL autodiff"));
    let lp_host = host(lp.clone());
    let lp_host = lp_host.as_slice::<f32>().expect("f32");
    assert_eq!(lp_host[0], 0.0);
    assert_eq!(lp_host[2], 0.0);
    let want = reference_log_probs(
        tensor::<Cpu, 2>(&x, [rows, vocab], &Default::default()),
        ids::<Cpu>(&[0, 5, 0], &Default::default()),
    );
    let want = host(want);
    assert!((lp_host[1] - want.as_slice::<f32>().expect("f32")[1]).abs() < 1e-5);
    let grad = host(logits.grad(&lp.sum().backward()).expect("tracked"));
    let grad = grad.as_slice::<f32>().expect("f32");
    assert!(grad[..vocab].iter().all(|&g| g == 0.0));
    assert!(grad[2 * vocab..].iter().all(|&g| g == 0.0));
    assert!(grad[vocab..2 * vocab].iter().any(|&g| g != 0.0));
}

/// The 3-D entry point the estimator uses, through autodiff on both wgpu backends, against flex.
#[test]
fn ops_log_softmax_gather_matches_flex_with_gradients() {
    let device = device();
    let (n, k, vocab) = (2, 3, 517);
    let x = values(n * k * vocab, 4, 6.0);
    let t: Vec<i64> = (0..n * k).map(|i| (i * 97 % vocab) as i64).collect();
    fn run<B: AutodiffBackend>(
        x: &[f32],
        t: &[i64],
        dims: [usize; 3],
        device: &B::Device,
    ) -> (TensorData, TensorData) {
        let [n, k, _] = dims;
        let logits = tensor::<B, 3>(x, dims, device).require_grad();
        let idx = ids::<B>(t, device).reshape([n, k, 1]);
        let lp = ops::log_softmax_gather(logits.clone(), idx);
        assert_eq!(lp.dims(), [n, k, 1]);
        let w = tensor::<B, 3>(&values(n * k, 5, 1.0), [n, k, 1], device);
        let grad = logits
            .grad(&(lp.clone() * w).sum().backward())
            .expect("tracked");
        (host(lp), host(grad))
    }
    let (want_lp, want_grad) = run::<Autodiff<Cpu>>(&x, &t, [n, k, vocab], &Default::default());
    for (lp, grad) in [
        run::<Autodiff<WgpuUnfused>>(&x, &t, [n, k, vocab], &device),
        run::<Autodiff<Wgpu>>(&x, &t, [n, k, vocab], &device),
    ] {
        close(lp, want_lp.clone(), 1e-4);
        close(grad, want_grad.clone(), 1e-5);
    }
}

/// The estimator's fused output head (`target_log_probs`: chunked logits, the kernels inside
/// one graph node) on wgpu against flex, in both weight layouts, with gradients of the hidden
/// rows and the weight.
#[test]
fn fused_head_on_wgpu_matches_flex() {
    let device = device();
    let (m, d, vocab) = (7, 24, 1003);
    let h = values(m * d, 6, 1.0);
    let w = values(d * vocab, 7, 0.5);
    let t: Vec<i64> = (0..m).map(|i| (i * 331 % vocab) as i64).collect();
    let dl = values(m, 8, 1.0);
    fn run<B: AutodiffBackend>(
        (h, w, t, dl): (&[f32], &[f32], &[i64], &[f32]),
        (m, d, vocab): (usize, usize, usize),
        layout: HeadLayout,
        device: &B::Device,
    ) -> [TensorData; 3] {
        let hidden = tensor::<B, 2>(h, [m, d], device).require_grad();
        let weight = match layout {
            HeadLayout::InOut => tensor::<B, 2>(w, [d, vocab], device),
            HeadLayout::OutIn => tensor::<B, 2>(w, [vocab, d], device),
        }
        .require_grad();
        let head = HeadWeight {
            weight: weight.clone(),
            layout,
        };
        // Two rows of logits per chunk: the chunk loop runs, with a short last chunk.
        let lp = target_log_probs(hidden.clone(), head, ids::<B>(t, device), 2 * vocab * 4);
        let grads = (lp.clone() * tensor::<B, 1>(dl, [m], device))
            .sum()
            .backward();
        [
            host(lp),
            host(hidden.grad(&grads).expect("tracked")),
            host(weight.grad(&grads).expect("tracked")),
        ]
    }
    for layout in [HeadLayout::InOut, HeadLayout::OutIn] {
        let args = (h.as_slice(), w.as_slice(), t.as_slice(), dl.as_slice());
        let want = run::<Autodiff<Cpu>>(args, (m, d, vocab), layout, &Default::default());
        for got in [
            run::<Autodiff<WgpuUnfused>>(args, (m, d, vocab), layout, &device),
            run::<Autodiff<Wgpu>>(args, (m, d, vocab), layout, &device),
        ] {
            for (g, w) in got.into_iter().zip(want.clone()) {
                close(g, w, 1e-4);
            }
        }
    }
}

fn rms_reference<B: Backend>(x: Tensor<B, 3>, w: Tensor<B, 1>, eps: f64) -> Tensor<B, 3> {
    let inv = (x.clone().square().mean_dim(2) + eps).sqrt().recip();
    x * inv * w.unsqueeze::<3>()
}

/// `d = 1000`: more than one pass of the 256-unit block, not a multiple of it; `d = 40`: fewer.
fn rms_norm_matches<B: AutodiffBackend>(device: &B::Device) {
    for (i, d) in [1000usize, 40].into_iter().enumerate() {
        let shape = [2, 5, d];
        let x = values(2 * 5 * d, 30 + i as u64, 2.0);
        let w: Vec<f32> = values(d, 40 + i as u64, 0.3)
            .iter()
            .map(|v| 1.0 + v)
            .collect();
        let g = values(2 * 5 * d, 50 + i as u64, 1.0);
        let run = |fused: bool| {
            let xt = tensor::<B, 3>(&x, shape, device).require_grad();
            let wt = tensor::<B, 1>(&w, [d], device).require_grad();
            let y = if fused {
                let flat = cube::norm::try_rms_norm(xt.clone().reshape([10, d]), wt.clone(), 1e-6)
                    .unwrap_or_else(|_| panic!("the kernel must take autodiff over CubeCL"));
                flat.reshape(shape)
            } else {
                rms_reference(xt.clone(), wt.clone(), 1e-6)
            };
            let grads = (y.clone() * tensor::<B, 3>(&g, shape, device))
                .sum()
                .backward();
            [
                host(y),
                host(xt.grad(&grads).expect("tracked")),
                host(wt.grad(&grads).expect("tracked")),
            ]
        };
        let ([y, dx, dw], [ry, rdx, rdw]) = (run(true), run(false));
        close(y.clone(), ry, 1e-5);
        close(dx, rdx, 1e-5);
        close(dw, rdw, 1e-4);
        // And the inference path (no autodiff) on the inner backend.
        let plain = ops::rms_norm(
            tensor::<B::InnerBackend, 3>(&x, shape, device),
            tensor::<B::InnerBackend, 1>(&w, [d], device),
            1e-6,
        );
        close(host(plain), y, 1e-5);
    }
}

#[test]
fn rms_norm_matches_burn_with_gradients() {
    rms_norm_matches::<Autodiff<WgpuUnfused>>(&device());
    rms_norm_matches::<Autodiff<Wgpu>>(&device());
}

fn silu_mul_matches<B: AutodiffBackend>(device: &B::Device) {
    let shape = [3, 7, 333];
    let n = 3 * 7 * 333;
    let (g, u, dy) = (values(n, 60, 6.0), values(n, 61, 2.0), values(n, 62, 1.0));
    let run = |fused: bool| {
        let gt = tensor::<B, 3>(&g, shape, device).require_grad();
        let ut = tensor::<B, 3>(&u, shape, device).require_grad();
        let y = if fused {
            cube::silu::try_silu_mul(gt.clone(), ut.clone())
                .unwrap_or_else(|_| panic!("the kernel must take autodiff over CubeCL"))
        } else {
            silu(gt.clone()) * ut.clone()
        };
        let grads = (y.clone() * tensor::<B, 3>(&dy, shape, device))
            .sum()
            .backward();
        [
            host(y),
            host(gt.grad(&grads).expect("tracked")),
            host(ut.grad(&grads).expect("tracked")),
        ]
    };
    for (got, want) in run(true).into_iter().zip(run(false)) {
        close(got, want, 1e-5);
    }
    let plain = ops::silu_mul(
        tensor::<B::InnerBackend, 3>(&g, shape, device),
        tensor::<B::InnerBackend, 3>(&u, shape, device),
    );
    close(host(plain), run(false)[0].clone(), 1e-5);
}

#[test]
fn silu_mul_matches_burn_with_gradients() {
    silu_mul_matches::<Autodiff<WgpuUnfused>>(&device());
    silu_mul_matches::<Autodiff<Wgpu>>(&device());
}

fn rope_matches<B: AutodiffBackend>(device: &B::Device) {
    let shape = [2, 7, 3, 16];
    let n = 2 * 7 * 3 * 16;
    let (x, c, s, dy) = (
        values(n, 70, 1.0),
        values(n, 71, 1.0),
        values(n, 72, 1.0),
        values(n, 73, 1.0),
    );
    for scale in [1.0f32, 0.5] {
        let run = |fused: bool| {
            let xt = tensor::<B, 4>(&x, shape, device).require_grad();
            let (ct, st) = (
                tensor::<B, 4>(&c, shape, device),
                tensor::<B, 4>(&s, shape, device),
            );
            let y = if fused {
                cube::rope::try_rope(xt.clone(), ct, st, scale)
                    .unwrap_or_else(|_| panic!("the kernel must take autodiff over CubeCL"))
            } else {
                rope_reference(xt.clone(), ct, st, scale)
            };
            let grads = (y.clone() * tensor::<B, 4>(&dy, shape, device))
                .sum()
                .backward();
            [host(y), host(xt.grad(&grads).expect("tracked"))]
        };
        let want = run(false);
        for (got, want) in run(true).into_iter().zip(want.clone()) {
            close(got, want, 1e-5);
        }
        // The inference path (no autodiff) through the model's entry point.
        let inner = |v: &[f32]| tensor::<B::InnerBackend, 4>(v, shape, device);
        let r = rotate_half_matrix::<B::InnerBackend>(16, device);
        let plain = ops::rope(inner(&x), inner(&c), inner(&s), r, scale);
        close(host(plain), want[0].clone(), 1e-5);
    }
}

#[test]
fn rope_matches_burn_with_gradients() {
    rope_matches::<Autodiff<WgpuUnfused>>(&device());
    rope_matches::<Autodiff<Wgpu>>(&device());
}

/// f16 tensors (lavapipe has f16, not bf16): the kernels read and write f16 and compute in
/// f32; the f32 result rounded to f16 is the reference.
#[test]
fn kernels_take_f16() {
    type B = WgpuUnfused;
    let device = device();
    let (rows, d) = (6, 300);
    let x = values(rows * d, 80, 2.0);
    let w: Vec<f32> = values(d, 81, 0.3).iter().map(|v| 1.0 + v).collect();
    let x32 = tensor::<B, 2>(&x, [rows, d], &device);
    let w32 = tensor::<B, 1>(&w, [d], &device);
    let y16 = ops::rms_norm(
        x32.clone().cast(DType::F16),
        w32.clone().cast(DType::F16),
        1e-6,
    );
    assert_eq!(y16.dtype(), DType::F16);
    close(host(y16), host(ops::rms_norm(x32.clone(), w32, 1e-6)), 2e-2);
    let u = tensor::<B, 2>(&values(rows * d, 82, 1.0), [rows, d], &device);
    let s16 = ops::silu_mul(x32.clone().cast(DType::F16), u.clone().cast(DType::F16));
    assert_eq!(s16.dtype(), DType::F16);
    close(host(s16), host(silu(x32.clone()) * u), 2e-2);
    let t = targets_for(rows, d);
    let lp16 =
        log_prob::try_log_softmax_gather(x32.clone().cast(DType::F16), ids::<B>(&t, &device))
            .unwrap_or_else(|_| panic!("f16 logits"));
    assert_eq!(lp16.dtype(), DType::F32);
    let x16_as_32 = x32.cast(DType::F16).cast(DType::F32);
    close(
        host(lp16),
        host(reference_log_probs(x16_as_32, ids::<B>(&t, &device))),
        1e-4,
    );
}
