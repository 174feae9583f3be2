//! A plan gate across real processes: a child runs coordinator → planner → executor on a
//! file store until `approval-required`, then exits (or is SIGKILLed); the parent opens the
//! store, finds the pending approval, approves, resumes, and the dispatcher runs once.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use flowai_runtime::InterpreterChoice;
use flowai_storage::{RunStatus, Store};
use serde_json::{Value, json};
use support::*;

const CHILD_ENV: &str = "FLOWAI_GATE_CHILD";
const DISPATCH_LOG_ENV: &str = "FLOWAI_GATE_DISPATCH_LOG";

fn flow_spec() -> Value {
    spec(
        "acme",
        vec![
            agent("coordinator", "coordinator", &["planner", "executor"]),
            agent("planner", "planner", &[]),
            agent("executor", "executor", &[]),
        ],
    )
}

/// A host whose dispatcher appends one line per call to `log` (the side effect).
fn host(log: PathBuf) -> std::sync::Arc<TestHost> {
    TestHost::new().dispatcher(move |actions, ctx| {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        writeln!(file, "{} {} {}", ctx.idempotency_key, ctx.attempt, actions).unwrap();
        Ok(json!({"entitiesAffected": actions.as_array().map_or(0, Vec::len)}))
    })
}

fn script() -> String {
    let store_plan = json!({"tool": "storePlan", "args": {"specName": "DemoPlan", "planId": "plan-1",
        "body": {"actions": [{"kind": "price_change", "sku": "s-1", "price": 9.5}], "rationale": "match"}}});
    let execute = json!({"tool": "executePlan", "args": {"planId": "plan-1"}});
    json!({"script": [
        {"tool": "call_agent", "args": {"agent": "planner", "prompt": store_plan.to_string()}},
        {"tool": "call_agent", "args": {"agent": "executor", "prompt": execute.to_string()}},
    ]})
    .to_string()
}

/// The child: runs to the plan gate, prints the run and approval ids, then exits or
/// waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_child_entry() {
    let Ok(mode_and_path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (mode, path) = mode_and_path.split_once(':').unwrap();
    let log = PathBuf::from(std::env::var(DISPATCH_LOG_ENV).unwrap());
    let store = Store::open(path, Default::default()).unwrap();
    let built = build(
        flow_spec(),
        vec![],
        host(log),
        store,
        InterpreterChoice::Scripted,
    )
    .unwrap();
    let mut stream = built.runtime.query(&script(), "t", None).unwrap();
    let (_, approval) = until_approval(&mut stream).await;
    println!("{} {approval}", stream.run_id());
    std::io::stdout().flush().unwrap();
    if mode == "exit" {
        // Leave without closing anything, as a crashed process would.
        std::process::exit(0);
    }
    // Wait to be SIGKILLed.
    std::thread::park();
}

async fn approve_in_a_second_process(mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gate.redb");
    let log = dir.path().join("dispatch.log");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "gate_child_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{mode}:{}", path.display()))
        .env(DISPATCH_LOG_ENV, &log)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut ids = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        // The harness may print its "test … ..." prefix on the same line.
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(i) = words
            .iter()
            .position(|w| w.len() == 26 && w.parse::<ulid::Ulid>().is_ok())
            && let Some(approval) = words.get(i + 1)
        {
            ids = Some((words[i].to_owned(), (*approval).to_owned()));
            break;
        }
    }
    let (run_id, approval) = ids.expect("the child reached the gate");
    if mode == "kill" {
        child.kill().unwrap();
    }
    child.wait().unwrap();
    assert!(!log.exists(), "nothing dispatched before the decision");

    let store = Store::open(&path, Default::default()).unwrap();
    let built = build(
        flow_spec(),
        vec![],
        host(log.clone()),
        store,
        InterpreterChoice::Scripted,
    )
    .unwrap();
    let rt = &built.runtime;
    let info = rt.run(&run_id).unwrap();
    assert_eq!(info.meta.status, RunStatus::Suspended);
    assert_eq!(info.pending_approvals, vec![approval.clone()]);
    rt.respond_to_approval(&approval, decision("approve"))
        .await
        .unwrap();
    assert_eq!(rt.pending().unwrap().len(), 1);
    // This process's dispatcher logs to the same file.
    let events = collect(&mut rt.resume(&run_id, false).unwrap()).await;
    assert_eq!(events[0]["type"], "approval-decision");
    assert_eq!(events[1]["type"], "plan-status-change");
    assert_eq!(events[1]["data"]["to"], "approved");
    assert_eq!(rt.run(&run_id).unwrap().meta.status, RunStatus::Completed);
    let dispatched = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = dispatched.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "the dispatcher ran exactly once: {dispatched}"
    );
    assert!(
        lines[0].starts_with(&format!("{run_id}:plan-1:")),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains(" 1 "), "attempt 1: {}", lines[0]);
    rt.verify(&run_id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_gate_left_by_an_exiting_process_is_approved_from_another() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    approve_in_a_second_process("exit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_gate_left_by_a_killed_process_is_approved_from_another() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    approve_in_a_second_process("kill").await;
}
