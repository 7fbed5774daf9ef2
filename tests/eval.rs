//! Evaluation and training runs with held-out evaluation: pass@k of known-good and known-bad
//! completions through the real wasm sandbox, a short coupled-GRPO run that writes a complete
//! run directory, and the `coupled-grpo eval` command.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use coupled_grpo::backend::{Cpu, CpuAutodiff};
use coupled_grpo::data::synthetic::{completion_text, Generator, Split};
use coupled_grpo::data::{self, OnError};
use coupled_grpo::eval::{EvalConfig, Evaluator, PromptStyle};
use coupled_grpo::grpo::{run_with_eval, RunOptions, RunSummary, TrainConfig, Trainer};
use coupled_grpo::model::{init_directory, load_pretrained, ModelConfig};
use coupled_grpo::rollout::RolloutConfig;
use coupled_grpo::sandbox::{Limits, Pool, WasmConfig, WasmExecutor};

fn evaluator() -> Evaluator {
    let executor = Arc::new(WasmExecutor::new(WasmConfig::default()).expect("wasm executor"));
    Evaluator::new(
        Pool::new(executor, 2),
        Limits {
            test_timeout: std::time::Duration::from_secs(2),
            ..Limits::default()
        },
    )
}

/// A path in this repository.
fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The embedded config of the `acecoder_rl` example.
fn acecoder_rl_toml() -> String {
    std::fs::read_to_string(repo("examples/configs/acecoder_rl.toml")).unwrap()
}

fn tiny_dir(tmp: &Path) -> PathBuf {
    let config = ModelConfig::preset("tiny").unwrap();
    init_directory::<Cpu>(&config, tmp.join("tiny"), None, 5, &Default::default()).unwrap()
}

fn greedy(k: usize, steps: usize) -> EvalConfig {
    EvalConfig {
        rollout: RolloutConfig {
            max_new_tokens: k,
            steps,
            temperature: 0.0,
            top_p: None,
            truncate_text: false,
            max_prompt_length: 96,
            ..RolloutConfig::default()
        },
        ..EvalConfig::default()
    }
}

#[test]
fn pass_at_k_of_known_completions_through_the_sandbox() {
    let tasks = Generator::new(Split::Train, 3).distinct(3).unwrap();
    let right = |i: usize| completion_text(&tasks[i]).unwrap();
    // Well formatted but wrong: the right signature returning None (no expected value is None).
    let wrong = |i: usize| {
        let code = tasks[i].reference_solution.as_deref().unwrap();
        let def = code.lines().next().unwrap();
        format!("```python\n{def}\n    return None\n```\n")
    };
    let completions = vec![
        right(0),
        wrong(0),
        "no code here".to_string(),
        wrong(1),
        right(2),
        right(2),
    ];
    let config = EvalConfig {
        samples_per_task: 2,
        ks: vec![1, 2],
        ..EvalConfig::default()
    };
    let report = evaluator().score(&tasks, &completions, &config).unwrap();
    let passed: Vec<usize> = report.per_task.iter().map(|t| t.passed).collect();
    assert_eq!(passed, vec![1, 0, 2], "{report:#?}");
    // Unbiased pass@k over (n, c) = (2, 1), (2, 0), (2, 2).
    assert!((report.pass_at_k["pass@1"] - 0.5).abs() < 1e-12);
    assert!((report.pass_at_k["pass@2"] - 2.0 / 3.0).abs() < 1e-12);
    // Only the prose answer lacks a python block.
    assert!((report.format_ok - 5.0 / 6.0).abs() < 1e-12);
    assert_eq!(report.per_task[1].pass_rate, 0.0);

    // A count that does not match the tasks is a typed error, not a silent zero.
    let err = evaluator()
        .score(&tasks, &completions[..5], &config)
        .unwrap_err();
    assert!(err.to_string().contains("completions"), "{err}");
}

#[test]
fn benchmark_style_runs_humaneval_bodies_after_the_prompt() {
    let path = repo("assets/data/humaneval/HumanEval.jsonl.gz");
    let tasks: Vec<_> = data::humaneval::load(&path, OnError::Fail)
        .unwrap()
        .rows
        .into_iter()
        .take(2)
        .collect();
    // The canonical bodies, as a model would write them after the prefill; then a wrong one.
    let body = |i: usize| {
        let t = &tasks[i];
        let full = t.reference_solution.as_deref().unwrap();
        format!("\n{}```\n", &full[t.question.len()..])
    };
    let completions = vec![body(0), "\n    return None\n```".to_string()];
    let config = EvalConfig {
        prompt_style: PromptStyle::Benchmark,
        ..EvalConfig::default()
    };
    let report = evaluator().score(&tasks, &completions, &config).unwrap();
    let passed: Vec<usize> = report.per_task.iter().map(|t| t.passed).collect();
    assert_eq!(passed, vec![1, 0], "{report:#?}");
    assert!((report.pass_at_1() - 0.5).abs() < 1e-12);
    let _ = body(1);
}

