//! Mode `crash-report`: the guest crash MSRs, as Linux uses them on a panic
//! (`hv_kmsg_dump` in Linux 6.1 `drivers/hv/vmbus_drv.c`). Checks CPUID
//! 0x4000_0003 EDX bit 10 and that CRASH_CTL reads back the supported bits,
//! writes P0-P4 (P3/P4 naming a page of panic text), then CRASH_CTL =
//! CrashNotify | CrashMessage. hv-core stops the VP and the root crashes the
//! child with the parameters and the text; if this VP ever runs on, it says
//! `CRASH REPORT IGNORED`. Mode `crash-report-outside` names a message page
//! past the end of its RAM instead (P3 4 GiB - 4 KiB, P4 4096): the root must
//! not read it.

use crate::guest::{halt_forever, say_line};
use hv1_abi::cpuid::features::GUEST_CRASH_MSR_AVAILABLE;
use hv1_abi::msr;

/// P0 as the test expects to see it in the crash reason.
pub const P0: u64 = 0x7E57_C0DE_0000_00A1;
/// P1 and P2 (arbitrary guest data).
const P1: u64 = 0x1111_2222_3333_4444;
const P2: u64 = 0xFFFF_FFFF_8100_0BAD;

/// The panic text, as Linux's kmsg dump would leave it: earlier lines first.
const TEXT: &[u8] = b"[    1.000000] testos: an earlier line\n\
[    1.000001] Kernel panic - not syncing: testos crash-report\n\
[    1.000002] CPU: 0 PID: 1 Comm: testos\n";

/// The page P3 names (the child runs on an identity map: address = GPA).
#[repr(C, align(4096))]
struct Page([u8; 4096]);
static mut MESSAGE_PAGE: Page = Page([0; 4096]);

fn rdmsr(index: u32) -> u64 {
    // SAFETY: reading a synthetic MSR hv-core provides (checked by CPUID
    // first); a #GP would end in the test OS's exception handler.
    unsafe { kernel_x86::arch::rdmsr(index) }
}

fn wrmsr(index: u32, value: u64) {
    crate::guest::wrmsr(index, value);
}

pub(crate) fn run(name: &str, mode: &str) -> ! {
    let edx = kernel_x86::arch::cpuid(0x4000_0003, 0).edx;
    if edx & GUEST_CRASH_MSR_AVAILABLE == 0 {
        say_line(format_args!(
            "testos {name}: crash MSRs not advertised (CPUID 0x40000003 EDX {edx:#x}): FAILED"
        ));
        halt_forever();
    }
    let ctl = rdmsr(msr::CRASH_CTL);
    let supported = msr::CRASH_CTL_NOTIFY | msr::CRASH_CTL_MESSAGE;
    say_line(format_args!(
        "testos {name}: CRASH_CTL reads {ctl:#x}: {}",
        if ctl == supported { "ok" } else { "FAILED" }
    ));
    let page = core::ptr::addr_of_mut!(MESSAGE_PAGE) as *mut u8;
    // SAFETY: our own static page, 4096 bytes, only touched here.
    unsafe { core::ptr::copy_nonoverlapping(TEXT.as_ptr(), page, TEXT.len()) };
    let (p3, p4) = match mode {
        "crash-report-outside" => ((4 << 30) - 4096, 4096),
        _ => (page as u64, TEXT.len() as u64),
    };
    for (i, v) in [P0, P1, P2, p3, p4].into_iter().enumerate() {
        wrmsr(msr::CRASH_P0 + i as u32, v);
    }
    let back: [u64; 5] = core::array::from_fn(|i| rdmsr(msr::CRASH_P0 + i as u32));
    say_line(format_args!(
        "testos {name}: crash parameters read back: {}",
        if back == [P0, P1, P2, p3, p4] {
            "ok"
        } else {
            "FAILED"
        }
    ));
    say_line(format_args!(
        "testos {name}: reporting a crash (P0 {P0:#x}, message at {p3:#x}, {p4} bytes)"
    ));
    wrmsr(msr::CRASH_CTL, supported);
    say_line(format_args!("testos {name}: CRASH REPORT IGNORED"));
    halt_forever()
}
