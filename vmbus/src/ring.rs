//! VMBus ring buffers (vmbus-wire.md §3; Linux `drivers/hv/ring_buffer.c`).
//!
//! A ring is a 4 KiB control page followed by the data area. The writer owns
//! `write_index` and `pending_send_sz`; the reader owns `read_index` and
//! `interrupt_mask`. Packets are 8-byte aligned, followed by an 8-byte trailer
//! (the packet's start index in the upper 32 bits), and the writer never fills
//! the ring completely (full means "free ≤ packet length"). Indices live in
//! memory the peer can write, so every one is validated on every load. Each
//! side keeps its own index privately once loaded (the peer cannot redirect
//! it) and the peer's last validated one, loading that again only when it
//! runs out of room or data; [`Writer::write_batch`] and
//! [`Reader::read_batch`] publish several packets with one index update.

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
/// Packets up to this size (with trailer) are gathered on the stack and
/// copied into the ring in one call.
const SMALL: usize = 256;
/// Bytes the reader copies out first (the descriptor and, for a packet this
/// small, the whole packet), so that a small packet takes one copy. One
/// cache line: more would read ahead into packets not asked for.
const HEAD: usize = 64;

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
    /// The reader's index as last loaded (and validated). The reader only
    /// moves it forward, so the free space it implies is a lower bound: a
    /// write that fits by it fits, and only one that does not needs a fresh
    /// load (which is what decides `Full`).
    read_seen: Option<u64>,
    /// Our own index: loaded (and validated) on the first write, then kept
    /// here, as only we move it (Linux keeps the reader's the same way,
    /// `priv_read_index`). The peer cannot redirect our writes by
    /// rewriting it.
    write_own: Option<u64>,
}

impl<M: SharedMemory> Writer<M> {
    /// Write into `ring`.
    pub fn new(ring: Ring<M>) -> Self {
        Self {
            ring,
            read_seen: None,
            write_own: None,
        }
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
        self.write_batch(&[parts]).map(|(_, signal)| signal)
    }

