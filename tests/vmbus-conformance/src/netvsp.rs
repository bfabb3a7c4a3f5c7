//! Synthetic NIC (NET-*): `netvsp` over the rings and GPADLs of a real
//! VMBus server/client pair (the rings are the GPADL the server opened the
//! channel on, the receive and send buffers GPADLs the server built, looked
//! up the way the root does), driven with what Linux 6.1
//! `drivers/net/hyperv/netvsc.c` and `rndis_filter.c` send. Wire rules from
//! `hyperv_net.h`, `include/linux/hyperv.h` and MS-RNDIS.

use crate::{Case, GUEST_PAGES, Loopback};
use ::netvsp::{GuestError, Netvsp, NetvspConfig, RxError};
use nvsp_protocol::rndis::{self as wire, Oid};
use nvsp_protocol::{
    CHANNEL_TYPE_CONTROL, CHANNEL_TYPE_DATA, DEFAULT_SEND_SECTION_SIZE, LINUX_RECEIVE_BUFFER_ID,
    MESSAGE_SIZE, Message, Status, Version, transfer_page,
};
use rndis::FrameError;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use vmbus::memory::{AtomicMemory, PagedMemory, SharedMemory};
use vmbus::packet::{Descriptor, FLAG_COMPLETION_REQUESTED, PacketType};
use vmbus::ring::{FEAT_PENDING_SEND_SZ, Reader, Ring, RingError, Writer};
use vsp::{Channel, Device, GpadlMap, GuestSignal};
use zerocopy::{FromBytes, IntoBytes};

macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            return Err(format!($($arg)*));
        }
    };
}

const MAC: [u8; 6] = [0x00, 0x15, 0x5d, 0x01, 0x02, 0x03];
/// Receive buffer: 64 pages (145 sections of 1806 bytes).
const RECV_PAGES: u64 = 64;
/// Send buffer: 16 pages (10 sections of 6144 bytes).
const SEND_PAGES: u64 = 16;

type Pm<'a> = PagedMemory<'a, AtomicMemory>;
type Dev<'a> = Netvsp<Pm<'a>>;

fn err(e: impl core::fmt::Debug) -> String {
    format!("{e:?}")
}

struct Quiet;

impl GuestSignal for Quiet {
    fn signal(&mut self) -> bool {
        true
    }
}

/// The guest's GPADLs as the root hands them to devices: a copy of the
/// server's table (root-partition worker.rs `SharedGpadls::sync`).
#[derive(Clone, Default)]
struct Gpadls(Rc<RefCell<HashMap<u32, Vec<u64>>>>);

impl GpadlMap for Gpadls {
    fn pages(&self, handle: u32) -> Option<Vec<u64>> {
        self.0.borrow().get(&handle).cloned()
    }
}

/// Guest memory, rings and GPADLs, built through the VMBus server.
struct Mem {
    l: Loopback,
    up: Vec<u64>,
    down: Vec<u64>,
    /// Receive buffer GPADL and its pages.
    recv: (u32, Vec<u64>),
    /// Send buffer GPADL and its pages.
    send: (u32, Vec<u64>),
    /// More GPADLs (of the sizes asked for).
    extra: Vec<(u32, Vec<u64>)>,
    /// Two pages for RNDIS control messages (GPA-direct).
    ctrl: u64,
    gpadls: Gpadls,
}

impl Mem {
    /// Rings of `ring` pages each way (control page included).
    fn with(ring: u64, extra: &[u64]) -> Result<Self, String> {
        let mut l = Loopback::connected(1);
        let rings = l.open(1, ring, ring)?;
        let gpadl = |l: &mut Loopback, pages: u64| -> Result<(u32, Vec<u64>), String> {
            let (h, pfns, st) = l.gpadl(1, pages);
            ensure!(st == Some(0), "GPADL of {pages} pages: {st:?}");
            Ok((h, pfns))
        };
        let recv = gpadl(&mut l, RECV_PAGES)?;
        let send = gpadl(&mut l, SEND_PAGES)?;
        let mut more = Vec::new();
        for &n in extra {
            more.push(gpadl(&mut l, n)?);
        }
        let ctrl = l.pages(2)[0];
        let gpadls = Gpadls::default();
        for (h, g) in l.server.gpadls() {
            gpadls.0.borrow_mut().insert(*h, g.pages().collect());
        }
        let (up, down) = rings.pfns.split_at(rings.up as usize);
        let m = Self {
            up: up.to_vec(),
            down: down.to_vec(),
            recv,
            send,
            extra: more,
            ctrl,
            gpadls,
            l,
        };
        Ring::new(m.pm(&m.up)?)
            .map_err(err)?
            .reset(FEAT_PENDING_SEND_SZ)
            .map_err(err)?;
        Ring::new(m.pm(&m.down)?)
            .map_err(err)?
            .reset(FEAT_PENDING_SEND_SZ)
            .map_err(err)?;
        Ok(m)
    }

    fn std() -> Result<Self, String> {
        Self::with(9, &[])
    }

    fn pm(&self, pfns: &[u64]) -> Result<Pm<'_>, String> {
        PagedMemory::new(&self.l.memory, pfns.to_vec()).map_err(|e| format!("ring pages: {e:?}"))
    }

    /// The channel the host hands the device: the rings, all of the
    /// guest's RAM, its GPADLs.
    fn channel(&self) -> Result<Channel<Pm<'_>>, String> {
        let ram = self.pm(&(0..GUEST_PAGES).collect::<Vec<_>>())?;
        Ok(
            Channel::new(self.pm(&self.up)?, self.pm(&self.down)?, Box::new(Quiet))
                .map_err(err)?
                .with_guest_ram(ram)
                .with_gpadls(Box::new(self.gpadls.clone())),
        )
    }

    fn ram(&self) -> &AtomicMemory {
        &self.l.memory
    }
}

/// A packet from the host, whole.
#[derive(Debug)]
struct Received {
    kind: PacketType,
    id: u64,
    flags: u16,
    bytes: Vec<u8>,
    payload: Vec<u8>,
}

impl Received {
    fn nvsp(&self) -> Result<Message, String> {
        Message::parse(&self.payload).map_err(err)
    }

    /// The status of a completion carrying one of the NVSP completions.
    fn status(&self) -> Result<u32, String> {
        ensure!(
            self.kind == PacketType::COMPLETION,
            "not a completion: {:?}",
            self.kind
        );
        Ok(match self.nvsp()? {
            Message::InitComplete(c) => c.status.get(),
            Message::SendReceiveBufferComplete(c) => c.status.get(),
            Message::SendSendBufferComplete(c) => c.status.get(),
            Message::SendRndisPacketComplete(c) => c.status.get(),
            m => return Err(format!("unexpected completion {m:?}")),
        })
    }
}

struct Rig<'a> {
    mem: &'a Mem,
    dev: Dev<'a>,
    next_id: u64,
    rndis_id: u32,
}

fn frame(dest: [u8; 6], len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&dest);
    f[6..12].copy_from_slice(&[0x00, 0x15, 0x5d, 9, 9, 9]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    for (i, b) in f[14..].iter_mut().enumerate() {
        *b = i as u8 ^ 0x5A;
    }
    f
}

fn config() -> NetvspConfig {
    NetvspConfig::new(MAC)
}

impl<'a> Rig<'a> {
    fn with(mem: &'a Mem, config: NetvspConfig) -> Result<Self, String> {
        let mut dev = Dev::new(config).map_err(err)?;
        dev.open(mem.channel()?).map_err(err)?;
        Ok(Self {
            mem,
            dev,
            next_id: 1,
            rndis_id: 1,
        })
    }

    fn new(mem: &'a Mem) -> Result<Self, String> {
        Self::with(mem, config())
    }

    /// Linux's whole bring-up: NVSP 6.1, buffers, RNDIS initialized with
    /// the packet filter Linux sets on open.
    fn ready(mem: &'a Mem) -> Result<Self, String> {
        Self::ready_with(mem, config())
    }

