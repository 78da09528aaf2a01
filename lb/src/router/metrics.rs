//! The router's counters and their Prometheus text exposition (`GET /metrics`).

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::limits::ConnectionLimit;

use super::db_table::DbTable;
use super::RouteTable;
use crate::ring::RingKind;

/// Upper bounds of the request latency histogram, in seconds.
const LATENCY_BUCKETS_S: [f64; 12] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
/// Distinct paths counted by name; the rest are counted as `other` (paths come from
/// clients, so their number must be bounded).
const MAX_PATH_LABELS: usize = 64;

/// Counters since the router started.
#[derive(Default)]
pub(crate) struct Metrics {
    /// HTTP answers by path, then by status (looked up by `&str`, so counting a request
    /// allocates nothing once its path was seen).
    requests: Mutex<HashMap<String, HashMap<u16, u64>>>,
    /// Forwarding counters by replica name; a routing table holds each replica's entry, so
    /// the forwarding path counts without a lock.
    replicas: Mutex<HashMap<String, Arc<ReplicaCounters>>>,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_S.len()],
    latency_sum_us: AtomicU64,
    latency_count: AtomicU64,
    /// Database endpoint answers, by endpoint and status.
    db_requests: Mutex<HashMap<(&'static str, u16), u64>>,
    /// Database request attempts that were tried again, by reason.
    db_retries: Mutex<HashMap<&'static str, u64>>,
}

/// One replica's forwarding counters.
#[derive(Default)]
pub(crate) struct ReplicaCounters {
    forwarded: AtomicU64,
    failed: AtomicU64,
}

impl ReplicaCounters {
    /// A request forwarded to the replica and answered by it.
    pub fn forwarded(&self) {
        self.forwarded.fetch_add(1, Ordering::Relaxed);
    }

