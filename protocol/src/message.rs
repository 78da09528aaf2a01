//! Requests and responses of the binary protocol.
//!
//! Every frame after the handshake is a [`RequestFrame`] (caller → server) or a
//! [`ResponseFrame`] (server → caller). The `id` is chosen by the caller and echoed by the
//! server, so one connection carries many requests at once and answers may come back in any
//! order.
//!
//! Enums are encoded by variant index (see [`crate::wire`]): append new variants at the end,
//! never reorder or remove one.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::types::{Epoch, Lsn, Row, Schema, ShardId, ShardSpec};

/// A request and the id its answer will carry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RequestFrame {
    /// Caller-chosen id, unique among the caller's requests in flight on this connection.
    pub id: u64,
    /// The command.
    pub body: Request,
}

/// The answer to the request with the same `id`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ResponseFrame {
    /// The id of the request this answers.
    pub id: u64,
    /// The result of the command.
    pub body: std::result::Result<Response, ErrorBody>,
}

impl ResponseFrame {
    /// A successful answer to request `id`.
    pub fn ok(id: u64, response: Response) -> ResponseFrame {
        ResponseFrame { id, body: Ok(response) }
    }

    /// A failed answer to request `id`.
    pub fn err(id: u64, error: ErrorBody) -> ResponseFrame {
        ResponseFrame { id, body: Err(error) }
    }
}

/// A command, one variant per command struct.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Request {
    /// `GET /home`: who are you.
    Home,
    /// `GET /heartbeat`: are you alive.
    Heartbeat,
    /// `POST /config`: take this schema and these shards.
    Config(ConfigReq),
    /// `GET /copy`: every row of these shards.
    Copy(CopyReq),
    /// `POST /read`: rows of one shard in a key range.
    Read(ReadReq),
    /// `POST /write`: add rows to one shard.
    Write(WriteReq),
    /// `PUT /update`: replace one row.
    Update(UpdateReq),
    /// `DELETE /del`: remove one row.
    Delete(DeleteReq),
    /// Replication (manager → node): adopt an epoch for a shard, refuse older ones.
    Adopt(AdoptReq),
    /// Replication (manager → node): become the shard's primary.
    Promote(PromoteReq),
    /// Replication (manager → node): become a secondary of a primary.
    Follow(FollowReq),
    /// Replication (primary → secondary): log records to append, and the commit LSN.
    Append(AppendReq),
    /// Replication (primary → secondary): part of a snapshot of the shard's rows.
    Snapshot(SnapshotChunk),
    /// Replication state of one shard replica.
    ReplicaStatus(ReplicaStatusReq),
    /// Stage 1 (router → node): a request the router routes to a server as is (`GET /home`,
    /// or any other path); the node answers it as its HTTP shim would.
    Forward(ForwardReq),
    /// Client → router: rows of every shard meeting `[low, high]` (`/read`).
    DbRead(DbReadReq),
    /// Client → router: add rows, grouped by shard (`/write`).
    DbWrite(DbWriteReq),
    /// Client → router: replace the row with this key (`/update`).
    DbUpdate(DbUpdateReq),
    /// Client → router: remove the row with this key (`/del`).
    DbDelete(DbDeleteReq),
    /// Client → router: every row of every shard one server holds (`/read/<server>`).
    DbReadServer(DbReadServerReq),
    /// Client → router: an admin endpoint with the contract's JSON body (`/init`, `/status`,
    /// `/add`, `/rm`, `/primary_elect`).
    DbAdmin(DbAdminReq),
    /// Router → node: a write, update or delete that takes effect at most once however many
    /// times it is sent: a retry of a request the shard already logged is answered from the
    /// log instead of being applied again.
    Once(OnceReq),
}

