//! `cluster network create|ls|inspect|rm|check` and `cluster ip allocate|release`.

use agent::output::{json, table, Format};
use client::{Client, NetworkSpec};
use proto::clusterpb as pb;
use serde_json::{json, Value};

fn network_json(n: &pb::NetworkInfo) -> Value {
    json!({
        "name": n.name, "quarantine_ms": n.quarantine_ms, "created_ms": n.created_ms,
        "usage_percent": n.usage_percent,
        "subnets": n.subnets.iter().map(|s| json!({
            "cidr": s.cidr, "gateway": s.gateway, "usable": s.usable_exact, "allocated": s.allocated,
            "quarantined": s.quarantined, "reserved": s.reserved,
        })).collect::<Vec<_>>(),
    })
}

fn network_rows(ns: &[pb::NetworkInfo]) -> Vec<Vec<String>> {
    ns.iter()
        .map(|n| {
            let cidrs: Vec<&str> = n.subnets.iter().map(|s| s.cidr.as_str()).collect();
            let alloc: u64 = n.subnets.iter().map(|s| s.allocated).sum();
            let quar: u64 = n.subnets.iter().map(|s| s.quarantined).sum();
            let usable: Vec<&str> = n.subnets.iter().map(|s| s.usable_exact.as_str()).collect();
            vec![
                n.name.clone(),
                cidrs.join(","),
                usable.join("+"),
                alloc.to_string(),
                quar.to_string(),
                format!("{:.4}%", n.usage_percent),
            ]
        })
        .collect()
}

const NETWORK_HEADER: [&str; 6] = ["NAME", "SUBNETS", "USABLE", "ALLOCATED", "QUARANTINED", "USAGE"];

pub async fn create_network(c: &Client, f: Format, spec: NetworkSpec) -> anyhow::Result<()> {
    let n = c.create_network(spec).await?;
    if f == Format::Json {
        json(&network_json(&n));
    } else {
        table(&NETWORK_HEADER, &network_rows(&[n]));
    }
    Ok(())
}

pub async fn list_networks(c: &Client, f: Format) -> anyhow::Result<()> {
    let networks = c.networks().await?;
    if f == Format::Json {
        json(&json!({"networks": networks.iter().map(network_json).collect::<Vec<_>>()}));
    } else {
        table(&NETWORK_HEADER, &network_rows(&networks));
    }
    Ok(())
}

/// Usage, reserved ranges, and up to `limit` allocations.
pub async fn inspect_network(c: &Client, f: Format, name: &str, limit: u32) -> anyhow::Result<()> {
    let r = c.inspect_network(name, limit).await?;
    let n = r.network.unwrap_or_default();
    if f == Format::Json {
        let allocs: Vec<Value> = r
            .allocations
            .iter()
            .map(|a| json!({"address": a.address, "owner": a.owner, "node_id": a.node_id, "since_ms": a.since_ms}))
            .collect();
        json(&json!({"network": network_json(&n), "allocations": allocs, "truncated": r.truncated}));
        return Ok(());
    }
    table(&NETWORK_HEADER, &network_rows(std::slice::from_ref(&n)));
    for s in &n.subnets {
        println!("{}: gateway {}, reserved {}", s.cidr, s.gateway, s.reserved.join(", "));
    }
    println!();
    let rows: Vec<Vec<String>> = r
        .allocations
        .iter()
        .map(|a| {
            let node = if a.node_id == 0 { "-".to_string() } else { a.node_id.to_string() };
            vec![a.address.clone(), a.owner.clone(), node]
        })
        .collect();
    table(&["ADDRESS", "OWNER", "NODE"], &rows);
    if r.truncated {
        println!("(more allocations than --limit {limit})");
    }
    Ok(())
}

pub async fn remove_network(c: &Client, f: Format, name: &str, force: bool) -> anyhow::Result<()> {
    let released = c.remove_network(name, force).await?;
    if f == Format::Json {
        json(&json!({"removed": name, "released": released}));
    } else {
        println!("network {name} removed ({released} addresses released)");
    }
    Ok(())
}

/// Leaks with their release time, and conflicts between agents' reports and the state.
pub async fn check(c: &Client, f: Format) -> anyhow::Result<()> {
    let r = c.check().await?;
    if f == Format::Json {
        let leaks: Vec<Value> = r
            .leaks
            .iter()
            .map(|l| {
                json!({"network": l.network, "address": l.address,
                    "owner": l.owner, "node_id": l.node_id, "reason": l.reason, "release_at_ms": l.release_at_ms})
            })
            .collect();
        let conflicts: Vec<Value> = r
            .conflicts
            .iter()
            .map(|x| {
                json!({"network": x.network, "address": x.address,
                    "node_id": x.node_id, "reported_owner": x.reported_owner, "state_owner": x.state_owner})
            })
            .collect();
        json(&json!({"leaks": leaks, "conflicts": conflicts, "from_leader": r.from_leader}));
        return Ok(());
    }
    println!("leaks ({}): addresses whose owner is gone; repair releases them after the grace period", r.leaks.len());
    let rows: Vec<Vec<String>> = r
        .leaks
        .iter()
        .map(|l| {
            let when = if l.release_at_ms == 0 { "due".into() } else { format!("at {} ms", l.release_at_ms) };
            vec![l.network.clone(), l.address.clone(), l.owner.clone(), l.node_id.to_string(), l.reason.clone(), when]
        })
        .collect();
    table(&["NETWORK", "ADDRESS", "OWNER", "NODE", "REASON", "RELEASE"], &rows);
    println!();
    println!(
        "conflicts ({}): an agent reports an address the state gives to another owner (or to none)",
        r.conflicts.len()
    );
    let rows: Vec<Vec<String>> = r
        .conflicts
        .iter()
        .map(|x| {
            let state = if x.state_owner.is_empty() { "(free)".into() } else { x.state_owner.clone() };
            vec![x.network.clone(), x.address.clone(), x.node_id.to_string(), x.reported_owner.clone(), state]
        })
        .collect();
    table(&["NETWORK", "ADDRESS", "NODE", "REPORTED OWNER", "STATE OWNER"], &rows);
    if !r.from_leader {
        println!("(answered without the leader: agents' reports are unknown)");
    }
    Ok(())
}

/// Prints the address `owner` holds in `network` (newly allocated or not).
pub async fn allocate(
    c: &Client,
    f: Format,
    network: &str,
    owner: &str,
    address: Option<&str>,
    node: Option<u64>,
) -> anyhow::Result<()> {
    let r = c.allocate(network, owner, address, node).await?;
    if f == Format::Json {
        json(&json!({"address": r.address, "new": r.new}));
    } else {
        println!("{}", r.address);
    }
    Ok(())
}

pub async fn release(
    c: &Client,
    f: Format,
    network: &str,
    owner: Option<&str>,
    address: Option<&str>,
) -> anyhow::Result<()> {
    let released = c.release(network, owner, address).await?;
    if f == Format::Json {
        json(&json!({"released": released}));
    } else {
        match released {
            Some(a) => println!("released {a}"),
            None => println!("nothing to release"),
        }
    }
    Ok(())
}
