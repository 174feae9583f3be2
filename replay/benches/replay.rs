//! Replay, verify and resume of a 10,000-step scripted run in a file store (DESIGN.md §9:
//! replay ≥ 200,000 records/s; resume of a 10,000-record run < 100 ms from store open to
//! the first new step's commit).
//!
//! `cargo bench -p flowai-replay --bench replay`. Figures go to `BENCHMARKS.md` (Replay).

#![allow(clippy::unwrap_used)] // Benchmark setup: a panic is the failure report.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flowai_runtime::{
    DispatchContext, Host, HostToolCall, HostToolDecl, HostToolOutcome, InterpreterChoice,
    PredicateContext, RandomIds, Runtime, RuntimeOptions, RuntimeSpec,
};
use flowai_storage::{Durability, RunId, Store, StoreOptions, SystemClock};
use serde_json::{Value, json};
use tokio::sync::oneshot;

const STEPS: usize = 10_000;
/// Records of the interrupted run that resume re-drives.
const RESUME_RECORDS: u64 = 10_000;

/// Answers every step at once; tells a waiter when the first call arrives.
#[derive(Default)]
struct StepHost {
    first_call: Mutex<Option<oneshot::Sender<Instant>>>,
}

#[async_trait]
impl Host for StepHost {
    async fn call_tool(&self, call: HostToolCall) -> HostToolOutcome {
        if let Some(tx) = self.first_call.lock().unwrap().take() {
            let _ = tx.send(Instant::now());
        }
        HostToolOutcome {
            result: Ok(json!({"ok": call.args["i"]})),
            created_references: Vec::new(),
        }
    }
    async fn evaluate_predicate(&self, _: &str, _: &Value, _: &PredicateContext) -> bool {
        false
    }
    fn has_dispatcher(&self) -> bool {
        false
    }
    async fn dispatch_actions(&self, _: Value, _: DispatchContext) -> Result<Value, String> {
        Ok(Value::Null)
    }
}

fn runtime(store: Store, host: Arc<StepHost>, handle: tokio::runtime::Handle) -> Runtime {
    let spec: RuntimeSpec = serde_json::from_value(json!({
        "tenant": {"resourceId": "bench", "version": "v1"},
        "agents": [
            {"name": "coordinator", "role": "coordinator", "model": {"id": "claude-sonnet-4-6", "provider": null},
             "systemPrompt": "c", "routes": ["worker"], "toolkits": []},
            {"name": "worker", "role": "specialist", "model": {"id": "claude-sonnet-4-6", "provider": null},
             "systemPrompt": "w", "routes": [], "toolkits": []},
        ],
        "references": [], "plans": [], "toolkits": [],
        "approvalPolicies": {"plans": {"kind": "always"}, "tools": {"kind": "never"}},
        "storageFactories": {"kv": null, "plans": null, "memory": null},
        "providers": {"anthropic": {"apiKey": "unused"}},
    }))
    .unwrap();
    let tool: HostToolDecl = serde_json::from_value(json!({
        "agent": "worker", "bindingKey": "step", "name": "step", "description": "one step",
        "inputSchema": {"type": "object"}, "approval": {"kind": "never"},
    }))
    .unwrap();
    Runtime::new(RuntimeOptions {
        spec,
        host_tools: vec![tool],
        predicates: BTreeSet::new(),
        interpreter: InterpreterChoice::Scripted,
        store,
        host,
        clock: Arc::new(SystemClock),
        ids: Arc::new(RandomIds),
        handle,
        env: Arc::new(|_| None),
        event_buffer: 64,
    })
    .unwrap()
}

struct Template {
    _dir: tempfile::TempDir,
    path: PathBuf,
    run: String,
    records: u64,
    /// A fork of `run` cut after a ToolCallStarted near record 10,000: resume re-drives it
    /// and then commits the next step's attempt.
    interrupted: String,
}

/// Records the 10,000-step run (eventual durability: setup only) and its interrupted fork.
fn template(tokio: &tokio::runtime::Runtime) -> Template {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("template.redb");
    let store = Store::open(
        &path,
        StoreOptions {
            durability: Durability::Eventual,
            shared_reads: false,
        },
    )
    .unwrap();
    let rt = runtime(
        store.clone(),
        Arc::new(StepHost::default()),
        tokio.handle().clone(),
    );
    let script: Vec<Value> = (0..STEPS)
        .map(|i| json!({"tool": "step", "args": {"i": i}}))
        .collect();
    let prompt = json!({ "script": script }).to_string();
    let (run, records) = tokio.block_on(async {
        let mut stream = rt
            .run_specialist("worker", &prompt, Some("t"), None)
            .unwrap();
        while let Some(event) = stream.next().await {
            event.unwrap();
        }
        let run = stream.run_id().to_owned();
        let records = rt.run(&run).unwrap().records;
        (run, records)
    });
    let cut = (1..=RESUME_RECORDS)
        .rev()
        .find(|seq| {
            rt.journal(&run, seq - 1).unwrap().first().map(|e| e.kind) == Some("ToolCallStarted")
        })
        .unwrap();
    let interrupted = flowai_replay::fork(&rt, &run, cut, None).unwrap();
    rt.close().unwrap();
    store.close().unwrap();
    Template {
        _dir: dir,
        path,
        run,
        records,
        interrupted,
    }
}

fn benches(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let t = template(&tokio);
    let run: RunId = t.run.parse().unwrap();
    let store = Store::open_read_only(&t.path).unwrap();

    let mut group = c.benchmark_group("replay");
    group.sample_size(10);
    group.throughput(Throughput::Elements(t.records));
    group.bench_function(format!("replay_events {} records", t.records), |b| {
        b.iter(|| flowai_runtime::replay_events(&store, run).unwrap())
    });
    let verifier = runtime(
        store.clone(),
        Arc::new(StepHost::default()),
        tokio.handle().clone(),
    );
    group.bench_function(format!("verify {} records", t.records), |b| {
        b.iter(|| tokio.block_on(verifier.verify(&t.run)).unwrap())
    });
    group.finish();
    drop(verifier);
    store.close().unwrap();

    let mut group = c.benchmark_group("resume");
    group.sample_size(10);
    let scratch = tempfile::tempdir().unwrap();
    let mut n = 0u64;
    group.bench_function(
        format!("open + resume to the first new step's commit ({RESUME_RECORDS}-record run)"),
        |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    n += 1;
                    let path = scratch.path().join(format!("resume-{n}.redb"));
                    std::fs::copy(&t.path, &path).unwrap();
                    total += resume_once(&tokio, &path, &t.interrupted);
                    let _ = std::fs::remove_file(&path);
                }
                total
            })
        },
    );
    group.finish();
}

/// Opens the store, resumes the interrupted run, and returns the time until its next
/// step's attempt is committed (the handler is called right after that commit).
fn resume_once(tokio: &tokio::runtime::Runtime, path: &Path, run: &str) -> Duration {
    tokio.block_on(async {
        let host = Arc::new(StepHost::default());
        let (tx, rx) = oneshot::channel();
        *host.first_call.lock().unwrap() = Some(tx);
        let started = Instant::now();
        let store = Store::open(path, StoreOptions::default()).unwrap();
        let rt = runtime(store.clone(), host, tokio::runtime::Handle::current());
        let mut stream = rt.resume(run, false).unwrap();
        let pump = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
        let committed = rx.await.unwrap();
        let elapsed = committed - started;
        rt.close().unwrap();
        pump.abort();
        store.close().unwrap();
        elapsed
    })
}

criterion_group!(replay, benches);
criterion_main!(replay);
