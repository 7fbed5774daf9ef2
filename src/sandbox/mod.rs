//! Sandboxed execution of untrusted solution code against assert-style tests.
//!
//! | executor | isolation | notes |
//! |---|---|---|
//! | [`WasmExecutor`] (default, feature `wasm`) | CPython 3.14 compiled to WebAssembly, run by wasmtime: no filesystem, no sockets, no processes, memory and CPU caps | guest built from `sandbox/` by `sandbox/build.sh` on first use |
//! | [`ProcessExecutor`] | native `python3` forkserver: PID/mount/network namespaces, chroot to a tmpfs, unprivileged uid, rlimits | needs root (or `CAP_SYS_ADMIN`) |
//!
//! [`Pool`] runs a batch through any [`Executor`] on worker threads, order preserved.
//! Both executors share the same test semantics: the solution runs once as `__main__`, then each
//! test runs in a copy of its namespace; a test passes iff it completes without raising. A test
//! that times out, crashes or exits is charged alone: the sandbox is rebuilt, the solution re-run
//! and the next test continues.

pub mod base;
mod pool;
mod process;
#[cfg(feature = "wasm")]
mod wasm;

pub use base::{Executor, Limits, Outcome, Program};
pub use pool::Pool;
pub use process::{ProcessConfig, ProcessExecutor};
#[cfg(feature = "wasm")]
pub use wasm::{CpuLimit, WasmConfig, WasmExecutor};

use crate::Error;

/// Standard-library modules imported before untrusted code runs (`sandbox/preload.txt`): the
/// wasm guest has only what its build-time snapshot imported; the forkserver imports the common
/// part ([`process_preload_modules`]) to save every sample its import time.
pub const PRELOAD_MODULES: &str = include_str!("../../sandbox/preload.txt");

/// Modules that coding problems import and that every executor guarantees (a subset of
/// [`PRELOAD_MODULES`]).
pub const TASK_STDLIB: &[&str] = &[
    "math",
    "collections",
    "itertools",
    "heapq",
    "re",
    "functools",
    "typing",
    "string",
    "bisect",
    "operator",
    "copy",
    "json",
    "random",
    "statistics",
    "decimal",
    "fractions",
    "datetime",
    "dataclasses",
    "enum",
    "array",
    "struct",
    "hashlib",
];

/// The line of [`PRELOAD_MODULES`] after which the process executor imports modules lazily.
const PROCESS_LAZY_MARKER: &str = "# process: lazy";

/// The module names of [`PRELOAD_MODULES`], comments and blank lines skipped: what the wasm
/// guest imports into its snapshot.
pub fn preload_modules() -> Vec<&'static str> {
    module_names(PRELOAD_MODULES.lines())
}

/// The modules the process executor's forkserver pre-imports: those of [`PRELOAD_MODULES`] above
/// its `# process: lazy` line. The rest stay on disk for the samples that import them, since each
/// module the server holds makes every fork and exit slower.
pub fn process_preload_modules() -> Vec<&'static str> {
    module_names(
        PRELOAD_MODULES
            .lines()
            .take_while(|line| line.trim() != PROCESS_LAZY_MARKER),
    )
}

fn module_names<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    lines
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect()
}

fn sandbox_error(executor: &str, message: impl Into<String>) -> Error {
    Error::Sandbox {
        executor: executor.to_string(),
        message: message.into(),
    }
}

/// Cuts `detail` to at most `max` bytes on a char boundary (hostile messages can be huge).
fn truncate_detail(mut detail: String, max: u64) -> String {
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    if detail.len() > max {
        let mut end = max;
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        detail.truncate(end);
    }
    detail
}

/// Applies [`truncate_detail`] to an outcome's detail, if it has one.
fn cap_outcome(outcome: Outcome, max: u64) -> Outcome {
    match outcome {
        Outcome::Failed { detail } => Outcome::Failed {
            detail: truncate_detail(detail, max),
        },
        Outcome::Crashed { detail } => Outcome::Crashed {
            detail: truncate_detail(detail, max),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preload_list_has_the_issue_modules() {
        let modules = preload_modules();
        for name in TASK_STDLIB {
            assert!(modules.contains(name), "{name} missing from preload.txt");
        }
        assert!(modules.iter().all(|m| !m.contains(' ')));
    }

    #[test]
    fn the_process_executor_preloads_a_proper_subset() {
        let all = preload_modules();
        let hot = process_preload_modules();
        assert!(PRELOAD_MODULES
            .lines()
            .any(|l| l.trim() == PROCESS_LAZY_MARKER));
        assert!(hot.len() < all.len() && all.starts_with(&hot));
        // Imported by most prompts (HumanEval's `from typing import List`) or solutions.
        for name in ["typing", "collections", "math", "re", "itertools", "heapq"] {
            assert!(hot.contains(&name), "{name} should be pre-imported");
        }
        // Their at-fork hooks would run in every child.
        assert!(!hot.contains(&"threading") && !hot.contains(&"random"));
    }

    #[test]
    fn details_are_cut_on_char_boundaries() {
        assert_eq!(truncate_detail("héllo".into(), 2), "h");
        assert_eq!(truncate_detail("héllo".into(), 3), "hé");
        assert_eq!(truncate_detail("abc".into(), 10), "abc");
        let capped = cap_outcome(
            Outcome::Failed {
                detail: "x".repeat(100),
            },
            10,
        );
        assert_eq!(
            capped,
            Outcome::Failed {
                detail: "x".repeat(10)
            }
        );
        assert_eq!(cap_outcome(Outcome::Timeout, 0), Outcome::Timeout);
    }
}
