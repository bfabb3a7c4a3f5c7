//! Hypercall dispatch (TLFS "Hypercall Interface"): decode the control word,
//! check the caller's privileges and every GPA, then run the call. The root's
//! partition-management calls live here; children get their own small set.

use crate::child::Child;
use crate::hv::Hv;
use crate::ipc::{self, Bus, Target};
use crate::memory::{GpaError, GuestMemory, RootRam};
use hv1_abi::hypercall::{
    ClusterIpi, HYPERCALL_PARAM_ALIGN, HvInputSendSyntheticClusterIpi, HvOutputGetPartitionId, reps_fitting,
};
use hv1_abi::partition::{
    self as abi, AssertVirtualInterruptInput, CreatePartitionInput, CreateVpInput, DispatchVpInput,
    DispatchVpOutput, MapGpaPagesHeader, MapVpStatePageInput, MapVpStatePageOutput, PartitionIdInput,
    PartitionPropertyInput, RegisterAssoc, RegisterName, VpRegistersHeader, creation_flags, property,
};
use hv1_abi::private::{self, CoreStats, PartitionStats};
use hv1_abi::synic::{ConnectPortInput, CreatePortInput, PortRefInput};
use hv1_abi::{HvCallCode, HvStatus, HypercallControl, HypercallResult};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

impl From<GpaError> for HvStatus {
    fn from(e: GpaError) -> Self {
        match e {
            GpaError::Misaligned => HvStatus::INVALID_ALIGNMENT,
            GpaError::OutOfRange => HvStatus::INVALID_PARAMETER,
        }
    }
}

type CallResult = Result<(), HvStatus>;

/// Calls only the root (CpuManagement) may make.
fn root_only(code: HvCallCode) -> bool {
    matches!(
        code,
        HvCallCode::CREATE_PARTITION
            | HvCallCode::INITIALIZE_PARTITION
            | HvCallCode::FINALIZE_PARTITION
            | HvCallCode::DELETE_PARTITION
            | HvCallCode::GET_PARTITION_PROPERTY
            | HvCallCode::SET_PARTITION_PROPERTY
            | HvCallCode::MAP_GPA_PAGES
            | HvCallCode::UNMAP_GPA_PAGES
            | HvCallCode::CREATE_VP
            | HvCallCode::DELETE_VP
            | HvCallCode::GET_VP_REGISTERS
            | HvCallCode::SET_VP_REGISTERS
            | HvCallCode::DISPATCH_VP
            | HvCallCode::ASSERT_VIRTUAL_INTERRUPT
            | HvCallCode::MAP_VP_STATE_PAGE
            | HvCallCode::UNMAP_VP_STATE_PAGE
            | HvCallCode::CREATE_PORT
            | HvCallCode::DELETE_PORT
            | HvCallCode::CONNECT_PORT
            | HvCallCode::DISCONNECT_PORT
            | private::GET_CORE_STATS
            | private::GET_PARTITION_STATS
            | private::RESET_PARTITION
            | private::GET_DMA_GUARD
            | private::GET_REFERENCE_TIME
            | private::SIGNAL_AND_DISPATCH_VP
    )
}

fn read_input<T: FromBytes + KnownLayout + Immutable>(
    mem: &dyn GuestMemory,
    gpa: u64,
) -> Result<T, HvStatus> {
    let mut buf = [0u8; 64];
    let n = size_of::<T>();
    mem.read(gpa, &mut buf[..n], HYPERCALL_PARAM_ALIGN)?;
    T::read_from_bytes(&buf[..n]).map_err(|_| HvStatus::INVALID_PARAMETER)
}

fn write_output(mem: &dyn GuestMemory, gpa: u64, bytes: &[u8]) -> CallResult {
    mem.write(gpa, bytes, HYPERCALL_PARAM_ALIGN)
        .map_err(HvStatus::from)
}

/// A simple (non-rep) call: no reps, no variable header.
fn simple(control: &HypercallControl) -> CallResult {
    if control.rep_count != 0 || control.variable_header_qwords != 0 {
        return Err(HvStatus::INVALID_HYPERCALL_INPUT);
    }
    Ok(())
}

