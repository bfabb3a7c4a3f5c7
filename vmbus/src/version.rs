//! VMBus protocol versions and the INITIATE_CONTACT decision
//! (vmbus-wire.md §1; Linux `drivers/hv/connection.c` `vmbus_versions`).

use crate::protocol::{
    Header, InitiateContact, MESSAGE_CONNECTION_ID, MESSAGE_CONNECTION_ID_4, VMBUS_SINT, VersionResponse,
};

/// A protocol version, `major << 16 | minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32);

#[allow(missing_docs)] // names as in Linux's hyperv.h
impl Version {
    pub const WS2008: Self = Self(0x0000_000D);
    pub const WIN7: Self = Self(0x0001_0001);
    pub const WIN8: Self = Self(0x0002_0004);
    pub const WIN8_1: Self = Self(0x0003_0000);
    pub const WIN10: Self = Self(0x0004_0000);
    pub const WIN10_V4_1: Self = Self(0x0004_0001);
    pub const WIN10_V5: Self = Self(0x0005_0000);
    pub const WIN10_V5_1: Self = Self(0x0005_0001);
    pub const WIN10_V5_2: Self = Self(0x0005_0002);
    pub const WIN10_V5_3: Self = Self(0x0005_0003);

    /// `major.minor`.
    pub fn parts(self) -> (u16, u16) {
        ((self.0 >> 16) as u16, self.0 as u16)
    }
}

/// What this implementation speaks: 2.4 (Win8) up to 5.3, newest first (the
/// order Linux 6.1 tries them in).
pub const SUPPORTED: [Version; 8] = [
    Version::WIN10_V5_3,
    Version::WIN10_V5_2,
    Version::WIN10_V5_1,
    Version::WIN10_V5,
    Version::WIN10_V4_1,
    Version::WIN10,
    Version::WIN8_1,
    Version::WIN8,
];

/// `connection_state` values of VERSION_RESPONSE.
pub mod connection_state {
    /// Connected.
    pub const SUCCESSFUL: u8 = 0;
    /// Out of resources.
    pub const FAILED_LOW_RESOURCES: u8 = 1;
    /// Anything else.
    pub const FAILED_UNKNOWN_FAILURE: u8 = 2;
}

/// The server's decision on an INITIATE_CONTACT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contact {
    /// Connected at `version`; channel messages go to `target_vp` on `sint`.
    Accepted {
        /// Agreed version.
        version: Version,
        /// VP receiving channel messages.
        target_vp: u32,
        /// SINT receiving them.
        sint: u8,
        /// Monitor pages (parent→child, child→parent), if any.
        monitor_pages: Option<(u64, u64)>,
    },
    /// Not this version: the guest tries the next one.
    Unsupported,
    /// A version we speak, asked for wrongly (bad SINT/VTL, half-given monitor
    /// pages, wrong connection id).
    Refused(&'static str),
}

/// Decide on `request`, which arrived on `connection_id`. Both 1 and 4 are
/// accepted for every version (vmbus-wire.md pitfall 1).
pub fn decide(request: &InitiateContact, connection_id: u32) -> Contact {
    let version = Version(request.version_requested);
    if !SUPPORTED.contains(&version) {
        return Contact::Unsupported;
    }
    if connection_id != MESSAGE_CONNECTION_ID && connection_id != MESSAGE_CONNECTION_ID_4 {
        return Contact::Refused("INITIATE_CONTACT on an unknown connection id");
    }
    let sint = if version >= Version::WIN10_V5 {
        let sint = request.interrupt_page_or_sint as u8;
        let vtl = (request.interrupt_page_or_sint >> 8) as u8;
        if vtl != 0 {
            return Contact::Refused("only VTL 0 is served");
        }
        if sint >= 16 {
            return Contact::Refused("SINT out of range");
        }
        sint
    } else {
        VMBUS_SINT
    };
    let monitor_pages = match (request.monitor_page1, request.monitor_page2) {
        (0, 0) => None,
        (a, b) if a != 0 && b != 0 && a % 4096 == 0 && b % 4096 == 0 && a != b => Some((a, b)),
        _ => {
            return Contact::Refused(
                "monitor pages must both be given (distinct, page aligned) or both be 0",
            );
        }
    };
    // Below 3.0 the host ignores target_vcpu and uses VP 0.
    let target_vp = if version >= Version::WIN8_1 {
        request.target_vcpu
    } else {
        0
    };
    Contact::Accepted {
        version,
        target_vp,
        sint,
        monitor_pages,
    }
}

