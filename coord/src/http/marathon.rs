//! Marathon's REST API (`/v2/…`) over the services area, for the fields services
//! support: apps (list, create, read, replace or change some fields, scale, restart,
//! remove, versions), their tasks, all tasks (JSON and the text form load balancers
//! read), deployments, the launch queue, `/v2/info` and `/v2/leader`. App JSON is
//! Marathon's; a field we do not support is refused by name.
//!
//! Marathon's ids are strings where ours are numbers: a deployment id is its number as
//! a string, an app's `version` the time its version was made (ISO 8601).

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use proto::clusterpb as pb;
use proto::clusterpb::services_server::Services as _;
use serde_json::{json, Map, Value};

use super::{body_json, ApiError, ApiResult, Http};
use crate::services::spec::normalize_id;

pub fn routes() -> Router<Http> {
    Router::new()
        .route("/v2/apps", get(list_apps).post(create_app))
        .route("/v2/apps/{*rest}", get(app_get).put(app_put).patch(app_put).delete(app_delete).post(app_post))
        .route("/v2/tasks", get(all_tasks))
        .route("/v2/tasks/delete", post(kill_tasks))
        .route("/v2/deployments", get(deployments))
        .route("/v2/deployments/{id}", delete(cancel_deployment))
        .route("/v2/queue", get(queue))
        .route("/v2/info", get(info))
        .route("/v2/leader", get(leader))
}

fn req<T>(t: T) -> tonic::Request<T> {
    tonic::Request::new(t)
}

fn iso(ms: u64) -> String {
    crate::jobs::schedule::show_utc(ms)
}

/// Marathon's task status for a task state as we show it (health included).
pub(crate) fn marathon_state(s: &str) -> &'static str {
    match s {
        "staging" => "TASK_STAGING",
        "starting" => "TASK_STARTING",
        "running" | "healthy" | "unhealthy" => "TASK_RUNNING",
        "killing" => "TASK_KILLING",
        "finished" => "TASK_FINISHED",
        "failed" => "TASK_FAILED",
        "killed" => "TASK_KILLED",
        "lost" => "TASK_LOST",
        _ => "TASK_UNKNOWN",
    }
}

/// Marathon's `ipAddresses` for a task's overlay address (none: empty).
pub(crate) fn ip_addresses(ip: &str) -> Vec<Value> {
    if ip.is_empty() {
        vec![]
    } else {
        vec![json!({"ipAddress": ip, "protocol": if ip.contains(':') { "IPv6" } else { "IPv4" }})]
    }
}

/// Marathon's deployment action for a deployment kind.
pub(crate) fn deployment_action(kind: &str) -> &'static str {
    match kind {
        "create" => "StartApplication",
        "remove" => "StopApplication",
        "scale" => "ScaleApplication",
        _ => "RestartApplication",
    }
}

pub fn task_json(t: &pb::TaskInfo) -> Value {
    let health: Vec<Value> = match t.state.as_str() {
        "healthy" => vec![json!({"alive": true, "taskId": t.id})],
        "unhealthy" => vec![json!({"alive": false, "taskId": t.id})],
        _ => vec![],
    };
    let ips = ip_addresses(&t.ip);
    json!({
        "id": t.id,
        "appId": t.service,
        "host": t.host,
        "slaveId": t.agent.to_string(),
        "ports": t.ports,
        "servicePorts": [],
        "ipAddresses": ips,
        "state": marathon_state(&t.state),
        "stagedAt": iso(t.staged_ms),
        "startedAt": if t.started_ms == 0 { Value::Null } else { iso(t.started_ms).into() },
        "version": t.version.to_string(),
        "healthCheckResults": health,
    })
}

fn app_json(s: &pb::ServiceInfo, tasks: Option<&[pb::TaskInfo]>) -> Value {
    let mut m: Map<String, Value> = match serde_json::from_str(&s.app_json) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    // Our one field beyond Marathon's: shown only when it is not the default, since
    // Marathon's client libraries refuse fields they do not know.
    if m.get("placement").and_then(Value::as_str) == Some("binpack") {
        m.remove("placement");
    }
    m.insert("version".into(), iso(s.version_ms).into());
    m.insert(
        "versionInfo".into(),
        json!({"lastConfigChangeAt": iso(s.version_ms), "lastScalingAt": iso(s.version_ms)}),
    );
    m.insert("instances".into(), s.instances.into());
    m.insert("tasksStaged".into(), s.staged.into());
    m.insert("tasksRunning".into(), s.running.into());
    m.insert("tasksHealthy".into(), s.healthy.into());
    m.insert("tasksUnhealthy".into(), s.unhealthy.into());
    let deps: Vec<Value> = if s.deployment != 0 { vec![json!({"id": s.deployment.to_string()})] } else { vec![] };
    m.insert("deployments".into(), deps.into());
    if let Some(t) = tasks {
        m.insert("tasks".into(), t.iter().map(task_json).collect::<Vec<_>>().into());
    }
    Value::Object(m)
}

