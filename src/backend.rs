//! Concrete backend aliases for binaries, examples, tests and benches. The library itself is
//! generic over [`burn::tensor::backend::Backend`]; pick one of these at the edge.

/// The CPU backend (burn-flex): tests and the embedded default.
pub type Cpu = burn::backend::Flex;
/// CPU with autodiff, for training.
pub type CpuAutodiff = burn::backend::Autodiff<Cpu>;

/// The CUDA backend (burn-cuda, f32 compute; cast parameters for bf16).
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda<f32, i32>;
/// CUDA with autodiff, for training.
#[cfg(feature = "cuda")]
pub type CudaAutodiff = burn::backend::Autodiff<Cuda>;
