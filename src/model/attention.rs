//! Bidirectional grouped-query attention (Qwen2 projections: q/k/v with bias, o without).

use burn::module::Module;
use burn::tensor::{backend::Backend, DType, Tensor};

use super::config::ModelConfig;
use super::linear::Linear;
use super::rope::Rope;
use super::weights::{TensorSink, WeightSource};
use crate::cpu::attention;
use crate::cpu::ops::{rope as apply_rope, softmax_last};
use crate::Result;

#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub o_proj: Linear<B>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl<B: Backend> Attention<B> {
    pub fn from_source<S: WeightSource<B>>(
        source: &mut S,
        prefix: &str,
        c: &ModelConfig,
    ) -> Result<Self> {
        let (d, hd, std) = (c.hidden_size, c.head_dim(), c.initializer_range);
        let (h, kv) = (c.num_attention_heads, c.kv_heads());
        let bias = c.family.qkv_bias();
        Ok(Self {
            q_proj: Linear::from_source(source, &format!("{prefix}.q_proj"), d, h * hd, bias, std)?,
            k_proj: Linear::from_source(
                source,
                &format!("{prefix}.k_proj"),
                d,
                kv * hd,
                bias,
                std,
            )?,
            v_proj: Linear::from_source(
                source,
                &format!("{prefix}.v_proj"),
                d,
                kv * hd,
                bias,
                std,
            )?,
            o_proj: Linear::from_source(
                source,
                &format!("{prefix}.o_proj"),
                h * hd,
                d,
                false,
                std,
            )?,
            num_heads: h,
            num_kv_heads: kv,
            head_dim: hd,
        })
    }

    /// # Shapes
    /// - x: `[batch, seq, hidden]`
    /// - rope: tables for `[batch, seq]` ([`super::rope::rope_tables`])
    /// - bias: the padding bias ([`AttentionBias`]), or `None` for full attention
    /// - returns `[batch, seq, hidden]`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &Rope<B>,
        bias: Option<&AttentionBias<B>>,
    ) -> Tensor<B, 3> {
        let (q, k, v) = self.project(x, rope);
        self.attend(q, k, v, bias)
    }

    /// The query, key and value projections with RoPE; `q` also carries the `head_dim^-1/2`
    /// scale.
    ///
    /// # Shapes
    /// - x: `[batch, seq, hidden]`, rope: tables for `[batch, seq]`
    /// - returns q `[batch, seq, heads, head_dim]`, k and v `[batch, seq, kv_heads, head_dim]`
    pub fn project(
        &self,
        x: Tensor<B, 3>,
        rope: &Rope<B>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
        let [b, s, _] = x.dims();
        let (h, kv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        // RoPE on the projections' own [b, s, heads, hd] layout (contiguous).
        let scale = (hd as f64).powf(-0.5);
        let r = || rope.rotate_half.clone();
        let q = self.q_proj.forward(x.clone()).reshape([b, s, h, hd]);
        let q = apply_rope(q, rope.cos_q.clone(), rope.sin_q.clone(), r(), scale as f32);
        let k = self.k_proj.forward(x.clone()).reshape([b, s, kv, hd]);
        let k = apply_rope(k, rope.cos_k.clone(), rope.sin_k.clone(), r(), 1.0);
        let v = self.v_proj.forward(x).reshape([b, s, kv, hd]);
        (q, k, v)
    }

    /// Attention of the queries over the keys and values, then `o_proj`. There may be fewer
    /// queries than keys (a window over cached keys and values, inference only).
    ///
    /// # Shapes
    /// - q: `[batch, seq_q, heads, head_dim]` (from [`Self::project`])
    /// - k, v: `[batch, seq_k, kv_heads, head_dim]`
    /// - bias: `[batch, 1, seq_q, seq_k]` ([`AttentionBias`]), or `None`
    /// - returns `[batch, seq_q, hidden]`
    pub fn attend(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        bias: Option<&AttentionBias<B>>,
    ) -> Tensor<B, 3> {
        let [b, s, _, _] = q.dims();
        let (h, kv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let rep = h / kv;
        let dtype = q.dtype();
        if attention::applies::<B>(dtype) {
            let bias = bias.map(|bias| bias.per_sequence.clone());
            return self
                .o_proj
                .forward(attention::grouped_attention(q, k, v, bias));
        }
        // CUDA / wgpu inference: flash attention, no `[b, heads, seq_q, seq_k]` scores.
        #[cfg(any(feature = "cuda", feature = "wgpu"))]
        if let Some(out) = crate::cube::attention::grouped_attention(
            &q,
            &k,
            &v,
            bias.map(|bias| &bias.per_sequence),
        ) {
            return self.o_proj.forward(out);
        }

        // Head-major for the attention products. GQA without copying K/V: query head i uses kv
        // head i / rep (HF `repeat_kv`), so the rep query heads of one group are stacked along
        // the sequence axis and share one K/V.
        let (q, k, v) = (q.swap_dims(1, 2), k.swap_dims(1, 2), v.swap_dims(1, 2));
        let q = q.reshape([b, kv, rep * s, hd]);
        let scores = q.matmul(k.swap_dims(2, 3)).cast(DType::F32); // [b, kv, rep*s, seq_k]
        let bias = bias.map(|bias| match &bias.grouped {
            Some(grouped) => grouped.clone(),
            None => expand_bias(bias.per_sequence.clone(), kv, rep),
        });
        let probs = softmax_last(scores, bias).cast(dtype);
        let out = probs.matmul(v); // [b, kv, rep*s, hd]
        let out = out
            .reshape([b, h, s, hd])
            .swap_dims(1, 2)
            .reshape([b, s, h * hd]);
        self.o_proj.forward(out)
    }

    pub fn save(&self, sink: &mut TensorSink, prefix: &str) {
        self.q_proj.save(sink, &format!("{prefix}.q_proj"));
        self.k_proj.save(sink, &format!("{prefix}.k_proj"));
        self.v_proj.save(sink, &format!("{prefix}.v_proj"));
        self.o_proj.save(sink, &format!("{prefix}.o_proj"));
    }
}

/// The additive padding bias of one forward, in the layouts the two attention paths read: built
/// once per forward, shared by every layer.
#[derive(Debug, Clone)]
pub struct AttentionBias<B: Backend> {
    /// `[batch, 1, seq_q, seq_k]` f32 (0 = attend, large negative = blocked).
    pub per_sequence: Tensor<B, 4>,
    /// `[batch, kv_heads, rep · seq_q, seq_k]`: `per_sequence` laid out like the grouped scores of
    /// the generic path (contiguous, so that every layer adds it on the CPU backend's SIMD path
    /// instead of a strided broadcast loop); `None` where the fused flex path serves the model.
    pub grouped: Option<Tensor<B, 4>>,
}

impl<B: Backend> AttentionBias<B> {
    /// # Shapes
    /// - per_sequence: `[batch, 1, seq_q, seq_k]`
    pub fn new(
        per_sequence: Tensor<B, 4>,
        (kv_heads, rep, head_dim): (usize, usize, usize),
        dtype: DType,
    ) -> Self {
        // The fused CPU path and the CubeCL flash kernel read `per_sequence` only.
        #[cfg(any(feature = "cuda", feature = "wgpu"))]
        let fused = crate::cube::attention::applies::<B>(dtype, head_dim);
        #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
        let fused = {
            let _ = head_dim;
            false
        };
        let grouped = (!attention::applies::<B>(dtype) && !fused)
            .then(|| expand_bias(per_sequence.clone(), kv_heads, rep));
        Self {
            per_sequence,
            grouped,
        }
    }
}

/// The padding bias `[batch, 1, seq_q, seq_k]` laid out like the grouped scores,
/// `[batch, kv_heads, rep · seq_q, seq_k]`, contiguous.
pub fn expand_bias<B: Backend>(bias: Tensor<B, 4>, kv_heads: usize, rep: usize) -> Tensor<B, 4> {
    bias.repeat_dim(2, rep).repeat_dim(1, kv_heads)
}
