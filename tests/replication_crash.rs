//! Replication with real node processes on loopback, driven the way the shard manager does
//! (adopt a new epoch on a majority, promote the largest log, the rest follow): kill -9 of
//! the primary under load, and a primary paused with SIGSTOP while another is elected.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use client::Connection;
use common::NodeProc;
use protocol::{
    AdoptReq, ConfigReq, CopyReq, DType, FollowReq, PromoteReq, Quorum, Replica, ReplicaStatusReq,
    Request, Response, Row, Schema, ShardSpec, Value, WriteReq,
};
use rand::{Rng, SeedableRng};

const SHARD: &str = "sh1";
const WRITERS: i64 = 16;

struct Member {
    name: String,
    dir: tempfile::TempDir,
    proc: Option<NodeProc>,
    addr: SocketAddr,
}

impl Member {
    fn start(name: &str) -> Member {
        let dir = tempfile::tempdir().unwrap();
        let proc = NodeProc::start(name, dir.path());
        let addr = proc.binary;
        Member { name: name.into(), dir, proc: Some(proc), addr }
    }

    fn restart(&mut self) {
        self.proc = Some(NodeProc::start_on(&self.name, self.dir.path(), Some(self.addr)));
    }

    fn replica(&self) -> Replica {
        Replica { name: self.name.clone(), addr: self.addr.to_string() }
    }

    async fn call(&self, req: Request) -> Response {
        let c = Connection::connect(self.addr, "test-manager").await.unwrap();
        c.call(req).await.unwrap_or_else(|e| panic!("{} refused a call: {e}", self.name))
    }

    async fn keys(&self) -> BTreeSet<i64> {
        match self.call(Request::Copy(CopyReq { shards: vec![SHARD.into()] })).await {
            Response::Copy { shards } => shards[0].1.iter().map(|r| r.key).collect(),
            other => panic!("{other:?}"),
        }
    }

    async fn log_end(&self) -> (u64, u64) {
        match self.call(Request::ReplicaStatus(ReplicaStatusReq { shard: SHARD.into() })).await {
            Response::Replica(i) => (i.last_lsn, i.last_epoch),
            other => panic!("{other:?}"),
        }
    }
}

fn row(k: i64) -> Row {
    Row { key: k, values: vec![Value::Int(k), Value::Str(format!("n{k}")), Value::Int(k % 100)] }
}

async fn setup() -> Vec<Member> {
    let members: Vec<Member> = (0..3).map(|i| Member::start(&format!("R{i}"))).collect();
    let schema = Schema {
        columns: vec!["Stud_id".into(), "Stud_name".into(), "Stud_marks".into()],
        dtypes: vec![DType::Number, DType::String, DType::String],
    };
    for m in &members {
        m.call(Request::Config(ConfigReq {
            schema: schema.clone(),
            shards: vec![ShardSpec::with_range(SHARD, 0, 1 << 40)],
        }))
        .await;
    }
    members
}

/// Adopt `epoch` on the live members, promote the largest log, the others follow.
async fn elect(members: &[Member], live: &[usize], epoch: u64) -> usize {
    let mut best = (0, 0, usize::MAX);
    for &i in live {
        match members[i].call(Request::Adopt(AdoptReq { shard: SHARD.into(), epoch })).await {
            Response::Adopted { last_epoch, last_lsn, .. } => {
                if best.2 == usize::MAX || (last_epoch, last_lsn) > (best.0, best.1) {
                    best = (last_epoch, last_lsn, i);
                }
            }
            other => panic!("{other:?}"),
        }
    }
    let p = best.2;
    members[p]
        .call(Request::Promote(PromoteReq {
            shard: SHARD.into(),
            epoch,
            voters: members.iter().map(Member::replica).collect(),
            learners: vec![],
            quorum: Quorum::Majority,
        }))
        .await;
    for &i in live.iter().filter(|&&i| i != p) {
        members[i]
            .call(Request::Follow(FollowReq {
                shard: SHARD.into(),
                epoch,
                primary: members[p].replica(),
            }))
            .await;
    }
    p
}

