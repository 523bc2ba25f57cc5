//! Fuzz target `discord_event`: the input and its properties are described at `tether::fuzzing::discord_event`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tether::fuzzing::discord_event(data));
