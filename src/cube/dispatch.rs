//! Running a CubeCL kernel on whichever CubeCL backend `B` is, found from the type of `B`'s float
//! tensors (as [`crate::cpu::is_flex`] does for flex): `CubeTensor<R>` for the fusion-less
//! `CubeBackend<R, ..>`, `FusionTensor<FusionCubeRuntime<R>>` for the fused `Cuda` / `Wgpu`, for
//! each runtime `R` the crate's features enable. Autodiff tensors match neither, so training keeps
//! Burn's ops (and their backward).

use std::any::{Any, TypeId};
use std::fmt;
use std::marker::PhantomData;

use burn::backend::ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};
use burn::tensor::{backend::Backend, DType, Shape};
use burn_cubecl::fusion::FusionCubeRuntime;
use burn_cubecl::{tensor::CubeTensor, CubeBackend, CubeRuntime};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{FusionRuntime, FusionTensor};

/// A computation on float tensors of one CubeCL runtime, runnable on any of them.
pub trait CubeKernel: fmt::Debug + Send + Sync + 'static {
    /// The custom operation's name in the fusion stream's IR.
    const NAME: &'static str;

    /// Run on `inputs`; returns one tensor per output that [`run_float`] was given, of that shape
    /// and dtype.
    fn run<R: CubeRuntime>(&self, inputs: Vec<CubeTensor<R>>) -> Vec<CubeTensor<R>>;
}

/// How a backend stores float tensors of runtime `R`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Storage {
    /// `CubeBackend<R, ..>`: the tensors are CubeCL tensors.
    Plain,
    /// `Fusion<CubeBackend<R, ..>>`: lazy tensors of a fusion stream.
    Fused,
}

fn storage<B: Backend, R: CubeRuntime>() -> Option<Storage> {
    let id = TypeId::of::<B::FloatTensorPrimitive>();
    if id == TypeId::of::<CubeTensor<R>>() {
        Some(Storage::Plain)
    } else if id == TypeId::of::<FusionTensor<FusionCubeRuntime<R>>>() {
        Some(Storage::Fused)
    } else {
        None
    }
}

/// Calls `$body` with `$R` bound to each CubeCL runtime the crate's features enable.
macro_rules! for_each_runtime {
    ($R:ident => $body:block) => {{
        #[cfg(feature = "cuda")]
        {
            type $R = burn_cubecl::cubecl::cuda::CudaRuntime;
            $body
        }
        #[cfg(feature = "wgpu")]
        {
            type $R = burn_cubecl::cubecl::wgpu::WgpuRuntime;
            $body
        }
    }};
}

/// Whether `B` is a CubeCL backend (CUDA or wgpu, fused or not; not under autodiff).
pub fn is_cube<B: Backend>() -> bool {
    for_each_runtime!(R => {
        if storage::<B, R>().is_some() {
            return true;
        }
    });
    false
}

/// Whether `B` is a fused CubeCL backend (`Cuda`, `Wgpu`): kernels run as custom operations of
/// its fusion stream.
pub fn is_fused_cube<B: Backend>() -> bool {
    for_each_runtime!(R => {
        if storage::<B, R>() == Some(Storage::Fused) {
            return true;
        }
    });
    false
}

/// Run `kernel` on float tensors of `B` if `B` is a CubeCL backend ([`is_cube`]), else `None`.
/// `outputs` lists the shape and dtype of each tensor the kernel returns (a fused backend records
/// them in its stream before the kernel runs).
pub fn run_float<B: Backend, K: CubeKernel>(
    kernel: K,
    inputs: Vec<B::FloatTensorPrimitive>,
    outputs: &[(Shape, DType)],
) -> Option<Vec<B::FloatTensorPrimitive>> {
    for_each_runtime!(R => {
        if let Some(storage) = storage::<B, R>() {
            return Some(run_on::<B, R, K>(storage, kernel, inputs, outputs));
        }
    });
    let _ = (kernel, inputs, outputs);
    None
}

fn run_on<B: Backend, R: CubeRuntime, K: CubeKernel>(
    storage: Storage,
    kernel: K,
    inputs: Vec<B::FloatTensorPrimitive>,
    outputs: &[(Shape, DType)],
) -> Vec<B::FloatTensorPrimitive> {
    match storage {
        Storage::Plain => {
            let inputs = inputs.into_iter().map(cast::<_, CubeTensor<R>>).collect();
            kernel.run(inputs).into_iter().map(cast).collect()
        }
        Storage::Fused => {
            let inputs: Vec<FusionTensor<FusionCubeRuntime<R>>> =
                inputs.into_iter().map(cast).collect();
            let client = inputs
                .first()
                .expect("a kernel takes at least one tensor")
                .client
                .clone();
            let streams = OperationStreams::with_inputs(inputs.iter());
            let outputs: Vec<TensorIr> = outputs
                .iter()
                .map(|(shape, dtype)| {
                    TensorIr::uninit(client.create_empty_handle(), shape.clone(), *dtype)
                })
                .collect();
            let inputs: Vec<TensorIr> = inputs.into_iter().map(|t| t.into_ir()).collect();
            let desc = CustomOpIr::new(K::NAME, &inputs, &outputs);
            let op = FusedKernel::<R, K> {
                desc: desc.clone(),
                kernel,
                runtime: PhantomData,
            };
            client
                .register(streams, OperationIr::Custom(desc), op)
                .into_iter()
                .map(cast)
                .collect()
        }
    }
}

/// A [`CubeKernel`] as an operation of a fusion stream: it runs when the stream reaches it, on
/// the inputs' CubeCL tensors, and registers its outputs under the ids the stream handed out.
struct FusedKernel<R, K> {
    desc: CustomOpIr,
    kernel: K,
    runtime: PhantomData<fn() -> R>,
}

impl<R, K: fmt::Debug> fmt::Debug for FusedKernel<R, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FusedKernel")
            .field("desc", &self.desc)
            .field("kernel", &self.kernel)
            .finish()
    }
}

/// The handle conversions of `CubeBackend` do not depend on its element types: any will do.
type Plain<R> = CubeBackend<R, f32, i32, u8>;

impl<R: CubeRuntime, K: CubeKernel> Operation<FusionCubeRuntime<R>> for FusedKernel<R, K> {
    fn execute(
        &self,
        handles: &mut HandleContainer<<FusionCubeRuntime<R> as FusionRuntime>::FusionHandle>,
    ) {
        let inputs = self
            .desc
            .inputs
            .iter()
            .map(|t| handles.get_float_tensor::<Plain<R>>(t))
            .collect();
        let outputs = self.kernel.run::<R>(inputs);
        assert_eq!(
            outputs.len(),
            self.desc.outputs.len(),
            "{} returned the wrong number of outputs",
            K::NAME
        );
        for (ir, tensor) in self.desc.outputs.iter().zip(outputs) {
            handles.register_float_tensor::<Plain<R>>(&ir.id, tensor);
        }
    }
}

/// `t` as `U`, where the caller has checked (by `TypeId`) that `T` is `U`.
fn cast<T: 'static, U: 'static>(t: T) -> U {
    let boxed: Box<dyn Any> = Box::new(t);
    *boxed
        .downcast::<U>()
        .unwrap_or_else(|_| unreachable!("tensor types checked by TypeId"))
}
