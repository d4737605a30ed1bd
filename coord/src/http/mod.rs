//! The HTTP face of a master (`--http-listen`): Marathon's and Chronos' REST APIs, and
//! `/health` and `/ready`, over TLS with the cluster's certificates.
//!
//! Who calls is decided per request: a client certificate of this cluster (its role, as
//! for gRPC: admins and masters may change things, readers may read), or a bearer token
//! that an admin issued (`cluster token issue-http`), sent as `Authorization: Bearer
//! <token>`, `Authorization: token=<token>` (Marathon's clients) or as the password of
//! HTTP Basic (clients that know only that). `GET` needs a reader; anything else an
//! admin. `/health` and `/ready` need nothing.
//!
//! A handler does not reach the state itself: it calls the same gRPC service
//! implementation a gRPC client would reach, in process, so a write on a follower goes
//! to the leader by the one forwarding rule (`grpc::on_leader`), and reads answer from
//! this master's applied state.

pub mod chronos;
pub mod marathon;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pki::cert::CertRole;
use pki::net::PeerInfo;
use serde_json::json;
use tokio::net::TcpListener;
use tonic::transport::server::Connected;

use crate::grpc::{jobs::JobsService, services::ServicesService};
use crate::node::CoordNode;

/// Request bodies are app and job definitions: small.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// What handlers share.
#[derive(Clone)]
pub struct Http {
    pub node: Arc<CoordNode>,
    pub services: Arc<ServicesService>,
    pub jobs: Arc<JobsService>,
}

/// The caller's standing, from its certificate or token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    Reader,
    Admin,
}

/// An error as JSON, `{"message": …}` (Marathon's shape), with its status.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"message": self.1}))).into_response()
    }
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> ApiError {
        use tonic::Code::*;
        let code = match s.code() {
            InvalidArgument | OutOfRange => StatusCode::UNPROCESSABLE_ENTITY,
            NotFound => StatusCode::NOT_FOUND,
            AlreadyExists => StatusCode::CONFLICT,
            FailedPrecondition | Aborted => StatusCode::CONFLICT,
            PermissionDenied => StatusCode::FORBIDDEN,
            Unauthenticated => StatusCode::UNAUTHORIZED,
            ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Unavailable | DeadlineExceeded => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, s.message().to_string())
    }
}

pub type ApiResult<T> = std::result::Result<T, ApiError>;

/// A body that must be JSON.
pub fn body_json(bytes: &[u8]) -> ApiResult<serde_json::Value> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("the body is not valid JSON: {e}")))
}

/// An endpoint we do not serve: said so, never ignored.
pub async fn unsupported(req: Request) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        format!(
            "{} {} is not supported by this cluster's HTTP API (see docs/operator-guide.md, \"HTTP API\")",
            req.method(),
            req.uri().path()
        ),
    )
}

/// The token in an `Authorization` header, in any of the forms clients send.
fn presented_token(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    if let Some(t) = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")) {
        return Some(t.trim().to_string());
    }
    if let Some(t) = v.strip_prefix("token=") {
        return Some(t.trim().to_string());
    }
    if let Some(b) = v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")) {
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD.decode(b.trim()).ok()?;
        let text = String::from_utf8(raw).ok()?;
        return text.split_once(':').map(|(_, p)| p.to_string());
    }
    None
}

