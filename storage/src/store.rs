//! The store handle: opening (registry, locks, recovery), closing, and the write entry points.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, LazyLock, Mutex, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{ReadTransaction, ReadableDatabase, ReadableTable};
use tokio::sync::oneshot;

use crate::StoreError;
use crate::clock::{Clock, SystemClock};
use crate::tables::{self, FORMAT_VERSION, OLDEST_FORMAT_VERSION};
use crate::types::{AppendAck, AppendRequest};
use crate::wal::{self, WalBackend};
use crate::writer::{self, Msg, Policy, Reply, Shared};

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
    /// What the writer and inline commits share (the gate, durability bookkeeping, counters).
    shared: Arc<Shared>,
    /// Opening had redb rebuild its allocator state (see [`Store::repaired_at_open`]).
    repaired_at_open: bool,
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
        // Appends acknowledged in memory but not committed yet, or logged only as journal
        // frames; nothing can add to them now that the sender is gone.
        if let Some(db) = &db
            && let Db::Rw(rw) = &**db
        {
            if let Err(e) = self.shared.settle(rw, &self.label) {
                result = result.and(Err(e));
            }
            self.shared.make_journal_durable(rw, &self.label);
        }
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

/// redb page cache of an in-memory store, whose pages already live in memory.
const IN_MEMORY_CACHE_BYTES: usize = 4 << 20;

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

/// A failed writer open: another holder of the file, or what redb said.
fn locked_or_db(label: &str, e: redb::DatabaseError) -> StoreError {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked {
            path: label.to_owned(),
            hint: "another process has it open (only one process may write a store; a read-only tool may also hold it); stop that process or wait for it to finish".into(),
        },
        e => StoreError::db(label, e),
    }
}

fn io_err(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The error of opening the store at `path` over its write-ahead log.
fn log_error(path: &Path, e: std::io::Error) -> StoreError {
    if wal::is_foreign_log(&e) {
        let log = wal::wal_path(path);
        return StoreError::corrupt(
            &path.display().to_string(),
            format!("write-ahead log {}", log.display()),
            e,
        );
    }
    io_err(path, e)
}

fn remove_stale_log(path: &Path, found_absent_at: std::time::SystemTime) -> Result<(), StoreError> {
    let log = wal::wal_path(path);
    let modified = match std::fs::metadata(&log).and_then(|m| m.modified()) {
        Ok(modified) => modified,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(&log, e)),
    };
    if modified < found_absent_at {
        tracing::warn!(log = %log.display(), "removing the write-ahead log of a store that no longer exists");
        match std::fs::remove_file(&log) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(&log, e)),
            _ => {}
        }
    }
    Ok(())
}

/// Creates the tables a store has and records the format version, or checks it.
fn init_schema(txn: &redb::WriteTransaction, label: &str) -> Result<(), StoreError> {
    writer::create_tables(txn).db(label)?;
    let mut meta = txn.open_table(tables::META).db(label)?;
    let found = meta
        .get(tables::FORMAT_VERSION_KEY)
        .db(label)?
        .map(|g| g.value());
    match found {
        Some(FORMAT_VERSION) => Ok(()),
        None | Some(OLDEST_FORMAT_VERSION..FORMAT_VERSION) => {
            meta.insert(tables::FORMAT_VERSION_KEY, FORMAT_VERSION)
                .db(label)?;
            Ok(())
        }
        Some(v) => Err(StoreError::UnsupportedFormat {
            path: label.to_owned(),
            found: v,
            supported: FORMAT_VERSION,
        }),
    }
}

/// Creates the file with owner-only permissions if it does not exist.
fn create_file(path: &Path, found_absent_at: std::time::SystemTime) -> Result<(), StoreError> {
    // A crash while redb writes a new file's header would leave a file that is not a
    // database at `path`. So the database is initialized under a temporary name and
    // linked into place only when complete: after a crash there is either no store or a
    // whole one (a leftover `.creating-<pid>` file is harmless and can be deleted).
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| String::from("store"));
    let temp = path.with_file_name(format!(".{file_name}.creating-{}", std::process::id()));
    let _ = std::fs::remove_file(&temp);
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options.open(&temp).map_err(|e| io_err(path, e))?;
    let label = path.display().to_string();
    // The tables and the format version go in before the file is linked into place, so a
    // store that exists is a whole flowai store even if its creator dies right after.
    let initialized = redb::backends::FileBackend::new(file)
        .and_then(|backend| redb::Builder::new().create_with_backend(backend))
        .map_err(|e| StoreError::db(&label, e))
        .and_then(|db| {
            let txn = db.begin_write().db(&label)?;
            init_schema(&txn, &label)?;
            txn.commit().db(&label)?;
            db.close().db(&label)
        });
    // A log left beside a store that was since deleted belongs to that store: replayed onto
    // this new one it would corrupt it. It was last written before the store was found
    // absent; a log written after that belongs to another process that created the store
    // meanwhile, and stays.
    let initialized = initialized.and_then(|()| remove_stale_log(path, found_absent_at));
    let linked = initialized.and_then(|()| match std::fs::hard_link(&temp, path) {
        // Another process created it first: theirs stands.
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(io_err(path, e)),
        _ => Ok(()),
    });
    let _ = std::fs::remove_file(&temp);
    linked?;
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(handle) = std::fs::File::open(dir) {
            // Make the new directory entry durable too.
            let _ = handle.sync_all();
        }
    }
    Ok(())
}

/// Runs an open of the store at `path`, turning a panic into [`StoreError::Corrupt`].
///
/// redb trusts the bytes of its pages: on a damaged file some of its reads index past a
/// page and panic (seen: a leaf's key offsets, while loading the allocator state at open).
/// Opening is where a damaged file is met first, and nothing opened is kept when it fails:
/// the database, the log and the file lock are dropped as the panic unwinds.
fn guard_open(
    path: &Path,
    open: impl FnOnce() -> Result<Store, StoreError>,
) -> Result<Store, StoreError> {
    guard_pages(
        &path.display().to_string(),
        || "opening the file".into(),
        open,
    )
}

