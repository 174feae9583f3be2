//! The interface through which the engine calls host code (Python callbacks in the
//! bindings, plain Rust in tests): tool handlers, approval predicates and the action
//! dispatcher. Glimpse functions run on the host before a reference reaches the engine.

use async_trait::async_trait;
use serde_json::Value;

/// Everything a tool handler is told about the call (API.md §2.6, §9.3).
#[derive(Clone, Debug)]
pub struct ToolCallContext {
    pub run_id: String,
    pub agent: String,
    pub tool_use_id: String,
    /// `"<run_id>:<seq of the call's ToolCallStarted>"`, the same on every attempt.
    pub idempotency_key: String,
    /// 1 for the first invocation, +1 for each re-run after a crash.
    pub attempt: u32,
    pub thread_id: String,
}

/// A host tool invocation.
#[derive(Clone, Debug)]
pub struct HostToolCall {
    pub binding_key: String,
    pub tool: String,
    pub args: Value,
    pub ctx: ToolCallContext,
}

/// A reference a handler created through its context while it ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedReference {
    pub kind: String,
    pub id: String,
}

/// What a host tool handler produced.
#[derive(Clone, Debug)]
pub struct HostToolOutcome {
    /// The returned value, or the error text (`"<ExcType>: <message>"` for Python).
    pub result: Result<Value, String>,
    /// References the handler created during the call, journaled with its result.
    pub created_references: Vec<CreatedReference>,
}

/// The context of a dynamic approval predicate (API.md §7).
#[derive(Clone, Debug)]
pub struct PredicateContext {
    /// `"tool"` or `"plan"`.
    pub kind: String,
    pub target: String,
    pub tenant: String,
}

/// The context of one action dispatch (API.md §5.6, §9.3).
#[derive(Clone, Debug)]
pub struct DispatchContext {
    pub run_id: String,
    pub plan_id: String,
    pub idempotency_key: String,
    pub attempt: u32,
    /// `{kind: {id: value}}`.
    pub resolved_refs: Value,
}

/// Host callbacks. Implementations must be cheap to call concurrently from many runs.
#[async_trait]
pub trait Host: Send + Sync + 'static {
    /// Runs the handler bound under `call.binding_key`.
    async fn call_tool(&self, call: HostToolCall) -> HostToolOutcome;

    /// Evaluates a registered dynamic approval predicate; `true` means approval is
    /// required. A failing predicate must answer `true`.
    async fn evaluate_predicate(&self, id: &str, args: &Value, ctx: &PredicateContext) -> bool;

    /// Whether an action dispatcher was given; without one the engine uses a no-op.
    fn has_dispatcher(&self) -> bool;

    /// Calls the action dispatcher with the plan's actions (list of
    /// `{kind, payload, references}`); returns its raw return value (`Null` for None)
    /// or the error text.
    async fn dispatch_actions(&self, actions: Value, ctx: DispatchContext)
    -> Result<Value, String>;
}

/// A host without callbacks: no tools, no predicates, no dispatcher.
pub struct NoHost;

#[async_trait]
impl Host for NoHost {
    async fn call_tool(&self, call: HostToolCall) -> HostToolOutcome {
        HostToolOutcome {
            result: Err(format!(
                "no handler is registered for tool binding '{}'",
                call.binding_key
            )),
            created_references: Vec::new(),
        }
    }

    async fn evaluate_predicate(&self, _id: &str, _args: &Value, _ctx: &PredicateContext) -> bool {
        true
    }

    fn has_dispatcher(&self) -> bool {
        false
    }

    async fn dispatch_actions(
        &self,
        _actions: Value,
        _ctx: DispatchContext,
    ) -> Result<Value, String> {
        Ok(Value::Null)
    }
}
