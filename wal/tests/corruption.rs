//! Torn writes and bit flips: recovery returns exactly the records before the damage, never
//! a damaged one, and damage where a crash cannot put it is an error naming file and offset.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::{
    copy_dir, payload_for, read_all, segment_files, small, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use rand::{Rng, SeedableRng};
use wal::{Error, Options, RecoveryMode, Wal};

const SEGMENT: usize = 16 * 1024;
const MAX_PAYLOAD: usize = 300;

/// Writes records until the log has two segments and a dozen records in the second; returns
/// the number of records and the byte range of each record of the last segment.
fn build(dir: &Path) -> (u64, Vec<(u64, usize, usize)>) {
    let log = Wal::open(dir, small(SEGMENT)).unwrap();
    let mut lsn = 0;
    while segment_files(dir).len() < 2 || lsn < 12 + first_of_last(dir) {
        lsn += 1;
        log.append(1, 2, &payload_for(lsn, MAX_PAYLOAD)).unwrap();
    }
    log.sync().unwrap();
    drop(log);
    let first = first_of_last(dir);
    let mut at = SEGMENT_HEADER_LEN;
    let mut ranges = Vec::new();
    for l in first..=lsn {
        let len = RECORD_HEADER_LEN + payload_for(l, MAX_PAYLOAD).len();
        ranges.push((l, at, at + len));
        at += len;
    }
    (lsn, ranges)
}

fn first_of_last(dir: &Path) -> u64 {
    let segs = segment_files(dir);
    let name = segs.last().unwrap().file_stem().unwrap().to_str().unwrap().to_string();
    name.parse().unwrap()
}

/// Opens the log and checks that it holds exactly records 1..=n with their payloads.
fn assert_holds_exactly(dir: &Path, n: u64, opts: Options) {
    let log = Wal::open(dir, opts).unwrap();
    assert_eq!(log.last().0, n, "last lsn after recovery");
    let recs = read_all(&log);
    assert_eq!(recs.len() as u64, n);
    for r in &recs {
        assert_eq!(r.payload, payload_for(r.lsn, MAX_PAYLOAD), "payload of {}", r.lsn);
    }
    // The log is usable: the next append continues the sequence and survives a reopen.
    assert_eq!(log.append(1, 0, b"after").unwrap(), n + 1);
    log.sync().unwrap();
    drop(log);
    let log = Wal::open(dir, opts_clone(SEGMENT)).unwrap();
    assert_eq!(log.last().0, n + 1);
}

fn opts_clone(seg: usize) -> Options {
    small(seg)
}

fn overwrite(file: &Path, at: usize, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(file).unwrap();
    f.write_all_at(bytes, at as u64).unwrap();
}

#[test]
fn a_cut_anywhere_in_the_last_record_keeps_exactly_the_records_before_it() {
    let base = tempfile::tempdir().unwrap();
    let (n, ranges) = build(base.path());
    let (last_lsn, start, end) = *ranges.last().unwrap();
    assert_eq!(last_lsn, n);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for cut in start..end {
        for garbage in [false, true] {
            let work = tempfile::tempdir().unwrap();
            copy_dir(base.path(), work.path());
            let seg = segment_files(work.path()).pop().unwrap();
            // What never reached the disk is zeroes (the file was zero-filled) or, to be
            // harsher, arbitrary bytes.
            let tail: Vec<u8> = (cut..end + 64)
                .map(|_| if garbage { rng.gen_range(1..=255u8) } else { 0 })
                .collect();
            overwrite(&seg, cut, &tail);
            assert_holds_exactly(work.path(), n - 1, small(SEGMENT));
        }
    }
}

#[test]
fn a_cut_inside_earlier_records_of_the_last_segment_keeps_the_prefix() {
    let base = tempfile::tempdir().unwrap();
    let (_, ranges) = build(base.path());
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for _ in 0..60 {
        let (lsn, start, end) = ranges[rng.gen_range(0..ranges.len())];
        let cut = rng.gen_range(start..end);
        let work = tempfile::tempdir().unwrap();
        copy_dir(base.path(), work.path());
        let seg = segment_files(work.path()).pop().unwrap();
        let seg_len = std::fs::metadata(&seg).unwrap().len() as usize;
        overwrite(&seg, cut, &vec![0u8; seg_len - cut]);
        assert_holds_exactly(work.path(), lsn - 1, small(SEGMENT));
    }
}

