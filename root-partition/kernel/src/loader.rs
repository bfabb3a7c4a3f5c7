//! What a child boots: the test OS (our ELF with its boot-info ABI) or a
//! Linux bzImage through the 64-bit boot protocol. Resolved and checked when
//! the child is created, so a bad image (not a kernel, truncated, too big for
//! the memory given) is refused with the reason before anything is built;
//! [`ChildImage::layout`] then gives the worker the bytes to copy and the
//! registers VP 0 starts with, on every (re)start.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use boot_proto::bzimage::{self, BzImage};
use boot_proto::child as testos;
use boot_proto::linux_child;
use mgmt::cli::CreateSpec;
use zerocopy::IntoBytes;

/// A child's image, checked.
pub enum ChildImage {
    /// The test OS: an ELF64 linked at [`testos::IMAGE_BASE`].
    TestOs(&'static [u8]),
    /// A Linux kernel with its initramfs and command line.
    Linux {
        /// The whole bzImage.
        image: &'static [u8],
        /// Its parsed setup header (boxed: it is most of the enum's size).
        bz: alloc::boxed::Box<BzImage>,
        /// The initramfs (empty: none).
        initrd: &'static [u8],
        /// The command line.
        cmdline: String,
    },
}

/// Bytes to put in the child's memory.
pub enum Bytes {
    /// Straight from the boot bundle.
    Borrowed(&'static [u8]),
    /// Built for this boot.
    Owned(Vec<u8>),
}

impl Bytes {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Self::Borrowed(b) => b,
            Self::Owned(v) => v,
        }
    }
}

/// The CPU state VP 0 starts in: 64-bit mode with these tables and
/// selectors, at `entry`, with `rsi` (and `rdi`, `rsp`) as given.
pub struct EntryState {
    /// RIP.
    pub entry: u64,
    /// CR3 (identity map).
    pub cr3: u64,
    /// GDT base and limit.
    pub gdt: (u64, u16),
    /// Code and data selectors.
    pub selectors: (u16, u16),
    /// RSP.
    pub rsp: u64,
    /// RSI.
    pub rsi: u64,
    /// RDI.
    pub rdi: u64,
}

/// Everything one boot writes, and where VP 0 starts.
pub struct BootLayout {
    /// (guest-physical address, bytes), in order.
    pub writes: Vec<(u64, Bytes)>,
    /// VP 0's start (other VPs of a test OS child start at the same entry
    /// with their own stack; a Linux child's APs wait for INIT-SIPI).
    pub vp0: EntryState,
}

impl ChildImage {
    /// Resolve `spec`'s image (and initramfs) from the bundle and check it
    /// fits the memory asked for.
    pub fn resolve(spec: &CreateSpec, find: impl Fn(&str) -> Option<&'static [u8]>) -> Result<Self, String> {
        let image =
            find(&spec.image).ok_or_else(|| format!("no image '{}' in the boot bundle", spec.image))?;
        // An ELF is the test OS; anything else must be a bzImage.
        let linux = if image.starts_with(b"\x7fELF") {
            None
        } else {
            Some(bzimage::parse(image).map_err(|e| {
                format!(
                    "image '{}' is neither an ELF nor a bzImage we can boot: {e}",
                    spec.image
                )
            })?)
        };
        let Some(bz) = linux else {
            if spec.initrd.is_some() || spec.cmdline.is_some() {
                return Err(format!(
                    "image '{}' is the test OS: --initrd and --cmdline are for Linux kernels",
                    spec.image
                ));
            }
            let stacks = spec.vps as u64 * testos::STACK_SIZE;
            let room = spec.memory.saturating_sub(testos::IMAGE_BASE + stacks);
            let plan = elf_load::plan(image, room).map_err(|e| format!("image '{}': {e:?}", spec.image))?;
            if plan.base_va < testos::IMAGE_BASE {
                return Err(format!(
                    "image '{}' is linked at {:#x}, below {:#x}",
                    spec.image,
                    plan.base_va,
                    testos::IMAGE_BASE
                ));
            }
            return Ok(Self::TestOs(image));
        };
        if spec.vps != 1 {
            return Err("a Linux child has 1 VP for now (application processors need INIT-SIPI)".to_string());
        }
        let initrd = match &spec.initrd {
            Some(name) => find(name).ok_or_else(|| format!("no initramfs '{name}' in the boot bundle"))?,
            None => &[],
        };
        let cmdline = spec.cmdline.clone().unwrap_or_default();
        let me = Self::Linux {
            image,
            bz: alloc::boxed::Box::new(bz),
            initrd,
            cmdline,
        };
        // Plan once now so every refusal happens before anything is built.
        me.layout(spec).map(|_| me)
    }

    /// Whether this is a Linux child.
    pub fn is_linux(&self) -> bool {
        matches!(self, Self::Linux { .. })
    }

