//! Replication of one shard: the manager's commands (adopt an epoch, promote, follow), the
//! primary's senders that ship the log to each peer, and the secondary's side of `Append`
//! and `Snapshot`. The rules and why they lose nothing acknowledged are written down in
//! `shard.rs`; this file carries them out.

use std::sync::Arc;
use std::time::Duration;

use client::{CallError, Connection};
use protocol::{
    AdoptReq, AppendReq, Epoch, ErrorBody, ErrorKind, FollowReq, LogRecord, Lsn, PromoteReq,
    Replica, ReplicaInfo, Request, Response, Role, SnapshotChunk,
};
use tokio_util::sync::CancellationToken;

use crate::shard::{lock, Change, Core, Peer, Shard, State};

/// An idle primary still sends each peer an empty `Append` this often (carries the commit
/// LSN, and tells a deposed primary early that it was deposed).
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(50);
/// Wait before reconnecting to a peer that could not be reached.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);
/// A call to a peer that takes longer than this is abandoned (and retried).
const PEER_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes of records in one `Append`.
const MAX_APPEND_BYTES: usize = 4 << 20;
/// Most records in one `Append`.
const MAX_APPEND_RECORDS: usize = 16_384;
/// Rows per snapshot chunk.
const SNAPSHOT_CHUNK_ROWS: usize = 8192;

impl Shard {
    /// `Adopt`: take `epoch` (persisted before answering), step down if it deposes us, and
    /// report where the log ends.
    pub fn adopt(&self, req: &AdoptReq) -> Result<Response, ErrorBody> {
        let core = &*self.core;
        let mut st = core.lock_state();
        core.raise_epoch(&mut st, req.epoch, None)?;
        let (last_lsn, last_epoch) = core.wal.last();
        Ok(Response::Adopted { last_epoch, last_lsn, commit_lsn: st.commit_lsn })
    }

    /// `Promote`: become the primary at `epoch` with these voters and learners.
    pub fn promote(&self, req: &PromoteReq) -> Result<Response, ErrorBody> {
        let core = &self.core;
        let mut st = core.lock_state();
        let already = req.epoch == st.meta.epoch && matches!(st.meta.role, Role::Primary { .. });
        // The epoch it already holds only if this process adopted it (an election: adopt,
        // then promote) or leads it (a replica set update). A restarted process holding the
        // epoch from its files may have led it before and lost its log's tail since: a new
        // barrier would take a position of that epoch that others hold (shard.rs notes).
        let adopted_here = st.adopted == Some(req.epoch);
        if req.epoch < st.meta.epoch || (req.epoch == st.meta.epoch && !already && !adopted_here) {
            return Err(stale(&core.id, st.meta.epoch, req.epoch));
        }
        check_step(&core.id, st.meta.epoch, req.epoch)?;
        // Another primary may hold a lease unless this one led the epoch just before (one
        // primary per epoch) or there was none before it.
        let succeeds_itself = matches!(st.meta.role, Role::Primary { .. })
            && st.meta.epoch.checked_add(1) == Some(req.epoch);
        let fenced = !already && !succeeds_itself && req.epoch > 1;
        let mut meta = st.meta.clone();
        meta.epoch = req.epoch;
        meta.role = Role::Primary {
            voters: req.voters.clone(),
            learners: req.learners.clone(),
            quorum: req.quorum,
        };
        if !already {
            meta.barrier_lsn = core.wal.last().0 + 1;
        }
        core.persist_meta(&mut st, meta)?;
        let mut appended = None;
        if !already {
            core.bump_generation(&mut st);
            st.matched_lsn = 0;
            let lsn = core.append_local(&mut st, Change::Barrier)?;
            debug_assert_eq!(lsn, st.meta.barrier_lsn);
            appended = Some(lsn);
        }
        if !already {
            st.lease.restart(req.epoch, fenced);
        }
        // (Re)start one sender per peer; acknowledgements from before do not carry over.
        if let Some(c) = st.senders.take() {
            c.cancel();
        }
        let cancel = CancellationToken::new();
        let old = std::mem::take(&mut st.peers);
        for r in req.voters.iter().chain(&req.learners) {
            if r.name == core.node_name {
                continue;
            }
            let match_lsn = if already { old.get(&r.name).map_or(0, |p| p.match_lsn) } else { 0 };
            st.peers.insert(r.name.clone(), Peer { match_lsn });
            tokio::spawn(run_sender(core.clone(), r.clone(), req.epoch, cancel.clone()));
        }
        st.senders = Some(cancel);
        let info = core.info(&st);
        drop(st);
        if let Some(lsn) = appended {
            core.after_append(lsn);
        }
        core.advance();
        if already {
            tracing::info!(shard = %core.id, epoch = req.epoch, "primary's replica set updated");
        } else {
            tracing::info!(shard = %core.id, epoch = req.epoch, "promoted to primary");
        }
        Ok(Response::Replica(info))
    }

