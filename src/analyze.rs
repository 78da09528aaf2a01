//! `shardgate analyze lb` (alias `stage1`): the assignment's stage-1 analyses A-1..A-4, and
//! `analyze db` (in `analyze_db`).
//!
//! - how `--requests` requests spread over N = `--servers` replicas.
//! - the mean load per replica (and the busiest replica's) for N = `--min-n..=--max-n`.
//! - a replica SIGKILLed under load on a cluster of its own: time to detection, time to
//!   replacement, failed requests (in `analyze_lb_failover`; `--no-a3` skips it).
//! - A-4: A-1 and A-2 for every hash family side by side.
//!
//! By default are computed in-process on the ring (pure and fast, the same
//! code the router routes with). `--live` instead sends the requests through a running
//! balancer (`GET /home`, counting `Hello from Server: X`), changing N with `/add` and `/rm`;
//! that measures the one family the balancer runs with. `--out DIR` writes `report.md` and SVG
//! charts (`a1.svg`, `a2.svg`, `a3.svg`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use lb::analysis::{self, LoadStats};
use lb::ring::RingKind;
use plotters::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Value as Json};

use crate::analyze_lb_failover::{A3Args, A3Report};
use crate::progress::Progress;

/// What to analyze.
#[derive(clap::Subcommand, Debug)]
pub enum AnalyzeWhat {
    /// Stage 1, the load balancer: request distribution over the replicas
    /// and a replica killed under load.
    #[command(alias = "stage1")]
    Lb(Stage1Args),
    /// Stages 2 and 3, the database: A-1..A-3 of `bench db` with charts.
    Db(crate::analyze_db::DbArgs),
}

/// Flags of `analyze lb`.
#[derive(clap::Args, Debug)]
pub struct Stage1Args {
    /// Requests per measurement.
    #[arg(long, default_value_t = 10_000)]
    requests: usize,
    /// N for A-1.
    #[arg(long, default_value_t = 3)]
    servers: usize,
    /// Smallest N for A-2.
    #[arg(long, default_value_t = 2)]
    min_n: usize,
    /// Largest N for A-2.
    #[arg(long, default_value_t = 6)]
    max_n: usize,
    /// In-process: random server-id sets per N in A-2 (the results are averaged).
    #[arg(long, default_value_t = 5)]
    trials: usize,
    /// In-process: seed of the random server and request ids.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// In-process: the families to compare (repeatable; default every family).
    #[arg(long)]
    hash: Vec<RingKind>,
    /// Write report.md, a1.svg and a2.svg into this directory.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Send the requests through a running balancer instead (see --http).
    #[arg(long)]
    live: bool,
    /// With --live: the balancer's HTTP address.
    #[arg(long, default_value = "127.0.0.1:5000")]
    http: SocketAddr,
    /// With --live: concurrent keep-alive connections.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[command(flatten)]
    a3: A3Args,
}

/// A-1 for one family: requests per server.
struct A1Row {
    label: String,
    servers: Vec<String>,
    counts: Vec<u64>,
}

/// Everything one run found.
struct Report {
    requests: usize,
    servers: usize,
    a1: Vec<A1Row>,
    /// Per family: stats for each N of `ns`.
    a2: Vec<(String, Vec<LoadStats>)>,
    ns: Vec<usize>,
    notes: Vec<String>,
    a3: Option<A3Report>,
}

/// Runs the analysis and prints (and writes) its report.
pub async fn run(what: AnalyzeWhat) -> Result<(), String> {
    match what {
        AnalyzeWhat::Lb(args) => run_lb(args).await,
        AnalyzeWhat::Db(args) => crate::analyze_db::run(args).await,
    }
}

async fn run_lb(args: Stage1Args) -> Result<(), String> {
    if args.min_n == 0 || args.min_n > args.max_n || args.servers == 0 {
        return Err("need 1 <= --min-n <= --max-n and --servers >= 1".into());
    }
    let progress = Progress::start();
    let report = async {
        let mut report =
            if args.live { live(&args, &progress).await? } else { in_process(&args, &progress)? };
        if !args.a3.no_a3 {
            report.a3 = Some(crate::analyze_lb_failover::run(&args.a3, &progress).await?);
        }
        Ok::<_, String>(report)
    }
    .await;
    progress.finish();
    let report = report?;
    let md = markdown(&report);
    print!("{md}");
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).map_err(|e| format!("cannot write {}: {e}", p.display()))
        };
        write("report.md", &md)?;
        a1_chart(&dir.join("a1.svg"), &report)?;
        a2_chart(&dir.join("a2.svg"), &report)?;
        if let Some(a3) = &report.a3 {
            crate::analyze_lb_failover::chart(&dir.join("a3.svg"), a3)?;
        }
        eprintln!("wrote {}/{{report.md,a1.svg,a2.svg,a3.svg}}", dir.display());
    }
    Ok(())
}

