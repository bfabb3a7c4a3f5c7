//! A disk image the root does not trust: its GPT opened, listed, mapped,
//! changed, and read back.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| disks::fuzzing::gpt(data));
