//! Non-determinism: a run recorded under one spec, re-driven by a runtime that decides
//! differently, fails with a structured error naming the run, seq, and both commands.

use flowai_runtime::{EngineError, Runtime};
use flowai_storage::{Store, StoreOptions};
use serde_json::{Value, json};

use crate::goldens::{
    search_host, specialist_setup, two_agents_host, two_agents_prompt, two_agents_setup,
};
use crate::support::*;

/// The seq of the first record of `kind`.
fn seq_of(rt: &Runtime, run: &str, kind: &str) -> u64 {
    rt.journal(run, 0)
        .unwrap()
        .iter()
        .find(|e| e.kind == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
        .seq
}

/// A second runtime over the same store, with its own ids.
fn other(setup: &Setup, store: &Store, change: impl FnOnce(&mut Setup)) -> Runtime {
    let mut setup = setup.clone();
    setup.ids_from += 1_000_000;
    change(&mut setup);
    setup
        .build(
            two_agents_host().simple("publish", |_| json!({})),
            store.clone(),
        )
        .runtime
}

fn nondeterminism(err: EngineError) -> (String, u64, String, String) {
    match err {
        EngineError::NonDeterminism {
            run,
            seq,
            recorded,
            actual,
        } => (run, seq, recorded, actual),
        other => panic!("expected NonDeterminism, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_route_is_a_spec_mismatch_then_a_divergence_at_the_sub_agent() {
    let setup = two_agents_setup();
    let store = Store::in_memory().unwrap();
    let rt = setup.build(two_agents_host(), store.clone()).runtime;
    let mut stream = rt.query(&two_agents_prompt(), "t1", None).unwrap();
    collect(&mut stream).await;
    let run = stream.run_id().to_owned();
    rt.verify(&run).await.unwrap();

    let changed = other(&setup, &store, |s| {
        s.spec["agents"][0]["routes"] = json!(["writer"]);
    });
    match changed.verify(&run).await.unwrap_err() {
        EngineError::SpecMismatch {
            run: r,
            recorded,
            current,
            path,
        } => {
            assert_eq!(r, run);
            assert_eq!(recorded, rt.spec_hash());
            assert_eq!(current, changed.spec_hash());
            assert_eq!(path, "runtimeSpec.agents[0].routes[0]");
        }
        other => panic!("expected SpecMismatch, got {other:?}"),
    }
    let (r, seq, recorded, actual) =
        nondeterminism(changed.verify_with(&run, true).await.unwrap_err());
    assert_eq!(r, run);
    // call_agent no longer reaches the researcher: the recorded invocation is where it parts.
    let invoked = rt
        .journal(&run, 0)
        .unwrap()
        .into_iter()
        .find(|e| e.kind == "AgentInvoked" && e.data["agent"] == "researcher")
        .unwrap();
    assert_eq!(seq, invoked.seq);
    assert!(
        recorded.contains("AgentInvoked") && recorded.contains("researcher"),
        "{recorded}"
    );
    assert!(actual.contains("ToolCallCompleted"), "{actual}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_rule_that_appears_or_disappears_diverges_at_the_gate() {
    let mut setup = specialist_setup();
    setup.tools.push(host_tool(
        "specialist",
        "publish",
        json!({"type": "object"}),
        json!({"kind": "always"}),
    ));
    let store = Store::in_memory().unwrap();
    let host = search_host().simple("publish", |_| json!({"published": true}));
    let rt = setup.build(host, store.clone()).runtime;
    let prompt = json!({"script": [
        {"tool": "search", "args": {"q": "lamps"}},
        {"tool": "publish", "args": {}},
    ]})
    .to_string();
    let mut stream = rt
        .run_specialist("specialist", &prompt, Some("t1"), None)
        .unwrap();
    drive_answering(&rt, &mut stream, "approve").await;
    let run = stream.run_id().to_owned();
    rt.verify(&run).await.unwrap();

    // `search` now needs approval: the recorded attempt is where the gate would ask.
    let gated = other(&setup, &store, |s| {
        s.tools[0].approval = flowai_runtime::ApprovalRule::Always
    });
    let (_, seq, recorded, actual) =
        nondeterminism(gated.verify_with(&run, true).await.unwrap_err());
    assert_eq!(seq, seq_of(&rt, &run, "AttemptStarted"));
    assert!(recorded.contains("AttemptStarted"), "{recorded}");
    assert!(actual.contains("ApprovalRequested"), "{actual}");

    // `publish` no longer needs approval: the recorded request is where the handler would run.
    let open = other(&setup, &store, |s| {
        s.tools[1].approval = flowai_runtime::ApprovalRule::Never
    });
    let (_, seq, recorded, actual) =
        nondeterminism(open.verify_with(&run, true).await.unwrap_err());
    assert_eq!(seq, seq_of(&rt, &run, "ApprovalRequested"));
    assert!(recorded.contains("ApprovalRequested"), "{recorded}");
    assert!(
        actual.contains("run the handler of tool publish"),
        "{actual}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stricter_input_schema_diverges_where_the_handler_ran() {
    let setup = specialist_setup();
    let store = Store::in_memory().unwrap();
    let rt = setup.build(search_host(), store.clone()).runtime;
    let prompt = json!({"tool": "search", "args": {"q": "lamps"}}).to_string();
    let mut stream = rt
        .run_specialist("specialist", &prompt, Some("t1"), None)
        .unwrap();
    collect(&mut stream).await;
    let run = stream.run_id().to_owned();
    let strict = other(&setup, &store, |s| {
        s.tools[0].input_schema =
            json!({"type": "object", "properties": {"q": {"type": "integer"}}});
    });
    let (_, seq, recorded, actual) =
        nondeterminism(strict.verify_with(&run, true).await.unwrap_err());
    assert_eq!(seq, seq_of(&rt, &run, "AttemptStarted"));
    assert!(recorded.contains("AttemptStarted"), "{recorded}");
    assert!(actual.contains("ToolCallCompleted"), "{actual}");

    // The other way round: recorded as invalid input (the handler never ran), now valid.
    let strict_setup = {
        let mut s = setup.clone();
        s.ids_from += 2_000_000;
        s.tools[0].input_schema =
            json!({"type": "object", "properties": {"q": {"type": "integer"}}});
        s
    };
    let strict = strict_setup.build(search_host(), store.clone()).runtime;
    let mut stream = strict
        .run_specialist("specialist", &prompt, Some("t2"), None)
        .unwrap();
    collect(&mut stream).await;
    let rejected = stream.run_id().to_owned();
    strict.verify(&rejected).await.unwrap();
    let lax = other(&strict_setup, &store, |s| {
        s.tools[0].input_schema = json!({"type": "object"})
    });
    let (_, seq, recorded, actual) =
        nondeterminism(lax.verify_with(&rejected, true).await.unwrap_err());
    assert_eq!(seq, seq_of(&strict, &rejected, "ToolCallCompleted"));
    assert!(recorded.contains("ToolCallCompleted"), "{recorded}");
    assert!(
        actual.contains("run the handler of tool search"),
        "{actual}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_under_a_changed_spec_needs_allow_and_is_still_checked() {
    let mut setup = specialist_setup();
    setup.tools.push(host_tool(
        "specialist",
        "publish",
        json!({"type": "object"}),
        json!({"kind": "always"}),
    ));
    let store = Store::in_memory().unwrap();
    let host = search_host().simple("publish", |_| json!({"published": true}));
    let first = setup.build(host, store.clone()).runtime;
    let prompt = json!({"script": [
        {"tool": "search", "args": {"q": "lamps"}},
        {"tool": "publish", "args": {}},
    ]})
    .to_string();
    let mut stream = first
        .run_specialist("specialist", &prompt, Some("t1"), None)
        .unwrap();
    let (_, approval) = until_approval(&mut stream).await;
    let run = stream.run_id().to_owned();
    drop(stream);
    first.close().unwrap();

    // A harmless change (another agent's prompt): refused without allow, fine with it.
    let reworded = other(&setup, &store, |s| {
        s.spec["agents"][0]["systemPrompt"] = json!("You coordinate, briefly.");
    });
    match reworded.resume(&run, false) {
        Err(EngineError::SpecMismatch { path, .. }) => {
            assert_eq!(path, "runtimeSpec.agents[0].systemPrompt");
        }
        Err(other) => panic!("expected SpecMismatch, got {other:?}"),
        Ok(_) => panic!("expected SpecMismatch"),
    }
    // A change that decides differently: resume with allow fails at the divergence.
    let ungated = other(&setup, &store, |s| {
        s.tools[1].approval = flowai_runtime::ApprovalRule::Never
    });
    let mut resumed = ungated.resume(&run, true).unwrap();
    let mut failure = None;
    while let Some(item) = resumed.next().await {
        if let Err(e) = item {
            failure = Some(e);
        }
    }
    let (_, seq, _, _) = nondeterminism(failure.expect("resume reports the divergence"));
    assert_eq!(seq, seq_of(&first, &run, "ApprovalRequested"));
    ungated.close().unwrap();

    let mut resumed = reworded.resume(&run, true).unwrap();
    // The run waits again for the same approval.
    let reader = tokio::spawn(async move { collect(&mut resumed).await });
    let mut answered = false;
    for _ in 0..1000 {
        match reworded
            .respond_to_approval(&approval, decision("approve"))
            .await
        {
            Ok(()) => {
                answered = true;
                break;
            }
            Err(_) => tokio::task::yield_now().await,
        }
    }
    assert!(answered);
    let events = reader.await.unwrap();
    assert_eq!(events.last().unwrap()["type"], "tool-agent");
    assert_eq!(
        reworded.run(&run).unwrap().meta.status,
        flowai_storage::RunStatus::Completed
    );
}

/// `flowai verify --spec FILE`: the same document passes, a changed one fails with exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_verify_against_a_spec_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.redb");
    let setup = two_agents_setup();
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let rt = setup.build(two_agents_host(), store.clone()).runtime;
    let mut stream = rt.query(&two_agents_prompt(), "t1", None).unwrap();
    collect(&mut stream).await;
    let same: Value = serde_json::from_str(rt.recorded_spec_json()).unwrap();
    rt.close().unwrap();
    store.close().unwrap();
    let mut changed = same.clone();
    changed["runtimeSpec"]["agents"][0]["routes"] = json!(["writer"]);
    let same_file = dir.path().join("same.json");
    let changed_file = dir.path().join("changed.json");
    std::fs::write(&same_file, same.to_string()).unwrap();
    std::fs::write(&changed_file, changed.to_string()).unwrap();
    let run = |spec: &std::path::Path| {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = flowai_replay::run_with_io(
            [
                "flowai".as_ref(),
                "verify".as_ref(),
                path.as_os_str(),
                "--spec".as_ref(),
                spec.as_os_str(),
            ],
            &mut out,
            &mut err,
        );
        (code, String::from_utf8(err).unwrap())
    };
    assert_eq!(run(&same_file).0, 0);
    let (code, err) = run(&changed_file);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("non-determinism in run"), "{err}");
    assert!(err.contains("researcher"), "{err}");
}
