//! Thread memory, references (tenant isolation, TTL, sweep) and a long run read by a
//! slow consumer.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use flowai_runtime::InterpreterChoice;
use flowai_storage::Store;
use serde_json::{Value, json};
use support::*;

fn specialist_spec(tenant: &str, stateful: bool) -> Value {
    let mut solo = agent("solo", "specialist", &[]);
    solo["stateful"] = json!(stateful);
    spec(tenant, vec![solo])
}

#[tokio::test]
async fn stateful_agents_load_completed_runs_of_their_thread() {
    let store = Store::in_memory().unwrap();
    let built = build(
        specialist_spec("acme", true),
        vec![],
        TestHost::new(),
        store.clone(),
        InterpreterChoice::Scripted,
    )
    .unwrap();
    let rt = &built.runtime;
    collect(
        &mut rt
            .run_specialist("solo", "first words", Some("t1"), None)
            .unwrap(),
    )
    .await;
    collect(
        &mut rt
            .run_specialist("solo", "elsewhere", Some("t2"), None)
            .unwrap(),
    )
    .await;
    let mut third = rt
        .run_specialist("solo", "second words", Some("t1"), None)
        .unwrap();
    collect(&mut third).await;
    let journal = rt.journal(third.run_id(), 0).unwrap();
    let loaded = journal.iter().find(|e| e.kind == "MemoryLoaded").unwrap();
    let texts: Vec<&str> = loaded.data["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        ["first words", "first words"],
        "user prompt and echoed reply of t1 only"
    );

    // A stateless agent gets no memory record at all.
    let built = build(
        specialist_spec("acme", false),
        vec![],
        TestHost::new(),
        store,
        InterpreterChoice::Scripted,
    )
    .unwrap();
    let mut run = built
        .runtime
        .run_specialist("solo", "x", Some("t1"), None)
        .unwrap();
    collect(&mut run).await;
    assert!(
        built
            .runtime
            .journal(run.run_id(), 0)
            .unwrap()
            .iter()
            .all(|e| e.kind != "MemoryLoaded")
    );
}

/// A stateful agent's memory holds each tool call of a completed run with its arguments
/// and result; a stateless agent's runs add nothing to the memory table.
#[tokio::test]
async fn thread_memory_keeps_the_tool_calls_of_stateful_agents_only() {
    let store = Store::in_memory().unwrap();
    let search = host_tool(
        "solo",
        "search",
        json!({"type": "object", "properties": {"q": {"type": "string"}}}),
        json!({"kind": "never"}),
    );
    let script = json!({"script": [
        {"tool": "search", "args": {"q": "first"}},
        {"tool": "search", "args": {"q": "second"}},
    ]})
    .to_string();
    for stateful in [true, false] {
        let mut solo = agent("solo", "specialist", &[]);
        solo["stateful"] = json!(stateful);
        let host =
            TestHost::new().handler("search", |args| Ok(json!({"hits": [args["q"].clone()]})));
        let built = build(
            spec(if stateful { "acme" } else { "bolt" }, vec![solo]),
            vec![search.clone()],
            host,
            store.clone(),
            InterpreterChoice::Scripted,
        )
        .unwrap();
        collect(
            &mut built
                .runtime
                .run_specialist("solo", &script, Some("t1"), None)
                .unwrap(),
        )
        .await;
    }
    let kept: Vec<Value> = store
        .memory("acme", "t1", "solo")
        .unwrap()
        .iter()
        .map(|text| serde_json::from_str(text).unwrap())
        .collect();
    let tools: Vec<(&Value, &Value)> = kept
        .iter()
        .filter(|entry| entry["role"] == "tool")
        .map(|entry| (&entry["args"], &entry["result"]))
        .collect();
    assert_eq!(
        tools,
        [
            (&json!({"q": "first"}), &json!({"hits": ["first"]})),
            (&json!({"q": "second"}), &json!({"hits": ["second"]})),
        ]
    );
    assert_eq!(kept.first().unwrap()["role"], "user");
    assert_eq!(kept.last().unwrap()["role"], "assistant");
    assert!(store.memory("bolt", "t1", "solo").unwrap().is_empty());
}

