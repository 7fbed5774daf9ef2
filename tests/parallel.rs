//! Data parallelism on the CPU: `cpu:2` trains exactly like `cpu:1` (same completions and
//! rewards, parameters within 1e-5, replicas equal to each other after every round), resumes on
//! another worker count, and a worker that fails stops the whole group with its own error.

mod common;

use std::sync::Mutex;

use burn::tensor::DType;
use common::{letters_reward, params, tiny, train_config};
use coupled_grpo::backend::CpuAutodiff;
use coupled_grpo::data::Task;
use coupled_grpo::grpo::{parallel, StepStats, TrainConfig, Trainer};
use coupled_grpo::model::byte_level_tokenizer;
use coupled_grpo::Error;

/// Toy tasks whose prompts differ in length, so a round's batch is left-padded and one worker's
/// rows may have no padding of their own.
fn tasks() -> Vec<Task> {
    common::tasks()
        .into_iter()
        .enumerate()
        .map(|(i, mut t)| {
            t.question.push_str(&" Keep it short.".repeat(i % 3));
            t
        })
        .collect()
}

fn trainer(config: &TrainConfig) -> coupled_grpo::Result<Trainer<CpuAutodiff>> {
    trainer_in(config, DType::F32)
}

fn trainer_in(config: &TrainConfig, dtype: DType) -> coupled_grpo::Result<Trainer<CpuAutodiff>> {
    Trainer::from_parts(
        config.clone(),
        tiny(7, dtype),
        byte_level_tokenizer().unwrap(),
        tasks(),
        letters_reward(),
        Default::default(),
    )
}

/// What a run leaves: worker 0's round statistics and final parameters, and every worker's
/// optimizer state size (f32 elements).
struct Run {
    stats: Vec<StepStats>,
    params: Vec<Vec<f32>>,
    state_elements: Vec<usize>,
}

/// `rounds` rounds on `workers` CPU workers (from `checkpoint` when given), checking after
/// every round that all replicas hold the same bits.
fn train(
    config: &TrainConfig,
    workers: usize,
    rounds: u64,
    checkpoint: Option<&std::path::Path>,
) -> Run {
    train_in(config, DType::F32, workers, rounds, checkpoint)
}

fn train_in(
    config: &TrainConfig,
    dtype: DType,
    workers: usize,
    rounds: u64,
    checkpoint: Option<&std::path::Path>,
) -> Run {
    let devices = vec![Default::default(); workers];
    // Every worker's parameters after each round, by rank.
    let seen: Mutex<Vec<Vec<Vec<Vec<f32>>>>> = Mutex::new(vec![Vec::new(); workers]);
    let state = Mutex::new(vec![0; workers]);
    let run = parallel::run(
        &devices,
        |_, device| {
            let mut t = trainer_in(config, dtype)?;
            if let Some(dir) = checkpoint {
                t.restore(dir)?;
            }
            let _ = device;
            Ok(t)
        },
        |t: &mut Trainer<CpuAutodiff>| {
            let rank = t.shard().map_or(0, |s| s.rank);
            let mut stats = Vec::new();
            while t.current_step() < rounds {
                stats.push(t.step()?);
                seen.lock().unwrap()[rank].push(params(t.policy()));
            }
            state.lock().unwrap()[rank] = t.optimizer().state_elements(t.policy());
            Ok(Run {
                stats,
                params: params(t.policy()),
                state_elements: Vec::new(),
            })
        },
    )
    .unwrap();
    let mut run = run;
    run.state_elements = state.into_inner().unwrap();
    let seen = seen.into_inner().unwrap();
    for (rank, rounds) in seen.iter().enumerate().skip(1) {
        assert!(rounds == &seen[0], "worker {rank} differs from worker 0");
    }
    run
}

