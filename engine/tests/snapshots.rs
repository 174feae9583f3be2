//! Stream snapshots of named scenarios. One test function runs them in order so the
//! deterministic ids (SequentialIds) are the same on every run.
#![allow(clippy::unwrap_used)]

mod support;

use flowai_runtime::InterpreterChoice;
use flowai_storage::Store;
use serde_json::json;
use support::*;

#[tokio::test]
async fn scenario_streams() {
    // Specialist with a host tool.
    let host = TestHost::new().handler("search_products", |args| {
        Ok(json!({"products": [{"sku": "p-1", "query": args["query"].clone()}], "displaySummary": "1 product"}))
    });
    let built = build(
        spec("acme", vec![agent("catalog", "specialist", &[])]),
        vec![host_tool(
            "catalog",
            "search_products",
            json!({"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}),
            json!({"kind": "never"}),
        )],
        host,
        Store::in_memory().unwrap(),
        InterpreterChoice::Scripted,
    )
    .unwrap();
    let prompt = json!({"tool": "search_products", "args": {"query": "lamps"}}).to_string();
    let events = collect(
        &mut built
            .runtime
            .run_specialist("catalog", &prompt, Some("t1"), None)
            .unwrap(),
    )
    .await;
    insta::assert_json_snapshot!("specialist_host_tool", events);

    // Coordinator routing to two agents.
    let built = build(
        spec(
            "acme",
            vec![
                agent("coordinator", "coordinator", &["researcher", "writer"]),
                agent("researcher", "specialist", &[]),
                agent("writer", "specialist", &[]),
            ],
        ),
        vec![],
        TestHost::new(),
        Store::in_memory().unwrap(),
        InterpreterChoice::Scripted,
    )
    .unwrap();
    let prompt = json!({"script": [
        {"tool": "call_agent", "args": {"agent": "researcher", "prompt": "find facts"}},
        {"tool": "call_agent", "args": {"agent": "writer", "prompt": "write it up"}},
    ]})
    .to_string();
    let events = collect(&mut built.runtime.query(&prompt, "t2", None).unwrap()).await;
    insta::assert_json_snapshot!("coordinator_two_agents", events);

    // A reference created by the host, then resolved and glimpsed in a run.
    let mut reader = agent("reader", "specialist", &[]);
    reader["toolkits"] = json!(["references"]);
    let mut wire = spec("acme", vec![reader]);
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
        .create_reference(
            "ProductSet",
            &json!({"skus": ["p-1", "p-2"]}),
            &json!({"count": 2}),
        )
        .await
        .unwrap();
    let prompt = json!({"script": [
        {"tool": "resolveRef", "args": {"kind": "ProductSet", "id": created.id}},
        {"tool": "glimpseRef", "args": {"kind": "ProductSet", "id": created.id}},
    ]})
    .to_string();
    let events = collect(
        &mut built
            .runtime
            .run_specialist("reader", &prompt, Some("t3"), None)
            .unwrap(),
    )
    .await;
    insta::assert_json_snapshot!("references", events);
}
