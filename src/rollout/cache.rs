//! The rollout's key/value cache: which positions a denoising step recomputes, and when it
//! refreshes everything with a full pass (`rollout.cache`, `rollout.cache_refresh`).
//!
//! | mode | blocks | a step recomputes | reused |
//! |---|---|---|---|
//! | `prefix` | any | the current block and all after it | prompt, finished blocks |
//! | `dual` | several | the current block | prompt, finished blocks, later blocks |
//! | `dual` | one | masked positions, the rows scoring them, positions revealed since the last pass | prompt, decoded positions |
//!
//! A full pass runs at each block's start (its logits serve that step, as in Fast-dLLM) and
//! every `cache_refresh` passes after it. Windows are the same positions in every row (the
//! prompts are left-padded to a common end) except the masked-set window, which is per row and
//! needs the completion on the host once per step.

use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};

use super::config::{CacheMode, RolloutConfig};
use super::decoder::ints;
use crate::model::{DiffusionLm, KvCache, Window};
use crate::Result;

/// Work done by a decode's forward passes, for FLOP accounting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeCost {
    /// Forward passes (full or windowed).
    pub forward_passes: usize,
    /// Of which full passes over prompt and completion.
    pub full_passes: usize,
    /// Σ over passes of rows × positions run through the layers.
    pub query_tokens: usize,
    /// Σ over passes of rows × queries × keys (attention score entries per head).
    pub attention_pairs: usize,
    /// Rows sent through the LM head (candidates).
    pub head_rows: usize,
}

impl DecodeCost {
    /// Forward FLOPs of this work on a model of `config` (multiply-adds × 2): the layers'
    /// projections and MLP per position, the attention products per (query, key) pair, the LM
    /// head per candidate row. Norms, RoPE and softmax are left out (a few percent).
    pub fn flops(&self, config: &crate::model::ModelConfig) -> f64 {
        let (d, f, hd) = (
            config.hidden_size,
            config.intermediate_size,
            config.head_dim(),
        );
        let (h, kv) = (config.num_attention_heads, config.kv_heads());
        let per_layer_macs = d * (h + 2 * kv) * hd + h * hd * d + 3 * d * f;
        let layers = config.num_hidden_layers as f64;
        let linear = 2.0 * layers * per_layer_macs as f64 * self.query_tokens as f64;
        let attention = 4.0 * layers * (h * hd) as f64 * self.attention_pairs as f64;
        let head = 2.0 * (d * config.vocab_size) as f64 * self.head_rows as f64;
        linear + attention + head
    }

    /// Add another decode's cost.
    pub fn add(&mut self, other: &DecodeCost) {
        self.forward_passes += other.forward_passes;
        self.full_passes += other.full_passes;
        self.query_tokens += other.query_tokens;
        self.attention_pairs += other.attention_pairs;
        self.head_rows += other.head_rows;
    }
}

/// What the decoder knows of the step being run.
pub(super) struct StepInput<'a, B: Backend> {
    /// `[rows, L]` prompt and completion now.
    pub x: Tensor<B, 2, Int>,
    /// `[rows, L]` attention mask, or `None` (no row padded).
    pub attention: Option<Tensor<B, 2, Int>>,
    /// `[rows, m]` candidate completion positions.
    pub cand: &'a Tensor<B, 2, Int>,
    /// Prompt length P and the family's logit shift.
    pub prompt_len: usize,
    pub shift: usize,
    /// Current block `(index, lo, hi)` in completion positions.
    pub block: (usize, usize, usize),
    pub mask_token: u32,
    /// The completion `[rows · K]` as the decoder last read it, when that copy is current
    /// (early completion reads it every step): spares the masked-set window its own read.
    pub host: Option<&'a [i64]>,
}

/// One step's hidden states and where each candidate's scoring row is in them.
pub(super) struct StepHidden<B: Backend> {
    /// `[rows · w, hidden]`.
    pub hidden: Tensor<B, 2>,
    /// `[rows · m]` rows of `hidden`.
    pub index: Tensor<B, 1, Int>,
}

