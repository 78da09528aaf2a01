//! The node's error type (for start-up and storage faults; request errors are
//! `protocol::ErrorBody` values answered to the caller).

use std::path::{Path, PathBuf};

/// What can stop a node or one of its shards.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system call failed.
    #[error("{op} failed on {}; {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file, directory or address concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A shard's log failed.
    #[error(transparent)]
    Wal(#[from] wal::Error),
    /// Stored data that cannot be read back.
    #[error("corrupt {what}; {detail}")]
    Corrupt {
        /// What was being read.
        what: String,
        /// What was wrong.
        detail: String,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Error {
        Error::Io { op, path: path.to_path_buf(), source }
    }
}

/// The node's result type.
pub type Result<T> = std::result::Result<T, Error>;
