//! Bytes on disk: segment headers, record headers and file names. Nothing here does IO.
//!
//! A log directory holds:
//! - `LOCK`: held with an exclusive `flock` by the process that has the log open.
//! - `{first_lsn:020}.seg`: segment files, fixed size, zero-filled before first use, so the
//!   lexical order of the names is the order of the log.
//! - `*.tmp`: a segment being prepared; never part of the log, removed at open.
//!
//! Segment format (all integers little-endian):
//! ```text
//! { magic:[u8;8] = "SGWALSEG" | version:u32 | flags:u32 | first_lsn:u64 | prev_epoch:u64
//!   | header_crc32:u32 | zero padding up to SEGMENT_HEADER_LEN }
//! { record }* { zeroes up to the end of the file }
//! ```
//! `prev_epoch` is the epoch of record `first_lsn - 1`, so that an empty log that starts
//! after a snapshot still knows `last() == (first_lsn - 1, prev_epoch)`.
//! `header_crc32` covers the 32 bytes before it.
//!
//! Record format:
//! ```text
//! { len:u32 | crc32:u32 | lsn:u64 | epoch:u64 | kind:u8 | payload:[u8; len] }
//! ```
//! `crc32` (crc32fast, IEEE) covers everything after the crc field: lsn, epoch, kind and
//! payload. LSNs are dense and start at 1, so a record whose lsn field is zero is never
//! valid: the zero-filled space after the last record reads as "end of log".

use crate::{Epoch, Lsn};

/// Magic number at the start of every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"SGWALSEG";
/// Version of the segment and record format written by this code.
pub(crate) const FORMAT_VERSION: u32 = 1;
/// Bytes reserved for the segment header; records start at this offset.
pub(crate) const SEGMENT_HEADER_LEN: usize = 64;
/// Bytes of a record before its payload.
pub(crate) const RECORD_HEADER_LEN: usize = 25;
/// File name suffix of a segment.
const SEGMENT_SUFFIX: &str = ".seg";
/// Digits in a segment's file name (u64::MAX has 20).
const SEGMENT_NAME_DIGITS: usize = 20;

/// The decoded header of one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub first_lsn: Lsn,
    pub prev_epoch: Epoch,
}

/// Why a segment header could not be used.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// Every byte is zero: the segment was being created when the process stopped.
    Blank,
    BadMagic,
    UnsupportedVersion(u32),
    Checksum {
        expected: u32,
        actual: u32,
    },
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::Blank => write!(f, "blank segment header"),
            HeaderError::BadMagic => write!(f, "bad magic: not a shardgate wal segment"),
            HeaderError::UnsupportedVersion(v) => {
                write!(f, "format version {v} not supported; this build reads {FORMAT_VERSION}")
            }
            HeaderError::Checksum { expected, actual } => {
                write!(f, "header checksum expected {expected:#010x} but got {actual:#010x}")
            }
        }
    }
}

impl SegmentHeader {
    /// Encodes the header into exactly `SEGMENT_HEADER_LEN` bytes.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        // b[12..16]: flags, none defined yet.
        b[16..24].copy_from_slice(&self.first_lsn.to_le_bytes());
        b[24..32].copy_from_slice(&self.prev_epoch.to_le_bytes());
        let crc = crc32fast::hash(&b[0..32]);
        b[32..36].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a header; `b` must hold at least `SEGMENT_HEADER_LEN` bytes.
    pub fn decode(b: &[u8]) -> Result<SegmentHeader, HeaderError> {
        let b = &b[..SEGMENT_HEADER_LEN];
        if b.iter().all(|&x| x == 0) {
            return Err(HeaderError::Blank);
        }
        if b[0..8] != SEGMENT_MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let version = read_u32(b, 8);
        if version != FORMAT_VERSION {
            return Err(HeaderError::UnsupportedVersion(version));
        }
        let expected = read_u32(b, 32);
        let actual = crc32fast::hash(&b[0..32]);
        if expected != actual {
            return Err(HeaderError::Checksum { expected, actual });
        }
        Ok(SegmentHeader { first_lsn: read_u64(b, 16), prev_epoch: read_u64(b, 24) })
    }
}

/// The fixed part of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub len: u32,
    pub crc: u32,
    pub lsn: Lsn,
    pub epoch: Epoch,
    pub kind: u8,
}

