//! A procedural **toy domain** of AceCoder-format tasks, for the embedded default model and
//! for quick end-to-end runs without any download.
//!
//! Each task is a one-line question naming a function (`Write a Python function
//! `arith_affine(x)` that returns x multiplied by 3 plus 5.`), a hidden reference solution and
//! 5–10 independent `assert` statements computed here with Python's semantics. The problems
//! are deliberately easy and formulaic, so that a model of a few million parameters can learn
//! them; they say nothing about real coding ability.
//!
//! | family | examples |
//! |---|---|
//! | arithmetic | `x * a + b`, `(x + a) * b`, `x * a + y * b`, `x // a + b`, `x % a * b`, `x * x + a` |
//! | strings | reverse + suffix, upper + suffix, repeat + suffix, `replace`, `count`, wrap, slices |
//! | list reductions | `sum * k + b`, `max + b`, `min * k`, count greater, sum of multiples |
//! | list filters / maps | keep greater, `x * k + b`, even/odd scaled, keep multiples |
//! | conditionals | threshold branches, parity words, sign words, length test, clamp |
//! | loops | accumulate `i * k`, power by repeated product, count multiples, digit sum |
//!
//! **Splits.** Every task has a *semantic key*: its template and constants, without the
//! function name or the test inputs (`arith.affine:a=3,b=5`). A fixed hash of the key puts
//! about one key in five in [`Split::HeldOut`] and the rest in [`Split::Train`], so the two
//! splits never share a problem, whatever the seeds; held-out tasks are new combinations of
//! constants for templates seen in training. The key is the part of [`Task::id`] between
//! `synthetic:` and `#` (see [`semantic_key`]).

use std::collections::HashSet;

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::prompt::{user_message, SYSTEM_PROMPT};
use super::{Task, TaskSource};
use crate::model::{byte_level_specials, chat_prompt, Tokenizer};
use crate::{Error, Result};

/// Which side of the train / held-out partition a task is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// About 80% of the semantic keys.
    Train,
    /// About 20% of the semantic keys, disjoint from [`Split::Train`].
    HeldOut,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::HeldOut => "heldout",
        }
    }
}

/// The split a semantic key belongs to (stable across platforms and releases: FNV-1a).
pub fn split_of(key: &str) -> Split {
    if fnv1a(key).is_multiple_of(5) {
        Split::HeldOut
    } else {
        Split::Train
    }
}

/// The semantic key of a synthetic task id (`synthetic:<key>#<n>`), `None` for other ids.
pub fn semantic_key(id: &str) -> Option<&str> {
    let rest = id.strip_prefix("synthetic:")?;
    Some(rest.rsplit_once('#').map_or(rest, |(k, _)| k))
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The assistant answer the toy model is trained to give: the reference solution in one
/// python fence, ending with the closing fence and one newline. The turn's `<|im_end|>` goes
/// after it, so the decoded answer has the shape the format reward wants (spec §1.10) whether
/// decoding stops at `<|im_end|>` or skips the special tokens of all K positions.
pub fn completion_text(task: &Task) -> Result<String> {
    let code = task
        .reference_solution
        .as_deref()
        .ok_or_else(|| Error::invalid("task", format!("{}: no reference solution", task.id)))?;
    Ok(format!("```python\n{code}\n```\n"))
}

/// The full training prompt of a task: Qwen chat template, system prompt, AceCoder user message.
pub fn prompt_text(task: &Task) -> String {
    chat_prompt(SYSTEM_PROMPT, &user_message(task), None)
}

/// Trains a byte-level BPE tokenizer on `texts` with `vocab_size` ids in all. The five
/// DiffuCoder special tokens come first, at the ids of [`byte_level_specials`]
/// (`<|endoftext|>` 0, `<|im_start|>` 1, `<|im_end|>` 2, `<|mask|>` 3, `<|dlm_pad|>` 4), then
/// the 256 byte symbols (so any text encodes), then the learned merges. Special tokens written
/// in the texts are recognised, not learned from.
pub fn train_tokenizer<I, S>(texts: I, vocab_size: usize) -> Result<Tokenizer>
where
    I: Iterator<Item = S> + Send,
    S: AsRef<str> + Send,
{
    use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
    use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::{
        AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    };

    let specials = byte_level_specials();
    let mut by_id = [
        &specials.eos,
        &specials.im_start,
        &specials.im_end,
        &specials.mask,
        &specials.pad,
    ];
    by_id.sort_by_key(|(_, id)| *id);
    let added: Vec<AddedToken> = by_id
        .iter()
        .map(|(c, _)| AddedToken::from(c.clone(), true))
        .collect();
    let min_vocab = added.len() + 256;
    if vocab_size < min_vocab {
        return Err(Error::invalid(
            "vocab_size",
            format!("{vocab_size} is smaller than the {min_vocab} special and byte tokens"),
        ));
    }
    let err = |e: tokenizers::Error| Error::Tokenizer {
        path: None,
        message: e.to_string(),
    };
    let byte_level = ByteLevel::new(false, true, true);
    let mut tok = tokenizers::TokenizerBuilder::<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >::default()
    .with_model(BPE::default())
    .with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(byte_level)))
    .with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevelDecoder::new(
        false, true, true,
    ))))
    .build()
    .map_err(err)?;
    // Registered before training so the chat template's markers are split off, not merged.
    tok.add_special_tokens(&added);
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(added)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    tok.train(&mut trainer, texts).map_err(err)?;
    let tokenizer = Tokenizer::from_tokenizers(tok.into(), &specials)?;
    let s = tokenizer.special();
    let pairs = [
        (s.eos, specials.eos.1),
        (s.im_start, specials.im_start.1),
        (s.im_end, specials.im_end.1),
        (s.mask, specials.mask.1),
        (s.pad, specials.pad.1),
    ];
    if let Some((have, want)) = pairs.into_iter().find(|(have, want)| have != want) {
        return Err(Error::Tokenizer {
            path: None,
            message: format!("trained tokenizer put special id {want} at {have}"),
        });
    }
    Ok(tokenizer)
}

