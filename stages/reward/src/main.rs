//! `rlhf-reward --config FILE [--set k=v]… --out DIR [--device D] [--precision P] [--resume] [--force]`

rlhf_train::stage_binary!("rlhf-reward", "Stage 2: reward model from K-way rankings", rlhf_reward::RewardConfig, rlhf_reward);
