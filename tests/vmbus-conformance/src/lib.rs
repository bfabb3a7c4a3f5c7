//! The VMBus conformance catalogue (docs/vmbus-conformance.md). Every case has
//! an id, the rule it checks (with its source) and the expected result, and
//! runs in-process: the `vmbus` server against the `vmbus` client over a
//! loopback transport, with rings in a simulated guest memory. The same
//! catalogue will run in QEMU between a real child and the root once the
//! SynIC transport exists.

#![forbid(unsafe_code)]

use vmbus::client::{Client, ClientEvent};
use vmbus::memory::{AtomicMemory, PagedMemory, SharedMemory};
use vmbus::packet::{Descriptor, FLAG_COMPLETION_REQUESTED, PacketType};
use vmbus::protocol::{self, Header, Message};
use vmbus::ring::{self, Reader, Ring, RingError, Signal, Writer};
use vmbus::server::{ChannelState, Event, OfferSpec, STATUS_FAILURE, Server, Violation};
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
    next_page: u64,
}

fn offer(n: u8) -> OfferSpec {
    OfferSpec {
        interface_type: [n; 16],
        interface_instance: [n ^ 0x5A; 16],
        channel_flags: 0,
        user_defined: [0; 120],
    }
}

impl Loopback {
    /// A pair with `offers` devices, not yet connected.
    pub fn new(offers: u8, versions: Option<&[Version]>) -> Self {
        let mut server = Server::new(GUEST_PAGES - 1);
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

    /// Deliver messages both ways until quiet.
    pub fn pump(&mut self) {
        loop {
            let mut moved = false;
            while let Some((conn, m)) = self.client.next_message() {
                moved = true;
                match self.server.handle(conn, &m) {
                    Ok(ev) => self.events.extend(ev),
                    Err(v) => self.violations.push(v),
                }
            }
            while let Some((_vp, m)) = self.server.next_message() {
                moved = true;
                match self.client.handle(&m) {
                    Ok(ev) => self.client_events.extend(ev),
                    Err(e) => panic!("the server sent something the client cannot use: {e:?}"),
                }
            }
            if !moved {
                return;
            }
        }
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
        let upstream =
            PagedMemory::new(&self.memory, rings.pfns[..rings.up as usize].to_vec()).expect("in memory");
        let downstream =
            PagedMemory::new(&self.memory, rings.pfns[rings.up as usize..].to_vec()).expect("in memory");
        let up2 =
            PagedMemory::new(&self.memory, rings.pfns[..rings.up as usize].to_vec()).expect("in memory");
        let down2 =
            PagedMemory::new(&self.memory, rings.pfns[rings.up as usize..].to_vec()).expect("in memory");
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
            host_out: Writer::new(Ring::new(downstream).expect("ring")),
            guest_in: Reader::new(Ring::new(down2).expect("ring")),
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
                " is accepted; INITIATE_CONTACT on id 4 from 5.0, 1 below (vmbus-wire.md §1.2)"
            ),
            expect: "VERSION_RESPONSE supported=1, offers then ALLOFFERS_DELIVERED",
            run: || negotiate($v),
        }
    };
}

/// The catalogue.
pub fn catalogue() -> Vec<Case> {
    vec![
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
            rule: "INITIATE_CONTACT is served on connection ids 1 and 4 only (vmbus-wire.md pitfall 1)",
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
            rule: "a second INITIATE_CONTACT while connected is refused until UNLOAD (channel_mgmt.c)",
            expect: "refused; the first connection is unchanged",
            run: || {
                let mut l = Loopback::connected(1);
                l.client.connect();
                l.pump();
                check!(
                    l.server.version() == Some(Version::WIN10_V5_3),
                    "{:?}",
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
                let relid = l.server.offer(offer(9)).ok_or("no relid")?;
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
            id: "TXN-01",
            rule: "completions echo all 64 bits of the transaction id (§4.1; storvsc uses U64_MAX-2)",
            expect: "request with COMPLETION_REQUESTED answered by a COMP with the same id",
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
                let comp = Descriptor::new(PacketType::COMPLETION, 16, 8, 0, req.descriptor.transaction_id);
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
                check!(
                    l.server.offer(offer(7)) == Some(3),
                    "relid 1 reused before release"
                );
                l.pump();
                check!(l.client_events.contains(&ClientEvent::Rescinded(1)), "no rescind");
                check!(l.events.contains(&Event::Closed { relid: 1 }), "not closed");
                check!(!l.server.channels().contains_key(&1), "relid not released");
                check!(l.server.offer(offer(8)) == Some(1), "relid 1 not reusable");
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
            rule: "every possible byte string is handled without panicking (parser fuzz corpus replay)",
            expect: "10 000 pseudo-random messages: only violations, server still answers REQUESTOFFERS",
            run: || {
                let mut l = Loopback::connected(1);
                let mut x = 0x2545_F491_4F6C_DD1Du64;
                for _ in 0..10_000 {
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
                    let _ = l.server.handle((x % 5) as u32, &m);
                    while l.server.next_message().is_some() {}
                }
                let req = protocol::RequestOffers {
                    header: Header::new(protocol::RequestOffers::TYPE),
                };
                if l.server.version().is_some() {
                    let _ = l.server.handle(1, req.as_bytes());
                    check!(l.server.next_message().is_some(), "server stopped answering");
                }
                Ok(())
            },
        },
    ]
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
    let opened = l.events.iter().any(
        |e| matches!(e, Event::Opened { relid: 1, info, .. } if info.downstream_page_offset == up as u32),
    );
    check!(opened, "{:?}", l.events);
    let mut e = l.ends(&rings);
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
