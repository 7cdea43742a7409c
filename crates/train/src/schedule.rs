//! Learning-rate schedule: linear warmup, then cosine decay to a floor (nanoGPT's `get_lr`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrSchedule {
    /// Peak learning rate.
    pub lr: f64,
    /// Steps of linear warmup from lr/warmup to lr.
    #[serde(default)]
    pub warmup_steps: usize,
    /// The floor, as a fraction of `lr`, reached at the last step.
    #[serde(default = "default_min_lr_ratio")]
    pub min_lr_ratio: f64,
}

fn default_min_lr_ratio() -> f64 {
    0.1
}

/// lr at `step` (0-based) of `total` steps.
pub fn get_lr(s: &LrSchedule, step: usize, total: usize) -> f64 {
    let min_lr = s.lr * s.min_lr_ratio;
    if step < s.warmup_steps {
        return s.lr * (step + 1) as f64 / s.warmup_steps as f64;
    }
    let decay_steps = total.saturating_sub(s.warmup_steps).max(1);
    let progress = ((step - s.warmup_steps) as f64 / decay_steps as f64).min(1.0);
    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    min_lr + cosine * (s.lr - min_lr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_the_floor() {
        let s = LrSchedule { lr: 1.0, warmup_steps: 4, min_lr_ratio: 0.1 };
        assert_eq!(get_lr(&s, 0, 14), 0.25);
        assert_eq!(get_lr(&s, 3, 14), 1.0);
        assert_eq!(get_lr(&s, 4, 14), 1.0); // cosine starts at its peak
        assert!((get_lr(&s, 9, 14) - 0.55).abs() < 1e-12); // halfway: 0.1 + 0.5·0.9
        assert!((get_lr(&s, 14, 14) - 0.1).abs() < 1e-12);
        assert!((get_lr(&s, 20, 14) - 0.1).abs() < 1e-12); // never below the floor
    }
}
