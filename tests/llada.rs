//! LLaDA as a second model family: logit parity with LLaDA's own `modeling_llada.py` (fixtures
//! from tests/fixtures/gen_llada.py; an MHA model with an untied head and a GQA one with a tied
//! head), with a left-padded batch and without a mask, its checkpoint names and config keys
//! written back on save, and config errors that name the field.

use std::path::{Path, PathBuf};

use burn::tensor::{DType, Int, Tensor, TensorData};
use coupled_grpo::backend::Cpu;
use coupled_grpo::model::{
    load_pretrained_with, save_pretrained, DiffusionLm, ModelConfig, ModelFamily, SaveDtype,
};
use coupled_grpo::Error;
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/llada")
        .join(name)
}

fn ints(v: &Value) -> (Vec<i64>, [usize; 2]) {
    let rows: Vec<Vec<i64>> = serde_json::from_value(v.clone()).unwrap();
    let shape = [rows.len(), rows[0].len()];
    (rows.into_iter().flatten().collect(), shape)
}

fn tensor(v: &Value) -> Tensor<Cpu, 2, Int> {
    let (data, shape) = ints(v);
    Tensor::from_data(TensorData::new(data, shape), &Default::default())
}

/// Max |Δ| of our logits against the reference's, and the reference's largest |logit|, for
/// the fixture's two cases.
fn parity(model: &DiffusionLm<Cpu>, expected: &Value) -> Vec<(String, f32, f32)> {
    let ids = &expected["input_ids"];
    ["padded", "no_mask"]
        .iter()
        .map(|case| {
            let c = &expected["cases"][case];
            let mask = (*case == "padded").then(|| tensor(&c["attention_mask"]));
            let ours: Vec<f32> = model
                .forward(tensor(ids), mask)
                .into_data()
                .to_vec::<f32>()
                .unwrap();
            let want: Vec<Vec<Vec<f32>>> = serde_json::from_value(c["logits"].clone()).unwrap();
            let want: Vec<f32> = want.into_iter().flatten().flatten().collect();
            assert_eq!(ours.len(), want.len(), "{case}: logits shape");
            let diff = ours
                .iter()
                .zip(&want)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            (case.to_string(), diff, scale)
        })
        .collect()
}

#[test]
fn logits_equal_llada_s_own_code_with_and_without_padding() {
    for name in ["mha_untied", "gqa_tied"] {
        let dir = fixture(name);
        let model = load_pretrained_with::<Cpu>(&dir, &Default::default(), DType::F32).unwrap();
        assert_eq!(model.config().family, ModelFamily::Llada);
        assert_eq!(model.config().family.logit_shift(), 0);
        let expected: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
                .unwrap();
        for (case, diff, scale) in parity(&model, &expected) {
            eprintln!("{name} {case}: max |Δ| {diff:e} (logits up to {scale})");
            assert!(
                scale > 1.0,
                "{name} {case}: the fixture's logits are not trivial"
            );
            assert!(diff <= 1e-4, "{name} {case}: max |Δ| {diff}");
        }
    }
}

#[test]
fn a_saved_llada_model_keeps_its_names_and_config_keys() {
    let src = fixture("gqa_tied");
    let model = load_pretrained_with::<Cpu>(&src, &Default::default(), DType::F32).unwrap();
    let out = tempfile::tempdir().unwrap();
    save_pretrained(&model, out.path(), SaveDtype::F32).unwrap();

    let keys = |dir: &Path| {
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
        names.sort();
        names
    };
    assert_eq!(keys(out.path()), keys(&src));
    assert!(keys(out.path()).contains(&"model.transformer.blocks.1.attn_out.weight".into()));

    let read = |dir: &Path| -> Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
    };
    let (ours, theirs) = (read(out.path()), read(&src));
    for key in [
        "model_type",
        "architectures",
        "d_model",
        "n_heads",
        "n_kv_heads",
        "n_layers",
        "mlp_hidden_size",
        "vocab_size",
        "embedding_size",
        "weight_tying",
        "rope_theta",
        "mask_token_id",
        "block_type",
        "auto_map",
    ] {
        assert_eq!(ours[key], theirs[key], "{key}");
    }
    let again = load_pretrained_with::<Cpu>(out.path(), &Default::default(), DType::F32).unwrap();
    let ids = Tensor::<Cpu, 2, Int>::from_data(
        TensorData::new(vec![5i64, 17, 299, 42], [1, 4]),
        &Default::default(),
    );
    assert_eq!(
        again.forward(ids.clone(), None).into_data(),
        model.forward(ids, None).into_data()
    );
}

