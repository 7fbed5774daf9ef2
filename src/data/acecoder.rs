//! TIGER-Lab AceCode-87K (formerly AceCode-89K): JSONL and parquet loaders, the "hard"
//! subset filter and the prompt augmentation of DiffuCoder's `recipes/process_data.py`
//! (spec §1.11, §6).
//!
//! Row schema: `id: string`, `source: string`, `question: string`,
//! `test_cases: list<string>`, `inferences: list<struct{completion: string,
//! completion_id: int64, model_name: string, pass_rate: float64}>`,
//! `context_messages: list<struct{content: string, role: string}>`. The hard split's JSONL
//! (the output of [`hard_training_rows`]) has the same fields without `inferences`; both load.
//!
//! Parquet is read with the `parquet` crate's record API (no arrow); a file's "line" in
//! errors is its 1-based row number. `.jsonl` and `.json` files are JSON Lines (what
//! `datasets.Dataset.to_json` writes, whatever the extension). A directory path reads every
//! `*.parquet` / `*.jsonl` file in it, in name order (the hub's `data/train-*` shards).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::pysrc::py_strip;
use super::task::{
    for_each_line, open, parse_object, Fields, Loaded, OnError, RowSink, SkippedRow,
};
use super::{Task, TaskSource};
use crate::{Error, Result};

/// One sampled solution with its measured pass rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inference {
    pub completion: String,
    pub completion_id: i64,
    pub model_name: String,
    pub pass_rate: f64,
}

/// One chat message of `context_messages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextMessage {
    pub content: String,
    pub role: String,
}

/// One AceCode-87K row.
#[derive(Debug, Clone, PartialEq)]
pub struct AceCoderRow {
    pub id: String,
    /// Seed data set (`oss`, `evol`, `bigcode_python_fns`); empty when the file lacks it.
    pub source: String,
    pub question: String,
    pub test_cases: Vec<String>,
    /// Empty in the hard split's JSONL (dropped after filtering).
    pub inferences: Vec<Inference>,
    pub context_messages: Vec<ContextMessage>,
}

/// A row of the hard split as DiffuCoder writes it: every field but `inferences`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainingRow {
    pub id: String,
    pub source: String,
    pub question: String,
    pub test_cases: Vec<String>,
    pub context_messages: Vec<ContextMessage>,
}

impl TrainingRow {
    /// The row as a training [`Task`] (the id is kept even for augmented copies).
    pub fn to_task(&self) -> Task {
        Task {
            id: self.id.clone(),
            question: self.question.clone(),
            tests: self.test_cases.clone(),
            entry_point: None,
            reference_solution: None,
            source: TaskSource::AceCoder,
        }
    }
}

impl AceCoderRow {
    fn from_object(obj: &Map<String, Value>) -> std::result::Result<Self, String> {
        let f = Fields::new(obj);
        let inferences = if f.has("inferences") {
            f.objects("inferences")?
                .iter()
                .map(|i| {
                    Ok(Inference {
                        completion: i.str("completion")?,
                        completion_id: i.i64("completion_id")?,
                        model_name: i.str("model_name")?,
                        pass_rate: i.f64("pass_rate")?,
                    })
                })
                .collect::<std::result::Result<Vec<_>, String>>()?
        } else {
            Vec::new()
        };
        let context_messages = if f.has("context_messages") {
            f.objects("context_messages")?
                .iter()
                .map(|m| {
                    Ok(ContextMessage {
                        content: m.str("content")?,
                        role: m.str("role")?,
                    })
                })
                .collect::<std::result::Result<Vec<_>, String>>()?
        } else {
            Vec::new()
        };
        let row = AceCoderRow {
            id: f.str("id")?,
            source: if f.has("source") {
                f.str("source")?
            } else {
                String::new()
            },
            question: f.str("question")?,
            test_cases: f.str_list("test_cases")?,
            inferences,
            context_messages,
        };
        // The training prompt shows test_cases[0]; a row without tests cannot be rewarded.
        if row.test_cases.is_empty() {
            return Err("field `test_cases` is empty".into());
        }
        Ok(row)
    }

    /// The row as a training [`Task`].
    pub fn to_task(&self) -> Task {
        self.training_row().to_task()
    }

    /// The row without `inferences`.
    pub fn training_row(&self) -> TrainingRow {
        TrainingRow {
            id: self.id.clone(),
            source: self.source.clone(),
            question: self.question.clone(),
            test_cases: self.test_cases.clone(),
            context_messages: self.context_messages.clone(),
        }
    }

    /// Pass rates of the inferences from `models` (`accs` in `process_data.py`).
    pub fn accs(&self, models: &[String]) -> Vec<f64> {
        self.inferences
            .iter()
            .filter(|i| models.contains(&i.model_name))
            .map(|i| i.pass_rate)
            .collect()
    }

