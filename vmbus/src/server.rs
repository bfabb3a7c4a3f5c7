//! The host side of VMBus as a state machine, independent of transport: feed
//! it the guest's channel messages, collect the messages to send back and the
//! events for device providers (vmbus-wire.md §1–§2; Linux
//! `drivers/hv/channel_mgmt.c` is the peer it must satisfy).
//!
//! Malformed or out-of-order input is answered the way Hyper-V answers it (a
//! failure status where the protocol has one) or reported as a
//! [`Violation`]; it never changes the state of other channels.

use crate::gpadl::{Assembly, Gpadl, GpadlError};
use crate::protocol::{
    AllOffersDelivered, GpadlCreated, GpadlTorndown, Header, MAX_RELID, Message, ModifyChannelResponse,
    OfferChannel, OpenResult, ParseError, RescindChannelOffer, UnloadResponse, VMBUS_SINT,
};
use crate::version::{self, Contact, Version};
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;
use zerocopy::{FromBytes, IntoBytes};

/// Status for a failed GPADL_CREATED or OPENCHANNEL_RESULT (what OpenVMM uses).
pub const STATUS_FAILURE: u32 = 0x8000_FFFF;

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
}

/// Where a channel is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelState {
    /// Offered, not open.
    Offered,
    /// Open on a ring GPADL.
    Open(OpenInfo),
    /// Rescinded; the relid is reused only after RELID_RELEASED.
    Rescinded,
}

/// An open channel's parameters.
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
    /// A channel was opened: its rings are in `gpadl`.
    Opened {
        /// The channel.
        relid: u32,
        /// Open parameters.
        info: OpenInfo,
        /// The ring GPADL.
        gpadl: Gpadl,
    },
    /// A channel was closed by the guest (or by UNLOAD).
    Closed {
        /// The channel.
        relid: u32,
    },
    /// The guest unloaded VMBus: everything is gone.
    Unloaded,
}

/// Something the guest did wrong, with no protocol reply to carry it.
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
}

/// The server.
pub struct Server {
    version: Option<Version>,
    target_vp: u32,
    sint: u8,
    channels: BTreeMap<u32, Channel>,
    assemblies: BTreeMap<u32, Assembly>,
    gpadls: BTreeMap<u32, Gpadl>,
    outbox: VecDeque<(u32, Vec<u8>)>,
    offers_requested: bool,
    max_pfn: u64,
}

