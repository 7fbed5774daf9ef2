//! OpenAI HumanEval (`HumanEval.jsonl.gz`, 164 problems).
//!
//! Fields: `task_id`, `prompt`, `entry_point`, `canonical_solution`, `test`. The reference
//! harness runs `prompt + completion + test + "check(entry_point)"` once. For a pass *rate*
//! we split `check(candidate)` into one test per top-level assert statement:
//!
//! ```text
//! <prompt code other than the entry point: imports, helpers such as `poly`, `encode_cyclic`>
//! <test code other than check(): METADATA, ...>
//! def check(candidate):
//!     <the non-assert statements of check() that precede this assert, verbatim>
//!     <this assert statement, verbatim (a loop holding asserts counts as one)>
//! check(<entry_point>)
//! ```
//!
//! so `candidate` is bound to the entry point exactly as in the original, in function scope.
//! Statements that only say `assert True` test nothing and are left out. When `check` cannot be
//! split safely (it is not a plain `def check(candidate):` suite, or uses `return`, `yield`,
//! `global`, `nonlocal`, or the splitter cannot follow its source) the whole `check` becomes a
//! single test.

use std::io::BufReader;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use super::pysrc;
use super::task::{for_each_line, parse_object, Fields, Loaded, OnError, RowSink};
use super::{Task, TaskSource};
use crate::{Error, Result};

/// The vendored copy, relative to the crate root.
pub const VENDORED: &str = "assets/data/humaneval/HumanEval.jsonl.gz";

/// Path of the vendored `HumanEval.jsonl.gz` in this source tree.
pub fn vendored_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(VENDORED)
}

/// One HumanEval row, as in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HumanEvalRow {
    pub task_id: String,
    pub prompt: String,
    pub entry_point: String,
    pub canonical_solution: String,
    pub test: String,
}

/// How a row's `check` was turned into tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestSplit {
    /// One test per assert statement.
    PerAssert,
    /// The whole `check(candidate)` as one test, with the reason it was not split.
    Whole(String),
}

impl HumanEvalRow {
    fn parse(line: &str) -> std::result::Result<Self, String> {
        let obj = parse_object(line)?;
        let f = Fields::new(&obj);
        let row = HumanEvalRow {
            task_id: f.str("task_id")?,
            prompt: f.str("prompt")?,
            entry_point: f.str("entry_point")?,
            canonical_solution: f.str("canonical_solution")?,
            test: f.str("test")?,
        };
        let ep = &row.entry_point;
        if ep.is_empty() || !ep.chars().all(|c| c.is_alphanumeric() || c == '_') {
            return Err(format!(
                "field `entry_point`: `{ep}` is not a Python identifier"
            ));
        }
        Ok(row)
    }

    /// Prompt statements other than the entry point's definition (imports, helper functions
    /// the tests call, e.g. `poly` for `find_zero`).
    fn prompt_helpers(&self) -> std::result::Result<String, String> {
        let stmts = pysrc::module_statements(&self.prompt)
            .map_err(|e| format!("field `prompt`: cannot split into statements: {e}"))?;
        let lines = pysrc::physical_lines(&self.prompt);
        let def = format!("def {}(", self.entry_point);
        let mut kept = Vec::new();
        let mut found = false;
        for s in &stmts {
            let is_entry = lines[s.start..s.end]
                .iter()
                .any(|l| l.trim_start().starts_with(&def));
            if is_entry {
                found = true;
            } else {
                kept.push(pysrc::text(&self.prompt, s.start, s.end));
            }
        }
        if !found {
            return Err(format!(
                "field `prompt`: no top-level `def {}(`",
                self.entry_point
            ));
        }
        Ok(kept.join("\n"))
    }

    /// The per-assert tests (see the module docs), or the reason `check` cannot be split
    /// safely.
    fn split_check(&self, preamble: &str) -> std::result::Result<Vec<String>, String> {
        let src = &self.test;
        let stmts = pysrc::module_statements(src)?;
        let lines = pysrc::physical_lines(src);
        let is_check = |s: &pysrc::Statement| lines[s.start].starts_with("def check(");
        let checks: Vec<&pysrc::Statement> = stmts.iter().filter(|s| is_check(s)).collect();
        let [check] = checks.as_slice() else {
            return Err(format!("{} `def check(` definitions", checks.len()));
        };
        let header = lines[check.start].trim_end();
        let header = header.split('#').next().unwrap_or("").trim_end();
        if header != "def check(candidate):" {
            return Err(format!("unexpected header `{header}`"));
        }
        let others: Vec<String> = stmts
            .iter()
            .filter(|s| !is_check(s))
            .map(|s| pysrc::text(src, s.start, s.end))
            .collect();
        let body = pysrc::suite_statements(src, check)?;
        for s in &body {
            for kw in ["return", "yield", "global", "nonlocal"] {
                if s.words.contains(kw) {
                    return Err(format!("check() uses `{kw}`"));
                }
            }
        }
        let mut tests = Vec::new();
        let mut setup: Vec<String> = Vec::new();
        for s in &body {
            let text = pysrc::text(src, s.start, s.end);
            if !s.words.contains("assert") {
                setup.push(text);
                continue;
            }
            if is_trivial_assert(&text) {
                continue;
            }
            let mut t = String::new();
            for part in [preamble, &others.join("\n")] {
                if !part.is_empty() {
                    t.push_str(part);
                    t.push('\n');
                }
            }
            t.push_str("def check(candidate):\n");
            for line in &setup {
                t.push_str(line);
                t.push('\n');
            }
            t.push_str(&text);
            t.push_str(&format!("\ncheck({})\n", self.entry_point));
            tests.push(t);
        }
        if tests.is_empty() {
            return Err("check() has no assert statements".into());
        }
        Ok(tests)
    }

