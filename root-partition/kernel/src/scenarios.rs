//! Self-tests run after demotion when the command line says `test=<name>`.
//! Each prints `TEST <name>: PASS` or `TEST <name>: FAIL: <why>`, and the
//! machine exits through isa-debug-exit; the host tests in `tests/` check both.

use crate::start::BootReport;
use crate::{disk, hv, memory};
use alloc::format;
use alloc::string::String;
use hv1_abi::cpuid::PartitionPrivileges;
use hv1_abi::{HvCallCode, HvStatus, HypercallControl};
use kernel_x86::traps::{probe_rdmsr, probe_read_u64, probe_vmmcall, probe_write_u64, probe_wrmsr};

/// Run scenario `name`; true if it passed.
pub fn run(name: &str, boot: &BootReport) -> bool {
    let result = match name {
        "cpuid" => cpuid(boot),
        "hv-region" => hv_region(boot),
        "hypercall" => hypercall(boot),
        "disk" => disk_read(),
        "msr" => synthetic_msrs(boot),
        "guard" => guarded_msrs_and_log_port(),
        "lend" => lending_refusals(boot),
        "iommu" => dma_into_hv_core(),
        other => Err(format!("unknown scenario '{other}'")),
    };
    match &result {
        Ok(()) => println!("TEST {name}: PASS"),
        Err(why) => println!("TEST {name}: FAIL: {why}"),
    }
    result.is_ok()
}

fn check(cond: bool, why: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(why()) }
}

/// (a) Before launch no HV#1 interface; after, ours with root privileges.
fn cpuid(boot: &BootReport) -> Result<(), String> {
    let (b, a) = (&boot.before, &boot.after);
    println!(
        "cpuid: before: hv-bit={} vendor='{}' interface={:#x}",
        b.hypervisor_bit as u8,
        b.vendor.escape_ascii(),
        b.interface
    );
    println!(
        "cpuid: after: hv-bit={} max-leaf={:#x} vendor='{}' interface={:#x} privileges={:#x}",
        a.hypervisor_bit as u8,
        a.max_leaf,
        a.vendor_str(),
        a.interface,
        a.privileges.bits()
    );
    check(!b.is_hv1(), || "HV#1 interface visible before launch".into())?;
    check(a.is_hv1(), || "no HV#1 interface after launch".into())?;
    for needed in [
        PartitionPrivileges::CPU_MANAGEMENT,
        PartitionPrivileges::CREATE_PARTITIONS,
        PartitionPrivileges::ACCESS_HYPERCALL_MSRS,
        PartitionPrivileges::ACCESS_VP_INDEX,
    ] {
        check(a.privileges.contains(needed), || {
            format!("root lacks privilege {needed:?}")
        })?;
    }
    // VP_INDEX reads 0 on the boot processor.
    // SAFETY: HV#1 with AccessVpIndex: the MSR exists.
    let vp = unsafe { kernel_x86::arch::rdmsr(hv1_abi::msr::VP_INDEX) };
    check(vp == 0, || format!("VP_INDEX = {vp}, expected 0"))
}

/// (b) hv-core's region is out of reach: reads and writes fault with #GP, the
/// bytes right outside it are ordinary memory, and hv-core keeps serving.
fn hv_region(boot: &BootReport) -> Result<(), String> {
    let r = boot.region;
    let probes = [r.base, r.base + 0x1000, r.base + r.size / 2, r.base + r.size - 8];
    for addr in probes {
        match probe_read_u64(addr) {
            Ok(v) => return Err(format!("read of hv-core memory at {addr:#x} returned {v:#x}")),
            Err(f) => {
                println!("hv-region: read  {addr:#x}: {} (error {:#x})", f.name(), f.error);
                check(f.vector == 13, || {
                    format!("expected #GP, got vector {}", f.vector)
                })?;
            }
        }
        // SAFETY: the address is in hv-core's region, which the root does not own.
        match unsafe { probe_write_u64(addr, 0xDEAD_BEEF_DEAD_BEEF) } {
            Ok(()) => return Err(format!("write to hv-core memory at {addr:#x} succeeded")),
            Err(f) => {
                println!("hv-region: write {addr:#x}: {}", f.name());
                check(f.vector == 13, || {
                    format!("expected #GP, got vector {}", f.vector)
                })?;
            }
        }
    }
    // Neighbours are plain RAM the root may read (the region was carved exactly).
    for addr in [r.base - 8, r.base + r.size] {
        probe_read_u64(addr)
            .map_err(|f| format!("read at {addr:#x} next to the region faulted: {}", f.name()))?;
    }
    // hv-core survived: hypercalls still work and it counted the faults.
    let id = hv::get_partition_id().map_err(|s| format!("hypercall after faults: {s:?}"))?;
    let stats = hv::core_stats().map_err(|s| format!("stats: {s:?}"))?;
    println!(
        "hv-region: hv-core alive: partition id {id}, {} npf exits, {} exceptions injected",
        stats.exits[hv1_abi::private::reason::NPF],
        stats.injected_exceptions
    );
    check(stats.injected_exceptions >= 2 * probes.len() as u64, || {
        "hv-core did not count the injected faults".into()
    })?;
    check(stats.region_base == r.base && stats.region_size == r.size, || {
        "hv-core reports a different region".into()
    })
}

