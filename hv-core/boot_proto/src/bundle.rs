//! The boot bundle: one archive passed as the PVH module (`-initrd`), holding
//! the hv-core image and, later, child images and the partition manifest.
//!
//! Layout (all integers little-endian; documented in `docs/boot.md`):
//!
//! ```text
//! 0x00  magic     [u8; 8] = "HVBUNDLE"
//! 0x08  version   u32     = 1
//! 0x0C  count     u32     number of entries (<= MAX_ENTRIES)
//! 0x10  entries   count x Entry (48 bytes each)
//!        name    [u8; 32]  UTF-8, NUL-padded
//!        offset  u64       from the start of the bundle, 4 KiB aligned
//!        size    u64
//! ...   payloads, each starting at its 4 KiB-aligned offset
//! ```

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Bundle magic.
pub const MAGIC: [u8; 8] = *b"HVBUNDLE";
/// Format version.
pub const VERSION: u32 = 1;
/// Upper bound on entries, so a corrupt count cannot make us walk far.
pub const MAX_ENTRIES: u32 = 64;
/// Payload alignment.
pub const PAYLOAD_ALIGN: u64 = 4096;
/// Name of the hv-core image entry.
pub const HV_CORE_ENTRY: &str = "hv-core";

/// Bundle header.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Header {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`VERSION`].
    pub version: u32,
    /// Number of entries following the header.
    pub count: u32,
}
const _: () = assert!(size_of::<Header>() == 16);

/// One directory entry.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Entry {
    /// NUL-padded UTF-8 name.
    pub name: [u8; 32],
    /// Offset of the payload from the start of the bundle.
    pub offset: u64,
    /// Payload size in bytes.
    pub size: u64,
}
const _: () = assert!(size_of::<Entry>() == 48);

/// Why a bundle was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleError {
    /// Shorter than its header or directory.
    Truncated,
    /// Wrong magic.
    BadMagic,
    /// Unsupported version.
    BadVersion(u32),
    /// More entries than [`MAX_ENTRIES`].
    TooManyEntries(u32),
    /// Entry `index` has a name that is not NUL-padded UTF-8.
    BadName(usize),
    /// Entry `index` points outside the bundle or is misaligned.
    BadExtent(usize),
}

/// A validated bundle over borrowed bytes.
#[derive(Debug, Clone, Copy)]
pub struct Bundle<'a> {
    bytes: &'a [u8],
    count: usize,
}

impl<'a> Bundle<'a> {
    /// Validate the header and every entry.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, BundleError> {
        let (header, rest) = Header::read_from_prefix(bytes).map_err(|_| BundleError::Truncated)?;
        if header.magic != MAGIC {
            return Err(BundleError::BadMagic);
        }
        if header.version != VERSION {
            return Err(BundleError::BadVersion(header.version));
        }
        if header.count > MAX_ENTRIES {
            return Err(BundleError::TooManyEntries(header.count));
        }
        let count = header.count as usize;
        if rest.len() < count * size_of::<Entry>() {
            return Err(BundleError::Truncated);
        }
        let bundle = Self { bytes, count };
        for index in 0..count {
            let e = bundle.raw_entry(index);
            name_str(&e.name).ok_or(BundleError::BadName(index))?;
            let end = e
                .offset
                .checked_add(e.size)
                .ok_or(BundleError::BadExtent(index))?;
            if !e.offset.is_multiple_of(PAYLOAD_ALIGN) || end > bytes.len() as u64 {
                return Err(BundleError::BadExtent(index));
            }
        }
        Ok(bundle)
    }

    fn raw_entry(&self, index: usize) -> Entry {
        let start = size_of::<Header>() + index * size_of::<Entry>();
        // Bounds were checked in `parse`.
        Entry::read_from_bytes(&self.bytes[start..start + size_of::<Entry>()])
            .expect("directory bounds checked in parse")
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True if the bundle has no entries.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Iterate over `(name, payload)`.
    pub fn entries(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + '_ {
        (0..self.count).map(move |i| {
            let e = self.raw_entry(i);
            let at = size_of::<Header>() + i * size_of::<Entry>();
            let raw_name: &'a [u8; 32] = self.bytes[at..at + 32].try_into().expect("32-byte name");
            let name = name_str(raw_name).unwrap_or("");
            (name, &self.bytes[e.offset as usize..(e.offset + e.size) as usize])
        })
    }

    /// The payload named `name`.
    pub fn find(&self, name: &str) -> Option<&'a [u8]> {
        self.entries().find(|(n, _)| *n == name).map(|(_, p)| p)
    }
}

