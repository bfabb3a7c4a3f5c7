//! Ring throughput between two host threads (`cargo bench -p vmbus`), beside
//! the `rtrb` SPSC ring and a plain memcpy of the same bytes, measured in the
//! same run. Figures go to docs/vmbus-benchmarks.md as ratios.
// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;
use vmbus::memory::AtomicMemory;
use vmbus::packet::{Descriptor, PacketType};
use vmbus::ring::{CONTROL_SIZE, FEAT_PENDING_SEND_SZ, Reader, Ring, RingError, Writer};
use zerocopy::IntoBytes;

/// Bytes moved per iteration.
const TOTAL: usize = 4 << 20;
/// Data area of the VMBus ring (and capacity of the rtrb ring).
const RING: u64 = 256 * 1024;

fn vmbus_ring(packet: usize) {
    let mem: &'static AtomicMemory = Box::leak(Box::new(AtomicMemory::new(CONTROL_SIZE + RING)));
    Ring::new(mem).unwrap().reset(FEAT_PENDING_SEND_SZ).unwrap();
    let count = TOTAL / packet;
    let payload = vec![0xA5u8; packet - 16];
    let producer = std::thread::spawn(move || {
        let mut w = Writer::new(Ring::new(mem).unwrap());
        let d = Descriptor::new(PacketType::DATA_INBAND, 16, payload.len(), 0, 1);
        for _ in 0..count {
            loop {
                match w.write(&[d.as_bytes(), &payload]) {
                    Ok(_) => break,
                    Err(RingError::Full { .. }) => std::hint::spin_loop(),
                    Err(e) => panic!("{e:?}"),
                }
            }
        }
    });
    let mut r = Reader::new(Ring::new(mem).unwrap());
    let mut buf = vec![0u8; packet];
    let mut got = 0;
    while got < count {
        match r.read(&mut buf).unwrap() {
            Some(_) => got += 1,
            None => std::hint::spin_loop(),
        }
    }
    producer.join().unwrap();
    black_box(&buf);
}

fn rtrb_ring(packet: usize) {
    let (mut tx, mut rx) = rtrb::RingBuffer::<u8>::new(RING as usize);
    let count = TOTAL / packet;
    let data = vec![0xA5u8; packet];
    let producer = std::thread::spawn(move || {
        for _ in 0..count {
            loop {
                if let Ok(mut chunk) = tx.write_chunk(packet) {
                    let (a, b) = chunk.as_mut_slices();
                    let n = a.len();
                    a.copy_from_slice(&data[..n]);
                    b.copy_from_slice(&data[n..]);
                    chunk.commit_all();
                    break;
                }
                std::hint::spin_loop();
            }
        }
    });
    let mut buf = vec![0u8; packet];
    let mut got = 0;
    while got < count {
        if let Ok(chunk) = rx.read_chunk(packet) {
            let (a, b) = chunk.as_slices();
            buf[..a.len()].copy_from_slice(a);
            buf[a.len()..].copy_from_slice(b);
            chunk.commit_all();
            got += 1;
        } else {
            std::hint::spin_loop();
        }
    }
    producer.join().unwrap();
    black_box(&buf);
}

fn memcpy(packet: usize) {
    let src = vec![0xA5u8; packet];
    let mut dst = vec![0u8; packet];
    for _ in 0..TOTAL / packet {
        dst.copy_from_slice(black_box(&src));
        black_box(&dst);
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring");
    g.throughput(Throughput::Bytes(TOTAL as u64));
    g.measurement_time(Duration::from_secs(3));
    g.sample_size(10);
    for packet in [64usize, 1024, 16 * 1024] {
        g.bench_with_input(BenchmarkId::new("vmbus", packet), &packet, |b, &p| {
            b.iter(|| vmbus_ring(p))
        });
        g.bench_with_input(BenchmarkId::new("rtrb", packet), &packet, |b, &p| {
            b.iter(|| rtrb_ring(p))
        });
        g.bench_with_input(BenchmarkId::new("memcpy", packet), &packet, |b, &p| {
            b.iter(|| memcpy(p))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
