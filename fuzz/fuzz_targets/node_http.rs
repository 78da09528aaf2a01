//! A node's HTTP request path as a function (`Node::handle(Request::Forward)`: the shim's
//! endpoint table and JSON translation, what the HTTP door runs after hyper parsed the
//! request); see `checks::node_http` (fuzz/checks/node_checks.rs).
#![no_main]

use std::sync::{Mutex, OnceLock};

use node::{Node, ShardOptions};

#[path = "../checks/node_checks.rs"]
mod checks;

/// A fresh node (new temp dir) after this many inputs, so state and disk stay bounded.
const INPUTS_PER_NODE: u32 = 2000;
/// Or once it holds this many shard replicas (`/config` inputs create them).
const MAX_SHARDS: usize = 16;

struct Fixture {
    node: Node,
    _dir: tempfile::TempDir,
    inputs: u32,
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    })
}

fn fresh() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut opts = ShardOptions::default();
    // Small segments and no fsync: this exercises parsing and validation, not durability.
    opts.wal.segment_size = 64 * 1024;
    opts.wal.prepare_spare_segments = false;
    opts.wal.sync = wal::SyncPolicy::NeverUnsafe;
    let node = Node::open("Fuzz0", dir.path(), opts).expect("open node");
    checks::prepare(runtime(), &node);
    Fixture { node, _dir: dir, inputs: 0 }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    static FIXTURE: Mutex<Option<Fixture>> = Mutex::new(None);
    let mut guard = FIXTURE.lock().unwrap_or_else(|e| e.into_inner());
    let renew = guard
        .as_ref()
        .is_none_or(|f| f.inputs >= INPUTS_PER_NODE || f.node.shards().len() > MAX_SHARDS);
    if renew {
        if let Some(old) = guard.take() {
            old.node.close();
        }
        *guard = Some(fresh());
    }
    let f = guard.as_mut().expect("fixture");
    f.inputs += 1;
    checks::node_http(runtime(), &f.node, data);
});
