//! LoRA adapters: they start at the base and are the only trained parameters, the unmerged
//! forward equals the merged model, PEFT files round-trip, bad adapters get typed errors, and
//! a LoRA training run writes PEFT adapters into its checkpoints and resumes bit-exact.

mod common;

use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};
use common::{host, letters_reward, params, tasks, tiny, tiny_config};
use coupled_grpo::backend::{Cpu, CpuAutodiff};
use coupled_grpo::grpo::{TrainConfig, Trainer};
use coupled_grpo::model::peft::{self, AdapterConfig};
use coupled_grpo::model::{byte_level_tokenizer, lora, DiffusionLm, LoraConfig};
use coupled_grpo::Error;

fn lora_config(r: usize, alpha: f64) -> LoraConfig {
    LoraConfig {
        r,
        alpha,
        ..Default::default()
    }
}

/// Logits of a left-padded batch of two.
fn logits<B: Backend>(model: &DiffusionLm<B>) -> Vec<f32> {
    let dev = Default::default();
    let ids = Tensor::<B, 2, Int>::from_data(
        TensorData::new(vec![0i64, 5, 9, 33, 7, 11, 12, 4, 90, 3, 2, 60], [2, 6]),
        &dev,
    );
    let mask = Tensor::<B, 2, Int>::from_data(
        TensorData::new(vec![0i64, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], [2, 6]),
        &dev,
    );
    host(model.forward(ids, Some(mask)))
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Give every adapter a random B (uniform in ±0.3), so that it changes the outputs. Drawn on
/// the host: the backend's RNG is process-wide, and the dropout tests key it themselves.
fn randomise_b<B: Backend>(mut model: DiffusionLm<B>) -> DiffusionLm<B> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    for (_, linear) in lora::linears_mut(&mut model) {
        if let Some(a) = linear.lora.as_mut() {
            let [r, d_out] = a.lora_b.val().dims();
            let values: Vec<f32> = (0..r * d_out)
                .map(|_| rng.random_range(-0.3..0.3))
                .collect();
            let b = Tensor::from_data(TensorData::new(values, [r, d_out]), &Default::default());
            a.lora_b = Param::from_tensor(b);
        }
    }
    model
}

/// Dropout draws from the backend's process-wide RNG, which the trainer seeds per iteration:
/// tests that draw from it must not interleave.
static BACKEND_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn adapters_start_at_the_base_and_only_they_get_gradients() {
    let base = tiny::<CpuAutodiff>(1, DType::F32);
    let cfg = lora_config(4, 8.0);
    let adapted = lora::attach(base.clone(), &cfg, 0).unwrap();
    assert_eq!(
        logits(&adapted),
        logits(&base),
        "B = 0: the policy is the base"
    );

    let c = tiny_config();
    let (n, layers) = lora::adapter_parameters(&adapted);
    assert_eq!(layers, 7 * c.num_hidden_layers);
    let per_layer = |d_in: usize, d_out: usize| cfg.r * (d_in + d_out);
    let (d, f, hd) = (c.hidden_size, c.intermediate_size, c.head_dim());
    let (q, kv) = (c.num_attention_heads * hd, c.kv_heads() * hd);
    let expected = c.num_hidden_layers
        * (per_layer(d, q) + 2 * per_layer(d, kv) + per_layer(q, d) + 3 * per_layer(d, f));
    assert_eq!(n, expected);

    // PEFT's kaiming-uniform bound for A is 1/√in.
    let a = host(
        adapted.layers[0]
            .mlp
            .down_proj
            .lora
            .as_ref()
            .unwrap()
            .lora_a
            .val(),
    );
    let bound = 1.0 / (f as f32).sqrt();
    assert!(a.iter().all(|v| v.abs() <= bound) && a.iter().any(|v| v.abs() > bound / 2.0));

    let adapted = randomise_b(adapted);
    let dev = Default::default();
    let ids = Tensor::<CpuAutodiff, 2, Int>::from_data(
        TensorData::new(vec![1i64, 2, 3, 4], [1, 4]),
        &dev,
    );
    let grads = GradientsParams::from_grads(adapted.forward(ids, None).sum().backward(), &adapted);
    struct Count<'a>(&'a GradientsParams, usize, usize);
    impl ModuleVisitor<CpuAutodiff> for Count<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<CpuAutodiff, D>>) {
            self.1 += 1;
            self.2 += usize::from(self.0.get::<Cpu, D>(p.id).is_some());
        }
    }
    let mut count = Count(&grads, 0, 0);
    adapted.visit(&mut count);
    assert_eq!(
        count.2,
        2 * layers,
        "gradients for the adapters and nothing else"
    );
    assert!(count.1 > count.2);
}

