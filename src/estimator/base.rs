//! The likelihood-estimator contract and the machinery every estimator shares: building masked
//! views of a batch, one forward pass over all views, and the target log-probs of the positions
//! each view scores.

use std::ops::Range;

use burn::tensor::{backend::Backend, DType, IndexingUpdateOp, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::head::{target_log_probs, HeadWeight};
use super::masks::MaskSeed;
use crate::cpu::ops::log_softmax_gather;
use crate::model::DiffusionLm;
use crate::{Error, Result};

/// Default cap on the f32 logits materialised at once by [`completion_log_probs`] (256 MiB).
pub const DEFAULT_MAX_LOGIT_BYTES: usize = 256 << 20;

/// Sequences to score, on the host: left-padded prompts followed by fixed-length completions.
///
/// `row_index[r]` is row `r`'s index in the rollout batch. It selects the row's mask stream,
/// so a chunk of the batch ([`ScoreBatch::select`]) draws exactly the masks the whole batch
/// would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoreBatch {
    /// `[rows][P]`, left-padded.
    pub prompt_ids: Vec<Vec<u32>>,
    /// `[rows][P]`, 1 = token, 0 = left pad.
    pub prompt_mask: Vec<Vec<u32>>,
    /// `[rows][K]`.
    pub completion_ids: Vec<Vec<u32>>,
    /// `[rows]`: index of each row in the rollout batch.
    pub row_index: Vec<usize>,
}

impl ScoreBatch {
    /// Validate shapes (rectangular, `P ≥ 1`, `K ≥ 1`) and number rows `0..rows`.
    pub fn new(
        prompt_ids: Vec<Vec<u32>>,
        prompt_mask: Vec<Vec<u32>>,
        completion_ids: Vec<Vec<u32>>,
    ) -> Result<Self> {
        let rows = prompt_ids.len();
        let batch = Self {
            prompt_ids,
            prompt_mask,
            completion_ids,
            row_index: (0..rows).collect(),
        };
        batch.validate()?;
        Ok(batch)
    }

    fn validate(&self) -> Result<()> {
        let rows = self.prompt_ids.len();
        if rows == 0 {
            return Err(Error::invalid("batch", "no rows to score"));
        }
        if self.prompt_mask.len() != rows
            || self.completion_ids.len() != rows
            || self.row_index.len() != rows
        {
            return Err(Error::invalid(
                "batch",
                "prompt ids, prompt mask, completions and row index disagree on the number of rows",
            ));
        }
        let (p, k) = (self.prompt_ids[0].len(), self.completion_ids[0].len());
        if p == 0 {
            // Dream's shift scores completion token 0 from the last prompt row.
            return Err(Error::invalid(
                "batch",
                "prompts must hold at least one position",
            ));
        }
        if k == 0 {
            return Err(Error::invalid("batch", "completions are empty"));
        }
        for r in 0..rows {
            if self.prompt_ids[r].len() != p
                || self.prompt_mask[r].len() != p
                || self.completion_ids[r].len() != k
            {
                return Err(Error::invalid(
                    "batch",
                    format!("row {r} is not [{p}] prompt + [{k}] completion"),
                ));
            }
        }
        Ok(())
    }

    pub fn rows(&self) -> usize {
        self.prompt_ids.len()
    }

    /// `P`, the padded prompt length.
    pub fn prompt_len(&self) -> usize {
        self.prompt_ids[0].len()
    }

    /// `K`, the completion length.
    pub fn completion_len(&self) -> usize {
        self.completion_ids[0].len()
    }

    /// `L = P + K`.
    pub fn seq_len(&self) -> usize {
        self.prompt_len() + self.completion_len()
    }

    /// Rows `range` (keeping their rollout-batch indices, hence their masks).
    pub fn select(&self, range: Range<usize>) -> Self {
        Self {
            prompt_ids: self.prompt_ids[range.clone()].to_vec(),
            prompt_mask: self.prompt_mask[range.clone()].to_vec(),
            completion_ids: self.completion_ids[range.clone()].to_vec(),
            row_index: self.row_index[range].to_vec(),
        }
    }

    /// True when some prompt has left padding (then scoring passes the padding mask).
    pub fn has_padding(&self) -> bool {
        self.prompt_mask.iter().any(|m| m.contains(&0))
    }
}

