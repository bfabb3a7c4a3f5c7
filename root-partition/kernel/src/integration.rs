//! The shell's integration-service commands (`shutdown`, `timesync`, `kvp`)
//! and the services' state in `info`: the root's side of Hyper-V's
//! heartbeat, shutdown, time sync and KVP, driven through `vsp_ic::Controls`.

use crate::clock;
use crate::manager::Manager;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use ic_protocol::KvpPool;
use mgmt::cli::KvpCommand;
use mgmt::json::{self, Object};
use vsp_ic::{Controls, KvpOutcome, Phase, ServiceStatus, ShutdownState};

/// The pools' names as Hyper-V's KVP documentation gives them.
const POOL_NAMES: [&str; 5] = ["external", "guest", "auto", "auto_external", "auto_internal"];

fn pool_name(pool: KvpPool) -> &'static str {
    POOL_NAMES.get(pool.0 as usize).copied().unwrap_or("unknown")
}

fn phase(p: Phase) -> String {
    match p {
        Phase::Closed => String::from("closed"),
        Phase::Opened => String::from("opened"),
        Phase::Negotiating => String::from("negotiating"),
        Phase::Ready(f, s) => format!("ready (framework {f}, service {s})"),
        Phase::NoCommonVersion => String::from("no common version"),
        Phase::Failed => String::from("negotiation failed"),
    }
}

