//! Fused tensor ops for the model's hot spots: one vectorised pass on flex f32 (with a
//! vectorised backward node under autodiff over flex, see the `autodiff` module), Burn's own ops on every
//! other backend or dtype.

use burn::tensor::activation::{log_softmax, silu, softmax};
use burn::tensor::{backend::Backend, DType, Int, Tensor};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::autodiff;
use super::gemm::{matmul_to_vec, View};
use super::math::{
    log_softmax_rows_inplace, rms_norm_rows, silu_mul_inplace, softmax_rows_inplace,
};
use super::{expect_flex, flex_from_vec, from_flex, is_flex};

/// Elements per parallel task: big enough to amortise scheduling, small enough to split a
/// layer's activations over the cores.
pub(super) const CHUNK: usize = 1 << 15;

fn flex_f32<B: Backend, const D: usize>(tensors: &[&Tensor<B, D>]) -> bool {
    is_flex::<B>() && tensors.iter().all(|t| t.dtype() == DType::F32)
}

/// `silu(gate) · up` (SwiGLU's activation).
///
/// # Shapes
/// - gate, up: the same shape → that shape
pub fn silu_mul<B: Backend, const D: usize>(gate: Tensor<B, D>, up: Tensor<B, D>) -> Tensor<B, D> {
    if gate.dims() == up.dims() && flex_f32(&[&gate, &up]) {
        return from_flex(flex_silu_mul(expect_flex(gate), expect_flex(up)));
    }
    if let Some(strategy) = autodiff::strategy::<B>() {
        if gate.dims() == up.dims() && autodiff::inner_f32(&[&gate, &up]) {
            return autodiff::silu_mul(strategy, gate, up);
        }
    }
    // CUDA / wgpu: one element-wise kernel (and one for the backward) instead of two.
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    let (gate, up) = match crate::cube::silu::try_silu_mul(gate, up) {
        Ok(out) => return out,
        Err(inputs) => inputs,
    };
    silu(gate) * up
}

/// `softmax(scores + bias)` over the last dimension (on flex inference the bias is added in the
/// same pass).
///
/// # Shapes
/// - scores: `[..., n]`
/// - bias: the shape of `scores`, or `None`
/// - returns the shape of `scores`
pub fn softmax_last<B: Backend, const D: usize>(
    scores: Tensor<B, D>,
    bias: Option<Tensor<B, D>>,
) -> Tensor<B, D> {
    let row_len = scores.dims()[D - 1];
    let same = |b: &Tensor<B, D>| b.dims() == scores.dims() && flex_f32(&[b]);
    if flex_f32(&[&scores]) && row_len > 0 && bias.as_ref().is_none_or(same) {
        let bias = bias.map(expect_flex);
        return from_flex(flex_softmax_last(
            expect_flex(scores),
            bias.as_ref(),
            row_len,
        ));
    }
    let scores = match bias {
        Some(b) => scores + b,
        None => scores,
    };
    match autodiff::strategy::<B>() {
        Some(strategy) if row_len > 0 && autodiff::inner_f32(&[&scores]) => {
            autodiff::softmax_last(strategy, scores)
        }
        _ => softmax(scores, D - 1),
    }
}

/// `log_softmax` over the last dimension (the loss's log-probabilities over the vocabulary).
///
/// # Shapes
/// - x: `[..., n]` → the same shape
pub fn log_softmax_last<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let row_len = x.dims()[D - 1];
    if row_len == 0 {
        return log_softmax(x, D - 1);
    }
    if flex_f32(&[&x]) {
        return from_flex(flex_log_softmax_last(expect_flex(x), row_len));
    }
    match autodiff::strategy::<B>() {
        Some(strategy) if autodiff::inner_f32(&[&x]) => autodiff::log_softmax_last(strategy, x),
        _ => log_softmax(x, D - 1),
    }
}

