//! Fuzz target `weixin_update`: the input and its properties are described at `tether::fuzzing::weixin_update`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tether::fuzzing::weixin_update(data));
