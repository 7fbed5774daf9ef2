//! The executor contract: run untrusted solution code against assert-style tests.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Result;

/// One program to score: the solution code and independent test statements
/// (AceCoder style: each is a complete `assert ...` statement run after the solution).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Program {
    /// Solution source (already extracted from the model's completion).
    pub code: String,
    /// Test statements; a test passes iff it runs to completion without raising.
    pub tests: Vec<String>,
}

/// Resource limits for one program. Defaults follow DiffuCoder's executor (5 s per test).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Wall-clock (or fuel-equivalent) budget per test statement.
    pub test_timeout: Duration,
    /// Memory cap for the guest, in bytes.
    pub memory_bytes: u64,
    /// Cap on captured output (stdout/stderr) per program, in bytes; the rest is dropped.
    pub output_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            test_timeout: Duration::from_secs(5),
            memory_bytes: 512 << 20,
            output_bytes: 64 << 10,
        }
    }
}

/// Verdict for one test statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Ran to completion without raising.
    Passed,
    /// Raised (assertion or any other exception); `detail` is `Type: message`.
    Failed { detail: String },
    /// Exceeded the per-test time budget.
    Timeout,
    /// The interpreter died or exited (trap, `os._exit`, `sys.exit`, signal): never a pass.
    Crashed { detail: String },
    /// Exceeded the memory cap.
    Memory,
}

impl Outcome {
    /// True only for [`Outcome::Passed`].
    pub fn passed(&self) -> bool {
        matches!(self, Outcome::Passed)
    }
}

/// Something that can run programs in isolation. Implementations must be safe to call from
/// many threads at once (the pool shares one executor between workers).
pub trait Executor: Send + Sync {
    /// Short name for logs and metrics (`wasm`, `process`, ...).
    fn name(&self) -> &'static str;

    /// Run one program; returns one outcome per test, in order. `Err` means the sandbox itself
    /// failed (not the program): callers must not turn that into a zero reward silently.
    fn execute(&self, program: &Program, limits: &Limits) -> Result<Vec<Outcome>>;
}
