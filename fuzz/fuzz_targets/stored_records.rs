//! See `checks::stored_records` (fuzz/checks/node_checks.rs).
#![no_main]

#[path = "../checks/node_checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::stored_records(data));