#[test]
fn short_run_writes_a_complete_run_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_dir(tmp.path());
    let out = tmp.path().join("run");
    let text = acecoder_rl_toml();
    let overrides: Vec<String> = vec![
        format!("model.path={:?}", model.display().to_string()),
        "data.limit=8".into(),
        "rollout.max_new_tokens=16".into(),
        "rollout.steps=8".into(),
        "rollout.num_completions=2".into(),
        "rollout.max_prompt_length=96".into(),
        "grpo.prompts_per_step=2".into(),
        "grpo.max_steps=2".into(),
        "logging.progress=false".into(),
    ];
    let config = TrainConfig::from_toml_str(&text, &overrides, None).unwrap();
    let tasks = coupled_grpo::grpo::trainer::load_tasks(&config).unwrap();
    assert_eq!(tasks.len(), 8);
    assert!(tasks.iter().all(|t| t.id.starts_with("synthetic:")));
    let mut trainer =
        Trainer::<CpuAutodiff>::with_tasks(config, tasks, Default::default()).unwrap();
    let options = RunOptions {
        max_steps: 2,
        eval_every: 1,
        eval_tasks: Generator::new(Split::HeldOut, 0).distinct(3).unwrap(),
        eval: greedy(16, 8),
        progress: false,
        save_checkpoint: true,
    };
    let summary = run_with_eval(&mut trainer, &evaluator(), &options, &out).unwrap();
    assert_eq!(summary.steps, 2);
    assert_eq!(summary.estimator, "coupled");
    assert_eq!(summary.rewards.len(), 2);
    // Before, after round 1, and after the last round.
    let steps: Vec<u64> = summary.evals.iter().map(|e| e.step).collect();
    assert_eq!(steps, vec![0, 1, 2]);
    assert!(summary.rollout_forward_passes_per_step > 0.0);

    // compare_estimators reuses finished runs through this reader.
    let loaded = RunSummary::load(&out).unwrap();
    assert_eq!(loaded.steps, 2);
    assert_eq!(loaded.rewards, summary.rewards);
    assert_eq!(loaded.evals.len(), 3);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    for key in [
        "pass_at_1_before",
        "pass_at_1_after",
        "steps",
        "estimator",
        "seed",
    ] {
        assert!(json.get(key).is_some(), "summary.json lacks {key}");
    }
    let lines = |f: &str| {
        std::fs::read_to_string(out.join(f))
            .unwrap()
            .lines()
            .count()
    };
    assert_eq!(lines("metrics.jsonl"), 2);
    assert_eq!(lines("evals.jsonl"), 3);
    let svg = std::fs::read_to_string(out.join("curves.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("pass@1"));
    assert!(out.join("config.resolved.toml").exists());
    // The final checkpoint is a loadable HF directory.
    load_pretrained::<Cpu>(out.join("checkpoints/step-2"), &Default::default()).unwrap();
}

#[test]
fn eval_command_reports_pass_at_k_and_rejects_bad_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_dir(tmp.path());
    let model = model.to_str().unwrap();
    let report = tmp.path().join("report.json");
    let bin = env!("CARGO_BIN_EXE_coupled-grpo");
    let o = Command::new(bin)
        .args([
            "eval",
            "--model",
            model,
            "--bench",
            "mbpp",
            "--limit",
            "2",
            "--max-new-tokens",
            "8",
            "--max-prompt-length",
            "64",
            "--workers",
            "2",
            "--out",
        ])
        .arg(&report)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("pass@1: "), "{stdout}");
    assert!(stdout.contains("local AR-ness@1..9"), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(json["tasks"], 2);
    assert_eq!(json["per_task"][0]["id"], "Mbpp/11");

    let fail = |args: &[&str]| {
        let o = Command::new(bin).args(args).output().unwrap();
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let err = fail(&["eval", "--model", model, "--bench", "mbpp", "--n", "4"]);
    assert!(err.contains("temperature"), "{err}");
    let err = fail(&[
        "eval",
        "--model",
        model,
        "--bench",
        "mbpp",
        "--timeout-s=-1",
    ]);
    assert!(err.contains("--timeout-s"), "{err}");
    let err = fail(&["eval", "--model", "/nonexistent", "--bench", "mbpp"]);
    assert!(err.contains("/nonexistent"), "{err}");
}

/// The embedded default of `acecoder_rl` (assets/tiny-coder) loads with its tokenizer and,
/// decoded greedily as the example evaluates it, answers held-out toy tasks in the rewarded
/// format and passes some of their tests: the starting point RL needs.
#[test]
fn embedded_tiny_coder_answers_held_out_tasks() {
    let dir = repo("assets/tiny-coder");
    let model = load_pretrained::<Cpu>(&dir, &Default::default()).unwrap();
    let tokenizer = coupled_grpo::model::load_tokenizer(&dir, model.config()).unwrap();
    assert_eq!(tokenizer.special().mask, 3);
    let tasks = Generator::new(Split::HeldOut, 0).distinct(24).unwrap();
    let config = TrainConfig::from_toml_str(&acecoder_rl_toml(), &[], None).unwrap();
    let eval = EvalConfig {
        rollout: RolloutConfig {
            temperature: 0.0,
            top_p: None,
            truncate_text: false,
            ..config.rollout.clone()
        },
        ..EvalConfig::default()
    };
    let report = evaluator()
        .evaluate(&model, &tokenizer, &tasks, &eval)
        .unwrap();
    assert!(report.format_ok >= 0.9, "{report:#?}");
    assert!(report.mean_pass_rate > 0.05, "{report:#?}");
}
