//! The IPAM service: overlay networks, and addresses allocated to owners.

use proto::clusterpb as pb;
use proto::clusterpb::ipam_client::IpamClient;
use tonic::transport::Channel;

use crate::conn::Client;
use crate::error::ClientError;

/// A network to create.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkSpec {
    pub name: String,
    /// CIDRs: one IPv4 and/or one IPv6 subnet.
    pub subnets: Vec<String>,
    /// Reserved gateway; `None` is the first host address of each subnet.
    pub gateway: Option<String>,
    /// Inclusive `FROM-TO` ranges kept out of allocation.
    pub reserve: Vec<String>,
    /// How long a released address waits before reuse; `None` is the server's default.
    pub quarantine_ms: Option<u64>,
}

impl Client {
    fn ipam(&self, ch: Channel) -> IpamClient<Channel> {
        IpamClient::new(ch).max_decoding_message_size(self.settings().max_response_bytes)
    }

    pub async fn create_network(&self, spec: NetworkSpec) -> Result<pb::NetworkInfo, ClientError> {
        let req = pb::CreateNetworkRequest {
            name: spec.name,
            subnets: spec.subnets,
            gateway: spec.gateway.unwrap_or_default(),
            reserve: spec.reserve,
            quarantine_ms: spec.quarantine_ms,
        };
        self.call(|ch| {
            let req = req.clone();
            async move { self.ipam(ch).create_network(req).await }
        })
        .await
        .map(|r| r.into_inner())
    }

    pub async fn networks(&self) -> Result<Vec<pb::NetworkInfo>, ClientError> {
        self.call(|ch| async move { self.ipam(ch).list_networks(pb::ListNetworksRequest {}).await })
            .await
            .map(|r| r.into_inner().networks)
    }

    /// A network's usage and up to `limit` of its allocations.
    pub async fn inspect_network(&self, name: &str, limit: u32) -> Result<pb::InspectNetworkResponse, ClientError> {
        let req = pb::InspectNetworkRequest { name: name.to_string(), limit };
        self.call(|ch| {
            let req = req.clone();
            async move { self.ipam(ch).inspect_network(req).await }
        })
        .await
        .map(|r| r.into_inner())
    }

    /// Removes a network; `force` also releases what is allocated. Returns how many
    /// addresses that released.
    pub async fn remove_network(&self, name: &str, force: bool) -> Result<u64, ClientError> {
        let req = pb::RemoveNetworkRequest { name: name.to_string(), force };
        self.call(|ch| {
            let req = req.clone();
            async move { self.ipam(ch).remove_network(req).await }
        })
        .await
        .map(|r| r.into_inner().released)
    }

    /// Leaks and conflicts the leader's repair sees.
    pub async fn check(&self) -> Result<pb::CheckResponse, ClientError> {
        self.call(|ch| async move { self.ipam(ch).check(pb::CheckRequest {}).await }).await.map(|r| r.into_inner())
    }

    /// An address for `owner` (the same one if it has one): `address` asks for a specific
    /// one; `node` binds it to an agent, so that removing the agent releases it.
    pub async fn allocate(
        &self,
        network: &str,
        owner: &str,
        address: Option<&str>,
        node: Option<u64>,
    ) -> Result<pb::AllocateResponse, ClientError> {
        let req = pb::AllocateRequest {
            network: network.to_string(),
            owner: owner.to_string(),
            address: address.unwrap_or_default().to_string(),
            node_id: node.unwrap_or(0),
        };
        self.call(|ch| {
            let req = req.clone();
            async move { self.ipam(ch).allocate(req).await }
        })
        .await
        .map(|r| r.into_inner())
    }

    /// Addresses for many owners in one log entry, all or none; in the owners' order.
    pub async fn allocate_batch(
        &self,
        network: &str,
        owners: Vec<String>,
        node: Option<u64>,
    ) -> Result<Vec<String>, ClientError> {
        let req = pb::AllocateBatchRequest { network: network.to_string(), owners, node_id: node.unwrap_or(0) };
        self.call(|ch| {
            let req = req.clone();
            async move { self.ipam(ch).allocate_batch(req).await }
        })
        .await
        .map(|r| r.into_inner().addresses)
    }

    /// Releases `owner`'s address or `address` (give at least one). Returns the address
    /// released, or `None` if there was nothing to release.
    pub async fn release(
        &self,
        network: &str,
        owner: Option<&str>,
        address: Option<&str>,
    ) -> Result<Option<String>, ClientError> {
        let req = pb::ReleaseRequest {
            network: network.to_string(),
            owner: owner.unwrap_or_default().to_string(),
            address: address.unwrap_or_default().to_string(),
        };
        let r = self
            .call(|ch| {
                let req = req.clone();
                async move { self.ipam(ch).release(req).await }
            })
            .await?
            .into_inner();
        Ok(Some(r.address).filter(|a| !a.is_empty()))
    }
}
