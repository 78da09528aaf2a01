//! Behaviour of the log through its public API: append, read, reopen, rotate, truncate,
//! reset, purge, locking and concurrent group commit.

mod common;

use std::sync::Arc;

use common::{payload_for, read_all, segment_files, small};
use wal::{Error, Options, Wal};

#[test]
fn appended_records_read_back_in_order_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = Wal::open(dir.path(), small(4096)).unwrap();
    assert_eq!(log.last(), (0, 0));
    for i in 1..=300u64 {
        let lsn = log.append(i / 100 + 1, (i % 7) as u8, &payload_for(i, 120)).unwrap();
        assert_eq!(lsn, i);
    }
    assert_eq!(log.sync().unwrap(), 300);
    assert_eq!(log.durable_lsn(), 300);
    assert!(log.segment_count() > 3, "small segments must rotate");
    let check = |log: &Wal| {
        let recs = read_all(log);
        assert_eq!(recs.len(), 300);
        for (i, r) in recs.iter().enumerate() {
            let lsn = i as u64 + 1;
            assert_eq!((r.lsn, r.epoch, r.kind), (lsn, lsn / 100 + 1, (lsn % 7) as u8));
            assert_eq!(r.payload, payload_for(lsn, 120));
        }
    };
    check(&log);
    drop(log);
    let log = Wal::open(dir.path(), small(4096)).unwrap();
    assert_eq!(log.last(), (300, 4));
    check(&log);
    // Reading from the middle starts exactly there.
    let from_150: Vec<u64> = log.iter_from(150).unwrap().map(|r| r.unwrap().lsn).collect();
    assert_eq!(from_150, (150..=300).collect::<Vec<_>>());
    assert_eq!(log.iter_from(301).unwrap().count(), 0);
    assert!(matches!(log.iter_from(302), Err(Error::LsnOutOfRange { lsn: 302, .. })));
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _log = Wal::open(dir.path(), small(4096)).unwrap();
    assert!(matches!(Wal::open(dir.path(), small(4096)), Err(Error::Locked { .. })));
}

#[test]
fn bad_appends_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = Wal::open(dir.path(), small(1024)).unwrap();
    log.append(5, 0, b"a").unwrap();
    assert!(matches!(log.append(4, 0, b"b"), Err(Error::EpochRegression { last: 5, got: 4 })));
    let too_big = vec![0u8; 1024];
    assert!(matches!(log.append(5, 0, &too_big), Err(Error::RecordTooLarge { .. })));
    assert_eq!(log.last(), (1, 5));
    let max = 1024 - 64 - 25;
    assert_eq!(log.append(5, 0, &vec![7u8; max]).unwrap(), 2);
    assert!(matches!(Wal::open(dir.path().join("x"), small(10)), Err(Error::InvalidOptions(_))));
}

#[test]
fn batch_append_assigns_consecutive_lsns() {
    let dir = tempfile::tempdir().unwrap();
    let log = Wal::open(dir.path(), small(2048)).unwrap();
    let payloads: Vec<Vec<u8>> = (1..=40).map(|i| payload_for(i, 100)).collect();
    let (first, last) = log.append_batch(3, payloads.iter().map(|p| (1u8, p.as_slice()))).unwrap();
    assert_eq!((first, last), (1, 40));
    log.make_durable(last).unwrap();
    assert_eq!(log.durable_lsn(), 40);
    let got: Vec<Vec<u8>> = read_all(&log).into_iter().map(|r| r.payload).collect();
    assert_eq!(got, payloads);
}