    fn ready_with(mem: &'a Mem, config: NetvspConfig) -> Result<Self, String> {
        let mut r = Self::with(mem, config)?;
        r.nvsp_init()?;
        r.buffers()?;
        r.rndis_init()?;
        let s = r.set(
            Oid::GEN_CURRENT_PACKET_FILTER,
            &wire::packet_filter::LINUX_OPEN.to_le_bytes(),
        )?;
        ensure!(s == wire::Status::SUCCESS.0, "packet filter: {s:#x}");
        Ok(r)
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn rid(&mut self) -> u32 {
        self.rndis_id += 1;
        self.rndis_id
    }

    fn write(&self, d: &Descriptor, rest: &[u8]) -> Result<(), String> {
        Writer::new(Ring::new(self.mem.pm(&self.mem.up)?).map_err(err)?)
            .write(&[d.as_bytes(), rest])
            .map(|_| ())
            .map_err(|e| match e {
                RingError::Full { .. } => "guest-to-host ring full".to_string(),
                e => err(e),
            })
    }

    fn send_inband(&self, id: u64, msg: &[u8], completion: bool) -> Result<(), String> {
        let flags = if completion { FLAG_COMPLETION_REQUESTED } else { 0 };
        self.write(
            &Descriptor::new(PacketType::DATA_INBAND, 16, msg.len(), flags, id),
            msg,
        )
    }

    /// `vmbus_sendpacket_pagebuffer`: `{reserved, count}`, `{len, offset,
    /// pfn}` per page buffer, then the NVSP message.
    fn send_pagebuffer(&self, id: u64, pbs: &[(u32, u32, u64)], msg: &[u8]) -> Result<(), String> {
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

    fn receive(&self) -> Result<Option<Received>, String> {
        let mut buf = [0u8; 4096];
        let Some((p, _)) = Reader::new(Ring::new(self.mem.pm(&self.mem.down)?).map_err(err)?)
            .read(&mut buf)
            .map_err(err)?
        else {
            return Ok(None);
        };
        let r = p.descriptor.payload();
        Ok(Some(Received {
            kind: p.kind,
            id: p.descriptor.transaction_id,
            flags: p.descriptor.flags,
            bytes: buf.get(..p.len).unwrap_or(&[]).to_vec(),
            payload: buf.get(r.start..r.end.min(p.len)).unwrap_or(&[]).to_vec(),
        }))
    }

    fn receive_all(&self) -> Result<Vec<Received>, String> {
        let mut all = Vec::new();
        while let Some(p) = self.receive()? {
            all.push(p);
        }
        Ok(all)
    }

    fn poll(&mut self) -> Result<(), String> {
        let r = self.dev.poll(vsp::POLL_BUDGET);
        ensure!(r.broke.is_none(), "channel broke: {r:?}");
        Ok(())
    }

    /// Send an in-band NVSP message asking for a completion; the one packet
    /// that comes back.
    fn request(&mut self, msg: &[u8]) -> Result<Received, String> {
        let id = self.id();
        self.send_inband(id, msg, true)?;
        self.poll()?;
        let mut all = self.receive_all()?;
        ensure!(all.len() == 1, "{} packets: {all:?}", all.len());
        let a = all.pop().ok_or("no answer")?;
        ensure!(
            a.kind == PacketType::COMPLETION && a.id == id,
            "{:?} id {:#x}, sent {id:#x}",
            a.kind,
            a.id
        );
        Ok(a)
    }

    /// `negotiate_nvsp_ver` for one version: the INIT_COMPLETE status.
    fn init_version(&mut self, v: Version) -> Result<u32, String> {
        let a = self.request(&nvsp_protocol::init(v))?;
        // Before a version is agreed the full nvsp_message (Linux copies
        // sizeof(struct nvsp_message) out of it).
        ensure!(
            a.payload.len() == MESSAGE_SIZE,
            "INIT_COMPLETE of {} bytes",
            a.payload.len()
        );
        let Message::InitComplete(c) = a.nvsp()? else {
            return Err(format!("not INIT_COMPLETE: {:?}", a.nvsp()?));
        };
        Ok(c.status.get())
    }

    /// `netvsc_connect_vsp`: newest version first, then NDIS config and
    /// version (no completion).
    fn nvsp_init(&mut self) -> Result<Version, String> {
        let mut tried = Version::ALL;
        tried.reverse();
        for v in tried {
            if self.init_version(v)? == Status::SUCCESS.0 {
                self.send_inband(self.next_id, &nvsp_protocol::send_ndis_config(1514, 0), false)?;
                let (maj, min) = if v.0 <= Version::V4.0 { (6, 1) } else { (6, 30) };
                self.send_inband(self.next_id, &nvsp_protocol::send_ndis_version(maj, min), false)?;
                self.poll()?;
                let extra = self.receive_all()?;
                ensure!(extra.is_empty(), "completions for NDIS config/version: {extra:?}");
                return Ok(v);
            }
        }
        Err("no version accepted".into())
    }

    fn receive_buffer(&mut self, handle: u32) -> Result<Received, String> {
        self.request(&nvsp_protocol::send_buffer(true, handle, LINUX_RECEIVE_BUFFER_ID))
    }

    fn send_buffer(&mut self, handle: u32) -> Result<Received, String> {
        self.request(&nvsp_protocol::send_buffer(
            false,
            handle,
            nvsp_protocol::LINUX_SEND_BUFFER_ID,
        ))
    }

    /// `netvsc_init_buf`: both buffers, each SUCCESS.
    fn buffers(&mut self) -> Result<(), String> {
        let a = self.receive_buffer(self.mem.recv.0)?;
        ensure!(
            a.status()? == Status::SUCCESS.0,
            "receive buffer: {}",
            a.status()?
        );
        let a = self.send_buffer(self.mem.send.0)?;
        ensure!(a.status()? == Status::SUCCESS.0, "send buffer: {}", a.status()?);
        Ok(())
    }

    /// Read `len` bytes at `offset` of the receive buffer.
    fn read_recv(&self, offset: u32, len: u32) -> Result<Vec<u8>, String> {
        let mut out = vec![0u8; len as usize];
        let pages = &self.mem.recv.1;
        let mut done = 0usize;
        while done < out.len() {
            let pos = offset as u64 + done as u64;
            let page = *pages.get((pos / 4096) as usize).ok_or("range past the buffer")?;
            let n = ((4096 - pos % 4096) as usize).min(out.len() - done);
            self.mem
                .ram()
                .read_at(page * 4096 + pos % 4096, &mut out[done..done + n])
                .map_err(err)?;
            done += n;
        }
        Ok(out)
    }

    /// A transfer-page packet's RNDIS message, with Linux's checks
    /// (`netvsc_receive`): type 7, completion requested, offset8 covering
    /// the 24 + 8n header, pageset 0xCAFE, one range inside the buffer and
    /// no longer than a section, payload SEND_RNDIS_PACKET of `channel`.
    fn transfer_page(&self, p: &Received, channel: u32) -> Result<Vec<u8>, String> {
        ensure!(p.kind == PacketType::DATA_USING_XFER_PAGES, "{:?}", p.kind);
        ensure!(
            p.flags & FLAG_COMPLETION_REQUESTED != 0,
            "no completion requested"
        );
        let t = transfer_page::parse(&p.bytes).map_err(err)?;
        let ranges = t.ranges.len();
        ensure!(ranges == 1, "{ranges} ranges");
        ensure!(
            t.descriptor.offset8 as usize * 8 == transfer_page::header_len(ranges),
            "offset8 {} for {ranges} range(s)",
            t.descriptor.offset8
        );
        ensure!(
            t.header.pageset_id.get() == LINUX_RECEIVE_BUFFER_ID,
            "pageset {:#x}",
            t.header.pageset_id.get()
        );
        let Message::SendRndisPacket(m) = Message::parse(t.payload).map_err(err)? else {
            return Err("payload is not SEND_RNDIS_PACKET".into());
        };
        ensure!(
            m.channel_type.get() == channel,
            "channel type {}",
            m.channel_type.get()
        );
        let section = self.dev.config().receive_section_size;
        let (off, len) = (t.ranges[0].byte_offset.get(), t.ranges[0].byte_count.get());
        ensure!(
            len > 0 && len <= section,
            "range of {len} bytes, sections {section}"
        );
        ensure!(
            off as u64 + len as u64 <= RECV_PAGES * 4096,
            "range {off}+{len} past the buffer"
        );
        ensure!(
            off / section == (off + len - 1) / section,
            "range {off}+{len} crosses a {section}-byte section"
        );
        self.read_recv(off, len)
    }

    /// Linux's 8-byte SEND_RNDIS_PACKET_COMPLETE for a transfer-page packet.
    fn complete_receive(&self, id: u64) -> Result<(), String> {
        let m = nvsp_protocol::send_rndis_packet_complete(Status::SUCCESS);
        self.write(&Descriptor::new(PacketType::COMPLETION, 16, 8, 0, id), &m[..8])
    }

    /// `rndis_filter_send_request`: the message in page buffers (two if it
    /// crosses a page), control channel. The NVSP completion's status and
    /// the RNDIS reply, if any (completed back to the host).
    fn control_raw(&mut self, rndis: &[u8], offset: u32) -> Result<(u32, Option<Vec<u8>>), String> {
        let ctrl = self.mem.ctrl;
        self.mem
            .ram()
            .write_at(ctrl * 4096 + offset as u64, rndis)
            .map_err(err)?;
        let len = rndis.len() as u32;
        let first = len.min(4096 - offset);
        let mut pbs = vec![(first, offset, ctrl)];
        if first < len {
            pbs.push((len - first, 0, ctrl + 1));
        }
        let id = self.id();
        let m = nvsp_protocol::send_rndis_packet_in_section(CHANNEL_TYPE_CONTROL, None);
        self.send_pagebuffer(id, &pbs, &m)?;
        self.poll()?;
        let all = self.receive_all()?;
        let comp = all
            .iter()
            .find(|p| p.kind == PacketType::COMPLETION)
            .ok_or("no completion")?;
        ensure!(comp.id == id, "completion id {:#x}, sent {id:#x}", comp.id);
        let status = comp.status()?;
        let others: Vec<&Received> = all.iter().filter(|p| p.kind != PacketType::COMPLETION).collect();
        ensure!(others.len() <= 1, "{} replies", others.len());
        let Some(x) = others.first() else {
            return Ok((status, None));
        };
        let msg = self.transfer_page(x, CHANNEL_TYPE_CONTROL)?;
        self.complete_receive(x.id)?;
        self.poll()?;
        Ok((status, Some(msg)))
    }

    /// A control request that must succeed at the NVSP level and be answered.
    fn control(&mut self, rndis: &[u8], offset: u32) -> Result<Vec<u8>, String> {
        let (status, reply) = self.control_raw(rndis, offset)?;
        ensure!(status == Status::SUCCESS.0, "NVSP status {status}");
        reply.ok_or_else(|| "no RNDIS reply".to_string())
    }

    fn query_with(&mut self, oid: Oid, info: &[u8]) -> Result<(u32, Vec<u8>), String> {
        let rid = self.rid();
        let msg = self.control(&wire::oid_request(wire::MessageType::QUERY, rid, oid, info), 100)?;
        let (h, body, _) = wire::split_message(&msg).map_err(err)?;
        ensure!(
            h.message_type.get() == wire::MessageType::QUERY_COMPLETE.0,
            "{:?}",
            wire::MessageType(h.message_type.get())
        );
        ensure!(
            h.message_length.get() as usize == msg.len(),
            "message_length {}",
            h.message_length.get()
        );
        let (q, _) = wire::QueryComplete::read_from_prefix(body).map_err(|_| "short QUERY_COMPLETE")?;
        ensure!(
            q.request_id.get() == rid,
            "request id {}, sent {rid}",
            q.request_id.get()
        );
        let info = wire::sub_range(
            "answer",
            body,
            q.information_buffer_offset.get(),
            q.information_buffer_length.get(),
        )
        .map_err(err)?;
        Ok((q.status.get(), info.to_vec()))
    }

    fn query(&mut self, oid: Oid) -> Result<(u32, Vec<u8>), String> {
        self.query_with(oid, &[])
    }

    fn set(&mut self, oid: Oid, info: &[u8]) -> Result<u32, String> {
        let rid = self.rid();
        // Crosses a page boundary: two page buffers.
        let msg = self.control(&wire::oid_request(wire::MessageType::SET, rid, oid, info), 4090)?;
        let (h, body, _) = wire::split_message(&msg).map_err(err)?;
        ensure!(
            h.message_type.get() == wire::MessageType::SET_COMPLETE.0,
            "{:?}",
            wire::MessageType(h.message_type.get())
        );
        let (c, _) = wire::RequestComplete::read_from_prefix(body).map_err(|_| "short SET_COMPLETE")?;
        ensure!(
            c.request_id.get() == rid,
            "request id {}, sent {rid}",
            c.request_id.get()
        );
        Ok(c.status.get())
    }

    /// `rndis_filter_init_device`: INITIALIZE 1.0, max transfer 0x4000.
    fn rndis_init(&mut self) -> Result<wire::InitializeComplete, String> {
        let rid = self.rid();
        let msg = self.control(&wire::initialize_request(rid), 0)?;
        let (h, body, _) = wire::split_message(&msg).map_err(err)?;
        ensure!(
            h.message_type.get() == wire::MessageType::INITIALIZE_COMPLETE.0,
            "{:?}",
            wire::MessageType(h.message_type.get())
        );
        let (c, _) =
            wire::InitializeComplete::read_from_prefix(body).map_err(|_| "short INITIALIZE_COMPLETE")?;
        ensure!(c.request_id.get() == rid, "request id {}", c.request_id.get());
        ensure!(
            c.status.get() == wire::Status::SUCCESS.0,
            "status {:#x}",
            c.status.get()
        );
        Ok(c)
    }

    /// A data packet from send-buffer section `section` (`netvsc_copy_to_send_buf`);
    /// the completion's status.
    fn send_in_section(&mut self, section: u32, rndis: &[u8], size: u32) -> Result<u32, String> {
        self.write_section(section, rndis)?;
        let m = nvsp_protocol::send_rndis_packet_in_section(CHANNEL_TYPE_DATA, Some((section, size)));
        self.request(&m)?.status()
    }

    /// Put `rndis` in send-buffer section `section` (as far as the buffer goes).
    fn write_section(&self, section: u32, rndis: &[u8]) -> Result<(), String> {
        let at = section as u64 * DEFAULT_SEND_SECTION_SIZE as u64;
        let pages = &self.mem.send.1;
        let mut done = 0usize;
        while done < rndis.len() {
            let pos = at + done as u64;
            let Some(&page) = pages.get((pos / 4096) as usize) else {
                break;
            };
            let n = ((4096 - pos % 4096) as usize).min(rndis.len() - done);
            self.mem
                .ram()
                .write_at(page * 4096 + pos % 4096, &rndis[done..done + n])
                .map_err(err)?;
            done += n;
        }
        Ok(())
    }

    /// Deliver a frame to the guest; the RNDIS message of the transfer-page
    /// packet it came in (completed).
    fn deliver(&mut self, f: &[u8]) -> Result<Vec<u8>, String> {
        self.dev.deliver_rx_frame(f).map_err(err)?;
        let p = self.receive()?.ok_or("no transfer-page packet")?;
        let msg = self.transfer_page(&p, CHANNEL_TYPE_DATA)?;
        self.complete_receive(p.id)?;
        self.poll()?;
        Ok(msg)
    }
}

/// The frame inside an RNDIS PACKET message.
fn packet_frame(msg: &[u8]) -> Result<Vec<u8>, String> {
    let (h, body, rest) = wire::split_message(msg).map_err(err)?;
    ensure!(
        h.message_type.get() == wire::MessageType::PACKET.0,
        "not a PACKET"
    );
    ensure!(rest.is_empty(), "{} bytes after the message", rest.len());
    let (p, _) = wire::Packet::read_from_prefix(body).map_err(|_| "short PACKET")?;
    Ok(
        wire::sub_range("frame", body, p.data_offset.get(), p.data_length.get())
            .map_err(err)?
            .to_vec(),
    )
}

// ---------------------------------------------------------------------------
// NVSP
// ---------------------------------------------------------------------------

fn offer_case() -> Result<(), String> {
    let dev = Netvsp::<&AtomicMemory>::new(config()).map_err(err)?;
    let o = Device::offer(&dev);
    // f8615163-df3e-46c5-913f-f2d2f965ed0e (hyperv.h HV_NIC_GUID), wire order.
    let want = [
        0x63, 0x51, 0x61, 0xf8, 0x3e, 0xdf, 0xc5, 0x46, 0x91, 0x3f, 0xf2, 0xd2, 0xf9, 0x65, 0xed, 0x0e,
    ];
    ensure!(o.interface_type == want, "{:02x?}", o.interface_type);
    Ok(())
}

fn init_case(v: Version) -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::new(&mem)?;
    let s = r.init_version(v)?;
    ensure!(s == Status::SUCCESS.0, "{v:?}: status {s}");
    ensure!(r.dev.version() == Some(v), "negotiated {:?}", r.dev.version());
    // The rest of the bring-up works at that version; completions have
    // the version's message size (28 bytes before 6.1, padded to 8).
    r.buffers()?;
    let a = r.send_buffer(0xDEAD)?;
    let want = nvsp_protocol::message_size(v).next_multiple_of(8);
    ensure!(
        a.payload.len() == want,
        "{} bytes at {v:?}, expected {want}",
        a.payload.len()
    );
    r.rndis_init()?;
    Ok(())
}

macro_rules! init_case {
    ($id:literal, $v:expr, $name:literal) => {
        Case {
            id: $id,
            rule: concat!(
                "NVSP INIT with min = max = ",
                $name,
                " (netvsc.c negotiate_nvsp_ver, ver_list) is accepted: INIT_COMPLETE status NVSP_STAT_SUCCESS"
            ),
            expect: "SUCCESS in a 40-byte completion with the INIT's id; buffers and RNDIS INITIALIZE then work at that version",
            run: || init_case($v),
        }
    };
}

fn init_refused_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::new(&mem)?;
    for v in [0x10000u32, 0x30000, 0x60002, 0x70000, 0xFFFF_FFFF, 0] {
        let s = r.init_version(Version(v))?;
        ensure!(s != Status::SUCCESS.0, "{v:#x} accepted");
        ensure!(r.dev.version().is_none(), "{v:#x}: version {:?}", r.dev.version());
    }
    // min > max matches nothing.
    let mut m = nvsp_protocol::init(Version::V61);
    m[4..8].copy_from_slice(&Version::V61.0.to_le_bytes());
    m[8..12].copy_from_slice(&Version::V1.0.to_le_bytes());
    let a = r.request(&m)?;
    ensure!(a.status()? != Status::SUCCESS.0, "min > max accepted");
    // A host that stops at 5: Linux's newest-first walk settles on 5.
    let mem2 = Mem::std()?;
    let mut c = config();
    c.max_version = Version::V5;
    let mut r2 = Rig::with(&mem2, c)?;
    for v in [Version::V61, Version::V6] {
        ensure!(
            r2.init_version(v)? != Status::SUCCESS.0,
            "{v:?} above the maximum accepted"
        );
    }
    ensure!(r2.init_version(Version::V5)? == Status::SUCCESS.0, "5 refused");
    ensure!(r2.dev.version() == Some(Version::V5), "{:?}", r2.dev.version());
    Ok(())
}

