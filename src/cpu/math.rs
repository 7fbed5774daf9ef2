//! Vectorised f32 kernels on slices: `exp`, fused SiLU·up, and row softmax.
//!
//! burn-flex evaluates `exp` one scalar libm call at a time (SiLU, softmax and the sampler's
//! softmax were 15 % of a CPU rollout pass). These kernels use a branch-free Cephes-style `expf`
//! (range reduction to `[-ln2/2, ln2/2]`, degree-6 polynomial, exponent bits built directly; about
//! 2 ulp) that LLVM vectorises, compiled for AVX-512 and AVX2+FMA and picked at run time.

/// Runs `$body` inside a function compiled for the best vector ISA this CPU has.
macro_rules! dispatch {
    ($body:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the feature was detected on this CPU.
                unsafe { avx512(|| $body) }
            } else if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: both features were detected on this CPU.
                unsafe { avx2(|| $body) }
            } else {
                $body
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $body
        }
    }};
}

const LOG2E: f32 = std::f32::consts::LOG2_E;
// ln 2 split so that `n · LN2_HI` is exact for |n| < 2^9.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Adding and subtracting 1.5 · 2^23 rounds an f32 of magnitude < 2^22 to the nearest integer.
const ROUND: f32 = 12_582_912.0;

/// `e^x` for one lane, written so that a loop of it vectorises. Results below `e^-87.3` are 0
/// (so a blocked logit's weight is exactly zero); the input is capped at 88 (no overflow).
/// Meant for loops inside the kernels here, which are compiled with FMA: elsewhere on x86 each
/// of its fused multiply-adds is a libm call.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let xc = x.clamp(-87.5, 88.0);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    // `n` as an integer straight from the bits of `t` (ROUND + n shares ROUND's exponent): a
    // saturating `as i32` would not vectorise.
    let n_int = t.to_bits().wrapping_sub(ROUND.to_bits());
    // Fused multiply-adds: the kernels run this inside AVX2+FMA or AVX-512 functions (or on a
    // target with native FMA); only the portable x86 fallback pays a libm `fmaf` call.
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, xc));
    let mut p = 1.987_569_2e-4f32;
    p = p.mul_add(r, 1.398_2e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let y = (p * r).mul_add(r, r + 1.0);
    let scale = f32::from_bits(n_int.wrapping_add(127) << 23);
    if x < -87.3 {
        0.0
    } else {
        y * scale
    }
}

/// `x ← f(x)` in blocks of 16 lanes. A plain loop gets vectorised 64 lanes at a time with a
/// scalar epilogue, which is most of the work for rows as short as attention's.
#[inline(always)]
fn map16(x: &mut [f32], f: impl Fn(f32) -> f32) {
    let mut chunks = x.chunks_exact_mut(16);
    for c in &mut chunks {
        for v in c.iter_mut() {
            *v = f(*v);
        }
    }
    for v in chunks.into_remainder() {
        *v = f(*v);
    }
}

/// `x ← f(x, y)` in blocks of 16 lanes (see [`map16`]).
#[inline(always)]
fn zip_map16(x: &mut [f32], y: &[f32], f: impl Fn(f32, f32) -> f32) {
    let mut chunks = x.chunks_exact_mut(16);
    let mut ys = y.chunks_exact(16);
    for (c, d) in (&mut chunks).zip(&mut ys) {
        for (v, &w) in c.iter_mut().zip(d) {
            *v = f(*v, w);
        }
    }
    for (v, &w) in chunks.into_remainder().iter_mut().zip(ys.remainder()) {
        *v = f(*v, w);
    }
}

/// `x ← e^x` element-wise.
pub fn exp_inplace(x: &mut [f32]) {
    dispatch!(map16(x, exp))
}

/// `gate ← silu(gate) · up = gate / (1 + e^-gate) · up`, element-wise (Qwen2's SwiGLU).
pub fn silu_mul_inplace(gate: &mut [f32], up: &[f32]) {
    debug_assert_eq!(gate.len(), up.len());
    dispatch!(zip_map16(gate, up, |g, u| g / (1.0 + exp(-g)) * u))
}

