//! Tool approval gates, predicates, the approval hierarchy and respond_to_approval
//! errors (API.md §2.4, §3.2, §7).
#![allow(clippy::unwrap_used)]

#[path = "support/gates.rs"]
mod gates;
mod support;

use std::sync::Arc;

use flowai_runtime::{Decision, EngineError};
use flowai_storage::Store;
use gates::*;
use serde_json::{Value, json};
use support::*;

fn search_tool(approval: Value) -> flowai_runtime::HostToolDecl {
    host_tool(
        "specialist",
        "search",
        json!({"type": "object", "properties": {"q": {"type": "string"}}}),
        approval,
    )
}

fn searching_host() -> Arc<TestHost> {
    TestHost::new().handler("search", |args| Ok(json!({"hits": [args["q"].clone()]})))
}

fn specialist_runtime(
    host: &Arc<TestHost>,
    doc: Value,
    options: Options,
) -> (Gated, Arc<GateHost>) {
    let gate_host = GateHost::new(Arc::clone(host));
    let built = build_gated(doc, gate_host.clone(), Store::in_memory().unwrap(), options);
    (built, gate_host)
}

fn search(q: &str) -> String {
    call("search", json!({"q": q})).to_string()
}

#[tokio::test]
async fn always_gated_tool_waits_for_the_decision() {
    let host = searching_host();
    let (built, _) = specialist_runtime(
        &host,
        plans_spec("acme", always(), never()),
        Options {
            tools: vec![search_tool(always())],
            ..Options::default()
        },
    );
    let mut stream = built
        .runtime
        .run_specialist("specialist", &search("a"), Some("t1"), None)
        .unwrap();
    let (before, approval_id) = until_approval(&mut stream).await;
    assert_eq!(
        types(&before),
        [
            "tool-agent:call",
            "step-start",
            "tool-invocation:call",
            "approval-required"
        ]
    );
    assert_eq!(
        before[3],
        json!({"type": "approval-required", "data": {
            "id": approval_id, "kind": "tool", "target": "search", "payload": {"q": "a"},
            "resourceId": "acme", "threadId": "t1", "correlationId": "scripted-tool-1",
        }})
    );
    assert_eq!(
        host.tool_call_count(),
        0,
        "the handler waits for the decision"
    );
    built
        .runtime
        .respond_to_approval(&approval_id, decision("approve"))
        .await
        .unwrap();
    let rest = collect(&mut stream).await;
    assert_eq!(
        types(&rest),
        [
            "approval-decision",
            "tool-invocation:result",
            "text",
            "finish",
            "tool-agent:result"
        ]
    );
    assert_eq!(rest[1]["result"], json!({"hits": ["a"]}));
    assert_eq!(host.tool_call_count(), 1);
    // The attempt's key names the call's ToolCallStarted, not the gate records.
    let started = records_of(&built.runtime, stream.run_id(), "ToolCallStarted");
    let calls = host.tool_calls.lock().unwrap().clone();
    assert_eq!(calls[0].2, format!("{}:{}", stream.run_id(), started[0].0));
    built.runtime.verify(stream.run_id()).await.unwrap();
}

#[tokio::test]
async fn rejected_and_revised_tools_never_run() {
    for (outcome, feedback, reason) in [
        ("reject", Some("not now"), "not now"),
        ("reject", None, "Approval rejected"),
        ("revise", None, "Approval rejected"),
        ("revise", Some("narrower"), "narrower"),
    ] {
        let host = searching_host();
        let (built, _) = specialist_runtime(
            &host,
            plans_spec("acme", always(), never()),
            Options {
                tools: vec![search_tool(always())],
                ..Options::default()
            },
        );
        let mut stream = built
            .runtime
            .run_specialist("specialist", &search("a"), Some("t1"), None)
            .unwrap();
        let (_, approval_id) = until_approval(&mut stream).await;
        let answer = Decision {
            outcome: outcome.to_owned(),
            feedback: feedback.map(str::to_owned),
            partial: Some(json!({"q": "b"})),
        };
        built
            .runtime
            .respond_to_approval(&approval_id, answer)
            .await
            .unwrap();
        let rest = collect(&mut stream).await;
        assert_eq!(
            types(&rest),
            [
                "approval-decision",
                "tool-invocation:result",
                "finish",
                "tool-agent:result"
            ],
            "a rejected result is an error: no text echo"
        );
        assert_eq!(rest[0]["data"]["outcome"]["outcome"], outcome);
        assert_eq!(
            rest[1]["result"],
            json!({"error": "approval_rejected", "rejected": true, "reason": reason, "do_not_retry": true})
        );
        assert_eq!(
            host.tool_call_count(),
            0,
            "{outcome}: the handler never runs"
        );
        assert!(records_of(&built.runtime, stream.run_id(), "AttemptStarted").is_empty());
        built.runtime.verify(stream.run_id()).await.unwrap();
    }
}

