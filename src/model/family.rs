//! Model families: what differs between masked-diffusion LLMs that share the transformer.
//!
//! Dream / DiffuCoder (Qwen2 blocks) and LLaDA (LLaMA-style blocks, `modeling_llada.py`) run
//! the same bidirectional pre-norm transformer with RoPE, RMSNorm and SwiGLU. What differs is a
//! property of the family, read by the model layer and never special-cased in the estimators,
//! the rollout or the trainer:
//!
//! | property | Dream | LLaDA |
//! |---|---|---|
//! | [`ModelFamily::logit_shift`]: hidden row `i − shift` scores token `i` | 1 | 0 |
//! | [`ModelFamily::qkv_bias`] | yes | no |
//! | positions with left padding | `cumsum(mask) − 1` | `0..L` (RoPE is relative) |
//! | a pad query attends to | itself | every real token |
//! | checkpoint names ([`ModelFamily::checkpoint_key`]) | HF Qwen2 | `model.transformer.*` |
//! | `config.json` | HF Qwen2 keys | LLaDA's own keys (`d_model`, `n_heads`, …) |
//! | mask token | `<\|mask\|>` 151666 | `<\|mdm_mask\|>` 126336 |
//! | chat template ([`ModelFamily::chat_prompt`]) | Qwen's `<\|im_start\|>` | `<\|start_header_id\|>` … `<\|eot_id\|>` |
//! | default sampler ([`ModelFamily::default_sampler`]) | `entropy`, full diffusion | `low_confidence`, blocks of 32 |
//!
//! A third family (a block-diffusion model, say) adds a variant here, its config keys in
//! `config.rs` and its names in [`ModelFamily::checkpoint_key`]; estimators and rollouts read
//! only these properties.

use serde::{Deserialize, Serialize};

use super::tokenizer::{chat_prompt, SpecialTokenConfig};
use crate::rollout::Alg;

/// The family of a model, from its `config.json` (`model_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFamily {
    /// Dream / DiffuCoder: Qwen2 blocks without the causal mask, Dream's logit shift.
    #[default]
    Dream,
    /// LLaDA: LLaMA-style blocks without biases, no logit shift.
    Llada,
}

