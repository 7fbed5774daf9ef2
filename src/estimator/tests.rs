//! Estimator tests on a tiny random model (CPU).

use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, Int, Tensor, TensorData};

use super::coupled::pair_views;
use super::*;
use crate::backend::Cpu;
use crate::model::{shift_logits, DiffusionLm, ModelConfig};

/// A tiny model whose log-probs depend visibly on the context (larger init than HF's 0.02).
fn model() -> DiffusionLm<Cpu> {
    let mut config = ModelConfig::preset("tiny").unwrap();
    config.vocab_size = 64;
    config.initializer_range = 0.35;
    DiffusionLm::init_with(&config, &Default::default(), 11, DType::F32)
}

/// Two rows, P = 5 (row 1 left-padded by 2), K = 10.
fn batch() -> ScoreBatch {
    ScoreBatch::new(
        vec![vec![10, 11, 12, 13, 14], vec![4, 4, 20, 21, 22]],
        vec![vec![1, 1, 1, 1, 1], vec![0, 0, 1, 1, 1]],
        vec![
            vec![30, 31, 32, 33, 34, 35, 36, 37, 38, 39],
            vec![40, 41, 42, 43, 44, 45, 46, 47, 48, 49],
        ],
    )
    .unwrap()
}

fn host(t: Tensor<Cpu, 2>) -> Vec<Vec<f32>> {
    let [r, k] = t.dims();
    let v = t.into_data().to_vec::<f32>().unwrap();
    (0..r).map(|i| v[i * k..(i + 1) * k].to_vec()).collect()
}

fn coupled() -> Coupled {
    Coupled::new(PairOptions::default(), DEFAULT_MAX_LOGIT_BYTES).unwrap()
}

fn decoupled() -> Decoupled {
    Decoupled::new(PairOptions::default(), DEFAULT_MAX_LOGIT_BYTES).unwrap()
}

/// log p(target) for explicit inputs, via the model's full logits and `shift_logits`.
fn reference_lp(
    model: &DiffusionLm<Cpu>,
    ids: Vec<i64>,
    mask: Vec<i64>,
    targets: &[Vec<u32>],
    p: usize,
) -> Vec<Vec<f32>> {
    let rows = targets.len();
    let (k, l) = (targets[0].len(), ids.len() / rows);
    let dev = Default::default();
    let ids = Tensor::<Cpu, 2, Int>::from_data(TensorData::new(ids, [rows, l]), &dev);
    let mask = Tensor::<Cpu, 2, Int>::from_data(TensorData::new(mask, [rows, l]), &dev);
    let lp = log_softmax(shift_logits(model.forward(ids, Some(mask))), 2);
    let v = lp.into_data().to_vec::<f32>().unwrap();
    let vocab = model.config().vocab_size;
    (0..rows)
        .map(|r| {
            (0..k)
                .map(|j| v[(r * l + p + j) * vocab + targets[r][j] as usize])
                .collect()
        })
        .collect()
}

fn attention(b: &ScoreBatch) -> Vec<i64> {
    let k = b.completion_len();
    b.prompt_mask
        .iter()
        .flat_map(|m| m.iter().map(|&x| x as i64).chain(std::iter::repeat_n(1, k)))
        .collect()
}

#[test]
fn gather_matches_shifted_full_logits_and_is_chunk_invariant() {
    let (m, b) = (model(), batch());
    let view = base::build_view(&b, 3, |_| (None, vec![true; 10]), |_, _| 1.0);
    let expected = reference_lp(
        &m,
        view.input_ids.clone(),
        attention(&b),
        &b.completion_ids,
        5,
    );
    let paths = [ScoringPath::Lean, ScoringPath::Full];
    for (bytes, path) in [DEFAULT_MAX_LOGIT_BYTES, 1]
        .into_iter()
        .flat_map(|b| paths.map(|p| (b, p)))
    {
        let got = host(score_views(&m, &b, std::slice::from_ref(&view), bytes, path).unwrap());
        for r in 0..2 {
            for j in 0..10 {
                assert!(
                    (got[r][j] - expected[r][j]).abs() < 1e-5,
                    "row {r} tok {j}: {} vs {}",
                    got[r][j],
                    expected[r][j]
                );
            }
        }
    }
}

