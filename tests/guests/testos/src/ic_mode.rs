//! Mode `ic` (and `ic-stubborn`): the test OS as a guest with Hyper-V's
//! integration services, answering the root's providers the way Linux's
//! `hv_utils` does, through `vsc_drivers::ic`: it opens every IC channel
//! offered, answers negotiation, heartbeats, time samples and KVP requests
//! (its auto pool holds its host name and OS), and on a shutdown request
//! powers off through the ACPI sleep port (`ic-stubborn` acknowledges and
//! keeps running, so the root's timeout shows).
//!
//! Each channel has 4 pages of `RING`: guest-to-host ring (control + one
//! data page), then host-to-guest ring. The test OS takes no interrupts: it
//! polls its rings and SIMP slot.

use crate::guest::{
    Bus, RING, StaticMemory, clear_ring, enable_hypercalls, enable_synic, halt_forever, hypercall, init_heap,
};
use alloc::vec::Vec;
use hv1_abi::hypercall::{HvCallCode, HypercallControl};
use ic_protocol::KvpPool;
use vmbus::packet::{Descriptor, PacketType};
use vmbus::ring::{Reader, Ring, Writer};
use vsc_drivers::ic::{Action, IcClient, KvpStore, Service};
use zerocopy::IntoBytes;

macro_rules! say {
    ($($arg:tt)*) => {
        crate::guest::say_line(format_args!($($arg)*))
    };
}

/// Ring pages per channel (2 up, 2 down).
const PAGES_PER_CHANNEL: u64 = 4;

/// ACPI SLEEP_CONTROL_REG and the S5 value our FADT names (child_acpi::power).
const SLEEP_CONTROL_PORT: u16 = 0x400;
const POWEROFF_VALUE: u8 = 0x34;

struct Channel {
    relid: u32,
    connection: u32,
    client: IcClient,
    writer: Writer<StaticMemory>,
    reader: Reader<StaticMemory>,
}

fn signal(connection: u32) {
    let control = HypercallControl {
        fast: true,
        ..HypercallControl::simple(HvCallCode::SIGNAL_EVENT)
    }
    .encode();
    let _ = hypercall(control, connection as u64, 0);
}

fn service_name(s: Service) -> &'static str {
    match s {
        Service::Shutdown => "shutdown",
        Service::TimeSync => "timesync",
        Service::Heartbeat => "heartbeat",
        Service::Kvp => "kvp",
    }
}

fn power_off(name: &str) -> ! {
    say!("testos {name}: ic shutdown: powering off");
    // SAFETY: port I/O to the platform's ACPI sleep register (emulated by
    // the root); this partition is done.
    unsafe {
        core::arch::asm!("out dx, al", in("dx") SLEEP_CONTROL_PORT, in("al") POWEROFF_VALUE);
    }
    say!("testos {name}: ic shutdown: still running after the S5 write");
    halt_forever()
}

