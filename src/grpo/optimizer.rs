//! AdamW with Hugging Face's parameter groups, a global gradient-norm clip and a non-finite
//! guard, plus exact save/load of its state.
//!
//! Burn's `GradientClipping::Norm` clips each parameter's gradient by its own norm; HF/TRL clip
//! by the norm of all gradients together (`clip_grad_norm_`), so the global norm is computed
//! here and the gradients are scaled before AdamW sees them ([`super::FusedAdamW`]: Burn's
//! update rule and state, one pass per parameter on the CPU). HF also exempts biases and
//! norm weights from weight decay; here every rank-1 parameter (biases, RMSNorm weights) goes to
//! a second AdamW without decay.
//!
//! Burn's AdamW keeps its moments in the parameter dtype and adds the update to the parameter
//! in that dtype. For bf16 parameters (8 significant bits) an RL-sized update (lr 1e-6 on a
//! weight of 0.02 is a relative change of 5e-5, below bf16's 2^-8) rounds away entirely, so with
//! `master_weights` the optimizer keeps an f32 copy of the parameters (and so f32 moments),
//! updates that copy with f32 gradients and hands back its bf16 cast, as mixed-precision
//! trainers do.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::record::AdaptorRecord;
use burn::optim::{AdamWState, AdaptiveMomentumState, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::adamw::FusedAdamW;
use super::schedule::ScheduleKind;
use super::zero::{StateTensors, Zero};
use crate::model::{lora, DiffusionLm};
use crate::{Error, Result};

/// `[optimizer]` section: AdamW, its schedule and gradient clipping (released values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// Adam β1.
    pub beta1: f32,
    /// Adam β2.
    pub beta2: f32,
    /// Adam ε (HF default 1e-8).
    pub epsilon: f32,
    /// Decoupled weight decay of rank ≥ 2 parameters (biases and norms get none, as in HF).
    pub weight_decay: f32,
    /// Clip the global gradient norm to this value; 0 disables clipping.
    pub max_grad_norm: f64,
    /// `cosine_with_min_lr` | `constant_with_warmup`.
    pub schedule: ScheduleKind,
    /// Warm-up as a fraction of all optimizer steps (`ceil(total · ratio)` steps).
    pub warmup_ratio: f64,
    /// Explicit warm-up steps (overrides `warmup_ratio`).
    pub warmup_steps: Option<u64>,
    /// Floor of the cosine as a fraction of `lr`.
    pub min_lr_ratio: f64,
    /// Keep f32 master weights (and f32 Adam moments) for bf16 parameters; without them bf16
    /// rounds small updates away. No effect on f32 parameters. Costs memory: parameters plus
    /// Adam state take 14 bytes per parameter instead of 6 (bf16 weights and moments), and the
    /// gradients are cast to f32 for the step (a 7B model: 106 GB instead of 46).
    pub master_weights: bool,
    /// With several data-parallel workers, shard the AdamW state (moments and master weights)
    /// over them, ZeRO stage 1: each parameter's owner alone keeps its state and broadcasts
    /// its update, so optimizer memory per worker falls by the number of workers.
    pub shard_state: bool,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            lr: 1e-6,
            beta1: 0.9,
            beta2: 0.99,
            epsilon: 1e-8,
            weight_decay: 0.1,
            max_grad_norm: 0.2,
            schedule: ScheduleKind::CosineWithMinLr,
            warmup_ratio: 1e-4,
            warmup_steps: None,
            min_lr_ratio: 0.1,
            master_weights: true,
            shard_state: true,
        }
    }
}

type Adam<B> = OptimizerAdaptor<FusedAdamW, DiffusionLm<B>, B>;

/// What one [`GrpoOptimizer::step`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateOutcome {
    /// Global L2 norm of the gradients before clipping (NaN/inf when they were not finite).
    pub grad_norm: f64,
    /// False when the update was skipped because the gradients were not finite.
    pub applied: bool,
}

