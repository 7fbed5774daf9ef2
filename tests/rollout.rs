//! Rollout engine end to end on a tiny random model: padding invariance, determinism, the
//! schedule seen through traces, block and threshold decoding, `origin`, the `generate` CLI,
//! and (when PyTorch is installed) token parity with the PyTorch reference sampler.

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::tensor::DType;
use coupled_grpo::backend::Cpu;
use coupled_grpo::model::{
    self, byte_level_tokenizer, chat_prompt, DiffusionLm, ModelConfig, SaveDtype, Tokenizer,
};
use coupled_grpo::rollout::{self, decode, generate, schedule, Alg, RolloutConfig};

/// The `tiny` preset with a wide weight init, so that predictions are peaked and confidences
/// of different positions are far apart (a 0.02 init gives near-uniform, near-tied scores).
fn tiny_config() -> ModelConfig {
    let mut c = ModelConfig::preset("tiny").unwrap();
    c.initializer_range = 0.3;
    c
}

fn tiny_model(seed: u64) -> (DiffusionLm<Cpu>, Tokenizer) {
    let model =
        DiffusionLm::<Cpu>::init_with(&tiny_config(), &Default::default(), seed, DType::F32);
    (model, byte_level_tokenizer().unwrap())
}

fn greedy(alg: Alg, k: usize) -> RolloutConfig {
    RolloutConfig {
        max_new_tokens: k,
        steps: k,
        temperature: 0.0,
        top_p: None,
        alg,
        num_completions: 1,
        ..RolloutConfig::default()
    }
}

fn prompts() -> Vec<String> {
    vec![
        chat_prompt("You are a helpful assistant.", "Write add(a, b).", None),
        chat_prompt(
            "You are a helpful assistant.",
            "Write a function that returns the n-th Fibonacci number, iteratively.",
            None,
        ),
        "x".into(),
    ]
}

#[test]
fn padded_batch_gives_the_same_completions_as_single_prompts() {
    let (model, tok) = tiny_model(1);
    let prompts = prompts();
    for alg in [Alg::Entropy, Alg::MaskgitPlus, Alg::TopkMargin] {
        let config = RolloutConfig {
            num_completions: 2,
            ..greedy(alg, 24)
        };
        let batch = generate(&model, &tok, &prompts, &config).unwrap();
        assert_eq!(batch.completion_ids.len(), 6);
        assert_eq!(batch.group, vec![0, 0, 1, 1, 2, 2]);
        // Prompts of different lengths really were padded.
        assert!(
            batch.prompt_mask[0].contains(&0)
                && batch.prompt_mask[4].iter().filter(|&&m| m == 1).count() == 1
        );
        for (i, p) in prompts.iter().enumerate() {
            let alone = generate(&model, &tok, std::slice::from_ref(p), &greedy(alg, 24)).unwrap();
            assert!(!alone.prompt_mask[0].contains(&0));
            for g in 0..2 {
                assert_eq!(
                    batch.completion_ids[2 * i + g],
                    alone.completion_ids[0],
                    "{alg}: prompt {i} sample {g} differs when padded"
                );
            }
        }
        assert!(batch
            .completion_ids
            .iter()
            .flatten()
            .all(|&t| t != tok.special().mask));
    }
}

#[test]
fn same_seed_same_rollout_and_groups_differ() {
    let (model, tok) = tiny_model(2);
    let config = RolloutConfig {
        max_new_tokens: 16,
        steps: 16,
        num_completions: 3,
        seed: 7,
        ..RolloutConfig::default()
    };
    let prompts = &prompts()[..2];
    let a = generate(&model, &tok, prompts, &config).unwrap();
    let b = generate(&model, &tok, prompts, &config).unwrap();
    assert_eq!(a, b);
    let c = generate(
        &model,
        &tok,
        prompts,
        &RolloutConfig {
            seed: 8,
            ..config.clone()
        },
    )
    .unwrap();
    assert_ne!(a.completion_ids, c.completion_ids);
    // The G samples of one prompt are different draws.
    assert_ne!(a.completion_ids[0], a.completion_ids[1]);
    assert_ne!(a.completion_ids[1], a.completion_ids[2]);
    // Chunking keeps each row's random stream.
    let chunked = generate(
        &model,
        &tok,
        prompts,
        &RolloutConfig {
            chunk_rows: Some(2),
            ..config
        },
    )
    .unwrap();
    assert_eq!(chunked.texts.len(), 6);
    assert_eq!(chunked.forward_passes, 3 * a.forward_passes);
}

