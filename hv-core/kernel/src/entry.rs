//! hv-core's entry point, called by the root kernel as
//! `extern "sysv64" fn(handoff_phys: u64) -> u64`.
//!
//! The asm saves what the SysV ABI says the caller expects to survive the call
//! (RBX, RBP, R12–R15, RSP after return, the return RIP, RFLAGS) into
//! [`ROOT_RESUME`], switches to hv-core's boot stack and calls [`hv_core_main`].
//! On success that never returns: the root resumes *as a guest* at the return
//! address with RAX = 0 and those registers restored. On failure it returns an
//! error code, the asm restores the root's stack and registers, and the call
//! returns normally with nothing changed.

use core::arch::global_asm;

/// The caller's state at the call, filled by the entry asm.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RootResume {
    /// RBX.
    pub rbx: u64,
    /// RBP.
    pub rbp: u64,
    /// R12.
    pub r12: u64,
    /// R13.
    pub r13: u64,
    /// R14.
    pub r14: u64,
    /// R15.
    pub r15: u64,
    /// RSP after `ret` (the call's return address popped).
    pub rsp: u64,
    /// The return address: where the root resumes.
    pub rip: u64,
    /// RFLAGS at the call.
    pub rflags: u64,
    /// RSP at entry (return address on top), to unwind a refused launch.
    pub entry_rsp: u64,
}

/// Written once by the entry asm before any Rust runs.
#[unsafe(no_mangle)]
static mut ROOT_RESUME: RootResume = RootResume {
    rbx: 0,
    rbp: 0,
    r12: 0,
    r13: 0,
    r14: 0,
    r15: 0,
    rsp: 0,
    rip: 0,
    rflags: 0,
    entry_rsp: 0,
};

/// A copy of what the entry asm saved.
pub fn root_resume() -> RootResume {
    // SAFETY: written only by the entry asm, before Rust code runs; read-only after.
    unsafe { core::ptr::read_volatile(&raw const ROOT_RESUME) }
}

const BOOT_STACK_SIZE: usize = 512 * 1024;

global_asm!(
    r#"
    .section .bss.boot_stack, "aw", @nobits
    .balign 16
hv_boot_stack: .skip {stack_size}
hv_boot_stack_top:

    .section .text.entry, "ax"
    .global hv_core_entry
hv_core_entry:
    cli
    lea rax, [rip + ROOT_RESUME]
    mov [rax + 0x00], rbx
    mov [rax + 0x08], rbp
    mov [rax + 0x10], r12
    mov [rax + 0x18], r13
    mov [rax + 0x20], r14
    mov [rax + 0x28], r15
    lea rcx, [rsp + 8]
    mov [rax + 0x30], rcx
    mov rcx, [rsp]
    mov [rax + 0x38], rcx
    pushfq
    pop rcx
    mov [rax + 0x40], rcx
    mov [rax + 0x48], rsp
    lea rsp, [rip + hv_boot_stack_top]
    xor ebp, ebp
    call {main}
    /* Only a refused launch gets here: RAX = error code. */
    lea rcx, [rip + ROOT_RESUME]
    mov rsp, [rcx + 0x48]
    mov rbx, [rcx + 0x00]
    mov rbp, [rcx + 0x08]
    mov r12, [rcx + 0x10]
    mov r13, [rcx + 0x18]
    mov r14, [rcx + 0x20]
    mov r15, [rcx + 0x28]
    ret
    "#,
    stack_size = const BOOT_STACK_SIZE,
    main = sym crate::root::hv_core_main,
);
