//! Behaviour of the store through its public API, in memory and on disk.

#![allow(clippy::unwrap_used)]

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::Command;

use flowai_storage::{
    AppendAck, AppendRequest, ApprovalRow, ApprovalStatus, Durability, IndexUpdate, ManualClock,
    PlanRow, Precondition, Record, RecordKind, ReferenceEntry, RunAppend, RunFilter, RunId,
    RunMeta, RunStatus, Store, StoreError, StoreOptions, reference_id,
};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde_json::json;

fn rec(kind: RecordKind, payload: &str) -> Record {
    Record {
        kind,
        version: 1,
        at_ms: 1_000,
        payload: payload.to_owned(),
    }
}

fn meta(run: RunId, tenant: &str, thread: &str, status: RunStatus) -> RunMeta {
    RunMeta {
        run_id: run,
        tenant: tenant.into(),
        thread: thread.into(),
        agent: "coordinator".into(),
        status,
        created_at_ms: 5,
        updated_at_ms: 5,
        parent: None,
    }
}

fn start_run(
    store: &Store,
    run: RunId,
    tenant: &str,
    thread: &str,
    status: RunStatus,
) -> AppendAck {
    start_run_with(store, run, "{}", meta(run, tenant, thread, status))
}

/// Creates `run` with a RunStarted record of `payload`.
fn start_run_with(store: &Store, run: RunId, payload: &str, meta: RunMeta) -> AppendAck {
    store
        .append_blocking(AppendRequest {
            run: Some(RunAppend {
                run_id: run,
                expected_first_seq: Some(1),
                records: vec![rec(RecordKind::RunStarted, payload)],
            }),
            index_updates: vec![IndexUpdate::CreateRun(meta)],
            precondition: Precondition::RunAbsent(run),
        })
        .unwrap()
}

/// Appends one StreamEmitted record with `payload` to `run`.
fn append_text(store: &Store, run: RunId, payload: &str) -> AppendAck {
    store
        .append_blocking(AppendRequest {
            run: Some(RunAppend {
                run_id: run,
                expected_first_seq: None,
                records: vec![rec(RecordKind::StreamEmitted, payload)],
            }),
            ..Default::default()
        })
        .unwrap()
}

/// The leaf pages of every tree of the (closed) store at `path`, from redb's statistics.
fn leaf_pages(path: &Path) -> u64 {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    txn.stats().unwrap().leaf_pages()
}

fn append(store: &Store, run: RunId, n: usize) -> Result<AppendAck, StoreError> {
    store.append_blocking(AppendRequest {
        run: Some(RunAppend {
            run_id: run,
            expected_first_seq: None,
            records: (0..n)
                .map(|i| rec(RecordKind::StreamEmitted, &format!("{{\"i\":{i}}}")))
                .collect(),
        }),
        ..Default::default()
    })
}

fn index_only(update: IndexUpdate) -> AppendRequest {
    AppendRequest {
        run: None,
        index_updates: vec![update],
        precondition: Precondition::None,
    }
}