#[test]
fn truncate_after_cuts_the_tail_durably_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = Wal::open(dir.path(), small(1024)).unwrap();
    for i in 1..=100u64 {
        log.append(1 + i / 50, 0, &payload_for(i, 60)).unwrap();
    }
    log.sync().unwrap();
    let segs_before = segment_files(dir.path()).len();
    log.truncate_after(30).unwrap();
    assert_eq!(log.last(), (30, 1));
    assert_eq!(log.durable_lsn(), 30);
    assert!(segment_files(dir.path()).len() < segs_before);
    // The next append continues at 31, with a new epoch allowed to be anything >= 1.
    assert_eq!(log.append(7, 9, b"new 31").unwrap(), 31);
    log.sync().unwrap();
    drop(log);
    let log = Wal::open(dir.path(), small(1024)).unwrap();
    let recs = read_all(&log);
    assert_eq!(recs.len(), 31);
    assert_eq!(recs[30].payload, b"new 31");
    assert_eq!(recs[30].epoch, 7);
    for r in &recs[..30] {
        assert_eq!(r.payload, payload_for(r.lsn, 60));
    }
    // Truncating at the end is a no-op; beyond it an error.
    log.truncate_after(31).unwrap();
    assert!(matches!(log.truncate_after(40), Err(Error::LsnOutOfRange { .. })));
    // Truncating everything leaves an empty log that continues at 1.
    log.truncate_after(0).unwrap();
    assert_eq!(log.last(), (0, 0));
    assert_eq!(log.append(1, 0, b"again").unwrap(), 1);
}

#[test]
fn an_iterator_reports_a_truncation_under_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = Wal::open(dir.path(), small(4096)).unwrap();
    for i in 1..=10u64 {
        log.append(1, 0, &payload_for(i, 30)).unwrap();
    }
    let mut it = log.iter_from(1).unwrap();
    assert_eq!(it.next().unwrap().unwrap().lsn, 1);
    log.truncate_after(5).unwrap();
    assert!(matches!(it.next(), Some(Err(Error::Truncated))));
    assert!(it.next().is_none());
}

#[test]
fn reset_starts_an_empty_log_after_a_snapshot_lsn() {
    let dir = tempfile::tempdir().unwrap();
    let log = Wal::open(dir.path(), small(1024)).unwrap();
    for i in 1..=50u64 {
        log.append(1, 0, &payload_for(i, 60)).unwrap();
    }
    log.reset(1000, 4).unwrap();
    assert_eq!(log.last(), (1000, 4));
    assert_eq!(log.first_lsn(), 1001);
    assert!(matches!(log.append(3, 0, b"x"), Err(Error::EpochRegression { .. })));
    assert_eq!(log.append(4, 0, b"1001").unwrap(), 1001);
    log.sync().unwrap();
    drop(log);
    let log = Wal::open(dir.path(), small(1024)).unwrap();
    assert_eq!(log.last(), (1001, 4));
    assert_eq!(segment_files(dir.path()).len(), 1);
    assert_eq!(read_all(&log)[0].payload, b"1001");
}

#[test]
fn purge_removes_only_segments_wholly_below_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let log = Wal::open(dir.path(), small(1024)).unwrap();
    for i in 1..=200u64 {
        log.append(1, 0, &payload_for(i, 60)).unwrap();
    }
    let before = log.segment_count();
    let removed = log.purge_before(120).unwrap();
    assert!(removed > 0);
    assert_eq!(log.segment_count(), before - removed);
    let first = log.first_lsn();
    assert!(first <= 120 && first > 1, "first {first}");
    assert!(matches!(log.iter_from(first - 1), Err(Error::LsnOutOfRange { .. })));
    let lsns: Vec<u64> = log.iter_from(first).unwrap().map(|r| r.unwrap().lsn).collect();
    assert_eq!(lsns, (first..=200).collect::<Vec<_>>());
    // Purging past the end keeps the active segment.
    log.purge_before(10_000).unwrap();
    assert_eq!(log.segment_count(), 1);
    log.sync().unwrap();
    drop(log);
    let log = Wal::open(dir.path(), small(1024)).unwrap();
    assert_eq!(log.last().0, 200);
}

#[test]
fn concurrent_appenders_share_syncs_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Wal::open(dir.path(), small(64 * 1024)).unwrap());
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for i in 0..200u32 {
                    let p = format!("t{t}-{i}");
                    let lsn = log.append(1, t, p.as_bytes()).unwrap();
                    log.make_durable(lsn).unwrap();
                    assert!(log.durable_lsn() >= lsn);
                    mine.push((lsn, p));
                }
                mine
            })
        })
        .collect();
    let mut all: Vec<(u64, String)> = threads.into_iter().flat_map(|h| h.join().unwrap()).collect();
    all.sort();
    assert_eq!(all.len(), 1600);
    assert_eq!(all.iter().map(|x| x.0).collect::<Vec<_>>(), (1..=1600).collect::<Vec<_>>());
    drop(log);
    let log =
        Wal::open(dir.path(), Options { segment_size: 64 * 1024, ..Options::default() }).unwrap();
    let recs = read_all(&log);
    for ((lsn, p), r) in all.iter().zip(&recs) {
        assert_eq!((*lsn, p.as_bytes()), (r.lsn, r.payload.as_slice()));
    }
}

