//! # coupled-grpo
//!
//! Reinforcement-learning fine-tuning of masked-diffusion code LLMs (DiffuCoder / Dream) with
//! **coupled-GRPO** (arXiv 2506.20639), in Rust on [Burn](https://burn.dev) 0.21.
//!
//! | module | what it holds |
//! |---|---|
//! | [`model`] | the Dream/DiffuCoder masked-diffusion transformer (Qwen2 blocks, no causal mask), HF config/safetensors I/O, tokenizer and chat template |
//!
//! Backends are chosen at the edge: the library is generic over `burn::tensor::backend::Backend`;
//! tests and the embedded default use the flex CPU backend ([`backend::Cpu`]), the `cuda`
//! feature adds burn-cuda ([`backend::Cuda`]).

pub mod backend;
pub mod error;
pub mod model;
pub mod perf;
pub mod util;
// (module declarations: keep one per line, alphabetical)
pub mod data;
pub mod estimator;
pub mod grpo;
pub mod metrics;
pub mod reward;
pub mod rollout;
pub mod sandbox;

pub use error::{Error, Result};