impl Request {
    /// Short name of the command, for logs and metrics labels.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Home => "home",
            Request::Heartbeat => "heartbeat",
            Request::Config(_) => "config",
            Request::Copy(_) => "copy",
            Request::Read(_) => "read",
            Request::Write(_) => "write",
            Request::Update(_) => "update",
            Request::Delete(_) => "delete",
            Request::Adopt(_) => "adopt",
            Request::Promote(_) => "promote",
            Request::Follow(_) => "follow",
            Request::Append(_) => "append",
            Request::Snapshot(_) => "snapshot",
            Request::ReplicaStatus(_) => "replica_status",
            Request::Forward(_) => "forward",
            Request::DbRead(_) => "db_read",
            Request::DbWrite(_) => "db_write",
            Request::DbUpdate(_) => "db_update",
            Request::DbDelete(_) => "db_delete",
            Request::DbReadServer(_) => "db_read_server",
            Request::DbAdmin(_) => "db_admin",
            Request::Once(o) => o.request.name(),
        }
    }
}

/// Configure a node: the table schema and the shards it holds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ConfigReq {
    /// The table's schema.
    pub schema: Schema,
    /// Shards this node holds, with their ranges where known.
    pub shards: Vec<ShardSpec>,
}

/// Ask for every row of some shards.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CopyReq {
    /// Shards to copy; each must be held by the node.
    pub shards: Vec<ShardId>,
}

/// Read one shard's rows with `low <= key <= high` (inclusive both ends).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ReadReq {
    /// The shard to read.
    pub shard: ShardId,
    /// Smallest key wanted.
    pub low: i64,
    /// Largest key wanted.
    pub high: i64,
    /// Answer only once the replica has applied at least this LSN (the last LSN the caller
    /// saw for the shard), so a read never returns older data than the caller already saw;
    /// 0 for no condition.
    pub min_lsn: Lsn,
    /// `Linearizable`: answer only as the shard's primary while it holds its lease.
    pub consistency: Consistency,
}

/// How fresh a read must be.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Never older than anything the router already acknowledged or returned (any replica
    /// that has applied the router's LSN floor may answer).
    #[default]
    Default,
    /// Never older than any write acknowledged by anyone before the read began: the
    /// primary answers, and only while a majority of the replica set has recently confirmed
    /// it is still the primary (its lease).
    Linearizable,
}

/// A request routed to a node's HTTP handler over the binary protocol.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ForwardReq {
    /// The HTTP method (`GET`, `POST`, ...).
    pub method: String,
    /// Path and query, as the client sent them (`/home`).
    pub path: String,
    /// The request body (usually empty).
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// `/read` through a router.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DbReadReq {
    /// Smallest key wanted.
    pub low: i64,
    /// Largest key wanted (inclusive).
    pub high: i64,
    /// How fresh the answer must be.
    pub consistency: Consistency,
}

/// `/write` through a router: rows in schema column order; every row is checked against
/// the schema and ShardT before anything is written.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DbWriteReq {
    /// Rows to add; none of their keys may exist yet.
    pub rows: Vec<Row>,
}

/// `/update` through a router.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DbUpdateReq {
    /// Key of the row to replace; must equal `row.key`.
    pub key: i64,
    /// The new row.
    pub row: Row,
}

/// `/del` through a router.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DbDeleteReq {
    /// Key of the row to remove.
    pub key: i64,
}

/// `/read/<server>` through a router.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DbReadServerReq {
    /// The server's name.
    pub server: String,
}

/// Who sent a change and its number among that sender's changes: unique per change, the
/// same on every retry of it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestId {
    /// The sender, a random number it picked at start.
    pub client: u64,
    /// The change's number at that sender.
    pub seq: u64,
}

/// A change sent under an id (see [`Request::Once`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct OnceReq {
    /// The change's id.
    pub id: RequestId,
    /// The change: a [`Request::Write`], [`Request::Update`] or [`Request::Delete`].
    pub request: Box<Request>,
}

/// The admin endpoints of the database, answered by the shard manager.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminOp {
    /// `POST /init`.
    Init,
    /// `GET /status`.
    Status,
    /// `POST /add` with `servers` as an object (the database form).
    Add,
    /// `DELETE /rm` with `servers` (the database form).
    Remove,
    /// `GET /primary_elect`.
    PrimaryElect,
}