/// Who is calling, or why they may not.
fn access(h: &Http, peer: Option<&PeerInfo>, headers: &HeaderMap) -> Result<Access, ApiError> {
    if let Some(who) = peer.and_then(|p| p.identity.as_ref()) {
        crate::grpc::authz::still_stands(&h.node, who)
            .map_err(|s| ApiError(StatusCode::UNAUTHORIZED, s.message().into()))?;
        let cluster_id = h.node.tls.identity().map(|i| i.cluster_id).unwrap_or_default();
        if who.cluster_id == cluster_id {
            return Ok(match who.role {
                CertRole::Admin | CertRole::Manager => Access::Admin,
                CertRole::Reader => Access::Reader,
                // A worker's certificate is for its agent's own calls.
                _ => {
                    return Err(ApiError(
                        StatusCode::FORBIDDEN,
                        "a worker's certificate gives no access to the HTTP API".into(),
                    ))
                }
            });
        }
    }
    let Some(token) = presented_token(headers) else {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "a credential is required: a client certificate of this cluster, or a token from `cluster token issue-http` \
             (Authorization: Bearer <token>)"
                .into(),
        ));
    };
    let role = h.node.view(|v| crate::http_token::check(v.http_tokens(), &token).map(|t| t.role.clone()));
    match role.as_deref() {
        Some("admin") => Ok(Access::Admin),
        Some("reader") => Ok(Access::Reader),
        _ => Err(ApiError(StatusCode::UNAUTHORIZED, "the token is not valid (unknown, revoked, or mistyped)".into())),
    }
}

async fn authorize(State(h): State<Http>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path == "/health" || path == "/ready" {
        return next.run(req).await;
    }
    let peer = req.extensions().get::<PeerInfo>().cloned();
    match access(&h, peer.as_ref(), req.headers()) {
        Ok(a) => {
            let need = if matches!(*req.method(), Method::GET | Method::HEAD) { Access::Reader } else { Access::Admin };
            if a < need {
                return ApiError(
                    StatusCode::FORBIDDEN,
                    "this credential may read, not change things: it needs the admin role".into(),
                )
                .into_response();
            }
            next.run(req).await
        }
        Err(e) => {
            let mut r = e.into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer realm=\"cluster\""));
            r
        }
    }
}

async fn health() -> &'static str {
    "ok\n"
}

/// Ready: a leader is known and this master has applied everything it knows committed.
async fn ready(State(h): State<Http>) -> Response {
    let m = h.node.metrics();
    let committed = m.local_committed.map(|l| l.index).unwrap_or(0);
    let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
    match (m.current_leader, applied >= committed) {
        (None, _) => (StatusCode::SERVICE_UNAVAILABLE, "not ready: no leader known\n").into_response(),
        (Some(_), false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: applied {applied} of {committed} committed entries\n"),
        )
            .into_response(),
        (Some(_), true) => "ready\n".into_response(),
    }
}

pub fn router(h: Http) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .merge(marathon::routes())
        .merge(chronos::routes())
        .fallback(unsupported)
        .layer(axum::middleware::from_fn_with_state(h.clone(), authorize))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(h)
}

/// Serves the HTTP face of `node` on `listener` until `shutdown` resolves.
pub async fn serve(
    node: Arc<CoordNode>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing::info!(addr = ?listener.local_addr().ok(), node = node.id, "serving HTTP (Marathon and Chronos REST) over TLS");
    let tls = node.tls.http_server_config().map_err(|e| std::io::Error::other(e.to_string()))?;
    let h = Http {
        services: Arc::new(ServicesService::new(node.clone())),
        jobs: Arc::new(JobsService::new(node.clone())),
        node,
    };
    let app = router(h);
    let mut incoming = Box::pin(pki::net::incoming(listener, tls, pki::net::AcceptLimits::default()));
    let mut shutdown = Box::pin(shutdown);
    loop {
        let conn = tokio::select! {
            c = incoming.next() => match c {
                Some(Ok(c)) => c,
                Some(Err(_)) => continue,
                None => return Ok(()),
            },
            _ = &mut shutdown => return Ok(()),
        };
        let info = conn.connect_info();
        let svc = app.clone().layer(axum::Extension(info));
        tokio::spawn(async move {
            let svc = hyper_util::service::TowerToHyperService::new(svc);
            let r = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(conn), svc)
                .await;
            if let Err(e) = r {
                tracing::debug!("HTTP connection ended: {e}");
            }
        });
    }
}
