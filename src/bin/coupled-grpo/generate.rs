//! `coupled-grpo generate`: sample completions from a model directory with the rollout engine.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use burn::tensor::{backend::Backend, DType};
use clap::ArgGroup;
use coupled_grpo::data::{self, prompt as templates, OnError, Task};
use coupled_grpo::model::{self, ModelConfig, ModelFamily, DEFAULT_SYSTEM_PROMPT};
use coupled_grpo::rollout::{self, Alg, CacheMode, RolloutConfig};
use serde::Serialize;

#[derive(clap::Args)]
#[command(group(ArgGroup::new("input").required(true).args(["prompt", "tasks"])))]
pub struct Args {
    /// Model directory (config.json, weights, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// A PEFT LoRA adapter directory to run on top of the model (unmerged).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// One user message (wrapped in the chat template unless --raw).
    #[arg(long)]
    prompt: Option<String>,
    /// JSONL tasks: `{"id", "prompt"}` lines, or AceCoder / MBPP / HumanEval rows (their
    /// prompts are built with the training or evaluation chat templates).
    #[arg(long)]
    tasks: Option<PathBuf>,
    /// Completions per prompt (G).
    #[arg(long, default_value_t = 1)]
    num_completions: usize,
    /// Completion length K.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Denoising steps (default: one token per step, steps = max-new-tokens).
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long, default_value_t = 1.2)]
    temperature: f32,
    /// Nucleus mass (1 disables). Default as the released RL code: 0.95 when temperature > 0,
    /// off at temperature 0.
    #[arg(long)]
    top_p: Option<f32>,
    #[arg(long)]
    top_k: Option<usize>,
    /// origin | maskgit_plus | topk_margin | entropy | low_confidence | random (default: the
    /// model family's sampler, entropy for Dream, low_confidence in blocks of 32 for LLaDA).
    #[arg(long)]
    alg: Option<Alg>,
    /// > 0: sample positions from softmax(confidence / alg-temp) instead of top-k.
    #[arg(long, default_value_t = 0.0)]
    alg_temp: f32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Semi-autoregressive blocks of this many tokens.
    #[arg(long)]
    block_length: Option<usize>,
    /// Confidence-threshold parallel decoding (in the units of --alg).
    #[arg(long)]
    threshold: Option<f32>,
    /// With --threshold: the most tokens a step reveals per row above the schedule's count.
    #[arg(long)]
    max_tokens_per_step: Option<usize>,
    /// Positions still masked after a revealed <|im_end|> become padding; rows then stop early.
    #[arg(long)]
    early_completion: bool,
    /// Keys and values reused between steps: none, prefix or dual.
    #[arg(long, default_value = "none")]
    cache: CacheMode,
    /// With --cache: a full pass every N passes (1 = exact; 0 = at block starts only).
    #[arg(long, default_value_t = 0)]
    cache_refresh: usize,
    #[arg(long, default_value_t = 200)]
    max_prompt_length: usize,
    /// Rows decoded together (default: all).
    #[arg(long)]
    chunk_rows: Option<usize>,
    /// Write the decode order of every completion here (JSONL).
    #[arg(long)]
    trace: Option<PathBuf>,
    /// One JSON object per completion: id, sample, completion, token_ids.
    #[arg(long)]
    json: bool,
    /// Use --prompt / `prompt` fields verbatim, without the chat template.
    #[arg(long)]
    raw: bool,
    /// Decode all K tokens instead of stopping at <|dlm_pad|> / <|im_end|> / eos.
    #[arg(long)]
    full_text: bool,
    /// System message of the chat template.
    #[arg(long, default_value = DEFAULT_SYSTEM_PROMPT)]
    system: String,
    /// Parameter dtype.
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    dtype: String,
    /// Where to run (cuda needs the `cuda` feature).
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
    device: String,
}

/// A prompt to generate for, with the id printed next to its completions.
struct Job {
    id: String,
    text: String,
}

#[derive(Serialize)]
struct CompletionLine<'a> {
    id: &'a str,
    sample: usize,
    completion: &'a str,
    token_ids: &'a [u32],
}

