//! Hostile CPU probes (mode `cpu-hostile`): a child that tries, one case at a
//! time, to reach CPU state hv-core does not switch per partition (XSAVE
//! components, PKRU, CET), the SVM instructions, MSRs and SynIC registers with
//! bad values, and instructions hv-core must step over without decode
//! assists. Every case prints `hostile <ID>: PASS|FAIL <detail>` and the run
//! ends with `cpu-hostile: N passed, M failed`; the QEMU test requires every
//! case to pass and checks that the root, hv-core and a peer are untouched.

use crate::guest::{
    SIEF_GPA, SIMP_GPA, enable_hypercalls, halt_forever, hypercall, init_heap, say_line, simple,
};
use alloc::format;
use alloc::string::String;
use boot_proto::child::{BootInfo, target};
use core::arch::asm;
use hv1_abi::{HvCallCode, HvStatus, HypercallControl, msr};
use kernel_x86::traps::{Privileged, ProbeFault, probe_privileged, probe_rdmsr, probe_wrmsr};

const GP: u8 = 13;
const UD: u8 = 6;

type Check = Result<(), String>;

fn expect_fault(what: &str, r: Result<u64, ProbeFault>, vector: u8) -> Check {
    match r {
        Err(f) if f.vector == vector => Ok(()),
        Err(f) => Err(format!("{what}: {} instead of vector {vector}", f.name())),
        Ok(v) => Err(format!("{what}: succeeded ({v:#x}) instead of vector {vector}")),
    }
}

fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let r = kernel_x86::arch::cpuid(leaf, subleaf);
    [r.eax, r.ebx, r.ecx, r.edx]
}

fn cr4() -> u64 {
    let v: u64;
    // SAFETY: reading CR4 has no side effects.
    unsafe { asm!("mov {}, cr4", out(reg) v, options(nomem, nostack)) };
    v
}

/// MOV to CR4 through a probe; the value must be one the guest can live
/// with if hv-core (wrongly) accepted it.
fn write_cr4(value: u64) -> Result<u64, ProbeFault> {
    // A wrongly accepted feature bit only enables instructions this guest
    // never uses outside the probes.
    // SAFETY: every value tried keeps paging and long mode as they are.
    unsafe { probe_privileged(Privileged::MovCr4, value) }
}

fn cr4_refused(bit: u64) -> Check {
    let before = cr4();
    expect_fault("mov cr4", write_cr4(before | bit), GP)?;
    if cr4() != before {
        return Err(format!("CR4 changed to {:#x}", cr4()));
    }
    Ok(())
}

fn bits_clear(what: &str, word: u32, mask: u32) -> Check {
    if word & mask == 0 {
        Ok(())
    } else {
        Err(format!("{what} = {word:#x} shows bits {:#x}", word & mask))
    }
}

fn rdmsr(index: u32) -> Result<u64, ProbeFault> {
    // SAFETY: reading an MSR of this partition (or one hv-core refuses).
    unsafe { probe_rdmsr(index) }
}

fn wrmsr(index: u32, value: u64) -> Result<u64, ProbeFault> {
    // SAFETY: values hv-core must refuse, or synthetic MSRs of this partition.
    unsafe { probe_wrmsr(index, value) }.map(|()| 0)
}

fn privileged(op: Privileged) -> Check {
    // SAFETY: hv-core must refuse each of these with #UD; RAX = 0 names no
    // memory that matters if one ever ran.
    expect_fault(&format!("{op:?}"), unsafe { probe_privileged(op, 0) }, UD)
}

fn status_is(what: &str, got: HvStatus, want: HvStatus) -> Check {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: {got:?}, expected {want:?}"))
    }
}

/// Code bytes `CPUID; RET` placed so that the CPUID straddles a page
/// boundary (the second opcode byte on the next page), with prefixes.
#[repr(C, align(4096))]
struct TwoPages([u8; 8192]);
static mut STRADDLE: TwoPages = TwoPages([0xCC; 8192]);

