//! Entry point shared by the cargo-fuzz target (`vsp/storvsp_protocol/fuzz/`)
//! and the corpus-replay test: arbitrary bytes as the payload of a guest's
//! GPA-direct packet (range list + vstor packet) and as a plain in-band
//! vstor packet. Must never panic.

use crate::gpa::{parse_gpa_direct, srb_chunks};
use crate::{ProtocolVersion, Request, SrbLimits, SrbResult, parse_packet, srb_completion};

/// Input layout: byte 0 selects the version and whether the descriptor's
/// offset8 is given (byte 1); the rest is the bytes after a GPA-direct
/// packet's descriptor, also parsed as an in-band vstor packet.
pub fn packet(data: &[u8]) {
    let sel = data.first().copied().unwrap_or(0);
    let version = [
        ProtocolVersion::WIN10,
        ProtocolVersion::WIN8,
        ProtocolVersion::WIN7,
        ProtocolVersion(0),
    ][sel as usize & 3];
    let offset8 = (sel & 4 != 0).then(|| data.get(1).copied().unwrap_or(0) as u16);
    let rest = data.get(2..).unwrap_or(&[]);
    let limits = SrbLimits {
        version,
        max_transfer_bytes: 0x40000,
    };
    let _ = parse_packet(rest, &limits);
    if let Ok(g) = parse_gpa_direct(rest, offset8)
        && let Ok(p) = parse_packet(g.data, &limits)
        && let Request::ExecuteSrb(srb) = p.request
    {
        if let Ok(chunks) = srb_chunks(&g.ranges, srb.data_transfer_length()) {
            let total: u64 = chunks.iter().map(|c| c.len as u64).sum();
            assert_eq!(total, srb.data_transfer_length() as u64);
            // Each chunk starts inside its first page, and every page it
            // reaches is addressable.
            assert!(chunks.iter().all(|c| {
                c.len > 0
                    && c.offset < 4096
                    && c.gpn
                        .checked_add(u64::from((c.offset + c.len - 1) / 4096))
                        .is_some_and(|last| last <= crate::gpa::MAX_GPN)
            }));
        }
        let c = srb_completion(
            p.request_size,
            &srb.request,
            &SrbResult::from_scsi(crate::ScsiStatus::GOOD, &[], 0),
        );
        assert!(c.len() <= 64);
    }
}

#[cfg(test)]
mod tests {
    /// Every file of the fuzz corpus runs through the target as a test.
    #[test]
    fn corpus_replays() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz")
            .join("corpus")
            .join("fuzz_storvsp_packet");
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            super::packet(&bytes);
            count += 1;
        }
        assert!(count >= 10, "corpus too small: {count}");
    }
}
