//! `node`: one shardgate storage server.
//!
//! A node holds shard replicas, each in its own write-ahead log, and answers the contract's
//! server endpoints through two doors: the binary protocol (balancer, manager, other nodes,
//! the Rust client) and a thin HTTP/1.1 shim (curl and the original Python clients). Both
//! doors turn a request into a [`protocol::Request`] and call [`Node::handle`].
//!
//! # Layout
//! - `server`: start (open the data, bind both doors) and graceful shutdown.
//! - `node`: the shard replicas of this server and the request handlers.
//! - `shard`: one replica: rows, WAL, role, and the commit rule (the replication rules are
//!   written down there).
//! - `replication`: adopt / promote / follow, the primary's senders, the secondary's side.
//! - `snapshot`: checkpoint files, so restarts replay only the log after them.
//! - `binary`: the binary door (pipelined requests, answers in any order).
//! - `http`: the HTTP shim and the contract's JSON.
//! - `error`: [`Error`] and [`Result`].

mod binary;
mod error;
mod http;
mod lease;
mod node;
mod replication;
mod server;
mod shard;
mod snapshot;

pub use error::{Error, Result};
pub use http::{BODY_READ_TIMEOUT, MAX_HTTP_BODY_BYTES};
pub use node::Node;
pub use server::{run, run_with, Guards, NodeConfig, NodeServer};
pub use shard::{Change, Progress, Shard, ShardMeta, ShardOptions, DEFAULT_MAX_SHARDS};
