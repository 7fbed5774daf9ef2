//! Learning-rate schedules with Hugging Face semantics (`get_scheduler`): the value for
//! optimizer step `s` (0-based, i.e. the number of updates already applied).

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Schedule shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Linear warm-up, then cosine from the peak down to `min_lr_ratio · peak`
    /// (HF `cosine_with_min_lr`, the released setting).
    #[default]
    CosineWithMinLr,
    /// Linear warm-up, then constant (d1's setting).
    ConstantWithWarmup,
}

/// A learning-rate schedule over `total_steps` optimizer steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    pub peak_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub min_lr_ratio: f64,
}

impl LrSchedule {
    /// `warmup_steps` = `ceil(total · warmup_ratio)` unless given explicitly, as HF does.
    pub fn new(
        kind: ScheduleKind,
        peak_lr: f64,
        total_steps: u64,
        warmup_ratio: f64,
        warmup_steps: Option<u64>,
        min_lr_ratio: f64,
    ) -> Result<Self> {
        if !(peak_lr.is_finite() && peak_lr >= 0.0) {
            return Err(Error::config(
                "optimizer.lr",
                format!("{peak_lr} is not a finite value ≥ 0"),
            ));
        }
        if !(0.0..=1.0).contains(&warmup_ratio) {
            return Err(Error::config("optimizer.warmup_ratio", "must be in [0, 1]"));
        }
        if !(0.0..=1.0).contains(&min_lr_ratio) {
            return Err(Error::config("optimizer.min_lr_ratio", "must be in [0, 1]"));
        }
        let warmup_steps =
            warmup_steps.unwrap_or_else(|| (total_steps as f64 * warmup_ratio).ceil() as u64);
        Ok(Self {
            kind,
            peak_lr,
            warmup_steps,
            total_steps: total_steps.max(1),
            min_lr_ratio,
        })
    }

    /// The learning rate of optimizer step `step` (HF's `lr_lambda(step) · peak`; with
    /// warm-up the very first update has lr 0, as in HF).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.peak_lr * step as f64 / self.warmup_steps.max(1) as f64;
        }
        match self.kind {
            ScheduleKind::ConstantWithWarmup => self.peak_lr,
            ScheduleKind::CosineWithMinLr => {
                let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
                let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
                let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                self.peak_lr * (cosine * (1.0 - self.min_lr_ratio) + self.min_lr_ratio)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_with_min_lr_matches_hf() {
        let s = LrSchedule::new(ScheduleKind::CosineWithMinLr, 1e-6, 100, 0.1, None, 0.1).unwrap();
        assert_eq!(s.warmup_steps, 10);
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(5) - 0.5e-6).abs() < 1e-18);
        assert!((s.lr(10) - 1e-6).abs() < 1e-18);
        assert!(
            (s.lr(55) - 0.55e-6).abs() < 1e-15,
            "midpoint: (1 + 0.1) / 2"
        );
        assert!((s.lr(100) - 1e-7).abs() < 1e-18);
        assert!((s.lr(1000) - 1e-7).abs() < 1e-18, "stays at the floor");
        // The released warmup_ratio 1e-4 gives one warm-up step.
        let r =
            LrSchedule::new(ScheduleKind::CosineWithMinLr, 1e-6, 5300, 1e-4, None, 0.1).unwrap();
        assert_eq!(r.warmup_steps, 1);
        let c =
            LrSchedule::new(ScheduleKind::ConstantWithWarmup, 3e-6, 10, 0.0, None, 0.0).unwrap();
        assert_eq!(c.lr(0), 3e-6);
        assert_eq!(c.lr(9), 3e-6);
    }
}
