//! `cluster nodes` and `cluster node inspect|drain|activate|rm|events`.

use agent::output::{json, opt, table, Format};
use client::{Availability, Client, Role};
use futures::StreamExt;
use proto::clusterpb as pb;
use serde_json::{json, Value};

fn ports(r: &pb::Resources) -> String {
    let p: Vec<String> = r
        .ports
        .iter()
        .map(|p| if p.begin == p.end { p.begin.to_string() } else { format!("{}-{}", p.begin, p.end) })
        .collect();
    p.join(",")
}

fn labels(n: &pb::NodeInfo) -> String {
    let mut l: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    l.sort();
    l.join(",")
}

fn node_json(n: &pb::NodeInfo) -> Value {
    let r = n.resources.clone().unwrap_or_default();
    let labels: std::collections::BTreeMap<_, _> = n.labels.iter().collect();
    json!({
        "id": n.node_id, "name": n.name, "addr": n.addr, "role": n.role, "raft_role": n.raft_role,
        "leader": n.is_leader, "state": n.state, "availability": n.availability,
        "resources": {"cpus": r.cpus_milli as f64 / 1000.0, "memory_mb": r.memory_mb, "disk_mb": r.disk_mb,
                      "ports": r.ports.iter().map(|p| [p.begin, p.end]).collect::<Vec<_>>()},
        "labels": labels, "registered_at_ms": n.registered_at_ms, "state_since_ms": n.state_since_ms,
        "last_heartbeat_age_ms": n.last_heartbeat_age_ms, "connected_to": n.connected_to,
        "cert_issuer": n.cert_issuer, "cert_not_after": n.cert_not_after,
    })
}

pub async fn list(c: &Client, f: Format) -> anyhow::Result<()> {
    let r = c.nodes().await?;
    if f == Format::Json {
        json(&json!({"leader_id": r.leader_id, "term": r.term, "from_leader": r.from_leader,
                     "nodes": r.nodes.iter().map(node_json).collect::<Vec<_>>()}));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = r
        .nodes
        .iter()
        .map(|n| {
            let res = n.resources.clone().unwrap_or_default();
            let role = match (n.role.parse::<Role>(), n.is_leader, n.raft_role.as_str()) {
                (_, true, _) => "manager (leader)".to_string(),
                (Ok(Role::Manager), _, rr) if !rr.is_empty() => format!("manager ({rr})"),
                _ => n.role.clone(),
            };
            let has_agent = n.state != "no-agent";
            vec![
                n.node_id.to_string(),
                n.name.clone(),
                role,
                n.state.clone(),
                if has_agent { n.availability.clone() } else { "-".into() },
                if has_agent { format!("{}", res.cpus_milli as f64 / 1000.0) } else { "-".into() },
                if has_agent { res.memory_mb.to_string() } else { "-".into() },
                if has_agent { res.disk_mb.to_string() } else { "-".into() },
                if has_agent { ports(&res) } else { "-".into() },
                labels(n),
                n.last_heartbeat_age_ms.map(|a| format!("{:.1}s", a as f64 / 1000.0)).unwrap_or_else(|| "-".into()),
                opt(n.connected_to),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "ROLE",
            "STATE",
            "AVAIL",
            "CPUS",
            "MEM_MB",
            "DISK_MB",
            "PORTS",
            "LABELS",
            "HEARTBEAT",
            "CONNECTED",
        ],
        &rows,
    );
    if !r.from_leader {
        println!("(answered without the leader: heartbeat ages and sessions are unknown)");
    }
    Ok(())
}

fn print_node(f: Format, n: &pb::NodeInfo) {
    if f == Format::Json {
        json(&node_json(n));
        return;
    }
    let v = node_json(n);
    for (k, val) in v.as_object().expect("object") {
        println!("{k:<22} {}", if let Value::String(s) = val { s.clone() } else { val.to_string() });
    }
}

pub async fn inspect(c: &Client, f: Format, node_id: u64) -> anyhow::Result<()> {
    let n = c.node(node_id).await?.ok_or_else(|| anyhow::anyhow!("node {node_id} not found"))?;
    print_node(f, &n);
    Ok(())
}

/// `node drain` and `node activate`: prints the node as it is afterwards.
pub async fn set_availability(c: &Client, f: Format, node_id: u64, a: Availability) -> anyhow::Result<()> {
    let n = c.set_availability(node_id, a).await?;
    print_node(f, &n);
    Ok(())
}

pub async fn remove(c: &Client, f: Format, node_id: u64, force: bool) -> anyhow::Result<()> {
    c.remove_node(node_id, force).await?;
    if f == Format::Json {
        json(&json!({"removed": node_id}));
    } else {
        println!("node {node_id} removed from the registry");
    }
    Ok(())
}

/// Prints events from index `from`; with `follow`, until interrupted.
pub async fn events(c: &Client, f: Format, from: u64, follow: bool) -> anyhow::Result<()> {
    let mut stream = c.events(from, follow).await?;
    while let Some(e) = stream.next().await {
        print_event(f, &e?);
    }
    Ok(())
}

fn print_event(f: Format, e: &pb::RegistryEvent) {
    if f == Format::Json {
        // One JSON object per line, so a follower can be piped.
        let v = json!({"index": e.index, "time_ms": e.time_ms, "node_id": e.node_id, "kind": e.kind,
                       "from": e.from_state, "to": e.to_state, "reason": e.reason});
        println!("{v}");
        return;
    }
    let what = match e.kind.as_str() {
        "state" => format!("{} -> {} ({})", e.from_state, e.to_state, e.reason),
        "initial" => e.node.as_ref().map(|n| format!("{} {}", n.state, n.availability)).unwrap_or_default(),
        _ => String::new(),
    };
    println!("{:>6}  {:>13}  node {:<5} {:<12} {}", e.index, e.time_ms, e.node_id, e.kind, what);
}
