//! The boot sequence, from the PVH entry to the shell.

use crate::hv::{self, Discovery, HvRegion};
use crate::manager::Manager;
use crate::{memory, qemu, scenarios, shell, timer};
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use boot_proto::bundle::{self, Bundle};
use boot_proto::handoff::{MAX_RANGES, PhysRange};
use boot_proto::pvh::{self, MemmapEntry, ModlistEntry, StartInfo};
use hv1_abi::HvStatus;
use kernel_x86::traps::{self, CpuTables, ExceptionFrame};
use phys_mem::{PAGE_SIZE, page_align_inward};

/// The bundle entry holding the partition manifest.
pub const MANIFEST_ENTRY: &str = "manifest";

unsafe extern "C" {
    static __image_start: u8;
    static __image_end: u8;
}

/// Everything the boot learned, for the shell and the self-tests.
pub struct BootReport {
    /// CPUID view before hv-core was launched.
    pub before: Discovery,
    /// CPUID view after.
    pub after: Discovery,
    /// hv-core's region.
    pub region: HvRegion,
    /// HvCallGetPartitionId's answer.
    pub partition_id: Result<u64, HvStatus>,
    /// The kernel command line.
    pub cmdline: String,
    /// Free memory right after boot.
    pub free_after_boot: u64,
    /// RAM in the firmware map.
    pub ram_total: u64,
}

fn page_round_out(base: u64, len: u64) -> core::ops::Range<u64> {
    (base & !(PAGE_SIZE - 1))..(base + len).next_multiple_of(PAGE_SIZE)
}