fn in_process(args: &Stage1Args, progress: &Progress) -> Result<Report, String> {
    progress.stage("A-1, A-2, A-4: in-process on the ring", 0);
    let kinds = if args.hash.is_empty() { RingKind::families() } else { args.hash.clone() };
    let mut rng = StdRng::seed_from_u64(args.seed);
    let requests = analysis::random_request_ids(args.requests, &mut rng);
    let servers = analysis::random_server_ids(args.servers, &mut rng);
    let names: Vec<String> = (1..=args.servers).map(|i| format!("Server{i}")).collect();
    let mut a1 = Vec::new();
    let mut a2 = Vec::new();
    for kind in &kinds {
        let d =
            analysis::distribute(kind, &servers, &requests).map_err(|e| format!("{kind}: {e}"))?;
        a1.push(A1Row { label: kind.to_string(), servers: names.clone(), counts: d.counts });
        // The same requests for every family and N; fresh server ids per trial.
        let mut trial_rng = StdRng::seed_from_u64(args.seed ^ 0xA2);
        let rows = analysis::scaling(
            kind,
            args.min_n..=args.max_n,
            &requests,
            args.trials,
            &mut trial_rng,
        )
        .map_err(|e| format!("{kind}: {e}"))?;
        a2.push((kind.to_string(), rows));
    }
    let mut notes = vec![
        format!(
            "Computed in-process on the ring: {} random 6-digit request ids, random 6-digit \
             server ids (seed {}); A-2 averages {} server-id sets per N.",
            args.requests, args.seed, args.trials
        ),
        "`bounded` is given every request as in flight at once (the assignment sends them \
         asynchronously), so its load cap applies; the other families ignore load."
            .to_string(),
    ];
    for k in &kinds {
        notes.push(format!("`{k}`: {}", k.describe()));
    }
    Ok(Report {
        requests: args.requests,
        servers: args.servers,
        a1,
        a2,
        ns: (args.min_n..=args.max_n).collect(),
        notes,
        a3: None,
    })
}

/// One keep-alive client of the balancer.
async fn connect(addr: SocketAddr) -> Result<client::HttpClient, String> {
    client::HttpClient::connect(addr).await.map_err(|e| format!("cannot reach {addr}: {e}"))
}

async fn call(
    c: &mut client::HttpClient,
    method: &str,
    path: &str,
    body: Option<&Json>,
) -> Result<Json, String> {
    let (status, js) =
        c.json(method, path, body).await.map_err(|e| format!("{method} {path}: {e}"))?;
    if status != 200 {
        return Err(format!("{method} {path} answered {status}: {js}"));
    }
    Ok(js)
}

/// Brings the balancer to `n` replicas with `/add` or `/rm`; returns their names.
async fn set_n(c: &mut client::HttpClient, n: usize) -> Result<Vec<String>, String> {
    let rep = call(c, "GET", "/rep", None).await?;
    let now = rep["message"]["N"].as_u64().unwrap_or(0) as usize;
    if now < n {
        call(c, "POST", "/add", Some(&json!({"n": n - now}))).await?;
    } else if now > n {
        call(c, "DELETE", "/rm", Some(&json!({"n": now - n}))).await?;
    }
    let rep = call(c, "GET", "/rep", None).await?;
    Ok(rep["message"]["replicas"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default())
}

/// Sends `requests` GET /home over `concurrency` connections; counts answers per server.
async fn send(
    addr: SocketAddr,
    requests: usize,
    concurrency: usize,
    progress: &Progress,
) -> Result<(HashMap<String, u64>, u64), String> {
    let left = Arc::new(AtomicUsize::new(requests));
    let counts: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let mut c = connect(addr).await?;
        let (left, counts, progress) = (left.clone(), counts.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let mut errors = 0u64;
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                progress.inc(1);
                match c.json("GET", "/home", None).await {
                    Ok((200, js)) => {
                        let msg = js["message"].as_str().unwrap_or("");
                        match msg.strip_prefix("Hello from Server: ") {
                            Some(name) => {
                                *counts
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .entry(name.to_string())
                                    .or_insert(0) += 1
                            }
                            None => errors += 1,
                        }
                    }
                    Ok(_) => errors += 1,
                    Err(_) => {
                        errors += 1;
                        match client::HttpClient::connect(addr).await {
                            Ok(n) => c = n,
                            Err(_) => return errors,
                        }
                    }
                }
            }
            errors
        }));
    }
    let mut errors = 0;
    for t in tasks {
        errors += t.await.map_err(|e| e.to_string())?;
    }
    let counts = counts.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok((counts, errors))
}

