//! Durable approvals (API.md §9.3, DESIGN.md §3 rule 4, §5): a plan gate survives the
//! runtime, is answered from a new runtime, and the run continues on resume with the
//! dispatcher invoked exactly once under its idempotency key.
#![allow(clippy::unwrap_used)]

#[path = "support/gates.rs"]
mod gates;
mod support;

use std::path::Path;
use std::sync::Arc;

use flowai_runtime::EngineError;
use flowai_storage::{RunStatus, Store};
use gates::*;
use serde_json::{Value, json};
use support::*;

fn prompt() -> String {
    script(vec![
        via("planner", vec![store_plan("demo-plan-1", demo_body())]),
        via("executor", vec![execute_plan("demo-plan-1")]),
    ])
}

fn open(path: &Path, host: &Arc<TestHost>, ids_from: u64) -> (Store, Gated) {
    let store = Store::open(path, Default::default()).unwrap();
    let built = build_gated(
        plans_spec("acme", always(), never()),
        GateHost::new(Arc::clone(host)),
        store.clone(),
        Options {
            ids_from,
            ..Options::default()
        },
    );
    (store, built)
}

fn dispatching() -> Arc<TestHost> {
    TestHost::new().dispatcher(|_, _| Ok(json!({"entitiesAffected": 2, "summary": "ok"})))
}

/// Runs the flow to its plan gate in a runtime that is then closed; returns the run
/// id and the approval id.
async fn suspend_at_plan_gate(path: &Path) -> (String, String) {
    let host = dispatching();
    let (store, built) = open(path, &host, START_MS as u64);
    let mut stream = built.runtime.query(&prompt(), "t1", None).unwrap();
    let (_, approval_id) = until_approval(&mut stream).await;
    let run_id = stream.run_id().to_owned();
    drop(stream);
    built.runtime.close().unwrap();
    store.close().unwrap();
    assert_eq!(host.dispatch_count(), 0);
    (run_id, approval_id)
}

/// The seq of the plan's `approved → executing` transition.
fn executing_seq(runtime: &flowai_runtime::Runtime, run_id: &str) -> u64 {
    records_of(runtime, run_id, "PlanTransitioned")
        .into_iter()
        .find(|(_, d)| d["to"] == "executing")
        .map(|(seq, _)| seq)
        .unwrap()
}

#[tokio::test]
async fn decision_from_a_new_runtime_continues_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gates.redb");
    let (run_id, approval_id) = suspend_at_plan_gate(&path).await;

    let host = dispatching();
    let (_store, built) = open(&path, &host, 3 * START_MS as u64);
    let info = built.runtime.run(&run_id).unwrap();
    assert_eq!(info.meta.status, RunStatus::Suspended);
    assert_eq!(info.pending_approvals, vec![approval_id.clone()]);
    assert!(
        built.runtime.pending().unwrap().is_empty(),
        "undecided: nothing to do yet"
    );

    built
        .runtime
        .respond_to_approval(&approval_id, decision("approve"))
        .await
        .unwrap();
    assert_eq!(
        host.dispatch_count(),
        0,
        "the decision is journaled, the run not driven"
    );
    let pending: Vec<String> = built
        .runtime
        .pending()
        .unwrap()
        .iter()
        .map(|info| info.meta.run_id.to_string())
        .collect();
    assert_eq!(pending, vec![run_id.clone()]);
    let decided = records_of(&built.runtime, &run_id, "ApprovalDecided");
    assert_eq!(decided.len(), 1);
    assert_eq!(decided[0].1["origin"], "host");
    assert_eq!(
        built
            .runtime
            .respond_to_approval(&approval_id, decision("reject"))
            .await
            .map_err(|e| e.to_string()),
        Err(format!("approval already resolved: {approval_id}"))
    );

    let mut resumed = built.runtime.resume(&run_id, false).unwrap();
    let events = collect(&mut resumed).await;
    assert_eq!(
        gate_events(&events),
        [
            "approval-decision:approve",
            "plan-status-change:pending_approval->approved",
            "tool-invocation:executePlan:result",
            "tool-invocation:call_agent:result",
        ]
    );
    assert_eq!(
        events[0],
        json!({"type": "approval-decision", "data": {"id": approval_id, "outcome": {"outcome": "approve"}}})
    );
    assert_eq!(
        types(&events)[3..],
        [
            "text",
            "finish",
            "tool-agent:result",
            "tool-invocation:result",
            "text",
            "finish",
            "tool-agent:result"
        ]
    );
    let dispatches = host.dispatches.lock().unwrap().clone();
    assert_eq!(dispatches.len(), 1, "dispatched exactly once");
    let seq = executing_seq(&built.runtime, &run_id);
    assert_eq!(dispatches[0].2, format!("{run_id}:demo-plan-1:{seq}"));
    assert_eq!(dispatches[0].3, 1);
    let started = records_of(&built.runtime, &run_id, "DispatchStarted");
    assert_eq!(started.len(), 1);
    assert_eq!(
        started[0].1["idempotencyKey"],
        format!("{run_id}:demo-plan-1:{seq}")
    );
    assert_eq!(results_of(&events, "executePlan")[0]["entitiesAffected"], 2);
    assert_eq!(
        built.runtime.run(&run_id).unwrap().meta.status,
        RunStatus::Completed
    );
    assert!(built.runtime.pending().unwrap().is_empty());

    // The whole journal replays to one consistent stream and verifies.
    let replayed = event_values(&built.runtime.replay_events(&run_id).unwrap());
    assert_eq!(replayed[replayed.len() - events.len()..], events[..]);
    built.runtime.verify(&run_id).await.unwrap();
}

