//! The reward-function contract.

use crate::data::Task;
use crate::{Error, Result};

/// A reward function over a batch of completions.
///
/// `score` returns one value per completion, in order. `None` means "not applicable" (e.g. a
/// task without tests has no pass rate) and is skipped when rewards are summed, as TRL's
/// `nansum` does with the reference's `None`. It never stands for a failure: a sandbox
/// error is an `Err`, so a broken executor cannot pass for a zero reward.
pub trait RewardFn: Send + Sync {
    /// Name used in metrics (`rewards/<name>/mean`).
    fn name(&self) -> &str;

    /// Scores `completions[i]` (the decoded completion text) against `tasks[i]`.
    fn score(&self, completions: &[String], tasks: &[&Task]) -> Result<Vec<Option<f32>>>;
}

/// Fails unless the batch has one task per completion.
pub(crate) fn check_batch(completions: usize, tasks: usize) -> Result<()> {
    if completions != tasks {
        return Err(Error::invalid(
            "tasks",
            format!("{completions} completions but {tasks} tasks"),
        ));
    }
    Ok(())
}
