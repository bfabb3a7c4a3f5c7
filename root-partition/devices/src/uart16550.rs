//! A 16550A UART as a guest sees it on eight I/O ports (COM1 = 0x3F8).
//! Transmit is instant (the holding register is always empty), received bytes
//! wait in a 16-byte FIFO. Its interrupt output ([`Uart16550::interrupt_line`])
//! is what a PC wires to IRQ 4: a pending source enabled in IER, gated by
//! MCR OUT2. Sources, highest priority first (IIR): receiver line status
//! (overrun, cleared by reading LSR), received data (until the FIFO is
//! empty), transmitter holding register empty (raised by each THR write, as
//! the byte leaves at once, and when IER enables it; cleared by the IIR read
//! that reports it), as QEMU's `hw/char/serial.c` does.
//!
//! Registers (offset: read / write): 0 RBR / THR (DLL when DLAB), 1 IER (DLM
//! when DLAB), 2 IIR / FCR, 3 LCR, 4 MCR, 5 LSR, 6 MSR, 7 SCR.

/// Output bytes kept for `console` (oldest dropped first).
pub const OUTPUT_CAPACITY: usize = 16 * 1024;
const RX_FIFO: usize = 16;

const LSR_DATA_READY: u8 = 1 << 0;
const LSR_OVERRUN: u8 = 1 << 1;
const LSR_THR_EMPTY: u8 = 1 << 5;
const LSR_TX_IDLE: u8 = 1 << 6;
const LCR_DLAB: u8 = 1 << 7;
const MCR_OUT2: u8 = 1 << 3;
const MCR_LOOPBACK: u8 = 1 << 4;
const IER_RX: u8 = 1 << 0;
const IER_THRE: u8 = 1 << 1;
const IER_LINE_STATUS: u8 = 1 << 2;
const IIR_NONE: u8 = 0x01;
const IIR_THRE: u8 = 0x02;
const IIR_RX: u8 = 0x04;
const IIR_LINE_STATUS: u8 = 0x06;

/// The UART's state.
pub struct Uart16550 {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    fcr: u8,
    divisor: u16,
    overrun: bool,
    /// The THR-empty interrupt is pending.
    thre_pending: bool,
    rx: [u8; RX_FIFO],
    rx_len: usize,
    out: [u8; OUTPUT_CAPACITY],
    out_start: usize,
    out_len: usize,
    /// Bytes ever written (so readers can tell what is new).
    written: u64,
}

impl Default for Uart16550 {
    fn default() -> Self {
        Self::new()
    }
}

impl Uart16550 {
    /// Power-on state.
    pub const fn new() -> Self {
        Self {
            ier: 0,
            lcr: 0,
            mcr: 0,
            scr: 0,
            fcr: 0,
            divisor: 12,
            overrun: false,
            thre_pending: false,
            rx: [0; RX_FIFO],
            rx_len: 0,
            out: [0; OUTPUT_CAPACITY],
            out_start: 0,
            out_len: 0,
            written: 0,
        }
    }

