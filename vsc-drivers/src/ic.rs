//! The guest side of the Hyper-V integration services, transport-agnostic:
//! given an in-band payload the host sent on an IC channel, produce the
//! payload to send back (in-band, same transaction id, no completion
//! requested) and what the OS should do. It behaves as Linux 6.1's
//! `hv_utils` does (`drivers/hv/hv_util.c`, `hv_kvp.c` with its daemon,
//! `channel_mgmt.c` `vmbus_prep_negotiate_resp`): every answer is the
//! request rewritten in place with flags TRANSACTION|RESPONSE.
//!
//! Host bytes are checked: a payload shorter than the headers, or a
//! service message shorter than its struct, is dropped with an
//! [`IcError`] and not answered (as Linux drops it); an unknown message
//! type is answered with `HV_E_FAIL`.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use ic_protocol::IntoBytes;
use ic_protocol::{
    FRAMEWORK_VERSIONS, HEARTBEAT_GUID, HEARTBEAT_VERSIONS, KVP_GUID, KVP_VERSIONS, KvpData, KvpHeader,
    KvpPool, KvpRequest, Message, MessageType, Negotiate, ParseError, SHUTDOWN_GUID, SHUTDOWN_VERSIONS,
    Status, TIMESYNC_GUID, TIMESYNC_VERSIONS, Version,
};

/// Which service a channel carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// Shutdown.
    Shutdown,
    /// Time sync.
    TimeSync,
    /// Heartbeat.
    Heartbeat,
    /// Key-value pairs.
    Kvp,
}

impl Service {
    /// The service an offer's interface type names, if it is an IC.
    pub fn from_interface(interface_type: &[u8; 16]) -> Option<Self> {
        match *interface_type {
            SHUTDOWN_GUID => Some(Self::Shutdown),
            TIMESYNC_GUID => Some(Self::TimeSync),
            HEARTBEAT_GUID => Some(Self::Heartbeat),
            KVP_GUID => Some(Self::Kvp),
            _ => None,
        }
    }

    /// Its interface type GUID (wire order).
    pub fn interface(self) -> [u8; 16] {
        match self {
            Self::Shutdown => SHUTDOWN_GUID,
            Self::TimeSync => TIMESYNC_GUID,
            Self::Heartbeat => HEARTBEAT_GUID,
            Self::Kvp => KVP_GUID,
        }
    }

    /// The service versions the guest supports, newest first.
    pub fn versions(self) -> &'static [Version] {
        match self {
            Self::Shutdown => SHUTDOWN_VERSIONS,
            Self::TimeSync => TIMESYNC_VERSIONS,
            Self::Heartbeat => HEARTBEAT_VERSIONS,
            Self::Kvp => KVP_VERSIONS,
        }
    }

    /// The message type of its requests.
    pub fn message_type(self) -> MessageType {
        match self {
            Self::Shutdown => MessageType::SHUTDOWN,
            Self::TimeSync => MessageType::TIMESYNC,
            Self::Heartbeat => MessageType::HEARTBEAT,
            Self::Kvp => MessageType::KVP_EXCHANGE,
        }
    }
}

/// What the OS should do after sending the answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    None,
    /// Versions were agreed (framework, service); `None` if there were
    /// no common ones.
    Negotiated(Option<(Version, Version)>),
    /// Power off (the answer said OK).
    PowerOff,
    /// Restart (the answer said OK).
    Reboot,
    /// Apply the host's time: UTC in 100 ns since 1601-01-01, the
    /// reference time it was read at (service 4.0), and whether to set the
    /// clock at once (`sync`) or take it as a sample.
    SetTime {
        /// Host UTC, 100 ns since 1601.
        host_time: u64,
        /// The partition reference time of the sample (4.0 only).
        reference_time: Option<u64>,
        /// SYNC (set now) rather than SAMPLE.
        sync: bool,
    },
    /// The KVP table changed (a SET or DELETE succeeded).
    KvpChanged,
}

/// An answer to send and the action to take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The in-band payload to send back (same transaction id).
    pub payload: Vec<u8>,
    /// What to do once it is sent.
    pub action: Action,
}

