//! The format reward as released (`get_code_format_reward("python")`, spec §1.10).
//!
//! The completion must *fully* match
//! `^(?:(?!```)[\s\S])*?```python\n(?:(?!```)[\s\S])*?```\n$`: text without a fence, then
//! "```python\n", code without a fence, then "```\n" ending the string. Then the first python
//! block, stripped, must pass Python's `ast.parse`: 1.0 if it does, 0.5 if not, 0 without a
//! match.
//!
//! `ast.parse` is real CPython, run through the sandbox executor: each source becomes one test
//! statement `compile(<source>, "<unknown>", "exec", 0x400, True)` of a program with empty
//! solution code, many sources per program. Flag 0x400 is `PyCF_ONLY_AST`, which is exactly what
//! `ast.parse` passes to `compile` (no symbol-table pass, so `return` at module level parses,
//! as it does for `ast.parse`); the source travels hex-encoded so no quoting can break out of
//! the literal. This needs no python3 on the host for the wasm executor, and judges syntax with
//! the same interpreter that later runs the tests (CPython 3.14 in wasm, the host's python3 in
//! the process executor). Every non-pass counts as "does not parse" (0.5): the reference only
//! catches `SyntaxError`, but it would crash on the rest (e.g. `ValueError` for NUL bytes on
//! older Pythons), and a parser that times out or runs out of memory on a short completion has
//! not accepted it either.

use crate::data::pysrc::py_strip;
use crate::data::Task;
use crate::sandbox::{Limits, Outcome, Pool, Program};
use crate::{Error, Result};

use super::base::{check_batch, RewardFn};

const FENCE: &str = "```";
const OPEN: &str = "```python\n";
/// Sources checked per sandbox program: one instantiation amortised over many parses, small
/// enough that a batch still spreads over the pool's workers.
const PARSES_PER_PROGRAM: usize = 32;

/// The first python block when the whole completion has the released shape (see the module
/// docs), unstripped; `None` when it does not match.
pub fn match_format(text: &str) -> Option<&str> {
    // The lookaheads forbid a fence inside the prefix and inside the code, so the opening fence
    // is the first fence of the text and the closing one the next fence after it.
    let open = text.find(FENCE)?;
    if !text[open..].starts_with(OPEN) {
        return None;
    }
    let start = open + OPEN.len();
    let close = start + text[start..].find(FENCE)?;
    (&text[close..] == "```\n").then(|| &text[start..close])
}

/// The released `extract_code`: the first "```python\n" block up to the next fence, anywhere in
/// the text (no shape check); `None` where the reference returns "".
pub fn extract_code(text: &str) -> Option<String> {
    let start = text.find(OPEN)? + OPEN.len();
    let len = text[start..].find(FENCE)?;
    Some(text[start..start + len].to_string())
}

/// Verdict of `ast.parse` on one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Syntax {
    Valid,
    /// With the interpreter's message (`SyntaxError: ...`) or what stopped the parse.
    Invalid {
        detail: String,
    },
}

/// Runs `ast.parse` on sources through a sandbox [`Pool`].
#[derive(Debug, Clone)]
pub struct SyntaxChecker {
    pool: Pool,
    limits: Limits,
}

impl SyntaxChecker {
    pub fn new(pool: Pool, limits: Limits) -> Self {
        Self { pool, limits }
    }

    /// The pool the checks (and the code reward's tests) run on.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Limits applied to each parse (and to each test of the code reward).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// One verdict per source, in order; `Err` where the sandbox itself failed.
    pub fn check(&self, sources: &[&str]) -> Vec<Result<Syntax>> {
        let programs: Vec<Program> = sources
            .chunks(PARSES_PER_PROGRAM)
            .map(|chunk| Program {
                code: String::new(),
                tests: chunk.iter().map(|s| parse_statement(s)).collect(),
            })
            .collect();
        let results = self.pool.execute_batch(&programs, &self.limits);
        let mut out = Vec::with_capacity(sources.len());
        for (program, result) in programs.iter().zip(results) {
            match result {
                Ok(outcomes) if outcomes.len() == program.tests.len() => {
                    out.extend(outcomes.into_iter().map(|o| Ok(syntax_of(o))))
                }
                Ok(outcomes) => {
                    let e = count_mismatch(&self.pool, program.tests.len(), outcomes.len());
                    out.extend(program.tests.iter().map(|_| Err(same_error(&e))));
                }
                Err(e) => out.extend(program.tests.iter().map(|_| Err(same_error(&e)))),
            }
        }
        out
    }
}

fn syntax_of(outcome: Outcome) -> Syntax {
    match outcome {
        Outcome::Passed => Syntax::Valid,
        Outcome::Failed { detail } | Outcome::Crashed { detail } => Syntax::Invalid { detail },
        Outcome::Timeout => Syntax::Invalid {
            detail: "parse timed out".into(),
        },
        Outcome::Memory => Syntax::Invalid {
            detail: "parse ran out of memory".into(),
        },
    }
}

/// The test statement that parses `source` like `ast.parse(source)`.
fn parse_statement(source: &str) -> String {
    let mut hex = String::with_capacity(source.len() * 2);
    for b in source.bytes() {
        hex.push_str(&format!("{b:02x}"));
    }
    format!("compile(bytes.fromhex('{hex}').decode('utf-8'), '<unknown>', 'exec', 0x400, True)")
}

pub(crate) fn count_mismatch(pool: &Pool, expected: usize, got: usize) -> Error {
    Error::Sandbox {
        executor: pool.executor().name().to_string(),
        message: format!("returned {got} outcomes for {expected} tests"),
    }
}

