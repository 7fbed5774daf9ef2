//! The coupled-GRPO trainer: a library object a Rust loop can drive one rollout round at a time
//! (`rollout → rewards → advantages → μ updates`), with pluggable rewards and executors.
//!
//! ```no_run
//! # use coupled_grpo::grpo::{Trainer, TrainConfig};
//! # use coupled_grpo::backend::CpuAutodiff;
//! # fn main() -> coupled_grpo::Result<()> {
//! let config = TrainConfig::load("examples/configs/tiny.toml".as_ref(), &[])?;
//! let mut trainer = Trainer::<CpuAutodiff>::new(config, Default::default())?;
//! for _ in 0..3 {
//!     let stats = trainer.step()?;
//!     println!("reward {:.3} kl {:.4}", stats.reward, stats.kl);
//! }
//! # Ok(()) }
//! ```
//!
//! One round (spec §1.12 with the §9 decisions): sample `prompts_per_step` tasks, generate G
//! completions each with the current policy, score them, compute group advantages, then for
//! each iteration `j < μ` (mask seed keyed by (round, j)) run one pass over the
//! `gradient_accumulation_steps` chunks and take one AdamW step. π_old (when μ > 1) and π_ref
//! are scored right after the rollout with the same seeds; with μ = 1, π_old is the detached
//! current score, so the ratio is exactly 1.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use rand::Rng;

use super::advantage::{group_advantages, AdvantageStats};
use super::checkpoint::{self, RngState, SamplerState, TrainerState, OPTIMIZER_FILE, STATE_FORMAT};
use super::config::TrainConfig;
use super::loss::{grpo_loss, LossSums};
use super::optimizer::GrpoOptimizer;
use super::parallel::Shard;
use super::reference::all_finite;
use super::rewards::{RewardOutput, Rewards, SandboxStats};
use super::schedule::LrSchedule;
use super::weights::{self, model_dtype};
use super::zero::Zero;
use crate::data::{self, Task};
use crate::estimator::masks::keyed_rng;
use crate::estimator::{Estimator, LikelihoodEstimator, MaskSeed, ScoreBatch};
use crate::metrics::{names, CompletionSample, JsonlSink, Metrics, Progress};
use crate::model::{self, DiffusionLm, Tokenizer};
use crate::rollout::{self, RolloutBatch};
use crate::sandbox::{Executor, Limits};
use crate::{Error, Result};

/// Key domains of the trainer's keyed RNG uses (masks use their own, see `estimator::masks`).
const TASK_ORDER_DOMAIN: u64 = 0x7461_736b_5f6f_7264; // "task_ord"
const ROLLOUT_DOMAIN: u64 = 0x726f_6c6c_6f75_7421; // "rollout!"
const LORA_DROPOUT_DOMAIN: u64 = 0x6c6f_7261_5f64_726f; // "lora_dro"

/// Statistics of one optimizer step (one iteration `j` of a round).
#[derive(Debug, Clone, PartialEq)]
pub struct IterationStats {
    /// The optimizer step's loss (mean over chunks of each chunk's token mean).
    pub loss: f64,
    /// Pre-clip global gradient norm.
    pub grad_norm: f64,
    pub learning_rate: f64,
    /// False when the non-finite guard skipped the update.
    pub applied: bool,
    /// Token sums of the iteration (ratio, clipping, KL).
    pub sums: LossSums,
    /// Seconds in scoring forwards (with the autodiff graph) and the loss.
    pub forward_time: f64,
    /// Seconds in backward passes and gradient accumulation.
    pub backward_time: f64,
    /// Seconds in clipping and the AdamW step (and the reference sync, if due).
    pub optimizer_time: f64,
}

/// What a round's rollout computed besides its completions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RolloutExtras {
    /// Positions run through the layers (`rollout/forward_positions`; less than passes × rows
    /// × sequence length with a cache).
    pub positions: usize,
    /// Mean local and global AR-ness@1 of the rows (`record_trace` only).
    pub ar_ness: Option<(f64, f64)>,
}

impl RolloutExtras {
    fn new(positions: usize, local: f32, global: f32, traced: f32) -> Self {
        let mean = |sum: f32| sum as f64 / traced as f64;
        let ar_ness = (traced > 0.0).then(|| (mean(local), mean(global)));
        Self { positions, ar_ness }
    }
}

/// Σ local AR-ness@1, Σ global AR-ness@1 and the number of traces.
fn ar_sums(traces: Option<&[rollout::DecodeTrace]>) -> [f32; 3] {
    traces.into_iter().flatten().fold([0.0; 3], |[l, g, n], t| {
        let first = |v: Vec<f64>| v.first().copied().unwrap_or(0.0) as f32;
        [l + first(t.local_ar()), g + first(t.global_ar()), n + 1.0]
    })
}

/// Everything measured in one rollout round ([`Trainer::step`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StepStats {
    /// Rounds completed, this one included.
    pub step: u64,
    pub optimizer_step: u64,
    pub epoch: f64,
    pub reward: f32,
    pub reward_std: f32,
    pub frac_reward_zero_std: f32,
    /// Per reward component: (name, mean, std).
    pub rewards: Vec<(String, f32, f32)>,
    pub advantages: Vec<f32>,
    pub kl: f32,
    pub clip_low: f32,
    pub clip_high: f32,
    pub clip_region: f32,
    pub ratio_mean: f32,
    pub loss: f64,
    pub grad_norm: f64,
    pub learning_rate: f64,
    pub iterations: Vec<IterationStats>,
    pub completion_mean_length: f32,
    pub completion_min_length: f32,
    pub completion_max_length: f32,
    pub completion_clipped_ratio: f32,
    pub rows: usize,
    pub rollout_time: f64,
    pub rollout_forward_passes: usize,
    /// The rollout's work and decode order.
    pub rollout_extras: RolloutExtras,
    pub reward_time: f64,
    pub sandbox: Option<SandboxStats>,
    /// Sequences forwarded for scoring (old, ref and the updates).
    pub estimator_forward_passes: usize,
    pub t_mean: f32,
    pub old_ref_time: f64,
    pub update_time: f64,
    pub skipped_updates: u32,
    pub step_time: f64,
    pub samples: Vec<CompletionSample>,
}

