//! The device over real rings (`AtomicMemory`) against a fake Linux
//! netvsc: the NVSP and RNDIS sequence Linux 6.1 `netvsc.c` /
//! `rndis_filter.c` sends, buffers handed by GPADL, control messages in
//! GPA-direct page buffers, data in send-buffer sections, and hostile input.

use super::*;
use nvsp_protocol::rndis::{self as wire, Oid};
use nvsp_protocol::{FromBytes, IntoBytes};
use proptest::prelude::*;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use vmbus::memory::AtomicMemory;
use vmbus::packet::Descriptor;
use vmbus::ring::{CONTROL_SIZE, FEAT_PENDING_SEND_SZ, Reader, Ring, RingError, Writer};
use vsp::GuestSignal;

const MAC: [u8; 6] = [0x00, 0x15, 0x5d, 0x01, 0x02, 0x03];
/// Guest RAM layout (pages): receive buffer (2 MiB), send buffer (1 MiB),
/// then control-message pages.
const RECV_BASE: u64 = 0;
const RECV_PAGES: u64 = 512;
const SEND_BASE: u64 = 512;
const SEND_PAGES: u64 = 256;
const CTRL_PAGE: u64 = 768;
const RAM_PAGES: u64 = 776;
const RECV_GPADL: u32 = 0x100;
const SEND_GPADL: u32 = 0x101;

type Dev = Netvsp<&'static AtomicMemory>;

struct Counter(Rc<Cell<u32>>);

impl GuestSignal for Counter {
    fn signal(&mut self) -> bool {
        self.0.set(self.0.get() + 1);
        true
    }
}

/// The guest's GPADL table.
#[derive(Clone, Default)]
struct Gpadls(Rc<RefCell<HashMap<u32, Vec<u64>>>>);

impl GpadlMap for Gpadls {
    fn pages(&self, handle: u32) -> Option<Vec<u64>> {
        self.0.borrow().get(&handle).cloned()
    }
}

fn leak(bytes: u64) -> &'static AtomicMemory {
    Box::leak(Box::new(AtomicMemory::new(bytes)))
}

/// A packet from the host, whole (descriptor first).
#[derive(Debug, Clone)]
struct Received {
    kind: PacketType,
    id: u64,
    bytes: Vec<u8>,
    payload: Vec<u8>,
}

impl Received {
    fn nvsp(&self) -> Message {
        Message::parse(&self.payload).expect("NVSP")
    }
}

struct Guest {
    up: &'static AtomicMemory,
    down: &'static AtomicMemory,
    ram: &'static AtomicMemory,
    gpadls: Gpadls,
    next_id: u64,
    rndis_id: u32,
    /// Receive-buffer page list as the guest registered it.
    recv_pages: Vec<u64>,
}

