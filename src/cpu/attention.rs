//! Bidirectional grouped-query attention on flex f32 (inference), straight from the projections'
//! `[batch, seq, heads · head_dim]` layout: two strided GEMMs per (sequence, head) with a
//! per-thread score buffer, and the output written in place into the layout `o_proj` reads.
//!
//! Burn's composition needs head-major copies of Q and of the output (`swap_dims` + `reshape`),
//! a padding bias repeated over heads and a `[batch, kv, rep · seq, seq]` score tensor: 12 %,
//! 3 % and most of the allocation time of a CPU rollout forward.

use burn::tensor::{backend::Backend, DType, Tensor};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::gemm::{matmul, View};
use super::math::{softmax_backward_rows, softmax_rows_inplace};
use super::{expect_flex, from_flex};

/// Whether [`grouped_attention`] serves a model of this backend and dtype: f32 on flex, or on
/// autodiff over flex (training).
pub fn applies<B: Backend>(dtype: DType) -> bool {
    dtype == DType::F32 && super::on_flex::<B>()
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
/// Queries and keys may differ in number (a window of queries over cached keys and values);
/// training (autodiff) needs them equal.
///
/// # Shapes
/// - q: `[batch, seq_q, heads, head_dim]`
/// - k, v: `[batch, seq_k, kv_heads, head_dim]`
/// - bias: `[batch, 1, seq_q, seq_k]` additive (0 = attend), or `None`
/// - returns `[batch, seq_q, heads · head_dim]`
pub fn grouped_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    bias: Option<Tensor<B, 4>>,
) -> Tensor<B, 3> {
    if let Some(strategy) = super::autodiff::strategy::<B>() {
        return super::autodiff::grouped_attention(strategy, q, k, v, bias);
    }
    let [b, sq, h, hd] = q.dims();
    let [_, sk, kv, _] = k.dims();
    let (q, k, v) = (expect_flex(q), expect_flex(k), expect_flex(v));
    let bias = bias.map(|t| expect_flex(t.cast(DType::F32)));
    let mut out = super::flex_zeros([b, sq, h * hd]);
    attend(
        q.storage::<f32>(),
        k.storage::<f32>(),
        v.storage::<f32>(),
        bias.as_ref().map(|t| t.storage::<f32>()),
        out.storage_mut::<f32>(),
        [b, sq, sk, h, kv, hd],
    );
    from_flex(out)
}

/// [`attend`] on contiguous flex tensors; returns `[batch, seq, heads · head_dim]`.
pub(super) fn attend_flex(
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    bias: Option<&FlexTensor>,
    [b, s, h, kv, hd]: [usize; 5],
) -> FlexTensor {
    let mut out = super::flex_zeros([b, s, h * hd]);
    attend(
        q.storage::<f32>(),
        k.storage::<f32>(),
        v.storage::<f32>(),
        bias.map(|t| t.storage::<f32>()),
        out.storage_mut::<f32>(),
        [b, s, s, h, kv, hd],
    );
    out
}

/// `p ← softmax(q kᵀ + bias)` for one head: `q` and `k` start at the head's first element, with
/// rows `q_rs` and `kv_rs` apart; `bias` and `p` are this sequence's `sq × sk`.
fn probabilities(
    q: &[f32],
    k: &[f32],
    bias: Option<&[f32]>,
    p: &mut [f32],
    [sq, sk, hd, q_rs, kv_rs]: [usize; 5],
) {
    debug_assert!(p.len() == sq * sk);
    debug_assert!(
        sq == 0
            || sk == 0
            || (q.len() > (sq - 1) * q_rs + hd - 1 && k.len() > (sk - 1) * kv_rs + hd - 1)
    );
    // SAFETY: rows < sq (sk) and columns < hd of q (k) lie inside this sequence and head (the
    // callers' layout checks); p is sq × sk.
    unsafe {
        matmul(
            (sq, sk, hd),
            p.as_mut_ptr(),
            sk,
            View::rows(q, q_rs),
            View::rows(k, kv_rs).t(),
            false,
        );
    }
    softmax_rows_inplace(p, bias, sk);
}