fn init_twice_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::new(&mem)?;
    ensure!(r.init_version(Version::V61)? == Status::SUCCESS.0, "first INIT");
    let s = r.init_version(Version::V5)?;
    ensure!(s != Status::SUCCESS.0, "a second INIT renegotiated");
    ensure!(r.dev.version() == Some(Version::V61), "{:?}", r.dev.version());
    r.buffers()
}

fn ndis_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::new(&mem)?;
    ensure!(r.nvsp_init()? == Version::V61, "not 6.1");
    // nvsp_init checked nothing came back for NDIS config / version.
    ensure!(
        r.dev.stats().guest_errors == 0,
        "NDIS messages refused: {:?}",
        r.dev.last_error()
    );
    r.buffers()
}

fn receive_buffer_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::new(&mem)?;
    r.nvsp_init()?;
    let a = r.receive_buffer(mem.recv.0)?;
    let Message::SendReceiveBufferComplete(c) = a.nvsp()? else {
        return Err(format!("{:?}", a.nvsp()?));
    };
    // netvsc_init_buf's checks.
    ensure!(c.status.get() == Status::SUCCESS.0, "status {}", c.status.get());
    ensure!(c.num_sections.get() == 1, "{} sections", c.num_sections.get());
    let s = c.section;
    ensure!(s.offset.get() == 0, "section offset {}", s.offset.get());
    let (size, count) = (s.sub_allocation_size.get(), s.num_sub_allocations.get());
    ensure!(size >= 68, "sub-allocation size {size}");
    ensure!(
        size as u64 * count as u64 <= RECV_PAGES * 4096,
        "{count} × {size} past the buffer"
    );
    ensure!(
        s.end_offset.get() == size * count,
        "end offset {}",
        s.end_offset.get()
    );
    ensure!(
        size >= rndis::RX_OVERHEAD as u32 + 1514,
        "a section cannot hold a full frame: {size}"
    );
    ensure!(
        r.dev.receive_sections() == Some((0, count)),
        "{:?}",
        r.dev.receive_sections()
    );
    Ok(())
}

fn send_buffer_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::new(&mem)?;
    r.nvsp_init()?;
    let a = r.send_buffer(mem.send.0)?;
    let Message::SendSendBufferComplete(c) = a.nvsp()? else {
        return Err(format!("{:?}", a.nvsp()?));
    };
    ensure!(c.status.get() == Status::SUCCESS.0, "status {}", c.status.get());
    ensure!(
        c.section_size.get() >= 68,
        "section size {}",
        c.section_size.get()
    );
    ensure!(
        c.section_size.get() == 6144,
        "section size {}",
        c.section_size.get()
    );
    // Linux: send_section_cnt = buf_size / send_section_size.
    let want = (SEND_PAGES * 4096 / 6144) as u32;
    ensure!(
        r.dev.send_sections() == Some((6144, want)),
        "{:?}",
        r.dev.send_sections()
    );
    Ok(())
}

