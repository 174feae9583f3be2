//! A store whose files cannot grow (a full disk, a quota): a child process appends under
//! `ulimit -f` until an append fails, and the parent checks that the failure is an error
//! naming the store, that the child neither crashed nor hung, and that reopening the store
//! without the limit finds every acknowledged record intact and takes new appends.
//!
//! The limit makes the kernel refuse to extend a file (`EFBIG`) the way a full disk refuses
//! with `ENOSPC`: at a checkpoint writing the store file, or when the log grows. The child
//! ignores `SIGXFSZ` (set by the shell before `exec`, and kept across it) so that the
//! write fails instead of killing it.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::Path;
use std::process::Command;

use flowai_storage::{
    AppendRequest, IndexUpdate, Precondition, Record, RecordKind, RunAppend, RunId, RunMeta,
    RunStatus, Store, StoreOptions,
};

const CHILD_ENV: &str = "FLOWAI_FILE_LIMIT_CHILD";
/// Far more than the limit lets the child write: it must fail before.
const MAX_APPENDS: u64 = 20_000;

fn run_id() -> RunId {
    ulid::Ulid(0x0190_0000_0000u128 << 80)
}

fn record(seq: u64) -> Record {
    Record {
        kind: if seq == 1 {
            RecordKind::RunStarted
        } else {
            RecordKind::StreamEmitted
        },
        version: 1,
        at_ms: seq as i64,
        payload: format!("{{\"seq\":{seq},\"pad\":\"{}\"}}", "x".repeat(3_000)),
    }
}

fn append(store: &Store, seq: u64) -> Result<u64, flowai_storage::StoreError> {
    let run = run_id();
    let index_updates = if seq == 1 {
        vec![IndexUpdate::CreateRun(RunMeta {
            run_id: run,
            tenant: "limit".into(),
            thread: "thread".into(),
            agent: "agent".into(),
            status: RunStatus::Running,
            created_at_ms: 1,
            updated_at_ms: 1,
            parent: None,
        })]
    } else {
        vec![]
    };
    store
        .append_blocking(AppendRequest {
            run: Some(RunAppend {
                run_id: run,
                expected_first_seq: Some(seq),
                records: vec![record(seq)],
            }),
            index_updates,
            precondition: Precondition::None,
        })
        .map(|ack| ack.last_seq)
}

/// The child: appends until an append fails, then tries once more and closes, printing
/// each outcome.
#[test]
fn file_limit_child_entry() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let mut out = std::io::stdout().lock();
    let mut seq = store.last_seq(run_id()).unwrap() + 1;
    while seq < MAX_APPENDS {
        match append(&store, seq) {
            Ok(last) => {
                writeln!(out, "ack {last}").unwrap();
                seq = last + 1;
            }
            Err(e) => {
                writeln!(out, "error {e}").unwrap();
                break;
            }
        }
    }
    match append(&store, seq) {
        Ok(last) => writeln!(out, "then ack {last}").unwrap(),
        Err(e) => writeln!(out, "then error {e}").unwrap(),
    }
    match store.close() {
        Ok(()) => writeln!(out, "closed").unwrap(),
        Err(e) => writeln!(out, "close error {e}").unwrap(),
    }
    out.flush().unwrap();
}

/// Runs this test binary as the child under `ulimit -f blocks` (512-byte blocks in a POSIX
/// shell; some shells count KiB, which only moves where the child fails).
fn run_child(path: &Path, blocks: u64) -> String {
    let exe = std::env::current_exe().unwrap();
    let output = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit -f {blocks} && exec \"$0\" --exact file_limit_child_entry --nocapture --test-threads=1"
        ))
        .arg(&exe)
        .env(CHILD_ENV, path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the child failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn a_store_that_cannot_grow_fails_appends_and_keeps_what_it_acknowledged() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("limited.redb");
    // Two rounds: the second reopens a store the first left at its limit, so that the
    // limit is hit again after a recovery.
    let mut acked = 0u64;
    for (round, blocks) in [(1, 8_192u64), (2, 16_384)] {
        let stdout = run_child(&path, blocks);
        let lines: Vec<&str> = stdout.lines().collect();
        let acks: Vec<u64> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("ack "))
            .map(|n| n.parse().unwrap())
            .collect();
        let error = lines
            .iter()
            .find_map(|l| l.strip_prefix("error "))
            .unwrap_or_else(|| panic!("round {round}: no append failed:\n{stdout}"));
        assert!(
            acks.len() > 10,
            "round {round}: the limit left room for {} appends only:\n{stdout}",
            acks.len()
        );
        assert!(
            error.contains("limited.redb"),
            "round {round}: the error does not name the store: {error}"
        );
        assert!(
            error.contains("File too large") || error.contains("os error 27"),
            "round {round}: the error does not say why: {error}"
        );
        acked = *acks.last().unwrap();

        // Without the limit, everything acknowledged is there, and appends go on.
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        let records = store.records(run_id(), 1).unwrap();
        // The failed append said nothing of it was written, and nothing was.
        assert_eq!(
            records.len() as u64,
            acked,
            "round {round}: {} records, {acked} acknowledged",
            records.len()
        );
        for (n, stored) in records.iter().enumerate() {
            let seq = n as u64 + 1;
            assert_eq!(stored.seq, seq);
            assert_eq!(
                stored.record,
                record(seq),
                "round {round}: record {seq} differs"
            );
        }
        let next = records.len() as u64 + 1;
        assert_eq!(append(&store, next).unwrap(), next);
        store.close().unwrap();
    }
    assert!(acked > 0);
}
