//! The root's side of the hypervisor: loading hv-core and demoting itself
//! (docs/boot.md), then using the HV#1 interface from inside the partition:
//! CPUID discovery, the hypercall page and hypercalls.

use crate::memory;
use alloc::boxed::Box;
use boot_proto::handoff::{Handoff, PhysRange, REGION_ALIGN};
use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};
use hv1_abi::cpuid::{self as hvcpuid, PartitionPrivileges};
use hv1_abi::partition::{
    CreatePartitionInput, CreateVpInput, DispatchVpInput, DispatchVpOutput, MapGpaPagesHeader,
    MapVpStatePageInput, PartitionPropertyInput, RegisterAssoc, RegisterName, RegisterValue,
    VP_STATE_PAGE_INTERCEPT_MESSAGE, VpRegistersHeader,
};
use hv1_abi::synic::{ConnectPortInput, CreatePortInput, PortInfo, PortRefInput, PostMessageInput};
use hv1_abi::{HvCallCode, HvStatus, HypercallControl, HypercallResult, msr};
use kernel_x86::arch::{cpuid, rdmsr, wrmsr};
use zerocopy::{FromBytes, IntoBytes};

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
/// Scratch pages for hypercall input and output (the root is single-threaded
/// and never makes hypercalls from interrupt handlers).
static INPUT_PAGE: AtomicU64 = AtomicU64::new(0);
static OUTPUT_PAGE: AtomicU64 = AtomicU64::new(0);

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
    INPUT_PAGE.store(
        memory::alloc_frames(1).expect("a frame for hypercall input"),
        Ordering::Release,
    );
    OUTPUT_PAGE.store(
        memory::alloc_frames(1).expect("a frame for hypercall output"),
        Ordering::Release,
    );
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

fn scratch(page: &AtomicU64) -> &'static mut [u8] {
    let phys = page.load(Ordering::Acquire);
    assert!(phys != 0, "hypercall pages not set up");
    // A frame the root set aside for hypercall parameters; the root is
    // single-threaded and never makes hypercalls from interrupt handlers.
    // SAFETY: so this is the only live reference to that identity-mapped frame.
    unsafe { memory::phys_slice_mut(phys, 4096) }
}

/// Issue `code` as a slow simple call with `input` in the input page;
/// returns the output page.
fn simple_call(code: HvCallCode, input: &[u8]) -> Result<&'static [u8], HvStatus> {
    let (inp, out) = (scratch(&INPUT_PAGE), scratch(&OUTPUT_PAGE));
    inp[..input.len()].copy_from_slice(input);
    out[..64].fill(0);
    let r = hypercall(
        HypercallControl::simple(code).encode(),
        INPUT_PAGE.load(Ordering::Relaxed),
        OUTPUT_PAGE.load(Ordering::Relaxed),
    );
    if r.status == HvStatus::SUCCESS {
        Ok(out)
    } else {
        Err(r.status)
    }
}

/// A fast call with one 8-byte argument.
fn fast_call(code: HvCallCode, arg: u64, arg2: u64) -> Result<(), HvStatus> {
    let control = HypercallControl {
        fast: true,
        ..HypercallControl::simple(code)
    }
    .encode();
    let r = hypercall(control, arg, arg2);
    if r.status == HvStatus::SUCCESS {
        Ok(())
    } else {
        Err(r.status)
    }
}