/// `log_softmax(x)` over the last dimension, gathered at `targets` (the target token's
/// log-probability). On CUDA / wgpu one kernel per direction that never materialises the
/// `[..., n]` log-softmax (see `crate::cube::log_prob`); elsewhere [`log_softmax_last`] and
/// Burn's `gather`.
///
/// # Shapes
/// - x: `[..., n]`
/// - targets: `[..., 1]` ids in `[0, n)`
/// - returns `[..., 1]`
pub fn log_softmax_gather<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    targets: Tensor<B, D, Int>,
) -> Tensor<B, D> {
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    let (x, targets) = if crate::cube::runtime::has_kernels::<B>()
        && targets.dims()[D - 1] == 1
        && targets.dims()[..D - 1] == x.dims()[..D - 1]
    {
        let (dims, t_dims) = (x.dims(), targets.dims());
        let rows = dims[..D - 1].iter().product::<usize>();
        let flat = (x.reshape([rows, dims[D - 1]]), targets.reshape([rows]));
        match crate::cube::log_prob::try_log_softmax_gather(flat.0, flat.1) {
            Ok(lp) => return lp.reshape(t_dims),
            Err((x, t)) => (x.reshape(dims), t.reshape(t_dims)),
        }
    } else {
        (x, targets)
    };
    log_softmax_last(x).gather(D - 1, targets)
}

/// `x · weight + bias` over the last dimension (weight stored `[d_in, d_out]`). On flex f32 the
/// product is written straight into the output buffer with the bias as its starting value;
/// under autodiff over flex one node computes both gradients with strided products (no
/// transposed copies, no re-aligning copy of each output).
///
/// # Shapes
/// - x: `[..., d_in]` → `[..., d_out]`
/// - weight: `[d_in, d_out]`
/// - bias: `[d_out]`
pub fn linear<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    let [d_in, d_out] = weight.dims();
    let fits = x.dims()[D - 1] == d_in && bias.as_ref().is_none_or(|b| b.dims() == [d_out]);
    let mut out_dims = x.dims();
    out_dims[D - 1] = d_out;
    if fits
        && flex_f32(&[&x])
        && flex_f32(&[&weight])
        && bias.as_ref().is_none_or(|b| flex_f32(&[b]))
    {
        let bias = bias.map(expect_flex);
        return from_flex(flex_linear(
            &expect_flex(x),
            &expect_flex(weight),
            bias.as_ref(),
            out_dims,
        ));
    }
    if let Some(strategy) = autodiff::strategy::<B>() {
        if fits
            && autodiff::inner_f32(&[&x])
            && autodiff::inner_f32(&[&weight])
            && bias.as_ref().is_none_or(|b| autodiff::inner_f32(&[b]))
        {
            return autodiff::linear(strategy, x, weight, bias, out_dims);
        }
    }
    burn::tensor::module::linear(x, weight, bias)
}

/// [`linear`] on flex f32 tensors; `out_dims` is `x`'s shape with `d_out` last.
pub(super) fn flex_linear<const D: usize>(
    x: &FlexTensor,
    w: &FlexTensor,
    bias: Option<&FlexTensor>,
    out_dims: [usize; D],
) -> FlexTensor {
    let (x, w) = (x.to_contiguous(), w.to_contiguous());
    let d_out = out_dims[D - 1];
    let d_in = w.layout().shape().num_elements() / d_out.max(1);
    let rows = out_dims[..D - 1].iter().product::<usize>();
    // The bias is the product's starting value.
    let init = bias.map(|b| b.to_contiguous().storage::<f32>().repeat(rows));
    // SAFETY: x is rows × d_in and w is d_in × d_out.
    let out = unsafe {
        matmul_to_vec(
            (rows, d_out, d_in),
            View::rows(x.storage::<f32>(), d_in),
            View::rows(w.storage::<f32>(), d_out),
            init,
        )
    };
    flex_from_vec(out, out_dims)
}

/// Rotary embedding in the HF `rotate_half` convention, times `scale`:
/// `(x · cos + rotate_half(x) · sin) · scale` with `rotate_half([x1, x2]) = [-x2, x1]`. On flex
/// f32 one pass (and, under autodiff over flex, one node whose backward is the inverse
/// rotation); elsewhere Burn's ops, with `rotate_half` as a product by the `[head_dim, head_dim]`
/// permutation `rotate_half`.
///
/// # Shapes
/// - x, cos, sin: `[batch, seq, heads, head_dim]` → the same shape
/// - rotate_half: `[head_dim, head_dim]`
pub fn rope<B: Backend>(
    x: Tensor<B, 4>,
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
    rotate_half: Tensor<B, 2>,
    scale: f32,
) -> Tensor<B, 4> {
    let [b, s, h, d] = x.dims();
    let fits = cos.dims() == x.dims() && sin.dims() == x.dims() && d % 2 == 0 && d > 0;
    if fits && flex_f32(&[&x, &cos, &sin]) {
        return from_flex(flex_rope(
            &expect_flex(x),
            &expect_flex(cos),
            &expect_flex(sin),
            d,
            scale,
        ));
    }
    if let Some(strategy) = autodiff::strategy::<B>() {
        if fits && autodiff::inner_f32(&[&x, &cos, &sin]) {
            return autodiff::rope(strategy, x, cos, sin, scale);
        }
    }
    // CUDA / wgpu: one element-wise kernel instead of the permutation matmul and three more.
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    let (x, cos, sin) = match crate::cube::rope::try_rope(x, cos, sin, scale) {
        Ok(out) => return out,
        Err(inputs) => inputs,
    };
    let rotated = x
        .clone()
        .reshape([b * s * h, d])
        .matmul(rotate_half)
        .reshape([b, s, h, d]);
    let out = x * cos + rotated * sin;
    if scale == 1.0 {
        out
    } else {
        out * scale
    }
}

