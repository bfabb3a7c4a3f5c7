//! The RNDIS device side of a Hyper-V synthetic NIC: initialization, OID queries and sets, data packets, status indications.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