/// A slow simple call.
fn slow(control: &HypercallControl) -> CallResult {
    simple(control)?;
    if control.fast {
        return Err(HvStatus::INVALID_HYPERCALL_INPUT);
    }
    Ok(())
}

/// A fast simple call (input in registers).
fn fast(control: &HypercallControl) -> CallResult {
    simple(control)?;
    if !control.fast {
        return Err(HvStatus::INVALID_HYPERCALL_INPUT);
    }
    Ok(())
}

/// A rep call: slow, no variable header, at least one rep.
fn rep_shape(control: &HypercallControl) -> CallResult {
    if control.fast || control.variable_header_qwords != 0 || control.rep_count == 0 {
        return Err(HvStatus::INVALID_HYPERCALL_INPUT);
    }
    Ok(())
}

/// Run reps `rep_start..rep_count` of a rep call whose lists allow at most
/// `fit` elements in their page; stop at the first failure.
fn reps(control: &HypercallControl, fit: u64, mut each: impl FnMut(u64) -> CallResult) -> HypercallResult {
    if let Err(s) = rep_shape(control) {
        return HypercallResult::status(s);
    }
    if control.rep_count as u64 > fit {
        // The list would run past the end of its page.
        return HypercallResult::status(HvStatus::INVALID_PARAMETER);
    }
    for i in control.rep_start..control.rep_count {
        if let Err(status) = each(i as u64) {
            return HypercallResult {
                status,
                reps_completed: i,
            };
        }
    }
    HypercallResult {
        status: HvStatus::SUCCESS,
        reps_completed: control.rep_count,
    }
}

/// HvCallSendSyntheticClusterIpi made by a child of `vp_count` VPs: the
/// request, checked (`HvInputSendSyntheticClusterIpi::validate`), from RDX
/// and R8 (fast) or from 16 bytes at the input GPA. The caller delivers it:
/// it needs the VPs' APICs, which `child_call` does not see.
pub fn cluster_ipi_input(
    control: u64,
    input: u64,
    r8: u64,
    mem: &dyn GuestMemory,
    vp_count: u32,
) -> Result<ClusterIpi, HvStatus> {
    let control = HypercallControl::decode(control).map_err(|e| e.status())?;
    simple(&control)?;
    let request = if control.fast {
        HvInputSendSyntheticClusterIpi::from_registers(input, r8)
    } else {
        read_input::<HvInputSendSyntheticClusterIpi>(mem, input)?
    };
    request.validate(vp_count)
}

/// A call made by a child partition. Its posts and signals reach the root
/// (every port has the root at one end).
pub fn child_call(
    id: u64,
    control: u64,
    input: u64,
    output: u64,
    mem: &dyn GuestMemory,
    bus: &mut Bus,
    root: &RootRam,
) -> HypercallResult {
    let control = match HypercallControl::decode(control) {
        Ok(c) => c,
        Err(e) => return HypercallResult::status(e.status()),
    };
    let result = match control.code {
        HvCallCode::GET_PARTITION_ID => slow(&control).and_then(|()| {
            write_output(
                mem,
                output,
                HvOutputGetPartitionId { partition_id: id }.as_bytes(),
            )
        }),
        HvCallCode::POST_MESSAGE => slow(&control).and_then(|()| {
            let (connection, message) = ipc::read_post_message(mem, input)?;
            match ipc::route_message(&bus.ports, id, connection, message)? {
                (Target::Root, sint, m) => ipc::post_to_root(bus, root, id, sint, &m),
                (Target::Child { .. }, ..) => Err(HvStatus::INVALID_CONNECTION_ID),
            }
        }),
        HvCallCode::SIGNAL_EVENT => {
            fast(&control).and_then(|()| match ipc::route_event(&bus.ports, id, input)? {
                (Target::Root, sint, flag) => ipc::signal_root(bus, root, sint, flag),
                (Target::Child { .. }, ..) => Err(HvStatus::INVALID_CONNECTION_ID),
            })
        }
        code if root_only(code) => Err(HvStatus::ACCESS_DENIED),
        _ => Err(HvStatus::INVALID_HYPERCALL_CODE),
    };
    HypercallResult::status(result.err().unwrap_or(HvStatus::SUCCESS))
}

