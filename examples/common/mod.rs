//! Helpers shared by the examples.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use coupled_grpo::data::synthetic::{Generator, Split};
use coupled_grpo::data::Task;
use coupled_grpo::eval::{EvalConfig, PromptStyle};
use coupled_grpo::grpo::trainer::load_tasks;
use coupled_grpo::grpo::TrainConfig;
use coupled_grpo::rollout::{CacheMode, RolloutConfig};

/// Greedy held-out evaluation with the training prompt and the run's decoding length and steps.
pub fn eval_config(config: &TrainConfig) -> EvalConfig {
    EvalConfig {
        // Exact decoding whatever the rollouts use (cache, parallel decoding, early
        // completion), so that runs with different rollout settings are scored alike.
        rollout: RolloutConfig {
            temperature: 0.0,
            top_p: None,
            top_k: None,
            truncate_text: false,
            chunk_rows: Some(64),
            cache: CacheMode::None,
            cache_refresh: 0,
            confidence_threshold: None,
            max_tokens_per_step: None,
            early_completion: false,
            ..config.rollout.clone()
        },
        prompt_style: PromptStyle::Training,
        system_prompt: config.data.system_prompt.clone(),
        tasks_per_batch: 50,
        ..EvalConfig::default()
    }
}

/// Training tasks and held-out tasks: the synthetic held-out split (disjoint problems), or the
/// last `--eval-tasks` rows of a data file.
pub fn split_tasks(config: &TrainConfig, eval_tasks: usize) -> Result<(Vec<Task>, Vec<Task>)> {
    let mut tasks = load_tasks(config)?;
    if config.data.format == "synthetic" {
        let held_out = Generator::new(Split::HeldOut, config.data.seed)
            .distinct(eval_tasks)
            .context("drawing held-out synthetic tasks")?;
        return Ok((tasks, held_out));
    }
    if tasks.len() <= eval_tasks {
        bail!(
            "{}: {} tasks, but --eval-tasks {} must leave some for training",
            config.data.path.display(),
            tasks.len(),
            eval_tasks
        );
    }
    let held_out = tasks.split_off(tasks.len() - eval_tasks);
    Ok((tasks, held_out))
}

/// A repository path that works from any working directory.
pub fn embedded(rel: &str) -> PathBuf {
    let here = PathBuf::from(rel);
    if here.exists() {
        here
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
    }
}

pub fn toml_str(p: &Path) -> String {
    toml::Value::String(p.display().to_string()).to_string()
}

/// `runs/YYYYmmdd-HHMMSS` in UTC.
pub fn default_run_dir() -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    PathBuf::from(format!(
        "runs/{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    ))
}
