//! `iobench DEVICE DEPTH COUNT`: COUNT random 4 KiB reads of DEVICE opened
//! with O_DIRECT, DEPTH of them in flight, through Linux's native AIO
//! (`io_setup`, `io_submit`, `io_getevents`: the interface fio's `libaio`
//! engine uses; `include/uapi/linux/aio_abi.h`), timed on CLOCK_MONOTONIC.
//! It goes into the Linux child's initramfs as `/bin/iobench` so the device
//! benchmark can measure Linux's IOPS through storvsp at a depth busybox's
//! `dd` cannot reach (`tests/benches/devices.rs`).
//!
//! Prints one line, `iobench: COUNT reads of 4096 bytes at depth DEPTH in
//! US us: IOPS IOPS`, or `iobench: failed: WHY`; exits 0 or 1.
//!
//! A static executable without libc: the entry point, the system calls and
//! the output are ours (x86-64 System V process entry: `[rsp]` is argc, then
//! the argv pointers).
#![no_std]
#![no_main]
// Raw system calls and the process entry: there is no libc to call.
#![allow(unsafe_code)]

use core::arch::{asm, global_asm};
use core::fmt::Write;

global_asm!(
    ".globl start",
    "start:",
    "mov rdi, rsp",
    "and rsp, -16",
    "call {entry}",
    "ud2",
    entry = sym entry,
);

const SYS_WRITE: u64 = 1;
const SYS_OPEN: u64 = 2;
const SYS_IOCTL: u64 = 16;
const SYS_IO_SETUP: u64 = 206;
const SYS_IO_GETEVENTS: u64 = 208;
const SYS_IO_SUBMIT: u64 = 209;
const SYS_CLOCK_GETTIME: u64 = 228;
const SYS_EXIT_GROUP: u64 = 231;

const O_DIRECT: u64 = 0o40000;
/// `_IOR(0x12, 114, size_t)`: the device's size in bytes.
const BLKGETSIZE64: u64 = 0x8008_1272;
const CLOCK_MONOTONIC: u64 = 1;
/// `IOCB_CMD_PREAD`.
const IOCB_CMD_PREAD: u16 = 0;

const BLOCK: u64 = 4096;
const MAX_DEPTH: usize = 64;

/// `struct iocb` (64 bytes, little-endian field order).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Iocb {
    data: u64,
    key: u32,
    rw_flags: u32,
    lio_opcode: u16,
    reqprio: i16,
    fildes: u32,
    buf: u64,
    nbytes: u64,
    offset: i64,
    reserved2: u64,
    flags: u32,
    resfd: u32,
}
const _: () = assert!(size_of::<Iocb>() == 64);

/// `struct io_event`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct IoEvent {
    data: u64,
    obj: u64,
    res: i64,
    res2: i64,
}
const _: () = assert!(size_of::<IoEvent>() == 32);

/// The read buffers, one page each (O_DIRECT wants them aligned). Only
/// their addresses are used here: the kernel writes them, nothing reads.
#[repr(C, align(4096))]
struct Buffers([u8; MAX_DEPTH * BLOCK as usize]);
static mut BUFFERS: Buffers = Buffers([0; MAX_DEPTH * BLOCK as usize]);