impl AdminOp {
    /// The endpoint's name in the contract, without its slash (`"init"`, `"rm"`, ...): the
    /// label of its request counters.
    pub fn endpoint(self) -> &'static str {
        match self {
            AdminOp::Init => "init",
            AdminOp::Status => "status",
            AdminOp::Add => "add",
            AdminOp::Remove => "rm",
            AdminOp::PrimaryElect => "primary_elect",
        }
    }
}

/// An admin endpoint through a router, with the contract's JSON body (`"{}"` when it has
/// none).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DbAdminReq {
    /// Which endpoint.
    pub op: AdminOp,
    /// Its JSON body as text.
    pub body: String,
}

/// Add rows to one shard; all or nothing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct WriteReq {
    /// The shard to write.
    pub shard: ShardId,
    /// The row count the caller believes the shard has (`curr_idx` of the contract).
    pub curr_idx: Option<u64>,
    /// Rows to add; none of their keys may exist yet.
    pub rows: Vec<Row>,
}

/// Replace the row with key `key`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct UpdateReq {
    /// The shard holding the row.
    pub shard: ShardId,
    /// Key of the row to replace; must equal `row.key`.
    pub key: i64,
    /// The new row.
    pub row: Row,
}

/// Remove the row with key `key`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DeleteReq {
    /// The shard holding the row.
    pub shard: ShardId,
    /// Key of the row to remove.
    pub key: i64,
    /// Remove the row only if it is exactly this one, with no change to it in flight (a
    /// router taking back its own write); otherwise a 404 and nothing is removed.
    pub only_if: Option<Row>,
}

/// A member of a shard's replica set: its name and the address of its binary protocol.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Replica {
    /// The server's name.
    pub name: String,
    /// `host:port` of its binary protocol listener.
    pub addr: String,
}

/// How many voters must hold a record durably before the primary commits it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Quorum {
    /// More than half of the voters, the primary included (default).
    #[default]
    Majority,
    /// Every voter.
    All,
}

/// Adopt `epoch` for `shard`: persisted before the answer; older epochs are refused after.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AdoptReq {
    /// The shard.
    pub shard: ShardId,
    /// The epoch to adopt; must not be older than the one already adopted.
    pub epoch: Epoch,
}

/// Become the primary of `shard` at `epoch`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PromoteReq {
    /// The shard.
    pub shard: ShardId,
    /// The new epoch (at least the adopted one).
    pub epoch: Epoch,
    /// Replicas whose durable copies count for commits, the new primary included.
    pub voters: Vec<Replica>,
    /// Replicas that receive the log but do not count (catching up).
    pub learners: Vec<Replica>,
    /// Commit rule.
    pub quorum: Quorum,
}

/// Become a secondary of `primary` for `shard` at `epoch`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct FollowReq {
    /// The shard.
    pub shard: ShardId,
    /// The epoch of that primary.
    pub epoch: Epoch,
    /// The primary.
    pub primary: Replica,
}

/// One log record as shipped between replicas.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LogRecord {
    /// Its LSN.
    pub lsn: Lsn,
    /// The epoch it was written in.
    pub epoch: Epoch,
    /// Record kind.
    pub kind: u8,
    /// The encoded change.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// Records for a secondary: they extend its log right after `(prev_lsn, prev_epoch)`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AppendReq {
    /// The shard.
    pub shard: ShardId,
    /// The sender's epoch.
    pub epoch: Epoch,
    /// The sender (the primary of that epoch).
    pub primary: String,
    /// LSN of the record just before `records` (0 for none).
    pub prev_lsn: Lsn,
    /// Epoch of that record.
    pub prev_epoch: Epoch,
    /// Records `prev_lsn + 1 ..`, possibly none (a heartbeat carrying the commit LSN).
    pub records: Vec<LogRecord>,
    /// Every record up to this LSN is committed.
    pub commit_lsn: Lsn,
}

