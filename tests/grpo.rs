//! GRPO integration tests on a tiny random model (CPU, flex): the loss gradient against finite
//! differences, the first-iteration ratio, the zero-signal update, the direction of an update,
//! bit-identical resume (f32 and bf16), and bf16 updates through f32 master weights.

mod common;

use std::sync::Arc;

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Distribution, Tensor, TensorData};
use common::{host, params, tasks, tiny_config, train_config, Letters};
use coupled_grpo::backend::{Cpu, CpuAutodiff, CpuAutodiffCheckpointed};
use coupled_grpo::estimator::{
    Coupled, LikelihoodEstimator, MaskSeed, PairOptions, ScoreBatch, DEFAULT_MAX_LOGIT_BYTES,
};
use coupled_grpo::grpo::advantage::AdvantageStats;
use coupled_grpo::grpo::{
    grpo_loss, GrpoOptimizer, LossConfig, OptimizerConfig, Rewards, TrainConfig, Trainer,
    WeightedReward,
};
use coupled_grpo::model::{byte_level_tokenizer, DiffusionLm};
use coupled_grpo::rollout::RolloutBatch;

fn tiny_model(seed: u64) -> DiffusionLm<CpuAutodiff> {
    tiny_model_in(seed, DType::F32)
}

fn tiny_model_in(seed: u64, dtype: DType) -> DiffusionLm<CpuAutodiff> {
    DiffusionLm::init_with(&tiny_config(), &Default::default(), seed, dtype)
}

/// A fixed batch: 4 rows, P = 6 (two rows left-padded), K = 8.
fn batch() -> ScoreBatch {
    let p = |ids: [u32; 6]| ids.to_vec();
    ScoreBatch::new(
        vec![
            p([10, 11, 12, 13, 14, 15]),
            p([4, 4, 20, 21, 22, 23]),
            p([30, 31, 32, 33, 34, 35]),
            p([4, 40, 41, 42, 43, 44]),
        ],
        vec![
            vec![1; 6],
            vec![0, 0, 1, 1, 1, 1],
            vec![1; 6],
            vec![0, 1, 1, 1, 1, 1],
        ],
        (0..4)
            .map(|r| (0..8).map(|k| 60 + 10 * r + k).collect())
            .collect(),
    )
    .unwrap()
}

fn coupled() -> Coupled {
    Coupled::new(PairOptions::default(), DEFAULT_MAX_LOGIT_BYTES).unwrap()
}

/// The GRPO loss of `model` on `batch` against fixed old/ref scores.
fn loss_of<B: burn::tensor::backend::Backend>(
    model: &DiffusionLm<B>,
    b: &ScoreBatch,
    old: &[f32],
    reference: &[f32],
    adv: &[f32],
    mask: &[f32],
    cfg: &LossConfig,
) -> Tensor<B, 1> {
    let dev = model.embed_tokens.val().device();
    let (rows, k) = (b.rows(), b.completion_len());
    let t2 = |v: &[f32]| Tensor::<B, 2>::from_data(TensorData::new(v.to_vec(), [rows, k]), &dev);
    let current = coupled()
        .score(model, b, MaskSeed::new(3, 1, 0))
        .unwrap()
        .per_token;
    let a = Tensor::<B, 1>::from_data(TensorData::new(adv.to_vec(), [rows]), &dev);
    let tokens: f32 = mask.iter().sum();
    grpo_loss(
        current,
        t2(old),
        Some(t2(reference)),
        a,
        t2(mask),
        cfg,
        tokens,
    )
    .unwrap()
    .0
}

