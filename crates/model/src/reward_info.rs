//! `reward.json`: what a reward model folder records about its score besides the weights — where the
//! score is read, and the normalisation applied after training. Written by stage 2, read by PPO
//! (score scaling) and evaluation, through this one type.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// The file next to `reward_head.safetensors`.
pub const REWARD_INFO_FILE: &str = "reward.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardInfo {
    /// Where the score is read (a sentence, for people).
    pub score_position: String,
    /// The token the chat template ends a turn with (appended to every scored response).
    pub template_end_of_turn: String,
    pub normalization: Normalization,
}

/// The bias that centres the reference set's scores on 0 (InstructGPT), and their spread.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Which sequences were the reference (a file, or the best-ranked training responses).
    pub reference: String,
    pub count: usize,
    /// Mean reference score before the bias was added.
    pub mean_before: f64,
    /// Standard deviation of the reference scores (PPO divides scores by it).
    pub std: f64,
    pub bias_added: f64,
}

impl RewardInfo {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("reward info serialises")
    }

    /// `DIR/reward.json`, or None when the folder has none (a reward model saved without one).
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(REWARD_INFO_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        serde_json::from_str(&text).map(Some).map_err(|e| ModelError::Config { path, message: e.to_string() })
    }
}

/// A raw score in units of the reference spread: divided by the reference std when one is given
/// (and not degenerate). The reference mean is already 0 after stage 2's bias.
pub fn scaled_score(raw: f32, std: Option<f64>) -> f64 {
    match std {
        Some(sd) if sd > 1e-8 => f64::from(raw) / sd,
        _ => f64::from(raw),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_names_the_file_on_bad_json() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(RewardInfo::load(dir.path()).unwrap(), None);
        let info = RewardInfo {
            score_position: "last real token".into(),
            template_end_of_turn: "<|im_end|>".into(),
            normalization: Normalization { reference: "sft.jsonl".into(), count: 3, mean_before: 0.5, std: 2.0, bias_added: -0.5 },
        };
        std::fs::write(dir.path().join(REWARD_INFO_FILE), info.to_json()).unwrap();
        assert_eq!(RewardInfo::load(dir.path()).unwrap(), Some(info));
        std::fs::write(dir.path().join(REWARD_INFO_FILE), "{\"normalization\": 1}").unwrap();
        let e = RewardInfo::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("reward.json"), "{e}");
    }

    #[test]
    fn scores_are_divided_by_a_usable_std_only() {
        assert_eq!(scaled_score(3.0, Some(2.0)), 1.5);
        assert_eq!(scaled_score(3.0, Some(0.0)), 3.0);
        assert_eq!(scaled_score(3.0, None), 3.0);
    }
}