/// An endless, seeded stream of tasks from one split. Semantic keys may repeat (with other
/// function names and test inputs); [`Generator::distinct`] gives tasks with distinct keys.
#[derive(Debug, Clone)]
pub struct Generator {
    rng: ChaCha8Rng,
    split: Split,
    count: u64,
}

impl Generator {
    pub fn new(split: Split, seed: u64) -> Self {
        // The split is folded into the stream so train and held-out draws are independent.
        let stream = match split {
            Split::Train => 0x7261_696e,
            Split::HeldOut => 0x6865_6c64,
        };
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed ^ stream),
            split,
            count: 0,
        }
    }

    pub fn split(&self) -> Split {
        self.split
    }

    /// The next task of this split.
    pub fn next_task(&mut self) -> Task {
        loop {
            let variant = *VARIANTS.choose(&mut self.rng).expect("variants exist");
            let spec = variant(&mut self.rng);
            if split_of(&spec.key) == self.split {
                let task = spec.into_task(&mut self.rng, self.count);
                self.count += 1;
                return task;
            }
        }
    }

    /// `n` tasks with pairwise distinct semantic keys; an error when the split has fewer keys
    /// than that within a generous number of draws.
    pub fn distinct(&mut self, n: usize) -> Result<Vec<Task>> {
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(n);
        let max_draws = 200 * n + 1000;
        for _ in 0..max_draws {
            if out.len() == n {
                break;
            }
            let task = self.next_task();
            let key = semantic_key(&task.id).expect("synthetic id").to_string();
            if seen.insert(key) {
                out.push(task);
            }
        }
        if out.len() < n {
            return Err(Error::invalid(
                "n",
                format!(
                    "only {} distinct {} tasks found, {n} requested",
                    out.len(),
                    self.split.name()
                ),
            ));
        }
        Ok(out)
    }
}

impl Iterator for Generator {
    type Item = Task;
    fn next(&mut self) -> Option<Task> {
        Some(self.next_task())
    }
}

// ---------------------------------------------------------------------------------------
// Python values and task assembly

#[derive(Debug, Clone, PartialEq)]
enum Py {
    Int(i64),
    Str(String),
    Bool(bool),
    List(Vec<i64>),
}