fn change_json(c: &pb::ServiceChange, version_ms: u64) -> Value {
    json!({"version": iso(version_ms), "deploymentId": c.deployment.to_string()})
}

/// The app right after a write the leader accepted: a follower may apply it a moment
/// later, so a missing app is looked for again for up to 3 s.
async fn service_after_write(h: &Http, id: &str) -> ApiResult<pb::ServiceInfo> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        match service(h, id).await {
            Err(ApiError(StatusCode::NOT_FOUND, _)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await
            }
            r => return r,
        }
    }
}

async fn service(h: &Http, id: &str) -> ApiResult<pb::ServiceInfo> {
    Ok(h.services.get_service(req(pb::ServiceRef { id: id.to_string(), force: false })).await?.into_inner())
}

async fn tasks_of(h: &Http, id: &str) -> ApiResult<Vec<pb::TaskInfo>> {
    Ok(h.services
        .list_tasks(req(pb::ListTasksRequest { service: id.to_string(), agent: 0, all: false }))
        .await?
        .into_inner()
        .tasks)
}

async fn list_apps(State(h): State<Http>, Query(q): Query<Vec<(String, String)>>) -> ApiResult<Json<Value>> {
    let (mut embed_tasks, mut id, mut cmd) = (false, None, None);
    for (k, v) in q {
        match k.as_str() {
            // Repeated by clients (`embed=apps.tasks&embed=apps.counts`); counts are always in.
            "embed" => embed_tasks |= v.contains("tasks"),
            "id" => id = Some(v),
            "cmd" => cmd = Some(v),
            other => {
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    format!("query parameter {other:?} is not supported (supported: embed, id, cmd)"),
                ))
            }
        }
    }
    let all = h.services.list_services(req(pb::ListServicesRequest {})).await?.into_inner().services;
    let mut by_app: std::collections::BTreeMap<String, Vec<pb::TaskInfo>> = std::collections::BTreeMap::new();
    if embed_tasks {
        let tasks =
            h.services.list_tasks(req(pb::ListTasksRequest { service: String::new(), agent: 0, all: false })).await?;
        for t in tasks.into_inner().tasks {
            by_app.entry(t.service.clone()).or_default().push(t);
        }
    }
    let mut apps = Vec::new();
    for s in all.iter().filter(|s| !s.deleting) {
        let skip = id.as_ref().is_some_and(|i| !s.id.contains(i.as_str()))
            || cmd.as_ref().is_some_and(|c| !s.app_json.contains(c.as_str()));
        if skip {
            continue;
        }
        let tasks = embed_tasks.then(|| by_app.remove(&s.id).unwrap_or_default());
        apps.push(app_json(s, tasks.as_deref()));
    }
    Ok(Json(json!({"apps": apps})))
}

/// `force` and `scale`; any other parameter (Marathon's `host`, `wipe`,
/// `partialUpdate`) is refused by name, never ignored.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ForceQuery {
    force: Option<String>,
    scale: Option<String>,
}

/// A boolean query parameter as clients spell it (`true`, `True`, `1`; Python sends
/// `False`).
fn flag(name: &str, v: &Option<String>) -> ApiResult<bool> {
    match v.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("false") | Some("0") | Some("") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(o) => Err(ApiError(StatusCode::BAD_REQUEST, format!("{name}={o:?}: use true or false"))),
    }
}

impl ForceQuery {
    fn force(&self) -> ApiResult<bool> {
        flag("force", &self.force)
    }

    fn scale(&self) -> ApiResult<bool> {
        flag("scale", &self.scale)
    }
}

async fn create_app(State(h): State<Http>, body: Bytes) -> ApiResult<Response> {
    body_json(&body)?;
    let c = h
        .services
        .create_service(req(pb::PutServiceRequest { app_json: body.to_vec(), force: false }))
        .await?
        .into_inner();
    let s = service_after_write(&h, &c.id).await?;
    let mut r = (StatusCode::CREATED, Json(app_json(&s, None))).into_response();
    if let Ok(v) = header::HeaderValue::from_str(&format!("/v2/apps{}", c.id)) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    Ok(r)
}

