//! Who may call what: one table from gRPC method to the callers it admits, applied by
//! [`AuthzLayer`] to every request before any service sees it, plus the few checks that
//! need the request or the state ([`acts_as`], the Raft sender check in
//! `raft_service`, `Removed` only from another member).
//!
//! The caller is the identity in its TLS client certificate ([`pki::PeerInfo`]), which
//! the handshake verified against the cluster CA. Authorization happens on the first
//! hop: a follower that forwards a request to the leader has already checked the real
//! caller, and the leader sees the follower's manager certificate. Managers are trusted
//! with everything (they hold the CA key in their replicated state), so that hop needs
//! no claim about who called first.

use std::sync::Arc;
use std::task::{Context, Poll};

use pki::{CertRole, PeerIdentity, PeerInfo};
use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tonic::Status;
use tower::{Layer, Service};

use crate::node::CoordNode;

/// The callers a method admits. Every class but `Anyone` also requires a certificate of
/// this cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Allow {
    /// Anyone who completed the TLS handshake, with or without a certificate.
    Anyone,
    /// Managers, admins and readers: reads of cluster state.
    Readers,
    /// Managers and workers, each as the node its certificate names ([`acts_as`]).
    Nodes,
    /// Managers and admins: writes and administration.
    Admins,
    /// Managers only (the masters themselves).
    Managers,
}

