//! Fault injection through named fail points (built with `--features failpoints`): a write
//! that stops half way, a failed sync, a full disk. Each test: open, arm, write, drop,
//! reopen, assert.

mod common;

use std::sync::Mutex;

use common::{payload_for, read_all, small};
use wal::{Error, Wal};

/// Fail points are process-wide: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn scenario() -> (std::sync::MutexGuard<'static, ()>, fail::FailScenario<'static>) {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    (guard, fail::FailScenario::setup())
}

#[test]
fn a_failed_write_is_reported_and_leaves_the_log_consistent() {
    let (_g, s) = scenario();
    let dir = tempfile::tempdir().unwrap();
    let log = Wal::open(dir.path(), small(4096)).unwrap();
    for i in 1..=5u64 {
        log.append(1, 0, &payload_for(i, 80)).unwrap();
    }
    fail::cfg("wal::append::write", "return").unwrap();
    let err = log.append(1, 0, b"doomed").unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert_eq!(log.last().0, 5, "a failed append must not advance the log");
    fail::remove("wal::append::write");
    // The half-written bytes are overwritten by the next append.
    assert_eq!(log.append(1, 0, &payload_for(6, 80)).unwrap(), 6);
    log.sync().unwrap();
    drop(log);
    let log = Wal::open(dir.path(), small(4096)).unwrap();
    let recs = read_all(&log);
    assert_eq!(recs.len(), 6);
    for r in recs {
        assert_eq!(r.payload, payload_for(r.lsn, 80));
    }
    s.teardown();
}

#[test]
fn a_half_write_followed_by_a_crash_is_cut_at_recovery() {
    let (_g, s) = scenario();
    let dir = tempfile::tempdir().unwrap();
    let log = Wal::open(dir.path(), small(4096)).unwrap();
    for i in 1..=5u64 {
        log.append(1, 0, &payload_for(i, 80)).unwrap();
    }
    log.sync().unwrap();
    fail::cfg("wal::append::write", "return").unwrap();
    assert!(log.append(1, 0, &[0xAB; 200]).is_err());
    fail::remove("wal::append::write");
    // Push the garbage to disk as a crash after writeback would.
    drop(log);
    let log = Wal::open(dir.path(), small(4096)).unwrap();
    assert_eq!(log.last().0, 5);
    assert_eq!(read_all(&log).len(), 5);
    s.teardown();
}

#[test]
fn a_failed_sync_poisons_the_log_until_reopen() {
    let (_g, s) = scenario();
    let dir = tempfile::tempdir().unwrap();
    let log = Wal::open(dir.path(), small(4096)).unwrap();
    for i in 1..=3u64 {
        log.append(1, 0, &payload_for(i, 80)).unwrap();
    }
    log.sync().unwrap();
    let lsn = log.append(1, 0, &payload_for(4, 80)).unwrap();
    fail::cfg("wal::sync", "return").unwrap();
    assert!(matches!(log.make_durable(lsn), Err(Error::Io { .. })));
    assert_eq!(log.durable_lsn(), 3, "a failed sync must not claim durability");
    fail::remove("wal::sync");
    // Even with the fault gone, the log refuses work: retrying a failed fsync can report
    // success for pages the kernel already dropped.
    assert!(matches!(log.sync(), Err(Error::Poisoned)));
    assert!(matches!(log.append(1, 0, b"x"), Err(Error::Poisoned)));
    assert!(matches!(log.truncate_after(1), Err(Error::Poisoned)));
    drop(log);
    // Reopening recovers from what is really there: at least what was durable, and only
    // records that were appended, intact.
    let log = Wal::open(dir.path(), small(4096)).unwrap();
    let recs = read_all(&log);
    assert!(recs.len() >= 3 && recs.len() <= 4, "{} records", recs.len());
    for r in &recs {
        assert_eq!(r.payload, payload_for(r.lsn, 80));
    }
    assert_eq!(log.append(1, 0, b"next").unwrap(), recs.len() as u64 + 1);
    s.teardown();
}

#[test]
fn a_full_disk_at_rotation_fails_the_append_and_recovers_when_space_returns() {
    let (_g, s) = scenario();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = small(1024);
    opts.prepare_spare_segments = false;
    let log = Wal::open(dir.path(), opts.clone()).unwrap();
    fail::cfg("wal::segment::create", "return").unwrap();
    let mut lsn = 0;
    let err = loop {
        match log.append(1, 0, &payload_for(lsn + 1, 100)) {
            Ok(l) => lsn = l,
            Err(e) => break e,
        }
        assert!(lsn < 100, "the segment never filled");
    };
    match &err {
        Error::Io { source, .. } => assert_eq!(source.raw_os_error(), Some(28), "{err}"),
        other => panic!("expected ENOSPC, got {other}"),
    }
    assert_eq!(log.last().0, lsn, "the failed append must not be counted");
    assert_eq!(log.sync().unwrap(), lsn, "what fit is still durable");
    fail::remove("wal::segment::create");
    assert_eq!(log.append(1, 0, &payload_for(lsn + 1, 100)).unwrap(), lsn + 1);
    log.sync().unwrap();
    drop(log);
    let log = Wal::open(dir.path(), opts).unwrap();
    let recs = read_all(&log);
    assert_eq!(recs.len() as u64, lsn + 1);
    for r in &recs {
        assert_eq!(r.payload, payload_for(r.lsn, 100));
    }
    assert!(log.segment_count() >= 2);
    s.teardown();
}
