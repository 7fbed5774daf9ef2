//! Rollout settings: Dream's `diffusion_generate` knobs plus our extensions (blocks, threshold).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How masked positions are chosen for unmasking (Dream's `alg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Alg {
    /// Each masked position unmasks independently with probability `1 - s/t`.
    Origin,
    /// Highest probability of the sampled token first (low-confidence remasking).
    MaskgitPlus,
    /// Largest top-1 minus top-2 probability margin first.
    TopkMargin,
    /// Lowest entropy first (confidence = Σ p·log p); DiffuCoder's RL and evaluation setting.
    #[default]
    Entropy,
    /// LLaDA / d1 `low_confidence` remasking: tokens sampled at the temperature (Gumbel-max),
    /// positions ranked by the untempered probability of the sampled token, and each block's
    /// masked positions spread evenly over its steps (d1's `get_num_transfer_tokens`).
    LowConfidence,
    /// LLaDA / d1 `random` remasking: as `low_confidence`, positions chosen at random.
    Random,
}

impl Alg {
    /// Every variant, in the order the CLI lists them.
    pub const ALL: [Alg; 6] = [
        Alg::Origin,
        Alg::MaskgitPlus,
        Alg::TopkMargin,
        Alg::Entropy,
        Alg::LowConfidence,
        Alg::Random,
    ];

    /// Dream's name for the algorithm.
    pub fn name(self) -> &'static str {
        match self {
            Alg::Origin => "origin",
            Alg::MaskgitPlus => "maskgit_plus",
            Alg::TopkMargin => "topk_margin",
            Alg::Entropy => "entropy",
            Alg::LowConfidence => "low_confidence",
            Alg::Random => "random",
        }
    }

    /// LLaDA's even per-block transfer counts instead of Dream's reveal schedule.
    pub fn even_transfer(self) -> bool {
        matches!(self, Alg::LowConfidence | Alg::Random)
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Alg {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Alg::ALL.into_iter().find(|a| a.name() == s).ok_or_else(|| {
            let known: Vec<_> = Alg::ALL.iter().map(|a| a.name()).collect();
            Error::invalid(
                "alg",
                format!("unknown algorithm `{s}` (known: {})", known.join(", ")),
            )
        })
    }
}

/// Which keys and values a rollout reuses between denoising steps (see [`crate::model::kv_cache`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheMode {
    /// Every step is a full forward pass over prompt and completion (exact).
    #[default]
    None,
    /// Fast-dLLM's prefix cache: each step recomputes the current block and everything after
    /// it (the whole completion without blocks); the prompt and finished blocks are reused.
    Prefix,
    /// Fast-dLLM's dual cache with blocks: each step recomputes the current block only. Without
    /// blocks (dLLM-Cache style): each step recomputes the masked positions (and the rows that
    /// score them) and the positions revealed since the previous pass; the prompt and decoded
    /// positions are reused.
    Dual,
}

impl CacheMode {
    /// The config name.
    pub fn name(self) -> &'static str {
        match self {
            CacheMode::None => "none",
            CacheMode::Prefix => "prefix",
            CacheMode::Dual => "dual",
        }
    }
}

impl fmt::Display for CacheMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CacheMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        [CacheMode::None, CacheMode::Prefix, CacheMode::Dual]
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                Error::invalid(
                    "cache",
                    format!("unknown cache `{s}` (known: none, prefix, dual)"),
                )
            })
    }
}

