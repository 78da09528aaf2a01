//! The router's database endpoints against real in-process nodes and a fake shard manager:
//! the contract's answers and errors, nothing written on bad input, reads that never go back
//! behind an acknowledged write, writes that follow a new primary, the admin endpoints passed
//! to the manager as they are, and two routers on one manager.

#[path = "router_db/harness.rs"]
mod harness;

use std::time::Duration;

use harness::*;
use protocol::{AdoptReq, FollowReq, PromoteReq, Quorum, Request, Response};
use serde_json::{json, Value as Json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_endpoints_answer_as_the_contract() {
    let c = Cluster::start().await;
    let mut h = c.http().await;

    // One write across three shards, values as written (a Stud_id as a string of digits).
    let rows = json!([row(1000), row(1001), {"Stud_id": "2255", "Stud_name": "GHI", "Stud_marks": "27"},
                      row(5000), row(8889), row(9000), row(12000)]);
    let got = h.req("POST", "/write", Some(json!({"data": rows}))).await;
    assert_eq!(got, (200, json!({"message": "7 Data entries added", "status": "success"})));
    // Grouped by shard: each row is on its shard's primary.
    let keys = |rows: Vec<protocol::Row>| rows.iter().map(|r| r.key).collect::<Vec<_>>();
    assert_eq!(keys(c.node("S0").rows("sh1").await), [1000, 1001, 2255]);
    assert_eq!(keys(c.node("S1").rows("sh2").await), [5000]);
    assert_eq!(keys(c.node("S2").rows("sh3").await), [8889, 9000, 12000]);

    let expected = json!({
        "shards_queried": ["sh1", "sh2", "sh3"],
        "data": [row(1000), row(1001), {"Stud_id": "2255", "Stud_name": "GHI", "Stud_marks": "27"},
                 row(5000), row(8889)],
        "status": "success"
    });
    let range = json!({"Stud_id": {"low": 1000, "high": 8889}});
    assert_eq!(h.req("POST", "/read", Some(range.clone())).await, (200, expected.clone()));
    assert_eq!(h.req("GET", "/read", Some(range)).await, (200, expected));
    let one = h.req("POST", "/read", Some(json!({"Stud_id": {"low": "4096", "high": 5000}}))).await;
    assert_eq!(
        one,
        (200, json!({"shards_queried": ["sh2"], "data": [row(5000)], "status": "success"}))
    );
    let lin = json!({"Stud_id": {"low": 0, "high": 20000}, "consistency": "linearizable"});
    let got = h.req("POST", "/read", Some(lin)).await;
    assert_eq!(got.0, 200);
    assert_eq!(got.1["data"].as_array().unwrap().len(), 7);
    let outside =
        h.req("POST", "/read", Some(json!({"Stud_id": {"low": 20000, "high": 30000}}))).await;
    assert_eq!(outside, (200, json!({"shards_queried": [], "data": [], "status": "success"})));

    // Update: the router's message has a space after the colon.
    let upd =
        json!({"Stud_id": "2255", "data": {"Stud_id": 2255, "Stud_name": "GHI", "Stud_marks": 30}});
    let got = h.req("PUT", "/update", Some(upd)).await;
    assert_eq!(
        got,
        (200, json!({"message": "Data entry for Stud_id: 2255 updated", "status": "success"}))
    );
    let got = h.req("POST", "/read", Some(json!({"Stud_id": {"low": 2255, "high": 2255}}))).await;
    assert_eq!(got.1["data"], json!([{"Stud_id": 2255, "Stud_name": "GHI", "Stud_marks": 30}]));
    let mismatch =
        json!({"Stud_id": 2255, "data": {"Stud_id": 2256, "Stud_name": "x", "Stud_marks": 1}});
    assert_failure(&h.req("PUT", "/update", Some(mismatch)).await, 400, "differs");
    let missing =
        json!({"Stud_id": 3000, "data": {"Stud_id": 3000, "Stud_name": "x", "Stud_marks": 1}});
    assert_failure(&h.req("PUT", "/update", Some(missing)).await, 404, "3000");
    let bad = json!({"Stud_id": 1000, "data": {"Stud_id": 1000, "Stud_marks": 1}});
    assert_failure(&h.req("PUT", "/update", Some(bad)).await, 400, "'Stud_name'");

    // Delete.
    let got = h.req("DELETE", "/del", Some(json!({"Stud_id": 2255}))).await;
    assert_eq!(
        got,
        (
            200,
            json!({"message": "Data entry with Stud_id:2255 removed from all replicas", "status": "success"})
        )
    );
    assert_failure(&h.req("DELETE", "/del", Some(json!({"Stud_id": 2255}))).await, 404, "2255");
    assert_failure(&h.req("DELETE", "/del", Some(json!({"Stud_id": 99999}))).await, 404, "99999");
    assert_failure(&h.req("DELETE", "/del", Some(json!({}))).await, 400, "'Stud_id'");

    // Every shard of one server, as that server holds it (a secondary of sh2 included).
    let got = h.req("GET", "/read/S0", None).await;
    assert_eq!(
        got,
        (200, json!({"sh1": [row(1000), row(1001)], "sh2": [row(5000)], "status": "success"}))
    );
    let got = h.req("GET", "/read/S3", None).await;
    assert_eq!(got.1["sh3"], json!([row(8889), row(9000), row(12000)]));
    assert_eq!(
        got.1.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["sh1", "sh2", "sh3", "status"]
    );
    assert_failure(&h.req("GET", "/read/Server42", None).await, 404, "Server42");

    // Read errors.
    let inverted = json!({"Stud_id": {"low": 10, "high": 5}});
    assert_failure(
        &h.req("POST", "/read", Some(inverted)).await,
        400,
        "low (10) is greater than high (5)",
    );
    assert_failure(&h.req("POST", "/read", Some(json!({}))).await, 400, "'Stud_id'");
    assert_failure(&h.req("POST", "/read", Some(json!({"Stud_id": 5}))).await, 400, "'Stud_id'");
    let low = json!({"Stud_id": {"low": "x", "high": 5}});
    assert_failure(&h.req("POST", "/read", Some(low)).await, 400, "'low'");
    let cons = json!({"Stud_id": {"low": 1, "high": 5}, "consistency": "strong"});
    assert_failure(&h.req("POST", "/read", Some(cons)).await, 400, "'consistency'");
    assert_eq!(h.raw("POST", "/read", b"{").await.0, 400);
    assert_failure(&h.req("DELETE", "/write", Some(json!({"data": []}))).await, 405, "DELETE");
    let empty = h.req("POST", "/write", Some(json!({"data": []}))).await;
    assert_eq!(empty, (200, json!({"message": "0 Data entries added", "status": "success"})));

    // Counted by endpoint and status.
    assert_eq!(
        metric(c.http, "shardgate_db_requests_total{endpoint=\"write\",status=\"200\"}").await,
        2
    );
    assert_eq!(
        metric(c.http, "shardgate_db_requests_total{endpoint=\"del\",status=\"404\"}").await,
        2
    );
    assert!(
        metric(c.http, "shardgate_http_requests_total{path=\"/read/<server>\",status=\"200\"}")
            .await
            >= 2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_writes_change_nothing_anywhere() {
    let c = Cluster::start().await;
    let mut h = c.http().await;
    let got = h.req("POST", "/write", Some(json!({"data": [row(1), row(4097)]}))).await;
    assert_eq!(got.0, 200);
    let before = c.everything().await;

    let cases: Vec<(Json, &str)> = vec![
        // Outside every shard.
        (
            json!([row(2), row(5000), row(20000)]),
            "Stud_id 20000 is outside every shard's range (row 2)",
        ),
        (json!([row(-1)]), "-1"),
        // Twice in one request.
        (json!([row(3), row(9000), row(3)]), "Stud_id 3 appears twice in the request (row 2)"),
        // Invalid rows.
        (json!([row(4), {"Stud_id": 5001, "Stud_marks": 1}]), "missing field 'Stud_name' (row 1)"),
        (json!([row(4), {"Stud_id": 5.5, "Stud_name": "x", "Stud_marks": 1}]), "'Stud_id'"),
        (json!([row(4), "not a row"]), "(row 1)"),
        // A key that exists, in a request that spans other shards too.
        (json!([row(5), row(5002), row(9001), row(1)]), "Stud_id 1 already exists in shard sh1"),
        (json!([row(5003), row(9002), row(4097)]), "Stud_id 4097 already exists in shard sh2"),
        // ... and in a request to one shard (the node refuses it).
        (json!([row(6), row(1)]), "Stud_id 1 already exists"),
    ];
    for (data, needle) in cases {
        let got = h.req("POST", "/write", Some(json!({"data": data}))).await;
        assert_failure(&got, 400, needle);
    }
    assert_failure(&h.req("POST", "/write", Some(json!({"rows": []}))).await, 400, "'data'");
    assert_failure(&h.req("POST", "/write", Some(json!({"data": {}}))).await, 400, "array");
    // A copy may lag on a secondary, but no node may hold a row that was refused.
    let after = c.everything().await;
    for (k, keys) in &after {
        assert!(keys.iter().all(|x| [1, 4097].contains(x)), "{k:?} holds {keys:?}");
    }
    assert_eq!(after.len(), before.len());
    let all = h.req("POST", "/read", Some(json!({"Stud_id": {"low": -100, "high": 99999}}))).await;
    assert_eq!(all.1["data"], json!([row(1), row(4097)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_right_after_an_acknowledged_change_sees_it() {
    let c = Cluster::start().await;
    let mut h = c.http().await;
    for i in 0..200i64 {
        // Even keys across the shards, so reads land on secondaries of every shard.
        let id = (i * 62) % 12288;
        let got = h.req("POST", "/write", Some(json!({"data": [row(id)]}))).await;
        assert_eq!(got.0, 200, "{got:?}");
        let got = h.req("POST", "/read", Some(json!({"Stud_id": {"low": id, "high": id}}))).await;
        assert_eq!(got.1["data"], json!([row(id)]), "write {i} of Stud_id {id} not read back");
    }
    for i in 0..50i64 {
        let id = (i * 62) % 12288;
        let new = json!({"Stud_id": id, "Stud_name": "changed", "Stud_marks": i});
        let got = h.req("PUT", "/update", Some(json!({"Stud_id": id, "data": new}))).await;
        assert_eq!(got.0, 200, "{got:?}");
        let got = h.req("POST", "/read", Some(json!({"Stud_id": {"low": id, "high": id}}))).await;
        assert_eq!(got.1["data"], json!([new]));
        let got = h.req("DELETE", "/del", Some(json!({"Stud_id": id}))).await;
        assert_eq!(got.0, 200, "{got:?}");
        let got = h.req("POST", "/read", Some(json!({"Stud_id": {"low": id, "high": id}}))).await;
        assert_eq!(got.1["data"], json!([]), "delete of {id} not seen");
    }
    // Concurrent clients, each reading its own writes.
    let mut tasks = Vec::new();
    for t in 0..8i64 {
        let addr = c.http;
        tasks.push(tokio::spawn(async move {
            let mut h = Http::connect(addr).await;
            for i in 0..25i64 {
                // Odd keys: the loops above wrote even ones.
                let id = 1 + 2 * (t * 700 + i);
                let got = h.req("POST", "/write", Some(json!({"data": [row(id)]}))).await;
                assert_eq!(got.0, 200, "{got:?}");
                let r =
                    h.req("GET", "/read", Some(json!({"Stud_id": {"low": id, "high": id}}))).await;
                assert_eq!(r.1["data"], json!([row(id)]));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Every read carried the LSN floor, and the floor moved.
    assert!(metric(c.http, "shardgate_db_shard_lsn{shard=\"sh2\"}").await > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_follow_a_new_primary() {
    let mut c = Cluster::start().await;
    let mut h = c.http().await;
    let write = |id: i64| json!({"data": [row(id)]});
    assert_eq!(h.req("POST", "/write", Some(write(10))).await.0, 200);

    // sh1 moves to S2 at epoch 2; the router's view still says S0: S0's hint is followed.
    elect(&c.nodes, "sh1", "S2", 2, &["S0", "S2", "S3"]).await;
    let got = h.req("POST", "/write", Some(write(11))).await;
    assert_eq!(got, (200, json!({"message": "1 Data entries added", "status": "success"})));
    assert!(metric(c.http, "shardgate_db_retries_total{reason=\"not_primary\"}").await >= 1);
    c.set_view(|v| {
        v.catalog.primary.insert("sh1".into(), "S2".into());
        v.catalog.epoch.insert("sh1".into(), 2);
    })
    .await;
    assert_eq!(h.req("POST", "/write", Some(write(12))).await.0, 200);

    // No primary at all for a while (epoch 3 adopted, nobody promoted): the write waits for
    // the catalog, then goes to the new primary.
    depose(&c.nodes, "sh1", 3, &["S0", "S2", "S3"]).await;
    let before = metric(c.http, "shardgate_db_retries_total{reason=\"not_primary\"}").await;
    let addr = c.http;
    let pending = tokio::spawn(async move {
        let mut h = Http::connect(addr).await;
        h.req("POST", "/write", Some(json!({"data": [row(13)]}))).await
    });
    while metric(c.http, "shardgate_db_retries_total{reason=\"not_primary\"}").await == before {
        tokio::task::yield_now().await;
    }
    elect(&c.nodes, "sh1", "S3", 3, &["S0", "S2", "S3"]).await;
    c.set_view(|v| {
        v.catalog.primary.insert("sh1".into(), "S3".into());
        v.catalog.epoch.insert("sh1".into(), 3);
    })
    .await;
    assert_eq!(pending.await.unwrap().0, 200);

    // The primary of sh2 stops: connections fail until the catalog names a new primary.
    c.node_mut("S1").stop().await;
    let before = metric(c.http, "shardgate_db_retries_total{reason=\"primary_unreachable\"}").await;
    let pending = tokio::spawn(async move {
        let mut h = Http::connect(addr).await;
        h.req("POST", "/write", Some(json!({"data": [row(5005)]}))).await
    });
    while metric(c.http, "shardgate_db_retries_total{reason=\"primary_unreachable\"}").await
        == before
    {
        tokio::task::yield_now().await;
    }
    elect(&c.nodes, "sh2", "S0", 2, &["S0", "S3"]).await;
    c.set_view(|v| {
        v.catalog.primary.insert("sh2".into(), "S0".into());
        v.catalog.epoch.insert("sh2".into(), 2);
        v.servers.iter_mut().find(|s| s.name == "S1").unwrap().alive = false;
    })
    .await;
    assert_eq!(pending.await.unwrap().0, 200);
    let upd =
        json!({"Stud_id": 5005, "data": {"Stud_id": 5005, "Stud_name": "x", "Stud_marks": 1}});
    assert_eq!(h.req("PUT", "/update", Some(upd)).await.0, 200);

    // Everything acknowledged is there, read through the survivors.
    let all = h.req("POST", "/read", Some(json!({"Stud_id": {"low": 0, "high": 12287}}))).await;
    let keys: Vec<i64> =
        all.1["data"].as_array().unwrap().iter().map(|r| r["Stud_id"].as_i64().unwrap()).collect();
    assert_eq!(keys, [10, 11, 12, 13, 5005]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_without_a_primary_is_a_clear_503() {
    let c = Cluster::start_with(true, |cfg| cfg.db_deadline = Duration::from_millis(300)).await;
    let mut h = c.http().await;
    assert_eq!(h.req("POST", "/write", Some(json!({"data": [row(1)]}))).await.0, 200);
    c.set_view(|v| {
        v.catalog.primary.remove("sh1");
    })
    .await;
    let got = h.req("POST", "/write", Some(json!({"data": [row(2)]}))).await;
    assert_failure(&got, 503, "shard sh1 has no primary");
    assert!(!got.1["message"].as_str().unwrap().contains("sh1: shard sh1"), "{got:?}");
    let del = h.req("DELETE", "/del", Some(json!({"Stud_id": 1}))).await;
    assert_failure(&del, 503, "sh1");
    // Reads of its replicas still work; a linearizable one needs the primary.
    let got = h.req("POST", "/read", Some(json!({"Stud_id": {"low": 0, "high": 10}}))).await;
    assert_eq!(got.1["data"], json!([row(1)]));
    let lin = json!({"Stud_id": {"low": 0, "high": 10}, "consistency": "linearizable"});
    assert_failure(&h.req("POST", "/read", Some(lin)).await, 503, "no primary");
    // Other shards are not held up.
    assert_eq!(h.req("POST", "/write", Some(json!({"data": [row(5000)]}))).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_reach_the_manager_as_they_are() {
    let c = Cluster::start().await;
    let mut h = c.http().await;
    let init = br#"{"N": 6, "schema": {}, "shards": [], "servers": {}}"#;
    let (op, body) = ("Init", String::from_utf8(init.to_vec()).unwrap());
    let got = h.raw("POST", "/init", init).await;
    assert_eq!(got, (200, format!("{{ \"op\" : \"{op}\",  \"bytes\" : {} }}", body.len())));
    assert_eq!(
        h.raw("GET", "/status", b"").await,
        (200, format!("{{ \"op\" : \"Status\",  \"bytes\" : 0, {STATUS_SCHEMA} }}"))
    );
    let add = br#"{"n": 2, "servers": {"Server4": ["sh3"], "Server[5]": ["sh2"]}}"#;
    assert_eq!(h.raw("POST", "/add", add).await.0, 200);
    let rm = br#"{"n": 2, "servers": ["Server4"]}"#;
    assert_eq!(h.raw("DELETE", "/rm", rm).await.0, 200);
    assert_eq!(h.raw("GET", "/primary_elect", br#"{"shard": "sh1"}"#).await.0, 200);
    assert_eq!(h.raw("GET", "/primary_elect", b"").await.0, 200);
    // The manager's refusal, passed on as is.
    let refused = h.raw("POST", "/init", br#"{"fail": 1}"#).await;
    assert_eq!(
        refused,
        (400, r#"{"message": "<Error> refused by the fake", "status": "failure"}"#.into())
    );
    let log = c.fake.admin_log.lock().unwrap().clone();
    let ops: Vec<String> = log.iter().map(|(op, _)| format!("{op:?}")).collect();
    assert_eq!(ops, ["Init", "Status", "Add", "Remove", "PrimaryElect", "PrimaryElect", "Init"]);
    assert_eq!(log[2].1.as_bytes(), add);
    assert_eq!(log[3].1.as_bytes(), rm);
    assert_eq!(log[4].1, r#"{"shard": "sh1"}"#);
    // Stage 1's forms still go to the membership.
    let got = h.req("POST", "/add", Some(json!({"n": 1, "hostnames": ["S5"]}))).await;
    assert_eq!(
        got,
        (200, json!({"message": {"N": 1, "replicas": ["S5"]}, "status": "successful"}))
    );
    assert_eq!(c.fake.admin_log.lock().unwrap().len(), 7);
    assert_failure(&h.req("GET", "/init", None).await, 405, "GET");
    assert_eq!(
        metric(c.http, "shardgate_db_requests_total{endpoint=\"init\",status=\"400\"}").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_init_data_endpoints_refuse_until_the_catalog_arrives() {
    let c = Cluster::start_with(false, |_| {}).await;
    let mut h = c.http().await;
    let calls: Vec<(&str, &str, Json)> = vec![
        ("POST", "/read", json!({"Stud_id": {"low": 0, "high": 10}})),
        ("POST", "/write", json!({"data": [row(1)]})),
        ("PUT", "/update", json!({"Stud_id": 1, "data": row(1)})),
        ("DELETE", "/del", json!({"Stud_id": 1})),
        ("GET", "/read/S0", json!({})),
    ];
    for (m, p, b) in &calls {
        let got = h.req(m, p, Some(b.clone())).await;
        assert_failure(&got, 400, "database not initialized");
    }
    // `/init` went through another router: this one fetches the catalog on the next request.
    c.fake.update(|v| v.catalog = catalog());
    let got = h.req("POST", "/write", Some(json!({"data": [row(1)]}))).await;
    assert_eq!(got.0, 200, "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routers_on_one_manager() {
    let c = Cluster::start().await;
    let (_other, other_http, _other_binary, _stop) = start_router(&c.fake, |_| {}).await;
    let mut a = c.http().await;
    let mut b = Http::connect(other_http).await;
    for i in 0..50i64 {
        let id = i * 250;
        assert_eq!(a.req("POST", "/write", Some(json!({"data": [row(id)]}))).await.0, 200);
        // Router B never saw A's write; a linearizable read asks the primary.
        let q = json!({"Stud_id": {"low": id, "high": id}, "consistency": "linearizable"});
        let got = b.req("POST", "/read", Some(q)).await;
        assert_eq!(got.1["data"], json!([row(id)]));
    }
    // B writes too, and A reads what B wrote once B acknowledged it.
    assert_eq!(b.req("PUT", "/update", Some(json!({"Stud_id": 0, "data": row(0)}))).await.0, 200);
    let q = json!({"Stud_id": {"low": 0, "high": 12287}, "consistency": "linearizable"});
    assert_eq!(a.req("POST", "/read", Some(q)).await.1["data"].as_array().unwrap().len(), 50);
}

/// sh1 moves to epoch 2 with S0 as its primary and S0 and S2 as its only voters: S3 keeps
/// serving reads of sh1 (the catalog still lists it) with what it had, and gets no more.
async fn cut_s3_off_sh1(c: &Cluster) {
    for n in ["S0", "S2"] {
        let adopted = c.node(n).call(Request::Adopt(AdoptReq { shard: "sh1".into(), epoch: 2 }));
        assert!(matches!(adopted.await, Response::Adopted { .. }));
    }
    let promoted = c.node("S0").call(Request::Promote(PromoteReq {
        shard: "sh1".into(),
        epoch: 2,
        voters: vec![c.node("S0").replica(), c.node("S2").replica()],
        learners: vec![],
        quorum: Quorum::Majority,
    }));
    assert!(matches!(promoted.await, Response::Replica(_)));
    let follow = FollowReq { shard: "sh1".into(), epoch: 2, primary: c.node("S0").replica() };
    assert!(matches!(c.node("S2").call(Request::Follow(follow)).await, Response::Replica(_)));
}

/// A router that has just started knows no LSN floor: its first read of a shard goes
/// through the primary, so it sees every write acknowledged before it started (by another
/// router here; by itself before a restart of `up` in `tests/fault_mix.rs`, which found it:
/// a replica that was behind answered the first read after the restart). S3 is made to lag
/// for good: sh1's primary replicates to S0 and S2 only, while the catalog still lists S3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_router_reads_every_write_acknowledged_before_it_started() {
    let c = Cluster::start().await;
    cut_s3_off_sh1(&c).await;
    let mut a = c.http().await;
    for i in 0..24i64 {
        let id = i * 97;
        assert_eq!(a.req("POST", "/write", Some(json!({"data": [row(id)]}))).await.0, 200);
        let (_b, b_http, _b_binary, stop) = start_router(&c.fake, |_| {}).await;
        let mut b = Http::connect(b_http).await;
        let got = b.req("POST", "/read", Some(json!({"Stud_id": {"low": id, "high": id}}))).await;
        assert_eq!(got.1["data"], json!([row(id)]), "a new router missed write {i} ({id})");
        let _ = stop.send(());
    }
}

/// A refusal that rests on the data ("no such row") raises the router's LSN floor like an
/// answer's LSN: after an update refused because another router deleted the row, no read
/// through this router shows the row again (found by the fault_mix soak, seed 104: an
/// update answered "missing", then the same client's read, served by a replica that had not
/// yet applied the delete, returned the row). S3 keeps serving reads of sh1 with what it
/// had when it stopped getting sh1's log: the row, not its delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_on_data_keeps_later_reads_from_going_back() {
    let c = Cluster::start().await;
    let mut a = c.http().await;
    let id = 42;
    assert_eq!(a.req("POST", "/write", Some(json!({"data": [row(id)]}))).await.0, 200);
    // Router A's floor is now at that write; S3 applies it too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !c.node("S3").rows("sh1").await.iter().any(|r| r.key == id) {
        assert!(tokio::time::Instant::now() < deadline, "S3 never applied the write");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // sh1's primary stops replicating to S3 (epoch 2, voters S0 and S2).
    cut_s3_off_sh1(&c).await;
    // Another router deletes the row; router A never sees that answer.
    let (_b, b_http, _b_binary, stop) = start_router(&c.fake, |_| {}).await;
    let mut b = Http::connect(b_http).await;
    assert_eq!(b.req("DELETE", "/del", Some(json!({"Stud_id": id}))).await.0, 200);
    let _ = stop.send(());
    // A's update is refused: the row is gone. From then on, A never shows it again.
    let upd = json!({"Stud_id": id, "data": {"Stud_id": id, "Stud_name": "x", "Stud_marks": 1}});
    assert_eq!(a.req("PUT", "/update", Some(upd)).await.0, 404);
    for i in 0..30 {
        let got = a.req("POST", "/read", Some(json!({"Stud_id": {"low": id, "high": id}}))).await;
        assert_eq!(got.1["data"], json!([]), "read {i} after the refused update shows the row");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_not_spread_to_learners() {
    let mut c = Cluster::start().await;
    let mut h = c.http().await;
    assert_eq!(h.req("POST", "/write", Some(json!({"data": [row(7)]}))).await.0, 200);
    // S3 is a learner of sh1 (still catching up, as far as the catalog knows) and is gone:
    // reads of sh1 never try it.
    c.set_view(|v| {
        v.catalog.voters.insert("sh1".into(), vec!["S0".into(), "S2".into()]);
    })
    .await;
    c.node_mut("S3").stop().await;
    for _ in 0..50 {
        let got = h.req("POST", "/read", Some(json!({"Stud_id": {"low": 0, "high": 100}}))).await;
        assert_eq!(got.1["data"], json!([row(7)]));
    }
    assert_eq!(
        metric(c.http, "shardgate_db_retries_total{reason=\"replica_unreachable\"}").await,
        0
    );
}