/// A rep call: `header` then `count` elements written by `element(i, out)`
/// (each `element_size` bytes), re-issued until every rep is done (TLFS: the
/// caller resumes at the reps completed). Output rep elements land in the
/// output page, `output_size` bytes each, in call-sized batches handed to `done`.
fn rep_call(
    code: HvCallCode,
    header: &[u8],
    element_size: usize,
    count: usize,
    mut element: impl FnMut(usize, &mut [u8]),
    output_size: usize,
    mut done: impl FnMut(usize, &[u8]),
) -> Result<(), (HvStatus, usize)> {
    // Element-less rep calls (UnmapGpaPages) are bounded only by the 12-bit
    // count. Every batch carries the same header: a caller whose header
    // names a position (a GFN base) must batch itself.
    let per_call_in = (4096 - header.len())
        .checked_div(element_size)
        .unwrap_or(usize::MAX);
    let per_call_out = 4096usize.checked_div(output_size).unwrap_or(usize::MAX);
    let batch = per_call_in.min(per_call_out).min(0xFFF);
    let mut first = 0;
    while first < count {
        let n = batch.min(count - first);
        let (inp, out) = (scratch(&INPUT_PAGE), scratch(&OUTPUT_PAGE));
        inp[..header.len()].copy_from_slice(header);
        for i in 0..n {
            let at = header.len() + i * element_size;
            element(first + i, &mut inp[at..at + element_size]);
        }
        let mut completed = 0u16;
        while (completed as usize) < n {
            let control = HypercallControl {
                rep_count: n as u16,
                rep_start: completed,
                ..HypercallControl::simple(code)
            };
            let r = hypercall(
                control.encode(),
                INPUT_PAGE.load(Ordering::Relaxed),
                OUTPUT_PAGE.load(Ordering::Relaxed),
            );
            if r.status != HvStatus::SUCCESS {
                return Err((r.status, first + r.reps_completed as usize));
            }
            completed = r.reps_completed;
        }
        done(first, &out[..n * output_size]);
        first += n;
    }
    Ok(())
}

/// Patch a header's first field (a GFN base) for each batch of a map call.
fn map_header(partition: u64, gfn: u64, flags: u32) -> [u8; 24] {
    let h = MapGpaPagesHeader {
        target_partition_id: partition,
        target_gpa_base: gfn,
        map_flags: flags,
        padding: 0,
    };
    let mut b = [0u8; 24];
    b.copy_from_slice(h.as_bytes());
    b
}

/// HvCallCreatePartition.
pub fn create_partition() -> Result<u64, HvStatus> {
    let input = CreatePartitionInput {
        flags: 0,
        proximity_domain_info: 0,
        compatibility_version: 0x0609,
        padding: 0,
        disabled_processor_features: [0; 2],
        disabled_xsave_features: 0,
        isolation_properties: 0,
    };
    let out = simple_call(HvCallCode::CREATE_PARTITION, input.as_bytes())?;
    Ok(u64::from_le_bytes(out[..8].try_into().expect("8 bytes")))
}

/// HvCallCreatePort: a port owned by `owner` that `connector` may connect to.
pub fn create_port(owner: u64, port_id: u32, connector: u64, info: PortInfo) -> Result<(), HvStatus> {
    let input = CreatePortInput {
        port_partition_id: owner,
        port_id,
        port_vtl: 0,
        min_connection_vtl: 0,
        padding: 0,
        connection_partition_id: connector,
        port_info: info,
        proximity_domain_info: 0,
    };
    simple_call(HvCallCode::CREATE_PORT, input.as_bytes()).map(|_| ())
}

/// HvCallConnectPort: `connector`'s `connection_id` reaches `owner`'s `port_id`.
pub fn connect_port(connector: u64, connection_id: u32, owner: u64, port_id: u32) -> Result<(), HvStatus> {
    let input = ConnectPortInput {
        connection_partition_id: connector,
        connection_id,
        connection_vtl: 0,
        rsvd: [0; 3],
        port_partition_id: owner,
        port_id,
        reserved2: 0,
        connection_info: [0; 2],
        proximity_domain_info: 0,
    };
    simple_call(HvCallCode::CONNECT_PORT, input.as_bytes()).map(|_| ())
}

/// HvCallSignalEvent (fast) from the root: set flag `flag` behind `connection_id`.
pub fn signal_event(connection_id: u32, flag: u16) -> Result<(), HvStatus> {
    fast_call(
        HvCallCode::SIGNAL_EVENT,
        u64::from(connection_id) | (u64::from(flag) << 32),
        0,
    )
}

