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
            "cert_issuer": s.cert_issuer, "cert_not_after": s.cert_not_after,
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
    let left = s.cert_not_after - client::pki::now_unix();
    println!("cert:      from {:?}, expires in {}", s.cert_issuer, human_secs(left));
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

pub async fn issue_http_token(c: &Client, f: Format, role: &str, name: &str, quiet: bool) -> anyhow::Result<()> {
    let r = c.issue_http_token(role, name).await?;
    if quiet {
        println!("{}", r.token);
    } else if f == Format::Json {
        json(&json!({ "id": r.id, "role": role, "name": name, "token": r.token }));
    } else {
        println!("HTTP token {} ({role}); it is shown only now:", r.id);
        println!("    {}", r.token);
        println!("Send it as `Authorization: Bearer <token>`; `cluster token revoke-http --id {}` revokes it.", r.id);
    }
    Ok(())
}

pub async fn revoke_http_token(c: &Client, f: Format, id: &str) -> anyhow::Result<()> {
    c.revoke_http_token(id).await?;
    if f == Format::Json {
        json(&json!({ "id": id, "revoked": true }));
    } else {
        println!("HTTP token {id} revoked");
    }
    Ok(())
}

pub async fn list_http_tokens(c: &Client, f: Format) -> anyhow::Result<()> {
    let tokens = c.list_http_tokens().await?;
    if f == Format::Json {
        let v: Vec<_> = tokens
            .iter()
            .map(|t| json!({"id": t.id, "role": t.role, "name": t.name, "created_ms": t.created_ms}))
            .collect();
        json(&json!({ "tokens": v }));
        return Ok(());
    }
    let rows: Vec<Vec<String>> =
        tokens.iter().map(|t| vec![t.id.clone(), t.role.clone(), t.name.clone(), t.created_ms.to_string()]).collect();
    agent::output::table(&["ID", "ROLE", "NAME", "CREATED MS"], &rows);
    Ok(())
}

pub async fn rotate_token(c: &Client, f: Format, role: Role, quiet: bool) -> anyhow::Result<()> {
    let t = c.rotate_token(role).await?;
    if quiet {
        println!("{t}");
    } else if f == Format::Json {
        json(&json!({ "role": role.as_str(), "token": t, "rotated": true }));
    } else {
        println!("The {role} token was replaced; the old one is refused from now on. To add a {role}, run:");
        println!("    cluster join --data-dir DIR --listen IP:PORT --token {t} {}", c.endpoints()[0]);
    }
    Ok(())
}

/// A new key here, a certificate for it from the cluster, both saved as `files`.
async fn fresh_credential(
    c: &Client,
    role: &str,
    name: &str,
    validity_secs: u64,
    files: &client::CredentialFiles,
) -> anyhow::Result<Vec<client::pki::types::CertificateDer<'static>>> {
    let (key, csr) = client::pki::cert::new_key_and_csr()?;
    let r = c.issue_cert(role, name, csr, validity_secs).await?;
    let signed = client::pki::cert::Signed::from_der(r.cert, r.chain, r.trusted);
    files.save(&signed.trusted, &signed.chain, &key)?;
    Ok(signed.chain)
}

pub async fn issue_cert(
    c: &Client,
    f: Format,
    role: &str,
    name: &str,
    out: &std::path::Path,
    days: u64,
) -> anyhow::Result<()> {
    anyhow::ensure!(days > 0, "--days must be at least 1");
    let files = client::CredentialFiles::in_dir(out, role);
    if files.cert.exists() || files.key.exists() {
        anyhow::bail!("{} already holds a {role} credential; choose another --out", out.display());
    }
    fresh_credential(c, role, name, days * 86_400, &files).await?;
    if f == Format::Json {
        json(&json!({
            "role": role, "name": name,
            "ca": files.ca, "cert": files.cert, "key": files.key,
        }));
    } else {
        println!("Wrote a {role} credential for {name:?}, valid {days} days:");
        println!(
            "    {}\n    {}\n    {} (private, 0600)",
            files.ca.display(),
            files.cert.display(),
            files.key.display()
        );
        println!("Use it with:");
        println!("    cluster status --cert-dir {}", out.display());
        println!(
            "    etcdctl --endpoints https://{} --cacert {} --cert {} --key {} get foo",
            c.endpoints()[0],
            files.ca.display(),
            files.cert.display(),
            files.key.display()
        );
    }
    Ok(())
}

