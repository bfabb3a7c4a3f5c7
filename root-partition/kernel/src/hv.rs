//! The root's side of the hypervisor: loading hv-core and demoting itself
//! (docs/boot.md), then using the HV#1 interface from inside the partition:
//! CPUID discovery, the hypercall page and hypercalls.

use crate::memory;
use alloc::boxed::Box;
use boot_proto::handoff::{Handoff, PhysRange, REGION_ALIGN};
use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};
use hv1_abi::cpuid::{self as hvcpuid, PartitionPrivileges};
use hv1_abi::{HvCallCode, HvStatus, HypercallControl, HypercallResult, msr};
use kernel_x86::arch::{cpuid, rdmsr, wrmsr};

/// Size of the region given to hv-core.
pub const HV_REGION_SIZE: u64 = 16 << 20;
/// Upper bound on hv-core's loaded image inside its region.
pub const HV_IMAGE_MAX: u64 = 4 << 20;

/// Where hv-core lives.
#[derive(Debug, Clone, Copy, Default)]
pub struct HvRegion {
    /// Physical base.
    pub base: u64,
    /// Size.
    pub size: u64,
}

static HYPERCALL_PAGE: AtomicU64 = AtomicU64::new(0);

/// Why hv-core could not be launched.
#[derive(Debug)]
pub enum LaunchError {
    /// The image is not a loadable ELF.
    BadImage(elf_load::ElfError),
    /// Mapping the image failed.
    Map(x86_paging::MapError),
    /// hv-core returned without launching the root (its error code).
    Refused(u64),
}

impl core::fmt::Display for LaunchError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::BadImage(e) => write!(f, "the hv-core image is not loadable: {e:?}"),
            Self::Map(e) => write!(f, "mapping the hv-core image failed: {e:?}"),
            Self::Refused(code) => write!(f, "hv-core refused to launch (code {code}; see its log)"),
        }
    }
}

/// What the HV#1 CPUID leaves say.
#[derive(Debug, Clone, Copy)]
pub struct Discovery {
    /// CPUID.1:ECX[31].
    pub hypervisor_bit: bool,
    /// Max hypervisor leaf.
    pub max_leaf: u32,
    /// Vendor string.
    pub vendor: [u8; 12],
    /// Interface signature (leaf 0x4000_0001 EAX).
    pub interface: u32,
    /// Privileges (leaf 0x4000_0003).
    pub privileges: PartitionPrivileges,
    /// Version leaf (major, minor).
    pub version: (u32, u32),
}

impl Discovery {
    /// Read the leaves now.
    pub fn read() -> Self {
        let hypervisor_bit = cpuid(1, 0).ecx & hvcpuid::CPUID1_ECX_HYPERVISOR != 0;
        let v = cpuid(hvcpuid::LEAF_VENDOR, 0);
        let mut vendor = [0u8; 12];
        vendor[..4].copy_from_slice(&v.ebx.to_le_bytes());
        vendor[4..8].copy_from_slice(&v.ecx.to_le_bytes());
        vendor[8..].copy_from_slice(&v.edx.to_le_bytes());
        let f = cpuid(hvcpuid::LEAF_FEATURES, 0);
        let ver = cpuid(hvcpuid::LEAF_VERSION, 0);
        Self {
            hypervisor_bit,
            max_leaf: v.eax,
            vendor,
            interface: cpuid(hvcpuid::LEAF_INTERFACE, 0).eax,
            privileges: PartitionPrivileges::from_cpuid(f.eax, f.ebx),
            version: (ver.ebx >> 16, ver.ebx & 0xFFFF),
        }
    }

    /// True if this is the HV#1 interface ("Microsoft Hv" + "Hv#1").
    pub fn is_hv1(&self) -> bool {
        self.hypervisor_bit
            && self.max_leaf >= hvcpuid::LEAF_LIMITS
            && self.vendor == *b"Microsoft Hv"
            && self.interface == hvcpuid::INTERFACE_HV1
    }

    /// The vendor string, printable.
    pub fn vendor_str(&self) -> &str {
        core::str::from_utf8(&self.vendor).unwrap_or("<non-ASCII>")
    }
}

/// Load hv-core from `image` into a region carved from free memory and call
/// its entry. On success this returns *inside the root partition*.
pub fn launch(image: &[u8], firmware_map: &[PhysRange]) -> Result<HvRegion, LaunchError> {
    let plan = elf_load::plan(image, HV_IMAGE_MAX).map_err(LaunchError::BadImage)?;
    let base = memory::FREE
        .lock()
        .alloc_top(HV_REGION_SIZE, REGION_ALIGN)
        .expect("16 MiB of free memory for hv-core");
    // SAFETY: the region was just removed from the free set: the root never
    // uses it again, and it is identity-mapped RAM.
    let dest = unsafe { memory::phys_slice_mut(base, plan.span as usize) };
    elf_load::load(&plan, image, dest).map_err(LaunchError::BadImage)?;
    memory::map(plan.base_va, base, plan.span).map_err(LaunchError::Map)?;

    let mut handoff = Box::new(Handoff::new());
    handoff.region_base = base;
    handoff.region_size = HV_REGION_SIZE;
    handoff.image_va = plan.base_va;
    handoff.image_size = plan.span;
    handoff.log_port = 0xE9;
    handoff.root_console_port = crate::serial::COM1;
    let n = firmware_map.len().min(handoff.memmap.len());
    handoff.memmap[..n].copy_from_slice(&firmware_map[..n]);
    handoff.memmap_count = n as u32;

    crate::println!(
        "root: hv-core loaded at {:#x}..{:#x} ({} KiB image, entry {:#x}); launching",
        base,
        base + HV_REGION_SIZE,
        plan.span / 1024,
        plan.entry
    );
    // hv-core's entry (SysV ABI) takes the handoff's address (identity map) and
    // returns 0 once this frame resumes as the root partition, or an error code
    // having changed nothing.
    // SAFETY: `plan.entry` lies in the executable segment just loaded and mapped.
    let status = unsafe {
        let entry: extern "sysv64" fn(u64) -> u64 = core::mem::transmute(plan.entry as usize);
        entry(&*handoff as *const Handoff as u64)
    };
    if status != 0 {
        return Err(LaunchError::Refused(status));
    }
    Ok(HvRegion {
        base,
        size: HV_REGION_SIZE,
    })
}

