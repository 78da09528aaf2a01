//! Fault injection, scenarios 4 and 5: a shard replica's disk goes wrong.
//!
//! Three replicas of one shard on loopback, driven the way the shard manager drives them
//! (adopt, promote, follow). Segments are small (16 KiB) and checkpoints off, so a replica's
//! log has sealed segments after a few hundred writes.
//!
//! Scenario 4, damaged logs on a stopped secondary. The secondary is stopped the way a
//! `kill -9` stops it: its data directory is copied while it is idle (the files as the
//! kernel holds them, which is what a killed process leaves) and it restarts from the copy.
//! - A torn last record, flipped bytes in the last three records, a zeroed 4 KiB page over
//!   the last records: the replica starts, its log ends just before the damage, it rejoins
//!   (adopt + follow, as the manager does with a respawned node) and catches up: every
//!   replica holds the same rows and log end, every acknowledged write among them.
//! - A flipped byte in the middle of a sealed segment: the replica does not start, with an
//!   error naming the segment file and the offset; the shard keeps taking writes and serving
//!   reads from the other two; once the operator wipes the replica it comes back by snapshot.
//!
//! Scenario 5 (`--features failpoints`; CI runs `--all-features`): fail points on the
//! primary's log. Fail points are process-wide, so the primary runs in this process and the
//! two secondaries in child processes (this test binary run again as `child_node`).
//! - Disk full when a segment is created (ENOSPC), and a write torn half way: the write is
//!   refused with a 5xx, it is on no replica, and once the fault is gone the next write (and
//!   a retry of the refused one) succeeds without a restart.
//! - A failed fsync: the primary's log is poisoned; the write in flight is acknowledged only
//!   if a majority holds it, later writes are refused, nothing is half-applied; after the
//!   fault is cleared a new primary is elected, the old one restarts, cuts what it alone
//!   has and catches up, and the shard takes writes again.

// The guard that runs these tests one at a time is held for a whole test, across awaits on
// the test's own runtime: that is its purpose.
#![allow(clippy::await_holding_lock)]

mod common;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use client::{CallError, Connection};
use node::{NodeConfig, NodeServer, ShardOptions};
use protocol::{
    AdoptReq, ConfigReq, CopyReq, FollowReq, PromoteReq, Quorum, ReadReq, Replica, ReplicaInfo,
    ReplicaStatusReq, Request, Response, Row, Schema, ShardSpec, Value, WriteReq,
};

const SHARD: &str = "sh1";
/// Segment size of the in-process replicas: a sealed segment every few dozen writes.
const SEGMENT: usize = 16 * 1024;
/// Bytes of a segment header and of a record header (wal/src/format.rs).
const SEGMENT_HEADER_LEN: usize = 64;
const RECORD_HEADER_LEN: usize = 25;
/// Environment variable that makes `child_node` run a node instead of returning.
const CHILD_ENV: &str = "SHARDGATE_FAULT_DISK_CHILD";

/// Every test here does log IO, and scenario 5 arms process-wide fail points: one test at a
/// time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn small_segments() -> ShardOptions {
    ShardOptions {
        wal: wal::Options {
            segment_size: SEGMENT,
            prepare_spare_segments: false,
            ..Default::default()
        },
        // No checkpoints: sealed segments stay (a checkpoint would purge them).
        checkpoint_segments: 100_000,
        ..ShardOptions::default()
    }
}

fn row(k: i64) -> Row {
    // A long name, so that segments fill after a few dozen writes.
    Row { key: k, values: vec![Value::Int(k), Value::Str(format!("{k:0>120}")), Value::Int(k % 7)] }
}

// ---------------------------------------------------------------------------------------
// Replicas: in this process (restartable on the same address) or in a child process
// ---------------------------------------------------------------------------------------

// Child replicas are only used by the fail-point tests.
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
enum Host {
    InProcess(Option<NodeServer>),
    Child(Child),
}

