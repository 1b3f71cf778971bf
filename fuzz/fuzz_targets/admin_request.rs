//! Fuzz target: every Admin request; pushes through the server's prepare (body: `vane_fuzzing::admin_request`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vane_fuzzing::admin_request(data));
