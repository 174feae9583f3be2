//! Crash test with real processes: a child appends in a loop with `immediate` durability and
//! prints every acknowledged `(run, last_seq)`; the parent SIGKILLs it at random moments,
//! reopens the file and checks that every acknowledged record is there, intact, with
//! contiguous seqs, and that the store keeps working.
//!
//! Two shapes of child: one appending thread per run (concurrent appenders: the group-commit
//! writer's batches) and one thread appending to every run in turn (a lone appender: its
//! commits run inline, on its own thread).
//!
//! `FLOWAI_CRASH_KILLS` sets the number of kills (default 50) of each test,
//! `FLOWAI_CRASH_SEED` the schedule's seed (printed on failure).

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use flowai_storage::{
    AppendRequest, IndexUpdate, Precondition, Record, RecordKind, RunAppend, RunId, RunMeta,
    RunStatus, Store, StoreError, StoreOptions,
};

const CHILD_ENV: &str = "FLOWAI_CRASH_CHILD";
/// How many appending threads the child runs (default: one per run).
const THREADS_ENV: &str = "FLOWAI_CRASH_CHILD_THREADS";
/// When set, the child aborts (no destructors, like a crash) after this many rounds.
const ABORT_AFTER_ENV: &str = "FLOWAI_CRASH_CHILD_ABORT_AFTER";
const RUNS: usize = 4;

fn run_id(i: usize) -> RunId {
    ulid::Ulid((0x0190_0000_0000u128 << 80) + i as u128)
}

/// The payload of `(run, seq)`: what the parent expects to read back. Sizes vary so records
/// straddle page boundaries differently.
fn payload(run: RunId, seq: u64) -> String {
    format!(
        "{{\"run\":\"{run}\",\"seq\":{seq},\"pad\":\"{}\"}}",
        "x".repeat((seq % 97) as usize * 13)
    )
}

fn kind(seq: u64) -> RecordKind {
    if seq == 1 {
        RecordKind::RunStarted
    } else {
        RecordKind::ALL[(seq % RecordKind::ALL.len() as u64) as usize]
    }
}

fn record(run: RunId, seq: u64) -> Record {
    Record {
        kind: kind(seq),
        version: 1,
        at_ms: seq as i64,
        payload: payload(run, seq),
    }
}

