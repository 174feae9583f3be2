//! The rows of the index tables and the shape of a write.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::record::Record;

/// A run's id: a ULID, unique in the store. Its time part orders runs newest-first.
pub type RunId = ulid::Ulid;

/// Reads a run id given as text: 26 Crockford base-32 characters (either case) whose
/// value fits in 128 bits, so the first one is `0`–`7`. The `ulid` crate shifts an
/// overflowing first character's high bits away (`"Z…"` reads as `"7…"`), which would
/// let one run answer to several ids, and a caller-chosen id change silently.
pub fn parse_run_id(text: &str) -> Option<RunId> {
    match text.as_bytes().first() {
        Some(b'0'..=b'7') => text.parse().ok(),
        _ => None,
    }
}

/// Lifecycle state of a run (DESIGN §5). Each status also has a byte in the status index,
/// which is part of the file format (FORMAT.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Suspended,
    Completed,
    Failed,
    Cancelled,
    Interrupted,
}

impl RunStatus {
    pub const ALL: [RunStatus; 6] = [
        RunStatus::Running,
        RunStatus::Suspended,
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::Cancelled,
        RunStatus::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Suspended => "suspended",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Interrupted => "interrupted",
        }
    }

    /// Completed, failed or cancelled: nothing more happens to the run.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled
        )
    }

    /// Stable byte used in the status index; never reused.
    pub(crate) fn tag(self) -> u8 {
        match self {
            RunStatus::Running => 1,
            RunStatus::Suspended => 2,
            RunStatus::Completed => 3,
            RunStatus::Failed => 4,
            RunStatus::Cancelled => 5,
            RunStatus::Interrupted => 6,
        }
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error of parsing a status name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} status {given:?}; expected one of {expected}")]
pub struct ParseStatusError {
    what: &'static str,
    given: String,
    expected: &'static str,
}

impl FromStr for RunStatus {
    type Err = ParseStatusError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunStatus::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| ParseStatusError {
                what: "run",
                given: s.to_owned(),
                expected: "running, suspended, completed, failed, cancelled, interrupted",
            })
    }
}

/// State of an approval request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Rejected,
    Revised,
    Cancelled,
}

impl ApprovalStatus {
    pub const ALL: [ApprovalStatus; 5] = [
        ApprovalStatus::Pending,
        ApprovalStatus::Approved,
        ApprovalStatus::Rejected,
        ApprovalStatus::Revised,
        ApprovalStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::Approved => "approved",
            ApprovalStatus::Rejected => "rejected",
            ApprovalStatus::Revised => "revised",
            ApprovalStatus::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for ApprovalStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ApprovalStatus {
    type Err = ParseStatusError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ApprovalStatus::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| ParseStatusError {
                what: "approval",
                given: s.to_owned(),
                expected: "pending, approved, rejected, revised, cancelled",
            })
    }
}

/// The `runs` row of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMeta {
    pub run_id: RunId,
    pub tenant: String,
    pub thread: String,
    pub agent: String,
    pub status: RunStatus,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// For a fork: the parent run and the seq it was forked at.
    pub parent: Option<(RunId, u64)>,
}

/// A run with what the indexes know about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunInfo {
    pub meta: RunMeta,
    /// Number of records = the last seq (seqs are contiguous from 1).
    pub records: u64,
    /// Ids of the run's approvals whose status is `Pending`, in id order.
    pub pending_approvals: Vec<String>,
    /// When a cancellation of the run was asked for while its driver was taking a step
    /// ([`IndexUpdate::RequestCancel`]); `None` if never.
    pub cancel_requested_at_ms: Option<i64>,
}