/// The table: every method of every service a master serves. A method missing from it
/// admits managers only (default deny for everyone else); a test checks that every
/// `rpc` in the .proto files has a row.
pub(crate) const TABLE: &[(&str, Allow)] = &[
    // A new node has no certificate yet: the token secret and the CSR are its proof.
    ("/cluster.v1.ClusterAdmin/Join", Allow::Anyone),
    ("/cluster.v1.ClusterAdmin/Leave", Allow::Admins),
    // And only from another member (checked by the handler).
    ("/cluster.v1.ClusterAdmin/Removed", Allow::Managers),
    ("/cluster.v1.ClusterAdmin/Members", Allow::Readers),
    ("/cluster.v1.ClusterAdmin/Status", Allow::Readers),
    ("/cluster.v1.ClusterAdmin/Token", Allow::Admins),
    // A snapshot holds the CA key.
    ("/cluster.v1.ClusterAdmin/SaveSnapshot", Allow::Admins),
    // For the node the certificate names.
    ("/cluster.v1.ClusterAdmin/RenewCert", Allow::Nodes),
    ("/cluster.v1.ClusterAdmin/IssueCert", Allow::Admins),
    ("/cluster.v1.ClusterAdmin/RotateToken", Allow::Admins),
    ("/cluster.v1.ClusterAdmin/RotateCa", Allow::Admins),
    // A follower passing a client's KeepAlive on.
    ("/cluster.v1.ClusterAdmin/RenewLease", Allow::Managers),
    // And only as the node the certificate names (checked by the handler).
    ("/cluster.raft.v1.Raft/AppendEntries", Allow::Managers),
    ("/cluster.raft.v1.Raft/StreamAppend", Allow::Managers),
    ("/cluster.raft.v1.Raft/Vote", Allow::Managers),
    ("/cluster.raft.v1.Raft/PreVote", Allow::Managers),
    ("/cluster.raft.v1.Raft/InstallSnapshot", Allow::Managers),
    ("/cluster.v1.Registry/Register", Allow::Nodes),
    ("/cluster.v1.Registry/Heartbeat", Allow::Nodes),
    ("/cluster.v1.Registry/Nodes", Allow::Readers),
    ("/cluster.v1.Registry/SetAvailability", Allow::Admins),
    ("/cluster.v1.Registry/RemoveNode", Allow::Admins),
    ("/cluster.v1.Registry/Watch", Allow::Readers),
    ("/cluster.v1.Ipam/CreateNetwork", Allow::Admins),
    ("/cluster.v1.Ipam/RemoveNetwork", Allow::Admins),
    ("/cluster.v1.Ipam/ListNetworks", Allow::Readers),
    ("/cluster.v1.Ipam/InspectNetwork", Allow::Readers),
    ("/cluster.v1.Ipam/Allocate", Allow::Admins),
    ("/cluster.v1.Ipam/AllocateBatch", Allow::Admins),
    ("/cluster.v1.Ipam/Release", Allow::Admins),
    ("/cluster.v1.Ipam/ReportHeld", Allow::Nodes),
    ("/cluster.v1.Ipam/Check", Allow::Readers),
    ("/cluster.v1.Services/CreateService", Allow::Admins),
    ("/cluster.v1.Services/UpdateService", Allow::Admins),
    ("/cluster.v1.Services/ScaleService", Allow::Admins),
    ("/cluster.v1.Services/RestartService", Allow::Admins),
    ("/cluster.v1.Services/KillTasks", Allow::Admins),
    ("/cluster.v1.Services/RemoveService", Allow::Admins),
    ("/cluster.v1.Services/ListServices", Allow::Readers),
    ("/cluster.v1.Services/GetService", Allow::Readers),
    ("/cluster.v1.Services/ListTasks", Allow::Readers),
    ("/cluster.v1.Services/GetTask", Allow::Readers),
    ("/cluster.v1.Services/ListDeployments", Allow::Readers),
    ("/cluster.v1.Services/CancelDeployment", Allow::Admins),
    ("/cluster.v1.Services/WatchAssignments", Allow::Nodes),
    ("/cluster.v1.Services/ReportTasks", Allow::Nodes),
    // Logs may hold secrets: admins, and masters relaying for one.
    ("/cluster.v1.Services/TaskLogs", Allow::Admins),
    ("/cluster.v1.Services/AgentLogs", Allow::Nodes),
    ("/cluster.v1.ClusterAdmin/IssueHttpToken", Allow::Admins),
    ("/cluster.v1.ClusterAdmin/RevokeHttpToken", Allow::Admins),
    ("/cluster.v1.ClusterAdmin/ListHttpTokens", Allow::Admins),
    ("/cluster.v1.Jobs/CreateJob", Allow::Admins),
    ("/cluster.v1.Jobs/UpdateJob", Allow::Admins),
    ("/cluster.v1.Jobs/RemoveJob", Allow::Admins),
    ("/cluster.v1.Jobs/RunJob", Allow::Admins),
    ("/cluster.v1.Jobs/ListJobs", Allow::Readers),
    ("/cluster.v1.Jobs/GetJob", Allow::Readers),
    ("/cluster.v1.Jobs/JobHistory", Allow::Readers),
    ("/etcdserverpb.KV/Range", Allow::Readers),
    ("/etcdserverpb.KV/Put", Allow::Admins),
    ("/etcdserverpb.KV/DeleteRange", Allow::Admins),
    // A Txn may write; a reader reads with Range.
    ("/etcdserverpb.KV/Txn", Allow::Admins),
    ("/etcdserverpb.KV/Compact", Allow::Admins),
    // Served by each master from its own state.
    ("/etcdserverpb.Watch/Watch", Allow::Readers),
    ("/etcdserverpb.Lease/LeaseGrant", Allow::Admins),
    ("/etcdserverpb.Lease/LeaseRevoke", Allow::Admins),
    ("/etcdserverpb.Lease/LeaseKeepAlive", Allow::Admins),
    ("/etcdserverpb.Lease/LeaseTimeToLive", Allow::Readers),
    ("/etcdserverpb.Lease/LeaseLeases", Allow::Readers),
    ("/etcdserverpb.Cluster/MemberList", Allow::Readers),
    ("/etcdserverpb.Maintenance/Status", Allow::Readers),
    ("/v3lockpb.Lock/Lock", Allow::Admins),
    ("/v3lockpb.Lock/Unlock", Allow::Admins),
    ("/v3electionpb.Election/Campaign", Allow::Admins),
    ("/v3electionpb.Election/Proclaim", Allow::Admins),
    ("/v3electionpb.Election/Leader", Allow::Readers),
    ("/v3electionpb.Election/Observe", Allow::Readers),
    ("/v3electionpb.Election/Resign", Allow::Admins),
];

