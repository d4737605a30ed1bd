//! `cluster kv put|get|del|watch`: the key-value store etcdctl also sees.

use agent::output::{json, table, Format};
use client::{Client, GetOptions, WatchItem, WatchOptions};
use serde_json::json;

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub async fn put(c: &Client, f: Format, key: &str, value: &str) -> anyhow::Result<()> {
    let r = c.put(key, value).await?;
    let rev = r.header.map(|h| h.revision).unwrap_or(0);
    if f == Format::Json {
        json(&json!({"revision": rev}));
    } else {
        println!("OK (revision {rev})");
    }
    Ok(())
}

pub async fn get(c: &Client, f: Format, key: &str, o: GetOptions) -> anyhow::Result<()> {
    let r = c.get(key, o).await?;
    if f == Format::Json {
        let kvs: Vec<_> = r
            .kvs
            .iter()
            .map(|kv| {
                json!({"key": lossy(&kv.key), "value": lossy(&kv.value), "create_revision": kv.create_revision,
                       "mod_revision": kv.mod_revision, "version": kv.version, "lease": kv.lease})
            })
            .collect();
        json(&json!({"revision": r.header.map(|h| h.revision), "count": r.count, "kvs": kvs}));
    } else if o.keys_only {
        for kv in &r.kvs {
            println!("{}", lossy(&kv.key));
        }
    } else {
        let rows: Vec<Vec<String>> = r
            .kvs
            .iter()
            .map(|kv| vec![lossy(&kv.key), lossy(&kv.value), kv.mod_revision.to_string(), kv.version.to_string()])
            .collect();
        table(&["KEY", "VALUE", "MOD_REVISION", "VERSION"], &rows);
    }
    Ok(())
}

/// Deletes `key`, or with `prefix` every key under it; prints how many were deleted.
pub async fn del(c: &Client, f: Format, key: &str, prefix: bool) -> anyhow::Result<()> {
    let r = c.delete(key, prefix).await?;
    if f == Format::Json {
        json(&json!({"deleted": r.deleted}));
    } else {
        println!("{}", r.deleted);
    }
    Ok(())
}

/// Prints every change of `key` (or the prefix `key`) as it happens, until interrupted.
/// The watch resumes on another master, from the revision after the last one printed,
/// when its master fails.
pub async fn watch(c: &Client, f: Format, key: &str, o: WatchOptions) -> anyhow::Result<()> {
    let mut w = c.watch(key, o);
    let mut serving = None;
    loop {
        let item = w.next().await?;
        if w.serving != serving {
            if serving.is_some() {
                eprintln!("resumed on {} from revision {}", w.serving.as_deref().unwrap_or("?"), w.next_revision());
            }
            serving = w.serving.clone();
        }
        match item {
            WatchItem::Events(events) => {
                for e in events {
                    let kind =
                        if e.r#type == client::mvccpb::event::EventType::Delete as i32 { "DELETE" } else { "PUT" };
                    let kv = e.kv.unwrap_or_default();
                    if f == Format::Json {
                        let prev = e.prev_kv.map(|p| json!({"value": lossy(&p.value), "mod_revision": p.mod_revision}));
                        json(&json!({"type": kind, "key": lossy(&kv.key), "value": lossy(&kv.value),
                                     "mod_revision": kv.mod_revision, "create_revision": kv.create_revision,
                                     "version": kv.version, "lease": kv.lease, "prev_kv": prev}));
                    } else {
                        // etcdctl's layout: the type, the key, then the value (and the previous one).
                        println!("{kind}\n{}", lossy(&kv.key));
                        if let Some(p) = e.prev_kv {
                            println!("{}", lossy(&p.value));
                        }
                        if kind == "PUT" {
                            println!("{}", lossy(&kv.value));
                        }
                    }
                }
            }
            WatchItem::Progress { .. } => {}
            WatchItem::Compacted { compact_revision } => anyhow::bail!(
                "revision {} was compacted (the oldest watchable revision is {compact_revision}): start again \
                 from there, or from a fresh read",
                w.next_revision(),
            ),
        }
    }
}
