//! An I/O APIC as a child sees it on its MMIO page (Intel 82093AA
//! datasheet; version 0x20 adds the EOI register, as QEMU's and OpenVMM's
//! `vm/devices/ioapic` models do), with 24 pins. The root's worker feeds it
//! the lines of the devices it emulates (COM1 on pin 4) and sends what it
//! fires to hv-core as HvCallAssertVirtualInterrupt.
//!
//! Registers, through the index at offset 0x00 (IOREGSEL) and the window at
//! 0x10 (IOWIN): 0x00 ID (bits 27:24), 0x01 version (bits 7:0, 0x20) and
//! highest pin (bits 23:16), 0x02 arbitration ID, 0x10 + 2n / 0x11 + 2n the
//! low and high halves of pin n's redirection entry. Offset 0x40 (EOI)
//! takes a vector and ends the remote IRR of the level-triggered pins that
//! use it.
//!
//! Everything a guest writes is data: an index past the last register reads
//! 0 and ignores writes; a vector below 16 is delivered as written (the
//! child's APIC refuses it, as hardware does).

/// Pins (redirection entries).
pub const PINS: usize = 24;
/// Version register value: version 0x20, highest pin 23.
pub const VERSION: u32 = 0x20 | ((PINS as u32 - 1) << 16);
/// Byte offset of IOREGSEL.
pub const IOREGSEL: u64 = 0x00;
/// Byte offset of IOWIN.
pub const IOWIN: u64 = 0x10;
/// Byte offset of the EOI register (version 0x20).
pub const EOI: u64 = 0x40;

/// Redirection entry bits (low dword; the destination is bits 63:56).
mod rte {
    pub const VECTOR: u64 = 0xFF;
    pub const DELIVERY_MODE_SHIFT: u32 = 8;
    pub const LOGICAL: u64 = 1 << 11;
    pub const DELIVERY_STATUS: u64 = 1 << 12;
    pub const REMOTE_IRR: u64 = 1 << 14;
    pub const LEVEL: u64 = 1 << 15;
    pub const MASKED: u64 = 1 << 16;
    /// Bits the guest may write: all but delivery status and remote IRR.
    pub const WRITABLE: u64 = !(DELIVERY_STATUS | REMOTE_IRR);
    pub const DESTINATION_SHIFT: u32 = 56;
}

/// Delivery modes of a redirection entry (bits 10:8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    /// 000: fixed.
    Fixed,
    /// 001: lowest priority.
    LowestPriority,
    /// Anything else (SMI, NMI, INIT, ExtINT, reserved), as its bits.
    Other(u8),
}

/// What a pin fired: the message an I/O APIC sends to the local APICs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupt {
    /// The pin.
    pub pin: u8,
    /// The vector.
    pub vector: u8,
    /// How it is delivered.
    pub mode: DeliveryMode,
    /// Logical (true) or physical destination mode.
    pub logical: bool,
    /// APIC id or logical destination (8 bits).
    pub destination: u8,
    /// Level-triggered.
    pub level: bool,
}

/// Pins that fired, as a bit mask (bit n = pin n); each one's message is
/// [`IoApic::message`].
pub type Fired = u32;

/// The I/O APIC's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoApic {
    id: u8,
    select: u8,
    entries: [u64; PINS],
    /// Each pin's input level.
    lines: u32,
    /// Interrupts fired since power-on, per pin.
    fired: [u64; PINS],
}

impl IoApic {
    /// Power-on state: every pin masked, edge-triggered, vector 0.
    pub const fn new(id: u8) -> Self {
        Self {
            id: id & 0xF,
            select: 0,
            entries: [rte::MASKED; PINS],
            lines: 0,
            fired: [0; PINS],
        }
    }

    /// A guest read of `size` bytes at `offset` in the MMIO page.
    pub fn read(&self, offset: u64) -> u32 {
        match offset {
            IOREGSEL => u32::from(self.select),
            IOWIN => self.register(self.select),
            _ => 0,
        }
    }

    /// A guest write of `value` at `offset`; the pins it made fire (an
    /// unmasked level-triggered pin whose line is high, an EOI that ended
    /// a remote IRR while the line stays high).
    pub fn write(&mut self, offset: u64, value: u32) -> Fired {
        match offset {
            IOREGSEL => {
                self.select = value as u8;
                0
            }
            IOWIN => self.write_register(self.select, value),
            EOI => self.eoi(value as u8),
            _ => 0,
        }
    }

    fn register(&self, index: u8) -> u32 {
        match index {
            0x00 => u32::from(self.id) << 24,
            0x01 => VERSION,
            0x02 => u32::from(self.id) << 24,
            0x10..=0x3F => {
                let entry = self.entries[usize::from(index - 0x10) / 2];
                if index.is_multiple_of(2) {
                    entry as u32
                } else {
                    (entry >> 32) as u32
                }
            }
            _ => 0,
        }
    }