fn tmp() -> tempfile::TempDir {
    // Under the target dir: a real disk, not a tmpfs.
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

#[test]
fn records_round_trip_with_contiguous_seqs() {
    let store = Store::in_memory().unwrap();
    let run = RunId::generate();
    assert_eq!(
        start_run(&store, run, "t", "th", RunStatus::Running),
        AppendAck {
            first_seq: 1,
            last_seq: 1
        }
    );
    assert_eq!(
        append(&store, run, 3).unwrap(),
        AppendAck {
            first_seq: 2,
            last_seq: 4
        }
    );
    assert_eq!(
        append(&store, run, 0).unwrap(),
        AppendAck {
            first_seq: 0,
            last_seq: 0
        }
    );
    let records = store.records(run, 3).unwrap();
    assert_eq!(
        records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![3, 4]
    );
    assert_eq!(records[0].record.payload, "{\"i\":1}");
    assert_eq!(store.records(run, 0).unwrap().len(), 4);
    assert_eq!(store.last_seq(run).unwrap(), 4);
    assert_eq!(store.last_seq(RunId::generate()).unwrap(), 0);

    let mut seen = Vec::new();
    store
        .scan_records(run, 1, &mut |seq, view| {
            seen.push((seq, view.kind));
            if seq == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(
        seen,
        vec![(1, RecordKind::RunStarted), (2, RecordKind::StreamEmitted)]
    );
}

#[test]
fn seq_conflict_and_run_exists() {
    let store = Store::in_memory().unwrap();
    let run = RunId::generate();
    start_run(&store, run, "t", "th", RunStatus::Running);
    let err = store
        .append_blocking(AppendRequest {
            run: Some(RunAppend {
                run_id: run,
                expected_first_seq: Some(1),
                records: vec![rec(RecordKind::StreamEmitted, "{}")],
            }),
            ..Default::default()
        })
        .unwrap_err();
    assert!(
        matches!(err, StoreError::SeqConflict { run: r, expected: 1, actual: 2 } if r == run),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("expected the next record to get seq 1, but it would get seq 2")
    );

    let again = store.append_blocking(AppendRequest {
        run: None,
        index_updates: vec![IndexUpdate::CreateRun(meta(
            run,
            "t",
            "th",
            RunStatus::Running,
        ))],
        precondition: Precondition::RunAbsent(run),
    });
    assert!(matches!(again, Err(StoreError::RunExists { run: r }) if r == run));
    // CreateRun alone also refuses an existing run.
    let again = store.append_blocking(index_only(IndexUpdate::CreateRun(meta(
        run,
        "t",
        "th",
        RunStatus::Running,
    ))));
    assert!(matches!(again, Err(StoreError::RunExists { .. })));
    assert_eq!(store.last_seq(run).unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_async_appends_get_disjoint_contiguous_seqs() {
    let store = Store::in_memory().unwrap();
    let run = RunId::generate();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            for i in 0..20 {
                let ack = store
                    .append(AppendRequest {
                        run: Some(RunAppend {
                            run_id: run,
                            expected_first_seq: None,
                            records: vec![
                                rec(RecordKind::StreamEmitted, &format!("[{t},{i},0]")),
                                rec(RecordKind::StreamEmitted, &format!("[{t},{i},1]")),
                            ],
                        }),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                acks.push(ack);
            }
            acks
        }));
    }
    let mut firsts = Vec::new();
    for task in tasks {
        for ack in task.await.unwrap() {
            assert_eq!(ack.last_seq, ack.first_seq + 1);
            firsts.push(ack.first_seq);
        }
    }
    firsts.sort_unstable();
    assert_eq!(firsts, (0..320).map(|i| 1 + 2 * i).collect::<Vec<_>>());
    let records = store.records(run, 1).unwrap();
    assert_eq!(records.len(), 640);
    for pair in records.chunks(2) {
        // Both records of one request are adjacent.
        assert_eq!(
            pair[0].record.payload.trim_end_matches("0]"),
            pair[1].record.payload.trim_end_matches("1]")
        );
    }
}

/// A file store used by one appender (inline commits), then by many at once (the writer's
/// group commit), then by one again: every record is there after reopening, in order, with
/// contiguous seqs, whichever path committed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_store_switching_between_one_and_many_appenders_keeps_every_record() {
    let dir = tmp();
    let path = dir.path().join("switch.redb");
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let lone = RunId::generate();
    let shared = RunId::generate();
    fn one(run: RunId, expected: Option<u64>, payload: String) -> AppendRequest {
        AppendRequest {
            run: Some(RunAppend {
                run_id: run,
                expected_first_seq: expected,
                records: vec![rec(RecordKind::StreamEmitted, &payload)],
            }),
            ..Default::default()
        }
    }
    async fn lone_phase(store: &Store, run: RunId, next: &mut u64) {
        for _ in 0..20 {
            let ack = store
                .append(one(run, Some(*next), format!("{}", *next)))
                .await
                .unwrap();
            assert_eq!(ack.first_seq, *next);
            *next += 1;
        }
    }
    let mut next = 1;
    lone_phase(&store, lone, &mut next).await;

    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let own = RunId::generate();
                let mut shared_firsts = Vec::new();
                for i in 1..=25u64 {
                    let ack = store
                        .append(one(own, Some(i), format!("{i}")))
                        .await
                        .unwrap();
                    assert_eq!(ack.first_seq, i);
                    let ack = store
                        .append(one(shared, None, format!("[{t},{i}]")))
                        .await
                        .unwrap();
                    shared_firsts.push(ack.first_seq);
                }
                (own, shared_firsts)
            })
        })
        .collect();
    let mut owns = Vec::new();
    let mut shared_firsts = Vec::new();
    for task in tasks {
        let (own, firsts) = task.await.unwrap();
        owns.push(own);
        shared_firsts.extend(firsts);
    }
    lone_phase(&store, lone, &mut next).await;
    store.close().unwrap();
    drop(store);

    let store = Store::open_read_only(&path).unwrap();
    let payloads = |run: RunId| -> Vec<(u64, String)> {
        store
            .records(run, 1)
            .unwrap()
            .into_iter()
            .map(|r| (r.seq, r.record.payload))
            .collect()
    };
    let numbered = |n: u64| (1..=n).map(|i| (i, format!("{i}"))).collect::<Vec<_>>();
    assert_eq!(payloads(lone), numbered(40));
    for own in owns {
        assert_eq!(payloads(own), numbered(25));
    }
    shared_firsts.sort_unstable();
    assert_eq!(shared_firsts, (1..=400).collect::<Vec<_>>());
    let shared_records = payloads(shared);
    assert_eq!(shared_records.len(), 400);
    // Each task's records of the shared run are in the order it appended them.
    for t in 0..16 {
        let mine: Vec<u64> = shared_records
            .iter()
            .filter_map(|(_, p)| {
                let v: Vec<u64> = serde_json::from_str(p).unwrap();
                (v[0] == t).then_some(v[1])
            })
            .collect();
        assert_eq!(mine, (1..=25).collect::<Vec<_>>());
    }
}

