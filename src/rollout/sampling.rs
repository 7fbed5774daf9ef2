//! Dream's `sample_tokens` and the per-row choice of positions to reveal, batched on the device.
//!
//! The device path is tensor code with no host reads (the flex CPU backend samples on the host,
//! where that is the same memory: [`super::host_sampling`]). Random numbers come in as tensors drawn on
//! the host from a dedicated ChaCha stream per row (see `decoder`), so results do not depend on a
//! backend's global RNG.

use burn::tensor::activation::softmax;
use burn::tensor::{backend::Backend, Bool, IndexingUpdateOp, Int, Tensor, TensorData};
use rand::Rng;

use super::config::Alg;
use crate::{Error, Result};

/// Which statistic of the (tempered, truncated) distribution ranks positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confidence {
    /// Probability of the chosen token (`maskgit_plus`, and `origin` in traces).
    Probability,
    /// `p(top1) − p(top2)` (`topk_margin`).
    Margin,
    /// `Σ p·log(p + 1e-10)`, the negative entropy (`entropy`).
    NegEntropy,
    /// Probability of the chosen token under the untempered, unfiltered softmax of the logits
    /// (LLaDA's `low_confidence`).
    RawProbability,
}

impl Confidence {
    /// The confidence an algorithm ranks by (`origin` records the token probability).
    pub fn for_alg(alg: Alg) -> Self {
        match alg {
            Alg::Origin | Alg::MaskgitPlus | Alg::Random => Confidence::Probability,
            Alg::TopkMargin => Confidence::Margin,
            Alg::Entropy => Confidence::NegEntropy,
            Alg::LowConfidence => Confidence::RawProbability,
        }
    }
}

/// The token-level knobs of `sample_tokens`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleParams {
    /// 0 = argmax.
    pub temperature: f32,
    /// Nucleus mass; `None` or ≥ 1 = off.
    pub top_p: Option<f32>,
    /// Keep the k largest logits (ties at the k-th value kept); `None` = off.
    pub top_k: Option<usize>,
    pub confidence: Confidence,
    /// A token that must never be sampled (the mask token: a sampled `<|mask|>` would leave
    /// its position masked and break the per-row counts; Dream does not guard against it).
    pub banned_token: Option<u32>,
}

impl SampleParams {
    fn top_p_active(&self) -> Option<f32> {
        self.top_p.filter(|&p| p < 1.0)
    }

    /// Whether sampling consumes one uniform per row.
    pub fn needs_uniforms(&self) -> bool {
        self.temperature > 0.0
    }
}

/// Tokens and confidences drawn for a batch of logit rows.
#[derive(Debug, Clone)]
pub struct Sampled<B: Backend> {
    /// `[rows, 1]` confidence in the units of [`SampleParams::confidence`].
    pub confidence: Tensor<B, 2>,
    /// `[rows, 1]` token ids.
    pub tokens: Tensor<B, 2, Int>,
}

/// Dream's `sample_tokens`: temperature → top-p (always keeping the top-1) → top-k → softmax →
/// sample (argmax at temperature 0), with the confidence of the requested kind taken on the
/// tempered, truncated distribution.
///
/// With a filter on, the work happens in sorted order: one sort gives the nucleus, the top-k
/// cut, the renormalised probabilities and the inverse-CDF sample, and the chosen index maps
/// back through the sort permutation, so no scatter back to vocabulary order and no second
/// softmax over the original layout are needed. Sampling is by inverse CDF with one uniform
/// per row: `j = #{i : cdf_i ≤ u · cdf_last}`, which never picks a zero-probability token.
///
/// # Shapes
/// - logits: `[rows, vocab]` f32
/// - uniforms: `[rows, 1]` in `[0, 1)`, required when `temperature > 0`
/// - returns confidence `[rows, 1]` and tokens `[rows, 1]`
///
/// On the flex CPU backend the rows are sampled on the host by
/// [`super::host_sampling::sample_rows`] (same semantics, fused loops, O(vocab) sort); every
/// other backend runs [`sample_tokens_on_device`].
pub fn sample_tokens<B: Backend>(
    logits: Tensor<B, 2>,
    uniforms: Option<Tensor<B, 2>>,
    params: &SampleParams,
) -> Result<Sampled<B>> {
    let [rows, vocab] = logits.dims();
    let uniforms = checked_uniforms(rows, vocab, uniforms, params)?;
    let device = logits.device();
    match crate::cpu::into_flex(logits) {
        Ok(flex) => {
            let uniforms =
                match uniforms {
                    Some(u) => Some(u.into_data().convert::<f32>().into_vec::<f32>().map_err(
                        |e| Error::invalid("uniforms", format!("not readable as f32: {e:?}")),
                    )?),
                    None => None,
                };
            let (confidence, tokens) = super::host_sampling::sample_rows(
                flex.storage::<f32>(),
                vocab,
                uniforms.as_deref(),
                params,
            );
            Ok(Sampled {
                confidence: Tensor::from_data(TensorData::new(confidence, [rows, 1]), &device),
                tokens: Tensor::from_data(TensorData::new(tokens, [rows, 1]), &device),
            })
        }
        Err(logits) => sample_on_device(logits, uniforms, params),
    }
}