    fn write_register(&mut self, index: u8, value: u32) -> Fired {
        match index {
            0x00 => {
                self.id = ((value >> 24) & 0xF) as u8;
                0
            }
            0x10..=0x3F => {
                let pin = usize::from(index - 0x10) / 2;
                let old = self.entries[pin];
                let merged = if index.is_multiple_of(2) {
                    (old & !0xFFFF_FFFF) | u64::from(value)
                } else {
                    (old & 0xFFFF_FFFF) | (u64::from(value) << 32)
                };
                let mut entry = (merged & rte::WRITABLE) | (old & rte::REMOTE_IRR);
                // An edge-triggered pin has no remote IRR.
                if entry & rte::LEVEL == 0 {
                    entry &= !rte::REMOTE_IRR;
                }
                self.entries[pin] = entry;
                self.fire_if_level_pending(pin)
            }
            // ID-only and read-only registers, and indices past the last pin.
            _ => 0,
        }
    }

    /// A level-triggered pin whose line is high, unmasked and without a
    /// remote IRR fires (and takes the remote IRR).
    fn fire_if_level_pending(&mut self, pin: usize) -> Fired {
        let entry = self.entries[pin];
        if entry & rte::LEVEL != 0
            && entry & (rte::MASKED | rte::REMOTE_IRR) == 0
            && self.lines & (1 << pin) != 0
        {
            self.entries[pin] |= rte::REMOTE_IRR;
            self.fired[pin] += 1;
            return 1 << pin;
        }
        0
    }

    /// The EOI register (or an EOI broadcast): level-triggered pins with
    /// `vector` lose their remote IRR, and fire again if still asserted.
    pub fn eoi(&mut self, vector: u8) -> Fired {
        let mut fired = 0;
        for pin in 0..PINS {
            let entry = self.entries[pin];
            if entry & rte::LEVEL != 0 && entry & rte::VECTOR == u64::from(vector) {
                self.entries[pin] &= !rte::REMOTE_IRR;
                fired |= self.fire_if_level_pending(pin);
            }
        }
        fired
    }

    /// A device drives pin `pin`'s line to `high`. An edge-triggered pin
    /// fires on a rising edge while unmasked (an edge while masked is lost,
    /// as on the 82093AA); a level-triggered one while high, unmasked and
    /// without a remote IRR. Pins past the last are ignored.
    pub fn set_line(&mut self, pin: u8, high: bool) -> Fired {
        let pin = usize::from(pin);
        if pin >= PINS {
            return 0;
        }
        let bit = 1u32 << pin;
        let was_high = self.lines & bit != 0;
        if high {
            self.lines |= bit;
        } else {
            self.lines &= !bit;
        }
        let entry = self.entries[pin];
        if entry & rte::LEVEL != 0 {
            return self.fire_if_level_pending(pin);
        }
        if high && !was_high && entry & rte::MASKED == 0 {
            self.fired[pin] += 1;
            return bit;
        }
        0
    }

    /// The message pin `pin` sends (its redirection entry as it is now).
    pub fn message(&self, pin: u8) -> Option<Interrupt> {
        let entry = *self.entries.get(usize::from(pin))?;
        let mode = match ((entry >> rte::DELIVERY_MODE_SHIFT) & 7) as u8 {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            other => DeliveryMode::Other(other),
        };
        Some(Interrupt {
            pin,
            vector: (entry & rte::VECTOR) as u8,
            mode,
            logical: entry & rte::LOGICAL != 0,
            destination: (entry >> rte::DESTINATION_SHIFT) as u8,
            level: entry & rte::LEVEL != 0,
        })
    }