/// HvCallSignalEvent from the root: `input` is the fast call's RDX.
fn root_signal_event(hv: &mut Hv, input: u64) -> CallResult {
    match ipc::route_event(&hv.bus.ports, hv1_abi::ROOT_PARTITION_ID, input)? {
        (Target::Root, sint, flag) => ipc::signal_root(&mut hv.bus, &hv.root_ram, sint, flag),
        (Target::Child { partition, vp }, sint, flag) => {
            child_mut(hv, partition)?.synic_signal(vp, sint, flag)
        }
    }
}

/// HvCallAssertVirtualInterrupt: the root's emulated devices (the I/O
/// APIC its worker models for a child) raise a vector in the child's
/// virtual APICs. Fixed and lowest-priority, edge-triggered, VTL 0 only:
/// level-triggered vectors would need the APIC's EOI to reach the root's
/// I/O APIC, which nothing carries, and NMI/SMI/INIT/SIPI/ExtINT are not
/// provided (INVALID_PARAMETER for each, and for RsvdZ bits and vectors
/// below 16). An APIC that refuses the vector (disabled) drops it, as
/// hardware does.
fn assert_virtual_interrupt(hv: &mut Hv, input: u64) -> CallResult {
    use hv1_abi::partition::interrupt_type;
    let p: AssertVirtualInterruptInput = read_input(&hv.root_ram, input)?;
    let lowest = match p.interrupt_type() {
        interrupt_type::FIXED => false,
        interrupt_type::LOWEST_PRIORITY => true,
        _ => return Err(HvStatus::INVALID_PARAMETER),
    };
    let destination = u32::try_from(p.destination).map_err(|_| HvStatus::INVALID_PARAMETER)?;
    let vector = u8::try_from(p.vector)
        .ok()
        .filter(|&v| v >= 16)
        .ok_or(HvStatus::INVALID_PARAMETER)?;
    if p.control
        & (AssertVirtualInterruptInput::CONTROL_RESERVED | AssertVirtualInterruptInput::LEVEL_TRIGGERED)
        != 0
        || p.target_vtl != 0
        || p.reserved0 != 0
        || p.reserved1 != 0
    {
        return Err(HvStatus::INVALID_PARAMETER);
    }
    let logical = p.control & AssertVirtualInterruptInput::LOGICAL_DESTINATION != 0;
    child_mut(hv, p.partition_id)?.assert_interrupt(destination, logical, vector, lowest)
}

/// HvCallDispatchVp once its input is read and its output checked.
fn dispatch_vp(hv: &mut Hv, p: &DispatchVpInput) -> Result<DispatchVpOutput, HvStatus> {
    let host_save = hv.host_save;
    let child = hv
        .children
        .get_mut(p.partition_id)
        .ok_or(HvStatus::INVALID_PARTITION_ID)?;
    let (state, event) = child.dispatch(
        p.partition_id,
        p.vp_index,
        p.flags,
        &hv.root_ram,
        &mut hv.bus,
        host_save,
    )?;
    Ok(DispatchVpOutput {
        dispatch_state: state,
        dispatch_event: event,
    })
}

