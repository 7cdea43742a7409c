//! The workspace's shape: a stage depends on shared crates, never on another stage.

use std::path::Path;

#[test]
fn no_stage_depends_on_another_stage() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut stages: Vec<String> = std::fs::read_dir(root.join("stages")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    stages.sort();
    assert!(stages.len() >= 4, "{stages:?}");
    for stage in &stages {
        let path = root.join("stages").join(stage).join("Cargo.toml");
        let manifest: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
            let Some(deps) = manifest.get(section).and_then(|d| d.as_table()) else { continue };
            for other in &stages {
                let name = format!("rlhf-{other}");
                assert!(!deps.contains_key(&name), "{}: [{section}] names {name}", path.display());
            }
        }
    }
}

/// The modules of one crate's `src/` (a file `x.rs`, or a folder `x/` with its files, is module `x`)
/// and the sibling modules each one names through `crate::` outside comments and its unit tests.
fn module_imports(src: &Path) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut files: Vec<(String, std::path::PathBuf)> = vec![];
    for entry in std::fs::read_dir(src).unwrap().map(|e| e.unwrap().path()) {
        let name = entry.file_stem().unwrap().to_string_lossy().into_owned();
        if entry.is_dir() {
            files.extend(std::fs::read_dir(&entry).unwrap().map(|e| (name.clone(), e.unwrap().path())));
        } else if entry.extension().is_some_and(|e| e == "rs") && name != "lib" && name != "main" {
            files.push((name, entry));
        }
    }
    let modules: std::collections::BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut graph: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = modules.iter().map(|m| (m.clone(), Default::default())).collect();
    for (module, file) in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        let code: String = code.lines().map(|l| l.split("//").next().unwrap()).collect::<Vec<_>>().join("\n");
        // `crate::x::…`, `crate::x` and `crate::{x::…, y}`.
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let names: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => group[..group.find('}').unwrap_or(group.len())].split(',').map(|p| p.trim().split("::").next().unwrap()).collect(),
                None => vec![rest.split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap()],
            };
            for name in names.into_iter().filter(|n| modules.contains(*n) && **n != module) {
                graph.get_mut(&module).unwrap().insert(name.to_string());
            }
        }
    }
    graph
}

/// A cycle of imports in `graph`, if it has one.
fn import_cycle(graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(node: &str, graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>, path: &mut Vec<String>, done: &mut std::collections::BTreeSet<String>) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == node) {
            return Some(path[i..].iter().cloned().chain([node.to_string()]).collect());
        }
        if !done.insert(node.to_string()) {
            return None;
        }
        path.push(node.to_string());
        let found = graph[node].iter().find_map(|next| visit(next, graph, path, done));
        path.pop();
        found
    }
    let mut done = Default::default();
    graph.keys().find_map(|m| visit(m, graph, &mut vec![], &mut done))
}

#[test]
fn no_crate_has_an_import_circle_between_its_modules() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut srcs: Vec<_> = ["crates", "stages"].iter().flat_map(|d| std::fs::read_dir(root.join(d)).unwrap().map(|e| e.unwrap().path().join("src"))).collect();
    srcs.sort();
    assert!(srcs.len() >= 12, "{srcs:?}");
    for src in srcs {
        let graph = module_imports(&src);
        assert_eq!(import_cycle(&graph), None, "{}: modules import each other in a circle", src.display());
    }
}

#[test]
fn the_circle_check_finds_a_circle() {
    let graph = [("a", vec!["b"]), ("b", vec!["c"]), ("c", vec!["a"]), ("d", vec![])]
        .into_iter()
        .map(|(m, deps)| (m.to_string(), deps.into_iter().map(String::from).collect()))
        .collect();
    assert_eq!(import_cycle(&graph), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
}
