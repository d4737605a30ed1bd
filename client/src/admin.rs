//! The cluster admin service: status, members, leave and join tokens.

use futures::stream::BoxStream;
use futures::StreamExt;
use proto::clusterpb as pb;
use proto::clusterpb::cluster_admin_client::ClusterAdminClient;
use tonic::transport::Channel;

use crate::conn::Client;
use crate::error::ClientError;
use crate::types::Role;

/// The pieces of a snapshot file as they arrive; an error ends the stream.
pub type SnapshotStream = BoxStream<'static, Result<Vec<u8>, ClientError>>;

impl Client {
    fn admin(&self, ch: Channel) -> ClusterAdminClient<Channel> {
        ClusterAdminClient::new(ch).max_decoding_message_size(self.settings().max_response_bytes)
    }

    /// The status as the first master that answers sees it.
    pub async fn status(&self) -> Result<pb::StatusResponse, ClientError> {
        self.call(|ch| async move { self.admin(ch).status(pb::StatusRequest {}).await }).await.map(|r| r.into_inner())
    }

    /// The leader's status when the answering master names a leader (only the leader
    /// knows each member's replication lag and the agents' sessions); otherwise the
    /// answer as is. Fails if the named leader does not answer.
    pub async fn leader_status(&self) -> Result<pb::StatusResponse, ClientError> {
        let s = self.status().await?;
        if s.from_leader || s.leader_addr.is_empty() {
            return Ok(s);
        }
        self.at(&s.leader_addr).status().await
    }

    /// [`Client::leader_status`], but a leader that does not answer gives the first
    /// answer instead of an error.
    pub async fn status_prefer_leader(&self) -> Result<pb::StatusResponse, ClientError> {
        let s = self.status().await?;
        if s.from_leader || s.leader_addr.is_empty() {
            return Ok(s);
        }
        Ok(self.at(&s.leader_addr).status().await.unwrap_or(s))
    }

    /// The Raft members (masters), their roles and replication lag.
    pub async fn members(&self) -> Result<pb::MembersResponse, ClientError> {
        self.call(|ch| async move { self.admin(ch).members(pb::MembersRequest {}).await }).await.map(|r| r.into_inner())
    }

    /// Removes master `node_id` from the Raft group; without one, the master at the first
    /// endpoint. Returns the id removed.
    pub async fn leave(&self, node_id: Option<u64>) -> Result<u64, ClientError> {
        let id = match node_id {
            Some(id) => id,
            None => {
                let first = self.endpoints().first().ok_or(ClientError::NoEndpoints)?;
                self.at(first).status().await?.node_id
            }
        };
        self.call(|ch| async move { self.admin(ch).leave(pb::LeaveRequest { node_id: id }).await }).await?;
        Ok(id)
    }

    /// The join token for `role`.
    pub async fn token(&self, role: Role) -> Result<String, ClientError> {
        let req = pb::TokenRequest { role: role.as_str().into() };
        self.call(|ch| {
            let req = req.clone();
            async move { self.admin(ch).token(req).await }
        })
        .await
        .map(|r| r.into_inner().token)
    }

    /// A bearer token for the HTTP face, `role` "admin" or "reader"; returned only here.
    pub async fn issue_http_token(&self, role: &str, name: &str) -> Result<pb::IssueHttpTokenResponse, ClientError> {
        let req = pb::IssueHttpTokenRequest { role: role.into(), name: name.into() };
        self.call(|ch| {
            let req = req.clone();
            async move { self.admin(ch).issue_http_token(req).await }
        })
        .await
        .map(|r| r.into_inner())
    }

    pub async fn revoke_http_token(&self, id: &str) -> Result<(), ClientError> {
        let req = pb::RevokeHttpTokenRequest { id: id.into() };
        self.call(|ch| {
            let req = req.clone();
            async move { self.admin(ch).revoke_http_token(req).await }
        })
        .await
        .map(|_| ())
    }

    pub async fn list_http_tokens(&self) -> Result<Vec<pb::HttpTokenInfo>, ClientError> {
        self.call(|ch| async move { self.admin(ch).list_http_tokens(pb::ListHttpTokensRequest {}).await })
            .await
            .map(|r| r.into_inner().tokens)
    }

    /// Replaces the join secret for `role`; returns the new token. The old one is refused
    /// from then on.
    pub async fn rotate_token(&self, role: Role) -> Result<String, ClientError> {
        let req = pb::TokenRequest { role: role.as_str().into() };
        self.call(|ch| {
            let req = req.clone();
            async move { self.admin(ch).rotate_token(req).await }
        })
        .await
        .map(|r| r.into_inner().token)
    }

    /// A client certificate (`role` "admin" or "reader") named `name` for the key of
    /// `csr`; `validity_secs` 0 means a year.
    pub async fn issue_cert(
        &self,
        role: &str,
        name: &str,
        csr: Vec<u8>,
        validity_secs: u64,
    ) -> Result<pb::CertResponse, ClientError> {
        let req = pb::IssueCertRequest { role: role.into(), name: name.into(), csr, validity_secs };
        self.call(|ch| {
            let req = req.clone();
            async move { self.admin(ch).issue_cert(req).await }
        })
        .await
        .map(|r| r.into_inner())
    }

    /// One step of a CA rotation: `"start"` or `"finish"`.
    pub async fn rotate_ca(&self, phase: &str) -> Result<pb::RotateCaResponse, ClientError> {
        let req = pb::RotateCaRequest { phase: phase.into(), force: false };
        self.call(|ch| {
            let req = req.clone();
            async move { self.admin(ch).rotate_ca(req).await }
        })
        .await
        .map(|r| r.into_inner())
    }

    /// A consistent snapshot of the state machine, streamed by the leader in pieces of at
    /// most 1 MiB: the bytes of a snapshot file, whose checksum the caller should verify.
    pub async fn save_snapshot(&self) -> Result<SnapshotStream, ClientError> {
        let s = self.call(|ch| async move { self.admin(ch).save_snapshot(pb::SaveSnapshotRequest {}).await }).await?;
        Ok(s.into_inner().map(|r| r.map(|b| b.data).map_err(ClientError::from)).boxed())
    }
}
