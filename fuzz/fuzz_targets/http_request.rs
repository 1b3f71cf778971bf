//! Fuzz target: the HTTP long-poll API's query, `If-None-Match` and ACK body, through its routes (body: `vane_fuzzing::http_request`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vane_fuzzing::http_request(data));
