//! RMSNorm (HF `Qwen2RMSNorm`) fused on CubeCL, with its backward.
//!
//! Why a kernel: Burn's composition `x · rsqrt(mean(x²) + eps) · w` is five launches (square,
//! mean, add/sqrt/recip, two products) with `[rows, d]` intermediates, run twice per block; and
//! autodiff through it keeps those intermediates. Here the forward is one kernel (one cube per
//! row: the sum of squares reduced in shared memory, then the scaled row); the backward is one
//! kernel for `dx` plus a column sum for `dw` (each row's share `g · x · inv` is written by the
//! same kernel and summed with Burn's reduction).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{backend::Backend, DType, Tensor, TensorMetadata};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;

use super::dispatch::CubeKernel;
use super::runtime::{
    ad_prim, cast_any, cast_to, fits_u32, float_dtype_ok, float_prim, float_tensor, inputs,
    launch_dims, on_cube_autodiff, row_block, run, AutodiffOp,
};

/// The `#[cube]` kernels (their own module: CubeCL's prelude has its own `Tensor`).
mod kernels {
    use burn_cubecl::cubecl::prelude::*;

    /// Sums `a` and `b` over the cube's units (tree reduction; the cube size a power of two); every unit
    /// gets both totals.
    #[cube]
    pub(super) fn block_sums(
        a: &mut SharedMemory<f32>,
        b: &mut SharedMemory<f32>,
        unit: usize,
    ) -> (f32, f32) {
        sync_cube();
        let mut half = CUBE_DIM_X as usize / 2;
        while half > 0 {
            if unit < half {
                a[unit] = a[unit] + a[unit + half];
                b[unit] = b[unit] + b[unit + half];
            }
            sync_cube();
            half /= 2;
        }
        (a[0], b[0])
    }

    /// One cube per row: `out = cast(x · inv) · w`, `inv = 1 / sqrt(mean(x²) + eps)` in f32.
    #[cube(launch)]
    pub(super) fn rms_norm_forward_kernel<F: Float>(
        x: &Tensor<F>,
        weight: &Tensor<F>,
        out: &mut Tensor<F>,
        eps: f32,
        #[comptime] block: u32,
        #[define(F)] _dtype: StorageType,
    ) {
        let d = weight.len();
        let base = CUBE_POS * d;
        if base >= out.len() {
            terminate!();
        }
        let unit = UNIT_POS as usize;
        // The launch's cube size (= `block`), as a runtime value: loop counters must not be
        // comptime constants.
        let step = CUBE_DIM_X as usize;
        let mut acc = f32::new(0.0);
        let mut v = unit;
        while v < d {
            let xv = f32::cast_from(x[base + v]);
            acc += xv * xv;
            v += step;
        }
        let mut sq = SharedMemory::<f32>::new(block as usize);
        let mut unused = SharedMemory::<f32>::new(block as usize);
        sq[unit] = acc;
        unused[unit] = f32::new(0.0);
        let (total, _) = block_sums(&mut sq, &mut unused, unit);
        let inv = f32::new(1.0) / (total / f32::cast_from(d) + eps).sqrt();
        let mut v = unit;
        while v < d {
            out[base + v] = F::cast_from(f32::cast_from(x[base + v]) * inv) * weight[v];
            v += step;
        }
    }

    /// One cube per row, from `g = dL/dout`:
    /// `dx = inv · g · w − x · inv³ · Σ(g · w · x) / d` and the row's share of `dw`, `g · x · inv`
    /// (f32).
    #[cube(launch)]
    pub(super) fn rms_norm_backward_kernel<F: Float>(
        x: &Tensor<F>,
        weight: &Tensor<F>,
        grad: &Tensor<F>,
        dx: &mut Tensor<F>,
        dw_rows: &mut Tensor<f32>,
        eps: f32,
        #[comptime] block: u32,
        #[define(F)] _dtype: StorageType,
    ) {
        let d = weight.len();
        let base = CUBE_POS * d;
        if base >= dx.len() {
            terminate!();
        }
        let unit = UNIT_POS as usize;
        // The launch's cube size (= `block`), as a runtime value: loop counters must not be
        // comptime constants.
        let step = CUBE_DIM_X as usize;
        let mut sq = f32::new(0.0);
        let mut dot = f32::new(0.0);
        let mut v = unit;
        while v < d {
            let xv = f32::cast_from(x[base + v]);
            sq += xv * xv;
            dot += f32::cast_from(grad[base + v]) * f32::cast_from(weight[v]) * xv;
            v += step;
        }
        let mut shared_sq = SharedMemory::<f32>::new(block as usize);
        let mut shared_dot = SharedMemory::<f32>::new(block as usize);
        shared_sq[unit] = sq;
        shared_dot[unit] = dot;
        let (sq, dot) = block_sums(&mut shared_sq, &mut shared_dot, unit);
        let df = f32::cast_from(d);
        let inv = f32::new(1.0) / (sq / df + eps).sqrt();
        let coef = inv * inv * inv * dot / df;
        let mut v = unit;
        while v < d {
            let xv = f32::cast_from(x[base + v]);
            let g = f32::cast_from(grad[base + v]);
            dx[base + v] = F::cast_from(inv * g * f32::cast_from(weight[v]) - xv * coef);
            dw_rows[base + v] = g * xv * inv;
            v += step;
        }
    }
}

