//! One shard replica: its rows, its write-ahead log, its role in the replica set, and the
//! committer thread that makes writes durable and applies them in log order.
//!
//! # Where a write becomes durable, committed and visible
//! 1. [`Shard::submit`] (primary or standalone only) validates the change against the rows
//!    plus the changes still in flight, appends it to the local WAL at the primary's epoch
//!    and queues it as *pending*; the replication senders wake up and ship it.
//! 2. The committer thread syncs the local log (one sync for every record appended
//!    meanwhile: group commit) and publishes the local durable LSN.
//! 3. The commit LSN is recomputed whenever the local durable LSN or a secondary's
//!    acknowledgement moves (see [`Core::commit_rule`]):
//!    - standalone: the local durable LSN;
//!    - primary: the LSN a quorum of voters (itself included) holds durably, and only once
//!      that is at or past the *barrier*, the first record the primary wrote in its epoch;
//!    - secondary: the primary's commit LSN, capped by what is durable here and by what is
//!      known to equal the primary's log.
//! 4. Pending changes up to the commit LSN are applied to the rows in LSN order, the applied
//!    LSN is published, and only then is the write answered. Readers see applied rows only.
//!
//! # Why no acknowledged write is lost (the replication rules)
//! - A write is acknowledged only once committed: durable on a quorum of the voters of the
//!   primary's epoch.
//! - Every replica persists the highest epoch it adopted (`shard.json`, synced) before it
//!   answers `Adopt`, `Promote`, `Follow` or the first `Append` of a newer epoch, and refuses
//!   any older epoch after that. An election first has a majority adopt E+1, so the old
//!   primary can commit nothing more (its quorum would need one of them), and then promotes
//!   the replica with the largest `(last_epoch, last_lsn)` among them, which therefore holds
//!   every committed record.
//! - A new primary first appends a barrier record of its epoch and counts commits only at or
//!   past it, so records of earlier epochs become committed only together with a record of
//!   its own epoch (the rule that makes "largest log wins" sound).
//! - A secondary appends only records that extend its log exactly after the record the
//!   primary names (`prev_lsn`, `prev_epoch`); where its log differs, it cuts its own tail,
//!   which can only be uncommitted (the primary holds every committed record, and records
//!   with the same LSN and epoch are the same record).
//! - Nothing past the commit LSN is ever applied, so a cut never has to undo rows.
//! - A replica that starts is never primary, whatever `shard.json` remembers: it takes no
//!   write and serves no linearizable read until promoted at an epoch newer than the one it
//!   had (a lost log tail would otherwise be overwritten at positions of its old epoch that
//!   the others hold committed, and log matching would accept the fork).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use protocol::{
    Epoch, ErrorBody, Lsn, Quorum, ReplicaInfo, RequestId, Role, Row, Schema, ShardId, ShardSpec,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wal::Wal;

use crate::error::{Error, Result};
use crate::snapshot;

/// Name of the file that describes a shard replica inside its directory.
pub(crate) const META_FILE: &str = "shard.json";
/// Directory of the shard's WAL inside its directory.
const WAL_DIR: &str = "wal";
/// WAL record kind of a [`Change`].
pub(crate) const KIND_CHANGE: u8 = 1;

/// A change to a shard, as logged (the payload of a WAL record).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Change {
    /// Rows added (none existed before).
    Insert(Vec<Row>),
    /// A row replaced.
    Update(Row),
    /// A row removed.
    Delete(i64),
    /// Nothing: the first record of a primary's epoch (see the module notes).
    Barrier,
    /// A change sent under a request id (`Request::Once`): a retry with the same id finds it
    /// in the log and is not applied again.
    Tagged(RequestId, Box<Change>),
}

impl Change {
    /// Keys this change touches, and whether each exists after it.
    fn effects(&self) -> Vec<(i64, bool)> {
        match self {
            Change::Insert(rows) => rows.iter().map(|r| (r.key, true)).collect(),
            Change::Update(row) => vec![(row.key, true)],
            Change::Delete(key) => vec![(*key, false)],
            Change::Barrier => Vec::new(),
            Change::Tagged(_, c) => c.effects(),
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
            Change::Barrier => {}
            Change::Tagged(_, c) => c.apply(rows),
        }
    }
}

/// Most request ids a replica remembers (the latest ones); a retry comes within seconds.
const SEEN_MAX: usize = 1 << 16;

