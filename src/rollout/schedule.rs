//! Dream's reveal schedule, bit-exact with PyTorch's float32 arithmetic.
//!
//! `timesteps = torch.linspace(1, eps, steps + 1)` (float32), and step `i` reveals
//! `int(n_mask * (1 - t[i+1] / t[i]))` positions (everything left on the last step), every
//! operation a float32 tensor op. Small rounding differences change the integer counts, so the
//! float32 arithmetic is reproduced exactly rather than approximated in f64.

/// `torch.linspace(start, end, n)` in float32 as PyTorch's CPU kernel computes it: `step =
/// (end - start) / (n - 1)`, then `start + step * i` for the first half and `end - step * (n -
/// 1 - i)` for the second, each a fused multiply-add (one rounding), as the vectorised kernel does.
pub fn linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    match n {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (end - start) / (n - 1) as f32;
            let half = n / 2;
            (0..n)
                .map(|i| {
                    if i < half {
                        step.mul_add(i as f32, start)
                    } else {
                        (-step).mul_add((n - 1 - i) as f32, end)
                    }
                })
                .collect()
        }
    }
}

/// Dream's timesteps `linspace(1, eps, steps + 1)`: `t_0 = 1 … t_steps = eps`.
pub fn timesteps(steps: usize, eps: f32) -> Vec<f32> {
    linspace_f32(1.0, eps, steps + 1)
}

/// Positions to reveal at a step with `n_masked` masked positions going from time `t` to `s`:
/// `floor(n_masked · (1 − s/t))` in float32, or all of them on the last step.
pub fn transfer_count(n_masked: usize, t: f32, s: f32, last: bool) -> usize {
    if last {
        return n_masked;
    }
    let fraction = 1.0f32 - s / t;
    // Truncation toward zero, as Python's int() on a float32 tensor.
    (n_masked as f32 * fraction).max(0.0) as usize
}

/// LLaDA's `get_num_transfer_tokens`: `n_masked` positions over `steps` steps, `n / steps`
/// each and one more in the first `n % steps` steps.
pub fn even_transfer_count(n_masked: usize, steps: usize, step: usize) -> usize {
    let steps = steps.max(1);
    n_masked / steps + usize::from(step < n_masked % steps)
}

/// `origin`'s per-position reveal probability at step `i`: `1 − s/t`, or 1 on the last step.
pub fn transfer_probability(ts: &[f32], i: usize) -> f32 {
    if i + 2 >= ts.len() {
        1.0
    } else {
        1.0 - ts[i + 1] / ts[i]
    }
}

/// Revealed counts per step for `n_tokens` masked positions and `steps` steps (top-k algs).
pub fn transfer_schedule(n_tokens: usize, steps: usize, eps: f32) -> Vec<usize> {
    let ts = timesteps(steps, eps);
    let mut left = n_tokens;
    (0..steps)
        .map(|i| {
            let n = transfer_count(left, ts[i], ts[i + 1], i + 1 == steps);
            left -= n;
            n
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_matches_torch_bits() {
        // torch.linspace(1, 1e-3, 257) in float32 (torch 2.x CPU); these entries differ by one
        // ulp from the unfused `start + step * i`.
        let ts = timesteps(256, 1e-3);
        let want = [
            (14, 0x3f72_0395u32),
            (27, 0x3f65_06e9),
            (29, 0x3f63_076d),
            (40, 0x3f58_0a3d),
            (46, 0x3f52_0bc7),
            (128, 0x3f00_20c5),
            (200, 0x3e60_cccd),
            (255, 0x3ba0_a3d7),
            (256, 0x3a83_126f),
        ];
        for (i, bits) in want {
            assert_eq!(ts[i].to_bits(), bits, "t[{i}] = {}", ts[i]);
        }
        assert_eq!(ts[0], 1.0);
        let ts8 = timesteps(8, 1e-3);
        assert_eq!(
            (ts8[3].to_bits(), ts8[5].to_bits()),
            (0x3f20_1893, 0x3ec0_51ec)
        );
        let ts17 = timesteps(17, 1e-3);
        assert_eq!(
            (ts17[3].to_bits(), ts17[7].to_bits(), ts17[11].to_bits()),
            (0x3f52_de63, 0x3f16_b193, 0x3eb5_0985)
        );
    }

    #[test]
    fn spec_table_256_tokens_256_steps() {
        let s = transfer_schedule(256, 256, 1e-3);
        assert_eq!(s.len(), 256);
        assert_eq!(s[0], 0, "the first step reveals nothing");
        assert!(s[1..255].iter().all(|&n| n == 1), "{s:?}");
        assert_eq!(s[255], 2);
        assert_eq!(s.iter().sum::<usize>(), 256);
    }

    #[test]
    fn spec_table_256_tokens_128_steps() {
        let s = transfer_schedule(256, 128, 1e-3);
        assert_eq!(s[0], 1);
        assert!(s[1..127].iter().all(|&n| n == 2), "{s:?}");
        assert_eq!(s[127], 3);
        assert_eq!(s.iter().sum::<usize>(), 256);
    }

    #[test]
    fn spec_table_512_tokens_512_steps_and_other_shapes() {
        let s = transfer_schedule(512, 512, 1e-3);
        assert_eq!((s[0], s[511]), (0, 2));
        assert!(s[1..511].iter().all(|&n| n == 1));
        // Values printed by PyTorch's own loop (int(nm * (1 - s / t)) on float32 tensors).
        assert_eq!(
            transfer_schedule(64, 10, 1e-3),
            vec![6, 6, 6, 6, 6, 6, 6, 7, 7, 8]
        );
        assert_eq!(transfer_schedule(30, 7, 1e-3), vec![4, 4, 4, 4, 4, 4, 6]);
        assert_eq!(transfer_schedule(7, 3, 1e-3), vec![2, 2, 3]);
        let s = transfer_schedule(100, 37, 1e-3);
        assert_eq!(
            (&s[..12], &s[12..36], s[36]),
            (&[2; 12][..], &[3; 24][..], 4)
        );
        let s = transfer_schedule(256, 64, 1e-3);
        assert_eq!((s[0], s[63]), (3, 5));
        assert!(s[1..63].iter().all(|&n| n == 4));
    }

    #[test]
    fn origin_probability_is_one_on_the_last_step() {
        let ts = timesteps(4, 1e-3);
        assert_eq!(transfer_probability(&ts, 3), 1.0);
        let p0 = transfer_probability(&ts, 0);
        assert!(
            (p0 - (1.0 - ts[1] / ts[0])).abs() < 1e-7 && p0 > 0.2 && p0 < 0.3,
            "{p0}"
        );
    }
}
