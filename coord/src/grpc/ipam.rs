//! The IPAM service: networks, allocations, releases, agents' reports and the leak check.

use std::net::IpAddr;
use std::sync::Arc;

use proto::clusterpb as pb;
use proto::clusterpb::ipam_client::IpamClient;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::registry::secret_hash;
use super::{authz, leader_view, on_leader, unexpected};
use crate::command::{Command, Output};
use crate::error::CoordError;
use crate::ipam::repair::Held;
use crate::ipam::{self, IpamCommand, IpamError, IpamOutput, Network, NetworkSpec};
use crate::leader::ipam_check;
use crate::node::CoordNode;

/// Default quarantine of a released address before it is reused.
pub const DEFAULT_QUARANTINE_MS: u64 = 60_000;

pub struct IpamService {
    node: Arc<CoordNode>,
}

fn invalid(e: IpamError) -> Status {
    CoordError::Apply(crate::command::ApplyError::Ipam(e)).into()
}

fn parse_ip(s: &str, what: &str) -> Result<IpAddr, Status> {
    s.parse().map_err(|_| Status::invalid_argument(format!("{what} {s:?} is not an IP address")))
}

pub fn network_info(n: &Network) -> pb::NetworkInfo {
    // Usage is that of the fullest subnet: it is the one that runs out first.
    let mut usage = 0f64;
    let subnets = n
        .pools
        .iter()
        .map(|p| {
            usage = usage.max(p.allocated as f64 * 100.0 / p.usable() as f64);
            pb::SubnetInfo {
                cidr: p.subnet.to_string(),
                gateway: p.subnet.addr(p.gateway).to_string(),
                usable: p.usable().min(u64::MAX as u128) as u64,
                allocated: p.allocated as u64,
                quarantined: p.quarantined as u64,
                usable_exact: p.usable().to_string(),
                reserved: p
                    .reserved_runs
                    .0
                    .iter()
                    .map(|(s, e)| {
                        if s == e {
                            p.subnet.addr(*s).to_string()
                        } else {
                            format!("{}-{}", p.subnet.addr(*s), p.subnet.addr(*e))
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    pb::NetworkInfo {
        name: n.name.clone(),
        subnets,
        quarantine_ms: n.quarantine_ms,
        created_ms: n.created_ms,
        usage_percent: usage,
    }
}

/// Builds the command for a create request: parsing happens here, on the proposer.
fn network_spec(r: &pb::CreateNetworkRequest) -> Result<NetworkSpec, IpamError> {
    ipam::validate_name(&r.name)?;
    let subnets: Vec<ipam::Subnet> = r.subnets.iter().map(|s| ipam::parse_cidr(s)).collect::<Result<_, _>>()?;
    let mut gateways = vec![None; subnets.len()];
    if !r.gateway.is_empty() {
        let gw: IpAddr = r
            .gateway
            .parse()
            .map_err(|_| IpamError::Invalid(format!("gateway {:?} is not an IP address", r.gateway)))?;
        let (num, v6) = ipam::addr_num(gw);
        let i = subnets
            .iter()
            .position(|s| s.contains(num, v6))
            .ok_or_else(|| IpamError::OutsideSubnet(gw.to_string(), r.name.clone()))?;
        gateways[i] = Some(num - subnets[i].base);
    }
    let mut reserve = Vec::new();
    for range in &r.reserve {
        let (a, b) = range.split_once('-').unwrap_or((range, range));
        let parse = |x: &str| -> Result<(u128, bool), IpamError> {
            let ip: IpAddr = x
                .trim()
                .parse()
                .map_err(|_| IpamError::Invalid(format!("reserved range {range:?}: {x:?} is not an IP address")))?;
            Ok(ipam::addr_num(ip))
        };
        let ((fa, v6a), (fb, v6b)) = (parse(a)?, parse(b)?);
        let i = subnets
            .iter()
            .position(|s| s.contains(fa, v6a) && s.contains(fb, v6b))
            .ok_or_else(|| IpamError::Invalid(format!("reserved range {range:?} is not inside one subnet")))?;
        if fa > fb {
            return Err(IpamError::Invalid(format!("reserved range {range:?} runs backwards")));
        }
        reserve.push((i as u8, fa - subnets[i].base, fb - subnets[i].base));
    }
    Ok(NetworkSpec {
        name: r.name.clone(),
        subnets,
        gateways,
        reserve,
        quarantine_ms: r.quarantine_ms.unwrap_or(DEFAULT_QUARANTINE_MS),
    })
}

impl IpamService {
    pub fn new(node: Arc<CoordNode>) -> Self {
        IpamService { node }
    }
}

fn ipam_client(ch: Channel) -> IpamClient<Channel> {
    IpamClient::new(ch).max_decoding_message_size(64 << 20)
}

/// Proposes an IPAM command and returns its output.
async fn write(node: &CoordNode, cmd: IpamCommand) -> Result<IpamOutput, Status> {
    match node.write(Command::Ipam(cmd)).await?.output {
        Output::Ipam(o) => Ok(o),
        o => Err(unexpected(o)),
    }
}

fn unexpected_ipam(o: IpamOutput) -> Status {
    Status::internal(format!("unexpected IPAM output {o:?}"))
}

#[tonic::async_trait]
impl pb::ipam_server::Ipam for IpamService {
    #[instrument(level = "info", skip_all, fields(node = self.node.id))]
    async fn create_network(
        &self,
        req: Request<pb::CreateNetworkRequest>,
    ) -> Result<Response<pb::NetworkInfo>, Status> {
        let spec = network_spec(req.get_ref()).map_err(invalid)?;
        let node = &self.node;
        on_leader(
            node,
            req,
            async |_| match write(node, IpamCommand::CreateNetwork(spec)).await? {
                IpamOutput::Network(n) => Ok(network_info(&n)),
                o => Err(unexpected_ipam(o)),
            },
            async |ch, r| ipam_client(ch).create_network(r).await,
        )
        .await
    }

    #[instrument(level = "info", skip_all, fields(node = self.node.id))]
    async fn remove_network(
        &self,
        req: Request<pb::RemoveNetworkRequest>,
    ) -> Result<Response<pb::RemoveNetworkResponse>, Status> {
        let node = &self.node;
        on_leader(
            node,
            req,
            async |r| match write(node, IpamCommand::RemoveNetwork { name: r.name.clone(), force: r.force }).await? {
                IpamOutput::Removed { released } => Ok(pb::RemoveNetworkResponse { released: released as u64 }),
                o => Err(unexpected_ipam(o)),
            },
            async |ch, r| ipam_client(ch).remove_network(r).await,
        )
        .await
    }

    async fn list_networks(
        &self,
        _: Request<pb::ListNetworksRequest>,
    ) -> Result<Response<pb::ListNetworksResponse>, Status> {
        let networks = self.node.view(|v| v.ipam().networks.values().map(network_info).collect());
        Ok(Response::new(pb::ListNetworksResponse { networks }))
    }

    async fn inspect_network(
        &self,
        req: Request<pb::InspectNetworkRequest>,
    ) -> Result<Response<pb::InspectNetworkResponse>, Status> {
        let r = req.into_inner();
        let limit = r.limit as usize;
        let (n, rows) = self.node.view(|v| {
            let n = v
                .ipam()
                .networks
                .get(&r.name)
                .cloned()
                .ok_or_else(|| invalid(IpamError::UnknownNetwork(r.name.clone())))?;
            Ok::<_, Status>((n, v.ipam_allocations(&r.name, limit.saturating_add(1))?))
        })?;
        let truncated = rows.len() > limit;
        let allocations = rows
            .into_iter()
            .take(limit)
            .map(|(owner, h)| pb::Allocation {
                address: n.pools[h.pool as usize].subnet.addr(h.offset).to_string(),
                owner,
                node_id: h.node.unwrap_or(0),
                since_ms: h.since_ms,
            })
            .collect();
        Ok(Response::new(pb::InspectNetworkResponse { network: Some(network_info(&n)), allocations, truncated }))
    }

    #[instrument(level = "debug", skip_all, fields(node = self.node.id))]
    async fn allocate(&self, req: Request<pb::AllocateRequest>) -> Result<Response<pb::AllocateResponse>, Status> {
        let r = req.get_ref();
        ipam::validate_owner(&r.owner).map_err(invalid)?;
        let requested = if r.address.is_empty() { None } else { Some(parse_ip(&r.address, "address")?) };
        let node = &self.node;
        on_leader(
            node,
            req,
            async |r| {
                let owner = (r.node_id != 0).then_some(r.node_id);
                let cmd = IpamCommand::Allocate {
                    network: r.network.clone(),
                    owner: r.owner.clone(),
                    requested,
                    node: owner,
                };
                match write(node, cmd).await? {
                    IpamOutput::Allocated { address, new } => {
                        Ok(pb::AllocateResponse { address: address.to_string(), new })
                    }
                    o => Err(unexpected_ipam(o)),
                }
            },
            async |ch, r| ipam_client(ch).allocate(r).await,
        )
        .await
    }

    #[instrument(level = "debug", skip_all, fields(node = self.node.id))]
    async fn allocate_batch(
        &self,
        req: Request<pb::AllocateBatchRequest>,
    ) -> Result<Response<pb::AllocateBatchResponse>, Status> {
        let node = &self.node;
        on_leader(
            node,
            req,
            async |r| {
                let owner = (r.node_id != 0).then_some(r.node_id);
                let cmd =
                    IpamCommand::AllocateBatch { network: r.network.clone(), owners: r.owners.clone(), node: owner };
                match write(node, cmd).await? {
                    IpamOutput::Batch(a) => {
                        Ok(pb::AllocateBatchResponse { addresses: a.iter().map(|x| x.to_string()).collect() })
                    }
                    o => Err(unexpected_ipam(o)),
                }
            },
            async |ch, r| ipam_client(ch).allocate_batch(r).await,
        )
        .await
    }

    #[instrument(level = "debug", skip_all, fields(node = self.node.id))]
    async fn release(&self, req: Request<pb::ReleaseRequest>) -> Result<Response<pb::ReleaseResponse>, Status> {
        let r = req.get_ref();
        let address = if r.address.is_empty() { None } else { Some(parse_ip(&r.address, "address")?) };
        let owner = (!r.owner.is_empty()).then(|| r.owner.clone());
        if owner.is_none() && address.is_none() {
            return Err(Status::invalid_argument("release needs an owner or an address"));
        }
        let node = &self.node;
        on_leader(
            node,
            req,
            async |r| match write(node, IpamCommand::Release { network: r.network.clone(), owner, address }).await? {
                IpamOutput::Released(a) => {
                    Ok(pb::ReleaseResponse { address: a.map(|a| a.to_string()).unwrap_or_default() })
                }
                o => Err(unexpected_ipam(o)),
            },
            async |ch, r| ipam_client(ch).release(r).await,
        )
        .await
    }

    async fn report_held(
        &self,
        req: Request<pb::ReportHeldRequest>,
    ) -> Result<Response<pb::ReportHeldResponse>, Status> {
        let r = req.get_ref();
        authz::acts_as(authz::caller(&req), r.node_id)?;
        let mut held = Vec::with_capacity(r.held.len());
        for h in &r.held {
            held.push(Held {
                network: h.network.clone(),
                address: parse_ip(&h.address, "address")?,
                owner: h.owner.clone(),
            });
        }
        let secret = secret_hash(&r.node_secret);
        let known = self.node.view(|v| v.registry().nodes.get(&r.node_id).is_some_and(|n| n.secret_hash == secret));
        if !known {
            return Err(Status::permission_denied(format!("node {} is not registered with this secret", r.node_id)));
        }
        let node = &self.node;
        on_leader(
            node,
            req,
            async |r| {
                // Reports live in the leader's memory: only the leader may take one.
                node.ensure_leader().await?;
                node.leaks.report(r.node_id, held);
                Ok(pb::ReportHeldResponse {})
            },
            async |ch, r| ipam_client(ch).report_held(r).await,
        )
        .await
    }

    async fn check(&self, req: Request<pb::CheckRequest>) -> Result<Response<pb::CheckResponse>, Status> {
        let node = &self.node;
        leader_view(node, req, |_| check(node), async |ch, r| ipam_client(ch).check(r).await).await
    }
}

/// Leaks (with when they will be released) and conflicts, as this node sees them.
fn check(node: &CoordNode) -> Result<pb::CheckResponse, Status> {
    let (leaks, conflicts) = ipam_check(node)?;
    let grace = std::time::Duration::from_millis(node.config.ip_leak_grace_ms);
    let now_ms = crate::node::now_ms();
    let leaks = leaks
        .into_iter()
        .map(|l| {
            let left = grace.saturating_sub(l.seen.elapsed());
            pb::Leak {
                network: l.network,
                address: l.address.to_string(),
                owner: l.owner,
                node_id: l.node,
                reason: l.reason.into(),
                release_at_ms: if left.is_zero() { 0 } else { now_ms + left.as_millis() as u64 },
            }
        })
        .collect();
    let conflicts = conflicts
        .into_iter()
        .map(|c| pb::Conflict {
            network: c.network,
            address: c.address.to_string(),
            node_id: c.node,
            reported_owner: c.reported_owner,
            state_owner: c.state_owner,
        })
        .collect();
    Ok(pb::CheckResponse { leaks, conflicts, from_leader: node.is_leader() })
}
