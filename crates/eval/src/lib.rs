//! Scoring and evaluation, shared by the stages and the `rlhf` command: how a reward model ranks K
//! responses ([`ranking`]), and how policies do on held-out prompts — sampled answers scored by the
//! reward model and the demo oracle, the KL of one policy to another, and the win rate ([`policy`]);
//! and self-improvement data from a model's own majority-voted answers ([`self_improve`]).

pub mod answers;
pub mod policy;
pub mod ranking;
pub mod self_improve;

pub use answers::{sample_answers, AnswerSampling};
pub use policy::{aligned_policies, read_eval_prompts, ALIGNED, rm_pairwise_acc, sample_and_score, summarize, vote_accuracy, win_rate, EvalConfig, JudgeConfig, OracleParts, PolicyScores, Scored, VoteEval};
pub use ranking::{ranking_stats, RankingStats};
pub use self_improve::{self_improve, SelfImproveConfig, SelfImproveSummary, VoteScores};
