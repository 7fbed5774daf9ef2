//! LoRA adapters on the model's linear layers (Hu et al. 2021, PEFT's variant).
//!
//! A targeted projection computes `base(x) + scale · (x·Aᵀ)·Bᵀ` as two thin products: ΔW is
//! never materialised except by [`merge`]. The adapters are f32 whatever the base dtype, the
//! base is frozen (no gradients, no optimizer state, no f32 copy), and removing the adapters
//! ([`remove`]) gives the base model back without copying a weight, which is how the trainer
//! gets its reference policy. Files in PEFT's format are read and written by [`super::peft`].
//!
//! Initialisation follows PEFT's `init_lora_weights=True`: A kaiming-uniform with `a = √5`
//! (uniform in `±1/√in`), B zero, so an adapted model starts equal to its base.

use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, DType, Distribution, Tensor, TensorData};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::linear::Linear;
use super::transformer::DiffusionLm;
use crate::estimator::masks::keyed_rng;
use crate::{Error, Result};

/// PEFT's usual targets for Qwen2 / LLaMA blocks: every projection of attention and MLP.
pub const DEFAULT_TARGET_MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// The output projection, adaptable besides [`DEFAULT_TARGET_MODULES`] when untied.
pub const LM_HEAD: &str = "lm_head";

/// Whether an adapter can target the linear layers named `name` (the last part of the HF key).
pub fn is_adaptable(name: &str) -> bool {
    name == LM_HEAD || DEFAULT_TARGET_MODULES.contains(&name)
}

/// Key domain of the adapters' initial draws.
const LORA_INIT_DOMAIN: u64 = 0x6c6f_7261_5f69_6e69; // "lora_ini"

/// `[lora]`: low-rank adapters instead of full fine-tuning (PEFT's `LoraConfig` names, with
/// `alpha` and `dropout` for `lora_alpha` and `lora_dropout`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank of the adapters; 0 = full fine-tuning (no adapters).
    pub r: usize,
    /// `lora_alpha`: the update is scaled by `alpha / r` (or `alpha / √r` with `use_rslora`).
    pub alpha: f64,
    /// `lora_dropout` on the adapter's input, in training forwards only. The masks come from the
    /// backend's RNG, which the trainer seeds per (round, iteration) so that a resumed run draws
    /// the same ones; it is process-wide, so two trainers using dropout in one process (threads)
    /// interleave their draws and lose that exactness.
    pub dropout: f64,
    /// Module names to adapt: the projections of [`DEFAULT_TARGET_MODULES`] and `lm_head`.
    pub target_modules: Vec<String>,
    /// Rank-stabilised scaling `alpha / √r` (Kalajdzievski 2023).
    pub use_rslora: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 0,
            alpha: 8.0,
            dropout: 0.0,
            target_modules: DEFAULT_TARGET_MODULES.map(String::from).to_vec(),
            use_rslora: false,
        }
    }
}

impl LoraConfig {
    /// True when adapters are trained (`r > 0`).
    pub fn enabled(&self) -> bool {
        self.r > 0
    }

    /// The factor of `B·A` in the forward.
    pub fn scale(&self) -> f64 {
        lora_scale(self.alpha, self.r, self.use_rslora)
    }

    /// Ranges and module names, errors naming the `lora.*` field.
    pub fn validate(&self) -> Result<()> {
        if !self.enabled() {
            return Ok(());
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(Error::config("lora.alpha", "must be a finite value > 0"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::config("lora.dropout", "must be in [0, 1)"));
        }
        if self.target_modules.is_empty() {
            return Err(Error::config("lora.target_modules", "names no module"));
        }
        check_target_modules(&self.target_modules)
            .map_err(|m| Error::config("lora.target_modules", m))
    }
}

/// `alpha / r`, or `alpha / √r` when rank-stabilised.
pub fn lora_scale(alpha: f64, r: usize, use_rslora: bool) -> f64 {
    if use_rslora {
        alpha / (r as f64).sqrt()
    } else {
        alpha / r as f64
    }
}

/// Every name must be [`is_adaptable`].
pub(crate) fn check_target_modules(names: &[String]) -> std::result::Result<(), String> {
    match names.iter().find(|n| !is_adaptable(n)) {
        Some(bad) => Err(format!(
            "unknown module `{bad}` (adaptable: {})",
            DEFAULT_TARGET_MODULES.join(", ") + ", " + LM_HEAD
        )),
        None => Ok(()),
    }
}

/// One adapter: `scale · B(A(dropout(x)))`, in f32.
#[derive(Module, Debug)]
pub struct LoraAdapter<B: Backend> {
    /// `lora_A`, kept as `[in, r]` (contiguous for the product; PEFT stores `[r, in]`).
    pub lora_a: Param<Tensor<B, 2>>,
    /// `lora_B`, kept as `[r, out]` (PEFT stores `[out, r]`).
    pub lora_b: Param<Tensor<B, 2>>,
    pub scale: f64,
    pub dropout: f64,
}

impl<B: Backend> LoraAdapter<B> {
    /// From PEFT-oriented host values: `a` `[r, in]`, `b` `[out, r]`.
    pub fn from_peft(
        a: Vec<f32>,
        b: Vec<f32>,
        [r, d_in, d_out]: [usize; 3],
        scale: f64,
        dropout: f64,
        device: &B::Device,
    ) -> Self {
        let a = Tensor::<B, 2>::from_data(TensorData::new(a, [r, d_in]), device).transpose();
        let b = Tensor::<B, 2>::from_data(TensorData::new(b, [d_out, r]), device).transpose();
        // Materialise the transposes once (contiguous operands for every forward).
        let contiguous =
            |t: Tensor<B, 2>| Tensor::<B, 2>::from_data(t.into_data(), device).require_grad();
        Self {
            lora_a: Param::from_tensor(contiguous(a)),
            lora_b: Param::from_tensor(contiguous(b)),
            scale,
            dropout,
        }
    }

