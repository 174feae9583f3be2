//! Plans through the scripted coordinator → planner → executor flow (API.md §4.3,
//! §5.2–§5.6): auto-approval, the plan gate, reject/revise, the dispatcher envelope,
//! reference hydration and storePlan errors.
#![allow(clippy::unwrap_used)]

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
    built.runtime.verify(stream.run_id()).await.unwrap();
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
    built.runtime.verify(stream.run_id()).await.unwrap();
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

/// Runs an auto-approved flow for `body` and returns (run id, events).
async fn auto_flow(built: &Gated, plan_id: &str, body: Value) -> (String, Vec<Value>) {
    let mut stream = built
        .runtime
        .query(&flow(plan_id, body), "t", None)
        .unwrap();
    let events = collect(&mut stream).await;
    // Every finished run re-drives to the same commands from its journal.
    built.runtime.verify(stream.run_id()).await.unwrap();
    (stream.run_id().to_owned(), events)
}

fn auto_runtime(host: &Arc<TestHost>) -> Gated {
    build_gated(
        plans_spec("acme", never(), never()),
        GateHost::new(Arc::clone(host)),
        Store::in_memory().unwrap(),
        Options::default(),
    )
}

#[tokio::test]
async fn dispatcher_envelope_errors_fail_the_plan() {
    let cases = [
        (
            Ok(json!(3)),
            "action_dispatcher must return None or an object with required field `entitiesAffected`, optional `summary`, and optional `details`",
        ),
        (
            Ok(json!({"entitiesAffected": 1, "rows": []})),
            "action_dispatcher returned unexpected field `rows`; put domain-specific data under `details`",
        ),
        (
            Ok(json!({"summary": "x"})),
            "action_dispatcher must return None or an object with required field `entitiesAffected` as a non-negative integer",
        ),
        (
            Ok(json!({"entitiesAffected": -2})),
            "action_dispatcher field `entitiesAffected` must be a non-negative integer",
        ),
        (
            Ok(json!({"entitiesAffected": 1.5})),
            "action_dispatcher field `entitiesAffected` must be a non-negative integer",
        ),
        (
            Ok(json!({"entitiesAffected": 1, "summary": ["x"]})),
            "action_dispatcher field `summary` must be a string or null",
        ),
        (
            Err(String::from("RuntimeError: warehouse offline")),
            "RuntimeError: warehouse offline",
        ),
    ];
    for (returned, message) in cases {
        let host = TestHost::new().dispatcher(move |_, _| returned.clone());
        let built = auto_runtime(&host);
        let (run, events) = auto_flow(&built, "p", demo_body()).await;
        assert_eq!(
            results_of(&events, "executePlan"),
            [json!({"error": format!("Dispatch failed: inner dispatcher failed: {message}")})]
        );
        assert_eq!(host.dispatch_count(), 1);
        let transitions = records_of(&built.runtime, &run, "PlanTransitioned");
        let (_, last) = transitions.last().unwrap();
        assert_eq!(
            (last["from"].as_str(), last["to"].as_str()),
            (Some("executing"), Some("failed"))
        );
        let plan = &last["plan"];
        assert_eq!(plan["status"], "failed");
        assert_eq!(plan["failedAt"], "2025-11-25T00:00:00.000Z");
        assert_eq!(plan["completedAt"], Value::Null);
        assert_eq!(
            plan["outcome"],
            json!({"state": "failed", "message": format!("inner dispatcher failed: {message}"), "code": null, "details": null})
        );
        // Only the auto-approval emits a status change (§3.2: none for failed).
        assert_eq!(
            status_changes(&events),
            [(String::from("draft"), String::from("approved"))]
        );
    }
}

