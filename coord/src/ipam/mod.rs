//! Overlay network IP address management inside the state machine.
//!
//! Allocation is a deterministic apply step, so there is no allocator to rebuild after a
//! failover: every member holds the same pools, cursors and quarantine.
//!
//! Memory stays small for any pool size: a pool keeps, in memory, only its *used*
//! addresses as an interval set (allocated and quarantined offsets, merged into runs) and
//! its reserved runs. Sequential allocation keeps a /8 fully allocated as one run. Who
//! holds which address lives in the store (`i/o/…` owner → address, `i/a/…` address →
//! owner) and is read during apply through [`IpamStore`].
//!
//! Store keys (all under `i/`; network names cannot contain `/`):
//! - `i/n/<net>`: the network (subnets, gateway, reserved runs, cursors, counters);
//! - `i/s/<net>/<pool><start>` → end: a run of used offsets;
//! - `i/o/<net>/<owner>` → pool, offset, node; `i/a/<net>/<pool><offset>` → owner;
//! - `i/q/<net>/<expires_ms><pool><offset>`: a released address in quarantine;
//! - `i/h/<node>/<net>/<owner>`: allocations bound to an agent, for leak repair.

// State-machine code: deterministic on every member (see coord/clippy.toml).
#![deny(clippy::disallowed_types, clippy::disallowed_methods)]

pub mod repair;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

pub const MAX_NAME_BYTES: usize = 64;
pub const MAX_OWNER_BYTES: usize = 253;
pub const MAX_BATCH: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum IpamError {
    #[error("{0}")]
    Invalid(String),
    #[error("network {0:?} not found")]
    UnknownNetwork(String),
    #[error("network {0:?} already exists")]
    NetworkExists(String),
    #[error("subnet {0} overlaps subnet {1} of network {2:?}")]
    Overlap(String, String, String),
    #[error(
        "network {net:?} is full: {size} usable addresses in {subnet}, {used} allocated, {quarantined} in quarantine"
    )]
    Exhausted { net: String, subnet: String, size: u128, used: u128, quarantined: u128 },
    #[error("address {0} is not in any subnet of network {1:?}")]
    OutsideSubnet(String, String),
    #[error("address {0} is reserved")]
    Reserved(String),
    #[error("address {addr} is already held by {owner:?}")]
    Taken { addr: String, owner: String },
    #[error("address {0} is in quarantine until {1} ms (released recently)")]
    Quarantined(String, u64),
    #[error("owner {owner:?} already holds {held} in network {net:?}")]
    OwnerHoldsOther { owner: String, held: String, net: String },
    #[error("network {0:?} still has {1} allocated addresses; release them or use --force")]
    InUse(String, u128),
    #[error("storage error: {0}")]
    Storage(String),
}

impl From<std::io::Error> for IpamError {
    fn from(e: std::io::Error) -> Self {
        IpamError::Storage(e.to_string())
    }
}

type Result<T> = std::result::Result<T, IpamError>;

/// A subnet as the proposer parsed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    pub v6: bool,
    /// The network address as a number (IPv4 in the low 32 bits).
    pub base: u128,
    pub prefix: u8,
}

impl Subnet {
    pub fn bits(&self) -> u8 {
        if self.v6 {
            128
        } else {
            32
        }
    }

    /// Number of addresses in the subnet.
    pub fn size(&self) -> u128 {
        1u128 << (self.bits() - self.prefix)
    }

    pub fn contains(&self, addr: u128, v6: bool) -> bool {
        v6 == self.v6 && addr >= self.base && addr - self.base < self.size()
    }

    pub fn overlaps(&self, o: &Subnet) -> bool {
        // Compare last addresses: base + size overflows u128 for the top /64.
        self.v6 == o.v6 && self.base <= o.base + (o.size() - 1) && o.base <= self.base + (self.size() - 1)
    }

    pub fn addr(&self, offset: u128) -> IpAddr {
        format_addr(self.base + offset, self.v6)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", format_addr(self.base, self.v6), self.prefix)
    }
}

pub fn format_addr(a: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(a))
    } else {
        IpAddr::V4(Ipv4Addr::from(a as u32))
    }
}

