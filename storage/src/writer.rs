//! The group-commit writer: one OS thread per writable store that drains every queued request
//! into one write transaction, checks each request's precondition inside it, commits once and
//! then acknowledges every request of the batch.
//!
//! An appender that finds the store idle runs the same commit code on its own thread instead
//! (`Shared::enter_inline`, used by `Store::append`); [`Shared`] holds what the two paths
//! share: the gate that serializes them, the durability bookkeeping and the contention
//! heuristic.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{ReadableTable, Table, WriteTransaction};
use tokio::sync::oneshot;

use crate::StoreError;
use crate::keys::{
    self, JOURNAL_KEY_LEN, RUN_KEY_LEN, STATUS_KEY_LEN, approval_of_run_key, expiry_key,
    journal_key, memory_key, memory_prefix, ordered_i64, plan_key, reference_key, run_key,
    runs_by_tenant_key, runs_by_thread_key, status_key,
};
use crate::record;
use crate::tables::{self, ApprovalRowJson, PlanRowJson, ReferenceRowJson, RunRow};
use crate::types::{
    AppendAck, AppendRequest, ApprovalStatus, IndexUpdate, Precondition, RunId, RunStatus,
};

/// Most requests one transaction takes; the rest wait for the next one. Bounds the time a
/// caller waits behind others and the memory of one transaction.
pub(crate) const MAX_BATCH: usize = 1024;

/// How long an `eventual` store may hold acknowledged commits before an fsync.
pub(crate) const EVENTUAL_FLUSH: Duration = Duration::from_millis(100);

/// How long the writer, and a blocking appender, poll before they sleep (see `recv_spinning`).
pub(crate) const SPIN: Duration = Duration::from_micros(50);

/// Longest the writer waits for the previous batch's callers to come back (see `run`).
const MAX_LINGER: Duration = Duration::from_millis(1);

/// In memory, one commit in this many is durable. There is no crash to survive, but redb
/// keeps per-commit bookkeeping of non-durable commits (and the pages they freed from the
/// last durable state) until a durable commit: never committing durably grew the heap by
/// ~38 B per commit without bound (800k commits: 41 MB vs 12 MB). Measured with 4-record
/// ~2.5 KB commits: every commit durable ~25–33 µs; 1 in 16–128 durable 13–15 µs with the
/// heap flat; 1 in 256 or rarer lets the freed-but-unreclaimed pages grow the backend
/// (overwrite workload: 4.5 MB at 64, 18 MB at 1024). Growth is per commit, not per unit of
/// time, so a count is the right trigger.
pub(crate) const MEMORY_DURABLE_EVERY: u32 = 64;

/// A file store logging appends as journal frames (see [`Shared::commit`]) makes one
/// commit in this many durable anyway: redb keeps per-commit bookkeeping of non-durable
/// commits until a durable one (as in memory), and a durable commit bounds the frames a
/// restart replays. A durable commit costs ≈ 0.8 ms on the peers workload; one in 256
/// rather than 64 made its 100-step runs 0.279 against 0.297 ms per step and its
/// 1,000-step runs 0.299 against 0.308 (alternated, BENCHMARKS.md), with stores no larger.
pub(crate) const JOURNALED_DURABLE_EVERY: u32 = 256;

/// ... and sooner once the journal frames no durable commit covers yet pass this many
/// bytes: the log keeps them in memory until then (a checkpoint writes them again).
pub(crate) const JOURNALED_BYTES_MAX: usize = 4 << 20;

/// Single-request writer batches in a row (each finding nothing else queued) after which
/// appenders commit inline again (see [`Shared::enter_inline`]).
pub(crate) const CALM_BATCHES: u32 = 8;

/// In memory, the most appends acknowledged ahead of their commit (see
/// [`Shared::try_defer`]); the one that reaches it commits them all. A commit of that many
/// step-sized appends takes a few hundred microseconds; more would only lengthen the pause
/// of the step that pays for it.
pub(crate) const MEMORY_DEFER_MAX: usize = 64;

/// Where a reply goes: a tokio oneshot for async callers, a std channel for blocking ones (so
/// `append_blocking` never needs, or trips over, a tokio runtime).
pub(crate) enum Reply<T> {
    Async(oneshot::Sender<Result<T, StoreError>>),
    Blocking(SyncSender<Result<T, StoreError>>),
    /// An in-memory append acknowledged when it was deferred: nobody waits for this reply;
    /// the commit poisons the store if the request fails after all.
    Deferred,
}

impl<T> Reply<T> {
    fn send(self, result: Result<T, StoreError>) {
        // A caller that stopped waiting (dropped future) is not an error: its write stands.
        match self {
            Reply::Async(tx) => {
                let _ = tx.send(result);
            }
            Reply::Blocking(tx) => {
                let _ = tx.send(result);
            }
            Reply::Deferred => {}
        }
    }
}

pub(crate) enum Msg {
    Append(Box<AppendRequest>, Reply<AppendAck>),
    Gc(i64, Reply<usize>),
    /// An inline commit of an `eventual` store left the first unsynced commit: the writer
    /// re-reads the bookkeeping and arms its flush timer. Not counted in `Shared::queued`.
    Wake,
}

/// How a store's commits reach durability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Policy {
    /// Every commit `Immediate` (file store, `immediate`).
    Immediate,
    /// `None` commits, an `Immediate` one at least every [`EVENTUAL_FLUSH`] and at close.
    Eventual,
    /// In memory, `immediate`: nothing to fsync, so `None` commits and an `Immediate` one
    /// every [`MEMORY_DURABLE_EVERY`], only for redb's page reclamation. Appends always
    /// commit inline: there is no fsync for concurrent appenders to share.
    Memory,
}

/// The durability bookkeeping, behind [`Shared::gate`].
#[derive(Default)]
pub(crate) struct SyncState {
    /// `eventual`: when the oldest acknowledged commit that is not yet durable was made.
    pub(crate) unsynced_since: Option<Instant>,
    /// Non-durable commits since the last durable one.
    pub(crate) non_durable: u32,
    /// In memory: appends acknowledged and not yet committed, in the order they were
    /// acknowledged. Every commit writes them first (see [`Shared::try_defer`]).
    deferred: Vec<AppendRequest>,
    /// In memory: the last seq of every run, counting deferred appends. Only looked up.
    tails: HashMap<RunId, u64>,
    /// In memory: why a deferred append failed when it was finally committed; the store
    /// refuses everything afterwards rather than carry on without an acknowledged record.
    poisoned: Option<String>,
}

/// What the writer thread and inline committers of one store share.
pub(crate) struct Shared {
    policy: Policy,
    /// Held across every commit of appends and GCs, by the writer for a batch or by an
    /// appender for its inline commit, with the durability bookkeeping inside. redb
    /// serializes write transactions anyway; the gate adds the bookkeeping and lets an
    /// appender see (`try_lock`) that a commit is in progress.
    gate: Mutex<SyncState>,
    /// Requests sent to the writer and not yet committed (queued, or in the batch being
    /// committed).
    queued: AtomicUsize,
    /// Single-request writer batches in a row that found nothing else queued, capped at
    /// [`CALM_BATCHES`]; 0 whenever an appender met contention.
    calm: AtomicU32,
    /// Duration of the last commit, in microseconds (for callers deciding whether to poll).
    commit_micros: AtomicU64,
    /// Which path the commits took, for tests and debugging.
    inline_commits: AtomicU64,
    writer_batches: AtomicU64,
    largest_batch: AtomicUsize,
    /// Whether `SyncState::deferred` may be non-empty or the store is poisoned: readers
    /// look here, without the gate, before they read.
    unsettled: AtomicBool,
    /// The write-ahead log of a file store (not with `shared_reads`): batches of plain
    /// appends are logged there as journal frames instead of committed durably. Weak:
    /// redb's database owns the log, and closing it must close the files, not leave them
    /// (and a removed log's disk space) to whenever the last handle on the store goes.
    journal_log: std::sync::OnceLock<std::sync::Weak<crate::wal::WalBackend>>,
    /// Test hook: the next commit panics inside redb's part, as on a damaged page.
    #[cfg(test)]
    pub(crate) panic_in_next_commit: AtomicBool,
}

/// A batch's outcome, with the replies not yet sent: the writer sends them after it let go of
/// the gate and updated the counters, so that a caller woken by its reply never sees its own
/// request as queued or the gate as held (which it would take for contention).
#[must_use]
pub(crate) struct Committed {
    ok: bool,
    replies: Vec<Pending>,
    /// The duration of the commit, for the writer's linger.
    took: Duration,
    /// An `eventual` commit left the first unsynced state: the writer must arm its timer.
    pub(crate) arm_flush: bool,
    /// The batch's journal frame, when one was asked for.
    journal_frame: JournalFrame,
}

/// Where a batch's journal frame stands after [`run_batch`].
enum JournalFrame {
    /// None was asked for, or the batch wrote nothing.
    None,
    /// Written to the log before the redb commit; durable once synced.
    Written(crate::wal::UnsyncedFrame),
    /// Not written (larger than [`JOURNAL_FRAME_MAX`], it does not fit in the log, or
    /// building or writing it failed): the batch's own commit was made durable instead.
    Replaced,
}

impl Committed {
    /// Every request of `batch` failed with `err`, nothing committed.
    fn refused(batch: Vec<Msg>, err: &StoreError, label: &str) -> Committed {
        let mut replies = Vec::with_capacity(batch.len());
        fail_all(&mut replies, batch, err, label);
        Committed {
            ok: false,
            replies,
            took: Duration::ZERO,
            arm_flush: false,
            journal_frame: JournalFrame::None,
        }
    }

    pub(crate) fn deliver(self) {
        for p in self.replies {
            match p {
                Pending::Append(reply, result) => reply.send(result),
                Pending::Gc(reply, result) => reply.send(result),
            }
        }
    }
}

/// An append with nothing to check but its records' seqs: no precondition, no index
/// update, at least one record.
fn is_plain_append(req: &AppendRequest) -> bool {
    req.precondition == Precondition::None && req.index_updates.is_empty() && is_journaled(req)
}

/// Whether a journal frame can make `req` durable: it appends records, which tell a replay
/// whether the store already holds the frame (one frame is one transaction). Its checks
/// run in the transaction as for any commit, and its index updates ride in the frame.
fn is_journaled(req: &AppendRequest) -> bool {
    req.run.as_ref().is_some_and(|r| !r.records.is_empty())
}

/// Run id of a journal-frame entry that holds the index updates of the request whose
/// records come just before it: all ones, a ULID no clock reaches (year 10889). A build
/// that predates such entries takes it for a run whose records do not continue the store's
/// journal, and refuses the log rather than drop them.
const UPDATES_ENTRY: u128 = u128::MAX;

/// One entry of a journal frame's body: run id (16 bytes LE), first seq (u64 LE), record
/// count (u32 LE), then per record its encoded length (u32 LE) and bytes (as stored).
/// `records` are (seq, encoded record), consecutive.
fn push_journal_entry(
    body: &mut Vec<u8>,
    run: RunId,
    records: &[(u64, Vec<u8>)],
) -> Result<(), String> {
    let Some((first_seq, _)) = records.first() else {
        return Ok(());
    };
    push_entry(
        body,
        run.0,
        *first_seq,
        records.iter().map(|(_, bytes)| bytes.as_slice()),
    )
}