#[test]
fn runs_index_lists_newest_first_by_tenant_thread_and_status() {
    let store = Store::in_memory().unwrap();
    let mut runs = Vec::new();
    for i in 0..6u128 {
        // Increasing ULIDs: later ones are newer.
        let run = ulid::Ulid((1_700_000_000_000u128 + i) << 80);
        let (tenant, thread) = match i % 3 {
            0 => ("a", "x"),
            1 => ("a", "y"),
            _ => ("b", "x"),
        };
        start_run(&store, run, tenant, thread, RunStatus::Running);
        runs.push(run);
    }
    store
        .append_blocking(index_only(IndexUpdate::SetRunStatus {
            run_id: runs[3],
            status: RunStatus::Completed,
            at_ms: 77,
        }))
        .unwrap();

    let ids = |f: RunFilter| {
        store
            .list_runs(&f)
            .unwrap()
            .into_iter()
            .map(|r| r.meta.run_id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(RunFilter::default()),
        runs.iter().rev().copied().collect::<Vec<_>>()
    );
    assert_eq!(
        ids(RunFilter {
            tenant: Some("a".into()),
            ..Default::default()
        }),
        vec![runs[4], runs[3], runs[1], runs[0]]
    );
    assert_eq!(
        ids(RunFilter {
            tenant: Some("a".into()),
            thread: Some("x".into()),
            ..Default::default()
        }),
        vec![runs[3], runs[0]]
    );
    assert_eq!(
        ids(RunFilter {
            tenant: Some("a".into()),
            status: Some(RunStatus::Running),
            limit: 2,
            ..Default::default()
        }),
        vec![runs[4], runs[1]]
    );
    assert_eq!(
        ids(RunFilter {
            status: Some(RunStatus::Completed),
            ..Default::default()
        }),
        vec![runs[3]]
    );
    assert_eq!(
        ids(RunFilter {
            thread: Some("x".into()),
            limit: 1,
            ..Default::default()
        }),
        vec![runs[5]]
    );
    assert_eq!(
        ids(RunFilter {
            tenant: Some("zz".into()),
            ..Default::default()
        }),
        Vec::<RunId>::new()
    );
    // A tenant that is a prefix of another does not see its runs.
    assert_eq!(
        ids(RunFilter {
            tenant: Some("".into()),
            ..Default::default()
        }),
        Vec::<RunId>::new()
    );

    let info = store.run(runs[3]).unwrap().unwrap();
    assert_eq!(info.meta.status, RunStatus::Completed);
    assert_eq!(info.meta.updated_at_ms, 77);
    assert_eq!(info.records, 1);
    assert_eq!(store.run(RunId::generate()).unwrap(), None);
}

#[test]
fn approvals_plans_specs_and_memory() {
    let store = Store::in_memory().unwrap();
    let run = RunId::generate();
    start_run(&store, run, "t", "th", RunStatus::Suspended);
    for id in ["ap-2", "ap-1"] {
        store
            .append_blocking(index_only(IndexUpdate::PutApproval(ApprovalRow {
                id: id.into(),
                tenant: "t".into(),
                run_id: run,
                seq: 1,
                status: ApprovalStatus::Pending,
            })))
            .unwrap();
    }
    assert_eq!(
        store.run(run).unwrap().unwrap().pending_approvals,
        vec!["ap-1", "ap-2"]
    );

    // Deciding: only while still pending.
    let decide = |status| AppendRequest {
        run: Some(RunAppend {
            run_id: run,
            expected_first_seq: None,
            records: vec![rec(RecordKind::ApprovalDecided, "{}")],
        }),
        index_updates: vec![IndexUpdate::SetApprovalStatus {
            id: "ap-1".into(),
            status,
        }],
        precondition: Precondition::ApprovalPending("ap-1".into()),
    };
    store
        .append_blocking(decide(ApprovalStatus::Approved))
        .unwrap();
    let err = store
        .append_blocking(decide(ApprovalStatus::Rejected))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("approval \"ap-1\" is approved, not pending"),
        "{err}"
    );
    assert_eq!(store.last_seq(run).unwrap(), 2);
    assert_eq!(
        store.approval("ap-1").unwrap().unwrap().status,
        ApprovalStatus::Approved
    );
    assert_eq!(store.approval("nope").unwrap(), None);
    assert_eq!(store.approvals_of_run(run).unwrap().len(), 2);
    assert_eq!(
        store.run(run).unwrap().unwrap().pending_approvals,
        vec!["ap-2"]
    );

    let plan = PlanRow {
        tenant: "t".into(),
        plan_id: "p1".into(),
        version: 2,
        status: "draft".into(),
        body: "{\"steps\":[]}".into(),
        run_id: run,
        seq: 2,
    };
    store
        .append_blocking(index_only(IndexUpdate::PutPlan(plan.clone())))
        .unwrap();
    assert_eq!(store.plan("t", "p1").unwrap(), Some(plan));
    assert_eq!(store.plan("other", "p1").unwrap(), None);

    store
        .append_blocking(index_only(IndexUpdate::PutSpec {
            hash: "h".into(),
            json: "{\"a\":1}".into(),
        }))
        .unwrap();
    store
        .append_blocking(index_only(IndexUpdate::PutSpec {
            hash: "h".into(),
            json: "{\"a\":2}".into(),
        }))
        .unwrap();
    assert_eq!(store.spec("h").unwrap().as_deref(), Some("{\"a\":1}"));
    assert_eq!(store.spec("x").unwrap(), None);

    let mem = |entries: &[&str], agent: &str| {
        index_only(IndexUpdate::AppendMemory {
            tenant: "t".into(),
            thread: "th".into(),
            agent: agent.into(),
            entries: entries.iter().map(|e| e.to_string()).collect(),
        })
    };
    store.append_blocking(mem(&["1", "2"], "a")).unwrap();
    store.append_blocking(mem(&["3"], "a")).unwrap();
    store.append_blocking(mem(&["x"], "ab")).unwrap();
    assert_eq!(store.memory("t", "th", "a").unwrap(), vec!["1", "2", "3"]);
    assert_eq!(store.memory("t", "th", "ab").unwrap(), vec!["x"]);
    assert!(store.memory("t", "other", "a").unwrap().is_empty());
}

fn reference(
    tenant: &str,
    value: serde_json::Value,
    created: i64,
    expires: Option<i64>,
) -> ReferenceEntry {
    ReferenceEntry {
        tenant: tenant.into(),
        kind: "doc".into(),
        id: reference_id(tenant, "doc", &value).unwrap(),
        value: value.to_string(),
        glimpse: "\"g\"".into(),
        created_at_ms: created,
        expires_at_ms: expires,
    }
}

#[tokio::test]
async fn references_expire_are_tenant_scoped_and_gc_counts() {
    let clock = ManualClock::new(1_000);
    let store = Store::in_memory().unwrap();
    let short = reference(
        "t1",
        json!({"v": 1}),
        clock.now_ms(),
        Some(clock.now_ms() + 500),
    );
    let forever = reference("t1", json!({"v": 2}), clock.now_ms(), None);
    let other = reference(
        "t2",
        json!({"v": 1}),
        clock.now_ms(),
        Some(clock.now_ms() + 100),
    );
    for e in [&short, &forever, &other] {
        store
            .append(index_only(IndexUpdate::PutReference(e.clone())))
            .await
            .unwrap();
    }
    let get = |tenant: &str, id: &str, now| store.reference(tenant, "doc", id, now).unwrap();

    assert_eq!(get("t1", &short.id, clock.now_ms()), Some(short.clone()));
    // Another tenant's id is indistinguishable from a missing one.
    assert_eq!(get("t2", &short.id, clock.now_ms()), None);
    assert_eq!(get("t1", &other.id, clock.now_ms()), None);
    assert_eq!(get("t1", "0000", clock.now_ms()), None);

    clock.advance(499);
    assert!(get("t1", &short.id, clock.now_ms()).is_some());
    clock.advance(1);
    assert_eq!(
        get("t1", &short.id, clock.now_ms()),
        None,
        "expired at now >= expires_at"
    );
    assert!(get("t1", &forever.id, clock.now_ms()).is_some());

    // Re-creating the same value overwrites expiry: the old expiry no longer deletes it.
    let renewed = reference(
        "t1",
        json!({"v": 1}),
        clock.now_ms(),
        Some(clock.now_ms() + 10_000),
    );
    assert_eq!(renewed.id, short.id);
    store
        .append(index_only(IndexUpdate::PutReference(renewed.clone())))
        .await
        .unwrap();
    assert_eq!(get("t1", &short.id, clock.now_ms()), Some(renewed));

    // Only `other` (t2) is expired now.
    assert_eq!(store.gc_references(clock.now_ms()).await.unwrap(), 1);
    assert_eq!(store.gc_references(clock.now_ms()).await.unwrap(), 0);
    clock.advance(10_000);
    assert_eq!(store.gc_references(clock.now_ms()).await.unwrap(), 1);
    assert!(get("t1", &forever.id, i64::MAX).is_some());
    assert_eq!(store.gc_references(i64::MAX).await.unwrap(), 0);
}

