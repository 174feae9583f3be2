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

fn gated_runtime(host: &Arc<TestHost>) -> Gated {
    build_gated(
        plans_spec("acme", always(), never()),
        GateHost::new(Arc::clone(host)),
        Store::in_memory().unwrap(),
        Options::default(),
    )
}

#[tokio::test]
async fn approved_plan_runs_the_dispatcher_only_after_the_decision() {
    let host = dispatching(json!({"entitiesAffected": 1}));
    let built = gated_runtime(&host);
    let mut stream = built
        .runtime
        .query(&flow("demo-plan-1", demo_body()), "t1", None)
        .unwrap();
    let (before, approval_id) = until_approval(&mut stream).await;
    let required = before.last().unwrap().clone();
    let stored = results_of(&before, "storePlan")[0].clone();
    assert_eq!(
        required,
        json!({"type": "approval-required", "data": {
            "id": approval_id, "kind": "plan", "target": "demo-plan-1",
            "payload": stored, "resourceId": "acme", "threadId": "t1-executor",
            "correlationId": "demo-plan-1",
        }})
    );
    // Registered before its event: the store already lists it as pending.
    let info = built.runtime.run(stream.run_id()).unwrap();
    assert_eq!(info.pending_approvals, vec![approval_id.clone()]);
    assert_eq!(info.meta.status, flowai_storage::RunStatus::Suspended);
    let next = stream.next().await.unwrap().unwrap().to_value();
    assert_eq!(
        next,
        json!({"type": "plan-status-change", "data": {"planId": "demo-plan-1", "from": "draft", "to": "pending_approval"}})
    );
    assert_eq!(
        host.dispatch_count(),
        0,
        "nothing dispatched before the decision"
    );

    built
        .runtime
        .respond_to_approval(&approval_id, decision("approve"))
        .await
        .unwrap();
    let rest = collect(&mut stream).await;
    assert_eq!(
        gate_events(&rest),
        [
            "approval-decision:approve",
            "plan-status-change:pending_approval->approved",
            "tool-invocation:executePlan:result",
            "tool-invocation:call_agent:result",
        ]
    );
    assert_eq!(
        rest[0],
        json!({"type": "approval-decision", "data": {"id": approval_id, "outcome": {"outcome": "approve"}}})
    );
    assert_eq!(host.dispatch_count(), 1);
    let result = &results_of(&rest, "executePlan")[0];
    assert_eq!(result["entitiesAffected"], 1);
    assert_eq!(result["resolvedActions"].as_array().unwrap().len(), 2);
    let run = stream.run_id().to_owned();
    let transitions: Vec<(String, String)> = records_of(&built.runtime, &run, "PlanTransitioned")
        .into_iter()
        .map(|(_, d)| {
            (
                d["from"].as_str().unwrap().to_owned(),
                d["to"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        transitions,
        [
            (String::from("draft"), String::from("approved")),
            (String::from("approved"), String::from("executing")),
            (String::from("executing"), String::from("executed")),
        ]
    );
    let info = built.runtime.run(&run).unwrap();
    assert_eq!(info.meta.status, flowai_storage::RunStatus::Completed);
    assert!(info.pending_approvals.is_empty());
}

/// Runs the flow to the plan gate, answers it, and returns the remaining events.
async fn answer_plan_gate(
    built: &Gated,
    prompt: &str,
    answer: flowai_runtime::Decision,
) -> (String, String, Vec<Value>) {
    let mut stream = built.runtime.query(prompt, "t1", None).unwrap();
    let (_, approval_id) = until_approval(&mut stream).await;
    built
        .runtime
        .respond_to_approval(&approval_id, answer)
        .await
        .unwrap();
    let mut rest = collect(&mut stream).await;
    // The gate's own status change follows approval-required (§3.2).
    assert_eq!(
        gate_events(&rest[..1]),
        ["plan-status-change:draft->pending_approval"]
    );
    rest.remove(0);
    (stream.run_id().to_owned(), approval_id, rest)
}

#[tokio::test]
async fn rejected_plan_stays_draft_and_a_retry_asks_again() {
    let host = dispatching(json!({"entitiesAffected": 1}));
    let built = gated_runtime(&host);
    let prompt = script(vec![
        via("planner", vec![store_plan("p1", demo_body())]),
        via("executor", vec![execute_plan("p1"), execute_plan("p1")]),
        via("planner", vec![get_plan("p1")]),
    ]);
    let mut stream = built.runtime.query(&prompt, "t1", None).unwrap();
    let (_, first) = until_approval(&mut stream).await;
    built
        .runtime
        .respond_to_approval(
            &first,
            flowai_runtime::Decision {
                outcome: String::from("reject"),
                feedback: Some(String::from("too expensive")),
                partial: None,
            },
        )
        .await
        .unwrap();
    let between = read_until(&mut stream, |e| e["type"] == "approval-required").await;
    let second = between.last().unwrap()["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(first, second, "a retry gets a fresh approval id");
    assert_eq!(
        gate_events(&between),
        [
            "plan-status-change:draft->pending_approval",
            "approval-decision:reject",
            "plan-status-change:pending_approval->draft",
            "tool-invocation:executePlan:result",
            "tool-invocation:executePlan:call",
            "approval-required:plan",
        ]
    );
    assert_eq!(between[1]["data"]["feedback"], "too expensive");
    assert_eq!(
        results_of(&between, "executePlan"),
        [json!({"error": "Plan p1 rejected: too expensive"})]
    );
    assert_eq!(host.dispatch_count(), 0);
    built
        .runtime
        .respond_to_approval(&second, decision("reject"))
        .await
        .unwrap();
    let rest = collect(&mut stream).await;
    assert_eq!(
        results_of(&rest, "executePlan"),
        [json!({"error": "Plan p1 rejected: Plan rejected"})]
    );
    let plan = &results_of(&rest, "getPlan")[0];
    assert_eq!(plan["status"], "draft");
    assert_eq!(plan["approvedBy"], Value::Null);
    assert_eq!(
        host.dispatch_count(),
        0,
        "a rejected plan is never dispatched"
    );
    assert!(records_of(&built.runtime, stream.run_id(), "PlanTransitioned").is_empty());
}

#[tokio::test]
async fn revised_plan_is_a_success_result_with_the_partial() {
    let host = dispatching(json!({"entitiesAffected": 1}));
    let built = gated_runtime(&host);
    let answer = flowai_runtime::Decision {
        outcome: String::from("revise"),
        feedback: Some(String::from("smaller")),
        partial: Some(json!({"actions": [{"kind": "notify"}]})),
    };
    let (_, approval_id, rest) = answer_plan_gate(&built, &flow("p1", demo_body()), answer).await;
    assert_eq!(
        rest[0],
        json!({"type": "approval-decision", "data": {
            "id": approval_id, "feedback": "smaller",
            "outcome": {"outcome": "revise", "partial": {"actions": [{"kind": "notify"}]}},
        }})
    );
    assert_eq!(
        gate_events(&rest)[..3],
        [
            "approval-decision:revise",
            "plan-status-change:pending_approval->draft",
            "tool-invocation:executePlan:result",
        ]
    );
    assert_eq!(
        results_of(&rest, "executePlan"),
        [
            json!({"rejected": true, "should_revise": true, "plan_id": "p1", "partial": {"actions": [{"kind": "notify"}]}})
        ]
    );
    assert_eq!(host.dispatch_count(), 0);

    let (_, approval_id, rest) =
        answer_plan_gate(&built, &flow("p2", demo_body()), decision("revise")).await;
    assert_eq!(
        rest[0],
        json!({"type": "approval-decision", "data": {"id": approval_id, "outcome": {"outcome": "revise", "partial": null}}})
    );
    assert_eq!(
        results_of(&rest, "executePlan"),
        [json!({"rejected": true, "should_revise": true, "plan_id": "p2", "partial": null})]
    );
}