/// The entry holding one request's index updates (each as JSON), after its records.
fn push_updates_entry(body: &mut Vec<u8>, updates: &[Vec<u8>]) -> Result<(), String> {
    push_entry(body, UPDATES_ENTRY, 0, updates.iter().map(Vec::as_slice))
}

fn push_entry<'a>(
    body: &mut Vec<u8>,
    run: u128,
    first_seq: u64,
    items: impl ExactSizeIterator<Item = &'a [u8]>,
) -> Result<(), String> {
    body.extend_from_slice(&run.to_le_bytes());
    body.extend_from_slice(&first_seq.to_le_bytes());
    let count = u32::try_from(items.len()).map_err(|_| "too many records".to_owned())?;
    body.extend_from_slice(&count.to_le_bytes());
    for bytes in items {
        let len = u32::try_from(bytes.len()).map_err(|_| "record too large".to_owned())?;
        body.extend_from_slice(&len.to_le_bytes());
        body.extend_from_slice(bytes);
    }
    Ok(())
}

/// One entry of a journal frame's body.
pub(crate) enum JournalEntry<'a> {
    /// One request's appends: run, first seq, encoded records.
    Records(RunId, u64, Vec<&'a [u8]>),
    /// The index updates (JSON) of the request whose records come just before.
    Updates(Vec<&'a [u8]>),
}

pub(crate) fn decode_journal_body(body: &[u8]) -> Result<Vec<JournalEntry<'_>>, String> {
    fn take<'a>(body: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], String> {
        let bytes = body
            .get(*at..*at + n)
            .ok_or_else(|| format!("journal frame truncated at byte {at}"))?;
        *at += n;
        Ok(bytes)
    }
    let mut entries = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let mut run = [0u8; 16];
        run.copy_from_slice(take(body, &mut at, 16)?);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(take(body, &mut at, 8)?);
        let mut count = [0u8; 4];
        count.copy_from_slice(take(body, &mut at, 4)?);
        let mut records = Vec::new();
        for _ in 0..u32::from_le_bytes(count) {
            let mut len = [0u8; 4];
            len.copy_from_slice(take(body, &mut at, 4)?);
            records.push(take(body, &mut at, u32::from_le_bytes(len) as usize)?);
        }
        let run = u128::from_le_bytes(run);
        if run != UPDATES_ENTRY {
            entries.push(JournalEntry::Records(
                ulid::Ulid(run),
                u64::from_le_bytes(seq),
                records,
            ));
        } else if matches!(entries.last(), Some(JournalEntry::Records(..))) {
            entries.push(JournalEntry::Updates(records));
        } else {
            return Err(String::from(
                "journal frame has index updates that follow no records",
            ));
        }
    }
    Ok(entries)
}

fn poisoned_error(label: &str, reason: &str) -> StoreError {
    StoreError::CommitFailed {
        path: label.to_owned(),
        reason: format!("this store takes no more work after an earlier failure: {reason}"),
    }
}