#[test]
fn unmerged_forward_equals_merged_and_peft_files_round_trip() {
    let cfg = LoraConfig {
        use_rslora: true,
        ..lora_config(4, 8.0)
    };
    let adapted = randomise_b(lora::attach(tiny::<Cpu>(2, DType::F32), &cfg, 3).unwrap());
    let unmerged = logits(&adapted);
    let base = logits(&tiny::<Cpu>(2, DType::F32));
    assert!(
        max_diff(&unmerged, &base) > 1e-2,
        "the adapters change the outputs"
    );
    let merged = logits(&lora::merge(adapted.clone()));
    assert!(
        max_diff(&unmerged, &merged) < 1e-5,
        "{}",
        max_diff(&unmerged, &merged)
    );

    let dir = tempfile::tempdir().unwrap();
    peft::save_adapter(&adapted, dir.path(), &cfg, Some("base".into())).unwrap();
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 4);
    assert_eq!(config["lora_alpha"], 8.0);
    assert_eq!(config["use_rslora"], true);
    assert_eq!(config["bias"], "none");
    assert_eq!(config["base_model_name_or_path"], "base");

    // PEFT's key rules: every adapted module has exactly lora_A [r, in] and lora_B [out, r].
    let bytes = std::fs::read(dir.path().join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut expected = std::collections::BTreeMap::new();
    for (path, linear) in lora::linears(&adapted) {
        if linear.lora.is_none() {
            continue; // lm_head is not a default target
        }
        let [d_in, d_out] = linear.weight.val().dims();
        expected.insert(
            format!("base_model.model.{path}.lora_A.weight"),
            vec![4, d_in],
        );
        expected.insert(
            format!("base_model.model.{path}.lora_B.weight"),
            vec![d_out, 4],
        );
    }
    let found: std::collections::BTreeMap<String, Vec<usize>> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.shape().to_vec()))
        .collect();
    assert_eq!(found, expected);

    let (loaded, read) = peft::load_adapter(tiny::<Cpu>(2, DType::F32), dir.path()).unwrap();
    assert_eq!(read.to_lora(), cfg);
    assert_eq!(logits(&loaded), unmerged, "a saved adapter loads bit-exact");
    assert_eq!(
        logits(&lora::remove(loaded)),
        base,
        "adapters off is the base"
    );
}

/// Rewrite `adapter_config.json` of `dir` through `edit`.
fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("adapter_config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, v.to_string()).unwrap();
}

