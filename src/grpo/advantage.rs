//! Group-relative advantages (spec §1.6).

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The baseline subtracted from each reward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Baseline {
    /// `A_i = r_i − mean_{j≠i} r_j` (hard-coded in the released code; the default).
    #[default]
    LeaveOneOut,
    /// `A_i = r_i − mean_j r_j` (the paper's GRPO row and d1).
    GroupMean,
}

/// Group statistics of one rollout round, with TRL's metric meanings.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct AdvantageStats {
    /// Mean reward over all completions (`reward`).
    pub reward_mean: f32,
    /// Mean over groups of the unbiased within-group std (`reward_std`).
    pub reward_std: f32,
    /// Fraction of groups whose rewards are all equal (`frac_reward_zero_std`): their
    /// advantages are 0 and they carry no policy gradient.
    pub frac_reward_zero_std: f32,
}

/// Advantages for `rewards` laid out as contiguous groups of `group_size` completions of one
/// prompt. With `scale_by_std`, each group's advantages are divided by its unbiased std + 1e-4
/// (off in the released config).
///
/// # Shapes
/// - rewards: `[groups * group_size]` → advantages of the same length
pub fn group_advantages(
    rewards: &[f32],
    group_size: usize,
    baseline: Baseline,
    scale_by_std: bool,
) -> Result<(Vec<f32>, AdvantageStats)> {
    if group_size == 0 || rewards.is_empty() || !rewards.len().is_multiple_of(group_size) {
        return Err(Error::invalid(
            "rewards",
            format!(
                "{} rewards do not split into groups of {group_size}",
                rewards.len()
            ),
        ));
    }
    if baseline == Baseline::LeaveOneOut && group_size < 2 {
        return Err(Error::config(
            "grpo.baseline",
            "leave_one_out needs at least 2 completions per prompt",
        ));
    }
    if let Some(bad) = rewards.iter().position(|r| !r.is_finite()) {
        return Err(Error::invalid(
            "rewards",
            format!("reward {bad} is not finite"),
        ));
    }
    let g = group_size as f64;
    let groups = rewards.len() / group_size;
    let mut advantages = Vec::with_capacity(rewards.len());
    let (mut std_sum, mut zero_std) = (0f64, 0usize);
    for group in rewards.chunks(group_size) {
        let sum: f64 = group.iter().map(|&r| r as f64).sum();
        let mean = sum / g;
        let std = if group_size > 1 {
            (group
                .iter()
                .map(|&r| (r as f64 - mean).powi(2))
                .sum::<f64>()
                / (g - 1.0))
                .sqrt()
        } else {
            0.0
        };
        std_sum += std;
        // TRL's `isclose(std, 0)` (absolute tolerance 1e-8).
        if std <= 1e-8 {
            zero_std += 1;
        }
        for &r in group {
            let r = r as f64;
            let mut a = match baseline {
                Baseline::LeaveOneOut => r - (sum - r) / (g - 1.0),
                Baseline::GroupMean => r - mean,
            };
            if scale_by_std {
                a /= std + 1e-4;
            }
            advantages.push(a as f32);
        }
    }
    let stats = AdvantageStats {
        reward_mean: (rewards.iter().map(|&r| r as f64).sum::<f64>() / rewards.len() as f64) as f32,
        reward_std: (std_sum / groups as f64) as f32,
        frac_reward_zero_std: zero_std as f32 / groups as f32,
    };
    Ok((advantages, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leave_one_out_is_scaled_group_mean() {
        let r = [1.0, 0.0, 0.5, 2.5, 0.0, 0.0, 0.0, 0.0];
        let (loo, stats) = group_advantages(&r, 4, Baseline::LeaveOneOut, false).unwrap();
        let (mean, _) = group_advantages(&r, 4, Baseline::GroupMean, false).unwrap();
        for (a, b) in loo.iter().zip(&mean) {
            assert!(
                (a - b * 4.0 / 3.0).abs() < 1e-6,
                "LOO = G/(G−1) × mean-centred"
            );
        }
        // r_0 − mean(0, 0.5, 2.5) = 1 − 1 = 0.
        assert!(loo[0].abs() < 1e-6);
        assert_eq!(&loo[4..], &[0.0; 4]);
        assert_eq!(stats.frac_reward_zero_std, 0.5);
        assert!((stats.reward_mean - 0.5).abs() < 1e-6);
    }

    #[test]
    fn std_scaling_and_errors() {
        let (a, _) = group_advantages(&[1.0, 0.0], 2, Baseline::GroupMean, true).unwrap();
        let std = (0.5f32).sqrt();
        assert!((a[0] - 0.5 / (std + 1e-4)).abs() < 1e-5);
        assert!(group_advantages(&[1.0, 0.0, 1.0], 2, Baseline::GroupMean, false).is_err());
        assert!(group_advantages(&[1.0], 1, Baseline::LeaveOneOut, false).is_err());
        assert!(group_advantages(&[f32::NAN, 0.0], 2, Baseline::GroupMean, false).is_err());
    }
}
