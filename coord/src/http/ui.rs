//! The web dashboard: its files, built into the binary (no CDN; it works offline), and
//! the JSON it reads besides Marathon's and Chronos' APIs: the masters with their lag,
//! agents with the resources their tasks use, networks, jobs with their recent runs,
//! and task logs as a text stream.
//!
//! The files are open (the login page must load without a credential; they hold no
//! data); everything they fetch needs a reader, like the rest of the HTTP face. The
//! page keeps the token in the tab's session storage and sends it as a bearer token.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt;
use proto::clusterpb as pb;
use proto::clusterpb::cluster_admin_server::ClusterAdmin as _;
use proto::clusterpb::jobs_server::Jobs as _;
use proto::clusterpb::services_server::Services as _;
use serde_json::{json, Value};

use super::{ApiResult, Http};

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const STYLE_CSS: &str = include_str!("ui/style.css");

/// Whether `path` is one of the dashboard's files (served without a credential).
pub fn is_static(path: &str) -> bool {
    matches!(path, "/" | "/ui" | "/ui/" | "/ui/app.js" | "/ui/style.css")
}

pub fn routes() -> Router<Http> {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/ui/") }))
        .route("/ui", get(|| async { Redirect::temporary("/ui/") }))
        .route("/ui/", get(|| async { file("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/ui/app.js", get(|| async { file("text/javascript; charset=utf-8", APP_JS) }))
        .route("/ui/style.css", get(|| async { file("text/css; charset=utf-8", STYLE_CSS) }))
        .route("/v1/ui/overview", get(overview))
        .route("/v1/ui/history", get(history))
        .route("/v1/ui/agents", get(agents))
        .route("/v1/ui/networks", get(networks))
        .route("/v1/ui/jobs", get(jobs))
        .route("/v1/tasks/{id}/logs", get(task_logs))
}

fn file(ctype: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, ctype),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-content-type-options"), "nosniff"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'",
            ),
        ],
        body,
    )
        .into_response()
}

/// How often the charts' history is sampled, and how much of it is kept (an hour).
pub const HISTORY_EVERY_S: u64 = 5;
pub const HISTORY_KEPT: usize = 720;

/// The replicated counters the charts draw, sampled on this master since it started, so
/// that a page opened now shows the last hour, not only what it saw itself.
#[derive(Default)]
pub struct History {
    samples: std::sync::Mutex<std::collections::VecDeque<Value>>,
}

impl History {
    /// Samples `node` every `HISTORY_EVERY_S` until the node is gone.
    pub fn spawn(node: std::sync::Weak<crate::node::CoordNode>) -> std::sync::Arc<History> {
        let h = std::sync::Arc::new(History::default());
        let me = h.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(HISTORY_EVERY_S));
            loop {
                tick.tick().await;
                let Some(node) = node.upgrade() else { return };
                let m = node.metrics();
                let launched = node.view(|v| v.services().tasks_launched());
                let sample = json!({
                    "t": crate::node::now_ms(),
                    "c": {"committed": m.local_committed.map_or(0, |l| l.index), "tasksLaunched": launched,
                          "term": m.current_term},
                });
                let mut s = me.samples.lock().expect("history lock");
                s.push_back(sample);
                while s.len() > HISTORY_KEPT {
                    s.pop_front();
                }
            }
        });
        h
    }
}

async fn history(State(h): State<Http>) -> Json<Value> {
    let samples: Vec<Value> = h.history.samples.lock().expect("history lock").iter().cloned().collect();
    Json(json!({"everyS": HISTORY_EVERY_S, "samples": samples}))
}

/// The masters (with lag, from the leader when it answers), this master's indexes, and
/// the replicated counters the charts turn into rates.
async fn overview(State(h): State<Http>) -> Json<Value> {
    let admin = crate::grpc::admin::Admin::new(h.node.clone());
    let status = admin.status(tonic::Request::new(pb::StatusRequest {})).await.map(|r| r.into_inner()).ok();
    // The leader's view carries lag; without a leader, this master's own view.
    let members = match tokio::time::timeout(
        std::time::Duration::from_secs(1),
        admin.members(tonic::Request::new(pb::MembersRequest {})),
    )
    .await
    {
        Ok(Ok(m)) => m.into_inner().members,
        _ => status.as_ref().map(|s| s.members.clone()).unwrap_or_default(),
    };
    let (launched, tasks_running, revision) = h.node.view(|v| {
        (v.services().tasks_launched(), v.services().tasks().filter(|t| !t.state.is_terminal()).count(), v.revision())
    });
    let m = crate::metrics::global();
    let members: Vec<Value> = members
        .iter()
        .map(|x| {
            json!({
                "id": x.node_id, "name": x.name, "addr": x.addr, "role": x.role, "leader": x.is_leader,
                "matched": x.matched_index, "lag": x.lag,
            })
        })
        .collect();
    let s = status.unwrap_or_default();
    Json(json!({
        "node": {"id": s.node_id, "state": s.state, "term": s.term, "commit": s.commit_index, "applied": s.applied_index,
                 "lastLog": s.last_log_index, "snapshot": s.snapshot_index},
        "clusterId": s.cluster_id,
        // The master's clock: the charts put its samples beside the history's.
        "nowMs": crate::node::now_ms(),
        "leader": {"id": s.leader_id, "addr": s.leader_addr},
        "members": members,
        "counters": {
            "committed": s.commit_index.unwrap_or(0),
            "revision": revision,
            "tasksLaunched": launched,
            "tasksActive": tasks_running,
            "term": s.term,
            "leaderChangesSeen": m.leader_changes.get(),
        },
    }))
}

