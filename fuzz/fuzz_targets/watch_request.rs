//! Fuzz target: the first request of a watch stream, as the server checks it (body: `vane_fuzzing::watch_request`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vane_fuzzing::watch_request(data));
