//! `rlhf-sft --config FILE [--set k=v]… --out DIR [--device D] [--precision P] [--resume] [--force]`

rlhf_train::stage_binary!("rlhf-sft", "Stage 1: supervised fine-tuning (or pretraining)", rlhf_sft::SftConfig, rlhf_sft);
