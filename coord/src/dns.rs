//! The DNS face of a master (`--dns-listen`): names for services, tasks, agents and
//! masters, answered from this master's applied state over UDP and TCP.
//!
//! Names, under the cluster's domain (`cluster.local` unless configured):
//! - `<service>.<domain>`: A/AAAA, the healthy tasks' addresses, shuffled. A service
//!   `/prod/web` is `web.prod.<domain>` (path segments reversed, as DNS nests).
//! - `<task-id>.<service>.<domain>`: the one task, healthy or not, while it runs.
//! - `_<port-name>._tcp.<service>.<domain>` (or `._udp`): SRV, one per healthy task:
//!   the agent's port, with target `<agent-id>.agents.<domain>`. A port without a name
//!   answers as `_port<index>`.
//! - `<agent-id>.agents.<domain>`: the agent's advertised address.
//! - `leader.<domain>`, `masters.<domain>`: the Raft leader, every master.
//!
//! A task's address is its overlay IP, or its agent's advertised address when it has
//! none. Services whose top-level segment is `leader`, `masters` or `agents` are not in
//! DNS: those names are taken. Names outside the domain are refused (a master is no
//! recursive resolver); unknown names are NXDOMAIN with the zone's SOA, whose minimum is
//! the TTL, so negative answers are cached no longer than positive ones.
//!
//! Answers are read per query, never cached here: a task that turns healthy or unhealthy
//! is in the next answer after its report is applied.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, MessageType, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use rand::seq::SliceRandom;

use crate::node::{CoordNode, MastersView};
use crate::read::ReadView;
use crate::types::NodeId;

pub const DEFAULT_DOMAIN: &str = "cluster.local";
/// Short, so that resolvers that cache follow a task's health within about a second.
pub const DEFAULT_TTL_S: u32 = 1;
/// The port when the process may bind low ports (root), and when it may not (Consul's).
pub const PRIVILEGED_PORT: u16 = 53;
pub const UNPRIVILEGED_PORT: u16 = 8600;
/// Address records in one UDP answer: 24 A records fit the 512 bytes every resolver
/// takes; a client that wants them all asks over TCP.
pub const MAX_UDP_ADDRESSES: usize = 24;
/// The largest UDP answer, whatever buffer a query offers.
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// A TCP client that sends nothing for this long is dropped.
pub const TCP_IDLE_TIMEOUT_S: u64 = 10;

/// What the DNS face answers for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Without a trailing dot, lowercase.
    pub domain: String,
    pub ttl_s: u32,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig { domain: DEFAULT_DOMAIN.into(), ttl_s: DEFAULT_TTL_S }
    }
}

impl DnsConfig {
    pub fn validate(&self) -> Result<(), String> {
        let d = &self.domain;
        if d.is_empty() || d.len() > 200 {
            return Err(format!("DNS domain {d:?}: 1-200 characters"));
        }
        for label in d.split('.') {
            let ok = !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !ok {
                return Err(format!(
                    "DNS domain {d:?}: dot-separated labels of lowercase letters, digits and hyphens, e.g. cluster.local"
                ));
            }
        }
        if self.ttl_s > 3600 {
            return Err(format!("DNS TTL {} s: at most 3600 (short TTLs let clients follow tasks)", self.ttl_s));
        }
        Name::from_ascii(format!("{d}.")).map_err(|e| format!("DNS domain {d:?}: {e}"))?;
        Ok(())
    }
}

/// The default port for this process: 53 when it may bind it, else 8600.
pub fn default_port() -> u16 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        PRIVILEGED_PORT
    } else {
        UNPRIVILEGED_PORT
    }
}

/// A `--dns-listen` value: `HOST:PORT`, or `HOST` alone for the default port.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let host = s.trim_start_matches('[').trim_end_matches(']');
    host.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, default_port()))
        .map_err(|_| format!("{s:?} is not IP:PORT or an IP (e.g. 127.0.0.1:8600, 0.0.0.0)"))
}

/// One port of a task, as SRV sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortEntry {
    /// The port's name, or `port<index>` when it has none.
    pub name: String,
    pub port: u16,
    pub tcp: bool,
    pub udp: bool,
}

/// A task, as DNS sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub task_id: String,
    pub ip: Option<IpAddr>,
    pub agent: NodeId,
    pub healthy: bool,
    pub ports: Vec<PortEntry>,
}

