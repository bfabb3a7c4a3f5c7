//! The channel half a device is handed at open: a reader over the guest's
//! guest-to-host ring and a writer over its host-to-guest ring, with the
//! flow control, signalling rules, work budget and broken-ring detection
//! every device needs. Every index and length the guest wrote is checked by
//! `vmbus::ring`; a ring the guest corrupted stops the channel, nothing else.

use crate::{GuestSignal, InspectSink, PollResult};
use alloc::boxed::Box;
use alloc::format;
use alloc::vec::Vec;
use vmbus::memory::SharedMemory;
use vmbus::packet::{Descriptor, PacketType};
use vmbus::ring::{Reader, Ring, RingError, RingState, Writer};
use zerocopy::IntoBytes;

/// Counters a channel keeps (rendered by [`Channel::inspect`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelStats {
    /// Packets written to the guest.
    pub packets: u64,
    /// Polls that found work (after the guest signalled, or a budget cut).
    pub signals_received: u64,
    /// Signals delivered to the guest.
    pub signals_sent: u64,
    /// Times a packet had to wait for the guest to make room.
    pub stalls: u64,
    /// Polls that ended on the work budget with packets left.
    pub budget_exhausted: u64,
}

/// A packet the guest sent, as a device's handler sees it.
#[derive(Debug, Clone, Copy)]
pub struct IncomingPacket<'a> {
    /// Its type.
    pub kind: PacketType,
    /// Its descriptor flags.
    pub flags: u16,
    /// Its transaction id.
    pub transaction_id: u64,
    /// The descriptor's data offset in 8-byte units from the packet's start
    /// (at least 2, checked by the ring): the in-band data starts at
    /// `offset8 * 8 - 16` in [`Self::after_descriptor`]; what comes before
    /// it is the extended header (a GPA-direct packet's range list).
    pub offset8: u16,
    /// The in-band data: the packet's bytes from `offset8 * 8` (as much of
    /// them as the packet holds).
    pub payload: &'a [u8],
    /// Everything after the 16-byte descriptor: the extended header (if
    /// any), then the in-band data. Devices whose packets carry a header
    /// (GPA-direct ranges) parse this; others use [`Self::payload`].
    pub after_descriptor: &'a [u8],
}

