//! The guest side of VMBus as a state machine (what Linux's `hv_vmbus` does,
//! for our Rust child OS and for loopback tests): connect with version
//! fallback, collect offers, create GPADLs, open/close channels, follow
//! rescinds and unload.

use crate::gpadl;
use crate::protocol::{
    CloseChannel, GpadlTeardown, Header, InitiateContact, MESSAGE_CONNECTION_ID, MESSAGE_CONNECTION_ID_4,
    Message, OfferChannel, OpenChannel, ParseError, RelidReleased, RequestOffers, Unload, VMBUS_SINT,
};
use crate::version::{SUPPORTED, Version};
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;
use zerocopy::IntoBytes;

/// What the client reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// Connected at this version.
    Connected(Version),
    /// No version was accepted.
    ConnectFailed,
    /// A device offer.
    Offer(OfferChannel),
    /// All offers are in.
    AllOffersDelivered,
    /// A GPADL was created (`status` 0) or refused.
    GpadlCreated {
        /// Handle.
        handle: u32,
        /// Status.
        status: u32,
    },
    /// A GPADL was torn down.
    GpadlTorndown(u32),
    /// An open finished.
    OpenResult {
        /// Channel.
        relid: u32,
        /// 0 = open.
        status: u32,
    },
    /// A channel was rescinded (the client closed it and released the relid).
    Rescinded(u32),
    /// MODIFYCHANNEL answered.
    Modified {
        /// Channel.
        relid: u32,
        /// Status.
        status: i32,
    },
    /// UNLOAD finished.
    Unloaded,
}

/// Host messages the client cannot use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientError {
    /// Did not parse.
    Malformed(ParseError),
    /// A guest-to-host message from the host, or one out of place.
    Unexpected(u32),
}

/// The client.
pub struct Client {
    candidates: Vec<Version>,
    trying: usize,
    version: Option<Version>,
    target_vp: u32,
    offers: BTreeMap<u32, OfferChannel>,
    open: BTreeMap<u32, bool>,
    next_handle: u32,
    outbox: VecDeque<(u32, Vec<u8>)>,
    message_connection_id: u32,
}

impl Client {
    /// A client offering `versions` in order (`None`: Linux 6.1's list).
    pub fn new(versions: Option<&[Version]>, target_vp: u32) -> Self {
        Self {
            candidates: versions.map_or_else(|| SUPPORTED.to_vec(), <[Version]>::to_vec),
            trying: 0,
            version: None,
            target_vp,
            offers: BTreeMap::new(),
            open: BTreeMap::new(),
            // Linux counts GPADL handles from 0xE1E10.
            next_handle: 0xE1E10,
            outbox: VecDeque::new(),
            message_connection_id: MESSAGE_CONNECTION_ID,
        }
    }

    /// The agreed version.
    pub fn version(&self) -> Option<Version> {
        self.version
    }

    /// Offers received.
    pub fn offers(&self) -> &BTreeMap<u32, OfferChannel> {
        &self.offers
    }

    /// Next message to post: (connection id, bytes).
    pub fn next_message(&mut self) -> Option<(u32, Vec<u8>)> {
        self.outbox.pop_front()
    }

    fn post(&mut self, bytes: &[u8]) {
        self.outbox
            .push_back((self.message_connection_id, bytes.to_vec()));
    }

    /// Start (or restart) connecting with the first candidate.
    pub fn connect(&mut self) {
        self.trying = 0;
        self.send_contact();
    }

    fn send_contact(&mut self) {
        let Some(&v) = self.candidates.get(self.trying) else {
            return;
        };
        let m = InitiateContact {
            header: Header::new(InitiateContact::TYPE),
            version_requested: v.0,
            target_vcpu: self.target_vp,
            interrupt_page_or_sint: if v >= Version::WIN10_V5 {
                VMBUS_SINT as u64
            } else {
                0
            },
            monitor_page1: 0,
            monitor_page2: 0,
        };
        let conn = if v >= Version::WIN10_V5 {
            MESSAGE_CONNECTION_ID_4
        } else {
            MESSAGE_CONNECTION_ID
        };
        self.outbox.push_back((conn, m.as_bytes().to_vec()));
    }

    /// Create a GPADL over `pfns` for `relid`; returns the handle.
    pub fn create_gpadl(&mut self, relid: u32, pfns: &[u64]) -> u32 {
        let handle = self.next_handle;
        self.next_handle += 1;
        for m in gpadl::encode(relid, handle, pfns) {
            self.post(&m);
        }
        handle
    }

