//! `rlhf data distill`: the teacher answers a prompt set (Vicuna's recipe: fine-tune on a stronger
//! model's conversations), optionally continuing each conversation for more turns — the teacher
//! writes the user's follow-up, then answers it. The result is ColossalChat SFT JSONL.

use std::path::Path;

use crate::client::{ChatMessage, ChatRequest, Client};

#[derive(Debug, Clone)]
pub struct DistillConfig {
    /// Assistant turns per conversation (1: answer the prompt only).
    pub turns: usize,
    pub temperature: f64,
    pub max_tokens: u32,
    /// A system message sent to the teacher (not written to the data).
    pub system: Option<String>,
}

impl Default for DistillConfig {
    fn default() -> Self {
        Self { turns: 1, temperature: 0.7, max_tokens: 1024, system: None }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DistillSummary {
    pub written: usize,
    /// Conversations dropped because the teacher answered with nothing.
    pub empty: usize,
}

/// The request for the user's next message, given the conversation so far.
pub fn follow_up_prompt(conversation: &[ChatMessage]) -> String {
    let mut s = String::from(
        "Here is a conversation between a user and an AI assistant:\n\n",
    );
    for m in conversation {
        s.push_str(&format!("[{}]\n{}\n\n", m.role, m.content));
    }
    s.push_str(
        "Write the user's next message: a natural follow-up question or request that builds on the answer, in \
         the user's language. Reply with the message only.",
    );
    s
}

fn request(messages: Vec<ChatMessage>, cfg: &DistillConfig) -> ChatRequest {
    let mut all: Vec<ChatMessage> = cfg.system.iter().map(ChatMessage::system).collect();
    all.extend(messages);
    ChatRequest { messages: all, temperature: Some(cfg.temperature), max_tokens: Some(cfg.max_tokens), ..Default::default() }
}

/// Answers every prompt (a conversation ending with a user turn) with the teacher, for `cfg.turns`
/// assistant turns, turn by turn across all conversations; writes the conversations that got an
/// answer at every turn to `out`.
pub fn distill(prompts: Vec<Vec<ChatMessage>>, cfg: &DistillConfig, client: &Client, out: &Path) -> anyhow::Result<DistillSummary> {
    let mut live: Vec<Vec<ChatMessage>> = prompts;
    let mut summary = DistillSummary::default();
    for turn in 0..cfg.turns.max(1) {
        if turn > 0 {
            // The user's follow-ups first.
            let asks: Vec<ChatRequest> = live.iter().map(|c| request(vec![ChatMessage::user(follow_up_prompt(c))], cfg)).collect();
            for (c, a) in live.iter_mut().zip(client.chat_many(&asks, Some(&format!("distill: follow-ups {}", turn + 1)))) {
                c.push(ChatMessage::user(a?.text().trim()));
            }
        }
        let asks: Vec<ChatRequest> = live.iter().map(|c| request(c.clone(), cfg)).collect();
        let answers = client.chat_many(&asks, Some(&format!("distill: answers {}", turn + 1)));
        let mut kept = Vec::with_capacity(live.len());
        for (mut c, a) in live.into_iter().zip(answers) {
            let text = a?.text().trim().to_string();
            let asked = c.last().is_some_and(|m| !m.content.trim().is_empty());
            if text.is_empty() || !asked {
                summary.empty += 1;
                continue;
            }
            c.push(ChatMessage { role: "assistant".into(), content: text });
            kept.push(c);
        }
        live = kept;
    }
    let mut lines = String::new();
    for c in &live {
        let messages: Vec<serde_json::Value> = c.iter().map(|m| serde_json::json!({"from": m.role, "content": m.content})).collect();
        lines.push_str(&serde_json::json!({ "messages": messages }).to_string());
        lines.push('\n');
    }
    rlhf_files::write_atomic(out, &lines)?;
    summary.written = live.len();
    Ok(summary)
}
