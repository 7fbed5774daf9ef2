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
/// wasm guest has only what its build-time snapshot imported, the forkserver saves the import
/// time of every sample.
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

/// The module names of [`PRELOAD_MODULES`], comments and blank lines skipped.
pub fn preload_modules() -> Vec<&'static str> {
    PRELOAD_MODULES
        .lines()
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
