//! The cluster's identity as a state-machine area: `InitCluster` records the id and the
//! join secrets once, `AllocNodeId` hands out node ids, `SetCa` records the cluster CA
//! every manager signs node certificates with. Pure: no RocksDB, no clock.

// State-machine code: deterministic on every member (see coord/clippy.toml).
#![deny(clippy::disallowed_types, clippy::disallowed_methods)]

use serde::{Deserialize, Serialize};

use crate::command::ApplyError;
use crate::types::NodeId;

/// The one key this area persists in the state machine, holding the whole [`ClusterMeta`].
pub const KEY: &[u8] = b"m/cluster";

/// Cluster identity, replicated so every master can check join tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMeta {
    pub cluster_id: String,
    pub manager_secret: String,
    pub worker_secret: String,
    /// Next node id to hand out; ids are never reused. Node 1 is the initial node.
    pub next_node_id: u64,
}

impl ClusterMeta {
    /// True once `InitCluster` has been applied.
    pub fn is_initialized(&self) -> bool {
        !self.cluster_id.is_empty()
    }

    /// Applies `InitCluster`. Only the first one counts: a retried or duplicated proposal
    /// (the `init` node re-proposes until it sees the identity committed) is refused.
    pub fn init(&mut self, cluster_id: &str, manager_secret: &str, worker_secret: &str) -> Result<(), ApplyError> {
        if self.is_initialized() {
            return Err(ApplyError::AlreadyInitialized);
        }
        *self = ClusterMeta {
            cluster_id: cluster_id.to_string(),
            manager_secret: manager_secret.to_string(),
            worker_secret: worker_secret.to_string(),
            next_node_id: 2,
        };
        Ok(())
    }

    /// Applies `SetJoinSecret`. Refused before `InitCluster` (there is nothing to
    /// rotate) and for a role that has no token.
    pub fn set_join_secret(&mut self, role: &str, secret: &str) -> Result<(), ApplyError> {
        if !self.is_initialized() {
            return Err(ApplyError::Other("the cluster has no identity yet".into()));
        }
        match role {
            "manager" => self.manager_secret = secret.to_string(),
            "worker" => self.worker_secret = secret.to_string(),
            other => return Err(ApplyError::UnknownTokenRole(other.to_string())),
        }
        Ok(())
    }

    /// Applies `AllocNodeId`: the next id, never one handed out before. Ids start at 2
    /// even before `InitCluster` applied, because node 1 is the `init` node.
    pub fn alloc_node_id(&mut self) -> NodeId {
        let id = self.next_node_id.max(2);
        self.next_node_id = id + 1;
        id
    }

    /// The persisted form (under [`KEY`]).
    pub fn encode(&self) -> Vec<u8> {
        crate::codec::encode(self).expect("cluster meta encodes")
    }

    pub fn decode(b: &[u8]) -> std::io::Result<ClusterMeta> {
        crate::codec::decode(b)
    }
}

/// The key of the masters that left the cluster (a `BTreeSet<NodeId>`): their
/// certificates stay valid until they expire, and are not honored meanwhile.
pub const RETIRED_KEY: &[u8] = b"m/retired";

/// The key of the cluster CA's record ([`CaRecord`]).
pub const CA_KEY: &[u8] = b"m/ca";

/// The cluster CA, replicated so that whichever manager leads can sign node
/// certificates. It travels in snapshots (and so in `snapshot save` files).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRecord {
    /// The CA that signs new certificates: DER certificate and PKCS#8 key.
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    /// Every CA certificate nodes trust, DER: the signing one, and during a rotation
    /// also the one it replaces.
    pub trusted: Vec<Vec<u8>>,
    /// Presented after a node's own certificate: during a rotation, the new CA
    /// cross-signed by the old one, so nodes that trust only the old CA still accept it.
    pub bridges: Vec<Vec<u8>>,
}

