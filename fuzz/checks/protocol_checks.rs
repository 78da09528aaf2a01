//! What the protocol-level fuzz targets check, shared with the regression tests
//! (`protocol/tests/fuzz_regressions.rs` replays every saved crash through these same
//! functions). Each takes arbitrary bytes and panics only on a real fault.
#![allow(dead_code)]

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::SinkExt;
use protocol::handshake::{client_handshake_with, server_handshake_with, Hello, HelloReply};
use protocol::json::{
    key_field, object_body, row_from_json, row_to_json, rows_from_json, schema_from_json,
    shard_specs_from_json,
};
use protocol::{wire, RequestFrame, ResponseFrame, Schema};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::codec::Decoder;

/// A small frame limit, so inputs of a few KiB reach the "too long" path too.
const SMALL_MAX: usize = 64;

/// A value decoded from any bytes re-encodes to bytes that decode to the same value
/// (compared as bytes: a float may be NaN).
pub fn round_trips<T: Serialize + DeserializeOwned>(data: &[u8]) {
    if let Ok(v) = wire::decode::<T>(data) {
        let once = wire::encode(&v).expect("a decoded value encodes");
        let again: T = wire::decode(&once).expect("its encoding decodes");
        assert_eq!(wire::encode(&again).unwrap(), once, "a round trip changed the value");
    }
}

fn frames(data: &[u8], max: usize) {
    let mut codec = protocol::frame_codec(max);
    // Fed in two pieces, as a stream arrives: the first byte is the split point.
    let split = data.first().map_or(0, |&b| (b as usize).min(data.len()));
    let mut buf = BytesMut::from(&data[..split]);
    let mut rest = &data[split..];
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(frame)) => {
                assert!(frame.len() <= max, "a {}-byte frame over the {max} limit", frame.len());
                let _ = wire::decode::<RequestFrame>(&frame);
                let _ = wire::decode::<ResponseFrame>(&frame);
            }
            Ok(None) if !rest.is_empty() => {
                buf.extend_from_slice(rest);
                rest = &[];
            }
            Ok(None) | Err(_) => break,
        }
    }
    let _ = codec.decode_eof(&mut buf);
}

/// The frame decoder on an arbitrary stream: frames no longer than the limit, or an error;
/// every frame then decoded as a request and as an answer.
pub fn frame_codec(data: &[u8]) {
    frames(data, protocol::MAX_FRAME_LEN);
    frames(data, SMALL_MAX);
}

/// Every request a binary door decodes.
pub fn request_frame(data: &[u8]) {
    round_trips::<RequestFrame>(data);
}

/// Every answer a client, router or replicating primary decodes.
pub fn response_frame(data: &[u8]) {
    round_trips::<ResponseFrame>(data);
}

/// Runs one side of the handshake on a pipe whose other end sends `frame`, then closes.
async fn handshake_against(frame: &[u8], server: bool, secret: Option<&[u8]>) {
    let (a, b) = tokio::io::duplex(1 << 16);
    let mut ours = protocol::framed(a);
    let mut peer = protocol::framed(b);
    let frame = Bytes::copy_from_slice(frame);
    let feed = async move {
        let _ = peer.send(frame).await;
        drop(peer);
    };
    let side = async {
        if server {
            let _ = server_handshake_with(&mut ours, "fuzz", secret).await;
        } else {
            let _ = client_handshake_with(&mut ours, "fuzz", secret).await;
        }
    };
    let both = async { tokio::join!(feed, side) };
    tokio::time::timeout(Duration::from_secs(5), both).await.expect("the handshake hung");
}

/// The handshake with an arbitrary first frame from the peer, both sides, with and without
/// a cluster secret: a hello, a name or an error, never a panic or a hang.
pub fn handshake(rt: &tokio::runtime::Runtime, data: &[u8]) {
    let _ = wire::decode::<HelloReply>(data);
    if let Ok(h) = wire::decode::<Hello>(data) {
        let _ = protocol::check_hello(&h);
    }
    round_trips::<Hello>(data);
    rt.block_on(async {
        handshake_against(data, true, None).await;
        handshake_against(data, true, Some(b"fuzz secret")).await;
        handshake_against(data, false, None).await;
        handshake_against(data, false, Some(b"fuzz secret")).await;
    });
}

fn is_contract_message(m: &str) -> bool {
    m.starts_with("<Error> ")
}

fn check_row(schema: &Schema, v: &serde_json::Value) {
    match row_from_json(schema, v) {
        Ok(row) => {
            let back = row_from_json(schema, &row_to_json(schema, &row))
                .expect("a row written back as JSON parses");
            assert_eq!(
                wire::encode(&back).unwrap(),
                wire::encode(&row).unwrap(),
                "a row changed when written back as JSON"
            );
        }
        Err(e) => assert!(is_contract_message(&e.message), "{}", e.message),
    }
}

/// The JSON bodies of both HTTP doors: `object_body`, then every field parser the node and
/// the router apply (rows, one row, keys, schemas, shard lists). A value, or a message in
/// the contract's form; an accepted row written back as JSON parses to the same row.
pub fn json_bodies(data: &[u8]) {
    let body = match object_body(data) {
        Ok(b) => b,
        Err(e) => {
            assert!(is_contract_message(&e.message), "{}", e.message);
            return;
        }
    };
    let default = Schema::student_default();
    let null = serde_json::Value::Null;
    let rows = body.get("data").unwrap_or(&null);
    if let Err(e) = rows_from_json(&default, rows) {
        assert!(is_contract_message(&e.message), "{}", e.message);
    }
    check_row(&default, rows);
    for r in rows.as_array().into_iter().flatten().take(64) {
        check_row(&default, r);
    }
    for field in ["Stud_id", "low", "high"] {
        if let Err(e) = key_field(&body, field) {
            assert!(is_contract_message(&e.message), "{}", e.message);
        }
    }
    if let Some(range) = body.get("Stud_id") {
        let _ = key_field(range, "low");
        let _ = key_field(range, "high");
    }
    if let Err(e) = shard_specs_from_json(body.get("shards").unwrap_or(&null)) {
        assert!(is_contract_message(&e.message), "{}", e.message);
    }
    match schema_from_json(body.get("schema").unwrap_or(&null)) {
        Ok(schema) => {
            for r in rows.as_array().into_iter().flatten().take(64) {
                check_row(&schema, r);
            }
        }
        Err(e) => assert!(is_contract_message(&e.message), "{}", e.message),
    }
}