#[derive(Serialize)]
struct TraceLine<'a> {
    id: &'a str,
    sample: usize,
    #[serde(flatten)]
    record: rollout::TraceRecord,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.device.as_str() {
        "cpu" => run_on::<coupled_grpo::backend::Cpu>(&args, Default::default()),
        #[cfg(feature = "cuda")]
        "cuda" => run_on::<coupled_grpo::backend::Cuda>(&args, Default::default()),
        other => bail!(
            "--device {other}: this build has no `{other}` backend (build with --features {other})"
        ),
    }
}

fn run_on<B: Backend>(args: &Args, device: B::Device) -> anyhow::Result<()> {
    let model_config = ModelConfig::from_file(args.model.join("config.json"))?;
    let config = rollout_config(args, model_config.family);
    config.validate()?;
    let jobs = jobs(args, model_config.family)?;
    if jobs.is_empty() {
        bail!("no prompts to generate for");
    }
    let tokenizer = model::load_tokenizer(&args.model, &model_config)?;
    let dtype = if args.dtype == "bf16" {
        DType::BF16
    } else {
        DType::F32
    };
    let lm = model::load_with_adapter::<B>(&args.model, args.adapter.as_deref(), &device, dtype)
        .with_context(|| format!("loading {}", args.model.display()))?;

    let prompts: Vec<String> = jobs.iter().map(|j| j.text.clone()).collect();
    let start = Instant::now();
    let batch = rollout::generate(&lm, &tokenizer, &prompts, &config)?;
    let seconds = start.elapsed().as_secs_f64();

    let g = config.num_completions;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for (r, (text, ids)) in batch.texts.iter().zip(&batch.completion_ids).enumerate() {
        let id = &jobs[batch.group[r]].id;
        if args.json {
            let line = CompletionLine {
                id,
                sample: r % g,
                completion: text,
                token_ids: ids,
            };
            writeln!(out, "{}", serde_json::to_string(&line)?)?;
        } else {
            writeln!(out, "=== {id} [sample {}] ===\n{text}", r % g)?;
        }
    }
    out.flush()?;
    if let (Some(path), Some(traces)) = (&args.trace, &batch.traces) {
        let mut text = String::new();
        for (r, t) in traces.iter().enumerate() {
            let line = TraceLine {
                id: &jobs[batch.group[r]].id,
                sample: r % g,
                record: t.record(),
            };
            text.push_str(&serde_json::to_string(&line)?);
            text.push('\n');
        }
        coupled_grpo::util::write_atomic(path, text.as_bytes())?;
    }
    let tokens = batch.completion_ids.len() * config.max_new_tokens;
    eprintln!(
        "{} completions x {} tokens, {} forward passes, {:.2} s ({:.1} tokens/s)",
        batch.completion_ids.len(),
        config.max_new_tokens,
        batch.forward_passes,
        seconds,
        tokens as f64 / seconds
    );
    Ok(())
}

fn rollout_config(args: &Args, family: ModelFamily) -> RolloutConfig {
    let (alg, block) = family.default_sampler();
    let (alg, block_length) = match args.alg {
        Some(alg) => (alg, args.block_length),
        None => (alg, args.block_length.or(block)),
    };
    let top_p = args
        .top_p
        .unwrap_or(if args.temperature > 0.0 { 0.95 } else { 1.0 });
    RolloutConfig {
        max_new_tokens: args.max_new_tokens,
        steps: args.steps.unwrap_or(args.max_new_tokens),
        temperature: args.temperature,
        top_p: (top_p < 1.0).then_some(top_p),
        top_k: args.top_k,
        alg,
        alg_temp: args.alg_temp,
        seed: args.seed,
        num_completions: args.num_completions,
        max_prompt_length: args.max_prompt_length,
        block_length,
        confidence_threshold: args.threshold,
        max_tokens_per_step: args.max_tokens_per_step,
        early_completion: args.early_completion,
        cache: args.cache,
        cache_refresh: args.cache_refresh,
        record_trace: args.trace.is_some(),
        chunk_rows: args.chunk_rows,
        truncate_text: !args.full_text,
        ..RolloutConfig::default()
    }
}