/// What names are answered from: the applied state in a master, a fixture in tests.
pub trait Directory {
    /// The service's tasks that have not ended; `None` when there is no such service.
    fn endpoints(&self, service: &str) -> Option<Vec<Endpoint>>;
    /// Whether some service's id starts with `prefix` + `/` (a group, in Marathon's words).
    fn has_services_under(&self, prefix: &str) -> bool;
    fn agent_ip(&self, agent: NodeId) -> Option<IpAddr>;
    /// Every master's address, the leader's flagged.
    fn masters(&self) -> Vec<(IpAddr, bool)>;
}

/// An answer, before it is put on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The name exists; `answers` may be empty (it has no record of that type).
    Found {
        answers: Vec<Record>,
        additionals: Vec<Record>,
    },
    NxDomain,
    /// Not ours to answer.
    Refused,
}

const RESERVED: [&str; 3] = ["leader", "masters", "agents"];

fn name(s: &str) -> Option<Name> {
    Name::from_ascii(format!("{s}.")).ok()
}

fn addr_record(owner: &Name, ttl: u32, ip: IpAddr) -> Record {
    match ip {
        IpAddr::V4(v4) => Record::from_rdata(owner.clone(), ttl, RData::A(A(v4))),
        IpAddr::V6(v6) => Record::from_rdata(owner.clone(), ttl, RData::AAAA(AAAA(v6))),
    }
}

fn wants(qtype: RecordType, ip: &IpAddr) -> bool {
    match qtype {
        RecordType::A => ip.is_ipv4(),
        RecordType::AAAA => ip.is_ipv6(),
        RecordType::ANY => true,
        _ => false,
    }
}

/// The task's address: its overlay IP, else its agent's.
fn endpoint_ip(d: &dyn Directory, e: &Endpoint) -> Option<IpAddr> {
    e.ip.or_else(|| d.agent_ip(e.agent))
}

/// The zone's SOA, for negative answers.
pub fn soa(cfg: &DnsConfig) -> Record {
    let zone = name(&cfg.domain).unwrap_or_else(Name::root);
    let mname = name(&format!("masters.{}", cfg.domain)).unwrap_or_else(Name::root);
    let rname = name(&format!("hostmaster.{}", cfg.domain)).unwrap_or_else(Name::root);
    let ttl = cfg.ttl_s;
    let t = ttl as i32;
    Record::from_rdata(zone, ttl, RData::SOA(SOA::new(mname, rname, 1, t.max(1), t.max(1), 3600, ttl)))
}