/// HvCallAssertVirtualInterrupt: an edge-triggered fixed (or, with
/// `lowest`, lowest-priority) `vector` for the APICs of child `id` that
/// `destination` names (an APIC id, or a logical destination).
pub fn assert_virtual_interrupt(
    id: u64,
    destination: u32,
    logical: bool,
    vector: u8,
    lowest: bool,
) -> Result<(), HvStatus> {
    use hv1_abi::partition::{AssertVirtualInterruptInput, interrupt_type};
    let kind = if lowest {
        interrupt_type::LOWEST_PRIORITY
    } else {
        interrupt_type::FIXED
    };
    let input = AssertVirtualInterruptInput {
        partition_id: id,
        control: u64::from(kind)
            | if logical {
                AssertVirtualInterruptInput::LOGICAL_DESTINATION
            } else {
                0
            },
        destination: u64::from(destination),
        vector: u32::from(vector),
        target_vtl: 0,
        reserved0: 0,
        reserved1: 0,
    };
    simple_call(HvCallCode::ASSERT_VIRTUAL_INTERRUPT, input.as_bytes()).map(|_| ())
}

/// HvCallDisconnectPort.
pub fn disconnect_port(connector: u64, connection_id: u32) -> Result<(), HvStatus> {
    let input = PortRefInput {
        partition_id: connector,
        id: connection_id,
        reserved: 0,
    };
    simple_call(HvCallCode::DISCONNECT_PORT, input.as_bytes()).map(|_| ())
}

/// HvCallDeletePort.
pub fn delete_port(owner: u64, port_id: u32) -> Result<(), HvStatus> {
    let input = PortRefInput {
        partition_id: owner,
        id: port_id,
        reserved: 0,
    };
    simple_call(HvCallCode::DELETE_PORT, input.as_bytes()).map(|_| ())
}

/// HvCallPostMessage from the root on `connection_id`.
pub fn post_message(connection_id: u32, message_type: u32, payload: &[u8]) -> Result<(), HvStatus> {
    let mut input = PostMessageInput {
        connection_id,
        reserved: 0,
        message_type,
        payload_size: payload.len() as u32,
        payload: [0; 240],
    };
    let n = payload.len().min(240);
    input.payload[..n].copy_from_slice(&payload[..n]);
    simple_call(HvCallCode::POST_MESSAGE, input.as_bytes()).map(|_| ())
}

/// HvCallInitializePartition (fast).
pub fn initialize_partition(id: u64) -> Result<(), HvStatus> {
    fast_call(HvCallCode::INITIALIZE_PARTITION, id, 0)
}

/// HvCallFinalizePartition (fast).
pub fn finalize_partition(id: u64) -> Result<(), HvStatus> {
    fast_call(HvCallCode::FINALIZE_PARTITION, id, 0)
}

/// HvPrivResetPartition (fast): the partition back to power-on in hv-core.
pub fn reset_partition(id: u64) -> Result<(), HvStatus> {
    fast_call(hv1_abi::private::RESET_PARTITION, id, 0)
}

/// HvCallDeletePartition (fast).
pub fn delete_partition(id: u64) -> Result<(), HvStatus> {
    fast_call(HvCallCode::DELETE_PARTITION, id, 0)
}

/// HvCallSetPartitionProperty.
pub fn set_partition_property(id: u64, code: u32, value: u64) -> Result<(), HvStatus> {
    let input = PartitionPropertyInput {
        partition_id: id,
        property_code: code,
        padding: 0,
        property_value: value,
    };
    simple_call(HvCallCode::SET_PARTITION_PROPERTY, input.as_bytes()).map(|_| ())
}

/// HvCallMapGpaPages: `pfns[i]` at child page `gfn + i`.
pub fn map_gpa_pages(id: u64, gfn: u64, pfns: &[u64], flags: u32) -> Result<(), (HvStatus, usize)> {
    // Batches share one header, so map each batch with its own base.
    let per_call = (4096 - 24) / 8;
    for (chunk_index, chunk) in pfns.chunks(per_call).enumerate() {
        let base = gfn + (chunk_index * per_call) as u64;
        rep_call(
            HvCallCode::MAP_GPA_PAGES,
            &map_header(id, base, flags),
            8,
            chunk.len(),
            |i, out| out.copy_from_slice(&chunk[i].to_le_bytes()),
            0,
            |_, _| {},
        )
        .map_err(|(s, done)| (s, chunk_index * per_call + done))?;
    }
    Ok(())
}