/// Which runs [`crate::Store::list_runs`] returns. `limit == 0` means no limit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunFilter {
    pub tenant: Option<String>,
    pub thread: Option<String>,
    pub status: Option<RunStatus>,
    pub limit: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRow {
    pub id: String,
    pub tenant: String,
    pub run_id: RunId,
    /// Seq of the ApprovalRequested record.
    pub seq: u64,
    pub status: ApprovalStatus,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanRow {
    pub tenant: String,
    pub plan_id: String,
    pub version: u64,
    pub status: String,
    /// The plan as JSON text.
    pub body: String,
    pub run_id: RunId,
    pub seq: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferenceEntry {
    pub tenant: String,
    pub kind: String,
    pub id: String,
    /// The value as JSON text.
    pub value: String,
    /// The host-computed glimpse as JSON text.
    pub glimpse: String,
    pub created_at_ms: i64,
    /// Expired when `now_ms >= expires_at_ms`.
    pub expires_at_ms: Option<i64>,
}

impl ReferenceEntry {
    pub fn is_expired(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_some_and(|at| now_ms >= at)
    }
}

/// One write: records of (at most) one run plus index updates, under a precondition, all in
/// one transaction. A failed check fails this request only, never the batch it shares.
#[derive(Clone, Debug, Default)]
pub struct AppendRequest {
    /// `None` for an index-only write (e.g. a reference created outside a run).
    pub run: Option<RunAppend>,
    pub index_updates: Vec<IndexUpdate>,
    pub precondition: Precondition,
}

#[derive(Clone, Debug)]
pub struct RunAppend {
    pub run_id: RunId,
    /// When `Some`, the first record must get exactly this seq, else
    /// [`crate::StoreError::SeqConflict`].
    pub expected_first_seq: Option<u64>,
    pub records: Vec<Record>,
}

/// Seqs given to the appended records; `(0, 0)` when there were none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AppendAck {
    pub first_seq: u64,
    pub last_seq: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Precondition {
    #[default]
    None,
    /// Fails with [`crate::StoreError::RunExists`] when the run has a row or records.
    RunAbsent(RunId),
    RunStatusIn(RunId, Vec<RunStatus>),
    /// The approval exists and its status is `Pending`.
    ApprovalPending(String),
    /// The plan row of `(tenant, plan_id)` exists and its status is one of `statuses`.
    /// Guards a plan transition against another run that moved the plan first (two runs
    /// executing one approved plan must not both dispatch it).
    PlanStatusIn {
        tenant: String,
        plan_id: String,
        statuses: Vec<String>,
    },
}

/// Serialized (serde's default JSON shape) into journal frames, which a restart replays:
/// renaming a variant or field changes the frame format (FORMAT.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IndexUpdate {
    /// Inserts the runs row; [`crate::StoreError::RunExists`] if there is one.
    CreateRun(RunMeta),
    SetRunStatus {
        run_id: RunId,
        status: RunStatus,
        at_ms: i64,
    },
    /// Insert or replace.
    PutApproval(ApprovalRow),
    SetApprovalStatus {
        id: String,
        status: ApprovalStatus,
    },
    /// Insert or replace the plan's row (latest version).
    PutPlan(PlanRow),
    /// No-op if the hash is present.
    PutSpec {
        hash: String,
        json: String,
    },
    AppendMemory {
        tenant: String,
        thread: String,
        agent: String,
        entries: Vec<String>,
    },
    /// Insert or overwrite (same id = same content; glimpse, creation and expiry are replaced).
    PutReference(ReferenceEntry),
    /// Records in the run's row that its cancellation was asked for, before the run's
    /// driver has recorded it (a driver records it at its next step): if the process dies
    /// first, the next runtime on the store finishes the cancellation. The run must exist;
    /// on a finished run it changes nothing. Since format version 3.
    RequestCancel {
        run_id: RunId,
        at_ms: i64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_names_and_serde() {
        for s in RunStatus::ALL {
            assert_eq!(s.as_str().parse::<RunStatus>().unwrap(), s);
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        for s in ApprovalStatus::ALL {
            assert_eq!(s.as_str().parse::<ApprovalStatus>().unwrap(), s);
        }
        let err = "Running".parse::<RunStatus>().unwrap_err().to_string();
        assert!(err.contains("unknown run status \"Running\""), "{err}");
        let tags: std::collections::BTreeSet<u8> = RunStatus::ALL.iter().map(|s| s.tag()).collect();
        assert_eq!(tags.len(), RunStatus::ALL.len());
    }

    #[test]
    fn a_run_id_is_read_only_from_a_ulid_that_fits_128_bits() {
        let id = RunId::from_parts(1_700_000_000_000, 42);
        let text = id.to_string();
        assert_eq!(parse_run_id(&text), Some(id));
        assert_eq!(parse_run_id(&text.to_lowercase()), Some(id));
        assert_eq!(
            parse_run_id("7ZZZZZZZZZZZZZZZZZZZZZZZZZ"),
            Some(RunId::from(u128::MAX))
        );
        // The ulid crate reads these as other ids ("8…" as "0…"); they name no run.
        for overflowing in ["8ZZZZZZZZZZZZZZZZZZZZZZZZZ", "ZZZZZZZZZZZZZZZZZZZZZZZZZZ"] {
            assert!(overflowing.parse::<RunId>().is_ok());
            assert_eq!(parse_run_id(overflowing), None, "{overflowing}");
        }
        assert_eq!(parse_run_id(&format!("8{}", &text[1..])), None);
        for bad in [
            "",
            "nope",
            &text[1..],
            &format!("{text}0"),
            "01JD3M000000000000000000IL",
        ] {
            assert_eq!(parse_run_id(bad), None, "{bad:?}");
        }
    }
}