    /// The question re-templated around the best inference's signature, as
    /// `transform_question_format` does; `None` when the rule does not apply (the question
    /// contains "you" in any case, there are no inferences, or the best completion's text
    /// before the first ":\n" does not start with "def ").
    pub fn augmented_question(&self) -> Option<String> {
        if self.question.to_lowercase().contains("you") {
            return None;
        }
        // Python's max() keeps the first of equal maxima.
        let mut best: Option<&Inference> = None;
        for i in &self.inferences {
            if best.is_none_or(|b| i.pass_rate > b.pass_rate) {
                best = Some(i);
            }
        }
        let completion = &best?.completion;
        let head = completion.split(":\n").next().unwrap_or("");
        let func_def = py_strip(head).strip_prefix("def ")?;
        Some(format!(
            "Please complete the following problem:\n```\ndef {func_def}:\n    \"\"\"\n    {}\n    \"\"\"\n```\n",
            self.question
        ))
    }
}

/// Calls `f` for every row of an AceCoder file or directory (see the module docs), applying
/// the error policy. Returns the skipped rows.
pub fn for_each_row(
    path: &Path,
    on_error: OnError,
    mut f: impl FnMut(AceCoderRow) -> Result<()>,
) -> Result<Vec<SkippedRow>> {
    let mut skipped = Vec::new();
    for file in input_files(path)? {
        let mut sink: RowSink<'_, ()> = RowSink::new(&file, on_error);
        let mut handle =
            |line: usize, obj: std::result::Result<Map<String, Value>, String>| match obj
                .and_then(|o| AceCoderRow::from_object(&o))
            {
                Ok(row) => f(row),
                Err(message) => sink.reject(line, message),
            };
        if is_parquet(&file) {
            parquet_rows(&file, &mut handle)?;
        } else {
            for_each_line(&file, open(&file)?, |line, text| {
                handle(line, parse_object(text))
            })?;
        }
        skipped.extend(sink.finish().skipped);
    }
    Ok(skipped)
}

/// All rows of an AceCoder file or directory.
pub fn load_rows(path: &Path, on_error: OnError) -> Result<Loaded<AceCoderRow>> {
    let mut rows = Vec::new();
    let skipped = for_each_row(path, on_error, |r| {
        rows.push(r);
        Ok(())
    })?;
    Ok(Loaded { rows, skipped })
}

/// Training tasks of an AceCoder file or directory (full rows or hard-split rows), without
/// keeping `inferences` in memory.
pub fn load_tasks(path: &Path, on_error: OnError) -> Result<Loaded<Task>> {
    let mut rows = Vec::new();
    let skipped = for_each_row(path, on_error, |r| {
        rows.push(r.to_task());
        Ok(())
    })?;
    Ok(Loaded { rows, skipped })
}

fn is_parquet(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "parquet")
}

fn input_files(path: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_dir() {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !matches!(ext, "parquet" | "jsonl" | "json") {
            return Err(Error::invalid(
                "path",
                format!(
                    "{}: expected a .parquet, .jsonl or .json file",
                    path.display()
                ),
            ));
        }
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| Error::io(path, e))? {
        let p = entry.map_err(|e| Error::io(path, e))?.path();
        if p.extension()
            .is_some_and(|e| e == "parquet" || e == "jsonl")
        {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(Error::invalid(
            "path",
            format!("{}: no .parquet or .jsonl files", path.display()),
        ));
    }
    Ok(files)
}

/// Streams the rows of a parquet file as JSON objects (1-based row numbers).
fn parquet_rows(
    path: &Path,
    handle: &mut impl FnMut(usize, std::result::Result<Map<String, Value>, String>) -> Result<()>,
) -> Result<()> {
    use parquet::file::reader::{FileReader, SerializedFileReader};

    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(|e| {
        Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("parquet: {e}")),
        )
    })?;
    let rows = reader.get_row_iter(None).map_err(|e| {
        Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("parquet: {e}")),
        )
    })?;
    for (i, row) in rows.enumerate() {
        let line = i + 1;
        // A decoding error inside the file is not a malformed row: stop either way.
        let row = row.map_err(|e| Error::Data {
            path: path.to_path_buf(),
            line,
            message: format!("parquet: {e}"),
        })?;
        let obj = row
            .get_column_iter()
            .map(|(name, field)| Ok((name.clone(), field_to_json(name, field)?)))
            .collect::<std::result::Result<Map<String, Value>, String>>();
        handle(line, obj)?;
    }
    Ok(())
}

