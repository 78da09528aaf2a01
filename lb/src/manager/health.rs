//! One loop per replica: a binary `Heartbeat` every interval; a replica whose last answered
//! heartbeat is older than the dead-after time is marked dead (routers stop sending to it),
//! killed, and started again under the same name, id and data directory. A replica whose
//! port refuses connections is dead at once: no process listens there any more (it crashed),
//! so waiting out the dead-after time would only delay the failover. Nor is one that answers
//! the heartbeat with an error (its log failed to sync: it can no longer make a write
//! durable): it is replaced at once too, its restart recovering the log from the disk. If
//! it turns unhealthy again soon after that restart (a disk that keeps failing), each
//! further restart waits longer (1 s, doubling up to 30 s; the sick process is stopped at
//! once), as Kubernetes holds back a container in a crash loop: restarting it at full speed
//! would only churn catch-up traffic.

use std::sync::Arc;
use std::time::Duration;

use client::{ConnectOptions, Connection};
use protocol::{Request, Response};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Manager;
use crate::spawner::Spawned;

/// First wait before trying again to start a replica that failed to start; doubles up to
/// [`RESPAWN_BACKOFF_MAX`].
const RESPAWN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between two attempts to start a replica.
const RESPAWN_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// An unhealthy replica replaced within this time of its previous restart for the same
/// reason is in a loop: its next start is held back.
const SICK_WINDOW: Duration = Duration::from_secs(30);
/// The first hold of a replica unhealthy again soon after its restart; doubles with each
/// repeat, up to [`SICK_HOLD_MAX`].
const SICK_HOLD: Duration = Duration::from_secs(1);
const SICK_HOLD_MAX: Duration = Duration::from_secs(30);

/// How long the start of a replica waits when it is replaced for being unhealthy for the
/// `repeat`-th time in a row soon after its previous restart (0: the first time).
fn sick_hold(repeat: u32) -> Duration {
    match repeat {
        0 => Duration::ZERO,
        n => SICK_HOLD.saturating_mul(1 << (n - 1).min(16)).min(SICK_HOLD_MAX),
    }
}

/// Watches replica `name` until `watch` is cancelled (removed, or shutdown).
pub(super) async fn watch_replica(
    m: Arc<Manager>,
    name: String,
    mut spawned: Spawned,
    watch: CancellationToken,
) {
    let opts = ConnectOptions {
        connect_timeout: m.cfg.dead_after,
        handshake_timeout: m.cfg.dead_after,
        request_timeout: Some(m.cfg.dead_after),
    };
    let mut conn: Option<Connection> = None;
    let mut last_ok = Instant::now();
    // When the replica last came back from being replaced as unhealthy, and how many such
    // replacements in a row came soon after the previous one.
    let (mut sick_since, mut sick_repeats): (Option<Instant>, u32) = (None, 0);
    loop {
        tokio::select! {
            _ = watch.cancelled() => return,
            _ = tokio::time::sleep(m.cfg.heartbeat) => {}
        }
        let beat = tokio::select! {
            _ = watch.cancelled() => return,
            b = ping(&mut conn, spawned, opts) => b,
        };
        let silent = last_ok.elapsed();
        let unhealthy = matches!(beat, Beat::Unhealthy(_));
        let reason = match beat {
            Beat::Answered => {
                last_ok = Instant::now();
                continue;
            }
            Beat::Missed if silent < m.cfg.dead_after => continue,
            Beat::Missed => "missed heartbeats".to_string(),
            Beat::Refused => "connection refused".to_string(),
            Beat::Unhealthy(why) => format!("unhealthy: {why}"),
        };
        if !m.mark_dead(&name) {
            return;
        }
        tracing::warn!(
            replica = %name,
            silent_ms = silent.as_millis() as u64,
            reason = %reason,
            "replica dead; replacing it"
        );
        conn = None;
        let hold = if unhealthy {
            let soon = sick_since.is_some_and(|t| t.elapsed() < SICK_WINDOW);
            sick_repeats = if soon { sick_repeats + 1 } else { 0 };
            sick_hold(sick_repeats)
        } else {
            sick_repeats = 0;
            Duration::ZERO
        };
        if !hold.is_zero() {
            tracing::warn!(
                replica = %name,
                hold_ms = hold.as_millis() as u64,
                repeats = sick_repeats,
                "replica unhealthy again soon after its restart; holding back the next start"
            );
        }
        let started = Instant::now();
        match replace(&m, &name, &watch, hold).await {
            Some(s) => {
                tracing::info!(
                    replica = %name,
                    addr = %s.addr,
                    http = %s.http,
                    took_ms = started.elapsed().as_millis() as u64,
                    "replica replaced under the same name"
                );
                spawned = s;
                last_ok = Instant::now();
                sick_since = unhealthy.then(Instant::now);
            }
            None => return,
        }
    }
}

/// What one heartbeat found.
#[derive(Debug, PartialEq, Eq)]
enum Beat {
    /// Answered.
    Answered,
    /// Not answered (timeout, broken connection, odd answer).
    Missed,
    /// Nothing listens on the replica's port any more: its process is gone.
    Refused,
    /// The replica answered that it cannot serve (the reason it gave).
    Unhealthy(String),
}

