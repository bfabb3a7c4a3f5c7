//! The echo device's provider in the root (the simplest VMBus device, to
//! prove the data path): every in-band packet the child writes into the
//! channel's guest-to-host ring comes back on the host-to-guest ring with the
//! same transaction id and payload. The rings live in the child's memory,
//! which the root lent and so can reach through its identity map; every
//! index and length the child wrote is checked by `vmbus::ring`.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};
use vmbus::memory::{OutOfBounds, SharedMemory};
use vmbus::packet::{Descriptor, PacketType};
use vmbus::ring::{Reader, Ring, RingError, RingState, Writer};
use zerocopy::IntoBytes;

/// Root frames backing a run of GPADL pages, in GPADL order.
pub struct FrameMemory {
    frames: Vec<u64>,
}

impl FrameMemory {
    fn span(&self, offset: u64, len: usize) -> Result<(), OutOfBounds> {
        let end = offset.checked_add(len as u64);
        if end.is_none_or(|e| e > self.len()) {
            return Err(OutOfBounds {
                offset,
                len: len as u64,
            });
        }
        Ok(())
    }

    /// Root physical address of byte `offset` (checked by the caller).
    fn phys(&self, offset: u64) -> u64 {
        self.frames[(offset / 4096) as usize] + offset % 4096
    }
}

impl SharedMemory for FrameMemory {
    fn len(&self) -> u64 {
        self.frames.len() as u64 * 4096
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), OutOfBounds> {
        self.span(offset, buf.len())?;
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            let n = (4096 - (at % 4096) as usize).min(buf.len() - done);
            // `at..at+n` lies in one frame the root lent to this child (checked
            // above); a racing child only changes bytes that are copied, never trusted.
            // SAFETY: identity-mapped RAM the root owns, in bounds.
            unsafe {
                core::ptr::copy_nonoverlapping(self.phys(at) as *const u8, buf[done..].as_mut_ptr(), n)
            };
            done += n;
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), OutOfBounds> {
        self.span(offset, data.len())?;
        let mut done = 0;
        while done < data.len() {
            let at = offset + done as u64;
            let n = (4096 - (at % 4096) as usize).min(data.len() - done);
            // SAFETY: as in `read_at`; the frame is the child's ring memory,
            // which the ring protocol gives this side to write.
            unsafe { core::ptr::copy_nonoverlapping(data[done..].as_ptr(), self.phys(at) as *mut u8, n) };
            done += n;
        }
        Ok(())
    }

    fn load_u32(&self, offset: u64) -> Result<u32, OutOfBounds> {
        self.span(offset, 4)?;
        if !offset.is_multiple_of(4) {
            return Err(OutOfBounds { offset, len: 4 });
        }
        // SAFETY: an aligned u32 inside a lent frame (checked above).
        let word = unsafe { &*(self.phys(offset) as *const AtomicU32) };
        Ok(word.load(Ordering::Acquire))
    }

    fn store_u32(&self, offset: u64, value: u32) -> Result<(), OutOfBounds> {
        self.span(offset, 4)?;
        if !offset.is_multiple_of(4) {
            return Err(OutOfBounds { offset, len: 4 });
        }
        // SAFETY: as in `load_u32`.
        let word = unsafe { &*(self.phys(offset) as *const AtomicU32) };
        word.store(value, Ordering::Release);
        Ok(())
    }
}

/// One open echo channel.
pub struct EchoChannel {
    /// Its relid.
    pub relid: u32,
    /// The child's connection id for signalling the root.
    pub connection_id: u32,
    /// The root's event port the child's connection reaches.
    pub event_port: u32,
    reader: Reader<FrameMemory>,
    writer: Writer<FrameMemory>,
    /// Packets echoed.
    pub packets: u64,
    /// Signals the root sent the child.
    pub signals_out: u64,
    /// Times the root found work after a signal.
    pub signals_in: u64,
    /// Why the channel stopped, if the child broke its rings.
    pub broken: Option<RingError>,
    /// An echo the host-to-guest ring had no room for: written first on the
    /// next poll, and nothing more is read until it is (flow control: the
    /// child signals once it has read enough, per pending_send_sz).
    held: Option<Vec<u8>>,
    /// Times the root had to wait for the child to make room.
    pub stalls: u64,
    /// The child signalled (or the last poll ran out of budget): poll again.
    pub wants_poll: bool,
    /// Polls that ended on the work budget with packets left.
    pub budget_exhausted: u64,
}

