//! `coupled-grpo model init | inspect | forward | merge-lora`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use burn::tensor::{DType, Int, Tensor, TensorData};
use clap::builder::PossibleValuesParser;
use clap::{Args, Subcommand};
use coupled_grpo::backend::Cpu;
use coupled_grpo::model::{self, lora, peft, ModelConfig, SaveDtype, Tokenizer, PRESETS};

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Write a complete random-weight HF model directory (config.json, model.safetensors, tokenizer.json).
    Init(InitArgs),
    /// Summarise a model directory (config, parameter count, stored dtypes, tokenizer) or a
    /// PEFT LoRA adapter directory (rank, scaling, targets, base, tensors).
    Inspect {
        /// The model directory.
        dir: PathBuf,
    },
    /// Print the raw (unshifted) logits of one sequence, for parity checks.
    Forward(ForwardArgs),
    /// Fold a PEFT LoRA adapter into its base: a plain HF directory with `W + scale·B·A`.
    MergeLora(MergeLoraArgs),
}

#[derive(Args)]
pub struct MergeLoraArgs {
    /// The base model directory the adapter was trained on.
    #[arg(long)]
    base: PathBuf,
    /// The adapter directory (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    adapter: PathBuf,
    /// Output directory (config.json, model.safetensors, tokenizer.json when the base has one).
    #[arg(long)]
    out: PathBuf,
    /// Storage dtype of the merged weights (default: the base's `torch_dtype`).
    #[arg(long, value_parser = ["f32", "bf16"])]
    dtype: Option<String>,
}

#[derive(Args)]
pub struct InitArgs {
    /// A built-in shape.
    #[arg(long, conflicts_with = "config", required_unless_present = "config",
          value_parser = PossibleValuesParser::new(PRESETS))]
    preset: Option<String>,
    /// An HF config.json to take the shape from.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// tokenizer.json (or .json.gz) to ship with the model (default: byte-level for small
    /// vocabularies, the vendored Qwen tokenizer for DiffuCoder-sized ones).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
pub struct ForwardArgs {
    /// The model directory.
    #[arg(long)]
    model: PathBuf,
    /// Space-separated token ids.
    #[arg(long)]
    ids: String,
    /// Print every logit as JSON: {"shape": [1, L, V], "logits": [[...], ...]}.
    #[arg(long)]
    json: bool,
    /// Parameter dtype for the forward pass.
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    dtype: String,
    /// A PEFT LoRA adapter directory to run on top of the model, unmerged.
    #[arg(long)]
    adapter: Option<PathBuf>,
}

pub fn run(cmd: ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Init(args) => init(args),
        ModelCommand::Inspect { dir } => inspect(&dir),
        ModelCommand::Forward(args) => forward(args),
        ModelCommand::MergeLora(args) => merge_lora(args),
    }
}

fn merge_lora(args: MergeLoraArgs) -> anyhow::Result<()> {
    let device = Default::default();
    // Merge in f32 whatever the storage dtype, then store as asked.
    let adapted =
        model::load_with_adapter::<Cpu>(&args.base, Some(&args.adapter), &device, DType::F32)?;
    let (adapter_params, layers) = lora::adapter_parameters(&adapted);
    let dtype = match args.dtype.as_deref() {
        Some("bf16") => SaveDtype::Bf16,
        Some(_) => SaveDtype::F32,
        None => model::stored_dtype(adapted.config()),
    };
    let merged = lora::merge(adapted);
    model::save_pretrained(&merged, &args.out, dtype)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let tokenizer = args.base.join("tokenizer.json");
    if tokenizer.exists() {
        std::fs::copy(&tokenizer, args.out.join("tokenizer.json"))
            .with_context(|| format!("copying {}", tokenizer.display()))?;
    }
    println!(
        "wrote {} ({} adapted layers, {adapter_params} adapter parameters folded in, {dtype:?})",
        args.out.display(),
        layers
    );
    Ok(())
}

fn init(args: InitArgs) -> anyhow::Result<()> {
    let config = match (&args.preset, &args.config) {
        (Some(name), _) => ModelConfig::preset(name)?,
        (None, Some(path)) => ModelConfig::from_file(path)?,
        (None, None) => bail!("give --preset or --config"),
    };
    let tokenizer = args
        .tokenizer
        .as_ref()
        .map(Tokenizer::from_file)
        .transpose()?;
    let device = Default::default();
    model::init_directory::<Cpu>(&config, &args.out, tokenizer, args.seed, &device)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "wrote {} ({} parameters, vocab {}, {} layers, hidden {})",
        args.out.display(),
        config.num_parameters(),
        config.vocab_size,
        config.num_hidden_layers,
        config.hidden_size
    );
    Ok(())
}

