//! Rotary position embedding in the HF `rotate_half` convention (Qwen2/Dream weights).
//! Burn's built-in `RotaryEncoding` rotates interleaved pairs, which is wrong for HF weights.

use burn::tensor::{backend::Backend, DType, Int, Tensor};

/// Cos/sin tables for a batch of position ids.
///
/// # Shapes
/// - positions: `[batch, seq]` (Int)
/// - returns `(cos, sin)`, each `[batch, 1, seq, head_dim]` in `dtype`
pub fn rope_tables<B: Backend>(
    positions: Tensor<B, 2, Int>,
    head_dim: usize,
    theta: f64,
    dtype: DType,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
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
    let cos = emb.clone().cos().unsqueeze_dim::<4>(1).cast(dtype);
    let sin = emb.sin().unsqueeze_dim::<4>(1).cast(dtype);
    (cos, sin)
}

/// `x * cos + rotate_half(x) * sin`, with `rotate_half([x1, x2]) = [-x2, x1]`.
///
/// # Shapes
/// - x: `[batch, heads, seq, head_dim]`; cos, sin: `[batch, 1, seq, head_dim]`
pub fn apply_rope<B: Backend>(
    x: Tensor<B, 4>,
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [b, h, s, d] = x.dims();
    let half = d / 2;
    let x1 = x.clone().slice([0..b, 0..h, 0..s, 0..half]);
    let x2 = x.clone().slice([0..b, 0..h, 0..s, half..d]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos + rotated * sin
}
