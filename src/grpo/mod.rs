//! GRPO on top of the likelihood estimators: advantages, the clipped k3-KL loss, the optimiser
//! and its schedule, the reference model, checkpoints and the trainer (spec §1.5–1.8, §9).

pub mod adamw;
pub mod advantage;
pub mod loss;

pub use adamw::FusedAdamW;
pub use advantage::{group_advantages, AdvantageStats, Baseline};
pub use loss::{grpo_loss, LossConfig, LossSums};
pub mod optimizer;
pub mod reference;
pub mod schedule;

pub use optimizer::{global_grad_norm, GrpoOptimizer, OptimizerConfig, UpdateOutcome};
pub use reference::{all_finite, soft_update};
pub use schedule::{LrSchedule, ScheduleKind};
pub mod checkpoint;
pub mod config;
pub mod parallel;
pub mod rewards;
pub mod run;
pub mod trainer;
pub mod weights;
pub mod zero;

pub use checkpoint::{SamplerState, TrainerState};
pub use config::TrainConfig;
pub use parallel::{DeviceSpec, Shard};
pub use rewards::{RewardOutput, Rewards, SandboxStats, WeightedReward};
pub use run::{run_with_eval, EvalPoint, RunOptions, RunSummary};
pub use trainer::{IterationStats, StepStats, Trainer};
