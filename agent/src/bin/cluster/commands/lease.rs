//! `cluster lease …`, `cluster lock` and `cluster elect`: etcd's leases, locks and
//! elections, with etcdctl's output where etcdctl has the same command.

use std::time::Duration;

use agent::output::{json, Format};
use client::Client;
use serde_json::json;

/// Lease ids are written in hex, as etcdctl does.
pub fn parse_id(s: &str) -> anyhow::Result<i64> {
    let t = s.trim_start_matches("0x");
    i64::from_str_radix(t, 16)
        .map_err(|_| anyhow::anyhow!("{s:?} is not a lease id (hexadecimal, as `lease grant` prints)"))
}

pub async fn grant(c: &Client, f: Format, ttl: i64, id: i64) -> anyhow::Result<()> {
    let (id, ttl) = c.lease_grant(ttl, id).await?;
    match f {
        Format::Json => json(&json!({"id": format!("{id:x}"), "ttl": ttl})),
        _ => println!("lease {id:x} granted with TTL({ttl}s)"),
    }
    Ok(())
}

pub async fn revoke(c: &Client, id: i64) -> anyhow::Result<()> {
    c.lease_revoke(id).await?;
    println!("lease {id:x} revoked");
    Ok(())
}

/// Renews the lease every third of its TTL until interrupted (or once).
pub async fn keepalive(c: &Client, id: i64, once: bool) -> anyhow::Result<()> {
    loop {
        let ttl = c.lease_keep_alive_once(id).await?;
        if ttl <= 0 {
            anyhow::bail!("lease {id:x} expired or revoked");
        }
        println!("lease {id:x} keepalived with TTL({ttl})");
        if once {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis((ttl as u64 * 1000 / 3).max(500))).await;
    }
}

pub async fn ttl(c: &Client, f: Format, id: i64, keys: bool) -> anyhow::Result<()> {
    let i = c.lease_time_to_live(id, keys).await?;
    let names: Vec<String> = i.keys.iter().map(|k| String::from_utf8_lossy(k).into_owned()).collect();
    match f {
        Format::Json => {
            json(&json!({"id": format!("{id:x}"), "ttl": i.ttl, "granted_ttl": i.granted_ttl, "keys": names}))
        }
        _ if i.ttl < 0 => println!("lease {id:x} already expired"),
        _ if keys => println!(
            "lease {id:x} granted with TTL({}s), remaining({}s), attached keys({names:?})",
            i.granted_ttl, i.ttl
        ),
        _ => println!("lease {id:x} granted with TTL({}s), remaining({}s)", i.granted_ttl, i.ttl),
    }
    Ok(())
}

pub async fn ls(c: &Client, f: Format) -> anyhow::Result<()> {
    let ids = c.leases().await?;
    match f {
        Format::Json => json(&json!({"leases": ids.iter().map(|i| format!("{i:x}")).collect::<Vec<_>>()})),
        _ => {
            println!("found {} leases", ids.len());
            for id in ids {
                println!("{id:x}");
            }
        }
    }
    Ok(())
}

/// `c` without a request deadline: waiting for a lock or a leadership takes as long as
/// it takes.
fn patient(c: &Client) -> Client {
    let settings = client::Settings { request_timeout: None, ..c.settings().clone() };
    Client::with_settings(c.endpoints().to_vec(), c.tls().clone(), settings)
}

/// A lease kept alive in the background; the task ends only when the lease is lost.
async fn session(c: &Client, ttl: i64) -> anyhow::Result<(i64, tokio::task::JoinHandle<()>)> {
    let (id, ttl) = c.lease_grant(ttl, 0).await?;
    let c2 = c.clone();
    let every = Duration::from_millis((ttl as u64 * 1000 / 3).max(300));
    let keeper = tokio::spawn(async move {
        let mut wait = every;
        loop {
            tokio::time::sleep(wait).await;
            match c2.lease_keep_alive_once(id).await {
                Ok(t) if t > 0 => wait = every,
                Ok(_) => {
                    eprintln!("the session lease {id:x} expired: whatever it held is lost");
                    return;
                }
                Err(e) => {
                    // Soon again: a lease dies after a few missed renewals.
                    eprintln!("renewing the session lease failed (retrying): {e}");
                    wait = Duration::from_millis(500);
                }
            }
        }
    });
    Ok((id, keeper))
}

