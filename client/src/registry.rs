//! The registry service: nodes, drain and activate, removal, and the event log.

use futures::stream::BoxStream;
use futures::StreamExt;
use proto::clusterpb as pb;
use proto::clusterpb::registry_client::RegistryClient;
use tonic::transport::Channel;

use crate::conn::Client;
use crate::error::ClientError;
use crate::types::Availability;

/// Registry events as they arrive; an error ends the stream's useful part.
pub type EventStream = BoxStream<'static, Result<pb::RegistryEvent, ClientError>>;

impl Client {
    fn registry(&self, ch: Channel) -> RegistryClient<Channel> {
        RegistryClient::new(ch).max_decoding_message_size(self.settings().max_response_bytes)
    }

    async fn nodes_request(&self, node_id: u64) -> Result<pb::NodesResponse, ClientError> {
        self.call(|ch| async move { self.registry(ch).nodes(pb::NodesRequest { node_id }).await })
            .await
            .map(|r| r.into_inner())
    }

    /// Every master and agent (masters without an agent included), with heartbeat ages
    /// and sessions when the leader answered.
    pub async fn nodes(&self) -> Result<pb::NodesResponse, ClientError> {
        self.nodes_request(0).await
    }

    /// One node. An id neither a master nor a registered agent is a `NotFound` error;
    /// `None` is an answer that names no node.
    pub async fn node(&self, node_id: u64) -> Result<Option<pb::NodeInfo>, ClientError> {
        Ok(self.nodes_request(node_id).await?.nodes.into_iter().next())
    }

    /// Drains a node (no new work) or makes it active again; returns the node after.
    pub async fn set_availability(&self, node_id: u64, a: Availability) -> Result<pb::NodeInfo, ClientError> {
        let req = pb::SetAvailabilityRequest { node_id, availability: a.as_str().into() };
        self.call(|ch| {
            let req = req.clone();
            async move { self.registry(ch).set_availability(req).await }
        })
        .await
        .map(|r| r.into_inner())
    }

    /// Removes an agent from the registry for good; `force` also removes an active one.
    pub async fn remove_node(&self, node_id: u64, force: bool) -> Result<(), ClientError> {
        self.call(|ch| async move { self.registry(ch).remove_node(pb::RemoveNodeRequest { node_id, force }).await })
            .await
            .map(|_| ())
    }

    /// Registry events from index `from` (0: the current nodes first, as `initial`
    /// events); with `follow` the stream goes on with new events as they commit.
    pub async fn events(&self, from: u64, follow: bool) -> Result<EventStream, ClientError> {
        let req = pb::WatchRegistryRequest { start_index: from, follow };
        let s = self.call(|ch| async move { self.registry(ch).watch(req).await }).await?.into_inner();
        Ok(s.map(|e| e.map_err(ClientError::from)).boxed())
    }

    /// Every retained event from index `from` up to now; fails if the stream breaks.
    pub async fn events_until_now(&self, from: u64) -> Result<Vec<pb::RegistryEvent>, ClientError> {
        let mut s = self.events(from, false).await?;
        let mut out = Vec::new();
        while let Some(e) = s.next().await {
            out.push(e?);
        }
        Ok(out)
    }
}
