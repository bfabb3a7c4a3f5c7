//! Hyper-V synthetic SCSI (storvsc/storvsp) wire formats: vstor packets, SRBs, protocol versions, shared by the provider and the clients.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
