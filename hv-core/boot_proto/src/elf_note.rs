//! ELF notes (`Elf32_Nhdr` / `Elf64_Nhdr`, the same 12-byte header in both
//! classes on x86: namesz, descsz, type, then the name and the descriptor,
//! each padded to 4 bytes), and the notes a child image may carry:
//!
//! - Xen's `XEN_ELFNOTE_PHYS32_ENTRY` (type 18, name "Xen"): the 32-bit
//!   physical entry point of the PVH boot ABI (Xen
//!   `xen/include/public/elfnote.h`; QEMU `hw/i386/x86-common.c`
//!   `read_pvh_start_addr`, which takes a 4- or 8-byte descriptor);
//! - our native marker (name "HvChild", type 1): the image boots through the
//!   test OS's own boot-info ABI ([`crate::child`]), so automatic detection
//!   keeps using it even when the image also carries PVH or Multiboot entries.
//!
//! The bytes are untrusted: every size is checked against the note area.

/// Name of Xen's notes.
pub const XEN_NAME: &[u8] = b"Xen";
/// `XEN_ELFNOTE_PHYS32_ENTRY`.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// Name of the native marker note.
pub const NATIVE_NAME: &[u8] = b"HvChild";
/// Type of the native marker note (its descriptor: a u32 ABI version, 1).
pub const NATIVE_TYPE: u32 = 1;

/// One note.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Note<'a> {
    /// The name without its NUL.
    pub name: &'a [u8],
    /// n_type.
    pub kind: u32,
    /// The descriptor.
    pub desc: &'a [u8],
}

/// Why a note area was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteError {
    /// A note runs past the end of its area (at this byte offset).
    Truncated(usize),
}

/// The notes in one note area (a `PT_NOTE` segment's bytes). Iteration stops
/// at the first malformed note, which it yields as an error.
pub fn notes(area: &[u8]) -> impl Iterator<Item = Result<Note<'_>, NoteError>> + '_ {
    let mut at = 0usize;
    let mut failed = false;
    core::iter::from_fn(move || {
        if failed || at >= area.len() {
            return None;
        }
        let r = parse_one(area, at);
        match r {
            Ok((note, next)) => {
                at = next;
                Some(Ok(note))
            }
            Err(e) => {
                failed = true;
                Some(Err(e))
            }
        }
    })
}

fn word(area: &[u8], at: usize) -> Option<u32> {
    let b = area.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn pad4(n: usize) -> Option<usize> {
    n.checked_add(3).map(|v| v & !3)
}

fn parse_one(area: &[u8], at: usize) -> Result<(Note<'_>, usize), NoteError> {
    let bad = NoteError::Truncated(at);
    let namesz = word(area, at).ok_or(bad)? as usize;
    let descsz = word(area, at + 4).ok_or(bad)? as usize;
    let kind = word(area, at + 8).ok_or(bad)?;
    let name_at = at + 12;
    let desc_at = name_at.checked_add(pad4(namesz).ok_or(bad)?).ok_or(bad)?;
    let next = desc_at.checked_add(pad4(descsz).ok_or(bad)?).ok_or(bad)?;
    let name = area.get(name_at..name_at + namesz).ok_or(bad)?;
    let desc = area.get(desc_at..desc_at + descsz).ok_or(bad)?;
    // The name's padding may be missing after the last note; the
    // descriptor must be whole.
    let name = name.strip_suffix(&[0]).unwrap_or(name);
    Ok((Note { name, kind, desc }, next))
}

/// The first note named `name` of type `kind` in `area`, if any (a malformed
/// area is an error only if it ends before such a note is found).
pub fn find<'a>(area: &'a [u8], name: &[u8], kind: u32) -> Result<Option<Note<'a>>, NoteError> {
    for n in notes(area) {
        let n = n?;
        if n.name == name && n.kind == kind {
            return Ok(Some(n));
        }
    }
    Ok(None)
}

/// Why a PVH entry note was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PvhEntryError {
    /// The descriptor is not 4 or 8 bytes.
    BadSize(usize),
    /// The entry is not a 32-bit address.
    Above4G(u64),
}

/// The PVH entry point in a `XEN_ELFNOTE_PHYS32_ENTRY` descriptor: a
/// little-endian 32-bit value, or a 64-bit one whose high half is zero
/// (Linux and our root kernel emit `.quad`, others `.long`).
pub fn pvh_entry(desc: &[u8]) -> Result<u32, PvhEntryError> {
    let value = match desc.len() {
        4 => u32::from_le_bytes([desc[0], desc[1], desc[2], desc[3]]) as u64,
        8 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(desc);
            u64::from_le_bytes(b)
        }
        n => return Err(PvhEntryError::BadSize(n)),
    };
    u32::try_from(value).map_err(|_| PvhEntryError::Above4G(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
        v.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        v.extend_from_slice(&kind.to_le_bytes());
        v.extend_from_slice(name);
        v.push(0);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v.extend_from_slice(desc);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn finds_the_pvh_entry_among_other_notes() {
        let mut area = note(b"GNU", 3, b"build-id-bytes");
        area.extend(note(XEN_NAME, 5, b"xen-3.0"));
        area.extend(note(
            XEN_NAME,
            XEN_ELFNOTE_PHYS32_ENTRY,
            &0x10_0040u64.to_le_bytes(),
        ));
        let n = find(&area, XEN_NAME, XEN_ELFNOTE_PHYS32_ENTRY).unwrap().unwrap();
        assert_eq!(pvh_entry(n.desc), Ok(0x10_0040));
        assert_eq!(find(&area, NATIVE_NAME, NATIVE_TYPE), Ok(None));
        assert_eq!(pvh_entry(&0x20_0000u32.to_le_bytes()), Ok(0x20_0000));
        assert_eq!(pvh_entry(&[1, 2]), Err(PvhEntryError::BadSize(2)));
        assert_eq!(
            pvh_entry(&(1u64 << 32).to_le_bytes()),
            Err(PvhEntryError::Above4G(1 << 32))
        );
    }

    #[test]
    fn truncated_notes_are_errors() {
        let area = note(XEN_NAME, XEN_ELFNOTE_PHYS32_ENTRY, &[0u8; 8]);
        for cut in 1..area.len() {
            let r = find(&area[..cut], XEN_NAME, XEN_ELFNOTE_PHYS32_ENTRY);
            assert!(matches!(r, Err(NoteError::Truncated(0))), "cut {cut}: {r:?}");
        }
        // A huge size does not overflow.
        let mut evil = area.clone();
        evil[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(find(&evil, XEN_NAME, XEN_ELFNOTE_PHYS32_ENTRY).is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            for n in notes(&bytes).flatten() {
                let _ = pvh_entry(n.desc);
            }
        }

        #[test]
        fn round_trips(name in proptest::collection::vec(1u8..=255, 0..12),
                       kind: u32,
                       desc in proptest::collection::vec(proptest::num::u8::ANY, 0..20)) {
            let area = note(&name, kind, &desc);
            let got: Vec<_> = notes(&area).collect();
            proptest::prop_assert_eq!(got, vec![Ok(Note { name: &name, kind, desc: &desc })]);
        }
    }
}
