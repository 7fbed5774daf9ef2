//! Memory plan of a coupled-GRPO update: the bytes one device holds at the peak of an update,
//! by part, for a model shape, precision, LoRA rank, micro-batch and sharding.
//!
//! | part | bytes per device |
//! |---|---|
//! | weights | `P·e` (+ LoRA adapters `A·4`) |
//! | reference | π_ref's copy when β ≠ 0: `P·e` for a full fine-tune, `A·4` under LoRA with `sync_ref_model` (the frozen base is shared; without the sync π_ref is the base itself, 0) |
//! | gradients | `T·e_t` (`T` trainable parameters in their dtype `e_t`; replicated) |
//! | master weights | `T·4 / N` for bf16 parameters with f32 master weights (ZeRO-1 sharded) |
//! | moments | `2·T·4 / N` (AdamW's f32 moments, ZeRO-1 sharded) |
//! | activations | `κ · L · R·V·S · (5d + 2d_kv + 3f) · e` + attention scores `L · R·V · H·S² · s` |
//! | logits | lean: `c·vocab·4` for one chunk of `c` scored rows; full: `R·V·K·vocab·4` kept + a chunk |
//!
//! `P` parameters, `e` bytes per parameter element, `L` layers, `R` micro-batch rows, `V` scoring
//! views per row (coupled: 3), `S` tokens per row, `K` completion tokens, `d`/`f`/`d_kv` the
//! hidden, MLP and key-value widths, `H` heads, `N` devices. `5d + 2d_kv + 3f` counts what the
//! autodiff graph keeps per token and layer (the two norms' inputs, the shared inputs of the q/k/v
//! and gate/up projections, q, k, v, the attention output, gate, up and their product); `κ`
//! ([`ACTIVATION_FACTOR`]) covers the backward's transient gradients and was fitted to measured
//! peaks on the CPU. `s` is 0 on the CPU (the fused attention keeps no scores) and `4 + e` on
//! other backends (f32 softmax output and the probabilities in `e`).

use burn::tensor::DType;

use crate::model::ModelConfig;
use crate::{Error, Result};

/// Measured: peak RSS of `bench grpo-step` on the CPU against the graph count `5d + 2d_kv + 3f`
/// (see the module docs and README's memory table).
pub const ACTIVATION_FACTOR: f64 = 1.0;

/// What one update runs with.
#[derive(Debug, Clone)]
pub struct PlanInput {
    pub model: ModelConfig,
    /// Parameter dtype: f32 or bf16.
    pub dtype: DType,
    /// LoRA rank and targeted projections; `None` = full fine-tune.
    pub lora: Option<(usize, Vec<String>)>,
    /// `R`: rows per forward.
    pub micro_batch_rows: usize,
    /// `S`: prompt + completion tokens per row.
    pub seq: usize,
    /// `K`: completion tokens per row.
    pub completion_len: usize,
    /// `V`: scoring views per row (coupled with the full-mask pass: 3).
    pub views: usize,
    /// `N`: data-parallel devices sharing the optimizer state.
    pub devices: usize,
    /// f32 master weights for bf16 parameters.
    pub master_weights: bool,
    /// β ≠ 0 keeps π_ref.
    pub reference: bool,
    /// Lean scoring (the fused head) rather than the full-logit reference path.
    pub lean_scoring: bool,
    /// The logit chunk cap (`estimator.max_logit_mib`).
    pub max_logit_bytes: usize,
    /// Whether attention keeps its scores for backward (every backend but the CPU's).
    pub attention_scores: bool,
}

/// One line of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Weights,
    Reference,
    Gradients,
    MasterWeights,
    Moments,
    Activations,
    Logits,
}

impl Part {
    pub fn name(self) -> &'static str {
        match self {
            Part::Weights => "weights",
            Part::Reference => "reference (π_ref)",
            Part::Gradients => "gradients",
            Part::MasterWeights => "master weights",
            Part::Moments => "moments",
            Part::Activations => "activations",
            Part::Logits => "logits",
        }
    }
}

