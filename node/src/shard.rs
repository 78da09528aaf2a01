//! One shard replica: its rows, its write-ahead log, and the committer thread that makes
//! writes durable and applies them in log order.
//!
//! Where a write is made durable: [`Shard::propose`] validates the change against the rows
//! plus the changes still in flight, appends it to the WAL and queues it; the committer
//! thread syncs the log (one sync for every write appended meanwhile: group commit), applies
//! the synced changes to the rows in LSN order and publishes the applied LSN; the caller's
//! [`Shard::wait_applied`] returns then, and only then is the write answered. Readers see
//! only applied (durable) rows.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use protocol::{DType, Epoch, ErrorBody, Lsn, Row, Schema, ShardId, ShardSpec, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use wal::Wal;

use crate::error::{Error, Result};
use crate::snapshot;

/// Name of the file that describes a shard replica inside its directory.
pub(crate) const META_FILE: &str = "shard.json";
/// Directory of the shard's WAL inside its directory.
const WAL_DIR: &str = "wal";

/// WAL record kinds of a shard.
const KIND_CHANGE: u8 = 1;

/// A change to a shard, as logged (the payload of a WAL record).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Change {
    /// Rows added (none existed before).
    Insert(Vec<Row>),
    /// A row replaced.
    Update(Row),
    /// A row removed.
    Delete(i64),
}

impl Change {
    /// Keys this change touches, and whether each exists after it.
    fn effects(&self) -> Vec<(i64, bool)> {
        match self {
            Change::Insert(rows) => rows.iter().map(|r| (r.key, true)).collect(),
            Change::Update(row) => vec![(row.key, true)],
            Change::Delete(key) => vec![(*key, false)],
        }
    }

    fn apply(self, rows: &mut BTreeMap<i64, Row>) {
        match self {
            Change::Insert(new) => {
                for r in new {
                    rows.insert(r.key, r);
                }
            }
            Change::Update(r) => {
                rows.insert(r.key, r);
            }
            Change::Delete(key) => {
                rows.remove(&key);
            }
        }
    }
}

/// What a shard replica is: persisted in `shard.json`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ShardMeta {
    /// The shard's id and, when known, its key range.
    pub spec: ShardSpec,
    /// The table schema its rows follow.
    pub schema: Schema,
}

/// Tunables of a shard replica.
#[derive(Clone, Debug)]
pub struct ShardOptions {
    /// Options of the shard's WAL.
    pub wal: wal::Options,
    /// Take a checkpoint (and purge the log below it) once the log has this many segments.
    pub checkpoint_segments: usize,
}

impl Default for ShardOptions {
    fn default() -> Self {
        ShardOptions { wal: wal::Options::default(), checkpoint_segments: 4 }
    }
}

/// Progress the committer publishes.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// Every change up to this LSN is durable and applied.
    pub applied: Lsn,
    /// Set when the log failed; no later write can be acknowledged.
    pub failed: Option<String>,
}

/// One shard replica on this node.
pub struct Shard {
    core: Arc<Core>,
    committer: Mutex<Option<JoinHandle<()>>>,
}

struct Core {
    id: ShardId,
    dir: PathBuf,
    wal: Wal,
    state: Mutex<State>,
    progress: watch::Sender<Progress>,
    wake: Mutex<Wake>,
    wake_cond: Condvar,
    opts: ShardOptions,
}

struct Wake {
    appended: Lsn,
    stop: bool,
}

struct State {
    meta: ShardMeta,
    /// Applied rows: durable, visible to readers.
    rows: BTreeMap<i64, Row>,
    applied_lsn: Lsn,
    applied_epoch: Epoch,
    /// Epoch new records are written in.
    epoch: Epoch,
    /// Appended, not yet applied, in LSN order.
    pending: VecDeque<(Lsn, Epoch, Change)>,
    /// For each key a pending change touches: the LSN of the last such change and whether
    /// the key exists after it. Validation reads this before `rows`.
    overlay: HashMap<i64, (Lsn, bool)>,
    /// Row count once every pending change is applied.
    visible_count: u64,
}

impl State {
    fn exists(&self, key: i64) -> bool {
        match self.overlay.get(&key) {
            Some(&(_, exists)) => exists,
            None => self.rows.contains_key(&key),
        }
    }

