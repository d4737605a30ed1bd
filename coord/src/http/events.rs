//! Streams of what changes: Marathon's event bus (`GET /v2/events`, server-sent events)
//! and the discovery feed load balancers read (`GET /v1/discovery`).
//!
//! Both follow the services area as this master applies it: each applied change bumps
//! the area's index (the log index of the entry), and a stream compares what it shows
//! now with what it showed at the last index.
//!
//! - `/v2/events` sends Marathon's events (`status_update_event`,
//!   `health_status_changed_event`, `deployment_info`, `deployment_success`,
//!   `app_terminated_event`, first `event_stream_attached`), filtered by `event_type=`
//!   like Marathon. Like Marathon's, it is live only: a client that reconnects reads the
//!   state again (`/v2/tasks`) and follows from there.
//! - `/v1/discovery` answers every service's endpoints (healthy tasks' agent address and
//!   ports, and overlay IP) with the index they are at. `?index=N` waits (up to
//!   `wait`, 5 minutes at most) until the index passes N: a long poll that resumes where
//!   the last answer left off, as Consul's blocking queries do. With `Accept:
//!   text/event-stream` it streams instead, one `endpoints` event per change, each with
//!   its index as the event id, so `Last-Event-ID` resumes it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::Stream;
use pki::net::PeerInfo;
use serde_json::{json, Value};

use super::marathon::{deployment_action, ip_addresses, marathon_state};
use super::{ApiError, ApiResult, Http};
use crate::read::ReadView;

/// A long poll waits at most this long.
pub const MAX_WAIT_S: u64 = 300;
/// SSE streams send a comment this often, so proxies and clients see a live connection.
pub const KEEPALIVE_S: u64 = 15;

/// Marathon's event types this bus sends.
const EVENT_TYPES: [&str; 6] = [
    "event_stream_attached",
    "status_update_event",
    "health_status_changed_event",
    "deployment_info",
    "deployment_success",
    "app_terminated_event",
];

#[derive(Debug, Clone, PartialEq)]
struct TaskSnap {
    service: String,
    state: &'static str,
    healthy: Option<bool>,
    agent: u64,
    host: String,
    ports: Vec<u16>,
    ip: String,
    version: u64,
    reason: String,
}

#[derive(Debug, Default)]
struct Snap {
    tasks: BTreeMap<String, TaskSnap>,
    deployments: BTreeMap<u64, (String, &'static str)>,
    services: BTreeSet<String>,
}

/// Services' tasks, deployments and ids (a job's runs are not Marathon's).
fn snapshot(v: &ReadView) -> Snap {
    let s = v.services();
    let mut out = Snap::default();
    for t in s.tasks().filter(|t| t.service.starts_with('/')) {
        out.tasks.insert(
            t.id.clone(),
            TaskSnap {
                service: t.service.clone(),
                state: t.state.as_str(),
                healthy: t.healthy,
                agent: t.agent,
                host: t.host.clone(),
                ports: t.ports.clone(),
                ip: t.ip.map(|i| i.to_string()).unwrap_or_default(),
                version: t.version,
                reason: t.reason.clone(),
            },
        );
    }
    for d in s.deployments() {
        out.deployments.insert(d.id, (d.service.clone(), d.kind.as_str()));
    }
    out.services = s.services().map(|x| x.id.clone()).filter(|id| id.starts_with('/')).collect();
    out
}

fn plan(id: u64, service: &str, kind: &str, at: &str) -> Value {
    let step = json!({"actions": [{"action": deployment_action(kind), "app": service}]});
    json!({
        "id": id.to_string(),
        "version": at,
        "original": {"id": "/", "version": at},
        "target": {"id": "/", "version": at},
        "steps": [step],
    })
}

/// Marathon's events for the change from `old` to `new`, in order: tasks, health,
/// deployments, apps.
fn diff(old: &Snap, new: &Snap, at: &str) -> Vec<(&'static str, Value)> {
    let mut out = Vec::new();
    for (id, t) in &new.tasks {
        let before = old.tasks.get(id);
        if before.map(|b| b.state) != Some(t.state) {
            let ips = ip_addresses(&t.ip);
            out.push((
                "status_update_event",
                json!({
                    "eventType": "status_update_event",
                    "timestamp": at,
                    "slaveId": t.agent.to_string(),
                    "taskId": id,
                    "taskStatus": marathon_state(t.state),
                    "message": t.reason,
                    "appId": t.service,
                    "host": t.host,
                    "ports": t.ports,
                    "ipAddresses": ips,
                    "version": t.version.to_string(),
                }),
            ));
        }
        if let Some(alive) = t.healthy {
            if before.and_then(|b| b.healthy) != Some(alive) {
                out.push((
                    "health_status_changed_event",
                    json!({
                        "eventType": "health_status_changed_event",
                        "timestamp": at,
                        "appId": t.service,
                        "taskId": id,
                        "instanceId": id,
                        "version": t.version.to_string(),
                        "alive": alive,
                    }),
                ));
            }
        }
    }
    for (id, (service, kind)) in &new.deployments {
        if !old.deployments.contains_key(id) {
            let p = plan(*id, service, kind, at);
            let current = p["steps"][0].clone();
            out.push((
                "deployment_info",
                json!({"eventType": "deployment_info", "timestamp": at, "plan": p, "currentStep": current}),
            ));
        }
    }
    for (id, (service, kind)) in &old.deployments {
        if !new.deployments.contains_key(id) {
            out.push((
                "deployment_success",
                json!({"eventType": "deployment_success", "timestamp": at, "id": id.to_string(), "plan": plan(*id, service, kind, at)}),
            ));
        }
    }
    for s in old.services.difference(&new.services) {
        out.push(("app_terminated_event", json!({"eventType": "app_terminated_event", "timestamp": at, "appId": s})));
    }
    out
}

struct Follow {
    h: Http,
    changes: tokio::sync::watch::Receiver<u64>,
    last: Snap,
    pending: VecDeque<(&'static str, Value)>,
    only: BTreeSet<String>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// A place among the streams this master serves at once, or 503.
fn stream_permit(h: &Http) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    h.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "this master serves {} event streams and long polls already; retry, or ask another master",
                super::MAX_STREAMS
            ),
        )
    })
}