fn inspect(dir: &Path) -> anyhow::Result<()> {
    if !dir.is_dir() {
        bail!("{}: not a directory", dir.display());
    }
    if dir.join(peft::ADAPTER_CONFIG_FILE).exists() {
        return inspect_adapter(dir);
    }
    let config = ModelConfig::from_file(dir.join("config.json"))?;
    println!("model directory  {}", dir.display());
    println!("architectures    {}", config.architectures.join(", "));
    println!(
        "shape            hidden {} · ffn {} · layers {} · heads {} (kv {}) · head_dim {}",
        config.hidden_size,
        config.intermediate_size,
        config.num_hidden_layers,
        config.num_attention_heads,
        config.kv_heads(),
        config.head_dim()
    );
    println!(
        "vocab            {} ({} head)",
        config.vocab_size,
        if config.tie_word_embeddings {
            "tied"
        } else {
            "untied"
        }
    );
    println!("rope_theta       {}", config.rope_theta);
    println!("parameters       {}", config.num_parameters());
    println!(
        "tokens           mask {:?} · pad {:?} · eos {:?}",
        config.mask_token_id, config.pad_token_id, config.eos_token_id
    );
    let dtypes = stored_dtypes(dir)?;
    println!("stored dtypes    {}", dtypes.join(", "));
    match model::load_tokenizer(dir, &config) {
        Ok(tok) => println!(
            "tokenizer        {} tokens · mask {} · pad {} · im_end {}",
            tok.vocab_size(),
            tok.special().mask,
            tok.special().pad,
            tok.special().im_end
        ),
        Err(e) => println!("tokenizer        unusable: {e}"),
    }
    Ok(())
}

/// A PEFT LoRA adapter directory: its config and tensors.
fn inspect_adapter(dir: &Path) -> anyhow::Result<()> {
    let config = peft::AdapterConfig::load(dir)?;
    let lora = config.to_lora();
    println!("LoRA adapter     {}", dir.display());
    println!(
        "rank             r {} · lora_alpha {} · scale {}{}",
        lora.r,
        lora.alpha,
        lora.scale(),
        if lora.use_rslora { " (rsLoRA)" } else { "" }
    );
    println!("targets          {}", lora.target_modules.join(", "));
    println!(
        "base             {}",
        config
            .base_model_name_or_path
            .as_deref()
            .unwrap_or("(not recorded)")
    );
    let path = dir.join(peft::ADAPTER_WEIGHTS_FILE);
    let bytes = std::fs::read(&path).with_context(|| path.display().to_string())?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| path.display().to_string())?;
    let parameters: usize = st
        .tensors()
        .iter()
        .map(|(_, t)| t.shape().iter().product::<usize>())
        .sum();
    println!("tensors          {} ({parameters} parameters)", st.len());
    let dtypes: std::collections::BTreeSet<String> = st
        .tensors()
        .iter()
        .map(|(_, t)| format!("{:?}", t.dtype()))
        .collect();
    let dtypes: Vec<String> = dtypes.into_iter().collect();
    println!("stored dtypes    {}", dtypes.join(", "));
    Ok(())
}

/// Distinct tensor dtypes across the safetensors files (header only).
fn stored_dtypes(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| dir.display().to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{}: no .safetensors weights", dir.display());
    }
    let mut dtypes = std::collections::BTreeSet::new();
    for f in files {
        let file = std::fs::File::open(&f).with_context(|| f.display().to_string())?;
        // SAFETY: read-only map of a file we do not modify.
        let map = unsafe { memmap2::Mmap::map(&file) }?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&map)
            .with_context(|| f.display().to_string())?;
        for info in meta.tensors().values() {
            dtypes.insert(format!("{:?}", info.dtype));
        }
    }
    Ok(dtypes.into_iter().collect())
}

fn forward(args: ForwardArgs) -> anyhow::Result<()> {
    let ids: Vec<i64> = args
        .ids
        .split_whitespace()
        .map(|t| {
            t.parse::<i64>()
                .with_context(|| format!("--ids: `{t}` is not a token id"))
        })
        .collect::<anyhow::Result<_>>()?;
    if ids.is_empty() {
        bail!("--ids: no token ids given");
    }
    let dtype = if args.dtype == "bf16" {
        DType::BF16
    } else {
        DType::F32
    };
    let device = Default::default();
    let model =
        model::load_with_adapter::<Cpu>(&args.model, args.adapter.as_deref(), &device, dtype)?;
    let vocab = model.config().vocab_size;
    if let Some(bad) = ids.iter().find(|&&i| i < 0 || i as usize >= vocab) {
        bail!("--ids: {bad} is outside the vocabulary (0..{vocab})");
    }
    let n = ids.len();
    let input = Tensor::<Cpu, 2, Int>::from_data(TensorData::new(ids, [1, n]), &device);
    let logits: Vec<f32> = model
        .forward(input, None)
        .cast(DType::F32)
        .into_data()
        .convert::<f32>()
        .into_vec()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let rows: Vec<&[f32]> = logits.chunks(vocab).collect();
    if args.json {
        let json = serde_json::json!({ "shape": [1, n, vocab], "logits": rows });
        println!("{json}");
    } else {
        for (pos, row) in rows.iter().enumerate() {
            let (arg, max) = row
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |b, (i, &v)| if v > b.1 { (i, v) } else { b },
                );
            println!(
                "position {pos:>4}: argmax {arg:>7} ({max:.5}); first logits {:?}",
                &row[..row.len().min(4)]
            );
        }
    }
    Ok(())
}