/// The VERSION_RESPONSE for a decision.
pub fn response(contact: &Contact) -> VersionResponse {
    let (supported, state) = match contact {
        Contact::Accepted { .. } => (1, connection_state::SUCCESSFUL),
        Contact::Unsupported => (0, connection_state::SUCCESSFUL),
        Contact::Refused(_) => (0, connection_state::FAILED_UNKNOWN_FAILURE),
    };
    VersionResponse {
        header: Header::new(VersionResponse::TYPE),
        version_supported: supported,
        connection_state: state,
        padding: 0,
        // Later messages go to connection id 1 (what Hyper-V and OpenVMM return).
        message_connection_id: MESSAGE_CONNECTION_ID,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contact(version: Version, sint: u64, m1: u64, m2: u64) -> InitiateContact {
        InitiateContact {
            header: Header::new(InitiateContact::TYPE),
            version_requested: version.0,
            target_vcpu: 3,
            interrupt_page_or_sint: sint,
            monitor_page1: m1,
            monitor_page2: m2,
        }
    }

    #[test]
    fn every_supported_version_is_accepted_on_both_connection_ids() {
        for v in SUPPORTED {
            for conn in [1, 4] {
                let c = decide(&contact(v, 2, 0, 0), conn);
                let Contact::Accepted {
                    version,
                    target_vp,
                    sint,
                    monitor_pages,
                } = c
                else {
                    panic!("{v:?}: {c:?}")
                };
                assert_eq!(version, v);
                assert_eq!(target_vp, if v >= Version::WIN8_1 { 3 } else { 0 });
                assert_eq!(sint, 2);
                assert_eq!(monitor_pages, None);
                let r = response(&c);
                assert_eq!(
                    (r.version_supported, r.connection_state, r.message_connection_id),
                    (1, 0, 1)
                );
            }
        }
    }

    #[test]
    fn unsupported_and_malformed_requests() {
        for v in [
            Version::WS2008,
            Version::WIN7,
            Version(0x0006_0000),
            Version(0xFFFF_FFFF),
        ] {
            assert_eq!(decide(&contact(v, 2, 0, 0), 1), Contact::Unsupported);
            assert_eq!(response(&Contact::Unsupported).version_supported, 0);
        }
        assert!(matches!(
            decide(&contact(Version::WIN10_V5_3, 2 | (1 << 8), 0, 0), 4),
            Contact::Refused(_)
        ));
        assert!(matches!(
            decide(&contact(Version::WIN10_V5_3, 16, 0, 0), 4),
            Contact::Refused(_)
        ));
        assert!(matches!(
            decide(&contact(Version::WIN10, 0, 0x1000, 0), 1),
            Contact::Refused(_)
        ));
        assert!(matches!(
            decide(&contact(Version::WIN10, 0, 0x1000, 0x1000), 1),
            Contact::Refused(_)
        ));
        assert!(matches!(
            decide(&contact(Version::WIN10, 0, 0x1000, 0x2000), 7),
            Contact::Refused(_)
        ));
        let ok = decide(&contact(Version::WIN10, 0, 0x1000, 0x2000), 1);
        assert!(matches!(
            ok,
            Contact::Accepted {
                monitor_pages: Some((0x1000, 0x2000)),
                ..
            }
        ));
        assert_eq!(response(&Contact::Refused("x")).connection_state, 2);
    }
}