impl Guest {
    fn new() -> (Self, Channel<&'static AtomicMemory>) {
        let up = leak(CONTROL_SIZE + 64 * 1024);
        let down = leak(CONTROL_SIZE + 64 * 1024);
        Ring::new(up).unwrap().reset(FEAT_PENDING_SEND_SZ).unwrap();
        Ring::new(down).unwrap().reset(FEAT_PENDING_SEND_SZ).unwrap();
        let ram = leak(RAM_PAGES * 4096);
        let gpadls = Gpadls::default();
        // The receive buffer's pages out of order (pairs swapped), as a
        // vmalloc'd buffer's may be.
        let recv_pages: Vec<u64> = (0..RECV_PAGES).map(|i| RECV_BASE + (i ^ 1)).collect();
        gpadls.0.borrow_mut().insert(RECV_GPADL, recv_pages.clone());
        gpadls
            .0
            .borrow_mut()
            .insert(SEND_GPADL, (0..SEND_PAGES).map(|i| SEND_BASE + i).collect());
        let channel = Channel::new(up, down, Box::new(Counter(Rc::new(Cell::new(0)))))
            .unwrap()
            .with_guest_ram(ram)
            .with_gpadls(Box::new(gpadls.clone()));
        (
            Self {
                up,
                down,
                ram,
                gpadls,
                next_id: 1,
                rndis_id: 1,
                recv_pages,
            },
            channel,
        )
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn write(&self, d: &Descriptor, rest: &[u8]) -> bool {
        match Writer::new(Ring::new(self.up).unwrap()).write(&[d.as_bytes(), rest]) {
            Ok(_) => true,
            Err(RingError::Full { .. }) => false,
            Err(e) => panic!("{e:?}"),
        }
    }

    fn send_inband(&self, id: u64, msg: &[u8], completion: bool) -> bool {
        let flags = if completion { FLAG_COMPLETION_REQUESTED } else { 0 };
        self.write(
            &Descriptor::new(PacketType::DATA_INBAND, 16, msg.len(), flags, id),
            msg,
        )
    }

    /// `vmbus_sendpacket_pagebuffer`: `{reserved, count}`, then
    /// `{len, offset, pfn}` per page buffer, then the NVSP message.
    fn send_pagebuffer(&self, id: u64, pbs: &[(u32, u32, u64)], msg: &[u8]) -> bool {
        let mut after = Vec::new();
        after.extend_from_slice(&0u32.to_le_bytes());
        after.extend_from_slice(&(pbs.len() as u32).to_le_bytes());
        for &(len, off, pfn) in pbs {
            after.extend_from_slice(&len.to_le_bytes());
            after.extend_from_slice(&off.to_le_bytes());
            after.extend_from_slice(&pfn.to_le_bytes());
        }
        let header = 16 + after.len();
        after.extend_from_slice(msg);
        self.write(
            &Descriptor::new(
                PacketType::DATA_USING_GPA_DIRECT,
                header,
                msg.len(),
                FLAG_COMPLETION_REQUESTED,
                id,
            ),
            &after,
        )
    }

    fn receive(&self) -> Option<Received> {
        let mut buf = [0u8; 4096];
        let (p, _) = Reader::new(Ring::new(self.down).unwrap())
            .read(&mut buf)
            .unwrap()?;
        let r = p.descriptor.payload();
        Some(Received {
            kind: p.kind,
            id: p.descriptor.transaction_id,
            bytes: buf[..p.len].to_vec(),
            payload: buf[r.start..r.end.min(p.len)].to_vec(),
        })
    }

    fn receive_all(&self) -> Vec<Received> {
        core::iter::from_fn(|| self.receive()).collect()
    }

    /// Read `len` bytes at `offset` of the receive buffer.
    fn read_recv(&self, offset: u32, len: u32) -> Vec<u8> {
        let mut out = vec![0u8; len as usize];
        for (i, b) in out.iter_mut().enumerate() {
            let pos = offset as u64 + i as u64;
            let gpa = self.recv_pages[(pos / 4096) as usize] * 4096 + pos % 4096;
            let mut one = [0u8];
            self.ram.read_at(gpa, &mut one).unwrap();
            *b = one[0];
        }
        out
    }

    /// A transfer-page packet's RNDIS message, checked as Linux's
    /// `netvsc_receive` checks it.
    fn transfer_page_message(&self, dev: &Dev, p: &Received) -> Vec<u8> {
        assert_eq!(p.kind, PacketType::DATA_USING_XFER_PAGES);
        let t = transfer_page::parse(&p.bytes).expect("transfer page");
        assert_eq!(t.header.pageset_id.get(), nvsp_protocol::LINUX_RECEIVE_BUFFER_ID);
        assert_eq!(t.ranges.len(), 1);
        assert!(t.payload.len() >= 16);
        assert!(matches!(
            Message::parse(t.payload),
            Ok(Message::SendRndisPacket(_))
        ));
        let slot = dev.config().receive_section_size;
        let r = t.ranges[0];
        assert!(r.byte_count.get() <= slot);
        assert!(r.byte_offset.get() as u64 + r.byte_count.get() as u64 <= RECV_PAGES * 4096);
        self.read_recv(r.byte_offset.get(), r.byte_count.get())
    }

    /// The 8-byte SEND_RNDIS_PACKET_COMPLETE Linux answers a transfer-page
    /// packet with.
    fn complete_receive(&self, id: u64) {
        let m = nvsp_protocol::send_rndis_packet_complete(Status::SUCCESS);
        assert!(self.write(&Descriptor::new(PacketType::COMPLETION, 16, 8, 0, id), &m[..8]));
    }

    /// `rndis_filter_send_request`: the request in one page (two if it
    /// crosses a page boundary), GPA-direct, control channel.
    fn send_control(&mut self, dev: &mut Dev, rndis: &[u8], offset: u32) -> Vec<u8> {
        let gpa = CTRL_PAGE * 4096 + offset as u64;
        self.ram.write_at(gpa, rndis).unwrap();
        let len = rndis.len() as u32;
        let first = len.min(4096 - offset);
        let mut pbs = vec![(first, offset, CTRL_PAGE)];
        if first < len {
            pbs.push((len - first, 0, CTRL_PAGE + 1));
        }
        let id = self.id();
        let m = nvsp_protocol::send_rndis_packet_in_section(CHANNEL_TYPE_CONTROL, None);
        assert!(self.send_pagebuffer(id, &pbs, &m));
        dev.poll(vsp::POLL_BUDGET);
        let all = self.receive_all();
        assert_eq!(all.len(), 2, "{all:?}");
        let comp = all
            .iter()
            .find(|p| p.kind == PacketType::COMPLETION)
            .expect("completion");
        assert_eq!(comp.id, id);
        match comp.nvsp() {
            Message::SendRndisPacketComplete(c) => assert_eq!(c.status.get(), Status::SUCCESS.0),
            m => panic!("{m:?}"),
        }
        let xfer = all
            .iter()
            .find(|p| p.kind != PacketType::COMPLETION)
            .expect("response");
        let msg = self.transfer_page_message(dev, xfer);
        self.complete_receive(xfer.id);
        dev.poll(vsp::POLL_BUDGET);
        msg
    }

    fn query(&mut self, dev: &mut Dev, oid: Oid) -> (u32, Vec<u8>) {
        let rid = self.next_rndis();
        let msg = self.send_control(
            dev,
            &wire::oid_request(wire::MessageType::QUERY, rid, oid, &[]),
            100,
        );
        let (h, body, _) = wire::split_message(&msg).unwrap();
        assert_eq!(h.message_type.get(), wire::MessageType::QUERY_COMPLETE.0);
        let (q, _) = wire::QueryComplete::read_from_prefix(body).unwrap();
        assert_eq!(q.request_id.get(), rid);
        let off = 8 + q.information_buffer_offset.get() as usize;
        let info = msg
            .get(off..off + q.information_buffer_length.get() as usize)
            .unwrap_or(&[])
            .to_vec();
        (q.status.get(), info)
    }

    fn set(&mut self, dev: &mut Dev, oid: Oid, info: &[u8]) -> u32 {
        let rid = self.next_rndis();
        // Crosses a page boundary: two page buffers.
        let msg = self.send_control(
            dev,
            &wire::oid_request(wire::MessageType::SET, rid, oid, info),
            4090,
        );
        let (h, body, _) = wire::split_message(&msg).unwrap();
        assert_eq!(h.message_type.get(), wire::MessageType::SET_COMPLETE.0);
        let (c, _) = wire::RequestComplete::read_from_prefix(body).unwrap();
        assert_eq!(c.request_id.get(), rid);
        c.status.get()
    }

    fn next_rndis(&mut self) -> u32 {
        self.rndis_id += 1;
        self.rndis_id
    }

    /// NVSP INIT for each of Linux's versions, newest first, until one is
    /// accepted; then NDIS config and version.
    fn nvsp_init(&mut self, dev: &mut Dev) -> Version {
        let mut tried = Version::ALL;
        tried.reverse();
        for v in tried {
            let id = self.id();
            assert!(self.send_inband(id, &nvsp_protocol::init(v), true));
            dev.poll(vsp::POLL_BUDGET);
            let a = self.receive().expect("INIT_COMPLETE");
            assert_eq!((a.kind, a.id), (PacketType::COMPLETION, id));
            assert_eq!(a.payload.len(), MESSAGE_SIZE);
            let Message::InitComplete(c) = a.nvsp() else {
                panic!("{a:?}")
            };
            if c.status.get() == Status::SUCCESS.0 {
                assert!(self.send_inband(self.next_id, &nvsp_protocol::send_ndis_config(1514, 0), false));
                let (maj, min) = if v.0 <= Version::V4.0 { (6, 1) } else { (6, 30) };
                assert!(self.send_inband(self.next_id, &nvsp_protocol::send_ndis_version(maj, min), false));
                dev.poll(vsp::POLL_BUDGET);
                assert!(self.receive().is_none(), "no completion for NDIS config/version");
                return v;
            }
            assert_eq!(c.status.get(), Status::NONE.0);
        }
        panic!("no version accepted");
    }

    fn buffers(&mut self, dev: &mut Dev) {
        let id = self.id();
        assert!(self.send_inband(
            id,
            &nvsp_protocol::send_buffer(true, RECV_GPADL, nvsp_protocol::LINUX_RECEIVE_BUFFER_ID),
            true
        ));
        dev.poll(vsp::POLL_BUDGET);
        let a = self.receive().unwrap();
        assert_eq!(a.id, id);
        let Message::SendReceiveBufferComplete(c) = a.nvsp() else {
            panic!("{a:?}")
        };
        // `netvsc_init_buf`'s checks.
        assert_eq!(c.status.get(), Status::SUCCESS.0);
        assert_eq!(c.num_sections.get(), 1);
        assert_eq!(c.section.offset.get(), 0);
        let (size, count) = (
            c.section.sub_allocation_size.get(),
            c.section.num_sub_allocations.get(),
        );
        assert!(size >= 68 && size as u64 * count as u64 <= RECV_PAGES * 4096);
        assert_eq!(dev.receive_sections(), Some((0, count)));
        let id = self.id();
        assert!(self.send_inband(
            id,
            &nvsp_protocol::send_buffer(false, SEND_GPADL, nvsp_protocol::LINUX_SEND_BUFFER_ID),
            true
        ));
        dev.poll(vsp::POLL_BUDGET);
        let a = self.receive().unwrap();
        let Message::SendSendBufferComplete(c) = a.nvsp() else {
            panic!("{a:?}")
        };
        assert_eq!(c.status.get(), Status::SUCCESS.0);
        assert_eq!(c.section_size.get(), DEFAULT_SEND_SECTION_SIZE);
    }

    /// `rndis_filter_device_add` and `rndis_filter_open`.
    fn rndis_init(&mut self, dev: &mut Dev) {
        let rid = self.next_rndis();
        let msg = self.send_control(dev, &wire::initialize_request(rid), 0);
        let (h, body, _) = wire::split_message(&msg).unwrap();
        assert_eq!(h.message_type.get(), wire::MessageType::INITIALIZE_COMPLETE.0);
        let (c, _) = wire::InitializeComplete::read_from_prefix(body).unwrap();
        assert_eq!(c.status.get(), wire::Status::SUCCESS.0);
        let (s, info) = self.query(dev, Oid::GEN_MAXIMUM_FRAME_SIZE);
        assert_eq!((s, info), (0, 1500u32.to_le_bytes().to_vec()));
        let (s, info) = self.query(dev, Oid::OID_802_3_PERMANENT_ADDRESS);
        assert_eq!((s, info), (0, MAC.to_vec()));
        let (s, info) = self.query(dev, Oid::GEN_MEDIA_CONNECT_STATUS);
        assert_eq!((s, info), (0, 0u32.to_le_bytes().to_vec()));
        let (s, _) = self.query(dev, Oid::GEN_LINK_SPEED);
        assert_eq!(s, 0);
        let s = self.set(
            dev,
            Oid::GEN_CURRENT_PACKET_FILTER,
            &wire::packet_filter::LINUX_OPEN.to_le_bytes(),
        );
        assert_eq!(s, wire::Status::SUCCESS.0);
        assert_eq!(dev.rndis().state(), rndis::State::DataInitialized);
    }

    /// Send a data packet from send-buffer section `section`; the status
    /// of its completion.
    fn send_in_section(&mut self, dev: &mut Dev, section: u32, rndis: &[u8], size: u32) -> u32 {
        let off = SEND_BASE * 4096 + section as u64 * DEFAULT_SEND_SECTION_SIZE as u64;
        if off + rndis.len() as u64 <= RAM_PAGES * 4096 {
            self.ram.write_at(off, rndis).unwrap();
        }
        let id = self.id();
        let m = nvsp_protocol::send_rndis_packet_in_section(CHANNEL_TYPE_DATA, Some((section, size)));
        assert!(self.send_inband(id, &m, true));
        dev.poll(vsp::POLL_BUDGET);
        let a = self.receive().expect("completion");
        assert_eq!((a.kind, a.id), (PacketType::COMPLETION, id));
        match a.nvsp() {
            Message::SendRndisPacketComplete(c) => c.status.get(),
            m => panic!("{m:?}"),
        }
    }
}

fn config() -> NetvspConfig {
    NetvspConfig::new(MAC)
}

fn open(config: NetvspConfig) -> (Guest, Dev) {
    let (guest, channel) = Guest::new();
    let mut dev = Dev::new(config).unwrap();
    dev.open(channel).unwrap();
    (guest, dev)
}

/// A device through Linux's whole bring-up.
fn ready() -> (Guest, Dev) {
    let (mut guest, mut dev) = open(config());
    assert_eq!(guest.nvsp_init(&mut dev), Version::V61);
    guest.buffers(&mut dev);
    guest.rndis_init(&mut dev);
    (guest, dev)
}

fn frame(dest: [u8; 6], len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&dest);
    f[6..12].copy_from_slice(&[0x00, 0x15, 0x5d, 9, 9, 9]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    for (i, b) in f[14..].iter_mut().enumerate() {
        *b = i as u8;
    }
    f
}

#[test]
fn offers_the_nic_guid() {
    let dev = Dev::new(config()).unwrap();
    let o = Device::offer(&dev);
    assert_eq!(
        o.interface_type,
        [
            0x63, 0x51, 0x61, 0xf8, 0x3e, 0xdf, 0xc5, 0x46, 0x91, 0x3f, 0xf2, 0xd2, 0xf9, 0x65, 0xed, 0x0e
        ]
    );
}

#[test]
fn open_needs_ram_and_gpadls() {
    let (_g, channel) = Guest::new();
    let mut dev = Dev::new(config()).unwrap();
    dev.open(channel).unwrap();
    let (_g2, channel) = Guest::new();
    assert_eq!(dev.open(channel).unwrap_err(), OpenError::AlreadyOpen);
    let up = leak(CONTROL_SIZE + 4096);
    let down = leak(CONTROL_SIZE + 4096);
    Ring::new(up).unwrap().reset(0).unwrap();
    Ring::new(down).unwrap().reset(0).unwrap();
    let bare = Channel::new(up, down, Box::new(Counter(Rc::new(Cell::new(0))))).unwrap();
    let mut dev = Dev::new(config()).unwrap();
    assert!(matches!(dev.open(bare), Err(OpenError::Refused(_))));
}

#[test]
fn linux_bring_up_and_frames_both_ways() {
    let (mut guest, mut dev) = ready();
    assert_eq!(dev.stats().guest_errors, 0, "{:?}", dev.last_error());
    assert_eq!(
        dev.receive_sections().unwrap().0,
        0,
        "every response was completed"
    );

    // Guest → host through a send-buffer section (`netvsc_copy_to_send_buf`).
    let out = frame([0xff; 6], 600);
    let msg = wire::packet_message(&out, &[]);
    let s = guest.send_in_section(&mut dev, 7, &msg, msg.len() as u32);
    assert_eq!(s, Status::SUCCESS.0);
    assert_eq!(dev.take_tx_frame(), Some(out.clone()));
    assert_eq!(dev.take_tx_frame(), None);

    // Guest → host in GPA-direct page buffers (a frame too big for a
    // section, or a fragmented skb): header page + data page.
    let big = frame([0xff; 6], 1514);
    let msg = wire::packet_message(&big, &[]);
    guest.ram.write_at(CTRL_PAGE * 4096 + 4000, &msg[..96]).unwrap();
    guest.ram.write_at((CTRL_PAGE + 1) * 4096, &msg[96..]).unwrap();
    let id = guest.id();
    let m = nvsp_protocol::send_rndis_packet_in_section(CHANNEL_TYPE_DATA, None);
    assert!(guest.send_pagebuffer(
        id,
        &[(96, 4000, CTRL_PAGE), (msg.len() as u32 - 96, 0, CTRL_PAGE + 1)],
        &m
    ));
    dev.poll(vsp::POLL_BUDGET);
    let a = guest.receive().unwrap();
    assert_eq!(a.id, id);
    assert_eq!(dev.take_tx_frame(), Some(big));

    // Host → guest.
    let to_guest = frame(MAC, 1514);
    dev.deliver_rx_frame(&to_guest).unwrap();
    let p = guest.receive().expect("transfer page");
    let msg = guest.transfer_page_message(&dev, &p);
    let (h, body, _) = wire::split_message(&msg).unwrap();
    assert_eq!(h.message_type.get(), wire::MessageType::PACKET.0);
    let (pk, _) = wire::Packet::read_from_prefix(body).unwrap();
    let start = 8 + pk.data_offset.get() as usize;
    assert_eq!(&msg[start..start + pk.data_length.get() as usize], &to_guest[..]);
    assert_eq!(dev.receive_sections().unwrap().0, 1);
    guest.complete_receive(p.id);
    dev.poll(vsp::POLL_BUDGET);
    assert_eq!(
        dev.receive_sections().unwrap().0,
        0,
        "the completion freed the section"
    );
    // Not for this MAC: filtered, counted.
    assert_eq!(
        dev.deliver_rx_frame(&frame([2, 0, 0, 0, 0, 1], 60)),
        Err(RxError::Frame(FrameError::Filtered))
    );
    assert_eq!(dev.stats().rx_dropped, 1);
    assert_eq!(dev.stats().rx_frames, 1);
    assert_eq!(dev.stats().guest_errors, 0, "{:?}", dev.last_error());
}

/// Linux packs RNDIS messages into one send section while more frames are
/// coming (`netvsc_send`: `xmit_more`, padded to the packet alignment);
/// when the last frame does not fit what is left, the section ends with its
/// RNDIS header and its data follows in page buffers (`cp_partial`): one
/// SEND_RNDIS_PACKET naming both a section and page buffers.
#[test]
fn a_packed_section_with_its_last_frame_in_page_buffers() {
    let (mut guest, mut dev) = ready();
    let first = frame([0xff; 6], 300);
    let mut packed = wire::packet_message(&first, &[]);
    // Padded to 8 bytes, the padding counted in message_length (Linux
    // `netvsc_copy_to_send_buf`).
    while !packed.len().is_multiple_of(8) {
        packed.push(0);
    }
    let len = packed.len() as u32;
    packed[4..8].copy_from_slice(&len.to_le_bytes());
    let last = frame([0xff; 6], 1400);
    let last_msg = wire::packet_message(&last, &[]);
    // The header (up to the data) in the section, the data in a page buffer.
    let header_len = last_msg.len() - last.len();
    packed.extend_from_slice(&last_msg[..header_len]);
    let section = 5u32;
    let off = SEND_BASE * 4096 + section as u64 * DEFAULT_SEND_SECTION_SIZE as u64;
    guest.ram.write_at(off, &packed).unwrap();
    guest.ram.write_at((CTRL_PAGE + 1) * 4096 + 100, &last).unwrap();
    let id = guest.id();
    let m =
        nvsp_protocol::send_rndis_packet_in_section(CHANNEL_TYPE_DATA, Some((section, packed.len() as u32)));
    assert!(guest.send_pagebuffer(id, &[(last.len() as u32, 100, CTRL_PAGE + 1)], &m));
    dev.poll(vsp::POLL_BUDGET);
    let a = guest.receive().expect("completion");
    assert_eq!(a.id, id);
    match a.nvsp() {
        Message::SendRndisPacketComplete(c) => {
            assert_eq!(c.status.get(), Status::SUCCESS.0, "{:?}", dev.last_error())
        }
        m => panic!("{m:?}"),
    }
    assert_eq!(dev.take_tx_frame(), Some(first));
    assert_eq!(dev.take_tx_frame(), Some(last));
    assert_eq!(dev.take_tx_frame(), None);
    assert_eq!(dev.stats().guest_errors, 0, "{:?}", dev.last_error());
}

#[test]
fn older_versions_are_negotiated_down() {
    let mut c = config();
    c.max_version = Version::V5;
    let (mut guest, mut dev) = open(c);
    assert_eq!(guest.nvsp_init(&mut dev), Version::V5);
    assert_eq!(dev.version(), Some(Version::V5));
    // Legacy message size before 6.1 (28 bytes, padded to 8 by the ring:
    // what Linux sees as `hv_pkt_datalen`).
    let id = guest.id();
    assert!(guest.send_inband(id, &nvsp_protocol::send_buffer(false, SEND_GPADL, 0), true));
    dev.poll(vsp::POLL_BUDGET);
    assert_eq!(
        guest.receive().unwrap().payload.len(),
        nvsp_protocol::LEGACY_MESSAGE_SIZE.next_multiple_of(8)
    );
}

#[test]
fn each_linux_version_is_accepted() {
    for v in Version::ALL {
        let (guest, mut dev) = open(config());
        assert!(guest.send_inband(1, &nvsp_protocol::init(v), true));
        dev.poll(vsp::POLL_BUDGET);
        let Message::InitComplete(c) = guest.receive().unwrap().nvsp() else {
            panic!()
        };
        assert_eq!(c.status.get(), Status::SUCCESS.0);
        assert_eq!(dev.version(), Some(v));
    }
}

#[test]
fn frames_before_data_init_are_dropped() {
    let (mut guest, mut dev) = open(config());
    assert_eq!(
        dev.deliver_rx_frame(&frame(MAC, 60)),
        Err(RxError::NoReceiveBuffer)
    );
    guest.nvsp_init(&mut dev);
    guest.buffers(&mut dev);
    assert_eq!(
        dev.deliver_rx_frame(&frame(MAC, 60)),
        Err(RxError::Frame(FrameError::NotReady))
    );
    assert_eq!(dev.stats().rx_dropped, 2);
}

#[test]
fn unknown_and_oversized_gpadls_are_refused() {
    let mut c = config();
    c.max_send_buffer = 64 * 1024;
    let (mut guest, mut dev) = open(c);
    guest.nvsp_init(&mut dev);
    for (receive, handle) in [(true, 0x999), (false, 0x999), (false, SEND_GPADL)] {
        let id = guest.id();
        assert!(guest.send_inband(id, &nvsp_protocol::send_buffer(receive, handle, 0xCAFE), true));
        dev.poll(vsp::POLL_BUDGET);
        let a = guest.receive().unwrap();
        let status = match a.nvsp() {
            Message::SendReceiveBufferComplete(c) => c.status.get(),
            Message::SendSendBufferComplete(c) => c.status.get(),
            m => panic!("{m:?}"),
        };
        assert_eq!(status, Status::FAIL.0);
    }
    assert_eq!(
        dev.last_error(),
        Some(GuestError::BufferTooLarge {
            len: SEND_PAGES * 4096,
            max: 64 * 1024
        })
    );
    // The channel keeps working: the right buffer is taken.
    guest.gpadls.0.borrow_mut().insert(7, vec![SEND_BASE; 16]);
    let id = guest.id();
    assert!(guest.send_inband(id, &nvsp_protocol::send_buffer(false, 7, 0), true));
    dev.poll(vsp::POLL_BUDGET);
    let Message::SendSendBufferComplete(c) = guest.receive().unwrap().nvsp() else {
        panic!()
    };
    assert_eq!(c.status.get(), Status::SUCCESS.0);
    assert_eq!(dev.send_sections(), Some((6144, 10)));
}

#[test]
fn messages_before_init_are_refused() {
    let (guest, mut dev) = open(config());
    assert!(guest.send_inband(5, &nvsp_protocol::send_buffer(true, RECV_GPADL, 0xCAFE), true));
    dev.poll(vsp::POLL_BUDGET);
    let Message::SendReceiveBufferComplete(c) = guest.receive().unwrap().nvsp() else {
        panic!()
    };
    assert_eq!(c.status.get(), Status::FAIL.0);
    assert_eq!(
        dev.last_error(),
        Some(GuestError::NotNegotiated(MessageType::SEND_RECEIVE_BUFFER))
    );
}

#[test]
fn bad_sections_are_refused_and_the_channel_keeps_working() {
    let (mut guest, mut dev) = ready();
    let msg = wire::packet_message(&frame([0xff; 6], 100), &[]);
    // Index out of range.
    let s = guest.send_in_section(&mut dev, 170, &msg, msg.len() as u32);
    assert_eq!(s, Status::FAIL.0);
    assert_eq!(
        dev.last_error(),
        Some(GuestError::SectionIndex {
            index: 170,
            count: 170
        })
    );
    assert_eq!(
        guest.send_in_section(&mut dev, u32::MAX - 1, &msg, 10),
        Status::FAIL.0
    );
    // Size past the section.
    assert_eq!(guest.send_in_section(&mut dev, 0, &msg, 6145), Status::FAIL.0);
    assert_eq!(guest.send_in_section(&mut dev, 0, &msg, 0), Status::FAIL.0);
    // RNDIS bytes past the bytes the section holds: message_length says
    // more than the guest named.
    let s = guest.send_in_section(&mut dev, 1, &msg, 40);
    assert_eq!(s, Status::INVALID_RNDIS_PACKET.0);
    assert!(matches!(dev.last_error(), Some(GuestError::Rndis(_))));
    assert_eq!(dev.take_tx_frame(), None);
    // Page buffers outside the guest's RAM, or none at all.
    let id = guest.id();
    let m = nvsp_protocol::send_rndis_packet_in_section(CHANNEL_TYPE_DATA, None);
    assert!(guest.send_pagebuffer(id, &[(100, 0, 1 << 40)], &m));
    assert!(guest.send_inband(id + 1, &m, true));
    dev.poll(vsp::POLL_BUDGET);
    for a in guest.receive_all() {
        let Message::SendRndisPacketComplete(c) = a.nvsp() else {
            panic!()
        };
        assert_eq!(c.status.get(), Status::FAIL.0);
    }
    // A completion for nothing outstanding.
    guest.complete_receive(12345);
    guest.complete_receive(u64::MAX);
    dev.poll(vsp::POLL_BUDGET);
    assert!(matches!(dev.last_error(), Some(GuestError::Completion(_))));
    // Still works.
    let s = guest.send_in_section(&mut dev, 3, &msg, msg.len() as u32);
    assert_eq!(s, Status::SUCCESS.0);
    assert!(dev.take_tx_frame().is_some());
    assert!(dev.channel().unwrap().broken().is_none());
}

#[test]
fn a_flood_is_worked_off_within_the_budget() {
    let (mut guest, mut dev) = ready();
    let msg = wire::packet_message(&frame([0xff; 6], 60), &[]);
    for s in 0..100u64 {
        let off = SEND_BASE * 4096 + s * 6144;
        guest.ram.write_at(off, &msg).unwrap();
    }
    let mut ids = Vec::new();
    for s in 0..100u32 {
        let id = guest.id();
        ids.push(id);
        let m = nvsp_protocol::send_rndis_packet_in_section(CHANNEL_TYPE_DATA, Some((s, msg.len() as u32)));
        assert!(guest.send_inband(id, &m, true));
    }
    let before = dev.stats().packets;
    let r = dev.poll(4);
    assert!(r.more);
    assert_eq!(dev.stats().packets - before, 4);
    let mut seen = guest.receive_all();
    for _ in 0..100 {
        if !dev.poll(4).more {
            break;
        }
        seen.extend(guest.receive_all());
    }
    seen.extend(guest.receive_all());
    assert_eq!(seen.iter().map(|a| a.id).collect::<Vec<_>>(), ids);
    // Every frame is in the outbox (depth 256).
    assert_eq!(dev.tx_pending(), 100);
    let mut c = 0;
    while dev.take_tx_frame().is_some() {
        c += 1;
    }
    assert_eq!(c, 100);
}

#[test]
fn the_outbox_is_bounded() {
    let mut c = config();
    c.outbox_depth = 3;
    let (mut guest, mut dev) = open(c);
    guest.nvsp_init(&mut dev);
    guest.buffers(&mut dev);
    guest.rndis_init(&mut dev);
    let msg = wire::packet_message(&frame([0xff; 6], 60), &[]);
    for _ in 0..5 {
        assert_eq!(
            guest.send_in_section(&mut dev, 2, &msg, msg.len() as u32),
            Status::SUCCESS.0
        );
    }
    assert_eq!(dev.tx_pending(), 3);
    assert_eq!(dev.stats().tx_dropped, 2);
}

#[test]
fn receive_sections_run_out_and_come_back() {
    let mut c = config();
    c.max_receive_sections = CONTROL_RESERVE + 2;
    let (mut guest, mut dev) = open(c);
    guest.nvsp_init(&mut dev);
    guest.buffers(&mut dev);
    guest.rndis_init(&mut dev);
    dev.deliver_rx_frame(&frame(MAC, 60)).unwrap();
    dev.deliver_rx_frame(&frame(MAC, 60)).unwrap();
    assert_eq!(dev.deliver_rx_frame(&frame(MAC, 60)), Err(RxError::NoSection));
    let got = guest.receive_all();
    assert_eq!(got.len(), 2);
    // Control responses still find a section (the reserve).
    let (s, _) = guest.query(&mut dev, Oid::GEN_MAXIMUM_FRAME_SIZE);
    assert_eq!(s, 0);
    for p in got {
        guest.complete_receive(p.id);
    }
    dev.poll(vsp::POLL_BUDGET);
    dev.deliver_rx_frame(&frame(MAC, 60)).unwrap();
}

#[test]
fn link_changes_are_indicated() {
    let (guest, mut dev) = ready();
    dev.set_link_up(false);
    let p = guest.receive().expect("indication");
    let msg = guest.transfer_page_message(&dev, &p);
    let (h, body, _) = wire::split_message(&msg).unwrap();
    assert_eq!(h.message_type.get(), wire::MessageType::INDICATE_STATUS.0);
    let (i, _) = wire::IndicateStatus::read_from_prefix(body).unwrap();
    assert_eq!(i.status.get(), wire::Status::MEDIA_DISCONNECT.0);
    let mut sink = Collect::default();
    dev.inspect(&mut sink);
    assert!(sink.0.contains(&("link".into(), "down".into())));
}

#[derive(Default)]
struct Collect(Vec<(String, String)>);

impl InspectSink for Collect {
    fn counter(&mut self, name: &'static str, _: &'static str, value: u64) {
        self.0.push((name.into(), value.to_string()));
    }
    fn text(&mut self, name: &'static str, _: &'static str, value: &str) {
        self.0.push((name.into(), value.into()));
    }
    fn ring(&mut self, name: &'static str, _: &'static str, _: Option<vmbus::ring::RingState>) {
        self.0.push((name.into(), String::new()));
    }
}

#[test]
fn inspect_and_reset() {
    let (_guest, mut dev) = ready();
    let mut sink = Collect::default();
    dev.inspect(&mut sink);
    let get = |k: &str| sink.0.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("nvsp_version").as_deref(), Some("6.1"));
    assert_eq!(get("rndis_state").as_deref(), Some("data initialized"));
    assert_eq!(get("mac").as_deref(), Some("00:15:5d:01:02:03"));
    assert_eq!(get("link").as_deref(), Some("up"));
    assert!(get("rndis_messages").is_some());
    Device::close(&mut dev);
    let mut sink = Collect::default();
    dev.inspect(&mut sink);
    assert!(sink.0.is_empty());
    assert_eq!(dev.version(), None);
    assert_eq!(dev.rndis().state(), rndis::State::Uninitialized);
    assert_eq!(dev.receive_sections(), None);
    // Open again: a fresh conversation.
    let (mut guest, channel) = Guest::new();
    dev.open(channel).unwrap();
    guest.nvsp_init(&mut dev);
    guest.buffers(&mut dev);
    guest.rndis_init(&mut dev);
    Device::reset(&mut dev);
    assert!(dev.channel().is_none());
}

