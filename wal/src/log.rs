//! The log: the ordered set of segments, appends, group-committed syncs, truncation, purge
//! and reads.
//!
//! Locks, always taken in this order when more than one is needed:
//! 1. `sync_lock` — one sync at a time; a thread that waited for it usually finds its LSN
//!    already durable (group commit).
//! 2. `read_guard` — readers hold it shared while copying a record; truncation holds it
//!    exclusively while it rewrites published bytes.
//! 3. `inner` — the append state. A sync holds it only to take the dirty range, never while
//!    flushing, so appends go on during a flush.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::format::{RecordHeader, SegmentHeader, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use crate::recovery::recover;
use crate::segment::{prepare_zeroed_file, sync_dir, Segment, Slot};
use crate::{Epoch, Lsn, Options, Record, SyncPolicy};

/// Name of the lock file inside a log directory.
const LOCK_FILE: &str = "LOCK";
/// Name of the segment file prepared ahead of need.
const SPARE_FILE: &str = "spare.tmp";
/// Purged segments kept for reuse as new segments (their blocks are already allocated and
/// written, so appending into them costs what rewriting a preallocated file costs).
const MAX_RECYCLED_SEGMENTS: usize = 4;
/// Smallest segment size accepted.
pub const MIN_SEGMENT_SIZE: usize = 256;

/// A write-ahead log in one directory. `Send + Sync`: share it with `Arc` and append, sync
/// and read from any number of threads.
pub struct Wal {
    shared: Arc<Shared>,
    flusher: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

struct Shared {
    dir: PathBuf,
    opts: Options,
    inner: Mutex<Inner>,
    sync_lock: Mutex<()>,
    read_guard: RwLock<()>,
    /// Last appended LSN, published after the bytes are in the mapping.
    last_lsn: AtomicU64,
    /// Every LSN up to this one is on disk.
    durable_lsn: AtomicU64,
    /// Bumped by every truncation, so iterators notice that the log changed under them.
    generation: AtomicU64,
    poisoned: AtomicBool,
    _lock: File,
}

struct Inner {
    /// In log order; never empty; the last one is active.
    segments: Vec<Arc<Segment>>,
    /// Where the next record goes in the active segment.
    write_pos: usize,
    next_lsn: Lsn,
    last_epoch: Epoch,
    /// Start of the active segment's bytes not yet flushed.
    dirty_from: usize,
    spare: Spare,
    /// Reused buffer in which appends encode their records before one write.
    buf: Vec<u8>,
    /// Reused buffer: `buf` plus the zero terminator.
    buf_terminated: Vec<u8>,
    /// Purged segment files waiting to be reused. Their old records all have LSNs below
    /// the first LSN still held, and every write ends with a zero terminator, so recovery
    /// never reads them as part of the log.
    recycled: Vec<PathBuf>,
}

/// A zero-filled segment file prepared by a background thread before the active segment
/// fills, so rotation does not stall appends for the zero-fill.
enum Spare {
    None,
    Preparing(JoinHandle<Result<PathBuf>>),
}

impl Wal {
    /// Opens (creating if needed) the log in `dir` and recovers it: every segment is read
    /// in order and checked; a torn tail is cut as `opts.recovery` allows.
    pub fn open(dir: impl AsRef<Path>, opts: Options) -> Result<Wal> {
        let dir = dir.as_ref().to_path_buf();
        if opts.segment_size < MIN_SEGMENT_SIZE {
            return Err(Error::InvalidOptions(format!(
                "segment size {} is below the minimum {MIN_SEGMENT_SIZE}",
                opts.segment_size
            )));
        }
        crate::segment::create_dir_all_synced(&dir)?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io("open lock file", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(Error::Locked { dir }),
            Err(fs::TryLockError::Error(e)) => {
                return Err(Error::io("lock log directory", &lock_path, e))
            }
        }

        let mut rec = recover(&dir, opts.recovery)?;
        if rec.segments.is_empty() {
            let header = SegmentHeader { first_lsn: rec.next_lsn, prev_epoch: rec.last_epoch };
            rec.segments.push(Arc::new(Segment::create(&dir, header, opts.segment_size, None)?));
        }
        let active = rec.segments.last().map(|s| s.end()).unwrap_or(SEGMENT_HEADER_LEN);
        let last = rec.next_lsn - 1;
        let shared = Arc::new(Shared {
            dir,
            opts: opts.clone(),
            inner: Mutex::new(Inner {
                segments: rec.segments,
                write_pos: active,
                next_lsn: rec.next_lsn,
                last_epoch: rec.last_epoch,
                dirty_from: active,
                spare: Spare::None,
                buf: Vec::new(),
                buf_terminated: Vec::new(),
                recycled: Vec::new(),
            }),
            sync_lock: Mutex::new(()),
            read_guard: RwLock::new(()),
            last_lsn: AtomicU64::new(last),
            // Recovery read every record from the files, and cut tails were synced.
            durable_lsn: AtomicU64::new(last),
            generation: AtomicU64::new(0),
            poisoned: AtomicBool::new(false),
            _lock: lock,
        });
        let flusher = match opts.sync {
            SyncPolicy::Periodic(every) => Some(spawn_flusher(shared.clone(), every)),
            SyncPolicy::Always | SyncPolicy::NeverUnsafe => None,
        };
        Ok(Wal { shared, flusher })
    }

