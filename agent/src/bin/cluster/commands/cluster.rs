//! `cluster token`, `status`, `members` and `leave`: the Raft group and its tokens.

use agent::output::{json, opt, table, Format};
use client::{Client, Role};
use proto::clusterpb as cpb;
use serde_json::json;

pub async fn token(c: &Client, f: Format, role: Role, quiet: bool) -> anyhow::Result<()> {
    let t = c.token(role).await?;
    if quiet {
        println!("{t}");
    } else if f == Format::Json {
        json(&json!({ "role": role.as_str(), "token": t }));
    } else {
        println!("To add a {role} to this cluster, run:");
        println!("    cluster join --data-dir DIR --listen IP:PORT --token {t} {}", c.endpoints()[0]);
    }
    Ok(())
}

fn member_json(m: &cpb::Member) -> serde_json::Value {
    json!({"id": m.node_id, "name": m.name, "addr": m.addr, "role": m.role, "leader": m.is_leader,
           "matched_index": m.matched_index, "lag": m.lag})
}

fn member_rows(ms: &[cpb::Member]) -> Vec<Vec<String>> {
    ms.iter()
        .map(|m| {
            vec![
                m.node_id.to_string(),
                m.name.clone(),
                m.addr.clone(),
                m.role.clone(),
                if m.is_leader { "*".into() } else { String::new() },
                opt(m.matched_index),
                opt(m.lag),
            ]
        })
        .collect()
}

const MEMBER_HEADER: [&str; 7] = ["ID", "NAME", "ADDRESS", "ROLE", "LEADER", "MATCHED", "LAG"];

pub async fn status(c: &Client, f: Format) -> anyhow::Result<()> {
    // The leader knows each member's replication lag: prefer its view.
    let s = c.status_prefer_leader().await?;
    if f == Format::Json {
        json(&json!({
            "cluster_id": s.cluster_id, "answered_by": s.node_id, "state": s.state,
            "leader_id": s.leader_id, "leader_addr": s.leader_addr, "term": s.term,
            "last_log_index": s.last_log_index, "commit_index": s.commit_index,
            "applied_index": s.applied_index, "snapshot_index": s.snapshot_index,
            "revision": s.revision, "compact_revision": s.compact_revision,
            "members": s.members.iter().map(member_json).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    println!("cluster:   {}", s.cluster_id);
    println!("answered:  node {} ({})", s.node_id, s.state);
    match s.leader_id {
        Some(l) => println!("leader:    node {l} at {}, term {}", s.leader_addr, s.term),
        None => println!("leader:    none (term {}): electing, or no quorum", s.term),
    }
    println!(
        "log:       last {}, commit {}, applied {}, snapshot {}",
        opt(s.last_log_index),
        opt(s.commit_index),
        opt(s.applied_index),
        opt(s.snapshot_index)
    );
    println!("revision:  {} (compacted below {})", s.revision, s.compact_revision);
    println!();
    table(&MEMBER_HEADER, &member_rows(&s.members));
    Ok(())
}

pub async fn members(c: &Client, f: Format) -> anyhow::Result<()> {
    let m = c.members().await?;
    if f == Format::Json {
        json(&json!({"leader_id": m.leader_id, "members": m.members.iter().map(member_json).collect::<Vec<_>>()}));
    } else {
        table(&MEMBER_HEADER, &member_rows(&m.members));
    }
    Ok(())
}

/// Without `node_id`, the master at the first endpoint leaves.
pub async fn leave(c: &Client, f: Format, node_id: Option<u64>) -> anyhow::Result<()> {
    let id = c.leave(node_id).await?;
    if f == Format::Json {
        json(&json!({"removed": id}));
    } else {
        println!("node {id} removed from the cluster");
    }
    Ok(())
}