/// (number, is IPv6) of an address.
pub fn addr_num(a: IpAddr) -> (u128, bool) {
    match a {
        IpAddr::V4(v) => (u32::from(v) as u128, false),
        IpAddr::V6(v) => (u128::from(v), true),
    }
}

/// Parses `10.1.0.0/16` or `fd00::/64`. Pools go up to an IPv4 /8 and an IPv6 /64, and
/// must leave at least one usable address.
pub fn parse_cidr(s: &str) -> Result<Subnet> {
    let bad = |why: &str| IpamError::Invalid(format!("invalid CIDR {s:?}: {why}"));
    let (a, p) = s.split_once('/').ok_or_else(|| bad("expected ADDRESS/PREFIX"))?;
    let addr: IpAddr = a.parse().map_err(|_| bad("not an IP address"))?;
    let prefix: u8 = p.parse().map_err(|_| bad("prefix is not a number"))?;
    let (num, v6) = addr_num(addr);
    let bits = if v6 { 128 } else { 32 };
    if prefix > bits {
        return Err(bad("prefix longer than the address"));
    }
    let (min, max) = if v6 { (64, 126) } else { (8, 30) };
    if prefix < min {
        return Err(bad(&format!("pools go up to a /{min} for IPv{}", if v6 { 6 } else { 4 })));
    }
    if prefix > max {
        return Err(bad(&format!("a /{prefix} leaves no usable address; use at most /{max}")));
    }
    let host_bits = bits - prefix;
    if num & ((1u128 << host_bits) - 1) != 0 {
        return Err(bad(&format!(
            "host bits are set; the network address is {}",
            format_addr(num >> host_bits << host_bits, v6)
        )));
    }
    Ok(Subnet { v6, base: num, prefix })
}

pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(IpamError::Invalid(format!("network name {name:?}: 1-{MAX_NAME_BYTES} characters of [A-Za-z0-9._-]")))
    }
}

pub fn validate_owner(owner: &str) -> Result<()> {
    if owner.is_empty() || owner.len() > MAX_OWNER_BYTES || owner.chars().any(|c| c.is_control()) {
        return Err(IpamError::Invalid(format!("owner must be 1-{MAX_OWNER_BYTES} bytes without control characters")));
    }
    Ok(())
}

/// A set of u128 offsets stored as disjoint, non-adjacent runs `start → end` (inclusive).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Runs(pub BTreeMap<u128, u128>);

impl Runs {
    /// The run containing `x`, if any.
    pub fn find(&self, x: u128) -> Option<(u128, u128)> {
        self.0.range(..=x).next_back().filter(|(_, e)| **e >= x).map(|(s, e)| (*s, *e))
    }

    pub fn contains(&self, x: u128) -> bool {
        self.find(x).is_some()
    }

    /// Adds `x` (not present); returns (removed runs, added run) for persistence.
    pub fn insert(&mut self, x: u128) -> (Vec<u128>, (u128, u128)) {
        let mut removed = Vec::new();
        let (mut s, mut e) = (x, x);
        if let Some((ps, pe)) = x.checked_sub(1).and_then(|p| self.find(p)) {
            debug_assert_eq!(pe, x - 1);
            self.0.remove(&ps);
            removed.push(ps);
            s = ps;
        }
        if let Some(ne) = x.checked_add(1).and_then(|n| self.0.get(&n).copied()) {
            self.0.remove(&(x + 1));
            removed.push(x + 1);
            e = ne;
        }
        self.0.insert(s, e);
        (removed, (s, e))
    }

    /// Removes `x` (present); returns (removed run start, added runs).
    pub fn remove(&mut self, x: u128) -> (u128, Vec<(u128, u128)>) {
        let (s, e) = self.find(x).expect("offset in a run");
        self.0.remove(&s);
        let mut added = Vec::new();
        if s < x {
            self.0.insert(s, x - 1);
            added.push((s, x - 1));
        }
        if x < e {
            self.0.insert(x + 1, e);
            added.push((x + 1, e));
        }
        (s, added)
    }

    /// The first offset ≥ `from` and ≤ `last` in neither `self` nor `other`.
    pub fn first_free(&self, other: &Runs, from: u128, last: u128) -> Option<u128> {
        let mut x = from;
        while x <= last {
            match self.find(x).or_else(|| other.find(x)) {
                Some((_, e)) => x = e.checked_add(1)?,
                None => return Some(x),
            }
        }
        None
    }

