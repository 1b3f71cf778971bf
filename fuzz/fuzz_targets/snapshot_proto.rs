//! Fuzz target: encoded vane.v1.Snapshot messages through TryFrom and the server's prepare (body: `vane_fuzzing::snapshot_proto`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vane_fuzzing::snapshot_proto(data));