/// A parquet record value as JSON, so both formats share one validation path.
fn field_to_json(name: &str, field: &parquet::record::Field) -> std::result::Result<Value, String> {
    use parquet::record::Field as F;
    Ok(match field {
        F::Null => Value::Null,
        F::Bool(b) => Value::Bool(*b),
        F::Byte(n) => Value::from(*n),
        F::Short(n) => Value::from(*n),
        F::Int(n) => Value::from(*n),
        F::Long(n) => Value::from(*n),
        F::UByte(n) => Value::from(*n),
        F::UShort(n) => Value::from(*n),
        F::UInt(n) => Value::from(*n),
        F::ULong(n) => Value::from(*n),
        F::Float(x) => finite(name, f64::from(*x))?,
        F::Double(x) => finite(name, *x)?,
        F::Str(s) => Value::String(s.clone()),
        F::Bytes(b) => Value::String(
            std::str::from_utf8(b.data())
                .map_err(|_| format!("field `{name}`: bytes are not UTF-8"))?
                .to_owned(),
        ),
        F::Group(row) => Value::Object(
            row.get_column_iter()
                .map(|(k, v)| Ok((k.clone(), field_to_json(&format!("{name}.{k}"), v)?)))
                .collect::<std::result::Result<Map<String, Value>, String>>()?,
        ),
        F::ListInternal(list) => Value::Array(
            list.elements()
                .iter()
                .enumerate()
                .map(|(i, v)| field_to_json(&format!("{name}[{i}]"), v))
                .collect::<std::result::Result<Vec<_>, String>>()?,
        ),
        other => {
            return Err(format!(
                "field `{name}`: unsupported parquet value {other:?}"
            ))
        }
    })
}

fn finite(name: &str, x: f64) -> std::result::Result<Value, String> {
    serde_json::Number::from_f64(x)
        .map(Value::Number)
        .ok_or_else(|| format!("field `{name}`: {x} is not a finite number"))
}

// ---------------------------------------------------------------------------------------
// The hard subset (spec §1.11)
// ---------------------------------------------------------------------------------------

/// Settings of the hard-subset filter; the defaults are the released ones.
#[derive(Debug, Clone, PartialEq)]
pub struct HardFilter {
    /// Models whose pass rates count (`consider_models`).
    pub models: Vec<String>,
    /// Keep rows with mean pass rate ≤ this percentile of all rows' means.
    pub avg_percentile: f64,
    /// Then keep rows with pass-rate std ≥ this percentile of all rows' stds.
    pub std_percentile: f64,
    /// Add the re-templated copy of each survivor (`transform_question_format`).
    pub augment: bool,
}

impl Default for HardFilter {
    fn default() -> Self {
        Self {
            models: vec!["qwen_coder_2.5".into(), "llama3_instruct".into()],
            avg_percentile: 20.0,
            std_percentile: 40.0,
            augment: true,
        }
    }
}

/// What the hard filter did.
#[derive(Debug, Clone, PartialEq)]
pub struct HardFilterReport {
    /// Rows read.
    pub rows_in: usize,
    /// Rows with no inference from the considered models. numpy would turn their empty mean
    /// into NaN and with it every percentile (keeping nothing); we leave them out of the
    /// statistics and of the output instead, and count them here.
    pub without_model_inferences: usize,
    /// P`avg_percentile` of the per-row means (numpy `percentile`, linear).
    pub avg_threshold: f64,
    /// P`std_percentile` of the per-row population stds, over all scored rows.
    pub std_threshold: f64,
    /// Rows left after the mean filter.
    pub kept_by_avg: usize,
    /// Rows left after both filters.
    pub kept: usize,
    /// Re-templated copies added.
    pub augmented: usize,
    /// Rows written (`kept + augmented`).
    pub rows_out: usize,
}

/// A row reduced to what the filter needs, so the full data set's inferences are never
/// held in memory at once.
struct Scored {
    row: TrainingRow,
    avg: f64,
    sd: f64,
    augmented_question: Option<String>,
}

/// Incremental form of the hard filter: push rows, then [`HardFilterBuilder::finish`].
pub struct HardFilterBuilder {
    cfg: HardFilter,
    scored: Vec<Scored>,
    rows_in: usize,
    without: usize,
}

impl HardFilterBuilder {
    pub fn new(cfg: HardFilter) -> Self {
        Self {
            cfg,
            scored: Vec::new(),
            rows_in: 0,
            without: 0,
        }
    }

    pub fn push(&mut self, row: &AceCoderRow) {
        self.rows_in += 1;
        let accs = row.accs(&self.cfg.models);
        if accs.is_empty() {
            self.without += 1;
            return;
        }
        let (avg, sd) = mean_and_std(&accs);
        self.scored.push(Scored {
            row: row.training_row(),
            avg,
            sd,
            augmented_question: if self.cfg.augment {
                row.augmented_question()
            } else {
                None
            },
        });
    }

