//! A hostile guest's answers fed to an integration service provider.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| vsp_ic::fuzzing::provider(data));
