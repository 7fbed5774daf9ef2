//! Sandbox throughput on a fixed MBPP batch: the wasm executor, the process executor and the
//! reference approach of DiffuCoder's executor (one fresh `python3 -c "<code>\n<assert>"` per
//! assert, 5 s timeout), in one run, all through the same pool with one worker per core.
//!
//! The batch: the first N tasks of the MBPP test split (task ids 11..), each with its reference
//! solution (should pass) and with the next task's solution (wrong: should fail), 3 asserts each.
//! `cargo bench --bench sandbox` (N = 100 by default; `SANDBOX_BENCH_TASKS=N` to change;
//! `SANDBOX_BENCH_ONLY=wasm` (or `process`, `reference`) runs one executor, e.g. under a profiler;
//! `SANDBOX_BENCH_REPS=R` times the batch R times per executor and compares the median passes, e.g.
//! to profile the steady state with `perf record -D <ms>` past the start-up).
//!
//! Then each executor's fixed cost per sample: trivial samples (empty solution, one `pass` test)
//! one after another on one thread (`SANDBOX_BENCH_TRIVIAL=N` samples, 500 by default; the
//! reference runs N/25, at least 10; 0 skips it).

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coupled_grpo::sandbox::{
    Executor, Limits, Outcome, Pool, ProcessConfig, ProcessExecutor, Program, WasmConfig,
    WasmExecutor,
};
use coupled_grpo::{Error, Result};

#[derive(serde::Deserialize)]
struct MbppRow {
    task_id: u32,
    code: String,
    #[serde(default)]
    test_setup_code: String,
    test_list: Vec<String>,
}

fn mbpp_path() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let vendored = root.join("assets/data/mbpp/mbpp.jsonl");
    if vendored.is_file() {
        return vendored;
    }
    root.join("../shared/data/mbpp/mbpp.jsonl")
}

fn batch(tasks: usize) -> Vec<(Program, bool)> {
    let path = mbpp_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let rows: Vec<MbppRow> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("mbpp row"))
        .filter(|r: &MbppRow| (11..=510).contains(&r.task_id))
        .take(tasks + 1)
        .collect();
    assert!(rows.len() > tasks, "not enough MBPP test-split tasks");
    let mut out = Vec::new();
    for i in 0..tasks {
        let own = &rows[i];
        let other = &rows[i + 1];
        for (solution, correct) in [(&own.code, true), (&other.code, false)] {
            out.push((
                Program {
                    code: format!("{}\n{}", own.test_setup_code, solution),
                    tests: own.test_list.clone(),
                },
                correct,
            ));
        }
    }
    out
}

/// DiffuCoder's executor: a fresh interpreter per assert, 5 s timeout, output captured away.
struct Reference {
    python: PathBuf,
}

impl Executor for Reference {
    fn name(&self) -> &'static str {
        "reference"
    }

    fn execute(&self, program: &Program, limits: &Limits) -> Result<Vec<Outcome>> {
        program
            .tests
            .iter()
            .map(|test| {
                let mut child = Command::new(&self.python)
                    .arg("-c")
                    .arg(format!("{}\n{}", program.code, test))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| Error::io(&self.python, e))?;
                if !wait_for(child.id(), limits.test_timeout) {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Ok(Outcome::Timeout);
                }
                let status = child.wait().map_err(|e| Error::io(&self.python, e))?;
                Ok(if status.success() {
                    Outcome::Passed
                } else {
                    Outcome::Failed {
                        detail: status.to_string(),
                    }
                })
            })
            .collect()
    }
}

/// Waits up to `timeout` for `pid` to exit (pidfd + poll: no busy loop, no extra thread).
fn wait_for(pid: u32, timeout: Duration) -> bool {
    // SAFETY: pidfd_open on a child we have not reaped; the fd is owned below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if fd < 0 {
        return true; // let wait() block; only loses the timeout on ancient kernels
    }
    // SAFETY: fd is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut pfd = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(&fd),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, ms) > 0 }
}

/// Records the latency of every sample.
struct Timed {
    inner: Arc<dyn Executor>,
    latencies: Mutex<Vec<Duration>>,
}

impl Executor for Timed {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn execute(&self, program: &Program, limits: &Limits) -> Result<Vec<Outcome>> {
        let start = Instant::now();
        let out = self.inner.execute(program, limits);
        self.latencies.lock().unwrap().push(start.elapsed());
        out
    }
}

struct Report {
    name: &'static str,
    tests_per_s: f64,
    p50_ms: f64,
    p95_ms: f64,
}