impl Server {
    /// A server for a guest whose memory ends at page `max_pfn`.
    pub fn new(max_pfn: u64) -> Self {
        Self {
            version: None,
            target_vp: 0,
            sint: VMBUS_SINT,
            channels: BTreeMap::new(),
            assemblies: BTreeMap::new(),
            gpadls: BTreeMap::new(),
            outbox: VecDeque::new(),
            offers_requested: false,
            max_pfn,
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

    /// Next message for the guest: (VP, bytes).
    pub fn next_message(&mut self) -> Option<(u32, Vec<u8>)> {
        self.outbox.pop_front()
    }

    fn send(&mut self, bytes: &[u8]) {
        self.outbox.push_back((self.target_vp, bytes.to_vec()));
    }

    /// Offer a device; returns its relid (the lowest free one, from 1).
    pub fn offer(&mut self, offer: OfferSpec) -> Option<u32> {
        let relid = (1..=MAX_RELID).find(|r| !self.channels.contains_key(r))?;
        // Unique per channel; SINT 2 in bits 15:12 as OpenVMM encodes it.
        let connection_id = relid | ((VMBUS_SINT as u32) << 12);
        self.channels.insert(
            relid,
            Channel {
                offer,
                state: ChannelState::Offered,
                connection_id,
            },
        );
        if self.version.is_some() && self.offers_requested {
            self.send_offer(relid);
        }
        Some(relid)
    }

    /// Take a device away: the guest must close it and release the relid.
    pub fn rescind(&mut self, relid: u32) -> Result<(), Violation> {
        let ch = self.channels.get_mut(&relid).ok_or(Violation::BadRelid(relid))?;
        if ch.state == ChannelState::Rescinded {
            return Err(Violation::BadRelid(relid));
        }
        ch.state = ChannelState::Rescinded;
        if self.version.is_some() {
            let m = RescindChannelOffer {
                header: Header::new(RescindChannelOffer::TYPE),
                child_relid: relid,
            };
            self.send(m.as_bytes());
        } else {
            self.channels.remove(&relid);
        }
        Ok(())
    }

    fn send_offer(&mut self, relid: u32) {
        let ch = &self.channels[&relid];
        let m = OfferChannel {
            header: Header::new(OfferChannel::TYPE),
            interface_type: ch.offer.interface_type,
            interface_instance: ch.offer.interface_instance,
            reserved: [0; 16],
            channel_flags: ch.offer.channel_flags,
            mmio_megabytes: 0,
            user_defined: ch.offer.user_defined,
            sub_channel_index: 0,
            reserved2: 0,
            child_relid: relid,
            monitor_id: 0,
            // No monitor pages: the guest signals with HvSignalEvent.
            monitor_allocated: 0,
            is_dedicated_interrupt: 1,
            connection_id: ch.connection_id,
        };
        self.send(m.as_bytes());
    }

    /// Handle one message the guest posted on `connection_id`.
    pub fn handle(&mut self, connection_id: u32, bytes: &[u8]) -> Result<Vec<Event>, Violation> {
        let message = Message::parse(bytes).map_err(Violation::Malformed)?;
        let mut events = Vec::new();
        if let Message::InitiateContact(ic) = &message {
            let contact = version::decide(ic, connection_id);
            if let Contact::Accepted {
                version,
                target_vp,
                sint,
                ..
            } = contact
            {
                if self.version.is_some() {
                    // Already connected: the guest must UNLOAD first.
                    self.send(version::response(&Contact::Refused("already connected")).as_bytes());
                    return Ok(events);
                }
                self.version = Some(version);
                self.target_vp = target_vp;
                self.sint = sint;
                events.push(Event::Connected(version));
            } else {
                // Answer on VP 0 / SINT 2: the guest's choice is not known yet.
                self.target_vp = ic.target_vcpu;
            }
            self.send(version::response(&contact).as_bytes());
            return Ok(events);
        }
        let msgtype = u32::from_le_bytes(bytes[..4].try_into().expect("parsed"));
        if self.version.is_none() {
            return Err(Violation::NotConnected(msgtype));
        }
        match message {
            Message::RequestOffers => {
                self.offers_requested = true;
                let relids: Vec<u32> = self
                    .channels
                    .iter()
                    .filter(|(_, c)| c.state != ChannelState::Rescinded)
                    .map(|(r, _)| *r)
                    .collect();
                for relid in relids {
                    self.send_offer(relid);
                }
                self.send(
                    AllOffersDelivered {
                        header: Header::new(AllOffersDelivered::TYPE),
                    }
                    .as_bytes(),
                );
            }
            Message::GpadlHeader(h, rest) => {
                let known = self.gpadls.contains_key(&h.gpadl) || self.assemblies.contains_key(&h.gpadl);
                let channel_ok = matches!(self.channels.get(&h.child_relid), Some(c) if c.state != ChannelState::Rescinded);
                if known || !channel_ok {
                    self.gpadl_created(h.child_relid, h.gpadl, STATUS_FAILURE);
                    return Err(if known {
                        Violation::BadGpadl(h.gpadl)
                    } else {
                        Violation::BadRelid(h.child_relid)
                    });
                }
                match Assembly::start(&h, rest) {
                    Ok(a) if a.is_complete() => return self.complete_gpadl(a),
                    Ok(a) => {
                        self.assemblies.insert(h.gpadl, a);
                    }
                    Err(e) => {
                        self.gpadl_created(h.child_relid, h.gpadl, STATUS_FAILURE);
                        return Err(Violation::GpadlRefused(e));
                    }
                }
            }
            Message::GpadlBody(b, rest) => {
                let a = self
                    .assemblies
                    .get_mut(&b.gpadl)
                    .ok_or(Violation::BadGpadl(b.gpadl))?;
                a.append(&b, rest).map_err(Violation::GpadlRefused)?;
                if a.is_complete() {
                    let a = self.assemblies.remove(&b.gpadl).expect("present");
                    return self.complete_gpadl(a);
                }
            }
            Message::GpadlTeardown(t) => {
                let in_use = self
                    .channels
                    .values()
                    .any(|c| matches!(&c.state, ChannelState::Open(o) if o.ring_gpadl == t.gpadl));
                match self.gpadls.get(&t.gpadl) {
                    Some(g) if g.child_relid == t.child_relid && !in_use => {
                        self.gpadls.remove(&t.gpadl);
                        let m = GpadlTorndown {
                            header: Header::new(GpadlTorndown::TYPE),
                            gpadl: t.gpadl,
                        };
                        self.send(m.as_bytes());
                    }
                    _ => return Err(Violation::BadGpadl(t.gpadl)),
                }
            }
            Message::OpenChannel(o) => {
                let result = self.open(&o);
                let status = if result.is_ok() { 0 } else { STATUS_FAILURE };
                let m = OpenResult {
                    header: Header::new(OpenResult::TYPE),
                    child_relid: o.child_relid,
                    open_id: o.open_id,
                    status,
                };
                self.send(m.as_bytes());
                match result {
                    Ok(event) => events.push(event),
                    Err(v) => return Err(v),
                }
            }
            Message::CloseChannel(c) => {
                let ch = self
                    .channels
                    .get_mut(&c.child_relid)
                    .ok_or(Violation::BadRelid(c.child_relid))?;
                match ch.state {
                    ChannelState::Open(_) => {
                        ch.state = ChannelState::Offered;
                        events.push(Event::Closed { relid: c.child_relid });
                    }
                    // A rescinded channel may still be closed by the guest.
                    ChannelState::Rescinded => events.push(Event::Closed { relid: c.child_relid }),
                    ChannelState::Offered => return Err(Violation::BadRelid(c.child_relid)),
                }
            }
            Message::RelidReleased(r) => match self.channels.get(&r.child_relid) {
                Some(c) if c.state == ChannelState::Rescinded => {
                    self.channels.remove(&r.child_relid);
                    self.gpadls.retain(|_, g| g.child_relid != r.child_relid);
                }
                _ => return Err(Violation::BadRelid(r.child_relid)),
            },
            Message::ModifyChannel(m) => {
                let ch = self
                    .channels
                    .get_mut(&m.child_relid)
                    .ok_or(Violation::BadRelid(m.child_relid))?;
                let ChannelState::Open(info) = &mut ch.state else {
                    return Err(Violation::BadRelid(m.child_relid));
                };
                info.target_vp = m.target_vp;
                if self.version >= Some(Version::WIN10_V5_3) {
                    let r = ModifyChannelResponse {
                        header: Header::new(ModifyChannelResponse::TYPE),
                        child_relid: m.child_relid,
                        status: 0,
                    };
                    self.send(r.as_bytes());
                }
            }
            Message::Unload => {
                for (relid, ch) in self.channels.iter_mut() {
                    if matches!(ch.state, ChannelState::Open(_)) {
                        events.push(Event::Closed { relid: *relid });
                        ch.state = ChannelState::Offered;
                    }
                }
                self.channels.retain(|_, c| c.state != ChannelState::Rescinded);
                self.gpadls.clear();
                self.assemblies.clear();
                self.version = None;
                self.offers_requested = false;
                self.send(
                    UnloadResponse {
                        header: Header::new(UnloadResponse::TYPE),
                    }
                    .as_bytes(),
                );
                events.push(Event::Unloaded);
            }
            Message::InitiateContact(_) => unreachable!("handled above"),
            // Host-to-guest messages coming from the guest.
            _ => return Err(Violation::WrongDirection(msgtype)),
        }
        Ok(events)
    }

    fn gpadl_created(&mut self, relid: u32, handle: u32, status: u32) {
        let m = GpadlCreated {
            header: Header::new(GpadlCreated::TYPE),
            child_relid: relid,
            gpadl: handle,
            status,
        };
        self.send(m.as_bytes());
    }

    fn complete_gpadl(&mut self, a: Assembly) -> Result<Vec<Event>, Violation> {
        let (relid, handle) = (a.child_relid(), a.handle());
        match a.finish(self.max_pfn) {
            Ok(g) => {
                self.gpadls.insert(handle, g);
                self.gpadl_created(relid, handle, 0);
                Ok(Vec::new())
            }
            Err(e) => {
                self.gpadl_created(relid, handle, STATUS_FAILURE);
                Err(Violation::GpadlRefused(e))
            }
        }
    }

    /// The device behind an [`Event::Opened`] could not start: turn the
    /// queued OPENCHANNEL_RESULT for `relid` into a failure and put the
    /// channel back to Offered (the guest may try again). Must be called
    /// before the answer is taken with [`Self::next_message`]; returns false
    /// if there was no such answer waiting.
    pub fn refuse_open(&mut self, relid: u32) -> bool {
        let answer = self.outbox.iter_mut().rev().find_map(|(_, bytes)| {
            let r = OpenResult::mut_from_bytes(bytes.as_mut_slice()).ok()?;
            (r.header.msgtype == OpenResult::TYPE.0 && r.child_relid == relid && r.status == 0).then_some(r)
        });
        let Some(answer) = answer else { return false };
        answer.status = STATUS_FAILURE;
        if let Some(ch) = self.channels.get_mut(&relid)
            && matches!(ch.state, ChannelState::Open(_))
        {
            ch.state = ChannelState::Offered;
        }
        true
    }

    fn open(&mut self, o: &crate::protocol::OpenChannel) -> Result<Event, Violation> {
        let relid = o.child_relid;
        let ch = self.channels.get(&relid).ok_or(Violation::BadRelid(relid))?;
        if ch.state != ChannelState::Offered {
            return Err(Violation::BadRelid(relid));
        }
        let g = self
            .gpadls
            .get(&o.ring_gpadl)
            .ok_or(Violation::BadGpadl(o.ring_gpadl))?;
        let pages = g.page_count() as u32;
        // Each ring needs its control page and at least one data page.
        let split = o.downstream_ring_page_offset;
        if g.child_relid != relid || split < 2 || pages < split + 2 || g.ranges.len() != 1 {
            return Err(Violation::BadGpadl(o.ring_gpadl));
        }
        let info = OpenInfo {
            ring_gpadl: o.ring_gpadl,
            downstream_page_offset: split,
            target_vp: o.target_vp,
            open_id: o.open_id,
        };
        let gpadl = g.clone();
        self.channels.get_mut(&relid).expect("checked").state = ChannelState::Open(info.clone());
        Ok(Event::Opened { relid, info, gpadl })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Client, ClientEvent};

    /// Run messages both ways until both sides are quiet.
    fn pump(server: &mut Server, client: &mut Client, events: &mut Vec<ClientEvent>, veto: Option<u32>) {
        loop {
            let mut moved = false;
            while let Some((conn, bytes)) = client.next_message() {
                moved = true;
                if let Ok(evs) = server.handle(conn, &bytes) {
                    for e in evs {
                        if let (Event::Opened { relid, .. }, Some(v)) = (&e, veto)
                            && *relid == v
                        {
                            assert!(server.refuse_open(v));
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
        // Nothing waiting: nothing to refuse.
        assert!(!server.refuse_open(relid));
        // The guest may try again, and this time the device starts.
        events.clear();
        client.open(relid, handle, 2, 0);
        pump(&mut server, &mut client, &mut events, None);
        assert!(
            events.contains(&ClientEvent::OpenResult { relid, status: 0 }),
            "{events:?}"
        );
    }
}
