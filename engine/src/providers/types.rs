//! Provider-neutral request and response types.
//!
//! These are journaled by the run driver (`ModelResponse` as ModelResponded, the hash of
//! `ModelRequest` as ModelRequested), so their serde forms are part of the journal format:
//! camelCase keys, matching the wire names of API.md §3.1 (`Usage`, `retryEvents`,
//! `ttftMs`, `hadTimeout`) so the driver can copy them into events unchanged.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One model call: everything the transport needs besides the provider config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelRequest {
    pub model: String,
    /// System prompt; omitted from the provider request when empty.
    pub system: String,
    pub messages: Vec<ChatMessage>,
    pub tools: Vec<ToolDef>,
    pub max_tokens: u32,
}

/// A message of the conversation history, provider-neutral.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "camelCase")]
pub enum ChatMessage {
    #[serde(rename_all = "camelCase")]
    User { text: String },
    #[serde(rename_all = "camelCase")]
    Assistant {
        text: String,
        tool_calls: Vec<ToolCall>,
    },
    #[serde(rename_all = "camelCase")]
    ToolResult {
        tool_use_id: String,
        /// JSON text of the tool's result (or of an `{"error": ...}` payload).
        content: String,
        is_error: bool,
    },
}

/// A tool offered to the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolDef {
    pub name: String,
    pub description: String,
    /// JSON schema of the tool's arguments (an object schema).
    pub input_schema: Value,
}

/// A tool call made by the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// JSON text of the arguments, exactly as the model streamed it (validated to parse).
    pub args: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ChunkKind {
    Text,
    Reasoning,
}

/// One streamed delta, passed to `on_chunk` as it arrives and recorded in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Chunk {
    pub kind: ChunkKind,
    pub text: String,
}

impl Chunk {
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            kind: ChunkKind::Text,
            text: text.into(),
        }
    }

    pub fn reasoning(text: impl Into<String>) -> Self {
        Self {
            kind: ChunkKind::Reasoning,
            text: text.into(),
        }
    }
}

/// Token usage, in the shape of API.md §3.1 `Usage`.
///
/// Figures are the provider's own: Anthropic's `input_tokens` excludes cached tokens
/// (reported separately), OpenAI's `prompt_tokens` includes `cached_tokens`.
/// `total_tokens` is always `prompt_tokens + completion_tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub total_tokens: u64,
}

impl Usage {
    pub(crate) fn with_total(mut self) -> Self {
        self.total_tokens = self.prompt_tokens.saturating_add(self.completion_tokens);
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FinishReason {
    #[serde(rename = "stop")]
    Stop,
    #[serde(rename = "tool-calls")]
    ToolCalls,
    #[serde(rename = "length")]
    Length,
    #[serde(rename = "content-filter")]
    ContentFilter,
}

impl FinishReason {
    /// The API.md wire name (`finish.finishReason`).
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::ToolCalls => "tool-calls",
            FinishReason::Length => "length",
            FinishReason::ContentFilter => "content-filter",
        }
    }
}

/// One retry: which attempt failed, why, and how long we waited before the next one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryEvent {
    /// 1-based number of the attempt that failed.
    pub attempt: u32,
    /// HTTP status of the failed attempt, when it got one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Short failure kind: `"http"`, `"connect"`, `"timeout"`, `"reset"`, `"truncated"`,
    /// `"overloaded"`...
    pub error: String,
    pub delay_ms: u64,
}

/// A completed model call, ready to be journaled (contains no secrets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelResponse {
    /// Text and reasoning deltas exactly as they were passed to `on_chunk`.
    pub chunks: Vec<Chunk>,
    /// Tool calls in the model's order.
    pub tool_calls: Vec<ToolCall>,
    pub usage: Usage,
    pub finish_reason: FinishReason,
    pub retries: u32,
    pub retry_events: Vec<RetryEvent>,
    /// Milliseconds from the start of the call to the first chunk, if there was one.
    pub ttft_ms: Option<u64>,
    pub duration_ms: u64,
    /// Whether any attempt of this call hit a timeout (a later attempt may have succeeded).
    pub had_timeout: bool,
}

impl ModelResponse {
    /// Concatenated text chunks (reasoning excluded).
    pub fn text(&self) -> String {
        self.chunks
            .iter()
            .filter(|c| c.kind == ChunkKind::Text)
            .map(|c| c.text.as_str())
            .collect()
    }
}
