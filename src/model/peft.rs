//! LoRA adapters in Hugging Face PEFT's on-disk format, so that adapters trained here load
//! with `PeftModel.from_pretrained` and adapters trained with `peft` load here.
//!
//! ```text
//! adapter_config.json        {"peft_type": "LORA", "r": 16, "lora_alpha": 32, "target_modules": [...], ...}
//! adapter_model.safetensors  base_model.model.<module path>.lora_A.weight  [r, in]
//!                            base_model.model.<module path>.lora_B.weight  [out, r]
//! ```
//!
//! Reading also accepts PEFT's adapter-name infix (`lora_A.default.weight`), any of f32 / bf16 /
//! f16, `target_modules` as a list or `"all-linear"`, and `layers_to_transform`. Anything that
//! would change the forward and that we do not implement (DoRA, biases, `fan_in_fan_out`,
//! per-module rank or alpha patterns, `modules_to_save`) is refused with an error naming the
//! field, never ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use burn::module::Module;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::family::ModelFamily;
use super::lora::{self, LoraAdapter, LoraConfig, DEFAULT_TARGET_MODULES};
use super::transformer::DiffusionLm;
use super::weights::{decode_f32, SaveDtype, TensorSink};
use crate::{Error, Result};

pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// PEFT's prefix of every adapter key (`PeftModel.base_model.model` is the wrapped model).
const KEY_PREFIX: &str = "base_model.model.";

/// `target_modules`: PEFT writes a list; a string is `"all-linear"` or a single name here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    List(Vec<String>),
    One(String),
}

/// `adapter_config.json` (the fields that decide the forward; others are ignored on reading).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    pub peft_type: String,
    #[serde(default)]
    pub task_type: Option<String>,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    pub target_modules: TargetModules,
    #[serde(default = "bias_none")]
    pub bias: String,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub inference_mode: bool,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    pub layers_to_transform: Option<serde_json::Value>,
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, serde_json::Value>,
    #[serde(default = "init_true")]
    pub init_lora_weights: serde_json::Value,
    /// Newer PEFT options that change the forward or the adapted set; refused unless unset.
    #[serde(default, skip_serializing)]
    pub lora_bias: bool,
    #[serde(default, skip_serializing)]
    pub exclude_modules: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub layer_replication: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub target_parameters: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub trainable_token_indices: Option<serde_json::Value>,
}

fn bias_none() -> String {
    "none".into()
}

fn init_true() -> serde_json::Value {
    serde_json::Value::Bool(true)
}

impl AdapterConfig {
    /// The config PEFT would write for `lora` on a model named `base` of `family` (whose
    /// checkpoints name the targeted layers).
    pub fn from_lora(lora: &LoraConfig, base: Option<String>, family: ModelFamily) -> Self {
        Self {
            peft_type: "LORA".into(),
            task_type: Some("CAUSAL_LM".into()),
            r: lora.r,
            lora_alpha: lora.alpha,
            lora_dropout: lora.dropout,
            target_modules: TargetModules::List(
                lora.target_modules
                    .iter()
                    .map(|t| family.module_name(t))
                    .collect(),
            ),
            bias: bias_none(),
            fan_in_fan_out: false,
            use_rslora: lora.use_rslora,
            use_dora: false,
            base_model_name_or_path: base,
            inference_mode: true,
            modules_to_save: None,
            layers_to_transform: None,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            init_lora_weights: init_true(),
            lora_bias: false,
            exclude_modules: None,
            layer_replication: None,
            target_parameters: None,
            trainable_token_indices: None,
        }
    }

