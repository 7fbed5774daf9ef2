//! The Dream / DiffuCoder masked-diffusion transformer: Qwen2 decoder blocks with the causal
//! mask removed, read top to bottom in one place. Field names mirror the HF safetensors keys.

use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, DType, Int, Tensor, TensorData};

use super::attention::AttentionBias;
use super::block::Block;
use super::config::ModelConfig;
use super::linear::Linear;
use super::norm::RmsNorm;
use super::rope::{rope_tables, Rope};
use super::weights::{
    DeviceRandomSource, FamilyNames, Init, RandomSource, TensorSink, WeightSource,
};
use crate::Result;

/// Blocked attention logits get this additive bias (finite so bf16/f32 softmax never sees NaN).
pub(super) const MASK_BIAS: f32 = -1e9;

#[derive(Module, Debug)]
pub struct DiffusionLm<B: Backend> {
    /// `model.embed_tokens.weight`, `[vocab, hidden]`
    pub embed_tokens: Param<Tensor<B, 2>>,
    /// `model.layers.N`
    pub layers: Vec<Block<B>>,
    /// `model.norm`
    pub norm: RmsNorm<B>,
    /// `lm_head`; `None` when `tie_word_embeddings` (the embedding matrix is reused).
    pub lm_head: Option<Linear<B>>,
    #[module(skip)]
    config: ModelConfig,
}

impl<B: Backend> DiffusionLm<B> {
    /// Random init (HF `initializer_range` normal weights, zero biases, unit norms) in f32.
    pub fn init(config: &ModelConfig, device: &B::Device) -> Self {
        Self::init_with(config, device, 0, DType::F32)
    }

    /// Random init with a seed (host RNG: identical weights on every backend) and a dtype.
    pub fn init_with(config: &ModelConfig, device: &B::Device, seed: u64, dtype: DType) -> Self {
        let mut source = RandomSource::<B>::new(seed, device, dtype);
        Self::from_source(config, &mut source).expect("a random source cannot fail")
    }

    /// Random init drawn by the device's own RNG (fast for large models on a GPU; the weights
    /// differ between backends and runs). For benchmarks.
    pub fn init_on_device(config: &ModelConfig, device: &B::Device, dtype: DType) -> Self {
        let mut source = DeviceRandomSource::<B>::new(device, dtype);
        Self::from_source(config, &mut source).expect("a random source cannot fail")
    }

