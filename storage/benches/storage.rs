//! Storage benchmarks (DESIGN §9). Run with `cargo bench -p flowai-storage`; results and
//! ratios are written up in `storage/BENCHMARKS-storage.md`.
//!
//! Files live under the target directory (a real disk), never in a tmpfs.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use flowai_storage::{
    AppendRequest, Durability, Record, RecordKind, RunAppend, RunId, Store, StoreOptions,
};
use redb::TableDefinition;

const BARE: TableDefinition<u64, &[u8]> = TableDefinition::new("bare");

fn bench_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// A JSON payload of exactly `len` bytes.
fn payload(len: usize) -> String {
    let mut s = String::from("{\"text\":\"");
    while s.len() < len - 2 {
        s.push('x');
    }
    s.push_str("\"}");
    s
}

fn record(len: usize) -> Record {
    Record {
        kind: RecordKind::ToolCallCompleted,
        version: 1,
        at_ms: 1_700_000_000_000,
        payload: payload(len),
    }
}

fn one(run: RunId, len: usize) -> AppendRequest {
    AppendRequest {
        run: Some(RunAppend {
            run_id: run,
            expected_first_seq: None,
            records: vec![record(len)],
        }),
        ..Default::default()
    }
}

fn group<'c>(
    c: &'c mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'c, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g
}

/// Appending a record to a file and fdatasync: the floor any durable store pays.
fn raw_baseline(c: &mut Criterion) {
    let dir = bench_dir();
    let mut g = group(c, "raw_append_fdatasync");
    for len in [200usize, 1024] {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(dir.path().join(format!("raw-{len}")))
            .unwrap();
        let buf = vec![b'x'; len];
        let mut offset = 0u64;
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::from_parameter(len), |b| {
            b.iter(|| {
                file.write_all_at(&buf, offset).unwrap();
                offset += len as u64;
                file.sync_data().unwrap();
            })
        });
    }
    g.finish();
}

fn bare_db(path: &Path) -> redb::Database {
    let db = redb::Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(BARE).unwrap();
    txn.commit().unwrap();
    db
}

/// Bare redb: one `Immediate` commit of one 1 KB record, and 64 records per commit.
fn bare_redb(c: &mut Criterion) {
    let dir = bench_dir();
    let db = bare_db(&dir.path().join("bare.redb"));
    let value = rkyv_like_value(1024);
    let mut key = 0u64;
    let mut g = group(c, "bare_redb");
    g.throughput(Throughput::Elements(1));
    g.bench_function("immediate_commit_1x1KB", |b| {
        b.iter(|| {
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(BARE).unwrap();
                key += 1;
                t.insert(key, value.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        })
    });
    // One iteration = one record, committed 64 per transaction.
    g.bench_function("immediate_commit_64x1KB_per_record", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            let mut left = iters;
            while left > 0 {
                let n = left.min(64);
                let txn = db.begin_write().unwrap();
                {
                    let mut t = txn.open_table(BARE).unwrap();
                    for _ in 0..n {
                        key += 1;
                        t.insert(key, value.as_slice()).unwrap();
                    }
                }
                txn.commit().unwrap();
                left -= n;
            }
            start.elapsed()
        })
    });
    g.finish();
}

/// The same bytes our envelope stores for a 1 KB payload, so the comparison is like for like.
fn rkyv_like_value(len: usize) -> Vec<u8> {
    vec![b'x'; len + 24]
}

/// One writer, one record per append, waiting for each acknowledgement.
fn store_single(c: &mut Criterion) {
    let dir = bench_dir();
    let mut g = group(c, "store_append_1x1KB");
    g.throughput(Throughput::Elements(1));
    for (name, durability) in [
        ("immediate", Durability::Immediate),
        ("eventual", Durability::Eventual),
    ] {
        let store = Store::open(
            dir.path().join(format!("single-{name}.redb")),
            StoreOptions {
                durability,
                shared_reads: false,
            },
        )
        .unwrap();
        let run = RunId::generate();
        g.bench_function(name, |b| {
            b.iter(|| store.append_blocking(one(run, 1024)).unwrap())
        });
        store.close().unwrap();
    }
    // Not a target, but the cost of `shared_reads` is worth knowing.
    let store = Store::open(
        dir.path().join("single-shared.redb"),
        StoreOptions {
            durability: Durability::Immediate,
            shared_reads: true,
        },
    )
    .unwrap();
    let run = RunId::generate();
    g.bench_function("immediate_shared_reads", |b| {
        b.iter(|| store.append_blocking(one(run, 1024)).unwrap())
    });
    store.close().unwrap();
    g.finish();
}

