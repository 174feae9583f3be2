//! Table definitions and the encoding of index rows. Table names are part of the format.

use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use crate::keys::{JOURNAL_KEY_LEN, RUN_KEY_LEN, STATUS_KEY_LEN};
use crate::types::{
    ApprovalRow, ApprovalStatus, PlanRow, ReferenceEntry, RunId, RunMeta, RunStatus,
};

/// Version of the layout described in FORMAT.md, stored under [`FORMAT_VERSION_KEY`].
/// Version 2 added the run sentinel (an empty `journal` entry at seq 0); version 3 the
/// cancellation request in a run's row and the index update that writes it.
pub(crate) const FORMAT_VERSION: u64 = 3;
/// The oldest version this build opens. Versions 1 and 2 lack only what nothing requires
/// (run sentinels; cancellation requests): they are read as they are, and a writer marks
/// them version 3, so that an older build never meets what it cannot read (a sentinel it
/// would take for a record, a request it would drop).
pub(crate) const OLDEST_FORMAT_VERSION: u64 = 1;
pub(crate) const FORMAT_VERSION_KEY: &str = "format_version";

pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const JOURNAL: TableDefinition<&[u8; JOURNAL_KEY_LEN], &[u8]> =
    TableDefinition::new("journal");
pub(crate) const RUNS: TableDefinition<&[u8; RUN_KEY_LEN], &[u8]> = TableDefinition::new("runs");
pub(crate) const RUNS_BY_TENANT: TableDefinition<&[u8], ()> =
    TableDefinition::new("runs_by_tenant");
pub(crate) const RUNS_BY_THREAD: TableDefinition<&[u8], ()> =
    TableDefinition::new("runs_by_thread");
pub(crate) const RUNS_BY_STATUS: TableDefinition<&[u8; STATUS_KEY_LEN], ()> =
    TableDefinition::new("runs_by_status");
pub(crate) const APPROVALS: TableDefinition<&str, &[u8]> = TableDefinition::new("approvals");
pub(crate) const APPROVALS_BY_RUN: TableDefinition<&[u8], ()> =
    TableDefinition::new("approvals_by_run");
pub(crate) const PLANS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("plans");
pub(crate) const SPECS: TableDefinition<&str, &str> = TableDefinition::new("specs");
pub(crate) const MEMORY: TableDefinition<&[u8], &str> = TableDefinition::new("memory");
pub(crate) const REFERENCES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("references");
pub(crate) const REFERENCE_EXPIRY: TableDefinition<&[u8], ()> =
    TableDefinition::new("reference_expiry");

// Index rows are small JSON objects: readable with any redb tool, and cheap next to a commit.
// Fields that are in the key are not repeated in the row.

#[derive(Serialize, Deserialize)]
pub(crate) struct RunRow {
    pub tenant: String,
    pub thread: String,
    pub agent: String,
    pub status: RunStatus,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<(String, u64)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_requested_at_ms: Option<i64>,
}

impl RunRow {
    pub fn from_meta(meta: &RunMeta) -> Self {
        RunRow {
            tenant: meta.tenant.clone(),
            thread: meta.thread.clone(),
            agent: meta.agent.clone(),
            status: meta.status,
            created_at_ms: meta.created_at_ms,
            updated_at_ms: meta.updated_at_ms,
            parent: meta.parent.map(|(run, seq)| (run.to_string(), seq)),
            cancel_requested_at_ms: None,
        }
    }

    pub fn into_meta(self, run_id: RunId) -> Result<RunMeta, String> {
        let parent = match self.parent {
            None => None,
            Some((run, seq)) => Some((
                run.parse::<RunId>()
                    .map_err(|e| format!("parent run id {run:?}: {e}"))?,
                seq,
            )),
        };
        Ok(RunMeta {
            run_id,
            tenant: self.tenant,
            thread: self.thread,
            agent: self.agent,
            status: self.status,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
            parent,
        })
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct ApprovalRowJson {
    pub tenant: String,
    pub run_id: String,
    pub seq: u64,
    pub status: ApprovalStatus,
}

impl ApprovalRowJson {
    pub fn from_row(row: &ApprovalRow) -> Self {
        ApprovalRowJson {
            tenant: row.tenant.clone(),
            run_id: row.run_id.to_string(),
            seq: row.seq,
            status: row.status,
        }
    }

    pub fn into_row(self, id: &str) -> Result<ApprovalRow, String> {
        Ok(ApprovalRow {
            id: id.to_owned(),
            tenant: self.tenant,
            run_id: parse_run(&self.run_id)?,
            seq: self.seq,
            status: self.status,
        })
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct PlanRowJson {
    pub tenant: String,
    pub plan_id: String,
    pub version: u64,
    pub status: String,
    pub body: String,
    pub run_id: String,
    pub seq: u64,
}

impl PlanRowJson {
    pub fn from_row(row: &PlanRow) -> Self {
        PlanRowJson {
            tenant: row.tenant.clone(),
            plan_id: row.plan_id.clone(),
            version: row.version,
            status: row.status.clone(),
            body: row.body.clone(),
            run_id: row.run_id.to_string(),
            seq: row.seq,
        }
    }

    pub fn into_row(self) -> Result<PlanRow, String> {
        Ok(PlanRow {
            tenant: self.tenant,
            plan_id: self.plan_id,
            version: self.version,
            status: self.status,
            body: self.body,
            run_id: parse_run(&self.run_id)?,
            seq: self.seq,
        })
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct ReferenceRowJson {
    pub tenant: String,
    pub kind: String,
    pub id: String,
    pub value: String,
    pub glimpse: String,
    pub created_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
}

impl ReferenceRowJson {
    pub fn from_entry(e: &ReferenceEntry) -> Self {
        ReferenceRowJson {
            tenant: e.tenant.clone(),
            kind: e.kind.clone(),
            id: e.id.clone(),
            value: e.value.clone(),
            glimpse: e.glimpse.clone(),
            created_at_ms: e.created_at_ms,
            expires_at_ms: e.expires_at_ms,
        }
    }

    pub fn into_entry(self) -> ReferenceEntry {
        ReferenceEntry {
            tenant: self.tenant,
            kind: self.kind,
            id: self.id,
            value: self.value,
            glimpse: self.glimpse,
            created_at_ms: self.created_at_ms,
            expires_at_ms: self.expires_at_ms,
        }
    }
}

fn parse_run(s: &str) -> Result<RunId, String> {
    s.parse::<RunId>().map_err(|e| format!("run id {s:?}: {e}"))
}

pub(crate) fn to_json<T: Serialize>(row: &T) -> Vec<u8> {
    // Serializing these plain structs (strings, integers, enums) cannot fail.
    serde_json::to_vec(row).unwrap_or_default()
}

pub(crate) fn from_json<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}
