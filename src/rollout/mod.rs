//! Rollouts: G completions per prompt by batched masked-diffusion decoding, exactly as Dream's
//! `diffusion_generate` (spec §3), with decode-order traces and AR-ness (spec §4), and two
//! extensions: block (semi-autoregressive) decoding and confidence-threshold parallel decoding.
//!
//! | file | what it holds |
//! |---|---|
//! | `config` | [`RolloutConfig`], [`Alg`] |
//! | `schedule` | the float32-exact reveal schedule |
//! | `sampling` | `sample_tokens`, per-row top-k, Gumbel-top-k |
//! | `decoder` | the device loop ([`decode`]) |
//! | `cache` | which positions a step recomputes over cached keys and values ([`CacheMode`]) |
//! | `trace`, `ar_ness` | [`DecodeTrace`], local/global AR-ness |

pub mod ar_ness;
pub mod cache;
pub mod config;
pub mod decoder;
pub mod host_sampling;
pub mod sampling;
pub mod schedule;
pub mod trace;

pub use ar_ness::{global_ar_ness, local_ar_ness, GLOBAL_K, LOCAL_K};
pub use cache::DecodeCost;
pub use config::{Alg, CacheMode, RolloutConfig};
pub use decoder::{decode, decode_from, DecodeTokens, Decoded};
pub use trace::{DecodeTrace, TraceRecord};

use burn::tensor::backend::Backend;

use std::ops::Range;

use crate::model::{left_pad, DiffusionLm, PromptBatch, SpecialTokens, Tokenizer};
use crate::{Error, Result};

/// The result of [`generate`]: `rows = prompts × G`, grouped contiguously by prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutBatch {
    /// `[rows][P]` left-padded prompt tokens.
    pub prompt_ids: Vec<Vec<u32>>,
    /// `[rows][P]`, 1 = token, 0 = pad.
    pub prompt_mask: Vec<Vec<u32>>,
    /// `[rows][K]` completion tokens (always exactly K).
    pub completion_ids: Vec<Vec<u32>>,
    /// `[rows][K]`: 1 up to and including the first `<|im_end|>`, 0 after; all ones if none.
    pub completion_mask: Vec<Vec<u32>>,
    /// Decoded completions with special tokens skipped (cut at the first stop token when
    /// `truncate_text`).
    pub texts: Vec<String>,
    /// `group[r]` = index of the prompt row `r` answers (`r / G`).
    pub group: Vec<usize>,
    /// Per-row decode orders when `record_trace`.
    pub traces: Option<Vec<DecodeTrace>>,
    /// Forward passes run (all chunks together).
    pub forward_passes: usize,
    /// What those passes computed.
    pub cost: DecodeCost,
}

/// Generate `config.num_completions` completions for each prompt.
///
/// `prompts` are full chat-formatted texts (see [`crate::model::chat_prompt`]). Each is
/// tokenized without special tokens added, left-truncated to `max_prompt_length`, repeated G
/// times and left-padded with `<|dlm_pad|>`; the attention mask and position ids of the model
/// handle the padding.
pub fn generate<B: Backend>(
    model: &DiffusionLm<B>,
    tokenizer: &Tokenizer,
    prompts: &[String],
    config: &RolloutConfig,
) -> Result<RolloutBatch> {
    let batch = prompt_rows(model, tokenizer, prompts, config)?;
    let decoded = decode_rows(model, tokenizer, &batch, 0..batch.ids.len(), config)?;
    assemble(tokenizer, batch, decoded, config)
}

/// The rows of a rollout before decoding: every prompt tokenized, left-truncated to
/// `max_prompt_length`, repeated G times and left-padded to the longest (`[rows][P]` ids and
/// mask). Data-parallel workers all build the whole round's rows, so that a row's padding (and
/// so its numerics) does not depend on which worker decodes it.
pub fn prompt_rows<B: Backend>(
    model: &DiffusionLm<B>,
    tokenizer: &Tokenizer,
    prompts: &[String],
    config: &RolloutConfig,
) -> Result<PromptBatch> {
    config.validate()?;
    if prompts.is_empty() {
        return Err(Error::invalid("prompts", "no prompts given"));
    }
    let special = *tokenizer.special();
    if let Some(m) = model.config().mask_token_id {
        if m != special.mask {
            return Err(Error::invalid(
                "tokenizer",
                format!(
                    "<|mask|> is {} in the tokenizer but {m} in the model config",
                    special.mask
                ),
            ));
        }
    }
    let g = config.num_completions;
    let mut rows = Vec::with_capacity(prompts.len() * g);
    for (i, p) in prompts.iter().enumerate() {
        let ids = tokenizer.encode(p)?;
        if ids.is_empty() {
            return Err(Error::invalid(
                "prompts",
                format!("prompt {i} encodes to no tokens"),
            ));
        }
        let ids = ids[ids.len().saturating_sub(config.max_prompt_length)..].to_vec();
        rows.extend(std::iter::repeat_n(ids, g));
    }
    Ok(left_pad(rows, special.pad))
}