#[test]
fn traces_follow_dreams_schedule() {
    let (model, tok) = tiny_model(3);
    for (k, steps) in [(32, 32), (32, 16), (30, 7)] {
        let config = RolloutConfig {
            max_new_tokens: k,
            steps,
            record_trace: true,
            num_completions: 2,
            ..RolloutConfig::default()
        };
        let batch = generate(&model, &tok, &prompts()[..2], &config).unwrap();
        let want = schedule::transfer_schedule(k, steps, config.eps);
        let traces = batch.traces.as_ref().unwrap();
        assert_eq!(traces.len(), 4);
        for t in traces {
            assert_eq!(t.revealed_per_step(), want);
            let mut all = t.flat_order();
            all.sort_unstable();
            assert_eq!(all, (0..k).collect::<Vec<_>>());
            let (local, global) = (t.local_ar(), t.global_ar());
            assert_eq!((local.len(), global.len()), (9, 4));
            assert!(
                local.windows(2).all(|w| w[0] >= w[1]) && global.windows(2).all(|w| w[0] <= w[1])
            );
        }
        // A step that reveals nothing (the first at 1 token/step) costs no forward pass.
        assert_eq!(
            batch.forward_passes,
            want.iter().filter(|&&n| n > 0).count()
        );
    }
}

#[test]
fn top_k_is_per_row_by_confidence() {
    // Each row reveals exactly the schedule's count at every step, whatever its confidences
    // (a flat top-k over the batch would give confident rows more and others fewer), and
    // maskgit_plus records token probabilities.
    let (model, tok) = tiny_model(4);
    let config = RolloutConfig {
        record_trace: true,
        num_completions: 2,
        ..greedy(Alg::MaskgitPlus, 16)
    };
    let batch = generate(&model, &tok, &prompts(), &config).unwrap();
    for t in batch.traces.unwrap() {
        assert_eq!(
            t.revealed_per_step(),
            schedule::transfer_schedule(16, 16, 1e-3)
        );
        assert!(t.confidence.iter().flatten().all(|&c| c > 0.0 && c <= 1.0));
    }
}

#[test]
fn block_mode_decodes_blocks_left_to_right() {
    let (model, tok) = tiny_model(5);
    let config = RolloutConfig {
        max_new_tokens: 32,
        steps: 32,
        block_length: Some(8),
        record_trace: true,
        num_completions: 2,
        ..RolloutConfig::default()
    };
    let batch = generate(&model, &tok, &prompts()[..2], &config).unwrap();
    let per_block = schedule::transfer_schedule(8, 8, 1e-3);
    assert_eq!(
        batch.forward_passes,
        4 * per_block.iter().filter(|&&n| n > 0).count()
    );
    for t in batch.traces.unwrap() {
        let order = t.flat_order();
        let blocks: Vec<usize> = order.iter().map(|p| p / 8).collect();
        assert!(
            blocks.windows(2).all(|w| w[0] <= w[1]),
            "blocks out of order: {order:?}"
        );
        assert_eq!(t.revealed_per_step(), per_block.repeat(4));
    }
    // One block of the whole length is Dream's full-diffusion decoding.
    let full = greedy(Alg::Entropy, 16);
    let one_block = RolloutConfig {
        block_length: Some(16),
        ..full.clone()
    };
    assert_eq!(
        generate(&model, &tok, &prompts(), &full).unwrap(),
        generate(&model, &tok, &prompts(), &one_block).unwrap()
    );
}

#[test]
fn threshold_decoding_saves_steps_and_never_exceeds_the_schedule() {
    let (model, tok) = tiny_model(6);
    let base = RolloutConfig {
        record_trace: true,
        num_completions: 2,
        ..greedy(Alg::MaskgitPlus, 32)
    };
    // Every probability exceeds 0: one forward pass reveals everything.
    let all = RolloutConfig {
        confidence_threshold: Some(0.0),
        ..base.clone()
    };
    let b = generate(&model, &tok, &prompts(), &all).unwrap();
    assert_eq!(b.forward_passes, 1);
    assert_eq!(b.traces.as_ref().unwrap()[0].revealed_per_step(), vec![32]);
    // An unreachable threshold falls back to the schedule (at least one token per step).
    let never = RolloutConfig {
        confidence_threshold: Some(1.5),
        ..base.clone()
    };
    let b = generate(&model, &tok, &prompts(), &never).unwrap();
    assert!(b.forward_passes <= 32);
    for t in b.traces.as_ref().unwrap() {
        assert!(t.revealed_per_step().iter().all(|&n| n >= 1));
        assert_eq!(t.revealed_per_step().iter().sum::<usize>(), 32);
    }
    // In between: rows differ in how many they reveal; all complete, within the step budget.
    let mid = RolloutConfig {
        confidence_threshold: Some(0.5),
        block_length: Some(16),
        ..base
    };
    let b = generate(&model, &tok, &prompts(), &mid).unwrap();
    assert!(b.forward_passes <= 32);
    for (t, ids) in b.traces.as_ref().unwrap().iter().zip(&b.completion_ids) {
        assert_eq!(t.flat_order().len(), 32);
        assert!(ids.iter().all(|&x| x != tok.special().mask));
        // Blocks still go left to right.
        let blocks: Vec<usize> = t.flat_order().iter().map(|p| p / 16).collect();
        assert!(blocks.windows(2).all(|w| w[0] <= w[1]));
    }
}

