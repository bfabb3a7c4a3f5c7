//! The test OS as a guest of the root's synthetic devices, through
//! `vsc_drivers::storvsc` and `vsc_drivers::netvsc`:
//!
//! - `disk[:SEED]`: open the SCSI controller (the child was created with
//!   `--disk NAME`), initialize, INQUIRY, READ CAPACITY, report what the
//!   test blocks held before ([`BLOCK_MAGIC`] blocks name their seed), write
//!   a pattern derived from SEED (default [`DEFAULT_SEED`]) to a spread of
//!   blocks (first, middle, last, multi-page transfers at non-zero page
//!   offsets; all in flight at once), SYNCHRONIZE CACHE, read back and
//!   verify. Lines: `disk: capacity N sectors of B`, `disk: prior contents:
//!   …`, `disk: wrote K blocks, verified`, then `disk: PASS` or `disk: FAIL
//!   <why>`.
//! - `disk-verify[:SEED]`: the same blocks, only read back and verified
//!   against SEED's pattern (what an earlier `disk` run on the same disk
//!   wrote).
//! - `disk-multi[:SEED]`: as `disk`, over sub-channels too: once the
//!   primary is ready, check that asking for one more sub-channel than the
//!   host's `max_channel_count` is refused by the client and (sent raw) by
//!   the host, ask for 2 (`Storvsc::create_sub_channels`), wait for their
//!   offers on the bus (the primary's interface and instance GUIDs,
//!   sub-channel index 1 and 2), open each on its own ring GPADL and drive
//!   it with `Storvsc::for_sub_channel`; check that asking for more than
//!   the host has left is refused; then the `disk` pattern with span i
//!   written through channel i mod 3 (primary, sub-channel 1, 2) and read
//!   back through channel i+1 mod 3. Lines as `disk`, plus `disk: 2
//!   sub-channels open` and `disk: requests per channel: …`; the channels
//!   stay open (the child halts).
//! - `net[:A.B.C.D]`: open the NIC (`--nic`; receive and send buffers by
//!   GPADL), bring it up, take the static address (default: 10.0.2.X with X
//!   = 100 + the MAC's last byte mod 100), announce it with a gratuitous ARP
//!   and answer ARP requests (RFC 826) and ICMP echo requests (RFC 792) for
//!   it, forever.
//! - `net-ping:A.B.C.D,E.F.G.H`: as `net` with address A.B.C.D, then
//!   resolve E.F.G.H by ARP and send it 3 echo requests:
//!   `net: R/3 replies from E.F.G.H`; then serve as `net`.
//!
//! Every mode polls its rings (no interrupts). Shared by the hostile device
//! modes (`device_hostile.rs`): [`DevChannel`], [`Disk`], [`Nic`].

use crate::guest::{self, Bus, StaticMemory};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use boot_proto::child::{self, BootInfo};
use core::fmt::Write;
use hv1_abi::{HvCallCode, HypercallControl};
use vmbus::memory::SharedMemory;
use vmbus::ring::{FEAT_PENDING_SEND_SZ, FEATURE_BITS, Reader, Ring, RingError, Writer};
use vsc_drivers::netvsc::{self, Buffers, Netvsc, NetvscConfig};
use vsc_drivers::storvsc::{self, Blocks, Capacity, CommandError, Completion, DataBuffer, Storvsc};

macro_rules! say {
    ($($arg:tt)*) => {
        crate::guest::say_line(format_args!($($arg)*))
    };
}

pub(crate) const PAGE: u64 = 4096;

/// Page-aligned memory for rings and buffers (identity-mapped: an
/// address is its GPA).
#[repr(C, align(4096))]
pub(crate) struct Area<const BYTES: usize>([u8; BYTES]);

/// Ring pages of a device channel: up, then down.
pub(crate) const UP_PAGES: u64 = 4;
pub(crate) const DOWN_PAGES: u64 = 4;
const RING_BYTES: usize = ((UP_PAGES + DOWN_PAGES) * PAGE) as usize;
/// The SCSI controller's data buffer.
pub(crate) const DATA_PAGES: u64 = 32;
/// The NIC's receive and send buffers.
pub(crate) const RECV_PAGES: u64 = 32;
pub(crate) const SEND_PAGES: u64 = 8;

static mut STOR_RING: Area<RING_BYTES> = Area([0; RING_BYTES]);
/// Ring pages of the SCSI sub-channels `disk-multi` opens.
pub(crate) const SUB_CHANNELS: usize = 2;
static mut SUB_RINGS: Area<{ SUB_CHANNELS * RING_BYTES }> = Area([0; SUB_CHANNELS * RING_BYTES]);
static mut NET_RING: Area<RING_BYTES> = Area([0; RING_BYTES]);
static mut DATA: Area<{ (DATA_PAGES * PAGE) as usize }> = Area([0; (DATA_PAGES * PAGE) as usize]);
static mut RECV: Area<{ (RECV_PAGES * PAGE) as usize }> = Area([0; (RECV_PAGES * PAGE) as usize]);
static mut SEND: Area<{ (SEND_PAGES * PAGE) as usize }> = Area([0; (SEND_PAGES * PAGE) as usize]);

/// The synthetic NIC's interface type (`HV_NIC_GUID`), wire byte order.
pub(crate) const NIC_INTERFACE_GUID: [u8; 16] = vmbus::protocol::guid(
    0xf861_5163,
    0xdf3e,
    0x46c5,
    [0x91, 0x3f, 0xf2, 0xd2, 0xf9, 0x65, 0xed, 0x0e],
);

/// A deadline on the TSC. Under TCG the TSC runs at some 1-3 GHz of
/// guest time; deadlines are failure detectors, generous on purpose.
pub(crate) struct Deadline(u64);

impl Deadline {
    /// About `secs` seconds (at least; counting 1 GHz).
    pub(crate) fn secs(secs: u64) -> Self {
        Self(kernel_x86::arch::rdtsc().wrapping_add(secs * 1_000_000_000))
    }
    pub(crate) fn passed(&self) -> bool {
        kernel_x86::arch::rdtsc() > self.0
    }
}

/// HvSignalEvent on `connection` (fast call).
pub(crate) fn signal(connection: u32) {
    let control = HypercallControl {
        fast: true,
        ..HypercallControl::simple(HvCallCode::SIGNAL_EVENT)
    }
    .encode();
    let _ = guest::hypercall(control, connection as u64, 0);
}

/// An open device channel over UP_PAGES + DOWN_PAGES of ring memory.
pub(crate) struct DevChannel {
    pub(crate) relid: u32,
    pub(crate) connection: u32,
    pub(crate) writer: Writer<StaticMemory>,
    pub(crate) reader: Reader<StaticMemory>,
    /// The last packet read.
    pub(crate) buf: Vec<u8>,
}

impl DevChannel {
    /// Find the offer of `interface`, build the ring GPADL over the ring
    /// pages at `base` and open the channel.
    pub(crate) fn open(bus: &mut Bus, interface: &[u8; 16], base: u64) -> Result<(Self, u32), String> {
        // The primary channel (a sub-channel has the same GUIDs).
        let (relid, connection) = bus
            .client
            .offers()
            .values()
            .find(|o| &o.interface_type == interface && { o.sub_channel_index } == 0)
            .map(|o| (o.child_relid, o.connection_id))
            .ok_or("the root offered no such device")?;
        Self::open_relid(bus, relid, connection, base)
    }

    /// Build the ring GPADL over the ring pages at `base` and open offer
    /// `relid` (signalled on `connection`).
    pub(crate) fn open_relid(
        bus: &mut Bus,
        relid: u32,
        connection: u32,
        base: u64,
    ) -> Result<(Self, u32), String> {
        let up_mem = StaticMemory {
            base,
            len: UP_PAGES * PAGE,
        };
        let down_mem = StaticMemory {
            base: base + UP_PAGES * PAGE,
            len: DOWN_PAGES * PAGE,
        };
        // Like Linux: pending_send_sz on both rings.
        let _ = up_mem.store_u32(FEATURE_BITS, FEAT_PENDING_SEND_SZ);
        let _ = down_mem.store_u32(FEATURE_BITS, FEAT_PENDING_SEND_SZ);
        let pfns: Vec<u64> = (0..UP_PAGES + DOWN_PAGES).map(|i| (base >> 12) + i).collect();
        let (handle, status) = bus.gpadl(relid, &pfns).map_err(String::from)?;
        if status != 0 {
            return Err(format!("ring GPADL for relid {relid}: status {status:#x}"));
        }
        let open = bus.open(relid, handle, UP_PAGES as u32).map_err(String::from)?;
        if open != 0 {
            return Err(format!("OPENCHANNEL relid {relid}: status {open:#x}"));
        }
        let (Ok(up), Ok(down)) = (Ring::new(up_mem), Ring::new(down_mem)) else {
            return Err("ring geometry".into());
        };
        Ok((
            Self {
                relid,
                connection,
                writer: Writer::new(up),
                reader: Reader::new(down),
                buf: vec![0; 8192],
            },
            handle,
        ))
    }