/// Bytes per device by part.
#[derive(Debug, Clone)]
pub struct MemoryPlan {
    pub parts: Vec<(Part, u64)>,
    /// Parameters of the model (frozen or not).
    pub parameters: u64,
    /// Parameters the optimizer updates.
    pub trainable: u64,
}

impl MemoryPlan {
    pub fn total(&self) -> u64 {
        self.parts.iter().map(|p| p.1).sum()
    }

    pub fn get(&self, part: Part) -> u64 {
        self.parts.iter().find(|p| p.0 == part).map_or(0, |p| p.1)
    }

    /// Whether the total fits `bytes` of device memory.
    pub fn fits(&self, bytes: u64) -> bool {
        self.total() <= bytes
    }
}

/// LoRA parameters: `r · (in + out)` per targeted projection per layer.
pub fn lora_parameters(model: &ModelConfig, r: usize, targets: &[String]) -> Result<u64> {
    let (d, f) = (model.hidden_size, model.intermediate_size);
    let kv = model.kv_heads() * model.head_dim();
    let mut per_layer = 0;
    for t in targets {
        let (i, o) = match t.as_str() {
            "q_proj" | "o_proj" => (d, d),
            "k_proj" | "v_proj" => (d, kv),
            "gate_proj" | "up_proj" => (d, f),
            "down_proj" => (f, d),
            other => {
                return Err(Error::invalid(
                    "lora targets",
                    format!("unknown projection `{other}`"),
                ))
            }
        };
        per_layer += r * (i + o);
    }
    Ok((per_layer * model.num_hidden_layers) as u64)
}

fn element_bytes(dtype: DType) -> Result<u64> {
    match dtype {
        DType::F32 => Ok(4),
        DType::BF16 | DType::F16 => Ok(2),
        other => Err(Error::invalid(
            "dtype",
            format!("no plan for {other:?} parameters"),
        )),
    }
}

/// The plan of one update (see the module docs for the formulas).
pub fn plan(input: &PlanInput) -> Result<MemoryPlan> {
    let c = &input.model;
    if input.devices == 0 || input.micro_batch_rows == 0 || input.views == 0 {
        return Err(Error::invalid(
            "plan",
            "devices, rows and views must be ≥ 1",
        ));
    }
    if input.completion_len == 0 || input.completion_len >= input.seq {
        return Err(Error::invalid("plan", "need 1 ≤ completion_len < seq"));
    }
    let e = element_bytes(input.dtype)?;
    let n = input.devices as u64;
    let parameters = c.num_parameters() as u64;
    let adapters = match &input.lora {
        Some((r, targets)) => lora_parameters(c, *r, targets)?,
        None => 0,
    };
    let full = input.lora.is_none();
    let (trainable, grad_bytes) = if full { (parameters, e) } else { (adapters, 4) };
    let master = full && e < 4 && input.master_weights;
    let parts = vec![
        (Part::Weights, parameters * e + adapters * 4),
        (
            Part::Reference,
            match (input.reference, full) {
                (false, _) => 0,
                (true, true) => parameters * e,
                (true, false) => adapters * 4,
            },
        ),
        (Part::Gradients, trainable * grad_bytes),
        (
            Part::MasterWeights,
            if master {
                (trainable * 4).div_ceil(n)
            } else {
                0
            },
        ),
        (Part::Moments, (2 * trainable * 4).div_ceil(n)),
        (Part::Activations, activation_bytes(input, e)),
        (Part::Logits, logit_bytes(input)),
    ];
    Ok(MemoryPlan {
        parts,
        parameters,
        trainable,
    })
}

/// What the autodiff graph keeps of the trunk (see the module docs).
fn activation_bytes(input: &PlanInput, e: u64) -> u64 {
    let c = &input.model;
    let (d, f) = (c.hidden_size as f64, c.intermediate_size as f64);
    let kv = (c.kv_heads() * c.head_dim()) as f64;
    let seqs = (input.micro_batch_rows * input.views) as f64;
    let s = input.seq as f64;
    let layers = c.num_hidden_layers as f64;
    let linear = ACTIVATION_FACTOR * layers * seqs * s * (5.0 * d + 2.0 * kv + 3.0 * f) * e as f64;
    let scores = if input.attention_scores {
        layers * seqs * c.num_attention_heads as f64 * s * s * (4 + e) as f64
    } else {
        0.0
    };
    (linear + scores) as u64
}

