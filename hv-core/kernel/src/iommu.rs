//! Keeping device DMA out of hv-core's region with the AMD IOMMU.
//!
//! Before the root runs, hv-core finds the IOMMU through the ACPI IVRS
//! table, builds a device table for PCI bus 0 whose 256 entries all point at
//! one set of I/O page tables (the root's RAM, identity, read-write, except
//! hv-core's region, which is denied), gives it a command buffer and an event
//! log, enables translation and invalidates anything cached. The IOMMU's MMIO
//! page is then left out of the root's NPT (see `root.rs`). Formats and the
//! table builder are in the host-tested `amd_iommu` crate.
//!
//! The root could otherwise undo this through the IOMMU's PCI function, so
//! hv-core also guards PCI configuration space ([`ConfigGuards`]): the
//! root's accesses to ports 0xCF8..=0xCFF are intercepted and done on its
//! behalf, except writes to the IOMMU's function (and, on q35, to the host
//! bridge's PCIEXBAR, which places the ECAM window), which are dropped; and
//! those functions' ECAM pages (found through the ACPI MCFG table) are left
//! out of the root's NPT.

use crate::memory::{self, RegionTables};
use amd_iommu::pci::{self, ConfigGuard, PortAccess, Refusal};
use amd_iommu::{DeviceTableEntry, Event, IoPageTables, Ivhd, LEVELS, Mcfg, PhysRead, command, event, mmio};
use boot_proto::handoff::Handoff;
use core::ops::Range;
use kernel_x86::arch::Port;
use phys_mem::PAGE_SIZE;

/// Requester IDs covered: PCI bus 0 (every device QEMU's q35 has).
const DEVICES: u64 = 256;
/// Device table pages: 256 entries of 32 bytes.
const DEVICE_TABLE_PAGES: u64 = DEVICES * DeviceTableEntry::SIZE / PAGE_SIZE;
/// Command buffer and event log: 256 entries of 16 bytes, one page each.
const RING_LOG2: u8 = 8;
const RING_BYTES: u64 = (1 << RING_LOG2) * command::SIZE;
/// Domain of every device (they share one I/O address space).
const DOMAIN: u16 = 1;
/// Byte repeated (with its offset) in the canary page.
const CANARY_SEED: u8 = 0xC5;

/// The IOMMU, once enabled.
pub struct Iommu {
    /// MMIO base.
    pub mmio: u64,
    /// Its own requester ID.
    pub devid: u16,
    event_log: u64,
    event_head: u64,
    /// Events read from the log since launch.
    pub events: u64,
    /// Of those, IO_PAGE_FAULTs.
    pub page_faults: u64,
    /// The last event read.
    pub last_event: [u64; 2],
    /// Times the IOMMU's PCI status showed a refused DMA.
    pub target_aborts: u64,
    /// What the root may not write in PCI configuration space.
    pub config: ConfigGuards,
}

/// Most functions whose configuration hv-core guards.
pub const MAX_GUARDS: usize = 2;

/// PCI configuration registers the root may not write: the IOMMU's whole
/// function and, on q35, the host bridge's PCIEXBAR. Writes through ports
/// 0xCF8..=0xCFF are filtered ([`ConfigGuards::root_io`]); the guarded
/// functions' ECAM pages are out of the root's NPT.
pub struct ConfigGuards {
    guards: [ConfigGuard; MAX_GUARDS],
    /// Each guard's function's ECAM page, if the MCFG table gives one.
    ecam: [Option<u64>; MAX_GUARDS],
    /// Each guard's ECAM page as the NPF log names it.
    ecam_names: [&'static str; MAX_GUARDS],
    count: usize,
    /// The root's writes (and string I/O) refused.
    pub refused: u64,
}

/// What became of a root access to the PCI configuration ports.
pub enum RootConfigIo {
    /// Done on the root's behalf.
    Done,
    /// A write reaching guarded registers: dropped.
    Refused(Refusal),
    /// String I/O (INS/OUTS): dropped.
    StringRefused,
}

impl ConfigGuards {
    fn new() -> Self {
        Self {
            guards: [ConfigGuard::NONE; MAX_GUARDS],
            ecam: [None; MAX_GUARDS],
            ecam_names: [""; MAX_GUARDS],
            count: 0,
            refused: 0,
        }
    }

