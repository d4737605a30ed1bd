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
pub mod events;
pub mod marathon;
pub mod ui;

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
/// Connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 1024;
/// A request's headers must arrive within this (a slow client holds nothing longer).
pub const HEADER_READ_TIMEOUT_S: u64 = 10;
/// A connection is closed after this long, whatever it does (clients reconnect).
pub const MAX_CONNECTION_S: u64 = 3600;
/// Event streams and long polls served at once: each holds a snapshot of the services'
/// state and redoes it on every change, so they are counted apart from connections.
pub const MAX_STREAMS: usize = 256;
/// A handler answers within this, or the request fails with 503.
pub const HANDLER_TIMEOUT_S: u64 = 30;

/// What handlers share.
#[derive(Clone)]
pub struct Http {
    pub node: Arc<CoordNode>,
    pub services: Arc<ServicesService>,
    pub jobs: Arc<JobsService>,
    /// Event streams and long polls open at once (see [`MAX_STREAMS`]).
    pub streams: Arc<tokio::sync::Semaphore>,
    /// The dashboard charts' last hour.
    pub history: Arc<ui::History>,
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
    if let Some(t) = v.strip_prefix("token=") {
        return Some(t.trim().to_string());
    }
    let (scheme, rest) = v.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
        let text = String::from_utf8(raw).ok()?;
        return text.split_once(':').map(|(_, p)| p.to_string());
    }
    None
}

/// Who is calling, or why they may not: the higher of what its certificate and its
/// token allow.
async fn access(h: &Http, peer: Option<&PeerInfo>, headers: &HeaderMap) -> Result<Access, ApiError> {
    let by_cert = access_by_cert(h, peer);
    if presented_token(headers).is_none() || matches!(by_cert, Ok(Some(Access::Admin))) {
        return match by_cert {
            Ok(Some(a)) => Ok(a),
            Ok(None) => access_by_token(h, headers).await,
            Err(e) => Err(e),
        };
    }
    match (access_by_token(h, headers).await, by_cert) {
        (Ok(t), Ok(Some(c))) => Ok(t.max(c)),
        (Ok(t), _) => Ok(t),
        (Err(_), Ok(Some(c))) => Ok(c),
        (Err(e), _) => Err(e),
    }
}

/// A client certificate's standing; `None` without one.
fn access_by_cert(h: &Http, peer: Option<&PeerInfo>) -> Result<Option<Access>, ApiError> {
    let Some(who) = peer.and_then(|p| p.identity.as_ref()) else { return Ok(None) };
    crate::grpc::authz::still_stands(&h.node, who)
        .map_err(|s| ApiError(StatusCode::UNAUTHORIZED, s.message().into()))?;
    let cluster_id = h.node.tls.identity().map(|i| i.cluster_id).unwrap_or_default();
    if who.cluster_id != cluster_id {
        return Ok(None);
    }
    match who.role {
        CertRole::Admin | CertRole::Manager => Ok(Some(Access::Admin)),
        CertRole::Reader => Ok(Some(Access::Reader)),
        // A worker's certificate is for its agent's own calls.
        _ => Err(ApiError(StatusCode::FORBIDDEN, "a worker's certificate gives no access to the HTTP API".into())),
    }
}

/// A bearer token's standing. A token this master does not know yet may have just been
/// issued through another: it is looked for again once this master has applied what the
/// leader had committed, so a token works everywhere as soon as `issue-http` returns.
async fn access_by_token(h: &Http, headers: &HeaderMap) -> Result<Access, ApiError> {
    let Some(token) = presented_token(headers) else {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "a credential is required: a client certificate of this cluster, or a token from `cluster token issue-http` \
             (Authorization: Bearer <token>)"
                .into(),
        ));
    };
    let check =
        |v: &crate::read::ReadView<'_>| crate::http_token::check(v.http_tokens(), &token).map(|t| t.role.clone());
    let mut role = h.node.view(check);
    if role.is_none() && crate::grpc::caught_up_with_leader(&h.node).await.is_ok() {
        role = h.node.view(check);
    }
    match role.as_deref() {
        Some("admin") => Ok(Access::Admin),
        Some("reader") => Ok(Access::Reader),
        _ => Err(ApiError(StatusCode::UNAUTHORIZED, "the token is not valid (unknown, revoked, or mistyped)".into())),
    }
}

async fn authorize(State(h): State<Http>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path == "/health" || path == "/ready" || ui::is_static(path) {
        return next.run(req).await;
    }
    let peer = req.extensions().get::<PeerInfo>().cloned();
    match access(&h, peer.as_ref(), req.headers()).await {
        Ok(a) => {
            let read = matches!(*req.method(), Method::GET | Method::HEAD);
            if a < needs(read, req.uri().path()) {
                let why = if read {
                    "task logs need the admin role (as gRPC's TaskLogs does): they may hold secrets"
                } else {
                    "this credential may read, not change things: it needs the admin role"
                };
                return ApiError(StatusCode::FORBIDDEN, why.into()).into_response();
            }
            if !read {
                let authority = req.uri().authority().map(|a| a.as_str().to_string());
                if let Err(e) = same_origin(req.headers(), authority.as_deref()) {
                    return e.into_response();
                }
            }
            // A long poll bounds its own wait (events::MAX_WAIT_S).
            if path_has_own_deadline(req.uri().path()) {
                return next.run(req).await;
            }
            let limit = std::time::Duration::from_secs(HANDLER_TIMEOUT_S);
            match tokio::time::timeout(limit, next.run(req)).await {
                Ok(r) => r,
                Err(_) => {
                    ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("no answer within {HANDLER_TIMEOUT_S} s; retry"))
                        .into_response()
                }
            }
        }
        Err(e) => {
            let mut r = e.into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer realm=\"cluster\""));
            r
        }
    }
}