#[test]
fn loss_gradient_matches_finite_differences() {
    let model = tiny_model(5);
    let b = batch();
    let (rows, k) = (b.rows(), b.completion_len());
    // Old/ref scores near the current ones so ratios sit inside (1 − ε, 1 + ε).
    let base = host(
        coupled()
            .score(&model.valid(), &b, MaskSeed::new(3, 1, 0))
            .unwrap()
            .per_token,
    );
    let old: Vec<f32> = base
        .iter()
        .enumerate()
        .map(|(i, s)| s + 0.15 * ((i % 5) as f32 - 2.0) / 2.0)
        .collect();
    let reference: Vec<f32> = base
        .iter()
        .enumerate()
        .map(|(i, s)| s - 0.2 + 0.05 * (i % 3) as f32)
        .collect();
    let adv = [1.0, -0.5, 0.7, -1.2];
    let mut mask = vec![1.0f32; rows * k];
    mask[k - 1] = 0.0; // row 0 ends early
    mask[2 * k - 2..2 * k].fill(0.0);
    let cfg = LossConfig {
        beta: 0.2,
        ..Default::default()
    };
    let loss = loss_of(&model, &b, &old, &reference, &adv, &mask, &cfg);
    let grads = loss.backward();

    // Direction 1: the normalised gradient of the lm_head weight (a strong signal).
    // Direction 2: a random direction in layer 0's q_proj weight (through attention and masks).
    let head = model.lm_head.as_ref().unwrap().weight.val();
    let g_head = head.grad(&grads).unwrap();
    let q = model.layers[0].self_attn.q_proj.weight.val();
    let g_q = q.grad(&grads).unwrap();
    let d_head = g_head.clone() / host(g_head.clone().square().sum().sqrt())[0];
    let d_q = Tensor::<Cpu, 2>::random(
        g_q.dims(),
        Distribution::Normal(0.0, 1.0),
        &Default::default(),
    );
    let d_q = d_q.clone() / host(d_q.square().sum().sqrt())[0];

    let inner = model.valid();
    let eps = 1e-2f32;
    let eval = |which: usize, sign: f32| {
        let mut m = inner.clone();
        if which == 0 {
            let head = m.lm_head.as_mut().unwrap();
            head.weight = head
                .weight
                .clone()
                .map(|w| w + d_head.clone() * (sign * eps));
        } else {
            let qp = &mut m.layers[0].self_attn.q_proj;
            qp.weight = qp.weight.clone().map(|w| w + d_q.clone() * (sign * eps));
        }
        host(loss_of(&m, &b, &old, &reference, &adv, &mask, &cfg))[0] as f64
    };
    for (which, analytic) in [
        (0, host((g_head * d_head.clone()).sum())[0] as f64),
        (1, host((g_q * d_q.clone()).sum())[0] as f64),
    ] {
        let fd = (eval(which, 1.0) - eval(which, -1.0)) / (2.0 * eps as f64);
        eprintln!("direction {which}: analytic {analytic:.6e}, finite difference {fd:.6e}");
        assert!(analytic.abs() > 1e-4, "direction {which} carries no signal");
        assert!(
            (fd - analytic).abs() <= 0.03 * analytic.abs() + 2e-4,
            "direction {which}: autodiff {analytic} vs finite difference {fd}"
        );
    }
}

fn trainer(config: TrainConfig, seed: u64) -> Trainer<CpuAutodiff> {
    trainer_in(config, seed, DType::F32)
}

fn trainer_in(config: TrainConfig, seed: u64, dtype: DType) -> Trainer<CpuAutodiff> {
    let rewards = Rewards::Functions(vec![WeightedReward {
        reward: Arc::new(Letters),
        weight: 1.0,
    }]);
    Trainer::from_parts(
        config,
        tiny_model_in(seed, dtype),
        byte_level_tokenizer().unwrap(),
        tasks(),
        rewards,
        Default::default(),
    )
    .unwrap()
}

/// A rollout batch built from [`batch`] (no sampling needed for the update tests).
fn rollout_from(b: &ScoreBatch) -> RolloutBatch {
    RolloutBatch {
        prompt_ids: b.prompt_ids.clone(),
        prompt_mask: b.prompt_mask.clone(),
        completion_ids: b.completion_ids.clone(),
        completion_mask: vec![vec![1; b.completion_len()]; b.rows()],
        texts: vec![String::new(); b.rows()],
        group: (0..b.rows()).map(|r| r / 2).collect(),
        traces: None,
        forward_passes: 0,
        cost: Default::default(),
    }
}

