//! LLaDA's `config.json`, with its own key names (`configuration_llada.py`), and its
//! translation to [`ModelConfig`]. Keys this crate does not use (`auto_map`, `init_*`,
//! dropouts, …) are kept and written back unchanged.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::config::ModelConfig;
use super::family::ModelFamily;
use crate::{Error, Result};

/// `<|mdm_mask|>` of LLaDA-8B.
pub const LLADA_MASK_TOKEN: u32 = 126_336;

/// The keys of LLaDA's config that define the network (defaults: `configuration_llada.py`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LladaConfig {
    pub d_model: usize,
    pub n_heads: usize,
    #[serde(default)]
    pub n_kv_heads: Option<usize>,
    pub n_layers: usize,
    #[serde(default)]
    pub mlp_hidden_size: Option<usize>,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: usize,
    pub vocab_size: usize,
    /// Rows of the embedding and the output head (≥ `vocab_size`; the logits are this wide).
    #[serde(default)]
    pub embedding_size: Option<usize>,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_true")]
    pub weight_tying: bool,
    #[serde(default)]
    pub mask_token_id: Option<u32>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    #[serde(default = "default_max_len")]
    pub max_sequence_length: usize,
    #[serde(default = "default_std")]
    pub init_std: f64,
    #[serde(default = "default_block_type")]
    pub block_type: String,
    #[serde(default = "default_activation")]
    pub activation_type: String,
    #[serde(default = "default_norm_type")]
    pub layer_norm_type: String,
    #[serde(default)]
    pub include_bias: bool,
    #[serde(default)]
    pub include_qkv_bias: bool,
    #[serde(default)]
    pub alibi: bool,
    #[serde(default = "default_true")]
    pub rope: bool,
    #[serde(default)]
    pub scale_logits: bool,
    #[serde(default)]
    pub attention_layer_norm: bool,
    #[serde(default)]
    pub input_emb_norm: bool,
    #[serde(default)]
    pub clip_qkv: Option<f64>,
    /// Every other key, written back as read.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

fn default_mlp_ratio() -> usize {
    4
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_eps() -> f64 {
    1e-5
}
fn default_true() -> bool {
    true
}
fn default_max_len() -> usize {
    1024
}
fn default_std() -> f64 {
    0.02
}
fn default_block_type() -> String {
    "sequential".into()
}
fn default_activation() -> String {
    "swiglu".into()
}
fn default_norm_type() -> String {
    "default".into()
}

/// True when a `config.json` document is LLaDA's.
pub fn is_llada(doc: &Value) -> bool {
    doc.get("model_type").and_then(Value::as_str) == Some("llada")
        || doc
            .get("architectures")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v.as_str() == Some("LLaDAModelLM")))
}