    /// The training rows (survivors in input order, each followed by its augmented copy)
    /// and the report. Fails when no row has inferences from the considered models.
    pub fn finish(self) -> Result<(Vec<TrainingRow>, HardFilterReport)> {
        if self.scored.is_empty() {
            return Err(Error::invalid(
                "rows",
                format!(
                    "none of {} rows has inferences from {:?}: the hard filter needs the full \
                     AceCode-87K rows (with `inferences`), not an already filtered split",
                    self.rows_in, self.cfg.models
                ),
            ));
        }
        let avgs: Vec<f64> = self.scored.iter().map(|s| s.avg).collect();
        let sds: Vec<f64> = self.scored.iter().map(|s| s.sd).collect();
        let avg_threshold = np_percentile(&avgs, self.cfg.avg_percentile);
        // Computed over every scored row, not over the mean filter's survivors.
        let std_threshold = np_percentile(&sds, self.cfg.std_percentile);
        let mut kept_by_avg = 0;
        let mut kept = 0;
        let mut augmented = 0;
        let mut out = Vec::new();
        for s in self.scored {
            if s.avg > avg_threshold {
                continue;
            }
            kept_by_avg += 1;
            if s.sd < std_threshold {
                continue;
            }
            kept += 1;
            let copy = s.augmented_question.map(|q| TrainingRow {
                question: q,
                ..s.row.clone()
            });
            out.push(s.row);
            if let Some(c) = copy {
                augmented += 1;
                out.push(c);
            }
        }
        let report = HardFilterReport {
            rows_in: self.rows_in,
            without_model_inferences: self.without,
            avg_threshold,
            std_threshold,
            kept_by_avg,
            kept,
            augmented,
            rows_out: out.len(),
        };
        Ok((out, report))
    }
}

/// The hard split of in-memory rows (see [`HardFilterBuilder`]).
pub fn hard_training_rows<'a>(
    rows: impl IntoIterator<Item = &'a AceCoderRow>,
    cfg: &HardFilter,
) -> Result<(Vec<TrainingRow>, HardFilterReport)> {
    let mut b = HardFilterBuilder::new(cfg.clone());
    for r in rows {
        b.push(r);
    }
    b.finish()
}

/// The hard split of an AceCoder file or directory, streaming the rows.
pub fn hard_training_rows_from_path(
    path: &Path,
    cfg: &HardFilter,
    on_error: OnError,
) -> Result<(Vec<TrainingRow>, HardFilterReport, Vec<SkippedRow>)> {
    let mut b = HardFilterBuilder::new(cfg.clone());
    let skipped = for_each_row(path, on_error, |r| {
        b.push(&r);
        Ok(())
    })?;
    let (rows, report) = b.finish()?;
    Ok((rows, report, skipped))
}

/// Writes training rows as JSONL, atomically.
pub fn write_training_rows(path: &Path, rows: &[TrainingRow]) -> Result<()> {
    let mut out = String::new();
    for r in rows {
        let line = serde_json::to_string(r).map_err(|e| Error::Json {
            path: path.to_path_buf(),
            line: None,
            message: e.to_string(),
        })?;
        out.push_str(&line);
        out.push('\n');
    }
    crate::util::write_atomic(path, out.as_bytes())
}