/// The request ids of the changes in the log, newest last, and the LSN of each: a retry of
/// a change already logged waits for that record instead of being applied again. Built from
/// the checkpoint (ids up to its LSN) and the log after it on recovery, and as records are
/// appended; records cut from the log are forgotten; an installed snapshot brings the
/// sender's (node/tests/replication.rs, `..._applied_once_after_restarts_and_snapshots`).
#[derive(Default)]
pub(crate) struct Seen {
    by_id: HashMap<RequestId, Lsn>,
    order: VecDeque<(Lsn, RequestId)>,
}

impl Seen {
    fn record(&mut self, id: RequestId, lsn: Lsn) {
        if self.by_id.insert(id, lsn) == Some(lsn) {
            return;
        }
        self.order.push_back((lsn, id));
        while self.order.len() > SEEN_MAX {
            if let Some((l, old)) = self.order.pop_front() {
                if self.by_id.get(&old) == Some(&l) {
                    self.by_id.remove(&old);
                }
            }
        }
    }

    fn get(&self, id: &RequestId) -> Option<Lsn> {
        self.by_id.get(id).copied()
    }

    /// Forgets every id logged after `lsn` (a cut tail).
    pub(crate) fn forget_after(&mut self, lsn: Lsn) {
        while self.order.back().is_some_and(|&(l, _)| l > lsn) {
            if let Some((l, id)) = self.order.pop_back() {
                if self.by_id.get(&id) == Some(&l) {
                    self.by_id.remove(&id);
                }
            }
        }
    }

    /// The remembered ids of changes at or below `lsn`, oldest first (what a checkpoint or
    /// snapshot at `lsn` keeps: ids above it belong to records that a cut may still remove).
    pub(crate) fn up_to(&self, lsn: Lsn) -> Vec<(RequestId, Lsn)> {
        self.order
            .iter()
            .filter(|&&(l, id)| l <= lsn && self.by_id.get(&id) == Some(&l))
            .map(|&(l, id)| (id, l))
            .collect()
    }

    /// Remembers exactly `ids` (oldest first), as a checkpoint or snapshot kept them.
    pub(crate) fn restore(ids: &[(RequestId, Lsn)]) -> Seen {
        let mut seen = Seen::default();
        for &(id, lsn) in ids {
            seen.record(id, lsn);
        }
        seen
    }
}

/// What a shard replica is: persisted in `shard.json` (synced) before anyone is told.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ShardMeta {
    /// The shard's id and, when known, its key range.
    pub spec: ShardSpec,
    /// The table schema its rows follow.
    pub schema: Schema,
    /// The highest epoch this replica adopted; older ones are refused.
    #[serde(default)]
    pub epoch: Epoch,
    /// Its role at that epoch.
    #[serde(default = "standalone")]
    pub role: Role,
    /// As primary: LSN of the barrier record of its epoch.
    #[serde(default)]
    pub barrier_lsn: Lsn,
}

fn standalone() -> Role {
    Role::Standalone
}

impl ShardMeta {
    /// A new standalone replica.
    pub fn new(spec: ShardSpec, schema: Schema) -> ShardMeta {
        ShardMeta { spec, schema, epoch: 0, role: Role::Standalone, barrier_lsn: 0 }
    }
}

/// Tunables of a shard replica.
#[derive(Clone, Debug)]
pub struct ShardOptions {
    /// Options of the shard's WAL.
    pub wal: wal::Options,
    /// Take a checkpoint (and purge the log below it) once the log has this many segments.
    pub checkpoint_segments: usize,
    /// Most shards one node holds: each costs a zero-filled log segment (32 MiB by default)
    /// and a committer thread, so `/config` refuses new shards beyond it.
    pub max_shards: usize,
}

/// Default of [`ShardOptions::max_shards`].
pub const DEFAULT_MAX_SHARDS: usize = 32;

impl Default for ShardOptions {
    fn default() -> Self {
        ShardOptions {
            wal: wal::Options::default(),
            checkpoint_segments: 4,
            max_shards: DEFAULT_MAX_SHARDS,
        }
    }
}

/// Progress the shard publishes to writers waiting for their change.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// Every change up to this LSN is committed and applied.
    pub applied: Lsn,
    /// Bumped on every role change: a writer that proposed under another generation may
    /// never see its change committed by this replica.
    pub generation: u64,
    /// Set when the log failed; no later write can be acknowledged.
    pub failed: Option<String>,
    /// Set when the replica is closing: writes still waiting will not be answered "done".
    pub closing: bool,
}

