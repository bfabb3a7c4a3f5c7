//! A hostile guest's storvsc packet: GPA range list and vstor packet.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| storvsp_protocol::fuzzing::packet(data));
