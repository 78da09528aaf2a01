//! A-3 of stage 1: a replica's process dies (SIGKILL) under load; how long until the balancer
//! notices, how long until the replica is replaced (listed again and answering), and how many
//! requests failed meanwhile.
//!
//! On a `shardgate up --servers N` of its own, connections send `GET /home` through the router
//! without pause for the whole analysis. Each run waits for `--a3-warmup` answers, kills the
//! replica that answered most of them (so it is certain to be routed to again), then measures
//! from the kill:
//! - detection: the replica is gone from `GET /rep` (polled every few ms), and the time `up`
//!   logged "replica dead" for it;
//! - replacement: `up` logged "replica replaced under the same name", the replica is back in
//!   `/rep`, and a `GET /home` sent after the kill was answered by it (its new process);
//! - failed requests: answers other than 200 and broken connections, from the run's first
//!   request (at least 500 ms and `--a3-warmup` answers before the kill) to its end (at
//!   least 500 ms after the replacement).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plotters::prelude::*;

use crate::procs::{poll, LogLine, UpChild};
use crate::progress::Progress;

/// Flags of A-3 (part of `analyze lb`).
#[derive(clap::Args, Debug, Clone)]
pub struct A3Args {
    /// A-3: replicas of the cluster it starts.
    #[arg(long, default_value_t = 3)]
    pub a3_servers: usize,
    /// A-3: replicas killed, one per run.
    #[arg(long, default_value_t = 3)]
    pub a3_runs: usize,
    /// A-3: connections sending GET /home without pause.
    #[arg(long, default_value_t = 8)]
    pub a3_connections: usize,
    /// A-3: answers in a run before the kill (and at least 500 ms of load).
    #[arg(long, default_value_t = 1000)]
    pub a3_warmup: u64,
    /// Skip A-3 (it starts a cluster of its own).
    #[arg(long)]
    pub no_a3: bool,
}

/// The manager's heartbeat interval and dead-after limit in the cluster A-3 starts (`up`'s
/// defaults, given explicitly so the report can name them).
const HEARTBEAT_MS: u64 = 150;
const DEAD_AFTER_MS: u64 = 500;
/// How often `/rep` is polled during a run.
const REP_POLL_EVERY: Duration = Duration::from_millis(5);
/// Limit on one phase of a run (warm-up, detection, replacement).
const PHASE_TIMEOUT: Duration = Duration::from_secs(30);
/// Width of a bucket of the timeline chart.
const BUCKET: Duration = Duration::from_millis(10);
/// Least load before the kill, and after the replacement, in each run.
const WARMUP_MIN: Duration = Duration::from_millis(500);
const TAIL_MIN: Duration = Duration::from_millis(500);

/// One run of A-3; times in ms from the kill (`None`: not seen).
#[derive(Clone, Debug)]
pub struct A3Run {
    /// The replica killed.
    pub victim: String,
    /// Gone from `/rep`.
    pub gone_from_rep_ms: Option<f64>,
    /// `up` logged "replica dead" for it.
    pub logged_dead_ms: Option<f64>,
    /// The reason that line gave (`connection refused`, `missed heartbeats`).
    pub dead_reason: Option<String>,
    /// `up` logged it replaced.
    pub logged_replaced_ms: Option<f64>,
    /// Listed in `/rep` again after being gone (or, if never seen gone, after the log said
    /// it was replaced).
    pub back_in_rep_ms: Option<f64>,
    /// First answer from it to a request sent after the kill.
    pub answered_ms: Option<f64>,
    /// Requests in the run, and how many failed.
    pub requests: u64,
    /// Failed requests in the run.
    pub failed: u64,
    /// Failed requests sent after the kill.
    pub failed_after_kill: u64,
    /// Timeline: per [`BUCKET`] from the run's start: (ok, failed), and the kill's bucket.
    pub timeline: Vec<(u64, u64)>,
    /// Index of the bucket of the kill.
    pub kill_bucket: usize,
}

impl A3Run {
    /// Detection: the earlier of `/rep` and the log.
    pub fn detected_ms(&self) -> Option<f64> {
        min_opt(self.gone_from_rep_ms, self.logged_dead_ms)
    }

    /// Replacement: back in `/rep` and answering.
    pub fn replaced_ms(&self) -> Option<f64> {
        match (self.back_in_rep_ms, self.answered_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        }
    }
}

fn min_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Everything A-3 found.
#[derive(Clone, Debug)]
pub struct A3Report {
    /// Replicas.
    pub servers: usize,
    /// Connections of the load.
    pub connections: usize,
    /// Every run.
    pub runs: Vec<A3Run>,
    /// The 1-minute load average when A-3 started.
    pub load: String,
}