    /// Build every parameter from `source` by HF key (the family's checkpoint names, see
    /// [`super::family`]).
    pub fn from_source<S: WeightSource<B>>(config: &ModelConfig, source: &mut S) -> Result<Self> {
        let mut source = FamilyNames {
            inner: source,
            family: config.family,
        };
        let source = &mut source;
        if crate::cpu::on_flex::<B>() {
            crate::cpu::alloc::retain_freed_memory();
        }
        let c = config;
        let embed_tokens = source.tensor(
            "model.embed_tokens.weight",
            [c.vocab_size, c.hidden_size],
            Init::Normal(c.initializer_range),
        )?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| Block::from_source(source, &format!("model.layers.{i}"), c))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::from_source(source, "model.norm", c.hidden_size, c.rms_norm_eps)?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(Linear::from_source(
                source,
                "lm_head",
                c.hidden_size,
                c.vocab_size,
                false,
                c.initializer_range,
            )?)
        };
        Ok(Self {
            embed_tokens: Param::from_tensor(embed_tokens),
            layers,
            norm,
            lm_head,
            config: config.clone(),
        })
    }

    /// The configuration this model was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The parameter dtype (f32 or bf16).
    pub fn dtype(&self) -> DType {
        self.embed_tokens.val().dtype()
    }

    /// Raw logits at every position (unshifted; see [`shift_logits`] for Dream's convention).
    ///
    /// # Shapes
    /// - input_ids: `[batch, seq]`
    /// - attention_mask: `[batch, seq]`, 1 = token, 0 = left pad; `None` = full attention with
    ///   positions `0..seq`
    /// - returns `[batch, seq, vocab]`
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
    ) -> Tensor<B, 3> {
        self.logits_from_hidden(self.forward_hidden(input_ids, attention_mask))
    }

    /// Final hidden states (after the last RMSNorm), for chunked log-prob gathers.
    ///
    /// # Shapes
    /// - input_ids, attention_mask: as [`Self::forward`]
    /// - returns `[batch, seq, hidden]`
    pub fn forward_hidden(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
    ) -> Tensor<B, 3> {
        let (positions, bias) = self.positions_and_bias(&input_ids, attention_mask);
        let (rope, bias) = self.attention_inputs(positions, bias);
        let mut x = self.embed(input_ids);
        for layer in &self.layers {
            x = layer.forward(x, &rope, bias.as_ref());
        }
        self.norm.forward(x)
    }

    /// Position ids and the additive padding bias of a batch, as the family builds them.
    ///
    /// # Shapes
    /// - input_ids, attention_mask: as [`Self::forward`]
    /// - returns positions `[batch, seq]` and the bias `[batch, 1, seq, seq]` (`None` without a
    ///   mask)
    pub(super) fn positions_and_bias(
        &self,
        input_ids: &Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
    ) -> (Tensor<B, 2, Int>, Option<Tensor<B, 4>>) {
        let [b, s] = input_ids.dims();
        let device = input_ids.device();
        let arange = || {
            Tensor::<B, 1, Int>::arange(0..s as i64, &device)
                .unsqueeze::<2>()
                .expand([b, s])
        };
        match attention_mask {
            Some(mask) if self.config.family.positions_from_mask() => {
                // Dream's sampler: position = cumsum(mask) - 1, pads get position 1.
                let pos = mask.clone().cumsum(1) - 1;
                let pos = pos.mask_fill(mask.clone().equal_elem(0), 1);
                (pos, Some(padding_bias(mask, true)))
            }
            // LLaDA: positions 0..L in every row, padded keys blocked.
            Some(mask) => (arange(), Some(padding_bias(mask, false))),
            None => (arange(), None),
        }
    }

    /// RoPE tables for `positions` and the bias in the layouts the attention reads.
    ///
    /// # Shapes
    /// - positions: `[batch, seq_q]`; bias: `[batch, 1, seq_q, seq_k]`
    pub(super) fn attention_inputs(
        &self,
        positions: Tensor<B, 2, Int>,
        bias: Option<Tensor<B, 4>>,
    ) -> (Rope<B>, Option<AttentionBias<B>>) {
        let c = &self.config;
        let (heads, kv) = (c.num_attention_heads, c.kv_heads());
        let rope = rope_tables(
            positions,
            c.head_dim(),
            (heads, kv),
            c.rope_theta,
            self.dtype(),
        );
        let layout = (kv, heads / kv, c.head_dim());
        let bias = bias.map(|bias| AttentionBias::new(bias, layout, self.dtype()));
        (rope, bias)
    }

    /// Token embeddings, `[batch, seq]` → `[batch, seq, hidden]`.
    pub(super) fn embed(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        burn::tensor::module::embedding(self.embed_tokens.val(), input_ids)
    }

    /// Project hidden states to vocabulary logits.
    ///
    /// # Shapes
    /// - hidden: `[batch, seq, hidden]` → `[batch, seq, vocab]`
    pub fn logits_from_hidden(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => {
                let [b, s, d] = hidden.dims();
                let w = self.embed_tokens.val().transpose(); // [hidden, vocab]
                hidden
                    .reshape([b * s, d])
                    .matmul(w)
                    .reshape([b, s, self.config.vocab_size])
            }
        }
    }

    /// Every parameter under its checkpoint key (the family's names) and HF layout.
    pub fn to_sink(&self) -> TensorSink {
        let family = self.config.family;
        self.to_hf_sink().renamed(|k| family.checkpoint_key(k))
    }

    fn to_hf_sink(&self) -> TensorSink {
        let mut sink = TensorSink::default();
        sink.put("model.embed_tokens.weight", self.embed_tokens.val());
        for (i, layer) in self.layers.iter().enumerate() {
            layer.save(&mut sink, &format!("model.layers.{i}"));
        }
        self.norm.save(&mut sink, "model.norm");
        if let Some(head) = &self.lm_head {
            head.save(&mut sink, "lm_head");
        }
        sink
    }
}

