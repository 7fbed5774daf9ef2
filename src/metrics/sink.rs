//! Where metrics go: one JSON object per line in `metrics.jsonl` (flushed per step, so a
//! crashed run keeps its curve), sampled completions in `completions.jsonl`, and a one-line
//! progress display on stderr.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::{Error, Result};

/// A metrics record: name → value, serialised in name order.
pub type Metrics = BTreeMap<String, f64>;

/// One logged completion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompletionSample {
    pub step: u64,
    pub task_id: String,
    pub prompt: String,
    pub completion: String,
    pub reward: f32,
    pub advantage: f32,
}

/// Appends JSON lines to a file.
pub struct JsonlSink {
    path: PathBuf,
    file: File,
}

impl JsonlSink {
    /// Open `path` for appending (created if missing), so a resumed run continues its file.
    pub fn append(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(Self { path, file })
    }

    /// Create `path` afresh (truncating an old file), for a run that starts from scratch.
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.exists() {
            std::fs::remove_file(path).map_err(|e| Error::io(path, e))?;
        }
        Self::append(path)
    }

    /// Write one record as a line and flush it.
    pub fn write<T: Serialize>(&mut self, record: &T) -> Result<()> {
        let mut line = serde_json::to_string(record).map_err(|e| Error::Json {
            path: self.path.clone(),
            line: None,
            message: e.to_string(),
        })?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Drop every line of a metrics file whose `step` is above `step` (after resuming from an
/// earlier checkpoint, so the curve has no duplicate steps).
pub fn truncate_after_step(path: &Path, step: u64) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_f64()))
                .is_none_or(|s| s <= step as f64)
        })
        .collect();
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    crate::util::write_atomic(path, out.as_bytes())
}

/// A one-line console progress display: `[####----] step 3/10 reward 0.41 kl 0.0012 …`.
pub struct Progress {
    total: u64,
    start: Instant,
    start_step: u64,
    enabled: bool,
}

impl Progress {
    pub fn new(start_step: u64, total: u64, enabled: bool) -> Self {
        Self {
            total,
            start: Instant::now(),
            start_step,
            enabled,
        }
    }

    /// Redraw for `step` (1-based, rounds done) with the step's metrics.
    pub fn update(&self, step: u64, m: &Metrics) {
        if !self.enabled {
            return;
        }
        let width = 24usize;
        let frac = if self.total == 0 {
            1.0
        } else {
            step as f64 / self.total as f64
        };
        let filled = ((frac * width as f64).round() as usize).min(width);
        let done = step.saturating_sub(self.start_step).max(1) as f64;
        let per_step = self.start.elapsed().as_secs_f64() / done;
        let eta = per_step * self.total.saturating_sub(step) as f64;
        let get = |k: &str| m.get(k).copied().unwrap_or(f64::NAN);
        eprint!(
            "\r[{}{}] step {step}/{} | reward {:.3} ± {:.3} | kl {:.4} | clip {:.3} | len {:.0} | lr {:.2e} | {:.1}s/step, eta {:.0}s   ",
            "#".repeat(filled),
            "-".repeat(width - filled),
            self.total,
            get(super::names::REWARD),
            get(super::names::REWARD_STD),
            get(super::names::KL),
            get(super::names::CLIP_REGION),
            get(super::names::COMPLETION_MEAN_LENGTH),
            get(super::names::LEARNING_RATE),
            per_step,
            eta
        );
        if step >= self.total {
            eprintln!();
        }
    }

    /// Print a message on its own line without breaking the bar.
    pub fn message(&self, text: &str) {
        if self.enabled {
            // Clear the bar's line, print, and let the next update redraw the bar.
            eprintln!("\r\x1b[2K{text}");
        } else {
            eprintln!("{text}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_appends_and_truncates_by_step() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.jsonl");
        let mut sink = JsonlSink::append(&path).unwrap();
        for s in 1..=4u64 {
            let mut m = Metrics::new();
            m.insert("step".into(), s as f64);
            m.insert("reward".into(), 0.5);
            sink.write(&m).unwrap();
        }
        drop(sink);
        truncate_after_step(&path, 2).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.lines().next().unwrap().contains("\"reward\":0.5"));
    }
}