fn measure(
    exec: Arc<dyn Executor>,
    programs: &[(Program, bool)],
    workers: usize,
    reps: usize,
) -> Report {
    let name = exec.name();
    let limits = Limits::default(); // 5 s per test, as DiffuCoder
    let batch: Vec<Program> = programs.iter().map(|(p, _)| p.clone()).collect();
    // Warm-up: first-touch costs (page cache, pool slots) are not what we measure.
    let warm = Pool::new(exec.clone(), workers);
    for r in warm.execute_batch(&batch[..batch.len().min(2 * workers)], &limits) {
        r.unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let mut reports: Vec<Report> = (0..reps.max(1))
        .map(|_| timed_pass(&exec, programs, &batch, &limits, workers))
        .collect();
    reports.sort_by(|a, b| a.tests_per_s.total_cmp(&b.tests_per_s));
    reports.swap_remove(reports.len() / 2)
}

fn timed_pass(
    exec: &Arc<dyn Executor>,
    programs: &[(Program, bool)],
    batch: &[Program],
    limits: &Limits,
    workers: usize,
) -> Report {
    let name = exec.name();
    let timed = Arc::new(Timed {
        inner: exec.clone(),
        latencies: Mutex::new(Vec::new()),
    });
    let pool = Pool::new(timed.clone(), workers);
    let start = Instant::now();
    let results = pool.execute_batch(batch, limits);
    let wall = start.elapsed();

    let mut tests = 0usize;
    let (mut right_pass, mut right_total, mut wrong_pass, mut wrong_total) = (0, 0, 0, 0);
    for ((_, correct), result) in programs.iter().zip(results) {
        let outcomes = result.unwrap_or_else(|e| panic!("{name}: {e}"));
        tests += outcomes.len();
        let passed = outcomes.iter().filter(|o| o.passed()).count();
        if *correct {
            right_pass += passed;
            right_total += outcomes.len();
        } else {
            wrong_pass += passed;
            wrong_total += outcomes.len();
        }
    }
    let mut lat = timed.latencies.lock().unwrap().clone();
    lat.sort();
    let pct = |q: f64| lat[((lat.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3;
    let report = Report {
        name,
        tests_per_s: tests as f64 / wall.as_secs_f64(),
        p50_ms: pct(0.50),
        p95_ms: pct(0.95),
    };
    println!(
        "{:<10} {:>8} {:>7} {:>9.2} {:>10.0} {:>9.2} {:>9.2}   right {right_pass}/{right_total}, wrong {wrong_pass}/{wrong_total} passed",
        name,
        programs.len(),
        tests,
        wall.as_secs_f64(),
        report.tests_per_s,
        report.p50_ms,
        report.p95_ms,
    );
    report
}

fn main() {
    let tasks: usize = env_usize("SANDBOX_BENCH_TASKS", 100);
    let reps: usize = env_usize("SANDBOX_BENCH_REPS", 1);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let programs = batch(tasks);
    println!(
        "MBPP batch: {} samples ({} tasks x reference + wrong solution), {} workers, timeout 5 s",
        programs.len(),
        tasks,
        workers
    );

    let wasm: Arc<dyn Executor> = Arc::new(WasmExecutor::new(WasmConfig::default()).expect("wasm"));
    let process = Arc::new(ProcessExecutor::new(ProcessConfig::default()).expect("process"));
    let reference: Arc<dyn Executor> = Arc::new(Reference {
        python: process.python().to_path_buf(),
    });

    println!(
        "{:<10} {:>8} {:>7} {:>9} {:>10} {:>9} {:>9}",
        "executor", "samples", "tests", "wall s", "tests/s", "p50 ms", "p95 ms"
    );
    let only = std::env::var("SANDBOX_BENCH_ONLY").ok();
    let executors: Vec<Arc<dyn Executor>> = [wasm, process, reference]
        .into_iter()
        .filter(|e| only.as_deref().is_none_or(|o| o == e.name()))
        .collect();
    let reports: Vec<Report> = executors
        .iter()
        .map(|e| measure(e.clone(), &programs, workers, reps))
        .collect();
    if let Some(base) = reports.iter().find(|r| r.name == "reference") {
        for r in reports.iter().filter(|r| r.name != "reference") {
            println!(
                "{} vs reference: {:.1}x tests/s, p50 latency {:.1}x lower",
                r.name,
                r.tests_per_s / base.tests_per_s,
                base.p50_ms / r.p50_ms
            );
        }
    }

    let trivial: usize = env_usize("SANDBOX_BENCH_TRIVIAL", 500);
    if trivial == 0 {
        return;
    }
    println!("\ntrivial samples (empty solution, one `pass` test), one thread:");
    println!("{:<10} {:>8} {:>10}", "executor", "samples", "ms/sample");
    for exec in &executors {
        let n = if exec.name() == "reference" {
            (trivial / 25).max(10)
        } else {
            trivial
        };
        println!(
            "{:<10} {:>8} {:>10.3}",
            exec.name(),
            n,
            per_sample_ms(&**exec, n)
        );
    }
}

/// `name` from the environment as a count, or `default` when unset or not a number.
fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Mean wall time of `n` trivial samples run one after another on this thread, after a few
/// untimed ones (first-touch costs).
fn per_sample_ms(exec: &dyn Executor, n: usize) -> f64 {
    let program = Program {
        code: String::new(),
        tests: vec!["pass".into()],
    };
    let limits = Limits::default();
    let run = || {
        let out = exec
            .execute(&program, &limits)
            .unwrap_or_else(|e| panic!("{}: {e}", exec.name()));
        assert_eq!(out, vec![Outcome::Passed], "{}", exec.name());
    };
    (0..n.min(10)).for_each(|_| run());
    let start = Instant::now();
    (0..n).for_each(|_| run());
    start.elapsed().as_secs_f64() * 1e3 / n as f64
}