/// `GET /v2/events`: Marathon's event bus as server-sent events.
pub async fn marathon_events(
    State(h): State<Http>,
    peer: Option<axum::Extension<PeerInfo>>,
    Query(q): Query<Vec<(String, String)>>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let mut only = BTreeSet::new();
    for (k, v) in q {
        match k.as_str() {
            "event_type" if EVENT_TYPES.contains(&v.as_str()) => {
                only.insert(v);
            }
            "event_type" => {
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    format!("event_type {v:?} is not sent by this cluster; it sends {}", EVENT_TYPES.join(", ")),
                ))
            }
            _ => {
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    format!("unknown query parameter {k:?} (event_type only)"),
                ))
            }
        }
    }
    let permit = stream_permit(&h)?;
    let changes = h.node.services_events.subscribe();
    let last = h.node.view(snapshot);
    let at = crate::jobs::schedule::show_utc(crate::node::now_ms());
    let remote = peer.and_then(|p| p.0.remote).map(|a| a.to_string()).unwrap_or_default();
    let attached = json!({"eventType": "event_stream_attached", "timestamp": at, "remoteAddress": remote});
    let f = Follow {
        h,
        changes,
        last,
        pending: VecDeque::from([("event_stream_attached", attached)]),
        only,
        _permit: permit,
    };
    let stream = futures::stream::unfold(f, |mut f| async move {
        loop {
            if let Some((kind, data)) = f.pending.pop_front() {
                if !f.only.is_empty() && !f.only.contains(kind) {
                    continue;
                }
                return Some((Ok(Event::default().event(kind).data(data.to_string())), f));
            }
            if f.changes.changed().await.is_err() {
                return None;
            }
            let now = f.h.node.view(snapshot);
            let at = crate::jobs::schedule::show_utc(crate::node::now_ms());
            f.pending.extend(diff(&f.last, &now, &at));
            f.last = now;
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(KEEPALIVE_S))))
}

