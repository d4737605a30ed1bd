//! `cluster network create|ls|inspect|rm|check` and `cluster ip allocate|release`.

use proto::clusterpb as pb;
use proto::clusterpb::ipam_client::IpamClient;
use serde_json::{json, Value};

use crate::cli::{ClientOpts, IpOp, NetworkOp, OutputFormat};
use crate::client::{call, status_err};
use crate::output::{json, table};

fn client(ch: tonic::transport::Channel) -> IpamClient<tonic::transport::Channel> {
    IpamClient::new(ch).max_decoding_message_size(256 << 20)
}

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

pub async fn network(c: &ClientOpts, op: NetworkOp) -> anyhow::Result<()> {
    match op {
        NetworkOp::Create { name, subnet, gateway, reserve, quarantine_ms } => {
            let req = pb::CreateNetworkRequest {
                name,
                subnets: subnet,
                gateway: gateway.unwrap_or_default(),
                reserve,
                quarantine_ms: Some(quarantine_ms),
            };
            let n = call(&c.endpoints, |ch| {
                let req = req.clone();
                async move { client(ch).create_network(req).await }
            })
            .await
            .map_err(status_err)?
            .into_inner();
            if c.output == OutputFormat::Json {
                json(&network_json(&n));
            } else {
                table(&NETWORK_HEADER, &network_rows(&[n]));
            }
        }
        NetworkOp::Ls => {
            let r = call(&c.endpoints, |ch| async move { client(ch).list_networks(pb::ListNetworksRequest {}).await })
                .await
                .map_err(status_err)?
                .into_inner();
            if c.output == OutputFormat::Json {
                json(&json!({"networks": r.networks.iter().map(network_json).collect::<Vec<_>>()}));
            } else {
                table(&NETWORK_HEADER, &network_rows(&r.networks));
            }
        }
        NetworkOp::Inspect { name, limit } => {
            let req = pb::InspectNetworkRequest { name, limit };
            let r = call(&c.endpoints, |ch| {
                let req = req.clone();
                async move { client(ch).inspect_network(req).await }
            })
            .await
            .map_err(status_err)?
            .into_inner();
            let n = r.network.unwrap_or_default();
            if c.output == OutputFormat::Json {
                let allocs: Vec<Value> = r
                    .allocations
                    .iter()
                    .map(|a| json!({"address": a.address, "owner": a.owner, "node_id": a.node_id, "since_ms": a.since_ms}))
                    .collect();
                json(&json!({"network": network_json(&n), "allocations": allocs, "truncated": r.truncated}));
            } else {
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
            }
        }
        NetworkOp::Rm { name, force } => {
            let req = pb::RemoveNetworkRequest { name: name.clone(), force };
            let r = call(&c.endpoints, |ch| {
                let req = req.clone();
                async move { client(ch).remove_network(req).await }
            })
            .await
            .map_err(status_err)?
            .into_inner();
            if c.output == OutputFormat::Json {
                json(&json!({"removed": name, "released": r.released}));
            } else {
                println!("network {name} removed ({} addresses released)", r.released);
            }
        }
        NetworkOp::Check => {
            let r = call(&c.endpoints, |ch| async move { client(ch).check(pb::CheckRequest {}).await })
                .await
                .map_err(status_err)?
                .into_inner();
            if c.output == OutputFormat::Json {
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
            } else {
                println!(
                    "leaks ({}): addresses whose owner is gone; repair releases them after the grace period",
                    r.leaks.len()
                );
                let rows: Vec<Vec<String>> = r
                    .leaks
                    .iter()
                    .map(|l| {
                        let when =
                            if l.release_at_ms == 0 { "due".into() } else { format!("at {} ms", l.release_at_ms) };
                        vec![
                            l.network.clone(),
                            l.address.clone(),
                            l.owner.clone(),
                            l.node_id.to_string(),
                            l.reason.clone(),
                            when,
                        ]
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
                        vec![
                            x.network.clone(),
                            x.address.clone(),
                            x.node_id.to_string(),
                            x.reported_owner.clone(),
                            state,
                        ]
                    })
                    .collect();
                table(&["NETWORK", "ADDRESS", "NODE", "REPORTED OWNER", "STATE OWNER"], &rows);
                if !r.from_leader {
                    println!("(answered without the leader: agents' reports are unknown)");
                }
            }
        }
    }
    Ok(())
}

pub async fn ip(c: &ClientOpts, op: IpOp) -> anyhow::Result<()> {
    match op {
        IpOp::Allocate { network, owner, ip, node } => {
            let req =
                pb::AllocateRequest { network, owner, address: ip.unwrap_or_default(), node_id: node.unwrap_or(0) };
            let r = call(&c.endpoints, |ch| {
                let req = req.clone();
                async move { client(ch).allocate(req).await }
            })
            .await
            .map_err(status_err)?
            .into_inner();
            if c.output == OutputFormat::Json {
                json(&json!({"address": r.address, "new": r.new}));
            } else {
                println!("{}", r.address);
            }
        }
        IpOp::Release { network, owner, ip } => {
            if owner.is_none() && ip.is_none() {
                anyhow::bail!("give --owner OWNER or --ip ADDRESS");
            }
            let req = pb::ReleaseRequest { network, owner: owner.unwrap_or_default(), address: ip.unwrap_or_default() };
            let r = call(&c.endpoints, |ch| {
                let req = req.clone();
                async move { client(ch).release(req).await }
            })
            .await
            .map_err(status_err)?
            .into_inner();
            if c.output == OutputFormat::Json {
                json(&json!({"released": if r.address.is_empty() { Value::Null } else { json!(r.address) }}));
            } else if r.address.is_empty() {
                println!("nothing to release");
            } else {
                println!("released {}", r.address);
            }
        }
    }
    Ok(())
}
