//! Fuzz target `config`: the input and its properties are described at `tether::fuzzing::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tether::fuzzing::config(data));
