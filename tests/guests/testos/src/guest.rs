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

pub(crate) struct Com1;

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

/// One line on COM1 (for the other modules; `say!` here).
pub(crate) fn say_line(args: core::fmt::Arguments) {
    let _ = writeln!(Com1, "{args}");
}

pub(crate) fn halt_forever() -> ! {
    loop {
        // SAFETY: parks the VP; with interrupts off the hypervisor sees a final HLT.
        unsafe { asm!("cli; hlt", options(nomem, nostack)) };
    }
}

pub(crate) extern "sysv64" fn testos_main(vp: u64, info: &'static BootInfo) -> ! {
    if vp != 0 {
        // Only `smp-ipi` uses the other VPs (VP 1 takes IPIs from VP 0).
        if vp == 1 && info.magic == child::BOOT_INFO_MAGIC && child::unpad(&info.mode) == "smp-ipi" {
            crate::smp::ap()
        }
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
        "read-mmio" => touch(
            name,
            "read",
            "the IOMMU's registers",
            info.targets[target::MMIO],
            false,
        ),
        "triple-fault" => triple_fault(name),
        "ioports" => io_ports(name),
        "string-io" => string_io(name),
        "vmmcall-cpl3" => vmmcall_outside_kernel_mode(name, true),
        "vmmcall-compat" => vmmcall_outside_kernel_mode(name, false),
        "irq-without-idt" => interrupt_without_idt(name),
        "vmbus-idle" => vmbus_idle(name),
        "synic" => synic_messages(name),
        "synic-irq" => synic_interrupts(name),
        "vmbus" => vmbus_session(name, None, false, ECHO_ROUND_TRIPS),
        "vmbus-2.4" => vmbus_session(
            name,
            Some(&[vmbus::version::Version::WIN8]),
            false,
            ECHO_ROUND_TRIPS,
        ),
        "vmbus-hold" => vmbus_session(name, None, true, ECHO_ROUND_TRIPS),
        "vmbus-bench" => vmbus_session(name, None, true, BENCH_ROUND_TRIPS),
        // Echoes kept DEPTH deep, batched (the QEMU benchmark's queue-depth runs).
        m if m.starts_with("vmbus-bench-batch:") => vmbus_bench_batch(name, &m["vmbus-bench-batch:".len()..]),
        "null-hypercalls" => null_hypercalls(name),
        "vmbus-conformance" => conformance(name),
        // Hostile VMBus clients (floods, churn, held rings): vmbus_hostile.rs.
        m if m.starts_with("vmbus-hostile-") => {
            crate::vmbus_hostile::run(name, &m["vmbus-hostile-".len()..], info)
        }
        // Hostile CPU probes (CR4, XSAVE, PKU, SVM instructions, MSRs, SynIC MSRs): cpu_hostile.rs.
        "cpu-hostile" => crate::cpu_hostile::run(name, info),
        "apic-timer" => crate::apic::run(name),
        // IPIs between two VPs: smp.rs.
        "smp-ipi" => crate::smp::run(name, info.vp_count),
        // Guest crash MSRs (a panic report the root must act on): crash.rs.
        m if m.starts_with("crash-report") => crate::crash::run(name, m),
        // Integration services (heartbeat, shutdown, time sync, KVP): ic_mode.rs.
        "ic" => crate::ic_mode::run(name, false),
        "ic-stubborn" => crate::ic_mode::run(name, true),
        // The synthetic SCSI controller and NIC (storvsc, netvsc): devices.rs.
        m if m.starts_with("disk-bench") => crate::devices::disk_bench_mode(name, m, info),
        m if m == "disk"
            || m.starts_with("disk:")
            || m.starts_with("disk-verify")
            || m.starts_with("disk-multi") =>
        {
            crate::devices::disk_mode(name, m, info)
        }
        m if m == "net" || m.starts_with("net:") || m.starts_with("net-ping:") => {
            crate::devices::net_mode(name, m)
        }
        // Hostile guests of those devices: device_hostile.rs.
        m if m.starts_with("disk-hostile-") || m.starts_with("net-hostile-") => {
            crate::device_hostile::run(name, m, info)
        }
        other => {
            say!("testos {name}: unknown mode '{other}'");
            halt_forever()
        }
    }
}

