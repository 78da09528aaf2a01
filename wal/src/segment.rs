//! One segment file: creation (zero-filled, header, synced), its shared mapping, record
//! reads and range flushes.
//!
//! Records are written with `pwrite` into the mapped file and read through the mapping;
//! durability is an `msync` of the dirty range (the page cache is shared, so msync flushes
//! pages dirtied by `pwrite`). Storing through the mapping instead was measured here at
//! about 3x the cost per durable append (a write fault on every page cleaned by the last
//! sync), and turns a failed write into SIGBUS instead of an error.
//!
//! Segments are filled with real zero blocks before use (not a sparse `set_len`): writing
//! into a hole makes every `msync` also commit block allocation, which costs about 1.5x per
//! sync here, and a full disk would surface as SIGBUS on a store to the mapping instead of an
//! error at creation.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use memmap2::{MmapOptions, MmapRaw};

use crate::error::{Error, Result};
use crate::format::{
    segment_file_name, HeaderError, RecordHeader, SegmentHeader, RECORD_HEADER_LEN,
    SEGMENT_HEADER_LEN,
};
use crate::{Epoch, Lsn};

/// Zero bytes written per call while filling a new segment.
const ZERO_FILL_CHUNK: usize = 1 << 20;

/// One mapped segment file.
///
/// Concurrency: bytes below `end` are published records and are only rewritten by
/// `Wal::truncate_after`, which excludes readers with the log's read guard; bytes at and
/// above `end` belong to the single appender holding the log's append lock.
pub(crate) struct Segment {
    pub path: PathBuf,
    pub header: SegmentHeader,
    map: MmapRaw,
    /// End of the published records (an offset into the file).
    end: AtomicUsize,
    file: File,
    /// Sparse index: `(lsn, offset)` of every `INDEX_STRIDE`-th record, ascending, so that
    /// reading from an LSN does not walk the segment from its start.
    index: std::sync::Mutex<Vec<(Lsn, usize)>>,
}

/// One index entry per this many records of a segment.
pub(crate) const INDEX_STRIDE: u64 = 256;

/// What lies at an offset of a segment.
#[derive(Debug)]
pub(crate) enum Slot {
    /// A well-formed record (checksum verified) and where its payload is.
    Record { header: RecordHeader, payload_at: usize },
    /// Zeroes or too little room for a record: the end of this segment's records.
    End,
    /// Bytes that are not a valid record.
    Bad(String),
}

impl Segment {
    /// Size of the mapping (the file size).
    pub fn size(&self) -> usize {
        self.map.len()
    }

    /// Offset after the last published record.
    pub fn end(&self) -> usize {
        self.end.load(Ordering::Acquire)
    }

    /// Notes where record `lsn` starts, if it falls on the index stride.
    pub fn index_record(&self, lsn: Lsn, offset: usize) {
        if (lsn - self.header.first_lsn).is_multiple_of(INDEX_STRIDE) {
            self.index.lock().unwrap_or_else(|e| e.into_inner()).push((lsn, offset));
        }
    }

    /// Forgets index entries of records after `lsn` (truncation).
    pub fn unindex_after(&self, lsn: Lsn) {
        self.index.lock().unwrap_or_else(|e| e.into_inner()).retain(|&(l, _)| l <= lsn);
    }

    /// The closest known record start at or before `lsn`: `(its lsn, offset)`.
    pub fn seek(&self, lsn: Lsn) -> (Lsn, usize) {
        let index = self.index.lock().unwrap_or_else(|e| e.into_inner());
        let i = index.partition_point(|&(l, _)| l <= lsn);
        if i == 0 {
            (self.header.first_lsn, SEGMENT_HEADER_LEN)
        } else {
            index[i - 1]
        }
    }

    /// Publishes records up to `end` to readers.
    pub fn set_end(&self, end: usize) {
        self.end.store(end, Ordering::Release);
    }