#[test]
fn llada_configs_that_contradict_themselves_name_the_field() {
    let base: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("mha_untied").join("config.json")).unwrap(),
    )
    .unwrap();
    for (key, value, field) in [
        ("n_heads", Value::from(5), "n_heads"),
        ("n_kv_heads", Value::from(3), "n_kv_heads"),
        ("mask_token_id", Value::from(300), "mask_token_id"),
        ("embedding_size", Value::from(100), "embedding_size"),
        ("block_type", Value::from("sequential"), "block_type"),
        ("include_qkv_bias", Value::from(true), "include_qkv_bias"),
        ("rope", Value::from(false), "rope"),
    ] {
        let mut doc = base.clone();
        doc[key] = value;
        match ModelConfig::from_json_str(&doc.to_string(), Some(Path::new("llada/config.json"))) {
            Err(Error::Config {
                field: f,
                source_file,
                ..
            }) => {
                assert_eq!(f, field, "{key}");
                assert_eq!(source_file.unwrap(), Path::new("llada/config.json"));
            }
            other => panic!("{key}: {other:?}"),
        }
    }
    // A value of the wrong type is reported at its line, as for a Dream config.
    let text = serde_json::to_string_pretty(&base)
        .unwrap()
        .replace("\"n_layers\": 2", "\"n_layers\": \"two\"");
    let line = text.lines().position(|l| l.contains("\"two\"")).unwrap() + 1;
    match ModelConfig::from_json_str(&text, None) {
        Err(Error::Json { line: l, .. }) => assert_eq!(l, Some(line)),
        other => panic!("n_layers: {other:?}"),
    }
    // An unknown family is refused by name.
    let mut doc = base.clone();
    doc["model_type"] = "mamba".into();
    doc["architectures"] = serde_json::json!(["MambaForCausalLM"]);
    assert!(matches!(
        ModelConfig::from_json_str(&doc.to_string(), None),
        Err(Error::UnsupportedArchitecture { .. }) | Err(Error::Json { .. })
    ));
}

mod common;

/// LLaDA has no logit shift: the full-mask estimator's score of completion token `j` is the
/// log-softmax of the logits at position `P + j` (Dream would read `P + j − 1`).
#[test]
fn estimators_score_llada_without_the_shift() {
    use coupled_grpo::estimator::{EstimatorConfig, EstimatorKind, LikelihoodEstimator};
    use coupled_grpo::estimator::{MaskSeed, ScoreBatch};
    let config = ModelConfig::preset("llada-tiny").unwrap();
    assert_eq!(config.family, ModelFamily::Llada);
    let model = DiffusionLm::<Cpu>::init_with(&config, &Default::default(), 2, DType::F32);
    let mask = config.mask_token_id.unwrap();
    let (prompt, completion) = (vec![10u32, 11, 12, 13], vec![20u32, 21, 22]);
    let batch = ScoreBatch::new(
        vec![prompt.clone()],
        vec![vec![1; 4]],
        vec![completion.clone()],
    )
    .unwrap();
    let estimator = EstimatorConfig {
        kind: EstimatorKind::FullMask,
        ..Default::default()
    }
    .build()
    .unwrap();
    let ours: Vec<f32> = estimator
        .score(&model, &batch, MaskSeed::new(0, 0, 0))
        .unwrap()
        .per_token
        .into_data()
        .to_vec()
        .unwrap();
    let input: Vec<i64> = prompt
        .iter()
        .map(|&t| t as i64)
        .chain(std::iter::repeat_n(mask as i64, 3))
        .collect();
    let logits = model.forward(
        Tensor::from_data(TensorData::new(input, [1, 7]), &Default::default()),
        None,
    );
    let lp = burn::tensor::activation::log_softmax(logits, 2);
    for (j, &y) in completion.iter().enumerate() {
        let want: f32 = lp
            .clone()
            .slice([0..1, 4 + j..5 + j, y as usize..y as usize + 1])
            .into_scalar();
        assert!(
            (ours[j] - want).abs() < 1e-5,
            "token {j}: {} vs {want}",
            ours[j]
        );
    }
}

