//! A hostile guest's RNDIS bytes, handled by the device in every state.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| rndis::fuzzing::rndis(data));
