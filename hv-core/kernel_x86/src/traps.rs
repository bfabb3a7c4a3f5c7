//! GDT, TSS and IDT, exception entry and reports, and "probes": memory
//! accesses that are expected to fault and come back as an error instead
//! (the root uses them to show that hv-core's region is out of its reach).
//!
//! Each kernel calls [`init`] with storage that lives forever and a handler
//! for exceptions no probe expected; the handler reports and stops.

use core::arch::{asm, global_asm};
use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering};

use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable};
use x86_64::structures::idt::{EntryOptions, InterruptDescriptorTable};
use x86_64::structures::tss::TaskStateSegment;

/// Kernel code selector.
pub const KERNEL_CS: u16 = 0x08;
/// Kernel data selector.
pub const KERNEL_DS: u16 = 0x10;
/// TSS selector.
pub const TSS_SEL: u16 = 0x18;

/// IST slot (0-based, as `x86_64` counts; the CPU's IST1) of #DF and NMI.
const FAULT_IST_INDEX: u16 = 0;

/// Saved state on entry to an exception handler (see `exception_common`).
#[repr(C)]
#[derive(Debug)]
pub struct ExceptionFrame {
    /// General-purpose registers.
    pub rax: u64,
    /// RBX.
    pub rbx: u64,
    /// RCX.
    pub rcx: u64,
    /// RDX.
    pub rdx: u64,
    /// RSI.
    pub rsi: u64,
    /// RDI.
    pub rdi: u64,
    /// RBP.
    pub rbp: u64,
    /// R8..R15.
    pub r: [u64; 8],
    /// Vector number.
    pub vector: u64,
    /// Error code (0 when the exception has none).
    pub error: u64,
    /// Interrupted RIP.
    pub rip: u64,
    /// CS.
    pub cs: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// RSP.
    pub rsp: u64,
    /// SS.
    pub ss: u64,
}

const EXCEPTION_NAMES: [&str; 32] = [
    "#DE divide error",
    "#DB debug",
    "NMI",
    "#BP breakpoint",
    "#OF overflow",
    "#BR bound range",
    "#UD invalid opcode",
    "#NM device not available",
    "#DF double fault",
    "coprocessor overrun",
    "#TS invalid TSS",
    "#NP segment not present",
    "#SS stack fault",
    "#GP general protection",
    "#PF page fault",
    "reserved",
    "#MF x87 error",
    "#AC alignment check",
    "#MC machine check",
    "#XM SIMD error",
    "#VE virtualization",
    "#CP control protection",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "#HV hypervisor injection",
    "#VC VMM communication",
    "#SX security",
    "reserved",
];

