//! Anthropic Messages API: request body and stream decoder.
//!
//! Stream format: `message_start`, then per content block `content_block_start`,
//! `content_block_delta`* and `content_block_stop`, then `message_delta` (stop reason,
//! final usage) and `message_stop`; `ping` and unknown event types may appear anywhere
//! and are ignored, `error` ends the stream.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::decode::{
    Partial, ProtocolDecoder, ToolAcc, describe_error, parse_data, str_field, u64_field,
};
use super::error::ProviderError;
use super::types::{ChatMessage, Chunk, FinishReason, ModelRequest, Usage};

pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// `POST {base}/v1/messages`.
pub fn endpoint(base_url: &str) -> String {
    format!("{}/v1/messages", base_url.trim_end_matches('/'))
}

/// The JSON body for a streaming Messages request.
pub fn request_body(provider: &str, req: &ModelRequest) -> Result<Value, ProviderError> {
    let mut messages: Vec<Value> = Vec::new();
    for msg in &req.messages {
        let (role, blocks) = match msg {
            // The API rejects empty text blocks.
            ChatMessage::User { text } if text.is_empty() => ("user", Vec::new()),
            ChatMessage::User { text } => ("user", vec![json!({"type": "text", "text": text})]),
            ChatMessage::Assistant { text, tool_calls } => {
                let mut blocks = Vec::new();
                // An assistant turn may be tool calls only; no empty text block then.
                if !text.is_empty() {
                    blocks.push(json!({"type": "text", "text": text}));
                }
                for call in tool_calls {
                    // A call without arguments may have been recorded with empty args.
                    let args = match call.args.trim() {
                        "" => "{}",
                        a => a,
                    };
                    let input: Value =
                        serde_json::from_str(args).map_err(|e| ProviderError::InvalidRequest {
                            provider: provider.to_string(),
                            message: format!(
                                "arguments of tool call '{}' ({}) are not JSON: {e}",
                                call.id, call.name
                            ),
                        })?;
                    blocks.push(json!({
                        "type": "tool_use", "id": call.id, "name": call.name, "input": input,
                    }));
                }
                ("assistant", blocks)
            }
            ChatMessage::ToolResult {
                tool_use_id,
                content,
                is_error,
            } => {
                let mut block = Map::new();
                block.insert("type".into(), json!("tool_result"));
                block.insert("tool_use_id".into(), json!(tool_use_id));
                block.insert("content".into(), json!(content));
                if *is_error {
                    block.insert("is_error".into(), json!(true));
                }
                ("user", vec![Value::Object(block)])
            }
        };
        if blocks.is_empty() {
            continue;
        }
        // Roles must alternate: the tool results answering one assistant turn (and any
        // user text after them) travel in a single user message.
        match messages.last_mut() {
            Some(last) if last["role"] == role => {
                if let Some(content) = last["content"].as_array_mut() {
                    content.extend(blocks);
                }
            }
            _ => messages.push(json!({"role": role, "content": blocks})),
        }
    }

    let mut body = Map::new();
    body.insert("model".into(), json!(req.model));
    body.insert("max_tokens".into(), json!(req.max_tokens));
    if !req.system.is_empty() {
        body.insert("system".into(), json!(req.system));
    }
    body.insert("messages".into(), Value::Array(messages));
    if !req.tools.is_empty() {
        let tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                json!({"name": t.name, "description": t.description, "input_schema": t.input_schema})
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    body.insert("stream".into(), json!(true));
    Ok(Value::Object(body))
}

#[derive(Debug, Clone, Copy)]
enum Block {
    Text,
    Thinking,
    /// Index into `AnthropicDecoder::tools`.
    Tool(usize),
    /// Server tools, redacted thinking and future block types: nothing to surface.
    Other,
}

#[derive(Debug, Default)]
pub(crate) struct AnthropicDecoder {
    blocks: BTreeMap<u64, Block>,
    tools: Vec<ToolAcc>,
    usage: Usage,
    stop_reason: Option<String>,
    stopped: bool,
}

impl AnthropicDecoder {
    fn apply_usage(&mut self, u: &Value) {
        // message_delta usage is cumulative, so later figures replace earlier ones.
        if let Some(n) = u64_field(u, "input_tokens") {
            self.usage.prompt_tokens = n;
        }
        if let Some(n) = u64_field(u, "output_tokens") {
            self.usage.completion_tokens = n;
        }
        if let Some(n) = u64_field(u, "cache_read_input_tokens") {
            self.usage.cache_read_input_tokens = n;
        }
        if let Some(n) = u64_field(u, "cache_creation_input_tokens") {
            self.usage.cache_creation_input_tokens = n;
        }
    }
}

fn malformed(provider: &str, message: String) -> ProviderError {
    ProviderError::Malformed {
        provider: provider.to_string(),
        message,
    }
}

impl ProtocolDecoder for AnthropicDecoder {
    fn feed(
        &mut self,
        provider: &str,
        event: &str,
        data: &str,
        out: &mut Vec<Chunk>,
    ) -> Result<(), ProviderError> {
        let v = parse_data(provider, event, data)?;
        let kind = str_field(&v, "type").unwrap_or(event);
        match kind {
            "message_start" => {
                if let Some(u) = v.get("message").and_then(|m| m.get("usage")) {
                    self.apply_usage(u);
                }
            }
            "content_block_start" => {
                let index = u64_field(&v, "index").ok_or_else(|| {
                    malformed(provider, "content_block_start without an index".into())
                })?;
                let cb = v.get("content_block").unwrap_or(&Value::Null);
                let block = match str_field(cb, "type") {
                    Some("text") => {
                        if let Some(t) = str_field(cb, "text") {
                            out.push(Chunk::text(t));
                        }
                        Block::Text
                    }
                    Some("thinking") => {
                        if let Some(t) = str_field(cb, "thinking") {
                            out.push(Chunk::reasoning(t));
                        }
                        Block::Thinking
                    }
                    Some("tool_use") => {
                        let id = str_field(cb, "id").unwrap_or_default().to_string();
                        let name = str_field(cb, "name").unwrap_or_default().to_string();
                        // `input` is `{}` when the arguments follow as input_json_delta;
                        // anything else is a complete input given up front.
                        let args = match cb.get("input") {
                            Some(Value::Object(m)) if m.is_empty() => String::new(),
                            None | Some(Value::Null) => String::new(),
                            Some(other) => other.to_string(),
                        };
                        self.tools.push(ToolAcc { id, name, args });
                        Block::Tool(self.tools.len() - 1)
                    }
                    _ => Block::Other,
                };
                if self.blocks.insert(index, block).is_some() {
                    return Err(malformed(
                        provider,
                        format!("content block {index} started twice"),
                    ));
                }
            }
            "content_block_delta" => {
                let index = u64_field(&v, "index").ok_or_else(|| {
                    malformed(provider, "content_block_delta without an index".into())
                })?;
                let delta = v.get("delta").unwrap_or(&Value::Null);
                let block = self.blocks.get(&index).copied();
                match str_field(delta, "type") {
                    Some("text_delta") => {
                        if let Some(t) = str_field(delta, "text") {
                            out.push(Chunk::text(t));
                        }
                    }
                    Some("thinking_delta") => {
                        if let Some(t) = str_field(delta, "thinking") {
                            out.push(Chunk::reasoning(t));
                        }
                    }
                    Some("input_json_delta") => match block {
                        Some(Block::Tool(i)) => {
                            let part = str_field(delta, "partial_json").unwrap_or_default();
                            if let Some(t) = self.tools.get_mut(i) {
                                t.args.push_str(part);
                            }
                        }
                        Some(Block::Other) => {}
                        _ => {
                            return Err(malformed(
                                provider,
                                format!(
                                    "input_json_delta for content block {index}, which is not a tool_use block"
                                ),
                            ));
                        }
                    },
                    // signature_delta, citations_delta and future delta types.
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(reason) = v.get("delta").and_then(|d| str_field(d, "stop_reason")) {
                    self.stop_reason = Some(reason.to_string());
                }
                if let Some(u) = v.get("usage") {
                    self.apply_usage(u);
                }
            }
            "message_stop" => self.stopped = true,
            "error" => {
                let err = v.get("error").unwrap_or(&Value::Null);
                return Err(ProviderError::Api {
                    provider: provider.to_string(),
                    message: describe_error(err),
                });
            }
            // ping, content_block_stop and event types added later.
            _ => {}
        }
        Ok(())
    }

    fn terminated(&self) -> bool {
        self.stopped
    }

    fn finish(self, provider: &str) -> Result<Partial, ProviderError> {
        if !self.stopped && self.stop_reason.is_none() {
            return Err(ProviderError::Truncated {
                provider: provider.to_string(),
                message: "no message_stop event and no stop_reason".to_string(),
            });
        }
        let finish_reason = match self.stop_reason.as_deref() {
            Some("end_turn" | "stop_sequence" | "pause_turn") => FinishReason::Stop,
            Some("tool_use") => FinishReason::ToolCalls,
            Some("max_tokens" | "model_context_window_exceeded") => FinishReason::Length,
            Some("refusal") => FinishReason::ContentFilter,
            // Unknown stop reason, or message_stop without one: infer from the content.
            _ if !self.tools.is_empty() => FinishReason::ToolCalls,
            _ => FinishReason::Stop,
        };
        Ok(Partial {
            tools: self.tools,
            usage: self.usage,
            finish_reason,
        })
    }
}