#[tokio::test]
async fn dynamic_predicate_is_called_once_per_gated_call() {
    let host = searching_host().predicate("needs_ok", true);
    let (built, gate_host) = specialist_runtime(
        &host,
        plans_spec("acme", always(), never()),
        Options {
            tools: vec![search_tool(dynamic("needs_ok"))],
            predicates: vec![String::from("needs_ok")],
            ..Options::default()
        },
    );
    let mut stream = built
        .runtime
        .run_specialist("specialist", &search("a"), Some("t1"), None)
        .unwrap();
    let (_, approval_id) = until_approval(&mut stream).await;
    assert_eq!(host.predicate_calls.lock().unwrap().len(), 1);
    built
        .runtime
        .respond_to_approval(&approval_id, decision("approve"))
        .await
        .unwrap();
    collect(&mut stream).await;
    assert_eq!(
        host.predicate_calls.lock().unwrap().clone(),
        [(
            String::from("needs_ok"),
            json!({"q": "a"}),
            String::from("tool"),
            String::from("search")
        )],
        "evaluated once, before the request, not again after the decision"
    );
    assert_eq!(
        gate_host.predicate_ctx.lock().unwrap().clone(),
        [(
            String::from("tool"),
            String::from("search"),
            String::from("acme")
        )]
    );
    assert_eq!(host.tool_call_count(), 1);
    let recorded = records_of(&built.runtime, stream.run_id(), "PredicateEvaluated");
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].1["answer"], true);

    // A false answer opens the gate: no approval events, the handler runs at once.
    host.predicate("needs_ok", false);
    let prompt = script(vec![
        call("search", json!({"q": "b"})),
        call("search", json!({"q": "c"})),
    ]);
    let mut stream = built
        .runtime
        .run_specialist("specialist", &prompt, Some("t1"), None)
        .unwrap();
    let events = collect(&mut stream).await;
    assert!(
        gate_events(&events)
            .iter()
            .all(|e| !e.starts_with("approval"))
    );
    assert_eq!(host.tool_call_count(), 3);
    let calls = host.predicate_calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 3, "one evaluation per gated call");
    assert_eq!(calls[2].1, json!({"q": "c"}));
}

#[tokio::test]
async fn plan_predicate_sees_the_full_plan() {
    let host = TestHost::new().predicate("big_plan", false);
    let (built, gate_host) = specialist_runtime(
        &host,
        plans_spec("acme", dynamic("big_plan"), never()),
        Options {
            predicates: vec![String::from("big_plan")],
            ..Options::default()
        },
    );
    let prompt = script(vec![
        via("planner", vec![store_plan("p", demo_body())]),
        via("executor", vec![execute_plan("p")]),
    ]);
    let events = collect(&mut built.runtime.query(&prompt, "t", None).unwrap()).await;
    let stored = &results_of(&events, "storePlan")[0];
    let calls = host.predicate_calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        [(
            String::from("big_plan"),
            stored.clone(),
            String::from("plan"),
            String::from("p")
        )]
    );
    assert_eq!(
        gate_host.predicate_ctx.lock().unwrap().clone(),
        [(
            String::from("plan"),
            String::from("p"),
            String::from("acme")
        )]
    );
    assert_eq!(
        status_changes(&events),
        [(String::from("draft"), String::from("approved"))]
    );
}

/// Runs `search` on the specialist; returns whether it was gated (answering approve).
async fn search_is_gated(built: &Gated, host: &TestHost) -> bool {
    let before = host.tool_call_count();
    let mut stream = built
        .runtime
        .run_specialist("specialist", &search("x"), None, None)
        .unwrap();
    let events = read_until(&mut stream, |e| {
        e["type"] == "approval-required" || e["type"] == "finish"
    })
    .await;
    let last = events.last().unwrap();
    let gated = last["type"] == "approval-required";
    if gated {
        assert_eq!(host.tool_call_count(), before);
        let id = last["data"]["id"].as_str().unwrap().to_owned();
        built
            .runtime
            .respond_to_approval(&id, decision("approve"))
            .await
            .unwrap();
    }
    collect(&mut stream).await;
    built.runtime.verify(stream.run_id()).await.unwrap();
    assert_eq!(host.tool_call_count(), before + 1);
    gated
}

