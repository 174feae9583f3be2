//! The group-commit writer: one OS thread per writable store that drains every queued request
//! into one write transaction, checks each request's precondition inside it, commits once and
//! then acknowledges every request of the batch.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError};
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

/// Where a reply goes: a tokio oneshot for async callers, a std channel for blocking ones (so
/// `append_blocking` never needs, or trips over, a tokio runtime).
pub(crate) enum Reply<T> {
    Async(oneshot::Sender<Result<T, StoreError>>),
    Blocking(SyncSender<Result<T, StoreError>>),
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
        }
    }
}

pub(crate) enum Msg {
    Append(Box<AppendRequest>, Reply<AppendAck>),
    Gc(i64, Reply<usize>),
}

/// Starts the writer thread. It stops, after draining and a final durable commit, when every
/// sender of `rx` is gone.
///
/// `commit_micros` receives the duration of each commit, for callers deciding whether to
/// poll for their acknowledgement.
pub(crate) fn spawn(
    db: Arc<redb::Database>,
    rx: Receiver<Msg>,
    label: String,
    eventual: bool,
    commit_micros: Arc<AtomicU64>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("flowai-store-writer".into())
        .spawn(move || run(&db, &rx, &label, eventual, &commit_micros))
}

fn run(
    db: &redb::Database,
    rx: &Receiver<Msg>,
    label: &str,
    eventual: bool,
    commit_micros: &AtomicU64,
) {
    // Start of the oldest acknowledged but not yet fsynced commit (eventual mode only).
    let mut unsynced_since: Option<Instant> = None;
    // Size and commit time of the previous batch: its callers are likely to come back with
    // their next request right after their acknowledgement.
    let mut last_batch = 0usize;
    let mut last_commit = Duration::ZERO;
    loop {
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
                        // On failure, try again one period later rather than spin.
                        unsynced_since = if sync(db, label) {
                            None
                        } else {
                            Some(Instant::now())
                        };
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        };
        let mut batch = Vec::with_capacity(last_batch.max(16));
        batch.push(first);
        drain(rx, &mut batch);
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
                        batch.push(msg);
                        drain(rx, &mut batch);
                    }
                    Err(_) => break,
                }
            }
        }
        last_batch = batch.len();
        let durable =
            !eventual || unsynced_since.is_some_and(|since| since.elapsed() >= EVENTUAL_FLUSH);
        let started = Instant::now();
        let committed = commit_batch(db, batch, durable, label);
        last_commit = started.elapsed();
        commit_micros.store(
            u64::try_from(last_commit.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if committed {
            if durable {
                unsynced_since = None;
            } else if unsynced_since.is_none() {
                unsynced_since = Some(Instant::now());
            }
        }
    }
    if unsynced_since.is_some() {
        sync(db, label);
    }
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

fn drain(rx: &Receiver<Msg>, batch: &mut Vec<Msg>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(msg) => batch.push(msg),
            Err(_) => break,
        }
    }
}

/// An empty commit with `Immediate` durability: makes every earlier non-durable commit durable.
fn sync(db: &redb::Database, label: &str) -> bool {
    let result = db
        .begin_write()
        .map_err(redb::Error::from)
        .and_then(|txn| txn.commit().map_err(redb::Error::from));
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

/// Runs one batch in one transaction. Returns whether it committed.
pub(crate) fn commit_batch(
    db: &redb::Database,
    batch: Vec<Msg>,
    durable: bool,
    label: &str,
) -> bool {
    let mut txn = match db.begin_write() {
        Ok(txn) => txn,
        Err(e) => {
            fail_all(batch, &StoreError::db(label, e), label);
            return false;
        }
    };
    if !durable && let Err(e) = txn.set_durability(redb::Durability::None) {
        // Refused in the shared-reads mode; the store downgrades `eventual` there, so this is
        // only a safety net: commit durably instead.
        tracing::warn!(store = label, error = %e, "non-durable commit refused; committing durably");
    }
    let mut pending = Vec::with_capacity(batch.len());
    let mut remaining = batch.into_iter();
    let fatal = {
        let mut w = Writes::new(&txn, label);
        let mut fatal = None;
        for msg in remaining.by_ref() {
            match msg {
                Msg::Append(req, reply) => match w.append(*req) {
                    Ok(result) => pending.push(Pending::Append(reply, result)),
                    Err(e) => {
                        reply.send(Err(e.for_batch(label)));
                        fatal = Some(e);
                        break;
                    }
                },
                Msg::Gc(now, reply) => match w.gc(now) {
                    Ok(n) => pending.push(Pending::Gc(reply, Ok(n))),
                    Err(e) => {
                        reply.send(Err(e.for_batch(label)));
                        fatal = Some(e);
                        break;
                    }
                },
            }
        }
        fatal
    };
    if let Some(err) = fatal {
        // A storage error part way through leaves the transaction unusable: abort it and fail
        // every request of the batch, including those not reached yet.
        let _ = txn.abort();
        fail_pending(pending, &err, label);
        fail_all(remaining.collect(), &err, label);
        return false;
    }
    match txn.commit() {
        Ok(()) => {
            for p in pending {
                match p {
                    Pending::Append(reply, result) => reply.send(result),
                    Pending::Gc(reply, result) => reply.send(result),
                }
            }
            true
        }
        Err(e) => {
            let err = StoreError::db(label, e);
            fail_pending(pending, &err, label);
            false
        }
    }
}

fn fail_pending(pending: Vec<Pending>, err: &StoreError, label: &str) {
    tracing::error!(store = label, error = %err, "write transaction failed");
    for p in pending {
        match p {
            Pending::Append(reply, _) => reply.send(Err(err.for_batch(label))),
            Pending::Gc(reply, _) => reply.send(Err(err.for_batch(label))),
        }
    }
}

pub(crate) fn fail_all(batch: Vec<Msg>, err: &StoreError, label: &str) {
    for msg in batch {
        match msg {
            Msg::Append(_, reply) => reply.send(Err(err.for_batch(label))),
            Msg::Gc(_, reply) => reply.send(Err(err.for_batch(label))),
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
        }
        for update in index_updates {
            self.apply_update(update)?;
        }
        Ok(Ok(ack))
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
                    if !created_runs.contains(run_id) {
                        match self.run_row(*run_id)? {
                            Ok(Some(_)) => {}
                            Ok(None) => {
                                return Ok(Err(StoreError::PreconditionFailed {
                                    what: format!(
                                        "cannot set run {run_id} to {status}: the run does not exist"
                                    ),
                                }));
                            }
                            Err(e) => return Ok(Err(e)),
                        }
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

    pub(crate) fn apply_update(&mut self, update: IndexUpdate) -> Result<(), StoreError> {
        let label = self.label;
        let db = move |e: redb::StorageError| StoreError::db(label, e);
        match update {
            IndexUpdate::CreateRun(meta) => {
                let row = tables::to_json(&RunRow::from_meta(&meta));
                self.runs()?
                    .insert(&run_key(meta.run_id), row.as_slice())
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
