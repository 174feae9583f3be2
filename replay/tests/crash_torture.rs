//! Crash torture with real processes (DESIGN.md §10).
//!
//! This test binary (harness = false) re-executes itself as a child that drives a set of
//! scripted multi-agent flows against a file store with `immediate` durability: a
//! coordinator delegates to a specialist (host tools that append one line per invocation
//! to a side file, one creating a reference, one behind an approval), to a planner
//! (`storePlan`) and to an executor (`resolveRef`, `executePlan` behind the plan gate,
//! with a dispatcher that also appends to the side file). The child answers every
//! approval itself, prints one line per delivered event, and on start resumes every run
//! that is not finished (answering approvals left pending by a killed predecessor).
//!
//! The parent SIGKILLs the child after a random number of delivered events (so at random
//! points of its work: between the line it read and the kill the child keeps running),
//! restarts it until every flow has finished, and then compares each run with an
//! uninterrupted one: the replayed stream (ids a run makes anew normalized), plan states,
//! references, that every event a child delivered is in the final stream in order (what
//! was acknowledged is durable), that `verify` passes, and the side file: an effect may
//! repeat only where an AttemptStarted (or DispatchStarted) had no outcome, and then with
//! the same idempotency key and a higher attempt.
//!
//! `FLOWAI_TORTURE_KILLS` (default 100) sets how many kills a run makes at least;
//! `FLOWAI_TORTURE_SEED` replays a sequence of kill points.

#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use flowai_runtime::{
    Decision, DispatchContext, EngineError, Host, HostToolCall, HostToolDecl, HostToolOutcome,
    InterpreterChoice, PredicateContext, RandomIds, RunStream, Runtime, RuntimeOptions,
    RuntimeSpec,
};
use flowai_storage::{
    AppendRequest, Durability, IndexUpdate, ManualClock, Precondition, ReferenceEntry, RunId,
    RunStatus, Store, StoreOptions,
};
use serde_json::{Value, json};

const CHILD_ENV: &str = "FLOWAI_TORTURE_CHILD";
const START_MS: i64 = 1_764_028_800_000;
const TENANT: &str = "acme";
/// Flows driven concurrently by each child.
const FLOWS: u64 = 3;

fn run_id(flow: u64) -> RunId {
    RunId::from_parts(START_MS as u64 + flow, u128::from(flow) + 1)
}

fn snapshot_value(flow: u64) -> Value {
    json!({"items": [format!("s-{flow}")]})
}

fn decl(agent: &str, name: &str, approval: &str) -> HostToolDecl {
    serde_json::from_value(json!({
        "agent": agent, "bindingKey": name, "name": name, "description": format!("{name} tool"),
        "inputSchema": {"type": "object"}, "approval": {"kind": approval},
    }))
    .unwrap()
}

fn agent(name: &str, role: &str, routes: &[&str]) -> Value {
    json!({"name": name, "role": role, "model": {"id": "claude-sonnet-4-6", "provider": null},
        "systemPrompt": format!("You are {name}."), "routes": routes, "toolkits": []})
}

fn spec() -> RuntimeSpec {
    serde_json::from_value(json!({
        "tenant": {"resourceId": TENANT, "version": "v1"},
        "agents": [
            agent("coordinator", "coordinator", &["specialist", "planner", "executor"]),
            agent("specialist", "specialist", &[]),
            agent("planner", "planner", &[]),
            agent("executor", "executor", &[]),
        ],
        "references": [{"name": "ProductSet", "schema": {"type": "object"}, "ttlMs": null}],
        "plans": [{"name": "DemoPlan", "schema": {"type": "object"}, "displayAliases": []}],
        "toolkits": [],
        "approvalPolicies": {"plans": {"kind": "always"}, "tools": {"kind": "never"}},
        "storageFactories": {"kv": null, "plans": null, "memory": null},
        "providers": {"anthropic": {"apiKey": "unused"}},
    }))
    .unwrap()
}

