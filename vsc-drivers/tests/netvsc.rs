//! `vsc_drivers::netvsc` against the real `netvsp` over real rings: the
//! receive and send buffers are GPADLs over a separate guest RAM (the
//! host looks them up by handle, the client reads and writes them through
//! `vmbus::memory::PagedMemory`), frames leave through the device's
//! network side and come in through it.

mod common;

use common::{Rings, leak};
use netvsp::{Netvsp, NetvspConfig};
use nvsp_protocol::rndis as wire;
use nvsp_protocol::transfer_page::{self, TransferPageRange};
use nvsp_protocol::{CHANNEL_TYPE_DATA, IntoBytes, LINUX_RECEIVE_BUFFER_ID, Message, Status, Version};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use vmbus::memory::{AtomicMemory, PagedMemory, SharedMemory};
use vmbus::packet::{Descriptor, PacketType};
use vsc_drivers::Culprit;
use vsc_drivers::netvsc::{Buffers, Event, Netvsc, NetvscConfig, NetvscError};
use vsp::{Device, GpadlMap};

const MAC: [u8; 6] = [0x00, 0x15, 0x5d, 0x0a, 0x0b, 0x0c];
/// Guest RAM (pages): receive buffer (2 MiB, pages in pairs swapped),
/// then the send buffer (1 MiB).
const RECV_PAGES: u64 = 512;
const SEND_BASE: u64 = 512;
const SEND_PAGES: u64 = 256;
const RAM_PAGES: u64 = 768;
const RECV_GPADL: u32 = 0xE1E10;
const SEND_GPADL: u32 = 0xE1E11;
const RECV_LEN: u32 = (RECV_PAGES * 4096) as u32;

type Dev = Netvsp<&'static AtomicMemory>;

/// The GPADLs the guest created (what the bus would have told the host).
#[derive(Clone, Default)]
struct Gpadls(Rc<RefCell<HashMap<u32, Vec<u64>>>>);

impl GpadlMap for Gpadls {
    fn pages(&self, handle: u32) -> Option<Vec<u64>> {
        self.0.borrow().get(&handle).cloned()
    }
}

struct Rig {
    rings: Rings,
    dev: Dev,
    client: Netvsc,
    recv: PagedMemory<'static, AtomicMemory>,
    send: PagedMemory<'static, AtomicMemory>,
}

impl Rig {
    fn with(config: NetvspConfig) -> Self {
        let (rings, channel) = Rings::new(64 * 1024);
        let ram = leak(RAM_PAGES * 4096);
        let recv_pages: Vec<u64> = (0..RECV_PAGES).map(|i| i ^ 1).collect();
        let send_pages: Vec<u64> = (0..SEND_PAGES).map(|i| SEND_BASE + i).collect();
        let gpadls = Gpadls::default();
        gpadls.0.borrow_mut().insert(RECV_GPADL, recv_pages.clone());
        gpadls.0.borrow_mut().insert(SEND_GPADL, send_pages.clone());
        let mut dev = Dev::new(config).unwrap();
        dev.open(channel.with_guest_ram(ram).with_gpadls(Box::new(gpadls)))
            .unwrap();
        let send_len = (SEND_PAGES * 4096) as u32;
        Self {
            rings,
            dev,
            client: Netvsc::new(NetvscConfig::new(RECV_GPADL, RECV_LEN, SEND_GPADL, send_len)),
            recv: PagedMemory::new(ram, recv_pages).unwrap(),
            send: PagedMemory::new(ram, send_pages).unwrap(),
        }
    }

    /// Brought up against a default netvsp.
    fn ready() -> Self {
        let mut rig = Self::with(NetvspConfig::new(MAC));
        rig.client.start().unwrap();
        let events = rig.pump();
        assert!(matches!(events.as_slice(), [Event::Ready { .. }]), "{events:?}");
        rig
    }