/// Per-token scores of one estimator call.
#[derive(Debug, Clone)]
pub struct Scores<B: Backend> {
    /// `[rows, K]` f32: the estimator's per-token log-likelihood score (not a true
    /// log-probability for the coupled/decoupled estimators; see their docs).
    pub per_token: Tensor<B, 2>,
    /// Sequences forwarded through the model (rows × passes per sequence).
    pub forward_passes: usize,
    /// The mask ratios `t` drawn for this call (one per pair; empty when none is drawn).
    pub ratios: Vec<f32>,
}

/// A likelihood estimator for masked-diffusion policies: given a model, a batch of
/// prompt+completion sequences and a [`MaskSeed`], return a per-token score for every
/// completion position. Only completion tokens are masked (D1 also masks prompt tokens), the
/// model family's logit shift applies (Dream: row `j − 1` scores token `j`; LLaDA: row `j`;
/// see [`crate::model::family`]), and the prompt's padding mask is
/// passed to every forward. Equal seeds give identical masks, so π_old, π_ref and π_θ compare
/// like with like.
pub trait LikelihoodEstimator {
    /// Short name (`coupled`, `decoupled`, `d1`, `full_mask`) for logs and metrics.
    fn name(&self) -> &'static str;

    /// Forward passes per scored sequence.
    fn passes_per_sequence(&self) -> usize;

    /// Score `batch` with `model` under the masks keyed by `seed`.
    ///
    /// # Shapes
    /// - returns [`Scores::per_token`] `[batch.rows(), batch.completion_len()]`
    fn score<B: Backend>(
        &self,
        model: &DiffusionLm<B>,
        batch: &ScoreBatch,
        seed: MaskSeed,
    ) -> Result<Scores<B>>;
}

/// One masked copy of the batch and the weight each completion token's log-prob gets from it.
#[derive(Debug, Clone)]
pub struct View {
    /// `[rows * L]` row-major input ids (mask token written in).
    pub input_ids: Vec<i64>,
    /// `[rows * K]` row-major weights of this view's target log-probs.
    pub weights: Vec<f32>,
}

/// How [`score_views`] computes the target log-probs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoringPath {
    /// The output head and log-softmax run only on the positions some view scores (nonzero
    /// weight), fused so that the autodiff graph keeps no logits ([`target_log_probs`]). A head
    /// with a bias or a LoRA adapter takes the full path.
    #[default]
    Lean,
    /// Every completion position of every view through [`completion_log_probs`]: the graph
    /// keeps `[views · rows, K, vocab]` f32 log-probs. The reference for tests and the memory
    /// benchmark.
    Full,
}

/// Score `views` of `batch` in one forward pass over all views stacked along the batch axis:
/// `score[r, k] = Σ_v weights_v[r, k] · log p_v(y_rk)`.
///
/// # Shapes
/// - each view: `input_ids` `[rows * L]`, `weights` `[rows * K]`
/// - returns `[rows, K]`
pub fn score_views<B: Backend>(
    model: &DiffusionLm<B>,
    batch: &ScoreBatch,
    views: &[View],
    max_logit_bytes: usize,
    path: ScoringPath,
) -> Result<Tensor<B, 2>> {
    let (rows, k) = (batch.rows(), batch.completion_len());
    let nv = views.len();
    if nv == 0 {
        return Err(Error::invalid(
            "views",
            "an estimator needs at least one view",
        ));
    }
    if views
        .iter()
        .any(|v| v.input_ids.len() != rows * batch.seq_len() || v.weights.len() != rows * k)
    {
        return Err(Error::invalid(
            "views",
            "a view does not match the batch shape",
        ));
    }
    let device = model.embed_tokens.val().device();
    let (input, attention) = stacked_inputs::<B>(batch, views, &device);
    Ok(match (path, HeadWeight::of(model)) {
        (ScoringPath::Lean, Some(head)) => score_lean(
            model,
            head,
            batch,
            views,
            (input, attention),
            max_logit_bytes,
        ),
        _ => score_full(model, batch, views, input, attention, max_logit_bytes),
    })
}

