//! shardgate's load balancer: the request ring, the router and the shard manager.
//!
//! # Layout
//! - [`ring`]: pure code, no IO: the selectable request → server mappers (the assignment's
//!   512-slot ring, a well-mixed xxh3 ring, Maglev, jump hash, rendezvous, bounded-load),
//!   built immutably from a server list and swapped whole on a membership change.
//! - [`members`]: pure code: the `/add` and `/rm` rules and their exact errors, ids and names.
//! - [`key`]: where a request's ring key comes from (`--key`).
//! - [`control`]: the router ↔ manager messages (membership watch, stage-1 `/add` `/rm`,
//!   database admin calls, catalog watch) on the binary protocol's frames, and the client.
//! - [`spawner`]: how nodes are started and stopped (`process` children, or `docker` containers through the engine's API).
//! - [`manager`]: the control plane: membership, heartbeats, replacement of dead replicas,
//!   and the database: the catalog in its own WAL, `/init` `/add` `/rm` `/primary_elect`,
//!   elections (`manager/election.rs`) and replica-set changes one epoch at a time.
//! - [`router`]: the data plane: the HTTP front, routing on the ring, forwarding, metrics,
//!   and the database endpoints (`/read` `/write` `/update` `/del` `/read/<server>`) by shard.
//! - [`catalog`]: pure code: the database metadata (schema, ShardT, MapT, epochs), the
//!   `/init` `/add` `/rm` rules with their exact errors, the election choice.
//! - [`analysis`]: the assignment's load analyses computed on the ring alone.

pub mod analysis;
pub mod catalog;
pub mod control;
pub mod key;
pub mod manager;
pub mod members;
pub mod ring;
pub mod router;
pub mod spawner;
