//! A hostile peer's NVSP message or transfer-page packet.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| rndis::fuzzing::nvsp(data));