/// `a` within `rel` of `b` in relative L2 norm over all parameters together.
fn assert_close(a: &[Vec<f32>], b: &[Vec<f32>], rel: f64) {
    let sq = |x: f64| x * x;
    let (mut diff, mut norm) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        diff += x
            .iter()
            .zip(y)
            .map(|(p, q)| sq((p - q) as f64))
            .sum::<f64>();
        norm += y.iter().map(|&q| sq(q as f64)).sum::<f64>();
    }
    let err = (diff / norm).sqrt();
    assert!(err <= rel, "relative L2 error {err:e}");
}

/// Completions (with their rewards) of every round, as worker 0 logged them.
fn completions(run: &Run) -> Vec<Vec<(String, f32)>> {
    run.stats
        .iter()
        .map(|s| {
            s.samples
                .iter()
                .map(|c| (c.completion.clone(), c.reward))
                .collect()
        })
        .collect()
}

fn config(overrides: &[&str]) -> TrainConfig {
    // Every row is logged, so the test sees all completions and rewards.
    // A micro-batch per accumulation chunk, GA = 2 workers: each worker's gradient is one
    // backward over exactly the rows of one chunk, as on one worker.
    let mut all = vec![
        "logging.completions_every=1",
        "logging.completions_count=8",
        "grpo.micro_batch_rows=0",
    ];
    all.extend_from_slice(overrides);
    train_config(&all)
}

/// Two rounds on one worker and on two. With GA = 2 and a micro-batch per chunk each worker's
/// gradient is one backward over one chunk's rows, as on one worker, so everything is equal to
/// the bit; otherwise the micro-batch gradients are summed in another order.
fn two_workers_train_like_one(overrides: &[&str], bitwise: bool) {
    let config = config(overrides);
    let one = train(&config, 1, 2, None);
    let two = train(&config, 2, 2, None);
    assert_eq!(
        completions(&one),
        completions(&two),
        "completions and rewards"
    );
    assert_eq!(one.stats[0].samples.len(), 8);
    for (a, b) in one.stats.iter().zip(&two.stats) {
        assert_eq!(a.advantages, b.advantages);
        assert_eq!(a.estimator_forward_passes, b.estimator_forward_passes);
        assert!(a.grad_norm.is_finite() && a.grad_norm > 0.0);
        assert!((a.grad_norm - b.grad_norm).abs() <= 1e-5 * a.grad_norm);
        assert!(
            (a.kl - b.kl).abs() <= 1e-5 * a.kl.abs().max(1e-3),
            "kl {} vs {}",
            a.kl,
            b.kl
        );
    }
    if bitwise {
        assert!(one.params == two.params, "parameters differ");
    }
    assert_close(&two.params, &one.params, 1e-5);
    let moved = params(&tiny::<CpuAutodiff>(7, DType::F32));
    assert!(one.params != moved, "training moved the parameters");
}

#[test]
fn two_cpu_workers_train_exactly_like_one() {
    two_workers_train_like_one(&[], true);
}

#[test]
fn two_cpu_workers_train_like_one_with_lora_and_threshold_decoding() {
    two_workers_train_like_one(
        &[
            "lora.r=4",
            "lora.alpha=8.0",
            "optimizer.lr=1e-2",
            "rollout.confidence_threshold=0.2",
            "rollout.alg=\"maskgit_plus\"",
        ],
        true,
    );
}

/// Three rows per micro-batch cut the chunks of four unevenly: the sums are reordered, so the
/// parameters agree within 1e-5 (in L2 over the model) rather than to the bit. (Per tensor the
/// attention key biases differ most: their gradient is zero in exact arithmetic, since softmax
/// ignores a shift shared by all keys, so AdamW scales pure rounding noise to a step.)
#[test]
fn two_cpu_workers_train_like_one_when_micro_batches_cut_the_chunks() {
    two_workers_train_like_one(&["grpo.micro_batch_rows=3"], false);
}

