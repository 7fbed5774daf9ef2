//! Decode-order traces: which completion positions each step revealed, with their confidences.

use serde::{Deserialize, Serialize};

use super::ar_ness::{global_ar_ness, local_ar_ness, GLOBAL_K, LOCAL_K};
use crate::{Error, Result};

/// The decode order of one completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecodeTrace {
    /// `order[s]`: positions revealed at step `s` (relative to the completion start, ascending).
    /// Steps that revealed nothing (the schedule's first step at 1 token/step) are empty.
    pub order: Vec<Vec<usize>>,
    /// `confidence[s][j]`: the confidence of `order[s][j]` when it was revealed, in the units of
    /// the algorithm (probability, margin or negative entropy; `origin`: probability).
    pub confidence: Vec<Vec<f32>>,
}

impl DecodeTrace {
    /// Build from per-position reveal steps (1-based, 0 = never revealed) and confidences.
    ///
    /// # Shapes
    /// - step_of, confidence: `[K]`; `n_steps` is the number of schedule steps taken.
    pub fn from_reveal_steps(step_of: &[i64], confidence: &[f32], n_steps: usize) -> Result<Self> {
        if step_of.len() != confidence.len() {
            return Err(Error::invalid(
                "confidence",
                "must have one entry per position",
            ));
        }
        let mut order = vec![Vec::new(); n_steps];
        let mut conf = vec![Vec::new(); n_steps];
        for (pos, (&s, &c)) in step_of.iter().zip(confidence).enumerate() {
            if s < 1 || s as usize > n_steps {
                return Err(Error::invalid(
                    "step_of",
                    format!("position {pos} has reveal step {s}, outside 1..={n_steps}"),
                ));
            }
            order[s as usize - 1].push(pos);
            conf[s as usize - 1].push(c);
        }
        Ok(Self {
            order,
            confidence: conf,
        })
    }

    /// Positions revealed per step.
    pub fn revealed_per_step(&self) -> Vec<usize> {
        self.order.iter().map(Vec::len).collect()
    }

    /// The order flattened to one position per step, as the AR-ness metrics take it (positions
    /// revealed together are listed left to right).
    pub fn flat_order(&self) -> Vec<usize> {
        self.order.iter().flatten().copied().collect()
    }

    /// Local AR-ness@k for k = 1..=9.
    pub fn local_ar(&self) -> Vec<f64> {
        local_ar_ness(&self.flat_order(), LOCAL_K).expect("a trace reveals each position once")
    }

    /// Global AR-ness@k for k = 1..=4.
    pub fn global_ar(&self) -> Vec<f64> {
        global_ar_ness(&self.flat_order(), GLOBAL_K).expect("a trace reveals each position once")
    }

    /// The JSON record of the `--trace` file (without the id).
    pub fn record(&self) -> TraceRecord {
        TraceRecord {
            order: self.order.clone(),
            confidence: self.confidence.clone(),
            revealed_per_step: self.revealed_per_step(),
            local_ar: self.local_ar(),
            global_ar: self.global_ar(),
        }
    }
}

/// One line of a trace file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceRecord {
    pub order: Vec<Vec<usize>>,
    pub confidence: Vec<Vec<f32>>,
    pub revealed_per_step: Vec<usize>,
    /// Local AR-ness@k, k = 1..=9.
    pub local_ar: Vec<f64>,
    /// Global AR-ness@k, k = 1..=4.
    pub global_ar: Vec<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_steps_from_reveal_indices() {
        // Positions 0..5 revealed at steps 2, 2, 3, 5, 4 (step 1 revealed nothing).
        let t = DecodeTrace::from_reveal_steps(&[2, 2, 3, 5, 4], &[0.9, 0.8, 0.7, 0.6, 0.5], 5)
            .unwrap();
        assert_eq!(t.order, vec![vec![], vec![0, 1], vec![2], vec![4], vec![3]]);
        assert_eq!(t.confidence[1], vec![0.9, 0.8]);
        assert_eq!(t.revealed_per_step(), vec![0, 2, 1, 1, 1]);
        assert_eq!(t.flat_order(), vec![0, 1, 2, 4, 3]);
        let r = t.record();
        assert_eq!((r.local_ar.len(), r.global_ar.len()), (9, 4));
        // Runs ∞ ∞ ∞ 0 0 → local@1 = 3/5; ranks 0 0 0 1 0 → global@1 = 4/5.
        assert!((r.local_ar[0] - 0.6).abs() < 1e-12 && (r.global_ar[0] - 0.8).abs() < 1e-12);
    }

    #[test]
    fn unrevealed_positions_are_an_error() {
        assert!(DecodeTrace::from_reveal_steps(&[1, 0], &[0.0, 0.0], 1).is_err());
        assert!(DecodeTrace::from_reveal_steps(&[1, 3], &[0.0, 0.0], 2).is_err());
    }
}