/// Why a host payload got no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcError {
    /// The payload is malformed.
    Parse(ParseError),
    /// A service message arrived before versions were negotiated.
    NotNegotiated,
}

impl fmt::Display for IcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Parse(e) => write!(f, "malformed IC message: {e}"),
            Self::NotNegotiated => f.write_str("IC message before negotiation"),
        }
    }
}

impl From<ParseError> for IcError {
    fn from(e: ParseError) -> Self {
        Self::Parse(e)
    }
}

/// Pairs the guest keeps per pool.
pub const KVP_MAX_ENTRIES: usize = 64;

/// The guest's KVP pools (what Linux's `hv_kvp_daemon` keeps in files):
/// bounded to [`KVP_MAX_ENTRIES`] pairs per pool.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvpStore {
    pools: [Vec<(String, String)>; KvpPool::COUNT as usize],
}

impl KvpStore {
    /// Empty pools.
    pub fn new() -> Self {
        Self::default()
    }

    /// The pairs of `pool` (empty for an unknown pool).
    pub fn pool(&self, pool: KvpPool) -> &[(String, String)] {
        self.pools
            .get(usize::from(pool.0))
            .map(|v| v.as_slice())
            .unwrap_or(&[])
    }

    /// Set `key` to `value` in `pool`; false if the pool is unknown or full
    /// or a string would not fit the wire arrays.
    pub fn set(&mut self, pool: KvpPool, key: &str, value: &str) -> bool {
        if key.is_empty()
            || key.encode_utf16().count() >= ic_protocol::KVP_MAX_KEY_BYTES / 2
            || value.encode_utf16().count() >= ic_protocol::KVP_MAX_VALUE_BYTES / 2
        {
            return false;
        }
        let Some(list) = self.pools.get_mut(usize::from(pool.0)) else {
            return false;
        };
        if let Some(e) = list.iter_mut().find(|(k, _)| k == key) {
            e.1 = String::from(value);
            true
        } else if list.len() < KVP_MAX_ENTRIES {
            list.push((String::from(key), String::from(value)));
            true
        } else {
            false
        }
    }

    /// The value of `key` in `pool`.
    pub fn get(&self, pool: KvpPool, key: &str) -> Option<&str> {
        self.pool(pool)
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Remove `key` from `pool`; false if it was not there.
    pub fn delete(&mut self, pool: KvpPool, key: &str) -> bool {
        let Some(list) = self.pools.get_mut(usize::from(pool.0)) else {
            return false;
        };
        let before = list.len();
        list.retain(|(k, _)| k != key);
        list.len() != before
    }
}

/// Counters a client keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Messages answered.
    pub answered: u64,
    /// Messages dropped as malformed.
    pub dropped: u64,
}

/// One IC channel's guest side.
pub struct IcClient {
    service: Service,
    versions: Option<(Version, Version)>,
    /// The KVP pools (used by the KVP service only).
    pub kvp: KvpStore,
    stats: ClientStats,
}

impl IcClient {
    /// A client for `service`, not yet negotiated.
    pub fn new(service: Service) -> Self {
        Self {
            service,
            versions: None,
            kvp: KvpStore::new(),
            stats: ClientStats::default(),
        }
    }

    /// A KVP client answering from `store`.
    pub fn with_kvp(store: KvpStore) -> Self {
        let mut c = Self::new(Service::Kvp);
        c.kvp = store;
        c
    }

    /// Its service.
    pub fn service(&self) -> Service {
        self.service
    }

    /// The agreed (framework, service) versions.
    pub fn versions(&self) -> Option<(Version, Version)> {
        self.versions
    }

    /// Its counters.
    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// Answer one payload from the host.
    pub fn handle(&mut self, payload: &[u8]) -> Result<Reply, IcError> {
        let r = self.answer(payload);
        match r {
            Ok(_) => self.stats.answered = self.stats.answered.saturating_add(1),
            Err(_) => self.stats.dropped = self.stats.dropped.saturating_add(1),
        }
        r
    }

