//! Model configuration with Hugging Face `config.json` field names (Dream / DiffuCoder / Qwen2).
//! A LLaDA `config.json` (its own key names, [`super::llada_config`]) is read into the same
//! struct, with [`ModelConfig::family`] saying which family it is.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::family::ModelFamily;
use super::llada_config::{is_llada, LladaConfig};
use crate::{Error, Result};

/// Architectures whose weights [`super::DiffusionLm`] can run: Dream/DiffuCoder are Qwen2
/// blocks without the causal mask; a Qwen2 checkpoint is loaded as a bidirectional model.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &[
    "DreamModel",
    "Qwen2ForCausalLM",
    "Qwen2Model",
    "LLaDAModelLM",
];

/// Hyper-parameters of the masked-diffusion transformer. Field names are exactly those of the
/// HF `config.json`, so a real DiffuCoder/Dream directory deserialises as is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// HF `architectures`; checked against [`SUPPORTED_ARCHITECTURES`].
    #[serde(default = "default_architectures")]
    pub architectures: Vec<String>,
    /// HF `model_type` (`dream` for DiffuCoder).
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// GQA: key/value heads (defaults to `num_attention_heads`, i.e. plain MHA).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// `<|mask|>` (DiffuCoder: 151666).
    #[serde(default)]
    pub mask_token_id: Option<u32>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    /// HF `hidden_act`; only `silu` (SwiGLU) is implemented.
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    /// HF `initializer_range`: std of the normal init of random weights.
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    /// HF `torch_dtype` (`dtype` in transformers 5) of the stored weights (informational; the
    /// load dtype is chosen by the caller).
    #[serde(default, alias = "dtype")]
    pub torch_dtype: Option<String>,
    /// transformers 5 writes RoPE settings here; its `rope_theta` overrides the top-level field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<RopeParameters>,
    /// Older name for RoPE scaling; only absent/`null`/`default` is supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeParameters>,
    /// Sliding-window attention is not part of Dream; `true` is rejected.
    #[serde(default)]
    pub use_sliding_window: bool,
    /// The model family (from `model_type`); not an HF key of Dream's config.
    #[serde(skip)]
    pub family: ModelFamily,
    /// A LLaDA config as read, so that saving writes LLaDA's keys back (its other keys kept).
    #[serde(skip)]
    pub llada: Option<LladaConfig>,
}

/// `rope_parameters` / `rope_scaling` as HF writes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeParameters {
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default = "default_rope_type", alias = "type")]
    pub rope_type: String,
}

fn default_rope_type() -> String {
    "default".into()
}

fn default_architectures() -> Vec<String> {
    vec!["DreamModel".into()]
}
fn default_model_type() -> String {
    "dream".into()
}
fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_max_position_embeddings() -> usize {
    32_768
}
fn default_hidden_act() -> String {
    "silu".into()
}
fn default_initializer_range() -> f64 {
    0.02
}

/// Names accepted by [`ModelConfig::preset`].
pub const PRESETS: &[&str] = &[
    "tiny",
    "small",
    "small-qwen-vocab",
    "qwen2.5-0.5b",
    "diffucoder-7b",
    "llada-tiny",
    "llada-8b",
];

