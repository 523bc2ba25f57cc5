//! Fuzz target `dingtalk_frame`: the input and its properties are described at `tether::fuzzing::dingtalk_frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tether::fuzzing::dingtalk_frame(data));
