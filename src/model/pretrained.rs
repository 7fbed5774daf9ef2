//! HF model directories: load, save, and create complete random ones.
//!
//! A directory is complete when it holds `config.json`, the weights (`model.safetensors` or a
//! sharded `model.safetensors.index.json`) and `tokenizer.json`.

use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, DType, Tensor};

use super::config::ModelConfig;
use super::tokenizer::Tokenizer;
use super::transformer::DiffusionLm;
use super::weights::{Init, SafetensorsSource, SaveDtype, WeightSource};
use crate::{Error, Result};

/// Load an HF model directory (`config.json` + `model.safetensors` or a sharded index) in f32.
pub fn load_pretrained<B: Backend>(
    dir: impl AsRef<Path>,
    device: &B::Device,
) -> Result<DiffusionLm<B>> {
    load_pretrained_with(dir, device, DType::F32)
}

/// Load an HF model directory with parameters in `dtype` (f32 or bf16).
pub fn load_pretrained_with<B: Backend>(
    dir: impl AsRef<Path>,
    device: &B::Device,
    dtype: DType,
) -> Result<DiffusionLm<B>> {
    let dir = dir.as_ref();
    if !dir.is_dir() {
        return Err(Error::io(
            dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, "model directory not found"),
        ));
    }
    let config = ModelConfig::from_file(dir.join("config.json"))?;
    let mut source = SafetensorsSource::<B>::open_dir(dir, device, dtype)?;
    let model = DiffusionLm::from_source(&config, &mut source)?;
    let head = config.family.checkpoint_key("lm_head.weight");
    if config.tie_word_embeddings && source.contains(&head) {
        // Some exporters store the tied head anyway; it must match the embedding's shape.
        let _: Tensor<B, 2> =
            source.tensor(&head, [config.vocab_size, config.hidden_size], Init::Zeros)?;
    }
    source.finish()?;
    Ok(model)
}

/// Save `config.json` and `model.safetensors` (HF keys, `[out, in]` linear weights) into `dir`,
/// each file written atomically. The directory then loads in Hugging Face transformers.
///
/// A model carrying LoRA adapters is refused: save the adapters with
/// [`super::peft::save_adapter`], or fold them in first with [`super::lora::merge`].
pub fn save_pretrained<B: Backend>(
    model: &DiffusionLm<B>,
    dir: impl AsRef<Path>,
    dtype: SaveDtype,
) -> Result<()> {
    let dir = dir.as_ref();
    if super::lora::has_adapters(model) {
        return Err(Error::invalid(
            "model",
            format!(
                "{}: the model carries LoRA adapters; save them with peft::save_adapter or merge them first",
                dir.display()
            ),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut config = model.config().clone();
    config.torch_dtype = Some(
        match dtype {
            SaveDtype::F32 => "float32",
            SaveDtype::Bf16 => "bfloat16",
        }
        .into(),
    );
    let bytes = model.to_sink().to_bytes(dtype)?;
    crate::util::write_atomic(&dir.join("model.safetensors"), &bytes)?;
    config.save(dir.join("config.json"))
}

/// Load `tokenizer.json` from a model directory, with the special tokens the config names.
/// The mask id must agree with `config.json`'s `mask_token_id`.
pub fn load_tokenizer(dir: impl AsRef<Path>, config: &ModelConfig) -> Result<Tokenizer> {
    let path = dir.as_ref().join("tokenizer.json");
    if !path.exists() {
        return Err(Error::io(
            &path,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the model directory has no tokenizer.json",
            ),
        ));
    }
    // Special tokens resolve by content; the family's ids are only used to install missing
    // ones. A small test vocabulary (the byte-level tokenizer) has DiffuCoder's names.
    let tokenizer = Tokenizer::from_file_with(&path, &config.family.special_tokens())
        .or_else(|_| Tokenizer::from_file(&path))?;
    check_tokenizer(&tokenizer, config, &path)?;
    Ok(tokenizer)
}

/// The tokenizer must fit the embedding and agree on the mask token.
pub fn check_tokenizer(tokenizer: &Tokenizer, config: &ModelConfig, path: &Path) -> Result<()> {
    let err = |message: String| Error::Tokenizer {
        path: Some(path.to_path_buf()),
        message,
    };
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(err(format!(
            "{} tokens do not fit the model's vocab_size {}",
            tokenizer.vocab_size(),
            config.vocab_size
        )));
    }
    if let Some(mask) = config.mask_token_id {
        if tokenizer.special().mask != mask {
            return Err(err(format!(
                "<|mask|> is id {} but config.json has mask_token_id {mask}",
                tokenizer.special().mask
            )));
        }
    }
    Ok(())
}

/// Create a complete random model directory: `config.json`, `model.safetensors` (f32) and
/// `tokenizer.json`. Without a tokenizer, a vocabulary large enough for Qwen's (151 669 ids)
/// gets the vendored Qwen tokenizer with DiffuCoder's special tokens, a smaller one the
/// byte-level tokenizer.
pub fn init_directory<B: Backend>(
    config: &ModelConfig,
    out: impl AsRef<Path>,
    tokenizer: Option<Tokenizer>,
    seed: u64,
    device: &B::Device,
) -> Result<PathBuf> {
    let out = out.as_ref();
    let tokenizer = match tokenizer {
        Some(t) => t,
        None if config.vocab_size < QWEN_VOCAB => super::tokenizer::byte_level_tokenizer()?,
        None => Tokenizer::from_file(vendored_qwen_tokenizer())?,
    };
    check_tokenizer(&tokenizer, config, &out.join("tokenizer.json"))?;
    let model = DiffusionLm::<B>::init_with(config, device, seed, DType::F32);
    save_pretrained(&model, out, SaveDtype::F32)?;
    tokenizer.save(out.join("tokenizer.json"))?;
    Ok(out.to_path_buf())
}

/// Ids used by the Qwen tokenizer with DiffuCoder's special tokens (up to `<|dlm_pad|>` 151667).
const QWEN_VOCAB: usize = 151_669;

/// The Qwen tokenizer shipped in `assets/` (same base vocabulary as DiffuCoder).
pub fn vendored_qwen_tokenizer() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/tokenizers/qwen/tokenizer.json.gz")
}

/// Load an HF model directory and, when `adapter` names one, a PEFT LoRA adapter directory on
/// top of it (unmerged: the forward runs the thin adapter products).
pub fn load_with_adapter<B: Backend>(
    dir: impl AsRef<Path>,
    adapter: Option<&Path>,
    device: &B::Device,
    dtype: DType,
) -> Result<DiffusionLm<B>> {
    let model = load_pretrained_with::<B>(dir, device, dtype)?;
    match adapter {
        None => Ok(model),
        Some(adapter) => Ok(super::peft::load_adapter(model, adapter)?.0),
    }
}

/// The storage dtype a directory's `config.json` declares (`torch_dtype`), f32 when absent.
pub fn stored_dtype(config: &ModelConfig) -> SaveDtype {
    match config.torch_dtype.as_deref() {
        Some("bfloat16") => SaveDtype::Bf16,
        _ => SaveDtype::F32,
    }
}
