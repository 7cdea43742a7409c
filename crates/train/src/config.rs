//! TOML configs: `--config FILE`, repeatable `--set section.key=value` overrides, unknown keys
//! rejected by name (configs use `#[serde(deny_unknown_fields)]`), the resolved config written into
//! the run directory.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;
use toml::{Table, Value};

use crate::error::{Result, TrainError};

/// Sets `a.b.c = value` in `table`; `value` is parsed as TOML (`3`, `1e-4`, `true`, `"x"`, `[1,2]`) and
/// taken as a plain string when it does not parse.
pub fn apply_override(table: &mut Table, assignment: &str) -> Result<()> {
    let bad = |m: String| TrainError::Config { path: "--set".into(), message: m };
    let (key, raw) = assignment.split_once('=').ok_or_else(|| bad(format!("{assignment:?}: expected key=value")))?;
    let value = toml::from_str::<Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_string()));
    let parts: Vec<&str> = key.trim().split('.').collect();
    let mut node = table;
    for part in &parts[..parts.len() - 1] {
        let entry = node.entry(part.to_string()).or_insert_with(|| Value::Table(Table::new()));
        node = entry.as_table_mut().ok_or_else(|| bad(format!("{key}: `{part}` is not a section")))?;
    }
    node.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

/// Reads `path` (if any), applies `sets`, and deserialises. Errors name the file and the key.
pub fn load_config<T: DeserializeOwned>(path: Option<&Path>, sets: &[String]) -> Result<T> {
    let mut table = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| TrainError::io(p, e))?;
            toml::from_str::<Table>(&text).map_err(|e| TrainError::Config { path: p.into(), message: e.to_string() })?
        }
        None => Table::new(),
    };
    for s in sets {
        apply_override(&mut table, s)?;
    }
    let origin = path.map_or_else(|| "config".into(), Path::to_path_buf);
    T::deserialize(Value::Table(table)).map_err(|e| TrainError::Config { path: origin, message: e.to_string() })
}

/// Writes the resolved config as `DIR/config.toml` (rank 0 alone in a data-parallel run).
pub fn write_resolved<T: Serialize>(dir: &Path, cfg: &T) -> Result<()> {
    if !rlhf_dist::world().is_writer() {
        return Ok(());
    }
    let path = dir.join("config.toml");
    let text = toml::to_string_pretty(cfg).map_err(|e| TrainError::Config { path: path.clone(), message: e.to_string() })?;
    Ok(rlhf_files::write_atomic(&path, text)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        seed: u64,
        train: Train,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Train {
        lr: f64,
        #[serde(default)]
        name: String,
    }

    #[test]
    fn overrides_are_typed_and_nested() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("c.toml");
        std::fs::write(&p, "seed = 1\n[train]\nlr = 0.1\n").unwrap();
        let cfg: Cfg = load_config(Some(&p), &["train.lr=3e-4".into(), "seed=7".into(), "train.name=run one".into()]).unwrap();
        assert_eq!(cfg, Cfg { seed: 7, train: Train { lr: 3e-4, name: "run one".into() } });
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = load_config::<Cfg>(None, &["seed=1".into(), "train.lr=1".into(), "train.lrr=2".into()]).unwrap_err();
        assert!(e.to_string().contains("lrr"), "{e}");
    }
}
