//! The data layer on real files from ../shared/data (ColossalChat, InstructionWild) and on small files
//! of our own: every format, every malformed case with its line, and SFT label masks.

use std::path::{Path, PathBuf};

use rlhf_data::encode::{encode_prompt, encode_ranking, encode_sft};
use rlhf_data::{load, BuiltinTemplate, ChatFormat, Encoded, Format, Kind, LoadOptions, Record, Tokenizer};

use crate::common::{fixture, shared};

fn opts(kind: Kind) -> LoadOptions {
    LoadOptions { kind, format: Format::Auto, skip_invalid: false }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn strict_err(path: &Path, kind: Kind) -> String {
    load(path, opts(kind)).map(|l| l.records.len()).expect_err("should fail").to_string()
}

#[test]
fn colossalchat_files_load_unchanged() {
    let sft = load(&shared("colossalchat/test_sft_data.jsonl"), opts(Kind::Sft)).unwrap();
    let Record::Sft(msgs) = &sft.records[0].1 else { panic!() };
    assert!(msgs.len() >= 4 && msgs[0].role == "user" && msgs[1].role == "assistant");

    let lora = load(&shared("colossalchat/lora_sft_data.jsonl"), opts(Kind::Sft)).unwrap();
    assert_eq!(lora.records.len(), 10);
    let Record::Sft(msgs) = &lora.records[0].1 else { panic!() };
    assert_eq!(msgs[0].content, "只剩一个心脏了还能活吗？");

    let dpo = load(&shared("colossalchat/test_dpo_data.jsonl"), opts(Kind::Ranking)).unwrap();
    let Record::Ranking(r) = &dpo.records[0].1 else { panic!() };
    assert_eq!((r.responses.len(), r.ranks.clone()), (2, vec![0, 1]));
    assert_eq!(r.prompt.len(), 3);

    // A ColossalChat SFT file used as a prompt set drops the trailing assistant answer.
    let prompts = load(&shared("colossalchat/lora_sft_data.jsonl"), opts(Kind::Prompt)).unwrap();
    let Record::Prompt(p, _) = &prompts.records[0].1 else { panic!() };
    assert_eq!(p.last().unwrap().role, "user");
}

#[test]
fn instructionwild_prompts_load_and_malformed_lines_are_named_or_counted() {
    for (file, n) in [("data/seed_prompts_en.jsonl", 429), ("data/seed_prompts_ch.jsonl", 429), ("data_v2/user_1.jsonl", 429)] {
        assert_eq!(load(&shared(&format!("instructionwild/{file}")), opts(Kind::Prompt)).unwrap().records.len(), n, "{file}");
    }
    let user2 = shared("instructionwild/data_v2/user_2.jsonl");
    let e = strict_err(&user2, Kind::Prompt);
    assert!(e.contains("user_2.jsonl:134: invalid JSON"), "{e}");
    let skipped = load(&user2, LoadOptions { skip_invalid: true, ..opts(Kind::Prompt) }).unwrap();
    assert_eq!(skipped.skipped.lines(), vec![134, 168]);
    assert_eq!(skipped.records.len(), 246);

    let user3 = shared("instructionwild/data_v2/user_3.jsonl");
    assert!(strict_err(&user3, Kind::Prompt).contains("user_3.jsonl:10: invalid JSON"));
    let skipped = load(&user3, LoadOptions { skip_invalid: true, ..opts(Kind::Prompt) }).unwrap();
    assert_eq!(skipped.skipped.lines(), vec![10, 121, 122]);
    assert_eq!(skipped.skipped.by_reason["invalid JSON"].len(), 3);
    assert!(skipped.skipped.to_string().contains("skipped 3 invalid record(s)"));
}

#[test]
fn every_sft_format_is_recognised() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("openai.jsonl", r#"{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}"#),
        ("list.jsonl", r#"[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]"#),
        ("alpaca.json", "[\n {\"instruction\": \"Add\", \"input\": \"2+2\", \"output\": \"4\", \"id\": 1},\n {\"instruction\": \"Say hi\", \"input\": \"\", \"output\": \"hi\"}\n]"),
        ("alpaca.jsonl", r#"{"instruction": "Say hi", "input": "", "output": "hi", "id": "x"}"#),
        ("pc.jsonl", r#"{"prompt": "2+2?", "completion": "4"}"#),
    ];
    for (name, text) in cases {
        let loaded = load(&write(tmp.path(), name, text), opts(Kind::Sft)).unwrap();
        let Record::Sft(msgs) = &loaded.records[0].1 else { panic!() };
        assert_eq!(msgs.last().unwrap().role, "assistant", "{name}");
    }
    let alpaca = load(&tmp.path().join("alpaca.json"), opts(Kind::Sft)).unwrap();
    assert_eq!(alpaca.records.len(), 2);
    assert_eq!(alpaca.records[1].0, 3, "array records carry the line they start on");
    let Record::Sft(msgs) = &alpaca.records[0].1 else { panic!() };
    assert_eq!(msgs[0].content, "Add\n\n2+2");
}

#[test]
fn every_ranking_and_prompt_format_is_recognised() {
    let tmp = tempfile::tempdir().unwrap();
    let rankings = [
        ("trl_str.jsonl", r#"{"prompt":"q","chosen":"good","rejected":"bad"}"#, 2, vec![0, 1]),
        ("trl_msgs.jsonl", r#"{"prompt":[{"role":"user","content":"q"}],"chosen":[{"role":"assistant","content":"good"}],"rejected":[{"role":"assistant","content":"bad"}]}"#, 2, vec![0, 1]),
        ("k4.jsonl", r#"{"prompt":"q","responses":["a","b","c","d"]}"#, 4, vec![0, 1, 2, 3]),
        ("ties.jsonl", r#"{"prompt":"q","completions":["a","b","c"],"ranking":[1,2,1]}"#, 3, vec![1, 2, 1]),
        ("k9.jsonl", r#"{"prompt":"q","responses":["1","2","3","4","5","6","7","8","9"]}"#, 9, (0..9).collect()),
        // Unpaired (KTO) records: a ranking of one, rank 0 desirable, 1 undesirable.
        ("good.jsonl", r#"{"prompt":"q","completion":"good","label":true}"#, 1, vec![0]),
        ("bad.jsonl", r#"{"prompt":"q","completion":"bad","label":false}"#, 1, vec![1]),
    ];
    for (name, text, k, ranks) in rankings {
        let loaded = load(&write(tmp.path(), name, text), opts(Kind::Ranking)).unwrap();
        let Record::Ranking(r) = &loaded.records[0].1 else { panic!() };
        assert_eq!((r.responses.len(), &r.ranks), (k, &ranks), "{name}");
    }
    for (name, text) in [("p.jsonl", r#"{"prompt":"hello"}"#), ("i.jsonl", r#"{"instruction":"Translate","input":"猫"}"#), ("m.jsonl", r#"{"messages":[{"from":"user","content":"hi"}]}"#)] {
        let loaded = load(&write(tmp.path(), name, text), opts(Kind::Prompt)).unwrap();
        assert!(matches!(&loaded.records[0].1, Record::Prompt(m, _) if m[0].role == "user"), "{name}");
    }
    let text = load(&write(tmp.path(), "t.jsonl", "{\"text\":\"one\"}\n{\"text\":\"two\"}\n"), opts(Kind::Pretrain)).unwrap();
    assert_eq!(text.records.len(), 2);
    let txt = load(&write(tmp.path(), "t.txt", "first doc\nline two\n\n\nsecond doc\n"), opts(Kind::Pretrain)).unwrap();
    assert_eq!(txt.records, vec![(1, Record::Pretrain("first doc\nline two".into())), (5, Record::Pretrain("second doc".into()))]);
}

#[test]
fn each_malformed_case_has_its_own_message_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let ok = r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"}]}"#;
    let cases: [(Kind, &str, &str); 11] = [
        (Kind::Sft, r#"{"messages":[{"role":"user","content":"hi"},"#, "f.jsonl:2: invalid JSON"),
        (Kind::Sft, r#"{"conversation":[]}"#, "f.jsonl:2: record: expected `messages`"),
        (Kind::Sft, r#"{"messages":[{"role":"user"},{"role":"assistant","content":"x"}]}"#, "f.jsonl:2: messages[0].content: missing field"),
        (Kind::Sft, r#"{"messages":[{"role":"user","content":5},{"role":"assistant","content":"x"}]}"#, "f.jsonl:2: messages[0].content: expected a string, found a number"),
        (Kind::Sft, r#"{"messages":[{"role":"user","content":"hi"},{"role":"robot","content":"x"}]}"#, "f.jsonl:2: messages[1].role: expected \"user\", \"assistant\" or \"system\", found \"robot\""),
        (Kind::Sft, r#"{"messages":[{"from":"user","content":"hi"},{"from":"assistant","content":"  "}]}"#, "f.jsonl:2: messages[1].content: empty text"),
        (Kind::Sft, r#"{"messages":[{"role":"user","content":"hi"}]}"#, "f.jsonl:2: messages: no assistant answer"),
        (Kind::Ranking, r#"{"prompt":"q","responses":["only one"]}"#, "f.jsonl:2: responses: a ranking needs at least 2 responses, found 1"),
        (Kind::Ranking, r#"{"prompt":"q","completion":"a","label":"yes"}"#, "f.jsonl:2: label: expected true or false, found a string"),
        (Kind::Prompt, r#"{"prompt":""}"#, "f.jsonl:2: prompt: empty text"),
        (Kind::Prompt, r#"{"messages":[{"role":"assistant","content":"answer"}]}"#, "f.jsonl:2: messages: empty prompt"),
    ];
    for (kind, bad, want) in cases {
        let first = match kind {
            Kind::Sft => ok.to_string(),
            Kind::Ranking => r#"{"prompt":"q","responses":["a","b"]}"#.to_string(),
            _ => r#"{"prompt":"q"}"#.to_string(),
        };
        let path = write(tmp.path(), "f.jsonl", &format!("{first}\n{bad}\n"));
        let e = strict_err(&path, kind);
        assert!(e.contains(want), "got {e:?}, want {want:?}");
        let skipped = load(&path, LoadOptions { skip_invalid: true, ..opts(kind) }).unwrap();
        assert_eq!((skipped.records.len(), skipped.skipped.lines()), (1, vec![2]));
    }
    // Invalid UTF-8.
    let path = tmp.path().join("u.jsonl");
    std::fs::write(&path, [ok.as_bytes(), b"\n{\"prompt\":\"\xff\"}\n"].concat()).unwrap();
    assert!(strict_err(&path, Kind::Sft).contains("u.jsonl:2: invalid UTF-8"));
}

fn tiny_tokenizer() -> Tokenizer {
    Tokenizer::from_dir(&fixture("hf-tiny-llama")).unwrap()
}

/// The decoded loss-masked tokens of a 3-turn conversation are exactly the assistant contents, each
/// followed by the end-of-turn token — in English and in Chinese.
#[test]
fn sft_labels_cover_exactly_the_assistant_turns() {
    let tok = tiny_tokenizer();
    let fmt = ChatFormat::from_tokenizer(&tok).unwrap();
    assert_eq!(fmt.end_of_turn, "<|im_end|>");
    let convs = [
        ["What is in every corner?", "The letter r.", "And in a room?", "Two of them.", "Thanks!", "You are welcome."],
        ["每个角落都有什么？", "字母r。", "房间里呢？", "有两个。", "谢谢！", "不客气。"],
    ];
    for turns in convs {
        let msgs: Vec<_> = turns
            .iter()
            .enumerate()
            .map(|(i, t)| rlhf_data::Message::new(if i % 2 == 0 { "user" } else { "assistant" }, *t))
            .collect();
        let Encoded::Kept(s) = encode_sft(&tok, &fmt, &msgs, 512).unwrap() else { panic!() };
        // Contiguous labelled runs, decoded one by one.
        let mut runs: Vec<Vec<u32>> = Vec::new();
        for (i, (&id, &m)) in s.ids.iter().zip(&s.loss_mask).enumerate() {
            if m {
                if i == 0 || !s.loss_mask[i - 1] {
                    runs.push(vec![]);
                }
                runs.last_mut().unwrap().push(id);
            }
        }
        let decoded: Vec<String> = runs.iter().map(|r| tok.decode(r, false).unwrap()).collect();
        let want: Vec<String> = turns.iter().skip(1).step_by(2).map(|a| format!("{a}<|im_end|>")).collect();
        assert_eq!(decoded, want);
        // And the whole sequence is what the template renders.
        assert_eq!(tok.decode(&s.ids, false).unwrap(), fmt.render(&msgs, false).unwrap());
    }
}

#[test]
fn truncation_keeps_or_drops_and_prompts_end_with_the_generation_prompt() {
    let tok = tiny_tokenizer();
    let fmt = ChatFormat::from_tokenizer(&tok).unwrap();
    let msgs = vec![rlhf_data::Message::new("user", "a long question ".repeat(20)), rlhf_data::Message::new("assistant", "short")];
    assert!(matches!(encode_sft(&tok, &fmt, &msgs, 10).unwrap(), Encoded::Dropped), "no label left → dropped");
    let Encoded::Kept(full) = encode_sft(&tok, &fmt, &msgs, 1000).unwrap() else { panic!() };
    let Encoded::Truncated(cut) = encode_sft(&tok, &fmt, &msgs, full.ids.len() - 1).unwrap() else { panic!() };
    assert_eq!(cut.ids.len(), full.ids.len() - 1);

    let Encoded::Kept(p) = encode_prompt(&tok, &fmt, &msgs[..1], 1000).unwrap() else { panic!() };
    assert!(tok.decode(&p, false).unwrap().ends_with("<|im_start|>assistant\n"));

    let r = rlhf_data::Ranking { prompt: msgs[..1].to_vec(), responses: vec!["yes".into(), "no".into()], ranks: vec![0, 1] };
    let Encoded::Kept(rs) = encode_ranking(&tok, &fmt, &r, 1000).unwrap() else { panic!() };
    let eot = tok.token_id("<|im_end|>").unwrap();
    for s in &rs.sequences {
        assert_eq!(&s[..rs.prompt_len], &p[..]);
        assert_eq!(*s.last().unwrap(), eot);
    }
}

#[test]
fn builtin_colossal_template_has_system_prompt_and_eos_turns() {
    let tok = tiny_tokenizer();
    let fmt = ChatFormat::resolve(&tok, Some(BuiltinTemplate::Colossal)).unwrap();
    let msgs = vec![rlhf_data::Message::new("user", "hi"), rlhf_data::Message::new("assistant", "hello")];
    let text = fmt.render(&fmt_with_system(&fmt, &msgs), false).unwrap();
    assert!(text.starts_with("A chat between a curious human"));
    assert!(text.contains("Human: hi\nAssistant: hello<|im_end|>\n"), "{text}");
    let Encoded::Kept(s) = encode_sft(&tok, &fmt, &msgs, 512).unwrap() else { panic!() };
    let labelled: Vec<u32> = s.ids.iter().zip(&s.loss_mask).filter(|(_, &m)| m).map(|(&i, _)| i).collect();
    assert_eq!(tok.decode(&labelled, false).unwrap(), "hello<|im_end|>");
}

fn fmt_with_system(fmt: &ChatFormat, msgs: &[rlhf_data::Message]) -> Vec<rlhf_data::Message> {
    let mut v = vec![rlhf_data::Message::new("system", fmt.default_system.clone().unwrap())];
    v.extend_from_slice(msgs);
    v
}

#[test]
fn demo_set_is_byte_identical_per_seed_and_passes_strict_checks() {
    let tmp = tempfile::tempdir().unwrap();
    let sizes = rlhf_data::demo::DemoSizes { pretrain_docs: 200, sft: 200, rankings: 200, prompts: 100 };
    for (name, seed) in [("a", 5), ("b", 5), ("c", 6)] {
        rlhf_data::demo::write_demo(&tmp.path().join(name), seed, sizes).unwrap();
    }
    let files = ["pretrain.jsonl", "sft.jsonl", "rankings.jsonl", "prompts.jsonl", "heldout_prompts.jsonl", "manifest.json"];
    let read = |d: &str, f: &str| std::fs::read(tmp.path().join(d).join(f)).unwrap();
    for f in files {
        assert_eq!(read("a", f), read("b", f), "{f} differs for the same seed");
    }
    assert_ne!(read("a", "sft.jsonl"), read("c", "sft.jsonl"));
    let dir = tmp.path().join("a");
    for (f, kind, n) in [("sft.jsonl", Kind::Sft, 200), ("rankings.jsonl", Kind::Ranking, 200), ("prompts.jsonl", Kind::Prompt, 100), ("pretrain.jsonl", Kind::Pretrain, 200)] {
        assert_eq!(load(&dir.join(f), opts(kind)).unwrap().records.len(), n, "{f}");
    }
    // Rankings: K = 4 distinct responses, the best one scored highest by the oracle most of the time.
    let rankings = load(&dir.join("rankings.jsonl"), opts(Kind::Ranking)).unwrap();
    let mut agree = 0;
    for (_, r) in &rankings.records {
        let Record::Ranking(r) = r else { panic!() };
        assert_eq!(r.responses.len(), 4);
        let prompt = &r.prompt[0].content;
        let score = |i: usize| rlhf_data::demo::oracle(prompt, &r.responses[i]).unwrap().total();
        let best = (0..4).min_by_key(|&i| r.ranks[i]).unwrap();
        agree += usize::from((0..4).all(|i| score(best) >= score(i)));
    }
    assert!(agree >= 160, "{agree}/200 rankings put an oracle-best response first");
    // Held-out prompts never appear in the training prompt sets.
    let held: std::collections::BTreeSet<String> = std::fs::read_to_string(dir.join("heldout_prompts.jsonl")).unwrap().lines().map(String::from).collect();
    let prompts = std::fs::read_to_string(dir.join("prompts.jsonl")).unwrap();
    assert!(prompts.lines().all(|l| !held.contains(l)));
}

/// A folder whose template is only in chat_template.jinja (multi-line, relying on Jinja2's
/// `trim_blocks`/`lstrip_blocks`, with `bos_token` and a default system prompt) renders exactly the
/// ids transformers' `apply_chat_template(..., tokenize=True, add_generation_prompt=True)` gives.
#[test]
fn chat_template_jinja_gives_transformers_prompt_ids() {
    let dir = fixture("hf-tiny-chat");
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let cases = expected["chat_cases"].as_array().unwrap();
    assert!(cases.len() >= 5);
    for (i, case) in cases.iter().enumerate() {
        let msgs: Vec<rlhf_data::Message> = serde_json::from_value(case["messages"].clone()).unwrap();
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let got = tok.encode(&tok.apply_chat_template(&msgs, true).unwrap(), false).unwrap();
        assert_eq!(got, want, "case {i}: {msgs:?}");
        // The tokenizer's template format encodes prompts the same way (`rlhf chat`, PPO prompts).
        let fmt = ChatFormat::from_tokenizer(&tok).unwrap();
        let Encoded::Kept(ids) = encode_prompt(&tok, &fmt, &msgs, 1024).unwrap() else { panic!("case {i} dropped") };
        assert_eq!(ids, want, "case {i} through ChatFormat");
    }
}
