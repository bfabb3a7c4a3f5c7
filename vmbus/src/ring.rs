//! VMBus ring buffers (vmbus-wire.md §3; Linux `drivers/hv/ring_buffer.c`).
//!
//! A ring is a 4 KiB control page followed by the data area. The writer owns
//! `write_index` and `pending_send_sz`; the reader owns `read_index` and
//! `interrupt_mask`. Packets are 8-byte aligned, followed by an 8-byte trailer
//! (the packet's start index in the upper 32 bits), and the writer never fills
//! the ring completely (full means "free ≤ packet length"). Indices live in
//! memory the peer can write, so every one is validated on every load.

use crate::memory::{OutOfBounds, SharedMemory};
use crate::packet::{Descriptor, PacketError, PacketType};
use zerocopy::FromBytes;

/// Size of the control page.
pub const CONTROL_SIZE: u64 = 4096;
/// `write_index` offset.
pub const WRITE_INDEX: u64 = 0;
/// `read_index` offset.
pub const READ_INDEX: u64 = 4;
/// `interrupt_mask` offset.
pub const INTERRUPT_MASK: u64 = 8;
/// `pending_send_sz` offset.
pub const PENDING_SEND_SIZE: u64 = 12;
/// `feature_bits` offset.
pub const FEATURE_BITS: u64 = 64;
/// Feature bit: the writer uses and honours `pending_send_sz`.
pub const FEAT_PENDING_SEND_SZ: u32 = 1;
/// Bytes of the trailer after each packet.
pub const TRAILER: u64 = 8;

/// Why a ring operation failed. `Peer*` variants are the other side's fault
/// (the channel should be closed); the rest are the caller's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingError {
    /// The peer left an index that is not 8-byte aligned or not inside the data area.
    PeerBadIndex {
        /// `"read"` or `"write"`.
        which: &'static str,
        /// The value found.
        value: u32,
    },
    /// The peer wrote a malformed packet.
    PeerBadPacket(PacketError),
    /// The peer's packet claims more bytes than the ring holds.
    PeerPacketOverrun {
        /// Bytes the descriptor claims (with trailer).
        claimed: u64,
        /// Bytes available.
        available: u64,
    },
    /// The packet does not fit the caller's buffer (it stays in the ring).
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
    },
    /// No room for the packet now (retry after the reader frees space).
    Full {
        /// Bytes needed (packet, padding, trailer).
        needed: u64,
        /// Bytes free.
        free: u64,
    },
    /// The packet can never fit this ring.
    TooLarge {
        /// Bytes needed.
        needed: u64,
        /// Largest possible.
        max: u64,
    },
    /// The ring memory is too small or not a whole number of 8-byte units.
    BadGeometry,
    /// An access outside the ring memory (a bug, since geometry is checked).
    Memory(OutOfBounds),
}

impl From<OutOfBounds> for RingError {
    fn from(e: OutOfBounds) -> Self {
        Self::Memory(e)
    }
}

/// The control page and data area over some memory.
pub struct Ring<M: SharedMemory> {
    mem: M,
    data_size: u64,
}

impl<M: SharedMemory> Ring<M> {
    /// A ring over all of `mem` (control page + data area).
    pub fn new(mem: M) -> Result<Self, RingError> {
        let total = mem.len();
        if total < CONTROL_SIZE + 2 * TRAILER + 16 || !(total - CONTROL_SIZE).is_multiple_of(8) {
            return Err(RingError::BadGeometry);
        }
        let data_size = total - CONTROL_SIZE;
        if data_size > u32::MAX as u64 {
            return Err(RingError::BadGeometry);
        }
        Ok(Self { mem, data_size })
    }

    /// Bytes in the data area.
    pub fn data_size(&self) -> u64 {
        self.data_size
    }