/// [`sample_tokens`] as tensor operations on the backend's device, whatever the backend (the
/// path of CUDA; on flex, the reference the host sampler is tested against).
pub fn sample_tokens_on_device<B: Backend>(
    logits: Tensor<B, 2>,
    uniforms: Option<Tensor<B, 2>>,
    params: &SampleParams,
) -> Result<Sampled<B>> {
    let [rows, vocab] = logits.dims();
    let uniforms = checked_uniforms(rows, vocab, uniforms, params)?;
    sample_on_device(logits, uniforms, params)
}

/// The uniforms when sampling needs them, after checking every input against `[rows, vocab]`.
fn checked_uniforms<B: Backend>(
    rows: usize,
    vocab: usize,
    uniforms: Option<Tensor<B, 2>>,
    params: &SampleParams,
) -> Result<Option<Tensor<B, 2>>> {
    if vocab == 0 {
        return Err(Error::invalid("logits", "the vocabulary is empty"));
    }
    if vocab < 2 && params.confidence == Confidence::Margin {
        return Err(Error::invalid(
            "logits",
            "the margin confidence needs a vocabulary of at least 2",
        ));
    }
    let uniforms = match (params.needs_uniforms(), uniforms) {
        (true, Some(u)) => {
            if u.dims() != [rows, 1] {
                return Err(Error::invalid(
                    "uniforms",
                    format!("shape {:?}, expected [{rows}, 1]", u.dims()),
                ));
            }
            Some(u)
        }
        (true, None) => {
            return Err(Error::invalid(
                "uniforms",
                "temperature > 0 needs one uniform per row",
            ))
        }
        (false, _) => None,
    };
    Ok(uniforms)
}

