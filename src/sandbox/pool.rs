//! A worker pool that feeds any [`Executor`]: the batch is shared by index, results keep order.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{sandbox_error, Executor, Limits, Outcome, Program};
use crate::Result;

/// Runs batches of programs on `workers` threads through one shared executor.
#[derive(Clone)]
pub struct Pool {
    executor: Arc<dyn Executor>,
    workers: usize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("executor", &self.executor.name())
            .field("workers", &self.workers)
            .finish()
    }
}

/// The number of CPU cores this process may use (1 if unknown).
pub(crate) fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Pool {
    /// A pool of `workers` threads; 0 means one per available core.
    pub fn new(executor: Arc<dyn Executor>, workers: usize) -> Self {
        let workers = if workers == 0 {
            available_cores()
        } else {
            workers
        };
        Self { executor, workers }
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The executor the workers share.
    pub fn executor(&self) -> &Arc<dyn Executor> {
        &self.executor
    }

    /// Runs every program; element `i` of the result belongs to `programs[i]`. A failure of the
    /// sandbox on one program (or a panic in the executor) is that program's `Err` only.
    pub fn execute_batch(
        &self,
        programs: &[Program],
        limits: &Limits,
    ) -> Vec<Result<Vec<Outcome>>> {
        let run = |program: &Program| {
            catch_unwind(AssertUnwindSafe(|| self.executor.execute(program, limits)))
                .unwrap_or_else(|panic| {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    Err(sandbox_error(
                        self.executor.name(),
                        format!("executor panicked: {message}"),
                    ))
                })
        };
        let threads = self.workers.min(programs.len());
        if threads <= 1 {
            return programs.iter().map(run).collect();
        }
        let next = AtomicUsize::new(0);
        let mut results: Vec<Option<Result<Vec<Outcome>>>> =
            (0..programs.len()).map(|_| None).collect();
        let done = crossbeam::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|_| {
                        let mut mine = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= programs.len() {
                                return mine;
                            }
                            mine.push((i, run(&programs[i])));
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
        for (i, result) in done {
            results[i] = Some(result);
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(sandbox_error(
                        self.executor.name(),
                        "worker thread died before answering",
                    ))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    /// Passes test `i` iff the test text equals the code; sleeps a little so workers interleave.
    struct Echo {
        threads: Mutex<std::collections::HashSet<std::thread::ThreadId>>,
    }

    impl Executor for Echo {
        fn name(&self) -> &'static str {
            "echo"
        }
        fn execute(&self, program: &Program, _limits: &Limits) -> Result<Vec<Outcome>> {
            self.threads
                .lock()
                .unwrap()
                .insert(std::thread::current().id());
            if program.code == "panic" {
                panic!("boom");
            }
            if program.code == "err" {
                return Err(sandbox_error("echo", "broken"));
            }
            std::thread::sleep(Duration::from_millis(2));
            Ok(program
                .tests
                .iter()
                .map(|t| {
                    if *t == program.code {
                        Outcome::Passed
                    } else {
                        Outcome::Failed { detail: t.clone() }
                    }
                })
                .collect())
        }
    }

    #[test]
    fn order_is_preserved_and_errors_stay_local() {
        let echo = Arc::new(Echo {
            threads: Mutex::new(Default::default()),
        });
        let pool = Pool::new(echo.clone(), 3);
        assert_eq!(pool.workers(), 3);
        let mut programs: Vec<Program> = (0..40)
            .map(|i| Program {
                code: format!("{i}"),
                tests: vec![format!("{i}"), "x".into()],
            })
            .collect();
        programs[7].code = "panic".into();
        programs[9].code = "err".into();
        let out = pool.execute_batch(&programs, &Limits::default());
        assert_eq!(out.len(), 40);
        for (i, r) in out.iter().enumerate() {
            match i {
                7 => assert!(format!("{}", r.as_ref().unwrap_err()).contains("panicked: boom")),
                9 => assert!(r.is_err()),
                _ => assert_eq!(
                    r.as_ref().unwrap(),
                    &vec![Outcome::Passed, Outcome::Failed { detail: "x".into() }],
                    "program {i}"
                ),
            }
        }
        assert!(echo.threads.lock().unwrap().len() > 1, "ran on one thread");
        assert!(pool.execute_batch(&[], &Limits::default()).is_empty());
        assert!(Pool::new(echo, 0).workers() >= 1);
    }
}
