//! See `checks::handshake` (fuzz/checks/protocol_checks.rs).
#![no_main]

use std::sync::OnceLock;

#[path = "../checks/protocol_checks.rs"]
mod checks;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::handshake(runtime(), data));
