//! Log-softmax fused with the gather of the target's log-probability, on CubeCL.
//!
//! Why a kernel: Burn 0.21 has no fused log-softmax, so `log_softmax(logits).gather(target)`
//! over a 152k vocabulary is a chain of full-size kernels (max, subtract, exp, sum, log,
//! subtract, gather), each reading and most writing a `[rows, vocab]` buffer, and autodiff keeps
//! the `[rows, vocab]` log-softmax for the backward pass. Here the forward is one kernel (one
//! cube per row: an online max/sum-exp over the row, a tree reduction in shared memory, then
//! the target's logit), which writes two numbers per row: the target's log-probability and the
//! row's log-partition. The backward is one element-wise kernel,
//! `dlogits = d · (onehot(target) − exp(logits − lse))`, from the logits and the log-partition.
//! Statistics are f32 whatever the logits' dtype.
//!
//! A target outside `[0, vocab)` (an ignore index such as −100) gives log-probability 0 and a
//! zero gradient; Burn's `gather` has no such convention, so callers that must match the
//! generic path pass valid ids (padding positions keep a real token id and a zero weight).
//! Targets reach the kernels as f32 (the dispatch passes float tensors only): exact for ids
//! below 2²⁴, far above any vocabulary.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{backend::Backend, DType, Int, Shape, Tensor, TensorMetadata};
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

    /// Below every finite logit; a literal infinity is rejected by WGSL.
    pub(super) const NEG_BIG: f32 = -3.0e38;

    /// One cube per row: `log_probs[r] = logits[r, t_r] − lse_r` and `lse[r] = lse_r`.
    #[cube(launch)]
    pub(super) fn log_prob_forward_kernel<F: Float, O: Float>(
        logits: &Tensor<F>,
        targets: &Tensor<O>,
        log_probs: &mut Tensor<O>,
        lse: &mut Tensor<O>,
        #[comptime] block: u32,
        #[define(F, O)] _dtypes: [StorageType; 2],
    ) {
        let row = CUBE_POS;
        if row >= log_probs.len() {
            terminate!();
        }
        let vocab = logits.shape(1);
        let base = row * vocab;
        let unit = UNIT_POS as usize;
        // The launch's cube size (= `block`), as a runtime value: loop counters must not be
        // comptime constants.
        let step = CUBE_DIM_X as usize;
        // Online log-sum-exp over this unit's strided share of the row.
        let mut m = f32::new(NEG_BIG);
        let mut s = f32::new(0.0);
        let mut v = unit;
        while v < vocab {
            let x = f32::cast_from(logits[base + v]);
            if x > m {
                s = s * (m - x).exp() + f32::new(1.0);
                m = x;
            } else {
                s += (x - m).exp();
            }
            v += step;
        }
        let mut shared_m = SharedMemory::<f32>::new(block as usize);
        let mut shared_s = SharedMemory::<f32>::new(block as usize);
        shared_m[unit] = m;
        shared_s[unit] = s;
        sync_cube();
        let mut half = step / 2;
        while half > 0 {
            if unit < half {
                let m1 = shared_m[unit];
                let m2 = shared_m[unit + half];
                let mx = f32::max(m1, m2);
                shared_s[unit] =
                    shared_s[unit] * (m1 - mx).exp() + shared_s[unit + half] * (m2 - mx).exp();
                shared_m[unit] = mx;
            }
            sync_cube();
            half /= 2;
        }
        if unit == 0 {
            let row_lse = shared_m[0] + shared_s[0].ln();
            let t = f32::cast_from(targets[row]);
            let mut lp = f32::new(0.0);
            if t >= f32::new(0.0) && t < f32::cast_from(vocab) {
                lp = f32::cast_from(logits[base + u32::cast_from(t) as usize]) - row_lse;
            }
            log_probs[row] = O::cast_from(lp);
            lse[row] = O::cast_from(row_lse);
        }
    }

    /// Element-wise: `grad[r, v] = d_r · ([v = t_r] − exp(logits[r, v] − lse_r))`, zero on rows
    /// whose target is outside the vocabulary.
    #[cube(launch)]
    pub(super) fn log_prob_backward_kernel<F: Float, O: Float>(
        logits: &Tensor<F>,
        targets: &Tensor<O>,
        lse: &Tensor<O>,
        d_log_probs: &Tensor<O>,
        grad: &mut Tensor<F>,
        #[define(F, O)] _dtypes: [StorageType; 2],
    ) {
        let pos = ABSOLUTE_POS;
        if pos >= grad.len() {
            terminate!();
        }
        let vocab = logits.shape(1);
        let row = pos / vocab;
        let v = pos % vocab;
        let t = f32::cast_from(targets[row]);
        let mut g = f32::new(0.0);
        if t >= f32::new(0.0) && t < f32::cast_from(vocab) {
            let d = f32::cast_from(d_log_probs[row]);
            let p = (f32::cast_from(logits[pos]) - f32::cast_from(lse[row])).exp();
            g = -d * p;
            if v == u32::cast_from(t) as usize {
                g += d;
            }
        }
        grad[pos] = F::cast_from(g);
    }
}

