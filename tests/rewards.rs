//! Rewards and task data end to end, through the real sandbox executors:
//! every MBPP and HumanEval reference solution scores a pass rate of 1 under both executors
//! (and another task's solution scores below 1), the released reward cases, and the `reward`
//! command.
//!
//! The process executor needs root (namespaces, uid switch) and python3, as CI has; the wasm
//! executor builds its guest on first use.

use std::io::Write;
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use coupled_grpo::data::{humaneval, mbpp, OnError, Task};
use coupled_grpo::reward::{
    format_reward, CodeReward, CombinedReward, Evaluation, FormatReward, RewardFn, RewardWeights,
    SyntaxChecker,
};
use coupled_grpo::sandbox::{
    Executor, Limits, Outcome, Pool, ProcessConfig, ProcessExecutor, Program,
};
use coupled_grpo::Error;

/// The executors under test, each built once per test binary and shared by the tests.
fn executors() -> Vec<Arc<dyn Executor>> {
    static PROCESS: OnceLock<Arc<dyn Executor>> = OnceLock::new();
    let mut out = vec![PROCESS
        .get_or_init(|| {
            Arc::new(ProcessExecutor::new(ProcessConfig::default()).expect("process executor"))
        })
        .clone()];
    #[cfg(feature = "wasm")]
    {
        use coupled_grpo::sandbox::{WasmConfig, WasmExecutor};
        static WASM: OnceLock<Arc<dyn Executor>> = OnceLock::new();
        out.push(
            WASM.get_or_init(|| {
                Arc::new(WasmExecutor::new(WasmConfig::default()).expect("wasm executor"))
            })
            .clone(),
        );
    }
    out
}

fn pool(executor: &Arc<dyn Executor>) -> Pool {
    Pool::new(executor.clone(), 0)
}

/// A completion in the released shape around `code`.
fn fenced(code: &str) -> String {
    format!(
        "Here is the solution.\n```python\n{}\n```\n",
        code.trim_end()
    )
}

/// Scores each task's reference solution against its own tests and against the next task's
/// reference solution; returns (own evaluations, cross evaluations).
fn score_references(reward: &CombinedReward, tasks: &[Task]) -> (Vec<Evaluation>, Vec<Evaluation>) {
    let refs: Vec<String> = tasks
        .iter()
        .map(|t| fenced(t.reference_solution.as_ref().expect("reference solution")))
        .collect();
    let task_refs: Vec<&Task> = tasks.iter().collect();
    let own = reward.evaluate_tasks(&refs, &task_refs).expect("sandbox");
    let shifted: Vec<String> = (0..refs.len())
        .map(|i| refs[(i + 1) % refs.len()].clone())
        .collect();
    let cross = reward
        .evaluate_tasks(&shifted, &task_refs)
        .expect("sandbox");
    (own, cross)
}

fn check_references(name: &str, tasks: &[Task]) {
    // What is checked is correctness, not speed: Mbpp/123's second assert (amicable numbers
    // below 9999) takes 4-7 s of native CPython, over the default 5 s per test on a busy
    // machine, and wasm CPython is about 3x slower.
    let limits = Limits {
        test_timeout: Duration::from_secs(60),
        ..Limits::default()
    };
    for ex in executors() {
        let reward = CombinedReward::new(pool(&ex), limits.clone(), RewardWeights::default());
        let start = std::time::Instant::now();
        let (own, cross) = score_references(&reward, tasks);
        let failures: Vec<String> = tasks
            .iter()
            .zip(&own)
            .filter(|(_, e)| e.format != 1.0 || e.code != Some(1.0))
            .map(|(t, e)| {
                format!(
                    "{}: format {} code {:?} {:?}",
                    t.id, e.format, e.code, e.tests
                )
            })
            .collect();
        assert!(
            failures.is_empty(),
            "{name} under {}: {} reference solutions below 1:\n{}",
            ex.name(),
            failures.len(),
            failures.join("\n")
        );
        assert!(own.iter().all(|e| RewardWeights::default().total(e) == 2.5));
        let cross_full: Vec<&str> = tasks
            .iter()
            .zip(&cross)
            .filter(|(_, e)| e.code.unwrap() >= 1.0)
            .map(|(t, _)| t.id.as_str())
            .collect();
        assert!(
            cross_full.is_empty(),
            "{name} under {}: another task's solution passes every test of {cross_full:?}",
            ex.name()
        );
        let tests: usize = own.iter().chain(&cross).map(|e| e.tests.len()).sum();
        eprintln!(
            "{name} under {}: {} tasks, {tests} test runs in {:.1} s",
            ex.name(),
            tasks.len(),
            start.elapsed().as_secs_f64()
        );
    }
}

#[test]
fn all_mbpp_reference_solutions_pass_under_both_executors() {
    let tasks = mbpp::load(&mbpp::vendored_path(), &Default::default()).unwrap();
    assert_eq!(tasks.rows.len(), 974);
    check_references("MBPP", &tasks.rows);
}

