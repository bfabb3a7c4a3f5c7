//! The world switch. VMRUN loads and saves only RAX, RSP, RIP, RFLAGS and the
//! segment/control state; hv-core keeps the other guest GPRs in [`GuestRegs`]
//! and moves FS/GS/TR/LDTR and the syscall MSRs with VMLOAD/VMSAVE
//! (QEMU `target/i386/tcg/sysemu/svm_helper.c`).

use core::arch::global_asm;

/// Guest general-purpose registers other than RAX and RSP (those are in the VMCB).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct GuestRegs {
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
    /// R8.
    pub r8: u64,
    /// R9.
    pub r9: u64,
    /// R10.
    pub r10: u64,
    /// R11.
    pub r11: u64,
    /// R12.
    pub r12: u64,
    /// R13.
    pub r13: u64,
    /// R14.
    pub r14: u64,
    /// R15.
    pub r15: u64,
}

impl GuestRegs {
    /// GPR `n` in the x86 encoding order (0 RAX … 15 R15). RAX and RSP live
    /// in the VMCB, not here: they read as 0 (callers take them from there).
    pub fn get(&self, n: u8) -> u64 {
        match n & 15 {
            1 => self.rcx,
            2 => self.rdx,
            3 => self.rbx,
            5 => self.rbp,
            6 => self.rsi,
            7 => self.rdi,
            8 => self.r8,
            9 => self.r9,
            10 => self.r10,
            11 => self.r11,
            12 => self.r12,
            13 => self.r13,
            14 => self.r14,
            15 => self.r15,
            _ => 0,
        }
    }

    /// Set GPR `n` (x86 encoding order). RAX (0) and RSP (4) live in the
    /// VMCB: the caller writes those there; here they are ignored.
    pub fn set(&mut self, n: u8, value: u64) {
        let slot = match n & 15 {
            1 => &mut self.rcx,
            2 => &mut self.rdx,
            3 => &mut self.rbx,
            5 => &mut self.rbp,
            6 => &mut self.rsi,
            7 => &mut self.rdi,
            8 => &mut self.r8,
            9 => &mut self.r9,
            10 => &mut self.r10,
            11 => &mut self.r11,
            12 => &mut self.r12,
            13 => &mut self.r13,
            14 => &mut self.r14,
            15 => &mut self.r15,
            _ => return,
        };
        *slot = value;
    }
}

global_asm!(
    r#"
    .section .text
    /* hv_vmrun(regs: *mut GuestRegs, vmcb_pa: u64, host_save_pa: u64, host_if: u64)
     * host_if != 0: run with the host's IF set (HIF = 1), so that with the INTR
     * intercept a physical interrupt ends the guest's run; GIF = 0 keeps it
     * pending until hv-core hands control back to the root. */
    .global hv_vmrun
hv_vmrun:
    push rbp
    push rbx
    push r12
    push r13
    push r14
    push r15
    push rdx                /* [rsp+16]: host save area */
    push rdi                /* [rsp+8]:  regs */
    push rsi                /* [rsp+0]:  vmcb */
    mov rax, rdx
    vmsave rax              /* hv-core's FS/GS/TR/LDTR and syscall MSRs */
    clgi
    test rcx, rcx
    jz 1f
    sti                     /* GIF = 0: nothing is delivered until VMRUN */
1:
    mov rbx, [rdi + 0x00]
    mov rcx, [rdi + 0x08]
    mov rdx, [rdi + 0x10]
    mov rsi, [rdi + 0x18]
    mov rbp, [rdi + 0x28]
    mov r8,  [rdi + 0x30]
    mov r9,  [rdi + 0x38]
    mov r10, [rdi + 0x40]
    mov r11, [rdi + 0x48]
    mov r12, [rdi + 0x50]
    mov r13, [rdi + 0x58]
    mov r14, [rdi + 0x60]
    mov r15, [rdi + 0x68]
    mov rdi, [rdi + 0x20]
    mov rax, [rsp]
    vmload rax
    vmrun rax
    vmsave rax
    cli                     /* GIF = 0 after #VMEXIT: no interrupt got in */
    push rdi                /* guest RDI; regs now at [rsp+16] */
    mov rdi, [rsp + 16]
    mov [rdi + 0x00], rbx
    mov [rdi + 0x08], rcx
    mov [rdi + 0x10], rdx
    mov [rdi + 0x18], rsi
    mov [rdi + 0x28], rbp
    mov [rdi + 0x30], r8
    mov [rdi + 0x38], r9
    mov [rdi + 0x40], r10
    mov [rdi + 0x48], r11
    mov [rdi + 0x50], r12
    mov [rdi + 0x58], r13
    mov [rdi + 0x60], r14
    mov [rdi + 0x68], r15
    pop rax
    mov [rdi + 0x20], rax
    mov rax, [rsp + 16]
    vmload rax              /* back to hv-core's own segment state */
    add rsp, 24
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    ret
    "#
);

unsafe extern "sysv64" {
    fn hv_vmrun(regs: *mut GuestRegs, vmcb_pa: u64, host_save_pa: u64, host_if: u64);
}

/// Run the guest described by the VMCB at `vmcb_pa` until its next #VMEXIT.
///
/// # Safety
/// `vmcb_pa` is a valid, initialised VMCB (with its IOPM, MSRPM and NPT) that
/// no other CPU runs; `host_save_pa` is this CPU's host save page; EFER.SVME
/// and VM_HSAVE_PA are set up. With `host_if`, the VMCB must intercept INTR
/// with V_INTR_MASKING set (never the root's passthrough VMCB).
pub unsafe fn run(regs: &mut GuestRegs, vmcb_pa: u64, host_save_pa: u64, host_if: bool) {
    // SAFETY: forwarded to the caller; `regs` is a valid exclusive reference.
    unsafe { hv_vmrun(regs, vmcb_pa, host_save_pa, host_if as u64) }
}
