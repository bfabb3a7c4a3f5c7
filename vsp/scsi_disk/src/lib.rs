//! A SCSI disk target over a block backend: the commands a Linux SCSI disk issues, with sense data for everything else.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