    /// The client sends `frame` (through the send buffer).
    fn send(&mut self, frame: &[u8]) -> Result<(), NetvscError> {
        let buffers = Buffers {
            receive: &self.recv,
            send: &self.send,
        };
        self.client.send_frame(frame, &buffers)
    }

    /// Give the client one packet as if the host had written it.
    fn inject(&mut self, packet: &[u8]) -> Result<(), NetvscError> {
        let buffers = Buffers {
            receive: &self.recv,
            send: &self.send,
        };
        self.client.handle(packet, &buffers)
    }

    /// Move packets both ways until neither side has anything to say.
    fn pump(&mut self) -> Vec<Event> {
        loop {
            let mut progress = false;
            while let Some(p) = self.client.poll_transmit() {
                assert!(self.rings.write(&p), "guest-to-host ring full");
                progress = true;
            }
            let r = self.dev.poll(vsp::POLL_BUDGET);
            assert!(r.broke.is_none(), "{r:?}");
            while let Some(p) = self.rings.read() {
                let buffers = Buffers {
                    receive: &self.recv,
                    send: &self.send,
                };
                self.client
                    .handle(&p, &buffers)
                    .expect("the real netvsp follows the protocol");
                progress = true;
            }
            if !progress {
                break;
            }
        }
        core::iter::from_fn(|| self.client.poll_event()).collect()
    }
}

fn frame(dest: [u8; 6], len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&dest);
    f[6..12].copy_from_slice(&[0x00, 0x15, 0x5d, 9, 9, 9]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    for (i, b) in f[14..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_add(seed);
    }
    f
}

#[test]
fn bring_up_negotiates_6_1_and_learns_the_mac() {
    let mut rig = Rig::with(NetvspConfig::new(MAC));
    let e = rig.send(&frame(MAC, 60, 0)).unwrap_err();
    assert_eq!((e, e.culprit()), (NetvscError::NotReady, Culprit::Caller));
    rig.client.start().unwrap();
    let events = rig.pump();
    assert_eq!(
        events,
        [Event::Ready {
            version: Version::V61,
            mac: MAC,
            mtu: 1500,
            link_up: true
        }]
    );
    assert_eq!(rig.client.mac(), Some(rig.dev.network().unwrap().mac()));
    assert_eq!(rig.dev.version(), Some(Version::V61));
    assert_eq!(rig.dev.rndis().state(), rndis::State::DataInitialized);
    assert_eq!(rig.dev.rndis().packet_filter(), wire::packet_filter::LINUX_OPEN);
    assert_eq!(rig.dev.stats().guest_errors, 0, "{:?}", rig.dev.last_error());
    // Every receive section was completed back, every send section freed.
    assert_eq!(rig.dev.receive_sections().unwrap().0, 0);
    assert_eq!(
        rig.client.free_send_sections(),
        (SEND_PAGES * 4096 / 6144) as usize
    );
}

#[test]
fn older_hosts_are_negotiated_down() {
    let mut config = NetvspConfig::new(MAC);
    config.max_version = Version::V5;
    let mut rig = Rig::with(config);
    rig.client.start().unwrap();
    let events = rig.pump();
    assert!(matches!(
        events.as_slice(),
        [Event::Ready {
            version: Version::V5,
            ..
        }]
    ));
    assert_eq!(rig.dev.version(), Some(Version::V5));
    // 28-byte messages from the host before 6.1: frames still flow.
    let f = frame(MAC, 100, 3);
    assert!(rig.dev.network().unwrap().deliver_rx(&f));
    assert_eq!(rig.pump(), [Event::Frame(f)]);
}