// Stubs: vectors 0-31 push a dummy error code where the CPU does not, then the
// vector, and join `exception_common`, which saves the GPRs and calls Rust.
// Vectors 32-255 are unexpected (the root runs with interrupts off for now)
// and report through the same path with vector 32+.
global_asm!(
    r#"
    .section .text
    .macro EXC_NOERR n
    .balign 16
exc_stub_\n:
    push 0
    push \n
    jmp exception_common
    .endm
    .macro EXC_ERR n
    .balign 16
exc_stub_\n:
    push \n
    jmp exception_common
    .endm

    EXC_NOERR 0
    EXC_NOERR 1
    EXC_NOERR 2
    EXC_NOERR 3
    EXC_NOERR 4
    EXC_NOERR 5
    EXC_NOERR 6
    EXC_NOERR 7
    EXC_ERR   8
    EXC_NOERR 9
    EXC_ERR   10
    EXC_ERR   11
    EXC_ERR   12
    EXC_ERR   13
    EXC_ERR   14
    EXC_NOERR 15
    EXC_NOERR 16
    EXC_ERR   17
    EXC_NOERR 18
    EXC_NOERR 19
    EXC_NOERR 20
    EXC_ERR   21
    EXC_NOERR 22
    EXC_NOERR 23
    EXC_NOERR 24
    EXC_NOERR 25
    EXC_NOERR 26
    EXC_NOERR 27
    EXC_NOERR 28
    EXC_ERR   29
    EXC_ERR   30
    EXC_NOERR 31

exception_common:
    push r15
    push r14
    push r13
    push r12
    push r11
    push r10
    push r9
    push r8
    push rbp
    push rdi
    push rsi
    push rdx
    push rcx
    push rbx
    push rax
    mov rdi, rsp
    cld
    call {dispatch}
    pop rax
    pop rbx
    pop rcx
    pop rdx
    pop rsi
    pop rdi
    pop rbp
    pop r8
    pop r9
    pop r10
    pop r11
    pop r12
    pop r13
    pop r14
    pop r15
    add rsp, 16
    iretq

    .section .rodata
    .balign 8
    .global exc_stub_table
exc_stub_table:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad exc_stub_\n
    .endr

    .section .text
    /* Probes: one instruction that may fault. On a fault the dispatcher
     * resumes at the matching "done" label with R11 = fault info; otherwise
     * R11 stays 0. Each (insn, done) pair is listed in probe_fixups. */
    .global probe_read_u64_asm
probe_read_u64_asm:             /* rdi = addr -> rax */
    xor r11d, r11d
    xor eax, eax
probe_read_insn:
    mov rax, [rdi]
probe_read_done:
    ret

    .global probe_write_u64_asm
probe_write_u64_asm:            /* rdi = addr, rsi = value */
    xor r11d, r11d
probe_write_insn:
    mov [rdi], rsi
probe_write_done:
    ret

    .global probe_rdmsr_asm
probe_rdmsr_asm:                /* ecx = msr -> edx:eax */
    xor r11d, r11d
    xor eax, eax
    xor edx, edx
probe_rdmsr_insn:
    rdmsr
probe_rdmsr_done:
    ret

    .global probe_wrmsr_asm
probe_wrmsr_asm:                /* ecx = msr, edx:eax = value */
    xor r11d, r11d
probe_wrmsr_insn:
    wrmsr
probe_wrmsr_done:
    ret

    .global probe_vmmcall_asm
probe_vmmcall_asm:              /* rcx, rdx, r8 per the TLFS -> rax */
    xor r11d, r11d
probe_vmmcall_insn:
    vmmcall
probe_vmmcall_done:
    ret

    /* Privileged-instruction probes (`probe_privileged`): RAX = RDI, ECX = EDX = 0. */
    .global probe_op0_asm
probe_op0_asm:                /* MOV CR4, RDI */
    xor r11d, r11d
    mov rax, rdi
    xor ecx, ecx
    xor edx, edx
probe_op0_insn:
    .byte 0x0F,0x22,0xE7
probe_op0_done:
    ret

    .global probe_op1_asm
probe_op1_asm:                /* XGETBV (ECX = 0) */
    xor r11d, r11d
    mov rax, rdi
    xor ecx, ecx
    xor edx, edx
probe_op1_insn:
    .byte 0x0F,0x01,0xD0
probe_op1_done:
    ret

    .global probe_op2_asm
probe_op2_asm:                /* XSETBV (ECX = 0, EAX = arg) */
    xor r11d, r11d
    mov rax, rdi
    xor ecx, ecx
    xor edx, edx
probe_op2_insn:
    .byte 0x0F,0x01,0xD1
probe_op2_done:
    ret

    .global probe_op3_asm
probe_op3_asm:                /* RDPKRU */
    xor r11d, r11d
    mov rax, rdi
    xor ecx, ecx
    xor edx, edx
probe_op3_insn:
    .byte 0x0F,0x01,0xEE
probe_op3_done:
    ret

    .global probe_op4_asm
probe_op4_asm:                /* WRPKRU (EAX = arg) */
    xor r11d, r11d
    mov rax, rdi
    xor ecx, ecx
    xor edx, edx
probe_op4_insn:
    .byte 0x0F,0x01,0xEF
probe_op4_done:
    ret

    .global probe_op5_asm
probe_op5_asm:                /* VMRUN (RAX = arg) */
    xor r11d, r11d
    mov rax, rdi
    xor ecx, ecx
    xor edx, edx
probe_op5_insn:
    .byte 0x0F,0x01,0xD8
probe_op5_done:
    ret

    .global probe_op6_asm
probe_op6_asm:                /* VMLOAD (RAX = arg) */
    xor r11d, r11d
    mov rax, rdi
    xor ecx, ecx
    xor edx, edx
probe_op6_insn:
    .byte 0x0F,0x01,0xDA
probe_op6_done:
    ret

    .global probe_op7_asm
probe_op7_asm:                /* VMSAVE (RAX = arg) */
    xor r11d, r11d
    mov rax, rdi
    xor ecx, ecx
    xor edx, edx
probe_op7_insn:
    .byte 0x0F,0x01,0xDB
probe_op7_done:
    ret

    .global probe_op8_asm
probe_op8_asm:                /* STGI */
    xor r11d, r11d
    mov rax, rdi
    xor ecx, ecx
    xor edx, edx
probe_op8_insn:
    .byte 0x0F,0x01,0xDC
probe_op8_done:
    ret

    .global probe_op9_asm
probe_op9_asm:                /* CLGI */
    xor r11d, r11d
    mov rax, rdi
    xor ecx, ecx
    xor edx, edx
probe_op9_insn:
    .byte 0x0F,0x01,0xDD
probe_op9_done:
    ret

    .global probe_op10_asm
probe_op10_asm:                /* SKINIT (EAX = arg) */
    xor r11d, r11d
    mov rax, rdi
    xor ecx, ecx
    xor edx, edx
probe_op10_insn:
    .byte 0x0F,0x01,0xDE
probe_op10_done:
    ret

    .global probe_op11_asm
probe_op11_asm:                /* INVLPGA (RAX = arg, ECX = 0) */
    xor r11d, r11d
    mov rax, rdi
    xor ecx, ecx
    xor edx, edx
probe_op11_insn:
    .byte 0x0F,0x01,0xDF
probe_op11_done:
    ret

    .global probe_op12_asm
probe_op12_asm:                /* MONITOR (RAX = arg) */
    xor r11d, r11d
    mov rax, rdi
    xor ecx, ecx
    xor edx, edx
probe_op12_insn:
    .byte 0x0F,0x01,0xC8
probe_op12_done:
    ret

    .global probe_op13_asm
probe_op13_asm:                /* MWAIT */
    xor r11d, r11d
    mov rax, rdi
    xor ecx, ecx
    xor edx, edx
probe_op13_insn:
    .byte 0x0F,0x01,0xC9
probe_op13_done:
    ret

    .global probe_op14_asm
probe_op14_asm:                /* INVD */
    xor r11d, r11d
    mov rax, rdi
    xor ecx, ecx
    xor edx, edx
probe_op14_insn:
    .byte 0x0F,0x08
probe_op14_done:
    ret

    .section .rodata
    .balign 8
    .global probe_fixups
probe_fixups:
    .quad probe_read_insn, probe_read_done
    .quad probe_write_insn, probe_write_done
    .quad probe_rdmsr_insn, probe_rdmsr_done
    .quad probe_wrmsr_insn, probe_wrmsr_done
    .quad probe_vmmcall_insn, probe_vmmcall_done
    .quad probe_op0_insn, probe_op0_done
    .quad probe_op1_insn, probe_op1_done
    .quad probe_op2_insn, probe_op2_done
    .quad probe_op3_insn, probe_op3_done
    .quad probe_op4_insn, probe_op4_done
    .quad probe_op5_insn, probe_op5_done
    .quad probe_op6_insn, probe_op6_done
    .quad probe_op7_insn, probe_op7_done
    .quad probe_op8_insn, probe_op8_done
    .quad probe_op9_insn, probe_op9_done
    .quad probe_op10_insn, probe_op10_done
    .quad probe_op11_insn, probe_op11_done
    .quad probe_op12_insn, probe_op12_done
    .quad probe_op13_insn, probe_op13_done
    .quad probe_op14_insn, probe_op14_done
    "#,
    dispatch = sym exception_dispatch,
);