/// Additive attention bias for a left-padded batch: a real token attends to the real tokens;
/// a pad query attends to itself only (`pad_self`, Dream) or to the real tokens (LLaDA, which
/// blocks padded keys only). No row is all blocked, so no NaN.
///
/// # Shapes
/// - mask: `[batch, seq]` (1 = token) → `[batch, 1, seq, seq]` f32
pub fn padding_bias<B: Backend>(mask: Tensor<B, 2, Int>, pad_self: bool) -> Tensor<B, 4> {
    let [b, s] = mask.dims();
    if crate::cpu::on_flex::<B>() && s > 0 {
        // On the CPU the mask is already host memory; Burn's broadcast products below would
        // walk element by element (2 % of a rollout forward).
        let device = mask.device();
        let mask: Vec<i64> = mask
            .into_data()
            .convert::<i64>()
            .into_vec()
            .expect("an Int tensor converts to i64");
        let mut bias = vec![0.0f32; b * s * s];
        for (m, out) in mask.chunks_exact(s).zip(bias.chunks_exact_mut(s * s)) {
            for (i, row) in out.chunks_exact_mut(s).enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    let blocked = match pad_self {
                        true => i != j && (m[i] == 0 || m[j] == 0),
                        false => m[j] == 0,
                    };
                    if blocked {
                        *v = MASK_BIAS;
                    }
                }
            }
        }
        return Tensor::from_data(TensorData::new(bias, [b, 1, s, s]), &device);
    }
    let valid = mask.float();
    let keys = valid.clone().unsqueeze_dim::<3>(1).expand([b, s, s]); // [b, s, s]
    let allowed = match pad_self {
        true => {
            let pair = valid.unsqueeze_dim::<3>(2) * keys;
            let eye = Tensor::<B, 2>::eye(s, &pair.device()).unsqueeze::<3>();
            (pair + eye).clamp_max(1.0)
        }
        false => keys,
    };
    ((allowed - 1.0) * (-MASK_BIAS)).unsqueeze_dim::<4>(1)
}

/// Dream's logit shift: row `j - 1` predicts token `j`. Returns `out[:, j] = logits[:, j - 1]`
/// for `j ≥ 1` and `out[:, 0] = logits[:, 0]`, so `out` row `j` scores position `j`.
///
/// # Shapes
/// - logits: `[batch, seq, vocab]` → same shape
pub fn shift_logits<B: Backend>(logits: Tensor<B, 3>) -> Tensor<B, 3> {
    let [b, s, v] = logits.dims();
    if s < 2 {
        return logits;
    }
    let first = logits.clone().slice([0..b, 0..1, 0..v]);
    let rest = logits.slice([0..b, 0..s - 1, 0..v]);
    Tensor::cat(vec![first, rest], 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;
    use burn::tensor::TensorData;

    #[test]
    fn shift_moves_rows_right_by_one() {
        let logits = Tensor::<Cpu, 3>::from_data(
            TensorData::new(vec![0f32, 1., 2., 3., 4., 5.], [1, 3, 2]),
            &Default::default(),
        );
        let out: Vec<f32> = shift_logits(logits).into_data().into_vec().unwrap();
        assert_eq!(out, vec![0., 1., 0., 1., 2., 3.]);
    }

    #[test]
    fn padding_bias_blocks_pads_but_keeps_their_diagonal() {
        let mask = Tensor::<Cpu, 2, Int>::from_data(
            TensorData::new(vec![0i64, 1, 1, 1, 1, 1], [2, 3]),
            &Default::default(),
        );
        let bias = padding_bias(mask, true);
        assert_eq!(bias.dims(), [2, 1, 3, 3]);
        let bias: Vec<f32> = bias.into_data().into_vec().unwrap();
        let blocked = MASK_BIAS;
        #[rustfmt::skip]
        let want = vec![0., blocked, blocked,
                        blocked, 0., 0.,
                        blocked, 0., 0.,
                        // the unpadded sequence: nothing blocked
                        0., 0., 0.,
                        0., 0., 0.,
                        0., 0., 0.];
        assert_eq!(bias, want);
    }
}