/// (c) The hypercall page: HvCallGetPartitionId, unknown codes, bad inputs.
fn hypercall(boot: &BootReport) -> Result<(), String> {
    let id = boot
        .partition_id
        .map_err(|s| format!("HvCallGetPartitionId: {s:?}"))?;
    println!("hypercall: HvCallGetPartitionId -> {id}");
    check(id == hv1_abi::ROOT_PARTITION_ID, || {
        format!("root partition id {id}, expected {}", hv1_abi::ROOT_PARTITION_ID)
    })?;

    let out = memory::alloc_frames(1).ok_or("no frame")?;
    let call = |control: u64, output: u64| hv::hypercall(control, 0, output).status;
    let cases: [(&str, u64, u64, HvStatus); 6] = [
        (
            "unknown call code 0x7777",
            0x7777,
            out,
            HvStatus::INVALID_HYPERCALL_CODE,
        ),
        (
            "unknown private code 0xC0FF",
            0xC0FF,
            out,
            HvStatus::INVALID_HYPERCALL_CODE,
        ),
        (
            "reserved control bits",
            HypercallControl::simple(HvCallCode::GET_PARTITION_ID).encode() | (1 << 31),
            out,
            HvStatus::INVALID_HYPERCALL_INPUT,
        ),
        (
            "rep count on a simple call",
            HypercallControl::simple(HvCallCode::GET_PARTITION_ID).encode() | (4 << 32),
            out,
            HvStatus::INVALID_HYPERCALL_INPUT,
        ),
        (
            "misaligned output GPA",
            HypercallControl::simple(HvCallCode::GET_PARTITION_ID).encode(),
            out + 4,
            HvStatus::INVALID_ALIGNMENT,
        ),
        (
            "output GPA in hv-core's region",
            HypercallControl::simple(HvCallCode::GET_PARTITION_ID).encode(),
            boot.region.base + 0x2000,
            HvStatus::INVALID_PARAMETER,
        ),
    ];
    for (what, control, output, expected) in cases {
        let got = call(control, output);
        println!("hypercall: {what}: {got:?}");
        check(got == expected, || {
            format!("{what}: got {got:?}, expected {expected:?}")
        })?;
    }
    signal_and_dispatch_refusals(out)?;
    assert_interrupt_refusals()?;
    memory::free_frames(out, 1);
    Ok(())
}

/// HvCallAssertVirtualInterrupt checks its input before it looks for the
/// partition: what it does not provide (level-triggered, NMI, a VTL), RsvdZ
/// bits and vectors below 16 are INVALID_PARAMETER; a well-formed call for
/// a partition that does not exist (or the root itself) is
/// INVALID_PARTITION_ID.
fn assert_interrupt_refusals() -> Result<(), String> {
    use hv1_abi::partition::{AssertVirtualInterruptInput, interrupt_type};
    use zerocopy::IntoBytes;
    let good = AssertVirtualInterruptInput {
        partition_id: 0x7777,
        control: u64::from(interrupt_type::FIXED),
        destination: 0,
        vector: 0x30,
        target_vtl: 0,
        reserved0: 0,
        reserved1: 0,
    };
    let cases: [(&str, AssertVirtualInterruptInput, HvStatus); 8] = [
        (
            "level-triggered",
            AssertVirtualInterruptInput {
                control: AssertVirtualInterruptInput::LEVEL_TRIGGERED,
                ..good
            },
            HvStatus::INVALID_PARAMETER,
        ),
        (
            "NMI",
            AssertVirtualInterruptInput {
                control: u64::from(interrupt_type::NMI),
                ..good
            },
            HvStatus::INVALID_PARAMETER,
        ),
        (
            "reserved control bit",
            AssertVirtualInterruptInput {
                control: 1 << 40,
                ..good
            },
            HvStatus::INVALID_PARAMETER,
        ),
        (
            "vector 15",
            AssertVirtualInterruptInput { vector: 15, ..good },
            HvStatus::INVALID_PARAMETER,
        ),
        (
            "target VTL 1",
            AssertVirtualInterruptInput {
                target_vtl: 1,
                ..good
            },
            HvStatus::INVALID_PARAMETER,
        ),
        (
            "reserved field",
            AssertVirtualInterruptInput { reserved1: 1, ..good },
            HvStatus::INVALID_PARAMETER,
        ),
        ("no such partition", good, HvStatus::INVALID_PARTITION_ID),
        (
            "the root",
            AssertVirtualInterruptInput {
                partition_id: hv1_abi::ROOT_PARTITION_ID,
                ..good
            },
            HvStatus::INVALID_PARTITION_ID,
        ),
    ];
    let control = HypercallControl::simple(HvCallCode::ASSERT_VIRTUAL_INTERRUPT).encode();
    let calls: alloc::vec::Vec<_> = cases
        .iter()
        .map(|(what, case, expected)| (*what, [case.as_bytes(), &[][..]], *expected))
        .collect();
    expect_statuses("assert interrupt", control, 0, &calls)
}

