//! Fuzz target: snapshot files (YAML and JSON) through parsing, validation and the push path (body: `vane_fuzzing::snapshot_file`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vane_fuzzing::snapshot_file(data));
