//! The VMBus conformance catalogue (docs/vmbus-conformance.md). Every case has
//! an id, the rule it checks (with its source) and the expected result, and
//! runs in-process: the `vmbus` server against the `vmbus` client over a
//! loopback transport, with rings in a simulated guest memory. The same
//! catalogue will run in QEMU between a real child and the root once the
//! SynIC transport exists.

#![forbid(unsafe_code)]

mod ic;
mod netvsp;
mod storvsp;

use vmbus::client::{Client, ClientEvent};
use vmbus::memory::{AtomicMemory, PagedMemory, SharedMemory};
use vmbus::packet::{Descriptor, FLAG_COMPLETION_REQUESTED, PacketType};
use vmbus::protocol::{self, Header, Message};
use vmbus::ring::{self, Reader, Ring, RingError, Signal, Writer};
use vmbus::server::{
    ChannelState, Event, HostError, Limits, OfferSpec, Quota, STATUS_FAILURE, STATUS_UNSUCCESSFUL, Server,
    Violation,
};
use vmbus::version::Version;
use zerocopy::IntoBytes;

/// One case.
pub struct Case {
    /// Stable id.
    pub id: &'static str,
    /// The rule, with its source.
    pub rule: &'static str,
    /// What must happen.
    pub expect: &'static str,
    /// The check.
    pub run: fn() -> Result<(), String>,
}

macro_rules! check {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            return Err(format!($($arg)*));
        }
    };
}

/// Guest RAM for the loopback (16 MiB).
const GUEST_PAGES: u64 = 4096;

/// Server and client wired back to back.
pub struct Loopback {
    /// The host side.
    pub server: Server,
    /// The guest side.
    pub client: Client,
    /// Guest memory.
    pub memory: AtomicMemory,
    /// Server events so far.
    pub events: Vec<Event>,
    /// Client events so far.
    pub client_events: Vec<ClientEvent>,
    /// Violations the server reported.
    pub violations: Vec<Violation>,
    /// The device's answer to every [`Event::Opened`]: `true`, the loopback
    /// answers each open at once with `open_complete` (refused for the
    /// relids in `veto`, accepted otherwise); `false`, opens stay unanswered
    /// (Opening) until the case calls `open_complete` itself.
    pub answer_opens: bool,
    /// Relids whose opens the device refuses (when `answer_opens`).
    pub veto: Vec<u32>,
    next_page: u64,
}

fn offer(n: u8) -> OfferSpec {
    OfferSpec {
        interface_type: [n; 16],
        interface_instance: [n ^ 0x5A; 16],
        channel_flags: 0,
        user_defined: [0; 120],
        sub_channel_index: 0,
    }
}

impl Loopback {
    /// A pair with `offers` devices, not yet connected.
    pub fn new(offers: u8, versions: Option<&[Version]>) -> Self {
        Self::with_limits(offers, versions, Limits::DEFAULT)
    }

    /// A pair with `offers` devices and a server with `limits`, not yet connected.
    pub fn with_limits(offers: u8, versions: Option<&[Version]>, limits: Limits) -> Self {
        let mut server = Server::with_limits(GUEST_PAGES, limits);
        for i in 0..offers {
            server.offer(offer(i + 1)).expect("relids left");
        }
        Self {
            server,
            client: Client::new(versions, 0),
            memory: AtomicMemory::new(GUEST_PAGES * 4096),
            events: Vec::new(),
            client_events: Vec::new(),
            violations: Vec::new(),
            answer_opens: true,
            veto: Vec::new(),
            next_page: 16,
        }
    }

    /// Connected, offers delivered.
    pub fn connected(offers: u8) -> Self {
        let mut l = Self::new(offers, None);
        l.client.connect();
        l.pump();
        l
    }

    /// Deliver messages both ways until quiet. The server's answers are
    /// taken after each guest message, as the root does (its worker flushes
    /// the server after every message), so the outbox never holds more than
    /// one message's answers. Each open is answered by the device right
    /// after the message that asked for it, unless `answer_opens` is off.
    pub fn pump(&mut self) {
        loop {
            let mut moved = self.deliver_answers();
            while let Some((conn, m)) = self.client.next_message() {
                moved = true;
                match self.server.handle(conn, &m) {
                    Ok(ev) => {
                        for e in &ev {
                            if let (Event::Opened { relid, .. }, true) = (e, self.answer_opens) {
                                let accepted = !self.veto.contains(relid);
                                if let Err(why) = self.server.open_complete(*relid, accepted) {
                                    panic!("open_complete({relid}) right after Opened: {why:?}");
                                }
                            }
                        }
                        self.events.extend(ev);
                    }
                    Err(v) => self.violations.push(v),
                }
                self.deliver_answers();
            }
            if !moved {
                return;
            }
        }
    }

    /// Hand every queued server message to the client; whether there were any.
    fn deliver_answers(&mut self) -> bool {
        let mut moved = false;
        while let Some((_vp, m)) = self.server.next_message() {
            moved = true;
            match self.client.handle(&m) {
                Ok(ev) => self.client_events.extend(ev),
                Err(e) => panic!("the server sent something the client cannot use: {e:?}"),
            }
        }
        moved
    }

    /// `n` fresh guest pages.
    pub fn pages(&mut self, n: u64) -> Vec<u64> {
        let first = self.next_page;
        self.next_page += n;
        (first..first + n).collect()
    }

    /// Create a GPADL of `pages` pages for `relid`; (handle, status).
    pub fn gpadl(&mut self, relid: u32, pages: u64) -> (u32, Vec<u64>, Option<u32>) {
        let pfns = self.pages(pages);
        let handle = self.client.create_gpadl(relid, &pfns);
        self.pump();
        let status = self.client_events.iter().rev().find_map(|e| match e {
            ClientEvent::GpadlCreated { handle: h, status } if *h == handle => Some(*status),
            _ => None,
        });
        (handle, pfns, status)
    }

    /// Open `relid` with rings of `up` and `down` pages (control pages included).
    pub fn open(&mut self, relid: u32, up: u64, down: u64) -> Result<OpenRings, String> {
        let (handle, pfns, status) = self.gpadl(relid, up + down);
        check!(status == Some(0), "GPADL for relid {relid}: {status:?}");
        self.client.open(relid, handle, up as u32, 0);
        self.pump();
        let result = self.client_events.iter().rev().find_map(|e| match e {
            ClientEvent::OpenResult { relid: r, status } if *r == relid => Some(*status),
            _ => None,
        });
        check!(result == Some(0), "open relid {relid}: {result:?}");
        Ok(OpenRings { handle, pfns, up })
    }

    /// The four ends of an open channel's rings.
    pub fn ends(&self, rings: &OpenRings) -> Ends<'_> {
        self.ends_with_host_pages(rings, &rings.pfns, rings.up as usize)
    }

    /// The four ends, the host's over `host_pfns` split at `host_split`:
    /// what the server handed the device on open (`Event::Opened`), so a
    /// wrong page list there breaks the packets' way through.
    pub fn ends_with_host_pages(&self, rings: &OpenRings, host_pfns: &[u64], host_split: usize) -> Ends<'_> {
        let upstream =
            PagedMemory::new(&self.memory, rings.pfns[..rings.up as usize].to_vec()).expect("in memory");
        let downstream =
            PagedMemory::new(&self.memory, rings.pfns[rings.up as usize..].to_vec()).expect("in memory");
        let up2 = PagedMemory::new(&self.memory, host_pfns[..host_split].to_vec()).expect("in memory");
        let down2 = PagedMemory::new(&self.memory, host_pfns[host_split..].to_vec()).expect("in memory");
        Ring::new(&upstream)
            .expect("ring")
            .reset(ring::FEAT_PENDING_SEND_SZ)
            .expect("reset");
        Ring::new(&downstream)
            .expect("ring")
            .reset(ring::FEAT_PENDING_SEND_SZ)
            .expect("reset");
        Ends {
            guest_out: Writer::new(Ring::new(upstream).expect("ring")),
            host_in: Reader::new(Ring::new(up2).expect("ring")),
            host_out: Writer::new(Ring::new(down2).expect("ring")),
            guest_in: Reader::new(Ring::new(downstream).expect("ring")),
        }
    }
}

/// An open channel's GPADL.
pub struct OpenRings {
    /// Its handle.
    pub handle: u32,
    /// Its pages.
    pub pfns: Vec<u64>,
    /// Pages of the guest→host ring.
    pub up: u64,
}

/// Both rings of a channel, both directions.
pub struct Ends<'a> {
    /// Guest writes requests.
    pub guest_out: Writer<PagedMemory<'a, AtomicMemory>>,
    /// Host reads them.
    pub host_in: Reader<PagedMemory<'a, AtomicMemory>>,
    /// Host writes responses.
    pub host_out: Writer<PagedMemory<'a, AtomicMemory>>,
    /// Guest reads them.
    pub guest_in: Reader<PagedMemory<'a, AtomicMemory>>,
}

fn inband(payload: &[u8], trans: u64, flags: u16) -> Vec<u8> {
    let mut v = Descriptor::new(PacketType::DATA_INBAND, 16, payload.len(), flags, trans)
        .as_bytes()
        .to_vec();
    v.extend_from_slice(payload);
    v
}

fn negotiate(v: Version) -> Result<(), String> {
    let mut l = Loopback::new(1, Some(&[v]));
    l.client.connect();
    let (conn, first) = l.client.next_message().ok_or("no INITIATE_CONTACT")?;
    let expected = if v >= Version::WIN10_V5 { 4 } else { 1 };
    check!(
        conn == expected,
        "INITIATE_CONTACT for {v:?} went to connection {conn}, not {expected}"
    );
    l.events
        .extend(l.server.handle(conn, &first).map_err(|e| format!("{e:?}"))?);
    l.pump();
    check!(
        l.server.version() == Some(v),
        "server at {:?}",
        l.server.version()
    );
    check!(
        l.client.version() == Some(v),
        "client at {:?}",
        l.client.version()
    );
    check!(
        l.client_events.contains(&ClientEvent::AllOffersDelivered),
        "no ALLOFFERS_DELIVERED"
    );
    Ok(())
}

