//! The run driver: one deterministic program over a run's journal (DESIGN.md §5).
//!
//! `Driver::run` walks the agent loop. At every decision point it first takes the next
//! recorded record and acts live only when the journal is exhausted (Live and Resume);
//! in Resume and Verify it compares the command it would issue with the recorded one.
//! Nothing that steers a run is read from outside the journal: model output, tool
//! results, predicate answers, approval decisions, ids and reference lookups are
//! recorded the first time and read back afterwards.

use std::sync::Arc;

use flowai_storage::payloads::{self, Json};
use flowai_storage::{ApprovalRow, ApprovalStatus, IndexUpdate, RecordKind, RunMeta, RunStatus};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::error::EngineError;
use crate::events::{Event, finish_event_json};
use crate::host::{CreatedReference, HostToolCall, PredicateContext, ToolCallContext};
use crate::interpret::{self, TurnPlan};
use crate::journal::{DriveMode, RunJournal};
use crate::runtime::Shared;
use crate::spec::{AgentRole, ApprovalRule, BuiltinTool, CompiledAgent, ToolKind};

/// A decision on an approval, from the host.
#[derive(Clone, Debug)]
pub struct Decision {
    /// `"approve"`, `"reject"` or `"revise"`.
    pub outcome: String,
    pub feedback: Option<String>,
    pub partial: Option<Value>,
}

/// Messages from the runtime API to a run being driven.
pub(crate) enum Control {
    Decide {
        approval_id: String,
        decision: Decision,
        ack: oneshot::Sender<Result<(), EngineError>>,
    },
    /// A host appended records to the run's journal (a decision recorded while the
    /// run was starting to be driven): read them before waiting.
    Appended,
    Cancel,
}

/// Whether a run's driver waits at a gate, shared with the runtime API: a cancellation of
/// a run that waits there is recorded at once, so `Runtime::cancel` can wait for it to be
/// durable (anywhere else the driver sees it only at its next step, and whoever cancels
/// may be what that step waits for: the event loop, for an async handler or a consumer).
#[derive(Default)]
pub(crate) struct GateWait {
    parked: bool,
    /// Told once the cancellation is durable; dropped if the driver leaves the gate for
    /// another reason first.
    cancel_acks: Vec<oneshot::Sender<()>>,
}

impl GateWait {
    /// An acknowledgement of the cancellation about to be sent, if the driver waits at a
    /// gate now (and so will record it without taking another step).
    pub(crate) fn ack_when_cancelled(&mut self) -> Option<oneshot::Receiver<()>> {
        if !self.parked {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.cancel_acks.push(tx);
        Some(rx)
    }
}

pub(crate) type SharedGateWait = Arc<std::sync::Mutex<GateWait>>;

/// Marks the driver as waiting at a gate, for a driver that can hear a cancellation there
/// (`None`: one without control messages, which cannot).
fn park(gate_wait: Option<&SharedGateWait>) {
    if let Some(gate_wait) = gate_wait {
        gate_wait.lock().unwrap_or_else(|p| p.into_inner()).parked = true;
    }
}

/// How a run's driving ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEnd {
    Completed,
    Failed,
    Cancelled,
    /// Verify reached the end of the journal while the run was still open.
    JournalEnd,
}

/// A tool call's outcome as recorded.
pub(crate) struct ToolOutcome {
    pub value: Value,
    pub is_error: bool,
}

impl ToolOutcome {
    pub(crate) fn ok(value: Value) -> ToolOutcome {
        ToolOutcome {
            value,
            is_error: false,
        }
    }

    pub(crate) fn error(message: impl Into<String>) -> ToolOutcome {
        ToolOutcome {
            value: json!({ "error": message.into() }),
            is_error: true,
        }
    }
}

/// How an approval gate ended.
pub(crate) enum GateOutcome {
    /// No approval was required.
    Open,
    Decided(payloads::ApprovalDecided),
}

/// What one invocation of a stateful agent adds to its thread memory (API.md §9.7): the
/// prompt, each tool call with its result, the response. A stateless agent keeps nothing,
/// so a long scripted or live invocation does not copy every call's arguments and result
/// only to drop them when it returns.
pub(crate) struct Conversation(Option<Vec<Value>>);

impl Conversation {
    fn new(stateful: bool, prompt: &str) -> Conversation {
        Conversation(stateful.then(|| vec![json!({"role": "user", "text": prompt})]))
    }

    /// Adds the entry `entry` makes, if the conversation is kept.
    fn push_with(&mut self, entry: impl FnOnce() -> Value) {
        if let Some(entries) = &mut self.0 {
            entries.push(entry());
        }
    }

    /// Adds a tool call with its result, if the conversation is kept.
    pub(crate) fn push_tool_call(&mut self, call: &payloads::ToolCallRecord, result: &Value) {
        self.push_with(|| {
            json!({
                "role": "tool", "id": call.id, "name": call.name,
                "args": parse_raw(&call.args), "result": result,
            })
        });
    }

    /// Each entry as JSON text, or `None` for a stateless agent.
    fn into_entries(self) -> Option<Vec<String>> {
        self.0
            .map(|entries| entries.iter().map(Value::to_string).collect())
    }
}

/// Where an agent invocation stands in its caller.
pub(crate) struct Invocation<'a> {
    pub(crate) agent: &'a CompiledAgent,
    pub(crate) invocation_id: String,
    pub(crate) thread: String,
    /// The request thread (delegated threads derive from it at any depth).
    pub(crate) request_thread: String,
}

