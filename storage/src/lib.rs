//! Durable storage of flowai: the append-only journal of every run, the indexes derived from
//! it, and the reference store, in one embedded [redb] file (or in memory).
//!
//! Every write goes through [`Store::append`]: records of a run plus index updates, under a
//! precondition checked inside the transaction. Appends from any thread or runtime are
//! grouped by one writer thread into a single commit (group commit) and acknowledged once it
//! is durable. Reads are snapshot reads that never wait for the writer.
//!
//! The on-disk format is described in `storage/FORMAT.md`.
//!
//! ```
//! use flowai_storage::{
//!     AppendRequest, IndexUpdate, Precondition, Record, RecordKind, RunAppend, RunId, RunMeta,
//!     RunStatus, Store,
//! };
//!
//! # fn main() -> Result<(), flowai_storage::StoreError> {
//! let store = Store::in_memory()?;
//! let run_id = RunId::generate();
//! let meta = RunMeta {
//!     run_id,
//!     tenant: "acme".into(),
//!     thread: "t-1".into(),
//!     agent: "coordinator".into(),
//!     status: RunStatus::Running,
//!     created_at_ms: 1_700_000_000_000,
//!     updated_at_ms: 1_700_000_000_000,
//!     parent: None,
//! };
//! let ack = store.append_blocking(AppendRequest {
//!     run: Some(RunAppend {
//!         run_id,
//!         expected_first_seq: Some(1),
//!         records: vec![Record {
//!             kind: RecordKind::RunStarted,
//!             version: 1,
//!             at_ms: 1_700_000_000_000,
//!             payload: r#"{"prompt":"hello"}"#.into(),
//!         }],
//!     }),
//!     index_updates: vec![IndexUpdate::CreateRun(meta)],
//!     precondition: Precondition::RunAbsent(run_id),
//! })?;
//! assert_eq!((ack.first_seq, ack.last_seq), (1, 1));
//!
//! let records = store.records(run_id, 1)?;
//! assert_eq!(records[0].record.kind, RecordKind::RunStarted);
//! assert_eq!(store.run(run_id)?.map(|r| r.records), Some(1));
//! store.close()?;
//! # Ok(())
//! # }
//! ```

mod check;
mod clock;
mod error;
mod keys;
mod memory;
pub mod payloads;
mod read;
mod rebuild;
mod record;
mod reference;
mod store;
mod tables;
mod types;
mod wal;
mod writer;

pub use check::CheckReport;
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::StoreError;
pub use rebuild::RebuildReport;
pub use record::{DecodeError, Record, RecordKind, RecordView, StoredRecord, decode_record};
pub use reference::reference_id;
pub use store::{Durability, Store, StoreOptions};
pub use types::{
    AppendAck, AppendRequest, ApprovalRow, ApprovalStatus, IndexUpdate, ParseStatusError, PlanRow,
    Precondition, ReferenceEntry, RunAppend, RunFilter, RunId, RunInfo, RunMeta, RunStatus,
    parse_run_id,
};