/// Make each call of `calls` (its input: the byte strings one after the
/// other at the start of a zeroed page), print `hypercall: LABEL, WHAT:
/// STATUS`, and stop at the first status that is not the expected one.
fn expect_statuses(
    label: &str,
    control: u64,
    out: u64,
    calls: &[(&str, [&[u8]; 2], HvStatus)],
) -> Result<(), String> {
    let input = memory::alloc_frames(1).ok_or("no frame")?;
    let mut result = Ok(());
    for &(what, parts, expected) in calls {
        // SAFETY: a frame just taken from the root's allocator, identity-mapped
        // and used by nothing else until it is freed below.
        let page = unsafe { memory::phys_slice_mut(input, 4096) };
        page.fill(0);
        let mut at = 0;
        for part in parts {
            page[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        let got = hv::hypercall(control, input, out).status;
        println!("hypercall: {label}, {what}: {got:?}");
        if got != expected {
            result = Err(format!("{label}, {what}: got {got:?}, expected {expected:?}"));
            break;
        }
    }
    memory::free_frames(input, 1);
    result
}

/// HvPrivSignalAndDispatchVp refuses a bad input whole, before any signal
/// or dispatch: too many signals, reserved fields set, no such partition.
fn signal_and_dispatch_refusals(out: u64) -> Result<(), String> {
    use hv1_abi::private::{MAX_QUEUED_SIGNALS, QueuedSignal, SIGNAL_AND_DISPATCH_VP, SignalDispatchInput};
    use zerocopy::IntoBytes;
    let header = |partition_id: u64, signal_count: u32, reserved: u32| SignalDispatchInput {
        dispatch: hv1_abi::partition::DispatchVpInput {
            partition_id,
            vp_index: 0,
            flags: 0,
            time_slice: 0,
            spec_ctrl: 0,
        },
        signal_count,
        reserved,
    };
    let signal = |reserved: u16| QueuedSignal {
        connection_id: 0x7777,
        flag: 1,
        reserved,
    };
    let cases: [(&str, SignalDispatchInput, QueuedSignal, HvStatus); 4] = [
        (
            "too many signals",
            header(hv1_abi::ROOT_PARTITION_ID + 1, MAX_QUEUED_SIGNALS as u32 + 1, 0),
            signal(0),
            HvStatus::INVALID_PARAMETER,
        ),
        (
            "reserved header field",
            header(hv1_abi::ROOT_PARTITION_ID + 1, 1, 1),
            signal(0),
            HvStatus::INVALID_PARAMETER,
        ),
        (
            "reserved signal field",
            header(hv1_abi::ROOT_PARTITION_ID + 1, 1, 0),
            signal(1),
            HvStatus::INVALID_PARAMETER,
        ),
        (
            "no such partition",
            header(0x7777, 1, 0),
            signal(0),
            HvStatus::INVALID_PARTITION_ID,
        ),
    ];
    let control = HypercallControl::simple(SIGNAL_AND_DISPATCH_VP).encode();
    let calls: alloc::vec::Vec<_> = cases
        .iter()
        .map(|(what, h, s, expected)| (*what, [h.as_bytes(), s.as_bytes()], *expected))
        .collect();
    expect_statuses("signal and dispatch", control, out, &calls)
}

/// (d) The passthrough disk, read after demotion: print sector 0 in full.
fn disk_read() -> Result<(), String> {
    let mut d = disk::Disk::open().map_err(|e| format!("{e}"))?;
    let sector = d.read_sector(0).map_err(|e| format!("{e}"))?;
    let mut hex = String::with_capacity(1024);
    for b in sector {
        hex.push_str(&format!("{b:02x}"));
    }
    println!("disk: {} sectors at {}", d.capacity, d.location);
    println!("DISK sector0 {hex}");
    check(crate::hv::Discovery::read().is_hv1(), || {
        "read was not made from inside the root partition".into()
    })
}

/// Synthetic MSRs and EFER: what the root may and may not do, and that a
/// refused write changes nothing.
fn synthetic_msrs(boot: &BootReport) -> Result<(), String> {
    use hv1_abi::msr;
    const EFER: u32 = 0xC000_0080;
    const SVME: u64 = 1 << 12;
    let gp = |r: Result<(), kernel_x86::traps::ProbeFault>, what: &str| match r {
        Err(f) if f.vector == 13 => {
            println!("msr: {what}: #GP");
            Ok(())
        }
        other => Err(format!("{what}: expected #GP, got {other:?}")),
    };
    // SAFETY: the probes below touch only hv-core's synthetic MSRs and EFER
    // (written with its current value); refused writes fault, accepted ones are undone.
    unsafe {
        gp(probe_wrmsr(msr::VP_INDEX, 5), "write VP_INDEX (read-only)")?;
        gp(
            probe_rdmsr(0x4000_00FF).map(|_| ()),
            "read unknown synthetic MSR 0x400000ff",
        )?;
        gp(
            probe_wrmsr(0x4000_00FF, 1),
            "write unknown synthetic MSR 0x400000ff",
        )?;

        // EFER: the root reads back what it wrote, without SVME; clearing SVME
        // does not disturb hv-core (a raw VMMCALL still works).
        let efer = probe_rdmsr(EFER).map_err(|f| format!("read EFER: {f:?}"))?;
        check(efer & SVME == 0, || {
            format!("EFER reads {efer:#x}: SVME visible to the root")
        })?;
        probe_wrmsr(EFER, efer & !SVME).map_err(|f| format!("write EFER: {f:?}"))?;
        gp(
            probe_wrmsr(EFER, efer | (1 << 20)),
            "write EFER with a reserved bit",
        )?;
        gp(
            probe_wrmsr(EFER, efer & !(1 << 8)),
            "clear EFER.LME with paging on",
        )?;
        let again = probe_rdmsr(EFER).map_err(|f| format!("read EFER: {f:?}"))?;
        check(again == efer, || {
            format!("EFER changed to {again:#x} from {efer:#x}")
        })?;
        let id_call = HypercallControl::simple(HvCallCode::GET_PARTITION_ID).encode();
        let out = memory::alloc_frames(1).ok_or("no frame")?;
        let raw =
            probe_vmmcall(id_call, 0, out).map_err(|f| format!("VMMCALL after EFER write: {}", f.name()))?;
        check(raw & 0xFFFF == 0, || {
            format!("VMMCALL after EFER write: status {raw:#x}")
        })?;
        println!("msr: EFER {efer:#x} round-trips, SVME hidden, hypercalls unaffected");

        // HYPERCALL MSR: a page in hv-core's region is refused, the old page stays.
        let before = probe_rdmsr(msr::HYPERCALL).map_err(|f| format!("read HYPERCALL: {f:?}"))?;
        gp(
            probe_wrmsr(msr::HYPERCALL, boot.region.base | 1),
            "hypercall page inside hv-core's region",
        )?;
        let after = probe_rdmsr(msr::HYPERCALL).map_err(|f| format!("read HYPERCALL: {f:?}"))?;
        check(after == before, || {
            format!("HYPERCALL MSR changed from {before:#x} to {after:#x}")
        })?;
        hv::get_partition_id().map_err(|s| format!("hypercall page after refused move: {s:?}"))?;

        // Clearing GUEST_OS_ID disables the hypercall interface (VMMCALL #UD)
        // until the guest identifies itself and enables the page again.
        probe_wrmsr(msr::GUEST_OS_ID, 0).map_err(|f| format!("clear GUEST_OS_ID: {f:?}"))?;
        match probe_vmmcall(id_call, 0, out) {
            Err(f) if f.vector == 6 => println!("msr: GUEST_OS_ID = 0: VMMCALL raises #UD"),
            other => {
                return Err(format!(
                    "VMMCALL with GUEST_OS_ID = 0: expected #UD, got {other:?}"
                ));
            }
        }
        let disabled = probe_rdmsr(msr::HYPERCALL).map_err(|f| format!("read HYPERCALL: {f:?}"))?;
        check(disabled & 1 == 0, || {
            format!("HYPERCALL still enabled: {disabled:#x}")
        })?;
        probe_wrmsr(msr::GUEST_OS_ID, hv::GUEST_OS_ID).map_err(|f| format!("set GUEST_OS_ID: {f:?}"))?;
        probe_wrmsr(msr::HYPERCALL, before).map_err(|f| format!("re-enable HYPERCALL: {f:?}"))?;
        memory::free_frames(out, 1);
    }
    let id = hv::get_partition_id().map_err(|s| format!("hypercall after re-enable: {s:?}"))?;
    println!("msr: hypercall page re-enabled; partition id {id}");
    Ok(())
}

/// (issue 7, defect 9) The root cannot reach around its NPT hole: MSR writes
/// that could move the APIC over hv-core's region or change memory types
/// machine-wide get #GP (reads still work), an APIC_BASE write that keeps
/// the base is allowed, and what the root writes to hv-core's log port never
/// reaches the log (the host test checks the log for the forged line).
fn guarded_msrs_and_log_port() -> Result<(), String> {
    let gp = |r: Result<(), kernel_x86::traps::ProbeFault>, what: &str| match r {
        Err(f) if f.vector == 13 => {
            println!("guard: {what}: #GP");
            Ok(())
        }
        other => Err(format!("{what}: expected #GP, got {other:?}")),
    };
    // SAFETY: every write below must be refused by hv-core (#GP, nothing
    // changes); the one accepted APIC_BASE write rewrites the current value.
    unsafe {
        let apic = probe_rdmsr(0x1B).map_err(|f| format!("read APIC_BASE: {f:?}"))?;
        probe_wrmsr(0x1B, apic).map_err(|f| format!("APIC_BASE rewritten unchanged: {f:?}"))?;
        println!("guard: APIC_BASE {apic:#x} rewritten unchanged: allowed");
        gp(
            probe_wrmsr(0x1B, (apic & 0xFFF) | 0x1000_0000),
            "move the APIC page",
        )?;
        let again = probe_rdmsr(0x1B).map_err(|f| format!("read APIC_BASE: {f:?}"))?;
        check(again == apic, || format!("APIC_BASE changed to {again:#x}"))?;
        for (msr, what) in [
            (0x2FF, "MTRRdefType"),
            (0x200, "variable MTRR base 0"),
            (0x250, "fixed MTRR 64K"),
            (0xC001_0010, "SYSCFG"),
            (0xC001_0015, "HWCR"),
            (0xC001_001A, "TOP_MEM"),
            (0xC001_001D, "TOP_MEM2"),
            (0xC001_0020, "PATCH_LOADER"),
            (0xC001_0113, "SMM_MASK"),
        ] {
            // Reads pass through; for a write use the current value where it
            // can be read, so that even an accepted write would change nothing.
            let current = probe_rdmsr(msr).unwrap_or(0);
            gp(probe_wrmsr(msr, current), &format!("write {what} ({msr:#x})"))?;
        }
        let mtrr = probe_rdmsr(0x2FF).map_err(|f| format!("read MTRRdefType: {f:?}"))?;
        println!("guard: MTRRdefType reads {mtrr:#x} (reads pass through)");
    }
    for b in b"[hv-core] FORGED by the root\n" {
        // SAFETY: hv-core intercepts its log port for the root; the write
        // is dropped.
        unsafe { kernel_x86::arch::Port::new(0xE9) }.write8(*b);
    }
    println!("guard: wrote a forged line to the log port");
    Ok(())
}

/// hv-core refuses to lend a child anything but free root RAM: a page
/// already lent, hv-core's region, MMIO, pinned pages (the root's hypercall
/// and SynIC pages, a VP's intercept-message page), a GFN beyond the child's
/// GPA space; a fresh page is accepted. Each refusal leaves nothing mapped.
fn lending_refusals(boot: &BootReport) -> Result<(), String> {
    use hv1_abi::partition::map_flags;
    let flags = map_flags::READABLE | map_flags::WRITABLE;
    let id = hv::create_partition().map_err(|s| format!("CreatePartition: {s:?}"))?;
    let result = (|| {
        hv::initialize_partition(id).map_err(|s| format!("InitializePartition: {s:?}"))?;
        hv::create_vp(id, 0).map_err(|s| format!("CreateVp: {s:?}"))?;
        let message = memory::alloc_frames(1).ok_or("no frame")?;
        hv::map_intercept_message_page(id, 0, message).map_err(|s| format!("MapVpStatePage: {s:?}"))?;
        let fresh = memory::alloc_frames(1).ok_or("no frame")?;
        hv::map_gpa_pages(id, 0, &[fresh >> 12], flags).map_err(|(s, _)| format!("a fresh page: {s:?}"))?;
        println!("lend: a fresh root page: SUCCESS");
        // Scenarios run before the shell sets up the root's SynIC.
        crate::synic::init().map_err(|_| "SynIC pages")?;
        // SAFETY: reading hv-core's synthetic MSRs (the root holds the privileges).
        let (hypercall, simp, siefp) = unsafe {
            (
                kernel_x86::arch::rdmsr(hv1_abi::msr::HYPERCALL),
                kernel_x86::arch::rdmsr(hv1_abi::msr::SIMP),
                kernel_x86::arch::rdmsr(hv1_abi::msr::SIEFP),
            )
        };
        let cases = [
            ("the same page again", fresh),
            ("hv-core's region", boot.region.base + 0x1000),
            ("the local APIC (MMIO)", 0xFEE0_0000),
            ("the root's hypercall page (pinned)", hypercall & !0xFFF),
            ("the root's SIMP page (pinned)", simp & !0xFFF),
            ("the root's SIEF page (pinned)", siefp & !0xFFF),
            ("the VP's intercept-message page (pinned)", message),
        ];
        for (i, (what, page)) in cases.iter().enumerate() {
            check(*page != 0, || format!("{what}: no page to try"))?;
            match hv::map_gpa_pages(id, 1 + i as u64, &[page >> 12], flags) {
                Err((HvStatus::INVALID_PARAMETER, 0)) => println!("lend: {what}: INVALID_PARAMETER"),
                other => return Err(format!("{what}: expected INVALID_PARAMETER, got {other:?}")),
            }
        }
        let spare = memory::alloc_frames(1).ok_or("no frame")?;
        match hv::map_gpa_pages(id, 1 << 20, &[spare >> 12], flags) {
            Err((HvStatus::INVALID_PARAMETER, 0)) => println!("lend: a GFN at 4 GiB: INVALID_PARAMETER"),
            other => {
                return Err(format!(
                    "a GFN at 4 GiB: expected INVALID_PARAMETER, got {other:?}"
                ));
            }
        }
        let stats = hv::partition_stats(id).map_err(|s| format!("stats: {s:?}"))?;
        check(stats.mapped_pages == 1, || {
            format!("{} pages mapped, expected 1", stats.mapped_pages)
        })?;
        Ok(())
    })();
    let _ = hv::unmap_gpa_pages(id, 0, 1);
    let _ = hv::finalize_partition(id);
    let _ = hv::delete_partition(id);
    result
}

/// Device DMA cannot reach hv-core: the root aims a virtio-blk read of
/// sector 0 at the DMA canary, a page inside hv-core's region. The IOMMU
/// refuses the write (an IO_PAGE_FAULT in its event log) and the canary
/// keeps its pattern; the root cannot touch the IOMMU's registers nor
/// rewrite its PCI configuration (through 0xCF8/0xCFC or ECAM, see
/// [`iommu_config_guarded`]), and these attempts come first; and the disk
/// still reads into the root's own memory afterwards.
fn dma_into_hv_core() -> Result<(), String> {
    use hv1_abi::private::DMA_GUARD_IOMMU_ENABLED;
    let before = hv::dma_guard().map_err(|s| format!("GetDmaGuard: {s:?}"))?;
    let enabled = before.flags & DMA_GUARD_IOMMU_ENABLED != 0;
    println!(
        "iommu: enabled={} registers at {:#x}, requester {:#x}; canary at {:#x}",
        enabled as u8, before.iommu_mmio, before.iommu_devid, before.canary_pa
    );
    check(before.canary_fnv == before.canary_expected_fnv, || {
        "the canary was changed before the test".into()
    })?;
    if enabled {
        for addr in [
            before.iommu_mmio,
            before.iommu_mmio + 0x18,
            before.iommu_mmio + 0x2000,
        ] {
            match probe_read_u64(addr) {
                Ok(v) => {
                    return Err(format!(
                        "read of the IOMMU's register at {addr:#x} returned {v:#x}"
                    ));
                }
                Err(f) if f.vector == 13 => {}
                Err(f) => {
                    return Err(format!(
                        "IOMMU register {addr:#x}: expected #GP, got {}",
                        f.name()
                    ));
                }
            }
            // SAFETY: hv-core must refuse this (#GP, nothing written).
            match unsafe { probe_write_u64(addr, 0) } {
                Ok(()) => return Err(format!("write to the IOMMU's register at {addr:#x} succeeded")),
                Err(f) if f.vector == 13 => {}
                Err(f) => {
                    return Err(format!(
                        "IOMMU register {addr:#x}: expected #GP, got {}",
                        f.name()
                    ));
                }
            }
        }
        println!("iommu: the IOMMU's registers: #GP");
    }
    let mut disk = disk::Disk::open().map_err(|e| format!("disk: {e}"))?;
    println!(
        "iommu: virtio-blk at 00:{:02x}.{}, ACCESS_PLATFORM negotiated: {}",
        disk.location.device, disk.location.function, disk.access_platform as u8
    );
    if enabled {
        let loc = disk.location;
        let blk = (u16::from(loc.bus) << 8) | (u16::from(loc.device) << 3) | u16::from(loc.function);
        iommu_config_guarded(before.iommu_devid as u16, blk)?;
    }
    let result = disk.read_sector_to(0, before.canary_pa);
    println!(
        "iommu: sector 0 aimed at hv-core's canary {:#x}: {result:?}",
        before.canary_pa
    );
    let after = hv::dma_guard().map_err(|s| format!("GetDmaGuard: {s:?}"))?;
    let [q0, q1] = after.last_event;
    println!(
        "iommu: IOMMU events {} -> {} (IO_PAGE_FAULTs {} -> {}, last {q0:#018x} {q1:#x}), refused-DMA target aborts {} -> {}",
        before.events,
        after.events,
        before.page_faults,
        after.page_faults,
        before.target_aborts,
        after.target_aborts
    );
    let intact = after.canary_fnv == after.canary_expected_fnv;
    println!(
        "iommu: canary fnv {:#x} (filled with {:#x}): {}",
        after.canary_fnv,
        after.canary_expected_fnv,
        if intact { "intact" } else { "CHANGED" }
    );
    check(intact, || "the device wrote into hv-core's region".into())?;
    check(enabled, || "no IOMMU".into())?;
    check(disk.access_platform, || {
        "VIRTIO_F_ACCESS_PLATFORM not negotiated".into()
    })?;
    // QEMU 7.2's model writes no usable event-log entry (it never advances
    // the tail and garbles the fields), so the refusal is checked through
    // the IOMMU's PCI status; an IO_PAGE_FAULT, if logged, must name the
    // canary.
    check(after.target_aborts > before.target_aborts, || {
        "the IOMMU signaled no refused DMA".into()
    })?;
    check(
        after.page_faults == before.page_faults || q1 & !0xFFF == before.canary_pa,
        || format!("an IO_PAGE_FAULT at {q1:#x}, not the canary"),
    )?;
    let sector = disk
        .read_sector(0)
        .map_err(|e| format!("sector 0 into root memory: {e}"))?;
    check(sector.starts_with(b"hv demo disk"), || {
        "sector 0 read back wrong".into()
    })?;
    println!(
        "iommu: sector 0 into root memory afterwards: fnv {:#x}",
        disk::fnv1a(&sector)
    );
    Ok(())
}

/// PCI configuration mechanism #1, the way any driver uses it: select
/// `offset` of function `devid` (bus << 8 | devfn) in the address latch,
/// then access the data window at `0xCFC + (offset & 3)` with `size` bytes.
mod cfg {
    use core::arch::asm;
    use kernel_x86::arch::Port;

    pub const ADDRESS: u16 = 0xCF8;
    pub const DATA: u16 = 0xCFC;

    pub fn select(devid: u16, offset: u8) {
        // SAFETY: the root owns the host bridge's address latch.
        unsafe { Port::new(ADDRESS) }
            .write32(0x8000_0000 | (u32::from(devid) << 8) | u32::from(offset & 0xFC));
    }

    pub fn latch() -> u32 {
        // SAFETY: as for `select`; reading the latch has no side effect.
        unsafe { Port::new(ADDRESS) }.read32()
    }

    pub fn read(devid: u16, offset: u8, size: u8) -> u32 {
        select(devid, offset);
        let port = DATA + u16::from(offset & 3);
        match size {
            // SAFETY: a configuration read of the selected register.
            1 => u32::from(unsafe { Port::new(port) }.read8()),
            2 => {
                let v: u16;
                // SAFETY: as above, 16 bits wide.
                unsafe {
                    asm!("in ax, dx", in("dx") port, out("ax") v, options(nomem, nostack, preserves_flags))
                };
                u32::from(v)
            }
            // SAFETY: as above.
            _ => unsafe { Port::new(port) }.read32(),
        }
    }

    /// Write `value` (its low `size` bytes).
    ///
    /// # Safety
    /// The register must be one the caller may change (or one hv-core must
    /// refuse).
    pub unsafe fn write(devid: u16, offset: u8, size: u8, value: u32) {
        select(devid, offset);
        let port = DATA + u16::from(offset & 3);
        match size {
            // SAFETY: the caller's promise.
            1 => unsafe { Port::new(port) }.write8(value as u8),
            // SAFETY: as above, 16 bits wide.
            2 => unsafe {
                asm!("out dx, ax", in("dx") port, in("ax") value as u16, options(nomem, nostack, preserves_flags))
            },
            // SAFETY: as above.
            _ => unsafe { Port::new(port) }.write32(value),
        }
    }

    /// `REP OUTSD` of `value` to the data window (one dword).
    ///
    /// # Safety
    /// As for [`write`].
    pub unsafe fn write_string(devid: u16, offset: u8, value: u32) {
        select(devid, offset);
        let buf = [value];
        // SAFETY: the caller's promise; the instruction reads `buf` only.
        unsafe {
            asm!("rep outsd", in("dx") DATA, inout("rsi") buf.as_ptr() => _, inout("rcx") 1u64 => _,
                 options(nostack, readonly, preserves_flags))
        };
    }
}

/// PCI command register bits a driver flips: memory space, bus master,
/// INTx disable (all writable in QEMU's model).
const PCI_COMMAND_TOGGLE: u32 = 0x0002 | 0x0004 | 0x0400;
/// QEMU q35's host bridge (Intel Q35 MCH) at 00:00.0.
const Q35_MCH_ID: u32 = 0x29C0_8086;
/// Its PCIEXBAR: where the ECAM window is decoded.
const Q35_PCIEXBAR: u8 = 0x60;

/// The root cannot rewrite the IOMMU's PCI function (`iommu` is its
/// requester ID): through 0xCF8/0xCFC its writes are dropped at every width
/// (dword, word, byte) and as string I/O, so the command register, the
/// interrupt line and the capability block read back unchanged, while
/// reading its vendor/device ID still works; through the ECAM window its
/// page gets #GP, as does the host bridge's page, whose PCIEXBAR (which
/// places the window) cannot be rewritten through the ports either. The
/// virtio-blk function (`blk`) stays readable through ECAM and writable
/// through the ports.
fn iommu_config_guarded(iommu: u16, blk: u16) -> Result<(), String> {
    let bdf = |d: u16| format!("{:02x}:{:02x}.{}", d >> 8, (d >> 3) & 0x1F, d & 7);
    let id = cfg::read(iommu, 0, 4);
    println!(
        "iommu: the IOMMU's function {} reads {:04x}:{:04x} (class {:06x}) through 0xCFC",
        bdf(iommu),
        id & 0xFFFF,
        id >> 16,
        cfg::read(iommu, 8, 4) >> 8
    );
    check(id & 0xFFFF == 0x1022, || {
        format!("the IOMMU's function reads {id:#x}, not an AMD device")
    })?;
    // The latch itself passes through: the root reads back what it wrote.
    cfg::select(iommu, 0x3C);
    let latch = cfg::latch();
    check(latch == 0x8000_003C | (u32::from(iommu) << 8), || {
        format!("the address latch reads {latch:#x}")
    })?;

    // Through the ports, at every width.
    let command = cfg::read(iommu, 4, 2);
    // The IOMMU's capability block (ID 0x0F, "secure device") in the list.
    let mut cap = (cfg::read(iommu, 0x34, 1) & 0xFC) as u8;
    for _ in 0..48 {
        let header = cfg::read(iommu, cap, 4);
        if cap == 0 || header & 0xFF == 0x0F {
            break;
        }
        cap = ((header >> 8) & 0xFC) as u8;
    }
    check(cap != 0, || "no IOMMU capability in the list".into())?;
    type Change = fn(u32) -> u32;
    let attempts: [(&str, u8, u8, Change); 5] = [
        // (what, offset, size, value written given the value read)
        // The dword write leaves the status half 0 (its bits are
        // write-one-to-clear).
        ("command register (dword write)", 4, 4, |v| {
            (v & 0xFFFF) ^ PCI_COMMAND_TOGGLE
        }),
        ("command register (word write)", 4, 2, |v| v ^ PCI_COMMAND_TOGGLE),
        (
            "status register (word write, clearing every error bit)",
            6,
            2,
            |_| 0xFFFF,
        ),
        ("interrupt line (byte write)", 0x3C, 1, |v| v ^ 0xFF),
        ("capability MMIO base (dword write)", cap + 4, 4, |v| {
            v ^ 0x0010_0000
        }),
    ];
    for (what, offset, size, change) in attempts {
        let before = cfg::read(iommu, offset, size);
        let value = change(before);
        // SAFETY: every one of these writes must be refused by hv-core.
        unsafe { cfg::write(iommu, offset, size, value) };
        let got = cfg::read(iommu, offset, size);
        check(got == before, || {
            format!("the IOMMU's {what}: wrote {value:#x}, reads {got:#x} (was {before:#x})")
        })?;
        println!("iommu: port write to the IOMMU's {what}: unchanged ({got:#x})");
    }
    // SAFETY: as above, as string I/O.
    unsafe { cfg::write_string(iommu, 4, command ^ PCI_COMMAND_TOGGLE) };
    let got = cfg::read(iommu, 4, 2);
    check(got == command, || {
        format!("REP OUTSD changed the IOMMU's command to {got:#x}")
    })?;
    println!("iommu: REP OUTSD to the IOMMU's command register: unchanged");
    println!("iommu: config writes to the IOMMU through 0xCF8/0xCFC: refused");

    // Another function's configuration stays the root's: the virtio-blk
    // interrupt line takes a byte write and is put back.
    let blk_line = cfg::read(blk, 0x3C, 1);
    // SAFETY: the root's own disk; the interrupt line is informational and restored.
    unsafe { cfg::write(blk, 0x3C, 1, blk_line ^ 0x5A) };
    let changed = cfg::read(blk, 0x3C, 1);
    // SAFETY: as above.
    unsafe { cfg::write(blk, 0x3C, 1, blk_line) };
    check(
        changed == blk_line ^ 0x5A && cfg::read(blk, 0x3C, 1) == blk_line,
        || format!("virtio-blk's interrupt line did not take a write ({blk_line:#x} -> {changed:#x})"),
    )?;
    println!(
        "iommu: virtio-blk {} config writable: interrupt line {blk_line:#x} -> {changed:#x} -> back",
        bdf(blk)
    );

    // ECAM: find the window through the host bridge's PCIEXBAR.
    let host = cfg::read(0, 0, 4);
    check(host == Q35_MCH_ID, || {
        format!("host bridge {host:#x} is not q35's MCH")
    })?;
    let pciexbar =
        u64::from(cfg::read(0, Q35_PCIEXBAR, 4)) | (u64::from(cfg::read(0, Q35_PCIEXBAR + 4, 4)) << 32);
    check(pciexbar & 1 != 0, || {
        format!("ECAM disabled (PCIEXBAR {pciexbar:#x})")
    })?;
    let ecam = pciexbar & 0x7F_FC00_0000;
    let page = |d: u16| ecam + (u64::from(d) << 12);
    let blk_id = probe_read_u64(page(blk)).map_err(|f| format!("ECAM read of virtio-blk: {}", f.name()))?;
    check(blk_id as u32 == cfg::read(blk, 0, 4), || {
        format!("virtio-blk's ECAM ID {blk_id:#x} differs from 0xCFC's")
    })?;
    println!(
        "iommu: ECAM at {ecam:#x}: virtio-blk reads {:04x}:{:04x}",
        blk_id & 0xFFFF,
        (blk_id >> 16) & 0xFFFF
    );
    let gp = |r: Result<u64, kernel_x86::traps::ProbeFault>, what: &str| match r {
        Err(f) if f.vector == 13 => Ok(()),
        other => Err(format!("{what}: expected #GP, got {other:?}")),
    };
    let iommu_page = page(iommu);
    gp(probe_read_u64(iommu_page), "ECAM read of the IOMMU's function")?;
    // SAFETY: hv-core must refuse this (#GP, nothing written): the IOMMU's
    // ID (read-only) and its command register toggled.
    let wrote = unsafe {
        probe_write_u64(
            iommu_page,
            u64::from(id) | (u64::from(command ^ PCI_COMMAND_TOGGLE) << 32),
        )
    };
    gp(wrote.map(|()| 0), "ECAM write of the IOMMU's command register")?;
    let got = cfg::read(iommu, 4, 2);
    check(got == command, || {
        format!("the IOMMU's command changed to {got:#x} through ECAM")
    })?;
    println!("iommu: ECAM page of the IOMMU {iommu_page:#x}: read and write #GP, command unchanged");

    // PCIEXBAR: moving or disabling the window would bring the IOMMU's
    // function back into reach.
    // SAFETY: hv-core must refuse this write (it would disable ECAM).
    unsafe { cfg::write(0, Q35_PCIEXBAR, 4, pciexbar as u32 & !1) };
    let again = cfg::read(0, Q35_PCIEXBAR, 4);
    check(u64::from(again) == pciexbar & 0xFFFF_FFFF, || {
        format!("PCIEXBAR changed to {again:#x}")
    })?;
    gp(
        probe_read_u64(page(0) + u64::from(Q35_PCIEXBAR)),
        "ECAM read of PCIEXBAR",
    )?;
    // SAFETY: as above, through ECAM.
    let wrote = unsafe { probe_write_u64(page(0) + u64::from(Q35_PCIEXBAR), pciexbar & !1) };
    gp(wrote.map(|()| 0), "ECAM write of PCIEXBAR")?;
    let again = cfg::read(0, Q35_PCIEXBAR, 4);
    check(u64::from(again) == pciexbar & 0xFFFF_FFFF, || {
        format!("PCIEXBAR changed to {again:#x} through ECAM")
    })?;
    println!("iommu: the host bridge's PCIEXBAR {pciexbar:#x}: port write unchanged, ECAM page #GP");
    Ok(())
}
