//! etcd leases, locks and elections as the CLI and the test suites use them.

use proto::etcdserverpb as epb;
use proto::etcdserverpb::lease_client::LeaseClient;
use proto::v3electionpb as vpb;
use proto::v3electionpb::election_client::ElectionClient;
use proto::v3lockpb as lpb;
use proto::v3lockpb::lock_client::LockClient;

use crate::conn::Client;
use crate::error::ClientError;

/// What TimeToLive answered; `ttl` is -1 for a lease that does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    pub id: i64,
    pub ttl: i64,
    pub granted_ttl: i64,
    pub keys: Vec<Vec<u8>>,
}

impl Client {
    /// Grants a lease of `ttl` seconds (raised to the cluster's minimum) under `id` (0:
    /// the cluster picks). Returns (id, TTL granted).
    pub async fn lease_grant(&self, ttl: i64, id: i64) -> Result<(i64, i64), ClientError> {
        let req = epb::LeaseGrantRequest { ttl, id };
        let r = self.call(|ch| async move { LeaseClient::new(ch).lease_grant(req).await }).await?.into_inner();
        Ok((r.id, r.ttl))
    }

    /// Revokes lease `id`, deleting its keys.
    pub async fn lease_revoke(&self, id: i64) -> Result<(), ClientError> {
        let req = epb::LeaseRevokeRequest { id };
        self.call(|ch| async move { LeaseClient::new(ch).lease_revoke(req).await }).await?;
        Ok(())
    }

    /// One KeepAlive: the lease's TTL in seconds, or 0 if it no longer exists.
    pub async fn lease_keep_alive_once(&self, id: i64) -> Result<i64, ClientError> {
        self.call(|ch| async move {
            let once = futures::stream::iter([epb::LeaseKeepAliveRequest { id }]);
            let mut s = LeaseClient::new(ch).lease_keep_alive(once).await?.into_inner();
            match s.message().await? {
                Some(r) => Ok(r.ttl),
                None => Err(tonic::Status::unavailable("the keepalive stream ended without an answer")),
            }
        })
        .await
    }

    pub async fn lease_time_to_live(&self, id: i64, keys: bool) -> Result<LeaseInfo, ClientError> {
        let req = epb::LeaseTimeToLiveRequest { id, keys };
        let r = self.call(|ch| async move { LeaseClient::new(ch).lease_time_to_live(req).await }).await?.into_inner();
        Ok(LeaseInfo { id: r.id, ttl: r.ttl, granted_ttl: r.granted_ttl, keys: r.keys })
    }

    /// The ids of every lease.
    pub async fn leases(&self) -> Result<Vec<i64>, ClientError> {
        let r = self
            .call(|ch| async move { LeaseClient::new(ch).lease_leases(epb::LeaseLeasesRequest {}).await })
            .await?
            .into_inner();
        Ok(r.leases.into_iter().map(|l| l.id).collect())
    }

    /// Waits until this caller holds lock `name` under `lease`; returns the lock's key
    /// and the store revision at which the master found it held.
    pub async fn lock(&self, name: &[u8], lease: i64) -> Result<(Vec<u8>, i64), ClientError> {
        let req = lpb::LockRequest { name: name.to_vec(), lease };
        self.call(|ch| {
            let req = req.clone();
            async move { LockClient::new(ch).lock(req).await }
        })
        .await
        .map(|r| {
            let r = r.into_inner();
            (r.key, r.header.map_or(0, |h| h.revision))
        })
    }

    pub async fn unlock(&self, key: &[u8]) -> Result<(), ClientError> {
        let req = lpb::UnlockRequest { key: key.to_vec() };
        self.call(|ch| {
            let req = req.clone();
            async move { LockClient::new(ch).unlock(req).await }
        })
        .await
        .map(|_| ())
    }

    /// Waits until this caller leads election `name` under `lease`, proclaiming `value`.
    /// Returns the leader key and the store revision at which the master found it
    /// leading.
    pub async fn campaign(&self, name: &[u8], lease: i64, value: &[u8]) -> Result<(vpb::LeaderKey, i64), ClientError> {
        let req = vpb::CampaignRequest { name: name.to_vec(), lease, value: value.to_vec() };
        let r = self
            .call(|ch| {
                let req = req.clone();
                async move { ElectionClient::new(ch).campaign(req).await }
            })
            .await?
            .into_inner();
        let revision = r.header.map_or(0, |h| h.revision);
        let leader = r
            .leader
            .ok_or_else(|| ClientError::from(tonic::Status::internal("campaign answered without a leader key")))?;
        Ok((leader, revision))
    }

    /// A new value for the election `leader` leads, while it still leads; returns the
    /// store revision of the write.
    pub async fn proclaim(&self, leader: vpb::LeaderKey, value: &[u8]) -> Result<i64, ClientError> {
        let req = vpb::ProclaimRequest { leader: Some(leader), value: value.to_vec() };
        self.call(|ch| {
            let req = req.clone();
            async move { ElectionClient::new(ch).proclaim(req).await }
        })
        .await
        .map(|r| r.into_inner().header.map_or(0, |h| h.revision))
    }

    pub async fn resign(&self, leader: vpb::LeaderKey) -> Result<(), ClientError> {
        let req = vpb::ResignRequest { leader: Some(leader) };
        self.call(|ch| {
            let req = req.clone();
            async move { ElectionClient::new(ch).resign(req).await }
        })
        .await
        .map(|_| ())
    }

    /// A stream of the leader's key and value of election `name`, each time it changes.
    pub async fn observe(&self, name: &[u8]) -> Result<tonic::Streaming<vpb::LeaderResponse>, ClientError> {
        let req = vpb::LeaderRequest { name: name.to_vec() };
        // A stream outlives any request deadline: its own channel, without one.
        let settings = crate::conn::Settings { request_timeout: None, ..self.settings().clone() };
        let mut last = None;
        for addr in self.endpoints() {
            let ch = crate::conn::channel_with(addr, self.tls(), &settings)?;
            match ElectionClient::new(ch).observe(req.clone()).await {
                Ok(s) => return Ok(s.into_inner()),
                Err(e) => last = Some(ClientError::unavailable_at(addr, e)),
            }
        }
        Err(last.unwrap_or(ClientError::NoEndpoints))
    }
}