    /// The underlying memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    fn index(&self, offset: u64, which: &'static str) -> Result<u64, RingError> {
        let v = self.mem.load_u32(offset)?;
        if v % 8 != 0 || v as u64 >= self.data_size {
            return Err(RingError::PeerBadIndex { which, value: v });
        }
        Ok(v as u64)
    }

    fn read_index(&self) -> Result<u64, RingError> {
        self.index(READ_INDEX, "read")
    }

    fn write_index(&self) -> Result<u64, RingError> {
        self.index(WRITE_INDEX, "write")
    }

    /// Bytes between `from` and `to` going forward.
    fn distance(&self, from: u64, to: u64) -> u64 {
        (to + self.data_size - from) % self.data_size
    }

    fn copy_out(&self, at: u64, buf: &mut [u8]) -> Result<(), RingError> {
        let first = ((self.data_size - at) as usize).min(buf.len());
        self.mem.read_at(CONTROL_SIZE + at, &mut buf[..first])?;
        if first < buf.len() {
            self.mem.read_at(CONTROL_SIZE, &mut buf[first..])?;
        }
        Ok(())
    }

    fn copy_in(&self, at: u64, data: &[u8]) -> Result<u64, RingError> {
        let first = ((self.data_size - at) as usize).min(data.len());
        self.mem.write_at(CONTROL_SIZE + at, &data[..first])?;
        if first < data.len() {
            self.mem.write_at(CONTROL_SIZE, &data[first..])?;
        }
        Ok((at + data.len() as u64) % self.data_size)
    }

    /// A consistent view of the ring state (for `channels` listings).
    pub fn state(&self) -> Result<RingState, RingError> {
        let (read, write) = (self.read_index()?, self.write_index()?);
        Ok(RingState {
            read_index: read as u32,
            write_index: write as u32,
            bytes_pending: self.distance(read, write),
            data_size: self.data_size,
            interrupt_mask: self.mem.load_u32(INTERRUPT_MASK)?,
            pending_send_size: self.mem.load_u32(PENDING_SEND_SIZE)?,
            feature_bits: self.mem.load_u32(FEATURE_BITS)?,
        })
    }

    /// Zero the control page and set the feature bits (done once at open).
    pub fn reset(&self, features: u32) -> Result<(), RingError> {
        self.mem.write_at(0, &[0u8; CONTROL_SIZE as usize])?;
        self.mem.store_u32(FEATURE_BITS, features)?;
        Ok(())
    }
}

/// A snapshot of a ring's control page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingState {
    /// `read_index`.
    pub read_index: u32,
    /// `write_index`.
    pub write_index: u32,
    /// Bytes written and not yet read.
    pub bytes_pending: u64,
    /// Size of the data area.
    pub data_size: u64,
    /// `interrupt_mask`.
    pub interrupt_mask: u32,
    /// `pending_send_sz`.
    pub pending_send_size: u32,
    /// `feature_bits`.
    pub feature_bits: u32,
}

/// Whether the other side must be signalled (interrupt / HvSignalEvent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Signal(pub bool);

/// The writing end of a ring.
pub struct Writer<M: SharedMemory> {
    ring: Ring<M>,
}

impl<M: SharedMemory> Writer<M> {
    /// Write into `ring`.
    pub fn new(ring: Ring<M>) -> Self {
        Self { ring }
    }

    /// The ring.
    pub fn ring(&self) -> &Ring<M> {
        &self.ring
    }

    /// Largest packet (descriptor included) this ring can ever take.
    pub fn max_packet(&self) -> u64 {
        // Keep one 8-byte slot free and leave room for the trailer.
        self.ring.data_size - TRAILER - 8
    }

    /// Write one packet made of `parts` (descriptor first), zero-padded to 8
    /// bytes, with its trailer. Follows Linux's `hv_ringbuffer_write` and
    /// `hv_signal_on_write`: signal only if the reader is not masked and the
    /// ring was empty before this packet.
    pub fn write(&mut self, parts: &[&[u8]]) -> Result<Signal, RingError> {
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let padded = len.next_multiple_of(8);
        let needed = padded + TRAILER;
        if padded > self.max_packet() {
            return Err(RingError::TooLarge {
                needed,
                max: self.max_packet() + TRAILER,
            });
        }
        let read = self.ring.read_index()?;
        let write = self.ring.write_index()?;
        let free = self.ring.data_size - self.ring.distance(read, write);
        if free <= needed {
            return Err(RingError::Full { needed, free });
        }
        let mut at = write;
        for part in parts {
            at = self.ring.copy_in(at, part)?;
        }
        at = self.ring.copy_in(at, &[0u8; 8][..(padded - len) as usize])?;
        let trailer = (write << 32).to_le_bytes();
        at = self.ring.copy_in(at, &trailer)?;
        self.ring.mem.barrier();
        self.ring.mem.store_u32(WRITE_INDEX, at as u32)?;
        self.ring.mem.barrier();
        if self.ring.mem.load_u32(INTERRUPT_MASK)? != 0 {
            return Ok(Signal(false));
        }
        Ok(Signal(self.ring.read_index()? == write))
    }

