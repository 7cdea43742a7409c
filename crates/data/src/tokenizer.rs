//! `tokenizer.json` through the `tokenizers` crate, plus the chat template (`chat_template.jinja`,
//! `chat_template.json` or `tokenizer_config.json`) and the special tokens, rendered with a real Jinja
//! engine (minijinja) set up as transformers sets up Jinja2.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{DataError, Result};

/// One chat turn, as chat templates expect it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// The last user turn's text ("" without one): the question a conversation ends on, which the demo
/// oracle and the answer extractors read.
pub fn last_user_text(messages: &[Message]) -> &str {
    messages.iter().rev().find(|m| m.role == "user").map_or("", |m| m.content.as_str())
}

/// A tokenizer with its chat template and special tokens.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    pad_token: Option<String>,
    dir: PathBuf,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("dir", &self.dir)
            .field("vocab_size", &self.vocab_size())
            .field("has_chat_template", &self.chat_template.is_some())
            .finish()
    }
}

/// The raw template file transformers ≥ 4.43 writes (and reads before anything else).
pub const CHAT_TEMPLATE_JINJA: &str = "chat_template.jinja";
/// `{"chat_template": …}`, as processors (and some tokenizer folders) store it.
pub const CHAT_TEMPLATE_JSON: &str = "chat_template.json";
const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
/// Older folders name special tokens only here.
const SPECIAL_TOKENS_MAP: &str = "special_tokens_map.json";

/// A JSON file of the tokenizer folder, or `None` when it is absent.
fn read_json_if_present(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| DataError::Tokenizer { path: path.to_path_buf(), message: e.to_string() })
}

/// `key` of a JSON file as a special token: `"<s>"` or an AddedToken object `{"content": "<s>", …}`
/// (both appear); `null` or absent is `None`, anything else an error naming file and key.
fn special_token(file: Option<&Value>, key: &str, path: &Path) -> Result<Option<String>> {
    let found = match file.and_then(|f| f.get(key)) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v @ Value::Object(o)) => o.get("content").and_then(Value::as_str).map(str::to_string).ok_or(v),
        Some(v) => Err(v),
    };
    found.map(Some).map_err(|v| DataError::Tokenizer {
        path: path.to_path_buf(),
        message: format!("{key}: expected a token string or {{\"content\": …}}, found {v}"),
    })
}

/// A `chat_template` value: a string, or a list of `{"name", "template"}` of which "default" is used
/// (a list without one gives no template, as transformers then needs a name to pick one).
fn template_value(v: Option<&Value>, path: &Path) -> Result<Option<String>> {
    let bad = |found: &Value| DataError::Tokenizer {
        path: path.to_path_buf(),
        message: format!("chat_template: expected a string or a list of {{\"name\", \"template\"}}, found {found}"),
    };
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(list)) => {
            let mut default = None;
            for t in list {
                match (t.get("name").and_then(Value::as_str), t.get("template").and_then(Value::as_str)) {
                    (Some(name), Some(template)) => {
                        if name == "default" {
                            default = Some(template.to_string());
                        }
                    }
                    _ => return Err(bad(t)),
                }
            }
            Ok(default)
        }
        Some(other) => Err(bad(other)),
    }
}

/// The folder's chat template, looked for where transformers looks, in its order of preference:
/// `chat_template.jinja`, then `chat_template.json`, then `tokenizer_config.json`'s `chat_template`.
fn find_chat_template(dir: &Path, config: Option<&Value>) -> Result<Option<String>> {
    let jinja = dir.join(CHAT_TEMPLATE_JINJA);
    if jinja.exists() {
        return std::fs::read_to_string(&jinja).map(Some).map_err(|e| DataError::io(&jinja, e));
    }
    let json_path = dir.join(CHAT_TEMPLATE_JSON);
    if let Some(json) = read_json_if_present(&json_path)? {
        return match json.get("chat_template") {
            None => Err(DataError::Tokenizer { path: json_path, message: "missing field `chat_template`".into() }),
            some => template_value(some, &json_path),
        };
    }
    template_value(config.and_then(|c| c.get("chat_template")), &dir.join(TOKENIZER_CONFIG))
}