fn lock_ignoring_poison<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub(crate) fn new(policy: Policy) -> Self {
        Shared {
            policy,
            gate: Mutex::new(SyncState::default()),
            queued: AtomicUsize::new(0),
            // A new store starts calm: a lone appender commits inline from its first append.
            calm: AtomicU32::new(CALM_BATCHES),
            commit_micros: AtomicU64::new(u64::MAX),
            inline_commits: AtomicU64::new(0),
            writer_batches: AtomicU64::new(0),
            largest_batch: AtomicUsize::new(0),
            unsettled: AtomicBool::new(false),
            journal_log: std::sync::OnceLock::new(),
            #[cfg(test)]
            panic_in_next_commit: AtomicBool::new(false),
        }
    }

    /// The error for a request whose reply never came because the store was poisoned (a
    /// commit that panicked drops its batch, and the replies with it); `None` if it was not.
    /// Takes the gate: the commit that dropped the reply poisons the store before letting
    /// go of it.
    pub(crate) fn poisoned_error(&self, label: &str) -> Option<StoreError> {
        lock_ignoring_poison(&self.gate)
            .poisoned
            .as_ref()
            .map(|reason| poisoned_error(label, reason))
    }

    /// Lets `immediate` commits of appends go to the store's write-ahead log as
    /// journal frames (see [`Shared::commit`]).
    pub(crate) fn set_journal_log(&self, wal: &Arc<crate::wal::WalBackend>) {
        let _ = self.journal_log.set(Arc::downgrade(wal));
    }

    /// The write-ahead log, while the database that owns it is open.
    fn journal_log(&self) -> Option<Arc<crate::wal::WalBackend>> {
        self.journal_log.get().and_then(std::sync::Weak::upgrade)
    }

    /// Inline commits, writer batches and the largest writer batch so far.
    #[cfg(test)]
    pub(crate) fn paths_taken(&self) -> (u64, u64, usize) {
        (
            self.inline_commits.load(Ordering::Relaxed),
            self.writer_batches.load(Ordering::Relaxed),
            self.largest_batch.load(Ordering::Relaxed),
        )
    }

    /// The gate and the bookkeeping behind it, as a test sees them.
    #[cfg(test)]
    pub(crate) fn gate_for_test(&self) -> MutexGuard<'_, SyncState> {
        self.gate()
    }

    #[cfg(test)]
    pub(crate) fn deferred_for_test(&self) -> usize {
        self.gate().deferred.len()
    }

    #[cfg(test)]
    pub(crate) fn queued_for_test(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    pub(crate) fn commit_micros(&self) -> u64 {
        self.commit_micros.load(Ordering::Relaxed)
    }

    /// Call before sending an `Append` or `Gc` to the writer.
    pub(crate) fn enqueued(&self) {
        self.queued.fetch_add(1, Ordering::SeqCst);
    }

    /// Call when a message counted by `enqueued` could not be sent.
    pub(crate) fn not_sent(&self) {
        self.queued.fetch_sub(1, Ordering::SeqCst);
    }

    fn contended(&self) {
        self.calm.store(0, Ordering::Relaxed);
    }

    /// A cheap first look, before any lock: whether an inline commit is worth trying.
    pub(crate) fn inline_likely(&self) -> bool {
        match self.policy {
            Policy::Memory => true,
            Policy::Immediate | Policy::Eventual => {
                if self.calm.load(Ordering::Relaxed) < CALM_BATCHES {
                    return false;
                }
                if self.queued.load(Ordering::SeqCst) > 0 {
                    self.contended();
                    return false;
                }
                true
            }
        }
    }

    /// The gate, for an appender to commit its own request inline; `None` when it should go
    /// through the writer instead.
    ///
    /// The heuristic: inline only when nothing is queued for the writer or being committed
    /// (`queued`), no commit holds the gate (`try_lock`), and no contention was seen since the
    /// writer last committed [`CALM_BATCHES`] single-request batches in a row. Meeting a queued
    /// request or a held gate is contention: it resets `calm`, so every appender goes to the
    /// writer, whose batches then share one fsync, until the writer sees the traffic thin out
    /// to one request at a time again. A lone appender therefore stays inline, and concurrent
    /// appenders stay on the writer: among them one batch of several requests is enough to
    /// reset `calm`, and while they are active some request is nearly always queued. The
    /// counters only choose the path; correctness rests on the gate and on redb, which
    /// serializes write transactions, with every check inside the transaction.
    ///
    /// In memory (`Policy::Memory`) this waits for the gate: no fsync to share.
    pub(crate) fn enter_inline(&self) -> Option<MutexGuard<'_, SyncState>> {
        let guard = self.enter_inline_inner()?;
        self.inline_commits.fetch_add(1, Ordering::Relaxed);
        Some(guard)
    }

    fn enter_inline_inner(&self) -> Option<MutexGuard<'_, SyncState>> {
        if self.policy == Policy::Memory {
            return Some(lock_ignoring_poison(&self.gate));
        }
        if !self.inline_likely() {
            return None;
        }
        let guard = match self.gate.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                self.contended();
                return None;
            }
        };
        // A request queued while the gate was being taken: this appender is not alone.
        if self.queued.load(Ordering::SeqCst) > 0 {
            self.contended();
            return None;
        }
        Some(guard)
    }

    /// Commits `batch` in one transaction under the gate (`state` is its guard), durably or
    /// not as the policy says, and updates the bookkeeping. The replies are not sent yet.
    /// Deferred in-memory appends are written first, ahead of `batch`, in their order.
    pub(crate) fn commit(
        &self,
        state: &mut SyncState,
        db: &redb::Database,
        batch: Vec<Msg>,
        label: &str,
    ) -> Committed {
        if let Some(reason) = &state.poisoned {
            return Committed::refused(batch, &poisoned_error(label, reason), label);
        }
        let batch = if state.deferred.is_empty() {
            batch
        } else {
            let deferred = std::mem::take(&mut state.deferred);
            deferred
                .into_iter()
                .map(|req| Msg::Append(Box::new(req), Reply::Deferred))
                .chain(batch)
                .collect()
        };
        // In memory, the run of each append, in batch order, to keep `tails` current.
        let runs: Vec<Option<RunId>> = if self.policy == Policy::Memory {
            batch
                .iter()
                .filter_map(|msg| match msg {
                    Msg::Append(req, _) => Some(req.run.as_ref().map(|r| r.run_id)),
                    Msg::Gc(..) | Msg::Wake => None,
                })
                .collect()
        } else {
            Vec::new()
        };
        // A file store's batch of appends that each write records (with their checks and
        // index updates: a run's start and end, an approval, a plan transition, a step)
        // commits without durability, then goes to the write-ahead log as one journal
        // frame and one fdatasync: a fraction of a durable redb commit's bytes and CPU. A
        // restart replays the frames after the last durable commit (FORMAT.md).
        let journal_log = self.journal_log().filter(|wal| {
            self.policy == Policy::Immediate
                && state.non_durable + 1 < JOURNALED_DURABLE_EVERY
                && wal.journal_bytes() < JOURNALED_BYTES_MAX
                && !batch.is_empty()
                && batch.iter().all(|msg| match msg {
                    Msg::Append(req, _) => is_journaled(req),
                    Msg::Gc(..) | Msg::Wake => false,
                })
        });
        let durable = match self.policy {
            Policy::Immediate => journal_log.is_none(),
            Policy::Eventual => state
                .unsynced_since
                .is_some_and(|since| since.elapsed() >= EVENTUAL_FLUSH),
            Policy::Memory => state.non_durable + 1 >= MEMORY_DURABLE_EVERY,
        };
        let started = Instant::now();
        // An all-failed batch writes nothing; its commit may be skipped unless it is the
        // one that must make earlier non-durable commits durable.
        let skippable = self.policy == Policy::Immediate || !durable;
        let mode = BatchMode {
            durable,
            skippable,
            journal: journal_log.as_deref(),
            // In memory there is no crash to recover from.
            record_allocator_state: durable && self.policy != Policy::Memory,
        };
        // redb panics on some damaged pages (FORMAT.md, "Records"). The batch, and with it
        // its replies, is lost then, and a journal frame may already be in the log: nothing
        // may follow it, so the store is poisoned, and the callers learn why from it.
        let batch_run = crate::store::inside_redb(|| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                #[cfg(test)]
                if self.panic_in_next_commit.swap(false, Ordering::AcqRel) {
                    panic!("injected: index out of range in a page");
                }
                run_batch(db, batch, mode, label)
            }))
        });
        let mut committed = match batch_run {
            Ok(committed) => committed,
            Err(panic) => {
                let err = crate::store::pages_panicked(label, "a commit".into(), panic.as_ref());
                tracing::error!(store = label, error = %err, "a commit panicked; the store refuses further work");
                state.poisoned = Some(err.to_string());
                self.unsettled.store(true, Ordering::Release);
                return Committed {
                    ok: false,
                    replies: Vec::new(),
                    took: started.elapsed(),
                    arm_flush: false,
                    journal_frame: JournalFrame::None,
                };
            }
        };
        committed.took = started.elapsed();
        self.commit_micros.store(
            u64::try_from(committed.took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let durable = durable || matches!(committed.journal_frame, JournalFrame::Replaced);
        if committed.ok {
            if durable {
                state.unsynced_since = None;
                state.non_durable = 0;
                if let Some(wal) = self.journal_log() {
                    wal.mark_durable();
                }
            } else {
                state.non_durable = state.non_durable.saturating_add(1);
                if self.policy == Policy::Eventual && state.unsynced_since.is_none() {
                    state.unsynced_since = Some(Instant::now());
                    committed.arm_flush = true;
                }
            }
        }
        if self.policy == Policy::Memory {
            self.track_memory_appends(state, &mut committed, &runs, label);
        }
        if journal_log.is_some() {
            self.settle_journal_frame(state, &mut committed, label);
        }
        committed
    }

    /// Makes a non-durable batch of appends durable: its journal frame, written before the
    /// redb commit, is synced. If the frame's fdatasync or the redb commit after it fails,
    /// the batch fails and the store is poisoned: its appends are visible in this process
    /// (or in the log) and must not be followed by others.
    fn settle_journal_frame(&self, state: &mut SyncState, committed: &mut Committed, label: &str) {
        let frame = std::mem::replace(&mut committed.journal_frame, JournalFrame::None);
        match frame {
            JournalFrame::None | JournalFrame::Replaced => {}
            // A failed fdatasync leaves the frame in doubt, with the log moved past it: a
            // durable commit written after it could be cut off from replay with it.
            JournalFrame::Written(frame) if committed.ok => {
                if let Err(e) = frame.sync() {
                    self.poison(
                        state,
                        committed,
                        label,
                        &format!("the journal frame could not be made durable ({e})"),
                    );
                }
            }
            // The frame's records are in the log but not in redb: nothing may follow them.
            JournalFrame::Written(_) => {
                self.poison(
                    state,
                    committed,
                    label,
                    "the redb commit after its journal frame failed",
                );
            }
        }
    }

    /// Fails the batch and every later request of the store with `reason`.
    fn poison(&self, state: &mut SyncState, committed: &mut Committed, label: &str, reason: &str) {
        let err = StoreError::CommitFailed {
            path: label.to_owned(),
            reason: reason.to_owned(),
        };
        fail_pending(&mut committed.replies, &err, label);
        committed.ok = false;
        state.poisoned = Some(err.to_string());
        self.unsettled.store(true, Ordering::Release);
    }

    /// A file store logging journal frames: one durable commit, so that closing can fold
    /// the log into the store file (redb's own closing commit is not seen here).
    pub(crate) fn make_journal_durable(&self, db: &redb::Database, label: &str) {
        let Some(wal) = self.journal_log() else {
            return;
        };
        let state = self.gate();
        if !wal.has_journal() {
            return;
        }
        if sync(db, label) {
            wal.mark_durable();
        }
        drop(state);
    }

    /// In memory, after a commit: records the last seq of every run appended to, and takes
    /// the replies of deferred appends out of the batch; one that failed poisons the store.
    fn track_memory_appends(
        &self,
        state: &mut SyncState,
        committed: &mut Committed,
        runs: &[Option<RunId>],
        label: &str,
    ) {
        let mut appends = runs.iter();
        let ok = committed.ok;
        committed.replies.retain(|pending| {
            let Pending::Append(reply, result) = pending else {
                return true;
            };
            let run = appends.next().copied().flatten();
            match result {
                Ok(ack) if ok => {
                    if let Some(run) = run
                        && ack.last_seq > 0
                    {
                        state.tails.insert(run, ack.last_seq);
                    }
                }
                // A batch that failed wrote nothing: its acks do not count.
                Ok(_) => {}
                Err(e) => {
                    if matches!(reply, Reply::Deferred) && state.poisoned.is_none() {
                        tracing::error!(store = label, error = %e, "an acknowledged in-memory append failed to commit; the store refuses further work");
                        state.poisoned = Some(e.to_string());
                    }
                }
            }
            if matches!(reply, Reply::Deferred) && !ok && state.poisoned.is_none() {
                state.poisoned = Some(String::from("the commit of acknowledged appends failed"));
            }
            !matches!(reply, Reply::Deferred)
        });
        self.unsettled
            .store(state.poisoned.is_some(), Ordering::Release);
    }

    /// In memory, acknowledges an append without committing it yet, when nothing it asks
    /// can fail: no precondition, no index update, and records that continue their run's
    /// journal exactly. Its commit comes with the next one, at the latest when a reader
    /// needs it ([`Shared::settle`]) or [`MEMORY_DEFER_MAX`] are waiting. There is no
    /// durability to lose in memory; what deferring keeps is every read seeing every
    /// acknowledged append, in order. `Err` gives the request back, to commit now.
    pub(crate) fn try_defer(
        &self,
        state: &mut SyncState,
        db: &redb::Database,
        req: Box<AppendRequest>,
        label: &str,
    ) -> Result<Result<AppendAck, StoreError>, Box<AppendRequest>> {
        if self.policy != Policy::Memory || state.poisoned.is_some() || !is_plain_append(&req) {
            return Err(req);
        }
        let Some(append) = &req.run else {
            return Err(req);
        };
        let (Some(first), Ok(count)) = (
            append.expected_first_seq,
            u64::try_from(append.records.len()),
        ) else {
            return Err(req);
        };
        if first == 0 || state.tails.get(&append.run_id) != Some(&(first - 1)) {
            // A new run, or one this store has not seen the tail of: check it properly.
            return Err(req);
        }
        let ack = AppendAck {
            first_seq: first,
            last_seq: first + count - 1,
        };
        state.tails.insert(append.run_id, ack.last_seq);
        state.deferred.push(*req);
        self.unsettled.store(true, Ordering::Release);
        if state.deferred.len() >= MEMORY_DEFER_MAX {
            let committed = self.commit(state, db, Vec::new(), label);
            committed.deliver();
            if let Some(reason) = &state.poisoned {
                return Ok(Err(poisoned_error(label, reason)));
            }
        }
        Ok(Ok(ack))
    }

    /// Commits the deferred in-memory appends, if any, so that a read sees them; fails if
    /// the store is poisoned. Cheap (one atomic load) when there is nothing to do.
    pub(crate) fn settle(&self, db: &redb::Database, label: &str) -> Result<(), StoreError> {
        if !self.unsettled.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut state = self.gate();
        self.settle_locked(&mut state, db, label)
    }

    /// [`Shared::settle`] for a caller that holds the gate.
    pub(crate) fn settle_locked(
        &self,
        state: &mut SyncState,
        db: &redb::Database,
        label: &str,
    ) -> Result<(), StoreError> {
        if !state.deferred.is_empty() {
            self.commit(state, db, Vec::new(), label).deliver();
        }
        match &state.poisoned {
            Some(reason) => Err(poisoned_error(label, reason)),
            None => Ok(()),
        }
    }

    /// The writer committed a batch of `n` counted requests.
    fn batch_done(&self, n: usize) {
        self.writer_batches.fetch_add(1, Ordering::Relaxed);
        self.largest_batch.fetch_max(n, Ordering::Relaxed);
        let before = self.queued.fetch_sub(n, Ordering::SeqCst);
        if n == 1 && before == 1 {
            let _ = self
                .calm
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                    Some(c.saturating_add(1).min(CALM_BATCHES))
                });
        } else {
            self.contended();
        }
    }

    pub(crate) fn gate(&self) -> MutexGuard<'_, SyncState> {
        lock_ignoring_poison(&self.gate)
    }

    /// `eventual`: makes every commit durable if the oldest unsynced one is due (or `always`).
    fn flush(&self, db: &redb::Database, label: &str, always: bool) {
        let mut state = self.gate();
        let due = state
            .unsynced_since
            .is_some_and(|since| always || since.elapsed() >= EVENTUAL_FLUSH);
        if due {
            // On failure, try again one period later rather than spin.
            state.unsynced_since = if sync(db, label) {
                state.non_durable = 0;
                None
            } else {
                Some(Instant::now())
            };
        }
    }
}

/// Starts the writer thread. It stops, after draining and a final durable commit, when every
/// sender of `rx` is gone.
pub(crate) fn spawn(
    db: Arc<redb::Database>,
    rx: Receiver<Msg>,
    label: String,
    shared: Arc<Shared>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("flowai-store-writer".into())
        .spawn(move || run(&db, &rx, &label, &shared))
}

fn run(db: &redb::Database, rx: &Receiver<Msg>, label: &str, shared: &Shared) {
    // Size and commit time of the previous batch: its callers are likely to come back with
    // their next request right after their acknowledgement.
    let mut last_batch = 0usize;
    let mut last_commit = Duration::ZERO;
    loop {
        // Only `eventual` stores ever have unsynced commits.
        let unsynced_since = match shared.policy {
            Policy::Eventual => shared.gate().unsynced_since,
            Policy::Immediate | Policy::Memory => None,
        };
        let first = match unsynced_since {
            None => match recv_spinning(rx, SPIN) {
                Some(msg) => msg,
                None => break,
            },
            Some(since) => {
                let wait = (since + EVENTUAL_FLUSH).saturating_duration_since(Instant::now());
                match rx.recv_timeout(wait) {
                    Ok(msg) => msg,
                    Err(RecvTimeoutError::Timeout) => {
                        shared.flush(db, label, false);
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        };
        let mut batch = Vec::with_capacity(last_batch.max(16));
        if !matches!(first, Msg::Wake) {
            batch.push(first);
        }
        drain(rx, &mut batch);
        if batch.is_empty() {
            // Only wake-ups: look at the bookkeeping again.
            continue;
        }
        // Without this, N appenders that each wait for their ack split into a small batch
        // (the first few back) and a large one (the rest, queued during that commit), halving
        // throughput. Waiting for the previous batch's callers, bounded by a quarter of a
        // commit, keeps them in one batch; a lone appender (last_batch = 1) never waits.
        let target = last_batch.min(MAX_BATCH);
        if batch.len() < target {
            let deadline = Instant::now() + (last_commit / 4).min(MAX_LINGER);
            while batch.len() < target {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match rx.recv_timeout(left) {
                    Ok(msg) => {
                        if !matches!(msg, Msg::Wake) {
                            batch.push(msg);
                        }
                        drain(rx, &mut batch);
                    }
                    Err(_) => break,
                }
            }
        }
        let committed = {
            let mut state = shared.gate();
            // An inline commit may have held the gate: take what queued meanwhile too.
            drain(rx, &mut batch);
            shared.commit(&mut state, db, std::mem::take(&mut batch), label)
        };
        // The batch was moved into the commit; its size is the number of replies.
        let n = committed.replies.len();
        last_batch = n;
        last_commit = committed.took;
        shared.batch_done(n);
        committed.deliver();
    }
    shared.flush(db, label, true);
}

/// Receives, polling for up to `spin` before sleeping: waking a parked thread costs tens of
/// microseconds on a virtual machine, more than an in-memory commit, and an appender usually
/// sends its next request within microseconds of its acknowledgement. `None` when every
/// sender is gone.
pub(crate) fn recv_spinning<T>(rx: &Receiver<T>, spin: Duration) -> Option<T> {
    let start = Instant::now();
    loop {
        match rx.try_recv() {
            Ok(msg) => return Some(msg),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) => {}
        }
        if start.elapsed() >= spin {
            return rx.recv().ok();
        }
        std::thread::yield_now();
    }
}

/// Takes what is queued, up to [`MAX_BATCH`], leaving out wake-ups.
fn drain(rx: &Receiver<Msg>, batch: &mut Vec<Msg>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(Msg::Wake) => {}
            Ok(msg) => batch.push(msg),
            Err(_) => break,
        }
    }
}