/// `cluster ca rotate`: start, reissue this command's own credential, wait until every
/// node presents a certificate of the new CA, then finish.
pub async fn rotate_ca(
    c: &Client,
    f: Format,
    files: &client::CredentialFiles,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    let started = c.rotate_ca("start").await?;
    let new_ca = started.ca_name.clone();
    eprintln!("new CA {new_ca:?} signs from now on; the old CA stays trusted until every node has renewed");
    // This command's own credential follows the new CA. A credential in a master's data
    // dir (beside its node.crt) is the master's to reissue, and it does.
    let own = client::pki::files::read_certs(&files.cert)?;
    let me = own.first().and_then(|c| client::pki::PeerIdentity::from_der(c).ok());
    let in_data_dir = files.cert.with_file_name("node.crt").exists();
    let mut new_ca_cert = None;
    if let Some(me) = me.filter(|m| m.role == client::pki::CertRole::Admin && m.issuer != new_ca && !in_data_dir) {
        let left = (me.not_after_unix - client::pki::now_unix()).max(86_400) as u64;
        let chain = fresh_credential(c, "admin", &me.name, left, files).await?;
        let issuer = chain.first().and_then(|c| client::pki::PeerIdentity::from_der(c).ok()).map(|i| i.issuer);
        anyhow::ensure!(
            issuer.as_deref() == Some(new_ca.as_str()),
            "the reissued credential came from {issuer:?}, not the new CA {new_ca:?}; run `cluster ca rotate` again"
        );
        new_ca_cert = chain.into_iter().skip(1).find(|c| client::pki::cert::common_name(c).as_deref() == Some(&new_ca));
        eprintln!("reissued this command's credential {} from the new CA", files.cert.display());
    }
    let deadline = std::time::Instant::now() + timeout;
    let mut last = String::new();
    let mut down_named = false;
    loop {
        let (done, total, waiting, down) = renewal_progress(c, &new_ca).await?;
        if !down.is_empty() && !down_named {
            down_named = true;
            eprintln!(
                "not waiting for agents that are down ({}): after the rotation they cannot connect; remove them \
                 (`cluster node rm ID --force`), then join them again with a new token",
                down.join(", ")
            );
        }
        let line = format!("renewed: {done} of {total} nodes");
        if line != last {
            eprintln!("{line}");
            last = line;
        }
        if waiting.is_empty() {
            break;
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "{} still present certificates of the old CA after {} s: {}. The old CA stays trusted; run \
                 `cluster ca rotate` again to wait and finish",
                waiting.len(),
                timeout.as_secs(),
                waiting.join(", ")
            );
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    let finished = c.rotate_ca("finish").await?;
    if let Some(ca) = new_ca_cert {
        client::pki::files::write_certs(&files.ca, &[ca])?;
    }
    if f == Format::Json {
        json(&json!({ "ca_name": finished.ca_name, "ca_digest": finished.ca_digest, "rotating": finished.rotating }));
    } else {
        println!("CA rotated: {} (SHA-256 {}); the old CA is no longer trusted.", finished.ca_name, finished.ca_digest);
        println!("Join tokens pin the CA, so they changed: print them with `cluster token manager|worker`.");
        println!("Client certificates from `cluster cert issue` made before now must be issued again.");
    }
    Ok(())
}

fn human_secs(s: i64) -> String {
    match s {
        s if s < 0 => "(expired)".into(),
        s if s < 120 => format!("{s} s"),
        s if s < 7_200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3_600),
        s => format!("{} days", s / 86_400),
    }
}

/// How many nodes present a certificate of `ca`: every master (asked directly) and
/// every agent that is not down (as the leader sees its session). A down agent is not
/// waited for: it must join again once the rotation finishes.
async fn renewal_progress(c: &Client, ca: &str) -> anyhow::Result<(usize, usize, Vec<String>, Vec<String>)> {
    let mut waiting = Vec::new();
    let mut down = Vec::new();
    let mut total = 0;
    let members = c.members().await?;
    let master_ids: std::collections::BTreeSet<u64> = members.members.iter().map(|m| m.node_id).collect();
    for m in &members.members {
        total += 1;
        match c.at(&m.addr).status().await {
            Ok(s) if s.cert_issuer == ca => {}
            Ok(_) => waiting.push(format!("master {}", m.node_id)),
            Err(_) => waiting.push(format!("master {} (unreachable)", m.node_id)),
        }
    }
    for n in c.nodes().await?.nodes {
        if master_ids.contains(&n.node_id) {
            continue;
        }
        // A down agent cannot renew; it joins again after the rotation.
        if n.state == "down" {
            down.push(n.node_id.to_string());
            continue;
        }
        total += 1;
        if n.cert_issuer != ca {
            waiting.push(format!("agent {} ({})", n.node_id, n.state));
        }
    }
    Ok((total - waiting.len(), total, waiting, down))
}
