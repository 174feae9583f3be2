//! Provider transports against a real HTTP server on 127.0.0.1 (see `support_http`),
//! plus the pure decoder over the fixture transcripts.

#![allow(clippy::unwrap_used)]

mod support_http;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use flowai_runtime::providers::*;
use proptest::prelude::*;
use serde_json::{Value, json};
use support_http::{End, Reply, TestServer, split_events};
use tokio::sync::Notify;

const SECRET: &str = "sk-test-SECRET-d41d8cd98f00b204e980";

fn fixtures_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/providers")
}

fn dir_of(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Anthropic => "anthropic",
        Protocol::OpenAiCompatible => "openai",
    }
}

struct Transcript {
    protocol: Protocol,
    name: String,
    sse: Vec<u8>,
    expected: Value,
}

fn transcripts() -> &'static [Transcript] {
    static ALL: OnceLock<Vec<Transcript>> = OnceLock::new();
    ALL.get_or_init(|| {
        let mut all = Vec::new();
        for protocol in [Protocol::Anthropic, Protocol::OpenAiCompatible] {
            let dir = fixtures_dir().join(dir_of(protocol));
            let mut names: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .filter_map(|e| {
                    let name = e.unwrap().file_name().into_string().unwrap();
                    name.strip_suffix(".sse").map(str::to_string)
                })
                .collect();
            names.sort();
            for name in names {
                let sse = std::fs::read(dir.join(format!("{name}.sse"))).unwrap();
                let expected: Value = serde_json::from_slice(
                    &std::fs::read(dir.join(format!("{name}.expected.json"))).unwrap(),
                )
                .unwrap();
                all.push(Transcript {
                    protocol,
                    name,
                    sse,
                    expected,
                });
            }
        }
        assert!(all.len() >= 20, "fixtures missing");
        all
    })
}

fn transcript(protocol: Protocol, name: &str) -> &'static Transcript {
    transcripts()
        .iter()
        .find(|t| t.protocol == protocol && t.name == name)
        .unwrap()
}

fn key_of(protocol: Protocol) -> &'static str {
    protocol.as_str()
}

/// Checks a decode result against an `.expected.json`.
fn check_expected(t: &Transcript, result: &Result<Decoded, ProviderError>) {
    let ctx = format!("{}/{}", dir_of(t.protocol), t.name);
    match t.expected.get("errorContains") {
        Some(needles) => {
            let err = match result {
                Ok(d) => panic!("{ctx}: expected an error, got {d:?}"),
                Err(e) => e.to_string(),
            };
            for n in needles.as_array().unwrap() {
                let n = n.as_str().unwrap();
                assert!(err.contains(n), "{ctx}: error {err:?} lacks {n:?}");
            }
        }
        None => {
            let d = result
                .as_ref()
                .unwrap_or_else(|e| panic!("{ctx}: unexpected error {e}"));
            assert_eq!(serde_json::to_value(d).unwrap(), t.expected, "{ctx}");
        }
    }
}

fn expected_chunks(t: &Transcript) -> Vec<Chunk> {
    serde_json::from_value(t.expected["chunks"].clone()).unwrap()
}

fn config(protocol: Protocol, server: &TestServer, extra: Value) -> ProviderConfig {
    let base = match protocol {
        Protocol::Anthropic => server.base_url(),
        Protocol::OpenAiCompatible => format!("{}/v1", server.base_url()),
    };
    let mut v = json!({
        "apiKey": SECRET,
        "baseUrl": base,
        "timeoutMs": 10_000,
        "maxRetries": 2,
        "retryBaseDelayMs": 1,
    });
    for (k, val) in extra.as_object().unwrap() {
        v[k] = val.clone();
    }
    ProviderConfig::from_json(key_of(protocol), protocol, &v, &|_| None).unwrap()
}

fn simple_request(protocol: Protocol) -> ModelRequest {
    ModelRequest {
        model: match protocol {
            Protocol::Anthropic => "claude-sonnet-4-5".into(),
            Protocol::OpenAiCompatible => "gpt-4o-mini".into(),
        },
        system: "Be brief.".into(),
        messages: vec![ChatMessage::User {
            text: "Say hello".into(),
        }],
        tools: vec![],
        max_tokens: 256,
    }
}