/// HvPrivSignalAndDispatchVp ([`private::SIGNAL_AND_DISPATCH_VP`]): every
/// check first, then the signals in order (a failed one is counted, not
/// fatal), then the dispatch.
fn signal_and_dispatch_vp(hv: &mut Hv, input: u64, output: u64) -> CallResult {
    let header: private::SignalDispatchInput = read_input(&hv.root_ram, input)?;
    let count = header.signal_count as usize;
    if count > private::MAX_QUEUED_SIGNALS || header.reserved != 0 {
        return Err(HvStatus::INVALID_PARAMETER);
    }
    // Typed storage (not a byte buffer viewed as signals): always aligned.
    let mut buffer = [private::QueuedSignal::new_zeroed(); private::MAX_QUEUED_SIGNALS];
    let signals = &mut buffer[..count];
    if count > 0 {
        let at = input
            .checked_add(size_of::<private::SignalDispatchInput>() as u64)
            .ok_or(HvStatus::INVALID_PARAMETER)?;
        hv.root_ram
            .read(at, signals.as_mut_bytes(), HYPERCALL_PARAM_ALIGN)?;
    }
    let signals = &*signals;
    if signals.iter().any(|s| s.reserved != 0) {
        return Err(HvStatus::INVALID_PARAMETER);
    }
    hv.root_ram.check(
        output,
        size_of::<private::SignalDispatchOutput>() as u64,
        HYPERCALL_PARAM_ALIGN,
    )?;
    if hv.children.get(header.dispatch.partition_id).is_none() {
        return Err(HvStatus::INVALID_PARTITION_ID);
    }
    let (mut failed, mut first_failure) = (0u32, HvStatus::SUCCESS);
    for s in signals {
        if let Err(status) = root_signal_event(hv, s.signal_event_input()) {
            if failed == 0 {
                first_failure = status;
            }
            failed += 1;
        }
    }
    let out = private::SignalDispatchOutput {
        dispatch: dispatch_vp(hv, &header.dispatch)?,
        signals_failed: failed,
        first_failure: first_failure.0,
        reserved: 0,
    };
    write_output(&hv.root_ram, output, out.as_bytes())
}

