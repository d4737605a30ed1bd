//! etcd's Lease service. Grants and revokes are writes; KeepAlive and TimeToLive are
//! answered by the leader, which alone counts leases down: a follower forwards them
//! (KeepAlive through `ClusterAdmin.RenewLease`, one call per renewal).

use std::sync::Arc;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use proto::clusterpb as cpb;
use proto::clusterpb::cluster_admin_client::ClusterAdminClient;
use proto::etcdserverpb as pb;
use proto::etcdserverpb::lease_client::LeaseClient;
use tonic::{Request, Response, Status, Streaming};
use tracing::instrument;

use super::etcd::header;
use super::{channel_stream, on_leader, BoxStream};
use crate::node::CoordNode;

pub struct LeaseService {
    node: Arc<CoordNode>,
}

impl LeaseService {
    pub fn new(node: Arc<CoordNode>) -> Self {
        LeaseService { node }
    }
}

/// One renewal, on the leader or forwarded to it once.
pub(crate) async fn renew(
    node: &Arc<CoordNode>,
    req: Request<cpb::RenewLeaseRequest>,
) -> Result<Response<cpb::RenewLeaseResponse>, Status> {
    on_leader(
        node,
        req,
        async |r| Ok(cpb::RenewLeaseResponse { ttl: node.renew_lease(r.id).await? }),
        async |ch, r| ClusterAdminClient::new(ch).renew_lease(r).await,
    )
    .await
}

/// Renewals one KeepAlive stream has in flight at once; past that it stops reading.
const KEEPALIVES_IN_FLIGHT: usize = 32;

async fn keep_alive_once(node: Arc<CoordNode>, id: i64) -> Result<pb::LeaseKeepAliveResponse, Status> {
    let r = renew(&node, Request::new(cpb::RenewLeaseRequest { id })).await?;
    Ok(pb::LeaseKeepAliveResponse { header: Some(header(&node, revision(&node))), id, ttl: r.into_inner().ttl })
}

fn revision(node: &CoordNode) -> i64 {
    node.view(|v| v.revision())
}

#[tonic::async_trait]
impl pb::lease_server::Lease for LeaseService {
    #[instrument(level = "debug", skip_all, fields(node = self.node.id))]
    async fn lease_grant(
        &self,
        req: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let node = &self.node;
        on_leader(
            node,
            req,
            async |r| {
                let (id, ttl) = node.grant_lease(r.id, r.ttl).await?;
                Ok(pb::LeaseGrantResponse { header: Some(header(node, revision(node))), id, ttl, error: String::new() })
            },
            async |ch, r| LeaseClient::new(ch).lease_grant(r).await,
        )
        .await
    }

    #[instrument(level = "debug", skip_all, fields(node = self.node.id))]
    async fn lease_revoke(
        &self,
        req: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let node = &self.node;
        on_leader(
            node,
            req,
            async |r| {
                let rev = node.revoke_lease(r.id).await?;
                Ok(pb::LeaseRevokeResponse { header: Some(header(node, rev)) })
            },
            async |ch, r| LeaseClient::new(ch).lease_revoke(r).await,
        )
        .await
    }

    type LeaseKeepAliveStream = BoxStream<pb::LeaseKeepAliveResponse>;

    #[instrument(level = "debug", skip_all, fields(node = self.node.id))]
    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(KEEPALIVES_IN_FLIGHT);
        let node = self.node.clone();
        tokio::spawn(async move {
            // Renewals are answered as they finish, not in order: one that waits for a
            // checkpoint (or a forward) must not hold up the stream's other leases.
            let mut pending = FuturesUnordered::new();
            let mut open = true;
            loop {
                tokio::select! {
                    m = inbound.next(), if open && pending.len() < KEEPALIVES_IN_FLIGHT => match m {
                        None => open = false,
                        Some(Err(s)) => {
                            let _ = tx.send(Err(s)).await;
                            return;
                        }
                        Some(Ok(m)) => pending.push(keep_alive_once(node.clone(), m.id)),
                    },
                    Some(answer) = pending.next(), if !pending.is_empty() => {
                        let end = answer.is_err();
                        if tx.send(answer).await.is_err() || end {
                            return;
                        }
                    }
                    _ = tx.closed() => return,
                }
                if !open && pending.is_empty() {
                    return;
                }
            }
        });
        Ok(Response::new(channel_stream(rx)))
    }

    #[instrument(level = "debug", skip_all, fields(node = self.node.id))]
    async fn lease_time_to_live(
        &self,
        req: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let node = &self.node;
        on_leader(
            node,
            req,
            async |r| {
                let h = Some(header(node, revision(node)));
                Ok(match node.lease_time_to_live(r.id, r.keys).await? {
                    Some(t) => pb::LeaseTimeToLiveResponse {
                        header: h,
                        id: r.id,
                        ttl: t.ttl_secs,
                        granted_ttl: t.granted_secs,
                        keys: t.keys,
                    },
                    // etcd's answer for a lease that does not exist.
                    None => pb::LeaseTimeToLiveResponse { header: h, id: r.id, ttl: -1, granted_ttl: 0, keys: vec![] },
                })
            },
            async |ch, r| LeaseClient::new(ch).lease_time_to_live(r).await,
        )
        .await
    }

    #[instrument(level = "debug", skip_all, fields(node = self.node.id))]
    async fn lease_leases(
        &self,
        _req: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let (rev, leases) = self.node.view(|v| {
            (v.revision(), v.leases().by_id.keys().map(|id| pb::LeaseStatus { id: *id }).collect::<Vec<_>>())
        });
        Ok(Response::new(pb::LeaseLeasesResponse { header: Some(header(&self.node, rev)), leases }))
    }
}