#[tokio::test]
async fn references_are_tenant_scoped_validated_and_expire() {
    let store = Store::in_memory().unwrap();
    let mut executor = agent("exec", "executor", &[]);
    executor["stateful"] = json!(false);
    let acme = build(
        spec("acme", vec![executor.clone()]),
        vec![],
        TestHost::new(),
        store.clone(),
        InterpreterChoice::Scripted,
    )
    .unwrap();
    let other = build(
        spec("globex", vec![executor]),
        vec![],
        TestHost::new(),
        store.clone(),
        InterpreterChoice::Scripted,
    )
    .unwrap();
    let value = json!({"skus": ["a", "b"]});
    let created = acme
        .runtime
        .create_reference("ProductSet", &value, &json!({"count": 2}))
        .await
        .unwrap();
    assert_eq!(created.id.len(), 32);
    let again = acme
        .runtime
        .create_reference("ProductSet", &value, &json!({"count": 2}))
        .await
        .unwrap();
    assert_eq!(again.id, created.id, "content addressed");
    assert_eq!(
        acme.runtime
            .resolve_reference("ProductSet", &created.id)
            .unwrap(),
        value
    );
    assert_eq!(
        acme.runtime
            .reference_glimpse("ProductSet", &created.id)
            .unwrap(),
        json!({"count": 2})
    );
    let missing = format!("reference not found: kind=ProductSet id={}", created.id);
    assert_eq!(
        other
            .runtime
            .resolve_reference("ProductSet", &created.id)
            .unwrap_err()
            .to_string(),
        missing
    );
    assert_eq!(
        acme.runtime
            .create_reference("Nope", &value, &json!({}))
            .await
            .unwrap_err()
            .to_string(),
        "unknown reference kind: Nope"
    );
    let bad = acme
        .runtime
        .create_reference("ProductSet", &json!([1]), &json!({}))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        bad.starts_with("schema validation failed for kind 'ProductSet': ["),
        "{bad}"
    );

    // resolveRef / glimpseRef through a scripted executor.
    let script = json!({"script": [
        {"tool": "resolveRef", "args": {"kind": "ProductSet", "id": created.id}},
        {"tool": "glimpseRef", "args": {"kind": "ProductSet", "id": created.id}},
        {"tool": "resolveRef", "args": {"kind": "Other", "id": "x"}},
    ]});
    let events = collect(
        &mut acme
            .runtime
            .run_specialist("exec", &script.to_string(), None, None)
            .unwrap(),
    )
    .await;
    let results: Vec<&Value> = events
        .iter()
        .filter(|e| e["state"] == "result" && e["type"] == "tool-invocation")
        .map(|e| &e["result"])
        .collect();
    // executors are not specialists: run_specialist refuses them.
    assert!(results.is_empty());
    assert_eq!(
        events[0]["error"]["message"],
        "agent 'exec' is not a specialist"
    );

    // TTL: expired references are not found, then swept.
    acme.clock.advance(60_001);
    assert_eq!(
        acme.runtime
            .resolve_reference("ProductSet", &created.id)
            .unwrap_err()
            .to_string(),
        missing
    );
    assert_eq!(acme.runtime.gc().await.unwrap(), 1);
    assert_eq!(acme.runtime.gc().await.unwrap(), 0);
}