    /// The messages of the pins in `fired`, lowest pin first.
    pub fn messages(&self, fired: Fired) -> impl Iterator<Item = Interrupt> + '_ {
        (0..PINS as u8)
            .filter(move |p| fired & (1 << p) != 0)
            .filter_map(|p| self.message(p))
    }

    /// Interrupts pin `pin` has fired since power-on.
    pub fn fired_count(&self, pin: u8) -> u64 {
        self.fired.get(usize::from(pin)).copied().unwrap_or(0)
    }

    /// Whether pin `pin` is masked.
    pub fn masked(&self, pin: u8) -> bool {
        self.entries
            .get(usize::from(pin))
            .is_none_or(|e| e & rte::MASKED != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(io: &mut IoApic, pin: u8, low: u32, high: u32) -> Fired {
        io.write(IOREGSEL, u32::from(0x10 + 2 * pin));
        let a = io.write(IOWIN, low);
        io.write(IOREGSEL, u32::from(0x11 + 2 * pin));
        a | io.write(IOWIN, high)
    }

    fn reg(io: &mut IoApic, index: u32) -> u32 {
        io.write(IOREGSEL, index);
        io.read(IOWIN)
    }

    #[test]
    fn identification_registers() {
        let mut io = IoApic::new(3);
        assert_eq!(reg(&mut io, 0), 3 << 24);
        assert_eq!(reg(&mut io, 1), 0x0017_0020);
        assert_eq!(reg(&mut io, 2), 3 << 24);
        io.write(IOREGSEL, 0);
        io.write(IOWIN, 0x0900_0000);
        assert_eq!(reg(&mut io, 0), 9 << 24);
        // The version is read-only; an index past the last pin reads 0.
        io.write(IOREGSEL, 1);
        io.write(IOWIN, 0);
        assert_eq!(reg(&mut io, 1), VERSION);
        assert_eq!(reg(&mut io, 0x40), 0);
        assert_eq!(io.read(IOREGSEL), 0x40);
        assert_eq!(io.read(0x20), 0);
    }

    #[test]
    fn pins_start_masked_and_edges_fire_only_when_unmasked() {
        let mut io = IoApic::new(0);
        assert!((0..PINS as u8).all(|p| io.masked(p)));
        assert_eq!(reg(&mut io, 0x18), rte::MASKED as u32);
        // Masked: the edge is lost.
        assert_eq!(io.set_line(4, true), 0);
        io.set_line(4, false);
        // Vector 0x24, fixed, physical, to APIC 1.
        assert_eq!(program(&mut io, 4, 0x24, 1 << 24), 0);
        assert_eq!(io.set_line(4, true), 1 << 4);
        // Still high: no new edge.
        assert_eq!(io.set_line(4, true), 0);
        assert_eq!(io.set_line(4, false), 0);
        assert_eq!(io.set_line(4, true), 1 << 4);
        assert_eq!(io.fired_count(4), 2);
        let m = io.message(4).expect("pin 4");
        assert_eq!(
            m,
            Interrupt {
                pin: 4,
                vector: 0x24,
                mode: DeliveryMode::Fixed,
                logical: false,
                destination: 1,
                level: false
            }
        );
        assert_eq!(io.messages(1 << 4).collect::<Vec<_>>(), [m]);
    }

    #[test]
    fn entries_decode_mode_destination_and_keep_read_only_bits() {
        let mut io = IoApic::new(0);
        // Lowest priority (001), logical, level, delivery status and remote
        // IRR written as ones (read-only: stay 0).
        program(
            &mut io,
            9,
            0x31 | (1 << 8) | (1 << 11) | (1 << 12) | (1 << 14) | (1 << 15),
            0x0300_0000,
        );
        assert_eq!(reg(&mut io, 0x22), 0x31 | (1 << 8) | (1 << 11) | (1 << 15));
        assert_eq!(reg(&mut io, 0x23), 0x0300_0000);
        let m = io.message(9).expect("pin 9");
        assert_eq!(
            (m.mode, m.logical, m.destination, m.level),
            (DeliveryMode::LowestPriority, true, 3, true)
        );
        program(&mut io, 9, 4 << 8, 0);
        assert_eq!(io.message(9).map(|m| m.mode), Some(DeliveryMode::Other(4)));
        assert_eq!(io.message(24), None);
        assert_eq!(io.set_line(24, true), 0);
    }

    #[test]
    fn level_pins_hold_remote_irr_until_eoi() {
        let mut io = IoApic::new(0);
        // Line high while masked: nothing yet.
        assert_eq!(io.set_line(5, true), 0);
        // Unmasking a level pin whose line is high fires it.
        assert_eq!(program(&mut io, 5, 0x41 | (1 << 15), 0), 1 << 5);
        assert_ne!(reg(&mut io, 0x1A) & (1 << 14), 0, "remote IRR set");
        // Still high, remote IRR set: nothing more.
        assert_eq!(io.set_line(5, true), 0);
        // An EOI for another vector does nothing; for this one, fires again
        // (the line is still high).
        assert_eq!(io.write(EOI, 0x42), 0);
        assert_eq!(io.write(EOI, 0x41), 1 << 5);
        // Line dropped, EOI: remote IRR clear, nothing fires.
        io.set_line(5, false);
        assert_eq!(io.eoi(0x41), 0);
        assert_eq!(reg(&mut io, 0x1A) & (1 << 14), 0);
        assert_eq!(io.fired_count(5), 2);
        // Switching the pin to edge clears a remote IRR.
        io.set_line(5, true);
        assert_eq!(reg(&mut io, 0x1A) & (1 << 14), 1 << 14);
        program(&mut io, 5, 0x41, 0);
        assert_eq!(reg(&mut io, 0x1A) & (1 << 14), 0);
    }

    proptest::proptest! {
        /// Any sequence of guest accesses and line changes is handled
        /// without a panic, pins fire only when unmasked, and the read-only
        /// registers keep their values.
        #[test]
        fn any_access_sequence_is_safe(ops in proptest::collection::vec((0u8..4, proptest::num::u64::ANY, proptest::num::u32::ANY), 0..300)) {
            let mut io = IoApic::new(0);
            for (kind, offset, value) in ops {
                let fired = match kind {
                    0 => io.write(offset % 0x50, value),
                    1 => { let _ = io.read(offset % 0x50); 0 }
                    2 => io.set_line((offset % 30) as u8, value & 1 != 0),
                    _ => io.eoi(value as u8),
                };
                for m in io.messages(fired) {
                    proptest::prop_assert!(!io.masked(m.pin));
                }
            }
            proptest::prop_assert_eq!(reg(&mut io, 1), VERSION);
        }
    }
}
