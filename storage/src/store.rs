//! The store handle: opening (registry, locks, recovery), closing, and the read API.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, LazyLock, Mutex, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{ReadTransaction, ReadableDatabase, ReadableTable};
use tokio::sync::oneshot;

use crate::clock::{Clock, SystemClock};
use crate::keys::{
    self, JOURNAL_KEY_LEN, KeyBuf, approval_of_run_key, journal_key, memory_prefix, plan_key,
    prefix_end, reference_key, run_key, split_journal_key, status_key,
};
use crate::record::{self, RecordView, StoredRecord};
use crate::tables::{self, ApprovalRowJson, PlanRowJson, ReferenceRowJson, RunRow};
use crate::types::{
    AppendAck, AppendRequest, ApprovalRow, ApprovalStatus, PlanRow, ReferenceEntry, RunFilter,
    RunId, RunInfo,
};
use crate::writer::{self, Msg, Reply};
use crate::{StoreError, tables::FORMAT_VERSION};

/// How commits reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// Every commit is fsynced before it is acknowledged.
    #[default]
    Immediate,
    /// Commits are acknowledged before they are fsynced; an fsync follows within 100 ms and at
    /// close. A crash may lose the last ~100 ms of acknowledged writes.
    Eventual,
}

/// Options of [`Store::open`].
#[derive(Clone, Debug, Default)]
pub struct StoreOptions {
    pub durability: Durability,
    /// Let read-only opens (other processes' `flowai` commands) share the file with this
    /// writer. Costs a second fdatasync per commit, and `Eventual` becomes `Immediate` (redb
    /// refuses non-durable commits that other processes could not see).
    pub shared_reads: bool,
}

enum Db {
    Rw(Arc<redb::Database>),
    Ro(redb::ReadOnlyDatabase),
}

impl Db {
    fn begin_read(&self) -> Result<ReadTransaction, redb::TransactionError> {
        match self {
            Db::Rw(db) => db.begin_read(),
            Db::Ro(db) => db.begin_read(),
        }
    }
}

struct Inner {
    path: Option<PathBuf>,
    label: String,
    writable: bool,
    durability: Durability,
    db: RwLock<Option<Arc<Db>>>,
    /// `None` once closing began (and always for read-only stores): appends get `Closed`.
    sender: RwLock<Option<mpsc::Sender<Msg>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Duration of the writer's last commit, in microseconds.
    commit_micros: Arc<AtomicU64>,
}

impl Inner {
    fn is_closed(&self) -> bool {
        self.db.read().unwrap_or_else(|p| p.into_inner()).is_none()
    }

    /// Stops the writer after it drained the queue, then closes the database.
    fn shutdown(&self) -> Result<(), StoreError> {
        drop(
            self.sender
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut result = Ok(());
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            result = Err(StoreError::CommitFailed {
                path: self.label.clone(),
                reason: "the writer thread panicked; some queued appends were not written".into(),
            });
        }
        let db = self.db.write().unwrap_or_else(|p| p.into_inner()).take();
        // A reader may still hold the database for a moment; it then closes when that reader
        // lets go of it.
        if let Some(db) = db
            && let Ok(db) = Arc::try_unwrap(db)
        {
            let closed = match db {
                Db::Rw(db) => match Arc::try_unwrap(db) {
                    Ok(db) => db.close(),
                    Err(_) => Ok(()),
                },
                Db::Ro(db) => db.close(),
            };
            if let Err(e) = closed {
                result = result.and(Err(StoreError::db(&self.label, e)));
            }
        }
        result
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(store = %self.label, error = %e, "closing the store on drop failed");
        }
    }
}

const SPIN_MICROS: u64 = writer::SPIN.as_micros() as u64;

