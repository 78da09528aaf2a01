//! `shardgate analyze db`: the database analyses A-1..A-3 as a report with charts.
//!
//! Runs `bench db` (every flag of it applies) or, with `--csv`, reads the `results.csv` a
//! `bench db --out` wrote; then writes into `--out` the benchmark's own files (results.md,
//! results.csv, failover.csv), `report.md` with the speed-ups against A-1, and SVG charts:
//! `time.svg` (wall time of the writes and of the reads per configuration), `throughput.svg`
//! (rows/s), `latency.svg` (p50 and p99) and, with failover runs, `failover.svg`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::bench_db::{self, DbBench, DbReport, PhaseRow};
use crate::progress::Progress;

/// Flags of `analyze db`: those of `bench db`, and `--csv`.
#[derive(clap::Args, Debug, Clone)]
pub struct DbArgs {
    /// Render this results.csv (from `bench db --out`) instead of running the benchmark.
    #[arg(long)]
    csv: Option<PathBuf>,
    #[command(flatten)]
    bench: DbBench,
}

/// Runs (or reads) the benchmark, prints the report and writes it with the charts.
pub async fn run(args: DbArgs) -> Result<(), String> {
    let (report, from) = match &args.csv {
        Some(path) => (bench_db::read_csv(path)?, Some(path.clone())),
        None => {
            let progress = Progress::start();
            let r = bench_db::measure(&args.bench, &progress).await;
            progress.finish();
            (r?, None)
        }
    };
    if report.phases.is_empty() {
        return Err("no results to analyze".into());
    }
    let md = report_md(&report, from.as_deref());
    print!("{md}");
    if let Some(dir) = &args.bench.out {
        if from.is_none() {
            bench_db::write_outputs(dir, &report)?;
        } else {
            crate::procs::ensure_dir(dir)?;
        }
        let p = dir.join("report.md");
        std::fs::write(&p, &md).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
        charts(dir, &report)?;
        eprintln!("wrote {}/report.md and its charts", dir.display());
    }
    // A run that lost rows is reported, written, and still a failure.
    bench_db::verdict(&report)
}

/// The run label of a phase row: "A-1" or, with several connection counts, "A-1 x64".
fn group_label(p: &PhaseRow, several: bool) -> String {
    if several {
        format!("{} x{}", p.config, p.connections)
    } else {
        p.config.clone()
    }
}

/// Runs in order of first appearance, with their write and read rows.
fn runs(r: &DbReport) -> Vec<(String, Option<&PhaseRow>, Option<&PhaseRow>)> {
    let mut conns: Vec<usize> = r.phases.iter().map(|p| p.connections).collect();
    conns.sort_unstable();
    conns.dedup();
    let several = conns.len() > 1;
    let mut out: Vec<(String, Option<&PhaseRow>, Option<&PhaseRow>)> = Vec::new();
    for p in &r.phases {
        let label = group_label(p, several);
        let i = match out.iter().position(|(l, _, _)| *l == label) {
            Some(i) => i,
            None => {
                out.push((label, None, None));
                out.len() - 1
            }
        };
        match p.phase.as_str() {
            "write" => out[i].1 = Some(p),
            "read" => out[i].2 = Some(p),
            _ => {}
        }
    }
    out
}