    /// Write packets one after the other (each made of its parts, as in
    /// [`write`](Self::write)) and publish them with one write-index update,
    /// one barrier and one signalling decision: signal only if the reader is
    /// not masked and the ring was empty before the first of them (Linux's
    /// `hv_signal_on_write` for the whole batch). Stops at the first packet
    /// that does not fit now; returns how many were written. `Full` or
    /// `TooLarge` only if the first does not fit (a later one that never
    /// fits is the error of the next call).
    pub fn write_batch(&mut self, packets: &[&[&[u8]]]) -> Result<(usize, Signal), RingError> {
        let size = self.ring.data_size;
        // Loaded (and validated) once they are needed, after the size check
        // of the first packet.
        let mut indices: Option<(u64, u64)> = None;
        let mut at = 0;
        let mut n = 0;
        for parts in packets {
            let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
            let padded = len.next_multiple_of(8);
            let needed = padded + TRAILER;
            if padded > self.max_packet() {
                if n > 0 {
                    break;
                }
                return Err(RingError::TooLarge {
                    needed,
                    max: self.max_packet() + TRAILER,
                });
            }
            let (write, mut read) = match indices {
                Some(i) => i,
                None => {
                    let write = match self.write_own {
                        Some(write) => write,
                        None => self.ring.write_index()?,
                    };
                    self.write_own = Some(write);
                    at = write;
                    let read = match self.read_seen {
                        Some(read) => read,
                        None => self.ring.read_index()?,
                    };
                    self.read_seen = Some(read);
                    (write, read)
                }
            };
            // Free space from where this packet starts; one 8-byte slot is
            // always kept free, so `at` never catches up with `read`.
            let free = |read| size - self.ring.distance(read, at);
            if free(read) <= needed {
                read = match self.ring.read_index() {
                    Ok(read) => read,
                    // Publish what is written; the next call reports it.
                    Err(_) if n > 0 => break,
                    Err(e) => return Err(e),
                };
                self.read_seen = Some(read);
                if free(read) <= needed {
                    if n > 0 {
                        break;
                    }
                    return Err(RingError::Full {
                        needed,
                        free: free(read),
                    });
                }
            }
            indices = Some((write, read));
            let trailer = (at << 32).to_le_bytes();
            if needed as usize <= SMALL {
                // A small packet: gathered with its padding and trailer
                // into one copy.
                let mut staged = [0u8; SMALL];
                let mut end = 0;
                for part in parts.iter() {
                    staged[end..end + part.len()].copy_from_slice(part);
                    end += part.len();
                }
                staged[padded as usize..needed as usize].copy_from_slice(&trailer);
                at = self.ring.copy_in(at, &staged[..needed as usize])?;
            } else {
                for part in parts.iter() {
                    at = self.ring.copy_in(at, part)?;
                }
                // Zero padding and the trailer in one copy.
                let pad = (padded - len) as usize;
                let mut tail = [0u8; 16];
                tail[pad..pad + 8].copy_from_slice(&trailer);
                at = self.ring.copy_in(at, &tail[..pad + 8])?;
            }
            n += 1;
        }
        let Some((write, _)) = indices else {
            return Ok((0, Signal(false)));
        };
        // The data must be visible before the index that publishes it:
        // `store_u32` is a release store, which orders every access above
        // before it (Linux issues `virt_mb()` here; release is what it needs).
        self.ring.mem.store_u32(WRITE_INDEX, at as u32)?;
        self.write_own = Some(at);
        // Publishing the index, then reading the reader's mask and index, is
        // a store followed by loads: only a full barrier orders those.
        self.ring.mem.barrier();
        if self.ring.mem.load_u32(INTERRUPT_MASK)? != 0 {
            return Ok((n, Signal(false)));
        }
        let read = self.ring.read_index()?;
        self.read_seen = Some(read);
        Ok((n, Signal(read == write)))
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
    /// The writer's index as last loaded (and validated). The writer only
    /// moves it forward and never overwrites unread bytes, so the packets
    /// before it stay readable: it is loaded again only once they are all
    /// consumed.
    write_seen: Option<u64>,
    /// Our own index, loaded (and validated) on the first read and then
    /// kept here (Linux's `priv_read_index`).
    read_own: Option<u64>,
}

impl<M: SharedMemory> Reader<M> {
    /// Read from `ring`.
    pub fn new(ring: Ring<M>) -> Self {
        Self {
            ring,
            write_seen: None,
            read_own: None,
        }
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
        let Some((read, write)) = self.indices()? else {
            return Ok(None);
        };
        let (packet, new_read) = self.take(read, write, buf)?;
        let signal = self.commit(read, new_read)?;
        Ok(Some((packet, signal)))
    }

    /// Read up to `max` packets one after the other, each copied into `buf`
    /// and handed to `each` with its bytes, then consume them all with one
    /// read-index update: Linux's `hv_pkt_iter_first` / `hv_pkt_iter_next` /
    /// `hv_pkt_iter_close` (the `foreach_vmbus_pkt` loop of its polling
    /// drivers). The signalling decision is made once, over the whole batch,
    /// as `hv_pkt_iter_close` makes it. Returns how many packets were read and
    /// whether the writer must be signalled; `(0, Signal(false))` if the ring
    /// is empty. A malformed packet (or one larger than `buf`) ends the batch
    /// and stays unconsumed: it is the error of this call if it comes first,
    /// of the next call otherwise.
    pub fn read_batch(
        &mut self,
        buf: &mut [u8],
        max: usize,
        mut each: impl FnMut(&Packet, &[u8]),
    ) -> Result<(usize, Signal), RingError> {
        let Some((start, write)) = self.indices()? else {
            return Ok((0, Signal(false)));
        };
        let (mut read, mut write, mut n) = (start, write, 0);
        while n < max {
            if read == write {
                // Caught up with what we saw: see whether more was written.
                match self.ring.write_index() {
                    Ok(w) if w != read => write = w,
                    _ => break,
                }
                self.write_seen = Some(write);
            }
            match self.take(read, write, buf) {
                Ok((packet, next)) => {
                    each(&packet, &buf[..packet.len]);
                    read = next;
                    n += 1;
                }
                Err(e) if n == 0 => return Err(e),
                Err(_) => break,
            }
        }
        if n == 0 {
            return Ok((0, Signal(false)));
        }
        Ok((n, self.commit(start, read)?))
    }