// Vectors 32-255: one 16-byte stub each (push 0, push vector, join the
// common path), so the IDT entry of vector v is irq_stubs + 16 * (v - 32).
global_asm!(
    r#"
    .section .text
    .balign 16
    .global irq_stubs
irq_stubs:
    .set vec, 32
    .rept 224
    .balign 16
    pushq $0
    pushq $vec
    jmp exception_common
    .set vec, vec + 1
    .endr
    "#,
    options(att_syntax)
);

unsafe extern "C" {
    static irq_stubs: u8;
    static exc_stub_table: [u64; 32];
    static probe_fixups: [[u64; 2]; 20];
}

/// A fault caught by a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeFault {
    /// Exception vector.
    pub vector: u8,
    /// Its error code.
    pub error: u32,
}

impl ProbeFault {
    fn decode(info: u64) -> Result<(), Self> {
        if info == 0 {
            Ok(())
        } else {
            Err(Self {
                vector: (info & 0xFF) as u8 - 1,
                error: (info >> 32) as u32,
            })
        }
    }

    /// Name of the exception.
    pub fn name(&self) -> &'static str {
        EXCEPTION_NAMES
            .get(self.vector as usize)
            .copied()
            .unwrap_or("interrupt")
    }
}

/// Read 8 bytes at `addr`, turning a fault into an error.
pub fn probe_read_u64(addr: u64) -> Result<u64, ProbeFault> {
    let (value, info): (u64, u64);
    // A fault resumes after the read through `probe_fixups` with R11 set.
    // SAFETY: one u64 read at `addr`, an identity-mapped address with no read side effects.
    unsafe {
        asm!("call probe_read_u64_asm", in("rdi") addr, out("rax") value, out("r11") info, clobber_abi("C"))
    };
    ProbeFault::decode(info).map(|()| value)
}

