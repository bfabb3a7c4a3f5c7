//! The host side of VMBus as a state machine, independent of transport: feed
//! it the guest's channel messages, collect the messages to send back and the
//! events for device providers (vmbus-wire.md §1–§2; Linux
//! `drivers/hv/channel_mgmt.c` is the peer it must satisfy).
//!
//! The guest is untrusted. Malformed or out-of-order input is answered the way
//! Hyper-V answers it (a failure status where the protocol has one) or
//! reported as a [`Violation`]; it never changes the state of other channels.
//! Everything a guest can make the server hold is bounded by [`Limits`]
//! (GPADLs, their pages, queued answers), checked before anything is
//! allocated, and the allocations a guest sizes (assembly buffers, PFN lists,
//! the outbox, event lists, the GPADL copy in [`Event::Opened`]) use
//! `try_reserve`: past a quota, or when the host is out of memory, the request
//! is refused with the protocol's own failure (GPADL_CREATED with
//! [`STATUS_FAILURE`]) or a [`Violation`], never a panic. (Map nodes for the
//! bounded GPADL and assembly maps are the only infallible allocations.)
//!
//! Opening a channel takes two steps. A valid OPENCHANNEL puts the channel in
//! [`ChannelState::Opening`] and reports [`Event::Opened`]; nothing is sent to
//! the guest yet. The host starts the channel's device and answers with
//! [`Server::open_complete`]: accepted, the guest gets OPENCHANNEL_RESULT 0 and
//! the channel is Open; refused, the guest gets OPENCHANNEL_RESULT
//! [`STATUS_FAILURE`] and the channel is Offered again (the guest may retry).
//! While Opening, the channel holds one outbox slot for that answer, so the
//! answer always fits. An open that goes away before the answer (the guest's
//! CLOSECHANNEL, UNLOAD or new INITIATE_CONTACT, the host's [`Server::rescind`]
//! or [`Server::reset`]) gets no answer: [`Server::open_complete`] then
//! returns [`HostError::NotOpening`] and changes nothing.

use crate::gpadl::{self, Assembly, Gpadl, GpadlError};
use crate::protocol::{
    AllOffersDelivered, CloseChannel, GpadlCreated, GpadlHeader, GpadlTorndown, Header, InitiateContact,
    MAX_MESSAGE_SIZE, MAX_RELID, Message, ModifyChannel, ModifyChannelResponse, OfferChannel, OpenChannel,
    OpenResult, ParseError, RescindChannelOffer, UnloadResponse, VMBUS_SINT,
};
use crate::version::{self, Contact, Version};
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;
use zerocopy::{FromBytes, IntoBytes};

/// Status for a failed GPADL_CREATED or OPENCHANNEL_RESULT (what OpenVMM uses).
pub const STATUS_FAILURE: u32 = 0x8000_FFFF;

/// Status of a failed MODIFYCHANNEL_RESPONSE: NTSTATUS `STATUS_UNSUCCESSFUL`.
/// Linux only tests it against 0 (`drivers/hv/channel.c`
/// `send_modifychannel_with_ack`: nonzero is `-EAGAIN`); OpenVMM's
/// `vmbus_server` sends 0x8000FFFF under the same name.
pub const STATUS_UNSUCCESSFUL: i32 = 0xC000_0001_u32 as i32;

/// The `target_vp` that means "no interrupts"; MODIFYCHANNEL may not ask for
/// it (OpenVMM `vmbus_server/src/channels.rs` `modify_channel`,
/// `VP_INDEX_DISABLE_INTERRUPT`).
pub const VP_INDEX_DISABLE_INTERRUPT: u32 = u32::MAX;

/// How much a guest may make the server hold. Past a limit the guest's request
/// is refused ([`Violation::QuotaExceeded`]); the host's memory use per server
/// is bounded by these numbers whatever the guest sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// GPADLs held, complete ones and those still being assembled (header
    /// received, bodies outstanding) together. Default 64: Linux 6.1 uses two
    /// per channel (ring, plus a receive/send buffer for netvsc/storvsc-style
    /// devices), and each assembly can hold up to 64 KiB of range bytes.
    pub max_gpadls: usize,
    /// Pages in one GPADL. Default 8192 (32 MiB): admits Linux netvsc's
    /// largest receive buffer (31 MiB); the wire cannot carry more than 8190
    /// anyway (`range_buflen` is 16 bits).
    pub max_pages_per_gpadl: u64,
    /// Pages over all GPADLs, with the pages an assembly's header announced
    /// counted from the header on. Default 32768 (128 MiB); the server never
    /// allows more than the guest's page count (see [`Server::with_limits`]).
    pub max_gpadl_pages: u64,
    /// Messages queued for the guest and not yet taken with
    /// [`Server::next_message`]. Default 128. A guest request whose answers
    /// would not fit is refused before it changes anything
    /// ([`Quota::Outbox`]): the queue never grows past this. REQUESTOFFERS
    /// needs one slot per offer plus one, so this must exceed the number of
    /// offers. A channel waiting for its device's answer
    /// ([`ChannelState::Opening`]) holds one slot for it, counted here too
    /// (until the answer is queued or the open goes away).
    pub max_outbox: usize,
}

impl Limits {
    /// The defaults described on each field.
    pub const DEFAULT: Self = Self {
        max_gpadls: 64,
        max_pages_per_gpadl: 8192,
        max_gpadl_pages: 32768,
        max_outbox: 128,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Which of the [`Limits`] a refused request would have exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    /// [`Limits::max_gpadls`].
    Gpadls,
    /// [`Limits::max_pages_per_gpadl`].
    GpadlPages,
    /// [`Limits::max_gpadl_pages`].
    TotalGpadlPages,
    /// [`Limits::max_outbox`].
    Outbox,
}

/// What the server holds now, against its limits (for the root's `info`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// GPADLs held, complete and in assembly.
    pub gpadls: usize,
    /// Of those, still in assembly.
    pub assemblies: usize,
    /// Pages of all GPADLs (an assembly's announced pages included).
    pub gpadl_pages: u64,
    /// Channels offered (rescinded ones awaiting RELID_RELEASED included).
    pub channels: usize,
    /// Channels open ([`ChannelState::Open`] only: a channel whose device
    /// has not answered yet is counted in `opening_channels`).
    pub open_channels: usize,
    /// Channels waiting for their device's answer ([`ChannelState::Opening`]).
    /// Each holds one outbox slot for its OPENCHANNEL_RESULT: the slots
    /// count against [`Limits::max_outbox`] but not in `outbox`.
    pub opening_channels: usize,
    /// Messages waiting in the outbox.
    pub outbox: usize,
    /// The limits in force ([`Limits::max_gpadl_pages`] already capped at the
    /// guest's page count).
    pub limits: Limits,
}

/// A device offered on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferSpec {
    /// Interface type GUID (wire byte order).
    pub interface_type: [u8; 16],
    /// Instance GUID.
    pub interface_instance: [u8; 16],
    /// `chn_flags`.
    pub channel_flags: u16,
    /// User-defined bytes (pipe mode etc.).
    pub user_defined: [u8; 120],
    /// 0 for a device's primary channel; 1, 2, … for its sub-channels,
    /// which carry the primary's interface type and instance (Linux
    /// `vmbus_process_offer` pairs them by those GUIDs and hands a
    /// sub-channel to the primary's driver).
    pub sub_channel_index: u16,
}

/// Where a channel is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelState {
    /// Offered, not open.
    Offered,
    /// The guest sent a valid OPENCHANNEL ([`Event::Opened`] was reported)
    /// and the host has not answered it yet ([`Server::open_complete`]):
    /// nothing has been sent to the guest. The ring GPADL cannot be torn
    /// down and MODIFYCHANNEL is refused, as for a channel not open. One
    /// outbox slot is held for the answer.
    Opening(OpenInfo),
    /// Open on a ring GPADL.
    Open(OpenInfo),
    /// Rescinded; the relid is reused only after RELID_RELEASED.
    Rescinded,
}

/// An open (or opening) channel's parameters, from the guest's OPENCHANNEL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenInfo {
    /// The GPADL holding both rings.
    pub ring_gpadl: u32,
    /// Page where the host→guest ring starts.
    pub downstream_page_offset: u32,
    /// VP for host→guest interrupts.
    pub target_vp: u32,
    /// `open_id` from the guest.
    pub open_id: u32,
}

/// One channel.
#[derive(Debug, Clone)]
pub struct Channel {
    /// Its offer.
    pub offer: OfferSpec,
    /// State.
    pub state: ChannelState,
    /// Connection id the guest signals with.
    pub connection_id: u32,
}

/// What the server tells its device providers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The guest connected.
    Connected(Version),
    /// The guest asked to open a channel, on rings in `gpadl`: the channel
    /// is now [`ChannelState::Opening`]. The host must start its device and
    /// answer with [`Server::open_complete`] (accepted or refused); the guest
    /// hears nothing until then. If an [`Event::Closed`] for the relid comes
    /// first (or the host rescinds or resets), the open is gone: stop what
    /// was started and do not answer (`open_complete` would return
    /// [`HostError::NotOpening`]).
    Opened {
        /// The channel.
        relid: u32,
        /// Open parameters.
        info: OpenInfo,
        /// The ring GPADL.
        gpadl: Gpadl,
    },
    /// A channel was closed by the guest, by UNLOAD, or by a new
    /// INITIATE_CONTACT (an implicit disconnect). Reported for an Open
    /// channel and for an Opening one (the device may have started; its
    /// answer is no longer wanted), and for a rescinded channel the guest
    /// closes.
    Closed {
        /// The channel.
        relid: u32,
    },
    /// The guest unloaded VMBus: everything is gone.
    Unloaded,
}