    /// What to write and where VP 0 starts, for a child of `spec`.
    pub fn layout(&self, spec: &CreateSpec) -> Result<BootLayout, String> {
        match self {
            Self::TestOs(image) => {
                let stacks = spec.vps as u64 * testos::STACK_SIZE;
                let plan = elf_load::plan(image, spec.memory.saturating_sub(testos::IMAGE_BASE + stacks))
                    .map_err(|e| format!("{e:?}"))?;
                let mut staged = Vec::new();
                staged
                    .try_reserve_exact(plan.span as usize)
                    .map_err(|_| "no root memory to stage the image".to_string())?;
                staged.resize(plan.span as usize, 0);
                elf_load::load(&plan, image, &mut staged).map_err(|e| format!("{e:?}"))?;
                let mut gdt = Vec::with_capacity(24);
                for d in testos::GDT {
                    gdt.extend_from_slice(&d.to_le_bytes());
                }
                Ok(BootLayout {
                    writes: alloc::vec![
                        (
                            testos::PML4_GPA,
                            Bytes::Owned(linux_child::identity_page_tables().to_vec())
                        ),
                        (testos::GDT_GPA, Bytes::Owned(gdt)),
                        (plan.base_va, Bytes::Owned(staged)),
                    ],
                    vp0: EntryState {
                        entry: plan.entry,
                        cr3: testos::PML4_GPA,
                        gdt: (testos::GDT_GPA, 23),
                        selectors: (testos::CODE_SELECTOR, testos::DATA_SELECTOR),
                        rsp: spec.memory,
                        rsi: testos::BOOT_INFO_GPA,
                        rdi: 0,
                    },
                })
            }
            Self::Linux {
                image,
                bz,
                initrd,
                cmdline,
            } => {
                let acpi = linux_acpi(spec)?;
                let plan = linux_child::plan(
                    bz,
                    spec.memory,
                    cmdline.len() as u64,
                    initrd.len() as u64,
                    acpi.bytes.len() as u64,
                    acpi.rsdp_gpa,
                )
                .map_err(|e| e.to_string())?;
                let kernel = bz
                    .kernel_bytes(image)
                    .ok_or("the kernel's bytes are outside the image")?;
                let mut gdt = Vec::with_capacity(32);
                for d in linux_child::GDT {
                    gdt.extend_from_slice(&d.to_le_bytes());
                }
                let mut line = Vec::with_capacity(cmdline.len() + 1);
                line.extend_from_slice(cmdline.as_bytes());
                line.push(0);
                let mut writes = alloc::vec![
                    (linux_child::GDT_GPA, Bytes::Owned(gdt)),
                    (
                        linux_child::PML4_GPA,
                        Bytes::Owned(linux_child::identity_page_tables().to_vec()),
                    ),
                    (
                        linux_child::ZERO_PAGE_GPA,
                        Bytes::Owned(plan.boot_params.as_bytes().to_vec()),
                    ),
                    (plan.cmdline_gpa, Bytes::Owned(line)),
                    (plan.kernel.load_address, Bytes::Borrowed(kernel)),
                    (linux_child::ACPI_GPA, Bytes::Owned(acpi.bytes)),
                    (
                        linux_child::RESET_VECTOR_GPA,
                        Bytes::Owned(
                            linux_child::reset_stub(
                                child_acpi::power::RESET_PORT,
                                child_acpi::power::RESET_VALUE
                            )
                            .to_vec(),
                        ),
                    ),
                ];
                if let Some(at) = plan.initrd_gpa {
                    writes.push((at, Bytes::Borrowed(initrd)));
                }
                Ok(BootLayout {
                    writes,
                    vp0: EntryState {
                        entry: plan.kernel.entry64,
                        cr3: linux_child::PML4_GPA,
                        gdt: (linux_child::GDT_GPA, 31),
                        selectors: (bzimage::BOOT_CS, bzimage::BOOT_DS),
                        // startup_64 sets its own stack; a valid one anyway.
                        rsp: linux_child::ZERO_PAGE_GPA,
                        rsi: linux_child::ZERO_PAGE_GPA,
                        rdi: 0,
                    },
                })
            }
        }
    }
}

/// MMIO the child's VMBus may hand out to devices (synthetic video, vPCI):
/// published in the DSDT's VMOD `_CRS`, above the child's RAM (which ends by
/// [`linux_child::MAX_MEMORY`]) and below the IOAPIC and local APIC pages.
const VMBUS_MMIO_GAP: child_acpi::MmioGap = child_acpi::MmioGap {
    base: 0xE000_0000,
    len: 0x1000_0000,
};

/// The child's ACPI tables at [`linux_child::ACPI_GPA`]: HW-reduced FADT
/// with the power and reset ports the worker emulates, one local APIC per
/// VP, the VMBus device.
fn linux_acpi(spec: &CreateSpec) -> Result<child_acpi::Tables, String> {
    let mut config = child_acpi::Config::new(linux_child::ACPI_GPA, spec.vps);
    config.max_size = linux_child::ACPI_MAX;
    config.mmio_gaps.push(VMBUS_MMIO_GAP);
    child_acpi::build(&config).map_err(|e| format!("building the ACPI tables: {e}"))
}

// The test OS's identity map sits where the Linux layout's does.
const _: () = assert!(
    testos::PML4_GPA == linux_child::PML4_GPA
        && testos::PDPT_GPA == linux_child::PDPT_GPA
        && testos::PD_GPA == linux_child::PD_GPA
);