    /// `Follow`: become a secondary of `primary` at `epoch`.
    pub fn follow(&self, req: &FollowReq) -> Result<Response, ErrorBody> {
        let core = &*self.core;
        let mut st = core.lock_state();
        core.raise_epoch(&mut st, req.epoch, Some(&req.primary.name))?;
        Ok(Response::Replica(core.info(&st)))
    }

    /// Replication state.
    pub fn status(&self) -> ReplicaInfo {
        self.info()
    }

    /// `Append` from the primary: check that the records extend the log, cut a divergent
    /// tail, append, wait until durable, answer how far the log matches the primary's. An
    /// `Append` that changes the epoch or role (`shard.json` synced) or cuts the log (synced)
    /// does that on tokio's blocking threads, not on an async worker.
    pub async fn append(self: Arc<Self>, req: AppendReq) -> Result<Response, ErrorBody> {
        let step = if self.append_syncs_files(&req) {
            let shard = self.clone();
            crate::node::blocking(move || shard.append_records(req)).await?
        } else {
            self.append_records(req)?
        };
        let target = match step {
            AppendStep::Answer(r) => return Ok(r),
            AppendStep::Appended { target, appended } => {
                if let Some(lsn) = appended {
                    self.core.after_append(lsn);
                }
                target
            }
        };
        let core = &*self.core;
        // Answer only once what we claim to hold is durable here.
        let mut rx = core.durable.subscribe();
        rx.wait_for(|d| *d >= target)
            .await
            .map_err(|_| ErrorBody::unavailable("the shard is shutting down"))?;
        core.advance();
        Ok(Response::Appended { match_lsn: target })
    }

    /// Whether `append_records(req)` would sync a file: a newer epoch or another role, or
    /// a record at a position where the local log holds one of another epoch (a cut).
    fn append_syncs_files(&self, req: &AppendReq) -> bool {
        let st = self.core.lock_state();
        let last = self.core.wal.last().0;
        let following =
            matches!(&st.meta.role, Role::Secondary { primary: Some(p) } if *p == req.primary);
        req.epoch != st.meta.epoch
            || !following
            || req
                .records
                .iter()
                .take_while(|r| r.lsn <= last)
                .any(|r| r.lsn > st.base.0 && st.epoch_at(r.lsn, last) != Some(r.epoch))
    }

