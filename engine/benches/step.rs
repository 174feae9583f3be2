//! Per-step cost of a scripted specialist run with one host tool per step, in memory
//! and on a file store with `immediate` durability, next to one raw 1 KB
//! append + fdatasync on the same disk (DESIGN.md §9).

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use criterion::{Criterion, criterion_group, criterion_main};
use flowai_runtime::{
    DispatchContext, Host, HostToolCall, HostToolDecl, HostToolOutcome, InterpreterChoice,
    PredicateContext, RandomIds, Runtime, RuntimeOptions, RuntimeSpec,
};
use flowai_storage::{Store, SystemClock};
use serde_json::{Value, json};

const STEPS: usize = 200;

struct EchoHost;

#[async_trait]
impl Host for EchoHost {
    async fn call_tool(&self, call: HostToolCall) -> HostToolOutcome {
        // A small result, so that a step journals about 1 KB (the arguments).
        HostToolOutcome {
            result: Ok(json!({"n": call.args["n"].clone()})),
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

fn runtime(store: Store, handle: tokio::runtime::Handle) -> Runtime {
    let spec: RuntimeSpec = serde_json::from_value(json!({
        "tenant": {"resourceId": "bench", "version": "v1"},
        "agents": [{"name": "solo", "role": "specialist", "model": {"id": "claude-sonnet-4-6", "provider": null},
                    "systemPrompt": "bench", "routes": [], "toolkits": []}],
        "references": [], "plans": [], "toolkits": [],
        "approvalPolicies": {"plans": {"kind": "always"}, "tools": {"kind": "never"}},
        "storageFactories": {"kv": null, "plans": null, "memory": null},
        "providers": {"anthropic": {"apiKey": "unused"}},
    }))
    .expect("spec");
    let tool: HostToolDecl = serde_json::from_value(json!({
        "agent": "solo", "bindingKey": "step", "name": "step", "description": "one step",
        "inputSchema": {"type": "object"}, "approval": {"kind": "never"},
    }))
    .expect("tool");
    Runtime::new(RuntimeOptions {
        spec,
        host_tools: vec![tool],
        predicates: BTreeSet::new(),
        interpreter: InterpreterChoice::Scripted,
        store,
        host: Arc::new(EchoHost),
        clock: Arc::new(SystemClock),
        ids: Arc::new(RandomIds),
        handle,
        env: Arc::new(|_| None),
        event_buffer: 256,
    })
    .expect("runtime")
}

/// A script of `STEPS` calls whose arguments make each step's records about 1 KB.
fn script() -> String {
    let pad = "x".repeat(900);
    let calls: Vec<Value> = (0..STEPS)
        .map(|n| json!({"tool": "step", "args": {"n": n, "pad": pad}}))
        .collect();
    json!({"script": calls}).to_string()
}

async fn one_run(rt: &Runtime, prompt: &str) {
    let mut stream = rt
        .run_specialist("solo", prompt, Some("bench"), None)
        .expect("start");
    while let Some(event) = stream.next().await {
        event.expect("event");
    }
}

fn bench_dir() -> tempfile::TempDir {
    // On the project disk, not a tmpfs, so fdatasync costs what it costs.
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    std::fs::create_dir_all(&base).expect("target dir");
    tempfile::tempdir_in(base).expect("temp dir")
}

fn steps(c: &mut Criterion) {
    let tokio = tokio::runtime::Runtime::new().expect("tokio");
    let prompt = script();
    let mut group = c.benchmark_group("engine_step");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));

    group.bench_function("raw_1k_append_fdatasync", |b| {
        let dir = bench_dir();
        let mut file = std::fs::File::create(dir.path().join("raw")).expect("file");
        let record = vec![7u8; 1024];
        b.iter(|| {
            file.write_all(&record).expect("write");
            file.sync_data().expect("fdatasync");
        });
    });

    let rt = runtime(Store::in_memory().expect("store"), tokio.handle().clone());
    group.bench_function(format!("memory_run_of_{STEPS}_steps"), |b| {
        b.iter(|| tokio.block_on(one_run(&rt, &prompt)));
    });

    // The same run with its consumer on a runtime worker instead of the calling thread.
    group.bench_function(
        format!("memory_run_of_{STEPS}_steps_consumer_on_worker"),
        |b| {
            b.iter(|| {
                let rt = rt.clone();
                let prompt = prompt.clone();
                tokio
                    .block_on(tokio.spawn(async move { one_run(&rt, &prompt).await }))
                    .expect("consumer task");
            });
        },
    );

    let dir = bench_dir();
    let store = Store::open(dir.path().join("bench.redb"), Default::default()).expect("store");
    let rt = runtime(store, tokio.handle().clone());
    group.bench_function(format!("file_immediate_run_of_{STEPS}_steps"), |b| {
        b.iter(|| tokio.block_on(one_run(&rt, &prompt)));
    });

    group.finish();

    // Direct figures per step, printed for BENCHMARKS.md: wall time, and the CPU time of
    // the whole process (every thread), which a busy machine disturbs much less.
    // Skipped when a criterion filter names another benchmark.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if filter.is_some_and(|f| !"per_step".contains(f.as_str())) {
        return;
    }
    if std::env::var_os("FLOWAI_BENCH_FILE_ONLY").is_none() {
        let memory = runtime(Store::in_memory().expect("store"), tokio.handle().clone());
        per_step("memory", 50, || tokio.block_on(one_run(&memory, &prompt)));
    }
    per_step("file_immediate", 10, || {
        tokio.block_on(one_run(&rt, &prompt))
    });
}

/// Median over five rounds of `runs` runs: wall and process CPU time per step.
fn per_step(label: &str, runs: u32, mut run: impl FnMut()) {
    let mut walls = Vec::new();
    let mut cpus = Vec::new();
    for _ in 0..5 {
        let (wall, cpu) = (Instant::now(), process_cpu());
        for _ in 0..runs {
            run();
        }
        let steps = runs * STEPS as u32;
        walls.push(wall.elapsed() / steps);
        cpus.push(process_cpu().saturating_sub(cpu) / steps);
    }
    walls.sort_unstable();
    cpus.sort_unstable();
    println!(
        "{label}: {:?} wall per step, {:?} process CPU per step (median of 5 rounds of {runs} runs)",
        walls[2], cpus[2]
    );
}

/// CPU time consumed so far by every thread of this process.
#[allow(unsafe_code)]
fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock_gettime` writes one `timespec` through a pointer to a live, properly
    // aligned local; CLOCK_PROCESS_CPUTIME_ID is always supported on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

criterion_group!(benches, steps);
criterion_main!(benches);