#[tokio::test]
async fn references_are_hydrated_once_each_and_passed_by_value() {
    let host = dispatching(json!({"entitiesAffected": 3}));
    let built = auto_runtime(&host);
    let a = built
        .runtime
        .create_reference(
            "ProductSet",
            &json!({"ids": ["p-1", "p-2"]}),
            &json!({"n": 2}),
        )
        .await
        .unwrap();
    let b = built
        .runtime
        .create_reference("ProductSet", &json!({"ids": ["p-3"]}), &json!({}))
        .await
        .unwrap();
    let reference = |r: &flowai_runtime::CreatedRef| json!({"kind": r.kind, "id": r.id});
    let body = json!({"actions": [
        {"kind": "reprice", "pct": 5, "references": [reference(&a), reference(&b)]},
        {"kind": "notify", "references": [reference(&a)]},
    ]});
    let (run, events) = auto_flow(&built, "p", body).await;
    let dispatches = host.dispatches.lock().unwrap().clone();
    assert_eq!(dispatches.len(), 1);
    assert_eq!(
        dispatches[0].1,
        json!({"ProductSet": {a.id.clone(): {"ids": ["p-1", "p-2"]}, b.id.clone(): {"ids": ["p-3"]}}})
    );
    assert_eq!(
        dispatches[0].0[0]["references"],
        json!([reference(&a), reference(&b)])
    );
    let result = &results_of(&events, "executePlan")[0];
    assert_eq!(
        result["resolvedActions"],
        json!([{"type": "reprice", "payload": {"pct": 5}}, {"type": "notify", "payload": {}}])
    );
    let hydrated = records_of(&built.runtime, &run, "RefsHydrated");
    assert_eq!(hydrated.len(), 1);
}

#[tokio::test]
async fn a_missing_reference_fails_the_plan_before_dispatch() {
    let host = dispatching(json!({"entitiesAffected": 3}));
    let built = auto_runtime(&host);
    let present = built
        .runtime
        .create_reference("ProductSet", &json!({"ids": []}), &json!({}))
        .await
        .unwrap();
    let body = json!({"actions": [
        {"kind": "a", "references": [{"kind": "ProductSet", "id": present.id}]},
        {"kind": "b", "references": [{"kind": "ProductSet", "id": "gone-1"}, {"kind": "ProductSet", "id": "gone-2"}]},
    ]});
    let (run, events) = auto_flow(&built, "p", body).await;
    assert_eq!(
        results_of(&events, "executePlan"),
        [
            json!({"error": "Dispatch failed: reference required by plan is missing: kind=ProductSet id=gone-1"})
        ]
    );
    assert_eq!(host.dispatch_count(), 0);
    assert!(records_of(&built.runtime, &run, "DispatchStarted").is_empty());
    let transitions = records_of(&built.runtime, &run, "PlanTransitioned");
    let (_, last) = transitions.last().unwrap();
    assert_eq!(last["to"], "failed");
    assert_eq!(
        last["plan"]["outcome"]["message"],
        "reference required by plan is missing: kind=ProductSet id=gone-1"
    );
    // An expired reference is missing too.
    let host = dispatching(json!({"entitiesAffected": 3}));
    let built = auto_runtime(&host);
    let soon = built
        .runtime
        .create_reference("ProductSet", &json!({"ids": ["x"]}), &json!({}))
        .await
        .unwrap();
    built.clock.advance(60_001);
    let body =
        json!({"actions": [{"kind": "a", "references": [{"kind": "ProductSet", "id": soon.id}]}]});
    let (_, events) = auto_flow(&built, "p", body).await;
    assert_eq!(
        results_of(&events, "executePlan"),
        [
            json!({"error": format!("Dispatch failed: reference required by plan is missing: kind=ProductSet id={}", soon.id)})
        ]
    );
    assert_eq!(host.dispatch_count(), 0);
}