/// Row-wise log-softmax of `x` viewed as `[x.len() / row_len, row_len]`:
/// `x ← x − max − ln Σ e^(x − max)`.
pub fn log_softmax_rows_inplace(x: &mut [f32], row_len: usize) {
    debug_assert!(row_len > 0 && x.len().is_multiple_of(row_len));
    dispatch!(for row in x.chunks_exact_mut(row_len) {
        let m = add_max(row, None);
        let shift = m + sum_by(row, |v| exp(v - m)).ln();
        map16(row, |v| v - shift);
    })
}

/// The log-partition `max + ln Σ e^(x − max)` of one row (`-inf` for an empty or all `-inf`
/// row).
pub fn logsumexp(row: &[f32]) -> f32 {
    dispatch!({
        let m = max(row);
        if m == f32::NEG_INFINITY {
            m
        } else {
            m + sum_by(row, |v| exp(v - m)).ln()
        }
    })
}

/// `row ← −d · e^(row − lse)`: the gradient of `−d · lse` with respect to the logits `row`
/// whose log-partition is `lse` (the fused output head's backward, before the target's `+d`).
pub fn neg_scaled_softmax_inplace(row: &mut [f32], lse: f32, d: f32) {
    dispatch!(map16(row, |v| -d * exp(v - lse)))
}

/// Log-softmax backward per row of `row_len`: `g ← g − e^lp · Σ_row g` (`g` holds the output
/// gradient on entry, `lp` the log-softmax output).
pub fn log_softmax_backward_rows(lp: &[f32], g: &mut [f32], row_len: usize) {
    debug_assert!(lp.len() == g.len() && g.len().is_multiple_of(row_len));
    dispatch!(
        for (g, lp) in g.chunks_exact_mut(row_len).zip(lp.chunks_exact(row_len)) {
            let total = sum_by(g, |v| v);
            g.iter_mut()
                .zip(lp)
                .for_each(|(g, &l)| *g -= exp(l) * total);
        }
    )
}

/// RMSNorm of each row of `x` (length `w.len()`) into `out`: `x · w / sqrt(mean(x²) + eps)`.
pub fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    debug_assert!(x.len() == out.len() && x.len().is_multiple_of(d));
    dispatch!(
        for (x, out) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            let inv = 1.0 / (sum_by(x, |v| v * v) / d as f32 + eps).sqrt();
            out.iter_mut()
                .zip(x)
                .zip(w)
                .for_each(|((o, &x), &w)| *o = x * inv * w);
        }
    )
}

/// RMSNorm backward over rows of `x`: `dx ← inv · g·w − x · inv³ / d · Σ g·w·x` per row
/// (`dx` holds the output gradient `g` on entry) and `dw += Σ_rows g · x · inv`.
pub fn rms_norm_backward_rows(x: &[f32], w: &[f32], eps: f32, dx: &mut [f32], dw: &mut [f32]) {
    let d = w.len();
    debug_assert!(x.len() == dx.len() && x.len().is_multiple_of(d) && dw.len() == d);
    dispatch!(
        for (x, g) in x.chunks_exact(d).zip(dx.chunks_exact_mut(d)) {
            let inv = 1.0 / (sum_by(x, |v| v * v) / d as f32 + eps).sqrt();
            let mut acc = [0.0f32; 16];
            let (gc, xc, wc) = (g.chunks_exact(16), x.chunks_exact(16), w.chunks_exact(16));
            let mut dot: f32 = gc
                .remainder()
                .iter()
                .zip(xc.remainder())
                .zip(wc.remainder())
                .map(|((g, x), w)| g * w * x)
                .sum();
            for ((g, x), w) in gc.zip(xc).zip(wc) {
                for i in 0..16 {
                    acc[i] += g[i] * w[i] * x[i];
                }
            }
            dot += acc.iter().sum::<f32>();
            let c = inv * inv * inv * dot / d as f32;
            for (((g, &x), &w), dw) in g.iter_mut().zip(x).zip(w).zip(dw.iter_mut()) {
                *dw += *g * x * inv;
                *g = inv * *g * w - x * c;
            }
        }
    )
}