/// AdamW over two parameter groups (decay / no decay) with global-norm clipping.
pub struct GrpoOptimizer<B: AutodiffBackend> {
    decay: Adam<B>,
    no_decay: Adam<B>,
    config: OptimizerConfig,
    /// f32 copy of a low-precision model, with the same parameter ids (`master_weights`).
    master: Option<DiffusionLm<B>>,
    /// This worker's shard of the state in a data-parallel run (ZeRO-1).
    zero: Option<Zero<B::InnerBackend>>,
}

impl<B: AutodiffBackend> GrpoOptimizer<B> {
    pub fn new(config: OptimizerConfig) -> Result<Self> {
        if config.max_grad_norm.is_nan() || config.max_grad_norm < 0.0 {
            return Err(Error::config("optimizer.max_grad_norm", "must be ≥ 0"));
        }
        if !(0.0..1.0).contains(&config.beta1) || !(0.0..1.0).contains(&config.beta2) {
            return Err(Error::config(
                "optimizer.beta1",
                "Adam betas must be in [0, 1)",
            ));
        }
        let adam = |wd: f32| {
            FusedAdamW::new(config.beta1, config.beta2, config.epsilon, wd)
                .init::<B, DiffusionLm<B>>()
        };
        Ok(Self {
            decay: adam(config.weight_decay),
            no_decay: adam(0.0),
            config,
            master: None,
            zero: None,
        })
    }

    /// Keep only this worker's shard of the state from now on (dropping any other worker's
    /// state already held, as after a restore).
    pub fn shard_state(&mut self, zero: Zero<B::InnerBackend>, model: &DiffusionLm<B>) {
        self.zero = Some(zero);
        self.drop_unowned(model);
    }