    /// Creates a durable, zero-filled segment `first_lsn` in `dir`, reusing the prepared
    /// zero-filled file `spare` when given (it is renamed into place).
    pub fn create(
        dir: &Path,
        header: SegmentHeader,
        size: usize,
        spare: Option<PathBuf>,
    ) -> Result<Segment> {
        fail::fail_point!("wal::segment::create", |_| Err(Error::io(
            "create segment",
            dir,
            std::io::Error::from_raw_os_error(28) // ENOSPC: the disk is full
        )));
        let tmp = match spare {
            Some(p) => p,
            None => {
                let p = dir.join("create.tmp");
                prepare_zeroed_file(&p, size)?;
                p
            }
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&tmp)
            .map_err(|e| Error::io("open new segment", &tmp, e))?;
        let len = file.metadata().map_err(|e| Error::io("stat new segment", &tmp, e))?.len();
        if len as usize != size {
            return Err(Error::io(
                "check new segment size",
                &tmp,
                std::io::Error::other(format!("size {len} but expected {size}")),
            ));
        }
        {
            use std::os::unix::fs::FileExt;
            file.write_all_at(&header.encode(), 0)
                .map_err(|e| Error::io("write segment header", &tmp, e))?;
            file.sync_data().map_err(|e| Error::io("sync segment header", &tmp, e))?;
        }
        let path = dir.join(segment_file_name(header.first_lsn));
        fs::rename(&tmp, &path).map_err(|e| Error::io("rename new segment", &path, e))?;
        sync_dir(dir)?;
        let map = map_file(&file, &path)?;
        Ok(Segment {
            path,
            header,
            map,
            end: AtomicUsize::new(SEGMENT_HEADER_LEN),
            file,
            index: Default::default(),
        })
    }

    /// Opens and maps an existing segment and checks its header. `end` starts at the header;
    /// recovery finds the real end.
    pub fn open(path: &Path) -> Result<std::result::Result<Segment, HeaderError>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io("open segment", path, e))?;
        let len = file.metadata().map_err(|e| Error::io("stat segment", path, e))?.len() as usize;
        if len < SEGMENT_HEADER_LEN {
            return Ok(Err(HeaderError::Blank));
        }
        let map = map_file(&file, path)?;
        // SAFETY: nobody else writes this mapping yet (the log directory is locked).
        let header = match SegmentHeader::decode(unsafe { map_slice(&map, 0, SEGMENT_HEADER_LEN) })
        {
            Ok(h) => h,
            Err(e) => return Ok(Err(e)),
        };
        Ok(Ok(Segment {
            path: path.to_path_buf(),
            header,
            map,
            end: AtomicUsize::new(SEGMENT_HEADER_LEN),
            file,
            index: Default::default(),
        }))
    }

    /// Reads what lies at `offset`, looking no further than `limit`.
    ///
    /// The caller guarantees that `[offset, limit)` is not being written concurrently
    /// (published records under the read guard, or the appender's own region).
    pub fn slot_at(&self, offset: usize, limit: usize) -> Slot {
        let limit = limit.min(self.size());
        if offset + RECORD_HEADER_LEN > limit {
            return Slot::End;
        }
        // SAFETY: in bounds (checked above); see the caller's guarantee.
        let head = unsafe { map_slice(&self.map, offset, RECORD_HEADER_LEN) };
        let header = RecordHeader::decode(head);
        if header.lsn == 0 {
            if head.iter().all(|&b| b == 0) {
                return Slot::End;
            }
            return Slot::Bad("record with lsn 0".to_string());
        }
        let payload_at = offset + RECORD_HEADER_LEN;
        if header.len as usize > limit - payload_at {
            return Slot::Bad(format!(
                "record length {} runs past the end of the segment data",
                header.len
            ));
        }
        // SAFETY: in bounds (checked above); see the caller's guarantee.
        let payload = unsafe { map_slice(&self.map, payload_at, header.len as usize) };
        let actual = header.checksum(payload);
        if actual != header.crc {
            return Slot::Bad(format!(
                "checksum expected {:#010x} but got {actual:#010x}",
                header.crc
            ));
        }
        Slot::Record { header, payload_at }
    }

    /// The payload bytes of a record found by `slot_at`.
    ///
    /// # Safety
    /// The same guarantee as for `slot_at`: the range is not written concurrently.
    pub unsafe fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        map_slice(&self.map, offset, len)
    }

    /// Writes `bytes` into the file at `offset` (beyond the published end).
    ///
    /// The caller holds the log's append lock, so nobody else writes or reads that region.
    pub fn write(&self, offset: usize, bytes: &[u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        if offset + bytes.len() > self.size() {
            return Err(Error::io(
                "write record",
                &self.path,
                std::io::Error::other("write beyond the end of the segment"),
            ));
        }
        self.file
            .write_all_at(bytes, offset as u64)
            .map_err(|e| Error::io("write record", &self.path, e))
    }

    /// Fills `[from, to)` with zeroes (not yet durable: `flush` it).
    ///
    /// The caller excludes appenders (the append lock) and readers (the read guard).
    pub fn zero(&self, from: usize, to: usize) -> Result<()> {
        let to = to.min(self.size());
        let zeros = vec![0u8; (to.saturating_sub(from)).min(ZERO_FILL_CHUNK)];
        let mut at = from;
        while at < to {
            let n = (to - at).min(zeros.len());
            self.write(at, &zeros[..n])?;
            at += n;
        }
        Ok(())
    }

    /// Makes `[from, to)` durable (msync of the pages that hold it).
    pub fn flush(&self, from: usize, to: usize) -> Result<()> {
        if from >= to {
            return Ok(());
        }
        self.map.flush_range(from, to - from).map_err(|e| Error::io("msync", &self.path, e))
    }

    /// Offset after the last non-zero byte at or above `from` (or `from` when there is none).
    pub fn last_nonzero_end(&self, from: usize) -> usize {
        const CHUNK: usize = 4096;
        let mut end = self.size();
        while end > from {
            let start = end.saturating_sub(CHUNK).max(from);
            // SAFETY: in bounds; only called during recovery or with readers excluded.
            let chunk = unsafe { map_slice(&self.map, start, end - start) };
            if let Some(i) = chunk.iter().rposition(|&b| b != 0) {
                return start + i + 1;
            }
            end = start;
        }
        from
    }

    /// Hints that the segment will be read from start to end (recovery).
    pub fn advise_sequential(&self, on: bool) {
        let advice = if on { memmap2::Advice::Sequential } else { memmap2::Advice::Normal };
        // Only a hint: failure changes nothing but speed.
        let _ = self.map.advise(advice);
    }

    /// The epoch of the record before `first_lsn` or of the last record of this segment.
    pub fn prev_epoch(&self) -> Epoch {
        self.header.prev_epoch
    }

    /// The first LSN this segment holds (or would hold).
    pub fn first_lsn(&self) -> Lsn {
        self.header.first_lsn
    }
}