#[test]
fn all_humaneval_canonical_solutions_pass_under_both_executors() {
    let tasks = humaneval::load(&humaneval::vendored_path(), OnError::Fail).unwrap();
    assert_eq!(tasks.rows.len(), 164);
    check_references("HumanEval", &tasks.rows);
}

fn task(tests: &[&str]) -> Task {
    Task {
        id: "t".into(),
        question: "Sum a list.".into(),
        tests: tests.iter().map(|s| s.to_string()).collect(),
        entry_point: None,
        reference_solution: None,
        source: coupled_grpo::data::TaskSource::Custom,
    }
}

#[test]
fn released_reward_cases() {
    // tests/test_code_reward.py of the release: (content, tests, code reward, format reward).
    let cases: [(&str, &[&str], f32, f32); 4] = [
        (
            "Let me implement a function to calculate the sum of a list.\n```python\ndef sum_list(numbers):\n    return sum(numbers)\n```\n",
            &["assert sum_list([1, 2, 3]) == 6", "assert sum_list([]) == 0", "assert sum_list([-1, 1]) == 0", "assert sum_list([5]) == 5"],
            1.0,
            1.0,
        ),
        (
            "Below is the implementation of the function to calculate the sum of a list.\n```python\ndef sum_list(numbers)\n    return sum(numbers)  # Missing colon\n```\n",
            &["assert sum_list([1, 2, 3]) == 6", "assert sum_list([]) == 0"],
            0.0,
            0.5,
        ),
        (
            "Let me implement a function to calculate the sum of a list.\n```python\ndef sum_list(numbers):\n    return sum(numbers)\n\n",
            &["assert sum_list([1, 2, 3]) == 6", "assert sum_list([]) == 0"],
            0.0,
            0.0,
        ),
        (
            "Let me implement a function to calculate the sum of a list.\n```python\n# First attempt\ndef sum_list(numbers):\n    return 0\n```\n```python\n# Final solution\ndef sum_list(numbers):\n    return sum(numbers)\n```\n",
            &["assert sum_list([1, 2, 3]) == 6", "assert sum_list([]) == 0", "assert sum_list([-1, 1]) == 0", "assert sum_list([5]) == 5"],
            0.0,
            0.0,
        ),
    ];
    for ex in executors() {
        let p = pool(&ex);
        let limits = Limits::default();
        let completions: Vec<String> = cases.iter().map(|c| c.0.to_string()).collect();
        let tasks: Vec<Task> = cases.iter().map(|c| task(c.1)).collect();
        let task_refs: Vec<&Task> = tasks.iter().collect();
        let code = CodeReward::new(p.clone(), limits.clone());
        let format = FormatReward::new(SyntaxChecker::new(p.clone(), limits.clone()));
        let combined = CombinedReward::new(p.clone(), limits.clone(), RewardWeights::default());
        let code_scores = code.score(&completions, &task_refs).unwrap();
        let format_scores = format.score(&completions, &task_refs).unwrap();
        let totals = combined.score(&completions, &task_refs).unwrap();
        for (i, c) in cases.iter().enumerate() {
            assert_eq!(code_scores[i], Some(c.2), "{} case {i} code", ex.name());
            assert_eq!(format_scores[i], Some(c.3), "{} case {i} format", ex.name());
            assert_eq!(
                totals[i],
                Some(2.0 * c.2 + 0.5 * c.3),
                "{} case {i} total",
                ex.name()
            );
        }
        let evals = combined.evaluate_tasks(&completions, &task_refs).unwrap();
        assert!(evals[1]
            .syntax_error
            .as_deref()
            .is_some_and(|d| d.starts_with("SyntaxError")));
        assert!(
            evals[1].tests.is_empty(),
            "tests run only when the format is 1"
        );

        // ast.parse semantics, not compile(): module-level `return` parses; leading
        // indentation is stripped before parsing (but kept for the tests, as released).
        let checker = SyntaxChecker::new(p.clone(), limits.clone());
        assert_eq!(
            format_reward("```python\nreturn 1\n```\n", &checker).unwrap(),
            1.0
        );
        assert_eq!(
            format_reward("```python\n    x = 1\n```\n", &checker).unwrap(),
            1.0
        );
        assert_eq!(
            format_reward("```python\nx = (1,\n```\n", &checker).unwrap(),
            0.5
        );
        assert_eq!(
            format_reward("```python\nx = '\u{0}'\u{0}\n```\n", &checker).unwrap(),
            0.5
        );
        assert_eq!(
            format_reward("```python\ns = 'é ✓ \\' \"'\n```\n", &checker).unwrap(),
            1.0
        );
        assert_eq!(format_reward("no code", &checker).unwrap(), 0.0);
        // Indented code parses after strip() but fails every test when run unstripped.
        let indented = code
            .score(
                &["```python\n  def f():\n    return 1\n```\n".to_string()],
                &[&task(&["assert f() == 1"])],
            )
            .unwrap();
        assert_eq!(indented, vec![Some(0.0)]);
        // No tests: the code reward does not apply; the total is the format part alone.
        let none = combined
            .score(&[completions[0].clone()], &[&task(&[])])
            .unwrap();
        assert_eq!(none, vec![Some(0.5)]);
        assert_eq!(
            code.score(&[completions[0].clone()], &[&task(&[])])
                .unwrap(),
            vec![None]
        );
    }
}