#[tokio::test]
async fn reference_tools_in_a_run() {
    let mut solo = agent("solo", "specialist", &[]);
    solo["toolkits"] = json!(["references"]);
    let mut wire = spec("acme", vec![solo]);
    wire["toolkits"] = json!([{"id": "references", "config": null}]);
    let built = build(
        wire,
        vec![],
        TestHost::new(),
        Store::in_memory().unwrap(),
        InterpreterChoice::Scripted,
    )
    .unwrap();
    let created = built
        .runtime
        .create_reference("ProductSet", &json!({"a": 1}), &json!({"count": 1}))
        .await
        .unwrap();
    let script = json!({"script": [
        {"tool": "resolveRef", "args": {"kind": "ProductSet", "id": created.id}},
        {"tool": "glimpseRef", "args": {"kind": "ProductSet", "id": created.id}},
        {"tool": "resolveRef", "args": {"kind": "Other", "id": "x"}},
        {"tool": "glimpseRef", "args": {"kind": "ProductSet", "id": "nope"}},
    ]});
    let events = collect(
        &mut built
            .runtime
            .run_specialist("solo", &script.to_string(), None, None)
            .unwrap(),
    )
    .await;
    let results: Vec<Value> = events
        .iter()
        .filter(|e| e["type"] == "tool-invocation" && e["state"] == "result")
        .map(|e| e["result"].clone())
        .collect();
    assert_eq!(
        results,
        vec![
            json!({"kind": "ProductSet", "value": {"a": 1}, "glimpse": {"count": 1}}),
            json!({"kind": "ProductSet", "glimpse": {"count": 1}}),
            json!({"error": "unknown reference kind: Other"}),
            json!({"error": "reference not found: kind=ProductSet id=nope"}),
        ]
    );
}

#[tokio::test]
async fn the_periodic_sweep_follows_the_injected_clock() {
    let built = build(
        specialist_spec("acme", false),
        vec![],
        TestHost::new(),
        Store::in_memory().unwrap(),
        InterpreterChoice::Noop,
    )
    .unwrap();
    let rt = &built.runtime;
    rt.set_sweep_interval_ms(1_000);
    let created = rt
        .create_reference("ProductSet", &json!({"a": 1}), &json!({}))
        .await
        .unwrap();
    built.clock.advance(60_001);
    // Starting a run after the interval sweeps in the background.
    collect(&mut rt.run_specialist("solo", "x", None, None).unwrap()).await;
    let mut swept = false;
    for _ in 0..200 {
        if rt.gc().await.unwrap() == 0
            && rt
                .store()
                .reference("acme", "ProductSet", &created.id, 0)
                .unwrap()
                .is_none()
        {
            swept = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(swept, "the expired reference was removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_gets_every_event_of_a_long_run() {
    const CALLS: usize = 10_000;
    let host = TestHost::new().handler("step", |args| Ok(json!({"n": args["n"].clone()})));
    let built = build(
        specialist_spec("acme", false),
        vec![host_tool(
            "solo",
            "step",
            json!({"type": "object"}),
            json!({"kind": "never"}),
        )],
        host.clone(),
        Store::in_memory().unwrap(),
        InterpreterChoice::Scripted,
    )
    .unwrap();
    let script: Vec<Value> = (0..CALLS)
        .map(|n| json!({"tool": "step", "args": {"n": n}}))
        .collect();
    let mut stream = built
        .runtime
        .run_specialist("solo", &json!({"script": script}).to_string(), None, None)
        .unwrap();
    let mut count = 0usize;
    let mut last = Value::Null;
    let mut results = 0usize;
    while let Some(event) = stream.next().await {
        let event = event.unwrap().to_value();
        if event["type"] == "tool-invocation" && event["state"] == "result" {
            assert_eq!(event["result"]["n"], json!(results), "in order");
            results += 1;
        }
        count += 1;
        if count.is_multiple_of(1000) {
            // The consumer is slow; the run waits for it instead of dropping events.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        last = event;
    }
    assert_eq!(results, CALLS);
    // tool-agent call, step-start, 3 events per call, finish, tool-agent result
    assert_eq!(count, 2 + 3 * CALLS + 2);
    assert_eq!(last["type"], "tool-agent");
    assert_eq!(host.tool_call_count(), CALLS);
}