/// Why a change was refused, and the pending change the refusal rests on (its LSN and the
/// role generation it was seen in), if any.
struct Refusal {
    error: ErrorBody,
    after: Option<(Lsn, u64)>,
    /// The applied LSN of the state it was decided on (0: it rests on no data).
    seen: Lsn,
}

impl From<ErrorBody> for Refusal {
    fn from(error: ErrorBody) -> Refusal {
        Refusal { error, after: None, seen: 0 }
    }
}

/// One shard replica on this node.
pub struct Shard {
    pub(crate) core: Arc<Core>,
    committer: Mutex<Option<JoinHandle<()>>>,
}

/// What a replication sender knows of one peer.
pub(crate) struct Peer {
    /// The peer's log equals ours, durably, up to here.
    pub match_lsn: Lsn,
}

/// A snapshot being received in chunks.
pub(crate) struct IncomingSnapshot {
    pub lsn: Lsn,
    pub lsn_epoch: Epoch,
    pub next_seq: u32,
    /// The rows received so far, on disk.
    pub staging: crate::snapshot::Staging,
}

pub(crate) struct Core {
    pub id: ShardId,
    pub node_name: String,
    pub dir: PathBuf,
    pub wal: Wal,
    pub state: Mutex<State>,
    /// Applied LSN, role generation, failure.
    pub progress: watch::Sender<Progress>,
    /// Local durable LSN, published by the committer after each sync.
    pub durable: watch::Sender<Lsn>,
    /// Bumped when there is something new for the replication senders (records, commit).
    pub tick: watch::Sender<u64>,
    /// Bumped when a peer answers the primary (the lease may have moved).
    pub lease_tick: watch::Sender<u64>,
    pub wake: Mutex<Wake>,
    wake_cond: Condvar,
    opts: ShardOptions,
}

pub(crate) struct Wake {
    pub appended: Lsn,
    stop: bool,
}

pub(crate) struct State {
    pub meta: ShardMeta,
    /// Applied rows: committed, visible to readers.
    pub rows: BTreeMap<i64, Row>,
    pub applied_lsn: Lsn,
    pub applied_epoch: Epoch,
    pub commit_lsn: Lsn,
    /// Appended, not yet applied, in LSN order.
    pub pending: VecDeque<(Lsn, Epoch, Change)>,
    /// For each key a pending change touches: the LSN of the last such change and whether
    /// the key exists after it. Validation reads this before `rows`.
    overlay: HashMap<i64, (Lsn, bool)>,
    /// Row count once every pending change is applied.
    visible_count: u64,
    /// `(epoch, first lsn)` of each epoch in the local log, ascending.
    pub epochs: Vec<(Epoch, Lsn)>,
    /// The local log starts after this record: `(lsn, epoch)` (see `Wal::start`).
    pub base: (Lsn, Epoch),
    /// LSN of the latest checkpoint file.
    pub checkpoint_lsn: Lsn,
    /// As primary: the other members of the replica set.
    pub peers: HashMap<String, Peer>,
    /// As primary: stops the senders.
    pub senders: Option<CancellationToken>,
    /// As secondary: the local log equals the current primary's up to here.
    pub matched_lsn: Lsn,
    /// As secondary: the primary's commit LSN.
    pub primary_commit: Lsn,
    pub incoming: Option<IncomingSnapshot>,
    pub generation: u64,
    /// As primary: the lease behind linearizable reads (see `lease.rs`).
    pub lease: crate::lease::Lease,
    /// Request ids of the logged changes (see [`Seen`]).
    pub seen: Seen,
    /// The epoch this process adopted last (not one read from `shard.json` at start): the
    /// only epoch already held at which it may still be promoted.
    pub adopted: Option<Epoch>,
}

impl State {
    fn exists(&self, key: i64) -> bool {
        self.exists_after(key).0
    }

