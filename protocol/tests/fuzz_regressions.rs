//! The fuzz targets' checks (fuzz/checks/protocol_checks.rs, the very functions the libFuzzer
//! targets call) in CI, on a stable toolchain:
//! - every input a fuzzer found failing, saved by `scripts/fuzz.sh` under
//!   `tests/fuzz_regressions/<target>/`, is replayed (the node-level targets' inputs are
//!   replayed by the root package's `tests/bad_input.rs`);
//! - the cases found so far, written out by hand with what was wrong;
//! - a short proptest run of each check on valid encodings with bytes flipped, cut or
//!   spliced, so the checks run on every CI build even where libFuzzer cannot;
//! - `write_seeds` (ignored; `scripts/fuzz.sh` runs it) writes valid encodings as seed
//!   corpora for the fuzzers.

mod common;

#[path = "../../fuzz/checks/protocol_checks.rs"]
mod checks;

use std::path::{Path, PathBuf};

use common::{request_frame, response_frame};
use proptest::prelude::*;
use protocol::{wire, Hello};

/// A fuzz target's check.
type Check = Box<dyn Fn(&[u8])>;

/// The protocol-level targets and their checks.
fn targets() -> Vec<(&'static str, Check)> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    vec![
        ("frame_codec", Box::new(checks::frame_codec)),
        ("request_frame", Box::new(checks::request_frame)),
        ("response_frame", Box::new(checks::response_frame)),
        ("handshake", Box::new(move |d: &[u8]| checks::handshake(&rt, d))),
        ("json_bodies", Box::new(checks::json_bodies)),
    ]
}

fn saved_inputs(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn every_saved_fuzz_input_passes_its_check() {
    let mut failed = Vec::new();
    let mut count = 0;
    for (target, check) in targets() {
        for file in saved_inputs(target) {
            count += 1;
            let data = std::fs::read(&file).unwrap();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&data)));
            if r.is_err() {
                failed.push(file.display().to_string());
            }
        }
    }
    eprintln!("fuzz_regressions: {count} saved inputs replayed");
    assert!(failed.is_empty(), "saved fuzz inputs still fail: {failed:?}");
}

// ---------------------------------------------------------------------------------------
// Cases by hand: the edges the fuzzers went for first
// ---------------------------------------------------------------------------------------

#[test]
fn frames_at_and_over_the_limit() {
    // A length prefix of u32::MAX, of the limit + 1, of exactly the limit with no payload.
    for len in [u32::MAX, protocol::MAX_FRAME_LEN as u32 + 1, protocol::MAX_FRAME_LEN as u32] {
        let mut b = len.to_be_bytes().to_vec();
        b.extend_from_slice(&[0; 16]);
        checks::frame_codec(&b);
    }
    checks::frame_codec(&[]);
    checks::frame_codec(&[0, 0, 0, 0]);
    checks::frame_codec(&[0, 0, 0, 1, 0xff, 0, 0, 0]);
}

