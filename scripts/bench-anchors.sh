#!/usr/bin/env bash
# shardgate beside what its users would pick instead, measured on this machine in one run:
#
#   1. Stage-1 routing: GET /home through shardgate's router, nginx (`hash $request_id
#      consistent`) and HAProxy (`balance hdr(X-Request-Id)`, `hash-type consistent`), all
#      three in front of the same 3 node HTTP shims (those `shardgate up --servers 3`
#      starts); wrk at 64 and 256 connections.
#   2. Durable replicated writes: shardgate (6 servers, 4 shards, 3 replicas each, majority,
#      fsync before every answer) against a 3-member etcd cluster on loopback (default
#      settings: fsync on every commit); the same wrk load on both (one row per request,
#      HTTP/JSON, 64 connections), plus `shardgate bench db` through both router doors.
#   3. The WAL against the raw disk: `shardgate bench wal` (appends + sync against pwrite
#      into a preallocated, zeroed file + fdatasync, same bytes, same sync points, the two
#      taking turns every 100 ms).
#
#   scripts/bench-anchors.sh                 # full run (~6 min here), writes docs/bench/
#   scripts/bench-anchors.sh --smoke         # every part for about a second, ~30 s (CI)
#   scripts/bench-anchors.sh --out DIR       # write the results elsewhere
#
# Writes anchors.md (tables, ratios, targets), anchors.csv (the same figures),
# anchors-runs.csv (every run's own) and anchors.svg (bar charts) into --out
# (default docs/bench; with --smoke, target/bench-anchors-smoke). Exits non-zero if any
# part fails or any request errs; a missed target is reported, not an error.
#
# Anchors come from Debian's packages (nginx-light or nginx, haproxy, etcd-server,
# etcd-client, wrk), installed when missing (as root; no service is started, and any the
# install started anyway is stopped). Each anchor runs as a child of this script with its
# own configuration and data in a temp dir, bound to 127.0.0.1 only; every process the
# script started is stopped on exit, Ctrl-C or SIGTERM. Everything shares the machine's
# cores (the load generator too): the tables give each side's CPU time.
#
# Environment: SHARDGATE_BIN (default target/release/shardgate, built if missing),
# ANCHORS_SECONDS, ANCHORS_REPS (override the run length and the number of runs),
# ANCHORS_KEEP_TMP=1 (keep the temp dir with every log and configuration).
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=full
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) MODE=smoke ;;
    --out) OUT="$2"; shift ;;
    --out=*) OUT="${1#--out=}" ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-anchors: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$MODE" = smoke ]; then
  SECS=${ANCHORS_SECONDS:-1}; REPS=${ANCHORS_REPS:-1}; WARMUP=0; DB_ROWS=500
  WAL_SECONDS=0.6; WAL_SLICE_MS=50
  OUT=${OUT:-target/bench-anchors-smoke}
else
  SECS=${ANCHORS_SECONDS:-10}; REPS=${ANCHORS_REPS:-3}; WARMUP=1; DB_ROWS=10000
  WAL_SECONDS=10; WAL_SLICE_MS=100
  OUT=${OUT:-docs/bench}
fi
THREADS=2          # wrk threads: one per core of this 2-core machine
ROUTING_CONNS=(64 256)
WRITE_CONNS=64
COMMAND="scripts/bench-anchors.sh${*:+ $*}"
[ "$MODE" = smoke ] && COMMAND="scripts/bench-anchors.sh --smoke"
SG=${SHARDGATE_BIN:-target/release/shardgate}
HELPER=(python3 scripts/bench_anchors.py)
LUA=scripts/bench-anchors
T0=$(date +%s)
LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)

log() { echo "bench-anchors: $(date +%T) $*" >&2; }
die() { log "$*"; exit 1; }

# ---- processes we started: stopped on any exit ------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/bench-anchors.XXXXXX")
chmod 755 "$TMP"
PIDS=()            # long-running children (anchors, clusters), in start order
CHILD=""           # the foreground step running now (a measurement, a bench)
POLICY_RC_CREATED=""