impl Py {
    /// Python's `repr` (strings are lowercase ASCII letters only, so no escaping is needed).
    fn repr(&self) -> String {
        match self {
            Py::Int(v) => v.to_string(),
            Py::Str(s) => format!("'{s}'"),
            Py::Bool(b) => if *b { "True" } else { "False" }.into(),
            Py::List(v) => {
                let items: Vec<String> = v.iter().map(i64::to_string).collect();
                format!("[{}]", items.join(", "))
            }
        }
    }
    fn int(&self) -> i64 {
        match self {
            Py::Int(v) => *v,
            other => unreachable!("template expects an int, got {other:?}"),
        }
    }
    fn str(&self) -> &str {
        match self {
            Py::Str(s) => s,
            other => unreachable!("template expects a str, got {other:?}"),
        }
    }
    fn list(&self) -> &[i64] {
        match self {
            Py::List(v) => v,
            other => unreachable!("template expects a list, got {other:?}"),
        }
    }
}

/// How the test inputs of a template are drawn.
#[derive(Debug, Clone)]
enum Inputs {
    /// One integer in `lo..=hi`.
    Int(i64, i64),
    /// Two integers in `lo..=hi`.
    Int2(i64, i64),
    /// A lowercase string of length `0..=8`, half its letters from `focus`.
    Str(String),
    /// A list of `min_len..=7` integers in `-9..=20`.
    List { min_len: usize },
}

impl Inputs {
    fn draw(&self, rng: &mut ChaCha8Rng) -> Vec<Py> {
        match self {
            Inputs::Int(lo, hi) => vec![Py::Int(rng.random_range(*lo..=*hi))],
            Inputs::Int2(lo, hi) => vec![
                Py::Int(rng.random_range(*lo..=*hi)),
                Py::Int(rng.random_range(*lo..=*hi)),
            ],
            Inputs::Str(focus) => {
                let len = rng.random_range(0..=8);
                let focus = focus.as_bytes();
                let s = (0..len)
                    .map(|_| {
                        if !focus.is_empty() && rng.random_bool(0.5) {
                            char::from(*focus.choose(rng).expect("non-empty"))
                        } else {
                            char::from(b'a' + rng.random_range(0..26u8))
                        }
                    })
                    .collect();
                vec![Py::Str(s)]
            }
            Inputs::List { min_len } => {
                let len = rng.random_range(*min_len..=7);
                vec![Py::List(
                    (0..len).map(|_| rng.random_range(-9..=20)).collect(),
                )]
            }
        }
    }

    /// How many distinct inputs exist (caps the number of tests).
    fn space(&self) -> u64 {
        match self {
            Inputs::Int(lo, hi) => (hi - lo + 1) as u64,
            Inputs::Int2(lo, hi) => ((hi - lo + 1) as u64).pow(2),
            Inputs::Str(_) | Inputs::List { .. } => u64::MAX,
        }
    }
}

type Eval = Box<dyn Fn(&[Py]) -> Py>;

/// One instantiated template: everything but the function name and the tests.
struct Spec {
    key: String,
    params: &'static str,
    /// What the function returns, completing "... that returns ___."
    returns: String,
    /// Indented body lines (after the `def` line).
    body: String,
    inputs: Inputs,
    eval: Eval,
}

const OPENERS: &[&str] = &[
    "Write a Python function",
    "Implement a function",
    "Create a function",
];
const WORDS: &[&str] = &[
    "cat", "dog", "sun", "red", "top", "ok", "yes", "no", "big", "low", "abc", "xyz", "foo", "bar",
    "baz", "zip", "hot", "ice", "tea", "map", "pen", "box", "key", "sky", "win", "end", "go", "up",
    "hi", "war", "old", "new",
];

