//! The API key never reaches tracing output, even at TRACE level with the HTTP stack's
//! own logging. A separate test binary because it installs a global subscriber (a
//! thread-scoped one races with callsite-interest caching of concurrent tests).

#![allow(clippy::unwrap_used)]

mod support_http;

use std::io::Write;
use std::sync::{Arc, Mutex};

use flowai_runtime::providers::*;
use serde_json::json;
use support_http::{Reply, TestServer};

const SECRET: &str = "sk-test-SECRET-5d41402abc4b2a76b971";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn api_key_never_reaches_tracing() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    for protocol in [Protocol::Anthropic, Protocol::OpenAiCompatible] {
        let echo = format!(r#"{{"error":{{"message":"Incorrect API key provided: {SECRET}"}}}}"#);
        let server =
            TestServer::start(vec![Reply::status(500, &echo), Reply::status(401, &echo)]).await;
        let base = match protocol {
            Protocol::Anthropic => server.base_url(),
            Protocol::OpenAiCompatible => format!("{}/v1", server.base_url()),
        };
        let cfg = ProviderConfig::from_json(
            protocol.as_str(),
            protocol,
            &json!({"apiKey": SECRET, "baseUrl": base, "retryBaseDelayMs": 1,
                    "headers": {"X-Gateway-Token": "gw-SECRET-token"}}),
            &|_| None,
        )
        .unwrap();
        tracing::info!(config = ?cfg, "configured");
        let client = client_for(&cfg).unwrap();
        let req = ModelRequest {
            model: "m".into(),
            system: String::new(),
            messages: vec![ChatMessage::User { text: "hi".into() }],
            tools: vec![],
            max_tokens: 8,
        };
        let err = client
            .complete(&req, &mut |_: &Chunk| {})
            .await
            .unwrap_err();
        tracing::error!(error = %err, "call failed");
        assert_eq!(err.status(), Some(401));
        assert_eq!(server.requests().len(), 2);
    }

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("retrying"), "retries are traced: {logs}");
    // The echoed key in the 500 body was logged, redacted.
    assert!(logs.contains("[redacted]"), "{logs}");
    assert!(
        logs.contains("hyper"),
        "HTTP stack logging was captured: {logs}"
    );
    assert!(!logs.contains(SECRET), "key in tracing output: {logs}");
    assert!(
        !logs.contains("gw-SECRET-token"),
        "header value in tracing output"
    );
}