    /// Read and check `dir/adapter_config.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(ADAPTER_CONFIG_FILE);
        let config: Self = crate::util::read_json(&path)?;
        config.check().map_err(|(field, message)| Error::Config {
            source_file: Some(path),
            field: field.into(),
            message,
        })?;
        Ok(config)
    }

    /// Refuse what we do not implement, naming the field.
    fn check(&self) -> std::result::Result<(), (&'static str, String)> {
        let unsupported = |field, what: &str| Err((field, format!("{what} is not supported")));
        if self.peft_type != "LORA" {
            return Err(("peft_type", format!("`{}` is not LORA", self.peft_type)));
        }
        if self.r == 0 {
            return Err(("r", "must be positive".into()));
        }
        if self.bias != "none" {
            return unsupported("bias", &format!("bias `{}`", self.bias));
        }
        if self.fan_in_fan_out {
            return unsupported("fan_in_fan_out", "fan_in_fan_out (GPT-2 Conv1D layers)");
        }
        if self.use_dora {
            return unsupported("use_dora", "DoRA");
        }
        if !self.rank_pattern.is_empty() {
            return unsupported("rank_pattern", "a per-module rank");
        }
        if !self.alpha_pattern.is_empty() {
            return unsupported("alpha_pattern", "a per-module alpha");
        }
        if self.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
            return unsupported("modules_to_save", "fully trained extra modules");
        }
        if self.lora_bias {
            return unsupported("lora_bias", "a bias on lora_B");
        }
        for (field, value) in [
            ("exclude_modules", &self.exclude_modules),
            ("layer_replication", &self.layer_replication),
            ("target_parameters", &self.target_parameters),
            ("trainable_token_indices", &self.trainable_token_indices),
        ] {
            if value.as_ref().is_some_and(|v| !v.is_null()) {
                return unsupported(field, field);
            }
        }
        self.layers()?;
        // LLaDA's checkpoints name some layers differently (`attn_out` is `o_proj`).
        let internal: Vec<String> = self
            .targets()?
            .iter()
            .map(|t| ModelFamily::Llada.internal_module_name(t))
            .collect();
        lora::check_target_modules(&internal).map_err(|m| ("target_modules", m))
    }

    /// The targeted module names.
    pub fn targets(&self) -> std::result::Result<Vec<String>, (&'static str, String)> {
        match &self.target_modules {
            TargetModules::List(names) => Ok(names.clone()),
            TargetModules::One(s) if s == "all-linear" => {
                Ok(DEFAULT_TARGET_MODULES.map(String::from).to_vec())
            }
            TargetModules::One(s) if lora::is_adaptable(s) => Ok(vec![s.clone()]),
            TargetModules::One(s) => Err((
                "target_modules",
                format!("`{s}`: a regular expression is not supported; list the module names"),
            )),
        }
    }

    /// `layers_to_transform` as layer indices (`None`: every layer).
    fn layers(&self) -> std::result::Result<Option<BTreeSet<usize>>, (&'static str, String)> {
        let bad = || {
            (
                "layers_to_transform",
                "must be a layer index or a list".into(),
            )
        };
        match &self.layers_to_transform {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::Number(n)) => {
                Ok(Some(BTreeSet::from([n.as_u64().ok_or_else(bad)? as usize])))
            }
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|v| v.as_u64().map(|i| i as usize).ok_or_else(bad))
                .collect::<std::result::Result<_, _>>()
                .map(Some),
            Some(_) => Err(bad()),
        }
    }

    /// The equivalent `[lora]` section.
    pub fn to_lora(&self) -> LoraConfig {
        LoraConfig {
            r: self.r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            target_modules: self.targets().unwrap_or_default(),
            use_rslora: self.use_rslora,
        }
    }

    /// An adapter trained under `expected` must have its rank, scaling and targets.
    pub fn check_matches(&self, expected: &LoraConfig, dir: &Path) -> Result<()> {
        let err = |field: &str, message: String| Error::Config {
            source_file: Some(dir.join(ADAPTER_CONFIG_FILE)),
            field: field.into(),
            message,
        };
        let mine = self.to_lora();
        if mine.r != expected.r {
            return Err(err(
                "r",
                format!(
                    "the adapter has rank {}, the config lora.r = {}",
                    mine.r, expected.r
                ),
            ));
        }
        if mine.scale() != expected.scale() {
            return Err(err(
                "lora_alpha",
                format!(
                    "the adapter scales by {} (lora_alpha {}, use_rslora {}), the config by {}",
                    mine.scale(),
                    mine.alpha,
                    mine.use_rslora,
                    expected.scale()
                ),
            ));
        }
        let (a, b): (BTreeSet<_>, BTreeSet<_>) = (
            mine.target_modules.iter().collect(),
            expected.target_modules.iter().collect(),
        );
        if a != b {
            return Err(err(
                "target_modules",
                format!("the adapter targets {a:?}, the config {b:?}"),
            ));
        }
        Ok(())
    }
}

/// PEFT's key of an adapter matrix (`"A"` or `"B"`) of the layer at `path`.
pub fn peft_key(path: &str, matrix: &str) -> String {
    format!("{KEY_PREFIX}{path}.lora_{matrix}.weight")
}

/// Write `adapter_config.json` and `adapter_model.safetensors` (f32) for every adapter of
/// `model`, atomically each. `base` becomes `base_model_name_or_path`.
pub fn save_adapter<B: Backend>(
    model: &DiffusionLm<B>,
    dir: &Path,
    lora: &LoraConfig,
    base: Option<String>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    // Keys and target names as the family's checkpoints name the layers (LLaDA: attn_out, …).
    let family = model.config().family;
    let mut sink = TensorSink::default();
    for (path, linear) in lora::linears(model) {
        if let Some(adapter) = &linear.lora {
            let (a, b) = adapter.peft_tensors();
            sink.put(peft_key(&family.module_path(&path), "A"), a);
            sink.put(peft_key(&family.module_path(&path), "B"), b);
        }
    }
    if sink.keys().next().is_none() {
        return Err(Error::invalid("model", "has no LoRA adapters to save"));
    }
    let bytes = sink.to_bytes(SaveDtype::F32)?;
    crate::util::write_atomic(&dir.join(ADAPTER_WEIGHTS_FILE), &bytes)?;
    let config = AdapterConfig::from_lora(lora, base, family);
    let text = serde_json::to_string_pretty(&config).expect("adapter config serialises");
    crate::util::write_atomic(&dir.join(ADAPTER_CONFIG_FILE), text.as_bytes())
}