fn unknown_gpadl_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::new(&mem)?;
    r.nvsp_init()?;
    for h in [0u32, 0xDEAD, u32::MAX] {
        let a = r.receive_buffer(h)?;
        ensure!(a.status()? == Status::FAIL.0, "receive {h:#x}: {}", a.status()?);
        let a = r.send_buffer(h)?;
        ensure!(a.status()? == Status::FAIL.0, "send {h:#x}: {}", a.status()?);
        ensure!(
            r.dev.last_error() == Some(GuestError::UnknownGpadl(h)),
            "{:?}",
            r.dev.last_error()
        );
    }
    ensure!(r.dev.receive_sections().is_none(), "a buffer was taken");
    // The known ones are still accepted.
    r.buffers()
}

fn too_big_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut c = config();
    c.max_receive_buffer = (RECV_PAGES - 1) * 4096;
    c.max_send_buffer = (SEND_PAGES - 1) * 4096;
    let mut r = Rig::with(&mem, c)?;
    r.nvsp_init()?;
    let a = r.receive_buffer(mem.recv.0)?;
    ensure!(a.status()? == Status::FAIL.0, "receive: {}", a.status()?);
    ensure!(
        matches!(r.dev.last_error(), Some(GuestError::BufferTooLarge { .. })),
        "{:?}",
        r.dev.last_error()
    );
    let a = r.send_buffer(mem.send.0)?;
    ensure!(a.status()? == Status::FAIL.0, "send: {}", a.status()?);
    // Exactly the limit is fine.
    let mem2 = Mem::std()?;
    let mut c = config();
    c.max_receive_buffer = RECV_PAGES * 4096;
    c.max_send_buffer = SEND_PAGES * 4096;
    let mut r = Rig::with(&mem2, c)?;
    r.nvsp_init()?;
    r.buffers()
}

fn too_small_case() -> Result<(), String> {
    // Jumbo frames: 9306-byte receive sections, so a 2-page buffer holds none.
    let mem = Mem::with(9, &[2, 1])?;
    let mut c = config();
    c.rndis.mtu = 9000;
    c.receive_section_size = nvsp_protocol::recv_buffer::sub_allocation_size_for(9014);
    let mut r = Rig::with(&mem, c)?;
    r.nvsp_init()?;
    let a = r.receive_buffer(mem.extra[0].0)?;
    ensure!(
        a.status()? == Status::FAIL.0,
        "2-page receive buffer: {}",
        a.status()?
    );
    ensure!(
        r.dev.last_error() == Some(GuestError::BufferTooSmall(8192)),
        "{:?}",
        r.dev.last_error()
    );
    // A 1-page send buffer holds no 6144-byte section.
    let a = r.send_buffer(mem.extra[1].0)?;
    ensure!(
        a.status()? == Status::FAIL.0,
        "1-page send buffer: {}",
        a.status()?
    );
    ensure!(
        r.dev.last_error() == Some(GuestError::BufferTooSmall(4096)),
        "{:?}",
        r.dev.last_error()
    );
    r.buffers()
}

fn second_buffer_case() -> Result<(), String> {
    let mem = Mem::with(9, &[8])?;
    let mut r = Rig::new(&mem)?;
    r.nvsp_init()?;
    r.buffers()?;
    let before = r.dev.receive_sections();
    for a in [r.receive_buffer(mem.extra[0].0)?, r.send_buffer(mem.extra[0].0)?] {
        ensure!(a.status()? == Status::FAIL.0, "second buffer: {}", a.status()?);
    }
    ensure!(
        r.dev.receive_sections() == before,
        "{:?}",
        r.dev.receive_sections()
    );
    ensure!(
        r.dev.send_sections() == Some((6144, (SEND_PAGES * 4096 / 6144) as u32)),
        "{:?}",
        r.dev.send_sections()
    );
    Ok(())
}

fn before_init_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::new(&mem)?;
    let a = r.receive_buffer(mem.recv.0)?;
    ensure!(a.status()? == Status::FAIL.0, "receive buffer: {}", a.status()?);
    let a = r.send_buffer(mem.send.0)?;
    ensure!(a.status()? == Status::FAIL.0, "send buffer: {}", a.status()?);
    let (s, reply) = r.control_raw(&wire::initialize_request(7), 0)?;
    ensure!(
        s == Status::FAIL.0 && reply.is_none(),
        "RNDIS before INIT: {s} {reply:?}"
    );
    ensure!(
        matches!(r.dev.last_error(), Some(GuestError::NotNegotiated(_))),
        "{:?}",
        r.dev.last_error()
    );
    ensure!(r.dev.receive_sections().is_none(), "a buffer was taken");
    ensure!(
        r.dev.deliver_rx_frame(&frame(MAC, 60)) == Err(RxError::NoReceiveBuffer),
        "a frame was delivered before any buffer"
    );
    r.nvsp_init()?;
    r.buffers()
}

// ---------------------------------------------------------------------------
// RNDIS
// ---------------------------------------------------------------------------

fn rndis_init_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::new(&mem)?;
    r.nvsp_init()?;
    r.buffers()?;
    let c = r.rndis_init()?;
    ensure!(
        (c.major_version.get(), c.minor_version.get()) == (1, 0),
        "RNDIS {}.{}",
        c.major_version.get(),
        c.minor_version.get()
    );
    ensure!(
        c.device_flags.get() == wire::DF_CONNECTIONLESS,
        "flags {:#x}",
        c.device_flags.get()
    );
    ensure!(c.medium.get() == wire::MEDIUM_802_3, "medium {}", c.medium.get());
    ensure!(c.max_packets_per_message.get() >= 1, "max packets 0");
    ensure!(
        c.max_transfer_size.get() >= 1514 + rndis::RX_OVERHEAD as u32,
        "max transfer {} cannot carry a frame",
        c.max_transfer_size.get()
    );
    ensure!(
        c.packet_alignment_factor.get() <= 7,
        "alignment factor {}",
        c.packet_alignment_factor.get()
    );
    ensure!(
        r.dev.rndis().state() == rndis::State::Initialized,
        "{:?}",
        r.dev.rndis().state()
    );
    ensure!(
        r.dev.receive_sections().map(|s| s.0) == Some(0),
        "the reply's section was not freed by the completion"
    );
    Ok(())
}

fn query_u32(r: &mut Rig<'_>, oid: Oid) -> Result<u32, String> {
    let (s, info) = r.query(oid)?;
    ensure!(s == wire::Status::SUCCESS.0, "{oid:?}: status {s:#x}");
    let b: [u8; 4] = info
        .as_slice()
        .try_into()
        .map_err(|_| format!("{oid:?}: {} bytes", info.len()))?;
    Ok(u32::from_le_bytes(b))
}

fn mac_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    for oid in [Oid::OID_802_3_PERMANENT_ADDRESS, Oid::OID_802_3_CURRENT_ADDRESS] {
        let (s, info) = r.query(oid)?;
        ensure!(s == wire::Status::SUCCESS.0, "{oid:?}: {s:#x}");
        ensure!(info == MAC, "{oid:?}: {info:02x?}");
    }
    Ok(())
}

fn mtu_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    let mtu = query_u32(&mut r, Oid::GEN_MAXIMUM_FRAME_SIZE)?;
    ensure!(mtu == 1500, "maximum frame size {mtu}");
    let total = query_u32(&mut r, Oid::GEN_MAXIMUM_TOTAL_SIZE)?;
    ensure!(total == 1514, "maximum total size {total}");
    // A jumbo configuration is reported as configured.
    let mem2 = Mem::std()?;
    let mut c = config();
    c.rndis.mtu = 9000;
    c.receive_section_size = nvsp_protocol::recv_buffer::sub_allocation_size_for(9014);
    let mut r = Rig::ready_with(&mem2, c)?;
    let mtu = query_u32(&mut r, Oid::GEN_MAXIMUM_FRAME_SIZE)?;
    ensure!(mtu == 9000, "jumbo maximum frame size {mtu}");
    Ok(())
}

fn link_status_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    ensure!(
        query_u32(&mut r, Oid::GEN_MEDIA_CONNECT_STATUS)? == wire::MEDIA_STATE_CONNECTED,
        "not connected"
    );
    r.dev.set_link_up(false);
    let p = r.receive()?.ok_or("no indication")?;
    let msg = r.transfer_page(&p, CHANNEL_TYPE_CONTROL)?;
    r.complete_receive(p.id)?;
    r.poll()?;
    let (h, body, _) = wire::split_message(&msg).map_err(err)?;
    ensure!(
        h.message_type.get() == wire::MessageType::INDICATE_STATUS.0,
        "{:?}",
        wire::MessageType(h.message_type.get())
    );
    let (i, _) = wire::IndicateStatus::read_from_prefix(body).map_err(|_| "short indication")?;
    ensure!(
        i.status.get() == wire::Status::MEDIA_DISCONNECT.0,
        "{:#x}",
        i.status.get()
    );
    ensure!(
        query_u32(&mut r, Oid::GEN_MEDIA_CONNECT_STATUS)? == wire::MEDIA_STATE_DISCONNECTED,
        "still connected"
    );
    r.dev.set_link_up(true);
    let p = r.receive()?.ok_or("no indication")?;
    let msg = r.transfer_page(&p, CHANNEL_TYPE_CONTROL)?;
    let (_, body, _) = wire::split_message(&msg).map_err(err)?;
    let (i, _) = wire::IndicateStatus::read_from_prefix(body).map_err(|_| "short indication")?;
    ensure!(
        i.status.get() == wire::Status::MEDIA_CONNECT.0,
        "{:#x}",
        i.status.get()
    );
    Ok(())
}

fn link_speed_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    // 100 bps units: 10 Gbit/s.
    let s = query_u32(&mut r, Oid::GEN_LINK_SPEED)?;
    ensure!(s == 100_000_000, "link speed {s}");
    Ok(())
}

fn vendor_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    for oid in [
        Oid::GEN_VENDOR_ID,
        Oid::GEN_VENDOR_DESCRIPTION,
        Oid::GEN_VENDOR_DRIVER_VERSION,
        Oid::GEN_FRIENDLY_NAME,
    ] {
        let (s, info) = r.query(oid)?;
        ensure!(
            s == wire::Status::NOT_SUPPORTED.0 && info.is_empty(),
            "{oid:?}: {s:#x} {info:02x?}"
        );
    }
    // The supported list names what is answered.
    let (s, list) = r.query(Oid::GEN_SUPPORTED_LIST)?;
    ensure!(
        s == 0 && list.len() % 4 == 0 && !list.is_empty(),
        "{s:#x}, {} bytes",
        list.len()
    );
    let oids: Vec<u32> = list
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    for oid in [
        Oid::GEN_MAXIMUM_FRAME_SIZE,
        Oid::GEN_LINK_SPEED,
        Oid::GEN_MEDIA_CONNECT_STATUS,
        Oid::OID_802_3_PERMANENT_ADDRESS,
    ] {
        ensure!(oids.contains(&oid.0), "{oid:?} not in the supported list");
    }
    for oid in [Oid::GEN_VENDOR_ID, Oid::GEN_VENDOR_DESCRIPTION] {
        ensure!(!oids.contains(&oid.0), "{oid:?} listed but refused");
    }
    Ok(())
}

