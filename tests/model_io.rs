//! HF directory I/O: round trips, typed errors that name the key/field, and the `model` CLI.

use std::path::Path;
use std::process::Command;

use burn::tensor::{DType, Int, Tensor, TensorData};
use coupled_grpo::backend::Cpu;
use coupled_grpo::model::{
    self, init_directory, load_pretrained, load_pretrained_with, save_pretrained, DiffusionLm,
    ModelConfig, SaveDtype,
};
use coupled_grpo::Error;

fn tiny_dir(tmp: &Path) -> std::path::PathBuf {
    let config = ModelConfig::preset("tiny").unwrap();
    init_directory::<Cpu>(&config, tmp.join("tiny"), None, 7, &Default::default()).unwrap()
}

fn ids() -> Tensor<Cpu, 2, Int> {
    Tensor::from_data(
        TensorData::new(vec![5i64, 9, 3, 3, 200, 17], [1, 6]),
        &Default::default(),
    )
}

fn max_diff(a: Tensor<Cpu, 3>, b: Tensor<Cpu, 3>) -> f32 {
    (a - b).abs().max().into_scalar()
}

#[test]
fn save_then_load_gives_identical_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_dir(tmp.path());
    let a = load_pretrained::<Cpu>(&dir, &Default::default()).unwrap();
    save_pretrained(&a, tmp.path().join("copy"), SaveDtype::F32).unwrap();
    let b = load_pretrained::<Cpu>(tmp.path().join("copy"), &Default::default()).unwrap();
    assert_eq!(
        max_diff(a.forward(ids(), None), b.forward(ids(), None)),
        0.0
    );
    // Same seed, same weights; another seed, other weights.
    let config = ModelConfig::preset("tiny").unwrap();
    let c = DiffusionLm::<Cpu>::init_with(&config, &Default::default(), 7, DType::F32);
    assert_eq!(
        max_diff(a.forward(ids(), None), c.forward(ids(), None)),
        0.0
    );
    let d = DiffusionLm::<Cpu>::init_with(&config, &Default::default(), 8, DType::F32);
    assert!(max_diff(a.forward(ids(), None), d.forward(ids(), None)) > 1e-3);
}

#[test]
fn bf16_checkpoint_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_dir(tmp.path());
    let a = load_pretrained_with::<Cpu>(&dir, &Default::default(), DType::BF16).unwrap();
    save_pretrained(&a, tmp.path().join("bf16"), SaveDtype::Bf16).unwrap();
    let text = std::fs::read_to_string(tmp.path().join("bf16/config.json")).unwrap();
    assert!(text.contains("bfloat16"));
    let b = load_pretrained_with::<Cpu>(tmp.path().join("bf16"), &Default::default(), DType::BF16)
        .unwrap();
    let diff = max_diff(
        a.forward(ids(), None).cast(DType::F32),
        b.forward(ids(), None).cast(DType::F32),
    );
    assert_eq!(diff, 0.0, "bf16 values survive a bf16 save exactly");
}

/// Rewrite model.safetensors with `edit` applied to the (key -> (shape, f32 data)) map.
fn edit_weights(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<u8>)>)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(k, s, d)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                    .unwrap(),
            )
        })
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn missing_tensor_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_dir(tmp.path());
    edit_weights(&dir, |t| {
        t.retain(|(k, _, _)| k != "model.layers.1.self_attn.k_proj.bias")
    });
    match load_pretrained::<Cpu>(&dir, &Default::default()) {
        Err(Error::MissingTensor { key, expected, .. }) => {
            assert_eq!(key, "model.layers.1.self_attn.k_proj.bias");
            assert_eq!(expected, vec![32]);
        }
        other => panic!("expected MissingTensor, got {other:?}"),
    }
}

#[test]
fn unexpected_tensor_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_dir(tmp.path());
    edit_weights(&dir, |t| {
        t.push(("model.layers.9.extra".into(), vec![2], vec![0u8; 8]))
    });
    let err = load_pretrained::<Cpu>(&dir, &Default::default()).unwrap_err();
    assert!(
        matches!(&err, Error::UnexpectedTensor { key, .. } if key == "model.layers.9.extra"),
        "{err}"
    );
}