/// Stores open in this process, by canonical path. Weak: the registry never keeps one open.
static REGISTRY: LazyLock<Mutex<HashMap<PathBuf, Weak<Inner>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// A flowai store: the journal, its indexes and the reference store in one redb file (or in
/// memory). Cheap to clone; every clone is the same store. The store closes when
/// [`close`](Self::close) is called or its last clone is dropped.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    /// This handle came from `open_read_only` (the store itself may be writable).
    read_only: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.label)
            .field("read_only", &self.read_only)
            .finish()
    }
}

/// `.db(label)` on any redb result.
pub(crate) trait DbResult<T> {
    fn db(self, label: &str) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> DbResult<T> for Result<T, E> {
    fn db(self, label: &str) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::db(label, e))
    }
}

pub(crate) fn last_seq_in(
    journal: &impl ReadableTable<&'static [u8; JOURNAL_KEY_LEN], &'static [u8]>,
    run: RunId,
) -> Result<u64, redb::StorageError> {
    let lo = journal_key(run, 0);
    let hi = journal_key(run, u64::MAX);
    match journal
        .range::<&[u8; JOURNAL_KEY_LEN]>(&lo..=&hi)?
        .next_back()
    {
        Some(entry) => {
            let (key, _) = entry?;
            Ok(split_journal_key(key.value()).1)
        }
        None => Ok(0),
    }
}

fn prefix_range<'t, V: redb::Value + 'static>(
    table: &'t impl ReadableTable<&'static [u8], V>,
    prefix: &[u8],
) -> Result<redb::Range<'t, &'static [u8], V>, redb::StorageError> {
    match prefix_end(prefix) {
        Some(end) => table.range(prefix..end.as_slice()),
        None => table.range(prefix..),
    }
}

fn io_err(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Creates the file with owner-only permissions if it does not exist.
fn create_file(path: &Path) -> Result<(), StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err(path, e)),
    }
}