pub(crate) struct Driver {
    shared: Arc<Shared>,
    j: RunJournal,
    run: String,
    tenant: String,
    control: Option<mpsc::UnboundedReceiver<Control>>,
    /// Control messages that arrived before the gate they are for (while replaying).
    deferred: std::collections::VecDeque<Control>,
    cancel_requested: bool,
    gate_wait: SharedGateWait,
    /// Approvals this driver resolved as cancelled at their gate, in the commit that
    /// ends the run (the store still shows them pending until then).
    cancelled_at_gate: Vec<String>,
    memory_out: Vec<IndexUpdate>,
    /// Plans as this run's journal last showed them (resume and verify never read
    /// plan state from the live table for a plan the run itself wrote).
    pub(crate) plans: std::collections::BTreeMap<String, crate::plans::KnownPlan>,
}

pub(crate) fn raw(value: &Value) -> Result<Json, EngineError> {
    serde_json::value::to_raw_value(value)
        .map_err(|e| EngineError::Internal(format!("cannot encode JSON value: {e}")))
}

pub(crate) fn parse_raw(raw: &RawValue) -> Value {
    serde_json::from_str(raw.get()).unwrap_or(Value::Null)
}

/// Whether two recorded JSON texts hold the same value, as [`parse_raw`] reads them. The
/// same text (what a replayed decision usually recomputes) needs no parse.
fn same_json(a: &RawValue, b: &RawValue) -> bool {
    a.get() == b.get() || parse_raw(a) == parse_raw(b)
}

impl Driver {
    pub(crate) fn new(
        shared: Arc<Shared>,
        journal: RunJournal,
        control: Option<mpsc::UnboundedReceiver<Control>>,
        gate_wait: SharedGateWait,
        cancel_requested: bool,
    ) -> Driver {
        let run = journal.run_id().to_string();
        let tenant = shared.compiled.tenant.clone();
        Driver {
            shared,
            j: journal,
            run,
            tenant,
            control,
            deferred: std::collections::VecDeque::new(),
            cancel_requested,
            gate_wait,
            cancelled_at_gate: Vec::new(),
            memory_out: Vec::new(),
            plans: std::collections::BTreeMap::new(),
        }
    }

    fn divergence(&self, seq: u64, recorded: String, actual: String) -> EngineError {
        EngineError::NonDeterminism {
            run: self.run.clone(),
            seq,
            recorded,
            actual,
        }
    }

    /// Drives the run to its end (or, in Verify, to the end of its journal).
    pub(crate) async fn run(
        mut self,
        start: Option<payloads::RunStarted>,
    ) -> Result<RunEnd, EngineError> {
        let span = tracing::info_span!("run", run_id = %self.run, tenant = %self.tenant);
        let _guard = span.enter();
        drop(_guard);
        let result = self.run_inner(start).await;
        match result {
            Ok(end) => Ok(end),
            Err(EngineError::JournalEnd) => Ok(RunEnd::JournalEnd),
            Err(EngineError::CancelRequested) => self.finish_cancelled().await,
            Err(other) => Err(other),
        }
    }

    async fn run_inner(
        &mut self,
        start: Option<payloads::RunStarted>,
    ) -> Result<RunEnd, EngineError> {
        let started = match start {
            Some(started) => {
                let now = self.j.now_ms();
                let run_id = self.j.run_id();
                self.j.push(
                    &started,
                    vec![
                        IndexUpdate::CreateRun(RunMeta {
                            run_id,
                            tenant: started.tenant.clone(),
                            thread: started.thread.clone(),
                            agent: started.agent.clone(),
                            status: RunStatus::Running,
                            created_at_ms: now,
                            updated_at_ms: now,
                            parent: None,
                        }),
                        IndexUpdate::PutSpec {
                            hash: self.shared.spec_hash.clone(),
                            json: self.shared.spec_json.clone(),
                        },
                    ],
                )?;
                started
            }
            None => match self.j.take::<payloads::RunStarted>().await? {
                Some((_, started)) => {
                    if self.j.mode() == DriveMode::Resume {
                        // Driven again: `running` from its next commit on (a gate it
                        // waits at again sets `suspended` after this).
                        let (run_id, at_ms) = (self.j.run_id(), self.j.now_ms());
                        self.j.push_updates(vec![IndexUpdate::SetRunStatus {
                            run_id,
                            status: RunStatus::Running,
                            at_ms,
                        }]);
                    }
                    started
                }
                None => {
                    return Err(EngineError::Internal(format!(
                        "run {} has no RunStarted record",
                        self.run
                    )));
                }
            },
        };

        let entry = match self.entry_agent(&started) {
            Ok(agent) => agent,
            Err(message) => return self.finish_failed(message).await,
        };
        let shared = Arc::clone(&self.shared);
        let agent = &shared.compiled.agents[entry];
        let invocation = Invocation {
            agent,
            invocation_id: String::new(),
            thread: started.thread.clone(),
            request_thread: started.thread.clone(),
        };
        match self.invoke_agent(invocation, &started.prompt, None).await? {
            Ok(_) => self.finish_completed().await,
            Err(message) => self.finish_failed(format!("agent failed: {message}")).await,
        }
    }

    fn entry_agent(&self, started: &payloads::RunStarted) -> Result<usize, String> {
        let agents = &self.shared.compiled.agents;
        if started.entry == "specialist" {
            let Some(index) = agents.iter().position(|a| a.name == started.agent) else {
                return Err(format!("specialist '{}' not found", started.agent));
            };
            if agents[index].role != AgentRole::Specialist {
                return Err(format!("agent '{}' is not a specialist", started.agent));
            }
            Ok(index)
        } else {
            agents
                .iter()
                .position(|a| a.role == AgentRole::Coordinator)
                .ok_or_else(|| String::from("no coordinator agent registered in the spec"))
        }
    }

