//! The training configuration: one TOML file with nested sections, every field defaulted and
//! documented, `--set section.key=value` overrides, and the resolved file saved in the run
//! directory.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::advantage::Baseline;
use super::loss::LossConfig;
use super::optimizer::OptimizerConfig;
use crate::estimator::EstimatorConfig;
use crate::model::LoraConfig;
use crate::reward::RewardWeights;
use crate::rollout::RolloutConfig;
use crate::{Error, Result};

/// The whole training configuration (`coupled-grpo train --config FILE`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub model: ModelSection,
    /// LoRA adapters (`r = 0`: full fine-tuning).
    pub lora: LoraConfig,
    pub tokenizer: TokenizerSection,
    pub data: DataSection,
    /// Rollout sampler settings ([`RolloutConfig`]; `seed` is the base of per-round seeds).
    /// Unlike the sampler's own default, `truncate_text` defaults to `false` here: the
    /// released RL code decodes all K tokens, so a well-formed answer's text ends with the
    /// newline after `<|im_end|>` that the format regex requires.
    #[serde(default = "default_rollout", deserialize_with = "deserialize_rollout")]
    pub rollout: RolloutConfig,
    pub estimator: EstimatorConfig,
    pub reward: RewardSection,
    pub sandbox: SandboxSection,
    pub optimizer: OptimizerConfig,
    pub grpo: GrpoSection,
    pub logging: LoggingSection,
    pub checkpoint: CheckpointSection,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model: Default::default(),
            lora: Default::default(),
            tokenizer: Default::default(),
            data: Default::default(),
            rollout: default_rollout(),
            estimator: Default::default(),
            reward: Default::default(),
            sandbox: Default::default(),
            optimizer: Default::default(),
            grpo: Default::default(),
            logging: Default::default(),
            checkpoint: Default::default(),
        }
    }
}

fn default_rollout() -> RolloutConfig {
    RolloutConfig {
        truncate_text: false,
        ..Default::default()
    }
}

/// `[rollout]` with the training default `truncate_text = false` for an absent key.
fn deserialize_rollout<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<RolloutConfig, D::Error> {
    let mut table = toml::Table::deserialize(d)?;
    table
        .entry("truncate_text")
        .or_insert(toml::Value::Boolean(false));
    toml::Value::Table(table)
        .try_into()
        .map_err(serde::de::Error::custom)
}

/// `[model]`: the policy to train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// HF model directory (config.json + safetensors), e.g. from `coupled-grpo model init`.
    pub path: PathBuf,
    /// Parameter dtype: `f32` or `bf16` (scores and the loss are always f32).
    pub dtype: String,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            path: PathBuf::from("runs/tiny-model"),
            dtype: "f32".into(),
        }
    }
}

/// `[tokenizer]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TokenizerSection {
    /// tokenizer.json (or .json.gz); empty = `<model.path>/tokenizer.json`.
    pub path: Option<PathBuf>,
}

/// `[data]`: training tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    /// JSONL (or parquet for AceCoder) file; not read for `synthetic`.
    pub path: PathBuf,
    /// `mbpp` | `acecoder` | `humaneval` | `synthetic` (the generated toy domain).
    pub format: String,
    /// MBPP split (`train`, `test`, `validation`, `prompt`, `all`); for `synthetic`, `train`
    /// or `heldout`.
    pub split: String,
    /// Keep only the first N tasks (0 = all; `synthetic` then draws 2000 distinct problems).
    pub limit: usize,
    /// AceCoder: keep only the hard subset (spec §1.11, the released filter).
    pub hard: bool,
    /// `synthetic`: seed of the task generator.
    pub seed: u64,
    /// Shuffle the task order each epoch (seeded by `grpo.seed` and the epoch).
    pub shuffle: bool,
    /// System message of the chat prompt.
    pub system_prompt: String,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            path: PathBuf::from("assets/data/mbpp/mbpp.jsonl"),
            format: "mbpp".into(),
            split: "train".into(),
            limit: 0,
            hard: false,
            seed: 0,
            shuffle: true,
            system_prompt: crate::data::prompt::SYSTEM_PROMPT.into(),
        }
    }
}

