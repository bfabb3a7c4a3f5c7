//! What a child boots: the test OS (our ELF with its boot-info ABI), a
//! Linux bzImage through the 64-bit boot protocol, or a kernel entered in
//! 32-bit protected mode through PVH (an ELF with Xen's
//! `XEN_ELFNOTE_PHYS32_ENTRY` note) or Multiboot v1 (an ELF or a.out-kludge
//! image with a `0x1BADB002` header), with an optional module (`--initrd`)
//! and command line, as QEMU's `-kernel`/`-initrd`/`-append` give them.
//! Resolved and checked when the child is created, so a bad image (not a
//! kernel, truncated, no entry we support, too big for the memory given, a
//! module that does not fit) is refused with the reason before anything is
//! built; [`ChildImage::layout`] then gives the worker the bytes to copy and
//! the registers VP 0 starts with, on every (re)start.
//!
//! Which protocol: `create --boot` says, or (`auto`, the default) the image
//! does: a bzImage boots Linux's protocol; an ELF carrying our native marker
//! note (`boot_proto::elf_note::NATIVE_NAME`), or any ELF64 with neither a
//! PVH note nor a Multiboot header, boots the test OS ABI exactly as before;
//! otherwise PVH if it has the note, else Multiboot. The test OS carries all
//! three entries, so `--boot pvh` / `--boot multiboot` exercise the others.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use boot_proto::bzimage::{self, BzImage};
use boot_proto::child as testos;
use boot_proto::{child32, elf_note, linux_child, multiboot};
use mgmt::cli::{BootProtocol, CreateSpec};
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
    /// A kernel entered in 32-bit protected mode (PVH or Multiboot v1).
    Protected32(alloc::boxed::Box<Boot32>),
}

/// The 32-bit protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol32 {
    /// Xen's PVH boot ABI: EBX = &hvm_start_info.
    Pvh,
    /// Multiboot v1: EAX = 0x2BADB002, EBX = &multiboot_info.
    Multiboot,
}

/// A checked PVH or Multiboot kernel, its module and command line.
pub struct Boot32 {
    protocol: Protocol32,
    /// (guest-physical address, file bytes) of each loaded piece; the rest
    /// of the kernel's memory (bss) is the worker's zeroed memory.
    loads: Vec<(u64, &'static [u8])>,
    /// The 32-bit entry point.
    entry: u32,
    /// One past the kernel's highest byte in memory.
    kernel_end: u64,
    /// The module: its name and bytes.
    module: Option<(String, &'static [u8])>,
    /// The command line as the kernel sees it.
    cmdline: String,
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

/// The mode a VP starts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuMode {
    /// 64-bit mode: paging on with `cr3`, EFER.LME/LMA, 64-bit code segment.
    Long64,
    /// 32-bit protected mode, paging off (CR0 = PE|ET, CR4 = EFER = 0), flat
    /// 32-bit code and data segments: the PVH and Multiboot entry state.
    Protected32,
}

/// The CPU state VP 0 starts in: `mode` with these tables and selectors, at
/// `entry`, with the general registers as given.
pub struct EntryState {
    /// 64-bit or 32-bit protected mode.
    pub mode: CpuMode,
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
    /// RAX (Multiboot's magic).
    pub rax: u64,
    /// RBX (PVH's and Multiboot's info pointer).
    pub rbx: u64,
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
        let linux = match choose(&spec.image, image, spec.boot)? {
            Chosen::Linux(bz) => Some(bz),
            Chosen::Native => None,
            Chosen::Protected32(protocol) => {
                let me = Self::Protected32(alloc::boxed::Box::new(Boot32::resolve(
                    spec, image, protocol, &find,
                )?));
                return me.layout(spec).map(|_| me);
            }
        };
        let Some(bz) = linux else {
            if spec.initrd.is_some() || spec.cmdline.is_some() {
                return Err(format!(
                    "image '{}' boots the test OS ABI: --initrd and --cmdline are for Linux, PVH and Multiboot \
                     kernels (see --boot)",
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

    /// Whether this is the test OS on its native ABI (which gets a
    /// [`testos::BootInfo`] page).
    pub fn is_test_os(&self) -> bool {
        matches!(self, Self::TestOs(_))
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
                        mode: CpuMode::Long64,
                        rax: 0,
                        rbx: 0,
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
                        mode: CpuMode::Long64,
                        rax: 0,
                        rbx: 0,
                    },
                })
            }
            Self::Protected32(boot) => boot.layout(spec),
        }
    }
}

/// What [`choose`] picked.
enum Chosen {
    Native,
    Linux(BzImage),
    Protected32(Protocol32),
}

/// What an image offers: the protocols it carries an entry for.
#[derive(Debug, Default, Clone, Copy)]
pub struct Offers {
    /// An ELF (parsed headers).
    pub elf: bool,
    /// An ELF64 x86-64 executable (the test OS ABI's kind of image).
    pub elf64: bool,
    /// Carries the native marker note.
    pub native_note: bool,
    /// A bzImage.
    pub linux: bool,
    /// Its PVH entry, if it has the note.
    pub pvh: Option<u32>,
    /// A valid Multiboot header.
    pub multiboot: bool,
}

impl Offers {
    /// The protocols, by `--boot` name (what `images` shows).
    pub fn names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.elf64 {
            v.push("native");
        }
        if self.linux {
            v.push("linux");
        }
        if self.pvh.is_some() {
            v.push("pvh");
        }
        if self.multiboot {
            v.push("multiboot");
        }
        v
    }

