//! Key-value pair exchange: the host gets, sets, deletes and enumerates
//! string pairs in the guest's pools, one request at a time; the guest
//! answers by rewriting the request (Linux `hv_kvp.c`
//! `kvp_respond_to_host`; an enumeration ends with status `HV_S_CONT`).
//!
//! Everything is bounded: [`MAX_QUEUED`] requests wait, at most
//! [`MAX_ENTRIES_PER_POOL`] pairs are kept per pool, [`MAX_RESULTS`]
//! results are remembered, and keys and values are limited by their wire
//! arrays (255 and 1023 UTF-16 units).

use crate::device::Service;
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use ic_protocol::{
    KVP_GUID, KVP_VERSIONS, KvpData, KvpOperation, KvpPool, KvpRequest, Message, MessageType, Status, Version,
};
use vsp::InspectSink;

/// Requests that may wait behind the one in flight.
pub const MAX_QUEUED: usize = 16;
/// Pairs kept per pool (an enumeration stops there).
pub const MAX_ENTRIES_PER_POOL: usize = 32;
/// Results remembered (oldest dropped first).
pub const MAX_RESULTS: usize = 16;

/// A KVP operation asked through the control handle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvpOp {
    /// Enumerate the whole pool.
    Enumerate,
    /// Get a key.
    Get(String),
    /// Set a key to a value.
    Set(String, String),
    /// Delete a key.
    Delete(String),
}

/// How a KVP request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvpOutcome {
    /// Enumerated this many pairs (the pool's listing was replaced).
    Enumerated(usize),
    /// The key's value.
    Value(String),
    /// Set or deleted.
    Done,
    /// The guest answered with this failure status.
    Failed(Status),
    /// The guest's answer broke the protocol.
    Violation(&'static str),
    /// No answer in time.
    TimedOut,
    /// The channel closed first.
    Cancelled,
}

/// One finished request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvpResult {
    /// The id the control handle returned for it.
    pub id: u32,
    /// The pool.
    pub pool: KvpPool,
    /// What was asked.
    pub op: KvpOp,
    /// How it ended.
    pub outcome: KvpOutcome,
}

struct Active {
    id: u32,
    pool: KvpPool,
    op: KvpOp,
    /// Enumeration: the next index and what was collected.
    index: u32,
    collected: Vec<(String, String)>,
    sent: bool,
}

/// The KVP service.
pub struct Kvp {
    queue: VecDeque<(u32, KvpPool, KvpOp)>,
    active: Option<Active>,
    next_id: u32,
    /// Pairs seen per pool (index = pool number).
    pub pools: [Vec<(String, String)>; KvpPool::COUNT as usize],
    /// Finished requests, oldest first.
    pub results: VecDeque<KvpResult>,
}

impl Kvp {
    /// Nothing asked yet.
    pub fn new() -> Self {
        Self {
            queue: VecDeque::new(),
            active: None,
            next_id: 1,
            pools: Default::default(),
            results: VecDeque::new(),
        }
    }

    /// Requests waiting (the one in flight included).
    pub fn queued(&self) -> usize {
        self.queue.len() + usize::from(self.active.is_some())
    }

