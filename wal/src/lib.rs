//! `wal`: a segmented, mmap'd, CRC'd write-ahead log.
//!
//! Every shard replica of a shardgate node keeps its data in one of these logs. The log is
//! a synchronous library (no async runtime): a directory of fixed-size, zero-filled segment
//! files mapped with memmap2, records appended by copying into the mapping and made durable
//! by `msync` of the dirty range. Many threads may append and sync at once; one sync covers
//! every append before it (group commit).
//!
//! ```no_run
//! let log = wal::Wal::open("/tmp/shard-log", wal::Options::default())?;
//! let lsn = log.append(1, 0, b"row bytes")?;
//! log.make_durable(lsn)?; // on disk when this returns (SyncPolicy::Always)
//! for rec in log.iter_from(1)? {
//!     let rec = rec?;
//!     assert_eq!(rec.payload, b"row bytes");
//! }
//! # Ok::<(), wal::Error>(())
//! ```
//!
//! # Layout
//! - `format`: segment and record byte formats, file names (written down there).
//! - `segment`: one segment file: zero-filled creation, mapping, record reads, flushes.
//! - `recovery`: opening a directory, checking every segment, cutting a torn tail.
//! - `log`: [`Wal`], the set of segments: append, sync, truncate, reset, purge, iterate.
//! - `error`: [`Error`] and [`Result`].
//!
//! # Fail points
//! With the `failpoints` feature, these names can be armed with the `fail` crate:
//! `wal::append::write` (a write that stops half way), `wal::sync` (a failed msync; the
//! log is poisoned), `wal::segment::create` (a full disk when a segment is created).

mod error;
mod format;
mod log;
mod recovery;
mod segment;

use std::time::Duration;

pub use error::{Error, Result};
pub use log::{Iter, Wal, MIN_SEGMENT_SIZE};
pub use segment::create_dir_all_synced;

/// Log sequence number: dense, increasing from 1 within one log.
pub type Lsn = u64;
/// Epoch (term) of the primary that wrote a record; never decreases along the log.
pub type Epoch = u64;

/// Default segment size: 32 MiB.
pub const DEFAULT_SEGMENT_SIZE: usize = 32 << 20;

/// When appended records reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// `make_durable` syncs before it returns: nothing acknowledged is ever lost (default).
    Always,
    /// A background thread syncs at this period; a crash loses at most one period of
    /// acknowledged records.
    Periodic(Duration),
    /// Never sync, except when the log is closed. Loses acknowledged records on a crash:
    /// for benchmarks that compare against other systems' unsafe modes only.
    NeverUnsafe,
}

/// What recovery does with records that fail their checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryMode {
    /// Cut a torn or damaged tail of the last segment (what a crash leaves); damage in any
    /// other segment is an error naming file and offset (default).
    TolerateTailCorruption,
    /// Any damaged record is an error, even at the tail.
    AbsoluteConsistency,
    /// Cut the log at the first damaged record wherever it is, dropping everything after.
    TolerateAnyCorruption,
}

/// How a log is opened.
#[derive(Clone, Debug)]
pub struct Options {
    /// Size of each segment file in bytes (at least [`MIN_SEGMENT_SIZE`]).
    pub segment_size: usize,
    /// When appends become durable.
    pub sync: SyncPolicy,
    /// What recovery tolerates.
    pub recovery: RecoveryMode,
    /// Zero-fill the next segment in a background thread once the active one is half
    /// full, so that rotation does not stall appends.
    pub prepare_spare_segments: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_size: DEFAULT_SEGMENT_SIZE,
            sync: SyncPolicy::Always,
            recovery: RecoveryMode::TolerateTailCorruption,
            prepare_spare_segments: true,
        }
    }
}

/// One record read back from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Its position in the log.
    pub lsn: Lsn,
    /// The epoch it was written in.
    pub epoch: Epoch,
    /// Caller-defined record type.
    pub kind: u8,
    /// Caller-defined bytes.
    pub payload: Vec<u8>,
}
