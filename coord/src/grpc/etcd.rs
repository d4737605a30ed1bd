//! etcd v3 KV, Cluster.MemberList and Maintenance.Status.

use std::sync::Arc;

use proto::etcdserverpb as pb;
use proto::etcdserverpb::kv_client::KvClient;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::convert::*;
use super::{on_leader, unexpected};
use crate::command::{Command, Output};
use crate::error::CoordError;
use crate::kv::KvStore;
use crate::node::{CoordNode, Written};
use crate::read::Consistency;

/// The etcd API version we report; etcdctl 3.4 and etcd client libraries accept it.
pub const ETCD_VERSION: &str = "3.4.0";

pub(crate) fn header(node: &CoordNode, revision: i64) -> pb::ResponseHeader {
    pb::ResponseHeader {
        cluster_id: node.cluster_id_u64(),
        member_id: node.id,
        revision,
        raft_term: node.current_term(),
    }
}

pub struct EtcdKv {
    node: Arc<CoordNode>,
}

impl EtcdKv {
    pub fn new(node: Arc<CoordNode>) -> Self {
        EtcdKv { node }
    }
}

fn kv_client(ch: Channel) -> KvClient<Channel> {
    KvClient::new(ch).max_decoding_message_size(64 << 20)
}

#[tonic::async_trait]
impl pb::kv_server::Kv for EtcdKv {
    #[instrument(level = "debug", skip_all, fields(node = self.node.id))]
    async fn range(&self, req: Request<pb::RangeRequest>) -> Result<Response<pb::RangeResponse>, Status> {
        KvStore::validate_range(&req.get_ref().key, &req.get_ref().range_end).map_err(CoordError::Apply)?;
        let node = &self.node;
        on_leader(
            node,
            req,
            async |r| {
                let consistency = if r.serializable { Consistency::Serializable } else { Consistency::Linearizable };
                let range = range_from_pb(r);
                let (resp, rev) = node
                    .read(consistency, |v| v.range(&range).map(|x| (x, v.revision())))
                    .await?
                    .map_err(CoordError::Apply)?;
                Ok(range_resp_to_pb(resp, header(node, rev)))
            },
            async |ch, r| kv_client(ch).range(r).await,
        )
        .await
    }

    #[instrument(level = "debug", skip_all, fields(node = self.node.id))]
    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let p = put_from_pb(req.get_ref());
        KvStore::validate_put(&p).map_err(CoordError::Apply)?;
        let node = &self.node;
        on_leader(
            node,
            req,
            async |_| match node.write(Command::Put(p)).await? {
                Written { revision, output: Output::Put(r) } => Ok(put_resp_to_pb(r, header(node, revision))),
                w => Err(unexpected(w.output)),
            },
            async |ch, r| kv_client(ch).put(r).await,
        )
        .await
    }

    #[instrument(level = "debug", skip_all, fields(node = self.node.id))]
    async fn delete_range(
        &self,
        req: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        KvStore::validate_range(&req.get_ref().key, &req.get_ref().range_end).map_err(CoordError::Apply)?;
        let d = delete_from_pb(req.get_ref());
        let node = &self.node;
        on_leader(
            node,
            req,
            async |_| match node.write(Command::DeleteRange(d)).await? {
                Written { revision, output: Output::DeleteRange(r) } => {
                    Ok(delete_resp_to_pb(r, header(node, revision)))
                }
                w => Err(unexpected(w.output)),
            },
            async |ch, r| kv_client(ch).delete_range(r).await,
        )
        .await
    }

    #[instrument(level = "debug", skip_all, fields(node = self.node.id))]
    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let t = txn_from_pb(req.get_ref())?;
        KvStore::validate_txn_proposal(&t).map_err(CoordError::Apply)?;
        let node = &self.node;
        on_leader(
            node,
            req,
            async |_| match node.write(Command::Txn(t)).await? {
                Written { revision, output: Output::Txn(r) } => Ok(txn_resp_to_pb(r, header(node, revision))),
                w => Err(unexpected(w.output)),
            },
            async |ch, r| kv_client(ch).txn(r).await,
        )
        .await
    }

    #[instrument(level = "debug", skip_all, fields(node = self.node.id))]
    async fn compact(&self, req: Request<pb::CompactionRequest>) -> Result<Response<pb::CompactionResponse>, Status> {
        let revision = req.get_ref().revision;
        let node = &self.node;
        on_leader(
            node,
            req,
            async |_| {
                let w = node.write(Command::Compact { revision }).await?;
                Ok(pb::CompactionResponse { header: Some(header(node, w.revision)) })
            },
            async |ch, r| kv_client(ch).compact(r).await,
        )
        .await
    }
}

pub struct EtcdCluster {
    node: Arc<CoordNode>,
}

impl EtcdCluster {
    pub fn new(node: Arc<CoordNode>) -> Self {
        EtcdCluster { node }
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for EtcdCluster {
    async fn member_list(
        &self,
        _req: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let m = self.node.metrics();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, n)| pb::Member {
                id: *id,
                name: n.name.clone(),
                // Every master serves TLS only.
                peer_ur_ls: vec![format!("https://{}", n.addr)],
                client_ur_ls: vec![format!("https://{}", n.addr)],
                is_learner: !voters.contains(id),
            })
            .collect();
        let rev = self.node.view(|v| v.revision());
        Ok(Response::new(pb::MemberListResponse { header: Some(header(&self.node, rev)), members }))
    }
}

pub struct EtcdMaintenance {
    node: Arc<CoordNode>,
}

impl EtcdMaintenance {
    pub fn new(node: Arc<CoordNode>) -> Self {
        EtcdMaintenance { node }
    }
}

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for EtcdMaintenance {
    async fn status(&self, _req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let m = self.node.metrics();
        let membership = m.membership_config.membership();
        let is_learner = !membership.voter_ids().any(|v| v == self.node.id);
        let (size, rev) = self.node.view(|v| (v.storage_size_bytes(), v.revision()));
        Ok(Response::new(pb::StatusResponse {
            header: Some(header(&self.node, rev)),
            version: ETCD_VERSION.into(),
            db_size: size as i64,
            leader: m.current_leader.unwrap_or(0),
            raft_index: m.last_log_index.unwrap_or(0),
            raft_term: m.current_term,
            raft_applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            errors: vec![],
            db_size_in_use: size as i64,
            is_learner,
        }))
    }
}