    /// Our read index and the writer's, if there is something to read. The
    /// writer's is loaded again only when what we saw of it is consumed.
    fn indices(&mut self) -> Result<Option<(u64, u64)>, RingError> {
        let read = match self.read_own {
            Some(read) => read,
            None => {
                let read = self.ring.read_index()?;
                self.read_own = Some(read);
                read
            }
        };
        match self.write_seen {
            Some(write) if write != read => Ok(Some((read, write))),
            _ => {
                let write = self.ring.write_index()?;
                self.write_seen = Some(write);
                Ok((write != read).then_some((read, write)))
            }
        }
    }

    /// Validate the packet at `read` (the bytes up to `write` are the
    /// writer's) and copy it into `buf`. Returns it and the index after its
    /// trailer; nothing is consumed.
    fn take(&self, read: u64, write: u64, buf: &mut [u8]) -> Result<(Packet, u64), RingError> {
        let available = self.ring.distance(read, write);
        if available < 16 + TRAILER {
            return Err(RingError::PeerPacketOverrun {
                claimed: 16 + TRAILER,
                available,
            });
        }
        // The first bytes in one copy: the descriptor, and all of a small
        // packet. Only bytes the writer published (before `write`) are read.
        let mut head = [0u8; HEAD];
        let staged = (available as usize).min(HEAD);
        self.ring.copy_out(read, &mut head[..staged])?;
        // Validated from this one copy, which is also what the caller gets:
        // the peer may rewrite the ring meanwhile, so never read it twice.
        let descriptor = Descriptor::read_from_bytes(&head[..16]).expect("16 bytes");
        let kind = descriptor.validate().map_err(RingError::PeerBadPacket)?;
        let len = descriptor.len();
        let claimed = len as u64 + TRAILER;
        if claimed > available {
            return Err(RingError::PeerPacketOverrun { claimed, available });
        }
        if buf.len() < len {
            return Err(RingError::BufferTooSmall { needed: len });
        }
        // `staged >= len` unless the packet is larger than `HEAD`: then the
        // rest comes from the ring.
        let from_head = len.min(staged);
        buf[..from_head].copy_from_slice(&head[..from_head]);
        if from_head < len {
            self.ring.copy_out(
                (read + from_head as u64) % self.ring.data_size,
                &mut buf[from_head..len],
            )?;
        }
        let packet = Packet {
            descriptor,
            kind,
            len,
        };
        Ok((packet, (read + claimed) % self.ring.data_size))
    }