/// Prometheus' text format (see [`crate::metrics`]).
async fn metrics(State(h): State<Http>) -> Response {
    let text = crate::node::blocking(|| crate::metrics::render(&h.node));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// Counts every answer by method and status (`cluster_http_requests_total`).
async fn count(req: Request, next: Next) -> Response {
    let method = match *req.method() {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "other",
    };
    let r = next.run(req).await;
    crate::metrics::global().http_requests.with_label_values(&[method, r.status().as_str()]).inc();
    r
}

/// What a request needs: reading needs a reader, except task logs (admin, as the gRPC
/// `TaskLogs` rule says); anything else an admin.
fn needs(read: bool, path: &str) -> Access {
    let logs = path.starts_with("/v1/tasks/") && path.ends_with("/logs");
    if read && !logs {
        Access::Reader
    } else {
        Access::Admin
    }
}

/// A browser that holds a client certificate sends it on a form posted from any site:
/// a change must come from this origin (or from a client that is no browser, which
/// sends neither header).
fn same_origin(headers: &HeaderMap, authority: Option<&str>) -> Result<(), ApiError> {
    let refused = |why: String| Err(ApiError(StatusCode::FORBIDDEN, why));
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if site == "cross-site" || site == "same-site" {
            return refused(format!("a {site} request may not change anything here (Sec-Fetch-Site)"));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        // HTTP/2 names the host in the :authority pseudo-header, HTTP/1.1 in Host.
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).or(authority).unwrap_or("");
        let from = origin.split_once("://").map_or(origin, |(_, h)| h);
        if from != host {
            return refused(format!("a request from origin {origin:?} may not change anything on {host:?}"));
        }
    }
    Ok(())
}

fn path_has_own_deadline(path: &str) -> bool {
    path == "/v1/discovery"
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
        .route("/metrics", get(metrics))
        .route("/v2/events", get(events::marathon_events))
        .route("/v1/discovery", get(events::discovery))
        .merge(marathon::routes())
        .merge(chronos::routes())
        .merge(ui::routes())
        .fallback(unsupported)
        .layer(axum::middleware::from_fn_with_state(h.clone(), authorize))
        .layer(axum::middleware::from_fn(count))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(h)
}

/// Serves the HTTP face of `node` on `listener` until `shutdown` resolves.
pub async fn serve(
    node: Arc<CoordNode>,
    shared: crate::grpc::Shared,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing::info!(addr = ?listener.local_addr().ok(), node = node.id, "serving HTTP (REST, metrics, dashboard) over TLS");
    let tls = node.tls.http_server_config().map_err(|e| std::io::Error::other(e.to_string()))?;
    let h = Http {
        streams: Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS)),
        history: ui::History::spawn(Arc::downgrade(&node)),
        services: shared.services,
        jobs: shared.jobs,
        node,
    };
    let app = router(h);
    let mut incoming = Box::pin(pki::net::incoming(listener, tls, pki::net::AcceptLimits::default()));
    let mut shutdown = Box::pin(shutdown);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = &mut shutdown => return Ok(()),
        };
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
            let _permit = permit;
            let svc = hyper_util::service::TowerToHyperService::new(svc);
            let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // Without a timer hyper enforces no header timeout at all.
            b.http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(HEADER_READ_TIMEOUT_S))
                .max_buf_size(64 << 10);
            b.http2()
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval(std::time::Duration::from_secs(10))
                .keep_alive_timeout(std::time::Duration::from_secs(20))
                .max_header_list_size(64 << 10)
                .max_concurrent_streams(256);
            let serving = b.serve_connection_with_upgrades(TokioIo::new(conn), svc);
            match tokio::time::timeout(std::time::Duration::from_secs(MAX_CONNECTION_S), serving).await {
                Ok(Err(e)) => tracing::debug!("HTTP connection ended: {e}"),
                Ok(Ok(())) => {}
                Err(_) => tracing::debug!("HTTP connection closed after {MAX_CONNECTION_S} s"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_logs_need_an_admin_even_to_read() {
        assert_eq!(needs(true, "/v2/apps"), Access::Reader);
        assert_eq!(needs(true, "/v1/tasks/web.1/logs"), Access::Admin);
        assert_eq!(needs(false, "/v2/apps"), Access::Admin);
    }

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, header::HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn changes_from_another_site_are_refused() {
        // A client that is no browser sends neither header.
        assert!(same_origin(&h(&[]), None).is_ok());
        assert!(same_origin(
            &h(&[("sec-fetch-site", "same-origin"), ("origin", "https://m:8080"), ("host", "m:8080")]),
            None
        )
        .is_ok());
        assert!(same_origin(&h(&[("origin", "https://m:8080")]), Some("m:8080")).is_ok());
        assert!(same_origin(&h(&[("sec-fetch-site", "cross-site")]), None).is_err());
        assert!(same_origin(&h(&[("sec-fetch-site", "same-site")]), None).is_err());
        assert!(same_origin(&h(&[("origin", "https://evil.example"), ("host", "m:8080")]), None).is_err());
        assert!(same_origin(&h(&[("origin", "null"), ("host", "m:8080")]), None).is_err());
    }
}