/// [`rope`] on flex f32 tensors of equal shapes, rows of `head_dim`; with `inverse`, the
/// transposed rotation (`rope`'s backward: `g · cos − rotate_half(g · sin)`).
pub(super) fn flex_rope_with(
    x: &FlexTensor,
    cos: &FlexTensor,
    sin: &FlexTensor,
    head_dim: usize,
    scale: f32,
    inverse: bool,
) -> FlexTensor {
    let (x, cos, sin) = (x.to_contiguous(), cos.to_contiguous(), sin.to_contiguous());
    let shape = x.layout().shape().clone();
    let mut out = vec![0.0f32; shape.num_elements()];
    let half = head_dim / 2;
    let chunk = CHUNK.div_ceil(head_dim) * head_dim;
    out.par_chunks_mut(chunk)
        .zip(x.storage::<f32>().par_chunks(chunk))
        .zip(cos.storage::<f32>().par_chunks(chunk))
        .zip(sin.storage::<f32>().par_chunks(chunk))
        .for_each(|(((o, x), c), s)| {
            let rows = o
                .chunks_exact_mut(head_dim)
                .zip(x.chunks_exact(head_dim))
                .zip(c.chunks_exact(head_dim).zip(s.chunks_exact(head_dim)));
            for ((o, x), (c, s)) in rows {
                let (x1, x2) = x.split_at(half);
                let (o1, o2) = o.split_at_mut(half);
                if inverse {
                    // dx1 = g1·c1 + g2·s2, dx2 = g2·c2 − g1·s1
                    for j in 0..half {
                        o1[j] = (x1[j] * c[j] + x2[j] * s[j + half]) * scale;
                        o2[j] = (x2[j] * c[j + half] - x1[j] * s[j]) * scale;
                    }
                } else {
                    // y1 = x1·c1 − x2·s1, y2 = x2·c2 + x1·s2
                    for j in 0..half {
                        o1[j] = (x1[j] * c[j] - x2[j] * s[j]) * scale;
                        o2[j] = (x2[j] * c[j + half] + x1[j] * s[j + half]) * scale;
                    }
                }
            }
        });
    flex_from_vec(out, shape)
}

/// [`rope`] on flex f32 tensors of equal shapes.
pub(super) fn flex_rope(
    x: &FlexTensor,
    cos: &FlexTensor,
    sin: &FlexTensor,
    head_dim: usize,
    scale: f32,
) -> FlexTensor {
    flex_rope_with(x, cos, sin, head_dim, scale, false)
}

/// RMSNorm over the last dimension: `x · weight / sqrt(mean(x²) + eps)` (HF `Qwen2RMSNorm`).
///
/// # Shapes
/// - x: `[..., d]` → the same shape
/// - weight: `[d]`
pub fn rms_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    let d = x.dims()[D - 1];
    let fits = weight.dims() == [d] && d > 0;
    if fits && flex_f32(&[&x]) && flex_f32(&[&weight]) {
        return from_flex(flex_rms_norm(
            &expect_flex(x),
            &expect_flex(weight),
            eps as f32,
        ));
    }
    if let Some(strategy) = autodiff::strategy::<B>() {
        if fits && autodiff::inner_f32(&[&x]) && autodiff::inner_f32(&[&weight]) {
            return autodiff::rms_norm(strategy, x, weight, eps as f32);
        }
    }
    // CUDA / wgpu: one kernel per direction (rows flattened; a reshape of a contiguous
    // activation is free).
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    let (x, weight) = if crate::cube::runtime::has_kernels::<B>() {
        let dims = x.dims();
        let rows = dims[..D - 1].iter().product::<usize>();
        match crate::cube::norm::try_rms_norm(x.reshape([rows, d]), weight, eps as f32) {
            Ok(out) => return out.reshape(dims),
            Err((x, weight)) => (x.reshape(dims), weight),
        }
    } else {
        (x, weight)
    };
    // HF computes the statistics in f32 and casts back before the weight multiply.
    let dtype = x.dtype();
    let x32 = x.cast(DType::F32);
    let inv = (x32.clone().square().mean_dim(D - 1) + eps).sqrt().recip();
    (x32 * inv).cast(dtype) * weight.unsqueeze()
}

