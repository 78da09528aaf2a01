//! The log's one error type.

use std::path::{Path, PathBuf};

use crate::{Epoch, Lsn};

/// Everything that can go wrong in the log. Corruption is a value, never a panic.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system call failed.
    #[error("{op} failed on {}; {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Another process (or another handle in this one) has the log open.
    #[error("log {} is locked by another user", dir.display())]
    Locked {
        /// The log directory.
        dir: PathBuf,
    },
    /// The log holds bytes that are not what this code wrote, where it may not cut them.
    #[error("corrupt log in {} at offset {offset}; {detail}", file.display())]
    Corrupt {
        /// The segment file.
        file: PathBuf,
        /// Byte offset of the first bad byte found.
        offset: u64,
        /// What was wrong.
        detail: String,
    },
    /// A record larger than a segment can hold.
    #[error("record of {len} bytes is too large; a segment holds at most {max}")]
    RecordTooLarge {
        /// Payload length asked for.
        len: usize,
        /// Largest payload a segment holds.
        max: usize,
    },
    /// An append with an epoch below the last record's epoch.
    #[error("epoch regression; last record has epoch {last} but append has {got}")]
    EpochRegression {
        /// The epoch of the last record.
        last: Epoch,
        /// The epoch of the rejected append.
        got: Epoch,
    },
    /// An LSN outside what the log holds.
    #[error("lsn {lsn} out of range; the log holds {first}..={last}")]
    LsnOutOfRange {
        /// The LSN asked for.
        lsn: Lsn,
        /// First LSN still held (after purges).
        first: Lsn,
        /// Last LSN appended.
        last: Lsn,
    },
    /// The log was truncated while an iterator was reading it.
    #[error("log truncated during iteration")]
    Truncated,
    /// An earlier sync failed: what is durable is unknown, so the log refuses all work until
    /// it is reopened (and recovered from what is really on disk).
    #[error("log poisoned by an earlier failed sync; reopen it")]
    Poisoned,
    /// Options that cannot work.
    #[error("invalid options; {0}")]
    InvalidOptions(String),
}

impl Error {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Error {
        Error::Io { op, path: path.to_path_buf(), source }
    }
}

/// The log's result type.
pub type Result<T> = std::result::Result<T, Error>;
