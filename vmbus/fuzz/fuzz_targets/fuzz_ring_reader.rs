//! A hostile peer's ring: control page and data are arbitrary bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| vmbus::fuzzing::ring_reader(data));
