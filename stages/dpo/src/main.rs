//! `rlhf-dpo --config FILE [--set k=v]… --out DIR [--device D] [--precision P] [--resume] [--force]`

rlhf_train::stage_binary!("rlhf-dpo", "Direct preference optimization on rankings (DPO, IPO, SimPO, ORPO, KTO, …)", rlhf_dpo::DpoConfig, rlhf_dpo);