    async fn finish_completed(&mut self) -> Result<RunEnd, EngineError> {
        if self.j.take::<payloads::RunCompleted>().await?.is_none() {
            let mut updates = std::mem::take(&mut self.memory_out);
            updates.push(IndexUpdate::SetRunStatus {
                run_id: self.j.run_id(),
                status: RunStatus::Completed,
                at_ms: self.j.now_ms(),
            });
            self.j.push(&payloads::RunCompleted {}, updates)?;
            self.j.flush().await?;
        }
        tracing::info!(run_id = %self.run, "run completed");
        Ok(RunEnd::Completed)
    }

    async fn finish_failed(&mut self, error: String) -> Result<RunEnd, EngineError> {
        match self.j.take::<payloads::RunFailed>().await? {
            Some((seq, recorded)) => {
                if recorded.error != error {
                    return Err(self.divergence(
                        seq,
                        format!("RunFailed {:?}", recorded.error),
                        format!("RunFailed {error:?}"),
                    ));
                }
            }
            None => {
                let updates = vec![IndexUpdate::SetRunStatus {
                    run_id: self.j.run_id(),
                    status: RunStatus::Failed,
                    at_ms: self.j.now_ms(),
                }];
                self.j.push(&payloads::RunFailed { error }, updates)?;
                self.j.flush().await?;
            }
        }
        tracing::info!(run_id = %self.run, "run failed");
        Ok(RunEnd::Failed)
    }

    async fn finish_cancelled(&mut self) -> Result<RunEnd, EngineError> {
        if self.j.mode() == DriveMode::Verify {
            return Ok(RunEnd::JournalEnd);
        }
        for (decided, update) in
            crate::runtime::cancelled_decisions(self.j.store(), self.j.run_id(), "engine")?
        {
            if !self.cancelled_at_gate.contains(&decided.approval_id) {
                self.j.push(&decided, vec![update])?;
            }
        }
        let updates = vec![IndexUpdate::SetRunStatus {
            run_id: self.j.run_id(),
            status: RunStatus::Cancelled,
            at_ms: self.j.now_ms(),
        }];
        self.j.push(
            &payloads::RunCancelled {
                origin: String::from("engine"),
            },
            updates,
        )?;
        let committed = self.j.commit().await;
        // Acknowledged once durable and before the events wait on the consumer, which
        // may be the one waiting for this acknowledgement.
        self.leave_gate(committed.is_ok());
        self.j.deliver(committed?).await;
        Ok(RunEnd::Cancelled)
    }

    /// Checks for a cancellation request between steps.
    fn check_cancel(&mut self) -> Result<(), EngineError> {
        if let Some(control) = &mut self.control {
            while let Ok(message) = control.try_recv() {
                match message {
                    Control::Cancel => self.cancel_requested = true,
                    Control::Decide {
                        approval_id,
                        decision,
                        ack,
                    } => {
                        // A resumed run may be answered while it replays toward its
                        // gate; an answer to an approval no longer pending (a duplicate)
                        // is refused now rather than when the run next waits.
                        let pending = matches!(
                            self.j.store().approval(&approval_id),
                            Ok(Some(row)) if row.status == ApprovalStatus::Pending
                        );
                        if pending {
                            self.deferred.push_back(Control::Decide {
                                approval_id,
                                decision,
                                ack,
                            });
                        } else {
                            let _ = ack.send(Err(EngineError::ApprovalResolved(approval_id)));
                        }
                    }
                    Control::Appended => self.deferred.push_back(Control::Appended),
                }
            }
        }
        if self.cancel_requested && !self.j.replaying() && self.j.mode() != DriveMode::Verify {
            return Err(EngineError::CancelRequested);
        }
        // A cancelled run recorded the results of the calls still open when it stopped,
        // innermost first, right where a check failed: replayed, it stops there too. (No
        // check point is otherwise followed by a ToolCallCompleted.)
        if self.j.peek_kind() == Some(RecordKind::ToolCallCompleted) {
            return Err(EngineError::CancelRequested);
        }
        Ok(())
    }