/// The cache state of one chunk of rows.
pub(super) struct StepCache<B: Backend> {
    mode: CacheMode,
    refresh: usize,
    one_block: bool,
    kv: Option<KvCache<B>>,
    /// Windowed passes since the last full pass.
    since: usize,
    /// Block of the last full pass.
    block: usize,
    /// The completion at the last pass, `[rows · K]` (masked-set windows only).
    seen: Option<Vec<i64>>,
}

impl<B: Backend> StepCache<B> {
    pub fn new(config: &RolloutConfig) -> Self {
        Self {
            mode: config.cache,
            refresh: config.cache_refresh,
            one_block: config.num_blocks() == 1,
            kv: None,
            since: 0,
            block: 0,
            seen: None,
        }
    }

    fn masked_set_windows(&self) -> bool {
        self.mode == CacheMode::Dual && self.one_block
    }

    /// Run the step's forward pass (full or windowed) and locate the candidates' rows.
    pub fn hidden(
        &mut self,
        model: &DiffusionLm<B>,
        step: StepInput<'_, B>,
        cost: &mut DecodeCost,
    ) -> Result<StepHidden<B>> {
        let [rows, l] = step.x.dims();
        cost.forward_passes += 1;
        cost.head_rows += rows * step.cand.dims()[1];
        // The masked-set window needs the completion on the host at every step, full passes
        // included: the decoder's current copy, or one read.
        let read = || ints(step.x.clone().slice([0..rows, step.prompt_len..l]));
        let host = match (self.masked_set_windows(), step.host) {
            (false, _) => None,
            (true, Some(ids)) => {
                debug_assert_eq!(ids, read()?);
                Some(ids.to_vec())
            }
            (true, None) => Some(read()?),
        };
        let full = self.mode == CacheMode::None
            || self.kv.is_none()
            || self.block != step.block.0
            || (self.refresh > 0 && self.since + 1 >= self.refresh);
        match full {
            true => Ok(self.full_pass(model, step, host, cost)),
            false => self.window_pass(model, step, host, cost),
        }
    }

    /// A full pass; with a cache mode it rebuilds the cache.
    fn full_pass(
        &mut self,
        model: &DiffusionLm<B>,
        step: StepInput<'_, B>,
        host: Option<Vec<i64>>,
        cost: &mut DecodeCost,
    ) -> StepHidden<B> {
        let [rows, l] = step.x.dims();
        let device = step.x.device();
        let hidden = if self.mode == CacheMode::None {
            model.forward_hidden(step.x, step.attention)
        } else {
            let (hidden, kv) = model.forward_hidden_caching(step.x, step.attention);
            self.kv = Some(kv);
            hidden
        };
        self.since = 0;
        self.block = step.block.0;
        self.seen = host;
        cost.full_passes += 1;
        cost.query_tokens += rows * l;
        cost.attention_pairs += rows * l * l;
        // Hidden row P − shift + j scores completion position j.
        let first = (step.prompt_len - step.shift) as i64;
        let base = row_base::<B>(rows, l, &device).add_scalar(first);
        flatten(hidden, step.cand.clone() + base)
    }

    /// A pass over this step's window of positions, reading the rest from the cache.
    fn window_pass(
        &mut self,
        model: &DiffusionLm<B>,
        step: StepInput<'_, B>,
        host: Option<Vec<i64>>,
        cost: &mut DecodeCost,
    ) -> Result<StepHidden<B>> {
        let [rows, l] = step.x.dims();
        let device = step.x.device();
        let (window, slot) = match (self.mode, host) {
            (CacheMode::Dual, Some(ids)) => {
                let seen = self.seen.as_deref().unwrap_or(&ids);
                let (window, slot) = masked_set_window(&ids, seen, rows, &step, &device);
                self.seen = Some(ids);
                (window, Slot::PerRow(slot))
            }
            (mode, _) => {
                let (_, lo, hi) = step.block;
                let start = step.prompt_len + lo - step.shift;
                let end = match mode {
                    CacheMode::Dual => step.prompt_len + hi,
                    _ => l,
                };
                (Window::Range(start..end), Slot::Offset(start))
            }
        };
        let w = window.len();
        let ids = match &window {
            Window::Range(r) => step.x.slice([0..rows, r.clone()]),
            Window::Rows { positions, .. } => step.x.gather(1, positions.clone()),
        };
        let kv = self
            .kv
            .as_mut()
            .expect("a full pass runs before any window");
        let hidden = model.forward_hidden_window(ids, &window, kv)?;
        self.since += 1;
        cost.query_tokens += rows * w;
        cost.attention_pairs += rows * w * l;
        let base = row_base::<B>(rows, w, &device);
        let index = match slot {
            // Invalid candidates (fillers of rows with fewer) may lie outside the window: any
            // slot serves them, their logits are discarded.
            Slot::Offset(start) => {
                let first = step.prompt_len as i64 - step.shift as i64 - start as i64;
                step.cand.clone().add_scalar(first).clamp(0, w as i64 - 1) + base
            }
            Slot::PerRow(slot) => slot.gather(1, step.cand.clone()) + base,
        };
        Ok(flatten(hidden, index))
    }
}

