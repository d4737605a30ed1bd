//! The gRPC face of a coord node: etcd v3 (KV, Watch, Lease, Lock, Election, Cluster,
//! Maintenance), Raft traffic,
//! cluster administration, the registry and IPAM, all on one listen address.
//!
//! A handler decodes, calls the node's one read API ([`CoordNode::read`]/[`CoordNode::view`])
//! or write path ([`CoordNode::write`]), and encodes. Requests that must run on the leader
//! go through [`on_leader`], the one forwarding rule; views only the leader holds go
//! through [`leader_view`].

pub mod admin;
pub(crate) mod authz;
mod convert;
mod etcd;
pub mod ipam;
pub mod jobs;
mod lease;
mod lock;
mod logs;
pub(crate) mod quota;
mod raft_service;
pub mod registry;
pub mod services;
mod watch;

use std::net::SocketAddr;
use std::sync::Arc;

use proto::clusterpb::cluster_admin_server::ClusterAdminServer;
use proto::clusterpb::ipam_server::IpamServer;
use proto::clusterpb::jobs_server::JobsServer;
use proto::clusterpb::registry_server::RegistryServer;
use proto::clusterpb::services_server::ServicesServer;
use proto::etcdserverpb::cluster_server::ClusterServer;
use proto::etcdserverpb::kv_server::KvServer;
use proto::etcdserverpb::lease_server::LeaseServer;
use proto::etcdserverpb::maintenance_server::MaintenanceServer;
use proto::etcdserverpb::watch_server::WatchServer;
use proto::raftpb::raft_server::RaftServer;
use proto::v3electionpb::election_server::ElectionServer;
use proto::v3lockpb::lock_server::LockServer;
use tokio::net::TcpListener;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::transport::Server;
use tonic::{Code, Request, Response, Status};

use crate::command::Output;
use crate::error::LEADER_ADDR_HEADER;
use crate::node::CoordNode;

pub use proto::consts::FORWARDED_HEADER;

/// Largest message each service decodes: every byte of a request is held in memory
/// before a handler sees it, so only Raft (log batches, snapshot chunks) gets large ones.
/// The etcd KV limit is etcd's own: its 1.5 MiB request limit plus 512 KiB for the
/// rest of the message, so a value just over 1.5 MiB still gets etcd's "request is too
/// large", and a bigger message is refused before it is decoded.
pub(crate) mod limits {
    pub const RAFT_MESSAGE_BYTES: usize = 64 << 20;
    pub const KV_MESSAGE_BYTES: usize = (3 << 19) + (512 << 10);
    /// Batched allocations and reports of held addresses.
    pub const IPAM_MESSAGE_BYTES: usize = 8 << 20;
    pub const OTHER_MESSAGE_BYTES: usize = 1 << 20;
    /// HTTP/2 streams one connection may have open at once; more wait for a free one.
    pub const STREAMS_PER_CONNECTION: u32 = 1024;
    /// Requests one connection may have in flight in handlers; more wait.
    pub const CONCURRENCY_PER_CONNECTION: usize = 256;
    /// HTTP/2 pings on an idle connection find a dead peer.
    pub const KEEPALIVE_INTERVAL_S: u64 = 10;
    pub const KEEPALIVE_TIMEOUT_S: u64 = 20;
    /// Request headers, in bytes.
    pub const HEADER_LIST_BYTES: u32 = 64 << 10;
}

/// Whether a master forwarded this request. The mark counts only from a manager's
/// certificate; anyone else who sets it is treated as a first hop.
pub(crate) fn is_forwarded<T>(r: &Request<T>) -> bool {
    r.metadata().contains_key(FORWARDED_HEADER) && authz::caller(r).is_some_and(|w| w.role == pki::CertRole::Manager)
}

pub(crate) fn forwarded_request<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert(FORWARDED_HEADER, MetadataValue::from_static("1"));
    r
}