/// Decode rows `rows` of `batch` (from [`prompt_rows`]). Row `r` draws from its own stream `r`
/// of the round's seed, so decoding a range gives exactly those rows of the whole decode when
/// the `chunk_rows` boundaries agree (see [`decode_from`]).
pub fn decode_rows<B: Backend>(
    model: &DiffusionLm<B>,
    tokenizer: &Tokenizer,
    batch: &PromptBatch,
    rows: Range<usize>,
    config: &RolloutConfig,
) -> Result<Decoded> {
    if rows.is_empty() || rows.end > batch.ids.len() {
        return Err(Error::invalid(
            "rows",
            format!("{rows:?} is not a range of the {} rows", batch.ids.len()),
        ));
    }
    decode_from(
        model,
        &batch.ids[rows.clone()],
        &batch.attention_mask[rows.clone()],
        rows.start,
        batch.attention_mask.iter().any(|m| m.contains(&0)),
        DecodeTokens::from_special(tokenizer.special()),
        config,
    )
}

/// The rollout batch of `batch`'s rows with their decoded completions: loss masks, texts and
/// groups.
pub fn assemble(
    tokenizer: &Tokenizer,
    batch: PromptBatch,
    decoded: Decoded,
    config: &RolloutConfig,
) -> Result<RolloutBatch> {
    if decoded.completion_ids.len() != batch.ids.len() {
        return Err(Error::invalid(
            "completions",
            format!(
                "{} completions for {} rows",
                decoded.completion_ids.len(),
                batch.ids.len()
            ),
        ));
    }
    let special = *tokenizer.special();
    let completion_mask = decoded
        .completion_ids
        .iter()
        .map(|ids| completion_mask(ids, special.im_end))
        .collect();
    let texts = decoded
        .completion_ids
        .iter()
        .map(|ids| {
            let ids = if config.truncate_text {
                text_tokens(ids, &special)
            } else {
                ids
            };
            tokenizer.decode(ids, true)
        })
        .collect::<Result<Vec<_>>>()?;
    let g = config.num_completions;
    Ok(RolloutBatch {
        group: (0..batch.ids.len()).map(|r| r / g).collect(),
        prompt_ids: batch.ids,
        prompt_mask: batch.attention_mask,
        completion_ids: decoded.completion_ids,
        completion_mask,
        texts,
        traces: decoded.traces,
        forward_passes: decoded.forward_passes,
        cost: decoded.cost,
    })
}

/// The loss mask of a completion: 1 up to and including the first `im_end`, 0 after; all
/// ones when there is none (as the released RL code builds it).
pub fn completion_mask(ids: &[u32], im_end: u32) -> Vec<u32> {
    let end = ids
        .iter()
        .position(|&t| t == im_end)
        .map_or(ids.len(), |i| i + 1);
    (0..ids.len()).map(|i| u32::from(i < end)).collect()
}

/// The tokens of the answer text: everything before the first `<|dlm_pad|>`, `<|im_end|>` or
/// `<|endoftext|>` (the instruct model pads its answer to length with `<|dlm_pad|>`; a base
/// model ends with eos).
pub fn text_tokens<'a>(ids: &'a [u32], special: &SpecialTokens) -> &'a [u32] {
    let stop = [special.pad, special.im_end, special.eos];
    let end = ids
        .iter()
        .position(|t| stop.contains(t))
        .unwrap_or(ids.len());
    &ids[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn special() -> SpecialTokens {
        SpecialTokens {
            mask: 3,
            pad: 4,
            im_end: 2,
            im_start: 1,
            eos: 0,
        }
    }

    #[test]
    fn completion_mask_covers_the_first_im_end() {
        assert_eq!(completion_mask(&[9, 9, 2, 9, 2], 2), vec![1, 1, 1, 0, 0]);
        assert_eq!(completion_mask(&[2, 9], 2), vec![1, 0]);
        assert_eq!(completion_mask(&[9, 9, 9], 2), vec![1, 1, 1]);
    }

    #[test]
    fn text_stops_at_the_first_stop_token() {
        let s = special();
        assert_eq!(text_tokens(&[10, 11, 4, 12, 2], &s), &[10, 11]);
        assert_eq!(text_tokens(&[10, 2, 11], &s), &[10]);
        assert_eq!(text_tokens(&[10, 0, 11], &s), &[10]);
        assert_eq!(text_tokens(&[10, 11], &s), &[10, 11]);
        assert!(text_tokens(&[4, 10], &s).is_empty());
    }
}
