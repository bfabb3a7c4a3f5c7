//! The guest's half of a channel in the integration tests: two real rings
//! in `AtomicMemory`, written and read with `vmbus::ring` exactly as the
//! test OS does over its own memory, and the host's `vsp::Channel` over
//! the same rings.

use std::cell::Cell;
use std::rc::Rc;
use vmbus::memory::AtomicMemory;
use vmbus::ring::{CONTROL_SIZE, FEAT_PENDING_SEND_SZ, Reader, Ring, RingError, Writer};
use vsp::{Channel, GuestSignal};

/// Counts the signals the guest got.
pub struct Counter(pub Rc<Cell<u32>>);

impl GuestSignal for Counter {
    fn signal(&mut self) -> bool {
        self.0.set(self.0.get() + 1);
        true
    }
}

/// Memory that lives as long as the test process.
pub fn leak(bytes: u64) -> &'static AtomicMemory {
    Box::leak(Box::new(AtomicMemory::new(bytes)))
}

/// The guest's view of the rings: it writes `up` and reads `down`.
pub struct Rings {
    pub up: &'static AtomicMemory,
    pub down: &'static AtomicMemory,
}

impl Rings {
    /// Rings of `data` bytes each, and the host's channel over them.
    pub fn new(data: u64) -> (Self, Channel<&'static AtomicMemory>) {
        let up = leak(CONTROL_SIZE + data);
        let down = leak(CONTROL_SIZE + data);
        Ring::new(up).unwrap().reset(FEAT_PENDING_SEND_SZ).unwrap();
        Ring::new(down).unwrap().reset(FEAT_PENDING_SEND_SZ).unwrap();
        let channel = Channel::new(up, down, Box::new(Counter(Rc::new(Cell::new(0))))).unwrap();
        (Self { up, down }, channel)
    }

    /// Write one whole packet; false if the ring is full.
    pub fn write(&self, packet: &[u8]) -> bool {
        match Writer::new(Ring::new(self.up).unwrap()).write(&[packet]) {
            Ok(_) => true,
            Err(RingError::Full { .. }) => false,
            Err(e) => panic!("{e:?}"),
        }
    }

    /// The next whole packet the host wrote.
    pub fn read(&self) -> Option<Vec<u8>> {
        let mut buf = [0u8; 4096];
        let (p, _) = Reader::new(Ring::new(self.down).unwrap())
            .read(&mut buf)
            .unwrap()?;
        Some(buf[..p.len].to_vec())
    }
}