    /// f32 elements of state this worker holds for `model`: two moments per parameter with
    /// state, plus the master copy.
    pub fn state_elements(&self, model: &DiffusionLm<B>) -> usize {
        struct Count<'a, B: AutodiffBackend> {
            records: [&'a Record<B>; 2],
            elements: usize,
        }
        impl<B: AutodiffBackend> ModuleVisitor<B> for Count<'_, B> {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
                if self.records.iter().any(|r| r.contains_key(&p.id)) {
                    self.elements += 2 * p.val().shape().num_elements();
                }
            }
        }
        let (decay, no_decay) = (self.decay.to_record(), self.no_decay.to_record());
        let mut count = Count::<B> {
            records: [&decay, &no_decay],
            elements: 0,
        };
        model.visit(&mut count);
        let master = self.master.as_ref().map_or(0, |m| m.num_params());
        count.elements + master
    }

    /// The ZeRO-1 shard, when the state is sharded.
    pub fn zero(&self) -> Option<&Zero<B::InnerBackend>> {
        self.zero.as_ref()
    }

    fn drop_unowned(&mut self, model: &DiffusionLm<B>) {
        let Some(zero) = &self.zero else { return };
        let owned = zero.owned_ids(model);
        for opt in [&mut self.decay, &mut self.no_decay] {
            let mut record = opt.to_record();
            record.retain(|id, _| owned.contains(id));
            take_load(opt, record);
        }
        if let Some(master) = self.master.take() {
            self.master = Some(zero.master(master, DType::F32));
        }
    }

    /// After an applied [`Self::step`] with a sharded state: every parameter from its owner
    /// (collective; every worker calls it). Without sharding, `model` as it is.
    pub fn share(&self, model: DiffusionLm<B>) -> Result<DiffusionLm<B>> {
        match &self.zero {
            Some(zero) => zero.broadcast(model),
            None => Ok(model),
        }
    }

    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// The f32 master copy of a low-precision model, once the first update has made one.
    pub fn master(&self) -> Option<&DiffusionLm<B>> {
        self.master.as_ref()
    }

    /// Clip `grads` to the global norm, then apply AdamW with learning rate `lr`. Non-finite
    /// gradients skip the update entirely (parameters and Adam moments untouched). A bf16
    /// `model` with `master_weights` is updated through its f32 master copy and comes back as
    /// that copy's cast.
    pub fn step(
        &mut self,
        lr: f64,
        model: DiffusionLm<B>,
        grads: GradientsParams,
    ) -> (DiffusionLm<B>, UpdateOutcome) {
        let dtype = model.dtype();
        // LoRA adapters are f32 over a frozen base: nothing low-precision is trained.
        if !self.config.master_weights || dtype == DType::F32 || lora::has_adapters(&model) {
            return self.adamw_step(lr, model, grads);
        }
        let master = match self.master.take() {
            // The same parameters (ids) as `model`: the copy is current.
            Some(m) if m.embed_tokens.id == model.embed_tokens.id => m,
            _ => match &self.zero {
                Some(zero) => zero.master(model.clone(), DType::F32),
                None => cast_params(model.clone(), DType::F32),
            },
        };
        let grads = cast_grads(&master, grads, DType::F32);
        let (master, outcome) = self.adamw_step(lr, master, grads);
        let model = if outcome.applied {
            cast_params(master.clone(), dtype)
        } else {
            model
        };
        self.master = Some(master);
        (model, outcome)
    }

    fn adamw_step(
        &mut self,
        lr: f64,
        model: DiffusionLm<B>,
        grads: GradientsParams,
    ) -> (DiffusionLm<B>, UpdateOutcome) {
        let norm = global_grad_norm(&model, &grads);
        if !norm.is_finite() {
            return (
                model,
                UpdateOutcome {
                    grad_norm: norm,
                    applied: false,
                },
            );
        }
        let mut grads = grads;
        let max = self.config.max_grad_norm;
        if max > 0.0 {
            // torch.nn.utils.clip_grad_norm_: scale by max / (norm + 1e-6) when that is < 1.
            let coef = max / (norm + 1e-6);
            if coef < 1.0 {
                grads = scale_grads(&model, grads, coef);
            }
        }
        if let Some(zero) = &self.zero {
            // Clipped by the global norm above; AdamW runs on this worker's shard only.
            grads = zero.keep_owned(&model, grads);
        }
        let (decay, no_decay) = split_by_rank(&model, grads);
        let model = self.decay.step(lr, model, decay);
        let model = self.no_decay.step(lr, model, no_decay);
        (
            model,
            UpdateOutcome {
                grad_norm: norm,
                applied: true,
            },
        )
    }

    /// Write the Adam moments of every parameter of `model` (by visit order), and the f32 master
    /// weights when there are any, to a safetensors file, f32, bit-exact. With a sharded state
    /// every worker calls this and worker 0 writes the whole state.
    pub fn save(&self, model: &DiffusionLm<B>, path: &Path) -> Result<()> {
        let (tensors, times) = self.state(model)?;
        if self.zero.as_ref().is_none_or(|z| z.shard().is_lead()) {
            Self::write_state(&tensors, &times, path)?;
        }
        Ok(())
    }

    /// The state [`Self::save`] writes: tensors keyed `{i}.exp_avg`, `{i}.exp_avg_sq`,
    /// `{i}.master` and the step count of every parameter `i` that has state. With a sharded
    /// state this is collective, and only worker 0 gets the whole state (the others an empty
    /// one).
    #[allow(clippy::type_complexity)]
    pub fn state(&self, model: &DiffusionLm<B>) -> Result<(StateTensors, BTreeMap<usize, usize>)> {
        let mut visitor = SaveState::<B> {
            decay: self.decay.to_record(),
            no_decay: self.no_decay.to_record(),
            index: 0,
            tensors: BTreeMap::new(),
            times: BTreeMap::new(),
        };
        model.visit(&mut visitor);
        if let Some(master) = &self.master {
            let mut masters = SaveMaster {
                index: 0,
                tensors: &mut visitor.tensors,
            };
            master.visit(&mut masters);
        }
        let (tensors, times) = (visitor.tensors, visitor.times);
        match &self.zero {
            Some(zero) => zero.gather(model, tensors, times),
            None => Ok((tensors, times)),
        }
    }

    /// Write a state from [`Self::state`] to a safetensors file.
    pub fn write_state(
        tensors: &StateTensors,
        times: &BTreeMap<usize, usize>,
        path: &Path,
    ) -> Result<()> {
        let mut metadata = std::collections::HashMap::new();
        metadata.insert("format".to_string(), "coupled-grpo adamw v1".to_string());
        metadata.insert(
            "time".to_string(),
            serde_json::to_string(times).expect("times serialise"),
        );
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .map(|(k, (shape, bytes))| {
                let view = safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    shape.clone(),
                    bytes,
                )
                .expect("consistent tensor view");
                (k.clone(), view)
            })
            .collect();
        let bytes =
            safetensors::serialize(views, Some(metadata)).map_err(|e| Error::Checkpoint {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        crate::util::write_atomic(path, &bytes)
    }

    /// Restore the state written by [`Self::save`] for `model` (whose parameter ids may differ
    /// from the saving run's: entries are matched by visit order and shape). Saved master
    /// weights become `model`'s master copy; without them one is made from `model` when needed.
    pub fn load(&mut self, model: &DiffusionLm<B>, path: &Path) -> Result<()> {
        let err = |message: String| Error::Checkpoint {
            path: path.to_path_buf(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| err(e.to_string()))?;
        let times: BTreeMap<usize, usize> = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("time"))
            .map(|t| serde_json::from_str(t))
            .transpose()
            .map_err(|e| err(format!("bad time metadata: {e}")))?
            .unwrap_or_default();
        let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| err(e.to_string()))?;
        let mut visitor = LoadState::<B> {
            file: &file,
            times: &times,
            index: 0,
            decay: Default::default(),
            no_decay: Default::default(),
            error: None,
            device: model.embed_tokens.val().device(),
        };
        model.visit(&mut visitor);
        if let Some(e) = visitor.error {
            return Err(err(e));
        }
        if visitor.index * 2 < times.len() {
            return Err(err(
                "the file holds state for more parameters than the model has".into(),
            ));
        }
        let (decay, no_decay) = (visitor.decay, visitor.no_decay);
        let master = if file.names().iter().any(|n| n.ends_with(".master")) {
            let mut loader = LoadMaster::<B> {
                file: &file,
                index: 0,
                error: None,
                _b: std::marker::PhantomData,
            };
            let master = model.clone().map(&mut loader);
            if let Some(e) = loader.error {
                return Err(err(e));
            }
            Some(master)
        } else {
            None
        };
        take_load(&mut self.decay, decay);
        take_load(&mut self.no_decay, no_decay);
        self.master = master;
        self.drop_unowned(model);
        Ok(())
    }
}

