//! Fast paths for the flex CPU backend: fused, vectorised kernels that Burn's generic tensor ops
//! cannot express (a vectorised `exp`; SiLU·up, softmax with its bias, log-softmax and RMSNorm
//! in one pass each; attention straight from the projections' layout; the host sampler's radix
//! argsort).
//!
//! The model and the rollout engine stay generic over `Backend`. At a few hot spots they call
//! [`ops`] and [`attention`], which check the backend's types: plain flex with f32 tensors
//! (rollouts, evaluation) runs the kernels directly ([`into_flex`] hands back the flex tensor);
//! autodiff over flex with f32 (CPU training) runs them on the inner tensors and records one
//! graph node with a hand-written backward; every other backend or dtype (CUDA, bf16) keeps
//! Burn's ops.

pub mod alloc;
pub mod attention;
mod autodiff;
mod gemm;
pub(crate) mod head;
pub mod math;
pub mod ops;
pub mod sort;

use std::any::{Any, TypeId};

use burn::tensor::{backend::Backend, DType, Shape, Tensor, TensorData, TensorPrimitive};
use burn_flex::FlexTensor;

/// Whether `B` stores float tensors as flex tensors (the plain CPU backend).
pub fn is_flex<B: Backend>() -> bool {
    TypeId::of::<B::FloatTensorPrimitive>() == TypeId::of::<FlexTensor>()
}

/// Whether `B` computes on the flex CPU backend, directly or under autodiff.
pub fn on_flex<B: Backend>() -> bool {
    is_flex::<B>() || autodiff::strategy::<B>().is_some()
}

/// The tensor as a contiguous f32 flex tensor whose storage is exactly its elements (a strided
/// view is copied) when `B` is flex and the tensor is f32, else the tensor back unchanged.
/// `storage_mut` on the result copies only when the buffer is shared.
pub fn into_flex<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<FlexTensor, Tensor<B, D>> {
    if !is_flex::<B>() || t.dtype() != DType::F32 {
        return Err(t);
    }
    let boxed: Box<dyn Any> = Box::new(t.into_primitive().tensor());
    let flex = boxed
        .downcast::<FlexTensor>()
        .unwrap_or_else(|_| unreachable!("FloatTensorPrimitive is FlexTensor (TypeId checked)"));
    Ok(flex.to_contiguous())
}

/// [`into_flex`] where the caller has checked that `B` is flex and the tensor f32.
pub(crate) fn expect_flex<B: Backend, const D: usize>(t: Tensor<B, D>) -> FlexTensor {
    into_flex(t).unwrap_or_else(|_| unreachable!("caller checked: flex backend, f32 tensor"))
}

/// A flex tensor back as a `Tensor<B, D>`; `B` must be flex (see [`is_flex`]).
pub fn from_flex<B: Backend, const D: usize>(t: FlexTensor) -> Tensor<B, D> {
    let boxed: Box<dyn Any> = Box::new(t);
    let primitive = *boxed
        .downcast::<B::FloatTensorPrimitive>()
        .unwrap_or_else(|_| unreachable!("from_flex called with a non-flex backend"));
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}

/// A contiguous f32 flex tensor owning `values` (no copy). `FlexTensor::zeros`/`empty` allocate
/// a zeroed byte vector and then copy it into a 16-byte-aligned one: twice the memory traffic.
pub(crate) fn flex_from_vec(values: Vec<f32>, shape: impl Into<Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// A zeroed contiguous f32 flex tensor (see [`flex_from_vec`]).
pub(crate) fn flex_zeros(shape: impl Into<Shape>) -> FlexTensor {
    let shape = shape.into();
    flex_from_vec(vec![0.0; shape.num_elements()], shape)
}
