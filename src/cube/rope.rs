//! Rotary position embedding (HF `rotate_half` convention) fused on CubeCL, with its backward.
//!
//! Why a kernel: the generic path rotates with a `[head_dim, head_dim]` permutation matmul and
//! then three element-wise launches (`x · cos`, `rotated · sin`, their sum, the scale), with
//! `[batch, seq, heads, head_dim]` intermediates, for queries and keys in every block. Here
//! `(x · cos + rotate_half(x) · sin) · scale` is one element-wise kernel; its backward is the
//! same kernel with the transposed rotation (`g · cos − rotate_half(g · sin)`). The tables are
//! constants (no gradient), as on the CPU path.

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

    /// Element-wise over rows of `head_dim = 2 · half`, `j` the position in the row:
    /// forward `y_j = (x_j · c_j − x_{j+half} · s_j) · scale` for `j < half`,
    /// `(x_j · c_j + x_{j−half} · s_j) · scale` after; `inverse` (the backward) uses
    /// `x_j · c_j + x_{j+half} · s_{j+half}` and `x_j · c_j − x_{j−half} · s_{j−half}`.
    #[cube(launch)]
    pub(super) fn rope_kernel<F: Float>(
        x: &Tensor<F>,
        cos: &Tensor<F>,
        sin: &Tensor<F>,
        out: &mut Tensor<F>,
        scale: f32,
        #[comptime] inverse: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        let pos = ABSOLUTE_POS;
        if pos >= out.len() {
            terminate!();
        }
        let head_dim = x.shape(x.rank() - 1);
        let half = head_dim / 2;
        let j = pos % head_dim;
        let xj = f32::cast_from(x[pos]);
        let cj = f32::cast_from(cos[pos]);
        let mut y = xj * cj;
        if j < half {
            let partner = f32::cast_from(x[pos + half]);
            if inverse {
                y += partner * f32::cast_from(sin[pos + half]);
            } else {
                y -= partner * f32::cast_from(sin[pos]);
            }
        } else {
            let partner = f32::cast_from(x[pos - half]);
            if inverse {
                y -= partner * f32::cast_from(sin[pos - half]);
            } else {
                y += partner * f32::cast_from(sin[pos]);
            }
        }
        out[pos] = F::cast_from(y * scale);
    }
}

/// The rotation of `x` (or, with `inverse`, its transpose: the backward), times `scale`.
///
/// # Shapes
/// - x, cos, sin: `[..., head_dim]` of one shape, `head_dim` even → that shape (x's dtype)
pub fn rope_kernel_launch<R: CubeRuntime>(
    x: CubeTensor<R>,
    cos: CubeTensor<R>,
    sin: CubeTensor<R>,
    scale: f32,
    inverse: bool,
) -> CubeTensor<R> {
    let x = into_contiguous(x);
    let cos = into_contiguous(cast_to(cos, x.dtype));
    let sin = into_contiguous(cast_to(sin, x.dtype));
    let client = x.client.clone();
    let out = empty_device_dtype::<R>(client.clone(), x.device.clone(), x.shape(), x.dtype);
    let n = x.shape().num_elements();
    if n == 0 {
        return out;
    }
    let (count, dim) = launch_dims(&client, n, None);
    let dtype = x.dtype.into();
    kernels::rope_kernel::launch::<R>(
        &client,
        count,
        dim,
        x.into_tensor_arg(),
        cos.into_tensor_arg(),
        sin.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        scale,
        inverse,
        dtype,
    );
    out
}

/// [`rope_kernel_launch`] for [`super::dispatch::run_float`]: `[x, cos, sin] → [out]`.
#[derive(Debug)]
struct Rope {
    scale: f32,
    inverse: bool,
}

impl CubeKernel for Rope {
    const NAME: &'static str = "rope";

    fn run<R: CubeRuntime>(&self, tensors: Vec<CubeTensor<R>>) -> Vec<CubeTensor<R>> {
        let [x, cos, sin] = inputs(Self::NAME, tensors);
        vec![rope_kernel_launch(x, cos, sin, self.scale, self.inverse)]
    }
}

fn rotate<B: Backend>(
    x: FloatTensor<B>,
    cos: FloatTensor<B>,
    sin: FloatTensor<B>,
    scale: f32,
    inverse: bool,
) -> Option<FloatTensor<B>> {
    let out = (x.shape(), x.dtype());
    let [y] = run::<B, _, 1>(Rope { scale, inverse }, vec![x, cos, sin], [out])?;
    Some(y)
}

#[derive(Debug)]
struct RopeBackward;

impl<I: Backend> Backward<I, 1> for RopeBackward {
    /// `(cos, sin, scale)`.
    type State = (FloatTensor<I>, FloatTensor<I>, f32);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let grad = grads.consume::<I>(&ops.node);
        let Some(node) = node else { return };
        let (cos, sin, scale) = ops.state;
        let dx = rotate::<I>(grad, cos, sin, scale, true)
            .unwrap_or_else(|| unreachable!("the node is recorded only over a CubeCL backend"));
        grads.register::<I>(node.id, dx);
    }
}

struct RopeOp<B: Backend> {
    x: Tensor<B, 4>,
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
    scale: f32,
}

impl<B: Backend> AutodiffOp for RopeOp<B> {
    type Output = Tensor<B, 4>;

    fn run<I: Backend, C: CheckpointStrategy + 'static>(self) -> Tensor<B, 4> {
        let x = ad_prim::<B, I, C, 4>(self.x);
        // The tables are constants: their inner tensors, outside the graph.
        let cos = ad_prim::<B, I, C, 4>(self.cos).primitive;
        let sin = ad_prim::<B, I, C, 4>(self.sin).primitive;
        let out = rotate::<I>(
            x.primitive.clone(),
            cos.clone(),
            sin.clone(),
            self.scale,
            false,
        )
        .unwrap_or_else(|| unreachable!("I is a CubeCL backend"));
        let node =
            match <RopeBackward as Backward<I, 1>>::prepare::<C>(RopeBackward, [x.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish((cos, sin, self.scale), out),
                OpsKind::UnTracked(prep) => prep.finish(out),
            };
        float_tensor(cast_any::<_, FloatTensor<B>>(node))
    }
}

/// `(x · cos + rotate_half(x) · sin) · scale` (`rotate_half([x1, x2]) = [−x2, x1]`) by the
/// fused kernel, when `B` is a CubeCL backend (fused or not) or autodiff over one (one graph
/// node for `x`; the tables get no gradient); the inputs back otherwise.
///
/// # Shapes
/// - x, cos, sin: `[batch, seq, heads, head_dim]`, `head_dim` even → the same shape
#[allow(clippy::type_complexity)]
pub fn try_rope<B: Backend>(
    x: Tensor<B, 4>,
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
    scale: f32,
) -> Result<Tensor<B, 4>, (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>)> {
    let d = x.dims()[3];
    let fits = cos.dims() == x.dims()
        && sin.dims() == x.dims()
        && d.is_multiple_of(2)
        && d > 0
        && float_dtype_ok(x.dtype())
        && fits_u32(x.shape().num_elements());
    if !fits {
        return Err((x, cos, sin));
    }
    if super::is_cube::<B>() {
        let y = rotate::<B>(
            float_prim(x),
            float_prim(cos),
            float_prim(sin),
            scale,
            false,
        )
        .unwrap_or_else(|| unreachable!("backend checked"));
        return Ok(float_tensor(y));
    }
    on_cube_autodiff::<B, _>(RopeOp { x, cos, sin, scale }).map_err(|op| (op.x, op.cos, op.sin))
}
