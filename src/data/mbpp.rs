//! MBPP (Austin et al. 2021), the original `mbpp.jsonl` (974 problems).
//!
//! Fields: `text`, `code`, `task_id`, `test_setup_code`, `test_list`, `challenge_test_list`.
//! Standard splits by `task_id`: prompt 1-10, test 11-510, validation 511-600, train 601-974.
//! Each test is `test_setup_code` (when non-empty) followed by one assert, so the setup runs
//! after the solution and before the assert, as in the original evaluation.

use std::path::{Path, PathBuf};

use super::task::{for_each_line, open, parse_object, Fields, Loaded, OnError, RowSink};
use super::{Task, TaskSource};
use crate::Result;

/// The vendored copy, relative to the crate root.
pub const VENDORED: &str = "assets/data/mbpp/mbpp.jsonl";

/// Path of the vendored `mbpp.jsonl` in this source tree.
pub fn vendored_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(VENDORED)
}

/// The standard MBPP splits (by `task_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// 1-10: few-shot prompt examples.
    Prompt,
    /// 11-510.
    Test,
    /// 511-600.
    Validation,
    /// 601-974.
    Train,
    /// Every row.
    All,
}

impl Split {
    /// Whether `task_id` belongs to this split.
    pub fn contains(self, task_id: i64) -> bool {
        match self {
            Split::Prompt => (1..=10).contains(&task_id),
            Split::Test => (11..=510).contains(&task_id),
            Split::Validation => (511..=600).contains(&task_id),
            Split::Train => (601..=974).contains(&task_id),
            Split::All => true,
        }
    }
}

impl std::str::FromStr for Split {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "prompt" => Ok(Split::Prompt),
            "test" => Ok(Split::Test),
            "validation" => Ok(Split::Validation),
            "train" => Ok(Split::Train),
            "all" => Ok(Split::All),
            _ => Err(crate::Error::invalid(
                "split",
                format!("`{s}`: expected prompt, test, validation, train or all"),
            )),
        }
    }
}

/// One MBPP row, as in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MbppRow {
    pub task_id: i64,
    pub text: String,
    pub code: String,
    pub test_setup_code: String,
    pub test_list: Vec<String>,
    pub challenge_test_list: Vec<String>,
}

impl MbppRow {
    fn parse(line: &str) -> std::result::Result<Self, String> {
        let obj = parse_object(line)?;
        let f = Fields::new(&obj);
        let row = MbppRow {
            task_id: f.i64("task_id")?,
            text: f.str("text")?,
            code: f.str("code")?,
            test_setup_code: if f.has("test_setup_code") {
                f.str("test_setup_code")?
            } else {
                String::new()
            },
            test_list: f.str_list("test_list")?,
            challenge_test_list: if f.has("challenge_test_list") {
                f.str_list("challenge_test_list")?
            } else {
                Vec::new()
            },
        };
        if row.test_list.is_empty() {
            return Err("field `test_list` is empty".into());
        }
        Ok(row)
    }

    /// The row as a [`Task`]; `challenge` adds `challenge_test_list` to the tests.
    pub fn to_task(&self, challenge: bool) -> Task {
        let with_setup = |t: &String| {
            if self.test_setup_code.trim().is_empty() {
                t.clone()
            } else {
                format!("{}\n{}", self.test_setup_code, t)
            }
        };
        let mut tests: Vec<String> = self.test_list.iter().map(with_setup).collect();
        if challenge {
            tests.extend(self.challenge_test_list.iter().map(with_setup));
        }
        Task {
            id: format!("Mbpp/{}", self.task_id),
            question: self.text.clone(),
            tests,
            entry_point: None,
            reference_solution: Some(self.code.clone()),
            source: TaskSource::Mbpp,
        }
    }
}

/// Options for [`load`].
#[derive(Debug, Clone, Copy)]
pub struct MbppOptions {
    pub split: Split,
    /// Also run `challenge_test_list` (off in the standard evaluation).
    pub challenge_tests: bool,
    pub on_error: OnError,
}

impl Default for MbppOptions {
    fn default() -> Self {
        Self {
            split: Split::All,
            challenge_tests: false,
            on_error: OnError::Fail,
        }
    }
}

/// Raw rows of an MBPP JSONL file, every split.
pub fn load_rows(path: &Path, on_error: OnError) -> Result<Loaded<MbppRow>> {
    let mut sink = RowSink::new(path, on_error);
    for_each_line(path, open(path)?, |line, text| {
        sink.push(line, MbppRow::parse(text))
    })?;
    Ok(sink.finish())
}

/// Tasks of one split of an MBPP JSONL file, in file order.
pub fn load(path: &Path, opts: &MbppOptions) -> Result<Loaded<Task>> {
    let rows = load_rows(path, opts.on_error)?;
    Ok(Loaded {
        rows: rows
            .rows
            .iter()
            .filter(|r| opts.split.contains(r.task_id))
            .map(|r| r.to_task(opts.challenge_tests))
            .collect(),
        skipped: rows.skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use std::io::Write;

    #[test]
    fn vendored_file_has_the_standard_splits() {
        let all = load(&vendored_path(), &MbppOptions::default()).unwrap();
        assert_eq!(all.rows.len(), 974);
        assert_eq!(all.skipped_count(), 0);
        let count = |split| {
            load(
                &vendored_path(),
                &MbppOptions {
                    split,
                    ..Default::default()
                },
            )
            .unwrap()
            .rows
            .len()
        };
        assert_eq!(count(Split::Prompt), 10);
        assert_eq!(count(Split::Test), 500);
        assert_eq!(count(Split::Validation), 90);
        assert_eq!(count(Split::Train), 374);
        let t = &all.rows[0];
        assert_eq!(t.id, "Mbpp/1");
        assert_eq!(t.tests.len(), 3);
        assert!(t.tests[0].starts_with("assert min_cost("));
        // test_setup_code is prepended to every test of the two tasks that have it.
        let t367 = all.rows.iter().find(|t| t.id == "Mbpp/367").unwrap();
        assert!(t367.tests.iter().all(|s| s.starts_with("root = Node(1)")));
        assert!(t367.tests[0].ends_with("assert is_tree_balanced(root) == False"));
    }

    #[test]
    fn malformed_rows_name_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.jsonl");
        let mut f = std::fs::File::create(&p).unwrap();
        writeln!(
            f,
            r#"{{"task_id": 1, "text": "t", "code": "c", "test_list": ["assert 1"]}}"#
        )
        .unwrap();
        writeln!(f).unwrap();
        writeln!(
            f,
            r#"{{"task_id": 2, "text": "t", "code": 3, "test_list": ["assert 1"]}}"#
        )
        .unwrap();
        writeln!(
            f,
            r#"{{"task_id": 3, "text": "t", "code": "c", "test_list": "#
        )
        .unwrap();
        drop(f);
        let err = load(&p, &MbppOptions::default()).unwrap_err();
        match err {
            Error::Data {
                path,
                line,
                message,
            } => {
                assert_eq!(path, p);
                assert_eq!(line, 3);
                assert!(message.contains("`code`"), "{message}");
            }
            e => panic!("unexpected {e}"),
        }
        let got = load(
            &p,
            &MbppOptions {
                on_error: OnError::Skip,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(got.rows.len(), 1);
        assert_eq!(
            got.skipped.iter().map(|s| s.line).collect::<Vec<_>>(),
            vec![3, 4]
        );
        assert!(got.skipped[1].message.contains("invalid JSON"));
    }
}
