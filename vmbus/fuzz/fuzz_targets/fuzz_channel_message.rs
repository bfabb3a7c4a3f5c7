//! A hostile guest's channel message, parsed and handled by the server.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| vmbus::fuzzing::channel_message(data));
