//! `silu(gate) · up` (SwiGLU's activation) fused on CubeCL, with its backward.
//!
//! Why a kernel: Burn's `silu(gate) * up` is two element-wise launches with an `[rows, ffn]`
//! intermediate (the MLP's widest activation), and autodiff through it keeps `silu(gate)` as
//! well as both inputs. Here the forward and the backward (both gradients at once) are one
//! element-wise kernel each, computing in f32 whatever the tensors' dtype.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{backend::Backend, Tensor, TensorMetadata};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;

use super::dispatch::CubeKernel;
use super::runtime::{
    ad_prim, cast_any, cast_to, fits_u32, float_dtype_ok, float_prim, float_tensor, inputs,
    launch_dims, on_cube_autodiff, run, AutodiffOp,
};

/// The `#[cube]` kernels (their own module: CubeCL's prelude has its own `Tensor`).
mod kernels {
    use burn_cubecl::cubecl::prelude::*;

    #[cube(launch)]
    pub(super) fn silu_mul_forward_kernel<F: Float>(
        gate: &Tensor<F>,
        up: &Tensor<F>,
        out: &mut Tensor<F>,
        #[define(F)] _dtype: StorageType,
    ) {
        let pos = ABSOLUTE_POS;
        if pos >= out.len() {
            terminate!();
        }
        let g = f32::cast_from(gate[pos]);
        let sig = f32::new(1.0) / (f32::new(1.0) + (-g).exp());
        out[pos] = F::cast_from(g * sig * f32::cast_from(up[pos]));
    }

    /// `d_up = dy · silu(g)`, `d_gate = dy · up · σ(g) · (1 + g · (1 − σ(g)))`.
    #[cube(launch)]
    pub(super) fn silu_mul_backward_kernel<F: Float>(
        gate: &Tensor<F>,
        up: &Tensor<F>,
        grad: &Tensor<F>,
        d_gate: &mut Tensor<F>,
        d_up: &mut Tensor<F>,
        #[define(F)] _dtype: StorageType,
    ) {
        let pos = ABSOLUTE_POS;
        if pos >= d_gate.len() {
            terminate!();
        }
        let g = f32::cast_from(gate[pos]);
        let dy = f32::cast_from(grad[pos]);
        let sig = f32::new(1.0) / (f32::new(1.0) + (-g).exp());
        d_up[pos] = F::cast_from(dy * g * sig);
        d_gate[pos] = F::cast_from(
            dy * f32::cast_from(up[pos]) * sig * (f32::new(1.0) + g * (f32::new(1.0) - sig)),
        );
    }
}

/// `silu(gate) · up` element-wise.
///
/// # Shapes
/// - gate, up: the same shape and dtype → that shape
pub fn forward_kernel<R: CubeRuntime>(gate: CubeTensor<R>, up: CubeTensor<R>) -> CubeTensor<R> {
    let gate = into_contiguous(gate);
    let up = into_contiguous(cast_to(up, gate.dtype));
    let client = gate.client.clone();
    let out = empty_device_dtype::<R>(
        client.clone(),
        gate.device.clone(),
        gate.shape(),
        gate.dtype,
    );
    let n = gate.shape().num_elements();
    if n == 0 {
        return out;
    }
    let (count, dim) = launch_dims(&client, n, None);
    let dtype = gate.dtype.into();
    kernels::silu_mul_forward_kernel::launch::<R>(
        &client,
        count,
        dim,
        gate.into_tensor_arg(),
        up.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        dtype,
    );
    out
}

/// `(d_gate, d_up)` from the output's gradient.
///
/// # Shapes
/// - gate, up, grad: the same shape → two tensors of that shape (gate's dtype)
pub fn backward_kernel<R: CubeRuntime>(
    gate: CubeTensor<R>,
    up: CubeTensor<R>,
    grad: CubeTensor<R>,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let gate = into_contiguous(gate);
    let dtype = gate.dtype;
    let up = into_contiguous(cast_to(up, dtype));
    let grad = into_contiguous(cast_to(grad, dtype));
    let client = gate.client.clone();
    let new_out =
        || empty_device_dtype::<R>(client.clone(), gate.device.clone(), gate.shape(), dtype);
    let (d_gate, d_up) = (new_out(), new_out());
    let n = gate.shape().num_elements();
    if n == 0 {
        return (d_gate, d_up);
    }
    let (count, dim) = launch_dims(&client, n, None);
    kernels::silu_mul_backward_kernel::launch::<R>(
        &client,
        count,
        dim,
        gate.into_tensor_arg(),
        up.into_tensor_arg(),
        grad.into_tensor_arg(),
        d_gate.clone().into_tensor_arg(),
        d_up.clone().into_tensor_arg(),
        dtype.into(),
    );
    (d_gate, d_up)
}

