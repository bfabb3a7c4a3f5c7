//! The VMBus client over a SynIC transport: post what the client queues,
//! feed it what the host sends, and wait (with a budget) for the event a
//! request is answered by.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use hv1_abi::HvStatus;
use vmbus::client::{Client, ClientError, ClientEvent};
use vmbus::protocol::VMBUS_MESSAGE_TYPE;
use vmbus::version::Version;

/// How an HvPostMessage went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostStatus {
    /// The message is in the recipient's queue.
    Posted,
    /// The recipient's slot (and the hypervisor's queue) is full: retry.
    InsufficientBuffers,
    /// Refused with this status.
    Failed(HvStatus),
}

impl PostStatus {
    /// From the hypercall's status.
    pub fn from_status(status: HvStatus) -> Self {
        match status {
            HvStatus::SUCCESS => Self::Posted,
            HvStatus::INSUFFICIENT_BUFFERS => Self::InsufficientBuffers,
            other => Self::Failed(other),
        }
    }

    /// The hypercall status this stands for.
    pub fn status(self) -> HvStatus {
        match self {
            Self::Posted => HvStatus::SUCCESS,
            Self::InsufficientBuffers => HvStatus::INSUFFICIENT_BUFFERS,
            Self::Failed(s) => s,
        }
    }
}

/// The hypervisor-facing half the child OS implements.
pub trait SynicTransport {
    /// HvPostMessage `bytes` (at most 240) on `connection_id`.
    fn post(&mut self, connection_id: u32, message_type: u32, bytes: &[u8]) -> PostStatus;
    /// Take the message waiting in the VMBus SINT's slot, if any (and EOM
    /// if the slot was pending): `(message type, payload length)`.
    fn take_message(&mut self, buf: &mut [u8; 240]) -> Option<(u32, usize)>;
    /// One turn of a wait loop (a `pause`, or pumping the peer in tests).
    fn spin(&mut self);
}

/// What went wrong on the bus. `Display` gives the text the test OS prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusError {
    /// A post was refused (or the slot stayed full past the retry budget).
    Post {
        /// Connection posted on.
        connection: u32,
        /// The last status.
        status: HvStatus,
    },
    /// A message of another type than VMBus's arrived.
    MessageType(u32),
    /// Nothing arrived within the spin budget while waiting for `what`.
    NoReply(&'static str),
    /// A host message the client could not use.
    HostMessage(ClientError),
    /// 64 messages arrived without the awaited event.
    TooManyMessages(&'static str),
    /// Connecting: the host accepted no version.
    NoVersion,
    /// The awaited kind of event came, but not the one asked for (e.g. a
    /// GPADL_CREATED for another handle).
    Unexpected(Box<ClientEvent>),
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Post { connection, status } => write!(f, "post on connection {connection}: {status:?}"),
            Self::MessageType(t) => write!(f, "message type {t:#x}"),
            Self::NoReply(what) => write!(f, "no reply while waiting for {what}"),
            Self::HostMessage(e) => write!(f, "host message: {e:?}"),
            Self::TooManyMessages(what) => write!(f, "64 messages without {what}"),
            Self::NoVersion => f.write_str("no version accepted"),
            Self::Unexpected(e) => write!(f, "{e:?}"),
        }
    }
}

impl From<BusError> for String {
    fn from(e: BusError) -> Self {
        alloc::format!("{e}")
    }
}

/// Spins [`Bus::until`] waits for one host message by default (TCG runs
/// some 10^8 simple loop iterations a second; the root answers within a
/// tick).
pub const DEFAULT_REPLY_SPINS: u64 = 200_000_000;
/// INSUFFICIENT_BUFFERS answers one post may get by default before
/// [`Bus::flush`] gives up.
pub const DEFAULT_POST_RETRIES: u64 = 1_000_000;
/// Host messages [`Bus::until`] takes before giving up on an event.
pub const MESSAGES_PER_WAIT: usize = 64;