# Whether PID runs (a child that exited but was not waited for yet is a zombie: not running).
alive() {
  local state
  [ -n "$1" ] && state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1) && [ "$state" != Z ]
}

# SIGTERM to every PID given (`shardgate up` stops its nodes itself, nginx its workers), then
# up to 10 s for all of them to exit, then SIGKILL to whatever is left of them and of the
# descendants they had.
stop_pids() {
  local p i any kids=""
  for p in "$@"; do
    alive "$p" && kids="$kids $("${HELPER[@]}" descendants "$p" 2>/dev/null | tr '\n' ' ')"
  done
  for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
  for i in $(seq 100); do
    any=""
    for p in "$@"; do alive "$p" && any=1; done
    [ -z "$any" ] && break
    sleep 0.1
  done
  for p in "$@" $kids; do alive "$p" && kill -KILL "$p" 2>/dev/null || true; done
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
  return 0
}

# Stops the given PIDs and forgets them.
stop() {
  local keep=() p q gone
  stop_pids "$@"
  for p in "${PIDS[@]}"; do
    gone=""
    for q in "$@"; do [ "$p" = "$q" ] && gone=1; done
    [ -n "$gone" ] || keep+=("$p")
  done
  PIDS=("${keep[@]}")
}

cleanup() {
  local rc=$? i all=()
  trap - EXIT INT TERM
  [ -n "$CHILD" ] && all+=("$CHILD")
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do all+=("${PIDS[i]}"); done
  [ ${#all[@]} -gt 0 ] && stop_pids "${all[@]}"
  [ -n "$POLICY_RC_CREATED" ] && rm -f /usr/sbin/policy-rc.d
  if [ "${ANCHORS_KEEP_TMP:-0}" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs a step in the background and waits for it, so a signal is handled at once (bash
# runs traps only between foreground commands) and cleanup can stop the step.
step() {
  "$@" &
  CHILD=$!
  local rc=0
  wait "$CHILD" || rc=$?
  CHILD=""
  return $rc
}

# ---- 0. the anchors ----------------------------------------------------------------------
install_anchors() {
  local missing=() before after p pkg
  command -v nginx >/dev/null || missing+=(nginx)
  command -v haproxy >/dev/null || missing+=(haproxy)
  command -v etcd >/dev/null || missing+=(etcd-server)
  command -v etcdctl >/dev/null || missing+=(etcd-client)
  command -v wrk >/dev/null || missing+=(wrk)
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "missing ${missing[*]}: run as root to install them (apt-get)"
  log "installing ${missing[*]} from Debian's packages"
  apt-get update -qq
  pkg=()
  for p in "${missing[@]}"; do
    if [ "$p" = nginx ]; then
      # The light build is enough (proxy, upstream hash, keepalive); newer Debian has only nginx.
      if apt-cache policy nginx-light 2>/dev/null | grep -q 'Candidate: [0-9]'; then
        pkg+=(nginx-light)
      else
        pkg+=(nginx)
      fi
    else
      pkg+=("$p")
    fi
  done
  # No service may start on install (nginx's default site would listen on every address).
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    POLICY_RC_CREATED=1
  fi
  before=$(pgrep -x 'nginx|haproxy|etcd' || true)
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkg[@]}" >&2
  if [ -n "$POLICY_RC_CREATED" ]; then rm -f /usr/sbin/policy-rc.d; POLICY_RC_CREATED=""; fi
  # Whatever the install started all the same is stopped (by pid: only those it started).
  after=$(pgrep -x 'nginx|haproxy|etcd' || true)
  for p in $after; do
    if ! grep -qx "$p" <<<"$before"; then
      log "stopping pid $p, started by the package install"
      kill -TERM "$p" 2>/dev/null || true
    fi
  done
}

# ---- helpers -----------------------------------------------------------------------------
wait_line() { # FILE PATTERN SECONDS: waits until FILE has a line matching PATTERN
  local i
  for i in $(seq $(($3 * 10))); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# Starts `shardgate up ARGS...` with its data and logs under $TMP/NAME; sets UP_PID and
# UP_HTTP (http://ADDR of its router).
start_up() {
  local name=$1; shift
  mkdir -p "$TMP/$name"
  RUST_LOG="warn,lb::spawner::process=debug" "$SG" up --http 127.0.0.1:0 --listen 127.0.0.1:0 \
    --data-dir "$TMP/$name/data" "$@" >"$TMP/$name/up.out" 2>"$TMP/$name/up.log" &
  UP_PID=$!
  PIDS+=("$UP_PID")
  local i
  for i in $(seq 600); do
    grep -q 'shardgate up listening' "$TMP/$name/up.out" && break
    alive "$UP_PID" && [ "$i" -lt 600 ] ||
      { tail -20 "$TMP/$name/up.log" >&2; die "shardgate up ($name) did not start"; }
    sleep 0.1
  done
  UP_HTTP="http://$(grep -o 'http=[^ ]*' "$TMP/$name/up.out" | head -1 | cut -d= -f2)"
}

# One measured wrk run: measure SECTION SYSTEM CONNS URL SCRIPT [wrk script args] with the
# CPU sides in SIDES (array of NAME=PIDS).
measure() {
  local section=$1 system=$2 conns=$3 url=$4 script=$5 secs=$6; shift 6
  local record
  record=$(printf '{"section":"%s","system":"%s","connections":%d,"load":"%s"}' \
    "$section" "$system" "$conns" "$LOAD_NAME")
  local sides=() s
  for s in "${SIDES[@]}"; do sides+=(--side "$s"); done
  step "${HELPER[@]}" measure --record "$record" --out "$TMP/results.jsonl" --log "$TMP/wrk.log" \
    "${sides[@]}" -- \
    wrk -t"$THREADS" -c"$conns" -d"${secs}s" --timeout 10s -s "$script" "$url" "$@"
}

lua() { # NAME PARTS...: concatenates scripts/bench-anchors/PARTS into $TMP/NAME.lua
  local name=$1; shift
  local p
  for p in "$@"; do cat "$LUA/$p"; done >"$TMP/$name.lua"
  echo "$TMP/$name.lua"
}

# ---- start -------------------------------------------------------------------------------
install_anchors
INSTALL_S=$(( $(date +%s) - T0 ))
for t in nginx haproxy etcd etcdctl wrk python3; do
  command -v "$t" >/dev/null || die "$t not found after the install"
done
if [ ! -x "$SG" ]; then
  log "building $SG"
  cargo build --release --bin shardgate >&2
fi
# A copy: a rebuild during the run must not change what is measured (`up` starts its nodes
# from its own executable).
cp "$SG" "$TMP/shardgate"
SG=$TMP/shardgate
: >"$TMP/results.jsonl"
log "$MODE run: ${SECS} s per run, $REPS run(s) each, output to $OUT; temp dir $TMP"

# ---- 1. stage-1 routing ------------------------------------------------------------------
log "stage-1 routing: shardgate up --servers 3, nginx and HAProxy in front of its 3 node shims"
start_up stage1 --servers 3
ROUTER=$UP_HTTP
ROUTING_UP=$UP_PID
wait_line "$TMP/stage1/up.log" 'node started node=Server3' 30 || die "no node Server3 in up's log"
step "${HELPER[@]}" wait-http "$ROUTER/home" --timeout 30
"${HELPER[@]}" nodes "$TMP/stage1/up.log" >"$TMP/stage1/nodes"
[ "$(wc -l <"$TMP/stage1/nodes")" = 3 ] || die "expected 3 nodes: $(cat "$TMP/stage1/nodes")"
NODE_PIDS=$(cut -d' ' -f2 "$TMP/stage1/nodes" | paste -sd,)
mapfile -t NODE_ADDRS < <(cut -d' ' -f3 "$TMP/stage1/nodes")
read -r NGINX_PORT HAPROXY_PORT < <("${HELPER[@]}" ports 2 | paste -sd' ')

mkdir -p "$TMP/nginx"
{
  echo "worker_processes 2;"
  echo "pid $TMP/nginx/nginx.pid;"
  echo "error_log $TMP/nginx/error.log warn;"
  echo "events { worker_connections 4096; }"
  echo "http {"
  echo "  access_log off;"
  for d in client_body proxy fastcgi uwsgi scgi; do echo "  ${d}_temp_path $TMP/nginx/${d}_temp;"; done
  echo "  keepalive_requests 1000000;"
  echo "  keepalive_timeout 75s;"
  echo "  upstream shims {"
  echo "    hash \$request_id consistent;"
  for a in "${NODE_ADDRS[@]}"; do echo "    server $a;"; done
  echo "    keepalive 128;"
  echo "    keepalive_requests 1000000;"
  echo "  }"
  echo "  server {"
  echo "    listen 127.0.0.1:$NGINX_PORT;"
  echo "    location / {"
  echo "      proxy_pass http://shims;"
  echo "      proxy_http_version 1.1;"
  echo "      proxy_set_header Connection \"\";"
  echo "    }"
  echo "  }"
  echo "}"
} >"$TMP/nginx/nginx.conf"
nginx -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" -g 'daemon off;' \
  2>>"$TMP/nginx/error.log" &
NGINX_PID=$!
PIDS+=("$NGINX_PID")

mkdir -p "$TMP/haproxy"
{
  echo "global"
  echo "  nbthread 2"
  echo "  maxconn 4096"
  echo "defaults"
  echo "  mode http"
  echo "  maxconn 4096"
  echo "  timeout connect 5s"
  echo "  timeout client 30s"
  echo "  timeout server 30s"
  echo "  option http-keep-alive"
  echo "  http-reuse always"
  echo "frontend anchors"
  echo "  bind 127.0.0.1:$HAPROXY_PORT"
  echo "  http-request set-header X-Request-Id %[rand]"
  echo "  default_backend shims"
  echo "backend shims"
  echo "  balance hdr(X-Request-Id)"
  echo "  hash-type consistent"
  i=0
  for a in "${NODE_ADDRS[@]}"; do i=$((i + 1)); echo "  server s$i $a"; done
} >"$TMP/haproxy/haproxy.cfg"
haproxy -db -f "$TMP/haproxy/haproxy.cfg" >"$TMP/haproxy/haproxy.log" 2>&1 &
HAPROXY_PID=$!
PIDS+=("$HAPROXY_PID")

NGINX_URL="http://127.0.0.1:$NGINX_PORT"
HAPROXY_URL="http://127.0.0.1:$HAPROXY_PORT"
step "${HELPER[@]}" wait-http "$NGINX_URL/home" --timeout 20 ||
  { cat "$TMP/nginx/error.log" >&2; die "nginx did not answer"; }
step "${HELPER[@]}" wait-http "$HAPROXY_URL/home" --timeout 20 ||
  { cat "$TMP/haproxy/haproxy.log" >&2; die "haproxy did not answer"; }

GET_LUA=$(lua get done.lua)
LOAD_NAME="wrk GET /home"
for rep in $(seq "$REPS"); do
  for c in "${ROUTING_CONNS[@]}"; do
    for sys in "shardgate router" nginx haproxy; do
      case "$sys" in
        "shardgate router") url=$ROUTER; proxy=$ROUTING_UP ;;
        nginx) url=$NGINX_URL; proxy="$NGINX_PID+" ;;
        haproxy) url=$HAPROXY_URL; proxy=$HAPROXY_PID ;;
      esac
      SIDES=("proxy=$proxy" "backends=$NODE_PIDS")
      if [ "$WARMUP" -gt 0 ]; then
        step wrk -t"$THREADS" -c"$c" -d"${WARMUP}s" "$url/home" >/dev/null
      fi
      log "routing run $rep/$REPS: $sys, $c connections"
      measure routing "$sys" "$c" "$url/home" "$GET_LUA" "$SECS"
    done
  done
done
stop "$HAPROXY_PID" "$NGINX_PID" "$ROUTING_UP"

# ---- 2. durable replicated writes --------------------------------------------------------
# The contract's default layout (6 servers, 4 shards, 3 replicas each, the same placement)
# with shards of 2^24 ids instead of 4096: a run writes every id once (Stud_ids are unique),
# and 4 x 4096 ids would run out within two seconds.
log "durable writes: shardgate up (6 servers, 4 shards x 3 replicas) and a 3-member etcd cluster"
INIT=$(cat <<'EOF'
{"N": 6,
 "schema": {"columns": ["Stud_id", "Stud_name", "Stud_marks"], "dtypes": ["Number", "String", "String"]},
 "shards": [{"Stud_id_low": 0, "Shard_id": "sh1", "Shard_size": 16777216},
            {"Stud_id_low": 16777216, "Shard_id": "sh2", "Shard_size": 16777216},
            {"Stud_id_low": 33554432, "Shard_id": "sh3", "Shard_size": 16777216},
            {"Stud_id_low": 50331648, "Shard_id": "sh4", "Shard_size": 16777216}],
 "servers": {"Server0": ["sh1", "sh2"], "Server1": ["sh3", "sh4"], "Server3": ["sh1", "sh3"],
             "Server4": ["sh4", "sh2"], "Server5": ["sh1", "sh4"], "Server6": ["sh3", "sh2"]}}
EOF
)
start_up db --init "$INIT"
DB_ROUTER=$UP_HTTP
DB_UP=$UP_PID
step "${HELPER[@]}" wait-http "$DB_ROUTER/status" --until primaries --timeout 60

mapfile -t EP < <("${HELPER[@]}" ports 6)
CLUSTER="m1=http://127.0.0.1:${EP[3]},m2=http://127.0.0.1:${EP[4]},m3=http://127.0.0.1:${EP[5]}"
ETCD_PIDS=()
ETCD_URLS=()
for i in 1 2 3; do
  client=${EP[$((i - 1))]}
  peer=${EP[$((i + 2))]}
  mkdir -p "$TMP/etcd/m$i"
  etcd --name "m$i" --data-dir "$TMP/etcd/m$i/data" \
    --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "$CLUSTER" --initial-cluster-token bench-anchors --initial-cluster-state new \
    --logger zap --log-outputs stderr >"$TMP/etcd/m$i/etcd.log" 2>&1 &
  ETCD_PIDS+=($!)
  PIDS+=($!)
  ETCD_URLS+=("http://127.0.0.1:$client")
done
step "${HELPER[@]}" wait-http "${ETCD_URLS[0]}/v3/maintenance/status" --post '{}' --until leader \
  --timeout 30 || { tail -5 "$TMP"/etcd/m*/etcd.log >&2; die "etcd elected no leader"; }
ETCD_LEADER=$("${HELPER[@]}" etcd-leader "${ETCD_URLS[@]}")
ETCD_SIDE=$(IFS=,; echo "${ETCD_PIDS[*]}")

SG_LUA=$(lua write_shardgate done.lua ids.lua write_shardgate.lua)
ETCD_LUA=$(lua put_etcd done.lua ids.lua put_etcd.lua)
run_index=0
for rep in $(seq "$REPS"); do
  for sys in shardgate etcd; do
    if [ "$sys" = shardgate ]; then
      url=$DB_ROUTER; script=$SG_LUA; SIDES=("server=$DB_UP+")
      LOAD_NAME="wrk POST /write, 1 row"
    else
      url=$ETCD_LEADER; script=$ETCD_LUA; SIDES=("server=$ETCD_SIDE")
      LOAD_NAME="wrk POST /v3/kv/put, 1 key"
    fi
    if [ "$WARMUP" -gt 0 ]; then
      measure warmup "$sys" "$WRITE_CONNS" "$url" "$script" "$WARMUP" -- "$THREADS" "$run_index"
      run_index=$((run_index + 1))
    fi
    log "write run $rep/$REPS: $sys, $WRITE_CONNS connections"
    measure writes "$sys" "$WRITE_CONNS" "$url" "$script" "$SECS" -- "$THREADS" "$run_index"
    run_index=$((run_index + 1))
  done
done

# Every acknowledged row must be there (more may be: wrk stops without waiting for the
# requests in flight, which the servers still complete).
acked() {
  python3 - "$TMP/results.jsonl" "$1" <<'EOF'
import json, sys
print(sum(r["requests"] - r["errors"] for r in map(json.loads, open(sys.argv[1]))
          if r.get("system") == sys.argv[2] and r["section"] in ("writes", "warmup")))
EOF
}
SG_ACKED=$(acked shardgate); SG_STORED=$("${HELPER[@]}" count-shardgate "$DB_ROUTER")
ETCD_ACKED=$(acked etcd); ETCD_STORED=$("${HELPER[@]}" count-etcd "$ETCD_LEADER")
log "rows: shardgate acknowledged $SG_ACKED, stores $SG_STORED; etcd acknowledged $ETCD_ACKED, stores $ETCD_STORED"
[ "$SG_STORED" -ge "$SG_ACKED" ] || die "shardgate stores fewer rows ($SG_STORED) than it acknowledged ($SG_ACKED)"
[ "$ETCD_STORED" -ge "$ETCD_ACKED" ] || die "etcd stores fewer keys ($ETCD_STORED) than it acknowledged ($ETCD_ACKED)"
stop "${ETCD_PIDS[@]}" "$DB_UP"

# The Rust client through both router doors, on the contract's own default configuration.
for door in binary http; do
  log "shardgate bench db --door $door ($DB_ROWS rows, $WRITE_CONNS in flight)"
  step "$SG" bench db --rows "$DB_ROWS" --connections "$WRITE_CONNS" --configs a1 --door "$door" \
    --out "$TMP/benchdb-$door" >"$TMP/benchdb-$door.log" 2>&1 ||
    { tail -20 "$TMP/benchdb-$door.log" >&2; die "shardgate bench db --door $door failed"; }
  "${HELPER[@]}" dbbench "$TMP/benchdb-$door/results.csv" --out "$TMP/results.jsonl" \
    --record "{\"section\":\"writes\",\"system\":\"shardgate, $door door\",\"load\":\"bench db, client::Db, $DB_ROWS rows\"}"
done

# ---- 3. the WAL against the raw disk -----------------------------------------------------
# `shardgate bench wal`: the work of the wal crate's criterion bench (appends + sync every
# record or every 64 against pwrite + fdatasync of the same bytes into a zeroed file), but
# the two take turns every WAL_SLICE_MS, so a drift of the shared disk hits both alike.
log "wal: appends + sync against pwrite + fdatasync, taking turns every $WAL_SLICE_MS ms"
mkdir -p "$TMP/wal"
step "$SG" bench wal --seconds "$WAL_SECONDS" --slice-ms "$WAL_SLICE_MS" --dir "$TMP/wal" \
  >"$TMP/wal.log" 2>&1 || { tail -20 "$TMP/wal.log" >&2; die "shardgate bench wal failed"; }
"${HELPER[@]}" wal "$TMP/wal.log" --out "$TMP/results.jsonl"

# ---- report ------------------------------------------------------------------------------
ELAPSED=$(( $(date +%s) - T0 ))
versions="$(nginx -v 2>&1 | sed 's/^nginx version: //'), $(haproxy -v | head -1 | cut -d' ' -f1-3), \
etcd $(etcd --version | head -1 | awk '{print $3}'), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), \
$("$SG" --version)"
errors=$(python3 -c 'import json,sys
print(sum(r.get("errors", 0) for r in map(json.loads, open(sys.argv[1])) if r.get("section") != "wal"))' "$TMP/results.jsonl")
FS="$(df -T "$TMP" | awk 'NR == 2 {print $2}') on $(df "$TMP" | awk 'NR == 2 {print $1}')"
META=$(python3 - "$MODE" "$COMMAND" "$ELAPSED" "$LOAD_AT_START" "$versions" "$REPS" "$SECS" \
  "$SG_ACKED" "$SG_STORED" "$ETCD_ACKED" "$ETCD_STORED" "$DB_ROWS" "$INSTALL_S" "$FS" \
  "$WAL_SECONDS" "$WAL_SLICE_MS" <<'EOF'
import datetime, json, os, platform, sys
(mode, command, elapsed, load, versions, reps, secs, sga, sgs, eta, ets, rows, install_s, fs,
 wal_secs, wal_slice) = sys.argv[1:]
took = f"{int(elapsed) // 60} min {int(elapsed) % 60} s"
if int(install_s) > 1:
    took += f" (installing the anchors {install_s} s)"
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
mem = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal"))
print(json.dumps({
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "nproc": os.cpu_count(), "cpu": cpu, "mem": f"{mem / 2**20:.0f} GiB",
    "kernel": platform.release(), "load": load, "command": command, "mode": mode,
    "elapsed": took, "versions": versions, "fs": fs,
    "reps": int(reps), "seconds": int(secs),
    "routing_note": (
        "`shardgate up --servers 3` (router and shard manager in one process, the default "
        "`--hash assignment` ring, the router forwarding over its binary protocol) and, in "
        "front of the same three node processes' HTTP shims, nginx (`hash $request_id "
        "consistent`, 2 workers, keepalive 128 to the upstreams, keepalive_requests 1000000, "
        "access log off) and HAProxy (`balance hdr(X-Request-Id)` with the header set to "
        "`%[rand]`, `hash-type consistent`, 2 threads, `http-reuse always`). Load: wrk, 2 "
        "threads, keep-alive connections, GET /home. CPU proxy = the router's process (with "
        "the idle manager) / nginx's master and workers / HAProxy; CPU 3 nodes = the node "
        "processes answering (the router reaches them over the binary protocol, nginx and "
        "HAProxy over HTTP/1.1: hence the difference in that column); CPU wrk = the load "
        "generator."),
    "writes_note": (
        "shardgate: `shardgate up --init` with the contract's default layout (6 servers, 4 "
        "shards, 3 replicas each, majority commit, every write fsynced before the answer) "
        "but shards of 2^24 ids, so that every write has a fresh Stud_id (the contract's "
        "4 x 4096 ids would run out in two seconds; a duplicate id is refused). etcd: 3 "
        "members on loopback, default settings (fsync of the WAL before every commit, "
        "snapshot every 100,000 entries), wrk sent to the leader (its best case: no hop "
        "through a follower) through etcd's HTTP/JSON gRPC gateway. Same load for both: "
        "wrk, 2 threads, 64 keep-alive connections, one row per request, distinct ids "
        "spread over every shard (`scripts/bench-anchors/ids.lua`); shardgate gets "
        "`POST /write {\"data\": [row]}`, etcd `POST /v3/kv/put` with key `stud/<id>` and the "
        "same row JSON as value (50-60 bytes). CPU servers = `up` (router + manager) and its 6 "
        "nodes / the 3 etcd members. The `bench db` rows are `shardgate bench db` on the "
        "contract's exact default configuration (4096-id shards, fresh cluster, "
        f"{rows} rows, Rust client with 64 calls in flight, every row read back), CPU not "
        "separated."),
    "writes_checks": [
        f"after the wrk runs (warm-ups included) shardgate stored {sgs} rows for {sga} "
        f"acknowledged writes and etcd {ets} keys for {eta} acknowledged puts (more stored "
        "than acknowledged: wrk stops without waiting for the requests in flight)"],
    "wal_note": (
        "`shardgate bench wal`: `Wal::append` + `Wal::sync` every record or every 64 (purging "
        "as a checkpointing user would), against the same bytes (record header included) "
        "`pwrite`n into a preallocated, zeroed 256 MiB file + `fdatasync` at the same points; "
        f"the two take turns every {wal_slice} ms for {wal_secs} s per case (the log first in "
        "even rounds, the raw file first in odd ones), on the file system every other part of "
        f"this run wrote to as well ({fs}). The headline ratio is the median of the "
        "per-round ratios; the totals' ratio and the extreme rounds show how much the shared "
        "disk drifted. (`cargo bench -p shardgate-wal` measures the same work one side after "
        "the other: on this shared disk its ratios ranged from 0.3x to 2.5x between runs.)"),
}))
EOF
)
"${HELPER[@]}" report "$TMP/results.jsonl" --out "$OUT" --meta "$META"
log "wrote $OUT/anchors.md, anchors.csv, anchors-runs.csv, anchors.svg in $ELAPSED s"
[ "$errors" = 0 ] || die "$errors requests failed (see $OUT/anchors.md)"
