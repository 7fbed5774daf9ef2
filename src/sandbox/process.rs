//! The process executor: native CPython behind a forkserver (`sandbox/forkserver.py`).
//!
//! Each worker slot owns one forkserver. The forkserver creates its mount, network and PID
//! namespaces once, mounts a size-capped tmpfs as the samples' root and chroots there, sets a
//! minimal environment, no_new_privs and the rlimits every sample shares (file size, processes),
//! and pre-imports the common stdlib modules
//! ([`process_preload_modules`](super::process_preload_modules)). Then it forks one child per
//! sample, which adds the CPU, address-space and open-files rlimits and drops to an unprivileged
//! uid (one per slot, so that `RLIMIT_NPROC` counts only that slot's processes). Verdicts come
//! back on a private pipe, never from the program's stdout (which is /dev/null). The server
//! charges a hung test alone and kills the whole PID namespace content after every attempt, so
//! `setsid()` daemons die too. A server that dies is replaced.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::pool::available_cores;
use super::{
    cap_outcome, process_preload_modules, sandbox_error, Executor, Limits, Outcome, Program,
};
use crate::{Error, Result};

const NAME: &str = "process";
const FORKSERVER: &str = include_str!("../../sandbox/forkserver.py");

/// Settings of the [`ProcessExecutor`]. Per-program limits (timeout, memory) come from [`Limits`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessConfig {
    /// Interpreter; `None` picks `/usr/bin/python3` when it exists (a pyenv shim is a shell
    /// script that needs the environment we scrub), else `python3` on `PATH`.
    pub python: Option<PathBuf>,
    /// Forkservers, i.e. samples that can run at once; 0 = one per available core.
    pub workers: usize,
    /// Samples of slot `k` run as uid/gid `sandbox_uid + k` (uids nobody else uses).
    pub sandbox_uid: u32,
    /// `RLIMIT_FSIZE`: the largest file a program may write.
    pub file_size_bytes: u64,
    /// Size of the private tmpfs root (the program's `/tmp` lives there).
    pub tmpfs_bytes: u64,
    /// `RLIMIT_NOFILE`.
    pub open_files: u64,
    /// `RLIMIT_NPROC` (per slot uid): caps fork bombs.
    pub processes: u64,
    /// How long a forkserver may take to start (namespaces, mounts, imports).
    pub startup_timeout: Duration,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        Self {
            python: None,
            workers: 0,
            sandbox_uid: 0x7b00_0000,
            file_size_bytes: 16 << 20,
            tmpfs_bytes: 64 << 20,
            open_files: 64,
            processes: 16,
            startup_timeout: Duration::from_secs(30),
        }
    }
}

/// Runs programs with native CPython in a namespaced, rlimited forkserver child. Needs root.
pub struct ProcessExecutor {
    config: ProcessConfig,
    python: PathBuf,
    idle: Mutex<Vec<Slot>>,
    returned: Condvar,
}

impl std::fmt::Debug for ProcessExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessExecutor")
            .field("config", &self.config)
            .field("python", &self.python)
            .finish()
    }
}

struct Slot {
    index: u32,
    server: Option<Server>,
}

impl ProcessExecutor {
    /// Starts one forkserver now (to report a missing interpreter or privilege at once); the
    /// others start on first use.
    pub fn new(config: ProcessConfig) -> Result<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(sandbox_error(
                NAME,
                "the process executor needs root (it creates namespaces, chroots and drops to an \
                 unprivileged uid); use the wasm executor instead",
            ));
        }
        let python = resolve_python(config.python.as_deref())?;
        let workers = if config.workers == 0 {
            available_cores()
        } else {
            config.workers
        };
        let workers = u32::try_from(workers)
            .map_err(|_| Error::config("process.workers", "too many workers"))?;
        let mut slots: Vec<Slot> = (0..workers)
            .rev()
            .map(|index| Slot {
                index,
                server: None,
            })
            .collect();
        if let Some(first) = slots.last_mut() {
            first.server = Some(Server::spawn(&config, &python, first.index)?);
        }
        Ok(Self {
            config,
            python,
            idle: Mutex::new(slots),
            returned: Condvar::new(),
        })
    }

    /// The interpreter the forkservers run.
    pub fn python(&self) -> &Path {
        &self.python
    }

    fn take_slot(&self) -> Slot {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(slot) = idle.pop() {
                return slot;
            }
            idle = self.returned.wait(idle).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn give_back(&self, slot: Slot) {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(slot);
        self.returned.notify_one();
    }

    fn run_on(&self, slot: &mut Slot, request: &str, deadline: Duration) -> Result<Vec<Outcome>> {
        let mut last_failure = String::new();
        // One retry: a server can die for reasons of its own (it is never killable from a
        // sample), and a fresh one answers the same request.
        for _ in 0..2 {
            if slot.server.is_none() {
                slot.server = Some(Server::spawn(&self.config, &self.python, slot.index)?);
            }
            let server = slot.server.as_mut().expect("server was just set");
            match server.request(request, Instant::now() + deadline) {
                Ok(Reply::Outcomes(outcomes)) => return Ok(outcomes),
                Ok(Reply::Error(message)) => {
                    return Err(sandbox_error(NAME, format!("forkserver: {message}")))
                }
                Err(failure) => {
                    last_failure = failure;
                    slot.server = None; // Drop kills it and its namespace.
                }
            }
        }
        Err(sandbox_error(
            NAME,
            format!("forkserver failed twice; last: {last_failure}"),
        ))
    }
}

