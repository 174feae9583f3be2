//! A Rust test host and runtime builders shared by the replay crate's tests, the golden
//! generator and the crash-torture child.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use flowai_runtime::{
    CreatedReference, Decision, DispatchContext, Event, Host, HostToolCall, HostToolDecl,
    HostToolOutcome, IdSource, InterpreterChoice, PredicateContext, RunStream, Runtime,
    RuntimeOptions, RuntimeSpec, SequentialIds, ToolCallContext,
};
use flowai_storage::{
    AppendRequest, IndexUpdate, ManualClock, Precondition, ReferenceEntry, Store,
};
use serde_json::{Value, json};

/// The deterministic clock's start (2025-11-25T00:00:00Z), as in the engine's tests.
pub const START_MS: i64 = 1_764_028_800_000;

/// What a handler returns: its result and the references it creates `(kind, value, glimpse)`.
pub struct Handled {
    pub result: Result<Value, String>,
    pub references: Vec<(String, Value, Value)>,
}

impl Handled {
    pub fn ok(value: Value) -> Handled {
        Handled {
            result: Ok(value),
            references: Vec::new(),
        }
    }
}

type Handler = Arc<dyn Fn(&Value, &ToolCallContext) -> Handled + Send + Sync>;
type Dispatcher = Arc<dyn Fn(&Value, &DispatchContext) -> Result<Value, String> + Send + Sync>;

/// Host callbacks as plain closures. Every invocation is recorded; a handler may create
/// references, which the host writes into `reference_store` before returning (as the
/// Python `ctx.create_reference` does), and the clock advances 5 ms per tool call so
/// journal times differ.
#[derive(Default)]
pub struct TestHost {
    handlers: Mutex<BTreeMap<String, Handler>>,
    predicates: Mutex<BTreeMap<String, bool>>,
    dispatcher: Mutex<Option<Dispatcher>>,
    pub calls: Mutex<Vec<(String, Value, String, u32)>>,
    pub dispatches: Mutex<Vec<(String, u32)>>,
    reference_store: Mutex<Option<(Store, String)>>,
    clock: Mutex<Option<ManualClock>>,
}

impl TestHost {
    pub fn new() -> Arc<TestHost> {
        Arc::new(TestHost::default())
    }

    pub fn handler(
        self: &Arc<Self>,
        key: &str,
        f: impl Fn(&Value, &ToolCallContext) -> Handled + Send + Sync + 'static,
    ) -> Arc<Self> {
        self.handlers
            .lock()
            .unwrap()
            .insert(key.to_owned(), Arc::new(f));
        Arc::clone(self)
    }