#[tokio::test]
async fn resume_while_undecided_waits_for_the_same_approval() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gates.redb");
    let (run_id, approval_id) = suspend_at_plan_gate(&path).await;

    let host = dispatching();
    let (_store, built) = open(&path, &host, 3 * START_MS as u64);
    let mut resumed = built.runtime.resume(&run_id, false).unwrap();
    // Start the resumed run and answer while it replays toward its gate: the answer
    // must reach the gate whatever point the replay has reached.
    let (first, answered) = tokio::join!(
        resumed.next(),
        built
            .runtime
            .respond_to_approval(&approval_id, decision("approve"))
    );
    answered.unwrap();
    let mut events = vec![first.unwrap().unwrap().to_value()];
    events.extend(collect(&mut resumed).await);
    assert_eq!(
        gate_events(&events)[..2],
        [
            "approval-decision:approve",
            "plan-status-change:pending_approval->approved"
        ]
    );
    let requested = records_of(&built.runtime, &run_id, "ApprovalRequested");
    assert_eq!(requested.len(), 1, "no second request");
    assert_eq!(requested[0].1["approvalId"], approval_id);
    assert_eq!(host.dispatch_count(), 1);
    assert_eq!(
        built.runtime.run(&run_id).unwrap().meta.status,
        RunStatus::Completed
    );
    built.runtime.verify(&run_id).await.unwrap();
}

#[tokio::test]
async fn an_answer_between_resume_and_the_first_read_is_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gates.redb");
    let (run_id, approval_id) = suspend_at_plan_gate(&path).await;

    let host = dispatching();
    let (_store, built) = open(&path, &host, 3 * START_MS as u64);
    // The stream exists but its run starts only on the first read.
    let mut resumed = built.runtime.resume(&run_id, false).unwrap();
    built
        .runtime
        .respond_to_approval(&approval_id, decision("approve"))
        .await
        .unwrap();
    let events = tokio::time::timeout(std::time::Duration::from_secs(20), collect(&mut resumed))
        .await
        .expect("the resumed run saw the recorded decision");
    assert_eq!(
        gate_events(&events)[..2],
        [
            "approval-decision:approve",
            "plan-status-change:pending_approval->approved"
        ]
    );
    assert_eq!(host.dispatch_count(), 1);
    assert_eq!(
        built.runtime.run(&run_id).unwrap().meta.status,
        RunStatus::Completed
    );
}