macro_rules! neg_case {
    ($id:literal, $v:expr, $name:literal) => {
        Case {
            id: $id,
            rule: concat!(
                "version ",
                $name,
                " is accepted; INITIATE_CONTACT on id 4 from 5.0, 1 below (Linux connection.c vmbus_negotiate_version)"
            ),
            expect: "VERSION_RESPONSE supported=1, offers then ALLOFFERS_DELIVERED",
            run: || negotiate($v),
        }
    };
}

/// The catalogue.
pub fn catalogue() -> Vec<Case> {
    let mut cases = vec![
        neg_case!("NEG-01", Version::WIN10_V5_3, "5.3"),
        neg_case!("NEG-02", Version::WIN10_V5_2, "5.2"),
        neg_case!("NEG-03", Version::WIN10_V5_1, "5.1"),
        neg_case!("NEG-04", Version::WIN10_V5, "5.0"),
        neg_case!("NEG-05", Version::WIN10_V4_1, "4.1"),
        neg_case!("NEG-06", Version::WIN10, "4.0"),
        neg_case!("NEG-07", Version::WIN8_1, "3.0"),
        neg_case!("NEG-08", Version::WIN8, "2.4"),
        Case {
            id: "NEG-09",
            rule: "unsupported versions get version_supported=0 and the guest falls back (Linux connection.c loop)",
            expect: "6.0, 1.1 and 0.13 refused; the client settles on 5.3",
            run: || {
                let list = [
                    Version(0x0006_0000),
                    Version::WIN7,
                    Version::WS2008,
                    Version::WIN10_V5_3,
                ];
                let mut l = Loopback::new(0, Some(&list));
                l.client.connect();
                l.pump();
                check!(
                    l.client.version() == Some(Version::WIN10_V5_3),
                    "client at {:?}",
                    l.client.version()
                );
                let mut only_old = Loopback::new(0, Some(&[Version::WIN7]));
                only_old.client.connect();
                only_old.pump();
                check!(
                    only_old.client_events.contains(&ClientEvent::ConnectFailed),
                    "no failure reported"
                );
                check!(only_old.server.version().is_none(), "server connected anyway");
                Ok(())
            },
        },
        Case {
            id: "NEG-10",
            rule: "INITIATE_CONTACT is served on connection ids 1 and 4 only (Linux hyperv.h VMBUS_MESSAGE_CONNECTION_ID_4)",
            expect: "connection id 7: version_supported=0, connection_state=FAILED",
            run: || {
                let mut l = Loopback::new(0, None);
                let ic = protocol::InitiateContact {
                    header: Header::new(protocol::InitiateContact::TYPE),
                    version_requested: Version::WIN10_V5_3.0,
                    target_vcpu: 0,
                    interrupt_page_or_sint: 2,
                    monitor_page1: 0,
                    monitor_page2: 0,
                };
                let _ = l.server.handle(7, ic.as_bytes()).map_err(|e| format!("{e:?}"))?;
                let (_, reply) = l.server.next_message().ok_or("no reply")?;
                let Ok(Message::VersionResponse(r)) = Message::parse(&reply) else {
                    return Err("not a VERSION_RESPONSE".into());
                };
                check!(r.version_supported == 0 && r.connection_state == 2, "{r:?}");
                check!(l.server.version().is_none(), "connected");
                Ok(())
            },
        },
        Case {
            id: "NEG-11",
            rule: "a second INITIATE_CONTACT while connected is an implicit disconnect and reconnect: Linux sends no UNLOAD when it reboots (connection.c vmbus_connect; OpenVMM channels.rs initiate_contact → request_disconnect(Reconnect))",
            expect: "Closed for the open channel before Connected, version accepted, GPADL handles forgotten, channel Offered and re-openable",
            run: reconnect_case,
        },
        Case {
            id: "NEG-12",
            rule: "a second INITIATE_CONTACT for a version the host does not speak still disconnects; the guest falls back and reconnects (connection.c version loop)",
            expect: "Closed, version_supported=0 and not connected; the client's next version (5.3) connects with offers",
            run: || {
                let mut l = Loopback::connected(1);
                l.open(1, 2, 2)?;
                let ic = protocol::InitiateContact {
                    header: Header::new(protocol::InitiateContact::TYPE),
                    version_requested: 0x0006_0000,
                    target_vcpu: 0,
                    interrupt_page_or_sint: 2,
                    monitor_page1: 0,
                    monitor_page2: 0,
                };
                let events = l.server.handle(4, ic.as_bytes()).map_err(|e| format!("{e:?}"))?;
                check!(events == vec![Event::Closed { relid: 1 }], "{events:?}");
                check!(l.server.version().is_none(), "still connected");
                let (_, reply) = l.server.next_message().ok_or("no reply")?;
                check!(
                    matches!(Message::parse(&reply), Ok(Message::VersionResponse(r)) if r.version_supported == 0),
                    "{reply:?}"
                );
                let mut fresh = Client::new(Some(&[Version(0x0006_0000), Version::WIN10_V5_3]), 0);
                fresh.connect();
                l.client = fresh;
                l.pump();
                check!(
                    l.server.version() == Some(Version::WIN10_V5_3) && l.client.offers().len() == 1,
                    "no fallback: {:?}",
                    l.server.version()
                );
                Ok(())
            },
        },
        Case {
            id: "OFF-01",
            rule: "offers are 196 bytes, relids 1..2047 unique, monitor_allocated=0, dedicated interrupt, unique connection ids, then ALLOFFERS_DELIVERED (§2.1, pitfall 3)",
            expect: "5 offers as specified",
            run: || {
                let l = Loopback::connected(5);
                let offers = l.client.offers();
                check!(offers.len() == 5, "{} offers", offers.len());
                let mut conns: Vec<u32> = offers.values().map(|o| o.connection_id).collect();
                // dedup only removes adjacent repeats: sort first.
                conns.sort_unstable();
                conns.dedup();
                check!(conns.len() == 5, "connection ids not unique");
                for (relid, o) in offers {
                    check!((1..=2047).contains(relid), "relid {relid}");
                    check!(o.monitor_allocated == 0 && o.is_dedicated_interrupt == 1, "{o:?}");
                    check!(o.as_bytes().len() == 196, "size");
                }
                let last = l.client_events.last().cloned();
                check!(
                    last == Some(ClientEvent::AllOffersDelivered),
                    "last event {last:?}"
                );
                Ok(())
            },
        },
        Case {
            id: "OFF-02",
            rule: "a device offered after REQUESTOFFERS is offered at once (hot-add)",
            expect: "the client sees the new offer",
            run: || {
                let mut l = Loopback::connected(1);
                let relid = l.server.offer(offer(9)).map_err(|e| format!("{e:?}"))?;
                l.pump();
                check!(
                    l.client.offers().contains_key(&relid),
                    "offer {relid} not delivered"
                );
                Ok(())
            },
        },
        Case {
            id: "OFF-03",
            rule: "messages before a successful INITIATE_CONTACT are refused (channel_mgmt.c)",
            expect: "REQUESTOFFERS before contact: NotConnected, nothing sent",
            run: || {
                let mut l = Loopback::new(1, None);
                let m = protocol::RequestOffers {
                    header: Header::new(protocol::RequestOffers::TYPE),
                };
                let r = l.server.handle(1, m.as_bytes());
                check!(r == Err(Violation::NotConnected(3)), "{r:?}");
                check!(l.server.next_message().is_none(), "server answered");
                Ok(())
            },
        },
        Case {
            id: "OFF-04",
            rule: "offers take the lowest free relid; a rescinded relid stays the guest's until RELID_RELEASED (§2.4, OpenVMM channels.rs)",
            expect: "rescind 2 of 1..3: the next offer is 4; after the guest releases 2, the next is 2; connection ids unique",
            run: lowest_relid_case,
        },
        gpadl_size_case("GPA-01", 1),
        gpadl_size_case("GPA-02", 26),
        gpadl_size_case("GPA-03", 27),
        gpadl_size_case("GPA-04", 1000),
        gpadl_size_case("GPA-05", 4096 - 32),
        Case {
            id: "GPA-06",
            rule: "GPADL handles are unique; a reused handle is refused with a failure status (§2.3)",
            expect: "second GPADL_HEADER with the same handle: GPADL_CREATED status != 0, first GPADL intact",
            run: || {
                let mut l = Loopback::connected(1);
                let (h, _, s) = l.gpadl(1, 2);
                check!(s == Some(0), "{s:?}");
                let pfns = l.pages(2);
                for m in vmbus::gpadl::encode(1, h, &pfns) {
                    l.client.post_raw(1, &m);
                }
                l.pump();
                check!(
                    l.violations.contains(&Violation::BadGpadl(h)),
                    "{:?}",
                    l.violations
                );
                let failed = l.client_events.iter().filter(|e| matches!(e, ClientEvent::GpadlCreated { status, .. } if *status == STATUS_FAILURE)).count();
                check!(failed == 1, "failures {failed}");
                check!(
                    l.server.gpadl(h).map(|g| g.page_count()) == Some(2),
                    "first GPADL changed"
                );
                Ok(())
            },
        },
        Case {
            id: "GPA-07",
            rule: "a GPADL must name an offered channel and list each page once, inside guest memory",
            expect: "unknown relid, duplicate page, page beyond memory: GPADL_CREATED failure each",
            run: || {
                let mut l = Loopback::connected(1);
                for (relid, pfns) in [
                    (99u32, vec![20u64, 21]),
                    (1, vec![30, 31, 30]),
                    (1, vec![40, GUEST_PAGES + 5]),
                ] {
                    let h = l.client.create_gpadl(relid, &pfns);
                    l.pump();
                    let status = l.client_events.iter().rev().find_map(|e| match e {
                        ClientEvent::GpadlCreated { handle, status } if *handle == h => Some(*status),
                        _ => None,
                    });
                    check!(status == Some(STATUS_FAILURE), "{relid}/{pfns:?}: {status:?}");
                    check!(l.server.gpadl(h).is_none(), "kept");
                }
                Ok(())
            },
        },
        Case {
            id: "GPA-08",
            rule: "GPADL_BODY for a handle not being assembled is a protocol violation; nothing changes",
            expect: "BadGpadl violation",
            run: || {
                let mut l = Loopback::connected(1);
                let body = protocol::GpadlBody {
                    header: Header::new(protocol::GpadlBody::TYPE),
                    msgnumber: 0,
                    gpadl: 77,
                };
                let mut m = body.as_bytes().to_vec();
                m.extend_from_slice(&[0; 8]);
                l.client.post_raw(1, &m);
                l.pump();
                check!(
                    l.violations == vec![Violation::BadGpadl(77)],
                    "{:?}",
                    l.violations
                );
                Ok(())
            },
        },
        Case {
            id: "GPA-09",
            rule: "GPADL_TEARDOWN of an unused GPADL answers GPADL_TORNDOWN; a ring GPADL in use is not torn down (§2.3)",
            expect: "torn down when free, refused while the channel is open",
            run: || {
                let mut l = Loopback::connected(1);
                let (h, _, _) = l.gpadl(1, 2);
                l.client.teardown(1, h);
                l.pump();
                check!(
                    l.client_events.contains(&ClientEvent::GpadlTorndown(h)),
                    "no TORNDOWN"
                );
                check!(l.server.gpadl(h).is_none(), "still known");
                let rings = l.open(1, 2, 2)?;
                l.client.teardown(1, rings.handle);
                l.pump();
                check!(
                    l.violations.contains(&Violation::BadGpadl(rings.handle)),
                    "{:?}",
                    l.violations
                );
                check!(
                    l.server.gpadl(rings.handle).is_some(),
                    "ring GPADL removed while open"
                );
                Ok(())
            },
        },
        Case {
            id: "GPA-10",
            rule: "GPADL pages must lie inside guest memory: PFN < guest pages, so PFN == guest pages (one past the end) is refused",
            expect: "PFN guest_pages-1: GPADL_CREATED 0; PFN guest_pages: GPADL_CREATED failure, GpadlRefused(BadPfn)",
            run: pfn_bound_case,
        },
        Case {
            id: "QTA-01",
            rule: "GPADLs held, finished or still being assembled, are capped (Limits::max_gpadls, default 64): a guest posting GPADL_HEADERs with fresh handles cannot grow the host",
            expect: "1000 headers without bodies: the server holds 64 GPADLs, each refused one gets GPADL_CREATED failure and QuotaExceeded(Gpadls); a teardown frees a slot",
            run: gpadl_count_quota_case,
        },
        Case {
            id: "QTA-02",
            rule: "one GPADL's pages are capped (Limits::max_pages_per_gpadl), checked on the header before anything is allocated",
            expect: "limit 100: 100 pages created; 101 refused with GPADL_CREATED failure and QuotaExceeded(GpadlPages), its bodies then name nothing",
            run: gpadl_pages_quota_case,
        },
        Case {
            id: "QTA-03",
            rule: "pages over all GPADLs are capped (Limits::max_gpadl_pages, default 32768, never more than the guest's pages)",
            expect: "in a 4096-page guest: 4000 + 96 pages created; one more page refused with QuotaExceeded(TotalGpadlPages); after a teardown it is created",
            run: total_pages_quota_case,
        },
        Case {
            id: "QTA-04",
            rule: "answers waiting for the guest are capped (Limits::max_outbox, default 128): a request whose answers do not fit is refused before it changes anything, the queue never grows",
            expect: "undrained REQUESTOFFERS fill 128 slots; then REQUESTOFFERS, GPADL_HEADER and a host offer are refused (QuotaExceeded(Outbox), HostError::OutboxFull) with nothing changed; once drained the GPADL is created",
            run: outbox_quota_case,
        },
        open_case("OPN-01", 2, 2),
        open_case("OPN-02", 4, 4),
        open_case("OPN-03", 16, 32),
        Case {
            id: "OPN-04",
            rule: "OPENCHANNEL needs an offered, closed channel and a ring GPADL of its own with both rings at least 2 pages (§2.2)",
            expect: "OPENCHANNEL_RESULT failure for: unknown relid, double open, split 1, split past the end, another channel's GPADL",
            run: || {
                let mut l = Loopback::connected(2);
                let (h, _, _) = l.gpadl(1, 4);
                let (h2, _, _) = l.gpadl(2, 4);
                let attempts = [(99, h, 2), (1, h, 1), (1, h, 3), (1, h2, 2)];
                for (relid, handle, split) in attempts {
                    l.client.open(relid, handle, split, 0);
                    l.pump();
                    let r = l.client_events.iter().rev().find_map(|e| match e {
                        ClientEvent::OpenResult { relid: r, status } if *r == relid => Some(*status),
                        _ => None,
                    });
                    check!(
                        r == Some(STATUS_FAILURE),
                        "open {relid}/{handle:#x}/{split}: {r:?}"
                    );
                }
                l.client.open(1, h, 2, 0);
                l.pump();
                l.client.open(1, h, 2, 0);
                l.pump();
                let results: Vec<u32> = l
                    .client_events
                    .iter()
                    .filter_map(|e| match e {
                        ClientEvent::OpenResult { relid: 1, status } => Some(*status),
                        _ => None,
                    })
                    .collect();
                check!(
                    results.ends_with(&[0, STATUS_FAILURE]),
                    "double open: {results:?}"
                );
                Ok(())
            },
        },
        Case {
            id: "OPN-05",
            rule: "an open is answered only when the device answers: a valid OPENCHANNEL makes the channel Opening and reports Event::Opened, and OPENCHANNEL_RESULT follows Server::open_complete (issue 8; OpenVMM channels.rs ChannelState::Opening, open_complete)",
            expect: "no OPENCHANNEL_RESULT before open_complete (other requests still answered meanwhile), the channel Opening, not counted open; then OPENCHANNEL_RESULT 0 with the guest's open_id, the channel Open and a packet crosses",
            run: open_waits_for_the_device_case,
        },
        Case {
            id: "OPN-06",
            rule: "a device veto (open_complete(relid, false)) gives OPENCHANNEL_RESULT failure and the channel can be opened again",
            expect: "OPENCHANNEL_RESULT 0x8000FFFF, channel Offered, a second open_complete refused (NotOpening); the guest's next open on the same GPADL gets 0 and a packet crosses",
            run: veto_case,
        },
        Case {
            id: "OPN-07",
            rule: "a close/rescind/reconnect while Opening leaves no answer pending and open_complete reports it (also UNLOAD and Server::reset)",
            expect: "CLOSECHANNEL: Closed, Offered; RESCIND: Rescinded, the guest releases; INITIATE_CONTACT: Closed before Connected; UNLOAD: Closed, Unloaded; reset: the relid returned. Each time open_complete fails (NotOpening/NoChannel), no OPENCHANNEL_RESULT ever reaches the guest, no slot stays held, and the channel (if still offered) opens again",
            run: opening_dropped_case,
        },
        Case {
            id: "RNG-01",
            rule: "packets are 8-byte aligned with an 8-byte trailer and wrap around the data area (§3.2)",
            expect: "2000 packets of 1..300 bytes through a 2-page ring arrive intact and in order",
            run: || {
                let mut l = Loopback::connected(1);
                let rings = l.open(1, 2, 2)?;
                let mut e = l.ends(&rings);
                let mut buf = [0u8; 4096];
                for i in 0..2000u64 {
                    let len = (i * 37 % 300 + 1) as usize;
                    let payload: Vec<u8> = (0..len).map(|j| (i as usize + j) as u8).collect();
                    let p = inband(&payload, i, 0);
                    let _ = e
                        .guest_out
                        .write(&[&p])
                        .map_err(|x| format!("write {i}: {x:?}"))?;
                    let (pkt, _) = e
                        .host_in
                        .read(&mut buf)
                        .map_err(|x| format!("read {i}: {x:?}"))?
                        .ok_or("empty")?;
                    check!(pkt.descriptor.transaction_id == i, "trans id");
                    check!(&buf[16..16 + len] == payload.as_slice(), "payload {i}");
                }
                let st = e.guest_out.ring().state().map_err(|x| format!("{x:?}"))?;
                check!(st.write_index == st.read_index && st.bytes_pending == 0, "{st:?}");
                Ok(())
            },
        },
        Case {
            id: "RNG-02",
            rule: "the writer signals only when the ring was empty and the reader's interrupt_mask is 0 (§3.3, ring_buffer.c hv_signal_on_write)",
            expect: "signal, no signal (not empty), no signal (masked)",
            run: || {
                let mut l = Loopback::connected(1);
                let rings = l.open(1, 4, 4)?;
                let mut e = l.ends(&rings);
                let p = inband(b"ping", 1, 0);
                check!(e.guest_out.write(&[&p]) == Ok(Signal(true)), "first write");
                check!(e.guest_out.write(&[&p]) == Ok(Signal(false)), "second write");
                let mut buf = [0u8; 64];
                let _ = e.host_in.read(&mut buf);
                let _ = e.host_in.read(&mut buf);
                e.host_in.begin_read().map_err(|x| format!("{x:?}"))?;
                check!(e.guest_out.write(&[&p]) == Ok(Signal(false)), "masked write");
                check!(e.host_in.end_read() == Ok(true), "data not seen at unmask");
                Ok(())
            },
        },
        Case {
            id: "RNG-03",
            rule: "a reader signals a blocked writer once, when free space grows past pending_send_sz (§3.3, hv_pkt_iter_close)",
            expect: "one signal on the crossing read, none before or after",
            run: || {
                let mut l = Loopback::connected(1);
                let rings = l.open(1, 2, 2)?;
                let mut e = l.ends(&rings);
                let p = inband(&[9u8; 496], 1, 0); // 512 + 8 trailer
                let mut n = 0;
                while e.host_out.write(&[&p]).is_ok() {
                    n += 1;
                }
                check!(n == 7, "{n} packets fit a 4096-byte data area");
                e.host_out
                    .set_pending_send_size(1000)
                    .map_err(|x| format!("{x:?}"))?;
                let mut buf = [0u8; 600];
                let signals: Vec<bool> = (0..4)
                    .map(|_| {
                        e.guest_in
                            .read(&mut buf)
                            .ok()
                            .flatten()
                            .map(|(_, s)| s.0)
                            .unwrap_or(false)
                    })
                    .collect();
                check!(signals == vec![false, true, false, false], "{signals:?}");
                Ok(())
            },
        },
        Case {
            id: "RNG-04",
            rule: "ring indices from the peer are checked: 8-byte aligned and inside the data area (§3.2)",
            expect: "misaligned or out-of-range read/write index: PeerBadIndex, no copy",
            run: || {
                let mut l = Loopback::connected(1);
                let rings = l.open(1, 2, 2)?;
                let mut e = l.ends(&rings);
                let mem = PagedMemory::new(&l.memory, rings.pfns[..rings.up as usize].to_vec())
                    .map_err(|x| format!("{x:?}"))?;
                mem.store_u32(ring::WRITE_INDEX, 4)
                    .map_err(|x| format!("{x:?}"))?;
                let mut buf = [0u8; 64];
                check!(
                    matches!(
                        e.host_in.read(&mut buf),
                        Err(RingError::PeerBadIndex { which: "write", .. })
                    ),
                    "misaligned"
                );
                mem.store_u32(ring::WRITE_INDEX, 4096)
                    .map_err(|x| format!("{x:?}"))?;
                check!(
                    matches!(e.host_in.read(&mut buf), Err(RingError::PeerBadIndex { .. })),
                    "out of range"
                );
                e.host_out
                    .ring()
                    .memory()
                    .store_u32(ring::READ_INDEX, 8191)
                    .map_err(|x| format!("{x:?}"))?;
                check!(
                    matches!(
                        e.host_out.write(&[&inband(b"x", 1, 0)]),
                        Err(RingError::PeerBadIndex { which: "read", .. })
                    ),
                    "writer trusted a bad read index"
                );
                Ok(())
            },
        },
        Case {
            id: "RNG-05",
            rule: "len8/offset8 from the peer are checked against the bytes written (§4.1)",
            expect: "len8 past write_index: PeerPacketOverrun; offset8 < 2: PeerBadPacket; packet left unconsumed",
            run: || {
                let mut l = Loopback::connected(1);
                let rings = l.open(1, 2, 2)?;
                let mut e = l.ends(&rings);
                let _ = e
                    .guest_out
                    .write(&[&inband(b"12345678", 5, 0)])
                    .map_err(|x| format!("{x:?}"))?;
                let mem = PagedMemory::new(&l.memory, rings.pfns[..rings.up as usize].to_vec())
                    .map_err(|x| format!("{x:?}"))?;
                let mut d = Descriptor::new(PacketType::DATA_INBAND, 16, 8, 0, 5);
                d.len8 = 100;
                mem.write_at(4096, d.as_bytes()).map_err(|x| format!("{x:?}"))?;
                let mut buf = [0u8; 1024];
                check!(
                    matches!(e.host_in.read(&mut buf), Err(RingError::PeerPacketOverrun { .. })),
                    "overrun"
                );
                d.len8 = 3;
                d.offset8 = 1;
                mem.write_at(4096, d.as_bytes()).map_err(|x| format!("{x:?}"))?;
                check!(
                    matches!(e.host_in.read(&mut buf), Err(RingError::PeerBadPacket(_))),
                    "bad offset8"
                );
                let st = e.host_in.ring().state().map_err(|x| format!("{x:?}"))?;
                check!(st.read_index == 0, "consumed: {st:?}");
                Ok(())
            },
        },
        Case {
            id: "RNG-06",
            rule: "a packet that can never fit the ring (padded length + trailer must stay below the data size) is TooLarge at once, never Full (ring_buffer.c hv_ringbuffer_write)",
            expect: "2-page ring: a max_packet() packet crosses; one 8-byte unit more is TooLarge on an empty ring",
            run: largest_packet_case,
        },
        Case {
            id: "TXN-01",
            rule: "completions echo all 64 bits of the transaction id (§4.1; storvsc uses U64_MAX-2)",
            expect: "the host builds the COMP for a request with COMPLETION_REQUESTED (Descriptor::completion) with the same 64-bit id, through both rings; none for a request without the flag",
            run: || {
                let mut l = Loopback::connected(1);
                let rings = l.open(1, 2, 2)?;
                let mut e = l.ends(&rings);
                let id = u64::MAX - 2;
                let _ = e
                    .guest_out
                    .write(&[&inband(b"init", id, FLAG_COMPLETION_REQUESTED)])
                    .map_err(|x| format!("{x:?}"))?;
                let mut buf = [0u8; 64];
                let (req, _) = e
                    .host_in
                    .read(&mut buf)
                    .map_err(|x| format!("{x:?}"))?
                    .ok_or("empty")?;
                check!(req.descriptor.flags & FLAG_COMPLETION_REQUESTED != 0, "flag lost");
                // The host side builds the completion from what it read.
                let comp = req
                    .descriptor
                    .completion(8)
                    .ok_or("the host built no completion for a request asking for one")?;
                let _ = e
                    .host_out
                    .write(&[comp.as_bytes(), &[0u8; 8]])
                    .map_err(|x| format!("{x:?}"))?;
                let (c, _) = e
                    .guest_in
                    .read(&mut buf)
                    .map_err(|x| format!("{x:?}"))?
                    .ok_or("empty")?;
                check!(
                    c.kind == PacketType::COMPLETION && c.descriptor.transaction_id == id,
                    "{c:?}"
                );
                let _ = e
                    .guest_out
                    .write(&[&inband(b"no reply", u64::MAX, 0)])
                    .map_err(|x| format!("{x:?}"))?;
                let (req, _) = e
                    .host_in
                    .read(&mut buf)
                    .map_err(|x| format!("{x:?}"))?
                    .ok_or("empty")?;
                check!(
                    req.descriptor.transaction_id == u64::MAX && req.descriptor.completion(8).is_none(),
                    "a completion nobody asked for: {req:?}"
                );
                Ok(())
            },
        },
        Case {
            id: "CLS-01",
            rule: "CLOSECHANNEL returns the channel to offered; it can be reopened (no reply exists, §2.2)",
            expect: "Closed event, then a second open succeeds",
            run: || {
                let mut l = Loopback::connected(1);
                let rings = l.open(1, 2, 2)?;
                l.client.close(1);
                l.pump();
                check!(l.events.contains(&Event::Closed { relid: 1 }), "{:?}", l.events);
                l.client.teardown(1, rings.handle);
                l.pump();
                check!(
                    l.client_events
                        .contains(&ClientEvent::GpadlTorndown(rings.handle)),
                    "teardown after close"
                );
                l.open(1, 4, 4)?;
                Ok(())
            },
        },
        Case {
            id: "RSC-01",
            rule: "RESCIND: the guest closes, releases the relid (RELID_RELEASED); only then is the relid reused (§2.4)",
            expect: "rescind of an open channel closes it; the relid is free again after release",
            run: || {
                let mut l = Loopback::connected(2);
                l.open(1, 2, 2)?;
                l.server.rescind(1).map_err(|e| format!("{e:?}"))?;
                check!(l.server.offer(offer(7)) == Ok(3), "relid 1 reused before release");
                l.pump();
                check!(l.client_events.contains(&ClientEvent::Rescinded(1)), "no rescind");
                check!(l.events.contains(&Event::Closed { relid: 1 }), "not closed");
                check!(!l.server.channels().contains_key(&1), "relid not released");
                check!(l.server.offer(offer(8)) == Ok(1), "relid 1 not reusable");
                Ok(())
            },
        },
        Case {
            id: "UNL-01",
            rule: "UNLOAD closes every channel, drops GPADLs and answers UNLOAD_RESPONSE; the guest may reconnect (§1.4)",
            expect: "Closed + Unloaded events, UNLOAD_RESPONSE, then a fresh connection with offers",
            run: || {
                let mut l = Loopback::connected(2);
                let rings = l.open(2, 2, 2)?;
                l.client.unload();
                l.pump();
                check!(
                    l.client_events.contains(&ClientEvent::Unloaded),
                    "no UNLOAD_RESPONSE"
                );
                check!(
                    l.events.contains(&Event::Closed { relid: 2 }) && l.events.contains(&Event::Unloaded),
                    "{:?}",
                    l.events
                );
                check!(l.server.gpadl(rings.handle).is_none(), "GPADL survived");
                check!(
                    l.server
                        .channels()
                        .values()
                        .all(|c| c.state == ChannelState::Offered),
                    "state"
                );
                l.client.connect();
                l.pump();
                check!(
                    l.server.version().is_some() && l.client.offers().len() == 2,
                    "no reconnect"
                );
                Ok(())
            },
        },
        Case {
            id: "RST-01",
            rule: "Server::reset (the child partition restarts): not connected, no GPADLs or assemblies, empty outbox, rescinded channels dropped, every other channel Offered with its offer; the relids that were open are returned",
            expect: "reset returns [1, 3]; a fresh guest connects, sees offers 1 and 3 and opens 1 again",
            run: reset_case,
        },
        Case {
            id: "MOD-01",
            rule: "MODIFYCHANNEL retargets an open channel; from 5.3 it is acknowledged (§1.2)",
            expect: "5.3: MODIFYCHANNEL_RESPONSE status 0, target VP updated; 4.1: no response",
            run: || {
                for (v, answered) in [(Version::WIN10_V5_3, true), (Version::WIN10_V4_1, false)] {
                    let mut l = Loopback::new(1, Some(&[v]));
                    l.client.connect();
                    l.pump();
                    l.open(1, 2, 2)?;
                    let m = protocol::ModifyChannel {
                        header: Header::new(protocol::ModifyChannel::TYPE),
                        child_relid: 1,
                        target_vp: 3,
                    };
                    l.client.post_raw(1, m.as_bytes());
                    l.pump();
                    let got = l
                        .client_events
                        .contains(&ClientEvent::Modified { relid: 1, status: 0 });
                    check!(got == answered, "{v:?}: response {got}");
                    let ChannelState::Open(info) = &l.server.channels()[&1].state else {
                        return Err("not open".into());
                    };
                    check!(info.target_vp == 3, "target {}", info.target_vp);
                }
                Ok(())
            },
        },
        Case {
            id: "MOD-02",
            rule: "from 5.3 every MODIFYCHANNEL is answered, a refused one with STATUS_UNSUCCESSFUL: Linux 6.1 waits for the answer with no timeout (channel.c send_modifychannel_with_ack)",
            expect: "unknown relid, a channel not open, target VP 0xFFFFFFFF: MODIFYCHANNEL_RESPONSE 0xC0000001 and a violation each; the target VP is unchanged",
            run: modify_errors_case,
        },
        Case {
            id: "MOD-03",
            rule: "MODIFYCHANNEL exists from 4.1 (channel.c vmbus_send_modifychannel, VERSION_WIN10_V4_1); below it is a violation; from 4.1 to 5.2 it has no answer",
            expect: "4.0: Unsupported violation, no answer, target unchanged; 4.1: an unknown relid is a violation without an answer",
            run: modify_versions_case,
        },
        Case {
            id: "MAL-01",
            rule: "malformed messages are refused without disturbing anything: truncated, oversized, unknown type, host-only types, bad relids",
            expect: "a violation each; the open channel stays open and usable",
            run: || {
                let mut l = Loopback::connected(2);
                let rings = l.open(1, 2, 2)?;
                let open_ch = protocol::OpenChannel {
                    header: Header::new(protocol::OpenChannel::TYPE),
                    child_relid: 2,
                    open_id: 2,
                    ring_gpadl: 0,
                    target_vp: 0,
                    downstream_ring_page_offset: 2,
                    user_data: [0; 120],
                };
                let offer_msg = vmbus::protocol::AllOffersDelivered {
                    header: Header::new(protocol::AllOffersDelivered::TYPE),
                };
                let close_unknown = protocol::CloseChannel {
                    header: Header::new(protocol::CloseChannel::TYPE),
                    child_relid: 1999,
                };
                let bad: Vec<Vec<u8>> = vec![
                    open_ch.as_bytes()[..100].to_vec(),
                    vec![0u8; 241],
                    vec![77, 0, 0, 0, 0, 0, 0, 0],
                    offer_msg.as_bytes().to_vec(),
                    close_unknown.as_bytes().to_vec(),
                    vec![1],
                ];
                for m in &bad {
                    l.client.post_raw(1, m);
                }
                l.pump();
                check!(l.violations.len() == bad.len(), "{:?}", l.violations);
                check!(
                    matches!(l.violations[0], Violation::Malformed(_)),
                    "{:?}",
                    l.violations[0]
                );
                check!(
                    l.violations[3] == Violation::WrongDirection(4),
                    "{:?}",
                    l.violations[3]
                );
                check!(
                    l.violations[4] == Violation::BadRelid(1999),
                    "{:?}",
                    l.violations[4]
                );
                check!(
                    matches!(l.server.channels()[&1].state, ChannelState::Open(_)),
                    "channel 1 disturbed"
                );
                let mut e = l.ends(&rings);
                let _ = e
                    .guest_out
                    .write(&[&inband(b"still fine", 1, 0)])
                    .map_err(|x| format!("{x:?}"))?;
                let mut buf = [0u8; 64];
                check!(
                    e.host_in.read(&mut buf).map_err(|x| format!("{x:?}"))?.is_some(),
                    "ring broken"
                );
                Ok(())
            },
        },
        Case {
            id: "MAL-02",
            rule: "hostile messages (the fuzz corpus in vmbus/fuzz/corpus/fuzz_channel_message, then 10 000 pseudo-random ones) never panic, a refused one changes nothing, and the server stays usable within its Limits",
            expect: "each refusal leaves version, channels and GPADLs as they were; usage stays within the limits; after each corpus file REQUESTOFFERS is answered, a new GPADL is created and the open channel's rings still carry a packet",
            run: malformed_replay,
        },
    ];
    cases.extend(ic::cases());
    cases.extend(storvsp::cases());
    cases.extend(netvsp::cases());
    cases
}