struct Member {
    name: String,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    opts: ShardOptions,
    host: Host,
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Host::Child(c) = &mut self.host {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn node_config(name: &str, dir: &Path, listen: SocketAddr, opts: ShardOptions) -> NodeConfig {
    NodeConfig {
        name: name.to_string(),
        listen,
        http: None,
        data_dir: dir.to_path_buf(),
        shard: opts,
    }
}

impl Member {
    async fn in_process(name: &str, opts: ShardOptions) -> Member {
        let dir = tempfile::tempdir().unwrap();
        let cfg = node_config(name, dir.path(), "127.0.0.1:0".parse().unwrap(), opts.clone());
        let server = NodeServer::start(cfg).await.unwrap();
        let addr = server.binary_addr();
        Member { name: name.into(), dir, addr, opts, host: Host::InProcess(Some(server)) }
    }

    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    /// This test binary again, running only `child_node`, which starts a node with the
    /// default options and prints its address; it stops when its stdin closes.
    fn child(name: &str) -> Member {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["child_node", "--exact", "--nocapture", "--test-threads", "1"])
            .env(CHILD_ENV, format!("{name}\n{}", dir.path().display()))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut addr = None;
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            // (libtest may have printed "test child_node ... " on the same line first.)
            if let Some((_, a)) = line.split_once("child-node listening binary=") {
                addr = Some(a.trim().parse().unwrap());
                break;
            }
        }
        let addr = addr.expect("the child node did not start");
        Member {
            name: name.into(),
            dir,
            addr,
            opts: ShardOptions::default(),
            host: Host::Child(child),
        }
    }

    async fn stop(&mut self) {
        if let Host::InProcess(s) = &mut self.host {
            if let Some(s) = s.take() {
                s.shutdown().await;
            }
        }
    }

    async fn try_start(&mut self) -> Result<(), node::Error> {
        let cfg = node_config(&self.name, self.dir.path(), self.addr, self.opts.clone());
        let server = NodeServer::start(cfg).await?;
        self.host = Host::InProcess(Some(server));
        Ok(())
    }

    /// Stops the replica as `kill -9` would: the data directory as it is now becomes the
    /// replica's (the stopped server's own final checkpoint goes with the old directory).
    async fn crash(&mut self) {
        let image = tempfile::tempdir().unwrap();
        copy_dir(self.dir.path(), image.path());
        self.stop().await;
        self.dir = image;
    }

    fn replica(&self) -> Replica {
        Replica { name: self.name.clone(), addr: self.addr.to_string() }
    }

    async fn call(&self, req: Request) -> Result<Response, CallError> {
        let c = Connection::connect(self.addr, "test-manager")
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.name));
        c.call_with_timeout(req, Some(Duration::from_secs(10))).await
    }

    async fn info(&self) -> ReplicaInfo {
        match self.call(Request::ReplicaStatus(ReplicaStatusReq { shard: SHARD.into() })).await {
            Ok(Response::Replica(i)) => i,
            other => panic!("status of {}: {other:?}", self.name),
        }
    }

    async fn rows(&self) -> Vec<Row> {
        match self.call(Request::Copy(CopyReq { shards: vec![SHARD.into()] })).await {
            Ok(Response::Copy { mut shards }) => shards.pop().unwrap().1,
            other => panic!("copy of {}: {other:?}", self.name),
        }
    }

    async fn write(&self, keys: &[i64]) -> Result<Response, CallError> {
        let rows = keys.iter().map(|&k| row(k)).collect();
        self.call(Request::Write(WriteReq { shard: SHARD.into(), curr_idx: None, rows })).await
    }

    fn wal_dir(&self) -> PathBuf {
        self.dir.path().join("shards").join(SHARD).join("wal")
    }
}

/// The child side of [`Member::child`].
#[test]
fn child_node() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let (name, dir) = spec.split_once('\n').unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cfg = node_config(
            name,
            Path::new(dir),
            "127.0.0.1:0".parse().unwrap(),
            ShardOptions::default(),
        );
        let server = NodeServer::start(cfg).await.unwrap();
        println!("child-node listening binary={}", server.binary_addr());
        use std::io::Write;
        std::io::stdout().flush().unwrap();
        // Until the parent closes stdin (or dies).
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {
                sink.clear();
            }
        })
        .await;
        server.shutdown().await;
    });
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

async fn configure(members: &[&Member]) {
    for m in members {
        let r = m
            .call(Request::Config(ConfigReq {
                schema: Schema::student_default(),
                shards: vec![ShardSpec::with_range(SHARD, 0, 1 << 40)],
            }))
            .await;
        assert!(matches!(r, Ok(Response::Configured { .. })), "config of {}: {r:?}", m.name);
    }
}

