//! shardgate's load balancer: the request ring, the router and the shard manager.
//!
//! # Layout
//! - [`ring`]: pure code, no IO: the selectable request → server mappers (the assignment's
//!   512-slot ring, a well-mixed xxh3 ring, Maglev, jump hash, rendezvous, bounded-load),
//!   built immutably from a server list and swapped whole on a membership change.

pub mod ring;
