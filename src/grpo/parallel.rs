//! Data parallelism over several devices: one worker thread per device, each with its own
//! replica of the policy, joined by Burn's collective (`burn-collective`: blocking calls, one
//! thread per peer, NCCL between CUDA devices).
//!
//! A round's prompts are split into contiguous parts ([`Shard::prompts`], so every group of G
//! completions stays on one worker). Each worker decodes, rewards and scores its own rows; the
//! completions, rewards and loss statistics are gathered ([`Shard::sum`]: each worker fills
//! its own slots, so the sums are exact) and every loss term is divided by the whole round's
//! normaliser, so the gradients summed over workers ([`all_reduce_grads`]) are the single
//! device's. Every worker then takes the same AdamW step. Every random stream is keyed by
//! (round, global row) — rollout draws, masks — so a round does not depend on the number of
//! workers, up to the order of floating-point sums.
//!
//! Why not `GradientsParams::all_reduce`: it pairs tensors by sorted `ParamId`, which only agree
//! between replicas forked from one model, and a peer without some gradient makes the peers
//! issue different sequences of calls (a wrong pairing or a deadlock). [`all_reduce_grads`]
//! walks the model's trainable parameters in visit order instead (the same on every replica and
//! every process) and sends zeros for a missing gradient; under LoRA only the adapters are
//! trainable, so only they travel.
//!
//! Failure: the collective has no timeouts, so a worker that stops with an error resets it
//! ([`run`]); the others then fail at their next collective call, and [`run`] reports the
//! first worker's own error.

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Barrier, Mutex};

use burn::collective::{self, CollectiveConfig, PeerId, ReduceOperation};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData, TensorPrimitive};

use super::Trainer;
use crate::model::DiffusionLm;
use crate::{Error, Result};

/// One collective group per process at a time (Burn keeps one collective server per backend
/// type per process).
static COLLECTIVE: Mutex<()> = Mutex::new(());

/// Hold the process's collective group (tests that use the collective directly take it too).
pub fn collective_lock() -> std::sync::MutexGuard<'static, ()> {
    COLLECTIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// One data-parallel worker's place in a run, and the device its collective calls go through
/// (`I` is the inner, non-autodiff backend).
#[derive(Debug, Clone)]
pub struct Shard<I: Backend> {
    pub rank: usize,
    pub world: usize,
    device: I::Device,
}

impl<I: Backend> Shard<I> {
    pub fn new(rank: usize, world: usize, device: I::Device) -> Self {
        Self {
            rank,
            world,
            device,
        }
    }

    pub fn peer(&self) -> PeerId {
        PeerId::from(self.rank)
    }

    /// Worker 0 alone writes metrics, completions, evaluations and checkpoints.
    pub fn is_lead(&self) -> bool {
        self.rank == 0
    }

    /// This worker's part of `prompts` prompts: contiguous, as even as possible.
    pub fn prompts(&self, prompts: usize) -> Range<usize> {
        self.rank * prompts / self.world..(self.rank + 1) * prompts / self.world
    }

    /// This worker's rows of a batch of `rows` rows in groups of `g` (whole groups).
    pub fn rows(&self, rows: usize, g: usize) -> Range<usize> {
        let p = self.prompts(rows.div_ceil(g.max(1)));
        (p.start * g).min(rows)..(p.end * g).min(rows)
    }

    pub(crate) fn collective_error(&self, operation: &str, e: impl std::fmt::Debug) -> Error {
        Error::Collective {
            rank: self.rank,
            operation: operation.into(),
            message: format!("{e:?}").trim_matches('"').to_string(),
        }
    }

    /// Element-wise sum of `values` over the workers (every worker passes the same length).
    /// A gather is a sum where each worker fills its own slots and leaves zeros elsewhere.
    pub fn sum(&self, what: &str, values: Vec<f32>) -> Result<Vec<f32>> {
        let n = values.len();
        let t = Tensor::<I, 1>::from_data(TensorData::new(values, [n]), &self.device);
        let out = collective::all_reduce::<I>(
            self.peer(),
            t.into_primitive().tensor(),
            ReduceOperation::Sum,
        )
        .map_err(|e| self.collective_error(what, e))?;
        Tensor::<I, 1>::from_primitive(TensorPrimitive::Float(out))
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| self.collective_error(what, e))
    }

    /// `tensor` from the one worker that passes `Some`, on every worker, on `device` (Burn's
    /// local broadcast leaves the result on the first caller's device, so it is moved).
    pub fn broadcast<const D: usize>(
        &self,
        tensor: Option<Tensor<I, D>>,
        device: &I::Device,
    ) -> Result<Tensor<I, D>> {
        let primitive = tensor.map(|t| t.into_primitive().tensor());
        let out = collective::broadcast::<I>(self.peer(), primitive)
            .map_err(|e| self.collective_error("broadcast", e))?;
        Ok(Tensor::<I, D>::from_primitive(TensorPrimitive::Float(out)).to_device(device))
    }

    /// Sum of one count over the workers.
    pub fn sum_count(&self, what: &str, count: usize) -> Result<usize> {
        Ok(self.sum(what, vec![count as f32])?[0].round() as usize)
    }

    /// The rows of a `[total, width]` host matrix, each worker holding `rows` of it.
    pub fn gather_rows(
        &self,
        what: &str,
        local: &[f32],
        rows: Range<usize>,
        total: usize,
        width: usize,
    ) -> Result<Vec<f32>> {
        let mut v = vec![0f32; total * width];
        v[rows.start * width..rows.end * width].copy_from_slice(local);
        self.sum(what, v)
    }
}