    fn add(&mut self, guard: ConfigGuard, ecam_name: &'static str, mcfg: Option<&Mcfg>) {
        self.ecam[self.count] = mcfg.and_then(|m| m.config_page(0, guard.devid));
        self.ecam_names[self.count] = ecam_name;
        self.guards[self.count] = guard;
        self.count += 1;
    }

    /// The guards.
    pub fn guards(&self) -> &[ConfigGuard] {
        &self.guards[..self.count]
    }

    /// The guarded functions' ECAM pages, to be left out of the root's NPT.
    pub fn ecam_pages(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.ecam[..self.count]
            .iter()
            .flatten()
            .map(|&page| page..page + PAGE_SIZE)
    }

    /// The name of the guarded ECAM page holding `gpa`, if any.
    pub fn ecam_name(&self, gpa: u64) -> Option<&'static str> {
        (0..self.count).find_map(|i| {
            self.ecam[i]
                .filter(|page| (*page..page + PAGE_SIZE).contains(&gpa))
                .map(|_| self.ecam_names[i])
        })
    }

    /// Make the root's access to the configuration ports (it touches
    /// 0xCF8..=0xCFF) on its behalf: the same port and size; an IN merges
    /// the value into `rax` by size. String I/O is dropped. A write through
    /// the data window is dropped when the real address latch selects
    /// guarded registers ([`pci::root_may_write`]); hv-core's own
    /// configuration accesses restore the latch, so the latch read here is
    /// the root's.
    pub fn root_io(&mut self, access: PortAccess, string: bool, rax: &mut u64) -> RootConfigIo {
        if string {
            self.refused += 1;
            return RootConfigIo::StringRefused;
        }
        if !access.write {
            let value = port_in(access.port, access.size);
            *rax = match access.size {
                1 => (*rax & !0xFF) | value,
                2 => (*rax & !0xFFFF) | value,
                // A 32-bit destination is zero-extended in 64-bit mode.
                _ => value,
            };
            return RootConfigIo::Done;
        }
        if access.touches_data() {
            let latch = port_in(pci::CONFIG_ADDRESS, 4) as u32;
            let verdict = pci::root_may_write(access, latch, self.guards());
            if let Err(refusal) = verdict {
                self.refused += 1;
                return RootConfigIo::Refused(refusal);
            }
        }
        port_out(access.port, access.size, *rax);
        RootConfigIo::Done
    }
}

/// IN of `size` bytes (1, 2 or 4) from `port`, zero-extended.
fn port_in(port: u16, size: u8) -> u64 {
    use x86_64::instructions::port::Port;
    // The root may read all of these ports; a read has no side effect beyond
    // what the root asked for.
    // SAFETY: a PCI configuration port read on the root's behalf.
    unsafe {
        match size {
            1 => u64::from(Port::<u8>::new(port).read()),
            2 => u64::from(Port::<u16>::new(port).read()),
            _ => u64::from(Port::<u32>::new(port).read()),
        }
    }
}

/// OUT of the low `size` bytes (1, 2 or 4) of `value` to `port`.
fn port_out(port: u16, size: u8, value: u64) {
    use x86_64::instructions::port::Port;
    // `pci::root_may_write` allowed it: the write reaches nothing hv-core
    // guards.
    // SAFETY: a PCI configuration port write on the root's behalf.
    unsafe {
        match size {
            1 => Port::<u8>::new(port).write(value as u8),
            2 => Port::<u16>::new(port).write(value as u16),
            _ => Port::<u32>::new(port).write(value as u32),
        }
    }
}

/// What hv-core does against device DMA.
pub struct DmaGuard {
    /// The IOMMU, if one was found and enabled.
    pub iommu: Option<Iommu>,
    /// A page of hv-core's region filled with a known pattern.
    pub canary: u64,
    /// Its FNV-1a when filled.
    pub canary_expected: u64,
}

/// FNV-1a over `bytes`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// The canary page's current contents hashed.
pub fn canary_fnv(canary: u64) -> u64 {
    // SAFETY: `canary` is a page of hv-core's region it allocated in `init`,
    // identity-mapped; only devices could write it behind hv-core's back,
    // and reading it as bytes is valid whatever they wrote.
    fnv1a(unsafe { core::slice::from_raw_parts(canary as *const u8, PAGE_SIZE as usize) })
}

/// Firmware tables below 4 GiB, read through hv-core's identity map.
struct Firmware;