    /// The directory this log lives in.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Appends one record and returns its LSN. Not durable until a sync covers it: call
    /// [`Wal::make_durable`] (honours the sync policy) or [`Wal::sync`].
    pub fn append(&self, epoch: Epoch, kind: u8, payload: &[u8]) -> Result<Lsn> {
        self.append_batch(epoch, [(kind, payload)]).map(|(_, last)| last)
    }

    /// Appends several records under one lock acquisition and returns the first and last
    /// LSN. The batch is not atomic on disk: a crash may keep a prefix of it.
    pub fn append_batch<'a, I>(&self, epoch: Epoch, records: I) -> Result<(Lsn, Lsn)>
    where
        I: IntoIterator<Item = (u8, &'a [u8])>,
    {
        let s = &*self.shared;
        let mut inner = s.lock_inner();
        s.check_poisoned()?;
        if epoch < inner.last_epoch {
            return Err(Error::EpochRegression { last: inner.last_epoch, got: epoch });
        }
        let first = inner.next_lsn;
        let result = s.append_locked(&mut inner, epoch, records);
        let last = inner.next_lsn - 1;
        s.last_lsn.store(last, Ordering::Release);
        s.maybe_prepare_spare(&mut inner);
        drop(inner);
        result.map(|()| (first, last))
    }

    /// Makes every record appended so far durable with one msync of the dirty range, shared
    /// with every other thread syncing at the same time. Returns the durable LSN.
    pub fn sync(&self) -> Result<Lsn> {
        self.shared.sync_to(self.shared.last_lsn.load(Ordering::Acquire))
    }

    /// Returns once `lsn` is as durable as the sync policy promises: on disk for `Always`,
    /// at once for `Periodic` (the flusher covers it within the period) and `NeverUnsafe`.
    pub fn make_durable(&self, lsn: Lsn) -> Result<()> {
        self.shared.check_poisoned()?;
        match self.shared.opts.sync {
            SyncPolicy::Always => self.shared.sync_to(lsn).map(|_| ()),
            SyncPolicy::Periodic(_) | SyncPolicy::NeverUnsafe => Ok(()),
        }
    }

    /// Whether a failed sync (or a failed cut) poisoned the log: every later append, sync
    /// and cut fails until the log is opened again.
    pub fn is_poisoned(&self) -> bool {
        self.shared.poisoned.load(Ordering::Acquire)
    }

    /// Every LSN up to the returned one is on disk.
    pub fn durable_lsn(&self) -> Lsn {
        self.shared.durable_lsn.load(Ordering::Acquire)
    }

    /// The LSN and epoch of the last record (after a reset or purge of everything: the
    /// values the log was reset to; for a new log `(0, 0)`).
    pub fn last(&self) -> (Lsn, Epoch) {
        let inner = self.shared.lock_inner();
        (inner.next_lsn - 1, inner.last_epoch)
    }

    /// The LSN and epoch of the record just before the oldest one held (after a purge or
    /// reset, the point the log starts after; `(0, 0)` for a log that starts at 1).
    pub fn start(&self) -> (Lsn, Epoch) {
        let inner = self.shared.lock_inner();
        let first = &inner.segments[0];
        (first.first_lsn() - 1, first.prev_epoch())
    }

    /// The oldest LSN still held (equal to `last().0 + 1` when the log holds no record).
    pub fn first_lsn(&self) -> Lsn {
        self.shared.lock_inner().segments[0].first_lsn()
    }

    /// Reads records from `lsn` to the last record appended when the iterator was made.
    pub fn iter_from(&self, lsn: Lsn) -> Result<Iter<'_>> {
        let s = &*self.shared;
        let inner = s.lock_inner();
        let first = inner.segments[0].first_lsn();
        let last = inner.next_lsn - 1;
        if lsn < first || lsn > last + 1 {
            return Err(Error::LsnOutOfRange { lsn, first, last });
        }
        let idx = segment_index(&inner.segments, lsn);
        let (_, offset) = inner.segments[idx].seek(lsn);
        Ok(Iter {
            shared: s,
            segments: inner.segments[idx..].to_vec(),
            seg: 0,
            offset,
            next_lsn: lsn,
            last_lsn: last,
            generation: s.generation.load(Ordering::Acquire),
        })
    }

