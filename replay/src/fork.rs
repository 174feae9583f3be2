//! Forking a run at a record (API.md §9.4, DESIGN.md §5).
//!
//! A fork is a new run whose RunStarted names its parent and the cut, recorded under the
//! forking runtime's spec hash, followed by copies of the parent's records `2..=at_seq`.
//! It is written in one append, starts `interrupted`, and is continued by
//! `Runtime::resume`, which replays the copied prefix through the engine's driver (so a
//! prefix the forking runtime would decide differently is a `NonDeterminism` error there)
//! and then acts live. The parent is never changed.
//!
//! What is not copied, and why:
//! * an `ApprovalRequested` whose decision is not in the prefix: the gate asks again with
//!   a fresh approval id (the parent's id belongs to the parent's approval row);
//! * an `AttemptStarted` (or `DispatchStarted`) whose outcome is not in the prefix, with the
//!   `ReferenceCreated` records of that unfinished attempt: the fork runs the effect as its
//!   own attempt 1 under its own idempotency key (`<fork id>:<seq>`); the parent's attempt
//!   was made under the parent's key, and counting it would misstate the fork's history;
//! * the parent's closing record (`RunCompleted`, `RunFailed`, `RunCancelled`): the fork
//!   decides its own end when resumed, which also writes its status and thread memory.
//!
//! These records can only sit at the end of a prefix (nothing is recorded between an
//! intent and its outcome), so dropping them never renumbers a kept record; a prefix where
//! that would not hold is refused rather than renumbered.
//!
//! With a new prompt the cut must come before the entry agent's first model request
//! (its first `ModelRequested`, or `ModelResponded` for the deterministic interpreters):
//! everything after it was decided from the old prompt. The fork's RunStarted carries the
//! new prompt. An entry `AgentInvoked` written before version 2 carries the prompt too, and
//! the driver compares it on resume, so that copy is rewritten with the new one.
//!
//! Index rows written with the fork: its `runs` row (status `interrupted`, parent and cut)
//! and the forking runtime's recorded spec. No approval rows (approval ids are the
//! parent's) and no plan rows: the plan table serves live lookups of the tenant's latest
//! plan versions, resume and verify read a run's plans from its own journal, and
//! rewriting the rows from the prefix would roll the tenant's plans back.

use std::collections::BTreeSet;

use flowai_runtime::Runtime;
use flowai_storage::payloads::{self, ParentRef, Payload};
use flowai_storage::{
    AppendRequest, IndexUpdate, Precondition, Record, RecordKind, RunAppend, RunId, RunMeta,
    RunStatus, StoredRecord,
};

use crate::error::ForkError;

/// Forks `run_id` at `at_seq` (a record count, `1 ≤ at_seq ≤ records`), optionally with a
/// new entry prompt; returns the new run's id. Blocks until the fork is durable.
pub fn fork(
    runtime: &Runtime,
    run_id: &str,
    at_seq: u64,
    prompt: Option<&str>,
) -> Result<String, ForkError> {
    let (id, request) = prepare(runtime, run_id, at_seq, prompt)?;
    runtime.store().append_blocking(request)?;
    Ok(id.to_string())
}

/// [`fork`] for async callers.
pub async fn fork_async(
    runtime: &Runtime,
    run_id: &str,
    at_seq: u64,
    prompt: Option<&str>,
) -> Result<String, ForkError> {
    let (id, request) = prepare(runtime, run_id, at_seq, prompt)?;
    runtime.store().append(request).await?;
    Ok(id.to_string())
}

fn decode<P: Payload>(run: &str, stored: &StoredRecord) -> Result<P, ForkError> {
    serde_json::from_str(&stored.record.payload).map_err(|e| ForkError::Unforkable {
        run: run.to_owned(),
        at_seq: stored.seq,
        reason: format!(
            "record {} at seq {} does not decode: {e}",
            P::KIND.name(),
            stored.seq
        ),
    })
}

fn encode<P: Payload>(payload: &P) -> Result<String, ForkError> {
    serde_json::to_string(payload).map_err(|e| {
        ForkError::Engine(flowai_runtime::EngineError::Internal(format!(
            "cannot encode {}: {e}",
            P::KIND.name()
        )))
    })
}

