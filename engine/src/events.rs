//! Stream events and their projection from journal records.
//!
//! The stream is a projection of the journal (DESIGN.md §3 rule 3): every event is
//! produced by [`Projector::project`] from the record that holds it, live and in
//! replay alike, so both produce the same JSON text byte for byte. The only events
//! made before their record are live provider deltas; the driver skips those when the
//! record is projected afterwards.

use std::collections::BTreeMap;

use flowai_storage::RecordKind;
use flowai_storage::payloads::{self, Json, Payload};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::error::EngineError;

/// One stream event: the compact JSON text of an API.md §3.1 event object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event(String);

impl Event {
    fn of<T: Serialize>(value: &T) -> Result<Event, EngineError> {
        serde_json::to_string(value)
            .map(Event)
            .map_err(|e| EngineError::Internal(format!("event serialization failed: {e}")))
    }

    /// Builds an event from already serialized JSON text (a recorded StreamEmitted event).
    pub fn from_json_text(text: String) -> Event {
        Event(text)
    }

    /// The event's JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }

    /// The event parsed as a JSON value (tests and tools; the hot path keeps the text).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(&self.0).unwrap_or(serde_json::Value::Null)
    }

    /// The `type` field of the event.
    pub fn event_type(&self) -> String {
        self.to_value()
            .get("type")
            .and_then(|t| t.as_str())
            .unwrap_or_default()
            .to_owned()
    }
}

#[derive(Serialize)]
struct Typed<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
}

#[derive(Serialize)]
struct TextEvent<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    text: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolAgentEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    agent_name: &'a str,
    tool_invocation_id: &'a str,
    state: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolInvocationEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    tool_invocation_id: &'a str,
    tool_name: &'a str,
    args: &'a RawValue,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a RawValue>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FinishEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    finish_reason: &'a str,
    usage: &'a payloads::UsageRecord,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    message: &'a str,
}

#[derive(Serialize)]
struct ErrorEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct DataEvent<T: Serialize> {
    #[serde(rename = "type")]
    kind: &'static str,
    data: T,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ApprovalRequiredData<'a> {
    id: &'a str,
    kind: &'a str,
    target: &'a str,
    payload: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    glimpse: Option<&'a RawValue>,
    resource_id: &'a str,
    thread_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_id: Option<&'a str>,
}

#[derive(Serialize)]
struct OutcomeBody<'a> {
    outcome: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    partial: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct ApprovalDecisionData<'a> {
    id: &'a str,
    outcome: OutcomeBody<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    feedback: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PlanStatusData<'a> {
    plan_id: &'a str,
    from: &'a str,
    to: &'a str,
}

#[derive(Serialize)]
struct FlowUiData<'a> {
    dsl: &'a str,
}

/// The `finish` event of a deterministic turn, journaled as a StreamEmitted record.
pub(crate) fn finish_event_json(finish_reason: &str, usage: &payloads::UsageRecord) -> Json {
    let text = serde_json::to_string(&FinishEvent {
        kind: "finish",
        finish_reason,
        usage,
    })
    .unwrap_or_else(|_| String::from("{\"type\":\"finish\"}"));
    RawValue::from_string(text).unwrap_or_else(|_| null_json())
}

pub(crate) fn null_json() -> Json {
    // RawValue's Default is `null`.
    Box::<RawValue>::default()
}

struct CallInfo {
    tool_use_id: String,
    tool: String,
    args: Json,
}

/// Projects journal records to stream events, in journal order.
///
/// It keeps the few facts a later record's events need from an earlier one (a tool
/// call's id, name and arguments for its result event), so it must see every record
/// of the run in order, including the ones whose events are not delivered.
#[derive(Default)]
pub struct Projector {
    calls: BTreeMap<u64, CallInfo>,
}