/// A system call with up to six arguments; negative results are -errno.
///
/// # Safety
/// The arguments must be valid for system call `n` (pointers to memory
/// this program owns, of the sizes the call expects).
unsafe fn syscall(n: u64, a: [u64; 6]) -> i64 {
    let ret: i64;
    // The x86-64 Linux convention: rax, rdi, rsi, rdx, r10, r8, r9; rcx and r11 clobbered.
    // SAFETY: the caller vouches for the arguments.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") n as i64 => ret,
            in("rdi") a[0],
            in("rsi") a[1],
            in("rdx") a[2],
            in("r10") a[3],
            in("r8") a[4],
            in("r9") a[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// A line on standard output.
struct Out {
    buf: [u8; 256],
    len: usize,
}

impl Write for Out {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

fn say(args: core::fmt::Arguments) {
    let mut out = Out {
        buf: [0; 256],
        len: 0,
    };
    let _ = out.write_fmt(args);
    let _ = out.write_str("\n");
    // SAFETY: fd 1 and a buffer of `len` bytes this function owns.
    unsafe { syscall(SYS_WRITE, [1, out.buf.as_ptr() as u64, out.len as u64, 0, 0, 0]) };
}

fn exit(code: u64) -> ! {
    // SAFETY: exit_group takes a status and does not return.
    unsafe { syscall(SYS_EXIT_GROUP, [code, 0, 0, 0, 0, 0]) };
    loop {
        core::hint::spin_loop();
    }
}

fn fail(args: core::fmt::Arguments) -> ! {
    say(format_args!("iobench: failed: {args}"));
    exit(1)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    fail(format_args!("{info}"))
}

/// CLOCK_MONOTONIC in microseconds.
fn now_us() -> u64 {
    let mut ts = [0i64; 2];
    // SAFETY: a `struct timespec` (two 64-bit words) this function owns.
    let r = unsafe {
        syscall(
            SYS_CLOCK_GETTIME,
            [CLOCK_MONOTONIC, ts.as_mut_ptr() as u64, 0, 0, 0, 0],
        )
    };
    if r < 0 {
        fail(format_args!("clock_gettime: errno {}", -r));
    }
    ts[0] as u64 * 1_000_000 + ts[1] as u64 / 1000
}

/// The NUL-terminated string at `p`, without the NUL (at most 4 KiB).
///
/// # Safety
/// `p` must point to a NUL-terminated string that outlives the program (an
/// argv entry).
unsafe fn c_str(p: *const u8) -> &'static [u8] {
    let mut n = 0;
    // SAFETY: the caller's string, read up to its NUL.
    while n < 4096 && unsafe { *p.add(n) } != 0 {
        n += 1;
    }
    // SAFETY: `n` bytes of it were just read.
    unsafe { core::slice::from_raw_parts(p, n) }
}

fn number(arg: &[u8], what: &str) -> u64 {
    let text = core::str::from_utf8(arg).unwrap_or("");
    text.parse()
        .unwrap_or_else(|_| fail(format_args!("{what} '{text}' is not a number")))
}

/// xorshift64: scattered block numbers, the same sequence every run.
fn next_block(state: &mut u64, blocks: u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state % blocks
}

extern "C" fn entry(sp: *const u64) -> ! {
    // SAFETY: the kernel's initial stack: argc, then argc argv pointers.
    let argc = unsafe { *sp } as usize;
    if argc != 4 {
        fail(format_args!("usage: iobench DEVICE DEPTH COUNT"));
    }
    // SAFETY: argv[1..4] exist (argc checked) and are NUL-terminated.
    let (device, depth, count) = unsafe {
        (
            *sp.add(2) as *const u8,
            c_str(*sp.add(3) as *const u8),
            c_str(*sp.add(4) as *const u8),
        )
    };
    let depth = number(depth, "DEPTH") as usize;
    let count = number(count, "COUNT");
    if !(1..=MAX_DEPTH).contains(&depth) || count == 0 {
        fail(format_args!("DEPTH 1-{MAX_DEPTH}, COUNT at least 1"));
    }

    // SAFETY: a NUL-terminated path from argv.
    let fd = unsafe { syscall(SYS_OPEN, [device as u64, O_DIRECT, 0, 0, 0, 0]) };
    if fd < 0 {
        fail(format_args!("open: errno {}", -fd));
    }
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64, ours.
    let r = unsafe {
        syscall(
            SYS_IOCTL,
            [fd as u64, BLKGETSIZE64, &raw mut size as u64, 0, 0, 0],
        )
    };
    let blocks = size / BLOCK;
    if r < 0 || blocks == 0 {
        fail(format_args!("BLKGETSIZE64: errno {}, {size} bytes", -r));
    }
    let mut ctx = 0u64;
    // SAFETY: io_setup writes the context id into `ctx`, ours.
    let r = unsafe { syscall(SYS_IO_SETUP, [depth as u64, &raw mut ctx as u64, 0, 0, 0, 0]) };
    if r < 0 {
        fail(format_args!("io_setup: errno {}", -r));
    }

    let buffers = (&raw mut BUFFERS) as u64;
    let mut iocbs = [Iocb::default(); MAX_DEPTH];
    let mut events = [IoEvent::default(); MAX_DEPTH];
    let mut ready: [u64; MAX_DEPTH] = [0; MAX_DEPTH];
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut prepare = |iocbs: &mut [Iocb; MAX_DEPTH], slot: usize| {
        iocbs[slot] = Iocb {
            data: slot as u64,
            lio_opcode: IOCB_CMD_PREAD,
            fildes: fd as u32,
            buf: buffers + slot as u64 * BLOCK,
            nbytes: BLOCK,
            offset: (next_block(&mut rng, blocks) * BLOCK) as i64,
            ..Iocb::default()
        };
    };
    // Submit `n` prepared control blocks named in `ready`, all of them.
    let submit = |iocbs: &mut [Iocb; MAX_DEPTH], ready: &mut [u64; MAX_DEPTH], n: usize| {
        let base = iocbs.as_mut_ptr() as u64;
        for r in ready.iter_mut().take(n) {
            *r = base + *r * size_of::<Iocb>() as u64;
        }
        let mut done = 0;
        while done < n {
            // Control blocks in `iocbs`, buffers in BUFFERS: both outlive the
            // requests (every one is reaped before the program exits).
            // SAFETY: `n - done` pointers to those control blocks.
            let r = unsafe {
                syscall(
                    SYS_IO_SUBMIT,
                    [ctx, (n - done) as u64, ready[done..].as_ptr() as u64, 0, 0, 0],
                )
            };
            if r <= 0 {
                fail(format_args!("io_submit: errno {}", -r));
            }
            done += r as usize;
        }
    };

    let start = now_us();
    let first = depth.min(count as usize);
    for (slot, r) in ready.iter_mut().enumerate().take(first) {
        prepare(&mut iocbs, slot);
        *r = slot as u64;
    }
    submit(&mut iocbs, &mut ready, first);
    let (mut submitted, mut completed) = (first as u64, 0u64);
    while completed < count {
        // SAFETY: room for `depth` events in `events`; no timeout.
        let n = unsafe {
            syscall(
                SYS_IO_GETEVENTS,
                [ctx, 1, depth as u64, events.as_mut_ptr() as u64, 0, 0],
            )
        };
        if n <= 0 {
            fail(format_args!("io_getevents: errno {}", -n));
        }
        let mut again = 0;
        for e in events.iter().take(n as usize) {
            if e.res != BLOCK as i64 {
                fail(format_args!("a read returned {} (errno if negative)", e.res));
            }
            completed += 1;
            let slot = (e.data as usize).min(MAX_DEPTH - 1);
            if submitted < count {
                prepare(&mut iocbs, slot);
                ready[again] = slot as u64;
                again += 1;
                submitted += 1;
            }
        }
        if again > 0 {
            submit(&mut iocbs, &mut ready, again);
        }
    }
    let us = (now_us() - start).max(1);
    say(format_args!(
        "iobench: {count} reads of 4096 bytes at depth {depth} in {us} us: {} IOPS",
        count * 1_000_000 / us
    ));
    exit(0)
}