    /// Removes every record after `lsn`, so the next append gets `lsn + 1`. Durable when it
    /// returns. For a replica that must cut a tail its new primary does not have.
    pub fn truncate_after(&self, lsn: Lsn) -> Result<()> {
        let s = &*self.shared;
        let _sync = lock(&s.sync_lock);
        let _readers = s.read_guard.write().unwrap_or_else(|e| e.into_inner());
        let mut inner = s.lock_inner();
        s.check_poisoned()?;
        let first = inner.segments[0].first_lsn();
        let last = inner.next_lsn - 1;
        if lsn == last {
            return Ok(());
        }
        if lsn > last || lsn + 1 < first {
            return Err(Error::LsnOutOfRange { lsn, first, last });
        }
        let idx = segment_index(&inner.segments, lsn + 1);
        let seg = inner.segments[idx].clone();
        // Find record lsn + 1 and the epoch of record lsn.
        let (mut at_lsn, mut offset) = seg.seek(lsn);
        if at_lsn > lsn {
            (at_lsn, offset) = (seg.first_lsn(), SEGMENT_HEADER_LEN);
        }
        let _ = at_lsn;
        let mut epoch = seg.prev_epoch();
        loop {
            match seg.slot_at(offset, seg.end()) {
                Slot::Record { header, .. } if header.lsn <= lsn => {
                    epoch = header.epoch;
                    offset += header.total_len();
                }
                Slot::Record { .. } => break,
                Slot::End | Slot::Bad(_) => {
                    return Err(Error::Corrupt {
                        file: seg.path.clone(),
                        offset: offset as u64,
                        detail: format!("record {} not found while truncating", lsn + 1),
                    })
                }
            }
        }
        // Newest first, so a crash in between leaves a prefix of the old log, never a hole.
        for dead in inner.segments[idx + 1..].iter().rev() {
            fs::remove_file(&dead.path).map_err(|e| Error::io("remove segment", &dead.path, e))?;
        }
        sync_dir(&s.dir)?;
        inner.segments.truncate(idx + 1);
        seg.unindex_after(lsn);
        let old_end = seg.end();
        seg.set_end(offset);
        // Readers are excluded by the read guard, appenders by the inner lock.
        if let Err(e) = seg.zero(offset, old_end).and_then(|()| seg.flush(offset, old_end)) {
            s.poisoned.store(true, Ordering::Release);
            return Err(e);
        }
        inner.write_pos = offset;
        inner.dirty_from = offset;
        inner.next_lsn = lsn + 1;
        inner.last_epoch = epoch;
        s.generation.fetch_add(1, Ordering::AcqRel);
        s.last_lsn.store(lsn, Ordering::Release);
        s.durable_lsn.fetch_min(lsn, Ordering::AcqRel);
        Ok(())
    }