fn attend(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    [b, sq, sk, h, kv, hd]: [usize; 6],
) {
    debug_assert!(q.len() == b * sq * h * hd && out.len() == q.len());
    debug_assert!(k.len() == b * sk * kv * hd && v.len() == k.len());
    let rep = h / kv;
    let (q_rs, kv_rs) = (h * hd, kv * hd);
    let dst = SharedMut(out.as_mut_ptr());
    (0..b * h)
        .into_par_iter()
        .for_each_init(Vec::new, |scores: &mut Vec<f32>, task| {
            let (seq, head) = (task / h, task % h);
            let (q_off, kv_off) = (
                seq * sq * q_rs + head * hd,
                seq * sk * kv_rs + (head / rep) * hd,
            );
            scores.resize(sq * sk, 0.0);
            let bias = bias.map(|b| &b[seq * sq * sk..(seq + 1) * sq * sk]);
            probabilities(
                &q[q_off..],
                &k[kv_off..],
                bias,
                scores,
                [sq, sk, hd, q_rs, kv_rs],
            );
            // SAFETY: v's rows < sk and columns < hd lie inside this sequence; the output block
            // of (seq, head) is disjoint from every other task's.
            unsafe {
                // out = P v
                matmul(
                    (sq, hd, sk),
                    dst.ptr().add(q_off),
                    q_rs,
                    View::rows(scores, sk),
                    View::rows(&v[kv_off..], kv_rs),
                    false,
                );
            }
        });
}

