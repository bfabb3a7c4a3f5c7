//! The root's console: a polled 16550 UART on COM1.

use core::fmt;
use kernel_x86::arch::Port;
use spin::Mutex;

/// COM1 base port: the interactive console.
pub const COM1: u16 = 0x3F8;
/// COM2 base port: the management channel for host tools (hvctl).
pub const COM2: u16 = 0x2F8;

/// A polled 16550.
pub struct Uart {
    base: u16,
}

impl Uart {
    /// # Safety
    /// The caller owns the UART at `base`.
    pub const unsafe fn new(base: u16) -> Self {
        Self { base }
    }

    fn reg(&self, offset: u16) -> Port {
        // SAFETY: the registers are base..base+8 of the UART this value owns.
        unsafe { Port::new(self.base + offset) }
    }

    /// 115200 8N1, FIFOs on, interrupts off.
    pub fn init(&mut self) {
        self.reg(1).write8(0x00); // IER: no interrupts
        self.reg(3).write8(0x80); // LCR: DLAB
        self.reg(0).write8(0x01); // divisor 1 = 115200
        self.reg(1).write8(0x00);
        self.reg(3).write8(0x03); // 8N1
        self.reg(2).write8(0xC7); // FIFO on, clear, 14-byte threshold
        self.reg(4).write8(0x03); // DTR | RTS
    }

    /// Send one byte, waiting for room.
    pub fn write_byte(&mut self, b: u8) {
        while self.reg(5).read8() & 0x20 == 0 {
            core::hint::spin_loop();
        }
        self.reg(0).write8(b);
    }

    /// Is a UART there? (The scratch register holds what is written to it;
    /// a missing device reads 0xFF.)
    pub fn present(&mut self) -> bool {
        self.reg(7).write8(0x5A);
        let a = self.reg(7).read8();
        self.reg(7).write8(0xA5);
        a == 0x5A && self.reg(7).read8() == 0xA5
    }

    /// A received byte, if one is waiting.
    pub fn try_read_byte(&mut self) -> Option<u8> {
        (self.reg(5).read8() & 1 != 0).then(|| self.reg(0).read8())
    }
}

impl fmt::Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.write_byte(b'\r');
            }
            self.write_byte(b);
        }
        Ok(())
    }
}

// SAFETY: COM1 belongs to the root kernel alone (hv-core logs on debugcon).
pub static CONSOLE: Mutex<Uart> = Mutex::new(unsafe { Uart::new(COM1) });

// SAFETY: COM2 belongs to the root kernel alone.
pub static MGMT: Mutex<Uart> = Mutex::new(unsafe { Uart::new(COM2) });

#[doc(hidden)]
pub fn _print(args: fmt::Arguments) {
    use fmt::Write;
    let _ = CONSOLE.lock().write_fmt(args);
}

/// Print to the console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::serial::_print(format_args!($($arg)*)) };
}

/// Print a line to the console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::serial::_print(format_args!("{}\n", format_args!($($arg)*))) };
}
