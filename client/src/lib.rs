//! How one shardgate process calls another over the binary protocol: the router calling
//! nodes, the manager calling nodes, nodes replicating to each other, and Rust programs
//! calling the router.
//!
//! A [`Connection`] is one TCP connection after the handshake. It is pipelined: any number of
//! tasks may [`Connection::call`] on it (or on its clones) at once, each request carries its
//! own id, and the server may answer in any order. One writer task owns the socket's write
//! half, so frames are never interleaved and many queued requests share one flush; one reader
//! task owns the read half and hands each answer to the call waiting for its id.
//!
//! A [`Pool`] keeps one connection per address and replaces it once it has closed.
//!
//! # Layout
//! - `connection`: connecting (TCP, handshake, timeouts), [`Connection`] and
//!   [`Connection::call`], and shutting the tasks down when the last clone is dropped.
//! - `pending`: the table of calls waiting for their answer, shared by callers and the
//!   reader; closing it is what fails every waiting call at once.
//! - `writer`: the task that batches queued request frames onto the socket.
//! - `reader`: the task that decodes answers and completes the waiting calls.
//! - `pool`: [`Pool`], one connection per address, reconnecting when one has closed.
//! - `error`: [`Error`] (opening a connection) and [`CallError`] (one call).
//! - `http`: [`HttpClient`], a minimal keep-alive HTTP/1.1 JSON client for the HTTP shims.
//! - `db`: [`Db`], the async client of the database behind a router (its HTTP endpoints,
//!   over a small pool of keep-alive connections), with typed errors ([`DbError`]).

#![warn(missing_docs)]

mod connection;
mod db;
mod error;
mod http;
mod pending;
mod pool;
mod reader;
mod writer;

pub use connection::{
    set_source_ip, ConnectOptions, Connection, CONNECT_TIMEOUT, HANDSHAKE_TIMEOUT, WRITE_QUEUE_LEN,
};
pub use db::{Db, DbError, DbOptions, DbResult, DEFAULT_MAX_CONNECTIONS, DEFAULT_REQUEST_TIMEOUT};
pub use error::{CallError, Error, Result};
pub use http::{HttpClient, HttpReply};
pub use pool::Pool;
