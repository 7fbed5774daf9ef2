//! The fused ops of [`super::ops`] under autodiff on flex (CPU training): the forward runs the
//! vectorised kernels on the inner flex tensors and records one graph node with a hand-written,
//! equally vectorised backward, instead of Burn's chain of scalar-`exp` element-wise nodes.

use std::any::{Any, TypeId};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::{Autodiff, Flex};
use burn::tensor::{backend::Backend, DType, Shape, Tensor, TensorPrimitive};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::attention::{attend_backward, attend_flex};
use super::gemm::{matmul_to_vec, View};
use super::math::{
    log_softmax_backward_rows, rms_norm_backward_rows, silu_mul_backward, softmax_backward_rows,
};
use super::ops::{
    flex_linear, flex_log_softmax_last, flex_rms_norm, flex_rope, flex_rope_with, flex_silu_mul,
    flex_softmax_last, CHUNK,
};
use super::{flex_from_vec, flex_zeros};

/// `Autodiff<Flex, C>`'s float primitive (the same type for every checkpoint strategy).
type AdTensor = burn::tensor::ops::FloatTensor<Autodiff<Flex>>;

/// Which checkpoint strategy `B` is, when `B` is autodiff over flex.
#[derive(Clone, Copy)]
pub(super) enum Strategy {
    None,
    Balanced,
}

pub(super) fn strategy<B: Backend>() -> Option<Strategy> {
    let id = TypeId::of::<B>();
    if id == TypeId::of::<Autodiff<Flex, NoCheckpointing>>() {
        Some(Strategy::None)
    } else if id == TypeId::of::<Autodiff<Flex, BalancedCheckpointing>>() {
        Some(Strategy::Balanced)
    } else {
        None
    }
}

/// The autodiff primitive of a tensor whose backend is autodiff over flex with f32 inside.
fn into_ad<B: Backend, const D: usize>(t: Tensor<B, D>) -> AdTensor {
    let boxed: Box<dyn Any> = Box::new(t.into_primitive().tensor());
    *boxed
        .downcast::<AdTensor>()
        .unwrap_or_else(|_| unreachable!("backend checked to be Autodiff<Flex>"))
}

fn from_ad<B: Backend, const D: usize>(t: AdTensor) -> Tensor<B, D> {
    let boxed: Box<dyn Any> = Box::new(t);
    let primitive = *boxed
        .downcast::<B::FloatTensorPrimitive>()
        .unwrap_or_else(|_| unreachable!("backend checked to be Autodiff<Flex>"));
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}

/// Whether the inner tensors are f32 (the kernels' only dtype).
pub(super) fn inner_f32<B: Backend, const D: usize>(tensors: &[&Tensor<B, D>]) -> bool {
    tensors.iter().all(|t| t.dtype() == DType::F32)
}

#[derive(Debug)]
struct SiluMulBackward;

impl Backward<Flex, 2> for SiluMulBackward {
    /// `(gate, up)`
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_gate, node_up] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let (gate, up) = ops.state;
        let (gate, up) = (gate.to_contiguous(), up.to_contiguous());
        let mut d_gate = grad.clone();
        let mut d_up = grad;
        d_gate
            .storage_mut::<f32>()
            .par_chunks_mut(CHUNK)
            .zip(d_up.storage_mut::<f32>().par_chunks_mut(CHUNK))
            .zip(gate.storage::<f32>().par_chunks(CHUNK))
            .zip(up.storage::<f32>().par_chunks(CHUNK))
            .for_each(|(((dg, du), g), u)| silu_mul_backward(g, u, dg, du));
        if let Some(node) = node_gate {
            grads.register::<Flex>(node.id, d_gate);
        }
        if let Some(node) = node_up {
            grads.register::<Flex>(node.id, d_up);
        }
    }
}