#[test]
fn bad_adapters_get_errors_naming_the_key() {
    let cfg = LoraConfig {
        target_modules: vec!["q_proj".into(), "down_proj".into()],
        ..lora_config(4, 8.0)
    };
    let adapted = lora::attach(tiny::<Cpu>(2, DType::F32), &cfg, 3).unwrap();
    let saved = tempfile::tempdir().unwrap();
    peft::save_adapter(&adapted, saved.path(), &cfg, None).unwrap();
    let load = |edit: &dyn Fn(&mut serde_json::Value)| {
        let dir = tempfile::tempdir().unwrap();
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::copy(saved.path().join(f), dir.path().join(f)).unwrap();
        }
        edit_config(dir.path(), edit);
        peft::load_adapter(tiny::<Cpu>(2, DType::F32), dir.path()).map(|_| ())
    };

    // Another rank than the tensors: the first key whose shape does not fit is named.
    match load(&|v| v["r"] = 8.into()) {
        Err(Error::TensorShape {
            key,
            expected,
            found,
            ..
        }) => {
            assert!(key.ends_with("self_attn.q_proj.lora_A.weight"), "{key}");
            assert_eq!((expected[0], found[0]), (8, 4));
        }
        other => panic!("{other:?}"),
    }
    match load(&|v| v["target_modules"] = serde_json::json!(["q_proj", "qkv_proj"])) {
        Err(Error::Config { field, message, .. }) => {
            assert_eq!(field, "target_modules");
            assert!(message.contains("qkv_proj"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // The file holds down_proj tensors the config does not target.
    match load(&|v| v["target_modules"] = serde_json::json!(["q_proj"])) {
        Err(Error::UnexpectedTensor { key, .. }) => assert!(key.contains("down_proj"), "{key}"),
        other => panic!("{other:?}"),
    }
    match load(&|v| v["target_modules"] = serde_json::json!(["q_proj", "down_proj", "v_proj"])) {
        Err(Error::MissingTensor { key, .. }) => {
            assert_eq!(
                key,
                "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight"
            )
        }
        other => panic!("{other:?}"),
    }
    match load(&|v| v["target_modules"] = serde_json::json!(["q_proj", "down_proj", "lm_head"])) {
        Err(Error::MissingTensor { key, .. }) => {
            assert_eq!(key, "base_model.model.lm_head.lora_A.weight")
        }
        other => panic!("{other:?}"),
    }
    // A tied model has no lm_head to adapt.
    let mut tied = tiny_config();
    tied.tie_word_embeddings = true;
    let tied = DiffusionLm::<Cpu>::init_with(&tied, &Default::default(), 0, DType::F32);
    let head = LoraConfig {
        target_modules: vec!["lm_head".into()],
        ..cfg.clone()
    };
    match lora::attach(tied, &head, 0) {
        Err(Error::Config { field, .. }) => assert_eq!(field, "lora.target_modules"),
        other => panic!("{:?}", other.err()),
    }
    match load(&|v| v["use_dora"] = true.into()) {
        Err(Error::Config { field, .. }) => assert_eq!(field, "use_dora"),
        other => panic!("{other:?}"),
    }
    // An adapter of another rank than the training config.
    let read = AdapterConfig::load(saved.path()).unwrap();
    match read.check_matches(
        &LoraConfig {
            r: 16,
            ..cfg.clone()
        },
        saved.path(),
    ) {
        Err(Error::Config { field, .. }) => assert_eq!(field, "r"),
        other => panic!("{other:?}"),
    }
    read.check_matches(&cfg, saved.path()).unwrap();

    // The training config's own checks name the `lora.*` field.
    for (set, field) in [
        (
            "lora.target_modules=[\"q_proj\", \"attn\"]",
            "lora.target_modules",
        ),
        ("lora.alpha=0", "lora.alpha"),
        ("lora.dropout=1.5", "lora.dropout"),
    ] {
        let overrides = vec!["lora.r=4".to_string(), set.to_string()];
        match TrainConfig::from_toml_str("", &overrides, None) {
            Err(Error::Config { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{set}: {other:?}"),
        }
    }
}

/// The shared toy config with LoRA r = 4 (α = 8) and a larger lr, plus `overrides`.
fn train_config(overrides: &[&str]) -> TrainConfig {
    let mut all = vec!["lora.r=4", "lora.alpha=8.0", "optimizer.lr=1e-2"];
    all.extend_from_slice(overrides);
    common::train_config(&all)
}

fn trainer(config: TrainConfig, dtype: DType) -> Trainer<CpuAutodiff> {
    Trainer::from_parts(
        config,
        tiny(7, dtype),
        byte_level_tokenizer().unwrap(),
        tasks(),
        letters_reward(),
        Default::default(),
    )
    .unwrap()
}

/// Four rounds straight against two, a checkpoint, a restore and two more.
fn lora_resume_is_bit_exact(overrides: &[&str], dtype: DType, reference_files: bool) {
    let config = train_config(overrides);
    let mut straight = trainer(config.clone(), dtype);
    let straight_stats: Vec<_> = (0..4).map(|_| straight.step().unwrap()).collect();

    let run = tempfile::tempdir().unwrap();
    let mut first = trainer(config.clone(), dtype);
    first.step().unwrap();
    first.step().unwrap();
    let ckpt = first.save_checkpoint(run.path()).unwrap();
    for file in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "optimizer.safetensors",
        "trainer_state.json",
        "config.resolved.toml",
    ] {
        assert!(ckpt.join(file).exists(), "checkpoint lacks {file}");
    }
    assert!(
        !ckpt.join("model.safetensors").exists(),
        "the frozen base is not copied"
    );
    assert_eq!(
        ckpt.join("reference/adapter_model.safetensors").exists(),
        reference_files
    );
    drop(first);

    let mut resumed = trainer(config, dtype);
    resumed.restore(&ckpt).unwrap();
    let resumed_stats: Vec<_> = (0..2).map(|_| resumed.step().unwrap()).collect();
    assert_eq!(params(resumed.policy()), params(straight.policy()));
    assert_eq!(
        params(resumed.reference().unwrap()),
        params(straight.reference().unwrap())
    );
    for (a, b) in straight_stats[2..].iter().zip(&resumed_stats) {
        assert_eq!(a.loss.to_bits(), b.loss.to_bits());
        assert_eq!(a.reward, b.reward);
    }

    // Only the adapters moved; the base kept its dtype and values, and no f32 copy was made.
    let base = params(&tiny::<CpuAutodiff>(7, dtype));
    assert_eq!(params(&lora::remove(straight.policy().clone())), base);
    assert_eq!(straight.policy().dtype(), dtype);
    let trained = straight.policy().layers[0]
        .self_attn
        .q_proj
        .lora
        .as_ref()
        .unwrap();
    assert_eq!(trained.lora_b.val().dtype(), DType::F32);
    assert!(
        host(trained.lora_b.val()).iter().any(|&v| v != 0.0),
        "B moved off zero"
    );
    assert!(straight_stats
        .iter()
        .all(|s| s.grad_norm.is_finite() && s.grad_norm > 0.0));
}

#[test]
fn lora_training_writes_peft_checkpoints_and_resumes_bit_exact() {
    // sync_ref_model (the default): the reference keeps its own, soft-synced adapters.
    lora_resume_is_bit_exact(&[], DType::F32, true);
}

#[test]
fn lora_on_a_bf16_base_with_dropout_and_a_fixed_reference_resumes_bit_exact() {
    let _rng = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let overrides = ["lora.dropout=0.1", "grpo.sync_ref_model=false"];
    lora_resume_is_bit_exact(&overrides, DType::BF16, false);
    // Without the sync the reference is the base itself: no adapters, no copy.
    let t = trainer(train_config(&overrides), DType::BF16);
    let reference = t.reference().unwrap();
    assert!(!lora::has_adapters(reference));
    assert_eq!(params(reference), params(&tiny::<Cpu>(7, DType::BF16)));
}

#[test]
fn a_lora_checkpoint_refuses_a_config_of_another_rank_or_none() {
    let run = tempfile::tempdir().unwrap();
    let mut t = trainer(train_config(&[]), DType::F32);
    t.step().unwrap();
    let ckpt = t.save_checkpoint(run.path()).unwrap();
    let mut other = trainer(train_config(&["lora.r=8"]), DType::F32);
    match other.restore(&ckpt) {
        Err(Error::Config { field, .. }) => assert_eq!(field, "r"),
        other => panic!("{:?}", other.err()),
    }
    let mut full = trainer(train_config(&["lora.r=0"]), DType::F32);
    match full.restore(&ckpt) {
        Err(Error::Checkpoint { message, .. }) => assert!(message.contains("LoRA"), "{message}"),
        other => panic!("{:?}", other.err()),
    }
}

fn fixture(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

/// A named tensor of a fixture's `expected.safetensors`, as host values.
fn expected_tensor(dir: &Path, key: &str) -> (Vec<usize>, Vec<u8>) {
    let bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(key).unwrap();
    (t.shape().to_vec(), t.data().to_vec())
}

/// Max |Δ| between `model`'s logits and peft's over the parity cases of `dir`.
fn max_diff_to_peft(model: &DiffusionLm<Cpu>, dir: &Path) -> f32 {
    let dev = Default::default();
    let ints = |key: &str| {
        let (shape, data) = expected_tensor(dir, key);
        let v: Vec<i64> = data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        Tensor::<Cpu, 2, Int>::from_data(TensorData::new(v, [shape[0], shape[1]]), &dev)
    };
    let mut worst = 0f32;
    for case in ["single", "batch", "padded"] {
        let ids = ints(&format!("{case}.input_ids"));
        let mask = (case == "padded").then(|| ints(&format!("{case}.attention_mask")));
        let (_, data) = expected_tensor(dir, &format!("{case}.logits_f32"));
        let want: Vec<f32> = data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        worst = worst.max(max_diff(&host(model.forward(ids, mask)), &want));
    }
    worst
}

#[test]
fn adapters_made_by_peft_load_unmerged_and_merge_like_peft() {
    let base_dir = fixture("parity/tied");
    for name in ["adapter", "adapter_rslora"] {
        let dir = fixture(&format!("lora/{name}"));
        let base = coupled_grpo::model::load_pretrained::<Cpu>(&base_dir, &Default::default());
        let (adapted, config) = peft::load_adapter(base.unwrap(), &dir).unwrap();
        assert_eq!(config.peft_type, "LORA");
        let unmerged = max_diff_to_peft(&adapted, &dir);
        assert!(
            unmerged < 1e-4,
            "{name}: unmerged logits differ from peft's by {unmerged}"
        );
        let merged = max_diff_to_peft(&lora::merge(adapted), &dir);
        assert!(
            merged < 1e-4,
            "{name}: merged logits differ from peft's by {merged}"
        );
    }
    // Our merge of peft's adapter equals peft's merge_and_unload weights.
    let dir = fixture("lora/adapter");
    let base = coupled_grpo::model::load_pretrained::<Cpu>(&base_dir, &Default::default()).unwrap();
    let ours = lora::merge(peft::load_adapter(base, &dir).unwrap().0);
    let peft_merged = coupled_grpo::model::load_pretrained::<Cpu>(
        fixture("lora/adapter_merged"),
        &Default::default(),
    )
    .unwrap();
    let worst = params(&ours)
        .iter()
        .zip(params(&peft_merged))
        .map(|(a, b)| max_diff(a, &b))
        .fold(0.0, f32::max);
    assert!(worst < 1e-6, "merged weights differ from peft's by {worst}");
}

/// The keys and shapes peft's `get_peft_model_state_dict` produces for the fixture's config
/// (recorded by gen_lora.py) are exactly what we write for the same config.
#[test]
fn adapters_we_write_have_the_keys_and_shapes_peft_writes() {
    let rules: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("lora/peft_rules.json")).unwrap())
            .unwrap();
    let base_dir = fixture("parity/tied");
    for name in ["adapter", "adapter_rslora"] {
        let dir = fixture(&format!("lora/{name}"));
        let config = AdapterConfig::load(&dir).unwrap().to_lora();
        let base = coupled_grpo::model::load_pretrained::<Cpu>(&base_dir, &Default::default());
        let ours = lora::attach(base.unwrap(), &config, 0).unwrap();
        let out = tempfile::tempdir().unwrap();
        peft::save_adapter(&ours, out.path(), &config, None).unwrap();
        let bytes = std::fs::read(out.path().join("adapter_model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let found: std::collections::BTreeMap<String, Vec<u64>> = st
            .tensors()
            .into_iter()
            .map(|(k, v)| (k, v.shape().iter().map(|&d| d as u64).collect()))
            .collect();
        let keys = peft_state_dict_keys(&rules, name);
        assert_eq!(found, keys, "{name}");
    }
}

/// `{key: shape}` of one adapter in peft_rules.json.
fn peft_state_dict_keys(
    rules: &serde_json::Value,
    name: &str,
) -> std::collections::BTreeMap<String, Vec<u64>> {
    let saved = &rules["adapters"][name]["saved_state_dict"]["keys_and_shapes"];
    let keys = saved
        .as_object()
        .unwrap_or_else(|| panic!("peft_rules.json: no keys_and_shapes for {name}"));
    keys.iter()
        .map(|(k, v)| {
            let shape = v
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            (k.clone(), shape)
        })
        .collect()
}

/// `model merge-lora` and `model forward --adapter` (unmerged) print the same logits, and
/// those are peft's.
#[test]
fn cli_merge_lora_and_forward_with_adapter_agree() {
    let bin = env!("CARGO_BIN_EXE_coupled-grpo");
    let run = |args: &[&str]| {
        let o = std::process::Command::new(bin).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{args:?}: {stderr}");
        String::from_utf8(o.stdout).unwrap()
    };
    let base = fixture("parity/tied");
    let adapter = fixture("lora/adapter_rslora");
    let out = tempfile::tempdir().unwrap();
    let merged = out.path().join("merged");
    let (base, adapter, merged) = (
        base.to_str().unwrap(),
        adapter.to_str().unwrap(),
        merged.to_str().unwrap(),
    );
    let said = run(&[
        "model",
        "merge-lora",
        "--base",
        base,
        "--adapter",
        adapter,
        "--out",
        merged,
    ]);
    assert!(said.contains("6 adapted layers"), "{said}");
    let inspected = run(&["model", "inspect", adapter]);
    assert!(
        inspected.contains("r 2 · lora_alpha 4") && inspected.contains("(rsLoRA)"),
        "{inspected}"
    );
    let ids = "3 17 42 5 99 7";
    let logits = |args: &[&str]| -> Vec<f32> {
        let v: serde_json::Value = serde_json::from_str(&run(args)).unwrap();
        v["logits"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| {
                row.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let unmerged = logits(&[
        "model",
        "forward",
        "--model",
        base,
        "--adapter",
        adapter,
        "--ids",
        ids,
        "--json",
    ]);
    let folded = logits(&[
        "model", "forward", "--model", merged, "--ids", ids, "--json",
    ]);
    let plain = logits(&["model", "forward", "--model", base, "--ids", ids, "--json"]);
    assert!(
        max_diff(&unmerged, &folded) < 1e-4,
        "{}",
        max_diff(&unmerged, &folded)
    );
    assert!(
        max_diff(&unmerged, &plain) > 1e-2,
        "the adapter changes the logits"
    );
    // A bad adapter is named, not a panic.
    let o = std::process::Command::new(bin)
        .args([
            "model",
            "forward",
            "--model",
            base,
            "--adapter",
            base,
            "--ids",
            ids,
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("adapter_config.json"));
}

/// `lora_dropout` masks the adapter input in training (autodiff) forwards only: π_old, π_ref
/// and rollouts (inner backend) are deterministic.
#[test]
fn dropout_applies_to_training_forwards_only() {
    use burn::module::AutodiffModule;
    let _rng = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = LoraConfig {
        dropout: 0.5,
        ..lora_config(4, 8.0)
    };
    let adapted = randomise_b(lora::attach(tiny::<CpuAutodiff>(2, DType::F32), &cfg, 0).unwrap());
    assert_ne!(
        logits(&adapted),
        logits(&adapted),
        "each training forward draws a new mask"
    );
    let inner = adapted.valid();
    assert_eq!(logits(&inner), logits(&inner));
    // Without dropout the inner model is exactly its merge.
    let merged = logits(&lora::merge(inner.clone()));
    assert!(max_diff(&logits(&inner), &merged) < 1e-5);
}