/// Every service's endpoints: healthy tasks only, as a load balancer wants them.
fn endpoints(v: &ReadView) -> Value {
    let s = v.services();
    let mut out = serde_json::Map::new();
    for svc in s.services().filter(|x| x.id.starts_with('/') && !x.deleting) {
        let spec = s.current_spec(&svc.id);
        let port_names: Vec<Value> = spec
            .as_ref()
            .map(|sp| sp.ports.iter().map(|p| p.name.clone().map_or(Value::Null, Value::from)).collect())
            .unwrap_or_default();
        let mut eps: Vec<Value> = s
            .active_tasks_of(&svc.id)
            .filter(|t| s.is_healthy(t))
            .map(|t| {
                let address = v
                    .registry()
                    .nodes
                    .get(&t.agent)
                    .and_then(|n| crate::dns::host_ip(&n.addr))
                    .map(|ip| ip.to_string())
                    .unwrap_or_else(|| t.host.clone());
                json!({
                    "taskId": t.id,
                    "agent": t.agent,
                    "host": t.host,
                    "address": address,
                    "ports": t.ports,
                    "ip": t.ip.map(|i| i.to_string()),
                })
            })
            .collect();
        eps.sort_by(|a, b| a["taskId"].as_str().cmp(&b["taskId"].as_str()));
        out.insert(svc.id.clone(), json!({"portNames": port_names, "endpoints": eps}));
    }
    Value::Object(out)
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryQuery {
    index: Option<u64>,
    /// `30s`, `2m` or seconds.
    wait: Option<String>,
}

fn parse_wait(w: &str) -> Result<Duration, ApiError> {
    let bad = || ApiError(StatusCode::BAD_REQUEST, format!("wait {w:?}: use seconds, e.g. 30s or 2m (at most 300s)"));
    let (n, unit) = match w.strip_suffix('s') {
        Some(n) => (n, 1),
        None => match w.strip_suffix('m') {
            Some(n) => (n, 60),
            None => (w, 1),
        },
    };
    let secs = n.parse::<u64>().map_err(|_| bad())?.saturating_mul(unit);
    if secs > MAX_WAIT_S {
        return Err(bad());
    }
    Ok(Duration::from_secs(secs))
}

const INDEX_HEADER: &str = "x-cluster-index";

/// `GET /v1/discovery`: endpoints now, after `index` (long poll), or as a stream.
pub async fn discovery(
    State(h): State<Http>,
    Query(q): Query<DiscoveryQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let wait = q.wait.as_deref().map(parse_wait).transpose()?.unwrap_or(Duration::from_secs(60));
    let mut changes = h.node.services_events.subscribe();
    let wants_stream =
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/event-stream"));
    if wants_stream {
        let resume =
            headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()).or(q.index);
        let permit = stream_permit(&h)?;
        let state = (h, changes, resume, permit);
        let stream = futures::stream::unfold(state, |(h, mut changes, after, permit)| async move {
            loop {
                let index = *changes.borrow_and_update();
                if after.is_none_or(|a| index > a) {
                    let body = h.node.view(endpoints);
                    let e = Event::default()
                        .event("endpoints")
                        .id(index.to_string())
                        .data(json!({"index": index, "services": body}).to_string());
                    return Some((Ok::<_, Infallible>(e), (h, changes, Some(index), permit)));
                }
                changes.changed().await.ok()?;
            }
        });
        let sse = Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(KEEPALIVE_S)));
        return Ok(sse.into_response());
    }
    if let Some(after) = q.index {
        let _permit = stream_permit(&h)?;
        let deadline = tokio::time::Instant::now() + wait;
        while *changes.borrow_and_update() <= after {
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, "this master is stopping".into())),
                Err(_) => break,
            }
        }
    }
    let index = *changes.borrow();
    let body = h.node.view(endpoints);
    let mut r = Json(json!({"index": index, "services": body})).into_response();
    r.headers_mut().insert(INDEX_HEADER, index.into());
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(service: &str, state: &'static str, healthy: Option<bool>) -> TaskSnap {
        TaskSnap {
            service: service.into(),
            state,
            healthy,
            agent: 2,
            host: "h".into(),
            ports: vec![31000],
            ip: String::new(),
            version: 1,
            reason: String::new(),
        }
    }

    fn kinds(v: &[(&'static str, Value)]) -> Vec<&'static str> {
        v.iter().map(|(k, _)| *k).collect()
    }

    #[test]
    fn a_task_that_starts_and_turns_healthy_is_two_events() {
        let old = Snap::default();
        let mut new = Snap::default();
        new.tasks.insert("web.1".into(), task("/web", "running", Some(true)));
        let ev = diff(&old, &new, "t");
        assert_eq!(kinds(&ev), vec!["status_update_event", "health_status_changed_event"]);
        assert_eq!(ev[0].1["taskStatus"], "TASK_RUNNING");
        assert_eq!(ev[1].1["alive"], true);
        // Nothing changed: nothing sent.
        assert!(diff(&new, &new, "t").is_empty());
    }

    #[test]
    fn deployments_start_and_end_and_apps_terminate() {
        let mut old = Snap::default();
        old.deployments.insert(4, ("/web".into(), "scale"));
        old.services.insert("/web".into());
        let mut new = Snap::default();
        new.deployments.insert(5, ("/db".into(), "create"));
        let ev = diff(&old, &new, "t");
        assert_eq!(kinds(&ev), vec!["deployment_info", "deployment_success", "app_terminated_event"]);
        assert_eq!(ev[0].1["plan"]["steps"][0]["actions"][0]["action"], "StartApplication");
        assert_eq!(ev[1].1["id"], "4");
    }

    #[test]
    fn waits_parse_and_are_bounded() {
        assert_eq!(parse_wait("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_wait("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_wait("7").unwrap(), Duration::from_secs(7));
        assert!(parse_wait("6m").is_err());
        assert!(parse_wait("soon").is_err());
    }
}