#[test]
fn coupled_weights_match_the_released_formula() {
    let (m, b) = (model(), batch());
    let seed = MaskSeed::new(5, 1, 0);
    let (views, ratios) = pair_views(&PairOptions::default(), &b, &seed, 3, true);
    assert_eq!(views.len(), 3);
    let t = ratios[0];
    assert!((0.2..0.8).contains(&t));
    // Weights: v0 ½ everywhere; exactly one of v1/v2 carries ½/t or ½/(1−t), and only where it masks.
    let l = b.seq_len();
    for r in 0..2 {
        for j in 0..10 {
            let w: Vec<f32> = views.iter().map(|v| v.weights[r * 10 + j]).collect();
            let masked: Vec<bool> = views
                .iter()
                .map(|v| v.input_ids[r * l + 5 + j] == 3)
                .collect();
            assert_eq!(w[0], 0.5);
            assert!(masked[0]);
            assert!(masked[1] ^ masked[2], "complementary");
            if masked[1] {
                assert!((w[1] - 0.5 / t).abs() < 1e-6 && w[2] == 0.0);
            } else {
                assert!((w[2] - 0.5 / (1.0 - t)).abs() < 1e-6 && w[1] == 0.0);
            }
            // Prompts are never masked.
            for v in &views {
                assert_eq!(
                    &v.input_ids[r * l..r * l + 5],
                    &b.prompt_ids[r]
                        .iter()
                        .map(|&x| x as i64)
                        .collect::<Vec<_>>()[..]
                );
            }
        }
    }
    // The estimator equals ½(lp0 + [M ? lp1/t : lp2/(1−t)]) from explicit forwards.
    let scores = coupled().score(&m, &b, seed).unwrap();
    assert_eq!(scores.forward_passes, 6);
    assert_eq!(scores.ratios, vec![t]);
    let got = host(scores.per_token);
    let lps: Vec<Vec<Vec<f32>>> = views
        .iter()
        .map(|v| reference_lp(&m, v.input_ids.clone(), attention(&b), &b.completion_ids, 5))
        .collect();
    for r in 0..2 {
        for j in 0..10 {
            let in_v1 = views[1].input_ids[r * l + 5 + j] == 3;
            let part = if in_v1 {
                lps[1][r][j] / t
            } else {
                lps[2][r][j] / (1.0 - t)
            };
            let want = 0.5 * (lps[0][r][j] + part);
            assert!((got[r][j] - want).abs() < 1e-4, "{} vs {want}", got[r][j]);
        }
    }
}

#[test]
fn masks_are_identical_for_a_chunk_and_the_whole_batch() {
    let (m, b) = (model(), batch());
    let seed = MaskSeed::new(9, 4, 1);
    for est in [
        Estimator::Coupled(coupled()),
        Estimator::Decoupled(decoupled()),
        Estimator::D1(D1::new(0.5, 1 << 20).unwrap()),
    ] {
        let whole = host(est.score(&m, &b, seed).unwrap().per_token);
        let part = host(est.score(&m, &b.select(1..2), seed).unwrap().per_token);
        for j in 0..10 {
            assert!(
                (whole[1][j] - part[0][j]).abs() < 1e-4,
                "{}: {} vs {}",
                est.name(),
                whole[1][j],
                part[0][j]
            );
        }
        // Another iteration draws other masks.
        let other = host(est.score(&m, &b, MaskSeed::new(9, 4, 2)).unwrap().per_token);
        assert_ne!(whole, other, "{}", est.name());
    }
}