fn take_load<B: AutodiffBackend>(
    opt: &mut Adam<B>,
    record: <Adam<B> as Optimizer<DiffusionLm<B>, B>>::Record,
) {
    let placeholder = FusedAdamW::new(0.9, 0.999, 1e-8, 0.0).init::<B, DiffusionLm<B>>();
    let fresh = std::mem::replace(opt, placeholder);
    *opt = fresh.load_record(record);
}

/// `param` with its value replaced by `f` of its inner (non-autodiff) value, as a fresh
/// autodiff leaf, not a node of any graph; the id and `require_grad` are kept.
pub fn map_leaf<B: AutodiffBackend, const D: usize>(
    param: Param<Tensor<B, D>>,
    f: impl FnOnce(Tensor<B::InnerBackend, D>) -> Tensor<B::InnerBackend, D>,
) -> Param<Tensor<B, D>> {
    let (id, tensor, mapper) = param.consume();
    let grad = tensor.is_require_grad();
    let leaf = Tensor::<B, D>::from_inner(f(tensor.inner()));
    let leaf = if grad { leaf.require_grad() } else { leaf };
    Param::from_mapped_value(id, leaf, mapper)
}

/// `model` with every float parameter cast to `dtype`; ids and `require_grad` are kept.
pub fn cast_params<B: AutodiffBackend>(model: DiffusionLm<B>, dtype: DType) -> DiffusionLm<B> {
    struct Cast(DType);
    impl<B: AutodiffBackend> ModuleMapper<B> for Cast {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            map_leaf(param, |t| t.cast(self.0))
        }
    }
    model.map(&mut Cast(dtype))
}

