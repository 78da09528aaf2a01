//! `shardgate bench wal`: the write-ahead log against the raw disk, the two taking turns in
//! short slices so that both see the same disk.
//!
//! The wal crate's criterion bench (`cargo bench -p shardgate-wal`) measures the log for a
//! few seconds and then the raw file for a few seconds; on a disk shared with other work the
//! disk's speed drifts between the two, and the ratio with it (0.3x to 2.5x between runs
//! here). This mode does the same work: `Wal::append` + `Wal::sync` every record or every 64,
//! purging as a checkpointing user would, against the same bytes (record header included)
//! `pwrite`n into a preallocated, zeroed file + `fdatasync` at the same points. But each
//! case alternates between the two every `--slice-ms` (the log first in even rounds, the
//! raw file first in odd ones), and reports the median of the per-round ratios next to the
//! totals.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wal::{Options, SyncPolicy, Wal};

/// Bytes of a record header (the format in `wal/src/format.rs`), written by the raw side too.
const RECORD_HEADER_LEN: usize = 25;
/// Size of the raw side's preallocated, zeroed file; writes wrap around inside it.
const RAW_FILE_LEN: u64 = 256 << 20;
/// Segments kept before a purge (as the criterion bench does).
const MAX_SEGMENTS_KEPT: usize = 4;
/// Appends between two checks whether to purge.
const PURGE_CHECK_EVERY: u64 = 1024;
const PAYLOADS: [(usize, &str); 2] = [(100, "100B"), (4096, "4KiB")];
const SYNC_POINTS: [(u64, &str); 2] = [(1, "sync_each"), (64, "sync_per_64")];

