//! Fuzz target `streamer`: the input and its properties are described at `tether::fuzzing::streamer`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tether::fuzzing::streamer(data));