/// Write 8 bytes at `addr`, turning a fault into an error.
///
/// # Safety
/// `addr` must not hold anything the kernel relies on (only addresses the root
/// does not own are probed).
pub unsafe fn probe_write_u64(addr: u64, value: u64) -> Result<(), ProbeFault> {
    let info: u64;
    // SAFETY: as for `probe_read_u64`, plus the caller's promise about `addr`.
    unsafe {
        asm!("call probe_write_u64_asm", in("rdi") addr, in("rsi") value, out("r11") info, clobber_abi("C"))
    };
    ProbeFault::decode(info)
}

/// RDMSR, turning #GP into an error.
///
/// # Safety
/// Reading `msr` must have no side effect the kernel relies on.
pub unsafe fn probe_rdmsr(msr: u32) -> Result<u64, ProbeFault> {
    let (lo, hi, info): (u32, u32, u64);
    // SAFETY: forwarded to the caller; a fault resumes after the RDMSR.
    unsafe {
        asm!("call probe_rdmsr_asm", in("ecx") msr, out("eax") lo, out("edx") hi, out("r11") info, clobber_abi("C"))
    };
    ProbeFault::decode(info).map(|()| ((hi as u64) << 32) | lo as u64)
}

/// WRMSR, turning #GP into an error.
///
/// # Safety
/// If the write succeeds it takes effect: the caller must be ready for that.
pub unsafe fn probe_wrmsr(msr: u32, value: u64) -> Result<(), ProbeFault> {
    let info: u64;
    // SAFETY: forwarded to the caller; a fault resumes after the WRMSR.
    unsafe {
        asm!("call probe_wrmsr_asm", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
             out("r11") info, clobber_abi("C"))
    };
    ProbeFault::decode(info)
}

/// A raw VMMCALL with the TLFS register convention (RCX control, RDX input,
/// R8 output; result in RAX), turning #UD into an error. Unlike a call through
/// the hypercall page it works (and fails) whatever that page's state.
///
/// # Safety
/// The hypervisor may write the output GPA: the caller must own it.
pub unsafe fn probe_vmmcall(control: u64, input: u64, output: u64) -> Result<u64, ProbeFault> {
    let (result, info): (u64, u64);
    // SAFETY: forwarded to the caller; a fault resumes after the VMMCALL.
    unsafe {
        asm!("call probe_vmmcall_asm", in("rcx") control, in("rdx") input, in("r8") output,
             out("rax") result, out("r11") info, clobber_abi("C"))
    };
    ProbeFault::decode(info).map(|()| result)
}

/// A privileged or feature-gated instruction for [`probe_privileged`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privileged {
    /// MOV CR4, RDI.
    MovCr4,
    /// XGETBV (ECX = 0).
    Xgetbv,
    /// XSETBV (ECX = 0, EAX = arg).
    Xsetbv,
    /// RDPKRU.
    Rdpkru,
    /// WRPKRU (EAX = arg).
    Wrpkru,
    /// VMRUN (RAX = arg).
    Vmrun,
    /// VMLOAD (RAX = arg).
    Vmload,
    /// VMSAVE (RAX = arg).
    Vmsave,
    /// STGI.
    Stgi,
    /// CLGI.
    Clgi,
    /// SKINIT (EAX = arg).
    Skinit,
    /// INVLPGA (RAX = arg, ECX = 0).
    Invlpga,
    /// MONITOR (RAX = arg).
    Monitor,
    /// MWAIT.
    Mwait,
    /// INVD.
    Invd,
}