    /// What `--boot auto` picks, if anything.
    pub fn auto(&self) -> Option<BootProtocol> {
        if self.linux {
            Some(BootProtocol::Linux)
        } else if self.elf64 && (self.native_note || (self.pvh.is_none() && !self.multiboot)) {
            Some(BootProtocol::Native)
        } else if self.pvh.is_some() {
            Some(BootProtocol::Pvh)
        } else if self.multiboot {
            Some(BootProtocol::Multiboot)
        } else {
            None
        }
    }
}

/// Look at an image: which entries it has. Errors only for an ELF whose
/// headers are malformed or cut off (the reason to show).
pub fn inspect(image: &[u8]) -> Result<Offers, String> {
    let mut o = Offers::default();
    if image.starts_with(b"\x7fELF") {
        let h = elf_load::headers(image).map_err(|e| format!("a malformed ELF ({e:?})"))?;
        o.elf = true;
        o.elf64 = h.class == elf_load::Class::Elf64;
        for (i, p) in h.program_headers().iter().enumerate() {
            let end = p.offset.checked_add(p.filesz);
            if (p.kind == elf_load::PT_LOAD || p.kind == elf_load::PT_NOTE)
                && end.is_none_or(|e| e > image.len() as u64)
            {
                return Err(format!(
                    "truncated: program header {i} needs file bytes up to {:#x}, the image has {:#x}",
                    p.offset.saturating_add(p.filesz),
                    image.len()
                ));
            }
        }
        for area in h.notes(image) {
            let native = elf_note::find(area, elf_note::NATIVE_NAME, elf_note::NATIVE_TYPE)
                .map_err(|e| format!("a malformed ELF note ({e:?})"))?;
            o.native_note |= native.is_some();
            if let Some(n) = elf_note::find(area, elf_note::XEN_NAME, elf_note::XEN_ELFNOTE_PHYS32_ENTRY)
                .map_err(|e| format!("a malformed ELF note ({e:?})"))?
            {
                o.pvh =
                    Some(elf_note::pvh_entry(n.desc).map_err(|e| format!("a bad PVH entry note ({e:?})"))?);
            }
        }
    } else {
        o.linux = bzimage::parse(image).is_ok();
    }
    o.multiboot = multiboot::find_header(image).is_ok();
    Ok(o)
}

/// Pick the protocol `boot` asks for (or the image's, for `auto`), or say
/// why the image cannot boot that way.
fn choose(name: &str, image: &[u8], boot: BootProtocol) -> Result<Chosen, String> {
    let offers = inspect(image).map_err(|e| format!("image '{name}' is {e}"))?;
    let want = match boot {
        BootProtocol::Auto => offers.auto().ok_or_else(|| {
            if offers.elf {
                format!(
                    "image '{name}' has no entry we can boot: not an x86-64 ELF64, no PVH note \
                     (XEN_ELFNOTE_PHYS32_ENTRY) and no Multiboot header"
                )
            } else {
                let why = bzimage::parse(image)
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                format!("image '{name}' is neither an ELF, a bzImage nor a Multiboot kernel: {why}")
            }
        })?,
        b => b,
    };
    match want {
        BootProtocol::Linux => bzimage::parse(image)
            .map(Chosen::Linux)
            .map_err(|e| format!("image '{name}' is not a bzImage we can boot: {e}")),
        BootProtocol::Native if offers.elf64 => Ok(Chosen::Native),
        BootProtocol::Native => Err(format!("image '{name}' is not an x86-64 ELF64 (the test OS ABI)")),
        BootProtocol::Pvh if offers.pvh.is_some() => Ok(Chosen::Protected32(Protocol32::Pvh)),
        BootProtocol::Pvh => Err(format!(
            "image '{name}' has no PVH entry (an ELF note XEN_ELFNOTE_PHYS32_ENTRY)"
        )),
        BootProtocol::Multiboot => match multiboot::find_header(image) {
            Ok(_) => Ok(Chosen::Protected32(Protocol32::Multiboot)),
            Err(e) => Err(format!("image '{name}': {e}")),
        },
        BootProtocol::Auto => Err(format!("image '{name}' has no entry we can boot")),
    }
}

