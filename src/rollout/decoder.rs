//! The batched denoising loop: Dream's `diffusion_generate` (batched variant) on the device.
//!
//! All rows of a chunk are decoded together. Per step the device state is the completion
//! `[rows, K]`; the host only knows counts, which the schedule fixes in advance, so the
//! top-k algorithms read nothing back until the end. Two modes need host knowledge:
//! `origin` decides its reveals on the host before the forward pass (they do not depend on the
//! logits), and threshold decoding reads the per-row revealed counts once per step.
//!
//! Work per step is cut to what the step can use: the hidden states of the candidate
//! positions only (masked, and inside the current block) go through the LM head and the
//! sampler, so the head and the vocabulary-wide softmax/sort run on `[rows·m, V]` instead of
//! `[rows, L, V]`, and a schedule step that reveals nothing skips its forward pass entirely.
//! With `rollout.cache` most steps run the layers over a window of positions only, reading the
//! others' keys and values from a cache ([`super::cache`]); with the cache off every step is
//! the full pass it always was, bit for bit.

use burn::tensor::{backend::Backend, Bool, DType, IndexingUpdateOp, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::cache::{DecodeCost, StepCache, StepHidden, StepInput};
use super::config::{Alg, RolloutConfig};
use super::sampling::{
    gumbel_scores, open_uniform, sample_tokens, top_k_per_row, Confidence, SampleParams,
};
use super::schedule::{even_transfer_count, timesteps, transfer_count, transfer_probability};
use super::trace::DecodeTrace;
use crate::model::DiffusionLm;
use crate::{Error, Result};

/// Completions for a batch of tokenized prompts.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// `[rows][K]` completion tokens (no mask token left).
    pub completion_ids: Vec<Vec<u32>>,
    /// Per-row decode orders when `record_trace`.
    pub traces: Option<Vec<DecodeTrace>>,
    /// Forward passes actually run, over all chunks.
    pub forward_passes: usize,
    /// What those passes computed (positions, attention entries, LM-head rows).
    pub cost: DecodeCost,
}

/// The special tokens decoding uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeTokens {
    /// The mask token.
    pub mask: u32,
    /// `(<|im_end|>, padding)` for `early_completion`: positions still masked after a revealed
    /// `<|im_end|>` become padding.
    pub end: Option<(u32, u32)>,
}

impl DecodeTokens {
    /// The family's tokens from a tokenizer's specials.
    pub fn from_special(special: &crate::model::SpecialTokens) -> Self {
        Self {
            mask: special.mask,
            end: Some((special.im_end, special.pad)),
        }
    }
}

/// Decode `K = config.max_new_tokens` tokens after each prompt.
///
/// # Shapes
/// - prompt_ids, prompt_mask: `[rows][P]`, left-padded (mask 1 = token, 0 = pad); every row
///   needs at least one token. Row `r` draws its randomness from ChaCha stream `r`.
pub fn decode<B: Backend>(
    model: &DiffusionLm<B>,
    prompt_ids: &[Vec<u32>],
    prompt_mask: &[Vec<u32>],
    mask_token: u32,
    config: &RolloutConfig,
) -> Result<Decoded> {
    let padded = prompt_mask.iter().any(|m| m.contains(&0));
    let tokens = DecodeTokens {
        mask: mask_token,
        end: None,
    };
    decode_from(model, prompt_ids, prompt_mask, 0, padded, tokens, config)
}