impl Executor for ProcessExecutor {
    fn name(&self) -> &'static str {
        NAME
    }

    fn execute(&self, program: &Program, limits: &Limits) -> Result<Vec<Outcome>> {
        if limits.test_timeout.is_zero() {
            return Err(Error::invalid("limits.test_timeout", "must be positive"));
        }
        if program.tests.is_empty() {
            return Ok(Vec::new());
        }
        let request = serde_json::json!({
            "code": program.code,
            "tests": program.tests,
            "timeout": limits.test_timeout.as_secs_f64(),
            "memory_bytes": limits.memory_bytes,
        })
        .to_string();
        // Worst case every test times out and each retry re-runs the solution to its timeout.
        let steps = 2 * (program.tests.len() as u32 + 1);
        let deadline = limits.test_timeout * steps + Duration::from_secs(10);

        let mut slot = self.take_slot();
        let result = self.run_on(&mut slot, &request, deadline);
        self.give_back(slot);
        let outcomes = result?;
        if outcomes.len() != program.tests.len() {
            return Err(sandbox_error(
                NAME,
                format!(
                    "forkserver returned {} outcomes for {} tests",
                    outcomes.len(),
                    program.tests.len()
                ),
            ));
        }
        Ok(outcomes
            .into_iter()
            .map(|o| cap_outcome(o, limits.output_bytes))
            .collect())
    }
}

