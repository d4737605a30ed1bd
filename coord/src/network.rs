//! Raft RPCs between masters over gRPC. openraft's messages travel as bincode inside
//! `cluster.raft.v1` payloads. Replication uses one long-lived bidirectional stream per
//! follower, so appends are pipelined rather than one unary call at a time; snapshots are
//! streamed in chunks.

use std::future::Future;
use std::time::Duration;

use futures::{Stream, StreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, VoteRequest, VoteResponse,
};
use openraft::OptionalSend;
use proto::raftpb::raft_client::RaftClient;
use proto::raftpb::{snapshot_chunk, RaftPayload, SnapshotChunk};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;

use crate::codec::{decode_untrusted, encode};
use crate::types::{NodeId, NodeInfo, Snapshot, TypeConfig, Vote};

/// Snapshot data is sent in chunks of this size.
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// Creates one [`Connection`] per peer, over mutual TLS with this node's certificate.
#[derive(Clone)]
pub struct Network {
    tls: pki::ClientTls,
}

impl Network {
    pub fn new(tls: pki::ClientTls) -> Network {
        Network { tls }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Connection {
        Connection::new(target, &node.addr, &self.tls)
    }
}

pub struct Connection {
    target: NodeId,
    client: Option<RaftClient<Channel>>,
    addr: String,
    tls: pki::ClientTls,
    /// The credentials' generation the channel was made at.
    generation: u64,
}

impl Connection {
    fn new(target: NodeId, addr: &str, tls: &pki::ClientTls) -> Connection {
        let mut c = Connection { target, client: None, addr: addr.to_string(), tls: tls.clone(), generation: 0 };
        c.connect();
        c
    }

    fn connect(&mut self) {
        self.generation = self.tls.generation();
        self.client = channel(&self.addr, &self.tls)
            .ok()
            .map(|ch| RaftClient::new(ch).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20));
    }

    /// The client, on a new connection if this node's certificate was renewed since the
    /// last one was made (the peer must see the certificate in force).
    fn client(&mut self) -> Result<RaftClient<Channel>, Unreachable<TypeConfig>> {
        if self.tls.generation() != self.generation {
            self.connect();
        }
        self.client
            .clone()
            .ok_or_else(|| Unreachable::from_string(format!("invalid address of node {}: {}", self.target, self.addr)))
    }

    async fn call<Req, Resp, F, Fut>(
        &mut self,
        req: &Req,
        option: &RPCOption,
        f: F,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        F: FnOnce(RaftClient<Channel>, RaftPayload) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>,
    {
        let data = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let client = self.client()?;
        let fut = f(client, RaftPayload { data });
        let resp = match tokio::time::timeout(option.hard_ttl(), fut).await {
            Err(_) => return Err(RPCError::Unreachable(Unreachable::from_string("rpc timed out"))),
            Ok(Err(status)) => return Err(status_to_rpc_error(status)),
            Ok(Ok(r)) => r.into_inner(),
        };
        let res: Result<Resp, String> =
            decode_untrusted(&resp.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        res.map_err(|e| RPCError::Network(NetworkError::from_string(format!("remote raft error: {e}"))))
    }
}

/// A lazily connected channel to another master, over mutual TLS.
pub(crate) fn channel(addr: &str, tls: &pki::ClientTls) -> Result<Channel, pki::PkiError> {
    let o = pki::net::ChannelOptions {
        connect_timeout: Duration::from_millis(500),
        request_timeout: None,
        keepalive: Some(Duration::from_secs(5)),
    };
    pki::net::channel(addr, tls, &o)
}

fn status_to_rpc_error(s: tonic::Status) -> RPCError<TypeConfig> {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            RPCError::Unreachable(Unreachable::from_string(s.to_string()))
        }
        _ => RPCError::Network(NetworkError::from_string(s.to_string())),
    }
}

/// The file's bytes as data chunks, read one at a time as the transport asks for them, so
/// a snapshot is never in memory whole. A read error ends the stream early; the receiver
/// then fails the checksum or the length and refuses the snapshot.
fn file_chunks(file: std::fs::File) -> impl Stream<Item = SnapshotChunk> + Send + 'static {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::from_std(file);
    futures::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; SNAPSHOT_CHUNK_BYTES];
        let mut n = 0;
        while n < buf.len() {
            match file.read(&mut buf[n..]).await {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) => {
                    tracing::warn!("reading the snapshot file failed: {e}");
                    return None;
                }
            }
        }
        if n == 0 {
            return None;
        }
        buf.truncate(n);
        Some((SnapshotChunk { chunk: Some(snapshot_chunk::Chunk::Data(buf)) }, Some(file)))
    })
}

impl RaftNetworkV2<TypeConfig> for Connection {
    type SnapshotData = crate::types::SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&rpc, &option, |mut c, p| async move { c.append_entries(p).await }).await
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>, RPCError<TypeConfig>>,
    >
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        Box::pin(async move {
            let mut client = self.client()?;
            // Entries are plain data: encoding them cannot fail.
            let reqs = input.map(|r| RaftPayload { data: encode(&r).expect("encode AppendEntries") });
            let resp = match tokio::time::timeout(option.hard_ttl(), client.stream_append(reqs)).await {
                Err(_) => return Err(RPCError::Unreachable(Unreachable::from_string("stream_append open timed out"))),
                Ok(Err(status)) => return Err(status_to_rpc_error(status)),
                Ok(Ok(r)) => r.into_inner(),
            };
            let out = resp.map(|item| {
                let p = item.map_err(status_to_rpc_error)?;
                let r: Result<StreamAppendResult<TypeConfig>, String> =
                    decode_untrusted(&p.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
                r.map_err(|e| RPCError::Network(NetworkError::from_string(format!("remote raft error: {e}"))))
            });
            Ok(Box::pin(out) as BoxStream<'s, _>)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&rpc, &option, |mut c, p| async move { c.vote(p).await }).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&rpc, &option, |mut c, p| async move { c.pre_vote(p).await }).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut client = self.client()?;
        let meta = encode(&(vote, snapshot.meta.clone())).map_err(|e| NetworkError::new(&e))?;
        let len_mib = snapshot.snapshot.size_bytes >> 20;
        let head = SnapshotChunk { chunk: Some(snapshot_chunk::Chunk::Meta(meta)) };
        let send =
            client.install_snapshot(futures::stream::once(async { head }).chain(file_chunks(snapshot.snapshot.file)));
        let resp = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            // Generous and growing with size: a large snapshot must be able to finish.
            r = tokio::time::timeout(option.hard_ttl().max(Duration::from_secs(30)) + Duration::from_secs(1) * (len_mib as u32), send) => r,
        };
        let resp = match resp {
            Err(_) => return Err(Unreachable::from_string("snapshot transfer timed out").into()),
            Ok(Err(s)) => return Err(NetworkError::from_string(s.to_string()).into()),
            Ok(Ok(r)) => r.into_inner(),
        };
        let res: Result<SnapshotResponse<TypeConfig>, String> =
            decode_untrusted(&resp.data).map_err(|e| NetworkError::new(&e))?;
        res.map_err(|e| NetworkError::from_string(format!("remote snapshot install failed: {e}")).into())
    }

    fn backoff(&self) -> Option<Backoff> {
        // A dead peer is retried every 100 ms rather than hammered.
        Some(Backoff::new(std::iter::repeat(Duration::from_millis(100))))
    }
}
