//! Metric names. Policy-level names are TRL's (`GRPOTrainer._metrics`), so curves line up with
//! DiffuCoder/TRL runs; diffusion-specific values live under `rollout/`, `estimator/` and
//! `sandbox/`.

/// Mean total reward of the round's completions.
pub const REWARD: &str = "reward";
/// Mean over prompt groups of the within-group reward std.
pub const REWARD_STD: &str = "reward_std";
/// Fraction of groups whose rewards are all equal (zero advantage).
pub const FRAC_REWARD_ZERO_STD: &str = "frac_reward_zero_std";
/// Masked-mean k3 KL to the reference.
pub const KL: &str = "kl";
/// Fraction of tokens clipped below `1 − ε_low` (negative advantage).
pub const CLIP_LOW: &str = "clip_ratio/low_mean";
/// Fraction of tokens clipped above `1 + ε_high` (positive advantage).
pub const CLIP_HIGH: &str = "clip_ratio/high_mean";
/// Fraction of tokens clipped on either side.
pub const CLIP_REGION: &str = "clip_ratio/region_mean";
/// Mean completion length (tokens up to and including the first `<|im_end|>`).
pub const COMPLETION_MEAN_LENGTH: &str = "completions/mean_length";
pub const COMPLETION_MIN_LENGTH: &str = "completions/min_length";
pub const COMPLETION_MAX_LENGTH: &str = "completions/max_length";
/// Fraction of completions with no `<|im_end|>` (truncated at K).
pub const COMPLETION_CLIPPED_RATIO: &str = "completions/clipped_ratio";
/// Learning rate of the last optimizer step of the round.
pub const LEARNING_RATE: &str = "learning_rate";
/// Mean pre-clip global gradient norm over the round's optimizer steps.
pub const GRAD_NORM: &str = "grad_norm";
/// Mean loss over the round's optimizer steps.
pub const LOSS: &str = "loss";
/// Wall time of the whole round, seconds.
pub const STEP_TIME: &str = "step_time";
/// Rollout round (1-based after the step).
pub const STEP: &str = "step";
/// Optimizer steps taken so far.
pub const OPTIMIZER_STEP: &str = "optimizer_step";
/// Epoch (fractional) over the training tasks.
pub const EPOCH: &str = "epoch";

/// `rewards/<name>/mean`: per reward function.
pub fn reward_mean(name: &str) -> String {
    format!("rewards/{name}/mean")
}
/// `rewards/<name>/std`.
pub fn reward_std(name: &str) -> String {
    format!("rewards/{name}/std")
}

pub const ROLLOUT_TIME: &str = "rollout/time";
pub const ROLLOUT_FORWARD_PASSES: &str = "rollout/forward_passes";
pub const ROLLOUT_ROWS: &str = "rollout/rows";
pub const ROLLOUT_TOKENS_PER_SECOND: &str = "rollout/tokens_per_second";
/// Positions run through the layers by the round's rollout (all passes and rows).
pub const ROLLOUT_FORWARD_POSITIONS: &str = "rollout/forward_positions";
/// Mean local AR-ness@1 of the round's rollouts (with `rollout.record_trace`).
pub const ROLLOUT_LOCAL_AR: &str = "rollout/local_ar_1";
/// Mean global AR-ness@1 of the round's rollouts (with `rollout.record_trace`).
pub const ROLLOUT_GLOBAL_AR: &str = "rollout/global_ar_1";

pub const ESTIMATOR_T_MEAN: &str = "estimator/t_mean";
pub const ESTIMATOR_FORWARD_PASSES: &str = "estimator/forward_passes";
pub const ESTIMATOR_SCORE_TIME: &str = "estimator/old_ref_time";
pub const ESTIMATOR_UPDATE_TIME: &str = "estimator/update_time";
/// Seconds in the μ iterations' scoring forwards (with graph) and losses.
pub const ESTIMATOR_FORWARD_TIME: &str = "estimator/forward_time";
/// Seconds in backward passes.
pub const ESTIMATOR_BACKWARD_TIME: &str = "estimator/backward_time";
/// Seconds in clipping + AdamW + reference sync.
pub const ESTIMATOR_OPTIMIZER_TIME: &str = "estimator/optimizer_time";
pub const ESTIMATOR_RATIO_MEAN: &str = "estimator/ratio_mean";
pub const ESTIMATOR_SKIPPED_UPDATES: &str = "estimator/skipped_updates";

pub const SANDBOX_TIME: &str = "sandbox/time";
pub const SANDBOX_TESTS: &str = "sandbox/tests";
pub const SANDBOX_PASSED: &str = "sandbox/passed_frac";
pub const SANDBOX_TIMEOUTS: &str = "sandbox/timeouts";
pub const SANDBOX_CRASHES: &str = "sandbox/crashes";
pub const SANDBOX_MEMORY: &str = "sandbox/memory_errors";
pub const SANDBOX_SYNTAX_ERRORS: &str = "sandbox/syntax_errors";