/// The views' input ids stacked view-major, and the padding mask when some prompt is padded.
///
/// # Shapes
/// - returns `[views * rows, L]` ids and mask
fn stacked_inputs<B: Backend>(
    batch: &ScoreBatch,
    views: &[View],
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Option<Tensor<B, 2, Int>>) {
    let (l, k) = (batch.seq_len(), batch.completion_len());
    let n = views.len() * batch.rows();
    let ids: Vec<i64> = views
        .iter()
        .flat_map(|v| v.input_ids.iter().copied())
        .collect();
    let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [n, l]), device);
    let attention = batch.has_padding().then(|| {
        let mut mask = Vec::with_capacity(n * l);
        for _ in views {
            for m in &batch.prompt_mask {
                mask.extend(m.iter().map(|&m| m as i64));
                mask.extend(std::iter::repeat_n(1i64, k));
            }
        }
        Tensor::<B, 2, Int>::from_data(TensorData::new(mask, [n, l]), device)
    });
    (input, attention)
}

/// [`ScoringPath::Lean`]: gather the hidden rows of the scored positions, score them with the
/// fused head and add them, weighted, into `[rows, K]`.
fn score_lean<B: Backend>(
    model: &DiffusionLm<B>,
    head: HeadWeight<B>,
    batch: &ScoreBatch,
    views: &[View],
    (input, attention): (Tensor<B, 2, Int>, Option<Tensor<B, 2, Int>>),
    max_logit_bytes: usize,
) -> Tensor<B, 2> {
    let (rows, p, k, l) = (
        batch.rows(),
        batch.prompt_len(),
        batch.completion_len(),
        batch.seq_len(),
    );
    let device = input.device();
    let scored = ScoredPositions::of(batch, views, model.config().family.logit_shift());
    if scored.weights.is_empty() {
        return Tensor::zeros([rows, k], &device);
    }
    let m = scored.weights.len();
    let int = |v: Vec<i64>| Tensor::<B, 1, Int>::from_data(TensorData::new(v, [m]), &device);
    let hidden = model.forward_hidden(input, attention);
    let [n, _, h] = hidden.dims();
    debug_assert!(p >= 1 && n * l > 0);
    let hidden = hidden
        .reshape([n * l, h])
        .select(0, int(scored.hidden_rows)); // [m, h]
    let lp = target_log_probs(hidden, head, int(scored.targets), max_logit_bytes);
    let weights = Tensor::<B, 1>::from_data(TensorData::new(scored.weights, [m]), &device);
    Tensor::<B, 1>::zeros([rows * k], &device)
        .select_assign(0, int(scored.out), lp * weights, IndexingUpdateOp::Add)
        .reshape([rows, k])
}

/// The (view, row, completion token) triples with a nonzero weight, flattened.
struct ScoredPositions {
    /// Row of the stacked `[views · rows · L, hidden]` states that scores the token (position
    /// `P + j − shift` scores completion token `j`; the shift is the model family's).
    hidden_rows: Vec<i64>,
    /// The token's index in the row-major `[rows, K]` output.
    out: Vec<i64>,
    targets: Vec<i64>,
    weights: Vec<f32>,
}

impl ScoredPositions {
    fn of(batch: &ScoreBatch, views: &[View], shift: usize) -> Self {
        let (rows, p, k, l) = (
            batch.rows(),
            batch.prompt_len(),
            batch.completion_len(),
            batch.seq_len(),
        );
        let mut s = Self {
            hidden_rows: Vec::new(),
            out: Vec::new(),
            targets: Vec::new(),
            weights: Vec::new(),
        };
        for (v, view) in views.iter().enumerate() {
            for r in 0..rows {
                for j in 0..k {
                    let w = view.weights[r * k + j];
                    if w != 0.0 {
                        s.hidden_rows
                            .push(((v * rows + r) * l + p - shift + j) as i64);
                        s.out.push((r * k + j) as i64);
                        s.targets.push(batch.completion_ids[r][j] as i64);
                        s.weights.push(w);
                    }
                }
            }
        }
        s
    }
}

/// [`ScoringPath::Full`]: every completion position of every view, then the weighted sum.
fn score_full<B: Backend>(
    model: &DiffusionLm<B>,
    batch: &ScoreBatch,
    views: &[View],
    input: Tensor<B, 2, Int>,
    attention: Option<Tensor<B, 2, Int>>,
    max_logit_bytes: usize,
) -> Tensor<B, 2> {
    let (rows, p, k) = (batch.rows(), batch.prompt_len(), batch.completion_len());
    let nv = views.len();
    let device = input.device();
    let targets: Vec<i64> = (0..nv)
        .flat_map(|_| batch.completion_ids.iter().flatten().map(|&t| t as i64))
        .collect();
    let targets = Tensor::<B, 2, Int>::from_data(TensorData::new(targets, [nv * rows, k]), &device);
    let lp = completion_log_probs(model, input, attention, targets, p, max_logit_bytes); // [n, k]
    let weights: Vec<f32> = views
        .iter()
        .flat_map(|v| v.weights.iter().copied())
        .collect();
    let weights = Tensor::<B, 3>::from_data(TensorData::new(weights, [nv, rows, k]), &device);
    (lp.reshape([nv, rows, k]) * weights)
        .sum_dim(0)
        .reshape([rows, k])
}