#[test]
fn hello_edges() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let good = wire::encode(&Hello::new("peer")).unwrap();
    checks::handshake(&rt, &good);
    // A good hello cut anywhere, and with bytes after it.
    for cut in 0..good.len() {
        checks::handshake(&rt, &good[..cut]);
    }
    checks::handshake(&rt, &[good.as_ref(), &[0, 1, 2]].concat());
    // The magic alone, and a hello claiming a huge peer name.
    checks::handshake(&rt, &protocol::MAGIC);
    let mut huge = protocol::MAGIC.to_vec();
    huge.extend_from_slice(&[2, 0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    checks::handshake(&rt, &huge);
}

#[test]
fn json_edges() {
    let cases: &[&str] = &[
        "",
        "   ",
        "{",
        "[]",
        "{\"data\": [{\"Stud_id\": 1e400}]}",
        "{\"data\": [{\"Stud_id\": -9223372036854775808, \"Stud_name\": 1, \"Stud_marks\": 1.5}]}",
        "{\"data\": [{\"Stud_id\": 9223372036854775808, \"Stud_name\": \"a\", \"Stud_marks\": 1}]}",
        "{\"data\": [{\"Stud_id\": \"-0\", \"Stud_name\": \"a\", \"Stud_marks\": \"00\"}]}",
        "{\"data\": [{\"Stud_id\": -0.0, \"Stud_name\": \"a\", \"Stud_marks\": -0.0}]}",
        "{\"data\": [{\"Stud_id\": 5e18, \"Stud_name\": \"a\", \"Stud_marks\": 1e308}]}",
        "{\"data\": [{\"Stud_id\": 9.223372036854775807e18, \"Stud_name\": \"a\", \"Stud_marks\": 1}]}",
        "{\"data\": [{\"Stud_id\": \"\\u0000\", \"Stud_name\": \"\\ud800\", \"Stud_marks\": 1}]}",
        "{\"Stud_id\": {\"low\": \"-\", \"high\": \"\"}}",
        "{\"shards\": [{\"Shard_id\": \"s\", \"Stud_id_low\": 9223372036854775807, \"Shard_size\": 9223372036854775807}]}",
        "{\"shards\": [{\"Shard_id\": \"s\", \"Stud_id_low\": -9223372036854775808, \"Shard_size\": 1}]}",
        "{\"schema\": {\"columns\": [\"Stud_id\", \"Stud_id\"], \"dtypes\": [\"Number\", \"Number\"]}}",
        "{\"schema\": {\"columns\": [], \"dtypes\": []}}",
        "{\"schema\": {\"columns\": [\"x\", \"Stud_id\"], \"dtypes\": [\"String\"]}, \"data\": [{\"x\": 1, \"Stud_id\": 1}]}",
    ];
    for c in cases {
        checks::json_bodies(c.as_bytes());
    }
    // Deep nesting: serde_json's recursion limit answers, the stack holds.
    let deep = format!("{{\"data\": {}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    checks::json_bodies(deep.as_bytes());
}

// ---------------------------------------------------------------------------------------
// A short fuzz on every build: valid encodings, damaged
// ---------------------------------------------------------------------------------------

/// A damage to apply to a valid encoding.
#[derive(Debug, Clone)]
enum Damage {
    Flip { at: prop::sample::Index, xor: u8 },
    Cut { at: prop::sample::Index },
    Splice { at: prop::sample::Index, bytes: Vec<u8> },
    SetByte { at: prop::sample::Index, to: u8 },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<prop::sample::Index>(), 1u8..).prop_map(|(at, xor)| Damage::Flip { at, xor }),
        any::<prop::sample::Index>().prop_map(|at| Damage::Cut { at }),
        (any::<prop::sample::Index>(), prop::collection::vec(any::<u8>(), 1..12))
            .prop_map(|(at, bytes)| Damage::Splice { at, bytes }),
        (
            any::<prop::sample::Index>(),
            prop::sample::select(vec![0u8, 1, 0x7f, 0x80, 0xfb, 0xfc, 0xfd, 0xfe, 0xff])
        )
            .prop_map(|(at, to)| Damage::SetByte { at, to }),
    ]
}

fn apply(mut b: Vec<u8>, ds: &[Damage]) -> Vec<u8> {
    for d in ds {
        if b.is_empty() {
            break;
        }
        match d {
            Damage::Flip { at, xor } => {
                let i = at.index(b.len());
                b[i] ^= xor;
            }
            Damage::Cut { at } => b.truncate(at.index(b.len())),
            Damage::Splice { at, bytes } => {
                let i = at.index(b.len());
                b.splice(i..i, bytes.iter().copied());
            }
            Damage::SetByte { at, to } => {
                let i = at.index(b.len());
                b[i] = *to;
            }
        }
    }
    b
}