    pub fn count(&self) -> u128 {
        self.0.iter().map(|(s, e)| e - s + 1).sum()
    }
}

/// One subnet of a network and its allocation state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub subnet: Subnet,
    /// Offset of the gateway (reserved).
    pub gateway: u128,
    /// Reserved runs (network address, IPv4 broadcast, gateway, `--reserve`).
    pub reserved: Vec<(u128, u128)>,
    /// Where the next search starts; replicated, so freed addresses are not reused early
    /// after a failover.
    pub cursor: u128,
    pub allocated: u128,
    pub quarantined: u128,
    #[serde(skip)]
    pub used: Runs,
    #[serde(skip)]
    pub reserved_runs: Runs,
}

impl Pool {
    fn new(subnet: Subnet, gateway: u128, extra: &[(u128, u128)]) -> Pool {
        let last = subnet.size() - 1;
        let mut reserved = vec![(0, 0), (gateway, gateway)];
        if !subnet.v6 {
            reserved.push((last, last));
        }
        reserved.extend_from_slice(extra);
        let mut p = Pool {
            subnet,
            gateway,
            reserved,
            cursor: 1,
            allocated: 0,
            quarantined: 0,
            used: Runs::default(),
            reserved_runs: Runs::default(),
        };
        p.rebuild_reserved();
        p
    }

    fn rebuild_reserved(&mut self) {
        let mut ranges = self.reserved.clone();
        ranges.sort();
        let mut merged: BTreeMap<u128, u128> = BTreeMap::new();
        for (s, e) in ranges {
            match merged.iter_mut().next_back() {
                Some((_, pe)) if s <= pe.saturating_add(1) => *pe = (*pe).max(e),
                _ => {
                    merged.insert(s, e);
                }
            }
        }
        self.reserved_runs = Runs(merged);
    }

    /// Usable addresses: the subnet minus the reserved ones.
    pub fn usable(&self) -> u128 {
        self.subnet.size() - self.reserved_runs.count()
    }

    pub fn free(&self) -> u128 {
        self.usable() - self.allocated - self.quarantined
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    pub pools: Vec<Pool>,
    pub quarantine_ms: u64,
    pub created_ms: u64,
}

/// An allocation as stored under `i/o/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holding {
    pub pool: u8,
    pub offset: u128,
    /// The agent the owner runs on, for leak repair.
    pub node: Option<NodeId>,
    pub since_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub name: String,
    pub subnets: Vec<Subnet>,
    /// Gateway per subnet, as an offset; `None`: the first host address.
    pub gateways: Vec<Option<u128>>,
    /// Reserved (subnet index, first offset, last offset).
    pub reserve: Vec<(u8, u128, u128)>,
    pub quarantine_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IpamCommand {
    CreateNetwork(NetworkSpec),
    RemoveNetwork {
        name: String,
        force: bool,
    },
    /// One address per family of the network's first pool of each family… kept simple:
    /// an address from the first pool with room (or `requested`).
    Allocate {
        network: String,
        owner: String,
        requested: Option<IpAddr>,
        node: Option<NodeId>,
    },
    /// Many owners in one entry: all get an address, or (not enough room) none does.
    AllocateBatch {
        network: String,
        owners: Vec<String>,
        node: Option<NodeId>,
    },
    /// By owner, or by address; both given must match.
    Release {
        network: String,
        owner: Option<String>,
        address: Option<IpAddr>,
    },
    /// Leak repair: release these (owner, address, node) triples if each owner still
    /// holds that address bound to that node (an owner that re-allocated from another
    /// node, or released and allocated again elsewhere, is left alone).
    ReleaseLeaked {
        network: String,
        holdings: Vec<(String, IpAddr, NodeId)>,
    },
}

impl IpamCommand {
    pub fn name(&self) -> &'static str {
        match self {
            IpamCommand::CreateNetwork(_) => "network_create",
            IpamCommand::RemoveNetwork { .. } => "network_remove",
            IpamCommand::Allocate { .. } => "ip_allocate",
            IpamCommand::AllocateBatch { .. } => "ip_allocate_batch",
            IpamCommand::Release { .. } => "ip_release",
            IpamCommand::ReleaseLeaked { .. } => "ip_release_leaked",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IpamOutput {
    Network(Box<Network>),
    Removed {
        released: u128,
    },
    /// The address, and whether it was newly allocated (false: the owner held it).
    Allocated {
        address: IpAddr,
        new: bool,
    },
    Batch(Vec<IpAddr>),
    /// The released address; `None` when the owner held nothing (idempotent).
    Released(Option<IpAddr>),
    ReleasedLeaked(u32),
}

/// Point reads and writes of the IPAM records, implemented over RocksDB by the state
/// machine and over a map in tests. Reads must see earlier writes of the same apply.
pub trait IpamStore {
    fn get(&mut self, key: &[u8]) -> std::io::Result<Option<Vec<u8>>>;
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>);
    fn delete(&mut self, key: Vec<u8>);
    /// Keys and values with `prefix`, in key order, at most `limit`.
    fn scan(&mut self, prefix: &[u8], limit: usize) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>>;
}

pub mod keys {
    pub const PREFIX: &[u8] = b"i/";