impl Tokenizer {
    /// Reads `DIR/tokenizer.json`, the chat template, and the special tokens of
    /// `tokenizer_config.json` (those it does not name from `special_tokens_map.json`). Other
    /// settings, such as transformers' placeholder `model_max_length` of 1e30, are ignored.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(DataError::Tokenizer { path, message: "file not found".into() });
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| DataError::Tokenizer { path: path.clone(), message: e.to_string() })?;
        let (config_path, map_path) = (dir.join(TOKENIZER_CONFIG), dir.join(SPECIAL_TOKENS_MAP));
        let config = read_json_if_present(&config_path)?;
        let map = read_json_if_present(&map_path)?;
        let token = |key: &str| -> Result<Option<String>> {
            Ok(match special_token(config.as_ref(), key, &config_path)? {
                Some(t) => Some(t),
                None => special_token(map.as_ref(), key, &map_path)?,
            })
        };
        Ok(Self {
            inner,
            chat_template: find_chat_template(dir, config.as_ref())?,
            bos_token: token("bos_token")?,
            eos_token: token("eos_token")?,
            pad_token: token("pad_token")?,
            dir: dir.into(),
        })
    }

    /// The folder the tokenizer was read from (its files are copied next to exported models).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`. Special tokens written in the text (e.g. `<|im_end|>`) map to their ids;
    /// no BOS/EOS is added unless the tokenizer's post-processor does so and `add_special` is set.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        self.inner
            .encode(text, add_special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| DataError::Tokenizer { path: self.dir.join("tokenizer.json"), message: e.to_string() })
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| DataError::Tokenizer { path: self.dir.join("tokenizer.json"), message: e.to_string() })
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos_token.as_deref().and_then(|t| self.token_id(t))
    }

    pub fn pad_id(&self) -> Option<u32> {
        self.pad_token.as_deref().and_then(|t| self.token_id(t))
    }

    /// The id that pads batches for a model: its `pad_token_id`, else the tokenizer's pad token,
    /// else EOS, else 0. Padding is always masked, so any id works; these keep decoded text clean.
    pub fn pad_id_for(&self, model_pad: Option<u32>) -> u32 {
        model_pad.or(self.pad_id()).or(self.eos_id()).unwrap_or(0)
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The chat template, or an error that says where it was looked for.
    pub fn required_chat_template(&self) -> Result<&str> {
        self.chat_template.as_deref().ok_or_else(|| DataError::Template {
            message: format!(
                "{}: no chat template ({CHAT_TEMPLATE_JINJA}, {CHAT_TEMPLATE_JSON} or `chat_template` in {TOKENIZER_CONFIG})",
                self.dir.display()
            ),
        })
    }

    /// Renders `messages` with the folder's chat template (transformers' `apply_chat_template`).
    pub fn apply_chat_template(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let template = self.required_chat_template()?;
        render_chat_template(
            template,
            messages,
            add_generation_prompt,
            self.bos_token.as_deref().unwrap_or(""),
            self.eos_token.as_deref().unwrap_or(""),
        )
    }
}

