//! Provider-backed runs through the driver against a real HTTP server on 127.0.0.1:
//! streamed text, the tool loop, summaries, secrets kept out of the store, replay with
//! the server gone, and a request in flight at a stop sent again on resume.
#![allow(clippy::unwrap_used)]

mod support;
mod support_http;

use std::time::Duration;

use flowai_runtime::InterpreterChoice;
use flowai_storage::{RunStatus, Store};
use serde_json::{Value, json};
use support::*;
use support_http::{Reply, TestServer};

const SECRET: &str = "sk-ant-test-KEY-7f3a9c1e5b2d4f60";

fn transcript(name: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/providers/anthropic")
            .join(name),
    )
    .unwrap()
}

fn live_spec(base_url: &str) -> Value {
    let mut wire = spec("acme", vec![agent("weather", "specialist", &[])]);
    wire["providers"] = json!({"anthropic": {"apiKey": SECRET, "baseUrl": base_url, "maxRetries": 0, "timeoutMs": 30000}});
    wire
}

fn weather_tool() -> Vec<flowai_runtime::HostToolDecl> {
    vec![host_tool(
        "weather",
        "get_weather",
        json!({"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}),
        json!({"kind": "never"}),
    )]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_loop_is_journaled_and_replays_without_the_provider() {
    let server = TestServer::start(vec![
        Reply::sse(&transcript("tool_call_split.sse")),
        Reply::sse(&transcript("text.sse")),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.redb");
    let store = Store::open(&path, Default::default()).unwrap();
    let host = TestHost::new().handler("get_weather", |args| {
        Ok(json!({"forecast": "sunny", "at": args["location"]}))
    });
    let built = build(
        live_spec(&server.base_url()),
        weather_tool(),
        host.clone(),
        store.clone(),
        InterpreterChoice::Anthropic,
    )
    .unwrap();
    let mut stream = built
        .runtime
        .run_specialist("weather", "What is the weather in SF?", Some("t"), None)
        .unwrap();
    let live = collect(&mut stream).await;
    let run_id = stream.run_id().to_owned();
    assert_eq!(
        types(&live),
        [
            "tool-agent:call",
            "step-start",
            "text",
            "text",
            "data-cost-summary",
            "data-latency-summary",
            "finish",
            "tool-invocation:call",
            "tool-invocation:result",
            "step-start",
            "text",
            "text",
            "text",
            "data-cost-summary",
            "data-latency-summary",
            "finish",
            "tool-agent:result"
        ]
    );
    assert_eq!(live[6]["finishReason"], "tool-calls");
    assert_eq!(live[6]["usage"]["totalTokens"], 561);
    assert_eq!(live[4]["data"]["totalTokens"], 561);
    assert_eq!(live[5]["data"]["retryCount"], 0);
    assert_eq!(
        live[8]["result"],
        json!({"forecast": "sunny", "at": "San Francisco, CA"})
    );
    assert_eq!(host.tool_call_count(), 1);

    // The second request carried the tool result back to the model.
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    let second = requests[1].json();
    assert!(second.to_string().contains("sunny"), "{second}");

    // Replay and verify with the provider gone: nothing is sent again.
    drop(server);
    assert_eq!(
        event_values(&built.runtime.replay_events(&run_id).unwrap()),
        live
    );
    built.runtime.verify(&run_id).await.unwrap();
    built.runtime.close().unwrap();
    store.close().unwrap();

    // The key never reaches the journal or the recorded spec.
    let bytes = std::fs::read(&path).unwrap();
    let needle = SECRET.as_bytes();
    assert!(
        !bytes.windows(needle.len()).any(|w| w == needle),
        "API key found in the store file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_at_a_stop_is_sent_again_on_resume() {
    let silent = TestServer::start(vec![Reply::Silent(Duration::from_secs(60))]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inflight.redb");
    let store = Store::open(&path, Default::default()).unwrap();
    let built = build(
        live_spec(&silent.base_url()),
        weather_tool(),
        TestHost::new(),
        store.clone(),
        InterpreterChoice::Anthropic,
    )
    .unwrap();
    let mut stream = built
        .runtime
        .run_specialist("weather", "Just say hello", Some("t"), None)
        .unwrap();
    let run_id = stream.run_id().to_owned();
    // step-start is shown before the response exists.
    let first = stream.next().await.unwrap().unwrap().to_value();
    assert_eq!(first["type"], "tool-agent");
    let second = stream.next().await.unwrap().unwrap().to_value();
    assert_eq!(second["type"], "step-start");
    for _ in 0..500 {
        if !silent.requests().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(silent.requests().len(), 1);
    built.runtime.close().unwrap();
    assert_eq!(
        built.runtime.run(&run_id).unwrap().meta.status,
        RunStatus::Interrupted
    );
    let kinds = record_kinds(&built.runtime, &run_id);
    assert_eq!(kinds.last(), Some(&"ModelRequested"), "{kinds:?}");

    // A new runtime (new server address, so the spec changed) resumes and asks again.
    let server = TestServer::start(vec![Reply::sse(&transcript("text.sse"))]).await;
    let resumed = build(
        live_spec(&server.base_url()),
        weather_tool(),
        TestHost::new(),
        store,
        InterpreterChoice::Anthropic,
    )
    .unwrap();
    let err = resumed.runtime.resume(&run_id, false).err().unwrap();
    assert!(
        err.to_string()
            .contains("first difference at runtimeSpec.providers"),
        "{err}"
    );
    let mut stream = resumed.runtime.resume(&run_id, true).unwrap();
    let events = collect(&mut stream).await;
    // The re-sent request is a new step for the resumed stream's consumer.
    assert_eq!(
        types(&events),
        [
            "step-start",
            "text",
            "text",
            "text",
            "data-cost-summary",
            "data-latency-summary",
            "finish",
            "tool-agent:result"
        ]
    );
    assert_eq!(server.requests().len(), 1);
    let kinds = record_kinds(&resumed.runtime, &run_id);
    assert_eq!(kinds.iter().filter(|k| **k == "ModelRequested").count(), 1);
    assert_eq!(kinds.iter().filter(|k| **k == "ModelResponded").count(), 1);
    assert_eq!(
        resumed.runtime.run(&run_id).unwrap().meta.status,
        RunStatus::Completed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_failure_is_an_error_event_naming_the_provider() {
    let server = TestServer::start(vec![Reply::status(
        400,
        r#"{"type":"error","error":{"type":"invalid_request_error","message":"bad tools"}}"#,
    )])
    .await;
    let built = build(
        live_spec(&server.base_url()),
        weather_tool(),
        TestHost::new(),
        Store::in_memory().unwrap(),
        InterpreterChoice::Anthropic,
    )
    .unwrap();
    let events = collect(
        &mut built
            .runtime
            .run_specialist("weather", "hi", None, None)
            .unwrap(),
    )
    .await;
    assert_eq!(
        types(&events),
        ["tool-agent:call", "step-start", "error", "error"]
    );
    let message = events[2]["error"]["message"].as_str().unwrap();
    assert!(message.contains("anthropic"), "{message}");
    assert!(!message.contains(SECRET));
    assert!(
        events[3]["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("agent failed: ")
    );
}

#[tokio::test]
async fn construction_names_the_agent_model_and_provider_of_a_missing_key() {
    let mut wire = spec("acme", vec![agent("weather", "specialist", &[])]);
    wire["providers"] = json!({"anthropic": {"apiKeyEnv": "FLOWAI_TEST_UNSET_KEY"}});
    let err = build(
        wire.clone(),
        vec![],
        TestHost::new(),
        Store::in_memory().unwrap(),
        InterpreterChoice::Anthropic,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("agent 'weather'"), "{err}");
    assert!(err.contains("model 'claude-sonnet-4-6'"), "{err}");
    assert!(err.contains("provider 'anthropic'"), "{err}");
    assert!(
        err.contains(
            "anthropic provider requires apiKey or apiKeyEnv resolving to an environment variable"
        ),
        "{err}"
    );
    // Deterministic interpreters resolve no key at all.
    build(
        wire.clone(),
        vec![],
        TestHost::new(),
        Store::in_memory().unwrap(),
        InterpreterChoice::Scripted,
    )
    .unwrap();
    // `live` routes each agent by its model: a gpt- model needs the openai-compatible provider.
    wire["agents"][0]["model"] = json!({"id": "gpt-4o", "provider": null});
    let err = build(
        wire,
        vec![],
        TestHost::new(),
        Store::in_memory().unwrap(),
        InterpreterChoice::Live,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("agent 'weather' references provider 'openai-compatible' for model 'gpt-4o'"),
        "{err}"
    );
}
