//! Ring throughput between two host threads (`cargo bench -p vmbus --bench
//! ring`), beside the `rtrb` SPSC ring and a plain memcpy of the same bytes,
//! measured in the same run. Figures go to docs/vmbus.md ("Benchmarks") as
//! ratios.
//!
//! What is timed, and why the cases are comparable:
//!
//! - Every case moves the same bytes: `TOTAL` bytes per iteration, in packets
//!   of the same size (the VMBus packet size includes its 16-byte descriptor;
//!   rtrb and memcpy move packets of that same total size), from a producer's
//!   buffer, through a `RING`-sized area, into a consumer's buffer.
//! - Nothing but the transfer is timed. Buffers, rings and the producer
//!   thread are set up before the clock starts (criterion's `iter_custom`):
//!   the producer thread is spawned once per sample and told how many packets
//!   to send through a channel; the clock runs from that message until the
//!   consumer has received the last packet. No allocation, no thread spawn
//!   and no page fault of fresh memory is inside the timed region, in any
//!   case.
//! - Two memories under the same ring code: `AtomicMemory` (the `vmbus`
//!   crate's own, safe Rust: every byte through relaxed 64-bit atomics,
//!   which the compiler never vectorises) and `FrameLikeMemory` (below:
//!   what the root's `ring_memory::FrameMemory` does with a child's ring
//!   pages, `copy_nonoverlapping` for the bytes and acquire/release atomics
//!   for the indices). The root's devices run on the second; the `-frames`
//!   cases measure that.
//! - `vmbus` writes and reads one packet per call, as `Writer::write` and
//!   `Reader::read` do: every packet publishes an index, with the full
//!   barrier and signalling decision Linux's `hv_ringbuffer_write` /
//!   `hv_pkt_iter_close` make. `vmbus-batch` moves the same packets (each
//!   with its own descriptor and trailer) several per
//!   `Writer::write_batch` / `Reader::read_batch` call (up to 32 packets and
//!   8 KiB: one packet per call at 16 KiB), one index update per call: how Linux's polling drivers drain a ring (`foreach_vmbus_pkt`,
//!   then one `hv_pkt_iter_close`). rtrb moves one packet per chunk; it has
//!   no barrier and caches the peer's index, reloading it only when it runs
//!   out.
//! - Both threads wait the same way when the ring is full or empty (spin,
//!   then yield: see `backoff`).
//! - `memcpy` is the same data movement with the ring protocol and the second
//!   core taken away: per packet, one `copy_from_slice` from the producer's
//!   buffer into the next slot of a `RING`-byte area (wrapping like a ring)
//!   and one from that slot into the consumer's buffer, on one thread. These
//!   are exactly the two copies each byte makes through either ring, over the
//!   same amount of memory (so it is not an L1-resident copy of one buffer
//!   onto another, which would not be moving the same bytes). The rings run
//!   the two copies on two cores in parallel but pay the cross-core cache
//!   transfers and their synchronisation.
// criterion's macros generate undocumented items.
#![allow(missing_docs)]
// `FrameLikeMemory` copies with raw pointers, as the root's ring memory does
// (the `vmbus` library itself has no unsafe code).
#![allow(unsafe_code)]

