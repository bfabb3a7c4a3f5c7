//! Entry points shared by the cargo-fuzz targets (`vsp/rndis/fuzz/`) and
//! the corpus-replay test: each takes arbitrary bytes (what a hostile guest
//! controls) and must never panic.

use crate::{Config, Rndis};
use alloc::vec::Vec;
use nvsp_protocol::rndis::{self as wire, MessageType, Oid, packet_filter};

const MAC: [u8; 6] = [0x00, 0x15, 0x5D, 0x00, 0x00, 0x01];

/// A device brought up the way Linux does (INITIALIZE, packet filter).
fn ready() -> Rndis {
    let mut r = Rndis::new(Config::new(MAC));
    let _ = r.handle(&wire::initialize_request(1));
    let _ = r.handle(&wire::oid_request(
        MessageType::SET,
        2,
        Oid::GEN_CURRENT_PACKET_FILTER,
        &packet_filter::LINUX_OPEN.to_le_bytes(),
    ));
    r
}

/// The RNDIS device fed hostile bytes: the whole input as one buffer to a
/// fresh and to a ready device; then the input split into its RNDIS
/// messages (as far as their lengths hold) fed one at a time to a fresh
/// device, so the fuzzer can drive the state machine (INITIALIZE, sets,
/// HALT, RESET, packets) in any order; and the input as a frame for the
/// guest.
pub fn rndis(data: &[u8]) {
    let _ = Rndis::new(Config::new(MAC)).handle(data);
    let mut r = ready();
    if let Ok(resp) = r.handle(data) {
        for f in &resp.frames {
            assert!(f.data.len() >= 14 && f.data.len() <= 1518);
        }
    }
    let _ = r.frame_to_guest(data);

    let mut seq = Rndis::new(Config::new(MAC));
    let mut rest = data;
    let mut n = 0;
    while let Ok((header, _, next)) = wire::split_message(rest) {
        let len = header.message_length.get() as usize;
        let _ = seq.handle(&rest[..len]);
        let _ = seq.frame_to_guest(&rest[..len]);
        if n % 4 == 3 {
            let _ = seq.set_link_up(n % 8 == 3);
        }
        rest = next;
        n += 1;
    }
}

/// NVSP and transfer-page parsing fed hostile bytes.
pub fn nvsp(data: &[u8]) {
    let _ = nvsp_protocol::Message::parse(data);
    let _ = nvsp_protocol::transfer_page::parse(data);
    if let Ok(nvsp_protocol::Message::Init(init)) = nvsp_protocol::Message::parse(data) {
        let _ = nvsp_protocol::negotiate(&init, &nvsp_protocol::Version::ALL);
    }
}

/// Seed inputs for the `fuzz_rndis` target: what Linux sends, whole
/// sequences and single messages (used to build `fuzz/corpus/fuzz_rndis`,
/// and replayed by the tests).
pub fn rndis_seeds() -> Vec<Vec<u8>> {
    let q = |id, oid, info: &[u8]| wire::oid_request(MessageType::QUERY, id, oid, info);
    let s = |id, oid, info: &[u8]| wire::oid_request(MessageType::SET, id, oid, info);
    let frame: Vec<u8> = [[0xFFu8; 6].as_slice(), &MAC, &[0x08, 0x06], &[0u8; 46]].concat();
    let mut offload = alloc::vec![0u8; 156];
    offload[..4].copy_from_slice(&[0xA7, 3, 156, 0]);
    let mut params = alloc::vec![0u8; 28];
    params[..5].copy_from_slice(&[0x80, 3, 28, 0, 1]);
    let mut vlan = wire::ppi_u32(wire::ppi::HASH_VALUE, 0xABCD).to_vec();
    vlan.extend_from_slice(&wire::ppi_u32(wire::ppi::IEEE_8021Q, 3 | (42 << 4)));
    let halt = wire::build_message(
        MessageType::HALT,
        &wire::RequestId {
            request_id: 99.into(),
        },
        &[],
    );
    let linux_bringup = [
        wire::initialize_request(1),
        q(2, Oid::GEN_MAXIMUM_FRAME_SIZE, &[]),
        q(3, Oid::OID_802_3_PERMANENT_ADDRESS, &[]),
        q(4, Oid::GEN_FRIENDLY_NAME, &[]),
        q(5, Oid::TCP_OFFLOAD_HARDWARE_CAPABILITIES, &offload),
        s(6, Oid::TCP_OFFLOAD_PARAMETERS, &params),
        q(7, Oid::GEN_MEDIA_CONNECT_STATUS, &[]),
        q(8, Oid::GEN_LINK_SPEED, &[]),
        s(9, Oid::GEN_CURRENT_PACKET_FILTER, &0x0Du32.to_le_bytes()),
        wire::packet_message(&frame, &[]),
        wire::packet_message(&frame, &vlan),
        halt.clone(),
    ]
    .concat();
    let mut batch = Vec::new();
    for _ in 0..3 {
        let mut m = wire::packet_message(&frame, &[]);
        let padded = m.len().next_multiple_of(8);
        m.resize(padded, 0);
        m[4..8].copy_from_slice(&(padded as u32).to_le_bytes());
        batch.extend_from_slice(&m);
    }
    let mut config = [20u32, 28, 2, 48, 24]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect::<Vec<u8>>();
    config.extend("NetworkAddress".encode_utf16().flat_map(|c| c.to_le_bytes()));
    config.extend("00155d000002".encode_utf16().flat_map(|c| c.to_le_bytes()));
    alloc::vec![
        linux_bringup,
        wire::initialize_request(1),
        q(2, Oid::GEN_SUPPORTED_LIST, &[]),
        s(3, Oid::OID_802_3_MULTICAST_LIST, &[0x01, 0x00, 0x5E, 0, 0, 1]),
        s(4, Oid::GEN_RNDIS_CONFIG_PARAMETER, &config),
        wire::packet_message(&frame, &vlan),
        batch,
        wire::build_message(MessageType::RESET, &wire::RequestId { request_id: 0.into() }, &[]),
        wire::build_message(
            MessageType::KEEPALIVE,
            &wire::RequestId { request_id: 5.into() },
            &[]
        ),
        halt,
        wire::packet_message(&frame, &wire::ppi_u32(wire::ppi::TCPIP_CHECKSUM, 5)),
    ]
}