#[test]
fn a_sent_frame_comes_out_of_the_network_side() {
    let mut rig = Rig::ready();
    let frames: Vec<Vec<u8>> = (0..20).map(|i| frame([0xff; 6], 60 + i * 70, i as u8)).collect();
    for f in &frames {
        rig.send(f).unwrap();
    }
    let free = rig.client.free_send_sections();
    assert!(rig.pump().is_empty());
    assert_eq!(rig.client.free_send_sections(), free + 20);
    let port = rig.dev.network().unwrap();
    for f in &frames {
        assert_eq!(port.take_tx().as_ref(), Some(f));
    }
    assert_eq!(port.take_tx(), None);
    assert_eq!(rig.client.stats().tx_frames, 20);
    // Too long, too short: the caller's fault, nothing sent.
    for len in [13, 1515] {
        let e = rig.send(&frame(MAC, len.max(14), 0)[..len]);
        assert_eq!(e.unwrap_err().culprit(), Culprit::Caller);
    }
    // A tagged frame may be 4 bytes longer.
    let mut tagged = frame([0xff; 6], 1518, 1);
    tagged[12..14].copy_from_slice(&[0x81, 0x00]);
    rig.send(&tagged).unwrap();
    rig.pump();
    assert!(rig.dev.network().unwrap().take_tx().is_some());
}

#[test]
fn a_delivered_frame_is_received_byte_for_byte() {
    let mut rig = Rig::ready();
    let frames = [
        frame(MAC, 1514, 1),
        frame([0xff; 6], 60, 2),
        frame([0x01, 0x00, 0x5e, 0, 0, 1], 342, 3),
    ];
    for f in &frames {
        assert!(rig.dev.network().unwrap().deliver_rx(f));
    }
    let events = rig.pump();
    let got: Vec<Vec<u8>> = events
        .into_iter()
        .map(|e| match e {
            Event::Frame(f) => f,
            e => panic!("{e:?}"),
        })
        .collect();
    assert_eq!(got, frames);
    assert_eq!(
        rig.dev.receive_sections().unwrap().0,
        0,
        "every receive completed"
    );
    assert_eq!(rig.client.stats().rx_frames, 3);
    // Another host's unicast is filtered by the device.
    assert!(
        !rig.dev
            .network()
            .unwrap()
            .deliver_rx(&frame([2, 0, 0, 0, 0, 1], 60, 0))
    );
    // Link changes arrive as status indications.
    rig.dev.set_link_up(false);
    assert_eq!(rig.pump(), [Event::Link(false)]);
    assert!(!rig.client.link_up());
}

fn completion(id: u64, msg: &[u8]) -> Vec<u8> {
    let mut p = Descriptor::new(PacketType::COMPLETION, 16, msg.len(), 0, id)
        .as_bytes()
        .to_vec();
    p.extend_from_slice(msg);
    p.resize(p.len().next_multiple_of(8), 0);
    p
}

fn xfer(id: u64, pageset: u16, offset: u32, len: u32) -> Vec<u8> {
    let nvsp = nvsp_protocol::send_rndis_packet(CHANNEL_TYPE_DATA);
    transfer_page::build(id, pageset, &[TransferPageRange::new(offset, len)], &nvsp).unwrap()
}

/// The 8-byte receive completion the client queued for `id`, and its status.
fn receive_completion(client: &mut Netvsc, id: u64) -> u32 {
    let p = client.poll_transmit().expect("a completion");
    let d = Descriptor::new(PacketType::COMPLETION, 16, 8, 0, id);
    assert_eq!(&p[..16], d.as_bytes());
    let Ok(Message::SendRndisPacketComplete(c)) = Message::parse(&p[16..]) else {
        panic!("{p:?}")
    };
    c.status.get()
}