#[test]
fn eventual_durability_acknowledges_and_persists_at_close() {
    let dir = tmp();
    let path = dir.path().join("eventual.redb");
    let run = RunId::generate();
    {
        let store = Store::open(
            &path,
            StoreOptions {
                durability: Durability::Eventual,
                shared_reads: false,
            },
        )
        .unwrap();
        assert_eq!(store.durability(), Durability::Eventual);
        start_run(&store, run, "t", "th", RunStatus::Completed);
        for _ in 0..10 {
            append(&store, run, 2).unwrap();
        }
        store.close().unwrap();
    }
    let store = Store::open_read_only(&path).unwrap();
    assert_eq!(store.last_seq(run).unwrap(), 21);
}

fn wal_of(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// Commits go to `<store>-wal` while the store is open; a clean close folds them into the
/// store file and removes the log, so a closed store is one self-contained file.
#[test]
fn a_closed_store_is_one_file_and_its_commits_are_in_it() {
    let dir = tmp();
    let path = dir.path().join("one-file.redb");
    let run = RunId::generate();
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    start_run(&store, run, "t", "th", RunStatus::Completed);
    for _ in 0..300 {
        append(&store, run, 3).unwrap();
    }
    assert!(wal_of(&path).exists(), "an open store writes its log");
    store.close().unwrap();
    assert!(!wal_of(&path).exists(), "a clean close removes the log");

    // redb alone, knowing nothing of the log, reads every record from the store file.
    let db = redb::Database::open(&path).unwrap();
    let txn = db.begin_read().unwrap();
    let journal: redb::TableDefinition<&[u8; 24], &[u8]> = redb::TableDefinition::new("journal");
    // 901 records and the run's sentinel.
    assert_eq!(txn.open_table(journal).unwrap().len().unwrap(), 902);
}

const JOURNAL: redb::TableDefinition<&[u8; 24], &[u8]> = redb::TableDefinition::new("journal");
const META: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");

fn format_version_of(path: &Path) -> u64 {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    txn.open_table(META)
        .unwrap()
        .get("format_version")
        .unwrap()
        .unwrap()
        .value()
}

fn set_format_version(path: &Path, version: u64) {
    let db = redb::Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(META)
        .unwrap()
        .insert("format_version", version)
        .unwrap();
    txn.commit().unwrap();
}

/// Runs that take turns appending, each started with a record larger than a page (a long
/// prompt), as concurrent runs do: their small records still share leaves. Without the run
/// sentinel every small record took a 4 KiB leaf of its own here (1,280 leaves, 6.5 MB).
#[test]
fn interleaved_runs_keep_their_small_records_packed() {
    let dir = tmp();
    let path = dir.path().join("interleaved.redb");
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let prompt = format!("{{\"prompt\":\"{}\"}}", "p".repeat(8_000));
    let runs: Vec<RunId> = (0..32).map(|_| RunId::generate()).collect();
    for run in &runs {
        start_run_with(
            &store,
            *run,
            &prompt,
            meta(*run, "t", "th", RunStatus::Running),
        );
    }
    let small = format!("{{\"text\":\"{}\"}}", "s".repeat(300));
    for _ in 0..40 {
        for run in &runs {
            append_text(&store, *run, &small);
        }
    }
    for run in &runs {
        assert_eq!(store.last_seq(*run).unwrap(), 41);
        assert_eq!(store.records(*run, 1).unwrap().len(), 41);
    }
    store.close().unwrap();

    let small_records = 32 * 40;
    // ~350 bytes each: a 4 KiB leaf holds about ten, half of that after even splits. The
    // 32 large records take one leaf each.
    let leaves = leaf_pages(&path);
    assert!(
        leaves < 32 + small_records / 3,
        "{leaves} leaf pages for {small_records} small records"
    );
}

/// Threads whose memory opens with a large entry take turns appending small ones, as
/// concurrent conversations do: the small entries share leaf pages. The journal needed its
/// run sentinel for that (FORMAT.md, "Key encodings"); the memory table, whose keys are of
/// variable length, measured 192 leaves here without one. This guards that against a
/// change in redb.
#[test]
fn interleaved_threads_keep_their_small_memory_entries_packed() {
    let dir = tmp();
    let path = dir.path().join("memory.redb");
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let append = |thread: usize, entry: String| {
        store
            .append_blocking(AppendRequest {
                index_updates: vec![IndexUpdate::AppendMemory {
                    tenant: "t".into(),
                    thread: format!("thread-{thread:03}"),
                    agent: "a".into(),
                    entries: vec![entry],
                }],
                ..Default::default()
            })
            .unwrap();
    };
    for thread in 0..32 {
        append(thread, "p".repeat(8_000));
    }
    for _ in 0..40 {
        for thread in 0..32 {
            append(thread, "s".repeat(300));
        }
    }
    store.close().unwrap();

    let small_entries = 32 * 40;
    let leaves = leaf_pages(&path);
    assert!(
        leaves < 32 + small_entries / 3,
        "{leaves} leaf pages for {small_entries} small memory entries"
    );
}

/// A damaged store file gives errors, never a panic: for each of a set of damages (bytes
/// flipped over two pages, at every other page of the file), opening as a reader and as a
/// writer, then reading every run, either works or fails with an error. Where redb would
/// panic on the bytes the error is `Corrupt`, which some of the damages must reach.
#[test]
fn a_damaged_file_gives_errors_not_panics() {
    let dir = tmp();
    let pristine = dir.path().join("pristine.redb");
    let mut runs = Vec::new();
    {
        let store = Store::open(&pristine, StoreOptions::default()).unwrap();
        let text = format!("{{\"text\":\"{}\"}}", "s".repeat(400));
        for r in 0..3 {
            let run = RunId::generate();
            runs.push(run);
            let first = format!("{{\"n\":{r}}}");
            start_run_with(
                &store,
                run,
                &first,
                meta(run, "t", "th", RunStatus::Running),
            );
            for _ in 0..30 {
                append_text(&store, run, &text);
            }
        }
        store.close().unwrap();
    }
    let bytes = std::fs::read(&pristine).unwrap();
    let pages = bytes.len() / 4096;
    let (mut caught, mut worked) = (0, 0);
    for first in (1..pages).step_by(2) {
        let mut damaged = bytes.clone();
        for at in (first * 4096..((first + 2) * 4096).min(damaged.len())).step_by(7) {
            damaged[at] ^= 0xA5;
        }
        let path = dir.path().join(format!("damaged-{first}.redb"));
        std::fs::write(&path, &damaged).unwrap();
        for writer in [false, true] {
            let opened = if writer {
                Store::open(&path, StoreOptions::default())
            } else {
                Store::open_read_only(&path)
            };
            let mut outcomes = vec![opened.as_ref().map(|_| ()).map_err(ToString::to_string)];
            if let Ok(store) = &opened {
                outcomes.push(
                    store
                        .list_runs(&RunFilter::default())
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                );
                for run in &runs {
                    outcomes.push(
                        store
                            .records(*run, 1)
                            .map(|_| ())
                            .map_err(|e| e.to_string()),
                    );
                    outcomes.push(store.run(*run).map(|_| ()).map_err(|e| e.to_string()));
                }
            }
            for outcome in outcomes {
                match outcome {
                    Ok(()) => worked += 1,
                    Err(e) if e.contains("could not read its pages") => {
                        assert!(e.contains(&format!("damaged-{first}.redb")), "{e}");
                        caught += 1;
                    }
                    Err(_) => {}
                }
            }
            if let Ok(store) = opened {
                let _ = store.close();
            }
        }
    }
    assert!(
        caught > 0,
        "no damage reached a panic of redb ({worked} reads worked)"
    );
    assert!(worked > 0);
}

/// A panic of the caller's own callback in `scan_records` stays a panic: only redb's on
/// damaged pages becomes `Corrupt`.
#[test]
fn a_scan_callbacks_panic_is_not_taken_for_a_damaged_page() {
    let store = Store::in_memory().unwrap();
    let run = RunId::generate();
    start_run_with(&store, run, "{}", meta(run, "t", "th", RunStatus::Running));
    let scanned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        store.scan_records(run, 1, &mut |_, _| panic!("the caller's own bug"))
    }));
    let panic = scanned.expect_err("the callback's panic went on unwinding");
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"the caller's own bug"));
    assert_eq!(
        store.records(run, 1).unwrap().len(),
        1,
        "the store still reads"
    );
}

