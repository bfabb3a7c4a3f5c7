//! The MAC learning table: static entries for ports' assigned MACs, learned entries bounded in
//! number, evicted oldest-first and aged by a caller-supplied clock.

use alloc::collections::BTreeMap;
use hashbrown::HashMap;

use crate::{MacAddr, PortId};

/// How an entry got into the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacOrigin {
    /// The port's assigned MAC: never aged or evicted, gone only with the port.
    Static,
    /// Learned from a frame's source address; `last_seen` is the clock value of the last frame
    /// from that address.
    Learned {
        /// Clock value (caller's ticks) of the last frame seen from this address.
        last_seen: u64,
    },
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    port: PortId,
    /// For learned entries, the key in `MacTable::by_age`.
    age_key: Option<AgeKey>,
}

/// `(last_seen, sequence)`: unique, and ordered oldest first.
type AgeKey = (u64, u64);

/// What learning a source address did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Learned {
    /// Not in the table before; `evicted` says whether the oldest learned entry made room.
    New { evicted: bool },
    /// Already learned on this port; its age was refreshed.
    Refreshed,
    /// Was learned on another port and now points at this one.
    Moved,
    /// It is another port's assigned (static) MAC: the table is unchanged.
    StaticConflict,
    /// The table holds no learned entries (capacity 0).
    Disabled,
}

/// What a destination lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// The address is assigned to or was learned on this port.
    Found(PortId),
    /// Not in the table.
    Unknown,
    /// It was learned but had aged out; the entry is now gone.
    Expired,
}

/// Static entries plus at most `capacity` learned ones.
///
/// Every operation on the ingress path is O(1) or O(log n) in the table size.
#[derive(Debug)]
pub(crate) struct MacTable {
    map: HashMap<MacAddr, Entry>,
    /// Learned entries, oldest `last_seen` first.
    by_age: BTreeMap<AgeKey, MacAddr>,
    capacity: usize,
    max_age: u64,
    next_seq: u64,
}

impl MacTable {
    pub(crate) fn new(capacity: usize, max_age: u64) -> Self {
        Self {
            map: HashMap::new(),
            by_age: BTreeMap::new(),
            capacity,
            max_age,
            next_seq: 0,
        }
    }

    /// Number of entries, static and learned.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Number of learned entries (bounded by the capacity).
    pub(crate) fn learned_len(&self) -> usize {
        self.by_age.len()
    }

    fn expired(&self, last_seen: u64, now: u64) -> bool {
        now.saturating_sub(last_seen) > self.max_age
    }

    fn age_key(&mut self, now: u64) -> AgeKey {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        (now, seq)
    }

    /// Installs `mac` as `port`'s assigned address, replacing a learned entry for it.
    pub(crate) fn insert_static(&mut self, mac: MacAddr, port: PortId) {
        if let Some(old) = self.map.insert(mac, Entry { port, age_key: None })
            && let Some(key) = old.age_key
        {
            self.by_age.remove(&key);
        }
    }

    /// Records that a frame from `mac` arrived on `port` at `now`.
    pub(crate) fn learn(&mut self, mac: MacAddr, port: PortId, now: u64) -> Learned {
        if let Some(entry) = self.map.get(&mac).copied() {
            let Some(old_key) = entry.age_key else {
                return if entry.port == port {
                    Learned::Refreshed
                } else {
                    Learned::StaticConflict
                };
            };
            let outcome = if entry.port == port {
                Learned::Refreshed
            } else {
                Learned::Moved
            };
            if old_key.0 != now || entry.port != port {
                self.by_age.remove(&old_key);
                let key = self.age_key(now);
                self.by_age.insert(key, mac);
                self.map.insert(
                    mac,
                    Entry {
                        port,
                        age_key: Some(key),
                    },
                );
            }
            return outcome;
        }
        if self.capacity == 0 {
            return Learned::Disabled;
        }
        let mut evicted = false;
        if self.by_age.len() >= self.capacity
            && let Some((_, oldest)) = self.by_age.pop_first()
        {
            self.map.remove(&oldest);
            evicted = true;
        }
        let key = self.age_key(now);
        self.by_age.insert(key, mac);
        self.map.insert(
            mac,
            Entry {
                port,
                age_key: Some(key),
            },
        );
        Learned::New { evicted }
    }

    /// The port `mac` was learned on or assigned to; an expired learned entry is removed.
    pub(crate) fn lookup(&mut self, mac: MacAddr, now: u64) -> Lookup {
        let Some(entry) = self.map.get(&mac).copied() else {
            return Lookup::Unknown;
        };
        match entry.age_key {
            Some(key) if self.expired(key.0, now) => {
                self.by_age.remove(&key);
                self.map.remove(&mac);
                Lookup::Expired
            }
            _ => Lookup::Found(entry.port),
        }
    }

    /// Like [`lookup`](Self::lookup) but read-only: expired entries are reported absent.
    pub(crate) fn peek(&self, mac: MacAddr, now: u64) -> Option<PortId> {
        let entry = self.map.get(&mac)?;
        match entry.age_key {
            Some(key) if self.expired(key.0, now) => None,
            _ => Some(entry.port),
        }
    }

