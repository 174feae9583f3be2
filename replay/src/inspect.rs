//! Reading runs for people and tools: run rows, summaries, journal lines, exports and
//! replayed streams. Everything here reads the journal and its indexes only.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use flowai_runtime::{JournalEntry, journal_entries, rfc3339_ms};
use flowai_storage::{RunFilter, RunId, RunInfo, RunStatus, Store};
use serde_json::{Value, json};

use crate::error::ReplayError;

/// Parses a run id given on the command line.
pub fn parse_run_id(text: &str) -> Result<RunId, ReplayError> {
    flowai_storage::parse_run_id(text)
        .ok_or_else(|| ReplayError::Usage(format!("run id must be a ULID: {text}")))
}

/// The run's row, or `RunNotFound`.
pub fn run_info(store: &Store, run: RunId) -> Result<RunInfo, ReplayError> {
    store
        .run(run)?
        .ok_or_else(|| ReplayError::RunNotFound(run.to_string()))
}

/// Runs of the store, newest first, optionally of one tenant and status.
pub fn list_runs(
    store: &Store,
    tenant: Option<&str>,
    status: Option<RunStatus>,
) -> Result<Vec<RunInfo>, ReplayError> {
    Ok(store.list_runs(&RunFilter {
        tenant: tenant.map(str::to_owned),
        thread: None,
        status,
        limit: 0,
    })?)
}

/// The API.md §9.2 run dict:
/// `{"runId","threadId","agent","status","createdAt","updatedAt","pendingApprovals","records"}`.
pub fn run_dict(info: &RunInfo) -> Value {
    json!({
        "runId": info.meta.run_id.to_string(),
        "threadId": info.meta.thread,
        "agent": info.meta.agent,
        "status": info.meta.status.as_str(),
        "createdAt": rfc3339_ms(info.meta.created_at_ms),
        "updatedAt": rfc3339_ms(info.meta.updated_at_ms),
        "pendingApprovals": info.pending_approvals,
        "records": info.records,
    })
}

/// A table of runs for a terminal.
pub fn runs_table(runs: &[RunInfo]) -> String {
    let mut out = format!(
        "{:<26}  {:<11}  {:<10}  {:<20}  {:<20}  {:>7}  {:<24}  PENDING\n",
        "RUN", "STATUS", "TENANT", "AGENT", "THREAD", "RECORDS", "UPDATED"
    );
    for info in runs {
        let _ = writeln!(
            out,
            "{:<26}  {:<11}  {:<10}  {:<20}  {:<20}  {:>7}  {:<24}  {}",
            info.meta.run_id.to_string(),
            info.meta.status.as_str(),
            info.meta.tenant,
            info.meta.agent,
            info.meta.thread,
            info.records,
            rfc3339_ms(info.meta.updated_at_ms),
            info.pending_approvals.join(",")
        );
    }
    out
}

/// The run's records as API.md §9.2 dicts.
pub fn export(store: &Store, run: RunId) -> Result<Vec<JournalEntry>, ReplayError> {
    run_info(store, run)?;
    Ok(journal_entries(store, run, 0)?)
}

/// One export line: exactly the §9.2 dict `{"seq","kind","at","data"}` as compact JSON.
pub fn export_line(entry: &JournalEntry) -> String {
    entry.to_json().to_string()
}

/// Longest data text a journal line shows before cutting it short.
const DATA_WIDTH: usize = 160;

/// One human journal line: seq, time, kind and the compact data, cut to a readable width.
pub fn journal_line(entry: &JournalEntry) -> String {
    let data = entry.data.to_string();
    let data = match data.char_indices().nth(DATA_WIDTH) {
        Some((cut, _)) => format!("{}…", &data[..cut]),
        None => data,
    };
    format!(
        "{:>6}  {}  {:<18} {}",
        entry.seq,
        rfc3339_ms(entry.at_ms),
        entry.kind,
        data
    )
}

/// The run's stream events rebuilt from its journal, one JSON text per event.
pub fn replay_lines(store: &Store, run: RunId) -> Result<Vec<String>, ReplayError> {
    run_info(store, run)?;
    Ok(flowai_runtime::replay_events(store, run)?
        .into_iter()
        .map(flowai_runtime::Event::into_string)
        .collect())
}

/// One tool call of a run as its journal shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCallSummary {
    /// Seq of its ToolCallStarted.
    pub seq: u64,
    pub agent: String,
    pub tool: String,
    pub tool_use_id: String,
    /// `"ok"`, `"error"`, or `"open"` when no outcome is recorded.
    pub status: &'static str,
    /// Handler attempts started (0 for built-ins and calls stopped at a gate).
    pub attempts: u32,
}