/// [`decode`] of rows `row_offset..` of a larger batch: row `r` here draws from stream
/// `row_offset + r`, and every draw of a row depends only on (seed, row, step). `padded` says
/// whether any row of the larger batch is padded: then every chunk passes the attention mask,
/// as the whole batch's decode does (Dream passes none when nothing is padded, a different
/// attention path). These rows then come out exactly as in the whole batch's decode when the
/// chunks (`config.chunk_rows`, counted from `row_offset`) hold the same rows and so run the
/// same shapes.
pub fn decode_from<B: Backend>(
    model: &DiffusionLm<B>,
    prompt_ids: &[Vec<u32>],
    prompt_mask: &[Vec<u32>],
    row_offset: usize,
    padded: bool,
    tokens: DecodeTokens,
    config: &RolloutConfig,
) -> Result<Decoded> {
    config.validate()?;
    if config.early_completion && tokens.end.is_none() {
        return Err(Error::config(
            "early_completion",
            "needs the <|im_end|> and padding tokens: decode through rollout::generate or \
             decode_from with DecodeTokens::from_special",
        ));
    }
    check_prompts(
        prompt_ids,
        prompt_mask,
        model.config().vocab_size,
        tokens.mask,
    )?;
    let rows = prompt_ids.len();
    let chunk = config.chunk_rows.unwrap_or(rows).max(1);
    let mut out = Decoded {
        completion_ids: Vec::with_capacity(rows),
        traces: config.record_trace.then(Vec::new),
        forward_passes: 0,
        cost: DecodeCost::default(),
    };
    for start in (0..rows).step_by(chunk) {
        let end = (start + chunk).min(rows);
        let mut run = ChunkDecoder::new(
            model,
            &prompt_ids[start..end],
            &prompt_mask[start..end],
            row_offset + start,
            padded,
            tokens,
            config,
        );
        run.run()?;
        let (ids, traces, cost) = run.finish()?;
        out.completion_ids.extend(ids);
        if let (Some(all), Some(t)) = (out.traces.as_mut(), traces) {
            all.extend(t);
        }
        out.forward_passes += cost.forward_passes;
        out.cost.add(&cost);
    }
    Ok(out)
}

fn check_prompts(ids: &[Vec<u32>], mask: &[Vec<u32>], vocab: usize, mask_token: u32) -> Result<()> {
    if ids.is_empty() {
        return Err(Error::invalid("prompt_ids", "no prompts"));
    }
    if mask_token as usize >= vocab {
        return Err(Error::invalid(
            "mask_token",
            format!("{mask_token} is outside the vocabulary (0..{vocab})"),
        ));
    }
    let p = ids[0].len();
    if ids.len() != mask.len() {
        return Err(Error::invalid(
            "prompt_mask",
            "must have one row per prompt",
        ));
    }
    for (r, (row, m)) in ids.iter().zip(mask).enumerate() {
        if row.len() != p || m.len() != p {
            return Err(Error::invalid(
                "prompt_ids",
                format!("row {r} is not {p} tokens long (left-pad the batch)"),
            ));
        }
        // Row P−1 predicts the first completion token, so it must be a real token.
        if m.last() != Some(&1) {
            return Err(Error::invalid(
                "prompt_ids",
                format!("prompt {r} is empty or right-padded; prompts must be left-padded and non-empty"),
            ));
        }
        if m.windows(2).any(|w| w[0] > w[1]) || m.iter().any(|&v| v > 1) {
            return Err(Error::invalid(
                "prompt_mask",
                format!("row {r} is not a left-padding mask of 0s then 1s"),
            ));
        }
        if let Some(bad) = row.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::invalid(
                "prompt_ids",
                format!("token {bad} in row {r} is outside the vocabulary"),
            ));
        }
    }
    Ok(())
}

/// What a step draws uniforms for (its window within the step, see `ChunkDecoder::seek`).
#[derive(Clone, Copy)]
enum Draw {
    Coins = 0,
    Sample = 1,
    Gumbel = 2,
    Remask = 3,
}

/// How many of a step's candidates each row reveals.
enum Rule<B: Backend> {
    /// Every valid candidate (origin: the host already chose them).
    All,
    /// The same count for every row (the schedule of the top-k algorithms).
    Count(usize),
    /// `max(floor[r], min(#{conf > τ}, cap))` per row (threshold decoding; τ = ∞ reveals the
    /// floor).
    Threshold {
        floor: Tensor<B, 2, Int>,
        tau: f32,
        cap: Option<usize>,
    },
}