fn silu_mul_with<C: CheckpointStrategy>(gate: AdTensor, up: AdTensor) -> AdTensor {
    let out = flex_silu_mul(gate.primitive.clone(), up.primitive.clone());
    match SiluMulBackward
        .prepare::<C>([gate.node.clone(), up.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((gate.primitive, up.primitive), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

/// [`super::ops::silu_mul`] for `Autodiff<Flex, _>` with f32 tensors of equal shapes.
pub(super) fn silu_mul<B: Backend, const D: usize>(
    strategy: Strategy,
    gate: Tensor<B, D>,
    up: Tensor<B, D>,
) -> Tensor<B, D> {
    let (gate, up) = (into_ad(gate), into_ad(up));
    from_ad(match strategy {
        Strategy::None => silu_mul_with::<NoCheckpointing>(gate, up),
        Strategy::Balanced => silu_mul_with::<BalancedCheckpointing>(gate, up),
    })
}

/// Which normalisation a [`SoftmaxBackward`] node undoes.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Softmax,
    LogSoftmax,
}

#[derive(Debug)]
struct SoftmaxBackward(Kind);

impl Backward<Flex, 1> for SoftmaxBackward {
    /// The op's output and its row length.
    type State = (FlexTensor, usize);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let mut grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let Some(node) = node else { return };
        let (out, row_len) = ops.state;
        let out = out.to_contiguous();
        let rows_per_task = CHUNK.div_ceil(row_len);
        let kind = self.0;
        grad.storage_mut::<f32>()
            .par_chunks_mut(rows_per_task * row_len)
            .zip(out.storage::<f32>().par_chunks(rows_per_task * row_len))
            .for_each(|(g, o)| match kind {
                Kind::Softmax => softmax_backward_rows(o, g, row_len),
                Kind::LogSoftmax => log_softmax_backward_rows(o, g, row_len),
            });
        grads.register::<Flex>(node.id, grad);
    }
}

fn normalise_with<C: CheckpointStrategy>(kind: Kind, x: AdTensor, row_len: usize) -> AdTensor {
    let out = match kind {
        Kind::Softmax => flex_softmax_last(x.primitive.clone(), None, row_len),
        Kind::LogSoftmax => flex_log_softmax_last(x.primitive.clone(), row_len),
    };
    match SoftmaxBackward(kind)
        .prepare::<C>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((out.clone(), row_len), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

fn normalise<B: Backend, const D: usize>(
    strategy: Strategy,
    kind: Kind,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    let row_len = x.dims()[D - 1];
    let x = into_ad(x);
    from_ad(match strategy {
        Strategy::None => normalise_with::<NoCheckpointing>(kind, x, row_len),
        Strategy::Balanced => normalise_with::<BalancedCheckpointing>(kind, x, row_len),
    })
}

/// Softmax over the last dimension for `Autodiff<Flex, _>` with an f32 tensor.
pub(super) fn softmax_last<B: Backend, const D: usize>(
    strategy: Strategy,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    normalise(strategy, Kind::Softmax, x)
}

/// Log-softmax over the last dimension for `Autodiff<Flex, _>` with an f32 tensor.
pub(super) fn log_softmax_last<B: Backend, const D: usize>(
    strategy: Strategy,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    normalise(strategy, Kind::LogSoftmax, x)
}

#[derive(Debug)]
struct AttentionBackward;

impl Backward<Flex, 3> for AttentionBackward {
    /// `(q, k, v, bias, [batch, seq, heads, kv_heads, head_dim])`, contiguous.
    type State = (
        FlexTensor,
        FlexTensor,
        FlexTensor,
        Option<FlexTensor>,
        [usize; 5],
    );

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_q, node_k, node_v] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let (q, k, v, bias, dims) = ops.state;
        let [b, s, h, kv, hd] = dims;
        let mut dq = flex_zeros([b, s, h, hd]);
        let mut dk = flex_zeros([b, s, kv, hd]);
        let mut dv = flex_zeros([b, s, kv, hd]);
        attend_backward(
            q.storage::<f32>(),
            k.storage::<f32>(),
            v.storage::<f32>(),
            bias.as_ref().map(|t| t.storage::<f32>()),
            grad.storage::<f32>(),
            dq.storage_mut::<f32>(),
            dk.storage_mut::<f32>(),
            dv.storage_mut::<f32>(),
            dims,
        );
        for (node, g) in [(node_q, dq), (node_k, dk), (node_v, dv)] {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, g);
            }
        }
    }
}

