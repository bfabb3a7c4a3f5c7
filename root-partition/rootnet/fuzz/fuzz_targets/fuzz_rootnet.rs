//! Frames a hostile child puts on the switch, fed to the root's IP stack
//! with a static address and in DHCP mode, with ping sessions running.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| rootnet::fuzzing::rootnet(data));