/// Has a durable commit record redb's allocator state (redb's quick repair, which commits
/// in two phases): after a crash, a writer's open loads that state instead of walking every
/// table to rebuild it, which took ≈ 0.8 ms per MB of store here (BENCHMARKS.md). The price
/// is a second fdatasync per durable commit: the open's, one commit in 256, and a batch that
/// cannot go to a journal frame.
pub(crate) fn record_allocator_state(txn: &mut redb::WriteTransaction) {
    txn.set_quick_repair(true);
}

/// An empty commit with `Immediate` durability: makes every earlier non-durable commit durable.
fn sync(db: &redb::Database, label: &str) -> bool {
    let result = db
        .begin_write()
        .map_err(redb::Error::from)
        .and_then(|mut txn| {
            record_allocator_state(&mut txn);
            txn.commit().map_err(redb::Error::from)
        });
    match result {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(store = label, error = %e, "periodic durable commit failed; will retry");
            false
        }
    }
}

enum Pending {
    Append(Reply<AppendAck>, Result<AppendAck, StoreError>),
    Gc(Reply<usize>, Result<usize, StoreError>),
}

/// Runs one batch in one transaction and sends the replies. Returns whether it committed.
#[cfg(test)]
pub(crate) fn commit_batch(
    db: &redb::Database,
    batch: Vec<Msg>,
    durable: bool,
    label: &str,
) -> bool {
    let committed = run_batch(db, batch, BatchMode::without_journal(durable, false), label);
    let ok = committed.ok;
    committed.deliver();
    ok
}

/// How [`run_batch`] commits.
#[derive(Clone, Copy)]
struct BatchMode<'a> {
    durable: bool,
    /// Abort instead of committing when every request failed its checks.
    skippable: bool,
    /// The log to write a journal frame of the batch's appends to, before the redb
    /// commit (see `Shared::settle_journal_frame`).
    journal: Option<&'a crate::wal::WalBackend>,
    /// See [`record_allocator_state`].
    record_allocator_state: bool,
}

impl BatchMode<'_> {
    #[cfg(test)]
    fn without_journal(durable: bool, skippable: bool) -> BatchMode<'static> {
        BatchMode {
            durable,
            skippable,
            journal: None,
            record_allocator_state: false,
        }
    }
}

/// Runs one batch in one transaction; the replies are returned, not sent. With
/// `skip_if_nothing_written`, a batch whose every request failed its checks is aborted
/// instead of committed (an empty commit would still cost an fsync), and `ok` stays false.
fn run_batch(db: &redb::Database, batch: Vec<Msg>, mode: BatchMode, label: &str) -> Committed {
    let BatchMode {
        durable,
        skippable: skip_if_nothing_written,
        journal,
        record_allocator_state: record_state,
    } = mode;
    let mut committed = Committed {
        ok: false,
        replies: Vec::with_capacity(batch.len()),
        took: Duration::ZERO,
        arm_flush: false,
        journal_frame: JournalFrame::None,
    };
    let mut txn = match db.begin_write() {
        Ok(txn) => txn,
        Err(e) => {
            fail_all(
                &mut committed.replies,
                batch,
                &StoreError::db(label, e),
                label,
            );
            return committed;
        }
    };
    if record_state {
        record_allocator_state(&mut txn);
    }
    if !durable && let Err(e) = txn.set_durability(redb::Durability::None) {
        // Refused in the shared-reads mode; the store downgrades `eventual` there, so this is
        // only a safety net: commit durably instead.
        tracing::warn!(store = label, error = %e, "non-durable commit refused; committing durably");
    }
    let pending = &mut committed.replies;
    let mut remaining = batch.into_iter();
    let mut wrote = false;
    let fatal = {
        let mut w = Writes::new(&txn, label);
        if journal.is_some() {
            w.journal_frame = Some(Ok(Vec::new()));
        }
        let mut fatal = None;
        for msg in remaining.by_ref() {
            match msg {
                Msg::Append(req, reply) => match w.append(*req) {
                    Ok(result) => {
                        wrote |= result.is_ok();
                        pending.push(Pending::Append(reply, result));
                    }
                    Err(e) => {
                        pending.push(Pending::Append(reply, Err(e.for_batch(label))));
                        fatal = Some(e);
                        break;
                    }
                },
                Msg::Gc(now, reply) => match w.gc(now) {
                    Ok(n) => {
                        // A sweep that found nothing expired (every runtime's first run
                        // asks for one) commits nothing: no durable commit beside the run's
                        // start.
                        wrote |= n > 0;
                        pending.push(Pending::Gc(reply, Ok(n)));
                    }
                    Err(e) => {
                        pending.push(Pending::Gc(reply, Err(e.for_batch(label))));
                        fatal = Some(e);
                        break;
                    }
                },
                // A wake-up asks for the commit itself (`eventual`'s durable flush).
                Msg::Wake => wrote = true,
            }
        }
        let body = w.journal_frame.take();
        if let Some(wal) = journal
            && fatal.is_none()
            && (wrote || !skip_if_nothing_written)
        {
            committed.journal_frame = write_journal_frame(wal, body, label);
        }
        fatal
    };
    if matches!(committed.journal_frame, JournalFrame::Replaced) {
        if let Err(e) = txn.set_durability(redb::Durability::Immediate) {
            tracing::warn!(store = label, error = %e, "durable commit refused");
        }
        record_allocator_state(&mut txn);
    }
    if let Some(err) = fatal {
        // A storage error part way through leaves the transaction unusable: abort it and fail
        // every request of the batch, including those not reached yet.
        let _ = txn.abort();
        fail_pending(pending, &err, label);
        fail_all(pending, remaining.collect(), &err, label);
        return committed;
    }
    if skip_if_nothing_written && !wrote {
        let _ = txn.abort();
        return committed;
    }
    match txn.commit() {
        Ok(()) => committed.ok = true,
        Err(e) => {
            let err = StoreError::db(label, e);
            fail_pending(pending, &err, label);
        }
    }
    committed
}

/// The largest journal frame body a batch is logged with; a larger batch commits durably
/// instead. A frame's bytes are written twice, in the frame and later by the durable commit
/// that covers it, which only the fdatasyncs the frame saves pay for. Measured
/// (BENCHMARKS.md): a run whose 435 KB start went to a frame saved 0.4 ms there and added
/// 1.5 ms to the durable commit 64 steps later, while 64 appenders' 70 KB batches commit at
/// 0.83-0.96x bare redb's rate as frames and 0.41-0.45x as durable commits.
const JOURNAL_FRAME_MAX: usize = 256 << 10;

/// Writes a batch's journal frame (`body`, as [`Writes`] built it) to the log, now, so
/// that its writeback runs during the redb commit; `Replaced` when the batch must commit
/// durably instead.
fn write_journal_frame(
    wal: &crate::wal::WalBackend,
    body: Option<Result<Vec<u8>, String>>,
    label: &str,
) -> JournalFrame {
    let failed = |why: &str| {
        tracing::warn!(
            store = label,
            error = why,
            "no journal frame; committing durably"
        );
        JournalFrame::Replaced
    };
    match body {
        Some(Ok(body)) if body.len() > JOURNAL_FRAME_MAX => JournalFrame::Replaced,
        Some(Ok(body)) => match wal.write_journal(&body) {
            Ok(Some(frame)) => JournalFrame::Written(frame),
            // It does not fit in the log.
            Ok(None) => JournalFrame::Replaced,
            Err(e) => failed(&e.to_string()),
        },
        Some(Err(why)) => failed(&why),
        None => failed("no journal frame was made"),
    }
}

/// Turns every reply of the batch so far into the batch's failure.
fn fail_pending(pending: &mut [Pending], err: &StoreError, label: &str) {
    tracing::error!(store = label, error = %err, "write transaction failed");
    for p in pending {
        match p {
            Pending::Append(_, result) => *result = Err(err.for_batch(label)),
            Pending::Gc(_, result) => *result = Err(err.for_batch(label)),
        }
    }
}

/// Adds a failure reply for every request of `batch`.
fn fail_all(pending: &mut Vec<Pending>, batch: Vec<Msg>, err: &StoreError, label: &str) {
    for msg in batch {
        match msg {
            Msg::Append(_, reply) => {
                pending.push(Pending::Append(reply, Err(err.for_batch(label))))
            }
            Msg::Gc(_, reply) => pending.push(Pending::Gc(reply, Err(err.for_batch(label)))),
            Msg::Wake => {}
        }
    }
}

/// Outcome of one request: the outer error fails the whole batch (storage), the inner one
/// only this request (a check that did not hold).
type Outcome<T> = Result<Result<T, StoreError>, StoreError>;

type JournalTable<'t> = Table<'t, &'static [u8; JOURNAL_KEY_LEN], &'static [u8]>;
type RunsTable<'t> = Table<'t, &'static [u8; RUN_KEY_LEN], &'static [u8]>;
type BytesIndex<'t> = Table<'t, &'static [u8], ()>;
type BytesRows<'t> = Table<'t, &'static [u8], &'static [u8]>;

/// The tables of one write transaction, opened on first use: a plain append touches only
/// the journal (and the runs row when it creates a run).
pub(crate) struct Writes<'t> {
    txn: &'t WriteTransaction,
    label: &'t str,
    journal: Option<JournalTable<'t>>,
    runs: Option<RunsTable<'t>>,
    runs_by_tenant: Option<BytesIndex<'t>>,
    runs_by_thread: Option<BytesIndex<'t>>,
    runs_by_status: Option<Table<'t, &'static [u8; STATUS_KEY_LEN], ()>>,
    approvals: Option<Table<'t, &'static str, &'static [u8]>>,
    approvals_by_run: Option<BytesIndex<'t>>,
    plans: Option<BytesRows<'t>>,
    specs: Option<Table<'t, &'static str, &'static str>>,
    memory: Option<Table<'t, &'static [u8], &'static str>>,
    references: Option<BytesRows<'t>>,
    reference_expiry: Option<BytesIndex<'t>>,
    /// Last seq per run as of the writes so far in this transaction.
    last_seqs: HashMap<RunId, u64>,
    /// When set, every successful append adds its encoded records here: the body of the
    /// journal frame for these writes (`Err` if one could not be described).
    journal_frame: Option<Result<Vec<u8>, String>>,
}