/// Settings of one rollout call. Defaults are DiffuCoder's RL rollouts (256 tokens in 256
/// steps, entropy ordering, top-p 0.95, G = 10) with the paper's temperature 1.2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutConfig {
    /// Completion length K: every completion has exactly this many tokens.
    pub max_new_tokens: usize,
    /// Denoising steps (forward passes, one of which may be a no-op; see `schedule`).
    pub steps: usize,
    /// Softmax temperature; 0 = argmax.
    pub temperature: f32,
    /// Nucleus filter (the top-1 is always kept); `None` or ≥ 1 disables it.
    pub top_p: Option<f32>,
    /// Top-k filter applied after top-p.
    pub top_k: Option<usize>,
    /// Unmasking order.
    pub alg: Alg,
    /// 0 = deterministic per-row top-k of confidence; > 0 = positions sampled without
    /// replacement from softmax(confidence / alg_temp).
    pub alg_temp: f32,
    /// Classifier-free guidance (LLaDA's `cfg_scale`): 0 = off; otherwise every step also
    /// scores the sequence with the whole prompt masked, and the logits are
    /// `uncond + (cfg_scale + 1) · (cond − uncond)`.
    pub cfg_scale: f32,
    /// Final timestep of `linspace(1, eps, steps + 1)`.
    pub eps: f32,
    /// Seed of the dedicated sampler RNG (row r uses ChaCha stream r).
    pub seed: u64,
    /// Completions per prompt (G); rows are grouped contiguously by prompt.
    pub num_completions: usize,
    /// Prompts are left-truncated to their last `max_prompt_length` tokens.
    pub max_prompt_length: usize,
    /// Semi-autoregressive decoding: blocks of this many tokens, left to right, each with
    /// `steps / num_blocks` steps of the same schedule. `None` = one block (Dream).
    pub block_length: Option<usize>,
    /// Parallel decoding: each step also reveals every masked position whose confidence (in
    /// the units of `alg`: a probability for maskgit_plus, a margin for topk_margin, a
    /// negative entropy in nats for entropy) exceeds this, and always at least one per row.
    pub confidence_threshold: Option<f32>,
    /// Parallel decoding: the most tokens one step may reveal per row through the threshold
    /// (a step reveals `max(schedule count, min(#{conf > τ}, cap))`: the schedule's count still
    /// holds, so a block ends in its steps). `None` = no bound. Bounds the over-commitment of
    /// confident steps that d1's author saw destabilise RL; needs `confidence_threshold`.
    pub max_tokens_per_step: Option<usize>,
    /// Early completion: once a row reveals `<|im_end|>`, its still-masked positions after it
    /// are decided as padding at once (they are outside the loss and the reward), and a chunk
    /// stops when every row is decided. The per-row counts are then read back every step.
    pub early_completion: bool,
    /// Keys and values reused between steps.
    pub cache: CacheMode,
    /// With a cache: a full pass (refreshing every key and value) at each block's start and
    /// then every `cache_refresh` passes (1 = every pass: exact); 0 = at block starts only
    /// (Fast-dLLM).
    pub cache_refresh: usize,
    /// Record the decode order (positions and confidences per step) of every row.
    pub record_trace: bool,
    /// Rows decoded together; `None` = all rows at once (DiffuCoder uses chunks of 10).
    pub chunk_rows: Option<usize>,
    /// Cut the decoded text at the first `<|dlm_pad|>`, `<|im_end|>` or `<|endoftext|>`
    /// (inference demo); `false` decodes all K tokens like the released RL code does.
    pub truncate_text: bool,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            steps: 256,
            temperature: 1.2,
            top_p: Some(0.95),
            top_k: None,
            alg: Alg::Entropy,
            alg_temp: 0.0,
            cfg_scale: 0.0,
            eps: 1e-3,
            seed: 42,
            num_completions: 10,
            max_prompt_length: 200,
            block_length: None,
            confidence_threshold: None,
            max_tokens_per_step: None,
            early_completion: false,
            cache: CacheMode::None,
            cache_refresh: 0,
            record_trace: false,
            chunk_rows: None,
            truncate_text: true,
        }
    }
}

