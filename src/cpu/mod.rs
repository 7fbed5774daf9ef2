//! Fast paths for the flex CPU backend: fused, vectorised kernels that Burn's generic tensor ops
//! cannot express (a vectorised `exp`, SiLU·up in one pass, softmax with its bias added in the
//! same pass, the host sampler).
//!
//! The model and the rollout engine stay generic over `Backend`; at a few hot spots they call
//! [`into_flex`], which hands back the flex tensor when the backend *is* plain flex (CPU
//! inference: rollouts, evaluation) and the tensor untouched otherwise (CUDA, or autodiff while
//! training), so every other backend keeps the generic path.

pub mod attention;
mod autodiff;
pub mod math;
pub mod ops;
pub mod sort;

use std::any::{Any, TypeId};

use burn::tensor::{backend::Backend, DType, Tensor, TensorPrimitive};
use burn_flex::FlexTensor;

/// Whether `B` stores float tensors as flex tensors (the plain CPU backend).
pub fn is_flex<B: Backend>() -> bool {
    TypeId::of::<B::FloatTensorPrimitive>() == TypeId::of::<FlexTensor>()
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

/// A flex tensor back as a `Tensor<B, D>`; `B` must be flex (see [`is_flex`]).
pub fn from_flex<B: Backend, const D: usize>(t: FlexTensor) -> Tensor<B, D> {
    let boxed: Box<dyn Any> = Box::new(t);
    let primitive = *boxed
        .downcast::<B::FloatTensorPrimitive>()
        .unwrap_or_else(|_| unreachable!("from_flex called with a non-flex backend"));
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}