fn gpadl_size_case(id: &'static str, pages: u64) -> Case {
    let run: fn() -> Result<(), String> = match pages {
        1 => || gpadl_of(1),
        26 => || gpadl_of(26),
        27 => || gpadl_of(27),
        1000 => || gpadl_of(1000),
        _ => || gpadl_of(4096 - 32),
    };
    Case {
        id,
        rule: "GPADLs of any size: header with up to 26 PFNs, then bodies of up to 28, until range_buflen bytes (§2.3)",
        expect: "GPADL_CREATED status 0 and the server holds every page in order",
        run,
    }
}

fn gpadl_of(pages: u64) -> Result<(), String> {
    let mut l = Loopback::connected(1);
    let (h, pfns, status) = l.gpadl(1, pages);
    check!(
        status == Some(0),
        "{pages} pages: {status:?} ({:?})",
        l.violations
    );
    let g = l.server.gpadl(h).ok_or("not stored")?;
    check!(g.pages().eq(pfns.iter().copied()), "pages differ");
    Ok(())
}

fn open_case(id: &'static str, up: u64, down: u64) -> Case {
    let run: fn() -> Result<(), String> = match (up, down) {
        (2, 2) => || open_and_echo(2, 2),
        (4, 4) => || open_and_echo(4, 4),
        _ => || open_and_echo(16, 32),
    };
    Case {
        id,
        rule: "OPENCHANNEL on a ring GPADL: pages [0,S) guest→host, [S,end) host→guest (§2.2, channel.c __vmbus_open)",
        expect: "OPENCHANNEL_RESULT 0; a packet crosses each ring",
        run,
    }
}