/// The adapter files of `dir`, keys normalised (PEFT's `.default` infix dropped).
struct AdapterFile {
    path: std::path::PathBuf,
    /// normalised key → (original key, shape, f32 values)
    tensors: BTreeMap<String, (String, Vec<usize>, Vec<f32>)>,
}

impl AdapterFile {
    fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(ADAPTER_WEIGHTS_FILE);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let st_err = |message: String| Error::Safetensors {
            path: path.clone(),
            message,
        };
        let st =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| st_err(e.to_string()))?;
        let mut tensors = BTreeMap::new();
        for (key, view) in st.tensors() {
            let values =
                decode_f32(view.dtype(), view.data()).map_err(|m| st_err(format!("{key}: {m}")))?;
            let normal = key.replace(".default.weight", ".weight");
            tensors.insert(normal, (key, view.shape().to_vec(), values));
        }
        Ok(Self { path, tensors })
    }

    /// Take the tensor of `key` with exactly `shape`.
    fn take(&mut self, key: &str, shape: [usize; 2]) -> Result<Vec<f32>> {
        let Some((original, found, values)) = self.tensors.remove(key) else {
            return Err(Error::MissingTensor {
                path: self.path.clone(),
                key: key.into(),
                expected: shape.to_vec(),
            });
        };
        if found != shape {
            return Err(Error::TensorShape {
                path: self.path.clone(),
                key: original,
                expected: shape.to_vec(),
                found,
            });
        }
        Ok(values)
    }

    /// Every key must have been taken.
    fn finish(self) -> Result<()> {
        match self.tensors.into_values().next() {
            Some((key, shape, _)) => Err(Error::UnexpectedTensor {
                path: self.path,
                key,
                shape,
            }),
            None => Ok(()),
        }
    }
}

/// The layer index of a module path (`model.layers.3.mlp.up_proj` → 3).
fn layer_index(path: &str) -> Option<usize> {
    path.strip_prefix("model.layers.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Attach the adapter saved in `dir` (PEFT format) to `model`, freezing the base. Under an
/// autodiff backend the adapters are trainable.
///
/// Errors name the file and key: a targeted layer without its tensors, a tensor whose shape
/// does not fit the base (or the config's rank), a tensor for a layer the config does not
/// target or the model does not have, an unknown target module.
pub fn load_adapter<B: Backend>(
    model: DiffusionLm<B>,
    dir: &Path,
) -> Result<(DiffusionLm<B>, AdapterConfig)> {
    let mut config = AdapterConfig::load(dir)?;
    if lora::has_adapters(&model) {
        return Err(Error::invalid("model", "already carries LoRA adapters"));
    }
    // From here on, the model layer's names (the returned config too).
    let family = model.config().family;
    let targets: Vec<String> = config
        .targets()
        .unwrap_or_default()
        .iter()
        .map(|t| family.internal_module_name(t))
        .collect();
    config.target_modules = TargetModules::List(targets.clone());
    let layers = config.layers().unwrap_or_default();
    let lora_cfg = config.to_lora();
    let mut file = AdapterFile::open(dir)?;
    let mut model = model.no_grad();
    let device = model.embed_tokens.val().device();
    let mut matched = BTreeSet::new();
    for (path, linear) in lora::linears_mut(&mut model) {
        let name = lora::module_name(&path);
        let in_layers = match (&layers, layer_index(&path)) {
            (Some(set), Some(i)) => set.contains(&i),
            _ => true,
        };
        if !targets.iter().any(|t| t == name) || !in_layers {
            continue;
        }
        matched.insert(name.to_string());
        let [d_in, d_out] = linear.weight.val().dims();
        let r = config.r;
        let a = file.take(&peft_key(&family.module_path(&path), "A"), [r, d_in])?;
        let b = file.take(&peft_key(&family.module_path(&path), "B"), [d_out, r])?;
        linear.lora = Some(LoraAdapter::from_peft(
            a,
            b,
            [r, d_in, d_out],
            lora_cfg.scale(),
            lora_cfg.dropout,
            &device,
        ));
    }
    if let Some(missing) = targets.iter().find(|t| !matched.contains(*t)) {
        return Err(Error::Config {
            source_file: Some(dir.join(ADAPTER_CONFIG_FILE)),
            field: "target_modules".into(),
            message: format!("the base model has no `{missing}` layer"),
        });
    }
    file.finish()?;
    Ok((model, config))
}