fn resolve_python(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    let system = Path::new("/usr/bin/python3");
    if system.exists() {
        return Ok(system.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("python3"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| sandbox_error(NAME, "no python3 found (set ProcessConfig.python)"))
}

enum Reply {
    Outcomes(Vec<Outcome>),
    Error(String),
}

#[derive(Deserialize)]
struct ServerMessage {
    #[serde(default)]
    ready: bool,
    outcomes: Option<Vec<Outcome>>,
    error: Option<String>,
}

/// One forkserver process and its private root directory.
struct Server {
    child: Child,
    stdin: ChildStdin,
    stdout: LineReader,
    // Kept alive for the server's lifetime; the tmpfs on it exists only in its mount namespace.
    _root: tempfile::TempDir,
}

impl Server {
    fn spawn(config: &ProcessConfig, python: &Path, index: u32) -> Result<Self> {
        let root = tempfile::Builder::new()
            .prefix("coupled-grpo-sandbox-")
            .tempdir()
            .map_err(|e| Error::io(std::env::temp_dir(), e))?;
        let uid = config
            .sandbox_uid
            .checked_add(index)
            .ok_or_else(|| Error::config("process.sandbox_uid", "uid overflow"))?;
        let server_config = serde_json::json!({
            "root": root.path(),
            "uid": uid,
            "tmpfs_bytes": config.tmpfs_bytes,
            "file_size_bytes": config.file_size_bytes,
            "open_files": config.open_files,
            "processes": config.processes,
            "preload": process_preload_modules(),
        });
        let mut child = Command::new(python)
            .args(["-I", "-S", "-B", "-c", FORKSERVER])
            .arg(server_config.to_string())
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| sandbox_error(NAME, format!("cannot start {}: {e}", python.display())))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = LineReader::new(child.stdout.take().expect("piped stdout"));
        let mut server = Self {
            child,
            stdin,
            stdout,
            _root: root,
        };
        let deadline = Instant::now() + config.startup_timeout;
        let hello = server
            .stdout
            .read_line(deadline)
            .map_err(|e| sandbox_error(NAME, format!("forkserver did not start: {e}")))?;
        match serde_json::from_slice::<ServerMessage>(&hello) {
            Ok(ServerMessage { ready: true, .. }) => Ok(server),
            Ok(ServerMessage {
                error: Some(error), ..
            }) => Err(sandbox_error(NAME, error)),
            _ => Err(sandbox_error(
                NAME,
                format!(
                    "unexpected forkserver greeting: {}",
                    String::from_utf8_lossy(&hello)
                ),
            )),
        }
    }

    /// Sends one request; `Err` means the server is unusable (dead, hung or garbled).
    fn request(&mut self, request: &str, deadline: Instant) -> std::result::Result<Reply, String> {
        self.stdin
            .write_all(request.as_bytes())
            .and_then(|()| self.stdin.write_all(b"\n"))
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("write: {e}"))?;
        let line = self.stdout.read_line(deadline)?;
        match serde_json::from_slice::<ServerMessage>(&line) {
            Ok(ServerMessage {
                outcomes: Some(outcomes),
                ..
            }) => Ok(Reply::Outcomes(outcomes)),
            Ok(ServerMessage {
                error: Some(error), ..
            }) => Ok(Reply::Error(error)),
            _ => Err(format!(
                "garbled reply: {}",
                String::from_utf8_lossy(&line[..line.len().min(200)])
            )),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The outer process dies; the server (its child) has PDEATHSIG=SIGKILL and is init of
        // the PID namespace, so every sample process goes with it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads newline-terminated messages with a deadline, so a hung server never blocks the host.
struct LineReader {
    stdout: ChildStdout,
    buf: Vec<u8>,
}

impl LineReader {
    fn new(stdout: ChildStdout) -> Self {
        Self {
            stdout,
            buf: Vec::new(),
        }
    }

    fn read_line(&mut self, deadline: Instant) -> std::result::Result<Vec<u8>, String> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let rest = self.buf.split_off(pos + 1);
                let mut line = std::mem::replace(&mut self.buf, rest);
                line.pop();
                return Ok(line);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("timed out waiting for the forkserver".into());
            }
            let mut pfd = libc::pollfd {
                fd: self.stdout.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
            // SAFETY: one valid pollfd for the duration of the call.
            let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
            if ready < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("poll: {err}"));
            }
            if ready == 0 {
                continue;
            }
            let mut chunk = [0u8; 65536];
            match self.stdout.read(&mut chunk) {
                Ok(0) => return Err("forkserver exited".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(code: &str, tests: &[&str]) -> Program {
        Program {
            code: code.into(),
            tests: tests.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn a_killed_forkserver_is_replaced() {
        let exec = ProcessExecutor::new(ProcessConfig {
            workers: 1,
            ..Default::default()
        })
        .unwrap();
        let limits = Limits {
            test_timeout: Duration::from_secs(2),
            ..Default::default()
        };
        let add = program(
            "def add(a, b):\n    return a + b",
            &["assert add(1, 2) == 3"],
        );
        assert_eq!(exec.execute(&add, &limits).unwrap(), vec![Outcome::Passed]);
        let pid = {
            let idle = exec.idle.lock().unwrap();
            idle[0].server.as_ref().unwrap().child.id()
        };
        // SAFETY: plain kill(2) of a process we spawned and have not reaped.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(exec.execute(&add, &limits).unwrap(), vec![Outcome::Passed]);
        let new_pid = exec.idle.lock().unwrap()[0]
            .server
            .as_ref()
            .unwrap()
            .child
            .id();
        assert_ne!(pid, new_pid);
    }

    #[test]
    fn zero_tests_and_zero_timeout() {
        let exec = ProcessExecutor::new(ProcessConfig {
            workers: 1,
            ..Default::default()
        })
        .unwrap();
        assert!(exec
            .execute(&program("x = 1", &[]), &Limits::default())
            .unwrap()
            .is_empty());
        let zero = Limits {
            test_timeout: Duration::ZERO,
            ..Default::default()
        };
        assert!(exec
            .execute(&program("x = 1", &["assert x"]), &zero)
            .is_err());
    }

    #[test]
    fn details_are_capped_by_output_bytes() {
        let exec = ProcessExecutor::new(ProcessConfig {
            workers: 1,
            ..Default::default()
        })
        .unwrap();
        let limits = Limits {
            test_timeout: Duration::from_secs(2),
            output_bytes: 20,
            ..Default::default()
        };
        let out = exec
            .execute(&program("x = 1", &["assert x == 2, 'y' * 5000"]), &limits)
            .unwrap();
        assert_eq!(
            out,
            vec![Outcome::Failed {
                detail: "AssertionError: yyyy".into()
            }]
        );
    }
}