/// The one forwarding rule, for requests that must run on the leader (writes,
/// linearizable reads, leader-only work): `local` runs here first. If it answers that
/// another node leads (`unavailable` carrying the leader's address) and the request has
/// not been forwarded yet, the original request goes to that leader once, through
/// `remote`, marked as forwarded; a forwarded request is never forwarded again, so it
/// cannot bounce. Every other answer, including a second not-leader, goes back as is.
///
/// Running locally first means a follower needs no separate leader check, a node that
/// is just becoming leader serves the request itself, and while no leader is known the
/// node's own wait for the election applies (bounded by `request_timeout_ms`).
pub(crate) async fn on_leader<Req, Resp>(
    node: &CoordNode,
    req: Request<Req>,
    local: impl AsyncFnOnce(&Req) -> Result<Resp, Status>,
    remote: impl AsyncFnOnce(Channel, Request<Req>) -> Result<Response<Resp>, Status>,
) -> Result<Response<Resp>, Status> {
    let forwarded = is_forwarded(&req);
    let msg = req.into_inner();
    match local(&msg).await {
        Ok(r) => Ok(Response::new(r)),
        Err(s) if !forwarded && s.code() == Code::Unavailable => {
            let Some(leader) = s.metadata().get(LEADER_ADDR_HEADER).and_then(|v| v.to_str().ok()) else {
                return Err(s);
            };
            let ch = node.channel(leader)?;
            remote(ch, forwarded_request(msg)).await
        }
        Err(s) => Err(s),
    }
}

/// For views that only the leader holds in memory (replication progress, heartbeat ages,
/// agents' IPAM reports): a follower asks the leader once (1 s at most) and answers from
/// its own state when the leader cannot be reached. An answer from the leader that is a
/// verdict on the request (not found, invalid, …) is returned as is.
pub(crate) async fn leader_view<Req: Clone, Resp>(
    node: &CoordNode,
    req: Request<Req>,
    local: impl FnOnce(&Req) -> Result<Resp, Status>,
    remote: impl AsyncFnOnce(Channel, Request<Req>) -> Result<Response<Resp>, Status>,
) -> Result<Response<Resp>, Status> {
    let forwarded = is_forwarded(&req);
    let msg = req.into_inner();
    if !forwarded && !node.is_leader() {
        if let (Some(id), Some(addr)) = node.leader() {
            if id != node.id {
                let ch = node.channel(&addr)?;
                let call = remote(ch, forwarded_request(msg.clone()));
                match tokio::time::timeout(std::time::Duration::from_secs(1), call).await {
                    Ok(Ok(r)) => return Ok(r),
                    Ok(Err(s))
                        if !matches!(
                            s.code(),
                            Code::Unavailable
                                | Code::DeadlineExceeded
                                | Code::Cancelled
                                | Code::Unknown
                                | Code::Internal
                                | Code::Unimplemented
                        ) =>
                    {
                        return Err(s)
                    }
                    _ => {}
                }
            }
        }
    }
    local(&msg).map(Response::new)
}

/// A server stream as services return it.
pub(crate) type BoxStream<T> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

/// The receiving end of a channel as a server stream.
pub(crate) fn channel_stream<T: Send + 'static>(rx: tokio::sync::mpsc::Receiver<Result<T, Status>>) -> BoxStream<T> {
    Box::pin(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) }))
}

/// A write answered with another area's output: a bug, never the client's fault.
pub(crate) fn unexpected(o: Output) -> Status {
    Status::internal(format!("unexpected apply output {o:?}"))
}

/// Waits until this master has applied everything the leader had committed when asked:
/// the leader's read barrier, or on a follower the leader's commit index (its `Status`)
/// reached by this master's apply. For reads a follower answers itself that must see a
/// write just acknowledged elsewhere (a token issued a moment ago).
pub async fn caught_up_with_leader(node: &CoordNode) -> Result<(), Status> {
    use proto::clusterpb::cluster_admin_client::ClusterAdminClient;
    if node.is_leader() {
        return Ok(node.read_barrier().await?);
    }
    let (Some(_), Some(addr)) = node.leader() else {
        return Err(Status::unavailable("no leader is known"));
    };
    let limit = node.request_timeout();
    let ch = node.channel(&addr)?;
    let status = tokio::time::timeout(limit, ClusterAdminClient::new(ch).status(proto::clusterpb::StatusRequest {}))
        .await
        .map_err(|_| Status::unavailable("the leader did not answer in time"))??
        .into_inner();
    node.raft
        .wait(Some(limit))
        .applied_index_at_least(status.commit_index, "caught up with the leader")
        .await
        .map_err(|e| Status::unavailable(format!("not caught up with the leader: {e}")))?;
    Ok(())
}