fn report_md(r: &DbReport, from: Option<&Path>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Database analyses A-1..A-3\n");
    match from {
        Some(p) => {
            let _ = writeln!(s, "Rendered from `{}`.\n", p.display());
        }
        None => {
            let _ = writeln!(s, "Measured by `shardgate analyze db` on {}.\n", r.date);
        }
    }
    let _ =
        writeln!(s, "![time](time.svg)\n![throughput](throughput.svg)\n![latency](latency.svg)\n");
    if !r.failover.is_empty() {
        let _ = writeln!(s, "![failover](failover.svg)\n");
    }
    // Speed-ups against A-1 at the same connection count.
    let base = |conns: usize, phase: &str| {
        r.phases
            .iter()
            .find(|p| p.config == "A-1" && p.connections == conns && p.phase == phase)
            .map(|p| p.rows_per_s)
    };
    if r.phases.iter().any(|p| p.config == "A-1") && r.phases.iter().any(|p| p.config != "A-1") {
        let _ = writeln!(s, "## Speed against A-1 (rows/s of the configuration / rows/s of A-1)\n");
        let _ = writeln!(
            s,
            "| config | connections | write rows/s | write vs A-1 | read rows/s | read vs A-1 |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
        for (_, w, rd) in runs(r) {
            let Some(any) = w.or(rd) else { continue };
            let cell = |p: Option<&PhaseRow>, phase: &str| match (p, base(any.connections, phase)) {
                (Some(p), Some(b)) if b > 0.0 => {
                    (format!("{:.0}", p.rows_per_s), format!("{:.2}x", p.rows_per_s / b))
                }
                (Some(p), _) => (format!("{:.0}", p.rows_per_s), "-".into()),
                _ => ("-".into(), "-".into()),
            };
            let (wr, wx) = cell(w, "write");
            let (rr, rx) = cell(rd, "read");
            let _ =
                writeln!(s, "| {} | {} | {wr} | {wx} | {rr} | {rx} |", any.config, any.connections);
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(
        s,
        "Configurations: A-1 is the contract's default (6 servers, sh1..sh4 of 4096 ids, 3 \
         replicas each); A-2 keeps the 4 shards with 7 replicas each on 7 servers (each server \
         holds every shard); A-3 has 10 servers and 6 shards of 4096 ids with 8 replicas each, \
         placed round-robin (8 servers hold 5 shards, 2 hold 4). A write is acknowledged once a \
         majority of its shard's replicas (2 of 3, 4 of 7, 5 of 8) hold it durably; a read goes \
         to one replica, spread by the shard's ring. Every process (router, manager, nodes, and \
         the load generator) shares the same machine.\n"
    );
    s.push_str(&bench_db::markdown(r));
    if from.is_some() {
        let _ = writeln!(
            s,
            "\n(Rendered from CSV: the per-run verification lines are in that run's results.md.)"
        );
    }
    s
}

fn chart_err(e: impl std::fmt::Display) -> String {
    format!("cannot draw the chart: {e}")
}

/// One bar series: legend label, colour, one value per group.
struct Series {
    label: String,
    color: RGBColor,
    values: Vec<f64>,
}

/// Grouped vertical bars: one group per label on x, one bar per series in each group.
fn grouped_bars(
    path: &Path,
    title: &str,
    y_desc: &str,
    groups: &[String],
    series: &[Series],
) -> Result<(), String> {
    let width = (200 + 90 * groups.len() as u32 * series.len().max(1) as u32).clamp(700, 1300);
    let root = SVGBackend::new(path, (width, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(chart_err)?;
    let ymax = series.iter().flat_map(|s| s.values.iter().copied()).fold(0.0, f64::max);
    let ymax = if ymax > 0.0 { ymax * 1.2 } else { 1.0 };
    let n = groups.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(-0.5f64..(n - 0.5), 0f64..ymax)
        .map_err(chart_err)?;
    let labels = groups.to_vec();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups.len().max(1) * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(y_desc)
        .draw()
        .map_err(chart_err)?;
    let k = series.len().max(1) as f64;
    let bar = 0.8 / k;
    for (j, s) in series.iter().enumerate() {
        let color = s.color;
        let x0 = |i: usize| i as f64 - 0.4 + j as f64 * bar;
        chart
            .draw_series(s.values.iter().enumerate().map(|(i, &v)| {
                Rectangle::new([(x0(i) + 0.02, 0.0), (x0(i) + bar - 0.02, v)], color.filled())
            }))
            .map_err(chart_err)?
            .label(s.label.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
        chart
            .draw_series(s.values.iter().enumerate().map(|(i, &v)| {
                Text::new(
                    short(v),
                    (x0(i) + 0.03, v + ymax * 0.015),
                    ("sans-serif", 12).into_font().color(&BLACK),
                )
            }))
            .map_err(chart_err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(chart_err)?;
    root.present().map_err(chart_err)
}

/// A bar's value label: 3 significant digits or so.
fn short(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

const WRITE: RGBColor = RGBColor(0x3b, 0x6e, 0xc4);
const READ: RGBColor = RGBColor(0xe0, 0x8a, 0x1e);
const WRITE_P99: RGBColor = RGBColor(0x9d, 0xb8, 0xe6);
const READ_P99: RGBColor = RGBColor(0xf2, 0xc6, 0x8c);

fn charts(dir: &Path, r: &DbReport) -> Result<(), String> {
    let runs = runs(r);
    let groups: Vec<String> = runs.iter().map(|(l, _, _)| l.clone()).collect();
    let writes: Vec<Option<&PhaseRow>> = runs.iter().map(|x| x.1).collect();
    let reads: Vec<Option<&PhaseRow>> = runs.iter().map(|x| x.2).collect();
    let col = |rows: &[Option<&PhaseRow>], f: fn(&PhaseRow) -> f64| -> Vec<f64> {
        rows.iter().map(|p| p.map_or(0.0, f)).collect()
    };
    let (w, rd) = (&writes[..], &reads[..]);
    let rows = r.rows;
    grouped_bars(
        &dir.join("time.svg"),
        &format!("Wall time of {rows} single-row writes and {rows} single-key reads"),
        "seconds",
        &groups,
        &[
            Series { label: "write".into(), color: WRITE, values: col(w, |p| p.wall_s) },
            Series { label: "read".into(), color: READ, values: col(rd, |p| p.wall_s) },
        ],
    )?;
    grouped_bars(
        &dir.join("throughput.svg"),
        "Rows per second through the router",
        "rows/s",
        &groups,
        &[
            Series { label: "write".into(), color: WRITE, values: col(w, |p| p.rows_per_s) },
            Series { label: "read".into(), color: READ, values: col(rd, |p| p.rows_per_s) },
        ],
    )?;
    grouped_bars(
        &dir.join("latency.svg"),
        "Request latency (p50 and p99)",
        "milliseconds",
        &groups,
        &[
            Series {
                label: "write p50".into(),
                color: WRITE,
                values: col(w, |p| p.latency.p50_ms),
            },
            Series {
                label: "write p99".into(),
                color: WRITE_P99,
                values: col(w, |p| p.latency.p99_ms),
            },
            Series { label: "read p50".into(), color: READ, values: col(rd, |p| p.latency.p50_ms) },
            Series {
                label: "read p99".into(),
                color: READ_P99,
                values: col(rd, |p| p.latency.p99_ms),
            },
        ],
    )?;
    if !r.failover.is_empty() {
        let groups: Vec<String> =
            r.failover.iter().map(|f| format!("{} ({})", f.run, f.shard)).collect();
        grouped_bars(
            &dir.join("failover.svg"),
            &format!(
                "Failover: SIGKILL of a primary -> first acknowledged write (p50 {:.0} ms)",
                bench_db::failover_p50(&r.failover)
            ),
            "milliseconds",
            &groups,
            &[Series {
                label: "kill -> first write".into(),
                color: WRITE,
                values: r.failover.iter().map(|f| f.kill_to_write_ms).collect(),
            }],
        )?;
    }
    Ok(())
}