impl LladaConfig {
    /// The settings this crate implements (LLaDA-8B's): a LLaMA block with RMSNorm, SiLU
    /// gating, RoPE and no biases. Anything else is refused with its field named.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let err = |field: &str, message: String| Error::Config {
            source_file: Some(path.to_path_buf()),
            field: field.into(),
            message,
        };
        let expect = |field: &str, ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(err(
                    field,
                    format!("only {what} is implemented (LLaDA-8B's setting)"),
                ))
            }
        };
        expect("block_type", self.block_type == "llama", "`llama`")?;
        expect("activation_type", self.activation_type == "silu", "`silu`")?;
        expect("layer_norm_type", self.layer_norm_type == "rms", "`rms`")?;
        expect("include_bias", !self.include_bias, "false")?;
        expect("include_qkv_bias", !self.include_qkv_bias, "false")?;
        expect("alibi", !self.alibi, "false")?;
        expect("rope", self.rope, "true")?;
        expect("scale_logits", !self.scale_logits, "false")?;
        expect("attention_layer_norm", !self.attention_layer_norm, "false")?;
        expect("input_emb_norm", !self.input_emb_norm, "false")?;
        expect("clip_qkv", self.clip_qkv.is_none(), "null")?;
        if self.n_heads == 0 || !self.d_model.is_multiple_of(self.n_heads) {
            return Err(err(
                "n_heads",
                format!(
                    "{} heads do not divide d_model = {}",
                    self.n_heads, self.d_model
                ),
            ));
        }
        let kv = self.n_kv_heads.unwrap_or(self.n_heads);
        if kv == 0 || !self.n_heads.is_multiple_of(kv) {
            return Err(err(
                "n_kv_heads",
                format!(
                    "{kv} key/value heads do not divide n_heads = {}",
                    self.n_heads
                ),
            ));
        }
        if let Some(e) = self.embedding_size.filter(|&e| e < self.vocab_size) {
            return Err(err(
                "embedding_size",
                format!("{e} is smaller than vocab_size = {}", self.vocab_size),
            ));
        }
        match self.mask_token_id {
            None => Err(err(
                "mask_token_id",
                "missing: LLaDA needs its mask token".into(),
            )),
            Some(m) if m as usize >= self.vocab_size => Err(err(
                "mask_token_id",
                format!(
                    "{m} is outside the vocabulary (vocab_size = {})",
                    self.vocab_size
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    /// The network in this crate's terms (HF Qwen2 field names).
    pub fn to_model_config(&self) -> ModelConfig {
        let mut c = ModelConfig::preset("tiny").expect("a built-in preset");
        c.family = ModelFamily::Llada;
        c.architectures = vec!["LLaDAModelLM".into()];
        c.model_type = "llada".into();
        c.vocab_size = self.embedding_size.unwrap_or(self.vocab_size);
        c.hidden_size = self.d_model;
        c.intermediate_size = self
            .mlp_hidden_size
            .unwrap_or(self.mlp_ratio * self.d_model);
        c.num_hidden_layers = self.n_layers;
        c.num_attention_heads = self.n_heads;
        c.num_key_value_heads = Some(self.n_kv_heads.unwrap_or(self.n_heads));
        c.rms_norm_eps = self.rms_norm_eps;
        c.rope_theta = self.rope_theta;
        c.max_position_embeddings = self.max_sequence_length;
        c.tie_word_embeddings = self.weight_tying;
        c.mask_token_id = self.mask_token_id;
        c.pad_token_id = self.pad_token_id;
        c.eos_token_id = self.eos_token_id;
        c.bos_token_id = self
            .other
            .get("bos_token_id")
            .and_then(Value::as_u64)
            .map(|v| v as u32);
        c.hidden_act = "silu".into();
        c.initializer_range = self.init_std;
        c.torch_dtype = self
            .other
            .get("torch_dtype")
            .and_then(Value::as_str)
            .map(str::to_string);
        c.llada = Some(self.clone());
        c
    }

    /// LLaDA's config for a network described by `c` (keys not in `c` from `c.llada` when it
    /// came from a LLaDA file, else LLaDA-8B-Instruct's).
    pub fn from_model_config(c: &ModelConfig) -> Self {
        let mut l = c.llada.clone().unwrap_or_else(Self::llada_8b);
        l.d_model = c.hidden_size;
        l.n_heads = c.num_attention_heads;
        l.n_kv_heads = Some(c.kv_heads());
        l.n_layers = c.num_hidden_layers;
        l.mlp_hidden_size = Some(c.intermediate_size);
        if l.embedding_size.is_some() || l.vocab_size > c.vocab_size {
            l.embedding_size = Some(c.vocab_size);
            l.vocab_size = l.vocab_size.min(c.vocab_size);
        } else {
            l.vocab_size = c.vocab_size;
        }
        l.rope_theta = c.rope_theta;
        l.rms_norm_eps = c.rms_norm_eps;
        l.weight_tying = c.tie_word_embeddings;
        l.mask_token_id = c.mask_token_id;
        l.pad_token_id = c.pad_token_id;
        l.eos_token_id = c.eos_token_id;
        l.max_sequence_length = c.max_position_embeddings;
        l.init_std = c.initializer_range;
        if let Some(b) = c.bos_token_id {
            l.other.insert("bos_token_id".into(), b.into());
        }
        if let Some(d) = &c.torch_dtype {
            l.other
                .insert("torch_dtype".into(), Value::String(d.clone()));
        }
        l
    }

    /// LLaDA-8B-Instruct's released config (sizes and token ids as in its `config.json`).
    pub fn llada_8b() -> Self {
        let mut other = Map::new();
        other.insert("model_type".into(), "llada".into());
        other.insert("architectures".into(), serde_json::json!(["LLaDAModelLM"]));
        other.insert("bos_token_id".into(), 126_080.into());
        other.insert("use_cache".into(), false.into());
        Self {
            d_model: 4096,
            n_heads: 32,
            n_kv_heads: Some(32),
            n_layers: 32,
            mlp_hidden_size: Some(12_288),
            mlp_ratio: 4,
            vocab_size: 126_464,
            embedding_size: Some(126_464),
            rope_theta: 500_000.0,
            rms_norm_eps: 1e-5,
            weight_tying: false,
            mask_token_id: Some(LLADA_MASK_TOKEN),
            pad_token_id: Some(126_081),
            eos_token_id: Some(126_081),
            max_sequence_length: 4096,
            init_std: 0.02,
            block_type: "llama".into(),
            activation_type: "silu".into(),
            layer_norm_type: "rms".into(),
            include_bias: false,
            include_qkv_bias: false,
            alibi: false,
            rope: true,
            scale_logits: false,
            attention_layer_norm: false,
            input_emb_norm: false,
            clip_qkv: None,
            other,
        }
    }
}