impl PhysRead for Firmware {
    fn read(&self, pa: u64, out: &mut [u8]) -> bool {
        let Some(end) = pa.checked_add(out.len() as u64) else {
            return false;
        };
        if end > 4 << 30 {
            return false;
        }
        // hv-core identity-maps all physical memory below 4 GiB at least;
        // firmware tables are plain memory.
        // SAFETY: an identity-mapped read without side effects.
        unsafe { core::ptr::copy_nonoverlapping(pa as *const u8, out.as_mut_ptr(), out.len()) };
        true
    }
}

/// The RSDP in the BIOS read-only area, the IOMMU it leads to and the ECAM
/// windows (MCFG), if any.
fn discover() -> Result<(Ivhd, Option<Mcfg>), amd_iommu::AcpiError> {
    const BIOS: Range<u64> = 0xE_0000..0x10_0000;
    // SAFETY: the BIOS area is identity-mapped low memory, read-only here.
    let area =
        unsafe { core::slice::from_raw_parts(BIOS.start as *const u8, (BIOS.end - BIOS.start) as usize) };
    let rsdp = amd_iommu::find_rsdp(area, BIOS.start).ok_or(amd_iommu::AcpiError::NoRsdp)?;
    let ivhd = amd_iommu::find_ivhd(&Firmware, rsdp)?;
    let mcfg = match amd_iommu::find_mcfg(&Firmware, rsdp) {
        Ok(m) => Some(m),
        Err(e) => {
            hvlog!("no usable MCFG table ({e:?}): no ECAM window to guard");
            None
        }
    };
    Ok((ivhd, mcfg))
}

/// Signaled Target Abort in the PCI status register (config offset 6, bit 11).
const PCI_STATUS_SIGNALED_TARGET_ABORT: u32 = 1 << (16 + 11);

/// Access the configuration dword at `offset` of requester `devid` on bus 0
/// through mechanism #1, restoring the address latch afterwards: the root
/// uses the same ports, and hv-core may run between its two accesses.
fn pci_config(devid: u16, offset: u8, write: Option<u32>) -> u32 {
    // SAFETY: hv-core reads or writes only the IOMMU's own configuration
    // (status bits it owns) and puts the root's address latch back.
    let (addr, data) = unsafe { (Port::new(0xCF8), Port::new(0xCFC)) };
    let saved = addr.read32();
    addr.write32(pci::address(devid, offset));
    let value = match write {
        Some(v) => {
            data.write32(v);
            v
        }
        None => data.read32(),
    };
    addr.write32(saved);
    value
}

fn pci_read32(devid: u16, offset: u8) -> u32 {
    pci_config(devid, offset, None)
}

fn pci_write32(devid: u16, offset: u8, value: u32) {
    pci_config(devid, offset, Some(value));
}

fn read_reg(base: u64, offset: u64) -> u64 {
    // SAFETY: `base` is the IOMMU's MMIO window from the IVRS table,
    // identity-mapped by hv-core, and `offset` one of its 8-byte registers.
    unsafe { ((base + offset) as *const u64).read_volatile() }
}

fn write_reg(base: u64, offset: u64, value: u64) {
    // SAFETY: as for `read_reg`; hv-core owns the IOMMU (the root cannot map
    // its window).
    unsafe { ((base + offset) as *mut u64).write_volatile(value) };
}

/// Fill the canary, then find, program and enable the IOMMU so that no bus-0
/// device can DMA into `region`. Without an IOMMU the machine still boots
/// (the log says that DMA is unprotected).
pub fn init(handoff: &Handoff, region: Range<u64>, gib_pages: bool) -> DmaGuard {
    let canary = memory::alloc_pages(1).expect("room for the DMA canary");
    // SAFETY: a fresh page of hv-core's region, exclusively ours.
    let page = unsafe { core::slice::from_raw_parts_mut(canary as *mut u8, PAGE_SIZE as usize) };
    for (i, b) in page.iter_mut().enumerate() {
        *b = CANARY_SEED ^ (i as u8);
    }
    let canary_expected = fnv1a(page);
    let iommu = match discover() {
        Ok((ivhd, mcfg)) => Some(enable(handoff, region, gib_pages, ivhd, mcfg.as_ref())),
        Err(e) => {
            hvlog!("no AMD IOMMU ({e:?}): device DMA can reach hv-core's region");
            None
        }
    };
    DmaGuard {
        iommu,
        canary,
        canary_expected,
    }
}