impl StepStats {
    /// The round as a metrics record with TRL's names plus `rollout/`, `estimator/`, `sandbox/`.
    pub fn metrics(&self) -> Metrics {
        let mut m = Metrics::new();
        let mut put = |k: &str, v: f64| {
            m.insert(k.to_string(), v);
        };
        put(names::STEP, self.step as f64);
        put(names::OPTIMIZER_STEP, self.optimizer_step as f64);
        put(names::EPOCH, self.epoch);
        put(names::REWARD, self.reward as f64);
        put(names::REWARD_STD, self.reward_std as f64);
        put(
            names::FRAC_REWARD_ZERO_STD,
            self.frac_reward_zero_std as f64,
        );
        put(names::KL, self.kl as f64);
        put(names::CLIP_LOW, self.clip_low as f64);
        put(names::CLIP_HIGH, self.clip_high as f64);
        put(names::CLIP_REGION, self.clip_region as f64);
        put(names::LOSS, self.loss);
        put(names::GRAD_NORM, self.grad_norm);
        put(names::LEARNING_RATE, self.learning_rate);
        put(
            names::COMPLETION_MEAN_LENGTH,
            self.completion_mean_length as f64,
        );
        put(
            names::COMPLETION_MIN_LENGTH,
            self.completion_min_length as f64,
        );
        put(
            names::COMPLETION_MAX_LENGTH,
            self.completion_max_length as f64,
        );
        put(
            names::COMPLETION_CLIPPED_RATIO,
            self.completion_clipped_ratio as f64,
        );
        put(names::STEP_TIME, self.step_time);
        put(names::ROLLOUT_TIME, self.rollout_time);
        put(
            names::ROLLOUT_FORWARD_PASSES,
            self.rollout_forward_passes as f64,
        );
        put(names::ROLLOUT_ROWS, self.rows as f64);
        put(
            names::ROLLOUT_FORWARD_POSITIONS,
            self.rollout_extras.positions as f64,
        );
        if let Some((local, global)) = self.rollout_extras.ar_ness {
            put(names::ROLLOUT_LOCAL_AR, local);
            put(names::ROLLOUT_GLOBAL_AR, global);
        }
        put(
            names::ESTIMATOR_FORWARD_PASSES,
            self.estimator_forward_passes as f64,
        );
        put(names::ESTIMATOR_T_MEAN, self.t_mean as f64);
        put(names::ESTIMATOR_SCORE_TIME, self.old_ref_time);
        put(names::ESTIMATOR_UPDATE_TIME, self.update_time);
        put(
            names::ESTIMATOR_FORWARD_TIME,
            self.iterations.iter().map(|i| i.forward_time).sum(),
        );
        put(
            names::ESTIMATOR_BACKWARD_TIME,
            self.iterations.iter().map(|i| i.backward_time).sum(),
        );
        put(
            names::ESTIMATOR_OPTIMIZER_TIME,
            self.iterations.iter().map(|i| i.optimizer_time).sum(),
        );
        put(names::ESTIMATOR_RATIO_MEAN, self.ratio_mean as f64);
        put(
            names::ESTIMATOR_SKIPPED_UPDATES,
            self.skipped_updates as f64,
        );
        put(names::SANDBOX_TIME, self.reward_time);
        if let Some(s) = &self.sandbox {
            put(names::SANDBOX_TESTS, s.tests as f64);
            put(
                names::SANDBOX_PASSED,
                if s.tests == 0 {
                    0.0
                } else {
                    s.passed as f64 / s.tests as f64
                },
            );
            put(names::SANDBOX_TIMEOUTS, s.timeouts as f64);
            put(names::SANDBOX_CRASHES, s.crashes as f64);
            put(names::SANDBOX_MEMORY, s.memory as f64);
            put(names::SANDBOX_SYNTAX_ERRORS, s.syntax_errors as f64);
        }
        for (name, mean, std) in &self.rewards {
            m.insert(names::reward_mean(name), *mean as f64);
            m.insert(names::reward_std(name), *std as f64);
        }
        m
    }
}

/// Epoch-wise (optionally shuffled) pass over the tasks, like TRL's `RepeatSampler`.
#[derive(Debug, Clone)]
struct TaskSampler {
    n: usize,
    seed: u64,
    shuffle: bool,
    state: SamplerState,
    order: Vec<usize>,
}

impl TaskSampler {
    fn new(n: usize, seed: u64, shuffle: bool, state: SamplerState) -> Self {
        let order = Self::order(n, seed, shuffle, state.epoch);
        Self {
            n,
            seed,
            shuffle,
            state,
            order,
        }
    }

    fn order(n: usize, seed: u64, shuffle: bool, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..n).collect();
        if shuffle {
            let mut rng = keyed_rng([seed, epoch, 0, TASK_ORDER_DOMAIN], 0);
            for i in (1..n).rev() {
                order.swap(i, rng.random_range(0..=i));
            }
        }
        order
    }

    fn next(&mut self, count: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            if self.state.cursor >= self.n {
                self.state.epoch += 1;
                self.state.cursor = 0;
                self.order = Self::order(self.n, self.seed, self.shuffle, self.state.epoch);
            }
            out.push(self.order[self.state.cursor]);
            self.state.cursor += 1;
        }
        out
    }

    fn epoch(&self) -> f64 {
        self.state.epoch as f64 + self.state.cursor as f64 / self.n as f64
    }
}

/// The coupled-GRPO trainer over an autodiff backend `B`.
pub struct Trainer<B: AutodiffBackend> {
    config: TrainConfig,
    device: B::Device,
    policy: Option<DiffusionLm<B>>,
    reference: Option<DiffusionLm<B::InnerBackend>>,
    optimizer: GrpoOptimizer<B>,
    schedule: LrSchedule,
    tokenizer: Tokenizer,
    tasks: Vec<Task>,
    sampler: TaskSampler,
    rewards: Rewards,
    estimator: Estimator,
    step: u64,
    optimizer_step: u64,
    skipped_updates: u64,
    /// This worker's place in a data-parallel run (None: the only worker).
    shard: Option<Shard<B::InnerBackend>>,
}