    /// Open `relid` on ring GPADL `handle`, host→guest ring at `downstream` pages.
    pub fn open(&mut self, relid: u32, handle: u32, downstream: u32, target_vp: u32) {
        let m = OpenChannel {
            header: Header::new(OpenChannel::TYPE),
            child_relid: relid,
            open_id: relid,
            ring_gpadl: handle,
            target_vp,
            downstream_ring_page_offset: downstream,
            user_data: [0; 120],
        };
        self.post(m.as_bytes());
    }

    /// Close `relid` (no reply exists).
    pub fn close(&mut self, relid: u32) {
        self.open.remove(&relid);
        self.post(
            CloseChannel {
                header: Header::new(CloseChannel::TYPE),
                child_relid: relid,
            }
            .as_bytes(),
        );
    }

    /// Tear down GPADL `handle` of `relid`.
    pub fn teardown(&mut self, relid: u32, handle: u32) {
        self.post(
            GpadlTeardown {
                header: Header::new(GpadlTeardown::TYPE),
                child_relid: relid,
                gpadl: handle,
            }
            .as_bytes(),
        );
    }

    /// Unload VMBus.
    pub fn unload(&mut self) {
        self.post(
            Unload {
                header: Header::new(Unload::TYPE),
            }
            .as_bytes(),
        );
    }

    /// Send raw bytes (conformance tests of malformed input).
    pub fn post_raw(&mut self, connection_id: u32, bytes: &[u8]) {
        self.outbox.push_back((connection_id, bytes.to_vec()));
    }

    /// Handle a message from the host.
    pub fn handle(&mut self, bytes: &[u8]) -> Result<Vec<ClientEvent>, ClientError> {
        let m = Message::parse(bytes).map_err(ClientError::Malformed)?;
        let mut events = Vec::new();
        match m {
            Message::VersionResponse(r) => {
                let v = *self
                    .candidates
                    .get(self.trying)
                    .ok_or(ClientError::Unexpected(15))?;
                if r.version_supported == 1 {
                    self.version = Some(v);
                    if v >= Version::WIN10_V5 {
                        self.message_connection_id = r.message_connection_id;
                    }
                    events.push(ClientEvent::Connected(v));
                    self.post(
                        RequestOffers {
                            header: Header::new(RequestOffers::TYPE),
                        }
                        .as_bytes(),
                    );
                } else {
                    self.trying += 1;
                    if self.trying < self.candidates.len() {
                        self.send_contact();
                    } else {
                        events.push(ClientEvent::ConnectFailed);
                    }
                }
            }
            Message::OfferChannel(o) => {
                self.offers.insert(o.child_relid, o);
                events.push(ClientEvent::Offer(o));
            }
            Message::AllOffersDelivered => events.push(ClientEvent::AllOffersDelivered),
            Message::GpadlCreated(g) => events.push(ClientEvent::GpadlCreated {
                handle: g.gpadl,
                status: g.status,
            }),
            Message::GpadlTorndown(t) => events.push(ClientEvent::GpadlTorndown(t.gpadl)),
            Message::OpenResult(r) => {
                if r.status == 0 {
                    self.open.insert(r.child_relid, true);
                }
                events.push(ClientEvent::OpenResult {
                    relid: r.child_relid,
                    status: r.status,
                });
            }
            Message::RescindChannelOffer(r) => {
                // Linux: close if open, then release the relid.
                if self.open.contains_key(&r.child_relid) {
                    self.close(r.child_relid);
                }
                self.offers.remove(&r.child_relid);
                self.post(
                    RelidReleased {
                        header: Header::new(RelidReleased::TYPE),
                        child_relid: r.child_relid,
                    }
                    .as_bytes(),
                );
                events.push(ClientEvent::Rescinded(r.child_relid));
            }
            Message::ModifyChannelResponse(r) => events.push(ClientEvent::Modified {
                relid: r.child_relid,
                status: r.status,
            }),
            Message::UnloadResponse => {
                self.version = None;
                self.offers.clear();
                self.open.clear();
                self.message_connection_id = MESSAGE_CONNECTION_ID;
                events.push(ClientEvent::Unloaded);
            }
            other => {
                let t = u32::from_le_bytes(bytes[..4].try_into().expect("parsed"));
                let _ = other;
                return Err(ClientError::Unexpected(t));
            }
        }
        Ok(events)
    }
}
