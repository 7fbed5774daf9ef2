//! The task type every loader produces, and the shared row-reading machinery
//! (line-numbered JSONL, typed field access, fail-or-skip policy).

use std::io::BufRead;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Error, Result};

/// One coding problem: a prompt and assert-style tests (each an independent Python
/// statement run after the solution; a test passes iff it runs without raising).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Row id (AceCoder `id`, `Mbpp/<task_id>`, `HumanEval/<n>`). Not necessarily unique:
    /// in the AceCoder hard split an augmented copy shares the id of its original.
    pub id: String,
    /// The problem text shown to the model (AceCoder `question`, MBPP `text`, HumanEval `prompt`).
    pub question: String,
    /// Test statements (may span several lines, e.g. setup code followed by an assert).
    pub tests: Vec<String>,
    /// Function under test, where the data set names it (HumanEval).
    pub entry_point: Option<String>,
    /// A known-good solution, where the data set has one (MBPP `code`, HumanEval prompt + body).
    pub reference_solution: Option<String>,
    /// Which data set the task came from (decides the evaluation prompt template).
    pub source: TaskSource,
}

/// Origin of a [`Task`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskSource {
    /// TIGER-Lab AceCode-87K (training data).
    AceCoder,
    /// MBPP (Austin et al. 2021).
    Mbpp,
    /// OpenAI HumanEval.
    HumanEval,
    /// Small built-in tasks (toy runs, tests).
    Synthetic,
    /// Anything else (e.g. the `reward` command's input lines).
    Custom,
}

/// What a loader does with a malformed row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnError {
    /// Stop with [`Error::Data`] naming the file and line (the default).
    #[default]
    Fail,
    /// Skip the row and record it in [`Loaded::skipped`].
    Skip,
}

/// A malformed row that was skipped under [`OnError::Skip`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRow {
    /// 1-based line (JSONL) or row number (parquet).
    pub line: usize,
    /// Why the row was rejected.
    pub message: String,
}

/// Rows of a file plus the rows that were skipped (never dropped silently).
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    pub rows: Vec<T>,
    pub skipped: Vec<SkippedRow>,
}

impl<T> Loaded<T> {
    /// Number of skipped malformed rows.
    pub fn skipped_count(&self) -> usize {
        self.skipped.len()
    }

    /// Maps the kept rows, keeping the skip record.
    pub fn map_rows<U>(self, f: impl FnMut(T) -> U) -> Loaded<U> {
        Loaded {
            rows: self.rows.into_iter().map(f).collect(),
            skipped: self.skipped,
        }
    }
}

/// Applies the [`OnError`] policy to one row's outcome.
pub(crate) struct RowSink<'a, T> {
    pub path: &'a Path,
    pub on_error: OnError,
    pub rows: Vec<T>,
    pub skipped: Vec<SkippedRow>,
}

impl<'a, T> RowSink<'a, T> {
    pub fn new(path: &'a Path, on_error: OnError) -> Self {
        Self {
            path,
            on_error,
            rows: Vec::new(),
            skipped: Vec::new(),
        }
    }

    /// Keep a parsed row, or fail / record a skip for a malformed one.
    pub fn push(&mut self, line: usize, row: std::result::Result<T, String>) -> Result<()> {
        match row {
            Ok(r) => self.rows.push(r),
            Err(message) => self.reject(line, message)?,
        }
        Ok(())
    }

    pub fn reject(&mut self, line: usize, message: String) -> Result<()> {
        match self.on_error {
            OnError::Fail => {
                return Err(Error::Data {
                    path: self.path.to_path_buf(),
                    line,
                    message,
                })
            }
            OnError::Skip => self.skipped.push(SkippedRow { line, message }),
        }
        Ok(())
    }

    pub fn finish(self) -> Loaded<T> {
        Loaded {
            rows: self.rows,
            skipped: self.skipped,
        }
    }
}

/// Calls `f(line_number, line_text)` for each non-blank line of a JSONL stream
/// (blank lines are not rows: JSON-lines readers ignore them too).
pub(crate) fn for_each_line(
    path: &Path,
    reader: impl BufRead,
    mut f: impl FnMut(usize, &str) -> Result<()>,
) -> Result<()> {
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| Error::io(path, e))?;
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        f(i + 1, trimmed)?;
    }
    Ok(())
}

/// Opens a file for buffered reading, with the path in the error.
pub(crate) fn open(path: &Path) -> Result<std::io::BufReader<std::fs::File>> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    Ok(std::io::BufReader::new(f))
}

/// Parses one JSONL line into an object.
pub(crate) fn parse_object(line: &str) -> std::result::Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(format!("expected a JSON object, found {}", kind(&other))),
        Err(e) => Err(format!("invalid JSON: {e}")),
    }
}

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Typed access to the fields of one row; errors name the field (`inferences[3].pass_rate`).
pub(crate) struct Fields<'a> {
    pub obj: &'a Map<String, Value>,
    pub prefix: String,
}

impl<'a> Fields<'a> {
    pub fn new(obj: &'a Map<String, Value>) -> Self {
        Self {
            obj,
            prefix: String::new(),
        }
    }

    fn name(&self, field: &str) -> String {
        format!("{}{}", self.prefix, field)
    }

    fn get(&self, field: &str) -> std::result::Result<&'a Value, String> {
        match self.obj.get(field) {
            None | Some(Value::Null) => Err(format!("field `{}` is missing", self.name(field))),
            Some(v) => Ok(v),
        }
    }

    pub fn has(&self, field: &str) -> bool {
        !matches!(self.obj.get(field), None | Some(Value::Null))
    }

    pub fn str(&self, field: &str) -> std::result::Result<String, String> {
        match self.get(field)? {
            Value::String(s) => Ok(s.clone()),
            v => Err(format!(
                "field `{}`: expected a string, found {}",
                self.name(field),
                kind(v)
            )),
        }
    }

    pub fn i64(&self, field: &str) -> std::result::Result<i64, String> {
        match self.get(field)? {
            Value::Number(n) if n.as_i64().is_some() => Ok(n.as_i64().expect("checked")),
            v => Err(format!(
                "field `{}`: expected an integer, found {}",
                self.name(field),
                kind(v)
            )),
        }
    }

    pub fn f64(&self, field: &str) -> std::result::Result<f64, String> {
        match self.get(field)? {
            Value::Number(n) => n
                .as_f64()
                .ok_or_else(|| format!("field `{}`: number out of range", self.name(field))),
            v => Err(format!(
                "field `{}`: expected a number, found {}",
                self.name(field),
                kind(v)
            )),
        }
    }

    pub fn list(&self, field: &str) -> std::result::Result<&'a Vec<Value>, String> {
        match self.get(field)? {
            Value::Array(a) => Ok(a),
            v => Err(format!(
                "field `{}`: expected a list, found {}",
                self.name(field),
                kind(v)
            )),
        }
    }

    pub fn str_list(&self, field: &str) -> std::result::Result<Vec<String>, String> {
        self.list(field)?
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                v => Err(format!(
                    "field `{}[{i}]`: expected a string, found {}",
                    self.name(field),
                    kind(v)
                )),
            })
            .collect()
    }

    /// The objects of a list-of-struct field, each with its own field prefix.
    pub fn objects(&self, field: &str) -> std::result::Result<Vec<Fields<'a>>, String> {
        self.list(field)?
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Object(m) => Ok(Fields {
                    obj: m,
                    prefix: format!("{}[{i}].", self.name(field)),
                }),
                v => Err(format!(
                    "field `{}[{i}]`: expected an object, found {}",
                    self.name(field),
                    kind(v)
                )),
            })
            .collect()
    }
}
