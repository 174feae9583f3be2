//! Golden journals and stream snapshots for the plan gate (DESIGN.md §10):
//! `fixtures/journals/{approve,reject,revise}.redb` (one store, one run, deterministic
//! clock and ids) and `<scenario>.jsonl`, the `flowai export` of that run (one §9.2
//! dict per line). The layout follows the replay crate's goldens, whose
//! `flowai verify` test checks every `.redb` in that directory.
//!
//! Without `FLOWAI_BLESS=1` this checks that the committed store exports to the
//! committed `.jsonl` and that a fresh run journals exactly the same; with it, both
//! files are rewritten. The streams are insta snapshots (ids are deterministic).
#![allow(clippy::unwrap_used)]

#[path = "support/gates.rs"]
mod gates;
mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use flowai_runtime::{Decision, journal_entries};
use flowai_storage::{RunFilter, Store, StoreOptions};
use gates::*;
use serde_json::{Value, json};
use support::*;

fn journals_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/journals")
}

fn bless() -> bool {
    std::env::var("FLOWAI_BLESS").is_ok_and(|v| v == "1")
}

fn golden_host() -> Arc<TestHost> {
    TestHost::new().dispatcher(|actions, ctx| {
        let count = actions.as_array().map_or(0, Vec::len);
        Ok(json!({
            "entitiesAffected": count,
            "summary": format!("applied {count} actions"),
            "details": {"refs": ctx.resolved_refs.clone()},
        }))
    })
}

/// Drives the scenario on `store`, answering the plan gate with `answer`; returns the
/// run id and the events the consumer saw.
async fn drive(store: Store, answer: Decision) -> (String, Vec<Value>) {
    let built = build_gated(
        plans_spec("acme", always(), never()),
        GateHost::new(golden_host()),
        store,
        Options::default(),
    );
    let products = built
        .runtime
        .create_reference(
            "ProductSet",
            &json!({"ids": ["p-1", "p-2"]}),
            &json!({"n": 2}),
        )
        .await
        .expect("reference");
    let body = json!({
        "actions": [
            {"kind": "price_change", "product_id": "p-1", "new_price": 9.99,
             "references": [{"kind": "ProductSet", "id": products.id}]},
            {"kind": "notify", "channel": "email"},
        ],
        "rationale": "margin review",
    });
    let prompt = script(vec![
        via("planner", vec![store_plan("demo-plan-1", body)]),
        via("executor", vec![execute_plan("demo-plan-1")]),
    ]);
    let mut stream = built.runtime.query(&prompt, "t-golden", None).expect("run");
    let (mut events, approval_id) = until_approval(&mut stream).await;
    built
        .runtime
        .respond_to_approval(&approval_id, answer)
        .await
        .expect("decision");
    events.extend(collect(&mut stream).await);
    built
        .runtime
        .verify(stream.run_id())
        .await
        .expect("verifies");
    built.runtime.close().expect("close");
    (stream.run_id().to_owned(), events)
}

fn answer(scenario: &str) -> Decision {
    match scenario {
        "approve" => Decision {
            outcome: String::from("approve"),
            feedback: Some(String::from("go ahead")),
            partial: None,
        },
        "reject" => Decision {
            outcome: String::from("reject"),
            feedback: Some(String::from("too aggressive")),
            partial: None,
        },
        _ => Decision {
            outcome: String::from("revise"),
            feedback: Some(String::from("only notify")),
            partial: Some(json!({"actions": [{"kind": "notify", "channel": "email"}]})),
        },
    }
}

/// The `flowai export` text of the store's one run.
fn export(store: &Store) -> String {
    let runs = store
        .list_runs(&RunFilter {
            tenant: None,
            thread: None,
            status: None,
            limit: usize::MAX,
        })
        .expect("runs");
    assert_eq!(runs.len(), 1, "a golden store holds one run");
    journal_entries(store, runs[0].meta.run_id, 0)
        .expect("journal")
        .iter()
        .map(|entry| format!("{}\n", entry.to_json()))
        .collect()
}

async fn generate(path: &Path, scenario: &str) -> Vec<Value> {
    let store = Store::open(path, StoreOptions::default()).expect("store");
    let (_, events) = drive(store.clone(), answer(scenario)).await;
    store.close().expect("store closes");
    events
}

async fn check(scenario: &str) -> Vec<Value> {
    let dir = journals_dir();
    let redb = dir.join(format!("{scenario}.redb"));
    let jsonl = dir.join(format!("{scenario}.jsonl"));
    if bless() {
        let _ = std::fs::remove_file(&redb);
        let events = generate(&redb, scenario).await;
        let store = Store::open_read_only(&redb).expect("golden opens");
        std::fs::write(&jsonl, export(&store)).expect("write jsonl");
        store.close().expect("close");
        return events;
    }
    let committed = std::fs::read_to_string(&jsonl).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with FLOWAI_BLESS=1 to create it",
            jsonl.display()
        )
    });
    {
        let store = Store::open_read_only(&redb).expect("golden opens read-only");
        assert_eq!(
            export(&store),
            committed,
            "{} does not export to {}; run with FLOWAI_BLESS=1 to rewrite both",
            redb.display(),
            jsonl.display()
        );
        store.close().expect("close");
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    let fresh = scratch.path().join(format!("{scenario}.redb"));
    let events = generate(&fresh, scenario).await;
    let store = Store::open_read_only(&fresh).expect("fresh opens");
    assert_eq!(
        export(&store),
        committed,
        "scenario {scenario} now journals differently from {}; review the diff and bless if intended",
        jsonl.display()
    );
    store.close().expect("close");
    events
}

#[tokio::test]
async fn approve_golden() {
    let events = check("approve").await;
    assert_eq!(results_of(&events, "executePlan")[0]["entitiesAffected"], 2);
    insta::assert_json_snapshot!("approve_stream", events);
}

#[tokio::test]
async fn reject_golden() {
    let events = check("reject").await;
    assert_eq!(
        results_of(&events, "executePlan"),
        [json!({"error": "Plan demo-plan-1 rejected: too aggressive"})]
    );
    insta::assert_json_snapshot!("reject_stream", events);
}

#[tokio::test]
async fn revise_golden() {
    let events = check("revise").await;
    assert_eq!(results_of(&events, "executePlan")[0]["should_revise"], true);
    insta::assert_json_snapshot!("revise_stream", events);
}
