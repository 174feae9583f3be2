//! Golden journals (DESIGN.md §10): `fixtures/journals/<scenario>.redb` (one store, one
//! run, deterministic clock and ids) and `<scenario>.jsonl`, its `flowai export`.
//!
//! Without `FLOWAI_BLESS=1` this checks, for every scenario, that a fresh run records
//! exactly the committed export (the engine still journals the same), that the committed
//! store exports to it, and that `flowai verify` passes on every committed `.redb`.
//! `FLOWAI_BLESS=1 cargo test -p flowai-replay --test suite goldens` rewrites them.
//!
//! Adding a golden: write an `async fn(Store) -> String` that builds a runtime with
//! [`Setup`], drives one run to its end and returns its id, and list it in [`SCENARIOS`].

use std::path::{Path, PathBuf};

use flowai_storage::{Store, StoreOptions};
use futures::future::BoxFuture;
use serde_json::json;

use crate::support::*;

/// A named canned run.
pub struct Scenario {
    pub name: &'static str,
    /// Drives the scenario's run on `store` to its end; returns the run id.
    pub run: fn(Store) -> BoxFuture<'static, String>,
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "specialist_host_tool",
        run: |store| Box::pin(specialist_host_tool(store)),
    },
    Scenario {
        name: "coordinator_two_agents",
        run: |store| Box::pin(coordinator_two_agents(store)),
    },
    Scenario {
        name: "references",
        run: |store| Box::pin(references(store)),
    },
];