fn open_and_echo(up: u64, down: u64) -> Result<(), String> {
    let mut l = Loopback::connected(1);
    let rings = l.open(1, up, down)?;
    // The device works on the pages the server handed it, not the guest's
    // own list: the packets below cross only if those are right.
    let host = l.events.iter().find_map(|e| match e {
        Event::Opened {
            relid: 1,
            info,
            gpadl,
        } => Some((
            gpadl.pages().collect::<Vec<u64>>(),
            info.downstream_page_offset as usize,
        )),
        _ => None,
    });
    let (host_pfns, host_split) = host.ok_or_else(|| format!("no Opened event: {:?}", l.events))?;
    check!(host_split == up as usize, "downstream offset {host_split}");
    check!(
        host_pfns == rings.pfns,
        "pages handed to the device {host_pfns:?} vs {:?}",
        rings.pfns
    );
    let mut e = l.ends_with_host_pages(&rings, &host_pfns, host_split);
    let _ = e
        .guest_out
        .write(&[&inband(b"ping", 7, 0)])
        .map_err(|x| format!("{x:?}"))?;
    let mut buf = [0u8; 256];
    let (p, _) = e
        .host_in
        .read(&mut buf)
        .map_err(|x| format!("{x:?}"))?
        .ok_or("nothing upstream")?;
    check!(&buf[16..20] == b"ping", "upstream payload");
    let _ = e
        .host_out
        .write(&[&inband(b"pong", p.descriptor.transaction_id, 0)])
        .map_err(|x| format!("{x:?}"))?;
    let (q, _) = e
        .guest_in
        .read(&mut buf)
        .map_err(|x| format!("{x:?}"))?
        .ok_or("nothing downstream")?;
    check!(
        &buf[16..20] == b"pong" && q.descriptor.transaction_id == 7,
        "downstream"
    );
    check!(e.guest_out.ring().data_size() == (up - 1) * 4096, "ring size");
    Ok(())
}