/// What the events of a ModelResponded need of it: not its tool calls, whose arguments a
/// scripted turn can carry by the megabyte (their events come from ToolCallStarted).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ModelRespondedView {
    chunks: Vec<payloads::ChunkRecord>,
    usage: payloads::UsageRecord,
    finish_reason: String,
    #[serde(default)]
    finish_after_tools: bool,
    #[serde(default)]
    summaries: Option<Json>,
    #[serde(default)]
    error: Option<String>,
}

pub(crate) fn decode<P: Payload>(seq: u64, payload: &str) -> Result<P, EngineError> {
    serde_json::from_str(payload).map_err(|e| EngineError::CorruptPayload {
        seq,
        kind: P::KIND.name(),
        reason: e.to_string(),
    })
}

impl Projector {
    pub fn new() -> Projector {
        Projector::default()
    }

    /// The events a record yields.
    pub fn project(
        &mut self,
        seq: u64,
        kind: RecordKind,
        payload: &str,
    ) -> Result<Vec<Event>, EngineError> {
        let mut out = Vec::new();
        match kind {
            RecordKind::AgentInvoked => {
                let p: payloads::AgentInvoked = decode(seq, payload)?;
                out.push(Event::of(&ToolAgentEvent {
                    kind: "tool-agent",
                    agent_name: &p.agent,
                    tool_invocation_id: &p.invocation_id,
                    state: "call",
                })?);
            }
            RecordKind::AgentReturned => {
                let p: payloads::AgentReturned = decode(seq, payload)?;
                if p.error.is_none() {
                    out.push(Event::of(&ToolAgentEvent {
                        kind: "tool-agent",
                        agent_name: &p.agent,
                        tool_invocation_id: &p.invocation_id,
                        state: "result",
                    })?);
                }
            }
            RecordKind::ModelResponded => {
                let p: ModelRespondedView =
                    serde_json::from_str(payload).map_err(|e| EngineError::CorruptPayload {
                        seq,
                        kind: RecordKind::ModelResponded.name(),
                        reason: e.to_string(),
                    })?;
                out.push(Event::of(&Typed { kind: "step-start" })?);
                for chunk in &p.chunks {
                    out.push(Event::of(&TextEvent {
                        kind: if chunk.kind == "reasoning" {
                            "reasoning"
                        } else {
                            "text"
                        },
                        text: &chunk.text,
                    })?);
                }
                if let Some(message) = &p.error {
                    out.push(Event::of(&ErrorEvent {
                        kind: "error",
                        error: ErrorBody { message },
                    })?);
                } else {
                    if let Some(summaries) = &p.summaries {
                        let list: Vec<&RawValue> =
                            serde_json::from_str(summaries.get()).map_err(|e| {
                                EngineError::CorruptPayload {
                                    seq,
                                    kind: "ModelResponded",
                                    reason: format!("summaries: {e}"),
                                }
                            })?;
                        for s in list {
                            out.push(Event::from_json_text(s.get().to_owned()));
                        }
                    }
                    if !p.finish_after_tools {
                        out.push(Event::of(&FinishEvent {
                            kind: "finish",
                            finish_reason: &p.finish_reason,
                            usage: &p.usage,
                        })?);
                    }
                }
            }
            RecordKind::ToolCallStarted => {
                let p: payloads::ToolCallStarted = decode(seq, payload)?;
                out.push(Event::of(&ToolInvocationEvent {
                    kind: "tool-invocation",
                    tool_invocation_id: &p.tool_use_id,
                    tool_name: &p.tool,
                    args: &p.args,
                    state: "call",
                    result: None,
                })?);
                self.calls.insert(
                    seq,
                    CallInfo {
                        tool_use_id: p.tool_use_id,
                        tool: p.tool,
                        args: p.args,
                    },
                );
            }
            RecordKind::ToolCallCompleted => {
                let p: payloads::ToolCallCompleted = decode(seq, payload)?;
                let call =
                    self.calls
                        .remove(&p.call_seq)
                        .ok_or_else(|| EngineError::CorruptPayload {
                            seq,
                            kind: "ToolCallCompleted",
                            reason: format!("no ToolCallStarted at seq {}", p.call_seq),
                        })?;
                for ui in &p.ui {
                    if ui.kind == "data-flow-ui" {
                        out.push(Event::of(&DataEvent {
                            kind: "data-flow-ui",
                            data: FlowUiData { dsl: &ui.text },
                        })?);
                    } else {
                        out.push(Event::of(&TextEvent {
                            kind: "text",
                            text: &ui.text,
                        })?);
                    }
                }
                out.push(Event::of(&ToolInvocationEvent {
                    kind: "tool-invocation",
                    tool_invocation_id: &call.tool_use_id,
                    tool_name: &call.tool,
                    args: &call.args,
                    state: "result",
                    result: Some(&p.result),
                })?);
                if p.echo_text && !p.is_error {
                    out.push(Event::of(&TextEvent {
                        kind: "text",
                        text: p.result.get(),
                    })?);
                }
            }
            RecordKind::ApprovalRequested => {
                let p: payloads::ApprovalRequested = decode(seq, payload)?;
                out.push(Event::of(&DataEvent {
                    kind: "approval-required",
                    data: ApprovalRequiredData {
                        id: &p.approval_id,
                        kind: &p.kind,
                        target: &p.target,
                        payload: &p.payload,
                        glimpse: p.glimpse.as_deref(),
                        resource_id: &p.resource_id,
                        thread_id: &p.thread_id,
                        correlation_id: p.correlation_id.as_deref(),
                    },
                })?);
                if p.kind == "plan" {
                    out.push(Event::of(&DataEvent {
                        kind: "plan-status-change",
                        data: PlanStatusData {
                            plan_id: &p.target,
                            from: "draft",
                            to: "pending_approval",
                        },
                    })?);
                }
            }
            RecordKind::ApprovalDecided => {
                let p: payloads::ApprovalDecided = decode(seq, payload)?;
                let null = null_json();
                if p.outcome != "cancelled" {
                    out.push(Event::of(&DataEvent {
                        kind: "approval-decision",
                        data: ApprovalDecisionData {
                            id: &p.approval_id,
                            outcome: OutcomeBody {
                                outcome: &p.outcome,
                                partial: if p.outcome == "revise" {
                                    Some(p.partial.as_deref().unwrap_or(&null))
                                } else {
                                    None
                                },
                            },
                            feedback: p.feedback.as_deref(),
                        },
                    })?);
                    if p.kind == "plan" {
                        out.push(Event::of(&DataEvent {
                            kind: "plan-status-change",
                            data: PlanStatusData {
                                plan_id: &p.target,
                                from: "pending_approval",
                                to: if p.outcome == "approve" {
                                    "approved"
                                } else {
                                    "draft"
                                },
                            },
                        })?);
                    }
                }
            }
            RecordKind::PlanTransitioned => {
                let p: payloads::PlanTransitioned = decode(seq, payload)?;
                if p.emit {
                    out.push(Event::of(&DataEvent {
                        kind: "plan-status-change",
                        data: PlanStatusData {
                            plan_id: &p.plan_id,
                            from: &p.from,
                            to: &p.to,
                        },
                    })?);
                }
            }
            RecordKind::StreamEmitted => {
                let p: payloads::StreamEmitted = decode(seq, payload)?;
                out.push(Event::from_json_text(p.event.get().to_owned()));
            }
            RecordKind::RunFailed => {
                let p: payloads::RunFailed = decode(seq, payload)?;
                out.push(Event::of(&ErrorEvent {
                    kind: "error",
                    error: ErrorBody { message: &p.error },
                })?);
            }
            RecordKind::RunStarted
            | RecordKind::MemoryLoaded
            | RecordKind::ModelRequested
            | RecordKind::PredicateEvaluated
            | RecordKind::AttemptStarted
            | RecordKind::PlanStored
            | RecordKind::RefsHydrated
            | RecordKind::DispatchStarted
            | RecordKind::ActionsDispatched
            | RecordKind::ReferenceCreated
            | RecordKind::RunCompleted
            | RecordKind::RunCancelled => {}
        }
        Ok(out)
    }
}
