//! Append throughput of the log against the honest raw baseline, measured in one run.
//!
//! For each payload size (100 B, 4 KiB) and sync point (after every append, after every 64,
//! never) this measures `Wal::append` + `Wal::sync`, and the same bytes (record header
//! included) written with `pwrite` into a preallocated, already-zeroed file + `fdatasync` at
//! the same points. It then prints a table with records/s, MB/s and the ratio, and measures
//! recovery: reopening a log of `SHARDGATE_BENCH_RECOVERY_MIB` MiB (default 1024).
//!
//! `cargo bench -p shardgate-wal` runs it; `-- --test` runs each case once (CI smoke).
//! `SHARDGATE_BENCH_DIR` chooses the directory (default: the system temp dir).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use wal::{Options, SyncPolicy, Wal};

/// Bytes of a record header (the documented record format), written by the baseline too.
const RECORD_HEADER_LEN: usize = 25;
/// Size of the raw baseline's preallocated file; writes wrap around inside it.
const RAW_FILE_LEN: u64 = 256 << 20;
/// Keep at most this many segments while benchmarking (purge as a checkpoint would).
const MAX_SEGMENTS_KEPT: usize = 4;

const PAYLOADS: [(usize, &str); 2] = [(100, "100B"), (4096, "4KiB")];
const SYNC_POINTS: [(Option<u64>, &str); 3] =
    [(Some(1), "sync_each"), (Some(64), "sync_per_64"), (None, "sync_never")];

/// (sync point, payload, system).
type Case = (String, String, &'static str);
/// Each case's total time and records.
static RESULTS: Mutex<BTreeMap<Case, (Duration, u64)>> = Mutex::new(BTreeMap::new());

fn record(group: &str, payload: &str, system: &'static str, d: Duration, n: u64) {
    let mut r = RESULTS.lock().unwrap();
    let e = r.entry((group.to_string(), payload.to_string(), system)).or_default();
    e.0 += d;
    e.1 += n;
}

fn bench_dir() -> tempfile::TempDir {
    match std::env::var("SHARDGATE_BENCH_DIR") {
        Ok(d) => tempfile::tempdir_in(d).unwrap(),
        Err(_) => tempfile::tempdir().unwrap(),
    }
}

fn zeroed_file(path: &std::path::Path, len: u64) -> File {
    let mut f =
        OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..len / zeros.len() as u64 {
        f.write_all(&zeros).unwrap();
    }
    f.sync_all().unwrap();
    f
}

fn appends(c: &mut Criterion) {
    for (sync_every, group_name) in SYNC_POINTS {
        let mut group = c.benchmark_group(group_name);
        for (size, size_name) in PAYLOADS {
            let payload = vec![0xA5u8; size];
            group.throughput(Throughput::Bytes((size + RECORD_HEADER_LEN) as u64));

            let dir = bench_dir();
            let opts = Options {
                sync: if sync_every.is_some() {
                    SyncPolicy::Always
                } else {
                    SyncPolicy::NeverUnsafe
                },
                ..Options::default()
            };
            let log = Wal::open(dir.path(), opts).unwrap();
            group.bench_function(BenchmarkId::new("wal", size_name), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for i in 0..iters {
                        let lsn = log.append(1, 0, &payload).unwrap();
                        if sync_every.is_some_and(|n| (i + 1) % n == 0 || i + 1 == iters) {
                            log.sync().unwrap();
                        }
                        // A checkpointing user purges as it goes; purged segments are
                        // recycled, as in steady state (timed: it is part of the cost).
                        if i % 1024 == 0 && log.segment_count() > MAX_SEGMENTS_KEPT {
                            log.purge_before(log.last().0).unwrap();
                        }
                        std::hint::black_box(lsn);
                    }
                    let d = start.elapsed();
                    record(group_name, size_name, "wal", d, iters);
                    d
                })
            });
            drop(log);

            let raw = zeroed_file(&dir.path().join("raw"), RAW_FILE_LEN);
            let bytes = vec![0xA5u8; size + RECORD_HEADER_LEN];
            let mut offset = 0u64;
            group.bench_function(BenchmarkId::new("raw_pwrite_fdatasync", size_name), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for i in 0..iters {
                        if offset + bytes.len() as u64 > RAW_FILE_LEN {
                            offset = 0;
                        }
                        raw.write_all_at(&bytes, offset).unwrap();
                        offset += bytes.len() as u64;
                        if sync_every.is_some_and(|n| (i + 1) % n == 0 || i + 1 == iters) {
                            raw.sync_data().unwrap();
                        }
                    }
                    let d = start.elapsed();
                    record(group_name, size_name, "raw", d, iters);
                    d
                })
            });
        }
        group.finish();
    }
}

fn recovery(c: &mut Criterion) {
    let mib: usize = std::env::var("SHARDGATE_BENCH_RECOVERY_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if test_mode() { 8 } else { 1024 });
    let dir = bench_dir();
    let opts = Options { sync: SyncPolicy::NeverUnsafe, ..Options::default() };
    let payload = vec![0x5Au8; 4096];
    {
        let log = Wal::open(dir.path(), opts.clone()).unwrap();
        let n = (mib << 20) / (payload.len() + RECORD_HEADER_LEN);
        for _ in 0..n {
            log.append(1, 0, &payload).unwrap();
        }
        log.sync().unwrap();
    }
    let bytes = (mib as u64) << 20;
    let mut group = c.benchmark_group("recovery");
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function(BenchmarkId::new("reopen", format!("{mib}MiB")), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let log = Wal::open(dir.path(), opts.clone()).unwrap();
                total += start.elapsed();
                std::hint::black_box(log.last());
                drop(log);
            }
            record("recovery", &format!("{mib}MiB"), "wal", total, iters);
            total
        })
    });
    group.finish();
}

fn test_mode() -> bool {
    std::env::args().any(|a| a == "--test")
}

/// Prints the wal-vs-raw table from this run's measurements.
fn print_table() {
    if test_mode() {
        println!("(test mode: each case ran once; no figures)");
        return;
    }
    let r = RESULTS.lock().unwrap();
    println!();
    println!(
        "| sync point | payload | wal records/s | wal MB/s | raw records/s | raw MB/s | wal/raw |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    for (sync_every, group) in SYNC_POINTS {
        let _ = sync_every;
        for (size, size_name) in PAYLOADS {
            let get = |sys| r.get(&(group.to_string(), size_name.to_string(), sys)).copied();
            let (Some(w), Some(raw)) = (get("wal"), get("raw")) else { continue };
            let rate = |(d, n): (Duration, u64)| n as f64 / d.as_secs_f64();
            let mb = |rate: f64| rate * (size + RECORD_HEADER_LEN) as f64 / 1e6;
            let (wr, rr) = (rate(w), rate(raw));
            println!(
                "| {group} | {size_name} | {wr:.0} | {:.1} | {rr:.0} | {:.1} | {:.2}x |",
                mb(wr),
                mb(rr),
                wr / rr
            );
        }
    }
    for ((g, p, _), (d, n)) in r.iter().filter(|((g, _, _), _)| g == "recovery") {
        let mib: f64 = p.trim_end_matches("MiB").parse().unwrap_or(0.0);
        let gbps = mib * (1 << 20) as f64 * *n as f64 / d.as_secs_f64() / 1e9;
        println!(
            "\n{g}: reopen of a {p} log: {:.3} s each, {gbps:.2} GB/s",
            d.as_secs_f64() / *n as f64
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = appends, recovery
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    print_table();
}
