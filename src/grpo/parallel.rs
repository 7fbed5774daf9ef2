//! Data parallelism over several devices, first pieces: the `--devices` list and the gradient
//! all-reduce over Burn's collective (`burn-collective`: blocking, one thread per peer, NCCL
//! between CUDA devices). The trainer itself still runs on one device.
//!
//! Why not `GradientsParams::all_reduce`: it pairs tensors by sorted `ParamId`, which only agree
//! between replicas forked from one model, and a peer without some gradient makes the peers
//! issue different sequences of calls (a wrong pairing or a deadlock). [`all_reduce_grads`]
//! walks the model's trainable parameters in visit order instead (the same on every replica and
//! every process) and sends zeros for a missing gradient; under LoRA only the adapters are
//! trainable, so only they travel.

use std::str::FromStr;

use burn::collective::{self, PeerId, ReduceOperation};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;

use crate::model::DiffusionLm;
use crate::{Error, Result};

/// What `--devices` names: `cpu`, `cpu:N` (N workers on the CPU), `cuda`, `cuda:0,1,2,3`,
/// `cuda:all`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// `N` workers sharing the CPU (threads of one process).
    Cpu(usize),
    /// CUDA devices by index, in the order given (no duplicates).
    Cuda(Vec<usize>),
    /// Every CUDA device of the machine (resolved when the backend starts).
    CudaAll,
}

impl DeviceSpec {
    /// Workers, when known without asking the driver (`cuda:all` is not).
    pub fn workers(&self) -> Option<usize> {
        match self {
            DeviceSpec::Cpu(n) => Some(*n),
            DeviceSpec::Cuda(ids) => Some(ids.len()),
            DeviceSpec::CudaAll => None,
        }
    }

    /// A round of `prompts` prompts must give every worker at least one.
    pub fn check_prompts(&self, prompts: usize) -> Result<()> {
        match self.workers() {
            Some(n) if n > prompts => Err(Error::config(
                "devices",
                format!("{n} workers but grpo.prompts_per_step = {prompts}: every worker needs a prompt"),
            )),
            _ => Ok(()),
        }
    }

    /// Refuse CUDA in a build without the `cuda` feature.
    pub fn check_build(&self) -> Result<()> {
        if matches!(self, DeviceSpec::Cpu(_)) || cfg!(feature = "cuda") {
            return Ok(());
        }
        Err(Error::config(
            "devices",
            "CUDA devices need a build with `--features cuda`",
        ))
    }
}

impl FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |message: String| Error::config("devices", format!("`{s}`: {message}"));
        let (kind, list) = match s.split_once(':') {
            Some((kind, list)) => (kind, Some(list)),
            None => (s, None),
        };
        match (kind, list) {
            ("cpu", None) => Ok(DeviceSpec::Cpu(1)),
            ("cpu", Some(n)) => match n.parse::<usize>() {
                Ok(n) if n > 0 => Ok(DeviceSpec::Cpu(n)),
                _ => Err(bad("`cpu:N` needs a worker count N ≥ 1".into())),
            },
            ("cuda", None) => Ok(DeviceSpec::Cuda(vec![0])),
            ("cuda", Some("all")) => Ok(DeviceSpec::CudaAll),
            ("cuda", Some(list)) => {
                let mut ids = Vec::new();
                for item in list.split(',') {
                    let id: usize = item
                        .trim()
                        .parse()
                        .map_err(|_| bad(format!("`{item}` is not a device index")))?;
                    if ids.contains(&id) {
                        return Err(bad(format!("device {id} is listed twice")));
                    }
                    ids.push(id);
                }
                Ok(DeviceSpec::Cuda(ids))
            }
            _ => Err(bad(
                "unknown device (cpu, cpu:N, cuda, cuda:0,1,… or cuda:all)".into(),
            )),
        }
    }
}