/// The gradients of `model`'s parameters cast to `dtype`.
fn cast_grads<B: AutodiffBackend>(
    model: &DiffusionLm<B>,
    grads: GradientsParams,
    dtype: DType,
) -> GradientsParams {
    map_grads(model, grads, GradOp::Cast(dtype))
}

/// What [`map_grads`] does to each gradient.
#[derive(Clone, Copy)]
enum GradOp {
    Scale(f64),
    Cast(DType),
}

/// Replace every gradient of `model`'s parameters by `op` of it.
fn map_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: GradientsParams,
    op: GradOp,
) -> GradientsParams {
    struct Map<B: AutodiffBackend> {
        grads: GradientsParams,
        op: GradOp,
        _b: std::marker::PhantomData<B>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Map<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
                let g = match self.op {
                    GradOp::Scale(factor) => g.mul_scalar(factor),
                    GradOp::Cast(dtype) => g.cast(dtype),
                };
                self.grads.register::<B::InnerBackend, D>(param.id, g);
            }
        }
    }
    let mut v = Map::<B> {
        grads,
        op,
        _b: std::marker::PhantomData,
    };
    model.visit(&mut v);
    v.grads
}

/// Global L2 norm of all gradients of `model`'s parameters (one host read).
pub fn global_grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &GradientsParams,
) -> f64 {
    struct SquareSums<'a, B: AutodiffBackend> {
        grads: &'a GradientsParams,
        sums: Vec<Tensor<B::InnerBackend, 1>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for SquareSums<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
                self.sums.push(g.square().sum());
            }
        }
    }
    let mut v = SquareSums::<B> {
        grads,
        sums: Vec::new(),
    };
    model.visit(&mut v);
    if v.sums.is_empty() {
        return 0.0;
    }
    let sums = Tensor::cat(v.sums, 0)
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("f32 sums");
    sums.iter().map(|&s| s as f64).sum::<f64>().sqrt()
}

/// Multiply every gradient of `model`'s parameters by `factor`.
pub fn scale_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: GradientsParams,
    factor: f64,
) -> GradientsParams {
    map_grads(model, grads, GradOp::Scale(factor))
}

/// Split gradients into (rank ≥ 2: weight decay, rank 1: none).
fn split_by_rank<B: AutodiffBackend>(
    model: &DiffusionLm<B>,
    grads: GradientsParams,
) -> (GradientsParams, GradientsParams) {
    struct Split<B: AutodiffBackend> {
        all: GradientsParams,
        decay: GradientsParams,
        no_decay: GradientsParams,
        _b: std::marker::PhantomData<B>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Split<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.all.remove::<B::InnerBackend, D>(param.id) {
                let target = if D >= 2 {
                    &mut self.decay
                } else {
                    &mut self.no_decay
                };
                target.register::<B::InnerBackend, D>(param.id, g);
            }
        }
    }
    let mut v = Split::<B> {
        all: grads,
        decay: GradientsParams::new(),
        no_decay: GradientsParams::new(),
        _b: std::marker::PhantomData,
    };
    model.visit(&mut v);
    (v.decay, v.no_decay)
}

type Record<B> = <Adam<B> as Optimizer<DiffusionLm<B>, B>>::Record;

struct SaveState<B: AutodiffBackend> {
    decay: Record<B>,
    no_decay: Record<B>,
    index: usize,
    tensors: BTreeMap<String, (Vec<usize>, Vec<u8>)>,
    times: BTreeMap<usize, usize>,
}

fn f32_bytes<B: Backend, const D: usize>(t: Tensor<B, D>) -> (Vec<usize>, Vec<u8>) {
    let shape = t.dims().to_vec();
    let values = t
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("f32 moments");
    (shape, values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SaveState<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let i = self.index;
        self.index += 1;
        let record = self
            .decay
            .get(&param.id)
            .or_else(|| self.no_decay.get(&param.id));
        if let Some(record) = record {
            let state: AdamWState<B::InnerBackend, D> = record.clone().into_state::<D>();
            let m = state.momentum;
            self.times.insert(i, m.time);
            self.tensors
                .insert(format!("{i}.exp_avg"), f32_bytes(m.moment_1));
            self.tensors
                .insert(format!("{i}.exp_avg_sq"), f32_bytes(m.moment_2));
        }
    }
}