/// One heartbeat over the cached connection (opened if needed). A connection that broke is
/// reopened at once, so a crashed replica is found refusing within this heartbeat.
async fn ping(conn: &mut Option<Connection>, s: Spawned, opts: ConnectOptions) -> Beat {
    for _ in 0..2 {
        if conn.as_ref().is_none_or(Connection::is_closed) {
            match Connection::connect_with(s.addr, "shardgate-manager", opts).await {
                Ok(c) => *conn = Some(c),
                Err(client::Error::Connect { source, .. })
                    if source.kind() == std::io::ErrorKind::ConnectionRefused =>
                {
                    return Beat::Refused
                }
                Err(_) => return Beat::Missed,
            }
        }
        let Some(c) = conn.as_ref() else { return Beat::Missed };
        match c.call(Request::Heartbeat).await {
            Ok(Response::Heartbeat) => return Beat::Answered,
            Ok(_) => return Beat::Missed,
            Err(client::CallError::Remote(body)) => {
                return Beat::Unhealthy(body.bare().to_string())
            }
            Err(client::CallError::Timeout) => return Beat::Missed,
            Err(client::CallError::Disconnected) => *conn = None,
            Err(_) => {
                *conn = None;
                return Beat::Missed;
            }
        }
    }
    Beat::Missed
}

/// Kills what is left of `name` and starts it again (after `hold`, the process killed at
/// once), retrying with backoff, each step under the admin lock; `None` once the replica was
/// removed or the manager stops.
async fn replace(
    m: &Manager,
    name: &str,
    watch: &CancellationToken,
    mut hold: Duration,
) -> Option<Spawned> {
    let mut backoff = RESPAWN_BACKOFF;
    loop {
        let admin = tokio::select! {
            _ = watch.cancelled() => return None,
            g = m.admin.lock() => g,
        };
        if watch.is_cancelled() {
            return None;
        }
        m.spawner.kill(name).await;
        if hold.is_zero() {
            match m.spawner.spawn(name).await {
                Ok(s) => {
                    if m.replaced(name, s, watch) {
                        return Some(s);
                    }
                    m.spawner.kill(name).await;
                    return None;
                }
                Err(e) => {
                    tracing::error!(replica = %name, error = %e, "cannot replace replica; retrying")
                }
            }
            hold = backoff;
            backoff = (backoff * 2).min(RESPAWN_BACKOFF_MAX);
        }
        // Admin operations go on while the start waits.
        drop(admin);
        tokio::select! {
            _ = watch.cancelled() => return None,
            _ = tokio::time::sleep(hold) => {}
        }
        hold = Duration::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use protocol::server::{self, Handler};
    use protocol::ErrorBody;
    use tokio::net::TcpListener;
    use tokio_util::task::TaskTracker;

    use super::*;

    /// Answers heartbeats, or refuses them with a reason while `sick`.
    struct Replica {
        sick: bool,
    }

    impl Handler for Replica {
        fn name(&self) -> &str {
            "replica"
        }

        async fn handle(&self, req: Request) -> Result<Response, ErrorBody> {
            match req {
                Request::Heartbeat if self.sick => {
                    Err(ErrorBody::internal("replica is unhealthy: the log of shard sh1 failed"))
                }
                Request::Heartbeat => Ok(Response::Heartbeat),
                other => Err(ErrorBody::bad_request(other.name().to_string())),
            }
        }
    }

    async fn start(sick: bool, cancel: &CancellationToken) -> Spawned {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serve =
            server::serve(listener, Arc::new(Replica { sick }), cancel.clone(), TaskTracker::new());
        tokio::spawn(serve);
        Spawned { addr, http: addr }
    }

    fn opts() -> ConnectOptions {
        let t = Duration::from_secs(5);
        ConnectOptions { connect_timeout: t, handshake_timeout: t, request_timeout: Some(t) }
    }

    #[tokio::test]
    async fn a_heartbeat_answered_with_an_error_is_unhealthy_with_its_reason() {
        let cancel = CancellationToken::new();
        let (well, sick) = (start(false, &cancel).await, start(true, &cancel).await);
        let mut conn = None;
        assert_eq!(ping(&mut conn, well, opts()).await, Beat::Answered);
        let mut conn = None;
        assert_eq!(
            ping(&mut conn, sick, opts()).await,
            Beat::Unhealthy("replica is unhealthy: the log of shard sh1 failed".into())
        );
        cancel.cancel();
    }

    #[test]
    fn a_replica_unhealthy_again_soon_waits_longer_each_time_up_to_the_cap() {
        let holds: Vec<u64> = (0..8).map(|n| sick_hold(n).as_secs()).collect();
        assert_eq!(holds, [0, 1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(sick_hold(u32::MAX), SICK_HOLD_MAX);
    }

    #[tokio::test]
    async fn a_port_nobody_listens_on_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        drop(listener);
        let mut conn = None;
        assert_eq!(ping(&mut conn, Spawned { addr, http: addr }, opts()).await, Beat::Refused);
    }
}
