//! Bad input, table-driven, over raw TCP against real processes: a `shardgate up --init
//! default` (the balancer) and a lone `shardgate node` (a server's HTTP shim).
//!
//! Every malformed request (bad JSON, wrong types, huge numbers, negative ids, ids outside
//! every shard, missing fields, unknown paths and methods, bodies of 10 MB and over the
//! limit, broken framing) must get the right 4xx, with the contract's error shape
//! `{"message": "<Error> ...", "status": "failure"}`, also where hyper answers by itself (a
//! request line or header block it cannot parse: `protocol::parse_errors`). Never a 5xx,
//! never a hang. Afterwards the data is exactly what it was: a full read, `/status` and
//! every server's rows through the balancer; `/copy` on the node.
//!
//! Slowloris: a request head sent one byte at a time is cut off by the server's header
//! timeout (10 s) while other clients are served at once; a body that stops half way is
//! cut off by the body timeout.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::raw_http::{exchange, json_call, read_reply, request, Reply};
use common::{ClusterProc, NodeProc};
use serde_json::{json, Value as Json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The body limit of both HTTP doors (`lb::router::MAX_HTTP_BODY_BYTES`,
/// `node::MAX_HTTP_BODY_BYTES`), asserted below.
const BODY_LIMIT: usize = 16 * 1024 * 1024;
/// How long one bad request may take to be answered.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// The servers' header read timeout (hyper's `header_read_timeout`).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The servers' body read timeout (`BODY_READ_TIMEOUT` of both HTTP doors).
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------

/// What a case must get: this status, with the contract's JSON error shape and a message
/// containing the text.
#[derive(Clone, Copy, Debug)]
struct Error(u16, &'static str);

struct Case {
    name: &'static str,
    raw: Vec<u8>,
    want: Error,
}

fn case(name: &'static str, method: &str, path: &str, body: &str, want: Error) -> Case {
    Case { name, raw: request(method, path, body.as_bytes()), want }
}

fn raw_case(name: &'static str, raw: Vec<u8>, want: Error) -> Case {
    Case { name, raw, want }
}

/// Checks one answer against what its case wants; `None` when it is right.
fn judge(c: &Case, got: &Result<Reply, String>) -> Option<String> {
    let r = match got {
        Ok(r) => r,
        Err(e) => return Some(format!("{}: {e}", c.name)),
    };
    let Error(code, needle) = c.want;
    let text = String::from_utf8_lossy(&r.body[..r.body.len().min(300)]).to_string();
    if r.status != code {
        return Some(format!("{}: status {} (wanted {code}): {text}", c.name, r.status));
    }
    let Some(j) = r.json() else {
        return Some(format!("{}: body is not JSON: {text:?}", c.name));
    };
    let shape_ok = j.as_object().is_some_and(|o| o.len() == 2)
        && j["status"] == "failure"
        && j["message"].as_str().is_some_and(|m| m.starts_with("<Error> "));
    if !shape_ok {
        return Some(format!("{}: not the contract's error shape: {j}", c.name));
    }
    let msg = j["message"].as_str().unwrap_or_default();
    if !msg.contains(needle) {
        return Some(format!("{}: message {msg:?} does not contain {needle:?}", c.name));
    }
    None
}

/// Runs every case; returns how many there were. Panics listing every wrong answer.
async fn run_table(addr: SocketAddr, cases: Vec<Case>, who: &str) -> usize {
    let n = cases.len();
    let mut wrong = Vec::new();
    let started = Instant::now();
    for c in &cases {
        let got = exchange(addr, &c.raw, ANSWER_WITHIN).await;
        if let Some(w) = judge(c, &got) {
            wrong.push(w);
        }
    }
    eprintln!("bad_input: {who}: {n} cases in {:?}", started.elapsed());
    assert!(
        wrong.is_empty(),
        "{who}: {} of {n} cases answered wrongly:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    n
}

/// Cases both doors share: framing, sizes, encodings.
fn framing_cases(write_body_of: impl Fn(&str) -> String) -> Vec<Case> {
    let mut v = Vec::new();
    v.push(raw_case(
        "garbage request line",
        b"GARBAGE\r\n\r\n".to_vec(),
        Error(400, "malformed HTTP request"),
    ));
    v.push(raw_case(
        "bad content-length",
        b"POST /write HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n{}".to_vec(),
        Error(400, "malformed HTTP request"),
    ));
    v.push(raw_case(
        "two different content-lengths",
        b"POST /write HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}"
            .to_vec(),
        Error(400, "malformed HTTP request"),
    ));
    v.push(raw_case(
        "a header without a colon",
        b"POST /write HTTP/1.1\r\nHost t\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
        Error(400, "malformed HTTP request"),
    ));
    v.push(raw_case(
        "a bad chunk size",
        b"POST /write HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
            .to_vec(),
        Error(400, "cannot read the request body"),
    ));
    v.push(Case {
        name: "a body one byte over the limit",
        raw: request("POST", "/write", &vec![b' '; BODY_LIMIT + 1]),
        want: Error(413, "larger than 16777216 bytes"),
    });
    v.push(Case {
        name: "a chunked body over the limit",
        raw: {
            let mut r = b"POST /write HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
            let chunk = vec![b' '; 1 << 20];
            for _ in 0..17 {
                r.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                r.extend_from_slice(&chunk);
                r.extend_from_slice(b"\r\n");
            }
            r.extend_from_slice(b"0\r\n\r\n");
            r
        },
        want: Error(413, "larger than 16777216 bytes"),
    });
    v.push(Case {
        name: "10 MB of garbage",
        raw: request("POST", "/write", &vec![b'x'; 10 << 20]),
        want: Error(400, "not valid JSON"),
    });
    v.push(Case {
        name: "10 MB of nested arrays",
        raw: request(
            "POST",
            "/write",
            &[b"{\"data\": ".as_slice(), &vec![b'['; 10 << 20]].concat(),
        ),
        want: Error(400, "not valid JSON"),
    });
    v.push(Case {
        name: "10 MB of rows with one bad row at the end",
        raw: request("POST", "/write", write_body_of("\"bad\"").as_bytes()),
        want: Error(400, "row"),
    });
    v.push(Case {
        name: "a body that is not UTF-8",
        raw: request("POST", "/write", b"{\"data\": \"\xff\xfe\"}"),
        want: Error(400, "not valid JSON"),
    });
    v.push(Case {
        name: "a head of 1 MB",
        raw: {
            let mut r = b"GET /heartbeat HTTP/1.1\r\nHost: t\r\n".to_vec();
            for i in 0..1024 {
                r.extend_from_slice(format!("X-Pad-{i}: {}\r\n", "p".repeat(1000)).as_bytes());
            }
            r.extend_from_slice(b"\r\n");
            r
        },
        want: Error(431, "header fields are too large"),
    });
    v
}

/// 10 MB of valid rows for `/write` of the balancer (fresh ids of sh1..sh4 would be taken
/// if it went through, so any write is seen), then `last` as the final row.
fn big_router_write(last: &str) -> String {
    let mut s = String::from("{\"data\": [");
    let mut id = 0i64;
    while s.len() < 10 << 20 {
        // Ids of every shard that no seeded row has (those are multiples of 4); the batch
        // repeats them, but it is refused as a whole for its last row first.
        let k = 1 + (id % 4000) * 4;
        s.push_str(&format!(
            "{{\"Stud_id\": {k}, \"Stud_name\": \"{}\", \"Stud_marks\": 1}},",
            "n".repeat(200)
        ));
        id += 1;
    }
    s.push_str(last);
    s.push_str("]}");
    s
}

/// 10 MB of valid rows for a node's `/write` of shard sh1, then `last`.
fn big_node_write(last: &str) -> String {
    let mut s = String::from("{\"shard\": \"sh1\", \"data\": [");
    let mut k = 500i64;
    while s.len() < 10 << 20 {
        s.push_str(&format!(
            "{{\"Stud_id\": {}, \"Stud_name\": \"{}\", \"Stud_marks\": 1}},",
            500 + k % 400,
            "n".repeat(200)
        ));
        k += 1;
    }
    s.push_str(last);
    s.push_str("]}");
    s
}

fn row(k: i64) -> String {
    format!("{{\"Stud_id\": {k}, \"Stud_name\": \"n{k}\", \"Stud_marks\": 7}}")
}

fn router_cases() -> Vec<Case> {
    let w = |name, body: &str, want| case(name, "POST", "/write", body, want);
    let write_row =
        |name, r: &str, want| case(name, "POST", "/write", &format!("{{\"data\": [{r}]}}"), want);
    let mut v = vec![
        // /write
        w("write: not JSON", "{", Error(400, "not valid JSON")),
        w("write: empty body", "", Error(400, "must be a JSON object")),
        w("write: an array", "[1, 2]", Error(400, "must be a JSON object")),
        w("write: a string", "\"data\"", Error(400, "must be a JSON object")),
        w("write: no data", "{}", Error(400, "missing field 'data'")),
        w("write: data null", "{\"data\": null}", Error(400, "'data'")),
        w("write: data an object", "{\"data\": {}}", Error(400, "rows must be a JSON array")),
        w("write: a row that is a number", "{\"data\": [5]}", Error(400, "a row must be a JSON object")),
        write_row("write: Stud_id letters", "{\"Stud_id\": \"abc\", \"Stud_name\": \"x\", \"Stud_marks\": 1}", Error(400, "'Stud_id'")),
        write_row("write: Stud_id digits then letters", "{\"Stud_id\": \"12a\", \"Stud_name\": \"x\", \"Stud_marks\": 1}", Error(400, "'Stud_id'")),
        write_row("write: Stud_id boolean", "{\"Stud_id\": true, \"Stud_name\": \"x\", \"Stud_marks\": 1}", Error(400, "'Stud_id'")),
        write_row("write: Stud_id null", "{\"Stud_id\": null, \"Stud_name\": \"x\", \"Stud_marks\": 1}", Error(400, "'Stud_id'")),
        write_row("write: Stud_id a fraction", "{\"Stud_id\": 1.5, \"Stud_name\": \"x\", \"Stud_marks\": 1}", Error(400, "'Stud_id'")),
        write_row("write: Stud_id 1e400", "{\"Stud_id\": 1e400, \"Stud_name\": \"x\", \"Stud_marks\": 1}", Error(400, "not valid JSON")),
        write_row("write: Stud_id 1e30", "{\"Stud_id\": 1e30, \"Stud_name\": \"x\", \"Stud_marks\": 1}", Error(400, "'Stud_id'")),
        write_row("write: Stud_id above i64", "{\"Stud_id\": 99999999999999999999, \"Stud_name\": \"x\", \"Stud_marks\": 1}", Error(400, "'Stud_id'")),
        write_row("write: Stud_id above u64", "{\"Stud_id\": 999999999999999999999999999, \"Stud_name\": \"x\", \"Stud_marks\": 1}", Error(400, "'Stud_id'")),
        write_row("write: Stud_id digits above i64", "{\"Stud_id\": \"99999999999999999999\", \"Stud_name\": \"x\", \"Stud_marks\": 1}", Error(400, "'Stud_id'")),
        write_row("write: Stud_id negative", &row(-1), Error(400, "-1")),
        write_row("write: Stud_id i64::MIN", &row(i64::MIN), Error(400, "-9223372036854775808")),
        write_row("write: Stud_id i64::MAX", &row(i64::MAX), Error(400, "9223372036854775807")),
        write_row("write: Stud_id past the last shard", &row(16384), Error(400, "16384")),
        write_row("write: Stud_name missing", "{\"Stud_id\": 5, \"Stud_marks\": 1}", Error(400, "missing field 'Stud_name'")),
        write_row("write: Stud_marks missing", "{\"Stud_id\": 5, \"Stud_name\": \"x\"}", Error(400, "missing field 'Stud_marks'")),
        write_row("write: Stud_name an object", "{\"Stud_id\": 5, \"Stud_name\": {}, \"Stud_marks\": 1}", Error(400, "'Stud_name'")),
        write_row("write: Stud_marks null", "{\"Stud_id\": 5, \"Stud_name\": \"x\", \"Stud_marks\": null}", Error(400, "'Stud_marks'")),
        write_row("write: Stud_marks a list", "{\"Stud_id\": 5, \"Stud_name\": \"x\", \"Stud_marks\": [1]}", Error(400, "'Stud_marks'")),
        write_row("write: a fresh row and the same row again", &format!("{},{}", row(5), row(5)), Error(400, "5")),
        write_row("write: a fresh row and an existing one in another shard", &format!("{},{}", row(6), row(4900)), Error(400, "4900")),
        write_row("write: fresh rows of two shards and a bad one", &format!("{},{},5", row(7), row(4097)), Error(400, "row 2")),
        write_row("write: a fresh row and one outside every shard", &format!("{},{}", row(8), row(-50)), Error(400, "-50")),
        // /read
        case("read: no Stud_id", "POST", "/read", "{}", Error(400, "missing field 'Stud_id'")),
        case("read: Stud_id a number", "POST", "/read", "{\"Stud_id\": 5}", Error(400, "'Stud_id' must be an object")),
        case("read: no high", "POST", "/read", "{\"Stud_id\": {\"low\": 5}}", Error(400, "missing field 'high'")),
        case("read: low letters", "POST", "/read", "{\"Stud_id\": {\"low\": \"x\", \"high\": 5}}", Error(400, "'low'")),
        case("read: high 1e300", "POST", "/read", "{\"Stud_id\": {\"low\": 0, \"high\": 1e300}}", Error(400, "'high'")),
        case("read: low above high", "POST", "/read", "{\"Stud_id\": {\"low\": 10, \"high\": 5}}", Error(400, "greater than high")),
        case("read: bad consistency", "POST", "/read", "{\"Stud_id\": {\"low\": 0, \"high\": 5}, \"consistency\": 1}", Error(400, "'consistency'")),
        case("read: unknown consistency", "POST", "/read", "{\"Stud_id\": {\"low\": 0, \"high\": 5}, \"consistency\": \"strong\"}", Error(400, "'consistency'")),
        case("read: GET with bad JSON", "GET", "/read", "{\"Stud_id\":", Error(400, "not valid JSON")),
        // /update
        case("update: ids differ", "PUT", "/update", &format!("{{\"Stud_id\": 400, \"data\": {}}}", row(401)), Error(400, "differs")),
        case("update: no such row", "PUT", "/update", &format!("{{\"Stud_id\": 9, \"data\": {}}}", row(9)), Error(404, "9")),
        // No row has an id outside every shard: the same 404 as any missing row.
        case("update: outside every shard", "PUT", "/update", &format!("{{\"Stud_id\": -5, \"data\": {}}}", row(-5)), Error(404, "-5")),
        case("update: no data", "PUT", "/update", "{\"Stud_id\": 400}", Error(400, "missing field 'data'")),
        case("update: no Stud_id", "PUT", "/update", &format!("{{\"data\": {}}}", row(400)), Error(400, "missing field 'Stud_id'")),
        case("update: Stud_name an array", "PUT", "/update", "{\"Stud_id\": 400, \"data\": {\"Stud_id\": 400, \"Stud_name\": [1], \"Stud_marks\": 1}}", Error(400, "'Stud_name'")),
        case("update: data a string", "PUT", "/update", "{\"Stud_id\": 400, \"data\": \"x\"}", Error(400, "a row must be a JSON object")),
        // /del
        case("del: no such row", "DELETE", "/del", "{\"Stud_id\": 9}", Error(404, "9")),
        case("del: Stud_id letters", "DELETE", "/del", "{\"Stud_id\": \"x\"}", Error(400, "'Stud_id'")),
        case("del: no Stud_id", "DELETE", "/del", "{}", Error(400, "missing field 'Stud_id'")),
        case("del: Stud_id 1e30", "DELETE", "/del", "{\"Stud_id\": 1e30}", Error(400, "'Stud_id'")),
        case("del: outside every shard", "DELETE", "/del", "{\"Stud_id\": -1}", Error(404, "-1")),
        case("del: not JSON", "DELETE", "/del", "Stud_id=5", Error(400, "not valid JSON")),
        // /read/<server>
        case("read server: unknown", "GET", "/read/NoSuchServer", "", Error(404, "NoSuchServer")),
        // admin
        case("init: a second time", "POST", "/init", &lb::catalog::default_config().to_string(), Error(400, "already")),
        case("init: not JSON", "POST", "/init", "{", Error(400, "not valid JSON")),
        raw_case("init: not UTF-8", request("POST", "/init", b"{\"N\": \xff}"), Error(400, "not UTF-8")),
        case("add: n above the servers named", "POST", "/add", "{\"n\": 2, \"new_shards\": [], \"servers\": {\"Server9\": [\"sh1\"]}}", Error(400, "Number of new servers (n) is greater than newly added instances")),
        case("add: a new shard overlapping sh1", "POST", "/add", "{\"n\": 1, \"new_shards\": [{\"Stud_id_low\": 10, \"Shard_id\": \"sh9\", \"Shard_size\": 10}], \"servers\": {\"Server9\": [\"sh9\"]}}", Error(400, "sh9")),
        case("add: an unknown shard", "POST", "/add", "{\"n\": 1, \"servers\": {\"Server9\": [\"sh77\"]}}", Error(400, "sh77")),
        case("add: a negative shard size", "POST", "/add", "{\"n\": 1, \"new_shards\": [{\"Stud_id_low\": 20000, \"Shard_id\": \"sh9\", \"Shard_size\": -4}], \"servers\": {\"Server9\": [\"sh9\"]}}", Error(400, "Shard_size")),
        case("add: a server that exists", "POST", "/add", "{\"n\": 1, \"servers\": {\"Server0\": [\"sh3\"]}}", Error(400, "Server0")),
        case("rm: more names than n", "DELETE", "/rm", "{\"n\": 1, \"servers\": [\"Server0\", \"Server1\"]}", Error(400, "Length of server list is more than removable instances")),
        case("rm: an unknown server", "DELETE", "/rm", "{\"n\": 1, \"servers\": [\"NoSuch\"]}", Error(400, "NoSuch")),
        case("rm: n negative", "DELETE", "/rm", "{\"n\": -1, \"servers\": []}", Error(400, "'n'")),
        case("add (stage 1): n negative", "POST", "/add", "{\"n\": -1}", Error(400, "'n'")),
        case("add (stage 1): n a string", "POST", "/add", "{\"n\": \"2\"}", Error(400, "'n'")),
        case("add (stage 1): more hostnames than n", "POST", "/add", "{\"n\": 1, \"hostnames\": [\"a\", \"b\"]}", Error(400, "Length of hostname list is more than newly added instances")),
        case("add (stage 1): a hostname in use", "POST", "/add", "{\"n\": 1, \"hostnames\": [\"Server0\"]}", Error(400, "Server0")),
        case("add (stage 1): n huge", "POST", "/add", "{\"n\": 18446744073709551615}", Error(400, "")),
        case("rm (stage 1): n above N", "DELETE", "/rm", "{\"n\": 100}", Error(400, "")),
        case("rm (stage 1): a database server", "DELETE", "/rm", "{\"n\": 1, \"hostnames\": [\"Server0\"]}", Error(400, "Server0")),
        case("primary_elect: shard a number", "GET", "/primary_elect", "{\"shard\": 5}", Error(400, "'shard'")),
        case("primary_elect: unknown shard", "GET", "/primary_elect", "{\"shard\": \"sh77\"}", Error(400, "sh77")),
        // unknown paths and methods
        case("an unknown path", "GET", "/nope", "", Error(400, "'/nope' endpoint does not exist in server replicas")),
        case("an unknown path with a body", "POST", "/nope/deeper", "{\"a\": 1}", Error(400, "'/nope/deeper' endpoint does not exist in server replicas")),
        case("PATCH /write", "PATCH", "/write", "{}", Error(405, "PATCH")),
        case("GET /write", "GET", "/write", "{}", Error(405, "GET")),
        case("DELETE /status", "DELETE", "/status", "", Error(405, "DELETE")),
        case("POST /rep", "POST", "/rep", "", Error(405, "POST")),
        case("PUT /init", "PUT", "/init", "{}", Error(405, "PUT")),
        case("an extension method", "BREW", "/write", "{}", Error(405, "BREW")),
    ];
    v.extend(framing_cases(big_router_write));
    v
}

fn node_cases() -> Vec<Case> {
    let schema = "{\"columns\": [\"Stud_id\", \"Stud_name\", \"Stud_marks\"], \"dtypes\": [\"Number\", \"String\", \"String\"]}";
    let cfg = |name, shards: &str, want| {
        case(
            name,
            "POST",
            "/config",
            &format!("{{\"schema\": {schema}, \"shards\": {shards}}}"),
            want,
        )
    };
    let w = |name, body: String, want| case(name, "POST", "/write", &body, want);
    let wr = |name, rows: &str, want| {
        w(name, format!("{{\"shard\": \"sh1\", \"data\": [{rows}]}}"), want)
    };
    let mut v = vec![
        // /config
        case("config: no schema", "POST", "/config", "{\"shards\": [\"sh9\"]}", Error(400, "missing field 'schema'")),
        case("config: columns a string", "POST", "/config", "{\"schema\": {\"columns\": \"x\", \"dtypes\": []}, \"shards\": [\"sh9\"]}", Error(400, "'columns'")),
        case("config: an unknown dtype", "POST", "/config", "{\"schema\": {\"columns\": [\"Stud_id\"], \"dtypes\": [\"Blob\"]}, \"shards\": [\"sh9\"]}", Error(400, "dtypes")),
        case("config: no Stud_id column", "POST", "/config", "{\"schema\": {\"columns\": [\"a\"], \"dtypes\": [\"Number\"]}, \"shards\": [\"sh9\"]}", Error(400, "")),
        case("config: more dtypes than columns", "POST", "/config", "{\"schema\": {\"columns\": [\"Stud_id\"], \"dtypes\": [\"Number\", \"String\"]}, \"shards\": [\"sh9\"]}", Error(400, "")),
        cfg("config: no shards", "[]", Error(400, "at least one shard")),
        cfg("config: shards a string", "\"sh9\"", Error(400, "'shards'")),
        cfg("config: a path as shard id", "[\"../etc\"]", Error(400, "invalid shard id")),
        cfg("config: a dot shard id", "[\".hidden\"]", Error(400, "invalid shard id")),
        cfg("config: an empty shard id", "[\"\"]", Error(400, "'shards'")),
        cfg("config: a shard id of 1000 letters", &format!("[\"{}\"]", "s".repeat(1000)), Error(400, "invalid shard id")),
        cfg("config: a shard named twice", "[\"sh9\", \"sh9\"]", Error(400, "twice")),
        cfg("config: another range for sh1", "[{\"Shard_id\": \"sh1\", \"Stud_id_low\": 5, \"Shard_size\": 10}]", Error(400, "already has the range")),
        cfg("config: a zero shard size", "[{\"Shard_id\": \"sh9\", \"Stud_id_low\": 5, \"Shard_size\": 0}]", Error(400, "Shard_size")),
        cfg("config: a low without size", "[{\"Shard_id\": \"sh9\", \"Stud_id_low\": 5}]", Error(400, "missing field 'Shard_size'")),
        cfg("config: a huge low", "[{\"Shard_id\": \"sh9\", \"Stud_id_low\": 1e400, \"Shard_size\": 5}]", Error(400, "not valid JSON")),
        case("config: another schema for sh1", "POST", "/config", "{\"schema\": {\"columns\": [\"Stud_id\", \"x\"], \"dtypes\": [\"Number\", \"Number\"]}, \"shards\": [\"sh1\"]}", Error(400, "another schema")),
        // /write
        w("write: no shard", format!("{{\"data\": [{}]}}", row(5)), Error(400, "missing field 'shard'")),
        w("write: shard a number", format!("{{\"shard\": 1, \"data\": [{}]}}", row(5)), Error(400, "'shard' must be a string")),
        w("write: an unknown shard", format!("{{\"shard\": \"sh2\", \"data\": [{}]}}", row(5)), Error(400, "sh2")),
        w("write: curr_idx negative", format!("{{\"shard\": \"sh1\", \"curr_idx\": -1, \"data\": [{}]}}", row(5)), Error(400, "'curr_idx'")),
        w("write: no data", "{\"shard\": \"sh1\"}".into(), Error(400, "missing field 'data'")),
        wr("write: Stud_id letters", "{\"Stud_id\": \"x\", \"Stud_name\": \"x\", \"Stud_marks\": 1}", Error(400, "'Stud_id'")),
        wr("write: Stud_id above i64", "{\"Stud_id\": 99999999999999999999, \"Stud_name\": \"x\", \"Stud_marks\": 1}", Error(400, "'Stud_id'")),
        wr("write: negative Stud_id", &row(-1), Error(400, "-1")),
        wr("write: outside the shard", &row(1000), Error(400, "1000")),
        wr("write: i64::MIN", &row(i64::MIN), Error(400, "-9223372036854775808")),
        wr("write: a row twice", &format!("{},{}", row(5), row(5)), Error(400, "twice")),
        wr("write: an existing row", &format!("{},{}", row(6), row(100)), Error(400, "already exists")),
        wr("write: a missing column", "{\"Stud_id\": 5, \"Stud_name\": \"x\"}", Error(400, "missing field 'Stud_marks'")),
        // /read
        case("read: no shard", "POST", "/read", "{\"Stud_id\": {\"low\": 0, \"high\": 5}}", Error(400, "missing field 'shard'")),
        case("read: an unknown shard", "POST", "/read", "{\"shard\": \"sh2\", \"Stud_id\": {\"low\": 0, \"high\": 5}}", Error(400, "sh2")),
        case("read: low above high", "POST", "/read", "{\"shard\": \"sh1\", \"Stud_id\": {\"low\": 9, \"high\": 5}}", Error(400, "greater than high")),
        case("read: Stud_id a list", "POST", "/read", "{\"shard\": \"sh1\", \"Stud_id\": [0, 5]}", Error(400, "'Stud_id' must be an object")),
        case("read: high letters", "POST", "/read", "{\"shard\": \"sh1\", \"Stud_id\": {\"low\": 0, \"high\": \"z\"}}", Error(400, "'high'")),
        // /update and /del
        case("update: ids differ", "PUT", "/update", &format!("{{\"shard\": \"sh1\", \"Stud_id\": 100, \"data\": {}}}", row(101)), Error(400, "differs")),
        case("update: no such row", "PUT", "/update", &format!("{{\"shard\": \"sh1\", \"Stud_id\": 9, \"data\": {}}}", row(9)), Error(404, "9")),
        case("update: outside the shard", "PUT", "/update", &format!("{{\"shard\": \"sh1\", \"Stud_id\": 5000, \"data\": {}}}", row(5000)), Error(400, "5000")),
        case("update: an unknown shard", "PUT", "/update", &format!("{{\"shard\": \"shX\", \"Stud_id\": 100, \"data\": {}}}", row(100)), Error(400, "shX")),
        case("del: no such row", "DELETE", "/del", "{\"shard\": \"sh1\", \"Stud_id\": 9}", Error(404, "9")),
        case("del: Stud_id 1.5", "DELETE", "/del", "{\"shard\": \"sh1\", \"Stud_id\": 1.5}", Error(400, "'Stud_id'")),
        case("del: no shard", "DELETE", "/del", "{\"Stud_id\": 100}", Error(400, "missing field 'shard'")),
        // /copy
        case("copy: shards a string", "GET", "/copy", "{\"shards\": \"sh1\"}", Error(400, "'shards'")),
        case("copy: an unknown shard", "GET", "/copy", "{\"shards\": [\"sh1\", \"sh2\"]}", Error(400, "sh2")),
        case("copy: no body", "GET", "/copy", "", Error(400, "must be a JSON object")),
        // unknown paths and methods
        case("an unknown path", "GET", "/nope", "", Error(404, "'/nope' endpoint does not exist in server")),
        case("PATCH /write", "PATCH", "/write", "{}", Error(405, "PATCH")),
        case("POST /home", "POST", "/home", "", Error(405, "POST")),
        case("DELETE /copy", "DELETE", "/copy", "{}", Error(405, "DELETE")),
    ];
    v.extend(framing_cases(big_node_write));
    v
}

// ---------------------------------------------------------------------------------------
// Slow clients
// ---------------------------------------------------------------------------------------

/// A request head sent one byte every 100 ms, never finished: the server must close the
/// connection within the header timeout (plus slack), answering 408 or nothing.
async fn slowloris_head(addr: SocketAddr) -> Duration {
    let head = b"POST /write HTTP/1.1\r\nHost: t\r\nX-Slow: ";
    let limit = HEADER_TIMEOUT + Duration::from_secs(10);
    common::slow_head(addr, head, Duration::from_millis(100), limit).await
}

/// Headers complete, then a body that stops half way: answered 408 once the body timeout
/// (`BODY_READ_TIMEOUT`) has passed, never held for ever.
async fn stalled_body(addr: SocketAddr, head: &'static [u8]) -> Result<Duration, String> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head).await.unwrap();
    let started = Instant::now();
    let limit = BODY_TIMEOUT + Duration::from_secs(10);
    let r = match tokio::time::timeout(limit, read_reply(&mut s)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            return Err(format!("a stalled body: the connection ended without an answer: {e}"))
        }
        Err(_) => return Err(format!("a stalled body was held for {limit:?} without an answer")),
    };
    let c = Case { name: "a stalled body", raw: Vec::new(), want: Error(408, "did not arrive") };
    match judge(&c, &Ok(r)) {
        None => Ok(started.elapsed()),
        Some(wrong) => Err(wrong),
    }
}

/// While slow clients hold connections, others are answered at once.
async fn others_are_served(addr: SocketAddr, path: &str, body: &str) {
    for _ in 0..5 {
        let t = Instant::now();
        let (method, p) = path.split_once(' ').unwrap();
        let r = exchange(addr, &request(method, p, body.as_bytes()), ANSWER_WITHIN).await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.json());
        // Not a speed check: a request queued behind the slow clients would wait out their
        // 10 s timeouts.
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "a request took {:?} next to slow clients",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Runs the slow-client checks while `probe` shows that others are still served.
async fn slow_clients(addr: SocketAddr, probe: &str, probe_body: &str, who: &str) {
    let slow = tokio::spawn(slowloris_head(addr));
    // A body that stops half way, and a Content-Length far over the limit with no body
    // behind it (the limit is applied to what arrives, so this one waits for the timeout
    // too; see `read_body` in lb/src/router/http.rs).
    let heads: [&'static [u8]; 3] = [
        b"POST /write HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{\"data\": [",
        b"POST /write HTTP/1.1\r\nHost: t\r\nContent-Length: 1099511627776\r\n\r\n",
        b"POST /write HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{\"data\": ",
    ];
    let stalls: Vec<_> = heads.into_iter().map(|h| tokio::spawn(stalled_body(addr, h))).collect();
    others_are_served(addr, probe, probe_body).await;
    let cut = slow.await.unwrap();
    eprintln!("bad_input: {who}: a slowloris head was cut off after {cut:?}");
    assert!(cut >= HEADER_TIMEOUT - Duration::from_secs(1), "cut off after only {cut:?}");
    for s in stalls {
        match s.await.unwrap() {
            Ok(d) => {
                eprintln!("bad_input: {who}: a stalled body was answered 408 after {d:?}");
                assert!(d >= BODY_TIMEOUT - Duration::from_secs(1), "408 after only {d:?}");
            }
            Err(e) => panic!("{who}: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------

/// Everything the balancer holds: a full read, `/status` without the primaries (an
/// election may move them), and every server's rows.
async fn router_state(addr: SocketAddr) -> Json {
    let (s, all) =
        json_call(addr, "POST", "/read", json!({"Stud_id": {"low": i64::MIN, "high": i64::MAX}}))
            .await;
    assert_eq!(s, 200, "{all}");
    let (s, mut status) = json_call(addr, "GET", "/status", json!({})).await;
    assert_eq!(s, 200, "{status}");
    for shard in status["shards"].as_array_mut().unwrap() {
        shard.as_object_mut().unwrap().remove("primary");
    }
    let mut servers = serde_json::Map::new();
    for name in status["servers"].as_object().unwrap().keys() {
        let (s, rows) = json_call(addr, "GET", &format!("/read/{name}"), json!({})).await;
        assert_eq!(s, 200, "{rows}");
        servers.insert(name.clone(), rows);
    }
    json!({"all": all["data"], "status": status, "servers": servers})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancer_refuses_bad_input_with_the_right_4xx_and_changes_nothing() {
    assert_eq!(lb::router::MAX_HTTP_BODY_BYTES, BODY_LIMIT);
    assert_eq!(lb::router::BODY_READ_TIMEOUT, BODY_TIMEOUT);
    let dir = tempfile::tempdir().unwrap();
    let up = ClusterProc::up(0, dir.path(), &["--init", "default"]);
    let addr = up.http();
    // Rows in every shard: 100, 500, 900, ... (100 + 400 i).
    let rows: Vec<Json> = (0..40)
        .map(|i| json!({"Stud_id": 100 + i * 400, "Stud_name": format!("n{i}"), "Stud_marks": i}))
        .collect();
    let (s, r) = json_call(addr, "POST", "/write", json!({"data": rows})).await;
    assert_eq!(s, 200, "{r}");
    let before = router_state(addr).await;
    assert_eq!(before["all"].as_array().unwrap().len(), 40);

    let table = tokio::spawn(async move { run_table(addr, router_cases(), "balancer").await });
    slow_clients(addr, "GET /rep", "", "balancer").await;
    let n = table.await.unwrap();

    let after = router_state(addr).await;
    assert!(before == after, "bad input changed the data:\nbefore {before}\nafter {after}");
    eprintln!("bad_input: balancer: {n} bad requests, data unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_http_shim_refuses_bad_input_with_the_right_4xx_and_changes_nothing() {
    assert_eq!(node::MAX_HTTP_BODY_BYTES, BODY_LIMIT);
    assert_eq!(node::BODY_READ_TIMEOUT, BODY_TIMEOUT);
    let dir = tempfile::tempdir().unwrap();
    let n = NodeProc::start("Server0", dir.path());
    let addr = n.http;
    let schema = json!({"columns": ["Stud_id", "Stud_name", "Stud_marks"], "dtypes": ["Number", "String", "String"]});
    let (s, r) = json_call(
        addr,
        "POST",
        "/config",
        json!({"schema": schema, "shards": [{"Shard_id": "sh1", "Stud_id_low": 0, "Shard_size": 1000}]}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let rows: Vec<Json> = (0..20)
        .map(|i| json!({"Stud_id": 100 + i * 10, "Stud_name": format!("n{i}"), "Stud_marks": i}))
        .collect();
    let (s, r) = json_call(addr, "POST", "/write", json!({"shard": "sh1", "data": rows})).await;
    assert_eq!(s, 200, "{r}");
    let copy = || async { json_call(addr, "GET", "/copy", json!({"shards": ["sh1"]})).await };
    let before = copy().await;
    assert_eq!(before.0, 200);

    let table = tokio::spawn(async move { run_table(addr, node_cases(), "node").await });
    slow_clients(addr, "GET /home", "", "node").await;
    let count = table.await.unwrap();

    let after = copy().await;
    assert_eq!(before, after, "bad input changed the node's rows");
    // Nothing was configured either: sh1 is still the only shard.
    let (s, r) = json_call(addr, "GET", "/copy", json!({"shards": ["sh9"]})).await;
    assert_eq!(s, 400, "{r}");
    eprintln!("bad_input: node: {count} bad requests, data unchanged");
}

// ---------------------------------------------------------------------------------------
// The node-level fuzz targets' saved inputs (scripts/fuzz.sh), replayed with the targets'
// own checks (fuzz/checks/node_checks.rs); the protocol-level ones are replayed by
// protocol/tests/fuzz_regressions.rs.
// ---------------------------------------------------------------------------------------

#[path = "../fuzz/checks/node_checks.rs"]
mod node_checks;

fn saved_fuzz_inputs(target: &str) -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("protocol/tests/fuzz_regressions")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn node_level_fuzz_inputs_pass_their_checks() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node = node::Node::open("Fuzz0", dir.path(), node::ShardOptions::default()).unwrap();
    node_checks::prepare(&rt, &node);
    let mut failed = Vec::new();
    let mut run = |name: String, f: &dyn Fn()| {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
            failed.push(name);
        }
    };
    let mut count = 0;
    for file in saved_fuzz_inputs("node_http") {
        let data = std::fs::read(&file).unwrap();
        run(file.display().to_string(), &|| node_checks::node_http(&rt, &node, &data));
        count += 1;
    }
    for file in saved_fuzz_inputs("stored_records") {
        let data = std::fs::read(&file).unwrap();
        run(file.display().to_string(), &|| node_checks::stored_records(&data));
        count += 1;
    }
    // And a few hundred hostile requests on every path, so the check runs on every build.
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let pieces: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"shard\"",
        "\"sh1\"",
        "\"sh2\"",
        "\"data\"",
        "\"Stud_id\"",
        "\"Stud_name\"",
        "\"Stud_marks\"",
        "\"low\"",
        "\"high\"",
        "\"schema\"",
        "\"shards\"",
        "\"columns\"",
        "\"dtypes\"",
        "\"Number\"",
        "\"String\"",
        "\"Shard_id\"",
        "\"Stud_id_low\"",
        "\"Shard_size\"",
        "\"curr_idx\"",
        "1",
        "-1",
        "0",
        "1e400",
        "1.5",
        "9223372036854775807",
        "-9223372036854775808",
        "18446744073709551616",
        "null",
        "true",
        "\"x\"",
        "\"../a\"",
    ];
    for i in 0..600 {
        let mut data = vec![rng.gen::<u8>(), rng.gen_range(0..12u8)];
        let body: String =
            (0..rng.gen_range(0..24)).map(|_| pieces[rng.gen_range(0..pieces.len())]).collect();
        data.extend_from_slice(body.as_bytes());
        run(format!("generated input {i}: {:?}", String::from_utf8_lossy(&data)), &|| {
            node_checks::node_http(&rt, &node, &data)
        });
        count += 1;
    }
    node.close();
    assert!(failed.is_empty(), "node-level fuzz inputs fail their checks: {failed:#?}");
    eprintln!("bad_input: {count} node-level fuzz inputs pass their checks");
}