impl Privileged {
    /// Every probe, in declaration order.
    pub const ALL: [Self; 15] = [
        Self::MovCr4,
        Self::Xgetbv,
        Self::Xsetbv,
        Self::Rdpkru,
        Self::Wrpkru,
        Self::Vmrun,
        Self::Vmload,
        Self::Vmsave,
        Self::Stgi,
        Self::Clgi,
        Self::Skinit,
        Self::Invlpga,
        Self::Monitor,
        Self::Mwait,
        Self::Invd,
    ];
}

/// Execute `op` with `arg` in RAX/RDI (ECX = EDX = 0), turning a fault into
/// an error; returns RAX afterwards. For guests that check what their
/// hypervisor refuses (SVM instructions, XSAVE and PKU when hidden, CR4 bits).
///
/// # Safety
/// If the instruction succeeds it takes effect: the caller must be ready for
/// that (e.g. a CR4 value it can live with).
pub unsafe fn probe_privileged(op: Privileged, arg: u64) -> Result<u64, ProbeFault> {
    let (value, info): (u64, u64);
    // SAFETY: forwarded to the caller; a fault resumes after the instruction
    // through `probe_fixups`.
    unsafe {
        match op {
            Privileged::MovCr4 => {
                asm!("call probe_op0_asm", in("rdi") arg, out("rax") value, out("r11") info, clobber_abi("C"))
            }
            Privileged::Xgetbv => {
                asm!("call probe_op1_asm", in("rdi") arg, out("rax") value, out("r11") info, clobber_abi("C"))
            }
            Privileged::Xsetbv => {
                asm!("call probe_op2_asm", in("rdi") arg, out("rax") value, out("r11") info, clobber_abi("C"))
            }
            Privileged::Rdpkru => {
                asm!("call probe_op3_asm", in("rdi") arg, out("rax") value, out("r11") info, clobber_abi("C"))
            }
            Privileged::Wrpkru => {
                asm!("call probe_op4_asm", in("rdi") arg, out("rax") value, out("r11") info, clobber_abi("C"))
            }
            Privileged::Vmrun => {
                asm!("call probe_op5_asm", in("rdi") arg, out("rax") value, out("r11") info, clobber_abi("C"))
            }
            Privileged::Vmload => {
                asm!("call probe_op6_asm", in("rdi") arg, out("rax") value, out("r11") info, clobber_abi("C"))
            }
            Privileged::Vmsave => {
                asm!("call probe_op7_asm", in("rdi") arg, out("rax") value, out("r11") info, clobber_abi("C"))
            }
            Privileged::Stgi => {
                asm!("call probe_op8_asm", in("rdi") arg, out("rax") value, out("r11") info, clobber_abi("C"))
            }
            Privileged::Clgi => {
                asm!("call probe_op9_asm", in("rdi") arg, out("rax") value, out("r11") info, clobber_abi("C"))
            }
            Privileged::Skinit => {
                asm!("call probe_op10_asm", in("rdi") arg, out("rax") value, out("r11") info, clobber_abi("C"))
            }
            Privileged::Invlpga => {
                asm!("call probe_op11_asm", in("rdi") arg, out("rax") value, out("r11") info, clobber_abi("C"))
            }
            Privileged::Monitor => {
                asm!("call probe_op12_asm", in("rdi") arg, out("rax") value, out("r11") info, clobber_abi("C"))
            }
            Privileged::Mwait => {
                asm!("call probe_op13_asm", in("rdi") arg, out("rax") value, out("r11") info, clobber_abi("C"))
            }
            Privileged::Invd => {
                asm!("call probe_op14_asm", in("rdi") arg, out("rax") value, out("r11") info, clobber_abi("C"))
            }
        }
    }
    ProbeFault::decode(info).map(|()| value)
}

extern "sysv64" fn exception_dispatch(frame: &mut ExceptionFrame) {
    // SAFETY: `probe_fixups` is a read-only table of code addresses in the asm above.
    let fixups = unsafe { &probe_fixups };
    if let Some([_, done]) = fixups.iter().find(|[insn, _]| *insn == frame.rip) {
        frame.rip = *done;
        frame.r[3] = (frame.vector + 1) | ((frame.error & 0xFFFF_FFFF) << 32); // R11
        return;
    }
    if frame.vector >= 32 {
        let irq = IRQ_HANDLERS[frame.vector as usize & 0xFF].load(Ordering::Acquire);
        if irq != 0 {
            // SAFETY: IRQ_HANDLERS only ever holds `fn()` values stored by `set_irq_handler`.
            let irq: fn() = unsafe { core::mem::transmute(irq) };
            irq();
            return;
        }
    }
    let handler = HANDLER.load(Ordering::Acquire);
    if handler != 0 {
        // SAFETY: HANDLER only ever holds a `fn(&ExceptionFrame) -> !` stored by `init`.
        let handler: fn(&ExceptionFrame) -> ! = unsafe { core::mem::transmute(handler) };
        handler(frame);
    }
    crate::arch::halt_forever();
}