fn prompt(flow: u64) -> String {
    let reference =
        flowai_storage::reference_id(TENANT, "ProductSet", &snapshot_value(flow)).unwrap();
    let specialist = json!({"script": [
        {"tool": "record", "args": {"item": format!("a-{flow}")}},
        {"tool": "snapshot", "args": {"item": format!("s-{flow}")}},
        {"tool": "publish", "args": {"title": format!("t-{flow}")}},
        {"tool": "record", "args": {"item": format!("b-{flow}")}},
    ]});
    let planner = json!({"tool": "storePlan", "args": {"specName": "DemoPlan", "planId": format!("plan-{flow}"),
        "body": {"actions": [{"kind": "ship", "item": format!("s-{flow}"),
            "references": [{"kind": "ProductSet", "id": reference}]}]}}});
    let executor = json!({"script": [
        {"tool": "resolveRef", "args": {"kind": "ProductSet", "id": reference}},
        {"tool": "executePlan", "args": {"planId": format!("plan-{flow}")}},
    ]});
    json!({"script": [
        {"tool": "call_agent", "args": {"agent": "specialist", "prompt": specialist.to_string()}},
        {"tool": "call_agent", "args": {"agent": "planner", "prompt": planner.to_string()}},
        {"tool": "call_agent", "args": {"agent": "executor", "prompt": executor.to_string()}},
    ]})
    .to_string()
}

// ---------------------------------------------------------------------------------------
// The child.

struct SideEffects {
    side: PathBuf,
    store: Store,
}

impl SideEffects {
    fn append(&self, line: Value) {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.side)
            .unwrap();
        // One write per line: O_APPEND keeps concurrent lines whole.
        file.write_all(format!("{line}\n").as_bytes()).unwrap();
    }
}

#[async_trait]
impl Host for SideEffects {
    async fn call_tool(&self, call: HostToolCall) -> HostToolOutcome {
        self.append(
            json!({"key": call.ctx.idempotency_key, "attempt": call.ctx.attempt,
            "tool": call.tool, "args": call.args}),
        );
        let mut created = Vec::new();
        let result = match call.tool.as_str() {
            "snapshot" => {
                let flow_item = call.args["item"].clone();
                let value = json!({"items": [flow_item]});
                let id = flowai_storage::reference_id(TENANT, "ProductSet", &value).unwrap();
                self.store
                    .append(AppendRequest {
                        run: None,
                        index_updates: vec![IndexUpdate::PutReference(ReferenceEntry {
                            tenant: TENANT.into(),
                            kind: "ProductSet".into(),
                            id: id.clone(),
                            value: value.to_string(),
                            glimpse: json!({"count": 1}).to_string(),
                            created_at_ms: START_MS,
                            expires_at_ms: None,
                        })],
                        precondition: Precondition::None,
                    })
                    .await
                    .unwrap();
                created.push(flowai_runtime::CreatedReference {
                    kind: "ProductSet".into(),
                    id: id.clone(),
                });
                Ok(json!({"ref": id}))
            }
            other => Ok(json!({"done": other, "args": call.args})),
        };
        HostToolOutcome {
            result,
            created_references: created,
        }
    }

    async fn evaluate_predicate(&self, _: &str, _: &Value, _: &PredicateContext) -> bool {
        true
    }

    fn has_dispatcher(&self) -> bool {
        true
    }