/// `{id}`, `{id}/tasks`, `{id}/restart`, `{id}/versions` under `/v2/apps/`.
fn split(rest: &str) -> (String, &str) {
    for suffix in ["/tasks", "/restart", "/versions"] {
        if let Some(id) = rest.strip_suffix(suffix) {
            return (normalize_id(id), &suffix[1..]);
        }
    }
    (normalize_id(rest), "")
}

async fn app_get(State(h): State<Http>, Path(rest): Path<String>, headers: HeaderMap) -> ApiResult<Response> {
    let (id, sub) = split(&rest);
    match sub {
        "" => {
            let s = service(&h, &id).await?;
            let t = tasks_of(&h, &id).await?;
            Ok(Json(json!({"app": app_json(&s, Some(&t))})).into_response())
        }
        "tasks" => {
            service(&h, &id).await?;
            let t = tasks_of(&h, &id).await?;
            if wants_text(&headers) {
                return Ok(tasks_text(&[(id, t)]));
            }
            Ok(Json(json!({"tasks": t.iter().map(task_json).collect::<Vec<_>>()})).into_response())
        }
        "versions" => {
            let s = service(&h, &id).await?;
            Ok(Json(json!({"versions": [iso(s.version_ms)]})).into_response())
        }
        _ => Err(ApiError(StatusCode::METHOD_NOT_ALLOWED, format!("GET /v2/apps{id}/{sub} is not supported"))),
    }
}

/// Replaces some of an app's fields (Marathon's PUT and PATCH both merge the given fields
/// into the current definition); `{"instances": n}` alone is a scale.
async fn app_put(
    State(h): State<Http>,
    Path(rest): Path<String>,
    Query(q): Query<ForceQuery>,
    method: Method,
    body: Bytes,
) -> ApiResult<Response> {
    let (id, sub) = split(&rest);
    if !sub.is_empty() {
        return Err(ApiError(StatusCode::METHOD_NOT_ALLOWED, format!("{method} /v2/apps{id}/{sub} is not supported")));
    }
    let force = q.force()?;
    let Value::Object(given) = body_json(&body)? else {
        return Err(ApiError(StatusCode::BAD_REQUEST, "an app definition is a JSON object".into()));
    };
    if given.contains_key("version") {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            "a rollback by version is not supported: send the old definition, or cancel the deployment \
             (DELETE /v2/deployments/{id})"
                .into(),
        ));
    }
    if let Some(other) = given.get("id").and_then(Value::as_str) {
        if normalize_id(other) != id {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("id {other:?} in the body differs from {id:?} in the path"),
            ));
        }
    }
    let current = match service(&h, &id).await {
        Ok(s) => Some(s),
        Err(ApiError(StatusCode::NOT_FOUND, _)) if method == Method::PUT => None,
        Err(e) => return Err(e),
    };
    let Some(current) = current else {
        // PUT of an app that does not exist creates it.
        let mut app = given;
        app.insert("id".into(), id.clone().into());
        let c = h
            .services
            .create_service(req(pb::PutServiceRequest { app_json: Value::Object(app).to_string().into_bytes(), force }))
            .await?
            .into_inner();
        // Created, as Marathon answers a PUT that made the app.
        let body = Json(change_json(&c, service_after_write(&h, &c.id).await?.version_ms));
        return Ok((StatusCode::CREATED, [(header::LOCATION, format!("/v2/apps{id}"))], body).into_response());
    };
    if given.len() == 1 && given.contains_key("instances")
        || given.len() == 2 && given.contains_key("instances") && given.contains_key("id")
    {
        let n = given["instances"].as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| {
            ApiError(StatusCode::UNPROCESSABLE_ENTITY, "instances must be a non-negative integer".into())
        })?;
        let c = h
            .services
            .scale_service(req(pb::ScaleServiceRequest { id: id.clone(), instances: n, force }))
            .await?
            .into_inner();
        return Ok(Json(change_json(&c, service(&h, &id).await?.version_ms)).into_response());
    }
    let mut app: Map<String, Value> = match serde_json::from_str(&current.app_json) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    app.insert("instances".into(), current.instances.into());
    for (k, v) in given {
        app.insert(k, v);
    }
    app.insert("id".into(), id.clone().into());
    let c = h
        .services
        .update_service(req(pb::PutServiceRequest { app_json: Value::Object(app).to_string().into_bytes(), force }))
        .await?
        .into_inner();
    Ok(Json(change_json(&c, service(&h, &id).await?.version_ms)).into_response())
}

