//! End-to-end runs through the driver with a Rust test host (API.md §3, §4, §5.1, §5.7).
#![allow(clippy::unwrap_used)]

mod support;

use flowai_runtime::InterpreterChoice;
use flowai_storage::{RunStatus, Store};
use serde_json::{Value, json};
use support::*;

fn coordinator_spec() -> Value {
    spec(
        "acme",
        vec![
            agent("coordinator", "coordinator", &["planner", "specialist"]),
            agent("planner", "planner", &[]),
            agent("specialist", "specialist", &[]),
        ],
    )
}

/// A runtime of `coordinator_spec` under the scripted interpreter whose specialist has one
/// host tool, `search` (any object, never gated).
fn scripted_search(host: &std::sync::Arc<TestHost>, store: Store) -> Built {
    let search = host_tool(
        "specialist",
        "search",
        json!({"type": "object"}),
        json!({"kind": "never"}),
    );
    build(
        coordinator_spec(),
        vec![search],
        host.clone(),
        store,
        InterpreterChoice::Scripted,
    )
    .unwrap()
}

#[tokio::test]
async fn noop_query_yields_agent_bracket_and_one_turn() {
    let built = build(
        coordinator_spec(),
        vec![],
        TestHost::new(),
        Store::in_memory().unwrap(),
        InterpreterChoice::Noop,
    )
    .unwrap();
    let mut stream = built.runtime.query("hello", "t1", None).unwrap();
    let events = collect(&mut stream).await;
    assert_eq!(
        types(&events),
        [
            "tool-agent:call",
            "step-start",
            "finish",
            "tool-agent:result"
        ]
    );
    assert_eq!(events[0]["agentName"], "coordinator");
    assert!(
        events[0]["toolInvocationId"]
            .as_str()
            .unwrap()
            .starts_with("inv-")
    );
    assert_eq!(events[2]["finishReason"], "stop");
    assert_eq!(events[2]["usage"]["totalTokens"], 0);
    let info = built.runtime.run(stream.run_id()).unwrap();
    assert_eq!(info.meta.status, RunStatus::Completed);
}

#[tokio::test]
async fn mock_response_is_one_text_event() {
    let built = build(
        coordinator_spec(),
        vec![],
        TestHost::new(),
        Store::in_memory().unwrap(),
        InterpreterChoice::Mock(String::from("canned")),
    )
    .unwrap();
    let mut stream = built.runtime.query("hi", "t1", None).unwrap();
    let events = collect(&mut stream).await;
    assert_eq!(
        types(&events),
        [
            "tool-agent:call",
            "step-start",
            "text",
            "finish",
            "tool-agent:result"
        ]
    );
    assert_eq!(events[2]["text"], "canned");
}