/// Gradients of [`attend`] for `d_out` (`[batch, seq, heads · head_dim]`), written into `dq`
/// (`[batch, seq, heads, head_dim]`), `dk` and `dv` (`[batch, seq, kv_heads, head_dim]`). The
/// probabilities are recomputed per head instead of kept from the forward (two `seq²` buffers
/// per thread, none per layer). No gradient flows to the bias (a constant mask).
#[allow(clippy::too_many_arguments)]
pub(super) fn attend_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: Option<&[f32]>,
    d_out: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    [b, s, h, kv, hd]: [usize; 5],
) {
    debug_assert!(q.len() == b * s * h * hd && d_out.len() == q.len() && dq.len() == q.len());
    debug_assert!(k.len() == b * s * kv * hd && dk.len() == k.len() && dv.len() == k.len());
    let rep = h / kv;
    let (q_rs, kv_rs) = (h * hd, kv * hd);
    let (dq_ptr, dk_ptr, dv_ptr) = (
        SharedMut(dq.as_mut_ptr()),
        SharedMut(dk.as_mut_ptr()),
        SharedMut(dv.as_mut_ptr()),
    );
    // One task per (sequence, kv group): its rep heads accumulate into the group's dK and dV.
    (0..b * kv).into_par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(p, dp): &mut (Vec<f32>, Vec<f32>), task| {
            let (seq, group) = (task / kv, task % kv);
            p.resize(s * s, 0.0);
            dp.resize(s * s, 0.0);
            let kv_off = seq * s * kv_rs + group * hd;
            let (k, v) = (&k[kv_off..], &v[kv_off..]);
            let bias = bias.map(|b| &b[seq * s * s..(seq + 1) * s * s]);
            for (i, head) in (group * rep..(group + 1) * rep).enumerate() {
                let q_off = seq * s * q_rs + head * hd;
                let (q, d_o) = (&q[q_off..], &d_out[q_off..]);
                let accumulate = i > 0;
                probabilities(q, k, bias, p, [s, s, hd, q_rs, kv_rs]);
                // SAFETY: as in `attend`; this task alone writes dQ of its heads and dK/dV of its
                // (sequence, group).
                unsafe {
                    // dV += Pᵀ dO
                    let (p_v, d_o_v) = (View::rows(p, s), View::rows(d_o, q_rs));
                    matmul(
                        (s, hd, s),
                        dv_ptr.ptr().add(kv_off),
                        kv_rs,
                        p_v.t(),
                        d_o_v,
                        accumulate,
                    );
                    // dP = dO vᵀ
                    let v_t = View::rows(v, kv_rs).t();
                    matmul((s, s, hd), dp.as_mut_ptr(), s, d_o_v, v_t, false);
                }
                softmax_backward_rows(p, dp, s); // dS
                unsafe {
                    let ds = View::rows(dp, s);
                    // dQ = dS k
                    matmul(
                        (s, hd, s),
                        dq_ptr.ptr().add(q_off),
                        q_rs,
                        ds,
                        View::rows(k, kv_rs),
                        false,
                    );
                    // dK += dSᵀ q
                    let q_v = View::rows(q, q_rs);
                    matmul(
                        (s, hd, s),
                        dk_ptr.ptr().add(kv_off),
                        kv_rs,
                        ds.t(),
                        q_v,
                        accumulate,
                    );
                }
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Cpu, CpuAutodiff, CpuAutodiffCheckpointed};
    use burn::tensor::activation::softmax;
    use burn::tensor::backend::AutodiffBackend;
    use burn::tensor::{Distribution, ElementConversion, TensorData, Tolerance};

    /// (batch, seq, heads, kv_heads, head_dim)
    const DIMS: (usize, usize, usize, usize, usize) = (3, 13, 6, 2, 8);

    /// Burn's head-major composition, GQA by repeating K and V over each group (HF `repeat_kv`).
    fn reference<B: Backend>(
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        bias: Tensor<B, 4>,
    ) -> Tensor<B, 3> {
        let (b, s, h, kv, hd) = DIMS;
        let expand = |t: Tensor<B, 4>| {
            t.swap_dims(1, 2)
                .unsqueeze_dim::<5>(2)
                .repeat_dim(2, h / kv)
                .reshape([b, h, s, hd])
        };
        let scores = q.swap_dims(1, 2).matmul(expand(k).swap_dims(2, 3));
        softmax(scores + bias, 3)
            .matmul(expand(v))
            .swap_dims(1, 2)
            .reshape([b, s, h * hd])
    }

    /// Sequence 1 has 4 left pads: pads see only themselves, tokens see only tokens.
    fn padding_bias<B: Backend>() -> Tensor<B, 4> {
        let (b, s, ..) = DIMS;
        let mut bias = vec![0.0f32; b * s * s];
        for i in 0..s {
            for j in 0..s {
                if (i < 4 || j < 4) && i != j {
                    bias[s * s + i * s + j] = -1e9;
                }
            }
        }
        Tensor::from_data(TensorData::new(bias, [b, 1, s, s]), &Default::default())
    }

    fn qkv<B: Backend>() -> [Tensor<B, 4>; 3] {
        let (b, s, h, kv, hd) = DIMS;
        let rand = |shape: [usize; 4]| {
            Tensor::<B, 4>::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
        };
        [
            rand([b, s, h, hd]),
            rand([b, s, kv, hd]),
            rand([b, s, kv, hd]),
        ]
    }

    #[test]
    fn matches_the_head_major_composition_with_gqa_and_padding() {
        let [q, k, v] = qkv::<Cpu>();
        let want = reference(q.clone(), k.clone(), v.clone(), padding_bias());
        grouped_attention(q, k, v, Some(padding_bias()))
            .into_data()
            .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(1e-5));
    }

    fn gradients_match<B: AutodiffBackend>() {
        let (b, s, h, _, hd) = DIMS;
        let [q, k, v] = qkv::<B>();
        let w = Tensor::<B, 3>::random(
            [b, s, h * hd],
            Distribution::Normal(0.0, 1.0),
            &Default::default(),
        );
        let grads_of = |fused: bool| {
            let [q, k, v] = [&q, &k, &v].map(|t| t.clone().require_grad());
            let out = if fused {
                grouped_attention(q.clone(), k.clone(), v.clone(), Some(padding_bias()))
            } else {
                reference(q.clone(), k.clone(), v.clone(), padding_bias())
            };
            let grads = (out * w.clone()).sum().backward();
            [&q, &k, &v].map(|t| t.grad(&grads).unwrap())
        };
        let (got, want) = (grads_of(true), grads_of(false));
        for ((name, got), want) in ["q", "k", "v"].iter().zip(got).zip(want) {
            let diff: f32 = (got - want).abs().max().into_scalar().elem();
            assert!(diff < 1e-4, "d{name}: max |Δ| {diff}");
        }
    }

    #[test]
    fn fused_attention_has_burns_gradients_with_and_without_checkpointing() {
        assert!(applies::<CpuAutodiff>(DType::F32) && !applies::<CpuAutodiff>(DType::BF16));
        gradients_match::<CpuAutodiff>();
        gradients_match::<CpuAutodiffCheckpointed>();
    }
}
