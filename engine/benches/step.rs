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

/// Echoes a small result, and notes when each call came: the time from one host call to
/// the next is a step in steady state, without the run's start (its 190 KB scripted prompt
/// is parsed once and journaled) and end.
#[derive(Default)]
struct EchoHost {
    calls: std::sync::Mutex<Vec<Instant>>,
    /// Every time between consecutive host calls of the runs taken so far.
    gaps: std::sync::Mutex<Vec<Duration>>,
}

impl EchoHost {
    /// Mean time between consecutive host calls since the last take, and forgets them.
    fn take_step_time(&self) -> Option<Duration> {
        let calls = std::mem::take(&mut *self.calls.lock().expect("calls"));
        self.gaps
            .lock()
            .expect("gaps")
            .extend(calls.windows(2).map(|w| w[1].duration_since(w[0])));
        let (first, last) = (calls.first()?, calls.last()?);
        let steps = u32::try_from(calls.len().checked_sub(1)?).ok()?;
        last.duration_since(*first).checked_div(steps)
    }
}

#[async_trait]
impl Host for EchoHost {
    async fn call_tool(&self, call: HostToolCall) -> HostToolOutcome {
        self.calls.lock().expect("calls").push(Instant::now());
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

fn runtime(store: Store, handle: tokio::runtime::Handle, host: Arc<EchoHost>) -> Runtime {
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
        host,
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

/// Runs the script to its end; returns the mean time between the consumer's receipt of
/// consecutive tool results (a step in steady state, as the consumer sees it).
async fn one_run(rt: &Runtime, prompt: &str) -> Option<Duration> {
    let mut stream = rt
        .run_specialist("solo", prompt, Some("bench"), None)
        .expect("start");
    let (mut first, mut last, mut results) = (None, None, 0u32);
    while let Some(event) = stream.next().await {
        let text = event.expect("event");
        let text = text.as_str();
        if text.starts_with(r#"{"type":"tool-invocation""#) && text.contains(r#""state":"result""#)
        {
            let now = Instant::now();
            first.get_or_insert(now);
            last = Some(now);
            results += 1;
        }
    }
    last?
        .duration_since(first?)
        .checked_div(results.checked_sub(1)?)
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

    let rt = runtime(
        Store::in_memory().expect("store"),
        tokio.handle().clone(),
        Arc::default(),
    );
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
                    .expect("consumer task")
            });
        },
    );

    let dir = bench_dir();
    let store = Store::open(dir.path().join("bench.redb"), Default::default()).expect("store");
    let file_host = Arc::new(EchoHost::default());
    let rt = runtime(store, tokio.handle().clone(), Arc::clone(&file_host));
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
        let host = Arc::new(EchoHost::default());
        let memory = runtime(
            Store::in_memory().expect("store"),
            tokio.handle().clone(),
            Arc::clone(&host),
        );
        per_step("memory", 50, &host, || {
            tokio.block_on(one_run(&memory, &prompt))
        });
    }
    if std::env::var_os("FLOWAI_BENCH_MEMORY_ONLY").is_none() {
        // The raw floor right before and after, on the same disk: the load moves a lot here.
        let before = raw_floor(dir.path());
        file_host.take_step_time();
        file_host.gaps.lock().expect("gaps").clear();
        let step = per_step("file_immediate", 10, &file_host, || {
            tokio.block_on(one_run(&rt, &prompt))
        });
        let floor = (before + raw_floor(dir.path())) / 2;
        println!(
            "raw 1 KB append + fdatasync around it: {floor:?}; steady-state file step / raw = {:.2}",
            step.as_secs_f64() / floor.as_secs_f64()
        );
    }
}

/// Medians over five rounds of `runs` runs: wall and process CPU time per step over whole
/// runs, and the steady-state step as the host sees it (host call to host call) and as the
/// consumer does (tool result to tool result). Returns the consumer's.
fn per_step(
    label: &str,
    runs: u32,
    host: &EchoHost,
    mut run: impl FnMut() -> Option<Duration>,
) -> Duration {
    let mut walls = Vec::new();
    let mut cpus = Vec::new();
    let mut at_host = Vec::new();
    let mut at_consumer = Vec::new();
    for _ in 0..5 {
        let (wall, cpu) = (Instant::now(), process_cpu());
        for _ in 0..runs {
            at_consumer.extend(run());
            at_host.extend(host.take_step_time());
        }
        let steps = runs * STEPS as u32;
        walls.push(wall.elapsed() / steps);
        cpus.push(process_cpu().saturating_sub(cpu) / steps);
    }
    walls.sort_unstable();
    cpus.sort_unstable();
    let median = |mut v: Vec<Duration>| {
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or_default()
    };
    let (host_step, step) = (median(at_host), median(at_consumer));
    let mut gaps = std::mem::take(&mut *host.gaps.lock().expect("gaps"));
    gaps.sort_unstable();
    let at = |q: f64| {
        gaps.get(((gaps.len() as f64 * q) as usize).min(gaps.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "{label}: host call to host call over {} steps: p50 {:?}, p99 {:?}, p99.9 {:?}, max {:?}",
        gaps.len(),
        at(0.5),
        at(0.99),
        at(0.999),
        gaps.last().copied().unwrap_or_default()
    );
    println!(
        "{label}: whole runs {:?} wall per step, {:?} process CPU per step (median of 5 rounds \
         of {runs} runs); steady state (median of the runs' means) {step:?} per step at the \
         consumer, {host_step:?} at the host",
        walls[2], cpus[2]
    );
    step
}

/// One raw 1 KB append + fdatasync in `dir`, the mean of 2,000 after 100 to warm up.
fn raw_floor(dir: &std::path::Path) -> Duration {
    let path = dir.join("raw-floor");
    let mut file = std::fs::File::create(&path).expect("raw floor file");
    let record = vec![7u8; 1024];
    let mut append = || {
        file.write_all(&record).expect("write");
        file.sync_data().expect("fdatasync");
    };
    (0..100).for_each(|_| append());
    let start = Instant::now();
    (0..2000).for_each(|_| append());
    let took = start.elapsed() / 2000;
    drop(file);
    std::fs::remove_file(&path).expect("remove raw floor file");
    took
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