/// Load the training tasks a config names.
pub fn load_tasks(config: &TrainConfig) -> Result<Vec<Task>> {
    let d = &config.data;
    let mut tasks = match d.format.as_str() {
        "mbpp" => {
            let split = d.split.parse()?;
            let opts = data::mbpp::MbppOptions {
                split,
                ..Default::default()
            };
            data::mbpp::load(&d.path, &opts)?.rows
        }
        "acecoder" if d.hard => {
            let cfg = data::acecoder::HardFilter::default();
            let (rows, _, _) =
                data::acecoder::hard_training_rows_from_path(&d.path, &cfg, data::OnError::Fail)?;
            rows.iter().map(|r| r.to_task()).collect()
        }
        "acecoder" => data::acecoder::load_tasks(&d.path, data::OnError::Fail)?.rows,
        "humaneval" => data::humaneval::load(&d.path, data::OnError::Fail)?.rows,
        "synthetic" => {
            use data::synthetic::{Generator, Split};
            let split = match d.split.as_str() {
                "train" => Split::Train,
                "heldout" => Split::HeldOut,
                other => {
                    return Err(Error::config(
                        "data.split",
                        format!("`{other}` is not train or heldout (synthetic data)"),
                    ))
                }
            };
            let n = if d.limit > 0 { d.limit } else { 2000 };
            Generator::new(split, d.seed).distinct(n)?
        }
        other => {
            return Err(Error::config(
                "data.format",
                format!("unknown format `{other}`"),
            ))
        }
    };
    if d.limit > 0 {
        tasks.truncate(d.limit);
    }
    if tasks.is_empty() {
        return Err(Error::config(
            "data.path",
            format!("{}: no tasks", d.path.display()),
        ));
    }
    Ok(tasks)
}

/// The configured sandbox executor.
pub fn build_executor(config: &TrainConfig) -> Result<Arc<dyn Executor>> {
    match config.sandbox.executor.as_str() {
        #[cfg(feature = "wasm")]
        "wasm" => Ok(Arc::new(crate::sandbox::WasmExecutor::new(
            Default::default(),
        )?)),
        #[cfg(not(feature = "wasm"))]
        "wasm" => Err(Error::config(
            "sandbox.executor",
            "this build has no `wasm` feature",
        )),
        "process" => Ok(Arc::new(crate::sandbox::ProcessExecutor::new(
            crate::sandbox::ProcessConfig {
                workers: config.sandbox.workers,
                ..Default::default()
            },
        )?)),
        other => Err(Error::config(
            "sandbox.executor",
            format!("unknown executor `{other}`"),
        )),
    }
}

/// The sandbox limits a config names.
pub fn sandbox_limits(config: &TrainConfig) -> Limits {
    Limits {
        test_timeout: Duration::from_secs_f64(config.sandbox.test_timeout_secs),
        memory_bytes: config.sandbox.memory_mib << 20,
        ..Default::default()
    }
}

fn load_tokenizer_for(
    config: &TrainConfig,
    model_dir: &Path,
    model_config: &model::ModelConfig,
) -> Result<Tokenizer> {
    match &config.tokenizer.path {
        Some(path) => {
            let t = Tokenizer::from_file(path)?;
            model::check_tokenizer(&t, model_config, path)?;
            Ok(t)
        }
        None => model::load_tokenizer(model_dir, model_config),
    }
}

impl<B: AutodiffBackend> Trainer<B> {
    /// Build everything from the config: policy from `model.path`, tokenizer, tasks, the
    /// released reward over the configured sandbox.
    pub fn new(config: TrainConfig, device: B::Device) -> Result<Self> {
        let tasks = load_tasks(&config)?;
        Self::with_tasks(config, tasks, device)
    }

    /// [`Trainer::new`] with in-memory training tasks instead of `config.data` (for example
    /// with a held-out part of the data kept apart for evaluation).
    pub fn with_tasks(config: TrainConfig, tasks: Vec<Task>, device: B::Device) -> Result<Self> {
        let policy =
            model::load_pretrained_with::<B>(&config.model.path, &device, model_dtype(&config))?;
        let tokenizer = load_tokenizer_for(&config, &config.model.path, policy.config())?;
        let rewards = Rewards::combined(
            build_executor(&config)?,
            config.sandbox.workers,
            sandbox_limits(&config),
            config.reward.weights,
        );
        Self::from_parts(config, policy, tokenizer, tasks, rewards, device)
    }

    /// Continue the run saved in `checkpoint` (a `step-N` directory) under `config`.
    pub fn resume(config: TrainConfig, checkpoint: &Path, device: B::Device) -> Result<Self> {
        let policy = weights::load_policy::<B>(&config, checkpoint, &device)?;
        let tokenizer = load_tokenizer_for(&config, checkpoint, policy.config())?;
        let tasks = load_tasks(&config)?;
        let rewards = Rewards::combined(
            build_executor(&config)?,
            config.sandbox.workers,
            sandbox_limits(&config),
            config.reward.weights,
        );
        let mut trainer = Self::from_parts(config, policy, tokenizer, tasks, rewards, device)?;
        trainer.restore_state(checkpoint)?;
        Ok(trainer)
    }

    /// Build from explicit parts (a custom reward or executor, in-memory tasks or model).
    /// `config.model` / `config.data` / `config.sandbox` / `config.reward` are not read. With
    /// `lora.r > 0` the policy's base is frozen and adapters are attached (unless it has them).
    pub fn from_parts(
        config: TrainConfig,
        policy: DiffusionLm<B>,
        tokenizer: Tokenizer,
        tasks: Vec<Task>,
        rewards: Rewards,
        device: B::Device,
    ) -> Result<Self> {
        config.validate()?;
        if tasks.is_empty() {
            return Err(Error::invalid("tasks", "no training tasks"));
        }
        let estimator = config.estimator.build()?;
        let optimizer = GrpoOptimizer::new(config.optimizer.clone())?;
        let o = &config.optimizer;
        let schedule = LrSchedule::new(
            o.schedule,
            o.lr,
            config.total_optimizer_steps(),
            o.warmup_ratio,
            o.warmup_steps,
            o.min_lr_ratio,
        )?;
        let policy = weights::prepare_policy(&config, policy)?;
        // No reference at all when β = 0; with LoRA it shares the policy's base weights.
        let reference = weights::initial_reference(&config, &policy);
        let sampler = TaskSampler::new(
            tasks.len(),
            config.grpo.seed,
            config.data.shuffle,
            SamplerState::default(),
        );
        Ok(Self {
            config,
            device,
            policy: Some(policy),
            reference,
            optimizer,
            schedule,
            tokenizer,
            tasks,
            sampler,
            rewards,
            estimator,
            step: 0,
            optimizer_step: 0,
            skipped_updates: 0,
            shard: None,
        })
    }

