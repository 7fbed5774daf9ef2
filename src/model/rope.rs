//! Rotary position embedding in the HF `rotate_half` convention (Qwen2/Dream weights).
//! Burn's built-in `RotaryEncoding` rotates interleaved pairs, which is wrong for HF weights.

use burn::tensor::{backend::Backend, DType, Int, Tensor};

/// Cos/sin tables for a batch of position ids, and the `rotate_half` permutation.
///
/// The tables are materialised per head count (`[batch, seq, heads, head_dim]`, contiguous),
/// once per forward: multiplying by a broadcast `[batch, seq, 1, head_dim]` view falls off the
/// CPU backend's SIMD paths into an element-by-element strided loop, which cost more than the
/// projections themselves.
#[derive(Debug, Clone)]
pub struct Rope<B: Backend> {
    /// `[batch, seq, num_attention_heads, head_dim]`
    pub cos_q: Tensor<B, 4>,
    pub sin_q: Tensor<B, 4>,
    /// `[batch, seq, num_key_value_heads, head_dim]`
    pub cos_k: Tensor<B, 4>,
    pub sin_k: Tensor<B, 4>,
    /// `[head_dim, head_dim]`: `x · R = rotate_half(x)`. A matmul on contiguous rows is much
    /// cheaper than the slice + negate + concatenate of the textbook form, whose strided
    /// copies dominated the attention prologue on CPU; every product is by ±1 or 0, so the
    /// result is exact in any dtype.
    pub rotate_half: Tensor<B, 2>,
}

/// Tables for `positions`, for `heads` query and `kv_heads` key heads.
///
/// # Shapes
/// - positions: `[batch, seq]` (Int)
pub fn rope_tables<B: Backend>(
    positions: Tensor<B, 2, Int>,
    head_dim: usize,
    (heads, kv_heads): (usize, usize),
    theta: f64,
    dtype: DType,
) -> Rope<B> {
    let device = positions.device();
    let half = head_dim / 2;
    // inv_freq[i] = theta^(-2i/d), computed in f64 on the host like HF (then f32).
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32)
        .collect();
    let inv_freq = Tensor::<B, 1>::from_floats(inv_freq.as_slice(), &device).reshape([1, 1, half]);
    let pos = positions.float().unsqueeze_dim::<3>(2); // [b, s, 1]
    let freqs = pos * inv_freq; // [b, s, half]
    let emb = Tensor::cat(vec![freqs.clone(), freqs], 2); // [b, s, d]
    let cos = emb.clone().cos().unsqueeze_dim::<4>(2).cast(dtype); // [b, s, 1, d]
    let sin = emb.sin().unsqueeze_dim::<4>(2).cast(dtype);
    let rotate_half = rotate_half_matrix::<B>(head_dim, &device).cast(dtype);
    Rope {
        cos_q: cos.clone().repeat_dim(2, heads),
        sin_q: sin.clone().repeat_dim(2, heads),
        cos_k: cos.repeat_dim(2, kv_heads),
        sin_k: sin.repeat_dim(2, kv_heads),
        rotate_half,
    }
}

/// The `[head_dim, head_dim]` f32 matrix `R` with `x · R = rotate_half(x)`, where
/// `rotate_half([x1, x2]) = [-x2, x1]`: output `j < half` takes `−x[j + half]`, `j ≥ half` takes
/// `x[j − half]`. The fused CPU path ([`crate::cpu::ops::rope`]) rotates without it.
pub fn rotate_half_matrix<B: Backend>(head_dim: usize, device: &B::Device) -> Tensor<B, 2> {
    let half = head_dim / 2;
    let mut r = vec![0.0f32; head_dim * head_dim];
    for j in 0..half {
        r[(j + half) * head_dim + j] = -1.0;
        r[j * head_dim + j + half] = 1.0;
    }
    Tensor::<B, 1>::from_floats(r.as_slice(), device).reshape([head_dim, head_dim])
}

/// RoPE by plain composition, the reference for the fused [`crate::cpu::ops::rope`] (and the
/// CubeCL kernel behind it): `(x · cos + rotate_half(x) · sin) · scale`, with `rotate_half` as a
/// product by [`rotate_half_matrix`].
///
/// # Shapes
/// - x: `[batch, seq, heads, head_dim]` → the same shape
/// - cos, sin: broadcastable to x
pub fn rope_reference<B: Backend>(
    x: Tensor<B, 4>,
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
    scale: f32,
) -> Tensor<B, 4> {
    let [b, s, h, d] = x.dims();
    let r = rotate_half_matrix::<B>(d, &x.device());
    let rotated = x
        .clone()
        .reshape([b * s * h, d])
        .matmul(r)
        .reshape([b, s, h, d]);
    (x * cos + rotated * sin) * scale
}