#[tokio::test]
async fn most_specific_rule_wins_in_both_directions() {
    let cases = [
        // (tools floor, the tool's own rule, agent override, gated?)
        (never(), always(), None, true),
        (always(), never(), None, false),
        (never(), never(), Some(always()), true),
        (always(), always(), Some(never()), false),
        (never(), always(), Some(never()), false),
    ];
    for (floor, own, override_rule, gated) in cases {
        let host = searching_host();
        let mut doc = plans_spec("acme", always(), floor.clone());
        if let Some(rule) = &override_rule {
            doc["approvalOverrides"] = json!({"tools": {"specialist": {"search": rule}}});
        }
        let (built, _) = specialist_runtime(
            &host,
            doc,
            Options {
                tools: vec![search_tool(own.clone())],
                ..Options::default()
            },
        );
        assert_eq!(
            search_is_gated(&built, &host).await,
            gated,
            "floor {floor}, tool {own}, override {override_rule:?}"
        );
    }
}

#[tokio::test]
async fn the_tool_channel_gates_builtins_too() {
    // executePlan is a tool: an `always` tool floor gates it before the plan gate.
    let host = TestHost::new().dispatcher(|_, _| Ok(json!({"entitiesAffected": 1})));
    let mut doc = plans_spec("acme", never(), never());
    doc["approvalOverrides"] = json!({"agents": {"executor": {"tools": {"kind": "always"}}}});
    let (built, _) = specialist_runtime(&host, doc, Options::default());
    let prompt = script(vec![
        via("planner", vec![store_plan("p", demo_body())]),
        via("executor", vec![execute_plan("p")]),
    ]);
    let mut stream = built.runtime.query(&prompt, "t", None).unwrap();
    let (before, approval_id) = until_approval(&mut stream).await;
    let required = &before.last().unwrap()["data"];
    assert_eq!(required["kind"], "tool");
    assert_eq!(required["target"], "executePlan");
    assert_eq!(required["payload"], json!({"planId": "p"}));
    assert_eq!(required["threadId"], "t-executor");
    assert_eq!(host.dispatch_count(), 0);
    built
        .runtime
        .respond_to_approval(&approval_id, decision("approve"))
        .await
        .unwrap();
    let rest = collect(&mut stream).await;
    assert_eq!(
        gate_events(&rest)[..3],
        [
            "approval-decision:approve",
            "plan-status-change:draft->approved",
            "tool-invocation:executePlan:result",
        ]
    );
    assert_eq!(host.dispatch_count(), 1);
}

#[tokio::test]
async fn respond_to_approval_errors() {
    let store = Store::in_memory().unwrap();
    let host = searching_host();
    let built = build_gated(
        plans_spec("acme", always(), never()),
        GateHost::new(Arc::clone(&host)),
        store.clone(),
        Options {
            tools: vec![search_tool(always())],
            ..Options::default()
        },
    );
    let other_tenant = build_gated(
        plans_spec("globex", always(), never()),
        GateHost::new(Arc::clone(&host)),
        store,
        Options {
            tools: vec![search_tool(always())],
            ids_from: 2 * START_MS as u64,
            ..Options::default()
        },
    );
    let mut stream = built
        .runtime
        .run_specialist("specialist", &search("a"), Some("t1"), None)
        .unwrap();
    let (_, approval_id) = until_approval(&mut stream).await;

    let message = |e: EngineError| e.to_string();
    let bad = built
        .runtime
        .respond_to_approval(&approval_id, decision("maybe"))
        .await;
    assert_eq!(
        bad.map_err(message),
        Err(String::from(
            "approval outcome must be approve, reject, or revise; got maybe"
        ))
    );
    assert!(matches!(
        built
            .runtime
            .respond_to_approval(&approval_id, decision("cancelled"))
            .await,
        Err(EngineError::InvalidArgument(_))
    ));
    let unknown = built
        .runtime
        .respond_to_approval("nope", decision("approve"))
        .await;
    assert_eq!(
        unknown.map_err(message),
        Err(String::from("approval not found: nope"))
    );
    let foreign = other_tenant
        .runtime
        .respond_to_approval(&approval_id, decision("approve"))
        .await;
    assert_eq!(
        foreign.map_err(message),
        Err(format!("approval not found: {approval_id}")),
        "another tenant's approval is not found"
    );
    assert_eq!(host.tool_call_count(), 0);

    built
        .runtime
        .respond_to_approval(&approval_id, decision("reject"))
        .await
        .unwrap();
    let again = built
        .runtime
        .respond_to_approval(&approval_id, decision("approve"))
        .await;
    assert_eq!(
        again.map_err(message),
        Err(format!("approval already resolved: {approval_id}"))
    );
    let rest = collect(&mut stream).await;
    assert_eq!(rest[1]["result"]["error"], "approval_rejected");
    assert_eq!(host.tool_call_count(), 0);
}