    /// A forwarding attempt to the replica that failed.
    pub fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    /// One HTTP request answered.
    pub fn observe(&self, path: &str, status: u16, took: Duration) {
        {
            let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
            let path =
                if m.contains_key(path) || m.len() < MAX_PATH_LABELS { path } else { "other" };
            match m.get_mut(path) {
                Some(by_status) => *by_status.entry(status).or_insert(0) += 1,
                None => {
                    m.insert(path.to_string(), HashMap::from([(status, 1)]));
                }
            }
        }
        let s = took.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS_S.iter().position(|&b| s <= b) {
            self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.latency_sum_us.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        self.latency_count.fetch_add(1, Ordering::Relaxed);
    }

    /// The forwarding counters of the replica named `replica` (created at zero).
    pub fn replica(&self, replica: &str) -> Arc<ReplicaCounters> {
        let mut m = self.replicas.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(replica.to_string()).or_default().clone()
    }

    /// One database endpoint answered (`endpoint` is the contract's name: `read`, `write`,
    /// `update`, `del`, `read_server`, `init`, `status`, `add`, `rm`, `primary_elect`).
    pub fn db_request(&self, endpoint: &'static str, status: u16) {
        let mut m = self.db_requests.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((endpoint, status)).or_insert(0) += 1;
    }

    /// A database attempt that failed and was (or would have been) tried again.
    pub fn db_retry(&self, reason: &'static str) {
        let mut m = self.db_retries.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(reason).or_insert(0) += 1;
    }

    /// Appends the database part of the exposition: endpoint counters, retries, the catalog
    /// version and each shard's LSN floor.
    pub fn render_db(&self, out: &mut String, table: &DbTable, lsns: &[(String, u64)]) {
        let w = out;
        let _ = writeln!(
            w,
            "# HELP shardgate_db_requests_total Database endpoint requests answered, by endpoint and status."
        );
        let _ = writeln!(w, "# TYPE shardgate_db_requests_total counter");
        let mut reqs: Vec<((&str, u16), u64)> = self
            .db_requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect();
        reqs.sort();
        for ((endpoint, status), n) in reqs {
            let _ = writeln!(
                w,
                "shardgate_db_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(
            w,
            "# HELP shardgate_db_retries_total Database attempts at a node that failed and were tried again elsewhere or later, by reason."
        );
        let _ = writeln!(w, "# TYPE shardgate_db_retries_total counter");
        let mut retries: Vec<(&str, u64)> = self
            .db_retries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect();
        retries.sort();
        for (reason, n) in retries {
            let _ = writeln!(w, "shardgate_db_retries_total{{reason=\"{reason}\"}} {n}");
        }
        let _ = writeln!(w, "# HELP shardgate_db_catalog_version Catalog version routed by.");
        let _ = writeln!(w, "# TYPE shardgate_db_catalog_version gauge");
        let _ = writeln!(w, "shardgate_db_catalog_version {}", table.version());
        let _ = writeln!(
            w,
            "# HELP shardgate_db_shard_lsn Highest LSN of a shard seen in an answer (reads ask for at least this)."
        );
        let _ = writeln!(w, "# TYPE shardgate_db_shard_lsn gauge");
        for (shard, lsn) in lsns {
            let _ = writeln!(w, "shardgate_db_shard_lsn{{shard=\"{}\"}} {lsn}", label(shard));
        }
        let mut shards: Vec<(&String, &super::db_table::ShardRoute)> =
            table.shards.iter().collect();
        shards.sort_by(|a, b| a.0.cmp(b.0));
        let _ = writeln!(w, "# HELP shardgate_db_shard_epoch A shard's epoch in the catalog.");
        let _ = writeln!(w, "# TYPE shardgate_db_shard_epoch gauge");
        for (shard, r) in &shards {
            let _ =
                writeln!(w, "shardgate_db_shard_epoch{{shard=\"{}\"}} {}", label(shard), r.epoch);
        }
        let _ = writeln!(
            w,
            "# HELP shardgate_db_shard_has_primary Whether a shard has a live primary to write to."
        );
        let _ = writeln!(w, "# TYPE shardgate_db_shard_has_primary gauge");
        for (shard, r) in &shards {
            let _ = writeln!(
                w,
                "shardgate_db_shard_has_primary{{shard=\"{}\"}} {}",
                label(shard),
                u8::from(r.primary.is_some())
            );
        }
        let _ = writeln!(
            w,
            "# HELP shardgate_db_shard_live_replicas Replicas of a shard that reads are spread over."
        );
        let _ = writeln!(w, "# TYPE shardgate_db_shard_live_replicas gauge");
        for (shard, r) in &shards {
            let _ = writeln!(
                w,
                "shardgate_db_shard_live_replicas{{shard=\"{}\"}} {}",
                label(shard),
                r.live.len()
            );
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self, table: &RouteTable, kind: &RingKind) -> String {
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(
            w,
            "# HELP shardgate_http_requests_total HTTP requests answered, by path and status."
        );
        let _ = writeln!(w, "# TYPE shardgate_http_requests_total counter");
        let mut reqs: Vec<((String, u16), u64)> = self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .flat_map(|(path, by_status)| by_status.iter().map(|(s, n)| ((path.clone(), *s), *n)))
            .collect();
        reqs.sort();
        for ((path, status), n) in reqs {
            let _ = writeln!(
                w,
                "shardgate_http_requests_total{{path=\"{}\",status=\"{status}\"}} {n}",
                label(&path)
            );
        }
        let mut replicas: Vec<(String, u64, u64)> = self
            .replicas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, c)| {
                (k.clone(), c.forwarded.load(Ordering::Relaxed), c.failed.load(Ordering::Relaxed))
            })
            .collect();
        replicas.sort();
        for (name, help, pick) in [
            (
                "shardgate_forwarded_total",
                "Requests forwarded to a replica and answered by it.",
                (|r: &(String, u64, u64)| r.1) as fn(&(String, u64, u64)) -> u64,
            ),
            (
                "shardgate_forward_failures_total",
                "Forwarding attempts to a replica that failed (the request went on to the next candidate or failed).",
                |r: &(String, u64, u64)| r.2,
            ),
        ] {
            let _ = writeln!(w, "# HELP {name} {help}");
            let _ = writeln!(w, "# TYPE {name} counter");
            // Like before, a replica shows once something was counted for it.
            for r in replicas.iter().filter(|r| pick(r) > 0) {
                let _ = writeln!(w, "{name}{{replica=\"{}\"}} {}", label(&r.0), pick(r));
            }
        }
        let _ = writeln!(
            w,
            "# HELP shardgate_request_duration_seconds Time to answer an HTTP request."
        );
        let _ = writeln!(w, "# TYPE shardgate_request_duration_seconds histogram");
        let mut cumulative = 0;
        for (i, b) in LATENCY_BUCKETS_S.iter().enumerate() {
            cumulative += self.latency_buckets[i].load(Ordering::Relaxed);
            let _ =
                writeln!(w, "shardgate_request_duration_seconds_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(w, "shardgate_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(w, "shardgate_request_duration_seconds_sum {sum}");
        let _ = writeln!(w, "shardgate_request_duration_seconds_count {count}");

        let m = &table.membership;
        let live = m.members.iter().filter(|x| x.alive).count();
        let _ = writeln!(w, "# HELP shardgate_replicas Replicas in the membership.");
        let _ = writeln!(w, "# TYPE shardgate_replicas gauge");
        let _ = writeln!(w, "shardgate_replicas {}", m.members.len());
        let _ = writeln!(w, "# HELP shardgate_replicas_alive Replicas answering heartbeats.");
        let _ = writeln!(w, "# TYPE shardgate_replicas_alive gauge");
        let _ = writeln!(w, "shardgate_replicas_alive {live}");
        let _ = writeln!(w, "# HELP shardgate_replica_up Whether a replica answers heartbeats.");
        let _ = writeln!(w, "# TYPE shardgate_replica_up gauge");
        for x in &m.members {
            let _ = writeln!(
                w,
                "shardgate_replica_up{{replica=\"{}\",id=\"{}\"}} {}",
                label(&x.name),
                x.id,
                u8::from(x.alive)
            );
        }
        let _ = writeln!(w, "# HELP shardgate_replica_restarts_total Replacements of a replica after it missed heartbeats.");
        let _ = writeln!(w, "# TYPE shardgate_replica_restarts_total counter");
        for x in &m.members {
            let _ = writeln!(
                w,
                "shardgate_replica_restarts_total{{replica=\"{}\"}} {}",
                label(&x.name),
                x.restarts
            );
        }
        let _ = writeln!(w, "# HELP shardgate_membership_version Membership version routed by.");
        let _ = writeln!(w, "# TYPE shardgate_membership_version gauge");
        let _ = writeln!(w, "shardgate_membership_version {}", m.version);
        let _ = writeln!(w, "# HELP shardgate_ring_info The request ring in use.");
        let _ = writeln!(w, "# TYPE shardgate_ring_info gauge");
        let _ = writeln!(
            w,
            "shardgate_ring_info{{kind=\"{}\",family=\"{}\"}} 1",
            label(&kind.to_string()),
            kind.name()
        );
        out
    }
}

/// The connection gauges and refusal counters of the router's listeners.
pub(crate) fn render_connections(out: &mut String, limits: &[&ConnectionLimit]) {
    let w = out;
    let _ = writeln!(
        w,
        "# HELP shardgate_connections_open Connections open now, by listener (each capped by --max-connections)."
    );
    let _ = writeln!(w, "# TYPE shardgate_connections_open gauge");
    for l in limits {
        let _ =
            writeln!(w, "shardgate_connections_open{{listener=\"{}\"}} {}", l.listener(), l.open());
    }
    let _ = writeln!(
        w,
        "# HELP shardgate_connections_refused_total Connections refused at the cap, by listener."
    );
    let _ = writeln!(w, "# TYPE shardgate_connections_refused_total counter");
    for l in limits {
        let _ = writeln!(
            w,
            "shardgate_connections_refused_total{{listener=\"{}\"}} {}",
            l.listener(),
            l.refused()
        );
    }
}
