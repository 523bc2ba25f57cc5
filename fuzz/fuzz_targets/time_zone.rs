//! Fuzz target `time_zone`: the input and its properties are described at `tether::fuzzing::time_zone`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tether::fuzzing::time_zone(data));
