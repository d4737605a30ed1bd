//! `cluster kv put|get|del`: the key-value store etcdctl also sees.

use agent::output::{json, table, Format};
use client::{Client, GetOptions};
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
