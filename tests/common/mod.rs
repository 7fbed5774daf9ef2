//! Helpers shared by the test crates (`tests/grpo.rs`, `tests/lora.rs`, the wgpu tests): the tiny
//! model, a deterministic reward, toy tasks, a parameter dump and seeded random values. Each test
//! crate uses a part of them.
#![allow(dead_code)]

use std::sync::Arc;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use coupled_grpo::data::{Task, TaskSource};
use coupled_grpo::grpo::{Rewards, TrainConfig, WeightedReward};
use coupled_grpo::model::{DiffusionLm, ModelConfig};
use coupled_grpo::reward::RewardFn;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The `tiny` preset with larger initial weights (visible changes in a few steps).
pub fn tiny_config() -> ModelConfig {
    let mut c = ModelConfig::preset("tiny").unwrap();
    c.initializer_range = 0.1;
    c
}

pub fn tiny<B: Backend>(seed: u64, dtype: DType) -> DiffusionLm<B> {
    DiffusionLm::init_with(&tiny_config(), &Default::default(), seed, dtype)
}

/// `n` values uniform in `[-scale, scale)`, the same for the same seed.
pub fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// `values` on backend `B` with `shape`.
pub fn tensor<B: Backend, const D: usize>(
    values: &[f32],
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), device)
}

/// Host f32 values of a tensor of any float dtype.
pub fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.cast(DType::F32)
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap()
}

/// Every float parameter of a model, flattened, in visit order.
pub fn params<B: Backend>(m: &DiffusionLm<B>) -> Vec<Vec<f32>> {
    struct V(Vec<Vec<f32>>);
    impl<B: Backend> ModuleVisitor<B> for V {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            self.0.push(host(p.val()));
        }
    }
    let mut v = V(Vec::new());
    m.visit(&mut v);
    v.0
}

/// A deterministic reward: the fraction of lowercase ASCII letters in the completion.
pub struct Letters;

impl RewardFn for Letters {
    fn name(&self) -> &str {
        "letters"
    }
    fn score(
        &self,
        completions: &[String],
        _tasks: &[&Task],
    ) -> coupled_grpo::Result<Vec<Option<f32>>> {
        Ok(completions
            .iter()
            .map(|c| {
                let lower = c.chars().filter(|ch| ch.is_ascii_lowercase()).count();
                Some(lower as f32 / c.chars().count().max(1) as f32)
            })
            .collect())
    }
}

/// [`Letters`] as the trainer's only reward.
pub fn letters_reward() -> Rewards {
    Rewards::Functions(vec![WeightedReward {
        reward: Arc::new(Letters),
        weight: 1.0,
    }])
}

/// Five toy tasks (`f{i}` returns `i`).
pub fn tasks() -> Vec<Task> {
    (0..5)
        .map(|i| Task {
            id: format!("toy/{i}"),
            question: format!("Write a function f{i} that returns {i}."),
            tests: vec![format!("assert f{i}() == {i}")],
            entry_point: None,
            reference_solution: None,
            source: TaskSource::Synthetic,
        })
        .collect()
}

/// A small training config for the tiny model and the toy tasks, with `section.key=value`
/// overrides.
pub fn train_config(overrides: &[&str]) -> TrainConfig {
    let base = r#"
[rollout]
max_new_tokens = 8
steps = 8
num_completions = 4
max_prompt_length = 24
temperature = 1.0
[grpo]
prompts_per_step = 2
num_iterations = 2
gradient_accumulation_steps = 2
micro_batch_rows = 3
beta = 0.05
ref_sync_steps = 3
[optimizer]
lr = 1e-3
warmup_steps = 0
[logging]
progress = false
completions_every = 0
"#;
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    TrainConfig::from_toml_str(base, &overrides, None).unwrap()
}