#[test]
fn first_iteration_has_unit_ratio_and_no_clipping() {
    let mut t = trainer(train_config(&[]), 1);
    let stats = t.step().unwrap();
    assert_eq!(stats.iterations.len(), 2);
    let first = &stats.iterations[0].sums;
    assert!(first.tokens > 0.0);
    assert!(
        (first.ratio_mean() - 1.0).abs() < 1e-6,
        "ratio at μ-step 0: {}",
        first.ratio_mean()
    );
    assert_eq!(
        first.clipped_low + first.clipped_high,
        0.0,
        "nothing clipped at μ-step 0"
    );
    assert!(
        first.kl_mean().abs() < 1e-6,
        "reference = policy before the first update"
    );
    assert!(stats.iterations[0].applied && stats.iterations[1].applied);
    // The second iteration scores the updated policy against π_old: the ratio moved.
    assert!((stats.iterations[1].sums.ratio_mean() - 1.0).abs() > 1e-7);
    let m = stats.metrics();
    for key in [
        "reward",
        "reward_std",
        "rewards/letters/mean",
        "frac_reward_zero_std",
        "kl",
        "clip_ratio/region_mean",
        "completions/mean_length",
        "learning_rate",
        "grad_norm",
        "step_time",
        "rollout/time",
        "estimator/forward_passes",
    ] {
        assert!(m.contains_key(key), "missing metric {key}");
    }
    // 8 rows × 3 passes × (2 old + 2 ref + 2 updates).
    assert_eq!(stats.estimator_forward_passes, 8 * 3 * 6);
}

#[test]
fn zero_advantages_without_kl_leave_parameters_unchanged() {
    // Weight decay is a deliberate parameter change independent of the loss, so it is off here.
    let mut t = trainer(
        train_config(&["grpo.beta=0.0", "optimizer.weight_decay=0.0"]),
        2,
    );
    assert!(t.reference().is_none(), "β = 0 keeps no reference copy");
    let before = params(t.policy());
    let b = batch();
    let stats = t
        .update(0, &rollout_from(&b), &[0.0; 4], AdvantageStats::default())
        .unwrap();
    assert!(stats
        .iterations
        .iter()
        .all(|i| i.applied && i.grad_norm == 0.0));
    assert_eq!(
        params(t.policy()),
        before,
        "zero advantages and β = 0 must not move any parameter"
    );

    // With weight decay on, matrices shrink by exactly (1 − lr·wd) and rank-1 parameters
    // (norm weights, biases) do not move, as in HF's parameter groups.
    let mut t = trainer(train_config(&["grpo.beta=0.0", "grpo.num_iterations=1"]), 2);
    let before = params(t.policy());
    t.update(0, &rollout_from(&b), &[0.0; 4], AdvantageStats::default())
        .unwrap();
    let after = params(t.policy());
    let shrink = 1.0 - 1e-3f32 * 0.1;
    let dims = {
        struct R(Vec<usize>);
        impl ModuleVisitor<CpuAutodiff> for R {
            fn visit_float<const D: usize>(&mut self, _p: &Param<Tensor<CpuAutodiff, D>>) {
                self.0.push(D);
            }
        }
        let mut r = R(Vec::new());
        t.policy().visit(&mut r);
        r.0
    };
    for ((b0, a0), d) in before.iter().zip(&after).zip(dims) {
        for (x, y) in b0.iter().zip(a0).take(50) {
            let want = if d >= 2 { x * shrink } else { *x };
            assert!(
                (y - want).abs() <= 1e-7 * x.abs().max(1.0),
                "rank {d}: {x} → {y}, want {want}"
            );
        }
    }
}

#[test]
fn positive_advantage_raises_its_score() {
    let mut t = trainer(
        train_config(&[
            "grpo.beta=0.0",
            "grpo.num_iterations=1",
            "optimizer.max_grad_norm=0.0",
        ]),
        3,
    );
    let b = batch();
    let seed = MaskSeed::new(t.config().grpo.seed, 0, 0);
    let score = |t: &Trainer<CpuAutodiff>| {
        let s = host(
            coupled()
                .score(&t.policy().valid(), &b, seed)
                .unwrap()
                .per_token,
        );
        (0..4)
            .map(|r| s[r * 8..(r + 1) * 8].iter().sum::<f32>())
            .collect::<Vec<f32>>()
    };
    let before = score(&t);
    let stats = t
        .update(
            0,
            &rollout_from(&b),
            &[1.0, 0.0, -1.0, 0.0],
            AdvantageStats::default(),
        )
        .unwrap();
    assert!(stats.iterations[0].applied);
    let after = score(&t);
    eprintln!("scores before {before:?} after {after:?}");
    assert!(
        after[0] > before[0] + 1e-3,
        "A > 0: score must rise ({} → {})",
        before[0],
        after[0]
    );
    assert!(
        after[2] < before[2] - 1e-3,
        "A < 0: score must fall ({} → {})",
        before[2],
        after[2]
    );
}