    /// Make this trainer worker `shard.rank` of a data-parallel group (see
    /// [`super::parallel::run`], which calls this).
    pub fn set_shard(&mut self, shard: Shard<B::InnerBackend>) -> Result<()> {
        if shard.world > 1 && self.config.lora.dropout > 0.0 {
            // The dropout masks come from the backend's RNG, one per process on the CPU.
            return Err(Error::config(
                "lora.dropout",
                "LoRA dropout needs a single device (its masks come from the backend's process-wide RNG); set lora.dropout = 0",
            ));
        }
        super::parallel::check_workers(shard.world, self.config.grpo.prompts_per_step)?;
        if shard.world > 1 {
            let policy = self.policy.take().expect("policy present");
            self.policy = Some(super::parallel::own_leaves(policy));
        }
        if shard.world > 1 && self.config.optimizer.shard_state {
            let policy = self.policy.as_ref().expect("policy present");
            let zero = Zero::balanced(shard.clone(), policy);
            self.optimizer.shard_state(zero, policy);
        }
        self.shard = Some(shard);
        Ok(())
    }

    /// This worker's place in a data-parallel run, if it is one.
    pub fn shard(&self) -> Option<&Shard<B::InnerBackend>> {
        self.shard.as_ref()
    }

    /// True for the worker that writes files (the only one outside a data-parallel run).
    pub fn is_lead(&self) -> bool {
        self.shard.as_ref().is_none_or(Shard::is_lead)
    }

    /// This worker's rows of a rollout batch of `rows` rows (all of them on a single device).
    fn my_rows(&self, rows: usize) -> Range<usize> {
        match &self.shard {
            Some(s) => s.rows(rows, self.config.rollout.num_completions),
            None => 0..rows,
        }
    }

    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The current policy.
    pub fn policy(&self) -> &DiffusionLm<B> {
        self.policy
            .as_ref()
            .expect("the policy is only taken during an update")
    }

    /// The optimizer (its state, and its shard of it in a data-parallel run).
    pub fn optimizer(&self) -> &GrpoOptimizer<B> {
        &self.optimizer
    }