fn sample_on_device<B: Backend>(
    logits: Tensor<B, 2>,
    uniforms: Option<Tensor<B, 2>>,
    params: &SampleParams,
) -> Result<Sampled<B>> {
    let [rows, vocab] = logits.dims();
    let raw = (params.confidence == Confidence::RawProbability).then(|| logits.clone());
    let logits = if params.temperature > 0.0 {
        logits.div_scalar(params.temperature)
    } else {
        logits
    };
    let logits = match params.banned_token.filter(|&t| (t as usize) < vocab) {
        Some(t) => {
            let cols =
                Tensor::<B, 1, Int>::arange(0..vocab as i64, &logits.device()).unsqueeze::<2>();
            logits.mask_fill(cols.equal_elem(t as i64).expand([rows, vocab]), f32::MIN)
        }
        None => logits,
    };

    let filtered = params.top_p_active().is_some() || params.top_k.is_some_and(|k| k < vocab);
    // `probs` is in sorted (descending) order when filtering, vocabulary order otherwise;
    // `perm` maps a column of `probs` to its token id.
    let (probs, perm) = if filtered {
        let (mut sorted, perm) = logits.sort_descending_with_indices(1);
        if let Some(top_p) = params.top_p_active() {
            // HF: remove sorted entry i when the mass strictly before it exceeds top_p.
            let cum = softmax(sorted.clone(), 1).cumsum(1);
            let before = Tensor::cat(
                vec![
                    Tensor::zeros([rows, 1], &sorted.device()),
                    cum.slice([0..rows, 0..vocab - 1]),
                ],
                1,
            );
            sorted = sorted.mask_fill(before.greater_elem(top_p), f32::MIN);
        }
        if let Some(k) = params.top_k.filter(|&k| k < vocab) {
            // HF keeps every logit ≥ the k-th largest of the (already nucleus-filtered) logits.
            let kth = sorted.clone().slice([0..rows, k - 1..k]);
            sorted = sorted.clone().mask_fill(sorted.lower(kth), f32::MIN);
        }
        (softmax(sorted, 1), Some(perm))
    } else {
        (softmax(logits, 1), None)
    };

    let (index, p_token) = match uniforms {
        Some(u) => {
            let cdf = probs.clone().cumsum(1);
            let total = cdf.clone().slice([0..rows, vocab - 1..vocab]);
            let index = cdf.lower_equal(u * total).int().sum_dim(1); // [rows, 1]
            let index = index.clamp_max(vocab as i64 - 1);
            let p = probs.clone().gather(1, index.clone());
            (index, p)
        }
        None if filtered => {
            let device = probs.device();
            (
                Tensor::zeros([rows, 1], &device),
                probs.clone().slice([0..rows, 0..1]),
            )
        }
        None => {
            let (p, index) = probs.clone().max_dim_with_indices(1);
            (index, p)
        }
    };
    let tokens = match &perm {
        Some(perm) => perm.clone().gather(1, index.clone()),
        None => index.clone(),
    };

    let confidence = match params.confidence {
        Confidence::Probability => p_token,
        Confidence::Margin => {
            if filtered {
                probs.clone().slice([0..rows, 0..1]) - probs.slice([0..rows, 1..2])
            } else {
                let (top1, arg) = probs.clone().max_dim_with_indices(1);
                let cols =
                    Tensor::<B, 1, Int>::arange(0..vocab as i64, &probs.device()).unsqueeze::<2>();
                let top2 = probs.mask_fill(cols.equal(arg), -1.0).max_dim(1);
                top1 - top2
            }
        }
        Confidence::NegEntropy => (probs.clone() * probs.add_scalar(1e-10).log()).sum_dim(1),
        Confidence::RawProbability => {
            softmax(raw.expect("kept above"), 1).gather(1, tokens.clone())
        }
    };
    Ok(Sampled { confidence, tokens })
}

/// Mark the `k[r]` highest-scoring columns of every row (a per-row top-k, never a flat one
/// across the batch). Columns scored `-inf` rank last; callers keep `k[r]` within the valid
/// count or AND the result with their validity mask.
///
/// # Shapes
/// - scores: `[rows, m]`
/// - k: `[rows, 1]`
/// - returns `[rows, m]`
pub fn top_k_per_row<B: Backend>(scores: Tensor<B, 2>, k: Tensor<B, 2, Int>) -> Tensor<B, 2, Bool> {
    let [rows, m] = scores.dims();
    let device = scores.device();
    let order = scores.argsort_descending(1); // order[r, j] = column ranked j
    let rank_values = Tensor::<B, 1, Int>::arange(0..m as i64, &device)
        .unsqueeze::<2>()
        .expand([rows, m]);
    // Invert the permutation: rank[r, order[r, j]] = j.
    let rank = Tensor::<B, 2, Int>::zeros([rows, m], &device).scatter(
        1,
        order,
        rank_values,
        IndexingUpdateOp::Add,
    );
    rank.lower(k)
}

/// Gumbel-perturbed scores `conf / alg_temp + G`, `G = −log(−log u)`: their per-row top-k is
/// a sample without replacement from `softmax(conf / alg_temp)` (the Gumbel-top-k trick), the
/// distribution of `torch.multinomial(..., replacement=False)`.
///
/// # Shapes
/// - confidence, uniforms: `[rows, m]`, uniforms in `(0, 1)` → `[rows, m]`
pub fn gumbel_scores<B: Backend>(
    confidence: Tensor<B, 2>,
    uniforms: Tensor<B, 2>,
    alg_temp: f32,
) -> Tensor<B, 2> {
    confidence.div_scalar(alg_temp) - uniforms.log().neg().log()
}