impl ModelFamily {
    pub fn name(self) -> &'static str {
        match self {
            ModelFamily::Dream => "dream",
            ModelFamily::Llada => "llada",
        }
    }

    /// How far the scoring row sits before the token it scores: Dream's hidden row `i − 1`
    /// predicts token `i` (an autoregressive heritage); LLaDA's row `i` predicts token `i`.
    pub fn logit_shift(self) -> usize {
        match self {
            ModelFamily::Dream => 1,
            ModelFamily::Llada => 0,
        }
    }

    /// Whether the q/k/v projections carry biases (Qwen2's do; LLaDA has no bias anywhere).
    pub fn qkv_bias(self) -> bool {
        self == ModelFamily::Dream
    }

    /// Whether position ids follow the padding mask (`cumsum(mask) − 1`, Dream) or are `0..L`
    /// in every row (LLaDA; with key padding RoPE's relative angles make both equal for real
    /// tokens).
    pub fn positions_from_mask(self) -> bool {
        self == ModelFamily::Dream
    }

    /// Whether a pad query attends to itself only (Dream's sampler) or to every real token
    /// (LLaDA masks padded keys only).
    pub fn pad_queries_attend_themselves(self) -> bool {
        self == ModelFamily::Dream
    }

    /// The family's chat template (as its tokenizer config writes it), ending where the
    /// assistant's answer starts, then `assistant_prefill`.
    ///
    /// LLaDA-8B-Instruct: `<|startoftext|>` before the first message, each message
    /// `<|start_header_id|>ROLE<|end_header_id|>\n\n` + trimmed content + `<|eot_id|>`, then
    /// the assistant header. An empty system prompt is left out.
    pub fn chat_prompt(self, system: &str, user: &str, assistant_prefill: Option<&str>) -> String {
        if self == ModelFamily::Dream {
            return chat_prompt(system, user, assistant_prefill);
        }
        let message = |role: &str, content: &str| {
            format!(
                "<|start_header_id|>{role}<|end_header_id|>\n\n{}<|eot_id|>",
                content.trim()
            )
        };
        let mut s = String::from("<|startoftext|>");
        if !system.trim().is_empty() {
            s.push_str(&message("system", system));
        }
        s.push_str(&message("user", user));
        s.push_str("<|start_header_id|>assistant<|end_header_id|>\n\n");
        if let Some(prefill) = assistant_prefill {
            s.push_str(prefill);
        }
        s
    }

    /// The special tokens of the family's released tokenizer: mask, pad, end of turn (the
    /// trainer's `im_end`), start of turn and end of text.
    pub fn special_tokens(self) -> SpecialTokenConfig {
        match self {
            ModelFamily::Dream => SpecialTokenConfig::default(),
            ModelFamily::Llada => SpecialTokenConfig {
                mask: ("<|mdm_mask|>".into(), 126_336),
                pad: ("<|endoftext|>".into(), 126_081),
                im_end: ("<|eot_id|>".into(), 126_348),
                im_start: ("<|start_header_id|>".into(), 126_346),
                eos: ("<|endoftext|>".into(), 126_081),
            },
        }
    }

    /// A linear layer's path in the family's checkpoints (`model.layers.0.mlp.down_proj` is
    /// LLaDA's `model.transformer.blocks.0.ff_out`), for PEFT adapter keys.
    pub fn module_path(self, path: &str) -> String {
        let key = self.checkpoint_key(&format!("{path}.weight"));
        key.strip_suffix(".weight").unwrap_or(&key).to_string()
    }

    /// A block linear's name in the family's checkpoints (PEFT's `target_modules`).
    pub fn module_name(self, name: &str) -> String {
        match (self, name) {
            (ModelFamily::Llada, "o_proj") => "attn_out".into(),
            (ModelFamily::Llada, "gate_proj") => "ff_proj".into(),
            (ModelFamily::Llada, "down_proj") => "ff_out".into(),
            _ => name.into(),
        }
    }

    /// The model layer's name of a block linear the family's checkpoints name `name`.
    pub fn internal_module_name(self, name: &str) -> String {
        match (self, name) {
            (ModelFamily::Llada, "attn_out") => "o_proj".into(),
            (ModelFamily::Llada, "ff_proj") => "gate_proj".into(),
            (ModelFamily::Llada, "ff_out") => "down_proj".into(),
            _ => name.into(),
        }
    }

    /// The family's sampler: Dream's full-diffusion decoding ordered by entropy (DiffuCoder's
    /// setting), or LLaDA's semi-autoregressive blocks of 32 with low-confidence remasking (its
    /// `generate.py` and d1's). Any family can run either; this is what a caller gets without
    /// naming one.
    pub fn default_sampler(self) -> (Alg, Option<usize>) {
        match self {
            ModelFamily::Dream => (Alg::Entropy, None),
            ModelFamily::Llada => (Alg::LowConfidence, Some(32)),
        }
    }

    /// The checkpoint's name of a parameter the model layer names by its HF Qwen2 key
    /// (`model.layers.3.self_attn.o_proj.weight` is LLaDA's
    /// `model.transformer.blocks.3.attn_out.weight`).
    pub fn checkpoint_key(self, key: &str) -> String {
        if self == ModelFamily::Dream {
            return key.to_string();
        }
        match key {
            "model.embed_tokens.weight" => return "model.transformer.wte.weight".into(),
            "model.norm.weight" => return "model.transformer.ln_f.weight".into(),
            "lm_head.weight" => return "model.transformer.ff_out.weight".into(),
            _ => {}
        }
        let Some(rest) = key.strip_prefix("model.layers.") else {
            return key.to_string();
        };
        let Some((layer, name)) = rest.split_once('.') else {
            return key.to_string();
        };
        let name = match name {
            "input_layernorm.weight" => "attn_norm.weight",
            "post_attention_layernorm.weight" => "ff_norm.weight",
            "self_attn.q_proj.weight" => "q_proj.weight",
            "self_attn.k_proj.weight" => "k_proj.weight",
            "self_attn.v_proj.weight" => "v_proj.weight",
            "self_attn.o_proj.weight" => "attn_out.weight",
            "mlp.gate_proj.weight" => "ff_proj.weight",
            "mlp.up_proj.weight" => "up_proj.weight",
            "mlp.down_proj.weight" => "ff_out.weight",
            other => other,
        };
        format!("model.transformer.blocks.{layer}.{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llada_names_are_llada_s_and_dream_keeps_hf_names() {
        let l = ModelFamily::Llada;
        for (ours, theirs) in [
            ("model.embed_tokens.weight", "model.transformer.wte.weight"),
            (
                "model.layers.3.self_attn.o_proj.weight",
                "model.transformer.blocks.3.attn_out.weight",
            ),
            (
                "model.layers.0.mlp.gate_proj.weight",
                "model.transformer.blocks.0.ff_proj.weight",
            ),
            (
                "model.layers.12.mlp.down_proj.weight",
                "model.transformer.blocks.12.ff_out.weight",
            ),
            (
                "model.layers.1.input_layernorm.weight",
                "model.transformer.blocks.1.attn_norm.weight",
            ),
            ("model.norm.weight", "model.transformer.ln_f.weight"),
            ("lm_head.weight", "model.transformer.ff_out.weight"),
        ] {
            assert_eq!(l.checkpoint_key(ours), theirs);
            assert_eq!(ModelFamily::Dream.checkpoint_key(ours), ours);
        }
        assert_eq!(l.logit_shift(), 0);
        assert_eq!(ModelFamily::Dream.logit_shift(), 1);
    }

    /// The string LLaDA-8B-Instruct's `chat_template` renders for a system and a user message
    /// (tokenizer_config.json: bos before the first message, contents trimmed, and the
    /// assistant header always appended).
    #[test]
    fn llada_chat_prompt_is_llada_s_template() {
        let want =
            "<|startoftext|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
                    <|start_header_id|>user<|end_header_id|>\n\nWrite add(a, b).<|eot_id|>\
                    <|start_header_id|>assistant<|end_header_id|>\n\n";
        assert_eq!(
            ModelFamily::Llada.chat_prompt("Be brief.", " Write add(a, b).\n", None),
            want
        );
        let no_system = "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>\
                         <|start_header_id|>assistant<|end_header_id|>\n\n```python\n";
        assert_eq!(
            ModelFamily::Llada.chat_prompt("", "hi", Some("```python\n")),
            no_system
        );
        let t = ModelFamily::Llada.special_tokens();
        assert_eq!(t.mask, ("<|mdm_mask|>".to_string(), 126_336));
        assert_eq!(t.eos, ("<|endoftext|>".to_string(), 126_081));
        assert_eq!(t.im_end, ("<|eot_id|>".to_string(), 126_348));
    }
}