/// Answers `qname` (lowercase, with or without the final dot) for `qtype`.
pub fn resolve(d: &dyn Directory, cfg: &DnsConfig, qname: &str, qtype: RecordType) -> Lookup {
    let q = qname.trim_end_matches('.').to_ascii_lowercase();
    let rel = if q == cfg.domain {
        ""
    } else if let Some(r) = q.strip_suffix(&cfg.domain).and_then(|r| r.strip_suffix('.')) {
        r
    } else {
        return Lookup::Refused;
    };
    let Some(owner) = name(&q) else { return Lookup::NxDomain };
    let ttl = cfg.ttl_s;
    let found = |answers: Vec<Record>| Lookup::Found { answers, additionals: Vec::new() };
    if rel.is_empty() {
        let answers = if matches!(qtype, RecordType::SOA | RecordType::ANY) { vec![soa(cfg)] } else { Vec::new() };
        return found(answers);
    }
    let labels: Vec<&str> = rel.split('.').collect();
    match labels.as_slice() {
        ["leader"] | ["masters"] => {
            let leader_only = labels[0] == "leader";
            // Masters on one host share an address: an RRset holds each record once.
            let ips: std::collections::BTreeSet<IpAddr> = d
                .masters()
                .into_iter()
                .filter(|(ip, is_leader)| (*is_leader || !leader_only) && wants(qtype, ip))
                .map(|(ip, _)| ip)
                .collect();
            // Without a known leader, `leader` answers nothing rather than something stale.
            return found(ips.into_iter().map(|ip| addr_record(&owner, ttl, ip)).collect());
        }
        ["agents"] => return found(Vec::new()),
        [id, "agents"] => {
            let Some(ip) = id.parse::<NodeId>().ok().and_then(|id| d.agent_ip(id)) else { return Lookup::NxDomain };
            let answers = if wants(qtype, &ip) { vec![addr_record(&owner, ttl, ip)] } else { Vec::new() };
            return found(answers);
        }
        _ => {}
    }
    if labels.last().is_some_and(|top| RESERVED.contains(top)) {
        return Lookup::NxDomain;
    }
    // SRV: _<port>._<proto>.<service>
    if labels.len() >= 3 && labels[0].starts_with('_') && labels[1].starts_with('_') {
        let port_name = &labels[0][1..];
        let proto = &labels[1][1..];
        let service = service_id(&labels[2..]);
        let Some(eps) = d.endpoints(&service) else { return Lookup::NxDomain };
        if !matches!(proto, "tcp" | "udp") {
            return Lookup::NxDomain;
        }
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        let mut any_port = false;
        for e in eps.iter() {
            let Some(p) = e.ports.iter().find(|p| p.name == port_name && if proto == "tcp" { p.tcp } else { p.udp })
            else {
                continue;
            };
            any_port = true;
            if !e.healthy {
                continue;
            }
            let Some(target) = name(&format!("{}.agents.{}", e.agent, cfg.domain)) else { continue };
            if matches!(qtype, RecordType::SRV | RecordType::ANY) {
                answers.push(Record::from_rdata(
                    owner.clone(),
                    ttl,
                    RData::SRV(SRV::new(0, 1, p.port, target.clone())),
                ));
                if let Some(ip) = d.agent_ip(e.agent) {
                    let glue = addr_record(&target, ttl, ip);
                    if !additionals.contains(&glue) {
                        additionals.push(glue);
                    }
                }
            }
        }
        if !any_port && !eps.is_empty() {
            return Lookup::NxDomain;
        }
        answers.shuffle(&mut rand::rng());
        return Lookup::Found { answers, additionals };
    }
    if let Some(eps) = d.endpoints(&service_id(&labels)) {
        let ips: std::collections::BTreeSet<IpAddr> =
            eps.iter().filter(|e| e.healthy).filter_map(|e| endpoint_ip(d, e)).filter(|ip| wants(qtype, ip)).collect();
        let mut answers: Vec<Record> = ips.into_iter().map(|ip| addr_record(&owner, ttl, ip)).collect();
        answers.shuffle(&mut rand::rng());
        return found(answers);
    }
    // <task-id>.<service>: the task id has dots of its own, so try each split.
    let mut below = d.has_services_under(&service_id(&labels));
    for split in 1..labels.len() {
        let Some(eps) = d.endpoints(&service_id(&labels[split..])) else { continue };
        let task_id = labels[..split].join(".");
        if let Some(e) = eps.iter().find(|e| e.task_id.eq_ignore_ascii_case(&task_id)) {
            let answers = endpoint_ip(d, e)
                .filter(|ip| wants(qtype, ip))
                .map(|ip| vec![addr_record(&owner, ttl, ip)])
                .unwrap_or_default();
            return found(answers);
        }
        // Part of a task's name, or `_tcp` above the service's SRV names.
        let tail = format!(".{task_id}");
        below |= eps.iter().any(|e| e.task_id.to_ascii_lowercase().ends_with(&tail))
            || (split == 1 && matches!(labels[0], "_tcp" | "_udp"));
    }
    // A name with names below it exists (RFC 8020): no data, not NXDOMAIN.
    if below {
        return found(Vec::new());
    }
    Lookup::NxDomain
}

/// `["web", "prod"]` → `/prod/web`.
fn service_id(labels: &[&str]) -> String {
    let mut id = String::new();
    for l in labels.iter().rev() {
        id.push('/');
        id.push_str(l);
    }
    id
}

/// The applied state of a master, as a directory.
pub struct Live<'a> {
    pub view: &'a ReadView<'a>,
    pub masters: &'a MastersView,
}

/// The IP of an advertised `host:port` (none when the host is a name).
pub(crate) fn host_ip(addr: &str) -> Option<IpAddr> {
    addr.parse::<SocketAddr>().map(|a| a.ip()).ok().or_else(|| addr.parse::<IpAddr>().ok())
}

