//! OpenAI-compatible Chat Completions: request body and stream decoder.
//!
//! Stream format: `data: {chat.completion.chunk}` events whose `choices[0].delta` carries
//! `content`, `reasoning_content` / `reasoning` (vLLM, DeepSeek, OpenRouter) and
//! `tool_calls` fragments keyed by `index`; a `finish_reason` on the last choice chunk;
//! with `stream_options.include_usage` a final chunk with empty `choices` and `usage`;
//! then `data: [DONE]`. Errors arrive as `data: {"error": {...}}`.

use serde_json::{Map, Value, json};

use super::decode::{
    Partial, ProtocolDecoder, ToolAcc, describe_error, parse_data, str_field, u64_field,
};
use super::error::ProviderError;
use super::types::{ChatMessage, Chunk, FinishReason, ModelRequest, Usage};

/// `POST {base}/chat/completions`.
pub fn endpoint(base_url: &str) -> String {
    format!("{}/chat/completions", base_url.trim_end_matches('/'))
}

/// The JSON body for a streaming Chat Completions request.
pub fn request_body(req: &ModelRequest, base_url: &str) -> Value {
    let mut messages: Vec<Value> = Vec::new();
    if !req.system.is_empty() {
        messages.push(json!({"role": "system", "content": req.system}));
    }
    for msg in &req.messages {
        match msg {
            ChatMessage::User { text } => messages.push(json!({"role": "user", "content": text})),
            ChatMessage::Assistant { text, tool_calls } => {
                let mut m = Map::new();
                m.insert("role".into(), json!("assistant"));
                // Tool-call-only turns carry `content: null`, as OpenAI itself returns them.
                let content = if text.is_empty() && !tool_calls.is_empty() {
                    Value::Null
                } else {
                    json!(text)
                };
                m.insert("content".into(), content);
                if !tool_calls.is_empty() {
                    let calls: Vec<Value> = tool_calls
                        .iter()
                        .map(|c| {
                            json!({
                                "id": c.id,
                                "type": "function",
                                "function": {"name": c.name, "arguments": c.args},
                            })
                        })
                        .collect();
                    m.insert("tool_calls".into(), Value::Array(calls));
                }
                messages.push(Value::Object(m));
            }
            // Chat Completions has no error flag: the content (an `{"error": ...}` payload
            // for failures) speaks for itself.
            ChatMessage::ToolResult {
                tool_use_id,
                content,
                ..
            } => messages.push(json!({
                "role": "tool", "tool_call_id": tool_use_id, "content": content,
            })),
        }
    }

    let mut body = Map::new();
    body.insert("model".into(), json!(req.model));
    body.insert("messages".into(), Value::Array(messages));
    // OpenAI's own API rejects `max_tokens` for reasoning models (o1, o3…) and accepts
    // `max_completion_tokens` everywhere; compatible servers (vLLM, Ollama, LM Studio…)
    // reliably understand only `max_tokens`.
    let token_field = if is_openai_host(base_url) {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    body.insert(token_field.into(), json!(req.max_tokens));
    if !req.tools.is_empty() {
        let tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                json!({
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.input_schema,
                    },
                })
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    body.insert("stream".into(), json!(true));
    body.insert("stream_options".into(), json!({"include_usage": true}));
    Value::Object(body)
}

fn is_openai_host(base_url: &str) -> bool {
    reqwest::Url::parse(base_url)
        .ok()
        .and_then(|u| {
            u.host_str()
                .map(|h| h.eq_ignore_ascii_case("api.openai.com"))
        })
        .unwrap_or(false)
}

#[derive(Debug, Default)]
pub(crate) struct OpenAiDecoder {
    tools: Vec<ToolAcc>,
    /// `index` of each entry of `tools`, as the server numbered them.
    tool_indexes: Vec<u64>,
    usage: Usage,
    finish_reason: Option<String>,
    done: bool,
}

fn malformed(provider: &str, message: String) -> ProviderError {
    ProviderError::Malformed {
        provider: provider.to_string(),
        message,
    }
}

impl OpenAiDecoder {
    fn tool_fragment(&mut self, provider: &str, frag: &Value) -> Result<(), ProviderError> {
        let id = str_field(frag, "id").filter(|s| !s.is_empty());
        let function = frag.get("function").unwrap_or(&Value::Null);
        let name = str_field(function, "name").filter(|s| !s.is_empty());
        let args = str_field(function, "arguments").unwrap_or_default();
        // Some servers omit `index` and send each call whole; a fresh id then starts a
        // new call and id-less fragments continue the last one.
        let pos = match u64_field(frag, "index") {
            Some(index) => self.tool_indexes.iter().position(|i| *i == index),
            None => match id {
                Some(id) => self.tools.iter().position(|t| t.id == id),
                None => match self.tools.len() {
                    0 => None,
                    n => Some(n - 1),
                },
            },
        };
        let pos = match pos {
            Some(p) => p,
            None => {
                let index = u64_field(frag, "index").unwrap_or(self.tools.len() as u64);
                if id.is_none() && name.is_none() {
                    return Err(malformed(
                        provider,
                        format!(
                            "tool call fragment for index {index} before the call's id or name"
                        ),
                    ));
                }
                self.tools.push(ToolAcc::default());
                self.tool_indexes.push(index);
                self.tools.len() - 1
            }
        };
        let Some(acc) = self.tools.get_mut(pos) else {
            return Ok(());
        };
        if acc.id.is_empty()
            && let Some(id) = id
        {
            acc.id = id.to_string();
        }
        if acc.name.is_empty()
            && let Some(name) = name
        {
            acc.name = name.to_string();
        }
        acc.args.push_str(args);
        Ok(())
    }
}

impl ProtocolDecoder for OpenAiDecoder {
    fn feed(
        &mut self,
        provider: &str,
        event: &str,
        data: &str,
        out: &mut Vec<Chunk>,
    ) -> Result<(), ProviderError> {
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let v = parse_data(provider, event, data)?;
        if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
            return Err(ProviderError::Api {
                provider: provider.to_string(),
                message: describe_error(err),
            });
        }
        if event == "error" {
            return Err(ProviderError::Api {
                provider: provider.to_string(),
                message: describe_error(&v),
            });
        }
        if let Some(choices) = v.get("choices").and_then(Value::as_array) {
            for choice in choices {
                // We never ask for n > 1; other choices would interleave with ours.
                if u64_field(choice, "index").is_some_and(|i| i != 0) {
                    continue;
                }
                if let Some(delta) = choice.get("delta") {
                    let reasoning = str_field(delta, "reasoning_content")
                        .or_else(|| str_field(delta, "reasoning"));
                    if let Some(r) = reasoning {
                        out.push(Chunk::reasoning(r));
                    }
                    if let Some(t) = str_field(delta, "content") {
                        out.push(Chunk::text(t));
                    }
                    if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
                        for frag in calls {
                            self.tool_fragment(provider, frag)?;
                        }
                    }
                }
                // Some servers send `""` rather than null on non-final chunks.
                if let Some(reason) = str_field(choice, "finish_reason").filter(|r| !r.is_empty()) {
                    self.finish_reason = Some(reason.to_string());
                }
            }
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            // Servers that report usage on every chunk send running totals.
            self.usage.prompt_tokens = u64_field(u, "prompt_tokens").unwrap_or(0);
            self.usage.completion_tokens = u64_field(u, "completion_tokens").unwrap_or(0);
            self.usage.cache_read_input_tokens = u
                .get("prompt_tokens_details")
                .and_then(|d| u64_field(d, "cached_tokens"))
                .unwrap_or(0);
        }
        Ok(())
    }

    fn terminated(&self) -> bool {
        self.done
    }

    fn finish(self, provider: &str) -> Result<Partial, ProviderError> {
        if !self.done && self.finish_reason.is_none() {
            return Err(ProviderError::Truncated {
                provider: provider.to_string(),
                message: "no [DONE] marker and no finish_reason".to_string(),
            });
        }
        let finish_reason = match self.finish_reason.as_deref() {
            Some("stop") => FinishReason::Stop,
            Some("tool_calls" | "function_call") => FinishReason::ToolCalls,
            Some("length") => FinishReason::Length,
            Some("content_filter") => FinishReason::ContentFilter,
            _ if !self.tools.is_empty() => FinishReason::ToolCalls,
            _ => FinishReason::Stop,
        };
        let mut tools = self.tools;
        // Servers without ids (some local ones) still need distinct ids for the results.
        for (i, t) in tools.iter_mut().enumerate() {
            if t.id.is_empty() {
                t.id = format!("call_{i}");
            }
        }
        Ok(Partial {
            tools,
            usage: self.usage,
            finish_reason,
        })
    }
}