    fn answer(&mut self, payload: &[u8]) -> Result<Reply, IcError> {
        let message = Message::parse(payload)?;
        let kind = message.header.message_type();
        if kind == MessageType::NEGOTIATE {
            // vmbus_prep_negotiate_resp: our lists in order, first match in
            // the host's; an invalid table gets the failure answer.
            let chosen = Negotiate::parse(message.rest).ok().and_then(|n| {
                let fw = ic_protocol::choose(FRAMEWORK_VERSIONS, n.framework)?;
                let msg = ic_protocol::choose(self.service.versions(), n.message)?;
                Some((fw, msg))
            });
            self.versions = chosen;
            let payload = ic_protocol::build_negotiate_response(payload, chosen)?;
            return Ok(Reply {
                payload,
                action: Action::Negotiated(chosen),
            });
        }
        if kind != self.service.message_type() {
            let payload = ic_protocol::build_response(payload, Status::E_FAIL, |_| {})?;
            return Ok(Reply {
                payload,
                action: Action::None,
            });
        }
        let (_, version) = self.versions.ok_or(IcError::NotNegotiated)?;
        let body = message.rest;
        match self.service {
            Service::Heartbeat => {
                let seq = ic_protocol::parse_heartbeat(body)?;
                let payload = ic_protocol::build_response(payload, Status::OK, |out| {
                    let at = ic_protocol::ICMSG_HDR;
                    out[at..at + 8].copy_from_slice(&seq.wrapping_add(1).to_le_bytes());
                })?;
                Ok(Reply {
                    payload,
                    action: Action::None,
                })
            }
            Service::Shutdown => {
                let req = ic_protocol::parse_shutdown(body)?;
                let (status, action) = match req.flags.0 {
                    0 | 1 => (Status::OK, Action::PowerOff),
                    2 | 3 => (Status::OK, Action::Reboot),
                    // Hibernation (4, 5) is not supported, nor anything else.
                    _ => (Status::E_FAIL, Action::None),
                };
                let payload = ic_protocol::build_response(payload, status, |_| {})?;
                Ok(Reply { payload, action })
            }
            Service::TimeSync => {
                let sample = ic_protocol::parse_timesync(version, body)?;
                let payload = ic_protocol::build_response(payload, Status::OK, |_| {})?;
                Ok(Reply {
                    payload,
                    action: Action::SetTime {
                        host_time: sample.host_time,
                        reference_time: sample.reference_time,
                        sync: sample.flags.0 & ic_protocol::TimesyncFlags::SYNC.0 != 0,
                    },
                })
            }
            Service::Kvp => self.kvp_answer(payload, body),
        }
    }