fn name_str(raw: &[u8; 32]) -> Option<&str> {
    let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    if raw[len..].iter().any(|&b| b != 0) || len == 0 {
        return None;
    }
    core::str::from_utf8(&raw[..len]).ok()
}

/// Build a bundle from `(name, payload)` pairs (host tools).
#[cfg(any(feature = "alloc", test))]
pub fn build(items: &[(&str, &[u8])]) -> Result<alloc_vec::Vec<u8>, BundleError> {
    use alloc_vec::Vec;
    if items.len() > MAX_ENTRIES as usize {
        return Err(BundleError::TooManyEntries(items.len() as u32));
    }
    let dir_end = size_of::<Header>() + items.len() * size_of::<Entry>();
    let mut out: Vec<u8> = Vec::new();
    let header = Header {
        magic: MAGIC,
        version: VERSION,
        count: items.len() as u32,
    };
    out.extend_from_slice(header.as_bytes());
    out.resize(dir_end, 0);
    let mut entries = Vec::new();
    for (index, (name, payload)) in items.iter().enumerate() {
        let mut raw_name = [0u8; 32];
        if name.is_empty() || name.len() > 32 {
            return Err(BundleError::BadName(index));
        }
        raw_name[..name.len()].copy_from_slice(name.as_bytes());
        let offset = out.len().next_multiple_of(PAYLOAD_ALIGN as usize);
        out.resize(offset, 0);
        out.extend_from_slice(payload);
        entries.push(Entry {
            name: raw_name,
            offset: offset as u64,
            size: payload.len() as u64,
        });
    }
    for (index, entry) in entries.iter().enumerate() {
        let at = size_of::<Header>() + index * size_of::<Entry>();
        out[at..at + size_of::<Entry>()].copy_from_slice(entry.as_bytes());
    }
    Ok(out)
}

#[cfg(any(feature = "alloc", test))]
mod alloc_vec {
    #[cfg(not(test))]
    pub use alloc::vec::Vec;
    #[cfg(test)]
    pub use std::vec::Vec;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let bundle = build(&[("hv-core", b"ELF..."), ("manifest", b"alpha 32M")]).unwrap();
        let parsed = Bundle::parse(&bundle).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed.find("hv-core"), Some(&b"ELF..."[..]));
        assert_eq!(parsed.find("manifest"), Some(&b"alpha 32M"[..]));
        assert_eq!(parsed.find("nope"), None);
    }

    #[test]
    fn rejects_corruption() {
        let good = build(&[("hv-core", &[7u8; 100])]).unwrap();
        assert_eq!(Bundle::parse(&good[..10]).unwrap_err(), BundleError::Truncated);
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(Bundle::parse(&bad).unwrap_err(), BundleError::BadMagic);
        let mut bad = good.clone();
        bad[8] = 9;
        assert_eq!(Bundle::parse(&bad).unwrap_err(), BundleError::BadVersion(9));
        let mut bad = good.clone();
        bad[12..16].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(
            Bundle::parse(&bad).unwrap_err(),
            BundleError::TooManyEntries(1000)
        );
        // Size runs past the end.
        let mut bad = good.clone();
        bad[16 + 40..16 + 48].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(Bundle::parse(&bad).unwrap_err(), BundleError::BadExtent(0));
        // Misaligned offset.
        let mut bad = good.clone();
        bad[16 + 32..16 + 40].copy_from_slice(&1u64.to_le_bytes());
        assert_eq!(Bundle::parse(&bad).unwrap_err(), BundleError::BadExtent(0));
        // Truncated payload.
        assert_eq!(
            Bundle::parse(&good[..good.len() - 1]).unwrap_err(),
            BundleError::BadExtent(0)
        );
        // Name with garbage after the NUL.
        let mut bad = good.clone();
        bad[16 + 20] = b'x';
        assert_eq!(Bundle::parse(&bad).unwrap_err(), BundleError::BadName(0));
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = Bundle::parse(&bytes);
        }
    }
}