/// Cases that document device bugs (each violates its cited source, see
/// the `// BUG:` notes): written to the correct behaviour, so they fail
/// until the device is fixed, and kept out of [`catalogue`] so it stays
/// green. Move a case into its section once it passes.
pub fn known_bugs() -> Vec<Case> {
    storvsp::known_bugs()
}

/// Run every case, reporting one line each; returns (passed, failed).
pub fn run_all(mut report: impl FnMut(&str)) -> (usize, usize) {
    let (mut passed, mut failed) = (0, 0);
    for case in catalogue() {
        match std::panic::catch_unwind(case.run) {
            Ok(Ok(())) => {
                passed += 1;
                report(&format!("PASS {} {}", case.id, case.rule));
            }
            Ok(Err(why)) => {
                failed += 1;
                report(&format!(
                    "FAIL {} {} — expected: {}; got: {why}",
                    case.id, case.rule, case.expect
                ));
            }
            Err(_) => {
                failed += 1;
                report(&format!("FAIL {} {} — panicked", case.id, case.rule));
            }
        }
    }
    (passed, failed)
}

fn err(e: impl core::fmt::Debug) -> String {
    format!("{e:?}")
}

/// The bytes of a 5.3 INITIATE_CONTACT on VP 0, SINT 2.
fn contact_5_3() -> Vec<u8> {
    protocol::InitiateContact {
        header: Header::new(protocol::InitiateContact::TYPE),
        version_requested: Version::WIN10_V5_3.0,
        target_vcpu: 0,
        interrupt_page_or_sint: 2,
        monitor_page1: 0,
        monitor_page2: 0,
    }
    .as_bytes()
    .to_vec()
}

fn request_offers() -> Vec<u8> {
    protocol::RequestOffers {
        header: Header::new(protocol::RequestOffers::TYPE),
    }
    .as_bytes()
    .to_vec()
}

fn modify(relid: u32, target_vp: u32) -> Vec<u8> {
    protocol::ModifyChannel {
        header: Header::new(protocol::ModifyChannel::TYPE),
        child_relid: relid,
        target_vp,
    }
    .as_bytes()
    .to_vec()
}

fn drain(s: &mut Server) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| s.next_message().map(|(_, m)| m)).collect()
}

/// Status of the guest's GPADL `handle`, as last reported to the client.
fn created(l: &Loopback, handle: u32) -> Option<u32> {
    l.client_events.iter().rev().find_map(|e| match e {
        ClientEvent::GpadlCreated { handle: h, status } if *h == handle => Some(*status),
        _ => None,
    })
}