#[tokio::test]
async fn resumed_gate_can_be_answered_through_the_resumed_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gates.redb");
    let (run_id, approval_id) = suspend_at_plan_gate(&path).await;

    let host = dispatching();
    let (_store, built) = open(&path, &host, 3 * START_MS as u64);
    let mut resumed = built.runtime.resume(&run_id, false).unwrap();
    let reader = tokio::spawn(async move { collect(&mut resumed).await });
    // Whether the answer is journaled directly or handed to the waiting gate, the
    // run continues with this decision.
    built
        .runtime
        .respond_to_approval(
            &approval_id,
            flowai_runtime::Decision {
                outcome: String::from("reject"),
                feedback: Some(String::from("later")),
                partial: None,
            },
        )
        .await
        .unwrap();
    let events = reader.await.unwrap();
    assert_eq!(
        results_of(&events, "executePlan"),
        [json!({"error": "Plan demo-plan-1 rejected: later"})]
    );
    assert_eq!(host.dispatch_count(), 0);
    assert_eq!(
        built.runtime.run(&run_id).unwrap().meta.status,
        RunStatus::Completed
    );
}

#[tokio::test]
async fn cancelling_a_suspended_run_resolves_its_approvals() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gates.redb");
    let (run_id, approval_id) = suspend_at_plan_gate(&path).await;

    let host = dispatching();
    let (_store, built) = open(&path, &host, 3 * START_MS as u64);
    built.runtime.cancel(&run_id).await.unwrap();
    let info = built.runtime.run(&run_id).unwrap();
    assert_eq!(info.meta.status, RunStatus::Cancelled);
    assert!(info.pending_approvals.is_empty());
    assert_eq!(
        built
            .runtime
            .respond_to_approval(&approval_id, decision("approve"))
            .await
            .map_err(|e| e.to_string()),
        Err(format!("approval already resolved: {approval_id}"))
    );
    assert!(matches!(
        built.runtime.resume(&run_id, false).map(|_| ()),
        Err(EngineError::RunFinished { .. })
    ));
    assert_eq!(
        built
            .runtime
            .resume(&run_id, false)
            .err()
            .map(|e| e.to_string()),
        Some(format!("run {run_id} is cancelled"))
    );
    // A cancelled approval yields no decision event on replay; the calls the run left
    // open get their cancelled results, as when its driver is cancelled at the gate.
    let replayed = event_values(&built.runtime.replay_events(&run_id).unwrap());
    assert!(replayed.iter().all(|e| e["type"] != "approval-decision"));
    assert_eq!(cancelled_results(&replayed), expected_cancelled_results());
    let kinds = record_kinds(&built.runtime, &run_id);
    assert_eq!(
        kinds[kinds.len() - 4..],
        [
            "ApprovalDecided",
            "ToolCallCompleted",
            "ToolCallCompleted",
            "RunCancelled"
        ]
    );
    assert!(built.runtime.pending().unwrap().is_empty());
    assert_eq!(host.dispatch_count(), 0);
    built.runtime.verify(&run_id).await.unwrap();
}

#[tokio::test]
async fn cancelling_a_run_waiting_in_this_runtime() {
    let host = dispatching();
    let built = build_gated(
        plans_spec("acme", always(), never()),
        GateHost::new(Arc::clone(&host)),
        Store::in_memory().unwrap(),
        Options::default(),
    );
    let mut stream = built.runtime.query(&prompt(), "t1", None).unwrap();
    let (_, approval_id) = until_approval(&mut stream).await;
    let run_id = stream.run_id().to_owned();
    built.runtime.cancel(&run_id).await.unwrap();
    // Waiting at its gate, the run is cancelled by the time cancel returns.
    assert_eq!(
        built.runtime.run(&run_id).unwrap().meta.status,
        RunStatus::Cancelled
    );
    let rest = collect(&mut stream).await;
    assert!(
        rest.iter()
            .all(|e: &Value| e["type"] != "approval-decision" && e["type"] != "finish"),
        "{rest:?}"
    );
    assert_eq!(
        cancelled_results(&rest),
        expected_cancelled_results(),
        "{rest:?}"
    );
    let decided = records_of(&built.runtime, &run_id, "ApprovalDecided");
    assert_eq!(decided.len(), 1, "resolved once: {decided:?}");
    assert_eq!(decided[0].1["outcome"], "cancelled");
    let replayed = event_values(&built.runtime.replay_events(&run_id).unwrap());
    assert_eq!(cancelled_results(&replayed), expected_cancelled_results());
    assert_eq!(
        built.runtime.run(&run_id).unwrap().meta.status,
        RunStatus::Cancelled
    );
    assert_eq!(
        built
            .runtime
            .respond_to_approval(&approval_id, decision("approve"))
            .await
            .map_err(|e| e.to_string()),
        Err(format!("approval already resolved: {approval_id}"))
    );
    assert_eq!(
        built
            .runtime
            .resume(&run_id, false)
            .err()
            .map(|e| e.to_string()),
        Some(format!("run {run_id} is cancelled"))
    );
    assert_eq!(host.dispatch_count(), 0);
    built.runtime.verify(&run_id).await.unwrap();
}

