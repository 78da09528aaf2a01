//! Calling the nodes that hold the data, over the binary protocol (pipelined connections from
//! one [`client::Pool`]): reads spread over a shard's replicas by its ring, changes through
//! its primary, and the per-shard LSN floor that keeps reads from going back in time.
//!
//! # The LSN floor
//! For every shard the router keeps the highest LSN it has seen in an answer: the LSN of every
//! write, update and delete it acknowledged and the applied LSN of every read it returned.
//! Each answer raises it *before* the router replies, and every read carries it as `min_lsn`,
//! so a replica answers only once it has applied at least that much (or says it is behind,
//! and the router asks the next replica). A read through this router therefore never returns
//! older data than anything the router already returned or acknowledged.
//!
//! A router that has no floor for a shard yet (it has just started, and its predecessor, or
//! another router, may have acknowledged writes a lagging replica lacks) reads that shard
//! linearizably, through the primary, until an answer gives it one: the primary answers only
//! once its epoch's barrier is committed, so that floor covers every write acknowledged
//! before, by anyone. (Floor 0 means none: every epoch's barrier is a log record, so a shard
//! that ever had a primary has applied LSNs above 0.) Without this, the first reads after
//! `up` restarted could miss writes acknowledged before the restart
//! (`tests/fault_mix.rs` saw it in its final check).
//!
//! # Retries through the primary
//! A change goes to the primary the catalog names. "Not primary" (with the node's hint, tried
//! at once), a stale epoch, a connection that cannot be opened or breaks, or a primary that
//! is unavailable make the router wait for the catalog to move (short backoff) and try again,
//! until a deadline. Only a failure after the request was sent can leave the change applied;
//! the caller is told (`ambiguous`) so it can tell "already exists" from its own earlier try.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use client::{CallError, Connection};
use protocol::{
    Consistency, ErrorBody, ErrorKind, OnceReq, ReadReq, Request, RequestId, Response, Row,
};
use tokio::time::Instant;

use super::Router;

/// A replica that has not answered a read within this time is passed over for the next one
/// (the last one tried gets the rest of the deadline).
const READ_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);
/// Every call gets at least this long, even when the deadline is nearer.
const MIN_CALL_TIMEOUT: Duration = Duration::from_millis(500);
/// First and longest wait for the catalog to move before trying again.
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(20);
const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(250);

/// Why a call to a node failed.
#[derive(Debug)]
pub(crate) enum NodeError {
    /// No connection could be opened: nothing was sent.
    Connect(client::Error),
    /// The call failed (the node's error, or the connection broke / timed out after sending).
    Call(CallError),
}

impl NodeError {
    /// The error to hand on: the node's own, or a 503 naming the server.
    pub fn into_body(self, server: &str) -> ErrorBody {
        match self {
            NodeError::Call(CallError::Remote(b)) => b,
            NodeError::Connect(e) => {
                ErrorBody::unavailable(format!("server {server} is unreachable; {e}"))
            }
            NodeError::Call(e) => ErrorBody::unavailable(format!("server {server}: {e}")),
        }
    }
}

/// The result of a change made through a shard's primary.
pub(crate) struct PrimaryOutcome {
    /// The primary's answer, or the last error once retrying was given up.
    pub result: Result<Response, ErrorBody>,
    /// Whether an earlier attempt failed after the request was sent, so the change may have
    /// been applied by that attempt.
    pub ambiguous: bool,
}

impl Router {
    /// The highest LSN of `shard` this router has seen.
    pub(crate) fn shard_lsn(&self, shard: &str) -> u64 {
        self.lsn_cell(shard).load(Ordering::Acquire)
    }

    /// Gives `shard` an LSN floor if it has none yet: one linearizable read of a single key
    /// through its primary (see the module doc).
    pub(crate) async fn ensure_floor(&self, shard: &str) -> Result<(), ErrorBody> {
        if self.shard_lsn(shard) == 0 {
            self.read_shard(shard, i64::MIN, i64::MIN, 0, true).await?;
        }
        Ok(())
    }

    /// Raises the LSN floor of `shard` to `lsn`.
    pub(crate) fn raise_lsn(&self, shard: &str, lsn: u64) {
        self.lsn_cell(shard).fetch_max(lsn, Ordering::AcqRel);
    }

    /// Every shard's LSN floor, for `/metrics`.
    pub(crate) fn lsn_floors(&self) -> Vec<(String, u64)> {
        let m = self.lsns.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<(String, u64)> =
            m.iter().map(|(k, c)| (k.clone(), c.load(Ordering::Relaxed))).collect();
        v.sort();
        v
    }

