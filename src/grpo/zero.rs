//! ZeRO-1: the AdamW state sharded over data-parallel workers.
//!
//! Every trainable parameter has one owner worker ([`Zero::balanced`]: largest tensors first,
//! each to the least-loaded worker, the same on every worker). After the gradient all-reduce every worker computes the
//! same global norm and clipping, then keeps only its own parameters' gradients
//! ([`Zero::keep_owned`]), so AdamW makes moments (and, for bf16 models, f32 master weights)
//! for those alone; each owner then broadcasts its updated parameters ([`Zero::broadcast`]).
//! Optimizer memory per worker falls by the number of workers. A checkpoint gathers the state
//! to worker 0 ([`Zero::gather`]) and keeps the single-device format, so a run resumes on any
//! number of workers: each loads the file and keeps its own part.

use std::collections::{BTreeMap, HashSet};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor, TensorData};

use super::optimizer::map_leaf;
use super::parallel::Shard;
use crate::model::DiffusionLm;
use crate::Result;

/// Host tensors of a saved optimizer state: key → (shape, little-endian f32 bytes).
pub type StateTensors = BTreeMap<String, (Vec<usize>, Vec<u8>)>;

/// Which worker owns each parameter.
#[derive(Debug, Clone)]
pub struct Zero<I: Backend> {
    shard: Shard<I>,
    /// Per float parameter in visit order: the owner's rank (None: not trainable).
    owners: Vec<Option<usize>>,
}

/// Per float parameter in visit order: (trainable, shape).
fn parameters<B: AutodiffBackend>(model: &DiffusionLm<B>) -> Vec<(bool, Vec<usize>)> {
    struct List(Vec<(bool, Vec<usize>)>);
    impl<B: AutodiffBackend> ModuleVisitor<B> for List {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            let v = p.val();
            self.0.push((v.is_require_grad(), v.dims().to_vec()));
        }
    }
    let mut list = List(Vec::new());
    model.visit(&mut list);
    list.0
}

impl<I: Backend> Zero<I> {
    /// Owners for `model`'s trainable parameters: largest first, each to the worker with the
    /// fewest elements so far (ties: the lower visit index, the lower rank), the same on every
    /// worker.
    pub fn balanced<B: AutodiffBackend<InnerBackend = I>>(
        shard: Shard<I>,
        model: &DiffusionLm<B>,
    ) -> Self {
        let params = parameters(model);
        let size = |i: usize| params[i].1.iter().product::<usize>();
        let mut order: Vec<usize> = (0..params.len()).filter(|&i| params[i].0).collect();
        order.sort_by_key(|&i| (std::cmp::Reverse(size(i)), i));
        let mut load = vec![0usize; shard.world];
        let mut owners = vec![None; params.len()];
        for i in order {
            let rank = (0..load.len()).min_by_key(|&r| (load[r], r)).unwrap_or(0);
            load[rank] += size(i);
            owners[i] = Some(rank);
        }
        Self { shard, owners }
    }

    pub fn shard(&self) -> &Shard<I> {
        &self.shard
    }

    /// Elements of the trainable parameters this worker owns.
    pub fn owned_elements<B: AutodiffBackend<InnerBackend = I>>(
        &self,
        model: &DiffusionLm<B>,
    ) -> usize {
        parameters(model)
            .iter()
            .zip(&self.owners)
            .filter(|(_, o)| **o == Some(self.shard.rank))
            .map(|((_, shape), _)| shape.iter().product::<usize>())
            .sum()
    }