    async fn dispatch_actions(
        &self,
        actions: Value,
        ctx: DispatchContext,
    ) -> Result<Value, String> {
        self.append(json!({"key": ctx.idempotency_key, "attempt": ctx.attempt,
            "tool": "dispatch", "args": actions}));
        Ok(json!({"entitiesAffected": actions.as_array().map_or(0, Vec::len)}))
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn approve() -> Decision {
    Decision {
        outcome: "approve".into(),
        feedback: None,
        partial: None,
    }
}

async fn drain(rt: &Runtime, run: &str, mut stream: RunStream) -> Result<(), EngineError> {
    while let Some(item) = stream.next().await {
        let event = item?;
        say(&format!("E {run} {}", event.as_str()));
        let value = event.to_value();
        if value["type"] == "approval-required"
            && let Some(id) = value["data"]["id"].as_str()
        {
            rt.respond_to_approval(id, approve()).await?;
        }
    }
    Ok(())
}

async fn drive_flow(rt: Runtime, flow: u64) -> Result<(), EngineError> {
    let run = run_id(flow).to_string();
    loop {
        let stream = match rt.run(&run) {
            Err(EngineError::RunNotFound(_)) => {
                rt.query(&prompt(flow), &format!("thread-{flow}"), Some(&run))?
            }
            Err(e) => return Err(e),
            Ok(info) => match info.meta.status {
                RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled => {
                    say(&format!("D {run} {}", info.meta.status));
                    return Ok(());
                }
                RunStatus::Suspended if !info.pending_approvals.is_empty() => {
                    // Left waiting by a killed child: answer, then resume.
                    for id in &info.pending_approvals {
                        rt.respond_to_approval(id, approve()).await?;
                    }
                    continue;
                }
                _ => rt.resume(&run, false)?,
            },
        };
        drain(&rt, &run, stream).await?;
    }
}

fn child(dir: &Path) {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let code = tokio.block_on(async {
        let store = Store::open(
            dir.join("store.redb"),
            StoreOptions {
                durability: Durability::Immediate,
                shared_reads: false,
            },
        )
        .unwrap();
        let host = Arc::new(SideEffects {
            side: dir.join("side.log"),
            store: store.clone(),
        });
        let rt = Runtime::new(RuntimeOptions {
            spec: spec(),
            host_tools: vec![
                decl("specialist", "record", "never"),
                decl("specialist", "snapshot", "never"),
                decl("specialist", "publish", "always"),
            ],
            predicates: BTreeSet::new(),
            interpreter: InterpreterChoice::Scripted,
            store: store.clone(),
            host,
            // A fixed clock: plan bodies and record times then equal the reference run's.
            clock: Arc::new(ManualClock::new(START_MS)),
            // Random ids: approval ids must never repeat across restarts.
            ids: Arc::new(RandomIds),
            handle: tokio::runtime::Handle::current(),
            env: Arc::new(|_| None),
            event_buffer: 16,
        })
        .unwrap();
        let tasks: Vec<_> = (0..FLOWS)
            .map(|flow| tokio::spawn(drive_flow(rt.clone(), flow)))
            .collect();
        let mut code = 0;
        for task in tasks {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    say(&format!("X {e}"));
                    code = 3;
                }
                Err(e) => {
                    say(&format!("X task: {e}"));
                    code = 3;
                }
            }
        }
        rt.close().unwrap();
        store.close().unwrap();
        if code == 0 {
            say("ALL");
        }
        code
    });
    std::process::exit(code);
}

// ---------------------------------------------------------------------------------------
// The parent.

/// xorshift64*: kill points reproducible from a seed, without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

struct Generation {
    lines: Vec<String>,
    killed: bool,
    finished: bool,
}

/// Runs one child over `dir`; kills it after `kill_after` lines when given.
fn generation(dir: &Path, kill_after: Option<usize>) -> Generation {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("child.err"))
        .unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = Vec::new();
    let mut killed = false;
    if kill_after == Some(0) {
        child.kill().unwrap();
        killed = true;
    } else {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => lines.push(line.trim_end().to_owned()),
            }
            if Some(lines.len()) == kill_after {
                // SIGKILL on Unix.
                child.kill().unwrap();
                killed = true;
                break;
            }
        }
    }
    let status = child.wait().unwrap();
    if let Some(x) = lines.iter().find(|l| l.starts_with("X ")) {
        panic!("child failed in {}: {x}", dir.display());
    }
    let finished = !killed && lines.last().is_some_and(|l| l == "ALL");
    if !killed {
        let err = std::fs::read_to_string(dir.join("child.err")).unwrap_or_default();
        let tail: String = err
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            status.success() && finished,
            "child exited with {status} in {}; its stderr ends with:\n{tail}",
            dir.display()
        );
    }
    Generation {
        lines,
        killed,
        finished,
    }
}

