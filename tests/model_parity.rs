//! Logit parity with an independent implementation: HF transformers' Qwen2 with a bidirectional
//! mask (fixtures from tests/fixtures/gen_parity.py), f32 and bf16, tied and untied (sharded).

use std::path::{Path, PathBuf};

use burn::tensor::{DType, Int, Tensor, TensorData};
use coupled_grpo::backend::Cpu;
use coupled_grpo::model::{load_pretrained_with, DiffusionLm};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parity")
        .join(name)
}

struct Expected {
    bytes: Vec<u8>,
}

impl Expected {
    fn load(dir: &Path) -> Self {
        Self {
            bytes: std::fs::read(dir.join("expected.safetensors")).unwrap(),
        }
    }
    fn get(&self, key: &str) -> Option<(Vec<usize>, Vec<u8>, safetensors::Dtype)> {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(key).ok()?;
        Some((t.shape().to_vec(), t.data().to_vec(), t.dtype()))
    }
    fn ints(&self, key: &str) -> Option<Tensor<Cpu, 2, Int>> {
        let (shape, data, dtype) = self.get(key)?;
        assert_eq!(dtype, safetensors::Dtype::I64);
        let v: Vec<i64> = data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        Some(Tensor::from_data(
            TensorData::new(v, [shape[0], shape[1]]),
            &Default::default(),
        ))
    }
    fn floats(&self, key: &str) -> (Vec<usize>, Vec<f32>) {
        let (shape, data, dtype) = self.get(key).unwrap();
        assert_eq!(dtype, safetensors::Dtype::F32);
        (
            shape,
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        )
    }
}

/// Max |Δ| between our logits and the reference over every case; also the reference's scale.
fn max_abs_diff(model: &DiffusionLm<Cpu>, expected: &Expected, suffix: &str) -> (f32, f32) {
    let mut worst = 0f32;
    let mut scale = 0f32;
    for case in ["single", "batch", "padded"] {
        let ids = expected.ints(&format!("{case}.input_ids")).unwrap();
        let mask = expected.ints(&format!("{case}.attention_mask"));
        let logits = model.forward(ids, mask);
        let (shape, want) = expected.floats(&format!("{case}.logits_{suffix}"));
        assert_eq!(logits.dims().to_vec(), shape, "{case}: logits shape");
        let got: Vec<f32> = logits
            .cast(DType::F32)
            .into_data()
            .convert::<f32>()
            .into_vec()
            .unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!(g.is_finite(), "{case}: non-finite logit");
            worst = worst.max((g - w).abs());
            scale = scale.max(w.abs());
        }
    }
    (worst, scale)
}

fn check(name: &str) {
    let dir = fixture(name);
    let expected = Expected::load(&dir);
    let device = Default::default();

    let model = load_pretrained_with::<Cpu>(&dir, &device, DType::F32).unwrap();
    let (diff, scale) = max_abs_diff(&model, &expected, "f32");
    assert!(
        scale > 0.5,
        "{name}: reference logits too small to be a meaningful check ({scale})"
    );
    eprintln!("{name}: f32 max |Δlogit| = {diff:.2e} (logit scale {scale:.2})");
    assert!(diff <= 1e-4, "{name}: f32 max |Δlogit| = {diff} > 1e-4");

    let model = load_pretrained_with::<Cpu>(&dir, &device, DType::BF16).unwrap();
    let (diff, scale) = max_abs_diff(&model, &expected, "bf16");
    eprintln!("{name}: bf16 max |Δlogit| = {diff:.2e}");
    // bf16 keeps 8 mantissa bits; two implementations round differently along the way.
    assert!(
        diff <= 0.06 * scale.max(1.0),
        "{name}: bf16 max |Δlogit| = {diff} (scale {scale})"
    );
}

#[test]
fn tied_head_matches_transformers() {
    check("tied");
}

#[test]
fn untied_sharded_matches_transformers() {
    check("untied_sharded");
}

#[test]
fn padded_row_matches_the_same_prompt_alone() {
    // Left padding must not change a row's logits at its real positions.
    let dir = fixture("untied_sharded");
    let device = Default::default();
    let model = load_pretrained_with::<Cpu>(&dir, &device, DType::F32).unwrap();
    let expected = Expected::load(&dir);
    let ids = expected.ints("padded.input_ids").unwrap();
    let mask = expected.ints("padded.attention_mask").unwrap();
    let batch = model.forward(ids.clone(), Some(mask));
    // Row 2 has 7 pads: run its 4 real tokens alone, unpadded.
    let alone = model.forward(ids.slice([2..3, 7..11]), None);
    let padded_row = batch.slice([2..3, 7..11]);
    let diff = (alone - padded_row).abs().max().into_scalar();
    assert!(diff <= 1e-4, "padded vs alone: {diff}");
}