    /// Throws the whole log away and starts it again empty after `lsn` (the next append
    /// gets `lsn + 1`), remembering `epoch` as the epoch of record `lsn`. For a replica that
    /// installs a snapshot taken at `lsn`. Durable when it returns.
    pub fn reset(&self, lsn: Lsn, epoch: Epoch) -> Result<()> {
        let s = &*self.shared;
        let _sync = lock(&s.sync_lock);
        let _readers = s.read_guard.write().unwrap_or_else(|e| e.into_inner());
        let mut inner = s.lock_inner();
        s.check_poisoned()?;
        for dead in inner.segments.iter().rev() {
            fs::remove_file(&dead.path).map_err(|e| Error::io("remove segment", &dead.path, e))?;
        }
        // The log may restart below LSNs that recycled files still hold: never reuse them.
        for old in std::mem::take(&mut inner.recycled) {
            fs::remove_file(&old).map_err(|e| Error::io("remove recycled segment", &old, e))?;
        }
        sync_dir(&s.dir)?;
        let spare = inner.spare.take_ready();
        let header = SegmentHeader { first_lsn: lsn + 1, prev_epoch: epoch };
        let seg = Arc::new(Segment::create(&s.dir, header, s.opts.segment_size, spare)?);
        inner.segments = vec![seg];
        inner.write_pos = SEGMENT_HEADER_LEN;
        inner.dirty_from = SEGMENT_HEADER_LEN;
        inner.next_lsn = lsn + 1;
        inner.last_epoch = epoch;
        s.generation.fetch_add(1, Ordering::AcqRel);
        s.last_lsn.store(lsn, Ordering::Release);
        s.durable_lsn.store(lsn, Ordering::Release);
        Ok(())
    }

    /// Removes the segments whose records all lie below `lsn` (a checkpoint covers them).
    /// The active segment always stays. Returns how many segments were removed.
    pub fn purge_before(&self, lsn: Lsn) -> Result<usize> {
        let s = &*self.shared;
        let mut inner = s.lock_inner();
        s.check_poisoned()?;
        let mut n = 0;
        while inner.segments.len() > 1 && inner.segments[1].first_lsn() <= lsn {
            let dead = inner.segments.remove(0);
            // Oldest first: what stays is always a contiguous suffix of the log.
            if inner.recycled.len() < MAX_RECYCLED_SEGMENTS && dead.size() == s.opts.segment_size {
                let to = s.dir.join(format!("recycle-{}.tmp", dead.first_lsn()));
                fs::rename(&dead.path, &to)
                    .map_err(|e| Error::io("recycle segment", &dead.path, e))?;
                inner.recycled.push(to);
            } else {
                fs::remove_file(&dead.path)
                    .map_err(|e| Error::io("remove segment", &dead.path, e))?;
            }
            n += 1;
        }
        if n > 0 {
            drop(inner);
            sync_dir(&s.dir)?;
        }
        Ok(n)
    }

    /// Number of segment files the log has now.
    pub fn segment_count(&self) -> usize {
        self.shared.lock_inner().segments.len()
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if let Some((stop, handle)) = self.flusher.take() {
            drop(stop);
            let _ = handle.join();
        }
        let s = &*self.shared;
        if !s.poisoned.load(Ordering::Acquire) && s.opts.sync != SyncPolicy::NeverUnsafe {
            if let Err(e) = self.sync() {
                tracing::error!(dir = %s.dir.display(), error = %e, "final sync failed");
            }
        }
        let spare = std::mem::replace(&mut s.lock_inner().spare, Spare::None);
        if let Spare::Preparing(handle) = spare {
            let _ = handle.join();
        }
    }
}

impl Shared {
    fn lock_inner(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    fn check_poisoned(&self) -> Result<()> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(Error::Poisoned);
        }
        Ok(())
    }