use criterion::{Bencher, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use vmbus::memory::{AtomicMemory, OutOfBounds, SharedMemory};
use vmbus::packet::{Descriptor, PacketType};
use vmbus::ring::{CONTROL_SIZE, FEAT_PENDING_SEND_SZ, Reader, Ring, RingError, Writer};
use zerocopy::IntoBytes;

/// Bytes moved per iteration.
const TOTAL: usize = 4 << 20;
/// Data area of the VMBus ring (capacity of the rtrb ring, size of the memcpy
/// staging area).
const RING: u64 = 256 * 1024;

/// Ring memory as the root's `FrameMemory` (root-partition/kernel/src/
/// ring_memory.rs) treats a child's ring pages: bytes moved with
/// `copy_nonoverlapping` (memcpy), the control words with acquire/release
/// atomics, every access bounds-checked. One heap region here instead of a
/// list of frames (the root splits copies at frame boundaries; a 16 KiB
/// packet is four page-sized memcpys there, one here).
struct FrameLikeMemory {
    /// Backing store, 8-byte aligned; only ever touched through pointers
    /// derived from it (or atomics), never through references to its bytes.
    words: Box<[AtomicU64]>,
}

impl FrameLikeMemory {
    fn new(len: u64) -> Self {
        Self {
            words: (0..len.div_ceil(8)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn span(&self, offset: u64, len: usize) -> Result<*mut u8, OutOfBounds> {
        let bad = OutOfBounds {
            offset,
            len: len as u64,
        };
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.len() => Ok(self
                .words
                .as_ptr()
                .cast::<u8>()
                .cast_mut()
                .wrapping_add(offset as usize)),
            _ => Err(bad),
        }
    }

    fn word(&self, offset: u64) -> Result<&AtomicU32, OutOfBounds> {
        if !offset.is_multiple_of(4) {
            return Err(OutOfBounds { offset, len: 4 });
        }
        let p = self.span(offset, 4)?;
        // SAFETY: 4-byte aligned and inside `words` (checked above); the
        // region is only ever accessed atomically or by the ring protocol's
        // disjoint copies, as in the root's FrameMemory.
        Ok(unsafe { AtomicU32::from_ptr(p.cast::<u32>()) })
    }
}

impl SharedMemory for FrameLikeMemory {
    fn len(&self) -> u64 {
        self.words.len() as u64 * 8
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), OutOfBounds> {
        let p = self.span(offset, buf.len())?;
        // The ring protocol gives the reader bytes the writer has published
        // and no longer writes (as the root relies on for a child's rings).
        // SAFETY: `offset..offset + len` is inside `words` (checked above).
        unsafe { std::ptr::copy_nonoverlapping(p.cast_const(), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), OutOfBounds> {
        let p = self.span(offset, data.len())?;
        // SAFETY: as in `read_at`: free ring space the reader does not read
        // until the writer publishes it.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
        Ok(())
    }

    fn load_u32(&self, offset: u64) -> Result<u32, OutOfBounds> {
        Ok(self.word(offset)?.load(Ordering::Acquire))
    }

    fn store_u32(&self, offset: u64, value: u32) -> Result<(), OutOfBounds> {
        self.word(offset)?.store(value, Ordering::Release);
        Ok(())
    }
}

/// Wait for the other thread: spin a little, then let the scheduler run
/// something else (the machine has two cores and other work may hold one; a
/// thread spinning while its peer is descheduled would time the scheduler).
/// Both rings wait the same way.
fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 128 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// Packets per `write_batch` / `read_batch` in the batched VMBus case: at
/// most `MAX_BATCH`, and at most `BATCH_BYTES` of them (a writer holding
/// back a large batch would only idle the reader).
const MAX_BATCH: usize = 32;
const BATCH_BYTES: usize = 8 * 1024;

/// Time `iters * TOTAL / packet` packets going from `send` (on a producer
/// thread started before the clock) to `recv` (on this thread). `send(left)`
/// and `recv(left)` move at least one and at most `left` packets and return
/// how many.
fn two_threads(
    b: &mut Bencher,
    packet: usize,
    mut send: impl FnMut(usize) -> usize + Send + 'static,
    mut recv: impl FnMut(usize) -> usize,
) {
    let count = TOTAL / packet;
    let (go, todo) = mpsc::channel::<usize>();
    let producer = std::thread::spawn(move || {
        while let Ok(n) = todo.recv() {
            let mut sent = 0;
            while sent < n {
                sent += send(n - sent);
            }
        }
    });
    b.iter_custom(|iters| {
        let n = iters as usize * count;
        let start = Instant::now();
        go.send(n).unwrap();
        let mut got = 0;
        while got < n {
            got += recv(n - got);
        }
        start.elapsed()
    });
    drop(go);
    producer.join().unwrap();
}

/// The VMBus ring over `mem` (allocated and reset once per packet size; the
/// ring is empty between samples, its indices carry on). `batch` 1: one
/// `write` / `read` per packet, each publishing its index; more: up to
/// `batch` packets per `write_batch` / `read_batch`, one index update each.
fn vmbus_ring<M: SharedMemory + Sync + 'static>(
    b: &mut Bencher,
    mem: &'static M,
    packet: usize,
    batch: usize,
) {
    let payload = vec![0xA5u8; packet - 16];
    let d = Descriptor::new(PacketType::DATA_INBAND, 16, payload.len(), 0, 1);
    let mut w = Writer::new(Ring::new(mem).unwrap());
    let send = move |left: usize| {
        let parts: [&[u8]; 2] = [d.as_bytes(), &payload];
        let packets = [&parts[..]; MAX_BATCH];
        let mut spins = 0u32;
        loop {
            let sent = if batch == 1 {
                w.write(&parts).map(|_| 1)
            } else {
                w.write_batch(&packets[..batch.min(left)]).map(|(n, _)| n)
            };
            match sent {
                Ok(n) => return n,
                Err(RingError::Full { .. }) => backoff(&mut spins),
                Err(e) => panic!("{e:?}"),
            }
        }
    };
    let mut r = Reader::new(Ring::new(mem).unwrap());
    let mut buf = vec![0u8; packet];
    let recv = move |left: usize| {
        let mut spins = 0u32;
        loop {
            let got = if batch == 1 {
                let got = r.read(&mut buf).unwrap().is_some() as usize;
                black_box(&buf);
                got
            } else {
                r.read_batch(&mut buf, batch.min(left), |_, bytes| {
                    black_box(bytes);
                })
                .unwrap()
                .0
            };
            if got > 0 {
                return got;
            }
            backoff(&mut spins);
        }
    };
    two_threads(b, packet, send, recv);
}

fn rtrb_ring(b: &mut Bencher, packet: usize) {
    let (mut tx, mut rx) = rtrb::RingBuffer::<u8>::new(RING as usize);
    let data = vec![0xA5u8; packet];
    let send = move |_| {
        let mut spins = 0u32;
        loop {
            if let Ok(mut chunk) = tx.write_chunk(packet) {
                let (a, b) = chunk.as_mut_slices();
                let n = a.len();
                a.copy_from_slice(&data[..n]);
                b.copy_from_slice(&data[n..]);
                chunk.commit_all();
                return 1;
            }
            backoff(&mut spins);
        }
    };
    let mut buf = vec![0u8; packet];
    let recv = move |_| {
        let mut spins = 0u32;
        loop {
            if let Ok(chunk) = rx.read_chunk(packet) {
                let (a, b) = chunk.as_slices();
                buf[..a.len()].copy_from_slice(a);
                buf[a.len()..].copy_from_slice(b);
                chunk.commit_all();
                black_box(&buf);
                return 1;
            }
            backoff(&mut spins);
        }
    };
    two_threads(b, packet, send, recv);
}

/// The two copies each byte makes through a ring, on one thread.
fn memcpy(b: &mut Bencher, packet: usize) {
    let count = (TOTAL / packet) as u64;
    let src = vec![0xA5u8; packet];
    let mut ring = vec![0u8; RING as usize];
    let mut dst = vec![0u8; packet];
    let mut at = 0usize;
    b.iter_custom(|iters| {
        let start = Instant::now();
        for _ in 0..iters * count {
            let first = packet.min(ring.len() - at);
            let src = black_box(&src);
            ring[at..at + first].copy_from_slice(&src[..first]);
            ring[..packet - first].copy_from_slice(&src[first..]);
            black_box(&ring);
            dst[..first].copy_from_slice(&ring[at..at + first]);
            dst[first..].copy_from_slice(&ring[..packet - first]);
            black_box(&dst);
            at = (at + packet) % ring.len();
        }
        start.elapsed()
    });
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring");
    g.throughput(Throughput::Bytes(TOTAL as u64));
    g.measurement_time(Duration::from_secs(3));
    g.sample_size(10);
    for packet in [64usize, 1024, 16 * 1024] {
        let mem: &'static AtomicMemory = Box::leak(Box::new(AtomicMemory::new(CONTROL_SIZE + RING)));
        Ring::new(mem).unwrap().reset(FEAT_PENDING_SEND_SZ).unwrap();
        g.bench_with_input(BenchmarkId::new("vmbus", packet), &packet, |b, &p| {
            vmbus_ring(b, mem, p, 1)
        });
        g.bench_with_input(BenchmarkId::new("vmbus-batch", packet), &packet, |b, &p| {
            vmbus_ring(b, mem, p, (BATCH_BYTES / p).clamp(1, MAX_BATCH))
        });
        let frames: &'static FrameLikeMemory = Box::leak(Box::new(FrameLikeMemory::new(CONTROL_SIZE + RING)));
        Ring::new(frames).unwrap().reset(FEAT_PENDING_SEND_SZ).unwrap();
        g.bench_with_input(BenchmarkId::new("vmbus-frames", packet), &packet, |b, &p| {
            vmbus_ring(b, frames, p, 1)
        });
        g.bench_with_input(
            BenchmarkId::new("vmbus-frames-batch", packet),
            &packet,
            |b, &p| vmbus_ring(b, frames, p, (BATCH_BYTES / p).clamp(1, MAX_BATCH)),
        );
        g.bench_with_input(BenchmarkId::new("rtrb", packet), &packet, |b, &p| rtrb_ring(b, p));
        g.bench_with_input(BenchmarkId::new("memcpy", packet), &packet, |b, &p| memcpy(b, p));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
