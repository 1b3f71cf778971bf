//! Fuzz target: watch responses (full and delta) through the agent's receive and apply checks (body: `vane_fuzzing::watch_response`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vane_fuzzing::watch_response(data));
