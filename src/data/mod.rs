//! Coding tasks (a prompt plus assert-style tests) and their loaders.
//!
//! | module | data set | format |
//! |---|---|---|
//! | [`acecoder`] | TIGER-Lab AceCode-87K (training), its hard split (spec §1.11) | JSONL, parquet |
//! | [`mbpp`] | MBPP, standard splits by `task_id` | JSONL |
//! | [`humaneval`] | OpenAI HumanEval, `check(candidate)` split per assert | JSONL (gzip) |
//! | [`prompt`] | training user message and the evaluation templates | - |
//! | [`synthetic`] | procedural toy tasks in AceCoder format | generated |
//!
//! A malformed row is an [`crate::Error::Data`] naming the file and line, or, with
//! [`OnError::Skip`], a [`SkippedRow`] in the result: never a silent drop.

pub mod acecoder;
pub mod humaneval;
pub mod mbpp;
pub mod prompt;
pub(crate) mod pysrc;
pub mod synthetic;
mod task;

pub use task::{Loaded, OnError, SkippedRow, Task, TaskSource};