/// The client creates a GPADL over exactly `pfns`; its handle and status.
fn gpadl_over(l: &mut Loopback, relid: u32, pfns: &[u64]) -> (u32, Option<u32>) {
    let h = l.client.create_gpadl(relid, pfns);
    l.pump();
    (h, created(l, h))
}

fn target_vp(l: &Loopback, relid: u32) -> Result<u32, String> {
    match &l.server.channels().get(&relid).ok_or("no channel")?.state {
        ChannelState::Open(info) => Ok(info.target_vp),
        other => Err(format!("relid {relid} is {other:?}")),
    }
}

fn reconnect_case() -> Result<(), String> {
    let mut l = Loopback::connected(2);
    let rings = l.open(1, 2, 2)?;
    let (h2, _, st) = l.gpadl(2, 1);
    check!(st == Some(0), "GPADL {st:?}");
    l.events.clear();
    // Linux rebooting into a new kernel: INITIATE_CONTACT again, no UNLOAD.
    l.client.connect();
    l.pump();
    check!(
        l.events == vec![Event::Closed { relid: 1 }, Event::Connected(Version::WIN10_V5_3)],
        "events {:?}",
        l.events
    );
    let connects = l
        .client_events
        .iter()
        .filter(|e| matches!(e, ClientEvent::Connected(_)))
        .count();
    check!(connects == 2, "{connects} VERSION_RESPONSEs accepted");
    check!(
        l.server.version() == Some(Version::WIN10_V5_3),
        "{:?}",
        l.server.version()
    );
    check!(
        l.server.gpadl(rings.handle).is_none() && l.server.gpadl(h2).is_none(),
        "GPADLs survived the reconnect"
    );
    check!(
        l.server.channels()[&1].state == ChannelState::Offered,
        "{:?}",
        l.server.channels()[&1].state
    );
    check!(l.violations.is_empty(), "{:?}", l.violations);
    // The new kernel starts its handles over: the old ring handle is free.
    let pfns = l.pages(4);
    for m in vmbus::gpadl::encode(1, rings.handle, &pfns) {
        l.client.post_raw(1, &m);
    }
    l.pump();
    check!(created(&l, rings.handle) == Some(0), "handle not reusable");
    l.client.open(1, rings.handle, 2, 0);
    l.pump();
    let opens = l
        .client_events
        .iter()
        .filter(|e| matches!(e, ClientEvent::OpenResult { relid: 1, status: 0 }))
        .count();
    check!(opens == 2, "not re-opened: {:?}", l.client_events);
    Ok(())
}

fn lowest_relid_case() -> Result<(), String> {
    let mut l = Loopback::connected(3);
    l.server.rescind(2).map_err(err)?;
    check!(l.server.offer(offer(4)) == Ok(4), "relid 2 reused before release");
    l.pump();
    check!(l.client_events.contains(&ClientEvent::Rescinded(2)), "no rescind");
    check!(l.server.offer(offer(5)) == Ok(2), "relid 2 not reused");
    check!(l.server.offer(offer(6)) == Ok(5), "not the lowest free");
    l.pump();
    let offers = l.client.offers();
    check!(
        offers.keys().copied().collect::<Vec<_>>() == vec![1, 2, 3, 4, 5],
        "{:?}",
        offers.keys()
    );
    let mut conns: Vec<u32> = offers.values().map(|o| o.connection_id).collect();
    conns.sort_unstable();
    conns.dedup();
    check!(conns.len() == 5, "connection ids not unique");
    Ok(())
}

fn pfn_bound_case() -> Result<(), String> {
    let mut l = Loopback::connected(1);
    let (h, st) = gpadl_over(&mut l, 1, &[20, GUEST_PAGES - 1]);
    check!(st == Some(0), "the last page refused: {st:?}");
    check!(l.server.gpadl(h).is_some(), "not kept");
    let (h, st) = gpadl_over(&mut l, 1, &[20, GUEST_PAGES]);
    check!(st == Some(STATUS_FAILURE), "PFN == guest pages: {st:?}");
    check!(l.server.gpadl(h).is_none(), "kept");
    check!(
        l.violations
            == vec![Violation::GpadlRefused(vmbus::gpadl::GpadlError::BadPfn(
                GUEST_PAGES
            ))],
        "{:?}",
        l.violations
    );
    Ok(())
}

fn gpadl_count_quota_case() -> Result<(), String> {
    let mut l = Loopback::connected(1);
    let max = l.server.limits().max_gpadls;
    check!(max == 64, "default max_gpadls {max}");
    let (done, _, st) = l.gpadl(1, 1);
    check!(st == Some(0), "{st:?}");
    let pfns: Vec<u64> = (100..140).collect();
    for i in 0..1000u32 {
        let header = vmbus::gpadl::encode(1, 0x10_0000 + i, &pfns).swap_remove(0);
        l.client.post_raw(1, &header);
    }
    l.pump();
    let refused = l
        .client_events
        .iter()
        .filter(|e| matches!(e, ClientEvent::GpadlCreated { handle, status: STATUS_FAILURE } if *handle >= 0x10_0000))
        .count();
    check!(refused == 1000 - (max - 1), "{refused} refused");
    check!(
        l.violations.len() == refused
            && l.violations
                .iter()
                .all(|v| *v == Violation::QuotaExceeded(Quota::Gpadls)),
        "{:?}",
        &l.violations[..3.min(l.violations.len())]
    );
    let u = l.server.usage();
    check!(u.gpadls == max && u.assemblies == max - 1, "{u:?}");
    l.client.teardown(1, done);
    l.pump();
    let (_, _, st) = l.gpadl(1, 1);
    check!(st == Some(0), "slot not freed: {st:?}");
    Ok(())
}

fn gpadl_pages_quota_case() -> Result<(), String> {
    let limits = Limits {
        max_pages_per_gpadl: 100,
        ..Limits::DEFAULT
    };
    let mut l = Loopback::with_limits(1, None, limits);
    l.client.connect();
    l.pump();
    let (_, _, st) = l.gpadl(1, 100);
    check!(st == Some(0), "100 pages: {st:?}");
    let (h, _, st) = l.gpadl(1, 101);
    check!(st == Some(STATUS_FAILURE), "101 pages: {st:?}");
    check!(l.server.gpadl(h).is_none(), "kept");
    check!(
        l.violations.first() == Some(&Violation::QuotaExceeded(Quota::GpadlPages)),
        "{:?}",
        l.violations
    );
    check!(
        l.violations[1..].iter().all(|v| *v == Violation::BadGpadl(h)) && l.violations.len() > 1,
        "bodies of the refused GPADL: {:?}",
        l.violations
    );
    check!(l.server.usage().assemblies == 0, "an assembly was kept");
    Ok(())
}

fn total_pages_quota_case() -> Result<(), String> {
    let mut l = Loopback::connected(1);
    check!(
        l.server.limits().max_gpadl_pages == GUEST_PAGES,
        "total not capped at the guest's pages: {:?}",
        l.server.limits()
    );
    let (_, st) = gpadl_over(&mut l, 1, &(0..4000).collect::<Vec<u64>>());
    check!(st == Some(0), "4000 pages: {st:?}");
    let (b, st) = gpadl_over(&mut l, 1, &(4000..GUEST_PAGES).collect::<Vec<u64>>());
    check!(st == Some(0), "up to the limit: {st:?}");
    let (_, st) = gpadl_over(&mut l, 1, &[5]);
    check!(st == Some(STATUS_FAILURE), "past the limit: {st:?}");
    check!(
        l.violations == vec![Violation::QuotaExceeded(Quota::TotalGpadlPages)],
        "{:?}",
        l.violations
    );
    l.client.teardown(1, b);
    l.pump();
    let (_, st) = gpadl_over(&mut l, 1, &[5]);
    check!(st == Some(0), "pages not given back: {st:?}");
    Ok(())
}

fn outbox_quota_case() -> Result<(), String> {
    let mut l = Loopback::connected(1);
    let max = l.server.limits().max_outbox;
    check!(max == 128, "default max_outbox {max}");
    // Nobody takes the answers: each REQUESTOFFERS queues an offer and
    // ALLOFFERS_DELIVERED.
    let mut accepted = 0;
    loop {
        match l.server.handle(1, &request_offers()) {
            Ok(_) => accepted += 1,
            Err(v) => {
                check!(v == Violation::QuotaExceeded(Quota::Outbox), "{v:?}");
                break;
            }
        }
        check!(accepted <= max, "the outbox grew past {max}");
    }
    check!(accepted == max / 2, "{accepted} accepted");
    let header = vmbus::gpadl::encode(1, 0x1234, &[20]).swap_remove(0);
    let r = l.server.handle(1, &header);
    check!(r == Err(Violation::QuotaExceeded(Quota::Outbox)), "{r:?}");
    check!(
        l.server.offer(offer(9)) == Err(HostError::OutboxFull),
        "offer accepted"
    );
    let u = l.server.usage();
    check!(
        u.outbox == max && u.gpadls == 0 && u.channels == 1,
        "a refused request changed something: {u:?}"
    );
    check!(drain(&mut l.server).len() == max, "queue length");
    let r = l.server.handle(1, &header);
    check!(r == Ok(Vec::new()), "{r:?}");
    let answer = drain(&mut l.server);
    check!(
        matches!(answer.first().map(|m| Message::parse(m)), Some(Ok(Message::GpadlCreated(c))) if c.status == 0),
        "{answer:?}"
    );
    Ok(())
}

/// The OPENCHANNEL_RESULT statuses the guest got for `relid`, in order.
fn open_results(l: &Loopback, relid: u32) -> Vec<u32> {
    l.client_events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::OpenResult { relid: r, status } if *r == relid => Some(*status),
            _ => None,
        })
        .collect()
}