    /// The reference model (None when β = 0).
    pub fn reference(&self) -> Option<&DiffusionLm<B::InnerBackend>> {
        self.reference.as_ref()
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn estimator(&self) -> &Estimator {
        &self.estimator
    }

    /// Rounds completed.
    pub fn current_step(&self) -> u64 {
        self.step
    }

    pub fn optimizer_step(&self) -> u64 {
        self.optimizer_step
    }

    /// Chat-formatted training prompt of a task.
    pub fn prompt_for(&self, task: &Task) -> String {
        self.policy().config().family.chat_prompt(
            &self.config.data.system_prompt,
            &data::prompt::user_message(task),
            None,
        )
    }

    /// The rollout settings of round `round` (its seed is keyed by the round).
    pub fn rollout_config(&self, round: u64) -> rollout::RolloutConfig {
        let mut rc = self.config.rollout.clone();
        rc.seed = keyed_rng([self.config.rollout.seed, round, 0, ROLLOUT_DOMAIN], 0).random();
        rc
    }

    /// One rollout round: rollout, rewards, advantages and μ optimizer steps.
    pub fn step(&mut self) -> Result<StepStats> {
        let start = Instant::now();
        let round = self.step;
        let picked = self.sampler.next(self.config.grpo.prompts_per_step);
        let prompts: Vec<String> = picked
            .iter()
            .map(|&i| self.prompt_for(&self.tasks[i]))
            .collect();

        let t = Instant::now();
        let (rollout, rollout_extras) = self.rollout(round, &prompts)?;
        let rollout_time = t.elapsed().as_secs_f64();

        let t = Instant::now();
        let row_tasks: Vec<&Task> = rollout
            .group
            .iter()
            .map(|&g| &self.tasks[picked[g]])
            .collect();
        let rewards = self.score_rewards(&rollout, &row_tasks)?;
        let reward_time = t.elapsed().as_secs_f64();
        let task_ids: Vec<String> = row_tasks.iter().map(|t| t.id.clone()).collect();

        let g = self.config.rollout.num_completions;
        let (advantages, adv_stats) = group_advantages(
            &rewards.totals,
            g,
            self.config.grpo.baseline,
            self.config.grpo.scale_rewards,
        )?;
        let mut stats = self.update(round, &rollout, &advantages, adv_stats)?;

        let lengths: Vec<f32> = rollout
            .completion_mask
            .iter()
            .map(|m| m.iter().sum::<u32>() as f32)
            .collect();
        let im_end = self.tokenizer.special().im_end;
        stats.completion_mean_length = lengths.iter().sum::<f32>() / lengths.len().max(1) as f32;
        stats.completion_min_length = lengths.iter().copied().fold(f32::INFINITY, f32::min);
        stats.completion_max_length = lengths.iter().copied().fold(0.0, f32::max);
        stats.completion_clipped_ratio = rollout
            .completion_ids
            .iter()
            .filter(|ids| !ids.contains(&im_end))
            .count() as f32
            / rollout.completion_ids.len().max(1) as f32;
        stats.rewards = rewards.component_stats();
        stats.sandbox = rewards.sandbox;
        stats.reward_time = reward_time;
        stats.rollout_time = rollout_time;
        stats.rollout_forward_passes = rollout.forward_passes;
        stats.rollout_extras = rollout_extras;
        stats.rows = rollout.texts.len();

        self.step += 1;
        stats.step = self.step;
        stats.optimizer_step = self.optimizer_step;
        stats.epoch = self.sampler.epoch();
        let every = self.config.logging.completions_every;
        if every > 0 && self.step.is_multiple_of(every) {
            stats.samples = (0..self
                .config
                .logging
                .completions_count
                .min(rollout.texts.len()))
                .map(|r| CompletionSample {
                    step: self.step,
                    task_id: task_ids[r].clone(),
                    prompt: prompts[rollout.group[r]].clone(),
                    completion: rollout.texts[r].clone(),
                    reward: rewards.totals[r],
                    advantage: advantages[r],
                })
                .collect();
        }
        stats.step_time = start.elapsed().as_secs_f64();
        Ok(stats)
    }

    /// The round's rollout: all of it, on every worker. A worker of a data-parallel run decodes
    /// its own rows of the whole round's left-padded batch, and the completions are gathered.
    fn rollout(&self, round: u64, prompts: &[String]) -> Result<(RolloutBatch, RolloutExtras)> {
        let config = self.rollout_config(round);
        let policy = self.policy().valid();
        let Some(shard) = &self.shard else {
            let batch = rollout::generate(&policy, &self.tokenizer, prompts, &config)?;
            let [local, global, traced] = ar_sums(batch.traces.as_deref());
            let extras = RolloutExtras::new(batch.cost.query_tokens, local, global, traced);
            return Ok((batch, extras));
        };
        let batch = rollout::prompt_rows(&policy, &self.tokenizer, prompts, &config)?;
        let (total, k) = (batch.ids.len(), config.max_new_tokens);
        let rows = self.my_rows(total);
        let mut decoded =
            rollout::decode_rows(&policy, &self.tokenizer, &batch, rows.clone(), &config)?;
        // Token ids are below 2^24, so they travel exactly as f32.
        let local: Vec<f32> = decoded
            .completion_ids
            .iter()
            .flatten()
            .map(|&t| t as f32)
            .collect();
        let all = shard.gather_rows("completions", &local, rows, total, k)?;
        decoded.completion_ids = all
            .chunks(k)
            .map(|row| row.iter().map(|&t| t as u32).collect())
            .collect();
        decoded.forward_passes = shard.sum_count("rollout passes", decoded.forward_passes)?;
        // Traces stay with the worker that decoded them: their AR-ness sums travel.
        let mut sums = ar_sums(decoded.traces.as_deref()).to_vec();
        sums.push(decoded.cost.query_tokens as f32);
        let sums = shard.sum("rollout extras", sums)?;
        decoded.traces = None;
        let extras = RolloutExtras::new(sums[3].round() as usize, sums[0], sums[1], sums[2]);
        Ok((
            rollout::assemble(&self.tokenizer, batch, decoded, &config)?,
            extras,
        ))
    }

    /// The rewards of every row of the round; a worker scores its own rows and the results
    /// are gathered.
    fn score_rewards(&self, rollout: &RolloutBatch, tasks: &[&Task]) -> Result<RewardOutput> {
        let total = rollout.texts.len();
        let rows = self.my_rows(total);
        let local = self
            .rewards
            .score(&rollout.texts[rows.clone()], &tasks[rows.clone()])?;
        match &self.shard {
            Some(shard) => local.gather(shard, rows, total),
            None => Ok(local),
        }
    }

    /// μ optimizer steps on one rollout batch (everything after the rewards). Public so that
    /// callers with their own rollouts (or tests) can drive the update directly.
    pub fn update(
        &mut self,
        round: u64,
        rollout: &RolloutBatch,
        advantages: &[f32],
        adv_stats: AdvantageStats,
    ) -> Result<StepStats> {
        let cfg = self.config.grpo.clone();
        let rows = rollout.completion_ids.len();
        if advantages.len() != rows || rows == 0 {
            return Err(Error::invalid(
                "advantages",
                format!("{} advantages for {rows} rows", advantages.len()),
            ));
        }
        // This worker's rows, keeping their batch indices (hence their masks).
        let mine = self.my_rows(rows);
        let mut batch = ScoreBatch::new(
            rollout.prompt_ids[mine.clone()].to_vec(),
            rollout.prompt_mask[mine.clone()].to_vec(),
            rollout.completion_ids[mine.clone()].to_vec(),
        )?;
        batch.row_index = mine.clone().collect();
        let ga = cfg.gradient_accumulation_steps;
        // Rows per forward: the knob, else a whole accumulation chunk (the released footprint).
        let micro = if cfg.micro_batch_rows == 0 {
            rows.div_ceil(ga)
        } else {
            cfg.micro_batch_rows
        };
        let mu = cfg.num_iterations;
        let seeds: Vec<MaskSeed> = (0..mu as u64)
            .map(|j| MaskSeed::new(cfg.seed, round, j))
            .collect();
        let mut forward_passes = 0usize;
        let mut ratios = Vec::new();

        // π_old (μ > 1) and π_ref, scored right after the rollout with the iteration seeds.
        let t = Instant::now();
        let (old, reference) =
            self.score_old_and_reference(&batch, &seeds, micro, &mut forward_passes)?;
        let old_ref_time = t.elapsed().as_secs_f64();

        let mask: Vec<f32> = rollout
            .completion_mask
            .iter()
            .flatten()
            .map(|&m| m as f32)
            .collect();
        let k = batch.completion_len();
        let inputs = UpdateInputs {
            chunks: chunks(&mask, rows, k, ga, mine.clone()),
            batch,
            advantages: &advantages[mine.clone()],
            mask: mask[mine.start * k..mine.end * k].to_vec(),
            micro,
            old,
            reference,
        };

        let t = Instant::now();
        let mut iterations = Vec::with_capacity(mu);
        let mut total = LossSums::default();
        for (j, seed) in seeds.iter().enumerate() {
            let iteration =
                self.iteration(round, j, *seed, &inputs, &mut forward_passes, &mut ratios)?;
            total.add(&iteration.sums);
            iterations.push(iteration);
        }
        let skipped = iterations.iter().filter(|i| !i.applied).count() as u32;
        let update_time = t.elapsed().as_secs_f64();
        if let Some(shard) = &self.shard {
            forward_passes = shard.sum_count("estimator passes", forward_passes)?;
        }
        let finite_norms: Vec<f64> = iterations
            .iter()
            .map(|i| i.grad_norm)
            .filter(|n| n.is_finite())
            .collect();
        Ok(StepStats {
            step: self.step,
            optimizer_step: self.optimizer_step,
            epoch: self.sampler.epoch(),
            reward: adv_stats.reward_mean,
            reward_std: adv_stats.reward_std,
            frac_reward_zero_std: adv_stats.frac_reward_zero_std,
            rewards: Vec::new(),
            advantages: advantages.to_vec(),
            kl: total.kl_mean(),
            clip_low: total.clip_low_mean(),
            clip_high: total.clip_high_mean(),
            clip_region: total.clip_region_mean(),
            ratio_mean: total.ratio_mean(),
            loss: iterations.iter().map(|i| i.loss).sum::<f64>() / mu as f64,
            grad_norm: if finite_norms.is_empty() {
                f64::NAN
            } else {
                finite_norms.iter().sum::<f64>() / finite_norms.len() as f64
            },
            learning_rate: iterations.last().map_or(0.0, |i| i.learning_rate),
            iterations,
            completion_mean_length: 0.0,
            completion_min_length: 0.0,
            completion_max_length: 0.0,
            completion_clipped_ratio: 0.0,
            rows,
            rollout_time: 0.0,
            rollout_forward_passes: 0,
            rollout_extras: RolloutExtras::default(),
            reward_time: 0.0,
            sandbox: None,
            estimator_forward_passes: forward_passes,
            t_mean: if ratios.is_empty() {
                0.0
            } else {
                ratios.iter().sum::<f32>() / ratios.len() as f32
            },
            old_ref_time,
            update_time,
            skipped_updates: skipped,
            step_time: 0.0,
            samples: Vec::new(),
        })
    }

    /// π_old's scores (only when μ > 1; with μ = 1 the current score stands in, detached) and
    /// π_ref's (β ≠ 0) for every iteration seed, on the host, `[rows * K]` each.
    #[allow(clippy::type_complexity)]
    fn score_old_and_reference(
        &self,
        batch: &ScoreBatch,
        seeds: &[MaskSeed],
        micro: usize,
        forward_passes: &mut usize,
    ) -> Result<(Vec<Option<Vec<f32>>>, Vec<Option<Vec<f32>>>)> {
        let inner = (seeds.len() > 1).then(|| self.policy().valid());
        let mut old = Vec::with_capacity(seeds.len());
        let mut reference = Vec::with_capacity(seeds.len());
        for seed in seeds {
            let mut score =
                |model| score_host(&self.estimator, model, batch, *seed, micro, forward_passes);
            old.push(inner.as_ref().map(&mut score).transpose()?);
            reference.push(self.reference.as_ref().map(&mut score).transpose()?);
        }
        Ok((old, reference))
    }

    /// One optimizer step `j` of a round: the estimator's scores with the graph, the loss and
    /// backward per micro-batch, accumulated over the chunks, then AdamW (and the reference
    /// sync when due).
    fn iteration(
        &mut self,
        round: u64,
        j: usize,
        seed: MaskSeed,
        inputs: &UpdateInputs<'_>,
        forward_passes: &mut usize,
        ratios: &mut Vec<f32>,
    ) -> Result<IterationStats> {
        if self.config.lora.dropout > 0.0 {
            // The adapters' dropout draws from the backend RNG: key it by (round, j) so that a
            // resumed run draws the same masks.
            let key = [self.config.grpo.seed, round, j as u64, LORA_DROPOUT_DOMAIN];
            B::seed(&self.device, keyed_rng(key, 0).random());
        }
        let mut pass = GradientPass::<B>::default();
        for chunk in &inputs.chunks {
            for r0 in chunk.rows.clone().step_by(inputs.micro) {
                let rows = r0..(r0 + inputs.micro).min(chunk.rows.end);
                self.micro_batch(
                    inputs,
                    j,
                    seed,
                    rows,
                    chunk.normalizer,
                    &mut pass,
                    forward_passes,
                    ratios,
                )?;
            }
        }
        let to = Instant::now();
        let lr = self.schedule.lr(self.optimizer_step);
        let grads = self.reduce_pass(&mut pass)?;
        let (grad_norm, applied) = match grads {
            Some(grads) => {
                let policy = self.policy.take().expect("policy present");
                let (policy, outcome) = self.optimizer.step(lr, policy, grads);
                // With a sharded state each worker updated its own parameters: share them.
                let policy = match outcome.applied {
                    true => self.optimizer.share(policy)?,
                    false => policy,
                };
                self.policy = Some(policy);
                (outcome.grad_norm, outcome.applied)
            }
            None => (f64::NAN, false),
        };
        if !applied {
            self.skipped_updates += 1;
        }
        self.optimizer_step += 1;
        let g = &self.config.grpo;
        if g.sync_ref_model && self.optimizer_step.is_multiple_of(g.ref_sync_steps) {
            if let Some(r) = self.reference.take() {
                self.reference = Some(weights::sync_reference(&self.config, r, self.policy()));
            }
        }
        B::sync(&self.device).map_err(|e| Error::invalid("device", format!("{e:?}")))?;
        Ok(IterationStats {
            loss: pass.loss,
            grad_norm,
            learning_rate: lr,
            applied,
            sums: pass.sums,
            forward_time: pass.forward_time,
            backward_time: pass.backward_time,
            optimizer_time: to.elapsed().as_secs_f64(),
        })
    }

    /// The iteration's gradients, summed over the workers of a data-parallel run (with its
    /// loss statistics); None when some worker's loss was not finite (every worker then skips
    /// the update).
    fn reduce_pass(&self, pass: &mut GradientPass<B>) -> Result<Option<GradientsParams>> {
        let Some(shard) = &self.shard else {
            return Ok(pass.finite.then(|| pass.accumulator.grads()));
        };
        // Gathered as [sums…, loss, non-finite flag].
        let mut values: Vec<f32> = pass.sums.values().iter().map(|&v| v as f32).collect();
        values.extend([pass.loss as f32, f32::from(u8::from(!pass.finite))]);
        let sums = shard.sum("loss statistics", values)?;
        pass.sums = LossSums::from_values(&sums);
        pass.loss = sums[6] as f64;
        pass.finite = sums[7] == 0.0;
        if !pass.finite {
            return Ok(None);
        }
        let grads = pass.accumulator.grads();
        Ok(Some(super::parallel::all_reduce_grads(
            shard,
            self.policy(),
            grads,
        )?))
    }

    /// Score rows `rows` with the graph, take their loss (over the chunk's `normalizer`) and
    /// accumulate its gradients into `pass` (nothing once a loss was non-finite).
    #[allow(clippy::too_many_arguments)]
    fn micro_batch(
        &self,
        inputs: &UpdateInputs<'_>,
        j: usize,
        seed: MaskSeed,
        rows: std::ops::Range<usize>,
        normalizer: f32,
        pass: &mut GradientPass<B>,
        forward_passes: &mut usize,
        ratios: &mut Vec<f32>,
    ) -> Result<()> {
        let (r0, r1, k) = (rows.start, rows.end, inputs.batch.completion_len());
        let host = |v: &[f32]| host_tensor::<B>(&v[r0 * k..r1 * k], [r1 - r0, k], &self.device);
        let policy = self.policy();
        let tf = Instant::now();
        let scores = self
            .estimator
            .score(policy, &inputs.batch.select(rows), seed)?;
        *forward_passes += scores.forward_passes;
        if j == 0 {
            ratios.extend_from_slice(&scores.ratios);
        }
        let current = scores.per_token;
        let old = match &inputs.old[j] {
            Some(v) => host(v),
            None => current.clone().detach(),
        };
        let reference = inputs.reference[j].as_deref().map(host);
        let adv = Tensor::<B, 1>::from_data(
            TensorData::new(inputs.advantages[r0..r1].to_vec(), [r1 - r0]),
            &self.device,
        );
        let loss_cfg = self.config.grpo.loss();
        // The stats read inside grpo_loss syncs the device, so this is compute time.
        let (loss, part) = grpo_loss(
            current,
            old,
            reference,
            adv,
            host(&inputs.mask),
            &loss_cfg,
            normalizer,
        )?;
        pass.forward_time += tf.elapsed().as_secs_f64();
        let tb = Instant::now();
        pass.sums.add(&part);
        pass.loss += part.loss / normalizer as f64;
        if !part.loss.is_finite() {
            // Nothing from a non-finite loss may reach the parameters.
            pass.finite = false;
        } else if pass.finite {
            let grads = GradientsParams::from_grads(loss.backward(), policy);
            pass.accumulator.accumulate(policy, grads);
            B::sync(&self.device).map_err(|e| Error::invalid("device", format!("{e:?}")))?;
        }
        pass.backward_time += tb.elapsed().as_secs_f64();
        Ok(())
    }

    /// The resumable state (everything besides tensors).
    pub fn state(&self) -> TrainerState {
        TrainerState {
            format: STATE_FORMAT,
            step: self.step,
            optimizer_step: self.optimizer_step,
            skipped_updates: self.skipped_updates,
            sampler: self.sampler.state,
            rng: RngState {
                grpo_seed: self.config.grpo.seed,
                rollout_seed: self.config.rollout.seed,
                next_round: self.step,
            },
            schedule: self.schedule,
            has_reference: weights::stores_reference(&self.config, self.reference.as_ref()),
        }
    }

    /// Write `run_dir/checkpoints/step-N` atomically and prune to `checkpoint.keep_last`.
    /// Refuses to save non-finite weights.
    /// In a data-parallel run every worker calls this and worker 0 writes.
    pub fn save_checkpoint(&self, run_dir: &Path) -> Result<PathBuf> {
        let target = checkpoint::checkpoint_dir(run_dir, self.step);
        self.save_checkpoint_to(&target)?;
        if self.is_lead() {
            checkpoint::prune(run_dir, self.config.checkpoint.keep_last)?;
        }
        Ok(target)
    }

    /// Write a checkpoint into `target` (atomically). In a data-parallel run every worker
    /// calls this (a sharded optimizer state is gathered) and worker 0 writes.
    pub fn save_checkpoint_to(&self, target: &Path) -> Result<()> {
        let policy = self.policy();
        if !all_finite(policy) {
            return Err(Error::Checkpoint {
                path: target.to_path_buf(),
                message: "the policy has non-finite weights; refusing to save".into(),
            });
        }
        let (state, times) = self.optimizer.state(policy)?;
        if !self.is_lead() {
            return Ok(());
        }
        checkpoint::write_atomically(target, |dir| {
            weights::save(&self.config, dir, policy, self.reference.as_ref())?;
            self.tokenizer.save(dir.join("tokenizer.json"))?;
            GrpoOptimizer::<B>::write_state(&state, &times, &dir.join(OPTIMIZER_FILE))?;
            self.state().save(dir)?;
            self.config.save_resolved(dir)?;
            Ok(())
        })
    }

    /// Restore the policy, reference, optimizer and trainer state from a checkpoint directory.
    pub fn restore(&mut self, checkpoint: &Path) -> Result<()> {
        // A clone shares the tensors; the policy stays in place if the checkpoint is refused.
        let current = self.policy().clone();
        self.policy = Some(weights::restore_policy(&self.config, checkpoint, current)?);
        self.restore_state(checkpoint)
    }

    fn restore_state(&mut self, dir: &Path) -> Result<()> {
        let state = TrainerState::load(dir)?;
        if state.rng.grpo_seed != self.config.grpo.seed
            || state.rng.rollout_seed != self.config.rollout.seed
        {
            return Err(Error::Checkpoint {
                path: dir.to_path_buf(),
                message: format!(
                    "seeds differ from the config (checkpoint grpo.seed {} rollout.seed {}); resume with the run's config",
                    state.rng.grpo_seed, state.rng.rollout_seed
                ),
            });
        }
        self.reference =
            weights::load_reference(&self.config, dir, state.has_reference, self.policy())?;
        let policy = self.policy.take().expect("policy present");
        let loaded = self.optimizer.load(&policy, &dir.join(OPTIMIZER_FILE));
        self.policy = Some(policy);
        loaded?;
        self.step = state.step;
        self.optimizer_step = state.optimizer_step;
        self.skipped_updates = state.skipped_updates;
        self.sampler = TaskSampler::new(
            self.tasks.len(),
            self.config.grpo.seed,
            self.config.data.shuffle,
            state.sampler,
        );
        Ok(())
    }

    /// Train until `max_steps` rounds are done: metrics to `run_dir/metrics.jsonl`, sampled
    /// completions to `run_dir/completions.jsonl`, checkpoints every `checkpoint.every` rounds
    /// and at the end. Returns the last round's statistics.
    pub fn fit(&mut self, run_dir: &Path, max_steps: u64) -> Result<Option<StepStats>> {
        // Worker 0 alone writes; the others wait for it in their next collective call.
        let mut sinks = match self.is_lead() {
            true => Some(RoundSinks::open(&self.config, run_dir, self.step)?),
            false => None,
        };
        let progress = Progress::new(self.step, max_steps, self.config.logging.progress);
        let mut last = None;
        let ck = self.config.checkpoint.clone();
        while self.step < max_steps {
            let stats = self.step()?;
            if let Some(sinks) = &mut sinks {
                sinks.write(&stats, &progress)?;
            }
            let due = ck.every > 0 && self.step.is_multiple_of(ck.every);
            let last_step = self.step == max_steps;
            if due || (last_step && ck.save_final) {
                let path = self.save_checkpoint(run_dir)?;
                if self.is_lead() {
                    progress.message(&format!("saved {}", path.display()));
                }
            }
            last = Some(stats);
        }
        Ok(last)
    }
}

/// The per-round files of [`Trainer::fit`]: metrics and sampled completions.
struct RoundSinks {
    metrics: JsonlSink,
    samples: JsonlSink,
}

impl RoundSinks {
    /// Open (append) the run's files; a resumed run rewrites history after its checkpoint.
    fn open(config: &TrainConfig, run_dir: &Path, step: u64) -> Result<Self> {
        std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
        config.save_resolved(run_dir)?;
        let metrics_path = run_dir.join(&config.logging.metrics_file);
        crate::metrics::truncate_after_step(&metrics_path, step)?;
        let samples_path = run_dir.join("completions.jsonl");
        crate::metrics::truncate_after_step(&samples_path, step)?;
        Ok(Self {
            metrics: JsonlSink::append(&metrics_path)?,
            samples: JsonlSink::append(&samples_path)?,
        })
    }

