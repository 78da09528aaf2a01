//! Every server endpoint over the HTTP shim: the contract's exact JSON on success, and each
//! error path with its code, all on one keep-alive connection.

mod common;

use common::{assert_failure, row, schema, start, Http};
use serde_json::json;

async fn configured() -> (tempfile::TempDir, node::NodeServer, Http) {
    let dir = tempfile::tempdir().unwrap();
    let server = start("Server0", dir.path()).await;
    let mut h = Http::connect(server.http_addr().unwrap()).await;
    let got = h
        .req(
            "POST",
            "/config",
            Some(json!({"schema": schema(), "shards": [
                {"Shard_id": "sh1", "Stud_id_low": 0, "Shard_size": 4096},
                {"Shard_id": "sh2", "Stud_id_low": 4096, "Shard_size": 4096}]})),
        )
        .await;
    assert_eq!(
        got,
        (200, json!({"message": "Server0:sh1, Server0:sh2 configured", "status": "success"}))
    );
    (dir, server, h)
}

#[tokio::test]
async fn home_and_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let server = start("Server7", dir.path()).await;
    let mut h = Http::connect(server.http_addr().unwrap()).await;
    assert_eq!(
        h.req("GET", "/home", None).await,
        (200, json!({"message": "Hello from Server: Server7", "status": "successful"}))
    );
    assert_eq!(h.req("GET", "/heartbeat", None).await, (200, serde_json::Value::Null));
    assert_failure(
        &h.req("GET", "/nothing", None).await,
        404,
        "'/nothing' endpoint does not exist",
    );
    let got = h.req("POST", "/home", None).await;
    assert_eq!(got.0, 405);
    assert_eq!(got.1["status"], "failure");
    server.shutdown().await;
}

#[tokio::test]
async fn config_accepts_plain_names_and_rejects_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let server = start("Server0", dir.path()).await;
    let mut h = Http::connect(server.http_addr().unwrap()).await;
    let got =
        h.req("POST", "/config", Some(json!({"schema": schema(), "shards": ["sh1", "sh2"]}))).await;
    assert_eq!(
        got,
        (200, json!({"message": "Server0:sh1, Server0:sh2 configured", "status": "success"}))
    );
    // Configuring again with the same schema is harmless.
    let got = h.req("POST", "/config", Some(json!({"schema": schema(), "shards": ["sh1"]}))).await;
    assert_eq!(got.0, 200);
    assert_failure(
        &h.req("POST", "/config", Some(json!({"shards": ["sh1"]}))).await,
        400,
        "'schema'",
    );
    assert_failure(
        &h.req("POST", "/config", Some(json!({"schema": schema()}))).await,
        400,
        "'shards'",
    );
    assert_failure(
        &h.req(
            "POST",
            "/config",
            Some(json!({"schema": {"columns": ["a"], "dtypes": ["Number"]}, "shards": ["sh3"]})),
        )
        .await,
        400,
        "Stud_id",
    );
    assert_failure(
        &h.req("POST", "/config", Some(json!({"schema": {"columns": ["Stud_id", "x"], "dtypes": ["Number", "Blob"]}, "shards": ["sh3"]}))).await,
        400,
        "Blob",
    );
    assert_failure(
        &h.req("POST", "/config", Some(json!({"schema": schema(), "shards": ["../evil"]}))).await,
        400,
        "invalid shard id",
    );
    let other = json!({"columns": ["Stud_id", "Stud_name"], "dtypes": ["Number", "String"]});
    assert_failure(
        &h.req("POST", "/config", Some(json!({"schema": other, "shards": ["sh1"]}))).await,
        400,
        "another schema",
    );
    assert_failure(&h.raw("POST", "/config", b"{not json").await, 400, "not valid JSON");
    assert_failure(&h.raw("POST", "/config", b"[1,2]").await, 400, "JSON object");
    // None of the refused configurations created a shard.
    let got = h.req("GET", "/copy", Some(json!({"shards": ["sh3"]}))).await;
    assert_failure(&got, 400, "sh3");
    server.shutdown().await;
}