pub(crate) fn spin(name: &str) -> ! {
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
pub(crate) fn fpu(name: &str) -> ! {
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

pub(crate) fn touch(name: &str, how: &str, what: &str, addr: u64, write: bool) -> ! {
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

pub(crate) fn triple_fault(name: &str) -> ! {
    say!("testos {name}: loading an empty IDT and faulting");
    let idtr = [0u8; 10];
    // SAFETY: deliberately hostile: an empty IDT turns the #UD into a triple fault.
    unsafe {
        asm!("lidt [{}]", "ud2", in(reg) idtr.as_ptr(), options(nostack));
    }
    say!("testos {name}: ESCAPED: still running after a triple fault");
    halt_forever()
}

/// A GDT with what the probes below need: the boot code/data segments,
/// 64-bit user code and data (DPL 3), and 32-bit kernel code (compatibility
/// mode). Loaded from this static (identity-mapped).
static PROBE_GDT: [u64; 6] = [
    0,
    0x00AF_9A00_0000_FFFF, // 0x08: 64-bit kernel code (as the worker's)
    0x00CF_9200_0000_FFFF, // 0x10: kernel data
    0x00AF_FA00_0000_FFFF, // 0x18: 64-bit user code, DPL 3
    0x00CF_F200_0000_FFFF, // 0x20: user data, DPL 3
    0x00CF_9A00_0000_FFFF, // 0x28: 32-bit kernel code (compatibility mode)
];

/// `VMMCALL; JMP $`: if the hypervisor wrongly served the call the VP
/// would spin here forever; a correct hypervisor raises #UD, which with an
/// empty IDT ends in a triple fault (the test's observable).
static VMMCALL_AND_SPIN: [u8; 5] = [0x0F, 0x01, 0xD9, 0xEB, 0xFE];

/// TLFS: a hypercall from CPL > 0, or from outside 64-bit mode, raises #UD.
/// Run VMMCALL at CPL 3 (`cpl3`) or in compatibility mode at CPL 0, with an
/// empty IDT and a valid hypercall page (so only the mode is wrong).
pub(crate) fn vmmcall_outside_kernel_mode(name: &str, cpl3: bool) -> ! {
    enable_hypercalls();
    say!(
        "testos {name}: VMMCALL from {} with an empty IDT",
        if cpl3 { "CPL 3" } else { "compatibility mode" }
    );
    let gdtr_limit = (core::mem::size_of_val(&PROBE_GDT) - 1) as u16;
    let mut gdtr = [0u8; 10];
    gdtr[..2].copy_from_slice(&gdtr_limit.to_le_bytes());
    gdtr[2..].copy_from_slice(&(PROBE_GDT.as_ptr() as u64).to_le_bytes());
    let idtr = [0u8; 10];
    let code = VMMCALL_AND_SPIN.as_ptr() as u64;
    if cpl3 {
        // User access on every level of the worker's identity page tables
        // (PML4, PDPT, 2 MiB PD entries): they are this child's own pages.
        // SAFETY: the page-table pages of this partition, written in place.
        unsafe {
            let pml4 = child::PML4_GPA as *mut u64;
            pml4.write_volatile(pml4.read_volatile() | 4);
            for i in 0..4 {
                let e = (child::PDPT_GPA as *mut u64).add(i);
                e.write_volatile(e.read_volatile() | 4);
            }
            for i in 0..2048 {
                let e = (child::PD_GPA as *mut u64).add(i);
                e.write_volatile(e.read_volatile() | 4);
            }
        }
    }
    // SAFETY: deliberately hostile: loads our own GDT and an empty IDT,
    // then leaves kernel 64-bit mode for the probe code; nothing returns.
    unsafe {
        asm!("lgdt [{}]", "lidt [{}]", "mov {t}, cr3", "mov cr3, {t}",
             in(reg) gdtr.as_ptr(), in(reg) idtr.as_ptr(), t = out(reg) _, options(nostack));
        if cpl3 {
            // IRETQ to user code: SS, RSP, RFLAGS, CS, RIP.
            asm!("push {ss}", "push rsp", "add qword ptr [rsp], 8", "push 2", "push {cs}", "push {rip}", "iretq",
                 ss = in(reg) 0x23u64, cs = in(reg) 0x1Bu64, rip = in(reg) code, options(noreturn));
        } else {
            // Far return into the 32-bit code segment.
            asm!("push {cs}", "push {rip}", "retfq",
                 cs = in(reg) 0x28u64, rip = in(reg) code, options(noreturn));
        }
    }
}

/// Idle the way Linux does (`sti; hlt`) with a VMBus channel open, until the
/// root sends something: the root's worker must wake the halted VP when it
/// delivers a message (here: the operator rescinding the channel), and
/// hv-core must inject the SynIC vector (linux-child review M1).
pub(crate) fn vmbus_idle(name: &str) -> ! {
    take_synic_interrupts();
    let mut bus = Bus::new(None);
    let opened = bus
        .connect()
        .map_err(alloc::string::String::from)
        .and_then(|_| open_fresh(&mut bus));
    if let Err(e) = opened {
        say!("testos {name}: idle: could not open the channel: {e}");
        halt_forever()
    }
    say!("testos {name}: idle: channel 1 open, waiting in hlt");
    let mut payload = [0u8; 240];
    // Halt until an interrupt brought a message (an interrupt for a message
    // already read by polling during the open may come first: it finds the
    // slot empty and the VP halts again).
    let message = loop {
        // SAFETY: interrupts off while checking, then re-enabled atomically
        // with the halt (STI shadow); the handler only counts.
        unsafe { asm!("cli", options(nomem, nostack)) };
        if let Some(m) = take_message(&mut payload) {
            break m;
        }
        // SAFETY: as above.
        unsafe { asm!("sti; hlt", options(nomem, nostack)) };
    };
    let what = match message {
        (t, n) if n >= 4 => alloc::format!(
            "message type {t}, channel message {}",
            u32::from_le_bytes(payload[..4].try_into().expect("4 bytes"))
        ),
        other => alloc::format!("{other:?}"),
    };
    say!("testos {name}: idle: woken by an interrupt: {what}");
    halt_forever()
}

/// An interrupt hv-core injects for a SynIC message while the child has no
/// IDT: the delivery itself faults (#GP, then #DF, then shutdown). The fault
/// during event delivery must stop only this child.
pub(crate) fn interrupt_without_idt(name: &str) -> ! {
    enable_hypercalls();
    wrmsr(msr::SIMP, SIMP_GPA | 1);
    wrmsr(msr::SIEFP, SIEF_GPA | 1);
    wrmsr(msr::SINT0 + MESSAGE_SINT as u32, 0x50);
    wrmsr(msr::SCONTROL, 1);
    say!("testos {name}: taking a SynIC interrupt with an empty IDT");
    let idtr = [0u8; 10];
    // SAFETY: deliberately hostile: no IDT, interrupts on.
    unsafe { asm!("lidt [{}]", "sti", in(reg) idtr.as_ptr(), options(nostack)) };
    let _ = post_raw(MESSAGE_CONNECTION_ID, ECHO_MESSAGE_TYPE, 4, b"ping");
    for _ in 0..REPLY_SPINS {
        core::hint::spin_loop();
    }
    say!("testos {name}: ESCAPED: no interrupt arrived");
    halt_forever()
}

pub(crate) fn io_ports(name: &str) -> ! {
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

/// `REP OUTSB` to COM1: string I/O is not emulated, so the worker stops the
/// child with the reason (and nothing reaches the port).
pub(crate) fn string_io(name: &str) -> ! {
    say!("testos {name}: attempting string I/O (rep outsb) on COM1");
    let text = b"string io";
    // SAFETY: reads our own bytes; the port write is intercepted.
    unsafe {
        asm!("rep outsb", in("dx") 0x3F8u16, inout("rsi") text.as_ptr() => _, inout("rcx") text.len() => _,
             options(nostack))
    };
    say!("testos {name}: ESCAPED: string I/O completed");
    halt_forever()
}

// ---- hypercalls ----

pub(crate) fn wrmsr(index: u32, value: u64) {
    // SAFETY: synthetic MSRs of the HV#1 interface, owned by this partition.
    unsafe {
        asm!("wrmsr", in("ecx") index, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack))
    };
}

pub(crate) fn enable_hypercalls() {
    wrmsr(msr::GUEST_OS_ID, (1 << 63) | (0x7E << 48) | (1 << 16));
    wrmsr(msr::HYPERCALL, child::HYPERCALL_PAGE_GPA | msr::HYPERCALL_ENABLE);
}

pub(crate) fn hypercall(control: u64, input: u64, output: u64) -> HypercallResult {
    let rax: u64;
    // Inputs and outputs are this partition's own scratch pages (or
    // deliberately bad GPAs the hypervisor must refuse without touching).
    // SAFETY: the hypercall page holds the hypervisor's stub.
    unsafe {
        asm!("call {page}", page = in(reg) child::HYPERCALL_PAGE_GPA, in("rcx") control, in("rdx") input,
             in("r8") output, lateout("rax") rax, clobber_abi("C"))
    };
    HypercallResult::decode(rax)
}

pub(crate) fn report(name: &str, what: &str, r: HypercallResult) {
    say!(
        "testos {name}: hc {what}: {:?} reps {}",
        r.status,
        r.reps_completed
    );
}

pub(crate) fn simple(code: HvCallCode) -> u64 {
    HypercallControl::simple(code).encode()
}

pub(crate) fn bad_hypercalls(name: &str, hv_core: u64) -> ! {
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

pub(crate) fn root_only_hypercalls(name: &str) -> ! {
    enable_hypercalls();
    let (input, out) = (child::HYPERCALL_INPUT_GPA, child::HYPERCALL_OUTPUT_GPA);
    // SAFETY: our own zeroed scratch page; partition id 1 is the root.
    unsafe { (input as *mut u64).write_volatile(1) };
    let calls: [(&str, u64); 10] = [
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
        (
            "AssertVirtualInterrupt",
            simple(HvCallCode::ASSERT_VIRTUAL_INTERRUPT),
        ),
        ("GetCoreStats", simple(hv1_abi::private::GET_CORE_STATS)),
        ("GetDmaGuard", simple(hv1_abi::private::GET_DMA_GUARD)),
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

// ---- SynIC messages ----

/// The child's SynIC message and event-flag pages (free pages of the child
/// layout, below the image).
pub(crate) const SIMP_GPA: u64 = 0xC000;
pub(crate) const SIEF_GPA: u64 = 0xD000;
/// The SINT the root's worker posts replies on (the VMBus SINT).
pub(crate) const MESSAGE_SINT: u64 = 2;
/// The connection id the root's worker gives every child for messages.
pub(crate) const MESSAGE_CONNECTION_ID: u32 = 1;
/// The root worker's echo service message type.
pub(crate) const ECHO_MESSAGE_TYPE: u32 = 0x100;

/// HvPostMessage with raw fields (the input page is ours).
pub(crate) fn post_raw(
    connection_id: u32,
    message_type: u32,
    payload_size: u32,
    payload: &[u8],
) -> HypercallResult {
    let input = child::HYPERCALL_INPUT_GPA as *mut u32;
    // SAFETY: the input page is this partition's own scratch page; 16 header
    // bytes plus at most 240 payload bytes stay inside it.
    unsafe {
        input.write_volatile(connection_id);
        input.add(1).write_volatile(0);
        input.add(2).write_volatile(message_type);
        input.add(3).write_volatile(payload_size);
        let bytes = (input as *mut u8).add(16);
        for (i, b) in payload.iter().take(240).enumerate() {
            bytes.add(i).write_volatile(*b);
        }
    }
    hypercall(simple(HvCallCode::POST_MESSAGE), child::HYPERCALL_INPUT_GPA, 0)
}

/// A small formatting buffer (no allocator here).
pub(crate) struct Buf {
    bytes: [u8; 64],
    len: usize,
}

impl Write for Buf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Take one message from our SINT slot, if any: (type, payload text).
pub(crate) fn take_message(out: &mut [u8; 240]) -> Option<(u32, usize)> {
    let slot = SIMP_GPA + MESSAGE_SINT * 256;
    // SAFETY: the SIMP page is our own RAM; the hypervisor writes it only
    // while this VP is stopped.
    unsafe {
        let message_type = (slot as *const u32).read_volatile();
        if message_type == 0 {
            return None;
        }
        let size = ((slot + 4) as *const u8).read_volatile() as usize;
        let flags = ((slot + 5) as *const u8).read_volatile();
        let size = size.min(240);
        for (i, b) in out.iter_mut().enumerate().take(size) {
            *b = ((slot + 16 + i as u64) as *const u8).read_volatile();
        }
        (slot as *mut u32).write_volatile(0);
        if flags & 1 != 0 {
            wrmsr(msr::EOM, 0);
        }
        Some((message_type, size))
    }
}

pub(crate) fn synic_messages(name: &str) -> ! {
    enable_hypercalls();
    // Refusals first: none of these may reach the root.
    report(name, "post oversized payload", post_raw(1, 1, 241, b""));
    report(name, "post unknown connection", post_raw(99, 1, 4, b"nope"));
    report(name, "post hypervisor type", post_raw(1, 0x8000_0001, 4, b"fake"));
    report(name, "post empty type", post_raw(1, 0, 4, b"none"));
    let fast = HypercallControl {
        fast: true,
        ..HypercallControl::simple(HvCallCode::POST_MESSAGE)
    };
    report(name, "post as fast call", hypercall(fast.encode(), 1, 0));
    report(
        name,
        "post input outside memory",
        hypercall(simple(HvCallCode::POST_MESSAGE), 0x7FFF_F000, 0),
    );
    // Our own SynIC, SINT 2 in polling mode (this test OS takes no interrupts).
    wrmsr(msr::SIMP, SIMP_GPA | 1);
    wrmsr(msr::SIEFP, SIEF_GPA | 1);
    wrmsr(msr::SINT0 + MESSAGE_SINT as u32, (1 << 18) | 0x50);
    wrmsr(msr::SCONTROL, 1);
    // Flood: more posts than the root's slot and hv-core's queue hold. The
    // sequence number only advances on success, so the root must see
    // ping 0, 1, 2, ... in order with no gaps.
    let (mut sent, mut refused, mut other) = (0u32, 0u32, 0u32);
    for _ in 0..20 {
        let mut text = Buf {
            bytes: [0; 64],
            len: 0,
        };
        let _ = write!(text, "ping {sent} from {name}");
        let r = post_raw(
            MESSAGE_CONNECTION_ID,
            ECHO_MESSAGE_TYPE,
            text.len as u32,
            &text.bytes[..text.len],
        );
        match r.status {
            HvStatus::SUCCESS => sent += 1,
            HvStatus::INSUFFICIENT_BUFFERS => refused += 1,
            _ => other += 1,
        }
    }
    say!("testos {name}: flood: {sent} posted, {refused} refused (InsufficientBuffers), {other} other");
    let mut replies = 0;
    let mut payload = [0u8; 240];
    while replies < sent {
        if let Some((t, n)) = take_message(&mut payload) {
            replies += 1;
            let text = core::str::from_utf8(&payload[..n]).unwrap_or("<not utf-8>");
            say!("testos {name}: reply {replies} (type {t}): {text}");
        } else {
            core::hint::spin_loop();
        }
    }
    say!("testos {name}: synic done: {replies} replies to {sent} posts");
    halt_forever()
}

/// SynIC interrupts taken (`synic-irq`).
pub(crate) static SYNIC_INTERRUPTS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

pub(crate) fn on_synic_interrupt() {
    SYNIC_INTERRUPTS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
}

/// Heap, an IDT, hypercalls and the SynIC with SINT 2 on vector 0x50 and
/// auto-EOI (no APIC here to EOI); the vector's handler only counts.
/// Interrupts stay off until the caller enables them.
fn take_synic_interrupts() {
    init_heap();
    kernel_x86::traps::init(
        alloc::boxed::Box::leak(alloc::boxed::Box::new(kernel_x86::traps::CpuTables::new())),
        on_exception,
    );
    kernel_x86::traps::set_irq_handler(0x50, on_synic_interrupt);
    enable_hypercalls();
    wrmsr(msr::SIMP, SIMP_GPA | 1);
    wrmsr(msr::SIEFP, SIEF_GPA | 1);
    wrmsr(msr::SINT0 + MESSAGE_SINT as u32, (1 << 17) | 0x50);
    wrmsr(msr::SCONTROL, 1);
}

pub(crate) fn on_exception(frame: &kernel_x86::traps::ExceptionFrame) -> ! {
    say!("testos: unexpected exception {frame}");
    halt_forever()
}

/// Take SynIC interrupts instead of polling: an IDT, SINT 2 on vector 0x50
/// with auto-EOI (no APIC here to EOI), interrupts on. Each echo reply the
/// root posts must arrive as an interrupt before the slot is read.
pub(crate) fn synic_interrupts(name: &str) -> ! {
    take_synic_interrupts();
    // SAFETY: the IDT routes every vector; the SynIC handler only counts.
    unsafe { asm!("sti", options(nomem, nostack)) };
    let mut payload = [0u8; 240];
    let mut in_order = 0;
    for i in 0..5u32 {
        let before = SYNIC_INTERRUPTS.load(core::sync::atomic::Ordering::Relaxed);
        let mut text = Buf {
            bytes: [0; 64],
            len: 0,
        };
        let _ = write!(text, "irq ping {i}");
        // Post with interrupts off: the reply's vector is then pending when
        // the VP reaches its `sti; hlt`, so the HLT must end at once.
        // SAFETY: re-enabled by the wait loop below.
        unsafe { asm!("cli", options(nomem, nostack)) };
        let r = post_raw(
            MESSAGE_CONNECTION_ID,
            ECHO_MESSAGE_TYPE,
            text.len as u32,
            &text.bytes[..text.len],
        );
        if r.status != HvStatus::SUCCESS {
            say!("testos {name}: post failed: {:?}", r.status);
            halt_forever()
        }
        // Wait for the interrupt the way Linux idles: `sti; hlt` (the STI
        // shadow covers the HLT, so an interrupt cannot slip in between the
        // check and the halt). The hypervisor must end the HLT when the
        // vector becomes deliverable and the root must dispatch the halted VP.
        loop {
            // SAFETY: interrupts off while checking, then atomically re-enabled
            // with the halt; the SynIC handler only counts.
            unsafe { asm!("cli", options(nomem, nostack)) };
            if SYNIC_INTERRUPTS.load(core::sync::atomic::Ordering::Relaxed) != before {
                // SAFETY: as above.
                unsafe { asm!("sti", options(nomem, nostack)) };
                break;
            }
            // SAFETY: as above.
            unsafe { asm!("sti; hlt", options(nomem, nostack)) };
        }
        match take_message(&mut payload) {
            Some((_, n)) if payload[..n].ends_with(&text.bytes[..text.len]) => in_order += 1,
            other => say!("testos {name}: after interrupt {i}: {other:?}"),
        }
    }
    let taken = SYNIC_INTERRUPTS.load(core::sync::atomic::Ordering::Relaxed);
    say!(
        "testos {name}: synic interrupts: {taken} taken, {in_order} of 5 replies read after their interrupt"
    );
    task_priority(name);
    halt_forever()
}

/// A raised task priority holds the SynIC vector back (APIC: only a class
/// above TPR is delivered; vector 0x50 is class 5): with CR8 = 15 a reply's
/// interrupt must not arrive, however long the child waits with interrupts
/// on, and it must arrive once CR8 goes back to 0.
fn task_priority(name: &str) {
    let set_cr8 = |v: u64| {
        // SAFETY: CR8 only changes which interrupt classes this VP takes.
        unsafe { asm!("mov cr8, {}", in(reg) v, options(nomem, nostack)) };
    };
    let count = || SYNIC_INTERRUPTS.load(core::sync::atomic::Ordering::Relaxed);
    set_cr8(15);
    let before = count();
    let r = post_raw(MESSAGE_CONNECTION_ID, ECHO_MESSAGE_TYPE, 8, b"tpr ping");
    if r.status != HvStatus::SUCCESS {
        say!("testos {name}: tpr: post failed: {:?}", r.status);
        return;
    }
    // Long enough for several of the root's ticks (each a new VM entry at
    // which hv-core could inject).
    let start = kernel_x86::arch::rdtsc();
    let mut held = true;
    for _ in 0..50_000_000u64 {
        if count() != before {
            held = false;
            break;
        }
        core::hint::spin_loop();
    }
    let cycles = kernel_x86::arch::rdtsc().wrapping_sub(start);
    set_cr8(0);
    let mut delivered = false;
    for _ in 0..REPLY_SPINS {
        if count() != before {
            delivered = true;
            break;
        }
        core::hint::spin_loop();
    }
    say!(
        "testos {name}: tpr: held while CR8 = 15: {held} ({cycles} TSC cycles); delivered after CR8 = 0: {delivered}"
    );
}

// ---- VMBus ----

/// The heap the VMBus client allocates from.
#[global_allocator]
pub(crate) static HEAP: linked_list_allocator::LockedHeap = linked_list_allocator::LockedHeap::empty();

pub(crate) const HEAP_SIZE: usize = 256 * 1024;

/// Ring pages for the echo channel: 2 pages each way (control page + one
/// data page), page-aligned; the child's page tables are an identity map, so
/// a page's address is its GPA.
#[repr(C, align(4096))]
pub(crate) struct RingPages([u8; RING_PAGES * 4096]);

/// Pages set aside for rings (the conformance run opens up to 8 + 8).
pub(crate) const RING_PAGES: usize = 16;

pub(crate) static mut RING: RingPages = RingPages([0; RING_PAGES * 4096]);

pub(crate) fn init_heap() {
    static mut AREA: [u8; HEAP_SIZE] = [0; HEAP_SIZE];
    // SAFETY: called once, before any allocation; the area is ours for good.
    unsafe {
        HEAP.lock()
            .init(core::ptr::addr_of_mut!(AREA).cast::<u8>(), HEAP_SIZE)
    };
}

pub(crate) fn enable_synic() {
    wrmsr(msr::SIMP, SIMP_GPA | 1);
    wrmsr(msr::SIEFP, SIEF_GPA | 1);
    wrmsr(msr::SINT0 + MESSAGE_SINT as u32, (1 << 18) | 0x50);
    wrmsr(msr::SCONTROL, 1);
}

/// Connect to the root's VMBus server, take the offers, build a ring GPADL
/// for the echo channel, open it, echo packets through the rings, close it
/// (unless `hold`), tear the GPADL down and unload:
/// the control plane end to end over HvPostMessage and the SynIC.
pub(crate) fn vmbus_session(
    name: &str,
    versions: Option<&[vmbus::version::Version]>,
    hold: bool,
    round_trips: u64,
) -> ! {
    use vmbus::client::{Client, ClientEvent};
    init_heap();
    enable_hypercalls();
    enable_synic();
    let mut client = Client::new(versions, 0);
    client.connect();
    let mut buf = [0u8; 240];
    let mut echo_relid = None;
    let mut signal_connection = 0;
    let mut handle = 0;
    loop {
        while let Some((connection, bytes)) = client.next_message() {
            let r = post_raw(
                connection,
                vmbus::protocol::VMBUS_MESSAGE_TYPE,
                bytes.len() as u32,
                &bytes,
            );
            if r.status != HvStatus::SUCCESS {
                say!(
                    "testos {name}: vmbus post on connection {connection} failed: {:?}",
                    r.status
                );
            }
        }
        let Some((message_type, n)) = take_message(&mut buf) else {
            core::hint::spin_loop();
            continue;
        };
        if message_type != vmbus::protocol::VMBUS_MESSAGE_TYPE {
            say!("testos {name}: unexpected message type {message_type:#x}");
            continue;
        }
        let events = match client.handle(&buf[..n]) {
            Ok(e) => e,
            Err(e) => {
                say!("testos {name}: vmbus: bad message from the host: {e:?}");
                continue;
            }
        };
        for event in events {
            match event {
                ClientEvent::Connected(v) => {
                    say!(
                        "testos {name}: vmbus connected at version {}.{}",
                        v.0 >> 16,
                        v.0 & 0xFFFF
                    )
                }
                ClientEvent::ConnectFailed => {
                    say!("testos {name}: vmbus: no version accepted");
                    halt_forever()
                }
                ClientEvent::Offer(o) => {
                    let interface = o.interface_type;
                    let text = core::str::from_utf8(&interface[..14]).unwrap_or("?");
                    say!(
                        "testos {name}: vmbus offer relid {} ({text}), signal connection {:#x}",
                        o.child_relid,
                        o.connection_id
                    );
                    if &interface[..14] == b"hv-rs echo dev" {
                        echo_relid = Some(o.child_relid);
                        signal_connection = o.connection_id;
                    }
                }
                ClientEvent::AllOffersDelivered => {
                    let Some(relid) = echo_relid else {
                        say!("testos {name}: vmbus: no echo device offered");
                        halt_forever()
                    };
                    let base = core::ptr::addr_of!(RING) as u64;
                    let pfns: [u64; 4] = core::array::from_fn(|i| (base >> 12) + i as u64);
                    handle = client.create_gpadl(relid, &pfns);
                    say!("testos {name}: vmbus all offers in; gpadl {handle:#x} for relid {relid}");
                }
                ClientEvent::GpadlCreated { handle: h, status } => {
                    say!("testos {name}: vmbus gpadl {h:#x} created, status {status:#x}");
                    if let (Some(relid), 0) = (echo_relid, status) {
                        client.open(relid, h, 2, 0);
                    }
                }
                ClientEvent::OpenResult { relid, status } => {
                    say!("testos {name}: vmbus channel {relid} open result {status:#x}");
                    if status == 0 {
                        echo_round_trips(name, relid, signal_connection, round_trips);
                        if hold {
                            say!("testos {name}: vmbus holding channel {relid} open");
                            halt_forever()
                        }
                    }
                    client.close(relid);
                    client.teardown(relid, handle);
                }
                ClientEvent::GpadlTorndown(h) => {
                    say!("testos {name}: vmbus gpadl {h:#x} torn down");
                    client.unload();
                }
                ClientEvent::Unloaded => {
                    say!("testos {name}: vmbus unloaded; vmbus done");
                    halt_forever()
                }
                other => say!("testos {name}: vmbus event {other:?}"),
            }
        }
    }
}

/// Ring memory at a fixed place in this partition (the `RING` pages).
pub(crate) struct StaticMemory {
    pub(crate) base: u64,
    pub(crate) len: u64,
}

impl StaticMemory {
    fn check(&self, offset: u64, len: u64) -> Result<u64, vmbus::memory::OutOfBounds> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(self.base + offset),
            _ => Err(vmbus::memory::OutOfBounds { offset, len }),
        }
    }
}

impl vmbus::memory::SharedMemory for StaticMemory {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), vmbus::memory::OutOfBounds> {
        let at = self.check(offset, buf.len() as u64)?;
        // SAFETY: inside the RING pages (checked); the root writes them only
        // as the ring protocol allows.
        unsafe { core::ptr::copy_nonoverlapping(at as *const u8, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), vmbus::memory::OutOfBounds> {
        let at = self.check(offset, data.len() as u64)?;
        // SAFETY: as in `read_at`.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), at as *mut u8, data.len()) };
        Ok(())
    }
    fn load_u32(&self, offset: u64) -> Result<u32, vmbus::memory::OutOfBounds> {
        let at = self.check(offset, 4)?;
        // SAFETY: an aligned u32 inside the RING pages (offsets are the
        // ring's own 4-byte-aligned control words).
        let word = unsafe { &*(at as *const core::sync::atomic::AtomicU32) };
        Ok(word.load(core::sync::atomic::Ordering::Acquire))
    }
    fn store_u32(&self, offset: u64, value: u32) -> Result<(), vmbus::memory::OutOfBounds> {
        let at = self.check(offset, 4)?;
        // SAFETY: as in `load_u32`.
        let word = unsafe { &*(at as *const core::sync::atomic::AtomicU32) };
        word.store(value, core::sync::atomic::Ordering::Release);
        Ok(())
    }
}

/// Echo packets the child sends through the root (`vmbus-bench`: more, for
/// the QEMU benchmark).
pub(crate) const ECHO_ROUND_TRIPS: u64 = 200;
pub(crate) const BENCH_ROUND_TRIPS: u64 = 20_000;
/// Calls the benchmark baseline makes.
pub(crate) const NULL_HYPERCALLS: u64 = 100_000;

/// Round trips the benchmark baseline makes: HvGetPartitionId, the cheapest
/// call that still reaches hv-core.
pub(crate) fn null_hypercalls(name: &str) -> ! {
    enable_hypercalls();
    let out = child::HYPERCALL_OUTPUT_GPA;
    let mut ok = 0u64;
    for _ in 0..NULL_HYPERCALLS {
        if hypercall(simple(HvCallCode::GET_PARTITION_ID), 0, out).status == HvStatus::SUCCESS {
            ok += 1;
        }
    }
    say!("testos {name}: {ok} of {NULL_HYPERCALLS} null hypercalls done");
    halt_forever()
}

/// Send packets on the echo channel's guest-to-host ring (pages 0-1 of
/// RING) and wait for each to come back on the host-to-guest ring (pages
/// 2-3), signalling the root through HvSignalEvent when the ring says so.
pub(crate) fn echo_round_trips(name: &str, relid: u32, connection: u32, count: u64) {
    if echo_through(name, relid, connection, count, 2, 2) == Some(count) {
        say!("testos {name}: vmbus echo: {count} of {count} round trips ok");
    }
}

/// Echo `count` packets through rings of `up` and `down` pages at the start
/// of RING; returns how many came back right (None: the ring failed).
pub(crate) fn echo_through(
    name: &str,
    relid: u32,
    connection: u32,
    count: u64,
    up_pages: u64,
    down_pages: u64,
) -> Option<u64> {
    use vmbus::packet::{Descriptor, PacketType};
    use vmbus::ring::{Reader, Ring, Writer};
    use zerocopy::IntoBytes;
    let base = core::ptr::addr_of!(RING) as u64;
    let (Ok(up), Ok(down)) = (
        Ring::new(StaticMemory {
            base,
            len: up_pages * 4096,
        }),
        Ring::new(StaticMemory {
            base: base + up_pages * 4096,
            len: down_pages * 4096,
        }),
    ) else {
        say!("testos {name}: vmbus echo: bad ring geometry");
        return None;
    };
    let (mut writer, mut reader) = (Writer::new(up), Reader::new(down));
    let signal = HypercallControl {
        fast: true,
        ..HypercallControl::simple(HvCallCode::SIGNAL_EVENT)
    }
    .encode();
    let mut buf = [0u8; 512];
    let (mut ok, mut signals) = (0u64, 0u64);
    for i in 0..count {
        let mut text = Buf {
            bytes: [0; 64],
            len: 0,
        };
        let _ = write!(text, "echo packet {i} on relid {relid}");
        let payload = &text.bytes[..text.len];
        let d = Descriptor::new(
            PacketType::DATA_INBAND,
            16,
            payload.len(),
            0,
            0xE000_0000_0000_0000 | i,
        );
        match writer.write(&[d.as_bytes(), payload]) {
            Ok(s) if s.0 => {
                signals += 1;
                let r = hypercall(signal, connection as u64, 0);
                if r.status != HvStatus::SUCCESS {
                    say!("testos {name}: vmbus echo: signal failed: {:?}", r.status);
                    return None;
                }
            }
            Ok(_) => {}
            Err(e) => {
                say!("testos {name}: vmbus echo: write failed: {e:?}");
                return None;
            }
        }
        let packet = loop {
            match reader.read(&mut buf) {
                Ok(Some((p, read_signal))) => {
                    if read_signal.0 {
                        let _ = hypercall(signal, connection as u64, 0);
                    }
                    break p;
                }
                Ok(None) => core::hint::spin_loop(),
                Err(e) => {
                    say!("testos {name}: vmbus echo: read failed: {e:?}");
                    return None;
                }
            }
        };
        let range = packet.descriptor.payload();
        let back = buf.get(range.start..range.start + payload.len()).unwrap_or(&[]);
        if packet.descriptor.transaction_id == 0xE000_0000_0000_0000 | i && back == payload {
            ok += 1;
        } else {
            say!("testos {name}: vmbus echo: packet {i} came back wrong");
        }
    }
    let _ = signals;
    Some(ok)
}

/// Echo packets each `vmbus-bench-batch` run sends (more than
/// `vmbus-bench`: its fixed costs, the console lines and the bus setup,
/// stay small against them).
pub(crate) const BATCH_ROUND_TRIPS: u64 = 100_000;
/// Most packets `vmbus-bench-batch` keeps in flight (they all fit in the
/// 2-page rings: 56 bytes each).
pub(crate) const MAX_BATCH_DEPTH: u64 = 64;

/// `vmbus-bench-batch:DEPTH[:eager][:masked]`: connect and open the echo
/// channel quietly (no console lines but the boot line and the result:
/// each byte on COM1 is a VM exit), then keep DEPTH echo packets in flight.
/// Each round reads every echo that has come back, then refills to DEPTH
/// with one `Writer::write` per packet; each write says whether the root
/// must be signalled (Linux `hv_signal_on_write`: the ring was empty before
/// it and the root's interrupt_mask is clear). By default the signal is
/// sent once, after the round's last write (the root only drains the ring
/// when signalled, so a ring empty before the first write is the only
/// case); `eager` signals right after the write that asked, as Linux's
/// `hv_ringbuffer_write` does. `masked` keeps interrupt_mask set on the
/// host-to-guest ring (the child polls; NAPI-style), so the root's echoes
/// signal nothing. Prints `testos NAME: vmbus echo batch: N of N echoes ok
/// at depth D (S signals, R read signals, B rounds)`.
pub(crate) fn vmbus_bench_batch(name: &str, args: &str) -> ! {
    let mut parts = args.split(':');
    let depth = parts.next().and_then(|d| d.parse::<u64>().ok()).unwrap_or(0);
    let (mut eager, mut masked, mut bad) = (false, false, false);
    for p in parts {
        match p {
            "eager" => eager = true,
            "masked" => masked = true,
            _ => bad = true,
        }
    }
    if bad || depth == 0 || depth > MAX_BATCH_DEPTH {
        say!(
            "testos {name}: vmbus echo batch: failed: bad mode arguments '{args}' (DEPTH 1-{MAX_BATCH_DEPTH}[:eager][:masked])"
        );
        halt_forever()
    }
    init_heap();
    enable_hypercalls();
    enable_synic();
    let mut bus = Bus::new(None);
    let opened = bus.connect().map_err(alloc::string::String::from).and_then(|_| {
        let (relid, connection) = bus
            .client
            .offers()
            .values()
            .find(|o| &o.interface_type[..14] == b"hv-rs echo dev")
            .map(|o| (o.child_relid, o.connection_id))
            .ok_or("no echo device offered")?;
        clear_ring(4);
        let (handle, status) = bus.gpadl(relid, &ring_pfns(4))?;
        if status != 0 || bus.open(relid, handle, 2)? != 0 {
            return Err("open failed".into());
        }
        Ok(connection)
    });
    let connection = match opened {
        Ok(c) => c,
        Err(e) => {
            say!("testos {name}: vmbus echo batch: failed: {e}");
            halt_forever()
        }
    };
    match echo_batched(connection, BATCH_ROUND_TRIPS, depth, eager, masked) {
        Ok((ok, signals, read_signals, rounds)) => say!(
            "testos {name}: vmbus echo batch: {ok} of {BATCH_ROUND_TRIPS} echoes ok at depth {depth} ({signals} signals, {read_signals} read signals, {rounds} rounds)"
        ),
        Err(e) => say!("testos {name}: vmbus echo batch: failed: {e}"),
    }
    halt_forever()
}

/// The batched echo loop of `vmbus-bench-batch` on the open 2+2-page rings:
/// (echoes back right, signals sent for writes, signals sent for reads,
/// rounds that wrote).
fn echo_batched(
    connection: u32,
    count: u64,
    depth: u64,
    eager: bool,
    masked: bool,
) -> Result<(u64, u64, u64, u64), alloc::string::String> {
    use vmbus::memory::SharedMemory;
    use vmbus::packet::{Descriptor, PacketType};
    use vmbus::ring::{INTERRUPT_MASK, Reader, Ring, RingError, Writer};
    use zerocopy::IntoBytes;
    const TAG: u64 = 0xE000_0000_0000_0000;
    let base = core::ptr::addr_of!(RING) as u64;
    let down_mem = StaticMemory {
        base: base + 2 * 4096,
        len: 2 * 4096,
    };
    if masked {
        let _ = down_mem.store_u32(INTERRUPT_MASK, 1);
    }
    let (Ok(up), Ok(down)) = (
        Ring::new(StaticMemory { base, len: 2 * 4096 }),
        Ring::new(down_mem),
    ) else {
        return Err("bad ring geometry".into());
    };
    let (mut writer, mut reader) = (Writer::new(up), Reader::new(down));
    let signal = || {
        let control = HypercallControl {
            fast: true,
            ..HypercallControl::simple(HvCallCode::SIGNAL_EVENT)
        }
        .encode();
        hypercall(control, connection as u64, 0).status
    };
    let mut buf = [0u8; 512];
    let (mut sent, mut got, mut ok) = (0u64, 0u64, 0u64);
    let (mut signals, mut read_signals, mut rounds) = (0u64, 0u64, 0u64);
    let mut spins = 0u64;
    while got < count {
        // Refill to `depth`.
        let mut wanted = false;
        let mut wrote = false;
        while sent < count && sent - got < depth {
            let payload = sent.to_le_bytes();
            let d = Descriptor::new(PacketType::DATA_INBAND, 16, payload.len(), 0, TAG | sent);
            match writer.write(&[d.as_bytes(), &payload]) {
                Ok(s) => {
                    wrote = true;
                    if s.0 && eager {
                        signals += 1;
                        if signal() != HvStatus::SUCCESS {
                            return Err("signal failed".into());
                        }
                    }
                    wanted |= s.0;
                }
                Err(RingError::Full { .. }) => break,
                Err(e) => return Err(alloc::format!("write {sent}: {e:?}")),
            }
            sent += 1;
        }
        if wrote {
            rounds += 1;
        }
        if wanted && !eager {
            signals += 1;
            if signal() != HvStatus::SUCCESS {
                return Err("signal failed".into());
            }
        }
        // Take every echo that is back.
        let mut read = false;
        while let Some((p, s)) = reader.read(&mut buf).map_err(|e| alloc::format!("read: {e:?}"))? {
            read = true;
            if s.0 {
                read_signals += 1;
                let _ = signal();
            }
            let range = p.descriptor.payload();
            let back = buf.get(range.start..range.start + 8).unwrap_or(&[]);
            if p.descriptor.transaction_id == TAG | got && back == got.to_le_bytes() {
                ok += 1;
            }
            got += 1;
        }
        if read {
            spins = 0;
        } else {
            spins += 1;
            if spins > REPLY_SPINS {
                return Err(alloc::format!("stuck: {got} of {sent} echoes back"));
            }
            core::hint::spin_loop();
        }
    }
    Ok((ok, signals, read_signals, rounds))
}

// ---- VMBus conformance against the real root ----

/// Poll budget for one reply (TCG runs some 10^8 simple loop iterations a
/// second; the root answers within a tick).
pub(crate) const REPLY_SPINS: u64 = 200_000_000;

/// The SynIC under the VMBus client: HvPostMessage through the hypercall
/// page, our SIMP slot for the VMBus SINT, EOM.
#[derive(Default)]
pub(crate) struct SynicPort;

impl vsc_drivers::SynicTransport for SynicPort {
    fn post(&mut self, connection_id: u32, message_type: u32, bytes: &[u8]) -> vsc_drivers::PostStatus {
        vsc_drivers::PostStatus::from_status(
            post_raw(connection_id, message_type, bytes.len() as u32, bytes).status,
        )
    }
    fn take_message(&mut self, buf: &mut [u8; 240]) -> Option<(u32, usize)> {
        take_message(buf)
    }
    fn spin(&mut self) {
        core::hint::spin_loop();
    }
}

/// The VMBus client over this partition's SynIC (vsc-drivers).
pub(crate) type Bus = vsc_drivers::Bus<SynicPort>;

pub(crate) fn ring_pfns(pages: u64) -> alloc::vec::Vec<u64> {
    let base = core::ptr::addr_of!(RING) as u64 >> 12;
    (0..pages).map(|i| base + i).collect()
}

/// Open the echo channel on `up + down` ring pages, echo `packets`, close,
/// tear down.
pub(crate) fn open_echo_close(
    bus: &mut Bus,
    name: &str,
    up: u64,
    down: u64,
    packets: u64,
) -> Result<(), alloc::string::String> {
    clear_ring(up + down);
    let (handle, status) = bus.gpadl(1, &ring_pfns(up + down))?;
    if status != 0 {
        return Err(alloc::format!("GPADL status {status:#x}"));
    }
    let status = bus.open(1, handle, up as u32)?;
    if status != 0 {
        return Err(alloc::format!("OPENCHANNEL_RESULT {status:#x}"));
    }
    let back = echo_through(name, 1, 0x2001, packets, up, down);
    bus.close(1)?;
    bus.teardown(1, handle)?;
    if back != Some(packets) {
        return Err(alloc::format!("{back:?} of {packets} packets came back"));
    }
    Ok(())
}

/// Zero the first `pages` ring pages (a fresh ring starts at index 0).
pub(crate) fn clear_ring(pages: u64) {
    let base = core::ptr::addr_of_mut!(RING).cast::<u8>();
    // SAFETY: the first `pages` (≤ RING_PAGES) pages of our own RING, not
    // open to the root at this moment.
    unsafe { core::ptr::write_bytes(base, 0, (pages.min(RING_PAGES as u64) * 4096) as usize) };
}

/// Q-FLOW-01: 20 packets of 200 bytes into a 4-page guest-to-host ring while
/// not reading the 2-page host-to-guest ring (room for 18 echoes); the root
/// must stall and ask for room through pending_send_sz, then finish once the
/// child reads (each read that makes enough room signals the root).
pub(crate) fn flow_control(name: &str) -> Result<(), alloc::string::String> {
    use vmbus::memory::SharedMemory;
    use vmbus::packet::{Descriptor, PacketType};
    use vmbus::ring::{FEAT_PENDING_SEND_SZ, FEATURE_BITS, PENDING_SEND_SIZE, Reader, Ring, Writer};
    use zerocopy::IntoBytes;
    let mut bus = Bus::new(None);
    bus.connect()?;
    clear_ring(6);
    let base = core::ptr::addr_of!(RING) as u64;
    let up_mem = StaticMemory { base, len: 4 * 4096 };
    let down_mem = StaticMemory {
        base: base + 4 * 4096,
        len: 2 * 4096,
    };
    // Like Linux's guest, advertise pending_send_sz on both rings.
    let _ = up_mem.store_u32(FEATURE_BITS, FEAT_PENDING_SEND_SZ);
    let _ = down_mem.store_u32(FEATURE_BITS, FEAT_PENDING_SEND_SZ);
    let (handle, status) = bus.gpadl(1, &ring_pfns(6))?;
    if status != 0 || bus.open(1, handle, 4)? != 0 {
        return Err("open failed".into());
    }
    let probe = StaticMemory {
        base: base + 4 * 4096,
        len: 2 * 4096,
    };
    let (Ok(up), Ok(down)) = (Ring::new(up_mem), Ring::new(down_mem)) else {
        return Err("ring geometry".into());
    };
    let (mut writer, mut reader) = (Writer::new(up), Reader::new(down));
    let signal = HypercallControl {
        fast: true,
        ..HypercallControl::simple(HvCallCode::SIGNAL_EVENT)
    }
    .encode();
    let payload = [0x5Au8; 200];
    for i in 0..20u64 {
        let d = Descriptor::new(PacketType::DATA_INBAND, 16, payload.len(), 0, i);
        let s = writer
            .write(&[d.as_bytes(), &payload])
            .map_err(|e| alloc::format!("write {i}: {e:?}"))?;
        if s.0 {
            let _ = hypercall(signal, 0x2001, 0);
        }
    }
    // The root fills our ring and asks for room.
    let mut spins = 0u64;
    let asked = loop {
        let p = probe.load_u32(PENDING_SEND_SIZE).unwrap_or(0);
        if p != 0 {
            break p;
        }
        spins += 1;
        if spins > REPLY_SPINS {
            return Err("the root never set pending_send_sz".into());
        }
        core::hint::spin_loop();
    };
    let mut buf = [0u8; 512];
    let (mut got, mut signals) = (0u64, 0u64);
    while got < 20 {
        let mut spins = 0u64;
        let p = loop {
            match reader.read(&mut buf).map_err(|e| alloc::format!("read: {e:?}"))? {
                Some((p, s)) => {
                    if s.0 {
                        signals += 1;
                        let _ = hypercall(signal, 0x2001, 0);
                    }
                    break p;
                }
                None => {
                    spins += 1;
                    if spins > REPLY_SPINS {
                        return Err(alloc::format!("stuck after {got} echoes"));
                    }
                    core::hint::spin_loop();
                }
            }
        };
        if p.descriptor.transaction_id != got {
            return Err(alloc::format!(
                "echo {got} came back as {}",
                p.descriptor.transaction_id
            ));
        }
        got += 1;
    }
    bus.close(1)?;
    bus.teardown(1, handle)?;
    bus.unload()?;
    say!("testos {name}: flow control: root asked for {asked} bytes, {signals} room signals");
    if signals == 0 {
        return Err("no read ever signalled the root".into());
    }
    Ok(())
}

/// The SIEF flag the root sets for relid 1 on SINT 2.
pub(crate) fn relid1_flag() -> *mut u8 {
    (SIEF_GPA + MESSAGE_SINT * 256) as *mut u8
}

/// Open relid 1 on fresh 2+2 rings; returns the GPADL handle.
pub(crate) fn open_fresh(bus: &mut Bus) -> Result<u32, alloc::string::String> {
    clear_ring(4);
    let (handle, status) = bus.gpadl(1, &ring_pfns(4))?;
    if status != 0 || bus.open(1, handle, 2)? != 0 {
        return Err("open failed".into());
    }
    Ok(handle)
}

pub(crate) fn close_and_teardown(bus: &mut Bus, handle: u32) -> Result<(), alloc::string::String> {
    bus.close(1)?;
    Ok(bus.teardown(1, handle)?)
}

/// Q-MASK-01.
pub(crate) fn interrupt_mask(name: &str) -> Result<(), alloc::string::String> {
    use vmbus::memory::SharedMemory;
    use vmbus::ring::INTERRUPT_MASK;
    let mut bus = Bus::new(None);
    bus.connect()?;
    let handle = open_fresh(&mut bus)?;
    let base = core::ptr::addr_of!(RING) as u64;
    let down = StaticMemory {
        base: base + 2 * 4096,
        len: 2 * 4096,
    };
    let _ = down.store_u32(INTERRUPT_MASK, 1);
    // SAFETY: our own SIEF page; the hypervisor sets bits only while we are stopped.
    unsafe { relid1_flag().write_volatile(0) };
    if echo_through(name, 1, 0x2001, 5, 2, 2) != Some(5) {
        return Err("masked echoes did not come back".into());
    }
    // SAFETY: as above.
    let masked = unsafe { relid1_flag().read_volatile() } & 2 != 0;
    let _ = down.store_u32(INTERRUPT_MASK, 0);
    // Continue on the same rings (indices carry on): one more echo.
    let more = echo_continue(name, 1);
    // SAFETY: as above.
    let unmasked = unsafe { relid1_flag().read_volatile() } & 2 != 0;
    close_and_teardown(&mut bus, handle)?;
    bus.unload()?;
    match (masked, more, unmasked) {
        (false, true, true) => Ok(()),
        _ => Err(alloc::format!(
            "signalled while masked: {masked}; echo after unmask: {more}; signalled after: {unmask}",
            unmask = unmasked
        )),
    }
}

/// One more echo on the already-open 2+2 rings (fresh Reader/Writer over the
/// same memory pick the indices up from the control pages).
pub(crate) fn echo_continue(name: &str, relid: u32) -> bool {
    echo_through(name, relid, 0x2001, 1, 2, 2) == Some(1)
}

/// Q-BAD-02.
pub(crate) fn corrupt_ring(name: &str) -> Result<(), alloc::string::String> {
    use vmbus::memory::SharedMemory;
    use vmbus::ring::WRITE_INDEX;
    let mut bus = Bus::new(None);
    bus.connect()?;
    let handle = open_fresh(&mut bus)?;
    let base = core::ptr::addr_of!(RING) as u64;
    let up = StaticMemory { base, len: 2 * 4096 };
    // An unaligned write index past the data area, then a signal.
    let _ = up.store_u32(WRITE_INDEX, 0x1_0003);
    let signal = HypercallControl {
        fast: true,
        ..HypercallControl::simple(HvCallCode::SIGNAL_EVENT)
    }
    .encode();
    let r = hypercall(signal, 0x2001, 0);
    if r.status != HvStatus::SUCCESS {
        return Err(alloc::format!("signal: {:?}", r.status));
    }
    close_and_teardown(&mut bus, handle)?;
    let handle = open_fresh(&mut bus)?;
    let back = echo_through(name, 1, 0x2001, 10, 2, 2);
    close_and_teardown(&mut bus, handle)?;
    bus.unload()?;
    if back == Some(10) {
        Ok(())
    } else {
        Err(alloc::format!("{back:?} of 10 after reopening"))
    }
}

/// Wait (up to `rounds` reply budgets) for an event the host sends when the
/// operator acts.
pub(crate) fn await_host(
    bus: &mut Bus,
    what: &'static str,
    rounds: u32,
    want: impl Fn(&vmbus::client::ClientEvent) -> bool + Copy,
) -> Result<vmbus::client::ClientEvent, alloc::string::String> {
    let mut last = alloc::string::String::new();
    for _ in 0..rounds {
        match bus.until(what, want) {
            Ok(e) => return Ok(e),
            Err(e) => last = e.into(),
        }
    }
    Err(last)
}

/// Q-RES-01.
pub(crate) fn rescind_and_reoffer(name: &str) -> Result<(), alloc::string::String> {
    use vmbus::client::ClientEvent;
    let mut bus = Bus::new(None);
    bus.connect()?;
    let _handle = open_fresh(&mut bus)?;
    say!("testos {name}: Q-RES-01 waiting for rescind");
    await_host(&mut bus, "RESCIND_CHANNELOFFER", 20, |e| {
        matches!(e, ClientEvent::Rescinded(1))
    })?;
    if bus.client.offers().contains_key(&1) {
        return Err("relid 1 still offered after the rescind".into());
    }
    say!("testos {name}: Q-RES-01 waiting for a new offer");
    let relid = match await_host(&mut bus, "OFFERCHANNEL", 20, |e| {
        matches!(e, ClientEvent::Offer(_))
    })? {
        ClientEvent::Offer(o) => o.child_relid,
        _ => return Err("not an offer".into()),
    };
    clear_ring(4);
    let (handle, status) = bus.gpadl(relid, &ring_pfns(4))?;
    if status != 0 || bus.open(relid, handle, 2)? != 0 {
        return Err(alloc::format!("opening the new relid {relid} failed"));
    }
    let connection = bus.client.offers().get(&relid).map_or(0, |o| o.connection_id);
    let back = echo_through(name, relid, connection, 10, 2, 2);
    bus.close(relid)?;
    bus.teardown(relid, handle)?;
    bus.unload()?;
    if back == Some(10) {
        Ok(())
    } else {
        Err(alloc::format!("{back:?} of 10 on relid {relid}"))
    }
}

/// One case per line, `N passed, M failed` at the end.
pub(crate) fn conformance(name: &str) -> ! {
    use vmbus::version::Version;
    init_heap();
    enable_hypercalls();
    enable_synic();
    type Case = (
        &'static str,
        &'static str,
        fn(&str) -> Result<(), alloc::string::String>,
    );
    let cases: [Case; 20] = [
        (
            "Q-NEG-01",
            "every version 2.4-5.3 is accepted alone (version.c decide)",
            |_| {
                for v in vmbus::version::SUPPORTED.iter().rev() {
                    let mut bus = Bus::new(Some(core::slice::from_ref(v)));
                    let got = bus.connect()?;
                    if got != *v {
                        return Err(alloc::format!("asked {:#x}, got {:#x}", v.0, got.0));
                    }
                    bus.unload()?;
                }
                Ok(())
            },
        ),
        (
            "Q-NEG-02",
            "an unsupported version (9.0) is refused, then 5.3 still connects",
            |_| {
                // The refusal must be an answer (VERSION_RESPONSE with
                // version_supported = 0, which the client reports as
                // ConnectFailed once its list is exhausted), not silence.
                let mut bus = Bus::new(Some(&[Version(0x0009_0000)]));
                bus.client.connect();
                match bus.until("VERSION_RESPONSE", |e| {
                    matches!(
                        e,
                        vmbus::client::ClientEvent::Connected(_) | vmbus::client::ClientEvent::ConnectFailed
                    )
                })? {
                    vmbus::client::ClientEvent::ConnectFailed => {}
                    other => return Err(alloc::format!("9.0: {other:?}")),
                }
                let mut bus = Bus::new(None);
                let v = bus.connect()?;
                bus.unload()?;
                if v != Version::WIN10_V5_3 {
                    return Err(alloc::format!("got {:#x}", v.0));
                }
                Ok(())
            },
        ),
        (
            "Q-OFF-01",
            "REQUESTOFFERS gets the echo offer (relid 1, connection 0x2001) then ALLOFFERS_DELIVERED",
            |_| {
                let mut bus = Bus::new(None);
                bus.connect()?;
                let ok = bus.client.offers().get(&1).is_some_and(|o| {
                    o.connection_id == 0x2001 && &o.interface_type[..14] == b"hv-rs echo dev"
                });
                bus.unload()?;
                if ok {
                    Ok(())
                } else {
                    Err("no echo offer on relid 1".into())
                }
            },
        ),
        ("Q-GPA-01", "a 1-page GPADL is created and torn down", |_| {
            let mut bus = Bus::new(None);
            bus.connect()?;
            let (h, st) = bus.gpadl(1, &ring_pfns(1))?;
            bus.teardown(1, h)?;
            bus.unload()?;
            if st == 0 {
                Ok(())
            } else {
                Err(alloc::format!("status {st:#x}"))
            }
        }),
        (
            "Q-GPA-02",
            "a 100-page GPADL crosses GPADL_BODY continuation",
            |_| {
                let mut bus = Bus::new(None);
                bus.connect()?;
                let pfns: alloc::vec::Vec<u64> = (0x400..0x464).collect();
                let (h, st) = bus.gpadl(1, &pfns)?;
                bus.teardown(1, h)?;
                bus.unload()?;
                if st == 0 {
                    Ok(())
                } else {
                    Err(alloc::format!("status {st:#x}"))
                }
            },
        ),
        (
            "Q-GPA-03",
            "a 1024-page GPADL (37 messages) is reassembled",
            |_| {
                let mut bus = Bus::new(None);
                bus.connect()?;
                let pfns: alloc::vec::Vec<u64> = (0x400..0x800).collect();
                let (h, st) = bus.gpadl(1, &pfns)?;
                bus.teardown(1, h)?;
                bus.unload()?;
                if st == 0 {
                    Ok(())
                } else {
                    Err(alloc::format!("status {st:#x}"))
                }
            },
        ),
        (
            "Q-GPA-04",
            "a GPADL page beyond the child's memory is refused (GPADL_CREATED failure)",
            |_| {
                let mut bus = Bus::new(None);
                bus.connect()?;
                let (_, st) = bus.gpadl(1, &[0x10_0000])?;
                bus.unload()?;
                if st != 0 { Ok(()) } else { Err("accepted".into()) }
            },
        ),
        (
            "Q-GPA-05",
            "a GPADL naming the first page past the child's memory is refused; the last page is accepted",
            |_| {
                // SAFETY: the worker wrote the boot info page before starting
                // this VP and nothing writes it afterwards.
                let info = unsafe { &*(child::BOOT_INFO_GPA as *const BootInfo) };
                let pages = info.memory_size >> 12;
                let mut bus = Bus::new(None);
                bus.connect()?;
                let (_, past) = bus.gpadl(1, &[pages])?;
                let (h, last) = bus.gpadl(1, &[pages - 1])?;
                if last == 0 {
                    bus.teardown(1, h)?;
                }
                bus.unload()?;
                if past != 0 && last == 0 {
                    Ok(())
                } else {
                    Err(alloc::format!(
                        "page {pages:#x} (past the end): status {past:#x}; page {:#x} (the last): status {last:#x}",
                        pages - 1
                    ))
                }
            },
        ),
        (
            "Q-OPN-01",
            "open on a 2+2-page ring, 200 echoes (wraps the 4 KiB data area), close",
            |n| {
                let mut bus = Bus::new(None);
                bus.connect()?;
                open_echo_close(&mut bus, n, 2, 2, 200)?;
                Ok(bus.unload()?)
            },
        ),
        ("Q-OPN-02", "open on a 4+4-page ring, 200 echoes, close", |n| {
            let mut bus = Bus::new(None);
            bus.connect()?;
            open_echo_close(&mut bus, n, 4, 4, 200)?;
            Ok(bus.unload()?)
        }),
        (
            "Q-OPN-03",
            "open on 8+2 pages (asymmetric rings), 200 echoes, close",
            |n| {
                let mut bus = Bus::new(None);
                bus.connect()?;
                open_echo_close(&mut bus, n, 8, 2, 200)?;
                Ok(bus.unload()?)
            },
        ),
        (
            "Q-OPN-04",
            "close then reopen the same channel: echo works again",
            |n| {
                let mut bus = Bus::new(None);
                bus.connect()?;
                open_echo_close(&mut bus, n, 2, 2, 20)?;
                open_echo_close(&mut bus, n, 2, 2, 20)?;
                Ok(bus.unload()?)
            },
        ),
        (
            "Q-MOD-01",
            "MODIFYCHANNEL is always answered at 5.3: unknown relid, closed channel and target VP 0xFFFFFFFF fail, an open channel succeeds",
            |_| {
                use zerocopy::IntoBytes;
                let mut bus = Bus::new(None);
                bus.connect()?;
                let modify = |bus: &mut Bus,
                              relid: u32,
                              target_vp: u32|
                 -> Result<i32, alloc::string::String> {
                    let m = vmbus::protocol::ModifyChannel {
                        header: vmbus::protocol::Header::new(vmbus::protocol::ModifyChannel::TYPE),
                        child_relid: relid,
                        target_vp,
                    };
                    bus.client.post_raw(4, m.as_bytes());
                    match bus.until("MODIFYCHANNEL_RESPONSE", |e| {
                        matches!(e, vmbus::client::ClientEvent::Modified { .. })
                    })? {
                        vmbus::client::ClientEvent::Modified { relid: r, status } if r == relid => Ok(status),
                        other => Err(alloc::format!("{other:?}")),
                    }
                };
                let unknown = modify(&mut bus, 77, 0)?;
                let closed = modify(&mut bus, 1, 0)?;
                let handle = open_fresh(&mut bus)?;
                let disable = modify(&mut bus, 1, u32::MAX)?;
                let ok = modify(&mut bus, 1, 0)?;
                close_and_teardown(&mut bus, handle)?;
                bus.unload()?;
                if unknown != 0 && closed != 0 && disable != 0 && ok == 0 {
                    Ok(())
                } else {
                    Err(alloc::format!(
                        "statuses: unknown {unknown:#x}, closed {closed:#x}, vp disable {disable:#x}, open {ok:#x}"
                    ))
                }
            },
        ),
        (
            "Q-OPN-05",
            "OPENCHANNEL for an unknown relid gets a failure result",
            |_| {
                let mut bus = Bus::new(None);
                bus.connect()?;
                let (h, _) = bus.gpadl(1, &ring_pfns(4))?;
                let st = bus.open(77, h, 2)?;
                bus.teardown(1, h)?;
                bus.unload()?;
                if st != 0 {
                    Ok(())
                } else {
                    Err("opened relid 77".into())
                }
            },
        ),
        (
            "Q-OPN-06",
            "OPENCHANNEL naming a VP the child does not have gets a failure result; the channel then opens on VP 0",
            |_| {
                let mut bus = Bus::new(None);
                bus.connect()?;
                clear_ring(4);
                let (h, _) = bus.gpadl(1, &ring_pfns(4))?;
                let refused = bus.open_on_vp(1, h, 2, 3)?;
                let opened = bus.open_on_vp(1, h, 2, 0)?;
                close_and_teardown(&mut bus, h)?;
                bus.unload()?;
                if refused != 0 && opened == 0 {
                    Ok(())
                } else {
                    Err(alloc::format!("statuses: VP 3 {refused:#x}, VP 0 {opened:#x}"))
                }
            },
        ),
        (
            "Q-FLOW-01",
            "a full host-to-guest ring: the root holds its echo, sets pending_send_sz and resumes when the child reads and signals",
            flow_control,
        ),
        (
            "Q-MASK-01",
            "with the host-to-guest ring's interrupt_mask set the root does not signal; unmasked it does",
            interrupt_mask,
        ),
        (
            "Q-BAD-02",
            "a corrupt ring index stops that channel only; close and reopen on fresh rings works",
            corrupt_ring,
        ),
        (
            "Q-BAD-01",
            "truncated and unknown messages are refused; the bus keeps working",
            |_| {
                let mut bus = Bus::new(None);
                bus.connect()?;
                bus.client.post_raw(4, &[8, 0, 0]);
                bus.client.post_raw(4, &[0x63, 0, 0, 0, 0, 0, 0, 0]);
                bus.client.post_raw(4, &[5, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
                let (h, st) = bus.gpadl(1, &ring_pfns(1))?;
                bus.teardown(1, h)?;
                bus.unload()?;
                if st == 0 {
                    Ok(())
                } else {
                    Err(alloc::format!("status {st:#x} after bad input"))
                }
            },
        ),
        // Last: needs the test harness to run `rescind 4 1` and `offer 4`.
        (
            "Q-RES-01",
            "a rescinded open channel is closed and its relid released; a new offer can be opened",
            rescind_and_reoffer,
        ),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (id, rule, run) in cases {
        match run(name) {
            Ok(()) => {
                passed += 1;
                say!("PASS {id} {rule}");
            }
            Err(why) => {
                failed += 1;
                say!("FAIL {id} {rule}: {why}");
            }
        }
    }
    say!("testos {name}: conformance: {passed} passed, {failed} failed");
    halt_forever()
}

#[panic_handler]
pub(crate) fn panic(info: &core::panic::PanicInfo) -> ! {
    say!("testos: panic: {info}");
    halt_forever()
}