/// `Store::check` reads an intact store through, and finds a damaged page of a journal,
/// which a plain read may not notice.
#[test]
fn check_verifies_every_page_and_every_journal() {
    let dir = tmp();
    let path = dir.path().join("checked.redb");
    let marker = "m".repeat(600);
    let mut runs = Vec::new();
    {
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        for r in 0..3 {
            let run = RunId::generate();
            runs.push(run);
            start_run_with(
                &store,
                run,
                &format!("{{\"n\":{r}}}"),
                meta(run, "t", "th", RunStatus::Running),
            );
            for i in 0..20 {
                let text = format!("{{\"text\":\"{marker}-{r}-{i}\"}}");
                append_text(&store, run, &text);
            }
        }
        store.close().unwrap();
    }
    let mut seen = Vec::new();
    let report =
        Store::check_with_progress(&path, &mut |done, total| seen.push((done, total))).unwrap();
    assert_eq!(seen, [(0, 3), (1, 3), (2, 3), (3, 3)]);
    assert_eq!(report.runs, 3);
    assert_eq!(report.records, 3 * 21);
    assert!(!report.allocator_rebuilt);

    // Held in this process: refused, and the holder's store stays open.
    let held = Store::open(&path, StoreOptions::default()).unwrap();
    assert!(Store::is_open_in_this_process(&path));
    assert!(matches!(
        Store::check(&path),
        Err(StoreError::Locked { .. })
    ));
    append_text(&held, runs[0], "{}");
    held.close().unwrap();
    assert!(!Store::is_open_in_this_process(&path));

    // One byte changed inside a record of run 1, in the page that holds it.
    let mut bytes = std::fs::read(&path).unwrap();
    let needle = format!("{marker}-1-7");
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .expect("the record's bytes are in the file");
    bytes[at + 10] = b'M';
    std::fs::write(&path, &bytes).unwrap();
    match Store::check(&path) {
        Err(StoreError::Corrupt {
            location, detail, ..
        }) => {
            assert_eq!(location, "the page checksums", "{detail}");
        }
        other => panic!("a damaged page passed the check: {other:?}"),
    }
    assert!(matches!(
        Store::check(dir.path().join("missing.redb")),
        Err(StoreError::NotFound { .. })
    ));
}

/// Each run's range in `journal` opens with an empty entry at seq 0, which readers skip.
#[test]
fn a_run_starts_with_its_sentinel() {
    let dir = tmp();
    let path = dir.path().join("sentinel.redb");
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let run = RunId::generate();
    let started = serde_json::to_string(&flowai_storage::payloads::RunStarted {
        tenant: "t".into(),
        thread: "th".into(),
        agent: "a".into(),
        entry: "query".into(),
        prompt: "hello".into(),
        spec_hash: "h".into(),
        interpreter: "noop".into(),
        parent: None,
    })
    .unwrap();
    start_run_with(
        &store,
        run,
        &started,
        meta(run, "t", "th", RunStatus::Running),
    );
    append(&store, run, 2).unwrap();
    let seqs: Vec<u64> = store
        .records(run, 0)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
    // The index rebuild reads the whole table and must not take the sentinel for a record.
    store.rebuild_indexes().unwrap();
    let info = store.run(run).unwrap().unwrap();
    assert_eq!(info.meta.status, RunStatus::Interrupted);
    assert_eq!(info.records, 3);
    store.close().unwrap();

    let db = redb::Database::open(&path).unwrap();
    let txn = db.begin_read().unwrap();
    let journal = txn.open_table(JOURNAL).unwrap();
    let keys: Vec<[u8; 24]> = journal
        .iter()
        .unwrap()
        .map(|entry| *entry.unwrap().0.value())
        .collect();
    assert_eq!(keys.len(), 4);
    assert_eq!(&keys[0][..16], &run.0.to_be_bytes());
    assert_eq!(&keys[0][16..], &0u64.to_be_bytes());
    assert!(journal.get(&keys[0]).unwrap().unwrap().value().is_empty());
}

