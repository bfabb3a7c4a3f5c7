//! Arbitrary bytes parsed as every kind of IC message, both ways.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| vsp_ic::fuzzing::parse_any(data));
