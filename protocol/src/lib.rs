//! The binary protocol spoken between the balancer, the shard manager, the nodes and the Rust
//! client, and the data types they share. No IO beyond the frame codec, the serving loop of a
//! binary door ([`server`]) and the limits every door applies ([`limits`]).
//!
//! A connection is a stream of length-prefixed frames ([`codec`]). The first frame each way
//! is the handshake ([`handshake`]); after it the caller sends [`RequestFrame`]s and the
//! server answers [`ResponseFrame`]s carrying the same id, in any order, so many requests
//! share one connection. Payloads are encoded by [`wire`].
//!
//! # Layout
//! - [`codec`]: the frame format and [`FrameCodec`]: the maximum frame lengths (small before
//!   the handshake), and the sealing of every frame of an authenticated session.
//! - [`wire`]: encoding of messages into frame payloads; the only module that knows bincode.
//! - [`handshake`]: magic + version exchange that opens every connection.
//! - [`message`]: request and response envelopes, one struct per command, error bodies and
//!   their HTTP statuses.
//! - [`types`]: schema, rows, cells, shard descriptions, LSNs and epochs.
//! - [`json`]: validation of JSON rows, keys, schemas and shard lists for the HTTP shims.
//! - [`error`]: the crate's error type.
//! - [`server`]: the serving side of a binary door (accept, handshake in a bounded pool of its
//!   own, pipelined requests).
//! - [`auth`]: the cluster secret's challenge-response, the session keys derived from it, and
//!   the HTTP admin token.
//! - [`authz`]: the one authorization rule of every door (who may change the cluster).
//! - [`limits`]: connection caps per listener, row caps per request, the HTTP idle timeout.
//! - [`budget`]: the memory an HTTP door holds for bodies and unsent answers.
//! - [`names`]: the one rule for server names and shard ids (they name directories).

#![warn(missing_docs)]

pub mod auth;
pub mod authz;
pub mod budget;
pub mod codec;
pub mod error;
pub mod handshake;
pub mod json;
pub mod limits;
pub mod message;
pub mod names;
pub mod parse_errors;
pub mod server;
pub mod types;
pub mod wire;

pub use codec::{frame_codec, framed, FrameCodec, Framed, MAX_FRAME_LEN};
pub use error::{Error, Result};
pub use handshake::{
    check_hello, client_handshake, client_handshake_with, server_handshake, server_handshake_admit,
    server_handshake_with, Hello, HelloReply, MAGIC, PROTOCOL_VERSION,
};
pub use json::{parse_key, row_from_json, row_to_json, FieldError};
pub use message::{
    AdminOp, AdoptReq, AppendReq, ConfigReq, Consistency, CopyReq, DbAdminReq, DbDeleteReq,
    DbReadReq, DbReadServerReq, DbUpdateReq, DbWriteReq, DeleteReq, ErrorBody, ErrorKind,
    FollowReq, ForwardReq, LogRecord, OnceReq, PromoteReq, Quorum, ReadReq, Replica, ReplicaInfo,
    ReplicaStatusReq, Request, RequestFrame, RequestId, Response, ResponseFrame, Role,
    SnapshotChunk, UpdateReq, WriteReq,
};
pub use types::{
    epoch_too_far, DType, Epoch, Lsn, Row, Schema, ShardId, ShardSpec, Value, KEY_COLUMN,
    MAX_EPOCH_STEP,
};
