//! Stable descending argsort of f32 rows by LSD radix sort: O(n) per row where a comparison
//! sort is O(n log n) (the sampler's top-p sort was 14 % of a CPU rollout pass).

/// Reusable buffers for [`argsort_descending`].
#[derive(Debug, Default)]
pub struct RadixScratch {
    /// `key << 32 | index`: one array to move per pass instead of two.
    items: Vec<u64>,
    items_tmp: Vec<u64>,
}

/// A u32 whose unsigned order is the descending total order of f32 (`+NaN` first, then `+inf`
/// … `+0`, `-0` … `-inf`, `-NaN`).
#[inline(always)]
fn descending_key(x: f32) -> u32 {
    let b = x.to_bits();
    let ascending = if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    };
    !ascending
}

/// Writes into `order` the indices of `values` sorted by descending value; equal values keep
/// their index order (stable), as a stable comparison sort would.
pub fn argsort_descending(values: &[f32], order: &mut Vec<u32>, scratch: &mut RadixScratch) {
    let n = values.len();
    assert!(n <= u32::MAX as usize, "argsort_descending: row too long");
    let RadixScratch { items, items_tmp } = scratch;
    items.clear();
    items.extend(
        values
            .iter()
            .enumerate()
            .map(|(i, &v)| (u64::from(descending_key(v)) << 32) | i as u64),
    );
    // All four digit histograms in one read.
    let mut counts = [[0u32; 256]; 4];
    for &item in items.iter() {
        let key = (item >> 32) as u32;
        for (digit, c) in counts.iter_mut().enumerate() {
            c[((key >> (8 * digit)) & 0xff) as usize] += 1;
        }
    }
    items_tmp.resize(n, 0);
    for (digit, counts) in counts.iter().enumerate() {
        if counts.iter().any(|&c| c as usize == n) {
            continue; // every key has the same digit here: the pass would not move anything
        }
        let mut next = [0usize; 256];
        let mut total = 0;
        for (slot, &c) in next.iter_mut().zip(counts) {
            *slot = total;
            total += c as usize;
        }
        let shift = 32 + 8 * digit;
        for &item in items.iter() {
            let d = ((item >> shift) & 0xff) as usize;
            // `next[d]` stays below n: the counts of digit d sum to n.
            items_tmp[next[d]] = item;
            next[d] += 1;
        }
        std::mem::swap(items, items_tmp);
    }
    order.clear();
    order.extend(items.iter().map(|&item| item as u32));
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn matches_a_stable_comparison_sort_with_ties_and_infinities() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut scratch = RadixScratch::default();
        let mut order = Vec::new();
        for n in [0usize, 1, 2, 7, 300, 2048] {
            let mut values: Vec<f32> = (0..n)
                .map(|_| match rng.random_range(0..10) {
                    0 => f32::MIN,
                    1 => f32::NEG_INFINITY,
                    2 => 1.5,
                    3 => -0.25,
                    _ => rng.random_range(-30.0f32..30.0),
                })
                .collect();
            if n > 3 {
                values[1] = f32::INFINITY;
            }
            argsort_descending(&values, &mut order, &mut scratch);
            let mut want: Vec<u32> = (0..n as u32).collect();
            want.sort_by(|&a, &b| values[b as usize].total_cmp(&values[a as usize]));
            assert_eq!(order, want, "n = {n}");
        }
    }
}
