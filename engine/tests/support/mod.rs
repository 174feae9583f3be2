//! A Rust test host and helpers shared by the engine's integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use flowai_runtime::{
    Decision, DispatchContext, Event, Host, HostToolCall, HostToolDecl, HostToolOutcome,
    InterpreterChoice, PredicateContext, RunStream, Runtime, RuntimeOptions, RuntimeSpec,
    SequentialIds,
};
use flowai_storage::{ManualClock, Store};
use serde_json::{Value, json};

pub const START_MS: i64 = 1_764_028_800_000;

static BUILDS: AtomicU64 = AtomicU64::new(0);

type Handler = Arc<dyn Fn(&Value) -> Result<Value, String> + Send + Sync>;
type Dispatcher = Arc<dyn Fn(&Value, &DispatchContext) -> Result<Value, String> + Send + Sync>;

/// Records every callback; handlers and predicates are plain closures.
#[derive(Default)]
pub struct TestHost {
    pub handlers: Mutex<BTreeMap<String, Handler>>,
    pub predicates: Mutex<BTreeMap<String, bool>>,
    pub dispatcher: Mutex<Option<Dispatcher>>,
    pub tool_calls: Mutex<Vec<(String, Value, String, u32)>>,
    pub predicate_calls: Mutex<Vec<(String, Value, String, String)>>,
    pub dispatches: Mutex<Vec<(Value, Value, String, u32)>>,
}

impl TestHost {
    pub fn new() -> Arc<TestHost> {
        Arc::new(TestHost::default())
    }

    pub fn handler(
        self: &Arc<Self>,
        key: &str,
        f: impl Fn(&Value) -> Result<Value, String> + Send + Sync + 'static,
    ) -> Arc<Self> {
        self.handlers
            .lock()
            .unwrap()
            .insert(key.to_owned(), Arc::new(f));
        Arc::clone(self)
    }

    pub fn predicate(self: &Arc<Self>, id: &str, answer: bool) -> Arc<Self> {
        self.predicates
            .lock()
            .unwrap()
            .insert(id.to_owned(), answer);
        Arc::clone(self)
    }

    pub fn dispatcher(
        self: &Arc<Self>,
        f: impl Fn(&Value, &DispatchContext) -> Result<Value, String> + Send + Sync + 'static,
    ) -> Arc<Self> {
        *self.dispatcher.lock().unwrap() = Some(Arc::new(f));
        Arc::clone(self)
    }

    pub fn tool_call_count(&self) -> usize {
        self.tool_calls.lock().unwrap().len()
    }

    pub fn dispatch_count(&self) -> usize {
        self.dispatches.lock().unwrap().len()
    }
}

#[async_trait]
impl Host for TestHost {
    async fn call_tool(&self, call: HostToolCall) -> HostToolOutcome {
        self.tool_calls.lock().unwrap().push((
            call.binding_key.clone(),
            call.args.clone(),
            call.ctx.idempotency_key.clone(),
            call.ctx.attempt,
        ));
        let handler = self
            .handlers
            .lock()
            .unwrap()
            .get(&call.binding_key)
            .cloned();
        let result = match handler {
            Some(h) => h(&call.args),
            None => Err(format!("no handler for {}", call.binding_key)),
        };
        HostToolOutcome {
            result,
            created_references: Vec::new(),
        }
    }

    async fn evaluate_predicate(&self, id: &str, args: &Value, ctx: &PredicateContext) -> bool {
        self.predicate_calls.lock().unwrap().push((
            id.to_owned(),
            args.clone(),
            ctx.kind.clone(),
            ctx.target.clone(),
        ));
        self.predicates
            .lock()
            .unwrap()
            .get(id)
            .copied()
            .unwrap_or(true)
    }

    fn has_dispatcher(&self) -> bool {
        self.dispatcher.lock().unwrap().is_some()
    }

    async fn dispatch_actions(
        &self,
        actions: Value,
        ctx: DispatchContext,
    ) -> Result<Value, String> {
        self.dispatches.lock().unwrap().push((
            actions.clone(),
            ctx.resolved_refs.clone(),
            ctx.idempotency_key.clone(),
            ctx.attempt,
        ));
        let dispatcher = self.dispatcher.lock().unwrap().clone();
        match dispatcher {
            Some(d) => d(&actions, &ctx),
            None => Ok(Value::Null),
        }
    }
}

