//! What every integration service shares: the channel, the negotiation the
//! host starts, one outstanding request at a time matched by transaction
//! id, timeouts, and the accounting of a guest that answers badly.

use alloc::boxed::Box;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;
use ic_protocol::{HeaderFlags, Message, MessageType, Version};
use vmbus::memory::SharedMemory;
use vmbus::packet::PacketType;
use vsp::{Channel, Device, IncomingPacket, InspectSink, OfferParams, OpenError, PollResult};

/// Where a service's channel is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// No open channel.
    Closed,
    /// Open; the negotiation goes out on the next tick or poll.
    Opened,
    /// The negotiation is out; waiting for the guest's answer.
    Negotiating,
    /// Versions agreed: (framework, service).
    Ready(Version, Version),
    /// The guest supports none of the offered versions (it answered with
    /// counts 0/0): the service stays idle until the channel reopens.
    NoCommonVersion,
    /// The guest's negotiation answer was malformed or chose a version that
    /// was not offered: the service stays idle until the channel reopens.
    Failed,
}

impl Phase {
    /// The agreed versions, if ready.
    pub fn versions(self) -> Option<(Version, Version)> {
        match self {
            Self::Ready(f, m) => Some((f, m)),
            _ => None,
        }
    }

    fn describe(self) -> String {
        match self {
            Self::Closed => String::from("closed"),
            Self::Opened => String::from("opened"),
            Self::Negotiating => String::from("negotiating"),
            Self::Ready(f, m) => format!("framework {f}, service {m}"),
            Self::NoCommonVersion => String::from("no common version"),
            Self::Failed => String::from("negotiation failed"),
        }
    }
}

/// The state and counters every service keeps, readable through the
/// control handle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceStatus {
    /// The channel's phase (versions once negotiated).
    pub phase: Phase,
    /// Requests written to the guest (negotiations included).
    pub requests_sent: u64,
    /// Answers accepted.
    pub answers: u64,
    /// Answers that broke the protocol (short, wrong type or flags, bad
    /// body, a sequence that does not follow): counted and dropped.
    pub violations: u64,
    /// Answers with no request outstanding under their transaction id
    /// (late, duplicate or invented): counted and ignored.
    pub unsolicited: u64,
    /// Packets that were not in-band data: counted and ignored.
    pub ignored: u64,
    /// Requests the guest did not answer in time.
    pub timeouts: u64,
    /// What the last violation was.
    pub last_violation: Option<&'static str>,
}

impl Default for ServiceStatus {
    fn default() -> Self {
        Self {
            phase: Phase::Closed,
            requests_sent: 0,
            answers: 0,
            violations: 0,
            unsolicited: 0,
            ignored: 0,
            timeouts: 0,
            last_violation: None,
        }
    }
}

/// One integration service's protocol, as the generic [`IcDevice`] drives
/// it. Implemented by the four services of this crate.
pub trait Service {
    /// Its name in listings.
    const NAME: &'static str;
    /// Its interface type GUID (wire order).
    const INTERFACE: [u8; 16];
    /// The message type of its requests.
    const MESSAGE_TYPE: MessageType;
    /// Service versions offered, newest first.
    fn versions(&self) -> &'static [Version];
    /// How long a request may stay unanswered.
    fn timeout_ns(&self) -> u64;
    /// The body of the next request to send at `now_ns`, if any (only
    /// asked while nothing is outstanding and versions are agreed).
    fn next_request(&mut self, versions: (Version, Version), now_ns: u64) -> Option<Vec<u8>>;
    /// The guest answered the outstanding request with `message` (type,
    /// flags and transaction id already checked).
    fn answer(&mut self, versions: (Version, Version), message: &Message<'_>) -> Result<(), &'static str>;
    /// The outstanding request timed out.
    fn timed_out(&mut self);
    /// The channel closed (`reset`: the guest's bus was reset): drop what
    /// is in flight; a reset also drops what is queued.
    fn closed(&mut self, reset: bool);
    /// Report the service's own state.
    fn inspect(&self, out: &mut dyn InspectSink);
}

/// A service's state shared between its device and the control handle.
pub struct Shared<S> {
    /// Common state and counters.
    pub status: ServiceStatus,
    /// The service's own state.
    pub service: S,
}

impl<S> Shared<S> {
    pub(crate) fn new(service: S) -> Rc<RefCell<Self>> {
        Rc::new(RefCell::new(Self {
            status: ServiceStatus::default(),
            service,
        }))
    }