#[tokio::test]
async fn an_unfinished_dispatch_is_attempted_again_under_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gates.redb");
    let (run_id, first_key) = {
        let HeldDispatch {
            built,
            run_id,
            host,
            reader,
        } = run_to_a_held_dispatch(Store::open(&path, Default::default()).unwrap()).await;
        // Closing the runtime now is a crash inside the side effect.
        built.runtime.close().unwrap();
        let _ = reader.await;
        let started = records_of(&built.runtime, &run_id, "DispatchStarted");
        assert_eq!(started.len(), 1);
        let key = started[0].1["idempotencyKey"].as_str().unwrap().to_owned();
        assert_eq!(
            host.dispatch_count(),
            0,
            "held before the dispatcher itself ran"
        );
        (run_id, key)
    };

    let host = dispatching();
    let store = Store::open(&path, Default::default()).unwrap();
    let built = build_gated(
        plans_spec("acme", never(), never()),
        GateHost::new(Arc::clone(&host)),
        store,
        Options {
            ids_from: 3 * START_MS as u64,
            ..Options::default()
        },
    );
    assert_eq!(
        built.runtime.run(&run_id).unwrap().meta.status,
        RunStatus::Interrupted
    );
    let pending: Vec<String> = built
        .runtime
        .pending()
        .unwrap()
        .iter()
        .map(|info| info.meta.run_id.to_string())
        .collect();
    assert_eq!(pending, vec![run_id.clone()]);
    let events = collect(&mut built.runtime.resume(&run_id, false).unwrap()).await;
    let dispatches = host.dispatches.lock().unwrap().clone();
    assert_eq!(dispatches.len(), 1);
    assert_eq!(dispatches[0].2, first_key, "same idempotency key");
    assert_eq!(dispatches[0].3, 2, "next attempt");
    let seq = executing_seq(&built.runtime, &run_id);
    assert_eq!(first_key, format!("{run_id}:demo-plan-1:{seq}"));
    assert_eq!(results_of(&events, "executePlan")[0]["entitiesAffected"], 2);
    // executePlan is re-entered, not restarted: one call event, one result event.
    assert_eq!(
        gate_events(&events),
        [
            "tool-invocation:executePlan:result",
            "tool-invocation:call_agent:result"
        ]
    );
    let attempts: Vec<u64> = records_of(&built.runtime, &run_id, "DispatchStarted")
        .iter()
        .map(|(_, d)| d["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, [1, 2]);
    assert_eq!(
        built.runtime.run(&run_id).unwrap().meta.status,
        RunStatus::Completed
    );
    built.runtime.verify(&run_id).await.unwrap();
}

/// A run whose plan dispatch was entered (its DispatchStarted is durable) and is held
/// there for good, with what drives it.
struct HeldDispatch {
    built: Gated,
    run_id: String,
    /// The dispatcher behind the hold: it counts the dispatches that really ran.
    host: Arc<TestHost>,
    reader: tokio::task::JoinHandle<Vec<Value>>,
}

/// Starts the plans flow on `store` and returns once its dispatch is held.
async fn run_to_a_held_dispatch(store: Store) -> HeldDispatch {
    let host = dispatching();
    let gate_host = GateHost::holding(Arc::clone(&host), Arc::new(tokio::sync::Semaphore::new(0)));
    let built = build_gated(
        plans_spec("acme", never(), never()),
        gate_host.clone(),
        store,
        Options::default(),
    );
    let mut stream = built.runtime.query(&prompt(), "t1", None).unwrap();
    let run_id = stream.run_id().to_owned();
    let reader = tokio::spawn(async move { collect(&mut stream).await });
    gate_host.dispatch_waiting.acquire().await.unwrap().forget();
    HeldDispatch {
        built,
        run_id,
        host,
        reader,
    }
}

/// Opens `path` with a spec whose plan and tool floors are given.
fn open_with(path: &Path, host: &Arc<TestHost>, plans: Value, options: Options) -> (Store, Gated) {
    let store = Store::open(path, Default::default()).unwrap();
    let built = build_gated(
        plans_spec("acme", plans, never()),
        GateHost::new(Arc::clone(host)),
        store.clone(),
        options,
    );
    (store, built)
}

#[tokio::test]
async fn a_plan_of_an_earlier_run_resumes_from_this_runs_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gates.redb");
    let (run_id, approval_id, stored) = {
        let host = dispatching();
        let (store, built) = open_with(&path, &host, always(), Options::default());
        let mut planning = built
            .runtime
            .query(
                &script(vec![via("planner", vec![store_plan("p", demo_body())])]),
                "t0",
                None,
            )
            .unwrap();
        let stored = results_of(&collect(&mut planning).await, "storePlan")[0].clone();
        let mut stream = built
            .runtime
            .query(
                &script(vec![via("executor", vec![execute_plan("p")])]),
                "t1",
                None,
            )
            .unwrap();
        let (_, approval_id) = until_approval(&mut stream).await;
        let run_id = stream.run_id().to_owned();
        drop(stream);
        built.runtime.close().unwrap();
        store.close().unwrap();
        (run_id, approval_id, stored)
    };
    let host = dispatching();
    let (_store, built) = open_with(
        &path,
        &host,
        always(),
        Options {
            ids_from: 3 * START_MS as u64,
            ..Options::default()
        },
    );
    built
        .runtime
        .respond_to_approval(&approval_id, decision("approve"))
        .await
        .unwrap();
    let events = collect(&mut built.runtime.resume(&run_id, false).unwrap()).await;
    assert_eq!(results_of(&events, "executePlan")[0]["entitiesAffected"], 2);
    let dispatches = host.dispatches.lock().unwrap().clone();
    assert_eq!(dispatches.len(), 1);
    assert_eq!(
        dispatches[0].0, stored["actions"],
        "the plan's actions, not an empty list"
    );
    let transitions = records_of(&built.runtime, &run_id, "PlanTransitioned");
    assert_eq!(transitions[0].1["plan"]["actions"], stored["actions"]);
    assert_eq!(transitions[0].1["plan"]["context"], stored["context"]);
    built.runtime.verify(&run_id).await.unwrap();
}

