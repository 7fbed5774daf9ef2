//! Rollout throughput on CPU (flex), next to the PyTorch reference sampler on the same weights.
//!
//!     cargo bench --bench rollout                          # small preset, 8 rows, K = 64
//!     cargo bench --bench rollout -- --length 256 --prompt-len 200   # RL shapes (slow on CPU)
//!     cargo bench --bench rollout -- --length 64 --reps 2 --preset tiny
//!     cargo bench --bench rollout -- --no-reference        # ours only
//!     cargo bench --bench rollout -- --study-only          # threshold study only
//!     cargo bench --bench rollout -- --cache-only          # cache study only (K = 256)
//!     cargo bench --bench rollout -- --pass-at-1-only      # its pass@1 table only
//!
//! Setting: DiffuCoder's RL rollout sampler (temperature 1.2, top-p 0.95, entropy order,
//! alg_temp 0) on B × G = 2 × 4 = 8 rows whose prompts differ in length (left padding and the
//! attention mask are exercised), at steps = K (1 token/step) and steps = K/2. The same random
//! weights are saved in HF format and decoded by `tools/reference_rollout.py` (Dream's batched
//! `diffusion_generate` in PyTorch, `torch.set_num_threads(2)`). Prints tokens/s and forward
//! passes/s for both and the speed ratio, plus a temperature-0 token-agreement check.
//!
//! Then a confidence-threshold study on a fixed model that has something to be confident
//! about: the `tiny` preset trained here for a few hundred steps (masked-diffusion loss) on a
//! copy task, completions `w;w;w;` for a random 5-letter word `w` over 8 letters. The first
//! copy is uncertain, the others are determined by it, so revealing letters in parallel before
//! one copy is fixed produces inconsistent copies: the quality measure is the fraction of
//! samples whose three copies agree (and are well formed), at temperature 1 over 64 samples.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, Distribution, Int, Tensor, TensorData};
use coupled_grpo::backend::{Cpu, CpuAutodiff};
use coupled_grpo::eval::{EvalConfig, Evaluator, PromptStyle};
use coupled_grpo::model::PromptBatch;
use coupled_grpo::model::{
    byte_level_tokenizer, left_pad, save_pretrained, shift_logits, DiffusionLm, ModelConfig,
    SaveDtype, Tokenizer,
};
use coupled_grpo::perf::{arg, flag, median};
use coupled_grpo::rollout::sampling::{sample_tokens, Confidence, SampleParams};
use coupled_grpo::rollout::{
    decode, decode_from, decode_rows, generate, prompt_rows, Alg, CacheMode, DecodeTokens,
    RolloutConfig,
};
use rand::{Rng, SeedableRng};

/// Least of several timings: the least disturbed by other processes on a shared machine.
fn fastest(v: Vec<f64>) -> f64 {
    v.into_iter().fold(f64::INFINITY, f64::min)
}

struct Timing {
    seconds: f64,
    forward_passes: usize,
}

/// Two prompts of different lengths, each repeated G = rows / 2 times, left-padded.
fn prompt_batch(vocab: usize, rows: usize, prompt_len: usize) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let batch = prompt_batch_rows(vocab, rows, prompt_len);
    (batch.ids, batch.attention_mask)
}

/// [`prompt_batch`] as a batch.
fn prompt_batch_rows(vocab: usize, rows: usize, prompt_len: usize) -> PromptBatch {
    let mut state = 12345u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (5 + (state >> 33) as usize % (vocab - 5)) as u32
    };
    let long: Vec<u32> = (0..prompt_len).map(|_| next()).collect();
    let short: Vec<u32> = (0..prompt_len * 2 / 3).map(|_| next()).collect();
    let g = rows / 2;
    let mut seqs = vec![long; g];
    seqs.extend(vec![short; rows - g]);
    left_pad(seqs, 4)
}

fn ours(
    model: &DiffusionLm<Cpu>,
    ids: &[Vec<u32>],
    mask: &[Vec<u32>],
    config: &RolloutConfig,
    reps: usize,
) -> (Timing, Vec<Vec<u32>>) {
    let mask_token = model.config().mask_token_id.unwrap();
    let mut out = decode(model, ids, mask, mask_token, config).unwrap(); // warm-up
    let times: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            out = decode(model, ids, mask, mask_token, config).unwrap();
            t.elapsed().as_secs_f64()
        })
        .collect();
    (
        Timing {
            seconds: median(times),
            forward_passes: out.forward_passes,
        },
        out.completion_ids,
    )
}