/// A store of format version 1 (no sentinels, no cancellation requests) opens: read-only
/// as it is, and a writer marks it the current version, which older builds refuse. Its
/// runs read and continue as before. The fixture is a store an older build wrote, kept as
/// it was (never re-blessed).
#[test]
fn a_version_1_store_opens_and_a_writer_marks_it_the_current_version() {
    let dir = tmp();
    let path = dir.path().join("v1.redb");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/journals/agent_invoked_v1.redb"),
        &path,
    )
    .unwrap();
    assert_eq!(format_version_of(&path), 1);

    let read_only = Store::open_read_only(&path).unwrap();
    let runs = read_only.list_runs(&RunFilter::default()).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(
        runs[0].cancel_requested_at_ms, None,
        "a row without the field"
    );
    let run = runs[0].meta.run_id;
    let last = read_only.last_seq(run).unwrap();
    assert_eq!(read_only.records(run, 1).unwrap().len() as u64, last);
    drop(read_only);
    assert_eq!(format_version_of(&path), 1, "a reader changes nothing");

    let store = Store::open(&path, StoreOptions::default()).unwrap();
    append(&store, run, 1).unwrap();
    assert_eq!(store.last_seq(run).unwrap(), last + 1);
    let fresh = RunId::generate();
    start_run(&store, fresh, "t", "th", RunStatus::Running);
    store.close().unwrap();
    assert_eq!(format_version_of(&path), 3);

    let store = Store::open_read_only(&path).unwrap();
    assert_eq!(store.records(run, 1).unwrap().len() as u64, last + 1);
    assert_eq!(store.records(fresh, 1).unwrap().len(), 1);
}

/// A store written by a newer build is refused, read-only too, rather than misread.
#[test]
fn a_store_of_a_newer_format_is_refused() {
    let dir = tmp();
    let path = dir.path().join("newer.redb");
    Store::open(&path, StoreOptions::default())
        .unwrap()
        .close()
        .unwrap();
    set_format_version(&path, 4);
    for opened in [
        Store::open(&path, StoreOptions::default()).map(drop),
        Store::open_read_only(&path).map(drop),
    ] {
        match opened {
            Err(StoreError::UnsupportedFormat {
                found: 4,
                supported: 3,
                ..
            }) => {}
            other => panic!("expected UnsupportedFormat, got {other:?}"),
        }
    }
    assert_eq!(format_version_of(&path), 4);
}

/// A cancellation request is kept in the run's row across status changes and a reopen,
/// until the run finishes, and is refused for a run that does not exist.
#[test]
fn a_cancellation_request_is_durable_in_the_runs_row() {
    let dir = tmp();
    let path = dir.path().join("cancel.redb");
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let (asked, finished, never) = (RunId::generate(), RunId::generate(), RunId::generate());
    start_run(&store, asked, "t", "th", RunStatus::Running);
    start_run(&store, finished, "t", "th", RunStatus::Completed);
    start_run(&store, never, "t", "th", RunStatus::Running);
    for run in [asked, finished] {
        store
            .append_blocking(index_only(IndexUpdate::RequestCancel {
                run_id: run,
                at_ms: 42,
            }))
            .unwrap();
    }
    // A second request keeps the first one's time.
    store
        .append_blocking(index_only(IndexUpdate::RequestCancel {
            run_id: asked,
            at_ms: 43,
        }))
        .unwrap();
    store
        .append_blocking(index_only(IndexUpdate::SetRunStatus {
            run_id: asked,
            status: RunStatus::Interrupted,
            at_ms: 50,
        }))
        .unwrap();
    let missing = RunId::generate();
    match store.append_blocking(index_only(IndexUpdate::RequestCancel {
        run_id: missing,
        at_ms: 42,
    })) {
        Err(StoreError::PreconditionFailed { what }) => assert_eq!(
            what,
            format!(
                "cannot record a cancellation request for run {missing}: the run does not exist"
            )
        ),
        other => panic!("expected PreconditionFailed, got {other:?}"),
    }
    store.close().unwrap();

    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let requested = |run| store.run(run).unwrap().unwrap().cancel_requested_at_ms;
    assert_eq!(requested(asked), Some(42));
    assert_eq!(
        store.run(asked).unwrap().unwrap().meta.status,
        RunStatus::Interrupted
    );
    assert_eq!(
        requested(finished),
        None,
        "a finished run is not asked to cancel"
    );
    assert_eq!(requested(never), None);
}

/// A store deleted while its log stayed behind (say, after a crash): a new store created at
/// the same path must not replay the old store's log onto itself.
#[test]
fn a_new_store_ignores_the_log_of_a_deleted_one() {
    let dir = tmp();
    let path = dir.path().join("reused.redb");
    let old_run = RunId::generate();
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    start_run(&store, old_run, "t", "th", RunStatus::Completed);
    append(&store, old_run, 5).unwrap();
    // The log as a crash would leave it: its frames hold the commits above.
    let leftover = std::fs::read(wal_of(&path)).unwrap();
    store.close().unwrap();
    std::fs::remove_file(&path).unwrap();
    std::fs::write(wal_of(&path), &leftover).unwrap();
    let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(wal_of(&path))
        .unwrap()
        .set_modified(an_hour_ago)
        .unwrap();

    let store = Store::open(&path, StoreOptions::default()).unwrap();
    assert_eq!(
        store.last_seq(old_run).unwrap(),
        0,
        "the old store's commits came back"
    );
    let new_run = RunId::generate();
    start_run(&store, new_run, "t", "th", RunStatus::Completed);
    store.close().unwrap();
    let store = Store::open_read_only(&path).unwrap();
    assert_eq!(store.last_seq(new_run).unwrap(), 1);
    assert_eq!(store.last_seq(old_run).unwrap(), 0);
}

#[test]
fn shared_reads_downgrades_eventual() {
    let dir = tmp();
    let store = Store::open(
        dir.path().join("s.redb"),
        StoreOptions {
            durability: Durability::Eventual,
            shared_reads: true,
        },
    )
    .unwrap();
    assert_eq!(store.durability(), Durability::Immediate);
    append(&store, RunId::generate(), 1).unwrap();
}

