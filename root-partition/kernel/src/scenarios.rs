//! Self-tests run after demotion when the command line says `test=<name>`.
//! Each prints `TEST <name>: PASS` or `TEST <name>: FAIL: <why>`, and the
//! machine exits through isa-debug-exit; the host tests in `tests/` check both.

use crate::start::BootReport;
use crate::{disk, hv, memory};
use alloc::format;
use alloc::string::String;
use hv1_abi::cpuid::PartitionPrivileges;
use hv1_abi::{HvCallCode, HvStatus, HypercallControl};
use kernel_x86::traps::{probe_read_u64, probe_write_u64};

/// Run scenario `name`; true if it passed.
pub fn run(name: &str, boot: &BootReport) -> bool {
    let result = match name {
        "cpuid" => cpuid(boot),
        "hv-region" => hv_region(boot),
        "hypercall" => hypercall(boot),
        "disk" => disk_read(),
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
    memory::free_frames(out, 1);
    Ok(())
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
