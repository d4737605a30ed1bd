//! Certificates after join: node renewals, client certificates for operators, and the
//! two steps of a CA rotation. Every master can sign, because the CA (key included) is
//! in the replicated state; the state decides which CA signs and which are trusted.

use std::time::{Duration, SystemTime};

use pki::cert::{Ca, NodeCert};
use pki::{CertRole, PeerIdentity};

use crate::cluster::CaRecord;
use crate::command::{Command, Output};
use crate::error::{CoordError, Result};
use crate::node::CoordNode;
use crate::types::NodeId;

/// Client certificates from `IssueCert` last a year unless asked otherwise.
pub const CLIENT_CERT_VALIDITY: Duration = Duration::from_secs(365 * 86_400);
/// The longest client certificate `IssueCert` signs.
pub const MAX_CLIENT_CERT_VALIDITY: Duration = Duration::from_secs(5 * 365 * 86_400);

/// A signed certificate with what to present after it and what to trust.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: Vec<u8>,
    /// The signing CA and, during a rotation, the bridge (the new CA cross-signed by the
    /// old), so that peers that trust only the old CA still accept it.
    pub chain: Vec<Vec<u8>>,
    pub trusted: Vec<Vec<u8>>,
    pub record_digest: String,
}

fn signer(record: &CaRecord) -> Result<Ca> {
    Ca::from_der(record.cert.clone(), &record.key)
        .map_err(|e| CoordError::Internal(format!("the recorded CA is unusable: {e}")))
}

fn issued(record: &CaRecord, cert: Vec<u8>) -> Issued {
    Issued {
        cert,
        chain: std::iter::once(record.cert.clone()).chain(record.bridges.iter().cloned()).collect(),
        trusted: record.trusted.clone(),
        record_digest: record.record_digest(),
    }
}

impl CoordNode {
    fn ca_record(&self) -> Result<CaRecord> {
        self.view(|v| v.ca().cloned())
            .ok_or_else(|| CoordError::Unavailable("the cluster CA is not recorded yet; retry in a moment".into()))
    }

    /// Digest of the current CA record (empty before it is recorded).
    pub fn ca_record_digest(&self) -> String {
        self.view(|v| v.ca_digest().to_string())
    }

    /// A new certificate for the node `who` names (same id and role), for the key of
    /// `csr`. Refused for a master that is no longer a member and for a removed agent: a
    /// removed node's certificate runs out and is not renewed.
    pub fn renew_node_cert(&self, who: &PeerIdentity, csr: &[u8]) -> Result<Issued> {
        let Some(node_id) = who.node_id.filter(|_| who.role.is_node()) else {
            return Err(CoordError::PermissionDenied(
                "only a node renews its certificate; clients ask an admin".into(),
            ));
        };
        pki::cert::check_csr(csr).map_err(|e| CoordError::InvalidArgument(e.to_string()))?;
        let (cluster_id, removed, agent_addr) = self.view(|v| {
            let reg = v.registry();
            (
                v.cluster().cluster_id.clone(),
                reg.removed.contains(&node_id),
                reg.nodes.get(&node_id).map(|n| n.addr.clone()),
            )
        });
        if who.cluster_id != cluster_id {
            return Err(CoordError::PermissionDenied("the certificate is for another cluster".into()));
        }
        let host = match who.role {
            CertRole::Manager => {
                let m = self.metrics();
                let member = m.membership_config.membership().get_node(&node_id).map(|n| n.addr.clone());
                Some(member.ok_or_else(|| {
                    CoordError::PermissionDenied(format!("node {node_id} is no longer a master of this cluster"))
                })?)
            }
            _ if removed => {
                return Err(CoordError::PermissionDenied(format!("node {node_id} was removed from the cluster")))
            }
            _ => agent_addr,
        };
        let hosts: Vec<String> = host.map(|h| pki::cert::host_of(&h)).into_iter().collect();
        self.sign_node_cert(&cluster_id, node_id, who.role, &hosts, csr)
    }

