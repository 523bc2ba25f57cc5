//! Fuzz target `acp_lines`: the input and its properties are described at `tether::fuzzing::acp_lines`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tether::fuzzing::acp_lines(data));
