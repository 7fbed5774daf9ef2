//! [`super::sampling::sample_tokens`] evaluated on the host, one row per task: the path the
//! flex CPU backend takes, where "host" and "device" are the same memory.
//!
//! Same semantics and the same uniforms as the tensor path (temperature → top-p keeping the
//! top-1 → top-k → softmax → inverse-CDF sample in sorted order), but each row is one pass of
//! fused, vectorised loops with an O(vocab) radix sort instead of Burn's comparison sort and a
//! dozen full-size intermediate tensors. The negative entropy is computed as
//! `Σ p·(x − max) − ln Z` from the softmax's own partition; it differs from
//! `Σ p·ln(p + 1e-10)` by at most `vocab · 1e-10`.

use rayon::prelude::*;

use super::sampling::{Confidence, SampleParams};
use crate::cpu::math::softmax_inplace;
use crate::cpu::sort::{argsort_descending, RadixScratch};

#[derive(Default)]
struct Scratch {
    /// Tempered logits (in descending order when a filter is on).
    x: Vec<f32>,
    /// Probabilities, in the same order as `x`.
    p: Vec<f32>,
    /// `x` gathered into sorted order before it replaces `x`.
    sorted: Vec<f32>,
    order: Vec<u32>,
    radix: RadixScratch,
}

/// Samples one token per row of `logits` (`[rows, vocab]` row-major) and returns
/// `(confidence, token)` per row. `uniforms` holds one value in `[0, 1)` per row and is required
/// when `params.temperature > 0` (the caller validates shapes).
pub fn sample_rows(
    logits: &[f32],
    vocab: usize,
    uniforms: Option<&[f32]>,
    params: &SampleParams,
) -> (Vec<f32>, Vec<i64>) {
    let rows = logits.len() / vocab;
    let mut confidence = vec![0.0f32; rows];
    let mut tokens = vec![0i64; rows];
    confidence
        .par_iter_mut()
        .zip(tokens.par_iter_mut())
        .zip(logits.par_chunks(vocab))
        .enumerate()
        .for_each_init(Scratch::default, |s, (r, ((c, t), row))| {
            (*c, *t) = sample_row(row, uniforms.map(|u| u[r]), params, s);
        });
    (confidence, tokens)
}

/// `(max, Z)` of the softmax of `x` written into `p`.
fn softmax_into(x: &[f32], p: &mut Vec<f32>) -> (f32, f32) {
    p.clear();
    p.extend_from_slice(x);
    softmax_inplace(p)
}

fn sample_row(row: &[f32], u: Option<f32>, params: &SampleParams, s: &mut Scratch) -> (f32, i64) {
    let vocab = row.len();
    let top_p = params.top_p.filter(|&p| p < 1.0);
    let top_k = params.top_k.filter(|&k| k < vocab);
    let filtered = top_p.is_some() || top_k.is_some();

    let temper = |x: f32| {
        if params.temperature > 0.0 {
            x / params.temperature
        } else {
            x
        }
    };
    let banned = params
        .banned_token
        .map(|b| b as usize)
        .filter(|&b| b < vocab);
    s.x.clear();
    s.x.extend(row.iter().map(|&x| temper(x)));
    if let Some(b) = banned {
        s.x[b] = f32::MIN;
    }
    if filtered {
        argsort_descending(&s.x, &mut s.order, &mut s.radix);
        s.sorted.clear();
        s.sorted.extend(s.order.iter().map(|&i| s.x[i as usize]));
        std::mem::swap(&mut s.x, &mut s.sorted);
        if let Some(top_p) = top_p {
            // HF: drop sorted entry i when the mass strictly before it exceeds top_p.
            softmax_into(&s.x, &mut s.p);
            let mut before = 0.0f32;
            let cut =
                s.p.iter()
                    .position(|&q| {
                        let over = before > top_p;
                        before += q;
                        over
                    })
                    .unwrap_or(vocab);
            s.x[cut..].fill(f32::MIN);
        }
        if let Some(k) = top_k {
            // Keep every logit ≥ the k-th largest (ties kept); the tail is sorted below it.
            let kth = s.x[k - 1];
            s.x[k..]
                .iter_mut()
                .filter(|x| **x < kth)
                .for_each(|x| *x = f32::MIN);
        }
    }
    let (max, z) = softmax_into(&s.x, &mut s.p);
    let p = &s.p;

    let (index, p_token) = match u {
        Some(u) => {
            // j = #{i : cdf_i ≤ u · cdf_last}, summed in the same order as the cdf.
            let total: f32 = p.iter().fold(0.0, |a, &q| a + q);
            let target = u * total;
            let mut cdf = 0.0f32;
            let j = p
                .iter()
                .take_while(|&&q| {
                    cdf += q;
                    cdf <= target
                })
                .count()
                .min(vocab - 1);
            (j, p[j])
        }
        None if filtered => (0, p[0]),
        None => {
            let j = argmax(p);
            (j, p[j])
        }
    };
    let token = if filtered {
        s.order[index] as i64
    } else {
        index as i64
    };

    let confidence = match params.confidence {
        Confidence::Probability => p_token,
        Confidence::Margin if filtered => p[0] - p[1],
        Confidence::Margin => {
            let top1 = argmax(p);
            let top2 = p
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != top1)
                .fold(f32::NEG_INFINITY, |m, (_, &q)| m.max(q));
            p[top1] - top2
        }
        Confidence::NegEntropy => {
            let dot: f32 = p
                .iter()
                .zip(&s.x)
                .filter(|(&q, _)| q > 0.0)
                .map(|(&q, &x)| q * (x - max))
                .sum();
            dot - z.ln()
        }
        Confidence::RawProbability => {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let z: f32 = row.iter().map(|&x| (x - max).exp()).sum();
            (row[token as usize] - max).exp() / z
        }
    };
    (confidence, token)
}

/// Index of the first maximum.
fn argmax(p: &[f32]) -> usize {
    p.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bj, bq), (j, &q)| {
            if q > bq {
                (j, q)
            } else {
                (bj, bq)
            }
        })
        .0
}
