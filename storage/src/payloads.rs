//! Typed payloads of the journal records, one struct per [`RecordKind`].
//!
//! These are plain data: storage interprets nothing about agents, but keeping the
//! shapes here lets FORMAT.md document every record in one place. Payloads are stored
//! as the compact JSON text of these structs; JSON values that came from outside (tool
//! arguments and results, plan bodies, provider output) are kept as [`RawValue`] so the
//! text recorded is the text received, and live and replayed events agree byte for byte.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::RecordKind;

/// A JSON value kept as the exact text it was recorded with.
pub type Json = Box<RawValue>;

/// The first version of every payload layout below; a kind whose layout changed since
/// says so in its [`Payload::VERSION`].
pub const PAYLOAD_VERSION: u16 = 1;

/// A payload type and the record kind that carries it.
pub trait Payload: Serialize + DeserializeOwned {
    const KIND: RecordKind;
    /// The layout version written in new records of this kind (FORMAT.md lists the
    /// changes). Readers decode every earlier version too.
    const VERSION: u16 = PAYLOAD_VERSION;
}

macro_rules! payload {
    ($ty:ident) => {
        impl Payload for $ty {
            const KIND: RecordKind = RecordKind::$ty;
        }
    };
}

/// Lineage of a forked run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    pub run_id: String,
    pub seq: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunStarted {
    pub tenant: String,
    pub thread: String,
    /// Entry agent name as requested (it may not exist: the run then fails).
    pub agent: String,
    /// `"query"` (entry = the coordinator) or `"specialist"`.
    pub entry: String,
    pub prompt: String,
    pub spec_hash: String,
    pub interpreter: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentRef>,
}
payload!(RunStarted);

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryLoaded {
    pub agent: String,
    pub thread: String,
    pub invocation_id: String,
    /// Conversation entries of earlier completed runs of this thread, oldest first.
    pub entries: Vec<Json>,
}
payload!(MemoryLoaded);

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentInvoked {
    pub agent: String,
    pub invocation_id: String,
    pub thread: String,
    /// The prompt of a delegated agent. The entry agent's prompt is RunStarted's and is
    /// not written again (version 2); version 1 records carry it here too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    pub model: String,
    /// Seq of the `call_agent` ToolCallStarted that invoked this agent; None for the entry agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_call: Option<u64>,
}

impl Payload for AgentInvoked {
    const KIND: RecordKind = RecordKind::AgentInvoked;
    const VERSION: u16 = 2;
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentReturned {
    pub agent: String,
    pub invocation_id: String,
    /// Concatenated text of the agent's turns.
    pub response: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
payload!(AgentReturned);

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelRequested {
    pub agent: String,
    pub invocation_id: String,
    pub turn: u32,
    pub provider: String,
    pub model: String,
    pub request_hash: String,
}
payload!(ModelRequested);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkRecord {
    /// `"text"` or `"reasoning"`.
    pub kind: String,
    pub text: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolCallRecord {
    pub id: String,
    pub name: String,
    pub args: Json,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageRecord {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub total_tokens: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelResponded {
    pub agent: String,
    pub invocation_id: String,
    pub turn: u32,
    pub model: String,
    /// Text and reasoning exactly as emitted, one entry per streamed delta.
    pub chunks: Vec<ChunkRecord>,
    pub tool_calls: Vec<ToolCallRecord>,
    pub usage: UsageRecord,
    /// `"stop" | "tool-calls" | "length" | "content-filter"`.
    pub finish_reason: String,
    /// Deterministic interpreters dispatch their tools inside the turn, so their
    /// `finish` comes after the tool calls (journaled as a StreamEmitted record).
    #[serde(default)]
    pub finish_after_tools: bool,
    /// Live providers: cost and latency summaries emitted before `finish`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summaries: Option<Json>,
    /// An interpreter error: yields an `error` event and aborts the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
payload!(ModelResponded);

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolCallStarted {
    pub agent: String,
    pub invocation_id: String,
    pub tool_use_id: String,
    pub tool: String,
    pub args: Json,
}
payload!(ToolCallStarted);

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PredicateEvaluated {
    pub predicate: String,
    /// `"tool"` or `"plan"`.
    pub kind: String,
    pub target: String,
    pub answer: bool,
}
payload!(PredicateEvaluated);

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRequested {
    pub approval_id: String,
    /// `"tool"` or `"plan"`.
    pub kind: String,
    pub target: String,
    pub payload: Json,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glimpse: Option<Json>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    pub resource_id: String,
    pub thread_id: String,
}
payload!(ApprovalRequested);

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalDecided {
    pub approval_id: String,
    /// Copied from the request so the decision's events need no other record.
    pub kind: String,
    pub target: String,
    /// `"approve" | "reject" | "revise" | "cancelled"`.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<Json>,
    /// `"engine"` or `"host"`.
    pub origin: String,
}
payload!(ApprovalDecided);

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptStarted {
    /// Seq of the call's ToolCallStarted (or of the dispatch's DispatchStarted).
    pub call_seq: u64,
    pub attempt: u32,
    pub idempotency_key: String,
}
payload!(AttemptStarted);

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UiEventRecord {
    /// `"data-flow-ui"` (from `approvalDsl`) or `"text"` (from `displaySummary`).
    pub kind: String,
    pub text: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolCallCompleted {
    /// Seq of the call's ToolCallStarted.
    pub call_seq: u64,
    pub result: Json,
    pub is_error: bool,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ui: Vec<UiEventRecord>,
    /// Deterministic interpreters echo a successful result as a `text` event.
    #[serde(default)]
    pub echo_text: bool,
}
payload!(ToolCallCompleted);

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanStored {
    pub plan_id: String,
    pub version: u64,
    pub spec_name: String,
    /// The full stored plan JSON (API.md §5.4).
    pub plan: Json,
}
payload!(PlanStored);

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanTransitioned {
    pub plan_id: String,
    pub from: String,
    pub to: String,
    /// The plan JSON after the transition.
    pub plan: Json,
    /// Only an auto-approved `draft→approved` yields a `plan-status-change` event.
    #[serde(default)]
    pub emit: bool,
}
payload!(PlanTransitioned);

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefsHydrated {
    pub plan_id: String,
    /// `{kind: {id: value}}` when every reference resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved: Option<Json>,
    /// The first missing reference in plan order, as `[kind, id]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<(String, String)>,
}
payload!(RefsHydrated);

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DispatchStarted {
    pub plan_id: String,
    pub attempt: u32,
    pub idempotency_key: String,
}
payload!(DispatchStarted);

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionsDispatched {
    pub plan_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Json>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
payload!(ActionsDispatched);

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReferenceCreated {
    pub kind: String,
    pub id: String,
}
payload!(ReferenceCreated);

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamEmitted {
    pub event: Json,
}
payload!(StreamEmitted);

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunCompleted {}
payload!(RunCompleted);

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunFailed {
    /// The message of the run's closing `error` event.
    pub error: String,
}
payload!(RunFailed);

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunCancelled {
    /// `"engine"` or `"host"`.
    pub origin: String,
}
payload!(RunCancelled);