#[test]
fn origin_and_alg_temp_complete_and_are_deterministic() {
    let (model, tok) = tiny_model(7);
    for config in [
        RolloutConfig {
            alg: Alg::Origin,
            max_new_tokens: 24,
            steps: 12,
            record_trace: true,
            num_completions: 2,
            ..RolloutConfig::default()
        },
        RolloutConfig {
            alg_temp: 0.5,
            max_new_tokens: 24,
            steps: 12,
            record_trace: true,
            num_completions: 2,
            ..RolloutConfig::default()
        },
    ] {
        let a = generate(&model, &tok, &prompts()[..2], &config).unwrap();
        assert_eq!(a, generate(&model, &tok, &prompts()[..2], &config).unwrap());
        assert!(a.forward_passes <= 12);
        for (t, ids) in a.traces.as_ref().unwrap().iter().zip(&a.completion_ids) {
            assert_eq!(t.flat_order().len(), 24);
            assert!(ids.iter().all(|&x| x != tok.special().mask));
        }
        if config.alg == Alg::Origin {
            // Independent coins: rows reveal different numbers per step.
            let counts: Vec<Vec<usize>> = a
                .traces
                .unwrap()
                .iter()
                .map(|t| t.revealed_per_step())
                .collect();
            assert!(counts.windows(2).any(|w| w[0] != w[1]), "{counts:?}");
        }
    }
}

#[test]
fn bad_inputs_are_typed_errors() {
    let (model, tok) = tiny_model(8);
    let e = generate(&model, &tok, &[String::new()], &greedy(Alg::Entropy, 4)).unwrap_err();
    assert!(e.to_string().contains("no tokens"), "{e}");
    let e = generate(&model, &tok, &[], &greedy(Alg::Entropy, 4)).unwrap_err();
    assert!(e.to_string().contains("prompts"), "{e}");
    // Right padding is rejected (row P−1 must be a real token).
    let e = decode(
        &model,
        &[vec![10, 4]],
        &[vec![1, 0]],
        3,
        &greedy(Alg::Entropy, 4),
    )
    .unwrap_err();
    assert!(e.to_string().contains("left-padded"), "{e}");
    let e = decode(
        &model,
        &[vec![10, 999]],
        &[vec![1, 1]],
        3,
        &greedy(Alg::Entropy, 4),
    )
    .unwrap_err();
    assert!(e.to_string().contains("vocabulary"), "{e}");
}

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_coupled-grpo"))
}

fn tiny_dir(dir: &Path) -> PathBuf {
    model::init_directory::<Cpu>(&tiny_config(), dir.join("m"), None, 11, &Default::default())
        .unwrap()
}

