//! SynIC messages and the x64 intercept messages hv-core sends the root
//! (Linux `include/hyperv/hvgdk_mini.h` `struct hv_message`; intercept layouts
//! from the Microsoft headers in rust-vmm/mshv `hv-headers/hvhdk.h`).
//! Offsets inside payloads are from the payload start (message offset 16).

use crate::partition::SegmentRegister;
use core::mem::offset_of;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Message types (`enum hv_message_type`).
pub mod message_type {
    /// Empty slot.
    pub const NONE: u32 = 0;
    /// Access to an unmapped GPA.
    pub const UNMAPPED_GPA: u32 = 0x8000_0000;
    /// An access the GPA's mapping does not allow.
    pub const GPA_INTERCEPT: u32 = 0x8000_0001;
    /// A VP register value made the VP unrunnable.
    pub const INVALID_VP_REGISTER_VALUE: u32 = 0x8000_0020;
    /// Triple fault or another unrecoverable exception.
    pub const UNRECOVERABLE_EXCEPTION: u32 = 0x8000_0021;
    /// I/O port access.
    pub const X64_IO_PORT_INTERCEPT: u32 = 0x8001_0000;
    /// HLT.
    pub const X64_HALT: u32 = 0x8001_0007;
}

/// `struct hv_message_header` (16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MessageHeader {
    /// [`message_type`] value.
    pub message_type: u32,
    /// Payload bytes used.
    pub payload_size: u8,
    /// Bit 0: message pending.
    pub message_flags: u8,
    /// Reserved.
    pub reserved: [u8; 2],
    /// Sender / port id.
    pub sender: u64,
}
const _: () = assert!(size_of::<MessageHeader>() == 16);

/// `struct hv_message` (256 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Message {
    /// Header.
    pub header: MessageHeader,
    /// Payload.
    pub payload: [u8; 240],
}
const _: () = assert!(size_of::<Message>() == 256);

/// `struct hv_x64_intercept_message_header` (40 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct InterceptHeader {
    /// VP index.
    pub vp_index: u32,
    /// Bits 3:0 instruction length, 7:4 CR8.
    pub instruction_length_cr8: u8,
    /// [`access`] value.
    pub intercept_access_type: u8,
    /// `execution_state` bits.
    pub execution_state: u16,
    /// CS.
    pub cs: SegmentRegister,
    /// RIP.
    pub rip: u64,
    /// RFLAGS.
    pub rflags: u64,
}
const _: () = assert!(size_of::<InterceptHeader>() == 40);

/// `HV_INTERCEPT_ACCESS_*`.
pub mod access {
    /// Read.
    pub const READ: u8 = 0;
    /// Write.
    pub const WRITE: u8 = 1;
    /// Execute.
    pub const EXECUTE: u8 = 2;
}

/// `hv_x64_vp_execution_state` bits.
pub mod execution_state {
    /// CPL in bits 1:0.
    pub const CPL_MASK: u16 = 0x3;
    /// CR0.PE.
    pub const CR0_PE: u16 = 1 << 2;
    /// EFER.LMA.
    pub const EFER_LMA: u16 = 1 << 4;
    /// Interrupt shadow.
    pub const INTERRUPT_SHADOW: u16 = 1 << 12;
}

/// `hv_x64_io_port_intercept_message` (128 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IoPortIntercept {
    /// Header.
    pub header: InterceptHeader,
    /// Port.
    pub port_number: u16,
    /// Bits 2:0 access size (1, 2, 4), bit 3 string op, bit 4 REP prefix.
    pub access_info: u8,
    /// Valid bytes in `instruction_bytes`.
    pub instruction_byte_count: u8,
    /// Reserved.
    pub reserved: u32,
    /// RAX.
    pub rax: u64,
    /// Instruction bytes.
    pub instruction_bytes: [u8; 16],
    /// DS.
    pub ds: SegmentRegister,
    /// ES.
    pub es: SegmentRegister,
    /// RCX.
    pub rcx: u64,
    /// RSI.
    pub rsi: u64,
    /// RDI.
    pub rdi: u64,
}
const _: () = assert!(size_of::<IoPortIntercept>() == 128);
const _: () = assert!(offset_of!(IoPortIntercept, rax) == 48);
const _: () = assert!(offset_of!(IoPortIntercept, rcx) == 104);

/// IoPortIntercept `access_info` bits.
pub mod io_access {
    /// Size mask (bytes).
    pub const SIZE_MASK: u8 = 0x7;
    /// INS/OUTS.
    pub const STRING_OP: u8 = 1 << 3;
    /// REP prefix.
    pub const REP_PREFIX: u8 = 1 << 4;
}

/// `hv_x64_memory_intercept_message` (80 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MemoryIntercept {
    /// Header.
    pub header: InterceptHeader,
    /// Cache type.
    pub cache_type: u32,
    /// Valid bytes in `instruction_bytes`.
    pub instruction_byte_count: u8,
    /// Bit 0 GVA valid, bit 1 GVA→GPA valid.
    pub memory_access_info: u8,
    /// TPR priority.
    pub tpr_priority: u8,
    /// Reserved.
    pub reserved: u8,
    /// Guest virtual address (if bit 0 of `memory_access_info`).
    pub guest_virtual_address: u64,
    /// Guest physical address (bytes).
    pub guest_physical_address: u64,
    /// Instruction bytes at RIP.
    pub instruction_bytes: [u8; 16],
}
const _: () = assert!(size_of::<MemoryIntercept>() == 80);
const _: () = assert!(offset_of!(MemoryIntercept, guest_physical_address) == 56);

impl Message {
    /// A message of `message_type` carrying `payload`.
    pub fn new(message_type: u32, payload: &[u8]) -> Self {
        let mut m = Self::new_zeroed_message();
        let n = payload.len().min(240);
        m.header.message_type = message_type;
        m.header.payload_size = n as u8;
        m.payload[..n].copy_from_slice(&payload[..n]);
        m
    }

    fn new_zeroed_message() -> Self {
        Self {
            header: MessageHeader {
                message_type: 0,
                payload_size: 0,
                message_flags: 0,
                reserved: [0; 2],
                sender: 0,
            },
            payload: [0; 240],
        }
    }
}