    /// Appends `records` to the active segment (rotating as needed), one `pwrite` per
    /// segment touched. Records are published only once their bytes are written.
    fn append_locked<'a, I>(&self, inner: &mut Inner, epoch: Epoch, records: I) -> Result<()>
    where
        I: IntoIterator<Item = (u8, &'a [u8])>,
    {
        let max = self.opts.segment_size - SEGMENT_HEADER_LEN - RECORD_HEADER_LEN;
        let mut buf = std::mem::take(&mut inner.buf);
        buf.clear();
        // Records of `buf`: they start at `inner.write_pos` and get LSNs from `next_lsn`.
        let mut pending = 0u64;
        // Where each buffered record starts, for the segment's sparse index.
        let mut offsets: Vec<(Lsn, usize)> = Vec::new();
        let mut result = Ok(());
        for (kind, payload) in records {
            if payload.len() > max {
                result = Err(Error::RecordTooLarge { len: payload.len(), max });
                break;
            }
            let total = RECORD_HEADER_LEN + payload.len();
            if inner.write_pos + buf.len() + total > self.opts.segment_size {
                if let Err(e) = self.write_buffered(inner, &buf, pending, epoch, &offsets) {
                    result = Err(e);
                    break;
                }
                buf.clear();
                offsets.clear();
                pending = 0;
                if let Err(e) = self.rotate(inner) {
                    result = Err(e);
                    break;
                }
            }
            let lsn = inner.next_lsn + pending;
            offsets.push((lsn, inner.write_pos + buf.len()));
            buf.extend_from_slice(&RecordHeader::new(lsn, epoch, kind, payload).encode());
            buf.extend_from_slice(payload);
            pending += 1;
        }
        if result.is_ok() {
            result = self.write_buffered(inner, &buf, pending, epoch, &offsets);
        }
        inner.buf = buf;
        result
    }

    /// Writes `count` encoded records at the write position and publishes them.
    fn write_buffered(
        &self,
        inner: &mut Inner,
        buf: &[u8],
        count: u64,
        epoch: Epoch,
        offsets: &[(Lsn, usize)],
    ) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        let seg = active(inner).clone();
        fail::fail_point!("wal::append::write", |_| {
            // A write that stops half way: the bytes beyond the published end are garbage
            // until the next append overwrites them, and recovery would cut them.
            seg.write(inner.write_pos, &buf[..buf.len() / 2])?;
            Err(Error::io(
                "write record",
                &seg.path,
                std::io::Error::other("injected write failure"),
            ))
        });
        // The records, then zeroes where the next record will go: in a recycled segment the
        // bytes after the last record are old data, and recovery must find an end there.
        let end = inner.write_pos + buf.len();
        let terminator = RECORD_HEADER_LEN.min(seg.size() - end);
        let mut out = std::mem::take(&mut inner.buf_terminated);
        out.clear();
        out.extend_from_slice(buf);
        out.resize(buf.len() + terminator, 0);
        let written = seg.write(inner.write_pos, &out);
        inner.buf_terminated = out;
        written?;
        for &(lsn, offset) in offsets {
            seg.index_record(lsn, offset);
        }
        inner.write_pos += buf.len();
        seg.set_end(inner.write_pos);
        inner.next_lsn += count;
        inner.last_epoch = epoch;
        Ok(())
    }

    /// Seals the active segment and starts the next one. The sealed segment is flushed
    /// first: recovery may then treat damage in any segment but the last as real
    /// corruption, since a crash can tear only the last one.
    fn rotate(&self, inner: &mut Inner) -> Result<()> {
        let old = active(inner).clone();
        let to = (inner.write_pos + RECORD_HEADER_LEN).min(old.size());
        if let Err(e) = old.flush(inner.dirty_from, to) {
            self.poisoned.store(true, Ordering::Release);
            return Err(e);
        }
        let header = SegmentHeader { first_lsn: inner.next_lsn, prev_epoch: inner.last_epoch };
        let spare = inner.recycled.pop().or_else(|| inner.spare.take_ready());
        let seg = Segment::create(&self.dir, header, self.opts.segment_size, spare)?;
        inner.segments.push(Arc::new(seg));
        inner.write_pos = SEGMENT_HEADER_LEN;
        inner.dirty_from = SEGMENT_HEADER_LEN;
        Ok(())
    }

    /// Starts preparing the next segment once the active one is half full.
    fn maybe_prepare_spare(&self, inner: &mut Inner) {
        if !self.opts.prepare_spare_segments
            || !inner.recycled.is_empty()
            || !matches!(inner.spare, Spare::None)
            || inner.write_pos < self.opts.segment_size / 2
        {
            return;
        }
        let path = self.dir.join(SPARE_FILE);
        let size = self.opts.segment_size;
        let handle = std::thread::Builder::new()
            .name("wal-spare".into())
            .spawn(move || prepare_zeroed_file(&path, size).map(|()| path));
        match handle {
            Ok(h) => inner.spare = Spare::Preparing(h),
            Err(e) => tracing::warn!(error = %e, "cannot start the spare segment thread"),
        }
    }

