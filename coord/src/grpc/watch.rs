//! etcd's Watch service: decodes the client's requests, runs [`crate::watch::serve_stream`]
//! on this master's own state (watches are never forwarded), and encodes its answers.

use std::sync::Arc;

use futures::StreamExt;
use proto::etcdserverpb as pb;
use proto::mvccpb;
use tonic::{Request, Response, Status, Streaming};
use tracing::instrument;

use super::convert::kv_to_pb;
use super::quota::StreamKind;
use super::{authz, channel_stream, BoxStream};
use crate::node::CoordNode;
use crate::store::events::EventKind;
use crate::watch::{self, CreateRequest};

/// Responses waiting to be sent on one stream, at each of its two hops; a client that
/// reads slowly holds its stream's watchers back, and no more than this.
const OUT_QUEUE: usize = 2;

/// The metadata etcd's `clientv3.WithRequireLeader` sets: end the stream when this
/// master has lost its leader, so the client moves to one that has not, instead of
/// waiting silently on a master cut off from the quorum.
pub const REQUIRE_LEADER: &str = "hasleader";
/// etcd's error text for it.
const NO_LEADER: &str = "etcdserver: no leader";
/// How often a require-leader stream checks; two failed checks in a row end it.
const LEADER_CHECK: std::time::Duration = std::time::Duration::from_millis(500);

pub struct WatchService {
    node: Arc<CoordNode>,
}

impl WatchService {
    pub fn new(node: Arc<CoordNode>) -> Self {
        WatchService { node }
    }
}

fn request_from_pb(r: pb::WatchRequest) -> Option<watch::Request> {
    use pb::watch_request::RequestUnion as U;
    Some(match r.request_union? {
        U::CreateRequest(c) => {
            let has = |f: pb::watch_create_request::FilterType| c.filters.contains(&(f as i32));
            watch::Request::Create(CreateRequest {
                no_put: has(pb::watch_create_request::FilterType::Noput),
                no_delete: has(pb::watch_create_request::FilterType::Nodelete),
                key: c.key,
                range_end: c.range_end,
                start_revision: c.start_revision,
                progress_notify: c.progress_notify,
                prev_kv: c.prev_kv,
                watch_id: c.watch_id,
                fragment: c.fragment,
            })
        }
        U::CancelRequest(c) => watch::Request::Cancel(c.watch_id),
        U::ProgressRequest(_) => watch::Request::Progress,
    })
}

fn response_to_pb(node: &CoordNode, r: watch::Response) -> pb::WatchResponse {
    pb::WatchResponse {
        header: Some(super::etcd::header(node, r.revision)),
        watch_id: r.watch_id,
        created: r.created,
        canceled: r.canceled,
        compact_revision: r.compact_revision,
        cancel_reason: r.cancel_reason,
        fragment: r.fragment,
        events: r
            .events
            .into_iter()
            .map(|e| mvccpb::Event {
                r#type: match e.kind {
                    EventKind::Put => mvccpb::event::EventType::Put as i32,
                    EventKind::Delete => mvccpb::event::EventType::Delete as i32,
                },
                kv: Some(kv_to_pb(e.kv)),
                prev_kv: e.prev.map(kv_to_pb),
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl pb::watch_server::Watch for WatchService {
    type WatchStream = BoxStream<pb::WatchResponse>;

    #[instrument(level = "debug", skip_all, fields(node = self.node.id))]
    async fn watch(&self, req: Request<Streaming<pb::WatchRequest>>) -> Result<Response<Self::WatchStream>, Status> {
        let slot = self.node.streams.acquire(StreamKind::Watch, authz::caller(&req))?;
        let require_leader = req.metadata().get(REQUIRE_LEADER).is_some_and(|v| v.as_bytes() == b"true");
        let mut inbound = req.into_inner();
        let (req_tx, req_rx) = tokio::sync::mpsc::channel(OUT_QUEUE);
        let (out_tx, mut out_rx) = tokio::sync::mpsc::channel(OUT_QUEUE);
        let (status_tx, status_rx) = tokio::sync::mpsc::channel::<Result<pb::WatchResponse, Status>>(OUT_QUEUE);
        // Requests in: a message that is not a request ends the stream with an error, as
        // does a broken inbound stream (the client is gone).
        let err_tx = status_tx.clone();
        tokio::spawn(async move {
            while let Some(m) = inbound.next().await {
                let r = match m {
                    Ok(m) => request_from_pb(m),
                    Err(s) => {
                        let _ = err_tx.send(Err(s)).await;
                        return;
                    }
                };
                let Some(r) = r else {
                    let _ = err_tx.send(Err(Status::invalid_argument("a watch request must set one request"))).await;
                    return;
                };
                if req_tx.send(r).await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(watch::serve_stream(self.node.clone(), req_rx, out_tx));
        // Answers out, encoded; the quota slot lives as long as the stream. When the
        // client goes away the response stream is dropped: this task ends at once, which
        // closes the engine's output and ends it too, even on a watch that sees nothing.
        let node = self.node.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut check = tokio::time::interval(LEADER_CHECK);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut leaderless = 0u32;
            loop {
                tokio::select! {
                    _ = check.tick(), if require_leader => {
                        leaderless = if node.has_live_leader() { 0 } else { leaderless + 1 };
                        if leaderless >= 2 {
                            let _ = status_tx.send(Err(Status::unavailable(NO_LEADER))).await;
                            return;
                        }
                    }
                    r = out_rx.recv() => match r {
                        Some(r) => {
                            if status_tx.send(Ok(response_to_pb(&node, r))).await.is_err() {
                                return;
                            }
                        }
                        None => return,
                    },
                    _ = status_tx.closed() => return,
                }
            }
        });
        Ok(Response::new(channel_stream(status_rx)))
    }
}