struct ChunkDecoder<'a, B: Backend> {
    model: &'a DiffusionLm<B>,
    config: &'a RolloutConfig,
    device: B::Device,
    rows: usize,
    prompt_len: usize,
    k: usize,
    tokens: DecodeTokens,
    prompt: Tensor<B, 2, Int>,
    attention: Option<Tensor<B, 2, Int>>,
    /// `[rows, K]` completion: mask tokens until revealed.
    completion: Tensor<B, 2, Int>,
    /// `[rows, K]` 1-based step that revealed each position (0 = still masked).
    reveal_step: Tensor<B, 2, Int>,
    /// `[rows, K]` confidence at reveal.
    reveal_conf: Tensor<B, 2>,
    /// `[1, K]` completion positions.
    positions: Tensor<B, 2, Int>,
    /// `[rows, 1]` flat index of the hidden row that scores completion token 0 (P − shift, the
    /// model family's logit shift) of each row in `[rows·L, H]` (classifier-free guidance).
    hidden_base: Tensor<B, 2, Int>,
    cache: StepCache<B>,
    /// The block being decoded, `(index, lo, hi)`.
    block: (usize, usize, usize),
    /// The completion as last read back (early completion), `[rows · K]`; when set, always
    /// equal to `completion` (read again after every step that changes it).
    host_ids: Option<Vec<i64>>,
    rngs: Vec<ChaCha8Rng>,
    /// Threshold and origin decoding: draws come from per-step windows (see [`Self::seek`]).
    windowed: bool,
    params: SampleParams,
    steps_taken: usize,
    cost: DecodeCost,
}

impl<'a, B: Backend> ChunkDecoder<'a, B> {
    fn new(
        model: &'a DiffusionLm<B>,
        ids: &[Vec<u32>],
        mask: &[Vec<u32>],
        row_offset: usize,
        padded: bool,
        tokens: DecodeTokens,
        config: &'a RolloutConfig,
    ) -> Self {
        let mask_token = tokens.mask;
        let device = model.embed_tokens.val().device();
        let (rows, p, k) = (ids.len(), ids[0].len(), config.max_new_tokens);
        let int2 = |v: Vec<i64>, cols: usize| {
            Tensor::<B, 2, Int>::from_data(TensorData::new(v, [rows, cols]), &device)
        };
        let prompt = int2(ids.iter().flatten().map(|&t| t as i64).collect(), p);
        // Dream passes no mask at all when nothing is padded (full attention, positions 0..L).
        let attention = padded.then(|| {
            let pm = int2(mask.iter().flatten().map(|&t| t as i64).collect(), p);
            Tensor::cat(vec![pm, Tensor::ones([rows, k], &device)], 1)
        });
        let l = (p + k) as i64;
        let hidden_base = Tensor::<B, 1, Int>::arange(0..rows as i64, &device)
            .mul_scalar(l)
            .add_scalar((p - model.config().family.logit_shift()) as i64)
            .unsqueeze_dim::<2>(1);
        let rngs = (0..rows)
            .map(|r| {
                let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
                rng.set_stream((row_offset + r) as u64);
                rng
            })
            .collect();
        Self {
            model,
            config,
            rows,
            prompt_len: p,
            k,
            tokens,
            prompt,
            attention,
            completion: Tensor::full([rows, k], mask_token as i64, &device),
            reveal_step: Tensor::zeros([rows, k], &device),
            reveal_conf: Tensor::zeros([rows, k], &device),
            positions: Tensor::<B, 1, Int>::arange(0..k as i64, &device).unsqueeze::<2>(),
            hidden_base,
            cache: StepCache::new(config),
            block: (0, 0, k),
            host_ids: None,
            rngs,
            windowed: config.alg == Alg::Origin || config.per_row_counts(),
            params: SampleParams {
                temperature: config.temperature,
                top_p: config.top_p,
                top_k: config.top_k,
                confidence: Confidence::for_alg(config.alg),
                banned_token: Some(mask_token),
            },
            steps_taken: 0,
            cost: DecodeCost::default(),
            device,
        }
    }

    fn run(&mut self) -> Result<()> {
        let (block, steps) = (self.config.block_len(), self.config.steps_per_block());
        let ts = timesteps(steps, self.config.eps);
        for b in 0..self.config.num_blocks() {
            let (lo, hi) = (b * block, (b + 1) * block);
            self.block = (b, lo, hi);
            match self.config.alg {
                Alg::Origin => self.run_origin_block(lo, hi, &ts)?,
                _ if self.config.per_row_counts() => self.run_counted_block(lo, hi, &ts)?,
                _ => self.run_schedule_block(lo, hi, &ts)?,
            }
        }
        Ok(())
    }