/// A uniform draw in the open interval (0, 1) (24 random bits, centred), safe for `log`.
pub fn open_uniform<R: Rng + ?Sized>(rng: &mut R) -> f32 {
    ((rng.random::<u32>() >> 8) as f32 + 0.5) * (1.0 / 16_777_216.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;
    use burn::tensor::TensorData;
    use rand::Rng;

    type T2 = Tensor<Cpu, 2>;

    type Sampler = fn(T2, Option<T2>, &SampleParams) -> Result<Sampled<Cpu>>;
    /// Every test runs on the host sampler (flex's path) and on the tensor path (CUDA's).
    const SAMPLERS: [(&str, Sampler); 2] = [
        ("host", sample_tokens::<Cpu>),
        ("device", sample_tokens_on_device::<Cpu>),
    ];

    fn t2(rows: &[&[f32]]) -> T2 {
        let v = rows[0].len();
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_data(TensorData::new(flat, [rows.len(), v]), &Default::default())
    }

    fn col(values: &[f32]) -> T2 {
        Tensor::from_data(
            TensorData::new(values.to_vec(), [values.len(), 1]),
            &Default::default(),
        )
    }

    fn floats(t: T2) -> Vec<f32> {
        t.into_data().convert::<f32>().into_vec().unwrap()
    }

    fn ints(t: Tensor<Cpu, 2, Int>) -> Vec<i64> {
        t.into_data().convert::<i64>().into_vec().unwrap()
    }

    fn params(
        temperature: f32,
        top_p: Option<f32>,
        top_k: Option<usize>,
        confidence: Confidence,
    ) -> SampleParams {
        SampleParams {
            temperature,
            top_p,
            top_k,
            confidence,
            banned_token: None,
        }
    }

    /// Host reference: tempered softmax with HF's top-p/top-k filters, in vocabulary order.
    fn reference_probs(
        logits: &[f32],
        temperature: f32,
        top_p: Option<f32>,
        top_k: Option<usize>,
    ) -> Vec<f64> {
        let t = if temperature > 0.0 {
            temperature as f64
        } else {
            1.0
        };
        let mut l: Vec<f64> = logits.iter().map(|&x| x as f64 / t).collect();
        let softmax = |l: &[f64]| {
            let m = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = l.iter().map(|x| (x - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(|x| x / s).collect::<Vec<_>>()
        };
        let mut order: Vec<usize> = (0..l.len()).collect();
        order.sort_by(|&a, &b| l[b].partial_cmp(&l[a]).unwrap());
        if let Some(p) = top_p.filter(|&p| p < 1.0) {
            let probs = softmax(&l);
            let mut cum = 0.0;
            for &i in &order {
                if cum > p as f64 {
                    l[i] = f64::NEG_INFINITY;
                }
                cum += probs[i];
            }
        }
        if let Some(k) = top_k {
            let kth = l[order[k - 1]];
            for x in l.iter_mut() {
                if *x < kth {
                    *x = f64::NEG_INFINITY;
                }
            }
        }
        softmax(&l)
    }

    #[test]
    fn argmax_and_confidences_at_temperature_zero() {
        for (name, sample) in SAMPLERS {
            let logits = [1.0f32, 3.0, 2.0, -1.0];
            let p = reference_probs(&logits, 0.0, None, None);
            for (mode, want) in [
                (Confidence::Probability, p[1]),
                (Confidence::Margin, p[1] - p[2]),
                (
                    Confidence::NegEntropy,
                    p.iter().map(|&q| q * (q + 1e-10).ln()).sum(),
                ),
                // Temperature 0 changes nothing: the untempered softmax is p.
                (Confidence::RawProbability, p[1]),
            ] {
                let s = sample(t2(&[&logits]), None, &params(0.0, None, None, mode)).unwrap();
                assert_eq!(ints(s.tokens), vec![1], "{name}");
                let got = floats(s.confidence)[0] as f64;
                assert!(
                    (got - want).abs() < 1e-6,
                    "{name} {mode:?}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn top_p_keeps_the_top1_and_renormalises() {
        for (name, sample) in SAMPLERS {
            // softmax(logits): the top token holds 0.83 of the mass, so top-p 0.5 keeps only it
            // (probability 1, entropy 0); larger top-p keep more and renormalise.
            let logits = [0.0f32, 4.0, 1.0, 2.0];
            let s = sample(
                t2(&[&logits]),
                None,
                &params(0.0, Some(0.5), None, Confidence::NegEntropy),
            )
            .unwrap();
            assert_eq!(ints(s.tokens), vec![1], "{name}");
            assert!(floats(s.confidence)[0].abs() < 1e-6, "{name}");
            for top_p in [0.3f32, 0.85, 0.9, 0.97, 0.999] {
                // Dream does not divide by a zero temperature: the untempered distribution is filtered.
                let want = reference_probs(&logits, 0.0, Some(top_p), None);
                let s = sample(
                    t2(&[&logits]),
                    None,
                    &params(0.0, Some(top_p), None, Confidence::Probability),
                )
                .unwrap();
                let got = floats(s.confidence)[0] as f64;
                assert!(
                    (got - want[1]).abs() < 1e-6,
                    "{name} top_p {top_p}: {got} vs {}",
                    want[1]
                );
            }
            let kept = |p: f32| {
                reference_probs(&logits, 0.0, Some(p), None)
                    .iter()
                    .filter(|&&q| q > 0.0)
                    .count()
            };
            assert_eq!(
                (kept(0.5), kept(0.85), kept(0.95), kept(0.999)),
                (1, 2, 3, 4)
            );
        }
    }

    #[test]
    fn top_k_keeps_ties_and_applies_after_top_p() {
        for (name, sample) in SAMPLERS {
            let logits = [1.0f32, 3.0, 2.0, 2.0, -1.0];
            // top-k 2 keeps 3.0 and both 2.0s (ties at the k-th value).
            let want = reference_probs(&logits, 0.0, None, Some(2));
            assert!(want[2] > 0.0 && want[3] > 0.0 && want[0] == 0.0);
            let s = sample(
                t2(&[&logits]),
                None,
                &params(0.0, None, Some(2), Confidence::NegEntropy),
            )
            .unwrap();
            let h: f64 = want.iter().map(|&q| q * (q + 1e-10).ln()).sum();
            assert!((floats(s.confidence)[0] as f64 - h).abs() < 1e-5, "{name}");
        }
    }

    #[test]
    fn inverse_cdf_sampling_follows_the_filtered_distribution() {
        for (name, sample) in SAMPLERS {
            // Every uniform on a fine grid maps to a token; the counts must equal the probabilities.
            let logits = [0.5f32, 2.0, 1.0, -3.0, 1.5];
            for (top_p, top_k) in [
                (None, None),
                (Some(0.8), None),
                (None, Some(3)),
                (Some(0.95), Some(2)),
            ] {
                let want = reference_probs(&logits, 1.3, top_p, top_k);
                let n = 20_000;
                let rows: Vec<&[f32]> = (0..n).map(|_| &logits[..]).collect();
                let u: Vec<f32> = (0..n).map(|i| (i as f32 + 0.5) / n as f32).collect();
                let s = sample(
                    t2(&rows),
                    Some(col(&u)),
                    &params(1.3, top_p, top_k, Confidence::Probability),
                )
                .unwrap();
                let toks = ints(s.tokens);
                let confs = floats(s.confidence);
                for (tok, &p) in want.iter().enumerate() {
                    let freq = toks.iter().filter(|&&t| t == tok as i64).count() as f64 / n as f64;
                    assert!(
                        (freq - p).abs() < 2e-3,
                        "{name} {top_p:?}/{top_k:?} token {tok}: {freq} vs {p}"
                    );
                }
                for (t, c) in toks.iter().zip(&confs) {
                    assert!(
                        (*c as f64 - want[*t as usize]).abs() < 1e-5,
                        "{name}: confidence is the token's probability"
                    );
                }
            }
        }
    }

    #[test]
    fn the_banned_token_is_never_drawn() {
        for (name, sample) in SAMPLERS {
            let logits = [5.0f32, 0.0, 1.0];
            let p = SampleParams {
                banned_token: Some(0),
                ..params(0.0, None, None, Confidence::Probability)
            };
            let s = sample(t2(&[&logits]), None, &p).unwrap();
            assert_eq!(ints(s.tokens), vec![2], "{name}");
            let u: Vec<f32> = (0..100).map(|i| i as f32 / 100.0).collect();
            let rows: Vec<&[f32]> = (0..100).map(|_| &logits[..]).collect();
            let p = SampleParams {
                temperature: 0.5,
                top_p: Some(0.9),
                ..p
            };
            let s = sample(t2(&rows), Some(col(&u)), &p).unwrap();
            assert!(ints(s.tokens).iter().all(|&t| t != 0), "{name}");
        }
    }

    #[test]
    fn sampling_needs_uniforms_at_positive_temperature() {
        for (name, sample) in SAMPLERS {
            let e = sample(
                t2(&[&[1.0, 2.0]]),
                None,
                &params(1.0, None, None, Confidence::Probability),
            );
            assert!(e.unwrap_err().to_string().contains("uniforms"), "{name}");
        }
    }

    #[test]
    fn host_and_device_samplers_agree_on_random_rows() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let (rows, vocab) = (64, 300);
        let logits: Vec<f32> = (0..rows * vocab)
            .map(|_| rng.random_range(-4.0f32..4.0))
            .collect();
        let u: Vec<f32> = (0..rows).map(|_| rng.random::<f32>()).collect();
        let t = || {
            Tensor::<Cpu, 2>::from_data(
                TensorData::new(logits.clone(), [rows, vocab]),
                &Default::default(),
            )
        };
        for temperature in [0.0f32, 1.2] {
            for (top_p, top_k) in [
                (None, None),
                (Some(0.9), None),
                (None, Some(20)),
                (Some(0.95), Some(50)),
            ] {
                for confidence in [
                    Confidence::Probability,
                    Confidence::Margin,
                    Confidence::NegEntropy,
                    Confidence::RawProbability,
                ] {
                    let p = SampleParams {
                        banned_token: Some(7),
                        ..params(temperature, top_p, top_k, confidence)
                    };
                    let uniforms = (temperature > 0.0).then(|| col(&u));
                    let host = sample_tokens(t(), uniforms.clone(), &p).unwrap();
                    let device = sample_tokens_on_device(t(), uniforms, &p).unwrap();
                    let (ht, dt) = (ints(host.tokens), ints(device.tokens));
                    let (hc, dc) = (floats(host.confidence), floats(device.confidence));
                    // Different exp/summation orders may move a uniform across a CDF step only
                    // when it lies within rounding of it: allow one such row of 64.
                    let same = ht.iter().zip(&dt).filter(|(a, b)| a == b).count();
                    assert!(same >= rows - 1, "{p:?}: {same}/{rows} tokens agree");
                    for r in (0..rows).filter(|&r| ht[r] == dt[r]) {
                        assert!(
                            (hc[r] - dc[r]).abs() < 2e-5,
                            "{p:?} row {r}: {} vs {}",
                            hc[r],
                            dc[r]
                        );
                    }
                    assert!(ht.iter().all(|&t| t != 7), "{p:?}: banned token drawn");
                }
            }
        }
    }

    #[test]
    fn per_row_top_k_is_per_row() {
        let scores = t2(&[&[0.1, 0.9, 0.5, f32::NEG_INFINITY], &[0.8, 0.7, 0.6, 0.5]]);
        let k: Tensor<Cpu, 2, Int> =
            Tensor::from_data(TensorData::new(vec![2i64, 1], [2, 1]), &Default::default());
        let picked = ints(top_k_per_row(scores, k).int());
        // A flat top-3 over the batch would take 0.9, 0.8, 0.7.
        assert_eq!(picked, vec![0, 1, 1, 0, 1, 0, 0, 0]);
    }

    #[test]
    fn gumbel_top_k_samples_proportionally() {
        // Top-1 of Gumbel scores picks column j with probability softmax(conf / temp)_j.
        use rand::SeedableRng;
        let conf = [0.0f32, 1.0, 2.0];
        let temp = 0.5;
        let n = 20_000;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let rows: Vec<&[f32]> = (0..n).map(|_| &conf[..]).collect();
        let u: Vec<f32> = (0..n * 3).map(|_| open_uniform(&mut rng)).collect();
        let u = Tensor::from_data(TensorData::new(u, [n, 3]), &Default::default());
        let k: Tensor<Cpu, 2, Int> = Tensor::ones([n, 1], &Default::default());
        let picked = ints(top_k_per_row(gumbel_scores(t2(&rows), u, temp), k).int());
        let z: f64 = conf.iter().map(|&c| (c as f64 / temp as f64).exp()).sum();
        for j in 0..3 {
            let freq = (0..n).filter(|r| picked[r * 3 + j] == 1).count() as f64 / n as f64;
            let want = (conf[j] as f64 / temp as f64).exp() / z;
            assert!((freq - want).abs() < 0.015, "column {j}: {freq} vs {want}");
        }
    }
}
