//! Fuzz target `ws_frames`: the input and its properties are described at `tether::fuzzing::ws_frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tether::fuzzing::ws_frames(data));