/// What to measure, from the command line.
#[derive(clap::Args, Debug, Clone)]
pub struct WalBench {
    /// Seconds per case (sync point x payload), the log's and the raw file's slices together.
    #[arg(long, default_value_t = 8.0)]
    seconds: f64,
    /// Length of one slice in milliseconds: the log and the raw file take turns this long.
    #[arg(long, default_value_t = 200)]
    slice_ms: u64,
    /// Directory for the files (default: a temp dir, removed after).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Runs every case and prints the table; stops between two slices once dropped.
pub async fn run(b: WalBench) -> Result<(), String> {
    let stop = Arc::new(AtomicBool::new(false));
    // Dropped (Ctrl-C) before the work ends: the blocking thread stops at its next slice and
    // removes its files (the runtime waits for it before the process exits).
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _guard = StopOnDrop(stop.clone());
    tokio::task::spawn_blocking(move || run_blocking(&b, &stop))
        .await
        .map_err(|e| format!("the wal bench thread failed: {e}"))?
}

fn run_blocking(b: &WalBench, stop: &AtomicBool) -> Result<(), String> {
    let tmp = match &b.dir {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .map_err(|e| format!("cannot create a temp dir: {e}"))?;
    let raw = zeroed_file(&tmp.path().join("raw"), RAW_FILE_LEN)?;
    let slice = Duration::from_millis(b.slice_ms.max(1));
    let rounds = ((b.seconds * 1000.0) / (2 * b.slice_ms.max(1)) as f64).ceil().max(1.0) as usize;
    let mut lines = Vec::new();
    let mut raw_offset = 0u64;
    for (every, sync_name) in SYNC_POINTS {
        for (size, size_name) in PAYLOADS {
            let dir = tmp.path().join(format!("wal-{sync_name}-{size_name}"));
            let log = Wal::open(&dir, Options { sync: SyncPolicy::Always, ..Options::default() })
                .map_err(|e| format!("cannot open the log in {}: {e}", dir.display()))?;
            let payload = vec![0xA5u8; size];
            let record = vec![0xA5u8; size + RECORD_HEADER_LEN];
            let mut wal_side = Side::default();
            let mut raw_side = Side::default();
            let mut ratios = Vec::with_capacity(rounds);
            // Round 0 warms both up and is not counted.
            for round in 0..=rounds {
                if stop.load(Ordering::Relaxed) {
                    return Err("stopped".into());
                }
                let mut w = Side::default();
                let mut r = Side::default();
                let wal_first = round % 2 == 0;
                for turn in 0..2 {
                    if (turn == 0) == wal_first {
                        wal_slice(&log, &payload, every, slice, &mut wal_side.appended, &mut w)?;
                    } else {
                        raw_slice(&raw, &record, every, slice, &mut raw_offset, &mut r)?;
                    }
                }
                if round > 0 {
                    ratios.push(w.rate() / r.rate());
                    wal_side.add(&w);
                    raw_side.add(&r);
                }
            }
            drop(log);
            let _ = std::fs::remove_dir_all(&dir);
            ratios.sort_by(|a, b| a.total_cmp(b));
            let median = ratios[ratios.len() / 2];
            let mb = |rate: f64| rate * (size + RECORD_HEADER_LEN) as f64 / 1e6;
            let (wr, rr) = (wal_side.rate(), raw_side.rate());
            eprintln!(
                "bench wal: {sync_name} {size_name}: wal/raw {median:.2}x over {rounds} rounds"
            );
            lines.push(format!(
                "| {sync_name} | {size_name} | {wr:.0} | {:.1} | {rr:.0} | {:.1} | {median:.2}x | {:.2}x | {rounds} | {:.2} / {:.2} |",
                mb(wr),
                mb(rr),
                wr / rr,
                ratios[0],
                ratios[ratios.len() - 1],
            ));
        }
    }
    println!(
        "| sync point | payload | wal records/s | wal MB/s | raw records/s | raw MB/s | wal/raw (median round) | wal/raw (totals) | rounds | lowest / highest round |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for l in lines {
        println!("{l}");
    }
    Ok(())
}

/// Records written and time spent by one side.
#[derive(Default)]
struct Side {
    records: u64,
    time: Duration,
    /// Appends since the log was opened (the sync and purge points count these).
    appended: u64,
}

impl Side {
    fn rate(&self) -> f64 {
        self.records as f64 / self.time.as_secs_f64().max(1e-9)
    }

    fn add(&mut self, o: &Side) {
        self.records += o.records;
        self.time += o.time;
    }
}

/// Appends for one slice, syncing every `every` appends and once at the end if any append
/// is not durable yet (the slice ends with everything on disk, as the raw side does).
fn wal_slice(
    log: &Wal,
    payload: &[u8],
    every: u64,
    slice: Duration,
    appended: &mut u64,
    out: &mut Side,
) -> Result<(), String> {
    let err = |e: wal::Error| format!("wal: {e}");
    let start = Instant::now();
    let mut written = 0u64;
    while start.elapsed() < slice {
        log.append(1, 0, payload).map_err(err)?;
        *appended += 1;
        written += 1;
        if written.is_multiple_of(every) {
            log.sync().map_err(err)?;
        }
        if (*appended).is_multiple_of(PURGE_CHECK_EVERY) && log.segment_count() > MAX_SEGMENTS_KEPT
        {
            log.purge_before(log.last().0).map_err(err)?;
        }
    }
    if !written.is_multiple_of(every) {
        log.sync().map_err(err)?;
    }
    out.records += written;
    out.time += start.elapsed();
    Ok(())
}

/// The same bytes `pwrite`n at increasing offsets of the zeroed file, `fdatasync` at the
/// same points.
fn raw_slice(
    raw: &File,
    record: &[u8],
    every: u64,
    slice: Duration,
    offset: &mut u64,
    out: &mut Side,
) -> Result<(), String> {
    let err = |e: std::io::Error| format!("raw file: {e}");
    let start = Instant::now();
    let mut written = 0u64;
    while start.elapsed() < slice {
        if *offset + record.len() as u64 > RAW_FILE_LEN {
            *offset = 0;
        }
        raw.write_all_at(record, *offset).map_err(err)?;
        *offset += record.len() as u64;
        written += 1;
        if written.is_multiple_of(every) {
            raw.sync_data().map_err(err)?;
        }
    }
    if !written.is_multiple_of(every) {
        raw.sync_data().map_err(err)?;
    }
    out.records += written;
    out.time += start.elapsed();
    Ok(())
}

fn zeroed_file(path: &Path, len: u64) -> Result<File, String> {
    let err = |e: std::io::Error| format!("cannot prepare {}: {e}", path.display());
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(err)?;
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..len / zeros.len() as u64 {
        f.write_all(&zeros).map_err(err)?;
    }
    f.sync_all().map_err(err)?;
    Ok(f)
}
