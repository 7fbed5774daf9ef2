//! Training metrics: TRL-compatible names ([`names`]), the JSONL sink and console progress
//! ([`sink`]), and pass@k ([`pass_at_k`]).

pub mod names;
pub mod pass_at_k;
pub mod sink;

pub use pass_at_k::{mean_pass_at_k, pass_at_k};
pub use sink::{truncate_after_step, CompletionSample, JsonlSink, Metrics, Progress};
