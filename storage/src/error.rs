//! The one error type of the storage crate.

use crate::RunId;

/// Everything that can go wrong in [`crate::Store`].
///
/// `path` fields hold the store's file path, or `<memory>` for an in-memory store.
#[non_exhaustive]
#[derive(thiserror::Error, Debug)]
pub enum StoreError {
    /// Another process (or, for a read-only handle, this one) holds the file.
    #[error("store {path} is locked: {hint}")]
    Locked { path: String, hint: String },

    /// The store was closed with [`crate::Store::close`]; open it again to use it.
    #[error("store {path} is closed; open it again to use it")]
    Closed { path: String },

    /// A read-only open of a file that does not exist.
    #[error("store {path} does not exist (a runtime given this path creates it)")]
    NotFound { path: String },

    /// A write through a handle opened with [`crate::Store::open_read_only`].
    #[error("store {path} was opened read-only; open it with Store::open to write")]
    ReadOnly { path: String },

    /// Bytes in the file do not decode. Never a panic: the location says where to look.
    #[error("corrupt data in store {path} at {location}: {detail}")]
    Corrupt {
        path: String,
        location: String,
        detail: String,
    },

    /// The file was written by a newer (or unknown) storage format.
    #[error(
        "store {path} has format version {found}, this build reads version {supported}; upgrade flowai"
    )]
    UnsupportedFormat {
        path: String,
        found: u64,
        supported: u64,
    },

    /// The file was not closed cleanly and a read-only open cannot repair it.
    #[error(
        "store {path} was not closed cleanly (its writer stopped without closing it) and needs recovery, which a read-only open never does: open it once as a writer to repair it (`flowai gc {path}` does; so do open_store and create_runtime in Python)"
    )]
    NeedsRecovery { path: String },

    /// `Precondition::RunAbsent` or `IndexUpdate::CreateRun` found the run already there.
    #[error("run {run} already exists")]
    RunExists { run: RunId },

    /// `RunAppend::expected_first_seq` did not match the seq the records would get.
    #[error(
        "run {run}: expected the next record to get seq {expected}, but it would get seq {actual} (another writer appended first?)"
    )]
    SeqConflict {
        run: RunId,
        expected: u64,
        actual: u64,
    },

    /// A precondition or an index update's requirement did not hold; nothing of the request was written.
    #[error("precondition failed: {what}")]
    PreconditionFailed { what: String },

    /// Input that cannot be stored (for example a value that has no canonical JSON form).
    #[error("invalid input: {what}")]
    InvalidInput { what: String },

    /// The transaction holding this request failed to commit; nothing of the batch was written.
    #[error("commit failed in store {path}: {reason}; nothing of this append was written")]
    CommitFailed { path: String, reason: String },

    /// An I/O error outside redb (creating the file, its permissions, the writer thread).
    #[error("I/O error on store {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// An error reported by redb.
    #[error("database error in store {path}: {source}")]
    Db {
        path: String,
        #[source]
        source: Box<redb::Error>,
    },
}

impl StoreError {
    pub(crate) fn db(path: &str, err: impl Into<redb::Error>) -> Self {
        StoreError::Db {
            path: path.to_owned(),
            source: Box::new(err.into()),
        }
    }

    pub(crate) fn corrupt(path: &str, location: impl Into<String>, detail: impl ToString) -> Self {
        StoreError::Corrupt {
            path: path.to_owned(),
            location: location.into(),
            detail: detail.to_string(),
        }
    }

    /// A copy for every request of a failed batch; errors that carry a source become text.
    pub(crate) fn for_batch(&self, path: &str) -> Self {
        StoreError::CommitFailed {
            path: path.to_owned(),
            reason: self.to_string(),
        }
    }
}
