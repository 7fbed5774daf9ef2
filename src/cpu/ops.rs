//! Fused tensor ops for the model's hot spots: one vectorised pass on flex f32, Burn's own ops
//! on every other backend or dtype (and under autodiff, which needs Burn's backward graph).

use burn::tensor::activation::{silu, softmax};
use burn::tensor::{backend::Backend, DType, Tensor};
use rayon::prelude::*;

use super::math::{silu_mul_inplace, softmax_rows_inplace};
use super::{from_flex, into_flex, is_flex};

/// Elements per parallel task: big enough to amortise scheduling, small enough to split a
/// layer's activations over the cores.
const CHUNK: usize = 1 << 15;

fn flex_f32<B: Backend, const D: usize>(tensors: &[&Tensor<B, D>]) -> bool {
    is_flex::<B>() && tensors.iter().all(|t| t.dtype() == DType::F32)
}

/// `silu(gate) · up` (SwiGLU's activation).
///
/// # Shapes
/// - gate, up: the same shape → that shape
pub fn silu_mul<B: Backend, const D: usize>(gate: Tensor<B, D>, up: Tensor<B, D>) -> Tensor<B, D> {
    if !flex_f32(&[&gate, &up]) || gate.dims() != up.dims() {
        return silu(gate) * up;
    }
    let (Ok(mut g), Ok(u)) = (into_flex(gate), into_flex(up)) else {
        unreachable!("flex f32 checked")
    };
    g.storage_mut::<f32>()
        .par_chunks_mut(CHUNK)
        .zip(u.storage::<f32>().par_chunks(CHUNK))
        .for_each(|(g, u)| silu_mul_inplace(g, u));
    from_flex(g)
}

/// `softmax(scores + bias)` over the last dimension, the bias added in the same pass.
///
/// # Shapes
/// - scores: `[..., n]`
/// - bias: the shape of `scores`, or `None`
/// - returns the shape of `scores`
pub fn softmax_last<B: Backend, const D: usize>(
    scores: Tensor<B, D>,
    bias: Option<Tensor<B, D>>,
) -> Tensor<B, D> {
    let fast = flex_f32(&[&scores])
        && bias
            .as_ref()
            .is_none_or(|b| flex_f32(&[b]) && b.dims() == scores.dims());
    if !fast {
        let scores = match bias {
            Some(b) => scores + b,
            None => scores,
        };
        return softmax(scores, D - 1);
    }
    let row_len = scores.dims()[D - 1];
    let Ok(mut s) = into_flex(scores) else {
        unreachable!("flex f32 checked")
    };
    if row_len == 0 {
        return from_flex(s);
    }
    let rows_per_task = CHUNK.div_ceil(row_len);
    let bias = bias.map(|b| into_flex(b).unwrap_or_else(|_| unreachable!("flex f32 checked")));
    let bias = bias.as_ref().map(|b| b.storage::<f32>());
    s.storage_mut::<f32>()
        .par_chunks_mut(rows_per_task * row_len)
        .enumerate()
        .for_each(|(i, x)| {
            let start = i * rows_per_task * row_len;
            softmax_rows_inplace(x, bias.map(|b| &b[start..start + x.len()]), row_len)
        });
    from_flex(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Cpu, CpuAutodiff};
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
            .assert_approx_eq::<f32>(&softmax(scores, 3).into_data(), Tolerance::absolute(1e-6));

        // Autodiff keeps Burn's ops (and their gradients).
        let g = Tensor::<CpuAutodiff, 1>::from_floats([-2.0, 0.5, 3.0], &device).require_grad();
        let u = Tensor::<CpuAutodiff, 1>::from_floats([1.0, 2.0, -1.0], &device);
        let grads = silu_mul(g.clone(), u).sum().backward();
        assert!(g.grad(&grads).is_some());
    }
}
