//! `cluster job …`: Chronos jobs, their runs and their history.

use std::path::Path;

use agent::output::{json, table, Format};
use client::Client;
use proto::clusterpb as pb;
use serde_json::{json, Value};

use super::services::read_input;

fn run_json(r: &pb::RunInfo) -> Value {
    json!({
        "job": r.job, "instant_ms": r.instant_ms, "instant": r.instant, "trigger": r.trigger,
        "state": r.state, "attempts": r.attempts, "tasks": r.tasks,
        "host": (!r.host.is_empty()).then_some(&r.host), "agent": (r.agent != 0).then_some(r.agent),
        "exit_code": r.has_exit_code.then_some(r.exit_code),
        "reason": (!r.reason.is_empty()).then_some(&r.reason),
        "created_ms": r.created_ms, "started_ms": r.started_ms, "ended_ms": r.ended_ms,
        "duration_ms": r.duration_ms, "satisfied_by": r.satisfied_by,
    })
}

fn job_json(j: &pb::JobInfo) -> Value {
    let spec: Value = serde_json::from_str(&j.job_json).unwrap_or(Value::Null);
    json!({
        "name": j.name, "version": j.version, "schedule_kind": j.schedule_kind,
        "next_run_ms": (j.next_run_ms != 0).then_some(j.next_run_ms),
        "next_run": (!j.next_run.is_empty()).then_some(&j.next_run),
        "disabled": j.disabled, "deleting": j.deleting,
        "success_count": j.success_count, "error_count": j.error_count, "skipped_count": j.skipped_count,
        "errors_since_success": j.errors_since_success,
        "last_success_ms": j.last_success_ms, "last_error_ms": j.last_error_ms,
        "last_run_state": (!j.last_run_state.is_empty()).then_some(&j.last_run_state),
        "active": j.active.iter().map(run_json).collect::<Vec<_>>(),
        "job": spec,
    })
}

pub async fn create(c: &Client, f: Format, file: &Path) -> anyhow::Result<()> {
    let ch = c.create_job(read_input(file)?).await?;
    let j = c.get_job(&ch.name).await?;
    if f == Format::Json {
        json(&job_json(&j));
    } else if j.next_run.is_empty() {
        println!("{}: created ({})", ch.name, j.schedule_kind);
    } else {
        println!("{}: created, next run {}", ch.name, j.next_run);
    }
    Ok(())
}

pub async fn update(c: &Client, f: Format, file: &Path) -> anyhow::Result<()> {
    let ch = c.update_job(read_input(file)?).await?;
    if f == Format::Json {
        json(&json!({"name": ch.name, "version": ch.version}));
    } else {
        println!("{}: version {}", ch.name, ch.version);
    }
    Ok(())
}

pub async fn remove(c: &Client, f: Format, name: &str) -> anyhow::Result<()> {
    let ch = c.remove_job(name).await?;
    if f == Format::Json {
        json(&json!({"name": ch.name, "removing": true}));
    } else {
        println!("{}: removed (a run going is being killed)", ch.name);
    }
    Ok(())
}

pub async fn run(c: &Client, f: Format, name: &str) -> anyhow::Result<()> {
    let r = c.run_job(name).await?;
    if f == Format::Json {
        json(&json!({"job": r.job, "instant_ms": r.instant_ms}));
    } else {
        println!("{}: run {} started (`cluster job history {}` follows it)", r.job, r.instant_ms, r.job);
    }
    Ok(())
}

pub async fn list(c: &Client, f: Format) -> anyhow::Result<()> {
    let jobs = c.list_jobs().await?;
    if f == Format::Json {
        json(&json!({"jobs": jobs.iter().map(job_json).collect::<Vec<_>>()}));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            let spec: Value = serde_json::from_str(&j.job_json).unwrap_or(Value::Null);
            let when = match j.schedule_kind.as_str() {
                "iso8601" => spec["schedule"].as_str().unwrap_or("").to_string(),
                "cron" => spec["cron"].as_str().unwrap_or("").to_string(),
                _ => format!("after {}", spec["parents"].as_array().map_or(0, Vec::len)),
            };
            let state = if j.deleting {
                "removing".to_string()
            } else if j.disabled {
                "disabled".to_string()
            } else if !j.active.is_empty() {
                j.active.iter().map(|r| r.state.clone()).collect::<Vec<_>>().join(",")
            } else {
                "idle".to_string()
            };
            vec![
                j.name.clone(),
                when,
                if j.next_run.is_empty() { "-".into() } else { j.next_run.clone() },
                state,
                if j.last_run_state.is_empty() { "-".into() } else { j.last_run_state.clone() },
                format!("{}/{}/{}", j.success_count, j.error_count, j.skipped_count),
            ]
        })
        .collect();
    table(&["NAME", "SCHEDULE", "NEXT RUN", "STATE", "LAST", "OK/FAILED/SKIPPED"], &rows);
    Ok(())
}

pub async fn inspect(c: &Client, f: Format, name: &str) -> anyhow::Result<()> {
    let j = c.get_job(name).await?;
    if f == Format::Json {
        json(&job_json(&j));
        return Ok(());
    }
    println!("name:      {}", j.name);
    println!("version:   {}", j.version);
    println!("next run:  {}", if j.next_run.is_empty() { "-" } else { &j.next_run });
    println!("runs:      {} succeeded, {} failed, {} skipped", j.success_count, j.error_count, j.skipped_count);
    for r in &j.active {
        println!("going:     {} ({}, attempt {}, tasks {})", r.instant, r.state, r.attempts, r.tasks.join(" "));
    }
    let spec: Value = serde_json::from_str(&j.job_json).unwrap_or(Value::Null);
    println!("job:\n{}", serde_json::to_string_pretty(&spec)?);
    Ok(())
}

pub async fn history(c: &Client, f: Format, name: &str) -> anyhow::Result<()> {
    let runs = c.job_history(name).await?;
    if f == Format::Json {
        json(&json!({"runs": runs.iter().map(run_json).collect::<Vec<_>>()}));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.instant.clone(),
                r.trigger.clone(),
                r.state.clone(),
                r.attempts.to_string(),
                if r.has_exit_code { r.exit_code.to_string() } else { "-".into() },
                if r.duration_ms > 0 { format!("{:.1}s", r.duration_ms as f64 / 1000.0) } else { "-".into() },
                r.tasks.last().cloned().unwrap_or_else(|| "-".into()),
                r.reason.clone(),
            ]
        })
        .collect();
    table(&["INSTANT", "TRIGGER", "STATE", "ATTEMPTS", "EXIT", "TOOK", "LAST TASK (task logs)", "REASON"], &rows);
    Ok(())
}