/// Creates `path` holding `size` zero bytes, written out for real and synced.
pub(crate) fn prepare_zeroed_file(path: &Path, size: usize) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| Error::io("create segment file", path, e))?;
    let zeros = vec![0u8; ZERO_FILL_CHUNK.min(size)];
    let mut left = size;
    while left > 0 {
        let n = left.min(zeros.len());
        f.write_all(&zeros[..n]).map_err(|e| Error::io("zero-fill segment", path, e))?;
        left -= n;
    }
    f.sync_all().map_err(|e| Error::io("sync segment file", path, e))?;
    Ok(())
}

/// fsync of a directory, so that created, renamed and removed entries are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io("sync directory", dir, e))
}

/// Creates `dir` and its missing parents durably: a new directory is an entry of its parent,
/// which a power loss drops unless the parent is synced after the creation (an fsync of the
/// files inside does not cover it). Directories that exist already are left as they are.
/// `tests/fault_mix.rs` (power cuts on a filesystem that drops what was not synced) fails
/// without these syncs: a node came back without its shards.
pub fn create_dir_all_synced(dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at.filter(|d| !d.as_os_str().is_empty() && !d.is_dir()) {
        missing.push(d);
        at = d.parent();
    }
    for d in missing.into_iter().rev() {
        match fs::create_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(e) => return Err(Error::io("create directory", d, e)),
        }
        sync_dir(d)?;
        let parent = d.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        sync_dir(parent)?;
    }
    Ok(())
}

fn map_file(file: &File, path: &Path) -> Result<MmapRaw> {
    MmapOptions::new().map_raw(file).map_err(|e| Error::io("mmap segment", path, e))
}

/// # Safety
/// `[offset, offset + len)` is inside the mapping and not written concurrently.
unsafe fn map_slice(map: &MmapRaw, offset: usize, len: usize) -> &[u8] {
    debug_assert!(offset + len <= map.len());
    std::slice::from_raw_parts(map.as_ptr().add(offset), len)
}