/// Sum `grads` over all peers, parameter by parameter in `model`'s visit order (every peer
/// calls this with a replica of the same model). Trainable parameters without a gradient on
/// this peer contribute zeros, so every peer issues the same calls. Returns the summed
/// gradients of every trainable parameter.
pub fn all_reduce_grads<B: AutodiffBackend>(
    peer: PeerId,
    model: &DiffusionLm<B>,
    grads: GradientsParams,
) -> Result<GradientsParams> {
    struct Reduce<B: AutodiffBackend> {
        peer: PeerId,
        grads: GradientsParams,
        out: GradientsParams,
        error: Option<String>,
        _b: std::marker::PhantomData<B>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Reduce<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let value = param.val();
            if !value.is_require_grad() || self.error.is_some() {
                return;
            }
            let grad = self
                .grads
                .remove::<B::InnerBackend, D>(param.id)
                .unwrap_or_else(|| value.inner().zeros_like());
            let primitive = grad.into_primitive().tensor();
            match collective::all_reduce::<B::InnerBackend>(
                self.peer,
                primitive,
                ReduceOperation::Sum,
            ) {
                Ok(sum) => self.out.register::<B::InnerBackend, D>(
                    param.id,
                    Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(sum)),
                ),
                Err(e) => self.error = Some(format!("{e:?}")),
            }
        }
    }
    let mut v = Reduce::<B> {
        peer,
        grads,
        out: GradientsParams::new(),
        error: None,
        _b: std::marker::PhantomData,
    };
    model.visit(&mut v);
    match v.error {
        Some(e) => Err(Error::invalid("all_reduce", e)),
        None => Ok(v.out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Cpu, CpuAutodiff};
    use crate::model::ModelConfig;
    use burn::collective::CollectiveConfig;
    use burn::tensor::{DType, Int, TensorData};

    #[test]
    fn device_lists_parse_and_bad_ones_name_the_problem() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu(1));
        assert_eq!("cpu:2".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu(2));
        assert_eq!(
            "cuda".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Cuda(vec![0])
        );
        assert_eq!(
            "cuda:0,1,3".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Cuda(vec![0, 1, 3])
        );
        assert_eq!(
            "cuda:all".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::CudaAll
        );
        for (bad, says) in [
            ("cuda:0,1,0", "listed twice"),
            ("cpu:0", "N ≥ 1"),
            ("cpu:x", "N ≥ 1"),
            ("cuda:0,a", "not a device index"),
            ("tpu", "unknown device"),
        ] {
            match bad.parse::<DeviceSpec>() {
                Err(Error::Config { field, message, .. }) => {
                    assert_eq!(field, "devices");
                    assert!(message.contains(says), "{bad}: {message}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(DeviceSpec::Cpu(4).check_prompts(2).is_err());
        assert!(DeviceSpec::Cpu(2).check_prompts(2).is_ok());
        assert_eq!(
            DeviceSpec::Cuda(vec![0]).check_build().is_ok(),
            cfg!(feature = "cuda")
        );
    }

    /// Two workers on the CPU, each with half of a batch and a replica of one model: the
    /// all-reduced gradients equal the gradients of the whole batch on one worker, and both
    /// workers get the same bits.
    #[test]
    fn two_workers_sum_to_the_gradient_of_the_whole_batch() {
        let config = ModelConfig::preset("tiny").unwrap();
        let model =
            DiffusionLm::<CpuAutodiff>::init_with(&config, &Default::default(), 3, DType::F32);
        // Four rows of four tokens; the loss is a sum over rows, so halves add up to the whole.
        fn loss(
            m: &DiffusionLm<CpuAutodiff>,
            rows: std::ops::Range<usize>,
        ) -> Tensor<CpuAutodiff, 1> {
            let ids: Vec<i64> = (rows.start * 4..rows.end * 4)
                .map(|i| (i * 37 % 500) as i64)
                .collect();
            let input = Tensor::<CpuAutodiff, 2, Int>::from_data(
                TensorData::new(ids, [rows.len(), 4]),
                &Default::default(),
            );
            m.forward(input, None).sum()
        }
        let whole = GradientsParams::from_grads(loss(&model, 0..4).backward(), &model);

        collective::reset_collective::<Cpu>();
        let handles: Vec<_> = (0..2u32)
            .map(|w| {
                let replica = model.clone();
                std::thread::spawn(move || {
                    let peer = PeerId::from(w);
                    let cfg = CollectiveConfig::default().with_num_devices(2);
                    collective::register::<Cpu>(peer, Default::default(), cfg).unwrap();
                    let rows = (w as usize * 2)..(w as usize * 2 + 2);
                    let grads =
                        GradientsParams::from_grads(loss(&replica, rows).backward(), &replica);
                    let summed = all_reduce_grads(peer, &replica, grads).unwrap();
                    collective::finish_collective::<Cpu>(peer).unwrap();
                    let q = replica.layers[0].self_attn.q_proj.weight.id;
                    let e = replica.embed_tokens.id;
                    let host = |t: Tensor<Cpu, 2>| t.into_data().to_vec::<f32>().unwrap();
                    (
                        host(summed.get::<Cpu, 2>(q).unwrap()),
                        host(summed.get::<Cpu, 2>(e).unwrap()),
                    )
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(results[0], results[1], "both workers hold the same sum");
        let host = |t: Tensor<Cpu, 2>| t.into_data().to_vec::<f32>().unwrap();
        let q = host(
            whole
                .get::<Cpu, 2>(model.layers[0].self_attn.q_proj.weight.id)
                .unwrap(),
        );
        let e = host(whole.get::<Cpu, 2>(model.embed_tokens.id).unwrap());
        for (got, want) in [(&results[0].0, &q), (&results[0].1, &e)] {
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = got
                .iter()
                .zip(want)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(err <= 1e-5 * scale.max(1.0), "error {err}, scale {scale}");
        }
    }
}