/// RMSNorm of each row.
///
/// # Shapes
/// - x: `[rows, d]`; weight: `[d]` (x's dtype) → `[rows, d]`
pub fn forward_kernel<R: CubeRuntime>(
    x: CubeTensor<R>,
    weight: CubeTensor<R>,
    eps: f32,
) -> CubeTensor<R> {
    let (x, weight) = (into_contiguous(x), into_contiguous(weight));
    let shape = x.shape();
    let client = x.client.clone();
    let out = empty_device_dtype::<R>(client.clone(), x.device.clone(), shape.clone(), x.dtype);
    let rows = shape[0];
    if rows == 0 {
        return out;
    }
    let block = row_block(&client);
    let (count, dim) = launch_dims(&client, rows * block as usize, Some(block));
    let dtype = x.dtype.into();
    kernels::rms_norm_forward_kernel::launch::<R>(
        &client,
        count,
        dim,
        x.into_tensor_arg(),
        weight.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        eps,
        block,
        dtype,
    );
    out
}

/// `(dx, dw_rows)` of RMSNorm from the output's gradient: `dw` is the column sum of `dw_rows`
/// (left to Burn's reduction).
///
/// # Shapes
/// - x, grad: `[rows, d]`; weight: `[d]`
/// - returns `[rows, d]` (x's dtype) and `[rows, d]` f32
pub fn backward_kernel<R: CubeRuntime>(
    x: CubeTensor<R>,
    weight: CubeTensor<R>,
    grad: CubeTensor<R>,
    eps: f32,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let (x, weight) = (into_contiguous(x), into_contiguous(weight));
    let grad = into_contiguous(cast_to(grad, x.dtype));
    let shape = x.shape();
    let rows = shape[0];
    let client = x.client.clone();
    let device = x.device.clone();
    let dx = empty_device_dtype::<R>(client.clone(), device.clone(), shape.clone(), x.dtype);
    let dw_rows = empty_device_dtype::<R>(client.clone(), device, shape.clone(), DType::F32);
    if rows > 0 {
        let block = row_block(&client);
        let (count, dim) = launch_dims(&client, rows * block as usize, Some(block));
        let dtype = x.dtype.into();
        kernels::rms_norm_backward_kernel::launch::<R>(
            &client,
            count,
            dim,
            x.into_tensor_arg(),
            weight.into_tensor_arg(),
            grad.into_tensor_arg(),
            dx.clone().into_tensor_arg(),
            dw_rows.clone().into_tensor_arg(),
            eps,
            block,
            dtype,
        );
    }
    (dx, dw_rows)
}

/// [`forward_kernel`] for [`super::dispatch::run_float`]: `[x, weight] → [out]`.
#[derive(Debug)]
struct Forward {
    eps: f32,
}

impl CubeKernel for Forward {
    const NAME: &'static str = "rms_norm";

    fn run<R: CubeRuntime>(&self, tensors: Vec<CubeTensor<R>>) -> Vec<CubeTensor<R>> {
        let [x, weight] = inputs(Self::NAME, tensors);
        vec![forward_kernel(x, weight, self.eps)]
    }
}

/// [`backward_kernel`] for [`super::dispatch::run_float`]: `[x, weight, grad] → [dx, dw_rows]`.
#[derive(Debug)]
struct BackwardKernel {
    eps: f32,
}

impl CubeKernel for BackwardKernel {
    const NAME: &'static str = "rms_norm_backward";

