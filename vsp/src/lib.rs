//! The VMBus device layer's core (OpenVMM's `vmbus_channel` /
//! `SimpleVmbusDevice` split): the [`Device`] trait every virtual service
//! provider implements, and the [`Channel`] half a device is handed when the
//! guest opens it. A device depends on this crate and on `vmbus`'s wire
//! format only, never on the VMBus server or on whoever hosts it (the root
//! partition, or a host test): the host offers it, routes the guest's
//! signals to it, and gives it a budgeted turn with [`Device::poll`].
//!
//! Everything here runs over [`SharedMemory`], so the same code serves the
//! root (rings in frames it lent the child) and host tests (rings in
//! `vmbus::memory::AtomicMemory`).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod channel;

pub use channel::{Channel, ChannelStats, GpadlMap, GuestDma, IncomingPacket, PacketWork, inband_packet};

use vmbus::memory::SharedMemory;
use vmbus::ring::{RingError, RingState};

/// Packets (of any type, skipped ones included) one poll reads from the
/// guest's ring before it gives the CPU back: a guest that keeps its ring
/// full, or rewinds its read index, costs the host at most this much work
/// per poll, and the host goes round every channel before this one gets
/// another turn.
pub const POLL_BUDGET: u32 = 64;

/// What a device asks to be offered as (the offer message's device fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferParams {
    /// Interface type GUID (wire byte order): which driver binds to it.
    pub interface_type: [u8; 16],
    /// Instance GUID, or `None` to let the host number the instance (it
    /// must never reuse one while the guest may still hold the old offer).
    pub interface_instance: Option<[u8; 16]>,
    /// `chn_flags`.
    pub channel_flags: u16,
    /// User-defined bytes (pipe mode etc.).
    pub user_defined: [u8; 120],
}

impl OfferParams {
    /// An offer of `interface_type` with a host-chosen instance, no flags and
    /// no user-defined bytes.
    pub fn new(interface_type: [u8; 16]) -> Self {
        Self {
            interface_type,
            interface_instance: None,
            channel_flags: 0,
            user_defined: [0; 120],
        }
    }
}

/// Why a device refused an open (the guest hears OPENCHANNEL_RESULT failure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// The device already has an open channel.
    AlreadyOpen,
    /// The device vetoed the open.
    Refused(&'static str),
}

impl core::fmt::Display for OpenError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::AlreadyOpen => f.write_str("the device is already open"),
            Self::Refused(why) => write!(f, "the device refused: {why}"),
        }
    }
}

/// What one [`Device::poll`] came to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollResult {
    /// The guest was signalled (something was delivered to it).
    pub signalled: bool,
    /// The budget ran out with work left: poll again without waiting for a
    /// signal.
    pub more: bool,
    /// Work is running in a backend whose completion interrupts the host
    /// (a virtio-blk DMA with MSI-X): poll again after that interrupt,
    /// with nothing to do until it comes. The host may sleep meanwhile
    /// instead of polling in a loop ([`Self::more`] takes precedence).
    pub awaiting_device: bool,
    /// The guest broke its rings during this poll: the channel has stopped
    /// (reported once; later polls do nothing).
    pub broke: Option<RingError>,
}

/// Rings a guest by setting the channel's event flag (HvSignalEvent in the
/// root; a counter in tests).
pub trait GuestSignal {
    /// Signal the guest; false if the signal could not be delivered.
    fn signal(&mut self) -> bool;
}

/// Where a device reports its state for `channels`/`info` listings: named
/// fields in a fixed order. `name` is the field's key in JSON listings,
/// `label` what a person reads in text ones ("{value} {label}" for a
/// counter, "{label}: {value}" otherwise).
pub trait InspectSink {
    /// A counter.
    fn counter(&mut self, name: &'static str, label: &'static str, value: u64);
    /// A piece of text (empty: nothing to report).
    fn text(&mut self, name: &'static str, label: &'static str, value: &str);
    /// A ring's control page (`None`: unreadable).
    fn ring(&mut self, name: &'static str, label: &'static str, state: Option<RingState>);
}

/// A VMBus device (virtual service provider) as its host drives it.
///
/// Life cycle: the host asks for [`Self::offer`] once and offers the device
/// to the guest; each time the guest opens the channel the host builds a
/// [`Channel`] over the guest's rings and hands it to [`Self::open`]; the
/// guest's signals (and budget cuts) earn the device a [`Self::poll`]; the
/// guest closing the channel, a rescind or an unload end in [`Self::close`];
/// a reset of the guest's bus (restart, crash, stop) in [`Self::reset`].
pub trait Device<M: SharedMemory> {
    /// What to offer the guest.
    fn offer(&self) -> OfferParams;
    /// The guest opened the channel: take it, or refuse (the guest hears the
    /// failure and the channel stays offered).
    fn open(&mut self, channel: Channel<M>) -> Result<(), OpenError>;
    /// Do at most `budget` packets' work on the open channel.
    fn poll(&mut self, budget: u32) -> PollResult;
    /// The channel closed: drop it and stop touching the guest's memory.
    fn close(&mut self);
    /// The guest's bus was reset: back to the state just after offering.
    fn reset(&mut self);
    /// Report the device's state (nothing while it is closed).
    fn inspect(&self, out: &mut dyn InspectSink);
    /// The host's clock moved to `now_ns` (nanoseconds, any fixed origin):
    /// a device that speaks first or keeps timers (the integration services'
    /// negotiation, heartbeat and request timeouts) does its timed work
    /// here. The host calls it periodically for every open device; the
    /// default does nothing.
    fn tick(&mut self, now_ns: u64) -> PollResult {
        let _ = now_ns;
        PollResult::default()
    }

    /// The device's Ethernet side, if it is a NIC: how the host connects it
    /// to a switch without naming its type. The default: not a NIC.
    fn network(&mut self) -> Option<&mut dyn NetworkPort> {
        None
    }

    /// Sub-channels the guest asked for since the last call (storvsc's
    /// CREATE_SUB_CHANNELS, netvsc's subchannel request), each a device of
    /// its own: the host offers them with this device's interface type and
    /// instance and sub-channel index 1, 2, … (Linux
    /// `vmbus_process_offer` hands them to the primary's driver), and
    /// rescinds them when this device's channel closes or resets. The host
    /// asks after every poll. The default: none. (Only for guest memory
    /// that lives as long as the devices: the host keeps them.)
    fn take_sub_channels(&mut self) -> alloc::vec::Vec<alloc::boxed::Box<dyn Device<M>>>
    where
        M: 'static,
    {
        alloc::vec::Vec::new()
    }
}

/// A NIC's Ethernet side as its host's switch sees it.
pub trait NetworkPort {
    /// The MAC address the host assigned.
    fn mac(&self) -> [u8; 6];
    /// The next frame the guest sent, oldest first.
    fn take_tx(&mut self) -> Option<alloc::vec::Vec<u8>>;
    /// Give the guest `frame`; false if it was dropped (guest not ready,
    /// filtered, no room) — the device counts why.
    fn deliver_rx(&mut self, frame: &[u8]) -> bool;
}
