//! What the trainer trains and keeps as reference, and how both go into a checkpoint: the full
//! model (HF format), or with `lora.r > 0` PEFT adapters over a frozen base.
//!
//! With LoRA the reference policy shares every base weight with the policy:
//! - `grpo.sync_ref_model = false` (d1's recipes): the reference is the base, adapters off.
//! - `grpo.sync_ref_model = true`: the reference carries its own copy of the adapters, which
//!   starts as the policy's initial adapters (B = 0, so again exactly the base) and is soft-synced
//!   parameter by parameter, `A_ref ← α·A + (1−α)·A_ref` and likewise B, every `ref_sync_steps`
//!   (TR-DPO over the trainable parameters, as TRL's callback mixes parameter lists). With
//!   α = 1 (a hard copy) the reference is exactly the policy at the sync; with α < 1 it is the
//!   mix of the factors, not of the products `B·A`. The extra memory is one adapter copy.
//!
//! Checkpoint layout with LoRA (full fine-tuning: see [`super::checkpoint`]):
//! ```text
//! checkpoints/step-N/
//!   adapter_config.json, adapter_model.safetensors      the policy's adapters (PEFT format)
//!   reference/adapter_config.json + adapter_model.safetensors   only with sync_ref_model
//!   tokenizer.json, optimizer.safetensors, trainer_state.json, config.resolved.toml
//! ```
//! The base is read again from `model.path` on resume.

use std::path::Path;

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::DType;

use super::checkpoint::REFERENCE_DIR;
use super::config::TrainConfig;
use super::reference::soft_update;
use crate::model::{self, lora, peft, DiffusionLm, SaveDtype};
use crate::{Error, Result};

/// The parameter dtype `model.dtype` names.
pub fn model_dtype(config: &TrainConfig) -> DType {
    if config.model.dtype == "bf16" {
        DType::BF16
    } else {
        DType::F32
    }
}

/// The policy to train from a loaded model: with LoRA, the base frozen and fresh adapters
/// attached (keyed by `grpo.seed`); a model that already has adapters must match the config.
pub fn prepare_policy<B: Backend>(
    config: &TrainConfig,
    policy: DiffusionLm<B>,
) -> Result<DiffusionLm<B>> {
    match (config.lora.enabled(), lora::has_adapters(&policy)) {
        (true, false) => lora::attach(policy, &config.lora, config.grpo.seed),
        (true, true) | (false, false) => Ok(policy),
        (false, true) => Err(Error::config(
            "lora.r",
            "the policy carries LoRA adapters but lora.r = 0",
        )),
    }
}

/// The reference policy at the start of a run (`None` when β = 0).
pub fn initial_reference<B: AutodiffBackend>(
    config: &TrainConfig,
    policy: &DiffusionLm<B>,
) -> Option<DiffusionLm<B::InnerBackend>> {
    if config.grpo.beta == 0.0 {
        return None;
    }
    let inner = policy.valid();
    Some(if config.lora.enabled() && !config.grpo.sync_ref_model {
        lora::remove(inner)
    } else {
        inner
    })
}

/// TR-DPO's soft sync of `reference` towards `policy` (adapters only with LoRA).
pub fn sync_reference<B: AutodiffBackend>(
    config: &TrainConfig,
    reference: DiffusionLm<B::InnerBackend>,
    policy: &DiffusionLm<B>,
) -> DiffusionLm<B::InnerBackend> {
    let alpha = config.grpo.ref_sync_alpha;
    if config.lora.enabled() {
        lora::soft_update_adapters(reference, &policy.valid(), alpha)
    } else {
        soft_update(reference, &policy.valid(), alpha)
    }
}

/// Whether a checkpoint holds `reference/` for this reference model.
pub fn stores_reference<B: Backend>(
    config: &TrainConfig,
    reference: Option<&DiffusionLm<B>>,
) -> bool {
    match reference {
        None => false,
        Some(r) => !config.lora.enabled() || lora::has_adapters(r),
    }
}