/// Something the guest did wrong, with no protocol reply to carry it (or
/// besides the failure reply that carried it), for the root to count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// The message did not parse.
    Malformed(ParseError),
    /// A message only the host sends.
    WrongDirection(u32),
    /// A message before INITIATE_CONTACT succeeded.
    NotConnected(u32),
    /// A relid that names no channel (or the wrong state).
    BadRelid(u32),
    /// A GPADL handle that names nothing in progress or known.
    BadGpadl(u32),
    /// A GPADL that failed its checks (GPADL_CREATED carried a failure).
    GpadlRefused(GpadlError),
    /// A request past one of the [`Limits`]; nothing changed (a GPADL_HEADER
    /// was answered with a failed GPADL_CREATED).
    QuotaExceeded(Quota),
    /// The host had no memory for what the request needs; nothing changed.
    HostOutOfMemory,
    /// A message the negotiated version does not have (MODIFYCHANNEL below
    /// 4.1: Linux `drivers/hv/channel.c` `vmbus_send_modifychannel`).
    Unsupported {
        /// The message type.
        msgtype: u32,
        /// The version in force.
        version: Version,
    },
    /// MODIFYCHANNEL to [`VP_INDEX_DISABLE_INTERRUPT`].
    BadTargetVp(u32),
}

/// Why a host-side request ([`Server::offer`], [`Server::rescind`],
/// [`Server::open_complete`]) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    /// All relids 1..=2047 are taken.
    NoFreeRelid,
    /// No such channel, or it is already rescinded.
    NoChannel(u32),
    /// [`Server::open_complete`] for a channel that is not
    /// [`ChannelState::Opening`]: its open was answered already, or went away
    /// (the guest closed the channel, UNLOAD, a new INITIATE_CONTACT, a
    /// rescind, [`Server::reset`]). Nothing was sent; the device should stop.
    NotOpening(u32),
    /// The message for the guest does not fit the outbox (it is full, see
    /// [`Limits::max_outbox`], or the host is out of memory): drain it with
    /// [`Server::next_message`] and retry. Nothing changed.
    OutboxFull,
}

/// One queued message for the guest, kept in place (no allocation per message).
#[derive(Clone)]
struct Outgoing {
    vp: u32,
    len: usize,
    bytes: [u8; MAX_MESSAGE_SIZE],
}

/// The bounded queue of messages for the guest.
///
/// Slots can be held for answers owed later (one per Opening channel): a
/// held slot counts against the limit like a queued message, and its memory
/// is reserved when it is taken, so the answer always fits.
///
/// Invariants: `queue.len() + held <= max`, and the queue's capacity is at
/// least `queue.len() + held` (capacity never shrinks: nothing here calls
/// `shrink_to_fit`).
struct Outbox {
    queue: VecDeque<Outgoing>,
    max: usize,
    held: usize,
}

impl Outbox {
    /// Make sure `n` more messages fit besides the held slots, without
    /// growing past the limit.
    fn make_room(&mut self, n: usize) -> Result<(), Violation> {
        let wanted = self.held.saturating_add(n);
        if self.queue.len().saturating_add(wanted) > self.max {
            return Err(Violation::QuotaExceeded(Quota::Outbox));
        }
        self.queue
            .try_reserve(wanted)
            .map_err(|_| Violation::HostOutOfMemory)
    }

    /// Hold one slot for a later answer. Only right after `make_room(1)`
    /// succeeded with nothing pushed since: that is the slot held.
    fn hold(&mut self) {
        self.held += 1;
    }

    /// Give a held slot back.
    fn release(&mut self) {
        self.held = self.held.saturating_sub(1);
    }

    /// Queue the answer a held slot was for. Cannot fail while the
    /// invariants hold (the slot and its memory are there); if they were
    /// broken it is refused and the slot stays held, never a panic.
    fn push_held(&mut self, vp: u32, bytes: &[u8]) -> Result<(), Violation> {
        self.release();
        self.push(vp, bytes).inspect_err(|_| self.hold())
    }

    fn push(&mut self, vp: u32, bytes: &[u8]) -> Result<(), Violation> {
        self.make_room(1)?;
        let len = bytes.len().min(MAX_MESSAGE_SIZE);
        let mut m = Outgoing {
            vp,
            len,
            bytes: [0; MAX_MESSAGE_SIZE],
        };
        m.bytes[..len].copy_from_slice(&bytes[..len]);
        self.queue.push_back(m);
        Ok(())
    }
}

/// The server.
pub struct Server {
    version: Option<Version>,
    target_vp: u32,
    sint: u8,
    channels: BTreeMap<u32, Channel>,
    assemblies: BTreeMap<u32, Assembly>,
    gpadls: BTreeMap<u32, Gpadl>,
    outbox: Outbox,
    offers_requested: bool,
    guest_pages: u64,
    limits: Limits,
}

/// An empty event list with room for `n` events, or [`Violation::HostOutOfMemory`].
fn events_with_room(n: usize) -> Result<Vec<Event>, Violation> {
    let mut events = Vec::new();
    events
        .try_reserve_exact(n)
        .map_err(|_| Violation::HostOutOfMemory)?;
    Ok(events)
}

fn offer_message(relid: u32, ch: &Channel) -> OfferChannel {
    OfferChannel {
        header: Header::new(OfferChannel::TYPE),
        interface_type: ch.offer.interface_type,
        interface_instance: ch.offer.interface_instance,
        reserved: [0; 16],
        channel_flags: ch.offer.channel_flags,
        mmio_megabytes: 0,
        user_defined: ch.offer.user_defined,
        sub_channel_index: ch.offer.sub_channel_index,
        reserved2: 0,
        child_relid: relid,
        monitor_id: 0,
        // No monitor pages: the guest signals with HvSignalEvent.
        monitor_allocated: 0,
        is_dedicated_interrupt: 1,
        connection_id: ch.connection_id,
    }
}

impl Server {
    /// A server for a guest of `guest_pages` pages (PFNs `0..guest_pages`),
    /// with the default [`Limits`].
    pub fn new(guest_pages: u64) -> Self {
        Self::with_limits(guest_pages, Limits::DEFAULT)
    }

