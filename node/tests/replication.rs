//! Replication inside a shard, three in-process nodes on loopback driven the way the shard
//! manager drives them (adopt, promote, follow): commits, catch-up, fencing, learners,
//! divergent tails and snapshots.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use client::{CallError, Connection};
use node::{NodeConfig, NodeServer, ShardOptions};
use protocol::{
    AdoptReq, ConfigReq, CopyReq, DType, ErrorKind, FollowReq, PromoteReq, Quorum, Replica,
    ReplicaInfo, ReplicaStatusReq, Request, Response, Role, Row, Schema, ShardSpec, Value,
    WriteReq,
};

const SHARD: &str = "sh1";

fn schema() -> Schema {
    Schema {
        columns: vec!["Stud_id".into(), "Stud_name".into(), "Stud_marks".into()],
        dtypes: vec![DType::Number, DType::String, DType::String],
    }
}

fn row(k: i64) -> Row {
    Row { key: k, values: vec![Value::Int(k), Value::Str(format!("n{k}")), Value::Int(k % 100)] }
}

/// A node that can be stopped and started again on the same address and data.
struct TestNode {
    name: String,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    opts: ShardOptions,
    server: Option<NodeServer>,
}

impl TestNode {
    async fn start(name: &str, opts: ShardOptions) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let cfg = common::config(name, dir.path(), opts.clone());
        let server = NodeServer::start(NodeConfig { http: None, ..cfg }).await.unwrap();
        let addr = server.binary_addr();
        TestNode { name: name.into(), dir, addr, opts, server: Some(server) }
    }

    async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }

    async fn restart(&mut self) {
        self.stop().await;
        let cfg = NodeConfig {
            listen: self.addr,
            http: None,
            ..common::config(&self.name, self.dir.path(), self.opts.clone())
        };
        self.server = Some(NodeServer::start(cfg).await.unwrap());
    }

    fn replica(&self) -> Replica {
        Replica { name: self.name.clone(), addr: self.addr.to_string() }
    }

    async fn conn(&self) -> Connection {
        Connection::connect(self.addr, "test-manager").await.unwrap()
    }

    async fn call(&self, req: Request) -> Result<Response, CallError> {
        self.conn().await.call(req).await
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
}

async fn cluster(n: usize, opts: ShardOptions) -> Vec<TestNode> {
    let mut nodes = Vec::new();
    for i in 0..n {
        let node = TestNode::start(&format!("S{i}"), opts.clone()).await;
        node.call(Request::Config(ConfigReq {
            schema: schema(),
            shards: vec![ShardSpec::with_range(SHARD, 0, 1 << 40)],
        }))
        .await
        .unwrap();
        nodes.push(node);
    }
    nodes
}

/// An election as the manager runs it: the live replicas adopt `epoch`, the voter with the
/// largest `(last_epoch, last_lsn)` is promoted with `voters`, the others follow it.
async fn elect(
    live: &[&TestNode],
    voters: &[&TestNode],
    learners: &[&TestNode],
    epoch: u64,
) -> usize {
    let mut best = (0, 0, 0);
    for (i, n) in live.iter().enumerate() {
        match n.call(Request::Adopt(AdoptReq { shard: SHARD.into(), epoch })).await {
            Ok(Response::Adopted { last_epoch, last_lsn, .. }) => {
                let voter = voters.iter().any(|v| v.name == n.name);
                if voter && (last_epoch, last_lsn) >= (best.0, best.1) {
                    best = (last_epoch, last_lsn, i);
                }
            }
            other => panic!("adopt on {}: {other:?}", n.name),
        }
    }
    let primary = live[best.2];
    primary
        .call(Request::Promote(PromoteReq {
            shard: SHARD.into(),
            epoch,
            voters: voters.iter().map(|n| n.replica()).collect(),
            learners: learners.iter().map(|n| n.replica()).collect(),
            quorum: Quorum::Majority,
        }))
        .await
        .unwrap();
    for n in live.iter().filter(|n| n.name != primary.name) {
        n.call(Request::Follow(FollowReq {
            shard: SHARD.into(),
            epoch,
            primary: primary.replica(),
        }))
        .await
        .unwrap();
    }
    best.2
}