static HANDLER: AtomicUsize = AtomicUsize::new(0);
static IRQ_HANDLERS: [AtomicUsize; 256] = [const { AtomicUsize::new(0) }; 256];

/// Route interrupt `vector` (32..=255) to `handler`, which runs with
/// interrupts off and must acknowledge the interrupt itself (e.g. EOI).
pub fn set_irq_handler(vector: u8, handler: fn()) {
    assert!(vector >= 32, "vectors below 32 are exceptions");
    IRQ_HANDLERS[vector as usize].store(handler as usize, Ordering::Release);
}

impl fmt::Display for ExceptionFrame {
    /// A multi-line report: what, where, and every register.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = EXCEPTION_NAMES
            .get(self.vector as usize)
            .copied()
            .unwrap_or("unexpected interrupt");
        writeln!(f, "exception {} ({name}) error={:#x}", self.vector, self.error)?;
        writeln!(
            f,
            "    rip={:#018x} cs={:#x} rflags={:#x} rsp={:#018x} ss={:#x}",
            self.rip, self.cs, self.rflags, self.rsp, self.ss
        )?;
        if self.vector == 14 {
            writeln!(
                f,
                "    cr2={:#018x} ({})",
                crate::arch::read_cr2(),
                page_fault_reason(self.error)
            )?;
        }
        writeln!(
            f,
            "    rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}",
            self.rax, self.rbx, self.rcx, self.rdx
        )?;
        writeln!(
            f,
            "    rsi={:#018x} rdi={:#018x} rbp={:#018x}",
            self.rsi, self.rdi, self.rbp
        )?;
        writeln!(
            f,
            "    r8 ={:#018x} r9 ={:#018x} r10={:#018x} r11={:#018x}",
            self.r[0], self.r[1], self.r[2], self.r[3]
        )?;
        write!(
            f,
            "    r12={:#018x} r13={:#018x} r14={:#018x} r15={:#018x}",
            self.r[4], self.r[5], self.r[6], self.r[7]
        )
    }
}

fn page_fault_reason(error: u64) -> &'static str {
    match (error & 1 != 0, error & 2 != 0, error & 16 != 0) {
        (false, false, false) => "read of a non-present page",
        (false, true, _) => "write to a non-present page",
        (false, false, true) => "fetch from a non-present page",
        (true, true, _) => "write to a read-only page",
        (true, false, true) => "fetch from a no-execute page",
        (true, false, false) => "protection violation on read",
    }
}

/// Everything `init` installs; must live forever.
#[repr(C, align(4096))]
pub struct CpuTables {
    /// Null, code, data and the two-slot TSS descriptor.
    gdt: GlobalDescriptorTable<5>,
    tss: TaskStateSegment,
    idt: InterruptDescriptorTable,
    fault_stack: [u8; 16 * 1024],
}

impl CpuTables {
    /// Empty tables (filled by [`init`]).
    pub const fn new() -> Self {
        Self {
            gdt: GlobalDescriptorTable::empty(),
            tss: TaskStateSegment::new(),
            idt: InterruptDescriptorTable::new(),
            fault_stack: [0; 16 * 1024],
        }
    }
}

impl Default for CpuTables {
    fn default() -> Self {
        Self::new()
    }
}

