//! What stage 3's algorithms share. The rollout (prompts → `n` samples each, log-probs), the reward
//! sources (rule-based verifiers, a user's program, reward models), and the iteration loop; and,
//! each a small pure function with hand-worked tests: the KL estimators, GAE and whitening (PPO),
//! the group-relative advantages of the critic-free estimators (GRPO, Dr. GRPO, RLOO, ReMax,
//! REINFORCE++), their clipped policy loss (asymmetric and dual clip), the loss aggregation modes,
//! the verifiers, and self-consistency's answer extraction and majority vote.
//!
//! Host-side pieces work on rows of one rollout: every response token of row `i` is a column `t`
//! with `mask[i][t]` set; padding after a response has stopped is masked out. Per-response pieces
//! take one reward per row and the row's group (the prompt it was sampled for).

pub mod advantages;
pub mod config;
pub mod iterate;
pub mod kl;
pub mod loss;
pub mod program;
pub mod rewards;
pub mod rollout;
pub mod verifiers;
pub mod vote;

pub use advantages::{gae, group_advantages, remax_advantages, returns_to_go, whiten, GroupBaseline, ScaleRewards};
pub use config::{GenerationConfig, PromptData};
pub use iterate::{run_iterations, Ended, Iteration, Iterative, Schedule};
pub use kl::{kl_per_token, KlEstimator};
pub use loss::{aggregate, clipped_policy_loss, Clip, LossAggregation, StepCounts};
pub use rewards::{RewardInput, RewardKind, RewardSources, RewardSpec, RewardTable};
pub use rollout::{sample, sequence_log_probs, Sampled};
pub use verifiers::Extractor;
pub use vote::{answer_key, majority, Vote};
