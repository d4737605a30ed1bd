//! The IPAM service: networks, allocations, releases, agents' reports and the leak check.

use std::net::IpAddr;
use std::sync::Arc;

use proto::clusterpb as pb;
use proto::clusterpb::ipam_client::IpamClient;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::{forwarded_request, is_forwarded};
use crate::command::{Command, Output};
use crate::error::CoordError;
use crate::ipam::repair::Held;
use crate::ipam::{self, IpamCommand, IpamError, IpamOutput, IpamStore, Network, NetworkSpec};
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

    fn forward_target(&self, forwarded: bool) -> Result<Option<IpamClient<Channel>>, Status> {
        Ok(self.node.forward_channel(forwarded)?.map(|c| IpamClient::new(c).max_decoding_message_size(64 << 20)))
    }

    async fn write(&self, cmd: IpamCommand) -> Result<IpamOutput, Status> {
        let resp = self.node.write(Command::Ipam(cmd)).await?;
        match resp.result {
            Ok(Output::Ipam(o)) => Ok(o),
            Ok(o) => Err(Status::internal(format!("unexpected apply output {o:?}"))),
            Err(e) => Err(CoordError::Apply(e).into()),
        }
    }

    fn network(&self, name: &str) -> Result<Network, Status> {
        let st = self.node.state.read().expect("sm lock");
        st.ipam.networks.get(name).cloned().ok_or_else(|| invalid(IpamError::UnknownNetwork(name.to_string())))
    }
}

/// Read-only access to the applied IPAM records for listings.
fn scan(node: &CoordNode, prefix: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>, Status> {
    struct R<'a>(&'a rocksdb::DB);
    impl IpamStore for R<'_> {
        fn get(&mut self, _: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
            unreachable!()
        }
        fn put(&mut self, _: Vec<u8>, _: Vec<u8>) {
            unreachable!()
        }
        fn delete(&mut self, _: Vec<u8>) {
            unreachable!()
        }
        fn scan(&mut self, prefix: &[u8], limit: usize) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
            let cf = self.0.cf_handle(crate::store::CF_SM).expect("sm column family");
            let mut ro = rocksdb::ReadOptions::default();
            let mut upper = prefix.to_vec();
            *upper.last_mut().expect("prefix") += 1;
            ro.set_iterate_upper_bound(upper);
            let it = self.0.iterator_cf_opt(cf, ro, rocksdb::IteratorMode::From(prefix, rocksdb::Direction::Forward));
            it.take(limit).map(|i| i.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(crate::store::io_err)).collect()
        }
    }
    R(&node.db).scan(prefix, limit).map_err(|e| Status::internal(e.to_string()))
}

#[tonic::async_trait]
impl pb::ipam_server::Ipam for IpamService {
    #[instrument(level = "info", skip_all, fields(node = self.node.id))]
    async fn create_network(
        &self,
        req: Request<pb::CreateNetworkRequest>,
    ) -> Result<Response<pb::NetworkInfo>, Status> {
        let forwarded = is_forwarded(&req);
        let r = req.into_inner();
        let spec = network_spec(&r).map_err(invalid)?;
        if let Some(mut c) = self.forward_target(forwarded)? {
            return c.create_network(forwarded_request(r)).await;
        }
        match self.write(IpamCommand::CreateNetwork(spec)).await? {
            IpamOutput::Network(n) => Ok(Response::new(network_info(&n))),
            o => Err(Status::internal(format!("unexpected IPAM output {o:?}"))),
        }
    }

    #[instrument(level = "info", skip_all, fields(node = self.node.id))]
    async fn remove_network(
        &self,
        req: Request<pb::RemoveNetworkRequest>,
    ) -> Result<Response<pb::RemoveNetworkResponse>, Status> {
        let forwarded = is_forwarded(&req);
        let r = req.into_inner();
        if let Some(mut c) = self.forward_target(forwarded)? {
            return c.remove_network(forwarded_request(r)).await;
        }
        match self.write(IpamCommand::RemoveNetwork { name: r.name, force: r.force }).await? {
            IpamOutput::Removed { released } => {
                Ok(Response::new(pb::RemoveNetworkResponse { released: released as u64 }))
            }
            o => Err(Status::internal(format!("unexpected IPAM output {o:?}"))),
        }
    }

    async fn list_networks(
        &self,
        _: Request<pb::ListNetworksRequest>,
    ) -> Result<Response<pb::ListNetworksResponse>, Status> {
        let st = self.node.state.read().expect("sm lock");
        Ok(Response::new(pb::ListNetworksResponse { networks: st.ipam.networks.values().map(network_info).collect() }))
    }

    async fn inspect_network(
        &self,
        req: Request<pb::InspectNetworkRequest>,
    ) -> Result<Response<pb::InspectNetworkResponse>, Status> {
        let r = req.into_inner();
        let n = self.network(&r.name)?;
        let limit = r.limit as usize;
        let prefix = ipam::keys::owners_prefix(&r.name);
        let rows = scan(&self.node, &prefix, limit.saturating_add(1))?;
        let truncated = rows.len() > limit;
        let mut allocations = Vec::new();
        for (k, v) in rows.into_iter().take(limit) {
            let h: ipam::Holding = crate::store::codec::decode(&v).map_err(|e| Status::internal(e.to_string()))?;
            allocations.push(pb::Allocation {
                address: n.pools[h.pool as usize].subnet.addr(h.offset).to_string(),
                owner: String::from_utf8_lossy(&k[prefix.len()..]).into_owned(),
                node_id: h.node.unwrap_or(0),
                since_ms: h.since_ms,
            });
        }
        Ok(Response::new(pb::InspectNetworkResponse { network: Some(network_info(&n)), allocations, truncated }))
    }

