//! Everything that runs inside the child.

use boot_proto::child::{self, BootInfo, target};
use core::arch::{asm, global_asm};
use core::fmt::{self, Write};
use hv1_abi::{HvCallCode, HvStatus, HypercallControl, HypercallResult, msr};

global_asm!(
    r#"
    .section .text.start, "ax"
    .global testos_start
testos_start:
    cli
    and rsp, -16
    call {main}
2:  hlt
    jmp 2b
    "#,
    main = sym testos_main,
);

struct Com1;

impl Com1 {
    fn outb(port: u16, v: u8) {
        // SAFETY: COM1 is the child's (emulated) console; writes have no memory effects.
        unsafe { asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags)) };
    }
    fn inb(port: u16) -> u8 {
        let v: u8;
        // SAFETY: as for `outb`.
        unsafe { asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags)) };
        v
    }
}

impl Write for Com1 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            while Self::inb(0x3FD) & 0x20 == 0 {}
            Self::outb(0x3F8, b);
        }
        Ok(())
    }
}

macro_rules! say {
    ($($arg:tt)*) => {{ let _ = writeln!(Com1, $($arg)*); }};
}

fn halt_forever() -> ! {
    loop {
        // SAFETY: parks the VP; with interrupts off the hypervisor sees a final HLT.
        unsafe { asm!("cli; hlt", options(nomem, nostack)) };
    }
}

extern "sysv64" fn testos_main(vp: u64, info: &'static BootInfo) -> ! {
    if vp != 0 {
        halt_forever();
    }
    let name = child::unpad(&info.name);
    let mode = child::unpad(&info.mode);
    if info.magic != child::BOOT_INFO_MAGIC {
        say!("testos: bad boot info magic {:#x}", info.magic);
        halt_forever();
    }
    say!(
        "testos {name}: booted on VP 0 of {} (mode {mode}, {} MiB)",
        info.vp_count,
        info.memory_size >> 20
    );
    match mode {
        "hello" => {
            say!("testos {name}: hello from a child partition");
            say!("testos {name}: ready");
            halt_forever()
        }
        "spin" => spin(name),
        "fpu" => fpu(name),
        "hypercalls" => bad_hypercalls(name, info.targets[target::HV_CORE]),
        "rootonly" => root_only_hypercalls(name),
        "read-hv" => touch(
            name,
            "read",
            "hv-core's region",
            info.targets[target::HV_CORE],
            false,
        ),
        "write-root" => touch(name, "write", "root memory", info.targets[target::ROOT], true),
        "read-peer" => touch(name, "read", "a peer's memory", info.targets[target::PEER], false),
        "write-peer" => touch(name, "write", "a peer's memory", info.targets[target::PEER], true),
        "read-mmio" => touch(name, "read", "the local APIC", info.targets[target::MMIO], false),
        "triple-fault" => triple_fault(name),
        "ioports" => io_ports(name),
        other => {
            say!("testos {name}: unknown mode '{other}'");
            halt_forever()
        }
    }
}

fn spin(name: &str) -> ! {
    say!("testos {name}: ready");
    let mut tick = 0u64;
    loop {
        for i in 0..2_000_000u64 {
            core::hint::black_box(i);
        }
        tick += 1;
        say!("testos {name}: tick {tick}");
    }
}

/// Keep a pattern in XMM0/XMM1 across preemptions: another partition's SSE
/// state must never show through.
fn fpu(name: &str) -> ! {
    let pattern = name.bytes().fold(0x9E37_79B9_7F4A_7C15u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    say!("testos {name}: ready (fpu pattern {pattern:#x})");
    let mut tick = 0u64;
    loop {
        // SAFETY: the worker enables SSE (CR4.OSFXSR); only XMM0/XMM1 are used.
        unsafe {
            asm!("movq xmm0, {p}", "movq xmm1, {q}", p = in(reg) pattern, q = in(reg) !pattern, out("xmm0") _, out("xmm1") _);
        }
        for i in 0..2_000_000u64 {
            core::hint::black_box(i);
        }
        let (a, b): (u64, u64);
        // SAFETY: reads XMM0/XMM1 back.
        unsafe {
            asm!("movq {a}, xmm0", "movq {b}, xmm1", a = out(reg) a, b = out(reg) b, options(nomem, nostack));
        }
        if a != pattern || b != !pattern {
            say!("testos {name}: FPU STATE CORRUPTED: {a:#x} {b:#x}");
            halt_forever();
        }
        tick += 1;
        say!("testos {name}: fpu tick {tick}");
    }
}

fn touch(name: &str, how: &str, what: &str, addr: u64, write: bool) -> ! {
    say!("testos {name}: attempting to {how} {what} at {addr:#x}");
    // SAFETY: deliberately hostile: the address is outside this partition's
    // memory; the hypervisor must stop us. Reaching the next line is a breach.
    unsafe {
        let p = addr as *mut u64;
        if write {
            p.write_volatile(0x4841_434B_4544_2121);
        } else {
            let v = p.read_volatile();
            say!("testos {name}: read {v:#x}");
        }
    }
    say!("testos {name}: ESCAPED: the {how} of {what} succeeded");
    halt_forever()
}

fn triple_fault(name: &str) -> ! {
    say!("testos {name}: loading an empty IDT and faulting");
    let idtr = [0u8; 10];
    // SAFETY: deliberately hostile: an empty IDT turns the #UD into a triple fault.
    unsafe {
        asm!("lidt [{}]", "ud2", in(reg) idtr.as_ptr(), options(nostack));
    }
    say!("testos {name}: ESCAPED: still running after a triple fault");
    halt_forever()
}

fn io_ports(name: &str) -> ! {
    say!("testos {name}: poking the root's devices");
    // PCI config address/data, the keyboard controller's reset line, QEMU's
    // debug-exit port: all the root's (or the machine's), none passed through.
    Com1::outb(0x64, 0xFE);
    // SAFETY: port writes; the hypervisor intercepts every port of a child.
    unsafe {
        asm!("out dx, eax", in("dx") 0xCF8u16, in("eax") 0x8000_0000u32, options(nomem, nostack));
        asm!("out dx, eax", in("dx") 0xCFCu16, in("eax") 0xFFFF_FFFFu32, options(nomem, nostack));
        asm!("out dx, eax", in("dx") 0xF4u16, in("eax") 0x10u32, options(nomem, nostack));
    }
    let v = Com1::inb(0x60);
    say!("testos {name}: io done (port 0x60 read {v:#x})");
    halt_forever()
}

// ---- hypercalls ----

fn wrmsr(index: u32, value: u64) {
    // SAFETY: synthetic MSRs of the HV#1 interface, owned by this partition.
    unsafe {
        asm!("wrmsr", in("ecx") index, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack))
    };
}

