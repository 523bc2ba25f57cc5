//! Fuzz target `plugin_input`: the input and its properties are described at `tether::fuzzing::plugin_input`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tether::fuzzing::plugin_input(data));