    /// Whether `key` exists once every pending change is applied, and the LSN of the last
    /// pending change that decides it (`None` when the applied rows alone decide).
    fn exists_after(&self, key: i64) -> (bool, Option<Lsn>) {
        match self.overlay.get(&key) {
            Some(&(lsn, exists)) => (exists, Some(lsn)),
            None => (self.rows.contains_key(&key), None),
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
        self.meta.schema.check_row(row)?;
        self.check_range(row.key)
    }

    /// Queues an appended change and records its effect for validation.
    pub fn push_pending(&mut self, lsn: Lsn, epoch: Epoch, change: Change) {
        for (key, exists) in change.effects() {
            let before = self.exists(key);
            if before != exists {
                self.visible_count = if exists {
                    self.visible_count + 1
                } else {
                    self.visible_count.saturating_sub(1)
                };
            }
            self.overlay.insert(key, (lsn, exists));
        }
        if let Change::Tagged(id, _) = &change {
            self.seen.record(*id, lsn);
        }
        if self.epochs.last().is_none_or(|&(e, _)| e != epoch) {
            self.epochs.push((epoch, lsn));
        }
        self.pending.push_back((lsn, epoch, change));
    }

    /// Rebuilds the validation overlay after pending changes were dropped.
    pub fn rebuild_overlay(&mut self) {
        self.overlay.clear();
        self.visible_count = self.rows.len() as u64;
        let pending = std::mem::take(&mut self.pending);
        let epochs = self.epochs.clone();
        for (lsn, epoch, change) in pending {
            self.push_pending(lsn, epoch, change);
        }
        self.epochs = epochs;
    }

    /// Epoch of the local record `lsn` (`None` when the log does not hold it).
    pub fn epoch_at(&self, lsn: Lsn, last: Lsn) -> Option<Epoch> {
        if lsn == self.base.0 {
            return Some(self.base.1);
        }
        if lsn < self.base.0 || lsn > last {
            return None;
        }
        let i = self.epochs.partition_point(|&(_, first)| first <= lsn);
        Some(if i == 0 { self.base.1 } else { self.epochs[i - 1].0 })
    }

    /// Last local LSN whose epoch is at most `epoch`.
    pub fn end_of_epoch(&self, epoch: Epoch, last: Lsn) -> Lsn {
        match self.epochs.iter().find(|&&(e, _)| e > epoch) {
            Some(&(_, first)) => first - 1,
            None => last,
        }
    }
}

impl Shard {
    /// Creates a new, empty shard replica in `dir` (which must not hold one).
    pub fn create(
        dir: &Path,
        node_name: &str,
        meta: ShardMeta,
        opts: ShardOptions,
    ) -> Result<Shard> {
        wal::create_dir_all_synced(dir)?;
        write_meta(dir, &meta)?;
        Shard::open(dir, node_name, opts)
    }

