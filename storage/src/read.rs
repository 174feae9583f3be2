//! The read API of [`Store`]: each call is one redb read transaction (a snapshot), so reads
//! never wait for the writer and never see part of a batch.

use std::ops::ControlFlow;

use redb::{ReadTransaction, ReadableTable};

use crate::StoreError;
use crate::keys::{
    self, JOURNAL_KEY_LEN, KeyBuf, approval_of_run_key, journal_key, memory_prefix, plan_key,
    prefix_end, reference_key, run_key, split_journal_key, status_key,
};
use crate::record::{self, RecordView, StoredRecord};
use crate::store::{DbResult, Store, guard_pages, inside_redb, outside_redb, pages_panicked};
use crate::tables::{self, ApprovalRowJson, PlanRowJson, ReferenceRowJson, RunRow};
use crate::types::{
    ApprovalRow, ApprovalStatus, PlanRow, ReferenceEntry, RunFilter, RunId, RunInfo,
};

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

pub(crate) fn prefix_range<'t, V: redb::Value + 'static>(
    table: &'t impl ReadableTable<&'static [u8], V>,
    prefix: &[u8],
) -> Result<redb::Range<'t, &'static [u8], V>, redb::StorageError> {
    match prefix_end(prefix) {
        Some(end) => table.range(prefix..end.as_slice()),
        None => table.range(prefix..),
    }
}

impl Store {
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
        // Set while `f` runs: a panic then is the caller's, not a damaged page, and goes
        // on unwinding.
        let mut in_callback = false;
        let scanned = inside_redb(|| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
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
                        StoreError::corrupt(
                            label,
                            format!("journal record seq {seq} of run {run}"),
                            e,
                        )
                    })?;
                    in_callback = true;
                    let flow = outside_redb(|| f(seq, view));
                    in_callback = false;
                    if flow.is_break() {
                        break;
                    }
                }
                Ok(())
            }))
        });
        match scanned {
            Ok(scanned) => scanned,
            Err(panic) if in_callback => std::panic::resume_unwind(panic),
            Err(panic) => Err(pages_panicked(
                label,
                format!("the journal of run {run}"),
                panic.as_ref(),
            )),
        }
    }

    /// The last seq of `run` (= its number of records); 0 when it has none.
    pub fn last_seq(&self, run: RunId) -> Result<u64, StoreError> {
        guard_pages(
            self.label(),
            || format!("the journal of run {run}"),
            || {
                let txn = self.read_txn()?;
                let journal = txn.open_table(tables::JOURNAL).db(self.label())?;
                last_seq_in(&journal, run).db(self.label())
            },
        )
    }

    /// The run's row with its record count and pending approvals.
    pub fn run(&self, run: RunId) -> Result<Option<RunInfo>, StoreError> {
        guard_pages(
            self.label(),
            || format!("the run {run}"),
            || {
                let txn = self.read_txn()?;
                let reader = RunReader::new(&txn, self.label())?;
                match reader.row(run)? {
                    None => Ok(None),
                    Some(row) => reader.info(run, row).map(Some),
                }
            },
        )
    }

    /// Runs matching `filter`, newest first (ULID order, descending), at most `filter.limit`
    /// (0 = all). Uses the tenant, thread or status index rather than reading every run.
    pub fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunInfo>, StoreError> {
        guard_pages(
            self.label(),
            || String::from("the runs and their indexes"),
            || {
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
            },
        )
    }

    pub fn approval(&self, id: &str) -> Result<Option<ApprovalRow>, StoreError> {
        guard_pages(
            self.label(),
            || format!("the approval {id}"),
            || {
                let txn = self.read_txn()?;
                let reader = RunReader::new(&txn, self.label())?;
                reader.approval(id)
            },
        )
    }

    /// Every approval of `run`, in id order.
    pub fn approvals_of_run(&self, run: RunId) -> Result<Vec<ApprovalRow>, StoreError> {
        guard_pages(
            self.label(),
            || format!("the approvals of run {run}"),
            || {
                let txn = self.read_txn()?;
                let reader = RunReader::new(&txn, self.label())?;
                reader.approvals_of(run)
            },
        )
    }

    /// The latest row of a tenant's plan.
    pub fn plan(&self, tenant: &str, plan_id: &str) -> Result<Option<PlanRow>, StoreError> {
        guard_pages(
            self.label(),
            || format!("the plan {plan_id:?} of tenant {tenant:?}"),
            || {
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
            },
        )
    }

    /// The spec JSON recorded under `hash`.
    pub fn spec(&self, hash: &str) -> Result<Option<String>, StoreError> {
        guard_pages(
            self.label(),
            || format!("the spec {hash}"),
            || {
                let label = self.label();
                let txn = self.read_txn()?;
                let specs = txn.open_table(tables::SPECS).db(label)?;
                Ok(specs.get(hash).db(label)?.map(|g| g.value().to_owned()))
            },
        )
    }

    /// The thread memory of an agent: entry JSON texts in append order.
    pub fn memory(
        &self,
        tenant: &str,
        thread: &str,
        agent: &str,
    ) -> Result<Vec<String>, StoreError> {
        guard_pages(
            self.label(),
            || format!("the memory of thread {thread:?} (agent {agent:?}, tenant {tenant:?})"),
            || {
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
            },
        )
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
        guard_pages(
            self.label(),
            || format!("the reference {kind}/{id} of tenant {tenant:?}"),
            || {
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
                    .map_err(|e| {
                        StoreError::corrupt(label, format!("references row {kind}/{id}"), e)
                    })?
                    .into_entry();
                Ok((!entry.is_expired(now_ms)).then_some(entry))
            },
        )
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
        let cancel_requested_at_ms = row.cancel_requested_at_ms;
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
            cancel_requested_at_ms,
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