#[test]
fn every_bit_flip_in_the_last_records_is_caught() {
    let base = tempfile::tempdir().unwrap();
    let (_, ranges) = build(base.path());
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    for _ in 0..300 {
        let (lsn, start, end) = ranges[rng.gen_range(ranges.len() - 8..ranges.len())];
        let at = rng.gen_range(start..end);
        let bit = 1u8 << rng.gen_range(0..8);
        let work = tempfile::tempdir().unwrap();
        copy_dir(base.path(), work.path());
        let seg = segment_files(work.path()).pop().unwrap();
        let mut b = [0u8; 1];
        std::fs::File::open(&seg).unwrap().read_exact_at(&mut b, at as u64).unwrap();
        overwrite(&seg, at, &[b[0] ^ bit]);
        // Strict recovery refuses, naming the segment and the damaged record's offset.
        match Wal::open(
            work.path(),
            Options { recovery: RecoveryMode::AbsoluteConsistency, ..small(SEGMENT) },
        ) {
            Err(Error::Corrupt { file, offset, .. }) => {
                assert_eq!(file, seg);
                assert_eq!(offset as usize, start, "flip at {at} in record {lsn}");
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("flip at {at} in record {lsn} not caught"),
        }
        assert_holds_exactly(work.path(), lsn - 1, small(SEGMENT));
    }
}

#[test]
fn damage_outside_the_last_segment_is_an_error_unless_tolerated() {
    let base = tempfile::tempdir().unwrap();
    let (_, _) = build(base.path());
    let first_seg = segment_files(base.path())[0].clone();
    // Record 5 of the first segment.
    let mut at = SEGMENT_HEADER_LEN;
    for l in 1..5 {
        at += RECORD_HEADER_LEN + payload_for(l, MAX_PAYLOAD).len();
    }
    overwrite(&first_seg, at + RECORD_HEADER_LEN - 1, &[0xEE]);
    match Wal::open(base.path(), small(SEGMENT)) {
        Err(e @ Error::Corrupt { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(first_seg.to_str().unwrap()), "{msg}");
            assert!(msg.contains(&format!("offset {at}")), "{msg}");
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("damage in a sealed segment was accepted"),
    }
    // The tolerant mode cuts the log at the damage and drops the later segments.
    let tolerant = Options { recovery: RecoveryMode::TolerateAnyCorruption, ..small(SEGMENT) };
    assert_holds_exactly(base.path(), 4, tolerant);
    assert_eq!(segment_files(base.path()).len(), 1);
}

#[test]
fn a_damaged_segment_header_is_an_error_naming_the_file() {
    let base = tempfile::tempdir().unwrap();
    build(base.path());
    let first_seg = segment_files(base.path())[0].clone();
    overwrite(&first_seg, 3, b"X");
    match Wal::open(base.path(), small(SEGMENT)) {
        Err(Error::Corrupt { file, offset: 0, detail }) => {
            assert_eq!(file, first_seg);
            assert!(detail.contains("magic"), "{detail}");
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("bad header accepted"),
    }
}

#[test]
fn a_missing_middle_segment_is_an_lsn_gap_error() {
    let dir = tempfile::tempdir().unwrap();
    let log = Wal::open(dir.path(), small(1024)).unwrap();
    for i in 1..=60u64 {
        log.append(1, 0, &payload_for(i, 100)).unwrap();
    }
    log.sync().unwrap();
    drop(log);
    let segs = segment_files(dir.path());
    assert!(segs.len() >= 3);
    std::fs::remove_file(&segs[1]).unwrap();
    match Wal::open(dir.path(), small(1024)) {
        Err(Error::Corrupt { file, detail, .. }) => {
            assert_eq!(file, segs[2]);
            assert!(detail.contains("gap"), "{detail}");
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("gap accepted"),
    }
}

#[test]
fn random_bytes_in_a_log_directory_never_panic_recovery() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    for round in 0..200 {
        let dir = tempfile::tempdir().unwrap();
        let log = Wal::open(dir.path(), small(2048)).unwrap();
        for i in 1..=rng.gen_range(1..40u64) {
            log.append(1, 0, &payload_for(i, 100)).unwrap();
        }
        log.sync().unwrap();
        drop(log);
        let segs = segment_files(dir.path());
        let seg = &segs[rng.gen_range(0..segs.len())];
        let at = rng.gen_range(0..2048);
        let junk: Vec<u8> = (0..rng.gen_range(1..64)).map(|_| rng.gen()).collect();
        overwrite(seg, at, &junk[..junk.len().min(2048 - at)]);
        // Any outcome but a panic is acceptable; a success must read back cleanly.
        if let Ok(log) = Wal::open(
            dir.path(),
            Options {
                recovery: if round % 2 == 0 {
                    RecoveryMode::TolerateAnyCorruption
                } else {
                    RecoveryMode::TolerateTailCorruption
                },
                ..small(2048)
            },
        ) {
            for r in read_all(&log) {
                assert_eq!(r.payload, payload_for(r.lsn, 100));
            }
        }
    }
}
