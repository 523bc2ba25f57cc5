//! Fuzz target `markdown`: the input and its properties are described at `tether::fuzzing::markdown`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tether::fuzzing::markdown(data));
