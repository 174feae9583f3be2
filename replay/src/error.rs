//! Errors of the replay crate: one enum per operation family and an umbrella
//! [`ReplayError`] that the command maps to its exit codes.

use flowai_runtime::EngineError;
use flowai_storage::StoreError;

/// Why a fork could not be made (API.md §9.4).
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ForkError {
    /// The run does not exist, or belongs to another tenant.
    #[error("run not found: {0}")]
    RunNotFound(String),
    /// `at_seq` is not a record count of the parent (`1 ≤ at_seq ≤ records`).
    #[error("at_seq must be between 1 and {records} (the records of run {run}); got {at_seq}")]
    AtSeqOutOfRange {
        run: String,
        at_seq: u64,
        records: u64,
    },
    /// A new prompt was given but the cut keeps the entry agent's first model request.
    #[error("fork with a new prompt must cut before seq {0}")]
    PromptAfterModelRequest(u64),
    /// The parent's journal does not have the shape a fork can copy.
    #[error("cannot fork run {run} at seq {at_seq}: {reason}")]
    Unforkable {
        run: String,
        at_seq: u64,
        reason: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Why a recorded spec document could not become a runtime.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum SpecDocError {
    #[error("{source_name}: not a recorded-spec JSON document: {reason}")]
    Invalid { source_name: String, reason: String },
    #[error("{source_name}: cannot read it: {source}")]
    Io {
        source_name: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "run {run} was started under spec {hash}, which is not in the store's specs table; pass --spec FILE"
    )]
    NotRecorded { run: String, hash: String },
    #[error("{source_name}: building a runtime from it failed: {source}")]
    Runtime {
        source_name: String,
        #[source]
        source: Box<EngineError>,
    },
}

/// Everything the replay crate and the `flowai` command report.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Bad command-line input (exit code 2).
    #[error("{0}")]
    Usage(String),
    #[error("run not found: {0}")]
    RunNotFound(String),
    #[error(transparent)]
    Fork(#[from] ForkError),
    #[error(transparent)]
    SpecDoc(#[from] SpecDocError),
    /// `flowai verify` found runs whose re-drive differs from their journal.
    #[error("verification failed for {failed} of {checked} runs")]
    VerifyFailed { failed: usize, checked: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("cannot write output: {0}")]
    Output(#[source] std::io::Error),
}

/// Exit codes of the `flowai` command (API.md §9.6).
pub mod exit {
    pub const OK: i32 = 0;
    /// Divergence or verification failure (and any other failure of the command).
    pub const FAILURE: i32 = 1;
    pub const USAGE: i32 = 2;
    /// The store is locked by a writer, missing, or closed.
    pub const STORE_UNAVAILABLE: i32 = 3;
    /// The store (or a record in it) does not decode, or needs a writer to recover it.
    pub const CORRUPT: i32 = 4;
}

fn store_code(e: &StoreError) -> i32 {
    match e {
        // A store left by a crashed writer is not damaged: it is unavailable to a
        // read-only command until a writer opens it (which recovers it).
        StoreError::Locked { .. }
        | StoreError::NotFound { .. }
        | StoreError::Closed { .. }
        | StoreError::NeedsRecovery { .. } => exit::STORE_UNAVAILABLE,
        StoreError::Io { source, .. } if names_no_file(source) => exit::USAGE,
        StoreError::Db { source, .. } if matches!(source.as_ref(), redb::Error::Io(io) if names_no_file(io)) => {
            exit::USAGE
        }
        StoreError::Corrupt { .. } | StoreError::UnsupportedFormat { .. } => exit::CORRUPT,
        StoreError::Db { source, .. } if not_a_store(source) => exit::CORRUPT,
        _ => exit::FAILURE,
    }
}

/// A path that names a directory, or goes through a file: a usage error, not a store's.
fn names_no_file(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::IsADirectory | std::io::ErrorKind::NotADirectory
    )
}

/// redb's verdict on bytes that are not (or no longer) a database.
fn not_a_store(e: &redb::Error) -> bool {
    match e {
        redb::Error::Corrupted(_) => true,
        redb::Error::Io(io) => io.kind() == std::io::ErrorKind::InvalidData,
        _ => false,
    }
}

fn engine_code(e: &EngineError) -> i32 {
    match e {
        EngineError::Store(inner) => store_code(inner),
        EngineError::CorruptPayload { .. } => exit::CORRUPT,
        EngineError::RunNotFound(_) | EngineError::InvalidArgument(_) => exit::USAGE,
        _ => exit::FAILURE,
    }
}

impl ReplayError {
    /// The exit code the command ends with for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            ReplayError::Usage(_) | ReplayError::RunNotFound(_) => exit::USAGE,
            ReplayError::Fork(ForkError::Store(e)) | ReplayError::Store(e) => store_code(e),
            ReplayError::Fork(ForkError::Engine(e)) | ReplayError::Engine(e) => engine_code(e),
            ReplayError::Fork(_) => exit::USAGE,
            ReplayError::SpecDoc(SpecDocError::Io { .. } | SpecDocError::Invalid { .. }) => {
                exit::USAGE
            }
            ReplayError::SpecDoc(_) | ReplayError::VerifyFailed { .. } => exit::FAILURE,
            ReplayError::Output(_) => exit::FAILURE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_contract() {
        let locked = StoreError::Locked {
            path: "/x".into(),
            hint: "h".into(),
        };
        assert_eq!(ReplayError::Store(locked).exit_code(), 3);
        let nd = EngineError::NonDeterminism {
            run: "r".into(),
            seq: 3,
            recorded: "a".into(),
            actual: "b".into(),
        };
        assert_eq!(ReplayError::Engine(nd).exit_code(), 1);
        let corrupt = EngineError::CorruptPayload {
            seq: 1,
            kind: "RunStarted",
            reason: "x".into(),
        };
        assert_eq!(ReplayError::Engine(corrupt).exit_code(), 4);
        assert_eq!(ReplayError::Usage("u".into()).exit_code(), 2);
        let crashed = StoreError::NeedsRecovery { path: "/x".into() };
        assert_eq!(ReplayError::Store(crashed).exit_code(), 3);
        let directory = StoreError::Io {
            path: "/x".into(),
            source: std::io::Error::from(std::io::ErrorKind::IsADirectory),
        };
        assert_eq!(ReplayError::Store(directory).exit_code(), 2);
        let missing = StoreError::NotFound { path: "/x".into() };
        assert_eq!(
            ReplayError::Engine(EngineError::Store(missing)).exit_code(),
            3
        );
    }
}