/// Log-probability of each completion target under the model, with the family's logit shift
/// (Dream: the hidden state at position `j − 1` scores token `j`), gathered chunk by chunk so
/// that at most
/// `max_logit_bytes` of f32 logits exist at once (a 152k vocabulary would otherwise need
/// gigabytes per micro-batch).
///
/// # Shapes
/// - input_ids: `[n, P + K]`
/// - attention_mask: `[n, P + K]` (1 = token, 0 = left pad) or `None`
/// - targets: `[n, K]`, the completion token ids
/// - returns `[n, K]` f32
pub fn completion_log_probs<B: Backend>(
    model: &DiffusionLm<B>,
    input_ids: Tensor<B, 2, Int>,
    attention_mask: Option<Tensor<B, 2, Int>>,
    targets: Tensor<B, 2, Int>,
    prompt_len: usize,
    max_logit_bytes: usize,
) -> Tensor<B, 2> {
    let [n, k] = targets.dims();
    let shift = model.config().family.logit_shift();
    assert!(
        prompt_len >= shift,
        "the logit shift needs at least one prompt position"
    );
    let hidden = model.forward_hidden(input_ids, attention_mask);
    let [_, _, h] = hidden.dims();
    // Rows P-shift .. P+K-1-shift predict completion tokens P .. P+K-1.
    let first = prompt_len - shift;
    let hidden = hidden.slice([0..n, first..first + k, 0..h]);
    let vocab = model.config().vocab_size;
    let per_row = k * vocab * std::mem::size_of::<f32>();
    let chunk = (max_logit_bytes / per_row.max(1)).clamp(1, n);
    let mut parts = Vec::with_capacity(n.div_ceil(chunk));
    let mut start = 0;
    while start < n {
        let end = (start + chunk).min(n);
        let logits = model
            .logits_from_hidden(hidden.clone().slice([start..end, 0..k, 0..h]))
            .cast(DType::F32);
        let idx = targets
            .clone()
            .slice([start..end, 0..k])
            .unsqueeze_dim::<3>(2);
        parts.push(log_softmax_gather(logits, idx).squeeze_dim::<2>(2));
        start = end;
    }
    if parts.len() == 1 {
        parts.pop().expect("one part")
    } else {
        Tensor::cat(parts, 0)
    }
}

/// Row-major `[rows * K]` weights, `w(row, k)`.
pub(crate) fn weight_grid(
    rows: usize,
    k: usize,
    mut w: impl FnMut(usize, usize) -> f32,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * k);
    for r in 0..rows {
        for j in 0..k {
            out.push(w(r, j));
        }
    }
    out
}

/// Build one [`View`]: for each row, which prompt/completion positions get `<|mask|>` and the
/// weight of each completion token's log-prob.
///
/// # Shapes
/// - `masks(r)` returns (`[P]` prompt mask or `None`, `[K]` completion mask)
/// - `weight(r, k)`: the weight of completion token `k` of row `r`
pub(crate) fn build_view(
    batch: &ScoreBatch,
    mask_id: u32,
    mut masks: impl FnMut(usize) -> (Option<Vec<bool>>, Vec<bool>),
    weight: impl FnMut(usize, usize) -> f32,
) -> View {
    let (rows, l) = (batch.rows(), batch.seq_len());
    let mut input_ids = Vec::with_capacity(rows * l);
    for r in 0..rows {
        let (prompt_masked, completion_masked) = masks(r);
        input_ids.extend(super::masks::masked_input(
            &batch.prompt_ids[r],
            &batch.prompt_mask[r],
            prompt_masked.as_deref(),
            &batch.completion_ids[r],
            &completion_masked,
            mask_id,
        ));
    }
    View {
        input_ids,
        weights: weight_grid(rows, batch.completion_len(), weight),
    }
}