/// Our GUEST_OS_ID: open source (bit 63), OS type 0x7E ("other"; TLFS leaves
/// the non-Microsoft encoding to the vendor), version 0.1.
pub const GUEST_OS_ID: u64 = (1 << 63) | (0x7E << 48) | (0x0001 << 16);

/// Why the hypercall page could not be set up.
#[derive(Debug)]
pub enum HypercallSetupError {
    /// No HV#1 interface.
    NoHypervisor,
    /// The enable bit did not stick.
    NotEnabled(u64),
    /// The page does not hold `VMMCALL; RET`.
    UnexpectedPage([u8; 4]),
}

impl core::fmt::Display for HypercallSetupError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoHypervisor => f.write_str("no HV#1 interface in CPUID"),
            Self::NotEnabled(v) => write!(f, "HYPERCALL MSR reads back {v:#x}: not enabled at our page"),
            Self::UnexpectedPage(b) => write!(f, "hypercall page holds {b:02x?}, not VMMCALL; RET"),
        }
    }
}

/// Register GUEST_OS_ID and enable the hypercall page (TLFS "Hypercall Interface").
pub fn setup_hypercall_page() -> Result<u64, HypercallSetupError> {
    if !Discovery::read().is_hv1() {
        return Err(HypercallSetupError::NoHypervisor);
    }
    let page = memory::alloc_frames(1).expect("a frame for the hypercall page");
    // SAFETY: the HV#1 interface is present, so these synthetic MSRs exist;
    // the page is a fresh frame the hypervisor fills with the call stub.
    let readback = unsafe {
        wrmsr(msr::GUEST_OS_ID, GUEST_OS_ID);
        wrmsr(msr::HYPERCALL, page | msr::HYPERCALL_ENABLE);
        rdmsr(msr::HYPERCALL)
    };
    if readback & msr::HYPERCALL_ENABLE == 0 || readback & msr::HYPERCALL_GPFN_MASK != page {
        return Err(HypercallSetupError::NotEnabled(readback));
    }
    // SAFETY: the page is ours and identity-mapped.
    let bytes: [u8; 4] = unsafe { memory::phys_slice(page, 4) }
        .try_into()
        .expect("4 bytes");
    if bytes != msr::HYPERCALL_PAGE_SVM {
        return Err(HypercallSetupError::UnexpectedPage(bytes));
    }
    HYPERCALL_PAGE.store(page, Ordering::Release);
    Ok(page)
}

/// Issue a hypercall through the page: RCX = control, RDX = input, R8 = output.
pub fn hypercall(control: u64, input: u64, output: u64) -> HypercallResult {
    let page = HYPERCALL_PAGE.load(Ordering::Acquire);
    assert!(page != 0, "hypercall page not set up");
    let result: u64;
    // The hypervisor follows the TLFS convention and writes only the output GPA.
    // SAFETY: the page holds `VMMCALL; RET` (checked in setup); the caller owns `output`.
    unsafe {
        asm!("call {page}", page = in(reg) page, in("rcx") control, in("rdx") input, in("r8") output,
             lateout("rax") result, clobber_abi("C"))
    };
    HypercallResult::decode(result)
}

/// HvCallGetPartitionId: this partition's id.
pub fn get_partition_id() -> Result<u64, HvStatus> {
    let out = memory::alloc_frames(1).expect("a frame for hypercall output");
    let r = hypercall(
        HypercallControl::simple(HvCallCode::GET_PARTITION_ID).encode(),
        0,
        out,
    );
    // SAFETY: `out` is our frame; the hypervisor has finished writing it.
    let id = u64::from_le_bytes(unsafe { memory::phys_slice(out, 8) }.try_into().expect("8 bytes"));
    memory::free_frames(out, 1);
    if r.status == HvStatus::SUCCESS {
        Ok(id)
    } else {
        Err(r.status)
    }
}

/// hv-core's statistics (project-private call, docs/hypercall-abi.md).
pub fn core_stats() -> Result<hv1_abi::private::CoreStats, HvStatus> {
    use zerocopy::FromBytes;
    let out = memory::alloc_frames(1).expect("a frame for hypercall output");
    let r = hypercall(
        HypercallControl::simple(hv1_abi::private::GET_CORE_STATS).encode(),
        0,
        out,
    );
    // SAFETY: `out` is our frame; the hypervisor has finished writing it.
    let bytes = unsafe { memory::phys_slice(out, size_of::<hv1_abi::private::CoreStats>()) };
    let stats = hv1_abi::private::CoreStats::read_from_bytes(bytes).expect("exact size");
    memory::free_frames(out, 1);
    if r.status == HvStatus::SUCCESS {
        Ok(stats)
    } else {
        Err(r.status)
    }
}
