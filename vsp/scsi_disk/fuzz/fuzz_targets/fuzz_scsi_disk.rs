//! A hostile initiator's CDBs and data-out against an in-memory disk.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| scsi_disk::fuzzing::execute_cdbs(data));