    /// The rank `r`.
    pub fn rank(&self) -> usize {
        self.lora_a.val().dims()[1]
    }

    /// `lora_A.weight` `[r, in]` and `lora_B.weight` `[out, r]` (PEFT orientation), f32.
    pub fn peft_tensors(&self) -> (Tensor<B, 2>, Tensor<B, 2>) {
        (self.lora_a.val().transpose(), self.lora_b.val().transpose())
    }

    /// The adapter's contribution, in `x`'s dtype.
    ///
    /// # Shapes
    /// - x: `[..., in]` → `[..., out]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = x.dtype();
        let mut x = if dtype == DType::F32 {
            x
        } else {
            x.cast(DType::F32)
        };
        // Training forwards only, like torch's Dropout in train mode (π_old/π_ref score on the
        // inner backend, where `ad_enabled` is false).
        if self.dropout > 0.0 && B::ad_enabled(&x.device()) {
            let keep = 1.0 - self.dropout;
            x = x.clone() * x.random_like(Distribution::Bernoulli(keep)) / keep;
        }
        let h = crate::cpu::ops::linear(x, self.lora_a.val(), None) * self.scale;
        let out = crate::cpu::ops::linear(h, self.lora_b.val(), None);
        if dtype == DType::F32 {
            out
        } else {
            out.cast(dtype)
        }
    }

    /// `scale · (B·A)` in the base weight's memory layout `[in, out]`, f32.
    pub fn delta_weight(&self) -> Tensor<B, 2> {
        self.lora_a.val().matmul(self.lora_b.val()) * self.scale
    }
}

/// The linear layers of a model with their module paths (the HF key without `.weight`), in
/// parameter visit order, `lm_head` only when untied: one list for both borrows (`$($mut)?`
/// is empty for shared references, `mut` for exclusive ones).
macro_rules! linear_layers {
    ($model:expr $(, $mut:tt)?) => {{
        let model = $model;
        let mut out = Vec::new();
        for (i, layer) in (& $($mut)? model.layers).into_iter().enumerate() {
            let (a, m) = (& $($mut)? layer.self_attn, & $($mut)? layer.mlp);
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.self_attn.q_proj"), & $($mut)? a.q_proj));
            out.push((format!("{p}.self_attn.k_proj"), & $($mut)? a.k_proj));
            out.push((format!("{p}.self_attn.v_proj"), & $($mut)? a.v_proj));
            out.push((format!("{p}.self_attn.o_proj"), & $($mut)? a.o_proj));
            out.push((format!("{p}.mlp.gate_proj"), & $($mut)? m.gate_proj));
            out.push((format!("{p}.mlp.up_proj"), & $($mut)? m.up_proj));
            out.push((format!("{p}.mlp.down_proj"), & $($mut)? m.down_proj));
        }
        if let Some(head) = & $($mut)? model.lm_head {
            out.push((LM_HEAD.to_string(), head));
        }
        out
    }};
}

/// Every linear layer of `model` with its module path (the HF key without `.weight`), in
/// parameter visit order; `lm_head` only when untied.
pub fn linears<B: Backend>(model: &DiffusionLm<B>) -> Vec<(String, &Linear<B>)> {
    linear_layers!(model)
}

/// [`linears`], mutable.
pub fn linears_mut<B: Backend>(model: &mut DiffusionLm<B>) -> Vec<(String, &mut Linear<B>)> {
    linear_layers!(model, mut)
}