/// Gradients of `out = silu(g) · u`: `dg ← dout · u · σ(g)(1 + g(1 − σ(g)))` and
/// `du ← dout · silu(g)`, where `dg` and `du` both hold `dout` on entry.
pub fn silu_mul_backward(g: &[f32], u: &[f32], dg: &mut [f32], du: &mut [f32]) {
    debug_assert!(g.len() == u.len() && g.len() == dg.len() && g.len() == du.len());
    dispatch!(
        for (((dg, du), &g), &u) in dg.iter_mut().zip(du.iter_mut()).zip(g).zip(u) {
            let s = 1.0 / (1.0 + exp(-g));
            let d = *dg;
            *dg = d * u * s * (1.0 + g * (1.0 - s));
            *du = d * g * s;
        }
    )
}

/// Softmax backward per row of `row_len`: `g ← p ⊙ (g − Σ_row g ⊙ p)` (`g` holds the output
/// gradient on entry, `p` the softmax output).
pub fn softmax_backward_rows(p: &[f32], g: &mut [f32], row_len: usize) {
    debug_assert!(p.len() == g.len() && g.len().is_multiple_of(row_len));
    dispatch!(
        for (g, p) in g.chunks_exact_mut(row_len).zip(p.chunks_exact(row_len)) {
            let dot = dot(g, p);
            zip_map16(g, p, |g, p| p * (g - dot));
        }
    )
}

/// `Σ f(x)` with 16 independent accumulators (vectorisable; the order differs from a serial
/// sum).
#[inline(always)]
fn sum_by(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `Σ a·b` with 16 independent accumulators (see [`sum_by`]).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The maximum of `x` (`-inf` when empty; NaN never wins).
#[inline(always)]
fn max(x: &[f32]) -> f32 {
    // LLVM vectorises neither a float max reduction (it would need fast-math) nor, in the
    // softmax, the bias add next to it; 16 accumulators at least keep this pipelined.
    let pick = |a: f32, v: f32| if v > a { v } else { a };
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| pick(m, v));
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = pick(*a, v);
        }
    }
    acc.iter().fold(tail, |m, &v| pick(m, v))
}

/// `x ← x + bias` (when given) and the maximum of the result, with AVX-512 intrinsics where
/// the CPU has them.
#[inline(always)]
fn add_max(x: &mut [f32], bias: Option<&[f32]>) -> f32 {
    assert!(bias.is_none_or(|b| b.len() == x.len()), "bias length");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was detected on this CPU.
        return unsafe { add_max_avx512(x, bias) };
    }
    if let Some(b) = bias {
        zip_map16(x, b, |v, b| v + b);
    }
    max(x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn add_max_avx512(x: &mut [f32], bias: Option<&[f32]>) -> f32 {
    use std::arch::x86_64::*;
    let low = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut acc = low;
    let n = x.len();
    let mut i = 0;
    while i < n {
        let left = n - i;
        let mask: u16 = if left >= 16 {
            u16::MAX
        } else {
            (1u16 << left) - 1
        };
        // SAFETY: the mask covers only elements `i..n` of `x` and of `bias` (same length,
        // asserted by the caller).
        unsafe {
            let p = x.as_mut_ptr().add(i);
            let mut v = _mm512_mask_loadu_ps(low, mask, p);
            if let Some(b) = bias {
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, b.as_ptr().add(i)));
                _mm512_mask_storeu_ps(p, mask, v);
            }
            // MAXPS returns its second operand when either is NaN: a NaN never wins.
            acc = _mm512_max_ps(v, acc);
        }
        i += 16;
    }
    _mm512_reduce_max_ps(acc)
}

/// Softmax of one row in place, after adding `bias` (same length) when given; returns the
/// row's `(max, Σ e^(x − max))` (its log-partition is `max + ln Σ`). A row whose entries are
/// all `-inf` becomes all zeros instead of NaN.
#[inline(always)]
fn softmax_row(row: &mut [f32], bias: Option<&[f32]>) -> (f32, f32) {
    let m = add_max(row, bias);
    if m == f32::NEG_INFINITY {
        row.fill(0.0);
        return (m, 0.0);
    }
    let s = exp_sum(row, m);
    let inv = 1.0 / s;
    map16(row, |v| v * inv);
    (m, s)
}