    /// Top-k algorithms: every row reveals the schedule's count, so the host knows the masked
    /// count of every row at every step and never reads the device.
    fn run_schedule_block(&mut self, lo: usize, hi: usize, ts: &[f32]) -> Result<()> {
        let steps = ts.len() - 1;
        let mut left = hi - lo;
        let block = hi - lo;
        for i in 0..steps {
            let n = match self.config.alg.even_transfer() {
                true => even_transfer_count(block, steps, i).min(left),
                false => transfer_count(left, ts[i], ts[i + 1], i + 1 == steps),
            };
            if n > 0 {
                // Exactly `left` candidates per row, all valid.
                let (cand, _) = self.candidates(lo, hi, left);
                self.step(cand, None, Rule::Count(n))?;
                left -= n;
            }
            self.steps_taken += 1;
        }
        Ok(())
    }

    /// Per-row counts (threshold decoding, early completion): per row, reveal
    /// `max(schedule count, min(#{conf > τ}, cap), 1)`; the schedule floor means a block never
    /// takes more steps than without the threshold. One host read per step (the per-row counts,
    /// or the completion for early completion) sizes the next step and stops a decided block
    /// early.
    fn run_counted_block(&mut self, lo: usize, hi: usize, ts: &[f32]) -> Result<()> {
        let steps = ts.len() - 1;
        let tau = self.config.confidence_threshold.unwrap_or(f32::INFINITY);
        let cap = self.config.max_tokens_per_step;
        let mut left = match &self.host_ids {
            Some(ids) => self.masked_per_row(ids, lo, hi),
            None => vec![hi - lo; self.rows],
        };
        for i in 0..steps {
            let m = left.iter().copied().max().unwrap_or(0);
            if m == 0 {
                break;
            }
            let last = i + 1 == steps;
            // Threshold decoding reveals at least one per row and step; without a threshold the
            // floor is the schedule's count, and a step where it is 0 for every row is skipped
            // as the schedule path skips it.
            let least = usize::from(self.config.confidence_threshold.is_some());
            let floor: Vec<i64> = left
                .iter()
                .map(|&n| {
                    let due = match self.config.alg.even_transfer() {
                        true if !last => even_transfer_count(hi - lo, steps, i).min(n),
                        _ => transfer_count(n, ts[i], ts[i + 1], last),
                    };
                    due.max(least.min(n)) as i64
                })
                .collect();
            if floor.iter().all(|&n| n == 0) {
                self.steps_taken += 1;
                continue;
            }
            let floor = Tensor::from_data(TensorData::new(floor, [self.rows, 1]), &self.device);
            let (cand, valid) = self.candidates(lo, hi, m);
            let revealed = self.step(cand, Some(valid), Rule::Threshold { floor, tau, cap })?;
            if self.config.early_completion {
                let ids = self.complete_early()?;
                left = self.masked_per_row(&ids, lo, hi);
                self.host_ids = Some(ids);
            } else {
                for (l, r) in left.iter_mut().zip(ints(revealed)?) {
                    *l -= r as usize;
                }
            }
            self.steps_taken += 1;
        }
        Ok(())
    }

    /// Masked positions of `lo..hi` per row of a host copy of the completion.
    fn masked_per_row(&self, ids: &[i64], lo: usize, hi: usize) -> Vec<usize> {
        ids.chunks(self.k)
            .map(|row| {
                row[lo..hi]
                    .iter()
                    .filter(|&&t| t == self.tokens.mask as i64)
                    .count()
            })
            .collect()
    }

    /// Early completion: in every row with a revealed `<|im_end|>`, the positions still masked
    /// after the first one become padding (revealed at this step). Returns the completion.
    fn complete_early(&mut self) -> Result<Vec<i64>> {
        let (end, pad) = self.tokens.end.expect("validated by decode_from");
        let mut ids = ints(self.completion.clone())?;
        let mask = self.tokens.mask as i64;
        let mut after = Vec::with_capacity(self.rows);
        for row in ids.chunks_mut(self.k) {
            let e = row.iter().position(|&t| t == end as i64);
            if let Some(e) = e {
                row[e + 1..]
                    .iter_mut()
                    .filter(|t| **t == mask)
                    .for_each(|t| *t = pad as i64);
            }
            after.push(e.map_or(self.k as i64, |e| e as i64));
        }
        if after.iter().all(|&e| e == self.k as i64) {
            return Ok(ids);
        }
        let after =
            Tensor::<B, 2, Int>::from_data(TensorData::new(after, [self.rows, 1]), &self.device);
        let fill = self.completion.clone().equal_elem(mask).bool_and(
            self.positions
                .clone()
                .expand([self.rows, self.k])
                .greater(after.expand([self.rows, self.k])),
        );
        self.completion = self.completion.clone().mask_fill(fill.clone(), pad as i64);
        if self.config.record_trace {
            let step = self.steps_taken as i64 + 1;
            self.reveal_step = self.reveal_step.clone().mask_fill(fill, step);
        }
        Ok(ids)
    }

