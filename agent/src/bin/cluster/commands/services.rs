//! `cluster service …`, `cluster task …` and `cluster deployment …`.

use std::path::Path;
use std::time::Duration;

use agent::output::{json, table, Format};
use anyhow::Context;
use client::Client;
use proto::clusterpb as pb;
use serde_json::{json, Value};

fn ms_ago(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let s = now.saturating_sub(ms) / 1000;
    match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}

fn service_json(s: &pb::ServiceInfo) -> Value {
    let app: Value = serde_json::from_str(&s.app_json).unwrap_or(Value::Null);
    json!({
        "id": s.id, "version": s.version, "instances": s.instances, "staged": s.staged,
        "running": s.running, "healthy": s.healthy, "unhealthy": s.unhealthy, "killing": s.killing,
        "deployment": (s.deployment != 0).then_some(s.deployment), "deleting": s.deleting,
        "created_ms": s.created_ms, "version_ms": s.version_ms,
        "delay_until_ms": (s.delay_until_ms != 0).then_some(s.delay_until_ms), "app": app,
    })
}

fn task_json(t: &pb::TaskInfo) -> Value {
    json!({
        "id": t.id, "service": t.service, "version": t.version, "agent": t.agent, "host": t.host,
        "ports": t.ports, "ip": (!t.ip.is_empty()).then_some(&t.ip), "network": (!t.network.is_empty()).then_some(&t.network),
        "state": t.state, "reason": (!t.reason.is_empty()).then_some(&t.reason), "exit_code": t.exit_code,
        "staged_ms": t.staged_ms, "started_ms": t.started_ms, "ended_ms": t.ended_ms, "updated_ms": t.updated_ms,
    })
}

fn deployment_json(d: &pb::DeploymentInfo) -> Value {
    json!({
        "id": d.id, "service": d.service, "kind": d.kind,
        "from_version": (d.from_version != 0).then_some(d.from_version), "from_instances": d.from_instances,
        "to_version": d.to_version, "to_instances": d.to_instances, "started_ms": d.started_ms,
        "healthy_new": d.healthy_new,
    })
}

/// A definition file's bytes (`-`: standard input): apps here, jobs in `jobs.rs`.
pub(crate) fn read_input(file: &Path) -> anyhow::Result<Vec<u8>> {
    if file == Path::new("-") {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
        return Ok(b);
    }
    std::fs::read(file).with_context(|| format!("reading {}", file.display()))
}