/// A call made by the root partition.
pub fn root_call(hv: &mut Hv, control: u64, input: u64, output: u64) -> HypercallResult {
    let control = match HypercallControl::decode(control) {
        Ok(c) => c,
        Err(e) => return HypercallResult::status(e.status()),
    };
    let code = control.code;
    let is_rep_call = matches!(
        code,
        HvCallCode::MAP_GPA_PAGES
            | HvCallCode::UNMAP_GPA_PAGES
            | HvCallCode::GET_VP_REGISTERS
            | HvCallCode::SET_VP_REGISTERS
    );
    if is_rep_call && let Err(s) = rep_shape(&control) {
        return HypercallResult::status(s);
    }
    match code {
        HvCallCode::MAP_GPA_PAGES => return map_gpa_pages(hv, &control, input),
        HvCallCode::UNMAP_GPA_PAGES => return unmap_gpa_pages(hv, &control, input),
        HvCallCode::GET_VP_REGISTERS => return get_vp_registers(hv, &control, input, output),
        HvCallCode::SET_VP_REGISTERS => return set_vp_registers(hv, &control, input),
        _ => {}
    }
    let result = match code {
        HvCallCode::GET_PARTITION_ID => slow(&control).and_then(|()| {
            let out = HvOutputGetPartitionId {
                partition_id: hv1_abi::ROOT_PARTITION_ID,
            };
            write_output(&hv.root_ram, output, out.as_bytes())
        }),
        HvCallCode::CREATE_PARTITION => slow(&control).and_then(|()| create_partition(hv, input, output)),
        HvCallCode::POST_MESSAGE => slow(&control).and_then(|()| {
            let (connection, message) = ipc::read_post_message(&hv.root_ram, input)?;
            match ipc::route_message(&hv.bus.ports, hv1_abi::ROOT_PARTITION_ID, connection, message)? {
                (Target::Root, sint, m) => {
                    ipc::post_to_root(&mut hv.bus, &hv.root_ram, hv1_abi::ROOT_PARTITION_ID, sint, &m)
                }
                (Target::Child { partition, vp }, sint, m) => {
                    child_mut(hv, partition)?.synic_post(vp, sint, &m)
                }
            }
        }),
        HvCallCode::SIGNAL_EVENT => fast(&control).and_then(|()| root_signal_event(hv, input)),
        HvCallCode::CREATE_PORT => slow(&control).and_then(|()| {
            let p: CreatePortInput = read_input(&hv.root_ram, input)?;
            let children = &hv.children;
            ipc::create_port(&mut hv.bus.ports, &p, |id| {
                id == hv1_abi::ROOT_PARTITION_ID || children.get(id).is_some()
            })
        }),
        HvCallCode::CONNECT_PORT => slow(&control).and_then(|()| {
            let p: ConnectPortInput = read_input(&hv.root_ram, input)?;
            ipc::connect_port(&mut hv.bus.ports, &p)
        }),
        HvCallCode::DELETE_PORT => slow(&control).and_then(|()| {
            let p: PortRefInput = read_input(&hv.root_ram, input)?;
            ipc::delete_port(&mut hv.bus.ports, &p)
        }),
        HvCallCode::DISCONNECT_PORT => slow(&control).and_then(|()| {
            let p: PortRefInput = read_input(&hv.root_ram, input)?;
            ipc::disconnect_port(&mut hv.bus.ports, &p)
        }),
        HvCallCode::INITIALIZE_PARTITION | HvCallCode::FINALIZE_PARTITION | HvCallCode::DELETE_PARTITION => {
            simple(&control).and_then(|()| {
                let id = if control.fast {
                    input
                } else {
                    read_input::<PartitionIdInput>(&hv.root_ram, input)?.partition_id
                };
                partition_lifecycle(hv, code, id)
            })
        }
        HvCallCode::GET_PARTITION_PROPERTY => slow(&control).and_then(|()| {
            let p: PartitionPropertyInput = {
                let mut buf = [0u8; 16];
                hv.root_ram.read(input, &mut buf, HYPERCALL_PARAM_ALIGN)?;
                let mut full = [0u8; 24];
                full[..16].copy_from_slice(&buf);
                PartitionPropertyInput::read_from_bytes(&full).map_err(|_| HvStatus::INVALID_PARAMETER)?
            };
            let value = get_property(hv, p.partition_id, p.property_code)?;
            write_output(&hv.root_ram, output, &value.to_le_bytes())
        }),
        HvCallCode::SET_PARTITION_PROPERTY => slow(&control).and_then(|()| {
            let p: PartitionPropertyInput = read_input(&hv.root_ram, input)?;
            set_property(hv, p.partition_id, p.property_code, p.property_value)
        }),
        HvCallCode::CREATE_VP => slow(&control).and_then(|()| {
            let p: CreateVpInput = read_input(&hv.root_ram, input)?;
            if p.flags != 0 {
                return Err(HvStatus::INVALID_PARAMETER);
            }
            child_mut(hv, p.partition_id)?.create_vp(p.vp_index)
        }),
        HvCallCode::DELETE_VP => simple(&control).and_then(|()| {
            let (id, vp) = if control.fast {
                (
                    input,
                    u32::try_from(output).map_err(|_| HvStatus::INVALID_VP_INDEX)?,
                )
            } else {
                let mut buf = [0u8; 16];
                hv.root_ram.read(input, &mut buf, HYPERCALL_PARAM_ALIGN)?;
                (
                    u64::from_le_bytes(buf[..8].try_into().expect("8")),
                    u32::from_le_bytes(buf[8..12].try_into().expect("4")),
                )
            };
            child_mut(hv, id)?.delete_vp(vp)
        }),
        HvCallCode::MAP_VP_STATE_PAGE => slow(&control).and_then(|()| {
            let p: MapVpStatePageInput = read_input(&hv.root_ram, input)?;
            let registers = match p.page_type {
                abi::VP_STATE_PAGE_INTERCEPT_MESSAGE => false,
                abi::VP_STATE_PAGE_REGISTERS => true,
                _ => return Err(HvStatus::INVALID_PARAMETER),
            };
            if p.input_vtl != 0 {
                return Err(HvStatus::INVALID_PARAMETER);
            }
            // hv-core lends none of its own pages: the root provides the page.
            if p.flags & 1 == 0 || p.flags & !1 != 0 {
                return Err(HvStatus::INVALID_PARAMETER);
            }
            let page = p
                .requested_map_location
                .checked_mul(4096)
                .ok_or(HvStatus::INVALID_PARAMETER)?;
            // Checked before anything changes: the page (root RAM, not lent to a
            // child) and the output.
            hv.root_ram.check(page, 4096, 4096)?;
            hv.root_ram.check(output, 8, HYPERCALL_PARAM_ALIGN)?;
            let child = child_mut(hv, p.partition_id)?;
            if registers {
                child.set_register_page(p.vp_index, Some(page))?;
            } else {
                child.set_message_page(p.vp_index, Some(page))?;
            }
            write_output(
                &hv.root_ram,
                output,
                MapVpStatePageOutput {
                    map_location: page >> 12,
                }
                .as_bytes(),
            )
        }),
        HvCallCode::UNMAP_VP_STATE_PAGE => slow(&control).and_then(|()| {
            let mut buf = [0u8; 16];
            hv.root_ram.read(input, &mut buf, HYPERCALL_PARAM_ALIGN)?;
            let id = u64::from_le_bytes(buf[..8].try_into().expect("8"));
            let vp = u32::from_le_bytes(buf[8..12].try_into().expect("4"));
            // `hv_input_unmap_vp_state_page`: the page type follows the VP.
            match u16::from_le_bytes(buf[12..14].try_into().expect("2")) {
                abi::VP_STATE_PAGE_INTERCEPT_MESSAGE => child_mut(hv, id)?.set_message_page(vp, None),
                abi::VP_STATE_PAGE_REGISTERS => child_mut(hv, id)?.set_register_page(vp, None),
                _ => Err(HvStatus::INVALID_PARAMETER),
            }
        }),
        HvCallCode::DISPATCH_VP => slow(&control).and_then(|()| {
            let p: DispatchVpInput = read_input(&hv.root_ram, input)?;
            // Check the output before running anything.
            hv.root_ram.check(
                output,
                size_of::<DispatchVpOutput>() as u64,
                HYPERCALL_PARAM_ALIGN,
            )?;
            let out = dispatch_vp(hv, &p)?;
            write_output(&hv.root_ram, output, out.as_bytes())
        }),
        HvCallCode::ASSERT_VIRTUAL_INTERRUPT => {
            slow(&control).and_then(|()| assert_virtual_interrupt(hv, input))
        }
        private::SIGNAL_AND_DISPATCH_VP => {
            slow(&control).and_then(|()| signal_and_dispatch_vp(hv, input, output))
        }
        private::GET_CORE_STATS => slow(&control).and_then(|()| {
            let s = &hv.root_stats;
            let stats = CoreStats {
                region_base: hv.hv_region.start,
                region_size: hv.hv_region.end - hv.hv_region.start,
                region_used: crate::memory::region_used(),
                total_exits: s.total,
                exits: s.by_reason,
                injected_exceptions: s.injected,
                failed_hypercalls: s.failed_hypercalls,
                partitions: hv.children.len() as u64,
                lent_pages: crate::memory::lent_pages(),
                pinned_pages: crate::memory::pinned_pages(),
            };
            write_output(&hv.root_ram, output, stats.as_bytes())
        }),
        private::GET_DMA_GUARD => slow(&control).and_then(|()| {
            let dma = &mut hv.dma;
            if let Some(i) = dma.iommu.as_mut() {
                i.drain_events();
            }
            let i = dma.iommu.as_ref();
            let out = private::DmaGuard {
                flags: if i.is_some() {
                    private::DMA_GUARD_IOMMU_ENABLED
                } else {
                    0
                },
                iommu_mmio: i.map_or(0, |i| i.mmio),
                iommu_devid: i.map_or(0, |i| u64::from(i.devid)),
                canary_pa: dma.canary,
                canary_fnv: crate::iommu::canary_fnv(dma.canary),
                canary_expected_fnv: dma.canary_expected,
                events: i.map_or(0, |i| i.events),
                page_faults: i.map_or(0, |i| i.page_faults),
                last_event: i.map_or([0; 2], |i| i.last_event),
                target_aborts: i.map_or(0, |i| i.target_aborts),
            };
            write_output(&hv.root_ram, output, out.as_bytes())
        }),
        private::GET_REFERENCE_TIME => slow(&control).and_then(|()| {
            let id: PartitionIdInput = read_input(&hv.root_ram, input)?;
            let now = hv
                .children
                .get(id.partition_id)
                .ok_or(HvStatus::INVALID_PARTITION_ID)?
                .reference_time();
            write_output(&hv.root_ram, output, &now.to_le_bytes())
        }),
        private::RESET_PARTITION => simple(&control).and_then(|()| {
            let id = if control.fast {
                input
            } else {
                read_input::<PartitionIdInput>(&hv.root_ram, input)?.partition_id
            };
            child_mut(hv, id)?.reset()
        }),
        private::GET_PARTITION_STATS => slow(&control).and_then(|()| {
            let id: PartitionIdInput = read_input(&hv.root_ram, input)?;
            let child = hv
                .children
                .get(id.partition_id)
                .ok_or(HvStatus::INVALID_PARTITION_ID)?;
            let s = &child.stats;
            let stats = PartitionStats {
                state: match child.state {
                    partitions::PartitionState::Created => 0,
                    partitions::PartitionState::Initialized => 1,
                    partitions::PartitionState::Finalized => 2,
                },
                vp_count: child.vp_count(),
                mapped_pages: child.mapped_pages,
                total_exits: s.total,
                exits: s.by_reason,
                injected_exceptions: s.injected,
                failed_hypercalls: s.failed_hypercalls,
                guest_os_id: child.msrs.guest_os_id,
                tlb_flushes: s.tlb_flushes,
            };
            write_output(&hv.root_ram, output, stats.as_bytes())
        }),
        _ => Err(HvStatus::INVALID_HYPERCALL_CODE),
    };
    HypercallResult::status(result.err().unwrap_or(HvStatus::SUCCESS))
}

