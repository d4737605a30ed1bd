//! Task logs relayed through the masters. Agents serve nothing, so each keeps one
//! `AgentLogs` channel open to a master; a `TaskLogs` caller reaches the master holding
//! the task's agent, directly or through the master it called (which asks its peers).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use proto::clusterpb as pb;
use tokio::sync::mpsc;
use tonic::Status;

use crate::types::NodeId;

/// A chunk stream to a `TaskLogs` caller.
type ChunkTx = mpsc::Sender<Result<pb::TaskLogChunk, Status>>;

/// The agents' channels held by this master and the asks in flight on them.
#[derive(Default)]
pub(crate) struct LogRelay {
    agents: Mutex<BTreeMap<NodeId, (u64, mpsc::Sender<pb::AgentLogAsk>)>>,
    /// Request → (its agent, the agent's channel registration, its caller).
    pending: Mutex<BTreeMap<u64, (NodeId, u64, ChunkTx)>>,
    next: AtomicU64,
}

impl LogRelay {
    /// Registers agent `node`'s channel; returns the registration's id (a newer channel
    /// of the same agent replaces an older one).
    pub(crate) fn attach(&self, node: NodeId, tx: mpsc::Sender<pb::AgentLogAsk>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.agents.lock().expect("relay").insert(node, (id, tx));
        id
    }

    pub(crate) fn detach(&self, node: NodeId, id: u64) {
        let mut m = self.agents.lock().expect("relay");
        if m.get(&node).is_some_and(|(i, _)| *i == id) {
            m.remove(&node);
        }
    }

    /// Routes an agent's reply to the caller waiting for it. A caller that reads too
    /// slowly (its queue is full) or went away is cut off, and the agent told to stop:
    /// one slow reader must not hold up the agent's other logs.
    pub(crate) fn deliver(&self, node: NodeId, r: pb::AgentLogReply) {
        let tx = self
            .pending
            .lock()
            .expect("relay")
            .get(&r.request)
            .filter(|(n, _, _)| *n == node)
            .map(|(_, _, tx)| tx.clone());
        let Some(tx) = tx else { return };
        let item = if !r.error.is_empty() {
            Some(Err(Status::not_found(r.error)))
        } else if !r.data.is_empty() {
            Some(Ok(pb::TaskLogChunk { data: r.data }))
        } else {
            None
        };
        let sent = item.is_none_or(|i| tx.try_send(i).is_ok());
        if r.end {
            self.pending.lock().expect("relay").remove(&r.request);
        } else if !sent {
            self.forget(r.request);
        }
    }

    /// Drops a request still in flight and tells its agent to stop.
    fn forget(&self, request: u64) {
        let Some((node, reg, _)) = self.pending.lock().expect("relay").remove(&request) else { return };
        let agent = self.agents.lock().expect("relay").get(&node).filter(|(r, _)| *r == reg).map(|(_, tx)| tx.clone());
        if let Some(tx) = agent {
            let _ = tx.try_send(pb::AgentLogAsk { request, cancel: true, ..Default::default() });
        }
    }

    /// Asks agent `node` for a log, if its channel is held here. The stream ends the
    /// request when it is dropped (the caller went away).
    pub(crate) async fn ask(self: &Arc<Self>, node: NodeId, r: &pb::TaskLogsRequest) -> Option<LogStream> {
        let (reg, agent) = self.agents.lock().expect("relay").get(&node).cloned()?;
        let request = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(64);
        self.pending.lock().expect("relay").insert(request, (node, reg, tx));
        let stream = LogStream { rx, relay: self.clone(), request };
        // The channel may have closed (and its asks failed) since it was looked up.
        let current = self.agents.lock().expect("relay").get(&node).is_some_and(|(r, _)| *r == reg);
        let ask = pb::AgentLogAsk {
            request,
            task_id: r.task_id.clone(),
            follow: r.follow,
            stderr: r.stderr,
            tail_bytes: r.tail_bytes,
            cancel: false,
        };
        if !current || agent.send(ask).await.is_err() {
            return None;
        }
        Some(stream)
    }

    /// Ends the asks in flight on agent `node`'s channel `reg`, which closed.
    pub(crate) fn fail_channel(&self, node: NodeId, reg: u64, why: &str) {
        let mut p = self.pending.lock().expect("relay");
        let gone: Vec<u64> = p.iter().filter(|(_, (n, g, _))| *n == node && *g == reg).map(|(r, _)| *r).collect();
        for r in gone {
            if let Some((_, _, tx)) = p.remove(&r) {
                let _ = tx.try_send(Err(Status::unavailable(why.to_string())));
            }
        }
    }
}

/// The chunks of one `TaskLogs` request; dropping it ends the request.
pub(crate) struct LogStream {
    rx: mpsc::Receiver<Result<pb::TaskLogChunk, Status>>,
    relay: Arc<LogRelay>,
    request: u64,
}

impl futures::Stream for LogStream {
    type Item = Result<pb::TaskLogChunk, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for LogStream {
    fn drop(&mut self) {
        self.relay.forget(self.request);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn reply(node: NodeId, request: u64, data: &[u8]) -> pb::AgentLogReply {
        pb::AgentLogReply { node_id: node, request, data: data.to_vec(), ..Default::default() }
    }

    #[tokio::test]
    async fn callers_that_leave_or_lag_end_their_request_and_only_the_asked_agent_answers() {
        let relay = Arc::new(LogRelay::default());
        let (tx, mut asks) = mpsc::channel(64);
        let reg = relay.attach(5, tx);
        let req = pb::TaskLogsRequest { task_id: "web.1".into(), follow: true, ..Default::default() };
        let mut s = relay.ask(5, &req).await.unwrap();
        let a = asks.recv().await.unwrap();
        assert_eq!((a.task_id.as_str(), a.follow), ("web.1", true));
        // Another agent's reply to it is ignored; its own arrives.
        relay.deliver(6, reply(6, a.request, b"not yours"));
        relay.deliver(5, reply(5, a.request, b"hello"));
        assert_eq!(s.next().await.unwrap().unwrap().data, b"hello");
        // The caller goes away: the request is forgotten and the agent told.
        drop(s);
        let c = asks.recv().await.unwrap();
        assert!(c.cancel && c.request == a.request, "{c:?}");
        assert!(relay.pending.lock().unwrap().is_empty());
        // A caller that does not read is cut off once its queue is full.
        let s = relay.ask(5, &req).await.unwrap();
        let a = asks.recv().await.unwrap();
        for _ in 0..65 {
            relay.deliver(5, reply(5, a.request, b"x"));
        }
        let c = asks.recv().await.unwrap();
        assert!(c.cancel && c.request == a.request, "{c:?}");
        assert!(relay.pending.lock().unwrap().is_empty());
        drop(s);
        // A channel that closes fails what is in flight on it, and is asked no more.
        let mut s = relay.ask(5, &req).await.unwrap();
        relay.detach(5, reg);
        relay.fail_channel(5, reg, "gone");
        assert!(s.next().await.unwrap().is_err());
        assert!(relay.ask(5, &req).await.is_none());
    }
}
