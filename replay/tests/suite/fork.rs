//! Fork (API.md §9.4): a new run over a copied journal prefix, resumed live.

use std::collections::BTreeMap;

use flowai_replay::{ForkError, fork, fork_async};
use flowai_runtime::Runtime;
use flowai_storage::{RunStatus, Store, StoreOptions};
use serde_json::{Value, json};

use crate::goldens::{
    journals_dir, search_host, specialist_setup, two_agents_host, two_agents_prompt,
    two_agents_setup,
};
use crate::support::*;

/// Events with the ids a fork makes anew (the entry invocation id when the cut is before
/// it, approval ids) replaced by their order of appearance.
fn normalize(events: &[Value]) -> Vec<Value> {
    let mut ids: BTreeMap<String, String> = BTreeMap::new();
    let mut rename = |id: &str| -> String {
        let n = ids.len();
        ids.entry(id.to_owned())
            .or_insert_with(|| format!("id-{n}"))
            .clone()
    };
    events
        .iter()
        .map(|e| {
            let mut e = e.clone();
            if let Some(id) = e["toolInvocationId"]
                .as_str()
                .filter(|id| id.starts_with("inv-"))
            {
                e["toolInvocationId"] = json!(rename(id));
            }
            if let Some(id) = e["data"]["id"].as_str() {
                e["data"]["id"] = json!(rename(id));
            }
            e
        })
        .collect()
}

fn replay(runtime: &Runtime, run: &str) -> Vec<Value> {
    event_values(&runtime.replay_events(run).unwrap())
}

fn kinds(runtime: &Runtime, run: &str) -> Vec<&'static str> {
    runtime
        .journal(run, 0)
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_at_every_seq_resumes_to_the_same_stream() {
    let built = two_agents_setup().build(two_agents_host(), Store::in_memory().unwrap());
    let rt = &built.runtime;
    let mut stream = rt.query(&two_agents_prompt(), "t1", None).unwrap();
    collect(&mut stream).await;
    let original = stream.run_id().to_owned();
    let journal = rt.journal(&original, 0).unwrap();
    let expected = normalize(&replay(rt, &original));
    let n = journal.len() as u64;
    assert!(n > 20, "a multi-agent run has many records: {n}");
    // Host calls of the original: (ToolCallStarted seq, ToolCallCompleted seq).
    let host_calls: Vec<(u64, u64)> = journal
        .iter()
        .filter(|e| e.kind == "AttemptStarted")
        .map(|a| {
            let call = a.data["callSeq"].as_u64().unwrap();
            let done = journal
                .iter()
                .find(|e| e.kind == "ToolCallCompleted" && e.data["callSeq"] == call)
                .unwrap();
            (call, done.seq)
        })
        .collect();
    assert_eq!(host_calls.len(), 2);

    for at_seq in 1..=n {
        let forked = fork(rt, &original, at_seq, None).unwrap();
        let info = rt.run(&forked).unwrap();
        assert_eq!(info.meta.status, RunStatus::Interrupted);
        assert_eq!(info.meta.parent, Some((original.parse().unwrap(), at_seq)));
        assert!(
            rt.pending()
                .unwrap()
                .iter()
                .any(|r| r.meta.run_id == info.meta.run_id)
        );
        let started = &rt.journal(&forked, 0).unwrap()[0];
        assert_eq!(
            started.data["parent"],
            json!({"runId": original, "seq": at_seq})
        );
        assert_eq!(started.data["specHash"], rt.spec_hash());

        let calls_before = built.host.call_count();
        let mut resumed = rt.resume(&forked, false).unwrap();
        collect(&mut resumed).await;
        assert_eq!(
            rt.run(&forked).unwrap().meta.status,
            RunStatus::Completed,
            "at_seq {at_seq}"
        );
        assert_eq!(
            normalize(&replay(rt, &forked)),
            expected,
            "fork at seq {at_seq}"
        );
        rt.verify(&forked).await.unwrap();

        // Only effects whose outcome was cut off run again, as the fork's attempt 1.
        let made: Vec<(String, u32)> = built.host.calls.lock().unwrap()[calls_before..]
            .iter()
            .map(|c| (c.2.clone(), c.3))
            .collect();
        let wanted: Vec<(String, u32)> = host_calls
            .iter()
            .filter(|(_, done)| *done > at_seq)
            .map(|(call, _)| (format!("{forked}:{call}"), 1))
            .collect();
        assert_eq!(made, wanted, "fork at seq {at_seq}");
    }
    assert_eq!(
        rt.journal(&original, 0).unwrap(),
        journal,
        "the parent is untouched"
    );
    assert_eq!(rt.run(&original).unwrap().meta.status, RunStatus::Completed);
}

