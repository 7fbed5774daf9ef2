//! `coupled-grpo reward`: score completions against their tests with the released DiffuCoder
//! reward (format + pass rate), in the sandbox.
//!
//! Input JSONL line: `{"id": str, "completion": str, "test_cases": [str]}` (the raw completion
//! text; the code is extracted from it). Output: one line per input line, same order:
//! `{"id", "reward", "format_reward", "code_reward", "tests": [{"outcome", "detail"?}]}`, or
//! `{"id", "error"}` naming the line when the input line is malformed or the sandbox failed on
//! it. The run exits non-zero only when it fails itself (unreadable input, no executor,
//! sandbox failures), after writing every line.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::ValueEnum;
use coupled_grpo::reward::{CodeReward, Evaluation, RewardWeights};
use coupled_grpo::sandbox::{Executor, Limits, Pool, ProcessConfig, ProcessExecutor};
use serde_json::{json, Value};

/// Lines scored per sandbox batch: large enough to keep every worker busy, small enough to
/// stream big files.
const BATCH: usize = 512;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ExecutorKind {
    /// CPython in wasmtime (default).
    Wasm,
    /// Native python3 forkserver in namespaces (needs root).
    Process,
}

#[derive(clap::Args)]
pub struct Args {
    /// Input JSONL: {"id", "completion", "test_cases"} per line.
    #[arg(long)]
    input: PathBuf,
    /// Output JSONL, one line per input line.
    #[arg(long)]
    output: PathBuf,
    #[command(flatten)]
    sandbox: SandboxArgs,
}

/// The sandbox flags shared by the verbs that run tests (`reward`, `eval`).
#[derive(clap::Args)]
pub struct SandboxArgs {
    /// Sandbox that runs the parse checks and the tests.
    #[arg(long, value_enum, default_value_t = ExecutorKind::Wasm)]
    executor: ExecutorKind,
    /// Worker threads; 0 = one per available core.
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Per-test timeout in seconds (a timeout fails that test only).
    #[arg(long = "timeout-s", default_value_t = 5.0)]
    timeout_s: f64,
}

impl SandboxArgs {
    /// The worker pool and per-test limits these flags name (the timeout checked first).
    pub fn pool_and_limits(&self) -> anyhow::Result<(Pool, Limits)> {
        if !(self.timeout_s.is_finite() && self.timeout_s > 0.0) {
            bail!(
                "--timeout-s must be a positive number of seconds, got {}",
                self.timeout_s
            );
        }
        let executor = make_executor(self.executor, self.workers)?;
        let limits = Limits {
            test_timeout: Duration::from_secs_f64(self.timeout_s),
            ..Limits::default()
        };
        Ok((Pool::new(executor, self.workers), limits))
    }
}

/// One input line, parsed.
struct Item {
    id: String,
    completion: String,
    tests: Vec<String>,
}

/// An output line waiting for its batch: a parse error or an item to score.
enum Pending {
    Error(Value),
    Score(Item, usize),
}

pub(crate) fn make_executor(
    kind: ExecutorKind,
    workers: usize,
) -> anyhow::Result<Arc<dyn Executor>> {
    Ok(match kind {
        ExecutorKind::Wasm => wasm_executor()?,
        ExecutorKind::Process => Arc::new(
            ProcessExecutor::new(ProcessConfig {
                workers,
                ..ProcessConfig::default()
            })
            .context("starting the process executor")?,
        ),
    })
}

#[cfg(feature = "wasm")]
fn wasm_executor() -> anyhow::Result<Arc<dyn Executor>> {
    use coupled_grpo::sandbox::{WasmConfig, WasmExecutor};
    Ok(Arc::new(
        WasmExecutor::new(WasmConfig::default()).context("starting the wasm executor")?,
    ))
}

#[cfg(not(feature = "wasm"))]
fn wasm_executor() -> anyhow::Result<Arc<dyn Executor>> {
    bail!("this binary was built without the `wasm` feature; use --executor process")
}

/// Parses one input line; the error names the line and the field.
fn parse_line(line_no: usize, text: &str) -> Result<Item, (Value, String)> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| (Value::Null, format!("line {line_no}: invalid JSON: {e}")))?;
    let Value::Object(obj) = v else {
        return Err((
            Value::Null,
            format!("line {line_no}: expected a JSON object"),
        ));
    };
    let id = obj.get("id").cloned().unwrap_or(Value::Null);
    let fail = |msg: String| (id.clone(), format!("line {line_no}: {msg}"));
    let id_str = match &id {
        Value::String(s) => s.clone(),
        Value::Null => return Err(fail("field `id` is missing".into())),
        _ => return Err(fail("field `id`: expected a string".into())),
    };
    let completion = match obj.get("completion") {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => return Err(fail("field `completion` is missing".into())),
        _ => return Err(fail("field `completion`: expected a string".into())),
    };
    let tests = match obj.get("test_cases") {
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, t)| match t {
                Value::String(s) => Ok(s.clone()),
                _ => Err(fail(format!("field `test_cases[{i}]`: expected a string"))),
            })
            .collect::<Result<Vec<_>, _>>()?,
        None | Some(Value::Null) => return Err(fail("field `test_cases` is missing".into())),
        _ => {
            return Err(fail(
                "field `test_cases`: expected a list of strings".into(),
            ))
        }
    };
    if tests.is_empty() {
        // The pass rate of zero tests is undefined (the reference divides by zero).
        return Err(fail("field `test_cases` is empty".into()));
    }
    Ok(Item {
        id: id_str,
        completion,
        tests,
    })
}