    /// Runs one agent invocation. `Ok(Err(message))` is an agent failure (the agent
    /// aborted); `Err` is an engine error that stops the run.
    fn invoke_agent<'a>(
        &'a mut self,
        mut inv: Invocation<'a>,
        prompt: &'a str,
        parent_call: Option<u64>,
    ) -> futures::future::BoxFuture<'a, Result<Result<String, String>, EngineError>> {
        Box::pin(async move {
            self.check_cancel()?;
            let agent = inv.agent;
            match self.j.take::<payloads::AgentInvoked>().await? {
                Some((seq, recorded)) => {
                    // Without a prompt, the record is the entry agent's (its prompt is
                    // the RunStarted this invocation took it from).
                    let same_prompt = match &recorded.prompt {
                        Some(text) => text == prompt,
                        None => parent_call.is_none(),
                    };
                    if recorded.agent != agent.name || !same_prompt {
                        let recorded_prompt = match &recorded.prompt {
                            Some(text) => format!("{text:?}"),
                            None => String::from("of the run"),
                        };
                        return Err(self.divergence(
                            seq,
                            format!(
                                "invoke agent {} with prompt {recorded_prompt}",
                                recorded.agent
                            ),
                            format!("invoke agent {} with prompt {:?}", agent.name, prompt),
                        ));
                    }
                    inv.invocation_id = recorded.invocation_id;
                }
                None => {
                    if inv.invocation_id.is_empty() {
                        inv.invocation_id = format!("inv-{}", self.shared.ids.uuid4());
                    }
                    self.j.push(
                        &payloads::AgentInvoked {
                            agent: agent.name.clone(),
                            invocation_id: inv.invocation_id.clone(),
                            thread: inv.thread.clone(),
                            prompt: parent_call.map(|_| prompt.to_owned()),
                            model: agent.model_id.clone(),
                            parent_call,
                        },
                        Vec::new(),
                    )?;
                }
            }
            tracing::debug!(run_id = %self.run, agent = %agent.name, "agent invoked");

            let memory = if agent.stateful {
                match self.j.take::<payloads::MemoryLoaded>().await? {
                    Some((_, loaded)) => loaded.entries,
                    None => {
                        let texts =
                            self.j
                                .store()
                                .memory(&self.tenant, &inv.thread, &agent.name)?;
                        let mut entries = Vec::with_capacity(texts.len());
                        for text in texts {
                            entries.push(RawValue::from_string(text).map_err(|e| {
                                EngineError::Internal(format!("thread memory is not JSON: {e}"))
                            })?);
                        }
                        self.j.push(
                            &payloads::MemoryLoaded {
                                agent: agent.name.clone(),
                                thread: inv.thread.clone(),
                                invocation_id: inv.invocation_id.clone(),
                                entries: entries.clone(),
                            },
                            Vec::new(),
                        )?;
                        entries
                    }
                }
            } else {
                Vec::new()
            };

            let mut conversation = Conversation::new(agent.stateful, prompt);
            let outcome = self
                .agent_turns(&inv, prompt, &memory, &mut conversation)
                .await?;
            let (response, error) = match outcome {
                Ok(response) => (response, None),
                Err(message) => (String::new(), Some(message)),
            };
            match self.j.take::<payloads::AgentReturned>().await? {
                Some((seq, recorded)) => {
                    if recorded.error != error {
                        return Err(self.divergence(
                            seq,
                            format!(
                                "agent {} returns error {:?}",
                                recorded.agent, recorded.error
                            ),
                            format!("agent {} returns error {:?}", agent.name, error),
                        ));
                    }
                }
                None => {
                    self.j.push(
                        &payloads::AgentReturned {
                            agent: agent.name.clone(),
                            invocation_id: inv.invocation_id.clone(),
                            response: response.clone(),
                            error: error.clone(),
                        },
                        Vec::new(),
                    )?;
                }
            }
            if error.is_none() {
                conversation.push_with(|| json!({"role": "assistant", "text": response}));
                if let Some(entries) = conversation.into_entries() {
                    self.memory_out.push(IndexUpdate::AppendMemory {
                        tenant: self.tenant.clone(),
                        thread: inv.thread.clone(),
                        agent: agent.name.clone(),
                        entries,
                    });
                }
            }
            Ok(match error {
                None => Ok(response),
                Some(message) => Err(message),
            })
        })
    }

    /// The model turns of one invocation and the tool calls they decide.
    async fn agent_turns(
        &mut self,
        inv: &Invocation<'_>,
        prompt: &str,
        memory: &[Json],
        conversation: &mut Conversation,
    ) -> Result<Result<String, String>, EngineError> {
        let agent = inv.agent;
        if self.shared.interpreter.is_deterministic() {
            let plan = interpret::deterministic_turn(&self.shared.interpreter, agent, prompt);
            let responded = self.deterministic_response(inv, plan).await?;
            if let Some(message) = responded.error {
                return Ok(Err(message));
            }
            let mut response: String = responded
                .chunks
                .iter()
                .filter(|c| c.kind == "text")
                .map(|c| c.text.as_str())
                .collect();
            for call in &responded.tool_calls {
                let outcome = self.run_tool_call(inv, call, true).await?;
                if !outcome.is_error {
                    response.push_str(&outcome.value.to_string());
                }
                conversation.push_tool_call(call, &outcome.value);
            }
            if responded.finish_after_tools {
                let event = finish_event_json(&responded.finish_reason, &responded.usage);
                match self.j.take::<payloads::StreamEmitted>().await? {
                    Some(_) => {}
                    None => {
                        self.j
                            .push(&payloads::StreamEmitted { event }, Vec::new())?;
                    }
                }
            }
            return Ok(Ok(response));
        }
        crate::live::agent_turns(self, inv, prompt, memory, conversation).await
    }

    /// Takes or records a deterministic interpreter's turn, comparing the decision
    /// the current code makes with the recorded one.
    async fn deterministic_response(
        &mut self,
        inv: &Invocation<'_>,
        plan: TurnPlan,
    ) -> Result<payloads::ModelResponded, EngineError> {
        let computed =
            plan.into_record(&inv.agent.name, &inv.invocation_id, &inv.agent.model_id)?;
        match self.j.take::<payloads::ModelResponded>().await? {
            Some((seq, recorded)) => {
                let same_calls = recorded.tool_calls.len() == computed.tool_calls.len()
                    && recorded
                        .tool_calls
                        .iter()
                        .zip(&computed.tool_calls)
                        .all(|(a, b)| a.name == b.name && same_json(&a.args, &b.args));
                if !same_calls
                    || recorded.chunks != computed.chunks
                    || recorded.error != computed.error
                {
                    return Err(self.divergence(
                        seq,
                        describe_turn(&recorded),
                        describe_turn(&computed),
                    ));
                }
                Ok(recorded)
            }
            None => {
                self.j.push(&computed, Vec::new())?;
                Ok(computed)
            }
        }
    }

    /// One tool call through the layers of API.md §3.2: record the call, check the
    /// tool and its input, gate it, run it, record the outcome.
    pub(crate) async fn run_tool_call(
        &mut self,
        inv: &Invocation<'_>,
        call: &payloads::ToolCallRecord,
        echo_text: bool,
    ) -> Result<ToolOutcome, EngineError> {
        self.check_cancel()?;
        let agent = inv.agent;
        let args = parse_raw(&call.args);
        let call_seq = match self.j.take::<payloads::ToolCallStarted>().await? {
            Some((seq, recorded)) => {
                if recorded.tool != call.name
                    || (recorded.args.get() != call.args.get() && parse_raw(&recorded.args) != args)
                {
                    return Err(self.divergence(
                        seq,
                        format!("call tool {} with {}", recorded.tool, recorded.args.get()),
                        format!("call tool {} with {}", call.name, call.args.get()),
                    ));
                }
                seq
            }
            None => self.j.push(
                &payloads::ToolCallStarted {
                    agent: agent.name.clone(),
                    invocation_id: inv.invocation_id.clone(),
                    tool_use_id: call.id.clone(),
                    tool: call.name.clone(),
                    args: call.args.clone(),
                },
                Vec::new(),
            )?,
        };
        let span = tracing::debug_span!("step", run_id = %self.run, seq = call_seq, agent = %agent.name, tool = %call.name);
        let _entered = span.enter();
        drop(_entered);

        let outcome = self.tool_outcome(inv, call, &args, call_seq).await?;
        let completed = self.complete_call(outcome, call_seq, echo_text).await?;
        // A run cancelled meanwhile stops with this result recorded, before anything
        // else the agent would do (another model call, another tool).
        self.check_cancel()?;
        Ok(completed)
    }

    /// Takes or records the outcome of the call recorded at `call_seq`.
    async fn complete_call(
        &mut self,
        outcome: ToolOutcome,
        call_seq: u64,
        echo_text: bool,
    ) -> Result<ToolOutcome, EngineError> {
        match self.j.take::<payloads::ToolCallCompleted>().await? {
            Some((_, recorded)) => Ok(ToolOutcome {
                value: parse_raw(&recorded.result),
                is_error: recorded.is_error,
            }),
            None => {
                let (value, ui) = if outcome.is_error {
                    (outcome.value, Vec::new())
                } else {
                    split_ui_keys(outcome.value)
                };
                self.j.push(
                    &payloads::ToolCallCompleted {
                        call_seq,
                        result: raw(&value)?,
                        is_error: outcome.is_error,
                        duration_ms: 0,
                        ui,
                        echo_text,
                    },
                    Vec::new(),
                )?;
                Ok(ToolOutcome {
                    value,
                    is_error: outcome.is_error,
                })
            }
        }
    }

    async fn tool_outcome(
        &mut self,
        inv: &Invocation<'_>,
        call: &payloads::ToolCallRecord,
        args: &Value,
        call_seq: u64,
    ) -> Result<ToolOutcome, EngineError> {
        let agent = inv.agent;
        let Some(tool) = agent.tools.iter().find(|t| t.name == call.name) else {
            return Ok(ToolOutcome::error(format!("Unknown tool: {}", call.name)));
        };
        if let ToolKind::Host { .. } = tool.kind
            && let Err(why) = tool.validate_args(args)
        {
            return Ok(ToolOutcome::error(format!("Invalid input: {why}")));
        }
        let rule = agent.policy.tool_rule(&call.name).clone();
        match self
            .gate(
                "tool",
                &call.name,
                args,
                Some(call.id.clone()),
                &rule,
                &inv.thread,
            )
            .await?
        {
            GateOutcome::Open => {}
            GateOutcome::Decided(decision) => {
                if decision.outcome != "approve" {
                    if decision.outcome == "cancelled" {
                        return Ok(ToolOutcome::error("Cancelled while awaiting approval"));
                    }
                    return Ok(ToolOutcome {
                        value: json!({
                            "error": "approval_rejected",
                            "rejected": true,
                            "reason": decision.feedback.clone().unwrap_or_else(|| String::from("Approval rejected")),
                            "do_not_retry": true,
                        }),
                        is_error: true,
                    });
                }
            }
        }
        match &tool.kind {
            ToolKind::Host { binding_key } => {
                self.run_host_tool(inv, call, args, call_seq, binding_key.clone())
                    .await
            }
            ToolKind::Builtin(builtin) => {
                self.run_builtin(inv, *builtin, call, args, call_seq).await
            }
        }
    }

    /// Host handler: an attempt is durable before the handler is invoked, so that a
    /// crash re-runs it with the same idempotency key and the next attempt number.
    async fn run_host_tool(
        &mut self,
        inv: &Invocation<'_>,
        call: &payloads::ToolCallRecord,
        args: &Value,
        call_seq: u64,
        binding_key: String,
    ) -> Result<ToolOutcome, EngineError> {
        let idempotency_key = format!("{}:{}", self.run, call_seq);
        let mut last_attempt = 0;
        while self.j.peek_kind() == Some(flowai_storage::RecordKind::AttemptStarted) {
            if let Some((_, attempt)) = self.j.take::<payloads::AttemptStarted>().await? {
                last_attempt = attempt.attempt;
            }
        }
        if last_attempt > 0
            && self.j.peek_kind() == Some(flowai_storage::RecordKind::ToolCallCompleted)
        {
            // The outcome is recorded; references the handler created were recorded before it.
            return Ok(ToolOutcome::ok(Value::Null));
        }
        while self.j.peek_kind() == Some(flowai_storage::RecordKind::ReferenceCreated) {
            self.j.take::<payloads::ReferenceCreated>().await?;
        }
        if let Some(kind) = self.j.peek_kind() {
            if last_attempt > 0 && kind == flowai_storage::RecordKind::ToolCallCompleted {
                // The outcome follows the references the handler created.
                return Ok(ToolOutcome::ok(Value::Null));
            }
            if self.j.cancelled_here() {
                return Err(EngineError::JournalEnd);
            }
            let seq = self.j.next_recorded_seq();
            let (recorded, actual) = if last_attempt == 0 {
                // The recorded run never invoked this handler, e.g. its input failed
                // validation or a gate stood here; the current code would run it.
                (
                    format!("{} (no attempt of tool {})", kind.name(), call.name),
                    format!("AttemptStarted: run the handler of tool {}", call.name),
                )
            } else {
                (
                    format!(
                        "{} after attempt {last_attempt} of tool {}",
                        kind.name(),
                        call.name
                    ),
                    format!("ToolCallCompleted of tool {}", call.name),
                )
            };
            return Err(self.divergence(seq, recorded, actual));
        }
        // Verify never invokes a handler.
        if self.j.mode() == DriveMode::Verify {
            return Err(EngineError::JournalEnd);
        }
        let attempt = last_attempt + 1;
        self.j.push(
            &payloads::AttemptStarted {
                call_seq,
                attempt,
                idempotency_key: idempotency_key.clone(),
            },
            Vec::new(),
        )?;
        self.j.flush().await?;
        let host_call = HostToolCall {
            binding_key,
            tool: call.name.clone(),
            args: args.clone(),
            ctx: ToolCallContext {
                run_id: self.run.clone(),
                agent: inv.agent.name.clone(),
                tool_use_id: call.id.clone(),
                idempotency_key,
                attempt,
                thread_id: inv.thread.clone(),
            },
        };
        let outcome = self.shared.host.call_tool(host_call).await;
        for CreatedReference { kind, id } in outcome.created_references {
            self.j
                .push(&payloads::ReferenceCreated { kind, id }, Vec::new())?;
        }
        Ok(match outcome.result {
            Ok(value) => ToolOutcome::ok(value),
            Err(message) => ToolOutcome::error(message),
        })
    }

    /// An approval gate (API.md §7): evaluate the rule, record the request, suspend,
    /// and continue on the decision.
    pub(crate) async fn gate(
        &mut self,
        kind: &str,
        target: &str,
        payload: &Value,
        correlation_id: Option<String>,
        rule: &ApprovalRule,
        thread: &str,
    ) -> Result<GateOutcome, EngineError> {
        let required = match rule {
            ApprovalRule::Never => false,
            ApprovalRule::Always => true,
            ApprovalRule::Dynamic(predicate) => {
                match self.j.take::<payloads::PredicateEvaluated>().await? {
                    Some((seq, recorded)) => {
                        if &recorded.predicate != predicate || recorded.target != target {
                            return Err(self.divergence(
                                seq,
                                format!(
                                    "evaluate predicate {} on {}",
                                    recorded.predicate, recorded.target
                                ),
                                format!("evaluate predicate {predicate} on {target}"),
                            ));
                        }
                        recorded.answer
                    }
                    None => {
                        let ctx = PredicateContext {
                            kind: kind.to_owned(),
                            target: target.to_owned(),
                            tenant: self.tenant.clone(),
                        };
                        let answer = self
                            .shared
                            .host
                            .evaluate_predicate(predicate, payload, &ctx)
                            .await;
                        self.j.push(
                            &payloads::PredicateEvaluated {
                                predicate: predicate.clone(),
                                kind: kind.to_owned(),
                                target: target.to_owned(),
                                answer,
                            },
                            Vec::new(),
                        )?;
                        answer
                    }
                }
            }
        };
        if !required {
            return Ok(GateOutcome::Open);
        }
        let approval_id = match self.j.take::<payloads::ApprovalRequested>().await? {
            Some((seq, recorded)) => {
                if recorded.kind != kind || recorded.target != target {
                    return Err(self.divergence(
                        seq,
                        format!("request {} approval for {}", recorded.kind, recorded.target),
                        format!("request {kind} approval for {target}"),
                    ));
                }
                recorded.approval_id
            }
            None => {
                let approval_id = self.shared.ids.uuid4();
                let seq = self.j.next_seq();
                let run_id = self.j.run_id();
                self.j.push(
                    &payloads::ApprovalRequested {
                        approval_id: approval_id.clone(),
                        kind: kind.to_owned(),
                        target: target.to_owned(),
                        payload: raw(payload)?,
                        glimpse: None,
                        correlation_id,
                        resource_id: self.tenant.clone(),
                        thread_id: thread.to_owned(),
                    },
                    vec![
                        IndexUpdate::PutApproval(ApprovalRow {
                            id: approval_id.clone(),
                            tenant: self.tenant.clone(),
                            run_id,
                            seq,
                            status: ApprovalStatus::Pending,
                        }),
                        IndexUpdate::SetRunStatus {
                            run_id,
                            status: RunStatus::Suspended,
                            at_ms: self.j.now_ms(),
                        },
                    ],
                )?;
                // Registered (durable) before its event is emitted.
                self.flush_parked().await?;
                tracing::info!(run_id = %self.run, approval_id = %approval_id, kind, target, "approval requested");
                approval_id
            }
        };
        if let Some((_, decided)) = self.j.take::<payloads::ApprovalDecided>().await? {
            // Only a run cancellation resolves a gate as cancelled. The call's cancelled
            // result follows when the cancellation recorded one; journals from before
            // that go straight on to RunCancelled.
            if decided.outcome == "cancelled"
                && self.j.peek_kind() != Some(RecordKind::ToolCallCompleted)
            {
                return Err(EngineError::CancelRequested);
            }
            return Ok(GateOutcome::Decided(decided));
        }
        if self.j.mode() == DriveMode::Resume {
            // Waiting again for the same approval after a restart.
            let run_id = self.j.run_id();
            let at_ms = self.j.now_ms();
            self.j.push_updates(vec![IndexUpdate::SetRunStatus {
                run_id,
                status: RunStatus::Suspended,
                at_ms,
            }]);
            self.flush_parked().await?;
        }
        let decided = self.wait_for_decision(&approval_id, kind, target).await?;
        Ok(GateOutcome::Decided(decided))
    }

    async fn wait_for_decision(
        &mut self,
        approval_id: &str,
        kind: &str,
        target: &str,
    ) -> Result<payloads::ApprovalDecided, EngineError> {
        loop {
            if self.cancel_requested {
                return self.cancel_at_gate(approval_id, kind, target);
            }
            let message = match self.deferred.pop_front() {
                Some(message) => message,
                None => {
                    let Some(control) = self.control.as_mut() else {
                        // Nobody can answer in this process: the run stays suspended.
                        return Err(EngineError::JournalEnd);
                    };
                    park(Some(&self.gate_wait));
                    let Some(message) = control.recv().await else {
                        self.leave_gate(false);
                        return Err(EngineError::JournalEnd);
                    };
                    message
                }
            };
            if !matches!(message, Control::Cancel) {
                // Whatever this leads to may wait on the consumer (delivering a decision's
                // events): nobody may wait for a cancellation meanwhile.
                self.leave_gate(false);
            }
            match message {
                Control::Cancel => self.cancel_requested = true,
                Control::Appended => {
                    self.j.flush().await?;
                    self.j.catch_up()?;
                    if let Some((_, decided)) = self.j.take::<payloads::ApprovalDecided>().await? {
                        return Ok(decided);
                    }
                }
                Control::Decide {
                    approval_id: id,
                    decision,
                    ack,
                } => {
                    if id != approval_id {
                        let _ = ack.send(Err(EngineError::ApprovalResolved(id)));
                        continue;
                    }
                    let status = match decision.outcome.as_str() {
                        "approve" => ApprovalStatus::Approved,
                        "revise" => ApprovalStatus::Revised,
                        _ => ApprovalStatus::Rejected,
                    };
                    let partial = match (&decision.outcome[..], &decision.partial) {
                        ("revise", Some(value)) => Some(raw(value)?),
                        ("revise", None) => Some(raw(&Value::Null)?),
                        _ => None,
                    };
                    let decided = payloads::ApprovalDecided {
                        approval_id: approval_id.to_owned(),
                        kind: kind.to_owned(),
                        target: target.to_owned(),
                        outcome: decision.outcome.clone(),
                        feedback: decision.feedback.clone(),
                        partial,
                        origin: String::from("host"),
                    };
                    let run_id = self.j.run_id();
                    self.j.push(
                        &decided,
                        vec![
                            IndexUpdate::SetApprovalStatus {
                                id: approval_id.to_owned(),
                                status,
                            },
                            IndexUpdate::SetRunStatus {
                                run_id,
                                status: RunStatus::Running,
                                at_ms: self.j.now_ms(),
                            },
                        ],
                    )?;
                    // Acknowledge once durable, before the events wait on the consumer:
                    // a host answering between two reads must not block (API.md §2.4).
                    let committed = self.j.commit().await;
                    let reply = match &committed {
                        Ok(_) => Ok(()),
                        Err(e) => Err(EngineError::Internal(format!("decision not recorded: {e}"))),
                    };
                    let _ = ack.send(reply);
                    self.j.deliver(committed?).await;
                    tracing::info!(run_id = %self.run, approval_id, outcome = %decision.outcome, "approval decided");
                    return Ok(decided);
                }
            }
        }
    }

    /// Flushes on the way to a gate's wait. Whoever sees the events may cancel at once,
    /// so the driver counts as waiting at the gate from right before they are visible:
    /// nothing from there to the wait depends on the consumer.
    async fn flush_parked(&mut self) -> Result<(), EngineError> {
        let gate_wait = self.control.is_some().then_some(&self.gate_wait);
        self.j.flush_then(|| park(gate_wait)).await
    }

    /// The driver no longer waits at a gate. `cancelled`: the run's cancellation is
    /// durable, and whoever waits for it hears so; otherwise they just stop waiting.
    fn leave_gate(&self, cancelled: bool) {
        let acks = {
            let mut gate = self.gate_wait.lock().unwrap_or_else(|p| p.into_inner());
            gate.parked = false;
            std::mem::take(&mut gate.cancel_acks)
        };
        if cancelled {
            for ack in acks {
                let _ = ack.send(());
            }
        }
    }

    /// Resolves the approval the run waits for as cancelled: the gated call then gets its
    /// cancelled result (API.md §5.5, §7), and the run stops right after it, all in the
    /// commit that records RunCancelled.
    fn cancel_at_gate(
        &mut self,
        approval_id: &str,
        kind: &str,
        target: &str,
    ) -> Result<payloads::ApprovalDecided, EngineError> {
        let decided = payloads::ApprovalDecided {
            approval_id: approval_id.to_owned(),
            kind: kind.to_owned(),
            target: target.to_owned(),
            outcome: String::from("cancelled"),
            feedback: None,
            partial: None,
            origin: String::from("engine"),
        };
        self.j.push(
            &decided,
            vec![IndexUpdate::SetApprovalStatus {
                id: approval_id.to_owned(),
                status: ApprovalStatus::Cancelled,
            }],
        )?;
        self.cancelled_at_gate.push(approval_id.to_owned());
        tracing::info!(run_id = %self.run, approval_id, "approval cancelled with its run");
        Ok(decided)
    }

    async fn run_builtin(
        &mut self,
        inv: &Invocation<'_>,
        builtin: BuiltinTool,
        call: &payloads::ToolCallRecord,
        args: &Value,
        call_seq: u64,
    ) -> Result<ToolOutcome, EngineError> {
        match builtin {
            BuiltinTool::CallAgent => self.call_agent(inv, call, args, call_seq).await,
            BuiltinTool::ResolveRef | BuiltinTool::GlimpseRef => {
                Ok(self.reference_tool(builtin, args))
            }
            BuiltinTool::StorePlan | BuiltinTool::GetPlan | BuiltinTool::ExecutePlan => {
                crate::plans::run_plan_tool(self, inv, builtin, args).await
            }
        }
    }

    /// `resolveRef` / `glimpseRef` (API.md §5.7). Store-only: in resume and verify the
    /// result comes from the journal, so this runs live only.
    fn reference_tool(&self, builtin: BuiltinTool, args: &Value) -> ToolOutcome {
        let Some(kind) = args.get("kind").and_then(Value::as_str) else {
            return ToolOutcome::error("Invalid input: missing field `kind`");
        };
        let Some(id) = args.get("id").and_then(Value::as_str) else {
            return ToolOutcome::error("Invalid input: missing field `id`");
        };
        if !self.shared.compiled.references.contains(kind) {
            return ToolOutcome::error(format!("unknown reference kind: {kind}"));
        }
        let now = self.j.now_ms();
        let entry = match self.j.store().reference(&self.tenant, kind, id, now) {
            Ok(Some(entry)) => entry,
            Ok(None) => {
                return ToolOutcome::error(format!("reference not found: kind={kind} id={id}"));
            }
            Err(e) => return ToolOutcome::error(format!("reference store error: {e}")),
        };
        let value: Value = serde_json::from_str(&entry.value).unwrap_or(Value::Null);
        let glimpse: Value = serde_json::from_str(&entry.glimpse).unwrap_or(Value::Null);
        ToolOutcome::ok(match builtin {
            BuiltinTool::ResolveRef => json!({"kind": kind, "value": value, "glimpse": glimpse}),
            _ => json!({"kind": kind, "glimpse": glimpse}),
        })
    }

    /// `call_agent` (API.md §5.1): a composite built-in, re-entered through its nested
    /// records on resume, never re-run whole.
    async fn call_agent(
        &mut self,
        inv: &Invocation<'_>,
        call: &payloads::ToolCallRecord,
        args: &Value,
        call_seq: u64,
    ) -> Result<ToolOutcome, EngineError> {
        let caller = inv.agent;
        let target = match args.get("agent").and_then(Value::as_str) {
            Some(name) if !name.is_empty() => name.to_owned(),
            _ => return Ok(ToolOutcome::error("Missing 'agent' name string")),
        };
        if !caller.routes.iter().any(|r| r == &target) {
            let routes = serde_json::to_string(&caller.routes).unwrap_or_default();
            return Ok(ToolOutcome::error(format!(
                "Agent '{target}' is not in this caller's allowed routes: {routes}"
            )));
        }
        let Some(prompt) = args.get("prompt").and_then(Value::as_str) else {
            return Ok(ToolOutcome::error("Missing 'prompt' string"));
        };
        let shared = Arc::clone(&self.shared);
        let Some(sub) = shared.compiled.agents.iter().find(|a| a.name == target) else {
            let names: Vec<&str> = shared
                .compiled
                .agents
                .iter()
                .map(|a| a.name.as_str())
                .collect();
            return Ok(ToolOutcome::error(format!(
                "Unknown sub-agent '{target}'. Available agents: {}",
                serde_json::to_string(&names).unwrap_or_default()
            )));
        };
        let sub_inv = Invocation {
            agent: sub,
            invocation_id: call.id.clone(),
            thread: format!("{}-{}", inv.request_thread, sub.name),
            request_thread: inv.request_thread.clone(),
        };
        match self.invoke_agent(sub_inv, prompt, Some(call_seq)).await {
            Ok(Ok(response)) => Ok(ToolOutcome::ok(json!({
                "agent": sub.name,
                "model": sub.model_id,
                "response": response,
            }))),
            Ok(Err(message)) => Ok(ToolOutcome::error(format!("Sub-agent failed: {message}"))),
            // The run was cancelled inside the sub-agent: this call gets its result too,
            // and the check after it carries the cancellation up.
            Err(EngineError::CancelRequested) => {
                Ok(ToolOutcome::error("Sub-agent invocation cancelled"))
            }
            Err(other) => Err(other),
        }
    }

    // Accessors for the plan and live-provider modules.
    pub(crate) fn journal(&mut self) -> &mut RunJournal {
        &mut self.j
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub(crate) fn tenant(&self) -> &str {
        &self.tenant
    }

    pub(crate) fn run_id_text(&self) -> &str {
        &self.run
    }

    pub(crate) fn nondeterminism(&self, seq: u64, recorded: String, actual: String) -> EngineError {
        self.divergence(seq, recorded, actual)
    }

    pub(crate) async fn emit(&mut self, event: Event) {
        self.j.emit_unrecorded(event).await;
    }
}