    fn k(kind: &str, net: &str) -> Vec<u8> {
        format!("i/{kind}/{net}/").into_bytes()
    }

    pub fn network(net: &str) -> Vec<u8> {
        format!("i/n/{net}").into_bytes()
    }

    pub fn run(net: &str, pool: u8, start: u128) -> Vec<u8> {
        let mut v = k("s", net);
        v.push(pool);
        v.extend_from_slice(&start.to_be_bytes());
        v
    }

    pub fn runs_prefix(net: &str) -> Vec<u8> {
        k("s", net)
    }

    pub fn owner(net: &str, owner: &str) -> Vec<u8> {
        let mut v = k("o", net);
        v.extend_from_slice(owner.as_bytes());
        v
    }

    pub fn owners_prefix(net: &str) -> Vec<u8> {
        k("o", net)
    }

    pub fn addr(net: &str, pool: u8, offset: u128) -> Vec<u8> {
        let mut v = k("a", net);
        v.push(pool);
        v.extend_from_slice(&offset.to_be_bytes());
        v
    }

    pub fn quarantine(net: &str, expires_ms: u64, pool: u8, offset: u128) -> Vec<u8> {
        let mut v = k("q", net);
        v.extend_from_slice(&expires_ms.to_be_bytes());
        v.push(pool);
        v.extend_from_slice(&offset.to_be_bytes());
        v
    }

    pub fn quarantine_prefix(net: &str) -> Vec<u8> {
        k("q", net)
    }

    pub fn held(node: u64, net: &str, owner: &str) -> Vec<u8> {
        let mut v = format!("i/h/{node:020}/{net}/").into_bytes();
        v.extend_from_slice(owner.as_bytes());
        v
    }

    pub fn held_prefix(node: u64) -> Vec<u8> {
        format!("i/h/{node:020}/").into_bytes()
    }
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    crate::codec::encode(v).expect("ipam records encode")
}

fn dec<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T> {
    Ok(crate::codec::decode(b)?)
}

/// All networks; the in-memory part of the IPAM state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ipam {
    pub networks: BTreeMap<String, Network>,
}

impl Ipam {
    /// Applies `cmd` at leader time `now_ms`. A refused command changes nothing: every
    /// check happens before the first write.
    pub fn apply(&mut self, now_ms: u64, cmd: &IpamCommand, store: &mut dyn IpamStore) -> Result<IpamOutput> {
        match cmd {
            IpamCommand::CreateNetwork(spec) => self.create(now_ms, spec, store),
            IpamCommand::RemoveNetwork { name, force } => self.remove(name, *force, store),
            IpamCommand::Allocate { network, owner, requested, node } => {
                validate_owner(owner)?;
                self.expire(network, now_ms, store)?;
                let (address, new) = self.allocate(network, owner, *requested, *node, now_ms, store)?;
                self.save(network, store);
                Ok(IpamOutput::Allocated { address, new })
            }
            IpamCommand::AllocateBatch { network, owners, node } => {
                if owners.len() > MAX_BATCH {
                    return Err(IpamError::Invalid(format!("at most {MAX_BATCH} owners per batch")));
                }
                for o in owners {
                    validate_owner(o)?;
                }
                let distinct: BTreeSet<&String> = owners.iter().collect();
                if distinct.len() != owners.len() {
                    return Err(IpamError::Invalid("an owner appears twice in the batch".into()));
                }
                self.expire(network, now_ms, store)?;
                // All or nothing: count the owners that need a new address first.
                let mut need = 0u128;
                for o in owners {
                    if store.get(&keys::owner(network, o))?.is_none() {
                        need += 1;
                    }
                }
                let net = self.net(network)?;
                let free: u128 = net.pools.iter().map(|p| p.free()).sum();
                if need > free {
                    return Err(self.exhausted(network));
                }
                let mut out = Vec::with_capacity(owners.len());
                for o in owners {
                    out.push(self.allocate(network, o, None, *node, now_ms, store)?.0);
                }
                self.save(network, store);
                Ok(IpamOutput::Batch(out))
            }
            IpamCommand::Release { network, owner, address } => {
                self.expire(network, now_ms, store)?;
                let r = self.release(network, owner.as_deref(), *address, now_ms, store)?;
                self.save(network, store);
                Ok(IpamOutput::Released(r))
            }
            IpamCommand::ReleaseLeaked { network, holdings } => {
                self.net(network)?;
                let mut n = 0;
                for (owner, addr, node) in holdings {
                    let holds =
                        self.holding(network, owner, store)?.is_some_and(|(h, a)| a == *addr && h.node == Some(*node));
                    if holds {
                        self.release(network, Some(owner), Some(*addr), now_ms, store)?;
                        n += 1;
                    }
                }
                self.save(network, store);
                Ok(IpamOutput::ReleasedLeaked(n))
            }
        }
    }

