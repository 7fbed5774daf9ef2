//! One pre-norm decoder block without the causal mask.

use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};

use super::attention::{Attention, AttentionBias};
use super::config::ModelConfig;
use super::mlp::Mlp;
use super::norm::RmsNorm;
use super::rope::Rope;
use super::weights::{TensorSink, WeightSource};
use crate::Result;

#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    pub input_layernorm: RmsNorm<B>,
    pub self_attn: Attention<B>,
    pub post_attention_layernorm: RmsNorm<B>,
    pub mlp: Mlp<B>,
}

impl<B: Backend> Block<B> {
    pub fn from_source<S: WeightSource<B>>(
        source: &mut S,
        prefix: &str,
        c: &ModelConfig,
    ) -> Result<Self> {
        let (d, eps) = (c.hidden_size, c.rms_norm_eps);
        Ok(Self {
            input_layernorm: RmsNorm::from_source(
                source,
                &format!("{prefix}.input_layernorm"),
                d,
                eps,
            )?,
            self_attn: Attention::from_source(source, &format!("{prefix}.self_attn"), c)?,
            post_attention_layernorm: RmsNorm::from_source(
                source,
                &format!("{prefix}.post_attention_layernorm"),
                d,
                eps,
            )?,
            mlp: Mlp::from_source(source, &format!("{prefix}.mlp"), c)?,
        })
    }

    /// # Shapes
    /// - x: `[batch, seq, hidden]` → `[batch, seq, hidden]`; see [`Attention::forward`] for the rest
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &Rope<B>,
        bias: Option<&AttentionBias<B>>,
    ) -> Tensor<B, 3> {
        self.forward_with(x, |attn, h| attn.forward(h, rope, bias))
    }

    /// The block with its attention step supplied by the caller (called with the normed input;
    /// the cached forward passes of [`super::kv_cache`] keep or reuse keys and values there).
    ///
    /// # Shapes
    /// - x: `[batch, seq, hidden]` → `[batch, seq, hidden]`; `attention` maps the same shape
    pub fn forward_with(
        &self,
        x: Tensor<B, 3>,
        attention: impl FnOnce(&Attention<B>, Tensor<B, 3>) -> Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let x = x.clone() + attention(&self.self_attn, self.input_layernorm.forward(x));
        x.clone() + self.mlp.forward(self.post_attention_layernorm.forward(x))
    }

    pub fn save(&self, sink: &mut TensorSink, prefix: &str) {
        self.input_layernorm
            .save(sink, &format!("{prefix}.input_layernorm"));
        self.self_attn.save(sink, &format!("{prefix}.self_attn"));
        self.post_attention_layernorm
            .save(sink, &format!("{prefix}.post_attention_layernorm"));
        self.mlp.save(sink, &format!("{prefix}.mlp"));
    }
}