    /// Queue `op` on `pool`; its id, or `None` if the queue is full.
    pub(crate) fn enqueue(&mut self, pool: KvpPool, op: KvpOp) -> Option<u32> {
        if self.queue.len() >= MAX_QUEUED {
            return None;
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.queue.push_back((id, pool, op));
        Some(id)
    }

    fn finish(&mut self, outcome: KvpOutcome) {
        if let Some(a) = self.active.take() {
            if self.results.len() >= MAX_RESULTS {
                self.results.pop_front();
            }
            self.results.push_back(KvpResult {
                id: a.id,
                pool: a.pool,
                op: a.op,
                outcome,
            });
        }
    }

    fn store(&mut self, pool: KvpPool, key: String, value: String) {
        let Some(list) = self.pools.get_mut(usize::from(pool.0)) else {
            return;
        };
        if let Some(e) = list.iter_mut().find(|(k, _)| *k == key) {
            e.1 = value;
        } else if list.len() < MAX_ENTRIES_PER_POOL {
            list.push((key, value));
        }
    }

    fn request_for(a: &Active) -> KvpRequest {
        match &a.op {
            KvpOp::Enumerate => KvpRequest::Enumerate {
                pool: a.pool,
                index: a.index,
            },
            KvpOp::Get(k) => KvpRequest::Get {
                pool: a.pool,
                key: k.clone(),
            },
            KvpOp::Set(k, v) => KvpRequest::Set {
                pool: a.pool,
                key: k.clone(),
                value: KvpData::String(v.clone()),
            },
            KvpOp::Delete(k) => KvpRequest::Delete {
                pool: a.pool,
                key: k.clone(),
            },
        }
    }

    fn handle(&mut self, message: &Message<'_>) -> Result<(), &'static str> {
        let Some(active) = self.active.as_mut() else {
            return Err("KVP answer with none sent");
        };
        active.sent = false;
        let status = message.header.status();
        let body = message.body().map_err(|_| "KVP answer body beyond the packet")?;
        let (op, pool) = ic_protocol::parse_kvp_header(body).map_err(|_| "KVP answer too short")?;
        let expected = match active.op {
            KvpOp::Enumerate => KvpOperation::ENUMERATE,
            KvpOp::Get(_) => KvpOperation::GET,
            KvpOp::Set(..) => KvpOperation::SET,
            KvpOp::Delete(_) => KvpOperation::DELETE,
        };
        if op != expected || pool != active.pool {
            return Err("KVP answer for another operation or pool");
        }
        if status != Status::OK {
            if matches!(active.op, KvpOp::Enumerate) && status == Status::S_CONT {
                // The end of the pool (Linux: the daemon's HV_S_CONT).
                let list = core::mem::take(&mut active.collected);
                let n = list.len();
                self.pools[usize::from(pool.0)] = list;
                self.finish(KvpOutcome::Enumerated(n));
            } else {
                self.finish(KvpOutcome::Failed(status));
            }
            return Ok(());
        }
        match active.op.clone() {
            KvpOp::Enumerate => {
                let (_, _, key, value) =
                    ic_protocol::parse_kvp_answer(body).map_err(|_| "malformed KVP enumerate answer")?;
                active.collected.push((key, value.to_text()));
                active.index = active.index.saturating_add(1);
                if active.collected.len() >= MAX_ENTRIES_PER_POOL {
                    let list = core::mem::take(&mut active.collected);
                    let n = list.len();
                    self.pools[usize::from(pool.0)] = list;
                    self.finish(KvpOutcome::Enumerated(n));
                }
            }
            KvpOp::Get(key) => {
                let (_, _, _, value) =
                    ic_protocol::parse_kvp_answer(body).map_err(|_| "malformed KVP get answer")?;
                let text = value.to_text();
                self.store(pool, key, text.clone());
                self.finish(KvpOutcome::Value(text));
            }
            KvpOp::Set(key, value) => {
                self.store(pool, key, value);
                self.finish(KvpOutcome::Done);
            }
            KvpOp::Delete(key) => {
                if let Some(list) = self.pools.get_mut(usize::from(pool.0)) {
                    list.retain(|(k, _)| *k != key);
                }
                self.finish(KvpOutcome::Done);
            }
        }
        Ok(())
    }
}

impl Default for Kvp {
    fn default() -> Self {
        Self::new()
    }
}

impl Service for Kvp {
    const NAME: &'static str = "kvp";
    const INTERFACE: [u8; 16] = KVP_GUID;
    const MESSAGE_TYPE: MessageType = MessageType::KVP_EXCHANGE;

    fn versions(&self) -> &'static [Version] {
        KVP_VERSIONS
    }

    fn timeout_ns(&self) -> u64 {
        // Linux gives its daemon 5 s (`kvp_work`); a little more here.
        10_000_000_000
    }

    fn next_request(&mut self, _: (Version, Version), _: u64) -> Option<Vec<u8>> {
        loop {
            if self.active.is_none() {
                let (id, pool, op) = self.queue.pop_front()?;
                self.active = Some(Active {
                    id,
                    pool,
                    op,
                    index: 0,
                    collected: Vec::new(),
                    sent: false,
                });
            }
            let active = self.active.as_mut()?;
            match ic_protocol::kvp_request_body(&Self::request_for(active)) {
                Ok(body) => {
                    active.sent = true;
                    return Some(body);
                }
                // Checked when queued; should it not fit, drop it and go on.
                Err(_) => self.finish(KvpOutcome::Violation("request does not fit")),
            }
        }
    }

    fn answer(&mut self, _: (Version, Version), message: &Message<'_>) -> Result<(), &'static str> {
        let r = self.handle(message);
        if let Err(why) = r {
            self.finish(KvpOutcome::Violation(why));
        }
        r
    }

    fn timed_out(&mut self) {
        self.finish(KvpOutcome::TimedOut);
    }

    fn closed(&mut self, reset: bool) {
        if self.active.as_ref().is_some_and(|a| a.sent || reset) {
            self.finish(KvpOutcome::Cancelled);
        }
        if reset {
            while let Some((id, pool, op)) = self.queue.pop_front() {
                self.active = Some(Active {
                    id,
                    pool,
                    op,
                    index: 0,
                    collected: Vec::new(),
                    sent: false,
                });
                self.finish(KvpOutcome::Cancelled);
            }
        }
    }

    fn inspect(&self, out: &mut dyn InspectSink) {
        out.counter("kvp_queued", "KVP requests queued", self.queued() as u64);
        let mut pools = String::new();
        for (i, list) in self.pools.iter().enumerate() {
            if !pools.is_empty() {
                pools.push(' ');
            }
            pools.push_str(&alloc::format!("{i}:{}", list.len()));
        }
        out.text("kvp_pools", "KVP pairs per pool", &pools);
    }
}