impl Store {
    /// Opens (creating if missing, with mode 0o600) the store at `path` for writing.
    ///
    /// In one process, opening a path that is already open returns that same store, whatever
    /// the options. Another process holding the file gives [`StoreError::Locked`]. Runs found
    /// `running` become `interrupted`: the process that ran them is gone.
    pub fn open(path: impl AsRef<Path>, options: StoreOptions) -> Result<Store, StoreError> {
        let given = path.as_ref();
        let mut registry = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
        let canonical = match std::fs::canonicalize(given) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                create_file(given)?;
                std::fs::canonicalize(given).map_err(|e| io_err(given, e))?
            }
            Err(e) => return Err(io_err(given, e)),
        };
        let label = canonical.display().to_string();
        let mut stale = false;
        if let Some(weak) = registry.get(&canonical) {
            match weak.upgrade() {
                Some(inner) if !inner.is_closed() => {
                    if !inner.writable {
                        return Err(StoreError::Locked {
                            path: label,
                            hint: "this process has it open read-only; drop or close that handle before opening it for writing".into(),
                        });
                    }
                    return Ok(Store {
                        inner,
                        read_only: false,
                    });
                }
                _ => stale = true,
            }
        }

        let mode = if options.shared_reads {
            redb::ConcurrencyMode::SingleWriter
        } else {
            redb::ConcurrencyMode::ExclusiveWriter
        };
        // A store of this process that is being dropped on another thread may hold the file a
        // moment longer; only then is waiting for it worth it.
        let mut attempts = if stale { 200 } else { 1 };
        let db = loop {
            attempts -= 1;
            match redb::Builder::new()
                .set_concurrency_mode(mode)
                .create(&canonical)
            {
                Ok(db) => break db,
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if attempts > 0 => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                    return Err(StoreError::Locked {
                        path: label,
                        hint: "another process has it open (only one process may write a store; a read-only tool may also hold it); stop that process or wait for it to finish".into(),
                    });
                }
                Err(e) => return Err(StoreError::db(&label, e)),
            }
        };
        let mut durability = options.durability;
        if options.shared_reads && durability == Durability::Eventual {
            tracing::warn!(store = %label, "durability `eventual` is not available with shared_reads; using `immediate`");
            durability = Durability::Immediate;
        }
        let inner = Self::start(db, Some(canonical.clone()), label, durability)?;
        registry.insert(canonical, Arc::downgrade(&inner));
        Ok(Store {
            inner,
            read_only: false,
        })
    }

    /// Opens the store at `path` for reading only; never changes the file.
    ///
    /// Beside a writer of another process this works only if that writer opened the store
    /// with `shared_reads`; otherwise [`StoreError::Locked`] says so.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        let given = path.as_ref();
        let mut registry = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
        let canonical = match std::fs::canonicalize(given) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound {
                    path: given.display().to_string(),
                });
            }
            Err(e) => return Err(io_err(given, e)),
        };
        let label = canonical.display().to_string();
        if let Some(inner) = registry.get(&canonical).and_then(Weak::upgrade)
            && !inner.is_closed()
        {
            return Ok(Store {
                inner,
                read_only: true,
            });
        }
        let open = |mode| {
            redb::Builder::new()
                .set_concurrency_mode(mode)
                .open_read_only(&canonical)
        };
        // Try the exclusive-writer protocol first (no writer, or a file nobody holds); a
        // writer with shared_reads refuses it, and then the shared protocol is the one to use.
        let db = match open(redb::ConcurrencyMode::ExclusiveWriter) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                match open(redb::ConcurrencyMode::SingleWriter) {
                    Ok(db) => db,
                    Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                        return Err(StoreError::Locked {
                            path: label,
                            hint: "a process has it open for writing without the `shared_reads` option; open the writer with StoreOptions { shared_reads: true, .. } to read beside it, or stop it first".into(),
                        });
                    }
                    Err(redb::DatabaseError::RepairAborted) => {
                        return Err(StoreError::NeedsRecovery { path: label });
                    }
                    Err(e) => return Err(StoreError::db(&label, e)),
                }
            }
            Err(redb::DatabaseError::RepairAborted) => {
                return Err(StoreError::NeedsRecovery { path: label });
            }
            Err(e) => return Err(StoreError::db(&label, e)),
        };
        let db = Db::Ro(db);
        check_format(&db, &label)?;
        let inner = Arc::new(Inner {
            path: Some(canonical.clone()),
            label,
            writable: false,
            durability: Durability::Immediate,
            db: RwLock::new(Some(Arc::new(db))),
            sender: RwLock::new(None),
            writer: Mutex::new(None),
            commit_micros: Arc::new(AtomicU64::new(u64::MAX)),
        });
        registry.insert(canonical, Arc::downgrade(&inner));
        Ok(Store {
            inner,
            read_only: true,
        })
    }

    /// A store in memory (redb's in-memory backend), through the same code as a file store.
    pub fn in_memory() -> Result<Store, StoreError> {
        Self::in_memory_with(Durability::Immediate)
    }

    /// [`in_memory`](Self::in_memory) with a durability mode (which changes only the commit
    /// path taken, useful to test it).
    pub fn in_memory_with(durability: Durability) -> Result<Store, StoreError> {
        let label = "<memory>".to_owned();
        let db = redb::Builder::new()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .db(&label)?;
        let inner = Self::start(db, None, label, durability)?;
        Ok(Store {
            inner,
            read_only: false,
        })
    }

    /// Prepares a freshly opened writable database and starts its writer.
    fn start(
        db: redb::Database,
        path: Option<PathBuf>,
        label: String,
        durability: Durability,
    ) -> Result<Arc<Inner>, StoreError> {
        let txn = db.begin_write().db(&label)?;
        writer::create_tables(&txn).db(&label)?;
        {
            let mut meta = txn.open_table(tables::META).db(&label)?;
            let found = meta
                .get(tables::FORMAT_VERSION_KEY)
                .db(&label)?
                .map(|g| g.value());
            match found {
                None => {
                    meta.insert(tables::FORMAT_VERSION_KEY, FORMAT_VERSION)
                        .db(&label)?;
                }
                Some(v) if v != FORMAT_VERSION => {
                    return Err(StoreError::UnsupportedFormat {
                        path: label,
                        found: v,
                        supported: FORMAT_VERSION,
                    });
                }
                Some(_) => {}
            }
        }
        let interrupted =
            writer::Writes::new(&txn, &label).interrupt_running(SystemClock.now_ms())?;
        txn.commit().db(&label)?;
        if !interrupted.is_empty() {
            tracing::info!(store = %label, runs = interrupted.len(), "runs left running by a previous process marked interrupted");
        }

        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel();
        let commit_micros = Arc::new(AtomicU64::new(u64::MAX));
        let handle = writer::spawn(
            db.clone(),
            rx,
            label.clone(),
            durability == Durability::Eventual,
            commit_micros.clone(),
        )
        .map_err(|e| StoreError::Io {
            path: label.clone(),
            source: e,
        })?;
        Ok(Arc::new(Inner {
            path,
            label,
            writable: true,
            durability,
            db: RwLock::new(Some(Arc::new(Db::Rw(db)))),
            sender: RwLock::new(Some(tx)),
            writer: Mutex::new(Some(handle)),
            commit_micros,
        }))
    }

    /// The canonical path of the file; `None` in memory.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// Whether this handle was opened with [`open_read_only`](Self::open_read_only).
    pub fn is_read_only(&self) -> bool {
        self.read_only || !self.inner.writable
    }

    /// The durability in effect (after the `shared_reads` adjustment).
    pub fn durability(&self) -> Durability {
        self.inner.durability
    }

    /// Closes the store for every clone: waits until the writer has committed everything
    /// queued (and, for `eventual`, fsynced it), then closes the file. Later calls on any
    /// clone give [`StoreError::Closed`]. Idempotent.
    pub fn close(&self) -> Result<(), StoreError> {
        self.inner.shutdown()
    }

    fn closed(&self) -> StoreError {
        StoreError::Closed {
            path: self.inner.label.clone(),
        }
    }

    fn writer_gone(&self) -> StoreError {
        StoreError::CommitFailed {
            path: self.inner.label.clone(),
            reason: "the writer thread stopped before answering; reopen the store".into(),
        }
    }

    fn send(&self, msg: Msg) -> Result<(), StoreError> {
        if self.is_read_only() {
            return Err(StoreError::ReadOnly {
                path: self.inner.label.clone(),
            });
        }
        let sender = self.inner.sender.read().unwrap_or_else(|p| p.into_inner());
        match sender.as_ref() {
            None => Err(self.closed()),
            Some(tx) => tx.send(msg).map_err(|_| self.writer_gone()),
        }
    }

    /// Appends through the group-commit writer; resolves once the transaction holding the
    /// request is committed (and durable, for `immediate`). Works on any tokio runtime.
    /// Dropping the future does not withdraw the request.
    pub async fn append(&self, req: AppendRequest) -> Result<AppendAck, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Append(Box::new(req), Reply::Async(tx)))?;
        self.await_reply(rx).await
    }

    /// Whether the last commit was short enough for polling to beat sleeping.
    fn commits_are_short(&self) -> bool {
        self.inner.commit_micros.load(Ordering::Relaxed) <= 2 * SPIN_MICROS
    }

    async fn await_reply<T>(
        &self,
        mut rx: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        // When commits are short (in memory, `eventual`), poll for a moment, yielding to the
        // other tasks between polls, so this worker thread does not go to sleep only to be
        // woken microseconds later (which costs more than the commit on a VM).
        if self.commits_are_short() {
            let start = Instant::now();
            while start.elapsed() < writer::SPIN {
                match rx.try_recv() {
                    Ok(result) => return result,
                    Err(oneshot::error::TryRecvError::Closed) => return Err(self.writer_gone()),
                    Err(oneshot::error::TryRecvError::Empty) => tokio::task::yield_now().await,
                }
            }
        }
        rx.await.map_err(|_| self.writer_gone())?
    }

    /// [`append`](Self::append) for callers outside async code; blocks the thread.
    pub fn append_blocking(&self, req: AppendRequest) -> Result<AppendAck, StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Msg::Append(Box::new(req), Reply::Blocking(tx)))?;
        // Polling pays off only when commits are about as short as the poll (in memory,
        // `eventual`); waiting on an fsync, sleep at once and leave the CPU to the writer.
        let spin = if self.commits_are_short() {
            writer::SPIN
        } else {
            Duration::ZERO
        };
        writer::recv_spinning(&rx, spin).ok_or_else(|| self.writer_gone())?
    }

    /// Deletes the references expired at `now_ms`; returns how many.
    pub async fn gc_references(&self, now_ms: i64) -> Result<usize, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Gc(now_ms, Reply::Async(tx)))?;
        self.await_reply(rx).await
    }

    /// [`gc_references`](Self::gc_references) for callers outside async code.
    pub fn gc_references_blocking(&self, now_ms: i64) -> Result<usize, StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Msg::Gc(now_ms, Reply::Blocking(tx)))?;
        rx.recv().map_err(|_| self.writer_gone())?
    }

    fn label(&self) -> &str {
        &self.inner.label
    }

    fn read_txn(&self) -> Result<ReadTransaction, StoreError> {
        let db = self
            .inner
            .db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match db {
            None => Err(self.closed()),
            Some(db) => db.begin_read().db(self.label()),
        }
    }

    /// The records of `run` with `seq >= from_seq`, in seq order.
    pub fn records(&self, run: RunId, from_seq: u64) -> Result<Vec<StoredRecord>, StoreError> {
        let mut out = Vec::new();
        self.scan_records(run, from_seq, &mut |seq, view| {
            out.push(StoredRecord {
                seq,
                record: view.to_record(),
            });
            ControlFlow::Continue(())
        })?;
        Ok(out)
    }

    /// Calls `f` with each record of `run` from `from_seq` on, viewed in place (no copy),
    /// until it breaks. A record that does not decode stops the scan with
    /// [`StoreError::Corrupt`] naming its run and seq.
    pub fn scan_records(
        &self,
        run: RunId,
        from_seq: u64,
        f: &mut dyn FnMut(u64, RecordView<'_>) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let label = self.label();
        let txn = self.read_txn()?;
        let journal = txn.open_table(tables::JOURNAL).db(label)?;
        let lo = journal_key(run, from_seq.max(1));
        let hi = journal_key(run, u64::MAX);
        for entry in journal
            .range::<&[u8; JOURNAL_KEY_LEN]>(&lo..=&hi)
            .db(label)?
        {
            let (key, value) = entry.db(label)?;
            let (_, seq) = split_journal_key(key.value());
            let view = record::decode(value.value()).map_err(|e| {
                StoreError::corrupt(label, format!("journal record seq {seq} of run {run}"), e)
            })?;
            if f(seq, view).is_break() {
                break;
            }
        }
        Ok(())
    }

    /// The last seq of `run` (= its number of records); 0 when it has none.
    pub fn last_seq(&self, run: RunId) -> Result<u64, StoreError> {
        let txn = self.read_txn()?;
        let journal = txn.open_table(tables::JOURNAL).db(self.label())?;
        last_seq_in(&journal, run).db(self.label())
    }

    /// The run's row with its record count and pending approvals.
    pub fn run(&self, run: RunId) -> Result<Option<RunInfo>, StoreError> {
        let txn = self.read_txn()?;
        let reader = RunReader::new(&txn, self.label())?;
        match reader.row(run)? {
            None => Ok(None),
            Some(row) => reader.info(run, row).map(Some),
        }
    }

    /// Runs matching `filter`, newest first (ULID order, descending), at most `filter.limit`
    /// (0 = all). Uses the tenant, thread or status index rather than reading every run.
    pub fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunInfo>, StoreError> {
        let label = self.label();
        let txn = self.read_txn()?;
        let reader = RunReader::new(&txn, label)?;
        let limit = if filter.limit == 0 {
            usize::MAX
        } else {
            filter.limit
        };
        let mut out = Vec::new();
        let mut visit = |run: RunId| -> Result<bool, StoreError> {
            if let Some(row) = reader.row(run)?
                && filter.tenant.as_ref().is_none_or(|t| *t == row.tenant)
                && filter.thread.as_ref().is_none_or(|t| *t == row.thread)
                && filter.status.is_none_or(|s| s == row.status)
            {
                out.push(reader.info(run, row)?);
            }
            Ok(out.len() < limit)
        };
        let run_at_end = |key: &[u8]| {
            key.len()
                .checked_sub(16)
                .and_then(|start| keys::run_from_key(&key[start..]))
        };
        match (&filter.tenant, &filter.thread, filter.status) {
            (Some(tenant), thread, _) => {
                let (table, prefix) = match thread {
                    Some(thread) => (
                        tables::RUNS_BY_THREAD,
                        KeyBuf::new().str(tenant).str(thread).into_vec(),
                    ),
                    None => (tables::RUNS_BY_TENANT, KeyBuf::new().str(tenant).into_vec()),
                };
                let index = txn.open_table(table).db(label)?;
                for entry in prefix_range(&index, &prefix).db(label)?.rev() {
                    let (key, _) = entry.db(label)?;
                    if let Some(run) = run_at_end(key.value())
                        && !visit(run)?
                    {
                        break;
                    }
                }
            }
            (None, _, Some(status)) => {
                let index = txn.open_table(tables::RUNS_BY_STATUS).db(label)?;
                let lo = status_key(status.tag(), ulid::Ulid(0));
                let hi = status_key(status.tag(), ulid::Ulid(u128::MAX));
                for entry in index
                    .range::<&[u8; keys::STATUS_KEY_LEN]>(&lo..=&hi)
                    .db(label)?
                    .rev()
                {
                    let (key, _) = entry.db(label)?;
                    if let Some(run) = keys::run_from_key(&key.value()[1..])
                        && !visit(run)?
                    {
                        break;
                    }
                }
            }
            (None, _, None) => {
                let runs = txn.open_table(tables::RUNS).db(label)?;
                for entry in runs.iter().db(label)?.rev() {
                    let (key, _) = entry.db(label)?;
                    if let Some(run) = keys::run_from_key(key.value())
                        && !visit(run)?
                    {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    pub fn approval(&self, id: &str) -> Result<Option<ApprovalRow>, StoreError> {
        let txn = self.read_txn()?;
        let reader = RunReader::new(&txn, self.label())?;
        reader.approval(id)
    }

    /// Every approval of `run`, in id order.
    pub fn approvals_of_run(&self, run: RunId) -> Result<Vec<ApprovalRow>, StoreError> {
        let txn = self.read_txn()?;
        let reader = RunReader::new(&txn, self.label())?;
        reader.approvals_of(run)
    }

    /// The latest row of a tenant's plan.
    pub fn plan(&self, tenant: &str, plan_id: &str) -> Result<Option<PlanRow>, StoreError> {
        let label = self.label();
        let txn = self.read_txn()?;
        let plans = txn.open_table(tables::PLANS).db(label)?;
        match plans.get(plan_key(tenant, plan_id).as_slice()).db(label)? {
            None => Ok(None),
            Some(g) => tables::from_json::<PlanRowJson>(g.value())
                .and_then(PlanRowJson::into_row)
                .map(Some)
                .map_err(|e| {
                    StoreError::corrupt(
                        label,
                        format!("plans row {plan_id:?} of tenant {tenant:?}"),
                        e,
                    )
                }),
        }
    }

    /// The spec JSON recorded under `hash`.
    pub fn spec(&self, hash: &str) -> Result<Option<String>, StoreError> {
        let label = self.label();
        let txn = self.read_txn()?;
        let specs = txn.open_table(tables::SPECS).db(label)?;
        Ok(specs.get(hash).db(label)?.map(|g| g.value().to_owned()))
    }

    /// The thread memory of an agent: entry JSON texts in append order.
    pub fn memory(
        &self,
        tenant: &str,
        thread: &str,
        agent: &str,
    ) -> Result<Vec<String>, StoreError> {
        let label = self.label();
        let txn = self.read_txn()?;
        let memory = txn.open_table(tables::MEMORY).db(label)?;
        let prefix = memory_prefix(tenant, thread, agent);
        let mut out = Vec::new();
        for entry in prefix_range(&memory, &prefix).db(label)? {
            let (key, value) = entry.db(label)?;
            // Only keys of exactly this (tenant, thread, agent): prefix + 8-byte index.
            if key.value().len() == prefix.len() + 8 {
                out.push(value.value().to_owned());
            }
        }
        Ok(out)
    }

    /// A reference of `tenant`, or `None` if it is missing, expired at `now_ms`, or another
    /// tenant's (the three are indistinguishable).
    pub fn reference(
        &self,
        tenant: &str,
        kind: &str,
        id: &str,
        now_ms: i64,
    ) -> Result<Option<ReferenceEntry>, StoreError> {
        let label = self.label();
        let txn = self.read_txn()?;
        let refs = txn.open_table(tables::REFERENCES).db(label)?;
        let Some(g) = refs
            .get(reference_key(tenant, kind, id).as_slice())
            .db(label)?
        else {
            return Ok(None);
        };
        let entry = tables::from_json::<ReferenceRowJson>(g.value())
            .map_err(|e| StoreError::corrupt(label, format!("references row {kind}/{id}"), e))?
            .into_entry();
        Ok((!entry.is_expired(now_ms)).then_some(entry))
    }

    #[cfg(test)]
    pub(crate) fn raw_db(&self) -> Option<Arc<redb::Database>> {
        let db = self
            .inner
            .db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        match &*db {
            Db::Rw(db) => Some(db.clone()),
            Db::Ro(_) => None,
        }
    }
}

fn check_format(db: &Db, label: &str) -> Result<(), StoreError> {
    let txn = db.begin_read().db(label)?;
    let meta = match txn.open_table(tables::META) {
        Ok(meta) => meta,
        Err(redb::TableError::TableDoesNotExist(_)) => {
            return Err(StoreError::corrupt(
                label,
                "meta table",
                "missing: this redb file is not a flowai store",
            ));
        }
        Err(e) => return Err(StoreError::db(label, e)),
    };
    match meta
        .get(tables::FORMAT_VERSION_KEY)
        .db(label)?
        .map(|g| g.value())
    {
        Some(FORMAT_VERSION) => Ok(()),
        Some(found) => Err(StoreError::UnsupportedFormat {
            path: label.to_owned(),
            found,
            supported: FORMAT_VERSION,
        }),
        None => Err(StoreError::corrupt(
            label,
            "meta table",
            "no format_version",
        )),
    }
}

/// The tables a run lookup reads, opened once per read transaction.
struct RunReader<'a> {
    label: &'a str,
    runs: redb::ReadOnlyTable<&'static [u8; 16], &'static [u8]>,
    journal: redb::ReadOnlyTable<&'static [u8; JOURNAL_KEY_LEN], &'static [u8]>,
    approvals: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    approvals_by_run: redb::ReadOnlyTable<&'static [u8], ()>,
}

impl<'a> RunReader<'a> {
    fn new(txn: &ReadTransaction, label: &'a str) -> Result<Self, StoreError> {
        Ok(RunReader {
            label,
            runs: txn.open_table(tables::RUNS).db(label)?,
            journal: txn.open_table(tables::JOURNAL).db(label)?,
            approvals: txn.open_table(tables::APPROVALS).db(label)?,
            approvals_by_run: txn.open_table(tables::APPROVALS_BY_RUN).db(label)?,
        })
    }

    fn row(&self, run: RunId) -> Result<Option<RunRow>, StoreError> {
        match self.runs.get(&run_key(run)).db(self.label)? {
            None => Ok(None),
            Some(g) => tables::from_json::<RunRow>(g.value())
                .map(Some)
                .map_err(|e| StoreError::corrupt(self.label, format!("runs row of run {run}"), e)),
        }
    }

    fn info(&self, run: RunId, row: RunRow) -> Result<RunInfo, StoreError> {
        let meta = row
            .into_meta(run)
            .map_err(|e| StoreError::corrupt(self.label, format!("runs row of run {run}"), e))?;
        let records = last_seq_in(&self.journal, run).db(self.label)?;
        let pending_approvals = self
            .approvals_of(run)?
            .into_iter()
            .filter(|a| a.status == ApprovalStatus::Pending)
            .map(|a| a.id)
            .collect();
        Ok(RunInfo {
            meta,
            records,
            pending_approvals,
        })
    }

    fn approval(&self, id: &str) -> Result<Option<ApprovalRow>, StoreError> {
        match self.approvals.get(id).db(self.label)? {
            None => Ok(None),
            Some(g) => tables::from_json::<ApprovalRowJson>(g.value())
                .and_then(|row| row.into_row(id))
                .map(Some)
                .map_err(|e| StoreError::corrupt(self.label, format!("approvals row {id:?}"), e)),
        }
    }

    fn approvals_of(&self, run: RunId) -> Result<Vec<ApprovalRow>, StoreError> {
        let prefix = approval_of_run_key(run, "");
        let mut out = Vec::new();
        for entry in prefix_range(&self.approvals_by_run, &prefix).db(self.label)? {
            let (key, _) = entry.db(self.label)?;
            let id_bytes = &key.value()[prefix.len()..];
            let id = std::str::from_utf8(id_bytes).map_err(|e| {
                StoreError::corrupt(self.label, format!("approvals_by_run key of run {run}"), e)
            })?;
            // The row may have moved to another run (PutApproval replaced it): trust the row.
            if let Some(row) = self.approval(id)?
                && row.run_id == run
            {
                out.push(row);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + 'static>(_: &T) {}
    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn store_and_its_futures_cross_threads() {
        let store = Store::in_memory().unwrap();
        assert_send_sync(&store);
        let append = store.append(AppendRequest::default());
        assert_send(&append);
        let gc = store.gc_references(0);
        assert_send(&gc);
        drop((append, gc));
        // The writer thread works without any tokio runtime in sight.
        assert_eq!(
            store.append_blocking(AppendRequest::default()).unwrap(),
            AppendAck::default()
        );
        assert_eq!(store.gc_references_blocking(0).unwrap(), 0);
    }

    /// A minimal executor that is not tokio: appends must resolve on it too.
    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        struct Unpark(std::thread::Thread);
        impl std::task::Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Arc::new(Unpark(std::thread::current())).into();
        let mut cx = std::task::Context::from_waker(&waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::park();
        }
    }

    #[test]
    fn append_resolves_without_any_tokio_runtime() {
        let store = Store::in_memory().unwrap();
        let run = ulid::Ulid(9);
        for i in 1..=20u64 {
            let ack = block_on(store.append(AppendRequest {
                run: Some(crate::RunAppend {
                    run_id: run,
                    expected_first_seq: Some(i),
                    records: vec![crate::Record {
                        kind: crate::RecordKind::StreamEmitted,
                        version: 1,
                        at_ms: 0,
                        payload: "{}".into(),
                    }],
                }),
                ..Default::default()
            }))
            .unwrap();
            assert_eq!(ack.last_seq, i);
        }
        assert_eq!(block_on(store.gc_references(0)).unwrap(), 0);
    }

    #[test]
    fn append_resolves_on_a_current_thread_runtime() {
        let store = Store::in_memory().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let ack = rt.block_on(store.append(AppendRequest::default())).unwrap();
        assert_eq!(ack, AppendAck::default());
    }
}
