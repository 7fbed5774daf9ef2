//! CubeCL kernels for the GPU backends: CUDA, and wgpu (any Vulkan/Metal/DX12 device, or the CPU
//! through Mesa's lavapipe, where the tests run them without a GPU).
//!
//! Like the flex fast paths in [`crate::cpu`], the model stays generic over `Backend` and calls
//! these at a few hot spots. Each entry point checks the backend's tensor type ([`is_cube`]) and
//! hands back `None` where it does not apply (flex, an unsupported dtype or shape), so that the
//! caller keeps Burn's generic ops. Under autodiff over a CubeCL backend the kernels with a
//! backward (log-prob, RMSNorm, RoPE, SiLU·up) record one graph node each; attention keeps
//! Burn's ops there. [`dispatch::run_float`] runs a kernel on the plain CubeCL backends
//! (`CubeBackend`) and, as a custom operation of the fusion stream, on the fused ones (`Cuda`,
//! `Wgpu`).
//!
//! | file | kernel |
//! |---|---|
//! | `attention` | flash attention (tiled online softmax, padding bias, GQA, queries ≠ keys) |
//! | `log_prob` | log-softmax + gather of the target's log-prob per row, and its backward |
//! | `norm`, `rope`, `silu` | RMSNorm, RoPE (`rotate_half`), SiLU(gate)·up, each with its backward |

pub mod attention;
pub mod dispatch;
pub mod log_prob;
pub mod norm;
pub mod rope;
pub(crate) mod runtime;
pub mod silu;

pub use dispatch::{is_cube, is_fused_cube};