fn jobs(args: &Args, family: ModelFamily) -> anyhow::Result<Vec<Job>> {
    let chat_prompt =
        |system: &str, user: &str, prefill: Option<&str>| family.chat_prompt(system, user, prefill);
    let wrap = |user: &str| {
        if args.raw {
            user.to_string()
        } else {
            chat_prompt(&args.system, user, None)
        }
    };
    if let Some(p) = &args.prompt {
        return Ok(vec![Job {
            id: "prompt".into(),
            text: wrap(p),
        }]);
    }
    let path = args
        .tasks
        .as_ref()
        .expect("clap requires --prompt or --tasks");
    let first = first_object(path)?;
    let has = |k: &str| first.contains_key(k);
    let eval_job = |t: Task| -> anyhow::Result<Job> {
        let user = templates::eval_user_message(&t)?;
        Ok(Job {
            text: chat_prompt(&args.system, &user, Some(templates::EVAL_ASSISTANT_PREFILL)),
            id: t.id,
        })
    };
    if has("question") && has("test_cases") {
        let tasks = data::acecoder::load_tasks(path, OnError::Fail)?.rows;
        Ok(tasks
            .into_iter()
            .map(|t| Job {
                text: chat_prompt(&args.system, &templates::user_message(&t), None),
                id: t.id,
            })
            .collect())
    } else if has("task_id") && has("entry_point") {
        data::humaneval::load(path, OnError::Fail)?
            .rows
            .into_iter()
            .map(eval_job)
            .collect()
    } else if has("task_id") && has("test_list") {
        data::mbpp::load(path, &data::mbpp::MbppOptions::default())?
            .rows
            .into_iter()
            .map(eval_job)
            .collect()
    } else if has("prompt") {
        id_prompt_lines(path, &wrap)
    } else {
        bail!(
            "{}:1: unrecognised task row (expected `id` + `prompt`, or AceCoder `question` + `test_cases`, \
             MBPP `task_id` + `test_list`, HumanEval `task_id` + `entry_point`)",
            path.display()
        )
    }
}

fn reader(path: &Path) -> anyhow::Result<Box<dyn BufRead>> {
    let file = std::fs::File::open(path).with_context(|| path.display().to_string())?;
    Ok(if path.extension().is_some_and(|e| e == "gz") {
        Box::new(BufReader::new(flate2::read::GzDecoder::new(file)))
    } else {
        Box::new(BufReader::new(file))
    })
}

/// The first non-blank line of a JSONL file, as an object (to tell the row format).
fn first_object(path: &Path) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    for (i, line) in reader(path)?.lines().enumerate() {
        let line = line.with_context(|| path.display().to_string())?;
        if line.trim().is_empty() {
            continue;
        }
        return match serde_json::from_str(&line) {
            Ok(serde_json::Value::Object(o)) => Ok(o),
            Ok(_) => bail!("{}:{}: not a JSON object", path.display(), i + 1),
            Err(e) => bail!("{}:{}: {e}", path.display(), i + 1),
        };
    }
    bail!("{}: no rows", path.display())
}

/// `{"id": ..., "prompt": ...}` lines (`id` may be a string or a number; missing = line number).
fn id_prompt_lines(path: &Path, wrap: &dyn Fn(&str) -> String) -> anyhow::Result<Vec<Job>> {
    let mut text = String::new();
    reader(path)?
        .read_to_string(&mut text)
        .with_context(|| path.display().to_string())?;
    let mut jobs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |message: String| coupled_grpo::Error::Data {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| err(e.to_string()))?;
        let prompt = v
            .get("prompt")
            .and_then(|p| p.as_str())
            .ok_or_else(|| err("missing string field `prompt`".into()))?;
        let id = match v.get("id") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            None => format!("line{}", i + 1),
            Some(other) => {
                return Err(err(format!(
                    "field `id` must be a string or number, got {other}"
                ))
                .into())
            }
        };
        jobs.push(Job {
            id,
            text: wrap(prompt),
        });
    }
    Ok(jobs)
}