#[tokio::test]
async fn an_auto_approved_plan_of_an_earlier_run_re_enters_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gates.redb");
    let run_id = {
        let host = dispatching();
        let hold = Arc::new(tokio::sync::Semaphore::new(0));
        let gate_host = GateHost::holding(Arc::clone(&host), hold);
        let store = Store::open(&path, Default::default()).unwrap();
        let built = build_gated(
            plans_spec("acme", never(), never()),
            gate_host.clone(),
            store.clone(),
            Options::default(),
        );
        let mut planning = built
            .runtime
            .query(
                &script(vec![via("planner", vec![store_plan("p", demo_body())])]),
                "t0",
                None,
            )
            .unwrap();
        collect(&mut planning).await;
        let mut stream = built
            .runtime
            .query(
                &script(vec![via("executor", vec![execute_plan("p")])]),
                "t1",
                None,
            )
            .unwrap();
        let run_id = stream.run_id().to_owned();
        let reader = tokio::spawn(async move { collect(&mut stream).await });
        gate_host.dispatch_waiting.acquire().await.unwrap().forget();
        built.runtime.close().unwrap();
        let _ = reader.await;
        store.close().unwrap();
        run_id
    };
    let host = dispatching();
    let (_store, built) = open_with(
        &path,
        &host,
        never(),
        Options {
            ids_from: 3 * START_MS as u64,
            ..Options::default()
        },
    );
    let events = collect(&mut built.runtime.resume(&run_id, false).unwrap()).await;
    assert_eq!(results_of(&events, "executePlan")[0]["entitiesAffected"], 2);
    let dispatches = host.dispatches.lock().unwrap().clone();
    assert_eq!(dispatches.len(), 1);
    assert_eq!(dispatches[0].3, 2);
    assert_eq!(dispatches[0].0.as_array().unwrap().len(), 2);
    assert_eq!(
        built.runtime.run(&run_id).unwrap().meta.status,
        RunStatus::Completed
    );
    built.runtime.verify(&run_id).await.unwrap();
}

