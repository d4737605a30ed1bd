//! Task logs relayed through the masters. Agents serve nothing, so each keeps one
//! `AgentLogs` channel open to a master; a `TaskLogs` caller reaches the master holding
//! the task's agent, directly or through the master it called (which asks its peers).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

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

    /// Routes an agent's reply to the caller waiting for it; a caller that went away
    /// gets the agent told to stop.
    pub(crate) async fn deliver(&self, node: NodeId, r: pb::AgentLogReply) {
        let tx = self
            .pending
            .lock()
            .expect("relay")
            .get(&r.request)
            .filter(|(n, _, _)| *n == node)
            .map(|(_, _, tx)| tx.clone());
        let Some(tx) = tx else { return };
        let sent = if !r.error.is_empty() {
            tx.send(Err(Status::not_found(r.error))).await.is_ok()
        } else if !r.data.is_empty() {
            tx.send(Ok(pb::TaskLogChunk { data: r.data })).await.is_ok()
        } else {
            true
        };
        if r.end || !sent {
            self.pending.lock().expect("relay").remove(&r.request);
        }
        if !sent && !r.end {
            self.cancel(node, r.request).await;
        }
    }

    async fn cancel(&self, node: NodeId, request: u64) {
        let agent = self.agents.lock().expect("relay").get(&node).map(|(_, tx)| tx.clone());
        if let Some(tx) = agent {
            let _ = tx.send(pb::AgentLogAsk { request, cancel: true, ..Default::default() }).await;
        }
    }

    /// Asks agent `node` for a log, if its channel is held here; the chunks arrive on
    /// the returned receiver.
    pub(crate) async fn ask(
        &self,
        node: NodeId,
        r: &pb::TaskLogsRequest,
    ) -> Option<mpsc::Receiver<Result<pb::TaskLogChunk, Status>>> {
        let (reg, agent) = self.agents.lock().expect("relay").get(&node).cloned()?;
        let request = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(16);
        self.pending.lock().expect("relay").insert(request, (node, reg, tx));
        let ask = pb::AgentLogAsk {
            request,
            task_id: r.task_id.clone(),
            follow: r.follow,
            stderr: r.stderr,
            tail_bytes: r.tail_bytes,
            cancel: false,
        };
        if agent.send(ask).await.is_err() {
            self.pending.lock().expect("relay").remove(&request);
            return None;
        }
        Some(rx)
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