    /// Tell the reader we wait for `bytes` of free space (0 clears it).
    pub fn set_pending_send_size(&self, bytes: u32) -> Result<(), RingError> {
        self.ring.mem.store_u32(PENDING_SEND_SIZE, bytes)?;
        self.ring.mem.barrier();
        Ok(())
    }
}

/// A packet read from a ring into the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    /// Its descriptor (validated).
    pub descriptor: Descriptor,
    /// Its type.
    pub kind: PacketType,
    /// Bytes copied (descriptor included, trailer excluded).
    pub len: usize,
}

/// The reading end of a ring.
pub struct Reader<M: SharedMemory> {
    ring: Ring<M>,
}

impl<M: SharedMemory> Reader<M> {
    /// Read from `ring`.
    pub fn new(ring: Ring<M>) -> Self {
        Self { ring }
    }

    /// The ring.
    pub fn ring(&self) -> &Ring<M> {
        &self.ring
    }

    /// Copy the next packet into `buf` and consume it. Returns the packet and
    /// whether the writer must be signalled (it waits for space: Linux's
    /// `hv_pkt_iter_close`). `Ok(None)` if the ring is empty. A malformed
    /// packet is an error and stays unconsumed (the channel is broken).
    pub fn read(&mut self, buf: &mut [u8]) -> Result<Option<(Packet, Signal)>, RingError> {
        let write = self.ring.write_index()?;
        let read = self.ring.read_index()?;
        if write == read {
            return Ok(None);
        }
        let available = self.ring.distance(read, write);
        let mut head = [0u8; 16];
        if available < 16 + TRAILER {
            return Err(RingError::PeerPacketOverrun {
                claimed: 16 + TRAILER,
                available,
            });
        }
        self.ring.copy_out(read, &mut head)?;
        let descriptor = Descriptor::read_from_bytes(&head).expect("16 bytes");
        let kind = descriptor.validate().map_err(RingError::PeerBadPacket)?;
        let len = descriptor.len();
        let claimed = len as u64 + TRAILER;
        if claimed > available {
            return Err(RingError::PeerPacketOverrun { claimed, available });
        }
        if buf.len() < len {
            return Err(RingError::BufferTooSmall { needed: len });
        }
        self.ring.copy_out(read, &mut buf[..len])?;
        let new_read = (read + claimed) % self.ring.data_size;
        let signal = self.commit(read, new_read)?;
        Ok(Some((
            Packet {
                descriptor,
                kind,
                len,
            },
            signal,
        )))
    }

    /// Store the new read index and decide whether the writer waits for us.
    fn commit(&self, old_read: u64, new_read: u64) -> Result<Signal, RingError> {
        let mem = &self.ring.mem;
        mem.barrier();
        mem.store_u32(READ_INDEX, new_read as u32)?;
        if mem.load_u32(FEATURE_BITS)? & FEAT_PENDING_SEND_SZ == 0 {
            return Ok(Signal(false));
        }
        mem.barrier();
        let pending = (mem.load_u32(PENDING_SEND_SIZE)? & !7) as u64;
        if pending == 0 {
            return Ok(Signal(false));
        }
        mem.barrier();
        let write = self.ring.write_index()?;
        let size = self.ring.data_size;
        let free_before = size - self.ring.distance(old_read, write);
        let free_now = size - self.ring.distance(new_read, write);
        // Signal once, on the transition to "enough room" (Linux: the writer
        // was not already satisfied before this read, and is now).
        Ok(Signal(free_before <= pending && free_now > pending))
    }

    /// Mask interrupts while draining (Linux `hv_begin_read`).
    pub fn begin_read(&self) -> Result<(), RingError> {
        self.ring.mem.store_u32(INTERRUPT_MASK, 1)?;
        self.ring.mem.barrier();
        Ok(())
    }

