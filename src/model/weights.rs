//! Where parameters come from (random init or HF safetensors) and where they go (safetensors).
//!
//! Every module builds itself from a [`WeightSource`] by HF key, so random init and loading a
//! checkpoint share one code path and need no key-remapping table.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, DType, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::family::ModelFamily;
use crate::{Error, Result};

/// How a parameter is initialised when no checkpoint provides it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Normal(0, std), as HF `_init_weights` does for linear and embedding weights.
    Normal(f64),
    Zeros,
    Ones,
}

/// A provider of parameters by HF key. Shapes are given in HF layout (`[out, in]` for linear
/// weights); the source checks them and returns a tensor in the model's dtype.
pub trait WeightSource<B: Backend> {
    /// The tensor stored under `key`, of exactly `shape`.
    fn tensor<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
        init: Init,
    ) -> Result<Tensor<B, D>>;
}

/// A source under a family's checkpoint names: the model layer asks by HF Qwen2 key and this
/// asks `inner` by the family's name ([`ModelFamily::checkpoint_key`]), so errors name the
/// key as the file has it.
pub struct FamilyNames<'s, S> {
    pub inner: &'s mut S,
    pub family: ModelFamily,
}

impl<B: Backend, S: WeightSource<B>> WeightSource<B> for FamilyNames<'_, S> {
    fn tensor<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
        init: Init,
    ) -> Result<Tensor<B, D>> {
        self.inner
            .tensor(&self.family.checkpoint_key(key), shape, init)
    }
}

/// Random initialisation from a seeded host RNG: the same seed gives the same weights on
/// every backend.
pub struct RandomSource<'a, B: Backend> {
    rng: ChaCha8Rng,
    device: &'a B::Device,
    dtype: DType,
}

impl<'a, B: Backend> RandomSource<'a, B> {
    pub fn new(seed: u64, device: &'a B::Device, dtype: DType) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            device,
            dtype,
        }
    }
}

impl<B: Backend> WeightSource<B> for RandomSource<'_, B> {
    fn tensor<const D: usize>(
        &mut self,
        _key: &str,
        shape: [usize; D],
        init: Init,
    ) -> Result<Tensor<B, D>> {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = match init {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Normal(std) => {
                let dist = rand_distr_normal(std as f32);
                (0..n).map(|_| dist(&mut self.rng)).collect()
            }
        };
        Ok(to_tensor::<B, D>(values, shape, self.device, self.dtype))
    }
}

/// Random initialisation drawn on the device itself (the backend's own RNG): fast for large
/// models on a GPU, where the host RNG and upload of [`RandomSource`] take minutes, but not
/// reproducible across backends. For benchmarks.
pub struct DeviceRandomSource<'a, B: Backend> {
    device: &'a B::Device,
    dtype: DType,
}

impl<'a, B: Backend> DeviceRandomSource<'a, B> {
    pub fn new(device: &'a B::Device, dtype: DType) -> Self {
        Self { device, dtype }
    }
}

impl<B: Backend> WeightSource<B> for DeviceRandomSource<'_, B> {
    fn tensor<const D: usize>(
        &mut self,
        _key: &str,
        shape: [usize; D],
        init: Init,
    ) -> Result<Tensor<B, D>> {
        let t = match init {
            Init::Zeros => Tensor::<B, D>::zeros(shape, self.device),
            Init::Ones => Tensor::<B, D>::ones(shape, self.device),
            Init::Normal(std) => Tensor::<B, D>::random(
                shape,
                burn::tensor::Distribution::Normal(0.0, std),
                self.device,
            ),
        };
        Ok(in_dtype(t, self.dtype))
    }
}

/// Box–Muller normal sampler (avoids a rand_distr dependency for one distribution).
fn rand_distr_normal(std: f32) -> impl Fn(&mut ChaCha8Rng) -> f32 {
    move |rng: &mut ChaCha8Rng| {
        let u1: f32 = rng.random::<f32>().max(f32::MIN_POSITIVE);
        let u2: f32 = rng.random::<f32>();
        std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }
}

fn to_tensor<B: Backend, const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    device: &B::Device,
    dtype: DType,
) -> Tensor<B, D> {
    in_dtype(
        Tensor::<B, D>::from_data(TensorData::new(values, shape), device),
        dtype,
    )
}

/// An f32 tensor in `dtype` (no cast op when it already is f32).
fn in_dtype<B: Backend, const D: usize>(t: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if dtype == DType::F32 {
        t
    } else {
        t.cast(dtype)
    }
}

/// One memory-mapped safetensors file.
struct MappedFile {
    path: PathBuf,
    mmap: memmap2::Mmap,
}

/// HF safetensors weights: a single `model.safetensors` or shards listed in
/// `model.safetensors.index.json`. Tracks which keys were used so unexpected tensors are
/// reported by name.
pub struct SafetensorsSource<'a, B: Backend> {
    files: Vec<MappedFile>,
    /// key -> index into `files`
    index: HashMap<String, usize>,
    used: BTreeSet<String>,
    device: &'a B::Device,
    dtype: DType,
    /// Where the weights live, for error messages.
    root: PathBuf,
}