#[test]
fn d1_masks_only_real_prompt_tokens_and_full_mask_is_seed_free() {
    let b = ScoreBatch::new(
        vec![vec![4; 40].into_iter().chain(10..50).collect()],
        vec![[0; 40].into_iter().chain([1; 40]).collect()],
        vec![vec![7; 4]],
    )
    .unwrap();
    let mut masked = 0;
    for it in 0..20 {
        let seed = MaskSeed::new(1, 0, it);
        let view = base::build_view(
            &b,
            3,
            |r| {
                (
                    Some(masks::bernoulli_mask(
                        &masks::row_uniforms(&seed, b.row_index[r], 1, 80)[0],
                        0.15,
                    )),
                    vec![true; 4],
                )
            },
            |_, _| 1.0,
        );
        assert!(
            view.input_ids[..40].iter().all(|&x| x == 4),
            "pads never masked"
        );
        masked += view.input_ids[40..80].iter().filter(|&&x| x == 3).count();
    }
    let rate = masked as f64 / 800.0;
    assert!((0.10..0.20).contains(&rate), "prompt mask rate {rate}");
    let (m, b) = (model(), batch());
    let fm = FullMask {
        max_logit_bytes: 1 << 20,
        path: ScoringPath::Lean,
    };
    let a = host(fm.score(&m, &b, MaskSeed::new(1, 2, 3)).unwrap().per_token);
    let c = host(fm.score(&m, &b, MaskSeed::new(4, 5, 6)).unwrap().per_token);
    assert_eq!(a, c);
    let d1 = host(
        D1::new(0.0, 1 << 20)
            .unwrap()
            .score(&m, &b, MaskSeed::new(4, 5, 6))
            .unwrap()
            .per_token,
    );
    assert_eq!(a, d1, "d1 with p = 0 is the full-mask estimator");
}

/// Per-sequence sums (over the completion) of an estimator across `seeds` iterations.
fn sequence_sums(
    est: &Estimator,
    m: &DiffusionLm<Cpu>,
    b: &ScoreBatch,
    seeds: u64,
) -> Vec<Vec<f64>> {
    (0..seeds)
        .map(|s| {
            host(est.score(m, b, MaskSeed::new(77, 0, s)).unwrap().per_token)
                .iter()
                .map(|row| row.iter().map(|&x| x as f64).sum())
                .collect()
        })
        .collect()
}

fn mean_var(xs: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let n = xs.clone().count() as f64;
    let mean = xs.clone().sum::<f64>() / n;
    (
        mean,
        xs.map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0),
    )
}

#[test]
fn coupled_mean_matches_monte_carlo_elbo_and_beats_decoupled_variance() {
    let (m, b) = (model(), batch());
    let seeds = 400;
    let coupled_sums = sequence_sums(&Estimator::Coupled(coupled()), &m, &b, seeds);
    let decoupled_sums = sequence_sums(&Estimator::Decoupled(decoupled()), &m, &b, seeds);
    let lp0 = host(
        FullMask {
            max_logit_bytes: 1 << 20,
            path: ScoringPath::Lean,
        }
        .score(&m, &b, MaskSeed::new(0, 0, 0))
        .unwrap()
        .per_token,
    );
    let draws = 3000;
    let elbo = mc_elbo(&m, &b, draws, (0.2, 0.8), MaskSeed::new(123, 0, 0), 500).unwrap();
    for r in 0..2 {
        let (c_mean, c_var) = mean_var(coupled_sums.iter().map(|s| s[r]));
        let (d_mean, d_var) = mean_var(decoupled_sums.iter().map(|s| s[r]));
        // E[score] = ½(lp0 + 2·ELBO) for λ = 1 with the full-mask pass.
        let lp0_sum: f64 = lp0[r].iter().map(|&x| x as f64).sum();
        let elbo_sum: f64 = elbo[r].iter().sum();
        let target = 0.5 * (lp0_sum + 2.0 * elbo_sum);
        // Standard errors: coupled mean over `seeds`; the ELBO's from its own spread (bounded
        // by the decoupled per-sequence variance, which has one draw per pass).
        let se = (c_var / seeds as f64 + d_var / draws as f64).sqrt();
        eprintln!(
            "row {r}: coupled {c_mean:.3} (var {c_var:.3}), decoupled {d_mean:.3} (var {d_var:.3}), target {target:.3}, se {se:.3}"
        );
        assert!(
            (c_mean - target).abs() < 4.0 * se + 1e-3 * target.abs(),
            "coupled mean {c_mean} vs MC ELBO target {target}"
        );
        assert!(
            (d_mean - target).abs() < 6.0 * (d_var / seeds as f64).sqrt() + 1e-3 * target.abs(),
            "decoupled is unbiased too"
        );
        assert!(
            c_var < 0.7 * d_var,
            "coupled variance {c_var} must be well below decoupled {d_var}"
        );
    }
}
