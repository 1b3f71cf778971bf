//! Fuzz target: the agent's disk-cache file through its loader and the apply checks (body: `vane_fuzzing::disk_cache`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vane_fuzzing::disk_cache(data));
