//! Helpers the integration test modules share.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A fixture folder. `RLHF_REPO` overrides the checkout path baked in at compile time, so a test
/// binary built here can run on the GPU machine's copy of the tree.
pub fn fixture(name: &str) -> PathBuf {
    let repo = std::env::var("RLHF_REPO").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    Path::new(&repo).join("tests/fixtures").join(name)
}

/// A file of the shared reference data (ColossalChat fixtures, InstructionWild prompts).
pub fn shared(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data").join(rel)
}

/// Runs the `rlhf` binary.
pub fn rlhf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rlhf")).args(args).env("RAYON_NUM_THREADS", "2").output().unwrap()
}

/// The values of `key` in metrics rows that have it.
pub fn column(rows: &[serde_json::Value], key: &str) -> Vec<f64> {
    rows.iter().filter_map(|r| r.get(key)?.as_f64()).collect()
}
