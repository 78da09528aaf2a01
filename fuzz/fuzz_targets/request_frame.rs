//! See `checks::request_frame` (fuzz/checks/protocol_checks.rs).
#![no_main]

#[path = "../checks/protocol_checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::request_frame(data));
