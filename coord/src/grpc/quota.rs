//! Caps on long-lived streams per caller, so one certificate cannot pin unbounded
//! memory in a master by opening watch or heartbeat streams on many connections.
//! Masters are exempt: they forward for agents, and a benchmark emulates many agents
//! with one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use pki::{CertRole, PeerIdentity};
use tonic::Status;

/// Open heartbeat sessions per node certificate: one, plus room for a reconnect that
/// overlaps the session it replaces.
pub(crate) const MAX_HEARTBEATS_PER_CALLER: usize = 4;
/// Open watch streams per certificate.
pub(crate) const MAX_WATCHES_PER_CALLER: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum StreamKind {
    Heartbeat,
    Watch,
}

impl StreamKind {
    fn max(self) -> usize {
        match self {
            StreamKind::Heartbeat => MAX_HEARTBEATS_PER_CALLER,
            StreamKind::Watch => MAX_WATCHES_PER_CALLER,
        }
    }
}

type Key = (StreamKind, String);
type Open = Arc<Mutex<BTreeMap<Key, usize>>>;

/// Open streams by (kind, caller).
#[derive(Default, Clone)]
pub(crate) struct StreamQuota {
    open: Open,
}

/// One open stream; dropping it (when the stream ends) gives the slot back.
pub(crate) struct Slot {
    open: Option<(Open, Key)>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((open, key)) = self.open.take() {
            let mut m = open.lock().expect("quota lock");
            if let Some(n) = m.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&key);
                }
            }
        }
    }
}

impl StreamQuota {
    /// Takes a slot for a stream of `kind` opened by `who`, or refuses with
    /// `resource_exhausted` when the caller already holds the maximum.
    pub(crate) fn acquire(&self, kind: StreamKind, who: Option<&PeerIdentity>) -> Result<Slot, Status> {
        let Some(who) = who.filter(|w| w.role != CertRole::Manager) else {
            return Ok(Slot { open: None });
        };
        // The certificate's subject: a node id or a user name, with its role.
        let key = (kind, format!("{}/{}", who.role, who.name));
        let mut m = self.open.lock().expect("quota lock");
        let n = m.entry(key.clone()).or_default();
        if *n >= kind.max() {
            return Err(Status::resource_exhausted(format!(
                "this certificate already holds {} open {kind:?} streams on this master; close some first",
                kind.max()
            )));
        }
        *n += 1;
        Ok(Slot { open: Some((self.open.clone(), key)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(role: CertRole, name: &str) -> PeerIdentity {
        PeerIdentity {
            cluster_id: "c".into(),
            role,
            node_id: None,
            name: name.into(),
            not_after_unix: 0,
            not_before_unix: 0,
            issuer: String::new(),
        }
    }

    #[test]
    fn a_caller_gets_at_most_its_cap_and_slots_come_back() {
        let q = StreamQuota::default();
        let a = who(CertRole::Reader, "app");
        let held: Vec<Slot> =
            (0..MAX_WATCHES_PER_CALLER).map(|_| q.acquire(StreamKind::Watch, Some(&a)).unwrap()).collect();
        let e = q.acquire(StreamKind::Watch, Some(&a)).err().expect("over the cap");
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        // Another caller, and another kind, are counted apart.
        assert!(q.acquire(StreamKind::Watch, Some(&who(CertRole::Reader, "other"))).is_ok());
        assert!(q.acquire(StreamKind::Heartbeat, Some(&a)).is_ok());
        // Masters are not capped.
        let m = who(CertRole::Manager, "1");
        let many: Vec<Slot> = (0..1000).map(|_| q.acquire(StreamKind::Watch, Some(&m)).unwrap()).collect();
        drop(many);
        drop(held);
        assert!(q.acquire(StreamKind::Watch, Some(&a)).is_ok());
        assert!(q.open.lock().unwrap().is_empty(), "every slot given back");
    }
}