/// HvCallUnmapGpaPages: `count` pages from child page `gfn`.
pub fn unmap_gpa_pages(id: u64, gfn: u64, count: usize) -> Result<(), (HvStatus, usize)> {
    // The header names the first page, so each call of at most 0xFFF reps
    // (the 12-bit rep count) gets its own base, as in `map_gpa_pages`.
    let per_call = 0xFFF;
    let mut first = 0;
    while first < count {
        let n = per_call.min(count - first);
        rep_call(
            HvCallCode::UNMAP_GPA_PAGES,
            &map_header(id, gfn + first as u64, 0),
            0,
            n,
            |_, _| {},
            0,
            |_, _| {},
        )
        .map_err(|(s, done)| (s, first + done))?;
        first += n;
    }
    Ok(())
}

/// HvCallCreateVp.
pub fn create_vp(id: u64, vp: u32) -> Result<(), HvStatus> {
    let input = CreateVpInput {
        partition_id: id,
        vp_index: vp,
        padding: [0; 3],
        subnode_type: 0,
        subnode_id: 0,
        proximity_domain_info: 0,
        flags: 0,
    };
    simple_call(HvCallCode::CREATE_VP, input.as_bytes()).map(|_| ())
}

/// HvCallMapVpStatePage: intercept messages of (`id`, `vp`) go to root page `page`.
pub fn map_intercept_message_page(id: u64, vp: u32, page: u64) -> Result<(), HvStatus> {
    map_vp_state_page(id, vp, VP_STATE_PAGE_INTERCEPT_MESSAGE, page)
}

/// HvCallMapVpStatePage with HV_VP_STATE_PAGE_REGISTERS: `page` (a root
/// frame) becomes VP `vp`'s register page (`hv1_abi::partition::VpRegisterPage`).
pub fn map_register_page(id: u64, vp: u32, page: u64) -> Result<(), HvStatus> {
    map_vp_state_page(id, vp, hv1_abi::partition::VP_STATE_PAGE_REGISTERS, page)
}

/// HvCallMapVpStatePage with a root-provided page.
fn map_vp_state_page(id: u64, vp: u32, page_type: u16, page: u64) -> Result<(), HvStatus> {
    let input = MapVpStatePageInput {
        partition_id: id,
        vp_index: vp,
        page_type,
        input_vtl: 0,
        flags: 1,
        requested_map_location: page >> 12,
    };
    simple_call(HvCallCode::MAP_VP_STATE_PAGE, input.as_bytes()).map(|_| ())
}

fn registers_header(id: u64, vp: u32) -> [u8; 16] {
    let h = VpRegistersHeader {
        partition_id: id,
        vp_index: vp,
        input_vtl: 0,
        reserved8: 0,
        reserved16: 0,
    };
    let mut b = [0u8; 16];
    b.copy_from_slice(h.as_bytes());
    b
}

/// HvCallSetVpRegisters.
pub fn set_vp_registers(
    id: u64,
    vp: u32,
    regs: &[(RegisterName, RegisterValue)],
) -> Result<(), (HvStatus, usize)> {
    rep_call(
        HvCallCode::SET_VP_REGISTERS,
        &registers_header(id, vp),
        32,
        regs.len(),
        |i, out| {
            let assoc = RegisterAssoc {
                name: regs[i].0.0,
                reserved1: 0,
                reserved2: 0,
                value: regs[i].1,
            };
            out.copy_from_slice(assoc.as_bytes());
        },
        0,
        |_, _| {},
    )
}

/// HvCallGetVpRegisters.
pub fn get_vp_registers(
    id: u64,
    vp: u32,
    names: &[RegisterName],
    values: &mut [RegisterValue],
) -> Result<(), (HvStatus, usize)> {
    rep_call(
        HvCallCode::GET_VP_REGISTERS,
        &registers_header(id, vp),
        4,
        names.len(),
        |i, out| out.copy_from_slice(&names[i].0.to_le_bytes()),
        16,
        |first, out| {
            for (i, chunk) in out.chunks_exact(16).enumerate() {
                values[first + i] = RegisterValue::read_from_bytes(chunk).expect("16 bytes");
            }
        },
    )
}

/// HvCallDispatchVp: (dispatch state, dispatch event).
pub fn dispatch_vp(id: u64, vp: u32, flags: u32) -> Result<(u32, u32), HvStatus> {
    let input = DispatchVpInput {
        partition_id: id,
        vp_index: vp,
        flags,
        time_slice: 0,
        spec_ctrl: 0,
    };
    let out = simple_call(HvCallCode::DISPATCH_VP, input.as_bytes())?;
    let o = DispatchVpOutput::read_from_bytes(&out[..8]).expect("8 bytes");
    Ok((o.dispatch_state, o.dispatch_event))
}

