//! Helpers for the plan, approval and dispatcher tests (`gates_*.rs`).
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use flowai_runtime::{
    DispatchContext, Host, HostToolCall, HostToolDecl, HostToolOutcome, InterpreterChoice,
    PredicateContext, RunStream, Runtime, RuntimeOptions, RuntimeSpec, SequentialIds,
};
use flowai_storage::{ManualClock, Store};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::support::{START_MS, TestHost, agent, spec};

/// Wraps the shared [`TestHost`]: records the full predicate context (the shared host
/// keeps no tenant) and can hold the dispatcher until a test lets it go.
pub struct GateHost {
    pub inner: Arc<TestHost>,
    pub predicate_ctx: Mutex<Vec<(String, String, String)>>,
    /// When set, each dispatch waits for one permit before calling the dispatcher.
    pub hold: Option<Arc<Semaphore>>,
    /// Signalled when a dispatch is waiting on `hold`.
    pub dispatch_waiting: Arc<Semaphore>,
}

impl GateHost {
    pub fn new(inner: Arc<TestHost>) -> Arc<GateHost> {
        Arc::new(GateHost {
            inner,
            predicate_ctx: Mutex::new(Vec::new()),
            hold: None,
            dispatch_waiting: Arc::new(Semaphore::new(0)),
        })
    }

    pub fn holding(inner: Arc<TestHost>, hold: Arc<Semaphore>) -> Arc<GateHost> {
        Arc::new(GateHost {
            inner,
            predicate_ctx: Mutex::new(Vec::new()),
            hold: Some(hold),
            dispatch_waiting: Arc::new(Semaphore::new(0)),
        })
    }
}

#[async_trait]
impl Host for GateHost {
    async fn call_tool(&self, call: HostToolCall) -> HostToolOutcome {
        self.inner.call_tool(call).await
    }

    async fn evaluate_predicate(&self, id: &str, args: &Value, ctx: &PredicateContext) -> bool {
        self.predicate_ctx.lock().unwrap().push((
            ctx.kind.clone(),
            ctx.target.clone(),
            ctx.tenant.clone(),
        ));
        self.inner.evaluate_predicate(id, args, ctx).await
    }

    fn has_dispatcher(&self) -> bool {
        self.inner.has_dispatcher()
    }

    async fn dispatch_actions(
        &self,
        actions: Value,
        ctx: DispatchContext,
    ) -> Result<Value, String> {
        if let Some(hold) = &self.hold {
            self.dispatch_waiting.add_permits(1);
            hold.acquire().await.expect("hold semaphore").forget();
        }
        self.inner.dispatch_actions(actions, ctx).await
    }
}

pub struct Options {
    pub tools: Vec<HostToolDecl>,
    pub predicates: Vec<String>,
    pub event_buffer: usize,
    pub ids_from: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tools: Vec::new(),
            predicates: Vec::new(),
            event_buffer: 16,
            ids_from: START_MS as u64,
        }
    }
}

pub struct Gated {
    pub runtime: Runtime,
    pub clock: ManualClock,
}

/// Builds a scripted runtime over any host, with deterministic clock and ids.
pub fn build_gated(spec_json: Value, host: Arc<dyn Host>, store: Store, options: Options) -> Gated {
    let spec: RuntimeSpec = serde_json::from_value(spec_json).expect("wire spec");
    let predicates: BTreeSet<String> = options.predicates.into_iter().collect();
    let clock = ManualClock::new(START_MS);
    let runtime = Runtime::new(RuntimeOptions {
        spec,
        host_tools: options.tools,
        predicates,
        interpreter: InterpreterChoice::Scripted,
        store,
        host,
        clock: Arc::new(clock.clone()),
        ids: Arc::new(SequentialIds::new(options.ids_from)),
        handle: tokio::runtime::Handle::current(),
        env: Arc::new(|_| None),
        event_buffer: options.event_buffer,
    })
    .expect("runtime");
    Gated { runtime, clock }
}