fn reference(
    dir: &Path,
    prompts: &Path,
    config: &RolloutConfig,
    reps: usize,
) -> Result<(Timing, Vec<Vec<u32>>), String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/reference_rollout.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .arg("--model")
        .arg(dir)
        .arg("--prompts")
        .arg(prompts)
        .args(["--max-new-tokens", &config.max_new_tokens.to_string()])
        .args(["--steps", &config.steps.to_string()])
        .args(["--temperature", &config.temperature.to_string()])
        .args([
            "--alg",
            config.alg.name(),
            "--threads",
            "2",
            "--ban-mask-token",
        ])
        .args([
            "--seed",
            &config.seed.to_string(),
            "--repeat",
            &reps.max(2).to_string(),
        ]);
    if let Some(p) = config.top_p {
        cmd.args(["--top-p", &p.to_string()]);
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let seconds: Vec<f64> =
        serde_json::from_value(v["seconds"].clone()).map_err(|e| e.to_string())?;
    let completions: Vec<Vec<u32>> =
        serde_json::from_value(v["completions"].clone()).map_err(|e| e.to_string())?;
    Ok((
        Timing {
            seconds: median(seconds),
            forward_passes: v["forward_passes"].as_u64().unwrap_or(0) as usize,
        },
        completions,
    ))
}