async fn write(conn: &Connection, keys: std::ops::Range<i64>) -> Result<Response, CallError> {
    conn.call(Request::Write(WriteReq {
        shard: SHARD.into(),
        curr_idx: None,
        rows: keys.map(row).collect(),
    }))
    .await
}

/// Polls until every node holds `want` rows and the same log end, or fails at a deadline.
async fn converged(nodes: &[&TestNode], want: &[Row]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut ok = true;
        for n in nodes {
            if n.rows().await != want {
                ok = false;
            }
        }
        if ok {
            let mut ends = Vec::new();
            for n in nodes {
                let i = n.info().await;
                ends.push((i.last_lsn, i.last_epoch));
            }
            if ends.windows(2).all(|w| w[0] == w[1]) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "replicas did not converge");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_reach_every_replica_in_the_same_order() {
    let nodes = cluster(3, ShardOptions::default()).await;
    let all: Vec<&TestNode> = nodes.iter().collect();
    let p = elect(&all, &all, &[], 1).await;
    let conn = nodes[p].conn().await;
    let mut handles = Vec::new();
    for t in 0..20i64 {
        let conn = conn.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..10 {
                let k = t * 100 + i;
                match write(&conn, k..k + 1).await {
                    Ok(Response::Written { .. }) => {}
                    other => panic!("write {k}: {other:?}"),
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let want = nodes[p].rows().await;
    assert_eq!(want.len(), 200);
    converged(&all, &want).await;
    // A secondary refuses writes, naming the primary.
    let s = (p + 1) % 3;
    match write(&nodes[s].conn().await, 5000..5001).await {
        Err(CallError::Remote(e)) => {
            assert_eq!(e.kind, ErrorKind::NotPrimary { primary: Some(nodes[p].name.clone()) });
            assert!(e.message.contains(&nodes[p].name), "{}", e.message);
        }
        other => panic!("secondary accepted a write: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_secondary_down_writes_commit_and_it_catches_up() {
    let mut nodes = cluster(3, ShardOptions::default()).await;
    let all: Vec<&TestNode> = nodes.iter().collect();
    let p = elect(&all, &all, &[], 1).await;
    let s = (p + 1) % 3;
    nodes[s].stop().await;
    let conn = nodes[p].conn().await;
    for k in 0..50 {
        assert!(matches!(write(&conn, k..k + 1).await, Ok(Response::Written { .. })));
    }
    nodes[s].restart().await;
    let want = nodes[p].rows().await;
    assert_eq!(want.len(), 50);
    let all: Vec<&TestNode> = nodes.iter().collect();
    converged(&all, &want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_nothing_commits_and_a_learner_does_not_count() {
    let mut nodes = cluster(3, ShardOptions::default()).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    // Voters a and b; c only learns.
    elect(&[a, b, c], &[a, b], &[c], 1).await;
    let (p, other_voter) =
        if matches!(nodes[0].info().await.role, Role::Primary { .. }) { (0, 1) } else { (1, 0) };
    nodes[other_voter].stop().await;
    let conn = nodes[p].conn().await;
    let write_task = tokio::spawn(async move { write(&conn, 1..2).await });
    // The learner holds the record durably, yet the write must not be acknowledged.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if nodes[2].info().await.last_lsn >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the learner never received the record");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!write_task.is_finished(), "a write committed without a quorum of voters");
    assert!(nodes[p].info().await.commit_lsn < 2, "commit moved without a quorum");
    nodes[other_voter].restart().await;
    match tokio::time::timeout(Duration::from_secs(20), write_task).await {
        Ok(Ok(Ok(Response::Written { .. }))) => {}
        other => panic!("write did not commit once the voter came back: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_primary_cannot_commit_and_its_client_gets_an_error() {
    let nodes = cluster(3, ShardOptions::default()).await;
    let all: Vec<&TestNode> = nodes.iter().collect();
    let p = elect(&all, &all, &[], 1).await;
    let old = nodes[p].conn().await;
    assert!(matches!(write(&old, 0..1).await, Ok(Response::Written { .. })));
    // The other two elect a new primary at epoch 2 without the old one.
    let others: Vec<&TestNode> =
        nodes.iter().enumerate().filter(|(i, _)| *i != p).map(|(_, n)| n).collect();
    let voters: Vec<&TestNode> = nodes.iter().collect();
    elect(&others, &voters, &[], 2).await;
    // The old primary still thinks it leads until a peer tells it otherwise; its write
    // must fail, never succeed.
    match write(&old, 10..11).await {
        Ok(r) => panic!("a deposed primary acknowledged a write: {r:?}"),
        Err(CallError::Remote(e)) => {
            assert!(
                matches!(
                    e.kind,
                    ErrorKind::Unavailable
                        | ErrorKind::NotPrimary { .. }
                        | ErrorKind::StaleEpoch { .. }
                ),
                "{e:?}"
            );
        }
        Err(e) => panic!("unexpected failure {e}"),
    }
    assert!(
        !matches!(nodes[p].info().await.role, Role::Primary { .. }),
        "the old primary did not step down"
    );
    // The row written to the deposed primary is nowhere once everyone converged.
    let mut new_primary = None;
    for n in &others {
        if matches!(n.info().await.role, Role::Primary { .. }) {
            new_primary = Some(*n);
        }
    }
    let new_primary = new_primary.expect("no primary after the election");
    let c = new_primary.conn().await;
    assert!(matches!(write(&c, 20..21).await, Ok(Response::Written { .. })));
    let want = vec![row(0), row(20)];
    converged(&all, &want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_divergent_tail_is_cut_and_the_old_primary_catches_up() {
    let mut nodes = cluster(3, ShardOptions::default()).await;
    let all: Vec<&TestNode> = nodes.iter().collect();
    let p = elect(&all, &all, &[], 1).await;
    let conn = nodes[p].conn().await;
    for k in 0..20 {
        assert!(matches!(write(&conn, k..k + 1).await, Ok(Response::Written { .. })));
    }
    let (s1, s2) = ((p + 1) % 3, (p + 2) % 3);
    nodes[s1].stop().await;
    nodes[s2].stop().await;
    // Writes the secondaries never see: appended at the old primary, never committed.
    let stuck: Vec<_> = (100..105)
        .map(|k| {
            let conn = conn.clone();
            tokio::spawn(async move { write(&conn, k..k + 1).await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while nodes[p].info().await.last_lsn < 26 {
        assert!(Instant::now() < deadline, "writes never reached the primary's log");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    nodes[p].stop().await;
    for t in stuck {
        assert!(
            !matches!(t.await.unwrap(), Ok(Response::Written { .. })),
            "an uncommitted write was acknowledged"
        );
    }
    nodes[s1].restart().await;
    nodes[s2].restart().await;
    nodes[p].restart().await;
    // The two secondaries elect among themselves at epoch 2; then the old primary follows.
    let live: Vec<&TestNode> = vec![&nodes[s1], &nodes[s2]];
    let voters: Vec<&TestNode> = nodes.iter().collect();
    let np = elect(&live, &voters, &[], 2).await;
    let new_primary = live[np];
    nodes[p].call(Request::Adopt(AdoptReq { shard: SHARD.into(), epoch: 2 })).await.unwrap();
    nodes[p]
        .call(Request::Follow(FollowReq {
            shard: SHARD.into(),
            epoch: 2,
            primary: new_primary.replica(),
        }))
        .await
        .unwrap();
    let c2 = new_primary.conn().await;
    for k in 200..210 {
        assert!(matches!(write(&c2, k..k + 1).await, Ok(Response::Written { .. })));
    }
    let want: Vec<Row> = (0..20).chain(200..210).map(row).collect();
    assert_eq!(new_primary.rows().await, want);
    let all: Vec<&TestNode> = nodes.iter().collect();
    converged(&all, &want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_replica_catches_up_by_snapshot_and_log() {
    let opts = ShardOptions {
        wal: wal::Options { segment_size: 256 * 1024, ..wal::Options::default() },
        checkpoint_segments: 2,
        ..ShardOptions::default()
    };
    let nodes = cluster(3, opts).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let p = elect(&[a, b], &[a, b], &[], 1).await;
    let primary = [a, b][p];
    let conn = primary.conn().await;
    let mut handles = Vec::new();
    for t in 0..10i64 {
        let conn = conn.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..10 {
                let base = (t * 10 + i) * 1000;
                match write(&conn, base..base + 1000).await {
                    Ok(Response::Written { .. }) => {}
                    other => panic!("write at {base}: {other:?}"),
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    assert!(primary.server.as_ref().unwrap().node().shard(SHARD).unwrap().log_segments() <= 3);
    // c joins as a learner at epoch 2; the primary's log no longer starts at 1.
    for n in [a, b, c] {
        n.call(Request::Adopt(AdoptReq { shard: SHARD.into(), epoch: 2 })).await.unwrap();
    }
    primary
        .call(Request::Promote(PromoteReq {
            shard: SHARD.into(),
            epoch: 2,
            voters: vec![a.replica(), b.replica()],
            learners: vec![c.replica()],
            quorum: Quorum::Majority,
        }))
        .await
        .unwrap();
    let other = [a, b][1 - p];
    other
        .call(Request::Follow(FollowReq {
            shard: SHARD.into(),
            epoch: 2,
            primary: primary.replica(),
        }))
        .await
        .unwrap();
    c.call(Request::Follow(FollowReq {
        shard: SHARD.into(),
        epoch: 2,
        primary: primary.replica(),
    }))
    .await
    .unwrap();
    for k in 0..5 {
        let base = 1_000_000 + k;
        assert!(matches!(write(&conn, base..base + 1).await, Ok(Response::Written { .. })));
    }
    let want = primary.rows().await;
    assert_eq!(want.len(), 100_005);
    converged(&[a, b, c], &want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_all_waits_for_every_voter() {
    let mut nodes = cluster(3, ShardOptions::default()).await;
    for n in &nodes {
        n.call(Request::Adopt(AdoptReq { shard: SHARD.into(), epoch: 1 })).await.unwrap();
    }
    let voters: Vec<Replica> = nodes.iter().map(TestNode::replica).collect();
    nodes[0]
        .call(Request::Promote(PromoteReq {
            shard: SHARD.into(),
            epoch: 1,
            voters: voters.clone(),
            learners: vec![],
            quorum: Quorum::All,
        }))
        .await
        .unwrap();
    for n in &nodes[1..] {
        n.call(Request::Follow(FollowReq {
            shard: SHARD.into(),
            epoch: 1,
            primary: voters[0].clone(),
        }))
        .await
        .unwrap();
    }
    let conn = nodes[0].conn().await;
    assert!(matches!(write(&conn, 0..1).await, Ok(Response::Written { .. })));
    nodes[2].stop().await;
    let pending = tokio::spawn({
        let conn = conn.clone();
        async move { write(&conn, 1..2).await }
    });
    // The other secondary holds it durably, which is a majority but not all.
    let deadline = Instant::now() + Duration::from_secs(10);
    while nodes[1].info().await.last_lsn < 3 {
        assert!(Instant::now() < deadline, "the record never reached the secondary");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!pending.is_finished(), "quorum all committed without every voter");
    nodes[2].restart().await;
    match tokio::time::timeout(Duration::from_secs(20), pending).await {
        Ok(Ok(Ok(Response::Written { .. }))) => {}
        other => panic!("write did not commit once every voter was back: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_with_min_lsn_never_returns_older_data_than_the_caller_saw() {
    let nodes = cluster(3, ShardOptions::default()).await;
    let all: Vec<&TestNode> = nodes.iter().collect();
    let p = elect(&all, &all, &[], 1).await;
    let conn = nodes[p].conn().await;
    let lsn = match write(&conn, 7..8).await {
        Ok(Response::Written { lsn, .. }) => lsn,
        other => panic!("{other:?}"),
    };
    // Straight after the acknowledgement, every secondary read that carries the write's LSN
    // sees the row (waiting for it if need be).
    for n in nodes.iter().filter(|n| n.name != nodes[p].name) {
        let req = Request::Read(protocol::ReadReq {
            shard: SHARD.into(),
            low: 0,
            high: 10,
            min_lsn: lsn,
            consistency: protocol::Consistency::Default,
        });
        match n.call(req).await {
            Ok(Response::Read { rows, applied_lsn }) => {
                assert!(applied_lsn >= lsn);
                assert_eq!(rows, vec![row(7)]);
            }
            other => panic!("{other:?}"),
        }
    }
    // An LSN nobody will reach in time: a clear "unavailable", not stale data.
    let req = Request::Read(protocol::ReadReq {
        shard: SHARD.into(),
        low: 0,
        high: 10,
        min_lsn: lsn + 1000,
        consistency: protocol::Consistency::Default,
    });
    match nodes[(p + 1) % 3].call(req).await {
        Err(CallError::Remote(e)) => assert_eq!(e.kind, ErrorKind::Unavailable, "{e:?}"),
        other => panic!("{other:?}"),
    }
}

async fn read_lin(n: &TestNode, low: i64, high: i64) -> Result<Response, CallError> {
    n.call(Request::Read(protocol::ReadReq {
        shard: SHARD.into(),
        low,
        high,
        min_lsn: 0,
        consistency: protocol::Consistency::Linearizable,
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_reads_need_the_primary_and_a_majority() {
    let mut nodes = cluster(3, ShardOptions::default()).await;
    let all: Vec<&TestNode> = nodes.iter().collect();
    let p = elect(&all, &all, &[], 1).await;
    let conn = nodes[p].conn().await;
    assert!(matches!(write(&conn, 1..2).await, Ok(Response::Written { .. })));
    // The primary answers with everything acknowledged so far.
    match read_lin(&nodes[p], 0, 10).await {
        Ok(Response::Read { rows, .. }) => assert_eq!(rows, vec![row(1)]),
        other => panic!("{other:?}"),
    }
    // A secondary refuses and names the primary.
    let s = (p + 1) % 3;
    match read_lin(&nodes[s], 0, 10).await {
        Err(CallError::Remote(e)) => assert_eq!(
            e.kind,
            ErrorKind::NotPrimary { primary: Some(nodes[p].name.clone()) },
            "{e:?}"
        ),
        other => panic!("a secondary answered a linearizable read: {other:?}"),
    }
    // One secondary down: a majority remains, reads go on.
    nodes[s].stop().await;
    match read_lin(&nodes[p], 0, 10).await {
        Ok(Response::Read { rows, .. }) => assert_eq!(rows, vec![row(1)]),
        other => panic!("{other:?}"),
    }
    // Both down: the primary cannot confirm it still leads; a clear error, not an answer.
    let t = (p + 2) % 3;
    nodes[t].stop().await;
    let started = Instant::now();
    let mut refused = None;
    while started.elapsed() < Duration::from_secs(10) {
        match read_lin(&nodes[p], 0, 10).await {
            Ok(Response::Read { .. }) => {} // the lease from before may still run
            Err(CallError::Remote(e)) => {
                refused = Some(e);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    let e = refused.expect("a primary without a majority kept answering linearizable reads");
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e:?}");
    // Back to a majority: reads answer again.
    nodes[s].restart().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match read_lin(&nodes[p], 0, 10).await {
            Ok(Response::Read { rows, .. }) => {
                assert_eq!(rows, vec![row(1)]);
                break;
            }
            Err(CallError::Remote(e)) if e.kind == ErrorKind::Unavailable => {}
            other => panic!("{other:?}"),
        }
        assert!(Instant::now() < deadline, "reads did not come back with a majority");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_primary_never_serves_a_linearizable_read_older_than_an_acknowledged_write() {
    let nodes = cluster(3, ShardOptions::default()).await;
    let all: Vec<&TestNode> = nodes.iter().collect();
    let p = elect(&all, &all, &[], 1).await;
    let old = nodes[p].conn().await;
    assert!(matches!(write(&old, 0..1).await, Ok(Response::Written { .. })));
    // Make sure the old primary holds a fresh lease when it is deposed.
    assert!(matches!(read_lin(&nodes[p], 0, 10).await, Ok(Response::Read { .. })));
    // The other two elect a primary of epoch 2 that does not count the old one.
    let others: Vec<&TestNode> =
        nodes.iter().enumerate().filter(|(i, _)| *i != p).map(|(_, n)| n).collect();
    let q = elect(&others, &others, &[], 2).await;
    let new = others[q].conn().await;
    assert!(matches!(write(&new, 5..6).await, Ok(Response::Written { .. })));
    // From the moment that write was acknowledged, the old primary must not answer a
    // linearizable read without it.
    for _ in 0..20 {
        match read_lin(&nodes[p], 0, 10).await {
            Ok(Response::Read { rows, .. }) => {
                assert!(
                    rows.contains(&row(5)),
                    "stale linearizable read at a deposed primary: {rows:?}"
                )
            }
            Err(CallError::Remote(e)) => assert!(
                matches!(
                    e.kind,
                    ErrorKind::Unavailable
                        | ErrorKind::NotPrimary { .. }
                        | ErrorKind::StaleEpoch { .. }
                ),
                "{e:?}"
            ),
            other => panic!("{other:?}"),
        }
    }
    // The new primary answers with both rows.
    match read_lin(others[q], 0, 10).await {
        Ok(Response::Read { rows, .. }) => assert_eq!(rows, vec![row(0), row(5)]),
        other => panic!("{other:?}"),
    }
}

/// A write of row `k` alone.
fn insert(k: i64) -> Request {
    Request::Write(WriteReq { shard: SHARD.into(), curr_idx: None, rows: vec![row(k)] })
}

/// A delete of row `k`.
fn delete(k: i64) -> Request {
    Request::Delete(protocol::DeleteReq { shard: SHARD.into(), key: k, only_if: None })
}

fn once(id: u64, req: Request) -> Request {
    Request::Once(protocol::OnceReq {
        id: protocol::RequestId { client: 42, seq: id },
        request: Box::new(req),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_sent_again_under_its_id_is_applied_once_even_after_a_failover() {
    let nodes = cluster(3, ShardOptions::default()).await;
    let all: Vec<&TestNode> = nodes.iter().collect();
    let p = elect(&all, &all, &[], 1).await;
    let c = nodes[p].conn().await;
    // The first try and a retry of the same write: one row, the same LSN, no "exists".
    let first = match c.call(once(1, insert(5))).await {
        Ok(Response::Written { lsn, .. }) => lsn,
        other => panic!("{other:?}"),
    };
    match c.call(once(1, insert(5))).await {
        Ok(Response::Written { lsn, .. }) => assert_eq!(lsn, first),
        other => panic!("the retry was not recognized: {other:?}"),
    }
    // A new request for the same key is refused as usual.
    assert!(
        matches!(c.call(once(2, insert(5))).await, Err(CallError::Remote(e)) if e.kind == ErrorKind::BadRequest)
    );
    // A delete, the row written again by someone else, then the delete's retry: the retry
    // must not remove the new row.
    assert!(matches!(c.call(once(3, delete(5))).await, Ok(Response::Deleted { .. })));
    assert!(matches!(c.call(insert(5)).await, Ok(Response::Written { .. })));
    assert!(matches!(c.call(once(3, delete(5))).await, Ok(Response::Deleted { .. })));
    assert_eq!(nodes[p].rows().await, vec![row(5)]);
    // After a failover the new primary knows the ids from its log.
    let others: Vec<&TestNode> =
        nodes.iter().enumerate().filter(|(i, _)| *i != p).map(|(_, n)| n).collect();
    let q = elect(&others, &all, &[], 2).await;
    let c2 = others[q].conn().await;
    match c2.call(once(3, delete(5))).await {
        Ok(Response::Deleted { .. }) => {}
        other => panic!("the new primary did not recognize the retry: {other:?}"),
    }
    match c2.call(once(1, insert(5))).await {
        Ok(Response::Written { lsn, .. }) => assert_eq!(lsn, first),
        other => panic!("{other:?}"),
    }
    converged(&all, &[row(5)]).await;
}

/// Ids of changes survive restarts (a clean stop checkpoints every applied change, so the
/// log alone no longer holds them) and travel with snapshots: a retry after any of them is
/// still answered from the id, never applied a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_sent_again_under_its_id_is_applied_once_after_restarts_and_snapshots() {
    // Small segments, so that the checkpoints purge the log a fresh replica would need.
    let opts = ShardOptions {
        wal: wal::Options { segment_size: 64 * 1024, ..wal::Options::default() },
        checkpoint_segments: 2,
        ..ShardOptions::default()
    };
    let mut nodes = cluster(3, opts.clone()).await;
    let all: Vec<&TestNode> = nodes.iter().collect();
    let p = elect(&all, &all, &[], 1).await;
    let c = nodes[p].conn().await;
    assert!(matches!(c.call(insert(5)).await, Ok(Response::Written { .. })));
    // A delete under an id, then someone else writes the row again.
    assert!(matches!(c.call(once(7, delete(5))).await, Ok(Response::Deleted { .. })));
    assert!(matches!(c.call(insert(5)).await, Ok(Response::Written { .. })));
    for base in (1000..5000).step_by(500) {
        assert!(matches!(write(&c, base..base + 500).await, Ok(Response::Written { .. })));
    }
    let mut want = vec![row(5)];
    want.extend((1000..5000).map(row));
    converged(&all, &want).await;
    drop(c);

    // Every replica restarts (a clean stop: each checkpoints and purges its log).
    for n in nodes.iter_mut() {
        n.restart().await;
    }
    let all: Vec<&TestNode> = nodes.iter().collect();
    let p = elect(&all, &all, &[], 2).await;
    match nodes[p].call(once(7, delete(5))).await {
        Ok(Response::Deleted { .. }) => {}
        other => panic!("the retry after a restart was not recognized: {other:?}"),
    }
    assert_eq!(nodes[p].rows().await, want, "the retried delete was applied again");

    // A fresh replica gets the shard by snapshot (the log before the checkpoint is gone)
    // and then leads: the retry is still recognized there.
    let fresh = TestNode::start("S3", opts).await;
    let config =
        ConfigReq { schema: schema(), shards: vec![ShardSpec::with_range(SHARD, 0, 1 << 40)] };
    fresh.call(Request::Config(config)).await.unwrap();
    let all: Vec<&TestNode> = nodes.iter().chain([&fresh]).collect();
    elect(&all, &all[..3], &[&fresh], 3).await;
    converged(&all, &want).await;
    let q = elect(&all, &all, &[], 4).await;
    assert_eq!(all[q].name, "S3", "the caught-up replica (last among equals) leads");
    match fresh.call(once(7, delete(5))).await {
        Ok(Response::Deleted { .. }) => {}
        other => panic!("the retry at a replica that got a snapshot was not recognized: {other:?}"),
    }
    assert_eq!(fresh.rows().await, want, "the retried delete was applied again");
}