impl<'a, B: Backend> SafetensorsSource<'a, B> {
    /// Open the weights of an HF model directory.
    pub fn open_dir(dir: &Path, device: &'a B::Device, dtype: DType) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let file_names: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index_path.exists() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::Json {
                    path: index_path.clone(),
                    line: Some(e.line()),
                    message: e.to_string(),
                })?;
            let map = value
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::Json {
                    path: index_path.clone(),
                    line: None,
                    message: "missing object `weight_map`".into(),
                })?;
            let shards: BTreeSet<String> = map
                .values()
                .map(|v| {
                    v.as_str().map(str::to_owned).ok_or_else(|| Error::Json {
                        path: index_path.clone(),
                        line: None,
                        message: "`weight_map` values must be file names".into(),
                    })
                })
                .collect::<Result<_>>()?;
            shards.into_iter().map(|s| dir.join(s)).collect()
        } else {
            return Err(Error::io(
                &single,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no model.safetensors or model.safetensors.index.json in the model directory",
                ),
            ));
        };
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for path in file_names {
            let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
            // SAFETY: the file is opened read-only and we do not hold it across writes of our own.
            let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
            let (_, meta) =
                safetensors::SafeTensors::read_metadata(&mmap).map_err(|e| Error::Safetensors {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            for key in meta.tensors().keys() {
                index.insert(key.clone(), files.len());
            }
            files.push(MappedFile { path, mmap });
        }
        Ok(Self {
            files,
            index,
            used: BTreeSet::new(),
            device,
            dtype,
            root: dir.to_path_buf(),
        })
    }

    /// Error if the files hold tensors the model did not ask for.
    pub fn finish(self) -> Result<()> {
        let mut extra: Vec<&String> = self
            .index
            .keys()
            .filter(|k| !self.used.contains(*k))
            .collect();
        extra.sort();
        if let Some(key) = extra.first() {
            let file = &self.files[self.index[*key]];
            let st = safetensors::SafeTensors::deserialize(&file.mmap).map_err(|e| {
                Error::Safetensors {
                    path: file.path.clone(),
                    message: e.to_string(),
                }
            })?;
            let shape = st
                .tensor(key)
                .map(|t| t.shape().to_vec())
                .unwrap_or_default();
            return Err(Error::UnexpectedTensor {
                path: file.path.clone(),
                key: (*key).clone(),
                shape,
            });
        }
        Ok(())
    }

    /// True when the weights hold `key` (used for optional tensors such as an untied head).
    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }
}

impl<B: Backend> WeightSource<B> for SafetensorsSource<'_, B> {
    fn tensor<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
        _init: Init,
    ) -> Result<Tensor<B, D>> {
        let Some(&file_idx) = self.index.get(key) else {
            return Err(Error::MissingTensor {
                path: self.root.clone(),
                key: key.into(),
                expected: shape.to_vec(),
            });
        };
        let file = &self.files[file_idx];
        let st =
            safetensors::SafeTensors::deserialize(&file.mmap).map_err(|e| Error::Safetensors {
                path: file.path.clone(),
                message: e.to_string(),
            })?;
        let view = st.tensor(key).map_err(|e| Error::Safetensors {
            path: file.path.clone(),
            message: format!("{key}: {e}"),
        })?;
        if view.shape() != shape {
            return Err(Error::TensorShape {
                path: file.path.clone(),
                key: key.into(),
                expected: shape.to_vec(),
                found: view.shape().to_vec(),
            });
        }
        let values =
            decode_f32(view.dtype(), view.data()).map_err(|message| Error::Safetensors {
                path: file.path.clone(),
                message: format!("{key}: {message}"),
            })?;
        self.used.insert(key.to_string());
        Ok(to_tensor::<B, D>(values, shape, self.device, self.dtype))
    }
}

pub(crate) fn decode_f32(
    dtype: safetensors::Dtype,
    bytes: &[u8],
) -> std::result::Result<Vec<f32>, String> {
    use safetensors::Dtype as S;
    let chunks = |n: usize| bytes.chunks_exact(n);
    Ok(match dtype {
        S::F32 => chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        S::BF16 => chunks(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        S::F16 => chunks(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(format!(
                "unsupported dtype {other:?} (expected F32, BF16 or F16)"
            ))
        }
    })
}

/// The storage dtype of a saved checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveDtype {
    F32,
    Bf16,
}

/// Collects named tensors (HF keys and layout) and writes them as one safetensors file.
#[derive(Default)]
pub struct TensorSink {
    tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

impl TensorSink {
    /// Record `tensor` under `key` (converted to f32 on the host).
    pub fn put<B: Backend, const D: usize>(
        &mut self,
        key: impl Into<String>,
        tensor: Tensor<B, D>,
    ) {
        let shape = tensor.dims().to_vec();
        let values = tensor
            .cast(DType::F32)
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("f32 data after conversion");
        self.tensors.insert(key.into(), (shape, values));
    }

    /// Every key renamed by `rename` (a family's checkpoint names).
    pub fn renamed(self, rename: impl Fn(&str) -> String) -> Self {
        Self {
            tensors: self
                .tensors
                .into_iter()
                .map(|(k, v)| (rename(&k), v))
                .collect(),
        }
    }

    /// The recorded keys, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }

    /// Serialise to safetensors bytes with HF metadata `{"format": "pt"}`.
    pub fn to_bytes(&self, dtype: SaveDtype) -> Result<Vec<u8>> {
        let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(k, (shape, v))| {
                let bytes = match dtype {
                    SaveDtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    SaveDtype::Bf16 => v
                        .iter()
                        .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                        .collect(),
                };
                (k.clone(), shape.clone(), bytes)
            })
            .collect();
        let st_dtype = match dtype {
            SaveDtype::F32 => safetensors::Dtype::F32,
            SaveDtype::Bf16 => safetensors::Dtype::BF16,
        };
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = encoded
            .iter()
            .map(|(k, shape, bytes)| {
                let view = safetensors::tensor::TensorView::new(st_dtype, shape.clone(), bytes)
                    .expect("shape and byte length agree");
                (k.clone(), view)
            })
            .collect();
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        safetensors::serialize(views, Some(meta)).map_err(|e| Error::Safetensors {
            path: "model.safetensors".into(),
            message: e.to_string(),
        })
    }
}
