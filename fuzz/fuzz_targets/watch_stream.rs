//! Fuzz target: ACKs, NACKs and other requests on an open watch stream, as the server handles them (body: `vane_fuzzing::watch_stream`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vane_fuzzing::watch_stream(data));