/// Packets (of any type, skipped ones included) one poll reads from the
/// child's ring before it gives the CPU back: a child that keeps its ring
/// full, or rewinds its read index, costs the root at most this much work
/// per poll, and the scheduler goes round every channel before this one
/// gets another turn.
pub const POLL_BUDGET: u32 = 64;

impl EchoChannel {
    /// Rings over `frames`: pages `[0, downstream)` carry guest-to-host
    /// packets, the rest host-to-guest (Linux `channel.c` `__vmbus_open`).
    pub fn new(
        relid: u32,
        connection_id: u32,
        event_port: u32,
        mut frames: Vec<u64>,
        downstream: usize,
    ) -> Result<Self, RingError> {
        if downstream == 0 || downstream >= frames.len() {
            return Err(RingError::BadGeometry);
        }
        let down = frames.split_off(downstream);
        let up = Ring::new(FrameMemory { frames })?;
        let down = Ring::new(FrameMemory { frames: down })?;
        Ok(Self {
            relid,
            connection_id,
            event_port,
            reader: Reader::new(up),
            writer: Writer::new(down),
            packets: 0,
            signals_out: 0,
            signals_in: 0,
            broken: None,
            held: None,
            stalls: 0,
            wants_poll: false,
            budget_exhausted: 0,
        })
    }

    /// Both rings' state: (guest-to-host, host-to-guest).
    pub fn states(&self) -> (Option<RingState>, Option<RingState>) {
        (self.reader.ring().state().ok(), self.writer.ring().state().ok())
    }

    /// Echo up to [`POLL_BUDGET`] waiting packets. Returns whether the child
    /// must be signalled; [`Self::wants_poll`] says whether packets were
    /// left for the next turn. A ring the child corrupted stops the channel
    /// (reported), nothing else.
    pub fn poll(&mut self) -> bool {
        self.wants_poll = false;
        if self.broken.is_some() {
            return false;
        }
        match self.echo_some(POLL_BUDGET) {
            Ok(signal) => signal,
            Err(e) => {
                self.broken = Some(e);
                false
            }
        }
    }

    /// Write one echo; on a full ring keep it and ask the child (through
    /// pending_send_sz, Linux `hv_pkt_iter_close`) to signal when there is
    /// room. Returns Some(signal) if written, None if held.
    fn send(&mut self, bytes: Vec<u8>) -> Result<Option<bool>, RingError> {
        match self.writer.write(&[&bytes]) {
            Ok(s) => {
                if self.held.is_none() {
                    self.writer.set_pending_send_size(0)?;
                }
                Ok(Some(s.0))
            }
            Err(RingError::Full { needed, .. }) => {
                self.stalls += 1;
                self.writer.set_pending_send_size(needed as u32)?;
                self.held = Some(bytes);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn echo_some(&mut self, budget: u32) -> Result<bool, RingError> {
        let mut signal = false;
        let mut found = false;
        if let Some(bytes) = self.held.take() {
            found = true;
            match self.send(bytes)? {
                Some(s) => {
                    signal |= s;
                    self.packets += 1;
                    self.writer.set_pending_send_size(0)?;
                }
                None => return Ok(false),
            }
        }
        let mut buf = [0u8; 4096];
        let mut left = budget;
        while let Some((packet, read_signal)) = self.reader.read(&mut buf)? {
            found = true;
            left -= 1;
            if left == 0 {
                // Out of budget: whatever follows waits for the next turn.
                self.wants_poll = true;
                self.budget_exhausted += 1;
            }
            signal |= read_signal.0;
            if packet.kind != PacketType::DATA_INBAND {
                if left == 0 {
                    break;
                }
                continue;
            }
            let range = packet.descriptor.payload();
            let payload = buf.get(range.start..range.end.min(packet.len)).unwrap_or(&[]);
            let d = Descriptor::new(
                PacketType::DATA_INBAND,
                16,
                payload.len(),
                0,
                packet.descriptor.transaction_id,
            );
            let mut bytes = Vec::with_capacity(16 + payload.len());
            bytes.extend_from_slice(d.as_bytes());
            bytes.extend_from_slice(payload);
            match self.send(bytes)? {
                Some(s) => {
                    signal |= s;
                    self.packets += 1;
                }
                None => break,
            }
            if left == 0 {
                break;
            }
        }
        if found {
            self.signals_in += 1;
        }
        if signal {
            self.signals_out += 1;
        }
        Ok(signal)
    }
}