/// Holds lock `name`, then runs `cmd` (with the lock's key and fencing token in its
/// environment) or waits for Ctrl-C. Revoking the session lease at the end, whatever
/// happened, releases the lock.
pub async fn lock(c: &Client, name: &str, ttl: i64, cmd: Vec<String>) -> anyhow::Result<()> {
    let (lease, mut keeper) = session(c, ttl).await?;
    let r = hold_lock(c, name, lease, cmd, &mut keeper).await;
    keeper.abort();
    let _ = c.lease_revoke(lease).await;
    r
}

async fn hold_lock(
    c: &Client,
    name: &str,
    lease: i64,
    cmd: Vec<String>,
    keeper: &mut tokio::task::JoinHandle<()>,
) -> anyhow::Result<()> {
    let waiter = patient(c);
    let key = tokio::select! {
        k = waiter.lock(name.as_bytes(), lease) => k?.0,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted while waiting for the lock"),
        _ = &mut *keeper => anyhow::bail!("the session lease was lost while waiting for the lock"),
    };
    let token = c
        .get(key.clone(), client::GetOptions::default())
        .await?
        .kvs
        .first()
        .map(|kv| kv.create_revision)
        .ok_or_else(|| anyhow::anyhow!("the lock key vanished as it was taken"))?;
    let key_str = String::from_utf8_lossy(&key).into_owned();
    if cmd.is_empty() {
        println!("{key_str}");
        eprintln!("holding the lock (fencing token {token}); Ctrl-C releases it");
        tokio::select! {
            r = tokio::signal::ctrl_c() => return Ok(r?),
            _ = &mut *keeper => anyhow::bail!("the lock was lost: its session lease expired"),
        }
    }
    let mut child = tokio::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .env("CLUSTER_LOCK_KEY", &key_str)
        .env("CLUSTER_LOCK_TOKEN", token.to_string())
        // The names etcdctl gives them, for scripts written against etcdctl.
        .env("ETCD_LOCK_KEY", &key_str)
        .env("ETCD_LOCK_REV", token.to_string())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting {:?}: {e}", cmd[0]))?;
    tokio::select! {
        s = child.wait() => {
            let s = s?;
            anyhow::ensure!(s.success(), "{:?} exited with {s}", cmd[0]);
            Ok(())
        }
        _ = &mut *keeper => {
            // Past this point another process may hold the lock: stop the command.
            let _ = child.kill().await;
            anyhow::bail!("the lock was lost (its session lease expired): {:?} was stopped", cmd[0])
        }
    }
}

/// Campaigns in election `name` with `proposal`, prints the key and the proposal once
/// leading, and resigns on Ctrl-C (or when the session lease is lost).
pub async fn elect(c: &Client, name: &str, proposal: &str, ttl: i64) -> anyhow::Result<()> {
    let (lease, mut keeper) = session(c, ttl).await?;
    let waiter = patient(c);
    let r = async {
        let leader = tokio::select! {
            l = waiter.campaign(name.as_bytes(), lease, proposal.as_bytes()) => l?.0,
            _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted while campaigning"),
            _ = &mut keeper => anyhow::bail!("the session lease was lost while campaigning"),
        };
        println!("{}\n{proposal}", String::from_utf8_lossy(&leader.key));
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = &mut keeper => anyhow::bail!("leadership was lost: the session lease expired"),
        }
        c.resign(leader).await?;
        Ok(())
    }
    .await;
    keeper.abort();
    let _ = c.lease_revoke(lease).await;
    r
}

/// Prints the key and value of each leader of election `name` as leadership changes.
pub async fn observe(c: &Client, name: &str) -> anyhow::Result<()> {
    let mut s = c.observe(name.as_bytes()).await?;
    while let Some(r) = s.message().await? {
        if let Some(kv) = r.kv {
            println!("{}\n{}", String::from_utf8_lossy(&kv.key), String::from_utf8_lossy(&kv.value));
        }
    }
    Ok(())
}
