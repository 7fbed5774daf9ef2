//! Training metrics: TRL-compatible names ([`names`]), the JSONL sink and console progress
//! ([`sink`]), pass@k ([`pass_at_k`](mod@pass_at_k)), and SVG training curves ([`plot`]).

pub mod names;
pub mod pass_at_k;
pub mod plot;
pub mod sink;

pub use pass_at_k::{mean_pass_at_k, pass_at_k};
pub use plot::{figure_svg, write_svg, Chart, Series};
pub use sink::{truncate_after_step, CompletionSample, JsonlSink, Metrics, Progress};