/// Rust entry from `boot.rs`, on the boot stack with the boot page tables.
pub extern "sysv64" fn root_main(start_info_phys: u64) -> ! {
    crate::serial::CONSOLE.lock().init();
    println!(
        "\nroot: root-partition kernel {} starting (PVH)",
        env!("CARGO_PKG_VERSION")
    );

    // The boot tables identity-map the first 4 GiB, where QEMU puts the PVH data.
    // SAFETY: QEMU's PVH loader passes a valid hvm_start_info in EBX.
    let info_bytes = unsafe { memory::phys_slice(start_info_phys, size_of::<StartInfo>()) };
    let info = match StartInfo::parse(info_bytes) {
        Ok(info) => info,
        Err(e) => panic!("bad PVH start info at {start_info_phys:#x}: {e:?}"),
    };

    // Firmware memory map.
    let entries = (info.memmap_entries as usize).min(MAX_RANGES);
    // SAFETY: the start info says the table holds `memmap_entries` entries.
    let table = unsafe { memory::phys_slice(info.memmap_paddr, entries * size_of::<MemmapEntry>()) };
    let mut firmware = [PhysRange::default(); MAX_RANGES];
    let mut ram_top = 0;
    {
        let mut free = memory::FREE.lock();
        for (slot, e) in firmware.iter_mut().zip(
            pvh::parse_table::<MemmapEntry>(table, entries)
                .into_iter()
                .flatten(),
        ) {
            *slot = PhysRange {
                base: e.addr,
                size: e.size,
                kind: e.kind,
                reserved: 0,
            };
            println!(
                "root:   e820 {:#012x}..{:#012x} type {}",
                e.addr,
                e.addr.saturating_add(e.size),
                e.kind
            );
            if e.kind == pvh::MEMMAP_TYPE_RAM {
                let r = page_align_inward(e.addr..e.addr.saturating_add(e.size));
                if r.start < r.end {
                    free.union(r.clone()).expect("memory map fits the range set");
                    ram_top = ram_top.max(r.end);
                }
            }
        }
        // Carve out: real-mode memory, this kernel, and everything QEMU handed over.
        let image = (&raw const __image_start as u64)..(&raw const __image_end as u64);
        let mut reserve = |r: core::ops::Range<u64>| free.remove(r).expect("carving fits the range set");
        reserve(0..0x10_0000);
        reserve(page_round_out(image.start, image.end - image.start));
        reserve(page_round_out(start_info_phys, size_of::<StartInfo>() as u64));
        reserve(page_round_out(
            info.memmap_paddr,
            (entries * size_of::<MemmapEntry>()) as u64,
        ));
        if info.cmdline_paddr != 0 {
            reserve(page_round_out(info.cmdline_paddr, 4096));
        }
        if info.nr_modules != 0 {
            reserve(page_round_out(
                info.modlist_paddr,
                info.nr_modules as u64 * size_of::<ModlistEntry>() as u64,
            ));
        }
    }
    let modules = read_modules(&info);
    for m in &modules {
        memory::FREE
            .lock()
            .remove(page_round_out(m.paddr, m.size))
            .expect("carving fits the range set");
    }
    let firmware = &firmware[..entries];

    memory::init_paging(ram_top.max(4 << 30));
    memory::init_heap();
    traps::init(Box::leak(Box::new(CpuTables::new())), unexpected_exception);
    println!(
        "root: memory: {} MiB free of {} MiB RAM; own page tables, GDT/IDT/TSS and {} MiB heap up",
        memory::free_bytes() >> 20,
        firmware
            .iter()
            .filter(|r| r.kind == pvh::MEMMAP_TYPE_RAM)
            .map(|r| r.size)
            .sum::<u64>()
            >> 20,
        memory::HEAP_SIZE >> 20
    );
    let cmdline = read_cmdline(info.cmdline_paddr);
    println!("root: command line: '{cmdline}'");

    // The boot bundle (the single PVH module).
    let Some(module) = modules.first() else {
        panic!("no boot bundle: pass one with -initrd")
    };
    // SAFETY: the module's memory was removed from the free set above and is
    // never written.
    let bundle_bytes: &'static [u8] = unsafe { memory::phys_slice(module.paddr, module.size as usize) };
    let bundle = Bundle::parse(bundle_bytes).unwrap_or_else(|e| panic!("bad boot bundle: {e:?}"));
    let image = bundle
        .find(bundle::HV_CORE_ENTRY)
        .unwrap_or_else(|| panic!("boot bundle lacks '{}'", bundle::HV_CORE_ENTRY));

    let before = Discovery::read();
    println!(
        "root: before launch: hypervisor bit {}, leaf 0x40000000 vendor '{}', HV#1 interface {}",
        before.hypervisor_bit as u8,
        before.vendor.escape_ascii(),
        if before.is_hv1() { "present" } else { "absent" }
    );

    let region = hv::launch(image, firmware).unwrap_or_else(|e| panic!("hv-core launch failed: {e}"));
    let after = Discovery::read();
    println!(
        "root: demoted: now the root partition in SVM guest mode; CPUID says '{}' interface {:#x}, privileges {:#x}",
        after.vendor_str(),
        after.interface,
        after.privileges.bits()
    );

    let partition_id = match hv::setup_hypercall_page() {
        Ok(page) => {
            println!("root: hypercall page at {page:#x}");
            hv::get_partition_id()
        }
        Err(e) => panic!("hypercall page setup failed: {e}"),
    };
    match partition_id {
        Ok(id) => println!("root: HvCallGetPartitionId -> {id}"),
        Err(s) => println!("root: HvCallGetPartitionId failed: {s:?}"),
    }

    let ram_total = firmware
        .iter()
        .filter(|r| r.kind == pvh::MEMMAP_TYPE_RAM)
        .map(|r| r.size)
        .sum();
    let report = BootReport {
        before,
        after,
        region,
        partition_id,
        free_after_boot: memory::free_bytes(),
        cmdline,
        ram_total,
    };
    if let Some(name) = report
        .cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("test="))
    {
        let passed = scenarios::run(name, &report);
        qemu::exit(if passed {
            qemu::EXIT_SUCCESS
        } else {
            qemu::EXIT_FAILURE
        });
    }

    // Child partitions: images and the manifest come from the boot bundle.
    timer::init();
    crate::clock::init();
    match crate::synic::init() {
        Ok(()) => crate::println!(
            "root: SynIC enabled (SINT {} on vector {:#x})",
            crate::synic::MESSAGE_SINT,
            crate::synic::VECTOR
        ),
        Err(crate::synic::OutOfMemory) => {
            crate::println!("root: no memory for the SynIC pages: partitions cannot post")
        }
    }
    let images: Vec<(&'static str, &'static [u8])> = bundle
        .entries()
        .filter(|(name, _)| *name != bundle::HV_CORE_ENTRY && *name != MANIFEST_ENTRY)
        .collect();
    let canary = memory::FREE
        .lock()
        .alloc_top(PAGE_SIZE, PAGE_SIZE)
        .expect("a canary page");
    // SAFETY: a fresh root frame, identity-mapped, kept for good.
    unsafe { memory::phys_slice_mut(canary, PAGE_SIZE as usize) }.fill(0xC5);
    let mut manager = Manager::new(images, region, canary);
    if let Some(text) = bundle.find(MANIFEST_ENTRY) {
        let parsed = core::str::from_utf8(text)
            .map_err(|_| String::from("not UTF-8"))
            .and_then(|t| mgmt::manifest::parse(t).map_err(|e| alloc::format!("{e}")));
        match parsed {
            Ok(entries) => {
                for e in entries {
                    let name = e.spec.name.clone();
                    let started = if e.start { " and started" } else { "" };
                    match manager.create(e.spec, e.start) {
                        Ok(id) => println!("root: partition {id} ({name}) created{started}"),
                        Err(why) => println!("root: manifest: cannot create '{name}': {why}"),
                    }
                }
            }
            Err(why) => println!("root: ignoring the partition manifest: {why}"),
        }
    }
    let report = BootReport {
        free_after_boot: memory::free_bytes(),
        ..report
    };
    timer::enable_interrupts();
    shell::run(&report, &mut manager)
}

