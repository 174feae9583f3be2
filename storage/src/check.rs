//! [`Store::check`]: is a store file intact?
//!
//! Crash safety keeps a store consistent through `kill -9` and power loss, not through a
//! disk that returns other bytes than it was given, or a file changed by hand. redb checks
//! its pages' checksums only when it repairs after a crash, and reads trust the bytes: a
//! damaged page can fail a read, or shorten what it returns without an error (FORMAT.md,
//! "Records"). This check is what an audit trail needs before it is relied on.

use std::ops::ControlFlow;
use std::path::Path;

use crate::store::guard_pages;
use crate::{RunFilter, Store, StoreError, StoreOptions};

/// What [`Store::check`] verified.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Runs whose journals were read.
    pub runs: usize,
    /// Records read and decoded.
    pub records: u64,
    /// redb had to rebuild its allocator state (the file was otherwise intact).
    pub allocator_rebuilt: bool,
}

impl Store {
    /// Verifies the store file at `path`:
    ///
    /// 1. opens it for writing and closes it, which folds in a crashed writer's log (and
    ///    marks the runs it left running interrupted, as any writer's open does), so the
    ///    file is whole;
    /// 2. has redb verify the checksum of every page of its trees
    ///    (`redb::Database::check_integrity`);
    /// 3. reads every run's journal, decoding each record and checking that its seqs run
    ///    from 1 without a gap up to the run's last.
    ///
    /// A damage gives [`StoreError::Corrupt`] naming where it was found. The file must not
    /// be open anywhere, this process included: a holder gives [`StoreError::Locked`].
    pub fn check(path: impl AsRef<Path>) -> Result<CheckReport, StoreError> {
        Self::check_with_progress(path, &mut |_, _| {})
    }

    /// [`Store::check`], calling `progress(runs checked, runs)` as the journals are read
    /// (the longest part, for a progress bar).
    pub fn check_with_progress(
        path: impl AsRef<Path>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<CheckReport, StoreError> {
        let path = path.as_ref();
        let label = path.display().to_string();
        // `Store::open` would create a missing file.
        if !path.exists() {
            return Err(StoreError::NotFound { path: label });
        }
        // Opening it here would give that store, and closing it close it for its holders.
        if Store::is_open_in_this_process(path) {
            return Err(StoreError::Locked {
                path: label,
                hint: "this process has it open; close it before checking it".into(),
            });
        }
        Store::open(path, StoreOptions::default())?.close()?;

        let allocator_rebuilt = guard_pages(
            &label,
            || "its pages".into(),
            || {
                let mut db = match redb::Database::builder().open(path) {
                    Ok(db) => db,
                    Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                        return Err(StoreError::Locked {
                            path: label.clone(),
                            hint: "another process opened it while it was being checked".into(),
                        });
                    }
                    Err(e) => return Err(StoreError::db(&label, e)),
                };
                let clean = match db.check_integrity() {
                    Ok(clean) => clean,
                    Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(detail))) => {
                        return Err(StoreError::corrupt(
                            &label,
                            "the page checksums",
                            format!("{detail}; restore the file from a backup"),
                        ));
                    }
                    Err(e) => return Err(StoreError::db(&label, e)),
                };
                db.close().map_err(|e| StoreError::db(&label, e))?;
                Ok(!clean)
            },
        )?;

        let store = Store::open_read_only(path)?;
        let mut report = CheckReport {
            allocator_rebuilt,
            ..CheckReport::default()
        };
        let runs = store.list_runs(&RunFilter::default())?;
        progress(0, runs.len());
        for info in &runs {
            let run = info.meta.run_id;
            let mut expected = 1;
            let mut gap = None;
            store.scan_records(run, 1, &mut |seq, _| {
                if seq != expected {
                    gap = Some(seq);
                    return ControlFlow::Break(());
                }
                expected += 1;
                ControlFlow::Continue(())
            })?;
            let read = expected - 1;
            if let Some(seq) = gap {
                return Err(StoreError::corrupt(
                    &label,
                    format!("the journal of run {run}"),
                    format!("record {seq} follows record {read}"),
                ));
            }
            // `records` is the run's last seq, read from the journal's end by `list_runs`.
            if read != info.records {
                return Err(StoreError::corrupt(
                    &label,
                    format!("the journal of run {run}"),
                    format!("{read} records read, the last is seq {}", info.records),
                ));
            }
            report.runs += 1;
            report.records += read;
            progress(report.runs, runs.len());
        }
        store.close()?;
        Ok(report)
    }
}