/// The rule for a gRPC path, and whether the table names it: a path it does not name
/// (none we serve) is for managers only.
pub(crate) fn rule(path: &str) -> (Allow, bool) {
    match TABLE.iter().find(|(p, _)| *p == path) {
        Some((_, a)) => (*a, true),
        None => (Allow::Managers, false),
    }
}

/// Whether `who` (none: no certificate) may call a method with rule `allow`, on a node
/// of `cluster_id`.
pub(crate) fn admits(allow: Allow, who: Option<&PeerIdentity>, cluster_id: &str) -> Result<(), Status> {
    if allow == Allow::Anyone {
        return Ok(());
    }
    let Some(who) = who else {
        return Err(Status::unauthenticated("a client certificate of this cluster is required"));
    };
    if who.cluster_id != cluster_id {
        return Err(Status::permission_denied("the certificate is for another cluster"));
    }
    use CertRole::*;
    let ok = match allow {
        Allow::Anyone => true,
        Allow::Readers => matches!(who.role, Manager | Admin | Reader),
        Allow::Nodes => matches!(who.role, Manager | Worker),
        Allow::Admins => matches!(who.role, Manager | Admin),
        Allow::Managers => who.role == Manager,
    };
    if ok {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "a {} certificate may not make this call (it needs {})",
            who.role,
            match allow {
                Allow::Anyone => "nothing",
                Allow::Readers => "an admin or reader certificate",
                Allow::Nodes => "the certificate of a node",
                Allow::Admins => "an admin certificate",
                Allow::Managers => "a master's certificate",
            }
        )))
    }
}

/// The caller of a request, as its certificate names it (none: no certificate).
pub(crate) fn caller<T>(req: &tonic::Request<T>) -> Option<&PeerIdentity> {
    req.extensions().get::<PeerInfo>().and_then(|p| p.identity.as_ref())
}

/// For calls a node makes about itself (register, heartbeat, report held addresses):
/// the caller's certificate must name `node_id`, so no one can act under another node's
/// id. A master may act for any node: it forwards agents' calls to the leader.
pub(crate) fn acts_as(who: Option<&PeerIdentity>, node_id: u64) -> Result<(), Status> {
    match who {
        Some(w) if w.role == CertRole::Manager => Ok(()),
        Some(w) if w.node_id == Some(node_id) => Ok(()),
        Some(w) => Err(Status::permission_denied(format!(
            "this certificate is for {}, not node {node_id}",
            w.node_id.map_or_else(|| format!("user {:?}", w.name), |id| format!("node {id}"))
        ))),
        None => Err(Status::unauthenticated("a client certificate of this cluster is required")),
    }
}

/// Methods whose handler future may outlive the handler timeout: InstallSnapshot streams
/// its whole request before the answer, under a deadline of its own; Lock and Campaign
/// wait for their turn as long as the client does (it cancels to give up).
const OWN_DEADLINE: &[&str] =
    &["/cluster.raft.v1.Raft/InstallSnapshot", "/v3lockpb.Lock/Lock", "/v3electionpb.Election/Campaign"];

/// Whether a certificate that passed the handshake still stands, on every request: a
/// connection outlives the certificate it opened with. Refused: an expired certificate,
/// one from a CA no longer trusted (after a CA rotation), and the certificate of a node
/// that left (a master after `leave`, an agent after `node rm`), which stays valid
/// until it expires.
pub(crate) fn still_stands(node: &CoordNode, who: &PeerIdentity) -> Result<(), Status> {
    if who.not_after_unix < pki::now_unix() {
        return Err(Status::unauthenticated("the client certificate expired; reconnect with a renewed one"));
    }
    if !node.tls.trusts_issuer(&who.issuer) {
        return Err(Status::unauthenticated(format!(
            "the client certificate is from {:?}, a CA this cluster no longer trusts; reconnect with a renewed one",
            who.issuer
        )));
    }
    let gone = match (who.role, who.node_id) {
        (CertRole::Manager, Some(id)) => node.is_gone(id, true),
        (CertRole::Worker, Some(id)) => node.is_gone(id, false),
        _ => false,
    };
    if gone {
        return Err(Status::permission_denied(format!(
            "node {} was removed from the cluster; its certificate is no longer honored (join again with a token)",
            who.name
        )));
    }
    Ok(())
}