    fn lsn_cell(&self, shard: &str) -> Arc<AtomicU64> {
        if let Some(c) = self.lsns.read().unwrap_or_else(|e| e.into_inner()).get(shard) {
            return c.clone();
        }
        self.lsns
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(shard.to_string())
            .or_default()
            .clone()
    }

    /// One call to the node at `addr`, within `limit`.
    pub(crate) async fn call_node(
        &self,
        addr: std::net::SocketAddr,
        req: Request,
        limit: Duration,
    ) -> Result<Response, NodeError> {
        let conn: Connection = self.nodes.get(addr).await.map_err(NodeError::Connect)?;
        conn.call_with_timeout(req, Some(limit)).await.map_err(NodeError::Call)
    }

    /// Rows of `shard` with `low <= Stud_id <= high`: from the replicas in the order of the
    /// shard's ring for `key` (the primary last), or from the primary alone when
    /// `linearizable`. A replica that is behind the LSN floor, unreachable or failing is
    /// passed over; when every one failed, the router waits for the catalog to move and
    /// tries again until its deadline.
    pub(crate) async fn read_shard(
        &self,
        shard: &str,
        low: i64,
        high: i64,
        key: u64,
        linearizable: bool,
    ) -> Result<Vec<Row>, ErrorBody> {
        let deadline = Instant::now() + self.cfg.db_deadline;
        let mut backoff = RETRY_BACKOFF_MIN;
        let mut errors: Vec<String> = Vec::new();
        loop {
            // No floor yet: through the primary (see the module doc).
            let linearizable = linearizable || self.shard_lsn(shard) == 0;
            let t = self.db_table();
            let Some(route) = t.shards.get(shard) else {
                return Err(ErrorBody::unavailable(format!(
                    "shard {shard} is no longer in the catalog"
                )));
            };
            let order = route.read_order(key, linearizable);
            if order.is_empty() {
                errors.push(if linearizable {
                    format!("shard {shard} has no primary now")
                } else {
                    format!("shard {shard} has no live replica now")
                });
            }
            for (i, name) in order.iter().enumerate() {
                let Some(addr) = t.addr(name) else { continue };
                let left = deadline.saturating_duration_since(Instant::now());
                let limit = if i + 1 == order.len() {
                    left.max(MIN_CALL_TIMEOUT)
                } else {
                    READ_ATTEMPT_TIMEOUT.min(left.max(MIN_CALL_TIMEOUT))
                };
                let req = Request::Read(ReadReq {
                    shard: shard.to_string(),
                    low,
                    high,
                    min_lsn: self.shard_lsn(shard),
                    consistency: if linearizable {
                        Consistency::Linearizable
                    } else {
                        Consistency::Default
                    },
                });
                match self.call_node(addr, req, limit).await {
                    Ok(Response::Read { rows, applied_lsn }) => {
                        self.raise_lsn(shard, applied_lsn);
                        return Ok(rows);
                    }
                    Ok(other) => errors.push(format!("{name} answered a read with {other:?}")),
                    Err(e) => {
                        let reason = match &e {
                            NodeError::Call(CallError::Remote(b))
                                if b.kind == ErrorKind::Unavailable =>
                            {
                                "replica_behind"
                            }
                            NodeError::Call(CallError::Remote(_)) => "replica_refused",
                            _ => "replica_unreachable",
                        };
                        self.metrics.db_retry(reason);
                        let body = e.into_body(name);
                        tracing::debug!(shard, replica = %name, error = %body.message, "read attempt failed");
                        errors.push(format!("{name}: {}", body.bare()));
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.catalog_changed(t.version(), backoff.min(left)).await;
            backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
        }
        errors.dedup();
        let tail = errors.len().saturating_sub(3);
        Err(ErrorBody::unavailable(format!(
            "no replica of shard {shard} could serve the read; {}",
            errors[tail..].join("; ")
        )))
    }

    /// Sends `req` (a write, update or delete of `shard`) to the shard's primary, following
    /// "not primary" hints and catalog changes until it is answered or the deadline passes.
    /// The LSN floor is raised from the answer.
    ///
    /// Every attempt carries the same request id (`Request::Once`): an attempt that was sent
    /// and got no answer may have taken effect, and the shard answers a retry of a change it
    /// already logged from its log rather than applying it again (twice, with another
    /// client's change in between, would be a different history).
    pub(crate) async fn primary_call(&self, shard: &str, req: Request) -> PrimaryOutcome {
        let req = Request::Once(OnceReq { id: next_request_id(), request: Box::new(req) });
        let deadline = Instant::now() + self.cfg.db_deadline;
        let mut backoff = RETRY_BACKOFF_MIN;
        let mut hint: Option<String> = None;
        let mut ambiguous = false;
        loop {
            let t = self.db_table();
            let Some(route) = t.shards.get(shard) else {
                let e =
                    ErrorBody::unavailable(format!("shard {shard} is no longer in the catalog"));
                return PrimaryOutcome { result: Err(e), ambiguous };
            };
            let from_hint = hint.is_some();
            let target = hint.take().or_else(|| route.primary.clone());
            // Why this attempt failed, when it is worth another one.
            let last = match target.as_ref().and_then(|p| t.addr(p).map(|a| (p, a))) {
                None => {
                    self.metrics.db_retry("no_primary");
                    ErrorBody::unavailable(format!(
                        "shard {shard} has no primary now (an election is under way, or too few \
                         of its replicas are alive); try again"
                    ))
                }
                Some((target, addr)) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match self.call_node(addr, req.clone(), left.max(MIN_CALL_TIMEOUT)).await {
                        Ok(resp) => {
                            match &resp {
                                Response::Written { lsn, .. }
                                | Response::Updated { lsn, .. }
                                | Response::Deleted { lsn, .. } => self.raise_lsn(shard, *lsn),
                                Response::Read { applied_lsn, .. } => {
                                    self.raise_lsn(shard, *applied_lsn)
                                }
                                _ => {}
                            }
                            return PrimaryOutcome { result: Ok(resp), ambiguous };
                        }
                        Err(NodeError::Call(CallError::Remote(body))) => {
                            // A refusal on the shard's data raises the floor like an answer.
                            self.raise_lsn(shard, body.lsn);
                            let named = ErrorBody::new(
                                body.kind.clone(),
                                format!("shard {shard}: {}", body.bare()),
                            );
                            match &body.kind {
                                ErrorKind::NotPrimary { primary } => {
                                    self.metrics.db_retry("not_primary");
                                    let next = primary.as_ref().filter(|p| *p != target);
                                    if let (Some(p), false) = (next, from_hint) {
                                        if Instant::now() < deadline {
                                            hint = Some(p.clone());
                                            continue;
                                        }
                                    }
                                    named
                                }
                                ErrorKind::StaleEpoch { .. } => {
                                    self.metrics.db_retry("stale_epoch");
                                    named
                                }
                                ErrorKind::Unavailable => {
                                    // Answered after the change was proposed (the primary changed
                                    // or is stopping while it waited for its commit).
                                    self.metrics.db_retry("primary_unavailable");
                                    ambiguous = true;
                                    named
                                }
                                _ => return PrimaryOutcome { result: Err(body), ambiguous },
                            }
                        }
                        Err(NodeError::Call(CallError::Protocol(e))) => {
                            let e = ErrorBody::internal(format!("request not sent; {e}"));
                            return PrimaryOutcome { result: Err(e), ambiguous };
                        }
                        Err(e) => {
                            if matches!(e, NodeError::Call(_)) {
                                ambiguous = true;
                            }
                            self.metrics.db_retry("primary_unreachable");
                            let e = e.into_body(target);
                            ErrorBody::new(e.kind.clone(), format!("shard {shard}: {}", e.bare()))
                        }
                    }
                }
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return PrimaryOutcome { result: Err(give_up(last)), ambiguous };
            }
            self.catalog_changed(t.version(), backoff.min(left)).await;
            backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
        }
    }
}

/// A request id no other change of any router shares: this process's random number and a
/// counter.
fn next_request_id() -> RequestId {
    static CLIENT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let client = *CLIENT.get_or_init(rand::random);
    RequestId { client, seq: SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed) }
}

/// Retrying errors that outlived the deadline are the router's to report as 503: a "not
/// primary" or stale-epoch answer is about the cluster, not about the client's request.
fn give_up(e: ErrorBody) -> ErrorBody {
    match e.kind {
        ErrorKind::NotPrimary { .. } | ErrorKind::StaleEpoch { .. } => {
            ErrorBody::unavailable(format!("{}; no primary accepted it in time", e.bare()))
        }
        _ => e,
    }
}