#[tokio::test]
async fn execute_plan_errors() {
    let host = dispatching(json!({"entitiesAffected": 1}));
    let built = auto_runtime(&host);
    let prompt = script(vec![
        via("planner", vec![store_plan("p", demo_body())]),
        via(
            "executor",
            vec![
                execute_plan("missing"),
                execute_plan("p"),
                execute_plan("p"),
                call("executePlan", json!({})),
            ],
        ),
    ]);
    let events = collect(&mut built.runtime.query(&prompt, "t", None).unwrap()).await;
    let results = results_of(&events, "executePlan");
    assert_eq!(results[0], json!({"error": "plan not found: missing"}));
    assert_eq!(results[1]["entitiesAffected"], 1);
    assert_eq!(
        results[2],
        json!({"error": "Invalid plan state for execution: executed"})
    );
    assert!(
        results[3]["error"]
            .as_str()
            .unwrap()
            .starts_with("Invalid input: ")
    );
    assert_eq!(host.dispatch_count(), 1);
}

#[tokio::test]
async fn store_plan_errors_store_nothing() {
    let mut doc = plans_spec("acme", never(), never());
    doc["plans"] = json!([{
        "name": "DemoPlan", "displayAliases": [],
        "schema": {"type": "object", "required": ["actions"], "properties": {"rationale": {"type": "string"}}},
    }]);
    let built = build_gated(
        doc,
        GateHost::new(TestHost::new()),
        Store::in_memory().unwrap(),
        Options::default(),
    );
    let cases = [
        (
            json!({"specName": "Nope", "planId": "p", "body": {"actions": [{"kind": "k"}]}}),
            String::from("unknown plan spec: Nope"),
        ),
        (
            json!({"specName": "DemoPlan", "planId": "p", "body": {"actions": [{"kind": "k"}], "rationale": 5}}),
            String::from("schema validation failed for spec 'DemoPlan': "),
        ),
        (
            json!({"specName": "DemoPlan", "planId": "p", "body": {"actions": {}}}),
            String::from("`actions` for spec 'DemoPlan' must be a JSON array"),
        ),
        (
            json!({"specName": "DemoPlan", "planId": "p", "body": {"actions": []}}),
            String::from("planner output for spec 'DemoPlan' produced an empty action sequence"),
        ),
        (
            json!({"specName": "DemoPlan", "planId": "p", "body": {"actions": ["x"]}}),
            String::from(
                "action #0 for spec 'DemoPlan' failed to decode: action must be a JSON object",
            ),
        ),
        (
            json!({"specName": "DemoPlan", "planId": "p", "body": {"actions": [{"kind": "k"}, {"kind": 1}]}}),
            String::from(
                "action #1 for spec 'DemoPlan' failed to decode: action is missing required string field `kind`",
            ),
        ),
        (
            json!({"specName": "DemoPlan", "planId": "p", "body": {"actions": [{"kind": "k", "references": [{"kind": "ProductSet"}]}]}}),
            String::from(
                "action #0 for spec 'DemoPlan' failed to decode: `references` did not match `[ArtifactRef]`: ",
            ),
        ),
        (
            json!({"specName": "DemoPlan", "planId": "p"}),
            String::from("Invalid input: "),
        ),
    ];
    let calls: Vec<Value> = cases
        .iter()
        .map(|(args, _)| call("storePlan", args.clone()))
        .chain([get_plan("p")])
        .collect();
    let mut stream = built
        .runtime
        .query(&script(vec![via("planner", calls)]), "t", None)
        .unwrap();
    let events = collect(&mut stream).await;
    let results = results_of(&events, "storePlan");
    for ((_, message), result) in cases.iter().zip(&results) {
        let text = result["error"].as_str().unwrap_or_default();
        assert!(
            text.starts_with(message.as_str()),
            "{text:?} should start with {message:?}"
        );
    }
    assert!(results[1]["error"].as_str().unwrap().contains("rationale"));
    assert_eq!(results_of(&events, "getPlan"), [Value::Null]);
    assert!(records_of(&built.runtime, stream.run_id(), "PlanStored").is_empty());
    built.runtime.verify(stream.run_id()).await.unwrap();

    // The schema validation also sees a missing `actions` first (step 2 before step 3).
    let events = collect(
        &mut built
            .runtime
            .query(
                &script(vec![via(
                    "planner",
                    vec![store_plan("p", json!({"rationale": "r"}))],
                )]),
                "t",
                None,
            )
            .unwrap(),
    )
    .await;
    let error = results_of(&events, "storePlan")[0]["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        error.starts_with("schema validation failed for spec 'DemoPlan': "),
        "{error}"
    );
    assert!(error.contains("actions"), "{error}");
}