    fn violation(&mut self, why: &'static str) {
        self.status.violations = self.status.violations.saturating_add(1);
        self.status.last_violation = Some(why);
    }
}

/// The outstanding request: its transaction id and when it went out.
#[derive(Clone, Copy, Debug)]
struct Outstanding {
    id: u64,
    sent_at: u64,
    negotiation: bool,
}

/// An integration service as a VMBus device: the host offers it, sends
/// NEGOTIATE once the guest opens it (on the next [`Device::tick`] or
/// [`Device::poll`]), then the service's requests, one at a time.
pub struct IcDevice<M: SharedMemory, S: Service> {
    channel: Option<Channel<M>>,
    shared: Rc<RefCell<Shared<S>>>,
    outstanding: Option<Outstanding>,
    next_id: u64,
    now: u64,
}

impl<M: SharedMemory, S: Service> IcDevice<M, S> {
    /// A closed device over `shared` (which the control handle also holds).
    pub fn new(shared: Rc<RefCell<Shared<S>>>) -> Self {
        Self {
            channel: None,
            shared,
            outstanding: None,
            next_id: 1,
            now: 0,
        }
    }

    /// Handle one packet from the guest (nothing is ever written back in
    /// answer: the guest only answers).
    fn incoming(shared: &RefCell<Shared<S>>, outstanding: &mut Option<Outstanding>, p: &IncomingPacket<'_>) {
        let mut sh = shared.borrow_mut();
        if p.kind != PacketType::DATA_INBAND {
            sh.status.ignored = sh.status.ignored.saturating_add(1);
            return;
        }
        let pending = match *outstanding {
            Some(o) if o.id == p.transaction_id => o,
            _ => {
                sh.status.unsolicited = sh.status.unsolicited.saturating_add(1);
                return;
            }
        };
        // The answer is consumed whatever it holds: a bad one does not
        // leave the request hanging until its timeout.
        *outstanding = None;
        let message = match Message::parse(p.payload) {
            Ok(m) => m,
            Err(_) => return sh.violation("answer shorter than the IC headers"),
        };
        if !message
            .header
            .header_flags()
            .contains(HeaderFlags::GUEST_RESPONSE)
        {
            return sh.violation("answer without TRANSACTION|RESPONSE");
        }
        if pending.negotiation {
            if message.header.message_type() != MessageType::NEGOTIATE {
                sh.status.phase = Phase::Failed;
                return sh.violation("negotiation answered with another message type");
            }
            let chosen = message.body().and_then(ic_protocol::parse_negotiate_response);
            let offered = sh.service.versions();
            match chosen {
                Ok(Some((fw, msg)))
                    if ic_protocol::FRAMEWORK_VERSIONS.contains(&fw) && offered.contains(&msg) =>
                {
                    sh.status.answers = sh.status.answers.saturating_add(1);
                    sh.status.phase = Phase::Ready(fw, msg);
                }
                Ok(Some(_)) => {
                    sh.status.phase = Phase::Failed;
                    sh.violation("negotiation chose a version that was not offered");
                }
                Ok(None) => {
                    sh.status.answers = sh.status.answers.saturating_add(1);
                    sh.status.phase = Phase::NoCommonVersion;
                }
                Err(_) => {
                    sh.status.phase = Phase::Failed;
                    sh.violation("malformed negotiation answer");
                }
            }
            return;
        }
        let Some(versions) = sh.status.phase.versions() else {
            return sh.violation("answer before negotiation");
        };
        if message.header.message_type() != S::MESSAGE_TYPE {
            return sh.violation("answer of another message type");
        }
        match sh.service.answer(versions, &message) {
            Ok(()) => sh.status.answers = sh.status.answers.saturating_add(1),
            Err(why) => sh.violation(why),
        }
    }