    /// The synchronous part of `Append`, under the state lock.
    fn append_records(&self, req: AppendReq) -> Result<AppendStep, ErrorBody> {
        let core = &*self.core;
        let n = req.records.len() as u64;
        let target = req.prev_lsn + n;
        let mut appended = None;
        {
            let mut st = core.lock_state();
            core.raise_epoch(&mut st, req.epoch, Some(&req.primary))?;
            let last = core.wal.last().0;
            // Does our log hold the record the primary builds on?
            if req.prev_lsn > st.base.0 {
                if req.prev_lsn > last {
                    return Ok(AppendStep::Answer(Response::AppendMismatch {
                        last_lsn: last,
                        conflict_epoch: None,
                    }));
                }
                match st.epoch_at(req.prev_lsn, last) {
                    Some(e) if e == req.prev_epoch => {}
                    other => {
                        return Ok(AppendStep::Answer(Response::AppendMismatch {
                            last_lsn: last,
                            conflict_epoch: other,
                        }))
                    }
                }
            } else if req.prev_lsn + n <= st.base.0 {
                // Everything sent is already below our log start (committed): nothing to do.
                st.matched_lsn = st.matched_lsn.max(st.base.0.min(target));
            }
            let mut last = last;
            // Records to append, checked first; appended in runs of one epoch, one write each.
            let mut fresh: Vec<(LogRecord, Change)> = Vec::new();
            for rec in req.records {
                if rec.lsn <= st.base.0 {
                    continue;
                }
                if rec.lsn <= last && fresh.is_empty() {
                    if st.epoch_at(rec.lsn, last) == Some(rec.epoch) {
                        continue; // the same record: same LSN and epoch
                    }
                    core.truncate_to(&mut st, rec.lsn - 1)?;
                    last = rec.lsn - 1;
                }
                let expected = last + 1 + fresh.len() as u64;
                if rec.lsn != expected {
                    return Err(ErrorBody::bad_request(format!(
                        "record {} does not extend the log of shard {} (expected {expected})",
                        rec.lsn, core.id
                    )));
                }
                let change: Change = protocol::wire::decode(&rec.payload).map_err(|e| {
                    ErrorBody::bad_request(format!("undecodable record {}: {e}", rec.lsn))
                })?;
                fresh.push((rec, change));
            }
            let mut at = 0;
            while at < fresh.len() {
                let epoch = fresh[at].0.epoch;
                let run = fresh[at..].iter().take_while(|(r, _)| r.epoch == epoch).count();
                let (first, end) = core
                    .wal
                    .append_batch(
                        epoch,
                        fresh[at..at + run].iter().map(|(r, _)| (r.kind, r.payload.as_slice())),
                    )
                    .map_err(|e| {
                        ErrorBody::internal(format!("shard {} cannot append: {e}", core.id))
                    })?;
                if first != fresh[at].0.lsn {
                    return Err(ErrorBody::internal(format!(
                        "shard {}: appended records got lsn {first}, expected {}",
                        core.id, fresh[at].0.lsn
                    )));
                }
                appended = Some(end);
                at += run;
            }
            for (rec, change) in fresh {
                st.push_pending(rec.lsn, rec.epoch, change);
            }
            st.matched_lsn = st.matched_lsn.max(target);
            st.primary_commit = st.primary_commit.max(req.commit_lsn);
        }
        Ok(AppendStep::Appended { target, appended })
    }

    /// A snapshot chunk from the primary; the last one installs the snapshot.
    pub fn snapshot_chunk(&self, req: SnapshotChunk) -> Result<Response, ErrorBody> {
        let core = &*self.core;
        let mut st = core.lock_state();
        core.raise_epoch(&mut st, req.epoch, Some(&req.primary))?;
        if req.seq == 0 {
            // A new snapshot replaces one in progress (the primary started over).
            let staging = crate::snapshot::Staging::create(&core.dir, st.meta.spec.clone())
                .map_err(|e| ErrorBody::internal(format!("cannot stage a snapshot: {e}")))?;
            st.incoming = Some(crate::shard::IncomingSnapshot {
                lsn: req.lsn,
                lsn_epoch: req.lsn_epoch,
                next_seq: 0,
                staging,
            });
        }
        let Some(inc) = st.incoming.as_mut() else {
            return Err(ErrorBody::bad_request("snapshot chunk without its first chunk"));
        };
        if inc.lsn != req.lsn || inc.next_seq != req.seq {
            return Err(ErrorBody::bad_request(format!(
                "unexpected snapshot chunk {} (expected {})",
                req.seq, inc.next_seq
            )));
        }
        if let Err(why) = inc.staging.push(&req.rows) {
            // The snapshot is void: the sender starts over from chunk 0.
            st.incoming = None;
            return Err(ErrorBody::bad_request(format!("shard {}: {why}", core.id)));
        }
        inc.next_seq += 1;
        let next_seq = inc.next_seq;
        if !req.done {
            return Ok(Response::SnapshotTaken { next_seq });
        }
        let Some(inc) = st.incoming.take() else {
            return Err(ErrorBody::internal("snapshot vanished"));
        };
        if inc.lsn < st.commit_lsn {
            return Err(ErrorBody::bad_request(format!(
                "snapshot at {} is older than what is committed here ({})",
                inc.lsn, st.commit_lsn
            )));
        }
        // The checkpoint file first, then the log restarts after it: a crash in between
        // leaves a checkpoint newer than the log, which opening repairs.
        let (lsn, lsn_epoch) = (inc.lsn, inc.lsn_epoch);
        inc.staging
            .finish(&core.dir, lsn, lsn_epoch, &req.ids)
            .map_err(|e| ErrorBody::internal(format!("cannot write snapshot: {e}")))?;
        let snap = crate::snapshot::read(&core.dir)
            .map_err(|e| ErrorBody::internal(format!("cannot read the snapshot back: {e}")))?
            .ok_or_else(|| ErrorBody::internal("the snapshot just written is gone"))?;
        core.wal
            .reset(lsn, lsn_epoch)
            .map_err(|e| ErrorBody::internal(format!("cannot reset the log: {e}")))?;
        core.install_snapshot(&mut st, snap);
        drop(st);
        core.durable.send_modify(|d| *d = core.wal.durable_lsn());
        core.advance();
        Ok(Response::SnapshotTaken { next_seq })
    }
}