fn child_mut(hv: &mut Hv, id: u64) -> Result<&mut Child, HvStatus> {
    hv.children.get_mut(id).ok_or(HvStatus::INVALID_PARTITION_ID)
}

fn create_partition(hv: &mut Hv, input: u64, output: u64) -> CallResult {
    let p: CreatePartitionInput = read_input(&hv.root_ram, input)?;
    hv.root_ram.check(output, 8, HYPERCALL_PARAM_ALIGN)?;
    if p.flags & !creation_flags::SUPPORTED != 0 || p.isolation_properties & 0x1F != 0 {
        return Err(HvStatus::INVALID_PARAMETER);
    }
    let id = hv
        .children
        .insert(Child::new(hv.maps))
        .map_err(|_| HvStatus::INSUFFICIENT_MEMORY)?;
    hvlog!("partition {id} created (flags {:#x})", p.flags);
    write_output(&hv.root_ram, output, &id.to_le_bytes())
}

fn partition_lifecycle(hv: &mut Hv, code: HvCallCode, id: u64) -> CallResult {
    let child = child_mut(hv, id)?;
    match code {
        HvCallCode::INITIALIZE_PARTITION => child.initialize(),
        HvCallCode::FINALIZE_PARTITION => {
            child.finalize()?;
            hvlog!("partition {id} finalized: memory and VPs returned");
            Ok(())
        }
        _ => {
            child.state.check_delete().map_err(|e| e.status())?;
            let mut child = hv.children.remove(id).ok_or(HvStatus::INVALID_PARTITION_ID)?;
            child.release();
            let dropped = hv.bus.ports.remove_partition(id);
            hvlog!("partition {id} deleted ({dropped} ports/connections dropped)");
            Ok(())
        }
    }
}

