//! Fuzz target `telegram_update`: the input and its properties are described at `tether::fuzzing::telegram_update`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tether::fuzzing::telegram_update(data));