/// Where a candidate's scoring row sits in a window.
enum Slot<B: Backend> {
    /// The window starts at this sequence position in every row.
    Offset(usize),
    /// `[rows, K]`: slot of the row scoring completion position j.
    PerRow(Tensor<B, 2, Int>),
}

/// `[rows, 1]`: `r · width`.
fn row_base<B: Backend>(rows: usize, width: usize, device: &B::Device) -> Tensor<B, 2, Int> {
    Tensor::<B, 1, Int>::arange(0..rows as i64, device)
        .mul_scalar(width as i64)
        .unsqueeze_dim::<2>(1)
}

fn flatten<B: Backend>(hidden: Tensor<B, 3>, index: Tensor<B, 2, Int>) -> StepHidden<B> {
    let [rows, w, h] = hidden.dims();
    let m = index.dims()[1];
    StepHidden {
        hidden: hidden.reshape([rows * w, h]),
        index: index.reshape([rows * m]),
    }
}

/// The per-row window of a dual cache without blocks: for every masked completion position j,
/// the position itself and the row scoring it (`P + j − shift`), and every position whose token
/// changed since the last pass (its cached keys and values still see the mask token). Sorted;
/// rows with fewer positions are filled with invalid repeats of their first position.
///
/// Returns the window and `[rows, K]` slots of the scoring rows.
fn masked_set_window<B: Backend>(
    ids: &[i64],
    seen: &[i64],
    rows: usize,
    step: &StepInput<'_, B>,
    device: &B::Device,
) -> (Window<B>, Tensor<B, 2, Int>) {
    let k = ids.len() / rows;
    let (p, shift, mask) = (step.prompt_len, step.shift, step.mask_token as i64);
    let sets: Vec<Vec<usize>> = (0..rows)
        .map(|r| {
            let (now, before) = (&ids[r * k..(r + 1) * k], &seen[r * k..(r + 1) * k]);
            let mut set = Vec::new();
            for j in 0..k {
                if now[j] == mask {
                    set.push(p + j - shift);
                    set.push(p + j);
                } else if now[j] != before[j] {
                    set.push(p + j);
                }
            }
            set.sort_unstable();
            set.dedup();
            set
        })
        .collect();
    let w = sets.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut positions = Vec::with_capacity(rows * w);
    let mut valid = Vec::with_capacity(rows * w);
    let mut slots = vec![0i64; rows * k];
    for (r, set) in sets.iter().enumerate() {
        // Fillers repeat the row's first position (a decided row: the last prompt token, never
        // padding) and are not written.
        let filler = set.first().copied().unwrap_or(p - 1);
        for i in 0..w {
            positions.push(set.get(i).copied().unwrap_or(filler) as i64);
            valid.push(i < set.len());
        }
        for (i, &pos) in set.iter().enumerate() {
            if pos + shift >= p && pos + shift < p + k {
                slots[r * k + pos + shift - p] = i as i64;
            }
        }
    }
    let window = Window::Rows {
        positions: Tensor::from_data(TensorData::new(positions, [rows, w]), device),
        valid: Tensor::<B, 2, Bool>::from_data(TensorData::new(valid, [rows, w]), device),
    };
    let slots = Tensor::from_data(TensorData::new(slots, [rows, k]), device);
    (window, slots)
}