fn offload_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    // rndis_query_hwcaps: an ndis_offload header of revision 1..3 in the query.
    for (rev, size) in [
        (1u8, wire::NDIS_OFFLOAD_SIZE_6_0),
        (2, wire::NDIS_OFFLOAD_SIZE_6_1),
        (3, wire::NDIS_OFFLOAD_SIZE),
    ] {
        let mut q = vec![0u8; size];
        q[0] = wire::NDIS_OBJECT_TYPE_OFFLOAD;
        q[1] = rev;
        q[2..4].copy_from_slice(&(size as u16).to_le_bytes());
        let (s, info) = r.query_with(Oid::TCP_OFFLOAD_HARDWARE_CAPABILITIES, &q)?;
        ensure!(s == 0, "revision {rev}: {s:#x}");
        ensure!(info.len() == size, "revision {rev}: {} bytes", info.len());
        ensure!(
            info[0] == wire::NDIS_OBJECT_TYPE_OFFLOAD
                && info[1] == rev
                && u16::from_le_bytes([info[2], info[3]]) as usize == size,
            "header {:02x?}",
            &info[..4]
        );
        ensure!(info[4..].iter().all(|&b| b == 0), "an offload is announced");
    }
    let (s, _) = r.query(Oid::GEN_RECEIVE_SCALE_CAPABILITIES)?;
    ensure!(s == wire::Status::NOT_SUPPORTED.0, "RSS capabilities {s:#x}");
    // Offload parameters: "disabled" accepted, "enabled" not supported.
    let mut p = vec![1u8; 28];
    p[0] = wire::NDIS_OBJECT_TYPE_DEFAULT;
    p[1] = 2;
    p[2..4].copy_from_slice(&28u16.to_le_bytes());
    ensure!(
        r.set(Oid::TCP_OFFLOAD_PARAMETERS, &p)? == 0,
        "disabling offloads refused"
    );
    p[4] = 3;
    let s = r.set(Oid::TCP_OFFLOAD_PARAMETERS, &p)?;
    ensure!(s == wire::Status::NOT_SUPPORTED.0, "enabling an offload: {s:#x}");
    Ok(())
}

fn filter_set_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    ensure!(
        r.dev.rndis().state() == rndis::State::DataInitialized,
        "{:?}",
        r.dev.rndis().state()
    );
    let f = query_u32(&mut r, Oid::GEN_CURRENT_PACKET_FILTER)?;
    ensure!(f == wire::packet_filter::LINUX_OPEN, "filter {f:#x}");
    r.deliver(&frame(MAC, 60))?;
    // Filter 0 (rndis_filter_close): nothing delivered.
    ensure!(
        r.set(Oid::GEN_CURRENT_PACKET_FILTER, &0u32.to_le_bytes())? == 0,
        "filter 0"
    );
    ensure!(
        r.dev.rndis().state() == rndis::State::Initialized,
        "{:?}",
        r.dev.rndis().state()
    );
    ensure!(
        r.dev.deliver_rx_frame(&frame(MAC, 60)) == Err(RxError::Frame(FrameError::NotReady)),
        "delivered with filter 0"
    );
    // Bits this device does not implement (SOURCE_ROUTING), and a wrong length.
    let s = r.set(
        Oid::GEN_CURRENT_PACKET_FILTER,
        &wire::packet_filter::SOURCE_ROUTING.to_le_bytes(),
    )?;
    ensure!(s == wire::Status::NOT_SUPPORTED.0, "source routing: {s:#x}");
    let s = r.set(Oid::GEN_CURRENT_PACKET_FILTER, &[1, 0])?;
    ensure!(s == wire::Status::INVALID_LENGTH.0, "2-byte filter: {s:#x}");
    ensure!(
        r.dev.rndis().packet_filter() == 0,
        "a refused SET changed the filter"
    );
    Ok(())
}

fn filter_effect_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    let bcast = frame([0xFF; 6], 60);
    let other = frame([0x02, 0, 0, 0, 0, 1], 60);
    let mcast = frame([0x01, 0x00, 0x5e, 0, 0, 1], 60);
    let own = frame(MAC, 60);
    let dropped =
        |r: &mut Rig<'_>, f: &[u8]| r.dev.deliver_rx_frame(f) == Err(RxError::Frame(FrameError::Filtered));
    // Linux's filter: directed, broadcast, all multicast.
    for f in [&own, &bcast, &mcast] {
        ensure!(packet_frame(&r.deliver(f)?)? == *f, "frame changed on the way");
    }
    ensure!(dropped(&mut r, &other), "another host's frame delivered");
    // Directed only.
    r.set(
        Oid::GEN_CURRENT_PACKET_FILTER,
        &wire::packet_filter::DIRECTED.to_le_bytes(),
    )?;
    ensure!(
        dropped(&mut r, &bcast) && dropped(&mut r, &mcast),
        "broadcast/multicast delivered"
    );
    r.deliver(&own)?;
    // Multicast list.
    r.set(
        Oid::GEN_CURRENT_PACKET_FILTER,
        &(wire::packet_filter::DIRECTED | wire::packet_filter::MULTICAST).to_le_bytes(),
    )?;
    ensure!(dropped(&mut r, &mcast), "unlisted multicast delivered");
    ensure!(
        r.set(Oid::OID_802_3_MULTICAST_LIST, &mcast[..6])? == 0,
        "multicast list"
    );
    r.deliver(&mcast)?;
    // Promiscuous: everything.
    r.set(
        Oid::GEN_CURRENT_PACKET_FILTER,
        &wire::packet_filter::PROMISCUOUS.to_le_bytes(),
    )?;
    r.deliver(&other)?;
    let s = r.dev.stats();
    ensure!(s.rx_dropped == 4, "{s:?}");
    Ok(())
}

fn unknown_oid_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    for oid in [Oid(0x0001_0199), Oid(0xFFFF_FFFF), Oid::GEN_MACHINE_NAME, Oid(0)] {
        let (s, info) = r.query(oid)?;
        ensure!(
            s == wire::Status::NOT_SUPPORTED.0 && info.is_empty(),
            "query {oid:?}: {s:#x}"
        );
        let s = r.set(oid, &[1, 2, 3, 4])?;
        ensure!(s == wire::Status::NOT_SUPPORTED.0, "set {oid:?}: {s:#x}");
    }
    ensure!(
        r.dev.rndis().state() == rndis::State::DataInitialized,
        "{:?}",
        r.dev.rndis().state()
    );
    Ok(())
}

fn keepalive_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    let rid = r.rid();
    let req = wire::build_message(
        wire::MessageType::KEEPALIVE,
        &wire::RequestId {
            request_id: rid.into(),
        },
        &[],
    );
    let msg = r.control(&req, 0)?;
    let (h, body, _) = wire::split_message(&msg).map_err(err)?;
    ensure!(
        h.message_type.get() == wire::MessageType::KEEPALIVE_COMPLETE.0,
        "{:?}",
        wire::MessageType(h.message_type.get())
    );
    let (c, _) = wire::RequestComplete::read_from_prefix(body).map_err(|_| "short")?;
    ensure!(
        c.request_id.get() == rid && c.status.get() == 0,
        "id {} status {:#x}",
        c.request_id.get(),
        c.status.get()
    );
    Ok(())
}

fn tx_section_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    let out = frame([0xFF; 6], 600);
    let msg = wire::packet_message(&out, &[]);
    let s = r.send_in_section(7, &msg, msg.len() as u32)?;
    ensure!(s == Status::SUCCESS.0, "status {s}");
    ensure!(
        r.dev.take_tx_frame() == Some(out),
        "the frame did not reach the network side intact"
    );
    ensure!(r.dev.take_tx_frame().is_none(), "more than one frame");
    // Batched packets (Linux packs several into one section).
    let a = frame([0xFF; 6], 100);
    let b = frame([0x02, 0, 0, 0, 0, 9], 1514);
    let mut batch = wire::packet_message(&a, &[]);
    batch.extend(wire::packet_message(&b, &[]));
    ensure!(
        r.send_in_section(2, &batch, batch.len() as u32)? == Status::SUCCESS.0,
        "batch"
    );
    ensure!(
        r.dev.take_tx_frame() == Some(a) && r.dev.take_tx_frame() == Some(b),
        "batch order"
    );
    ensure!(r.dev.stats().tx_frames == 3, "{:?}", r.dev.stats());
    Ok(())
}

fn packed_partial_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    let first = frame([0xFF; 6], 300);
    let mut packed = wire::packet_message(&first, &[]);
    // Padded to 8 bytes, the padding in message_length (`netvsc_copy_to_send_buf`).
    while !packed.len().is_multiple_of(8) {
        packed.push(0);
    }
    let len = packed.len() as u32;
    packed[4..8].copy_from_slice(&len.to_le_bytes());
    let last = frame([0xFF; 6], 1400);
    let last_msg = wire::packet_message(&last, &[]);
    packed.extend_from_slice(&last_msg[..last_msg.len() - last.len()]);
    r.write_section(4, &packed)?;
    let ctrl = mem.ctrl;
    mem.ram().write_at((ctrl + 1) * 4096 + 100, &last).map_err(err)?;
    let id = r.id();
    let m = nvsp_protocol::send_rndis_packet_in_section(CHANNEL_TYPE_DATA, Some((4, packed.len() as u32)));
    r.send_pagebuffer(id, &[(last.len() as u32, 100, ctrl + 1)], &m)?;
    r.poll()?;
    let a = r.receive()?.ok_or("no completion")?;
    ensure!(
        a.id == id && a.status()? == Status::SUCCESS.0,
        "id {:#x} status {}",
        a.id,
        a.status()?
    );
    ensure!(r.dev.take_tx_frame() == Some(first), "first frame");
    ensure!(r.dev.take_tx_frame() == Some(last), "the frame in page buffers");
    ensure!(r.dev.take_tx_frame().is_none(), "a third frame");
    Ok(())
}