impl RecordHeader {
    /// Builds the header of a record, computing its checksum over `payload`.
    pub fn new(lsn: Lsn, epoch: Epoch, kind: u8, payload: &[u8]) -> RecordHeader {
        let mut h = RecordHeader { len: payload.len() as u32, crc: 0, lsn, epoch, kind };
        h.crc = h.checksum(payload);
        h
    }

    /// The checksum this header's fields and `payload` should carry.
    pub fn checksum(&self, payload: &[u8]) -> u32 {
        let mut tail = [0u8; RECORD_HEADER_LEN - 8];
        tail[0..8].copy_from_slice(&self.lsn.to_le_bytes());
        tail[8..16].copy_from_slice(&self.epoch.to_le_bytes());
        tail[16] = self.kind;
        let mut h = crc32fast::Hasher::new();
        h.update(&tail);
        h.update(payload);
        h.finalize()
    }

    pub fn encode(&self) -> [u8; RECORD_HEADER_LEN] {
        let mut b = [0u8; RECORD_HEADER_LEN];
        b[0..4].copy_from_slice(&self.len.to_le_bytes());
        b[4..8].copy_from_slice(&self.crc.to_le_bytes());
        b[8..16].copy_from_slice(&self.lsn.to_le_bytes());
        b[16..24].copy_from_slice(&self.epoch.to_le_bytes());
        b[24] = self.kind;
        b
    }

    /// Decodes the fixed part; `b` must hold at least `RECORD_HEADER_LEN` bytes.
    pub fn decode(b: &[u8]) -> RecordHeader {
        RecordHeader {
            len: read_u32(b, 0),
            crc: read_u32(b, 4),
            lsn: read_u64(b, 8),
            epoch: read_u64(b, 16),
            kind: b[24],
        }
    }

    /// Bytes the whole record takes on disk.
    pub fn total_len(&self) -> usize {
        RECORD_HEADER_LEN + self.len as usize
    }
}

/// The file name of the segment whose first record is `first_lsn`.
pub(crate) fn segment_file_name(first_lsn: Lsn) -> String {
    format!("{first_lsn:0width$}{SEGMENT_SUFFIX}", width = SEGMENT_NAME_DIGITS)
}

/// The first LSN encoded in a segment file name, or `None` for any other file.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_NAME_DIGITS || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_header_round_trips_and_rejects_damage() {
        let h = SegmentHeader { first_lsn: 42, prev_epoch: 7 };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        assert_eq!(SegmentHeader::decode(&[0u8; SEGMENT_HEADER_LEN]), Err(HeaderError::Blank));
        let mut bad = b;
        bad[0] ^= 1;
        assert_eq!(SegmentHeader::decode(&bad), Err(HeaderError::BadMagic));
        let mut bad = b;
        bad[8] = 9;
        assert_eq!(SegmentHeader::decode(&bad), Err(HeaderError::UnsupportedVersion(9)));
        for byte in 16..36 {
            let mut bad = b;
            bad[byte] ^= 0x10;
            assert!(matches!(SegmentHeader::decode(&bad), Err(HeaderError::Checksum { .. })));
        }
    }

    #[test]
    fn record_header_round_trips_and_checksum_covers_every_field() {
        let payload = b"hello";
        let h = RecordHeader::new(3, 2, 1, payload);
        assert_eq!(RecordHeader::decode(&h.encode()), h);
        assert_eq!(h.total_len(), RECORD_HEADER_LEN + 5);
        assert_eq!(h.checksum(payload), h.crc);
        assert_ne!(RecordHeader { lsn: 4, ..h }.checksum(payload), h.crc);
        assert_ne!(RecordHeader { epoch: 3, ..h }.checksum(payload), h.crc);
        assert_ne!(RecordHeader { kind: 0, ..h }.checksum(payload), h.crc);
        assert_ne!(h.checksum(b"hellp"), h.crc);
    }

    #[test]
    fn segment_names_sort_in_log_order() {
        assert_eq!(segment_file_name(1), "00000000000000000001.seg");
        assert_eq!(parse_segment_file_name(&segment_file_name(u64::MAX)), Some(u64::MAX));
        assert!(segment_file_name(9) < segment_file_name(10));
        assert_eq!(parse_segment_file_name("LOCK"), None);
        assert_eq!(parse_segment_file_name("0001.seg"), None);
        assert_eq!(parse_segment_file_name("0000000000000000000a.seg"), None);
        assert_eq!(parse_segment_file_name("spare.tmp"), None);
    }
}