macro_rules! table_getter {
    ($name:ident, $def:expr, $k:ty, $v:ty) => {
        fn $name(&mut self) -> Result<&mut Table<'t, $k, $v>, StoreError> {
            let table = match self.$name.take() {
                Some(table) => table,
                None => self
                    .txn
                    .open_table($def)
                    .map_err(|e| StoreError::db(self.label, e))?,
            };
            Ok(self.$name.insert(table))
        }
    };
}

impl<'t> Writes<'t> {
    pub(crate) fn new(txn: &'t WriteTransaction, label: &'t str) -> Self {
        Writes {
            txn,
            label,
            journal: None,
            runs: None,
            runs_by_tenant: None,
            runs_by_thread: None,
            runs_by_status: None,
            approvals: None,
            approvals_by_run: None,
            plans: None,
            specs: None,
            memory: None,
            references: None,
            reference_expiry: None,
            last_seqs: HashMap::new(),
            journal_frame: None,
        }
    }

    table_getter!(
        journal,
        tables::JOURNAL,
        &'static [u8; JOURNAL_KEY_LEN],
        &'static [u8]
    );
    table_getter!(
        runs,
        tables::RUNS,
        &'static [u8; RUN_KEY_LEN],
        &'static [u8]
    );
    table_getter!(runs_by_tenant, tables::RUNS_BY_TENANT, &'static [u8], ());
    table_getter!(runs_by_thread, tables::RUNS_BY_THREAD, &'static [u8], ());
    table_getter!(
        runs_by_status,
        tables::RUNS_BY_STATUS,
        &'static [u8; STATUS_KEY_LEN],
        ()
    );
    table_getter!(approvals, tables::APPROVALS, &'static str, &'static [u8]);
    table_getter!(
        approvals_by_run,
        tables::APPROVALS_BY_RUN,
        &'static [u8],
        ()
    );
    table_getter!(plans, tables::PLANS, &'static [u8], &'static [u8]);
    table_getter!(specs, tables::SPECS, &'static str, &'static str);
    table_getter!(memory, tables::MEMORY, &'static [u8], &'static str);
    table_getter!(references, tables::REFERENCES, &'static [u8], &'static [u8]);
    table_getter!(
        reference_expiry,
        tables::REFERENCE_EXPIRY,
        &'static [u8],
        ()
    );

    fn last_seq(&mut self, run: RunId) -> Result<u64, StoreError> {
        if let Some(seq) = self.last_seqs.get(&run) {
            return Ok(*seq);
        }
        let label = self.label;
        let journal = self.journal()?;
        let seq = crate::read::last_seq_in(journal, run).map_err(|e| StoreError::db(label, e))?;
        self.last_seqs.insert(run, seq);
        Ok(seq)
    }

    fn run_row(&mut self, run: RunId) -> Result<Result<Option<RunRow>, StoreError>, StoreError> {
        let label = self.label;
        let runs = self.runs()?;
        let guard = runs
            .get(&run_key(run))
            .map_err(|e| StoreError::db(label, e))?;
        Ok(match guard {
            None => Ok(None),
            Some(g) => tables::from_json::<RunRow>(g.value())
                .map(Some)
                .map_err(|e| StoreError::corrupt(label, format!("runs row of run {run}"), e)),
        })
    }

    fn approval_row(
        &mut self,
        id: &str,
    ) -> Result<Result<Option<ApprovalRowJson>, StoreError>, StoreError> {
        let label = self.label;
        let approvals = self.approvals()?;
        let guard = approvals.get(id).map_err(|e| StoreError::db(label, e))?;
        Ok(match guard {
            None => Ok(None),
            Some(g) => tables::from_json::<ApprovalRowJson>(g.value())
                .map(Some)
                .map_err(|e| StoreError::corrupt(label, format!("approvals row {id:?}"), e)),
        })
    }

    fn plan_row(
        &mut self,
        tenant: &str,
        plan_id: &str,
    ) -> Result<Result<Option<PlanRowJson>, StoreError>, StoreError> {
        let label = self.label;
        let plans = self.plans()?;
        let guard = plans
            .get(plan_key(tenant, plan_id).as_slice())
            .map_err(|e| StoreError::db(label, e))?;
        Ok(match guard {
            None => Ok(None),
            Some(g) => tables::from_json::<PlanRowJson>(g.value())
                .map(Some)
                .map_err(|e| {
                    StoreError::corrupt(
                        label,
                        format!("plans row {plan_id:?} of tenant {tenant:?}"),
                        e,
                    )
                }),
        })
    }

    /// Checks then applies one request. Nothing of the request is written unless every check
    /// passed, so a failed request leaves the transaction as it found it.
    pub(crate) fn append(&mut self, req: AppendRequest) -> Outcome<AppendAck> {
        let AppendRequest {
            run,
            index_updates,
            precondition,
        } = req;

        if let Err(e) = self.check_precondition(&precondition)? {
            return Ok(Err(e));
        }

        // Encode and number the records before writing anything.
        let mut encoded = Vec::new();
        let mut ack = AppendAck::default();
        let mut run_id = None;
        if let Some(append) = run {
            let last = self.last_seq(append.run_id)?;
            let first = last + 1;
            if let Some(expected) = append.expected_first_seq
                && expected != first
            {
                return Ok(Err(StoreError::SeqConflict {
                    run: append.run_id,
                    expected,
                    actual: first,
                }));
            }
            encoded.reserve(append.records.len());
            for (i, rec) in append.records.into_iter().enumerate() {
                let seq = first + i as u64;
                match record::encode(rec) {
                    Ok(bytes) => encoded.push((seq, bytes)),
                    Err(e) => {
                        return Ok(Err(StoreError::InvalidInput {
                            what: format!("record seq {seq} of run {}: {e}", append.run_id),
                        }));
                    }
                }
            }
            if let Some((last_seq, _)) = encoded.last() {
                ack = AppendAck {
                    first_seq: first,
                    last_seq: *last_seq,
                };
            }
            run_id = Some(append.run_id);
        }

        if let Err(e) = self.check_updates(&index_updates)? {
            return Ok(Err(e));
        }

        // Every check passed: from here on only storage errors can happen, and they fail the
        // whole batch.
        if let Some(run) = run_id {
            let label = self.label;
            let journal = self.journal()?;
            for (seq, bytes) in &encoded {
                journal
                    .insert(&journal_key(run, *seq), bytes.as_slice())
                    .map_err(|e| StoreError::db(label, e))?;
            }
            if ack.last_seq > 0 {
                self.last_seqs.insert(run, ack.last_seq);
            }
            if let Some(Ok(body)) = &mut self.journal_frame
                && let Err(e) = push_journal_entry(body, run, &encoded)
            {
                self.journal_frame = Some(Err(e));
            }
        }
        let journaling = !encoded.is_empty() && matches!(self.journal_frame, Some(Ok(_)));
        let mut logged = Vec::new();
        for update in index_updates {
            if self.is_known_spec(&update)? {
                continue;
            }
            if journaling {
                match serde_json::to_vec(&update) {
                    Ok(json) => logged.push(json),
                    Err(e) => self.journal_frame = Some(Err(format!("index update: {e}"))),
                }
            }
            self.apply_update(update)?;
        }
        if !logged.is_empty()
            && let Some(Ok(body)) = &mut self.journal_frame
            && let Err(e) = push_updates_entry(body, &logged)
        {
            self.journal_frame = Some(Err(e));
        }
        Ok(Ok(ack))
    }

    /// A spec the store holds already (most runs' start): storing it again changes nothing,
    /// so it is neither applied nor carried in a journal frame.
    fn is_known_spec(&mut self, update: &IndexUpdate) -> Result<bool, StoreError> {
        let IndexUpdate::PutSpec { hash, .. } = update else {
            return Ok(false);
        };
        let label = self.label;
        Ok(self
            .specs()?
            .get(hash.as_str())
            .map_err(|e| StoreError::db(label, e))?
            .is_some())
    }

    /// Writes the appends of a journal frame found after the last durable commit (see
    /// `Shared::settle_journal_frame`). Each must continue its run's journal exactly.
    pub(crate) fn replay_journal_frame(&mut self, body: &[u8]) -> Result<usize, StoreError> {
        let label = self.label;
        let entries = decode_journal_body(body)
            .map_err(|e| StoreError::corrupt(label, "write-ahead log journal frame", e))?;
        let mut written = 0;
        // Whether the store held the records of the request an updates entry belongs to
        // (and with them its updates: one frame is one transaction).
        let mut held = false;
        for entry in entries {
            let (run, first_seq, records) = match entry {
                JournalEntry::Records(run, first_seq, records) => (run, first_seq, records),
                JournalEntry::Updates(updates) => {
                    if !held {
                        for json in updates {
                            let update =
                                serde_json::from_slice::<IndexUpdate>(json).map_err(|e| {
                                    StoreError::corrupt(label, "index update of a journal frame", e)
                                })?;
                            self.apply_update(update)?;
                        }
                    }
                    continue;
                }
            };
            let last = self.last_seq(run)?;
            let count = records.len() as u64;
            // A frame the durable state already holds (one request commits whole).
            held = count > 0 && first_seq + count - 1 <= last;
            if held {
                continue;
            }
            if first_seq != last + 1 {
                return Err(StoreError::corrupt(
                    label,
                    format!("write-ahead log journal frame for run {run}"),
                    format!("records from seq {first_seq} follow seq {last} in the store"),
                ));
            }
            for (i, bytes) in records.iter().enumerate() {
                record::decode(bytes).map_err(|e| {
                    StoreError::corrupt(label, format!("journal frame record of run {run}"), e)
                })?;
                let journal = self.journal()?;
                journal
                    .insert(&journal_key(run, first_seq + i as u64), *bytes)
                    .map_err(|e| StoreError::db(label, e))?;
                written += 1;
            }
            if !records.is_empty() {
                self.last_seqs
                    .insert(run, first_seq + records.len() as u64 - 1);
            }
        }
        Ok(written)
    }

    fn check_precondition(&mut self, pre: &Precondition) -> Outcome<()> {
        match pre {
            Precondition::None => Ok(Ok(())),
            Precondition::RunAbsent(run) => {
                let row = match self.run_row(*run)? {
                    Ok(row) => row,
                    Err(e) => return Ok(Err(e)),
                };
                if row.is_some() || self.last_seq(*run)? > 0 {
                    Ok(Err(StoreError::RunExists { run: *run }))
                } else {
                    Ok(Ok(()))
                }
            }
            Precondition::RunStatusIn(run, allowed) => {
                let expected = allowed
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                Ok(match self.run_row(*run)? {
                    Err(e) => Err(e),
                    Ok(None) => Err(StoreError::PreconditionFailed {
                        what: format!("run {run} does not exist (expected status in [{expected}])"),
                    }),
                    Ok(Some(row)) if allowed.contains(&row.status) => Ok(()),
                    Ok(Some(row)) => Err(StoreError::PreconditionFailed {
                        what: format!(
                            "run {run} is {}, expected status in [{expected}]",
                            row.status
                        ),
                    }),
                })
            }
            Precondition::ApprovalPending(id) => Ok(match self.approval_row(id)? {
                Err(e) => Err(e),
                Ok(None) => Err(StoreError::PreconditionFailed {
                    what: format!("approval {id:?} does not exist"),
                }),
                Ok(Some(row)) if row.status == ApprovalStatus::Pending => Ok(()),
                Ok(Some(row)) => Err(StoreError::PreconditionFailed {
                    what: format!("approval {id:?} is {}, not pending", row.status),
                }),
            }),
            Precondition::PlanStatusIn {
                tenant,
                plan_id,
                statuses,
            } => {
                let expected = statuses.join(", ");
                Ok(match self.plan_row(tenant, plan_id)? {
                    Err(e) => Err(e),
                    Ok(None) => Err(StoreError::PreconditionFailed {
                        what: format!(
                            "plan {plan_id:?} of tenant {tenant:?} does not exist (expected status in [{expected}])"
                        ),
                    }),
                    Ok(Some(row)) if statuses.contains(&row.status) => Ok(()),
                    Ok(Some(row)) => Err(StoreError::PreconditionFailed {
                        what: format!(
                            "plan {plan_id:?} of tenant {tenant:?} is {}, expected status in [{expected}]",
                            row.status
                        ),
                    }),
                })
            }
        }
    }

    /// The requirements of index updates (rows they change must exist, a created run must
    /// not), taking earlier updates of the same request into account.
    fn check_updates(&mut self, updates: &[IndexUpdate]) -> Outcome<()> {
        let mut created_runs = HashSet::new();
        let mut put_approvals = HashSet::new();
        for update in updates {
            match update {
                IndexUpdate::CreateRun(meta) => {
                    let exists = match self.run_row(meta.run_id)? {
                        Ok(row) => row.is_some(),
                        Err(e) => return Ok(Err(e)),
                    };
                    if exists || !created_runs.insert(meta.run_id) {
                        return Ok(Err(StoreError::RunExists { run: meta.run_id }));
                    }
                }
                IndexUpdate::SetRunStatus { run_id, status, .. } => {
                    if let Err(e) = self.check_run_exists(&created_runs, *run_id, || {
                        format!("cannot set run {run_id} to {status}")
                    })? {
                        return Ok(Err(e));
                    }
                }
                IndexUpdate::RequestCancel { run_id, .. } => {
                    if let Err(e) = self.check_run_exists(&created_runs, *run_id, || {
                        format!("cannot record a cancellation request for run {run_id}")
                    })? {
                        return Ok(Err(e));
                    }
                }
                IndexUpdate::PutApproval(row) => {
                    put_approvals.insert(row.id.clone());
                }
                IndexUpdate::SetApprovalStatus { id, status } => {
                    if !put_approvals.contains(id) {
                        match self.approval_row(id)? {
                            Ok(Some(_)) => {}
                            Ok(None) => {
                                return Ok(Err(StoreError::PreconditionFailed {
                                    what: format!(
                                        "cannot set approval {id:?} to {status}: the approval does not exist"
                                    ),
                                }));
                            }
                            Err(e) => return Ok(Err(e)),
                        }
                    }
                }
                IndexUpdate::PutPlan(_)
                | IndexUpdate::PutSpec { .. }
                | IndexUpdate::AppendMemory { .. }
                | IndexUpdate::PutReference(_) => {}
            }
        }
        Ok(Ok(()))
    }

    /// `Ok(Err(PreconditionFailed))`, saying `what` could not be done, unless the run has a
    /// row or was created earlier in the request.
    fn check_run_exists(
        &mut self,
        created_runs: &HashSet<RunId>,
        run_id: RunId,
        what: impl FnOnce() -> String,
    ) -> Outcome<()> {
        if created_runs.contains(&run_id) {
            return Ok(Ok(()));
        }
        Ok(match self.run_row(run_id)? {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(StoreError::PreconditionFailed {
                what: format!("{}: the run does not exist", what()),
            }),
            Err(e) => Err(e),
        })
    }

    pub(crate) fn apply_update(&mut self, update: IndexUpdate) -> Result<(), StoreError> {
        let label = self.label;
        let db = move |e: redb::StorageError| StoreError::db(label, e);
        match update {
            IndexUpdate::CreateRun(meta) => {
                let row = tables::to_json(&RunRow::from_meta(&meta));
                self.runs()?
                    .insert(&run_key(meta.run_id), row.as_slice())
                    .map_err(db)?;
                self.journal()?
                    .insert(&journal_key(meta.run_id, keys::RUN_SENTINEL_SEQ), &[][..])
                    .map_err(db)?;
                self.index_run(meta.run_id, &meta.tenant, &meta.thread, meta.status)?;
            }
            IndexUpdate::SetRunStatus {
                run_id,
                status,
                at_ms,
            } => {
                // Checked above: the row exists (possibly created earlier in this request).
                let mut row = match self.run_row(run_id)? {
                    Ok(Some(row)) => row,
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(e),
                };
                let old = row.status;
                row.status = status;
                row.updated_at_ms = at_ms;
                let bytes = tables::to_json(&row);
                self.runs()?
                    .insert(&run_key(run_id), bytes.as_slice())
                    .map_err(db)?;
                let by_status = self.runs_by_status()?;
                by_status
                    .remove(&status_key(old.tag(), run_id))
                    .map_err(db)?;
                by_status
                    .insert(&status_key(status.tag(), run_id), ())
                    .map_err(db)?;
            }
            IndexUpdate::RequestCancel { run_id, at_ms } => {
                let mut row = match self.run_row(run_id)? {
                    Ok(Some(row)) => row,
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(e),
                };
                if row.status.is_finished() || row.cancel_requested_at_ms.is_some() {
                    return Ok(());
                }
                row.cancel_requested_at_ms = Some(at_ms);
                let bytes = tables::to_json(&row);
                self.runs()?
                    .insert(&run_key(run_id), bytes.as_slice())
                    .map_err(db)?;
            }
            IndexUpdate::PutApproval(row) => {
                if let Ok(Some(old)) = self.approval_row(&row.id)?
                    && let Ok(old_run) = old.run_id.parse::<RunId>()
                    && old_run != row.run_id
                {
                    self.approvals_by_run()?
                        .remove(approval_of_run_key(old_run, &row.id).as_slice())
                        .map_err(db)?;
                }
                let bytes = tables::to_json(&ApprovalRowJson::from_row(&row));
                self.approvals()?
                    .insert(row.id.as_str(), bytes.as_slice())
                    .map_err(db)?;
                self.approvals_by_run()?
                    .insert(approval_of_run_key(row.run_id, &row.id).as_slice(), ())
                    .map_err(db)?;
            }
            IndexUpdate::SetApprovalStatus { id, status } => {
                let mut row = match self.approval_row(&id)? {
                    Ok(Some(row)) => row,
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(e),
                };
                row.status = status;
                let bytes = tables::to_json(&row);
                self.approvals()?
                    .insert(id.as_str(), bytes.as_slice())
                    .map_err(db)?;
            }
            IndexUpdate::PutPlan(row) => {
                let key = plan_key(&row.tenant, &row.plan_id);
                let bytes = tables::to_json(&PlanRowJson::from_row(&row));
                self.plans()?
                    .insert(key.as_slice(), bytes.as_slice())
                    .map_err(db)?;
            }
            IndexUpdate::PutSpec { hash, json } => {
                let specs = self.specs()?;
                if specs.get(hash.as_str()).map_err(db)?.is_none() {
                    specs.insert(hash.as_str(), json.as_str()).map_err(db)?;
                }
            }
            IndexUpdate::AppendMemory {
                tenant,
                thread,
                agent,
                entries,
            } => {
                let prefix = memory_prefix(&tenant, &thread, &agent);
                let memory = self.memory()?;
                let lo = memory_key(&prefix, 0);
                let hi = memory_key(&prefix, u64::MAX);
                let next = match memory
                    .range(lo.as_slice()..=hi.as_slice())
                    .map_err(db)?
                    .next_back()
                {
                    Some(entry) => {
                        let (key, _) = entry.map_err(db)?;
                        let key = key.value();
                        let mut idx = [0u8; 8];
                        idx.copy_from_slice(&key[key.len() - 8..]);
                        u64::from_be_bytes(idx) + 1
                    }
                    None => 0,
                };
                for (i, entry) in entries.iter().enumerate() {
                    memory
                        .insert(
                            memory_key(&prefix, next + i as u64).as_slice(),
                            entry.as_str(),
                        )
                        .map_err(db)?;
                }
            }
            IndexUpdate::PutReference(entry) => {
                let key = reference_key(&entry.tenant, &entry.kind, &entry.id);
                let old_expiry = match self.references()?.get(key.as_slice()).map_err(db)? {
                    Some(g) => tables::from_json::<ReferenceRowJson>(g.value())
                        .ok()
                        .and_then(|r| r.expires_at_ms),
                    None => None,
                };
                if let Some(at) = old_expiry {
                    self.reference_expiry()?
                        .remove(expiry_key(at, &key).as_slice())
                        .map_err(db)?;
                }
                let bytes = tables::to_json(&ReferenceRowJson::from_entry(&entry));
                self.references()?
                    .insert(key.as_slice(), bytes.as_slice())
                    .map_err(db)?;
                if let Some(at) = entry.expires_at_ms {
                    self.reference_expiry()?
                        .insert(expiry_key(at, &key).as_slice(), ())
                        .map_err(db)?;
                }
            }
        }
        Ok(())
    }

    fn index_run(
        &mut self,
        run: RunId,
        tenant: &str,
        thread: &str,
        status: RunStatus,
    ) -> Result<(), StoreError> {
        let label = self.label;
        let db = move |e: redb::StorageError| StoreError::db(label, e);
        self.runs_by_tenant()?
            .insert(runs_by_tenant_key(tenant, run).as_slice(), ())
            .map_err(db)?;
        self.runs_by_thread()?
            .insert(runs_by_thread_key(tenant, thread, run).as_slice(), ())
            .map_err(db)?;
        self.runs_by_status()?
            .insert(&status_key(status.tag(), run), ())
            .map_err(db)?;
        Ok(())
    }

    /// Deletes every reference with `expires_at_ms <= now_ms` and returns how many.
    pub(crate) fn gc(&mut self, now_ms: i64) -> Result<usize, StoreError> {
        let label = self.label;
        let db = move |e: redb::StorageError| StoreError::db(label, e);
        // Everything strictly below the first key of `now_ms + 1` expired at or before now.
        let end = match now_ms.checked_add(1) {
            Some(next) => ordered_i64(next).to_vec(),
            None => vec![0xFF; 9],
        };
        let expired: Vec<Vec<u8>> = {
            let index = self.reference_expiry()?;
            let mut keys = Vec::new();
            for entry in index.range(..end.as_slice()).map_err(db)? {
                let (key, _) = entry.map_err(db)?;
                keys.push(key.value().to_vec());
            }
            keys
        };
        for key in &expired {
            self.reference_expiry()?
                .remove(key.as_slice())
                .map_err(db)?;
            self.references()?.remove(&key[8..]).map_err(db)?;
        }
        Ok(expired.len())
    }

    /// Marks every `running` run `interrupted`; returns the runs changed.
    pub(crate) fn interrupt_running(&mut self, now_ms: i64) -> Result<Vec<RunId>, StoreError> {
        let label = self.label;
        let db = move |e: redb::StorageError| StoreError::db(label, e);
        let running: Vec<RunId> = {
            let by_status = self.runs_by_status()?;
            let lo = status_key(RunStatus::Running.tag(), ulid::Ulid(0));
            let hi = status_key(RunStatus::Running.tag(), ulid::Ulid(u128::MAX));
            let mut runs = Vec::new();
            for entry in by_status
                .range::<&[u8; STATUS_KEY_LEN]>(&lo..=&hi)
                .map_err(db)?
            {
                let (key, _) = entry.map_err(db)?;
                if let Some(run) = keys::run_from_key(&key.value()[1..]) {
                    runs.push(run);
                }
            }
            runs
        };
        let mut changed = Vec::with_capacity(running.len());
        for run in running {
            match self.run_row(run)? {
                Ok(Some(_)) => {
                    self.apply_update(IndexUpdate::SetRunStatus {
                        run_id: run,
                        status: RunStatus::Interrupted,
                        at_ms: now_ms,
                    })?;
                    changed.push(run);
                }
                Ok(None) => {
                    // An index entry without its row: drop the stale entry.
                    self.runs_by_status()?
                        .remove(&status_key(RunStatus::Running.tag(), run))
                        .map_err(db)?;
                }
                Err(e) => {
                    tracing::warn!(store = label, run = %run, error = %e, "cannot read run row; left as is");
                }
            }
        }
        Ok(changed)
    }
}

/// Creates every table so that readers never meet a missing one.
pub(crate) fn create_tables(txn: &WriteTransaction) -> Result<(), redb::TableError> {
    txn.open_table(tables::META)?;
    txn.open_table(tables::JOURNAL)?;
    txn.open_table(tables::RUNS)?;
    txn.open_table(tables::RUNS_BY_TENANT)?;
    txn.open_table(tables::RUNS_BY_THREAD)?;
    txn.open_table(tables::RUNS_BY_STATUS)?;
    txn.open_table(tables::APPROVALS)?;
    txn.open_table(tables::APPROVALS_BY_RUN)?;
    txn.open_table(tables::PLANS)?;
    txn.open_table(tables::SPECS)?;
    txn.open_table(tables::MEMORY)?;
    txn.open_table(tables::REFERENCES)?;
    txn.open_table(tables::REFERENCE_EXPIRY)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{ApprovalRow, RunAppend, RunMeta};
    use crate::{Record, RecordKind, Store};

    fn rec(n: u64) -> Record {
        Record {
            kind: RecordKind::StreamEmitted,
            version: 1,
            at_ms: n as i64,
            payload: format!("{{\"n\":{n}}}"),
        }
    }

    fn append_to(run: RunId, expected: Option<u64>, n: usize, pre: Precondition) -> AppendRequest {
        AppendRequest {
            run: Some(RunAppend {
                run_id: run,
                expected_first_seq: expected,
                records: (0..n as u64).map(rec).collect(),
            }),
            index_updates: vec![],
            precondition: pre,
        }
    }

    fn meta(run: RunId, status: RunStatus) -> RunMeta {
        RunMeta {
            run_id: run,
            tenant: "t".into(),
            thread: "th".into(),
            agent: "a".into(),
            status,
            created_at_ms: 1,
            updated_at_ms: 1,
            parent: None,
        }
    }

    /// Runs `reqs` as one batch through the real batch path and returns each reply.
    fn one_batch(store: &Store, reqs: Vec<AppendRequest>) -> Vec<Result<AppendAck, StoreError>> {
        let db = store.raw_db().unwrap();
        let mut receivers = Vec::new();
        let mut batch = Vec::new();
        for req in reqs {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            batch.push(Msg::Append(Box::new(req), Reply::Blocking(tx)));
            receivers.push(rx);
        }
        assert!(commit_batch(&db, batch, true, "<test>"));
        receivers.into_iter().map(|rx| rx.recv().unwrap()).collect()
    }

    /// The body of the journal frame `reqs` make when committed as one batch in `store`.
    fn frame_of(store: &Store, reqs: Vec<AppendRequest>) -> Vec<u8> {
        let db = store.raw_db().unwrap();
        let txn = db.begin_write().unwrap();
        let body = {
            let mut writes = Writes::new(&txn, "<test>");
            writes.journal_frame = Some(Ok(Vec::new()));
            for req in reqs {
                writes.append(req).unwrap().unwrap();
            }
            writes.journal_frame.take().unwrap().unwrap()
        };
        txn.commit().unwrap();
        body
    }

    fn replay(store: &Store, body: &[u8]) -> usize {
        let db = store.raw_db().unwrap();
        let txn = db.begin_write().unwrap();
        let written = Writes::new(&txn, "<test>")
            .replay_journal_frame(body)
            .unwrap();
        txn.commit().unwrap();
        written
    }

    /// A journal frame carries the index updates of its requests: replayed onto a store
    /// without them it writes the rows, and replayed onto a store that holds the frame it
    /// writes nothing (thread memory would otherwise be appended twice).
    #[test]
    fn journal_frames_carry_index_updates_and_replay_them_once() {
        let run = ulid::Ulid(0x0190_0000_0000u128 << 80);
        let mut start = append_to(run, Some(1), 2, Precondition::RunAbsent(run));
        start.index_updates = vec![
            IndexUpdate::CreateRun(meta(run, RunStatus::Running)),
            IndexUpdate::PutSpec {
                hash: "h1".into(),
                json: "{\"spec\":1}".into(),
            },
        ];
        let mut end = append_to(run, Some(3), 1, Precondition::None);
        end.index_updates = vec![
            IndexUpdate::SetRunStatus {
                run_id: run,
                status: RunStatus::Completed,
                at_ms: 9,
            },
            IndexUpdate::AppendMemory {
                tenant: "t".into(),
                thread: "th".into(),
                agent: "a".into(),
                entries: vec!["{\"role\":\"user\"}".into()],
            },
        ];
        let live = Store::in_memory().unwrap();
        let body = frame_of(&live, vec![start, end]);
        let entries = decode_journal_body(&body).unwrap();
        assert!(matches!(
            entries.as_slice(),
            [
                JournalEntry::Records(_, 1, _),
                JournalEntry::Updates(a),
                JournalEntry::Records(_, 3, _),
                JournalEntry::Updates(b),
            ] if a.len() == 2 && b.len() == 2
        ));

        assert_eq!(replay(&live, &body), 0, "the live store holds the frame");
        assert_eq!(live.memory("t", "th", "a").unwrap().len(), 1);

        let recovered = Store::in_memory().unwrap();
        assert_eq!(replay(&recovered, &body), 3);
        let info = recovered.run(run).unwrap().unwrap();
        assert_eq!((info.meta.status, info.records), (RunStatus::Completed, 3));
        assert_eq!(
            recovered.spec("h1").unwrap().as_deref(),
            Some("{\"spec\":1}")
        );
        assert_eq!(
            recovered.memory("t", "th", "a").unwrap(),
            ["{\"role\":\"user\"}"]
        );
        assert_eq!(
            recovered
                .list_runs(&crate::RunFilter {
                    status: Some(RunStatus::Completed),
                    ..Default::default()
                })
                .unwrap()
                .len(),
            1,
            "the status index follows the replayed status"
        );

        // A spec the store holds already is not carried again.
        let mut again = append_to(ulid::Ulid(5), Some(1), 1, Precondition::None);
        again.index_updates = vec![IndexUpdate::PutSpec {
            hash: "h1".into(),
            json: "{\"spec\":1}".into(),
        }];
        let body = frame_of(&live, vec![again]);
        assert!(matches!(
            decode_journal_body(&body).unwrap().as_slice(),
            [JournalEntry::Records(..)]
        ));
    }

    /// Index updates that follow no records are a malformed frame, not something to apply.
    #[test]
    fn an_updates_entry_without_records_before_it_is_refused() {
        let mut body = Vec::new();
        push_updates_entry(&mut body, &[b"{}".to_vec()]).unwrap();
        assert!(decode_journal_body(&body).is_err());
    }

    /// A batch whose every request failed its checks commits nothing (no fsync for it),
    /// unless it carries `eventual`'s durable flush, and its callers still get their errors.
    #[test]
    fn a_batch_that_writes_nothing_is_not_committed() {
        let store = Store::in_memory().unwrap();
        let db = store.raw_db().unwrap();
        let run = ulid::Ulid(7);
        let failing = || {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let req = append_to(run, Some(5), 1, Precondition::None);
            (Msg::Append(Box::new(req), Reply::Blocking(tx)), rx)
        };

        let (msg, rx) = failing();
        let committed = run_batch(
            &db,
            vec![msg],
            BatchMode::without_journal(true, true),
            "<test>",
        );
        assert!(!committed.ok, "an all-failed batch was committed");
        committed.deliver();
        assert!(matches!(
            rx.recv().unwrap(),
            Err(StoreError::SeqConflict { .. })
        ));

        // The same batch with a flush request commits: earlier commits must become durable.
        let (msg, rx) = failing();
        let committed = run_batch(
            &db,
            vec![msg, Msg::Wake],
            BatchMode::without_journal(true, true),
            "<test>",
        );
        assert!(committed.ok, "the durable flush was skipped");
        committed.deliver();
        assert!(matches!(
            rx.recv().unwrap(),
            Err(StoreError::SeqConflict { .. })
        ));
    }

    #[test]
    fn a_failed_precondition_fails_only_its_own_request() {
        let store = Store::in_memory().unwrap();
        let (a, b, c) = (ulid::Ulid(1), ulid::Ulid(2), ulid::Ulid(3));
        let mut create_b = append_to(b, Some(1), 2, Precondition::RunAbsent(b));
        create_b
            .index_updates
            .push(IndexUpdate::CreateRun(meta(b, RunStatus::Running)));
        store.append_blocking(create_b).unwrap();

        let results = one_batch(
            &store,
            vec![
                append_to(a, Some(1), 3, Precondition::None),
                // b exists: RunAbsent fails, and its records must not be written.
                append_to(b, None, 5, Precondition::RunAbsent(b)),
                append_to(
                    b,
                    None,
                    1,
                    Precondition::RunStatusIn(b, vec![RunStatus::Suspended]),
                ),
                append_to(c, Some(2), 1, Precondition::None),
                append_to(a, Some(4), 2, Precondition::None),
                append_to(
                    b,
                    Some(3),
                    1,
                    Precondition::RunStatusIn(b, vec![RunStatus::Running]),
                ),
                append_to(a, None, 1, Precondition::ApprovalPending("nope".into())),
            ],
        );
        assert_eq!(
            results[0].as_ref().unwrap(),
            &AppendAck {
                first_seq: 1,
                last_seq: 3
            }
        );
        assert!(matches!(results[1], Err(StoreError::RunExists { run }) if run == b));
        let what = match &results[2] {
            Err(StoreError::PreconditionFailed { what }) => what.clone(),
            other => panic!("{other:?}"),
        };
        assert!(
            what.contains("is running, expected status in [suspended]"),
            "{what}"
        );
        assert!(matches!(
            results[3],
            Err(StoreError::SeqConflict {
                expected: 2,
                actual: 1,
                ..
            })
        ));
        // Seqs continue from the earlier request of the same batch.
        assert_eq!(
            results[4].as_ref().unwrap(),
            &AppendAck {
                first_seq: 4,
                last_seq: 5
            }
        );
        assert_eq!(
            results[5].as_ref().unwrap(),
            &AppendAck {
                first_seq: 3,
                last_seq: 3
            }
        );
        assert!(matches!(
            results[6],
            Err(StoreError::PreconditionFailed { .. })
        ));

        assert_eq!(store.last_seq(a).unwrap(), 5);
        assert_eq!(store.last_seq(b).unwrap(), 3);
        assert_eq!(store.last_seq(c).unwrap(), 0);
    }

    fn plan_at(run: RunId, status: &str) -> IndexUpdate {
        IndexUpdate::PutPlan(crate::types::PlanRow {
            tenant: "t".into(),
            plan_id: "p1".into(),
            version: 1,
            status: status.into(),
            body: format!("{{\"status\":\"{status}\"}}"),
            run_id: run,
            seq: 1,
        })
    }

    fn plan_is(plan_id: &str, statuses: &[&str]) -> Precondition {
        Precondition::PlanStatusIn {
            tenant: "t".into(),
            plan_id: plan_id.into(),
            statuses: statuses.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn a_plan_status_precondition_lets_one_of_two_racing_transitions_through() {
        let store = Store::in_memory().unwrap();
        let (owner, a, b, c) = (ulid::Ulid(1), ulid::Ulid(2), ulid::Ulid(3), ulid::Ulid(4));
        let mut approve = append_to(owner, Some(1), 1, Precondition::None);
        approve.index_updates.push(plan_at(owner, "approved"));
        store.append_blocking(approve).unwrap();

        // Two runs both saw the plan approved and move it to executing in one batch: the
        // second request must see the first one's row, not the row the batch started with.
        let mut first = append_to(a, Some(1), 2, plan_is("p1", &["approved"]));
        first.index_updates.push(plan_at(a, "executing"));
        let mut second = append_to(b, Some(1), 2, plan_is("p1", &["approved"]));
        second.index_updates.push(plan_at(b, "executing"));
        let results = one_batch(
            &store,
            vec![
                first,
                second,
                append_to(c, Some(1), 1, Precondition::None),
                append_to(c, None, 1, plan_is("p1", &["executing", "executed"])),
                append_to(c, None, 1, plan_is("nope", &["approved"])),
            ],
        );
        assert_eq!(
            results[0].as_ref().unwrap(),
            &AppendAck {
                first_seq: 1,
                last_seq: 2
            }
        );
        let what = match &results[1] {
            Err(StoreError::PreconditionFailed { what }) => what.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            what,
            "plan \"p1\" of tenant \"t\" is executing, expected status in [approved]"
        );
        assert!(results[2].is_ok(), "{:?}", results[2]);
        // A set of statuses: any one of them passes.
        assert_eq!(
            results[3].as_ref().unwrap(),
            &AppendAck {
                first_seq: 2,
                last_seq: 2
            }
        );
        let what = match &results[4] {
            Err(StoreError::PreconditionFailed { what }) => what.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            what,
            "plan \"nope\" of tenant \"t\" does not exist (expected status in [approved])"
        );

        // The loser wrote nothing: neither records nor its plan row.
        assert_eq!(store.last_seq(a).unwrap(), 2);
        assert_eq!(store.last_seq(b).unwrap(), 0);
        assert_eq!(store.last_seq(c).unwrap(), 2);
        let row = store.plan("t", "p1").unwrap().unwrap();
        assert_eq!((row.status.as_str(), row.run_id), ("executing", a));
    }

    #[test]
    fn a_failed_index_check_writes_nothing_of_the_request() {
        let store = Store::in_memory().unwrap();
        let run = ulid::Ulid(7);
        let mut req = append_to(run, None, 2, Precondition::None);
        req.index_updates = vec![
            IndexUpdate::PutSpec {
                hash: "h".into(),
                json: "{}".into(),
            },
            IndexUpdate::SetApprovalStatus {
                id: "missing".into(),
                status: ApprovalStatus::Approved,
            },
        ];
        let results = one_batch(&store, vec![req]);
        assert!(matches!(
            results[0],
            Err(StoreError::PreconditionFailed { .. })
        ));
        assert_eq!(store.last_seq(run).unwrap(), 0);
        assert_eq!(store.spec("h").unwrap(), None);

        // Updates may refer to rows created earlier in the same request.
        let mut req = append_to(run, Some(1), 1, Precondition::RunAbsent(run));
        req.index_updates = vec![
            IndexUpdate::CreateRun(meta(run, RunStatus::Running)),
            IndexUpdate::SetRunStatus {
                run_id: run,
                status: RunStatus::Suspended,
                at_ms: 9,
            },
            IndexUpdate::PutApproval(ApprovalRow {
                id: "ap".into(),
                tenant: "t".into(),
                run_id: run,
                seq: 1,
                status: ApprovalStatus::Pending,
            }),
            IndexUpdate::SetApprovalStatus {
                id: "ap".into(),
                status: ApprovalStatus::Approved,
            },
        ];
        let results = one_batch(&store, vec![req]);
        assert!(results[0].is_ok(), "{results:?}");
        let info = store.run(run).unwrap().unwrap();
        assert_eq!(info.meta.status, RunStatus::Suspended);
        assert_eq!(info.meta.updated_at_ms, 9);
        assert!(info.pending_approvals.is_empty());
    }

    /// What a request does in the model: the store must agree request by request, however
    /// the requests are split into batches.
    #[derive(Clone, Debug)]
    struct Op {
        run: u8,
        records: usize,
        expected: Option<u64>,
        pre: u8,
        create: bool,
        set_status: Option<u8>,
    }

    fn op_strategy() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        (
            0u8..3,
            0usize..3,
            proptest::option::of(0u64..6),
            0u8..4,
            any::<bool>(),
            proptest::option::of(0u8..6),
        )
            .prop_map(|(run, records, expected, pre, create, set_status)| Op {
                run,
                records,
                expected,
                pre,
                create,
                set_status,
            })
    }

    fn status_of(i: u8) -> RunStatus {
        RunStatus::ALL[usize::from(i) % RunStatus::ALL.len()]
    }

    fn request(op: &Op) -> AppendRequest {
        let run = ulid::Ulid(u128::from(op.run) + 1);
        let precondition = match op.pre {
            0 => Precondition::None,
            1 => Precondition::RunAbsent(run),
            2 => Precondition::RunStatusIn(run, vec![RunStatus::Running, RunStatus::Suspended]),
            _ => Precondition::RunStatusIn(run, vec![RunStatus::Completed]),
        };
        let mut req = append_to(run, op.expected, op.records, precondition);
        if op.create {
            req.index_updates
                .push(IndexUpdate::CreateRun(meta(run, RunStatus::Running)));
        }
        if let Some(s) = op.set_status {
            req.index_updates.push(IndexUpdate::SetRunStatus {
                run_id: run,
                status: status_of(s),
                at_ms: 2,
            });
        }
        req
    }

    #[derive(Default, Clone)]
    struct Model {
        seqs: HashMap<u8, u64>,
        status: HashMap<u8, RunStatus>,
    }

    impl Model {
        /// Ok(ack) or the error's discriminant name.
        fn apply(&mut self, op: &Op) -> Result<AppendAck, &'static str> {
            let last = self.seqs.get(&op.run).copied().unwrap_or(0);
            let status = self.status.get(&op.run).copied();
            match op.pre {
                0 => {}
                1 if status.is_some() || last > 0 => return Err("RunExists"),
                1 => {}
                2 if !matches!(status, Some(RunStatus::Running | RunStatus::Suspended)) => {
                    return Err("PreconditionFailed");
                }
                2 => {}
                _ if status != Some(RunStatus::Completed) => return Err("PreconditionFailed"),
                _ => {}
            }
            if let Some(expected) = op.expected
                && expected != last + 1
            {
                return Err("SeqConflict");
            }
            if op.create && status.is_some() {
                return Err("RunExists");
            }
            if op.set_status.is_some() && status.is_none() && !op.create {
                return Err("PreconditionFailed");
            }
            if op.create {
                self.status.insert(op.run, RunStatus::Running);
            }
            if let Some(s) = op.set_status {
                self.status.insert(op.run, status_of(s));
            }
            if op.records == 0 {
                return Ok(AppendAck::default());
            }
            self.seqs.insert(op.run, last + op.records as u64);
            Ok(AppendAck {
                first_seq: last + 1,
                last_seq: last + op.records as u64,
            })
        }
    }

    fn kind_name(e: &StoreError) -> &'static str {
        match e {
            StoreError::RunExists { .. } => "RunExists",
            StoreError::SeqConflict { .. } => "SeqConflict",
            StoreError::PreconditionFailed { .. } => "PreconditionFailed",
            _ => "other",
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn batches_agree_with_a_sequential_model(
            ops in proptest::collection::vec(op_strategy(), 1..40),
            cuts in proptest::collection::vec(0usize..40, 0..6),
        ) {
            let store = Store::in_memory().unwrap();
            let mut model = Model::default();
            let mut bounds: Vec<usize> = cuts.into_iter().map(|c| c % ops.len()).collect();
            bounds.push(0);
            bounds.push(ops.len());
            bounds.sort_unstable();
            bounds.dedup();
            for w in bounds.windows(2) {
                let chunk = &ops[w[0]..w[1]];
                let got = one_batch(&store, chunk.iter().map(request).collect());
                for (op, got) in chunk.iter().zip(got) {
                    let want = model.apply(op);
                    let got = got.map_err(|e| kind_name(&e));
                    proptest::prop_assert_eq!(got, want, "{:?}", op);
                }
            }
            for run in 0u8..3 {
                let id = ulid::Ulid(u128::from(run) + 1);
                let last = model.seqs.get(&run).copied().unwrap_or(0);
                proptest::prop_assert_eq!(store.last_seq(id).unwrap(), last);
                let seqs: Vec<u64> = store.records(id, 1).unwrap().iter().map(|r| r.seq).collect();
                proptest::prop_assert_eq!(seqs, (1..=last).collect::<Vec<_>>());
                let status = store.run(id).unwrap().map(|i| i.meta.status);
                proptest::prop_assert_eq!(status, model.status.get(&run).copied());
            }
        }
    }

    #[test]
    fn a_batch_with_gc_and_appends_commits_once() {
        let store = Store::in_memory().unwrap();
        let db = store.raw_db().unwrap();
        let (tx1, rx1) = std::sync::mpsc::sync_channel(1);
        let (tx2, rx2) = std::sync::mpsc::sync_channel(1);
        let batch = vec![
            Msg::Append(
                Box::new(append_to(ulid::Ulid(1), None, 1, Precondition::None)),
                Reply::Blocking(tx1),
            ),
            Msg::Gc(100, Reply::Blocking(tx2)),
        ];
        assert!(commit_batch(&db, batch, false, "<test>"));
        assert_eq!(rx1.recv().unwrap().unwrap().last_seq, 1);
        assert_eq!(rx2.recv().unwrap().unwrap(), 0);
    }
}
