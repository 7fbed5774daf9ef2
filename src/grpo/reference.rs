//! The frozen reference policy and its TR-DPO soft sync (spec §1.5: TRL's
//! `SyncRefModelCallback`, `θ_ref ← α·θ + (1−α)·θ_ref` every N optimizer steps).

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{backend::Backend, ElementConversion, Tensor};

use crate::model::DiffusionLm;

/// Every float parameter of `model`, flattened, in visit order.
struct Collect<B: Backend> {
    params: Vec<Tensor<B, 1>>,
}

impl<B: Backend> ModuleVisitor<B> for Collect<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.params.push(param.val().flatten(0, D - 1));
    }
}

/// Mixes each visited parameter with the next collected one.
struct Mix<B: Backend> {
    source: std::vec::IntoIter<Tensor<B, 1>>,
    alpha: f64,
}

impl<B: Backend> ModuleMapper<B> for Mix<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let policy = self
            .source
            .next()
            .expect("reference and policy have the same parameters");
        let alpha = self.alpha;
        param.map(|r| {
            let shape = r.shape();
            let mixed = policy.reshape(shape) * alpha + r * (1.0 - alpha);
            // The reference is never trained.
            mixed.detach()
        })
    }
}

/// `reference ← α·policy + (1−α)·reference`, parameter by parameter (same architecture).
/// `α = 1` is a hard copy (the paper's Algorithm 1).
pub fn soft_update<B: Backend>(
    reference: DiffusionLm<B>,
    policy: &DiffusionLm<B>,
    alpha: f64,
) -> DiffusionLm<B> {
    let mut collect = Collect { params: Vec::new() };
    policy.visit(&mut collect);
    let mut mix = Mix {
        source: collect.params.into_iter(),
        alpha,
    };
    reference.map(&mut mix)
}

/// True when every float parameter is finite (checked before a checkpoint is written).
pub fn all_finite<B: Backend>(model: &DiffusionLm<B>) -> bool {
    let mut collect = Collect { params: Vec::new() };
    model.visit(&mut collect);
    let flags: Vec<Tensor<B, 1>> = collect
        .params
        .into_iter()
        .map(|p| p.is_finite().bool_not().float().sum())
        .collect();
    if flags.is_empty() {
        return true;
    }
    Tensor::cat(flags, 0).sum().into_scalar().elem::<f32>() == 0.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;
    use crate::model::ModelConfig;
    use burn::tensor::DType;

    #[test]
    fn soft_update_mixes_every_parameter() {
        let config = ModelConfig::preset("tiny").unwrap();
        let dev = Default::default();
        let a = DiffusionLm::<Cpu>::init_with(&config, &dev, 1, DType::F32);
        let b = DiffusionLm::<Cpu>::init_with(&config, &dev, 2, DType::F32);
        let wa = a.embed_tokens.val().into_data().to_vec::<f32>().unwrap();
        let wb = b.embed_tokens.val().into_data().to_vec::<f32>().unwrap();
        let mixed = soft_update(b, &a, 0.6);
        let wm = mixed
            .embed_tokens
            .val()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        for i in [0, 17, wm.len() - 1] {
            assert!((wm[i] - (0.6 * wa[i] + 0.4 * wb[i])).abs() < 1e-6);
        }
        let norm = mixed.layers[1]
            .input_layernorm
            .weight
            .val()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert!(
            norm.iter().all(|&x| (x - 1.0).abs() < 1e-6),
            "ones mixed with ones stay ones"
        );
        assert!(all_finite(&mixed));
        let copy = soft_update(mixed, &a, 1.0);
        assert_eq!(
            copy.embed_tokens.val().into_data().to_vec::<f32>().unwrap(),
            wa
        );
    }
}
