//! Checkpoint directories: written into a temporary sibling and renamed into place, so a crash
//! leaves either the previous checkpoint or the new one; the newest N are kept.
//!
//! ```text
//! checkpoints/step-N/
//!   model.safetensors, config.json, tokenizer.json   the policy, loadable by HF transformers
//!   reference/model.safetensors, reference/config.json   (only when β ≠ 0)
//!   optimizer.safetensors                              Adam moments (+ step counts) per parameter
//!   trainer_state.json                                 round, optimizer step, schedule, RNG keys, data cursor
//!   config.resolved.toml                               the run's configuration
//! ```
//!
//! With LoRA (`lora.r > 0`) the weights are PEFT adapters instead of full models: see
//! [`super::weights`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::schedule::LrSchedule;
use crate::{Error, Result};

/// Version of [`TrainerState`]'s layout.
pub const STATE_FORMAT: u32 = 1;
pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const REFERENCE_DIR: &str = "reference";

/// Position of the task sampler: the next task is `order(epoch)[cursor]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SamplerState {
    pub epoch: u64,
    pub cursor: usize,
}

/// The trainer's random state. Every draw comes from a ChaCha8 stream keyed by these seeds and
/// the round/iteration/row it belongs to, so the counters below are the whole RNG state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// `grpo.seed`: task order and mask draws.
    pub grpo_seed: u64,
    /// `rollout.seed`: base of the per-round rollout seeds.
    pub rollout_seed: u64,
    /// The next rollout round (the key of its rollout and mask draws).
    pub next_round: u64,
}

/// Everything besides tensors needed to continue a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    pub format: u32,
    /// Rollout rounds completed.
    pub step: u64,
    /// Optimizer steps taken (the schedule's position).
    pub optimizer_step: u64,
    /// Updates skipped by the non-finite guard.
    pub skipped_updates: u64,
    pub sampler: SamplerState,
    pub rng: RngState,
    pub schedule: LrSchedule,
    /// Whether a reference model is stored in `reference/`.
    pub has_reference: bool,
}

impl TrainerState {
    pub fn save(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("state serialises");
        crate::util::write_atomic(&dir.join(STATE_FILE), text.as_bytes())
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(STATE_FILE);
        let state: TrainerState = crate::util::read_json(&path)?;
        if state.format != STATE_FORMAT {
            return Err(Error::Checkpoint {
                path,
                message: format!(
                    "state format {} (this build reads {STATE_FORMAT})",
                    state.format
                ),
            });
        }
        Ok(state)
    }
}

/// `checkpoints/step-N` under `run_dir`.
pub fn checkpoint_dir(run_dir: &Path, step: u64) -> PathBuf {
    run_dir.join("checkpoints").join(format!("step-{step}"))
}

/// Write a checkpoint: `fill` populates a fresh temporary directory, which is then renamed to
/// `target` (replacing an older directory of the same name).
pub fn write_atomically(target: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = target.parent().ok_or_else(|| Error::Checkpoint {
        path: target.to_path_buf(),
        message: "no parent directory".into(),
    })?;
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("checkpoint");
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.tmp-"))
        .tempdir_in(parent)
        .map_err(|e| Error::io(parent, e))?;
    fill(tmp.path())?;
    let tmp_path = tmp.keep();
    if target.exists() {
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        std::fs::rename(target, &old).map_err(|e| Error::io(target, e))?;
        std::fs::rename(&tmp_path, target).map_err(|e| Error::io(target, e))?;
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    } else {
        std::fs::rename(&tmp_path, target).map_err(|e| Error::io(target, e))?;
    }
    // Persist the rename itself.
    if let Ok(d) = std::fs::File::open(parent) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// `step-N` checkpoints under `run_dir/checkpoints`, oldest first.
pub fn list_checkpoints(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let dir = run_dir.join("checkpoints");
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
        let entry = entry.map_err(|e| Error::io(&dir, e))?;
        let name = entry.file_name();
        if let Some(n) = name
            .to_str()
            .and_then(|s| s.strip_prefix("step-"))
            .and_then(|s| s.parse().ok())
        {
            if entry.path().is_dir() {
                out.push((n, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Delete all but the newest `keep` checkpoints (`keep = 0` keeps all).
pub fn prune(run_dir: &Path, keep: usize) -> Result<Vec<PathBuf>> {
    if keep == 0 {
        return Ok(Vec::new());
    }
    let all = list_checkpoints(run_dir)?;
    let excess = all.len().saturating_sub(keep);
    let mut removed = Vec::new();
    for (_, path) in all.into_iter().take(excess) {
        std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        removed.push(path);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replace_and_prune() {
        let run = tempfile::tempdir().unwrap();
        for step in [2u64, 4, 6] {
            write_atomically(&checkpoint_dir(run.path(), step), |d| {
                std::fs::write(d.join("f"), step.to_string()).map_err(|e| Error::io(d, e))
            })
            .unwrap();
        }
        // A failing fill leaves the old directory intact and no temporary behind.
        let target = checkpoint_dir(run.path(), 4);
        let r = write_atomically(&target, |_| Err(Error::invalid("x", "boom")));
        assert!(r.is_err());
        assert_eq!(std::fs::read_to_string(target.join("f")).unwrap(), "4");
        write_atomically(&target, |d| {
            std::fs::write(d.join("f"), "new").map_err(|e| Error::io(d, e))
        })
        .unwrap();
        assert_eq!(std::fs::read_to_string(target.join("f")).unwrap(), "new");
        let names: Vec<_> = std::fs::read_dir(run.path().join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 3, "no temporaries left: {names:?}");
        prune(run.path(), 2).unwrap();
        let left: Vec<u64> = list_checkpoints(run.path())
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(left, vec![4, 6]);
    }
}
