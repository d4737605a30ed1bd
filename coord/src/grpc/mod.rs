//! The gRPC face of a coord node: etcd v3 (KV, Cluster, Maintenance), Raft traffic,
//! cluster administration, the registry and IPAM, all on one listen address.
//!
//! Writes and linearizable reads that reach a follower are forwarded to the leader once
//! (marked with [`FORWARDED_HEADER`] so they never bounce); a second hop answers
//! `unavailable` with the leader's address in metadata.

mod admin;
mod convert;
mod etcd;
pub mod ipam;
mod raft_service;
pub mod registry;

use std::net::SocketAddr;
use std::sync::Arc;

use proto::clusterpb::cluster_admin_server::ClusterAdminServer;
use proto::clusterpb::ipam_server::IpamServer;
use proto::clusterpb::registry_server::RegistryServer;
use proto::etcdserverpb::cluster_server::ClusterServer;
use proto::etcdserverpb::kv_server::KvServer;
use proto::etcdserverpb::maintenance_server::MaintenanceServer;
use proto::raftpb::raft_server::RaftServer;
use tokio::net::TcpListener;
use tonic::metadata::MetadataValue;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic::Request;

use crate::node::CoordNode;

pub use proto::consts::FORWARDED_HEADER;
/// Largest gRPC message accepted; above etcd's 1.5 MiB request limit, so an oversized
/// value gets etcd's "request is too large" rather than a transport error.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

pub(crate) fn is_forwarded<T>(r: &Request<T>) -> bool {
    r.metadata().contains_key(FORWARDED_HEADER)
}

pub(crate) fn forwarded_request<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert(FORWARDED_HEADER, MetadataValue::from_static("1"));
    r
}

/// Serves every service of `node` on `listener` until `shutdown` resolves.
pub async fn serve(
    node: Arc<CoordNode>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let local: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(addr = ?local, node = node.id, "serving gRPC");
    // Nagle must be off on accepted sockets, or a small response waits for the client's
    // delayed ACK (40 ms). Server::tcp_nodelay does not reach a listener we bound.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    Server::builder()
        .add_service(
            RaftServer::new(raft_service::RaftService::new(node.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(KvServer::new(etcd::EtcdKv::new(node.clone())).max_decoding_message_size(MAX_MESSAGE_BYTES))
        .add_service(ClusterServer::new(etcd::EtcdCluster::new(node.clone())))
        .add_service(MaintenanceServer::new(etcd::EtcdMaintenance::new(node.clone())))
        .add_service(ClusterAdminServer::new(admin::Admin::new(node.clone())))
        .add_service(RegistryServer::new(registry::RegistryService::new(node.clone())))
        .add_service(IpamServer::new(ipam::IpamService::new(node)).max_decoding_message_size(MAX_MESSAGE_BYTES))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