/// A tiny random LLaDA through the whole trainer: rollouts (no shift in the decoder), every
/// estimator, the update and a checkpoint in LLaDA's names.
#[test]
fn the_trainer_runs_on_a_llada_model_with_every_estimator() {
    use coupled_grpo::backend::CpuAutodiff;
    use coupled_grpo::estimator::EstimatorKind;
    use coupled_grpo::grpo::Trainer;
    let config = ModelConfig::preset("llada-tiny").unwrap();
    for kind in EstimatorKind::ALL {
        let train = common::train_config(&[&format!("estimator.kind=\"{}\"", kind.name())]);
        let model =
            DiffusionLm::<CpuAutodiff>::init_with(&config, &Default::default(), 4, DType::F32);
        let mut trainer = Trainer::from_parts(
            train,
            model,
            coupled_grpo::model::byte_level_tokenizer().unwrap(),
            common::tasks(),
            common::letters_reward(),
            Default::default(),
        )
        .unwrap();
        let before = common::params(trainer.policy());
        let stats = trainer.step().unwrap();
        assert_eq!(stats.rows, 8);
        assert!(
            stats.loss.is_finite() && stats.grad_norm.is_finite(),
            "{kind:?}"
        );
        assert!(stats.rollout_forward_passes > 0);
        assert!(
            common::params(trainer.policy()) != before,
            "{kind:?}: no update"
        );
        if kind == EstimatorKind::Coupled {
            let dir = tempfile::tempdir().unwrap();
            let ckpt = trainer.save_checkpoint(dir.path()).unwrap();
            let cfg: Value =
                serde_json::from_str(&std::fs::read_to_string(ckpt.join("config.json")).unwrap())
                    .unwrap();
            assert_eq!(cfg["model_type"], "llada");
            let back = load_pretrained_with::<Cpu>(&ckpt, &Default::default(), DType::F32).unwrap();
            assert_eq!(back.config().family, ModelFamily::Llada);
        }
    }
}

/// LLaDA's sampler (d1's `generate`): semi-autoregressive blocks, each block's masked positions
/// spread evenly over its steps (d1's `get_num_transfer_tokens`: 8 over 3 steps is 3, 3, 2),
/// low-confidence or random remasking, at a temperature.
#[test]
fn llada_s_sampler_fills_blocks_left_to_right_with_even_counts() {
    use coupled_grpo::model::{byte_level_tokenizer, chat_prompt};
    use coupled_grpo::rollout::{generate, Alg, RolloutConfig};
    let config = ModelConfig::preset("llada-tiny").unwrap();
    let model = DiffusionLm::<Cpu>::init_with(&config, &Default::default(), 6, DType::F32);
    let tok = byte_level_tokenizer().unwrap();
    let prompts = vec![
        chat_prompt("You are a helpful assistant.", "Write add(a, b).", None),
        "x".to_string(),
    ];
    for alg in [Alg::LowConfidence, Alg::Random] {
        let rc = RolloutConfig {
            alg,
            max_new_tokens: 16,
            block_length: Some(8),
            steps: 6,
            temperature: 0.9,
            top_p: None,
            num_completions: 2,
            record_trace: true,
            ..RolloutConfig::default()
        };
        let a = generate(&model, &tok, &prompts, &rc).unwrap();
        assert_eq!(a, generate(&model, &tok, &prompts, &rc).unwrap(), "{alg}");
        for (t, ids) in a.traces.as_ref().unwrap().iter().zip(&a.completion_ids) {
            assert_eq!(t.revealed_per_step(), vec![3, 3, 2, 3, 3, 2], "{alg}");
            let blocks: Vec<usize> = t.flat_order().iter().map(|p| p / 8).collect();
            assert!(
                blocks.windows(2).all(|w| w[0] <= w[1]),
                "{alg}: blocks in order"
            );
            assert!(ids.iter().all(|&x| x != tok.special().mask));
        }
    }
}

/// `examples/configs/d1_llada.toml` is d1's setting and passes validation.
#[test]
fn the_d1_llada_config_is_d1_s_setting() {
    use coupled_grpo::estimator::EstimatorKind;
    use coupled_grpo::grpo::TrainConfig;
    use coupled_grpo::rollout::Alg;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/configs/d1_llada.toml");
    let c = TrainConfig::load(&path, &[]).unwrap();
    c.validate().unwrap();
    assert_eq!(c.rollout.alg, Alg::LowConfidence);
    assert_eq!(c.rollout.block_length, Some(32));
    assert_eq!((c.rollout.steps, c.rollout.max_new_tokens), (128, 256));
    assert_eq!(c.estimator.kind, EstimatorKind::D1);
    assert_eq!(c.estimator.prompt_mask_prob, 0.15);
    assert_eq!(c.grpo.num_iterations, 12);
    assert_eq!(c.lora.r, 128);
}