/// The service implementations that hold state of their own (the agents' assignment
/// hub, the report batcher, the task-log relay): one per master, shared by the gRPC
/// server and the HTTP face, so that a log asked for over HTTP finds the agents' log
/// channels that gRPC holds.
#[derive(Clone)]
pub struct Shared {
    pub services: Arc<services::ServicesService>,
    pub jobs: Arc<jobs::JobsService>,
}

impl Shared {
    pub fn new(node: Arc<CoordNode>) -> Shared {
        Shared {
            services: Arc::new(services::ServicesService::new(node.clone())),
            jobs: Arc::new(jobs::JobsService::new(node)),
        }
    }
}

/// Serves every service of `node` on `listener` until `shutdown` resolves.
pub async fn serve(
    node: Arc<CoordNode>,
    shared: Shared,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let local: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(addr = ?local, node = node.id, "serving gRPC over mutual TLS");
    crate::metrics::spawn_leader_watch(&node);
    // Every connection is TLS; the client's certificate, if any, names who calls. The
    // accept stream also turns Nagle off (a small response must not wait for the
    // client's delayed ACK: 40 ms).
    let tls = node.tls.server_config().map_err(|e| std::io::Error::other(e.to_string()))?;
    let incoming = pki::net::incoming(listener, tls, pki::net::AcceptLimits::default());
    use limits::*;
    // Handlers bound their own waits (request_timeout_ms); this is the backstop for a
    // handler future that runs longer. InstallSnapshot is exempt: it has its own
    // deadline, snapshot_receive_timeout_ms.
    let handler_timeout = std::time::Duration::from_millis(4 * node.config.request_timeout_ms.max(5_000));
    let n = node.clone();
    Server::builder()
        .max_concurrent_streams(STREAMS_PER_CONNECTION)
        .concurrency_limit_per_connection(CONCURRENCY_PER_CONNECTION)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(KEEPALIVE_INTERVAL_S)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(KEEPALIVE_TIMEOUT_S)))
        .http2_max_header_list_size(HEADER_LIST_BYTES)
        .layer(authz::AuthzLayer { node: node.clone(), handler_timeout })
        .add_service(
            RaftServer::new(raft_service::RaftService::new(n.clone()))
                .max_decoding_message_size(RAFT_MESSAGE_BYTES)
                .max_encoding_message_size(RAFT_MESSAGE_BYTES),
        )
        .add_service(KvServer::new(etcd::EtcdKv::new(n.clone())).max_decoding_message_size(KV_MESSAGE_BYTES))
        .add_service(WatchServer::new(watch::WatchService::new(n.clone())).max_decoding_message_size(KV_MESSAGE_BYTES))
        .add_service(
            LeaseServer::new(lease::LeaseService::new(n.clone())).max_decoding_message_size(OTHER_MESSAGE_BYTES),
        )
        .add_service(LockServer::new(lock::LockService::new(n.clone())).max_decoding_message_size(OTHER_MESSAGE_BYTES))
        .add_service(
            ElectionServer::new(lock::ElectionService::new(n.clone())).max_decoding_message_size(KV_MESSAGE_BYTES),
        )
        .add_service(
            ClusterServer::new(etcd::EtcdCluster::new(n.clone())).max_decoding_message_size(OTHER_MESSAGE_BYTES),
        )
        .add_service(
            MaintenanceServer::new(etcd::EtcdMaintenance::new(n.clone()))
                .max_decoding_message_size(OTHER_MESSAGE_BYTES),
        )
        .add_service(
            ClusterAdminServer::new(admin::Admin::new(n.clone())).max_decoding_message_size(OTHER_MESSAGE_BYTES),
        )
        .add_service(
            RegistryServer::new(registry::RegistryService::new(n.clone()))
                .max_decoding_message_size(OTHER_MESSAGE_BYTES),
        )
        .add_service(IpamServer::new(ipam::IpamService::new(n.clone())).max_decoding_message_size(IPAM_MESSAGE_BYTES))
        // Reports carry up to 10,000 statuses; app JSON is small.
        .add_service(JobsServer::from_arc(shared.jobs).max_decoding_message_size(OTHER_MESSAGE_BYTES))
        .add_service(
            ServicesServer::from_arc(shared.services)
                .max_decoding_message_size(IPAM_MESSAGE_BYTES)
                .max_encoding_message_size(64 << 20),
        )
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
