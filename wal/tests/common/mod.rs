//! Helpers shared by the wal test targets.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use wal::{Options, Record, RecoveryMode, SyncPolicy, Wal};

/// Bytes of a segment header and of a record header (the documented format).
pub const SEGMENT_HEADER_LEN: usize = 64;
pub const RECORD_HEADER_LEN: usize = 25;

/// Options with small segments so that tests rotate often.
pub fn small(segment_size: usize) -> Options {
    Options {
        segment_size,
        sync: SyncPolicy::Always,
        recovery: RecoveryMode::TolerateTailCorruption,
        prepare_spare_segments: true,
    }
}

/// A payload that depends on `lsn` only, of varying length (0..=max_len), so a reader can
/// check any record it finds without having kept it.
pub fn payload_for(lsn: u64, max_len: usize) -> Vec<u8> {
    let mut x = lsn.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let len = (x % (max_len as u64 + 1)) as usize;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Every record of the log, in order, failing the test on any error.
pub fn read_all(log: &Wal) -> Vec<Record> {
    let first = log.first_lsn();
    log.iter_from(first).expect("iter_from").map(|r| r.expect("record")).collect()
}

/// Segment files of a log directory in log order.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// Copies every file of `from` into a new directory `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let p = e.expect("entry").path();
        std::fs::copy(&p, to.join(p.file_name().expect("name"))).expect("copy");
    }
}