#[tokio::test]
async fn answering_never_waits_for_the_consumer() {
    // A one-event buffer: the consumer reads only up to approval-required, answers,
    // and only then reads on (API.md §2.4: back-pressure never blocks a decision).
    let host = TestHost::new().dispatcher(|_, _| Ok(json!({"entitiesAffected": 1})));
    let built = build_gated(
        plans_spec("acme", always(), never()),
        GateHost::new(Arc::clone(&host)),
        Store::in_memory().unwrap(),
        Options {
            event_buffer: 1,
            ..Options::default()
        },
    );
    let prompt = script(vec![
        via("planner", vec![store_plan("p", demo_body())]),
        via("executor", vec![execute_plan("p")]),
    ]);
    let mut stream = built.runtime.query(&prompt, "t", None).unwrap();
    let (_, approval_id) = until_approval(&mut stream).await;
    let answered = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        built
            .runtime
            .respond_to_approval(&approval_id, decision("approve")),
    )
    .await;
    assert!(
        matches!(answered, Ok(Ok(()))),
        "respond_to_approval blocked on an unread stream: {answered:?}"
    );
    let rest = collect(&mut stream).await;
    assert_eq!(
        gate_events(&rest)[..3],
        [
            "plan-status-change:draft->pending_approval",
            "approval-decision:approve",
            "plan-status-change:pending_approval->approved",
        ]
    );
    assert_eq!(host.dispatch_count(), 1);
}

#[tokio::test]
async fn cancelling_at_a_tool_gate_never_runs_the_handler() {
    let host = searching_host();
    let (built, _) = specialist_runtime(
        &host,
        plans_spec("acme", always(), never()),
        Options {
            tools: vec![search_tool(always())],
            ..Options::default()
        },
    );
    let mut stream = built
        .runtime
        .run_specialist("specialist", &search("a"), Some("t1"), None)
        .unwrap();
    let (_, approval_id) = until_approval(&mut stream).await;
    stream.cancel();
    let rest = collect(&mut stream).await;
    // The gated call still gets its one result (API.md §3.2, §7), and the run stops there.
    let results: Vec<&Value> = rest
        .iter()
        .filter(|e| e["type"] == "tool-invocation")
        .collect();
    assert_eq!(results.len(), 1, "{rest:?}");
    assert_eq!(results[0]["state"], "result");
    assert_eq!(
        results[0]["result"],
        json!({"error": "Cancelled while awaiting approval"})
    );
    assert!(rest.iter().all(|e| e["type"] != "finish"), "{rest:?}");
    let run_id = stream.run_id().to_owned();
    assert_eq!(
        built.runtime.run(&run_id).unwrap().meta.status,
        flowai_storage::RunStatus::Cancelled
    );
    assert_eq!(
        built
            .runtime
            .respond_to_approval(&approval_id, decision("approve"))
            .await
            .map_err(|e| e.to_string()),
        Err(format!("approval already resolved: {approval_id}"))
    );
    assert_eq!(host.tool_call_count(), 0);
    // The recorded cancellation replays and verifies like any other decision.
    built.runtime.verify(&run_id).await.unwrap();
}

#[tokio::test]
async fn a_duplicate_answer_is_refused_while_the_run_goes_on() {
    let hold = Arc::new(tokio::sync::Semaphore::new(0));
    let host = searching_host().dispatcher(|_, _| Ok(json!({"entitiesAffected": 1})));
    let gate_host = GateHost::holding(Arc::clone(&host), Arc::clone(&hold));
    let built = build_gated(
        plans_spec("acme", never(), never()),
        gate_host.clone(),
        Store::in_memory().unwrap(),
        Options {
            tools: vec![host_tool(
                "executor",
                "search",
                json!({"type": "object"}),
                always(),
            )],
            ..Options::default()
        },
    );
    let prompt = script(vec![
        via("planner", vec![store_plan("p", demo_body())]),
        via(
            "executor",
            vec![call("search", json!({"q": "a"})), execute_plan("p")],
        ),
    ]);
    let mut stream = built.runtime.query(&prompt, "t", None).unwrap();
    let (_, approval_id) = until_approval(&mut stream).await;
    // Both answers return before the run finishes (the dispatcher is still held).
    let (first, second) = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        tokio::join!(
            built
                .runtime
                .respond_to_approval(&approval_id, decision("approve")),
            built
                .runtime
                .respond_to_approval(&approval_id, decision("reject")),
        )
    })
    .await
    .expect("a duplicate answer waited for the run");
    first.unwrap();
    let reader = tokio::spawn(async move { collect(&mut stream).await });
    gate_host.dispatch_waiting.acquire().await.unwrap().forget();
    assert_eq!(
        second.map_err(|e| e.to_string()),
        Err(format!("approval already resolved: {approval_id}"))
    );
    hold.add_permits(1);
    let events = reader.await.unwrap();
    assert_eq!(results_of(&events, "search"), [json!({"hits": ["a"]})]);
    assert_eq!(host.dispatch_count(), 1);
}
