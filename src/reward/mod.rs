//! Rewards for code completions, with the released DiffuCoder semantics (spec §1.10).
//!
//! | item | what it scores |
//! |---|---|
//! | [`format::match_format`], [`extract_code`] | the strict one-python-block shape, the code to test |
//! | [`FormatReward`] (`code_format_reward`) | 1.0 if the block parses with `ast.parse`, 0.5 if not, 0 without the shape |
//! | [`CodeReward`] (`code_reward`) | fraction of tests passed, only when the format score is 1 |
//! | [`CombinedReward`] (`reward`) | `2.0 · code + 0.5 · format` ([`RewardWeights`]) |
//!
//! Parsing and tests run in the sandbox ([`crate::sandbox::Pool`]); a sandbox failure is an
//! error, never a zero reward.

pub mod base;
pub mod code;
pub mod combine;
pub mod format;

pub use base::RewardFn;
pub use code::{CodeReward, Evaluation};
pub use combine::{CombinedReward, RewardWeights};
pub use format::{
    extract_code, format_reward, format_scores, match_format, FormatReward, FormatScore, Syntax,
    SyntaxChecker,
};
