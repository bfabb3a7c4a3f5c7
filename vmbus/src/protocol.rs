//! VMBus channel messages (vmbus-wire.md §1–§2; Linux `include/linux/hyperv.h`
//! `vmbus_channel_*`). Each starts with `{msgtype u32, padding u32}` and fits
//! a SynIC message payload (240 bytes). Parsing checks the type and the
//! minimum size of each message; trailing bytes (newer protocol forms) are
//! ignored, as Linux does.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Largest channel message (the SynIC payload).
pub const MAX_MESSAGE_SIZE: usize = 240;

/// SynIC message type of every VMBus channel message.
pub const VMBUS_MESSAGE_TYPE: u32 = 1;
/// SINT VMBus uses for messages and channel events.
pub const VMBUS_SINT: u8 = 2;
/// Connection id for messages (and INITIATE_CONTACT below 5.0).
pub const MESSAGE_CONNECTION_ID: u32 = 1;
/// Connection id INITIATE_CONTACT uses from 5.0 on.
pub const MESSAGE_CONNECTION_ID_4: u32 = 4;
/// Relids are bits in the 2048-bit SINT2 event area; 0 is reserved.
pub const MAX_RELID: u32 = 2047;

/// Channel message types (`enum vmbus_channel_message_type`). Open newtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageType(pub u32);

#[allow(missing_docs)] // names as in the Linux/Hyper-V headers
impl MessageType {
    pub const OFFER_CHANNEL: Self = Self(1);
    pub const RESCIND_CHANNEL_OFFER: Self = Self(2);
    pub const REQUEST_OFFERS: Self = Self(3);
    pub const ALL_OFFERS_DELIVERED: Self = Self(4);
    pub const OPEN_CHANNEL: Self = Self(5);
    pub const OPEN_CHANNEL_RESULT: Self = Self(6);
    pub const CLOSE_CHANNEL: Self = Self(7);
    pub const GPADL_HEADER: Self = Self(8);
    pub const GPADL_BODY: Self = Self(9);
    pub const GPADL_CREATED: Self = Self(10);
    pub const GPADL_TEARDOWN: Self = Self(11);
    pub const GPADL_TORNDOWN: Self = Self(12);
    pub const RELID_RELEASED: Self = Self(13);
    pub const INITIATE_CONTACT: Self = Self(14);
    pub const VERSION_RESPONSE: Self = Self(15);
    pub const UNLOAD: Self = Self(16);
    pub const UNLOAD_RESPONSE: Self = Self(17);
    pub const TL_CONNECT_REQUEST: Self = Self(21);
    pub const MODIFY_CHANNEL: Self = Self(22);
    pub const TL_CONNECT_RESULT: Self = Self(23);
    pub const MODIFY_CHANNEL_RESPONSE: Self = Self(24);
}

/// Every message's first 8 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Header {
    /// [`MessageType`] value.
    pub msgtype: u32,
    /// Zero.
    pub padding: u32,
}

impl Header {
    /// A header for `t`.
    pub const fn new(t: MessageType) -> Self {
        Self {
            msgtype: t.0,
            padding: 0,
        }
    }
}