fn tx_gpa_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    let big = frame([0xFF; 6], 1514);
    let msg = wire::packet_message(&big, &[]);
    let ctrl = mem.ctrl;
    let ram = mem.ram();
    ram.write_at(ctrl * 4096 + 4000, &msg[..96]).map_err(err)?;
    ram.write_at((ctrl + 1) * 4096, &msg[96..]).map_err(err)?;
    let id = r.id();
    let m = nvsp_protocol::send_rndis_packet_in_section(CHANNEL_TYPE_DATA, None);
    r.send_pagebuffer(id, &[(96, 4000, ctrl), (msg.len() as u32 - 96, 0, ctrl + 1)], &m)?;
    r.poll()?;
    let a = r.receive()?.ok_or("no completion")?;
    ensure!(
        a.id == id && a.status()? == Status::SUCCESS.0,
        "id {:#x} status {}",
        a.id,
        a.status()?
    );
    ensure!(r.dev.take_tx_frame() == Some(big), "frame differs");
    // A page buffer outside the guest's RAM: FAIL, nothing sent.
    let id = r.id();
    r.send_pagebuffer(id, &[(100, 0, GUEST_PAGES)], &m)?;
    r.poll()?;
    let a = r.receive()?.ok_or("no completion")?;
    ensure!(a.status()? == Status::FAIL.0, "outside RAM: {}", a.status()?);
    ensure!(r.dev.take_tx_frame().is_none(), "a frame from outside RAM");
    Ok(())
}

fn rx_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    let (_, sections) = r.dev.receive_sections().ok_or("no buffer")?;
    for len in [60usize, 1514] {
        let f = frame(MAC, len);
        r.dev.deliver_rx_frame(&f).map_err(err)?;
        let p = r.receive()?.ok_or("no transfer-page packet")?;
        let msg = r.transfer_page(&p, CHANNEL_TYPE_DATA)?;
        let (h, _, _) = wire::split_message(&msg).map_err(err)?;
        ensure!(
            h.message_length.get() as usize == msg.len(),
            "range is not the message"
        );
        ensure!(packet_frame(&msg)? == f, "{len}-byte frame differs");
        ensure!(
            r.dev.receive_sections() == Some((1, sections)),
            "{:?}",
            r.dev.receive_sections()
        );
        r.complete_receive(p.id)?;
        r.poll()?;
        ensure!(
            r.dev.receive_sections() == Some((0, sections)),
            "the completion did not free the section"
        );
    }
    ensure!(r.dev.stats().rx_frames == 2, "{:?}", r.dev.stats());
    Ok(())
}

fn oversize_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    // Guest → host: 1515 bytes without a tag is past MTU + 14.
    let msg = wire::packet_message(&frame([0xFF; 6], 1515), &[]);
    let s = r.send_in_section(1, &msg, msg.len() as u32)?;
    ensure!(s == Status::INVALID_RNDIS_PACKET.0, "1515-byte frame: {s}");
    ensure!(r.dev.take_tx_frame().is_none(), "oversize frame forwarded");
    ensure!(r.dev.stats().guest_errors == 1, "{:?}", r.dev.stats());
    // A tagged frame may be 4 bytes longer; 13 bytes is no frame.
    let mut tagged = frame([0xFF; 6], 1518);
    tagged[12..16].copy_from_slice(&[0x81, 0x00, 0x00, 0x05]);
    let msg = wire::packet_message(&tagged, &[]);
    ensure!(
        r.send_in_section(1, &msg, msg.len() as u32)? == Status::SUCCESS.0,
        "tagged 1518"
    );
    ensure!(r.dev.take_tx_frame() == Some(tagged), "tagged frame");
    let msg = wire::packet_message(&frame([0xFF; 6], 14)[..13], &[]);
    ensure!(
        r.send_in_section(1, &msg, msg.len() as u32)? == Status::INVALID_RNDIS_PACKET.0,
        "13-byte frame"
    );
    // Host → guest: refused and counted.
    let before = r.dev.stats().rx_dropped;
    ensure!(
        r.dev.deliver_rx_frame(&frame(MAC, 1515)) == Err(RxError::Frame(FrameError::TooLong(1515))),
        "oversize frame delivered"
    );
    ensure!(r.dev.stats().rx_dropped == before + 1, "{:?}", r.dev.stats());
    ensure!(r.receive()?.is_none(), "something reached the guest");
    Ok(())
}

fn malformed_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    let good = wire::packet_message(&frame([0xFF; 6], 100), &[]);
    let with_len = |len: u32| {
        let mut m = good.clone();
        m[4..8].copy_from_slice(&len.to_le_bytes());
        m
    };
    // message_length below 8, past the bytes, short of the body; the
    // section size short of message_length; zero bytes.
    for (what, m, size) in [
        ("length 0", with_len(0), good.len() as u32),
        ("length 4", with_len(4), good.len() as u32),
        (
            "length past the bytes",
            with_len(good.len() as u32 + 8),
            good.len() as u32,
        ),
        ("length 16 (short body)", with_len(16), 16),
        ("section shorter than the message", good.clone(), 40),
    ] {
        let s = r.send_in_section(3, &m, size)?;
        ensure!(s == Status::INVALID_RNDIS_PACKET.0, "{what}: status {s}");
    }
    ensure!(
        r.send_in_section(3, &good, 0)? == Status::FAIL.0,
        "0-byte section"
    );
    // A control message claiming more than it has: no reply.
    let mut q = wire::oid_request(wire::MessageType::QUERY, 9, Oid::GEN_LINK_SPEED, &[]);
    let n = q.len() as u32 + 100;
    q[4..8].copy_from_slice(&n.to_le_bytes());
    let (s, reply) = r.control_raw(&q, 0)?;
    ensure!(
        s == Status::INVALID_RNDIS_PACKET.0 && reply.is_none(),
        "{s} {reply:?}"
    );
    ensure!(r.dev.take_tx_frame().is_none(), "a malformed packet sent a frame");
    // The channel keeps working.
    ensure!(
        r.send_in_section(3, &good, good.len() as u32)? == Status::SUCCESS.0,
        "then a good one"
    );
    ensure!(
        r.dev.channel().ok_or("closed")?.broken().is_none(),
        "channel broken"
    );
    Ok(())
}

fn data_before_init_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::new(&mem)?;
    r.nvsp_init()?;
    r.buffers()?;
    // Before RNDIS INITIALIZE: data and requests refused, nothing answered.
    let msg = wire::packet_message(&frame([0xFF; 6], 60), &[]);
    let s = r.send_in_section(0, &msg, msg.len() as u32)?;
    ensure!(
        s == Status::INVALID_RNDIS_PACKET.0,
        "PACKET before INITIALIZE: {s}"
    );
    ensure!(r.dev.take_tx_frame().is_none(), "a frame went out");
    let q = wire::oid_request(wire::MessageType::QUERY, 5, Oid::GEN_LINK_SPEED, &[]);
    let (s, reply) = r.control_raw(&q, 0)?;
    ensure!(
        s == Status::INVALID_RNDIS_PACKET.0 && reply.is_none(),
        "QUERY before INITIALIZE: {s}"
    );
    ensure!(
        r.dev.deliver_rx_frame(&frame(MAC, 60)) == Err(RxError::Frame(FrameError::NotReady)),
        "frame delivered before INITIALIZE"
    );
    // Initialized but no packet filter yet: the guest may send, nothing is delivered.
    r.rndis_init()?;
    ensure!(
        r.send_in_section(0, &msg, msg.len() as u32)? == Status::SUCCESS.0,
        "send after INITIALIZE"
    );
    ensure!(
        r.dev.deliver_rx_frame(&frame(MAC, 60)) == Err(RxError::Frame(FrameError::NotReady)),
        "frame delivered before a packet filter"
    );
    Ok(())
}

fn halt_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    let halt = wire::build_message(
        wire::MessageType::HALT,
        &wire::RequestId {
            request_id: 77.into(),
        },
        &[],
    );
    // MS-RNDIS: HALT has no response.
    let (s, reply) = r.control_raw(&halt, 0)?;
    ensure!(s == Status::SUCCESS.0 && reply.is_none(), "HALT: {s} {reply:?}");
    ensure!(
        r.dev.rndis().state() == rndis::State::Uninitialized,
        "{:?}",
        r.dev.rndis().state()
    );
    ensure!(
        r.dev.deliver_rx_frame(&frame(MAC, 60)) == Err(RxError::Frame(FrameError::NotReady)),
        "frame delivered after HALT"
    );
    let q = wire::oid_request(wire::MessageType::QUERY, 5, Oid::GEN_LINK_SPEED, &[]);
    let (s, reply) = r.control_raw(&q, 0)?;
    ensure!(
        s == Status::INVALID_RNDIS_PACKET.0 && reply.is_none(),
        "QUERY after HALT: {s}"
    );
    // A new INITIALIZE starts over.
    r.rndis_init()?;
    ensure!(
        r.set(
            Oid::GEN_CURRENT_PACKET_FILTER,
            &wire::packet_filter::LINUX_OPEN.to_le_bytes()
        )? == 0,
        "filter"
    );
    r.deliver(&frame(MAC, 60))?;
    Ok(())
}

fn reset_msg_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    let req = wire::build_message(
        wire::MessageType::RESET,
        &wire::RequestId { request_id: 0.into() },
        &[],
    );
    let msg = r.control(&req, 0)?;
    let (h, body, _) = wire::split_message(&msg).map_err(err)?;
    ensure!(
        h.message_type.get() == wire::MessageType::RESET_COMPLETE.0,
        "{:?}",
        wire::MessageType(h.message_type.get())
    );
    let (c, _) = wire::ResetComplete::read_from_prefix(body).map_err(|_| "short")?;
    ensure!(c.status.get() == 0, "status {:#x}", c.status.get());
    // The filter was lost, and the device says so (AddressingReset).
    ensure!(
        c.addressing_reset.get() == 1,
        "addressing reset {}",
        c.addressing_reset.get()
    );
    ensure!(r.dev.rndis().packet_filter() == 0, "filter kept");
    ensure!(
        r.dev.deliver_rx_frame(&frame(MAC, 60)) == Err(RxError::Frame(FrameError::NotReady)),
        "frame delivered with the filter lost"
    );
    Ok(())
}