    /// `origin`: each masked position unmasks independently with probability `1 − s/t`. The
    /// coins do not depend on the logits, so they are tossed on the host first; a step where no
    /// row reveals anything costs no forward pass.
    fn run_origin_block(&mut self, lo: usize, hi: usize, ts: &[f32]) -> Result<()> {
        let steps = ts.len() - 1;
        let mut masked: Vec<Vec<usize>> = vec![(lo..hi).collect(); self.rows];
        for i in 0..steps {
            let p = transfer_probability(ts, i);
            let mut picks: Vec<Vec<usize>> = Vec::with_capacity(self.rows);
            self.seek(Draw::Coins);
            for (row, rng) in masked.iter_mut().zip(&mut self.rngs) {
                let (take, keep): (Vec<usize>, Vec<usize>) =
                    row.iter().partition(|_| rng.random::<f32>() < p);
                *row = keep;
                picks.push(take);
            }
            let m = picks.iter().map(Vec::len).max().unwrap_or(0);
            if m > 0 {
                let mut cand = Vec::with_capacity(self.rows * m);
                let mut valid = Vec::with_capacity(self.rows * m);
                for row in &picks {
                    for j in 0..m {
                        cand.push(row.get(j).copied().unwrap_or(0) as i64);
                        valid.push(j < row.len());
                    }
                }
                let cand = Tensor::from_data(TensorData::new(cand, [self.rows, m]), &self.device);
                let valid = Tensor::<B, 2, Bool>::from_data(
                    TensorData::new(valid, [self.rows, m]),
                    &self.device,
                );
                self.step(cand, Some(valid), Rule::All)?;
            }
            self.steps_taken += 1;
        }
        Ok(())
    }

    /// The first `m` still-masked positions of `lo..hi` in every row, ascending, as
    /// `(positions [rows, m], valid [rows, m])`; rows with fewer are padded with (invalid)
    /// positions outside the candidate set.
    fn candidates(
        &self,
        lo: usize,
        hi: usize,
        m: usize,
    ) -> (Tensor<B, 2, Int>, Tensor<B, 2, Bool>) {
        let (rows, k) = (self.rows, self.k);
        let pos = self.positions.clone();
        let in_block = pos
            .clone()
            .greater_equal_elem(lo as i64)
            .bool_and(pos.clone().lower_elem(hi as i64));
        let cand = self
            .completion
            .clone()
            .equal_elem(self.tokens.mask as i64)
            .bool_and(in_block.expand([rows, k]));
        // Sort key: the position for candidates, position + K otherwise.
        let key = pos.expand([rows, k]) + cand.bool_not().int().mul_scalar(k as i64);
        let first = key.sort(1).slice([0..rows, 0..m]);
        let valid = first.clone().lower_elem(k as i64);
        let positions = first.clone() - valid.clone().bool_not().int().mul_scalar(k as i64);
        (positions, valid)
    }