#[test]
fn resume_is_bit_identical() {
    resume_is_bit_identical_in(DType::F32);
}

#[test]
fn bf16_resume_with_master_weights_is_bit_identical() {
    resume_is_bit_identical_in(DType::BF16);
}

fn resume_is_bit_identical_in(dtype: DType) {
    let run = tempfile::tempdir().unwrap();
    let config = train_config(&[]);
    let trainer = |config, seed| trainer_in(config, seed, dtype);
    // Reference run: four rounds straight (the reference syncs at optimizer step 3 and 6).
    let mut straight = trainer(config.clone(), 7);
    let mut straight_stats = Vec::new();
    for _ in 0..4 {
        straight_stats.push(straight.step().unwrap());
    }

    // Two rounds, checkpoint, a fresh process-like trainer restored from it, two more.
    let mut first = trainer(config.clone(), 7);
    first.step().unwrap();
    first.step().unwrap();
    let ckpt = first.save_checkpoint(run.path()).unwrap();
    for file in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "optimizer.safetensors",
        "trainer_state.json",
        "reference/model.safetensors",
        "config.resolved.toml",
    ] {
        assert!(ckpt.join(file).exists(), "checkpoint lacks {file}");
    }
    drop(first);
    let mut resumed = trainer(config, 99); // different init: everything must come from the checkpoint
    resumed.restore(&ckpt).unwrap();
    assert_eq!(resumed.current_step(), 2);
    let mut resumed_stats = Vec::new();
    for _ in 0..2 {
        resumed_stats.push(resumed.step().unwrap());
    }
    assert_eq!(
        params(resumed.policy()),
        params(straight.policy()),
        "policy weights differ after resume"
    );
    assert_eq!(
        params(resumed.reference().unwrap()),
        params(straight.reference().unwrap()),
        "reference weights differ after resume"
    );
    for (a, b) in straight_stats[2..].iter().zip(&resumed_stats) {
        assert_eq!(a.reward, b.reward);
        assert_eq!(a.loss.to_bits(), b.loss.to_bits());
        assert_eq!(a.learning_rate, b.learning_rate);
    }
}

#[test]
fn non_finite_loss_skips_the_update_and_is_never_saved() {
    let run = tempfile::tempdir().unwrap();
    let mut t = trainer(train_config(&["grpo.beta=0.0"]), 4);
    let before = params(t.policy());
    let b = batch();
    let stats = t
        .update(
            0,
            &rollout_from(&b),
            &[f32::NAN, 1.0, 0.0, -1.0],
            AdvantageStats::default(),
        )
        .unwrap();
    assert_eq!(stats.skipped_updates, 2, "both iterations skipped");
    assert!(stats.iterations.iter().all(|i| !i.applied));
    assert_eq!(
        params(t.policy()),
        before,
        "a non-finite loss must not touch the parameters"
    );
    // The skipped round still checkpoints (the weights are finite).
    t.save_checkpoint(run.path()).unwrap();
    assert_eq!(t.state().skipped_updates, 2);
}

/// One all-ones gradient per parameter, in the parameter's dtype (Adam then moves every weight
/// by about `lr` per step, against the gradient).
fn ones_grads(model: &DiffusionLm<CpuAutodiff>) -> GradientsParams {
    struct Ones(GradientsParams);
    impl ModuleVisitor<CpuAutodiff> for Ones {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<CpuAutodiff, D>>) {
            let v = p.val();
            let ones = Tensor::<Cpu, D>::ones(v.dims(), &v.device()).cast(v.dtype());
            self.0.register::<Cpu, D>(p.id, ones);
        }
    }
    let mut v = Ones(GradientsParams::new());
    model.visit(&mut v);
    v.0
}

