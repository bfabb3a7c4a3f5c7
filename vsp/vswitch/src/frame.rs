//! Frames as they sit in egress queues.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ops::Deref;

use crate::MacAddr;

/// Length of the Ethernet header (destination, source, EtherType): the smallest frame accepted.
pub const ETH_HEADER_LEN: usize = 14;

/// An Ethernet frame (header and payload, no FCS) queued for a port.
///
/// The bytes are immutable and shared: a flooded frame is copied once at ingress and every
/// port's queue holds a reference to the same buffer, so the memory a switch can pin is at most
/// the sum over ports of queue depth × maximum frame size. Cloning is cheap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame(Arc<[u8]>);

impl Frame {
    /// Copies `bytes` into a new frame. The switch does this once per accepted ingress frame.
    pub fn copy_from(bytes: &[u8]) -> Self {
        Self(Arc::from(bytes))
    }

    /// The frame's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The destination MAC, if the frame holds a full Ethernet header.
    pub fn destination(&self) -> Option<MacAddr> {
        header(&self.0).map(|(dst, _)| dst)
    }

    /// The source MAC, if the frame holds a full Ethernet header.
    pub fn source(&self) -> Option<MacAddr> {
        header(&self.0).map(|(_, src)| src)
    }

    /// The bytes as an owned vector (a copy).
    pub fn to_vec(&self) -> Vec<u8> {
        self.0.to_vec()
    }
}

impl Deref for Frame {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Frame {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Destination and source MACs of `bytes`, or `None` when it is shorter than a header.
pub(crate) fn header(bytes: &[u8]) -> Option<(MacAddr, MacAddr)> {
    if bytes.len() < ETH_HEADER_LEN {
        return None;
    }
    let dst: [u8; 6] = bytes[0..6].try_into().ok()?;
    let src: [u8; 6] = bytes[6..12].try_into().ok()?;
    Some((MacAddr(dst), MacAddr(src)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields() {
        let mut bytes = [0u8; 20];
        bytes[0..6].copy_from_slice(&[0xff; 6]);
        bytes[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        let frame = Frame::copy_from(&bytes);
        assert_eq!(frame.destination(), Some(MacAddr::BROADCAST));
        assert_eq!(frame.source(), Some(MacAddr([2, 0, 0, 0, 0, 9])));
        assert_eq!(frame.len(), 20);
        assert_eq!(frame.to_vec(), bytes);
        assert_eq!(Frame::copy_from(&bytes[..13]).source(), None);
    }
}
