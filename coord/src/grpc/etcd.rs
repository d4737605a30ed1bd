//! etcd v3 KV, Cluster.MemberList and Maintenance.Status.

use std::sync::Arc;

use proto::etcdserverpb as pb;
use proto::etcdserverpb::kv_client::KvClient;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::convert::*;
use super::{forwarded_request, is_forwarded};
use crate::command::{Command, Output};
use crate::error::CoordError;
use crate::kv::KvStore;
use crate::node::CoordNode;
use crate::store::state_machine::ReadOnlyHistory;

/// The etcd API version we report; etcdctl 3.4 and etcd client libraries accept it.
pub const ETCD_VERSION: &str = "3.4.0";

fn header(node: &CoordNode, revision: i64) -> pb::ResponseHeader {
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

    /// Proposes `cmd`; on a follower, the original request is forwarded to the leader.
    async fn write(&self, cmd: Command, forwarded: bool) -> Result<Result<(i64, Output), String>, Status> {
        match self.node.write(cmd).await {
            Ok(resp) => match resp.result {
                Ok(out) => Ok(Ok((resp.revision, out))),
                Err(e) => Err(CoordError::Apply(e).into()),
            },
            Err(CoordError::NotLeader { leader_addr: Some(addr), .. }) if !forwarded => Ok(Err(addr)),
            Err(e) => Err(e.into()),
        }
    }

    fn leader_client(&self, addr: &str) -> Result<KvClient<tonic::transport::Channel>, Status> {
        Ok(KvClient::new(self.node.channel(addr)?).max_decoding_message_size(64 << 20))
    }
}

fn unexpected(o: Output) -> Status {
    Status::internal(format!("unexpected apply output {o:?}"))
}

#[tonic::async_trait]
impl pb::kv_server::Kv for EtcdKv {
    #[instrument(level = "debug", skip_all, fields(node = self.node.id))]
    async fn range(&self, req: Request<pb::RangeRequest>) -> Result<Response<pb::RangeResponse>, Status> {
        let forwarded = is_forwarded(&req);
        let pb_req = req.into_inner();
        KvStore::validate_range_key(&pb_req.key).map_err(CoordError::Apply)?;
        if !pb_req.serializable {
            match self.node.read_barrier().await {
                Ok(()) => {}
                Err(CoordError::NotLeader { leader_addr: Some(addr), .. }) if !forwarded => {
                    return self.leader_client(&addr)?.range(forwarded_request(pb_req)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let r = range_from_pb(&pb_req);
        let (resp, rev) = {
            let st = self.node.state.read().expect("sm lock");
            let resp = st.kv.range(&r, &mut ReadOnlyHistory(&self.node.db)).map_err(CoordError::Apply)?;
            (resp, st.kv.revision)
        };
        Ok(Response::new(range_resp_to_pb(resp, header(&self.node, rev))))
    }

    #[instrument(level = "debug", skip_all, fields(node = self.node.id))]
    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let forwarded = is_forwarded(&req);
        let pb_req = req.into_inner();
        let p = put_from_pb(&pb_req);
        KvStore::validate_put(&p).map_err(CoordError::Apply)?;
        match self.write(Command::Put(p), forwarded).await? {
            Ok((rev, Output::Put(r))) => Ok(Response::new(put_resp_to_pb(r, header(&self.node, rev)))),
            Ok((_, o)) => Err(unexpected(o)),
            Err(addr) => self.leader_client(&addr)?.put(forwarded_request(pb_req)).await,
        }
    }

    #[instrument(level = "debug", skip_all, fields(node = self.node.id))]
    async fn delete_range(
        &self,
        req: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let forwarded = is_forwarded(&req);
        let pb_req = req.into_inner();
        KvStore::validate_range_key(&pb_req.key).map_err(CoordError::Apply)?;
        match self.write(Command::DeleteRange(delete_from_pb(&pb_req)), forwarded).await? {
            Ok((rev, Output::DeleteRange(r))) => Ok(Response::new(delete_resp_to_pb(r, header(&self.node, rev)))),
            Ok((_, o)) => Err(unexpected(o)),
            Err(addr) => self.leader_client(&addr)?.delete_range(forwarded_request(pb_req)).await,
        }
    }

    #[instrument(level = "debug", skip_all, fields(node = self.node.id))]
    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let forwarded = is_forwarded(&req);
        let pb_req = req.into_inner();
        let t = txn_from_pb(&pb_req)?;
        KvStore::validate_txn(&t).map_err(CoordError::Apply)?;
        match self.write(Command::Txn(t), forwarded).await? {
            Ok((rev, Output::Txn(r))) => Ok(Response::new(txn_resp_to_pb(r, header(&self.node, rev)))),
            Ok((_, o)) => Err(unexpected(o)),
            Err(addr) => self.leader_client(&addr)?.txn(forwarded_request(pb_req)).await,
        }
    }

    #[instrument(level = "debug", skip_all, fields(node = self.node.id))]
    async fn compact(&self, req: Request<pb::CompactionRequest>) -> Result<Response<pb::CompactionResponse>, Status> {
        let forwarded = is_forwarded(&req);
        let pb_req = req.into_inner();
        match self.write(Command::Compact { revision: pb_req.revision }, forwarded).await? {
            Ok((rev, _)) => Ok(Response::new(pb::CompactionResponse { header: Some(header(&self.node, rev)) })),
            Err(addr) => self.leader_client(&addr)?.compact(forwarded_request(pb_req)).await,
        }
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
                peer_ur_ls: vec![format!("http://{}", n.addr)],
                client_ur_ls: vec![format!("http://{}", n.addr)],
                is_learner: !voters.contains(id),
            })
            .collect();
        let rev = self.node.state.read().expect("sm lock").kv.revision;
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
        let db = &self.node.db;
        let mut size = 0u64;
        for cf in [crate::store::CF_LOG, crate::store::CF_RAFT_META, crate::store::CF_SM] {
            if let Some(h) = db.cf_handle(cf) {
                for p in ["rocksdb.total-sst-files-size", "rocksdb.cur-size-all-mem-tables"] {
                    size += db.property_int_value_cf(h, p).ok().flatten().unwrap_or(0);
                }
            }
        }
        let rev = self.node.state.read().expect("sm lock").kv.revision;
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
