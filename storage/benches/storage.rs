//! Storage benchmarks (DESIGN §9). Run with `cargo bench -p flowai-storage`; results and
//! ratios are written up in `BENCHMARKS.md` (Storage).
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

/// A JSON payload of exactly `len` bytes (len >= 11).
fn payload(len: usize) -> String {
    format!("{{\"text\":\"{}\"}}", "x".repeat(len - 11))
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
    // In memory: what the engine's in-memory runs pay per append (no fsync).
    let store = Store::in_memory().unwrap();
    let run = RunId::generate();
    g.bench_function("in_memory_blocking", |b| {
        b.iter(|| store.append_blocking(one(run, 1024)).unwrap())
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    g.bench_function("in_memory_async", |b| {
        b.iter(|| rt.block_on(store.append(one(run, 1024))).unwrap())
    });
    store.close().unwrap();
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
    // The floor: bare redb iterating the same number of values of the same size, no decoding.
    for len in [200usize, 1024] {
        let db = bare_db(&dir.path().join(format!("scan-bare-{len}.redb")));
        let value = rkyv_like_value(len);
        for chunk in 0..100u64 {
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(BARE).unwrap();
                for i in 0..1000 {
                    t.insert(chunk * 1000 + i, value.as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
        }
        g.throughput(Throughput::Elements(100_000));
        g.bench_function(BenchmarkId::new("bare_redb_no_decoding", len), |b| {
            b.iter(|| {
                use redb::{ReadableDatabase, ReadableTable};
                let txn = db.begin_read().unwrap();
                let t = txn.open_table(BARE).unwrap();
                let mut bytes = 0usize;
                for entry in t.iter().unwrap() {
                    let (_, v) = entry.unwrap();
                    bytes += v.value().len();
                }
                std::hint::black_box(bytes)
            })
        });
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

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

/// The target ratios, measured pairwise: the two sides alternate, so a machine whose load
/// drifts (other builds on the same cores) slows both alike. Printed, not timed by criterion.
fn paired(_: &mut Criterion) {
    let dir = bench_dir();
    let mut report = String::new();

    // One writer: bare redb Immediate commit of one record vs our immediate append.
    let db = bare_db(&dir.path().join("paired-bare.redb"));
    let store = Store::open(
        dir.path().join("paired-store.redb"),
        StoreOptions::default(),
    )
    .unwrap();
    let run = RunId::generate();
    let value = rkyv_like_value(1024);
    let (mut bare, mut ours) = (Vec::new(), Vec::new());
    for key in 0..400u64 {
        let t = Instant::now();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(BARE).unwrap();
            table.insert(key, value.as_slice()).unwrap();
        }
        txn.commit().unwrap();
        bare.push(t.elapsed());
        let t = Instant::now();
        store.append_blocking(one(run, 1024)).unwrap();
        ours.push(t.elapsed());
    }
    let (b, o) = (median(bare), median(ours));
    report.push_str(&format!(
        "paired one-writer 1 KB: bare redb immediate commit median {b:?}, store immediate append median {o:?}, ratio {:.2}\n",
        o.as_secs_f64() / b.as_secs_f64()
    ));

    // In memory (no fsync): what our bookkeeping costs by itself. The store commits in-memory
    // appends with `Durability::None` and one in 64 `Immediate`; the like-for-like floor is a
    // bare redb doing the same, and a bare all-`Immediate` commit is shown beside it.
    let memory_db = || {
        redb::Builder::new()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .unwrap()
    };
    let (mem_db, mem_db_none) = (memory_db(), memory_db());
    let mem_store = Store::in_memory().unwrap();
    let (mut bare_mem, mut bare_none, mut ours_mem) = (Vec::new(), Vec::new(), Vec::new());
    let bare_commit = |db: &redb::Database, key: u64, durable: bool| {
        let mut txn = db.begin_write().unwrap();
        if !durable {
            txn.set_durability(redb::Durability::None).unwrap();
        }
        {
            let mut table = txn.open_table(BARE).unwrap();
            table.insert(key, value.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    };
    for key in 0..5_000u64 {
        let t = Instant::now();
        bare_commit(&mem_db, key, true);
        bare_mem.push(t.elapsed());
        let t = Instant::now();
        bare_commit(&mem_db_none, key, key % 64 == 63);
        bare_none.push(t.elapsed());
        let t = Instant::now();
        mem_store.append_blocking(one(run, 1024)).unwrap();
        ours_mem.push(t.elapsed());
    }
    let (b, n, o) = (median(bare_mem), median(bare_none), median(ours_mem));
    report.push_str(&format!(
        "paired in-memory one-writer 1 KB: bare redb commit median {b:?} (Immediate), {n:?} (None, 1 in 64 Immediate); store append median {o:?}, over the latter {:?}\n",
        o.saturating_sub(n)
    ));

    // Throughput: bare redb 64 records per commit vs 64 tasks appending one record each.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    // Three sides, interleaved round by round: bare redb with consecutive keys, our store,
    // and bare redb with keys shaped like the journal's (64 runs, each at its own seq).
    const RUN_KEYED: TableDefinition<&[u8; 24], &[u8]> = TableDefinition::new("run_keyed");
    let runs: Vec<u128> = (0..64).map(|_| RunId::generate().0).collect();
    let (mut bare, mut ours, mut keyed) = (Vec::new(), Vec::new(), Vec::new());
    let mut key = 1_000_000u64;
    let mut seq = 0u64;
    const ROUND: u64 = 64 * 20;
    for _ in 0..15 {
        let t = Instant::now();
        for _ in 0..ROUND / 64 {
            let txn = db.begin_write().unwrap();
            {
                let mut table = txn.open_table(BARE).unwrap();
                for _ in 0..64 {
                    key += 1;
                    table.insert(key, value.as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
        }
        bare.push(t.elapsed());
        let t = Instant::now();
        rt.block_on(async {
            let handles: Vec<_> = (0..64)
                .map(|_| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        let run = RunId::generate();
                        for _ in 0..ROUND / 64 {
                            store.append(one(run, 1024)).await.unwrap();
                        }
                    })
                })
                .collect();
            for h in handles {
                h.await.unwrap();
            }
        });
        ours.push(t.elapsed());
        let t = Instant::now();
        for _ in 0..ROUND / 64 {
            seq += 1;
            let txn = db.begin_write().unwrap();
            {
                let mut table = txn.open_table(RUN_KEYED).unwrap();
                for run in &runs {
                    let mut k = [0u8; 24];
                    k[..16].copy_from_slice(&run.to_be_bytes());
                    k[16..].copy_from_slice(&seq.to_be_bytes());
                    table.insert(&k, value.as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
        }
        keyed.push(t.elapsed());
    }
    let rate = |d: Duration| ROUND as f64 / d.as_secs_f64();
    let (b_rate, o_rate, k_rate) = (rate(median(bare)), rate(median(ours)), rate(median(keyed)));
    report.push_str(&format!(
        "paired 64 appenders 1 KB: bare redb 64/commit {b_rate:.0} records/s, store 64 tasks {o_rate:.0} records/s, ratio {:.2}\n",
        o_rate / b_rate
    ));
    report.push_str(&format!(
        "bare redb 64/commit with journal-like keys (64 runs x seq): {k_rate:.0} records/s; store / that = {:.2}\n",
        o_rate / k_rate
    ));
    store.close().unwrap();
    print!("{report}");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("storage-paired.txt");
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
    disk_usage,
    paired
);
criterion_main!(benches);
