//! Bidirectional grouped-query attention on flex f32 (inference), straight from the projections'
//! `[batch, seq, heads · head_dim]` layout: two strided GEMMs per (sequence, head) with a
//! per-thread score buffer, and the output written in place into the layout `o_proj` reads.
//!
//! Burn's composition needs head-major copies of Q and of the output (`swap_dims` + `reshape`),
//! a padding bias repeated over heads and a `[batch, kv, rep · seq, seq]` score tensor: 12 %,
//! 3 % and most of the allocation time of a CPU rollout forward.

use burn::tensor::{backend::Backend, DType, Tensor};
use burn_flex::FlexTensor;
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::math::softmax_rows_inplace;
use super::{from_flex, into_flex, is_flex};

/// Whether [`grouped_attention`] serves a model of this backend and dtype.
pub fn applies<B: Backend>(dtype: DType) -> bool {
    is_flex::<B>() && dtype == DType::F32
}

/// A raw pointer that tasks writing disjoint parts of one buffer may share.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: every task writes a disjoint set of elements (its own head's columns of its own
// sequence), and the buffer outlives the parallel loop.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// Through a method, so that closures capture the `Send` wrapper, not the raw pointer field.
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// `softmax(q kᵀ + bias) v` per query head, query head `i` using kv head `i / (heads / kv)`.
/// `q` must already carry RoPE and the `head_dim^-1/2` scale. Call only where [`applies`].
///
/// # Shapes
/// - q: `[batch, seq, heads, head_dim]`
/// - k, v: `[batch, seq, kv_heads, head_dim]`
/// - bias: `[batch, 1, seq, seq]` additive (0 = attend), or `None`
/// - returns `[batch, seq, heads · head_dim]`
pub fn grouped_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    bias: Option<Tensor<B, 4>>,
) -> Tensor<B, 3> {
    let [b, s, h, hd] = q.dims();
    let kv = k.dims()[2];
    let flex = |t: Tensor<B, 4>| -> FlexTensor {
        into_flex(t).unwrap_or_else(|_| unreachable!("grouped_attention called on flex f32"))
    };
    let (q, k, v) = (flex(q), flex(k), flex(v));
    let bias = bias.map(|t| flex(t.cast(DType::F32)));
    let mut out = FlexTensor::zeros([b, s, h * hd].into(), DType::F32);
    attend(
        q.storage::<f32>(),
        k.storage::<f32>(),
        v.storage::<f32>(),
        bias.as_ref().map(|t| t.storage::<f32>()),
        out.storage_mut::<f32>(),
        [b, s, h, kv, hd],
    );
    from_flex(out)
}

fn attend(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    [b, s, h, kv, hd]: [usize; 5],
) {
    debug_assert!(q.len() == b * s * h * hd && out.len() == q.len());
    debug_assert!(k.len() == b * s * kv * hd && v.len() == k.len());
    let rep = h / kv;
    let (q_rs, kv_rs) = ((h * hd) as isize, (kv * hd) as isize);
    let dst = SharedMut(out.as_mut_ptr());
    (0..b * h)
        .into_par_iter()
        .for_each_init(Vec::new, |scores: &mut Vec<f32>, task| {
            let (seq, head) = (task / h, task % h);
            let group = head / rep;
            scores.resize(s * s, 0.0);
            let q = &q[seq * s * h * hd + head * hd..];
            let k = &k[seq * s * kv * hd + group * hd..];
            let v = &v[seq * s * kv * hd + group * hd..];
            // SAFETY: the strides address only elements of q/k/v inside this sequence and head
            // (rows < s, columns < hd, in bounds by the layout checks above) and of `scores`
            // (s × s); the output block of (seq, head) is disjoint from every other task's.
            unsafe {
                // scores[i, j] = Σ_d q[i, d] · k[j, d]
                gemm(
                    s,
                    s,
                    hd,
                    scores.as_mut_ptr(),
                    1,
                    s as isize,
                    false,
                    q.as_ptr(),
                    1,
                    q_rs,
                    k.as_ptr(),
                    kv_rs,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
            softmax_rows_inplace(scores, bias.map(|b| &b[seq * s * s..(seq + 1) * s * s]), s);
            unsafe {
                // out[i, d] = Σ_j p[i, j] · v[j, d]
                gemm(
                    s,
                    hd,
                    s,
                    dst.ptr().add(seq * s * h * hd + head * hd),
                    1,
                    q_rs,
                    false,
                    scores.as_ptr(),
                    1,
                    s as isize,
                    v.as_ptr(),
                    1,
                    kv_rs,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;
    use burn::tensor::activation::softmax;
    use burn::tensor::{Distribution, Tolerance};

    #[test]
    fn matches_the_head_major_composition_with_gqa_and_padding() {
        let device = Default::default();
        let (b, s, h, kv, hd) = (3, 13, 6, 2, 8);
        let rand = |shape: [usize; 4]| {
            Tensor::<Cpu, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device)
        };
        let (q, k, v) = (
            rand([b, s, h, hd]),
            rand([b, s, kv, hd]),
            rand([b, s, kv, hd]),
        );
        // Sequence 1 has 4 left pads: pads see only themselves, tokens see only tokens.
        let mut bias = vec![0.0f32; b * s * s];
        for i in 0..s {
            for j in 0..s {
                let (pi, pj) = (i < 4, j < 4);
                if (pi || pj) && i != j {
                    bias[s * s + i * s + j] = -1e9;
                }
            }
        }
        let bias =
            Tensor::<Cpu, 4>::from_data(burn::tensor::TensorData::new(bias, [b, 1, s, s]), &device);

        let rep = h / kv;
        let expand = |t: Tensor<Cpu, 4>| {
            t.swap_dims(1, 2)
                .unsqueeze_dim::<5>(2)
                .repeat_dim(2, rep)
                .reshape([b, h, s, hd])
        };
        let scores = q
            .clone()
            .swap_dims(1, 2)
            .matmul(expand(k.clone()).swap_dims(2, 3));
        let probs = softmax(scores + bias.clone(), 3);
        let want = probs
            .matmul(expand(v.clone()))
            .swap_dims(1, 2)
            .reshape([b, s, h * hd]);
        grouped_attention(q, k, v, Some(bias))
            .into_data()
            .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(1e-5));
    }
}