#[test]
fn a_timeout_fails_only_its_test() {
    for ex in executors() {
        let limits = Limits {
            test_timeout: Duration::from_secs(1),
            ..Limits::default()
        };
        let code = CodeReward::new(pool(&ex), limits);
        let completion = fenced("def f(x):\n    while x < 0:\n        pass\n    return x");
        let t = task(&["assert f(1) == 1", "assert f(-1) == -1", "assert f(2) == 2"]);
        let eval = code.evaluate_tasks(&[completion], &[&t]).unwrap().remove(0);
        assert_eq!(eval.tests[1], Outcome::Timeout, "{}", ex.name());
        assert_eq!(eval.code, Some(2.0 / 3.0), "{}", ex.name());
    }
}

/// An executor whose sandbox is broken: every call fails.
struct Broken;

impl Executor for Broken {
    fn name(&self) -> &'static str {
        "broken"
    }
    fn execute(&self, _: &Program, _: &Limits) -> coupled_grpo::Result<Vec<Outcome>> {
        Err(Error::Sandbox {
            executor: "broken".into(),
            message: "guest did not start".into(),
        })
    }
}

#[test]
fn a_sandbox_failure_is_an_error_not_a_zero_reward() {
    let p = Pool::new(Arc::new(Broken), 2);
    let reward = CombinedReward::new(p.clone(), Limits::default(), RewardWeights::default());
    let t = task(&["assert True"]);
    let well_formed = fenced("x = 1");
    let err = reward.score(&[well_formed], &[&t]).unwrap_err();
    assert!(matches!(err, Error::Sandbox { .. }), "{err}");
    // Without the shape nothing needs the sandbox, so the score stands.
    assert_eq!(
        reward.score(&["plain text".into()], &[&t]).unwrap(),
        vec![Some(0.0)]
    );
    assert!(
        reward.score(&["a".into(), "b".into()], &[&t]).is_err(),
        "lengths must match"
    );
}

fn run_cli(input: &str, executor: &str) -> (std::process::Output, Vec<serde_json::Value>) {
    let dir = tempfile::tempdir().unwrap();
    let inp = dir.path().join("in.jsonl");
    let out = dir.path().join("out.jsonl");
    std::fs::File::create(&inp)
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_coupled-grpo"))
        .args(["reward", "--input"])
        .arg(&inp)
        .arg("--output")
        .arg(&out)
        .args(["--executor", executor, "--workers", "2", "--timeout-s", "2"])
        .output()
        .unwrap();
    let lines = std::fs::read_to_string(&out)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (output, lines)
}

#[test]
fn reward_command_keeps_every_line_in_order() {
    let good = serde_json::json!({
        "id": "good",
        "completion": "Sure.\n```python\ndef add(a, b):\n    return a + b\n```\n",
        "test_cases": ["assert add(1, 2) == 3", "assert add(1, 1) == 3"],
    });
    let unformatted = serde_json::json!({
        "id": "plain", "completion": "def add(a, b): return a + b", "test_cases": ["assert add(1, 2) == 3"],
    });
    let input = format!(
        "{good}\n{{not json\n{}\n{unformatted}\n\n",
        r#"{"id": "nocomp", "test_cases": ["assert 1"]}"#
    );
    let mut kinds = vec!["process"];
    if cfg!(feature = "wasm") {
        kinds.push("wasm");
    }
    for kind in kinds {
        let (output, lines) = run_cli(&input, kind);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{kind}: {stderr}");
        assert_eq!(lines.len(), 5, "{kind}: one output line per input line");
        assert_eq!(lines[0]["id"], "good");
        assert_eq!(lines[0]["format_reward"], 1.0);
        assert_eq!(lines[0]["code_reward"], 0.5);
        assert_eq!(lines[0]["reward"], 1.5);
        assert_eq!(
            lines[0]["tests"][0],
            serde_json::json!({"outcome": "passed"})
        );
        assert_eq!(lines[0]["tests"][1]["outcome"], "failed");
        assert!(lines[0]["tests"][1]["detail"]
            .as_str()
            .unwrap()
            .starts_with("AssertionError"));
        assert!(lines[1]["error"]
            .as_str()
            .unwrap()
            .starts_with("line 2: invalid JSON"));
        assert_eq!(lines[2]["id"], "nocomp");
        assert_eq!(lines[2]["error"], "line 3: field `completion` is missing");
        assert_eq!(lines[3]["reward"], 0.0);
        assert_eq!(lines[3]["tests"], serde_json::json!([]));
        assert!(lines[4]["error"].as_str().unwrap().starts_with("line 5:"));
    }
    // A run that cannot start fails and says why.
    let (output, _) = run_cli("", "nonsense");
    assert!(!output.status.success());
}