fn golden_request(model: &str) -> ModelRequest {
    let call = |id: &str, name: &str, args: &str| ToolCall {
        id: id.into(),
        name: name.into(),
        args: args.into(),
    };
    ModelRequest {
        model: model.into(),
        system: "You are a weather bot.".into(),
        messages: vec![
            ChatMessage::User {
                text: "What's the weather in Paris, and the time?".into(),
            },
            ChatMessage::Assistant {
                text: "Let me check.".into(),
                tool_calls: vec![
                    call("call_1", "get_weather", r#"{"city":"Paris"}"#),
                    call("call_2", "get_time", r#"{"tz":"Europe/Paris"}"#),
                ],
            },
            ChatMessage::ToolResult {
                tool_use_id: "call_1".into(),
                content: r#"{"tempC":18}"#.into(),
                is_error: false,
            },
            ChatMessage::ToolResult {
                tool_use_id: "call_2".into(),
                content: r#"{"error":"clock unavailable"}"#.into(),
                is_error: true,
            },
            ChatMessage::User {
                text: "Thanks! And tomorrow?".into(),
            },
            ChatMessage::Assistant {
                text: String::new(),
                tool_calls: vec![call(
                    "call_3",
                    "get_weather",
                    r#"{"city":"Paris","day":"tomorrow"}"#,
                )],
            },
            ChatMessage::ToolResult {
                tool_use_id: "call_3".into(),
                content: r#"{"tempC":20}"#.into(),
                is_error: false,
            },
        ],
        tools: vec![
            ToolDef {
                name: "get_weather".into(),
                description: "Current weather for a city".into(),
                input_schema: json!({
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "day": {"type": "string"}},
                    "required": ["city"],
                }),
            },
            ToolDef {
                name: "get_time".into(),
                description: "Current time in a timezone".into(),
                input_schema: json!({
                    "type": "object",
                    "properties": {"tz": {"type": "string"}},
                    "required": ["tz"],
                }),
            },
        ],
        max_tokens: 1024,
    }
}

/// Runs one call, collecting what `on_chunk` saw.
async fn call(
    cfg: &ProviderConfig,
    req: &ModelRequest,
) -> (Vec<Chunk>, Result<ModelResponse, ProviderError>) {
    let client = client_for(cfg).unwrap();
    let mut seen = Vec::new();
    let res = client
        .complete(req, &mut |c: &Chunk| seen.push(c.clone()))
        .await;
    (seen, res)
}

const BOTH: [Protocol; 2] = [Protocol::Anthropic, Protocol::OpenAiCompatible];

// ---------------------------------------------------------------------------------------
// Decoder over the transcripts

#[test]
fn every_transcript_decodes_to_its_expected_result() {
    for t in transcripts() {
        let res = decode_sse_bytes(t.protocol, key_of(t.protocol), [t.sse.as_slice()]);
        check_expected(t, &res);
    }
}

#[test]
fn decoder_emits_chunks_as_events_arrive() {
    let t = transcript(Protocol::Anthropic, "text");
    let mut d = StreamDecoder::new(Protocol::Anthropic, "anthropic");
    let mut all = Vec::new();
    for piece in split_events(&t.sse) {
        let text = String::from_utf8(piece).unwrap();
        let (mut event, mut data) = ("message".to_string(), String::new());
        for line in text.lines() {
            if let Some(e) = line.strip_prefix("event: ") {
                event = e.to_string();
            } else if let Some(x) = line.strip_prefix("data: ") {
                data = x.to_string();
            }
        }
        let chunks = d.feed(&event, &data).unwrap();
        if event == "content_block_delta" {
            assert_eq!(chunks.len(), 1, "one chunk per text delta");
        }
        all.extend(chunks);
    }
    assert!(d.is_terminated());
    assert_eq!(all, expected_chunks(t));
    assert_eq!(d.finish().unwrap().chunks, expected_chunks(t));
}

#[test]
fn garbage_and_empty_streams_are_errors_not_panics() {
    for protocol in BOTH {
        for body in [
            &b""[..],
            b"\n\n\n",
            b"data: \n\n",
            b"event: message_stop\n\n",
            b"\xff\xfe\x00garbage",
            b"data: {\"type\":\"content_block_delta\",\"index\":3,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\"}}\n\n",
            b"data: [1,2,3]\n\ndata: null\n\ndata: \"x\"\n\n",
        ] {
            let res = decode_sse_bytes(protocol, "p", [body]);
            let err = res.expect_err("not a complete response");
            assert!(err.to_string().contains("'p'"), "{err}");
        }
    }
}

fn decode_str(protocol: Protocol, body: &str) -> Result<Decoded, ProviderError> {
    decode_sse_bytes(protocol, "p", [body.as_bytes()])
}

/// `data:` events for the given chunks (+ `[DONE]`).
fn openai_sse(chunks: &[Value], done: bool) -> String {
    let mut out: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
    if done {
        out.push_str("data: [DONE]\n\n");
    }
    out
}

/// Named events (`event:` = the object's `type`).
fn anthropic_sse(events: &[Value]) -> String {
    events
        .iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
        .collect()
}

#[test]
fn openai_variants_of_compatible_servers() {
    // No `index` on tool-call fragments (each call whole, with an id), an empty-string
    // finish_reason on non-final chunks, usage totals recomputed.
    let body = openai_sse(
        &[
            json!({"choices": [{"delta": {"tool_calls": [
                {"id": "a", "function": {"name": "f", "arguments": "{\"x\":1}"}},
                {"id": "b", "function": {"name": "g", "arguments": "{}"}},
            ]}, "finish_reason": ""}]}),
            json!({"choices": [{"delta": {}, "finish_reason": "tool_calls"}],
                   "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 99}}),
        ],
        true,
    );
    let d = decode_str(Protocol::OpenAiCompatible, &body).unwrap();
    let calls: Vec<(&str, &str, &str)> = d
        .tool_calls
        .iter()
        .map(|c| (c.id.as_str(), c.name.as_str(), c.args.as_str()))
        .collect();
    assert_eq!(calls, vec![("a", "f", r#"{"x":1}"#), ("b", "g", "{}")]);
    assert_eq!(d.usage.total_tokens, 7);

    // No [DONE] but a finish reason: complete. No id: a stable synthetic one.
    let body = openai_sse(
        &[
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "function": {"name": "f", "arguments": ""}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "function": {"arguments": "{}"}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        ],
        false,
    );
    let d = decode_str(Protocol::OpenAiCompatible, &body).unwrap();
    assert_eq!(d.tool_calls[0].id, "call_0");
    assert_eq!(d.finish_reason, FinishReason::Stop);

    let orphan = openai_sse(
        &[json!({"choices": [{"delta": {"tool_calls": [
            {"index": 3, "function": {"arguments": "{}"}}]}}]})],
        true,
    );
    let err = decode_str(Protocol::OpenAiCompatible, &orphan).unwrap_err();
    assert!(err.to_string().contains("index 3"), "{err}");
}

#[test]
fn anthropic_variants() {
    // A tool_use block that carries its whole input up front, a server-tool block whose
    // input deltas are not ours, and events after message_stop.
    let body = anthropic_sse(&[
        json!({"type": "message_start", "message": {"usage": {"input_tokens": 5, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0, "content_block":
            {"type": "server_tool_use", "id": "srv", "name": "web_search", "input": {}}}),
        json!({"type": "content_block_delta", "index": 0, "delta":
            {"type": "input_json_delta", "partial_json": "{\"q\":1}"}}),
        json!({"type": "content_block_start", "index": 1, "content_block":
            {"type": "tool_use", "id": "t", "name": "f", "input": {"a": [1, 2]}}}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
        json!({"type": "message_stop"}),
        json!({"type": "content_block_delta", "index": 2, "delta": {"type": "text_delta", "text": "late"}}),
    ]);
    let d = decode_str(Protocol::Anthropic, &body).unwrap();
    assert!(d.chunks.is_empty());
    assert_eq!(d.tool_calls.len(), 1);
    assert_eq!(d.tool_calls[0].args, r#"{"a":[1,2]}"#);
    assert_eq!(
        (
            d.usage.prompt_tokens,
            d.usage.completion_tokens,
            d.usage.total_tokens
        ),
        (5, 9, 14)
    );

    let unknown_block = anthropic_sse(&[json!({"type": "content_block_delta", "index": 7,
        "delta": {"type": "input_json_delta", "partial_json": "{"}})]);
    let err = decode_str(Protocol::Anthropic, &unknown_block).unwrap_err();
    assert!(err.to_string().contains("content block 7"), "{err}");
}

fn split_at_points(bytes: &[u8], points: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = points.iter().map(|p| p % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut prev = 0;
    for c in cuts {
        out.push(bytes[prev..c].to_vec());
        prev = c;
    }
    out.push(bytes[prev..].to_vec());
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Chunk boundaries of the byte stream (mid-line, mid-UTF-8) never change the result.
    #[test]
    fn random_chunk_boundaries_give_the_same_result(
        index in 0usize..1000,
        points in proptest::collection::vec(any::<usize>(), 0..40),
    ) {
        let all = transcripts();
        let t = &all[index % all.len()];
        let whole = decode_sse_bytes(t.protocol, key_of(t.protocol), [t.sse.as_slice()]);
        let parts = split_at_points(&t.sse, &points);
        let split = decode_sse_bytes(t.protocol, key_of(t.protocol), parts.iter().map(Vec::as_slice));
        prop_assert_eq!(whole, split);
    }

    /// Arbitrary bytes never panic the parser + decoder.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), anthropic in any::<bool>()) {
        let protocol = if anthropic { Protocol::Anthropic } else { Protocol::OpenAiCompatible };
        let _ = decode_sse_bytes(protocol, "p", [bytes.as_slice()]);
    }
}

// ---------------------------------------------------------------------------------------
// Transcripts over HTTP

#[tokio::test]
async fn every_transcript_over_http() {
    for t in transcripts() {
        let ctx = format!("{}/{}", dir_of(t.protocol), t.name);
        let server = TestServer::start(vec![Reply::sse(&t.sse), Reply::sse(&t.sse)]).await;
        let cfg = config(t.protocol, &server, json!({}));
        let (seen, res) = call(&cfg, &simple_request(t.protocol)).await;
        assert_eq!(seen, expected_chunks(t), "{ctx}: chunks passed to on_chunk");
        let as_decoded = res.as_ref().map_err(Clone::clone).map(|r| Decoded {
            chunks: r.chunks.clone(),
            tool_calls: r.tool_calls.clone(),
            usage: r.usage,
            finish_reason: r.finish_reason,
        });
        check_expected(t, &as_decoded);
        // Every fault transcript has output before the fault or is not transient.
        assert_eq!(server.requests().len(), 1, "{ctx}: no retry");
        if let Ok(r) = res {
            assert_eq!(r.retries, 0);
            assert!(r.retry_events.is_empty());
            assert!(!r.had_timeout);
            assert_eq!(r.ttft_ms.is_some(), !r.chunks.is_empty(), "{ctx}");
        }
    }
}

#[tokio::test]
async fn close_delimited_body_works() {
    for protocol in BOTH {
        let t = transcript(protocol, "text");
        let server = TestServer::start(vec![Reply::Sse {
            pieces: split_events(&t.sse),
            chunked: false,
            gate: None,
            end: End::Complete,
        }])
        .await;
        let (seen, res) = call(
            &config(protocol, &server, json!({})),
            &simple_request(protocol),
        )
        .await;
        let r = res.unwrap();
        assert_eq!(seen, expected_chunks(t));
        assert_eq!(r.text(), "Hello, Grüße — 👋 world!");
    }
}

#[tokio::test]
async fn byte_by_byte_body_works() {
    for protocol in BOTH {
        let t = transcript(protocol, "tool_call_split");
        let pieces: Vec<Vec<u8>> = t.sse.chunks(7).map(<[u8]>::to_vec).collect();
        let server = TestServer::start(vec![Reply::Sse {
            pieces,
            chunked: true,
            gate: None,
            end: End::Complete,
        }])
        .await;
        let (_, res) = call(
            &config(protocol, &server, json!({})),
            &simple_request(protocol),
        )
        .await;
        let r = res.unwrap();
        assert_eq!(r.finish_reason, FinishReason::ToolCalls);
        assert_eq!(r.tool_calls.len(), 1);
        let args: Value = serde_json::from_str(&r.tool_calls[0].args).unwrap();
        assert_eq!(args["location"], "San Francisco, CA");
    }
}

// ---------------------------------------------------------------------------------------
// Retries

#[tokio::test]
async fn rate_limit_with_retry_after_then_success() {
    for protocol in BOTH {
        let t = transcript(protocol, "text");
        let server = TestServer::start(vec![
            Reply::status(
                429,
                r#"{"error":{"type":"rate_limit_error","message":"slow down"}}"#,
            )
            .with_header("retry-after", "0"),
            Reply::sse(&t.sse),
        ])
        .await;
        // A long base delay: only an honoured `retry-after: 0` keeps this test fast.
        let cfg = config(protocol, &server, json!({"retryBaseDelayMs": 30_000}));
        let (seen, res) = call(&cfg, &simple_request(protocol)).await;
        let r = res.unwrap();
        assert_eq!(seen, expected_chunks(t));
        assert_eq!(r.retries, 1);
        assert_eq!(
            r.retry_events,
            vec![RetryEvent {
                attempt: 1,
                status: Some(429),
                error: "http".into(),
                delay_ms: 0
            }]
        );
        assert_eq!(server.requests().len(), 2);
    }
}

#[tokio::test]
async fn server_error_then_success() {
    for protocol in BOTH {
        let t = transcript(protocol, "text");
        let server = TestServer::start(vec![
            Reply::status(500, r#"{"error":{"type":"api_error","message":"boom"}}"#),
            Reply::status(
                529,
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            ),
            Reply::sse(&t.sse),
        ])
        .await;
        let (seen, res) = call(
            &config(protocol, &server, json!({})),
            &simple_request(protocol),
        )
        .await;
        let r = res.unwrap();
        assert_eq!(seen, expected_chunks(t));
        assert_eq!(r.retries, 2);
        let statuses: Vec<Option<u16>> = r.retry_events.iter().map(|e| e.status).collect();
        assert_eq!(statuses, vec![Some(500), Some(529)]);
        assert_eq!(r.retry_events[1].attempt, 2);
    }
}

#[tokio::test]
async fn retries_are_bounded_by_max_retries() {
    for protocol in BOTH {
        let server = TestServer::start(vec![
            Reply::status(503, r#"{"error":{"message":"unavailable"}}"#),
            Reply::status(503, r#"{"error":{"message":"unavailable"}}"#),
            Reply::status(503, r#"{"error":{"message":"still unavailable"}}"#),
        ])
        .await;
        let (_, res) = call(
            &config(protocol, &server, json!({})),
            &simple_request(protocol),
        )
        .await;
        let err = res.unwrap_err();
        assert_eq!(err.status(), Some(503));
        let text = err.to_string();
        assert!(
            text.contains(key_of(protocol)) && text.contains("still unavailable"),
            "{text}"
        );
        assert!(text.contains("after 2 retries"), "{text}");
        assert_eq!(server.requests().len(), 3);
    }
}

#[tokio::test]
async fn client_error_is_not_retried() {
    for protocol in BOTH {
        let server = TestServer::start(vec![
            Reply::status(
                400,
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: must be positive"}}"#,
            ),
            Reply::sse(&transcript(protocol, "text").sse),
        ])
        .await;
        let (seen, res) = call(
            &config(protocol, &server, json!({})),
            &simple_request(protocol),
        )
        .await;
        let err = res.unwrap_err();
        assert!(seen.is_empty());
        assert_eq!(err.status(), Some(400));
        let text = err.to_string();
        assert!(text.contains(key_of(protocol)), "{text}");
        assert!(text.contains("400"), "{text}");
        assert!(
            text.contains("invalid_request_error: max_tokens: must be positive"),
            "{text}"
        );
        assert_eq!(server.requests().len(), 1);
    }
}

#[tokio::test]
async fn reset_after_first_chunk_is_an_error_without_retry() {
    for protocol in BOTH {
        let t = transcript(protocol, "text");
        let events = split_events(&t.sse);
        // Up to and including the first text delta.
        let upto = match protocol {
            Protocol::Anthropic => 4,
            Protocol::OpenAiCompatible => 2,
        };
        let gate = Arc::new(Notify::new());
        let server = TestServer::start(vec![
            Reply::Sse {
                pieces: events[..upto].to_vec(),
                chunked: true,
                gate: Some(gate.clone()),
                end: End::Reset,
            },
            Reply::sse(&t.sse),
        ])
        .await;
        let client = client_for(&config(protocol, &server, json!({}))).unwrap();
        let mut seen = Vec::new();
        let res = client
            .complete(&simple_request(protocol), &mut |c: &Chunk| {
                seen.push(c.clone());
                // Reset only once the client has passed the chunk on.
                gate.notify_one();
            })
            .await;
        let err = res.unwrap_err();
        assert_eq!(seen, vec![Chunk::text("Hello")]);
        let text = err.to_string();
        assert!(text.contains(key_of(protocol)), "{text}");
        assert!(text.contains("after output started"), "{text}");
        assert_eq!(server.requests().len(), 1, "no retry after the first chunk");
    }
}

#[tokio::test]
async fn reset_before_any_chunk_is_retried() {
    for protocol in BOTH {
        let t = transcript(protocol, "text");
        let events = split_events(&t.sse);
        let server = TestServer::start(vec![
            Reply::ResetBeforeResponse,
            // Headers and the non-text opening event, then a reset.
            Reply::Sse {
                pieces: events[..1].to_vec(),
                chunked: true,
                gate: None,
                end: End::Reset,
            },
            Reply::sse(&t.sse),
        ])
        .await;
        let (seen, res) = call(
            &config(protocol, &server, json!({})),
            &simple_request(protocol),
        )
        .await;
        let r = res.unwrap();
        assert_eq!(seen, expected_chunks(t));
        assert_eq!(r.retries, 2);
        assert_eq!(server.requests().len(), 3);
    }
}

#[tokio::test]
async fn truncated_before_output_is_retried_and_after_output_is_an_error() {
    for protocol in BOTH {
        let t = transcript(protocol, "text");
        let events = split_events(&t.sse);
        let server = TestServer::start(vec![
            Reply::Sse {
                pieces: events[..1].to_vec(),
                chunked: true,
                gate: None,
                end: End::Complete,
            },
            Reply::sse(&t.sse),
        ])
        .await;
        let (_, res) = call(
            &config(protocol, &server, json!({})),
            &simple_request(protocol),
        )
        .await;
        let r = res.unwrap();
        assert_eq!(r.retries, 1);
        assert_eq!(r.retry_events[0].error, "truncated");

        let cut = transcript(protocol, "fault_truncated");
        let server = TestServer::start(vec![Reply::sse(&cut.sse), Reply::sse(&t.sse)]).await;
        let (seen, res) = call(
            &config(protocol, &server, json!({})),
            &simple_request(protocol),
        )
        .await;
        let err = res.unwrap_err();
        assert_eq!(seen.len(), 2);
        assert!(matches!(err, ProviderError::Truncated { .. }), "{err}");
        assert!(err.to_string().contains(key_of(protocol)));
        assert_eq!(server.requests().len(), 1);
    }
}

#[tokio::test]
async fn anthropic_overloaded_event_before_output_is_retried() {
    let t = transcript(Protocol::Anthropic, "text");
    let overloaded = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
    let server =
        TestServer::start(vec![Reply::sse(overloaded.as_bytes()), Reply::sse(&t.sse)]).await;
    let (_, res) = call(
        &config(Protocol::Anthropic, &server, json!({})),
        &simple_request(Protocol::Anthropic),
    )
    .await;
    let r = res.unwrap();
    assert_eq!(r.retries, 1);
    assert_eq!(r.retry_events[0].error, "overloaded");
}

#[tokio::test]
async fn connection_refused_is_retried_then_reported() {
    for protocol in BOTH {
        // Port 1 (tcpmux) is not served here. A freshly freed ephemeral port is not
        // safe: a concurrent test's server may be handed the same port.
        let port = 1;
        let cfg = ProviderConfig::from_json(
            key_of(protocol),
            protocol,
            &json!({"apiKey": SECRET, "baseUrl": format!("http://127.0.0.1:{port}"), "retryBaseDelayMs": 1, "maxRetries": 1}),
            &|_| None,
        )
        .unwrap();
        let (_, res) = call(&cfg, &simple_request(protocol)).await;
        let err = res.unwrap_err();
        assert!(matches!(err, ProviderError::Connect { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(key_of(protocol)) && text.contains("after 1 retries"),
            "{text}"
        );
        assert!(!text.contains(SECRET));
    }
}

#[tokio::test]
async fn json_body_on_200_is_an_error() {
    let server = TestServer::start(vec![Reply::Status {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: r#"{"error":{"message":"stream not supported","type":"invalid_request_error"}}"#
            .into(),
    }])
    .await;
    let (_, res) = call(
        &config(Protocol::OpenAiCompatible, &server, json!({})),
        &simple_request(Protocol::OpenAiCompatible),
    )
    .await;
    let text = res.unwrap_err().to_string();
    assert!(
        text.contains("openai-compatible") && text.contains("stream not supported"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------
// Timeouts and cancellation

#[tokio::test]
async fn silent_server_times_out() {
    for protocol in BOTH {
        let server = TestServer::start(vec![Reply::Silent(Duration::from_secs(60))]).await;
        let cfg = config(
            protocol,
            &server,
            json!({"timeoutMs": 200, "maxRetries": 0}),
        );
        let (_, res) = call(&cfg, &simple_request(protocol)).await;
        let err = res.unwrap_err();
        assert!(err.had_timeout(), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(key_of(protocol)) && text.contains("timed out"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn stall_after_first_chunk_times_out_without_retry() {
    async fn one(protocol: Protocol) {
        let t = transcript(protocol, "text");
        let events = split_events(&t.sse);
        let upto = match protocol {
            Protocol::Anthropic => 4,
            Protocol::OpenAiCompatible => 2,
        };
        let server = TestServer::start(vec![
            Reply::Sse {
                pieces: events[..upto].to_vec(),
                chunked: true,
                gate: None,
                end: End::Stall(Duration::from_secs(60)),
            },
            Reply::sse(&t.sse),
        ])
        .await;
        // Generous: the first chunk must arrive within it even on a loaded machine.
        let cfg = config(protocol, &server, json!({"timeoutMs": 1000}));
        let (seen, res) = call(&cfg, &simple_request(protocol)).await;
        let err = res.unwrap_err();
        assert_eq!(seen, vec![Chunk::text("Hello")]);
        assert!(err.had_timeout(), "{err}");
        assert_eq!(server.requests().len(), 1);
    }
    tokio::join!(one(Protocol::Anthropic), one(Protocol::OpenAiCompatible));
}

#[tokio::test]
async fn timeout_then_success_reports_had_timeout() {
    let protocol = Protocol::OpenAiCompatible;
    let t = transcript(protocol, "text");
    let server = TestServer::start(vec![
        Reply::Silent(Duration::from_secs(60)),
        Reply::sse(&t.sse),
    ])
    .await;
    let cfg = config(
        protocol,
        &server,
        // The second attempt must fit the whole stream in it, even on a loaded machine.
        json!({"timeoutMs": 1000, "maxRetries": 1}),
    );
    let (_, res) = call(&cfg, &simple_request(protocol)).await;
    let r = res.unwrap();
    assert!(r.had_timeout);
    assert_eq!(r.retries, 1);
    assert_eq!(r.retry_events[0].error, "timeout");
}

#[tokio::test]
async fn dropping_the_future_cancels_the_request() {
    for protocol in BOTH {
        let t = transcript(protocol, "text");
        let events = split_events(&t.sse);
        let upto = match protocol {
            Protocol::Anthropic => 4,
            Protocol::OpenAiCompatible => 2,
        };
        let server = TestServer::start(vec![Reply::Sse {
            pieces: events[..upto].to_vec(),
            chunked: true,
            gate: None,
            end: End::Stall(Duration::from_secs(60)),
        }])
        .await;
        let closed = server.on_client_close();
        let client = client_for(&config(protocol, &server, json!({}))).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut tx = Some(tx);
        let req = simple_request(protocol);
        {
            let mut on_chunk = |_: &Chunk| {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(());
                }
            };
            let fut = client.complete(&req, &mut on_chunk);
            tokio::select! {
                _ = fut => panic!("the server stalls; the call cannot finish"),
                _ = rx => {}
            }
        }
        tokio::time::timeout(Duration::from_secs(20), closed)
            .await
            .expect("client closed the connection after the future was dropped")
            .unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// Requests

#[tokio::test]
async fn golden_request_bodies_and_headers() {
    for protocol in BOTH {
        let golden: Value = serde_json::from_slice(
            &std::fs::read(
                fixtures_dir()
                    .join(dir_of(protocol))
                    .join("request.golden.json"),
            )
            .unwrap(),
        )
        .unwrap();
        let server = TestServer::start(vec![Reply::sse(&transcript(protocol, "text").sse)]).await;
        let cfg = config(protocol, &server, json!({"headers": {"X-Trace": "abc"}}));
        let model = golden["model"].as_str().unwrap();
        let (_, res) = call(&cfg, &golden_request(model)).await;
        res.unwrap();
        let reqs = server.requests();
        assert_eq!(reqs.len(), 1);
        let r = &reqs[0];
        assert_eq!(r.method, "POST");
        assert_eq!(r.json(), golden, "{protocol} request body");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("accept"), Some("text/event-stream"));
        assert_eq!(r.header("x-trace"), Some("abc"));
        match protocol {
            Protocol::Anthropic => {
                assert_eq!(r.path, "/v1/messages");
                assert_eq!(r.header("x-api-key"), Some(SECRET));
                assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
                assert_eq!(r.header("authorization"), None);
            }
            Protocol::OpenAiCompatible => {
                assert_eq!(r.path, "/v1/chat/completions");
                let bearer = format!("Bearer {SECRET}");
                assert_eq!(r.header("authorization"), Some(bearer.as_str()));
                assert_eq!(r.header("x-api-key"), None);
            }
        }
    }
}

#[test]
fn openai_host_gets_max_completion_tokens() {
    let req = simple_request(Protocol::OpenAiCompatible);
    let body = openai::request_body(&req, DEFAULT_OPENAI_BASE_URL);
    assert_eq!(body["max_completion_tokens"], 256);
    assert!(body.get("max_tokens").is_none());
    let body = openai::request_body(&req, "http://localhost:11434/v1");
    assert_eq!(body["max_tokens"], 256);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
}

#[test]
fn anthropic_request_rejects_non_json_tool_args() {
    let mut req = simple_request(Protocol::Anthropic);
    req.messages.push(ChatMessage::Assistant {
        text: String::new(),
        tool_calls: vec![ToolCall {
            id: "t1".into(),
            name: "lookup".into(),
            args: "{nope".into(),
        }],
    });
    let err = anthropic::request_body("anthropic", &req).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("anthropic") && text.contains("lookup"),
        "{text}"
    );
}

#[test]
fn request_hash_is_canonical_and_sensitive() {
    let req = golden_request("m");
    let h = request_hash(&req);
    assert_eq!(h.len(), 64);
    assert!(h.chars().all(|c| c.is_ascii_hexdigit()));
    // Same value after a serde round trip (key order and whitespace do not matter).
    let round: ModelRequest =
        serde_json::from_str(&serde_json::to_string_pretty(&req).unwrap()).unwrap();
    assert_eq!(request_hash(&round), h);
    let expected = blake3::hash(
        serde_json_canonicalizer::to_string(&req)
            .unwrap()
            .as_bytes(),
    );
    assert_eq!(h, expected.to_hex().to_string());
    let mut other = req.clone();
    other.max_tokens += 1;
    assert_ne!(request_hash(&other), h);
}

#[test]
fn serde_forms_match_the_wire_names() {
    assert_eq!(
        serde_json::to_value(FinishReason::ToolCalls).unwrap(),
        "tool-calls"
    );
    assert_eq!(
        serde_json::to_value(FinishReason::ContentFilter).unwrap(),
        "content-filter"
    );
    let usage = Usage {
        prompt_tokens: 1,
        completion_tokens: 2,
        cache_read_input_tokens: 3,
        cache_creation_input_tokens: 4,
        total_tokens: 3,
    };
    assert_eq!(
        serde_json::to_value(usage).unwrap(),
        json!({"promptTokens": 1, "completionTokens": 2, "cacheReadInputTokens": 3,
               "cacheCreationInputTokens": 4, "totalTokens": 3})
    );
    let msg = ChatMessage::ToolResult {
        tool_use_id: "a".into(),
        content: "{}".into(),
        is_error: true,
    };
    assert_eq!(
        serde_json::to_value(&msg).unwrap(),
        json!({"role": "toolResult", "toolUseId": "a", "content": "{}", "isError": true})
    );
    let resp = ModelResponse {
        chunks: vec![Chunk::text("a"), Chunk::reasoning("b")],
        tool_calls: vec![],
        usage,
        finish_reason: FinishReason::Stop,
        retries: 1,
        retry_events: vec![RetryEvent {
            attempt: 1,
            status: Some(429),
            error: "http".into(),
            delay_ms: 5,
        }],
        ttft_ms: Some(3),
        duration_ms: 9,
        had_timeout: false,
    };
    let v = serde_json::to_value(&resp).unwrap();
    assert_eq!(v["chunks"][1], json!({"kind": "reasoning", "text": "b"}));
    assert_eq!(v["retryEvents"][0]["delayMs"], 5);
    assert_eq!(v["hadTimeout"], false);
    assert_eq!(serde_json::from_value::<ModelResponse>(v).unwrap(), resp);
}

// ---------------------------------------------------------------------------------------
// Config

#[test]
fn config_from_json() {
    let env = |name: &str| (name == "MY_KEY").then(|| "from-env".to_string());
    let c = ProviderConfig::from_json(
        "anthropic",
        Protocol::Anthropic,
        &json!({"apiKeyEnv": "MY_KEY"}),
        &env,
    )
    .unwrap();
    assert_eq!(c.api_key.as_deref(), Some("from-env"));
    assert_eq!(c.base_url, "https://api.anthropic.com");
    assert_eq!(c.timeout_ms, DEFAULT_TIMEOUT_MS);
    assert_eq!(c.max_retries, 2);

    let c = ProviderConfig::from_json(
        "local",
        Protocol::OpenAiCompatible,
        &json!({"apiKey": "k", "baseUrl": "http://localhost:8000/v1/", "timeoutMs": 5000,
                "connectTimeoutMs": 100, "maxRetries": 0, "retryBaseDelayMs": 10,
                "headers": {"HTTP-Referer": "https://example.com"}}),
        &env,
    )
    .unwrap();
    assert_eq!(c.base_url, "http://localhost:8000/v1");
    assert_eq!(
        (
            c.timeout_ms,
            c.connect_timeout_ms,
            c.max_retries,
            c.retry_base_delay_ms
        ),
        (5000, 100, 0, 10)
    );
    assert_eq!(
        c.headers.get("http-referer").map(String::as_str),
        Some("https://example.com")
    );
    let c = ProviderConfig::from_json(
        "o",
        Protocol::OpenAiCompatible,
        &json!({"apiKey": "k"}),
        &env,
    )
    .unwrap();
    assert_eq!(c.base_url, "https://api.openai.com/v1");
}

#[test]
fn config_errors_are_clear() {
    let env = |name: &str| (name == "EMPTY").then(String::new);
    let err = |key: &str, protocol: Protocol, v: Value| {
        ProviderConfig::from_json(key, protocol, &v, &env)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        err("anthropic", Protocol::Anthropic, json!({})),
        "anthropic provider requires apiKey or apiKeyEnv resolving to an environment variable"
    );
    assert_eq!(
        err(
            "anthropic",
            Protocol::Anthropic,
            json!({"apiKeyEnv": "UNSET"})
        ),
        "anthropic provider requires apiKey or apiKeyEnv resolving to an environment variable"
    );
    assert_eq!(
        err(
            "anthropic",
            Protocol::Anthropic,
            json!({"apiKeyEnv": "EMPTY"})
        ),
        "anthropic provider requires apiKey or apiKeyEnv resolving to an environment variable"
    );
    assert_eq!(
        err("openai-compatible", Protocol::OpenAiCompatible, json!({})),
        "openai-compatible provider requires apiKey or apiKeyEnv resolving to an environment variable"
    );
    let cases = [
        (
            json!({"apiKey": "k", "region": "x"}),
            "unknown field 'region'",
        ),
        (json!("k"), "expected a JSON object"),
        (json!({"apiKey": 5}), "apiKey must be a string"),
        (json!({"apiKey": "k", "apiKeyEnv": "X"}), "not both"),
        (
            json!({"apiKey": "k", "baseUrl": "not a url"}),
            "baseUrl 'not a url' is not a valid URL",
        ),
        (
            json!({"apiKey": "k", "baseUrl": "ftp://x"}),
            "must use http or https",
        ),
        (
            json!({"apiKey": "k", "timeoutMs": 0}),
            "timeoutMs must be a positive integer",
        ),
        (
            json!({"apiKey": "k", "timeoutMs": "5s"}),
            "timeoutMs must be a positive integer",
        ),
        (
            json!({"apiKey": "k", "maxRetries": -1}),
            "maxRetries must be an integer",
        ),
        (
            json!({"apiKey": "k", "headers": ["a"]}),
            "headers must be an object",
        ),
        (
            json!({"apiKey": "k", "headers": {"bad header": "v"}}),
            "not a valid HTTP header name",
        ),
        (
            json!({"apiKey": "k", "headers": {"x-a": 1}}),
            "header 'x-a' must have a string value",
        ),
    ];
    for (v, needle) in cases {
        let text = err("anthropic", Protocol::Anthropic, v.clone());
        assert!(text.contains(needle), "{v}: {text}");
        assert!(text.contains("'anthropic'"), "{v}: {text}");
    }
}

// ---------------------------------------------------------------------------------------
// Secrets

#[tokio::test]
async fn api_key_never_leaks() {
    for protocol in BOTH {
        let echo = format!(
            r#"{{"error":{{"type":"authentication_error","message":"Incorrect API key provided: {SECRET}"}}}}"#
        );
        let server =
            TestServer::start(vec![Reply::status(500, &echo), Reply::status(401, &echo)]).await;
        let cfg = config(
            protocol,
            &server,
            json!({"headers": {"X-Gateway-Token": "gw-SECRET-token"}}),
        );
        let debug = format!("{cfg:?}");
        assert!(
            !debug.contains(SECRET) && !debug.contains("gw-SECRET-token"),
            "{debug}"
        );
        assert!(debug.contains("[redacted]"));
        let client = HttpModelClient::new(cfg.clone()).unwrap();
        assert!(!format!("{client:?}").contains(SECRET));

        let mut seen = Vec::new();
        let res = client
            .complete(&simple_request(protocol), &mut |c: &Chunk| {
                seen.push(c.clone())
            })
            .await;
        let err = res.unwrap_err();
        assert_eq!(err.status(), Some(401));
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains(SECRET), "{text}");
            assert!(text.contains("[redacted]"), "{text}");
        }
        // The server did receive the key: redaction is on our side only.
        let reqs = server.requests();
        assert!(
            reqs.iter()
                .all(|r| r.headers.iter().any(|(_, v)| v.contains(SECRET)))
        );

        // A successful response (what the lead journals) carries no key either.
        let server = TestServer::start(vec![Reply::sse(
            &transcript(protocol, "tool_call_split").sse,
        )])
        .await;
        let (_, res) = call(
            &config(protocol, &server, json!({})),
            &simple_request(protocol),
        )
        .await;
        let journaled = serde_json::to_string(&res.unwrap()).unwrap();
        assert!(!journaled.contains(SECRET));
    }
}