/// numpy's pairwise summation (`pairwise_sum_DOUBLE`), so means and stds match
/// `np.mean` / `np.std` bit for bit and percentile ties break the same way.
fn np_sum(a: &[f64]) -> f64 {
    const BLOCK: usize = 128;
    let n = a.len();
    if n < 8 {
        let mut res = 0.0;
        for x in a {
            res += x;
        }
        res
    } else if n <= BLOCK {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - (n % 8) {
            for (j, rj) in r.iter_mut().enumerate() {
                *rj += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res += a[i];
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        np_sum(&a[..n2]) + np_sum(&a[n2..])
    }
}

/// `(np.mean(a), np.std(a))`, population std (ddof = 0). `a` must be non-empty.
fn mean_and_std(a: &[f64]) -> (f64, f64) {
    let n = a.len() as f64;
    let mean = np_sum(a) / n;
    let sq: Vec<f64> = a.iter().map(|x| (x - mean) * (x - mean)).collect();
    (mean, (np_sum(&sq) / n).sqrt())
}

/// `np.percentile(values, q)` with the default linear method (numpy ≥ 1.22 `_lerp`).
/// `values` must be non-empty and free of NaN.
fn np_percentile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let n = v.len();
    let vi = (n - 1) as f64 * (q / 100.0);
    if vi >= (n - 1) as f64 {
        return v[n - 1];
    }
    if vi < 0.0 {
        return v[0];
    }
    let prev = vi.floor();
    let i = prev as usize;
    let (a, b) = (v[i], v[i + 1]);
    let t = vi - prev;
    let d = b - a;
    if t >= 0.5 {
        b - d * (1.0 - t)
    } else {
        a + d * t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_match_numpy() {
        // Expected values printed by numpy 2.4.
        let a = [
            0.1,
            0.7,
            0.3,
            0.0,
            0.9,
            0.25,
            0.125,
            1.0 / 3.0,
            2.0 / 3.0,
            0.05,
            0.95,
        ];
        assert_eq!(mean_and_std(&a), (0.39772727272727265, 0.3300996732908159));
        let mut b: Vec<f64> = (0..20).map(|i| i as f64 / 7.0).collect();
        b.extend([0.3; 5]);
        assert_eq!(mean_and_std(&b), (1.1457142857142857, 0.849508861709193));
        let v = [0.5, 0.1, 0.3, 0.3, 0.9, 0.0, 0.7, 0.2, 0.05, 0.6, 1.0 / 3.0];
        assert_eq!(np_percentile(&v, 20.0), 0.1);
        assert_eq!(np_percentile(&v, 40.0), 0.3);
        assert_eq!(np_percentile(&[0.0, 1.0], 40.0), 0.4);
        assert_eq!(np_percentile(&[3.0], 20.0), 3.0);
        assert_eq!(np_percentile(&[0.1, 0.2, 0.7], 75.0), 0.44999999999999996);
        // Long inputs exercise the blocked and recursive branches of the pairwise sum.
        let long: Vec<f64> = (0..300).map(|i| ((i * 37) % 101) as f64 / 101.0).collect();
        let naive: f64 = long.iter().sum();
        assert!((np_sum(&long) - naive).abs() < 1e-9);
    }

    fn inf(model: &str, rate: f64, completion: &str) -> Inference {
        Inference {
            completion: completion.into(),
            completion_id: 0,
            model_name: model.into(),
            pass_rate: rate,
        }
    }

    #[test]
    fn augmentation_follows_transform_question_format() {
        let mut row = AceCoderRow {
            id: "x".into(),
            source: "oss".into(),
            question: "Write a function that adds two numbers.".into(),
            test_cases: vec!["assert add(1, 2) == 3".into()],
            inferences: vec![
                inf("m", 0.5, "def wrong(a):\n    pass"),
                inf(
                    "m",
                    1.0,
                    "  def add(a: int, b: int) -> int:\n    return a + b",
                ),
                inf("m", 1.0, "def later(a, b):\n    return a + b"),
            ],
            context_messages: vec![],
        };
        assert_eq!(
            row.augmented_question().unwrap(),
            "Please complete the following problem:\n```\ndef add(a: int, b: int) -> int:\n    \"\"\"\n    Write a function that adds two numbers.\n    \"\"\"\n```\n"
        );
        row.question = "You are given two numbers.".into();
        assert_eq!(row.augmented_question(), None);
        row.question = "Add them.".into();
        row.inferences[1].completion = "```python\ndef add(a, b):\n    return a + b\n```".into();
        assert_eq!(
            row.augmented_question(),
            None,
            "best completion must start with def"
        );
    }

    const Q: &str = "qwen_coder_2.5";
    const L: &str = "llama3_instruct";
    const D: &str = "deepseek_coder";

    /// Pass rates chosen (by search against numpy and the released script) so that every
    /// plausible mistake changes the kept set: counting other models, ddof = 1, the std
    /// percentile over the mean filter's survivors, `>` for `>=`, `<` for `<=`.
    /// Expected (numpy): P20(mean) = 0.125, P40(std) = 0.125, kept r3 and r11.
    #[allow(clippy::type_complexity)]
    const RATES: &[(&str, &[(&str, f64)])] = &[
        ("r0", &[(Q, 1.0), (Q, 0.5), (L, 0.0)]),
        ("r1", &[(L, 0.25), (Q, 0.5), (Q, 0.0), (L, 1.0)]),
        ("r2", &[(Q, 0.0), (Q, 1.0), (Q, 1.0)]),
        ("r3", &[(Q, 0.0), (Q, 0.0), (L, 0.25), (Q, 0.25)]),
        ("r4", &[(L, 0.0), (Q, 0.25), (Q, 0.0)]),
        ("r5", &[(L, 0.0), (L, 1.0), (Q, 0.0), (Q, 0.0), (D, 0.0)]),
        ("r6", &[(L, 0.5), (Q, 0.0), (Q, 0.25), (D, 0.0)]),
        ("r7", &[(L, 0.0), (Q, 0.0)]),
        ("r8", &[(L, 0.0), (L, 0.5), (L, 0.0)]),
        ("r9", &[(Q, 1.0), (L, 0.0), (L, 0.0), (D, 1.0)]),
        ("r10", &[(Q, 0.25), (L, 0.25)]),
        ("r11", &[(Q, 0.25), (L, 0.0), (D, 1.0)]),
        ("r12", &[(Q, 1.0), (L, 1.0), (D, 0.0)]),
        ("r13", &[(Q, 0.5), (L, 0.0), (L, 1.0)]),
        ("r14", &[(L, 0.5), (L, 0.25), (Q, 0.0), (Q, 0.0)]),
        ("r15", &[(Q, 0.0), (L, 0.0), (Q, 0.0), (D, 1.0)]),
        // No considered model: left out of the statistics and of the output.
        ("r16", &[(D, 0.5)]),
    ];

    fn sample_rows() -> Vec<AceCoderRow> {
        RATES
            .iter()
            .map(|(id, rates)| {
                let question = if *id == "r3" {
                    format!("You are given a list. Solve task {id}.")
                } else {
                    format!("Write a function for task {id}.\nIt returns an int.")
                };
                AceCoderRow {
                    id: id.to_string(),
                    source: "oss".into(),
                    question: question.clone(),
                    test_cases: vec![
                        format!("assert solve_{id}([1]) == 1"),
                        format!("assert solve_{id}([]) == 0"),
                    ],
                    inferences: rates
                        .iter()
                        .enumerate()
                        .map(|(k, (m, r))| Inference {
                            completion: format!(
                                "def solve_{id}(nums: list) -> int:\n    return {k}  # {m}"
                            ),
                            completion_id: k as i64,
                            model_name: m.to_string(),
                            pass_rate: *r,
                        })
                        .collect(),
                    context_messages: vec![ContextMessage {
                        content: question,
                        role: "user".into(),
                    }],
                }
            })
            .collect()
    }

    fn row_json(r: &AceCoderRow) -> Value {
        serde_json::json!({
            "id": r.id, "source": r.source, "question": r.question, "test_cases": r.test_cases,
            "inferences": r.inferences, "context_messages": r.context_messages,
        })
    }

    fn write_jsonl(path: &Path, rows: &[Value]) {
        let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
        std::fs::write(path, text).unwrap();
    }

    const SCHEMA: &str = "message schema {
        optional binary id (UTF8);
        optional binary source (UTF8);
        optional binary question (UTF8);
        optional group test_cases (LIST) {
            repeated group list { optional binary element (UTF8); }
        }
        optional group inferences (LIST) {
            repeated group list {
                optional group element {
                    optional binary completion (UTF8);
                    optional int64 completion_id;
                    optional binary model_name (UTF8);
                    optional double pass_rate;
                }
            }
        }
        optional group context_messages (LIST) {
            repeated group list {
                optional group element {
                    optional binary content (UTF8);
                    optional binary role (UTF8);
                }
            }
        }
    }";

    /// Definition and repetition levels of one leaf of a `list<...>` column (3-level layout:
    /// list field 1, repeated group 2, element (or struct field) `leaf_def`).
    fn levels<T>(lists: Vec<Vec<T>>, leaf_def: i16) -> (Vec<T>, Vec<i16>, Vec<i16>) {
        let (mut vals, mut defs, mut reps) = (Vec::new(), Vec::new(), Vec::new());
        for list in lists {
            if list.is_empty() {
                defs.push(1);
                reps.push(0);
            }
            for (j, v) in list.into_iter().enumerate() {
                vals.push(v);
                defs.push(leaf_def);
                reps.push(i16::from(j > 0));
            }
        }
        (vals, defs, reps)
    }

    /// Writes rows in the AceCode-87K parquet schema with the low-level column writer (the
    /// hub's files come from pyarrow; the record reader accepts either list naming).
    /// `null_question` leaves that row's question null.
    fn write_parquet(path: &Path, rows: &[AceCoderRow], null_question: Option<usize>) {
        use parquet::basic::Compression;
        use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int64Type};
        use parquet::file::properties::WriterProperties;
        use parquet::file::writer::SerializedFileWriter;
        use std::sync::Arc;

        let schema = Arc::new(parquet::schema::parser::parse_message_type(SCHEMA).unwrap());
        let props = Arc::new(
            WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .build(),
        );
        let file = std::fs::File::create(path).unwrap();
        let mut w = SerializedFileWriter::new(file, schema, props).unwrap();
        let mut rg = w.next_row_group().unwrap();
        let bytes = |s: &str| ByteArray::from(s);
        let strs = |f: &dyn Fn(&AceCoderRow) -> Vec<ByteArray>, def| {
            levels(rows.iter().map(f).collect(), def)
        };
        let mut col = 0;
        while let Some(mut c) = rg.next_column().unwrap() {
            match col {
                0..=2 => {
                    let (mut vals, mut defs) = (Vec::new(), Vec::new());
                    for (i, r) in rows.iter().enumerate() {
                        let v = match col {
                            0 => Some(&r.id),
                            1 => Some(&r.source),
                            _ => (Some(i) != null_question).then_some(&r.question),
                        };
                        defs.push(i16::from(v.is_some()));
                        vals.extend(v.map(|s| bytes(s)));
                    }
                    c.typed::<ByteArrayType>()
                        .write_batch(&vals, Some(&defs), None)
                        .unwrap();
                }
                3 | 4 | 6 | 8 | 9 => {
                    let (vals, defs, reps) = match col {
                        3 => strs(&|r| r.test_cases.iter().map(|s| bytes(s)).collect(), 3),
                        4 => strs(
                            &|r| r.inferences.iter().map(|i| bytes(&i.completion)).collect(),
                            4,
                        ),
                        6 => strs(
                            &|r| r.inferences.iter().map(|i| bytes(&i.model_name)).collect(),
                            4,
                        ),
                        8 => strs(
                            &|r| {
                                r.context_messages
                                    .iter()
                                    .map(|m| bytes(&m.content))
                                    .collect()
                            },
                            4,
                        ),
                        _ => strs(
                            &|r| r.context_messages.iter().map(|m| bytes(&m.role)).collect(),
                            4,
                        ),
                    };
                    c.typed::<ByteArrayType>()
                        .write_batch(&vals, Some(&defs), Some(&reps))
                        .unwrap();
                }
                5 => {
                    let lists = rows
                        .iter()
                        .map(|r| r.inferences.iter().map(|i| i.completion_id).collect());
                    let (vals, defs, reps) = levels(lists.collect(), 4);
                    c.typed::<Int64Type>()
                        .write_batch(&vals, Some(&defs), Some(&reps))
                        .unwrap();
                }
                7 => {
                    let lists = rows
                        .iter()
                        .map(|r| r.inferences.iter().map(|i| i.pass_rate).collect());
                    let (vals, defs, reps) = levels(lists.collect(), 4);
                    c.typed::<DoubleType>()
                        .write_batch(&vals, Some(&defs), Some(&reps))
                        .unwrap();
                }
                _ => unreachable!("the schema has 10 leaves"),
            }
            c.close().unwrap();
            col += 1;
        }
        rg.close().unwrap();
        w.close().unwrap();
    }

    #[test]
    fn jsonl_and_parquet_load_the_same_rows() {
        let dir = tempfile::tempdir().unwrap();
        let rows = sample_rows();
        let jsonl = dir.path().join("rows.jsonl");
        write_jsonl(&jsonl, &rows.iter().map(row_json).collect::<Vec<_>>());
        let parquet = dir.path().join("rows.parquet");
        write_parquet(&parquet, &rows, None);
        for p in [&jsonl, &parquet] {
            let loaded = load_rows(p, OnError::Fail).unwrap();
            assert_eq!(loaded.rows, rows, "{}", p.display());
            assert_eq!(loaded.skipped_count(), 0);
        }
        let tasks = load_tasks(&parquet, OnError::Fail).unwrap().rows;
        assert_eq!(tasks[3].tests, rows[3].test_cases);
        assert_eq!(tasks[3].source, TaskSource::AceCoder);
    }

    #[test]
    fn reads_files_written_by_pyarrow() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/acecoder");
        for name in [
            "pyarrow_snappy.parquet",
            "pyarrow_zstd_legacy_lists.parquet",
        ] {
            let p = dir.join(name);
            match load_rows(&p, OnError::Fail).unwrap_err() {
                Error::Data { line, message, .. } => {
                    assert_eq!((line, message.as_str()), (3, "field `question` is missing"))
                }
                e => panic!("{name}: {e}"),
            }
            let got = load_rows(&p, OnError::Skip).unwrap();
            assert_eq!(got.skipped.len(), 1, "{name}");
            assert_eq!(got.rows.len(), 2, "{name}");
            let a = &got.rows[0];
            assert_eq!((a.id.as_str(), a.source.as_str()), ("a", "oss"));
            assert_eq!(a.test_cases, ["assert f(1) == 1", "assert f(2) == 2"]);
            assert_eq!(
                a.inferences[1],
                Inference {
                    completion: "def f(x):\n    return 0".into(),
                    completion_id: 1,
                    model_name: "llama3_instruct".into(),
                    pass_rate: 0.0,
                }
            );
            assert_eq!(a.context_messages[0].role, "user");
            assert!(got.rows[1].inferences.is_empty() && got.rows[1].context_messages.is_empty());
        }
    }

    #[test]
    fn hard_filter_matches_the_released_script() {
        let dir = tempfile::tempdir().unwrap();
        let rows = sample_rows();
        let (out, report) = hard_training_rows(&rows, &HardFilter::default()).unwrap();
        let ids: Vec<&str> = out.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["r3", "r11", "r11"]);
        assert_eq!(
            report,
            HardFilterReport {
                rows_in: 17,
                without_model_inferences: 1,
                avg_threshold: 0.125,
                std_threshold: 0.125,
                kept_by_avg: 5,
                kept: 2,
                augmented: 1,
                rows_out: 3,
            }
        );
        // r3 asks "You ...": no copy. r11's copy is built from its best inference (deepseek,
        // pass rate 1.0, index 2), whichever model it came from.
        assert_eq!(out[1], rows[11].training_row());
        assert_eq!(
            out[2].question,
            "Please complete the following problem:\n```\ndef solve_r11(nums: list) -> int:\n    \"\"\"\n    Write a function for task r11.\nIt returns an int.\n    \"\"\"\n```\n"
        );
        assert_eq!(out[2].context_messages, rows[11].context_messages);
        // The copy has a fence line, so training shows no "Test cases:" suffix; the original does.
        let msg = |r: &TrainingRow| crate::data::prompt::user_message(&r.to_task());
        assert!(msg(&out[1]).ends_with("\nTest cases: assert solve_r11([1]) == 1"));
        assert_eq!(msg(&out[2]), out[2].question);

        // The same from files, streamed; the output round-trips through JSONL.
        let parquet = dir.path().join("train-00000-of-00001.parquet");
        write_parquet(&parquet, &rows, None);
        let (from_file, report2, skipped) =
            hard_training_rows_from_path(dir.path(), &HardFilter::default(), OnError::Fail)
                .unwrap();
        assert_eq!(
            (from_file.clone(), report2, skipped.len()),
            (out.clone(), report, 0)
        );
        let written = dir.path().join("hard.jsonl");
        write_training_rows(&written, &from_file).unwrap();
        let first_line = std::fs::read_to_string(&written).unwrap();
        assert!(first_line.starts_with(r#"{"id":"r3","source":"oss","question":"You are given"#));
        let reloaded = load_tasks(&written, OnError::Fail).unwrap().rows;
        assert_eq!(
            reloaded,
            out.iter().map(TrainingRow::to_task).collect::<Vec<_>>()
        );
        // Without inferences there is nothing to filter on.
        assert!(
            hard_training_rows_from_path(&written, &HardFilter::default(), OnError::Fail).is_err()
        );
    }

    #[test]
    fn malformed_rows_name_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let rows = sample_rows();
        let mut bad_rate = row_json(&rows[1]);
        bad_rate["inferences"][2]["pass_rate"] = "high".into();
        let mut no_tests = row_json(&rows[2]);
        no_tests["test_cases"] = serde_json::json!([]);
        let jsonl = dir.path().join("bad.jsonl");
        write_jsonl(
            &jsonl,
            &[row_json(&rows[0]), bad_rate, no_tests, row_json(&rows[3])],
        );
        match load_rows(&jsonl, OnError::Fail).unwrap_err() {
            Error::Data {
                path,
                line,
                message,
            } => {
                assert_eq!((path, line), (jsonl.clone(), 2));
                assert_eq!(
                    message,
                    "field `inferences[2].pass_rate`: expected a number, found a string"
                );
            }
            e => panic!("{e}"),
        }
        let skipped = load_rows(&jsonl, OnError::Skip).unwrap();
        assert_eq!(skipped.rows.len(), 2);
        let lines: Vec<usize> = skipped.skipped.iter().map(|s| s.line).collect();
        assert_eq!(lines, [2, 3]);
        assert_eq!(skipped.skipped[1].message, "field `test_cases` is empty");

        let parquet = dir.path().join("bad.parquet");
        write_parquet(&parquet, &rows[..4], Some(2));
        match load_rows(&parquet, OnError::Fail).unwrap_err() {
            Error::Data {
                path,
                line,
                message,
            } => {
                assert_eq!((path, line), (parquet.clone(), 3));
                assert_eq!(message, "field `question` is missing");
            }
            e => panic!("{e}"),
        }
        let skipped = load_rows(&parquet, OnError::Skip).unwrap();
        assert_eq!((skipped.rows.len(), skipped.skipped[0].line), (3, 3));
        // A file that is not parquet at all is an I/O-level error naming the file.
        let junk = dir.path().join("junk.parquet");
        std::fs::write(&junk, b"not parquet").unwrap();
        let e = load_rows(&junk, OnError::Skip).unwrap_err().to_string();
        assert!(e.contains("junk.parquet") && e.contains("parquet"), "{e}");
    }
}