/// `x ← e^(x − m)` and the sum of the result, in one pass (16 lanes, as [`sum_by`]).
#[inline(always)]
fn exp_sum(x: &mut [f32], m: f32) -> f32 {
    let mut acc = [0.0f32; 16];
    let mut xs = x.chunks_exact_mut(16);
    for c in &mut xs {
        for i in 0..16 {
            c[i] = exp(c[i] - m);
            acc[i] += c[i];
        }
    }
    let mut tail = 0.0f32;
    for v in xs.into_remainder() {
        *v = exp(*v - m);
        tail += *v;
    }
    acc.iter().sum::<f32>() + tail
}

/// Row-wise softmax of `x` viewed as `[x.len() / row_len, row_len]`, after adding `bias` (same
/// layout) when given.
pub fn softmax_rows_inplace(x: &mut [f32], bias: Option<&[f32]>, row_len: usize) {
    debug_assert!(row_len > 0 && x.len().is_multiple_of(row_len));
    dispatch!(match bias {
        Some(bias) => {
            debug_assert_eq!(bias.len(), x.len());
            for (row, b) in x.chunks_exact_mut(row_len).zip(bias.chunks_exact(row_len)) {
                softmax_row(row, Some(b));
            }
        }
        None => x.chunks_exact_mut(row_len).for_each(|row| {
            softmax_row(row, None);
        }),
    })
}

/// Softmax of one row in place (see [`softmax_rows_inplace`]); returns `(max, Σ e^(x − max))`.
pub fn softmax_inplace(row: &mut [f32]) -> (f32, f32) {
    dispatch!(softmax_row(row, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm_to_a_few_ulp_over_the_useful_range() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 4e-7, "max relative error {worst}");
        let mut v = vec![0.5f32; 37];
        exp_inplace(&mut v);
        assert!(v.iter().all(|&e| (e - 0.5f32.exp()).abs() < 1e-6));
    }

    #[test]
    fn exp_is_zero_for_blocked_logits_and_finite_at_the_top() {
        for x in [f32::NEG_INFINITY, f32::MIN, -1e9, -88.0] {
            assert_eq!(exp(x), 0.0, "{x}");
        }
        assert!(exp(1e9).is_finite() && exp(88.0).is_finite());
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn silu_mul_matches_the_definition() {
        let g: Vec<f32> = (0..100).map(|i| (i as f32 - 50.0) * 0.37).collect();
        let u: Vec<f32> = (0..100).map(|i| 1.0 + i as f32 * 0.01).collect();
        let mut out = g.clone();
        silu_mul_inplace(&mut out, &u);
        for ((o, &g), &u) in out.iter().zip(&g).zip(&u) {
            let want = g as f64 / (1.0 + (-g as f64).exp()) * u as f64;
            assert!(
                (*o as f64 - want).abs() < 1e-5 * (1.0 + want.abs()),
                "{g}: {o} vs {want}"
            );
        }
    }

    #[test]
    fn softmax_rows_with_bias_sum_to_one_and_zero_blocked_entries() {
        let row_len = 19;
        let x: Vec<f32> = (0..3 * row_len)
            .map(|i| ((i * 7) % 11) as f32 * 0.3)
            .collect();
        let mut bias = vec![0.0f32; x.len()];
        bias[2] = -1e30;
        bias[row_len + 5] = f32::MIN;
        let mut got = x.clone();
        softmax_rows_inplace(&mut got, Some(&bias), row_len);
        for (r, row) in got.chunks(row_len).enumerate() {
            let xs: Vec<f64> = (0..row_len)
                .map(|j| (x[r * row_len + j] + bias[r * row_len + j]) as f64)
                .collect();
            let m = xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = xs.iter().map(|v| (v - m).exp()).sum();
            for (j, &p) in row.iter().enumerate() {
                let want = (xs[j] - m).exp() / z;
                assert!(
                    (p as f64 - want).abs() < 1e-6,
                    "row {r} col {j}: {p} vs {want}"
                );
            }
        }
        assert_eq!((got[2], got[row_len + 5]), (0.0, 0.0));
        let mut dead = vec![f32::NEG_INFINITY; 4];
        softmax_inplace(&mut dead);
        assert_eq!(dead, vec![0.0; 4]);
    }
}
