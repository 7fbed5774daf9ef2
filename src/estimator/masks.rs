//! Mask randomness and masked inputs.
//!
//! Every random draw of a likelihood estimate comes from a dedicated ChaCha8 stream keyed by
//! [`MaskSeed`] = (run seed, rollout round, iteration) and, per row, by the row's index in the
//! rollout batch. Nothing reseeds global state, and a row's mask does not depend on how the
//! batch is chunked, so π_old, π_ref and π_θ see identical masks and `t` for one iteration
//! whether they score the whole rollout batch at once or one gradient-accumulation chunk.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Key of one iteration's mask draws: iteration `j` of rollout round `round` in a run seeded
/// with `base`. Spec §9: one `t` and one mask per (round, iteration), shared by π_old, π_ref
/// and π_θ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MaskSeed {
    pub base: u64,
    pub round: u64,
    pub iteration: u64,
}

/// Streams inside one [`MaskSeed`]: stream 0 draws the batch-level scalars (`t`), stream
/// `1 + row` the per-row uniforms.
const SCALAR_STREAM: u64 = 0;

/// Domain tag mixed into the key so mask draws never collide with other keyed RNG uses.
const MASK_DOMAIN: u64 = 0x6d61_736b_5f72_6e67; // "mask_rng"

impl MaskSeed {
    pub fn new(base: u64, round: u64, iteration: u64) -> Self {
        Self {
            base,
            round,
            iteration,
        }
    }

    /// A ChaCha8 generator for `stream` under this key.
    pub fn rng(&self, stream: u64) -> ChaCha8Rng {
        keyed_rng([self.base, self.round, self.iteration, MASK_DOMAIN], stream)
    }

    /// The generator for batch-level scalars (mask ratios).
    pub fn scalar_rng(&self) -> ChaCha8Rng {
        self.rng(SCALAR_STREAM)
    }

    /// The generator for row `row` of the rollout batch.
    pub fn row_rng(&self, row: usize) -> ChaCha8Rng {
        self.rng(1 + row as u64)
    }
}

/// ChaCha8 keyed by four words (little-endian) on `stream`.
pub fn keyed_rng(key: [u64; 4], stream: u64) -> ChaCha8Rng {
    let mut seed = [0u8; 32];
    for (i, word) in key.iter().enumerate() {
        seed[i * 8..(i + 1) * 8].copy_from_slice(&word.to_le_bytes());
    }
    let mut rng = ChaCha8Rng::from_seed(seed);
    rng.set_stream(stream);
    rng
}

/// Draw `count` mask ratios `t ~ U(t_min, t_max)` for one iteration (one per complementary
/// pair), from the key's scalar stream.
pub fn draw_ratios(seed: &MaskSeed, count: usize, t_min: f32, t_max: f32) -> Vec<f32> {
    let mut rng = seed.scalar_rng();
    (0..count)
        .map(|_| t_min + (t_max - t_min) * rng.random::<f32>())
        .collect()
}

/// `count` uniforms in `[0, 1)` per draw, `draws` draws, from one row's stream.
pub fn row_uniforms(seed: &MaskSeed, row: usize, draws: usize, count: usize) -> Vec<Vec<f32>> {
    let mut rng = seed.row_rng(row);
    (0..draws)
        .map(|_| (0..count).map(|_| rng.random::<f32>()).collect())
        .collect()
}

/// The complementary pair for uniforms `u` and ratio `t`: `v1[k] = u[k] < t`, `v2 = !v1`.
/// Every completion token is masked in exactly one of the two (the U == t tie of the
/// reference, which masks in neither, cannot happen).
pub fn complementary_pair(u: &[f32], t: f32) -> (Vec<bool>, Vec<bool>) {
    let v1: Vec<bool> = u.iter().map(|&x| x < t).collect();
    let v2 = v1.iter().map(|&m| !m).collect();
    (v1, v2)
}

/// Independent Bernoulli(`t`) mask from uniforms.
pub fn bernoulli_mask(u: &[f32], t: f32) -> Vec<bool> {
    u.iter().map(|&x| x < t).collect()
}

/// One row's model input for one view: `[prompt ; completion]` with `<|mask|>` written where
/// `prompt_masked` / `completion_masked` say. Left pads of the prompt are never masked.
///
/// # Shapes
/// - prompt_ids, prompt_attention, prompt_masked: `[P]`
/// - completion_ids, completion_masked: `[K]`
/// - returns `[P + K]`
pub fn masked_input(
    prompt_ids: &[u32],
    prompt_attention: &[u32],
    prompt_masked: Option<&[bool]>,
    completion_ids: &[u32],
    completion_masked: &[bool],
    mask_id: u32,
) -> Vec<i64> {
    let mut out = Vec::with_capacity(prompt_ids.len() + completion_ids.len());
    for (j, &id) in prompt_ids.iter().enumerate() {
        let masked = prompt_attention[j] == 1 && prompt_masked.is_some_and(|m| m[j]);
        out.push(if masked { mask_id } else { id } as i64);
    }
    for (k, &id) in completion_ids.iter().enumerate() {
        out.push(if completion_masked[k] { mask_id } else { id } as i64);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_is_complementary_for_every_token() {
        for it in 0..50u64 {
            let seed = MaskSeed::new(7, 3, it);
            let t = draw_ratios(&seed, 1, 0.2, 0.8)[0];
            assert!((0.2..0.8).contains(&t));
            for row in 0..4 {
                let u = &row_uniforms(&seed, row, 1, 64)[0];
                let (v1, v2) = complementary_pair(u, t);
                for k in 0..64 {
                    assert!(
                        v1[k] ^ v2[k],
                        "token {k} must be masked in exactly one view"
                    );
                }
            }
        }
    }

    #[test]
    fn draws_are_keyed_not_sequential() {
        let a = MaskSeed::new(1, 2, 0);
        let b = MaskSeed::new(1, 2, 1);
        // Same key, any call order: identical draws.
        assert_eq!(row_uniforms(&a, 5, 1, 8), row_uniforms(&a, 5, 1, 8));
        let _ = row_uniforms(&b, 0, 3, 100);
        assert_eq!(row_uniforms(&a, 5, 1, 8), row_uniforms(&a, 5, 1, 8));
        // Different iteration, row or round: different draws.
        assert_ne!(row_uniforms(&a, 5, 1, 8), row_uniforms(&b, 5, 1, 8));
        assert_ne!(row_uniforms(&a, 5, 1, 8), row_uniforms(&a, 6, 1, 8));
        assert_ne!(
            draw_ratios(&a, 1, 0.2, 0.8),
            draw_ratios(&MaskSeed::new(1, 3, 0), 1, 0.2, 0.8)
        );
    }

    #[test]
    fn masked_input_never_masks_pads_or_unselected_tokens() {
        let ids = masked_input(
            &[9, 9, 10, 11],
            &[0, 0, 1, 1],
            Some(&[true, true, true, false]),
            &[20, 21, 22],
            &[true, false, true],
            3,
        );
        assert_eq!(ids, vec![9, 9, 3, 11, 3, 21, 3]);
    }
}
