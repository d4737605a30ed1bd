//! Leak repair, run by the leader. An address bound to an agent (`Allocate` with a node)
//! leaks when that agent was removed from the registry, or when the agent reports what
//! it holds and the owner is not in the report. The leader remembers when it first saw
//! each leak (in memory: a new leader starts counting again, which only delays repair)
//! and, `ip_leak_grace_ms` later, proposes `ReleaseLeaked`, which releases an address
//! only if the same owner still holds it.
//!
//! This module decides; the leader's duties ([`crate::leader`]) run it. It reads the
//! applied state through [`IpamStore`] only, so it knows nothing of RocksDB.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::{keys, Holding, Ipam, IpamStore};
use crate::types::NodeId;

/// One address an agent says it holds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Held {
    pub network: String,
    pub address: IpAddr,
    pub owner: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leak {
    pub network: String,
    pub owner: String,
    pub address: IpAddr,
    pub node: NodeId,
    pub reason: &'static str,
    /// When the leader first saw it.
    pub seen: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub network: String,
    pub address: IpAddr,
    pub node: NodeId,
    pub reported_owner: String,
    /// Empty when the state says the address is free.
    pub state_owner: String,
}

/// The leader's memory of agents' reports and of leaks seen.
#[derive(Debug, Default)]
pub struct LeakTracker {
    reports: Mutex<BTreeMap<NodeId, BTreeSet<Held>>>,
    seen: Mutex<BTreeMap<(String, String), Instant>>,
}

/// (network, owner) of every allocation bound to `node`.
fn bound_to(store: &mut dyn IpamStore, node: NodeId) -> std::io::Result<Vec<(String, String)>> {
    let prefix = keys::held_prefix(node);
    let mut out = Vec::new();
    for (k, _) in store.scan(&prefix, usize::MAX)? {
        let rest = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
        if let Some((net, owner)) = rest.split_once('/') {
            out.push((net.to_string(), owner.to_string()));
        }
    }
    Ok(out)
}

impl LeakTracker {
    /// Records an agent's report (it replaces the previous one).
    pub fn report(&self, node: NodeId, held: Vec<Held>) {
        self.reports.lock().expect("reports lock").insert(node, held.into_iter().collect());
    }

    /// Forgets everything (this node stopped leading).
    pub fn reset(&self) {
        self.reports.lock().expect("reports lock").clear();
        self.seen.lock().expect("seen lock").clear();
    }

    /// Current leaks and conflicts, read from the applied state through `store`.
    /// `removed` are the ids removed from the registry.
    pub fn check(
        &self,
        store: &mut dyn IpamStore,
        ipam: &Ipam,
        removed: &BTreeSet<NodeId>,
        now: Instant,
    ) -> std::io::Result<(Vec<Leak>, Vec<Conflict>)> {
        let reports = self.reports.lock().expect("reports lock").clone();
        let mut found: Vec<(String, String, NodeId, &'static str)> = Vec::new();
        for &node in removed {
            for (net, owner) in bound_to(store, node)? {
                found.push((net, owner, node, "its node was removed"));
            }
        }
        let mut conflicts = Vec::new();
        for (&node, held) in &reports {
            if removed.contains(&node) {
                continue;
            }
            let reported: BTreeSet<(&str, &str)> =
                held.iter().map(|h| (h.network.as_str(), h.owner.as_str())).collect();
            for (net, owner) in bound_to(store, node)? {
                if !reported.contains(&(net.as_str(), owner.as_str())) {
                    found.push((net, owner, node, "not reported by its node"));
                }
            }
            for h in held {
                let state_owner = match ipam.networks.get(&h.network) {
                    None => String::new(),
                    Some(n) => {
                        let (num, v6) = super::addr_num(h.address);
                        match n.pools.iter().enumerate().find(|(_, p)| p.subnet.contains(num, v6)) {
                            None => String::new(),
                            Some((i, p)) => store
                                .get(&keys::addr(&h.network, i as u8, num - p.subnet.base))?
                                .map(|o| String::from_utf8_lossy(&o).into_owned())
                                .unwrap_or_default(),
                        }
                    }
                };
                if state_owner != h.owner {
                    conflicts.push(Conflict {
                        network: h.network.clone(),
                        address: h.address,
                        node,
                        reported_owner: h.owner.clone(),
                        state_owner,
                    });
                }
            }
        }
        let mut seen = self.seen.lock().expect("seen lock");
        let mut still: BTreeMap<(String, String), Instant> = BTreeMap::new();
        let mut leaks = Vec::new();
        for (net, owner, node, reason) in found {
            let Some(b) = store.get(&keys::owner(&net, &owner))? else { continue };
            let h: Holding = crate::codec::decode(&b)?;
            let Some(n) = ipam.networks.get(&net) else { continue };
            let address = n.pools[h.pool as usize].subnet.addr(h.offset);
            let first = *seen.get(&(net.clone(), owner.clone())).unwrap_or(&now);
            still.insert((net.clone(), owner.clone()), first);
            leaks.push(Leak { network: net, owner, address, node, reason, seen: first });
        }
        *seen = still;
        Ok((leaks, conflicts))
    }

    /// Leaks whose grace period is over, grouped by network.
    pub fn due(leaks: &[Leak], grace: Duration, now: Instant) -> BTreeMap<String, Vec<(String, IpAddr, NodeId)>> {
        let mut out: BTreeMap<String, Vec<(String, IpAddr, NodeId)>> = BTreeMap::new();
        for l in leaks.iter().filter(|l| now.saturating_duration_since(l.seen) >= grace) {
            out.entry(l.network.clone()).or_default().push((l.owner.clone(), l.address, l.node));
        }
        out
    }
}