/// `[reward]`: the released `2.0 · code + 0.5 · format`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RewardSection {
    /// Component weights (`code`, `format`).
    pub weights: RewardWeights,
}

/// `[sandbox]`: where completions' code runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxSection {
    /// `wasm` (CPython in wasmtime, default) | `process` (native forkserver; needs root).
    pub executor: String,
    /// Worker threads; 0 = one per core.
    pub workers: usize,
    /// Per-test timeout, seconds (released: 5).
    pub test_timeout_secs: f64,
    /// Memory cap per program, MiB.
    pub memory_mib: u64,
}

impl Default for SandboxSection {
    fn default() -> Self {
        Self {
            executor: "wasm".into(),
            workers: 0,
            test_timeout_secs: 5.0,
            memory_mib: 512,
        }
    }
}

/// `[grpo]`: the RL loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpoSection {
    /// Rollout rounds to train for (`--max-steps` overrides).
    pub max_steps: u64,
    /// Prompts per rollout round; rows = prompts × `rollout.num_completions`.
    pub prompts_per_step: usize,
    /// μ: optimizer steps per rollout round (iteration j = one pass over all chunks).
    pub num_iterations: usize,
    /// Chunks per optimizer step; each chunk's loss is a token mean, averaged over chunks.
    pub gradient_accumulation_steps: usize,
    /// Rows per forward/backward (memory knob; 0 = a whole chunk). Does not change the math.
    pub micro_batch_rows: usize,
    /// PPO clip, lower side (ratio ≥ 1 − ε_low).
    pub epsilon_low: f32,
    /// PPO clip, upper side (ratio ≤ 1 + ε_high).
    pub epsilon_high: f32,
    /// KL coefficient β; 0 keeps no reference model.
    pub beta: f32,
    /// `leave_one_out` (released) | `group_mean`.
    pub baseline: Baseline,
    /// Divide advantages by the group std (+1e-4).
    pub scale_rewards: bool,
    /// Soft-sync the reference every `ref_sync_steps` optimizer steps (TRL `sync_ref_model`).
    pub sync_ref_model: bool,
    pub ref_sync_steps: u64,
    /// TR-DPO mix-up α: `θ_ref ← α·θ + (1−α)·θ_ref`.
    pub ref_sync_alpha: f64,
    /// Seed of every keyed RNG (task order, mask draws; rollouts use `rollout.seed`).
    pub seed: u64,
}

impl Default for GrpoSection {
    fn default() -> Self {
        Self {
            max_steps: 100,
            prompts_per_step: 8,
            num_iterations: 2,
            gradient_accumulation_steps: 2,
            micro_batch_rows: 0,
            epsilon_low: 0.5,
            epsilon_high: 0.5,
            beta: 0.01,
            baseline: Baseline::LeaveOneOut,
            scale_rewards: false,
            sync_ref_model: true,
            ref_sync_steps: 64,
            ref_sync_alpha: 0.6,
            seed: 42,
        }
    }
}

impl GrpoSection {
    /// The loss hyper-parameters.
    pub fn loss(&self) -> LossConfig {
        LossConfig {
            epsilon_low: self.epsilon_low,
            epsilon_high: self.epsilon_high,
            beta: self.beta,
        }
    }
}

/// `[logging]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingSection {
    /// Metrics file inside the run directory.
    pub metrics_file: String,
    /// Draw the progress bar on stderr.
    pub progress: bool,
    /// Log sample completions every N rounds (0 = never) to `completions.jsonl`.
    pub completions_every: u64,
    /// How many completions to log each time.
    pub completions_count: usize,
}

impl Default for LoggingSection {
    fn default() -> Self {
        Self {
            metrics_file: "metrics.jsonl".into(),
            progress: true,
            completions_every: 10,
            completions_count: 2,
        }
    }
}

/// `[checkpoint]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointSection {
    /// Save every N rounds (0 = only at the end).
    pub every: u64,
    /// Keep the newest N checkpoints (0 = all).
    pub keep_last: usize,
    /// Save after the last round.
    pub save_final: bool,
}