/// A copy of a sandbox error for every sample of a failed program (`Error` is not `Clone`).
pub(crate) fn same_error(e: &Error) -> Error {
    match e {
        Error::Sandbox { executor, message } => Error::Sandbox {
            executor: executor.clone(),
            message: message.clone(),
        },
        other => Error::Sandbox {
            executor: "pool".into(),
            message: other.to_string(),
        },
    }
}

/// Format verdict of one completion.
#[derive(Debug, Clone, PartialEq)]
pub struct FormatScore {
    /// 1.0, 0.5 or 0.0.
    pub score: f32,
    /// The first python block (unstripped) when the shape matched.
    pub code: Option<String>,
    /// Why the block does not parse (score 0.5).
    pub syntax_error: Option<String>,
}

/// Format verdicts for a batch (parses deduplicated and run in parallel).
pub fn format_scores(checker: &SyntaxChecker, completions: &[&str]) -> Vec<Result<FormatScore>> {
    let blocks: Vec<Option<&str>> = completions.iter().map(|c| match_format(c)).collect();
    let mut unique: Vec<&str> = Vec::new();
    let mut index = std::collections::HashMap::new();
    let slot: Vec<Option<usize>> = blocks
        .iter()
        .map(|b| {
            b.map(|code| {
                let src = py_strip(code);
                *index.entry(src).or_insert_with(|| {
                    unique.push(src);
                    unique.len() - 1
                })
            })
        })
        .collect();
    let verdicts = checker.check(&unique);
    blocks
        .iter()
        .zip(&slot)
        .map(|(block, slot)| match (block, slot) {
            (Some(code), Some(i)) => match &verdicts[*i] {
                Ok(Syntax::Valid) => Ok(FormatScore {
                    score: 1.0,
                    code: Some(code.to_string()),
                    syntax_error: None,
                }),
                Ok(Syntax::Invalid { detail }) => Ok(FormatScore {
                    score: 0.5,
                    code: Some(code.to_string()),
                    syntax_error: Some(detail.clone()),
                }),
                // Duplicates share a verdict; the error is re-created per sample.
                Err(e) => Err(same_error(e)),
            },
            _ => Ok(FormatScore {
                score: 0.0,
                code: None,
                syntax_error: None,
            }),
        })
        .collect()
}

/// The format reward of one completion (1.0 / 0.5 / 0.0).
pub fn format_reward(text: &str, checker: &SyntaxChecker) -> Result<f32> {
    format_scores(checker, &[text])
        .pop()
        .expect("one completion in, one verdict out")
        .map(|f| f.score)
}

/// [`RewardFn`] of the format score (`code_format_reward` in the reference).
#[derive(Debug, Clone)]
pub struct FormatReward {
    checker: SyntaxChecker,
}

impl FormatReward {
    pub fn new(checker: SyntaxChecker) -> Self {
        Self { checker }
    }
}

impl RewardFn for FormatReward {
    fn name(&self) -> &str {
        "code_format_reward"
    }

    fn score(&self, completions: &[String], tasks: &[&Task]) -> Result<Vec<Option<f32>>> {
        check_batch(completions.len(), tasks.len())?;
        let texts: Vec<&str> = completions.iter().map(String::as_str).collect();
        format_scores(&self.checker, &texts)
            .into_iter()
            .map(|r| r.map(|f| Some(f.score)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_matches_the_released_cases() {
        // tests/test_code_reward.py of the release.
        let correct = "Let me implement a function to calculate the sum of a list.\n```python\ndef sum_list(numbers):\n    return sum(numbers)\n```\n";
        assert_eq!(
            match_format(correct),
            Some("def sum_list(numbers):\n    return sum(numbers)\n")
        );
        let incorrect = "Let me implement a function.\n```python\ndef sum_list(numbers):\n    return sum(numbers)\n\n";
        assert_eq!(match_format(incorrect), None);
        let multiple = "Two.\n```python\n# First\ndef f():\n    return 0\n```\n```python\n# Final\ndef f():\n    return 1\n```\n";
        assert_eq!(match_format(multiple), None);
        assert_eq!(
            extract_code(multiple).unwrap(),
            "# First\ndef f():\n    return 0\n"
        );
    }

    #[test]
    fn shape_edge_cases() {
        assert_eq!(match_format("```python\n```\n"), Some(""));
        assert_eq!(
            match_format("```python\nx\n```"),
            None,
            "needs the final newline"
        );
        assert_eq!(
            match_format("```python\nx\n```\n\n"),
            None,
            "nothing after it"
        );
        assert_eq!(match_format("```python\nx\n``` \n"), None);
        assert_eq!(match_format("````python\nx\n```\n"), None);
        assert_eq!(match_format("``python\nx\n```\n"), None);
        assert_eq!(match_format("```py\nx\n```\n"), None);
        assert_eq!(match_format("```python x\n```\n"), None);
        assert_eq!(match_format("text ``` more\n```python\nx\n```\n"), None);
        assert_eq!(match_format("```python\nx`\n```\n"), Some("x`\n"));
        assert_eq!(match_format("```python\nx``\n```\n"), Some("x``\n"));
        // A backtick right before the closing fence starts a fence one character early.
        assert_eq!(match_format("```python\nx\n````\n"), None);
        assert_eq!(match_format("é ```python\nß\n```\n"), Some("ß\n"));
        assert_eq!(extract_code("no block"), None);
        assert_eq!(extract_code("```python\nunclosed"), None);
    }

    #[test]
    fn parse_statement_is_hex_encoded() {
        assert_eq!(
            parse_statement("x'\n"),
            "compile(bytes.fromhex('78270a').decode('utf-8'), '<unknown>', 'exec', 0x400, True)"
        );
    }
}