/// RMSNorm of a flex f32 tensor over its last dimension (`w.len()`).
pub(super) fn flex_rms_norm(x: &FlexTensor, w: &FlexTensor, eps: f32) -> FlexTensor {
    let (x, w) = (x.to_contiguous(), w.to_contiguous());
    let w = w.storage::<f32>();
    let d = w.len();
    let mut out = super::flex_zeros(x.layout().shape().clone());
    let rows_per_task = CHUNK.div_ceil(d);
    out.storage_mut::<f32>()
        .par_chunks_mut(rows_per_task * d)
        .zip(x.storage::<f32>().par_chunks(rows_per_task * d))
        .for_each(|(o, x)| rms_norm_rows(x, w, eps, o));
    out
}

/// Row log-softmax of a flex f32 tensor over its last dimension (`row_len`).
pub(super) fn flex_log_softmax_last(x: FlexTensor, row_len: usize) -> FlexTensor {
    let mut x = x.to_contiguous();
    let rows_per_task = CHUNK.div_ceil(row_len);
    x.storage_mut::<f32>()
        .par_chunks_mut(rows_per_task * row_len)
        .for_each(|x| log_softmax_rows_inplace(x, row_len));
    x
}

/// `silu(g) · u` on flex f32 tensors of equal shapes (written into `g`'s buffer when unshared).
pub(super) fn flex_silu_mul(g: FlexTensor, u: FlexTensor) -> FlexTensor {
    let (mut g, u) = (g.to_contiguous(), u.to_contiguous());
    g.storage_mut::<f32>()
        .par_chunks_mut(CHUNK)
        .zip(u.storage::<f32>().par_chunks(CHUNK))
        .for_each(|(g, u)| silu_mul_inplace(g, u));
    g
}