/// [`forward_kernel`] for [`super::dispatch::run_float`]: `[gate, up] → [out]`.
#[derive(Debug)]
struct Forward;

impl CubeKernel for Forward {
    const NAME: &'static str = "silu_mul";

    fn run<R: CubeRuntime>(&self, tensors: Vec<CubeTensor<R>>) -> Vec<CubeTensor<R>> {
        let [gate, up] = inputs(Self::NAME, tensors);
        vec![forward_kernel(gate, up)]
    }
}

/// [`backward_kernel`] for [`super::dispatch::run_float`]: `[gate, up, grad] → [d_gate, d_up]`.
#[derive(Debug)]
struct BackwardKernel;

impl CubeKernel for BackwardKernel {
    const NAME: &'static str = "silu_mul_backward";

    fn run<R: CubeRuntime>(&self, tensors: Vec<CubeTensor<R>>) -> Vec<CubeTensor<R>> {
        let [gate, up, grad] = inputs(Self::NAME, tensors);
        let (d_gate, d_up) = backward_kernel(gate, up, grad);
        vec![d_gate, d_up]
    }
}

fn forward<B: Backend, const D: usize>(
    gate: Tensor<B, D>,
    up: Tensor<B, D>,
) -> Option<Tensor<B, D>> {
    let out = (gate.shape(), gate.dtype());
    let [y] = run::<B, _, 1>(Forward, vec![float_prim(gate), float_prim(up)], [out])?;
    Some(float_tensor(y))
}

#[derive(Debug)]
struct SiluMulBackward;

impl<I: Backend> Backward<I, 2> for SiluMulBackward {
    /// `(gate, up)`.
    type State = (FloatTensor<I>, FloatTensor<I>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_gate, node_up] = ops.parents;
        let grad = grads.consume::<I>(&ops.node);
        let (gate, up) = ops.state;
        let out = (gate.shape(), gate.dtype());
        let [d_gate, d_up] =
            run::<I, _, 2>(BackwardKernel, vec![gate, up, grad], [out.clone(), out])
                .unwrap_or_else(|| unreachable!("the node is recorded only over a CubeCL backend"));
        if let Some(node) = node_gate {
            grads.register::<I>(node.id, d_gate);
        }
        if let Some(node) = node_up {
            grads.register::<I>(node.id, d_up);
        }
    }
}

struct SiluMulOp<B: Backend, const D: usize> {
    gate: Tensor<B, D>,
    up: Tensor<B, D>,
}

impl<B: Backend, const D: usize> AutodiffOp for SiluMulOp<B, D> {
    type Output = Tensor<B, D>;

    fn run<I: Backend, C: CheckpointStrategy + 'static>(self) -> Tensor<B, D> {
        let gate = ad_prim::<B, I, C, D>(self.gate);
        let up = ad_prim::<B, I, C, D>(self.up);
        let out = forward::<I, D>(
            float_tensor(gate.primitive.clone()),
            float_tensor(up.primitive.clone()),
        )
        .unwrap_or_else(|| unreachable!("I is a CubeCL backend"));
        let out = float_prim(out);
        let node = match <SiluMulBackward as Backward<I, 2>>::prepare::<C>(
            SiluMulBackward,
            [gate.node.clone(), up.node.clone()],
        )
        .compute_bound()
        .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((gate.primitive, up.primitive), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        float_tensor(cast_any::<_, FloatTensor<B>>(node))
    }
}

/// `silu(gate) · up` by the fused kernel, when `B` is a CubeCL backend (fused or not) or
/// autodiff over one (one graph node, one backward kernel); the inputs back otherwise.
///
/// # Shapes
/// - gate, up: the same shape and dtype → that shape
#[allow(clippy::type_complexity)]
pub fn try_silu_mul<B: Backend, const D: usize>(
    gate: Tensor<B, D>,
    up: Tensor<B, D>,
) -> Result<Tensor<B, D>, (Tensor<B, D>, Tensor<B, D>)> {
    let fits = gate.dims() == up.dims()
        && gate.dtype() == up.dtype()
        && float_dtype_ok(gate.dtype())
        && fits_u32(gate.shape().num_elements());
    if !fits {
        return Err((gate, up));
    }
    if super::is_cube::<B>() {
        return Ok(forward(gate, up).unwrap_or_else(|| unreachable!("backend checked")));
    }
    on_cube_autodiff::<B, _>(SiluMulOp { gate, up }).map_err(|op| (op.gate, op.up))
}
