//! Errors of the runtime API.

use flowai_storage::StoreError;

/// What went wrong in a runtime call. Messages follow API.md where it gives them.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The spec or runtime configuration is invalid (raised as `ValueError` in Python).
    #[error("{0}")]
    Spec(#[from] crate::spec::SpecError),
    /// A caller passed something the contract rejects (raised as `ValueError`).
    #[error("{0}")]
    InvalidArgument(String),
    #[error("run not found: {0}")]
    RunNotFound(String),
    #[error("run already exists: {0}")]
    RunExists(String),
    #[error("run {run} is {status}")]
    RunFinished { run: String, status: String },
    #[error("approval not found: {0}")]
    ApprovalNotFound(String),
    #[error("approval already resolved: {0}")]
    ApprovalResolved(String),
    #[error(
        "run {run} was started under spec {recorded} but this runtime's spec is {current} (first difference at {path}); pass allow_spec_change=True to resume under the new spec"
    )]
    SpecMismatch {
        run: String,
        recorded: String,
        current: String,
        path: String,
    },
    #[error(
        "non-determinism in run {run} at seq {seq}: the journal recorded {recorded} but the engine now issues {actual}"
    )]
    NonDeterminism {
        run: String,
        seq: u64,
        recorded: String,
        actual: String,
    },
    #[error("run {run} is already being driven by this runtime")]
    RunBusy { run: String },
    #[error("journal record {kind} at seq {seq} is unreadable: {reason}")]
    CorruptPayload {
        seq: u64,
        kind: &'static str,
        reason: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("runtime is closed")]
    Closed,
    /// Verify reached the end of the journal (not an error for callers of verify).
    #[error("the journal ended before the run did")]
    JournalEnd,
    /// The run was cancelled while it was driven.
    #[error("run was cancelled")]
    CancelRequested,
    #[error("internal error: {0}")]
    Internal(String),
}