fn service_json(s: &ServiceStatus, extra: impl FnOnce(Object<'_>) -> Object<'_>) -> String {
    let mut out = String::new();
    let o = Object::new(&mut out)
        .str("phase", &phase(s.phase))
        .bool("ready", s.phase.versions().is_some())
        .num("requests_sent", s.requests_sent)
        .num("answers", s.answers)
        .num("violations", s.violations)
        .num("unsolicited", s.unsolicited)
        .num("timeouts", s.timeouts);
    extra(o).end();
    out
}

fn shutdown_state(s: &ShutdownState) -> String {
    match s {
        ShutdownState::Idle => String::from("idle"),
        ShutdownState::Queued { reboot } => {
            format!("queued ({})", if *reboot { "restart" } else { "power off" })
        }
        ShutdownState::Sent { reboot } => format!("sent ({})", if *reboot { "restart" } else { "power off" }),
        ShutdownState::Acknowledged { reboot } => {
            format!("acknowledged ({})", if *reboot { "restart" } else { "power off" })
        }
        ShutdownState::Refused(status) => format!("refused by the guest (status {:#x})", status.0),
        ShutdownState::TimedOut => String::from("not answered in time"),
        ShutdownState::Cancelled => String::from("cancelled (channel closed)"),
    }
}

/// The `integration` object of `info --json`.
pub fn info_json(c: &Controls) -> String {
    let hb = c.heartbeat();
    let sd = c.shutdown();
    let ts = c.timesync();
    let kvp = c.kvp();
    let heartbeat = service_json(&hb.service, |o| {
        let o = o
            .num("sent", hb.state.sent)
            .num("acked", hb.state.acked)
            .num("missed", hb.state.missed);
        match hb.state.last_acked {
            Some(seq) => o.num("last_sequence", seq),
            None => o.null("last_sequence"),
        }
    });
    let shutdown = service_json(&sd.service, |o| o.str("state", &shutdown_state(&sd.state)));
    let timesync = service_json(&ts.service, |o| {
        let o = o
            .num("pushed", ts.state.pushed)
            .num("sent", ts.state.sent)
            .num("acked", ts.state.acked);
        match ts.state.last_acked {
            Some(t) => o.num("last_acked_time", t),
            None => o.null("last_acked_time"),
        }
    });
    let kvp_json = service_json(&kvp.service, |o| o.raw("pools", &pools_json(&kvp.pools)));
    let mut out = String::new();
    Object::new(&mut out)
        .raw("heartbeat", &heartbeat)
        .raw("shutdown", &shutdown)
        .raw("timesync", &timesync)
        .raw("kvp", &kvp_json)
        .end();
    out
}

fn pools_json(pools: &[(KvpPool, Vec<(String, String)>)]) -> String {
    let mut out = String::new();
    let mut o = Object::new(&mut out);
    for (pool, pairs) in pools {
        let mut p = String::new();
        let mut po = Object::new(&mut p);
        for (k, v) in pairs {
            po = po.str(k, v);
        }
        po.end();
        o = o.raw(pool_name(*pool), &p);
    }
    o.end();
    out
}

/// The integration lines of `info` (text).
pub fn info_text(c: &Controls, out: &mut String) {
    let hb = c.heartbeat();
    let last = hb
        .state
        .last_acked
        .map_or(String::from("none"), |s| format!("{s}"));
    let _ = writeln!(
        out,
        "heartbeat:    {}; {} sent, {} answered (last sequence {last}), {} missed",
        phase(hb.service.phase),
        hb.state.sent,
        hb.state.acked,
        hb.state.missed
    );
    let sd = c.shutdown();
    let _ = writeln!(
        out,
        "shutdown:     {}; {}",
        phase(sd.service.phase),
        shutdown_state(&sd.state)
    );
    let ts = c.timesync();
    let _ = writeln!(
        out,
        "timesync:     {}; {} samples sent, {} answered",
        phase(ts.service.phase),
        ts.state.sent,
        ts.state.acked
    );
    let kvp = c.kvp();
    let pairs: usize = kvp.pools.iter().map(|(_, p)| p.len()).sum();
    let _ = writeln!(
        out,
        "kvp:          {}; {pairs} pairs seen (see 'kvp ID')",
        phase(kvp.service.phase)
    );
}

/// What the child's KVP answers make the root keep: pairs stored over all
/// pools, against the bound `vsp_ic` enforces.
pub fn kvp_quota(c: &Controls) -> (&'static str, u64, u64) {
    let used: usize = c.kvp().pools.iter().map(|(_, p)| p.len()).sum();
    (
        "kvp_pairs",
        used as u64,
        (vsp_ic::MAX_ENTRIES_PER_POOL * KvpPool::COUNT as usize) as u64,
    )
}

/// Push the host's time now to child `id` (`timesync ID`, and every
/// start), stamped with the child's reference time read at the same moment
/// (time sync 4.0 carries it; the guest adds what has elapsed since).
pub fn push_time(c: &Controls, id: u64) -> Result<u64, String> {
    let now = clock::filetime_now().ok_or("the root has no wall-clock time (its RTC gave no valid date)")?;
    let reference =
        crate::hv::reference_time(id).map_err(|s| format!("hv-core gave no reference time: {s:?}"))?;
    c.push_time(now, Some(reference), true);
    Ok(now)
}

/// `timesync ID`.
pub fn timesync(m: &Manager, id: u64, out: &mut String) -> Result<(), String> {
    let c = m.integration(id)?;
    if c.timesync().service.phase.versions().is_none() {
        return Err(format!(
            "partition {id} has not negotiated the time sync service (its driver is not loaded): nothing sent"
        ));
    }
    let now = push_time(c, id)?;
    let _ = writeln!(out, "partition {id}: host time {now} (100 ns since 1601) pushed");
    Ok(())
}

/// Enumerate every pool of a child whose KVP service is up and idle.
pub fn refresh_kvp(c: &Controls) {
    let status = c.kvp();
    if status.service.phase.versions().is_some() && status.queued == 0 {
        for p in 0..KvpPool::COUNT {
            let _ = c.kvp_enumerate(KvpPool(p));
        }
    }
}

/// `kvp ID ...`.
pub fn kvp(m: &Manager, id: u64, op: KvpCommand, json_out: bool, out: &mut String) -> Result<(), String> {
    let c = m.integration(id)?;
    let status = c.kvp();
    let ready = status.service.phase.versions().is_some();
    match op {
        KvpCommand::Set(key, value) => {
            if !ready {
                return Err(format!("partition {id} has not negotiated KVP: nothing sent"));
            }
            let rid = c
                .kvp_set(KvpPool::EXTERNAL, &key, &value)
                .map_err(|e| format!("partition {id}: {e}"))?;
            // Read the pool back once the guest has it.
            let _ = c.kvp_enumerate(KvpPool::EXTERNAL);
            let _ = writeln!(
                out,
                "partition {id}: kvp request {rid}: set '{key}' in the external pool"
            );
            Ok(())
        }
        KvpCommand::Delete(key) => {
            if !ready {
                return Err(format!("partition {id} has not negotiated KVP: nothing sent"));
            }
            let rid = c
                .kvp_delete(KvpPool::EXTERNAL, &key)
                .map_err(|e| format!("partition {id}: {e}"))?;
            let _ = c.kvp_enumerate(KvpPool::EXTERNAL);
            let _ = writeln!(
                out,
                "partition {id}: kvp request {rid}: delete '{key}' from the external pool"
            );
            Ok(())
        }
        KvpCommand::Show => {
            // Show what was last enumerated (the manager refreshes it every
            // few seconds), and ask for a fresh listing now.
            refresh_kvp(c);
            if json_out {
                let failures: Vec<String> = status
                    .results
                    .iter()
                    .filter_map(|r| match &r.outcome {
                        KvpOutcome::Failed(s) => Some(format!("{} {:#x}", pool_name(r.pool), s.0)),
                        KvpOutcome::Violation(v) => Some(format!("{}: {v}", pool_name(r.pool))),
                        _ => None,
                    })
                    .collect();
                let mut f = String::new();
                let quoted: Vec<String> = failures
                    .iter()
                    .map(|s| {
                        let mut q = String::new();
                        json::string(&mut q, s);
                        q
                    })
                    .collect();
                json::array(&mut f, quoted.iter().map(String::as_str));
                let mut s = String::new();
                Object::new(&mut s)
                    .num("id", id)
                    .str("phase", &phase(status.service.phase))
                    .bool("ready", ready)
                    .raw("pools", &pools_json(&status.pools))
                    .num("queued", status.queued as u64)
                    .raw("failures", &f)
                    .end();
                let _ = writeln!(out, "{s}");
                return Ok(());
            }
            let _ = writeln!(out, "partition {id} kvp: {}", phase(status.service.phase));
            for (pool, pairs) in &status.pools {
                let _ = writeln!(out, "  pool {} ({} pairs)", pool_name(*pool), pairs.len());
                for (k, v) in pairs {
                    let _ = writeln!(out, "    {k} = {v}");
                }
            }
            Ok(())
        }
    }
}