#[tokio::test]
async fn a_tool_gate_resumes_with_the_recorded_predicate_answer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gates.redb");
    let tool = || {
        host_tool(
            "specialist",
            "search",
            json!({"type": "object"}),
            dynamic("ask"),
        )
    };
    let options = |ids_from: u64| Options {
        tools: vec![tool()],
        predicates: vec![String::from("ask")],
        ids_from,
        ..Options::default()
    };
    let (run_id, approval_id) = {
        let host = TestHost::new()
            .predicate("ask", true)
            .handler("search", |_| Ok(json!({"ok": true})));
        let (store, built) = open_with(&path, &host, always(), options(START_MS as u64));
        let mut stream = built
            .runtime
            .run_specialist(
                "specialist",
                &call("search", json!({"q": "a"})).to_string(),
                Some("t"),
                None,
            )
            .unwrap();
        let (_, approval_id) = until_approval(&mut stream).await;
        let run_id = stream.run_id().to_owned();
        drop(stream);
        built.runtime.close().unwrap();
        store.close().unwrap();
        assert_eq!(host.predicate_calls.lock().unwrap().len(), 1);
        assert_eq!(host.tool_call_count(), 0);
        (run_id, approval_id)
    };
    let host = TestHost::new()
        .predicate("ask", true)
        .handler("search", |_| Ok(json!({"ok": true})));
    let (_store, built) = open_with(&path, &host, always(), options(3 * START_MS as u64));
    built
        .runtime
        .respond_to_approval(&approval_id, decision("approve"))
        .await
        .unwrap();
    let events = collect(&mut built.runtime.resume(&run_id, false).unwrap()).await;
    assert_eq!(
        types(&events),
        [
            "approval-decision",
            "tool-invocation:result",
            "text",
            "finish",
            "tool-agent:result"
        ]
    );
    assert!(
        host.predicate_calls.lock().unwrap().is_empty(),
        "recorded answer used"
    );
    let calls = host.tool_calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    let started = records_of(&built.runtime, &run_id, "ToolCallStarted");
    assert_eq!(calls[0].2, format!("{run_id}:{}", started[0].0));
    assert_eq!(calls[0].3, 1);
    built.runtime.verify(&run_id).await.unwrap();
}

#[tokio::test]
async fn a_resumed_run_is_running_while_it_acts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gates.redb");
    let (run_id, approval_id) = suspend_at_plan_gate(&path).await;
    let hold = Arc::new(tokio::sync::Semaphore::new(0));
    let host = dispatching();
    let gate_host = GateHost::holding(Arc::clone(&host), Arc::clone(&hold));
    let store = Store::open(&path, Default::default()).unwrap();
    let built = build_gated(
        plans_spec("acme", always(), never()),
        gate_host.clone(),
        store,
        Options {
            ids_from: 3 * START_MS as u64,
            ..Options::default()
        },
    );
    built
        .runtime
        .respond_to_approval(&approval_id, decision("approve"))
        .await
        .unwrap();
    let mut resumed = built.runtime.resume(&run_id, false).unwrap();
    let reader = tokio::spawn(async move { collect(&mut resumed).await });
    gate_host.dispatch_waiting.acquire().await.unwrap().forget();
    let info = built.runtime.run(&run_id).unwrap();
    assert_eq!(
        info.meta.status,
        RunStatus::Running,
        "no longer waiting at a gate"
    );
    assert!(
        built.runtime.pending().unwrap().is_empty(),
        "driven here: nothing to do"
    );
    hold.add_permits(1);
    reader.await.unwrap();
    assert_eq!(
        built.runtime.run(&run_id).unwrap().meta.status,
        RunStatus::Completed
    );
}

