//! The output head fused with log-softmax and the target gather: `log p(y_i | h_i)` for a set of
//! hidden rows, without ever keeping `[rows, vocab]` logits for the backward pass.
//!
//! The forward computes the logits chunk by chunk (at most `max_logit_bytes` of f32 at once)
//! and keeps each row's log-partition only. Under autodiff one graph node holds the hidden rows,
//! the weight, the targets and the log-partitions; its backward recomputes each chunk's logits,
//! turns them into `dlogits = d · (onehot(y) − softmax)` and forms `dh = dlogits · Wᵀ` and, when
//! the weight is tracked (it is not under LoRA, where the head is frozen), `dW`. Autodiff over
//! each of the project's backends (flex, CUDA, wgpu; either checkpoint strategy) gets the node;
//! the chunks run on the `cpu::head` kernels for flex f32, on the fused log-softmax/gather
//! kernels of `cube::log_prob` for CUDA and wgpu, and on Burn's ops otherwise. Another autodiff
//! backend falls back to Burn's ops, which are correct but keep the logits.

use std::any::{Any, TypeId};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Flex};
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{
    backend::Backend, DType, IndexingUpdateOp, Int, Tensor, TensorData, TensorPrimitive,
};

use crate::cpu::head::{self as kernels, HeadDims};
use crate::model::DiffusionLm;

/// How the output weight is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadLayout {
    /// `[hidden, vocab]`: an untied `lm_head` (kept transposed for the matmul).
    InOut,
    /// `[vocab, hidden]`: the embedding matrix of a tied head.
    OutIn,
}

/// The output projection of a model: its weight and layout (the head has no bias).
#[derive(Debug, Clone)]
pub struct HeadWeight<B: Backend> {
    /// `[hidden, vocab]` or `[vocab, hidden]`, see `layout`.
    pub weight: Tensor<B, 2>,
    pub layout: HeadLayout,
}

impl<B: Backend> HeadWeight<B> {
    /// `lm_head`'s weight, or the embeddings when tied; `None` when the head is more than one
    /// matrix (a bias or a LoRA adapter), which the fused op does not cover.
    pub fn of(model: &DiffusionLm<B>) -> Option<Self> {
        match &model.lm_head {
            Some(head) if head.bias.is_some() || head.lora.is_some() => None,
            Some(head) => Some(Self {
                weight: head.weight.val(),
                layout: HeadLayout::InOut,
            }),
            None => Some(Self {
                weight: model.embed_tokens.val(),
                layout: HeadLayout::OutIn,
            }),
        }
    }

    /// `(hidden, vocab)`.
    pub fn dims(&self) -> (usize, usize) {
        let [a, b] = self.weight.dims();
        match self.layout {
            HeadLayout::InOut => (a, b),
            HeadLayout::OutIn => (b, a),
        }
    }
}

/// `log softmax(h_i · W)[targets_i]` for every row, with at most `max_logit_bytes` of f32 logits
/// at once and, under autodiff, no logits kept for the backward pass.
///
/// # Shapes
/// - hidden: `[m, hidden]`
/// - targets: `[m]` token ids
/// - returns `[m]` f32
pub fn target_log_probs<B: Backend>(
    hidden: Tensor<B, 2>,
    head: HeadWeight<B>,
    targets: Tensor<B, 1, Int>,
    max_logit_bytes: usize,
) -> Tensor<B, 1> {
    let [m, d] = hidden.dims();
    let (hd, vocab) = head.dims();
    assert_eq!(d, hd, "hidden width differs from the head's");
    assert_eq!(targets.dims(), [m], "one target per hidden row");
    let chunk = (max_logit_bytes / (vocab * 4).max(1)).clamp(1, m.max(1));
    macro_rules! fused_on {
        ($inner:ty, $ckpt:ty) => {
            if TypeId::of::<B>() == TypeId::of::<Autodiff<$inner, $ckpt>>() {
                return fused::<B, $inner, $ckpt>(hidden, head, targets, chunk);
            }
        };
    }
    fused_on!(Flex, NoCheckpointing);
    fused_on!(Flex, BalancedCheckpointing);
    #[cfg(feature = "cuda")]
    {
        use crate::backend::{Cuda, CudaUnfused};
        fused_on!(Cuda, NoCheckpointing);
        fused_on!(Cuda, BalancedCheckpointing);
        fused_on!(CudaUnfused, NoCheckpointing);
        fused_on!(CudaUnfused, BalancedCheckpointing);
    }
    #[cfg(feature = "wgpu")]
    {
        use crate::backend::{Wgpu, WgpuUnfused};
        fused_on!(Wgpu, NoCheckpointing);
        fused_on!(Wgpu, BalancedCheckpointing);
        fused_on!(WgpuUnfused, NoCheckpointing);
        fused_on!(WgpuUnfused, BalancedCheckpointing);
    }
    forward(hidden, &head, targets, chunk).0
}

