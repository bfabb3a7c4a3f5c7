//! Neighbour snooping: read the sender of an ARP packet without a stack.
//!
//! The root uses this on frames that cross the virtual switch to learn which
//! IPv4 address a child NIC (known by its MAC) uses, so that `net ping ID`
//! can name a child instead of an address. The frame comes from an untrusted
//! child: every length and field is checked, nothing here can panic, and the
//! result is only a hint (a child can claim any address it likes).

/// EtherType of ARP (RFC 826, IANA "ETHER TYPES").
const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType of IPv4, which is also ARP's protocol type for IPv4 (RFC 826).
const ETHERTYPE_IPV4: u16 = 0x0800;
/// ARP hardware type 1: Ethernet (RFC 826 `ar$hrd`).
const ARP_HTYPE_ETHERNET: u16 = 1;
/// ARP opcodes (RFC 826 `ar$op`).
const ARP_OP_REQUEST: u16 = 1;
const ARP_OP_REPLY: u16 = 2;

/// Ethernet II header: destination, source, EtherType.
const ETH_HEADER_LEN: usize = 14;
/// ARP for Ethernet/IPv4: 8 fixed bytes, then 6 + 4 + 6 + 4 address bytes.
const ARP_IPV4_LEN: usize = 28;

/// Returns the sender hardware (MAC) and protocol (IPv4) address of a
/// well-formed Ethernet/IPv4 ARP request or reply (RFC 826).
///
/// `None` for anything else: a frame too short, not ARP (VLAN-tagged frames
/// included), another hardware or protocol type or address length, an opcode
/// other than request/reply, a sender MAC that is not unicast or differs from
/// the Ethernet source, or a sender IPv4 that cannot be a host's address
/// (0.0.0.0 as used by RFC 5227 probes, broadcast, multicast).
/// Trailing bytes (Ethernet padding to 60 bytes) are allowed.
pub fn arp_sender(frame: &[u8]) -> Option<([u8; 6], [u8; 4])> {
    let eth_src: [u8; 6] = frame.get(6..12)?.try_into().ok()?;
    if be16(frame, 12)? != ETHERTYPE_ARP {
        return None;
    }
    let arp = frame.get(ETH_HEADER_LEN..ETH_HEADER_LEN + ARP_IPV4_LEN)?;
    // RFC 826 packet layout: hrd(2) pro(2) hln(1) pln(1) op(2) sha spa tha tpa.
    if be16(arp, 0)? != ARP_HTYPE_ETHERNET || be16(arp, 2)? != ETHERTYPE_IPV4 {
        return None;
    }
    if *arp.get(4)? != 6 || *arp.get(5)? != 4 {
        return None;
    }
    let op = be16(arp, 6)?;
    if op != ARP_OP_REQUEST && op != ARP_OP_REPLY {
        return None;
    }
    let sha: [u8; 6] = arp.get(8..14)?.try_into().ok()?;
    let spa: [u8; 4] = arp.get(14..18)?.try_into().ok()?;
    // A sender MAC must be a unicast station address: group bit clear, not all
    // zeros. It must also be the frame's own source, or the mapping is a lie
    // about somebody else's frame (proxy ARP does not happen on this switch).
    if sha[0] & 1 != 0 || sha == [0; 6] || sha != eth_src {
        return None;
    }
    let ip = core::net::Ipv4Addr::from(spa);
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
        return None;
    }
    Some((sha, spa))
}

/// Big-endian u16 at `at`, or `None` if the slice is too short.
fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    let b = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
    const IP: [u8; 4] = [10, 0, 0, 11];

    fn arp_frame(op: u16) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&[0xff; 6]);
        f.extend_from_slice(&MAC);
        f.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        f.extend_from_slice(&1u16.to_be_bytes());
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        f.extend_from_slice(&[6, 4]);
        f.extend_from_slice(&op.to_be_bytes());
        f.extend_from_slice(&MAC);
        f.extend_from_slice(&IP);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&[10, 0, 0, 1]);
        f
    }

    #[test]
    fn request_and_reply_yield_sender() {
        assert_eq!(arp_sender(&arp_frame(1)), Some((MAC, IP)));
        assert_eq!(arp_sender(&arp_frame(2)), Some((MAC, IP)));
    }

    #[test]
    fn padding_is_allowed() {
        let mut f = arp_frame(1);
        f.resize(60, 0);
        assert_eq!(arp_sender(&f), Some((MAC, IP)));
    }

    #[test]
    fn every_truncation_is_rejected() {
        let f = arp_frame(1);
        for len in 0..f.len() {
            assert_eq!(arp_sender(&f[..len]), None, "len {len}");
        }
    }

    #[test]
    fn wrong_fields_are_rejected() {
        // (byte offset in the frame, value to write)
        let cases: &[(usize, u8)] = &[
            (12, 0x81), // EtherType 0x8106
            (13, 0x08), // EtherType 0x0808
            (13, 0x00), // EtherType 0x0800 (IPv4, not ARP)
            (15, 6),    // hardware type 6
            (16, 0x86), // protocol type 0x86dd
            (18, 8),    // hardware length 8
            (19, 16),   // protocol length 16
            (21, 3),    // opcode 3 (RARP request)
            (22, 0x03), // sender MAC multicast (and != Ethernet source)
            (6, 0x04),  // Ethernet source differs from sender MAC
        ];
        for &(at, value) in cases {
            let mut f = arp_frame(1);
            f[at] = value;
            assert_eq!(arp_sender(&f), None, "byte {at} = {value:#x}");
        }
    }

    #[test]
    fn useless_sender_addresses_are_rejected() {
        for spa in [[0, 0, 0, 0], [255, 255, 255, 255], [224, 0, 0, 1]] {
            let mut f = arp_frame(2);
            f[28..32].copy_from_slice(&spa);
            assert_eq!(arp_sender(&f), None, "{spa:?}");
        }
        let mut f = arp_frame(2);
        f[6..12].copy_from_slice(&[0; 6]);
        f[22..28].copy_from_slice(&[0; 6]);
        assert_eq!(arp_sender(&f), None, "zero MAC");
    }

    #[test]
    fn garbage_never_panics() {
        let mut x: u32 = 0x1234_5678;
        for len in 0..200usize {
            let mut f = Vec::with_capacity(len);
            for _ in 0..len {
                // xorshift32: deterministic noise.
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                f.push(x as u8);
            }
            let _ = arp_sender(&f);
            // Garbage with a valid ARP header prefix too.
            if len >= 22 {
                f[..22].copy_from_slice(&arp_frame(1)[..22]);
                let _ = arp_sender(&f);
            }
        }
    }
}
