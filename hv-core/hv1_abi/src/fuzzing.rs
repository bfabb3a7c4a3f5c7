//! The guest-controlled inputs of the hypercalls a child may make, as one
//! entry point for fuzzing (`hv-core/hv1_abi/fuzz`, cargo-fuzz) and the
//! property test below: a control word, a fast HvSignalEvent input and an
//! HvPostMessage input page. Whatever the bytes, decoding must not panic,
//! and what is accepted must satisfy the TLFS rules hv-core relies on.

use crate::hypercall::HypercallControl;
use crate::synic::{MESSAGE_PAYLOAD_MAX, PostMessageInput, decode_signal_event};
use zerocopy::FromBytes;

/// Decode `data` (zero-extended to 272 bytes) as control word, signal input
/// and post-message input, and check the accepted results' invariants.
pub fn hypercall_inputs(data: &[u8]) {
    let mut buf = [0u8; 8 + 8 + 256];
    let n = data.len().min(buf.len());
    buf[..n].copy_from_slice(&data[..n]);
    let control = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
    if let Ok(c) = HypercallControl::decode(control) {
        assert!(c.rep_count == 0 && c.rep_start == 0 || c.rep_start < c.rep_count);
        assert_eq!(HypercallControl::decode(c.encode()), Ok(c), "{control:#x}");
        // Reserved bits never survive a decode.
        assert_eq!(c.encode() & control, c.encode());
    }
    let signal = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
    let (connection, flag, reserved) = decode_signal_event(signal);
    assert_eq!(
        u64::from(connection) | u64::from(flag) << 32 | u64::from(reserved) << 48,
        signal
    );
    let input = PostMessageInput::read_from_bytes(&buf[16..]).expect("256 bytes");
    if let Ok((conn, m)) = input.to_message() {
        assert_eq!(conn, input.connection_id);
        let size = usize::from(m.header.payload_size);
        assert!(size <= MESSAGE_PAYLOAD_MAX);
        assert!(m.header.message_type != 0 && m.header.message_type >> 31 == 0);
        assert_eq!(m.header.sender, 0);
        assert!(m.payload[size..].iter().all(|&b| b == 0));
        assert_eq!(&m.payload[..size], &input.payload[..size]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        #[test]
        fn any_hypercall_input_is_decoded_safely(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            hypercall_inputs(&data);
        }

        /// Inputs shaped like real ones: small sizes and types near the edges.
        #[test]
        fn post_message_edges(size in 0u32..300, ty in prop_oneof![Just(0u32), Just(1), Just(0x7FFF_FFFF), Just(0x8000_0000), any::<u32>()], reserved in prop_oneof![Just(0u32), any::<u32>()]) {
            let mut data = [0u8; 272];
            data[16..20].copy_from_slice(&1u32.to_le_bytes());
            data[20..24].copy_from_slice(&reserved.to_le_bytes());
            data[24..28].copy_from_slice(&ty.to_le_bytes());
            data[28..32].copy_from_slice(&size.to_le_bytes());
            data[32..].fill(0xAB);
            hypercall_inputs(&data);
            let input = PostMessageInput::read_from_bytes(&data[16..]).unwrap();
            let ok = input.to_message().is_ok();
            prop_assert_eq!(ok, reserved == 0 && size <= 240 && ty != 0 && ty >> 31 == 0);
        }
    }

    /// The seed corpus of the fuzz target replays as a test.
    #[test]
    fn fuzz_corpus_replays() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/fuzz_hypercall_inputs");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).expect("corpus directory") {
            let bytes = std::fs::read(entry.expect("entry").path()).expect("corpus file");
            hypercall_inputs(&bytes);
            n += 1;
        }
        assert!(n >= 4, "only {n} corpus files");
    }
}