    /// Removes up to `limit` expired learned entries, oldest first; returns how many.
    pub(crate) fn expire(&mut self, now: u64, limit: usize) -> usize {
        let mut removed = 0;
        while removed < limit {
            let Some((&key, &mac)) = self.by_age.first_key_value() else {
                break;
            };
            if !self.expired(key.0, now) {
                break;
            }
            self.by_age.remove(&key);
            self.map.remove(&mac);
            removed += 1;
        }
        removed
    }

    /// Removes every entry, static or learned, that points at `port`; returns how many.
    pub(crate) fn forget_port(&mut self, port: PortId) -> usize {
        let before = self.map.len();
        let by_age = &mut self.by_age;
        self.map.retain(|_, entry| {
            if entry.port != port {
                return true;
            }
            if let Some(key) = entry.age_key {
                by_age.remove(&key);
            }
            false
        });
        before - self.map.len()
    }

    /// Every entry, in no particular order.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (MacAddr, PortId, MacOrigin)> + '_ {
        self.map.iter().map(|(&mac, entry)| {
            let origin = match entry.age_key {
                None => MacOrigin::Static,
                Some((last_seen, _)) => MacOrigin::Learned { last_seen },
            };
            (mac, entry.port, origin)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, n])
    }

    #[test]
    fn learn_refresh_move() {
        let mut t = MacTable::new(4, 100);
        assert_eq!(t.learn(mac(1), PortId(1), 0), Learned::New { evicted: false });
        assert_eq!(t.learn(mac(1), PortId(1), 5), Learned::Refreshed);
        assert_eq!(t.learn(mac(1), PortId(2), 6), Learned::Moved);
        assert_eq!(t.lookup(mac(1), 6), Lookup::Found(PortId(2)));
        assert_eq!(t.len(), 1);
        assert_eq!(t.learned_len(), 1);
    }

    #[test]
    fn eviction_takes_least_recently_seen() {
        let mut t = MacTable::new(2, 1000);
        t.learn(mac(1), PortId(1), 0);
        t.learn(mac(2), PortId(1), 1);
        t.learn(mac(1), PortId(1), 2); // mac(1) is now the freshest
        assert_eq!(t.learn(mac(3), PortId(1), 3), Learned::New { evicted: true });
        assert_eq!(t.peek(mac(2), 3), None);
        assert_eq!(t.peek(mac(1), 3), Some(PortId(1)));
        assert_eq!(t.peek(mac(3), 3), Some(PortId(1)));
        assert_eq!(t.learned_len(), 2);
    }

    #[test]
    fn static_entries_are_not_aged_evicted_or_moved() {
        let mut t = MacTable::new(1, 10);
        t.learn(mac(9), PortId(3), 0);
        t.insert_static(mac(9), PortId(1));
        assert_eq!(t.learned_len(), 0);
        assert_eq!(t.learn(mac(9), PortId(2), 1), Learned::StaticConflict);
        t.learn(mac(2), PortId(2), 1);
        t.learn(mac(3), PortId(2), 2);
        assert_eq!(t.lookup(mac(9), 1_000), Lookup::Found(PortId(1)));
        assert_eq!(t.expire(1_000, usize::MAX), 1);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn aging() {
        let mut t = MacTable::new(8, 10);
        t.learn(mac(1), PortId(1), 100);
        t.learn(mac(2), PortId(1), 105);
        assert_eq!(t.lookup(mac(1), 110), Lookup::Found(PortId(1)));
        assert_eq!(t.peek(mac(1), 111), None);
        assert_eq!(t.lookup(mac(1), 111), Lookup::Expired);
        assert_eq!(t.lookup(mac(1), 111), Lookup::Unknown);
        assert_eq!(t.expire(115, usize::MAX), 0);
        assert_eq!(t.expire(116, usize::MAX), 1);
        assert_eq!(t.len(), 0);
        // A clock that went backwards does not expire anything.
        t.learn(mac(3), PortId(1), 500);
        assert_eq!(t.lookup(mac(3), 5), Lookup::Found(PortId(1)));
    }

    #[test]
    fn forget_port_clears_both_kinds() {
        let mut t = MacTable::new(8, 10);
        t.insert_static(mac(1), PortId(1));
        t.learn(mac(2), PortId(1), 0);
        t.learn(mac(3), PortId(2), 0);
        assert_eq!(t.forget_port(PortId(1)), 2);
        assert_eq!(t.len(), 1);
        assert_eq!(t.learned_len(), 1);
        assert_eq!(t.peek(mac(3), 0), Some(PortId(2)));
    }

    #[test]
    fn capacity_zero_learns_nothing() {
        let mut t = MacTable::new(0, 10);
        assert_eq!(t.learn(mac(1), PortId(1), 0), Learned::Disabled);
        assert_eq!(t.len(), 0);
    }
}
