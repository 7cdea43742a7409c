//! The workspace's shape: a stage depends on shared crates, never on another stage.

use std::path::Path;

const STAGES: [&str; 3] = ["sft", "reward", "ppo"];

#[test]
fn no_stage_depends_on_another_stage() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for stage in STAGES {
        let path = root.join("stages").join(stage).join("Cargo.toml");
        let manifest: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
            let Some(deps) = manifest.get(section).and_then(|d| d.as_table()) else { continue };
            for other in STAGES {
                let name = format!("rlhf-{other}");
                assert!(!deps.contains_key(&name), "{}: [{section}] names {name}", path.display());
            }
        }
    }
}