/// An election as the manager runs it: `live` adopt `epoch`, the largest log among them is
/// promoted with every member a voter, the others follow. Returns the primary's index.
async fn elect(members: &[&Member], live: &[usize], epoch: u64) -> usize {
    let mut best: Option<(u64, u64, usize)> = None;
    for &i in live {
        match members[i].call(Request::Adopt(AdoptReq { shard: SHARD.into(), epoch })).await {
            Ok(Response::Adopted { last_epoch, last_lsn, .. }) => {
                if best.is_none_or(|b| (last_epoch, last_lsn) > (b.0, b.1)) {
                    best = Some((last_epoch, last_lsn, i));
                }
            }
            other => panic!("adopt on {}: {other:?}", members[i].name),
        }
    }
    let p = best.unwrap().2;
    let r = members[p]
        .call(Request::Promote(PromoteReq {
            shard: SHARD.into(),
            epoch,
            voters: members.iter().map(|m| m.replica()).collect(),
            learners: vec![],
            quorum: Quorum::Majority,
        }))
        .await;
    assert!(matches!(r, Ok(Response::Replica(_))), "promote: {r:?}");
    for &i in live.iter().filter(|&&i| i != p) {
        rejoin(members[i], members[p], epoch).await;
    }
    p
}

/// What the manager does with a respawned replica: adopt the current epoch, follow.
async fn rejoin(m: &Member, primary: &Member, epoch: u64) {
    let r = m.call(Request::Adopt(AdoptReq { shard: SHARD.into(), epoch })).await;
    assert!(matches!(r, Ok(Response::Adopted { .. })), "adopt on {}: {r:?}", m.name);
    let r = m
        .call(Request::Follow(FollowReq { shard: SHARD.into(), epoch, primary: primary.replica() }))
        .await;
    assert!(matches!(r, Ok(Response::Replica(_))), "follow on {}: {r:?}", m.name);
}

