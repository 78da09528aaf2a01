//! Membership changes of a shard against the rule that makes them safe (DESIGN.md
//! "Membership changes of a shard", Raft's single-server change rule): a voter-set change
//! starts only once the previous epoch's barrier is committed by a majority of that epoch's
//! voters, and `/rm` answers only then (or fails clearly).
//!
//! Without the rule, two removals back to back are two voters dropped at once:
//! {A, B, C, D, E} -> {A, C, D, E} -> {A, D, E} lets {D, E} elect a primary without a write
//! that only A, B and C held. The test makes exactly that happen: D and E lag (stopped with
//! SIGSTOP, not dead: the dead-node timeout is a minute), X commits on {A, B, C}, `/rm` of
//! B and C starts, then A dies with its disk (one failure among the three voters left), D
//! and E restart on their own logs, and X must still be there.

mod common;

use std::time::Duration;

use common::{http, node_pid, poll, signal, try_http, ClusterProc};
use serde_json::{json, Value as Json};

/// How long `/rm` gets to answer before A's disk is lost (without the rule it answered in
/// about 0.3 s; with it, it cannot answer while D and E lag).
const RM_HEAD_START: Duration = Duration::from_secs(3);
/// Longest the shard may take to take writes again once D and E restart.
const RECOVERY: Duration = Duration::from_secs(30);

fn one_shard_on_five() -> Json {
    json!({"N": 5,
        "schema": {"columns": ["Stud_id", "Stud_name", "Stud_marks"], "dtypes": ["Number", "String", "String"]},
        "shards": [{"Stud_id_low": 0, "Shard_id": "sh1", "Shard_size": 1000}],
        "servers": {"Server1": ["sh1"], "Server2": ["sh1"], "Server3": ["sh1"],
                    "Server4": ["sh1"], "Server5": ["sh1"]}})
}

/// Every row of sh1 as each server holds it, for the failure report.
async fn replicas_report(addr: std::net::SocketAddr, names: &[&str]) -> String {
    let mut out = String::new();
    for n in names {
        let r = try_http(addr, "GET", &format!("/read/{n}"), None).await;
        out.push_str(&format!("\n  {n}: {r:?}"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_removals_back_to_back_keep_a_write_the_remaining_voters_lack() {
    let dir = tempfile::tempdir().unwrap();
    let up = ClusterProc::up(0, dir.path(), &["--dead-after-ms", "60000"]);
    let addr = up.http();
    let (code, body) = http(addr, "POST", "/init", Some(one_shard_on_five())).await;
    assert_eq!(code, 200, "/init: {body}");
    let (_, status) = http(addr, "GET", "/status", None).await;
    let a = status["shards"][0]["primary"].as_str().expect("a primary").to_string();
    let others: Vec<String> = (1..=5).map(|i| format!("Server{i}")).filter(|n| *n != a).collect();
    let (b, c, d, e) = (&others[0], &others[1], &others[2], &others[3]);

    // D and E lag behind.
    let pd = node_pid(up.pid(), d).expect("D runs");
    let pe = node_pid(up.pid(), e).expect("E runs");
    signal(pd, "STOP");
    signal(pe, "STOP");

    // X commits on {A, B, C} and is acknowledged.
    let x = json!({"Stud_id": 7, "Stud_name": "X", "Stud_marks": "1"});
    let (code, body) = http(addr, "POST", "/write", Some(json!({"data": [x.clone()]}))).await;
    assert_eq!(code, 200, "write of X: {body}");

    // /rm of B and C.
    let rm_body = json!({"n": 2, "servers": [b, c]});
    let mut rm = tokio::spawn(async move { try_http(addr, "DELETE", "/rm", Some(rm_body)).await });
    let early = tokio::time::timeout(RM_HEAD_START, &mut rm).await.ok();
    eprintln!("fault_membership: /rm of {b} and {c} while {d} and {e} lag: {early:?}");

    // A dies with its disk; D and E restart (what the primary had sent them while they
    // were stopped dies in their sockets: they come back with the logs they had).
    let pa = node_pid(up.pid(), &a).expect("A runs");
    std::fs::remove_dir_all(dir.path().join("nodes").join(&a)).expect("remove A's data");
    signal(pa, "KILL");
    signal(pd, "KILL");
    signal(pe, "KILL");

    // The shard takes writes again, and X is there.
    let y = json!({"Stud_id": 8, "Stud_name": "Y", "Stud_marks": "2"});
    let wrote = poll(RECOVERY, || {
        let y = y.clone();
        async move {
            let r = try_http(addr, "POST", "/write", Some(json!({"data": [y]}))).await;
            matches!(r, Ok((200, _))).then_some(())
        }
    })
    .await;
    assert!(wrote.is_some(), "sh1 took no write within {RECOVERY:?} after D and E restarted");
    let read = json!({"Stud_id": {"low": 0, "high": 999}, "consistency": "linearizable"});
    let (code, body) = http(addr, "POST", "/read", Some(read)).await;
    assert_eq!(code, 200, "read: {body}");
    let (_, status) = http(addr, "GET", "/status", None).await;
    let names = ["Server1", "Server2", "Server3", "Server4", "Server5"];
    let ids: Vec<i64> =
        body["data"].as_array().unwrap().iter().filter_map(|r| r["Stud_id"].as_i64()).collect();
    assert!(
        ids.contains(&7),
        "the acknowledged write X (Stud_id 7) is lost: the shard holds {ids:?}; /status {status};{}",
        replicas_report(addr, &names).await
    );
    assert!(ids.contains(&8), "the write Y is missing: {ids:?}");

    // However /rm ended, it did not claim a removal that was not safe: it answered 200 only
    // with both servers gone, or a clear failure.
    let answer = match early {
        Some(a) => a,
        None => tokio::time::timeout(RECOVERY, rm).await.expect("/rm answers"),
    };
    match answer {
        Ok(Ok((200, body))) => {
            let (_, status) = http(addr, "GET", "/status", None).await;
            for n in [b, c] {
                assert!(
                    status["servers"].get(n.as_str()).is_none(),
                    "{n} still listed: {status}; rm said {body}"
                );
            }
        }
        Ok(Ok((code, body))) => {
            assert!(code >= 400, "/rm: {code} {body}");
            assert_eq!(body["status"], "failure", "/rm: {body}");
        }
        other => panic!("/rm did not answer: {other:?}"),
    }
}
