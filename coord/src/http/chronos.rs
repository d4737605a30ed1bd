//! Chronos' REST API (`/v1/scheduler/…`) over the jobs area: list and search jobs, create
//! or replace one (`iso8601` for a schedule, `dependency` for parents), run one now,
//! delete one, and the dependency graph as Graphviz dot and as Chronos' CSV.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use proto::clusterpb as pb;
use proto::clusterpb::jobs_server::Jobs as _;
use serde_json::{Map, Value};

use super::{body_json, ApiError, ApiResult, Http};

pub fn routes() -> Router<Http> {
    Router::new()
        .route("/v1/scheduler/jobs", get(list))
        .route("/v1/scheduler/jobs/search", get(search))
        .route("/v1/scheduler/iso8601", post(put_scheduled).put(put_scheduled))
        .route("/v1/scheduler/dependency", post(put_dependent).put(put_dependent))
        .route("/v1/scheduler/job/{name}", put(run).delete(remove).get(one))
        .route("/v1/scheduler/graph/dot", get(dot))
        .route("/v1/scheduler/graph/csv", get(csv))
}

fn iso_ms(ms: u64) -> String {
    if ms == 0 {
        String::new()
    } else {
        crate::jobs::schedule::show_utc(ms)
    }
}

/// A job as Chronos shows it: its definition plus its counts and last results.
fn chronos_job(j: &pb::JobInfo) -> Value {
    let mut m: Map<String, Value> = match serde_json::from_str(&j.job_json) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    m.insert("successCount".into(), j.success_count.into());
    m.insert("errorCount".into(), j.error_count.into());
    m.insert("errorsSinceLastSuccess".into(), j.errors_since_success.into());
    m.insert("lastSuccess".into(), iso_ms(j.last_success_ms).into());
    m.insert("lastError".into(), iso_ms(j.last_error_ms).into());
    m.insert("nextRun".into(), j.next_run.clone().into());
    Value::Object(m)
}

async fn all(h: &Http) -> ApiResult<Vec<pb::JobInfo>> {
    Ok(h.jobs.list_jobs(tonic::Request::new(pb::ListJobsRequest {})).await?.into_inner().jobs)
}

async fn list(State(h): State<Http>) -> ApiResult<Json<Value>> {
    Ok(Json(Value::Array(all(&h).await?.iter().map(chronos_job).collect())))
}

#[derive(serde::Deserialize)]
struct SearchQuery {
    name: Option<String>,
    command: Option<String>,
    any: Option<String>,
}

async fn search(State(h): State<Http>, Query(q): Query<SearchQuery>) -> ApiResult<Json<Value>> {
    let jobs = all(&h).await?;
    let hit = |j: &pb::JobInfo| {
        let spec: Value = serde_json::from_str(&j.job_json).unwrap_or(Value::Null);
        let cmd = spec["command"].as_str().unwrap_or("").to_lowercase();
        let name = j.name.to_lowercase();
        q.name.as_ref().is_none_or(|n| name.contains(&n.to_lowercase()))
            && q.command.as_ref().is_none_or(|c| cmd.contains(&c.to_lowercase()))
            && q.any.as_ref().is_none_or(|a| name.contains(&a.to_lowercase()) || cmd.contains(&a.to_lowercase()))
    };
    Ok(Json(Value::Array(jobs.iter().filter(|j| hit(j)).map(chronos_job).collect())))
}

async fn one(State(h): State<Http>, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let j = h.jobs.get_job(tonic::Request::new(pb::JobRef { name })).await?.into_inner();
    Ok(Json(chronos_job(&j)))
}

/// Creates the job, or replaces it when one of that name exists (Chronos' POST does
/// both).
async fn put_job(h: &Http, body: &[u8], dependent: bool) -> ApiResult<StatusCode> {
    let v = body_json(body)?;
    let has_parents = v.get("parents").and_then(Value::as_array).is_some_and(|p| !p.is_empty());
    if has_parents != dependent {
        let why = if dependent {
            "a dependent job needs parents (a scheduled one goes to /v1/scheduler/iso8601)"
        } else {
            "a job with parents goes to /v1/scheduler/dependency"
        };
        return Err(ApiError(StatusCode::BAD_REQUEST, why.into()));
    }
    // Replace the job of that name, or create it: decided by the leader's answer, not by
    // this master's (possibly older) state.
    let put = || tonic::Request::new(pb::PutJobRequest { job_json: body.to_vec() });
    match h.jobs.update_job(put()).await {
        Err(s) if s.code() == tonic::Code::NotFound => {
            h.jobs.create_job(put()).await?;
        }
        r => {
            r?;
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn put_scheduled(State(h): State<Http>, body: Bytes) -> ApiResult<StatusCode> {
    put_job(&h, &body, false).await
}

async fn put_dependent(State(h): State<Http>, body: Bytes) -> ApiResult<StatusCode> {
    put_job(&h, &body, true).await
}

async fn run(State(h): State<Http>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    h.jobs.run_job(tonic::Request::new(pb::JobRef { name })).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn remove(State(h): State<Http>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    h.jobs.remove_job(tonic::Request::new(pb::JobRef { name })).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn parents_of(j: &pb::JobInfo) -> Vec<String> {
    let spec: Value = serde_json::from_str(&j.job_json).unwrap_or(Value::Null);
    spec["parents"]
        .as_array()
        .map(|p| p.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// Graphviz: an edge from each parent to each child.
async fn dot(State(h): State<Http>) -> ApiResult<Response> {
    let jobs = all(&h).await?;
    let mut s = String::from("digraph G {\n");
    for j in &jobs {
        s += &format!("  \"{}\";\n", j.name);
        for p in parents_of(j) {
            s += &format!("  \"{p}\" -> \"{}\";\n", j.name);
        }
    }
    s += "}\n";
    Ok(([(header::CONTENT_TYPE, "text/vnd.graphviz")], s).into_response())
}

/// Chronos' CSV: `node,<name>,<last: success|failure|fresh>,<state: idle|running|queued>`
/// per job, then `link,<parent>,<child>` per dependency.
async fn csv(State(h): State<Http>) -> ApiResult<Response> {
    let jobs = all(&h).await?;
    let mut s = String::new();
    for j in &jobs {
        let last = match j.last_run_state.as_str() {
            "succeeded" => "success",
            "failed" => "failure",
            _ => "fresh",
        };
        let state = if j.active.iter().any(|r| r.state == "running") {
            "running"
        } else if j.active.is_empty() {
            "idle"
        } else {
            "queued"
        };
        s += &format!("node,{},{last},{state}\n", j.name);
    }
    for j in &jobs {
        for p in parents_of(j) {
            s += &format!("link,{p},{}\n", j.name);
        }
    }
    Ok(([(header::CONTENT_TYPE, "text/csv")], s).into_response())
}
