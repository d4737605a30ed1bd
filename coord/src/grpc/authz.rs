//! Who may call what: one table from gRPC method to the callers it admits, applied by
//! [`AuthzLayer`] to every request before any service sees it.
//!
//! The caller is the identity in its TLS client certificate ([`pki::PeerInfo`]), which
//! the handshake verified against the cluster CA. This is the first cut of the table:
//! it closes the cluster's own services to callers without a certificate (except
//! `Join`, which a new node calls before it has one), keeps Raft traffic to managers,
//! and snapshots, tokens and membership changes to managers and admins. Finer rules
//! (the caller's own node id for registry calls, readers' read-only access) come next.

use std::task::{Context, Poll};

use pki::{CertRole, PeerInfo};
use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tonic::Status;
use tower::{Layer, Service};

/// The callers a method admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Allow {
    /// Anyone who completed the TLS handshake, with or without a certificate.
    Anyone,
    /// Any certificate of this cluster.
    Member,
    /// Managers only (the masters themselves).
    Managers,
    /// Managers and admin clients.
    Admins,
}

/// The table. Unknown methods admit managers only (default deny for everyone else).
pub(crate) fn rule(path: &str) -> Allow {
    match path {
        "/cluster.v1.ClusterAdmin/Join" => Allow::Anyone,
        p if p.starts_with("/cluster.raft.v1.Raft/") => Allow::Managers,
        "/cluster.v1.ClusterAdmin/Removed" => Allow::Managers,
        "/cluster.v1.ClusterAdmin/SaveSnapshot"
        | "/cluster.v1.ClusterAdmin/Token"
        | "/cluster.v1.ClusterAdmin/Leave" => Allow::Admins,
        p if p.starts_with("/cluster.v1.ClusterAdmin/")
            || p.starts_with("/cluster.v1.Registry/")
            || p.starts_with("/cluster.v1.Ipam/")
            || p.starts_with("/etcdserverpb.") =>
        {
            Allow::Member
        }
        _ => Allow::Managers,
    }
}

/// Whether `who` (none: no certificate) may call a method with rule `allow`, on a node
/// of `cluster_id`.
pub(crate) fn admits(allow: Allow, who: Option<&pki::PeerIdentity>, cluster_id: &str) -> Result<(), Status> {
    if allow == Allow::Anyone {
        return Ok(());
    }
    let Some(who) = who else {
        return Err(Status::unauthenticated("a client certificate of this cluster is required"));
    };
    if who.cluster_id != cluster_id {
        return Err(Status::permission_denied("the certificate is for another cluster"));
    }
    let ok = match allow {
        Allow::Anyone | Allow::Member => true,
        Allow::Managers => who.role == CertRole::Manager,
        Allow::Admins => matches!(who.role, CertRole::Manager | CertRole::Admin),
    };
    if ok {
        Ok(())
    } else {
        Err(Status::permission_denied(format!("a {} certificate may not make this call", who.role)))
    }
}

/// Applies [`rule`] to every request.
#[derive(Clone)]
pub(crate) struct AuthzLayer {
    pub(crate) cluster_id: String,
}

impl<S> Layer<S> for AuthzLayer {
    type Service = Authz<S>;
    fn layer(&self, inner: S) -> Authz<S> {
        Authz { inner, cluster_id: self.cluster_id.clone() }
    }
}

#[derive(Clone)]
pub(crate) struct Authz<S> {
    inner: S,
    cluster_id: String,
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
        let who = req.extensions().get::<PeerInfo>().and_then(|p| p.identity.clone());
        let verdict = admits(rule(req.uri().path()), who.as_ref(), &self.cluster_id);
        match verdict {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(s) => {
                tracing::debug!(path = req.uri().path(), "refused: {}", s.message());
                Box::pin(async move { Ok(s.into_http()) })
            }
        }
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
        }
    }

    /// One row per rule: who gets in and who does not.
    #[test]
    fn each_rule_admits_exactly_its_callers() {
        use CertRole::*;
        let cases: &[(&str, Option<CertRole>, bool)] = &[
            ("/cluster.v1.ClusterAdmin/Join", None, true),
            ("/cluster.raft.v1.Raft/Vote", None, false),
            ("/cluster.raft.v1.Raft/Vote", Some(Worker), false),
            ("/cluster.raft.v1.Raft/AppendEntries", Some(Admin), false),
            ("/cluster.raft.v1.Raft/InstallSnapshot", Some(Manager), true),
            ("/cluster.v1.ClusterAdmin/SaveSnapshot", Some(Worker), false),
            ("/cluster.v1.ClusterAdmin/SaveSnapshot", Some(Reader), false),
            ("/cluster.v1.ClusterAdmin/SaveSnapshot", Some(Admin), true),
            ("/cluster.v1.ClusterAdmin/Token", None, false),
            ("/cluster.v1.ClusterAdmin/Token", Some(Manager), true),
            ("/cluster.v1.ClusterAdmin/Leave", Some(Worker), false),
            ("/cluster.v1.ClusterAdmin/Removed", Some(Admin), false),
            ("/cluster.v1.ClusterAdmin/Status", None, false),
            ("/cluster.v1.ClusterAdmin/Status", Some(Reader), true),
            ("/etcdserverpb.KV/Put", None, false),
            ("/etcdserverpb.KV/Range", Some(Worker), true),
            ("/cluster.v1.Registry/Heartbeat", Some(Worker), true),
            ("/cluster.v1.Ipam/Allocate", None, false),
            ("/some.Unknown/Method", Some(Admin), false),
            ("/some.Unknown/Method", Some(Manager), true),
        ];
        for (path, role, want) in cases {
            let who = role.map(|r| id(r, "c1"));
            let got = admits(rule(path), who.as_ref(), "c1").is_ok();
            assert_eq!(got, *want, "{path} as {role:?}");
        }
        // A certificate that names another cluster gets nothing but Join.
        assert!(admits(rule("/etcdserverpb.KV/Range"), Some(&id(CertRole::Admin, "c2")), "c1").is_err());
    }
}
