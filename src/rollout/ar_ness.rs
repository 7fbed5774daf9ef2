//! Local and global AR-ness of a decoding order (spec §4; DiffuCoder §4.1, App. A.2).
//!
//! An order `p_1 … p_T` lists completion positions (0 = first completion token) in the order
//! they were unmasked; `T` is the number of positions.
//!
//! - **Local AR-ness@k** (next-token pattern): the fraction of steps `t` whose last `k` decoded
//!   positions are exactly the `k` left neighbours in order, `p_{t−i} = p_t − i` for
//!   `i = 1..k`.
//! - **Global AR-ness@k** (earliest-mask-first): the fraction of steps whose position is among
//!   the `k` leftmost still-masked positions.
//!
//! One convention is ours: the spec leaves the first `k` steps of local AR-ness open (its
//! inferred "count as 0" would give a left-to-right order only `(T − k)/T`, contradicting "AR
//! decoding scores 1"). We treat the prompt as already decoded, left to right, immediately
//! before step 1: it occupies positions −1, −2, … . So step `t ≤ k` counts exactly when
//! `p_1 … p_t = 0 … t − 1`, and a strictly left-to-right order scores 1 on both metrics for
//! every `k`. Both averages are over all `T` steps.

use crate::{Error, Result};

/// `k` values reported for local AR-ness (1..=9, as plotted in the paper).
pub const LOCAL_K: usize = 9;
/// `k` values reported for global AR-ness (1..=4).
pub const GLOBAL_K: usize = 4;

fn check(order: &[usize]) -> Result<usize> {
    let mut seen = vec![false; order.iter().max().map_or(0, |&m| m + 1)];
    for &p in order {
        if std::mem::replace(&mut seen[p], true) {
            return Err(Error::invalid(
                "order",
                format!("position {p} is decoded twice"),
            ));
        }
    }
    Ok(seen.len())
}

/// Local AR-ness@k for `k = 1..=k_max`.
pub fn local_ar_ness(order: &[usize], k_max: usize) -> Result<Vec<f64>> {
    check(order)?;
    let t_len = order.len();
    if t_len == 0 {
        return Ok(vec![0.0; k_max]);
    }
    // run[t] = the largest r with p_{t−i} = p_t − i for all i ≤ r, counting the prompt.
    let mut hits = vec![0usize; k_max + 1];
    let mut prev_run = usize::MAX; // the prompt: an unbounded left-to-right run ending at −1
    let mut prev_pos: i64 = -1;
    for &p in order {
        let p = p as i64;
        let run = if p == prev_pos + 1 {
            prev_run.saturating_add(1)
        } else {
            0
        };
        for (k, hit) in hits.iter_mut().enumerate().skip(1) {
            if run >= k {
                *hit += 1;
            }
        }
        prev_run = run;
        prev_pos = p;
    }
    Ok(hits[1..].iter().map(|&h| h as f64 / t_len as f64).collect())
}

/// Global AR-ness@k for `k = 1..=k_max`. The still-masked set before step 1 is the set of
/// positions in `order`.
pub fn global_ar_ness(order: &[usize], k_max: usize) -> Result<Vec<f64>> {
    let span = check(order)?;
    let t_len = order.len();
    if t_len == 0 {
        return Ok(vec![0.0; k_max]);
    }
    // Fenwick tree over positions: 1 = still masked. rank(p) = #masked positions < p.
    let mut tree = vec![0i64; span + 1];
    let add = |tree: &mut Vec<i64>, i: usize, v: i64| {
        let mut i = i + 1;
        while i < tree.len() {
            tree[i] += v;
            i += i & i.wrapping_neg();
        }
    };
    let prefix = |tree: &Vec<i64>, i: usize| {
        let (mut i, mut s) = (i, 0);
        while i > 0 {
            s += tree[i];
            i -= i & i.wrapping_neg();
        }
        s
    };
    for &p in order {
        add(&mut tree, p, 1);
    }
    let mut hits = vec![0usize; k_max + 1];
    for &p in order {
        let rank = prefix(&tree, p) as usize;
        for (k, hit) in hits.iter_mut().enumerate().skip(1) {
            if rank < k {
                *hit += 1;
            }
        }
        add(&mut tree, p, -1);
    }
    Ok(hits[1..].iter().map(|&h| h as f64 / t_len as f64).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-12, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn left_to_right_scores_one_everywhere() {
        let order: Vec<usize> = (0..20).collect();
        close(&local_ar_ness(&order, LOCAL_K).unwrap(), &[1.0; LOCAL_K]);
        close(&global_ar_ness(&order, GLOBAL_K).unwrap(), &[1.0; GLOBAL_K]);
    }

    #[test]
    fn right_to_left_is_never_local_and_rarely_global() {
        let t = 10;
        let order: Vec<usize> = (0..t).rev().collect();
        close(&local_ar_ness(&order, LOCAL_K).unwrap(), &[0.0; LOCAL_K]);
        // Step t takes the largest of T − t + 1 masked positions: rank T − t, so it is among the
        // k leftmost only in the last k steps.
        let want: Vec<f64> = (1..=GLOBAL_K).map(|k| k as f64 / t as f64).collect();
        close(&global_ar_ness(&order, GLOBAL_K).unwrap(), &want);
    }

    #[test]
    fn mixed_order_by_hand() {
        // Order 0 1 4 5 2 3.
        // Local runs (prompt counts as decoded): ∞ ∞ 0 1 0 1 → @1: 4/6, @k≥2: 2/6.
        // Global ranks among still-masked: 0 0 2 2 0 0 → @1 = @2: 4/6, @3 = @4: 1.
        let order = [0, 1, 4, 5, 2, 3];
        let local = local_ar_ness(&order, 4).unwrap();
        close(&local, &[4.0 / 6.0, 2.0 / 6.0, 2.0 / 6.0, 2.0 / 6.0]);
        close(
            &global_ar_ness(&order, 4).unwrap(),
            &[4.0 / 6.0, 4.0 / 6.0, 1.0, 1.0],
        );
    }

    #[test]
    fn a_late_start_gets_no_prompt_credit() {
        // Order 1 0 2 3: step 1 skips position 0, so the prompt run is broken.
        // Local runs 0 0 0 1 → @1 = 1/4, @2 = 0.
        // Global ranks: 1 (0 still masked), 0, 0, 0 → @1 = 3/4, @2 = 1.
        let order = [1, 0, 2, 3];
        close(&local_ar_ness(&order, 2).unwrap(), &[0.25, 0.0]);
        close(&global_ar_ness(&order, 2).unwrap(), &[0.75, 1.0]);
    }

    #[test]
    fn local_is_non_increasing_and_global_non_decreasing_in_k() {
        let order = [3, 4, 5, 0, 1, 2, 9, 6, 7, 8];
        let l = local_ar_ness(&order, LOCAL_K).unwrap();
        let g = global_ar_ness(&order, GLOBAL_K).unwrap();
        assert!(l.windows(2).all(|w| w[0] >= w[1]), "{l:?}");
        assert!(g.windows(2).all(|w| w[0] <= w[1]), "{g:?}");
    }

    #[test]
    fn duplicates_are_rejected() {
        assert!(local_ar_ness(&[0, 1, 1], 1).is_err());
        assert!(global_ar_ness(&[2, 2], 1).is_err());
    }
}