fn enable(handoff: &Handoff, region: Range<u64>, gib_pages: bool, ivhd: Ivhd, mcfg: Option<&Mcfg>) -> Iommu {
    let id = pci_read32(ivhd.devid, 0);
    let class = pci_read32(ivhd.devid, 8) >> 8;
    hvlog!(
        "IOMMU (IVHD type {:#x}) at {:#x}, PCI 00:{:02x}.{} ({:04x}:{:04x}, class {:06x}), capability at {:#x}",
        ivhd.kind,
        ivhd.mmio_base,
        (ivhd.devid >> 3) & 0x1F,
        ivhd.devid & 7,
        id & 0xFFFF,
        id >> 16,
        class,
        ivhd.capability_offset
    );
    let base = ivhd.mmio_base;
    assert!(ivhd.devid >> 8 == 0, "the IOMMU is expected on PCI bus 0");

    // One I/O address space: every RAM range of the memory map, identity,
    // read-write, except hv-core's region (denied).
    let mut tables = IoPageTables::new(RegionTables).expect("room for the I/O page tables");
    for r in handoff.ranges() {
        let whole = phys_mem::page_align_inward(r.base..r.base.saturating_add(r.size));
        if r.kind == boot_proto::pvh::MEMMAP_TYPE_RAM && whole.start < whole.end {
            tables
                .identity_map_except(whole, core::slice::from_ref(&region), gib_pages)
                .expect("the I/O page tables fit the region");
        }
    }
    let devtab = memory::alloc_pages(DEVICE_TABLE_PAGES).expect("room for the device table");
    let entry = DeviceTableEntry::translated(tables.root(), LEVELS, DOMAIN).to_bytes();
    for devid in 0..DEVICES {
        // SAFETY: the device table's pages were just allocated from hv-core's
        // region; entry `devid` lies inside them.
        unsafe {
            core::ptr::copy_nonoverlapping(
                entry.as_ptr(),
                (devtab + devid * DeviceTableEntry::SIZE) as *mut u8,
                entry.len(),
            )
        };
    }
    let cmdbuf = memory::alloc_pages(1).expect("room for the command buffer");
    let evtlog = memory::alloc_pages(1).expect("room for the event log");
    let store = memory::alloc_pages(1).expect("room for the completion store");

    // Program everything with translation off, then turn it on.
    write_reg(base, mmio::CONTROL, 0);
    write_reg(
        base,
        mmio::DEVICE_TABLE,
        mmio::device_table(devtab, DEVICE_TABLE_PAGES),
    );
    write_reg(base, mmio::COMMAND_BASE, mmio::ring(cmdbuf, RING_LOG2));
    write_reg(base, mmio::EVENT_BASE, mmio::ring(evtlog, RING_LOG2));
    for reg in [
        mmio::COMMAND_HEAD,
        mmio::COMMAND_TAIL,
        mmio::EVENT_HEAD,
        mmio::EVENT_TAIL,
    ] {
        write_reg(base, reg, 0);
    }
    write_reg(
        base,
        mmio::CONTROL,
        mmio::CONTROL_IOMMU_EN | mmio::CONTROL_EVENT_LOG_EN | mmio::CONTROL_CMD_BUF_EN,
    );

    // Drop anything firmware may have left cached, then wait for it.
    let mut commands = [[0u64; 2]; 3];
    let mut n = 0;
    if read_reg(base, mmio::EXT_FEATURES) & mmio::EFR_IA != 0 {
        commands[n] = command::invalidate_all();
        n += 1;
    } else {
        commands[n] = command::invalidate_domain(DOMAIN);
        n += 1;
    }
    commands[n] = command::completion_wait(store, 1);
    n += 1;
    for (i, c) in commands[..n].iter().enumerate() {
        // SAFETY: slot `i` of the command buffer page allocated above.
        unsafe { ((cmdbuf + i as u64 * command::SIZE) as *mut [u64; 2]).write_volatile(*c) };
    }
    write_reg(base, mmio::COMMAND_TAIL, n as u64 * command::SIZE);
    let mut spins = 0u64;
    // SAFETY: the completion store is a page of hv-core's region the IOMMU
    // writes once the commands before it are done.
    while unsafe { (store as *const u64).read_volatile() } != 1 {
        spins += 1;
        assert!(spins < 100_000_000, "the IOMMU did not complete its invalidation");
        core::hint::spin_loop();
    }
    hvlog!(
        "IOMMU enabled: device table for bus 0 at {:#x} (domain {DOMAIN}), {LEVELS}-level I/O page tables at {:#x}: root RAM identity, hv-core's region {:#x}..{:#x} denied",
        devtab,
        tables.root(),
        region.start,
        region.end
    );
    Iommu {
        mmio: base,
        devid: ivhd.devid,
        event_log: evtlog,
        event_head: 0,
        events: 0,
        page_faults: 0,
        last_event: [0; 2],
        target_aborts: 0,
        config: config_guards(ivhd.devid, mcfg),
    }
}

