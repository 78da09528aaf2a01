//! [`Pool`]: one shared connection per server address.
//!
//! One connection per address is enough because a connection is pipelined; more would only
//! add handshakes and sockets. Each address has its own async lock, held while connecting,
//! so a burst of callers for a server that has no connection yet opens one, not one each,
//! and a slow server does not hold up callers of other servers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Mutex as AsyncMutex;

use crate::connection::{ConnectOptions, Connection};
use crate::error::Result;

/// Connections to many servers, one per address, opened on first use and reopened once
/// closed. Cheap to clone; clones share the connections.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

type Slot = Arc<AsyncMutex<Option<Connection>>>;

struct PoolInner {
    peer_name: String,
    options: ConnectOptions,
    slots: Mutex<HashMap<SocketAddr, Slot>>,
}

impl Pool {
    /// A pool whose connections introduce themselves as `peer_name`, with default timeouts.
    pub fn new(peer_name: impl Into<String>) -> Pool {
        Pool::with_options(peer_name, ConnectOptions::default())
    }

    /// A pool whose connections introduce themselves as `peer_name`, with `options`.
    pub fn with_options(peer_name: impl Into<String>, options: ConnectOptions) -> Pool {
        Pool {
            inner: Arc::new(PoolInner {
                peer_name: peer_name.into(),
                options,
                slots: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The open connection to `addr`, connecting (or reconnecting, if the last one closed)
    /// when there is none. A failed connect is returned and not remembered: the next `get`
    /// tries again.
    pub async fn get(&self, addr: SocketAddr) -> Result<Connection> {
        let slot = self.lock_slots().entry(addr).or_default().clone();
        let mut cached = slot.lock().await;
        if let Some(conn) = cached.as_ref().filter(|conn| !conn.is_closed()) {
            return Ok(conn.clone());
        }
        let conn =
            Connection::connect_with(addr, &self.inner.peer_name, self.inner.options).await?;
        *cached = Some(conn.clone());
        drop(cached);
        self.sweep();
        Ok(conn)
    }

    /// How many server addresses the pool remembers.
    pub fn addresses(&self) -> usize {
        self.lock_slots().len()
    }

    /// Forgets every address whose connection has closed (or never opened) and that no
    /// caller is using right now. Run after each new connection: a server replaced under a
    /// new address (a respawned node gets a new port) would otherwise leave its slot behind
    /// for good, since nobody asks for that address again.
    fn sweep(&self) {
        self.lock_slots().retain(|_, slot| {
            Arc::strong_count(slot) > 1
                || slot.try_lock().is_ok_and(|c| c.as_ref().is_some_and(|c| !c.is_closed()))
        });
    }

    /// Forgets the connection to `addr`, e.g. when that server left the cluster. Callers still
    /// holding it keep using it; it closes when the last of them drops it.
    pub fn remove(&self, addr: SocketAddr) {
        self.lock_slots().remove(&addr);
    }

    /// The peer name connections present in their handshake.
    pub fn peer_name(&self) -> &str {
        &self.inner.peer_name
    }

    fn lock_slots(&self) -> MutexGuard<'_, HashMap<SocketAddr, Slot>> {
        // Held only for a map lookup or insert, which cannot leave the map inconsistent, so a
        // poisoned lock is still usable.
        self.inner.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("peer_name", &self.inner.peer_name)
            .field("addresses", &self.lock_slots().len())
            .finish()
    }
}
