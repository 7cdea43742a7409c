//! `rlhf-ppo --config FILE [--set k=v]… --out DIR [--device D] [--precision P] [--resume] [--force]`

rlhf_train::stage_binary!("rlhf-ppo", "Stage 3: PPO-ptx against the reward model", rlhf_ppo::PpoConfig, rlhf_ppo);