    /// Store the new read index and decide whether the writer waits for us.
    fn commit(&mut self, old_read: u64, new_read: u64) -> Result<Signal, RingError> {
        let mem = &self.ring.mem;
        // The packet must be read before the index that frees its space:
        // `store_u32` is a release store, which orders the copy above before
        // it (Linux needs only `virt_rmb()` here).
        mem.store_u32(READ_INDEX, new_read as u32)?;
        self.read_own = Some(new_read);
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

    /// A batch read commits once, and decides the pending-send signal over
    /// the whole batch (Linux `hv_pkt_iter_close`); a malformed packet ends
    /// the batch, stays unconsumed and is the next call's error.
    #[test]
    fn read_batch_commits_once_and_stops_at_a_bad_packet() {
        let (mut w, mut r) = pair(256);
        let p = packet(&[1u8; 40], 1); // 64 bytes with trailer
        for _ in 0..3 {
            let _ = w.write(&[&p]).unwrap();
        }
        w.set_pending_send_size(100).unwrap();
        let mut buf = [0u8; 64];
        let mut seen = 0;
        // free 64 -> 192 in one batch: crosses 96 once.
        assert_eq!(
            r.read_batch(&mut buf, 2, |_, bytes| {
                assert_eq!(bytes, &p[..]);
                seen += 1;
            }),
            Ok((2, Signal(true)))
        );
        assert_eq!(seen, 2);
        assert_eq!(r.ring().state().unwrap().read_index, 128);
        w.set_pending_send_size(0).unwrap();
        // A good packet, then a malformed one.
        let _ = w.write(&[&p]).unwrap();
        let mem: &AtomicMemory = r.ring().memory();
        let mut d = Descriptor::read_from_bytes(&p[..16]).unwrap();
        d.offset8 = 1;
        mem.write_at(CONTROL_SIZE + 192, d.as_bytes()).unwrap();
        assert_eq!(r.read_batch(&mut buf, 8, |_, _| ()), Ok((1, Signal(false))));
        assert!(matches!(
            r.read_batch(&mut buf, 8, |_, _| ()),
            Err(RingError::PeerBadPacket(_))
        ));
        assert_eq!(r.ring().state().unwrap().read_index, 192, "left in place");
        assert_eq!(r.read_batch(&mut buf, 0, |_, _| ()), Ok((0, Signal(false))));
    }

    /// A batch write publishes once and signals once, if the ring was empty
    /// before it; it writes the prefix that fits.
    #[test]
    fn write_batch_publishes_once() {
        let (mut w, mut r) = pair(256);
        let p = packet(&[2u8; 40], 1); // 64 bytes with trailer
        let one: &[&[u8]] = &[&p];
        assert_eq!(
            w.write_batch(&[one; 5]),
            Ok((3, Signal(true))),
            "3 fit, one slot free"
        );
        assert!(matches!(w.write_batch(&[one; 2]), Err(RingError::Full { .. })));
        let mut buf = [0u8; 64];
        let _ = r.read(&mut buf).unwrap().unwrap();
        assert_eq!(
            w.write_batch(&[one; 2]),
            Ok((1, Signal(false))),
            "not empty before"
        );
        assert_eq!(w.write_batch(&[]), Ok((0, Signal(false))));
        let big = alloc::vec![0u8; 300];
        let big: &[&[u8]] = &[&big];
        assert!(matches!(
            w.write_batch(&[big, one]),
            Err(RingError::TooLarge { .. })
        ));
    }

    /// Two threads, a small ring that wraps constantly, single and batched
    /// calls mixed on both sides: every packet arrives once, intact, in
    /// order (the cached indices never let a side overtake the other).
    #[test]
    fn two_threads_pass_every_packet_in_order() {
        const COUNT: u64 = 20_000;
        let (mut w, mut r) = pair(1024);
        let producer = std::thread::spawn(move || {
            let mut next = 0u64;
            while next < COUNT {
                let packets: alloc::vec::Vec<_> = (next..(next + 1 + next % 5).min(COUNT))
                    .map(|i| packet(&alloc::vec![i as u8; (i % 90) as usize], i))
                    .collect();
                let parts: alloc::vec::Vec<[&[u8]; 1]> = packets.iter().map(|p| [&p[..]]).collect();
                let batch: alloc::vec::Vec<&[&[u8]]> = parts.iter().map(|p| &p[..]).collect();
                match w.write_batch(&batch) {
                    Ok((n, _)) => next += n as u64,
                    Err(RingError::Full { .. }) => std::thread::yield_now(),
                    Err(e) => panic!("{e:?}"),
                }
            }
        });
        let mut buf = [0u8; 256];
        let expect = core::cell::Cell::new(0u64);
        let check = |pkt: &Packet, bytes: &[u8]| {
            let i = expect.get();
            assert_eq!(pkt.descriptor.transaction_id, i);
            let len = (i % 90) as usize;
            assert!(bytes[16..16 + len].iter().all(|&b| b == i as u8));
            expect.set(i + 1);
        };
        while expect.get() < COUNT {
            let n = if expect.get().is_multiple_of(3) {
                match r.read(&mut buf).unwrap() {
                    Some((pkt, _)) => {
                        check(&pkt, &buf[..pkt.len]);
                        1
                    }
                    None => 0,
                }
            } else {
                r.read_batch(&mut buf, 4, check).unwrap().0
            };
            if n == 0 {
                std::thread::yield_now();
            }
        }
        producer.join().unwrap();
        assert!(r.read(&mut buf).unwrap().is_none());
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

        /// The same model, mixing single and batched writes and reads, with
        /// packets on both sides of the small-packet staging size: every
        /// packet intact and in order, each trailer holding its own packet's
        /// start, "full" exactly when it must be, a batch writing the longest
        /// prefix that fits, and "signal" exactly when the ring was empty
        /// before a write.
        #[test]
        fn batches_match_a_fifo(ops in proptest::collection::vec((0u8..4, 0usize..400, any::<u8>(), 1usize..5), 1..150)) {
            const SIZE: u64 = 1024;
            let (mut w, mut r) = pair(SIZE);
            let mut model: std::collections::VecDeque<alloc::vec::Vec<u8>> = Default::default();
            let mut used = 0u64;
            let mut buf = [0u8; SIZE as usize];
            let cost = |p: &[u8]| (p.len() as u64).next_multiple_of(8) + TRAILER;
            for (op, len, fill, count) in ops {
                let before = w.ring().state().unwrap();
                match op {
                    0 | 1 => {
                        let packets: alloc::vec::Vec<_> = (0..if op == 0 { 1 } else { count })
                            .map(|i| packet(&alloc::vec![fill ^ i as u8; len / (i + 1)], i as u64))
                            .collect();
                        let parts: alloc::vec::Vec<[&[u8]; 1]> = packets.iter().map(|p| [&p[..]]).collect();
                        let batch: alloc::vec::Vec<&[&[u8]]> = parts.iter().map(|p| &p[..]).collect();
                        // The longest prefix that fits, one slot kept free.
                        let (mut fit, mut room) = (0, SIZE - used);
                        while fit < packets.len() && room > cost(&packets[fit]) {
                            room -= cost(&packets[fit]);
                            fit += 1;
                        }
                        match w.write_batch(&batch) {
                            Ok((n, signal)) => {
                                prop_assert_eq!(n, fit);
                                prop_assert_eq!(signal.0, before.bytes_pending == 0);
                                let mut at = before.write_index as u64;
                                for p in &packets[..n] {
                                    let end = (at + (p.len() as u64).next_multiple_of(8)) % SIZE;
                                    let mut trailer = [0u8; 8];
                                    w.ring().memory().read_at(CONTROL_SIZE + end, &mut trailer).unwrap();
                                    prop_assert_eq!(u64::from_le_bytes(trailer), at << 32);
                                    at = (end + TRAILER) % SIZE;
                                    used += cost(p);
                                    model.push_back(p.clone());
                                }
                            }
                            Err(RingError::Full { .. }) => prop_assert_eq!(fit, 0),
                            Err(e) => prop_assert!(false, "{e:?}"),
                        }
                    }
                    2 => match r.read(&mut buf).unwrap() {
                        Some((pkt, _)) => {
                            let expect = model.pop_front().unwrap();
                            prop_assert_eq!(pkt.len, expect.len().next_multiple_of(8));
                            prop_assert_eq!(&buf[..expect.len()], &expect[..]);
                            prop_assert!(buf[expect.len()..pkt.len].iter().all(|&b| b == 0));
                            used -= cost(&expect);
                        }
                        None => prop_assert!(model.is_empty()),
                    },
                    _ => {
                        let mut got = alloc::vec::Vec::new();
                        let (n, _) = r
                            .read_batch(&mut buf, count, |pkt, bytes| {
                                assert_eq!(pkt.len, bytes.len());
                                got.push(bytes.to_vec());
                            })
                            .unwrap();
                        prop_assert_eq!(n, got.len());
                        prop_assert_eq!(n, count.min(model.len()));
                        for bytes in got {
                            let expect = model.pop_front().unwrap();
                            prop_assert_eq!(bytes.len(), expect.len().next_multiple_of(8));
                            prop_assert_eq!(&bytes[..expect.len()], &expect[..]);
                            prop_assert!(bytes[expect.len()..].iter().all(|&b| b == 0));
                            used -= cost(&expect);
                        }
                    }
                }
                let st = w.ring().state().unwrap();
                prop_assert_eq!(st.bytes_pending, used);
                prop_assert_eq!(st.write_index % 8, 0);
            }
        }
    }
}