/// What [`signal_and_dispatch_vp`] reports: the dispatch's (state, event),
/// then how many of the signals failed and the first failure's status.
pub struct SignalDispatch {
    pub state: u32,
    pub event: u32,
    pub signals_failed: u32,
    pub first_failure: HvStatus,
}

/// HvPrivSignalAndDispatchVp: `signals` (at most
/// `hv1_abi::private::MAX_QUEUED_SIGNALS`) made in order, then the dispatch,
/// in one call (`hv1_abi::private::SIGNAL_AND_DISPATCH_VP`).
pub fn signal_and_dispatch_vp(
    id: u64,
    vp: u32,
    flags: u32,
    signals: &[hv1_abi::private::QueuedSignal],
) -> Result<SignalDispatch, HvStatus> {
    use hv1_abi::private::{SignalDispatchInput, SignalDispatchOutput};
    if signals.len() > hv1_abi::private::MAX_QUEUED_SIGNALS {
        return Err(HvStatus::INVALID_PARAMETER);
    }
    let header = SignalDispatchInput {
        dispatch: DispatchVpInput {
            partition_id: id,
            vp_index: vp,
            flags,
            time_slice: 0,
            spec_ctrl: 0,
        },
        signal_count: signals.len() as u32,
        reserved: 0,
    };
    let mut input = [0u8; size_of::<SignalDispatchInput>() + 8 * hv1_abi::private::MAX_QUEUED_SIGNALS];
    let used = size_of::<SignalDispatchInput>() + signals.as_bytes().len();
    input[..size_of::<SignalDispatchInput>()].copy_from_slice(header.as_bytes());
    input[size_of::<SignalDispatchInput>()..used].copy_from_slice(signals.as_bytes());
    let out = simple_call(hv1_abi::private::SIGNAL_AND_DISPATCH_VP, &input[..used])?;
    let o =
        SignalDispatchOutput::read_from_bytes(&out[..size_of::<SignalDispatchOutput>()]).expect("16 bytes");
    Ok(SignalDispatch {
        state: o.dispatch.dispatch_state,
        event: o.dispatch.dispatch_event,
        signals_failed: o.signals_failed,
        first_failure: HvStatus(o.first_failure),
    })
}

/// hv-core's counters for a child (project-private call).
pub fn partition_stats(id: u64) -> Result<hv1_abi::private::PartitionStats, HvStatus> {
    let out = simple_call(hv1_abi::private::GET_PARTITION_STATS, &id.to_le_bytes())?;
    Ok(hv1_abi::private::PartitionStats::read_from_bytes(
        &out[..size_of::<hv1_abi::private::PartitionStats>()],
    )
    .expect("exact size"))
}

/// A child's partition reference time now (100 ns units; project-private
/// call HvPrivGetReferenceTime).
pub fn reference_time(id: u64) -> Result<u64, HvStatus> {
    let out = simple_call(hv1_abi::private::GET_REFERENCE_TIME, &id.to_le_bytes())?;
    Ok(u64::from_le_bytes(out[..8].try_into().expect("8 bytes")))
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

/// How hv-core guards its region against device DMA (project-private call).
pub fn dma_guard() -> Result<hv1_abi::private::DmaGuard, HvStatus> {
    use zerocopy::FromBytes;
    let out = memory::alloc_frames(1).expect("a frame for hypercall output");
    let r = hypercall(
        HypercallControl::simple(hv1_abi::private::GET_DMA_GUARD).encode(),
        0,
        out,
    );
    // SAFETY: `out` is our frame; the hypervisor has finished writing it.
    let bytes = unsafe { memory::phys_slice(out, size_of::<hv1_abi::private::DmaGuard>()) };
    let guard = hv1_abi::private::DmaGuard::read_from_bytes(bytes).expect("exact size");
    memory::free_frames(out, 1);
    if r.status == HvStatus::SUCCESS {
        Ok(guard)
    } else {
        Err(r.status)
    }
}