fn outbox_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut c = config();
    c.outbox_depth = 3;
    let mut r = Rig::ready_with(&mem, c)?;
    let msg = wire::packet_message(&frame([0xFF; 6], 60), &[]);
    for _ in 0..5 {
        ensure!(
            r.send_in_section(2, &msg, msg.len() as u32)? == Status::SUCCESS.0,
            "send"
        );
    }
    ensure!(r.dev.tx_pending() == 3, "{} frames kept", r.dev.tx_pending());
    ensure!(r.dev.stats().tx_dropped == 2, "{:?}", r.dev.stats());
    Ok(())
}

fn sections_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mut c = config();
    c.max_receive_sections = ::netvsp::CONTROL_RESERVE + 2;
    let mut r = Rig::ready_with(&mem, c)?;
    r.dev.deliver_rx_frame(&frame(MAC, 60)).map_err(err)?;
    r.dev.deliver_rx_frame(&frame(MAC, 60)).map_err(err)?;
    ensure!(
        r.dev.deliver_rx_frame(&frame(MAC, 60)) == Err(RxError::NoSection),
        "a third frame found a section"
    );
    let got = r.receive_all()?;
    ensure!(got.len() == 2, "{} packets", got.len());
    // Control replies still find room (the reserve): Linux waits for them.
    ensure!(query_u32(&mut r, Oid::GEN_LINK_SPEED)? == 100_000_000, "query");
    for p in &got {
        r.complete_receive(p.id)?;
    }
    r.poll()?;
    r.dev.deliver_rx_frame(&frame(MAC, 60)).map_err(err)?;
    // A completion for nothing outstanding is counted, nothing else.
    r.complete_receive(9999)?;
    r.poll()?;
    ensure!(
        matches!(r.dev.last_error(), Some(GuestError::Completion(_))),
        "{:?}",
        r.dev.last_error()
    );
    Ok(())
}

fn reopen_case() -> Result<(), String> {
    let mem = Mem::std()?;
    let mem2 = Mem::std()?;
    let mut r = Rig::ready(&mem)?;
    r.dev.reset();
    ensure!(r.dev.version().is_none(), "version kept: {:?}", r.dev.version());
    ensure!(r.dev.receive_sections().is_none(), "receive buffer kept");
    ensure!(
        r.dev.rndis().state() == rndis::State::Uninitialized,
        "{:?}",
        r.dev.rndis().state()
    );
    ensure!(
        r.dev.deliver_rx_frame(&frame(MAC, 60)) == Err(RxError::NotOpen),
        "delivered while closed"
    );
    // A new open is a new conversation.
    r.dev.open(mem2.channel()?).map_err(err)?;
    r.mem = &mem2;
    let a = r.receive_buffer(mem2.recv.0)?;
    ensure!(
        a.status()? == Status::FAIL.0,
        "buffer before INIT on the new channel"
    );
    r.nvsp_init()?;
    r.buffers()?;
    r.rndis_init()?;
    ensure!(
        matches!(r.dev.open(mem.channel()?), Err(vsp::OpenError::AlreadyOpen)),
        "a second open was taken"
    );
    r.dev.close();
    ensure!(r.dev.channel().is_none(), "still open");
    let bare = Channel::new(mem.pm(&mem.up)?, mem.pm(&mem.down)?, Box::new(Quiet)).map_err(err)?;
    ensure!(
        matches!(r.dev.open(bare), Err(vsp::OpenError::Refused(_))),
        "opened without guest RAM and GPADLs"
    );
    Ok(())
}

fn in_flight_case() -> Result<(), String> {
    // 2-page rings: one 4 KiB data page each way.
    let mem = Mem::with(2, &[])?;
    let mut r = Rig::ready(&mem)?;
    let msg = wire::packet_message(&frame([0xFF; 6], 60), &[]);
    for s in 0..10 {
        r.write_section(s, &msg)?;
    }
    let mut ids = Vec::new();
    let mut seen = Vec::new();
    for _ in 0..4 {
        for s in 0..50u32 {
            let id = r.id();
            let m = nvsp_protocol::send_rndis_packet_in_section(
                CHANNEL_TYPE_DATA,
                Some((s % 10, msg.len() as u32)),
            );
            if r.send_inband(id, &m, true).is_err() {
                break;
            }
            ids.push(id);
        }
        for _ in 0..100 {
            r.dev.poll(5);
            seen.extend(r.receive_all()?.into_iter().map(|a| a.id));
            if seen.len() == ids.len() {
                break;
            }
        }
    }
    ensure!(ids.len() > 100, "only {} sent", ids.len());
    ensure!(
        r.dev.tx_pending() == ids.len(),
        "{} frames for {} packets",
        r.dev.tx_pending(),
        ids.len()
    );
    ensure!(
        seen == ids,
        "{} of {} completed once each, in order",
        seen.len(),
        ids.len()
    );
    Ok(())
}