async fn live(args: &Stage1Args, progress: &Progress) -> Result<Report, String> {
    let mut c = connect(args.http).await?;
    let metrics =
        c.request("GET", "/metrics", b"").await.map_err(|e| format!("GET /metrics: {e}"))?;
    let metrics = String::from_utf8_lossy(&metrics.body).to_string();
    let kind = metrics
        .lines()
        .find_map(|l| l.strip_prefix("shardgate_ring_info{kind=\""))
        .and_then(|l| l.split('"').next())
        .unwrap_or("unknown")
        .to_string();
    let label = format!("live ({kind})");
    let mut notes = vec![format!(
        "Measured live through the balancer at {} (GET /home, {} connections); N changed with \
         /add and /rm, so replica names past the first ones are random.",
        args.http, args.concurrency
    )];
    let names = set_n(&mut c, args.servers).await?;
    progress.stage(format!("A-1: live, N = {}", args.servers), args.requests as u64);
    let (counts, errors) = send(args.http, args.requests, args.concurrency, progress).await?;
    if errors > 0 {
        notes.push(format!("A-1: {errors} requests failed"));
    }
    let a1 = vec![A1Row {
        label: label.clone(),
        counts: names.iter().map(|n| counts.get(n).copied().unwrap_or(0)).collect(),
        servers: names,
    }];
    let mut rows = Vec::new();
    for n in args.min_n..=args.max_n {
        let names = set_n(&mut c, n).await?;
        progress.stage(format!("A-2: live, N = {n}"), args.requests as u64);
        let (counts, errors) = send(args.http, args.requests, args.concurrency, progress).await?;
        if errors > 0 {
            notes.push(format!("A-2, N = {n}: {errors} requests failed"));
        }
        let per: Vec<u64> = names.iter().map(|x| counts.get(x).copied().unwrap_or(0)).collect();
        rows.push(LoadStats::of(&per));
    }
    Ok(Report {
        requests: args.requests,
        servers: args.servers,
        a1,
        a2: vec![(label, rows)],
        ns: (args.min_n..=args.max_n).collect(),
        notes,
        a3: None,
    })
}

fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## A-1: {} requests over N = {} servers\n", r.requests, r.servers);
    let names = r.a1.first().map(|a| a.servers.clone()).unwrap_or_default();
    let same_names = r.a1.iter().all(|a| a.servers == names);
    let _ = write!(s, "| family |");
    if same_names {
        for n in &names {
            let _ = write!(s, " {n} |");
        }
    } else {
        let _ = write!(s, " requests per server |");
    }
    let _ = writeln!(s, " max/mean | stddev/mean |");
    let cols = if same_names { names.len() } else { 1 };
    let _ = writeln!(s, "|---|{}---:|---:|", "---:|".repeat(cols));
    for a in &r.a1 {
        let st = LoadStats::of(&a.counts);
        let _ = write!(s, "| {} |", a.label);
        if same_names {
            for c in &a.counts {
                let _ = write!(s, " {c} |");
            }
        } else {
            let cells: Vec<String> =
                a.servers.iter().zip(&a.counts).map(|(n, c)| format!("{n}: {c}")).collect();
            let _ = write!(s, " {} |", cells.join(", "));
        }
        let _ = writeln!(s, " {:.3} | {:.3} |", st.max_over_mean(), st.cv());
    }
    let _ = writeln!(
        s,
        "\n## A-2: load per server for N = {}..{} ({} requests each)\n",
        r.ns.first().unwrap_or(&0),
        r.ns.last().unwrap_or(&0),
        r.requests
    );
    let _ = writeln!(s, "Each cell: mean requests per server / busiest server (max/mean).\n");
    let _ = write!(s, "| family |");
    for n in &r.ns {
        let _ = write!(s, " N={n} |");
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "|---|{}", "---:|".repeat(r.ns.len()));
    for (label, rows) in &r.a2 {
        let _ = write!(s, "| {label} |");
        for st in rows {
            let _ = write!(s, " {:.0} / {} ({:.2}) |", st.mean, st.max, st.max_over_mean());
        }
        let _ = writeln!(s);
    }
    if let Some(a3) = &r.a3 {
        let _ = writeln!(s);
        s.push_str(&crate::analyze_lb_failover::markdown(a3));
    }
    let _ = writeln!(s, "\nNotes:");
    for n in &r.notes {
        let _ = writeln!(s, "- {n}");
    }
    s
}