#[tokio::test]
async fn write_read_update_delete_copy_with_the_contract_json() {
    let (_dir, server, mut h) = configured().await;
    let got = h
        .req(
            "POST",
            "/write",
            Some(json!({"shard": "sh1", "curr_idx": 0, "data": [row(2255), row(2535), row(2536)]})),
        )
        .await;
    assert_eq!(
        got,
        (200, json!({"message": "Data entries added", "current_idx": 3, "status": "success"}))
    );
    let got = h.req("POST", "/write", Some(json!({"shard": "sh1", "data": [row(10)]}))).await;
    assert_eq!(got.1["current_idx"], 4);

    let got = h
        .req("POST", "/read", Some(json!({"shard": "sh1", "Stud_id": {"low": 2235, "high": 2555}})))
        .await;
    assert_eq!(got, (200, json!({"data": [row(2255), row(2535), row(2536)], "status": "success"})));
    // GET with a body, as the original clients send it; bounds are inclusive.
    let got = h
        .req("GET", "/read", Some(json!({"shard": "sh1", "Stud_id": {"low": 2535, "high": 2536}})))
        .await;
    assert_eq!(got.1["data"], json!([row(2535), row(2536)]));

    let got = h.req("PUT", "/update", Some(json!({"shard": "sh1", "Stud_id": 2255, "data": {"Stud_id": 2255, "Stud_name": "GHI", "Stud_marks": 28}}))).await;
    assert_eq!(
        got,
        (200, json!({"message": "Data entry for Stud_id:2255 updated", "status": "success"}))
    );
    let got = h
        .req("POST", "/read", Some(json!({"shard": "sh1", "Stud_id": {"low": 2255, "high": 2255}})))
        .await;
    assert_eq!(got.1["data"], json!([{"Stud_id": 2255, "Stud_name": "GHI", "Stud_marks": 28}]));

    let got = h.req("DELETE", "/del", Some(json!({"shard": "sh1", "Stud_id": 2535}))).await;
    assert_eq!(
        got,
        (200, json!({"message": "Data entry with Stud_id:2535 removed", "status": "success"}))
    );

    let got = h.req("GET", "/copy", Some(json!({"shards": ["sh2", "sh1"]}))).await;
    assert_eq!(
        got,
        (
            200,
            json!({"sh2": [], "sh1": [row(10), {"Stud_id": 2255, "Stud_name": "GHI", "Stud_marks": 28}, row(2536)], "status": "success"})
        )
    );
    // Key order of the answer: the shards as asked, then status.
    let keys: Vec<&String> = got.1.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["sh2", "sh1", "status"]);
    server.shutdown().await;
}

#[tokio::test]
async fn values_come_back_as_written() {
    let (_dir, server, mut h) = configured().await;
    let written = json!({"Stud_id": "2255", "Stud_name": 42, "Stud_marks": "A+"});
    let got =
        h.req("POST", "/write", Some(json!({"shard": "sh1", "data": [written.clone()]}))).await;
    assert_eq!(got.0, 200, "{:?}", got.1);
    let got = h
        .req(
            "POST",
            "/read",
            Some(json!({"shard": "sh1", "Stud_id": {"low": "2000", "high": 3000}})),
        )
        .await;
    assert_eq!(got.1["data"], json!([written]));
    server.shutdown().await;
}

