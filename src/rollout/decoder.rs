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

use burn::tensor::{backend::Backend, Bool, DType, IndexingUpdateOp, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

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
    decode_from(
        model,
        prompt_ids,
        prompt_mask,
        0,
        padded,
        mask_token,
        config,
    )
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
    mask_token: u32,
    config: &RolloutConfig,
) -> Result<Decoded> {
    config.validate()?;
    check_prompts(
        prompt_ids,
        prompt_mask,
        model.config().vocab_size,
        mask_token,
    )?;
    let rows = prompt_ids.len();
    let chunk = config.chunk_rows.unwrap_or(rows).max(1);
    let mut out = Decoded {
        completion_ids: Vec::with_capacity(rows),
        traces: config.record_trace.then(Vec::new),
        forward_passes: 0,
    };
    for start in (0..rows).step_by(chunk) {
        let end = (start + chunk).min(rows);
        let mut run = ChunkDecoder::new(
            model,
            &prompt_ids[start..end],
            &prompt_mask[start..end],
            row_offset + start,
            padded,
            mask_token,
            config,
        );
        run.run()?;
        let (ids, traces, passes) = run.finish()?;
        out.completion_ids.extend(ids);
        if let (Some(all), Some(t)) = (out.traces.as_mut(), traces) {
            all.extend(t);
        }
        out.forward_passes += passes;
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
    /// `max(floor[r], #{conf > τ})` per row (threshold decoding).
    Threshold { floor: Tensor<B, 2, Int>, tau: f32 },
}

struct ChunkDecoder<'a, B: Backend> {
    model: &'a DiffusionLm<B>,
    config: &'a RolloutConfig,
    device: B::Device,
    rows: usize,
    prompt_len: usize,
    k: usize,
    mask_token: u32,
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
    /// model family's logit shift) of each row in `[rows·L, H]`.
    hidden_base: Tensor<B, 2, Int>,
    rngs: Vec<ChaCha8Rng>,
    /// Threshold and origin decoding: draws come from per-step windows (see [`Self::seek`]).
    windowed: bool,
    params: SampleParams,
    steps_taken: usize,
    forward_passes: usize,
}

