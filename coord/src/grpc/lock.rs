//! etcd's v3lock and v3election services: decode, run the recipe ([`crate::recipes`]),
//! encode. The recipes write and read linearizably, so they run on the leader (a
//! follower forwards the call once); Observe follows this master's own applied state.

use std::sync::Arc;

use proto::etcdserverpb::ResponseHeader;
use proto::v3electionpb as epb;
use proto::v3lockpb as lpb;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::convert::kv_to_pb;
use super::etcd::header;
use super::{channel_stream, on_leader, BoxStream};
use crate::node::CoordNode;
use crate::read::Consistency;

fn h(node: &CoordNode, revision: i64) -> Option<ResponseHeader> {
    Some(header(node, revision))
}

fn check_name(name: &[u8]) -> Result<(), Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument("a lock or election needs a name"));
    }
    if name.len() > 4096 {
        return Err(Status::invalid_argument("a lock or election name is at most 4,096 bytes"));
    }
    Ok(())
}

pub struct LockService {
    node: Arc<CoordNode>,
}

impl LockService {
    pub fn new(node: Arc<CoordNode>) -> Self {
        LockService { node }
    }
}

#[tonic::async_trait]
impl lpb::lock_server::Lock for LockService {
    #[instrument(level = "debug", skip_all, fields(node = self.node.id))]
    async fn lock(&self, req: Request<lpb::LockRequest>) -> Result<Response<lpb::LockResponse>, Status> {
        check_name(&req.get_ref().name)?;
        let node = &self.node;
        // The recipe writes and reads linearizably: it runs on the leader.
        on_leader(
            node,
            req,
            async |r| {
                let held = node.lock(&r.name, r.lease).await?;
                Ok(lpb::LockResponse { header: h(node, held.revision), key: held.key })
            },
            async |ch, r| lpb::lock_client::LockClient::new(ch).lock(r).await,
        )
        .await
    }

    #[instrument(level = "debug", skip_all, fields(node = self.node.id))]
    async fn unlock(&self, req: Request<lpb::UnlockRequest>) -> Result<Response<lpb::UnlockResponse>, Status> {
        let node = &self.node;
        on_leader(
            node,
            req,
            async |r| Ok(lpb::UnlockResponse { header: h(node, node.unlock(&r.key).await?) }),
            async |ch, r| lpb::lock_client::LockClient::new(ch).unlock(r).await,
        )
        .await
    }
}

pub struct ElectionService {
    node: Arc<CoordNode>,
}

impl ElectionService {
    pub fn new(node: Arc<CoordNode>) -> Self {
        ElectionService { node }
    }
}

fn leader_key(l: Option<epb::LeaderKey>) -> Result<epb::LeaderKey, Status> {
    l.ok_or_else(|| Status::invalid_argument("\"leader\" field must be provided"))
}

#[tonic::async_trait]
impl epb::election_server::Election for ElectionService {
    #[instrument(level = "debug", skip_all, fields(node = self.node.id))]
    async fn campaign(&self, req: Request<epb::CampaignRequest>) -> Result<Response<epb::CampaignResponse>, Status> {
        check_name(&req.get_ref().name)?;
        let node = &self.node;
        on_leader(
            node,
            req,
            async |r| {
                let held = node.campaign(&r.name, r.lease, &r.value).await?;
                let leader =
                    epb::LeaderKey { name: r.name.clone(), key: held.key, rev: held.create_revision, lease: r.lease };
                Ok(epb::CampaignResponse { header: h(node, held.revision), leader: Some(leader) })
            },
            async |ch, r| epb::election_client::ElectionClient::new(ch).campaign(r).await,
        )
        .await
    }

    #[instrument(level = "debug", skip_all, fields(node = self.node.id))]
    async fn proclaim(&self, req: Request<epb::ProclaimRequest>) -> Result<Response<epb::ProclaimResponse>, Status> {
        let node = &self.node;
        on_leader(
            node,
            req,
            async |r| {
                let l = leader_key(r.leader.clone())?;
                Ok(epb::ProclaimResponse { header: h(node, node.proclaim(&l.key, l.rev, l.lease, &r.value).await?) })
            },
            async |ch, r| epb::election_client::ElectionClient::new(ch).proclaim(r).await,
        )
        .await
    }

    #[instrument(level = "debug", skip_all, fields(node = self.node.id))]
    async fn leader(&self, req: Request<epb::LeaderRequest>) -> Result<Response<epb::LeaderResponse>, Status> {
        check_name(&req.get_ref().name)?;
        let node = &self.node;
        on_leader(
            node,
            req,
            async |r| match node.election_leader(&r.name, Consistency::Linearizable).await? {
                (Some(kv), rev) => Ok(epb::LeaderResponse { header: h(node, rev), kv: Some(kv_to_pb(kv)) }),
                (None, _) => Err(Status::not_found("election: no leader")),
            },
            async |ch, r| epb::election_client::ElectionClient::new(ch).leader(r).await,
        )
        .await
    }

    type ObserveStream = BoxStream<epb::LeaderResponse>;

    #[instrument(level = "debug", skip_all, fields(node = self.node.id))]
    async fn observe(&self, req: Request<epb::LeaderRequest>) -> Result<Response<Self::ObserveStream>, Status> {
        let name = req.into_inner().name;
        check_name(&name)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let node = self.node.clone();
        tokio::spawn(async move {
            // Each change of the leader (its key, or its value) is sent once, read from
            // this master's applied state as it moves.
            let mut applied = node.events().subscribe();
            let mut last: Option<(Vec<u8>, i64)> = None;
            loop {
                match node.election_leader(&name, Consistency::Serializable).await {
                    Ok((Some(kv), rev)) => {
                        let seen = Some((kv.key.clone(), kv.mod_revision));
                        if seen != last {
                            last = seen;
                            let r = epb::LeaderResponse { header: h(&node, rev), kv: Some(kv_to_pb(kv)) };
                            if tx.send(Ok(r)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok((None, _)) => last = None,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
                tokio::select! {
                    c = applied.changed() => if c.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(channel_stream(rx)))
    }

    #[instrument(level = "debug", skip_all, fields(node = self.node.id))]
    async fn resign(&self, req: Request<epb::ResignRequest>) -> Result<Response<epb::ResignResponse>, Status> {
        let node = &self.node;
        on_leader(
            node,
            req,
            async |r| {
                let l = leader_key(r.leader.clone())?;
                Ok(epb::ResignResponse { header: h(node, node.resign(&l.key, l.rev).await?) })
            },
            async |ch, r| epb::election_client::ElectionClient::new(ch).resign(r).await,
        )
        .await
    }
}