/// Part of a snapshot: every row of the shard as of `lsn`, sent in chunks.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SnapshotChunk {
    /// The shard.
    pub shard: ShardId,
    /// The sender's epoch.
    pub epoch: Epoch,
    /// The sender (the primary of that epoch).
    pub primary: String,
    /// The rows are the shard's state after this (committed) LSN.
    pub lsn: Lsn,
    /// Epoch of record `lsn`.
    pub lsn_epoch: Epoch,
    /// Chunk number, from 0.
    pub seq: u32,
    /// Rows of this chunk, in key order.
    pub rows: Vec<Row>,
    /// Last chunk: install the snapshot.
    pub done: bool,
    /// On the last chunk: the ids of the changes up to `lsn` the sender remembers (oldest
    /// first), so a retried change is still recognised by the receiver.
    pub ids: Vec<(RequestId, Lsn)>,
}

/// Ask for a replica's replication state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ReplicaStatusReq {
    /// The shard.
    pub shard: ShardId,
}

/// A replica's role.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Configured alone (no manager): primary of a replica set of one.
    Standalone,
    /// Primary of its epoch.
    Primary {
        /// Voters, itself included.
        voters: Vec<Replica>,
        /// Learners.
        learners: Vec<Replica>,
        /// Commit rule.
        quorum: Quorum,
    },
    /// Secondary; the primary when known.
    Secondary {
        /// The primary's name, once heard from.
        primary: Option<String>,
    },
}

/// A replica's replication state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ReplicaInfo {
    /// Its role.
    pub role: Role,
    /// The highest epoch it adopted.
    pub epoch: Epoch,
    /// LSN of its last log record.
    pub last_lsn: Lsn,
    /// Epoch of that record.
    pub last_epoch: Epoch,
    /// What it knows to be committed.
    pub commit_lsn: Lsn,
    /// What it has applied to its rows.
    pub applied_lsn: Lsn,
    /// Number of rows applied.
    pub rows: u64,
}

/// A successful answer, one variant per command.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Response {
    /// Answer to [`Request::Home`].
    Home {
        /// The server's name.
        name: String,
    },
    /// Answer to [`Request::Heartbeat`].
    Heartbeat,
    /// Answer to [`Request::Config`].
    Configured {
        /// The server's name.
        name: String,
        /// The shards now configured.
        shards: Vec<ShardId>,
    },
    /// Answer to [`Request::Copy`].
    Copy {
        /// Each requested shard with all its rows, in key order.
        shards: Vec<(ShardId, Vec<Row>)>,
    },
    /// Answer to [`Request::Read`].
    Read {
        /// Matching rows in key order.
        rows: Vec<Row>,
        /// The replica's applied LSN for the shard, so the router can raise its own.
        applied_lsn: Lsn,
    },
    /// Answer to [`Request::Write`].
    Written {
        /// Rows added.
        count: u64,
        /// The shard's row count after the write.
        current_idx: u64,
        /// LSN of the committed write.
        lsn: Lsn,
    },
    /// Answer to [`Request::Update`].
    Updated {
        /// Key of the replaced row.
        key: i64,
        /// LSN of the committed update.
        lsn: Lsn,
    },
    /// Answer to [`Request::Delete`].
    Deleted {
        /// Key of the removed row.
        key: i64,
        /// LSN of the committed delete.
        lsn: Lsn,
    },
    /// Answer to [`Request::Adopt`]: where the replica's log ends.
    Adopted {
        /// Epoch of its last record.
        last_epoch: Epoch,
        /// LSN of its last record.
        last_lsn: Lsn,
        /// What it knows to be committed.
        commit_lsn: Lsn,
    },
    /// Answer to [`Request::Append`]: the records were appended and are durable; the
    /// replica's log equals the primary's up to `match_lsn`.
    Appended {
        /// Last LSN known to match the primary's log.
        match_lsn: Lsn,
    },
    /// Answer to [`Request::Append`]: the records do not extend the replica's log.
    AppendMismatch {
        /// LSN of the replica's last record.
        last_lsn: Lsn,
        /// The replica's epoch at `prev_lsn`, when it has that record (with another epoch).
        conflict_epoch: Option<Epoch>,
    },
    /// Answer to [`Request::Snapshot`]: the chunk was taken (and, when `done`, installed).
    SnapshotTaken {
        /// The chunk number expected next.
        next_seq: u32,
    },
    /// Answer to [`Request::Promote`], [`Request::Follow`] and [`Request::ReplicaStatus`].
    Replica(ReplicaInfo),
    /// Answer to [`Request::Forward`]: the HTTP status and JSON body the shim would send.
    Forwarded {
        /// HTTP status code.
        status: u16,
        /// The JSON body.
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// Answer to [`Request::DbRead`].
    DbRows {
        /// Shards that met the range, in key order.
        shards_queried: Vec<ShardId>,
        /// Matching rows in key order.
        rows: Vec<Row>,
    },
    /// Answer to [`Request::DbWrite`].
    DbWritten {
        /// Rows added.
        count: u64,
    },
    /// Answer to [`Request::DbAdmin`]: the status and JSON body of the HTTP endpoint (an
    /// admin endpoint's error is an answer too, with its 4xx status).
    Json {
        /// HTTP status code.
        status: u16,
        /// The JSON body as text.
        body: String,
    },
}

