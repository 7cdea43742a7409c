//! The documentation cannot rot silently: every command a doc shows in a shell block parses with the
//! real command line (clap's parser; nothing runs), every repository path and relative link a doc
//! names exists, and every config in `configs/` loads and validates.

use std::path::{Path, PathBuf};

use clap::Parser;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every page under docs/ and datasets/.
fn doc_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.map(|e| e.unwrap().path()) {
            if entry.is_dir() {
                walk(&entry, out);
            } else if entry.extension().is_some_and(|e| e == "md") {
                out.push(entry);
            }
        }
    }
    let mut files = vec![repo().join("README.md")];
    walk(&repo().join("docs"), &mut files);
    walk(&repo().join("datasets"), &mut files);
    files.sort();
    files
}

/// A fenced code block: its language tag, first line number and lines.
struct Block {
    lang: String,
    line: usize,
    lines: Vec<String>,
}

fn code_blocks(text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start().strip_prefix("```");
        match (fence, open.take()) {
            (Some(tag), None) => open = Some(Block { lang: tag.trim().to_string(), line: i + 2, lines: vec![] }),
            (Some(_), Some(block)) => blocks.push(block),
            (None, Some(mut block)) => {
                block.lines.push(line.to_string());
                open = Some(block);
            }
            (None, None) => {}
        }
    }
    blocks
}

/// Shell words of one command line: quotes grouped, a `#` comment dropped, and the line cut into
/// commands at `|`, `&&`, `||` and `;`.
fn shell_commands(line: &str) -> Vec<Vec<String>> {
    let (mut commands, mut words, mut word) = (vec![], vec![], String::new());
    let (mut quote, mut in_word) = (None::<char>, false);
    let mut chars = line.chars().peekable();
    let end_word = |words: &mut Vec<String>, word: &mut String, in_word: &mut bool| {
        if *in_word {
            words.push(std::mem::take(word));
            *in_word = false;
        }
    };
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '\\') => {
                if let Some(next) = chars.next() {
                    word.push(next);
                    in_word = true;
                }
            }
            (None, '#') if !in_word => break,
            (None, ' ' | '\t') => end_word(&mut words, &mut word, &mut in_word),
            (None, '|' | ';' | '&') => {
                end_word(&mut words, &mut word, &mut in_word);
                if chars.peek() == Some(&c) {
                    chars.next();
                }
                commands.push(std::mem::take(&mut words));
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    end_word(&mut words, &mut word, &mut in_word);
    commands.push(words);
    commands.retain(|c| !c.is_empty());
    commands
}

/// The binary a command line runs and its arguments, when it is one of ours.
fn our_command(words: &[String]) -> Option<(String, Vec<String>)> {
    let (mut program, mut rest) = words.split_first()?;
    // `mpirun -np 2 rlhf-sft …`, `srun --mpi=pmix rlhf-sft …`: the launched command is ours.
    if ["mpirun", "mpiexec", "srun"].contains(&program.as_str()) {
        let at = rest.iter().position(|w| w.starts_with("rlhf") || w.contains("target/"))?;
        (program, rest) = rest[at..].split_first()?;
    }
    let name = program.rsplit('/').next().unwrap_or(program);
    if ["rlhf", "rlhf-sft", "rlhf-reward", "rlhf-dpo", "rlhf-ppo"].contains(&name) && (program == name || program.contains("target/")) {
        return Some((name.to_string(), rest.to_vec()));
    }
    if program != "cargo" || rest.first().map(String::as_str) != Some("run") {
        return None;
    }
    // cargo run [--release] [--features F] [-p PACKAGE] -- ARGS
    let split = rest.iter().position(|w| w == "--")?;
    let package = rest[..split].windows(2).find(|w| w[0] == "-p" || w[0] == "--package").map(|w| w[1].clone());
    Some((package.unwrap_or_else(|| "rlhf".into()), rest[split + 1..].to_vec()))
}

#[derive(Debug, Parser)]
struct StageCli {
    #[command(flatten)]
    args: rlhf_train::cli::StageArgs,
}

/// Why clap refuses `args` for `program`, or None when it parses.
fn parse_error(program: &str, args: &[String]) -> Option<String> {
    let argv = std::iter::once(program.to_string()).chain(args.iter().cloned());
    let result = match program {
        "rlhf" => rlhf_cli::Cli::try_parse_from(argv).map(drop),
        _ => StageCli::try_parse_from(argv).map(drop),
    };
    match result {
        Ok(()) => None,
        Err(e) if matches!(e.kind(), clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion) => None,
        Err(e) => Some(e.render().to_string().lines().next().unwrap_or("").to_string()),
    }
}

