//! RMSNorm as in HF Qwen2 (`Qwen2RMSNorm`): statistics in f32, scale by `weight`.

use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, DType, Tensor};

use super::weights::{Init, TensorSink, WeightSource};
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
        let dtype = x.dtype();
        // HF computes the variance in f32 and casts back before the weight multiply.
        let x32 = x.cast(DType::F32);
        let inv = (x32.clone().square().mean_dim(D - 1) + self.eps)
            .sqrt()
            .recip();
        let normed = (x32 * inv).cast(dtype);
        normed * self.weight.val().unsqueeze()
    }

    pub fn save(&self, sink: &mut TensorSink, prefix: &str) {
        sink.put(format!("{prefix}.weight"), self.weight.val());
    }
}