/// `model` with every parameter a fresh autodiff leaf (same values, ids and `require_grad`).
///
/// Replicas cloned from one model share their parameters' autodiff nodes, and Burn's autodiff
/// graph (one per process) then joins the workers' graphs: one worker's backward holds the
/// graph's lock and waits for the global locator while another holds the locator and waits for
/// the graph, a deadlock seen in about one run in five. Fresh leaves keep the graphs apart.
pub fn own_leaves<B: AutodiffBackend>(model: DiffusionLm<B>) -> DiffusionLm<B> {
    struct Leaves;
    impl<B: AutodiffBackend> burn::module::ModuleMapper<B> for Leaves {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            super::optimizer::map_leaf(param, |t| t)
        }
    }
    model.map(&mut Leaves)
}

/// Run `body` on one trainer per device, each built by `build(rank, device)` in its own
/// thread, as one data-parallel group; returns worker 0's result. With one device this is just
/// `body(build(0, device))`, with no collective at all.
///
/// Every worker must build an equal trainer (same config, same weights): the weights loaded
/// from the same files, or a replica of one in-memory model (`model.clone().fork(&device)`;
/// each worker's parameters become their own autodiff leaves, see [`own_leaves`]).
pub fn run<B, R, Build, Body>(devices: &[B::Device], build: Build, body: Body) -> Result<R>
where
    B: AutodiffBackend,
    R: Send,
    Build: Fn(usize, &B::Device) -> Result<Trainer<B>> + Sync,
    Body: Fn(&mut Trainer<B>) -> Result<R> + Sync,
{
    let world = devices.len();
    if world == 0 {
        return Err(Error::config("devices", "no devices"));
    }
    if world == 1 {
        return body(&mut build(0, &devices[0])?);
    }
    let _group = collective_lock();
    collective::reset_collective::<B::InnerBackend>();
    // Every worker builds first: one that fails must not leave the others waiting to register.
    let barrier = Barrier::new(world);
    let failed = AtomicBool::new(false);
    let worker = |rank: usize, device: &B::Device| -> Result<R> {
        let shard = Shard::<B::InnerBackend>::new(rank, world, device.clone());
        let built = catch_unwind(AssertUnwindSafe(|| build(rank, device)))
            .unwrap_or_else(|panic| Err(panic_error(rank, panic)))
            .and_then(|mut t| {
                t.set_shard(shard.clone())?;
                Ok(t)
            });
        if built.is_err() {
            failed.store(true, Ordering::SeqCst);
        }
        barrier.wait();
        let mut trainer = built?;
        if failed.load(Ordering::SeqCst) {
            return Err(shard.collective_error("start", "another worker failed to start"));
        }
        let config = CollectiveConfig::default().with_num_devices(world);
        collective::register::<B::InnerBackend>(shard.peer(), device.clone(), config)
            .map_err(|e| shard.collective_error("register", e))?;
        match catch_unwind(AssertUnwindSafe(|| body(&mut trainer))) {
            Ok(Ok(r)) => {
                collective::finish_collective::<B::InnerBackend>(shard.peer())
                    .map_err(|e| shard.collective_error("finish", e))?;
                Ok(r)
            }
            Ok(Err(e)) => {
                // Wake the others, blocked in (or heading for) a collective call.
                collective::reset_collective::<B::InnerBackend>();
                Err(e)
            }
            Err(panic) => {
                collective::reset_collective::<B::InnerBackend>();
                Err(panic_error(rank, panic))
            }
        }
    };
    let results: Vec<Result<R>> = std::thread::scope(|s| {
        let handles: Vec<_> = devices
            .iter()
            .enumerate()
            .map(|(rank, device)| {
                let worker = &worker;
                s.spawn(move || worker(rank, device))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker panics are caught"))
            .collect()
    });
    first_result(results)
}

/// A worker's panic as its own error (the others then stop at their next collective call).
fn panic_error(rank: usize, panic: Box<dyn std::any::Any + Send>) -> Error {
    let what = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    Error::invalid(format!("worker {rank}"), format!("panicked: {what}"))
}

/// Worker 0's result when every worker succeeded; otherwise the first error that is a
/// worker's own (not a collective call failing because another worker stopped).
fn first_result<R>(results: Vec<Result<R>>) -> Result<R> {
    let mut own = None;
    let mut collective = None;
    let mut first = None;
    for r in results {
        match r {
            Ok(r) => {
                first.get_or_insert(r);
            }
            Err(e @ Error::Collective { .. }) => {
                collective.get_or_insert(e);
            }
            Err(e) => {
                own.get_or_insert(e);
            }
        }
    }
    match (own, collective, first) {
        (Some(e), _, _) | (None, Some(e), _) => Err(e),
        (None, None, Some(r)) => Ok(r),
        (None, None, None) => unreachable!("at least one worker"),
    }
}

/// `workers` workers can share a round of `prompts` prompts: each needs one.
pub fn check_workers(workers: usize, prompts: usize) -> Result<()> {
    if workers <= prompts {
        return Ok(());
    }
    Err(Error::config(
        "devices",
        format!(
            "{workers} workers but grpo.prompts_per_step = {prompts}: every worker needs a prompt"
        ),
    ))
}

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
        self.workers().map_or(Ok(()), |n| check_workers(n, prompts))
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
    shard: &Shard<B::InnerBackend>,
    model: &DiffusionLm<B>,
    grads: GradientsParams,
) -> Result<GradientsParams> {
    struct Reduce<B: AutodiffBackend> {
        peer: PeerId,
        grads: GradientsParams,
        out: GradientsParams,
        error: Option<collective::CollectiveError>,
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
                Err(e) => self.error = Some(e),
            }
        }
    }
    let mut v = Reduce::<B> {
        peer: shard.peer(),
        grads,
        out: GradientsParams::new(),
        error: None,
        _b: std::marker::PhantomData,
    };
    model.visit(&mut v);
    match v.error {
        Some(e) => Err(shard.collective_error("gradient all-reduce", e)),
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

    /// `work(rank, replica, shard)` on two CPU workers registered as one collective group, each
    /// with its own autodiff leaves of `model`; the workers' results by rank.
    fn on_two_workers<R: Send + 'static>(
        model: &DiffusionLm<CpuAutodiff>,
        work: fn(usize, DiffusionLm<CpuAutodiff>, Shard<Cpu>) -> R,
    ) -> Vec<R> {
        let _group = collective_lock();
        collective::reset_collective::<Cpu>();
        let handles: Vec<_> = (0..2usize)
            .map(|w| {
                let replica = own_leaves(model.clone());
                std::thread::spawn(move || {
                    let shard = Shard::<Cpu>::new(w, 2, Default::default());
                    let cfg = CollectiveConfig::default().with_num_devices(2);
                    collective::register::<Cpu>(shard.peer(), Default::default(), cfg).unwrap();
                    let out = work(w, replica, shard.clone());
                    collective::finish_collective::<Cpu>(shard.peer()).unwrap();
                    out
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

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

        let results = on_two_workers(&model, |w, replica, shard| {
            let rows = w * 2..w * 2 + 2;
            let grads = GradientsParams::from_grads(loss(&replica, rows).backward(), &replica);
            let summed = all_reduce_grads(&shard, &replica, grads).unwrap();
            let q = replica.layers[0].self_attn.q_proj.weight.id;
            let e = replica.embed_tokens.id;
            let host = |t: Tensor<Cpu, 2>| t.into_data().to_vec::<f32>().unwrap();
            (
                host(summed.get::<Cpu, 2>(q).unwrap()),
                host(summed.get::<Cpu, 2>(e).unwrap()),
            )
        });
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

    /// Under LoRA only the adapters are trainable, so only their gradients travel: two per
    /// adapted projection, none of the frozen base's.
    #[test]
    fn with_lora_only_the_adapters_gradients_travel() {
        use crate::model::lora::{self, LoraConfig};
        let config = ModelConfig::preset("tiny").unwrap();
        let base =
            DiffusionLm::<CpuAutodiff>::init_with(&config, &Default::default(), 3, DType::F32);
        let lora_config = LoraConfig {
            r: 2,
            alpha: 4.0,
            ..Default::default()
        };
        let model = lora::attach(base.no_grad(), &lora_config, 5).unwrap();
        let adapted = lora::linears(&model)
            .iter()
            .filter(|(_, l)| l.lora.is_some())
            .count();
        assert!(adapted > 0);
        let counts = on_two_workers(&model, |w, replica, shard| {
            let ids = Tensor::<CpuAutodiff, 2, Int>::from_data(
                TensorData::new(vec![1i64 + w as i64, 7, 9, 11], [1, 4]),
                &Default::default(),
            );
            let loss = replica.forward(ids, None).sum();
            let grads = GradientsParams::from_grads(loss.backward(), &replica);
            all_reduce_grads(&shard, &replica, grads).unwrap().len()
        });
        assert_eq!(counts, vec![2 * adapted; 2]);
    }
}