fn cast_any<T: 'static, U: 'static>(t: T) -> U {
    let boxed: Box<dyn Any> = Box::new(t);
    *boxed
        .downcast::<U>()
        .unwrap_or_else(|_| unreachable!("backend type checked by TypeId"))
}

fn float<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// What the graph keeps: `m × hidden` rows, the weight (shared, not copied), `m` targets and
/// `m` log-partitions.
#[derive(Debug, Clone)]
struct HeadState<I: Backend> {
    hidden: FloatTensor<I>,
    weight: FloatTensor<I>,
    targets: IntTensor<I>,
    lse: FloatTensor<I>,
    layout: HeadLayout,
    chunk: usize,
}

#[derive(Debug)]
struct HeadBackward;

impl<I: Backend> Backward<I, 2> for HeadBackward {
    type State = HeadState<I>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_h, node_w] = ops.parents;
        let d_lp = float::<I, 1>(grads.consume::<I>(&ops.node));
        let s = ops.state;
        let head = HeadWeight {
            weight: float(s.weight),
            layout: s.layout,
        };
        let targets = Tensor::<I, 1, Int>::from_primitive(s.targets);
        let (dh, dw) = backward(
            float(s.hidden),
            &head,
            targets,
            (float(s.lse), d_lp),
            s.chunk,
            node_w.is_some(),
        );
        if let Some(node) = node_h {
            grads.register::<I>(node.id, dh.into_primitive().tensor());
        }
        if let (Some(node), Some(dw)) = (node_w, dw) {
            grads.register::<I>(node.id, dw.into_primitive().tensor());
        }
    }
}