/// Point the IDT entry of exception `vector` (0..32) at `stub` and return its
/// options, or `None` for the reserved vectors (15, 22-27, 31), which `x86_64`
/// keeps not present: the CPU never raises them, and an `INT n` to one reports
/// as #NP.
///
/// # Safety
/// `stub` must be an entry stub for exactly this vector: it must expect the
/// frame the CPU pushes for `vector` (with or without an error code).
unsafe fn set_exception_stub(
    idt: &mut InterruptDescriptorTable,
    vector: u8,
    stub: VirtAddr,
) -> Option<&mut EntryOptions> {
    // The entries with an error code (and #MC, which must not return) are
    // fields of their own type; the rest are reachable by index.
    // SAFETY: forwarded to the caller.
    let options = unsafe {
        match vector {
            8 => idt.double_fault.set_handler_addr(stub),
            10 => idt.invalid_tss.set_handler_addr(stub),
            11 => idt.segment_not_present.set_handler_addr(stub),
            12 => idt.stack_segment_fault.set_handler_addr(stub),
            13 => idt.general_protection_fault.set_handler_addr(stub),
            14 => idt.page_fault.set_handler_addr(stub),
            17 => idt.alignment_check.set_handler_addr(stub),
            18 => idt.machine_check.set_handler_addr(stub),
            21 => idt.cp_protection_exception.set_handler_addr(stub),
            29 => idt.vmm_communication_exception.set_handler_addr(stub),
            30 => idt.security_exception.set_handler_addr(stub),
            15 | 22..=27 | 31 => return None,
            _ => idt[vector].set_handler_addr(stub),
        }
    };
    Some(options)
}

/// Load a fresh GDT (flat code/data and a TSS whose IST1 serves #DF and NMI)
/// and an IDT routing every vector to the exception entry (except the reserved
/// exception vectors, see `set_exception_stub`); exceptions no probe expected
/// go to `handler`.
pub fn init(tables: &'static mut CpuTables, handler: fn(&ExceptionFrame) -> !) {
    HANDLER.store(handler as usize, Ordering::Release);
    let CpuTables {
        gdt,
        tss,
        idt,
        fault_stack,
    } = tables;

    *tss = TaskStateSegment::new();
    let stack_top = VirtAddr::from_ptr(fault_stack.as_ptr_range().end).align_down(16u64);
    tss.interrupt_stack_table[usize::from(FAULT_IST_INDEX)] = stack_top;
    let tss: &'static TaskStateSegment = tss;

    *gdt = GlobalDescriptorTable::empty();
    let cs = gdt.append(Descriptor::kernel_code_segment());
    let ds = gdt.append(Descriptor::kernel_data_segment());
    let tss_sel = gdt.append(Descriptor::tss_segment(tss));
    assert_eq!(
        (cs.0, ds.0, tss_sel.0),
        (KERNEL_CS, KERNEL_DS, TSS_SEL),
        "GDT layout"
    );
    let gdt: &'static GlobalDescriptorTable<5> = gdt;

    // Vectors 0-31 enter through `exc_stub_table`, 32-255 through `irq_stubs`
    // (16 bytes each); all are interrupt gates (IF cleared) at DPL 0 in `cs`.
    // SAFETY: `exc_stub_table` is a read-only table of code addresses in the asm above.
    let stubs = unsafe { &exc_stub_table };
    for (vector, &stub) in (0..32u8).zip(stubs) {
        // `exc_stub_<vector>` pushes a dummy error code exactly where the CPU
        // pushes none; IST1 is shared by #DF and NMI (as it always was): both
        // go to `handler`, which reports and never returns.
        // SAFETY: the stub is a valid entry point and `cs` is the 64-bit code
        // segment of `gdt`, loaded below before this IDT.
        unsafe {
            if let Some(options) = set_exception_stub(idt, vector, VirtAddr::new(stub)) {
                options.set_code_selector(cs);
                if vector == 8 || vector == 2 {
                    options.set_stack_index(FAULT_IST_INDEX);
                }
            }
        }
    }
    let irq_base = VirtAddr::from_ptr(&raw const irq_stubs);
    for vector in 32..=255u8 {
        let stub = irq_base + 16 * (u64::from(vector) - 32);
        // SAFETY: each `irq_stubs` slot pushes a dummy error code and its vector,
        // as an entry without error code needs; `cs` as above.
        unsafe { idt[vector].set_handler_addr(stub).set_code_selector(cs) };
    }
    let idt: &'static InterruptDescriptorTable = idt;

    gdt.load();
    // The new GDT has flat code/data at the selectors in use; CS is reloaded by a
    // far return, data segments by the data selector; the fresh TSS is not busy.
    // SAFETY: `gdt` lives forever and holds exactly these descriptors.
    unsafe {
        CS::set_reg(cs);
        DS::set_reg(ds);
        ES::set_reg(ds);
        SS::set_reg(ds);
        load_tss(tss_sel);
    }
    idt.load();
}