/// Write the policy (and reference, see [`stores_reference`]) into checkpoint directory `dir`.
pub fn save<B: Backend, R: Backend>(
    config: &TrainConfig,
    dir: &Path,
    policy: &DiffusionLm<B>,
    reference: Option<&DiffusionLm<R>>,
) -> Result<()> {
    let stored_reference = reference.filter(|r| stores_reference(config, Some(*r)));
    if config.lora.enabled() {
        let base = Some(config.model.path.display().to_string());
        peft::save_adapter(policy, dir, &config.lora, base.clone())?;
        if let Some(r) = stored_reference {
            peft::save_adapter(r, &dir.join(REFERENCE_DIR), &config.lora, base)?;
        }
        return Ok(());
    }
    let dtype = if policy.dtype() == DType::BF16 {
        SaveDtype::Bf16
    } else {
        SaveDtype::F32
    };
    model::save_pretrained(policy, dir, dtype)?;
    if let Some(r) = stored_reference {
        model::save_pretrained(r, dir.join(REFERENCE_DIR), dtype)?;
    }
    Ok(())
}

/// The policy saved in `checkpoint`: its full weights, or with LoRA the base from
/// `model.path` plus the checkpoint's adapter (which must match `[lora]`).
pub fn load_policy<B: Backend>(
    config: &TrainConfig,
    checkpoint: &Path,
    device: &B::Device,
) -> Result<DiffusionLm<B>> {
    check_kind(config, checkpoint)?;
    let dtype = model_dtype(config);
    if !config.lora.enabled() {
        return model::load_pretrained_with::<B>(checkpoint, device, dtype);
    }
    let base = model::load_pretrained_with::<B>(&config.model.path, device, dtype)?;
    attach_checkpoint_adapter(config, checkpoint, base)
}

/// The policy of `checkpoint` over the current one: its full weights (in the current dtype,
/// whatever `model.dtype` says: in-memory policies), or with LoRA the checkpoint's adapter on
/// `current`'s base (no base reload).
pub fn restore_policy<B: Backend>(
    config: &TrainConfig,
    checkpoint: &Path,
    current: DiffusionLm<B>,
) -> Result<DiffusionLm<B>> {
    check_kind(config, checkpoint)?;
    if config.lora.enabled() {
        return attach_checkpoint_adapter(config, checkpoint, lora::remove(current));
    }
    let device = current.embed_tokens.val().device();
    model::load_pretrained_with::<B>(checkpoint, &device, current.dtype())
}

/// A checkpoint holds PEFT adapters exactly when the config trains LoRA.
fn check_kind(config: &TrainConfig, checkpoint: &Path) -> Result<()> {
    let has_adapter = checkpoint.join(peft::ADAPTER_CONFIG_FILE).exists();
    let message = match (config.lora.enabled(), has_adapter) {
        (false, true) => {
            "holds a LoRA adapter but the config has lora.r = 0; resume with the run's config"
                .to_string()
        }
        (true, false) => format!(
            "holds full weights (no {}) but the config has lora.r = {}",
            peft::ADAPTER_CONFIG_FILE,
            config.lora.r
        ),
        _ => return Ok(()),
    };
    Err(Error::Checkpoint {
        path: checkpoint.to_path_buf(),
        message,
    })
}

/// `base` with the adapter saved in `checkpoint`, which must match `[lora]`.
fn attach_checkpoint_adapter<B: Backend>(
    config: &TrainConfig,
    checkpoint: &Path,
    base: DiffusionLm<B>,
) -> Result<DiffusionLm<B>> {
    let (policy, adapter) = peft::load_adapter(base, checkpoint)?;
    adapter.check_matches(&config.lora, checkpoint)?;
    Ok(policy)
}

/// The reference saved with a checkpoint in `dir` (`stored`: the state's `has_reference`),
/// rebuilt over `policy`'s base with LoRA.
pub fn load_reference<B: AutodiffBackend>(
    config: &TrainConfig,
    dir: &Path,
    stored: bool,
    policy: &DiffusionLm<B>,
) -> Result<Option<DiffusionLm<B::InnerBackend>>> {
    let beta = config.grpo.beta;
    let mismatch = |had: bool| Error::Checkpoint {
        path: dir.to_path_buf(),
        message: format!(
            "the checkpoint {} a reference model but grpo.beta = {beta}",
            if had { "has" } else { "has no" },
        ),
    };
    if beta == 0.0 {
        return if stored {
            Err(mismatch(true))
        } else {
            Ok(None)
        };
    }
    let path = dir.join(REFERENCE_DIR);
    if !config.lora.enabled() {
        if !stored {
            return Err(mismatch(false));
        }
        let device = policy.embed_tokens.val().device();
        return model::load_pretrained_with(path, &device, policy.dtype()).map(Some);
    }
    let base = lora::remove(policy.valid());
    if !stored {
        return Ok(Some(base));
    }
    attach_checkpoint_adapter(config, &path, base).map(Some)
}
