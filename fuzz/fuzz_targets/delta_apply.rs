//! Fuzz target: deltas applied to a base, as the agent rebuilds a version (body: `vane_fuzzing::delta_apply`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vane_fuzzing::delta_apply(data));