/// [`target_log_probs`] as one graph node, for `B = Autodiff<I, C>`.
fn fused<B: Backend, I: Backend, C: CheckpointStrategy>(
    hidden: Tensor<B, 2>,
    head: HeadWeight<B>,
    targets: Tensor<B, 1, Int>,
    chunk: usize,
) -> Tensor<B, 1> {
    let h: FloatTensor<Autodiff<I, C>> = cast_any(hidden.into_primitive().tensor());
    let w: FloatTensor<Autodiff<I, C>> = cast_any(head.weight.into_primitive().tensor());
    let t: IntTensor<I> = cast_any(targets.into_primitive());
    let inner = HeadWeight::<I> {
        weight: float(w.primitive.clone()),
        layout: head.layout,
    };
    let (lp, lse) = forward(
        float(h.primitive.clone()),
        &inner,
        Tensor::from_primitive(t.clone()),
        chunk,
    );
    let out = lp.into_primitive().tensor();
    let node = match <HeadBackward as Backward<I, 2>>::prepare::<C>(
        HeadBackward,
        [h.node.clone(), w.node.clone()],
    )
    .compute_bound()
    .stateful()
    {
        OpsKind::Tracked(prep) => {
            let state = HeadState {
                hidden: h.primitive,
                weight: w.primitive,
                targets: t,
                lse: lse.into_primitive().tensor(),
                layout: head.layout,
                chunk,
            };
            prep.finish(state, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    float(cast_any::<_, FloatTensor<B>>(node))
}

/// Flex f32 operands as host buffers for the kernels, or `None` for another backend or dtype.
fn flex_operands<B: Backend>(
    hidden: &Tensor<B, 2>,
    head: &HeadWeight<B>,
    targets: &Tensor<B, 1, Int>,
    chunk: usize,
) -> Option<(
    burn_flex::FlexTensor,
    burn_flex::FlexTensor,
    Vec<usize>,
    HeadDims,
)> {
    let f32s = hidden.dtype() == DType::F32 && head.weight.dtype() == DType::F32;
    if !crate::cpu::is_flex::<B>() || !f32s {
        return None;
    }
    let [m, d] = hidden.dims();
    let (_, vocab) = head.dims();
    let targets = targets
        .clone()
        .into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .expect("Int tensor data")
        .into_iter()
        .map(|t| t as usize)
        .collect();
    let dims = HeadDims {
        m,
        d,
        vocab,
        chunk,
        layout: head.layout,
    };
    Some((
        crate::cpu::expect_flex(hidden.clone()),
        crate::cpu::expect_flex(head.weight.clone()),
        targets,
        dims,
    ))
}

fn host_tensor<B: Backend, const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Logits of `hidden` in the parameters' dtype.
///
/// # Shapes
/// - hidden: `[c, hidden]` → `[c, vocab]`
fn raw_logits<B: Backend>(hidden: Tensor<B, 2>, head: &HeadWeight<B>) -> Tensor<B, 2> {
    let w = head.weight.clone();
    let w = match head.layout {
        HeadLayout::InOut => w,
        HeadLayout::OutIn => w.transpose(),
    };
    hidden.matmul(w)
}

/// Logits of `hidden` in f32 (the product runs in the parameters' dtype).
///
/// # Shapes
/// - hidden: `[c, hidden]` → `[c, vocab]`
fn logits<B: Backend>(hidden: Tensor<B, 2>, head: &HeadWeight<B>) -> Tensor<B, 2> {
    raw_logits(hidden, head).cast(DType::F32)
}

/// `(log p(target), log-partition)`, both `[m]` f32, `chunk` rows of logits at a time.
fn forward<B: Backend>(
    hidden: Tensor<B, 2>,
    head: &HeadWeight<B>,
    targets: Tensor<B, 1, Int>,
    chunk: usize,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let device = hidden.device();
    if let Some((h, w, t, dims)) = flex_operands(&hidden, head, &targets, chunk) {
        let (lp, lse) = kernels::forward(h.storage(), w.storage(), &t, &dims);
        return (
            host_tensor(lp, [dims.m], &device),
            host_tensor(lse, [dims.m], &device),
        );
    }
    let [m, d] = hidden.dims();
    let (mut lps, mut lses) = (Vec::new(), Vec::new());
    for r0 in (0..m).step_by(chunk) {
        let r1 = (r0 + chunk).min(m);
        // CUDA / wgpu: one kernel reads the logits in the parameters' dtype (no f32 copy) and
        // writes the row's log-probability and log-partition (see `crate::cube::log_prob`).
        #[cfg(any(feature = "cuda", feature = "wgpu"))]
        if crate::cube::is_cube::<B>() {
            let raw = raw_logits(hidden.clone().slice([r0..r1, 0..d]), head);
            let idx = targets.clone().narrow(0, r0, r1 - r0);
            if let Ok((lp, lse)) = crate::cube::log_prob::try_forward(raw, idx) {
                lps.push(lp);
                lses.push(lse);
                continue;
            }
        }
        let logits = logits(hidden.clone().slice([r0..r1, 0..d]), head); // [c, V]
        let max = logits.clone().max_dim(1); // [c, 1]
        let lse = (logits.clone() - max.clone()).exp().sum_dim(1).log() + max;
        let idx = targets.clone().narrow(0, r0, r1 - r0).unsqueeze_dim::<2>(1);
        lps.push((logits.gather(1, idx) - lse.clone()).squeeze_dim::<1>(1));
        lses.push(lse.squeeze_dim::<1>(1));
    }
    (Tensor::cat(lps, 0), Tensor::cat(lses, 0))
}

/// `dlogits = d · (onehot(target) − softmax)` of a chunk by the fused CubeCL kernel (one
/// element-wise pass, in the parameters' dtype) on CUDA / wgpu; `None` on other backends.
///
/// # Shapes
/// - hc: `[c, hidden]`; idx: `[c]`; lse, dl: `[c, 1]` → `[c, vocab]`
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn cube_dlogits<B: Backend>(
    hc: &Tensor<B, 2>,
    head: &HeadWeight<B>,
    idx: &Tensor<B, 1, Int>,
    lse: &Tensor<B, 2>,
    dl: &Tensor<B, 2>,
) -> Option<Tensor<B, 2>> {
    if !crate::cube::is_cube::<B>() {
        return None;
    }
    let raw = raw_logits(hc.clone(), head);
    let (lse, dl) = (lse.clone().squeeze_dim(1), dl.clone().squeeze_dim(1));
    crate::cube::log_prob::try_backward(raw, idx.clone(), lse, dl)
}

/// Without a CubeCL backend in the build there is no kernel.
#[cfg(not(any(feature = "cuda", feature = "wgpu")))]
fn cube_dlogits<B: Backend>(
    _: &Tensor<B, 2>,
    _: &HeadWeight<B>,
    _: &Tensor<B, 1, Int>,
    _: &Tensor<B, 2>,
    _: &Tensor<B, 2>,
) -> Option<Tensor<B, 2>> {
    None
}

/// `(dh, dW)` of `Σ_i d_lp[i] · log p(target_i)`; `dW` (in the weight's layout and dtype) only
/// when `with_weight`.
fn backward<B: Backend>(
    hidden: Tensor<B, 2>,
    head: &HeadWeight<B>,
    targets: Tensor<B, 1, Int>,
    (lse, d_lp): (Tensor<B, 1>, Tensor<B, 1>),
    chunk: usize,
    with_weight: bool,
) -> (Tensor<B, 2>, Option<Tensor<B, 2>>) {
    let device = hidden.device();
    if let Some((h, w, t, dims)) = flex_operands(&hidden, head, &targets, chunk) {
        let host = |x: Tensor<B, 1>| x.into_data().convert::<f32>().into_vec::<f32>();
        let (lse, d_lp) = (host(lse).expect("f32"), host(d_lp).expect("f32"));
        let (dh, dw) = kernels::backward(
            h.storage(),
            w.storage(),
            &t,
            (&lse, &d_lp),
            &dims,
            with_weight,
        );
        let w_shape = head.weight.dims();
        return (
            host_tensor(dh, [dims.m, dims.d], &device),
            dw.map(|dw| host_tensor(dw, w_shape, &device)),
        );
    }
    let [m, d] = hidden.dims();
    let dtype = head.weight.dtype();
    let mut dhs = Vec::new();
    let mut dw: Option<Tensor<B, 2>> = None;
    for r0 in (0..m).step_by(chunk) {
        let r1 = (r0 + chunk).min(m);
        let hc = hidden.clone().slice([r0..r1, 0..d]);
        let (lse, dl) = (
            lse.clone().narrow(0, r0, r1 - r0).unsqueeze_dim::<2>(1),
            d_lp.clone().narrow(0, r0, r1 - r0).unsqueeze_dim::<2>(1),
        );
        let idx = targets.clone().narrow(0, r0, r1 - r0);
        let g = cube_dlogits(&hc, head, &idx, &lse, &dl).unwrap_or_else(|| {
            let idx = idx.unsqueeze_dim::<2>(1);
            let p = (logits(hc.clone(), head) - lse).exp();
            let g = (p * dl.clone().neg()).scatter(1, idx, dl, IndexingUpdateOp::Add);
            g.cast(dtype) // [c, V]
        });
        let w = head.weight.clone();
        dhs.push(match head.layout {
            HeadLayout::InOut => g.clone().matmul(w.transpose()),
            HeadLayout::OutIn => g.clone().matmul(w),
        });
        // A frozen head (LoRA) needs no dW: skip the vocabulary-wide product.
        if with_weight {
            let dwc = match head.layout {
                HeadLayout::InOut => hc.transpose().matmul(g),
                HeadLayout::OutIn => g.transpose().matmul(hc),
            };
            dw = Some(match dw {
                Some(acc) => acc + dwc,
                None => dwc,
            });
        }
    }
    (Tensor::cat(dhs, 0), dw)
}