/// The VMBus client and the SynIC transport under it.
pub struct Bus<T> {
    /// The protocol state machine (offers, queued messages, raw posts).
    pub client: Client,
    /// The transport.
    pub transport: T,
    buf: [u8; 240],
    reply_spins: u64,
    post_retries: u64,
}

impl<T: SynicTransport + Default> Bus<T> {
    /// A bus over a default transport, offering `versions` (`None`: Linux
    /// 6.1's list).
    pub fn new(versions: Option<&[Version]>) -> Self {
        Self::with_transport(T::default(), versions)
    }
}

impl<T: SynicTransport> Bus<T> {
    /// A bus over `transport`, offering `versions` (`None`: Linux 6.1's list).
    pub fn with_transport(transport: T, versions: Option<&[Version]>) -> Self {
        Self {
            client: Client::new(versions, 0),
            transport,
            buf: [0; 240],
            reply_spins: DEFAULT_REPLY_SPINS,
            post_retries: DEFAULT_POST_RETRIES,
        }
    }

    /// Change the budgets: spins per awaited message, retries per post.
    pub fn with_budgets(mut self, reply_spins: u64, post_retries: u64) -> Self {
        self.reply_spins = reply_spins;
        self.post_retries = post_retries;
        self
    }

    /// Post everything the client queued, retrying a post while the host's
    /// slot is full (up to the retry budget).
    pub fn flush(&mut self) -> Result<(), BusError> {
        while let Some((connection, bytes)) = self.client.next_message() {
            let mut retries = 0u64;
            loop {
                match self.transport.post(connection, VMBUS_MESSAGE_TYPE, &bytes) {
                    PostStatus::Posted => break,
                    PostStatus::InsufficientBuffers if retries < self.post_retries => {
                        retries += 1;
                        self.transport.spin();
                    }
                    other => {
                        return Err(BusError::Post {
                            connection,
                            status: other.status(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Flush, then take host messages until an event satisfies `want`.
    pub fn until(
        &mut self,
        what: &'static str,
        want: impl Fn(&ClientEvent) -> bool,
    ) -> Result<ClientEvent, BusError> {
        self.flush()?;
        for _ in 0..MESSAGES_PER_WAIT {
            let mut spins = 0u64;
            let n = loop {
                if let Some((t, n)) = self.transport.take_message(&mut self.buf) {
                    if t != VMBUS_MESSAGE_TYPE {
                        return Err(BusError::MessageType(t));
                    }
                    break n;
                }
                spins += 1;
                if spins > self.reply_spins {
                    return Err(BusError::NoReply(what));
                }
                self.transport.spin();
            };
            let events: Vec<ClientEvent> = self
                .client
                .handle(&self.buf[..n])
                .map_err(BusError::HostMessage)?;
            self.flush()?;
            if let Some(e) = events.into_iter().find(|e| want(e)) {
                return Ok(e);
            }
        }
        Err(BusError::TooManyMessages(what))
    }

    /// INITIATE_CONTACT (with version fallback), then wait for all offers.
    pub fn connect(&mut self) -> Result<Version, BusError> {
        self.client.connect();
        match self.until("VERSION_RESPONSE", |e| {
            matches!(e, ClientEvent::Connected(_) | ClientEvent::ConnectFailed)
        })? {
            ClientEvent::Connected(v) => {
                self.until("ALLOFFERS_DELIVERED", |e| {
                    matches!(e, ClientEvent::AllOffersDelivered)
                })?;
                Ok(v)
            }
            _ => Err(BusError::NoVersion),
        }
    }

    /// UNLOAD and wait for UNLOAD_RESPONSE.
    pub fn unload(&mut self) -> Result<(), BusError> {
        self.client.unload();
        self.until("UNLOAD_RESPONSE", |e| matches!(e, ClientEvent::Unloaded))
            .map(|_| ())
    }

    /// Create a GPADL over `pfns` for `relid`: `(handle, status)`.
    pub fn gpadl(&mut self, relid: u32, pfns: &[u64]) -> Result<(u32, u32), BusError> {
        let handle = self.client.create_gpadl(relid, pfns);
        match self.until("GPADL_CREATED", |e| matches!(e, ClientEvent::GpadlCreated { .. }))? {
            ClientEvent::GpadlCreated { handle: h, status } if h == handle => Ok((h, status)),
            other => Err(BusError::Unexpected(Box::new(other))),
        }
    }

    /// Tear GPADL `handle` down and wait for GPADL_TORNDOWN.
    pub fn teardown(&mut self, relid: u32, handle: u32) -> Result<(), BusError> {
        self.client.teardown(relid, handle);
        match self.until("GPADL_TORNDOWN", |e| matches!(e, ClientEvent::GpadlTorndown(_)))? {
            ClientEvent::GpadlTorndown(h) if h == handle => Ok(()),
            other => Err(BusError::Unexpected(Box::new(other))),
        }
    }

    /// OPENCHANNEL on GPADL `handle` (`downstream`: the page offset of the
    /// host-to-guest ring): the OPENCHANNEL_RESULT status (0 = open).
    pub fn open(&mut self, relid: u32, handle: u32, downstream: u32) -> Result<u32, BusError> {
        self.open_on_vp(relid, handle, downstream, 0)
    }

    /// OPENCHANNEL asking for the channel's interrupts on VP `target_vp`;
    /// the OPENCHANNEL_RESULT status.
    pub fn open_on_vp(
        &mut self,
        relid: u32,
        handle: u32,
        downstream: u32,
        target_vp: u32,
    ) -> Result<u32, BusError> {
        self.client.open(relid, handle, downstream, target_vp);
        match self.until("OPENCHANNEL_RESULT", |e| {
            matches!(e, ClientEvent::OpenResult { .. })
        })? {
            ClientEvent::OpenResult { status, .. } => Ok(status),
            other => Err(BusError::Unexpected(Box::new(other))),
        }
    }

    /// CLOSECHANNEL (the host does not answer it).
    pub fn close(&mut self, relid: u32) -> Result<(), BusError> {
        self.client.close(relid);
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use vmbus::server::{Event, OfferSpec, Server};

    /// The host in-process: every post goes straight into a real server;
    /// its answers wait in a queue for `take_message`. The first `busy`
    /// posts are refused with INSUFFICIENT_BUFFERS.
    struct Loopback {
        server: Server,
        inbox: VecDeque<Vec<u8>>,
        busy: u64,
        refused: u64,
        opened: Vec<u32>,
        closed: Vec<u32>,
        spins: u64,
    }

    impl Loopback {
        fn new(busy: u64) -> Self {
            let mut server = Server::new(4096);
            server.offer(echo_offer()).expect("offer");
            Self {
                server,
                inbox: VecDeque::new(),
                busy,
                refused: 0,
                opened: Vec::new(),
                closed: Vec::new(),
                spins: 0,
            }
        }
    }

    fn echo_offer() -> OfferSpec {
        let mut interface_type = [0u8; 16];
        interface_type[..14].copy_from_slice(b"hv-rs echo dev");
        OfferSpec {
            interface_type,
            interface_instance: [1; 16],
            channel_flags: 0,
            user_defined: [0; 120],
            sub_channel_index: 0,
        }
    }

    impl SynicTransport for Loopback {
        fn post(&mut self, connection_id: u32, message_type: u32, bytes: &[u8]) -> PostStatus {
            assert_eq!(message_type, VMBUS_MESSAGE_TYPE);
            if self.busy > 0 {
                self.busy -= 1;
                self.refused += 1;
                return PostStatus::InsufficientBuffers;
            }
            // A violation has no reply of its own (a refusal is an answer in the outbox).
            let events = self.server.handle(connection_id, bytes).unwrap_or_default();
            for e in events {
                match e {
                    Event::Opened { relid, .. } => {
                        self.opened.push(relid);
                        self.server.open_complete(relid, true).expect("opening");
                    }
                    Event::Closed { relid } => self.closed.push(relid),
                    _ => {}
                }
            }
            while let Some((_, m)) = self.server.next_message() {
                self.inbox.push_back(m);
            }
            PostStatus::Posted
        }

        fn take_message(&mut self, buf: &mut [u8; 240]) -> Option<(u32, usize)> {
            let m = self.inbox.pop_front()?;
            buf[..m.len()].copy_from_slice(&m);
            Some((VMBUS_MESSAGE_TYPE, m.len()))
        }

        fn spin(&mut self) {
            self.spins += 1;
        }
    }

    fn bus(busy: u64) -> Bus<Loopback> {
        Bus::with_transport(Loopback::new(busy), None).with_budgets(1000, 10)
    }

    #[test]
    fn connect_gpadl_open_close_unload() {
        let mut bus = bus(0);
        let v = bus.connect().expect("connect");
        assert_eq!(v, vmbus::version::SUPPORTED[0]);
        let relid = *bus.client.offers().keys().next().expect("an offer");
        let (handle, status) = bus.gpadl(relid, &[0x400, 0x401, 0x402, 0x403]).expect("gpadl");
        assert_eq!(status, 0);
        assert_eq!(bus.open(relid, handle, 2).expect("open"), 0);
        assert_eq!(bus.transport.opened, [relid]);
        bus.close(relid).expect("close");
        assert_eq!(bus.transport.closed, [relid]);
        bus.teardown(relid, handle).expect("teardown");
        assert!(bus.transport.server.gpadls().is_empty());
        bus.unload().expect("unload");
        assert_eq!(bus.transport.server.version(), None);
    }

    #[test]
    fn large_gpadl_and_refusals() {
        let mut bus = bus(0);
        bus.connect().expect("connect");
        let pfns: Vec<u64> = (0x400..0x800).collect();
        let (handle, status) = bus.gpadl(1, &pfns).expect("gpadl");
        assert_eq!(status, 0);
        bus.teardown(1, handle).expect("teardown");
        // Beyond the guest's 4096 pages: refused, not an error of the bus.
        let (_, status) = bus.gpadl(1, &[0x10_0000]).expect("gpadl");
        assert_ne!(status, 0);
        // An unknown relid: a failure result.
        let (handle, _) = bus.gpadl(1, &[0x400, 0x401]).expect("gpadl");
        assert_ne!(bus.open(77, handle, 1).expect("open"), 0);
        bus.unload().expect("unload");
    }

    #[test]
    fn flush_retries_insufficient_buffers() {
        let mut bus = bus(7);
        bus.connect().expect("connect");
        assert_eq!(bus.transport.refused, 7);
        assert!(bus.transport.spins >= 7);
        bus.unload().expect("unload");
    }

    #[test]
    fn flush_gives_up_after_the_retry_budget() {
        let mut bus = bus(11);
        let e = bus.connect().expect_err("the slot stays full");
        assert_eq!(
            e,
            BusError::Post {
                connection: vmbus::protocol::MESSAGE_CONNECTION_ID_4,
                status: HvStatus::INSUFFICIENT_BUFFERS
            }
        );
        assert_eq!(String::from(e), "post on connection 4: INSUFFICIENT_BUFFERS");
    }

    #[test]
    fn waiting_runs_out_of_spins() {
        let mut bus = bus(0);
        bus.connect().expect("connect");
        // CLOSECHANNEL has no answer: waiting for one times out.
        bus.client.close(1);
        let e = bus.until("nothing", |_| true).expect_err("no answer");
        assert_eq!(e, BusError::NoReply("nothing"));
        assert_eq!(String::from(e), "no reply while waiting for nothing");
    }

    #[test]
    fn a_refused_version_is_no_version() {
        let mut bus =
            Bus::with_transport(Loopback::new(0), Some(&[Version(0x0009_0000)])).with_budgets(1000, 10);
        assert_eq!(bus.connect(), Err(BusError::NoVersion));
        assert_eq!(String::from(BusError::NoVersion), "no version accepted");
    }
}