    fn check_range(&self, key: i64) -> std::result::Result<(), ErrorBody> {
        if self.meta.spec.contains(key) {
            return Ok(());
        }
        let (low, size) = self.meta.spec.range.unwrap_or((0, 0));
        Err(ErrorBody::bad_request(format!(
            "Stud_id {key} is outside shard {} (Stud_id {low} to {})",
            self.meta.spec.shard_id,
            low.saturating_add(size).saturating_sub(1)
        )))
    }

    fn check_row(&self, row: &Row) -> std::result::Result<(), ErrorBody> {
        check_row_shape(&self.meta.schema, row)?;
        self.check_range(row.key)
    }
}

/// Checks that a row from the binary protocol fits the schema (JSON rows are checked when
/// parsed): one value per column, Number columns hold numbers or digit strings, and the key
/// column holds the row's key.
fn check_row_shape(schema: &Schema, row: &Row) -> std::result::Result<(), ErrorBody> {
    if row.values.len() != schema.columns.len() {
        return Err(ErrorBody::bad_request(format!(
            "row with Stud_id {} has {} values but the schema has {} columns",
            row.key,
            row.values.len(),
            schema.columns.len()
        )));
    }
    for ((col, dtype), v) in schema.columns.iter().zip(&schema.dtypes).zip(&row.values) {
        let ok = match (dtype, v) {
            (DType::Number, Value::Str(s)) => {
                protocol::json::parse_key(&serde_json::Value::String(s.clone())).is_some()
            }
            _ => true,
        };
        if !ok {
            return Err(ErrorBody::bad_request(format!("field '{col}' must be a number")));
        }
        if col == protocol::KEY_COLUMN {
            let key = match v {
                Value::Int(i) => Some(*i),
                Value::Float(f) if f.fract() == 0.0 => Some(*f as i64),
                Value::Str(s) => s.parse().ok(),
                _ => None,
            };
            if key != Some(row.key) {
                return Err(ErrorBody::bad_request(format!(
                    "field 'Stud_id' does not match the row key {}",
                    row.key
                )));
            }
        }
    }
    Ok(())
}