/// The cancelled results a run cancelled at the demo flow's plan gate ends with: the
/// gated `executePlan`, then the `call_agent` that runs the executor (API.md §5.1, §5.5).
fn cancelled_results(events: &[Value]) -> Vec<(String, Value)> {
    events
        .iter()
        .filter(|e| e["type"] == "tool-invocation" && e["state"] == "result")
        .map(|e| {
            (
                e["toolName"].as_str().unwrap().to_owned(),
                e["result"].clone(),
            )
        })
        .skip_while(|(tool, _)| tool != "executePlan")
        .collect()
}

fn expected_cancelled_results() -> Vec<(String, Value)> {
    vec![
        (
            String::from("executePlan"),
            json!({"error": "Plan demo-plan-1 approval was cancelled"}),
        ),
        (
            String::from("call_agent"),
            json!({"error": "Sub-agent invocation cancelled"}),
        ),
    ]
}

#[tokio::test]
async fn a_run_cancelled_while_a_side_effect_runs_stops_after_it_and_verifies() {
    let hold = Arc::new(tokio::sync::Semaphore::new(0));
    let host = dispatching();
    let gate_host = GateHost::holding(Arc::clone(&host), Arc::clone(&hold));
    let built = build_gated(
        plans_spec("acme", never(), never()),
        gate_host.clone(),
        Store::in_memory().unwrap(),
        Options::default(),
    );
    let mut stream = built.runtime.query(&prompt(), "t1", None).unwrap();
    let run_id = stream.run_id().to_owned();
    let reader = tokio::spawn(async move { collect(&mut stream).await });
    gate_host.dispatch_waiting.acquire().await.unwrap().forget();
    built.runtime.cancel(&run_id).await.unwrap();
    hold.add_permits(1);
    let events = reader.await.unwrap();
    // The dispatch under way finishes and is recorded; nothing after it runs, and the
    // executor's call_agent gets its cancelled result.
    let results: Vec<(String, Value)> = events
        .iter()
        .filter(|e| e["type"] == "tool-invocation" && e["state"] == "result")
        .map(|e| {
            (
                e["toolName"].as_str().unwrap().to_owned(),
                e["result"].clone(),
            )
        })
        .skip(2)
        .collect();
    assert_eq!(results.len(), 2, "{events:?}");
    assert_eq!(results[0].0, "executePlan");
    assert_eq!(results[0].1["entitiesAffected"], 2, "{:?}", results[0]);
    assert_eq!(
        results[1],
        (
            String::from("call_agent"),
            json!({"error": "Sub-agent invocation cancelled"})
        )
    );
    let last = events.last().unwrap();
    assert_eq!(
        (&last["toolName"], &last["state"]),
        (&json!("call_agent"), &json!("result")),
        "nothing follows the cancelled result: {events:?}"
    );
    assert_eq!(
        built.runtime.run(&run_id).unwrap().meta.status,
        RunStatus::Cancelled
    );
    assert_eq!(host.dispatch_count(), 1);
    assert_eq!(
        event_values(&built.runtime.replay_events(&run_id).unwrap()),
        events
    );
    built.runtime.verify(&run_id).await.unwrap();
}