/// What the synchronous part of an `Append` left to do.
enum AppendStep {
    /// Answered already (the log does not hold the record the primary builds on).
    Answer(Response),
    /// Records up to `target` are in the log; `appended`, the last one appended now.
    Appended { target: Lsn, appended: Option<Lsn> },
}

impl Core {
    /// Adopts `epoch` if newer (persisted first), stepping down from primary; with
    /// `primary`, becomes (or stays) its secondary. Refuses older epochs.
    pub(crate) fn raise_epoch(
        &self,
        st: &mut State,
        epoch: Epoch,
        primary: Option<&str>,
    ) -> Result<(), ErrorBody> {
        if epoch < st.meta.epoch {
            return Err(stale(&self.id, st.meta.epoch, epoch));
        }
        check_step(&self.id, st.meta.epoch, epoch)?;
        let newer = epoch > st.meta.epoch;
        let role = match (primary, &st.meta.role) {
            (Some(p), _) => Role::Secondary { primary: Some(p.to_string()) },
            (None, Role::Primary { .. }) if newer => Role::Secondary { primary: None },
            (None, Role::Standalone) if newer => Role::Secondary { primary: None },
            (None, r) => r.clone(),
        };
        // A primary of this very epoch that hears from another "primary" of it: refuse.
        if let (Some(p), Role::Primary { .. }) = (primary, &st.meta.role) {
            if !newer && p != self.node_name {
                return Err(stale(&self.id, st.meta.epoch, epoch));
            }
        }
        if !newer && role == st.meta.role {
            return Ok(());
        }
        let was_primary = matches!(st.meta.role, Role::Primary { .. } | Role::Standalone);
        let mut meta = st.meta.clone();
        meta.epoch = epoch;
        meta.role = role;
        self.persist_meta(st, meta)?;
        if was_primary && !matches!(st.meta.role, Role::Primary { .. } | Role::Standalone) {
            if let Some(c) = st.senders.take() {
                c.cancel();
            }
            st.peers.clear();
            tracing::info!(shard = %self.id, epoch, "stepped down to secondary");
        }
        if newer {
            // Nothing past the commit LSN is known to match the new primary's log yet.
            st.matched_lsn = st.commit_lsn;
            st.adopted = Some(epoch);
        }
        self.bump_generation(st);
        Ok(())
    }

    fn install_snapshot(&self, st: &mut State, inc: crate::snapshot::Snapshot) {
        st.rows = inc.rows.into_iter().map(|r| (r.key, r)).collect();
        st.applied_lsn = inc.lsn;
        st.applied_epoch = inc.epoch;
        st.commit_lsn = inc.lsn;
        st.pending.clear();
        st.seen = crate::shard::Seen::restore(&inc.ids);
        st.epochs.clear();
        st.base = (inc.lsn, inc.epoch);
        st.matched_lsn = inc.lsn;
        st.checkpoint_lsn = inc.lsn;
        st.rebuild_overlay();
        lock(&self.wake).appended = inc.lsn;
        let applied = inc.lsn;
        self.progress.send_modify(|p| p.applied = applied);
        tracing::info!(shard = %self.id, lsn = inc.lsn, rows = st.rows.len(), "installed a snapshot");
    }

