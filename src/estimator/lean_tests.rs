//! The lean scoring path against the reference: the fused head against Burn's own log-softmax
//! and gather, and every estimator's scores and parameter gradients against the full-logit path.

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Distribution, Int, Tensor, TensorData};

use super::*;
use crate::backend::CpuAutodiff as Ad;
use crate::model::{DiffusionLm, ModelConfig};

/// A tiny model (vocab 64) whose log-probs depend visibly on the context.
fn model(tied: bool, dtype: DType) -> DiffusionLm<Ad> {
    let mut config = ModelConfig::preset("tiny").unwrap();
    config.vocab_size = 64;
    config.initializer_range = 0.35;
    config.tie_word_embeddings = tied;
    DiffusionLm::init_with(&config, &Default::default(), 11, dtype)
}

/// Two rows, P = 5 (row 1 left-padded by 2), K = 10.
fn batch() -> ScoreBatch {
    ScoreBatch::new(
        vec![vec![10, 11, 12, 13, 14], vec![4, 4, 20, 21, 22]],
        vec![vec![1, 1, 1, 1, 1], vec![0, 0, 1, 1, 1]],
        vec![
            (30..40).collect(),
            vec![40, 41, 42, 43, 44, 45, 46, 47, 48, 63],
        ],
    )
    .unwrap()
}

/// Every estimator on `path`, with logits chunked to a few rows (bytes = 1000: 3 rows of the
/// lean head, 1 sequence of the full path).
fn estimators(path: ScoringPath) -> Vec<Estimator> {
    let bytes = 1000;
    let pair = PairOptions::default();
    vec![
        Estimator::Coupled(Coupled {
            path,
            ..Coupled::new(pair.clone(), bytes).unwrap()
        }),
        Estimator::Decoupled(Decoupled {
            path,
            ..Decoupled::new(pair, bytes).unwrap()
        }),
        Estimator::D1(D1 {
            path,
            ..D1::new(0.3, bytes).unwrap()
        }),
        Estimator::FullMask(FullMask {
            max_logit_bytes: bytes,
            path,
        }),
    ]
}

/// Every float parameter's gradient, flattened, in visiting order (empty when untracked).
struct CollectGrads<'a> {
    grads: &'a <Ad as AutodiffBackend>::Gradients,
    out: Vec<Vec<f32>>,
}

impl ModuleVisitor<Ad> for CollectGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Ad, D>>) {
        let g = param
            .val()
            .grad(self.grads)
            .map(|g| g.into_data().convert::<f32>().to_vec::<f32>().expect("f32"));
        self.out.push(g.unwrap_or_default());
    }
}

/// `(scores, parameter gradients)` of `Σ c_rk · score_rk` with fixed, varied coefficients.
fn scores_and_grads(
    est: &Estimator,
    model: &DiffusionLm<Ad>,
    b: &ScoreBatch,
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let scores = est
        .score(model, b, MaskSeed::new(3, 1, 0))
        .unwrap()
        .per_token;
    let [rows, k] = scores.dims();
    let coef: Vec<f32> = (0..rows * k)
        .map(|i| ((i % 7) as f32 - 3.0) * 0.1 + 0.05)
        .collect();
    let coef = Tensor::<Ad, 2>::from_data(TensorData::new(coef, [rows, k]), &Default::default());
    let grads = (scores.clone() * coef).sum().backward();
    let mut visitor = CollectGrads {
        grads: &grads,
        out: Vec::new(),
    };
    model.visit(&mut visitor);
    let values = scores.into_data().convert::<f32>().to_vec().unwrap();
    (values, visitor.out)
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * scale,
            "{what}[{i}]: {g} vs {w} (scale {scale})"
        );
    }
}

fn lean_matches_full(tied: bool, dtype: DType, tol: f32) {
    let (m, b) = (model(tied, dtype), batch());
    for (lean, full) in estimators(ScoringPath::Lean)
        .iter()
        .zip(estimators(ScoringPath::Full))
    {
        let name = lean.name();
        let (s_lean, g_lean) = scores_and_grads(lean, &m, &b);
        let (s_full, g_full) = scores_and_grads(&full, &m, &b);
        assert_close(&format!("{name} scores"), &s_lean, &s_full, tol);
        assert_eq!(g_lean.len(), g_full.len());
        assert!(
            g_full.iter().all(|g| !g.is_empty()),
            "every parameter has a gradient"
        );
        for (i, (gl, gf)) in g_lean.iter().zip(&g_full).enumerate() {
            assert_close(&format!("{name} grad of parameter {i}"), gl, gf, tol);
        }
    }
}

#[test]
fn lean_scores_and_gradients_equal_the_full_logit_path_for_every_estimator() {
    lean_matches_full(false, DType::F32, 1e-4);
}