    fn write(&mut self, stats: &StepStats, progress: &Progress) -> Result<()> {
        self.metrics.write(&stats.metrics())?;
        for s in &stats.samples {
            self.samples.write(s)?;
        }
        if stats.skipped_updates > 0 {
            progress.message(&format!(
                "step {}: {} update(s) skipped (non-finite loss or gradients)",
                stats.step, stats.skipped_updates
            ));
        }
        if let Some(s) = stats.samples.first() {
            let text: String = s.completion.chars().take(200).collect();
            progress.message(&format!(
                "step {} sample [{}] reward {:.2}: {}",
                s.step,
                s.task_id,
                s.reward,
                text.replace('\n', "⏎")
            ));
        }
        progress.update(stats.step, &stats.metrics());
        Ok(())
    }
}

/// A gradient-accumulation chunk's rows on this worker, and the whole chunk's normaliser.
struct Chunk {
    /// Rows of this worker's batch.
    rows: Range<usize>,
    /// `max(1, completion tokens of the whole chunk) · GA`, the same on every worker.
    normalizer: f32,
}

/// The `ga` gradient-accumulation chunks of a batch of `rows` rows (`mask`: `[rows * k]`) that
/// hold rows of `mine`, in `mine`'s row numbers.
fn chunks(mask: &[f32], rows: usize, k: usize, ga: usize, mine: Range<usize>) -> Vec<Chunk> {
    (0..ga)
        .filter_map(|c| {
            let (c0, c1) = (c * rows / ga, (c + 1) * rows / ga);
            let tokens: f32 = mask[c0 * k..c1 * k].iter().sum();
            let (lo, hi) = (c0.max(mine.start), c1.min(mine.end));
            (lo < hi).then(|| Chunk {
                rows: lo - mine.start..hi - mine.start,
                normalizer: tokens.max(1.0) * ga as f32,
            })
        })
        .collect()
}

/// What the μ iterations of one update share.
struct UpdateInputs<'a> {
    batch: ScoreBatch,
    advantages: &'a [f32],
    /// `[rows * K]` completion mask (1 = a token of the completion).
    mask: Vec<f32>,
    /// The gradient-accumulation chunks.
    chunks: Vec<Chunk>,
    /// Rows per forward.
    micro: usize,
    /// Per iteration: π_old's host scores `[rows * K]` (μ > 1) and π_ref's (β ≠ 0).
    old: Vec<Option<Vec<f32>>>,
    reference: Vec<Option<Vec<f32>>>,
}