    fn net(&self, name: &str) -> Result<&Network> {
        self.networks.get(name).ok_or_else(|| IpamError::UnknownNetwork(name.to_string()))
    }

    fn exhausted(&self, name: &str) -> IpamError {
        let n = &self.networks[name];
        let subnet = n.pools.iter().map(|p| p.subnet.to_string()).collect::<Vec<_>>().join(", ");
        IpamError::Exhausted {
            net: name.to_string(),
            subnet,
            size: n.pools.iter().map(|p| p.usable()).sum(),
            used: n.pools.iter().map(|p| p.allocated).sum(),
            quarantined: n.pools.iter().map(|p| p.quarantined).sum(),
        }
    }

    fn save(&self, name: &str, store: &mut dyn IpamStore) {
        if let Some(n) = self.networks.get(name) {
            store.put(keys::network(name), enc(n));
        }
    }

    fn create(&mut self, now_ms: u64, spec: &NetworkSpec, store: &mut dyn IpamStore) -> Result<IpamOutput> {
        validate_name(&spec.name)?;
        if self.networks.contains_key(&spec.name) {
            return Err(IpamError::NetworkExists(spec.name.clone()));
        }
        if spec.subnets.is_empty() || spec.subnets.len() > 2 || spec.gateways.len() != spec.subnets.len() {
            return Err(IpamError::Invalid("a network has one or two subnets (at most one per family)".into()));
        }
        if spec.subnets.len() == 2 && spec.subnets[0].v6 == spec.subnets[1].v6 {
            return Err(IpamError::Invalid("two subnets of the same family; give one IPv4 and one IPv6".into()));
        }
        for s in &spec.subnets {
            for n in self.networks.values() {
                for p in &n.pools {
                    if p.subnet.overlaps(s) {
                        return Err(IpamError::Overlap(s.to_string(), p.subnet.to_string(), n.name.clone()));
                    }
                }
            }
        }
        let mut pools = Vec::new();
        for (i, s) in spec.subnets.iter().enumerate() {
            let last = s.size() - 1;
            let gw = spec.gateways[i].unwrap_or(1);
            if gw == 0 || gw >= last + (s.v6 as u128) {
                return Err(IpamError::Invalid(format!("gateway {} is not a host address of {s}", s.addr(gw))));
            }
            let extra: Vec<(u128, u128)> =
                spec.reserve.iter().filter(|(p, _, _)| *p as usize == i).map(|(_, a, b)| (*a, *b)).collect();
            for (a, b) in &extra {
                if a > b || *b > last {
                    return Err(IpamError::Invalid(format!(
                        "reserved range {}-{} is not inside {s}",
                        s.addr(*a),
                        s.addr(*b)
                    )));
                }
            }
            let p = Pool::new(s.clone(), gw, &extra);
            if p.usable() == 0 {
                return Err(IpamError::Invalid(format!("{s} has no usable address left after reservations")));
            }
            pools.push(p);
        }
        if spec.reserve.iter().any(|(p, _, _)| *p as usize >= spec.subnets.len()) {
            return Err(IpamError::Invalid("a reserved range is outside every subnet".into()));
        }
        let n = Network { name: spec.name.clone(), pools, quarantine_ms: spec.quarantine_ms, created_ms: now_ms };
        self.networks.insert(spec.name.clone(), n.clone());
        self.save(&spec.name, store);
        Ok(IpamOutput::Network(Box::new(n)))
    }