/// Every problem with the commands of one document's shell blocks.
fn command_problems(doc: &Path, text: &str) -> (usize, Vec<String>) {
    let (mut checked, mut problems) = (0, vec![]);
    for block in code_blocks(text).into_iter().filter(|b| ["sh", "bash", "shell", "console"].contains(&b.lang.as_str())) {
        // Continuation lines joined: a command's line number is its first line's.
        let mut logical: Vec<(usize, String)> = vec![];
        let mut continued = false;
        for (i, line) in block.lines.iter().enumerate() {
            let body = line.trim_end().strip_suffix('\\');
            let piece = body.unwrap_or(line).trim().trim_start_matches("$ ");
            match logical.last_mut() {
                Some((_, text)) if continued => {
                    text.push(' ');
                    text.push_str(piece);
                }
                _ => logical.push((block.line + i, piece.to_string())),
            }
            continued = body.is_some();
        }
        for (line, text) in logical {
            for words in shell_commands(&text) {
                let Some((program, args)) = our_command(&words) else { continue };
                checked += 1;
                if let Some(e) = parse_error(&program, &args) {
                    problems.push(format!("{}:{line}: `{text}`: {e}", doc.display()));
                }
            }
        }
    }
    (checked, problems)
}

const REPO_DIRS: [&str; 8] = ["configs/", "datasets/", "benches/", "tests/", "crates/", "stages/", "docs/", "vendor/"];

/// Repository paths a document names (`configs/…`, `crates/…`, …) that do not exist, and relative
/// Markdown links that lead nowhere.
fn path_problems(doc: &Path, text: &str) -> Vec<String> {
    let mut problems = vec![];
    let is_path_char = |c: char| c.is_ascii_alphanumeric() || "_./-".contains(c);
    for (n, line) in text.lines().enumerate() {
        let at = |what: String| format!("{}:{}: {what}", doc.display(), n + 1);
        for dir in REPO_DIRS {
            let mut rest = line;
            while let Some(i) = rest.find(dir) {
                let before = rest[..i].chars().next_back();
                let path: String = rest[i..].chars().take_while(|&c| is_path_char(c)).collect();
                let after = rest[i + path.len()..].chars().next();
                rest = &rest[i + path.len().max(1)..];
                // Only a path of its own (not the tail of another, like runs/demo/configs/), and no
                // pattern (`configs/{sft,reward}/`, `datasets/*.md`).
                if before.is_some_and(|c| is_path_char(c) || c == '{') || matches!(after, Some('{' | '*' | '<')) {
                    continue;
                }
                let path = path.trim_end_matches(['.', ',']);
                if !repo().join(path).exists() {
                    problems.push(at(format!("`{path}` does not exist")));
                }
            }
        }
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            let target: String = rest[i + 2..].chars().take_while(|&c| c != ')').collect();
            rest = &rest[i + 2..];
            let file = target.split('#').next().unwrap_or("");
            if file.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            if !doc.parent().unwrap().join(file).exists() {
                problems.push(at(format!("link ({target}) leads nowhere")));
            }
        }
    }
    problems
}

#[test]
fn every_documented_command_parses_and_every_named_path_exists() {
    let (mut checked, mut problems) = (0, vec![]);
    for doc in doc_files() {
        let text = std::fs::read_to_string(&doc).unwrap();
        let rel = doc.strip_prefix(repo()).unwrap();
        let (n, p) = command_problems(rel, &text);
        checked += n;
        problems.extend(p);
        problems.extend(path_problems(&doc, &text).into_iter().map(|p| p.replace(&format!("{}/", repo().display()), "")));
    }
    assert!(problems.is_empty(), "{} problem(s) in the docs:\n{}", problems.len(), problems.join("\n"));
    // The README alone shows the demo, the tests and a stage run: a parser that found nothing is broken.
    assert!(checked >= 20, "only {checked} commands found in the docs' shell blocks");
}

#[test]
fn the_docs_check_catches_a_renamed_flag_a_missing_path_and_a_dead_link() {
    let doc = Path::new("docs/x.md");
    let text = "```sh\ncargo run --release -- pipeline run configs/pipeline/demo.toml \\\n  --out runs/demo --resum\nrlhf-sft --config configs/sft/demo.toml --out runs/s | tee log  # fine\nmpirun -np 2 -x RAYON_NUM_THREADS=1 rlhf-sft --confg configs/sft/demo.toml --out runs/s\n```\n";
    let (checked, problems) = command_problems(doc, text);
    assert_eq!(checked, 3);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].starts_with("docs/x.md:2:") && problems[0].contains("--resum"), "{problems:?}");
    assert!(problems[1].starts_with("docs/x.md:5:") && problems[1].contains("--confg"), "the command mpirun launches is checked: {problems:?}");
    let text = "See `configs/sft/nothing.toml`, runs/x/configs/y, `configs/{sft,ppo}/` and [the page](nowhere.md).";
    let problems = path_problems(&repo().join("docs/README.md"), text);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("configs/sft/nothing.toml") && problems[1].contains("nowhere.md"), "{problems:?}");
}