impl Spec {
    fn into_task(self, rng: &mut ChaCha8Rng, index: u64) -> Task {
        // The name is the template's (`arith.affine` -> `arith_affine`), not drawn: a model of a
        // million parameters learns to copy the constants from the question far sooner when it
        // does not also have to copy an arbitrary identifier.
        let template = self.key.split(':').next().unwrap_or(&self.key);
        let name = template.replace('.', "_");
        let opener = OPENERS.choose(rng).expect("non-empty");
        let question = format!(
            "{opener} `{name}({})` that returns {}.",
            self.params, self.returns
        );
        let code = format!("def {name}({}):\n{}", self.params, self.body);
        let n_tests = (rng.random_range(5..=10u64)).min(self.inputs.space()) as usize;
        let mut seen = HashSet::new();
        let mut tests = Vec::with_capacity(n_tests);
        // Inputs are redrawn until distinct; small input spaces are capped above, so this ends.
        while tests.len() < n_tests {
            let args = self.inputs.draw(rng);
            let call: Vec<String> = args.iter().map(Py::repr).collect();
            let call = call.join(", ");
            if seen.insert(call.clone()) {
                let expected = (self.eval)(&args).repr();
                tests.push(format!("assert {name}({call}) == {expected}"));
            }
        }
        Task {
            id: format!("synthetic:{}#{index}", self.key),
            question,
            tests,
            entry_point: Some(name),
            reference_solution: Some(code),
            source: TaskSource::Synthetic,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Templates. Each draws its constants and returns a Spec whose evaluator mirrors the Python
// body exactly (floor division and modulo only by positive divisors, where they agree with
// `div_euclid` / `rem_euclid`).

type Variant = fn(&mut ChaCha8Rng) -> Spec;

const VARIANTS: &[Variant] = &[
    arith_affine,
    arith_shift_scale,
    arith_linear2,
    arith_floordiv,
    arith_mod_scale,
    arith_square,
    str_reverse_suffix,
    str_upper_suffix,
    str_repeat_suffix,
    str_replace,
    str_count,
    str_wrap,
    str_ends,
    list_sum_scale,
    list_max_plus,
    list_min_times,
    list_count_greater,
    list_sum_divisible,
    filter_greater,
    map_affine,
    filter_parity_scale,
    filter_divisible,
    cond_threshold,
    cond_parity_words,
    cond_sign_words,
    cond_longer_than,
    cond_clamp,
    loop_sum_multiples,
    loop_power,
    loop_count_divisible,
    loop_digit_sum,
];

fn nonzero(rng: &mut ChaCha8Rng, lo: i64, hi: i64) -> i64 {
    loop {
        let v = rng.random_range(lo..=hi);
        if v != 0 {
            return v;
        }
    }
}

/// `" plus 5"` / `" minus 5"` and `" + 5"` / `" - 5"`.
fn signed(b: i64) -> (String, String) {
    if b >= 0 {
        (format!("plus {b}"), format!("+ {b}"))
    } else {
        (format!("minus {}", -b), format!("- {}", -b))
    }
}

fn word(rng: &mut ChaCha8Rng) -> &'static str {
    WORDS.choose(rng).expect("non-empty")
}

fn two_words(rng: &mut ChaCha8Rng) -> (&'static str, &'static str) {
    let picked: Vec<&&str> = WORDS.choose_multiple(rng, 2).collect();
    (picked[0], picked[1])
}

fn letter(rng: &mut ChaCha8Rng) -> char {
    char::from(b'a' + rng.random_range(0..26u8))
}

fn arith_affine(rng: &mut ChaCha8Rng) -> Spec {
    let a = rng.random_range(2..=9);
    let b = nonzero(rng, -9, 9);
    let (text, code) = signed(b);
    Spec {
        key: format!("arith.affine:a={a},b={b}"),
        params: "x",
        returns: format!("x multiplied by {a} {text}"),
        body: format!("    return x * {a} {code}"),
        inputs: Inputs::Int(-30, 30),
        eval: Box::new(move |v| Py::Int(v[0].int() * a + b)),
    }
}

fn arith_shift_scale(rng: &mut ChaCha8Rng) -> Spec {
    let a = rng.random_range(1..=9);
    let b = rng.random_range(2..=9);
    Spec {
        key: format!("arith.shift_scale:a={a},b={b}"),
        params: "x",
        returns: format!("x plus {a}, multiplied by {b}"),
        body: format!("    return (x + {a}) * {b}"),
        inputs: Inputs::Int(-30, 30),
        eval: Box::new(move |v| Py::Int((v[0].int() + a) * b)),
    }
}

fn arith_linear2(rng: &mut ChaCha8Rng) -> Spec {
    let a = rng.random_range(2..=9);
    let b = rng.random_range(2..=9);
    Spec {
        key: format!("arith.linear2:a={a},b={b}"),
        params: "x, y",
        returns: format!("x times {a} plus y times {b}"),
        body: format!("    return x * {a} + y * {b}"),
        inputs: Inputs::Int2(-20, 20),
        eval: Box::new(move |v| Py::Int(v[0].int() * a + v[1].int() * b)),
    }
}

fn arith_floordiv(rng: &mut ChaCha8Rng) -> Spec {
    let a = rng.random_range(2..=9);
    let b = rng.random_range(1..=9);
    Spec {
        key: format!("arith.floordiv:a={a},b={b}"),
        params: "x",
        returns: format!("x divided by {a} (rounded down) plus {b}"),
        body: format!("    return x // {a} + {b}"),
        inputs: Inputs::Int(-30, 60),
        eval: Box::new(move |v| Py::Int(v[0].int().div_euclid(a) + b)),
    }
}

fn arith_mod_scale(rng: &mut ChaCha8Rng) -> Spec {
    let a = rng.random_range(2..=12);
    let b = rng.random_range(2..=9);
    Spec {
        key: format!("arith.mod_scale:a={a},b={b}"),
        params: "x",
        returns: format!("the remainder of x divided by {a}, multiplied by {b}"),
        body: format!("    return x % {a} * {b}"),
        inputs: Inputs::Int(-30, 60),
        eval: Box::new(move |v| Py::Int(v[0].int().rem_euclid(a) * b)),
    }
}

fn arith_square(rng: &mut ChaCha8Rng) -> Spec {
    let a = nonzero(rng, -9, 9);
    let (text, code) = signed(a);
    Spec {
        key: format!("arith.square:a={a}"),
        params: "x",
        returns: format!("the square of x {text}"),
        body: format!("    return x * x {code}"),
        inputs: Inputs::Int(-20, 20),
        eval: Box::new(move |v| Py::Int(v[0].int() * v[0].int() + a)),
    }
}

fn str_reverse_suffix(rng: &mut ChaCha8Rng) -> Spec {
    let w = word(rng);
    Spec {
        key: format!("str.reverse_suffix:w={w}"),
        params: "s",
        returns: format!("s reversed, followed by '{w}'"),
        body: format!("    return s[::-1] + '{w}'"),
        inputs: Inputs::Str(String::new()),
        eval: Box::new(move |v| Py::Str(v[0].str().chars().rev().collect::<String>() + w)),
    }
}

fn str_upper_suffix(rng: &mut ChaCha8Rng) -> Spec {
    let w = word(rng);
    Spec {
        key: format!("str.upper_suffix:w={w}"),
        params: "s",
        returns: format!("s in upper case, followed by '{w}'"),
        body: format!("    return s.upper() + '{w}'"),
        inputs: Inputs::Str(String::new()),
        eval: Box::new(move |v| Py::Str(v[0].str().to_ascii_uppercase() + w)),
    }
}

fn str_repeat_suffix(rng: &mut ChaCha8Rng) -> Spec {
    let k = rng.random_range(2..=4);
    let w = word(rng);
    Spec {
        key: format!("str.repeat_suffix:k={k},w={w}"),
        params: "s",
        returns: format!("s repeated {k} times, followed by '{w}'"),
        body: format!("    return s * {k} + '{w}'"),
        inputs: Inputs::Str(String::new()),
        eval: Box::new(move |v| Py::Str(v[0].str().repeat(k) + w)),
    }
}

fn str_replace(rng: &mut ChaCha8Rng) -> Spec {
    let a = letter(rng);
    let b = loop {
        let b = letter(rng);
        if b != a {
            break b;
        }
    };
    Spec {
        key: format!("str.replace:a={a},b={b}"),
        params: "s",
        returns: format!("s with every '{a}' replaced by '{b}'"),
        body: format!("    return s.replace('{a}', '{b}')"),
        inputs: Inputs::Str(a.to_string()),
        eval: Box::new(move |v| Py::Str(v[0].str().replace(a, &b.to_string()))),
    }
}

fn str_count(rng: &mut ChaCha8Rng) -> Spec {
    let c = letter(rng);
    Spec {
        key: format!("str.count:c={c}"),
        params: "s",
        returns: format!("the number of times '{c}' occurs in s"),
        body: format!("    return s.count('{c}')"),
        inputs: Inputs::Str(c.to_string()),
        eval: Box::new(move |v| Py::Int(v[0].str().matches(c).count() as i64)),
    }
}

fn str_wrap(rng: &mut ChaCha8Rng) -> Spec {
    let p = word(rng);
    let q = word(rng);
    Spec {
        key: format!("str.wrap:p={p},q={q}"),
        params: "s",
        returns: format!("'{p}' followed by s followed by '{q}'"),
        body: format!("    return '{p}' + s + '{q}'"),
        inputs: Inputs::Str(String::new()),
        eval: Box::new(move |v| Py::Str(format!("{p}{}{q}", v[0].str()))),
    }
}

fn str_ends(rng: &mut ChaCha8Rng) -> Spec {
    let k = rng.random_range(1..=5);
    let j = rng.random_range(1..=5);
    Spec {
        key: format!("str.ends:k={k},j={j}"),
        params: "s",
        returns: format!("the first {k} characters of s followed by the last {j} characters of s"),
        body: format!("    return s[:{k}] + s[-{j}:]"),
        inputs: Inputs::Str(String::new()),
        eval: Box::new(move |v| {
            let s = v[0].str();
            let head = &s[..s.len().min(k)];
            let tail = &s[s.len() - s.len().min(j)..];
            Py::Str(format!("{head}{tail}"))
        }),
    }
}

fn list_sum_scale(rng: &mut ChaCha8Rng) -> Spec {
    let k = rng.random_range(2..=9);
    let b = nonzero(rng, -9, 9);
    let (text, code) = signed(b);
    Spec {
        key: format!("list.sum_scale:k={k},b={b}"),
        params: "nums",
        returns: format!("the sum of nums multiplied by {k} {text}"),
        body: format!("    return sum(nums) * {k} {code}"),
        inputs: Inputs::List { min_len: 0 },
        eval: Box::new(move |v| Py::Int(v[0].list().iter().sum::<i64>() * k + b)),
    }
}

fn list_max_plus(rng: &mut ChaCha8Rng) -> Spec {
    let b = nonzero(rng, -9, 9);
    let (text, code) = signed(b);
    Spec {
        key: format!("list.max_plus:b={b}"),
        params: "nums",
        returns: format!("the largest element of the non-empty list nums {text}"),
        body: format!("    return max(nums) {code}"),
        inputs: Inputs::List { min_len: 1 },
        eval: Box::new(move |v| Py::Int(v[0].list().iter().max().expect("non-empty") + b)),
    }
}

fn list_min_times(rng: &mut ChaCha8Rng) -> Spec {
    let k = rng.random_range(2..=9);
    Spec {
        key: format!("list.min_times:k={k}"),
        params: "nums",
        returns: format!("the smallest element of the non-empty list nums multiplied by {k}"),
        body: format!("    return min(nums) * {k}"),
        inputs: Inputs::List { min_len: 1 },
        eval: Box::new(move |v| Py::Int(v[0].list().iter().min().expect("non-empty") * k)),
    }
}

fn list_count_greater(rng: &mut ChaCha8Rng) -> Spec {
    let c = rng.random_range(-5..=15);
    Spec {
        key: format!("list.count_greater:c={c}"),
        params: "nums",
        returns: format!("how many elements of nums are greater than {c}"),
        body: format!("    return len([x for x in nums if x > {c}])"),
        inputs: Inputs::List { min_len: 0 },
        eval: Box::new(move |v| Py::Int(v[0].list().iter().filter(|&&x| x > c).count() as i64)),
    }
}

fn list_sum_divisible(rng: &mut ChaCha8Rng) -> Spec {
    let k = rng.random_range(2..=7);
    Spec {
        key: format!("list.sum_divisible:k={k}"),
        params: "nums",
        returns: format!("the sum of the elements of nums that are divisible by {k}"),
        body: format!("    return sum(x for x in nums if x % {k} == 0)"),
        inputs: Inputs::List { min_len: 0 },
        eval: Box::new(move |v| {
            Py::Int(v[0].list().iter().filter(|&&x| x.rem_euclid(k) == 0).sum())
        }),
    }
}

fn filter_greater(rng: &mut ChaCha8Rng) -> Spec {
    let c = rng.random_range(-5..=15);
    Spec {
        key: format!("filter.greater:c={c}"),
        params: "nums",
        returns: format!("the list of the elements of nums that are greater than {c}"),
        body: format!("    return [x for x in nums if x > {c}]"),
        inputs: Inputs::List { min_len: 0 },
        eval: Box::new(move |v| Py::List(v[0].list().iter().copied().filter(|&x| x > c).collect())),
    }
}

fn map_affine(rng: &mut ChaCha8Rng) -> Spec {
    let k = rng.random_range(2..=9);
    let b = nonzero(rng, -9, 9);
    let (text, code) = signed(b);
    Spec {
        key: format!("map.affine:k={k},b={b}"),
        params: "nums",
        returns: format!("a list with each element of nums multiplied by {k} {text}"),
        body: format!("    return [x * {k} {code} for x in nums]"),
        inputs: Inputs::List { min_len: 0 },
        eval: Box::new(move |v| Py::List(v[0].list().iter().map(|x| x * k + b).collect())),
    }
}

fn filter_parity_scale(rng: &mut ChaCha8Rng) -> Spec {
    let odd = rng.random_bool(0.5);
    let k = rng.random_range(2..=9);
    let (name, r) = if odd { ("odd", 1) } else { ("even", 0) };
    Spec {
        key: format!("filter.parity_scale:r={r},k={k}"),
        params: "nums",
        returns: format!("the {name} elements of nums, each multiplied by {k}"),
        body: format!("    return [x * {k} for x in nums if x % 2 == {r}]"),
        inputs: Inputs::List { min_len: 0 },
        eval: Box::new(move |v| {
            Py::List(
                v[0].list()
                    .iter()
                    .filter(|x| x.rem_euclid(2) == r)
                    .map(|x| x * k)
                    .collect(),
            )
        }),
    }
}

fn filter_divisible(rng: &mut ChaCha8Rng) -> Spec {
    let k = rng.random_range(2..=7);
    Spec {
        key: format!("filter.divisible:k={k}"),
        params: "nums",
        returns: format!("the list of the elements of nums that are divisible by {k}"),
        body: format!("    return [x for x in nums if x % {k} == 0]"),
        inputs: Inputs::List { min_len: 0 },
        eval: Box::new(move |v| {
            Py::List(
                v[0].list()
                    .iter()
                    .copied()
                    .filter(|x| x.rem_euclid(k) == 0)
                    .collect(),
            )
        }),
    }
}

fn cond_threshold(rng: &mut ChaCha8Rng) -> Spec {
    let c = rng.random_range(-5..=10);
    let a = rng.random_range(2..=9);
    let b = rng.random_range(1..=9);
    Spec {
        key: format!("cond.threshold:c={c},a={a},b={b}"),
        params: "x",
        returns: format!("x multiplied by {a} if x is greater than {c}, and x plus {b} otherwise"),
        body: format!("    if x > {c}:\n        return x * {a}\n    return x + {b}"),
        inputs: Inputs::Int(-15, 20),
        eval: Box::new(move |v| {
            let x = v[0].int();
            Py::Int(if x > c { x * a } else { x + b })
        }),
    }
}

fn cond_parity_words(rng: &mut ChaCha8Rng) -> Spec {
    let (p, q) = two_words(rng);
    Spec {
        key: format!("cond.parity_words:p={p},q={q}"),
        params: "x",
        returns: format!("'{p}' if x is even and '{q}' otherwise"),
        body: format!("    if x % 2 == 0:\n        return '{p}'\n    return '{q}'"),
        inputs: Inputs::Int(-30, 30),
        eval: Box::new(move |v| Py::Str(if v[0].int().rem_euclid(2) == 0 { p } else { q }.into())),
    }
}

fn cond_sign_words(rng: &mut ChaCha8Rng) -> Spec {
    let picked: Vec<&&str> = WORDS.choose_multiple(rng, 3).collect();
    let (p, n, z) = (*picked[0], *picked[1], *picked[2]);
    Spec {
        key: format!("cond.sign_words:p={p},n={n},z={z}"),
        params: "x",
        returns: format!("'{p}' if x is positive, '{n}' if x is negative and '{z}' if x is zero"),
        body: format!("    if x > 0:\n        return '{p}'\n    if x < 0:\n        return '{n}'\n    return '{z}'"),
        inputs: Inputs::Int(-5, 5),
        eval: Box::new(move |v| {
            let x = v[0].int();
            Py::Str(if x > 0 { p } else if x < 0 { n } else { z }.into())
        }),
    }
}

fn cond_longer_than(rng: &mut ChaCha8Rng) -> Spec {
    let k = rng.random_range(1..=7);
    Spec {
        key: format!("cond.longer_than:k={k}"),
        params: "s",
        returns: format!("True if s has more than {k} characters and False otherwise"),
        body: format!("    return len(s) > {k}"),
        inputs: Inputs::Str(String::new()),
        eval: Box::new(move |v| Py::Bool(v[0].str().len() > k)),
    }
}

fn cond_clamp(rng: &mut ChaCha8Rng) -> Spec {
    let lo = rng.random_range(-10..=0);
    let hi = rng.random_range(1..=20);
    Spec {
        key: format!("cond.clamp:lo={lo},hi={hi}"),
        params: "x",
        returns: format!("x limited to the range from {lo} to {hi}"),
        body: format!("    return max({lo}, min({hi}, x))"),
        inputs: Inputs::Int(-30, 30),
        eval: Box::new(move |v| Py::Int(v[0].int().clamp(lo, hi))),
    }
}

fn loop_sum_multiples(rng: &mut ChaCha8Rng) -> Spec {
    let a = rng.random_range(0..=3);
    let k = rng.random_range(2..=9);
    Spec {
        key: format!("loop.sum_multiples:a={a},k={k}"),
        params: "n",
        returns: format!("the sum of i * {k} for every i from {a} to n, computed with a loop"),
        body: format!("    total = 0\n    for i in range({a}, n + 1):\n        total += i * {k}\n    return total"),
        inputs: Inputs::Int(0, 15),
        eval: Box::new(move |v| Py::Int((a..=v[0].int()).map(|i| i * k).sum())),
    }
}

fn loop_power(rng: &mut ChaCha8Rng) -> Spec {
    let a: i64 = rng.random_range(2..=5);
    let b = rng.random_range(1..=5);
    Spec {
        key: format!("loop.power:a={a},b={b}"),
        params: "n",
        returns: format!("{b} times {a} to the power n, computed with a loop"),
        body: format!(
            "    result = {b}\n    for _ in range(n):\n        result *= {a}\n    return result"
        ),
        inputs: Inputs::Int(0, 8),
        eval: Box::new(move |v| Py::Int(b * a.pow(v[0].int() as u32))),
    }
}

fn loop_count_divisible(rng: &mut ChaCha8Rng) -> Spec {
    let k = rng.random_range(2..=9);
    let a = rng.random_range(0..=2);
    Spec {
        key: format!("loop.count_divisible:k={k},a={a}"),
        params: "n",
        returns: format!("how many integers from {a} to n are divisible by {k}, computed with a loop"),
        body: format!(
            "    count = 0\n    for i in range({a}, n + 1):\n        if i % {k} == 0:\n            count += 1\n    return count"
        ),
        inputs: Inputs::Int(0, 40),
        eval: Box::new(move |v| Py::Int((a..=v[0].int()).filter(|i| i % k == 0).count() as i64)),
    }
}

fn loop_digit_sum(rng: &mut ChaCha8Rng) -> Spec {
    let b = rng.random_range(0..=9);
    Spec {
        key: format!("loop.digit_sum:b={b}"),
        params: "n",
        returns: format!("the sum of the digits of the non-negative integer n plus {b}"),
        body: format!(
            "    total = 0\n    while n > 0:\n        total += n % 10\n        n //= 10\n    return total + {b}"
        ),
        inputs: Inputs::Int(0, 9999),
        eval: Box::new(move |v| {
            let mut n = v[0].int();
            let mut total = 0;
            while n > 0 {
                total += n % 10;
                n /= 10;
            }
            Py::Int(total + b)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_reprs() {
        assert_eq!(Py::List(vec![1, -2]).repr(), "[1, -2]");
        assert_eq!(Py::List(vec![]).repr(), "[]");
        assert_eq!(Py::Str("ab".into()).repr(), "'ab'");
        assert_eq!(Py::Bool(false).repr(), "False");
    }

    #[test]
    fn keys_parse_back_from_ids() {
        assert_eq!(
            semantic_key("synthetic:arith.affine:a=3,b=5#12"),
            Some("arith.affine:a=3,b=5")
        );
        assert_eq!(semantic_key("HumanEval/1"), None);
    }
}