#[test]
fn cli_generate_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_dir(tmp.path());
    let tasks = tmp.path().join("tasks.jsonl");
    std::fs::write(
        &tasks,
        "{\"id\": \"a\", \"prompt\": \"Write add(a, b).\"}\n\n{\"id\": 7, \"prompt\": \"Reverse a string.\"}\n",
    )
    .unwrap();
    let trace = tmp.path().join("trace.jsonl");
    let out = Command::new(bin())
        .args(["generate", "--model"])
        .arg(&dir)
        .arg("--tasks")
        .arg(&tasks)
        .args([
            "--num-completions",
            "2",
            "--max-new-tokens",
            "16",
            "--steps",
            "8",
            "--json",
            "--seed",
            "3",
        ])
        .arg("--trace")
        .arg(&trace)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    let ids: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a", "a", "7", "7"]);
    assert_eq!(lines[1]["sample"], 1);
    assert_eq!(lines[0]["token_ids"].as_array().unwrap().len(), 16);
    assert!(lines[0]["completion"].is_string());

    let traces: Vec<serde_json::Value> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(traces.len(), 4);
    for t in &traces {
        let per_step: Vec<u64> = t["revealed_per_step"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(
            per_step,
            schedule::transfer_schedule(16, 8, 1e-3)
                .iter()
                .map(|&n| n as u64)
                .collect::<Vec<_>>()
        );
        assert_eq!(t["order"].as_array().unwrap().len(), 8);
        assert_eq!(t["local_ar"].as_array().unwrap().len(), 9);
        assert_eq!(t["global_ar"].as_array().unwrap().len(), 4);
    }

    // Same seed, plain output: same completions as text blocks.
    let out = Command::new(bin())
        .args(["generate", "--model"])
        .arg(&dir)
        .args([
            "--prompt",
            "hello",
            "--max-new-tokens",
            "8",
            "--temperature",
            "0",
            "--alg",
            "topk_margin",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("=== prompt [sample 0] ==="));

    // Data-set rows: AceCoder (training template), MBPP and HumanEval (evaluation templates).
    let ace = tmp.path().join("ace.jsonl");
    std::fs::write(
        &ace,
        "{\"id\": \"ace-1\", \"question\": \"Write f(x) returning x.\", \"test_cases\": [\"assert f(1) == 1\"]}\n",
    )
    .unwrap();
    let mbpp = tmp.path().join("mbpp.jsonl");
    let mbpp_rows = std::fs::read_to_string(coupled_grpo::data::mbpp::vendored_path()).unwrap();
    std::fs::write(
        &mbpp,
        mbpp_rows.lines().take(2).collect::<Vec<_>>().join("\n"),
    )
    .unwrap();
    let he = tmp.path().join("he.jsonl");
    let mut he_rows = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(
            std::fs::File::open(coupled_grpo::data::humaneval::vendored_path()).unwrap(),
        ),
        &mut he_rows,
    )
    .unwrap();
    std::fs::write(&he, he_rows.lines().next().unwrap()).unwrap();
    for (file, want) in [
        (&ace, vec!["ace-1"]),
        (&mbpp, vec!["Mbpp/1", "Mbpp/2"]),
        (&he, vec!["HumanEval/0"]),
    ] {
        let out = Command::new(bin())
            .args(["generate", "--model"])
            .arg(&dir)
            .arg("--tasks")
            .arg(file)
            .args(["--max-new-tokens", "8", "--steps", "4", "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ids: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(ids, want);
    }

    // Errors: unknown alg, incomplete model directory, malformed task line.
    let out = Command::new(bin())
        .args(["generate", "--model"])
        .arg(&dir)
        .args(["--prompt", "x", "--alg", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("entropy"));
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let out = Command::new(bin())
        .args(["generate", "--model"])
        .arg(&dir)
        .args(["--prompt", "x"])
        .output()
        .unwrap();
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("tokenizer.json")
    );
    std::fs::write(
        &tasks,
        "{\"id\": \"a\", \"prompt\": \"ok\"}\n{\"id\": \"b\"}\n",
    )
    .unwrap();
    let dir = tiny_dir(tmp.path());
    let out = Command::new(bin())
        .args(["generate", "--model"])
        .arg(&dir)
        .arg("--tasks")
        .arg(&tasks)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("tasks.jsonl:2") && err.contains("prompt"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// Cross-checks against PyTorch (skipped with a message when torch is not installed)
// ---------------------------------------------------------------------------------------

fn torch_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import torch, safetensors"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: python3 with torch + safetensors is not available");
    }
    ok
}

fn reference_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/reference_rollout.py")
}