fn describe_turn(turn: &payloads::ModelResponded) -> String {
    if let Some(error) = &turn.error {
        return format!("model turn failing with {error:?}");
    }
    let calls: Vec<String> = turn
        .tool_calls
        .iter()
        .map(|c| format!("{}({})", c.name, c.args.get()))
        .collect();
    let text: String = turn.chunks.iter().map(|c| c.text.as_str()).collect();
    format!(
        "model turn with text {text:?} and tool calls [{}]",
        calls.join(", ")
    )
}

/// Removes the UI-channel keys of a returned object (API.md §2.6).
fn split_ui_keys(value: Value) -> (Value, Vec<payloads::UiEventRecord>) {
    let Value::Object(mut map) = value else {
        return (value, Vec::new());
    };
    let mut ui = Vec::new();
    if let Some(dsl) = map.remove("approvalDsl") {
        let text = match dsl {
            Value::String(s) => s,
            other => other.to_string(),
        };
        ui.push(payloads::UiEventRecord {
            kind: String::from("data-flow-ui"),
            text,
        });
    }
    if let Some(summary) = map.remove("displaySummary")
        && let Value::String(text) = summary
    {
        ui.push(payloads::UiEventRecord {
            kind: String::from("text"),
            text,
        });
    }
    map.remove("_cardEmitted");
    (Value::Object(map), ui)
}