/// A packet crosses each ring of `rings`.
fn packet_crosses(l: &Loopback, rings: &OpenRings) -> Result<(), String> {
    let mut e = l.ends(rings);
    let _ = e.guest_out.write(&[&inband(b"ping", 7, 0)]).map_err(err)?;
    let mut buf = [0u8; 64];
    let (p, _) = e.host_in.read(&mut buf).map_err(err)?.ok_or("nothing upstream")?;
    check!(&buf[16..20] == b"ping", "upstream payload");
    let _ = e
        .host_out
        .write(&[&inband(b"pong", p.descriptor.transaction_id, 0)])
        .map_err(err)?;
    let (q, _) = e
        .guest_in
        .read(&mut buf)
        .map_err(err)?
        .ok_or("nothing downstream")?;
    check!(
        &buf[16..20] == b"pong" && q.descriptor.transaction_id == 7,
        "downstream"
    );
    Ok(())
}

/// How many more answers the server's outbox takes now: MODIFYCHANNELs for
/// an unknown relid (each answered with a failure, changing nothing) until
/// one is refused; those answers are then dropped. Needs a 5.3 connection
/// and an empty outbox.
fn free_slots(s: &mut Server) -> Result<usize, String> {
    let max = s.limits().max_outbox;
    let mut n = 0;
    loop {
        match s.handle(1, &modify(1999, 1)) {
            Err(Violation::BadRelid(1999)) => n += 1,
            Err(Violation::QuotaExceeded(Quota::Outbox)) => break,
            other => return Err(format!("MODIFYCHANNEL for relid 1999: {other:?}")),
        }
        check!(n <= max, "the outbox grew past {max}");
    }
    let queued = drain(s).len();
    check!(queued == n, "{n} accepted, {queued} answers");
    Ok(n)
}

fn is_opening(l: &Loopback, relid: u32) -> bool {
    matches!(
        l.server.channels().get(&relid).map(|c| &c.state),
        Some(ChannelState::Opening(_))
    )
}

fn open_waits_for_the_device_case() -> Result<(), String> {
    let mut l = Loopback::connected(1);
    l.answer_opens = false;
    let (handle, pfns, st) = l.gpadl(1, 4);
    check!(st == Some(0), "GPADL {st:?}");
    l.client.open(1, handle, 2, 0);
    l.pump();
    check!(
        l.events
            .iter()
            .any(|e| matches!(e, Event::Opened { relid: 1, info, .. } if info.ring_gpadl == handle && info.downstream_page_offset == 2)),
        "no Opened: {:?}",
        l.events
    );
    check!(
        open_results(&l, 1).is_empty(),
        "answered before the device: {:?}",
        open_results(&l, 1)
    );
    check!(is_opening(&l, 1), "{:?}", l.server.channels()[&1].state);
    let u = l.server.usage();
    check!(
        (u.open_channels, u.opening_channels, u.outbox) == (0, 1, 0),
        "{u:?}"
    );
    // The bus keeps answering other requests while the device starts, the
    // ring GPADL stays, and one outbox slot is kept for the answer.
    let (_, _, st) = l.gpadl(1, 1);
    check!(st == Some(0), "GPADL while opening: {st:?}");
    l.client.teardown(1, handle);
    l.pump();
    check!(
        l.violations == vec![Violation::BadGpadl(handle)] && l.server.gpadl(handle).is_some(),
        "ring GPADL torn down while opening: {:?}",
        l.violations
    );
    let max = l.server.limits().max_outbox;
    let free = free_slots(&mut l.server)?;
    check!(free == max - 1, "{free} of {max} outbox slots free while opening");
    check!(open_results(&l, 1).is_empty(), "answered before the device");
    l.server.open_complete(1, true).map_err(err)?;
    l.pump();
    check!(open_results(&l, 1) == vec![0], "{:?}", open_results(&l, 1));
    check!(
        matches!(&l.server.channels()[&1].state, ChannelState::Open(i) if i.open_id == 1),
        "{:?}",
        l.server.channels()[&1].state
    );
    check!(l.server.usage().open_channels == 1, "{:?}", l.server.usage());
    packet_crosses(&l, &OpenRings { handle, pfns, up: 2 })
}

fn veto_case() -> Result<(), String> {
    let mut l = Loopback::connected(1);
    l.veto.push(1);
    let (handle, pfns, st) = l.gpadl(1, 4);
    check!(st == Some(0), "GPADL {st:?}");
    l.client.open(1, handle, 2, 0);
    l.pump();
    check!(
        l.events
            .iter()
            .any(|e| matches!(e, Event::Opened { relid: 1, .. })),
        "the device was not asked: {:?}",
        l.events
    );
    check!(
        open_results(&l, 1) == vec![STATUS_FAILURE],
        "{:?}",
        open_results(&l, 1)
    );
    check!(
        l.server.channels()[&1].state == ChannelState::Offered,
        "{:?}",
        l.server.channels()[&1].state
    );
    let again = l.server.open_complete(1, true);
    check!(
        again == Err(HostError::NotOpening(1)),
        "answered twice: {again:?}"
    );
    l.pump();
    check!(
        open_results(&l, 1) == vec![STATUS_FAILURE],
        "a second answer went out"
    );
    l.veto.clear();
    l.client.open(1, handle, 2, 0);
    l.pump();
    check!(
        open_results(&l, 1) == vec![STATUS_FAILURE, 0],
        "{:?}",
        open_results(&l, 1)
    );
    check!(
        matches!(l.server.channels()[&1].state, ChannelState::Open(_)),
        "{:?}",
        l.server.channels()[&1].state
    );
    packet_crosses(&l, &OpenRings { handle, pfns, up: 2 })
}

/// A connected loopback with relid 1 Opening on a 4-page GPADL: (loopback, GPADL handle).
fn opening() -> Result<(Loopback, u32), String> {
    let mut l = Loopback::connected(1);
    l.answer_opens = false;
    let (handle, _, st) = l.gpadl(1, 4);
    check!(st == Some(0), "GPADL {st:?}");
    l.client.open(1, handle, 2, 0);
    l.pump();
    check!(is_opening(&l, 1), "{:?}", l.server.channels()[&1].state);
    l.events.clear();
    Ok((l, handle))
}

/// Every outbox slot is free again (none stays held for a dropped answer).
fn all_slots_free(l: &mut Loopback, what: &str) -> Result<(), String> {
    let max = l.server.limits().max_outbox;
    let free = free_slots(&mut l.server).map_err(|e| format!("{what}: {e}"))?;
    check!(free == max, "{what}: {free} of {max} outbox slots free");
    Ok(())
}

/// After an open went away: open_complete reports `expect`, no answer ever
/// reaches the guest, the channel is not Opening.
fn nothing_pending(l: &mut Loopback, expect: HostError, what: &str) -> Result<(), String> {
    for accepted in [true, false] {
        let r = l.server.open_complete(1, accepted);
        check!(r == Err(expect), "{what}: open_complete({accepted}) gave {r:?}");
    }
    l.pump();
    check!(
        open_results(l, 1).is_empty(),
        "{what}: OPENCHANNEL_RESULT {:?}",
        open_results(l, 1)
    );
    let u = l.server.usage();
    check!(u.opening_channels == 0 && u.open_channels == 0, "{what}: {u:?}");
    check!(
        !l.server
            .channels()
            .values()
            .any(|c| matches!(c.state, ChannelState::Opening(_))),
        "{what}: still opening"
    );
    Ok(())
}

fn opening_dropped_case() -> Result<(), String> {
    // The guest closes before the device answered.
    let (mut l, handle) = opening()?;
    l.client.close(1);
    l.pump();
    check!(
        l.events == vec![Event::Closed { relid: 1 }],
        "close: {:?}",
        l.events
    );
    check!(
        l.server.channels()[&1].state == ChannelState::Offered,
        "close: {:?}",
        l.server.channels()[&1].state
    );
    nothing_pending(&mut l, HostError::NotOpening(1), "close")?;
    l.client.teardown(1, handle);
    l.pump();
    check!(
        l.client_events.contains(&ClientEvent::GpadlTorndown(handle)),
        "close: the ring GPADL is still held"
    );
    all_slots_free(&mut l, "close")?;
    l.answer_opens = true;
    l.open(1, 2, 2).map_err(|e| format!("close: reopen: {e}"))?;

    // The host rescinds the device before it answered.
    let (mut l, _) = opening()?;
    l.server.rescind(1).map_err(err)?;
    check!(
        l.server.channels()[&1].state == ChannelState::Rescinded,
        "rescind: {:?}",
        l.server.channels()[&1].state
    );
    let r = l.server.open_complete(1, true);
    check!(r == Err(HostError::NotOpening(1)), "rescind: {r:?}");
    l.pump();
    check!(l.client_events.contains(&ClientEvent::Rescinded(1)), "no rescind");
    check!(
        !l.server.channels().contains_key(&1),
        "rescind: relid not released"
    );
    nothing_pending(&mut l, HostError::NoChannel(1), "rescind")?;
    all_slots_free(&mut l, "rescind")?;

    // The guest reconnects (a new kernel) before the device answered.
    let (mut l, _) = opening()?;
    l.client.connect();
    l.pump();
    check!(
        l.events == vec![Event::Closed { relid: 1 }, Event::Connected(Version::WIN10_V5_3)],
        "reconnect: {:?}",
        l.events
    );
    nothing_pending(&mut l, HostError::NotOpening(1), "reconnect")?;
    all_slots_free(&mut l, "reconnect")?;
    l.answer_opens = true;
    l.open(1, 2, 2).map_err(|e| format!("reconnect: reopen: {e}"))?;

    // The guest unloads before the device answered.
    let (mut l, _) = opening()?;
    l.client.unload();
    l.pump();
    check!(
        l.events == vec![Event::Closed { relid: 1 }, Event::Unloaded],
        "unload: {:?}",
        l.events
    );
    nothing_pending(&mut l, HostError::NotOpening(1), "unload")?;
    l.client.connect();
    l.pump();
    all_slots_free(&mut l, "unload")?;

    // The child partition restarts before the device answered.
    let (mut l, _) = opening()?;
    let started = l.server.reset();
    check!(started == vec![1], "reset returned {started:?}");
    check!(l.server.next_message().is_none(), "reset: something queued");
    nothing_pending(&mut l, HostError::NotOpening(1), "reset")?;
    l.client = Client::new(None, 0);
    l.client.connect();
    l.answer_opens = true;
    l.pump();
    all_slots_free(&mut l, "reset")?;
    l.open(1, 2, 2).map_err(|e| format!("reset: reopen: {e}"))?;
    Ok(())
}