/// Runs `read`, which reads the store's pages, turning a panic of redb on damaged bytes
/// into [`StoreError::Corrupt`] at `location` (see [`guard_open`]). Only for code that
/// calls nothing of the caller's: a panic there is not the file's.
pub(crate) fn guard_pages<T>(
    label: &str,
    location: impl FnOnce() -> String,
    read: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    inside_redb(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)))
        .unwrap_or_else(|panic| Err(pages_panicked(label, location(), panic.as_ref())))
}

thread_local! {
    /// Set while this thread runs redb code whose panics become errors.
    static INSIDE_REDB: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, redb code whose panics become errors, with the panics of this thread kept
/// off stderr: the error carries their message, and a panic report before it would read
/// as a crash (the `flowai` command printed one above its one-line error). Installs, once,
/// a panic hook that hands every other panic to the hook there was before.
pub(crate) fn inside_redb<T>(f: impl FnOnce() -> T) -> T {
    static QUIET_HOOK: std::sync::Once = std::sync::Once::new();
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !INSIDE_REDB.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    let outer = INSIDE_REDB.with(|flag| flag.replace(true));
    let result = f();
    INSIDE_REDB.with(|flag| flag.set(outer));
    result
}

/// Runs `f`, the caller's own code called from inside [`inside_redb`], with its panics
/// reported as usual.
pub(crate) fn outside_redb<T>(f: impl FnOnce() -> T) -> T {
    let outer = INSIDE_REDB.with(|flag| flag.replace(false));
    let result = f();
    INSIDE_REDB.with(|flag| flag.set(outer));
    result
}

/// The [`StoreError::Corrupt`] a panic of redb reading the store's pages becomes.
pub(crate) fn pages_panicked(
    label: &str,
    location: String,
    panic: &(dyn std::any::Any + Send),
) -> StoreError {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic without a message");
    StoreError::corrupt(
        label,
        location,
        format!(
            "the database engine could not read its pages ({detail}); restore the file from a backup"
        ),
    )
}

impl Store {
    /// Whether this process has the store at `path` open (and not closed). Opening it again
    /// here gives that same store, and closing that closes it for every holder.
    pub fn is_open_in_this_process(path: impl AsRef<Path>) -> bool {
        let Ok(canonical) = std::fs::canonicalize(path) else {
            return false;
        };
        REGISTRY
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&canonical)
            .and_then(Weak::upgrade)
            .is_some_and(|inner| !inner.is_closed())
    }

    /// Opens (creating if missing, with mode 0o600) the store at `path` for writing.
    ///
    /// In one process, opening a path that is already open returns that same store, whatever
    /// the options. Another process holding the file gives [`StoreError::Locked`]. Runs found
    /// `running` become `interrupted`: the process that ran them is gone. A damaged file
    /// gives [`StoreError::Corrupt`], also where redb itself would panic on its bytes.
    pub fn open(path: impl AsRef<Path>, options: StoreOptions) -> Result<Store, StoreError> {
        let given = path.as_ref();
        guard_open(given, || Self::open_unguarded(given, options))
    }

    fn open_unguarded(given: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        let mut registry = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
        let looked_at = std::time::SystemTime::now();
        let canonical = match std::fs::canonicalize(given) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                create_file(given, looked_at)?;
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
        let repaired = Arc::new(AtomicBool::new(false));
        let on_repair = {
            let repaired = Arc::clone(&repaired);
            let label = label.clone();
            move |_: &mut redb::RepairSession| {
                if !repaired.swap(true, Ordering::AcqRel) {
                    tracing::warn!(store = %label, "the store was not closed cleanly and its last durable commit did not record redb's allocator state: rebuilding it, which reads every table");
                }
            }
        };
        if options.shared_reads && wal::wal_path(&canonical).exists() {
            // Readers of other processes see the store file only: fold a log left by a
            // crashed writer into it first (a writer open of its own, closed right away).
            let (db, wal) = WalBackend::open_database(
                &canonical,
                redb::ConcurrencyMode::ExclusiveWriter,
                wal::DEFAULT_LOG_SIZE,
                on_repair.clone(),
            )
            .map_err(|e| log_error(&canonical, e))?
            .map_err(|e| locked_or_db(&label, e))?;
            let txn = db.begin_write().db(&label)?;
            if replay_journal_tail(&txn, Some(&wal), &label)? {
                txn.commit().db(&label)?;
                wal.mark_durable();
            } else {
                txn.abort().db(&label)?;
            }
            db.close().db(&label)?;
        }
        let db = loop {
            attempts -= 1;
            let opened = if options.shared_reads {
                redb::Builder::new()
                    .set_concurrency_mode(mode)
                    .set_repair_callback(on_repair.clone())
                    .create(&canonical)
                    .map(|db| (db, None))
            } else {
                // The default: commits go to the write-ahead log (see `wal`).
                WalBackend::open_database(
                    &canonical,
                    mode,
                    wal::DEFAULT_LOG_SIZE,
                    on_repair.clone(),
                )
                .map_err(|e| log_error(&canonical, e))?
                .map(|(db, wal)| (db, Some(wal)))
            };
            match opened {
                Ok(db) => break db,
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if attempts > 0 => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(locked_or_db(&label, e)),
            }
        };
        let mut durability = options.durability;
        if options.shared_reads && durability == Durability::Eventual {
            tracing::warn!(store = %label, "durability `eventual` is not available with shared_reads; using `immediate`");
            durability = Durability::Immediate;
        }
        let (db, wal) = db;
        let repaired = repaired.load(Ordering::Acquire);
        let inner = Self::start(
            db,
            Some(canonical.clone()),
            label,
            durability,
            wal,
            repaired,
        )?;
        registry.insert(canonical, Arc::downgrade(&inner));
        Ok(Store {
            inner,
            read_only: false,
        })
    }

    /// Opens the store at `path` for reading only; never changes the file.
    ///
    /// Beside a writer of another process this works only if that writer opened the store
    /// with `shared_reads`; otherwise [`StoreError::Locked`] says so. A damaged file gives
    /// [`StoreError::Corrupt`], as [`Store::open`] does.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        let given = path.as_ref();
        guard_open(given, || Self::open_read_only_unguarded(given))
    }

    fn open_read_only_unguarded(given: &Path) -> Result<Store, StoreError> {
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
            let backend = Arc::new(
                WalBackend::open(&canonical, false, wal::DEFAULT_LOG_SIZE)
                    .map_err(redb::DatabaseError::from)?,
            );
            let opened = redb::Builder::new()
                .set_concurrency_mode(mode)
                .open_read_only_with_backend(wal::SharedWal(Arc::clone(&backend)));
            // Reported only when no writer holds the file: a live writer may be in the
            // middle of a checkpoint, and that is reported as locked.
            if let Some(why) = backend.foreign()
                && !matches!(opened, Err(redb::DatabaseError::DatabaseAlreadyOpen))
            {
                return Err(redb::DatabaseError::Storage(redb::StorageError::Io(
                    why.into(),
                )));
            }
            opened.map(|db| (db, backend))
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
                            hint: "a process has it open for writing without the `shared_reads` option; open the writer with it to read beside it (Python: `open_store(path, shared_reads=True)`; Rust: `StoreOptions { shared_reads: true, .. }`), or stop it first".into(),
                        });
                    }
                    Err(redb::DatabaseError::RepairAborted) => {
                        return Err(StoreError::NeedsRecovery { path: label });
                    }
                    Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))
                        if wal::is_foreign_log(&e) =>
                    {
                        return Err(log_error(&canonical, e));
                    }
                    Err(e) => return Err(StoreError::db(&label, e)),
                }
            }
            Err(redb::DatabaseError::RepairAborted) => {
                return Err(StoreError::NeedsRecovery { path: label });
            }
            Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))
                if wal::is_foreign_log(&e) =>
            {
                return Err(log_error(&canonical, e));
            }
            Err(e) => return Err(StoreError::db(&label, e)),
        };
        let (db, backend) = db;
        let db = Db::Ro(db);
        check_format(&db, &label)?;
        if !journal_frames_are_held(&db, &backend, &label)? {
            // A crashed writer's last appends are in journal frames, which only a writer
            // applies; a reader without them would miss acknowledged records. (redb asks
            // for the same after most crashes: it repairs only in a writer.)
            return Err(StoreError::NeedsRecovery { path: label });
        }
        let inner = Arc::new(Inner {
            path: Some(canonical.clone()),
            label,
            writable: false,
            durability: Durability::Immediate,
            db: RwLock::new(Some(Arc::new(db))),
            sender: RwLock::new(None),
            writer: Mutex::new(None),
            shared: Arc::new(Shared::new(Policy::Immediate)),
            repaired_at_open: false,
        });
        registry.insert(canonical, Arc::downgrade(&inner));
        Ok(Store {
            inner,
            read_only: true,
        })
    }

    /// A store in memory (redb's in-memory backend), through the same code as a file store.
    /// Its pages live in that backend; redb's own page cache is kept small (4 MiB).
    pub fn in_memory() -> Result<Store, StoreError> {
        Self::in_memory_with(Durability::Immediate)
    }

    /// [`in_memory`](Self::in_memory) with a durability mode (which changes only the commit
    /// path taken, useful to test it).
    pub fn in_memory_with(durability: Durability) -> Result<Store, StoreError> {
        let label = "<memory>".to_owned();
        // redb's page cache (1 GiB by default) would hold a second copy of pages that already
        // live in memory; a small one keeps the write buffer it needs, and is slightly faster
        // (13.8 against 15.5 µs per 3-record commit, measured with redb alone).
        let db = redb::Builder::new()
            .set_cache_size(IN_MEMORY_CACHE_BYTES)
            .create_with_backend(crate::memory::MemoryBackend::default())
            .db(&label)?;
        let inner = Self::start(db, None, label, durability, None, false)?;
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
        wal: Option<Arc<WalBackend>>,
        repaired_at_open: bool,
    ) -> Result<Arc<Inner>, StoreError> {
        let mut txn = db.begin_write().db(&label)?;
        if path.is_some() {
            writer::record_allocator_state(&mut txn);
        }
        init_schema(&txn, &label)?;
        // Appends a crashed writer acknowledged through journal frames, before anything
        // else reads or writes: this durable commit covers them from now on.
        let replayed = replay_journal_tail(&txn, wal.as_deref(), &label)?;
        let interrupted =
            writer::Writes::new(&txn, &label).interrupt_running(SystemClock.now_ms())?;
        txn.commit().db(&label)?;
        if let Some(wal) = &wal
            && replayed
        {
            wal.mark_durable();
        }
        if !interrupted.is_empty() {
            tracing::info!(store = %label, runs = interrupted.len(), "runs left running by a previous process marked interrupted");
        }

        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel();
        let policy = match (durability, path.is_some()) {
            (Durability::Eventual, _) => Policy::Eventual,
            (Durability::Immediate, true) => Policy::Immediate,
            (Durability::Immediate, false) => Policy::Memory,
        };
        let shared = Arc::new(Shared::new(policy));
        if let (Policy::Immediate, Some(wal)) = (policy, wal) {
            shared.set_journal_log(&wal);
        }
        let handle = writer::spawn(db.clone(), rx, label.clone(), shared.clone()).map_err(|e| {
            StoreError::Io {
                path: label.clone(),
                source: e,
            }
        })?;
        Ok(Arc::new(Inner {
            path,
            label,
            writable: true,
            durability,
            db: RwLock::new(Some(Arc::new(Db::Rw(db)))),
            sender: RwLock::new(Some(tx)),
            writer: Mutex::new(Some(handle)),
            shared,
            repaired_at_open,
        }))
    }

    /// Whether opening this store had redb rebuild its allocator state by reading every
    /// table, which takes time in proportion to the store: a crash left the file without
    /// the state a durable commit records. Every durable commit of this version records
    /// it, so this is `true` only after a crash of a writer that did not. A warning is
    /// logged when it happens.
    pub fn repaired_at_open(&self) -> bool {
        self.inner.repaired_at_open
    }

    /// The canonical path of the file; `None` in memory.
    /// Identifies the open store this handle belongs to: every handle of one open store
    /// (clones, or the same path opened twice in this process) has the same id while the
    /// store is open.
    pub fn instance_id(&self) -> usize {
        Arc::as_ptr(&self.inner) as usize
    }

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

    /// A request whose reply never came: the store was poisoned (a commit panicked) or the
    /// writer thread is gone.
    fn writer_gone(&self) -> StoreError {
        self.inner
            .shared
            .poisoned_error(&self.inner.label)
            .unwrap_or_else(|| StoreError::CommitFailed {
                path: self.inner.label.clone(),
                reason: "the writer thread stopped before answering; reopen the store".into(),
            })
    }

    fn send(&self, msg: Msg) -> Result<(), StoreError> {
        if self.is_read_only() {
            return Err(StoreError::ReadOnly {
                path: self.inner.label.clone(),
            });
        }
        let sender = self.inner.sender.read().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = sender.as_ref() else {
            return Err(self.closed());
        };
        // Counted before it is sent, so that the writer never uncounts it first.
        self.inner.shared.enqueued();
        tx.send(msg).map_err(|_| {
            self.inner.shared.not_sent();
            self.writer_gone()
        })
    }

    /// Appends; resolves once the transaction holding the request is committed (and durable,
    /// for `immediate`). Works on any tokio runtime, or none.
    ///
    /// When the store is idle the commit runs right here, on the caller's thread (see
    /// `append_inline`); otherwise the request goes to the group-commit writer. Dropping the
    /// future does not withdraw a request already handed to the writer.
    pub async fn append(&self, req: AppendRequest) -> Result<AppendAck, StoreError> {
        // An inline commit of a file store blocks this (possibly tokio worker) thread for the
        // fsync, ~0.2 ms. Accepted, and only taken when no other append is queued or
        // committing: the caller is waiting for exactly this commit anyway, and handing it to
        // the writer would keep a thread blocked just the same while adding two cross-thread
        // wake-ups (~40–50 µs here). Under contention requests go to the writer, so workers
        // are not tied up by one fsync each.
        let req = match self.append_inline(req) {
            Ok(result) => return result,
            Err(req) => req,
        };
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Append(req, Reply::Async(tx)))?;
        self.await_reply(rx).await
    }

    /// Commits the request on the caller's thread, with the writer's commit code, when that
    /// is cheaper than the writer: the store is idle (`Shared::enter_inline` has the
    /// heuristic), or in memory, where group commit has no fsync to share. The gate it holds
    /// excludes the writer's commits (redb serializes them anyway), and every check of the
    /// request runs inside the transaction, as in a batch. Gives the request back when it
    /// must go to the writer.
    fn append_inline(
        &self,
        req: AppendRequest,
    ) -> Result<Result<AppendAck, StoreError>, Box<AppendRequest>> {
        if self.is_read_only() || !self.inner.shared.inline_likely() {
            return Err(Box::new(req));
        }
        // Held through the commit: closing takes this lock for writing, so it waits for an
        // inline commit in progress (which the writer's final flush then covers), and no
        // inline commit starts once closing began.
        let sender = self.inner.sender.read().unwrap_or_else(|p| p.into_inner());
        let Some(writer) = sender.as_ref() else {
            return Ok(Err(self.closed()));
        };
        let db = self
            .inner
            .db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(db) = db else {
            return Ok(Err(self.closed()));
        };
        let Db::Rw(db) = &*db else {
            return Err(Box::new(req));
        };
        let Some(mut state) = self.inner.shared.enter_inline() else {
            return Err(Box::new(req));
        };
        let req =
            match self
                .inner
                .shared
                .try_defer(&mut state, db, Box::new(req), &self.inner.label)
            {
                Ok(result) => return Ok(result),
                Err(req) => req,
            };
        let (tx, rx) = mpsc::sync_channel(1);
        let committed = self.inner.shared.commit(
            &mut state,
            db,
            vec![Msg::Append(req, Reply::Blocking(tx))],
            &self.inner.label,
        );
        drop(state);
        if committed.arm_flush {
            // The writer may be asleep without a timer; it must make this commit durable
            // within the flush period. Fails only if the writer is gone, which the next
            // append reports.
            let _ = writer.send(Msg::Wake);
        }
        drop(sender);
        committed.deliver();
        Ok(rx.recv().unwrap_or_else(|_| Err(self.writer_gone())))
    }

    /// Whether the last commit was short enough for polling to beat sleeping.
    fn commits_are_short(&self) -> bool {
        self.inner.shared.commit_micros() <= 2 * SPIN_MICROS
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

    /// [`append`](Self::append) for callers outside async code; blocks the thread. Commits
    /// inline when the store is idle, as `append` does.
    pub fn append_blocking(&self, req: AppendRequest) -> Result<AppendAck, StoreError> {
        let req = match self.append_inline(req) {
            Ok(result) => return result,
            Err(req) => req,
        };
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Msg::Append(req, Reply::Blocking(tx)))?;
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

    pub(crate) fn label(&self) -> &str {
        &self.inner.label
    }

    pub(crate) fn read_txn(&self) -> Result<ReadTransaction, StoreError> {
        let db = self
            .inner
            .db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match db {
            None => Err(self.closed()),
            Some(db) => {
                if let Db::Rw(rw) = &*db {
                    self.inner.shared.settle(rw, self.label())?;
                }
                db.begin_read().db(self.label())
            }
        }
    }

    /// Rebuilds the `runs`, `approvals` and `plans` tables (and their indexes) from the
    /// journal, in one write transaction. Use it on a store whose index tables are in
    /// doubt; `specs`, `memory` and `references` are not projections and stay as they are.
    /// Runs with no closing record come back `suspended` (an approval is open) or
    /// `interrupted`.
    pub fn rebuild_indexes(&self) -> Result<crate::RebuildReport, StoreError> {
        let label = self.label().to_owned();
        let label = label.as_str();
        if self.read_only {
            return Err(StoreError::ReadOnly {
                path: label.to_owned(),
            });
        }
        let db = self
            .inner
            .db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| self.closed())?;
        let Db::Rw(db) = &*db else {
            return Err(StoreError::ReadOnly {
                path: label.to_owned(),
            });
        };
        // Held throughout: no commit may land between the scan and the rewrite.
        let mut gate = self.inner.shared.gate();
        self.inner.shared.settle_locked(&mut gate, db, label)?;
        let mut derivation = crate::rebuild::Derivation::default();
        {
            let txn = db.begin_read().db(label)?;
            let journal = txn.open_table(tables::JOURNAL).db(label)?;
            let mut current: Option<crate::RunId> = None;
            let mut records: Vec<crate::StoredRecord> = Vec::new();
            let mut finish = |run: Option<crate::RunId>, records: &mut Vec<crate::StoredRecord>| {
                let result = match run {
                    Some(run) => derivation
                        .add_run(run, records)
                        .map_err(|detail| StoreError::corrupt(label, format!("run {run}"), detail)),
                    None => Ok(()),
                };
                records.clear();
                result
            };
            for entry in journal.iter().db(label)? {
                let (key, value) = entry.db(label)?;
                let (run, seq) = crate::keys::split_journal_key(key.value());
                if seq == crate::keys::RUN_SENTINEL_SEQ {
                    continue;
                }
                if current != Some(run) {
                    finish(current, &mut records)?;
                    current = Some(run);
                }
                let view = crate::record::decode(value.value()).map_err(|detail| {
                    StoreError::corrupt(label, format!("run {run} seq {seq}"), detail)
                })?;
                records.push(crate::StoredRecord {
                    seq,
                    record: view.to_record(),
                });
            }
            finish(current, &mut records)?;
        }
        let (updates, report) = derivation.into_updates();
        let txn = db.begin_write().db(label)?;
        txn.delete_table(tables::RUNS).db(label)?;
        txn.delete_table(tables::RUNS_BY_TENANT).db(label)?;
        txn.delete_table(tables::RUNS_BY_THREAD).db(label)?;
        txn.delete_table(tables::RUNS_BY_STATUS).db(label)?;
        txn.delete_table(tables::APPROVALS).db(label)?;
        txn.delete_table(tables::APPROVALS_BY_RUN).db(label)?;
        txn.delete_table(tables::PLANS).db(label)?;
        crate::writer::create_tables(&txn).db(label)?;
        {
            let mut writes = crate::writer::Writes::new(&txn, label);
            for update in updates {
                writes.apply_update(update)?;
            }
        }
        txn.commit().db(label)?;
        Ok(report)
    }

    #[cfg(test)]
    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
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