/// The bytes of an in-band packet carrying `payload` (descriptor first).
pub fn inband_packet(transaction_id: u64, payload: &[u8]) -> Vec<u8> {
    let d = Descriptor::new(PacketType::DATA_INBAND, 16, payload.len(), 0, transaction_id);
    let mut bytes = Vec::with_capacity(16 + payload.len());
    bytes.extend_from_slice(d.as_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// Where the guest's RAM lies for the host's devices, so a backend can
/// read straight into the guest's pages (storvsp's zero-copy reads) instead
/// of into a host buffer that is then copied. Only the host can answer: the
/// root knows the frames it lent the child.
pub trait GuestDma {
    /// The host-physical address of guest-physical `gpa ..gpa + len` if it
    /// is one physically contiguous run of the guest's own RAM that the
    /// host's devices may DMA to; `None` otherwise (outside the guest's
    /// RAM, not contiguous, or no such access).
    fn dma_address(&self, gpa: u64, len: u64) -> Option<u64>;
}

/// The guest's GPADLs as the host knows them, for devices the guest hands
/// buffers by GPADL handle after the channel opened (netvsc's receive and
/// send buffers, NVSP `SEND_RECEIVE_BUFFER` / `SEND_SEND_BUFFER`, Linux
/// `netvsc_init_buf`). Looked up live: the answer reflects the GPADLs the
/// guest has created (and not torn down) at the time of the call.
pub trait GpadlMap {
    /// The guest page numbers (4 KiB pages, in buffer order) of the GPADL
    /// `handle` the guest created for this channel, or `None` if it has no
    /// such GPADL. The buffer is `pages.len() * 4096` bytes from offset 0 of
    /// its first page (Linux creates GPADLs of whole, page-aligned buffers);
    /// the pages are the guest's claim, checked on access by the guest RAM.
    fn pages(&self, handle: u32) -> Option<Vec<u64>>;
}

/// One open channel: the guest's two rings and what the host keeps about them.
pub struct Channel<M: SharedMemory> {
    reader: Reader<M>,
    writer: Writer<M>,
    signal: Box<dyn GuestSignal>,
    /// A packet the host-to-guest ring had no room for: written first on the
    /// next poll, and nothing more is read until it is (flow control: the
    /// guest signals once it has read enough, per pending_send_sz).
    held: Option<Vec<u8>>,
    stats: ChannelStats,
    broken: Option<RingError>,
    /// The guest's RAM (offset = guest-physical address), for devices whose
    /// packets describe data by GPA (GPA-direct ranges, storvsc's SRBs);
    /// `None` when the host gives the channel only its rings.
    guest_ram: Option<M>,
    /// The guest's GPADLs, for devices handed buffers by GPADL handle;
    /// `None` when the host gives the channel no GPADL lookup.
    gpadls: Option<Box<dyn GpadlMap>>,
    /// Host-physical addresses of the guest's RAM for device DMA; `None`:
    /// devices copy.
    guest_dma: Option<Box<dyn GuestDma>>,
}

impl<M: SharedMemory> Channel<M> {
    /// A channel reading `guest_to_host` and writing `host_to_guest` (each a
    /// control page and data area), signalling the guest through `signal`.
    pub fn new(guest_to_host: M, host_to_guest: M, signal: Box<dyn GuestSignal>) -> Result<Self, RingError> {
        Ok(Self {
            reader: Reader::new(Ring::new(guest_to_host)?),
            writer: Writer::new(Ring::new(host_to_guest)?),
            signal,
            held: None,
            stats: ChannelStats::default(),
            broken: None,
            guest_ram: None,
            gpadls: None,
            guest_dma: None,
        })
    }

    /// The same channel with [`GuestDma`] for the guest's RAM.
    pub fn with_guest_dma(mut self, dma: Box<dyn GuestDma>) -> Self {
        self.guest_dma = Some(dma);
        self
    }

    /// Host-physical addresses of the guest's RAM for DMA, if the host gave
    /// them.
    pub fn guest_dma(&self) -> Option<&dyn GuestDma> {
        self.guest_dma.as_deref()
    }

    /// The same channel with access to the guest's RAM (`ram`'s offset 0 is
    /// guest-physical address 0; every access is bounds-checked by `ram`).
    pub fn with_guest_ram(mut self, ram: M) -> Self {
        self.guest_ram = Some(ram);
        self
    }

    /// The guest's RAM, if the host gave it: where a device reads and writes
    /// the data a GPA-direct packet describes. Guest-physical addresses are
    /// offsets; one outside the guest's RAM is an `OutOfBounds` error.
    pub fn guest_ram(&self) -> Option<&M> {
        self.guest_ram.as_ref()
    }

    /// The same channel with a lookup of the guest's GPADLs (see
    /// [`GpadlMap`]).
    pub fn with_gpadls(mut self, gpadls: Box<dyn GpadlMap>) -> Self {
        self.gpadls = Some(gpadls);
        self
    }

    /// The guest's GPADLs, if the host gave a lookup.
    pub fn gpadls(&self) -> Option<&dyn GpadlMap> {
        self.gpadls.as_deref()
    }

    /// Both rings' state: (guest-to-host, host-to-guest).
    pub fn states(&self) -> (Option<RingState>, Option<RingState>) {
        (self.reader.ring().state().ok(), self.writer.ring().state().ok())
    }

    /// Its counters.
    pub fn stats(&self) -> ChannelStats {
        self.stats
    }

    /// Why the channel stopped, if the guest broke its rings.
    pub fn broken(&self) -> Option<RingError> {
        self.broken
    }

    /// Whether a packet waits for room in the host-to-guest ring.
    pub fn holding(&self) -> bool {
        self.held.is_some()
    }

    /// Rings, counters and the stop reason, in the order listings show
    /// them; `packets` is what the device calls the packets it writes
    /// ("packets echoed").
    pub fn inspect(&self, out: &mut dyn InspectSink, packets: &'static str) {
        let (up, down) = self.states();
        out.ring("guest_to_host", "guest->host", up);
        out.ring("host_to_guest", "host->guest", down);
        out.counter("packets", packets, self.stats.packets);
        out.counter(
            "signals_received",
            "signals received",
            self.stats.signals_received,
        );
        out.counter("signals_sent", "signals sent", self.stats.signals_sent);
        out.counter("stalls", "stalls", self.stats.stalls);
        out.counter(
            "budget_exhausted",
            "polls cut by the work budget",
            self.stats.budget_exhausted,
        );
        match self.broken {
            Some(e) => out.text("broken", "stopped", &format!("{e:?}")),
            None => out.text("broken", "stopped", ""),
        }
    }

    /// Send `packet` (a whole packet, descriptor first) on the device's own
    /// initiative (a host that speaks first). Written at once if there is
    /// room, the guest signalled where the ring rules say so; on a full
    /// ring it is held and goes first on a later [`Self::poll`] (flow
    /// control as for answers). Refused, and handed back, while another
    /// packet is held or after the channel stopped.
    pub fn send(&mut self, packet: Vec<u8>) -> Result<PollResult, Vec<u8>> {
        if self.broken.is_some() || self.held.is_some() {
            return Err(packet);
        }
        match self.write_or_hold(packet) {
            Ok(Some(true)) => {
                let signalled = self.signal.signal();
                if signalled {
                    self.stats.signals_sent += 1;
                }
                Ok(PollResult {
                    signalled,
                    ..PollResult::default()
                })
            }
            Ok(_) => Ok(PollResult::default()),
            Err(e) => {
                self.broken = Some(e);
                Ok(PollResult {
                    broke: Some(e),
                    ..PollResult::default()
                })
            }
        }
    }

    /// Read up to `budget` waiting packets (at least one), giving each to
    /// `handler`; what it returns (a whole packet, descriptor first) is
    /// written back. The guest is signalled where the ring rules say so. A
    /// ring the guest corrupted stops the channel: reported once in
    /// [`PollResult::broke`], and later polls do nothing.
    pub fn poll(
        &mut self,
        budget: u32,
        handler: &mut dyn FnMut(&IncomingPacket<'_>) -> Option<Vec<u8>>,
    ) -> PollResult {
        if self.broken.is_some() {
            return PollResult::default();
        }
        match self.drain(budget.max(1), handler) {
            Ok(drained) => {
                if drained.found {
                    self.stats.signals_received += 1;
                }
                if drained.cut {
                    self.stats.budget_exhausted += 1;
                }
                let signalled = drained.signal && self.signal.signal();
                if signalled {
                    self.stats.signals_sent += 1;
                }
                PollResult {
                    signalled,
                    more: drained.cut,
                    ..PollResult::default()
                }
            }
            Err(e) => {
                self.broken = Some(e);
                PollResult {
                    broke: Some(e),
                    ..PollResult::default()
                }
            }
        }
    }

    /// Write the held packet if the ring has room for it now, without
    /// reading anything (a device that has stopped reading still owes the
    /// guest its answers); the signal and a broken ring go into `result`.
    pub fn flush_held(&mut self, result: &mut PollResult) {
        if self.broken.is_some() {
            return;
        }
        let Some(bytes) = self.held.take() else {
            return;
        };
        let written = self.write_or_hold(bytes).and_then(|w| {
            w.map(|s| self.writer.set_pending_send_size(0).map(|()| s))
                .transpose()
        });
        match written {
            Ok(Some(true)) => {
                if self.signal.signal() {
                    self.stats.signals_sent += 1;
                    result.signalled = true;
                }
            }
            Ok(_) => {}
            Err(e) => {
                self.broken = Some(e);
                result.broke = Some(e);
            }
        }
    }

    /// Write one packet; on a full ring keep it and ask the guest (through
    /// pending_send_sz, Linux `hv_pkt_iter_close`) to signal when there is
    /// room. Returns Some(signal) if written, None if held.
    fn write_or_hold(&mut self, bytes: Vec<u8>) -> Result<Option<bool>, RingError> {
        match self.writer.write(&[&bytes]) {
            Ok(s) => {
                if self.held.is_none() {
                    self.writer.set_pending_send_size(0)?;
                }
                self.stats.packets += 1;
                Ok(Some(s.0))
            }
            Err(RingError::Full { needed, .. }) => {
                self.stats.stalls += 1;
                self.writer.set_pending_send_size(needed as u32)?;
                self.held = Some(bytes);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Write a held packet, then read up to `budget` packets; nothing is
    /// counted here (the callers count polls, not reads).
    fn drain(
        &mut self,
        budget: u32,
        handler: &mut dyn FnMut(&IncomingPacket<'_>) -> Option<Vec<u8>>,
    ) -> Result<Drained, RingError> {
        let mut signal = false;
        let mut found = false;
        let mut cut = false;
        if let Some(bytes) = self.held.take() {
            found = true;
            match self.write_or_hold(bytes)? {
                Some(s) => {
                    signal |= s;
                    self.writer.set_pending_send_size(0)?;
                }
                None => {
                    return Ok(Drained {
                        signal: false,
                        found,
                        read: false,
                        cut,
                    });
                }
            }
        }
        let mut read = false;
        let mut buf = [0u8; 4096];
        let mut left = budget;
        while let Some((packet, read_signal)) = self.reader.read(&mut buf)? {
            found = true;
            read = true;
            left -= 1;
            if left == 0 {
                // Out of budget: whatever follows waits for the next turn.
                cut = true;
            }
            signal |= read_signal.0;
            let range = packet.descriptor.payload();
            let incoming = IncomingPacket {
                kind: packet.kind,
                flags: packet.descriptor.flags,
                transaction_id: packet.descriptor.transaction_id,
                offset8: packet.descriptor.offset8,
                payload: buf.get(range.start..range.end.min(packet.len)).unwrap_or(&[]),
                after_descriptor: buf.get(16..range.end.min(packet.len)).unwrap_or(&[]),
            };
            if let Some(reply) = handler(&incoming) {
                match self.write_or_hold(reply)? {
                    Some(s) => signal |= s,
                    None => break,
                }
            }
            if left == 0 {
                break;
            }
        }
        Ok(Drained {
            signal,
            found,
            read,
            cut,
        })
    }

    /// Tell the guest whether it must signal the packets it writes, at the
    /// end of a device's poll: `result.more` or `result.awaiting_device`
    /// (the device will be polled again anyway: work in flight whose end
    /// earns it a poll) sets the
    /// guest-to-host ring's `interrupt_mask`, which the guest's writers
    /// honour (Linux `hv_signal_on_write`; the reader's side is Linux
    /// `hv_begin_read`/`hv_end_read`). A child's signal ends its dispatch,
    /// so each one spared is a world switch. Otherwise the mask is cleared
    /// and the ring looked at again: a packet written while it was set was
    /// not signalled, so it sets `result.more` (poll again). A guest that
    /// ignores the mask only signals more than it needs to; one that
    /// rewrites it changes only whether it signals itself.
    pub fn guest_signals(&mut self, result: &mut PollResult) {
        if self.broken.is_some() || result.broke.is_some() {
            return;
        }
        let waiting = if result.more || result.awaiting_device {
            self.reader.begin_read().map(|()| false)
        } else {
            self.reader.end_read()
        };
        match waiting {
            Ok(waiting) => result.more |= waiting,
            Err(e) => {
                self.broken = Some(e);
                result.broke = Some(e);
            }
        }
    }

    /// Whether the guest-to-host ring holds packets not yet read.
    pub fn packets_waiting(&self) -> bool {
        self.states().0.is_some_and(|s| s.read_index != s.write_index)
    }

    /// [`Self::send`] for a device inside its poll: the signal and a
    /// broken ring go into `result`; a refused packet (another is held, or
    /// the channel stopped) is handed back.
    pub fn send_within(&mut self, packet: Vec<u8>, result: &mut PollResult) -> Result<(), Vec<u8>> {
        let r = self.send(packet)?;
        result.signalled |= r.signalled;
        if r.broke.is_some() {
            result.broke = r.broke;
        }
        Ok(())
    }

    /// The poll of a device whose packets need more than a handler inside
    /// [`Self::poll`] can have: the guest's RAM, DMA and GPADLs (which the
    /// channel lends only between reads) and the channel itself to send
    /// with. Up to `budget` packets (at least one), one at a time:
    /// [`PacketWork::read`] sees the packet inside the ring read (and may
    /// answer it at once, as a [`Self::poll`] handler does), then
    /// [`PacketWork::work`] gets the channel and what `read` kept. `work` is
    /// also called once after a read that found no packet (a device with
    /// queued output flushes it there). Stops at an empty ring, a held
    /// packet (the guest signals through pending_send_sz when it has made
    /// room) or a broken ring. One poll that found work counts one
    /// `signals_received`; a poll cut by the budget with packets left
    /// counts one `budget_exhausted` and asks to be polled again (`more`).
    pub fn poll_each<W: PacketWork<M>>(&mut self, budget: u32, w: &mut W) -> PollResult {
        let mut result = PollResult::default();
        if self.broken.is_some() {
            return result;
        }
        let budget = budget.max(1);
        let mut handled = 0u32;
        let mut found = false;
        while handled < budget {
            let mut item = None;
            let drained = self.drain(1, &mut |p| {
                let (reply, kept) = w.read(p);
                item = kept;
                reply
            });
            let drained = match drained {
                Ok(d) => d,
                Err(e) => {
                    self.broken = Some(e);
                    result.broke = Some(e);
                    break;
                }
            };
            if drained.signal && self.signal.signal() {
                self.stats.signals_sent += 1;
                result.signalled = true;
            }
            found |= drained.found;
            w.work(self, item, &mut result);
            if !drained.read || result.broke.is_some() {
                break;
            }
            handled += 1;
            if self.holding() {
                break;
            }
        }
        if found {
            self.stats.signals_received += 1;
        }
        if handled == budget && !self.holding() && result.broke.is_none() && self.packets_waiting() {
            result.more = true;
            self.stats.budget_exhausted += 1;
        }
        result
    }
}

/// What one read of [`Channel::drain`] came to.
struct Drained {
    /// The guest must be signalled (a write or read said so).
    signal: bool,
    /// A held packet was written or a packet read: the poll found work.
    found: bool,
    /// A packet was read.
    read: bool,
    /// The budget ran out on a packet.
    cut: bool,
}

/// A device's two halves of [`Channel::poll_each`].
pub trait PacketWork<M: SharedMemory> {
    /// What `read` keeps of a packet for `work`.
    type Item;
    /// Inside the ring read: an answer to write at once (a whole packet,
    /// descriptor first) and what to keep for [`Self::work`].
    fn read(&mut self, packet: &IncomingPacket<'_>) -> (Option<Vec<u8>>, Option<Self::Item>);
    /// After the read, with the channel (its guest RAM, DMA, GPADLs and
    /// [`Channel::send_within`]): `item` is what `read` kept, `None` when
    /// no packet was read or `read` kept nothing.
    fn work(&mut self, channel: &mut Channel<M>, item: Option<Self::Item>, result: &mut PollResult);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;
    use vmbus::memory::AtomicMemory;
    use vmbus::ring::{CONTROL_SIZE, FEAT_PENDING_SEND_SZ, WRITE_INDEX};

    /// Counts the signals the guest got.
    struct Counter(Rc<Cell<u32>>);

    impl GuestSignal for Counter {
        fn signal(&mut self) -> bool {
            self.0.set(self.0.get() + 1);
            true
        }
    }

    /// The guest's side of a channel over two rings of `up` and `down` data bytes.
    struct Guest {
        up: &'static AtomicMemory,
        down: &'static AtomicMemory,
        signals: Rc<Cell<u32>>,
    }

    impl Guest {
        fn new(up: u64, down: u64) -> (Self, Channel<&'static AtomicMemory>) {
            let up: &'static AtomicMemory = Box::leak(Box::new(AtomicMemory::new(CONTROL_SIZE + up)));
            let down: &'static AtomicMemory = Box::leak(Box::new(AtomicMemory::new(CONTROL_SIZE + down)));
            Ring::new(up).unwrap().reset(FEAT_PENDING_SEND_SZ).unwrap();
            Ring::new(down).unwrap().reset(FEAT_PENDING_SEND_SZ).unwrap();
            let signals = Rc::new(Cell::new(0));
            let channel = Channel::new(up, down, Box::new(Counter(signals.clone()))).unwrap();
            (Self { up, down, signals }, channel)
        }

        fn send(&self, kind: PacketType, id: u64, payload: &[u8]) {
            let d = Descriptor::new(kind, 16, payload.len(), 0, id);
            let _ = Writer::new(Ring::new(self.up).unwrap())
                .write(&[d.as_bytes(), payload])
                .unwrap();
        }

        /// (transaction id, payload) of the next packet from the host.
        fn receive(&self) -> Option<(u64, Vec<u8>)> {
            let mut buf = [0u8; 4096];
            let (p, _) = Reader::new(Ring::new(self.down).unwrap())
                .read(&mut buf)
                .unwrap()?;
            let r = p.descriptor.payload();
            Some((
                p.descriptor.transaction_id,
                buf[r.start..r.end.min(p.len)].to_vec(),
            ))
        }
    }

    /// Answers every in-band packet with its payload reversed.
    fn reverse(p: &IncomingPacket<'_>) -> Option<Vec<u8>> {
        (p.kind == PacketType::DATA_INBAND).then(|| {
            let mut v = p.payload.to_vec();
            v.reverse();
            inband_packet(p.transaction_id, &v)
        })
    }

    #[test]
    fn a_packet_is_answered_and_the_guest_signalled() {
        let (guest, mut ch) = Guest::new(8192, 8192);
        guest.send(PacketType::DATA_INBAND, 7, b"abcdefgh");
        let r = ch.poll(crate::POLL_BUDGET, &mut reverse);
        assert_eq!(
            r,
            PollResult {
                signalled: true,
                ..PollResult::default()
            }
        );
        assert_eq!(guest.receive(), Some((7, b"hgfedcba".to_vec())));
        assert_eq!(guest.signals.get(), 1);
        let s = ch.stats();
        assert_eq!((s.packets, s.signals_received, s.signals_sent), (1, 1, 1));
        // Nothing waiting: no work, no signal.
        assert_eq!(ch.poll(crate::POLL_BUDGET, &mut reverse), PollResult::default());
        assert_eq!(ch.stats().signals_received, 1);
    }

    #[test]
    fn the_budget_cuts_a_poll_and_asks_for_another() {
        let (guest, mut ch) = Guest::new(64 * 1024, 64 * 1024);
        for i in 0..100 {
            guest.send(PacketType::DATA_INBAND, i, b"x");
        }
        let r = ch.poll(64, &mut reverse);
        assert!(r.more);
        assert_eq!(ch.stats().packets, 64);
        assert_eq!(ch.stats().budget_exhausted, 1);
        let r = ch.poll(64, &mut reverse);
        assert!(!r.more);
        assert_eq!(ch.stats().packets, 100);
        for i in 0..100 {
            assert_eq!(guest.receive().unwrap().0, i);
        }
    }

    /// A device that answers each packet after the read (as storvsp sends
    /// an SRB's completion), counting the calls `work` gets.
    #[derive(Default)]
    struct Later {
        works: u32,
        empty_works: u32,
    }

    impl PacketWork<&'static AtomicMemory> for Later {
        type Item = (u64, Vec<u8>);

        fn read(&mut self, p: &IncomingPacket<'_>) -> (Option<Vec<u8>>, Option<(u64, Vec<u8>)>) {
            (None, Some((p.transaction_id, p.payload.to_vec())))
        }

        fn work(
            &mut self,
            channel: &mut Channel<&'static AtomicMemory>,
            item: Option<(u64, Vec<u8>)>,
            result: &mut PollResult,
        ) {
            self.works += 1;
            let Some((id, mut bytes)) = item else {
                self.empty_works += 1;
                return;
            };
            bytes.reverse();
            assert!(channel.send_within(inband_packet(id, &bytes), result).is_ok());
        }
    }

    #[test]
    fn poll_each_reads_one_packet_at_a_time_within_the_budget() {
        let (guest, mut ch) = Guest::new(64 * 1024, 64 * 1024);
        for i in 0..10 {
            guest.send(PacketType::DATA_INBAND, i, b"abcdefgh");
        }
        let mut w = Later::default();
        let r = ch.poll_each(4, &mut w);
        assert!(r.more && r.signalled && r.broke.is_none(), "{r:?}");
        assert_eq!((w.works, w.empty_works), (4, 0));
        let s = ch.stats();
        assert_eq!((s.packets, s.signals_received, s.budget_exhausted), (4, 1, 1));
        // The rest, then the empty ring ends the poll (work sees it once).
        let r = ch.poll_each(64, &mut w);
        assert!(!r.more, "{r:?}");
        assert_eq!((w.works, w.empty_works), (11, 1));
        assert_eq!(ch.stats().packets, 10);
        for i in 0..10 {
            assert_eq!(guest.receive(), Some((i, b"hgfedcba".to_vec())));
        }
        // Nothing waiting: no work counted, nothing asked for.
        let r = ch.poll_each(64, &mut w);
        assert_eq!(r, PollResult::default());
        assert_eq!(ch.stats().signals_received, 2);
    }

    #[test]
    fn a_device_polled_anyway_masks_the_guests_signals_and_looks_again_on_unmasking() {
        let (guest, mut ch) = Guest::new(8192, 8192);
        let write = |id| {
            let d = Descriptor::new(PacketType::DATA_INBAND, 16, 8, 0, id);
            Writer::new(Ring::new(guest.up).unwrap())
                .write(&[d.as_bytes(), b"abcdefgh"])
                .unwrap()
                .0
        };
        // Work in flight: the device will be polled again, so the guest's
        // write into the empty ring asks for no signal.
        let mut r = PollResult {
            more: true,
            ..PollResult::default()
        };
        ch.guest_signals(&mut r);
        assert!(r.more && r.broke.is_none());
        assert!(!write(1), "masked: no signal wanted");
        // At rest: unmasked, and the packet written meanwhile (never
        // signalled) asks for one more poll.
        let mut r = PollResult::default();
        ch.guest_signals(&mut r);
        assert!(r.more, "a packet waits: poll again");
        assert_eq!(ch.poll(8, &mut reverse).broke, None);
        assert_eq!(guest.receive(), Some((1, b"hgfedcba".to_vec())));
        let mut r = PollResult::default();
        ch.guest_signals(&mut r);
        assert!(!r.more, "nothing waits");
        assert!(write(2), "unmasked: the guest signals again");
        assert_eq!(ch.poll(8, &mut reverse).broke, None);
        assert_eq!(guest.receive(), Some((2, b"hgfedcba".to_vec())));
        // A device waiting for its backend's interrupt is polled again too:
        // masked the same way, and the result still says only that.
        let mut r = PollResult {
            awaiting_device: true,
            ..PollResult::default()
        };
        ch.guest_signals(&mut r);
        assert!(r.awaiting_device && !r.more);
        assert!(!write(3), "masked while the device waits: no signal wanted");
    }

    #[test]
    fn skipped_packets_count_against_the_budget() {
        let (guest, mut ch) = Guest::new(8192, 8192);
        for i in 0..3 {
            guest.send(PacketType::COMPLETION, i, b"c");
        }
        guest.send(PacketType::DATA_INBAND, 9, b"dddddddd");
        let r = ch.poll(3, &mut reverse);
        assert!(r.more);
        assert_eq!(ch.stats().packets, 0);
        ch.poll(3, &mut reverse);
        assert_eq!(guest.receive(), Some((9, b"dddddddd".to_vec())));
    }

    #[test]
    fn a_full_ring_holds_the_packet_until_the_guest_makes_room() {
        // The smallest host-to-guest ring: 4 KiB of data.
        let (guest, mut ch) = Guest::new(64 * 1024, 4096);
        let payload = [0x5Au8; 1000];
        for i in 0..8 {
            guest.send(PacketType::DATA_INBAND, i, &payload);
        }
        let r = ch.poll(64, &mut reverse);
        assert!(!r.more);
        assert!(ch.holding());
        assert_eq!(ch.stats().stalls, 1);
        let written = ch.stats().packets;
        assert!(written < 8);
        let pending = Ring::new(guest.down).unwrap().state().unwrap().pending_send_size;
        assert_eq!(pending, 1016 + 8, "the guest is told how much room is needed");
        // Nothing more is read while a packet is held.
        let before = Ring::new(guest.up).unwrap().state().unwrap().read_index;
        ch.poll(64, &mut reverse);
        assert_eq!(Ring::new(guest.up).unwrap().state().unwrap().read_index, before);
        // The guest reads everything; the held packet goes first, then the rest.
        let mut seen = Vec::new();
        while seen.len() < 8 {
            while let Some((id, _)) = guest.receive() {
                seen.push(id);
            }
            ch.poll(64, &mut reverse);
        }
        assert_eq!(seen, (0..8).collect::<Vec<_>>());
        assert!(!ch.holding());
        assert_eq!(
            Ring::new(guest.down).unwrap().state().unwrap().pending_send_size,
            0
        );
    }

    #[test]
    fn the_device_may_speak_first() {
        let (guest, mut ch) = Guest::new(8192, 4096);
        let r = ch.send(inband_packet(3, b"speaks!!")).unwrap();
        assert!(r.signalled && r.broke.is_none());
        assert_eq!(guest.receive(), Some((3, b"speaks!!".to_vec())));
        assert_eq!(ch.stats().signals_sent, 1);
        // A full ring holds the packet; another is refused until it is out.
        let big = [0u8; 3000];
        ch.send(inband_packet(4, &big)).unwrap();
        ch.send(inband_packet(5, &big)).unwrap();
        assert!(ch.holding());
        assert!(ch.send(inband_packet(6, b"x")).is_err());
        assert_eq!(guest.receive().unwrap().0, 4);
        ch.poll(64, &mut reverse);
        assert!(!ch.holding());
        assert_eq!(guest.receive().unwrap().0, 5);
    }

    #[test]
    fn a_broken_index_stops_the_channel() {
        let (guest, mut ch) = Guest::new(8192, 8192);
        guest.send(PacketType::DATA_INBAND, 1, b"a");
        guest.up.store_u32(WRITE_INDEX, 3).unwrap();
        let r = ch.poll(64, &mut reverse);
        assert!(matches!(
            r.broke,
            Some(RingError::PeerBadIndex {
                which: "write",
                value: 3
            })
        ));
        assert_eq!(ch.broken(), r.broke);
        // Repaired or not, a stopped channel reads nothing more.
        guest.up.store_u32(WRITE_INDEX, 0).unwrap();
        guest.send(PacketType::DATA_INBAND, 2, b"b");
        assert_eq!(ch.poll(64, &mut reverse), PollResult::default());
        assert_eq!(ch.stats().packets, 0);
        assert_eq!(guest.receive(), None);
    }

    #[test]
    fn guest_ram_is_reachable_by_gpa_and_bounded() {
        let (_guest, channel) = Guest::new(4096, 4096);
        assert!(channel.guest_ram().is_none(), "no RAM unless the host gives it");
        let ram: &'static AtomicMemory = Box::leak(Box::new(AtomicMemory::new(3 * 4096)));
        ram.write_at(0x1FF8, b"GPA data").unwrap();
        let channel = channel.with_guest_ram(ram);
        let mut buf = [0u8; 8];
        let ram = channel.guest_ram().expect("given");
        ram.read_at(0x1FF8, &mut buf).unwrap();
        assert_eq!(&buf, b"GPA data");
        // Past the guest's RAM: an error, not a panic or a wrap.
        assert!(ram.read_at(3 * 4096 - 4, &mut buf).is_err());
        assert!(ram.read_at(u64::MAX - 2, &mut buf).is_err());
    }

    #[test]
    fn gpadls_are_looked_up_live() {
        struct Map(Rc<Cell<u32>>);
        impl GpadlMap for Map {
            fn pages(&self, handle: u32) -> Option<Vec<u64>> {
                (handle == self.0.get()).then(|| vec![7, 9])
            }
        }
        let (_guest, channel) = Guest::new(4096, 4096);
        assert!(channel.gpadls().is_none(), "no lookup unless the host gives it");
        let current = Rc::new(Cell::new(5));
        let channel = channel.with_gpadls(Box::new(Map(current.clone())));
        let map = channel.gpadls().expect("given");
        assert_eq!(map.pages(5), Some(vec![7, 9]));
        assert_eq!(map.pages(6), None);
        current.set(6);
        assert_eq!(map.pages(5), None);
        assert_eq!(map.pages(6), Some(vec![7, 9]));
    }
}