    /// Opens the shard replica in `dir`: its description, latest checkpoint and log.
    ///
    /// A standalone replica applies its whole log (every durable record is committed). A
    /// replicated one applies up to its checkpoint and keeps the rest pending until its
    /// primary (or, as primary, a quorum) says it is committed.
    pub fn open(dir: &Path, node_name: &str, opts: ShardOptions) -> Result<Shard> {
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
        let (snap_rows, snap_ids) = snap.map(|s| (s.rows, s.ids)).unwrap_or_default();
        for r in snap_rows {
            rows.insert(r.key, r);
        }
        let (last, _) = wal.last();
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
        let standalone = meta.role == Role::Standalone;
        let id = meta.spec.shard_id.clone();
        let mut meta = meta;
        if let Role::Primary { .. } = meta.role {
            // A node that starts is never primary (DESIGN.md "Failover"): its log may have
            // lost a tail that its peers hold as committed records of this very epoch, and a
            // write logged now would take such a position. It waits, as a secondary of no one,
            // for the manager's next epoch (`promote` refuses this one again). Covered by
            // node/tests/fault_disk.rs (a_restarted_primary_with_a_lost_tail_...).
            meta.role = Role::Secondary { primary: None };
        }
        let mut st = State {
            meta,
            rows,
            applied_lsn: snap_lsn,
            applied_epoch: snap_epoch,
            commit_lsn: snap_lsn,
            pending: VecDeque::new(),
            overlay: HashMap::new(),
            visible_count: 0,
            epochs: Vec::new(),
            base: wal.start(),
            checkpoint_lsn: snap_lsn,
            peers: HashMap::new(),
            senders: None,
            matched_lsn: snap_lsn,
            primary_commit: 0,
            incoming: None,
            generation: 0,
            lease: Default::default(),
            seen: Seen::restore(&snap_ids),
            adopted: None,
        };
        st.visible_count = st.rows.len() as u64;
        if wal.last().0 >= wal.first_lsn() {
            for rec in wal.iter_from(wal.first_lsn())? {
                let rec = rec?;
                if rec.lsn <= snap_lsn {
                    // Already in the checkpoint; only its epoch matters (for the index).
                    if st.epochs.last().is_none_or(|&(e, _)| e != rec.epoch) {
                        st.epochs.push((rec.epoch, rec.lsn));
                    }
                    continue;
                }
                let change: Change =
                    protocol::wire::decode(&rec.payload).map_err(|e| Error::Corrupt {
                        what: format!("shard {id} record {}", rec.lsn),
                        detail: e.to_string(),
                    })?;
                st.push_pending(rec.lsn, rec.epoch, change);
            }
        }
        if standalone {
            let last = wal.last().0;
            st.commit_lsn = last;
            apply_committed(&mut st);
        }
        let applied = st.applied_lsn;
        let durable = wal.durable_lsn();
        let core = Arc::new(Core {
            id,
            node_name: node_name.to_string(),
            dir: dir.to_path_buf(),
            wal,
            state: Mutex::new(st),
            progress: watch::channel(Progress {
                applied,
                generation: 0,
                failed: None,
                closing: false,
            })
            .0,
            durable: watch::channel(durable).0,
            tick: watch::channel(0).0,
            lease_tick: watch::channel(0).0,
            wake: Mutex::new(Wake { appended: durable, stop: false }),
            wake_cond: Condvar::new(),
            opts,
        });
        let c = core.clone();
        let committer = std::thread::Builder::new()
            .name(format!("commit-{}", core.id))
            .spawn(move || c.run_committer())
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

    /// Proposes `change` and waits until it is committed and applied: the LSN and the row
    /// count after it. A refusal that rests on changes still pending (the key was just
    /// inserted or deleted by a write not yet committed) is answered only once those are
    /// applied, so a refusal never reveals what a read could not yet see: otherwise a client
    /// told "no such row" could then read the row, and the history would not be
    /// linearizable. If the replica stops being the primary meanwhile, the answer is a 503:
    /// the refusal may no longer hold.
    ///
    /// With an `id`, a change already logged under it (an earlier attempt of the same
    /// request) is not applied again: the answer waits for that record instead. With
    /// `only_if` (a delete), the row must be exactly that one, with no change of it pending.
    pub async fn submit(
        &self,
        change: Change,
        id: Option<RequestId>,
        only_if: Option<&Row>,
    ) -> std::result::Result<(Lsn, u64), ErrorBody> {
        match self.propose_or_refuse(change, id, only_if) {
            Ok((lsn, count, generation)) => {
                self.wait_applied(lsn, generation).await?;
                Ok((lsn, count))
            }
            // A refusal on data carries the LSN of the state it saw: the router's floor then
            // keeps later reads from showing an older state (a replica that has not yet
            // applied the delete an update was refused for, say).
            Err(Refusal { error, after: Some((lsn, generation)), seen }) => {
                match self.wait_applied(lsn, generation).await {
                    Ok(()) => Err(error.at_lsn(lsn.max(seen))),
                    Err(e) => Err(ErrorBody::unavailable(format!(
                        "{} (the change it was refused for did not complete here: {})",
                        error.bare(),
                        e.bare()
                    ))),
                }
            }
            Err(Refusal { error, after: None, seen }) => Err(error.at_lsn(seen)),
        }
    }

    /// Validates `change`, appends it to the log (tagged with `id`) and queues it. Returns its
    /// LSN, the row count once it is applied, and the role generation to wait under; for a
    /// change already logged under `id`, that record's. Nothing is changed on error; only a
    /// primary (or standalone replica) accepts changes.
    fn propose_or_refuse(
        &self,
        change: Change,
        id: Option<RequestId>,
        only_if: Option<&Row>,
    ) -> std::result::Result<(Lsn, u64, u64), Refusal> {
        let core = &*self.core;
        let mut st = core.lock_state();
        if let Some(why) = &core.progress.borrow().failed {
            return Err(
                ErrorBody::internal(format!("shard {} cannot write: {why}", core.id)).into()
            );
        }
        if let Role::Secondary { primary } = &st.meta.role {
            let msg = match primary {
                Some(p) => format!(
                    "{} is not the primary of shard {}; the primary is {p}",
                    core.node_name, core.id
                ),
                None => format!(
                    "{} is not the primary of shard {}; the primary is not known here",
                    core.node_name, core.id
                ),
            };
            return Err(ErrorBody::not_primary(primary.clone(), msg).into());
        }
        if let Some(lsn) = id.and_then(|id| st.seen.get(&id)) {
            // A retry: the change is in the log already.
            return Ok((lsn, st.visible_count, st.generation));
        }
        // A refusal on the state the pending changes leave rests on them (see `submit`).
        let generation = st.generation;
        let seen = st.applied_lsn;
        let rests = |after: Option<Lsn>, error: ErrorBody| Refusal {
            error,
            after: after.map(|lsn| (lsn, generation)),
            seen,
        };
        match &change {
            Change::Insert(rows) => {
                let mut seen = HashSet::with_capacity(rows.len());
                for r in rows {
                    st.check_row(r)?;
                    if !seen.insert(r.key) {
                        return Err(ErrorBody::bad_request(format!(
                            "Stud_id {} appears twice in the request",
                            r.key
                        ))
                        .into());
                    }
                    if let (true, after) = st.exists_after(r.key) {
                        return Err(rests(
                            after,
                            ErrorBody::bad_request(format!(
                                "Stud_id {} already exists in shard {}",
                                r.key, core.id
                            )),
                        ));
                    }
                }
            }
            Change::Update(row) => {
                st.check_row(row)?;
                if let (false, after) = st.exists_after(row.key) {
                    return Err(rests(after, not_found(row.key, &core.id)));
                }
            }
            Change::Delete(key) => {
                let (exists, after) = st.exists_after(*key);
                if !exists {
                    return Err(rests(after, not_found(*key, &core.id)));
                }
                if let Some(want) = only_if {
                    if after.is_some() || st.rows.get(key) != Some(want) {
                        return Err(rests(
                            after,
                            ErrorBody::not_found(format!(
                                "Data entry for Stud_id:{key} in shard {} is not the one given \
                                 (changed since); not removed",
                                core.id
                            )),
                        ));
                    }
                }
            }
            Change::Barrier | Change::Tagged(..) => {
                return Err(ErrorBody::bad_request("not a client change").into())
            }
        }
        let change = match id {
            Some(id) => Change::Tagged(id, Box::new(change)),
            None => change,
        };
        let lsn = core.append_local(&mut st, change)?;
        let (count, generation) = (st.visible_count, st.generation);
        drop(st);
        core.after_append(lsn);
        Ok((lsn, count, generation))
    }

    /// Waits until `lsn` is committed and applied; fails if the replica stops being the
    /// primary of `generation` first (the change may or may not end up committed).
    pub async fn wait_applied(
        &self,
        lsn: Lsn,
        generation: u64,
    ) -> std::result::Result<(), ErrorBody> {
        let mut rx = self.core.progress.subscribe();
        let p = rx
            .wait_for(|p| {
                p.applied >= lsn || p.failed.is_some() || p.closing || p.generation != generation
            })
            .await
            .map_err(|_| ErrorBody::unavailable("the shard is shutting down"))?
            .clone();
        if p.applied >= lsn {
            // A new primary answers nothing before an older one's lease is surely over.
            self.wait_fence().await;
            return Ok(());
        }
        if let Some(why) = p.failed {
            // The record may already be durable on a majority of the secondaries, and a new
            // primary then commits it: the outcome is unknown, as after a lost connection.
            return Err(ErrorBody::internal(format!(
                "shard {} lost its log: {why}; the write may or may not have been applied",
                self.core.id
            )));
        }
        if p.closing {
            return Err(ErrorBody::unavailable(format!(
                "the node is shutting down; the write to shard {} may or may not have been applied",
                self.core.id
            )));
        }
        Err(ErrorBody::unavailable(format!(
            "the primary of shard {} changed while the write was in flight; it may or may not have been applied",
            self.core.id
        )))
    }

    /// Waits (at most `within`) until this replica has applied `lsn`, so that a read never
    /// returns older data than its caller already saw elsewhere.
    pub async fn wait_visible(
        &self,
        lsn: Lsn,
        within: std::time::Duration,
    ) -> std::result::Result<(), ErrorBody> {
        let mut rx = self.core.progress.subscribe();
        let reached = match tokio::time::timeout(
            within,
            rx.wait_for(|p| p.applied >= lsn || p.closing),
        )
        .await
        {
            Ok(Ok(p)) => p.applied >= lsn,
            _ => false,
        };
        match reached {
            true => Ok(()),
            false => Err(ErrorBody::unavailable(format!(
                "{} has not yet applied lsn {lsn} of shard {}; read from another replica",
                self.core.node_name, self.core.id
            ))),
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

    /// Logged changes not applied yet: on a replicated shard just opened, every record past
    /// the checkpoint, applied once a primary's commit LSN covers it.
    pub fn unapplied(&self) -> usize {
        self.core.lock_state().pending.len()
    }

    /// Every applied row, in key order.
    pub fn all_rows(&self) -> Vec<Row> {
        self.core.lock_state().rows.values().cloned().collect()
    }

    /// The published progress.
    pub fn progress(&self) -> Progress {
        self.core.progress.borrow().clone()
    }

    /// The replica's replication state.
    pub fn info(&self) -> ReplicaInfo {
        self.core.info(&self.core.lock_state())
    }

    /// Writes a checkpoint of the applied rows and purges the log below it.
    pub fn checkpoint(&self) -> Result<()> {
        self.core.checkpoint()
    }

    /// Number of segment files the shard's log has.
    pub fn log_segments(&self) -> usize {
        self.core.wal.segment_count()
    }

    /// Whether the shard's log is poisoned by a failed sync: the replica can no longer make
    /// anything durable, and only a restart (the log opened again, recovered from what is on
    /// disk) brings it back.
    pub fn log_failed(&self) -> bool {
        self.core.wal.is_poisoned()
    }

    /// Stops the senders and the committer after it has synced and applied what it can.
    pub fn close(&self) {
        if let Some(c) = self.core.lock_state().senders.take() {
            c.cancel();
        }
        lock(&self.core.wake).stop = true;
        self.core.wake_cond.notify_one();
        if let Some(h) = lock(&self.committer).take() {
            let _ = h.join();
        }
        self.core.progress.send_modify(|p| p.closing = true);
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        self.close();
    }
}

/// Applies every pending change up to the commit LSN.
fn apply_committed(st: &mut State) -> bool {
    let mut any = false;
    while st.pending.front().is_some_and(|(lsn, _, _)| *lsn <= st.commit_lsn) {
        let Some((lsn, epoch, change)) = st.pending.pop_front() else { break };
        for (key, _) in change.effects() {
            if st.overlay.get(&key).is_some_and(|(l, _)| *l == lsn) {
                st.overlay.remove(&key);
            }
        }
        change.apply(&mut st.rows);
        st.applied_lsn = lsn;
        st.applied_epoch = epoch;
        any = true;
    }
    any
}

impl Core {
    pub(crate) fn lock_state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Appends `change` at the replica's epoch and queues it; the caller then calls
    /// [`Core::after_append`] without the state lock.
    pub(crate) fn append_local(
        &self,
        st: &mut State,
        change: Change,
    ) -> std::result::Result<Lsn, ErrorBody> {
        let payload = protocol::wire::encode(&change)
            .map_err(|e| ErrorBody::internal(format!("cannot encode change: {e}")))?;
        let epoch = st.meta.epoch;
        let lsn = self.wal.append(epoch, KIND_CHANGE, &payload).map_err(|e| {
            ErrorBody::internal(format!("shard {} cannot append to its log: {e}", self.id))
        })?;
        st.push_pending(lsn, epoch, change);
        Ok(lsn)
    }

    /// Wakes the committer (to sync) and the senders (to ship).
    pub(crate) fn after_append(&self, lsn: Lsn) {
        {
            let mut w = lock(&self.wake);
            w.appended = w.appended.max(lsn);
        }
        self.wake_cond.notify_one();
        self.tick.send_modify(|t| *t = t.wrapping_add(1));
    }

    /// The commit LSN the role's rule allows now (never below the current one).
    pub(crate) fn commit_rule(&self, st: &State) -> Lsn {
        let durable = self.wal.durable_lsn();
        let c = match &st.meta.role {
            Role::Standalone => durable,
            Role::Primary { voters, quorum, .. } => {
                let mut acks: Vec<Lsn> = voters
                    .iter()
                    .map(|v| {
                        if v.name == self.node_name {
                            durable
                        } else {
                            st.peers.get(&v.name).map_or(0, |p| p.match_lsn)
                        }
                    })
                    .collect();
                if !voters.iter().any(|v| v.name == self.node_name) {
                    acks.push(durable);
                }
                acks.sort_unstable_by(|a, b| b.cmp(a));
                let c = match quorum {
                    Quorum::Majority => acks[acks.len() / 2],
                    Quorum::All => acks[acks.len() - 1],
                };
                if c >= st.meta.barrier_lsn {
                    c
                } else {
                    st.commit_lsn
                }
            }
            Role::Secondary { .. } => st.primary_commit.min(st.matched_lsn).min(durable),
        };
        c.max(st.commit_lsn)
    }

    /// Recomputes the commit LSN, applies what it allows, and publishes the progress.
    pub(crate) fn advance(&self) {
        let mut st = self.lock_state();
        let commit = self.commit_rule(&st);
        let moved = commit > st.commit_lsn;
        st.commit_lsn = commit;
        let applied = apply_committed(&mut st).then_some(st.applied_lsn);
        drop(st);
        if let Some(a) = applied {
            self.progress.send_modify(|p| p.applied = p.applied.max(a));
        }
        if moved {
            self.tick.send_modify(|t| *t = t.wrapping_add(1));
        }
    }

    /// Bumps the role generation (failing writers waiting under the old one).
    pub(crate) fn bump_generation(&self, st: &mut State) {
        st.generation += 1;
        let g = st.generation;
        self.progress.send_modify(|p| p.generation = g);
    }

    /// Persists `meta` and installs it.
    pub(crate) fn persist_meta(
        &self,
        st: &mut State,
        meta: ShardMeta,
    ) -> std::result::Result<(), ErrorBody> {
        write_meta(&self.dir, &meta).map_err(|e| ErrorBody::internal(e.to_string()))?;
        st.meta = meta;
        Ok(())
    }

    pub(crate) fn info(&self, st: &State) -> ReplicaInfo {
        let (last_lsn, last_epoch) = self.wal.last();
        ReplicaInfo {
            role: st.meta.role.clone(),
            epoch: st.meta.epoch,
            last_lsn,
            last_epoch,
            commit_lsn: st.commit_lsn,
            applied_lsn: st.applied_lsn,
            rows: st.rows.len() as u64,
        }
    }

    /// Cuts the local log after `lsn` (only ever uncommitted records) and drops what was
    /// pending past it.
    pub(crate) fn truncate_to(
        &self,
        st: &mut State,
        lsn: Lsn,
    ) -> std::result::Result<(), ErrorBody> {
        if lsn < st.commit_lsn {
            return Err(ErrorBody::internal(format!(
                "shard {}: refusing to cut committed records (cut after {lsn}, committed {})",
                self.id, st.commit_lsn
            )));
        }
        self.wal.truncate_after(lsn).map_err(|e| {
            ErrorBody::internal(format!("shard {}: cannot cut the log: {e}", self.id))
        })?;
        st.pending.retain(|(l, _, _)| *l <= lsn);
        st.seen.forget_after(lsn);
        st.epochs.retain(|&(_, first)| first <= lsn);
        st.matched_lsn = st.matched_lsn.min(lsn);
        st.rebuild_overlay();
        tracing::info!(shard = %self.id, after = lsn, "cut the log tail that the primary does not have");
        let mut w = lock(&self.wake);
        w.appended = w.appended.min(lsn);
        self.durable.send_modify(|d| *d = (*d).min(lsn));
        Ok(())
    }

    /// The committer: sync, publish the durable LSN, advance the commit; until stopped.
    fn run_committer(&self) {
        loop {
            {
                let mut w = lock(&self.wake);
                while w.appended <= self.wal.durable_lsn() && !w.stop {
                    w = self.wake_cond.wait(w).unwrap_or_else(|e| e.into_inner());
                }
                if w.appended <= self.wal.durable_lsn() && w.stop {
                    break;
                }
            }
            match self.wal.sync() {
                Ok(durable) => {
                    self.durable.send_replace(durable);
                    self.advance();
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
        // A clean stop: a checkpoint lets the next start apply everything committed.
        let behind = {
            let st = self.lock_state();
            st.applied_lsn > st.checkpoint_lsn
        };
        if behind {
            if let Err(e) = self.checkpoint() {
                tracing::warn!(shard = %self.id, error = %e, "final checkpoint failed");
            }
        }
    }

    pub(crate) fn checkpoint(&self) -> Result<()> {
        let (rows, ids, lsn, epoch, keep_from) = {
            let st = self.lock_state();
            // A primary keeps the log its peers still need, unless it grows far too long
            // (then they get a snapshot).
            let mut keep = st.applied_lsn + 1;
            if self.wal.segment_count() < 4 * self.opts.checkpoint_segments.max(2) {
                for p in st.peers.values() {
                    keep = keep.min(p.match_lsn + 1);
                }
            }
            let rows = st.rows.values().cloned().collect::<Vec<_>>();
            (rows, st.seen.up_to(st.applied_lsn), st.applied_lsn, st.applied_epoch, keep)
        };
        snapshot::write(&self.dir, lsn, epoch, &rows, &ids)
            .map_err(|e| Error::io("write checkpoint", &self.dir, e))?;
        let purged = self.wal.purge_before(keep_from.min(lsn + 1))?;
        let mut st = self.lock_state();
        st.checkpoint_lsn = lsn;
        st.base = self.wal.start();
        // Keep the index entry that covers the first record still held.
        let keep = st.epochs.partition_point(|&(_, first)| first <= st.base.0 + 1);
        if keep > 1 {
            st.epochs.drain(..keep - 1);
        }
        drop(st);
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

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