impl<'a, B: Backend> ChunkDecoder<'a, B> {
    fn new(
        model: &'a DiffusionLm<B>,
        ids: &[Vec<u32>],
        mask: &[Vec<u32>],
        row_offset: usize,
        padded: bool,
        mask_token: u32,
        config: &'a RolloutConfig,
    ) -> Self {
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
            mask_token,
            prompt,
            attention,
            completion: Tensor::full([rows, k], mask_token as i64, &device),
            reveal_step: Tensor::zeros([rows, k], &device),
            reveal_conf: Tensor::zeros([rows, k], &device),
            positions: Tensor::<B, 1, Int>::arange(0..k as i64, &device).unsqueeze::<2>(),
            hidden_base,
            rngs,
            windowed: config.alg == Alg::Origin || config.confidence_threshold.is_some(),
            params: SampleParams {
                temperature: config.temperature,
                top_p: config.top_p,
                top_k: config.top_k,
                confidence: Confidence::for_alg(config.alg),
                banned_token: Some(mask_token),
            },
            steps_taken: 0,
            forward_passes: 0,
            device,
        }
    }

    fn run(&mut self) -> Result<()> {
        let (block, steps) = (self.config.block_len(), self.config.steps_per_block());
        let ts = timesteps(steps, self.config.eps);
        for b in 0..self.config.num_blocks() {
            let (lo, hi) = (b * block, (b + 1) * block);
            match (self.config.alg, self.config.confidence_threshold) {
                (Alg::Origin, _) => self.run_origin_block(lo, hi, &ts)?,
                (_, Some(tau)) => self.run_threshold_block(lo, hi, &ts, tau)?,
                (_, None) => self.run_schedule_block(lo, hi, &ts)?,
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

    /// Threshold decoding: per row, reveal `max(schedule count, #{conf > τ}, 1)`; the schedule
    /// floor means a block never takes more steps than without the threshold. One host read
    /// per step (the per-row counts) sizes the next step and stops a finished block early.
    fn run_threshold_block(&mut self, lo: usize, hi: usize, ts: &[f32], tau: f32) -> Result<()> {
        let steps = ts.len() - 1;
        let mut left = vec![hi - lo; self.rows];
        for i in 0..steps {
            let m = left.iter().copied().max().unwrap_or(0);
            if m == 0 {
                break;
            }
            let last = i + 1 == steps;
            let floor: Vec<i64> = left
                .iter()
                .map(|&n| transfer_count(n, ts[i], ts[i + 1], last).max(usize::from(n > 0)) as i64)
                .collect();
            let floor = Tensor::from_data(TensorData::new(floor, [self.rows, 1]), &self.device);
            let (cand, valid) = self.candidates(lo, hi, m);
            let revealed = self.step(cand, Some(valid), Rule::Threshold { floor, tau })?;
            let revealed = ints(revealed)?;
            for (l, r) in left.iter_mut().zip(revealed) {
                *l -= r as usize;
            }
            self.steps_taken += 1;
        }
        Ok(())
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
            .equal_elem(self.mask_token as i64)
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
        let logits = self.candidate_logits(&cand, rows, m, l);

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
            Rule::Threshold { floor, tau } => {
                let above = ranked.clone().greater_elem(tau).int().sum_dim(1);
                top_k_per_row(ranked, floor.max_pair(above))
            }
        };
        let reveal = match valid {
            Some(v) => reveal.bool_and(v),
            None => reveal,
        };
        let reveal_i = reveal.clone().int();
        let delta = (tokens - self.mask_token as i64) * reveal_i.clone();
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
    /// pass; with classifier-free guidance the pass also holds every row with its prompt
    /// masked, and the logits are `uncond + (cfg + 1) · (cond − uncond)`.
    fn candidate_logits(
        &mut self,
        cand: &Tensor<B, 2, Int>,
        rows: usize,
        m: usize,
        l: usize,
    ) -> Tensor<B, 2> {
        let x = Tensor::cat(vec![self.prompt.clone(), self.completion.clone()], 1);
        let cfg = self.config.cfg_scale;
        let (x, attention, copies) = match cfg > 0.0 {
            false => (x, self.attention.clone(), 1),
            true => {
                let masked = Tensor::full(self.prompt.dims(), self.mask_token as i64, &self.device);
                let uncond = Tensor::cat(vec![masked, self.completion.clone()], 1);
                let attention = self
                    .attention
                    .clone()
                    .map(|a| Tensor::cat(vec![a.clone(), a], 0));
                (Tensor::cat(vec![x, uncond], 0), attention, 2)
            }
        };
        let hidden = self.model.forward_hidden(x, attention);
        self.forward_passes += 1;
        let h = hidden.dims()[2];
        let hidden = hidden.reshape([copies * rows * l, h]);
        // Hidden row P − shift + j predicts completion token j.
        let index = (cand.clone() + self.hidden_base.clone()).reshape([rows * m]);
        let vocab = self.model.config().vocab_size;
        let logits_at = |index: Tensor<B, 1, Int>| {
            self.model
                .logits_from_hidden(hidden.clone().select(0, index).unsqueeze::<3>())
                .cast(DType::F32)
                .reshape([rows * m, vocab])
        };
        let cond = logits_at(index.clone());
        if copies == 1 {
            return cond;
        }
        let uncond = logits_at(index.add_scalar((rows * l) as i64));
        uncond.clone() + (cond - uncond).mul_scalar(cfg + 1.0)
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
    fn finish(self) -> Result<(Vec<Vec<u32>>, Option<Vec<DecodeTrace>>, usize)> {
        let ids = ints(self.completion)?;
        if let Some(pos) = ids.iter().position(|&t| t == self.mask_token as i64) {
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
        Ok((completions, traces, self.forward_passes))
    }
}

fn ints<B: Backend, const D: usize>(t: Tensor<B, D, Int>) -> Result<Vec<i64>> {
    t.into_data()
        .convert::<i64>()
        .into_vec()
        .map_err(|e| Error::invalid("tensor", format!("cannot read back integers: {e:?}")))
}