/// The gradients and sums of one iteration's forward/backward passes.
struct GradientPass<B: AutodiffBackend> {
    accumulator: GradientsAccumulator<DiffusionLm<B>>,
    sums: LossSums,
    loss: f64,
    /// False once a micro-batch's loss was non-finite (the update is then skipped).
    finite: bool,
    forward_time: f64,
    backward_time: f64,
}

impl<B: AutodiffBackend> Default for GradientPass<B> {
    fn default() -> Self {
        Self {
            accumulator: GradientsAccumulator::new(),
            sums: LossSums::default(),
            loss: 0.0,
            finite: true,
            forward_time: 0.0,
            backward_time: 0.0,
        }
    }
}

/// Score `batch` without gradients in chunks of `micro` rows; host `[rows * K]`.
fn score_host<B: burn::tensor::backend::Backend>(
    estimator: &Estimator,
    model: &DiffusionLm<B>,
    batch: &ScoreBatch,
    seed: MaskSeed,
    micro: usize,
    passes: &mut usize,
) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(batch.rows() * batch.completion_len());
    let mut r0 = 0;
    while r0 < batch.rows() {
        let r1 = (r0 + micro).min(batch.rows());
        let scores = estimator.score(model, &batch.select(r0..r1), seed)?;
        *passes += scores.forward_passes;
        out.extend(
            scores
                .per_token
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .expect("f32 scores"),
        );
        r0 = r1;
    }
    Ok(out)
}

fn host_tensor<B: AutodiffBackend>(
    values: &[f32],
    shape: [usize; 2],
    device: &B::Device,
) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), device)
}
