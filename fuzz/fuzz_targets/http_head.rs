//! Fuzz target `http_head`: the input and its properties are described at `tether::fuzzing::http_head`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tether::fuzzing::http_head(data));