impl Default for CheckpointSection {
    fn default() -> Self {
        Self {
            every: 50,
            keep_last: 3,
            save_final: true,
        }
    }
}

impl TrainConfig {
    /// Read a TOML file and apply `overrides` (`section.key=value`; the value is parsed as a
    /// TOML literal, else taken as a string).
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml_str(&text, overrides, Some(path))
    }

    /// Parse TOML text with overrides; `source` only names the file in errors.
    pub fn from_toml_str(text: &str, overrides: &[String], source: Option<&Path>) -> Result<Self> {
        let err = |field: String, message: String| Error::Config {
            source_file: source.map(Path::to_path_buf),
            field,
            message,
        };
        let mut value: toml::Value =
            toml::from_str(text).map_err(|e| err("(file)".into(), e.to_string()))?;
        for item in overrides {
            apply_override(&mut value, item).map_err(|m| err(item.clone(), m))?;
        }
        let config: TrainConfig = value
            .try_into()
            .map_err(|e: toml::de::Error| err("(file)".into(), e.message().to_string()))?;
        config.validate().map_err(|e| match e {
            Error::Config { field, message, .. } => err(field, message),
            other => other,
        })?;
        Ok(config)
    }

    /// Cross-field checks (ranges are also checked where each section is used).
    pub fn validate(&self) -> Result<()> {
        let g = &self.grpo;
        if g.prompts_per_step == 0 {
            return Err(Error::config("grpo.prompts_per_step", "must be positive"));
        }
        if g.num_iterations == 0 {
            return Err(Error::config("grpo.num_iterations", "must be positive"));
        }
        let rows = g.prompts_per_step * self.rollout.num_completions;
        if g.gradient_accumulation_steps == 0 || g.gradient_accumulation_steps > rows {
            return Err(Error::config(
                "grpo.gradient_accumulation_steps",
                format!("must be in 1..={rows} (rows per round)"),
            ));
        }
        if !(g.epsilon_low >= 0.0 && g.epsilon_low < 1.0 && g.epsilon_high >= 0.0) {
            return Err(Error::config(
                "grpo.epsilon_low",
                "need 0 ≤ ε_low < 1 and ε_high ≥ 0",
            ));
        }
        if !(g.beta >= 0.0 && g.beta.is_finite()) {
            return Err(Error::config("grpo.beta", "must be a finite value ≥ 0"));
        }
        if g.sync_ref_model && g.ref_sync_steps == 0 {
            return Err(Error::config(
                "grpo.ref_sync_steps",
                "must be positive when sync_ref_model",
            ));
        }
        if !(0.0..=1.0).contains(&g.ref_sync_alpha) {
            return Err(Error::config("grpo.ref_sync_alpha", "must be in [0, 1]"));
        }
        if !matches!(self.model.dtype.as_str(), "f32" | "bf16") {
            return Err(Error::config(
                "model.dtype",
                format!("`{}` is not f32 or bf16", self.model.dtype),
            ));
        }
        if !matches!(self.sandbox.executor.as_str(), "wasm" | "process") {
            return Err(Error::config(
                "sandbox.executor",
                format!("`{}` is not wasm or process", self.sandbox.executor),
            ));
        }
        if !matches!(
            self.data.format.as_str(),
            "mbpp" | "acecoder" | "humaneval" | "synthetic"
        ) {
            return Err(Error::config(
                "data.format",
                format!(
                    "`{}` is not mbpp, acecoder, humaneval or synthetic",
                    self.data.format
                ),
            ));
        }
        if self.data.hard && self.data.format != "acecoder" {
            return Err(Error::config(
                "data.hard",
                "the hard-subset filter applies to acecoder data only",
            ));
        }
        self.rollout.validate()?;
        self.estimator.build()?;
        self.lora.validate()?;
        Ok(())
    }

    /// The resolved configuration as TOML (every field, defaults filled in).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the config serialises to TOML")
    }

    /// Write `config.resolved.toml` into `dir`.
    pub fn save_resolved(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join("config.resolved.toml");
        crate::util::write_atomic(&path, self.to_toml().as_bytes())?;
        Ok(path)
    }

    /// Optimizer steps over the whole run (`max_steps · μ`).
    pub fn total_optimizer_steps(&self) -> u64 {
        self.grpo.max_steps * self.grpo.num_iterations as u64
    }
}