/// ZeRO-1 on a bf16 model with f32 master weights: each worker keeps about half of the AdamW
/// state (moments and master copy; measured 50.0 % each), and the parameters equal the unsharded run's and one
/// worker's to the bit.
#[test]
fn a_sharded_optimizer_state_halves_per_worker_and_trains_the_same() {
    let sharded = config(&[]);
    let replicated = config(&["optimizer.shard_state=false"]);
    let one = train_in(&sharded, DType::BF16, 1, 2, None);
    let two = train_in(&sharded, DType::BF16, 2, 2, None);
    let two_replicated = train_in(&replicated, DType::BF16, 2, 2, None);
    assert!(one.params == two.params, "sharded against one worker");
    assert!(
        two_replicated.params == two.params,
        "sharded against replicated"
    );
    let whole = one.state_elements[0];
    assert_eq!(two_replicated.state_elements, vec![whole; 2]);
    // Moments (2) and master (1) per parameter, split by a greedy balance of whole tensors.
    assert!(whole >= 3 * burn::module::Module::num_params(&tiny::<CpuAutodiff>(7, DType::BF16)));
    for (rank, &n) in two.state_elements.iter().enumerate() {
        eprintln!(
            "worker {rank}: {n} of {whole} state elements ({:.1} %)",
            100.0 * n as f64 / whole as f64
        );
        assert!(n * 100 < whole * 55, "worker {rank} holds {n} of {whole}");
    }
    // The gathered checkpoint resumes on one worker exactly as the straight run continues.
    let dir = tempfile::tempdir().unwrap();
    let ckpt = parallel::run(
        &[Default::default(); 2],
        |_, _| trainer_in(&sharded, DType::BF16),
        |t: &mut Trainer<CpuAutodiff>| {
            t.step()?;
            t.save_checkpoint(dir.path())
        },
    )
    .unwrap();
    let straight = train_in(&sharded, DType::BF16, 1, 2, None);
    let resumed = train_in(&sharded, DType::BF16, 1, 2, Some(&ckpt));
    assert!(resumed.params == straight.params);
}

#[test]
fn a_checkpoint_of_two_workers_resumes_on_one_and_the_reverse() {
    let config = config(&[]);
    let straight = train(&config, 1, 4, None);
    for (first, then) in [(2, 1), (1, 2)] {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = parallel::run(
            &vec![Default::default(); first],
            |_, _| trainer(&config),
            |t: &mut Trainer<CpuAutodiff>| {
                t.step()?;
                t.step()?;
                t.save_checkpoint(dir.path())
            },
        )
        .unwrap();
        let resumed = train(&config, then, 4, Some(&ckpt));
        assert_eq!(resumed.stats.len(), 2);
        assert_eq!(completions(&resumed), completions(&straight)[2..]);
        assert!(
            resumed.params == straight.params,
            "{first} then {then} workers"
        );
    }
}

#[test]
fn a_failing_worker_stops_every_worker_with_its_own_error() {
    let config = config(&[]);
    let err = parallel::run(
        &[Default::default(); 2],
        |_, _| trainer(&config),
        |t: &mut Trainer<CpuAutodiff>| {
            t.step()?;
            if t.shard().unwrap().rank == 1 {
                return Err(Error::invalid("reward", "worker 1's sandbox is gone"));
            }
            // Worker 0 blocks in the next round's first collective until worker 1 fails.
            t.step()?;
            Ok(())
        },
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("worker 1's sandbox is gone"),
        "{err}"
    );

    // More workers than prompts, and LoRA dropout with several workers: refused at the start.
    for (workers, overrides, field) in [
        (3, vec![], "devices"),
        (2, vec!["lora.r=4", "lora.dropout=0.1"], "lora.dropout"),
    ] {
        let config = train_config(&overrides);
        match parallel::run(
            &vec![Default::default(); workers],
            |_, _| trainer(&config),
            |_| Ok(()),
        ) {
            Err(Error::Config { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {:?}", other.map(|_| ())),
        }
    }
    // The group is usable again afterwards.
    let run = train(&config, 2, 1, None);
    assert_eq!(run.stats.len(), 1);
}
