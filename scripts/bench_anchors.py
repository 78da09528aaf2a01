#!/usr/bin/env python3
"""Helpers of scripts/bench-anchors.sh (Python 3 standard library only).

Subcommands:
  ports N                     N free TCP ports on 127.0.0.1, one per line
  descendants PID             the live descendants of PID, one per line
  nodes LOGFILE               `NAME PID HTTP_ADDR` of each node `shardgate up` started
                              (from its `node started` debug lines)
  wait-http URL [--post BODY] [--until KEY] [--timeout S]
                              polls URL until it answers 200 (and, with --until, until
                              every shard in /status has a primary, or the etcd cluster
                              has a leader)
  etcd-leader URL...          the client URL of the etcd member that is the leader
  count-shardgate URL         rows the router returns for the whole Stud_id space
  count-etcd URL              keys under stud/ in etcd
  measure --record JSON --out FILE [--side NAME=PIDS]... [--log FILE] -- CMD...
                              runs CMD (wrk with scripts/bench-anchors/done.lua), reads its
                              ANCHOR_JSON line, the CPU time of CMD itself (wait4) and of
                              each side (utime + stime from /proc/PID/stat before and after;
                              `PID+` counts PID and its live descendants), and appends one
                              JSON line to FILE
  dbbench CSV --record JSON --out FILE [--cpu-s S]
                              the write phase of `shardgate bench db --out` as a record
  wal LOG --out FILE          the wal/raw table the wal crate's criterion bench printed
  report RESULTS --out DIR --meta JSON
                              anchors.md, anchors.csv (the summary), anchors-runs.csv
                              (every run) and anchors.svg from the records
"""

import argparse
import base64
import csv
import datetime
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")
# The whole Stud_id space of the write benchmark's configuration (4 shards of 2^24 ids).
ID_SPACE = 1 << 26


def die(msg):
    print(f"bench_anchors.py: {msg}", file=sys.stderr)
    sys.exit(1)


# ---- processes -------------------------------------------------------------------------