    /// A handler of `args` only.
    pub fn simple(
        self: &Arc<Self>,
        key: &str,
        f: impl Fn(&Value) -> Value + Send + Sync + 'static,
    ) -> Arc<Self> {
        self.handler(key, move |args, _| Handled::ok(f(args)))
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

    pub fn predicate_ids(&self) -> BTreeSet<String> {
        self.predicates.lock().unwrap().keys().cloned().collect()
    }

    pub fn call_count(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    fn attach(&self, store: Store, tenant: &str, clock: ManualClock) {
        *self.reference_store.lock().unwrap() = Some((store, tenant.to_owned()));
        *self.clock.lock().unwrap() = Some(clock);
    }
}

#[async_trait]
impl Host for TestHost {
    async fn call_tool(&self, call: HostToolCall) -> HostToolOutcome {
        self.calls.lock().unwrap().push((
            call.binding_key.clone(),
            call.args.clone(),
            call.ctx.idempotency_key.clone(),
            call.ctx.attempt,
        ));
        let clock = self.clock.lock().unwrap().clone();
        if let Some(clock) = &clock {
            clock.advance(5);
        }
        let handler = self
            .handlers
            .lock()
            .unwrap()
            .get(&call.binding_key)
            .cloned();
        let handled = match handler {
            Some(h) => h(&call.args, &call.ctx),
            None => Handled {
                result: Err(format!("no handler for {}", call.binding_key)),
                references: Vec::new(),
            },
        };
        let mut created = Vec::new();
        let target = self.reference_store.lock().unwrap().clone();
        for (kind, value, glimpse) in handled.references {
            let Some((store, tenant)) = &target else {
                break;
            };
            let id = flowai_storage::reference_id(tenant, &kind, &value).expect("reference id");
            let now = clock.as_ref().map_or(START_MS, ManualClock::now_ms);
            store
                .append(AppendRequest {
                    run: None,
                    index_updates: vec![IndexUpdate::PutReference(ReferenceEntry {
                        tenant: tenant.clone(),
                        kind: kind.clone(),
                        id: id.clone(),
                        value: value.to_string(),
                        glimpse: glimpse.to_string(),
                        created_at_ms: now,
                        expires_at_ms: None,
                    })],
                    precondition: Precondition::None,
                })
                .await
                .expect("reference written");
            created.push(CreatedReference { kind, id });
        }
        HostToolOutcome {
            result: handled.result,
            created_references: created,
        }
    }

    async fn evaluate_predicate(&self, id: &str, _args: &Value, _ctx: &PredicateContext) -> bool {
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
        self.dispatches
            .lock()
            .unwrap()
            .push((ctx.idempotency_key.clone(), ctx.attempt));
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

pub fn agent(name: &str, role: &str, routes: &[&str], toolkits: &[&str]) -> Value {
    json!({
        "name": name, "role": role,
        "model": {"id": "claude-sonnet-4-6", "provider": null},
        "systemPrompt": format!("You are {name}."), "routes": routes, "toolkits": toolkits,
    })
}

pub fn spec(tenant: &str, agents: Vec<Value>) -> Value {
    json!({
        "tenant": {"resourceId": tenant, "version": "v1"},
        "agents": agents,
        "references": [{"name": "ProductSet", "schema": {"type": "object"}, "ttlMs": null}],
        "plans": [{"name": "DemoPlan", "schema": {"type": "object"}, "displayAliases": []}],
        "toolkits": [],
        "approvalPolicies": {"plans": {"kind": "always"}, "tools": {"kind": "never"}},
        "storageFactories": {"kv": null, "plans": null, "memory": null},
        "providers": {"anthropic": {"apiKey": "sk-test-secret"}},
    })
}

/// A runtime and the handles a test steers it with.
pub struct Built {
    pub runtime: Runtime,
    pub clock: ManualClock,
    pub host: Arc<TestHost>,
    pub store: Store,
}

/// Everything that makes a runtime, so a test can build it again (after a restart, or
/// with one thing changed).
#[derive(Clone)]
pub struct Setup {
    pub spec: Value,
    pub tools: Vec<HostToolDecl>,
    pub interpreter: InterpreterChoice,
    /// Id counter start; runtimes that share a store need distinct ones.
    pub ids_from: u64,
}

impl Setup {
    pub fn scripted(spec: Value, tools: Vec<HostToolDecl>) -> Setup {
        Setup {
            spec,
            tools,
            interpreter: InterpreterChoice::Scripted,
            ids_from: START_MS as u64,
        }
    }

    pub fn build(&self, host: Arc<TestHost>, store: Store) -> Built {
        self.try_build(host, store).expect("runtime")
    }

    pub fn try_build(
        &self,
        host: Arc<TestHost>,
        store: Store,
    ) -> Result<Built, flowai_runtime::EngineError> {
        let spec: RuntimeSpec = serde_json::from_value(self.spec.clone()).expect("wire spec");
        let clock = ManualClock::new(START_MS);
        let tenant = self.spec["tenant"]["resourceId"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        host.attach(store.clone(), &tenant, clock.clone());
        let ids: Arc<dyn IdSource> = Arc::new(SequentialIds::new(self.ids_from));
        let runtime = Runtime::new(RuntimeOptions {
            spec,
            host_tools: self.tools.clone(),
            predicates: host.predicate_ids(),
            interpreter: self.interpreter.clone(),
            store: store.clone(),
            host: host.clone(),
            clock: Arc::new(clock.clone()),
            ids,
            handle: tokio::runtime::Handle::current(),
            env: Arc::new(|_| None),
            event_buffer: 16,
        })?;
        Ok(Built {
            runtime,
            clock,
            host,
            store,
        })
    }
}

/// Reads every event of a stream.
pub async fn collect(stream: &mut RunStream) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(item) = stream.next().await {
        out.push(item.expect("stream item").to_value());
    }
    out
}

/// Reads a stream to its end, answering every approval with `outcome`.
pub async fn drive_answering(
    runtime: &Runtime,
    stream: &mut RunStream,
    outcome: &str,
) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(item) = stream.next().await {
        let event = item.expect("stream item").to_value();
        if event["type"] == "approval-required" {
            let id = event["data"]["id"].as_str().unwrap().to_owned();
            runtime
                .respond_to_approval(&id, decision(outcome))
                .await
                .expect("approval answered");
        }
        out.push(event);
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