    /// A certificate for node `node_id` of `cluster_id` as `role`, naming `hosts` (see
    /// `pki::cert::Ca::sign_node`), for the key of `csr`: signed with the CA this
    /// node's state holds now, valid `cert_validity_secs`. Join and renewal both sign
    /// here.
    pub fn sign_node_cert(
        &self,
        cluster_id: &str,
        node_id: NodeId,
        role: CertRole,
        hosts: &[String],
        csr: &[u8],
    ) -> Result<Issued> {
        let record = self.ca_record()?;
        let spec = NodeCert {
            cluster_id,
            node_id,
            role,
            hosts,
            validity: Duration::from_secs(self.config.cert_validity_secs),
            now: SystemTime::now(),
        };
        let cert = signer(&record)?.sign_node(csr, &spec).map_err(|e| CoordError::InvalidArgument(e.to_string()))?;
        Ok(issued(&record, cert.to_vec()))
    }

    /// A client certificate (`admin` or `reader`) named `name`, for the key of `csr`.
    pub fn issue_client_cert(&self, role: CertRole, name: &str, csr: &[u8], validity: Duration) -> Result<Issued> {
        if role.is_node() {
            return Err(CoordError::InvalidArgument(format!(
                "{role} certificates come from `cluster join`; issue admin or reader"
            )));
        }
        if validity.is_zero() || validity > MAX_CLIENT_CERT_VALIDITY {
            return Err(CoordError::InvalidArgument(format!(
                "validity must be between 1 s and {} days",
                MAX_CLIENT_CERT_VALIDITY.as_secs() / 86_400
            )));
        }
        let record = self.ca_record()?;
        let cluster_id = self.cluster_id();
        let cert = signer(&record)?
            .sign_client(csr, &cluster_id, role, name, validity, SystemTime::now())
            .map_err(|e| CoordError::InvalidArgument(e.to_string()))?;
        Ok(issued(&record, cert.to_vec()))
    }

    /// Replaces the join secret of `role` (on the leader; the caller forwards).
    pub async fn rotate_join_secret(&self, role: &str, secret: String) -> Result<()> {
        match self.write(Command::SetJoinSecret { role: role.to_string(), secret }).await?.output {
            Output::Unit => Ok(()),
            o => Err(CoordError::Internal(format!("unexpected apply output {o:?}"))),
        }
    }

    /// Starts a CA rotation: a new CA signs from now on; the old one stays trusted, and
    /// signs a bridge certificate for the new one, until [`Self::finish_ca_rotation`].
    /// Returns the new record. While a rotation is under way it changes nothing and
    /// returns the current record, so that a second `cluster ca rotate` resumes it.
    pub async fn start_ca_rotation(&self) -> Result<CaRecord> {
        let cur = self.ca_record()?;
        if cur.trusted.len() > 1 {
            return Ok(cur);
        }
        let now = SystemTime::now();
        let old = signer(&cur)?;
        let new = Ca::generate(&self.cluster_id(), now).map_err(|e| CoordError::Internal(e.to_string()))?;
        let bridge = old.cross_sign(&new, now).map_err(|e| CoordError::Internal(e.to_string()))?;
        let record = CaRecord {
            cert: new.cert.to_vec(),
            key: new.key_der(),
            trusted: cur.trusted.iter().cloned().chain(std::iter::once(new.cert.to_vec())).collect(),
            bridges: vec![bridge.to_vec()],
        };
        self.set_ca(&cur, record).await
    }

    /// Ends a rotation: only the current CA stays trusted. Nothing to do when none is
    /// under way.
    pub async fn finish_ca_rotation(&self) -> Result<CaRecord> {
        let cur = self.ca_record()?;
        if cur.trusted.len() <= 1 && cur.bridges.is_empty() {
            return Ok(cur);
        }
        let record =
            CaRecord { cert: cur.cert.clone(), key: cur.key.clone(), trusted: vec![cur.cert.clone()], bridges: vec![] };
        self.set_ca(&cur, record).await
    }

    async fn set_ca(&self, cur: &CaRecord, record: CaRecord) -> Result<CaRecord> {
        let cmd = Command::SetCa { prev_digest: cur.record_digest(), record: record.clone() };
        match self.write(cmd).await?.output {
            Output::Unit => Ok(record),
            o => Err(CoordError::Internal(format!("unexpected apply output {o:?}"))),
        }
    }
}