    fn remove(&mut self, name: &str, force: bool, store: &mut dyn IpamStore) -> Result<IpamOutput> {
        let n = self.net(name)?;
        let allocated: u128 = n.pools.iter().map(|p| p.allocated).sum();
        if allocated > 0 && !force {
            return Err(IpamError::InUse(name.to_string(), allocated));
        }
        // Every record of the network goes, including bindings of its owners to agents.
        let mut doomed: Vec<Vec<u8>> = Vec::new();
        for (k, v) in store.scan(&keys::owners_prefix(name), usize::MAX)? {
            let h: Holding = dec(&v)?;
            if let Some(node) = h.node {
                let owner = String::from_utf8_lossy(&k[keys::owners_prefix(name).len()..]).into_owned();
                doomed.push(keys::held(node, name, &owner));
            }
            doomed.push(k);
        }
        for kind in ["s", "a", "q"] {
            let prefix = format!("i/{kind}/{name}/").into_bytes();
            doomed.extend(store.scan(&prefix, usize::MAX)?.into_iter().map(|(k, _)| k));
        }
        for k in doomed {
            store.delete(k);
        }
        store.delete(keys::network(name));
        self.networks.remove(name);
        Ok(IpamOutput::Removed { released: allocated })
    }

    /// The owner's holding in `net` and its address.
    pub fn holding(&self, net: &str, owner: &str, store: &mut dyn IpamStore) -> Result<Option<(Holding, IpAddr)>> {
        let Some(b) = store.get(&keys::owner(net, owner))? else { return Ok(None) };
        let h: Holding = dec(&b)?;
        let n = self.net(net)?;
        let addr = n.pools[h.pool as usize].subnet.addr(h.offset);
        Ok(Some((h, addr)))
    }

    /// Where `addr` falls: (pool index, offset).
    fn locate(&self, net: &str, addr: IpAddr) -> Result<(u8, u128)> {
        let (num, v6) = addr_num(addr);
        let n = self.net(net)?;
        n.pools
            .iter()
            .enumerate()
            .find(|(_, p)| p.subnet.contains(num, v6))
            .map(|(i, p)| (i as u8, num - p.subnet.base))
            .ok_or_else(|| IpamError::OutsideSubnet(addr.to_string(), net.to_string()))
    }

    fn use_offset(&mut self, net: &str, pool: u8, offset: u128, store: &mut dyn IpamStore) {
        let p = &mut self.networks.get_mut(net).expect("network").pools[pool as usize];
        let (removed, (s, e)) = p.used.insert(offset);
        for r in removed {
            store.delete(keys::run(net, pool, r));
        }
        store.put(keys::run(net, pool, s), e.to_be_bytes().to_vec());
    }

    fn free_offset(&mut self, net: &str, pool: u8, offset: u128, store: &mut dyn IpamStore) {
        let p = &mut self.networks.get_mut(net).expect("network").pools[pool as usize];
        let (removed, added) = p.used.remove(offset);
        store.delete(keys::run(net, pool, removed));
        for (s, e) in added {
            store.put(keys::run(net, pool, s), e.to_be_bytes().to_vec());
        }
    }