/// The NET cases.
pub fn cases() -> Vec<Case> {
    vec![
        Case {
            id: "NET-01",
            rule: "the device is offered with HV_NIC_GUID f8615163-df3e-46c5-913f-f2d2f965ed0e (Linux include/linux/hyperv.h), which netvsc binds",
            expect: "offer interface type in wire byte order",
            run: offer_case,
        },
        init_case!("NET-02", Version::V61, "0x60001 (NVSP_PROTOCOL_VERSION_61)"),
        init_case!("NET-03", Version::V6, "0x60000 (NVSP_PROTOCOL_VERSION_6)"),
        init_case!("NET-04", Version::V5, "0x50000 (NVSP_PROTOCOL_VERSION_5)"),
        init_case!("NET-05", Version::V4, "0x40000 (NVSP_PROTOCOL_VERSION_4)"),
        init_case!("NET-06", Version::V2, "0x30002 (NVSP_PROTOCOL_VERSION_2)"),
        init_case!("NET-07", Version::V1, "0x2 (NVSP_PROTOCOL_VERSION_1)"),
        Case {
            id: "NET-08",
            rule: "an INIT for a version the host does not support is answered with a status other than SUCCESS and Linux tries the next older one (netvsc.c netvsc_connect_vsp loop; hyperv_net.h NVSP_STAT_*)",
            expect: "0x10000, 0x30000, 0x60002, 0x70000, 0xFFFFFFFF, 0 and min > max: not SUCCESS, no version; a host capped at 5 refuses 6.1 and 6, accepts 5",
            run: init_refused_case,
        },
        Case {
            id: "NET-09",
            rule: "the version is agreed once per open: a second INIT does not renegotiate",
            expect: "second INIT (5.0) after 6.1: not SUCCESS, version still 6.1, buffers then work",
            run: init_twice_case,
        },
        Case {
            id: "NET-10",
            rule: "SEND_NDIS_CONFIG (MTU + 14, capabilities) and SEND_NDIS_VERSION (6.30, 6.1 up to NVSP 4) are sent without COMPLETION_REQUESTED (netvsc.c netvsc_connect_vsp) and get no completion",
            expect: "no packet back, no guest error; the buffers are then accepted",
            run: ndis_case,
        },
        Case {
            id: "NET-11",
            rule: "SEND_RECEIVE_BUFFER with the receive buffer's GPADL (id 0xCAFE) is answered SEND_RECEIVE_BUFFER_COMPLETE: SUCCESS, exactly one section at offset 0, sub-allocation size >= 68, size × count within the buffer (netvsc.c netvsc_init_buf)",
            expect: "GPADL built by the VMBus server: 1 section, offset 0, 1806-byte sub-allocations (a full 1514-byte frame fits), end_offset = size × count",
            run: receive_buffer_case,
        },
        Case {
            id: "NET-12",
            rule: "SEND_SEND_BUFFER with the send buffer's GPADL is answered SEND_SEND_BUFFER_COMPLETE SUCCESS with the section size (>= 68); Linux uses buf_size / section_size sections (netvsc.c netvsc_init_buf)",
            expect: "section size 6144, 10 sections of a 16-page buffer",
            run: send_buffer_case,
        },
        Case {
            id: "NET-13",
            rule: "a buffer message naming a GPADL the guest does not have is refused with NVSP_STAT_FAIL (Linux then fails the device)",
            expect: "handles 0, 0xDEAD, 0xFFFFFFFF: FAIL for receive and send, UnknownGpadl; the real ones then accepted",
            run: unknown_gpadl_case,
        },
        Case {
            id: "NET-14",
            rule: "a buffer larger than the host accepts is refused with FAIL (the host bounds what it maps; Linux's maximum is 31 MiB receive / 15 MiB send, hyperv_net.h)",
            expect: "limit one page short: FAIL, BufferTooLarge for both; at exactly the limit: SUCCESS",
            run: too_big_case,
        },
        Case {
            id: "NET-15",
            rule: "a buffer that holds no section is refused with FAIL (netvsc_init_buf requires at least one sub-allocation / send section)",
            expect: "jumbo (9306-byte) sections in a 2-page receive buffer, a 1-page send buffer: FAIL, BufferTooSmall",
            run: too_small_case,
        },
        Case {
            id: "NET-16",
            rule: "one receive and one send buffer per channel: a second SEND_RECEIVE_BUFFER / SEND_SEND_BUFFER is refused and the first stays in use",
            expect: "FAIL for both, sections unchanged",
            run: second_buffer_case,
        },
        Case {
            id: "NET-17",
            rule: "NVSP messages other than INIT before a version is agreed are refused (the host has no protocol yet)",
            expect: "SEND_RECEIVE_BUFFER, SEND_SEND_BUFFER, an RNDIS packet before INIT: FAIL, NotNegotiated, no RNDIS reply; frames for the guest dropped (NoReceiveBuffer); bring-up then works",
            run: before_init_case,
        },
        Case {
            id: "NET-18",
            rule: "RNDIS INITIALIZE (rndis_filter_init_device: 1.0, max transfer 0x4000) is answered INITIALIZE_COMPLETE in a control transfer-page packet: SUCCESS, version 1.0, connectionless, 802.3, a max transfer size that carries a frame (MS-RNDIS 2.2.2, rndis_filter.c)",
            expect: "request id echoed, 1.0, DF_CONNECTIONLESS, medium 0, max_transfer_size >= 1558, alignment factor <= 7; state Initialized; the guest's completion frees the section",
            run: rndis_init_case,
        },
        Case {
            id: "NET-19",
            rule: "QUERY OID_802_3_PERMANENT_ADDRESS (rndis_filter_query_device_mac) and OID_802_3_CURRENT_ADDRESS return the 6-byte MAC (Linux requires exactly ETH_ALEN bytes)",
            expect: "SUCCESS, 00:15:5d:01:02:03 for both",
            run: mac_case,
        },
        Case {
            id: "NET-20",
            rule: "QUERY OID_GEN_MAXIMUM_FRAME_SIZE returns the MTU without the Ethernet header (rndis_filter_device_add takes it as the MTU), OID_GEN_MAXIMUM_TOTAL_SIZE the frame with it",
            expect: "1500 and 1514; a 9000-byte MTU configuration reports 9000",
            run: mtu_case,
        },
        Case {
            id: "NET-21",
            rule: "QUERY OID_GEN_MEDIA_CONNECT_STATUS (rndis_filter_query_device_link_status): 0 connected, 1 disconnected; a link change is indicated with INDICATE_STATUS MEDIA_DISCONNECT / MEDIA_CONNECT (MS-RNDIS 2.2.11)",
            expect: "0; link down: indication 0x4001000C, query 1; link up: indication 0x4001000B",
            run: link_status_case,
        },
        Case {
            id: "NET-22",
            rule: "QUERY OID_GEN_LINK_SPEED (rndis_filter_query_link_speed, NVSP >= 5) returns the speed in 100 bps units",
            expect: "100000000 (10 Gbit/s)",
            run: link_speed_case,
        },
        Case {
            id: "NET-23",
            rule: "vendor OIDs (not asked by Linux 6.1) and OID_GEN_FRIENDLY_NAME (asked, failure ignored) are answered, never dropped (Linux waits for each completion without a timeout); OID_GEN_SUPPORTED_LIST names what is answered",
            expect: "VENDOR_ID, VENDOR_DESCRIPTION, VENDOR_DRIVER_VERSION, FRIENDLY_NAME: QUERY_COMPLETE NOT_SUPPORTED with no data; the supported list has frame size, speed, connect status and MAC, not the vendor OIDs",
            run: vendor_case,
        },
        Case {
            id: "NET-24",
            rule: "offloads are answered as unsupported: OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES returns an ndis_offload of the revision asked with every capability 0 (rndis_query_hwcaps checks type 0xA7, revision, 112..156 bytes); RSS capabilities NOT_SUPPORTED keeps Linux on one channel; offload parameters may disable, not enable",
            expect: "revisions 1/2/3: 112/144/156 bytes, header echoed, body zero; RSS: NOT_SUPPORTED; SET offload params all 'disabled': SUCCESS, one enabled: NOT_SUPPORTED",
            run: offload_case,
        },
        Case {
            id: "NET-25",
            rule: "SET OID_GEN_CURRENT_PACKET_FILTER (rndis_filter_open: BROADCAST|ALL_MULTICAST|DIRECTED; close: 0) is stored and read back; non-zero starts frame delivery, 0 stops it; bits the device does not implement and a wrong length are refused without effect (MS-RNDIS 2.2.7)",
            expect: "filter 0x0D queried back and a frame delivered; 0: Initialized, NotReady; SOURCE_ROUTING: NOT_SUPPORTED; 2 bytes: INVALID_LENGTH; filter still 0",
            run: filter_set_case,
        },
        Case {
            id: "NET-26",
            rule: "the packet filter decides what reaches the guest: DIRECTED own MAC, BROADCAST ff:ff:ff:ff:ff:ff, ALL_MULTICAST any group, MULTICAST the listed groups, PROMISCUOUS everything (NDIS_PACKET_TYPE_*, rndis_filter.c)",
            expect: "Linux's filter: own, broadcast, multicast delivered intact, another host's dropped; DIRECTED only: broadcast/multicast dropped; MULTICAST: listed group only; PROMISCUOUS: another host's delivered; 4 drops counted",
            run: filter_effect_case,
        },
        Case {
            id: "NET-27",
            rule: "an OID the device does not know is answered RNDIS_STATUS_NOT_SUPPORTED (0xC00000BB), for QUERY and SET, with the request id echoed (MS-RNDIS 2.2.5/2.2.7)",
            expect: "4 OIDs: QUERY_COMPLETE and SET_COMPLETE NOT_SUPPORTED, no data, state unchanged",
            run: unknown_oid_case,
        },
        Case {
            id: "NET-28",
            rule: "KEEPALIVE is answered KEEPALIVE_COMPLETE with its request id and SUCCESS (MS-RNDIS 2.2.13-14)",
            expect: "KEEPALIVE_COMPLETE, same id, status 0",
            run: keepalive_case,
        },
        Case {
            id: "NET-29",
            rule: "guest → host data in a send-buffer section (netvsc_copy_to_send_buf; several PACKETs batched in one section) reaches the network side byte for byte, in order; SEND_RNDIS_PACKET_COMPLETE SUCCESS",
            expect: "a 600-byte frame, then a batch of 100 + 1514 bytes: the same frames from take_tx_frame, in order",
            run: tx_section_case,
        },
        Case {
            id: "NET-30",
            rule: "guest → host data in GPA-direct page buffers (vmbus_sendpacket_pagebuffer: {len, offset, pfn} each) is reassembled across pages; a page outside the guest's RAM fails that packet only",
            expect: "a 1514-byte frame split 96 | rest across a page boundary arrives intact; a page past the guest's RAM: FAIL, nothing sent",
            run: tx_gpa_case,
        },
        Case {
            id: "NET-31",
            rule: "host → guest frames come as a transfer-page packet (type 7, completion requested, offset8 × 8 = 24 + 8n, pageset 0xCAFE, one range within the buffer and no longer than a section) carrying SEND_RNDIS_PACKET data; the RNDIS PACKET holds the frame; the guest's completion frees the section (netvsc.c netvsc_receive, hyperv.h vmtransfer_page_packet_header)",
            expect: "60- and 1514-byte frames intact; one section in use until the 8-byte completion, then none",
            run: rx_case,
        },
        Case {
            id: "NET-32",
            rule: "frames longer than MTU + 14 (+ 4 with a VLAN tag) or shorter than an Ethernet header are refused and counted, both ways",
            expect: "guest → host 1515 bytes and 13 bytes: INVALID_RNDIS_PACKET, not forwarded, a guest error counted; tagged 1518 forwarded; host → guest 1515: TooLong, rx_dropped + 1, nothing sent",
            run: oversize_case,
        },
        Case {
            id: "NET-33",
            rule: "RNDIS message lengths that do not fit (MessageLength < 8, past the bytes, short of the body, or a section size short of MessageLength) are refused with NVSP_STAT_INVALID_RNDIS_PACKET and no reply; the channel keeps working (MS-RNDIS 2.2.1)",
            expect: "5 malformed data packets: INVALID_RNDIS_PACKET; a 0-byte section: FAIL; an over-long QUERY: INVALID_RNDIS_PACKET, no reply; then a good packet: SUCCESS",
            run: malformed_case,
        },
        Case {
            id: "NET-34",
            rule: "before RNDIS INITIALIZE only INITIALIZE/HALT are accepted: data and requests refused without a reply; frames reach the guest only once a packet filter is set",
            expect: "PACKET and QUERY: INVALID_RNDIS_PACKET, nothing forwarded; rx NotReady before INITIALIZE and before the filter; a PACKET after INITIALIZE is sent",
            run: data_before_init_case,
        },
        Case {
            id: "NET-35",
            rule: "HALT has no response and returns the device to uninitialized (MS-RNDIS 2.2.3); a new INITIALIZE starts over",
            expect: "NVSP SUCCESS, no RNDIS reply, Uninitialized, rx NotReady, QUERY refused; INITIALIZE and the filter again: frames delivered",
            run: halt_case,
        },
        Case {
            id: "NET-36",
            rule: "RESET is answered RESET_COMPLETE; the packet filter is lost, so AddressingReset = 1 tells the guest to restore it (MS-RNDIS 2.2.9-10)",
            expect: "status 0, addressing_reset 1, filter 0, frames not delivered",
            run: reset_msg_case,
        },
        Case {
            id: "NET-37",
            rule: "frames from the guest wait in a bounded outbox; when it is full more are dropped and counted, and still completed (the guest's send completes either way)",
            expect: "depth 3, 5 frames: all SUCCESS, 3 kept, tx_dropped 2",
            run: outbox_case,
        },
        Case {
            id: "NET-38",
            rule: "receive sections run out when the guest does not complete; received frames leave a reserve so RNDIS replies, which Linux waits for, always find one; completions free sections; a completion for nothing outstanding is refused",
            expect: "2 frames fill 2 data sections, a third NoSection; a QUERY is still answered; after completing, delivery resumes; a stray completion is a counted error",
            run: sections_case,
        },
        Case {
            id: "NET-39",
            rule: "a close or reset forgets the conversation (netvsc_connect_vsp runs after every open): version, buffers and RNDIS state; a second open and an open without RAM and GPADLs are refused",
            expect: "after reset: no version, no buffer, Uninitialized, rx NotOpen; on new rings a buffer before INIT fails and the bring-up succeeds; AlreadyOpen; Refused",
            run: reopen_case,
        },
        Case {
            id: "NET-41",
            rule: "a SEND_RNDIS_PACKET naming a send section and page buffers carries the section's bytes followed by the pages' (Linux netvsc_send packs messages into a section and puts the last frame's data in page buffers when it does not fit: cp_partial)",
            expect: "a section with a padded 300-byte frame's message and a 1400-byte frame's RNDIS header, its data in a page buffer: SUCCESS, both frames, in order",
            run: packed_partial_case,
        },
        Case {
            id: "NET-40",
            rule: "many sends in flight through 4 KiB rings are each completed once, in order, while the guest reads slowly (completions wait for room, nothing is lost)",
            expect: "every packet the ring took completed in order, every frame in the outbox",
            run: in_flight_case,
        },
    ]
}
