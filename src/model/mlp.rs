//! SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`, no biases (Qwen2).

use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};

use super::config::ModelConfig;
use super::linear::Linear;
use super::weights::{TensorSink, WeightSource};
use crate::cpu::ops::silu_mul;
use crate::Result;

#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub gate_proj: Linear<B>,
    pub up_proj: Linear<B>,
    pub down_proj: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    pub fn from_source<S: WeightSource<B>>(
        source: &mut S,
        prefix: &str,
        c: &ModelConfig,
    ) -> Result<Self> {
        let (d, f, std) = (c.hidden_size, c.intermediate_size, c.initializer_range);
        Ok(Self {
            gate_proj: Linear::from_source(
                source,
                &format!("{prefix}.gate_proj"),
                d,
                f,
                false,
                std,
            )?,
            up_proj: Linear::from_source(source, &format!("{prefix}.up_proj"), d, f, false, std)?,
            down_proj: Linear::from_source(
                source,
                &format!("{prefix}.down_proj"),
                f,
                d,
                false,
                std,
            )?,
        })
    }

    /// # Shapes
    /// - x: `[batch, seq, hidden]` → `[batch, seq, hidden]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let gate = self.gate_proj.forward(x.clone());
        self.down_proj
            .forward(silu_mul(gate, self.up_proj.forward(x)))
    }

    pub fn save(&self, sink: &mut TensorSink, prefix: &str) {
        self.gate_proj.save(sink, &format!("{prefix}.gate_proj"));
        self.up_proj.save(sink, &format!("{prefix}.up_proj"));
        self.down_proj.save(sink, &format!("{prefix}.down_proj"));
    }
}
