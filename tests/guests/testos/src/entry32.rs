//! The test OS booted through a 32-bit protocol instead of its native ABI:
//! PVH (Xen `xen/include/public/arch-x86/hvm/start_info.h`: entry from the
//! `XEN_ELFNOTE_PHYS32_ENTRY` note in 32-bit protected mode, paging off,
//! EBX = &hvm_start_info) or Multiboot v1 (specification 0.6.96: header in
//! the first 8 KiB, entry with EAX = 0x2BADB002, EBX = &multiboot_info). The
//! Multiboot header uses the a.out kludge (flag 16) with addresses from
//! linker symbols, since the loader does not read ELF64 program headers for
//! Multiboot (QEMU refuses ELF64 Multiboot kernels).
//!
//! Both stubs switch to long mode on their own page tables and stack (in
//! .bss), build a [`BootInfo`] from the protocol's information (memory size
//! from the memory map, `name=` and `mode=` from the command line), print
//! what they were given (memory, command line, the first module as
//! "initrd") and run the normal test OS main. The image also carries the
//! native marker note, so `create --boot auto` keeps the native ABI.

use boot_proto::child::{self, BootInfo};
use boot_proto::{multiboot, pvh};
use core::arch::global_asm;
use core::cell::UnsafeCell;
use zerocopy::FromBytes;

global_asm!(
    r#"
    /* Native marker note: boot this image through its own ABI by default. */
    .section .note.hvchild, "a"
    .balign 4
    .long 8                         /* namesz: "HvChild\0" */
    .long 4                         /* descsz */
    .long 1                         /* type: NATIVE_TYPE */
    .asciz "HvChild"
    .balign 4
    .long 1                         /* ABI version */
    .balign 4

    /* PVH: XEN_ELFNOTE_PHYS32_ENTRY (18), a 32-bit physical entry. */
    .section .note.Xen, "a"
    .balign 4
    .long 4                         /* namesz: "Xen\0" */
    .long 4                         /* descsz */
    .long 18
    .asciz "Xen"
    .balign 4
    .long testos_pvh32
    .balign 4

    /* Multiboot v1 header: page-align modules, memory info, a.out kludge. */
    .section .text.multiboot, "ax"
    .balign 4
testos_mb_header:
    .long 0x1BADB002
    .long 0x00010003
    .long -(0x1BADB002 + 0x00010003)
    .long testos_mb_header          /* header_addr */
    .long __testos_image_start      /* load_addr */
    .long __testos_data_end         /* load_end_addr */
    .long __testos_bss_end          /* bss_end_addr */
    .long testos_mb32               /* entry_addr */

    .section .bss.entry32, "aw", @nobits
    .balign 4096
e32_pml4:   .skip 4096
e32_pdpt:   .skip 4096
e32_pd:     .skip 4096 * 4
    .balign 16
e32_stack:  .skip 65536
e32_stack_top:

    .section .rodata.entry32, "a"
    .balign 8
e32_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF        /* 0x08: 64-bit code */
    .quad 0x00CF92000000FFFF        /* 0x10: data */
e32_gdt_end:
e32_gdt_ptr:
    .word e32_gdt_end - e32_gdt - 1
    .quad e32_gdt

    .section .text.entry32, "ax"
    .code32
    .global testos_pvh32
testos_pvh32:
    cli
    cld
    movl $0x336ec578, %esi          /* say "PVH" to the 64-bit side */
    movl %ebx, %edi
    jmp e32_common
    .global testos_mb32
testos_mb32:
    cli
    cld
    movl %eax, %esi                 /* 0x2BADB002 */
    movl %ebx, %edi
e32_common:
    /* PD entries: 2048 x 2 MiB, P|RW|PS, identity over 4 GiB. */
    movl $e32_pd, %edx
    xorl %ecx, %ecx
1:  movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax
    movl %eax, (%edx,%ecx,8)
    movl %ecx, %eax
    shrl $11, %eax
    movl %eax, 4(%edx,%ecx,8)
    incl %ecx
    cmpl $2048, %ecx
    jne 1b
    movl $e32_pdpt, %edx
    xorl %ecx, %ecx
2:  movl %ecx, %eax
    shll $12, %eax
    addl $e32_pd, %eax
    orl $0x3, %eax
    movl %eax, (%edx,%ecx,8)
    incl %ecx
    cmpl $4, %ecx
    jne 2b
    movl $e32_pdpt, %eax
    orl $0x3, %eax
    movl %eax, e32_pml4

    movl $0x620, %eax               /* PAE OSFXSR OSXMMEXCPT, as the native entry */
    movl %eax, %cr4
    movl $e32_pml4, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx          /* EFER.LME */
    rdmsr
    orl $(1 << 8), %eax
    wrmsr
    movl $0x80050033, %eax          /* PG WP NE ET MP PE, as the native entry */
    movl %eax, %cr0
    lgdt e32_gdt_ptr
    ljmp $0x08, $e32_long

    .code64
e32_long:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movabsq $e32_stack_top, %rsp
    xorl %ebp, %ebp
    movl %edi, %edi                 /* upper halves are undefined after the switch */
    movl %esi, %esi
    call {main}
3:  hlt
    jmp 3b
    "#,
    main = sym entry32_main,
    options(att_syntax)
);

/// The boot info this entry builds (one VP: only VP 0 runs).
struct Slot(UnsafeCell<BootInfo>);
// SAFETY: written once by VP 0 before anything reads it; no other VP runs.
unsafe impl Sync for Slot {}
static INFO: Slot = Slot(UnsafeCell::new(BootInfo {
    magic: 0,
    memory_size: 0,
    vp_count: 0,
    reserved: 0,
    name: [0; 16],
    mode: [0; 32],
    targets: [0; 4],
}));