#[test]
fn lean_path_with_tied_embeddings_equals_the_full_logit_path() {
    lean_matches_full(true, DType::F32, 1e-4);
}

#[test]
fn lean_path_in_bf16_equals_the_full_logit_path() {
    // bf16 runs the generic node (Burn's ops on the inner backend) rather than the flex kernels.
    lean_matches_full(false, DType::BF16, 3e-2);
}

/// `(log p(target), dh, dW)` of `Σ c_i log p_i` by Burn's log-softmax and gather.
fn reference_head(
    h: Tensor<Ad, 2>,
    w: Tensor<Ad, 2>,
    layout: HeadLayout,
    targets: &[i64],
    coef: Tensor<Ad, 1>,
) -> (Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
    let m = targets.len();
    let wt = match layout {
        HeadLayout::InOut => w.clone(),
        HeadLayout::OutIn => w.clone().transpose(),
    };
    let idx =
        Tensor::<Ad, 2, Int>::from_data(TensorData::new(targets.to_vec(), [m, 1]), &h.device());
    let lp = log_softmax(h.clone().matmul(wt), 1)
        .gather(1, idx)
        .reshape([m]);
    let grads = (lp.clone() * coef).sum().backward();
    let host = |t: Tensor<burn::backend::Flex, 2>| t.into_data().to_vec::<f32>().unwrap();
    (
        lp.into_data().to_vec().unwrap(),
        host(h.grad(&grads).unwrap()),
        w.grad(&grads).map(host),
    )
}

#[test]
fn fused_head_matches_log_softmax_and_gather_in_both_layouts_and_skips_a_frozen_weight() {
    let dev = Default::default();
    let (m, d, vocab) = (7, 5, 50);
    let targets: Vec<i64> = (0..m as i64).map(|i| (i * 13 + 2) % vocab as i64).collect();
    let coef = Tensor::<Ad, 1>::from_data(
        TensorData::new(vec![0.5f32, -1.0, 2.0, 0.0, 1.5, -0.25, 1.0], [m]),
        &dev,
    );
    let h0 = Tensor::<Ad, 2>::random([m, d], Distribution::Normal(0.0, 1.0), &dev);
    for layout in [HeadLayout::InOut, HeadLayout::OutIn] {
        let shape = match layout {
            HeadLayout::InOut => [d, vocab],
            HeadLayout::OutIn => [vocab, d],
        };
        let w0 = Tensor::<Ad, 2>::random(shape, Distribution::Normal(0.0, 1.0), &dev);
        for frozen in [false, true] {
            let h = h0.clone().detach().require_grad();
            let w = if frozen {
                w0.clone().detach()
            } else {
                w0.clone().detach().require_grad()
            };
            let want = reference_head(h.clone(), w.clone(), layout, &targets, coef.clone());
            // 3 rows of logits per chunk: the last chunk is partial.
            let t = Tensor::<Ad, 1, Int>::from_data(TensorData::new(targets.clone(), [m]), &dev);
            let head = HeadWeight {
                weight: w.clone(),
                layout,
            };
            let lp = target_log_probs(h.clone(), head, t, 3 * vocab * 4);
            let grads = (lp.clone() * coef.clone()).sum().backward();
            let got_lp: Vec<f32> = lp.into_data().to_vec().unwrap();
            let got_dh: Vec<f32> = h.grad(&grads).unwrap().into_data().to_vec().unwrap();
            let what = format!("{layout:?} frozen={frozen}");
            assert_close(&format!("{what} lp"), &got_lp, &want.0, 1e-5);
            assert_close(&format!("{what} dh"), &got_dh, &want.1, 1e-5);
            match (w.grad(&grads), want.2) {
                (Some(g), Some(want_dw)) => {
                    let g: Vec<f32> = g.into_data().to_vec().unwrap();
                    assert_close(&format!("{what} dW"), &g, &want_dw, 1e-5);
                }
                (None, None) => assert!(frozen),
                (got, want) => panic!(
                    "{what}: weight gradient present {} vs reference {}",
                    got.is_some(),
                    want.is_some()
                ),
            }
        }
    }
}

#[test]
fn scoring_without_autodiff_equals_the_full_path() {
    // π_old / π_ref scoring runs on the inner backend: no graph, same values.
    let m = model(true, DType::F32).valid();
    let b = batch();
    for (lean, full) in estimators(ScoringPath::Lean)
        .iter()
        .zip(estimators(ScoringPath::Full))
    {
        let seed = MaskSeed::new(8, 2, 1);
        let got = lean.score(&m, &b, seed).unwrap().per_token;
        let want = full.score(&m, &b, seed).unwrap().per_token;
        assert_close(
            lean.name(),
            &got.into_data().to_vec::<f32>().unwrap(),
            &want.into_data().to_vec::<f32>().unwrap(),
            1e-5,
        );
    }
}