    fn kvp_answer(&mut self, payload: &[u8], body: &[u8]) -> Result<Reply, IcError> {
        let value_at = ic_protocol::ICMSG_HDR + size_of::<KvpHeader>();
        let request = match ic_protocol::parse_kvp_request(body) {
            Ok(r) => r,
            // IP information and unknown operations: not supported (Linux
            // answers HV_E_FAIL when the daemon cannot).
            Err(ParseError::KvpOperation(_)) | Err(ParseError::KvpPool(_)) => {
                let payload = ic_protocol::build_response(payload, Status::E_FAIL, |_| {})?;
                return Ok(Reply {
                    payload,
                    action: Action::None,
                });
            }
            Err(e) => return Err(e.into()),
        };
        let mut action = Action::None;
        let (status, fill): (Status, Option<(usize, String, String)>) = match &request {
            KvpRequest::Get { pool, key } => match self.kvp.get(*pool, key) {
                Some(v) => (Status::OK, Some((value_at, key.clone(), String::from(v)))),
                None => (Status::S_CONT, None),
            },
            KvpRequest::Set { pool, key, value } => {
                let text = match value {
                    KvpData::String(s) => s.clone(),
                    other => other.to_text(),
                };
                if self.kvp.set(*pool, key, &text) {
                    action = Action::KvpChanged;
                    (Status::OK, None)
                } else {
                    (Status::E_FAIL, None)
                }
            }
            KvpRequest::Delete { pool, key } => {
                if self.kvp.delete(*pool, key) {
                    action = Action::KvpChanged;
                    (Status::OK, None)
                } else {
                    (Status::S_CONT, None)
                }
            }
            KvpRequest::Enumerate { pool, index } => {
                match usize::try_from(*index)
                    .ok()
                    .and_then(|i| self.kvp.pool(*pool).get(i))
                {
                    Some((k, v)) => (Status::OK, Some((value_at + 4, k.clone(), v.clone()))),
                    None => (Status::S_CONT, None),
                }
            }
        };
        let value = match &fill {
            Some((_, k, v)) => Some(ic_protocol::kvp_value(k, v)?),
            None => None,
        };
        let payload = ic_protocol::build_response(payload, status, |out| {
            if let (Some((at, _, _)), Some(v)) = (&fill, &value) {
                let bytes = v.as_bytes();
                // The request was checked to hold the whole struct.
                if let Some(slot) = out.get_mut(*at..*at + bytes.len()) {
                    slot.copy_from_slice(bytes);
                }
            }
        })?;
        Ok(Reply { payload, action })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ic_protocol::ShutdownFlags;

    fn negotiated(service: Service) -> IcClient {
        let mut c = IcClient::new(service);
        let req = ic_protocol::build_negotiate(FRAMEWORK_VERSIONS, service.versions()).unwrap();
        let r = c.handle(&req).unwrap();
        assert!(matches!(r.action, Action::Negotiated(Some(_))));
        c
    }

    fn versions(c: &IcClient) -> (Version, Version) {
        c.versions().unwrap()
    }

    #[test]
    fn negotiation_picks_the_highest_common_versions() {
        let mut c = IcClient::new(Service::Shutdown);
        let req = ic_protocol::build_negotiate(
            &[Version::new(1, 0), Version::new(3, 0)],
            &[Version::new(1, 0), Version::new(3, 1), Version::new(9, 9)],
        )
        .unwrap();
        let r = c.handle(&req).unwrap();
        assert_eq!(
            r.action,
            Action::Negotiated(Some((Version::new(3, 0), Version::new(3, 1))))
        );
        let m = Message::parse(&r.payload).unwrap();
        assert_eq!(
            ic_protocol::parse_negotiate_response(m.body().unwrap()).unwrap(),
            Some((Version::new(3, 0), Version::new(3, 1)))
        );
        // Nothing in common: counts 0/0.
        let req = ic_protocol::build_negotiate(&[Version::new(2, 0)], &[Version::new(3, 0)]).unwrap();
        let r = c.handle(&req).unwrap();
        assert_eq!(r.action, Action::Negotiated(None));
        assert_eq!(c.versions(), None);
    }

    #[test]
    fn heartbeat_shutdown_timesync() {
        let mut hb = negotiated(Service::Heartbeat);
        let req = ic_protocol::build_request(
            MessageType::HEARTBEAT,
            versions(&hb),
            ic_protocol::heartbeat_body(9).as_bytes(),
        )
        .unwrap();
        let r = hb.handle(&req).unwrap();
        let m = Message::parse(&r.payload).unwrap();
        assert_eq!(ic_protocol::parse_heartbeat(m.rest).unwrap(), 10);
        assert!(hb.handle(&req[..30]).is_err());

        let mut sd = negotiated(Service::Shutdown);
        for (flags, action) in [(0, Action::PowerOff), (3, Action::Reboot), (4, Action::None)] {
            let body = ic_protocol::shutdown_body(ShutdownFlags(flags), 0, 0, "x");
            let req =
                ic_protocol::build_request(MessageType::SHUTDOWN, versions(&sd), body.as_bytes()).unwrap();
            let r = sd.handle(&req).unwrap();
            assert_eq!(r.action, action);
            let status = Message::parse(&r.payload).unwrap().header.status();
            assert_eq!(status == Status::OK, action != Action::None);
        }

        let mut ts = negotiated(Service::TimeSync);
        let sample = ic_protocol::TimeSample {
            host_time: 1234,
            reference_time: Some(5),
            flags: ic_protocol::TimesyncFlags::SYNC,
        };
        let body = ic_protocol::timesync_body(versions(&ts).1, sample);
        let req = ic_protocol::build_request(MessageType::TIMESYNC, versions(&ts), &body).unwrap();
        let r = ts.handle(&req).unwrap();
        assert_eq!(
            r.action,
            Action::SetTime {
                host_time: 1234,
                reference_time: Some(5),
                sync: true
            }
        );
        assert_eq!(r.payload.len(), req.len());
    }

    #[test]
    fn kvp_operations() {
        let mut store = KvpStore::new();
        assert!(store.set(KvpPool::AUTO, "OSName", "hv-rs test OS"));
        let mut c = IcClient::with_kvp(store);
        let req = ic_protocol::build_negotiate(FRAMEWORK_VERSIONS, KVP_VERSIONS).unwrap();
        c.handle(&req).unwrap();
        let v = versions(&c);
        let ask = |c: &mut IcClient, r: KvpRequest| {
            let body = ic_protocol::kvp_request_body(&r).unwrap();
            let req = ic_protocol::build_request(MessageType::KVP_EXCHANGE, v, &body).unwrap();
            let reply = c.handle(&req).unwrap();
            assert_eq!(reply.payload.len(), req.len());
            let m = Message::parse(&reply.payload).unwrap();
            (m.header.status(), reply.payload.clone(), reply.action)
        };
        let (st, p, _) = ask(
            &mut c,
            KvpRequest::Enumerate {
                pool: KvpPool::AUTO,
                index: 0,
            },
        );
        assert_eq!(st, Status::OK);
        let m = Message::parse(&p).unwrap();
        let (_, _, k, val) = ic_protocol::parse_kvp_answer(m.rest).unwrap();
        assert_eq!(
            (k.as_str(), val),
            ("OSName", KvpData::String("hv-rs test OS".into()))
        );
        let (st, _, _) = ask(
            &mut c,
            KvpRequest::Enumerate {
                pool: KvpPool::AUTO,
                index: 1,
            },
        );
        assert_eq!(st, Status::S_CONT);
        let (st, _, a) = ask(
            &mut c,
            KvpRequest::Set {
                pool: KvpPool::EXTERNAL,
                key: "k".into(),
                value: KvpData::String("v".into()),
            },
        );
        assert_eq!((st, a), (Status::OK, Action::KvpChanged));
        assert_eq!(c.kvp.get(KvpPool::EXTERNAL, "k"), Some("v"));
        let (st, p, _) = ask(
            &mut c,
            KvpRequest::Get {
                pool: KvpPool::EXTERNAL,
                key: "k".into(),
            },
        );
        assert_eq!(st, Status::OK);
        let m = Message::parse(&p).unwrap();
        assert_eq!(
            ic_protocol::parse_kvp_answer(m.rest).unwrap().3,
            KvpData::String("v".into())
        );
        let (st, _, _) = ask(
            &mut c,
            KvpRequest::Delete {
                pool: KvpPool::EXTERNAL,
                key: "k".into(),
            },
        );
        assert_eq!(st, Status::OK);
        let (st, _, _) = ask(
            &mut c,
            KvpRequest::Get {
                pool: KvpPool::EXTERNAL,
                key: "k".into(),
            },
        );
        assert_eq!(st, Status::S_CONT);
        // The store is bounded.
        let mut s = KvpStore::new();
        for i in 0..KVP_MAX_ENTRIES {
            assert!(s.set(KvpPool::GUEST, &alloc::format!("{i}"), "x"));
        }
        assert!(!s.set(KvpPool::GUEST, "one more", "x"));
        assert!(!s.set(KvpPool(7), "k", "x"));
    }

    #[test]
    fn hostile_host_bytes_are_dropped_not_panicked_on() {
        let mut c = IcClient::new(Service::Heartbeat);
        let req = ic_protocol::build_request(
            MessageType::HEARTBEAT,
            (Version::new(3, 0), Version::new(3, 0)),
            ic_protocol::heartbeat_body(1).as_bytes(),
        )
        .unwrap();
        assert_eq!(c.handle(&req), Err(IcError::NotNegotiated));
        for n in 0..req.len() {
            let _ = c.handle(&req[..n]);
        }
        let mut neg = ic_protocol::build_negotiate(FRAMEWORK_VERSIONS, HEARTBEAT_VERSIONS).unwrap();
        neg[28] = 200; // framework count beyond the table
        let r = c.handle(&neg).unwrap();
        assert_eq!(r.action, Action::Negotiated(None));
        assert!(c.stats().dropped > 0);
    }
}