impl Boot32 {
    /// Check `image` boots through `protocol` in `spec`'s memory, with its
    /// module and command line.
    fn resolve(
        spec: &CreateSpec,
        image: &'static [u8],
        protocol: Protocol32,
        find: &impl Fn(&str) -> Option<&'static [u8]>,
    ) -> Result<Self, String> {
        let name = &spec.image;
        let what = match protocol {
            Protocol32::Pvh => "PVH",
            Protocol32::Multiboot => "Multiboot",
        };
        if spec.vps != 1 {
            return Err(format!(
                "a {what} child has 1 VP (application processors are started for Linux boot protocol children only)"
            ));
        }
        let window = child32::KERNEL_MIN..spec.memory;
        let elf_err = |e: elf_load::ElfError| match e {
            elf_load::ElfError::OutsideWindow { start, end, .. } => format!(
                "image '{name}' loads at {start:#x}..{end:#x}, outside the child's memory \
                 {:#x}..{:#x} usable by a {what} kernel",
                window.start, window.end
            ),
            e => format!("image '{name}': {e:?}"),
        };
        let mut loads = Vec::new();
        let (entry, kernel_end) = match protocol {
            Protocol32::Pvh => {
                let entry = inspect(image)
                    .map_err(|e| format!("image '{name}' is {e}"))?
                    .pvh
                    .ok_or_else(|| format!("image '{name}' has no PVH entry note"))?;
                let plan = elf_load::plan_physical(image, window.clone()).map_err(elf_err)?;
                if !plan.contains(entry as u64) {
                    return Err(format!(
                        "image '{name}': the PVH entry {entry:#x} is outside its loaded segments"
                    ));
                }
                push_segments(&plan, image, &mut loads)?;
                (entry, plan.high)
            }
            Protocol32::Multiboot => {
                let header = multiboot::find_header(image).map_err(|e| format!("image '{name}': {e}"))?;
                match header.addresses {
                    Some(a) => {
                        let start = a.load_addr as u64;
                        let end = start + a.mem_size as u64;
                        if start < window.start || end > window.end {
                            return Err(elf_err(elf_load::ElfError::OutsideWindow {
                                index: 0,
                                start,
                                end,
                            }));
                        }
                        let bytes = image
                            .get(a.load_offset..a.load_offset + a.load_size as usize)
                            .ok_or_else(|| format!("image '{name}' is truncated"))?;
                        loads.push((start, bytes));
                        (a.entry_addr, end)
                    }
                    None => {
                        if !image.starts_with(b"\x7fELF") {
                            return Err(format!(
                                "image '{name}': a Multiboot header without address fields (flag 16) \
                                 needs an ELF image"
                            ));
                        }
                        let plan = elf_load::plan_physical(image, window.clone()).map_err(elf_err)?;
                        let entry = plan
                            .to_physical(plan.entry)
                            .and_then(|e| u32::try_from(e).ok())
                            .ok_or_else(|| {
                                format!(
                                    "image '{name}': the entry {:#x} is outside its loaded segments",
                                    plan.entry
                                )
                            })?;
                        push_segments(&plan, image, &mut loads)?;
                        (entry, plan.high)
                    }
                }
            }
        };
        let module = match &spec.initrd {
            Some(m) => Some((
                m.clone(),
                find(m).ok_or_else(|| format!("no module '{m}' in the boot bundle"))?,
            )),
            None => None,
        };
        let given = spec.cmdline.clone().unwrap_or_default();
        // QEMU's Multiboot loader passes "KERNEL-FILE ARGS"; PVH, the arguments.
        let cmdline = match protocol {
            Protocol32::Pvh => given,
            Protocol32::Multiboot => format!("{name} {given}"),
        };
        Ok(Self {
            protocol,
            loads,
            entry,
            kernel_end,
            module,
            cmdline,
        })
    }