/// What kind of failure an [`ErrorBody`] reports; decides the HTTP status.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is invalid; nothing was changed.
    BadRequest,
    /// The row or shard does not exist.
    NotFound,
    /// This replica is not the shard's primary; retry at `primary` when known.
    NotPrimary {
        /// Name of the primary this replica knows of.
        primary: Option<String>,
    },
    /// The request carried an epoch older than the replica's.
    StaleEpoch {
        /// The replica's current epoch.
        current: Epoch,
    },
    /// The request or its answer would exceed a size limit.
    TooLarge,
    /// The shard cannot serve right now (no majority, shutting down, ...); retry later.
    Unavailable,
    /// A fault of the server, not of the request.
    Internal,
    /// The caller lacks the credentials the request needs (an admin request on a door that
    /// requires an admin token); nothing was changed.
    Unauthorized,
}

impl ErrorKind {
    /// The HTTP status the shims answer with.
    pub fn http_status(&self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::NotFound => 404,
            ErrorKind::NotPrimary { .. } | ErrorKind::StaleEpoch { .. } => 409,
            ErrorKind::TooLarge => 413,
            ErrorKind::Unavailable => 503,
            ErrorKind::Internal => 500,
            ErrorKind::Unauthorized => 401,
        }
    }
}

/// A failed answer: its kind and the message for the client.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ErrorBody {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// Message for the client, starting with `"<Error> "` as the contract requires.
    pub message: String,
    /// For a refusal that rests on a shard's data ("does not exist", "already exists", "not
    /// the one given"): the LSN of the state it was decided on, which the router adds to its
    /// LSN floor as it does for an answer's LSN, so no later read through it shows an older
    /// state (a replica behind the change that made the refusal, say). 0 otherwise.
    pub lsn: Lsn,
}

/// Prefix of every error message of the contract.
pub const ERROR_PREFIX: &str = "<Error> ";

