//! The masked-diffusion transformer (Dream / DiffuCoder and LLaDA, see [`family`]), its HF
//! I/O, LoRA adapters (PEFT format) and its tokenizer.

pub mod attention;
pub mod block;
pub mod config;
pub mod family;
pub mod kv_cache;
pub mod linear;
pub mod llada_config;
pub mod lora;
pub mod mlp;
pub mod norm;
pub mod peft;
pub mod pretrained;
pub mod rope;
pub mod tokenizer;
pub mod transformer;
pub mod weights;

pub use config::{ModelConfig, PRESETS};
pub use family::ModelFamily;
pub use kv_cache::{KvCache, Window};
pub use llada_config::LladaConfig;
pub use lora::{LoraAdapter, LoraConfig};
pub use pretrained::{
    check_tokenizer, init_directory, load_pretrained, load_pretrained_with, load_tokenizer,
    load_with_adapter, save_pretrained, stored_dtype, vendored_qwen_tokenizer,
};
pub use tokenizer::{
    byte_level_specials, byte_level_tokenizer, chat_prompt, left_pad, PromptBatch,
    SpecialTokenConfig, SpecialTokens, Tokenizer, DEFAULT_SYSTEM_PROMPT,
};
pub use transformer::{padding_bias, shift_logits, DiffusionLm};
pub use weights::SaveDtype;