fn run_straddling(code: &[u8]) -> [u32; 4] {
    let at = 4096 - (code.len() - 2);
    // Our own static, identity-mapped and executable (the worker's page
    // tables map the child's RAM without NX); nothing else uses it.
    let base = core::ptr::addr_of_mut!(STRADDLE).cast::<u8>();
    // SAFETY: `at + code.len() + 1` is within the 8 KiB buffer.
    unsafe {
        core::ptr::copy_nonoverlapping(code.as_ptr(), base.add(at), code.len());
        base.add(at + code.len()).write(0xC3); // RET
    }
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: the bytes are a complete CPUID followed by RET.
    unsafe {
        asm!("push rbx", "call {f}", "mov {b:e}, ebx", "pop rbx",
             f = in(reg) base.add(at), b = out(reg) b, inout("eax") 0u32 => a, inout("ecx") 0u32 => c, out("edx") d)
    };
    [a, b, c, d]
}

/// Run every case.
pub fn run(name: &str, info: &'static BootInfo) -> ! {
    init_heap();
    kernel_x86::traps::init(
        alloc::boxed::Box::leak(alloc::boxed::Box::new(kernel_x86::traps::CpuTables::new())),
        crate::guest::on_exception,
    );
    let memory = info.memory_size;
    let hv_core = info.targets[target::HV_CORE];
    let mut passed = 0;
    let mut failed = 0;
    let mut case = |id: &str, what: &str, check: &mut dyn FnMut() -> Check| match check() {
        Ok(()) => {
            passed += 1;
            say_line(format_args!("hostile {id}: PASS {what}"));
        }
        Err(e) => {
            failed += 1;
            say_line(format_args!("hostile {id}: FAIL {what}: {e}"));
        }
    };

    // Before the hypercall page exists: VMMCALL is #UD (TLFS).
    case(
        "H-VMM-01",
        "VMMCALL before the hypercall page is enabled is #UD",
        &mut || {
            // SAFETY: no output GPA is used by GetPartitionId with output 0.
            let r = unsafe { kernel_x86::traps::probe_vmmcall(simple(HvCallCode::GET_PARTITION_ID), 0, 0) };
            expect_fault("vmmcall", r, UD)
        },
    );
    enable_hypercalls();

    // CPUID agrees with what is emulated.
    case("H-CPU-01", "CPUID.1 hides MONITOR, XSAVE, OSXSAVE", &mut || {
        bits_clear("CPUID.1:ECX", cpuid(1, 0)[2], (1 << 3) | (1 << 26) | (1 << 27))
    });
    case(
        "H-CPU-02",
        "CPUID.7 hides PKU, OSPKE, CET, LA57, PKS",
        &mut || {
            let r = cpuid(7, 0);
            bits_clear(
                "CPUID.7:ECX",
                r[2],
                (1 << 3) | (1 << 4) | (1 << 7) | (1 << 16) | (1 << 31),
            )?;
            bits_clear("CPUID.7:EDX", r[3], 1 << 20)
        },
    );
    case("H-CPU-03", "CPUID.0xD (XSAVE state) is empty", &mut || {
        let r = cpuid(0xD, 0);
        if r == [0; 4] {
            Ok(())
        } else {
            Err(format!("{r:x?}"))
        }
    });
    case(
        "H-CPU-04",
        "CPUID hides SVM (0x80000001:ECX[2], leaf 0x8000000A)",
        &mut || {
            bits_clear("CPUID.80000001:ECX", cpuid(0x8000_0001, 0)[2], 1 << 2)?;
            let r = cpuid(0x8000_000A, 0);
            if r == [0; 4] {
                Ok(())
            } else {
                Err(format!("leaf 0x8000000A {r:x?}"))
            }
        },
    );
    case(
        "H-CPU-05",
        "CPUID.1 shows the hypervisor bit and leaf 0x40000000 says Microsoft Hv",
        &mut || {
            bits_clear("inverted", !cpuid(1, 0)[2], 1 << 31)?;
            let r = cpuid(0x4000_0000, 0);
            let mut vendor = [0u8; 12];
            vendor[..4].copy_from_slice(&r[1].to_le_bytes());
            vendor[4..8].copy_from_slice(&r[2].to_le_bytes());
            vendor[8..].copy_from_slice(&r[3].to_le_bytes());
            if &vendor == b"Microsoft Hv" {
                Ok(())
            } else {
                Err(format!("{vendor:?}"))
            }
        },
    );

    case(
        "H-CPU-06",
        "no AccessVpRunTimeReg advertised, and VP_RUNTIME is #GP (consistent)",
        &mut || {
            bits_clear("CPUID.40000003:EAX", cpuid(0x4000_0003, 0)[0], 1)?;
            expect_fault("rdmsr VP_RUNTIME", rdmsr(msr::VP_RUNTIME), GP)
        },
    );

    // CR4: features whose state is not switched cannot be enabled.
    case(
        "H-CR4-01",
        "CR4.PKE is refused with #GP (PKRU would leak)",
        &mut || cr4_refused(1 << 22),
    );
    case(
        "H-CR4-02",
        "CR4.OSXSAVE is refused with #GP (XCR0 would leak)",
        &mut || cr4_refused(1 << 18),
    );
    case("H-CR4-03", "CR4.CET is refused with #GP", &mut || {
        cr4_refused(1 << 23)
    });
    case("H-CR4-04", "CR4.LA57 is refused with #GP", &mut || {
        cr4_refused(1 << 12)
    });
    case(
        "H-CR4-05",
        "CR4.VMXE/SMXE and reserved bit 31 are refused",
        &mut || {
            cr4_refused(1 << 13)?;
            cr4_refused(1 << 14)?;
            cr4_refused(1 << 31)
        },
    );
    case("H-CR4-06", "clearing CR4.PAE in long mode is #GP", &mut || {
        let before = cr4();
        expect_fault("mov cr4", write_cr4(before & !(1 << 5)), GP)
    });
    case(
        "H-CR4-07",
        "an allowed CR4 change (PGE) takes effect through the intercept",
        &mut || {
            let before = cr4();
            write_cr4(before ^ (1 << 7)).map_err(|f| format!("refused: {}", f.name()))?;
            let after = cr4();
            write_cr4(before).map_err(|f| format!("restore refused: {}", f.name()))?;
            if after == before ^ (1 << 7) && cr4() == before {
                Ok(())
            } else {
                Err(format!("CR4 {before:#x} -> {after:#x} -> {:#x}", cr4()))
            }
        },
    );

    // Instructions on state hv-core hides.
    case("H-INS-01", "XGETBV is #UD (OSXSAVE off)", &mut || {
        privileged(Privileged::Xgetbv)
    });
    case("H-INS-02", "XSETBV is #UD", &mut || {
        privileged(Privileged::Xsetbv)
    });
    case("H-INS-03", "RDPKRU is #UD (PKE off)", &mut || {
        privileged(Privileged::Rdpkru)
    });
    case("H-INS-04", "WRPKRU is #UD", &mut || {
        privileged(Privileged::Wrpkru)
    });
    for (id, op) in [
        ("H-SVM-01", Privileged::Vmrun),
        ("H-SVM-02", Privileged::Vmload),
        ("H-SVM-03", Privileged::Vmsave),
        ("H-SVM-04", Privileged::Stgi),
        ("H-SVM-05", Privileged::Clgi),
        ("H-SVM-06", Privileged::Skinit),
        ("H-SVM-07", Privileged::Invlpga),
        ("H-SVM-08", Privileged::Monitor),
        ("H-SVM-09", Privileged::Mwait),
    ] {
        case(
            id,
            &format!("{op:?} is #UD (no nested virtualization, no MONITOR)"),
            &mut || privileged(op),
        );
    }
    case(
        "H-INS-05",
        "INVD is a no-op, not a machine-wide cache drop",
        &mut || {
            // SAFETY: hv-core turns INVD into a no-op; on bare metal it would
            // only drop this guest's unwritten lines.
            unsafe { probe_privileged(Privileged::Invd, 0) }
                .map(|_| ())
                .map_err(|f| format!("INVD faulted: {}", f.name()))
        },
    );
    case(
        "H-INS-06",
        "a CPUID straddling a page with prefixes is stepped over",
        &mut || {
            let plain = cpuid(0, 0);
            let r = run_straddling(&[0x66, 0x2E, 0x48, 0x0F, 0xA2]);
            if r == plain {
                Ok(())
            } else {
                Err(format!("{r:x?} vs {plain:x?}"))
            }
        },
    );

    // MSRs.
    case(
        "H-MSR-01",
        "VM_HSAVE_PA and VM_CR read 0 (SVM is hv-core's)",
        &mut || {
            for m in [0xC001_0117, 0xC001_0114] {
                match rdmsr(m) {
                    Ok(0) => {}
                    other => return Err(format!("{m:#x}: {other:?}")),
                }
            }
            Ok(())
        },
    );
    case("H-MSR-02", "VM_HSAVE_PA write is #GP", &mut || {
        expect_fault("wrmsr", wrmsr(0xC001_0117, 0x1000), GP)
    });
    case("H-MSR-03", "EFER with a reserved bit is #GP", &mut || {
        let efer = rdmsr(0xC000_0080).map_err(|f| format!("rdmsr EFER: {}", f.name()))?;
        expect_fault("wrmsr EFER", wrmsr(0xC000_0080, efer | (1 << 2)), GP)
    });
    case("H-MSR-04", "EFER.SVME cannot be seen or set", &mut || {
        let efer = rdmsr(0xC000_0080).map_err(|f| format!("rdmsr EFER: {}", f.name()))?;
        if efer & (1 << 12) != 0 {
            return Err(format!("EFER reads {efer:#x}"));
        }
        Ok(())
    });
    case("H-MSR-05", "an unknown MSR is #GP both ways", &mut || {
        expect_fault("rdmsr", rdmsr(0x1234_5678), GP)?;
        expect_fault("wrmsr", wrmsr(0x1234_5678, 1), GP)
    });
    case("H-MSR-06", "an unimplemented synthetic MSR is #GP", &mut || {
        expect_fault("wrmsr", wrmsr(0x4000_0200, 1), GP)
    });
    case(
        "H-MSR-07",
        "5000 refused WRMSRs each get #GP (hv-core logs at most its budget)",
        &mut || {
            for i in 0..5000u64 {
                expect_fault("wrmsr", wrmsr(0x1234_0000, i), GP)?;
            }
            Ok(())
        },
    );
    case(
        "H-MSR-08",
        "a locked HYPERCALL MSR cannot be rewritten, and calls still work",
        &mut || {
            let hc = rdmsr(msr::HYPERCALL).map_err(|f| format!("rdmsr: {}", f.name()))?;
            wrmsr(msr::HYPERCALL, hc | msr::HYPERCALL_LOCKED).map_err(|f| format!("lock: {}", f.name()))?;
            expect_fault("rewrite", wrmsr(msr::HYPERCALL, 0), GP)?;
            expect_fault(
                "relocate",
                wrmsr(msr::HYPERCALL, 0x7000 | msr::HYPERCALL_ENABLE),
                GP,
            )?;
            let r = hypercall(
                simple(HvCallCode::GET_PARTITION_ID),
                0,
                boot_proto::child::HYPERCALL_OUTPUT_GPA,
            );
            status_is("GetPartitionId", r.status, HvStatus::SUCCESS)
        },
    );

    // SynIC registers.
    case(
        "H-SYN-01",
        "a SINT vector below 16, unmasked, is #GP",
        &mut || expect_fault("wrmsr SINT2", wrmsr(msr::SINT0 + 2, 5), GP),
    );
    case(
        "H-SYN-02",
        "SIMP on a page past the child's memory is #GP",
        &mut || expect_fault("wrmsr SIMP", wrmsr(msr::SIMP, memory | 1), GP),
    );
    case("H-SYN-03", "SIEFP on hv-core's region is #GP", &mut || {
        expect_fault("wrmsr SIEFP", wrmsr(msr::SIEFP, (hv_core & !0xFFF) | 1), GP)
    });
    case(
        "H-SYN-04",
        "100000 EOMs with nothing queued change nothing",
        &mut || {
            for _ in 0..100_000 {
                wrmsr(msr::EOM, 0).map_err(|f| format!("EOM: {}", f.name()))?;
            }
            Ok(())
        },
    );
    case(
        "H-SYN-05",
        "signal on a connection the child does not have",
        &mut || {
            let control = HypercallControl {
                fast: true,
                ..HypercallControl::simple(HvCallCode::SIGNAL_EVENT)
            };
            let r = hypercall(control.encode(), 0x7777, 0);
            status_is("SignalEvent", r.status, HvStatus::INVALID_CONNECTION_ID)
        },
    );
    case(
        "H-SYN-06",
        "signal with an out-of-range flag on its message connection",
        &mut || {
            // Connection 1 is a message port, not an event port.
            let control = HypercallControl {
                fast: true,
                ..HypercallControl::simple(HvCallCode::SIGNAL_EVENT)
            };
            let r = hypercall(control.encode(), 1 | (0xFFFF << 32), 0);
            if r.status == HvStatus::SUCCESS {
                Err(String::from("accepted"))
            } else {
                Ok(())
            }
        },
    );
    case(
        "H-SYN-07",
        "post with an input GPA past the child's memory",
        &mut || {
            let r = hypercall(simple(HvCallCode::POST_MESSAGE), memory, 0);
            if r.status == HvStatus::SUCCESS {
                Err(String::from("accepted"))
            } else {
                Ok(())
            }
        },
    );
    case(
        "H-SYN-09",
        "a post whose input crosses a page boundary is refused",
        &mut || {
            // 8-aligned, its 256 bytes running into the next page (TLFS: a
            // parameter block may not cross a page).
            let input = boot_proto::child::HYPERCALL_INPUT_GPA + 4096 - 8;
            let r = hypercall(simple(HvCallCode::POST_MESSAGE), input, 0);
            if r.status == HvStatus::SUCCESS {
                Err(String::from("accepted"))
            } else {
                Ok(())
            }
        },
    );
    case(
        "H-MSR-09",
        "the VP assist page MSR takes its own page, refuses one past its memory",
        &mut || {
            // Linux 6.1 writes it on every CPU whatever CPUID says (hv_cpu_init).
            let page = SIEF_GPA + 0x1000;
            wrmsr(msr::VP_ASSIST_PAGE, page | 1).map_err(|f| format!("own page: {}", f.name()))?;
            let back = rdmsr(msr::VP_ASSIST_PAGE).map_err(|f| format!("read: {}", f.name()))?;
            if back != page | 1 {
                return Err(format!("reads back {back:#x}"));
            }
            expect_fault("page past memory", wrmsr(msr::VP_ASSIST_PAGE, memory | 1), GP)?;
            wrmsr(msr::VP_ASSIST_PAGE, 0).map_err(|f| format!("disable: {}", f.name()))?;
            Ok(())
        },
    );
    case(
        "H-MSR-10",
        "REFERENCE_TSC: disabled writes kept (kexec's read-modify-write), enabling fills its own page",
        &mut || {
            let v = rdmsr(msr::REFERENCE_TSC).map_err(|f| format!("read: {}", f.name()))?;
            wrmsr(msr::REFERENCE_TSC, v & !1).map_err(|f| format!("disabled write: {}", f.name()))?;
            // The page is offered now (CPUID 0x40000003 EAX bit 9): enabling
            // it on the child's own page fills it (sequence not 0).
            #[repr(C, align(4096))]
            struct Page([u8; 4096]);
            static mut TSC_PAGE: Page = Page([0; 4096]);
            let page = &raw const TSC_PAGE as u64;
            wrmsr(msr::REFERENCE_TSC, page | 1).map_err(|f| format!("enable: {}", f.name()))?;
            // SAFETY: this case's own page, which hv-core just filled.
            let sequence = unsafe { core::ptr::read_volatile(page as *const u32) };
            let back = rdmsr(msr::REFERENCE_TSC).map_err(|f| format!("read back: {}", f.name()))?;
            wrmsr(msr::REFERENCE_TSC, 0).map_err(|f| format!("disable: {}", f.name()))?;
            if sequence == 0 || back != page | 1 {
                return Err(format!("sequence {sequence}, read back {back:#x}"));
            }
            Ok(())
        },
    );
    case(
        "H-SYN-08",
        "SIMP and SIEFP on its own pages are accepted",
        &mut || {
            wrmsr(msr::SIMP, SIMP_GPA | 1).map_err(|f| format!("SIMP: {}", f.name()))?;
            wrmsr(msr::SIEFP, SIEF_GPA | 1).map_err(|f| format!("SIEFP: {}", f.name()))?;
            wrmsr(msr::SCONTROL, 1).map_err(|f| format!("SCONTROL: {}", f.name()))?;
            Ok(())
        },
    );

    say_line(format_args!(
        "testos {name}: cpu-hostile: {passed} passed, {failed} failed"
    ));
    halt_forever()
}
