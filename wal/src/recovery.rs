//! Opening a log directory: find the segments, check them in order, cut a torn tail.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::{parse_segment_file_name, HeaderError, SEGMENT_HEADER_LEN};
use crate::segment::{sync_dir, Segment, Slot};
use crate::{Epoch, Lsn, RecoveryMode};

/// The state of a log after recovery.
pub(crate) struct Recovered {
    /// Segments in log order, each with its end set; may be empty (a new log).
    pub segments: Vec<Arc<Segment>>,
    /// LSN the next append gets.
    pub next_lsn: Lsn,
    /// Epoch of the last record (or of the record before the first segment).
    pub last_epoch: Epoch,
}

/// Reads every segment of `dir` in order, checking magic, version, checksums and LSN
/// continuity, and applies `mode` to whatever is wrong.
pub(crate) fn recover(dir: &Path, mode: RecoveryMode) -> Result<Recovered> {
    let mut found = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| Error::io("list log directory", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list log directory", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(lsn) = parse_segment_file_name(name) {
            found.push((lsn, entry.path()));
        } else if name.ends_with(".tmp") {
            // A segment being prepared when the last user stopped; never part of the log.
            fs::remove_file(entry.path())
                .map_err(|e| Error::io("remove stale temporary file", &entry.path(), e))?;
        }
    }
    found.sort_by_key(|(lsn, _)| *lsn);

    let mut out = Recovered { segments: Vec::new(), next_lsn: 1, last_epoch: 0 };
    let count = found.len();
    for (i, (name_lsn, path)) in found.iter().enumerate() {
        let is_last = i + 1 == count;
        let bad = |offset: usize, detail: String| Error::Corrupt {
            file: path.clone(),
            offset: offset as u64,
            detail,
        };
        let seg = match Segment::open(path)? {
            Ok(seg) => seg,
            // Only creation can leave a blank last segment, and nothing in it was ever
            // acknowledged.
            Err(HeaderError::Blank) if is_last && mode != RecoveryMode::AbsoluteConsistency => {
                tracing::warn!(file = %path.display(), "removing blank last segment");
                fs::remove_file(path).map_err(|e| Error::io("remove blank segment", path, e))?;
                sync_dir(dir)?;
                break;
            }
            Err(e) => {
                let err = bad(0, e.to_string());
                drop_from(dir, &found[i..], mode, err)?;
                break;
            }
        };
        let first = seg.first_lsn();
        let problem = if first != *name_lsn {
            Some(format!("header says first lsn {first} but the file name says {name_lsn}"))
        } else if i > 0 && first != out.next_lsn {
            Some(format!(
                "lsn gap; previous segment ends before {} but this one starts at {first}",
                out.next_lsn
            ))
        } else if i > 0 && seg.prev_epoch() != out.last_epoch {
            Some(format!(
                "header says previous epoch {} but the previous segment ends with epoch {}",
                seg.prev_epoch(),
                out.last_epoch
            ))
        } else {
            None
        };
        if let Some(detail) = problem {
            drop_from(dir, &found[i..], mode, bad(0, detail))?;
            break;
        }
        if i == 0 {
            out.next_lsn = first;
            out.last_epoch = seg.prev_epoch();
        }

        seg.advise_sequential(true);
        let mut offset = SEGMENT_HEADER_LEN;
        let mut failure = None;
        loop {
            match seg.slot_at(offset, seg.size()) {
                Slot::Record { header, .. } => {
                    if header.lsn != out.next_lsn {
                        failure =
                            Some(format!("lsn expected {} but got {}", out.next_lsn, header.lsn));
                        break;
                    }
                    if header.epoch < out.last_epoch {
                        failure = Some(format!(
                            "epoch went back from {} to {}",
                            out.last_epoch, header.epoch
                        ));
                        break;
                    }
                    seg.index_record(header.lsn, offset);
                    out.next_lsn += 1;
                    out.last_epoch = header.epoch;
                    offset += header.total_len();
                }
                Slot::End => break,
                Slot::Bad(detail) => {
                    failure = Some(detail);
                    break;
                }
            }
        }
        seg.advise_sequential(false);
        seg.set_end(offset);
        let seg = Arc::new(seg);
        out.segments.push(seg.clone());

        if let Some(detail) = failure {
            let tolerated = match mode {
                RecoveryMode::AbsoluteConsistency => false,
                RecoveryMode::TolerateTailCorruption => is_last,
                RecoveryMode::TolerateAnyCorruption => true,
            };
            if !tolerated {
                return Err(bad(offset, detail));
            }
            tracing::warn!(file = %path.display(), offset, %detail, "cutting the log here");
            let garbage_end = seg.last_nonzero_end(offset);
            // The log is locked and not shared yet; nobody reads or writes it.
            seg.zero(offset, garbage_end)?;
            seg.flush(offset, garbage_end)?;
            if !is_last {
                drop_from(dir, &found[i + 1..], mode, bad(offset, "unreachable".into()))?;
            }
            break;
        }
    }
    Ok(out)
}

/// Removes the segments `rest` (newest first, so the log never has a hole) when `mode`
/// tolerates it; otherwise returns `err`.
fn drop_from(
    dir: &Path,
    rest: &[(Lsn, std::path::PathBuf)],
    mode: RecoveryMode,
    err: Error,
) -> Result<()> {
    if mode != RecoveryMode::TolerateAnyCorruption {
        return Err(err);
    }
    tracing::warn!(error = %err, dropped = rest.len(), "dropping the rest of the log");
    for (_, path) in rest.iter().rev() {
        fs::remove_file(path).map_err(|e| Error::io("remove segment", path, e))?;
    }
    sync_dir(dir)
}