async fn app_delete(
    State(h): State<Http>,
    Path(rest): Path<String>,
    Query(q): Query<ForceQuery>,
) -> ApiResult<Json<Value>> {
    let (id, sub) = split(&rest);
    match sub {
        "" => {
            let s = service(&h, &id).await?;
            let c = h.services.remove_service(req(pb::ServiceRef { id, force: q.force()? })).await?.into_inner();
            Ok(Json(change_json(&c, s.version_ms)))
        }
        // Marathon kills the app's tasks (they are replaced); with scale=true it also
        // scales the app down by as many, here to 0.
        "tasks" => {
            let force = q.force()?;
            let c = if q.scale()? {
                h.services.scale_service(req(pb::ScaleServiceRequest { id: id.clone(), instances: 0, force })).await?
            } else {
                h.services.restart_service(req(pb::ServiceRef { id: id.clone(), force })).await?
            }
            .into_inner();
            Ok(Json(change_json(&c, service(&h, &id).await?.version_ms)))
        }
        _ => Err(ApiError(StatusCode::METHOD_NOT_ALLOWED, format!("DELETE /v2/apps{id}/{sub} is not supported"))),
    }
}

async fn app_post(
    State(h): State<Http>,
    Path(rest): Path<String>,
    Query(q): Query<ForceQuery>,
) -> ApiResult<Json<Value>> {
    let (id, sub) = split(&rest);
    if sub != "restart" {
        return Err(ApiError(StatusCode::METHOD_NOT_ALLOWED, format!("POST /v2/apps{id}/{sub} is not supported")));
    }
    let c = h.services.restart_service(req(pb::ServiceRef { id: id.clone(), force: q.force()? })).await?.into_inner();
    Ok(Json(change_json(&c, service(&h, &id).await?.version_ms)))
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct KillQuery {
    force: Option<String>,
    scale: Option<String>,
    wipe: Option<String>,
}

/// Kills the tasks named in `{"ids": […]}`; their apps replace them. `scale=true`
/// (kill and shrink the app) and `wipe=true` are refused: scale the app instead.
async fn kill_tasks(State(h): State<Http>, Query(q): Query<KillQuery>, body: Bytes) -> ApiResult<Json<Value>> {
    flag("force", &q.force)?;
    if flag("scale", &q.scale)? {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            "scale=true is not supported: kill the tasks (they are replaced), or set the app's instances".into(),
        ));
    }
    if flag("wipe", &q.wipe)? {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            "wipe=true is not supported (tasks keep no reservations)".into(),
        ));
    }
    let v = body_json(&body)?;
    let ids: Vec<String> = match v.get("ids").and_then(Value::as_array) {
        Some(a) if v.as_object().is_some_and(|o| o.len() == 1) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError(StatusCode::UNPROCESSABLE_ENTITY, "ids: a list of task id strings".into()))?,
        _ => {
            return Err(ApiError(
                StatusCode::UNPROCESSABLE_ENTITY,
                "the body is {\"ids\": [task id, …]} and nothing else".into(),
            ))
        }
    };
    if ids.is_empty() || ids.len() > crate::services::MAX_BATCH {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("ids: 1 to {} task ids", crate::services::MAX_BATCH),
        ));
    }
    let mut killed = Vec::new();
    for id in &ids {
        killed.push(h.services.get_task(req(pb::TaskRef { id: id.clone() })).await?.into_inner());
    }
    h.services.kill_tasks(req(pb::KillTasksRequest { task_ids: ids })).await?;
    Ok(Json(json!({"tasks": killed.iter().map(task_json).collect::<Vec<_>>()})))
}

fn wants_text(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/plain") && !a.contains("json"))
}

/// Marathon's text form: `<app> <servicePort> <host:port> …` per app and port index.
fn tasks_text(apps: &[(String, Vec<pb::TaskInfo>)]) -> Response {
    let mut s = String::new();
    for (id, tasks) in apps {
        let running: Vec<&pb::TaskInfo> = tasks.iter().filter(|t| marathon_state(&t.state) == "TASK_RUNNING").collect();
        let ports = running.iter().map(|t| t.ports.len()).max().unwrap_or(0);
        for i in 0..ports {
            let name = id.trim_start_matches('/').replace('/', "_");
            s += &format!("{name} 0");
            for t in &running {
                if let Some(p) = t.ports.get(i) {
                    s += &format!(" {}:{p}", t.host);
                }
            }
            s.push('\n');
        }
    }
    ([(header::CONTENT_TYPE, "text/plain")], s).into_response()
}