/// Renders a Hugging Face chat template. As in transformers' Jinja2 environment, a block tag's line
/// break is dropped and the indentation before it stripped (`trim_blocks`, `lstrip_blocks`), which
/// templates written over several lines rely on. Python string methods (`.strip()`,
/// `.startswith()`…) work through minijinja-contrib's pycompat layer; `raise_exception(msg)` becomes
/// an error.
pub fn render_chat_template(
    template: &str,
    messages: &[Message],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
    });
    let err = |e: minijinja::Error| DataError::Template { message: format!("chat template: {e:#}") };
    env.add_template("chat", template).map_err(err)?;
    let ctx = minijinja::context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    };
    env.get_template("chat").map_err(err)?.render(ctx).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

    #[test]
    fn renders_chatml_with_generation_prompt() {
        let msgs = [Message::new("user", "你好"), Message::new("assistant", "Hi!")];
        let out = render_chat_template(CHATML, &msgs, true, "", "").unwrap();
        assert_eq!(out, "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\nHi!<|im_end|>\n<|im_start|>assistant\n");
    }

    /// Block tags on lines of their own leave no blank lines or indentation (Jinja2 with transformers'
    /// `trim_blocks` and `lstrip_blocks`; expected output from jinja2 3.1).
    #[test]
    fn block_tags_trim_like_transformers_jinja() {
        let t = "{% for m in messages %}\n    {% if m['role'] == 'user' %}\nQ: {{ m['content'] }}\n    {% else %}\nA: {{ m['content'] }}\n    {% endif %}\n{% endfor %}\n{% if add_generation_prompt %}\nA:{% endif %}";
        let msgs = [Message::new("user", "hi"), Message::new("assistant", "yo")];
        assert_eq!(render_chat_template(t, &msgs, true, "", "").unwrap(), "Q: hi\nA: yo\nA:");
    }

    /// A word-level tokenizer.json small enough to write inline.
    const TOKENIZER_JSON: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
        "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
        "model":{"type":"WordLevel","vocab":{"<s>":0,"</s>":1,"<pad>":2,"hi":3},"unk_token":"<s>"}}"#;

    /// A tokenizer folder holding `files` (name, text) besides tokenizer.json.
    fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), TOKENIZER_JSON).unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn chat_template_from_jinja_then_json_then_tokenizer_config() {
        let config = (TOKENIZER_CONFIG, r#"{"chat_template":"config","eos_token":"</s>","model_max_length":1000000000000000019884624838656}"#);
        let json = (CHAT_TEMPLATE_JSON, r#"{"chat_template":"json"}"#);
        let jinja = (CHAT_TEMPLATE_JINJA, "jinja\n");
        let template = |files: &[(&str, &str)]| Tokenizer::from_dir(folder(files).path()).unwrap().chat_template().map(str::to_string);
        assert_eq!(template(&[config, json, jinja]).as_deref(), Some("jinja\n"));
        assert_eq!(template(&[config, json]).as_deref(), Some("json"));
        assert_eq!(template(&[config]).as_deref(), Some("config"));
        assert_eq!(template(&[]), None);
        let named = r#"{"chat_template":[{"name":"tool_use","template":"tools"},{"name":"default","template":"plain"}]}"#;
        assert_eq!(template(&[(CHAT_TEMPLATE_JSON, named)]).as_deref(), Some("plain"));
        assert_eq!(template(&[(TOKENIZER_CONFIG, named)]).as_deref(), Some("plain"));
        let tok = Tokenizer::from_dir(folder(&[]).path()).unwrap();
        let e = tok.apply_chat_template(&[Message::new("user", "hi")], true).unwrap_err().to_string();
        assert!(e.contains("no chat template") && e.contains(CHAT_TEMPLATE_JINJA), "{e}");
    }

    #[test]
    fn special_tokens_as_strings_or_added_token_objects() {
        let config = r#"{"bos_token":{"__type":"AddedToken","content":"<s>","lstrip":false,"special":true},
            "eos_token":"</s>","chat_template":null}"#;
        let map = r#"{"bos_token":"</s>","pad_token":{"content":"<pad>","normalized":false}}"#;
        let tok = Tokenizer::from_dir(folder(&[(TOKENIZER_CONFIG, config), (SPECIAL_TOKENS_MAP, map)]).path()).unwrap();
        // tokenizer_config.json first; special_tokens_map.json fills in what it does not name.
        assert_eq!((tok.bos_token(), tok.eos_token()), (Some("<s>"), Some("</s>")));
        assert_eq!((tok.eos_id(), tok.pad_id()), (Some(1), Some(2)));
        assert_eq!(tok.chat_template(), None);
    }

    #[test]
    fn malformed_tokenizer_files_name_file_and_field() {
        let cases = [
            (TOKENIZER_CONFIG, r#"{"eos_token":5}"#, "eos_token: expected a token string"),
            (TOKENIZER_CONFIG, r#"{"chat_template":{"default":"x"}}"#, "chat_template: expected a string or a list"),
            (TOKENIZER_CONFIG, r#"{"chat_template":[{"name":"default"}]}"#, "chat_template: expected a string or a list"),
            (CHAT_TEMPLATE_JSON, r#"{"template":"x"}"#, "missing field `chat_template`"),
            (CHAT_TEMPLATE_JSON, "{not json", "key must be a string"),
        ];
        for (file, text, want) in cases {
            let e = Tokenizer::from_dir(folder(&[(file, text)]).path()).unwrap_err().to_string();
            assert!(e.contains(file) && e.contains(want), "{file} {text}: {e}");
        }
    }

    #[test]
    fn python_methods_and_raise_exception_work() {
        let t = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first turn must be user') }}{% endif %}{{ messages[0]['content'].strip() }}";
        assert_eq!(render_chat_template(t, &[Message::new("user", "  hi  ")], false, "", "").unwrap(), "hi");
        let e = render_chat_template(t, &[Message::new("system", "x")], false, "", "").unwrap_err();
        assert!(e.to_string().contains("first turn must be user"), "{e}");
    }
}