/// One answered (or failed) GET /home.
#[derive(Clone, Copy)]
struct Event {
    sent: Instant,
    done: Instant,
    /// Index into the replica names; -1 for a failure, -2 for an unknown answer.
    who: i32,
}

const FAILED: i32 = -1;
const UNKNOWN: i32 = -2;

/// Runs A-3 and returns what it found.
pub async fn run(args: &A3Args, progress: &Progress) -> Result<A3Report, String> {
    if args.a3_servers < 2 || args.a3_runs == 0 || args.a3_connections == 0 {
        return Err("A-3 needs --a3-servers >= 2, --a3-runs >= 1 and --a3-connections >= 1".into());
    }
    progress.stage(format!("A-3: starting up --servers {}", args.a3_servers), 0);
    // The health loop's "replica dead" is a warning; its "replaced" line is at info.
    let (hb, dead) = (HEARTBEAT_MS.to_string(), DEAD_AFTER_MS.to_string());
    let flags = ["--heartbeat-ms", hb.as_str(), "--dead-after-ms", dead.as_str()];
    let load = crate::bench_db::load_average();
    let up = UpChild::start(args.a3_servers, &flags, "warn,lb::manager::health=info").await?;
    let result = runs(&up, args, progress)
        .await
        .map(|runs| A3Report { load, ..runs })
        .map_err(|e| format!("A-3: {e}{}", up.tail(20)));
    up.stop().await;
    result
}

async fn rep(c: &mut Option<client::HttpClient>, addr: SocketAddr) -> Option<Vec<String>> {
    if c.is_none() {
        *c = client::HttpClient::connect(addr).await.ok();
    }
    let conn = c.as_mut()?;
    match conn.json("GET", "/rep", None).await {
        Ok((200, js)) => Some(
            js["message"]["replicas"]
                .as_array()?
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
        ),
        _ => {
            *c = None;
            None
        }
    }
}

