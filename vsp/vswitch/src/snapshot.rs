//! A point-in-time view of the switch for listings (`switch`, `switch --json`).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use crate::{Config, MacAddr, MacOrigin, PortCounters, PortId, PortKind, Switch, SwitchCounters};

/// One port in a [`SwitchSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSnapshot {
    /// The port's id.
    pub id: PortId,
    /// What sits behind it.
    pub kind: PortKind,
    /// Its name.
    pub name: String,
    /// Its assigned MAC.
    pub mac: Option<MacAddr>,
    /// Whether frames with another source MAC are dropped.
    pub enforce_source_mac: bool,
    /// Egress queue capacity, in frames.
    pub queue_depth: usize,
    /// Frames waiting in the egress queue.
    pub queued: usize,
    /// The port's counters.
    pub counters: PortCounters,
}

/// One MAC table entry in a [`SwitchSnapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacEntry {
    /// The address.
    pub mac: MacAddr,
    /// The port frames to it go to.
    pub port: PortId,
    /// Assigned or learned (with when it was last seen).
    pub origin: MacOrigin,
}

/// Everything a listing shows: limits, ports with counters, the MAC table, switch counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchSnapshot {
    /// The switch's limits.
    pub config: Config,
    /// Ports in id order.
    pub ports: Vec<PortSnapshot>,
    /// MAC table entries ordered by port, then address. Learned entries past their age that
    /// have not been removed yet are included; call [`Switch::expire`] first to leave them out.
    pub mac_table: Vec<MacEntry>,
    /// Switch-wide counters.
    pub counters: SwitchCounters,
}

impl Switch {
    /// A snapshot for listings.
    pub fn snapshot(&self) -> SwitchSnapshot {
        let ports = self
            .ports_internal()
            .iter()
            .map(|p| PortSnapshot {
                id: p.id,
                kind: p.config.kind,
                name: p.config.name.clone(),
                mac: p.config.mac,
                enforce_source_mac: p.config.enforce_source_mac,
                queue_depth: p.queue.capacity(),
                queued: p.queue.len(),
                counters: p.counters,
            })
            .collect();
        let mut mac_table: Vec<MacEntry> = self
            .table()
            .entries()
            .map(|(mac, port, origin)| MacEntry { mac, port, origin })
            .collect();
        mac_table.sort_unstable_by_key(|e| (e.port, e.mac));
        SwitchSnapshot {
            config: *self.config(),
            ports,
            mac_table,
            counters: self.counters(),
        }
    }
}

impl SwitchSnapshot {
    /// The snapshot as one line of JSON (for `switch --json`):
    ///
    /// ```text
    /// {"config":{"max_ports":..,"max_frame_size":..,"max_queue_depth":..,
    ///            "mac_table_capacity":..,"mac_max_age":..},
    ///  "ports":[{"id":1,"kind":"child-nic","name":"..","mac":"02:..",
    ///            "enforce_source_mac":true,"queue_depth":256,"queued":0,
    ///            "counters":{"rx_frames":..,"rx_bytes":..,"tx_frames":..,"tx_bytes":..,
    ///                        "drop_queue_full":..,"drop_spoofed_source":..,
    ///                        "drop_invalid_source":..,"drop_bad_size":..}}],
    ///  "mac_table":[{"mac":"02:..","port":1,"static":true,"last_seen":null}],
    ///  "counters":{"ingress_no_such_port":..,"unicast":..,...}}
    /// ```
    ///
    /// `mac` is `null` for a port without an assigned MAC.
    pub fn to_json(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_json(&mut out);
        out
    }

    fn write_json(&self, out: &mut String) -> core::fmt::Result {
        let c = &self.config;
        write!(
            out,
            "{{\"config\":{{\"max_ports\":{},\"max_frame_size\":{},\"max_queue_depth\":{},\
             \"mac_table_capacity\":{},\"mac_max_age\":{}}},\"ports\":[",
            c.max_ports, c.max_frame_size, c.max_queue_depth, c.mac_table_capacity, c.mac_max_age
        )?;
        for (i, p) in self.ports.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write!(out, "{{\"id\":{},\"kind\":\"{}\",\"name\":", p.id, p.kind)?;
            json_string(out, &p.name);
            out.push_str(",\"mac\":");
            match p.mac {
                Some(mac) => write!(out, "\"{mac}\"")?,
                None => out.push_str("null"),
            }
            let k = &p.counters;
            write!(
                out,
                ",\"enforce_source_mac\":{},\"queue_depth\":{},\"queued\":{},\"counters\":{{\
                 \"rx_frames\":{},\"rx_bytes\":{},\"tx_frames\":{},\"tx_bytes\":{},\
                 \"drop_queue_full\":{},\"drop_spoofed_source\":{},\"drop_invalid_source\":{},\
                 \"drop_bad_size\":{}}}}}",
                p.enforce_source_mac,
                p.queue_depth,
                p.queued,
                k.rx_frames,
                k.rx_bytes,
                k.tx_frames,
                k.tx_bytes,
                k.drop_queue_full,
                k.drop_spoofed_source,
                k.drop_invalid_source,
                k.drop_bad_size
            )?;
        }
        out.push_str("],\"mac_table\":[");
        for (i, e) in self.mac_table.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write!(out, "{{\"mac\":\"{}\",\"port\":{},", e.mac, e.port)?;
            match e.origin {
                MacOrigin::Static => out.push_str("\"static\":true,\"last_seen\":null}"),
                MacOrigin::Learned { last_seen } => {
                    write!(out, "\"static\":false,\"last_seen\":{last_seen}}}")?
                }
            }
        }
        let s = &self.counters;
        write!(
            out,
            "],\"counters\":{{\"ingress_no_such_port\":{},\"unicast\":{},\"flooded_broadcast\":{},\
             \"flooded_multicast\":{},\"flooded_unknown\":{},\"filtered\":{},\"macs_learned\":{},\
             \"macs_moved\":{},\"macs_evicted\":{},\"macs_aged\":{},\"mac_conflicts\":{},\
             \"dropped_on_removal\":{}}}}}",
            s.ingress_no_such_port,
            s.unicast,
            s.flooded_broadcast,
            s.flooded_multicast,
            s.flooded_unknown,
            s.filtered,
            s.macs_learned,
            s.macs_moved,
            s.macs_evicted,
            s.macs_aged,
            s.mac_conflicts,
            s.dropped_on_removal
        )
    }
}

/// Appends `s` as a JSON string literal.
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