fn torch_available() -> Option<String> {
    let out = Command::new("python3")
        .args(["-c", "import torch, safetensors; print(torch.__version__)"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    if flag("--cache-only") {
        cache_study();
        return;
    }
    if flag("--pass-at-1-only") {
        let (coder, tok) = embedded_coder();
        coder_pass_at_1(&coder, &tok);
        return;
    }
    if !flag("--study-only") {
        speed();
    }
    if !flag("--no-study") {
        threshold_study();
    }
    if !flag("--no-cache-study") {
        cache_study();
    }
}

/// One rollout setting of the cache study.
struct Mode {
    name: &'static str,
    cache: CacheMode,
    refresh: usize,
    /// Blocks of 32 tokens (16 at the coder's K = 48).
    blocks: bool,
    /// Threshold decoding: (τ in nats of negative entropy, tokens per step above the schedule).
    threshold: Option<(f32, usize)>,
    early: bool,
}

impl Mode {
    const fn new(name: &'static str, cache: CacheMode, blocks: bool) -> Self {
        Self {
            name,
            cache,
            refresh: 0,
            blocks,
            threshold: None,
            early: false,
        }
    }

    const fn parallel(self) -> Self {
        Self {
            threshold: Some((-0.5, 4)),
            early: true,
            ..self
        }
    }

    /// `base` with this mode's settings.
    fn apply(&self, base: &RolloutConfig) -> RolloutConfig {
        let block = if base.max_new_tokens == 48 { 16 } else { 32 };
        RolloutConfig {
            cache: self.cache,
            cache_refresh: self.refresh,
            block_length: self.blocks.then_some(block),
            confidence_threshold: self.threshold.map(|t| t.0),
            max_tokens_per_step: self.threshold.map(|t| t.1),
            early_completion: self.early,
            ..base.clone()
        }
    }
}

const MODES: &[Mode] = &[
    Mode::new("exact", CacheMode::None, false),
    Mode::new("prefix", CacheMode::Prefix, false),
    Mode::new("dual", CacheMode::Dual, false),
    Mode {
        refresh: 32,
        ..Mode::new("dual, refresh 32", CacheMode::Dual, false)
    },
    Mode::new("parallel", CacheMode::None, false).parallel(),
    Mode::new("dual + parallel", CacheMode::Dual, false).parallel(),
    Mode::new("blocks, exact", CacheMode::None, true),
    Mode::new("blocks, prefix", CacheMode::Prefix, true),
    Mode::new("blocks, dual", CacheMode::Dual, true),
    Mode::new("blocks, dual + par.", CacheMode::Dual, true).parallel(),
];

/// Fraction of equal tokens.
fn agreement(a: &[Vec<u32>], b: &[Vec<u32>]) -> f64 {
    let pairs = a.iter().flatten().zip(b.iter().flatten());
    let (same, n) = pairs.fold((0usize, 0usize), |(s, n), (x, y)| {
        (s + usize::from(x == y), n + 1)
    });
    same as f64 / n.max(1) as f64
}

/// Cached and parallel decoding against exact decoding in one run: speed and forward FLOPs
/// at K = 256 (DiffuCoder's RL length) on the small preset's random weights (where no
/// confidence threshold fires) and on the embedded coder (which is confident about its
/// padding), token agreement of greedy decodes, and held-out pass@1 of the embedded coder
/// decoded greedily with each mode.
fn cache_study() {
    let preset: String = arg("--preset", "small".to_string());
    let k: usize = arg("--cache-length", 256);
    let prompt_len: usize = arg("--prompt-len", 48);
    let rows: usize = arg("--rows", 8);
    let reps: usize = arg("--reps", 2);
    let config = ModelConfig::preset(&preset).unwrap();
    let device = Default::default();
    let model = DiffusionLm::<Cpu>::init_with(&config, &device, 0, DType::F32);
    let batch = prompt_batch_rows(config.vocab_size, rows, prompt_len);
    println!(
        "\ncache study: K = {k} in {k} steps, {rows} rows, median of {reps} runs after a warm-up; \
         blocks of 32; parallel = entropy below 0.5 nats, at most 4 tokens per step above the \
         schedule, early completion"
    );
    let sampler = RolloutConfig {
        max_new_tokens: k,
        steps: k,
        num_completions: 1,
        ..RolloutConfig::default()
    };
    println!(
        "\n  {preset} preset, random weights, prompts {prompt_len}/{} tokens, temperature 1.2, top-p 0.95",
        prompt_len * 2 / 3
    );
    speed_table(&model, None, &batch, &sampler, reps, false);

    let (coder, tok) = embedded_coder();
    let prompts = held_out_prompts(&coder, 2);
    let coder_sampler = RolloutConfig {
        temperature: 1.0,
        num_completions: rows / 2,
        max_prompt_length: 128,
        ..sampler.clone()
    };
    let batch = prompt_rows(&coder, &tok, &prompts, &coder_sampler).unwrap();
    println!(
        "\n  embedded coder, 2 held-out prompts x {}, temperature 1.0, top-p 0.95 (the main job's sampler); \
         agreement: greedy tokens",
        rows / 2
    );
    speed_table(&coder, Some(&tok), &batch, &coder_sampler, reps, true);
    coder_pass_at_1(&coder, &tok);
}

/// Seconds per completion, positions computed and greedy tokens of exact decoding.
type ExactRun = (f64, usize, Vec<Vec<u32>>);

/// Time, FLOPs and (with `agree`) greedy agreement of every mode on one batch.
fn speed_table(
    model: &DiffusionLm<Cpu>,
    tok: Option<&Tokenizer>,
    batch: &PromptBatch,
    sampler: &RolloutConfig,
    reps: usize,
    agree: bool,
) {
    let rows = batch.ids.len();
    let tokens = match tok {
        Some(t) => DecodeTokens::from_special(t.special()),
        None => DecodeTokens {
            mask: model.config().mask_token_id.unwrap(),
            end: Some((2, 4)),
        },
    };
    let padded = batch.attention_mask.iter().any(|m| m.contains(&0));
    let run = |rc: &RolloutConfig| {
        decode_from(
            model,
            &batch.ids,
            &batch.attention_mask,
            0,
            padded,
            tokens,
            rc,
        )
        .unwrap()
    };
    println!(
        "  {:<20} {:>7} {:>6} {:>10} {:>12} {:>9} {:>8} {:>7}",
        "mode", "passes", "full", "positions", "GFLOP/compl", "s/compl", "speedup", "agree"
    );
    // Exact decoding's figures without and with blocks.
    let mut exact: [Option<ExactRun>; 2] = [None, None];
    for mode in MODES {
        let rc = mode.apply(sampler);
        let mut out = run(&rc);
        let times: Vec<f64> = (0..reps)
            .map(|_| {
                let t = Instant::now();
                out = run(&rc);
                t.elapsed().as_secs_f64()
            })
            .collect();
        let per = median(times) / rows as f64;
        let greedy = match agree {
            true => {
                run(&RolloutConfig {
                    temperature: 0.0,
                    top_p: None,
                    ..rc.clone()
                })
                .completion_ids
            }
            false => Vec::new(),
        };
        let (base_s, base_positions, base_ids) = exact[usize::from(mode.blocks)].get_or_insert((
            per,
            out.cost.query_tokens,
            greedy.clone(),
        ));
        let agreement = match agree {
            true => format!("{:.1}%", 100.0 * agreement(&greedy, base_ids)),
            false => "-".to_string(),
        };
        println!(
            "  {:<20} {:>7} {:>6} {:>9.1}% {:>12.2} {:>9.3} {:>7.2}x {:>7}",
            mode.name,
            out.cost.forward_passes,
            out.cost.full_passes,
            100.0 * out.cost.query_tokens as f64 / *base_positions as f64,
            out.cost.flops(model.config()) / rows as f64 / 1e9,
            per,
            *base_s / per,
            agreement,
        );
    }
}

fn embedded_coder() -> (DiffusionLm<Cpu>, Tokenizer) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/tiny-coder");
    let model = coupled_grpo::model::load_pretrained::<Cpu>(&dir, &Default::default()).unwrap();
    let tok = coupled_grpo::model::load_tokenizer(&dir, model.config()).unwrap();
    (model, tok)
}

/// The first `n` held-out toy tasks' prompts in the training chat format.
fn held_out_prompts(model: &DiffusionLm<Cpu>, n: usize) -> Vec<String> {
    held_out_tasks(n)
        .iter()
        .map(|t| Evaluator::prompt(model.config().family, t, &training_style()).unwrap())
        .collect()
}

fn held_out_tasks(n: usize) -> Vec<coupled_grpo::data::Task> {
    coupled_grpo::data::synthetic::Generator::new(coupled_grpo::data::synthetic::Split::HeldOut, 0)
        .distinct(n)
        .unwrap()
}

fn training_style() -> EvalConfig {
    EvalConfig {
        prompt_style: PromptStyle::Training,
        ..EvalConfig::default()
    }
}

/// Held-out pass@1 of the embedded coder (assets/tiny-coder) decoded greedily as the main job
/// evaluates it (K = 48 in 24 steps, blocks of 16 where named), per mode, with the positions
/// computed and the agreement of its tokens with exact decoding.
fn coder_pass_at_1(model: &DiffusionLm<Cpu>, tok: &Tokenizer) {
    use coupled_grpo::sandbox::{Limits, Pool, WasmConfig, WasmExecutor};
    let n: usize = arg("--eval-tasks", 100);
    let tasks = held_out_tasks(n);
    let prompts = held_out_prompts(model, n);
    let executor = std::sync::Arc::new(WasmExecutor::new(WasmConfig::default()).unwrap());
    let evaluator = Evaluator::new(
        Pool::new(executor, 2),
        Limits {
            test_timeout: std::time::Duration::from_secs(2),
            ..Limits::default()
        },
    );
    let base = RolloutConfig {
        max_new_tokens: 48,
        steps: 24,
        temperature: 0.0,
        top_p: None,
        max_prompt_length: 128,
        truncate_text: false,
        chunk_rows: Some(64),
        num_completions: 1,
        seed: 0,
        ..RolloutConfig::default()
    };
    println!(
        "\n  embedded coder, {n} held-out toy tasks, greedy, K = 48 in 24 steps (the main job's evaluation)"
    );
    println!(
        "  {:<20} {:>7} {:>7} {:>10} {:>7} {:>9}",
        "mode", "pass@1", "passes", "positions", "agree", "seconds"
    );
    let mut exact: [Option<(Vec<Vec<u32>>, usize)>; 2] = [None, None];
    for mode in MODES {
        let rollout = mode.apply(&base);
        let eval = EvalConfig {
            rollout: rollout.clone(),
            tasks_per_batch: 50,
            ..training_style()
        };
        let t = Instant::now();
        let report = evaluator.evaluate(model, tok, &tasks, &eval).unwrap();
        let seconds = t.elapsed().as_secs_f64();
        let batch = prompt_rows(model, tok, &prompts, &rollout).unwrap();
        let d = decode_rows(model, tok, &batch, 0..batch.ids.len(), &rollout).unwrap();
        let (base_ids, full) = exact[usize::from(mode.blocks)]
            .get_or_insert((d.completion_ids.clone(), d.cost.query_tokens));
        println!(
            "  {:<20} {:>7.3} {:>7} {:>9.1}% {:>6.1}% {:>9.1}",
            mode.name,
            report.pass_at_1(),
            d.cost.forward_passes,
            100.0 * d.cost.query_tokens as f64 / *full as f64,
            100.0 * agreement(&d.completion_ids, base_ids),
            seconds
        );
    }
}

fn speed() {
    let preset: String = arg("--preset", "small".to_string());
    let length: usize = arg("--length", 64);
    let prompt_len: usize = arg("--prompt-len", 48);
    let rows: usize = arg("--rows", 8);
    let reps: usize = arg("--reps", 2);
    let config = ModelConfig::preset(&preset).unwrap();
    let device = Default::default();
    let model = DiffusionLm::<Cpu>::init_with(&config, &device, 0, DType::F32);
    let (ids, mask) = prompt_batch(config.vocab_size, rows, prompt_len);
    println!(
        "rollout bench (flex CPU, {} threads): preset {preset} (d{} x {}L, vocab {}), {rows} rows (2 prompts x {}; \
         prompt {}/{} tokens, left-padded), K = {length}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        config.hidden_size,
        config.num_hidden_layers,
        config.vocab_size,
        rows / 2,
        prompt_len,
        prompt_len * 2 / 3,
    );
    println!("sampler: temperature 1.2, top-p 0.95, entropy, alg_temp 0; median of {reps} runs after a warm-up");

    let torch = if flag("--no-reference") {
        println!("reference: skipped (--no-reference)");
        None
    } else {
        match torch_available() {
            Some(v) => {
                println!(
                    "reference: tools/reference_rollout.py, torch {v}, torch.set_num_threads(2)"
                );
                Some(v)
            }
            None => {
                println!("reference: SKIPPED (python3 with torch + safetensors not found; pip install torch safetensors)");
                None
            }
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let prompts_path = tmp.path().join("prompts.json");
    if torch.is_some() {
        save_pretrained(&model, tmp.path().join("m"), SaveDtype::F32).unwrap();
        let spec = serde_json::json!({"input_ids": ids, "attention_mask": mask, "mask_token_id": config.mask_token_id});
        std::fs::write(&prompts_path, spec.to_string()).unwrap();
    }

    // Context for the per-step cost: one forward pass over [rows, P + K], and the sampler on
    // the candidate rows of an average step (fastest of 5; the machine may be shared).
    let forward_ms = {
        let l = ids[0].len() + length;
        let x = Tensor::<Cpu, 2, Int>::from_data(
            TensorData::new(vec![5i64; rows * l], [rows, l]),
            &device,
        );
        let m = Tensor::<Cpu, 2, Int>::from_data(
            TensorData::new(
                mask.iter()
                    .flat_map(|r| {
                        r.iter()
                            .map(|&v| v as i64)
                            .chain(std::iter::repeat_n(1, length))
                    })
                    .collect::<Vec<_>>(),
                [rows, l],
            ),
            &device,
        );
        let _ = model.forward_hidden(x.clone(), Some(m.clone())).into_data();
        let times: Vec<f64> = (0..5)
            .map(|_| {
                let t = Instant::now();
                let _ = model.forward_hidden(x.clone(), Some(m.clone())).into_data();
                t.elapsed().as_secs_f64()
            })
            .collect();
        fastest(times) * 1e3
    };
    println!(
        "forward_hidden alone over [{rows}, {}]: {forward_ms:.1} ms",
        ids[0].len() + length
    );
    {
        let r = rows * length / 2;
        let logits = Tensor::<Cpu, 2>::random(
            [r, config.vocab_size],
            Distribution::Normal(0.0, 2.0),
            &device,
        );
        let u = Tensor::<Cpu, 2>::random([r, 1], Distribution::Default, &device);
        let params = SampleParams {
            temperature: 1.2,
            top_p: Some(0.95),
            top_k: None,
            confidence: Confidence::NegEntropy,
            banned_token: Some(3),
        };
        let run = || {
            let s = sample_tokens(logits.clone(), Some(u.clone()), &params).unwrap();
            let _ = (s.tokens.into_data(), s.confidence.into_data());
        };
        run();
        let times: Vec<f64> = (0..5)
            .map(|_| {
                let t = Instant::now();
                run();
                t.elapsed().as_secs_f64()
            })
            .collect();
        println!(
            "sample_tokens alone on [{r}, {}]: {:.1} ms",
            config.vocab_size,
            fastest(times) * 1e3
        );
    }

    let tokens = rows * length;
    println!(
        "\n{:<22} {:>9} {:>8} {:>10} {:>12} {:>10}",
        "run", "steps", "passes", "seconds", "tokens/s", "passes/s"
    );
    for steps in [length, length / 2] {
        let rc = RolloutConfig {
            max_new_tokens: length,
            steps,
            num_completions: 1,
            ..RolloutConfig::default()
        };
        let (t, _) = ours(&model, &ids, &mask, &rc, reps);
        let row = |name: &str, t: &Timing| {
            println!(
                "{name:<22} {steps:>9} {:>8} {:>10.3} {:>12.1} {:>10.2}",
                t.forward_passes,
                t.seconds,
                tokens as f64 / t.seconds,
                t.forward_passes as f64 / t.seconds
            )
        };
        row("coupled-grpo (burn)", &t);
        if torch.is_some() {
            match reference(&tmp.path().join("m"), &prompts_path, &rc, reps) {
                Ok((r, _)) => {
                    row("reference (torch)", &r);
                    println!(
                        "{:<22} {:>9} speed ratio (reference time / ours): {:.2}x",
                        "",
                        "",
                        r.seconds / t.seconds
                    );
                }
                Err(e) => println!("reference failed: {e}"),
            }
        }
    }

    if torch.is_some() {
        // Same algorithm, same weights: greedy decoding should agree token for token. A wide
        // init spreads the confidences (with the 0.02 init the positions are near-tied and
        // float rounding alone can reorder them).
        let mut wide = config.clone();
        wide.initializer_range = 0.3;
        let model = DiffusionLm::<Cpu>::init_with(&wide, &device, 1, DType::F32);
        save_pretrained(&model, tmp.path().join("m"), SaveDtype::F32).unwrap();
        let rc = RolloutConfig {
            max_new_tokens: length.min(32),
            steps: length.min(32),
            temperature: 0.0,
            top_p: None,
            alg: Alg::Entropy,
            num_completions: 1,
            ..RolloutConfig::default()
        };
        let (_, a) = ours(&model, &ids, &mask, &rc, 1);
        match reference(&tmp.path().join("m"), &prompts_path, &rc, 1) {
            Ok((_, b)) => {
                let same = a
                    .iter()
                    .flatten()
                    .zip(b.iter().flatten())
                    .filter(|(x, y)| x == y)
                    .count();
                println!(
                    "\ntemperature-0 agreement with the reference (K = {}, init std 0.3): {same}/{} tokens",
                    rc.max_new_tokens,
                    a.iter().map(Vec::len).sum::<usize>()
                );
            }
            Err(e) => println!("reference failed: {e}"),
        }
    }
}

const ALPHABET: &[u8] = b"abcdefgh";
const COPY_PROMPT: &str = "copy:";

/// Train the `tiny` preset on `w;w;w;` completions with the masked-diffusion objective
/// (t ~ U(eps, 1), each completion token masked with probability t, CE on masked tokens / t).
fn train_copy_model(tok: &Tokenizer, steps: usize) -> DiffusionLm<Cpu> {
    let config = ModelConfig::preset("tiny").unwrap();
    let device = Default::default();
    let mut model = DiffusionLm::<CpuAutodiff>::init_with(&config, &device, 0, DType::F32);
    let mut optim = AdamWConfig::new()
        .with_weight_decay(0.0)
        .init::<CpuAutodiff, DiffusionLm<CpuAutodiff>>();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let prompt = tok.encode(COPY_PROMPT).unwrap();
    let mask = tok.special().mask as i64;
    let batch = 32;
    for step in 0..steps {
        let (mut input, mut target, mut weight) = (Vec::new(), Vec::new(), Vec::new());
        let mut comp_len = 0;
        for _ in 0..batch {
            let w: String = (0..5)
                .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
                .collect();
            let comp = tok.encode(&format!("{w};{w};{w};")).unwrap();
            comp_len = comp.len();
            let t: f32 = rng.random_range(1e-3..1.0);
            for &p in &prompt {
                input.push(p as i64);
                target.push(p as i64);
                weight.push(0.0f32);
            }
            for &c in &comp {
                let masked = rng.random::<f32>() < t;
                input.push(if masked { mask } else { c as i64 });
                target.push(c as i64);
                weight.push(if masked { 1.0 / t } else { 0.0 });
            }
        }
        let len = prompt.len() + comp_len;
        let input =
            Tensor::<CpuAutodiff, 2, Int>::from_data(TensorData::new(input, [batch, len]), &device);
        let target = Tensor::<CpuAutodiff, 2, Int>::from_data(
            TensorData::new(target, [batch, len]),
            &device,
        );
        let weight =
            Tensor::<CpuAutodiff, 2>::from_data(TensorData::new(weight, [batch, len]), &device);
        let logits = shift_logits(model.forward(input, None));
        let lp = log_softmax(logits, 2)
            .gather(2, target.unsqueeze_dim::<3>(2))
            .squeeze_dim::<2>(2);
        let loss = (lp * weight).sum().neg() / (batch * comp_len) as f64;
        if step % 200 == 0 || step + 1 == steps {
            let l: f32 = loss.clone().into_scalar();
            println!("  train step {step:>4}: loss {l:.4}");
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(3e-3, model, grads);
    }
    model.valid()
}

/// `w;w;w;` with three equal 5-letter copies over the alphabet.
fn consistent(text: &str) -> bool {
    let parts: Vec<&str> = text.split(';').collect();
    parts.len() == 4
        && parts[3].is_empty()
        && parts[..3]
            .iter()
            .all(|p| p.len() == 5 && p.bytes().all(|b| ALPHABET.contains(&b)))
        && parts[0] == parts[1]
        && parts[1] == parts[2]
}

fn threshold_study() {
    let steps: usize = arg("--train-steps", 600);
    let samples: usize = arg("--samples", 64);
    println!("\nconfidence-threshold study: tiny preset trained {steps} steps on `w;w;w;` (5 letters over 8)");
    let tok = byte_level_tokenizer().unwrap();
    let t0 = Instant::now();
    let model = train_copy_model(&tok, steps);
    println!("  trained in {:.1} s", t0.elapsed().as_secs_f64());
    let k = 18;
    println!(
        "  {samples} samples, K = {k}, steps = {k}, maskgit_plus (threshold on the token probability), temperature 1, no top-p"
    );
    println!(
        "\n  {:<26} {:>14} {:>12} {:>16} {:>12}",
        "decoding", "forward passes", "steps saved", "mean row steps", "consistent"
    );
    let prompts = vec![COPY_PROMPT.to_string()];
    let mut baseline = None;
    for tau in [
        None,
        Some(0.9f32),
        Some(0.5),
        Some(0.2),
        Some(0.1),
        Some(0.05),
        Some(0.0),
    ] {
        let config = RolloutConfig {
            max_new_tokens: k,
            steps: k,
            temperature: 1.0,
            top_p: None,
            alg: Alg::MaskgitPlus,
            num_completions: samples,
            confidence_threshold: tau,
            record_trace: true,
            truncate_text: false,
            seed: 1,
            ..RolloutConfig::default()
        };
        let b = generate(&model, &tok, &prompts, &config).unwrap();
        let ok = b.texts.iter().filter(|t| consistent(t)).count();
        let row_steps: f64 = b
            .traces
            .as_ref()
            .unwrap()
            .iter()
            .map(|t| {
                t.revealed_per_step()
                    .iter()
                    .rposition(|&n| n > 0)
                    .map_or(0, |i| i + 1) as f64
            })
            .sum::<f64>()
            / samples as f64;
        let name = match tau {
            None => "schedule (1 token/step)".to_string(),
            Some(t) => format!("threshold tau = {t}"),
        };
        let base = *baseline.get_or_insert(b.forward_passes);
        println!(
            "  {name:<26} {:>14} {:>11.0}% {:>16.1} {:>11.1}%",
            b.forward_passes,
            100.0 * (1.0 - b.forward_passes as f64 / base as f64),
            row_steps,
            100.0 * ok as f64 / samples as f64
        );
    }
}
