//! hv-core's own log channel: QEMU's debugcon port (0xE9 by default, from the
//! handoff block), never the root's console.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU16, Ordering};
use kernel_x86::arch::Port;
use spin::Mutex;

static PORT: AtomicU16 = AtomicU16::new(0xE9);
static LOCK: Mutex<()> = Mutex::new(());

/// Use `port` from now on.
pub fn set_port(port: u16) {
    PORT.store(port, Ordering::Relaxed);
}

struct DebugCon(Port);

impl Write for DebugCon {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            self.0.write8(b);
        }
        Ok(())
    }
}

fn port() -> DebugCon {
    // SAFETY: the log port is a write-only debug device given to hv-core alone.
    DebugCon(unsafe { Port::new(PORT.load(Ordering::Relaxed)) })
}

#[doc(hidden)]
pub fn _log(args: fmt::Arguments) {
    let _guard = LOCK.lock();
    let _ = writeln!(port(), "[hv-core] {args}");
}

/// Write without taking the lock (panic and exception paths).
pub fn emergency(args: fmt::Arguments) {
    let _ = writeln!(port(), "[hv-core] {args}");
}

/// Stop the machine after a fatal hv-core error: under QEMU the debug-exit
/// device ends the run with a failure status; elsewhere the CPU halts.
pub fn fatal_stop() -> ! {
    // SAFETY: 0xF4 is the isa-debug-exit device in our QEMU setups; on real
    // hardware nothing decodes it.
    unsafe { Port::new(0xF4) }.write32(0x11);
    kernel_x86::arch::halt_forever()
}

/// Log a line on hv-core's channel.
macro_rules! hvlog {
    ($($arg:tt)*) => { $crate::log::_log(format_args!($($arg)*)) };
}