    /// The records `[from, last]` to ship, bounded by count and bytes.
    fn records_from(&self, from: Lsn, last: Lsn) -> Result<Vec<LogRecord>, wal::Error> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for rec in self.wal.iter_from(from)? {
            let rec = rec?;
            if rec.lsn > last {
                break;
            }
            bytes += rec.payload.len();
            out.push(LogRecord {
                lsn: rec.lsn,
                epoch: rec.epoch,
                kind: rec.kind,
                payload: rec.payload,
            });
            if out.len() >= MAX_APPEND_RECORDS || bytes >= MAX_APPEND_BYTES {
                break;
            }
        }
        Ok(out)
    }

    /// A peer acknowledged `match_lsn` at `epoch`; an answer to an `Append` sent at `sent_at`
    /// also renews the lease (see lease.rs), in the same critical section.
    fn acknowledge(
        &self,
        peer: &str,
        epoch: Epoch,
        match_lsn: Lsn,
        sent_at: Option<std::time::Instant>,
    ) {
        {
            let mut st = self.lock_state();
            if let Some(t) = sent_at {
                st.lease.acknowledged(peer, epoch, t);
            }
            if st.meta.epoch != epoch {
                return;
            }
            if let Some(p) = st.peers.get_mut(peer) {
                p.match_lsn = p.match_lsn.max(match_lsn);
            }
        }
        if sent_at.is_some() {
            self.lease_tick.send_modify(|t| *t = t.wrapping_add(1));
        }
        self.advance();
    }

    /// A peer told us of a newer epoch: adopt it and step down.
    fn deposed(&self, epoch: Epoch) {
        let mut st = self.lock_state();
        if let Err(e) = self.raise_epoch(&mut st, epoch, None) {
            tracing::warn!(shard = %self.id, error = %e.message, "could not step down");
        }
    }
}

/// The primary's sender for one peer: ships records and the commit LSN, finds where the
/// peer's log parts from ours, falls back to a snapshot when the peer needs records we no
/// longer hold. Ends when cancelled (role change) or deposed.
async fn run_sender(core: Arc<Core>, peer: Replica, epoch: Epoch, cancel: CancellationToken) {
    let mut tick = core.tick.subscribe();
    let mut conn: Option<Connection> = None;
    // Optimistic start: as if the peer had our whole log; a mismatch corrects it.
    let mut next = core.wal.last().0 + 1;
    let mut told_commit = Lsn::MAX;
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let (last, commit) = {
            let st = core.lock_state();
            (core.wal.last().0, st.commit_lsn)
        };
        if next > last && commit == told_commit {
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = tick.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(HEARTBEAT_INTERVAL) => {}
            }
            // Fall through: send what is new, or an empty heartbeat.
        }
        let c = match &conn {
            Some(c) if !c.is_closed() => c.clone(),
            _ => match Connection::connect(peer.addr.as_str(), &core.node_name).await {
                Ok(c) => {
                    conn = Some(c.clone());
                    c
                }
                Err(e) => {
                    tracing::debug!(shard = %core.id, peer = %peer.name, error = %e, "peer unreachable");
                    if sleep_or_cancel(&cancel, RECONNECT_BACKOFF).await {
                        return;
                    }
                    continue;
                }
            },
        };
        let (last, commit) = {
            let st = core.lock_state();
            (core.wal.last().0, st.commit_lsn)
        };
        if next < core.wal.first_lsn() {
            match send_snapshot(&core, &c, &peer, epoch).await {
                Ok(lsn) => next = lsn + 1,
                Err(e) => {
                    if handle_error(&core, &peer, e, &mut conn)
                        || sleep_or_cancel(&cancel, RECONNECT_BACKOFF).await
                    {
                        return;
                    }
                }
            }
            continue;
        }
        let records = if next <= last {
            match core.records_from(next, last) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(shard = %core.id, error = %e, "cannot read the log to ship it");
                    if sleep_or_cancel(&cancel, RECONNECT_BACKOFF).await {
                        return;
                    }
                    continue;
                }
            }
        } else {
            Vec::new()
        };
        let prev_lsn = next - 1;
        let prev_epoch = {
            let st = core.lock_state();
            st.epoch_at(prev_lsn, core.wal.last().0).unwrap_or(0)
        };
        let sent_to = prev_lsn + records.len() as u64;
        let req = Request::Append(AppendReq {
            shard: core.id.clone(),
            epoch,
            primary: core.node_name.clone(),
            prev_lsn,
            prev_epoch,
            records,
            commit_lsn: commit,
        });
        let sent_at = std::time::Instant::now();
        // Either answer shows the peer had not adopted a newer epoch when we sent this: the
        // lease may move (see lease.rs).
        match c.call_with_timeout(req, Some(PEER_CALL_TIMEOUT)).await {
            Ok(Response::Appended { match_lsn }) => {
                told_commit = commit;
                next = match_lsn.max(sent_to) + 1;
                core.acknowledge(&peer.name, epoch, match_lsn, Some(sent_at));
            }
            Ok(Response::AppendMismatch { last_lsn, conflict_epoch }) => {
                core.lease_ack(&peer.name, epoch, sent_at);
                next = match conflict_epoch {
                    None => (last_lsn + 1).min(prev_lsn),
                    Some(e) => {
                        let st = core.lock_state();
                        (st.end_of_epoch(e, core.wal.last().0) + 1).min(prev_lsn)
                    }
                }
                .max(1);
                tracing::debug!(shard = %core.id, peer = %peer.name, next, "peer log differs; backing up");
            }
            Ok(other) => {
                tracing::warn!(shard = %core.id, peer = %peer.name, answer = ?other, "unexpected answer to append");
                if sleep_or_cancel(&cancel, RECONNECT_BACKOFF).await {
                    return;
                }
            }
            Err(e) => {
                if handle_error(&core, &peer, e, &mut conn)
                    || sleep_or_cancel(&cancel, RECONNECT_BACKOFF).await
                {
                    return;
                }
            }
        }
    }
}