/// `(log_probs, lse)` of each row, both f32.
///
/// # Shapes
/// - logits: `[rows, vocab]` (any float dtype the device supports)
/// - targets: `[rows]` f32 token ids
/// - returns two `[rows]` f32 tensors
pub fn forward_kernel<R: CubeRuntime>(
    logits: CubeTensor<R>,
    targets: CubeTensor<R>,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let logits = into_contiguous(logits);
    let targets = into_contiguous(cast_to(targets, DType::F32));
    let rows = logits.shape()[0];
    let client = logits.client.clone();
    let device = logits.device.clone();
    let new_out = || {
        empty_device_dtype::<R>(
            client.clone(),
            device.clone(),
            Shape::new([rows]),
            DType::F32,
        )
    };
    let (log_probs, lse) = (new_out(), new_out());
    if rows == 0 {
        return (log_probs, lse);
    }
    let block = row_block(&client);
    let (count, dim) = launch_dims(&client, rows * block as usize, Some(block));
    let dtypes = [logits.dtype.into(), DType::F32.into()];
    kernels::log_prob_forward_kernel::launch::<R>(
        &client,
        count,
        dim,
        logits.into_tensor_arg(),
        targets.into_tensor_arg(),
        log_probs.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        block,
        dtypes,
    );
    (log_probs, lse)
}

/// The logits' gradient of `Σ_r d_log_probs[r] · log_probs[r]`, in the logits' dtype.
///
/// # Shapes
/// - logits: `[rows, vocab]`; targets (f32 ids), lse, d_log_probs: `[rows]`
/// - returns `[rows, vocab]`
pub fn backward_kernel<R: CubeRuntime>(
    logits: CubeTensor<R>,
    targets: CubeTensor<R>,
    lse: CubeTensor<R>,
    d_log_probs: CubeTensor<R>,
) -> CubeTensor<R> {
    let logits = into_contiguous(logits);
    let [targets, lse, d_log_probs] =
        [targets, lse, d_log_probs].map(|t| into_contiguous(cast_to(t, DType::F32)));
    let shape = logits.shape();
    let client = logits.client.clone();
    let grad = empty_device_dtype::<R>(
        client.clone(),
        logits.device.clone(),
        shape.clone(),
        logits.dtype,
    );
    let n = shape.num_elements();
    if n == 0 {
        return grad;
    }
    let (count, dim) = launch_dims(&client, n, None);
    let dtypes = [logits.dtype.into(), DType::F32.into()];
    kernels::log_prob_backward_kernel::launch::<R>(
        &client,
        count,
        dim,
        logits.into_tensor_arg(),
        targets.into_tensor_arg(),
        lse.into_tensor_arg(),
        d_log_probs.into_tensor_arg(),
        grad.clone().into_tensor_arg(),
        dtypes,
    );
    grad
}

/// [`forward_kernel`] for [`super::dispatch::run_float`]: `[logits, targets] → [lp, lse]`.
#[derive(Debug)]
struct Forward;

impl CubeKernel for Forward {
    const NAME: &'static str = "log_softmax_gather";

    fn run<R: CubeRuntime>(&self, tensors: Vec<CubeTensor<R>>) -> Vec<CubeTensor<R>> {
        let [logits, targets] = inputs(Self::NAME, tensors);
        let (lp, lse) = forward_kernel(logits, targets);
        vec![lp, lse]
    }
}

/// [`backward_kernel`] for [`super::dispatch::run_float`]:
/// `[logits, targets, lse, d_lp] → [dlogits]`.
#[derive(Debug)]
struct BackwardKernel;

impl CubeKernel for BackwardKernel {
    const NAME: &'static str = "log_softmax_gather_backward";

    fn run<R: CubeRuntime>(&self, tensors: Vec<CubeTensor<R>>) -> Vec<CubeTensor<R>> {
        let [logits, targets, lse, d_lp] = inputs(Self::NAME, tensors);
        vec![backward_kernel(logits, targets, lse, d_lp)]
    }
}

fn check<B: Backend>(logits: &Tensor<B, 2>, targets: &Tensor<B, 1, Int>) -> bool {
    let [rows, vocab] = logits.dims();
    targets.dims() == [rows]
        && vocab > 0
        && rows.checked_mul(vocab).is_some_and(fits_u32)
        && float_dtype_ok(logits.dtype())
}

/// The targets as the f32 ids the kernels read.
fn float_ids<B: Backend>(targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    targets.float().cast(DType::F32)
}

/// `(lp, lse)` by the kernel on a CubeCL backend `B` (no autodiff), else `None`.
fn forward<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1>,
) -> Option<(Tensor<B, 1>, Tensor<B, 1>)> {
    let rows = logits.dims()[0];
    let out = (Shape::new([rows]), DType::F32);
    let [lp, lse] = run::<B, _, 2>(
        Forward,
        vec![float_prim(logits), float_prim(targets)],
        [out.clone(), out],
    )?;
    Some((float_tensor(lp), float_tensor(lse)))
}