/// N tasks on a tokio runtime, each appending single 1 KB records to its own run.
fn group_commit(c: &mut Criterion) {
    let dir = bench_dir();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let mut g = group(c, "group_commit_1KB");
    g.throughput(Throughput::Elements(1));
    for tasks in [1u64, 8, 64] {
        let store = Store::open(
            dir.path().join(format!("group-{tasks}.redb")),
            StoreOptions::default(),
        )
        .unwrap();
        g.bench_function(BenchmarkId::new("tasks", tasks), |b| {
            b.iter_custom(|iters| {
                let per_task = iters.div_ceil(tasks);
                let start = Instant::now();
                rt.block_on(async {
                    let handles: Vec<_> = (0..tasks)
                        .map(|_| {
                            let store = store.clone();
                            tokio::spawn(async move {
                                let run = RunId::generate();
                                for _ in 0..per_task {
                                    store.append(one(run, 1024)).await.unwrap();
                                }
                            })
                        })
                        .collect();
                    for h in handles {
                        h.await.unwrap();
                    }
                });
                // Report per requested iteration: scale for the rounding up above.
                start
                    .elapsed()
                    .mul_f64(iters as f64 / (per_task * tasks) as f64)
            })
        });
        store.close().unwrap();
    }
    g.finish();
}

fn fill(store: &Store, run: RunId, records: usize, len: usize) {
    let mut left = records;
    while left > 0 {
        let n = left.min(1000);
        store
            .append_blocking(AppendRequest {
                run: Some(RunAppend {
                    run_id: run,
                    expected_first_seq: None,
                    records: (0..n).map(|_| record(len)).collect(),
                }),
                ..Default::default()
            })
            .unwrap();
        left -= n;
    }
}

/// Reading a 100k-record run with decoding (kind, version, time and payload of each).
fn scan(c: &mut Criterion) {
    let dir = bench_dir();
    let mut g = group(c, "scan_100k");
    for len in [200usize, 1024] {
        let store = Store::open(
            dir.path().join(format!("scan-{len}.redb")),
            StoreOptions::default(),
        )
        .unwrap();
        let run = RunId::generate();
        fill(&store, run, 100_000, len);
        g.throughput(Throughput::Elements(100_000));
        g.bench_function(BenchmarkId::new("payload_bytes", len), |b| {
            b.iter(|| {
                let mut n = 0u64;
                let mut bytes = 0usize;
                store
                    .scan_records(run, 1, &mut |_, view| {
                        n += 1;
                        bytes += view.payload.len() + view.version as usize + view.kind as usize;
                        ControlFlow::Continue(())
                    })
                    .unwrap();
                assert_eq!(n, 100_000);
                std::hint::black_box(bytes)
            })
        });
        store.close().unwrap();
    }
    g.finish();
}

/// File bytes per 1 KB record; printed, not timed.
fn disk_usage(_: &mut Criterion) {
    let dir = bench_dir();
    let mut report = String::new();
    let cases: [(&str, usize, usize); 3] = [
        ("1 record per commit", 2_000, 1),
        ("64 records per commit", 20_000, 64),
        ("1000 records per commit", 100_000, 1000),
    ];
    for (name, records, per_commit) in cases {
        let path: PathBuf = dir.path().join(format!("disk-{per_commit}.redb"));
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        let run = RunId::generate();
        let mut left = records;
        while left > 0 {
            let n = left.min(per_commit);
            store
                .append_blocking(AppendRequest {
                    run: Some(RunAppend {
                        run_id: run,
                        expected_first_seq: None,
                        records: (0..n).map(|_| record(1024)).collect(),
                    }),
                    ..Default::default()
                })
                .unwrap();
            left -= n;
        }
        store.close().unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        let line = format!(
            "disk usage, {name}: {records} records of 1024 B payload -> {size} B file = {:.0} B/record ({:.2} KB)\n",
            size as f64 / records as f64,
            size as f64 / records as f64 / 1024.0
        );
        print!("{line}");
        report.push_str(&line);
    }
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("storage-disk-usage.txt");
    std::fs::File::create(out)
        .unwrap()
        .write_all(report.as_bytes())
        .unwrap();
}

criterion_group!(
    benches,
    raw_baseline,
    bare_redb,
    store_single,
    group_commit,
    scan,
    disk_usage
);
criterion_main!(benches);