/// Run the integration services until told to power off.
pub(crate) fn run(name: &str, stubborn: bool) -> ! {
    init_heap();
    enable_hypercalls();
    enable_synic();
    let mut bus = Bus::new(None);
    match bus.connect() {
        Ok(v) => say!(
            "testos {name}: ic: vmbus connected at {}.{}",
            v.0 >> 16,
            v.0 & 0xFFFF
        ),
        Err(e) => {
            say!("testos {name}: ic: vmbus connect failed: {e:?}");
            halt_forever()
        }
    }
    let offers: Vec<(u32, u32, Service)> = bus
        .client
        .offers()
        .values()
        .filter_map(|o| {
            Some((
                o.child_relid,
                o.connection_id,
                Service::from_interface(&o.interface_type)?,
            ))
        })
        .collect();
    let ring_base = core::ptr::addr_of!(RING) as u64;
    clear_ring(crate::guest::RING_PAGES as u64);
    let mut channels: Vec<Channel> = Vec::new();
    for (i, (relid, connection, service)) in offers.into_iter().enumerate() {
        let first = i as u64 * PAGES_PER_CHANNEL;
        if first + PAGES_PER_CHANNEL > crate::guest::RING_PAGES as u64 {
            say!("testos {name}: ic: no ring pages left for relid {relid}");
            break;
        }
        let pfns: Vec<u64> = (0..PAGES_PER_CHANNEL)
            .map(|p| (ring_base >> 12) + first + p)
            .collect();
        let opened = bus.gpadl(relid, &pfns).and_then(|(handle, status)| {
            if status == 0 {
                bus.open(relid, handle, 2)
            } else {
                Ok(status)
            }
        });
        match opened {
            Ok(0) => {}
            other => {
                say!(
                    "testos {name}: ic: opening {} (relid {relid}) failed: {other:?}",
                    service_name(service)
                );
                continue;
            }
        }
        let at = ring_base + first * 4096;
        let (Ok(up), Ok(down)) = (
            Ring::new(StaticMemory {
                base: at,
                len: 2 * 4096,
            }),
            Ring::new(StaticMemory {
                base: at + 2 * 4096,
                len: 2 * 4096,
            }),
        ) else {
            say!("testos {name}: ic: bad ring geometry");
            halt_forever()
        };
        let client = if service == Service::Kvp {
            let mut store = KvpStore::new();
            let host = alloc::format!("testos-{name}");
            store.set(KvpPool::AUTO, "FullyQualifiedDomainName", &host);
            store.set(KvpPool::AUTO, "OSName", "hv-rs testos");
            store.set(KvpPool::AUTO, "OSVersion", "0.1.0");
            store.set(
                KvpPool::GUEST,
                "Mode",
                if stubborn { "ic-stubborn" } else { "ic" },
            );
            IcClient::with_kvp(store)
        } else {
            IcClient::new(service)
        };
        say!(
            "testos {name}: ic: {} open on relid {relid}",
            service_name(service)
        );
        channels.push(Channel {
            relid,
            connection,
            client,
            writer: Writer::new(up),
            reader: Reader::new(down),
        });
    }
    say!("testos {name}: ic: {} services open", channels.len());
    let mut buf = alloc::vec![0u8; 8192];
    let mut message = [0u8; 240];
    loop {
        // Channel messages after the opens (a rescind, say) are read and
        // dropped: this mode only serves its open channels.
        if let Some((_, n)) = crate::guest::take_message(&mut message) {
            let _ = bus.client.handle(&message[..n]);
        }
        for c in channels.iter_mut() {
            let packet = match c.reader.read(&mut buf) {
                Ok(Some((p, read_signal))) => {
                    if read_signal.0 {
                        signal(c.connection);
                    }
                    p
                }
                Ok(None) => continue,
                Err(e) => {
                    say!("testos {name}: ic: relid {} ring failed: {e:?}", c.relid);
                    halt_forever()
                }
            };
            if packet.descriptor.kind != PacketType::DATA_INBAND.0 {
                continue;
            }
            let range = packet.descriptor.payload();
            let Some(payload) = buf.get(range) else { continue };
            let reply = match c.client.handle(payload) {
                Ok(r) => r,
                Err(e) => {
                    say!(
                        "testos {name}: ic: {} dropped a message: {e}",
                        service_name(c.client.service())
                    );
                    continue;
                }
            };
            let d = Descriptor::new(
                PacketType::DATA_INBAND,
                16,
                reply.payload.len(),
                0,
                packet.descriptor.transaction_id,
            );
            match c.writer.write(&[d.as_bytes(), &reply.payload]) {
                Ok(s) if s.0 => signal(c.connection),
                Ok(_) => {}
                Err(e) => {
                    say!("testos {name}: ic: relid {} answer not written: {e:?}", c.relid);
                    continue;
                }
            }
            let service = service_name(c.client.service());
            match reply.action {
                Action::Negotiated(Some((f, s))) => {
                    say!("testos {name}: ic: {service} negotiated framework {f}, service {s}")
                }
                Action::Negotiated(None) => say!("testos {name}: ic: {service}: no common version"),
                Action::PowerOff | Action::Reboot if stubborn => {
                    say!("testos {name}: ic shutdown: acknowledged, staying up")
                }
                Action::PowerOff | Action::Reboot => power_off(name),
                Action::SetTime { host_time, sync, .. } => {
                    say!(
                        "testos {name}: ic: time {} {host_time}",
                        if sync { "set to" } else { "sample" }
                    )
                }
                Action::KvpChanged => {
                    let external: Vec<_> = c.client.kvp.pool(KvpPool::EXTERNAL).to_vec();
                    for (k, v) in external {
                        say!("testos {name}: ic: kvp external {k} = {v}");
                    }
                }
                Action::None => {}
            }
        }
        core::hint::spin_loop();
    }
}