fn read_modules(info: &StartInfo) -> alloc_free::Modules {
    let mut out = alloc_free::Modules::new();
    let count = (info.nr_modules as usize).min(out.capacity());
    if count == 0 {
        return out;
    }
    // SAFETY: the start info says the list has `nr_modules` entries.
    let bytes = unsafe { memory::phys_slice(info.modlist_paddr, count * size_of::<ModlistEntry>()) };
    for m in pvh::parse_table::<ModlistEntry>(bytes, count)
        .into_iter()
        .flatten()
    {
        out.push(m);
    }
    out
}

/// The module list is read before the heap exists: a fixed array.
mod alloc_free {
    use boot_proto::pvh::ModlistEntry;

    pub struct Modules {
        items: [Option<ModlistEntry>; 4],
        len: usize,
    }

    impl Modules {
        pub fn new() -> Self {
            Self {
                items: [None; 4],
                len: 0,
            }
        }
        pub fn capacity(&self) -> usize {
            self.items.len()
        }
        pub fn push(&mut self, m: ModlistEntry) {
            if self.len < self.items.len() {
                self.items[self.len] = Some(m);
                self.len += 1;
            }
        }
        pub fn first(&self) -> Option<&ModlistEntry> {
            self.items[0].as_ref()
        }
    }

    impl<'a> IntoIterator for &'a Modules {
        type Item = &'a ModlistEntry;
        type IntoIter = core::iter::Flatten<core::slice::Iter<'a, Option<ModlistEntry>>>;
        fn into_iter(self) -> Self::IntoIter {
            self.items[..self.len].iter().flatten()
        }
    }
}

fn read_cmdline(phys: u64) -> String {
    if phys == 0 {
        return String::new();
    }
    // SAFETY: the PVH command line is a NUL-terminated string in a page the
    // root reserved; reading at most one page stays inside it.
    let bytes = unsafe { memory::phys_slice(phys, 4096 - (phys as usize & 0xFFF)) };
    let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..len]).into_owned()
}

/// An exception no probe expected: report it on the console and stop.
fn unexpected_exception(frame: &ExceptionFrame) -> ! {
    // SAFETY: the machine stops right after this; a raw UART avoids deadlocking
    // on a console lock the faulting code may hold.
    let mut uart = unsafe { crate::serial::Uart::new(crate::serial::COM1) };
    use core::fmt::Write;
    let _ = writeln!(uart, "\n*** root kernel: unhandled {frame}");
    qemu::exit(qemu::EXIT_FAILURE)
}