/// LoRA on LLaDA: the PEFT files name LLaDA's layers (`attn_out`, `ff_proj`, `ff_out` under
/// `model.transformer.blocks`), and a checkpoint restores to the same adapters.
#[test]
fn llada_lora_checkpoints_use_llada_s_names_and_restore() {
    use coupled_grpo::backend::CpuAutodiff;
    use coupled_grpo::grpo::Trainer;
    let config = ModelConfig::preset("llada-tiny").unwrap();
    let train = common::train_config(&["lora.r=4", "lora.alpha=8.0", "optimizer.lr=1e-2"]);
    let trainer = || {
        Trainer::from_parts(
            train.clone(),
            DiffusionLm::<CpuAutodiff>::init_with(&config, &Default::default(), 4, DType::F32),
            coupled_grpo::model::byte_level_tokenizer().unwrap(),
            common::tasks(),
            common::letters_reward(),
            Default::default(),
        )
        .unwrap()
    };
    let mut first = trainer();
    first.step().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ckpt = first.save_checkpoint(dir.path()).unwrap();
    let bytes = std::fs::read(ckpt.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let names: Vec<String> = st.names().into_iter().map(String::from).collect();
    for want in [
        "base_model.model.model.transformer.blocks.0.attn_out.lora_A.weight",
        "base_model.model.model.transformer.blocks.1.ff_proj.lora_B.weight",
        "base_model.model.model.transformer.blocks.1.ff_out.lora_A.weight",
    ] {
        assert!(names.contains(&want.to_string()), "{want} not in {names:?}");
    }
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(ckpt.join("adapter_config.json")).unwrap())
            .unwrap();
    let targets: Vec<String> = serde_json::from_value(cfg["target_modules"].clone()).unwrap();
    for t in ["attn_out", "ff_proj", "ff_out", "q_proj", "up_proj"] {
        assert!(targets.contains(&t.to_string()), "{t} not in {targets:?}");
    }
    let mut resumed = trainer();
    resumed.restore(&ckpt).unwrap();
    assert!(common::params(resumed.policy()) == common::params(first.policy()));
}

/// Classifier-free guidance: the first step's logits are `uncond + (cfg + 1)(cond − uncond)`,
/// `uncond` scoring the sequence with the whole prompt masked. At temperature 0 the first
/// revealed token is the argmax of those logits at the most confident position, and the trace
/// records its probability under them.
#[test]
fn guidance_mixes_the_prompted_and_the_prompt_masked_logits() {
    use burn::tensor::activation::softmax;
    use coupled_grpo::model::byte_level_tokenizer;
    use coupled_grpo::rollout::{generate, Alg, RolloutConfig};
    let config = ModelConfig::preset("llada-tiny").unwrap();
    let model = DiffusionLm::<Cpu>::init_with(&config, &Default::default(), 9, DType::F32);
    let tok = byte_level_tokenizer().unwrap();
    let mask = config.mask_token_id.unwrap() as i64;
    let (k, cfg) = (4usize, 1.5f32);
    let rc = RolloutConfig {
        alg: Alg::LowConfidence,
        max_new_tokens: k,
        steps: k,
        temperature: 0.0,
        top_p: None,
        num_completions: 1,
        cfg_scale: cfg,
        record_trace: true,
        ..RolloutConfig::default()
    };
    let prompt = "def add(a, b):".to_string();
    let out = generate(&model, &tok, std::slice::from_ref(&prompt), &rc).unwrap();
    let plain = generate(
        &model,
        &tok,
        std::slice::from_ref(&prompt),
        &RolloutConfig {
            cfg_scale: 0.0,
            ..rc.clone()
        },
    )
    .unwrap();
    assert_ne!(out.traces, plain.traces, "guidance changes the decode");

    let ids: Vec<i64> = tok
        .encode(&prompt)
        .unwrap()
        .iter()
        .map(|&t| t as i64)
        .collect();
    let p = ids.len();
    let row = |prompt: Vec<i64>| {
        let x: Vec<i64> = prompt
            .into_iter()
            .chain(std::iter::repeat_n(mask, k))
            .collect();
        let logits = model.forward(
            Tensor::from_data(TensorData::new(x, [1, p + k]), &Default::default()),
            None,
        );
        logits
            .slice([0..1, p..p + k, 0..config.vocab_size])
            .reshape([k, config.vocab_size])
    };
    let (cond, uncond) = (row(ids.clone()), row(vec![mask; p]));
    let mixed = uncond.clone() + (cond - uncond).mul_scalar(cfg + 1.0);
    // The mask token is never sampled.
    let cols = Tensor::<Cpu, 1, Int>::arange(0..config.vocab_size as i64, &Default::default());
    let banned = cols
        .equal_elem(mask)
        .unsqueeze::<2>()
        .expand([k, config.vocab_size]);
    let probs = softmax(mixed.clone(), 1);
    let (_, token) = mixed.mask_fill(banned, f32::MIN).max_dim_with_indices(1);
    let token: Vec<i64> = token.into_data().convert::<i64>().to_vec().unwrap();
    let trace = &out.traces.as_ref().unwrap()[0];
    let pos = trace.order[0][0];
    assert_eq!(out.completion_ids[0][pos] as i64, token[pos]);
    let want: f32 = probs
        .slice([pos..pos + 1, token[pos] as usize..token[pos] as usize + 1])
        .into_scalar();
    assert!(
        (trace.confidence[0][0] - want).abs() < 1e-5,
        "{} vs {want}",
        trace.confidence[0][0]
    );
}