/// `(log_softmax(logits)[r, targets[r]], logsumexp(logits[r]))` per row, as one kernel, when
/// `B` is a CubeCL backend (fused or not; not autodiff); the inputs back otherwise.
///
/// # Shapes
/// - logits: `[rows, vocab]`
/// - targets: `[rows]` token ids in `[0, vocab)`
/// - returns two `[rows]` f32 tensors
#[allow(clippy::type_complexity)]
pub fn try_forward<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> Result<(Tensor<B, 1>, Tensor<B, 1>), (Tensor<B, 2>, Tensor<B, 1, Int>)> {
    if !check(&logits, &targets) || !super::is_cube::<B>() {
        return Err((logits, targets));
    }
    Ok(forward(logits, float_ids(targets)).unwrap_or_else(|| unreachable!("backend checked")))
}

/// The logits' gradient of `Σ_r d_log_probs[r] · log_softmax(logits)[r, targets[r]]` (one
/// kernel) when `B` is a CubeCL backend (fused or not); `None` otherwise.
///
/// # Shapes
/// - logits: `[rows, vocab]`; targets, lse (from [`try_forward`]), d_log_probs: `[rows]`
/// - returns `[rows, vocab]` in the logits' dtype
pub fn try_backward<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
    lse: Tensor<B, 1>,
    d_log_probs: Tensor<B, 1>,
) -> Option<Tensor<B, 2>> {
    if !check(&logits, &targets) {
        return None;
    }
    backward(logits, float_ids(targets), lse, d_log_probs)
}

fn backward<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1>,
    lse: Tensor<B, 1>,
    d_log_probs: Tensor<B, 1>,
) -> Option<Tensor<B, 2>> {
    let out = (logits.shape(), logits.dtype());
    let [grad] = run::<B, _, 1>(
        BackwardKernel,
        vec![
            float_prim(logits),
            float_prim(targets),
            float_prim(lse),
            float_prim(d_log_probs),
        ],
        [out],
    )?;
    Some(float_tensor(grad))
}

/// `(logits, targets as f32, lse)` kept for the backward pass: the logits as the forward saw
/// them (no `[rows, vocab]` log-softmax).
#[derive(Debug, Clone)]
struct GatherState<I: Backend> {
    logits: FloatTensor<I>,
    targets: FloatTensor<I>,
    lse: FloatTensor<I>,
}

#[derive(Debug)]
struct GatherBackward;

impl<I: Backend> Backward<I, 1> for GatherBackward {
    type State = GatherState<I>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let d_lp = grads.consume::<I>(&ops.node);
        let Some(node) = node else { return };
        let s = ops.state;
        let grad = backward::<I>(
            float_tensor(s.logits),
            float_tensor(s.targets),
            float_tensor(s.lse),
            float_tensor(d_lp),
        )
        .unwrap_or_else(|| unreachable!("the node is recorded only over a CubeCL backend"));
        grads.register::<I>(node.id, float_prim(grad));
    }
}

/// [`try_log_softmax_gather`] as one graph node over `Autodiff<I, C>`.
struct GatherOp<B: Backend> {
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
}

impl<B: Backend> AutodiffOp for GatherOp<B> {
    type Output = Tensor<B, 1>;

    fn run<I: Backend, C: CheckpointStrategy + 'static>(self) -> Tensor<B, 1> {
        let logits = ad_prim::<B, I, C, 2>(self.logits);
        // The ids are constants: their f32 copy is made on the inner backend.
        let targets: Tensor<I, 1, Int> =
            Tensor::from_primitive(cast_any(self.targets.into_primitive()));
        let targets = float_ids(targets);
        let (lp, lse) = forward::<I>(float_tensor(logits.primitive.clone()), targets.clone())
            .unwrap_or_else(|| unreachable!("I is a CubeCL backend"));
        let out = float_prim(lp);
        let node = match <GatherBackward as Backward<I, 1>>::prepare::<C>(
            GatherBackward,
            [logits.node.clone()],
        )
        .compute_bound()
        .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(
                GatherState {
                    logits: logits.primitive,
                    targets: float_prim(targets),
                    lse: float_prim(lse),
                },
                out,
            ),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        float_tensor(cast_any::<_, FloatTensor<B>>(node))
    }
}

/// `log_softmax(logits)[r, targets[r]]` per row by the fused kernels, when `B` is a CubeCL
/// backend (fused or not) or autodiff over one (then one graph node whose backward is one
/// kernel; it keeps the logits, not a `[rows, vocab]` log-softmax); the inputs back otherwise.
///
/// # Shapes
/// - logits: `[rows, vocab]`
/// - targets: `[rows]` token ids in `[0, vocab)` (see the module docs for other values)
/// - returns `[rows]` f32
#[allow(clippy::type_complexity)]
pub fn try_log_softmax_gather<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> Result<Tensor<B, 1>, (Tensor<B, 2>, Tensor<B, 1, Int>)> {
    if !check(&logits, &targets) {
        return Err((logits, targets));
    }
    let (logits, targets) = match try_forward(logits, targets) {
        Ok((lp, _)) => return Ok(lp),
        Err(inputs) => inputs,
    };
    on_cube_autodiff::<B, _>(GatherOp { logits, targets }).map_err(|op| (op.logits, op.targets))
}