    fn allocate(
        &mut self,
        net: &str,
        owner: &str,
        requested: Option<IpAddr>,
        node: Option<NodeId>,
        now_ms: u64,
        store: &mut dyn IpamStore,
    ) -> Result<(IpAddr, bool)> {
        if let Some((mut h, held)) = self.holding(net, owner, store)? {
            if requested.is_some_and(|r| r != held) {
                return Err(IpamError::OwnerHoldsOther {
                    owner: owner.into(),
                    held: held.to_string(),
                    net: net.into(),
                });
            }
            // The owner moved to another agent: bind the address to the new one, so leak
            // repair for the old agent does not free an address still in use.
            if let Some(new) = node.filter(|n| h.node != Some(*n)) {
                if let Some(old) = h.node.replace(new) {
                    store.delete(keys::held(old, net, owner));
                }
                store.put(keys::owner(net, owner), enc(&h));
                store.put(keys::held(new, net, owner), Vec::new());
            }
            return Ok((held, false));
        }
        let (pool, offset) = match requested {
            Some(addr) => {
                let (pool, offset) = self.locate(net, addr)?;
                let p = &self.networks[net].pools[pool as usize];
                if p.reserved_runs.contains(offset) {
                    return Err(IpamError::Reserved(addr.to_string()));
                }
                if p.used.contains(offset) {
                    if let Some(o) = store.get(&keys::addr(net, pool, offset))? {
                        return Err(IpamError::Taken {
                            addr: addr.to_string(),
                            owner: String::from_utf8_lossy(&o).into(),
                        });
                    }
                    let until = self.quarantine_until(net, pool, offset, store)?;
                    return Err(IpamError::Quarantined(addr.to_string(), until));
                }
                (pool, offset)
            }
            None => {
                let n = &self.networks[net];
                let mut found = None;
                for (i, p) in n.pools.iter().enumerate() {
                    if p.free() == 0 {
                        continue;
                    }
                    let last = p.subnet.size() - 1;
                    // From the cursor to the end, then from the start: wrap around.
                    let hit = p
                        .used
                        .first_free(&p.reserved_runs, p.cursor, last)
                        .or_else(|| p.used.first_free(&p.reserved_runs, 0, p.cursor.saturating_sub(1)));
                    if let Some(o) = hit {
                        found = Some((i as u8, o));
                        break;
                    }
                }
                found.ok_or_else(|| self.exhausted(net))?
            }
        };
        self.use_offset(net, pool, offset, store);
        let p = &mut self.networks.get_mut(net).expect("network").pools[pool as usize];
        p.allocated += 1;
        if requested.is_none() {
            p.cursor = if offset + 1 >= p.subnet.size() { 0 } else { offset + 1 };
        }
        let address = p.subnet.addr(offset);
        let h = Holding { pool, offset, node, since_ms: now_ms };
        store.put(keys::owner(net, owner), enc(&h));
        store.put(keys::addr(net, pool, offset), owner.as_bytes().to_vec());
        if let Some(node) = node {
            store.put(keys::held(node, net, owner), Vec::new());
        }
        Ok((address, true))
    }

    fn quarantine_until(&self, net: &str, pool: u8, offset: u128, store: &mut dyn IpamStore) -> Result<u64> {
        for (k, _) in store.scan(&keys::quarantine_prefix(net), usize::MAX)? {
            let rest = &k[keys::quarantine_prefix(net).len()..];
            if rest.len() == 25 && rest[8] == pool && rest[9..] == offset.to_be_bytes() {
                return Ok(u64::from_be_bytes(rest[..8].try_into().expect("8 bytes")));
            }
        }
        Ok(0)
    }

