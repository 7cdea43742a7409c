//! `rlhf-grpo --config FILE [--set k=v]… --out DIR [--device D] [--precision P] [--resume] [--force]`

rlhf_train::stage_binary!("rlhf-grpo", "Critic-free RL on verifiable or model rewards (GRPO, Dr. GRPO, DAPO, RLOO, REINFORCE++, ReMax)", rlhf_grpo::GrpoConfig, rlhf_grpo);