    /// Where the module goes: page-aligned after the kernel (QEMU's
    /// Multiboot placement), checked against the child's memory.
    fn module_gpa(&self, spec: &CreateSpec) -> Result<Option<(u64, &'static [u8])>, String> {
        let Some((name, bytes)) = &self.module else {
            return Ok(None);
        };
        let at = self.kernel_end.next_multiple_of(4096);
        let end = at.saturating_add(bytes.len() as u64);
        if end > spec.memory {
            return Err(format!(
                "module '{name}' ({} bytes) does not fit: after the kernel it would end at {end:#x}, \
                 past the child's {} MiB",
                bytes.len(),
                spec.memory >> 20
            ));
        }
        Ok(Some((at, bytes)))
    }

    fn layout(&self, spec: &CreateSpec) -> Result<BootLayout, String> {
        let module = self.module_gpa(spec)?;
        let placed = module.map(|(gpa, bytes)| child32::PlacedModule {
            gpa,
            len: bytes.len() as u64,
            name: self.module.as_ref().map(|(n, _)| n.as_str()).unwrap_or(""),
        });
        let (page, rax) = match self.protocol {
            Protocol32::Pvh => (child32::pvh_info_page(spec.memory, placed), 0),
            Protocol32::Multiboot => (
                child32::multiboot_info_page(spec.memory, placed),
                multiboot::BOOTLOADER_MAGIC as u64,
            ),
        };
        let (line, len) = child32::cmdline_bytes(&self.cmdline)
            .ok_or_else(|| format!("the command line does not fit in {} bytes", child32::CMDLINE_MAX))?;
        let mut gdt = Vec::with_capacity(24);
        for d in child32::GDT {
            gdt.extend_from_slice(&d.to_le_bytes());
        }
        let mut writes = alloc::vec![
            (child32::GDT_GPA, Bytes::Owned(gdt)),
            (child32::INFO_GPA, Bytes::Owned(page.to_vec())),
            (child32::CMDLINE_GPA, Bytes::Owned(line[..len].to_vec())),
        ];
        writes.extend(self.loads.iter().map(|&(gpa, b)| (gpa, Bytes::Borrowed(b))));
        if let Some((gpa, bytes)) = module {
            writes.push((gpa, Bytes::Borrowed(bytes)));
        }
        Ok(BootLayout {
            writes,
            vp0: EntryState {
                mode: CpuMode::Protected32,
                entry: self.entry as u64,
                cr3: 0,
                gdt: (child32::GDT_GPA, 23),
                selectors: (child32::CODE_SELECTOR, child32::DATA_SELECTOR),
                rsp: child32::STACK_TOP,
                rsi: 0,
                rdi: 0,
                rax,
                rbx: child32::INFO_GPA,
            },
        })
    }
}

/// The file bytes of each segment of `plan`, at its physical address.
fn push_segments(
    plan: &elf_load::PhysPlan,
    image: &'static [u8],
    loads: &mut Vec<(u64, &'static [u8])>,
) -> Result<(), String> {
    for s in plan.segments() {
        let from = usize::try_from(s.file_offset).map_err(|_| "segment offset too large".to_string())?;
        let len = usize::try_from(s.file_size).map_err(|_| "segment too large".to_string())?;
        let bytes = image
            .get(from..from.saturating_add(len))
            .ok_or_else(|| "a segment is outside the image".to_string())?;
        if !bytes.is_empty() {
            loads.push((s.paddr, bytes));
        }
    }
    Ok(())
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
/// VP, the I/O APIC the worker models (COM1 on its pin 4), the VMBus
/// device.
fn linux_acpi(spec: &CreateSpec) -> Result<child_acpi::Tables, String> {
    let mut config = child_acpi::Config::new(linux_child::ACPI_GPA, spec.vps);
    config.max_size = linux_child::ACPI_MAX;
    config.ioapic = Some(child_acpi::IoApicConfig::default());
    config.mmio_gaps.push(VMBUS_MMIO_GAP);
    child_acpi::build(&config).map_err(|e| format!("building the ACPI tables: {e}"))
}

// The test OS's identity map sits where the Linux layout's does.
const _: () = assert!(
    testos::PML4_GPA == linux_child::PML4_GPA
        && testos::PDPT_GPA == linux_child::PDPT_GPA
        && testos::PD_GPA == linux_child::PD_GPA
);