/// Guard the IOMMU's function and, on q35, the host bridge's PCIEXBAR
/// (through which the root could move the ECAM window, and with it the
/// IOMMU's configuration, to where its NPT maps).
fn config_guards(iommu: u16, mcfg: Option<&Mcfg>) -> ConfigGuards {
    let mut g = ConfigGuards::new();
    g.add(
        ConfigGuard {
            devid: iommu,
            registers: pci::WHOLE_FUNCTION,
            what: "the IOMMU's function",
        },
        "the IOMMU's PCI configuration (ECAM)",
        mcfg,
    );
    if pci_read32(0, 0) == pci::Q35_MCH_ID {
        g.add(
            ConfigGuard {
                devid: 0,
                registers: pci::Q35_PCIEXBAR,
                what: "the host bridge's PCIEXBAR",
            },
            "the host bridge's PCI configuration (ECAM)",
            mcfg,
        );
    }
    for (i, guard) in g.guards().iter().enumerate() {
        let (dev, func) = ((guard.devid >> 3) & 0x1F, guard.devid & 7);
        let (start, end) = (guard.registers.start, guard.registers.end);
        match g.ecam[i] {
            Some(page) => hvlog!(
                "root PCI config writes refused: {} (00:{dev:02x}.{func} offsets {start:#x}..{end:#x}); its ECAM page {page:#x} is out of the root's NPT",
                guard.what
            ),
            None => hvlog!(
                "root PCI config writes refused: {} (00:{dev:02x}.{func} offsets {start:#x}..{end:#x}); no ECAM page for it",
                guard.what
            ),
        }
    }
    g
}

impl Iommu {
    /// The MMIO window, kept out of the root's NPT.
    pub fn mmio_window(&self) -> Range<u64> {
        self.mmio..self.mmio + mmio::SIZE
    }

    /// Read and log every new event-log entry.
    ///
    /// An entry is recognised by being non-zero rather than by the tail
    /// register, and hv-core zeroes each slot it has read: QEMU 7.2's model
    /// writes entries to the log without ever advancing the tail register
    /// (and garbles their code and address fields). On hardware, which
    /// writes the entry before moving the tail, this reads the same entries.
    ///
    /// Every refused DMA also sets Signaled Target Abort in the IOMMU's PCI
    /// status (QEMU does this reliably); hv-core counts and clears it.
    pub fn drain_events(&mut self) {
        loop {
            let slot = (self.event_log + self.event_head) as *mut [u64; 2];
            // SAFETY: `event_head` is a 16-byte slot inside the event log
            // page allocated in `enable`, which only the IOMMU and hv-core use.
            let raw = unsafe { slot.read_volatile() };
            if raw == [0; 2] {
                break;
            }
            // SAFETY: as above; the slot is free again for the IOMMU.
            unsafe { slot.write_volatile([0; 2]) };
            let e = Event::decode(raw);
            self.events += 1;
            if e.code == event::IO_PAGE_FAULT {
                self.page_faults += 1;
            }
            self.last_event = raw;
            if self.events <= 16 {
                hvlog!(
                    "IOMMU event: {} from PCI 00:{:02x}.{} at address {:#x} (flags {:#x})",
                    e.name(),
                    (e.devid >> 3) & 0x1F,
                    e.devid & 7,
                    e.address,
                    e.flags
                );
            }
            self.event_head = (self.event_head + command::SIZE) % RING_BYTES;
        }
        write_reg(self.mmio, mmio::EVENT_HEAD, self.event_head);
        let status = pci_read32(self.devid, 4);
        if status & PCI_STATUS_SIGNALED_TARGET_ABORT != 0 {
            self.target_aborts += 1;
            hvlog!("IOMMU refused device DMA (its PCI status says signaled target abort)");
            // Write-one-to-clear; the command half is written back unchanged.
            pci_write32(
                self.devid,
                4,
                (status & 0xFFFF) | PCI_STATUS_SIGNALED_TARGET_ABORT,
            );
        }
    }
}