/// Row softmax of a flex f32 tensor over its last dimension (`row_len`), after adding `bias`
/// (same shape) when given.
pub(super) fn flex_softmax_last(
    s: FlexTensor,
    bias: Option<&FlexTensor>,
    row_len: usize,
) -> FlexTensor {
    let mut s = s.to_contiguous();
    let bias = bias.map(|b| b.to_contiguous());
    let bias = bias.as_ref().map(|b| b.storage::<f32>());
    let rows_per_task = CHUNK.div_ceil(row_len);
    s.storage_mut::<f32>()
        .par_chunks_mut(rows_per_task * row_len)
        .enumerate()
        .for_each(|(i, x)| {
            let start = i * rows_per_task * row_len;
            softmax_rows_inplace(x, bias.map(|b| &b[start..start + x.len()]), row_len)
        });
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Cpu, CpuAutodiff};
    use crate::model::rope::{rope_reference, rotate_half_matrix};
    use burn::tensor::{Distribution, Tolerance};

    #[test]
    fn fused_ops_match_burns_composition_on_flex_and_autodiff() {
        let device = Default::default();
        let gate = Tensor::<Cpu, 3>::random([2, 70, 33], Distribution::Normal(0.0, 3.0), &device);
        let up = Tensor::<Cpu, 3>::random([2, 70, 33], Distribution::Normal(0.0, 1.0), &device);
        let want = silu(gate.clone()) * up.clone();
        silu_mul(gate.clone(), up.clone())
            .into_data()
            .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(1e-5));

        let scores =
            Tensor::<Cpu, 4>::random([2, 3, 50, 41], Distribution::Normal(0.0, 4.0), &device);
        let bias =
            Tensor::<Cpu, 4>::random([2, 3, 50, 41], Distribution::Uniform(-1e9, 0.0), &device)
                .greater_elem(-5e8)
                .float()
                .mul_scalar(-1e9);
        let want = softmax(scores.clone() + bias.clone(), 3);
        softmax_last(scores.clone(), Some(bias))
            .into_data()
            .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(1e-6));
        softmax_last(scores.clone(), None)
            .into_data()
            .assert_approx_eq::<f32>(
                &softmax(scores.clone(), 3).into_data(),
                Tolerance::absolute(1e-6),
            );
        let lx = Tensor::<Cpu, 4>::random([2, 3, 7, 40], Distribution::Normal(0.0, 1.0), &device);
        let lw = Tensor::<Cpu, 2>::random([40, 19], Distribution::Normal(0.0, 1.0), &device);
        let lb = Tensor::<Cpu, 1>::random([19], Distribution::Normal(0.0, 1.0), &device);
        for b in [Some(lb), None] {
            let want = burn::tensor::module::linear(lx.clone(), lw.clone(), b.clone());
            let got = linear(lx.clone(), lw.clone(), b);
            assert_eq!(got.dims(), [2, 3, 7, 19]);
            got.into_data()
                .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(1e-4));
        }
        let rx = Tensor::<Cpu, 4>::random([2, 7, 3, 16], Distribution::Normal(0.0, 1.0), &device);
        let rc = Tensor::<Cpu, 4>::random([2, 7, 3, 16], Distribution::Normal(0.0, 1.0), &device);
        let rs = Tensor::<Cpu, 4>::random([2, 7, 3, 16], Distribution::Normal(0.0, 1.0), &device);
        for scale in [1.0, 0.25] {
            let r = rotate_half_matrix::<Cpu>(16, &device);
            rope(rx.clone(), rc.clone(), rs.clone(), r, scale)
                .into_data()
                .assert_approx_eq::<f32>(
                    &rope_reference(rx.clone(), rc.clone(), rs.clone(), scale).into_data(),
                    Tolerance::absolute(1e-5),
                );
        }
        // A strided (transposed) input is read correctly.
        let lt = Tensor::<Cpu, 3>::random([2, 40, 7], Distribution::Normal(0.0, 1.0), &device)
            .swap_dims(1, 2);
        linear(lt.clone(), lw.clone(), None)
            .into_data()
            .assert_approx_eq::<f32>(
                &burn::tensor::module::linear(lt, lw.clone(), None).into_data(),
                Tolerance::absolute(1e-4),
            );
        assert_eq!(
            linear(Tensor::<Cpu, 3>::zeros([0, 4, 40], &device), lw, None).dims(),
            [0, 4, 19]
        );
        let x = Tensor::<Cpu, 3>::random([2, 5, 40], Distribution::Normal(0.0, 2.0), &device);
        let w = Tensor::<Cpu, 1>::random([40], Distribution::Normal(1.0, 0.3), &device);
        let inv = (x.clone().square().mean_dim(2) + 1e-6).sqrt().recip();
        rms_norm(x.clone(), w.clone(), 1e-6)
            .into_data()
            .assert_approx_eq::<f32>(
                &(x * inv * w.unsqueeze::<3>()).into_data(),
                Tolerance::absolute(1e-5),
            );
        log_softmax_last(scores.clone())
            .into_data()
            .assert_approx_eq::<f32>(
                &log_softmax(scores, 3).into_data(),
                Tolerance::absolute(1e-5),
            );
    }

    /// The fused ops' hand-written backward equals autodiff through Burn's composition.
    fn gradients_match<B: burn::tensor::backend::AutodiffBackend>() {
        let device = Default::default();
        let rand = |shape: [usize; 3], std: f64| {
            Tensor::<B, 3>::random(shape, Distribution::Normal(0.0, std), &device)
        };
        let close = |a: Tensor<B::InnerBackend, 3>, b: Tensor<B::InnerBackend, 3>| {
            a.into_data()
                .assert_approx_eq::<f32>(&b.into_data(), Tolerance::absolute(1e-5))
        };
        let (g, u, w) = (
            rand([2, 9, 37], 3.0),
            rand([2, 9, 37], 1.0),
            rand([2, 9, 37], 1.0),
        );
        let grads_of = |fused: bool| {
            let (g, u) = (g.clone().require_grad(), u.clone().require_grad());
            let out = if fused {
                silu_mul(g.clone(), u.clone())
            } else {
                silu(g.clone()) * u.clone()
            };
            let grads = (out * w.clone()).sum().backward();
            (g.grad(&grads).unwrap(), u.grad(&grads).unwrap())
        };
        let ((fg, fu), (rg, ru)) = (grads_of(true), grads_of(false));
        close(fg, rg);
        close(fu, ru);

        let (x, bias) = (rand([2, 9, 37], 2.0), rand([2, 9, 37], 1.0));
        let grads_of = |fused: bool| {
            let x = x.clone().require_grad();
            let out = if fused {
                softmax_last(x.clone(), Some(bias.clone()))
            } else {
                softmax(x.clone() + bias.clone(), 2)
            };
            x.grad(&(out * w.clone()).sum().backward()).unwrap()
        };
        close(grads_of(true), grads_of(false));

        let weight = Tensor::<B, 1>::random([37], Distribution::Normal(1.0, 0.3), &device);
        let grads_of = |fused: bool| {
            let (x, weight) = (x.clone().require_grad(), weight.clone().require_grad());
            let out = if fused {
                rms_norm(x.clone(), weight.clone(), 1e-6)
            } else {
                let inv = (x.clone().square().mean_dim(2) + 1e-6).sqrt().recip();
                x.clone() * inv * weight.clone().unsqueeze::<3>()
            };
            let grads = (out * w.clone()).sum().backward();
            (x.grad(&grads).unwrap(), weight.grad(&grads).unwrap())
        };
        let ((fx, fw), (rx, rw)) = (grads_of(true), grads_of(false));
        close(fx, rx);
        fw.into_data()
            .assert_approx_eq::<f32>(&rw.into_data(), Tolerance::absolute(1e-4));

        let grads_of = |fused: bool| {
            let x = x.clone().require_grad();
            let out = if fused {
                log_softmax_last(x.clone())
            } else {
                log_softmax(x.clone(), 2)
            };
            x.grad(&(out * w.clone()).sum().backward()).unwrap()
        };
        close(grads_of(true), grads_of(false));

        // RoPE (tables are constants): the input's gradient.
        let rand4 = |shape: [usize; 4]| {
            Tensor::<B, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device)
        };
        let (rx, rc, rs, rw) = (
            rand4([2, 5, 3, 8]),
            rand4([2, 5, 3, 8]),
            rand4([2, 5, 3, 8]),
            rand4([2, 5, 3, 8]),
        );
        let grads_of = |fused: bool| {
            let x = rx.clone().require_grad();
            let out = if fused {
                let r = rotate_half_matrix::<B>(8, &device);
                rope(x.clone(), rc.clone(), rs.clone(), r, 0.5)
            } else {
                rope_reference(x.clone(), rc.clone(), rs.clone(), 0.5)
            };
            x.grad(&(out * rw.clone()).sum().backward()).unwrap()
        };
        grads_of(true)
            .into_data()
            .assert_approx_eq::<f32>(&grads_of(false).into_data(), Tolerance::absolute(1e-5));

        // Linear with and without bias: gradients of the input, weight and bias.
        let lw = Tensor::<B, 2>::random([37, 23], Distribution::Normal(0.0, 0.5), &device);
        let lb = Tensor::<B, 1>::random([23], Distribution::Normal(0.0, 0.5), &device);
        let lw_out = rand([2, 9, 23], 1.0);
        for with_bias in [true, false] {
            let grads_of = |fused: bool| {
                let (x, lw, lb) = (
                    x.clone().require_grad(),
                    lw.clone().require_grad(),
                    lb.clone().require_grad(),
                );
                let b = with_bias.then(|| lb.clone());
                let out = if fused {
                    linear(x.clone(), lw.clone(), b)
                } else {
                    burn::tensor::module::linear(x.clone(), lw.clone(), b)
                };
                let grads = (out * lw_out.clone()).sum().backward();
                (
                    x.grad(&grads).unwrap(),
                    lw.grad(&grads).unwrap(),
                    lb.grad(&grads),
                )
            };
            let ((fx, fw, fb), (rx, rw, rb)) = (grads_of(true), grads_of(false));
            close(fx, rx);
            fw.into_data()
                .assert_approx_eq::<f32>(&rw.into_data(), Tolerance::absolute(1e-4));
            assert_eq!(fb.is_some(), with_bias);
            if let (Some(fb), Some(rb)) = (fb, rb) {
                fb.into_data()
                    .assert_approx_eq::<f32>(&rb.into_data(), Tolerance::absolute(1e-4));
            }
        }
    }

    #[test]
    fn fused_ops_have_burns_gradients_with_and_without_checkpointing() {
        gradients_match::<CpuAutodiff>();
        gradients_match::<crate::backend::CpuAutodiffCheckpointed>();
    }
}