/// Seed inputs for the `fuzz_nvsp` target: every message Linux sends and
/// every message the host builds, and a transfer-page packet.
pub fn nvsp_seeds() -> Vec<Vec<u8>> {
    use nvsp_protocol as n;
    let xfer = n::transfer_page::build(
        7,
        n::LINUX_RECEIVE_BUFFER_ID,
        &[n::transfer_page::TransferPageRange::new(0, 60)],
        &n::send_rndis_packet(n::CHANNEL_TYPE_DATA),
    )
    .unwrap_or_default();
    alloc::vec![
        n::init(n::Version::V61).to_vec(),
        n::init(n::Version::V1).to_vec(),
        n::send_ndis_config(1514, n::capability::IEEE_8021Q | n::capability::RSC).to_vec(),
        n::send_ndis_version(6, 30).to_vec(),
        n::send_buffer(true, 0xE1E10, 0xCAFE).to_vec(),
        n::send_buffer(false, 0xE1E11, 0).to_vec(),
        n::send_rndis_packet_in_section(n::CHANNEL_TYPE_DATA, Some((1, 60))).to_vec(),
        n::send_rndis_packet_complete(n::Status::SUCCESS)[..8].to_vec(),
        n::init_complete(Some(n::Version::V61), n::DEFAULT_MAX_MDL_CHAIN_LENGTH).to_vec(),
        n::send_receive_buffer_complete(None).to_vec(),
        n::subchannel_complete(n::Status::SUCCESS, 0).to_vec(),
        xfer,
    ]
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    fn corpus_root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join("corpus")
    }

    /// Every file of the fuzz corpus runs through the targets as a normal test.
    #[test]
    fn corpus_replays() {
        let mut count = 0;
        for (target, f) in [
            ("fuzz_rndis", super::rndis as fn(&[u8])),
            ("fuzz_nvsp", super::nvsp),
        ] {
            let dir = corpus_root().join(target);
            let mut here = 0;
            for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
                let bytes = std::fs::read(entry.unwrap().path()).unwrap();
                f(&bytes);
                here += 1;
            }
            assert!(here >= 10, "corpus {target} too small: {here}");
            count += here;
        }
        assert!(count >= 20);
    }

    /// The seeds themselves, and the first one is the Linux bring-up that
    /// ends in a working device.
    #[test]
    fn seeds_replay() {
        for s in super::rndis_seeds() {
            super::rndis(&s);
        }
        for s in super::nvsp_seeds() {
            super::nvsp(&s);
        }
        assert!(super::rndis_seeds().len() >= 10 && super::nvsp_seeds().len() >= 10);
    }

    /// Write the seeds into `fuzz/corpus/<target>/seed-NN` (run with
    /// `cargo test -p rndis -- --ignored write_seed_corpus`).
    #[test]
    #[ignore = "writes the seed corpus into fuzz/corpus/ (run by hand), not a check"]
    fn write_seed_corpus() {
        for (target, seeds) in [
            ("fuzz_rndis", super::rndis_seeds()),
            ("fuzz_nvsp", super::nvsp_seeds()),
        ] {
            let dir = corpus_root().join(target);
            std::fs::create_dir_all(&dir).unwrap();
            for (i, s) in seeds.iter().enumerate() {
                std::fs::write(dir.join(format!("seed-{i:02}")), s).unwrap();
            }
        }
    }
}