/// Vocabulary-wide f32 logits alive at the peak.
fn logit_bytes(input: &PlanInput) -> u64 {
    let vocab = input.model.vocab_size as u64;
    let rows = (input.micro_batch_rows * input.views * input.completion_len) as u64;
    let row_bytes = vocab * 4;
    let chunk_rows = (input.max_logit_bytes as u64 / row_bytes).clamp(1, rows);
    let chunk = chunk_rows * row_bytes;
    if input.lean_scoring {
        chunk
    } else {
        rows * row_bytes + chunk
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::lora::DEFAULT_TARGET_MODULES;

    fn input(preset: &str, lora: Option<usize>) -> PlanInput {
        PlanInput {
            model: ModelConfig::preset(preset).unwrap(),
            dtype: DType::BF16,
            lora: lora.map(|r| {
                (
                    r,
                    DEFAULT_TARGET_MODULES
                        .iter()
                        .map(|s| s.to_string())
                        .collect(),
                )
            }),
            micro_batch_rows: 2,
            seq: 512,
            completion_len: 256,
            views: 3,
            devices: 1,
            master_weights: true,
            reference: true,
            lean_scoring: true,
            max_logit_bytes: 256 << 20,
            attention_scores: true,
        }
    }

    #[test]
    fn full_fine_tune_counts_every_parameter_in_every_optimizer_part() {
        let i = input("diffucoder-7b", None);
        let p = plan(&i).unwrap();
        let params = i.model.num_parameters() as u64;
        assert_eq!(p.parameters, params);
        assert_eq!(p.trainable, params);
        assert_eq!(p.get(Part::Weights), 2 * params);
        assert_eq!(p.get(Part::Gradients), 2 * params);
        assert_eq!(p.get(Part::MasterWeights), 4 * params);
        assert_eq!(p.get(Part::Moments), 8 * params);
        // ZeRO-1: only master weights and moments shrink with the devices.
        let p8 = plan(&PlanInput { devices: 8, ..i }).unwrap();
        assert_eq!(p8.get(Part::Weights), 2 * params);
        assert_eq!(p8.get(Part::Gradients), 2 * params);
        assert_eq!(p8.get(Part::Moments), (8 * params).div_ceil(8));
    }

    #[test]
    fn lora_counts_adapters_from_the_projection_shapes() {
        let c = ModelConfig::preset("diffucoder-7b").unwrap();
        let (d, f, kv) = (3584, 18_944, 4 * 128);
        let per_layer = 128 * ((d + d) * 2 + (d + kv) * 2 + (d + f) * 3);
        let targets: Vec<String> = DEFAULT_TARGET_MODULES
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            lora_parameters(&c, 128, &targets).unwrap(),
            (per_layer * 28) as u64
        );
        let p = plan(&input("diffucoder-7b", Some(128))).unwrap();
        let a = p.trainable;
        assert_eq!(a, (per_layer * 28) as u64);
        assert_eq!(p.get(Part::Gradients), 4 * a, "f32 adapter gradients only");
        assert_eq!(p.get(Part::MasterWeights), 0, "adapters are f32 already");
        assert_eq!(p.get(Part::Moments), 8 * a);
        assert_eq!(p.get(Part::Weights), 2 * c.num_parameters() as u64 + 4 * a);
        assert!(lora_parameters(&c, 8, &["lm_head".into()]).is_err());
    }

    #[test]
    fn lean_logits_stay_one_chunk_while_the_full_path_keeps_every_view() {
        let lean = plan(&input("qwen2.5-0.5b", None)).unwrap();
        let full = plan(&PlanInput {
            lean_scoring: false,
            ..input("qwen2.5-0.5b", None)
        })
        .unwrap();
        assert!(lean.get(Part::Logits) <= 256 << 20);
        assert_eq!(
            full.get(Part::Logits) - lean.get(Part::Logits),
            2 * 3 * 256 * 151_936 * 4
        );
    }
}
