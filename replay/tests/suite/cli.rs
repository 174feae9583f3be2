//! The `flowai` command over a store with completed, failed and suspended runs.

use std::path::Path;

use flowai_storage::{AppendRequest, IndexUpdate, Store, StoreOptions};
use serde_json::{Value, json};

use crate::goldens::{search_host, specialist_setup};
use crate::support::*;

/// Runs the command through the library; returns (exit code, stdout, stderr).
fn flowai(args: &[&str]) -> (i32, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut all = vec!["flowai"];
    all.extend_from_slice(args);
    let code = flowai_replay::run_with_io(all, &mut out, &mut err);
    (
        code,
        String::from_utf8(out).expect("utf-8"),
        String::from_utf8(err).expect("utf-8"),
    )
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: String,
    completed: String,
    failed: String,
    suspended: String,
    approval: String,
}

/// A store with three runs of tenant `acme`: completed, failed, suspended at an approval.
async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cli.redb");
    let store = Store::open(&path, StoreOptions::default()).expect("store");
    let mut setup = specialist_setup();
    setup.tools.push(host_tool(
        "specialist",
        "publish",
        json!({"type": "object"}),
        json!({"kind": "always"}),
    ));
    let host = search_host().simple("publish", |_| json!({"published": true}));
    let built = setup.build(host, store.clone());
    let script = json!({"script": [{"tool": "search", "args": {"q": "lamps"}}]}).to_string();
    let mut s = built
        .runtime
        .run_specialist("specialist", &script, Some("t1"), None)
        .expect("run");
    collect(&mut s).await;
    let completed = s.run_id().to_owned();
    let mut s = built
        .runtime
        .run_specialist("nobody", "x", Some("t2"), None)
        .expect("run");
    collect(&mut s).await;
    let failed = s.run_id().to_owned();
    let publish = json!({"tool": "publish", "args": {}}).to_string();
    let mut s = built
        .runtime
        .run_specialist("specialist", &publish, Some("t3"), None)
        .expect("run");
    let (_, approval) = until_approval(&mut s).await;
    let suspended = s.run_id().to_owned();
    drop(s);
    built.runtime.close().expect("close");
    store.close().expect("close");
    Fixture {
        path: path.display().to_string(),
        _dir: dir,
        completed,
        failed,
        suspended,
        approval,
    }
}

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_commands_show_runs_records_and_streams() {
    let f = fixture().await;
    let p = f.path.as_str();

    let (code, out, _) = flowai(&["runs", p]);
    assert_eq!(code, 0);
    for run in [&f.completed, &f.failed, &f.suspended] {
        assert!(out.contains(run.as_str()), "{out}");
    }
    let (code, out, _) = flowai(&["runs", p, "--json"]);
    assert_eq!(code, 0);
    let runs = lines(&out);
    assert_eq!(runs.len(), 3);
    let keys: Vec<&String> = runs[0].as_object().unwrap().keys().collect();
    let mut expected = [
        "agent",
        "createdAt",
        "pendingApprovals",
        "records",
        "runId",
        "status",
        "threadId",
        "updatedAt",
    ];
    expected.sort_unstable();
    assert_eq!(keys, expected, "exactly the §9.2 run dict");
    // Newest first.
    assert_eq!(runs[0]["runId"], f.suspended.as_str());
    assert_eq!(runs[0]["pendingApprovals"], json!([f.approval]));
    let (_, out, _) = flowai(&["runs", p, "--status", "failed", "--json"]);
    assert_eq!(lines(&out).len(), 1);
    let (_, out, _) = flowai(&["runs", p, "--tenant", "other", "--json"]);
    assert!(out.is_empty());

    let (code, out, _) = flowai(&["show", p, &f.completed]);
    assert_eq!(code, 0);
    assert!(out.contains("status       completed"), "{out}");
    assert!(out.contains("search"), "{out}");
    let (_, out, _) = flowai(&["show", p, &f.failed, "--json"]);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["status"], "failed");
    assert_eq!(shown["error"], "specialist 'nobody' not found");
    let (_, out, _) = flowai(&["show", p, &f.suspended, "--json"]);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["pendingApprovals"], json!([f.approval]));
    assert_eq!(shown["approvals"][0]["target"], "publish");
    assert_eq!(shown["approvals"][0]["outcome"], Value::Null);
    assert_eq!(shown["toolCalls"][0]["status"], "open");
    let (_, out, _) = flowai(&["show", p, &f.completed, "--json"]);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["toolCalls"][0]["status"], "ok");
    assert_eq!(shown["toolCalls"][0]["attempts"], 1);

    let store = Store::open_read_only(Path::new(p)).unwrap();
    let run = f.completed.parse().unwrap();
    let records = flowai_runtime::journal_entries(&store, run, 0).unwrap();
    let (code, out, _) = flowai(&["journal", p, &f.completed]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), records.len());
    assert!(out.lines().next().unwrap().contains("RunStarted"));
    let (_, journal_json, _) = flowai(&["journal", p, &f.completed, "--json"]);
    let (code, export, _) = flowai(&["export", p, &f.completed]);
    assert_eq!(code, 0);
    assert_eq!(journal_json, export);
    let exported = lines(&export);
    assert_eq!(exported.len(), records.len());
    for (line, record) in exported.iter().zip(&records) {
        assert_eq!(line, &record.to_json());
        let keys: Vec<&String> = line.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["at", "data", "kind", "seq"]);
    }
    let (_, since, _) = flowai(&["journal", p, &f.completed, "--json", "--since", "2"]);
    assert_eq!(lines(&since)[0]["seq"], 3);

    let (code, out, _) = flowai(&["replay", p, &f.completed]);
    assert_eq!(code, 0);
    let replayed = event_values(&flowai_runtime::replay_events(&store, run).unwrap());
    assert_eq!(lines(&out), replayed);
    assert_eq!(replayed.last().unwrap()["type"], "tool-agent");

    // verify checks the finished runs only; the suspended one on request.
    let (code, out, err) = flowai(&["verify", p]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("verified 2 runs: 2 ok, 0 failed"), "{out}");
    let (code, out, _) = flowai(&["verify", p, &f.suspended]);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes() {
    let f = fixture().await;
    let p = f.path.as_str();
    let (code, _, err) = flowai(&["show", "/nonexistent/x.redb", &f.completed]);
    assert_eq!(code, 3);
    assert!(err.contains("/nonexistent/x.redb"), "{err}");
    let (code, _, err) = flowai(&["show", p, "not-a-ulid"]);
    assert_eq!(code, 2);
    assert!(err.contains("run id must be a ULID: not-a-ulid"), "{err}");
    // A directory names no store: a usage error, not a failed verification.
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = flowai(&["runs", dir.path().to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("Is a directory"), "{err}");
    let (code, _, err) = flowai(&["show", p, "01ARZ3NDEKTSV4RRFFQ69G5FAV"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("run not found: 01ARZ3NDEKTSV4RRFFQ69G5FAV"),
        "{err}"
    );
    let (code, _, _) = flowai(&["frobnicate"]);
    assert_eq!(code, 2);
    let (code, out, _) = flowai(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("verify"));
    let (code, _, err) = flowai(&["verify", p, "--spec", "/nonexistent/spec.json"]);
    assert_eq!(code, 2, "{err}");

    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.redb");
    std::fs::write(&garbage, vec![0x5a_u8; 8192]).unwrap();
    let (code, _, err) = flowai(&["runs", garbage.to_str().unwrap()]);
    assert_eq!(code, 4, "{err}");

    let (code, out, _) = flowai(&["gc", p]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "removed 0 expired references");
    let (code, _, _) = flowai(&["gc", "/nonexistent/x.redb"]);
    assert_eq!(code, 3);
    assert!(!Path::new("/nonexistent/x.redb").exists());

    let (code, out, err) = flowai(&["check", p]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("ok: 3 runs, ") && out.contains("every page checksum verified"),
        "{out}"
    );
    // One byte changed in a live page (where the first `"q":` is, of the recorded spec or
    // of a record): plain reads would return the changed bytes as they are.
    let mut bytes = std::fs::read(p).unwrap();
    let at = bytes
        .windows(4)
        .position(|w| w == b"\"q\":")
        .expect("a recorded argument");
    bytes[at + 1] = b'Q';
    let damaged = dir.path().join("damaged.redb");
    std::fs::write(&damaged, &bytes).unwrap();
    let (code, _, err) = flowai(&["check", damaged.to_str().unwrap()]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("the page checksums"), "{err}");
    let (code, _, _) = flowai(&["check", "/nonexistent/x.redb"]);
    assert_eq!(code, 3);
}

/// A writer in this process holds the file: the binary (another process) gets exit 3
/// naming the path and `shared_reads`, unless the writer opened it with `shared_reads`.
#[test]
fn locked_store_needs_shared_reads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("held.redb");
    let bin = env!("CARGO_BIN_EXE_flowai");
    {
        let _held = Store::open(&path, StoreOptions::default()).unwrap();
        let out = std::process::Command::new(bin)
            .args(["runs".as_ref(), path.as_os_str()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3));
        let err = String::from_utf8_lossy(&out.stderr);
        let canonical = std::fs::canonicalize(&path).unwrap();
        assert!(err.contains(&canonical.display().to_string()), "{err}");
        assert!(err.contains("shared_reads"), "{err}");
    }
    let _held = Store::open(
        &path,
        StoreOptions {
            shared_reads: true,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let out = std::process::Command::new(bin)
        .args(["runs".as_ref(), path.as_os_str(), "--json".as_ref()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Verify never calls a provider, so a run recorded under a live interpreter verifies
/// without its API key (the recorded spec names only `apiKeyEnv`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_of_a_live_interpreter_run_needs_no_api_key() {
    use std::sync::Arc;
    type Env = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.redb");
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let mut wire = specialist_setup().spec;
    wire["providers"] = json!({"anthropic": {"apiKeyEnv": "FLOWAI_TEST_KEY_THAT_IS_NOT_SET"}});
    let options = |env: Env, store: Store| flowai_runtime::RuntimeOptions {
        spec: serde_json::from_value(wire.clone()).unwrap(),
        host_tools: vec![],
        predicates: Default::default(),
        interpreter: flowai_runtime::InterpreterChoice::Anthropic,
        store,
        host: Arc::new(flowai_runtime::NoHost),
        clock: Arc::new(flowai_storage::ManualClock::new(START_MS)),
        ids: Arc::new(flowai_runtime::SequentialIds::new(START_MS as u64)),
        handle: tokio::runtime::Handle::current(),
        env,
        event_buffer: 16,
    };
    let without_key = flowai_runtime::Runtime::new(options(Arc::new(|_| None), store.clone()));
    assert!(without_key.is_err(), "a live runtime needs its key");
    let rt = flowai_runtime::Runtime::new(options(
        Arc::new(|_| Some(String::from("sk-live-secret"))),
        store.clone(),
    ))
    .unwrap();
    // Fails before any model call: no provider is contacted here either.
    let mut stream = rt
        .run_specialist("ghost", "hello", Some("t"), None)
        .unwrap();
    collect(&mut stream).await;
    let spec_json = rt.recorded_spec_json().to_owned();
    assert!(!spec_json.contains("sk-live-secret"));
    rt.close().unwrap();
    store.close().unwrap();

    let (code, out, err) = flowai(&["verify", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("verified 1 runs: 1 ok"), "{out}");
}

/// A run cancelled while it waited at an approval (decision and RunCancelled written by
/// the host, not the driver) is finished, so `flowai verify` checks it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_of_a_run_cancelled_at_a_gate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cancel.redb");
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let mut setup = specialist_setup();
    setup.tools.push(host_tool(
        "specialist",
        "publish",
        json!({"type": "object"}),
        json!({"kind": "always"}),
    ));
    let built = setup.build(search_host(), store.clone());
    let prompt = json!({"tool": "publish", "args": {}}).to_string();
    let mut stream = built
        .runtime
        .run_specialist("specialist", &prompt, Some("t"), None)
        .unwrap();
    until_approval(&mut stream).await;
    let run = stream.run_id().to_owned();
    drop(stream);
    built.runtime.close().unwrap();
    let again = setup.build(search_host(), store.clone());
    again.runtime.cancel(&run).await.unwrap();
    assert_eq!(
        again.runtime.run(&run).unwrap().meta.status,
        flowai_storage::RunStatus::Cancelled
    );
    again.runtime.close().unwrap();
    store.close().unwrap();
    let (code, out, err) = flowai(&["verify", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("verified 1 runs: 1 ok"), "{out}");
}

/// Two runs approved for the same plan, in two runtimes on one file store: the second
/// one's `executePlan` is refused (an error result, no dispatch). `flowai verify` re-drives
/// both, and the refused run replays its refusal without attempting the plan again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_of_two_runs_racing_for_one_plan() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plans.redb");
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let mut setup = Setup::scripted(
        spec(
            "acme",
            vec![
                agent("coordinator", "coordinator", &["planner", "executor"], &[]),
                agent("planner", "planner", &[], &[]),
                agent("executor", "executor", &[], &[]),
            ],
        ),
        Vec::new(),
    );
    let via = |agent: &str, calls: Value| {
        json!({"script": [{"tool": "call_agent", "args": {
            "agent": agent, "prompt": json!({"script": calls}).to_string(),
        }}]})
        .to_string()
    };
    let dispatching = || TestHost::new().dispatcher(|_, _| Ok(json!({"entitiesAffected": 1})));
    let first = setup.build(dispatching(), store.clone());
    setup.ids_from += 1_000_000;
    let second = setup.build(dispatching(), store.clone());

    let body = json!({"actions": [{"kind": "refund", "order": "o-1"}]});
    let store_plan = via(
        "planner",
        json!([{"tool": "storePlan", "args": {"specName": "DemoPlan", "planId": "p", "body": body}}]),
    );
    collect(&mut first.runtime.query(&store_plan, "t0", None).unwrap()).await;
    let execute = via(
        "executor",
        json!([{"tool": "executePlan", "args": {"planId": "p"}}]),
    );
    let mut a = first.runtime.query(&execute, "ta", None).unwrap();
    let (_, approval_a) = until_approval(&mut a).await;
    let mut b = second.runtime.query(&execute, "tb", None).unwrap();
    let (_, approval_b) = until_approval(&mut b).await;
    first
        .runtime
        .respond_to_approval(&approval_a, decision("approve"))
        .await
        .unwrap();
    collect(&mut a).await;
    second
        .runtime
        .respond_to_approval(&approval_b, decision("approve"))
        .await
        .unwrap();
    let b_events = collect(&mut b).await;
    let refused: Vec<&Value> = b_events
        .iter()
        .filter(|e| e["toolName"] == "executePlan" && e["state"] == "result")
        .map(|e| &e["result"])
        .collect();
    assert_eq!(
        refused,
        [
            &json!({"error": "Plan p is no longer draft: another run is executing it or has executed it"})
        ]
    );
    let dispatched =
        first.host.dispatches.lock().unwrap().len() + second.host.dispatches.lock().unwrap().len();
    assert_eq!(dispatched, 1);
    first.runtime.close().unwrap();
    second.runtime.close().unwrap();
    store.close().unwrap();

    let (code, out, err) = flowai(&["verify", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("verified 3 runs: 3 ok"), "{out}");
}

/// `show` tells a run whose cancellation was asked for but not yet recorded (its driver
/// stopped first), which read-only commands leave as they find it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_names_a_cancellation_asked_for_but_not_yet_recorded() {
    let f = fixture().await;
    let p = f.path.as_str();
    let store = Store::open(Path::new(p), StoreOptions::default()).unwrap();
    for run in [&f.suspended, &f.completed] {
        store
            .append_blocking(AppendRequest {
                index_updates: vec![IndexUpdate::RequestCancel {
                    run_id: run.parse().unwrap(),
                    at_ms: 1_700_000_000_000,
                }],
                ..Default::default()
            })
            .unwrap();
    }
    store.close().unwrap();

    let (code, out, _) = flowai(&["show", p, &f.suspended]);
    assert_eq!(code, 0);
    assert!(
        out.contains("status       suspended\ncancel asked 2023-11-14T22:13:20.000Z"),
        "{out}"
    );
    let (_, out, _) = flowai(&["show", p, &f.suspended, "--json"]);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["cancelRequestedAt"], "2023-11-14T22:13:20.000Z");
    let (_, out, _) = flowai(&["show", p, &f.completed, "--json"]);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        shown["cancelRequestedAt"],
        Value::Null,
        "a finished run takes none"
    );
}