    fn run<R: CubeRuntime>(&self, tensors: Vec<CubeTensor<R>>) -> Vec<CubeTensor<R>> {
        let [x, weight, grad] = inputs(Self::NAME, tensors);
        let (dx, dw_rows) = backward_kernel(x, weight, grad, self.eps);
        vec![dx, dw_rows]
    }
}

fn check<B: Backend>(x: &Tensor<B, 2>, weight: &Tensor<B, 1>) -> bool {
    let [rows, d] = x.dims();
    weight.dims() == [d]
        && d > 0
        && x.dtype() == weight.dtype()
        && float_dtype_ok(x.dtype())
        && rows.checked_mul(d).is_some_and(fits_u32)
}

/// [`forward_kernel`] on a CubeCL backend `B` (no autodiff), else `None`.
fn forward<B: Backend>(x: Tensor<B, 2>, weight: Tensor<B, 1>, eps: f32) -> Option<Tensor<B, 2>> {
    let out = (x.shape(), x.dtype());
    let [y] = run::<B, _, 1>(
        Forward { eps },
        vec![float_prim(x), float_prim(weight)],
        [out],
    )?;
    Some(float_tensor(y))
}

#[derive(Debug)]
struct RmsNormBackward;

impl<I: Backend> Backward<I, 2> for RmsNormBackward {
    /// `(x, weight, eps)`.
    type State = (FloatTensor<I>, FloatTensor<I>, f32);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let grad = grads.consume::<I>(&ops.node);
        let (x, w, eps) = ops.state;
        let x = float_tensor::<I, 2>(x);
        let w = float_tensor::<I, 1>(w);
        let (x_shape, [d], w_dtype) = (x.shape(), w.dims(), w.dtype());
        let [dx, dw_rows] = run::<I, _, 2>(
            BackwardKernel { eps },
            vec![float_prim(x.clone()), float_prim(w), grad],
            [(x_shape.clone(), x.dtype()), (x_shape, DType::F32)],
        )
        .unwrap_or_else(|| unreachable!("the node is recorded only over a CubeCL backend"));
        if let Some(node) = node_x {
            grads.register::<I>(node.id, dx);
        }
        if let Some(node) = node_w {
            // dw = Σ_rows g · x · inv: Burn's reduction over the kernel's per-row shares.
            let dw = float_tensor::<I, 2>(dw_rows)
                .sum_dim(0)
                .reshape([d])
                .cast(w_dtype);
            grads.register::<I>(node.id, float_prim(dw));
        }
    }
}

struct RmsNormOp<B: Backend> {
    x: Tensor<B, 2>,
    weight: Tensor<B, 1>,
    eps: f32,
}

impl<B: Backend> AutodiffOp for RmsNormOp<B> {
    type Output = Tensor<B, 2>;

    fn run<I: Backend, C: CheckpointStrategy + 'static>(self) -> Tensor<B, 2> {
        let x = ad_prim::<B, I, C, 2>(self.x);
        let w = ad_prim::<B, I, C, 1>(self.weight);
        let out = forward::<I>(
            float_tensor(x.primitive.clone()),
            float_tensor(w.primitive.clone()),
            self.eps,
        )
        .unwrap_or_else(|| unreachable!("I is a CubeCL backend"));
        let out = float_prim(out);
        let node = match <RmsNormBackward as Backward<I, 2>>::prepare::<C>(
            RmsNormBackward,
            [x.node.clone(), w.node.clone()],
        )
        .compute_bound()
        .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((x.primitive, w.primitive, self.eps), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        float_tensor(cast_any::<_, FloatTensor<B>>(node))
    }
}

/// RMSNorm of each row by the fused kernel, when `B` is a CubeCL backend (fused or not) or
/// autodiff over one (one graph node; its backward is one kernel and a column sum); the inputs
/// back otherwise.
///
/// # Shapes
/// - x: `[rows, d]`; weight: `[d]` in x's dtype → `[rows, d]`
#[allow(clippy::type_complexity)]
pub fn try_rms_norm<B: Backend>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 1>,
    eps: f32,
) -> Result<Tensor<B, 2>, (Tensor<B, 2>, Tensor<B, 1>)> {
    if !check(&x, &weight) {
        return Err((x, weight));
    }
    if super::is_cube::<B>() {
        return Ok(forward(x, weight, eps).unwrap_or_else(|| unreachable!("backend checked")));
    }
    on_cube_autodiff::<B, _>(RmsNormOp { x, weight, eps }).map_err(|op| (op.x, op.weight))
}