fn largest_packet_case() -> Result<(), String> {
    let mut l = Loopback::connected(1);
    let rings = l.open(1, 2, 2)?;
    let mut e = l.ends(&rings);
    let max = e.guest_out.max_packet() as usize;
    check!(max == 4096 - 16, "max_packet {max}");
    let p = inband(&vec![7u8; max - 16], 1, 0);
    let _ = e.guest_out.write(&[&p]).map_err(err)?;
    let mut buf = vec![0u8; 4096];
    let (pkt, _) = e.host_in.read(&mut buf).map_err(err)?.ok_or("empty")?;
    check!(buf[..pkt.len] == p[..], "largest packet damaged");
    let p = inband(&vec![7u8; max - 15], 2, 0);
    let r = e.guest_out.write(&[&p]);
    check!(matches!(r, Err(RingError::TooLarge { .. })), "{r:?}");
    Ok(())
}

fn reset_case() -> Result<(), String> {
    let mut l = Loopback::connected(3);
    l.open(1, 2, 2)?;
    l.open(3, 2, 2)?;
    let (_, _, st) = l.gpadl(2, 2);
    check!(st == Some(0), "{st:?}");
    let header = vmbus::gpadl::encode(2, 0x5555, &l.pages(40)).swap_remove(0);
    l.client.post_raw(1, &header);
    l.pump();
    // Rescinded, the RESCIND still queued: the guest never answers.
    l.server.rescind(2).map_err(err)?;
    let open = l.server.reset();
    check!(open == vec![1, 3], "open relids {open:?}");
    check!(l.server.version().is_none(), "still connected");
    let u = l.server.usage();
    check!(
        (u.gpadls, u.assemblies, u.gpadl_pages, u.outbox, u.open_channels) == (0, 0, 0, 0, 0),
        "{u:?}"
    );
    check!(l.server.next_message().is_none(), "outbox not empty");
    check!(
        l.server.channels().keys().copied().collect::<Vec<_>>() == vec![1, 3],
        "channels {:?}",
        l.server.channels().keys()
    );
    for (relid, n) in [(1u32, 1u8), (3, 3)] {
        let ch = &l.server.channels()[&relid];
        check!(
            ch.state == ChannelState::Offered && ch.offer == offer(n),
            "relid {relid}: {:?}",
            ch.state
        );
    }
    check!(
        l.server.handle(1, &request_offers()) == Err(Violation::NotConnected(3)),
        "answered before a new contact"
    );
    // The restarted guest starts from nothing.
    l.client = Client::new(None, 0);
    l.client_events.clear();
    l.client.connect();
    l.pump();
    check!(
        l.client.offers().keys().copied().collect::<Vec<_>>() == vec![1, 3],
        "offers {:?}",
        l.client.offers().keys()
    );
    l.open(1, 2, 2)?;
    Ok(())
}

fn modify_errors_case() -> Result<(), String> {
    let mut l = Loopback::connected(2);
    l.open(1, 2, 2)?;
    for (relid, vp, why) in [
        (99, 1, Violation::BadRelid(99)),
        (2, 1, Violation::BadRelid(2)),
        (1, u32::MAX, Violation::BadTargetVp(u32::MAX)),
    ] {
        l.violations.clear();
        l.client_events.clear();
        l.client.post_raw(1, &modify(relid, vp));
        l.pump();
        check!(
            l.client_events
                == vec![ClientEvent::Modified {
                    relid,
                    status: STATUS_UNSUCCESSFUL
                }],
            "{relid}/{vp:#x}: {:?}",
            l.client_events
        );
        check!(STATUS_UNSUCCESSFUL as u32 == 0xC000_0001, "status value");
        check!(l.violations == vec![why], "{:?}", l.violations);
    }
    check!(target_vp(&l, 1)? == 0, "a refused MODIFYCHANNEL retargeted");
    Ok(())
}

fn modify_versions_case() -> Result<(), String> {
    let mut l = Loopback::new(1, Some(&[Version::WIN10]));
    l.client.connect();
    l.pump();
    l.open(1, 2, 2)?;
    l.client.post_raw(1, &modify(1, 3));
    l.pump();
    check!(
        l.violations
            == vec![Violation::Unsupported {
                msgtype: 22,
                version: Version::WIN10
            }],
        "4.0: {:?}",
        l.violations
    );
    check!(
        !l.client_events
            .iter()
            .any(|e| matches!(e, ClientEvent::Modified { .. })),
        "4.0 answered"
    );
    check!(target_vp(&l, 1)? == 0, "4.0 retargeted");
    let mut l = Loopback::new(1, Some(&[Version::WIN10_V4_1]));
    l.client.connect();
    l.pump();
    l.open(1, 2, 2)?;
    l.client.post_raw(1, &modify(99, 3));
    l.client.post_raw(1, &modify(1, 3));
    l.pump();
    check!(
        l.violations == vec![Violation::BadRelid(99)],
        "4.1: {:?}",
        l.violations
    );
    check!(
        !l.client_events
            .iter()
            .any(|e| matches!(e, ClientEvent::Modified { .. })),
        "4.1 answered"
    );
    check!(target_vp(&l, 1)? == 3, "4.1 did not retarget");
    Ok(())
}

/// What a refused message must not change.
type Snapshot = (
    Option<Version>,
    Vec<(u32, ChannelState)>,
    Vec<vmbus::gpadl::Gpadl>,
);

fn snapshot(s: &Server) -> Snapshot {
    (
        s.version(),
        s.channels().iter().map(|(r, c)| (*r, c.state.clone())).collect(),
        s.gpadls().values().cloned().collect(),
    )
}

/// Feed one hostile message; a refusal must change nothing the guest built,
/// and the server must stay within its limits.
fn feed_checked(s: &mut Server, conn: u32, m: &[u8], what: &str) -> Result<(), String> {
    let before = snapshot(s);
    let r = s.handle(conn, m);
    drain(s);
    if let Err(v) = r {
        check!(
            snapshot(s) == before,
            "{what}: refused ({v:?}) but the state changed"
        );
    }
    let u = s.usage();
    check!(
        u.gpadls <= u.limits.max_gpadls
            && u.gpadl_pages <= u.limits.max_gpadl_pages
            && u.outbox + u.opening_channels <= u.limits.max_outbox,
        "{what}: past the limits: {u:?}"
    );
    Ok(())
}

/// Connected (again, if the message disconnected it) and answering
/// REQUESTOFFERS with every offer and ALLOFFERS_DELIVERED.
fn answers_requests(s: &mut Server, what: &str) -> Result<(), String> {
    if s.version().is_none() {
        s.handle(4, &contact_5_3())
            .map_err(|e| format!("{what}: {e:?}"))?;
        drain(s);
        check!(s.version().is_some(), "{what}: cannot reconnect");
    }
    let offered = s
        .channels()
        .values()
        .filter(|c| c.state != ChannelState::Rescinded)
        .count();
    s.handle(1, &request_offers())
        .map_err(|e| format!("{what}: {e:?}"))?;
    let answers = drain(s);
    check!(
        answers.len() == offered + 1
            && matches!(
                answers.last().map(|m| Message::parse(m)),
                Some(Ok(Message::AllOffersDelivered))
            ),
        "{what}: REQUESTOFFERS answered with {} messages",
        answers.len()
    );
    Ok(())
}

fn corpus() -> Result<Vec<(String, Vec<u8>)>, String> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../vmbus/fuzz/corpus/fuzz_channel_message");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let path = entry.map_err(err)?.path();
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        files.push((
            path.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            bytes,
        ));
    }
    files.sort();
    check!(files.len() >= 10, "corpus too small: {} files", files.len());
    Ok(files)
}

fn malformed_replay() -> Result<(), String> {
    for (name, bytes) in corpus()? {
        let mut l = Loopback::connected(2);
        let rings = l.open(1, 2, 2)?;
        let (_, _, st) = l.gpadl(2, 3);
        check!(st == Some(0), "{st:?}");
        for conn in [1, 4] {
            feed_checked(&mut l.server, conn, &bytes, &name)?;
        }
        answers_requests(&mut l.server, &name)?;
        let pfns = l.pages(2);
        let mut status = None;
        for m in vmbus::gpadl::encode(2, 0x7000_0000, &pfns) {
            l.server.handle(1, &m).map_err(|e| format!("{name}: {e:?}"))?;
            status = drain(&mut l.server).iter().find_map(|m| match Message::parse(m) {
                Ok(Message::GpadlCreated(c)) => Some(c.status),
                _ => None,
            });
        }
        check!(status == Some(0), "{name}: a new GPADL got {status:?}");
        if matches!(l.server.channels()[&1].state, ChannelState::Open(_)) {
            let mut e = l.ends(&rings);
            let _ = e
                .guest_out
                .write(&[&inband(b"still fine", 1, 0)])
                .map_err(|x| format!("{name}: {x:?}"))?;
            let mut buf = [0u8; 64];
            check!(
                e.host_in.read(&mut buf).map_err(err)?.is_some(),
                "{name}: ring broken"
            );
        }
    }
    let mut l = Loopback::connected(2);
    l.open(1, 2, 2)?;
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for n in 0..10_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = (x % 250) as usize;
        let mut m: Vec<u8> = (0..len).map(|i| (x >> (i % 8 * 8)) as u8 ^ i as u8).collect();
        if len >= 4 {
            // Mostly valid types, so the handlers get exercised.
            m[0] = (x % 26) as u8;
            m[1..4].fill(0);
        }
        feed_checked(&mut l.server, (x % 5) as u32, &m, &format!("random message {n}"))?;
        if n % 1000 == 999 {
            answers_requests(&mut l.server, &format!("after random message {n}"))?;
        }
    }
    answers_requests(&mut l.server, "after the random messages")
}
