//! The synthetic toy domain: split disjointness, task shape, reference solutions that pass
//! their own tests under real CPython, and the BPE tokenizer trained on its corpus.

use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Stdio};

use coupled_grpo::data::prompt::user_message;
use coupled_grpo::data::synthetic::{
    completion_text, prompt_text, semantic_key, split_of, train_tokenizer, Generator, Split,
};
use coupled_grpo::data::{Task, TaskSource};

fn keys(tasks: &[Task]) -> HashSet<String> {
    tasks
        .iter()
        .map(|t| semantic_key(&t.id).unwrap().to_string())
        .collect()
}

#[test]
fn splits_never_share_a_problem() {
    // Different seeds on each side: disjointness must not depend on them.
    let train: Vec<Task> = Generator::new(Split::Train, 1).take(3000).collect();
    let held: Vec<Task> = Generator::new(Split::HeldOut, 2).take(3000).collect();
    let (train_keys, held_keys) = (keys(&train), keys(&held));
    assert!(train_keys.is_disjoint(&held_keys));
    assert!(train_keys.iter().all(|k| split_of(k) == Split::Train));
    assert!(held_keys.iter().all(|k| split_of(k) == Split::HeldOut));
    let train_q: HashSet<&str> = train.iter().map(|t| t.question.as_str()).collect();
    assert!(held.iter().all(|t| !train_q.contains(t.question.as_str())));
    // Both splits cover most templates and hold hundreds of problems.
    let families = |ks: &HashSet<String>| {
        ks.iter()
            .map(|k| k.split(':').next().unwrap().to_string())
            .collect::<HashSet<_>>()
    };
    assert!(
        families(&train_keys).len() >= 28,
        "{:?}",
        families(&train_keys)
    );
    assert!(
        families(&held_keys).len() >= 20,
        "{:?}",
        families(&held_keys)
    );
    assert!(held_keys.len() >= 300, "{} held-out keys", held_keys.len());
}

#[test]
fn generation_is_seeded_and_distinct_sets_are_distinct() {
    let a: Vec<Task> = Generator::new(Split::Train, 7).take(50).collect();
    let b: Vec<Task> = Generator::new(Split::Train, 7).take(50).collect();
    let c: Vec<Task> = Generator::new(Split::Train, 8).take(50).collect();
    assert_eq!(a, b);
    assert_ne!(a, c);
    let held = Generator::new(Split::HeldOut, 0).distinct(200).unwrap();
    assert_eq!(keys(&held).len(), 200);
}

#[test]
fn tasks_have_the_acecoder_shape() {
    for task in Generator::new(Split::Train, 3).take(500) {
        let name = task.entry_point.as_deref().unwrap();
        assert_eq!(task.source, TaskSource::Synthetic);
        assert!(
            task.question.contains(&format!("`{name}(")),
            "{}",
            task.question
        );
        assert!((5..=10).contains(&task.tests.len()), "{:?}", task.tests);
        assert!(task
            .tests
            .iter()
            .all(|t| t.starts_with(&format!("assert {name}("))));
        let solution = task.reference_solution.as_deref().unwrap();
        assert!(solution.starts_with(&format!("def {name}(")));
        assert!(user_message(&task).ends_with(&format!("\nTest cases: {}", task.tests[0])));
        let completion = completion_text(&task).unwrap();
        assert!(completion.starts_with("```python\ndef ") && completion.ends_with("\n```\n"));
    }
}

/// Every reference solution passes every one of its tests under CPython: one interpreter
/// runs all tasks, each test in a fresh copy of the solution's namespace (as `python3 -c
/// "<code>\n<test>"` would).
#[test]
fn reference_solutions_pass_their_tests_in_python() {
    let mut tasks: Vec<Task> = Generator::new(Split::Train, 11).take(120).collect();
    tasks.extend(Generator::new(Split::HeldOut, 12).take(80));
    let payload: Vec<serde_json::Value> = tasks
        .iter()
        .map(|t| serde_json::json!({"id": t.id, "code": t.reference_solution, "tests": t.tests}))
        .collect();
    let script = r#"
import json, sys
failures = []
for task in json.load(sys.stdin):
    ns = {}
    exec(task["code"], ns)
    for test in task["tests"]:
        try:
            exec(test, dict(ns))
        except BaseException as e:
            failures.append([task["id"], test, repr(e)])
print(json.dumps(failures))
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("this test needs python3 on PATH");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&payload).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python3 failed");
    let failures: Vec<Vec<String>> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        failures.is_empty(),
        "{} failing tests, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let n_tests: usize = tasks.iter().map(|t| t.tests.len()).sum();
    assert!(n_tests >= 5 * tasks.len());
}

#[test]
fn trained_tokenizer_round_trips_and_keeps_special_tokens() {
    let tasks: Vec<Task> = Generator::new(Split::Train, 5).take(400).collect();
    let corpus = tasks.iter().map(|t| {
        format!(
            "{}{}<|im_end|>",
            prompt_text(t),
            completion_text(t).unwrap()
        )
    });
    let tok = train_tokenizer(corpus, 600).unwrap();
    assert_eq!(tok.vocab_size(), 600);
    let s = *tok.special();
    assert_eq!(
        (s.eos, s.im_start, s.im_end, s.mask, s.pad),
        (0, 1, 2, 3, 4)
    );

    let held = Generator::new(Split::HeldOut, 6).next().unwrap();
    let text = format!(
        "{}{}<|im_end|><|dlm_pad|><|mask|>",
        prompt_text(&held),
        completion_text(&held).unwrap()
    );
    let ids = tok.encode(&text).unwrap();
    assert_eq!(ids[0], s.im_start);
    assert_eq!(&ids[ids.len() - 2..], &[s.pad, s.mask]);
    assert_eq!(tok.decode(&ids, false).unwrap(), text);
    // Merges were learned: far fewer tokens than bytes.
    assert!(
        ids.len() * 2 < text.len(),
        "{} ids for {} bytes",
        ids.len(),
        text.len()
    );
    // Text the corpus never saw still encodes (byte fallback through the byte alphabet).
    let odd = "λ → ✓ \t{}";
    assert_eq!(tok.decode(&tok.encode(odd).unwrap(), true).unwrap(), odd);
}