    /// Send the next request if the channel is idle.
    fn pump(&mut self) -> PollResult {
        let Some(channel) = self.channel.as_mut() else {
            return PollResult::default();
        };
        if self.outstanding.is_some() || channel.holding() || channel.broken().is_some() {
            return PollResult::default();
        }
        let mut sh = self.shared.borrow_mut();
        let (payload, negotiation) = match sh.status.phase {
            Phase::Opened => {
                let versions = sh.service.versions();
                match ic_protocol::build_negotiate(ic_protocol::FRAMEWORK_VERSIONS, versions) {
                    Ok(p) => (p, true),
                    Err(_) => return PollResult::default(),
                }
            }
            Phase::Ready(fw, msg) => {
                let Some(body) = sh.service.next_request((fw, msg), self.now) else {
                    return PollResult::default();
                };
                match ic_protocol::build_request(S::MESSAGE_TYPE, (fw, msg), &body) {
                    Ok(p) => (p, false),
                    Err(_) => return PollResult::default(),
                }
            }
            _ => return PollResult::default(),
        };
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        match channel.send(vsp::inband_packet(id, &payload)) {
            Ok(r) => {
                if r.broke.is_none() {
                    sh.status.requests_sent = sh.status.requests_sent.saturating_add(1);
                    if negotiation {
                        sh.status.phase = Phase::Negotiating;
                    }
                    self.outstanding = Some(Outstanding {
                        id,
                        sent_at: self.now,
                        negotiation,
                    });
                }
                r
            }
            Err(_) => PollResult::default(),
        }
    }

    fn stop(&mut self, reset: bool) {
        self.channel = None;
        self.outstanding = None;
        let mut sh = self.shared.borrow_mut();
        sh.status.phase = Phase::Closed;
        sh.service.closed(reset);
    }
}

fn merge(a: PollResult, b: PollResult) -> PollResult {
    PollResult {
        signalled: a.signalled || b.signalled,
        more: a.more || b.more,
        awaiting_device: a.awaiting_device || b.awaiting_device,
        broke: a.broke.or(b.broke),
    }
}

impl<M: SharedMemory, S: Service> Device<M> for IcDevice<M, S> {
    fn offer(&self) -> OfferParams {
        OfferParams::new(S::INTERFACE)
    }

    fn open(&mut self, channel: Channel<M>) -> Result<(), OpenError> {
        if self.channel.is_some() {
            return Err(OpenError::AlreadyOpen);
        }
        self.channel = Some(channel);
        self.outstanding = None;
        self.shared.borrow_mut().status.phase = Phase::Opened;
        Ok(())
    }

    fn poll(&mut self, budget: u32) -> PollResult {
        let Some(channel) = self.channel.as_mut() else {
            return PollResult::default();
        };
        let shared = &self.shared;
        let outstanding = &mut self.outstanding;
        let r = channel.poll(budget, &mut |p| {
            Self::incoming(shared, outstanding, p);
            None
        });
        merge(r, self.pump())
    }

    fn close(&mut self) {
        self.stop(false);
    }

    fn reset(&mut self) {
        self.stop(true);
    }

    fn inspect(&self, out: &mut dyn InspectSink) {
        let Some(channel) = &self.channel else { return };
        channel.inspect(out, "requests sent");
        let sh = self.shared.borrow();
        let s = &sh.status;
        out.text("service", "service", S::NAME);
        out.text("ic_state", "state", &s.phase.describe());
        out.counter("answers", "answers", s.answers);
        out.counter("violations", "protocol violations", s.violations);
        out.counter("unsolicited", "unsolicited answers", s.unsolicited);
        out.counter("ignored", "non-data packets ignored", s.ignored);
        out.counter("timeouts", "requests timed out", s.timeouts);
        out.text("last_violation", "last violation", s.last_violation.unwrap_or(""));
        sh.service.inspect(out);
    }

    fn tick(&mut self, now_ns: u64) -> PollResult {
        self.now = now_ns;
        if self.channel.is_none() {
            return PollResult::default();
        }
        if let Some(o) = self.outstanding
            && !o.negotiation
        {
            let mut sh = self.shared.borrow_mut();
            if now_ns.saturating_sub(o.sent_at) >= sh.service.timeout_ns() {
                self.outstanding = None;
                sh.status.timeouts = sh.status.timeouts.saturating_add(1);
                sh.service.timed_out();
            }
        }
        self.pump()
    }
}

/// A device as the host holds it.
pub(crate) fn boxed<M: SharedMemory + 'static, S: Service + 'static>(
    shared: &Rc<RefCell<Shared<S>>>,
) -> Box<dyn Device<M>> {
    Box::new(IcDevice::<M, S>::new(shared.clone()))
}