fn chart_err(e: impl std::fmt::Display) -> String {
    format!("cannot draw the chart: {e}")
}

/// one bar chart per family, in a grid.
fn a1_chart(path: &Path, r: &Report) -> Result<(), String> {
    let count = r.a1.len().max(1);
    let cols = count.min(3);
    let rows = count.div_ceil(cols);
    let size = (380 * cols as u32, 300 * rows as u32 + 40);
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(chart_err)?;
    let root = root
        .titled(
            &format!("A-1: {} requests over N = {} servers", r.requests, r.servers),
            ("sans-serif", 20),
        )
        .map_err(chart_err)?;
    let areas = root.split_evenly((rows, cols));
    for (area, a) in areas.iter().zip(&r.a1) {
        let st = LoadStats::of(&a.counts);
        let ymax = ((st.max as f64) * 1.15).ceil().max(1.0) as u64;
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("{} (max/mean {:.2})", a.label, st.max_over_mean()),
                ("sans-serif", 14),
            )
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(48)
            .build_cartesian_2d(
                // A segmented range covers both ends: n bars need 0..n-1.
                (0..(a.counts.len() as u32).saturating_sub(1)).into_segmented(),
                0u64..ymax,
            )
            .map_err(chart_err)?;
        let names = a.servers.clone();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => names.get(*i as usize).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .y_desc("requests")
            .draw()
            .map_err(chart_err)?;
        chart
            .draw_series(
                Histogram::vertical(&chart)
                    .style(BLUE.mix(0.6).filled())
                    .margin(10)
                    .data(a.counts.iter().enumerate().map(|(i, &c)| (i as u32, c))),
            )
            .map_err(chart_err)?;
    }
    root.present().map_err(chart_err)
}

/// the mean load and each family's busiest server against N.
fn a2_chart(path: &Path, r: &Report) -> Result<(), String> {
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(chart_err)?;
    let lo = *r.ns.first().unwrap_or(&1) as f64;
    let hi = *r.ns.last().unwrap_or(&1) as f64;
    let ymax =
        r.a2.iter().flat_map(|(_, rows)| rows.iter().map(|s| s.max as f64)).fold(1.0, f64::max)
            * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("A-2: load per server, {} requests, N = {}..{}", r.requests, lo, hi),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d((lo - 0.2)..(hi + 0.2), 0f64..ymax)
        .map_err(chart_err)?;
    chart
        .configure_mesh()
        .x_labels(r.ns.len())
        .x_label_formatter(&|x| format!("{}", x.round()))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .x_desc("N (servers)")
        .y_desc("requests per server")
        .draw()
        .map_err(chart_err)?;
    if let Some((_, rows)) = r.a2.first() {
        chart
            .draw_series(LineSeries::new(
                r.ns.iter().zip(rows).map(|(&n, s)| (n as f64, s.mean)),
                BLACK.stroke_width(2),
            ))
            .map_err(chart_err)?
            .label("mean load (requests / N)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    }
    for (i, (label, rows)) in r.a2.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                r.ns.iter().zip(rows).map(|(&n, s)| (n as f64, s.max as f64)),
                color.stroke_width(2),
            ))
            .map_err(chart_err)?
            .label(format!("{label}: busiest server"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                r.ns.iter()
                    .zip(rows)
                    .map(|(&n, s)| Circle::new((n as f64, s.max as f64), 3, color.filled())),
            )
            .map_err(chart_err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(chart_err)?;
    root.present().map_err(chart_err)
}
