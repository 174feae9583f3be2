//! Rebuilding the index tables from the journal (DESIGN.md §4).
//!
//! `runs`, `approvals` and `plans` (with their secondary indexes) are projections of the
//! journal: this derives them again from every run's records, in one write transaction.
//! `specs`, `memory` and `references` are not projections (a spec, a reference value and
//! thread memory are written beside the journal, not in it) and are left as they are.

use std::collections::BTreeMap;

use crate::payloads::{self, Payload};
use crate::record::StoredRecord;
use crate::types::{ApprovalRow, ApprovalStatus, IndexUpdate, PlanRow, RunId, RunMeta, RunStatus};

/// What a rebuild wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RebuildReport {
    pub runs: usize,
    pub approvals: usize,
    pub plans: usize,
}

fn decode<P: Payload>(record: &StoredRecord) -> Result<P, String> {
    serde_json::from_str(&record.record.payload)
        .map_err(|e| format!("seq {} ({}): {e}", record.seq, P::KIND.name()))
}

/// The latest version of a plan seen so far, ordered by (time, run, seq) so that the
/// row a rebuild writes is the one the live writes would have left last.
struct PlanCandidate {
    order: (i64, RunId, u64),
    row: PlanRow,
}

/// Accumulates the index rows of every run, one run at a time.
#[derive(Default)]
pub(crate) struct Derivation {
    runs: Vec<RunMeta>,
    approvals: BTreeMap<String, ApprovalRow>,
    plans: BTreeMap<(String, String), PlanCandidate>,
}

impl Derivation {
    /// Adds one run's records (all of them, in seq order).
    pub(crate) fn add_run(
        &mut self,
        run_id: RunId,
        records: &[StoredRecord],
    ) -> Result<(), String> {
        use crate::RecordKind as K;
        let Some(first) = records.first() else {
            return Ok(());
        };
        let started: payloads::RunStarted = decode(first)?;
        let parent = match &started.parent {
            Some(p) => Some((
                p.run_id
                    .parse::<RunId>()
                    .map_err(|e| format!("parent run id {:?}: {e}", p.run_id))?,
                p.seq,
            )),
            None => None,
        };
        let mut status = None;
        let mut open_approvals = 0usize;
        let mut plan_versions: BTreeMap<String, u64> = BTreeMap::new();
        for record in records {
            match record.record.kind {
                K::ApprovalRequested => {
                    let p: payloads::ApprovalRequested = decode(record)?;
                    open_approvals += 1;
                    self.approvals.insert(
                        p.approval_id.clone(),
                        ApprovalRow {
                            id: p.approval_id,
                            tenant: started.tenant.clone(),
                            run_id,
                            seq: record.seq,
                            status: ApprovalStatus::Pending,
                        },
                    );
                }
                K::ApprovalDecided => {
                    let p: payloads::ApprovalDecided = decode(record)?;
                    if let Some(row) = self.approvals.get_mut(&p.approval_id) {
                        if row.status == ApprovalStatus::Pending {
                            open_approvals = open_approvals.saturating_sub(1);
                        }
                        row.status = match p.outcome.as_str() {
                            "approve" => ApprovalStatus::Approved,
                            "revise" => ApprovalStatus::Revised,
                            "cancelled" => ApprovalStatus::Cancelled,
                            _ => ApprovalStatus::Rejected,
                        };
                    }
                }
                K::PlanStored => {
                    let p: payloads::PlanStored = decode(record)?;
                    plan_versions.insert(p.plan_id.clone(), p.version);
                    self.plan(
                        &started.tenant,
                        run_id,
                        record,
                        &p.plan_id,
                        p.version,
                        p.plan.get(),
                    );
                }
                K::PlanTransitioned => {
                    let p: payloads::PlanTransitioned = decode(record)?;
                    let version = plan_versions.get(&p.plan_id).copied().unwrap_or(1);
                    self.plan(
                        &started.tenant,
                        run_id,
                        record,
                        &p.plan_id,
                        version,
                        p.plan.get(),
                    );
                }
                K::RunCompleted => status = Some(RunStatus::Completed),
                K::RunFailed => status = Some(RunStatus::Failed),
                K::RunCancelled => status = Some(RunStatus::Cancelled),
                _ => {}
            }
        }
        // No process drives a run during a rebuild: an open one waits at a gate or was
        // interrupted.
        let status = status.unwrap_or(if open_approvals > 0 {
            RunStatus::Suspended
        } else {
            RunStatus::Interrupted
        });
        let updated = records
            .last()
            .map_or(first.record.at_ms, |r| r.record.at_ms);
        self.runs.push(RunMeta {
            run_id,
            tenant: started.tenant,
            thread: started.thread,
            agent: started.agent,
            status,
            created_at_ms: first.record.at_ms,
            updated_at_ms: updated,
            parent,
        });
        Ok(())
    }

    fn plan(
        &mut self,
        tenant: &str,
        run_id: RunId,
        record: &StoredRecord,
        plan_id: &str,
        version: u64,
        body: &str,
    ) {
        let status = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("status").and_then(|s| s.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from("draft"));
        let order = (record.record.at_ms, run_id, record.seq);
        let key = (tenant.to_owned(), plan_id.to_owned());
        if self
            .plans
            .get(&key)
            .is_some_and(|known| known.order > order)
        {
            return;
        }
        self.plans.insert(
            key,
            PlanCandidate {
                order,
                row: PlanRow {
                    tenant: tenant.to_owned(),
                    plan_id: plan_id.to_owned(),
                    version,
                    status,
                    body: body.to_owned(),
                    run_id,
                    seq: record.seq,
                },
            },
        );
    }

    /// The index updates that recreate every derived row.
    pub(crate) fn into_updates(self) -> (Vec<IndexUpdate>, RebuildReport) {
        let report = RebuildReport {
            runs: self.runs.len(),
            approvals: self.approvals.len(),
            plans: self.plans.len(),
        };
        let mut updates: Vec<IndexUpdate> =
            self.runs.into_iter().map(IndexUpdate::CreateRun).collect();
        updates.extend(self.approvals.into_values().map(IndexUpdate::PutApproval));
        updates.extend(
            self.plans
                .into_values()
                .map(|c| IndexUpdate::PutPlan(c.row)),
        );
        (updates, report)
    }
}