fn enable_hypercalls() {
    wrmsr(msr::GUEST_OS_ID, (1 << 63) | (0x7E << 48) | (1 << 16));
    wrmsr(msr::HYPERCALL, child::HYPERCALL_PAGE_GPA | msr::HYPERCALL_ENABLE);
}

fn hypercall(control: u64, input: u64, output: u64) -> HypercallResult {
    let rax: u64;
    // SAFETY: the hypercall page holds the hypervisor's stub; inputs and
    // outputs are this partition's own scratch pages (or deliberately bad GPAs
    // the hypervisor must refuse without touching).
    unsafe {
        asm!("call {page}", page = in(reg) child::HYPERCALL_PAGE_GPA, in("rcx") control, in("rdx") input,
             in("r8") output, lateout("rax") rax, clobber_abi("C"))
    };
    HypercallResult::decode(rax)
}

fn report(name: &str, what: &str, r: HypercallResult) {
    say!(
        "testos {name}: hc {what}: {:?} reps {}",
        r.status,
        r.reps_completed
    );
}

fn simple(code: HvCallCode) -> u64 {
    HypercallControl::simple(code).encode()
}

fn bad_hypercalls(name: &str, hv_core: u64) -> ! {
    enable_hypercalls();
    let out = child::HYPERCALL_OUTPUT_GPA;
    let input = child::HYPERCALL_INPUT_GPA;
    let r = hypercall(simple(HvCallCode::GET_PARTITION_ID), 0, out);
    // SAFETY: the output page is ours and the call has returned.
    let id = unsafe { (out as *const u64).read_volatile() };
    say!("testos {name}: partition id {id} ({:?})", r.status);
    report(
        name,
        "misaligned output",
        hypercall(simple(HvCallCode::GET_PARTITION_ID), 0, out + 3),
    );
    report(
        name,
        "output beyond memory",
        hypercall(simple(HvCallCode::GET_PARTITION_ID), 0, 0x7FFF_F000),
    );
    report(
        name,
        "output in hv-core",
        hypercall(simple(HvCallCode::GET_PARTITION_ID), 0, hv_core & !0xFFF),
    );
    report(
        name,
        "reserved bits",
        hypercall(simple(HvCallCode::GET_PARTITION_ID) | (1 << 63), 0, out),
    );
    report(name, "unknown code", hypercall(0x7777, 0, out));
    let huge_reps = HypercallControl {
        rep_count: 0xFFF,
        ..HypercallControl::simple(HvCallCode::GET_VP_REGISTERS)
    };
    report(name, "huge rep count", hypercall(huge_reps.encode(), input, out));
    let bad_start = (0xFFF << 48) | (5u64 << 32) | HvCallCode::MAP_GPA_PAGES.0 as u64;
    report(name, "rep start beyond count", hypercall(bad_start, input, out));
    report(
        name,
        "input beyond memory",
        hypercall(simple(HvCallCode::CREATE_PARTITION), 0xFFFF_FFFF_F000, out),
    );
    say!("testos {name}: hypercalls done");
    halt_forever()
}

fn root_only_hypercalls(name: &str) -> ! {
    enable_hypercalls();
    let (input, out) = (child::HYPERCALL_INPUT_GPA, child::HYPERCALL_OUTPUT_GPA);
    // SAFETY: our own zeroed scratch page; partition id 1 is the root.
    unsafe { (input as *mut u64).write_volatile(1) };
    let calls: [(&str, u64); 8] = [
        ("CreatePartition", simple(HvCallCode::CREATE_PARTITION)),
        ("InitializePartition", simple(HvCallCode::INITIALIZE_PARTITION)),
        ("DeletePartition", simple(HvCallCode::DELETE_PARTITION)),
        (
            "MapGpaPages",
            HypercallControl {
                rep_count: 1,
                ..HypercallControl::simple(HvCallCode::MAP_GPA_PAGES)
            }
            .encode(),
        ),
        ("CreateVp", simple(HvCallCode::CREATE_VP)),
        (
            "SetVpRegisters",
            HypercallControl {
                rep_count: 1,
                ..HypercallControl::simple(HvCallCode::SET_VP_REGISTERS)
            }
            .encode(),
        ),
        ("DispatchVp", simple(HvCallCode::DISPATCH_VP)),
        ("GetCoreStats", simple(hv1_abi::private::GET_CORE_STATS)),
    ];
    let mut denied = 0;
    for (what, control) in calls {
        let r = hypercall(control, input, out);
        report(name, what, r);
        if r.status == HvStatus::ACCESS_DENIED {
            denied += 1;
        }
    }
    say!(
        "testos {name}: root-only calls denied: {denied} of {}",
        calls.len()
    );
    halt_forever()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    say!("testos: panic: {info}");
    halt_forever()
}