fn get_property(hv: &mut Hv, id: u64, code: u32) -> Result<u64, HvStatus> {
    let child = child_mut(hv, id)?;
    Ok(match code {
        property::PRIVILEGE_FLAGS => Child::PRIVILEGES.bits(),
        property::SUSPEND => child.suspended as u64,
        property::UNIMPLEMENTED_MSR_ACTION => child.ignore_unknown_msrs as u64,
        property::GUEST_OS_ID => child.msrs.guest_os_id,
        private::property::SIGNAL_GRACE => child.signal_grace as u64,
        _ => return Err(HvStatus::UNKNOWN_PROPERTY),
    })
}

fn set_property(hv: &mut Hv, id: u64, code: u32, value: u64) -> CallResult {
    let child = child_mut(hv, id)?;
    match code {
        property::SUSPEND => {
            if value > 1 {
                return Err(HvStatus::PROPERTY_VALUE_OUT_OF_RANGE);
            }
            child.suspended = value == 1;
        }
        property::UNIMPLEMENTED_MSR_ACTION => {
            child.state.check_set_property().map_err(|e| e.status())?;
            if value > 1 {
                return Err(HvStatus::PROPERTY_VALUE_OUT_OF_RANGE);
            }
            child.ignore_unknown_msrs = value == 1;
        }
        private::property::SIGNAL_GRACE => {
            if value > 1 {
                return Err(HvStatus::PROPERTY_VALUE_OUT_OF_RANGE);
            }
            child.signal_grace = value == 1;
        }
        property::PRIVILEGE_FLAGS | property::GUEST_OS_ID => return Err(HvStatus::ACCESS_DENIED),
        _ => return Err(HvStatus::UNKNOWN_PROPERTY),
    }
    Ok(())
}