impl CaRecord {
    /// SHA-256 of the signing certificate, hex: what join tokens pin.
    pub fn digest(&self) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&self.cert))
    }

    /// SHA-256 of the whole encoded record, hex: what `SetCa` compares, so that a change
    /// of the trusted roots or bridges alone is told apart too.
    pub fn record_digest(&self) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(crate::codec::encode(self).expect("CA record encodes")))
    }

    /// Applies `SetCa`: replaces the record if the current one's [`CaRecord::record_digest`]
    /// is `prev_digest` (empty: there is none yet), so a stale or repeated proposal
    /// changes nothing.
    pub fn set(current: &mut Option<CaRecord>, prev_digest: &str, new: &CaRecord) -> Result<(), ApplyError> {
        let now = current.as_ref().map(CaRecord::record_digest).unwrap_or_default();
        if now != prev_digest {
            return Err(ApplyError::CaChanged);
        }
        *current = Some(new.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_applies_once_and_ids_are_never_reused() {
        let mut c = ClusterMeta::default();
        // An id allocated before the identity still skips the init node's id 1.
        assert_eq!(c.alloc_node_id(), 2);
        c = ClusterMeta::default();
        c.init("c1", "m", "w").unwrap();
        assert_eq!(c.init("c2", "m2", "w2"), Err(ApplyError::AlreadyInitialized));
        assert_eq!(c.cluster_id, "c1");
        assert_eq!((c.alloc_node_id(), c.alloc_node_id()), (2, 3));
        let back = ClusterMeta::decode(&c.encode()).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.clone().alloc_node_id(), 4);
    }

    #[test]
    fn ca_is_replaced_only_over_the_expected_one() {
        let a = CaRecord { cert: b"a".to_vec(), key: b"ka".to_vec(), trusted: vec![b"a".to_vec()], bridges: vec![] };
        let b = CaRecord { cert: b"b".to_vec(), ..a.clone() };
        let mut cur = None;
        assert_eq!(CaRecord::set(&mut cur, &b.record_digest(), &a), Err(ApplyError::CaChanged));
        CaRecord::set(&mut cur, "", &a).unwrap();
        // A repeated init proposal is refused and changes nothing.
        assert_eq!(CaRecord::set(&mut cur, "", &b), Err(ApplyError::CaChanged));
        // The signing certificate alone does not identify the record: a stale proposal
        // naming the same certificate with other trusted roots is refused.
        let a2 = CaRecord { trusted: vec![], ..a.clone() };
        assert_eq!(CaRecord::set(&mut cur, &a2.record_digest(), &b), Err(ApplyError::CaChanged));
        CaRecord::set(&mut cur, &a.record_digest(), &b).unwrap();
        assert_eq!(cur, Some(b));
    }
}

/// The key of the HTTP bearer tokens (a `BTreeMap<String, HttpToken>` by id).
pub const HTTP_TOKENS_KEY: &[u8] = b"m/http_tokens";
/// Tokens kept at most (issued and not revoked).
pub const MAX_HTTP_TOKENS: usize = 1_000;

/// A bearer token for the HTTP face (`cluster token issue-http`). Only its hash is in the
/// log: the secret is drawn by the master that serves the request and shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpToken {
    /// Public part of the token, `[0-9a-f]{16}`; names it for listing and revoking.
    pub id: String,
    /// SHA-256 of the whole token, hex.
    pub hash: String,
    /// "admin" or "reader".
    pub role: String,
    /// Who or what it is for, free text.
    pub name: String,
    pub created_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HttpTokenCommand {
    Issue(HttpToken),
    Revoke { id: String },
}

/// Applies an [`HttpTokenCommand`]; an issued token takes the entry's time.
pub fn apply_http_token(
    tokens: &mut std::collections::BTreeMap<String, HttpToken>,
    now_ms: u64,
    cmd: &HttpTokenCommand,
) -> Result<(), ApplyError> {
    match cmd {
        HttpTokenCommand::Issue(t) => {
            let hex16 = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
            if !hex16(&t.id, 16) || !hex16(&t.hash, 64) {
                return Err(ApplyError::Other("a token needs a 16-hex-digit id and a SHA-256 hash".into()));
            }
            if t.role != "admin" && t.role != "reader" {
                return Err(ApplyError::Other(format!("token role {:?}: use admin or reader", t.role)));
            }
            if t.name.len() > 256 {
                return Err(ApplyError::Other("a token's name is at most 256 bytes".into()));
            }
            if tokens.contains_key(&t.id) {
                return Err(ApplyError::Other(format!("token {} exists already", t.id)));
            }
            if tokens.len() >= MAX_HTTP_TOKENS {
                return Err(ApplyError::Other(format!("at most {MAX_HTTP_TOKENS} tokens: revoke unused ones first")));
            }
            tokens.insert(t.id.clone(), HttpToken { created_ms: now_ms, ..t.clone() });
            Ok(())
        }
        HttpTokenCommand::Revoke { id } => match tokens.remove(id) {
            Some(_) => Ok(()),
            None => Err(ApplyError::Other(format!("token {id:?} not found"))),
        },
    }
}