fn output_line(id: &str, e: &Evaluation, weights: &RewardWeights) -> Value {
    json!({
        "id": id,
        "reward": weights.total(e),
        "format_reward": e.format,
        "code_reward": e.code,
        "tests": e.tests,
    })
}

/// Totals for the closing summary.
#[derive(Default)]
struct Summary {
    lines: usize,
    scored: usize,
    malformed: usize,
    sandbox_errors: usize,
    reward_sum: f64,
    tests_run: usize,
}

fn flush(
    pending: &mut Vec<Pending>,
    reward: &CodeReward,
    weights: &RewardWeights,
    out: &mut impl Write,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let items: Vec<&Item> = pending
        .iter()
        .filter_map(|p| match p {
            Pending::Score(item, _) => Some(item),
            Pending::Error(_) => None,
        })
        .collect();
    let texts: Vec<&str> = items.iter().map(|i| i.completion.as_str()).collect();
    let tests: Vec<&[String]> = items.iter().map(|i| i.tests.as_slice()).collect();
    let mut results = reward.evaluate(&texts, &tests)?.into_iter();
    for p in pending.drain(..) {
        let line = match p {
            Pending::Error(v) => v,
            Pending::Score(item, line_no) => {
                match results.next().expect("one result per scored item") {
                    Ok(e) => {
                        summary.scored += 1;
                        summary.reward_sum += f64::from(weights.total(&e));
                        summary.tests_run += e.tests.len();
                        output_line(&item.id, &e, weights)
                    }
                    Err(e) => {
                        summary.sandbox_errors += 1;
                        json!({"id": item.id, "error": format!("line {line_no}: {e}")})
                    }
                }
            }
        };
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

fn score_file(
    input: &Path,
    out: &mut impl Write,
    reward: &CodeReward,
    weights: &RewardWeights,
) -> anyhow::Result<Summary> {
    let file =
        std::fs::File::open(input).with_context(|| format!("opening {}", input.display()))?;
    let mut summary = Summary::default();
    let mut pending = Vec::new();
    let mut queued = 0;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line_no = i + 1;
        let text = line.with_context(|| format!("{}:{line_no}: reading", input.display()))?;
        summary.lines += 1;
        match parse_line(line_no, &text) {
            Ok(item) => {
                pending.push(Pending::Score(item, line_no));
                queued += 1;
            }
            Err((id, msg)) => {
                summary.malformed += 1;
                pending.push(Pending::Error(json!({"id": id, "error": msg})));
            }
        }
        if queued == BATCH {
            flush(&mut pending, reward, weights, out, &mut summary)?;
            queued = 0;
        }
    }
    flush(&mut pending, reward, weights, out, &mut summary)?;
    Ok(summary)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let (pool, limits) = args.sandbox.pool_and_limits()?;
    let reward = CodeReward::new(pool.clone(), limits);
    let weights = RewardWeights::default();

    // Written beside the target and renamed at the end, so a failed run leaves no torn file.
    let dir = args
        .output
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let summary = {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        let s = score_file(&args.input, &mut w, &reward, &weights)?;
        w.flush()?;
        s
    };
    tmp.persist(&args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;

    let secs = started.elapsed().as_secs_f64();
    let mean = if summary.scored > 0 {
        summary.reward_sum / summary.scored as f64
    } else {
        0.0
    };
    eprintln!(
        "reward: {} lines -> {} ({} scored, {} malformed, {} sandbox errors); mean reward {:.4}; \
         {} tests on {} x {} in {:.2} s",
        summary.lines,
        args.output.display(),
        summary.scored,
        summary.malformed,
        summary.sandbox_errors,
        mean,
        summary.tests_run,
        pool.workers(),
        pool.executor().name(),
        secs
    );
    if summary.sandbox_errors > 0 {
        bail!(
            "the sandbox failed on {} of {} lines (their output lines hold the error)",
            summary.sandbox_errors,
            summary.lines
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_lines_name_line_and_field() {
        let err = |text: &str| parse_line(7, text).err().unwrap();
        assert_eq!(err("{").0, Value::Null);
        assert!(err("{").1.starts_with("line 7: invalid JSON"));
        assert!(err("[1]").1.contains("expected a JSON object"));
        let (id, msg) = err(r#"{"id": "a", "test_cases": ["assert 1"]}"#);
        assert_eq!(id, json!("a"));
        assert_eq!(msg, "line 7: field `completion` is missing");
        let (_, msg) = err(r#"{"id": "a", "completion": "x", "test_cases": ["a", 3]}"#);
        assert_eq!(msg, "line 7: field `test_cases[1]`: expected a string");
        let (_, msg) = err(r#"{"id": "a", "completion": "x", "test_cases": []}"#);
        assert!(msg.contains("empty"));
        assert!(err(r#"{"id": 5, "completion": "x", "test_cases": ["a"]}"#)
            .1
            .contains("`id`"));
        let ok = parse_line(1, r#"{"id": "a", "completion": "x", "test_cases": ["a"]}"#)
            .ok()
            .unwrap();
        assert_eq!((ok.id.as_str(), ok.tests.len()), ("a", 1));
    }
}
