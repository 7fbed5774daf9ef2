//! # coupled-grpo
//!
//! Reinforcement-learning fine-tuning of masked-diffusion code LLMs (DiffuCoder / Dream) with
//! **coupled-GRPO** (arXiv 2506.20639), in Rust on [Burn](https://burn.dev) 0.21.
//!
//! | module | what it holds |
//! |---|---|
//! | [`model`] | the Dream/DiffuCoder masked-diffusion transformer (Qwen2 blocks, no causal mask), HF config/safetensors I/O, LoRA adapters in PEFT's format, tokenizer and chat template |
//! | [`rollout`] | batched full-diffusion decoding with Dream's samplers, decode-order traces, AR-ness |
//! | [`sandbox`] | executors for untrusted Python: wasmtime + CPython (default), hardened process forkserver, worker pool |
//! | [`data`] | tasks: AceCoder-87K (JSONL/parquet, hard subset), MBPP, HumanEval, synthetic toy tasks; prompts |
//! | [`reward`] | DiffuCoder's format and code (pass-rate) rewards behind the `RewardFn` trait |
//! | [`estimator`] | likelihood estimators: coupled (default), decoupled, d1, full-mask |
//! | [`grpo`] | advantages, clipped loss with k3 KL, optimizer/schedule, reference sync, trainer, checkpoints |
//! | [`eval`] | pass@k of a model on tasks through the sandbox, AR-ness of its rollouts |
//! | [`metrics`] | TRL-named metrics sink, pass@k |
//! | `cube` | CubeCL kernels taken when the backend is CUDA or wgpu (features `cuda`, `wgpu`): flash attention in the rollout forward, fused log-softmax + gather, RMSNorm, RoPE, SiLU·up |
//! | [`cpu`] | vectorised kernels and host paths taken when the backend is flex (CPU): exp, SiLU·up, softmax, radix argsort |
//! | [`perf`] | shared timing helpers for benches and `coupled-grpo bench` |
//! | [`plan`] | the memory plan of an update: bytes per device by part, fits 80 / 141 GB |
//!
//! Backends are chosen at the edge: the library is generic over `burn::tensor::backend::Backend`;
//! tests and the embedded default use the flex CPU backend ([`backend::Cpu`]), the `cuda`
//! feature adds burn-cuda (`backend::Cuda`), the `wgpu` feature burn-wgpu (`backend::Wgpu`; on
//! a machine without a GPU, Mesa's lavapipe runs it on the CPU for the CubeCL tests).

pub mod backend;
pub mod cpu;
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub mod cube;
pub mod data;
pub mod error;
pub mod estimator;
pub mod eval;
pub mod grpo;
pub mod metrics;
pub mod model;
pub mod perf;
pub mod plan;
pub mod reward;
pub mod rollout;
pub mod sandbox;
pub mod util;

pub use error::{Error, Result};