/// Appends records `first..first + n` of run `i`, creating the run with the first one.
fn append(store: &Store, i: usize, first: u64, n: u64) -> u64 {
    let run = run_id(i);
    let index_updates = if first == 1 {
        vec![IndexUpdate::CreateRun(RunMeta {
            run_id: run,
            tenant: "crash".into(),
            thread: format!("thread-{i}"),
            agent: "agent".into(),
            status: RunStatus::Running,
            created_at_ms: 1,
            updated_at_ms: 1,
            parent: None,
        })]
    } else {
        vec![]
    };
    let ack = store
        .append_blocking(AppendRequest {
            run: Some(RunAppend {
                run_id: run,
                expected_first_seq: Some(first),
                records: (first..first + n).map(|seq| record(run, seq)).collect(),
            }),
            index_updates,
            precondition: Precondition::None,
        })
        .unwrap();
    assert_eq!((ack.first_seq, ack.last_seq), (first, first + n - 1));
    ack.last_seq
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The child: appending threads (thread `t` appends to the runs `i` with `i % threads == t`,
/// in turn), each printing its acknowledgements.
#[test]
fn crash_child_entry() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let threads: usize = std::env::var(THREADS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(RUNS)
        .clamp(1, RUNS);
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    println!("ready");
    let threads: Vec<_> = (0..threads)
        .map(|t| {
            let store = store.clone();
            let runs: Vec<usize> = (t..RUNS).step_by(threads).collect();
            std::thread::spawn(move || {
                let mut rng = XorShift(0x2545_F491_4F6C_DD1D ^ (t as u64 + 1));
                let mut next: Vec<u64> = runs
                    .iter()
                    .map(|&i| store.last_seq(run_id(i)).unwrap() + 1)
                    .collect();
                let abort_after: Option<usize> = std::env::var(ABORT_AFTER_ENV)
                    .ok()
                    .and_then(|v| v.parse().ok());
                // Far more than a child lives to write: the parent kills it long before.
                for round in 0..1_000_000 {
                    if abort_after == Some(round) {
                        std::process::abort();
                    }
                    for (k, &i) in runs.iter().enumerate() {
                        let n = 1 + rng.below(4);
                        let last = append(&store, i, next[k], n);
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "ack {i} {last}").unwrap();
                        out.flush().unwrap();
                        next[k] = last + 1;
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// This test binary, run as the appending child on the store at `path`.
fn child_command(exe: &Path, path: &Path) -> Command {
    let mut command = Command::new(exe);
    command
        .args([
            "--exact",
            "crash_child_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, path);
    command
}

/// The store file and its write-ahead log, as bytes (`None` for a missing file).
fn files(path: &Path) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    (std::fs::read(path).ok(), std::fs::read(wal).ok())
}

/// Checks the reopened store against the acknowledgements; appends one more record per run.
/// With `shared_reads` the writer first folds the write-ahead log into the store file.
fn verify(path: &Path, acked: &mut [u64; RUNS], context: &str, shared_reads: bool) -> bool {
    // A read-only open never repairs: after a crash it either reads (the kill came before
    // anything was written) or asks for a writer open, and leaves the file as it was.
    let mut needed_recovery = false;
    if path.exists() {
        let before = files(path);
        match Store::open_read_only(path) {
            Ok(store) => {
                // A reader sees every acknowledged record too, journal frames included.
                for (i, acked) in acked.iter().enumerate() {
                    let last = store.last_seq(run_id(i)).unwrap();
                    assert!(
                        last >= *acked,
                        "{context}: a read-only open sees {last} records of run {i}, {acked} were acknowledged"
                    );
                }
                store.close().unwrap();
            }
            Err(StoreError::NeedsRecovery { .. }) => needed_recovery = true,
            Err(e) => panic!("{context}: read-only open after a crash: {e}"),
        }
        assert!(
            files(path) == before,
            "{context}: read-only open changed the store file or its log"
        );
    }
    let store = Store::open(
        path,
        StoreOptions {
            shared_reads,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    if shared_reads {
        assert!(
            files(path).1.is_none(),
            "{context}: a shared_reads writer runs without the log"
        );
    }
    for (i, acked) in acked.iter_mut().enumerate() {
        let run = run_id(i);
        let records = store.records(run, 1).unwrap();
        let last = records.len() as u64;
        assert!(
            last >= *acked,
            "{context}: run {i} has {last} records but {acked} were acknowledged"
        );
        for (n, r) in records.iter().enumerate() {
            let seq = n as u64 + 1;
            assert_eq!(r.seq, seq, "{context}: run {i} seqs not contiguous");
            assert_eq!(
                r.record,
                record(run, seq),
                "{context}: run {i} seq {seq} differs"
            );
        }
        if last > 0 {
            let info = store.run(run).unwrap().unwrap();
            assert_eq!(info.records, last);
            assert_eq!(
                info.meta.status,
                RunStatus::Interrupted,
                "{context}: run {i} left running by a dead writer"
            );
        }
        // The store keeps working after the crash.
        *acked = append(&store, i, last + 1, 1);
    }
    store.close().unwrap();
    needed_recovery
}

#[test]
fn acknowledged_records_survive_sigkill() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    kill_and_verify(RUNS, "concurrent appenders");
}

#[test]
fn acknowledged_records_of_a_lone_appender_survive_sigkill() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    kill_and_verify(1, "a lone appender");
}

/// A store left by a one-thread child that aborted (no destructors) after `rounds` rounds,
/// in a new temporary directory, with the child's output.
fn aborted_child(rounds: usize) -> (tempfile::TempDir, std::path::PathBuf, std::process::Output) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("crash.redb");
    let output = child_command(&std::env::current_exe().unwrap(), &path)
        .env(THREADS_ENV, "1")
        .env(ABORT_AFTER_ENV, rounds.to_string())
        .output()
        .unwrap();
    assert!(!output.status.success(), "the child aborts");
    (dir, path, output)
}

#[test]
fn a_writer_recovers_appends_a_crashed_writer_logged_as_journal_frames() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    // Every append is a journal frame (each run's first with its runs row), and no durable
    // commit came after the store's open.
    let (_dir, path, output) = aborted_child(12);
    let mut acked = [0u64; RUNS];
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let line = line.rsplit("... ").next().unwrap_or(line);
        if let Some(rest) = line.strip_prefix("ack ") {
            let mut parts = rest.split(' ');
            let i: usize = parts.next().unwrap().parse().unwrap();
            acked[i] = parts.next().unwrap().parse().unwrap();
        }
    }
    assert!(acked.iter().all(|&a| a > 12), "acks: {acked:?}");
    let before = files(&path);
    assert!(before.1.is_some(), "the crashed writer left its log");
    // A reader cannot apply the frames: it asks for a writer open, and changes nothing.
    assert!(matches!(
        Store::open_read_only(&path),
        Err(StoreError::NeedsRecovery { .. })
    ));
    assert!(files(&path) == before, "a read-only open changed a file");
    let writer = Store::open(&path, StoreOptions::default()).unwrap();
    for (i, acked) in acked.iter().enumerate() {
        assert_eq!(
            writer.last_seq(run_id(i)).unwrap(),
            *acked,
            "writer, run {i}"
        );
        // The runs row came back from the frame's index updates, before the open marked
        // the runs a dead writer left running.
        let info = writer.run(run_id(i)).unwrap().expect("runs row");
        assert_eq!(
            (info.meta.thread.as_str(), info.meta.status, info.records),
            (
                format!("thread-{i}").as_str(),
                RunStatus::Interrupted,
                *acked
            )
        );
    }
    writer.close().unwrap();
    assert!(files(&path).1.is_none(), "a clean close folds the log in");
    let reopened = Store::open_read_only(&path).unwrap();
    for (i, acked) in acked.iter().enumerate() {
        assert_eq!(
            reopened.last_seq(run_id(i)).unwrap(),
            *acked,
            "after the fold, run {i}"
        );
    }
}

#[test]
fn a_writer_reopens_a_crashed_store_without_rebuilding_the_allocator_state() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    // The open's commit and one append in 256 are durable commits, the others journal
    // frames: 280 appends.
    let (_dir, path, _) = aborted_child(70);
    let writer = Store::open(&path, StoreOptions::default()).unwrap();
    // The durable commits recorded redb's allocator state: reopening loads it rather than
    // reading every table (what takes time in a large store).
    assert!(
        !writer.repaired_at_open(),
        "the open rebuilt the allocator state"
    );
    for i in 0..RUNS {
        assert!(writer.last_seq(run_id(i)).unwrap() > 70, "run {i}");
    }
    writer.close().unwrap();
}

/// Kills a child with `threads` appending threads at random moments, verifying the store
/// after each kill.
fn kill_and_verify(threads: usize, shape: &str) {
    let kills: usize = std::env::var("FLOWAI_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let seed: u64 = std::env::var("FLOWAI_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let mut rng = XorShift(seed);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("crash.redb");
    let exe = std::env::current_exe().unwrap();
    let mut acked = [0u64; RUNS];
    let mut total_acks = 0usize;
    let mut recoveries = 0usize;
    let started = std::time::Instant::now();

    for k in 0..kills {
        let context = format!("{shape}: seed {seed}, kill {k}");
        let mut child = child_command(&exe, &path)
            .env(THREADS_ENV, threads.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stderr = child.stderr.take().unwrap();
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
            s
        });

        // One kill in five lands anywhere, start-up and crash recovery included; the others
        // after the child is appending.
        let mut pending = Vec::new();
        if rng.below(5) != 0 {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                match rx.recv_timeout(left) {
                    // libtest prints "test crash_child_entry ... " before the test's own output.
                    Ok(line) if line.ends_with("ready") => break,
                    Ok(line) => pending.push(line),
                    Err(_) => {
                        let _ = child.kill();
                        panic!("{context}: child never became ready");
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(1 + rng.below(40)));
        } else {
            std::thread::sleep(Duration::from_millis(rng.below(30)));
        }
        child.kill().unwrap();
        let status = child.wait().unwrap();
        reader.join().unwrap();
        let stderr = err_reader.join().unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                status.signal(),
                Some(libc::SIGKILL),
                "{context}: child ended on its own: {stderr}"
            );
        }
        pending.extend(rx.try_iter());
        for line in pending {
            let Some(at) = line.find("ack ") else {
                continue;
            };
            let mut parts = line[at + 4..].split_whitespace();
            let (Some(Ok(i)), Some(Ok(seq))) = (
                parts.next().map(str::parse::<usize>),
                parts.next().map(str::parse::<u64>),
            ) else {
                panic!("{context}: garbled acknowledgement {line:?}");
            };
            acked[i] = acked[i].max(seq);
            total_acks += 1;
        }
        recoveries += usize::from(verify(&path, &mut acked, &context, k % 4 == 3));
    }
    eprintln!(
        "crash test, {shape}: {kills} kills ({recoveries} left a file needing recovery), {total_acks} acknowledged appends, {} records, {:?} (seed {seed})",
        acked.iter().sum::<u64>(),
        started.elapsed()
    );
}

/// A process killed while it creates a new store leaves either no store or a whole one
/// that opens (the file is initialized under a temporary name and linked into place).
#[test]
fn a_store_killed_while_created_is_absent_or_opens() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut created = 0;
    for round in 0..40 {
        let path = dir.path().join(format!("new-{round}.redb"));
        let mut child = child_command(&exe, &path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Process start-up takes a few milliseconds; the kill lands before, during or
        // after the store's creation.
        std::thread::sleep(Duration::from_micros(rng.below(12_000)));
        child.kill().unwrap();
        child.wait().unwrap();
        if path.exists() {
            created += 1;
            let store = Store::open(&path, StoreOptions::default())
                .unwrap_or_else(|e| panic!("round {round}: a killed creation left {e}"));
            store.close().unwrap();
        }
    }
    assert!(created > 0, "no kill landed after a creation");
}