def proc_stat(pid):
    """(ppid, utime + stime in ticks) of a live pid, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = s[s.rindex(")") + 2:].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def all_parents():
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = proc_stat(int(d))
            if st:
                out[int(d)] = st[0]
    return out


def descendants(pid):
    parents = all_parents()
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        found.extend(kids)
        frontier.extend(kids)
    return sorted(found)


def side_pids(spec):
    pids = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if part.endswith("+"):
            p = int(part[:-1])
            pids.append(p)
            pids.extend(descendants(p))
        else:
            pids.append(int(part))
    return sorted(set(pids))


def cpu_ticks(pids):
    """utime + stime of each live pid."""
    out = {}
    for p in pids:
        st = proc_stat(p)
        if st:
            out[p] = st[1]
    return out


# ---- HTTP ------------------------------------------------------------------------------


def http(url, body=None, timeout=5.0):
    data = None if body is None else body.encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def b64(s):
    return base64.b64encode(s.encode()).decode()


# ---- subcommands -----------------------------------------------------------------------


def cmd_ports(a):
    socks = []
    for _ in range(a.n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    for s in socks:
        print(s.getsockname()[1])
    for s in socks:
        s.close()


def cmd_descendants(a):
    for p in descendants(a.pid):
        print(p)


def cmd_nodes(a):
    pat = re.compile(r"node started node=(\S+) pid=Some\((\d+)\) addr=\S+ http=(\S+)")
    latest = {}
    with open(a.log, errors="replace") as f:
        for line in f:
            m = pat.search(line)
            if m:
                latest[m.group(1)] = (m.group(2), m.group(3))
    for name, (pid, addr) in sorted(latest.items()):
        print(name, pid, addr)


def ready(a, body):
    if a.until == "primaries":
        shards = json.loads(body).get("shards", [])
        return bool(shards) and all(s.get("primary") for s in shards)
    if a.until == "leader":
        return int(json.loads(body).get("leader", "0")) != 0
    return True


def cmd_wait_http(a):
    deadline = time.time() + a.timeout
    last = "no answer"
    while time.time() < deadline:
        try:
            status, body = http(a.url, a.post, timeout=2.0)
            if status == 200 and ready(a, body):
                return
            last = f"{status} {body[:200]!r}"
        except Exception as e:  # refused, reset, timeout: not up yet
            last = str(e)
        time.sleep(0.1)
    die(f"{a.url} not ready within {a.timeout} s: {last}")


def cmd_etcd_leader(a):
    for url in a.urls:
        _, body = http(url.rstrip("/") + "/v3/maintenance/status", "{}")
        st = json.loads(body)
        if st.get("leader") and st["leader"] == st["header"]["member_id"]:
            print(url)
            return
    die("no etcd member says it is the leader")


def cmd_count_shardgate(a):
    # In slices: one answer holds at most --max-read-rows (100,000) rows.
    step, total = 1 << 20, 0
    for low in range(0, ID_SPACE, step):
        body = json.dumps({"Stud_id": {"low": low, "high": low + step - 1}})
        _, out = http(a.url.rstrip("/") + "/read", body, timeout=60)
        total += len(json.loads(out)["data"])
    print(total)


def cmd_count_etcd(a):
    body = json.dumps({"key": b64("stud/"), "range_end": b64("stud0"), "count_only": True})
    _, out = http(a.url.rstrip("/") + "/v3/kv/range", body, timeout=60)
    print(int(json.loads(out).get("count", 0)))


def cmd_measure(a):
    sides = {}
    for s in a.side:
        name, _, spec = s.partition("=")
        sides[name] = side_pids(spec)
    before = {n: cpu_ticks(p) for n, p in sides.items()}
    t0 = time.monotonic()
    child = subprocess.Popen(a.cmd, stdout=subprocess.PIPE, text=True)

    def stop(signum, _frame):
        child.kill()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.monotonic() - t0
    after = {n: cpu_ticks(p) for n, p in sides.items()}
    if a.log:
        with open(a.log, "a") as f:
            f.write(f"$ {' '.join(a.cmd)}\n{out}\n")
    else:
        sys.stderr.write(out)
    if os.waitstatus_to_exitcode(status) != 0:
        die(f"{' '.join(a.cmd)} exited with {os.waitstatus_to_exitcode(status)}")
    line = next((l for l in out.splitlines() if l.startswith("ANCHOR_JSON ")), None)
    if line is None:
        die("the load generator printed no ANCHOR_JSON line")
    w = json.loads(line[len("ANCHOR_JSON "):])
    rec = json.loads(a.record)
    secs = w["duration_us"] / 1e6
    errors = sum(w[k] for k in ("connect_errors", "read_errors", "write_errors",
                                "status_errors", "timeouts"))
    cpu = {}
    for n in sides:
        # A pid alive at both ends counts its difference; one that appeared during the run
        # counts all it used.
        cpu[n] = sum(t - before[n].get(p, 0) for p, t in after[n].items()) / CLK_TCK
    cpu["loadgen"] = usage.ru_utime + usage.ru_stime
    rec.update({
        "seconds": round(secs, 3),
        "requests": w["requests"],
        "errors": errors,
        "ok_per_s": round((w["requests"] - errors) / secs, 1),
        "p50_ms": w["p50_us"] / 1000,
        "p90_ms": w["p90_us"] / 1000,
        "p99_ms": w["p99_us"] / 1000,
        "p999_ms": w["p999_us"] / 1000,
        "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
        "cores_x_wall_s": round((os.cpu_count() or 1) * wall, 3),
    })
    with open(a.out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(f"  {rec.get('system')} x{rec.get('connections')}: {rec['ok_per_s']:.0f}/s "
          f"p50 {rec['p50_ms']:.2f} ms p99 {rec['p99_ms']:.2f} ms errors {errors} "
          f"cpu {rec['cpu_s']}", file=sys.stderr)


def cmd_dbbench(a):
    with open(a.csv) as f:
        rows = [r for r in csv.DictReader(f) if r["phase"] == "write"]
    if not rows:
        die(f"no write row in {a.csv}")
    for r in rows:
        rec = json.loads(a.record)
        rec.update({
            "connections": int(r["connections"]),
            "seconds": float(r["wall_s"]),
            "requests": int(r["rows"]),
            "errors": int(r["errors"]),
            "ok_per_s": float(r["rows_per_s"]),
            "p50_ms": float(r["p50_ms"]),
            "p99_ms": float(r["p99_ms"]),
            "cpu_s": {"all": a.cpu_s} if a.cpu_s is not None else {},
        })
        with open(a.out, "a") as f:
            f.write(json.dumps(rec) + "\n")


def cmd_wal(a):
    """The table `shardgate bench wal` prints."""
    num = r"([\d.]+)"
    pat = re.compile(r"^\| (sync_\w+) \| (\w+) \| " + r" \| ".join([num] * 4)
                     + r" \| ([\d.]+)x \| ([\d.]+)x \| (\d+) \| ([\d.]+) / ([\d.]+) \|")
    n = 0
    with open(a.log) as f, open(a.out, "a") as out:
        for line in f:
            m = pat.match(line.strip())
            if not m:
                continue
            g = m.groups()
            out.write(json.dumps({
                "section": "wal", "sync": g[0], "payload": g[1],
                "wal_per_s": float(g[2]), "wal_mb_s": float(g[3]),
                "raw_per_s": float(g[4]), "raw_mb_s": float(g[5]),
                "ratio": float(g[6]), "ratio_totals": float(g[7]), "rounds": int(g[8]),
                "ratio_low": float(g[9]), "ratio_high": float(g[10]),
            }) + "\n")
            n += 1
    if n == 0:
        die(f"no wal/raw table in {a.log}")


# ---- report ----------------------------------------------------------------------------


def load(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def med(values):
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def summary(runs):
    """The median of every figure over the runs, each taken on its own."""
    s = dict(runs[0])
    for k in ("ok_per_s", "p50_ms", "p99_ms", "seconds", "requests"):
        s[k] = med([r[k] for r in runs])
    keys = sorted(set().union(*(r.get("cpu_s", {}).keys() for r in runs)))
    s["cpu_s"] = {k: med([r["cpu_s"][k] for r in runs if k in r["cpu_s"]]) for k in keys}
    s["us_per"] = {k: med([1e6 * r["cpu_s"][k] / r["requests"] for r in runs
                           if k in r["cpu_s"] and r["requests"]]) for k in keys}
    return s


def spread(runs, key="ok_per_s", nd=0):
    v = [r[key] for r in runs]
    return f"{min(v):.{nd}f}-{max(v):.{nd}f}" if len(v) > 1 else ""


def with_spread(value, runs, key, nd):
    rng = spread(runs, key, nd)
    return f"{value:.{nd}f}" + (f" ({rng})" if rng else "")


def grouped(recs, section):
    """{(system, connections): [runs]} in first-seen order."""
    out = {}
    for r in recs:
        if r.get("section") == section:
            out.setdefault((r["system"], r["connections"]), []).append(r)
    return out


def fmt(v, nd=0):
    return f"{v:.{nd}f}"


def verdict(ok):
    return "**met**" if ok else "**missed**"


def cmd_report(a):
    recs = load(a.results)
    meta = json.loads(a.meta)
    os.makedirs(a.out, exist_ok=True)
    md, rows = [], []
    csv_head = ["section", "system", "load", "connections", "runs", "per_s", "per_s_range",
                "p50_ms", "p99_ms", "errors", "cpu_proxy_or_server_s", "cpu_backends_s",
                "cpu_loadgen_s", "run_s", "ratio", "ratio_of"]
    md.append("# Side by side: nginx, HAProxy, etcd, the raw disk")
    md.append("")
    md.append(f"- date: {meta['date']}")
    md.append(f"- machine: {meta['nproc']} cores ({meta['cpu']}), {meta['mem']}, kernel "
              f"{meta['kernel']}, {meta['fs']}, load average {meta['load']} when it started")
    md.append(f"- command: `{meta['command']}` ({meta['mode']} mode, {meta['elapsed']})")
    md.append(f"- versions: {meta['versions']}")
    md.append("- every process (the system measured, its backends and the load generator) "
              "runs on the same 2 cores, unpinned: the CPU columns say how they shared them "
              "(CPU seconds used during the measured run, from /proc/PID/stat; the load "
              "generator's from wait4)")
    md.append("")

    # ---- stage-1 routing
    g = grouped(recs, "routing")
    conns = sorted({c for (_, c) in g})
    md.append("## Stage-1 routing: GET /home to 3 node HTTP shims")
    md.append("")
    md.append(meta["routing_note"])
    md.append("")
    md.append("| connections | system | req/s | p50 ms | p99 ms | errors | CPU proxy s | "
              "CPU 3 nodes s | CPU wrk s | proxy CPU µs/req | shardgate / this |")
    md.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    targets = []
    chart_routing = []
    for c in conns:
        sg = g.get(("shardgate router", c))
        sgm = summary(sg) if sg else None
        for (system, cc), runs in g.items():
            if cc != c:
                continue
            m = summary(runs)
            ratio = ""
            if sgm and system != "shardgate router":
                ratio = f"{sgm['ok_per_s'] / m['ok_per_s']:.2f}x"
            errors = sum(r["errors"] for r in runs)
            cpu = m["cpu_s"]
            md.append(f"| {c} | {system} | {with_spread(m['ok_per_s'], runs, 'ok_per_s', 0)} "
                      f"| {m['p50_ms']:.2f} | {with_spread(m['p99_ms'], runs, 'p99_ms', 2)} | "
                      f"{errors} | {cpu.get('proxy', 0):.2f} | {cpu.get('backends', 0):.2f} | "
                      f"{cpu.get('loadgen', 0):.2f} | {m['us_per'].get('proxy', 0):.1f} | {ratio} |")
            rows.append(["routing", system, "wrk GET /home", c, len(runs), m["ok_per_s"],
                         spread(runs), m["p50_ms"], m["p99_ms"], errors, cpu.get("proxy", ""),
                         cpu.get("backends", ""), cpu.get("loadgen", ""), m["seconds"],
                         ratio.rstrip("x"), "" if not ratio else f"shardgate router / {system}"])
            chart_routing.append((f"{system} x{c}", m["ok_per_s"],
                                  f"  p50 {m['p50_ms']:.2f} / p99 {m['p99_ms']:.2f} ms"))
        ng = g.get(("nginx", c))
        if sgm and ng:
            nm = summary(ng)
            r = sgm["ok_per_s"] / nm["ok_per_s"]
            ok = r >= 1.2 and sgm["p99_ms"] <= nm["p99_ms"]
            targets.append(f"- router >= 1.2x nginx req/s with p99 no worse, {c} connections: "
                           f"{r:.2f}x, p99 {sgm['p99_ms']:.2f} vs {nm['p99_ms']:.2f} ms: "
                           f"{verdict(ok)}")
    md.append("")
    md.append(f"Every figure is the median of {meta['reps']} interleaved runs of "
              f"{meta['seconds']} s, each figure taken on its own (in brackets: the lowest and "
              "highest run); errors: all runs together. Every run's own figures are in "
              "anchors-runs.csv.")
    md.append("")

    # ---- durable replicated writes
    g = grouped(recs, "writes")
    md.append("## Durable replicated writes: 3 replicas, majority, fsync before the answer")
    md.append("")
    md.append(meta["writes_note"])
    md.append("")
    md.append("| system | load | connections | rows/s | p50 ms | p99 ms | errors | "
              "CPU servers s | CPU load generator s | server CPU µs/row | vs etcd |")
    md.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    etcd = g.get(("etcd", 64)) or next((v for (s, _), v in g.items() if s == "etcd"), None)
    em = summary(etcd) if etcd else None
    chart_writes = []
    for (system, c), runs in g.items():
        m = summary(runs)
        ratio = ""
        if em and system != "etcd":
            ratio = f"{m['ok_per_s'] / em['ok_per_s']:.2f}x"
        errors = sum(r["errors"] for r in runs)
        cpu = m["cpu_s"]
        server = cpu.get("server")
        server_s = "" if server is None else f"{server:.2f}"
        loadgen_s = f"{cpu['loadgen']:.2f}" if "loadgen" in cpu else ""
        per_row = "" if server is None else f"{m['us_per']['server']:.1f}"
        md.append(f"| {system} | {m['load']} | {c} | "
                  f"{with_spread(m['ok_per_s'], runs, 'ok_per_s', 0)} | {m['p50_ms']:.2f} | "
                  f"{with_spread(m['p99_ms'], runs, 'p99_ms', 2)} | {errors} | {server_s} | "
                  f"{loadgen_s} | {per_row} | {ratio} |")
        rows.append(["writes", system, m["load"], c, len(runs), m["ok_per_s"], spread(runs),
                     m["p50_ms"], m["p99_ms"], errors, "" if server is None else server, "",
                     cpu.get("loadgen", ""), m["seconds"], ratio.rstrip("x"),
                     "" if not ratio else f"{system} / etcd"])
        chart_writes.append((f"{system} ({m['load'].split(' ')[0]})", m["ok_per_s"],
                             f"  p50 {m['p50_ms']:.2f} / p99 {m['p99_ms']:.2f} ms"))
    sgw = g.get(("shardgate", 64))
    if em and sgw:
        r = summary(sgw)["ok_per_s"] / em["ok_per_s"]
        targets.append(f"- durable replicated writes >= 2x etcd rows/s (same load: wrk, HTTP "
                       f"JSON, 64 connections): {r:.2f}x: {verdict(r >= 2)}")
    md.append("")
    for note in meta.get("writes_checks", []):
        md.append(f"- {note}")
    md.append("")

    # ---- WAL vs the raw disk
    md.append("## The WAL vs the raw disk")
    md.append("")
    md.append(meta["wal_note"])
    md.append("")
    md.append("| sync point | payload | wal records/s | wal MB/s | raw records/s | raw MB/s | "
              "wal/raw (median round) | wal/raw (totals) | rounds | lowest / highest round |")
    md.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    chart_wal = []
    for r in (r for r in recs if r.get("section") == "wal"):
        case = f"{r['sync']} {r['payload']}"
        md.append(f"| {r['sync']} | {r['payload']} | {r['wal_per_s']:.0f} | {r['wal_mb_s']:.1f} | "
                  f"{r['raw_per_s']:.0f} | {r['raw_mb_s']:.1f} | {r['ratio']:.2f}x | "
                  f"{r['ratio_totals']:.2f}x | {r['rounds']} | {r['ratio_low']:.2f} / "
                  f"{r['ratio_high']:.2f} |")
        rows.append(["wal", "shardgate wal", case, 1, r["rounds"], r["wal_per_s"],
                     "", "", "", 0, "", "", "", "", r["ratio"],
                     "wal / raw pwrite+fdatasync (median of rounds)"])
        rows.append(["wal", "raw pwrite+fdatasync", case, 1, r["rounds"], r["raw_per_s"],
                     "", "", "", 0, "", "", "", "", "", ""])
        chart_wal.append((case, r["ratio"],
                          f"  ({r['wal_per_s']:.0f} vs {r['raw_per_s']:.0f} records/s in all)"))
        targets.append(f"- WAL >= 0.9x raw, {case}: {r['ratio']:.2f}x (median of "
                       f"{r['rounds']} rounds; totals {r['ratio_totals']:.2f}x): "
                       f"{verdict(r['ratio'] >= 0.9)}")
    md.append("")

    md.append("## Targets (ratios from this run)")
    md.append("")
    md.extend(targets)
    md.append("")
    if meta.get("mode") == "smoke":
        md.append("Smoke mode: every run is about a second long; the figures only show "
                  "that each part works, they are not measurements.")
        md.append("")
    md.append("![anchors](anchors.svg)")
    md.append("")

    with open(os.path.join(a.out, "anchors.md"), "w") as f:
        f.write("\n".join(md))
    with open(os.path.join(a.out, "anchors.csv"), "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["date"] + csv_head)
        for r in rows:
            wr.writerow([meta["date"]] + [round(x, 3) if isinstance(x, float) else x for x in r])
    with open(os.path.join(a.out, "anchors-runs.csv"), "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["date", "section", "system", "load", "connections", "run", "seconds",
                     "requests", "errors", "per_s", "p50_ms", "p90_ms", "p99_ms", "p999_ms",
                     "cpu_proxy_or_server_s", "cpu_backends_s", "cpu_loadgen_s"])
        seen = {}
        for r in recs:
            if r.get("section") not in ("routing", "writes"):
                continue
            key = (r["section"], r["system"], r["connections"])
            seen[key] = seen.get(key, 0) + 1
            cpu = r.get("cpu_s", {})
            wr.writerow([meta["date"], r["section"], r["system"], r["load"], r["connections"],
                         seen[key], r["seconds"], r["requests"], r["errors"], r["ok_per_s"],
                         r["p50_ms"], r.get("p90_ms", ""), r["p99_ms"], r.get("p999_ms", ""),
                         cpu.get("proxy", cpu.get("server", "")), cpu.get("backends", ""),
                         cpu.get("loadgen", "")])
    with open(os.path.join(a.out, "anchors.svg"), "w") as f:
        f.write(svg([("Stage-1 routing, GET /home (req/s)", chart_routing, "{:.0f}", None),
                     ("Durable replicated writes, 64 connections (rows/s)", chart_writes,
                      "{:.0f}", None),
                     ("WAL / raw pwrite+fdatasync (ratio)", chart_wal, "{:.2f}x", 0.9)],
                    f"shardgate beside its anchors, {meta['date']}, {meta['nproc']} cores"))
    print("\n".join(targets))


def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def svg(panels, title):
    """Horizontal bar charts, one panel per section, as SVG text. A panel is (heading, bars,
    value format, mark): bars are (label, value, note); mark, if any, is drawn as a dashed
    line (a target)."""
    width, label_w, bar_w, row_h = 960, 300, 400, 22
    colours = {"shardgate": "#1f77b4", "nginx": "#2ca02c", "haproxy": "#ff7f0e",
               "etcd": "#d62728", "sync": "#9467bd"}
    y = 40
    parts = [f'<text x="10" y="24" font-size="16" font-weight="bold">{esc(title)}</text>']
    for heading, bars, form, mark in panels:
        parts.append(f'<text x="10" y="{y + 16}" font-size="14" font-weight="bold">'
                     f'{esc(heading)}</text>')
        y += 26
        top = max([v for _, v, _ in bars] + [mark or 0, 1e-9])
        first = y
        for label, v, note in bars:
            colour = next((c for k, c in colours.items() if label.lower().startswith(k)),
                          "#7f7f7f")
            w = bar_w * v / top
            parts.append(f'<text x="{label_w - 6}" y="{y + 15}" font-size="12" '
                         f'text-anchor="end">{esc(label)}</text>')
            parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" '
                         f'fill="{colour}"/>')
            parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + 15}" font-size="12">'
                         f'{esc(form.format(v) + note)}</text>')
            y += row_h
        if mark:
            x = label_w + bar_w * mark / top
            parts.append(f'<line x1="{x:.1f}" y1="{first}" x2="{x:.1f}" y2="{y}" stroke="black" '
                         f'stroke-dasharray="4,3"/>')
            parts.append(f'<text x="{x + 3:.1f}" y="{first - 2}" font-size="10">target '
                         f'{mark}</text>')
        y += 16
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y}" '
            f'font-family="sans-serif">\n<rect width="100%" height="100%" fill="white"/>\n'
            + "\n".join(parts) + "\n</svg>\n")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="sub", required=True)
    s = sub.add_parser("ports")
    s.add_argument("n", type=int)
    s.set_defaults(f=cmd_ports)
    s = sub.add_parser("descendants")
    s.add_argument("pid", type=int)
    s.set_defaults(f=cmd_descendants)
    s = sub.add_parser("nodes")
    s.add_argument("log")
    s.set_defaults(f=cmd_nodes)
    s = sub.add_parser("wait-http")
    s.add_argument("url")
    s.add_argument("--post")
    s.add_argument("--until", choices=["primaries", "leader"])
    s.add_argument("--timeout", type=float, default=30)
    s.set_defaults(f=cmd_wait_http)
    s = sub.add_parser("etcd-leader")
    s.add_argument("urls", nargs="+")
    s.set_defaults(f=cmd_etcd_leader)
    s = sub.add_parser("count-shardgate")
    s.add_argument("url")
    s.set_defaults(f=cmd_count_shardgate)
    s = sub.add_parser("count-etcd")
    s.add_argument("url")
    s.set_defaults(f=cmd_count_etcd)
    s = sub.add_parser("measure")
    s.add_argument("--record", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--side", action="append", default=[])
    s.add_argument("--log", help="append the command's output here (default: stderr)")
    s.add_argument("cmd", nargs=argparse.REMAINDER)
    s.set_defaults(f=cmd_measure)
    s = sub.add_parser("dbbench")
    s.add_argument("csv")
    s.add_argument("--record", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--cpu-s", type=float)
    s.set_defaults(f=cmd_dbbench)
    s = sub.add_parser("wal")
    s.add_argument("log")
    s.add_argument("--out", required=True)
    s.set_defaults(f=cmd_wal)
    s = sub.add_parser("report")
    s.add_argument("results")
    s.add_argument("--out", required=True)
    s.add_argument("--meta", required=True)
    s.set_defaults(f=cmd_report)
    a = p.parse_args()
    if a.sub == "measure" and a.cmd[:1] == ["--"]:
        a.cmd = a.cmd[1:]
    a.f(a)


if __name__ == "__main__":
    main()
