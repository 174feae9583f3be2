//! Plans through the scripted coordinator → planner → executor flow (API.md §4.3,
//! §5.2–§5.6): auto-approval, the plan gate, reject/revise, the dispatcher envelope,
//! reference hydration and storePlan errors.

#[path = "support/gates.rs"]
mod gates;
mod support;

use std::sync::Arc;

use flowai_storage::Store;
use gates::*;
use serde_json::{Value, json};
use support::*;

fn flow(plan_id: &str, body: Value) -> String {
    script(vec![
        via("planner", vec![store_plan(plan_id, body)]),
        via("executor", vec![execute_plan(plan_id)]),
    ])
}

fn dispatching(result: Value) -> Arc<TestHost> {
    TestHost::new().dispatcher(move |_, _| Ok(result.clone()))
}

#[tokio::test]
async fn auto_approved_plan_executes_once_in_plan_order() {
    let host = dispatching(json!({"entitiesAffected": 2, "summary": "done", "details": {"n": 1}}));
    let built = build_gated(
        plans_spec("acme", never(), never()),
        GateHost::new(host.clone()),
        Store::in_memory().unwrap(),
        Options::default(),
    );
    let mut stream = built
        .runtime
        .query(&flow("demo-plan-1", demo_body()), "t1", None)
        .unwrap();
    let events = collect(&mut stream).await;

    assert_eq!(
        gate_events(&events),
        [
            "tool-invocation:call_agent:call",
            "tool-invocation:storePlan:call",
            "tool-invocation:storePlan:result",
            "tool-invocation:call_agent:result",
            "tool-invocation:call_agent:call",
            "tool-invocation:executePlan:call",
            "plan-status-change:draft->approved",
            "tool-invocation:executePlan:result",
            "tool-invocation:call_agent:result",
        ]
    );
    let stored = &results_of(&events, "storePlan")[0];
    assert_eq!(
        stored,
        &json!({
            "id": "demo-plan-1", "owner": "acme",
            "actions": [
                {"kind": "price_change", "payload": {"product_id": "p-1", "new_price": 9.99}, "references": []},
                {"kind": "notify", "payload": {"channel": "email"}, "references": []},
            ],
            "status": "draft", "description": null, "context": {"rationale": "test"},
            "createdAt": "2025-11-25T00:00:00.000Z", "approvedAt": null, "startedAt": null,
            "completedAt": null, "failedAt": null, "approvedBy": null, "outcome": null,
        })
    );

    let dispatches = host.dispatches.lock().unwrap().clone();
    assert_eq!(dispatches.len(), 1);
    assert_eq!(dispatches[0].0, stored["actions"]);
    assert_eq!(dispatches[0].1, json!({}));
    assert_eq!(dispatches[0].3, 1);

    let resolved = json!([
        {"type": "price_change", "payload": {"product_id": "p-1", "new_price": 9.99}},
        {"type": "notify", "payload": {"channel": "email"}},
    ]);
    assert_eq!(
        results_of(&events, "executePlan"),
        [json!({
            "entitiesAffected": 2, "summary": "done",
            "details": {"n": 1, "resolvedActions": resolved},
            "resolvedActions": resolved,
        })]
    );
    // The sub-agent's response is the JSON text of its tool result (§4.3).
    let executor = &results_of(&events, "call_agent")[1];
    assert_eq!(executor["agent"], "executor");
    let response: Value = serde_json::from_str(executor["response"].as_str().unwrap()).unwrap();
    assert_eq!(response["entitiesAffected"], 2);

    // The plan as stored after execution (§5.4), through getPlan in a later run.
    let mut later = built
        .runtime
        .query(
            &script(vec![via(
                "planner",
                vec![get_plan("demo-plan-1"), get_plan("nope")],
            )]),
            "t2",
            None,
        )
        .unwrap();
    let got = results_of(&collect(&mut later).await, "getPlan");
    assert_eq!(got[1], Value::Null, "unknown plan is a null success");
    let plan = &got[0];
    assert_eq!(plan["status"], "executed");
    assert_eq!(plan["approvedBy"], "runtime");
    assert_eq!(plan["actions"], stored["actions"]);
    assert_eq!(
        plan["outcome"],
        json!({"state": "executed", "entitiesAffected": 2, "summary": "done", "details": {"n": 1}})
    );
    for key in ["approvedAt", "startedAt", "completedAt"] {
        assert_eq!(plan[key], "2025-11-25T00:00:00.000Z", "{key}");
    }
    assert_eq!(plan["failedAt"], Value::Null);
    let mut keys: Vec<&str> = plan
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "actions",
            "approvedAt",
            "approvedBy",
            "completedAt",
            "context",
            "createdAt",
            "description",
            "failedAt",
            "id",
            "outcome",
            "owner",
            "startedAt",
            "status"
        ],
        "exactly the §5.4 keys"
    );
}

#[tokio::test]
async fn dispatcher_none_and_non_object_details_shape_the_result() {
    for (returned, details) in [
        (
            Value::Null,
            json!({"resolvedActions": [{"type": "notify", "payload": {"channel": "email"}}]}),
        ),
        (
            json!({"entitiesAffected": 1, "details": [1, 2]}),
            json!({"result": [1, 2], "resolvedActions": [{"type": "notify", "payload": {"channel": "email"}}]}),
        ),
    ] {
        let host = dispatching(returned.clone());
        let built = build_gated(
            plans_spec("acme", never(), never()),
            GateHost::new(host),
            Store::in_memory().unwrap(),
            Options::default(),
        );
        let body = json!({"actions": [{"kind": "notify", "channel": "email"}]});
        let events = collect(&mut built.runtime.query(&flow("p", body), "t", None).unwrap()).await;
        let result = &results_of(&events, "executePlan")[0];
        assert_eq!(result["details"], details, "dispatcher returned {returned}");
        assert_eq!(
            result["entitiesAffected"],
            returned
                .get("entitiesAffected")
                .cloned()
                .unwrap_or(json!(0))
        );
        assert_eq!(result["summary"], Value::Null);
    }
}

#[tokio::test]
async fn no_dispatcher_is_a_no_op_with_an_empty_result() {
    let host = TestHost::new();
    let built = build_gated(
        plans_spec("acme", never(), never()),
        GateHost::new(host.clone()),
        Store::in_memory().unwrap(),
        Options::default(),
    );
    let body = json!({"actions": [{"kind": "notify"}]});
    let events = collect(&mut built.runtime.query(&flow("p", body), "t", None).unwrap()).await;
    assert_eq!(
        results_of(&events, "executePlan"),
        [json!({
            "entitiesAffected": 0, "summary": null,
            "details": {"resolvedActions": [{"type": "notify", "payload": {}}]},
            "resolvedActions": [{"type": "notify", "payload": {}}],
        })]
    );
    assert_eq!(host.dispatch_count(), 0);
}