    fn release(
        &mut self,
        net: &str,
        owner: Option<&str>,
        address: Option<IpAddr>,
        now_ms: u64,
        store: &mut dyn IpamStore,
    ) -> Result<Option<IpAddr>> {
        self.net(net)?;
        let owner: String = match (owner, address) {
            (None, None) => return Err(IpamError::Invalid("release needs an owner or an address".into())),
            (Some(o), addr) => {
                let held = self.holding(net, o, store)?;
                match (held, addr) {
                    (None, Some(a)) => {
                        // Idempotent for the owner, but not a way to free someone else's.
                        let (pool, offset) = self.locate(net, a)?;
                        if let Some(other) = store.get(&keys::addr(net, pool, offset))? {
                            return Err(IpamError::Taken {
                                addr: a.to_string(),
                                owner: String::from_utf8_lossy(&other).into(),
                            });
                        }
                        return Ok(None);
                    }
                    (None, None) => return Ok(None),
                    (Some((_, h)), Some(a)) if h != a => {
                        let (pool, offset) = self.locate(net, a)?;
                        return match store.get(&keys::addr(net, pool, offset))? {
                            Some(other) => Err(IpamError::Taken {
                                addr: a.to_string(),
                                owner: String::from_utf8_lossy(&other).into(),
                            }),
                            None => Err(IpamError::Invalid(format!("{o:?} holds {h}, not {a}"))),
                        };
                    }
                    _ => o.to_string(),
                }
            }
            (None, Some(a)) => {
                let (pool, offset) = self.locate(net, a)?;
                match store.get(&keys::addr(net, pool, offset))? {
                    Some(o) => String::from_utf8_lossy(&o).into_owned(),
                    None => return Ok(None),
                }
            }
        };
        let (h, addr) = self.holding(net, &owner, store)?.expect("owner holds an address");
        store.delete(keys::owner(net, &owner));
        store.delete(keys::addr(net, h.pool, h.offset));
        if let Some(node) = h.node {
            store.delete(keys::held(node, net, &owner));
        }
        let q = self.networks[net].quarantine_ms;
        let p = &mut self.networks.get_mut(net).expect("network").pools[h.pool as usize];
        p.allocated -= 1;
        if q == 0 {
            self.free_offset(net, h.pool, h.offset, store);
        } else {
            // Still "used" while in quarantine; expiry frees it.
            p.quarantined += 1;
            store.put(keys::quarantine(net, now_ms.saturating_add(q), h.pool, h.offset), Vec::new());
        }
        Ok(Some(addr))
    }

    /// Frees the quarantined addresses of `net` whose time has come (by leader time).
    fn expire(&mut self, net: &str, now_ms: u64, store: &mut dyn IpamStore) -> Result<()> {
        let n = self.net(net)?;
        if n.pools.iter().all(|p| p.quarantined == 0) {
            return Ok(());
        }
        let prefix = keys::quarantine_prefix(net);
        // Keys sort by expiry time: stop at the first one in the future.
        let mut due = Vec::new();
        // At most a bounded number per apply; the rest expire on the next one.
        for (k, _) in store.scan(&prefix, 4096)? {
            let rest = &k[prefix.len()..];
            let t = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
            if t > now_ms {
                break;
            }
            due.push((k.clone(), rest[8], u128::from_be_bytes(rest[9..25].try_into().expect("16 bytes"))));
        }
        let any = !due.is_empty();
        for (k, pool, offset) in due {
            store.delete(k);
            self.networks.get_mut(net).expect("network").pools[pool as usize].quarantined -= 1;
            self.free_offset(net, pool, offset, store);
        }
        // Expiry is a step of time, not of the command: it stands even if the command
        // that triggered it is refused.
        if any {
            self.save(net, store);
        }
        Ok(())
    }

    /// Rebuilds the in-memory state from the store's `i/` records.
    pub fn load<'a>(records: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> std::io::Result<Ipam> {
        let mut ipam = Ipam::default();
        let mut runs: Vec<(String, u8, u128, u128)> = Vec::new();
        for (k, v) in records {
            if let Some(name) = k.strip_prefix(b"i/n/") {
                let mut n: Network = crate::codec::decode(v)?;
                for p in &mut n.pools {
                    p.rebuild_reserved();
                }
                ipam.networks.insert(String::from_utf8_lossy(name).into_owned(), n);
            } else if let Some(rest) = k.strip_prefix(b"i/s/") {
                let corrupt = || std::io::Error::new(std::io::ErrorKind::InvalidData, "corrupt IPAM run key");
                let slash = rest.iter().position(|b| *b == b'/').ok_or_else(corrupt)?;
                let tail = &rest[slash + 1..];
                if tail.len() != 17 || v.len() != 16 {
                    return Err(corrupt());
                }
                let start = u128::from_be_bytes(tail[1..].try_into().expect("16 bytes"));
                let end = u128::from_be_bytes(v.try_into().expect("16 bytes"));
                runs.push((String::from_utf8_lossy(&rest[..slash]).into_owned(), tail[0], start, end));
            }
        }
        for (net, pool, s, e) in runs {
            if let Some(p) = ipam.networks.get_mut(&net).and_then(|n| n.pools.get_mut(pool as usize)) {
                p.used.0.insert(s, e);
            }
        }
        Ok(ipam)
    }
}