impl Shard {
    /// Creates a new, empty shard replica in `dir` (which must not hold one).
    pub fn create(dir: &Path, meta: ShardMeta, opts: ShardOptions) -> Result<Shard> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create shard directory", dir, e))?;
        write_meta(dir, &meta)?;
        Shard::open(dir, opts)
    }

    /// Opens the shard replica in `dir`: its description, latest checkpoint and log.
    pub fn open(dir: &Path, opts: ShardOptions) -> Result<Shard> {
        let meta_path = dir.join(META_FILE);
        let meta_bytes = std::fs::read(&meta_path)
            .map_err(|e| Error::io("read shard description", &meta_path, e))?;
        let meta: ShardMeta = serde_json::from_slice(&meta_bytes).map_err(|e| Error::Corrupt {
            what: format!("shard description {}", meta_path.display()),
            detail: e.to_string(),
        })?;
        let snap = snapshot::read(dir).map_err(|e| Error::io("read checkpoint", dir, e))?;
        let (snap_lsn, snap_epoch) = snap.as_ref().map_or((0, 0), |s| (s.lsn, s.epoch));
        let wal = Wal::open(dir.join(WAL_DIR), opts.wal.clone())?;
        let mut rows = BTreeMap::new();
        for r in snap.map(|s| s.rows).unwrap_or_default() {
            rows.insert(r.key, r);
        }
        let (last, last_epoch) = wal.last();
        if last < snap_lsn {
            // The checkpoint is newer than the whole log (a crash while a snapshot was being
            // installed): the log restarts after it.
            wal.reset(snap_lsn, snap_epoch)?;
        } else if wal.first_lsn() > snap_lsn + 1 {
            return Err(Error::Corrupt {
                what: format!("shard {}", meta.spec.shard_id),
                detail: format!(
                    "the log starts at lsn {} but the checkpoint ends at {snap_lsn}",
                    wal.first_lsn()
                ),
            });
        }
        let (mut applied, mut applied_epoch) = (snap_lsn, snap_epoch);
        if last > snap_lsn {
            for rec in wal.iter_from(snap_lsn + 1)? {
                let rec = rec?;
                let change: Change =
                    protocol::wire::decode(&rec.payload).map_err(|e| Error::Corrupt {
                        what: format!("shard {} record {}", meta.spec.shard_id, rec.lsn),
                        detail: e.to_string(),
                    })?;
                change.apply(&mut rows);
                applied = rec.lsn;
                applied_epoch = rec.epoch;
            }
        }
        debug_assert_eq!(applied, last.max(snap_lsn));
        let epoch = last_epoch.max(applied_epoch);
        let count = rows.len() as u64;
        let id = meta.spec.shard_id.clone();
        let (progress, _) = watch::channel(Progress { applied, failed: None });
        let core = Arc::new(Core {
            id,
            dir: dir.to_path_buf(),
            wal,
            state: Mutex::new(State {
                meta,
                rows,
                applied_lsn: applied,
                applied_epoch,
                epoch,
                pending: VecDeque::new(),
                overlay: HashMap::new(),
                visible_count: count,
            }),
            progress,
            wake: Mutex::new(Wake { appended: applied, stop: false }),
            wake_cond: Condvar::new(),
            opts,
        });
        let c = core.clone();
        let committer = std::thread::Builder::new()
            .name(format!("commit-{}", core.id))
            .spawn(move || c.run_committer(applied))
            .map_err(|e| Error::io("start committer thread", dir, e))?;
        Ok(Shard { core, committer: Mutex::new(Some(committer)) })
    }

    /// The shard's id.
    pub fn id(&self) -> &str {
        &self.core.id
    }

    /// The shard's description.
    pub fn meta(&self) -> ShardMeta {
        self.core.lock_state().meta.clone()
    }

    /// Sets the shard's key range where it was not known yet (persisted first).
    pub fn set_range(&self, range: (i64, i64)) -> Result<()> {
        let mut st = self.core.lock_state();
        let mut meta = st.meta.clone();
        meta.spec.range = Some(range);
        write_meta(&self.core.dir, &meta)?;
        st.meta = meta;
        Ok(())
    }

    /// Validates `change`, appends it to the log and queues it for the committer. Returns
    /// its LSN and the shard's row count once it is applied. Nothing is changed on error.
    pub fn propose(&self, change: Change) -> std::result::Result<(Lsn, u64), ErrorBody> {
        let core = &*self.core;
        let mut st = core.lock_state();
        if let Some(why) = &core.progress.borrow().failed {
            return Err(ErrorBody::internal(format!("shard {} cannot write: {why}", core.id)));
        }
        let delta: i64 = match &change {
            Change::Insert(rows) => {
                let mut seen = HashSet::with_capacity(rows.len());
                for r in rows {
                    st.check_row(r)?;
                    if !seen.insert(r.key) {
                        return Err(ErrorBody::bad_request(format!(
                            "Stud_id {} appears twice in the request",
                            r.key
                        )));
                    }
                    if st.exists(r.key) {
                        return Err(ErrorBody::bad_request(format!(
                            "Stud_id {} already exists in shard {}",
                            r.key, core.id
                        )));
                    }
                }
                rows.len() as i64
            }
            Change::Update(row) => {
                st.check_row(row)?;
                if !st.exists(row.key) {
                    return Err(not_found(row.key, &core.id));
                }
                0
            }
            Change::Delete(key) => {
                if !st.exists(*key) {
                    return Err(not_found(*key, &core.id));
                }
                -1
            }
        };
        let payload = protocol::wire::encode(&change)
            .map_err(|e| ErrorBody::internal(format!("cannot encode change: {e}")))?;
        let epoch = st.epoch;
        let lsn = core.wal.append(epoch, KIND_CHANGE, &payload).map_err(|e| {
            ErrorBody::internal(format!("shard {} cannot append to its log: {e}", core.id))
        })?;
        for (key, exists) in change.effects() {
            st.overlay.insert(key, (lsn, exists));
        }
        st.visible_count = (st.visible_count as i64 + delta) as u64;
        let count = st.visible_count;
        st.pending.push_back((lsn, epoch, change));
        drop(st);
        let mut w = lock(&core.wake);
        w.appended = w.appended.max(lsn);
        core.wake_cond.notify_one();
        Ok((lsn, count))
    }

    /// Waits until `lsn` is durable and applied.
    pub async fn wait_applied(&self, lsn: Lsn) -> std::result::Result<(), ErrorBody> {
        let mut rx = self.core.progress.subscribe();
        let p = rx
            .wait_for(|p| p.applied >= lsn || p.failed.is_some())
            .await
            .map_err(|_| ErrorBody::unavailable("the shard is shutting down"))?;
        match &p.failed {
            Some(why) if p.applied < lsn => {
                Err(ErrorBody::internal(format!("shard {} lost its log: {why}", self.core.id)))
            }
            _ => Ok(()),
        }
    }

    /// Applied rows with `low <= key <= high`, in key order, and the applied LSN.
    pub fn read(&self, low: i64, high: i64) -> (Vec<Row>, Lsn) {
        let st = self.core.lock_state();
        if low > high {
            return (Vec::new(), st.applied_lsn);
        }
        (st.rows.range(low..=high).map(|(_, r)| r.clone()).collect(), st.applied_lsn)
    }

    /// Number of applied rows.
    pub fn row_count(&self) -> u64 {
        self.core.lock_state().rows.len() as u64
    }

    /// Every applied row, in key order.
    pub fn all_rows(&self) -> Vec<Row> {
        self.core.lock_state().rows.values().cloned().collect()
    }

    /// The published progress.
    pub fn progress(&self) -> Progress {
        self.core.progress.borrow().clone()
    }

    /// Writes a checkpoint of the applied rows and purges the log below it.
    pub fn checkpoint(&self) -> Result<()> {
        self.core.checkpoint()
    }

    /// Number of segment files the shard's log has.
    pub fn log_segments(&self) -> usize {
        self.core.wal.segment_count()
    }

    /// Stops the committer after it has synced and applied everything appended.
    pub fn close(&self) {
        lock(&self.core.wake).stop = true;
        self.core.wake_cond.notify_one();
        if let Some(h) = lock(&self.committer).take() {
            let _ = h.join();
        }
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        self.close();
    }
}