#[test]
fn shell_words_follow_quotes_comments_and_separators() {
    let words = shell_commands(r#"rlhf plan c.toml --set 'stages=["ppo"]' --set a="b c" && echo done # note"#);
    assert_eq!(words, vec![vec!["rlhf", "plan", "c.toml", "--set", r#"stages=["ppo"]"#, "--set", "a=b c"], vec!["echo", "done"]]);
}

fn configs(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("configs").join(dir)).unwrap().map(|e| e.unwrap().path()).collect();
    files.retain(|p| p.extension().is_some_and(|e| e == "toml"));
    files.sort();
    assert!(!files.is_empty(), "no configs in configs/{dir}");
    files
}

#[test]
fn every_stage_config_loads_and_validates() {
    use rlhf_train::config::load_config;
    for path in configs("sft") {
        let cfg: rlhf_sft::SftConfig = load_config(Some(&path), &[]).unwrap_or_else(|e| panic!("{e}"));
        cfg.train.validate().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    for path in configs("reward") {
        let cfg: rlhf_reward::RewardConfig = load_config(Some(&path), &[]).unwrap_or_else(|e| panic!("{e}"));
        cfg.train.validate().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    for path in configs("dpo") {
        let cfg: rlhf_dpo::DpoConfig = load_config(Some(&path), &[]).unwrap_or_else(|e| panic!("{e}"));
        cfg.validate().unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    }
    for path in configs("grpo") {
        let cfg: rlhf_grpo::GrpoConfig = load_config(Some(&path), &[]).unwrap_or_else(|e| panic!("{e}"));
        cfg.validate().unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    }
    for path in configs("ppo") {
        let cfg: rlhf_ppo::PpoConfig = load_config(Some(&path), &[]).unwrap_or_else(|e| panic!("{e}"));
        cfg.validate().unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    }
}

#[test]
fn every_pipeline_config_loads_validates_and_plans() {
    let out = Path::new("runs/plan-check");
    for path in configs("pipeline") {
        // A config for the user's own model names folders that are not here: plan it with the shape
        // of a real one, as docs/memory-and-precision.md does.
        let text = std::fs::read_to_string(&path).unwrap();
        let mut sets: Vec<String> = match text.contains("/path/to/") {
            true => vec!["sft.model.from=\"configs/shapes/qwen2.5-0.5b\"".into()],
            false => vec![],
        };
        // A recipe for a downloaded model (configs/pipeline/smollm2_*.toml) names a folder that a
        // clean checkout does not have: plan it with a real shape too.
        let table: toml::Value = toml::from_str(&text).unwrap();
        for key in ["grpo.model.policy", "self_improve.sft.model.from"] {
            let folder = key.split('.').try_fold(&table, |v, k| v.get(k)).and_then(toml::Value::as_str);
            if folder.is_some_and(|f| !f.contains("{run}") && !Path::new(f).exists()) {
                sets.push(format!("{key}=\"configs/shapes/qwen2.5-0.5b\""));
            }
        }
        let (cfg, _, _) = rlhf_cli::pipeline::load(&path, &sets, None, out).unwrap_or_else(|e| panic!("{e:#}"));
        for train in [&cfg.pretrain, &cfg.sft].into_iter().flatten().map(|c| &c.train).chain(cfg.reward.as_ref().map(|c| &c.train)) {
            train.validate().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        if let Some(ppo) = &cfg.ppo {
            ppo.validate().unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        }
        if let Some(dpo) = &cfg.dpo {
            dpo.validate().unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        }
        if let Some(grpo) = &cfg.grpo {
            grpo.validate().unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        }
        if let Some(si) = &cfg.self_improve {
            si.vote.validate().unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            si.sft.train.validate().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        let plans = rlhf_cli::pipeline::memory_plans(&cfg, out).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        assert!(!plans.is_empty(), "{}: no stage planned", path.display());
    }
}

#[test]
fn every_model_shape_in_configs_loads() {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(repo().join("configs/shapes")).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    dirs.sort();
    assert!(dirs.len() >= 3);
    for dir in dirs {
        rlhf_model::TransformerConfig::from_hf_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
}