#[test]
fn wrong_shape_names_key_and_both_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_dir(tmp.path());
    edit_weights(&dir, |t| {
        let e = t
            .iter_mut()
            .find(|(k, _, _)| k == "model.norm.weight")
            .unwrap();
        e.1 = vec![32];
        e.2.truncate(32 * 4);
    });
    let err = load_pretrained::<Cpu>(&dir, &Default::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::TensorShape { .. }), "{msg}");
    assert!(
        msg.contains("model.norm.weight") && msg.contains("[32]") && msg.contains("[64]"),
        "{msg}"
    );
}

#[test]
fn config_errors_name_the_field() {
    let base = serde_json::to_value(ModelConfig::preset("tiny").unwrap()).unwrap();
    let mut unknown = base.clone();
    unknown["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    let err = ModelConfig::from_json_str(&unknown.to_string(), None).unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedArchitecture { architecture, .. } if architecture == "LlamaForCausalLM")
    );

    let mut missing = base.clone();
    missing.as_object_mut().unwrap().remove("hidden_size");
    let err = ModelConfig::from_json_str(&missing.to_string(), None).unwrap_err();
    assert!(err.to_string().contains("hidden_size"), "{err}");

    let mut bad_heads = base.clone();
    bad_heads["num_key_value_heads"] = serde_json::json!(3);
    let err = ModelConfig::from_json_str(&bad_heads.to_string(), None).unwrap_err();
    assert!(err.to_string().contains("num_key_value_heads"), "{err}");

    let mut rope = base;
    rope["rope_parameters"] = serde_json::json!({"rope_type": "yarn", "rope_theta": 1e6});
    let err = ModelConfig::from_json_str(&rope.to_string(), None).unwrap_err();
    assert!(err.to_string().contains("yarn"), "{err}");
}

#[test]
fn rope_parameters_theta_overrides_the_default() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity/untied_sharded");
    let c = ModelConfig::from_file(dir.join("config.json")).unwrap();
    assert_eq!(c.rope_theta, 1e6);
}

#[test]
fn missing_directory_is_a_clear_error() {
    let err = load_pretrained::<Cpu>("/nonexistent/model", &Default::default()).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/model"), "{err}");
}

#[test]
fn tokenizer_must_agree_with_the_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_dir(tmp.path());
    let config = ModelConfig::from_file(dir.join("config.json")).unwrap();
    let tok = model::load_tokenizer(&dir, &config).unwrap();
    assert_eq!(tok.special().mask, 3);
    let mut other = config;
    other.mask_token_id = Some(7);
    let err = model::load_tokenizer(&dir, &other).unwrap_err();
    assert!(err.to_string().contains("mask_token_id 7"), "{err}");
}

#[test]
fn cli_init_inspect_forward() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m");
    let bin = env!("CARGO_BIN_EXE_coupled-grpo");
    let run = |args: &[&str]| {
        let o = Command::new(bin).args(args).output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).to_string(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let (ok, _, err) = run(&[
        "model",
        "init",
        "--preset",
        "tiny",
        "--out",
        out.to_str().unwrap(),
        "--seed",
        "3",
    ]);
    assert!(ok, "{err}");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(out.join(f).exists(), "{f}");
    }
    let (ok, text, err) = run(&["model", "inspect", out.to_str().unwrap()]);
    assert!(ok, "{err}");
    let params = ModelConfig::preset("tiny")
        .unwrap()
        .num_parameters()
        .to_string();
    assert!(text.contains(&params) && text.contains("F32"), "{text}");

    let (ok, json, err) = run(&[
        "model",
        "forward",
        "--model",
        out.to_str().unwrap(),
        "--ids",
        "5 9 3",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["shape"], serde_json::json!([1, 3, 512]));
    // The CLI's numbers are the library's.
    let m = load_pretrained::<Cpu>(&out, &Default::default()).unwrap();
    let ids = Tensor::<Cpu, 2, Int>::from_data(
        TensorData::new(vec![5i64, 9, 3], [1, 3]),
        &Default::default(),
    );
    let want: Vec<f32> = m
        .forward(ids, None)
        .into_data()
        .convert::<f32>()
        .into_vec()
        .unwrap();
    let got: Vec<f32> = v["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
        })
        .collect();
    assert_eq!(got.len(), want.len());
    assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-5));

    let (ok, _, err) = run(&[
        "model",
        "forward",
        "--model",
        out.to_str().unwrap(),
        "--ids",
        "5 x",
    ]);
    assert!(!ok && err.contains("`x` is not a token id"), "{err}");
    let (ok, _, err) = run(&[
        "model",
        "inspect",
        tmp.path().join("nope").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("nope"), "{err}");
}