#[test]
fn a_full_ring_holds_answers_in_order() {
    // Small host-to-guest ring: answers wait for the guest to read.
    let up = leak(CONTROL_SIZE + 64 * 1024);
    let down = leak(CONTROL_SIZE + 4096);
    Ring::new(up).unwrap().reset(FEAT_PENDING_SEND_SZ).unwrap();
    Ring::new(down).unwrap().reset(FEAT_PENDING_SEND_SZ).unwrap();
    let (mut guest, _) = Guest::new();
    guest.up = up;
    guest.down = down;
    let channel = Channel::new(up, down, Box::new(Counter(Rc::new(Cell::new(0)))))
        .unwrap()
        .with_guest_ram(guest.ram)
        .with_gpadls(Box::new(guest.gpadls.clone()));
    let mut dev = Dev::new(config()).unwrap();
    dev.open(channel).unwrap();
    guest.nvsp_init(&mut dev);
    guest.buffers(&mut dev);
    guest.rndis_init(&mut dev);
    let msg = wire::packet_message(&frame([0xff; 6], 60), &[]);
    guest.ram.write_at(SEND_BASE * 4096, &msg).unwrap();
    let mut ids = Vec::new();
    for _ in 0..200 {
        let id = guest.id();
        ids.push(id);
        let m = nvsp_protocol::send_rndis_packet_in_section(CHANNEL_TYPE_DATA, Some((0, msg.len() as u32)));
        assert!(guest.send_inband(id, &m, true));
    }
    let mut seen = Vec::new();
    for _ in 0..1000 {
        dev.poll(vsp::POLL_BUDGET);
        seen.extend(guest.receive_all().into_iter().map(|a| a.id));
        if seen.len() == ids.len() {
            break;
        }
    }
    assert_eq!(seen, ids);
    assert!(dev.channel().unwrap().stats().stalls > 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_packets_never_panic(
        packets in proptest::collection::vec(
            (prop_oneof![Just(6u16), Just(7), Just(9), Just(11), any::<u16>()],
             any::<u16>(),
             any::<u64>(),
             proptest::collection::vec(any::<u8>(), 0..200)),
            1..40),
        nvsp_type in prop_oneof![Just(1u32), Just(101), Just(104), Just(107), Just(109), any::<u32>()],
    ) {
        let (mut guest, mut dev) = ready();
        for (kind, flags, id, mut body) in packets {
            if body.len() >= 4 && kind % 2 == 0 {
                body[..4].copy_from_slice(&nvsp_type.to_le_bytes());
            }
            let kind = PacketType(kind);
            // A well-formed ring packet with a random type and body (the
            // ring itself rejects malformed descriptors).
            let d = Descriptor::new(kind, 16, body.len(), flags, id);
            let _ = guest.write(&d, &body);
            let _ = dev.poll(3);
            let _ = dev.deliver_rx_frame(&body);
            let _ = guest.receive_all();
        }
        while dev.poll(vsp::POLL_BUDGET).more {}
        let _ = guest.receive_all();
        if dev.channel().unwrap().broken().is_none() && dev.version().is_some() {
            // Still answers.
            let id = guest.id();
            prop_assert!(guest.send_inband(id, &nvsp_protocol::init(Version::V61), true));
            dev.poll(vsp::POLL_BUDGET);
            let answered = guest.receive_all().iter().any(|a| a.id == id);
            prop_assert!(answered);
        }
    }
}
