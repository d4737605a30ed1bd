//! Client commands: each parses nothing, calls the API, prints.

use anyhow::bail;
use proto::clusterpb as cpb;
use proto::clusterpb::cluster_admin_client::ClusterAdminClient;
use proto::etcdserverpb as epb;
use proto::etcdserverpb::kv_client::KvClient;
use serde_json::json;

use crate::cli::{ClientOpts, KvOp, OutputFormat, TokenRole};
use crate::client::{call, status_err};
use crate::output::{json, opt, table};

pub async fn token(c: &ClientOpts, role: TokenRole, quiet: bool) -> anyhow::Result<()> {
    let role = match role {
        TokenRole::Manager => "manager",
        TokenRole::Worker => "worker",
    };
    let t = call(&c.endpoints, |ch| async move {
        ClusterAdminClient::new(ch).token(cpb::TokenRequest { role: role.into() }).await
    })
    .await
    .map_err(status_err)?
    .into_inner()
    .token;
    if quiet {
        println!("{t}");
    } else if c.output == OutputFormat::Json {
        json(&json!({ "role": role, "token": t }));
    } else {
        println!("To add a {role} to this cluster, run:");
        println!("    cluster join --data-dir DIR --listen IP:PORT --token {t} {}", c.endpoints[0]);
    }
    Ok(())
}

async fn fetch_status(c: &ClientOpts) -> anyhow::Result<cpb::StatusResponse> {
    let s = call(&c.endpoints, |ch| async move { ClusterAdminClient::new(ch).status(cpb::StatusRequest {}).await })
        .await
        .map_err(status_err)?
        .into_inner();
    // The leader knows each member's replication lag: prefer its view.
    if !s.from_leader && !s.leader_addr.is_empty() {
        let leader = vec![s.leader_addr.clone()];
        if let Ok(l) =
            call(&leader, |ch| async move { ClusterAdminClient::new(ch).status(cpb::StatusRequest {}).await }).await
        {
            return Ok(l.into_inner());
        }
    }
    Ok(s)
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

pub async fn status(c: &ClientOpts) -> anyhow::Result<()> {
    let s = fetch_status(c).await?;
    if c.output == OutputFormat::Json {
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

pub async fn members(c: &ClientOpts) -> anyhow::Result<()> {
    let m = call(&c.endpoints, |ch| async move { ClusterAdminClient::new(ch).members(cpb::MembersRequest {}).await })
        .await
        .map_err(status_err)?
        .into_inner();
    if c.output == OutputFormat::Json {
        json(&json!({"leader_id": m.leader_id, "members": m.members.iter().map(member_json).collect::<Vec<_>>()}));
    } else {
        table(&MEMBER_HEADER, &member_rows(&m.members));
    }
    Ok(())
}

pub async fn leave(c: &ClientOpts, node_id: Option<u64>) -> anyhow::Result<()> {
    let id = match node_id {
        Some(id) => id,
        None => {
            let first = vec![c.endpoints[0].clone()];
            call(&first, |ch| async move { ClusterAdminClient::new(ch).status(cpb::StatusRequest {}).await })
                .await
                .map_err(status_err)?
                .into_inner()
                .node_id
        }
    };
    call(&c.endpoints, |ch| async move { ClusterAdminClient::new(ch).leave(cpb::LeaveRequest { node_id: id }).await })
        .await
        .map_err(status_err)?;
    if c.output == OutputFormat::Json {
        json(&json!({"removed": id}));
    } else {
        println!("node {id} removed from the cluster");
    }
    Ok(())
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub async fn kv(c: &ClientOpts, op: KvOp) -> anyhow::Result<()> {
    match op {
        KvOp::Put { key, value } => {
            let req = epb::PutRequest { key: key.into_bytes(), value: value.into_bytes(), ..Default::default() };
            let r = call(&c.endpoints, |ch| {
                let req = req.clone();
                async move { KvClient::new(ch).put(req).await }
            })
            .await
            .map_err(status_err)?
            .into_inner();
            let rev = r.header.map(|h| h.revision).unwrap_or(0);
            if c.output == OutputFormat::Json {
                json(&json!({"revision": rev}));
            } else {
                println!("OK (revision {rev})");
            }
        }
        KvOp::Get { key, prefix, rev, keys_only, serializable } => {
            if key.is_empty() {
                bail!("key must not be empty");
            }
            let range_end = if prefix { coord::kv::prefix_range_end(key.as_bytes()) } else { vec![] };
            let req = epb::RangeRequest {
                key: key.into_bytes(),
                range_end,
                revision: rev,
                keys_only,
                serializable,
                ..Default::default()
            };
            let r = call(&c.endpoints, |ch| {
                let req = req.clone();
                async move { KvClient::new(ch).range(req).await }
            })
            .await
            .map_err(status_err)?
            .into_inner();
            if c.output == OutputFormat::Json {
                let kvs: Vec<_> = r
                    .kvs
                    .iter()
                    .map(|kv| {
                        json!({"key": lossy(&kv.key), "value": lossy(&kv.value), "create_revision": kv.create_revision,
                                     "mod_revision": kv.mod_revision, "version": kv.version, "lease": kv.lease})
                    })
                    .collect();
                json(&json!({"revision": r.header.map(|h| h.revision), "count": r.count, "kvs": kvs}));
            } else if keys_only {
                for kv in &r.kvs {
                    println!("{}", lossy(&kv.key));
                }
            } else {
                let rows: Vec<Vec<String>> = r
                    .kvs
                    .iter()
                    .map(|kv| {
                        vec![lossy(&kv.key), lossy(&kv.value), kv.mod_revision.to_string(), kv.version.to_string()]
                    })
                    .collect();
                table(&["KEY", "VALUE", "MOD_REVISION", "VERSION"], &rows);
            }
        }
        KvOp::Del { key, prefix } => {
            let range_end = if prefix { coord::kv::prefix_range_end(key.as_bytes()) } else { vec![] };
            let req = epb::DeleteRangeRequest { key: key.into_bytes(), range_end, prev_kv: false };
            let r = call(&c.endpoints, |ch| {
                let req = req.clone();
                async move { KvClient::new(ch).delete_range(req).await }
            })
            .await
            .map_err(status_err)?
            .into_inner();
            if c.output == OutputFormat::Json {
                json(&json!({"deleted": r.deleted}));
            } else {
                println!("{}", r.deleted);
            }
        }
    }
    Ok(())
}
