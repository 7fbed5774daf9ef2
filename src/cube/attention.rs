//! Flash attention for the rollout forward on CubeCL backends: bidirectional grouped-query
//! attention with the additive padding bias, softmax computed online over key tiles, so the
//! `[batch, heads, seq_q, seq_k]` scores are never written to memory.
//!
//! Why our own kernel rather than cubek's `FlashUnit` (`burn_cubecl::kernel::attention`):
//! - it ignores an additive bias and takes only a boolean mask laid out
//!   `[batch, heads, seq_q, seq_k]` (its batch offset is `(batch · heads + head) · stride(1)`, so
//!   the mask cannot be broadcast over heads): one mask the size of the scores;
//! - it wants K/V with as many heads as Q (the same offset rule), so GQA would copy K/V `rep`
//!   times;
//! - it stages Q/K/V in f16 tiles whatever their dtype (a bf16 model's values rounded to f16).
//!
//! This kernel reads Q, K, V and the bias in place (any strides: no copies of the projections),
//! with kv head `head / rep` per query head, accumulates in f32, and writes the output in the
//! `[batch, seq_q, heads · head_dim]` layout `o_proj` reads. One cube serves [`BLOCK_Q`] query
//! rows of one head, one unit per row; K/V tiles go through shared memory.

use burn::tensor::{backend::Backend, DType, Shape, Tensor, TensorPrimitive};
use burn_cubecl::cubecl::{CubeCount, CubeDim};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::{tensor::CubeTensor, CubeRuntime};

use super::dispatch::{self, CubeKernel};

/// Query rows per cube (one unit each): one warp on NVIDIA.
pub const BLOCK_Q: usize = 32;
/// Shared memory the K and V tiles may take (f32): 16 KiB, the least any WebGPU/Vulkan device
/// offers per workgroup.
const TILE_BYTES: usize = 16 * 1024;
/// The largest head dimension served (the per-unit query row and accumulator live in registers).
pub const MAX_HEAD_DIM: usize = 256;

/// Set `COUPLED_GRPO_CUBE_ATTENTION=0` to keep Burn's materialised attention on CubeCL backends
/// (to compare the two on a device).
const SWITCH: &str = "COUPLED_GRPO_CUBE_ATTENTION";

fn switched_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var(SWITCH).map_or(true, |v| v != "0"))
}

/// Whether [`grouped_attention`] serves this backend, dtype and head dimension: a CubeCL backend
/// (not under autodiff), f32/f16/bf16, `head_dim ≤` [`MAX_HEAD_DIM`], and not switched off by
/// `COUPLED_GRPO_CUBE_ATTENTION=0`.
pub fn applies<B: Backend>(dtype: DType, head_dim: usize) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
        && (1..=MAX_HEAD_DIM).contains(&head_dim)
        && switched_on()
        && super::is_cube::<B>()
}

/// `softmax(q kᵀ + bias) v` per query head, query head `i` using kv head `i / (heads / kv)`, in
/// one kernel (f32 accumulation); `None` where it does not apply ([`applies`]), and then the
/// caller keeps the generic path. `q` must already carry RoPE and the `head_dim^-1/2` scale.
/// Queries and keys may differ in number (queries over cached keys and values).
///
/// # Shapes
/// - q: `[batch, seq_q, heads, head_dim]`
/// - k, v: `[batch, seq_k, kv_heads, head_dim]`, `heads` a multiple of `kv_heads`
/// - bias: `[batch, 1, seq_q, seq_k]` additive (0 = attend), or `None`
/// - returns `[batch, seq_q, heads · head_dim]`, q's dtype
pub fn grouped_attention<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    bias: Option<&Tensor<B, 4>>,
) -> Option<Tensor<B, 3>> {
    let [b, sq, h, hd] = q.dims();
    let [_, sk, kv, _] = k.dims();
    let dtype = q.dtype();
    if !applies::<B>(dtype, hd) || k.dtype() != dtype || v.dtype() != dtype {
        return None;
    }
    assert!(
        kv > 0 && h % kv == 0,
        "{h} query heads cannot share {kv} kv heads"
    );
    let mut inputs = vec![
        q.clone().into_primitive().tensor(),
        k.clone().into_primitive().tensor(),
        v.clone().into_primitive().tensor(),
    ];
    if let Some(bias) = bias {
        assert_eq!(bias.dims(), [b, 1, sq, sk], "attention bias shape");
        inputs.push(bias.clone().cast(DType::F32).into_primitive().tensor());
    }
    let kernel = FlashAttention {
        rep: h / kv,
        head_dim: hd,
    };
    let out_shape = Shape::new([b, sq, h * hd]);
    let mut out = dispatch::run_float::<B, _>(kernel, inputs, &[(out_shape, dtype)])?;
    let out = out.pop().expect("one output");
    Some(Tensor::from_primitive(TensorPrimitive::Float(out)))
}

/// The kernel's launch parameters; inputs q, k, v and optionally the f32 bias.
#[derive(Debug, Clone, Copy)]
struct FlashAttention {
    rep: usize,
    head_dim: usize,
}

impl FlashAttention {
    /// Keys per shared-memory tile: K and V tiles of `block_k · head_dim` f32 fit [`TILE_BYTES`].
    fn block_k(&self) -> usize {
        (TILE_BYTES / (2 * self.head_dim * 4)).clamp(1, 64)
    }
}

impl CubeKernel for FlashAttention {
    const NAME: &'static str = "coupled_grpo_flash_attention";