/// A host tool bound to an agent.
pub fn host_tool(agent: &str, name: &str, schema: Value, approval: Value) -> HostToolDecl {
    serde_json::from_value(json!({
        "agent": agent, "bindingKey": name, "name": name,
        "description": format!("{name} tool"), "inputSchema": schema, "approval": approval,
    }))
    .expect("host tool decl")
}

pub fn agent(name: &str, role: &str, routes: &[&str]) -> Value {
    json!({
        "name": name, "role": role,
        "model": {"id": "claude-sonnet-4-6", "provider": null},
        "systemPrompt": format!("You are {name}."), "routes": routes, "toolkits": [],
    })
}

pub fn spec(tenant: &str, agents: Vec<Value>) -> Value {
    json!({
        "tenant": {"resourceId": tenant, "version": "v1"},
        "agents": agents,
        "references": [{"name": "ProductSet", "schema": {"type": "object"}, "ttlMs": 60000}],
        "plans": [{"name": "DemoPlan", "schema": {"type": "object"}, "displayAliases": []}],
        "toolkits": [],
        "approvalPolicies": {"plans": {"kind": "always"}, "tools": {"kind": "never"}},
        "storageFactories": {"kv": null, "plans": null, "memory": null},
        "providers": {"anthropic": {"apiKey": "unused"}},
    })
}

pub struct Built {
    pub runtime: Runtime,
    pub clock: ManualClock,
}

pub fn build(
    spec_json: Value,
    tools: Vec<HostToolDecl>,
    host: Arc<TestHost>,
    store: Store,
    interpreter: InterpreterChoice,
) -> Result<Built, flowai_runtime::EngineError> {
    let spec: RuntimeSpec = serde_json::from_value(spec_json).expect("wire spec");
    let predicates: BTreeSet<String> = host.predicates.lock().unwrap().keys().cloned().collect();
    let clock = ManualClock::new(START_MS);
    let runtime = Runtime::new(RuntimeOptions {
        spec,
        host_tools: tools,
        predicates,
        interpreter,
        store,
        host,
        clock: Arc::new(clock.clone()),
        // Runtimes sharing a store in one test must not mint the same run ids.
        ids: Arc::new(SequentialIds::new(
            START_MS as u64 + 1_000_000 * BUILDS.fetch_add(1, Ordering::Relaxed),
        )),
        handle: tokio::runtime::Handle::current(),
        env: Arc::new(|_| None),
        event_buffer: 16,
    })?;
    Ok(Built { runtime, clock })
}

/// The kinds of a run's journal records, in order.
pub fn record_kinds(runtime: &Runtime, run_id: &str) -> Vec<&'static str> {
    runtime
        .journal(run_id, 0)
        .expect("journal")
        .iter()
        .map(|e| e.kind)
        .collect()
}

/// Reads every event of a stream.
pub async fn collect(stream: &mut RunStream) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(item) = stream.next().await {
        out.push(item.expect("stream item").to_value());
    }
    out
}

/// Reads events up to and including the first `approval-required`; returns them and its id.
pub async fn until_approval(stream: &mut RunStream) -> (Vec<Value>, String) {
    let mut out = Vec::new();
    while let Some(item) = stream.next().await {
        let event = item.expect("stream item").to_value();
        let done = event["type"] == "approval-required";
        out.push(event.clone());
        if done {
            let id = event["data"]["id"].as_str().unwrap().to_owned();
            return (out, id);
        }
    }
    panic!("no approval-required in {out:?}");
}

pub fn types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let t = e["type"].as_str().unwrap_or_default().to_owned();
            match e.get("state").and_then(Value::as_str) {
                Some(state) => format!("{t}:{state}"),
                None => t,
            }
        })
        .collect()
}

pub fn decision(outcome: &str) -> Decision {
    Decision {
        outcome: outcome.to_owned(),
        feedback: None,
        partial: None,
    }
}

pub fn event_values(events: &[Event]) -> Vec<Value> {
    events.iter().map(Event::to_value).collect()
}