async fn runs(up: &UpChild, args: &A3Args, progress: &Progress) -> Result<A3Report, String> {
    let addr = up.http;
    let mut rep_conn = None;
    let deadline = Instant::now() + PHASE_TIMEOUT;
    let names = loop {
        match rep(&mut rep_conn, addr).await {
            Some(r) if r.len() == args.a3_servers => break r,
            _ if Instant::now() >= deadline => return Err("the replicas did not come up".into()),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let index: Arc<HashMap<String, i32>> =
        Arc::new(names.iter().enumerate().map(|(i, n)| (n.clone(), i as i32)).collect());

    // The load: runs until `stop`, for every run.
    let stop = Arc::new(AtomicBool::new(false));
    let events: Arc<Mutex<Vec<Event>>> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..args.a3_connections {
        let (stop, events, index) = (stop.clone(), events.clone(), index.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn: Option<client::HttpClient> = None;
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                if conn.is_none() {
                    conn = client::HttpClient::connect(addr).await.ok();
                }
                let who = match conn.as_mut() {
                    None => FAILED,
                    Some(c) => match c.json("GET", "/home", None).await {
                        Ok((200, js)) => js["message"]
                            .as_str()
                            .and_then(|m| m.strip_prefix("Hello from Server: "))
                            .and_then(|n| index.get(n).copied())
                            .unwrap_or(UNKNOWN),
                        Ok(_) => FAILED,
                        Err(_) => {
                            conn = None;
                            FAILED
                        }
                    },
                };
                let e = Event { sent, done: Instant::now(), who };
                events.lock().unwrap_or_else(|e| e.into_inner()).push(e);
                if who == FAILED && conn.is_none() {
                    // The router itself is unreachable: do not spin.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }));
    }
    let mut out = Vec::new();
    let mut result = Ok(());
    for run in 1..=args.a3_runs {
        progress.stage(format!("A-3: run {run}/{}", args.a3_runs), 0);
        match one_run(up, args, &names, &events, &mut rep_conn).await {
            Ok(r) => {
                progress.note(&format!(
                    "A-3 run {run}: killed {}; detected after {}, replaced after {}, {} of {} requests failed",
                    r.victim,
                    ms(r.detected_ms()),
                    ms(r.replaced_ms()),
                    r.failed,
                    r.requests
                ));
                out.push(r);
            }
            Err(e) => {
                result = Err(format!("run {run}: {e}"));
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    result?;
    Ok(A3Report {
        servers: args.a3_servers,
        connections: args.a3_connections,
        runs: out,
        load: String::new(),
    })
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "not seen".to_string(), |v| format!("{v:.0} ms"))
}

/// Events so far from index `from`.
fn events_since(events: &Mutex<Vec<Event>>, from: usize) -> Vec<Event> {
    let ev = events.lock().unwrap_or_else(|e| e.into_inner());
    ev.get(from..).map(<[Event]>::to_vec).unwrap_or_default()
}

/// The first line at or after `after` that says `what` about `replica`: when it was read,
/// and its text without colours.
fn logged_line(
    log: &[LogLine],
    after: Instant,
    what: &str,
    replica: &str,
) -> Option<(Instant, String)> {
    let field = format!("replica={replica}");
    log.iter().filter(|l| l.at >= after).find_map(|l| {
        let t = strip_ansi(&l.text);
        (t.contains(what) && t.split_whitespace().any(|w| w == field)).then_some((l.at, t))
    })
}

fn logged(log: &[LogLine], after: Instant, what: &str, replica: &str) -> Option<Instant> {
    logged_line(log, after, what, replica).map(|(at, _)| at)
}

/// The value of `reason="..."` in a log line.
fn reason(line: &str) -> Option<String> {
    let rest = line.split_once("reason=\"")?.1;
    Some(rest.split_once('"')?.0.to_string())
}

/// `text` without ANSI colour sequences (tracing colours fields even into a pipe).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ ... final byte in @..~
            if chars.next() == Some('[') {
                for d in chars.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

async fn one_run(
    up: &UpChild,
    args: &A3Args,
    names: &[String],
    events: &Mutex<Vec<Event>>,
    rep_conn: &mut Option<client::HttpClient>,
) -> Result<A3Run, String> {
    let addr = up.http;
    let from = events.lock().unwrap_or_else(|e| e.into_inner()).len();
    let start = Instant::now();
    let answered =
        |from: usize| events_since(events, from).iter().filter(|e| e.who >= 0).count() as u64;
    poll(PHASE_TIMEOUT, Duration::from_millis(10), || async {
        (answered(from) >= args.a3_warmup && start.elapsed() >= WARMUP_MIN).then_some(())
    })
    .await
    .ok_or("the warm-up got too few answers")?;
    // The replica that answered most of the warm-up: the load certainly reaches it again.
    let mut counts = vec![0u64; names.len()];
    for e in events_since(events, from) {
        if let Some(c) = usize::try_from(e.who).ok().and_then(|i| counts.get_mut(i)) {
            *c += 1;
        }
    }
    let victim_i = (0..names.len()).max_by_key(|&i| counts[i]).unwrap_or(0);
    let victim = names[victim_i].clone();
    let pid = up.node_pid(&victim).ok_or_else(|| format!("no live process for {victim}"))?;
    let killed = Instant::now();
    if !crate::procs::sigkill(pid) {
        return Err(format!("cannot SIGKILL {victim} (pid {pid})"));
    }
    let since = |t: Instant| (t - killed).as_secs_f64() * 1000.0;

    // Detection and return in /rep, polled; the log lines are read afterwards.
    let mut gone_at = None;
    let mut back_at = None;
    let deadline = Instant::now() + PHASE_TIMEOUT;
    while Instant::now() < deadline {
        let listed = rep(rep_conn, addr).await.map(|r| r.contains(&victim));
        let now = Instant::now();
        match (listed, gone_at) {
            (Some(false), None) => gone_at = Some(now),
            (Some(true), Some(_)) => {
                back_at = Some(now);
                break;
            }
            (Some(true), None)
                if logged(&up.log(), killed, "replica replaced", &victim).is_some() =>
            {
                // Replaced before a poll saw it gone: listed again from here.
                back_at = Some(now);
                break;
            }
            _ => {}
        }
        tokio::time::sleep(REP_POLL_EVERY).await;
    }
    // Answering: a request sent after the kill answered by the replica's new process.
    let answered_at = poll(PHASE_TIMEOUT, Duration::from_millis(2), || async {
        events_since(events, from)
            .iter()
            .filter(|e| e.sent >= killed && e.who == victim_i as i32)
            .map(|e| e.done)
            .min()
    })
    .await;
    // A tail of load after the replacement, so failures right after it count too.
    let tail_from = events.lock().unwrap_or_else(|e| e.into_inner()).len();
    let replaced_at = Instant::now();
    poll(PHASE_TIMEOUT, Duration::from_millis(10), || async {
        (answered(tail_from) >= 1 && replaced_at.elapsed() >= TAIL_MIN).then_some(())
    })
    .await
    .ok_or("no answers after the replacement")?;
    let evs = events_since(events, from);
    let log = up.log();
    let dead = logged_line(&log, killed, "replica dead", &victim);
    let requests = evs.len() as u64;
    let failed = evs.iter().filter(|e| e.who == FAILED).count() as u64;
    let failed_after_kill =
        evs.iter().filter(|e| e.who == FAILED && e.sent >= killed).count() as u64;
    let end = evs.iter().map(|e| e.done).max().unwrap_or(start);
    // Whole buckets only: a last, partial one would look like a drop in load.
    let buckets = ((end - start).as_secs_f64() / BUCKET.as_secs_f64()) as usize;
    let mut timeline = vec![(0u64, 0u64); buckets.min(100_000)];
    for e in &evs {
        let b = ((e.done - start).as_secs_f64() / BUCKET.as_secs_f64()) as usize;
        if let Some(slot) = timeline.get_mut(b) {
            if e.who == FAILED {
                slot.1 += 1;
            } else {
                slot.0 += 1;
            }
        }
    }
    Ok(A3Run {
        gone_from_rep_ms: gone_at.map(since),
        logged_dead_ms: dead.as_ref().map(|(at, _)| since(*at)),
        dead_reason: dead.and_then(|(_, line)| reason(&line)),
        logged_replaced_ms: logged(&log, killed, "replica replaced", &victim).map(since),
        back_in_rep_ms: back_at.map(since),
        answered_ms: answered_at.map(since),
        victim,
        requests,
        failed,
        failed_after_kill,
        timeline,
        kill_bucket: ((killed - start).as_secs_f64() / BUCKET.as_secs_f64()) as usize,
    })
}

/// The median of the values that were seen.
fn median(v: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let mut v: Vec<f64> = v.flatten().collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len().saturating_sub(1) / 2).copied()
}

/// The A-3 section of report.md.
pub fn markdown(r: &A3Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## A-3: a replica killed (SIGKILL) under load, {} replicas, {} connections\n",
        r.servers, r.connections
    );
    let _ = writeln!(
        s,
        "`shardgate up --servers {} --heartbeat-ms {HEARTBEAT_MS} --dead-after-ms \
         {DEAD_AFTER_MS}` of its own; {} connections send `GET /home` through the router without \
         pause; each run kills (SIGKILL) the replica that answered most of the last {} ms or \
         more, then keeps the load on until at least {} ms after the replacement. Load average \
         {} when A-3 started.\n",
        r.servers,
        r.connections,
        WARMUP_MIN.as_millis(),
        TAIL_MIN.as_millis(),
        if r.load.is_empty() { "unknown" } else { r.load.as_str() }
    );
    let _ = writeln!(
        s,
        "Times in ms from the kill. Detected: gone from `GET /rep` (polled every {} ms) / \
         `up` logged \"replica dead\". Replaced: `up` logged \"replica replaced\" / listed in \
         `/rep` again / first `GET /home` sent after the kill answered by it (its new process). \
         Failed: answers other than 200 and broken connections.\n",
        REP_POLL_EVERY.as_millis()
    );
    let _ = writeln!(
        s,
        "| run | killed | gone from /rep | logged dead | logged replaced | back in /rep | answering | detected | replaced | requests | failed | failed after kill |"
    );
    let _ = writeln!(s, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let f = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.0}"));
    for (i, x) in r.runs.iter().enumerate() {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            i + 1,
            x.victim,
            f(x.gone_from_rep_ms),
            f(x.logged_dead_ms),
            f(x.logged_replaced_ms),
            f(x.back_in_rep_ms),
            f(x.answered_ms),
            f(x.detected_ms()),
            f(x.replaced_ms()),
            x.requests,
            x.failed,
            x.failed_after_kill
        );
    }
    if r.runs.iter().any(|x| x.gone_from_rep_ms.is_none()) {
        let _ = writeln!(
            s,
            "\n\"-\" under \"gone from /rep\": the replica was replaced before a poll of `/rep` \
             saw it missing (the window was shorter than the poll interval); detection is then \
             the log line."
        );
    }
    let mut reasons: Vec<String> = r.runs.iter().filter_map(|x| x.dead_reason.clone()).collect();
    reasons.sort();
    reasons.dedup();
    if !reasons.is_empty() {
        let _ = writeln!(s, "\n`up` gave as the reason: {}.", reasons.join(", "));
    }
    let total: u64 = r.runs.iter().map(|x| x.requests).sum();
    let failed: u64 = r.runs.iter().map(|x| x.failed).sum();
    let _ = writeln!(
        s,
        "\nMedian over {} run(s): detected after {}, replaced (listed and answering) after {}; \
         {failed} of {total} requests failed in all.",
        r.runs.len(),
        ms(median(r.runs.iter().map(A3Run::detected_ms))),
        ms(median(r.runs.iter().map(A3Run::replaced_ms))),
    );
    s
}

fn chart_err(e: impl std::fmt::Display) -> String {
    format!("cannot draw the chart: {e}")
}

/// a3.svg: per run, answers and failures per 50 ms around the kill, with the kill, the
/// detection and the replacement marked.
pub fn chart(path: &Path, r: &A3Report) -> Result<(), String> {
    let n = r.runs.len().max(1);
    let root = SVGBackend::new(path, (900, 260 * n as u32 + 40)).into_drawing_area();
    root.fill(&WHITE).map_err(chart_err)?;
    let root = root
        .titled(
            &format!(
                "A-3: GET /home answers per {} ms; a replica SIGKILLed at the red line",
                BUCKET.as_millis()
            ),
            ("sans-serif", 18),
        )
        .map_err(chart_err)?;
    let bucket_ms = BUCKET.as_secs_f64() * 1000.0;
    for (area, x) in root.split_evenly((n, 1)).iter().zip(&r.runs) {
        let t0 = x.kill_bucket as f64 * bucket_ms;
        let xs: Vec<f64> = (0..x.timeline.len()).map(|i| i as f64 * bucket_ms - t0).collect();
        let (lo, hi) = (xs.first().copied().unwrap_or(0.0), xs.last().copied().unwrap_or(1.0));
        let ymax =
            x.timeline.iter().map(|(a, b)| *a.max(b)).max().unwrap_or(1).max(1) as f64 * 1.15;
        let mut c = ChartBuilder::on(area)
            .caption(
                format!(
                    "killed {}: detected {}, replaced {}, {} failed",
                    x.victim,
                    ms(x.detected_ms()),
                    ms(x.replaced_ms()),
                    x.failed
                ),
                ("sans-serif", 14),
            )
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(lo..hi.max(lo + 1.0), 0f64..ymax)
            .map_err(chart_err)?;
        c.configure_mesh()
            .x_desc("ms from the kill")
            .y_desc(format!("per {} ms", BUCKET.as_millis()))
            .draw()
            .map_err(chart_err)?;
        c.draw_series(LineSeries::new(
            xs.iter().zip(&x.timeline).map(|(&t, &(ok, _))| (t, ok as f64)),
            BLUE.stroke_width(2),
        ))
        .map_err(chart_err)?
        .label("answered")
        .legend(|(a, b)| PathElement::new(vec![(a, b), (a + 20, b)], BLUE.stroke_width(2)));
        c.draw_series(LineSeries::new(
            xs.iter().zip(&x.timeline).map(|(&t, &(_, bad))| (t, bad as f64)),
            RED.stroke_width(2),
        ))
        .map_err(chart_err)?
        .label("failed")
        .legend(|(a, b)| PathElement::new(vec![(a, b), (a + 20, b)], RED.stroke_width(2)));
        let marks = [
            (Some(0.0), RED, "kill"),
            (x.detected_ms(), MAGENTA, "detected"),
            (x.replaced_ms(), GREEN, "replaced"),
        ];
        for (at, color, label) in marks {
            if let Some(at) = at {
                c.draw_series(std::iter::once(PathElement::new(
                    vec![(at, 0.0), (at, ymax)],
                    color.stroke_width(1),
                )))
                .map_err(chart_err)?
                .label(label)
                .legend(move |(a, b)| PathElement::new(vec![(a, b), (a + 20, b)], color));
            }
        }
        c.configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(chart_err)?;
    }
    root.present().map_err(chart_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_found_through_colours() {
        let at = Instant::now();
        let line = "\x1b[2m2026\x1b[0m \x1b[33m WARN\x1b[0m \x1b[2mlb::manager::health\x1b[0m\x1b[2m:\x1b[0m replica dead; replacing it \x1b[3mreplica\x1b[0m\x1b[2m=\x1b[0mServer2 \x1b[3msilent_ms\x1b[0m\x1b[2m=\x1b[0m607";
        let log = vec![LogLine { at, text: line.into() }];
        assert_eq!(logged(&log, at, "replica dead", "Server2"), Some(at));
        assert_eq!(logged(&log, at, "replica dead", "Server20"), None);
        assert_eq!(logged(&log, at, "replica replaced", "Server2"), None);
        let plain = strip_ansi(line);
        assert!(plain.contains("replica=Server2 silent_ms=607"), "{plain}");
        assert_eq!(
            reason(r#"x reason="connection refused" y"#).as_deref(),
            Some("connection refused")
        );
    }
}