impl ErrorBody {
    /// An error of `kind`; `"<Error> "` is put in front of `message` unless already there,
    /// so callers cannot forget it or double it.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ErrorBody {
        let message = message.into();
        let message = if message.starts_with(ERROR_PREFIX) {
            message
        } else {
            format!("{ERROR_PREFIX}{message}")
        };
        ErrorBody { kind, message, lsn: 0 }
    }

    /// The same error, decided on the state at `lsn` (see [`ErrorBody::lsn`]).
    pub fn at_lsn(mut self, lsn: Lsn) -> ErrorBody {
        self.lsn = lsn;
        self
    }

    /// 400: the request is invalid.
    pub fn bad_request(message: impl Into<String>) -> ErrorBody {
        ErrorBody::new(ErrorKind::BadRequest, message)
    }

    /// 404: the row or shard does not exist.
    pub fn not_found(message: impl Into<String>) -> ErrorBody {
        ErrorBody::new(ErrorKind::NotFound, message)
    }

    /// 409: not the primary; `primary` is the one this replica knows of.
    pub fn not_primary(primary: Option<String>, message: impl Into<String>) -> ErrorBody {
        ErrorBody::new(ErrorKind::NotPrimary { primary }, message)
    }

    /// 409: the caller's epoch is older than `current`.
    pub fn stale_epoch(current: Epoch, message: impl Into<String>) -> ErrorBody {
        ErrorBody::new(ErrorKind::StaleEpoch { current }, message)
    }

    /// 413: over a size limit.
    pub fn too_large(message: impl Into<String>) -> ErrorBody {
        ErrorBody::new(ErrorKind::TooLarge, message)
    }

    /// 503: cannot serve now.
    pub fn unavailable(message: impl Into<String>) -> ErrorBody {
        ErrorBody::new(ErrorKind::Unavailable, message)
    }

    /// 500: a fault of the server.
    pub fn internal(message: impl Into<String>) -> ErrorBody {
        ErrorBody::new(ErrorKind::Internal, message)
    }

    /// 401: the caller lacks the credentials the request needs.
    pub fn unauthorized(message: impl Into<String>) -> ErrorBody {
        ErrorBody::new(ErrorKind::Unauthorized, message)
    }

    /// The HTTP status of this error.
    pub fn http_status(&self) -> u16 {
        self.kind.http_status()
    }

    /// The message without its `"<Error> "` prefix, to quote inside another one.
    pub fn bare(&self) -> &str {
        self.message.strip_prefix(ERROR_PREFIX).unwrap_or(&self.message)
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ErrorBody {}

impl From<crate::json::FieldError> for ErrorBody {
    fn from(e: crate::json::FieldError) -> ErrorBody {
        ErrorBody::bad_request(e.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_is_put_once_and_bare_takes_it_off() {
        let e = ErrorBody::internal("<Error> disk gone");
        assert_eq!(e.message, "<Error> disk gone");
        assert_eq!(e.bare(), "disk gone");
        let odd = ErrorBody { kind: ErrorKind::Internal, message: "no prefix".into(), lsn: 0 };
        assert_eq!(odd.bare(), "no prefix");
    }

    #[test]
    fn statuses_follow_the_contract() {
        let cases = [
            (ErrorBody::bad_request("x"), 400),
            (ErrorBody::not_found("x"), 404),
            (ErrorBody::not_primary(Some("Server3".into()), "x"), 409),
            (ErrorBody::stale_epoch(7, "x"), 409),
            (ErrorBody::too_large("x"), 413),
            (ErrorBody::unavailable("x"), 503),
            (ErrorBody::internal("x"), 500),
            (ErrorBody::unauthorized("x"), 401),
        ];
        for (body, status) in cases {
            assert_eq!(body.http_status(), status, "{:?}", body.kind);
        }
    }

    #[test]
    fn messages_get_the_prefix_exactly_once() {
        assert_eq!(ErrorBody::bad_request("no shard 'sh9'").message, "<Error> no shard 'sh9'");
        assert_eq!(ErrorBody::not_found("<Error> gone").message, "<Error> gone");
        assert_eq!(ErrorBody::internal("boom").to_string(), "<Error> boom");
    }

    #[test]
    fn byte_fields_keep_the_encoding_of_a_sequence_of_u8() {
        // The byte fields are written as one slice, which must stay the bytes a plain
        // `Vec<u8>` (a length, then one byte per element) gives, so peers of either build
        // understand each other.
        #[derive(Serialize)]
        struct Plain {
            method: String,
            path: String,
            body: Vec<u8>,
        }
        let body: Vec<u8> = (0..=255).chain(0..40).collect();
        let req = ForwardReq { method: "POST".into(), path: "/x?y=1".into(), body: body.clone() };
        let plain = Plain { method: "POST".into(), path: "/x?y=1".into(), body };
        let ours = crate::wire::encode(&req).unwrap();
        assert_eq!(ours, crate::wire::encode(&plain).unwrap());
        assert_eq!(crate::wire::decode::<ForwardReq>(&ours).unwrap(), req);
    }
}