/// A body of the contract's endpoints with JSON values swapped for hostile ones.
fn json_body() -> impl Strategy<Value = String> {
    let scalar = prop::sample::select(vec![
        "1",
        "-1",
        "0",
        "1.5",
        "-0.0",
        "1e400",
        "1e30",
        "9223372036854775807",
        "-9223372036854775808",
        "9223372036854775808",
        "18446744073709551616",
        "\"12\"",
        "\"-3\"",
        "\"x\"",
        "\"\"",
        "null",
        "true",
        "[]",
        "{}",
        "[1]",
        "\"\\u0000\"",
    ]);
    let key = prop::sample::select(vec![
        "Stud_id",
        "Stud_name",
        "Stud_marks",
        "low",
        "high",
        "data",
        "shards",
        "schema",
        "Shard_id",
        "Stud_id_low",
        "Shard_size",
        "columns",
        "dtypes",
    ]);
    (prop::collection::vec((key, scalar), 0..6), prop::sample::select(vec![0usize, 1, 2, 3]))
        .prop_map(|(fields, shape)| {
            let obj =
                fields.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect::<Vec<_>>().join(", ");
            match shape {
                0 => format!("{{\"data\": [{{{obj}}}]}}"),
                1 => format!("{{\"Stud_id\": {{{obj}}}}}"),
                2 => format!("{{\"shards\": [{{{obj}}}], \"schema\": {{{obj}}}}}"),
                _ => format!("{{{obj}}}"),
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn damaged_requests_pass_the_checks(f in request_frame(), ds in prop::collection::vec(damage(), 1..4)) {
        let bytes = apply(wire::encode(&f).unwrap().to_vec(), &ds);
        checks::request_frame(&bytes);
        let mut framed = (bytes.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        checks::frame_codec(&apply(framed, &ds[..1]));
    }

    #[test]
    fn damaged_answers_pass_the_checks(f in response_frame(), ds in prop::collection::vec(damage(), 1..4)) {
        checks::response_frame(&apply(wire::encode(&f).unwrap().to_vec(), &ds));
    }

    #[test]
    fn damaged_hellos_pass_the_checks(peer in ".{0,20}", ds in prop::collection::vec(damage(), 1..3)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        checks::handshake(&rt, &apply(wire::encode(&Hello::new(peer)).unwrap().to_vec(), &ds));
    }

    #[test]
    fn hostile_json_bodies_pass_the_checks(body in json_body(), ds in prop::collection::vec(damage(), 0..2)) {
        checks::json_bodies(body.as_bytes());
        checks::json_bodies(&apply(body.into_bytes(), &ds));
    }
}

// ---------------------------------------------------------------------------------------
// Seeds for the fuzzers
// ---------------------------------------------------------------------------------------

/// Writes valid encodings, one corpus per fuzz target, into `$SHARDGATE_FUZZ_SEEDS/<target>/`
/// (`scripts/fuzz.sh` sets it) or, in a plain test run, into a scratch directory; either way
/// every seed must pass the same checks the fuzzers apply.
#[test]
fn write_seeds() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let scratch = std::env::temp_dir().join(format!("shardgate-seeds-{}", std::process::id()));
    let out =
        std::env::var_os("SHARDGATE_FUZZ_SEEDS").map_or_else(|| scratch.clone(), PathBuf::from);
    let mut runner = TestRunner::deterministic();
    let put = |target: &str, name: String, bytes: &[u8]| {
        let dir = out.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    for i in 0..200 {
        let req = request_frame().new_tree(&mut runner).unwrap().current();
        let req = wire::encode(&req).unwrap();
        put("request_frame", format!("seed-{i}"), &req);
        let mut framed = (req.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(&req);
        put("frame_codec", format!("seed-{i}"), &framed);
        let resp = response_frame().new_tree(&mut runner).unwrap().current();
        let resp = wire::encode(&resp).unwrap();
        put("response_frame", format!("seed-{i}"), &resp);
        put("stored_records", format!("seed-{i}"), &resp);
        let body = json_body().new_tree(&mut runner).unwrap().current();
        put("json_bodies", format!("seed-{i}"), body.as_bytes());
        // node_http: byte 0 the method, byte 1 the path (see fuzz/checks/node_checks.rs).
        let mut http = vec![(i % 4) as u8, (i % 6) as u8];
        http.extend_from_slice(body.as_bytes());
        put("node_http", format!("seed-{i}"), &http);
    }
    put("handshake", "hello".into(), &wire::encode(&Hello::new("seed")).unwrap());
    let reply = protocol::HelloReply::Ok { version: protocol::PROTOCOL_VERSION, name: "s".into() };
    put("handshake", "reply".into(), &wire::encode(&reply).unwrap());
    // Every seed written is accepted by its target's checks.
    for (target, check) in [
        ("request_frame", checks::request_frame as fn(&[u8])),
        ("response_frame", checks::response_frame),
        ("json_bodies", checks::json_bodies),
    ] {
        let mut n = 0;
        for entry in std::fs::read_dir(out.join(target)).unwrap() {
            check(&std::fs::read(entry.unwrap().path()).unwrap());
            n += 1;
        }
        assert!(n >= 200, "{target}: {n} seeds");
    }
    let _ = std::fs::remove_dir_all(&scratch);
}
