//! The index tables are projections of the journal: rebuilding them gives back the rows
//! the live writes left.
#![allow(clippy::unwrap_used)]

mod support;

use flowai_runtime::InterpreterChoice;
use flowai_storage::{RunFilter, Store};
use serde_json::json;
use support::*;

#[tokio::test]
async fn rebuilt_indexes_equal_the_live_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("rebuild.redb"), Default::default()).unwrap();
    let host = TestHost::new().handler("wipe", |_| Ok(json!({"ok": true})));
    let mut wire = spec(
        "acme",
        vec![
            agent("solo", "specialist", &[]),
            agent("coordinator", "coordinator", &["planner", "executor"]),
            agent("planner", "planner", &[]),
            agent("executor", "executor", &[]),
        ],
    );
    wire["approvalPolicies"]["plans"] = json!({"kind": "never"});
    let built = build(
        wire,
        vec![host_tool(
            "solo",
            "wipe",
            json!({"type": "object"}),
            json!({"kind": "always"}),
        )],
        host,
        store.clone(),
        InterpreterChoice::Scripted,
    )
    .unwrap();
    let rt = &built.runtime;
    // A completed run, a run suspended at an approval, a rejected approval.
    collect(&mut rt.run_specialist("solo", "hello", Some("a"), None).unwrap()).await;
    let mut waiting = rt
        .run_specialist("solo", r#"{"tool": "wipe", "args": {}}"#, Some("b"), None)
        .unwrap();
    until_approval(&mut waiting).await;
    let mut rejected = rt
        .run_specialist("solo", r#"{"tool": "wipe", "args": {}}"#, Some("c"), None)
        .unwrap();
    let (_, id) = until_approval(&mut rejected).await;
    rt.respond_to_approval(&id, decision("reject"))
        .await
        .unwrap();
    collect(&mut rejected).await;
    // A plan stored and executed.
    let store_plan = json!({"tool": "storePlan", "args": {"specName": "DemoPlan", "planId": "p-1",
        "body": {"actions": [{"kind": "noop"}]}}});
    let execute = json!({"tool": "executePlan", "args": {"planId": "p-1"}});
    let script = json!({"script": [
        {"tool": "call_agent", "args": {"agent": "planner", "prompt": store_plan.to_string()}},
        {"tool": "call_agent", "args": {"agent": "executor", "prompt": execute.to_string()}},
    ]});
    collect(&mut rt.query(&script.to_string(), "d", None).unwrap()).await;
    rt.close().unwrap();

    let snapshot = |store: &Store| {
        let runs = store.list_runs(&RunFilter::default()).unwrap();
        let approvals: Vec<_> = runs
            .iter()
            .flat_map(|r| store.approvals_of_run(r.meta.run_id).unwrap())
            .collect();
        let plan = store.plan("acme", "p-1").unwrap();
        (
            format!("{runs:?}"),
            format!("{approvals:?}"),
            format!("{plan:?}"),
        )
    };
    let before = snapshot(&store);
    let report = store.rebuild_indexes().unwrap();
    assert_eq!(report.runs, 4);
    assert_eq!(report.approvals, 2);
    assert_eq!(report.plans, 1);
    assert!(before.2.contains("executed"), "{}", before.2);
    assert_eq!(snapshot(&store), before);
}