/// Until every member holds exactly `want` (in key order) and the same log end.
async fn converge(members: &[&Member], want: &BTreeMap<i64, Row>) {
    let want: Vec<Row> = want.values().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut same = true;
        for m in members {
            same &= m.rows().await == want;
        }
        if same {
            let mut ends = Vec::new();
            for m in members {
                let i = m.info().await;
                ends.push((i.last_lsn, i.last_epoch));
            }
            if ends.windows(2).all(|w| w[0] == w[1]) {
                return;
            }
        }
        if Instant::now() > deadline {
            let mut report = String::new();
            for m in members {
                let i = m.info().await;
                report.push_str(&format!(
                    "\n  {}: {} rows (want {}), {i:?}",
                    m.name,
                    m.rows().await.len(),
                    want.len()
                ));
            }
            panic!("the replicas did not converge:{report}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes single rows `keys` through `primary`; every one must be acknowledged.
async fn write_all(
    primary: &Member,
    keys: impl IntoIterator<Item = i64>,
    model: &mut BTreeMap<i64, Row>,
) {
    for k in keys {
        match primary.write(&[k]).await {
            Ok(Response::Written { .. }) => {
                model.insert(k, row(k));
            }
            other => panic!("write {k}: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The on-disk format, read back (wal/src/format.rs)
// ---------------------------------------------------------------------------------------

/// One record of a segment file: offset, total length, lsn.
#[derive(Clone, Copy, Debug)]
struct Rec {
    at: usize,
    len: usize,
    lsn: u64,
}

fn segments(wal_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(wal_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

fn records(seg: &Path) -> Vec<Rec> {
    let b = std::fs::read(seg).unwrap();
    let mut out = Vec::new();
    let mut at = SEGMENT_HEADER_LEN;
    while at + RECORD_HEADER_LEN <= b.len() {
        let len = u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
        let lsn = u64::from_le_bytes(b[at + 8..at + 16].try_into().unwrap());
        if lsn == 0 || at + RECORD_HEADER_LEN + len > b.len() {
            break;
        }
        out.push(Rec { at, len: RECORD_HEADER_LEN + len, lsn });
        at += RECORD_HEADER_LEN + len;
    }
    out
}

fn patch(file: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut b = std::fs::read(file).unwrap();
    f(&mut b);
    std::fs::write(file, &b).unwrap();
}

/// How the tail of the last segment is damaged; returns the last LSN recovery must keep.
#[derive(Clone, Copy, Debug)]
enum Damage {
    /// The last record cut half way (the rest never reached the disk: zeroes).
    Torn,
    /// One byte flipped in each of the last three records.
    Flipped,
    /// The 4 KiB page holding the start of the second-to-last record zeroed.
    ZeroedPage,
}

fn damage_tail(wal_dir: &Path, d: Damage) -> u64 {
    let seg = segments(wal_dir).pop().unwrap();
    let recs = records(&seg);
    assert!(recs.len() >= 3, "too few records in the last segment: {recs:?}");
    let last = recs[recs.len() - 1];
    match d {
        Damage::Torn => {
            patch(&seg, |b| b[last.at + last.len / 2..].fill(0));
            last.lsn - 1
        }
        Damage::Flipped => {
            let tail = &recs[recs.len() - 3..];
            patch(&seg, |b| {
                for r in tail {
                    b[r.at + RECORD_HEADER_LEN + (r.len - RECORD_HEADER_LEN) / 2] ^= 0x5A;
                }
            });
            tail[0].lsn - 1
        }
        Damage::ZeroedPage => {
            let page = recs[recs.len() - 2].at / 4096 * 4096;
            assert!(page >= 4096, "the page would hit the segment header");
            patch(&seg, |b| {
                let end = (page + 4096).min(b.len());
                b[page..end].fill(0)
            });
            let first_hit = recs.iter().find(|r| r.at + r.len > page).unwrap();
            first_hit.lsn - 1
        }
    }
}

// ---------------------------------------------------------------------------------------
// Scenario 4
// ---------------------------------------------------------------------------------------

async fn three_in_process() -> Vec<Member> {
    let mut v = Vec::new();
    for i in 0..3 {
        v.push(Member::in_process(&format!("S{i}"), small_segments()).await);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_and_flipped_tails_are_cut_at_start_and_caught_up_from_the_primary() {
    let _serial = serial();
    let mut m = three_in_process().await;
    configure(&m.iter().collect::<Vec<_>>()).await;
    let p = elect(&m.iter().collect::<Vec<_>>(), &[0, 1, 2], 1).await;
    assert_eq!(p, 0);
    let mut model = BTreeMap::new();
    let mut next = 0i64;
    for d in [Damage::Torn, Damage::Flipped, Damage::ZeroedPage] {
        // Enough writes that the victim's last segment holds its last records past 8 KiB.
        loop {
            write_all(&m[0], next..next + 5, &mut model).await;
            next += 5;
            converge(&m.iter().collect::<Vec<_>>(), &model).await;
            let seg = segments(&m[2].wal_dir()).pop().unwrap();
            let recs = records(&seg);
            if recs.len() >= 4 && recs[recs.len() - 2].at >= 8192 {
                break;
            }
        }
        let before = m[2].info().await.last_lsn;
        m[2].crash().await;
        let keep = damage_tail(&m[2].wal_dir(), d);
        assert!(keep < before);
        // The primary keeps writing with the other secondary meanwhile.
        write_all(&m[0], next..next + 3, &mut model).await;
        next += 3;
        m[2].try_start().await.unwrap_or_else(|e| panic!("{d:?}: the replica did not start: {e}"));
        let after = m[2].info().await;
        assert!(
            after.last_lsn <= keep,
            "{d:?}: the damaged tail was not cut (log ends at {}, the damage starts after {keep})",
            after.last_lsn
        );
        rejoin(&m[2], &m[0], 1).await;
        write_all(&m[0], next..next + 3, &mut model).await;
        next += 3;
        converge(&m.iter().collect::<Vec<_>>(), &model).await;
        eprintln!(
            "fault_disk: {d:?}: log ended at {before}, recovered to {} (damage after {keep}), caught up to {}",
            after.last_lsn,
            m[2].info().await.last_lsn
        );
    }
    // And once more from its own (repaired) log: a clean restart keeps everything.
    m[2].crash().await;
    m[2].try_start().await.unwrap();
    rejoin(&m[2], &m[0], 1).await;
    converge(&m.iter().collect::<Vec<_>>(), &model).await;
    for x in &mut m {
        x.stop().await;
    }
}

/// DESIGN.md "Failover": a node that starts is never primary of anything until the manager
/// gives it a new epoch. Here the primary's own log loses its last record (torn) while it is
/// down; restarted, it is reached (as a router that still names it would) before any
/// election. Had it taken the write, it would have logged it at the position where the
/// others hold the lost, committed record of the same epoch; the next primary's log matching
/// (same LSN, same epoch) would have accepted the fork, and the largest-log election could
/// even pick it (equal logs, first in order), losing an acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_primary_with_a_lost_tail_takes_no_write_until_a_new_epoch() {
    let _serial = serial();
    let mut m = three_in_process().await;
    configure(&m.iter().collect::<Vec<_>>()).await;
    assert_eq!(elect(&m.iter().collect::<Vec<_>>(), &[0, 1, 2], 1).await, 0);
    let mut model = BTreeMap::new();
    let mut next = 0i64;
    loop {
        write_all(&m[0], next..next + 5, &mut model).await;
        next += 5;
        let seg = segments(&m[0].wal_dir()).pop().unwrap();
        let recs = records(&seg);
        if recs.len() >= 4 && recs[recs.len() - 2].at >= 8192 {
            break;
        }
    }
    converge(&m.iter().collect::<Vec<_>>(), &model).await;
    let before = m[0].info().await.last_lsn;
    m[0].crash().await;
    let keep = damage_tail(&m[0].wal_dir(), Damage::Torn);
    m[0].try_start().await.unwrap();
    let restarted = m[0].info().await;
    assert!(
        restarted.last_lsn <= keep && keep < before,
        "the torn tail was not cut: {restarted:?}"
    );
    assert!(
        !matches!(restarted.role, protocol::Role::Primary { .. }),
        "a restarted node reports itself primary: {restarted:?}"
    );

    // A write and a linearizable read at the restarted primary, before any election.
    let y = 1_000_000;
    match m[0].write(&[y]).await {
        Err(CallError::Remote(e)) if matches!(e.kind, protocol::ErrorKind::NotPrimary { .. }) => {}
        other => panic!("the restarted primary did not refuse a write at its old epoch: {other:?}"),
    }
    let read = m[0]
        .call(Request::Read(ReadReq {
            shard: SHARD.into(),
            low: 0,
            high: i64::MAX,
            min_lsn: 0,
            consistency: protocol::Consistency::Linearizable,
        }))
        .await;
    assert!(read.is_err(), "the restarted primary answered a linearizable read: {read:?}");
    // Nor does a promotion at the epoch it already had make it primary again: that would
    // put a new barrier at a position of the same epoch too.
    let same = m[0]
        .call(Request::Promote(PromoteReq {
            shard: SHARD.into(),
            epoch: 1,
            voters: m.iter().map(|x| x.replica()).collect(),
            learners: vec![],
            quorum: Quorum::Majority,
        }))
        .await;
    assert!(same.is_err(), "a restarted node was promoted again at its old epoch: {same:?}");

    // The next election finds every acknowledged write, and the old primary converges.
    let p = elect(&m.iter().collect::<Vec<_>>(), &[0, 1, 2], 2).await;
    assert_ne!(p, 0, "the replica that lost its tail won the election");
    write_all(&m[p], next..next + 3, &mut model).await;
    converge(&m.iter().collect::<Vec<_>>(), &model).await;
    eprintln!(
        "fault_disk: restarted primary: log ended at {before}, recovered to {}, refused the write; {} won epoch 2",
        restarted.last_lsn, m[p].name
    );
    for x in &mut m {
        x.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_inside_a_sealed_segment_stops_the_replica_and_the_shard_serves_on() {
    let _serial = serial();
    let mut m = three_in_process().await;
    configure(&m.iter().collect::<Vec<_>>()).await;
    elect(&m.iter().collect::<Vec<_>>(), &[0, 1, 2], 1).await;
    let mut model = BTreeMap::new();
    let mut next = 0i64;
    while segments(&m[2].wal_dir()).len() < 3 {
        write_all(&m[0], next..next + 10, &mut model).await;
        next += 10;
    }
    converge(&m.iter().collect::<Vec<_>>(), &model).await;
    m[2].crash().await;
    // A byte flipped in a record in the middle of the first (sealed) segment.
    let sealed = segments(&m[2].wal_dir())[0].clone();
    let recs = records(&sealed);
    let victim = recs[recs.len() / 2];
    patch(&sealed, |b| b[victim.at + RECORD_HEADER_LEN + 3] ^= 0x01);
    let err = m[2].try_start().await.expect_err("a replica with a corrupt sealed segment started");
    let msg = err.to_string();
    let file = sealed.file_name().unwrap().to_str().unwrap();
    assert!(
        msg.contains(file) && msg.contains(&victim.at.to_string()) && msg.contains("corrupt"),
        "the error should name the file {file} and offset {}: {msg}",
        victim.at
    );
    eprintln!("fault_disk: a corrupt sealed segment stops the replica: {msg}");

    // The shard serves on with the two others: writes acknowledged, reads answered.
    write_all(&m[0], next..next + 20, &mut model).await;
    next += 20;
    converge(&[&m[0], &m[1]], &model).await;
    let read = m[1]
        .call(Request::Read(ReadReq {
            shard: SHARD.into(),
            low: 0,
            high: i64::MAX,
            min_lsn: 0,
            consistency: protocol::Consistency::Default,
        }))
        .await;
    match read {
        Ok(Response::Read { rows, .. }) => assert_eq!(rows.len(), model.len()),
        other => panic!("read from the other secondary: {other:?}"),
    }

    // The operator wipes the damaged replica; it comes back empty and catches up.
    m[2].dir = tempfile::tempdir().unwrap();
    m[2].try_start().await.unwrap();
    configure(&[&m[2]]).await;
    rejoin(&m[2], &m[0], 1).await;
    write_all(&m[0], next..next + 3, &mut model).await;
    converge(&m.iter().collect::<Vec<_>>(), &model).await;
    for x in &mut m {
        x.stop().await;
    }
}

// ---------------------------------------------------------------------------------------
// Scenario 5
// ---------------------------------------------------------------------------------------

#[cfg(feature = "failpoints")]
mod failpoints {
    use super::*;
    use protocol::ErrorKind;

    /// The primary here (in-process, where the fail points are armed), two secondaries in
    /// child processes; elected at epoch 1, with `rows` acknowledged.
    async fn setup(model: &mut BTreeMap<i64, Row>) -> Vec<Member> {
        let m = vec![
            Member::in_process("P", small_segments()).await,
            Member::child("S1"),
            Member::child("S2"),
        ];
        configure(&m.iter().collect::<Vec<_>>()).await;
        let p = elect(&m.iter().collect::<Vec<_>>(), &[0, 1, 2], 1).await;
        assert_eq!(p, 0);
        write_all(&m[0], 0..10, model).await;
        converge(&m.iter().collect::<Vec<_>>(), model).await;
        m
    }

    /// `key` is on no replica, and no replica's log went past `lsn`.
    async fn nowhere(m: &[Member], key: i64, lsn: u64) {
        for x in m {
            assert!(x.rows().await.iter().all(|r| r.key != key), "{key} is on {}", x.name);
            let end = x.info().await.last_lsn;
            assert!(end <= lsn, "{}'s log went to {end} past {lsn} for a refused write", x.name);
        }
    }

    fn assert_server_fault(r: &Result<Response, CallError>, what: &str) -> String {
        match r {
            Err(CallError::Remote(e)) => {
                assert!(
                    matches!(e.kind, ErrorKind::Internal | ErrorKind::Unavailable),
                    "{what}: {e:?}"
                );
                assert!(e.message.starts_with("<Error> "), "{what}: {}", e.message);
                e.message.clone()
            }
            other => panic!("{what}: expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn disk_full_and_a_torn_append_on_the_primary_fail_the_write_cleanly() {
        let _serial = serial();
        let scenario = fail::FailScenario::setup();
        let mut model = BTreeMap::new();
        let mut m = setup(&mut model).await;

        // Disk full when the next segment is created.
        fail::cfg("wal::segment::create", "return").unwrap();
        let mut k = 100i64;
        let (refused, msg) = loop {
            let lsn = m[0].info().await.last_lsn;
            let r = m[0].write(&[k]).await;
            if let Ok(Response::Written { .. }) = r {
                model.insert(k, row(k));
                k += 1;
                assert!(k < 1000, "the segment never filled");
                continue;
            }
            break ((k, lsn), assert_server_fault(&r, "a write on a full disk"));
        };
        assert!(msg.contains("os error 28") || msg.contains("No space"), "{msg}");
        nowhere(&m, refused.0, refused.1).await;
        // Still full: refused again, still nowhere.
        let r = m[0].write(&[refused.0]).await;
        assert_server_fault(&r, "a second write on a full disk");
        nowhere(&m, refused.0, refused.1).await;
        fail::remove("wal::segment::create");
        // Space is back: the refused write succeeds when sent again, no restart needed.
        write_all(&m[0], [refused.0, refused.0 + 1], &mut model).await;
        converge(&m.iter().collect::<Vec<_>>(), &model).await;
        eprintln!("fault_disk: disk full: {msg}");

        // A write torn half way.
        let lsn = m[0].info().await.last_lsn;
        fail::cfg("wal::append::write", "return").unwrap();
        let r = m[0].write(&[5000]).await;
        let msg = assert_server_fault(&r, "a torn write");
        fail::remove("wal::append::write");
        nowhere(&m, 5000, lsn).await;
        write_all(&m[0], [5001, 5000], &mut model).await;
        converge(&m.iter().collect::<Vec<_>>(), &model).await;
        eprintln!("fault_disk: torn write: {msg}");

        // A restart of the primary (re-elected at epoch 2) keeps exactly what was acknowledged.
        m[0].stop().await;
        m[0].try_start().await.unwrap();
        elect(&m.iter().collect::<Vec<_>>(), &[0, 1, 2], 2).await;
        converge(&m.iter().collect::<Vec<_>>(), &model).await;
        for x in &mut m {
            x.stop().await;
        }
        scenario.teardown();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_fsync_error_on_the_primary_fails_cleanly_and_a_new_primary_takes_over() {
        let _serial = serial();
        let scenario = fail::FailScenario::setup();
        let mut model = BTreeMap::new();
        let mut m = setup(&mut model).await;
        let lsn = m[0].info().await.last_lsn;

        fail::cfg("wal::sync", "return").unwrap();
        // The write in flight: acknowledged only if the secondaries made it durable before
        // the primary noticed its own failure; otherwise refused, and then ambiguous (the
        // secondaries may hold it).
        let first = m[0].write(&[700]).await;
        let acked_first = matches!(first, Ok(Response::Written { .. }));
        let first_msg = if acked_first {
            model.insert(700, row(700));
            "acknowledged (a majority held it)".to_string()
        } else {
            let msg = assert_server_fault(&first, "the write whose sync failed");
            // The secondaries may hold it durably and a new primary commit it: the client
            // must be told the outcome is unknown.
            assert!(msg.contains("may or may not"), "{msg}");
            format!("refused: {msg}")
        };
        // The log is poisoned: later writes are refused before anything is logged.
        let poisoned_at = m[0].info().await.last_lsn;
        let r = m[0].write(&[701]).await;
        let msg = assert_server_fault(&r, "a write after the failed sync");
        nowhere(&m, 701, poisoned_at.max(lsn + 1)).await;
        // Its heartbeat now fails with the reason, so a shard manager replaces it as it does
        // a dead node (the way out below).
        let hb = m[0].call(Request::Heartbeat).await;
        let hb_msg = assert_server_fault(&hb, "a heartbeat after the failed sync");
        assert!(hb_msg.contains("unhealthy") && hb_msg.contains(SHARD), "{hb_msg}");
        eprintln!(
            "fault_disk: fsync error: the write in flight was {first_msg}; later writes: {msg}; heartbeat: {hb_msg}"
        );
        fail::remove("wal::sync");

        // The manager's way out: a new primary among the secondaries, then the old one
        // restarts (its log reopened) and follows.
        let np = elect(&m.iter().collect::<Vec<_>>(), &[1, 2], 2).await;
        assert_ne!(np, 0);
        m[0].stop().await;
        m[0].try_start().await.unwrap();
        rejoin(&m[0], &m[np], 2).await;
        // Reopened, its log is sound again and so is its heartbeat.
        let hb = m[0].call(Request::Heartbeat).await;
        assert!(matches!(hb, Ok(Response::Heartbeat)), "after the restart: {hb:?}");
        // 700 was either committed (everywhere) or not (nowhere), never half.
        let has: Vec<bool> = {
            let mut v = Vec::new();
            for x in &m {
                v.push(x.rows().await.iter().any(|r| r.key == 700));
            }
            v
        };
        write_all(&m[np], 800..810, &mut model).await;
        let on_new = m[np].rows().await.iter().any(|r| r.key == 700);
        if on_new {
            model.insert(700, row(700));
        }
        assert!(!acked_first || on_new, "an acknowledged write was lost");
        converge(&m.iter().collect::<Vec<_>>(), &model).await;
        eprintln!("fault_disk: after the re-election 700 is {} (seen on replicas before catch-up: {has:?})",
            if on_new { "everywhere" } else { "nowhere" });
        for x in &mut m {
            x.stop().await;
        }
        scenario.teardown();
    }
}
