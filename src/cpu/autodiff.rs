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
use burn::backend::{Autodiff, Flex};
use burn::tensor::{backend::Backend, DType, Tensor, TensorPrimitive};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::math::{log_softmax_backward_rows, silu_mul_backward, softmax_backward_rows};
use super::ops::{flex_log_softmax_last, flex_silu_mul, flex_softmax_last, CHUNK};

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
