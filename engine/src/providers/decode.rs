//! Pure stream decoding: SSE events in, chunks and a decoded response out.
//!
//! No I/O lives here, so the same state machine is driven by the HTTP transport, the
//! tests (with arbitrary chunk boundaries) and the fuzzer.

use std::pin::pin;
use std::task::{Context, Poll, Waker};

use eventsource_stream::Eventsource;
use futures::Stream;
use serde_json::Value;

use super::anthropic::AnthropicDecoder;
use super::config::Protocol;
use super::error::ProviderError;
use super::openai::OpenAiDecoder;
use super::types::{Chunk, FinishReason, ToolCall, Usage};

/// What a complete stream decoded to (the transport adds timing and retry figures).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decoded {
    pub chunks: Vec<Chunk>,
    pub tool_calls: Vec<ToolCall>,
    pub usage: Usage,
    pub finish_reason: FinishReason,
}

/// Protocol-specific decoding state; see [`StreamDecoder`].
pub(crate) trait ProtocolDecoder {
    /// Handles one SSE event, pushing any text/reasoning deltas onto `out`.
    fn feed(
        &mut self,
        provider: &str,
        event: &str,
        data: &str,
        out: &mut Vec<Chunk>,
    ) -> Result<(), ProviderError>;
    /// Whether the protocol's terminator (message_stop / `[DONE]`) was seen.
    fn terminated(&self) -> bool;
    /// Turns the state into the result, checking the stream was complete.
    fn finish(self, provider: &str) -> Result<Partial, ProviderError>;
}

/// What a protocol decoder hands back at the end (chunks are kept by [`StreamDecoder`]).
pub(crate) struct Partial {
    pub tools: Vec<ToolAcc>,
    pub usage: Usage,
    pub finish_reason: FinishReason,
}

enum Inner {
    Anthropic(AnthropicDecoder),
    OpenAi(OpenAiDecoder),
}

/// State machine fed with SSE events (name + data) of one provider response.
pub struct StreamDecoder {
    provider: String,
    inner: Inner,
    chunks: Vec<Chunk>,
    failed: bool,
}

impl StreamDecoder {
    pub fn new(protocol: Protocol, provider: &str) -> Self {
        let inner = match protocol {
            Protocol::Anthropic => Inner::Anthropic(AnthropicDecoder::default()),
            Protocol::OpenAiCompatible => Inner::OpenAi(OpenAiDecoder::default()),
        };
        StreamDecoder {
            provider: provider.to_string(),
            inner,
            chunks: Vec::new(),
            failed: false,
        }
    }

    /// Feeds one SSE event; returns the deltas to show now (already recorded for the
    /// response). Events after the terminator are ignored. After an error the decoder
    /// stays failed and ignores further input.
    pub fn feed(&mut self, event: &str, data: &str) -> Result<Vec<Chunk>, ProviderError> {
        if self.failed || self.is_terminated() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let res = match &mut self.inner {
            Inner::Anthropic(d) => d.feed(&self.provider, event, data, &mut out),
            Inner::OpenAi(d) => d.feed(&self.provider, event, data, &mut out),
        };
        if let Err(e) = res {
            self.failed = true;
            return Err(e);
        }
        out.retain(|c| !c.text.is_empty());
        self.chunks.extend(out.iter().cloned());
        Ok(out)
    }

    /// Whether the protocol's end-of-stream marker was seen.
    pub fn is_terminated(&self) -> bool {
        match &self.inner {
            Inner::Anthropic(d) => d.terminated(),
            Inner::OpenAi(d) => d.terminated(),
        }
    }

    /// Whether any chunk was produced so far.
    pub fn has_output(&self) -> bool {
        !self.chunks.is_empty()
    }

    /// Ends the stream: checks it was complete and the tool-call arguments are JSON.
    pub fn finish(self) -> Result<Decoded, ProviderError> {
        let partial = match self.inner {
            Inner::Anthropic(d) => d.finish(&self.provider)?,
            Inner::OpenAi(d) => d.finish(&self.provider)?,
        };
        let tool_calls = partial
            .tools
            .into_iter()
            .map(|t| t.into_call(&self.provider))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Decoded {
            chunks: self.chunks,
            tool_calls,
            usage: partial.usage.with_total(),
            finish_reason: partial.finish_reason,
        })
    }
}

/// A tool call being assembled from streamed fragments.
#[derive(Debug, Default)]
pub(crate) struct ToolAcc {
    pub id: String,
    pub name: String,
    pub args: String,
}

impl ToolAcc {
    fn into_call(self, provider: &str) -> Result<ToolCall, ProviderError> {
        if self.name.is_empty() {
            return Err(ProviderError::Malformed {
                provider: provider.to_string(),
                message: format!("tool call '{}' has no tool name", self.id),
            });
        }
        // A tool without parameters may stream no argument fragments at all.
        let args = if self.args.trim().is_empty() {
            "{}".to_string()
        } else {
            self.args
        };
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&args) {
            return Err(ProviderError::InvalidToolArgs {
                provider: provider.to_string(),
                tool: self.name,
                message: e.to_string(),
            });
        }
        Ok(ToolCall {
            id: self.id,
            name: self.name,
            args,
        })
    }
}

/// Parses an event's data as JSON, or explains why it is not.
pub(crate) fn parse_data(provider: &str, event: &str, data: &str) -> Result<Value, ProviderError> {
    serde_json::from_str(data).map_err(|e| ProviderError::Malformed {
        provider: provider.to_string(),
        message: format!("data of event '{event}' is not JSON ({e})"),
    })
}

pub(crate) fn u64_field(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

pub(crate) fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Short description of an in-stream error object (`{"type","message"}` or `{"message","code"}`).
pub(crate) fn describe_error(err: &Value) -> String {
    let message = str_field(err, "message")
        .map(str::to_string)
        .or_else(|| err.as_str().map(str::to_string))
        .unwrap_or_else(|| truncate(&err.to_string(), 500));
    let kind = str_field(err, "type")
        .map(str::to_string)
        .or_else(|| match err.get("code") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        });
    match kind {
        Some(kind) if !kind.is_empty() => format!("{kind}: {}", truncate(&message, 500)),
        _ => truncate(&message, 500),
    }
}

pub(crate) fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        None => s.to_string(),
        Some((i, _)) => format!("{}…", &s[..i]),
    }
}

/// Runs raw SSE bytes (split into any parts) through the SSE parser and a decoder.
///
/// Synchronous: the byte source is an in-memory iterator, which never returns
/// `Pending`. Used by the tests and the fuzzer; the transport uses the same decoder
/// over the live body.
pub fn decode_sse_bytes<'a>(
    protocol: Protocol,
    provider: &str,
    parts: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Decoded, ProviderError> {
    let parts: Vec<Result<&'a [u8], std::convert::Infallible>> =
        parts.into_iter().map(Ok).collect();
    let mut events = pin!(futures::stream::iter(parts).eventsource());
    let mut cx = Context::from_waker(Waker::noop());
    let mut decoder = StreamDecoder::new(protocol, provider);
    loop {
        match events.as_mut().poll_next(&mut cx) {
            Poll::Ready(Some(Ok(ev))) => {
                decoder.feed(&ev.event, &ev.data)?;
            }
            Poll::Ready(Some(Err(e))) => {
                return Err(ProviderError::Malformed {
                    provider: provider.to_string(),
                    message: format!("invalid SSE: {e}"),
                });
            }
            Poll::Ready(None) => break,
            // An in-memory stream is always ready; treat the impossible as a parse stop.
            Poll::Pending => break,
        }
    }
    decoder.finish()
}
