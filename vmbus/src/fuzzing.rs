//! Entry points shared by the cargo-fuzz targets (`vmbus/fuzz/`) and the
//! corpus-replay test: each takes arbitrary bytes and must never panic.

use crate::gpadl::Assembly;
use crate::memory::{AtomicMemory, SharedMemory};
use crate::protocol::Message;
use crate::ring::{CONTROL_SIZE, Reader, Ring};
use crate::server::Server;

/// Parse `data` as a channel message, and feed it to a fresh server (and to
/// the GPADL assembler if it is a GPADL header).
pub fn channel_message(data: &[u8]) {
    if let Ok(Message::GpadlHeader(h, rest)) = Message::parse(data)
        && let Ok(a) = Assembly::start(&h, rest)
    {
        let _ = a.finish(u64::MAX >> 12);
    }
    let mut server = Server::new(0xFFFF);
    for conn in [1, 4] {
        let _ = server.handle(conn, data);
    }
    while server.next_message().is_some() {}
}

/// Treat `data` as a ring's control page + data area written by a hostile
/// peer (the first 16 bytes set write_index/read_index/mask/pending), and
/// read every packet out of it.
pub fn ring_reader(data: &[u8]) {
    let data_size = 512u64;
    let mem = AtomicMemory::new(CONTROL_SIZE + data_size);
    let control = data.get(..16).unwrap_or(data);
    let _ = mem.write_at(0, control);
    let body = data.get(16..).unwrap_or(&[]);
    let n = body.len().min(data_size as usize);
    let _ = mem.write_at(CONTROL_SIZE, &body[..n]);
    let Ok(ring) = Ring::new(&mem) else { return };
    let mut reader = Reader::new(ring);
    let mut buf = [0u8; 512];
    for _ in 0..64 {
        match reader.read(&mut buf) {
            Ok(Some(_)) => {}
            _ => break,
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every file of the fuzz corpus runs through the targets as a normal test.
    #[test]
    fn corpus_replays() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz")
            .join("corpus");
        let mut count = 0;
        for (target, f) in [
            ("fuzz_channel_message", super::channel_message as fn(&[u8])),
            ("fuzz_ring_reader", super::ring_reader),
        ] {
            let dir = root.join(target);
            for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
                let bytes = std::fs::read(entry.unwrap().path()).unwrap();
                f(&bytes);
                count += 1;
            }
        }
        assert!(count >= 10, "corpus too small: {count}");
    }
}
