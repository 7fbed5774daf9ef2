//! Linear projection with HF key names (`weight` stored `[out, in]` in checkpoints).

use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, Tensor};

use super::lora::LoraAdapter;
use super::weights::{Init, TensorSink, WeightSource};
use crate::Result;

/// `y = x Wᵀ + b` (plus a LoRA adapter's `scale · (x·Aᵀ)·Bᵀ` when one is attached). The weight
/// is kept as `[in, out]` in memory (contiguous for the matmul) and transposed to HF's
/// `[out, in]` only when loading and saving.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[d_in, d_out]`
    pub weight: Param<Tensor<B, 2>>,
    /// `[d_out]`
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// A low-rank adapter ([`super::lora`]); saved by [`super::peft`], never by [`Self::save`].
    pub lora: Option<LoraAdapter<B>>,
}

impl<B: Backend> Linear<B> {
    /// Build from `{prefix}.weight` (`[d_out, d_in]`) and, if `bias`, `{prefix}.bias`.
    pub fn from_source<S: WeightSource<B>>(
        source: &mut S,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
        std: f64,
    ) -> Result<Self> {
        let w = source.tensor(
            &format!("{prefix}.weight"),
            [d_out, d_in],
            Init::Normal(std),
        )?;
        let (device, dtype) = (w.device(), w.dtype());
        // Materialise the transpose once so every forward multiplies a contiguous matrix.
        let w = Tensor::<B, 2>::from_data(w.transpose().into_data(), &device).cast(dtype);
        let bias = if bias {
            Some(Param::from_tensor(source.tensor(
                &format!("{prefix}.bias"),
                [d_out],
                Init::Zeros,
            )?))
        } else {
            None
        };
        Ok(Self {
            weight: Param::from_tensor(w),
            bias,
            lora: None,
        })
    }

    /// # Shapes
    /// - input: `[..., d_in]` → output `[..., d_out]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let bias = self.bias.as_ref().map(|b| b.val());
        match &self.lora {
            None => crate::cpu::ops::linear(x, self.weight.val(), bias),
            Some(adapter) => {
                crate::cpu::ops::linear(x.clone(), self.weight.val(), bias) + adapter.forward(x)
            }
        }
    }

    /// Record under HF keys and layout.
    pub fn save(&self, sink: &mut TensorSink, prefix: &str) {
        sink.put(format!("{prefix}.weight"), self.weight.val().transpose());
        if let Some(b) = &self.bias {
            sink.put(format!("{prefix}.bias"), b.val());
        }
    }
}