/// The little-endian f32 values of a safetensors view (the caller checked the dtype).
fn f32_values(view: &safetensors::tensor::TensorView<'_>) -> Vec<f32> {
    view.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Adds `{i}.master` (f32) for every parameter `i` of the master copy.
struct SaveMaster<'a> {
    index: usize,
    tensors: &'a mut BTreeMap<String, (Vec<usize>, Vec<u8>)>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SaveMaster<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.tensors
            .insert(format!("{}.master", self.index), f32_bytes(param.val()));
        self.index += 1;
    }
}

/// Replaces every parameter by its saved `{i}.master` (f32), keeping ids.
struct LoadMaster<'a, B: AutodiffBackend> {
    file: &'a safetensors::SafeTensors<'a>,
    index: usize,
    error: Option<String>,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for LoadMaster<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let key = format!("{}.master", self.index);
        self.index += 1;
        let (id, tensor, mapper) = param.consume();
        let shape = tensor.dims().to_vec();
        let loaded = match self.file.tensor(&key) {
            Ok(view) if view.shape() == shape && view.dtype() == safetensors::Dtype::F32 => {
                Some(Tensor::<B, D>::from_data(
                    TensorData::new(f32_values(&view), shape.clone()),
                    &tensor.device(),
                ))
            }
            Ok(view) => {
                self.error.get_or_insert(format!(
                    "`{key}` has shape {:?} ({:?}), the parameter {shape:?} f32",
                    view.shape(),
                    view.dtype()
                ));
                None
            }
            Err(e) => {
                self.error.get_or_insert(format!("`{key}`: {e}"));
                None
            }
        };
        let value = match loaded {
            Some(t) if tensor.is_require_grad() => t.require_grad(),
            Some(t) => t,
            None => tensor,
        };
        Param::from_mapped_value(id, value, mapper)
    }
}

struct LoadState<'a, B: AutodiffBackend> {
    file: &'a safetensors::SafeTensors<'a>,
    times: &'a BTreeMap<usize, usize>,
    index: usize,
    decay: Record<B>,
    no_decay: Record<B>,
    error: Option<String>,
    device: B::Device,
}

impl<B: AutodiffBackend> LoadState<'_, B> {
    fn tensor<const D: usize>(
        &self,
        key: &str,
        shape: &[usize],
    ) -> std::result::Result<Tensor<B::InnerBackend, D>, String> {
        let view = self.file.tensor(key).map_err(|e| format!("`{key}`: {e}"))?;
        if view.shape() != shape || view.dtype() != safetensors::Dtype::F32 {
            return Err(format!(
                "`{key}` has shape {:?} ({:?}), the parameter {shape:?} f32",
                view.shape(),
                view.dtype()
            ));
        }
        Ok(Tensor::from_data(
            TensorData::new(f32_values(&view), shape.to_vec()),
            &self.device,
        ))
    }
}

impl<B: AutodiffBackend> ModuleVisitor<B> for LoadState<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let i = self.index;
        self.index += 1;
        if self.error.is_some() {
            return;
        }
        let Some(&time) = self.times.get(&i) else {
            return; // no state yet for this parameter (never updated)
        };
        let shape = param.val().dims().to_vec();
        let loaded = self
            .tensor::<D>(&format!("{i}.exp_avg"), &shape)
            .and_then(|m1| Ok((m1, self.tensor::<D>(&format!("{i}.exp_avg_sq"), &shape)?)));
        match loaded {
            Ok((moment_1, moment_2)) => {
                let state = AdamWState {
                    momentum: AdaptiveMomentumState {
                        time,
                        moment_1,
                        moment_2,
                        max_moment_2: None,
                    },
                };
                let record = AdaptorRecord::<FusedAdamW, B>::from_state::<D>(state);
                let id: ParamId = param.id;
                if D >= 2 {
                    self.decay.insert(id, record);
                } else {
                    self.no_decay.insert(id, record);
                }
            }
            Err(e) => self.error = Some(format!("parameter {i}: {e}")),
        }
    }
}