    /// One forward pass and update.
    ///
    /// # Shapes
    /// - cand: `[rows, m]` completion positions (unique per row among valid ones)
    /// - valid: `[rows, m]` (`None` = all valid)
    /// - returns the number revealed per row, `[rows, 1]`
    fn step(
        &mut self,
        cand: Tensor<B, 2, Int>,
        valid: Option<Tensor<B, 2, Bool>>,
        rule: Rule<B>,
    ) -> Result<Tensor<B, 2, Int>> {
        let (rows, m) = (self.rows, cand.dims()[1]);
        let l = self.prompt_len + self.k;
        let logits = self.candidate_logits(&cand, rows, m, l)?;

        let uniforms = self
            .params
            .needs_uniforms()
            .then(|| self.uniforms(m, Draw::Sample, |rng| rng.random::<f32>()));
        let sampled = sample_tokens(
            logits,
            uniforms.map(|u| u.reshape([rows * m, 1])),
            &self.params,
        )?;
        let conf = sampled.confidence.reshape([rows, m]);
        let tokens = sampled.tokens.reshape([rows, m]);
        let ranked = match &valid {
            Some(v) => conf
                .clone()
                .mask_fill(v.clone().bool_not(), f32::NEG_INFINITY),
            None => conf.clone(),
        };

        let reveal = match rule {
            Rule::All => valid
                .clone()
                .unwrap_or_else(|| Tensor::<B, 2, Int>::ones([rows, m], &self.device).bool()),
            Rule::Count(n) => {
                let scores = if self.config.alg == Alg::Random {
                    // LLaDA's `random` remasking: positions in a random order.
                    let order = self.uniforms(m, Draw::Remask, |rng| rng.random::<f32>());
                    match &valid {
                        Some(v) => order.mask_fill(v.clone().bool_not(), f32::NEG_INFINITY),
                        None => order,
                    }
                } else if self.config.alg_temp > 0.0 {
                    gumbel_scores(
                        ranked,
                        self.uniforms(m, Draw::Gumbel, open_uniform),
                        self.config.alg_temp,
                    )
                } else {
                    ranked
                };
                top_k_per_row(scores, Tensor::full([rows, 1], n as i64, &self.device))
            }
            Rule::Threshold { floor, tau, cap } => {
                let above = ranked.clone().greater_elem(tau).int().sum_dim(1);
                let above = match cap {
                    Some(cap) => above.clamp_max(cap as i64),
                    None => above,
                };
                top_k_per_row(ranked, floor.max_pair(above))
            }
        };
        let reveal = match valid {
            Some(v) => reveal.bool_and(v),
            None => reveal,
        };
        let reveal_i = reveal.clone().int();
        let delta = (tokens - self.tokens.mask as i64) * reveal_i.clone();
        self.completion =
            self.completion
                .clone()
                .scatter(1, cand.clone(), delta, IndexingUpdateOp::Add);
        if self.config.record_trace {
            let step_no = reveal_i.clone().mul_scalar(self.steps_taken as i64 + 1);
            self.reveal_step =
                self.reveal_step
                    .clone()
                    .scatter(1, cand.clone(), step_no, IndexingUpdateOp::Add);
            let c = conf.mask_fill(reveal.bool_not(), 0.0);
            self.reveal_conf = self
                .reveal_conf
                .clone()
                .scatter(1, cand, c, IndexingUpdateOp::Add);
        }
        Ok(reveal_i.sum_dim(1))
    }

    /// `[rows · m, vocab]` f32 logits of the candidates `cand` (`[rows, m]`) from one forward
    /// pass (full or over the cache's window); with classifier-free guidance the pass also
    /// holds every row with its prompt masked, and the logits are
    /// `uncond + (cfg + 1) · (cond − uncond)`.
    fn candidate_logits(
        &mut self,
        cand: &Tensor<B, 2, Int>,
        rows: usize,
        m: usize,
        l: usize,
    ) -> Result<Tensor<B, 2>> {
        let x = Tensor::cat(vec![self.prompt.clone(), self.completion.clone()], 1);
        let vocab = self.model.config().vocab_size;
        let logits_at = |hidden: &Tensor<B, 2>, index: Tensor<B, 1, Int>| {
            self.model
                .logits_from_hidden(hidden.clone().select(0, index).unsqueeze::<3>())
                .cast(DType::F32)
                .reshape([rows * m, vocab])
        };
        let cfg = self.config.cfg_scale;
        if cfg == 0.0 {
            let step = StepInput {
                x,
                attention: self.attention.clone(),
                cand,
                prompt_len: self.prompt_len,
                shift: self.model.config().family.logit_shift(),
                block: self.block,
                mask_token: self.tokens.mask,
                host: self.host_ids.as_deref(),
            };
            let StepHidden { hidden, index } =
                self.cache.hidden(self.model, step, &mut self.cost)?;
            return Ok(logits_at(&hidden, index));
        }
        // Classifier-free guidance (no cache, see `RolloutConfig::validate`).
        let masked = Tensor::full(self.prompt.dims(), self.tokens.mask as i64, &self.device);
        let uncond = Tensor::cat(vec![masked, self.completion.clone()], 1);
        let attention = self
            .attention
            .clone()
            .map(|a| Tensor::cat(vec![a.clone(), a], 0));
        let x = Tensor::cat(vec![x, uncond], 0);
        let hidden = self.model.forward_hidden(x, attention);
        self.cost.add(&DecodeCost {
            forward_passes: 1,
            full_passes: 1,
            query_tokens: 2 * rows * l,
            attention_pairs: 2 * rows * l * l,
            head_rows: 2 * rows * m,
        });
        let h = hidden.dims()[2];
        let hidden = hidden.reshape([2 * rows * l, h]);
        // Hidden row P − shift + j predicts completion token j.
        let index = (cand.clone() + self.hidden_base.clone()).reshape([rows * m]);
        let cond = logits_at(&hidden, index.clone());
        let uncond = logits_at(&hidden, index.add_scalar((rows * l) as i64));
        Ok(uncond.clone() + (cond - uncond).mul_scalar(cfg + 1.0))
    }