/// Writers against the primary: single-row writes with unique keys; acknowledged keys are
/// recorded; each stops at its first error. Returns their handles.
fn start_writers(
    addr: SocketAddr,
    base: i64,
    acked: Arc<Mutex<Vec<i64>>>,
    tx: tokio::sync::mpsc::UnboundedSender<()>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..WRITERS)
        .map(|w| {
            let (acked, tx) = (acked.clone(), tx.clone());
            tokio::spawn(async move {
                let Ok(c) = Connection::connect(addr, "writer").await else { return };
                for i in 0..5000i64 {
                    let k = base + w * 100_000 + i;
                    let req = Request::Write(WriteReq {
                        shard: SHARD.into(),
                        curr_idx: None,
                        rows: vec![row(k)],
                    });
                    match tokio::time::timeout(Duration::from_secs(10), c.call(req)).await {
                        Ok(Ok(Response::Written { .. })) => {
                            acked.lock().unwrap().push(k);
                            let _ = tx.send(());
                        }
                        _ => return,
                    }
                }
            })
        })
        .collect()
}

/// Polls until every member holds the same keys and log end, all acknowledged keys among
/// them.
async fn converge(members: &[Member], acked: &[i64]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut keys = Vec::new();
        let mut ends = Vec::new();
        for m in members {
            keys.push(m.keys().await);
            ends.push(m.log_end().await);
        }
        let same = keys.windows(2).all(|w| w[0] == w[1]) && ends.windows(2).all(|w| w[0] == w[1]);
        if same {
            for k in acked {
                assert!(keys[0].contains(k), "acknowledged key {k} lost");
            }
            return;
        }
        assert!(Instant::now() < deadline, "replicas did not converge: ends {ends:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_primary_under_load_loses_no_acknowledged_write() {
    let mut members = setup().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xFA11);
    let mut epoch = 1;
    let mut p = elect(&members, &[0, 1, 2], epoch).await;
    let acked: Arc<Mutex<Vec<i64>>> = Arc::default();
    for round in 0..10i64 {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let writers = start_writers(members[p].addr, round * 10_000_000, acked.clone(), tx);
        let kill_after = rng.gen_range(20..300);
        for _ in 0..kill_after {
            if rx.recv().await.is_none() {
                break;
            }
        }
        let killed_at = Instant::now();
        members[p].proc.as_mut().unwrap().kill9();
        for w in writers {
            w.await.unwrap();
        }
        let survivors: Vec<usize> = (0..3).filter(|&i| i != p).collect();
        epoch += 1;
        let old = p;
        p = elect(&members, &survivors, epoch).await;
        // Every acknowledged write is on the new primary.
        let want: Vec<i64> = acked.lock().unwrap().clone();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let have = members[p].keys().await;
            if want.iter().all(|k| have.contains(k)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: acknowledged writes missing on the new primary"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        eprintln!(
            "round {round}: {} acknowledged so far; new primary ready {:?} after the kill",
            want.len(),
            killed_at.elapsed()
        );
        // The old primary comes back, cuts what it alone had, and catches up.
        members[old].restart();
        members[old].call(Request::Adopt(AdoptReq { shard: SHARD.into(), epoch })).await;
        members[old]
            .call(Request::Follow(FollowReq {
                shard: SHARD.into(),
                epoch,
                primary: members[p].replica(),
            }))
            .await;
        converge(&members, &want).await;
    }
    assert!(acked.lock().unwrap().len() >= 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_primary_that_was_replaced_never_acknowledges_a_lost_write() {
    let members = setup().await;
    let p = elect(&members, &[0, 1, 2], 1).await;
    let acked: Arc<Mutex<Vec<i64>>> = Arc::default();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let writers = start_writers(members[p].addr, 0, acked.clone(), tx);
    for _ in 0..100 {
        rx.recv().await;
    }
    members[p].proc.as_ref().unwrap().signal("STOP");
    let others: Vec<usize> = (0..3).filter(|&i| i != p).collect();
    let np = elect(&members, &others, 2).await;
    let c = Connection::connect(members[np].addr, "writer").await.unwrap();
    for k in 0..20 {
        let req = Request::Write(WriteReq {
            shard: SHARD.into(),
            curr_idx: None,
            rows: vec![row(900_000_000 + k)],
        });
        assert!(matches!(c.call(req).await, Ok(Response::Written { .. })));
        acked.lock().unwrap().push(900_000_000 + k);
    }
    // The old primary wakes up with writes queued in its sockets: it may append them, but
    // its peers refuse its epoch, so none of them may be acknowledged.
    members[p].proc.as_ref().unwrap().signal("CONT");
    for w in writers {
        w.await.unwrap();
    }
    members[p]
        .call(Request::Follow(FollowReq {
            shard: SHARD.into(),
            epoch: 2,
            primary: members[np].replica(),
        }))
        .await;
    let want = acked.lock().unwrap().clone();
    converge(&members, &want).await;
}