#[test]
fn schedule_matches_torch_for_many_shapes() {
    if !torch_available() {
        return;
    }
    let code = r#"
import json, torch
out = {}
for n, steps in [(n, s) for n in (1, 7, 30, 64, 100, 128, 256, 300, 512) for s in (1, 2, 3, 7, 10, 16, 37, 64, 100, 128, 255, 256, 512, 1024)]:
    ts = torch.linspace(1, 1e-3, steps + 1)
    left, seq = n, []
    for i in range(steps):
        nm = torch.tensor(left) / 1
        k = int(nm * (1 - ts[i + 1] / ts[i])) if i < steps - 1 else int(nm)
        seq.append(k); left -= k
    out[f"{n}/{steps}"] = seq
print(json.dumps(out))
"#;
    let out = Command::new("python3").args(["-c", code]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want: std::collections::BTreeMap<String, Vec<usize>> =
        serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(want.len(), 9 * 14);
    for (key, seq) in want {
        let (n, steps) = key.split_once('/').unwrap();
        let got = schedule::transfer_schedule(n.parse().unwrap(), steps.parse().unwrap(), 1e-3);
        assert_eq!(got, seq, "{key}");
    }
}

#[test]
fn greedy_rollouts_match_the_pytorch_reference() {
    if !torch_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (lm, tok) = tiny_model(9);
    let dir = tmp.path().join("m");
    model::save_pretrained(&lm, &dir, SaveDtype::F32).unwrap();
    let prompts = prompts();
    let batch = tok.encode_prompts(&prompts, 200).unwrap();
    let spec = serde_json::json!({
        "input_ids": batch.ids, "attention_mask": batch.attention_mask, "mask_token_id": tok.special().mask,
    });
    let spec_path = tmp.path().join("prompts.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    for (alg, k, steps, top_p) in [
        (Alg::Entropy, 24, 24, None),
        (Alg::MaskgitPlus, 24, 12, None),
        (Alg::TopkMargin, 24, 24, None),
        (Alg::Entropy, 24, 8, Some(0.9)),
    ] {
        let config = RolloutConfig {
            steps,
            top_p,
            ..greedy(alg, k)
        };
        let ours = rollout::decode(
            &lm,
            &batch.ids,
            &batch.attention_mask,
            tok.special().mask,
            &config,
        )
        .unwrap();
        let mut cmd = Command::new("python3");
        cmd.arg(reference_script())
            .arg("--model")
            .arg(&dir)
            .arg("--prompts")
            .arg(&spec_path)
            .args([
                "--max-new-tokens",
                &k.to_string(),
                "--steps",
                &steps.to_string(),
            ])
            .args([
                "--temperature",
                "0",
                "--alg",
                alg.name(),
                "--threads",
                "1",
                "--ban-mask-token",
            ]);
        if let Some(p) = top_p {
            cmd.args(["--top-p", &p.to_string()]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let reference: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let theirs: Vec<Vec<u32>> =
            serde_json::from_value(reference["completions"].clone()).unwrap();
        assert_eq!(
            ours.completion_ids, theirs,
            "{alg} {k}/{steps} top_p {top_p:?}"
        );
        let skipped = schedule::transfer_schedule(k, steps, 1e-3)
            .iter()
            .filter(|&&n| n == 0)
            .count();
        assert_eq!(
            reference["forward_passes"].as_u64().unwrap() as usize,
            ours.forward_passes + skipped
        );
    }
}

/// A data-parallel worker decodes a range of the round's rows. Each row's draws depend only on
/// (seed, row, step), so a range decoded on its own, in chunks of another size, equals those
/// rows of the whole decode: for the schedule path, threshold decoding (whose per-step draw
/// count follows the widest row of a chunk) and `origin` (coins, then that many draws).
#[test]
fn a_range_of_rows_decodes_as_in_the_whole_batch_for_every_algorithm() {
    let (model, tok) = tiny_model(8);
    let sampled = RolloutConfig {
        max_new_tokens: 16,
        steps: 8,
        num_completions: 3,
        temperature: 1.0,
        seed: 11,
        // The reveal confidences are compared too: they show a logit that moved by one ulp.
        record_trace: true,
        ..RolloutConfig::default()
    };
    for config in [
        sampled.clone(),
        RolloutConfig {
            confidence_threshold: Some(0.3),
            alg: Alg::MaskgitPlus,
            ..sampled.clone()
        },
        RolloutConfig {
            alg: Alg::Origin,
            ..sampled.clone()
        },
        RolloutConfig {
            alg_temp: 0.5,
            ..sampled.clone()
        },
    ] {
        let whole = generate(&model, &tok, &prompts(), &config).unwrap();
        let batch = rollout::prompt_rows(&model, &tok, &prompts(), &config).unwrap();
        // Rows 2..7 (cutting through groups and the whole decode's one chunk), two per chunk.
        let part = RolloutConfig {
            chunk_rows: Some(2),
            ..config.clone()
        };
        // Rows 3..6 answer the longest prompt: no padding of their own, yet decoded with the
        // batch's attention mask, as in the whole decode.
        for range in [2..7, 3..6] {
            let rows = rollout::decode_rows(&model, &tok, &batch, range.clone(), &part).unwrap();
            let what = format!(
                "rows {range:?}, {:?} threshold {:?}",
                config.alg, config.confidence_threshold
            );
            assert_eq!(
                rows.completion_ids,
                whole.completion_ids[range.clone()],
                "{what}"
            );
            assert_eq!(
                rows.traces.unwrap(),
                whole.traces.as_ref().unwrap()[range.clone()],
                "{what}"
            );
        }
    }
}