#[test]
fn hostile_host_packets_are_errors_not_panics() {
    let mut rig = Rig::ready();
    let host = |e: Result<(), NetvscError>| {
        let e = e.unwrap_err();
        assert_eq!(e.culprit(), Culprit::Host, "{e:?}");
        e
    };
    // A completion for nothing in flight.
    let m = nvsp_protocol::send_rndis_packet_complete(Status::SUCCESS);
    assert_eq!(
        host(rig.inject(&completion(0xdead, &m))),
        NetvscError::UnknownTransaction(0xdead)
    );
    assert!(rig.client.poll_transmit().is_none());

    // A range past the receive buffer, one longer than a section, another
    // page set: refused, and completed with FAIL so the host gets it back.
    let e = host(rig.inject(&xfer(70, LINUX_RECEIVE_BUFFER_ID, RECV_LEN - 10, 100)));
    assert!(matches!(e, NetvscError::RangeOutOfBounds { .. }), "{e:?}");
    assert_eq!(receive_completion(&mut rig.client, 70), Status::FAIL.0);
    let e = host(rig.inject(&xfer(71, LINUX_RECEIVE_BUFFER_ID, 0, 60_000)));
    assert!(matches!(e, NetvscError::RangeTooLong { .. }), "{e:?}");
    assert_eq!(receive_completion(&mut rig.client, 71), Status::FAIL.0);
    let e = host(rig.inject(&xfer(72, 0xBEEF, 0, 100)));
    assert_eq!(e, NetvscError::PagesetId(0xBEEF));
    assert_eq!(receive_completion(&mut rig.client, 72), Status::FAIL.0);

    // An RNDIS PACKET whose frame runs past its message.
    let mut msg = wire::packet_message(&frame(MAC, 60, 0), &[]);
    msg[12..16].copy_from_slice(&4000u32.to_le_bytes()); // data_length
    rig.recv.write_at(4096 * 3, &msg).unwrap();
    let e = host(rig.inject(&xfer(73, LINUX_RECEIVE_BUFFER_ID, 4096 * 3, msg.len() as u32)));
    assert!(matches!(e, NetvscError::Rndis(_)), "{e:?}");
    assert_eq!(receive_completion(&mut rig.client, 73), Status::FAIL.0);
    // A message_length past the range.
    let mut msg = wire::packet_message(&frame(MAC, 60, 0), &[]);
    msg[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    rig.recv.write_at(4096 * 3, &msg).unwrap();
    host(rig.inject(&xfer(74, LINUX_RECEIVE_BUFFER_ID, 4096 * 3, msg.len() as u32)));
    assert_eq!(receive_completion(&mut rig.client, 74), Status::FAIL.0);
    // A good one still works, and the real device is unaffected.
    let good = wire::packet_message(&frame(MAC, 60, 9), &[]);
    rig.recv.write_at(4096 * 3, &good).unwrap();
    rig.inject(&xfer(75, LINUX_RECEIVE_BUFFER_ID, 4096 * 3, good.len() as u32))
        .unwrap();
    assert_eq!(receive_completion(&mut rig.client, 75), Status::SUCCESS.0);
    assert_eq!(rig.client.poll_event(), Some(Event::Frame(frame(MAC, 60, 9))));

    // An unsolicited RNDIS response, and every prefix of a packet.
    let resp = wire::build_message(
        wire::MessageType::SET_COMPLETE,
        &wire::RequestComplete {
            request_id: 99.into(),
            status: 0.into(),
        },
        &[],
    );
    rig.recv.write_at(0, &resp).unwrap();
    let p = xfer(76, LINUX_RECEIVE_BUFFER_ID, 0, resp.len() as u32);
    assert!(matches!(host(rig.inject(&p)), NetvscError::UnexpectedRndis(_)));
    for n in 0..p.len() {
        let _ = rig.inject(&p[..n]);
    }
    let mut bad = p.clone();
    bad[20..24].copy_from_slice(&u32::MAX.to_le_bytes()); // range count
    assert!(matches!(host(rig.inject(&bad)), NetvscError::TransferPage(_)));
    while rig.client.poll_transmit().is_some() {}
    assert!(rig.client.stats().host_errors >= 9);

    // The NIC still works end to end.
    let f = frame(MAC, 200, 4);
    assert!(rig.dev.network().unwrap().deliver_rx(&f));
    assert_eq!(rig.pump(), [Event::Frame(f.clone())]);
    rig.send(&f).unwrap();
    rig.pump();
    assert_eq!(rig.dev.network().unwrap().take_tx(), Some(f));
}