fn attention_with<C: CheckpointStrategy>(
    q: AdTensor,
    k: AdTensor,
    v: AdTensor,
    bias: Option<FlexTensor>,
    dims: [usize; 5],
) -> AdTensor {
    let (qf, kf, vf) = (
        q.primitive.to_contiguous(),
        k.primitive.to_contiguous(),
        v.primitive.to_contiguous(),
    );
    let out = attend_flex(&qf, &kf, &vf, bias.as_ref(), dims);
    match AttentionBackward
        .prepare::<C>([q.node.clone(), k.node.clone(), v.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((qf, kf, vf, bias, dims), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

/// [`super::attention::grouped_attention`] for `Autodiff<Flex, _>` with f32 tensors; the bias is
/// treated as a constant.
pub(super) fn grouped_attention<B: Backend>(
    strategy: Strategy,
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    bias: Option<Tensor<B, 4>>,
) -> Tensor<B, 3> {
    let [b, s, h, hd] = q.dims();
    let dims = [b, s, h, k.dims()[2], hd];
    let bias = bias.map(|t| into_ad(t.cast(DType::F32)).primitive.to_contiguous());
    let (q, k, v) = (into_ad(q), into_ad(k), into_ad(v));
    from_ad(match strategy {
        Strategy::None => attention_with::<NoCheckpointing>(q, k, v, bias, dims),
        Strategy::Balanced => attention_with::<BalancedCheckpointing>(q, k, v, bias, dims),
    })
}

#[derive(Debug)]
struct RmsNormBackward;

impl Backward<Flex, 2> for RmsNormBackward {
    /// `(x, weight, eps)`, contiguous.
    type State = (FlexTensor, FlexTensor, f32);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let mut dx = grads.consume::<Flex>(&ops.node).to_contiguous();
        let (x, w, eps) = ops.state;
        let w_shape = w.layout().shape().clone();
        let w = w.storage::<f32>();
        let d = w.len();
        let rows_per_task = CHUNK.div_ceil(d);
        // Per-task partial weight gradients, summed afterwards (rows are split over tasks).
        let dw = dx
            .storage_mut::<f32>()
            .par_chunks_mut(rows_per_task * d)
            .zip(x.storage::<f32>().par_chunks(rows_per_task * d))
            .map(|(g, x)| {
                let mut dw = vec![0.0f32; d];
                rms_norm_backward_rows(x, w, eps, g, &mut dw);
                dw
            })
            .reduce(
                || vec![0.0f32; d],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, dx);
        }
        if let Some(node) = node_w {
            let dw = flex_from_vec(dw, w_shape);
            grads.register::<Flex>(node.id, dw);
        }
    }
}

fn rms_norm_with<C: CheckpointStrategy>(x: AdTensor, w: AdTensor, eps: f32) -> AdTensor {
    let (xf, wf) = (x.primitive.to_contiguous(), w.primitive.to_contiguous());
    let out = flex_rms_norm(&xf, &wf, eps);
    match RmsNormBackward
        .prepare::<C>([x.node.clone(), w.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((xf, wf, eps), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

/// [`super::ops::rms_norm`] for `Autodiff<Flex, _>` with f32 tensors.
pub(super) fn rms_norm<B: Backend, const D: usize>(
    strategy: Strategy,
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    eps: f32,
) -> Tensor<B, D> {
    let (x, w) = (into_ad(x), into_ad(weight));
    from_ad(match strategy {
        Strategy::None => rms_norm_with::<NoCheckpointing>(x, w, eps),
        Strategy::Balanced => rms_norm_with::<BalancedCheckpointing>(x, w, eps),
    })
}

#[derive(Debug)]
struct LinearBackward;

/// As [`LinearBackward`], with the bias as a third parent.
#[derive(Debug)]
struct LinearBiasBackward;

/// `(x as [rows, d_in], weight [d_in, d_out], x's shape)`, contiguous.
type LinearState = (FlexTensor, FlexTensor, Shape);

/// Registers `dx = dy · wᵀ` and `dw = xᵀ · dy` for the parents that are tracked.
fn linear_grads(
    grads: &mut Gradients,
    dy: &FlexTensor,
    [node_x, node_w]: [Option<NodeId>; 2],
    (x, w, x_shape): LinearState,
) {
    let [d_in, d_out] = [w.layout().shape()[0], w.layout().shape()[1]];
    let rows = x_shape.num_elements() / d_in.max(1);
    let (dy, x, w) = (dy.storage::<f32>(), x.storage::<f32>(), w.storage::<f32>());
    if let Some(id) = node_x {
        // dx = dy · wᵀ
        // SAFETY: dy is rows × d_out and wᵀ is d_out × d_in.
        let dx = unsafe {
            matmul_to_vec(
                (rows, d_in, d_out),
                View::rows(dy, d_out),
                View::rows(w, d_out).t(),
                None,
            )
        };
        grads.register::<Flex>(id, flex_from_vec(dx, x_shape));
    }
    if let Some(id) = node_w {
        // dw = xᵀ · dy
        // SAFETY: xᵀ is d_in × rows and dy is rows × d_out.
        let dw = unsafe {
            matmul_to_vec(
                (d_in, d_out, rows),
                View::rows(x, d_in).t(),
                View::rows(dy, d_out),
                None,
            )
        };
        grads.register::<Flex>(id, flex_from_vec(dw, [d_in, d_out]));
    }
}

impl Backward<Flex, 2> for LinearBackward {
    type State = LinearState;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Flex>(&ops.node).to_contiguous();
        let ids = ops.parents.map(|n| n.map(|n| n.id));
        linear_grads(grads, &dy, ids, ops.state);
    }
}

impl Backward<Flex, 3> for LinearBiasBackward {
    type State = LinearState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [id_x, id_w, id_b] = ops.parents.map(|n| n.map(|n| n.id));
        let d_out = ops.state.1.layout().shape()[1];
        let dy = grads.consume::<Flex>(&ops.node).to_contiguous();
        linear_grads(grads, &dy, [id_x, id_w], ops.state);
        if let Some(id) = id_b {
            // db = Σ_rows dy, per task then summed (rows are split over tasks).
            let rows_per_task = CHUNK.div_ceil(d_out.max(1));
            let db = dy
                .storage::<f32>()
                .par_chunks(rows_per_task * d_out)
                .map(|rows| {
                    let mut acc = vec![0.0f32; d_out];
                    for row in rows.chunks_exact(d_out) {
                        acc.iter_mut().zip(row).for_each(|(a, &g)| *a += g);
                    }
                    acc
                })
                .reduce(
                    || vec![0.0f32; d_out],
                    |mut a, b| {
                        a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                        a
                    },
                );
            grads.register::<Flex>(id, flex_from_vec(db, [d_out]));
        }
    }
}

fn linear_with<C: CheckpointStrategy, const D: usize>(
    x: AdTensor,
    w: AdTensor,
    b: Option<AdTensor>,
    out_dims: [usize; D],
) -> AdTensor {
    let (xf, wf) = (x.primitive.to_contiguous(), w.primitive.to_contiguous());
    let bf = b.as_ref().map(|b| b.primitive.to_contiguous());
    let out = flex_linear(&xf, &wf, bf.as_ref(), out_dims);
    let state = |xf: FlexTensor| {
        let shape = xf.layout().shape().clone();
        (xf, wf, shape)
    };
    match b {
        None => match LinearBackward
            .prepare::<C>([x.node.clone(), w.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(state(xf), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        },
        Some(b) => match LinearBiasBackward
            .prepare::<C>([x.node.clone(), w.node.clone(), b.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(state(xf), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        },
    }
}

/// [`super::ops::linear`] for `Autodiff<Flex, _>` with f32 tensors.
pub(super) fn linear<B: Backend, const D: usize>(
    strategy: Strategy,
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
    out_dims: [usize; D],
) -> Tensor<B, D> {
    let (x, w, b) = (into_ad(x), into_ad(weight), bias.map(into_ad));
    from_ad(match strategy {
        Strategy::None => linear_with::<NoCheckpointing, D>(x, w, b, out_dims),
        Strategy::Balanced => linear_with::<BalancedCheckpointing, D>(x, w, b, out_dims),
    })
}

#[derive(Debug)]
struct RopeBackward;

impl Backward<Flex, 1> for RopeBackward {
    /// `(cos, sin, head_dim, scale)`, contiguous.
    type State = (FlexTensor, FlexTensor, usize, f32);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let Some(node) = node else { return };
        let (cos, sin, head_dim, scale) = ops.state;
        let dx = flex_rope_with(&grad, &cos, &sin, head_dim, scale, true);
        grads.register::<Flex>(node.id, dx);
    }
}

fn rope_with<C: CheckpointStrategy>(
    x: AdTensor,
    cos: FlexTensor,
    sin: FlexTensor,
    head_dim: usize,
    scale: f32,
) -> AdTensor {
    let out = flex_rope(&x.primitive, &cos, &sin, head_dim, scale);
    match RopeBackward
        .prepare::<C>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((cos, sin, head_dim, scale), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

/// [`super::ops::rope`] for `Autodiff<Flex, _>` with f32 tensors; the tables are constants.
pub(super) fn rope<B: Backend>(
    strategy: Strategy,
    x: Tensor<B, 4>,
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
    scale: f32,
) -> Tensor<B, 4> {
    let head_dim = x.dims()[3];
    let cos = into_ad(cos).primitive.to_contiguous();
    let sin = into_ad(sin).primitive.to_contiguous();
    let x = into_ad(x);
    from_ad(match strategy {
        Strategy::None => rope_with::<NoCheckpointing>(x, cos, sin, head_dim, scale),
        Strategy::Balanced => rope_with::<BalancedCheckpointing>(x, cos, sin, head_dim, scale),
    })
}
