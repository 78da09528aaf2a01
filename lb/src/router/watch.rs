//! The router's long poll of the manager's membership: ask for anything newer than what the
//! table holds, apply the answer, ask again. While the manager is unreachable the router keeps
//! routing by the last membership and retries with backoff.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Router;
use crate::control::{ControlClient, ControlRequest, ControlResponse};

/// How long the manager may hold one watch request.
const WATCH_WAIT: Duration = Duration::from_secs(10);
/// Extra time allowed for the answer to a held watch.
const WATCH_SLACK: Duration = Duration::from_secs(5);
/// First and longest wait before asking an unreachable manager again.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

pub(super) async fn run(router: Arc<Router>, cancel: CancellationToken) {
    // A connection of its own: a held watch must not delay /add or /rm.
    let client = ControlClient::new(router.cfg.manager.clone(), "shardgate-router-watch");
    let mut backoff = BACKOFF_MIN;
    let mut failing = false;
    loop {
        let (generation, version) = {
            let t = router.table();
            if t.ready {
                (t.membership.generation, t.membership.version)
            } else {
                (0, 0)
            }
        };
        let req =
            ControlRequest::Watch { generation, version, wait_ms: WATCH_WAIT.as_millis() as u64 };
        let answer = tokio::select! {
            _ = cancel.cancelled() => return,
            a = client.call(req, WATCH_WAIT + WATCH_SLACK) => a,
        };
        match answer {
            Ok(ControlResponse::Members(m)) => {
                if failing {
                    tracing::info!(manager = %client.addr(), "shard manager reachable again");
                }
                failing = false;
                backoff = BACKOFF_MIN;
                router.apply(m);
            }
            Ok(other) => {
                tracing::warn!(answer = ?other, "the shard manager answered a watch with something else");
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(
                        manager = %client.addr(),
                        error = %e.message,
                        "cannot watch the shard manager; routing by the last membership"
                    );
                }
                failing = true;
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}