/// What one finished store shows about the flows.
struct Outcome {
    /// Per run: replayed events, ids a run makes anew renamed by order of appearance.
    streams: BTreeMap<String, Vec<Value>>,
    raw_streams: BTreeMap<String, Vec<String>>,
    plans: BTreeMap<String, (String, String)>,
    references: BTreeMap<String, (String, String)>,
    /// Per idempotency key: the attempts the side file shows, in file order.
    side: BTreeMap<String, Vec<u32>>,
    /// The effects that took: (tool, args) of each key's final attempt, sorted.
    effects: Vec<(String, String)>,
    journals: BTreeMap<String, Vec<flowai_runtime::JournalEntry>>,
}

fn normalize(events: &[flowai_runtime::Event]) -> Vec<Value> {
    let mut ids: BTreeMap<String, String> = BTreeMap::new();
    let mut rename = |id: &str| {
        let n = ids.len();
        ids.entry(id.to_owned())
            .or_insert_with(|| format!("id-{n}"))
            .clone()
    };
    events
        .iter()
        .map(|e| {
            let mut e = e.to_value();
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

fn outcome(dir: &Path) -> Outcome {
    let store = Store::open_read_only(dir.join("store.redb")).unwrap();
    let mut out = Outcome {
        streams: BTreeMap::new(),
        raw_streams: BTreeMap::new(),
        plans: BTreeMap::new(),
        references: BTreeMap::new(),
        side: BTreeMap::new(),
        effects: Vec::new(),
        journals: BTreeMap::new(),
    };
    for flow in 0..FLOWS {
        let run = run_id(flow);
        let events = flowai_runtime::replay_events(&store, run).unwrap();
        out.raw_streams.insert(
            run.to_string(),
            events.iter().map(|e| e.as_str().to_owned()).collect(),
        );
        out.streams.insert(run.to_string(), normalize(&events));
        out.journals.insert(
            run.to_string(),
            flowai_runtime::journal_entries(&store, run, 0).unwrap(),
        );
        let plan = store
            .plan(TENANT, &format!("plan-{flow}"))
            .unwrap()
            .unwrap();
        out.plans
            .insert(plan.plan_id.clone(), (plan.status, plan.body));
        let value = snapshot_value(flow);
        let id = flowai_storage::reference_id(TENANT, "ProductSet", &value).unwrap();
        let entry = store
            .reference(TENANT, "ProductSet", &id, START_MS)
            .unwrap()
            .unwrap();
        out.references.insert(id, (entry.value, entry.glimpse));
    }
    let side = std::fs::read_to_string(dir.join("side.log")).unwrap_or_default();
    let mut last: BTreeMap<String, (u32, String, String)> = BTreeMap::new();
    for line in side.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let key = v["key"].as_str().unwrap().to_owned();
        let attempt = u32::try_from(v["attempt"].as_u64().unwrap()).unwrap();
        out.side.entry(key.clone()).or_default().push(attempt);
        let effect = (
            v["tool"].as_str().unwrap().to_owned(),
            v["args"].to_string(),
        );
        if last.get(&key).is_none_or(|(a, _, _)| attempt > *a) {
            last.insert(key, (attempt, effect.0, effect.1));
        }
    }
    out.effects = last.into_values().map(|(_, t, a)| (t, a)).collect();
    out.effects.sort();
    out
}

/// The attempts each idempotency key has in the journals, and whether its last one has an
/// outcome.
fn journal_attempts(out: &Outcome) -> BTreeMap<String, (Vec<u32>, bool)> {
    let mut keys: BTreeMap<String, (Vec<u32>, bool)> = BTreeMap::new();
    for journal in out.journals.values() {
        for (i, e) in journal.iter().enumerate() {
            if !matches!(e.kind, "AttemptStarted" | "DispatchStarted") {
                continue;
            }
            let key = e.data["idempotencyKey"].as_str().unwrap().to_owned();
            let attempt = u32::try_from(e.data["attempt"].as_u64().unwrap()).unwrap();
            // The outcome is the next record that is not a reference the handler made.
            let next = journal[i + 1..]
                .iter()
                .find(|n| n.kind != "ReferenceCreated");
            let closed = match (e.kind, next.map(|n| n.kind)) {
                ("AttemptStarted", Some("ToolCallCompleted")) => true,
                ("DispatchStarted", Some("ActionsDispatched")) => true,
                _ => false,
            };
            let slot = keys.entry(key).or_default();
            slot.0.push(attempt);
            slot.1 = closed;
        }
    }
    keys
}

/// Every check of a tortured store against the reference; returns what differs.
fn compare(
    dir: &Path,
    reference: &Outcome,
    delivered: &BTreeMap<String, Vec<Vec<String>>>,
    redelivered: &mut usize,
) -> Vec<String> {
    let out = outcome(dir);
    let mut problems = Vec::new();
    for (run, stream) in &reference.streams {
        if out.streams.get(run) != Some(stream) {
            problems.push(format!(
                "run {run}: the final stream differs from the uninterrupted run"
            ));
        }
    }
    if out.plans != reference.plans {
        problems.push(format!(
            "plans differ: {:?} vs {:?}",
            out.plans, reference.plans
        ));
    }
    if out.references != reference.references {
        problems.push(String::from("references differ"));
    }
    if out.effects != reference.effects {
        problems.push(format!(
            "effects that took differ: {:?} vs {:?}",
            out.effects, reference.effects
        ));
    }
    // Acknowledged events are durable: every delivered event is in the final stream, in
    // order. One exception: a resumed stream first yields the events of host-originated
    // records at the journal's tail (an approval decision journaled while no runtime drove
    // the run); if the child died before its next commit, the next resume yields them again,
    // since the engine does not journal deliveries. Those repeats are counted, not failed.
    for (run, generations) in delivered {
        let stream = &out.raw_streams[run];
        let mut at = 0;
        let mut seen = BTreeSet::new();
        'generations: for events in generations {
            let mut events = events.iter().peekable();
            while let Some(event) = events.peek() {
                // An approval decision yields approval-decision and, for a plan,
                // plan-status-change.
                let host_originated = event.contains("\"type\":\"approval-decision\"")
                    || event.contains("\"type\":\"plan-status-change\"");
                if host_originated && seen.contains(*event) {
                    *redelivered += 1;
                    events.next();
                } else {
                    break;
                }
            }
            for event in events {
                match stream[at..].iter().position(|e| e == event) {
                    Some(i) => {
                        at += i + 1;
                        seen.insert(event.clone());
                    }
                    None => {
                        problems.push(format!(
                            "run {run}: delivered event {event} is not in the final stream in order"
                        ));
                        break 'generations;
                    }
                }
            }
        }
    }
    // Effects repeat only for an attempt without outcome: same key, higher attempt.
    let journal = journal_attempts(&out);
    for (key, attempts) in &out.side {
        let Some((recorded, closed)) = journal.get(key) else {
            problems.push(format!(
                "side effect under key {key} has no AttemptStarted/DispatchStarted"
            ));
            continue;
        };
        if !attempts.windows(2).all(|w| w[0] < w[1]) {
            problems.push(format!(
                "key {key}: attempts {attempts:?} repeat or go back"
            ));
        }
        if attempts.iter().any(|a| !recorded.contains(a)) {
            problems.push(format!(
                "key {key}: side attempts {attempts:?}, journal attempts {recorded:?}"
            ));
        }
        if !closed || attempts.last() != recorded.last() {
            problems.push(format!(
                "key {key}: the outcome is not from the last attempt ({attempts:?} / {recorded:?})"
            ));
        }
    }
    for key in journal.keys() {
        if !out.side.contains_key(key) {
            problems.push(format!(
                "key {key}: journaled attempt whose effect never ran"
            ));
        }
    }
    problems
}

fn parent() {
    let kills_wanted: u64 = std::env::var("FLOWAI_TORTURE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let seed: u64 = std::env::var("FLOWAI_TORTURE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("crash torture: seed {seed} (FLOWAI_TORTURE_SEED), at least {kills_wanted} kills");
    let started = Instant::now();
    let root = tempfile::tempdir().unwrap();

    let reference_dir = root.path().join("reference");
    std::fs::create_dir_all(&reference_dir).unwrap();
    let first = generation(&reference_dir, None);
    assert!(first.finished);
    let events_per_pass = first.lines.len();
    let reference = outcome(&reference_dir);
    for side in reference.side.values() {
        assert_eq!(
            side,
            &vec![1],
            "an uninterrupted run makes one attempt per effect"
        );
    }
    verify_all(&reference_dir);

    let mut rng = Rng(seed);
    let mut kills = 0u64;
    let mut rounds = 0u64;
    let mut repeated_effects = 0usize;
    let mut redelivered = 0usize;
    let mut problems = Vec::new();
    while kills < kills_wanted {
        rounds += 1;
        let dir = root.path().join(format!("round-{rounds}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut delivered: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
        for generations in 0.. {
            assert!(generations < 400, "no progress in {}", dir.display());
            // Mostly after a few events; sometimes during start-up and recovery.
            let kill_after = match rng.below(20) {
                0 => Some(0),
                _ => Some(2 + rng.below(events_per_pass as u64 / 3) as usize),
            };
            let run = generation(&dir, kill_after);
            let mut this: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for line in &run.lines {
                if let Some(rest) = line.strip_prefix("E ") {
                    let (run, event) = rest.split_once(' ').unwrap();
                    this.entry(run.to_owned())
                        .or_default()
                        .push(event.to_owned());
                }
            }
            for (run, events) in this {
                delivered.entry(run).or_default().push(events);
            }
            if run.killed {
                kills += 1;
            }
            if run.finished {
                break;
            }
        }
        let found = compare(&dir, &reference, &delivered, &mut redelivered);
        verify_all(&dir);
        let out = outcome(&dir);
        repeated_effects += out.side.values().map(|a| a.len() - 1).sum::<usize>();
        for problem in found {
            problems.push(format!("round {rounds}: {problem}"));
        }
        if !problems.is_empty() {
            break;
        }
    }
    eprintln!(
        "crash torture: {kills} kills survived over {rounds} rounds of {FLOWS} flows in {:.1?}; {repeated_effects} effects re-run after a kill (same key, higher attempt); {redelivered} host-originated events yielded again by a later resume; seed {seed}",
        started.elapsed()
    );
    assert!(
        problems.is_empty(),
        "divergences (seed {seed}):\n{}",
        problems.join("\n")
    );
}

/// `flowai verify` (the library) over every run of the store.
fn verify_all(dir: &Path) {
    let path = dir.join("store.redb");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = flowai_replay::run_with_io(
        ["flowai".as_ref(), "verify".as_ref(), path.as_os_str()],
        &mut out,
        &mut err,
    );
    assert_eq!(
        code,
        0,
        "verify of {}: {}{}",
        dir.display(),
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&err)
    );
    assert!(
        String::from_utf8_lossy(&out).contains(&format!("verified {FLOWS} runs: {FLOWS} ok")),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

fn main() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&dir));
        return;
    }
    // `cargo test -p flowai-replay <filter>`: run only when the filter names this test.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("crash_torture: test");
        return;
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if !filters.is_empty() && !filters.iter().any(|f| "crash_torture".contains(f.as_str())) {
        return;
    }
    parent();
    println!("test crash_torture ... ok");
}