    /// A guest `IN` from `offset` (0..8; others read as 0xFF).
    pub fn read(&mut self, offset: u16) -> u8 {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            0 if dlab => self.divisor as u8,
            0 => self.pop_rx(),
            1 if dlab => (self.divisor >> 8) as u8,
            1 => self.ier,
            2 => {
                let fifo = if self.fcr & 1 != 0 { 0xC0 } else { 0 };
                let id = self.pending_source().unwrap_or(IIR_NONE);
                // Reporting THR empty is what acknowledges it.
                if id == IIR_THRE {
                    self.thre_pending = false;
                }
                fifo | id
            }
            3 => self.lcr,
            4 => self.mcr,
            5 => {
                let mut lsr = LSR_THR_EMPTY | LSR_TX_IDLE;
                if self.rx_len > 0 {
                    lsr |= LSR_DATA_READY;
                }
                if self.overrun {
                    lsr |= LSR_OVERRUN;
                    self.overrun = false;
                }
                lsr
            }
            // Modem status: CTS, DSR, DCD asserted (a connected terminal).
            6 => 0xB0,
            7 => self.scr,
            _ => 0xFF,
        }
    }

    /// A guest `OUT` of `value` to `offset`.
    pub fn write(&mut self, offset: u16, value: u8) {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            0 if dlab => self.divisor = (self.divisor & 0xFF00) | value as u16,
            0 => {
                if self.mcr & MCR_LOOPBACK != 0 {
                    self.push_rx(value);
                } else {
                    self.push_out(value);
                }
                // Sent at once: the holding register is empty again.
                self.thre_pending = true;
            }
            1 if dlab => self.divisor = (self.divisor & 0x00FF) | ((value as u16) << 8),
            1 => {
                // Enabling the THR-empty interrupt while the register is
                // empty raises it (Linux's UART_BUG_THRE probe relies on it).
                if value & IER_THRE != 0 && self.ier & IER_THRE == 0 {
                    self.thre_pending = true;
                }
                self.ier = value & 0x0F;
            }
            2 => {
                self.fcr = value;
                if value & 2 != 0 {
                    self.rx_len = 0;
                }
            }
            3 => self.lcr = value,
            4 => self.mcr = value & 0x1F,
            7 => self.scr = value,
            _ => {}
        }
    }

    /// The highest-priority interrupt source pending and enabled, as its IIR
    /// code.
    fn pending_source(&self) -> Option<u8> {
        if self.ier & IER_LINE_STATUS != 0 && self.overrun {
            Some(IIR_LINE_STATUS)
        } else if self.ier & IER_RX != 0 && self.rx_len > 0 {
            Some(IIR_RX)
        } else if self.ier & IER_THRE != 0 && self.thre_pending {
            Some(IIR_THRE)
        } else {
            None
        }
    }

    /// The interrupt output as a PC wires it to IRQ 4: a source pending,
    /// MCR OUT2 set, and not in loopback (where OUT2 loops back to the
    /// modem status instead).
    pub fn interrupt_line(&self) -> bool {
        self.mcr & (MCR_OUT2 | MCR_LOOPBACK) == MCR_OUT2 && self.pending_source().is_some()
    }

    /// Bytes the receive FIFO can take before it overruns.
    pub fn rx_room(&self) -> usize {
        RX_FIFO - self.rx_len
    }

    /// Queue a byte typed at the console for the guest to read.
    pub fn push_rx(&mut self, b: u8) {
        if self.rx_len == RX_FIFO {
            self.overrun = true;
            return;
        }
        self.rx[self.rx_len] = b;
        self.rx_len += 1;
    }

    fn pop_rx(&mut self) -> u8 {
        if self.rx_len == 0 {
            return 0;
        }
        let b = self.rx[0];
        self.rx.copy_within(1..self.rx_len, 0);
        self.rx_len -= 1;
        b
    }

    fn push_out(&mut self, b: u8) {
        let at = (self.out_start + self.out_len) % OUTPUT_CAPACITY;
        self.out[at] = b;
        if self.out_len == OUTPUT_CAPACITY {
            self.out_start = (self.out_start + 1) % OUTPUT_CAPACITY;
        } else {
            self.out_len += 1;
        }
        self.written += 1;
    }

    /// Total bytes the guest has written.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The output written after byte number `since` that is still kept
    /// (oldest first, as up to two slices), and the count it ends at.
    pub fn output_since(&self, since: u64) -> ([&[u8]; 2], u64) {
        let kept_from = self.written - self.out_len as u64;
        let from = since.clamp(kept_from, self.written);
        let skip = (from - kept_from) as usize;
        let start = (self.out_start + skip) % OUTPUT_CAPACITY;
        let len = self.out_len - skip;
        let first = (OUTPUT_CAPACITY - start).min(len);
        (
            [&self.out[start..start + first], &self.out[..len - first]],
            self.written,
        )
    }

    /// Forget all output and input (power cycle), keeping the byte counter.
    pub fn reset(&mut self) {
        let written = self.written;
        *self = Self::new();
        self.written = written;
        self.out_start = 0;
        self.out_len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(u: &Uart16550, since: u64) -> Vec<u8> {
        let (parts, _) = u.output_since(since);
        parts.concat()
    }

    #[test]
    fn transmit_and_lsr() {
        let mut u = Uart16550::new();
        assert_eq!(u.read(5) & LSR_THR_EMPTY, LSR_THR_EMPTY);
        for b in b"hi\n" {
            u.write(0, *b);
        }
        assert_eq!(collect(&u, 0), b"hi\n");
        assert_eq!(collect(&u, 2), b"\n");
        assert_eq!(u.written(), 3);
    }

    #[test]
    fn divisor_latch_does_not_transmit() {
        let mut u = Uart16550::new();
        u.write(3, 0x80);
        u.write(0, 0x01);
        u.write(1, 0x00);
        u.write(3, 0x03);
        assert_eq!(u.written(), 0);
        assert_eq!(u.read(3), 0x03);
        u.write(3, 0x80);
        assert_eq!(u.read(0), 0x01);
    }

    #[test]
    fn receive_fifo_and_overrun() {
        let mut u = Uart16550::new();
        assert_eq!(u.read(5) & LSR_DATA_READY, 0);
        for i in 0..20u8 {
            u.push_rx(i);
        }
        assert_eq!(
            u.read(5) & (LSR_DATA_READY | LSR_OVERRUN),
            LSR_DATA_READY | LSR_OVERRUN
        );
        assert_eq!(u.read(5) & LSR_OVERRUN, 0, "overrun clears on read");
        for i in 0..16u8 {
            assert_eq!(u.read(0), i);
        }
        assert_eq!(u.read(5) & LSR_DATA_READY, 0);
        assert_eq!(u.read(9), 0xFF);
    }

    #[test]
    fn interrupt_sources_priorities_and_out2() {
        let mut u = Uart16550::new();
        // Nothing enabled: no line, IIR says none.
        u.push_rx(b'a');
        assert!(!u.interrupt_line());
        assert_eq!(u.read(2) & 0x0F, IIR_NONE);
        // Enabled but OUT2 clear: IIR reports it, the line stays low.
        u.write(1, IER_RX);
        assert_eq!(u.read(2) & 0x0F, IIR_RX);
        assert!(!u.interrupt_line());
        u.write(4, MCR_OUT2);
        assert!(u.interrupt_line());
        // Loopback disconnects the output.
        u.write(4, MCR_OUT2 | MCR_LOOPBACK);
        assert!(!u.interrupt_line());
        u.write(4, MCR_OUT2);
        // Reading the byte ends it.
        assert_eq!(u.read(0), b'a');
        assert!(!u.interrupt_line());
        assert_eq!(u.read(2) & 0x0F, IIR_NONE);
        // Overrun outranks data and ends with the LSR read.
        u.write(1, IER_RX | IER_LINE_STATUS);
        for i in 0..17u8 {
            u.push_rx(i);
        }
        assert_eq!(u.read(2) & 0x0F, IIR_LINE_STATUS);
        u.read(5);
        assert_eq!(u.read(2) & 0x0F, IIR_RX);
    }

    #[test]
    fn thr_empty_is_raised_by_writes_and_enabling_and_acknowledged_by_iir() {
        let mut u = Uart16550::new();
        u.write(4, MCR_OUT2);
        // Enabling it while the register is empty raises it, as Linux's
        // UART_BUG_THRE probe expects: twice in a row.
        for _ in 0..2 {
            u.write(1, IER_THRE);
            assert!(u.interrupt_line());
            assert_eq!(u.read(2) & 0x0F, IIR_THRE);
            assert!(!u.interrupt_line(), "reporting it acknowledged it");
            assert_eq!(u.read(2) & 0x0F, IIR_NONE);
            u.write(1, 0);
        }
        // Each byte sent raises it again.
        u.write(1, IER_THRE);
        u.read(2);
        u.write(0, b'x');
        assert!(u.interrupt_line());
        // Disabling it drops the line; the FIFO bits stay in IIR.
        u.write(1, 0);
        assert!(!u.interrupt_line());
        u.write(2, 1);
        assert_eq!(u.read(2), 0xC0 | IIR_NONE);
    }

    #[test]
    fn output_ring_keeps_the_newest() {
        let mut u = Uart16550::new();
        for i in 0..(OUTPUT_CAPACITY + 10) {
            u.write(0, (i % 251) as u8);
        }
        let all = collect(&u, 0);
        assert_eq!(all.len(), OUTPUT_CAPACITY);
        assert_eq!(all[0], 10_u8);
        assert_eq!(*all.last().unwrap(), ((OUTPUT_CAPACITY + 9) % 251) as u8);
        assert_eq!(collect(&u, u.written()).len(), 0);
    }

    proptest::proptest! {
        #[test]
        fn any_port_sequence_is_safe(ops in proptest::collection::vec((0u16..10, proptest::num::u8::ANY, proptest::bool::ANY), 0..200)) {
            let mut u = Uart16550::new();
            for (off, v, write) in ops {
                if write { u.write(off, v) } else { let _ = u.read(off); }
            }
            let (parts, end) = u.output_since(0);
            proptest::prop_assert!(parts[0].len() + parts[1].len() <= OUTPUT_CAPACITY);
            proptest::prop_assert_eq!(end, u.written());
        }
    }
}
