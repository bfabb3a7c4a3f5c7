//! Entry point shared by the cargo-fuzz target (`vsp/scsi_disk/fuzz/`)
//! and the corpus-replay test: arbitrary bytes become a command (or a
//! few) against a small in-memory disk, and every result must be well
//! formed. A panic here is a bug.

use crate::{DiskConfig, MemoryBackend, ScsiDisk, ScsiStatus, sense};
use alloc::vec::Vec;

/// Check what every command must return, whatever the CDB.
pub fn check_result(r: &crate::ScsiResult, capacity: usize, data_out_len: usize) {
    assert!(r.data_in.len() <= capacity, "data-in past the initiator's buffer");
    assert!(
        r.data_out_used <= data_out_len,
        "data-out past the initiator's buffer"
    );
    match r.status {
        ScsiStatus::GOOD => assert!(r.sense.is_none(), "GOOD with sense"),
        ScsiStatus::CHECK_CONDITION => {
            let s = r.sense.expect("CHECK CONDITION without sense");
            assert_eq!(s[0], 0x70);
            assert_eq!(s[7], 10);
            assert!(sense::decode(&s).is_some());
            assert!(
                r.data_in.is_empty() && r.data_out_used == 0,
                "data moved on CHECK CONDITION"
            );
        }
        other => panic!("unexpected status {other:?}"),
    }
}

/// Input layout: byte 0 = flags (bit 0 read-only backend, bit 1 4096-byte
/// sectors), byte 1 = data-in capacity / 16 (×16 bytes), then records of
/// `len, cdb[len] (len ≤ 16), data_out_len / 8, data_out...` until the
/// input ends (at most 8 commands).
pub fn execute_cdbs(data: &[u8]) {
    let flags = data.first().copied().unwrap_or(0);
    let capacity = data.get(1).copied().unwrap_or(0) as usize * 16;
    let sector = if flags & 2 != 0 { 4096 } else { 512 };
    let mut backend = MemoryBackend::new(sector, 64);
    backend.read_only = flags & 1 != 0;
    let mut disk = ScsiDisk::new(backend, DiskConfig::new("FUZZ0001", 0x1234)).expect("valid config");
    let mut rest = data.get(2..).unwrap_or(&[]);
    for _ in 0..8 {
        let Some((&n, tail)) = rest.split_first() else {
            break;
        };
        let n = (n as usize % 17).min(tail.len());
        let cdb = &tail[..n];
        let tail = &tail[n..];
        let (out_len, tail) = match tail.split_first() {
            Some((&l, t)) => ((l as usize * 8).min(t.len()), t),
            None => (0, tail),
        };
        let data_out: Vec<u8> = tail[..out_len].to_vec();
        rest = &tail[out_len..];
        let r = disk.execute(cdb, &data_out, capacity);
        check_result(&r, capacity, data_out.len());
    }
}

#[cfg(test)]
mod tests {
    /// Every file of the fuzz corpus runs through the target as a normal
    /// test (the corpus lives in `fuzz/corpus/fuzz_scsi_disk/`).
    #[test]
    fn corpus_replays() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz")
            .join("corpus")
            .join("fuzz_scsi_disk");
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            super::execute_cdbs(&bytes);
            count += 1;
        }
        assert!(count >= 10, "corpus too small: {count}");
    }
}