    /// A server for a guest of `guest_pages` pages (PFNs `0..guest_pages`: a
    /// GPADL naming PFN `guest_pages` or above is refused) with `limits`.
    /// [`Limits::max_gpadl_pages`] is capped at `guest_pages`: a guest has no
    /// business describing more memory than it has.
    pub fn with_limits(guest_pages: u64, limits: Limits) -> Self {
        let limits = Limits {
            max_gpadl_pages: limits.max_gpadl_pages.min(guest_pages),
            ..limits
        };
        Self {
            version: None,
            target_vp: 0,
            sint: VMBUS_SINT,
            channels: BTreeMap::new(),
            assemblies: BTreeMap::new(),
            gpadls: BTreeMap::new(),
            outbox: Outbox {
                queue: VecDeque::new(),
                max: limits.max_outbox,
                held: 0,
            },
            offers_requested: false,
            guest_pages,
            limits,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// What the server holds now, against its limits.
    pub fn usage(&self) -> Usage {
        Usage {
            gpadls: self.gpadls.len() + self.assemblies.len(),
            assemblies: self.assemblies.len(),
            gpadl_pages: self.gpadl_pages(),
            channels: self.channels.len(),
            open_channels: self.count(|s| matches!(s, ChannelState::Open(_))),
            opening_channels: self.count(|s| matches!(s, ChannelState::Opening(_))),
            outbox: self.outbox.queue.len(),
            limits: self.limits,
        }
    }

    /// The connected version, if any.
    pub fn version(&self) -> Option<Version> {
        self.version
    }

    /// (VP, SINT) that messages go to.
    pub fn message_target(&self) -> (u32, u8) {
        (self.target_vp, self.sint)
    }

    /// The channels.
    pub fn channels(&self) -> &BTreeMap<u32, Channel> {
        &self.channels
    }

    /// A known GPADL.
    pub fn gpadl(&self, handle: u32) -> Option<&Gpadl> {
        self.gpadls.get(&handle)
    }

    /// Every complete GPADL, by handle (assemblies in progress are not listed).
    pub fn gpadls(&self) -> &BTreeMap<u32, Gpadl> {
        &self.gpadls
    }

    /// Next message for the guest: (VP, bytes).
    pub fn next_message(&mut self) -> Option<(u32, Vec<u8>)> {
        let m = self.outbox.queue.pop_front()?;
        Some((m.vp, m.bytes[..m.len].to_vec()))
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), Violation> {
        self.outbox.push(self.target_vp, bytes)
    }

    fn count(&self, f: impl Fn(&ChannelState) -> bool) -> usize {
        self.channels.values().filter(|c| f(&c.state)).count()
    }

    /// Channels a device may be running for: Open, or Opening (the device
    /// got [`Event::Opened`] and may have started before answering).
    fn started_relids(&self) -> impl Iterator<Item = u32> + '_ {
        self.channels
            .iter()
            .filter(|(_, c)| matches!(c.state, ChannelState::Open(_) | ChannelState::Opening(_)))
            .map(|(r, _)| *r)
    }

    fn gpadl_pages(&self) -> u64 {
        let done: u64 = self.gpadls.values().map(|g| g.page_count() as u64).sum();
        let pending: u64 = self.assemblies.values().map(Assembly::declared_pages).sum();
        done + pending
    }

    /// Offer a device; returns its relid: always the lowest free one from 1
    /// (as Hyper-V and OpenVMM allocate them). A rescinded channel keeps its
    /// relid until the guest's RELID_RELEASED (or UNLOAD, a new
    /// INITIATE_CONTACT, [`Self::reset`]), so a relid is never reused while
    /// the guest may still refer to the old channel (vmbus-wire.md §2.4).
    pub fn offer(&mut self, offer: OfferSpec) -> Result<u32, HostError> {
        let relid = (1..=MAX_RELID)
            .find(|r| !self.channels.contains_key(r))
            .ok_or(HostError::NoFreeRelid)?;
        let announce = self.version.is_some() && self.offers_requested;
        if announce {
            self.outbox.make_room(1).map_err(|_| HostError::OutboxFull)?;
        }
        // Unique per channel; SINT 2 in bits 15:12 as OpenVMM encodes it.
        let connection_id = relid | ((VMBUS_SINT as u32) << 12);
        let channel = Channel {
            offer,
            state: ChannelState::Offered,
            connection_id,
        };
        if announce {
            let m = offer_message(relid, &channel);
            self.send(m.as_bytes()).map_err(|_| HostError::OutboxFull)?;
        }
        self.channels.insert(relid, channel);
        Ok(relid)
    }

    /// Take a device away: the guest must close it and release the relid.
    /// Not connected, the channel simply goes. An Opening channel's open is
    /// dropped unanswered (its held outbox slot carries the RESCIND): the
    /// caller stops the device it may have started, and a later
    /// [`Self::open_complete`] returns [`HostError::NotOpening`].
    pub fn rescind(&mut self, relid: u32) -> Result<(), HostError> {
        let opening = match self.channels.get(&relid) {
            Some(c) if c.state != ChannelState::Rescinded => matches!(c.state, ChannelState::Opening(_)),
            _ => return Err(HostError::NoChannel(relid)),
        };
        if opening {
            self.outbox.release();
        }
        if self.version.is_none() {
            self.channels.remove(&relid);
            self.gpadls.retain(|_, g| g.child_relid != relid);
            self.assemblies.retain(|_, a| a.child_relid() != relid);
            return Ok(());
        }
        let m = RescindChannelOffer {
            header: Header::new(RescindChannelOffer::TYPE),
            child_relid: relid,
        };
        if self.send(m.as_bytes()).is_err() {
            if opening {
                // Nothing changed: the open still waits, with its slot.
                self.outbox.hold();
            }
            return Err(HostError::OutboxFull);
        }
        if let Some(ch) = self.channels.get_mut(&relid) {
            ch.state = ChannelState::Rescinded;
        }
        Ok(())
    }

    /// Back to power-on, for a guest that restarts without telling VMBus (a
    /// child partition reset): not connected, no GPADLs or assemblies, nothing
    /// queued for the guest, rescinded channels gone, every other channel
    /// Offered with its offer, relid and connection id kept, message target
    /// back to VP 0 / SINT 2. Returns the relids that were Open or Opening
    /// (ascending), so their devices can be stopped (no [`Event::Closed`] is
    /// reported for them; an Opening one's open is dropped unanswered).
    pub fn reset(&mut self) -> Vec<u32> {
        let open: Vec<u32> = self.started_relids().collect();
        self.disconnect();
        self.outbox.queue.clear();
        self.target_vp = 0;
        self.sint = VMBUS_SINT;
        open
    }

    /// Drop the connection and everything the guest built on it: open and
    /// opening channels go back to Offered (an opening one's answer is
    /// dropped, with its held slot), rescinded ones go, GPADLs and assemblies
    /// are forgotten. The caller has collected the started relids.
    fn disconnect(&mut self) {
        for ch in self.channels.values_mut() {
            match ch.state {
                ChannelState::Open(_) => ch.state = ChannelState::Offered,
                ChannelState::Opening(_) => {
                    ch.state = ChannelState::Offered;
                    self.outbox.release();
                }
                ChannelState::Offered | ChannelState::Rescinded => {}
            }
        }
        self.channels.retain(|_, c| c.state != ChannelState::Rescinded);
        self.gpadls.clear();
        self.assemblies.clear();
        self.version = None;
        self.offers_requested = false;
    }

    /// Handle one message the guest posted on `connection_id`.
    ///
    /// A request is refused before it changes anything if its answers would
    /// not fit the outbox ([`Quota::Outbox`]) or its events the host's memory.
    pub fn handle(&mut self, connection_id: u32, bytes: &[u8]) -> Result<Vec<Event>, Violation> {
        let message = Message::parse(bytes).map_err(Violation::Malformed)?;
        let msgtype = Header::read_from_prefix(bytes).map_or(0, |(h, _)| h.msgtype);
        if let Message::InitiateContact(ic) = &message {
            return self.initiate_contact(connection_id, ic);
        }
        let Some(version) = self.version else {
            return Err(Violation::NotConnected(msgtype));
        };
        let replies = match &message {
            Message::RequestOffers => {
                self.channels
                    .values()
                    .filter(|c| c.state != ChannelState::Rescinded)
                    .count()
                    + 1
            }
            Message::GpadlHeader(..)
            | Message::GpadlBody(..)
            | Message::GpadlTeardown(_)
            | Message::OpenChannel(_)
            | Message::Unload => 1,
            Message::ModifyChannel(_) if version >= Version::WIN10_V5_3 => 1,
            _ => 0,
        };
        self.outbox.make_room(replies)?;
        match message {
            Message::RequestOffers => {
                self.offers_requested = true;
                let vp = self.target_vp;
                for (relid, ch) in &self.channels {
                    if ch.state != ChannelState::Rescinded {
                        self.outbox.push(vp, offer_message(*relid, ch).as_bytes())?;
                    }
                }
                self.send(
                    AllOffersDelivered {
                        header: Header::new(AllOffersDelivered::TYPE),
                    }
                    .as_bytes(),
                )?;
                Ok(Vec::new())
            }
            Message::GpadlHeader(h, rest) => self.gpadl_header(&h, rest),
            Message::GpadlBody(b, rest) => {
                let a = self
                    .assemblies
                    .get_mut(&b.gpadl)
                    .ok_or(Violation::BadGpadl(b.gpadl))?;
                a.append(&b, rest).map_err(Violation::GpadlRefused)?;
                if a.is_complete() {
                    let a = self
                        .assemblies
                        .remove(&b.gpadl)
                        .ok_or(Violation::BadGpadl(b.gpadl))?;
                    return self.complete_gpadl(a);
                }
                Ok(Vec::new())
            }
            Message::GpadlTeardown(t) => {
                let in_use = self.channels.values().any(|c| {
                    matches!(&c.state, ChannelState::Open(o) | ChannelState::Opening(o) if o.ring_gpadl == t.gpadl)
                });
                match self.gpadls.get(&t.gpadl) {
                    Some(g) if g.child_relid == t.child_relid && !in_use => {
                        self.gpadls.remove(&t.gpadl);
                        let m = GpadlTorndown {
                            header: Header::new(GpadlTorndown::TYPE),
                            gpadl: t.gpadl,
                        };
                        self.send(m.as_bytes())?;
                        Ok(Vec::new())
                    }
                    _ => Err(Violation::BadGpadl(t.gpadl)),
                }
            }
            Message::OpenChannel(o) => self.open_channel(&o),
            Message::CloseChannel(c) => self.close_channel(&c),
            Message::RelidReleased(r) => match self.channels.get(&r.child_relid) {
                Some(c) if c.state == ChannelState::Rescinded => {
                    self.channels.remove(&r.child_relid);
                    self.gpadls.retain(|_, g| g.child_relid != r.child_relid);
                    self.assemblies.retain(|_, a| a.child_relid() != r.child_relid);
                    Ok(Vec::new())
                }
                _ => Err(Violation::BadRelid(r.child_relid)),
            },
            Message::ModifyChannel(m) => self.modify_channel(version, msgtype, &m),
            Message::Unload => {
                let mut events = events_with_room(self.started_relids().count() + 1)?;
                events.extend(self.started_relids().map(|relid| Event::Closed { relid }));
                self.disconnect();
                self.send(
                    UnloadResponse {
                        header: Header::new(UnloadResponse::TYPE),
                    }
                    .as_bytes(),
                )?;
                events.push(Event::Unloaded);
                Ok(events)
            }
            // Host-to-guest messages coming from the guest (INITIATE_CONTACT
            // was handled above).
            _ => Err(Violation::WrongDirection(msgtype)),
        }
    }

    /// INITIATE_CONTACT. From a guest that is already connected it is an
    /// implicit disconnect first: every open or opening channel is closed
    /// ([`Event::Closed`], before [`Event::Connected`]), GPADLs, assemblies
    /// and rescinded channels are dropped, and the contact is then decided as
    /// on a fresh bus. That is what a guest rebooting into a new kernel needs
    /// (Linux sends no UNLOAD on a normal reboot or kexec; its `vmbus_connect`
    /// in `drivers/hv/connection.c` just starts over), and what OpenVMM does
    /// (`vmbus_server/src/channels.rs` `initiate_contact` →
    /// `request_disconnect(ConnectionAction::Reconnect)`).
    fn initiate_contact(
        &mut self,
        connection_id: u32,
        ic: &InitiateContact,
    ) -> Result<Vec<Event>, Violation> {
        self.outbox.make_room(1)?;
        let mut events = events_with_room(self.started_relids().count() + 1)?;
        if self.version.is_some() {
            events.extend(self.started_relids().map(|relid| Event::Closed { relid }));
            self.disconnect();
        }
        let contact = version::decide(ic, connection_id);
        if let Contact::Accepted {
            version,
            target_vp,
            sint,
            ..
        } = contact
        {
            self.version = Some(version);
            self.target_vp = target_vp;
            self.sint = sint;
            events.push(Event::Connected(version));
        } else {
            // Not connected: answer the VP the guest named, on SINT 2.
            self.target_vp = ic.target_vcpu;
            self.sint = VMBUS_SINT;
        }
        self.send(version::response(&contact).as_bytes())?;
        Ok(events)
    }

    fn gpadl_created(&mut self, relid: u32, handle: u32, status: u32) -> Result<(), Violation> {
        let m = GpadlCreated {
            header: Header::new(GpadlCreated::TYPE),
            child_relid: relid,
            gpadl: handle,
            status,
        };
        self.send(m.as_bytes())
    }

    /// Answer a GPADL_HEADER with a failed GPADL_CREATED, and report why.
    fn refuse_gpadl(&mut self, h: &GpadlHeader, why: Violation) -> Result<Vec<Event>, Violation> {
        self.gpadl_created(h.child_relid, h.gpadl, STATUS_FAILURE)?;
        Err(why)
    }

    /// Which quota a new GPADL of `pages` pages would exceed, if any.
    fn gpadl_quota(&self, pages: u64) -> Option<Quota> {
        if self.gpadls.len() + self.assemblies.len() >= self.limits.max_gpadls {
            return Some(Quota::Gpadls);
        }
        if pages > self.limits.max_pages_per_gpadl {
            return Some(Quota::GpadlPages);
        }
        if self.gpadl_pages().saturating_add(pages) > self.limits.max_gpadl_pages {
            return Some(Quota::TotalGpadlPages);
        }
        None
    }

    fn gpadl_header(&mut self, h: &GpadlHeader, rest: &[u8]) -> Result<Vec<Event>, Violation> {
        if self.gpadls.contains_key(&h.gpadl) || self.assemblies.contains_key(&h.gpadl) {
            return self.refuse_gpadl(h, Violation::BadGpadl(h.gpadl));
        }
        if !matches!(self.channels.get(&h.child_relid), Some(c) if c.state != ChannelState::Rescinded) {
            return self.refuse_gpadl(h, Violation::BadRelid(h.child_relid));
        }
        // Quotas come from the header alone, before anything is allocated.
        let pages = match gpadl::declared_pages(h) {
            Ok(p) => p,
            Err(e) => return self.refuse_gpadl(h, Violation::GpadlRefused(e)),
        };
        if let Some(q) = self.gpadl_quota(pages) {
            return self.refuse_gpadl(h, Violation::QuotaExceeded(q));
        }
        match Assembly::start(h, rest) {
            Ok(a) if a.is_complete() => self.complete_gpadl(a),
            Ok(a) => {
                // Bounded: counted against max_gpadls above.
                self.assemblies.insert(h.gpadl, a);
                Ok(Vec::new())
            }
            Err(GpadlError::OutOfMemory) => self.refuse_gpadl(h, Violation::HostOutOfMemory),
            Err(e) => self.refuse_gpadl(h, Violation::GpadlRefused(e)),
        }
    }

    fn complete_gpadl(&mut self, a: Assembly) -> Result<Vec<Event>, Violation> {
        let (relid, handle) = (a.child_relid(), a.handle());
        match a.finish(self.guest_pages) {
            Ok(g) => {
                // Bounded: the assembly was counted against max_gpadls.
                self.gpadls.insert(handle, g);
                self.gpadl_created(relid, handle, 0)?;
                Ok(Vec::new())
            }
            Err(e) => {
                self.gpadl_created(relid, handle, STATUS_FAILURE)?;
                Err(match e {
                    GpadlError::OutOfMemory => Violation::HostOutOfMemory,
                    e => Violation::GpadlRefused(e),
                })
            }
        }
    }

    /// Answer the guest's open of `relid` (reported by [`Event::Opened`]):
    /// `accepted`, the device runs: the channel becomes
    /// [`ChannelState::Open`] and the guest gets OPENCHANNEL_RESULT status 0;
    /// refused, the channel is Offered again and the guest gets
    /// OPENCHANNEL_RESULT [`STATUS_FAILURE`] (it may try again). The result
    /// carries the `open_id` of the guest's request.
    ///
    /// The answer goes into the outbox slot the channel has held since its
    /// OPENCHANNEL, so it is never refused for room ([`HostError::OutboxFull`]
    /// only if that guarantee were broken; nothing changes then, and the call
    /// may be retried). A channel that is not Opening (no such channel:
    /// [`HostError::NoChannel`]; answered already, closed by the guest,
    /// unloaded, reconnected, rescinded or reset since [`Event::Opened`]:
    /// [`HostError::NotOpening`]) is left as it is and nothing is sent.
    pub fn open_complete(&mut self, relid: u32, accepted: bool) -> Result<(), HostError> {
        let ch = self.channels.get(&relid).ok_or(HostError::NoChannel(relid))?;
        let ChannelState::Opening(info) = &ch.state else {
            return Err(HostError::NotOpening(relid));
        };
        let m = OpenResult {
            header: Header::new(OpenResult::TYPE),
            child_relid: relid,
            open_id: info.open_id,
            status: if accepted { 0 } else { STATUS_FAILURE },
        };
        self.outbox
            .push_held(self.target_vp, m.as_bytes())
            .map_err(|_| HostError::OutboxFull)?;
        if let Some(ch) = self.channels.get_mut(&relid) {
            let was = core::mem::replace(&mut ch.state, ChannelState::Offered);
            if let (true, ChannelState::Opening(info)) = (accepted, was) {
                ch.state = ChannelState::Open(info);
            }
        }
        Ok(())
    }

    /// OPENCHANNEL: a valid one makes the channel Opening and waits for the
    /// host's [`Self::open_complete`] (the slot `handle` made room for is
    /// held for that answer); an invalid one is answered with a failure at
    /// once.
    fn open_channel(&mut self, o: &OpenChannel) -> Result<Vec<Event>, Violation> {
        let result = self.open(o);
        if result.is_err() {
            let m = OpenResult {
                header: Header::new(OpenResult::TYPE),
                child_relid: o.child_relid,
                open_id: o.open_id,
                status: STATUS_FAILURE,
            };
            self.send(m.as_bytes())?;
        }
        result
    }

    fn open(&mut self, o: &OpenChannel) -> Result<Vec<Event>, Violation> {
        let relid = o.child_relid;
        let ch = self.channels.get(&relid).ok_or(Violation::BadRelid(relid))?;
        if ch.state != ChannelState::Offered {
            return Err(Violation::BadRelid(relid));
        }
        let g = self
            .gpadls
            .get(&o.ring_gpadl)
            .ok_or(Violation::BadGpadl(o.ring_gpadl))?;
        let pages = g.page_count() as u64;
        // Each ring needs its control page and at least one data page.
        let split = o.downstream_ring_page_offset as u64;
        if g.child_relid != relid || split < 2 || pages < split + 2 || g.ranges.len() != 1 {
            return Err(Violation::BadGpadl(o.ring_gpadl));
        }
        let info = OpenInfo {
            ring_gpadl: o.ring_gpadl,
            downstream_page_offset: o.downstream_ring_page_offset,
            target_vp: o.target_vp,
            open_id: o.open_id,
        };
        let gpadl = g.try_clone().map_err(|_| Violation::HostOutOfMemory)?;
        let mut events = events_with_room(1)?;
        if let Some(ch) = self.channels.get_mut(&relid) {
            ch.state = ChannelState::Opening(info.clone());
            // `handle` made room for one answer: hold it for open_complete.
            self.outbox.hold();
        }
        events.push(Event::Opened { relid, info, gpadl });
        Ok(events)
    }

    fn close_channel(&mut self, c: &CloseChannel) -> Result<Vec<Event>, Violation> {
        let relid = c.child_relid;
        let ch = self.channels.get_mut(&relid).ok_or(Violation::BadRelid(relid))?;
        if ch.state == ChannelState::Offered {
            return Err(Violation::BadRelid(relid));
        }
        let mut events = events_with_room(1)?;
        // A rescinded channel may still be closed by the guest. An Opening
        // one is closed before its device answered: the answer is dropped
        // (Linux waits for OPENCHANNEL_RESULT before it closes, so only a
        // confused or hostile guest does this) and the device is stopped by
        // the Closed event.
        match ch.state {
            ChannelState::Open(_) => ch.state = ChannelState::Offered,
            ChannelState::Opening(_) => {
                ch.state = ChannelState::Offered;
                self.outbox.release();
            }
            ChannelState::Offered | ChannelState::Rescinded => {}
        }
        events.push(Event::Closed { relid });
        Ok(events)
    }

    /// MODIFYCHANNEL: retarget an open channel's interrupts. It exists from
    /// 4.1 (Linux `drivers/hv/channel.c` `vmbus_send_modifychannel`); below,
    /// it is a violation with no answer. From 5.3 every MODIFYCHANNEL is
    /// answered, a refused one with [`STATUS_UNSUCCESSFUL`], because Linux
    /// 6.1 waits for the answer with no timeout (`send_modifychannel_with_ack`,
    /// `wait_for_completion`); OpenVMM does the same (`channels.rs`
    /// `handle_modify_channel`). Refused: an unknown relid, a channel that is
    /// not open (an Opening one included), target VP
    /// [`VP_INDEX_DISABLE_INTERRUPT`].
    fn modify_channel(
        &mut self,
        version: Version,
        msgtype: u32,
        m: &ModifyChannel,
    ) -> Result<Vec<Event>, Violation> {
        if version < Version::WIN10_V4_1 {
            return Err(Violation::Unsupported { msgtype, version });
        }
        let result = self.retarget(m);
        if version >= Version::WIN10_V5_3 {
            let r = ModifyChannelResponse {
                header: Header::new(ModifyChannelResponse::TYPE),
                child_relid: m.child_relid,
                status: if result.is_ok() { 0 } else { STATUS_UNSUCCESSFUL },
            };
            self.send(r.as_bytes())?;
        }
        result.map(|()| Vec::new())
    }

    fn retarget(&mut self, m: &ModifyChannel) -> Result<(), Violation> {
        if m.target_vp == VP_INDEX_DISABLE_INTERRUPT {
            return Err(Violation::BadTargetVp(m.target_vp));
        }
        let ch = self
            .channels
            .get_mut(&m.child_relid)
            .ok_or(Violation::BadRelid(m.child_relid))?;
        let ChannelState::Open(info) = &mut ch.state else {
            return Err(Violation::BadRelid(m.child_relid));
        };
        info.target_vp = m.target_vp;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Client, ClientEvent};
    use crate::protocol::{GpadlBody, GpadlTeardown, MESSAGE_CONNECTION_ID, RelidReleased, RequestOffers};

    fn spec(n: u8) -> OfferSpec {
        OfferSpec {
            interface_type: [n; 16],
            interface_instance: [n ^ 0x5A; 16],
            channel_flags: 0,
            user_defined: [0; 120],
            sub_channel_index: 0,
        }
    }

    fn contact(v: Version) -> Vec<u8> {
        InitiateContact {
            header: Header::new(InitiateContact::TYPE),
            version_requested: v.0,
            target_vcpu: 0,
            interrupt_page_or_sint: if v >= Version::WIN10_V5 { 2 } else { 0 },
            monitor_page1: 0,
            monitor_page2: 0,
        }
        .as_bytes()
        .to_vec()
    }

    fn drain(s: &mut Server) -> Vec<Vec<u8>> {
        core::iter::from_fn(|| s.next_message().map(|(_, m)| m)).collect()
    }

    fn request_offers() -> Vec<u8> {
        RequestOffers {
            header: Header::new(RequestOffers::TYPE),
        }
        .as_bytes()
        .to_vec()
    }

    /// A server with `offers` channels, connected at `v`, offers delivered and drained.
    fn connected(guest_pages: u64, limits: Limits, v: Version, offers: u8) -> Server {
        let mut s = Server::with_limits(guest_pages, limits);
        for i in 0..offers {
            s.offer(spec(i + 1)).unwrap();
        }
        assert_eq!(s.handle(4, &contact(v)), Ok(vec![Event::Connected(v)]));
        s.handle(MESSAGE_CONNECTION_ID, &request_offers()).unwrap();
        drain(&mut s);
        s
    }

    /// Post a whole GPADL; the last result and the GPADL_CREATED status sent, if any.
    fn post_gpadl(
        s: &mut Server,
        relid: u32,
        handle: u32,
        pfns: &[u64],
    ) -> (Result<Vec<Event>, Violation>, Option<u32>) {
        let mut last = Ok(Vec::new());
        for m in gpadl::encode(relid, handle, pfns) {
            last = s.handle(1, &m);
        }
        let status = drain(s).iter().find_map(|m| match Message::parse(m) {
            Ok(Message::GpadlCreated(c)) if c.gpadl == handle => Some(c.status),
            _ => None,
        });
        (last, status)
    }

    /// Only the GPADL_HEADER of a GPADL announcing `pages` pages (bodies never follow).
    fn header_only(relid: u32, handle: u32, pages: u64) -> Vec<u8> {
        let pfns: Vec<u64> = (0..pages).collect();
        gpadl::encode(relid, handle, &pfns).swap_remove(0)
    }

    fn open_msg(relid: u32, gpadl: u32, split: u32) -> Vec<u8> {
        OpenChannel {
            header: Header::new(OpenChannel::TYPE),
            child_relid: relid,
            open_id: relid,
            ring_gpadl: gpadl,
            target_vp: 0,
            downstream_ring_page_offset: split,
            user_data: [0; 120],
        }
        .as_bytes()
        .to_vec()
    }

    fn modify(relid: u32, target_vp: u32) -> Vec<u8> {
        ModifyChannel {
            header: Header::new(ModifyChannel::TYPE),
            child_relid: relid,
            target_vp,
        }
        .as_bytes()
        .to_vec()
    }

    fn teardown(relid: u32, gpadl: u32) -> Vec<u8> {
        GpadlTeardown {
            header: Header::new(GpadlTeardown::TYPE),
            child_relid: relid,
            gpadl,
        }
        .as_bytes()
        .to_vec()
    }

    /// Ask to open `relid` on a fresh 4-page GPADL `handle` at `first_pfn`;
    /// the device has not answered (the channel is Opening, nothing sent).
    fn start_open(s: &mut Server, relid: u32, handle: u32, first_pfn: u64) {
        let pfns: Vec<u64> = (first_pfn..first_pfn + 4).collect();
        assert_eq!(post_gpadl(s, relid, handle, &pfns).1, Some(0));
        let ev = s.handle(1, &open_msg(relid, handle, 2)).unwrap();
        assert!(
            matches!(ev[..], [Event::Opened { relid: r, .. }] if r == relid),
            "{ev:?}"
        );
        assert!(
            matches!(s.channels()[&relid].state, ChannelState::Opening(_)),
            "{:?}",
            s.channels()[&relid].state
        );
        assert!(drain(s).is_empty(), "answered before the device did");
        check_held(s);
    }

    /// Open `relid` on a fresh 4-page GPADL `handle` at `first_pfn`, the
    /// device accepting.
    fn open(s: &mut Server, relid: u32, handle: u32, first_pfn: u64) {
        start_open(s, relid, handle, first_pfn);
        assert_eq!(s.open_complete(relid, true), Ok(()));
        assert_eq!(open_results(&drain(s)), vec![(relid, relid, 0)]);
        check_held(s);
    }

    /// The outbox holds exactly one slot per Opening channel.
    fn check_held(s: &Server) {
        let opening = s
            .channels()
            .values()
            .filter(|c| matches!(c.state, ChannelState::Opening(_)))
            .count();
        assert_eq!(s.outbox.held, opening, "held slots");
        assert_eq!(s.usage().opening_channels, opening);
        assert!(s.outbox.queue.len() + s.outbox.held <= s.outbox.max);
    }

    /// Every OPENCHANNEL_RESULT in `msgs`: (relid, open_id, status).
    fn open_results(msgs: &[Vec<u8>]) -> Vec<(u32, u32, u32)> {
        msgs.iter()
            .filter_map(|m| match Message::parse(m) {
                Ok(Message::OpenResult(r)) => Some((r.child_relid, r.open_id, r.status)),
                _ => None,
            })
            .collect()
    }

    fn modify_status(msgs: &[Vec<u8>]) -> Option<i32> {
        msgs.iter().find_map(|m| match Message::parse(m) {
            Ok(Message::ModifyChannelResponse(r)) => Some(r.status),
            _ => None,
        })
    }

    #[test]
    fn default_limits_are_documented_values() {
        let s = Server::new(1 << 20);
        assert_eq!(s.limits(), Limits::DEFAULT);
        assert_eq!(
            (
                Limits::DEFAULT.max_gpadls,
                Limits::DEFAULT.max_gpadl_pages,
                Limits::DEFAULT.max_outbox
            ),
            (64, 32768, 128)
        );
        // A small guest caps the total at its own size.
        assert_eq!(Server::new(1000).limits().max_gpadl_pages, 1000);
    }

    #[test]
    fn gpadl_count_quota_refuses_with_gpadl_created_failure() {
        let mut s = connected(1 << 16, Limits::DEFAULT, Version::WIN10_V5_3, 1);
        for i in 0..64u32 {
            let (r, status) = post_gpadl(&mut s, 1, 100 + i, &[1000 + i as u64]);
            assert_eq!((r, status), (Ok(Vec::new()), Some(0)), "GPADL {i}");
        }
        let (r, status) = post_gpadl(&mut s, 1, 999, &[5]);
        assert_eq!(r, Err(Violation::QuotaExceeded(Quota::Gpadls)));
        assert_eq!(status, Some(STATUS_FAILURE));
        assert!(s.gpadl(999).is_none());
        assert_eq!(s.usage().gpadls, 64);
        // Tearing one down frees its slot.
        assert_eq!(s.handle(1, &teardown(1, 100)), Ok(Vec::new()));
        drain(&mut s);
        assert_eq!(post_gpadl(&mut s, 1, 999, &[5]).1, Some(0));
    }

    #[test]
    fn unfinished_assemblies_count_against_the_gpadl_quota() {
        // A guest posting GPADL_HEADERs with fresh handles and never the bodies.
        let mut s = connected(1 << 16, Limits::DEFAULT, Version::WIN10_V5_3, 1);
        let mut refused = 0;
        for handle in 0..10_000u32 {
            match s.handle(1, &header_only(1, handle + 1, 100)) {
                Ok(_) => {}
                Err(Violation::QuotaExceeded(Quota::Gpadls)) => refused += 1,
                Err(v) => panic!("{v:?}"),
            }
            drain(&mut s);
        }
        assert_eq!(refused, 10_000 - 64);
        let u = s.usage();
        assert_eq!((u.gpadls, u.assemblies, u.gpadl_pages), (64, 64, 6400));
    }

    #[test]
    fn per_gpadl_page_quota_is_checked_at_the_header() {
        let limits = Limits {
            max_pages_per_gpadl: 100,
            ..Limits::DEFAULT
        };
        let mut s = connected(1 << 16, limits, Version::WIN10_V5_3, 1);
        let pfns: Vec<u64> = (1000..1100).collect();
        assert_eq!(post_gpadl(&mut s, 1, 1, &pfns).1, Some(0));
        let pfns: Vec<u64> = (2000..2101).collect();
        let msgs = gpadl::encode(1, 2, &pfns);
        assert_eq!(
            s.handle(1, &msgs[0]),
            Err(Violation::QuotaExceeded(Quota::GpadlPages))
        );
        assert_eq!(s.usage().assemblies, 0, "nothing kept for the refused header");
        // Its bodies name nothing now.
        assert_eq!(s.handle(1, &msgs[1]), Err(Violation::BadGpadl(2)));
    }

    #[test]
    fn total_gpadl_page_quota_counts_assemblies_and_is_capped_by_guest_pages() {
        let limits = Limits {
            max_gpadl_pages: 5000,
            ..Limits::DEFAULT
        };
        let mut s = connected(1000, limits, Version::WIN10_V5_3, 1);
        assert_eq!(s.limits().max_gpadl_pages, 1000, "capped at the guest's pages");
        // 600 pages announced, bodies still to come: they count already.
        let big: Vec<u64> = (0..600).collect();
        let msgs = gpadl::encode(1, 1, &big);
        assert_eq!(s.handle(1, &msgs[0]), Ok(Vec::new()));
        let (r, status) = post_gpadl(&mut s, 1, 2, &(600..1000).collect::<Vec<u64>>());
        assert_eq!(r, Ok(Vec::new()));
        assert_eq!(status, Some(0), "exactly at the limit");
        assert_eq!(s.usage().gpadl_pages, 1000);
        let (r, status) = post_gpadl(&mut s, 1, 3, &[999]);
        assert_eq!(r, Err(Violation::QuotaExceeded(Quota::TotalGpadlPages)));
        assert_eq!(status, Some(STATUS_FAILURE));
        for m in &msgs[1..] {
            s.handle(1, m).unwrap();
        }
        drain(&mut s);
        assert_eq!(s.handle(1, &teardown(1, 2)), Ok(Vec::new()));
        drain(&mut s);
        assert_eq!(post_gpadl(&mut s, 1, 3, &[999]).1, Some(0));
    }

    #[test]
    fn a_full_outbox_refuses_requests_without_growing() {
        let limits = Limits {
            max_outbox: 4,
            ..Limits::DEFAULT
        };
        let mut s = connected(1 << 16, limits, Version::WIN10_V5_3, 2);
        // Nobody drains: four answers fit, the fifth request is refused
        // before it does anything.
        for i in 0..4u32 {
            let m = gpadl::encode(1, 10 + i, &[100 + i as u64]).swap_remove(0);
            assert_eq!(s.handle(1, &m), Ok(Vec::new()));
        }
        let m = gpadl::encode(1, 20, &[200]).swap_remove(0);
        assert_eq!(s.handle(1, &m), Err(Violation::QuotaExceeded(Quota::Outbox)));
        assert!(s.gpadl(20).is_none(), "refused request changed nothing");
        assert_eq!(s.usage().outbox, 4);
        assert_eq!(
            s.handle(1, &request_offers()),
            Err(Violation::QuotaExceeded(Quota::Outbox))
        );
        assert_eq!(
            s.handle(4, &contact(Version::WIN10_V5_3)),
            Err(Violation::QuotaExceeded(Quota::Outbox))
        );
        assert_eq!(s.version(), Some(Version::WIN10_V5_3), "no reconnect happened");
        assert_eq!(s.offer(spec(9)), Err(HostError::OutboxFull));
        assert_eq!(s.channels().len(), 2, "no offer without its message");
        assert_eq!(s.rescind(1), Err(HostError::OutboxFull));
        assert_eq!(s.channels()[&1].state, ChannelState::Offered);
        assert_eq!(s.usage().outbox, 4, "never grew");
        assert_eq!(drain(&mut s).len(), 4);
        // Room again: three answers (two offers and ALLOFFERS_DELIVERED).
        assert_eq!(s.handle(1, &request_offers()), Ok(Vec::new()));
        assert_eq!(drain(&mut s).len(), 3);
        assert_eq!(post_gpadl(&mut s, 1, 20, &[200]).1, Some(0));
    }

    #[test]
    fn pfn_equal_to_guest_pages_is_refused() {
        // A guest of 64 pages: PFN 63 is its last, 64 is one past the end.
        let mut s = connected(64, Limits::DEFAULT, Version::WIN10_V5_3, 1);
        let (r, status) = post_gpadl(&mut s, 1, 1, &[10, 64]);
        assert_eq!(r, Err(Violation::GpadlRefused(GpadlError::BadPfn(64))));
        assert_eq!(status, Some(STATUS_FAILURE));
        assert!(s.gpadl(1).is_none());
        let (r, status) = post_gpadl(&mut s, 1, 2, &[10, 63]);
        assert_eq!((r, status), (Ok(Vec::new()), Some(0)));
    }

    #[test]
    fn a_second_initiate_contact_reconnects() {
        let mut s = connected(1 << 16, Limits::DEFAULT, Version::WIN10_V5_3, 2);
        open(&mut s, 1, 0xE1E10, 100);
        assert_eq!(post_gpadl(&mut s, 2, 0xE1E11, &[200]).1, Some(0));
        s.handle(1, &header_only(2, 0xE1E12, 50)).unwrap();
        s.rescind(2).unwrap();
        drain(&mut s);
        // The guest rebooted into a new kernel: no UNLOAD, just INITIATE_CONTACT.
        let events = s.handle(4, &contact(Version::WIN10_V5)).unwrap();
        assert_eq!(
            events,
            vec![Event::Closed { relid: 1 }, Event::Connected(Version::WIN10_V5)]
        );
        let answers = drain(&mut s);
        assert!(
            matches!(Message::parse(&answers[0]), Ok(Message::VersionResponse(r)) if r.version_supported == 1),
            "{answers:?}"
        );
        assert_eq!(s.version(), Some(Version::WIN10_V5));
        assert!(s.gpadl(0xE1E10).is_none() && s.gpadl(0xE1E11).is_none());
        let u = s.usage();
        assert_eq!((u.gpadls, u.assemblies, u.open_channels), (0, 0, 0));
        assert_eq!(s.channels()[&1].state, ChannelState::Offered);
        assert!(!s.channels().contains_key(&2), "rescinded channel dropped");
        // Offers wait for the new REQUESTOFFERS.
        let relid = s.offer(spec(7)).unwrap();
        assert_eq!(relid, 2, "the rescinded relid is free again");
        assert!(drain(&mut s).is_empty(), "offered before REQUESTOFFERS");
        s.handle(1, &request_offers()).unwrap();
        assert_eq!(drain(&mut s).len(), 3);
        // Handles were forgotten: the new kernel may reuse them; re-open works.
        open(&mut s, 1, 0xE1E10, 300);
    }

    #[test]
    fn a_second_initiate_contact_for_an_unknown_version_still_disconnects() {
        let mut s = connected(1 << 16, Limits::DEFAULT, Version::WIN10_V5_3, 1);
        open(&mut s, 1, 7, 100);
        let events = s.handle(4, &contact(Version(0x0006_0000))).unwrap();
        assert_eq!(events, vec![Event::Closed { relid: 1 }]);
        assert_eq!(s.version(), None);
        let answers = drain(&mut s);
        assert!(
            matches!(Message::parse(&answers[0]), Ok(Message::VersionResponse(r)) if r.version_supported == 0)
        );
        assert_eq!(s.handle(1, &request_offers()), Err(Violation::NotConnected(3)));
    }

    #[test]
    fn modifychannel_is_always_answered_from_5_3() {
        let mut s = connected(1 << 16, Limits::DEFAULT, Version::WIN10_V5_3, 2);
        open(&mut s, 1, 7, 100);
        // Unknown relid, a channel that is not open, interrupts disabled:
        // each refused with STATUS_UNSUCCESSFUL, and counted.
        for (msg, why) in [
            (modify(99, 1), Violation::BadRelid(99)),
            (modify(2, 1), Violation::BadRelid(2)),
            (modify(1, u32::MAX), Violation::BadTargetVp(u32::MAX)),
        ] {
            assert_eq!(s.handle(1, &msg), Err(why));
            assert_eq!(
                modify_status(&drain(&mut s)),
                Some(STATUS_UNSUCCESSFUL),
                "{why:?}"
            );
        }
        let ChannelState::Open(info) = &s.channels()[&1].state else {
            panic!()
        };
        assert_eq!(info.target_vp, 0, "a refused MODIFYCHANNEL changes nothing");
        assert_eq!(s.handle(1, &modify(1, 3)), Ok(Vec::new()));
        assert_eq!(modify_status(&drain(&mut s)), Some(0));
        let ChannelState::Open(info) = &s.channels()[&1].state else {
            panic!()
        };
        assert_eq!(info.target_vp, 3);
    }

    #[test]
    fn modifychannel_below_4_1_is_a_violation() {
        let mut s = connected(1 << 16, Limits::DEFAULT, Version::WIN10, 1);
        open(&mut s, 1, 7, 100);
        assert_eq!(
            s.handle(1, &modify(1, 3)),
            Err(Violation::Unsupported {
                msgtype: 22,
                version: Version::WIN10
            })
        );
        assert!(drain(&mut s).is_empty());
        let ChannelState::Open(info) = &s.channels()[&1].state else {
            panic!()
        };
        assert_eq!(info.target_vp, 0);
        // 4.1 has it, without an answer (Linux does not wait below 5.3).
        let mut s = connected(1 << 16, Limits::DEFAULT, Version::WIN10_V4_1, 1);
        open(&mut s, 1, 7, 100);
        assert_eq!(s.handle(1, &modify(1, 3)), Ok(Vec::new()));
        assert_eq!(s.handle(1, &modify(5, 3)), Err(Violation::BadRelid(5)));
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn reset_returns_to_power_on() {
        let mut s = Server::new(1 << 16);
        for i in 1..=3 {
            s.offer(spec(i)).unwrap();
        }
        // Messages to VP 1 on SINT 3, as the guest asks.
        let ic = InitiateContact {
            target_vcpu: 1,
            interrupt_page_or_sint: 3,
            ..InitiateContact::read_from_bytes(&contact(Version::WIN10_V5_3)).unwrap()
        };
        s.handle(4, ic.as_bytes()).unwrap();
        s.handle(1, &request_offers()).unwrap();
        drain(&mut s);
        assert_eq!(s.message_target(), (1, 3));
        open(&mut s, 1, 10, 100);
        open(&mut s, 3, 11, 200);
        s.handle(1, &header_only(1, 12, 40)).unwrap();
        s.rescind(2).unwrap();
        s.handle(1, &modify(1, 5)).unwrap();
        assert!(s.usage().outbox > 0);
        let open_before = s.reset();
        assert_eq!(open_before, vec![1, 3]);
        assert_eq!(s.version(), None);
        assert_eq!(s.message_target(), (0, VMBUS_SINT));
        let u = s.usage();
        assert_eq!(
            (u.gpadls, u.assemblies, u.gpadl_pages, u.outbox, u.open_channels),
            (0, 0, 0, 0, 0)
        );
        assert!(s.next_message().is_none());
        assert_eq!(s.channels().keys().copied().collect::<Vec<_>>(), vec![1, 3]);
        for (relid, n) in [(1, 1), (3, 3)] {
            let ch = &s.channels()[&relid];
            assert_eq!(
                (ch.state.clone(), ch.offer.clone()),
                (ChannelState::Offered, spec(n))
            );
        }
        assert_eq!(s.handle(1, &request_offers()), Err(Violation::NotConnected(3)));
        // The restarted guest connects afresh and sees both offers.
        assert_eq!(
            s.handle(4, &contact(Version::WIN10_V5_3)),
            Ok(vec![Event::Connected(Version::WIN10_V5_3)])
        );
        s.handle(1, &request_offers()).unwrap();
        assert_eq!(drain(&mut s).len(), 1 + 2 + 1);
        open(&mut s, 1, 10, 100);
    }

    #[test]
    fn offers_take_the_lowest_free_relid() {
        let mut s = connected(1 << 16, Limits::DEFAULT, Version::WIN10_V5_3, 3);
        s.rescind(2).unwrap();
        // Rescinded but not released: relid 2 is still the guest's.
        assert_eq!(s.offer(spec(4)), Ok(4));
        let released = RelidReleased {
            header: Header::new(RelidReleased::TYPE),
            child_relid: 2,
        };
        s.handle(1, released.as_bytes()).unwrap();
        assert_eq!(s.offer(spec(5)), Ok(2));
        assert_eq!(s.offer(spec(6)), Ok(5));
        assert_eq!(s.rescind(9), Err(HostError::NoChannel(9)));
        let conns: Vec<u32> = s.channels().values().map(|c| c.connection_id).collect();
        assert_eq!(conns, vec![0x2001, 0x2002, 0x2003, 0x2004, 0x2005]);
    }

    #[test]
    fn released_relids_take_their_gpadls_and_assemblies_along() {
        let mut s = connected(1 << 16, Limits::DEFAULT, Version::WIN10_V5_3, 2);
        assert_eq!(post_gpadl(&mut s, 2, 1, &[10]).1, Some(0));
        s.handle(1, &header_only(2, 2, 30)).unwrap();
        s.rescind(2).unwrap();
        let released = RelidReleased {
            header: Header::new(RelidReleased::TYPE),
            child_relid: 2,
        };
        s.handle(1, released.as_bytes()).unwrap();
        let u = s.usage();
        assert_eq!((u.gpadls, u.gpadl_pages), (0, 0));
        let body = GpadlBody {
            header: Header::new(GpadlBody::TYPE),
            msgnumber: 0,
            gpadl: 2,
        };
        assert_eq!(s.handle(1, body.as_bytes()), Err(Violation::BadGpadl(2)));
    }

    #[test]
    fn usage_reports_what_is_held() {
        let mut s = connected(4096, Limits::DEFAULT, Version::WIN10_V5_3, 2);
        open(&mut s, 1, 1, 100);
        s.handle(1, &header_only(2, 2, 30)).unwrap();
        assert_eq!(
            s.usage(),
            Usage {
                gpadls: 2,
                assemblies: 1,
                gpadl_pages: 34,
                channels: 2,
                open_channels: 1,
                opening_channels: 0,
                outbox: 0,
                limits: Limits {
                    max_gpadl_pages: 4096,
                    ..Limits::DEFAULT
                },
            }
        );
    }

    /// Run messages both ways until both sides are quiet; every open is
    /// answered at once, refused for `veto`.
    fn pump(server: &mut Server, client: &mut Client, events: &mut Vec<ClientEvent>, veto: Option<u32>) {
        loop {
            let mut moved = false;
            while let Some((conn, bytes)) = client.next_message() {
                moved = true;
                if let Ok(evs) = server.handle(conn, &bytes) {
                    for e in evs {
                        if let Event::Opened { relid, .. } = e {
                            assert_eq!(server.open_complete(relid, veto != Some(relid)), Ok(()));
                        }
                    }
                }
            }
            while let Some((_, bytes)) = server.next_message() {
                moved = true;
                events.extend(client.handle(&bytes).expect("host message"));
            }
            if !moved {
                return;
            }
        }
    }

    #[test]
    fn a_device_can_veto_an_open() {
        let mut server = Server::new(1024);
        let relid = server
            .offer(OfferSpec {
                interface_type: [1; 16],
                interface_instance: [2; 16],
                channel_flags: 0,
                user_defined: [0; 120],
                sub_channel_index: 0,
            })
            .expect("relid");
        let mut client = Client::new(None, 0);
        let mut events = Vec::new();
        client.connect();
        pump(&mut server, &mut client, &mut events, None);
        let handle = client.create_gpadl(relid, &[10, 11, 12, 13]);
        pump(&mut server, &mut client, &mut events, None);
        client.open(relid, handle, 2, 0);
        pump(&mut server, &mut client, &mut events, Some(relid));
        assert!(
            events.contains(&ClientEvent::OpenResult {
                relid,
                status: STATUS_FAILURE
            }),
            "{events:?}"
        );
        assert_eq!(server.channels()[&relid].state, ChannelState::Offered);
        // Nothing waiting: nothing to answer.
        assert_eq!(
            server.open_complete(relid, false),
            Err(HostError::NotOpening(relid))
        );
        // The guest may try again, and this time the device starts.
        events.clear();
        client.open(relid, handle, 2, 0);
        pump(&mut server, &mut client, &mut events, None);
        assert!(
            events.contains(&ClientEvent::OpenResult { relid, status: 0 }),
            "{events:?}"
        );
    }

    fn close_msg(relid: u32) -> Vec<u8> {
        CloseChannel {
            header: Header::new(CloseChannel::TYPE),
            child_relid: relid,
        }
        .as_bytes()
        .to_vec()
    }

    fn unload_msg() -> Vec<u8> {
        crate::protocol::Unload {
            header: Header::new(crate::protocol::Unload::TYPE),
        }
        .as_bytes()
        .to_vec()
    }

    #[test]
    fn an_open_is_answered_only_when_the_device_answers() {
        let mut s = connected(1 << 16, Limits::DEFAULT, Version::WIN10_V5_3, 1);
        assert_eq!(post_gpadl(&mut s, 1, 10, &[100, 101, 102, 103]).1, Some(0));
        let m = OpenChannel {
            open_id: 0xABCD,
            target_vp: 3,
            ..OpenChannel::read_from_bytes(&open_msg(1, 10, 2)).unwrap()
        };
        let info = OpenInfo {
            ring_gpadl: 10,
            downstream_page_offset: 2,
            target_vp: 3,
            open_id: 0xABCD,
        };
        let events = s.handle(1, m.as_bytes()).unwrap();
        assert!(
            matches!(&events[..], [Event::Opened { relid: 1, info: i, gpadl }] if *i == info && gpadl.page_count() == 4),
            "{events:?}"
        );
        assert_eq!(s.channels()[&1].state, ChannelState::Opening(info.clone()));
        assert!(
            drain(&mut s).is_empty(),
            "OPENCHANNEL_RESULT before the device answered"
        );
        let u = s.usage();
        assert_eq!((u.open_channels, u.opening_channels, u.outbox), (0, 1, 0));
        check_held(&s);
        assert_eq!(s.open_complete(1, true), Ok(()));
        assert_eq!(open_results(&drain(&mut s)), vec![(1, 0xABCD, 0)]);
        assert_eq!(s.channels()[&1].state, ChannelState::Open(info));
        let u = s.usage();
        assert_eq!((u.open_channels, u.opening_channels), (1, 0));
        check_held(&s);
        // Answered once only; an unknown relid names nothing.
        assert_eq!(s.open_complete(1, true), Err(HostError::NotOpening(1)));
        assert_eq!(s.open_complete(1, false), Err(HostError::NotOpening(1)));
        assert_eq!(s.open_complete(99, true), Err(HostError::NoChannel(99)));
        assert!(drain(&mut s).is_empty());
        assert!(matches!(s.channels()[&1].state, ChannelState::Open(_)));
    }

    #[test]
    fn a_refused_open_answers_failure_and_the_guest_may_retry() {
        let mut s = connected(1 << 16, Limits::DEFAULT, Version::WIN10_V5_3, 1);
        start_open(&mut s, 1, 10, 100);
        assert_eq!(s.open_complete(1, false), Ok(()));
        assert_eq!(open_results(&drain(&mut s)), vec![(1, 1, STATUS_FAILURE)]);
        assert_eq!(s.channels()[&1].state, ChannelState::Offered);
        check_held(&s);
        assert_eq!(s.open_complete(1, true), Err(HostError::NotOpening(1)));
        // Again on the same GPADL: this time the device starts.
        let ev = s.handle(1, &open_msg(1, 10, 2)).unwrap();
        assert!(matches!(ev[..], [Event::Opened { relid: 1, .. }]), "{ev:?}");
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.open_complete(1, true), Ok(()));
        assert_eq!(open_results(&drain(&mut s)), vec![(1, 1, 0)]);
        assert!(matches!(s.channels()[&1].state, ChannelState::Open(_)));
    }

    #[test]
    fn an_invalid_open_is_refused_at_once() {
        let mut s = connected(1 << 16, Limits::DEFAULT, Version::WIN10_V5_3, 2);
        assert_eq!(post_gpadl(&mut s, 1, 10, &[100, 101, 102, 103]).1, Some(0));
        // Unknown GPADL, split 1.
        assert_eq!(s.handle(1, &open_msg(1, 11, 2)), Err(Violation::BadGpadl(11)));
        assert_eq!(open_results(&drain(&mut s)), vec![(1, 1, STATUS_FAILURE)]);
        assert_eq!(s.handle(1, &open_msg(1, 10, 1)), Err(Violation::BadGpadl(10)));
        assert_eq!(open_results(&drain(&mut s)), vec![(1, 1, STATUS_FAILURE)]);
        assert_eq!(s.channels()[&1].state, ChannelState::Offered);
        check_held(&s);
        // A second OPENCHANNEL while the first waits: refused at once, the
        // first still waits and gets its own answer.
        let ev = s.handle(1, &open_msg(1, 10, 2)).unwrap();
        assert!(matches!(ev[..], [Event::Opened { relid: 1, .. }]), "{ev:?}");
        assert_eq!(s.handle(1, &open_msg(1, 10, 2)), Err(Violation::BadRelid(1)));
        assert_eq!(open_results(&drain(&mut s)), vec![(1, 1, STATUS_FAILURE)]);
        assert!(matches!(s.channels()[&1].state, ChannelState::Opening(_)));
        check_held(&s);
        assert_eq!(s.open_complete(1, true), Ok(()));
        assert_eq!(open_results(&drain(&mut s)), vec![(1, 1, 0)]);
        check_held(&s);
    }

    #[test]
    fn a_close_while_opening_drops_the_answer() {
        let mut s = connected(1 << 16, Limits::DEFAULT, Version::WIN10_V5_3, 1);
        start_open(&mut s, 1, 10, 100);
        assert_eq!(s.handle(1, &close_msg(1)), Ok(vec![Event::Closed { relid: 1 }]));
        assert_eq!(s.channels()[&1].state, ChannelState::Offered);
        check_held(&s);
        assert_eq!(s.open_complete(1, true), Err(HostError::NotOpening(1)));
        assert!(drain(&mut s).is_empty(), "an answer for a closed open");
        assert_eq!(s.channels()[&1].state, ChannelState::Offered);
        // The ring is free again, and the channel can be opened anew.
        assert_eq!(s.handle(1, &teardown(1, 10)), Ok(Vec::new()));
        drain(&mut s);
        open(&mut s, 1, 11, 200);
    }

    #[test]
    fn a_rescind_while_opening_drops_the_answer() {
        let mut s = connected(1 << 16, Limits::DEFAULT, Version::WIN10_V5_3, 1);
        start_open(&mut s, 1, 10, 100);
        assert_eq!(s.rescind(1), Ok(()));
        assert_eq!(s.channels()[&1].state, ChannelState::Rescinded);
        check_held(&s);
        assert_eq!(s.open_complete(1, true), Err(HostError::NotOpening(1)));
        let sent = drain(&mut s);
        assert!(
            matches!(&sent[..], [m] if matches!(Message::parse(m), Ok(Message::RescindChannelOffer(r)) if r.child_relid == 1)),
            "{sent:?}"
        );
        let released = RelidReleased {
            header: Header::new(RelidReleased::TYPE),
            child_relid: 1,
        };
        s.handle(1, released.as_bytes()).unwrap();
        assert_eq!(s.open_complete(1, true), Err(HostError::NoChannel(1)));
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn a_rescind_while_opening_uses_the_held_slot() {
        let limits = Limits {
            max_outbox: 4,
            ..Limits::DEFAULT
        };
        let mut s = connected(1 << 16, limits, Version::WIN10_V5_3, 2);
        start_open(&mut s, 1, 10, 100);
        for i in 0..3u32 {
            let m = gpadl::encode(2, 20 + i, &[300 + u64::from(i)]).swap_remove(0);
            assert_eq!(s.handle(1, &m), Ok(Vec::new()));
        }
        // Three answers queued, one slot held: full.
        assert_eq!(s.rescind(2), Err(HostError::OutboxFull));
        assert_eq!(s.channels()[&2].state, ChannelState::Offered);
        assert_eq!(s.rescind(1), Ok(()));
        assert_eq!(s.channels()[&1].state, ChannelState::Rescinded);
        check_held(&s);
        assert_eq!(drain(&mut s).len(), 4);
    }

    #[test]
    fn unload_closes_opening_channels() {
        let mut s = connected(1 << 16, Limits::DEFAULT, Version::WIN10_V5_3, 2);
        open(&mut s, 1, 10, 100);
        start_open(&mut s, 2, 11, 200);
        let events = s.handle(1, &unload_msg()).unwrap();
        assert_eq!(
            events,
            vec![
                Event::Closed { relid: 1 },
                Event::Closed { relid: 2 },
                Event::Unloaded
            ]
        );
        assert_eq!(s.channels()[&2].state, ChannelState::Offered);
        check_held(&s);
        assert_eq!(s.open_complete(2, true), Err(HostError::NotOpening(2)));
        let sent = drain(&mut s);
        assert!(
            matches!(&sent[..], [m] if matches!(Message::parse(m), Ok(Message::UnloadResponse))),
            "{sent:?}"
        );
    }

    #[test]
    fn a_reconnect_closes_opening_channels() {
        let mut s = connected(1 << 16, Limits::DEFAULT, Version::WIN10_V5_3, 2);
        start_open(&mut s, 2, 11, 200);
        let events = s.handle(4, &contact(Version::WIN10_V5_3)).unwrap();
        assert_eq!(
            events,
            vec![Event::Closed { relid: 2 }, Event::Connected(Version::WIN10_V5_3)]
        );
        assert_eq!(s.channels()[&2].state, ChannelState::Offered);
        check_held(&s);
        assert_eq!(s.open_complete(2, true), Err(HostError::NotOpening(2)));
        let sent = drain(&mut s);
        assert!(
            matches!(&sent[..], [m] if matches!(Message::parse(m), Ok(Message::VersionResponse(_)))),
            "{sent:?}"
        );
    }

    #[test]
    fn reset_returns_opening_channels() {
        let mut s = connected(1 << 16, Limits::DEFAULT, Version::WIN10_V5_3, 3);
        start_open(&mut s, 3, 12, 300);
        open(&mut s, 1, 10, 100);
        assert_eq!(s.reset(), vec![1, 3]);
        assert_eq!(s.channels()[&3].state, ChannelState::Offered);
        check_held(&s);
        assert_eq!(s.open_complete(3, true), Err(HostError::NotOpening(3)));
        assert!(s.next_message().is_none());
    }

    #[test]
    fn an_opening_ring_gpadl_is_not_torn_down() {
        let mut s = connected(1 << 16, Limits::DEFAULT, Version::WIN10_V5_3, 1);
        start_open(&mut s, 1, 10, 100);
        assert_eq!(s.handle(1, &teardown(1, 10)), Err(Violation::BadGpadl(10)));
        assert!(s.gpadl(10).is_some(), "ring GPADL torn down while opening");
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.open_complete(1, false), Ok(()));
        drain(&mut s);
        assert_eq!(s.handle(1, &teardown(1, 10)), Ok(Vec::new()));
        assert!(s.gpadl(10).is_none());
    }

    #[test]
    fn modifychannel_on_an_opening_channel_is_refused() {
        let mut s = connected(1 << 16, Limits::DEFAULT, Version::WIN10_V5_3, 1);
        start_open(&mut s, 1, 10, 100);
        assert_eq!(s.handle(1, &modify(1, 3)), Err(Violation::BadRelid(1)));
        assert_eq!(modify_status(&drain(&mut s)), Some(STATUS_UNSUCCESSFUL));
        let ChannelState::Opening(info) = &s.channels()[&1].state else {
            panic!()
        };
        assert_eq!(info.target_vp, 0);
        assert_eq!(s.open_complete(1, true), Ok(()));
        drain(&mut s);
        assert_eq!(s.handle(1, &modify(1, 3)), Ok(Vec::new()));
        assert_eq!(modify_status(&drain(&mut s)), Some(0));
    }

    #[test]
    fn the_answer_to_an_open_always_fits() {
        let limits = Limits {
            max_outbox: 4,
            ..Limits::DEFAULT
        };
        let mut s = connected(1 << 16, limits, Version::WIN10_V5_3, 2);
        start_open(&mut s, 1, 10, 100);
        // Nobody drains: three answers fit besides the held slot.
        for i in 0..3u32 {
            let m = gpadl::encode(2, 20 + i, &[300 + u64::from(i)]).swap_remove(0);
            assert_eq!(s.handle(1, &m), Ok(Vec::new()));
        }
        let m = gpadl::encode(2, 30, &[400]).swap_remove(0);
        assert_eq!(s.handle(1, &m), Err(Violation::QuotaExceeded(Quota::Outbox)));
        assert_eq!(s.offer(spec(9)), Err(HostError::OutboxFull));
        assert_eq!(s.rescind(2), Err(HostError::OutboxFull));
        assert_eq!(s.usage().outbox, 3);
        check_held(&s);
        assert_eq!(s.open_complete(1, true), Ok(()));
        check_held(&s);
        let sent = drain(&mut s);
        assert_eq!(sent.len(), 4);
        assert_eq!(open_results(&sent), vec![(1, 1, 0)]);
    }
}