/// Set `a.b.c = value` in a TOML tree, creating tables on the way.
fn apply_override(root: &mut toml::Value, item: &str) -> std::result::Result<(), String> {
    let (key, raw) = item
        .split_once('=')
        .ok_or_else(|| "an override is `section.key=value`".to_string())?;
    let key = key.trim();
    let parsed = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("bad key `{key}`"));
    }
    let mut node = root;
    for part in &parts[..parts.len() - 1] {
        let table = node
            .as_table_mut()
            .ok_or_else(|| format!("`{part}` is not a table"))?;
        node = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
    let table = node
        .as_table_mut()
        .ok_or_else(|| format!("cannot set `{key}`"))?;
    table.insert(parts[parts.len() - 1].to_string(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_released_settings_and_round_trip() {
        let c = TrainConfig::default();
        assert_eq!(
            (c.grpo.num_iterations, c.grpo.beta, c.grpo.epsilon_low),
            (2, 0.01, 0.5)
        );
        assert_eq!(
            (
                c.optimizer.beta2,
                c.optimizer.weight_decay,
                c.optimizer.max_grad_norm
            ),
            (0.99, 0.1, 0.2)
        );
        assert!(!c.rollout.truncate_text, "training decodes all K tokens");
        let back = TrainConfig::from_toml_str(&c.to_toml(), &[], None).unwrap();
        assert_eq!(back, c);
        let partial = TrainConfig::from_toml_str("[rollout]\nsteps = 8\n", &[], None).unwrap();
        assert!(!partial.rollout.truncate_text);
        assert_eq!(partial.rollout.steps, 8);
    }

    #[test]
    fn overrides_and_unknown_fields() {
        let text = "[grpo]\nbeta = 0.0\n[estimator]\nkind = \"coupled\"\n";
        let c = TrainConfig::from_toml_str(
            text,
            &[
                "grpo.beta=0.02".into(),
                "estimator.kind=d1".into(),
                "model.path=/tmp/m".into(),
                "rollout.top_k=5".into(),
            ],
            None,
        )
        .unwrap();
        assert_eq!(c.grpo.beta, 0.02);
        assert_eq!(c.estimator.kind, crate::estimator::EstimatorKind::D1);
        assert_eq!(c.model.path, PathBuf::from("/tmp/m"));
        assert_eq!(c.rollout.top_k, Some(5));
        let e = TrainConfig::from_toml_str("[grpo]\nbetta = 1\n", &[], None).unwrap_err();
        assert!(e.to_string().contains("betta"), "{e}");
        let e =
            TrainConfig::from_toml_str("", &["grpo.num_iterations=0".into()], None).unwrap_err();
        assert!(e.to_string().contains("num_iterations"), "{e}");
    }

    #[test]
    fn synthetic_data_and_the_hard_filter() {
        let c = TrainConfig::from_toml_str(
            "[data]\nformat = \"synthetic\"\nsplit = \"heldout\"\nlimit = 5\nseed = 3\n",
            &[],
            None,
        )
        .unwrap();
        let tasks = crate::grpo::trainer::load_tasks(&c).unwrap();
        assert_eq!(tasks.len(), 5);
        assert!(tasks.iter().all(|t| {
            let key = crate::data::synthetic::semantic_key(&t.id).unwrap();
            crate::data::synthetic::split_of(key) == crate::data::synthetic::Split::HeldOut
        }));
        let bad = TrainConfig::from_toml_str(
            "[data]\nformat = \"synthetic\"\nsplit = \"test\"\n",
            &[],
            None,
        )
        .unwrap();
        let e = crate::grpo::trainer::load_tasks(&bad).unwrap_err();
        assert!(e.to_string().contains("data.split"), "{e}");
        let e = TrainConfig::from_toml_str("[data]\nformat = \"mbpp\"\nhard = true\n", &[], None)
            .unwrap_err();
        assert!(e.to_string().contains("data.hard"), "{e}");
    }
}
