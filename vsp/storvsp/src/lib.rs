//! The synthetic SCSI controller a Hyper-V guest's storvsc binds: a VMBus device over scsi_disk targets.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