#[test]
fn file_is_owner_only_and_registry_returns_the_same_store() {
    let dir = tmp();
    let path = dir.path().join("reg.redb");
    let a = Store::open(&path, StoreOptions::default()).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let other_spelling = dir
        .path()
        .join(".")
        .join("..")
        .join(dir.path().file_name().unwrap())
        .join("reg.redb");
    let b = Store::open(&other_spelling, StoreOptions::default()).unwrap();
    let run = RunId::generate();
    append(&a, run, 2).unwrap();
    assert_eq!(b.last_seq(run).unwrap(), 2, "same store, same data");
    assert_eq!(a.path(), b.path());
    assert_eq!(a.path().unwrap(), std::fs::canonicalize(&path).unwrap());
    // A read-only open in the same process shares it too, but cannot write.
    let ro = Store::open_read_only(&path).unwrap();
    assert_eq!(ro.last_seq(run).unwrap(), 2);
    assert!(matches!(
        append(&ro, run, 1),
        Err(StoreError::ReadOnly { .. })
    ));

    // Closing through one handle closes them all; the path can then be opened again.
    b.close().unwrap();
    assert!(matches!(a.last_seq(run), Err(StoreError::Closed { .. })));
    assert!(matches!(append(&a, run, 1), Err(StoreError::Closed { .. })));
    let c = Store::open(&path, StoreOptions::default()).unwrap();
    assert_eq!(c.last_seq(run).unwrap(), 2);
    drop((a, b, ro));
    assert_eq!(c.last_seq(run).unwrap(), 2);
    // After the last handle is gone the file is free again.
    drop(c);
    let d = Store::open(&path, StoreOptions::default()).unwrap();
    assert_eq!(d.last_seq(run).unwrap(), 2);
}

#[test]
fn a_writer_open_beside_a_read_only_handle_of_this_process_is_locked() {
    let dir = tmp();
    let path = dir.path().join("ro-first.redb");
    drop(Store::open(&path, StoreOptions::default()).unwrap());
    let ro = Store::open_read_only(&path).unwrap();
    let err = Store::open(&path, StoreOptions::default()).unwrap_err();
    assert!(
        matches!(&err, StoreError::Locked { hint, .. } if hint.contains("open read-only")),
        "{err:?}"
    );
    drop(ro);
    Store::open(&path, StoreOptions::default()).unwrap();
}

#[tokio::test]
async fn closed_store_gives_closed_everywhere() {
    let store = Store::in_memory().unwrap();
    let run = RunId::generate();
    append(&store, run, 1).unwrap();
    store.close().unwrap();
    store.close().unwrap();
    let err = store.records(run, 1).unwrap_err();
    assert!(
        matches!(err, StoreError::Closed { ref path } if path == "<memory>"),
        "{err:?}"
    );
    assert!(err.to_string().contains("closed; open it again"));
    assert!(matches!(
        store.append(AppendRequest::default()).await,
        Err(StoreError::Closed { .. })
    ));
    assert!(matches!(
        store.gc_references(0).await,
        Err(StoreError::Closed { .. })
    ));
    assert!(matches!(
        store.list_runs(&RunFilter::default()),
        Err(StoreError::Closed { .. })
    ));
}

#[test]
fn close_drains_queued_appends() {
    let dir = tmp();
    let path = dir.path().join("drain.redb");
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let run = RunId::generate();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut acked = 0;
                for _ in 0..1000 {
                    match append(&store, run, 1) {
                        Ok(_) => acked += 1,
                        Err(StoreError::Closed { .. }) => break,
                        Err(e) => panic!("{e}"),
                    }
                }
                acked
            })
        })
        .collect();
    while store.last_seq(run).unwrap() < 20 {
        std::thread::yield_now();
    }
    store.close().unwrap();
    let acked: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(acked < 8000, "close stopped the appenders");
    drop(store);
    // Every acknowledged append was committed before close returned, and every append that
    // got in line before close was committed and acknowledged: the two counts agree.
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    assert_eq!(store.last_seq(run).unwrap(), acked);
}

#[test]
fn running_runs_become_interrupted_when_a_writer_reopens() {
    let dir = tmp();
    let path = dir.path().join("rec.redb");
    let (running, suspended) = (RunId::generate(), RunId::generate());
    {
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        start_run(&store, running, "t", "th", RunStatus::Running);
        start_run(&store, suspended, "t", "th", RunStatus::Suspended);
    }
    {
        // A read-only open changes nothing.
        let ro = Store::open_read_only(&path).unwrap();
        assert_eq!(
            ro.run(running).unwrap().unwrap().meta.status,
            RunStatus::Running
        );
    }
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let info = store.run(running).unwrap().unwrap();
    assert_eq!(info.meta.status, RunStatus::Interrupted);
    assert!(info.meta.updated_at_ms > 5);
    assert_eq!(
        store.run(suspended).unwrap().unwrap().meta.status,
        RunStatus::Suspended
    );
    let listed = store
        .list_runs(&RunFilter {
            status: Some(RunStatus::Running),
            ..Default::default()
        })
        .unwrap();
    assert!(listed.is_empty());
    let listed = store
        .list_runs(&RunFilter {
            status: Some(RunStatus::Interrupted),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(listed.len(), 1);
}

#[test]
fn read_only_open_does_not_change_the_file() {
    let dir = tmp();
    let path = dir.path().join("ro.redb");
    let run = RunId::generate();
    {
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        start_run(&store, run, "t", "th", RunStatus::Running);
    }
    let before_bytes = std::fs::read(&path).unwrap();
    let before_mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    {
        let store = Store::open_read_only(&path).unwrap();
        assert!(store.is_read_only());
        assert_eq!(store.records(run, 1).unwrap().len(), 1);
        assert_eq!(
            store.run(run).unwrap().unwrap().meta.status,
            RunStatus::Running
        );
        assert!(matches!(
            append(&store, run, 1),
            Err(StoreError::ReadOnly { .. })
        ));
        store.close().unwrap();
    }
    assert_eq!(std::fs::read(&path).unwrap(), before_bytes);
    assert_eq!(
        std::fs::metadata(&path).unwrap().modified().unwrap(),
        before_mtime
    );

    let missing = Store::open_read_only(dir.path().join("missing.redb")).unwrap_err();
    assert!(
        matches!(missing, StoreError::NotFound { .. }),
        "{missing:?}"
    );
    assert!(!dir.path().join("missing.redb").exists());
}

#[test]
fn a_corrupt_record_is_an_error_naming_run_and_seq() {
    const JOURNAL: redb::TableDefinition<&[u8; 24], &[u8]> = redb::TableDefinition::new("journal");
    let dir = tmp();
    let path = dir.path().join("corrupt.redb");
    let run = RunId::generate();
    {
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        append(&store, run, 3).unwrap();
    }
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut journal = txn.open_table(JOURNAL).unwrap();
            let mut key = [0u8; 24];
            key[..16].copy_from_slice(&run.0.to_be_bytes());
            key[16..].copy_from_slice(&2u64.to_be_bytes());
            let good = journal.get(&key).unwrap().unwrap().value().to_vec();
            journal.insert(&key, &good[..good.len() - 3]).unwrap();
        }
        txn.commit().unwrap();
    }
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let err = store.records(run, 1).unwrap_err();
    match &err {
        StoreError::Corrupt { location, .. } => {
            assert_eq!(location, &format!("journal record seq 2 of run {run}"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.records(run, 3).unwrap().len(), 1);
    // Writing goes on: the corrupt record is reported, not fatal to the store.
    assert_eq!(append(&store, run, 1).unwrap().first_seq, 4);
}

// ---- Locks across processes: the test binary re-runs itself as the second process. ----

const CHILD_ENV: &str = "FLOWAI_STORAGE_LOCK_CHILD";

/// Runs in the child: opens the store as asked and prints the outcome.
#[test]
fn lock_child_entry() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (mode, path) = spec.split_once(':').unwrap();
    let result = match mode {
        "write" => Store::open(path, StoreOptions::default()).map(|_| ()),
        "read" => Store::open_read_only(path).map(|s| {
            println!(
                "RECORDS {}",
                s.list_runs(&RunFilter::default()).unwrap().len()
            );
        }),
        other => panic!("unknown mode {other}"),
    };
    match result {
        Ok(()) => println!("CHILD OK"),
        Err(e) => println!("CHILD ERR {e}"),
    }
}

fn child(mode: &str, path: &Path) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "lock_child_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{mode}:{}", path.display()))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn lock_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("locked.redb")
}