/// Before cancelled calls got results, a run cancelled at its gate ended with the
/// cancelled decision and RunCancelled alone; such a journal still verifies.
#[tokio::test]
async fn a_journal_cancelled_at_its_gate_without_results_still_verifies() {
    use flowai_storage::payloads::{self, Payload};
    use flowai_storage::{
        AppendRequest, ApprovalStatus, IndexUpdate, Precondition, Record, RunAppend,
    };
    fn record<P: Payload>(payload: &P) -> Record {
        Record {
            kind: P::KIND,
            version: P::VERSION,
            at_ms: START_MS,
            payload: serde_json::to_string(payload).unwrap(),
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gates.redb");
    let (run_id, approval_id) = suspend_at_plan_gate(&path).await;
    let store = Store::open(&path, Default::default()).unwrap();
    let run = run_id.parse().unwrap();
    store
        .append(AppendRequest {
            run: Some(RunAppend {
                run_id: run,
                expected_first_seq: None,
                records: vec![
                    record(&payloads::ApprovalDecided {
                        approval_id: approval_id.clone(),
                        kind: String::from("plan"),
                        target: String::from("demo-plan-1"),
                        outcome: String::from("cancelled"),
                        feedback: None,
                        partial: None,
                        origin: String::from("engine"),
                    }),
                    record(&payloads::RunCancelled {
                        origin: String::from("engine"),
                    }),
                ],
            }),
            index_updates: vec![
                IndexUpdate::SetApprovalStatus {
                    id: approval_id,
                    status: ApprovalStatus::Cancelled,
                },
                IndexUpdate::SetRunStatus {
                    run_id: run,
                    status: RunStatus::Cancelled,
                    at_ms: START_MS,
                },
            ],
            precondition: Precondition::None,
        })
        .await
        .unwrap();
    let host = dispatching();
    let built = build_gated(
        plans_spec("acme", always(), never()),
        GateHost::new(Arc::clone(&host)),
        store,
        Options::default(),
    );
    built.runtime.verify(&run_id).await.unwrap();
    let replayed = event_values(&built.runtime.replay_events(&run_id).unwrap());
    assert!(cancelled_results(&replayed).is_empty(), "{replayed:?}");
}

/// A run cancelled while a side effect runs, whose driver then stops before recording the
/// cancellation (here its runtime closes; a crash is the same, tested with SIGKILL from
/// Python): `cancel` returned, so the run ends cancelled, and nothing runs again. A
/// runtime built before that, asked to resume it, finishes the cancellation instead; one
/// built after finds it done.
#[tokio::test]
async fn a_cancel_acknowledged_during_a_side_effect_survives_its_driver() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gates.redb");
    let store = Store::open(&path, Default::default()).unwrap();
    let HeldDispatch {
        built: driving,
        run_id,
        host,
        reader,
    } = run_to_a_held_dispatch(store.clone()).await;
    let other = build_gated(
        plans_spec("acme", never(), never()),
        GateHost::new(Arc::clone(&host)),
        store.clone(),
        Options::default(),
    );
    driving.runtime.cancel(&run_id).await.unwrap();
    // The dispatcher never returns: the driver stops inside the side effect.
    driving.runtime.close().unwrap();
    let _ = reader.await;
    assert_eq!(
        other.runtime.run(&run_id).unwrap().meta.status,
        RunStatus::Interrupted
    );
    let resumed = other.runtime.resume(&run_id, false).err().unwrap();
    assert_eq!(resumed.to_string(), format!("run {run_id} is cancelled"));
    assert_eq!(
        other.runtime.run(&run_id).unwrap().meta.status,
        RunStatus::Cancelled
    );
    assert_eq!(
        record_kinds(&other.runtime, &run_id).last(),
        Some(&"RunCancelled")
    );
    assert_eq!(
        host.dispatch_count(),
        0,
        "the held dispatch never ran, nor again"
    );
    other.runtime.verify(&run_id).await.unwrap();

    let later = build_gated(
        plans_spec("acme", never(), never()),
        GateHost::new(Arc::clone(&host)),
        store,
        Options::default(),
    );
    assert_eq!(
        later.runtime.run(&run_id).unwrap().meta.status,
        RunStatus::Cancelled
    );
    assert!(later.runtime.pending().unwrap().is_empty());
}