    /// `[rows, m]` draws, `m` from each row's own stream.
    fn uniforms(
        &mut self,
        m: usize,
        purpose: Draw,
        draw: fn(&mut ChaCha8Rng) -> f32,
    ) -> Tensor<B, 2> {
        self.seek(purpose);
        let mut v = Vec::with_capacity(self.rows * m);
        for rng in &mut self.rngs {
            v.extend((0..m).map(|_| draw(rng)));
        }
        Tensor::from_data(TensorData::new(v, [self.rows, m]), &self.device)
    }

    /// Threshold and origin decoding draw a number of values per row and step that depends on
    /// the other rows of the chunk (its widest row), so every row's stream is moved to the
    /// step's own window for each purpose first: a row's j-th draw of a step is then the same
    /// whatever rows share its chunk (or its worker). The schedule path draws exactly `left`
    /// values per row and step already, and keeps its contiguous streams.
    fn seek(&mut self, purpose: Draw) {
        if !self.windowed {
            return;
        }
        // At most K draws per purpose and step, of at most two 32-bit words each.
        let window = 2 * self.k as u128;
        let pos = (self.steps_taken as u128 * 4 + purpose as u128) * window;
        for rng in &mut self.rngs {
            rng.set_word_pos(pos);
        }
    }

    /// Read the results back (the only host read of the top-k algorithms).
    #[allow(clippy::type_complexity)]
    fn finish(self) -> Result<(Vec<Vec<u32>>, Option<Vec<DecodeTrace>>, DecodeCost)> {
        let ids = ints(self.completion)?;
        if let Some(pos) = ids.iter().position(|&t| t == self.tokens.mask as i64) {
            return Err(Error::invalid(
                "decode",
                format!(
                    "row {} position {} is still masked after decoding",
                    pos / self.k,
                    pos % self.k
                ),
            ));
        }
        let completions = ids
            .chunks(self.k)
            .map(|r| r.iter().map(|&t| t as u32).collect())
            .collect();
        let traces = if self.config.record_trace {
            let steps = ints(self.reveal_step)?;
            let conf: Vec<f32> = self
                .reveal_conf
                .into_data()
                .convert::<f32>()
                .into_vec()
                .map_err(|e| Error::invalid("reveal_conf", format!("{e:?}")))?;
            Some(
                steps
                    .chunks(self.k)
                    .zip(conf.chunks(self.k))
                    .map(|(s, c)| DecodeTrace::from_reveal_steps(s, c, self.steps_taken))
                    .collect::<Result<Vec<_>>>()?,
            )
        } else {
            None
        };
        Ok((completions, traces, self.cost))
    }
}

/// An Int tensor read back to the host.
pub(super) fn ints<B: Backend, const D: usize>(t: Tensor<B, D, Int>) -> Result<Vec<i64>> {
    t.into_data()
        .convert::<i64>()
        .into_vec()
        .map_err(|e| Error::invalid("tensor", format!("cannot read back integers: {e:?}")))
}