impl RolloutConfig {
    /// Check ranges and combinations; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, message: String| Err(Error::config(field, message));
        if self.max_new_tokens == 0 {
            return bad("max_new_tokens", "must be positive".into());
        }
        if self.steps == 0 {
            return bad("steps", "must be positive".into());
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(
                "temperature",
                format!("{} is not a finite value ≥ 0", self.temperature),
            );
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p.is_finite()) {
                return bad("top_p", format!("{p} is not in (0, 1]"));
            }
        }
        if self.top_k == Some(0) {
            return bad("top_k", "must be positive".into());
        }
        if !(self.cfg_scale.is_finite() && self.cfg_scale >= 0.0) {
            return bad(
                "cfg_scale",
                format!("{} is not a finite value ≥ 0", self.cfg_scale),
            );
        }
        if !(self.alg_temp.is_finite() && self.alg_temp >= 0.0) {
            return bad(
                "alg_temp",
                format!("{} is not a finite value ≥ 0", self.alg_temp),
            );
        }
        if !(self.eps > 0.0 && self.eps < 1.0) {
            return bad("eps", format!("{} is not in (0, 1)", self.eps));
        }
        if self.num_completions == 0 {
            return bad("num_completions", "must be positive".into());
        }
        if self.max_prompt_length == 0 {
            return bad("max_prompt_length", "must be positive".into());
        }
        if self.chunk_rows == Some(0) {
            return bad("chunk_rows", "must be positive".into());
        }
        if let Some(b) = self.block_length {
            if b == 0 || !self.max_new_tokens.is_multiple_of(b) {
                return bad(
                    "block_length",
                    format!(
                        "{b} must be positive and divide max_new_tokens {}",
                        self.max_new_tokens
                    ),
                );
            }
            let blocks = self.max_new_tokens / b;
            if !self.steps.is_multiple_of(blocks) {
                return bad(
                    "steps",
                    format!(
                        "{} is not divisible by the number of blocks {blocks}",
                        self.steps
                    ),
                );
            }
        }
        if let Some(tau) = self.confidence_threshold {
            if tau.is_nan() {
                return bad("confidence_threshold", "is NaN".into());
            }
            if self.alg == Alg::Origin {
                return bad(
                    "confidence_threshold",
                    "needs a confidence-ordered alg (maskgit_plus, topk_margin, entropy), not origin".into(),
                );
            }
            if self.alg_temp > 0.0 {
                return bad(
                    "confidence_threshold",
                    "cannot be combined with alg_temp > 0".into(),
                );
            }
            if self.alg == Alg::Random {
                return bad(
                    "confidence_threshold",
                    "needs a confidence-ordered alg, not random".into(),
                );
            }
        }
        if let Some(cap) = self.max_tokens_per_step {
            if cap == 0 {
                return bad("max_tokens_per_step", "must be positive".into());
            }
            if self.confidence_threshold.is_none() {
                return bad(
                    "max_tokens_per_step",
                    "bounds threshold decoding: set confidence_threshold".into(),
                );
            }
        }
        if self.early_completion
            && (matches!(self.alg, Alg::Origin | Alg::Random) || self.alg_temp > 0.0)
        {
            return bad(
                "early_completion",
                "needs a confidence-ordered alg with alg_temp = 0 (the per-row count path)".into(),
            );
        }
        if self.cache != CacheMode::None && self.cfg_scale > 0.0 {
            return bad(
                "cache",
                "cannot be combined with classifier-free guidance (cfg_scale > 0)".into(),
            );
        }
        Ok(())
    }

    /// Whether the decoder tracks per-row counts on the host (threshold decoding, early
    /// completion).
    pub fn per_row_counts(&self) -> bool {
        self.confidence_threshold.is_some() || self.early_completion
    }

    /// Number of blocks (1 without `block_length`).
    pub fn num_blocks(&self) -> usize {
        self.block_length.map_or(1, |b| self.max_new_tokens / b)
    }

    /// Tokens per block.
    pub fn block_len(&self) -> usize {
        self.block_length.unwrap_or(self.max_new_tokens)
    }

    /// Steps per block.
    pub fn steps_per_block(&self) -> usize {
        self.steps / self.num_blocks()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_diffucoder_rl_rollouts() {
        let c = RolloutConfig::default();
        assert_eq!(
            (c.max_new_tokens, c.steps, c.alg, c.top_p),
            (256, 256, Alg::Entropy, Some(0.95))
        );
        assert_eq!(
            (c.temperature, c.alg_temp, c.eps, c.num_completions),
            (1.2, 0.0, 1e-3, 10)
        );
        assert_eq!(c.max_prompt_length, 200);
        c.validate().unwrap();
    }

    #[test]
    fn alg_names_round_trip() {
        for a in Alg::ALL {
            assert_eq!(a.name().parse::<Alg>().unwrap(), a);
            assert_eq!(
                serde_json::to_string(&a).unwrap(),
                format!("\"{}\"", a.name())
            );
        }
        assert!("lowest_confidence"
            .parse::<Alg>()
            .unwrap_err()
            .to_string()
            .contains("entropy"));
    }

    #[test]
    fn invalid_settings_name_the_field() {
        let cases: Vec<(RolloutConfig, &str)> = vec![
            (
                RolloutConfig {
                    steps: 0,
                    ..Default::default()
                },
                "steps",
            ),
            (
                RolloutConfig {
                    top_p: Some(0.0),
                    ..Default::default()
                },
                "top_p",
            ),
            (
                RolloutConfig {
                    temperature: -1.0,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                RolloutConfig {
                    block_length: Some(100),
                    ..Default::default()
                },
                "block_length",
            ),
            (
                RolloutConfig {
                    block_length: Some(64),
                    steps: 250,
                    ..Default::default()
                },
                "steps",
            ),
            (
                RolloutConfig {
                    alg: Alg::Origin,
                    confidence_threshold: Some(0.9),
                    ..Default::default()
                },
                "confidence_threshold",
            ),
            (
                RolloutConfig {
                    eps: 0.0,
                    ..Default::default()
                },
                "eps",
            ),
            (
                RolloutConfig {
                    alg: Alg::Random,
                    confidence_threshold: Some(0.9),
                    ..Default::default()
                },
                "confidence_threshold",
            ),
            (
                RolloutConfig {
                    max_tokens_per_step: Some(4),
                    ..Default::default()
                },
                "max_tokens_per_step",
            ),
            (
                RolloutConfig {
                    confidence_threshold: Some(-0.5),
                    max_tokens_per_step: Some(0),
                    ..Default::default()
                },
                "max_tokens_per_step",
            ),
            (
                RolloutConfig {
                    alg: Alg::Origin,
                    early_completion: true,
                    ..Default::default()
                },
                "early_completion",
            ),
            (
                RolloutConfig {
                    cache: CacheMode::Dual,
                    cfg_scale: 1.0,
                    ..Default::default()
                },
                "cache",
            ),
        ];
        for (c, field) in cases {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
    }

    #[test]
    fn serde_fills_defaults_and_rejects_unknown_fields() {
        let c: RolloutConfig =
            serde_json::from_str(r#"{"steps": 128, "alg": "topk_margin"}"#).unwrap();
        assert_eq!(
            (c.steps, c.alg, c.max_new_tokens),
            (128, Alg::TopkMargin, 256)
        );
        assert!(serde_json::from_str::<RolloutConfig>(r#"{"stepz": 1}"#).is_err());
    }
}