    /// Write one packet; `Ok(false)` if the ring has no room for it now.
    pub(crate) fn send(&mut self, packet: &[u8]) -> Result<bool, RingError> {
        match self.send_quiet(packet)? {
            Some(wanted) => {
                if wanted {
                    signal(self.connection);
                }
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Write one packet without signalling: `Some(true)` if the host wants
    /// a signal for it (the ring was empty and its interrupt_mask clear),
    /// `None` if the ring has no room for it now. A caller writing a
    /// burst signals once after the last packet (`signal`): a child's
    /// HvSignalEvent ends its dispatch at once, so signalling after the
    /// first packet would have the root drain the ring between every two
    /// writes, one world switch per packet (docs/vmbus.md, "In QEMU").
    pub(crate) fn send_quiet(&mut self, packet: &[u8]) -> Result<Option<bool>, RingError> {
        match self.writer.write(&[packet]) {
            Ok(s) => Ok(Some(s.0)),
            Err(RingError::Full { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// HvSignalEvent on the channel's connection.
    pub(crate) fn signal(&self) {
        signal(self.connection);
    }

    /// Ask the host not to signal this side when it writes (the host-to-
    /// guest ring's `interrupt_mask`, as Linux sets it while it polls): the
    /// test OS's storage client polls its ring and never waits for the
    /// interrupt, so each completion's signal would be a wasted hypercall
    /// in the root.
    pub(crate) fn mask_host_signals(&self) -> Result<(), vmbus::memory::OutOfBounds> {
        self.reader
            .ring()
            .memory()
            .store_u32(vmbus::ring::INTERRUPT_MASK, 1)
    }

    /// Read one packet into `buf`: its length.
    pub(crate) fn recv(&mut self) -> Result<Option<usize>, RingError> {
        match self.reader.read(&mut self.buf)? {
            Some((p, s)) => {
                if s.0 {
                    signal(self.connection);
                }
                Ok(Some(p.len))
            }
            None => Ok(None),
        }
    }
}

/// Connect to the root's VMBus server.
pub(crate) fn connect() -> Result<Bus, String> {
    guest::init_heap();
    guest::enable_hypercalls();
    guest::enable_synic();
    let mut bus = Bus::new(None);
    bus.connect().map_err(String::from)?;
    Ok(bus)
}

fn region(base: *const u8, pages: u64) -> StaticMemory {
    StaticMemory {
        base: base as u64,
        len: pages * PAGE,
    }
}

pub(crate) fn stor_ring_base() -> u64 {
    core::ptr::addr_of!(STOR_RING) as u64
}
/// Ring pages of sub-channel `i` (0-based; `i < SUB_CHANNELS`).
pub(crate) fn sub_ring_base(i: usize) -> u64 {
    core::ptr::addr_of!(SUB_RINGS) as u64 + (i * RING_BYTES) as u64
}
pub(crate) fn net_ring_base() -> u64 {
    core::ptr::addr_of!(NET_RING) as u64
}
pub(crate) fn data_area() -> StaticMemory {
    region(core::ptr::addr_of!(DATA).cast(), DATA_PAGES)
}
pub(crate) fn recv_area() -> StaticMemory {
    region(core::ptr::addr_of!(RECV).cast(), RECV_PAGES)
}
pub(crate) fn send_area() -> StaticMemory {
    region(core::ptr::addr_of!(SEND).cast(), SEND_PAGES)
}

// ---------------------------------------------------------------------------
// The SCSI controller
// ---------------------------------------------------------------------------

/// A storvsc channel, initialized.
pub(crate) struct Disk {
    pub(crate) ch: DevChannel,
    pub(crate) client: Storvsc,
    /// Packets the client handed out that the ring had no room for yet.
    pub(crate) pending: alloc::collections::VecDeque<Vec<u8>>,
    /// Completions not yet taken.
    pub(crate) done: Vec<Completion>,
    pub(crate) data: StaticMemory,
    /// The answer to the last CREATE_SUB_CHANNELS not yet taken: the count
    /// granted, or the host's NTSTATUS.
    pub(crate) sub_answer: Option<Result<u16, u32>>,
}

impl Disk {
    /// Open the SCSI controller's channel and initialize storvsc (at most
    /// `max_in_flight` requests at once).
    pub(crate) fn open(bus: &mut Bus, max_in_flight: usize) -> Result<Self, String> {
        let (ch, _) = DevChannel::open(bus, &storvsp_protocol::SCSI_INTERFACE_GUID, stor_ring_base())?;
        ch.mask_host_signals()
            .map_err(|e| format!("host-to-guest ring: {e:?}"))?;
        let mut d = Self {
            ch,
            client: Storvsc::new(max_in_flight),
            pending: Default::default(),
            done: Vec::new(),
            data: data_area(),
            sub_answer: None,
        };
        d.client.start().map_err(|e| format!("{e}"))?;
        let deadline = Deadline::secs(20);
        loop {
            d.pump()?;
            if d.client.is_ready() {
                return Ok(d);
            }
            if d.client.has_failed() {
                return Err("storvsc initialization failed".into());
            }
            if deadline.passed() {
                return Err("storvsc initialization: no answer".into());
            }
            core::hint::spin_loop();
        }
    }

    /// Open sub-channel offer `relid` on the ring pages at `base` and drive
    /// it as the primary's `primary` says (version, properties): ready at
    /// once, no handshake (Linux `handle_sc_creation`).
    pub(crate) fn open_sub_channel(
        bus: &mut Bus,
        primary: &Disk,
        relid: u32,
        connection: u32,
        base: u64,
    ) -> Result<Self, String> {
        let (Some(version), Some(properties)) = (primary.client.version(), primary.client.properties())
        else {
            return Err("the primary is not ready".into());
        };
        let (ch, _) = DevChannel::open_relid(bus, relid, connection, base)?;
        ch.mask_host_signals()
            .map_err(|e| format!("host-to-guest ring: {e:?}"))?;
        Ok(Self {
            ch,
            client: Storvsc::for_sub_channel(version, properties, primary.client.max_in_flight()),
            pending: Default::default(),
            done: Vec::new(),
            data: data_area(),
            sub_answer: None,
        })
    }

    /// Move packets both ways once: write what the client queued (as far
    /// as the ring takes it), read and handle what the host sent.
    pub(crate) fn pump(&mut self) -> Result<(), String> {
        self.flush()?;
        for _ in 0..64 {
            let Some(n) = self.ch.recv().map_err(|e| format!("host-to-guest ring: {e:?}"))? else {
                break;
            };
            self.client
                .handle(&self.ch.buf[..n])
                .map_err(|e| format!("host packet: {e}"))?;
        }
        while let Some(e) = self.client.poll_event() {
            match e {
                storvsc::Event::Completed(c) => self.done.push(c),
                storvsc::Event::InitFailed(e) => return Err(format!("init: {e}")),
                storvsc::Event::SubChannelsGranted(n) => self.sub_answer = Some(Ok(n)),
                storvsc::Event::SubChannelsRefused(s) => self.sub_answer = Some(Err(s.0)),
                // Ready, BusChanged (one LUN here).
                _ => {}
            }
        }
        self.flush()
    }

    /// Write queued packets while the guest-to-host ring has room, then
    /// signal once if the host asked for it (a burst of requests costs
    /// one signal: see `DevChannel::send_quiet`).
    pub(crate) fn flush(&mut self) -> Result<(), String> {
        while let Some(p) = self.client.poll_transmit() {
            self.pending.push_back(p);
        }
        let mut wanted = false;
        let mut failed = None;
        while let Some(p) = self.pending.front() {
            match self.ch.send_quiet(p) {
                Ok(Some(w)) => wanted |= w,
                Ok(None) => break,
                Err(e) => {
                    failed = Some(format!("guest-to-host ring: {e:?}"));
                    break;
                }
            }
            self.pending.pop_front();
        }
        // What was written is signalled even when a later write failed.
        if wanted {
            self.ch.signal();
        }
        failed.map_or(Ok(()), Err)
    }

    /// Wait for the completions of `ids` (in any order).
    pub(crate) fn wait_all(&mut self, ids: &[storvsc::RequestId]) -> Result<Vec<Completion>, String> {
        let deadline = Deadline::secs(30);
        loop {
            self.pump()?;
            if ids.iter().all(|id| self.done.iter().any(|c| c.id == *id)) {
                let mut out = Vec::new();
                for id in ids {
                    let at = self.done.iter().position(|c| c.id == *id).expect("checked");
                    out.push(self.done.swap_remove(at));
                }
                return Ok(out);
            }
            if deadline.passed() {
                return Err(format!(
                    "{} of {} requests not completed",
                    ids.iter()
                        .filter(|id| !self.done.iter().any(|c| c.id == **id))
                        .count(),
                    ids.len()
                ));
            }
            core::hint::spin_loop();
        }
    }

    /// Issue one request and wait for it.
    pub(crate) fn run(
        &mut self,
        f: impl FnOnce(&mut Storvsc) -> Result<storvsc::RequestId, storvsc::StorvscError>,
    ) -> Result<Completion, String> {
        let id = f(&mut self.client).map_err(|e| format!("{e}"))?;
        Ok(self.wait_all(&[id])?.remove(0))
    }

    /// The PFNs of `count` data pages from page `first`.
    pub(crate) fn pfns(&self, first: u64, count: u64) -> Vec<u64> {
        (0..count).map(|i| (self.data.base >> 12) + first + i).collect()
    }

    /// INQUIRY then READ CAPACITY: the capacity.
    pub(crate) fn identify(&mut self, quiet: bool) -> Result<Capacity, String> {
        let pfns = self.pfns(0, 1);
        let c = self.run(|s| s.inquiry(0, DataBuffer::new(&pfns, 0, storvsc::INQUIRY_LEN)))?;
        let n = c.result.map_err(|e| format!("INQUIRY: {e:?}"))?;
        let mut raw = [0u8; storvsc::INQUIRY_LEN as usize];
        let _ = self.data.read_at(0, &mut raw);
        let inq =
            storvsc::InquiryData::parse(&raw[..(n as usize).min(raw.len())]).map_err(|e| format!("{e}"))?;
        if !quiet {
            say!(
                "disk: inquiry: type {} vendor '{}' product '{}'",
                inq.device_type,
                core::str::from_utf8(&inq.vendor).unwrap_or("?").trim_end(),
                core::str::from_utf8(&inq.product).unwrap_or("?").trim_end()
            );
        }
        let c = self.run(|s| s.read_capacity(0, DataBuffer::new(&pfns, 0, storvsc::READ_CAPACITY_16_LEN)))?;
        let n = c.result.map_err(|e| format!("READ CAPACITY: {e:?}"))?;
        let mut raw = [0u8; 32];
        let _ = self.data.read_at(0, &mut raw);
        let cap = Capacity::parse(c.command, &raw[..(n as usize).min(32)]).map_err(|e| format!("{e}"))?;
        Ok(cap)
    }
}

/// Seed of `disk` / `disk-verify` without one.
pub(crate) const DEFAULT_SEED: u32 = 0x5EED;
/// The first 8 bytes of every pattern block; then the seed (u32 LE), 4
/// zero bytes, the LBA (u64 LE), then bytes of an xorshift of both.
pub(crate) const BLOCK_MAGIC: &[u8; 8] = b"hv-rsBLK";

/// The pattern block for (`seed`, `lba`).
pub(crate) fn pattern_block(seed: u32, lba: u64, out: &mut [u8]) {
    let mut x = (u64::from(seed) << 32) ^ lba ^ 0x9E37_79B9_7F4A_7C15;
    for chunk in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    out[..8].copy_from_slice(BLOCK_MAGIC);
    out[8..12].copy_from_slice(&seed.to_le_bytes());
    out[12..16].fill(0);
    out[16..24].copy_from_slice(&lba.to_le_bytes());
}

/// What a block held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    Zero,
    /// A pattern block of this seed (for the right LBA or not).
    Pattern(u32),
    Other,
}

pub(crate) fn classify(block: &[u8]) -> Found {
    if block.iter().all(|&b| b == 0) {
        return Found::Zero;
    }
    if block.len() >= 24 && &block[..8] == BLOCK_MAGIC {
        let seed = u32::from_le_bytes(block[8..12].try_into().expect("4 bytes"));
        return Found::Pattern(seed);
    }
    Found::Other
}

/// One transfer of the test: `count` blocks from `lba`, through the data
/// pages from `page`, starting `offset` bytes into the first.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    pub(crate) lba: u64,
    pub(crate) count: u32,
    pub(crate) page: u64,
    pub(crate) offset: u32,
}

impl Span {
    pub(crate) fn bytes(&self, bs: u32) -> u32 {
        self.count * bs
    }
    pub(crate) fn pages(&self, bs: u32) -> u64 {
        (u64::from(self.offset) + u64::from(self.bytes(bs))).div_ceil(PAGE)
    }
    /// Byte offset of block `i` in the data area.
    pub(crate) fn at(&self, i: u32, bs: u32) -> u64 {
        self.page * PAGE + u64::from(self.offset) + u64::from(i) * u64::from(bs)
    }
}

/// The spread of blocks `disk` writes: the first, a middle and the last
/// block alone, and three multi-page transfers at non-zero page offsets.
pub(crate) fn spread(cap: &Capacity) -> Result<Vec<Span>, String> {
    let bs = cap.block_size;
    let n = cap.blocks().ok_or("capacity overflows")?;
    let blocks_of = |bytes: u32| (bytes / bs).max(1);
    let (a, b, c) = (blocks_of(12 * 1024), blocks_of(32 * 1024), blocks_of(8 * 1024));
    if n < 4 * u64::from(a + b + c) {
        return Err(format!("a disk of {n} blocks is too small for the test"));
    }
    let mid = n / 2;
    let shape: [(u64, u32, u32); 6] = [
        (0, 1, 0),
        (1, a, 1536),
        (mid, 1, 512),
        (mid + 7, b, 3584),
        (n - 1 - u64::from(c), c, 2048),
        (n - 1, 1, 1024),
    ];
    let mut page = 0;
    let mut out = Vec::new();
    for (lba, count, offset) in shape {
        let s = Span {
            lba,
            count,
            page,
            offset: offset % bs.min(4096),
        };
        page += s.pages(bs);
        out.push(s);
    }
    if page > DATA_PAGES {
        return Err(format!("block size {bs}: the test needs {page} data pages"));
    }
    Ok(out)
}

/// Read every span (all in flight at once) into the data pages.
pub(crate) fn read_spans(d: &mut Disk, spans: &[Span], bs: u32) -> Result<(), String> {
    read_spans_on(core::slice::from_mut(d), spans, bs, |_| 0)
}

/// Write SEED's pattern to every span (all in flight at once).
pub(crate) fn write_spans(d: &mut Disk, spans: &[Span], bs: u32, seed: u32) -> Result<(), String> {
    write_spans_on(core::slice::from_mut(d), spans, bs, seed, |_| 0)
}

/// Read every span into the data pages, span `i` through channel
/// `chan(i)` of `disks` (all in flight at once, on every channel).
pub(crate) fn read_spans_on(
    disks: &mut [Disk],
    spans: &[Span],
    bs: u32,
    chan: impl Fn(usize) -> usize,
) -> Result<(), String> {
    // A read that moves nothing leaves this behind (page by page: the
    // test OS's heap is small).
    let fill = [0xA5u8; PAGE as usize];
    for page in 0..DATA_PAGES {
        let _ = data_area().write_at(page * PAGE, &fill);
    }
    let mut ids = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        let c = chan(i);
        let d = disks.get_mut(c).ok_or("no such channel")?;
        let pfns = d.pfns(s.page, s.pages(bs));
        let blocks = Blocks {
            lba: s.lba,
            count: s.count,
            block_size: bs,
        };
        let id = d
            .client
            .read(0, blocks, DataBuffer::new(&pfns, s.offset, s.bytes(bs)))
            .map_err(|e| format!("READ lba {}: {e}", s.lba))?;
        ids.push((c, id));
    }
    for (c, s) in wait_on(disks, &ids)?.into_iter().zip(spans) {
        check_moved(&c, s.bytes(bs), "READ", s.lba)?;
    }
    Ok(())
}

/// Write SEED's pattern to every span, span `i` through channel `chan(i)`
/// of `disks` (all in flight at once, on every channel).
pub(crate) fn write_spans_on(
    disks: &mut [Disk],
    spans: &[Span],
    bs: u32,
    seed: u32,
    chan: impl Fn(usize) -> usize,
) -> Result<(), String> {
    let mut block = vec![0u8; bs as usize];
    let mut ids = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        let c = chan(i);
        let d = disks.get_mut(c).ok_or("no such channel")?;
        for i in 0..s.count {
            pattern_block(seed, s.lba + u64::from(i), &mut block);
            let _ = d.data.write_at(s.at(i, bs), &block);
        }
        let pfns = d.pfns(s.page, s.pages(bs));
        let blocks = Blocks {
            lba: s.lba,
            count: s.count,
            block_size: bs,
        };
        let id = d
            .client
            .write(0, blocks, DataBuffer::new(&pfns, s.offset, s.bytes(bs)))
            .map_err(|e| format!("WRITE lba {}: {e}", s.lba))?;
        ids.push((c, id));
    }
    for (c, s) in wait_on(disks, &ids)?.into_iter().zip(spans) {
        check_moved(&c, s.bytes(bs), "WRITE", s.lba)?;
    }
    Ok(())
}

/// Wait for the completions of `ids` ((channel, request) pairs, in any
/// order), pumping every channel of `disks`.
pub(crate) fn wait_on(
    disks: &mut [Disk],
    ids: &[(usize, storvsc::RequestId)],
) -> Result<Vec<Completion>, String> {
    let deadline = Deadline::secs(30);
    let done = |disks: &[Disk], (c, id): &(usize, storvsc::RequestId)| {
        disks.get(*c).is_some_and(|d| d.done.iter().any(|x| x.id == *id))
    };
    loop {
        for d in disks.iter_mut() {
            d.pump()?;
        }
        if ids.iter().all(|p| done(disks, p)) {
            let mut out = Vec::new();
            for (c, id) in ids {
                let d = &mut disks[*c];
                let at = d.done.iter().position(|x| x.id == *id).expect("checked");
                out.push(d.done.swap_remove(at));
            }
            return Ok(out);
        }
        if deadline.passed() {
            return Err(format!(
                "{} of {} requests not completed",
                ids.iter().filter(|p| !done(disks, p)).count(),
                ids.len()
            ));
        }
        core::hint::spin_loop();
    }
}

fn check_moved(c: &Completion, want: u32, what: &str, lba: u64) -> Result<(), String> {
    match &c.result {
        Ok(n) if *n == want => Ok(()),
        Ok(n) => Err(format!("{what} lba {lba}: {n} of {want} bytes moved")),
        Err(CommandError::Scsi(e)) => Err(format!(
            "{what} lba {lba}: SRB status {:#x}, SCSI status {:#x}, sense {:?}",
            e.srb_status.0, e.scsi_status.0, e.sense
        )),
        Err(CommandError::Host(e)) => Err(format!("{what} lba {lba}: {e}")),
    }
}

/// Compare the spans just read with SEED's pattern: the first mismatch.
pub(crate) fn verify_spans(d: &Disk, spans: &[Span], bs: u32, seed: u32) -> Result<u64, String> {
    let (mut want, mut got) = (vec![0u8; bs as usize], vec![0u8; bs as usize]);
    let mut blocks = 0;
    for s in spans {
        for i in 0..s.count {
            let lba = s.lba + u64::from(i);
            pattern_block(seed, lba, &mut want);
            let _ = d.data.read_at(s.at(i, bs), &mut got);
            if got != want {
                return Err(format!(
                    "lba {lba}: not seed {seed:#x}'s pattern (found {:?})",
                    classify(&got)
                ));
            }
            blocks += 1;
        }
    }
    Ok(blocks)
}

/// `disk[:SEED]` and `disk-verify[:SEED]`.
pub(crate) fn disk_mode(name: &str, mode: &str, info: &BootInfo) -> ! {
    let (verify_only, multi, rest) = if let Some(r) = mode.strip_prefix("disk-verify") {
        (true, false, r)
    } else if let Some(r) = mode.strip_prefix("disk-multi") {
        (false, true, r)
    } else {
        (false, false, mode.strip_prefix("disk").unwrap_or(""))
    };
    let seed = match rest.strip_prefix(':').map(parse_u32) {
        None if rest.is_empty() => Some(DEFAULT_SEED),
        Some(s) => s,
        None => None,
    };
    let Some(seed) = seed else {
        say!("disk: FAIL bad mode '{mode}' (disk[:SEED], disk-verify[:SEED] or disk-multi[:SEED])");
        guest::halt_forever()
    };
    say!(
        "testos {name}: disk: seed {seed:#x}{}",
        if verify_only {
            ", verify only"
        } else if multi {
            ", over the primary and 2 sub-channels"
        } else {
            ""
        }
    );
    let result = if multi {
        disk_multi_test(seed)
    } else {
        disk_test(verify_only, seed, &free_pages(info))
    };
    match result {
        Ok(()) => say!("disk: PASS"),
        Err(why) => say!("disk: FAIL {why}"),
    }
    guest::halt_forever()
}

fn disk_test(verify_only: bool, seed: u32, free: &core::ops::Range<u64>) -> Result<(), String> {
    let mut bus = connect()?;
    let mut d = Disk::open(&mut bus, storvsc::DEFAULT_MAX_IN_FLIGHT)?;
    if let Some(v) = d.client.version() {
        say!("disk: storvsc ready, vmstor {}.{}", v.major(), v.minor());
    }
    let cap = d.identify(false)?;
    let blocks = cap.blocks().ok_or("capacity overflows")?;
    say!("disk: capacity {blocks} sectors of {}", cap.block_size);
    let bs = cap.block_size;
    let spans = spread(&cap)?;
    if !verify_only {
        // What was there before (another child's data must never show).
        read_spans(&mut d, &spans, bs)?;
        say_prior(&d.data, &spans, bs);
        write_spans(&mut d, &spans, bs, seed)?;
        let c = d.run(|s| s.synchronize_cache(0))?;
        check_moved(&c, 0, "SYNCHRONIZE CACHE", 0)?;
        say!("disk: synchronize cache done");
        scattered(&mut d, &cap, seed, free)?;
    }
    read_spans(&mut d, &spans, bs)?;
    let n = verify_spans(&d, &spans, bs, seed)?;
    if verify_only {
        say!("disk: read back {n} blocks of seed {seed:#x}, verified");
    } else {
        say!("disk: wrote {n} blocks, verified");
    }
    Ok(())
}

/// Pages in the scattered transfer: more than one virtio-blk request of
/// the root holds (126 segments), fewer than a storvsc packet lists (257).
const SCATTERED_PAGES: u64 = 200;

/// One WRITE and one READ of `SCATTERED_PAGES` pages listed in descending
/// order (no two adjacent, as a kernel's pages often are), at a quarter of
/// the disk: the host must keep each page's bytes in place however it
/// splits the transfer. Checked by reading the same blocks back into
/// ascending pages, then into the descending ones again.
fn scattered(d: &mut Disk, cap: &Capacity, seed: u32, free: &core::ops::Range<u64>) -> Result<(), String> {
    let bs = cap.block_size;
    let n = SCATTERED_PAGES;
    if free.end - free.start < n {
        return Err(format!("no {n} free pages for the scattered transfer ({free:?})"));
    }
    let blocks_per_page = (PAGE / u64::from(bs)).max(1);
    let lba = cap.blocks().ok_or("capacity overflows")? / 4;
    let count = (n * PAGE / u64::from(bs)) as u32;
    let memory = region((free.start * PAGE) as *const u8, n);
    let ascending: Vec<u64> = (free.start..free.start + n).collect();
    let descending: Vec<u64> = ascending.iter().rev().copied().collect();
    let blocks = Blocks {
        lba,
        count,
        block_size: bs,
    };
    let len = count * bs;
    // Byte `k * PAGE` of the transfer lives in page `descending[k]`, i.e.
    // at offset `(n - 1 - k) * PAGE` of the free pages.
    let mut block = vec![0u8; bs as usize];
    let fill = |pages_of_transfer: &dyn Fn(u64) -> u64, block: &mut Vec<u8>| {
        for k in 0..n {
            for b in 0..blocks_per_page {
                pattern_block(seed, lba + k * blocks_per_page + b, block);
                let _ = memory.write_at(pages_of_transfer(k) * PAGE + b * u64::from(bs), block);
            }
        }
    };
    let check = |pages_of_transfer: &dyn Fn(u64) -> u64, how: &str| -> Result<(), String> {
        let (mut want, mut got) = (vec![0u8; bs as usize], vec![0u8; bs as usize]);
        for k in 0..n {
            for b in 0..blocks_per_page {
                let at = lba + k * blocks_per_page + b;
                pattern_block(seed, at, &mut want);
                let _ = memory.read_at(pages_of_transfer(k) * PAGE + b * u64::from(bs), &mut got);
                if got != want {
                    return Err(format!(
                        "scattered {how}: lba {at} not in its page (found {:?})",
                        classify(&got)
                    ));
                }
            }
        }
        Ok(())
    };
    let down = |k: u64| n - 1 - k;
    let up = |k: u64| k;
    fill(&down, &mut block);
    let c = d.run(|s| s.write(0, blocks, DataBuffer::new(&descending, 0, len)))?;
    check_moved(&c, len, "scattered WRITE", lba)?;
    // Page by page: the test OS's heap is small.
    let clear = || {
        let zeros = [0u8; PAGE as usize];
        for page in 0..n {
            let _ = memory.write_at(page * PAGE, &zeros);
        }
    };
    clear();
    let c = d.run(|s| s.read(0, blocks, DataBuffer::new(&ascending, 0, len)))?;
    check_moved(&c, len, "READ", lba)?;
    check(&up, "write")?;
    clear();
    let c = d.run(|s| s.read(0, blocks, DataBuffer::new(&descending, 0, len)))?;
    check_moved(&c, len, "scattered READ", lba)?;
    check(&down, "read")?;
    say!("disk: {n} scattered pages written and read back in place");
    Ok(())
}

/// The partition's reference time in 100 ns units (HV_X64_MSR_TIME_REF_COUNT,
/// which hv-core keeps for every child): the benchmark's clock.
fn reference_time() -> u64 {
    // SAFETY: a synthetic MSR hv-core offers every child (`apic-timer`
    // checks it); reading it has no side effect.
    unsafe { kernel_x86::arch::rdmsr(hv1_abi::msr::TIME_REF_COUNT) }
}

unsafe extern "C" {
    /// The end of the test OS image (linker.ld).
    static __testos_bss_end: u8;
}

/// Guest pages nothing uses: from the image's end up to the VPs' stacks at
/// the top of the child's memory (the worker's layout, `boot_proto::child`).
fn free_pages(info: &BootInfo) -> core::ops::Range<u64> {
    let start = (&raw const __testos_bss_end as u64).div_ceil(PAGE);
    let end = info
        .memory_size
        .saturating_sub(u64::from(info.vp_count) * child::STACK_SIZE)
        / PAGE;
    start..end.max(start)
}

/// Read the disk's first `bytes` sequentially in `request` byte reads,
/// 8 in flight, all into one buffer of `request` bytes (the data is not
/// looked at); one result line. A request larger than the data area reads
/// into the child's free pages: contiguous guest pages, as a kernel's
/// buffers mostly are (the test OS runs identity-mapped).
fn sequential(
    d: &mut Disk,
    bytes: u64,
    bs: u32,
    request: u32,
    free: &core::ops::Range<u64>,
) -> Result<(), String> {
    const SEQ_DEPTH: usize = 8;
    let pages = u64::from(request) / PAGE;
    let pfns: Vec<u64> = if pages <= DATA_PAGES {
        d.pfns(0, pages)
    } else if free.end - free.start >= pages {
        (free.start..free.start + pages).collect()
    } else {
        return Err(format!(
            "no {pages} free pages for {request}-byte reads ({free:?})"
        ));
    };
    let start = reference_time();
    let (mut issued, mut done) = (0u64, 0u64);
    let mut in_flight = 0usize;
    let deadline = Deadline::secs(600);
    while done < bytes {
        while in_flight < SEQ_DEPTH && issued < bytes {
            let n = (bytes - issued).min(u64::from(request)) as u32;
            let b = Blocks {
                lba: issued / u64::from(bs),
                count: n / bs,
                block_size: bs,
            };
            let spanned = (n as usize).div_ceil(PAGE as usize);
            d.client
                .read(0, b, DataBuffer::new(&pfns[..spanned], 0, n))
                .map_err(|e| format!("read: {e}"))?;
            issued += u64::from(n);
            in_flight += 1;
        }
        d.pump()?;
        for c in d.done.drain(..) {
            let n = c.result.map_err(|e| format!("read: {e:?}"))?;
            done += u64::from(n);
            in_flight -= 1;
        }
        if deadline.passed() {
            return Err(format!("{done} of {bytes} bytes read"));
        }
    }
    let us = (reference_time() - start).max(1) / 10;
    say!(
        "disk-bench: sequential {} MiB in {us} us: {} MiB/s ({SEQ_DEPTH} x {} KiB in flight)",
        bytes >> 20,
        (bytes * 1_000_000 / us) >> 20,
        request / 1024
    );
    Ok(())
}

/// Mode `disk-bench[:MIB]`: read the disk's first MIB MiB (default 64)
/// sequentially in 128 KiB requests, 8 in flight, then again in 1 MiB
/// requests, then 4 KiB reads at scattered blocks one at a time and 32 in
/// flight, for about a second each, timed on the reference clock; the data
/// is not looked at (every request lands in the same 128 KiB area). Lines:
/// `disk-bench: sequential N MiB in T us: R MiB/s (8 x K KiB in flight)`,
/// `disk-bench: 4 KiB reads at depth D: N in T us: I IOPS`.
pub(crate) fn disk_bench_mode(name: &str, mode: &str, info: &BootInfo) -> ! {
    let mib = match mode.strip_prefix("disk-bench").unwrap_or("") {
        "" => Some(64),
        r => r
            .strip_prefix(':')
            .and_then(parse_u32)
            .filter(|m| (1..=4096).contains(m)),
    };
    let Some(mib) = mib else {
        say!("disk-bench: FAIL bad mode '{mode}' (disk-bench[:MIB], 1-4096)");
        guest::halt_forever()
    };
    say!("testos {name}: disk-bench: {mib} MiB sequential, then 4 KiB reads at depth 1 and 32");
    match disk_bench(u64::from(mib), &free_pages(info)) {
        Ok(()) => say!("disk-bench: PASS"),
        Err(why) => say!("disk-bench: FAIL {why}"),
    }
    guest::halt_forever()
}

fn disk_bench(mib: u64, free: &core::ops::Range<u64>) -> Result<(), String> {
    let mut bus = connect()?;
    let mut d = Disk::open(&mut bus, 64)?;
    let cap = d.identify(true)?;
    let bs = cap.block_size;
    let blocks = cap.blocks().ok_or("capacity overflows")?;
    let bytes = (mib << 20).min(blocks * u64::from(bs));
    // 128 KiB requests, then 1 MiB ones (the root's storvsp allows 1 MiB;
    // its own `disk bench` reads in 1 MiB requests).
    sequential(&mut d, bytes, bs, 128 * 1024, free)?;
    sequential(&mut d, bytes, bs, 1024 * 1024, free)?;
    // 4 KiB reads at scattered 4 KiB-aligned blocks of the same region.
    let span = (bytes / 4096).max(1);
    for depth in [1usize, 32] {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let start = reference_time();
        let (mut reads, mut in_flight) = (0u64, 0usize);
        let deadline = Deadline::secs(60);
        loop {
            let elapsed = reference_time() - start;
            let more = elapsed < 10_000_000 && reads < 200_000;
            while more && in_flight < depth {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let page = [d.pfns(in_flight as u64 % DATA_PAGES, 1)[0]];
                let b = Blocks {
                    lba: (x % span) * 4096 / u64::from(bs),
                    count: 4096 / bs,
                    block_size: bs,
                };
                d.client
                    .read(0, b, DataBuffer::new(&page, 0, 4096))
                    .map_err(|e| format!("read: {e}"))?;
                in_flight += 1;
            }
            if !more && in_flight == 0 {
                break;
            }
            d.pump()?;
            for c in d.done.drain(..) {
                c.result.map_err(|e| format!("read: {e:?}"))?;
                reads += 1;
                in_flight -= 1;
            }
            if deadline.passed() {
                return Err(format!(
                    "4 KiB reads at depth {depth}: {in_flight} never completed"
                ));
            }
        }
        let us = (reference_time() - start).max(1) / 10;
        say!(
            "disk-bench: 4 KiB reads at depth {depth}: {reads} in {us} us: {} IOPS",
            reads * 1_000_000 / us
        );
    }
    Ok(())
}

/// Transaction id of the raw CREATE_SUB_CHANNELS `disk-multi` sends
/// past the client.
const RAW_SUB_CHANNELS_ID: u64 = 0x5C5C_0000_0000_0005;

/// Send CREATE_SUB_CHANNELS `count` on the primary past the client (which
/// refuses more than the host announced): the host's NTSTATUS.
fn raw_create_sub_channels(d: &mut Disk, count: u16) -> Result<u32, String> {
    use vmbus::packet::{Descriptor, FLAG_COMPLETION_REQUESTED, PacketType};
    use zerocopy::{FromBytes, IntoBytes};
    let body = storvsp_protocol::request_packet(
        storvsp_protocol::Operation::CREATE_SUB_CHANNELS,
        &count.to_le_bytes(),
    );
    let desc = Descriptor::new(
        PacketType::DATA_INBAND,
        16,
        body.len(),
        FLAG_COMPLETION_REQUESTED,
        RAW_SUB_CHANNELS_ID,
    );
    let mut p = desc.as_bytes().to_vec();
    p.extend_from_slice(&body);
    let deadline = Deadline::secs(20);
    while !d.ch.send(&p).map_err(|e| format!("{e:?}"))? {
        if deadline.passed() {
            return Err("the ring stayed full".into());
        }
    }
    loop {
        if let Some(n) = d.ch.recv().map_err(|e| format!("{e:?}"))? {
            let (desc, _) = Descriptor::read_from_prefix(&d.ch.buf[..n]).map_err(|_| "short packet")?;
            if desc.transaction_id == RAW_SUB_CHANNELS_ID {
                let payload = &d.ch.buf[desc.payload()];
                return payload
                    .get(8..12)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .ok_or_else(|| format!("completion of {} bytes", payload.len()));
            }
            d.client
                .handle(&d.ch.buf[..n])
                .map_err(|e| format!("host packet: {e}"))?;
        }
        if deadline.passed() {
            return Err("no answer to the raw CREATE_SUB_CHANNELS".into());
        }
    }
}

/// Ask the primary's client for `count` sub-channels: the host's answer.
fn ask_sub_channels(d: &mut Disk, count: u16) -> Result<Result<u16, u32>, String> {
    d.sub_answer = None;
    d.client
        .create_sub_channels(count)
        .map_err(|e| format!("CREATE_SUB_CHANNELS {count}: {e}"))?;
    let deadline = Deadline::secs(20);
    loop {
        d.pump()?;
        if let Some(a) = d.sub_answer.take() {
            return Ok(a);
        }
        if deadline.passed() {
            return Err(format!("no answer to CREATE_SUB_CHANNELS {count}"));
        }
        core::hint::spin_loop();
    }
}

/// The primary's sub-channel offers on the bus: (index, relid,
/// connection), by index.
fn sub_channel_offers(bus: &Bus, relid: u32) -> Vec<(u16, u32, u32)> {
    let offers = bus.client.offers();
    let Some(primary) = offers.get(&relid) else {
        return Vec::new();
    };
    let mut out: Vec<(u16, u32, u32)> = offers
        .values()
        .filter(|o| {
            o.interface_type == primary.interface_type
                && o.interface_instance == primary.interface_instance
                && { o.sub_channel_index } > 0
        })
        .map(|o| (o.sub_channel_index, o.child_relid, o.connection_id))
        .collect();
    out.sort_unstable();
    out
}

/// `disk-multi[:SEED]`: the primary asks for [`SUB_CHANNELS`]
/// sub-channels, opens each offer and spreads the pattern I/O over all
/// three channels (a span written through one channel is read back
/// through another).
fn disk_multi_test(seed: u32) -> Result<(), String> {
    let mut bus = connect()?;
    let d = Disk::open(&mut bus, storvsc::DEFAULT_MAX_IN_FLIGHT)?;
    let (Some(v), Some(props)) = (d.client.version(), d.client.properties()) else {
        return Err("storvsc ready without a version".into());
    };
    say!(
        "disk: storvsc ready, vmstor {}.{}, max_channel_count {}, multi-channel {}",
        v.major(),
        v.minor(),
        props.max_channel_count,
        if props.multi_channel { "yes" } else { "no" }
    );
    let mut disks = vec![d];
    let too_many = props.max_channel_count + 1;
    // The client refuses more than the host announced, locally.
    match disks[0].client.create_sub_channels(too_many) {
        Err(e) => say!("disk: client refused {too_many} sub-channels: {e}"),
        Ok(()) => return Err(format!("the client asked the host for {too_many} sub-channels")),
    }
    // The host refuses them too when asked past the client.
    let status = raw_create_sub_channels(&mut disks[0], too_many)?;
    if status == 0 {
        return Err(format!("the host granted {too_many} sub-channels"));
    }
    say!("disk: host refused CREATE_SUB_CHANNELS {too_many}: status {status:#x}");
    let want = SUB_CHANNELS as u16;
    match ask_sub_channels(&mut disks[0], want)? {
        Ok(n) if n == want => say!("disk: host granted {n} sub-channels"),
        Ok(n) => return Err(format!("asked for {want} sub-channels, granted {n}")),
        Err(s) => return Err(format!("CREATE_SUB_CHANNELS {want} refused: status {s:#x}")),
    }
    // Their offers follow on the bus.
    let primary_relid = disks[0].ch.relid;
    let deadline = Deadline::secs(20);
    while sub_channel_offers(&bus, primary_relid).len() < SUB_CHANNELS {
        bus.until(
            "OFFERCHANNEL of a sub-channel",
            |e| matches!(e, vmbus::client::ClientEvent::Offer(o) if { o.sub_channel_index } > 0),
        )
        .map_err(|e| format!("waiting for the sub-channel offers: {}", String::from(e)))?;
        if deadline.passed() {
            return Err("the sub-channel offers did not come".into());
        }
    }
    let offers = sub_channel_offers(&bus, primary_relid);
    let indices: Vec<u16> = offers.iter().map(|o| o.0).collect();
    if indices != [1, 2] {
        return Err(format!("sub-channel indices {indices:?}, not [1, 2]"));
    }
    for (i, &(index, relid, connection)) in offers.iter().enumerate() {
        let sub = Disk::open_sub_channel(&mut bus, &disks[0], relid, connection, sub_ring_base(i))?;
        say!("disk: sub-channel {index} open on relid {relid}");
        disks.push(sub);
    }
    say!("disk: {SUB_CHANNELS} sub-channels open");
    // Asking for more than the host has left is refused by the host.
    let more = props.max_channel_count - want + 1;
    match ask_sub_channels(&mut disks[0], more)? {
        Err(s) => say!("disk: host refused {more} more sub-channels: status {s:#x}"),
        Ok(n) => return Err(format!("the host granted {n} more sub-channels past its maximum")),
    }
    let cap = disks[0].identify(false)?;
    let blocks = cap.blocks().ok_or("capacity overflows")?;
    say!("disk: capacity {blocks} sectors of {}", cap.block_size);
    let bs = cap.block_size;
    let spans = spread(&cap)?;
    let channels = disks.len();
    // Span i is written through channel i mod 3 and read back through the
    // next one: primary -> sub-channel 1 -> sub-channel 2 -> primary.
    let writer = |i: usize| i % channels;
    let reader = |i: usize| (i + 1) % channels;
    read_spans_on(&mut disks, &spans, bs, writer)?;
    say_prior(&data_area(), &spans, bs);
    write_spans_on(&mut disks, &spans, bs, seed, writer)?;
    for d in disks.iter_mut() {
        let done = d.run(|s| s.synchronize_cache(0))?;
        check_moved(&done, 0, "SYNCHRONIZE CACHE", 0)?;
    }
    say!("disk: synchronize cache done on every channel");
    read_spans_on(&mut disks, &spans, bs, reader)?;
    let n = verify_spans(&disks[0], &spans, bs, seed)?;
    say!("disk: wrote {n} blocks across {channels} channels, read back through another channel, verified");
    let mut text = String::new();
    for (c, d) in disks.iter().enumerate() {
        let sep = if c == 0 { "" } else { ", " };
        let what = if c == 0 {
            String::from("primary")
        } else {
            format!("sub-channel {c}")
        };
        let _ = write!(text, "{sep}{what} {}", d.client.stats().requests);
        if d.client.stats().requests == 0 {
            return Err(format!("no request went through {what}"));
        }
    }
    say!("disk: requests per channel: {text}");
    Ok(())
}

/// `disk: prior contents of N blocks: …` for the spans just read.
fn say_prior(data: &StaticMemory, spans: &[Span], bs: u32) {
    let total: u64 = spans.iter().map(|s| u64::from(s.count)).sum();
    let (mut zero, mut pattern, mut other) = (0u64, 0u64, 0u64);
    let mut seeds: Vec<u32> = Vec::new();
    let mut got = vec![0u8; bs as usize];
    for s in spans {
        for i in 0..s.count {
            let _ = data.read_at(s.at(i, bs), &mut got);
            match classify(&got) {
                Found::Zero => zero += 1,
                Found::Pattern(sd) => {
                    pattern += 1;
                    if !seeds.contains(&sd) {
                        seeds.push(sd);
                    }
                }
                Found::Other => other += 1,
            }
        }
    }
    let mut text = String::new();
    for s in &seeds {
        let _ = write!(text, " {s:#x}");
    }
    say!(
        "disk: prior contents of {total} blocks: {zero} zero, {pattern} pattern (seeds:{}), {other} other",
        if text.is_empty() { " none" } else { &text }
    );
}

/// A decimal or 0x-hex u32.
pub(crate) fn parse_u32(s: &str) -> Option<u32> {
    match s.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

// ---------------------------------------------------------------------------
// The NIC
// ---------------------------------------------------------------------------

/// A netvsc channel, up.
pub(crate) struct Nic {
    pub(crate) ch: DevChannel,
    pub(crate) client: Netvsc,
    pub(crate) recv: StaticMemory,
    pub(crate) send: StaticMemory,
    pub(crate) pending: alloc::collections::VecDeque<Vec<u8>>,
    pub(crate) frames: alloc::collections::VecDeque<Vec<u8>>,
    pub(crate) mac: [u8; 6],
    /// Host packets the client refused (logged up to a few).
    pub(crate) host_errors: u64,
}

impl Nic {
    /// Open the NIC's channel, hand it the receive and send buffers by
    /// GPADL and bring it up.
    pub(crate) fn open(bus: &mut Bus) -> Result<Self, String> {
        let (ch, _) = DevChannel::open(bus, &NIC_INTERFACE_GUID, net_ring_base())?;
        let (recv, send) = (recv_area(), send_area());
        let pages =
            |m: &StaticMemory| -> Vec<u64> { (0..m.len / PAGE).map(|i| (m.base >> 12) + i).collect() };
        let (rh, rs) = bus.gpadl(ch.relid, &pages(&recv)).map_err(String::from)?;
        let (sh, ss) = bus.gpadl(ch.relid, &pages(&send)).map_err(String::from)?;
        if rs != 0 || ss != 0 {
            return Err(format!("buffer GPADLs: status {rs:#x}, {ss:#x}"));
        }
        let config = NetvscConfig::new(rh, recv.len as u32, sh, send.len as u32);
        let mut nic = Self {
            ch,
            client: Netvsc::new(config),
            recv,
            send,
            pending: Default::default(),
            frames: Default::default(),
            mac: [0; 6],
            host_errors: 0,
        };
        nic.client.start().map_err(|e| format!("{e}"))?;
        let deadline = Deadline::secs(20);
        loop {
            if let Some(e) = nic.pump()? {
                return Err(e);
            }
            if nic.client.is_ready() {
                nic.mac = nic.client.mac().unwrap_or([0; 6]);
                return Ok(nic);
            }
            if nic.client.has_failed() {
                return Err("netvsc bring-up failed".into());
            }
            if deadline.passed() {
                return Err("netvsc bring-up: no answer".into());
            }
            core::hint::spin_loop();
        }
    }

    /// Move packets both ways once; received frames go to `frames`. A
    /// bring-up failure comes back as `Some(why)`.
    pub(crate) fn pump(&mut self) -> Result<Option<String>, String> {
        self.flush()?;
        for _ in 0..64 {
            let Some(n) = self.ch.recv().map_err(|e| format!("host-to-guest ring: {e:?}"))? else {
                break;
            };
            let buffers = Buffers {
                receive: &self.recv,
                send: &self.send,
            };
            if let Err(e) = self.client.handle(&self.ch.buf[..n], &buffers) {
                self.host_errors += 1;
                if self.host_errors <= 3 {
                    say!("net: refused a host packet: {e}");
                }
            }
            self.flush()?;
        }
        let mut failed = None;
        while let Some(e) = self.client.poll_event() {
            match e {
                netvsc::Event::Frame(f) => self.frames.push_back(f),
                netvsc::Event::InitFailed(e) => failed = Some(format!("bring-up: {e}")),
                netvsc::Event::Link(up) => say!("net: link {}", if up { "up" } else { "down" }),
                _ => {}
            }
        }
        self.flush()?;
        Ok(failed)
    }

    /// Write queued packets while the guest-to-host ring has room.
    pub(crate) fn flush(&mut self) -> Result<(), String> {
        while let Some(p) = self.client.poll_transmit() {
            self.pending.push_back(p);
        }
        while let Some(p) = self.pending.front() {
            if !self
                .ch
                .send(p)
                .map_err(|e| format!("guest-to-host ring: {e:?}"))?
            {
                break;
            }
            self.pending.pop_front();
        }
        Ok(())
    }

    /// Send one frame (padded to 60 bytes), waiting for a free send
    /// section if all are in flight.
    pub(crate) fn send_frame(&mut self, frame: &[u8]) -> Result<(), String> {
        let mut f = frame.to_vec();
        if f.len() < 60 {
            f.resize(60, 0);
        }
        let deadline = Deadline::secs(10);
        loop {
            let buffers = Buffers {
                receive: &self.recv,
                send: &self.send,
            };
            match self.client.send_frame(&f, &buffers) {
                Ok(()) => return self.flush(),
                Err(netvsc::NetvscError::NoSendSection) if !deadline.passed() => {
                    self.pump()?;
                }
                Err(e) => return Err(format!("send: {e}")),
            }
        }
    }
}

const ETH_ARP: u16 = 0x0806;
const ETH_IPV4: u16 = 0x0800;
const BROADCAST: [u8; 6] = [0xFF; 6];
/// The identifier of the echo requests `net-ping` sends.
const PING_ID: u16 = 0x7E57;

/// RFC 1071 checksum of `data`.
pub(crate) fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An Ethernet/IPv4 ARP packet (RFC 826).
fn arp(op: u16, sha: [u8; 6], spa: [u8; 4], tha: [u8; 6], tpa: [u8; 4]) -> [u8; 28] {
    let mut a = [0u8; 28];
    a[0..2].copy_from_slice(&1u16.to_be_bytes());
    a[2..4].copy_from_slice(&ETH_IPV4.to_be_bytes());
    a[4] = 6;
    a[5] = 4;
    a[6..8].copy_from_slice(&op.to_be_bytes());
    a[8..14].copy_from_slice(&sha);
    a[14..18].copy_from_slice(&spa);
    a[18..24].copy_from_slice(&tha);
    a[24..28].copy_from_slice(&tpa);
    a
}

/// An IPv4 packet from `src` to `dst` carrying ICMP `icmp` (its checksum
/// is filled in here).
fn ipv4_icmp(src: [u8; 4], dst: [u8; 4], id: u16, icmp: &mut [u8]) -> Vec<u8> {
    icmp[2..4].fill(0);
    let c = checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let total = 20 + icmp.len();
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    h[4..6].copy_from_slice(&id.to_be_bytes());
    h[8] = 64;
    h[9] = 1;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    let mut p = h.to_vec();
    p.extend_from_slice(icmp);
    p
}

fn ip_text(ip: [u8; 4]) -> String {
    format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3])
}

pub(crate) fn parse_ip(s: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split('.');
    for o in out.iter_mut() {
        *o = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// The test OS's IPv4 host: one address, ARP and ICMP echo.
pub(crate) struct Host {
    pub(crate) ip: [u8; 4],
    pub(crate) mac: [u8; 6],
    /// (IPv4, MAC) learnt from ARP.
    pub(crate) neighbours: Vec<([u8; 4], [u8; 6])>,
    /// Sequence numbers of the echo replies to our requests.
    pub(crate) replies: Vec<u16>,
    pub(crate) echo_answered: u64,
    pub(crate) arp_answered: u64,
    pub(crate) ip_id: u16,
}

impl Host {
    pub(crate) fn new(ip: [u8; 4], mac: [u8; 6]) -> Self {
        Self {
            ip,
            mac,
            neighbours: Vec::new(),
            replies: Vec::new(),
            echo_answered: 0,
            arp_answered: 0,
            ip_id: 1,
        }
    }

    pub(crate) fn gratuitous_arp(&self) -> Vec<u8> {
        ethernet(
            BROADCAST,
            self.mac,
            ETH_ARP,
            &arp(1, self.mac, self.ip, [0; 6], self.ip),
        )
    }

    pub(crate) fn arp_request(&self, target: [u8; 4]) -> Vec<u8> {
        ethernet(
            BROADCAST,
            self.mac,
            ETH_ARP,
            &arp(1, self.mac, self.ip, [0; 6], target),
        )
    }

    pub(crate) fn neighbour(&self, ip: [u8; 4]) -> Option<[u8; 6]> {
        self.neighbours.iter().find(|(i, _)| *i == ip).map(|(_, m)| *m)
    }

    pub(crate) fn echo_request(&mut self, dst_mac: [u8; 6], dst: [u8; 4], seq: u16) -> Vec<u8> {
        let mut icmp = vec![8u8, 0, 0, 0];
        icmp.extend_from_slice(&PING_ID.to_be_bytes());
        icmp.extend_from_slice(&seq.to_be_bytes());
        icmp.extend_from_slice(b"hv-rs testos echo request 0123456789");
        self.ip_id = self.ip_id.wrapping_add(1);
        let ip = ipv4_icmp(self.ip, dst, self.ip_id, &mut icmp);
        ethernet(dst_mac, self.mac, ETH_IPV4, &ip)
    }

    /// Take one received frame; the answer to send, if any.
    pub(crate) fn on_frame(&mut self, f: &[u8]) -> Option<Vec<u8>> {
        let ethertype = u16::from_be_bytes([*f.get(12)?, *f.get(13)?]);
        let src: [u8; 6] = f.get(6..12)?.try_into().ok()?;
        let body = f.get(14..)?;
        match ethertype {
            ETH_ARP => self.on_arp(body),
            ETH_IPV4 => self.on_ipv4(src, body),
            _ => None,
        }
    }

    fn on_arp(&mut self, a: &[u8]) -> Option<Vec<u8>> {
        let a = a.get(..28)?;
        if a[0..2] != [0, 1] || a[2..4] != ETH_IPV4.to_be_bytes() || a[4] != 6 || a[5] != 4 {
            return None;
        }
        let op = u16::from_be_bytes([a[6], a[7]]);
        let sha: [u8; 6] = a[8..14].try_into().ok()?;
        let spa: [u8; 4] = a[14..18].try_into().ok()?;
        let tpa: [u8; 4] = a[24..28].try_into().ok()?;
        // RFC 826: merge the sender's mapping.
        if spa != [0; 4] && sha[0] & 1 == 0 {
            match self.neighbours.iter_mut().find(|(i, _)| *i == spa) {
                Some(n) => n.1 = sha,
                None => self.neighbours.push((spa, sha)),
            }
        }
        if op == 1 && tpa == self.ip && spa != self.ip {
            self.arp_answered += 1;
            return Some(ethernet(
                sha,
                self.mac,
                ETH_ARP,
                &arp(2, self.mac, self.ip, sha, spa),
            ));
        }
        None
    }

    fn on_ipv4(&mut self, src_mac: [u8; 6], p: &[u8]) -> Option<Vec<u8>> {
        let ihl = usize::from(*p.first()? & 0x0F) * 4;
        if p[0] >> 4 != 4 || ihl < 20 {
            return None;
        }
        let header = p.get(..ihl)?;
        if checksum(header) != 0 {
            return None;
        }
        let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
        let packet = p.get(..total)?;
        // Fragments are not reassembled: only whole datagrams.
        if u16::from_be_bytes([p[6], p[7]]) & 0x3FFF != 0 || p[9] != 1 {
            return None;
        }
        let src: [u8; 4] = p[12..16].try_into().ok()?;
        let dst: [u8; 4] = p[16..20].try_into().ok()?;
        if dst != self.ip {
            return None;
        }
        let icmp = packet.get(ihl..)?;
        if icmp.len() < 8 || checksum(icmp) != 0 {
            return None;
        }
        match (icmp[0], icmp[1]) {
            (8, 0) => {
                let mut reply = icmp.to_vec();
                reply[0] = 0;
                self.ip_id = self.ip_id.wrapping_add(1);
                self.echo_answered += 1;
                if self.echo_answered <= 8 {
                    say!(
                        "net: echo request {} from {}, answered",
                        u16::from_be_bytes([icmp[6], icmp[7]]),
                        ip_text(src)
                    );
                }
                let ip = ipv4_icmp(self.ip, src, self.ip_id, &mut reply);
                Some(ethernet(src_mac, self.mac, ETH_IPV4, &ip))
            }
            (0, 0) if icmp[4..6] == PING_ID.to_be_bytes() => {
                let seq = u16::from_be_bytes([icmp[6], icmp[7]]);
                if !self.replies.contains(&seq) {
                    self.replies.push(seq);
                }
                None
            }
            _ => None,
        }
    }
}

/// Pump the NIC once and answer what the frames ask for.
pub(crate) fn serve_once(nic: &mut Nic, host: &mut Host) -> Result<(), String> {
    if let Some(e) = nic.pump()? {
        return Err(e);
    }
    while let Some(f) = nic.frames.pop_front() {
        if let Some(answer) = host.on_frame(&f) {
            nic.send_frame(&answer)?;
        }
    }
    Ok(())
}

/// Bring the NIC up at `ip` (None: derived from the MAC) and announce it.
pub(crate) fn net_up(name: &str, ip: Option<[u8; 4]>) -> Result<(Nic, Host), String> {
    let mut bus = connect()?;
    let mut nic = Nic::open(&mut bus)?;
    let m = nic.mac;
    let ip = ip.unwrap_or([10, 0, 2, 100 + m[5] % 100]);
    say!(
        "testos {name}: net: up, mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, mtu {}, link {}",
        m[0],
        m[1],
        m[2],
        m[3],
        m[4],
        m[5],
        nic.client.mtu(),
        if nic.client.link_up() { "up" } else { "down" }
    );
    let host = Host::new(ip, m);
    nic.send_frame(&host.gratuitous_arp())?;
    say!("net: address {} announced (gratuitous ARP)", ip_text(ip));
    Ok((nic, host))
}

/// Resolve `peer` and send it `count` echo requests: the replies.
pub(crate) fn ping(nic: &mut Nic, host: &mut Host, peer: [u8; 4], count: u16) -> Result<usize, String> {
    // The peer may come up after us: ask again every ~0.3 s for a while.
    let mut mac = None;
    for _ in 0..150 {
        nic.send_frame(&host.arp_request(peer))?;
        let until = kernel_x86::arch::rdtsc() + 300_000_000;
        while kernel_x86::arch::rdtsc() < until {
            serve_once(nic, host)?;
            if let Some(m) = host.neighbour(peer) {
                mac = Some(m);
                break;
            }
        }
        if mac.is_some() {
            break;
        }
    }
    let mac = mac.ok_or_else(|| format!("ARP did not resolve {}", ip_text(peer)))?;
    for seq in 1..=count {
        let frame = host.echo_request(mac, peer, seq);
        nic.send_frame(&frame)?;
        let deadline = Deadline::secs(3);
        while !host.replies.contains(&seq) && !deadline.passed() {
            serve_once(nic, host)?;
        }
    }
    // Late replies still count (the root moves frames once a round).
    let deadline = Deadline::secs(5);
    while host.replies.len() < usize::from(count) && !deadline.passed() {
        serve_once(nic, host)?;
    }
    Ok(host.replies.len())
}

/// `net[:IP]` and `net-ping:IP,PEER`.
pub(crate) fn net_mode(name: &str, mode: &str) -> ! {
    let parsed = if let Some(rest) = mode.strip_prefix("net-ping:") {
        rest.split_once(',')
            .and_then(|(a, b)| Some((Some(parse_ip(a)?), Some(parse_ip(b)?))))
    } else if let Some(rest) = mode.strip_prefix("net:") {
        parse_ip(rest).map(|a| (Some(a), None))
    } else {
        Some((None, None))
    };
    let Some((ip, peer)) = parsed else {
        say!("net: FAIL bad mode '{mode}' (net[:IP] or net-ping:IP,PEER)");
        guest::halt_forever()
    };
    let (mut nic, mut host) = match net_up(name, ip) {
        Ok(x) => x,
        Err(why) => {
            say!("net: FAIL {why}");
            guest::halt_forever()
        }
    };
    if let Some(peer) = peer {
        match ping(&mut nic, &mut host, peer, 3) {
            Ok(n) => say!("net: {n}/3 replies from {}", ip_text(peer)),
            Err(why) => say!("net: FAIL {why}"),
        }
    }
    say!("net: serving ARP and ICMP echo at {}", ip_text(host.ip));
    loop {
        if let Err(why) = serve_once(&mut nic, &mut host) {
            say!("net: FAIL {why}");
            guest::halt_forever()
        }
        core::hint::spin_loop();
    }
}
