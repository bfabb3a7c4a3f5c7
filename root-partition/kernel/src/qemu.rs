//! QEMU's `isa-debug-exit` device (iobase 0xf4): writing `v` ends QEMU with
//! exit status `(v << 1) | 1`. Tests read the status; on real hardware the
//! write goes nowhere and the CPU halts.

use kernel_x86::arch::{Port, halt_forever};

/// Written on success: QEMU exits with 33.
pub const EXIT_SUCCESS: u8 = 0x10;
/// Written on failure: QEMU exits with 35.
pub const EXIT_FAILURE: u8 = 0x11;

/// End the machine with `code`.
pub fn exit(code: u8) -> ! {
    // SAFETY: port 0xf4 is the debug-exit device the run/test scripts attach;
    // without it the write is ignored.
    unsafe { Port::new(0xF4) }.write32(code as u32);
    halt_forever()
}
