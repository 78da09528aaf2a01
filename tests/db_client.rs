//! The Rust client over the router's binary door against a real `shardgate up --init
//! default`: the contract's stage 2/3 examples and errors through `client::Db`, the same
//! answers as over HTTP, and `--init` itself (a restart on the same data skips it, a bad
//! configuration stops `up` with a clear error and leaves no process behind).

mod common;

use std::time::Duration;

use client::{Connection, Db, DbError};
use common::*;
use protocol::{Consistency, DbReadReq, Request, Response};
use serde_json::{json, Value as Json};

fn row(id: i64, name: &str, marks: i64) -> Json {
    json!({"Stud_id": id, "Stud_name": name, "Stud_marks": marks})
}

fn status_without_primaries(mut s: Json) -> Json {
    for shard in s["shards"].as_array_mut().into_iter().flatten() {
        shard.as_object_mut().map(|o| o.remove("primary"));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contract_through_the_binary_client() {
    let dir = tempfile::tempdir().unwrap();
    let up = ClusterProc::up(0, dir.path(), &["--init", "default"]);
    let bin = Db::connect_binary(up.addr("binary")).await.unwrap();
    let http = Db::connect(up.http()).await.unwrap();

    // /status: the default configuration, the same through both doors.
    let status = bin.status().await.unwrap();
    assert_eq!(status, http.status().await.unwrap());
    let want = json!({"N": 6,
        "schema": {"columns": ["Stud_id", "Stud_name", "Stud_marks"], "dtypes": ["Number", "String", "String"]},
        "shards": [{"Stud_id_low": 0, "Shard_id": "sh1", "Shard_size": 4096},
                   {"Stud_id_low": 4096, "Shard_id": "sh2", "Shard_size": 4096},
                   {"Stud_id_low": 8192, "Shard_id": "sh3", "Shard_size": 4096},
                   {"Stud_id_low": 12288, "Shard_id": "sh4", "Shard_size": 4096}],
        "servers": {"Server0": ["sh1", "sh2"], "Server1": ["sh3", "sh4"], "Server3": ["sh1", "sh3"],
                    "Server4": ["sh4", "sh2"], "Server5": ["sh1", "sh4"], "Server6": ["sh3", "sh2"]},
        "status": "success"});
    assert_eq!(status_without_primaries(status.clone()), want);
    for shard in status["shards"].as_array().unwrap() {
        let primary = shard["primary"].as_str().expect("every shard has a primary");
        let holders = &status["servers"][primary];
        assert!(holders.as_array().unwrap().contains(&shard["Shard_id"]), "{status}");
    }

    // /write, /read across shards, in Stud_id order.
    let rows = [row(1000, "A", 50), row(2255, "B", 27), row(8889, "C", 70)];
    assert_eq!(bin.write(&rows).await.unwrap(), 3);
    assert_eq!(bin.read(1000, 8889).await.unwrap(), rows);
    // The typed answer names the shards queried, as /read's shards_queried does.
    let conn = Connection::connect(up.addr("binary"), "test").await.unwrap();
    let req =
        Request::DbRead(DbReadReq { low: 1000, high: 8889, consistency: Consistency::Default });
    match conn.call(req).await {
        Ok(Response::DbRows { shards_queried, rows }) => {
            assert_eq!(shards_queried, ["sh1", "sh2", "sh3"]);
            assert_eq!(rows.len(), 3);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(bin.read_linearizable(0, 20000).await.unwrap(), rows);
    // /update, /del.
    bin.update(2255, &row(2255, "GHI", 30)).await.unwrap();
    bin.delete(8889).await.unwrap();
    let now = [row(1000, "A", 50), row(2255, "GHI", 30)];
    assert_eq!(bin.read(0, 20000).await.unwrap(), now);
    assert_eq!(http.read(0, 20000).await.unwrap(), now);
    // /read/<server>: every shard on that server, as over HTTP.
    let s0 = bin.read_server("Server0").await.unwrap();
    assert_eq!(s0, http.read_server("Server0").await.unwrap());
    assert_eq!(s0["sh1"], now);
    assert!(s0["sh2"].is_empty());

    // Errors: the contract's status, and nothing changed.
    let outside = bin.write(&[row(5, "ok", 1), row(99_999, "X", 1)]).await.unwrap_err();
    assert_eq!(outside.status, 400, "{outside}");
    assert!(outside.message.contains("99999"), "{outside}");
    let dup = bin.write(&[row(1000, "again", 1)]).await.unwrap_err();
    assert_eq!(dup.status, 400, "{dup}");
    assert_eq!(bin.delete(8889).await.unwrap_err().status, 404);
    assert_eq!(bin.read(10, 5).await.unwrap_err().status, 400);
    assert_eq!(bin.read_server("Nope").await.unwrap_err().status, 404);
    let second_init = bin.init(&lb::catalog::default_config()).await.unwrap_err();
    assert_eq!(second_init.status, 400, "{second_init}");
    assert_eq!(bin.read(0, 20000).await.unwrap(), now, "a refused request changed data");

    // Admin through the binary door: /add a server holding sh1, /primary_elect, /rm.
    let added = bin.add(&json!({"n": 1, "servers": {"Server9": ["sh1"]}})).await.unwrap();
    assert_eq!(added["N"], 7, "{added}");
    let caught_up = poll(Duration::from_secs(30), || async {
        let rows = bin.read_server("Server9").await.ok()?;
        (rows.get("sh1")? == &now[..]).then_some(())
    })
    .await;
    assert!(caught_up.is_some(), "Server9 did not get sh1's rows");
    let primaries = bin.primary_elect(None).await.unwrap();
    assert_eq!(primaries.len(), 4, "{primaries:?}");
    let removed = bin.rm(1, &["Server9"]).await.unwrap();
    assert_eq!(removed, ["Server9"]);
    assert_eq!(bin.status().await.unwrap()["N"], 6);
    let e = bin.rm(1, &["Server0", "Server1"]).await.unwrap_err();
    assert_eq!(
        e,
        DbError {
            status: 400,
            message: "<Error> Length of server list is more than removable instances".into()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_runs_once_and_a_bad_configuration_stops_up_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = ClusterProc::up(0, dir.path(), &["--init", "default"]);
    let db = Db::connect_binary(up.addr("binary")).await.unwrap();
    db.write(&[row(77, "kept", 1)]).await.unwrap();
    signal(up.pid(), "TERM");
    assert!(up.wait_exit(Duration::from_secs(30)).is_some(), "up did not stop on SIGTERM");
    // Again on the same data: --init finds a configured database and leaves it alone.
    let up = ClusterProc::up(0, dir.path(), &["--init", "default"]);
    let db = Db::connect_binary(up.addr("binary")).await.unwrap();
    let back = poll(Duration::from_secs(30), || async {
        db.read(0, 20000).await.ok().filter(|r| !r.is_empty())
    })
    .await;
    assert_eq!(back, Some(vec![row(77, "kept", 1)]));
    assert_eq!(db.status().await.unwrap()["N"], 6);
    drop(up);

    // A configuration the manager refuses: up exits non-zero, naming the problem, and no
    // node outlives it.
    let bad = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args(["up", "--http", "127.0.0.1:0", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(bad.path())
        .args(["--init", r#"{"N": 1, "schema": {"columns": ["x"], "dtypes": ["Number"]}}"#])
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--init") && err.contains("400"), "{err}");
    let leftovers: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|&p| cmdline(p).contains(bad.path().to_str().unwrap()) && pid_alive(p))
        .collect();
    assert!(leftovers.is_empty(), "processes left behind: {leftovers:?}");
}