macro_rules! message {
    ($(#[$m:meta])* $name:ident = $kind:ident, $size:expr, { $($(#[$fm:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
        pub struct $name {
            /// Header (type [`MessageType::$kind`]).
            pub header: Header,
            $($(#[$fm])* pub $field: $ty,)*
        }
        const _: () = assert!(size_of::<$name>() == $size);
        impl $name {
            /// Its message type.
            pub const TYPE: MessageType = MessageType::$kind;
        }
    };
}

message!(
    /// OFFERCHANNEL (1), host → guest, 196 bytes.
    OfferChannel = OFFER_CHANNEL, 196, {
        /// Interface type GUID (wire byte order).
        interface_type: [u8; 16],
        /// Instance GUID.
        interface_instance: [u8; 16],
        /// Reserved.
        reserved: [u8; 16],
        /// `chn_flags`.
        channel_flags: u16,
        /// MMIO wanted, in MiB.
        mmio_megabytes: u16,
        /// Pipe mode etc.
        user_defined: [u8; 120],
        /// 0 = primary channel.
        sub_channel_index: u16,
        /// Reserved.
        reserved2: u16,
        /// Channel id, 1..=2047.
        child_relid: u32,
        /// Monitor slot.
        monitor_id: u8,
        /// Bit 0: monitor page in use (0: the guest uses HvSignalEvent).
        monitor_allocated: u8,
        /// Bit 0: dedicated interrupt.
        is_dedicated_interrupt: u16,
        /// Connection id for HvSignalEvent.
        connection_id: u32,
    }
);
message!(
    /// RESCIND_CHANNELOFFER (2).
    RescindChannelOffer = RESCIND_CHANNEL_OFFER, 12, { /// The channel.
        child_relid: u32 }
);
message!(
    /// REQUESTOFFERS (3).
    RequestOffers = REQUEST_OFFERS, 8, {}
);
message!(
    /// ALLOFFERS_DELIVERED (4).
    AllOffersDelivered = ALL_OFFERS_DELIVERED, 8, {}
);
message!(
    /// OPENCHANNEL (5), 148 bytes.
    OpenChannel = OPEN_CHANNEL, 148, {
        /// The channel.
        child_relid: u32,
        /// Echoed in the result.
        open_id: u32,
        /// GPADL holding both rings.
        ring_gpadl: u32,
        /// VP for host→guest interrupts.
        target_vp: u32,
        /// Page where the host→guest ring starts in the GPADL.
        downstream_ring_page_offset: u32,
        /// Device-specific data.
        user_data: [u8; 120],
    }
);
message!(
    /// OPENCHANNEL_RESULT (6).
    OpenResult = OPEN_CHANNEL_RESULT, 20, {
        /// The channel.
        child_relid: u32,
        /// As in the request.
        open_id: u32,
        /// 0 = success.
        status: u32,
    }
);
message!(
    /// CLOSECHANNEL (7).
    CloseChannel = CLOSE_CHANNEL, 12, { /// The channel.
        child_relid: u32 }
);
message!(
    /// GPADL_HEADER (8) fixed part; the range bytes follow.
    GpadlHeader = GPADL_HEADER, 20, {
        /// The offer it belongs to.
        child_relid: u32,
        /// Handle chosen by the guest.
        gpadl: u32,
        /// Bytes of all ranges (8-byte range headers included).
        range_buflen: u16,
        /// Number of ranges.
        range_count: u16,
    }
);
message!(
    /// GPADL_BODY (9) fixed part; PFNs follow.
    GpadlBody = GPADL_BODY, 16, {
        /// Ignored (Linux sends 0).
        msgnumber: u32,
        /// The handle being continued.
        gpadl: u32,
    }
);
message!(
    /// GPADL_CREATED (10).
    GpadlCreated = GPADL_CREATED, 20, {
        /// The offer.
        child_relid: u32,
        /// The handle.
        gpadl: u32,
        /// 0 = created.
        status: u32,
    }
);
message!(
    /// GPADL_TEARDOWN (11).
    GpadlTeardown = GPADL_TEARDOWN, 16, {
        /// The offer.
        child_relid: u32,
        /// The handle.
        gpadl: u32,
    }
);
message!(
    /// GPADL_TORNDOWN (12).
    GpadlTorndown = GPADL_TORNDOWN, 12, { /// The handle.
        gpadl: u32 }
);
message!(
    /// RELID_RELEASED (13).
    RelidReleased = RELID_RELEASED, 12, { /// The channel.
        child_relid: u32 }
);
message!(
    /// INITIATE_CONTACT (14), 40 bytes.
    InitiateContact = INITIATE_CONTACT, 40, {
        /// Version asked for.
        version_requested: u32,
        /// VP all channel messages go to.
        target_vcpu: u32,
        /// < 5.0: interrupt page GPA; >= 5.0: SINT in byte 0, VTL in byte 1.
        interrupt_page_or_sint: u64,
        /// Parent→child monitor page.
        monitor_page1: u64,
        /// Child→parent monitor page.
        monitor_page2: u64,
    }
);
message!(
    /// VERSIONRESPONSE (15), 16 bytes.
    VersionResponse = VERSION_RESPONSE, 16, {
        /// 1 = accepted.
        version_supported: u8,
        /// 0 success, 1 low resources, 2 unknown failure.
        connection_state: u8,
        /// Padding.
        padding: u16,
        /// Connection id for later messages (>= 5.0).
        message_connection_id: u32,
    }
);
message!(
    /// UNLOAD (16).
    Unload = UNLOAD, 8, {}
);
message!(
    /// UNLOAD_RESPONSE (17).
    UnloadResponse = UNLOAD_RESPONSE, 8, {}
);
message!(
    /// MODIFYCHANNEL (22).
    ModifyChannel = MODIFY_CHANNEL, 16, {
        /// The channel.
        child_relid: u32,
        /// New target VP.
        target_vp: u32,
    }
);
message!(
    /// MODIFYCHANNEL_RESPONSE (24).
    ModifyChannelResponse = MODIFY_CHANNEL_RESPONSE, 16, {
        /// The channel.
        child_relid: u32,
        /// 0 = done.
        status: i32,
    }
);

/// A parsed channel message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// OFFERCHANNEL.
    OfferChannel(OfferChannel),
    /// RESCIND_CHANNELOFFER.
    RescindChannelOffer(RescindChannelOffer),
    /// REQUESTOFFERS.
    RequestOffers,
    /// ALLOFFERS_DELIVERED.
    AllOffersDelivered,
    /// OPENCHANNEL.
    OpenChannel(OpenChannel),
    /// OPENCHANNEL_RESULT.
    OpenResult(OpenResult),
    /// CLOSECHANNEL.
    CloseChannel(CloseChannel),
    /// GPADL_HEADER and the range bytes that came with it.
    GpadlHeader(GpadlHeader, &'a [u8]),
    /// GPADL_BODY and its PFN bytes.
    GpadlBody(GpadlBody, &'a [u8]),
    /// GPADL_CREATED.
    GpadlCreated(GpadlCreated),
    /// GPADL_TEARDOWN.
    GpadlTeardown(GpadlTeardown),
    /// GPADL_TORNDOWN.
    GpadlTorndown(GpadlTorndown),
    /// RELID_RELEASED.
    RelidReleased(RelidReleased),
    /// INITIATE_CONTACT.
    InitiateContact(InitiateContact),
    /// VERSIONRESPONSE.
    VersionResponse(VersionResponse),
    /// UNLOAD.
    Unload,
    /// UNLOAD_RESPONSE.
    UnloadResponse,
    /// MODIFYCHANNEL.
    ModifyChannel(ModifyChannel),
    /// MODIFYCHANNEL_RESPONSE.
    ModifyChannelResponse(ModifyChannelResponse),
}

/// Why a message was refused (always the sender's fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than its type requires.
    Truncated {
        /// The type.
        msgtype: u32,
        /// Bytes received.
        len: usize,
        /// Bytes required.
        needed: usize,
    },
    /// Longer than a SynIC payload.
    Oversized(usize),
    /// A type this implementation does not know or does not carry.
    UnknownType(u32),
}

fn fixed<T: FromBytes + KnownLayout + Immutable>(
    bytes: &[u8],
    msgtype: u32,
) -> Result<(T, &[u8]), ParseError> {
    T::read_from_prefix(bytes).map_err(|_| ParseError::Truncated {
        msgtype,
        len: bytes.len(),
        needed: size_of::<T>(),
    })
}

impl<'a> Message<'a> {
    /// Parse one message.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ParseError> {
        if bytes.len() > MAX_MESSAGE_SIZE {
            return Err(ParseError::Oversized(bytes.len()));
        }
        let (header, _) = fixed::<Header>(bytes, 0)?;
        let t = header.msgtype;
        Ok(match MessageType(t) {
            MessageType::OFFER_CHANNEL => Self::OfferChannel(fixed(bytes, t)?.0),
            MessageType::RESCIND_CHANNEL_OFFER => Self::RescindChannelOffer(fixed(bytes, t)?.0),
            MessageType::REQUEST_OFFERS => Self::RequestOffers,
            MessageType::ALL_OFFERS_DELIVERED => Self::AllOffersDelivered,
            MessageType::OPEN_CHANNEL => Self::OpenChannel(fixed(bytes, t)?.0),
            MessageType::OPEN_CHANNEL_RESULT => Self::OpenResult(fixed(bytes, t)?.0),
            MessageType::CLOSE_CHANNEL => Self::CloseChannel(fixed(bytes, t)?.0),
            MessageType::GPADL_HEADER => {
                let (h, rest) = fixed::<GpadlHeader>(bytes, t)?;
                Self::GpadlHeader(h, rest)
            }
            MessageType::GPADL_BODY => {
                let (b, rest) = fixed::<GpadlBody>(bytes, t)?;
                Self::GpadlBody(b, rest)
            }
            MessageType::GPADL_CREATED => Self::GpadlCreated(fixed(bytes, t)?.0),
            MessageType::GPADL_TEARDOWN => Self::GpadlTeardown(fixed(bytes, t)?.0),
            MessageType::GPADL_TORNDOWN => Self::GpadlTorndown(fixed(bytes, t)?.0),
            MessageType::RELID_RELEASED => Self::RelidReleased(fixed(bytes, t)?.0),
            MessageType::INITIATE_CONTACT => Self::InitiateContact(fixed(bytes, t)?.0),
            MessageType::VERSION_RESPONSE => Self::VersionResponse(fixed(bytes, t)?.0),
            MessageType::UNLOAD => Self::Unload,
            MessageType::UNLOAD_RESPONSE => Self::UnloadResponse,
            MessageType::MODIFY_CHANNEL => Self::ModifyChannel(fixed(bytes, t)?.0),
            MessageType::MODIFY_CHANNEL_RESPONSE => Self::ModifyChannelResponse(fixed(bytes, t)?.0),
            _ => return Err(ParseError::UnknownType(t)),
        })
    }
}

/// A GUID in VMBus wire byte order (Linux `GUID_INIT`,
/// `include/linux/uuid.h`: the first three fields little-endian, the last
/// eight bytes as written), for device interface types.
pub const fn guid(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> [u8; 16] {
    let a = d1.to_le_bytes();
    let b = d2.to_le_bytes();
    let c = d3.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4], d4[5], d4[6],
        d4[7],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn offsets_match_the_wire() {
        assert_eq!(offset_of!(OfferChannel, channel_flags), 56);
        assert_eq!(offset_of!(OfferChannel, user_defined), 60);
        assert_eq!(offset_of!(OfferChannel, sub_channel_index), 180);
        assert_eq!(offset_of!(OfferChannel, child_relid), 184);
        assert_eq!(offset_of!(OfferChannel, monitor_id), 188);
        assert_eq!(offset_of!(OfferChannel, is_dedicated_interrupt), 190);
        assert_eq!(offset_of!(OfferChannel, connection_id), 192);
        assert_eq!(offset_of!(OpenChannel, downstream_ring_page_offset), 24);
        assert_eq!(offset_of!(OpenChannel, user_data), 28);
        assert_eq!(offset_of!(InitiateContact, monitor_page2), 32);
        assert_eq!(offset_of!(VersionResponse, message_connection_id), 12);
        assert_eq!(offset_of!(GpadlHeader, range_count), 18);
    }

    #[test]
    fn parse_round_trips_and_refuses_garbage() {
        let ic = InitiateContact {
            header: Header::new(InitiateContact::TYPE),
            version_requested: 0x0005_0003,
            target_vcpu: 0,
            interrupt_page_or_sint: 2,
            monitor_page1: 0x1000,
            monitor_page2: 0x2000,
        };
        assert_eq!(Message::parse(ic.as_bytes()), Ok(Message::InitiateContact(ic)));
        assert_eq!(
            Message::parse(&ic.as_bytes()[..39]),
            Err(ParseError::Truncated {
                msgtype: 14,
                len: 39,
                needed: 40
            })
        );
        let mut long = ic.as_bytes().to_vec();
        long.extend_from_slice(&[0u8; 16]);
        assert!(Message::parse(&long).is_ok(), "newer, longer forms are accepted");
        assert_eq!(Message::parse(&[0u8; 241]), Err(ParseError::Oversized(241)));
        assert_eq!(
            Message::parse(&[99, 0, 0, 0, 0, 0, 0, 0]),
            Err(ParseError::UnknownType(99))
        );
        assert!(matches!(
            Message::parse(&[1, 0]),
            Err(ParseError::Truncated { .. })
        ));
        let mut gh = GpadlHeader {
            header: Header::new(GpadlHeader::TYPE),
            child_relid: 3,
            gpadl: 7,
            range_buflen: 16,
            range_count: 1,
        }
        .as_bytes()
        .to_vec();
        gh.extend_from_slice(&[1u8; 16]);
        match Message::parse(&gh).unwrap() {
            Message::GpadlHeader(h, rest) => {
                assert_eq!(h.gpadl, 7);
                assert_eq!(rest.len(), 16);
            }
            other => panic!("{other:?}"),
        }
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..260)) {
            let _ = Message::parse(&bytes);
        }
    }
}