#[tokio::test]
async fn write_errors_name_the_row_and_change_nothing() {
    let (_dir, server, mut h) = configured().await;
    h.req("POST", "/write", Some(json!({"shard": "sh1", "data": [row(1)]}))).await;
    // A duplicate in a multi-row write: nothing of it is written.
    let got =
        h.req("POST", "/write", Some(json!({"shard": "sh1", "data": [row(2), row(1)]}))).await;
    assert_failure(&got, 400, "Stud_id 1 already exists");
    assert_failure(
        &h.req("POST", "/write", Some(json!({"shard": "sh1", "data": [row(3), row(3)]}))).await,
        400,
        "Stud_id 3 appears twice",
    );
    assert_failure(
        &h.req("POST", "/write", Some(json!({"shard": "sh1", "data": [row(4), row(5000)]}))).await,
        400,
        "Stud_id 5000 is outside shard sh1",
    );
    assert_failure(
        &h.req("POST", "/write", Some(json!({"shard": "sh9", "data": [row(4)]}))).await,
        400,
        "sh9",
    );
    assert_failure(
        &h.req(
            "POST",
            "/write",
            Some(json!({"shard": "sh1", "data": [{"Stud_id": 6, "Stud_name": "x"}]})),
        )
        .await,
        400,
        "'Stud_marks'",
    );
    assert_failure(&h.req("POST", "/write", Some(json!({"shard": "sh1", "data": [{"Stud_id": 6.5, "Stud_name": "x", "Stud_marks": 1}]}))).await, 400, "Stud_id");
    assert_failure(&h.req("POST", "/write", Some(json!({"shard": "sh1", "data": [{"Stud_id": 6, "Stud_name": null, "Stud_marks": 1}]}))).await, 400, "Stud_name");
    assert_failure(&h.req("POST", "/write", Some(json!({"shard": "sh1"}))).await, 400, "'data'");
    assert_failure(&h.req("POST", "/write", Some(json!({"data": [row(7)]}))).await, 400, "'shard'");
    assert_failure(
        &h.req("POST", "/write", Some(json!({"shard": 1, "data": [row(7)]}))).await,
        400,
        "'shard'",
    );
    assert_failure(
        &h.req("POST", "/write", Some(json!({"shard": "sh1", "curr_idx": "x", "data": [row(7)]})))
            .await,
        400,
        "'curr_idx'",
    );
    let got = h
        .req("POST", "/read", Some(json!({"shard": "sh1", "Stud_id": {"low": 0, "high": 4095}})))
        .await;
    assert_eq!(got.1["data"], json!([row(1)]), "a refused write changed the shard");
    server.shutdown().await;
}

#[tokio::test]
async fn read_update_delete_copy_errors() {
    let (_dir, server, mut h) = configured().await;
    h.req("POST", "/write", Some(json!({"shard": "sh1", "data": [row(1)]}))).await;
    assert_failure(
        &h.req("POST", "/read", Some(json!({"shard": "sh1", "Stud_id": {"low": 5, "high": 4}})))
            .await,
        400,
        "greater than",
    );
    assert_failure(
        &h.req("POST", "/read", Some(json!({"shard": "sh1", "Stud_id": {"low": 5}}))).await,
        400,
        "'high'",
    );
    assert_failure(
        &h.req("POST", "/read", Some(json!({"shard": "sh1", "Stud_id": 5}))).await,
        400,
        "'Stud_id'",
    );
    assert_failure(
        &h.req("POST", "/read", Some(json!({"shard": "nope", "Stud_id": {"low": 1, "high": 2}})))
            .await,
        400,
        "nope",
    );
    let upd = |id: i64, data_id: i64| json!({"shard": "sh1", "Stud_id": id, "data": {"Stud_id": data_id, "Stud_name": "Z", "Stud_marks": 1}});
    assert_failure(&h.req("PUT", "/update", Some(upd(2, 2))).await, 404, "Stud_id:2");
    assert_failure(&h.req("PUT", "/update", Some(upd(1, 2))).await, 400, "differs");
    assert_failure(
        &h.req("PUT", "/update", Some(json!({"shard": "sh1", "Stud_id": 1}))).await,
        400,
        "'data'",
    );
    assert_failure(
        &h.req("DELETE", "/del", Some(json!({"shard": "sh1", "Stud_id": 99}))).await,
        404,
        "Stud_id:99",
    );
    assert_failure(&h.req("DELETE", "/del", Some(json!({"shard": "sh1"}))).await, 400, "'Stud_id'");
    assert_failure(
        &h.req("GET", "/copy", Some(json!({"shards": ["sh1", "sh7"]}))).await,
        400,
        "sh7",
    );
    assert_failure(&h.req("GET", "/copy", Some(json!({"shards": "sh1"}))).await, 400, "'shards'");
    let got = h.req("GET", "/copy", Some(json!({"shards": ["sh1"]}))).await;
    assert_eq!(got.1["sh1"], json!([row(1)]), "a refused request changed the shard");
    server.shutdown().await;
}

#[tokio::test]
async fn an_oversized_body_gets_413_and_the_connection_stays_usable_for_others() {
    let (_dir, server, _h) = configured().await;
    let mut big = Http::connect(server.http_addr().unwrap()).await;
    let body = vec![b' '; node::MAX_HTTP_BODY_BYTES + 1];
    let got = big.raw("POST", "/write", &body).await;
    assert_failure(&got, 413, "larger than");
    let mut other = Http::connect(server.http_addr().unwrap()).await;
    assert_eq!(other.req("GET", "/home", None).await.0, 200);
    server.shutdown().await;
}