/// Every registered node, with what its tasks take of what it offers.
async fn agents(State(h): State<Http>) -> Json<Value> {
    let out = h.node.view(|v| {
        let s = v.services();
        v.registry()
            .nodes
            .values()
            .map(|n| {
                let mut used = scheduler_core::Resources::default();
                let mut count = 0usize;
                let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
                for t in s.tasks_on(n.node_id) {
                    count += 1;
                    *by_state.entry(t.display_state()).or_default() += 1;
                    used = used.saturating_add(crate::scheduler::task_resources(s, t));
                }
                json!({
                    "id": n.node_id, "name": n.name, "addr": n.addr, "role": n.role.as_str(),
                    "state": n.state.as_str(), "availability": n.availability.as_str(), "labels": n.labels,
                    "used": {"cpus": used.cpus_milli as f64 / 1000.0, "memMb": used.mem_mb, "diskMb": used.disk_mb},
                    "total": {"cpus": n.resources.cpus_milli as f64 / 1000.0, "memMb": n.resources.memory_mb,
                              "diskMb": n.resources.disk_mb},
                    "tasks": count, "tasksByState": by_state,
                })
            })
            .collect::<Vec<_>>()
    });
    Json(json!({"agents": out}))
}

async fn networks(State(h): State<Http>) -> Json<Value> {
    let out = h.node.view(|v| {
        v.ipam()
            .networks
            .values()
            .map(|n| {
                let pools: Vec<Value> = n
                    .pools
                    .iter()
                    .map(|p| {
                        json!({"subnet": p.subnet.to_string(), "usable": p.usable() as u64,
                               "allocated": p.allocated as u64, "quarantined": p.quarantined as u64})
                    })
                    .collect();
                json!({"name": n.name, "pools": pools})
            })
            .collect::<Vec<_>>()
    });
    Json(json!({"networks": out}))
}

/// Jobs with their next run and their newest runs.
async fn jobs(State(h): State<Http>) -> ApiResult<Json<Value>> {
    const RUNS_SHOWN: usize = 10;
    let jobs = h.jobs.list_jobs(tonic::Request::new(pb::ListJobsRequest {})).await?.into_inner().jobs;
    let mut out = Vec::new();
    for j in jobs {
        let runs = h
            .jobs
            .job_history(tonic::Request::new(pb::JobRef { name: j.name.clone() }))
            .await
            .map(|r| r.into_inner().runs)
            .unwrap_or_default();
        let recent: Vec<Value> = runs
            .iter()
            .rev()
            .take(RUNS_SHOWN)
            .map(|r| {
                json!({"instant": r.instant, "trigger": r.trigger, "state": r.state, "attempts": r.attempts,
                       "exitCode": r.has_exit_code.then_some(r.exit_code), "reason": r.reason,
                       "tasks": r.tasks, "durationMs": r.ended_ms.saturating_sub(r.started_ms)})
            })
            .collect();
        out.push(json!({
            "name": j.name, "kind": j.schedule_kind, "nextRun": j.next_run, "disabled": j.disabled,
            "successCount": j.success_count, "errorCount": j.error_count, "skippedCount": j.skipped_count,
            "lastRunState": j.last_run_state, "runs": recent,
        }));
    }
    Ok(Json(json!({"jobs": out})))
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    follow: Option<bool>,
    stderr: Option<bool>,
    tail_bytes: Option<u64>,
}

/// A task's stdout (or stderr) as plain text; with `follow=true`, streamed until the
/// task ends or the reader goes away.
async fn task_logs(State(h): State<Http>, Path(id): Path<String>, Query(q): Query<LogQuery>) -> ApiResult<Response> {
    let r = pb::TaskLogsRequest {
        task_id: id,
        follow: q.follow.unwrap_or(false),
        stderr: q.stderr.unwrap_or(false),
        tail_bytes: q.tail_bytes.unwrap_or(0),
        local_only: false,
    };
    let stream = h.services.task_logs(tonic::Request::new(r)).await?.into_inner();
    let body = stream.map(|c| match c {
        Ok(c) => Ok(axum::body::Bytes::from(c.data)),
        Err(s) => Err(std::io::Error::other(s.message().to_string())),
    });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}