#[test]
fn periodic_policy_syncs_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        segment_size: 4096,
        sync: wal::SyncPolicy::Periodic(std::time::Duration::from_millis(5)),
        ..Options::default()
    };
    let log = Wal::open(dir.path(), opts).unwrap();
    let lsn = log.append(1, 0, b"x").unwrap();
    log.make_durable(lsn).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while log.durable_lsn() < lsn {
        assert!(std::time::Instant::now() < deadline, "flusher never synced");
        std::thread::yield_now();
    }
}

#[test]
fn reading_and_cutting_in_the_middle_of_a_large_segment_use_the_sparse_index() {
    let dir = tempfile::tempdir().unwrap();
    let log = Wal::open(dir.path(), small(4 << 20)).unwrap();
    let payloads: Vec<Vec<u8>> = (1..=10_000u64).map(|i| payload_for(i, 40)).collect();
    for chunk in payloads.chunks(333) {
        log.append_batch(1, chunk.iter().map(|p| (0u8, p.as_slice()))).unwrap();
    }
    assert_eq!(log.segment_count(), 1);
    for start in [1u64, 2, 255, 256, 257, 258, 513, 4097, 9_999, 10_000] {
        let got: Vec<u64> = log.iter_from(start).unwrap().take(3).map(|r| r.unwrap().lsn).collect();
        let want: Vec<u64> = (start..=10_000).take(3).collect();
        assert_eq!(got, want, "from {start}");
        let first = log.iter_from(start).unwrap().next().unwrap().unwrap();
        assert_eq!(first.payload, payloads[start as usize - 1]);
    }
    log.truncate_after(5_000).unwrap();
    assert_eq!(log.append(2, 0, b"after cut").unwrap(), 5_001);
    let r = log.iter_from(5_001).unwrap().next().unwrap().unwrap();
    assert_eq!((r.epoch, r.payload.as_slice()), (2, &b"after cut"[..]));
    let r = log.iter_from(4_999).unwrap().next().unwrap().unwrap();
    assert_eq!(r.payload, payloads[4_998]);
    drop(log);
    let log = Wal::open(dir.path(), small(4 << 20)).unwrap();
    let lsns: Vec<u64> = log.iter_from(4_990).unwrap().map(|r| r.unwrap().lsn).collect();
    assert_eq!(lsns, (4_990..=5_001).collect::<Vec<_>>());
}

#[test]
fn purged_segments_are_recycled_and_their_old_records_never_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = small(1024);
    opts.prepare_spare_segments = false;
    let log = Wal::open(dir.path(), opts.clone()).unwrap();
    for i in 1..=60u64 {
        log.append(1, 0, &payload_for(i, 90)).unwrap();
    }
    log.sync().unwrap();
    let before = segment_files(dir.path()).len();
    assert!(before > 4);
    log.purge_before(log.last().0).unwrap();
    let recycled = |d: &std::path::Path| {
        std::fs::read_dir(d)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("recycle-"))
            .count()
    };
    let pooled = recycled(dir.path());
    assert!((2..=4).contains(&pooled), "purged segments should wait for reuse ({pooled})");
    // Short records now land in files full of longer, older records.
    for i in 61..=240u64 {
        log.append(1, 0, &payload_for(i, 20)).unwrap();
    }
    log.sync().unwrap();
    assert_eq!(recycled(dir.path()), 0, "rotation should have reused the recycled files");
    let first = log.first_lsn();
    drop(log);
    let log = Wal::open(dir.path(), opts).unwrap();
    assert_eq!(log.last().0, 240);
    assert_eq!(log.first_lsn(), first);
    for r in read_all(&log) {
        let max = if r.lsn <= 60 { 90 } else { 20 };
        assert_eq!(r.payload, payload_for(r.lsn, max), "record {}", r.lsn);
    }
}