fn search_tool(agent: &str) -> flowai_runtime::HostToolDecl {
    host_tool(
        agent,
        "search",
        json!({"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}),
        json!({"kind": "never"}),
    )
}

pub fn search_host() -> std::sync::Arc<TestHost> {
    TestHost::new().simple("search", |args| {
        let q = args["q"].as_str().unwrap_or_default();
        json!({"hits": [format!("{q}-1"), format!("{q}-2")], "displaySummary": format!("2 hits for {q}")})
    })
}

/// A scripted specialist calling one host tool twice.
pub fn specialist_setup() -> Setup {
    Setup::scripted(
        spec(
            "acme",
            vec![
                agent("coordinator", "coordinator", &["specialist"], &[]),
                agent("specialist", "specialist", &[], &[]),
            ],
        ),
        vec![search_tool("specialist")],
    )
}

async fn specialist_host_tool(store: Store) -> String {
    let built = specialist_setup().build(search_host(), store);
    let prompt = json!({"script": [
        {"tool": "search", "args": {"q": "lamps"}},
        {"tool": "search", "args": {"q": "desks"}},
    ]})
    .to_string();
    let mut stream = built
        .runtime
        .run_specialist("specialist", &prompt, Some("t-golden"), None)
        .expect("run");
    collect(&mut stream).await;
    built.runtime.close().expect("close");
    stream.run_id().to_owned()
}

/// A coordinator routing to two specialists, each with a host tool.
pub fn two_agents_setup() -> Setup {
    Setup::scripted(
        spec(
            "acme",
            vec![
                agent("coordinator", "coordinator", &["researcher", "writer"], &[]),
                agent("researcher", "specialist", &[], &[]),
                agent("writer", "specialist", &[], &[]),
            ],
        ),
        vec![
            search_tool("researcher"),
            host_tool(
                "writer",
                "draft",
                json!({"type": "object", "properties": {"topic": {"type": "string"}}}),
                json!({"kind": "never"}),
            ),
        ],
    )
}

pub fn two_agents_host() -> std::sync::Arc<TestHost> {
    search_host().simple(
        "draft",
        |args| json!({"draft": format!("About {}.", args["topic"].as_str().unwrap_or("?"))}),
    )
}

pub fn two_agents_prompt() -> String {
    let research = json!({"tool": "search", "args": {"q": "lamps"}}).to_string();
    let write = json!({"script": [{"tool": "draft", "args": {"topic": "lamps"}}]}).to_string();
    json!({"script": [
        {"tool": "call_agent", "args": {"agent": "researcher", "prompt": research}},
        {"tool": "call_agent", "args": {"agent": "writer", "prompt": write}},
    ]})
    .to_string()
}

async fn coordinator_two_agents(store: Store) -> String {
    let built = two_agents_setup().build(two_agents_host(), store);
    let mut stream = built
        .runtime
        .query(&two_agents_prompt(), "t-golden", None)
        .expect("run");
    collect(&mut stream).await;
    built.runtime.close().expect("close");
    stream.run_id().to_owned()
}

async fn references(store: Store) -> String {
    let setup = Setup::scripted(
        spec(
            "acme",
            vec![
                agent("coordinator", "coordinator", &["analyst"], &[]),
                agent("analyst", "specialist", &[], &["references"]),
            ],
        ),
        vec![],
    );
    let built = setup.build(TestHost::new(), store);
    let created = built
        .runtime
        .create_reference(
            "ProductSet",
            &json!({"items": ["p-1", "p-2", "p-3"]}),
            &json!({"count": 3, "first": "p-1"}),
        )
        .await
        .expect("reference");
    let args = json!({"kind": "ProductSet", "id": created.id});
    let prompt = json!({"script": [
        {"tool": "resolveRef", "args": args},
        {"tool": "glimpseRef", "args": args},
        {"tool": "resolveRef", "args": {"kind": "ProductSet", "id": "0000"}},
    ]})
    .to_string();
    let mut stream = built
        .runtime
        .run_specialist("analyst", &prompt, Some("t-golden"), None)
        .expect("run");
    collect(&mut stream).await;
    built.runtime.close().expect("close");
    stream.run_id().to_owned()
}

pub fn journals_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/journals")
}

/// The store's one run.
fn only_run(store: &Store) -> String {
    let runs = flowai_replay::list_runs(store, None, None).expect("runs");
    assert_eq!(runs.len(), 1, "a golden store holds one run");
    runs[0].meta.run_id.to_string()
}

/// `flowai export` of the store's one run, through the library.
fn export_of(path: &Path) -> String {
    let run = {
        let store = Store::open_read_only(path).expect("golden store opens read-only");
        only_run(&store)
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = flowai_replay::run_with_io(
        [
            "flowai".as_ref(),
            "export".as_ref(),
            path.as_os_str(),
            run.as_ref(),
        ],
        &mut out,
        &mut err,
    );
    assert_eq!(code, 0, "export failed: {}", String::from_utf8_lossy(&err));
    String::from_utf8(out).expect("utf-8")
}

async fn generate(scenario: &Scenario, path: &Path) {
    let store = Store::open(path, StoreOptions::default()).expect("store");
    (scenario.run)(store.clone()).await;
    store.close().expect("store closes");
}

fn bless() -> bool {
    std::env::var("FLOWAI_BLESS").is_ok_and(|v| v == "1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goldens_are_current_and_verify() {
    let dir = journals_dir();
    let scratch = tempfile::tempdir().expect("tempdir");
    for scenario in SCENARIOS {
        let redb = dir.join(format!("{}.redb", scenario.name));
        let jsonl = dir.join(format!("{}.jsonl", scenario.name));
        if bless() {
            let _ = std::fs::remove_file(&redb);
            generate(scenario, &redb).await;
            std::fs::write(&jsonl, export_of(&redb)).expect("write jsonl");
            continue;
        }
        let committed = std::fs::read_to_string(&jsonl).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run with FLOWAI_BLESS=1 to create it",
                jsonl.display()
            )
        });
        assert_eq!(
            export_of(&redb),
            committed,
            "{} does not export to {}; run with FLOWAI_BLESS=1 to rewrite both",
            redb.display(),
            jsonl.display()
        );
        let fresh = scratch.path().join(format!("{}.redb", scenario.name));
        generate(scenario, &fresh).await;
        assert_eq!(
            export_of(&fresh),
            committed,
            "scenario {} now journals differently from {}; review the diff and run with FLOWAI_BLESS=1 if intended",
            scenario.name,
            jsonl.display()
        );
    }
}

/// Every `.redb` under fixtures/journals verifies, through the library and the binary.
#[test]
fn flowai_verify_passes_on_every_golden() {
    let mut stores: Vec<PathBuf> = std::fs::read_dir(journals_dir())
        .expect("fixtures/journals")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "redb"))
        .collect();
    stores.sort();
    assert!(
        stores.len() >= SCENARIOS.len(),
        "missing goldens; run with FLOWAI_BLESS=1"
    );
    for path in &stores {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = flowai_replay::run_with_io(
            ["flowai".as_ref(), "verify".as_ref(), path.as_os_str()],
            &mut out,
            &mut err,
        );
        let out = String::from_utf8_lossy(&out);
        assert_eq!(
            code,
            0,
            "{}: {out}{}",
            path.display(),
            String::from_utf8_lossy(&err)
        );
        assert!(out.contains("verified 1 runs: 1 ok, 0 failed"), "{out}");
    }
    for path in &stores {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_flowai"))
            .arg("verify")
            .arg(path)
            .output()
            .expect("flowai binary runs");
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}: {}{}",
            path.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
