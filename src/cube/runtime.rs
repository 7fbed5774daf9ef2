//! What the fused kernels of [`super::log_prob`], [`super::norm`], [`super::silu`] and
//! [`super::rope`] share: their launch shapes, and the graph node that makes each of them
//! differentiable.
//!
//! A kernel runs through [`super::dispatch::run_float`] (plain `CubeBackend`, or a custom
//! operation of the fused backends' stream). Under autodiff, a graph node needs the inner
//! backend and the checkpoint strategy as types, so [`on_cube_autodiff`] compares `B` with the
//! autodiff types of the crate's CubeCL aliases (`Wgpu`, `WgpuUnfused`, `Cuda`, `CudaUnfused`,
//! either strategy); the node's backward is again a kernel run through `run_float` on the inner
//! backend.

use std::any::{Any, TypeId};

use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Shape, Tensor, TensorPrimitive};
use burn_cubecl::cubecl::client::ComputeClient;
use burn_cubecl::cubecl::{calculate_cube_count_elemwise, CubeCount, CubeDim};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;

use super::dispatch::{is_cube, run_float, CubeKernel};

/// `t` as a `U`, where the caller has checked (by `TypeId`) that `T` and `U` are one type.
pub(crate) fn cast_any<T: 'static, U: 'static>(t: T) -> U {
    let boxed: Box<dyn Any> = Box::new(t);
    *boxed
        .downcast::<U>()
        .unwrap_or_else(|_| unreachable!("types checked by TypeId"))
}

/// An operation that records one graph node over a CubeCL backend `I`.
pub(crate) trait AutodiffOp {
    type Output;
    /// Runs the operation for `B = Autodiff<I, C>` (the caller checked it).
    fn run<I: Backend, C: CheckpointStrategy + 'static>(self) -> Self::Output;
}

/// `Ok(op.run::<I, C>())` when `B` is `Autodiff<I, C>` for a CubeCL alias `I` of this build
/// (fused or not) and either checkpoint strategy; `Err(op)` otherwise.
pub(crate) fn on_cube_autodiff<B: Backend, Op: AutodiffOp>(op: Op) -> Result<Op::Output, Op> {
    macro_rules! on {
        ($inner:ty) => {
            if TypeId::of::<B>() == TypeId::of::<Autodiff<$inner, NoCheckpointing>>() {
                return Ok(op.run::<$inner, NoCheckpointing>());
            }
            if TypeId::of::<B>() == TypeId::of::<Autodiff<$inner, BalancedCheckpointing>>() {
                return Ok(op.run::<$inner, BalancedCheckpointing>());
            }
        };
    }
    #[cfg(feature = "wgpu")]
    {
        on!(crate::backend::WgpuUnfused);
        on!(crate::backend::Wgpu);
    }
    #[cfg(feature = "cuda")]
    {
        on!(crate::backend::CudaUnfused);
        on!(crate::backend::Cuda);
    }
    Err(op)
}

/// Runs `kernel` on `B`'s tensors when `B` is a CubeCL backend (see
/// [`super::dispatch::run_float`]); `None` (inputs dropped) otherwise.
pub(crate) fn run<B: Backend, K: CubeKernel, const N: usize>(
    kernel: K,
    inputs: Vec<FloatTensor<B>>,
    outputs: [(Shape, DType); N],
) -> Option<[FloatTensor<B>; N]> {
    if !is_cube::<B>() {
        return None;
    }
    let out = run_float::<B, K>(kernel, inputs, &outputs)?;
    Some(
        out.try_into()
            .unwrap_or_else(|_| unreachable!("run_float returns one tensor per output")),
    )
}

/// A tensor's float primitive.
pub(crate) fn float_prim<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

/// A float primitive as a tensor.
pub(crate) fn float_tensor<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// An autodiff tensor of `Autodiff<I, C>` from `B`'s tensor, where `B` is that type.
pub(crate) fn ad_prim<B: Backend, I: Backend, C: CheckpointStrategy + 'static, const D: usize>(
    t: Tensor<B, D>,
) -> FloatTensor<Autodiff<I, C>> {
    cast_any(float_prim(t))
}

/// Units per cube for the one-cube-per-row kernels: the largest power of two (their tree
/// reductions halve it) within 256 and the device's limit.
pub(crate) fn row_block<R: CubeRuntime>(client: &ComputeClient<R>) -> u32 {
    let hw = client.properties().hardware.max_units_per_cube.max(1);
    256u32.min(1 << (31 - hw.leading_zeros()))
}

/// `(count, dim)` launching at least `units` units: one cube per row for the row kernels
/// (`units = rows · block`, `block` given), one unit per element for the element-wise ones.
/// The count may cover more units than asked (a 2D grid past the per-dimension limit), so the
/// kernels bound-check.
pub(crate) fn launch_dims<R: CubeRuntime>(
    client: &ComputeClient<R>,
    units: usize,
    block: Option<u32>,
) -> (CubeCount, CubeDim) {
    let dim = match block {
        Some(b) => CubeDim::new_1d(b),
        None => CubeDim::new(client, units),
    };
    (calculate_cube_count_elemwise(client, units, dim), dim)
}

/// Whether a tensor of `n` elements fits the kernels' 32-bit indexing.
pub(crate) fn fits_u32(n: usize) -> bool {
    n < u32::MAX as usize
}

/// Whether the kernels take tensors of this float dtype (the device must support it too:
/// lavapipe has no bf16, and neither has Burn's generic path there).
pub(crate) fn float_dtype_ok(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
}

/// `t` in `dtype` (no copy when it already is).
pub(crate) fn cast_to<R: CubeRuntime>(t: CubeTensor<R>, dtype: DType) -> CubeTensor<R> {
    if t.dtype == dtype {
        t
    } else {
        burn_cubecl::kernel::cast(t, dtype)
    }
}

/// Takes the `N` inputs a kernel was given.
pub(crate) fn inputs<R: CubeRuntime, const N: usize>(
    name: &str,
    inputs: Vec<CubeTensor<R>>,
) -> [CubeTensor<R>; N] {
    let n = inputs.len();
    inputs
        .try_into()
        .unwrap_or_else(|_| panic!("{name} takes {N} tensors, got {n}"))
}

/// Whether the fused kernels cover `B`: a CubeCL backend of this build (fused or not), or
/// autodiff over one of the crate's aliases.
pub(crate) fn has_kernels<B: Backend>() -> bool {
    struct Probe;
    impl AutodiffOp for Probe {
        type Output = ();
        fn run<I: Backend, C: CheckpointStrategy + 'static>(self) {}
    }
    is_cube::<B>() || on_cube_autodiff::<B, _>(Probe).is_ok()
}