impl Directory for Live<'_> {
    fn endpoints(&self, service: &str) -> Option<Vec<Endpoint>> {
        let s = self.view.services();
        s.service(service)?;
        Some(
            s.active_tasks_of(service)
                .map(|t| {
                    let spec = s.spec(&t.service, t.version);
                    let ports = t
                        .ports
                        .iter()
                        .enumerate()
                        .map(|(i, port)| {
                            let def = spec.and_then(|sp| sp.ports.get(i));
                            let proto = def.map(|d| d.protocol.as_str()).unwrap_or("tcp");
                            PortEntry {
                                name: def.and_then(|d| d.name.clone()).unwrap_or_else(|| format!("port{i}")),
                                port: *port,
                                tcp: proto.contains("tcp"),
                                udp: proto.contains("udp"),
                            }
                        })
                        .collect();
                    Endpoint { task_id: t.id.clone(), ip: t.ip, agent: t.agent, healthy: s.is_healthy(t), ports }
                })
                .collect(),
        )
    }

    fn has_services_under(&self, prefix: &str) -> bool {
        let group = format!("{prefix}/");
        self.view.services().services().any(|s| s.id.starts_with(&group))
    }

    fn agent_ip(&self, agent: NodeId) -> Option<IpAddr> {
        self.view.registry().nodes.get(&agent).and_then(|n| host_ip(&n.addr))
    }

    fn masters(&self) -> Vec<(IpAddr, bool)> {
        self.masters
            .nodes
            .iter()
            .filter_map(|m| host_ip(&m.addr).map(|ip| (ip, self.masters.leader == Some(m.id))))
            .collect()
    }
}

/// Answers queries from a master's state.
pub struct Handler {
    node: Arc<CoordNode>,
    cfg: DnsConfig,
}

fn failed(request: &Request, code: ResponseCode) -> ResponseInfo {
    let mut metadata = hickory_server::proto::op::Metadata::response_from_request(&request.metadata);
    metadata.response_code = code;
    ResponseInfo::from(Header { metadata, counts: HeaderCounts::default() })
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, mut response: R) -> ResponseInfo {
        let edns = request.edns.as_ref().map(|e| {
            let mut out = Edns::new();
            // DNS flag day 2020's size: no fragments, and a bounded answer to a spoofed
            // query however large a buffer it claims.
            out.set_max_payload(e.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            out
        });
        let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
        let mut meta = hickory_server::proto::op::Metadata::response_from_request(&request.metadata);
        meta.authoritative = true;
        meta.recursion_available = false;
        let lookup = if request.metadata.message_type != MessageType::Query || request.metadata.op_code != OpCode::Query
        {
            meta.authoritative = false;
            meta.response_code = ResponseCode::NotImp;
            None
        } else {
            match request.request_info() {
                Err(_) => {
                    meta.authoritative = false;
                    meta.response_code = ResponseCode::FormErr;
                    None
                }
                Ok(info) => {
                    let qname = info.query.name().to_string();
                    let qtype = info.query.query_type();
                    let span = tracing::debug_span!("dns", name = %qname, ?qtype, src = %request.src());
                    let _e = span.enter();
                    let masters = self.node.masters();
                    Some(self.node.view(|v| resolve(&Live { view: v, masters: &masters }, &self.cfg, &qname, qtype)))
                }
            }
        };
        let soa = soa(&self.cfg);
        let sent = match lookup {
            None => response.send_response(builder.build_no_records(meta)).await,
            Some(Lookup::Refused) => {
                meta.authoritative = false;
                meta.response_code = ResponseCode::Refused;
                response.send_response(builder.build_no_records(meta)).await
            }
            Some(Lookup::NxDomain) => {
                meta.response_code = ResponseCode::NXDomain;
                response.send_response(builder.build(meta, [], [&soa], [], [])).await
            }
            Some(Lookup::Found { mut answers, additionals }) => {
                if request.protocol() == hickory_server::net::xfer::Protocol::Udp && answers.len() > MAX_UDP_ADDRESSES {
                    answers.truncate(MAX_UDP_ADDRESSES);
                    meta.truncation = true;
                }
                let authority: Vec<&Record> = if answers.is_empty() { vec![&soa] } else { Vec::new() };
                response.send_response(builder.build(meta, answers.iter(), authority, [], additionals.iter())).await
            }
        };
        match sent {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!("DNS answer not sent: {e}");
                failed(request, ResponseCode::ServFail)
            }
        }
    }
}

/// Serves DNS for `node` on `addr` (UDP and TCP) until `shutdown` resolves.
pub async fn serve(
    node: Arc<CoordNode>,
    udp: tokio::net::UdpSocket,
    tcp: tokio::net::TcpListener,
    cfg: DnsConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    cfg.validate()?;
    tracing::info!(addr = ?udp.local_addr().ok(), domain = %cfg.domain, ttl_s = cfg.ttl_s, "serving DNS (UDP and TCP)");
    let mut server = Server::new(Handler { node, cfg });
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(TCP_IDLE_TIMEOUT_S), 64);
    let token = server.shutdown_token().clone();
    tokio::spawn(async move {
        shutdown.await;
        token.cancel();
    });
    server.block_until_done().await?;
    Ok(())
}

#[cfg(test)]
mod tests;