    /// The ids of this worker's parameters in `model`.
    pub fn owned_ids<B: AutodiffBackend<InnerBackend = I>>(
        &self,
        model: &DiffusionLm<B>,
    ) -> HashSet<ParamId> {
        struct Ids<'a> {
            owners: &'a [Option<usize>],
            rank: usize,
            index: usize,
            ids: HashSet<ParamId>,
        }
        impl<B: AutodiffBackend> ModuleVisitor<B> for Ids<'_> {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
                if self.owners.get(self.index) == Some(&Some(self.rank)) {
                    self.ids.insert(p.id);
                }
                self.index += 1;
            }
        }
        let mut v = Ids {
            owners: &self.owners,
            rank: self.shard.rank,
            index: 0,
            ids: HashSet::new(),
        };
        model.visit(&mut v);
        v.ids
    }

    /// Only this worker's parameters' gradients.
    pub fn keep_owned<B: AutodiffBackend<InnerBackend = I>>(
        &self,
        model: &DiffusionLm<B>,
        grads: GradientsParams,
    ) -> GradientsParams {
        struct Keep<'a, B: AutodiffBackend> {
            owned: &'a HashSet<ParamId>,
            grads: GradientsParams,
            out: GradientsParams,
            _b: std::marker::PhantomData<B>,
        }
        impl<B: AutodiffBackend> ModuleVisitor<B> for Keep<'_, B> {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
                if self.owned.contains(&p.id) {
                    if let Some(g) = self.grads.remove::<B::InnerBackend, D>(p.id) {
                        self.out.register::<B::InnerBackend, D>(p.id, g);
                    }
                }
            }
        }
        let owned = self.owned_ids(model);
        let mut v = Keep::<B> {
            owned: &owned,
            grads,
            out: GradientsParams::new(),
            _b: std::marker::PhantomData,
        };
        model.visit(&mut v);
        v.out
    }

    /// `model` cast to `dtype` (the master copy of this worker's shard) with every parameter
    /// another worker owns replaced by a one-element placeholder; ids and `require_grad` are
    /// kept.
    pub fn master<B: AutodiffBackend<InnerBackend = I>>(
        &self,
        model: DiffusionLm<B>,
        dtype: DType,
    ) -> DiffusionLm<B> {
        struct Master<'a> {
            owners: &'a [Option<usize>],
            rank: usize,
            index: usize,
            dtype: DType,
        }
        impl<B: AutodiffBackend> ModuleMapper<B> for Master<'_> {
            fn map_float<const D: usize>(
                &mut self,
                param: Param<Tensor<B, D>>,
            ) -> Param<Tensor<B, D>> {
                // Another worker's parameter: a placeholder (frozen ones are kept: no one
                // broadcasts them).
                let other = matches!(self.owners.get(self.index), Some(Some(r)) if *r != self.rank);
                self.index += 1;
                map_leaf(param, |t| match other {
                    false => t.cast(self.dtype),
                    true => {
                        Tensor::<B::InnerBackend, D>::zeros([1; D], &t.device()).cast(self.dtype)
                    }
                })
            }
        }
        model.map(&mut Master {
            owners: &self.owners,
            rank: self.shard.rank,
            index: 0,
            dtype,
        })
    }

    /// Every trainable parameter of `model` replaced by its owner's value (one collective
    /// broadcast per parameter, in visit order; ids and `require_grad` are kept).
    pub fn broadcast<B: AutodiffBackend<InnerBackend = I>>(
        &self,
        model: DiffusionLm<B>,
    ) -> Result<DiffusionLm<B>> {
        struct Share<'a, I: Backend> {
            zero: &'a Zero<I>,
            index: usize,
            error: Option<crate::Error>,
        }
        impl<B: AutodiffBackend> ModuleMapper<B> for Share<'_, B::InnerBackend> {
            fn map_float<const D: usize>(
                &mut self,
                param: Param<Tensor<B, D>>,
            ) -> Param<Tensor<B, D>> {
                let owner = self.zero.owners.get(self.index).copied().flatten();
                self.index += 1;
                let (Some(owner), None) = (owner, &self.error) else {
                    return param;
                };
                let (zero, error) = (self.zero, &mut self.error);
                map_leaf(param, |inner| {
                    let mine = (owner == zero.shard.rank).then(|| inner.clone());
                    match zero.shard.broadcast(mine, &inner.device()) {
                        Ok(value) => value,
                        Err(e) => {
                            *error = Some(e);
                            inner
                        }
                    }
                })
            }
        }
        let mut share = Share {
            zero: self,
            index: 0,
            error: None,
        };
        let model = model.map(&mut share);
        match share.error {
            Some(e) => Err(e),
            None => Ok(model),
        }
    }

    /// The whole optimizer state on worker 0 from every worker's own part (`local`, `times` as
    /// [`super::GrpoOptimizer`] saves them, keyed by visit index); the other workers get an
    /// empty map. Every worker calls this.
    pub fn gather<B: AutodiffBackend<InnerBackend = I>>(
        &self,
        model: &DiffusionLm<B>,
        local: StateTensors,
        times: BTreeMap<usize, usize>,
    ) -> Result<(StateTensors, BTreeMap<usize, usize>)> {
        let (rank, n) = (self.shard.rank, self.owners.len());
        let shapes = parameters(model);
        // Per parameter, filled by its owner: has moments, has a master copy, step count.
        let mut flags = vec![0f32; 3 * n];
        for (i, owner) in self.owners.iter().enumerate() {
            if *owner == Some(rank) {
                flags[3 * i] = f32::from(u8::from(local.contains_key(&format!("{i}.exp_avg"))));
                flags[3 * i + 1] = f32::from(u8::from(local.contains_key(&format!("{i}.master"))));
                flags[3 * i + 2] = times.get(&i).copied().unwrap_or(0) as f32;
            }
        }
        let flags = self.shard.sum("optimizer state", flags)?;
        let (mut out, mut out_times) = (StateTensors::new(), BTreeMap::new());
        let lead = self.shard.is_lead();
        for (i, owner) in self.owners.iter().enumerate() {
            let Some(owner) = *owner else { continue };
            let present = [
                flags[3 * i] > 0.0,
                flags[3 * i] > 0.0,
                flags[3 * i + 1] > 0.0,
            ];
            for (suffix, present) in ["exp_avg", "exp_avg_sq", "master"].into_iter().zip(present) {
                if !present {
                    continue;
                }
                let key = format!("{i}.{suffix}");
                let entry = local.get(&key).filter(|_| owner == rank);
                let values = self.broadcast_host(entry.map(|(_, bytes)| bytes.as_slice()))?;
                if lead {
                    out.insert(key, (shapes[i].1.clone(), values));
                }
            }
            if lead && flags[3 * i] > 0.0 {
                out_times.insert(i, flags[3 * i + 2].round() as usize);
            }
        }
        Ok((out, out_times))
    }

    /// The f32 bytes that one worker holds (`Some` on that worker only), on every worker.
    fn broadcast_host(&self, bytes: Option<&[u8]>) -> Result<Vec<u8>> {
        let device = Default::default();
        let mine = bytes.map(|bytes| {
            let values: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let n = values.len();
            Tensor::<I, 1>::from_data(TensorData::new(values, [n]), &device)
        });
        let values = self
            .shard
            .broadcast(mine, &device)?
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| self.shard.collective_error("optimizer state", e))?;
        Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
}