    /// Unmask and report whether data arrived meanwhile (Linux `hv_end_read`):
    /// if true, keep draining, no interrupt will come for it.
    pub fn end_read(&self) -> Result<bool, RingError> {
        self.ring.mem.store_u32(INTERRUPT_MASK, 0)?;
        self.ring.mem.barrier();
        Ok(self.ring.write_index()? != self.ring.read_index()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::AtomicMemory;
    use crate::packet::FLAG_COMPLETION_REQUESTED;
    use proptest::prelude::*;
    use zerocopy::IntoBytes;

    fn pair(data: u64) -> (Writer<&'static AtomicMemory>, Reader<&'static AtomicMemory>) {
        let mem: &'static AtomicMemory = Box::leak(Box::new(AtomicMemory::new(CONTROL_SIZE + data)));
        Ring::new(mem).unwrap().reset(FEAT_PENDING_SEND_SZ).unwrap();
        (
            Writer::new(Ring::new(mem).unwrap()),
            Reader::new(Ring::new(mem).unwrap()),
        )
    }

    fn packet(payload: &[u8], trans: u64) -> alloc::vec::Vec<u8> {
        let d = Descriptor::new(
            PacketType::DATA_INBAND,
            16,
            payload.len(),
            FLAG_COMPLETION_REQUESTED,
            trans,
        );
        let mut v = d.as_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn write_then_read_with_trailer_and_signals() {
        let (mut w, mut r) = pair(4096);
        let p = packet(b"hello", 0xFFFF_FFFF_FFFF_FFFD);
        assert_eq!(w.write(&[&p]).unwrap(), Signal(true), "empty ring: signal");
        assert_eq!(w.write(&[&p]).unwrap(), Signal(false), "not empty: no signal");
        let st = w.ring().state().unwrap();
        assert_eq!(st.write_index, 2 * (24 + 8));
        let mut buf = [0u8; 64];
        let (pkt, sig) = r.read(&mut buf).unwrap().unwrap();
        assert_eq!(sig, Signal(false));
        assert_eq!(
            pkt.descriptor.transaction_id, 0xFFFF_FFFF_FFFF_FFFD,
            "all 64 bits"
        );
        assert_eq!(&buf[16..21], b"hello");
        assert_eq!(&buf[21..24], &[0, 0, 0], "zero padding");
        // The trailer holds the start index in its upper half.
        let mut trailer = [0u8; 8];
        r.ring()
            .memory()
            .read_at(CONTROL_SIZE + 24, &mut trailer)
            .unwrap();
        assert_eq!(u64::from_le_bytes(trailer), 0);
        let _ = r.read(&mut buf).unwrap().unwrap();
        assert!(r.read(&mut buf).unwrap().is_none());
    }

    #[test]
    fn masked_reader_is_not_signalled() {
        let (mut w, r) = pair(4096);
        r.begin_read().unwrap();
        assert_eq!(w.write(&[&packet(b"x", 1)]).unwrap(), Signal(false));
        assert!(r.end_read().unwrap(), "data arrived while masked");
    }

    #[test]
    fn keeps_one_slot_free_and_reports_full() {
        let (mut w, mut r) = pair(256);
        let p = packet(&[7u8; 40], 1); // 56 bytes + 8 trailer = 64
        for _ in 0..3 {
            let _ = w.write(&[&p]).unwrap();
        }
        // 192 used, 64 free: a 64-byte packet would fill it completely.
        assert_eq!(w.write(&[&p]), Err(RingError::Full { needed: 64, free: 64 }));
        let mut buf = [0u8; 64];
        let _ = r.read(&mut buf).unwrap().unwrap();
        let _ = w.write(&[&p]).unwrap();
        let big = alloc::vec![0u8; 300];
        assert!(matches!(w.write(&[&big]), Err(RingError::TooLarge { .. })));
    }

    /// The largest-packet bound in [`Writer::write`]: a packet that could never
    /// fit (padded length + trailer must stay below the data size, one slot
    /// kept free) is `TooLarge` at once. Without that check it would report
    /// `Full` even on an empty ring, and a writer waiting for room would wait
    /// forever.
    #[test]
    fn a_packet_larger_than_the_ring_is_too_large_never_full() {
        let (mut w, mut r) = pair(256);
        assert_eq!(w.max_packet(), 256 - TRAILER - 8);
        let largest = packet(&[3u8; 240 - 16], 9);
        assert_eq!(largest.len() as u64, w.max_packet());
        assert!(
            w.write(&[&largest]).is_ok(),
            "the largest packet fits an empty ring"
        );
        let mut buf = [0u8; 256];
        let (pkt, _) = r.read(&mut buf).unwrap().unwrap();
        assert_eq!(&buf[..pkt.len], &largest[..]);
        // The ring is empty again; one 8-byte unit more can never fit.
        for len in [241usize, 248, 249, 256, 4096] {
            let p = packet(&alloc::vec![1u8; len - 16], 1);
            assert_eq!(
                w.write(&[&p]),
                Err(RingError::TooLarge {
                    needed: (len as u64).next_multiple_of(8) + TRAILER,
                    max: 256 - 8,
                }),
                "{len} bytes"
            );
        }
        assert_eq!(w.ring().state().unwrap().bytes_pending, 0, "nothing written");
    }

    #[test]
    fn pending_send_size_signals_on_the_transition() {
        let (mut w, mut r) = pair(256);
        let p = packet(&[1u8; 40], 1);
        for _ in 0..3 {
            let _ = w.write(&[&p]).unwrap();
        }
        w.set_pending_send_size(100).unwrap();
        let mut buf = [0u8; 64];
        // free 64 -> 128: crosses 96 (100 & !7)
        assert_eq!(r.read(&mut buf).unwrap().unwrap().1, Signal(true));
        // free 128 -> 192: already enough before, no second signal
        assert_eq!(r.read(&mut buf).unwrap().unwrap().1, Signal(false));
    }

    #[test]
    fn hostile_indices_and_packets_are_refused() {
        let (mut w, mut r) = pair(256);
        let mem: &AtomicMemory = r.ring().memory();
        let mut buf = [0u8; 256];
        mem.store_u32(WRITE_INDEX, 12).unwrap();
        assert_eq!(
            r.read(&mut buf),
            Err(RingError::PeerBadIndex {
                which: "write",
                value: 12
            })
        );
        mem.store_u32(WRITE_INDEX, 256).unwrap();
        assert!(matches!(r.read(&mut buf), Err(RingError::PeerBadIndex { .. })));
        mem.store_u32(WRITE_INDEX, 0).unwrap();
        mem.store_u32(READ_INDEX, 4000).unwrap();
        assert!(matches!(
            w.write(&[&packet(b"x", 1)]),
            Err(RingError::PeerBadIndex { which: "read", .. })
        ));
        mem.store_u32(READ_INDEX, 0).unwrap();
        // A descriptor claiming more than was written.
        let mut d = Descriptor::new(PacketType::DATA_INBAND, 16, 8, 0, 1);
        let _ = w.write(&[d.as_bytes(), &[0u8; 8]]).unwrap();
        mem.store_u32(READ_INDEX, 0).unwrap();
        d.len8 = 30;
        mem.write_at(CONTROL_SIZE, d.as_bytes()).unwrap();
        assert!(matches!(
            r.read(&mut buf),
            Err(RingError::PeerPacketOverrun { .. })
        ));
        d.len8 = 3;
        d.offset8 = 1;
        mem.write_at(CONTROL_SIZE, d.as_bytes()).unwrap();
        assert!(matches!(r.read(&mut buf), Err(RingError::PeerBadPacket(_))));
        // A buffer too small leaves the packet in place.
        d.offset8 = 2;
        mem.write_at(CONTROL_SIZE, d.as_bytes()).unwrap();
        assert_eq!(
            r.read(&mut buf[..8]),
            Err(RingError::BufferTooSmall { needed: 24 })
        );
        assert!(r.read(&mut buf).unwrap().is_some());
    }

    #[test]
    fn geometry_is_checked() {
        assert!(Ring::new(AtomicMemory::new(4096)).is_err());
        assert!(Ring::new(AtomicMemory::new(4096 + 64)).is_ok());
    }

    proptest! {
        /// Against a FIFO model: every packet comes out intact and in order,
        /// across wrap-around, with "full" reported exactly when it must be.
        #[test]
        fn ring_matches_a_fifo(ops in proptest::collection::vec((any::<bool>(), 0usize..120, any::<u8>()), 1..200)) {
            let (mut w, mut r) = pair(512);
            let mut model: std::collections::VecDeque<alloc::vec::Vec<u8>> = Default::default();
            let mut used = 0u64;
            let mut buf = [0u8; 512];
            for (write, len, fill) in ops {
                if write {
                    let p = packet(&alloc::vec![fill; len], len as u64);
                    let cost = (p.len() as u64).next_multiple_of(8) + TRAILER;
                    match w.write(&[&p]) {
                        Ok(_) => { prop_assert!(512 - used > cost); used += cost; model.push_back(p); }
                        Err(RingError::Full { .. }) => prop_assert!(512 - used <= cost),
                        Err(e) => prop_assert!(false, "{e:?}"),
                    }
                } else {
                    match r.read(&mut buf).unwrap() {
                        Some((pkt, _)) => {
                            let expect = model.pop_front().unwrap();
                            prop_assert_eq!(&buf[..expect.len()], &expect[..]);
                            used -= pkt.len as u64 + TRAILER;
                        }
                        None => prop_assert!(model.is_empty()),
                    }
                }
                let st = w.ring().state().unwrap();
                prop_assert_eq!(st.bytes_pending, used);
                prop_assert_eq!(st.write_index % 8, 0);
            }
        }
    }
}
