//! RMSNorm as in HF Qwen2 (`Qwen2RMSNorm`): statistics in f32, scale by `weight`.

use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, Tensor};

use super::weights::{Init, TensorSink, WeightSource};
use crate::cpu::ops::rms_norm;
use crate::Result;

#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// `[hidden]`
    pub weight: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    pub fn from_source<S: WeightSource<B>>(
        source: &mut S,
        prefix: &str,
        d: usize,
        eps: f64,
    ) -> Result<Self> {
        Ok(Self {
            weight: Param::from_tensor(source.tensor(
                &format!("{prefix}.weight"),
                [d],
                Init::Ones,
            )?),
            eps,
        })
    }

    /// # Shapes
    /// - x: `[..., hidden]` → same shape
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        rms_norm(x, self.weight.val(), self.eps)
    }

    pub fn save(&self, sink: &mut TensorSink, prefix: &str) {
        sink.put(format!("{prefix}.weight"), self.weight.val());
    }
}