    /// The row as a [`Task`] plus how its tests were made.
    pub fn to_task(&self) -> std::result::Result<(Task, TestSplit), String> {
        let preamble = self.prompt_helpers()?;
        let (tests, split) = match self.split_check(&preamble) {
            Ok(t) => (t, TestSplit::PerAssert),
            Err(why) => {
                let mut t = String::new();
                if !preamble.is_empty() {
                    t.push_str(&preamble);
                    t.push('\n');
                }
                t.push_str(&self.test);
                t.push_str(&format!("\ncheck({})\n", self.entry_point));
                (vec![t], TestSplit::Whole(why))
            }
        };
        let task = Task {
            id: self.task_id.clone(),
            question: self.prompt.clone(),
            tests,
            entry_point: Some(self.entry_point.clone()),
            reference_solution: Some(format!("{}{}", self.prompt, self.canonical_solution)),
            source: TaskSource::HumanEval,
        };
        Ok((task, split))
    }
}

/// `assert True` or `assert True, "message"` on one line: checks nothing about the solution.
fn is_trivial_assert(text: &str) -> bool {
    let t = text.trim();
    if t.contains('\n') {
        return false;
    }
    let Some(rest) = t.strip_prefix("assert") else {
        return false;
    };
    let Some(rest) = rest.trim_start().strip_prefix("True") else {
        return false;
    };
    let rest = rest.trim_start();
    rest.is_empty() || rest.starts_with(',')
}

fn reader(path: &Path) -> Result<Box<dyn std::io::BufRead>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    Ok(if path.extension().is_some_and(|e| e == "gz") {
        Box::new(BufReader::new(GzDecoder::new(file)))
    } else {
        Box::new(BufReader::new(file))
    })
}

/// Raw rows of a HumanEval file (`.jsonl.gz`, or plain `.jsonl`).
pub fn load_rows(path: &Path, on_error: OnError) -> Result<Loaded<HumanEvalRow>> {
    let mut sink = RowSink::new(path, on_error);
    for_each_line(path, reader(path)?, |line, text| {
        sink.push(line, HumanEvalRow::parse(text))
    })?;
    Ok(sink.finish())
}

/// HumanEval tasks, in file order, with `check` split per assert where safe.
pub fn load(path: &Path, on_error: OnError) -> Result<Loaded<Task>> {
    Ok(load_with_splits(path, on_error)?.map_rows(|(t, _)| t))
}