fn publish_setup() -> Setup {
    let mut setup = specialist_setup();
    setup.tools.push(host_tool(
        "specialist",
        "publish",
        json!({"type": "object"}),
        json!({"kind": "always"}),
    ));
    setup
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_before_a_decision_asks_again_with_a_fresh_id() {
    let host = search_host().simple("publish", |_| json!({"published": true}));
    let built = publish_setup().build(host, Store::in_memory().unwrap());
    let rt = &built.runtime;
    let prompt = json!({"script": [
        {"tool": "search", "args": {"q": "lamps"}},
        {"tool": "publish", "args": {"title": "lamps"}},
    ]})
    .to_string();
    let mut stream = rt
        .run_specialist("specialist", &prompt, Some("t1"), None)
        .unwrap();
    let events = drive_answering(rt, &mut stream, "approve").await;
    let original = stream.run_id().to_owned();
    let old_id = events
        .iter()
        .find(|e| e["type"] == "approval-required")
        .unwrap()["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let journal = rt.journal(&original, 0).unwrap();
    let requested = journal
        .iter()
        .find(|e| e.kind == "ApprovalRequested")
        .unwrap()
        .seq;
    assert_eq!(journal[requested as usize].kind, "ApprovalDecided");

    // Cut between the request and its decision: the request is not copied.
    let forked = fork(rt, &original, requested, None).unwrap();
    let copied = kinds(rt, &forked);
    assert_eq!(copied.len() as u64, requested - 1);
    assert!(!copied.contains(&"ApprovalRequested"));
    let old_row = built.store.approval(&old_id).unwrap().unwrap();
    assert_eq!(
        old_row.run_id.to_string(),
        original,
        "the parent keeps its approval row"
    );

    let mut resumed = rt.resume(&forked, false).unwrap();
    let (_, new_id) = until_approval(&mut resumed).await;
    assert_ne!(new_id, old_id);
    let new_row = built.store.approval(&new_id).unwrap().unwrap();
    assert_eq!(new_row.run_id.to_string(), forked);
    assert_eq!(
        rt.run(&forked).unwrap().pending_approvals,
        vec![new_id.clone()]
    );
    // A different answer this time.
    rt.respond_to_approval(&new_id, decision("reject"))
        .await
        .unwrap();
    collect(&mut resumed).await;
    assert_eq!(rt.run(&forked).unwrap().meta.status, RunStatus::Completed);
    let replayed = replay(rt, &forked);
    let publish_result = replayed
        .iter()
        .find(|e| e["toolName"] == "publish" && e["state"] == "result")
        .unwrap();
    assert_eq!(publish_result["result"]["error"], "approval_rejected");
    assert_eq!(
        built
            .host
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.0 == "publish")
            .count(),
        1
    );

    // Cut after the decision: nothing is asked again and the run ends as the original.
    let forked = fork(rt, &original, requested + 1, None).unwrap();
    let mut resumed = rt.resume(&forked, false).unwrap();
    let events = collect(&mut resumed).await;
    assert!(events.iter().all(|e| e["type"] != "approval-required"));
    assert_eq!(replay(rt, &forked), replay(rt, &original));
    assert_eq!(rt.journal(&original, 0).unwrap(), journal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_with_a_new_prompt() {
    let built = specialist_setup().build(search_host(), Store::in_memory().unwrap());
    let rt = &built.runtime;
    let old = json!({"tool": "search", "args": {"q": "lamps"}}).to_string();
    let new = json!({"tool": "search", "args": {"q": "desks"}}).to_string();
    let mut stream = rt
        .run_specialist("specialist", &old, Some("t1"), None)
        .unwrap();
    collect(&mut stream).await;
    let original = stream.run_id().to_owned();
    let journal = rt.journal(&original, 0).unwrap();
    let model = journal
        .iter()
        .find(|e| e.kind == "ModelResponded")
        .unwrap()
        .seq;

    let err = fork(rt, &original, model, Some(&new)).unwrap_err();
    assert!(matches!(err, ForkError::PromptAfterModelRequest(seq) if seq == model));
    assert_eq!(
        err.to_string(),
        format!("fork with a new prompt must cut before seq {model}")
    );

    for at_seq in 1..model {
        let forked = fork_async(rt, &original, at_seq, Some(&new)).await.unwrap();
        let copied = rt.journal(&forked, 0).unwrap();
        assert_eq!(copied[0].data["prompt"], new.as_str());
        if at_seq >= 2 {
            assert_eq!(copied[1].kind, "AgentInvoked");
            assert_eq!(
                copied[1].data.get("prompt"),
                None,
                "the entry agent's prompt is RunStarted's alone"
            );
        }
        let mut resumed = rt.resume(&forked, false).unwrap();
        collect(&mut resumed).await;
        let replayed = replay(rt, &forked);
        let result = replayed.iter().find(|e| e["state"] == "result").unwrap();
        assert_eq!(result["args"], json!({"q": "desks"}));
        assert_eq!(result["result"]["hits"], json!(["desks-1", "desks-2"]));
        rt.verify(&forked).await.unwrap();
    }
    assert_eq!(rt.journal(&original, 0).unwrap(), journal);
}

/// A journal written before AgentInvoked version 2 (fixtures/journals/agent_invoked_v1.redb)
/// repeats the entry prompt in its AgentInvoked. It still verifies, and a fork with a new
/// prompt rewrites that copy too, so that the resumed fork agrees with its own RunStarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_with_a_new_prompt_of_a_version_1_journal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.redb");
    std::fs::copy(journals_dir().join("agent_invoked_v1.redb"), &path).unwrap();
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let [original] = &flowai_replay::list_runs(&store, None, None).unwrap()[..] else {
        panic!("the fixture holds one run");
    };
    let original_id = original.meta.run_id;
    let original = original_id.to_string();
    let versions = |run| -> Vec<u16> {
        let records = store.records(run, 1).unwrap();
        records.iter().map(|r| r.record.version).collect()
    };
    assert_eq!(
        versions(original_id)[1],
        1,
        "the fixture's AgentInvoked is version 1"
    );
    let mut setup = specialist_setup();
    // The fixture's run took the ids a fresh runtime starts from.
    setup.ids_from += 1_000_000;
    let built = setup.build(search_host(), store.clone());
    let rt = &built.runtime;
    let journal = rt.journal(&original, 0).unwrap();
    assert_eq!(journal[1].kind, "AgentInvoked");
    assert_eq!(journal[1].data["prompt"], journal[0].data["prompt"]);
    rt.verify(&original).await.unwrap();

    let new = json!({"tool": "search", "args": {"q": "chairs"}}).to_string();
    let forked = fork_async(rt, &original, 2, Some(&new)).await.unwrap();
    let copied = rt.journal(&forked, 0).unwrap();
    assert_eq!(copied[0].data["prompt"], new.as_str());
    assert_eq!(
        copied[1].data["prompt"],
        new.as_str(),
        "the old copy is rewritten"
    );
    let mut resumed = rt.resume(&forked, false).unwrap();
    collect(&mut resumed).await;
    let replayed = replay(rt, &forked);
    let result = replayed.iter().find(|e| e["state"] == "result").unwrap();
    assert_eq!(result["result"]["hits"], json!(["chairs-1", "chairs-2"]));
    rt.verify(&forked).await.unwrap();
    assert_eq!(rt.journal(&original, 0).unwrap(), journal);

    let mut stream = rt
        .run_specialist("specialist", &new, Some("t2"), None)
        .unwrap();
    collect(&mut stream).await;
    let fresh = rt.journal(stream.run_id(), 0).unwrap();
    assert_eq!(fresh[1].kind, "AgentInvoked");
    assert_eq!(fresh[1].data.get("prompt"), None);
    let fresh_id = stream.run_id().parse().unwrap();
    assert_eq!(versions(fresh_id)[1], 2, "a new AgentInvoked is version 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_rejects_bad_cuts_and_foreign_runs() {
    let store = Store::in_memory().unwrap();
    let built = specialist_setup().build(search_host(), store.clone());
    let rt = &built.runtime;
    let prompt = json!({"tool": "search", "args": {"q": "a"}}).to_string();
    let mut stream = rt
        .run_specialist("specialist", &prompt, Some("t1"), None)
        .unwrap();
    collect(&mut stream).await;
    let run = stream.run_id().to_owned();
    let n = rt.run(&run).unwrap().records;
    for bad in [0, n + 1] {
        let err = fork(rt, &run, bad, None).unwrap_err();
        assert!(
            matches!(err, ForkError::AtSeqOutOfRange { at_seq, records, .. } if at_seq == bad && records == n)
        );
    }
    assert!(matches!(
        fork(rt, "nope", 1, None),
        Err(ForkError::RunNotFound(_))
    ));
    assert!(matches!(
        fork(rt, "01ARZ3NDEKTSV4RRFFQ69G5FAV", 1, None),
        Err(ForkError::RunNotFound(_))
    ));
    let mut other = specialist_setup();
    other.spec["tenant"]["resourceId"] = json!("other");
    other.ids_from += 1_000_000;
    let other = other.build(search_host(), store);
    assert!(matches!(
        fork(&other.runtime, &run, 1, None),
        Err(ForkError::RunNotFound(_))
    ));
    // Forking the whole run: the closing record is the fork's own to write.
    let whole = fork(rt, &run, n, None).unwrap();
    assert_eq!(rt.run(&whole).unwrap().records, n - 1);
    let mut resumed = rt.resume(&whole, false).unwrap();
    collect(&mut resumed).await;
    assert_eq!(rt.run(&whole).unwrap().meta.status, RunStatus::Completed);
    assert_eq!(replay(rt, &whole), replay(rt, &run));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_without_outcome_runs_again_under_the_forks_key() {
    let host = TestHost::new().handler("search", |args, _| Handled {
        result: Ok(json!({"saved": args["q"]})),
        references: vec![(
            String::from("ProductSet"),
            json!({"q": args["q"]}),
            json!({"q": args["q"]}),
        )],
    });
    let built = specialist_setup().build(host, Store::in_memory().unwrap());
    let rt = &built.runtime;
    let prompt = json!({"tool": "search", "args": {"q": "lamps"}}).to_string();
    let mut stream = rt
        .run_specialist("specialist", &prompt, Some("t1"), None)
        .unwrap();
    collect(&mut stream).await;
    let original = stream.run_id().to_owned();
    let journal = rt.journal(&original, 0).unwrap();
    let attempt = journal.iter().find(|e| e.kind == "AttemptStarted").unwrap();
    let call_seq = attempt.data["callSeq"].as_u64().unwrap();
    assert_eq!(
        attempt.data["idempotencyKey"],
        format!("{original}:{call_seq}")
    );
    let created = journal
        .iter()
        .find(|e| e.kind == "ReferenceCreated")
        .unwrap()
        .seq;
    assert_eq!(created, attempt.seq + 1);

    // Cut at the attempt, and inside it (after the handler's reference).
    for at_seq in [attempt.seq, created] {
        let forked = fork(rt, &original, at_seq, None).unwrap();
        assert_eq!(rt.run(&forked).unwrap().records, attempt.seq - 1);
        let before = built.host.call_count();
        let mut resumed = rt.resume(&forked, false).unwrap();
        collect(&mut resumed).await;
        let calls = built.host.calls.lock().unwrap()[before..].to_vec();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].2, format!("{forked}:{call_seq}"));
        assert_eq!(calls[0].3, 1, "the fork's own first attempt");
        assert_eq!(replay(rt, &forked), replay(rt, &original));
        rt.verify(&forked).await.unwrap();
        let redo = rt.journal(&forked, 0).unwrap();
        let redo = redo.iter().find(|e| e.kind == "AttemptStarted").unwrap();
        assert_eq!(redo.data["idempotencyKey"], format!("{forked}:{call_seq}"));
    }
}

/// Engine finding (reported to the lead): a resumed run is never marked `running`. It keeps
/// the status it had (`interrupted`, or `suspended` after an answer journaled from outside)
/// while it is driven, so `runs()` misreports it and `close()`, which interrupts only
/// `running` runs, leaves a run resumed from `suspended` marked `suspended`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_run_is_running_while_driven() {
    use std::sync::{Mutex, mpsc};

    let (entered_tx, entered_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let entered_tx = Mutex::new(entered_tx);
    let release_rx = Mutex::new(release_rx);
    let host = TestHost::new().handler("search", move |_, _| {
        let _ = entered_tx.lock().unwrap().send(());
        let _ = release_rx.lock().unwrap().recv();
        Handled::ok(json!({"ok": true}))
    });
    let built = specialist_setup().build(host, Store::in_memory().unwrap());
    let rt = &built.runtime;
    let prompt = json!({"tool": "search", "args": {"q": "a"}}).to_string();
    let mut stream = rt
        .run_specialist("specialist", &prompt, Some("t1"), None)
        .unwrap();
    let reader = tokio::spawn(async move { collect(&mut stream).await });
    let entered = tokio::task::spawn_blocking(move || {
        entered_rx.recv().unwrap();
        entered_rx
    })
    .await
    .unwrap();
    release_tx.send(()).unwrap();
    reader.await.unwrap();
    let original = rt.runs(None, None, 1).unwrap()[0].meta.run_id.to_string();

    let forked = fork(rt, &original, 1, None).unwrap();
    assert_eq!(rt.run(&forked).unwrap().meta.status, RunStatus::Interrupted);
    let mut resumed = rt.resume(&forked, false).unwrap();
    let reader = tokio::spawn(async move { collect(&mut resumed).await });
    let entered = tokio::task::spawn_blocking(move || {
        entered.recv().unwrap();
    });
    entered.await.unwrap();
    let status = rt.run(&forked).unwrap().meta.status;
    release_tx.send(()).unwrap();
    reader.await.unwrap();
    assert_eq!(
        status,
        RunStatus::Running,
        "status while the resumed run's handler runs"
    );
}