    #[instrument(level = "debug", skip_all, fields(node = self.node.id))]
    async fn allocate(&self, req: Request<pb::AllocateRequest>) -> Result<Response<pb::AllocateResponse>, Status> {
        let forwarded = is_forwarded(&req);
        let r = req.into_inner();
        ipam::validate_owner(&r.owner).map_err(invalid)?;
        let requested = if r.address.is_empty() { None } else { Some(parse_ip(&r.address, "address")?) };
        if let Some(mut c) = self.forward_target(forwarded)? {
            return c.allocate(forwarded_request(r)).await;
        }
        let node = (r.node_id != 0).then_some(r.node_id);
        match self.write(IpamCommand::Allocate { network: r.network, owner: r.owner, requested, node }).await? {
            IpamOutput::Allocated { address, new } => {
                Ok(Response::new(pb::AllocateResponse { address: address.to_string(), new }))
            }
            o => Err(Status::internal(format!("unexpected IPAM output {o:?}"))),
        }
    }

    #[instrument(level = "debug", skip_all, fields(node = self.node.id))]
    async fn allocate_batch(
        &self,
        req: Request<pb::AllocateBatchRequest>,
    ) -> Result<Response<pb::AllocateBatchResponse>, Status> {
        let forwarded = is_forwarded(&req);
        let r = req.into_inner();
        if let Some(mut c) = self.forward_target(forwarded)? {
            return c.allocate_batch(forwarded_request(r)).await;
        }
        let node = (r.node_id != 0).then_some(r.node_id);
        match self.write(IpamCommand::AllocateBatch { network: r.network, owners: r.owners, node }).await? {
            IpamOutput::Batch(a) => {
                Ok(Response::new(pb::AllocateBatchResponse { addresses: a.iter().map(|x| x.to_string()).collect() }))
            }
            o => Err(Status::internal(format!("unexpected IPAM output {o:?}"))),
        }
    }

    #[instrument(level = "debug", skip_all, fields(node = self.node.id))]
    async fn release(&self, req: Request<pb::ReleaseRequest>) -> Result<Response<pb::ReleaseResponse>, Status> {
        let forwarded = is_forwarded(&req);
        let r = req.into_inner();
        let address = if r.address.is_empty() { None } else { Some(parse_ip(&r.address, "address")?) };
        let owner = (!r.owner.is_empty()).then(|| r.owner.clone());
        if owner.is_none() && address.is_none() {
            return Err(Status::invalid_argument("release needs an owner or an address"));
        }
        if let Some(mut c) = self.forward_target(forwarded)? {
            return c.release(forwarded_request(r)).await;
        }
        match self.write(IpamCommand::Release { network: r.network, owner, address }).await? {
            IpamOutput::Released(a) => {
                Ok(Response::new(pb::ReleaseResponse { address: a.map(|a| a.to_string()).unwrap_or_default() }))
            }
            o => Err(Status::internal(format!("unexpected IPAM output {o:?}"))),
        }
    }

    async fn report_held(
        &self,
        req: Request<pb::ReportHeldRequest>,
    ) -> Result<Response<pb::ReportHeldResponse>, Status> {
        let forwarded = is_forwarded(&req);
        let r = req.into_inner();
        let mut held = Vec::with_capacity(r.held.len());
        for h in &r.held {
            held.push(Held {
                network: h.network.clone(),
                address: parse_ip(&h.address, "address")?,
                owner: h.owner.clone(),
            });
        }
        {
            let st = self.node.state.read().expect("sm lock");
            let ok = st
                .registry
                .nodes
                .get(&r.node_id)
                .is_some_and(|n| n.secret_hash == super::registry::secret_hash(&r.node_secret));
            if !ok {
                return Err(Status::permission_denied(format!(
                    "node {} is not registered with this secret",
                    r.node_id
                )));
            }
        }
        if let Some(mut c) = self.forward_target(forwarded)? {
            return c.report_held(forwarded_request(r)).await;
        }
        self.node.leaks.report(r.node_id, held);
        Ok(Response::new(pb::ReportHeldResponse {}))
    }

    async fn check(&self, req: Request<pb::CheckRequest>) -> Result<Response<pb::CheckResponse>, Status> {
        let forwarded = is_forwarded(&req);
        if let Ok(Some(mut c)) = self.forward_target(forwarded) {
            if let Ok(r) = c.check(forwarded_request(pb::CheckRequest {})).await {
                return Ok(r);
            }
        }
        let (leaks, conflicts) = self.node.ipam_check()?;
        let grace = std::time::Duration::from_millis(self.node.config.ip_leak_grace_ms);
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
        Ok(Response::new(pb::CheckResponse { leaks, conflicts, from_leader: self.node.is_leader() }))
    }
}