impl Core {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The committer: sync, apply in LSN order, publish; until stopped with nothing left.
    fn run_committer(&self, mut synced: Lsn) {
        loop {
            {
                let mut w = lock(&self.wake);
                while w.appended <= synced && !w.stop {
                    w = self.wake_cond.wait(w).unwrap_or_else(|e| e.into_inner());
                }
                if w.appended <= synced && w.stop {
                    return;
                }
            }
            match self.wal.sync() {
                Ok(durable) => {
                    synced = durable;
                    self.apply_up_to(durable);
                }
                Err(e) => {
                    tracing::error!(shard = %self.id, error = %e, "log sync failed; the shard refuses writes");
                    self.progress.send_modify(|p| p.failed = Some(e.to_string()));
                    return;
                }
            }
            if self.wal.segment_count() >= self.opts.checkpoint_segments.max(2) {
                if let Err(e) = self.checkpoint() {
                    tracing::error!(shard = %self.id, error = %e, "checkpoint failed");
                }
            }
        }
    }

    fn apply_up_to(&self, durable: Lsn) {
        let mut st = self.lock_state();
        let mut applied = None;
        while st.pending.front().is_some_and(|(lsn, _, _)| *lsn <= durable) {
            let Some((lsn, epoch, change)) = st.pending.pop_front() else { break };
            for (key, _) in change.effects() {
                if st.overlay.get(&key).is_some_and(|(l, _)| *l == lsn) {
                    st.overlay.remove(&key);
                }
            }
            change.apply(&mut st.rows);
            st.applied_lsn = lsn;
            st.applied_epoch = epoch;
            applied = Some(lsn);
        }
        drop(st);
        if let Some(lsn) = applied {
            self.progress.send_modify(|p| p.applied = lsn);
        }
    }

    fn checkpoint(&self) -> Result<()> {
        let (rows, lsn, epoch) = {
            let st = self.lock_state();
            (st.rows.values().cloned().collect::<Vec<_>>(), st.applied_lsn, st.applied_epoch)
        };
        snapshot::write(&self.dir, lsn, epoch, &rows)
            .map_err(|e| Error::io("write checkpoint", &self.dir, e))?;
        let purged = self.wal.purge_before(lsn + 1)?;
        tracing::debug!(shard = %self.id, lsn, rows = rows.len(), purged, "checkpoint written");
        Ok(())
    }
}

fn not_found(key: i64, shard: &str) -> ErrorBody {
    ErrorBody::not_found(format!("Data entry for Stud_id:{key} not found in shard {shard}"))
}

/// Writes `shard.json` atomically (temporary file, sync, rename, directory sync).
fn write_meta(dir: &Path, meta: &ShardMeta) -> Result<()> {
    let tmp = dir.join("shard.json.tmp");
    let bytes = serde_json::to_vec_pretty(meta)
        .map_err(|e| Error::Corrupt { what: "shard description".into(), detail: e.to_string() })?;
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(META_FILE))?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| Error::io("write shard description", dir, e))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