    fn sync_to(&self, target: Lsn) -> Result<Lsn> {
        let durable = self.durable_lsn.load(Ordering::Acquire);
        if durable >= target {
            return Ok(durable);
        }
        let _sync = lock(&self.sync_lock);
        let durable = self.durable_lsn.load(Ordering::Acquire);
        if durable >= target {
            // Another thread's sync covered this one: group commit.
            return Ok(durable);
        }
        self.check_poisoned()?;
        let (lsn, seg, from, to) = {
            let mut inner = self.lock_inner();
            let from = inner.dirty_from;
            inner.dirty_from = inner.write_pos;
            let seg = active(&inner).clone();
            let to = (inner.write_pos + RECORD_HEADER_LEN).min(seg.size());
            (inner.next_lsn - 1, seg, from, to)
        };
        // A closure so that the fail point (a no-op without the `failpoints` feature) can
        // return the injected error from it.
        #[allow(clippy::redundant_closure_call)]
        let flushed = (|| {
            fail::fail_point!("wal::sync", |_| Err(Error::io(
                "msync",
                &seg.path,
                std::io::Error::other("injected sync failure")
            )));
            seg.flush(from, to)
        })();
        if let Err(e) = flushed {
            // After a failed msync the kernel may have dropped the dirty pages: what is on
            // disk is unknown, and retrying could report success for lost data.
            self.poisoned.store(true, Ordering::Release);
            tracing::error!(dir = %self.dir.display(), error = %e, "sync failed; log poisoned");
            return Err(e);
        }
        self.durable_lsn.fetch_max(lsn, Ordering::AcqRel);
        Ok(lsn)
    }
}

impl Spare {
    /// The prepared file, waiting for the background thread if it is still zero-filling
    /// (finishing its work is never slower than starting the same work again); a failed
    /// preparation is logged and forgotten (the rotation then creates the segment itself).
    fn take_ready(&mut self) -> Option<PathBuf> {
        match std::mem::replace(self, Spare::None) {
            Spare::Preparing(h) => match h.join() {
                Ok(Ok(p)) => Some(p),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "preparing a spare segment failed");
                    None
                }
                Err(_) => None,
            },
            Spare::None => None,
        }
    }
}

/// Background thread of `SyncPolicy::Periodic`: syncs every `every` until the sender drops.
fn spawn_flusher(shared: Arc<Shared>, every: Duration) -> (mpsc::Sender<()>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<()>();
    let handle = std::thread::spawn(move || {
        while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
            let target = shared.last_lsn.load(Ordering::Acquire);
            if let Err(e) = shared.sync_to(target) {
                tracing::error!(error = %e, "periodic sync failed");
                return;
            }
        }
    });
    (tx, handle)
}

fn active(inner: &Inner) -> &Arc<Segment> {
    // `segments` is never empty: open creates one and truncation keeps at least one.
    &inner.segments[inner.segments.len() - 1]
}

/// Index of the segment holding `lsn` (the last one whose first LSN is at most `lsn`).
fn segment_index(segments: &[Arc<Segment>], lsn: Lsn) -> usize {
    segments.partition_point(|s| s.first_lsn() <= lsn).saturating_sub(1)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves nothing half-done that a later user could see:
    // published state only moves after the bytes are written.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads records in LSN order; see [`Wal::iter_from`].
pub struct Iter<'a> {
    shared: &'a Shared,
    segments: Vec<Arc<Segment>>,
    seg: usize,
    offset: usize,
    next_lsn: Lsn,
    last_lsn: Lsn,
    generation: u64,
}

impl Iterator for Iter<'_> {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        if self.next_lsn > self.last_lsn {
            return None;
        }
        let _readers = self.shared.read_guard.read().unwrap_or_else(|e| e.into_inner());
        if self.shared.generation.load(Ordering::Acquire) != self.generation {
            self.last_lsn = 0;
            return Some(Err(Error::Truncated));
        }
        while let Some(seg) = self.segments.get(self.seg) {
            match seg.slot_at(self.offset, seg.end()) {
                Slot::Record { header, payload_at } => {
                    self.offset += header.total_len();
                    if header.lsn < self.next_lsn {
                        continue;
                    }
                    if header.lsn != self.next_lsn {
                        break;
                    }
                    self.next_lsn += 1;
                    // SAFETY: published bytes, read under the read guard.
                    let payload = unsafe { seg.bytes(payload_at, header.len as usize) }.to_vec();
                    return Some(Ok(Record {
                        lsn: header.lsn,
                        epoch: header.epoch,
                        kind: header.kind,
                        payload,
                    }));
                }
                Slot::End => {
                    self.seg += 1;
                    self.offset = SEGMENT_HEADER_LEN;
                }
                Slot::Bad(detail) => {
                    let err = Error::Corrupt {
                        file: seg.path.clone(),
                        offset: self.offset as u64,
                        detail,
                    };
                    self.last_lsn = 0;
                    return Some(Err(err));
                }
            }
        }
        let lsn = self.next_lsn;
        self.last_lsn = 0;
        Some(Err(Error::Corrupt {
            file: self.shared.dir.clone(),
            offset: 0,
            detail: format!("record {lsn} missing from the log"),
        }))
    }
}