/// The gate every request passes: [`rule`] and [`still_stands`], then the handler under
/// a timeout.
#[derive(Clone)]
pub(crate) struct AuthzLayer {
    pub(crate) node: Arc<CoordNode>,
    /// How long a handler may take to answer (a stream's answer is its start).
    pub(crate) handler_timeout: std::time::Duration,
}

impl<S> Layer<S> for AuthzLayer {
    type Service = Authz<S>;
    fn layer(&self, inner: S) -> Authz<S> {
        let cluster_id = self.node.tls.identity().map(|i| i.cluster_id).unwrap_or_default();
        Authz { inner, cluster_id, node: self.node.clone(), handler_timeout: self.handler_timeout }
    }
}

#[derive(Clone)]
pub(crate) struct Authz<S> {
    inner: S,
    cluster_id: String,
    node: Arc<CoordNode>,
    handler_timeout: std::time::Duration,
}

impl<S> Service<Request<Body>> for Authz<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // One look in the table decides both the rule and whether the path is named in
        // the metrics (it is on every call's path).
        let (allow, listed) = rule(req.uri().path());
        let call = crate::metrics::GrpcCall::start(req.uri().path(), listed);
        let answer = self.answer(req, allow);
        Box::pin(async move { answer.await.map(|r| call.finish(r)) })
    }
}