/// One approval of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct ApprovalSummary {
    pub id: String,
    pub kind: String,
    pub target: String,
    /// The recorded outcome, `None` while undecided.
    pub outcome: Option<String>,
}

/// The latest version and state of a plan the run stored or moved.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanSummary {
    pub plan_id: String,
    pub version: u64,
    pub status: String,
}

/// What `flowai show` prints about a run.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSummary {
    pub info: RunInfo,
    pub entry: String,
    pub spec_hash: String,
    pub interpreter: String,
    /// For a fork: the parent run and the seq it was cut at.
    pub parent: Option<(String, u64)>,
    pub approvals: Vec<ApprovalSummary>,
    pub plans: Vec<PlanSummary>,
    pub tool_calls: Vec<ToolCallSummary>,
    /// The run's final error when it failed.
    pub error: Option<String>,
}

fn text_of(data: &Value, key: &str) -> String {
    data.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Summarizes a run from its row and its journal.
pub fn summarize(store: &Store, run: RunId) -> Result<RunSummary, ReplayError> {
    let info = run_info(store, run)?;
    let entries = journal_entries(store, run, 0)?;
    let mut summary = RunSummary {
        info,
        entry: String::new(),
        spec_hash: String::new(),
        interpreter: String::new(),
        parent: None,
        approvals: Vec::new(),
        plans: Vec::new(),
        tool_calls: Vec::new(),
        error: None,
    };
    let mut calls: BTreeMap<u64, usize> = BTreeMap::new();
    let mut plans: BTreeMap<String, PlanSummary> = BTreeMap::new();
    for entry in &entries {
        let data = &entry.data;
        match entry.kind {
            "RunStarted" => {
                summary.entry = text_of(data, "entry");
                summary.spec_hash = text_of(data, "specHash");
                summary.interpreter = text_of(data, "interpreter");
                summary.parent = data.get("parent").and_then(|p| {
                    Some((
                        p.get("runId")?.as_str()?.to_owned(),
                        p.get("seq")?.as_u64()?,
                    ))
                });
            }
            "ToolCallStarted" => {
                calls.insert(entry.seq, summary.tool_calls.len());
                summary.tool_calls.push(ToolCallSummary {
                    seq: entry.seq,
                    agent: text_of(data, "agent"),
                    tool: text_of(data, "tool"),
                    tool_use_id: text_of(data, "toolUseId"),
                    status: "open",
                    attempts: 0,
                });
            }
            "AttemptStarted" | "ToolCallCompleted" => {
                let call = data.get("callSeq").and_then(Value::as_u64).unwrap_or(0);
                if let Some(call) = calls
                    .get(&call)
                    .and_then(|i| summary.tool_calls.get_mut(*i))
                {
                    if entry.kind == "AttemptStarted" {
                        call.attempts += 1;
                    } else if data.get("isError").and_then(Value::as_bool) == Some(true) {
                        call.status = "error";
                    } else {
                        call.status = "ok";
                    }
                }
            }
            "ApprovalRequested" => summary.approvals.push(ApprovalSummary {
                id: text_of(data, "approvalId"),
                kind: text_of(data, "kind"),
                target: text_of(data, "target"),
                outcome: None,
            }),
            "ApprovalDecided" => {
                let id = text_of(data, "approvalId");
                if let Some(approval) = summary.approvals.iter_mut().find(|a| a.id == id) {
                    approval.outcome = Some(text_of(data, "outcome"));
                }
            }
            "PlanStored" => {
                let plan_id = text_of(data, "planId");
                plans.insert(
                    plan_id.clone(),
                    PlanSummary {
                        plan_id,
                        version: data.get("version").and_then(Value::as_u64).unwrap_or(1),
                        status: String::from("draft"),
                    },
                );
            }
            "PlanTransitioned" => {
                let plan_id = text_of(data, "planId");
                let to = text_of(data, "to");
                plans
                    .entry(plan_id.clone())
                    .and_modify(|p| p.status = to.clone())
                    .or_insert(PlanSummary {
                        plan_id,
                        // A plan stored by an earlier run: its version is in that run.
                        version: 0,
                        status: to,
                    });
            }
            "RunFailed" => summary.error = Some(text_of(data, "error")),
            _ => {}
        }
    }
    summary.plans = plans.into_values().collect();
    Ok(summary)
}

impl RunSummary {
    /// The summary as one JSON object (`flowai show --json`): the §9.2 run dict plus
    /// `tenant`, `entry`, `specHash`, `interpreter`, `parent`, `cancelRequestedAt`,
    /// `approvals`, `plans`, `toolCalls` and `error`.
    pub fn to_json(&self) -> Value {
        let mut out = run_dict(&self.info);
        if let Some(map) = out.as_object_mut() {
            map.insert("tenant".into(), json!(self.info.meta.tenant));
            map.insert("entry".into(), json!(self.entry));
            map.insert("specHash".into(), json!(self.spec_hash));
            map.insert("interpreter".into(), json!(self.interpreter));
            map.insert(
                "cancelRequestedAt".into(),
                json!(self.cancel_requested_at_ms().map(rfc3339_ms)),
            );
            map.insert(
                "parent".into(),
                match &self.parent {
                    Some((run, seq)) => json!({"runId": run, "seq": seq}),
                    None => Value::Null,
                },
            );
            map.insert(
                "approvals".into(),
                self.approvals
                    .iter()
                    .map(|a| json!({"id": a.id, "kind": a.kind, "target": a.target, "outcome": a.outcome}))
                    .collect(),
            );
            map.insert(
                "plans".into(),
                self.plans
                    .iter()
                    .map(|p| json!({"planId": p.plan_id, "version": p.version, "status": p.status}))
                    .collect(),
            );
            map.insert(
                "toolCalls".into(),
                self.tool_calls
                    .iter()
                    .map(|c| {
                        json!({"seq": c.seq, "agent": c.agent, "tool": c.tool,
                            "toolUseId": c.tool_use_id, "status": c.status, "attempts": c.attempts})
                    })
                    .collect(),
            );
            map.insert("error".into(), json!(self.error));
        }
        out
    }

    /// When a cancellation of the run was asked for that its journal does not hold yet
    /// (its driver stopped first): the next live runtime on the store records it.
    fn cancel_requested_at_ms(&self) -> Option<i64> {
        self.info
            .cancel_requested_at_ms
            .filter(|_| !self.info.meta.status.is_finished())
    }

    /// The summary for a terminal.
    pub fn to_text(&self) -> String {
        let meta = &self.info.meta;
        let mut out = String::new();
        let _ = writeln!(out, "run          {}", meta.run_id);
        let _ = writeln!(out, "status       {}", meta.status.as_str());
        if let Some(at_ms) = self.cancel_requested_at_ms() {
            let _ = writeln!(
                out,
                "cancel asked {} (the next runtime on the store records it)",
                rfc3339_ms(at_ms)
            );
        }
        let _ = writeln!(out, "tenant       {}", meta.tenant);
        let _ = writeln!(out, "agent        {} ({})", meta.agent, self.entry);
        let _ = writeln!(out, "thread       {}", meta.thread);
        if let Some((run, seq)) = &self.parent {
            let _ = writeln!(out, "forked from  {run} at seq {seq}");
        }
        let _ = writeln!(out, "created      {}", rfc3339_ms(meta.created_at_ms));
        let _ = writeln!(out, "updated      {}", rfc3339_ms(meta.updated_at_ms));
        let _ = writeln!(out, "records      {}", self.info.records);
        let _ = writeln!(out, "interpreter  {}", self.interpreter);
        let _ = writeln!(out, "spec         {}", self.spec_hash);
        let pending = if self.info.pending_approvals.is_empty() {
            String::from("none")
        } else {
            self.info.pending_approvals.join(", ")
        };
        let _ = writeln!(out, "pending      {pending}");
        if !self.approvals.is_empty() {
            let _ = writeln!(out, "approvals");
            for a in &self.approvals {
                let _ = writeln!(
                    out,
                    "  {}  {} {}  {}",
                    a.id,
                    a.kind,
                    a.target,
                    a.outcome.as_deref().unwrap_or("pending")
                );
            }
        }
        if !self.plans.is_empty() {
            let _ = writeln!(out, "plans");
            for p in &self.plans {
                let _ = writeln!(out, "  {}  v{}  {}", p.plan_id, p.version, p.status);
            }
        }
        if !self.tool_calls.is_empty() {
            let _ = writeln!(out, "tool calls");
            for c in &self.tool_calls {
                let _ = writeln!(
                    out,
                    "  seq {:<5} {:<16} {:<20} {:<5} attempts {}",
                    c.seq, c.agent, c.tool, c.status, c.attempts
                );
            }
        }
        if let Some(error) = &self.error {
            let _ = writeln!(out, "error        {error}");
        }
        out
    }
}