impl ModelConfig {
    /// Read and validate an HF `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text, Some(path))
    }

    /// Parse and validate config JSON; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: Option<&Path>) -> Result<Self> {
        let shown = path
            .map(Path::to_path_buf)
            .unwrap_or_else(|| "config.json".into());
        let json_error = |e: serde_json::Error| Error::Json {
            path: shown.clone(),
            line: Some(e.line()),
            message: e.to_string(),
        };
        // The family from a first, untyped read; the typed read is of the text, so that a bad
        // value's error keeps its line.
        let doc: serde_json::Value = serde_json::from_str(text).map_err(json_error)?;
        if is_llada(&doc) {
            let llada: LladaConfig = serde_json::from_str(text).map_err(json_error)?;
            llada.validate(&shown)?;
            let config = llada.to_model_config();
            config.validate(Some(&shown))?;
            return Ok(config);
        }
        let mut config: ModelConfig = serde_json::from_str(text).map_err(json_error)?;
        if let Some(theta) = config.rope_parameters.as_ref().and_then(|r| r.rope_theta) {
            config.rope_theta = theta;
        }
        config.validate(Some(&shown))?;
        Ok(config)
    }

    /// Write `config.json` (pretty; HF field names, or LLaDA's for a LLaDA model).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let text = match self.family {
            ModelFamily::Dream => serde_json::to_string_pretty(self),
            ModelFamily::Llada => {
                serde_json::to_string_pretty(&LladaConfig::from_model_config(self))
            }
        }
        .expect("config serialises");
        crate::util::write_atomic(path, text.as_bytes())
    }

    /// Built-in shapes: `tiny` (tests), `small` (CPU bench: d256, 4 layers),
    /// `qwen2.5-0.5b` and `diffucoder-7b` (GPU benchmarks). Token ids follow DiffuCoder for the
    /// large presets; the small ones use the first ids of a tiny vocabulary.
    pub fn preset(name: &str) -> Result<Self> {
        let diffucoder_ids = |mut c: ModelConfig| {
            c.mask_token_id = Some(151_666);
            c.pad_token_id = Some(151_643);
            c.bos_token_id = Some(151_643);
            c.eos_token_id = Some(151_643);
            c
        };
        let base = |vocab, hidden, inter, layers, heads, kv| ModelConfig {
            architectures: default_architectures(),
            model_type: default_model_type(),
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: inter,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: Some(kv),
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            max_position_embeddings: 4096,
            tie_word_embeddings: false,
            mask_token_id: None,
            pad_token_id: None,
            bos_token_id: None,
            eos_token_id: None,
            hidden_act: default_hidden_act(),
            initializer_range: 0.02,
            torch_dtype: Some("float32".into()),
            rope_parameters: None,
            rope_scaling: None,
            use_sliding_window: false,
            family: ModelFamily::Dream,
            llada: None,
        };
        let config = match name {
            "tiny" => {
                let mut c = base(512, 64, 176, 2, 4, 2);
                c.mask_token_id = Some(3);
                c.pad_token_id = Some(4);
                c.bos_token_id = Some(0);
                c.eos_token_id = Some(0);
                c
            }
            "small" => {
                let mut c = base(2048, 256, 688, 4, 8, 2);
                c.mask_token_id = Some(3);
                c.pad_token_id = Some(4);
                c.bos_token_id = Some(0);
                c.eos_token_id = Some(0);
                c
            }
            // The small trunk with Qwen2.5's 151,936-token vocabulary and tied head (as
            // Qwen2.5-0.5B): where vocabulary-wide logits dominate an update's memory.
            "small-qwen-vocab" => {
                let mut c = diffucoder_ids(base(151_936, 256, 688, 4, 8, 2));
                c.tie_word_embeddings = true;
                c
            }
            "qwen2.5-0.5b" => {
                let mut c = diffucoder_ids(base(151_936, 896, 4864, 24, 14, 2));
                c.tie_word_embeddings = true;
                c.rope_theta = 1_000_000.0;
                c.torch_dtype = Some("bfloat16".into());
                c
            }
            "diffucoder-7b" => {
                let mut c = diffucoder_ids(base(152_064, 3584, 18_944, 28, 28, 4));
                c.rope_theta = 1_000_000.0;
                c.max_position_embeddings = 131_072;
                c.torch_dtype = Some("bfloat16".into());
                c
            }
            // LLaDA-8B-Instruct's shape and token ids (its config.json), and a tiny LLaDA with
            // the byte-level test vocabulary.
            "llada-8b" => {
                let mut m = LladaConfig::llada_8b().to_model_config();
                m.torch_dtype = Some("bfloat16".into());
                m
            }
            "llada-tiny" => {
                let mut c = LladaConfig::llada_8b();
                (c.d_model, c.n_heads, c.n_kv_heads, c.n_layers) = (64, 4, Some(2), 2);
                (c.mlp_hidden_size, c.vocab_size, c.embedding_size) = (Some(176), 512, Some(512));
                c.rope_theta = 10_000.0;
                (c.mask_token_id, c.pad_token_id, c.eos_token_id) = (Some(3), Some(4), Some(0));
                c.other.insert("bos_token_id".into(), 0.into());
                let mut m = c.to_model_config();
                m.torch_dtype = Some("float32".into());
                m
            }
            other => {
                return Err(Error::invalid(
                    "preset",
                    format!("unknown preset `{other}` (known: {})", PRESETS.join(", ")),
                ))
            }
        };
        Ok(config)
    }

    /// Key/value heads (GQA), defaulting to the query heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The mask token id, or a config error naming the field.
    pub fn mask_token(&self) -> Result<u32> {
        self.mask_token_id.ok_or_else(|| {
            Error::config(
                "mask_token_id",
                "missing: a diffusion model needs a mask token",
            )
        })
    }

    /// Number of parameters (embedding, blocks, final norm, untied head).
    pub fn num_parameters(&self) -> usize {
        let (d, f, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let kv = self.kv_heads() * self.head_dim();
        let biases = if self.family.qkv_bias() {
            d + 2 * kv
        } else {
            0
        };
        let attn = d * d + 2 * d * kv + d * d + biases;
        let block = attn + 3 * d * f + 2 * d;
        let head = if self.tie_word_embeddings { 0 } else { v * d };
        v * d + self.num_hidden_layers * block + d + head
    }

    /// Check the invariants the model relies on; errors name the offending field.
    pub fn validate(&self, path: Option<&Path>) -> Result<()> {
        let err = |field: &str, message: String| Error::Config {
            source_file: path.map(Path::to_path_buf),
            field: field.into(),
            message,
        };
        if let Some(arch) = self
            .architectures
            .iter()
            .find(|a| !SUPPORTED_ARCHITECTURES.contains(&a.as_str()))
        {
            return Err(Error::UnsupportedArchitecture {
                path: path
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| "config.json".into()),
                architecture: arch.clone(),
                supported: SUPPORTED_ARCHITECTURES.join(", "),
            });
        }
        for (field, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.kv_heads()),
        ] {
            if value == 0 {
                return Err(err(field, "must be positive".into()));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(err(
                "hidden_size",
                format!(
                    "{} is not divisible by num_attention_heads {}",
                    self.hidden_size, self.num_attention_heads
                ),
            ));
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return Err(err(
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.kv_heads(),
                    self.num_attention_heads
                ),
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(err("hidden_size", "head_dim must be even for RoPE".into()));
        }
        for (field, rope) in [
            ("rope_parameters", &self.rope_parameters),
            ("rope_scaling", &self.rope_scaling),
        ] {
            if let Some(r) = rope.as_ref().filter(|r| r.rope_type != "default") {
                return Err(err(
                    field,
                    format!(
                        "rope_type `{}` is not supported (only default)",
                        r.rope_type
                    ),
                ));
            }
        }
        if self.use_sliding_window {
            return Err(err(
                "use_sliding_window",
                "sliding-window attention is not supported".into(),
            ));
        }
        if self.hidden_act != "silu" {
            return Err(err(
                "hidden_act",
                format!("`{}` is not supported (only silu)", self.hidden_act),
            ));
        }
        if self.rms_norm_eps.is_nan() || self.rms_norm_eps <= 0.0 {
            return Err(err("rms_norm_eps", "must be positive".into()));
        }
        if let Some(id) = self.mask_token_id {
            if id as usize >= self.vocab_size {
                return Err(err(
                    "mask_token_id",
                    format!("{id} is outside the vocabulary ({})", self.vocab_size),
                ));
            }
        }
        Ok(())
    }
}