/// `len` bytes of guest-physical memory at `addr` (identity-mapped).
fn phys(addr: u64, len: usize) -> &'static [u8] {
    if addr == 0 || addr.checked_add(len as u64).is_none_or(|end| end > 1 << 32) {
        return &[];
    }
    // The first 4 GiB are identity-mapped by the stub's tables and the
    // loader handed us these addresses; reading a page we do not own would
    // stop this (test) guest, nothing else.
    // SAFETY: identity-mapped memory the loader described (see above).
    unsafe { core::slice::from_raw_parts(addr as *const u8, len) }
}

/// The NUL-terminated string at `addr` (at most 8 KiB).
fn c_str(addr: u64) -> &'static str {
    let bytes = phys(addr, 8192);
    let n = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    core::str::from_utf8(&bytes[..n]).unwrap_or("<not UTF-8>")
}

struct Given {
    protocol: &'static str,
    memory: u64,
    cmdline: &'static str,
    module: Option<(u64, u64)>,
}

fn from_pvh(info: u64) -> Result<Given, &'static str> {
    let si =
        pvh::StartInfo::parse(phys(info, size_of::<pvh::StartInfo>())).map_err(|_| "bad hvm_start_info")?;
    let n = si.memmap_entries as usize;
    let map = pvh::parse_table::<pvh::MemmapEntry>(phys(si.memmap_paddr, n.min(128) * 24), n.min(128))
        .ok_or("bad memory map")?;
    let memory = map
        .filter(|e| e.kind == pvh::MEMMAP_TYPE_RAM)
        .map(|e| e.addr.saturating_add(e.size))
        .max()
        .unwrap_or(0);
    let module = if si.nr_modules > 0 {
        let (m, _) =
            pvh::ModlistEntry::read_from_prefix(phys(si.modlist_paddr, 32)).map_err(|_| "bad module list")?;
        Some((m.paddr, m.size))
    } else {
        None
    };
    Ok(Given {
        protocol: "pvh",
        memory,
        cmdline: c_str(si.cmdline_paddr),
        module,
    })
}

fn from_multiboot(info: u64) -> Result<Given, &'static str> {
    let (mbi, _) = multiboot::Info::read_from_prefix(phys(info, size_of::<multiboot::Info>()))
        .map_err(|_| "bad multiboot_info")?;
    let memory = if mbi.flags & multiboot::INFO_MMAP != 0 {
        multiboot::mmap_entries(phys(mbi.mmap_addr as u64, mbi.mmap_length as usize))
            .filter(|e| e.kind == 1)
            .map(|e| e.base().saturating_add(e.len()))
            .max()
            .unwrap_or(0)
    } else if mbi.flags & multiboot::INFO_MEMORY != 0 {
        (1 << 20) + ((mbi.mem_upper as u64) << 10)
    } else {
        0
    };
    let cmdline = if mbi.flags & multiboot::INFO_CMDLINE != 0 {
        c_str(mbi.cmdline as u64)
    } else {
        ""
    };
    let module = if mbi.flags & multiboot::INFO_MODS != 0 && mbi.mods_count > 0 {
        let (m, _) = multiboot::Module::read_from_prefix(phys(mbi.mods_addr as u64, 16))
            .map_err(|_| "bad module list")?;
        Some((m.mod_start as u64, m.mod_end.saturating_sub(m.mod_start) as u64))
    } else {
        None
    };
    Ok(Given {
        protocol: "multiboot",
        memory,
        cmdline,
        module,
    })
}

extern "sysv64" fn entry32_main(info: u64, magic: u64) -> ! {
    let given = match magic as u32 {
        pvh::START_MAGIC => from_pvh(info),
        multiboot::BOOTLOADER_MAGIC => from_multiboot(info),
        _ => Err("entered with an unknown boot magic"),
    };
    let given = match given {
        Ok(g) => g,
        Err(why) => {
            crate::guest::say_line(format_args!("testos: 32-bit entry (magic {magic:#x}): {why}"));
            crate::guest::halt_forever()
        }
    };
    let word = |key: &str| {
        given
            .cmdline
            .split_ascii_whitespace()
            .find_map(|w| w.strip_prefix(key))
    };
    let name = word("name=").unwrap_or("child");
    let mode = word("mode=").unwrap_or("hello");
    crate::guest::say_line(format_args!(
        "testos {name}: booted via {}: memory {} MiB, cmdline '{}'",
        given.protocol,
        given.memory >> 20,
        given.cmdline
    ));
    match given.module {
        Some((addr, size)) => {
            let head = phys(addr, (size as usize).min(8));
            crate::guest::say_line(format_args!(
                "testos {name}: initrd {size} bytes at {addr:#x}, first bytes {:02x?}",
                head
            ));
        }
        None => crate::guest::say_line(format_args!("testos {name}: no initrd")),
    }
    let slot = INFO.0.get();
    // SAFETY: only VP 0 runs this, once; nothing else has a reference.
    let info: &'static BootInfo = unsafe {
        slot.write(BootInfo {
            magic: child::BOOT_INFO_MAGIC,
            memory_size: given.memory,
            vp_count: 1,
            reserved: 0,
            name: child::pad(name),
            mode: child::pad(mode),
            targets: [0; 4],
        });
        &*slot
    };
    crate::guest::testos_main(0, info)
}