/// The four-agent spec of API.md §4.3 with the given plan and tool channel floors.
pub fn plans_spec(tenant: &str, plans: Value, tools: Value) -> Value {
    let mut doc = spec(
        tenant,
        vec![
            agent("coordinator", "coordinator", &["planner", "executor"]),
            agent("planner", "planner", &[]),
            agent("executor", "executor", &[]),
            agent("specialist", "specialist", &[]),
        ],
    );
    doc["approvalPolicies"] = json!({"plans": plans, "tools": tools});
    doc
}

pub fn never() -> Value {
    json!({"kind": "never"})
}

pub fn always() -> Value {
    json!({"kind": "always"})
}

pub fn dynamic(id: &str) -> Value {
    json!({"kind": "dynamic", "value": id})
}

pub fn call(tool: &str, args: Value) -> Value {
    json!({"tool": tool, "args": args})
}

pub fn store_plan(plan_id: &str, body: Value) -> Value {
    call(
        "storePlan",
        json!({"specName": "DemoPlan", "planId": plan_id, "body": body}),
    )
}

pub fn execute_plan(plan_id: &str) -> Value {
    call("executePlan", json!({"planId": plan_id}))
}

pub fn get_plan(plan_id: &str) -> Value {
    call("getPlan", json!({"planId": plan_id}))
}

/// A `call_agent` step whose prompt is the sub-agent's script.
pub fn via(agent_name: &str, calls: Vec<Value>) -> Value {
    call(
        "call_agent",
        json!({"agent": agent_name, "prompt": script(calls)}),
    )
}

pub fn script(calls: Vec<Value>) -> String {
    json!({ "script": calls }).to_string()
}

/// The example body of API.md §5.3 with two actions.
pub fn demo_body() -> Value {
    json!({
        "actions": [
            {"kind": "price_change", "product_id": "p-1", "new_price": 9.99},
            {"kind": "notify", "channel": "email"},
        ],
        "rationale": "test",
    })
}

/// The results of every `tool-invocation` result event for `tool`, in order.
pub fn results_of(events: &[Value], tool: &str) -> Vec<Value> {
    events
        .iter()
        .filter(|e| {
            e["type"] == "tool-invocation" && e["state"] == "result" && e["toolName"] == tool
        })
        .map(|e| e["result"].clone())
        .collect()
}

/// The `(from, to)` pairs of the `plan-status-change` events.
pub fn status_changes(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e["type"] == "plan-status-change")
        .map(|e| {
            (
                e["data"]["from"].as_str().unwrap_or_default().to_owned(),
                e["data"]["to"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// The gate-related events only (approval and plan status), as `type[:detail]`.
pub fn gate_events(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e["type"].as_str() {
            Some("approval-required") => Some(format!(
                "approval-required:{}",
                e["data"]["kind"].as_str().unwrap_or_default()
            )),
            Some("approval-decision") => Some(format!(
                "approval-decision:{}",
                e["data"]["outcome"]["outcome"].as_str().unwrap_or_default()
            )),
            Some("plan-status-change") => Some(format!(
                "plan-status-change:{}->{}",
                e["data"]["from"].as_str().unwrap_or_default(),
                e["data"]["to"].as_str().unwrap_or_default()
            )),
            Some("tool-invocation") => Some(format!(
                "tool-invocation:{}:{}",
                e["toolName"].as_str().unwrap_or_default(),
                e["state"].as_str().unwrap_or_default()
            )),
            _ => None,
        })
        .collect()
}

/// Reads events until one satisfies `stop` (included); panics at the end of the stream.
pub async fn read_until(stream: &mut RunStream, stop: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(item) = stream.next().await {
        let event = item.expect("stream item").to_value();
        let done = stop(&event);
        out.push(event);
        if done {
            return out;
        }
    }
    panic!("stream ended before the expected event: {out:?}");
}

/// The journal's records of one kind, as `data` values.
pub fn records_of(runtime: &Runtime, run_id: &str, kind: &str) -> Vec<(u64, Value)> {
    runtime
        .journal(run_id, 0)
        .expect("journal")
        .into_iter()
        .filter(|e| e.kind == kind)
        .map(|e| (e.seq, e.data))
        .collect()
}
