//! `tokenizer.json` through the `tokenizers` crate, plus the chat template and special tokens of
//! `tokenizer_config.json`, rendered with a real Jinja engine (minijinja), as transformers does.

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

/// A tokenizer with its chat template and special tokens.
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

/// `"<s>"` or `{"content": "<s>", …}` (both appear in tokenizer_config.json files).
fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

impl Tokenizer {
    /// Reads `DIR/tokenizer.json` and, when present, `DIR/tokenizer_config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(DataError::Tokenizer { path, message: "file not found".into() });
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| DataError::Tokenizer { path: path.clone(), message: e.to_string() })?;
        let mut tok = Self { inner, chat_template: None, bos_token: None, eos_token: None, pad_token: None, dir: dir.into() };
        let config_path = dir.join("tokenizer_config.json");
        if config_path.exists() {
            let text = std::fs::read_to_string(&config_path).map_err(|e| DataError::io(&config_path, e))?;
            let cfg: Value = serde_json::from_str(&text)
                .map_err(|e| DataError::Tokenizer { path: config_path.clone(), message: e.to_string() })?;
            tok.chat_template = match cfg.get("chat_template") {
                Some(Value::String(s)) => Some(s.clone()),
                // A list of named templates: use "default".
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .and_then(|t| t.get("template"))
                    .and_then(Value::as_str)
                    .map(str::to_string),
                _ => None,
            };
            tok.bos_token = token_string(cfg.get("bos_token"));
            tok.eos_token = token_string(cfg.get("eos_token"));
            tok.pad_token = token_string(cfg.get("pad_token"));
        }
        Ok(tok)
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

    /// Renders `messages` with the folder's chat template (transformers' `apply_chat_template`).
    pub fn apply_chat_template(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let template = self.chat_template.as_deref().ok_or_else(|| DataError::Template {
            message: format!("{} has no chat_template", self.dir.join("tokenizer_config.json").display()),
        })?;
        render_chat_template(
            template,
            messages,
            add_generation_prompt,
            self.bos_token.as_deref().unwrap_or(""),
            self.eos_token.as_deref().unwrap_or(""),
        )
    }
}

/// Renders a Hugging Face chat template. Python string methods (`.strip()`, `.startswith()`…) work
/// through minijinja-contrib's pycompat layer; `raise_exception(msg)` becomes an error.
pub fn render_chat_template(
    template: &str,
    messages: &[Message],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    let mut env = minijinja::Environment::new();
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

    #[test]
    fn python_methods_and_raise_exception_work() {
        let t = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first turn must be user') }}{% endif %}{{ messages[0]['content'].strip() }}";
        assert_eq!(render_chat_template(t, &[Message::new("user", "  hi  ")], false, "", "").unwrap(), "hi");
        let e = render_chat_template(t, &[Message::new("system", "x")], false, "", "").unwrap_err();
        assert!(e.to_string().contains("first turn must be user"), "{e}");
    }
}