#[test]
fn bf16_updates_below_bf16_resolution_accumulate_in_f32_master_weights() {
    let (lr, steps) = (1e-4, 10);
    // Weights in [1/16, 1/8) are 2^-11 apart in bf16: one step of 1e-4 is under half of that
    // (it rounds back) while ten steps (1e-3) are two spacings.
    let band = |w: f32| (0.0625..0.125).contains(&w.abs());
    let run = |master_weights: bool| {
        let mut opt = GrpoOptimizer::<CpuAutodiff>::new(OptimizerConfig {
            lr,
            weight_decay: 0.0,
            max_grad_norm: 0.0,
            master_weights,
            ..OptimizerConfig::default()
        })
        .unwrap();
        let mut model = tiny_model_in(3, DType::BF16);
        for _ in 0..steps {
            let grads = ones_grads(&model);
            let (next, outcome) = opt.step(lr, model, grads);
            assert!(outcome.applied);
            model = next;
        }
        assert_eq!(model.dtype(), DType::BF16);
        let master = opt.master().map(params);
        (params(&model), master)
    };
    let start = params(&tiny_model_in(3, DType::BF16));
    let (plain, no_master) = run(false);
    assert!(no_master.is_none());
    let (mixed, master) = run(true);
    let master = master.expect("a master copy for bf16 parameters");
    let mut in_band = 0;
    for (i, w0s) in start.iter().enumerate() {
        for (j, &w0) in w0s.iter().enumerate() {
            // The master copy moved by the sum of the updates, in f32.
            let expected = w0 - steps as f32 * lr as f32;
            assert!(
                (master[i][j] - expected).abs() < 1e-6,
                "master {}: {} vs {expected}",
                master[i][j],
                w0
            );
            // The bf16 parameters are the master copy's rounding.
            let rounded = burn::tensor::bf16::from_f32(master[i][j]).to_f32();
            assert_eq!(mixed[i][j], rounded);
            if band(w0) {
                in_band += 1;
                assert_eq!(
                    plain[i][j], w0,
                    "bf16 without master weights kept no update"
                );
                assert_ne!(mixed[i][j], w0, "the master copy's drift shows in bf16");
            }
        }
    }
    assert!(in_band > 100, "only {in_band} weights in the band");
}

#[test]
fn balanced_checkpointing_gives_the_same_update() {
    fn one_update<B: AutodiffBackend>() -> (Vec<Vec<f32>>, f64) {
        let config = train_config(&["grpo.num_iterations=1"]);
        let policy =
            DiffusionLm::<B>::init_with(&tiny_config(), &Default::default(), 5, DType::F32);
        let rewards = Rewards::Functions(vec![WeightedReward {
            reward: Arc::new(Letters),
            weight: 1.0,
        }]);
        let mut t = Trainer::<B>::from_parts(
            config,
            policy,
            byte_level_tokenizer().unwrap(),
            tasks(),
            rewards,
            Default::default(),
        )
        .unwrap();
        let stats = t
            .update(
                0,
                &rollout_from(&batch()),
                &[1.0, -0.5, -1.0, 0.5],
                AdvantageStats::default(),
            )
            .unwrap();
        assert!(stats.iterations[0].applied);
        (params(t.policy()), stats.loss)
    }
    let (plain, plain_loss) = one_update::<CpuAutodiff>();
    let (recomputed, recomputed_loss) = one_update::<CpuAutodiffCheckpointed>();
    assert_eq!(plain_loss.to_bits(), recomputed_loss.to_bits());
    assert_eq!(
        plain, recomputed,
        "recomputing in backward changed the gradients"
    );
    let start = params(&tiny_model(5));
    assert_ne!(plain, start, "the update moved nothing");
}

#[test]
fn grpo_update_bench_runs_the_real_update() {
    let train = train_config(&["grpo.num_iterations=2", "grpo.beta=0.01"]);
    let mut phases = Vec::new();
    let stats = coupled_grpo::perf::grpo_update::<CpuAutodiff>(
        &tiny_config(),
        train,
        4,
        12,
        8,
        1,
        DType::BF16,
        &Default::default(),
        &mut |step, phase, _| phases.push((step, phase.name())),
    )
    .unwrap();
    // Coupled: 3 passes per row; μ = 2 iterations each score π_old, π_ref and π_θ.
    assert_eq!(stats.forward_passes, 4 * 3 * 3 * 2);
    assert_eq!(stats.seq, 20);
    assert!(stats.loss.is_finite());
    assert!(stats.update_s >= stats.old_ref_s + stats.forward_s);
    assert_eq!(phases, vec![(0, "init"), (0, "update"), (1, "update")]);
}