/// Which records of the prefix the fork leaves out (see the module docs).
fn dropped(run: &str, prefix: &[StoredRecord]) -> Result<Vec<bool>, ForkError> {
    let mut decided = BTreeSet::new();
    let mut completed_calls = BTreeSet::new();
    for stored in prefix {
        match stored.record.kind {
            RecordKind::ApprovalDecided => {
                decided.insert(decode::<payloads::ApprovalDecided>(run, stored)?.approval_id);
            }
            RecordKind::ToolCallCompleted => {
                completed_calls
                    .insert(decode::<payloads::ToolCallCompleted>(run, stored)?.call_seq);
            }
            _ => {}
        }
    }
    let mut drop = vec![false; prefix.len()];
    let mut in_dropped_attempt = false;
    for (i, stored) in prefix.iter().enumerate() {
        let kind = stored.record.kind;
        drop[i] = match kind {
            RecordKind::ApprovalRequested => {
                let request: payloads::ApprovalRequested = decode(run, stored)?;
                !decided.contains(&request.approval_id)
            }
            RecordKind::AttemptStarted => {
                let attempt: payloads::AttemptStarted = decode(run, stored)?;
                !completed_calls.contains(&attempt.call_seq)
            }
            RecordKind::DispatchStarted => {
                let started: payloads::DispatchStarted = decode(run, stored)?;
                let mut finished = false;
                for later in &prefix[i + 1..] {
                    if later.record.kind == RecordKind::ActionsDispatched {
                        let done: payloads::ActionsDispatched = decode(run, later)?;
                        if done.plan_id == started.plan_id {
                            finished = true;
                            break;
                        }
                    }
                }
                !finished
            }
            RecordKind::ReferenceCreated => in_dropped_attempt,
            RecordKind::RunCompleted | RecordKind::RunFailed | RecordKind::RunCancelled => true,
            _ => false,
        };
        if kind != RecordKind::ReferenceCreated {
            in_dropped_attempt = drop[i]
                && matches!(
                    kind,
                    RecordKind::AttemptStarted | RecordKind::DispatchStarted
                );
        }
    }
    if let Some(first) = drop.iter().position(|d| *d)
        && let Some(kept) = drop[first..].iter().position(|d| !*d)
    {
        let (a, b) = (&prefix[first], &prefix[first + kept]);
        return Err(ForkError::Unforkable {
            run: run.to_owned(),
            at_seq: prefix.last().map_or(1, |r| r.seq),
            reason: format!(
                "{} at seq {} has no outcome in the prefix but {} at seq {} follows it; cut at seq {} instead",
                a.record.kind.name(),
                a.seq,
                b.record.kind.name(),
                b.seq,
                a.seq - 1
            ),
        });
    }
    Ok(drop)
}

fn prepare(
    runtime: &Runtime,
    run_id: &str,
    at_seq: u64,
    prompt: Option<&str>,
) -> Result<(RunId, AppendRequest), ForkError> {
    let not_found = || ForkError::RunNotFound(run_id.to_owned());
    let parent: RunId = flowai_storage::parse_run_id(run_id).ok_or_else(not_found)?;
    let store = runtime.store();
    let info = store.run(parent)?.ok_or_else(not_found)?;
    if info.meta.tenant != runtime.tenant() {
        return Err(not_found());
    }
    let records = store.records(parent, 1)?;
    let total = records.len() as u64;
    if at_seq == 0 || at_seq > total {
        return Err(ForkError::AtSeqOutOfRange {
            run: run_id.to_owned(),
            at_seq,
            records: total,
        });
    }
    let Some(first) = records
        .first()
        .filter(|r| r.record.kind == RecordKind::RunStarted)
    else {
        return Err(ForkError::Unforkable {
            run: run_id.to_owned(),
            at_seq,
            reason: String::from("its first record is not RunStarted"),
        });
    };
    let mut started: payloads::RunStarted = decode(run_id, first)?;

    if prompt.is_some()
        && let Some(model) = records.iter().find(|r| {
            matches!(
                r.record.kind,
                RecordKind::ModelRequested | RecordKind::ModelResponded
            )
        })
        && at_seq >= model.seq
    {
        return Err(ForkError::PromptAfterModelRequest(model.seq));
    }

    let cut = usize::try_from(at_seq)
        .unwrap_or(usize::MAX)
        .min(records.len());
    let prefix = &records[1..cut];
    let drop = dropped(run_id, prefix)?;

    let now = runtime.clock().now_ms();
    if let Some(text) = prompt {
        started.prompt = text.to_owned();
    }
    started.spec_hash = runtime.spec_hash().to_owned();
    started.interpreter = runtime.interpreter().as_str().to_owned();
    started.parent = Some(ParentRef {
        run_id: parent.to_string(),
        seq: at_seq,
    });
    let mut out = Vec::with_capacity(prefix.len() + 1);
    out.push(Record {
        kind: RecordKind::RunStarted,
        version: <payloads::RunStarted as Payload>::VERSION,
        at_ms: now,
        payload: encode(&started)?,
    });
    let mut entry_rewritten = false;
    for (stored, dropped) in prefix.iter().zip(drop) {
        if dropped {
            continue;
        }
        let mut record = stored.record.clone();
        if let Some(text) = prompt
            && !entry_rewritten
            && record.kind == RecordKind::AgentInvoked
        {
            let mut invoked: payloads::AgentInvoked = decode(run_id, stored)?;
            if invoked.parent_call.is_none() && invoked.prompt.is_some() {
                invoked.prompt = Some(text.to_owned());
                record.payload = encode(&invoked)?;
                entry_rewritten = true;
            }
        }
        out.push(record);
    }

    let id = runtime.ids().ulid();
    let meta = RunMeta {
        run_id: id,
        tenant: info.meta.tenant.clone(),
        thread: info.meta.thread.clone(),
        agent: info.meta.agent.clone(),
        status: RunStatus::Interrupted,
        created_at_ms: now,
        updated_at_ms: now,
        parent: Some((parent, at_seq)),
    };
    let request = AppendRequest {
        run: Some(RunAppend {
            run_id: id,
            expected_first_seq: Some(1),
            records: out,
        }),
        index_updates: vec![
            IndexUpdate::CreateRun(meta),
            IndexUpdate::PutSpec {
                hash: runtime.spec_hash().to_owned(),
                json: runtime.recorded_spec_json().to_owned(),
            },
        ],
        precondition: Precondition::RunAbsent(id),
    };
    Ok((id, request))
}