/// Whether the store already holds every append of the journal frames in its log.
fn journal_frames_are_held(db: &Db, wal: &WalBackend, label: &str) -> Result<bool, StoreError> {
    if !wal.has_journal() {
        return Ok(true);
    }
    let txn = db.begin_read().db(label)?;
    let journal = txn.open_table(tables::JOURNAL).db(label)?;
    for body in wal.journal_tail() {
        let entries = writer::decode_journal_body(&body)
            .map_err(|e| StoreError::corrupt(label, "write-ahead log journal frame", e))?;
        for entry in entries {
            // An entry of index updates is held when the records before it are.
            let writer::JournalEntry::Records(run, first_seq, records) = entry else {
                continue;
            };
            let last = crate::read::last_seq_in(&journal, run).db(label)?;
            if first_seq + records.len() as u64 > last + 1 {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Writes, in `txn`, the appends of the journal frames in the log that the store does not
/// hold yet (storage/FORMAT.md, "Journal frames"); whether there were frames. The caller
/// commits durably, then tells the log ([`WalBackend::mark_durable`]).
fn replay_journal_tail(
    txn: &redb::WriteTransaction,
    wal: Option<&WalBackend>,
    label: &str,
) -> Result<bool, StoreError> {
    let tail = wal.map(WalBackend::journal_tail).unwrap_or_default();
    if tail.is_empty() {
        return Ok(false);
    }
    let mut writes = writer::Writes::new(txn, label);
    let mut records = 0;
    for body in &tail {
        records += writes.replay_journal_frame(body)?;
    }
    tracing::info!(
        store = label,
        frames = tail.len(),
        records,
        "replayed the journal frames of the write-ahead log"
    );
    Ok(true)
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
        Some(OLDEST_FORMAT_VERSION..=FORMAT_VERSION) => Ok(()),
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

    /// redb panicking in a commit (on a damaged page; injected here) fails that append
    /// with an error saying so, and the store takes nothing after it: the batch's journal
    /// frame may be in the log already. Inline and through the writer thread alike.
    #[test]
    fn a_commit_that_panics_fails_its_append_and_stops_the_store() {
        for contended in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path().join("p.redb"), StoreOptions::default()).unwrap();
            let run = ulid::Ulid(7);
            let append = |i: u64| {
                let req = AppendRequest {
                    run: Some(crate::RunAppend {
                        run_id: run,
                        expected_first_seq: None,
                        records: vec![rec(i)],
                    }),
                    ..Default::default()
                };
                if contended {
                    // Through the writer thread, as under contention.
                    let (tx, rx) = oneshot::channel();
                    store
                        .send(Msg::Append(Box::new(req), Reply::Async(tx)))
                        .unwrap();
                    tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap()
                        .block_on(store.await_reply(rx))
                } else {
                    store.append_blocking(req)
                }
            };
            append(1).unwrap();
            store
                .inner
                .shared
                .panic_in_next_commit
                .store(true, Ordering::Release);
            let failed = append(2).unwrap_err().to_string();
            assert!(
                failed.contains(
                    "at a commit: the database engine could not read its pages (injected"
                ),
                "{failed}"
            );
            let next = append(3).unwrap_err().to_string();
            assert!(
                next.contains("takes no more work after an earlier failure"),
                "{next}"
            );
            let _ = store.close();
            drop(store);
            let reopened = Store::open(dir.path().join("p.redb"), StoreOptions::default()).unwrap();
            assert_eq!(
                reopened.last_seq(run).unwrap(),
                1,
                "nothing of the failed append"
            );
            reopened.close().unwrap();
        }
    }

    fn rec(i: u64) -> crate::Record {
        crate::Record {
            kind: crate::RecordKind::StreamEmitted,
            version: 1,
            at_ms: i as i64,
            payload: format!("{{\"i\":{i}}}"),
        }
    }

    fn request(run: crate::RunId, expected: Option<u64>, n: u64) -> AppendRequest {
        AppendRequest {
            run: Some(crate::RunAppend {
                run_id: run,
                expected_first_seq: expected,
                records: (0..n).map(rec).collect(),
            }),
            ..Default::default()
        }
    }

    fn ack(first_seq: u64, last_seq: u64) -> AppendAck {
        AppendAck {
            first_seq,
            last_seq,
        }
    }

    fn file_store(dir: &tempfile::TempDir, name: &str, durability: Durability) -> Store {
        Store::open(
            dir.path().join(name),
            StoreOptions {
                durability,
                shared_reads: false,
            },
        )
        .unwrap()
    }

    /// Polls a future once, as an executor's first poll would.
    fn poll_once<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> std::task::Poll<F::Output> {
        let waker = std::task::Waker::noop();
        f.poll(&mut std::task::Context::from_waker(waker))
    }

    /// Waits for a condition another thread brings about (bounded, so a bug fails the test
    /// instead of hanging it).
    fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_lone_appender_commits_inline_and_concurrent_ones_share_one_writer_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = file_store(&dir, "paths.redb", Durability::Immediate);
        let lone = ulid::Ulid(1);
        for i in 1..=10 {
            assert_eq!(
                store.append_blocking(request(lone, Some(i), 1)).unwrap(),
                ack(i, i)
            );
        }
        assert_eq!(store.shared().paths_taken(), (10, 0, 0), "all inline");

        // One appender meets a commit holding the gate: that is contention too, so it goes
        // to the writer, and so does the next append.
        let gate = store.shared().gate_for_test();
        let other = ulid::Ulid(2);
        let mut waiting = Box::pin(store.append(request(other, Some(1), 1)));
        assert!(poll_once(waiting.as_mut()).is_pending());
        drop(gate);
        assert_eq!(block_on(waiting).unwrap(), ack(1, 1));
        assert_eq!(store.shared().paths_taken(), (10, 1, 1));
        assert_eq!(
            store.append_blocking(request(other, Some(2), 1)).unwrap(),
            ack(2, 2)
        );
        assert_eq!(store.shared().paths_taken(), (10, 2, 1));

        // Six appenders arrive while a commit holds the gate: each is queued for the writer
        // (the first meets the held gate, the others a queued request), and the writer
        // commits them in one batch once the gate is free.
        let gate = store.shared().gate_for_test();
        let mut waiting: Vec<_> = (0..6u128)
            .map(|t| Box::pin(store.append(request(ulid::Ulid(100 + t), Some(1), 2))))
            .collect();
        for f in &mut waiting {
            assert!(poll_once(f.as_mut()).is_pending());
        }
        assert_eq!(store.shared().queued_for_test(), 6);
        drop(gate);
        for f in waiting {
            assert_eq!(block_on(f).unwrap(), ack(1, 2));
        }
        assert_eq!(store.shared().paths_taken(), (10, 3, 6), "one batch of six");

        // Contention was seen: the lone appender goes through the writer until it has
        // committed CALM_BATCHES single requests in a row, then commits inline again.
        let calm = u64::from(writer::CALM_BATCHES);
        for i in 11..=13 + calm {
            assert_eq!(
                store.append_blocking(request(lone, Some(i), 1)).unwrap(),
                ack(i, i)
            );
        }
        assert_eq!(store.shared().paths_taken(), (13, 3 + calm, 6));

        let path = store.path().unwrap().to_owned();
        store.close().unwrap();
        drop(store);
        let store = Store::open_read_only(&path).unwrap();
        assert_eq!(store.last_seq(other).unwrap(), 2);
        let records = store.records(lone, 1).unwrap();
        assert_eq!(
            records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (1..=13 + calm).collect::<Vec<_>>()
        );
        for t in 0..6u128 {
            let records = store.records(ulid::Ulid(100 + t), 1).unwrap();
            let got: Vec<_> = records
                .iter()
                .map(|r| (r.seq, r.record.payload.clone()))
                .collect();
            assert_eq!(
                got,
                vec![(1, "{\"i\":0}".to_owned()), (2, "{\"i\":1}".to_owned())]
            );
        }
    }

    #[test]
    fn a_failed_check_on_the_inline_path_fails_only_that_request() {
        let dir = tempfile::tempdir().unwrap();
        let store = file_store(&dir, "checks.redb", Durability::Immediate);
        let run = ulid::Ulid(7);
        let mut create = create_run(run);
        create.precondition = crate::Precondition::RunAbsent(run);
        store.append_blocking(create.clone()).unwrap();

        let err = store.append_blocking(create).unwrap_err();
        assert!(
            matches!(err, StoreError::RunExists { run: r } if r == run),
            "{err:?}"
        );
        let err = store.append_blocking(request(run, Some(5), 3)).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::SeqConflict {
                    expected: 5,
                    actual: 2,
                    ..
                }
            ),
            "{err:?}"
        );
        let mut wrong_status = request(run, None, 2);
        wrong_status.precondition =
            crate::Precondition::RunStatusIn(run, vec![crate::RunStatus::Completed]);
        let err = store.append_blocking(wrong_status).unwrap_err();
        assert!(
            matches!(err, StoreError::PreconditionFailed { .. }),
            "{err:?}"
        );
        // Nothing of the failed requests was written, and the next one goes on from seq 2.
        assert_eq!(
            store.append_blocking(request(run, None, 1)).unwrap(),
            ack(2, 2)
        );
        assert_eq!(store.shared().paths_taken(), (5, 0, 0), "all inline");
        assert_eq!(store.last_seq(run).unwrap(), 2);
        assert_eq!(
            store.run(run).unwrap().unwrap().meta.status,
            crate::RunStatus::Running
        );
    }

    #[test]
    fn inline_appends_after_close_get_closed() {
        let dir = tempfile::tempdir().unwrap();
        for durability in [Durability::Immediate, Durability::Eventual] {
            let store = file_store(&dir, &format!("{durability:?}.redb"), durability);
            let run = ulid::Ulid(3);
            store.append_blocking(request(run, Some(1), 1)).unwrap();
            assert_eq!(store.shared().paths_taken(), (1, 0, 0));
            store.close().unwrap();
            assert!(matches!(
                store.append_blocking(request(run, None, 1)),
                Err(StoreError::Closed { .. })
            ));
            assert!(matches!(
                block_on(store.append(request(run, None, 1))),
                Err(StoreError::Closed { .. })
            ));
            let path = store.path().unwrap().to_owned();
            drop(store);
            let store = Store::open_read_only(&path).unwrap();
            assert_eq!(store.last_seq(run).unwrap(), 1, "{durability:?}");
        }
    }

    /// A run's start and end (records with index updates and checks) go to journal frames
    /// like its steps; a batch too large for one, or one that writes no record, commits
    /// durably.
    #[test]
    fn which_batches_go_to_journal_frames() {
        let dir = tempfile::tempdir().unwrap();
        let store = file_store(&dir, "frames.redb", Durability::Immediate);
        let non_durable = || store.shared().gate_for_test().non_durable;
        let run = ulid::Ulid(0x0190_0000_0000u128 << 80);
        let mut start = create_run(run);
        start.precondition = crate::Precondition::RunAbsent(run);
        store.append_blocking(start).unwrap();
        assert_eq!(non_durable(), 1, "the start went to a journal frame");

        let mut large = request(run, Some(2), 1);
        if let Some(append) = &mut large.run {
            append.records[0].payload = format!("{{\"pad\":\"{}\"}}", "x".repeat(300_000));
        }
        store.append_blocking(large).unwrap();
        assert_eq!(non_durable(), 0, "a 300 KB batch committed durably");

        let mut end = request(run, Some(3), 1);
        end.index_updates = vec![crate::IndexUpdate::SetRunStatus {
            run_id: run,
            status: crate::RunStatus::Completed,
            at_ms: 2,
        }];
        store.append_blocking(end).unwrap();
        assert_eq!(non_durable(), 1, "the end went to a journal frame");

        store
            .append_blocking(AppendRequest {
                index_updates: vec![crate::IndexUpdate::PutSpec {
                    hash: "h".into(),
                    json: "{}".into(),
                }],
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            non_durable(),
            0,
            "a batch without records committed durably"
        );
        let info = store.run(run).unwrap().unwrap();
        assert_eq!(
            (info.meta.status, info.records),
            (crate::RunStatus::Completed, 3)
        );
        store.close().unwrap();
    }

    /// A reference sweep that finds nothing expired commits nothing (each runtime's first
    /// run asks for one); one that removes a reference commits durably.
    #[test]
    fn a_sweep_with_nothing_expired_commits_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = file_store(&dir, "sweep.redb", Durability::Immediate);
        let non_durable = || store.shared().gate_for_test().non_durable;
        store
            .append_blocking(request(ulid::Ulid(9), Some(1), 1))
            .unwrap();
        assert_eq!(non_durable(), 1);
        assert_eq!(store.gc_references_blocking(1_000).unwrap(), 0);
        assert_eq!(non_durable(), 1, "the empty sweep made a durable commit");

        store
            .append_blocking(AppendRequest {
                index_updates: vec![crate::IndexUpdate::PutReference(crate::ReferenceEntry {
                    tenant: "t".into(),
                    kind: "K".into(),
                    id: "r1".into(),
                    value: "{}".into(),
                    glimpse: "{}".into(),
                    created_at_ms: 1,
                    expires_at_ms: Some(500),
                })],
                ..Default::default()
            })
            .unwrap();
        store
            .append_blocking(request(ulid::Ulid(9), Some(2), 1))
            .unwrap();
        assert_eq!(non_durable(), 1);
        assert_eq!(store.gc_references_blocking(1_000).unwrap(), 1);
        assert_eq!(
            non_durable(),
            0,
            "the sweep that removed one committed durably"
        );
        store.close().unwrap();
    }

    /// Journal frames no durable commit covers yet are kept in memory by the log: once they
    /// pass `JOURNALED_BYTES_MAX`, the next batch commits durably, well before one in 256.
    #[test]
    fn outstanding_journal_frames_are_bounded_in_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = file_store(&dir, "bounded.redb", Durability::Immediate);
        let run = ulid::Ulid(0x0190_0000_0000u128 << 80);
        let mut most = 0;
        for seq in 1..=24u64 {
            let mut req = request(run, Some(seq), 1);
            if let Some(append) = &mut req.run {
                append.records[0].payload = format!("{{\"pad\":\"{}\"}}", "x".repeat(240_000));
            }
            store.append_blocking(req).unwrap();
            most = most.max(store.shared().gate_for_test().non_durable);
        }
        let per_frame = 240_000;
        assert!(
            (crate::writer::JOURNALED_BYTES_MAX / per_frame
                ..=crate::writer::JOURNALED_BYTES_MAX / per_frame + 1)
                .contains(&(most as usize)),
            "{most} frames outstanding at most"
        );
        assert_eq!(store.records(run, 1).unwrap().len(), 24);
        store.close().unwrap();
    }

    #[test]
    fn eventual_inline_commits_are_made_durable_by_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        // With no later append, the writer's timer makes the inline commit durable.
        let store = file_store(&dir, "timer.redb", Durability::Eventual);
        // A round trip through the writer first, and its flush of that commit, so that the
        // writer is idle without a timer when the inline commit comes: only a wake-up can
        // arm it.
        assert_eq!(store.gc_references_blocking(0).unwrap(), 0);
        let flushed = || store.shared().gate_for_test().unsynced_since.is_none();
        wait_until("the writer's durable commit of the gc", flushed);
        let run = ulid::Ulid(4);
        store.append_blocking(request(run, Some(1), 2)).unwrap();
        assert_eq!(store.shared().paths_taken(), (1, 1, 1));
        assert!(!flushed(), "the inline commit is not durable yet");
        wait_until("the writer's durable commit of the inline one", flushed);
        store.close().unwrap();

        // Closing makes them durable too: the writer's last act is a durable commit.
        let store = file_store(&dir, "close.redb", Durability::Eventual);
        store.append_blocking(request(run, Some(1), 2)).unwrap();
        let unsynced = store.shared().gate_for_test().unsynced_since;
        assert!(unsynced.is_some() || store.shared().gate_for_test().non_durable == 0);
        store.close().unwrap();
        assert_eq!(store.shared().gate_for_test().unsynced_since, None);
        assert_eq!(store.shared().gate_for_test().non_durable, 0);
    }

    #[test]
    fn in_memory_commits_are_non_durable_yet_read_at_once_and_reclaimed() {
        let store = Store::in_memory().unwrap();
        let run = ulid::Ulid(11);
        store.append_blocking(create_run(run)).unwrap();
        let allocated = || {
            let txn = store.raw_db().unwrap().begin_write().unwrap();
            let pages = txn.stats().unwrap().allocated_pages();
            txn.abort().unwrap();
            pages
        };
        let mut durable_commits = 0;
        let mut after_warm_up = 0;
        let statuses = [crate::RunStatus::Suspended, crate::RunStatus::Running];
        for i in 0..3_000u64 {
            // Every 10th request adds a record; the others rewrite the run's status only, so
            // the live data stays about the same size while pages keep being replaced.
            let mut req = if i % 10 == 0 {
                request(run, None, 1)
            } else {
                AppendRequest::default()
            };
            let status = statuses[(i % 2) as usize];
            req.index_updates.push(crate::IndexUpdate::SetRunStatus {
                run_id: run,
                status,
                at_ms: i as i64,
            });
            store.append_blocking(req).unwrap();
            // Reads see every acknowledged append at once.
            assert_eq!(store.last_seq(run).unwrap(), 2 + i / 10);
            assert_eq!(store.run(run).unwrap().unwrap().meta.status, status);
            let non_durable = store.shared().gate_for_test().non_durable;
            assert!(non_durable < writer::MEMORY_DURABLE_EVERY);
            if non_durable == 0 {
                durable_commits += 1;
            }
            if i == 500 {
                after_warm_up = allocated();
            }
        }
        assert_eq!(
            durable_commits,
            3_001 / u64::from(writer::MEMORY_DURABLE_EVERY),
            "one durable commit in MEMORY_DURABLE_EVERY"
        );
        assert_eq!(store.shared().paths_taken().0, 3_001, "all inline");
        let end = allocated();
        assert!(
            end <= after_warm_up + 16,
            "pages grew from {after_warm_up} to {end}"
        );
        assert_eq!(store.records(run, 1).unwrap().len() as u64, 2 + 2_999 / 10);
    }

    fn create_run(run: crate::RunId) -> AppendRequest {
        let mut create = request(run, Some(1), 1);
        create
            .index_updates
            .push(crate::IndexUpdate::CreateRun(crate::RunMeta {
                run_id: run,
                tenant: "t".into(),
                thread: "th".into(),
                agent: "a".into(),
                status: crate::RunStatus::Running,
                created_at_ms: 1,
                updated_at_ms: 1,
                parent: None,
            }));
        create
    }

    #[test]
    fn in_memory_appends_that_cannot_fail_are_acknowledged_before_their_commit_yet_read_in_order() {
        let store = Store::in_memory().unwrap();
        let run = ulid::Ulid(12);
        store.append_blocking(create_run(run)).unwrap();
        for i in 0..150u64 {
            let acked = store.append_blocking(request(run, Some(2 + 2 * i), 2));
            assert_eq!(acked.unwrap(), ack(2 + 2 * i, 3 + 2 * i));
        }
        // 150 appends waited at most MEMORY_DEFER_MAX at a time: two commits for them.
        let waiting = store.shared().deferred_for_test();
        assert_eq!(waiting, 150 % writer::MEMORY_DEFER_MAX);
        assert_eq!(store.shared().gate_for_test().non_durable, 3);

        // A request with something to check commits the waiting ones first, in order.
        let mut finish = request(run, Some(302), 1);
        finish.index_updates.push(crate::IndexUpdate::SetRunStatus {
            run_id: run,
            status: crate::RunStatus::Completed,
            at_ms: 2,
        });
        assert_eq!(store.append_blocking(finish).unwrap(), ack(302, 302));
        assert_eq!(store.shared().deferred_for_test(), 0);

        // A read commits what waits before it reads.
        assert_eq!(
            store.append_blocking(request(run, Some(303), 1)).unwrap(),
            ack(303, 303)
        );
        assert_eq!(store.shared().deferred_for_test(), 1);
        let seqs: Vec<u64> = store
            .records(run, 1)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs, (1..=303).collect::<Vec<_>>());
        assert_eq!(store.shared().deferred_for_test(), 0);
        assert_eq!(
            store.run(run).unwrap().unwrap().meta.status,
            crate::RunStatus::Completed
        );

        // Appends that could fail are checked at once, never deferred.
        let wrong_seq = store.append_blocking(request(run, Some(303), 1));
        assert!(
            matches!(
                wrong_seq,
                Err(StoreError::SeqConflict {
                    expected: 303,
                    actual: 304,
                    ..
                })
            ),
            "{wrong_seq:?}"
        );
        let unknown_run = store.append_blocking(request(ulid::Ulid(13), Some(5), 1));
        assert!(
            matches!(
                unknown_run,
                Err(StoreError::SeqConflict {
                    expected: 5,
                    actual: 1,
                    ..
                })
            ),
            "{unknown_run:?}"
        );
        assert_eq!(store.shared().deferred_for_test(), 0);

        // Closing commits what still waits (nothing is left to read it, but nothing fails).
        store.append_blocking(request(run, Some(304), 1)).unwrap();
        assert_eq!(store.shared().deferred_for_test(), 1);
        store.close().unwrap();
    }
}
