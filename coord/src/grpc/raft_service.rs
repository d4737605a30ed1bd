//! Server side of Raft traffic: decodes openraft messages and hands them to the local Raft.

use std::sync::Arc;

use std::pin::Pin;

use futures::{Stream, StreamExt};
use openraft::raft::{AppendEntriesRequest, StreamAppendResult, VoteRequest};
use openraft::vote::RaftLeaderId;
use proto::raftpb::raft_server::Raft as RaftRpc;
use proto::raftpb::{snapshot_chunk, RaftPayload, SnapshotChunk};
use serde::Serialize;
use tonic::{Request, Response, Status, Streaming};

use super::authz;
use crate::codec::{decode_untrusted, encode};
use crate::node::CoordNode;
use crate::types::{Snapshot, SnapshotMeta, TypeConfig, Vote};

pub struct RaftService {
    node: Arc<CoordNode>,
}

impl RaftService {
    pub fn new(node: Arc<CoordNode>) -> Self {
        RaftService { node }
    }
}

fn reply<T: Serialize, E: std::fmt::Display>(r: Result<T, E>) -> Result<Response<RaftPayload>, Status> {
    let r: Result<T, String> = r.map_err(|e| e.to_string());
    let data = encode(&r).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftPayload { data }))
}

fn payload<T: serde::de::DeserializeOwned>(r: Request<RaftPayload>) -> Result<T, Status> {
    decode_untrusted(&r.into_inner().data).map_err(|e| Status::invalid_argument(format!("bad raft payload: {e}")))
}

/// Who a Raft message claims to come from: the candidate of a vote, the leader of an
/// append or a snapshot.
fn sender(vote: &Vote) -> u64 {
    *vote.leader_id().node_id()
}

/// The Raft rule beyond the gate's ([`authz`]: a master's certificate that still
/// stands, so not one of a master that left): the certificate must name the node the
/// message claims to come from. Membership is deliberately not checked: a follower
/// that has not received the entry adding a new master must still accept it as
/// leader, or it could never catch up.
fn check_sender(who: Option<&pki::PeerIdentity>, claimed: u64) -> Result<(), Status> {
    let cert_id = who.and_then(|w| w.node_id);
    if cert_id != Some(claimed) {
        return Err(Status::permission_denied(format!(
            "the certificate is for node {}, but the message claims node {claimed}",
            cert_id.map_or_else(|| "none".to_string(), |i| i.to_string())
        )));
    }
    Ok(())
}

type PayloadStream = Pin<Box<dyn Stream<Item = Result<RaftPayload, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl RaftRpc for RaftService {
    type StreamAppendStream = PayloadStream;

    async fn stream_append(
        &self,
        req: Request<Streaming<RaftPayload>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        // A broken, undecodable or unauthorized message ends the stream; the leader
        // reopens it.
        let who = authz::caller(&req).cloned();
        let node = self.node.clone();
        let input = req
            .into_inner()
            .map(move |r| match r {
                Ok(p) => {
                    let m = decode_untrusted::<AppendEntriesRequest<TypeConfig>>(&p.data).map_err(|e| {
                        tracing::warn!("undecodable AppendEntries ends the stream: {e}");
                    })?;
                    // The stream outlives the certificate it began with: a renewed
                    // leader reopens it on a new connection.
                    if let Some(Err(s)) = who.as_ref().map(|w| authz::still_stands(&node, w)) {
                        tracing::info!("AppendEntries stream ends: {}", s.message());
                        return Err(());
                    }
                    check_sender(who.as_ref(), sender(&m.vote)).map_err(|s| {
                        tracing::warn!("AppendEntries refused: {}", s.message());
                    })?;
                    Ok(m)
                }
                Err(_) => Err(()),
            })
            .take_while(|r| futures::future::ready(r.is_ok()))
            .filter_map(|r| futures::future::ready(r.ok()));
        let out = self.node.raft.stream_append(input).map(|r| {
            let r: Result<StreamAppendResult<TypeConfig>, String> = r.map_err(|e| e.to_string());
            encode(&r).map(|data| RaftPayload { data }).map_err(|e| Status::internal(e.to_string()))
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn append_entries(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let who = authz::caller(&req).cloned();
        let m: AppendEntriesRequest<TypeConfig> = payload(req)?;
        check_sender(who.as_ref(), sender(&m.vote))?;
        reply(self.node.raft.append_entries(m).await)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let who = authz::caller(&req).cloned();
        let m: VoteRequest<TypeConfig> = payload(req)?;
        check_sender(who.as_ref(), sender(&m.vote))?;
        reply(self.node.raft.vote(m).await)
    }

    async fn pre_vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let who = authz::caller(&req).cloned();
        let m: VoteRequest<TypeConfig> = payload(req)?;
        check_sender(who.as_ref(), sender(&m.vote))?;
        reply(self.node.raft.pre_vote(m).await)
    }

    async fn install_snapshot(&self, req: Request<Streaming<SnapshotChunk>>) -> Result<Response<RaftPayload>, Status> {
        let who = authz::caller(&req).cloned();
        let mut stream = req.into_inner();
        let mut head: Option<(Vote, SnapshotMeta)> = None;
        // Received into a file, within the node's size cap and deadline; never in memory.
        let mut sink = Some(self.node.snapshot_sink().map_err(|e| Status::internal(format!("snapshot file: {e}")))?);
        let deadline = tokio::time::Instant::now() + self.node.snapshot_receive_timeout();
        loop {
            let chunk = match tokio::time::timeout_at(deadline, stream.next()).await {
                Err(_) => {
                    return Err(Status::deadline_exceeded(
                        "snapshot transfer took longer than snapshot_receive_timeout_ms",
                    ))
                }
                Ok(None) => break,
                Ok(Some(c)) => c?,
            };
            match chunk.chunk {
                Some(snapshot_chunk::Chunk::Meta(m)) => {
                    let (vote, meta): (Vote, SnapshotMeta) = decode_untrusted(&m)
                        .map_err(|e| Status::invalid_argument(format!("bad snapshot meta: {e}")))?;
                    // Checked before any data is written to disk.
                    check_sender(who.as_ref(), sender(&vote))?;
                    head = Some((vote, meta));
                }
                Some(snapshot_chunk::Chunk::Data(d)) => {
                    // Nothing reaches the disk before the sender is known to be allowed.
                    if head.is_none() {
                        return Err(Status::invalid_argument("snapshot data before its meta"));
                    }
                    let mut s = sink.take().expect("sink present between chunks");
                    let (s, r) = tokio::task::spawn_blocking(move || {
                        let r = s.write(&d);
                        (s, r)
                    })
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?;
                    r.map_err(|e| Status::invalid_argument(format!("snapshot refused: {e}")))?;
                    sink = Some(s);
                }
                None => {}
            }
        }
        let (vote, meta) = head.ok_or_else(|| Status::invalid_argument("snapshot stream without meta"))?;
        let sink = sink.take().expect("sink present");
        let data = tokio::task::spawn_blocking(move || sink.finish())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("snapshot file: {e}")))?;
        tracing::info!(bytes = data.size_bytes, last = ?meta.last_log_id, "received snapshot");
        reply(self.node.raft.install_full_snapshot(vote, Snapshot { meta, snapshot: data }).await)
    }
}