/// Prints the change, then (unless `detach`) the deployment's progress until it is done.
async fn follow(c: &Client, f: Format, change: pb::ServiceChange, detach: bool) -> anyhow::Result<()> {
    if f == Format::Json {
        json(
            &json!({"id": change.id, "version": change.version, "deployment": (change.deployment != 0).then_some(change.deployment)}),
        );
    } else if change.deployment != 0 {
        println!("{}: version {}, deployment {}", change.id, change.version, change.deployment);
    } else {
        println!("{}: done", change.id);
    }
    if detach || change.deployment == 0 {
        return Ok(());
    }
    let mut last = String::new();
    loop {
        let deps = c.list_deployments().await?;
        let Some(d) = deps.iter().find(|d| d.id == change.deployment) else {
            if f != Format::Json {
                println!("deployment {} done", change.deployment);
            }
            return Ok(());
        };
        let line = format!(
            "deployment {} ({}): {}/{} healthy on version {}",
            d.id, d.kind, d.healthy_new, d.to_instances, d.to_version
        );
        if line != last && f != Format::Json {
            println!("{line}");
            last = line;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn create(c: &Client, f: Format, file: &Path, detach: bool) -> anyhow::Result<()> {
    let change = c.create_service(read_input(file)?).await?;
    follow(c, f, change, detach).await
}

pub async fn update(c: &Client, f: Format, file: &Path, force: bool, detach: bool) -> anyhow::Result<()> {
    let change = c.update_service(read_input(file)?, force).await?;
    follow(c, f, change, detach).await
}

pub async fn scale(c: &Client, f: Format, id: &str, instances: u32, force: bool, detach: bool) -> anyhow::Result<()> {
    let change = c.scale_service(id, instances, force).await?;
    follow(c, f, change, detach).await
}

pub async fn restart(c: &Client, f: Format, id: &str, force: bool, detach: bool) -> anyhow::Result<()> {
    let change = c.restart_service(id, force).await?;
    follow(c, f, change, detach).await
}

pub async fn remove(c: &Client, f: Format, id: &str) -> anyhow::Result<()> {
    let change = c.remove_service(id).await?;
    if f == Format::Json {
        json(&json!({"id": change.id, "removing": true}));
    } else {
        println!("{}: removing (its tasks are being killed)", change.id);
    }
    Ok(())
}

pub async fn kill_tasks(c: &Client, f: Format, ids: &[String]) -> anyhow::Result<()> {
    let killed = c.kill_tasks(ids).await?;
    if f == Format::Json {
        json(&json!({"killed": killed}));
    } else {
        println!("killing {killed} task(s); their services start replacements");
    }
    Ok(())
}

pub async fn list(c: &Client, f: Format) -> anyhow::Result<()> {
    let services = c.list_services().await?;
    if f == Format::Json {
        json(&json!({"services": services.iter().map(service_json).collect::<Vec<_>>()}));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.version.to_string(),
                format!("{}/{}", s.running, s.instances),
                s.healthy.to_string(),
                s.staged.to_string(),
                if s.deleting {
                    "removing".into()
                } else if s.deployment != 0 {
                    format!("deploying ({})", s.deployment)
                } else {
                    "-".into()
                },
            ]
        })
        .collect();
    table(&["ID", "VERSION", "RUNNING", "HEALTHY", "STAGED", "DEPLOYMENT"], &rows);
    Ok(())
}

pub async fn inspect(c: &Client, f: Format, id: &str) -> anyhow::Result<()> {
    let s = c.get_service(id).await?;
    if f == Format::Json {
        json(&service_json(&s));
        return Ok(());
    }
    println!("id:         {}", s.id);
    println!("version:    {}", s.version);
    println!(
        "instances:  {} (running {}, healthy {}, unhealthy {}, staged {}, killing {})",
        s.instances, s.running, s.healthy, s.unhealthy, s.staged, s.killing
    );
    if s.deployment != 0 {
        println!("deployment: {}", s.deployment);
    }
    if s.delay_until_ms != 0 {
        println!("backoff:    launches wait until {} ms (after failures)", s.delay_until_ms);
    }
    let app: Value = serde_json::from_str(&s.app_json).unwrap_or(Value::Null);
    println!("app:\n{}", serde_json::to_string_pretty(&app)?);
    Ok(())
}

pub async fn tasks(c: &Client, f: Format, service: Option<&str>, all: bool) -> anyhow::Result<()> {
    let tasks = c.list_tasks(service.unwrap_or(""), 0, all).await?;
    if f == Format::Json {
        json(&json!({"tasks": tasks.iter().map(task_json).collect::<Vec<_>>()}));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            let ports: Vec<String> = t.ports.iter().map(u32::to_string).collect();
            vec![
                t.id.clone(),
                t.state.clone(),
                t.agent.to_string(),
                t.host.clone(),
                if t.ip.is_empty() { "-".into() } else { t.ip.clone() },
                if ports.is_empty() { "-".into() } else { ports.join(",") },
                t.version.to_string(),
                ms_ago(t.staged_ms),
                t.reason.clone(),
            ]
        })
        .collect();
    table(&["ID", "STATE", "AGENT", "HOST", "IP", "PORTS", "VERSION", "STAGED", "REASON"], &rows);
    Ok(())
}

pub async fn task_inspect(c: &Client, f: Format, id: &str) -> anyhow::Result<()> {
    let t = c.get_task(id).await?;
    if f == Format::Json {
        json(&task_json(&t));
    } else {
        println!("{}", serde_json::to_string_pretty(&task_json(&t))?);
    }
    Ok(())
}

/// Copies the log's bytes to stdout as they arrive.
pub async fn task_logs(c: &Client, id: &str, follow: bool, stderr: bool, tail_bytes: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let mut s = c.task_logs(id, follow, stderr, tail_bytes).await?;
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = s.message().await.map_err(client::ClientError::from)? {
        out.write_all(&chunk.data)?;
        out.flush()?;
    }
    Ok(())
}

pub async fn deployments(c: &Client, f: Format) -> anyhow::Result<()> {
    let deps = c.list_deployments().await?;
    if f == Format::Json {
        json(&json!({"deployments": deps.iter().map(deployment_json).collect::<Vec<_>>()}));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = deps
        .iter()
        .map(|d| {
            vec![
                d.id.to_string(),
                d.service.clone(),
                d.kind.clone(),
                if d.from_version == 0 { "-".into() } else { format!("v{} x{}", d.from_version, d.from_instances) },
                format!("v{} x{}", d.to_version, d.to_instances),
                format!("{}/{}", d.healthy_new, d.to_instances),
                ms_ago(d.started_ms),
            ]
        })
        .collect();
    table(&["ID", "SERVICE", "KIND", "FROM", "TO", "HEALTHY", "STARTED"], &rows);
    Ok(())
}

pub async fn cancel_deployment(c: &Client, f: Format, id: u64, force: bool) -> anyhow::Result<()> {
    let change = c.cancel_deployment(id, force).await?;
    if f == Format::Json {
        json(&json!({"canceled": id, "rollback": (change.deployment != 0).then_some(change.deployment)}));
    } else if change.deployment != 0 {
        println!("deployment {id} canceled; rolling back as deployment {}", change.deployment);
    } else {
        println!("deployment {id} stopped where it was");
    }
    Ok(())
}