/// Returns true when the sender must stop (deposed).
fn handle_error(
    core: &Arc<Core>,
    peer: &Replica,
    e: CallError,
    conn: &mut Option<Connection>,
) -> bool {
    if let CallError::Remote(body) = &e {
        if let ErrorKind::StaleEpoch { current } = body.kind {
            tracing::warn!(shard = %core.id, peer = %peer.name, current, "a peer has a newer epoch; stepping down");
            // Stepping down syncs `shard.json`: on a blocking thread, not this async one.
            let core = core.clone();
            tokio::task::spawn_blocking(move || core.deposed(current));
            return true;
        }
    }
    tracing::debug!(shard = %core.id, peer = %peer.name, error = %e, "replication call failed");
    if e.is_retryable() {
        *conn = None;
    }
    false
}

/// Sends every applied row as of the applied LSN; returns that LSN.
async fn send_snapshot(
    core: &Core,
    c: &Connection,
    peer: &Replica,
    epoch: Epoch,
) -> Result<Lsn, CallError> {
    let (rows, ids, lsn, lsn_epoch) = {
        let st = core.lock_state();
        let rows = st.rows.values().cloned().collect::<Vec<_>>();
        (rows, st.seen.up_to(st.applied_lsn), st.applied_lsn, st.applied_epoch)
    };
    tracing::info!(shard = %core.id, peer = %peer.name, lsn, rows = rows.len(), "sending a snapshot");
    let chunks: Vec<&[protocol::Row]> =
        if rows.is_empty() { vec![&[]] } else { rows.chunks(SNAPSHOT_CHUNK_ROWS).collect() };
    let count = chunks.len();
    for (seq, chunk) in chunks.into_iter().enumerate() {
        let req = Request::Snapshot(SnapshotChunk {
            shard: core.id.clone(),
            epoch,
            primary: core.node_name.clone(),
            lsn,
            lsn_epoch,
            seq: seq as u32,
            rows: chunk.to_vec(),
            done: seq + 1 == count,
            ids: if seq + 1 == count { ids.clone() } else { Vec::new() },
        });
        c.call_with_timeout(req, Some(PEER_CALL_TIMEOUT)).await?;
    }
    core.acknowledge(&peer.name, epoch, lsn, None);
    Ok(lsn)
}

/// Sleeps; returns true if cancelled meanwhile.
async fn sleep_or_cancel(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

/// Refuses an epoch further past `current` than `protocol::MAX_EPOCH_STEP` (forged or
/// corrupt: honest epochs move one at a time).
fn check_step(shard: &str, current: Epoch, got: Epoch) -> Result<(), ErrorBody> {
    if !protocol::epoch_too_far(current, got) {
        return Ok(());
    }
    Err(ErrorBody::bad_request(format!(
        "shard {shard}: epoch {got} is more than {} past this replica's epoch {current}; refused",
        protocol::MAX_EPOCH_STEP
    )))
}

fn stale(shard: &str, current: Epoch, got: Epoch) -> ErrorBody {
    ErrorBody::stale_epoch(
        current,
        format!("shard {shard} is at epoch {current}; epoch {got} is stale"),
    )
}