#[tokio::test]
async fn storing_again_makes_a_new_draft_version() {
    let host = dispatching(json!({"entitiesAffected": 1}));
    let built = auto_runtime(&host);
    let second_body = json!({"actions": [{"kind": "notify"}], "rationale": "v2"});
    let prompt = script(vec![
        via("planner", vec![store_plan("p", demo_body())]),
        via("executor", vec![execute_plan("p")]),
        via(
            "planner",
            vec![
                store_plan("p", second_body.clone()),
                store_plan("p", second_body),
            ],
        ),
        via("planner", vec![get_plan("p")]),
    ]);
    let mut stream = built.runtime.query(&prompt, "t", None).unwrap();
    let events = collect(&mut stream).await;
    let plan = &results_of(&events, "getPlan")[0];
    assert_eq!(
        plan["status"], "draft",
        "an executed plan stored again is a new draft"
    );
    assert_eq!(plan["context"], json!({"rationale": "v2"}));
    assert_eq!(plan["outcome"], Value::Null);
    assert_eq!(plan["approvedAt"], Value::Null);
    assert_eq!(plan["actions"].as_array().unwrap().len(), 1);
    let versions: Vec<u64> = records_of(&built.runtime, stream.run_id(), "PlanStored")
        .iter()
        .map(|(_, d)| d["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2, 3]);
    built.runtime.verify(stream.run_id()).await.unwrap();

    // A later run sees the latest version and continues the count.
    let mut later = built
        .runtime
        .query(
            &script(vec![via("planner", vec![store_plan("p", demo_body())])]),
            "t",
            None,
        )
        .unwrap();
    collect(&mut later).await;
    let versions: Vec<u64> = records_of(&built.runtime, later.run_id(), "PlanStored")
        .iter()
        .map(|(_, d)| d["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [4]);
}

#[tokio::test]
async fn a_plan_stored_by_an_earlier_run_is_gated_and_executed_unchanged() {
    let host = dispatching(json!({"entitiesAffected": 1}));
    let built = gated_runtime(&host);
    let mut first = built
        .runtime
        .query(
            &script(vec![via("planner", vec![store_plan("p", demo_body())])]),
            "t",
            None,
        )
        .unwrap();
    let stored = results_of(&collect(&mut first).await, "storePlan")[0].clone();
    let (run, _, rest) = answer_plan_gate(
        &built,
        &script(vec![via("executor", vec![execute_plan("p")])]),
        decision("approve"),
    )
    .await;
    assert_eq!(results_of(&rest, "executePlan")[0]["entitiesAffected"], 1);
    let requested = records_of(&built.runtime, &run, "ApprovalRequested");
    assert_eq!(
        requested[0].1["payload"], stored,
        "the gate shows the plan as stored"
    );
    let transitions = records_of(&built.runtime, &run, "PlanTransitioned");
    let executed = &transitions.last().unwrap().1["plan"];
    let mut expected = stored.clone();
    for key in [
        "status",
        "approvedAt",
        "approvedBy",
        "startedAt",
        "completedAt",
        "outcome",
    ] {
        expected[key] = executed[key].clone();
    }
    assert_eq!(executed, &expected, "only lifecycle fields change");
    assert_eq!(executed["status"], "executed");
}

#[tokio::test]
async fn a_plan_being_executed_cannot_be_stored_over() {
    let hold = Arc::new(tokio::sync::Semaphore::new(0));
    let gate_host = GateHost::holding(
        dispatching(json!({"entitiesAffected": 1})),
        Arc::clone(&hold),
    );
    let built = build_gated(
        plans_spec("acme", never(), never()),
        gate_host.clone(),
        Store::in_memory().unwrap(),
        Options::default(),
    );
    let mut executing = built
        .runtime
        .query(&flow("p", demo_body()), "t1", None)
        .unwrap();
    let first = tokio::spawn(async move { collect(&mut executing).await });
    // The first run now sits inside the dispatcher with the plan `executing`.
    gate_host.dispatch_waiting.acquire().await.unwrap().forget();
    let mut other = built
        .runtime
        .query(
            &script(vec![via("planner", vec![store_plan("p", demo_body())])]),
            "t2",
            None,
        )
        .unwrap();
    let events = collect(&mut other).await;
    assert_eq!(
        results_of(&events, "storePlan"),
        [json!({"error": "plan p is executing"})]
    );
    hold.add_permits(1);
    let events = first.await.unwrap();
    assert_eq!(results_of(&events, "executePlan")[0]["entitiesAffected"], 1);
}

#[tokio::test]
async fn plans_are_tenant_scoped() {
    let store = Store::in_memory().unwrap();
    let host = dispatching(json!({"entitiesAffected": 1}));
    let acme = build_gated(
        plans_spec("acme", never(), never()),
        GateHost::new(Arc::clone(&host)),
        store.clone(),
        Options::default(),
    );
    let globex = build_gated(
        plans_spec("globex", never(), never()),
        GateHost::new(Arc::clone(&host)),
        store,
        Options {
            ids_from: 2 * START_MS as u64,
            ..Options::default()
        },
    );
    collect(
        &mut acme
            .runtime
            .query(
                &script(vec![via("planner", vec![store_plan("p", demo_body())])]),
                "t",
                None,
            )
            .unwrap(),
    )
    .await;
    let prompt = script(vec![
        via("planner", vec![get_plan("p")]),
        via("executor", vec![execute_plan("p")]),
    ]);
    let events = collect(&mut globex.runtime.query(&prompt, "t", None).unwrap()).await;
    assert_eq!(results_of(&events, "getPlan"), [Value::Null]);
    assert_eq!(
        results_of(&events, "executePlan"),
        [json!({"error": "plan not found: p"})]
    );
    assert_eq!(host.dispatch_count(), 0);
    // The same id in another tenant is another plan.
    let events = collect(
        &mut globex
            .runtime
            .query(&flow("p", json!({"actions": [{"kind": "x"}]})), "t", None)
            .unwrap(),
    )
    .await;
    assert_eq!(results_of(&events, "storePlan")[0]["owner"], "globex");
    assert_eq!(host.dispatch_count(), 1);
    let events = collect(
        &mut acme
            .runtime
            .query(
                &script(vec![via("planner", vec![get_plan("p")])]),
                "t",
                None,
            )
            .unwrap(),
    )
    .await;
    let plan = &results_of(&events, "getPlan")[0];
    assert_eq!(plan["status"], "draft");
    assert_eq!(plan["owner"], "acme");
}

#[tokio::test]
async fn revise_then_store_again_then_approve_executes_the_new_version() {
    let host = dispatching(json!({"entitiesAffected": 1}));
    let built = gated_runtime(&host);
    let revised = json!({"actions": [{"kind": "notify", "channel": "sms"}], "rationale": "v2"});
    let prompt = script(vec![
        via("planner", vec![store_plan("p", demo_body())]),
        via("executor", vec![execute_plan("p")]),
        via("planner", vec![store_plan("p", revised)]),
        via("executor", vec![execute_plan("p")]),
    ]);
    let mut stream = built.runtime.query(&prompt, "t", None).unwrap();
    let (_, first) = until_approval(&mut stream).await;
    built
        .runtime
        .respond_to_approval(&first, decision("revise"))
        .await
        .unwrap();
    let between = read_until(&mut stream, |e| e["type"] == "approval-required").await;
    let request = &between.last().unwrap()["data"];
    assert_ne!(request["id"], first);
    assert_eq!(request["payload"]["context"], json!({"rationale": "v2"}));
    assert_eq!(
        request["payload"]["actions"],
        json!([{"kind": "notify", "payload": {"channel": "sms"}, "references": []}])
    );
    assert_eq!(host.dispatch_count(), 0);
    let second = request["id"].as_str().unwrap().to_owned();
    built
        .runtime
        .respond_to_approval(&second, decision("approve"))
        .await
        .unwrap();
    let rest = collect(&mut stream).await;
    assert_eq!(
        results_of(&rest, "executePlan")[0]["resolvedActions"],
        json!([{"type": "notify", "payload": {"channel": "sms"}}])
    );
    let dispatches = host.dispatches.lock().unwrap().clone();
    assert_eq!(dispatches.len(), 1);
    assert_eq!(dispatches[0].0, request["payload"]["actions"]);
    let versions: Vec<u64> = records_of(&built.runtime, stream.run_id(), "PlanStored")
        .iter()
        .map(|(_, d)| d["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2]);
    built.runtime.verify(stream.run_id()).await.unwrap();
}

#[tokio::test]
async fn a_run_that_stored_a_plan_cannot_overwrite_it_while_another_run_executes_it() {
    let hold = Arc::new(tokio::sync::Semaphore::new(0));
    let host = dispatching(json!({"entitiesAffected": 1})).handler("pause", |_| Ok(json!({})));
    let gate_host = GateHost::holding(Arc::clone(&host), Arc::clone(&hold));
    let built = build_gated(
        plans_spec("acme", never(), never()),
        gate_host.clone(),
        Store::in_memory().unwrap(),
        Options {
            tools: vec![host_tool(
                "planner",
                "pause",
                json!({"type": "object"}),
                always(),
            )],
            ..Options::default()
        },
    );
    // Run B stores the plan, then waits at a gate before storing it again.
    let mut b = built
        .runtime
        .query(
            &script(vec![via(
                "planner",
                vec![
                    store_plan("p", demo_body()),
                    call("pause", json!({})),
                    store_plan("p", demo_body()),
                ],
            )]),
            "tb",
            None,
        )
        .unwrap();
    let (mut b_events, pause) = until_approval(&mut b).await;
    // Run A executes that plan and sits in the dispatcher.
    let mut a = built
        .runtime
        .query(
            &script(vec![via("executor", vec![execute_plan("p")])]),
            "ta",
            None,
        )
        .unwrap();
    let a_reader = tokio::spawn(async move { collect(&mut a).await });
    gate_host.dispatch_waiting.acquire().await.unwrap().forget();
    built
        .runtime
        .respond_to_approval(&pause, decision("approve"))
        .await
        .unwrap();
    b_events.extend(collect(&mut b).await);
    let stored = results_of(&b_events, "storePlan");
    assert_eq!(stored[0]["status"], "draft");
    assert_eq!(stored[1], json!({"error": "plan p is executing"}));
    hold.add_permits(1);
    let a_events = a_reader.await.unwrap();
    assert_eq!(
        results_of(&a_events, "executePlan")[0]["entitiesAffected"],
        1
    );

    // Once executed, storing again is a new version after the table's latest.
    let mut c = built
        .runtime
        .query(
            &script(vec![via("planner", vec![store_plan("p", demo_body())])]),
            "tc",
            None,
        )
        .unwrap();
    collect(&mut c).await;
    let versions: Vec<u64> = records_of(&built.runtime, c.run_id(), "PlanStored")
        .iter()
        .map(|(_, d)| d["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [2]);
}
