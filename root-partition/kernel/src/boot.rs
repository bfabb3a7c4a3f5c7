//! PVH entry (32-bit protected mode, paging off, EBX = &hvm_start_info) and
//! the switch to long mode. Also carries the PVH ELF note QEMU looks for
//! (XEN_ELFNOTE_PHYS32_ENTRY, type 18) and a Multiboot2 header so GRUB can
//! load the same image on real hardware later (QEMU `target/i386/tcg/sysemu/svm_helper.c`).
//!
//! The early page tables identity-map the first 4 GiB with 2 MiB pages; the
//! kernel replaces them with its own tables once its memory map is known.

use core::arch::global_asm;

/// Size of the boot stack (the root's only stack: its main loop, the
/// worker and every device run on it).
pub const BOOT_STACK_SIZE: usize = 256 * 1024;

/// The deepest the boot stack has been, in bytes: it starts zeroed (.bss),
/// so the lowest non-zero byte marks the furthest any frame reached (a
/// frame that only ever wrote zeros there is missed: a close lower bound).
pub fn stack_high_water() -> usize {
    unsafe extern "C" {
        static boot_stack_bottom: u8;
    }
    let bottom = core::ptr::addr_of!(boot_stack_bottom);
    let untouched = (0..BOOT_STACK_SIZE)
        .step_by(8)
        // SAFETY: `bottom..bottom + BOOT_STACK_SIZE` is the stack, mapped
        // and inside the image; the bytes read are below the live frames
        // (or are the live frames, read as plain words), and a volatile
        // read of a u64 at 8-byte alignment is always valid there.
        .take_while(|&off| unsafe { core::ptr::read_volatile(bottom.add(off).cast::<u64>()) } == 0)
        .count()
        * 8;
    BOOT_STACK_SIZE - untouched
}

/// The unmapped page right below the boot stack.
pub fn stack_guard_page() -> u64 {
    unsafe extern "C" {
        static boot_stack_guard: u8;
    }
    // Only the address is taken; the page is never read or written.
    core::ptr::addr_of!(boot_stack_guard) as u64
}

global_asm!(
    r#"
    .section .multiboot2, "a"
    .balign 8
mb2_header_start:
    .long 0xE85250D6                /* magic */
    .long 0                         /* architecture: i386 protected mode */
    .long mb2_header_end - mb2_header_start
    .long -(0xE85250D6 + 0 + (mb2_header_end - mb2_header_start))
    .balign 8
    .word 0, 0                      /* end tag */
    .long 8
mb2_header_end:

    .section .note.pvh, "a"
    .balign 4
    .long 4                         /* namesz: "Xen\0" */
    .long 8                         /* descsz: a .quad entry address */
    .long 18                        /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad pvh_start32
    .balign 4

    .section .bss.boot, "aw", @nobits
    .balign 4096
boot_pml4:  .skip 4096
boot_pdpt:  .skip 4096
boot_pd:    .skip 4096 * 4
    /* Left out of the root's own page tables (`memory::init_paging`): a
       stack overflow faults (#PF, then #DF on its own IST stack) instead
       of overwriting the boot tables and the allocator's statics below. */
    .global boot_stack_guard
boot_stack_guard: .skip 4096
    .global boot_stack_bottom
    .balign 16
boot_stack_bottom: .skip {stack_size}
boot_stack_top:

    .section .rodata.boot, "a"
    .balign 8
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF        /* 0x08: 64-bit code */
    .quad 0x00CF92000000FFFF        /* 0x10: data */
boot_gdt_end:
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt

    .section .text.boot, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    /* A Multiboot2 loader sets EAX to 0x36d76289; only PVH is implemented. */
    cmpl $0x36d76289, %eax
    je 9f
    movl %ebx, %esi                 /* keep &hvm_start_info */

    /* PD entries: 2048 x 2 MiB, P|RW|PS. */
    movl $boot_pd, %edi
    xorl %ecx, %ecx
1:  movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax
    movl %eax, (%edi,%ecx,8)
    movl %ecx, %eax
    shrl $11, %eax
    movl %eax, 4(%edi,%ecx,8)
    incl %ecx
    cmpl $2048, %ecx
    jne 1b
    /* PDPT[0..4] -> the four PDs; PML4[0] -> PDPT. */
    movl $boot_pdpt, %edi
    xorl %ecx, %ecx
2:  movl %ecx, %eax
    shll $12, %eax
    addl $boot_pd, %eax
    orl $0x3, %eax
    movl %eax, (%edi,%ecx,8)
    incl %ecx
    cmpl $4, %ecx
    jne 2b
    movl $boot_pdpt, %eax
    orl $0x3, %eax
    movl %eax, boot_pml4

    movl %cr4, %eax
    orl $(1 << 5), %eax             /* PAE */
    movl %eax, %cr4
    movl $boot_pml4, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx          /* EFER */
    rdmsr
    orl $((1 << 8) | (1 << 11)), %eax /* LME | NXE */
    wrmsr
    movl %cr0, %eax
    orl $0x80010001, %eax           /* PG | WP | PE */
    movl %eax, %cr0
    lgdt boot_gdt_ptr
    ljmp $0x08, $long_mode_entry

9:  /* Unsupported boot protocol: say so on debugcon and stop. */
    movw $0xE9, %dx
    movb $'M', %al
    outb %al, %dx
10: hlt
    jmp 10b

    .code64
long_mode_entry:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movabsq $boot_stack_top, %rsp
    xorl %ebp, %ebp
    movl %esi, %edi                 /* zero-extends: first argument */
    call {main}
11: hlt
    jmp 11b
    "#,
    stack_size = const BOOT_STACK_SIZE,
    main = sym crate::root_main,
    options(att_syntax)
);