/// Like [`load`], also telling for each task how its tests were made.
pub fn load_with_splits(path: &Path, on_error: OnError) -> Result<Loaded<(Task, TestSplit)>> {
    let mut sink = RowSink::new(path, on_error);
    for_each_line(path, reader(path)?, |line, text| {
        sink.push(line, HumanEvalRow::parse(text).and_then(|r| r.to_task()))
    })?;
    Ok(sink.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn vendored_file_splits_every_check() {
        let loaded = load_with_splits(&vendored_path(), OnError::Fail).unwrap();
        assert_eq!(loaded.rows.len(), 164);
        assert_eq!(loaded.skipped_count(), 0);
        let whole: Vec<_> = loaded
            .rows
            .iter()
            .filter(|(_, s)| *s != TestSplit::PerAssert)
            .map(|(t, s)| (t.id.clone(), s.clone()))
            .collect();
        assert!(whole.is_empty(), "not split: {whole:?}");
        // 1176 top-level asserts + 5 loops holding asserts - 48 `assert True` statements.
        let total: usize = loaded.rows.iter().map(|(t, _)| t.tests.len()).sum();
        assert_eq!(total, 1133);
        let get = |id: &str| &loaded.rows.iter().find(|(t, _)| t.id == id).unwrap().0;

        let t0 = get("HumanEval/0");
        assert_eq!(t0.tests.len(), 7);
        assert_eq!(t0.entry_point.as_deref(), Some("has_close_elements"));
        assert!(t0
            .reference_solution
            .as_ref()
            .unwrap()
            .starts_with(&t0.question));
        assert!(t0.tests[1].contains("def check(candidate):\n    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False\ncheck(has_close_elements)"));
        assert!(!t0.tests[1].contains("0.3) == True"), "one assert per test");

        // Helpers from the prompt come along; setup statements precede the loop.
        let t32 = get("HumanEval/32");
        assert_eq!(t32.tests.len(), 1);
        assert!(t32.tests[0].starts_with("import math\ndef poly(xs: list, x: float):"));
        assert!(
            !t32.tests[0].contains("def find_zero("),
            "never redefine the entry point"
        );
        assert!(t32.tests[0].contains("    rng = random.Random(42)\n"));
        assert!(t32.tests[0].ends_with("check(find_zero)\n"));

        // Setup written after some asserts reaches only the asserts after it.
        let t151 = get("HumanEval/151");
        assert_eq!(t151.tests.len(), 7);
        assert!(!t151.tests[5].contains("lst = list(range(-99, 100, 2))"));
        assert!(t151.tests[6].contains("    lst = list(range(-99, 100, 2))\n    odd_sum"));

        // `assert True, "..."` statements are not tests.
        assert!(loaded
            .rows
            .iter()
            .flat_map(|(t, _)| &t.tests)
            .all(|t| !t.contains("\n    assert True")));
    }

    fn write_rows(rows: &[serde_json::Value]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("he.jsonl");
        let mut f = std::fs::File::create(&p).unwrap();
        for r in rows {
            writeln!(f, "{r}").unwrap();
        }
        (dir, p)
    }

    #[test]
    fn unsafe_checks_fall_back_to_one_test() {
        let row = |id: &str, test: &str| {
            serde_json::json!({
                "task_id": id, "prompt": "def f(x):\n    \"\"\"Doc.\"\"\"\n",
                "entry_point": "f", "canonical_solution": "    return x\n", "test": test,
            })
        };
        let (_d, p) = write_rows(&[
            row("ret", "def check(candidate):\n    assert candidate(1) == 1\n    return\n"),
            row("arg", "def check(f):\n    assert f(1) == 1\n"),
            row("two", "def check(candidate):\n    assert candidate(1) == 1\ndef check(candidate):\n    pass\n"),
            row("ok", "def check(candidate):\n    x = 2\n    assert candidate(x) == 2\n    assert candidate(3) == 3\n"),
        ]);
        let loaded = load_with_splits(&p, OnError::Fail).unwrap();
        let splits: Vec<&TestSplit> = loaded.rows.iter().map(|(_, s)| s).collect();
        assert!(matches!(splits[0], TestSplit::Whole(w) if w.contains("return")));
        assert!(matches!(splits[1], TestSplit::Whole(w) if w.contains("def check(f):")));
        assert!(matches!(splits[2], TestSplit::Whole(w) if w.contains("2 `def check(`")));
        assert_eq!(*splits[3], TestSplit::PerAssert);
        let whole = &loaded.rows[0].0.tests;
        assert_eq!(whole.len(), 1);
        assert!(whole[0].ends_with("    return\n\ncheck(f)\n"));
        assert_eq!(
            loaded.rows[3].0.tests[1],
            "def check(candidate):\n    x = 2\n    assert candidate(3) == 3\ncheck(f)\n"
        );
    }

    #[test]
    fn malformed_rows_name_file_and_line() {
        let good = serde_json::json!({
            "task_id": "a", "prompt": "def f():\n    pass\n", "entry_point": "f",
            "canonical_solution": "", "test": "def check(candidate):\n    assert candidate() is None\n",
        });
        let mut no_ep = good.clone();
        no_ep.as_object_mut().unwrap().remove("entry_point");
        let mut wrong_ep = good.clone();
        wrong_ep["entry_point"] = "g".into();
        let (_d, p) = write_rows(&[good, no_ep, wrong_ep]);
        match load(&p, OnError::Fail).unwrap_err() {
            Error::Data {
                path,
                line,
                message,
            } => {
                assert_eq!((path, line), (p.clone(), 2));
                assert!(message.contains("`entry_point` is missing"), "{message}");
            }
            e => panic!("{e}"),
        }
        let skipped = load(&p, OnError::Skip).unwrap();
        assert_eq!(skipped.rows.len(), 1);
        assert_eq!(skipped.skipped.len(), 2);
        assert_eq!(skipped.skipped[1].line, 3);
        assert!(skipped.skipped[1].message.contains("no top-level `def g(`"));
    }
}