/// The module name of a path (`model.layers.3.mlp.up_proj` → `up_proj`).
pub fn module_name(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}

/// True when some linear layer carries an adapter.
pub fn has_adapters<B: Backend>(model: &DiffusionLm<B>) -> bool {
    linears(model).iter().any(|(_, l)| l.lora.is_some())
}

/// The base model: every adapter removed. Weights are shared with `model`, not copied.
pub fn remove<B: Backend>(mut model: DiffusionLm<B>) -> DiffusionLm<B> {
    for (_, linear) in linears_mut(&mut model) {
        linear.lora = None;
    }
    model
}

/// Freeze every base parameter and attach fresh adapters (PEFT's initialisation, drawn from a
/// host RNG keyed by `seed` and the layer, so every backend starts from the same adapters).
///
/// Errors: `config` disabled or invalid, a target module the model does not have (`lm_head`
/// of a tied model), or a model that already carries adapters.
pub fn attach<B: Backend>(
    model: DiffusionLm<B>,
    config: &LoraConfig,
    seed: u64,
) -> Result<DiffusionLm<B>> {
    config.validate()?;
    if !config.enabled() {
        return Err(Error::config("lora.r", "adapters need r > 0"));
    }
    if has_adapters(&model) {
        return Err(Error::invalid("model", "already carries LoRA adapters"));
    }
    let mut model = model.no_grad();
    let device = model.embed_tokens.val().device();
    let mut matched = std::collections::BTreeSet::new();
    for (index, (path, linear)) in linears_mut(&mut model).into_iter().enumerate() {
        let name = module_name(&path);
        if !config.target_modules.iter().any(|t| t == name) {
            continue;
        }
        matched.insert(name.to_string());
        let [d_in, d_out] = linear.weight.val().dims();
        let mut rng = keyed_rng([seed, index as u64, 0, LORA_INIT_DOMAIN], 0);
        let bound = 1.0 / (d_in as f32).sqrt();
        let a = (0..config.r * d_in)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        let b = vec![0.0; d_out * config.r];
        linear.lora = Some(LoraAdapter::from_peft(
            a,
            b,
            [config.r, d_in, d_out],
            config.scale(),
            config.dropout,
            &device,
        ));
    }
    if let Some(missing) = config.target_modules.iter().find(|t| !matched.contains(*t)) {
        return Err(Error::config(
            "lora.target_modules",
            format!("the model has no `{missing}` layer (a tied lm_head cannot be adapted)"),
        ));
    }
    Ok(model)
}

/// `W + scale·B·A` into every adapted layer's weight, adapters removed: a plain model with the
/// adapted model's outputs (the base dtype is kept).
pub fn merge<B: Backend>(mut model: DiffusionLm<B>) -> DiffusionLm<B> {
    for (_, linear) in linears_mut(&mut model) {
        if let Some(adapter) = linear.lora.take() {
            let delta = adapter.delta_weight();
            let weight = linear.weight.val();
            let merged = (weight.clone().cast(DType::F32) + delta).cast(weight.dtype());
            linear.weight = Param::from_tensor(merged.detach()).set_require_grad(false);
        }
    }
    model
}

/// `reference ← α·policy + (1−α)·reference` over the adapters only (TR-DPO's soft sync on the
/// trainable parameters; the shared base is untouched). Layers are matched by path.
pub fn soft_update_adapters<B: Backend>(
    mut reference: DiffusionLm<B>,
    policy: &DiffusionLm<B>,
    alpha: f64,
) -> DiffusionLm<B> {
    let sources = linears(policy);
    for ((_, target), (_, source)) in linears_mut(&mut reference).into_iter().zip(sources) {
        let (Some(r), Some(p)) = (target.lora.as_mut(), source.lora.as_ref()) else {
            continue;
        };
        let mix = |p: Tensor<B, 2>, r: Tensor<B, 2>| (p * alpha + r * (1.0 - alpha)).detach();
        r.lora_a = Param::from_tensor(mix(p.lora_a.val(), r.lora_a.val()));
        r.lora_b = Param::from_tensor(mix(p.lora_b.val(), r.lora_b.val()));
    }
    reference
}

/// Trainable (adapter) parameters and their count of layers.
pub fn adapter_parameters<B: Backend>(model: &DiffusionLm<B>) -> (usize, usize) {
    linears(model)
        .iter()
        .filter_map(|(_, l)| l.lora.as_ref())
        .fold((0, 0), |(n, layers), a| {
            let [d_in, r] = a.lora_a.val().dims();
            let [_, d_out] = a.lora_b.val().dims();
            (n + r * (d_in + d_out), layers + 1)
        })
}