    fn run<R: CubeRuntime>(&self, inputs: Vec<CubeTensor<R>>) -> Vec<CubeTensor<R>> {
        let mut inputs = inputs.into_iter();
        let (q, k, v) = (
            inputs.next().expect("q"),
            inputs.next().expect("k"),
            inputs.next().expect("v"),
        );
        let [b, sq, h, hd] = q.meta.shape().dims::<4>();
        let (client, device, dtype) = (q.client.clone(), q.device.clone(), q.dtype);
        let has_bias = inputs.len() == 1;
        // The kernel always takes a bias argument; without one it reads nothing from it.
        let bias = inputs.next().unwrap_or_else(|| {
            empty_device_contiguous_dtype::<R>(
                client.clone(),
                device.clone(),
                Shape::new([1, 1, 1, 1]),
                DType::F32,
            )
        });
        let out = empty_device_contiguous_dtype::<R>(
            client.clone(),
            device,
            Shape::new([b, sq, h * hd]),
            dtype,
        );
        let cube_count = CubeCount::Static(sq.div_ceil(BLOCK_Q) as u32, h as u32, b as u32);
        kernel::flash_attention::launch::<R>(
            &client,
            cube_count,
            CubeDim::new_1d(BLOCK_Q as u32),
            q.into_tensor_arg(),
            k.into_tensor_arg(),
            v.into_tensor_arg(),
            bias.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            self.rep as u32,
            self.head_dim,
            self.block_k(),
            has_bias,
            dtype.into(),
        );
        vec![out]
    }
}

/// The kernel, apart: CubeCL's prelude has its own `Tensor`.
mod kernel {
    use cubecl::prelude::*;

    /// One unit per query row `(batch, row, head)`: the row's scores against one tile of keys
    /// at a time, the running max `m` and sum `l` of the online softmax, and the f32
    /// accumulator of `Σ exp(score − m) · v`, rescaled when `m` grows. Rows past `seq_q` still
    /// join the tile loads and barriers. `bias` is read only when `has_bias` (f32,
    /// `[batch, 1, seq_q, seq_k]`).
    #[allow(clippy::too_many_arguments)]
    #[cube(launch)]
    pub(super) fn flash_attention<F: Float>(
        q: &Tensor<F>,
        k: &Tensor<F>,
        v: &Tensor<F>,
        bias: &Tensor<f32>,
        out: &mut Tensor<F>,
        rep: u32,
        #[comptime] head_dim: usize,
        #[comptime] block_k: usize,
        #[comptime] has_bias: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        let batch = CUBE_POS_Z as usize;
        let head = CUBE_POS_Y as usize;
        let row = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
        let kv_head = head / rep as usize;
        let seq_q = q.shape(1);
        let seq_k = k.shape(1);
        let active = row < seq_q;

        let mut k_tile = SharedMemory::<f32>::new(block_k * head_dim);
        let mut v_tile = SharedMemory::<f32>::new(block_k * head_dim);
        let mut q_row = Array::<f32>::new(head_dim);
        let mut acc = Array::<f32>::new(head_dim);
        let mut scores = Array::<f32>::new(block_k);

        let q_base = batch * q.stride(0) + row * q.stride(1) + head * q.stride(2);
        for d in 0..head_dim {
            let mut x = f32::new(0.0);
            if active {
                x = f32::cast_from(q[q_base + d * q.stride(3)]);
            }
            q_row[d] = x;
            acc[d] = f32::new(0.0);
        }

        let k_base = batch * k.stride(0) + kv_head * k.stride(2);
        let v_base = batch * v.stride(0) + kv_head * v.stride(2);
        let bias_base = batch * bias.stride(0) + row * bias.stride(2);
        // Finite "minus infinity": WGSL has no infinity literal. The padding bias is -1e9 and
        // no row is fully blocked, so real scores always exceed it.
        let mut m = f32::new(-3.0e38);
        let mut l = f32::new(0.0);
        let tile_len = block_k * head_dim;
        let mut start = 0usize;
        while start < seq_k {
            let mut i = UNIT_POS_X as usize;
            while i < tile_len {
                let key = start + i / head_dim;
                let d = i % head_dim;
                let mut kx = f32::new(0.0);
                let mut vx = f32::new(0.0);
                if key < seq_k {
                    kx = f32::cast_from(k[k_base + key * k.stride(1) + d * k.stride(3)]);
                    vx = f32::cast_from(v[v_base + key * v.stride(1) + d * v.stride(3)]);
                }
                k_tile[i] = kx;
                v_tile[i] = vx;
                i += CUBE_DIM_X as usize;
            }
            sync_cube();

            if active {
                let mut n = seq_k - start;
                if n > block_k {
                    n = block_k;
                }
                let mut tile_max = f32::new(-3.0e38);
                for j in 0..n {
                    let mut s = f32::new(0.0);
                    for d in 0..head_dim {
                        s += q_row[d] * k_tile[j * head_dim + d];
                    }
                    if has_bias {
                        s += bias[bias_base + (start + j) * bias.stride(3)];
                    }
                    scores[j] = s;
                    tile_max = max(tile_max, s);
                }
                let m_new = max(m, tile_max);
                let correction = f32::exp(m - m_new);
                l *= correction;
                for d in 0..head_dim {
                    acc[d] *= correction;
                }
                for j in 0..n {
                    let p = f32::exp(scores[j] - m_new);
                    l += p;
                    for d in 0..head_dim {
                        acc[d] += p * v_tile[j * head_dim + d];
                    }
                }
                m = m_new;
            }
            sync_cube();
            start += block_k;
        }

        if active {
            let out_base = batch * out.stride(0) + row * out.stride(1);
            let inv = f32::new(1.0) / l;
            for d in 0..head_dim {
                out[out_base + (head * head_dim + d) * out.stride(2)] = F::cast_from(acc[d] * inv);
            }
        }
    }
}