#[test]
fn a_second_process_gets_locked() {
    let dir = tmp();
    let path = lock_path(&dir);
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    start_run(&store, RunId::generate(), "t", "th", RunStatus::Running);
    let canonical = std::fs::canonicalize(&path).unwrap();

    let out = child("write", &path);
    assert!(
        out.contains(&format!(
            "CHILD ERR store {} is locked",
            canonical.display()
        )),
        "{out}"
    );
    let out = child("read", &path);
    assert!(out.contains("is locked"), "{out}");
    assert!(
        out.contains("shared_reads"),
        "the read-only refusal names the option: {out}"
    );

    store.close().unwrap();
    let out = child("read", &path);
    assert!(
        out.contains("RECORDS 1") && out.contains("CHILD OK"),
        "{out}"
    );
}

#[test]
fn shared_reads_lets_a_reader_process_in_but_no_second_writer() {
    let dir = tmp();
    let path = lock_path(&dir);
    let store = Store::open(
        &path,
        StoreOptions {
            durability: Durability::Immediate,
            shared_reads: true,
        },
    )
    .unwrap();
    start_run(&store, RunId::generate(), "t", "th", RunStatus::Running);
    let out = child("read", &path);
    assert!(
        out.contains("RECORDS 1") && out.contains("CHILD OK"),
        "{out}"
    );
    let out = child("write", &path);
    assert!(out.contains("is locked"), "{out}");
    // The writer keeps working after the reader came and went.
    start_run(&store, RunId::generate(), "t", "th", RunStatus::Running);
    let out = child("read", &path);
    assert!(out.contains("RECORDS 2"), "{out}");
}

/// A crashed store's log next to another store file (a backup put back, a file copied
/// without its log): opening refuses to replay it, names it, and changes neither file.
#[test]
fn a_log_next_to_a_store_file_it_was_not_written_over_is_refused() {
    let dir = tmp();
    let crashed = dir.path().join("crashed.redb");
    let run = RunId::generate();
    let store = Store::open(&crashed, StoreOptions::default()).unwrap();
    start_run(&store, run, "t", "th", RunStatus::Completed);
    append(&store, run, 5).unwrap();
    let leftover = std::fs::read(wal_of(&crashed)).unwrap();
    store.close().unwrap();

    let other = dir.path().join("other.redb");
    let other_run = RunId::generate();
    let store = Store::open(&other, StoreOptions::default()).unwrap();
    start_run(&store, other_run, "t", "th", RunStatus::Completed);
    store.close().unwrap();
    std::fs::write(wal_of(&other), &leftover).unwrap();
    let before = (
        std::fs::read(&other).unwrap(),
        std::fs::read(wal_of(&other)).unwrap(),
    );

    for result in [
        Store::open(&other, StoreOptions::default()).map(drop),
        Store::open_read_only(&other).map(drop),
    ] {
        let err = result.expect_err("a foreign log is refused");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("-wal"), "names the log: {text}");
        assert!(
            text.contains("written over another store file"),
            "says why: {text}"
        );
    }
    let after = (
        std::fs::read(&other).unwrap(),
        std::fs::read(wal_of(&other)).unwrap(),
    );
    assert!(before == after, "opening changed a file");

    // Moved away, the store opens as it is.
    std::fs::rename(wal_of(&other), dir.path().join("moved-wal")).unwrap();
    let store = Store::open_read_only(&other).unwrap();
    assert_eq!(store.last_seq(other_run).unwrap(), 1);
}

/// The files of `path` (the store and its log) this process holds open.
#[cfg(target_os = "linux")]
fn open_files_of(path: &Path) -> Vec<String> {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .filter(|target| target.contains(&name))
        .collect()
}

/// `close()` closes the files, though the handle lives on: a removed log kept open would
/// keep its disk space until the last handle on the store went (in Python, a runtime
/// object the collector has not reached).
#[cfg(target_os = "linux")]
#[test]
fn close_releases_the_store_file_and_its_log() {
    let dir = tmp();
    let path = dir.path().join("closed.redb");
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let run = RunId::generate();
    start_run(&store, run, "t", "th", RunStatus::Running);
    append(&store, run, 10).unwrap();
    let held = open_files_of(&path);
    assert!(held.iter().any(|f| f.ends_with("closed.redb")), "{held:?}");
    assert!(
        held.iter().any(|f| f.contains("closed.redb-wal")),
        "{held:?}"
    );
    store.close().unwrap();
    assert_eq!(open_files_of(&path), Vec::<String>::new());
    let reopened = Store::open(&path, StoreOptions::default()).unwrap();
    assert_eq!(reopened.records(run, 1).unwrap().len(), 11);
}