#[tokio::test]
async fn scripted_specialist_calls_host_tool_once_per_call() {
    let host = TestHost::new().handler("search", |args| Ok(json!({"hits": [args["q"].clone()]})));
    let built = build(
        coordinator_spec(),
        vec![host_tool(
            "specialist",
            "search",
            json!({"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}),
            json!({"kind": "never"}),
        )],
        host.clone(),
        Store::in_memory().unwrap(),
        InterpreterChoice::Scripted,
    )
    .unwrap();
    let prompt = r#"{"script": [{"tool": "search", "args": {"q": "a"}}, {"tool": "search", "args": {"q": 5}}, {"tool": "nope"}]}"#;
    let mut stream = built
        .runtime
        .run_specialist("specialist", prompt, Some("t1"), None)
        .unwrap();
    let events = collect(&mut stream).await;
    assert_eq!(
        types(&events),
        [
            "tool-agent:call",
            "step-start",
            "tool-invocation:call",
            "tool-invocation:result",
            "text",
            "tool-invocation:call",
            "tool-invocation:result",
            "tool-invocation:call",
            "tool-invocation:result",
            "finish",
            "tool-agent:result"
        ]
    );
    assert_eq!(events[2]["toolInvocationId"], "scripted-tool-1");
    assert_eq!(events[3]["result"], json!({"hits": ["a"]}));
    assert_eq!(events[4]["text"], r#"{"hits":["a"]}"#);
    assert!(
        events[6]["result"]["error"]
            .as_str()
            .unwrap()
            .starts_with("Invalid input: ")
    );
    assert_eq!(events[8]["result"], json!({"error": "Unknown tool: nope"}));
    assert_eq!(
        host.tool_call_count(),
        1,
        "invalid input never reaches the handler"
    );
    let calls = host.tool_calls.lock().unwrap().clone();
    assert_eq!(calls[0].2, format!("{}:{}", stream.run_id(), 4));
    assert_eq!(calls[0].3, 1);
}

#[tokio::test]
async fn request_level_errors_are_single_error_events() {
    let no_coordinator = spec("acme", vec![agent("solo", "specialist", &[])]);
    let built = build(
        no_coordinator,
        vec![],
        TestHost::new(),
        Store::in_memory().unwrap(),
        InterpreterChoice::Noop,
    )
    .unwrap();
    let events = collect(&mut built.runtime.query("x", "t", None).unwrap()).await;
    assert_eq!(
        events,
        vec![
            json!({"type": "error", "error": {"message": "no coordinator agent registered in the spec"}})
        ]
    );
    let events = collect(
        &mut built
            .runtime
            .run_specialist("ghost", "x", None, None)
            .unwrap(),
    )
    .await;
    assert_eq!(
        events[0]["error"]["message"],
        "specialist 'ghost' not found"
    );
    let built = build(
        coordinator_spec(),
        vec![],
        TestHost::new(),
        Store::in_memory().unwrap(),
        InterpreterChoice::Noop,
    )
    .unwrap();
    let events = collect(
        &mut built
            .runtime
            .run_specialist("planner", "x", None, None)
            .unwrap(),
    )
    .await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0]["error"]["message"],
        "agent 'planner' is not a specialist"
    );
}

#[tokio::test]
async fn scripted_without_tools_fails_the_agent() {
    let built = build(
        coordinator_spec(),
        vec![],
        TestHost::new(),
        Store::in_memory().unwrap(),
        InterpreterChoice::Scripted,
    )
    .unwrap();
    let events = collect(
        &mut built
            .runtime
            .run_specialist("specialist", r#"{"tool": "x"}"#, None, None)
            .unwrap(),
    )
    .await;
    assert_eq!(
        types(&events),
        ["tool-agent:call", "step-start", "error", "error"]
    );
    assert_eq!(
        events[2]["error"]["message"],
        "scripted interpreter has no dispatcher"
    );
    assert_eq!(
        events[3]["error"]["message"],
        "agent failed: scripted interpreter has no dispatcher"
    );
}

#[tokio::test]
async fn coordinator_routes_to_sub_agents_on_derived_threads() {
    let built = build(
        coordinator_spec(),
        vec![],
        TestHost::new(),
        Store::in_memory().unwrap(),
        InterpreterChoice::Scripted,
    )
    .unwrap();
    let prompt = json!({"script": [
        {"tool": "call_agent", "args": {"agent": "specialist", "prompt": "plain words"}},
        {"tool": "call_agent", "args": {"agent": "ghost", "prompt": "x"}},
        {"tool": "call_agent", "args": {"prompt": "x"}},
    ]})
    .to_string();
    let mut stream = built.runtime.query(&prompt, "t9", None).unwrap();
    let events = collect(&mut stream).await;
    assert_eq!(
        types(&events),
        [
            "tool-agent:call",
            "step-start",
            "tool-invocation:call",
            "tool-agent:call",
            "step-start",
            "text",
            "finish",
            "tool-agent:result",
            "tool-invocation:result",
            "text",
            "tool-invocation:call",
            "tool-invocation:result",
            "tool-invocation:call",
            "tool-invocation:result",
            "finish",
            "tool-agent:result"
        ]
    );
    assert_eq!(events[3]["toolInvocationId"], "scripted-tool-1");
    assert_eq!(
        events[8]["result"],
        json!({"agent": "specialist", "model": "claude-sonnet-4-6", "response": "plain words"})
    );
    assert_eq!(
        events[11]["result"]["error"],
        r#"Agent 'ghost' is not in this caller's allowed routes: ["planner","specialist"]"#
    );
    assert_eq!(events[13]["result"]["error"], "Missing 'agent' name string");
}

/// `journal_text` (what the Python binding parses) holds exactly `journal`'s entries,
/// keys in the order API.md §9.2 lists them, payload values as recorded.
#[tokio::test]
async fn the_journal_text_is_the_journal() {
    let host = TestHost::new().handler("search", |_| {
        Ok(json!({"price": 1.5, "big": 12345678901234567890u64, "note": "é \"quoted\"\n"}))
    });
    let store = Store::in_memory().unwrap();
    let built = build(
        coordinator_spec(),
        vec![host_tool(
            "specialist",
            "search",
            json!({"type": "object"}),
            json!({"kind": "never"}),
        )],
        host,
        store.clone(),
        InterpreterChoice::Scripted,
    )
    .unwrap();
    let specialist = json!({"tool": "search", "args": {"q": "ünïcode"}}).to_string();
    let prompt = json!({"script": [
        {"tool": "call_agent", "args": {"agent": "specialist", "prompt": specialist}},
        {"tool": "call_agent", "args": {"agent": "ghost", "prompt": "x"}},
    ]})
    .to_string();
    let mut stream = built.runtime.query(&prompt, "t1", None).unwrap();
    collect(&mut stream).await;
    let run = stream.run_id();
    let entries = built.runtime.journal(run, 0).unwrap();
    assert!(entries.len() > 10, "{} entries", entries.len());
    for since in [0, 1, 5, entries.len() as u64] {
        let text = built.runtime.journal_text(run, since).unwrap();
        let parsed: Value = serde_json::from_str(&text).unwrap();
        let expected: Vec<Value> = entries[since as usize..]
            .iter()
            .map(|e| e.to_json())
            .collect();
        assert_eq!(parsed, Value::Array(expected), "since {since}");
    }
    let text = built.runtime.journal_text(run, 0).unwrap();
    assert!(
        text.starts_with(r#"[{"seq":1,"kind":"RunStarted","at":""#),
        "{text}"
    );
    assert!(text.contains(r#""big":12345678901234567890,"#), "{text}");
    assert!(text.contains(r#""price":1.5}"#), "{text}");
    assert_eq!(
        built
            .runtime
            .journal_text("01ARZ3NDEKTSV4RRFFQ69G5FAV", 0)
            .unwrap_err()
            .to_string(),
        built
            .runtime
            .journal("01ARZ3NDEKTSV4RRFFQ69G5FAV", 0)
            .unwrap_err()
            .to_string()
    );

    // A payload that is not JSON is refused by both, naming the record.
    store
        .append_blocking(flowai_storage::AppendRequest {
            run: Some(flowai_storage::RunAppend {
                run_id: run.parse().unwrap(),
                expected_first_seq: None,
                records: vec![flowai_storage::Record {
                    kind: flowai_storage::RecordKind::StreamEmitted,
                    version: 1,
                    at_ms: 0,
                    payload: String::from(r#"{"event": tru"#),
                }],
            }),
            index_updates: Vec::new(),
            precondition: flowai_storage::Precondition::None,
        })
        .unwrap();
    let corrupt = built.runtime.journal_text(run, 0).unwrap_err().to_string();
    assert_eq!(
        corrupt,
        built.runtime.journal(run, 0).unwrap_err().to_string()
    );
    assert!(corrupt.contains("StreamEmitted"), "{corrupt}");
}

#[tokio::test]
async fn restart_reads_back_the_same_journal_and_stream() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.redb");
    let host = TestHost::new().handler("search", |_| Ok(json!({"ok": true})));
    let (run_id, live, journal) = {
        let store = Store::open(&path, Default::default()).unwrap();
        let built = scripted_search(&host, store.clone());
        let mut stream = built
            .runtime
            .run_specialist(
                "specialist",
                r#"{"tool": "search", "args": {}}"#,
                Some("t"),
                None,
            )
            .unwrap();
        let live = collect(&mut stream).await;
        let journal = built.runtime.journal(stream.run_id(), 0).unwrap();
        built.runtime.close().unwrap();
        store.close().unwrap();
        (stream.run_id().to_owned(), live, journal)
    };
    let store = Store::open(&path, Default::default()).unwrap();
    let built = scripted_search(&host, store);
    assert_eq!(built.runtime.journal(&run_id, 0).unwrap(), journal);
    let replayed = event_values(&built.runtime.replay_events(&run_id).unwrap());
    assert_eq!(replayed, live);
    built.runtime.verify(&run_id).await.unwrap();
}

#[tokio::test]
async fn cancelling_a_run_waiting_at_a_gate_resolves_its_approval() {
    let host = TestHost::new().handler("delete_all", |_| Ok(json!({"deleted": true})));
    let built = build(
        coordinator_spec(),
        vec![host_tool(
            "specialist",
            "delete_all",
            json!({"type": "object"}),
            json!({"kind": "always"}),
        )],
        host.clone(),
        Store::in_memory().unwrap(),
        InterpreterChoice::Scripted,
    )
    .unwrap();
    let mut stream = built
        .runtime
        .run_specialist(
            "specialist",
            r#"{"tool": "delete_all", "args": {}}"#,
            None,
            None,
        )
        .unwrap();
    let (_, approval) = until_approval(&mut stream).await;
    assert_eq!(
        built.runtime.run(stream.run_id()).unwrap().meta.status,
        RunStatus::Suspended
    );
    built.runtime.cancel(stream.run_id()).await.unwrap();
    assert_eq!(
        built.runtime.run(stream.run_id()).unwrap().meta.status,
        RunStatus::Cancelled,
        "durable by the time cancel returns"
    );
    let rest = collect(&mut stream).await;
    assert_eq!(
        rest,
        [json!({
            "type": "tool-invocation", "toolInvocationId": "scripted-tool-1",
            "toolName": "delete_all", "args": {}, "state": "result",
            "result": {"error": "Cancelled while awaiting approval"},
        })],
        "a cancelled run gives the gated call its result, then emits nothing more"
    );
    assert_eq!(
        built.runtime.run(stream.run_id()).unwrap().meta.status,
        RunStatus::Cancelled
    );
    assert_eq!(host.tool_call_count(), 0, "the gated handler never ran");
    let err = built
        .runtime
        .respond_to_approval(&approval, decision("approve"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("approval already resolved: {approval}")
    );
    let kinds = record_kinds(&built.runtime, stream.run_id());
    assert_eq!(
        &kinds[kinds.len() - 3..],
        ["ApprovalDecided", "ToolCallCompleted", "RunCancelled"]
    );
    let err = built.runtime.resume(stream.run_id(), false).err().unwrap();
    assert_eq!(
        err.to_string(),
        format!("run {} is cancelled", stream.run_id())
    );
}

#[tokio::test]
async fn a_stream_cancelled_before_it_starts_records_a_cancelled_run() {
    let built = build(
        coordinator_spec(),
        vec![],
        TestHost::new(),
        Store::in_memory().unwrap(),
        InterpreterChoice::Noop,
    )
    .unwrap();
    let mut stream = built.runtime.query("x", "t", None).unwrap();
    stream.cancel();
    assert!(collect(&mut stream).await.is_empty());
    assert_eq!(
        built.runtime.run(stream.run_id()).unwrap().meta.status,
        RunStatus::Cancelled
    );
}

#[tokio::test]
async fn an_approval_reaches_the_driver_through_another_runtime_of_the_store() {
    let store = Store::in_memory().unwrap();
    let host = TestHost::new().handler("delete_all", |_| Ok(json!({"deleted": true})));
    let tools = || {
        vec![host_tool(
            "specialist",
            "delete_all",
            json!({"type": "object"}),
            json!({"kind": "always"}),
        )]
    };
    let driving = build(
        coordinator_spec(),
        tools(),
        host.clone(),
        store.clone(),
        InterpreterChoice::Scripted,
    )
    .unwrap();
    let other = build(
        coordinator_spec(),
        tools(),
        host.clone(),
        store.clone(),
        InterpreterChoice::Scripted,
    )
    .unwrap();
    let mut stream = driving
        .runtime
        .run_specialist(
            "specialist",
            r#"{"tool": "delete_all", "args": {}}"#,
            None,
            None,
        )
        .unwrap();
    let (_, approval) = until_approval(&mut stream).await;
    // The other runtime sees the run as driven: not pending, not resumable.
    assert!(other.runtime.pending().unwrap().is_empty());
    assert!(other.runtime.resume(stream.run_id(), false).is_err());
    other
        .runtime
        .respond_to_approval(&approval, decision("approve"))
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
    assert_eq!(host.tool_call_count(), 1);
    driving.runtime.verify(stream.run_id()).await.unwrap();
}

/// A panic inside the driver (here a host whose handler panics) ends the stream with an
/// error, not as if the run had finished; the run is `interrupted`, no longer taken for one
/// this runtime drives, and resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_driver_ends_the_stream_with_an_error() {
    let panics = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let host = TestHost::new().handler("search", {
        let panics = std::sync::Arc::clone(&panics);
        move |_| {
            if panics.load(std::sync::atomic::Ordering::SeqCst) {
                panic!("the handler's bug");
            }
            Ok(json!({"hits": []}))
        }
    });
    let built = build(
        coordinator_spec(),
        vec![host_tool(
            "specialist",
            "search",
            json!({"type": "object", "properties": {"q": {"type": "string"}}}),
            json!({"kind": "never"}),
        )],
        host,
        Store::in_memory().unwrap(),
        InterpreterChoice::Scripted,
    )
    .unwrap();
    let prompt = r#"{"script": [{"tool": "search", "args": {"q": "a"}}]}"#;
    let mut stream = built
        .runtime
        .run_specialist("specialist", prompt, Some("t1"), None)
        .unwrap();
    let mut error = None;
    while let Some(item) = stream.next().await {
        if let Err(e) = item {
            error = Some(e.to_string());
        }
    }
    let error = error.expect("the stream ended with an error");
    assert!(
        error.contains("the run's driver panicked: the handler's bug"),
        "{error}"
    );
    let info = built.runtime.run(stream.run_id()).unwrap();
    assert_eq!(info.meta.status, RunStatus::Interrupted);
    let pending: Vec<String> = built
        .runtime
        .pending()
        .unwrap()
        .iter()
        .map(|i| i.meta.run_id.to_string())
        .collect();
    assert_eq!(pending, [stream.run_id().to_owned()]);

    panics.store(false, std::sync::atomic::Ordering::SeqCst);
    let mut resumed = built.runtime.resume(stream.run_id(), false).unwrap();
    let events = collect(&mut resumed).await;
    assert!(types(&events).contains(&"tool-invocation:result".to_owned()));
    let info = built.runtime.run(stream.run_id()).unwrap();
    assert_eq!(info.meta.status, RunStatus::Completed);
}

/// A new run whose first commit finds its id taken (another runtime of this process created
/// it between the check and the commit) fails, and leaves that other run as it was: its
/// status is not this driver's to change.
#[tokio::test]
async fn a_run_whose_id_was_taken_in_between_leaves_the_other_run_alone() {
    let built = build(
        coordinator_spec(),
        vec![],
        TestHost::new(),
        Store::in_memory().unwrap(),
        InterpreterChoice::Noop,
    )
    .unwrap();
    let run_id = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    let mut stream = built
        .runtime
        .run_specialist("specialist", "hello", Some("t1"), Some(run_id))
        .unwrap();
    // The run starts on the first read; before it, another writer takes the id.
    let run: flowai_storage::RunId = run_id.parse().unwrap();
    built
        .runtime
        .store()
        .append_blocking(flowai_storage::AppendRequest {
            run: Some(flowai_storage::RunAppend {
                run_id: run,
                expected_first_seq: Some(1),
                records: vec![flowai_storage::Record {
                    kind: flowai_storage::RecordKind::RunStarted,
                    version: 1,
                    at_ms: 0,
                    payload: "{}".into(),
                }],
            }),
            index_updates: vec![flowai_storage::IndexUpdate::CreateRun(
                flowai_storage::RunMeta {
                    run_id: run,
                    tenant: "acme".into(),
                    thread: "other".into(),
                    agent: "specialist".into(),
                    status: RunStatus::Running,
                    created_at_ms: 0,
                    updated_at_ms: 0,
                    parent: None,
                },
            )],
            precondition: flowai_storage::Precondition::RunAbsent(run),
        })
        .unwrap();
    let mut failed = false;
    while let Some(item) = stream.next().await {
        failed |= item.is_err();
    }
    assert!(failed, "the run's first commit failed");
    let info = built.runtime.store().run(run).unwrap().unwrap();
    assert_eq!(info.meta.status, RunStatus::Running);
    assert_eq!(info.meta.thread, "other");
}

/// Builds before ddabc8c recorded a scripted call's arguments compact with sorted keys;
/// they are now kept as the prompt spells them. A journal in the old spelling still
/// verifies: the decision is compared as JSON, not as text.
#[tokio::test]
async fn a_scripted_decision_recorded_in_another_spelling_verifies() {
    use flowai_storage::{AppendRequest, IndexUpdate, Precondition, RunAppend, RunId, RunStatus};

    let host = TestHost::new().handler("search", |args| Ok(json!({"got": args})));
    let store = Store::in_memory().unwrap();
    let built = scripted_search(&host, store.clone());
    let prompt = r#"{"script": [{"tool": "search", "args": {"z": 1, "a": [2.5, "x"]}}]}"#;
    let mut stream = built
        .runtime
        .run_specialist("specialist", prompt, Some("t"), None)
        .unwrap();
    let live = collect(&mut stream).await;
    let run: RunId = stream.run_id().parse().unwrap();
    let records = store.records(run, 1).unwrap();
    let started = records
        .iter()
        .find(|r| r.record.kind.name() == "ToolCallStarted")
        .unwrap();
    assert!(
        started
            .record
            .payload
            .contains(r#"{"z": 1, "a": [2.5, "x"]}"#),
        "the arguments are journaled as the prompt spells them: {}",
        started.record.payload
    );

    // The same run in a second store, every payload re-serialized the way the older builds
    // wrote arguments (a value's compact text, keys sorted).
    let old = Store::in_memory().unwrap();
    let info = store.run(run).unwrap().unwrap();
    let respelled = records
        .into_iter()
        .map(|stored| {
            let mut record = stored.record;
            let value: Value = serde_json::from_str(&record.payload).unwrap();
            record.payload = serde_json::to_string(&value).unwrap();
            record
        })
        .collect::<Vec<_>>();
    assert!(
        respelled
            .iter()
            .any(|r| r.payload.contains(r#"{"a":[2.5,"x"],"z":1}"#))
    );
    old.append(AppendRequest {
        run: Some(RunAppend {
            run_id: run,
            expected_first_seq: Some(1),
            records: respelled,
        }),
        index_updates: vec![
            IndexUpdate::CreateRun(info.meta.clone()),
            IndexUpdate::SetRunStatus {
                run_id: run,
                status: RunStatus::Completed,
                at_ms: info.meta.updated_at_ms,
            },
            IndexUpdate::PutSpec {
                hash: built.runtime.spec_hash().to_owned(),
                json: built.runtime.recorded_spec_json().to_owned(),
            },
        ],
        precondition: Precondition::None,
    })
    .await
    .unwrap();
    let rebuilt = scripted_search(&host, old);
    rebuilt.runtime.verify(stream.run_id()).await.unwrap();
    let replayed = event_values(&rebuilt.runtime.replay_events(stream.run_id()).unwrap());
    assert_eq!(replayed.len(), live.len());
}