fn map_gpa_pages(hv: &mut Hv, control: &HypercallControl, input: u64) -> HypercallResult {
    let header: MapGpaPagesHeader = match read_input(&hv.root_ram, input) {
        Ok(h) => h,
        Err(s) => return HypercallResult::status(s),
    };
    let fit = reps_fitting(input, size_of::<MapGpaPagesHeader>() as u64, 8);
    let Hv {
        root_ram, children, ..
    } = hv;
    let Some(child) = children.get_mut(header.target_partition_id) else {
        return HypercallResult::status(HvStatus::INVALID_PARTITION_ID);
    };
    reps(control, fit, |i| {
        let pfn = root_ram
            .read_u64(input + 24 + 8 * i)
            .ok_or(HvStatus::INVALID_PARAMETER)?;
        let gfn = header
            .target_gpa_base
            .checked_add(i)
            .ok_or(HvStatus::INVALID_PARAMETER)?;
        child.map_page(gfn, pfn, header.map_flags, root_ram)
    })
}

fn unmap_gpa_pages(hv: &mut Hv, control: &HypercallControl, input: u64) -> HypercallResult {
    let header: MapGpaPagesHeader = match read_input(&hv.root_ram, input) {
        Ok(h) => h,
        Err(s) => return HypercallResult::status(s),
    };
    if header.map_flags != 0 {
        return HypercallResult::status(HvStatus::INVALID_PARAMETER);
    }
    let Some(child) = hv.children.get_mut(header.target_partition_id) else {
        return HypercallResult::status(HvStatus::INVALID_PARTITION_ID);
    };
    // No element list: the reps are pages.
    reps(control, u64::MAX, |i| {
        let gfn = header
            .target_gpa_base
            .checked_add(i)
            .ok_or(HvStatus::INVALID_PARAMETER)?;
        child.unmap_page(gfn)
    })
}

fn get_vp_registers(hv: &mut Hv, control: &HypercallControl, input: u64, output: u64) -> HypercallResult {
    let header: VpRegistersHeader = match read_input(&hv.root_ram, input) {
        Ok(h) => h,
        Err(s) => return HypercallResult::status(s),
    };
    if header.input_vtl != 0 {
        return HypercallResult::status(HvStatus::INVALID_PARAMETER);
    }
    let fit = reps_fitting(input, 16, 4).min(reps_fitting(output, 0, 16));
    let Hv {
        root_ram, children, ..
    } = hv;
    let Some(child) = children.get_mut(header.partition_id) else {
        return HypercallResult::status(HvStatus::INVALID_PARTITION_ID);
    };
    reps(control, fit, |i| {
        let mut name = [0u8; 4];
        root_ram.read(input + 16 + 4 * i, &mut name, 4)?;
        let value = child.get_register(header.vp_index, RegisterName(u32::from_le_bytes(name)))?;
        write_output(root_ram, output + 16 * i, value.as_bytes())
    })
}

fn set_vp_registers(hv: &mut Hv, control: &HypercallControl, input: u64) -> HypercallResult {
    let header: VpRegistersHeader = match read_input(&hv.root_ram, input) {
        Ok(h) => h,
        Err(s) => return HypercallResult::status(s),
    };
    if header.input_vtl != 0 {
        return HypercallResult::status(HvStatus::INVALID_PARAMETER);
    }
    let fit = reps_fitting(input, 16, 32);
    let Hv {
        root_ram, children, ..
    } = hv;
    let Some(child) = children.get_mut(header.partition_id) else {
        return HypercallResult::status(HvStatus::INVALID_PARTITION_ID);
    };
    reps(control, fit, |i| {
        let assoc: RegisterAssoc = read_input(root_ram, input + 16 + 32 * i)?;
        child.set_register(header.vp_index, RegisterName(assoc.name), assoc.value)
    })
}