#[derive(serde::Deserialize, Default)]
struct TasksQuery {
    status: Option<String>,
}

async fn all_tasks(State(h): State<Http>, Query(q): Query<TasksQuery>, headers: HeaderMap) -> ApiResult<Response> {
    let tasks = h
        .services
        .list_tasks(req(pb::ListTasksRequest { service: String::new(), agent: 0, all: false }))
        .await?
        .into_inner()
        .tasks;
    // Services' tasks only; a job's runs are not Marathon's.
    let tasks: Vec<pb::TaskInfo> = tasks
        .into_iter()
        .filter(|t| t.service.starts_with('/'))
        .filter(|t| match q.status.as_deref() {
            None => true,
            Some("running") => marathon_state(&t.state) == "TASK_RUNNING",
            Some("staging") => matches!(t.state.as_str(), "staging" | "starting"),
            Some(_) => false,
        })
        .collect();
    if wants_text(&headers) {
        let mut grouped: std::collections::BTreeMap<String, Vec<pb::TaskInfo>> = std::collections::BTreeMap::new();
        for t in tasks {
            grouped.entry(t.service.clone()).or_default().push(t);
        }
        let by_app: Vec<(String, Vec<pb::TaskInfo>)> = grouped.into_iter().collect();
        return Ok(tasks_text(&by_app));
    }
    Ok(Json(json!({"tasks": tasks.iter().map(task_json).collect::<Vec<_>>()})).into_response())
}

async fn deployments(State(h): State<Http>) -> ApiResult<Json<Value>> {
    let ds = h.services.list_deployments(req(pb::ListDeploymentsRequest {})).await?.into_inner().deployments;
    let out: Vec<Value> = ds
        .iter()
        .map(|d| {
            let action = deployment_action(&d.kind);
            json!({
                "id": d.id.to_string(),
                "version": iso(d.started_ms),
                "affectedApps": [d.service],
                "steps": [{"actions": [{"action": action, "app": d.service}]}],
                "currentActions": [{"action": action, "app": d.service, "readinessCheckResults": []}],
                "currentStep": 1,
                "totalSteps": 1,
            })
        })
        .collect();
    Ok(Json(Value::Array(out)))
}

async fn cancel_deployment(
    State(h): State<Http>,
    Path(id): Path<String>,
    Query(q): Query<ForceQuery>,
) -> ApiResult<Json<Value>> {
    let n: u64 = id.parse().map_err(|_| ApiError(StatusCode::NOT_FOUND, format!("deployment {id:?} not found")))?;
    let c =
        h.services.cancel_deployment(req(pb::CancelDeploymentRequest { id: n, force: q.force()? })).await?.into_inner();
    Ok(Json(json!({"deploymentId": c.deployment.to_string(), "version": c.version.to_string()})))
}

/// Apps with tasks still to place: how many, and whether backoff holds them.
async fn queue(State(h): State<Http>) -> ApiResult<Json<Value>> {
    let all = h.services.list_services(req(pb::ListServicesRequest {})).await?.into_inner().services;
    let now = crate::node::now_ms();
    let q: Vec<Value> = all
        .iter()
        .filter(|s| !s.deleting && s.staged + s.running < s.instances)
        .map(|s| {
            json!({
                "app": app_json(s, None),
                "count": s.instances - s.staged - s.running,
                "delay": {"overdue": s.delay_until_ms <= now, "timeLeftSeconds": s.delay_until_ms.saturating_sub(now) / 1000},
            })
        })
        .collect();
    Ok(Json(json!({"queue": q})))
}

async fn info(State(h): State<Http>) -> Json<Value> {
    let (leader_id, leader_addr) = h.node.leader();
    let cluster_id = h.node.tls.identity().map(|i| i.cluster_id).unwrap_or_default();
    Json(json!({
        "name": "cluster",
        "version": env!("CARGO_PKG_VERSION"),
        "elected": leader_id == Some(h.node.id),
        "leader": leader_addr,
        "frameworkId": cluster_id,
        "marathon_config": {"master": "cluster", "hostname": h.node.advertise_addr.clone()},
        "http_config": {"https_port": Value::Null},
        // Marathon's clients expect the object; there is no ZooKeeper to describe.
        "zookeeper_config": {},
    }))
}

async fn leader(State(h): State<Http>) -> ApiResult<Json<Value>> {
    match h.node.leader().1 {
        Some(addr) => Ok(Json(json!({"leader": addr}))),
        None => Err(ApiError(StatusCode::NOT_FOUND, "no leader is known".into())),
    }
}