impl<S> Authz<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    fn answer(
        &mut self,
        req: Request<Body>,
        allow: Allow,
    ) -> futures::future::BoxFuture<'static, Result<Response<Body>, S::Error>> {
        let who = req.extensions().get::<PeerInfo>().and_then(|p| p.identity.as_ref());
        let path = req.uri().path();
        let verdict = admits(allow, who, &self.cluster_id).and_then(|()| match who {
            Some(w) if allow != Allow::Anyone => still_stands(&self.node, w),
            _ => Ok(()),
        });
        if let Err(s) = verdict {
            tracing::debug!(path, "refused: {}", s.message());
            return Box::pin(async move { Ok(s.into_http()) });
        }
        let own_deadline = OWN_DEADLINE.contains(&path);
        let call = self.inner.call(req);
        if own_deadline {
            return Box::pin(call);
        }
        let limit = self.handler_timeout;
        Box::pin(async move {
            match tokio::time::timeout(limit, call).await {
                Ok(r) => r,
                Err(_) => Ok(Status::deadline_exceeded(format!(
                    "the request took longer than the server's {} s limit",
                    limit.as_secs()
                ))
                .into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(role: CertRole, cluster: &str) -> pki::PeerIdentity {
        pki::PeerIdentity {
            cluster_id: cluster.into(),
            role,
            node_id: role.is_node().then_some(2),
            name: "x".into(),
            not_after_unix: 0,
            not_before_unix: 0,
            issuer: String::new(),
        }
    }

    /// One row per method: who gets in, written out by hand (not derived from the
    /// table), with `-` for a caller without a certificate, and M, W, A, R for manager,
    /// worker, admin and reader certificates.
    const EXPECTED: &[(&str, &str)] = &[
        ("/cluster.v1.ClusterAdmin/Join", "- M W A R"),
        ("/cluster.v1.ClusterAdmin/Leave", "M A"),
        ("/cluster.v1.ClusterAdmin/Removed", "M"),
        ("/cluster.v1.ClusterAdmin/Members", "M A R"),
        ("/cluster.v1.ClusterAdmin/Status", "M A R"),
        ("/cluster.v1.ClusterAdmin/Token", "M A"),
        ("/cluster.v1.ClusterAdmin/SaveSnapshot", "M A"),
        ("/cluster.v1.ClusterAdmin/RenewCert", "M W"),
        ("/cluster.v1.ClusterAdmin/IssueCert", "M A"),
        ("/cluster.v1.ClusterAdmin/RotateToken", "M A"),
        ("/cluster.v1.ClusterAdmin/RotateCa", "M A"),
        ("/cluster.v1.ClusterAdmin/RenewLease", "M"),
        ("/cluster.raft.v1.Raft/AppendEntries", "M"),
        ("/cluster.raft.v1.Raft/StreamAppend", "M"),
        ("/cluster.raft.v1.Raft/Vote", "M"),
        ("/cluster.raft.v1.Raft/PreVote", "M"),
        ("/cluster.raft.v1.Raft/InstallSnapshot", "M"),
        ("/cluster.v1.Registry/Register", "M W"),
        ("/cluster.v1.Registry/Heartbeat", "M W"),
        ("/cluster.v1.Registry/Nodes", "M A R"),
        ("/cluster.v1.Registry/SetAvailability", "M A"),
        ("/cluster.v1.Registry/RemoveNode", "M A"),
        ("/cluster.v1.Registry/Watch", "M A R"),
        ("/cluster.v1.Ipam/CreateNetwork", "M A"),
        ("/cluster.v1.Ipam/RemoveNetwork", "M A"),
        ("/cluster.v1.Ipam/ListNetworks", "M A R"),
        ("/cluster.v1.Ipam/InspectNetwork", "M A R"),
        ("/cluster.v1.Ipam/Allocate", "M A"),
        ("/cluster.v1.Ipam/AllocateBatch", "M A"),
        ("/cluster.v1.Ipam/Release", "M A"),
        ("/cluster.v1.Ipam/ReportHeld", "M W"),
        ("/cluster.v1.Ipam/Check", "M A R"),
        ("/cluster.v1.Services/CreateService", "M A"),
        ("/cluster.v1.Services/UpdateService", "M A"),
        ("/cluster.v1.Services/ScaleService", "M A"),
        ("/cluster.v1.Services/RestartService", "M A"),
        ("/cluster.v1.Services/KillTasks", "M A"),
        ("/cluster.v1.Services/RemoveService", "M A"),
        ("/cluster.v1.Services/ListServices", "M A R"),
        ("/cluster.v1.Services/GetService", "M A R"),
        ("/cluster.v1.Services/ListTasks", "M A R"),
        ("/cluster.v1.Services/GetTask", "M A R"),
        ("/cluster.v1.Services/ListDeployments", "M A R"),
        ("/cluster.v1.Services/CancelDeployment", "M A"),
        ("/cluster.v1.Services/WatchAssignments", "M W"),
        ("/cluster.v1.Services/ReportTasks", "M W"),
        ("/cluster.v1.Services/TaskLogs", "M A"),
        ("/cluster.v1.Services/AgentLogs", "M W"),
        ("/cluster.v1.ClusterAdmin/IssueHttpToken", "M A"),
        ("/cluster.v1.ClusterAdmin/RevokeHttpToken", "M A"),
        ("/cluster.v1.ClusterAdmin/ListHttpTokens", "M A"),
        ("/cluster.v1.Jobs/CreateJob", "M A"),
        ("/cluster.v1.Jobs/UpdateJob", "M A"),
        ("/cluster.v1.Jobs/RemoveJob", "M A"),
        ("/cluster.v1.Jobs/RunJob", "M A"),
        ("/cluster.v1.Jobs/ListJobs", "M A R"),
        ("/cluster.v1.Jobs/GetJob", "M A R"),
        ("/cluster.v1.Jobs/JobHistory", "M A R"),
        ("/etcdserverpb.KV/Range", "M A R"),
        ("/etcdserverpb.KV/Put", "M A"),
        ("/etcdserverpb.KV/DeleteRange", "M A"),
        ("/etcdserverpb.KV/Txn", "M A"),
        ("/etcdserverpb.KV/Compact", "M A"),
        ("/etcdserverpb.Watch/Watch", "M A R"),
        ("/etcdserverpb.Lease/LeaseGrant", "M A"),
        ("/etcdserverpb.Lease/LeaseRevoke", "M A"),
        ("/etcdserverpb.Lease/LeaseKeepAlive", "M A"),
        ("/etcdserverpb.Lease/LeaseTimeToLive", "M A R"),
        ("/etcdserverpb.Lease/LeaseLeases", "M A R"),
        ("/etcdserverpb.Cluster/MemberList", "M A R"),
        ("/etcdserverpb.Maintenance/Status", "M A R"),
        ("/v3lockpb.Lock/Lock", "M A"),
        ("/v3lockpb.Lock/Unlock", "M A"),
        ("/v3electionpb.Election/Campaign", "M A"),
        ("/v3electionpb.Election/Proclaim", "M A"),
        ("/v3electionpb.Election/Leader", "M A R"),
        ("/v3electionpb.Election/Observe", "M A R"),
        ("/v3electionpb.Election/Resign", "M A"),
        ("/some.Unknown/Method", "M"),
    ];

    #[test]
    fn each_row_admits_exactly_its_callers() {
        use CertRole::*;
        let callers: [(&str, Option<CertRole>); 5] =
            [("-", None), ("M", Some(Manager)), ("W", Some(Worker)), ("A", Some(Admin)), ("R", Some(Reader))];
        for (path, want) in EXPECTED {
            let want: Vec<&str> = want.split(' ').collect();
            for (tag, role) in callers {
                let who = role.map(|r| id(r, "c1"));
                let got = admits(rule(path).0, who.as_ref(), "c1").is_ok();
                assert_eq!(got, want.contains(&tag), "{path} as {tag}");
            }
            // A certificate of another cluster gets nothing but what anyone gets.
            let other = admits(rule(path).0, Some(&id(Manager, "c2")), "c1").is_ok();
            assert_eq!(other, want.contains(&"-"), "{path} with another cluster's certificate");
        }
        assert_eq!(EXPECTED.len(), TABLE.len() + 1, "a table row without an expectation");
    }

    /// Every `rpc` of every service in the .proto files has a row, so a new method
    /// cannot ship with the managers-only default by accident.
    #[test]
    fn every_rpc_in_the_protos_has_a_row() {
        let protos = [
            include_str!("../../../proto/proto/cluster/cluster.proto"),
            include_str!("../../../proto/proto/cluster/raft.proto"),
            include_str!("../../../proto/proto/cluster/registry.proto"),
            include_str!("../../../proto/proto/cluster/ipam.proto"),
            include_str!("../../../proto/proto/cluster/services.proto"),
            include_str!("../../../proto/proto/cluster/jobs.proto"),
            include_str!("../../../proto/proto/etcd/rpc.proto"),
            include_str!("../../../proto/proto/etcd/v3lock.proto"),
            include_str!("../../../proto/proto/etcd/v3election.proto"),
        ];
        let mut seen = 0;
        for text in protos {
            let mut package = "";
            let mut service = "";
            for line in text.lines().map(str::trim) {
                if let Some(p) = line.strip_prefix("package ") {
                    package = p.trim_end_matches(';');
                } else if let Some(s) = line.strip_prefix("service ") {
                    service = s.trim_end_matches('{').trim();
                } else if let Some(r) = line.strip_prefix("rpc ") {
                    let method = &r[..r.find('(').expect("rpc Name(")];
                    let path = format!("/{package}.{service}/{}", method.trim());
                    assert!(TABLE.iter().any(|(p, _)| *p == path), "{path} has no row in the authorization table");
                    seen += 1;
                }
            }
        }
        assert_eq!(seen, TABLE.len(), "the table has rows for methods that do not exist");
    }

    #[test]
    fn a_node_acts_only_as_itself() {
        assert!(acts_as(Some(&id(CertRole::Worker, "c1")), 2).is_ok());
        assert!(acts_as(Some(&id(CertRole::Worker, "c1")), 3).is_err());
        assert!(acts_as(Some(&id(CertRole::Admin, "c1")), 2).is_err());
        assert!(acts_as(Some(&id(CertRole::Manager, "c1")), 3).is_ok());
        assert!(acts_as(None, 2).is_err());
    }
}
