//! `cluster snapshot save|inspect|restore` and `cluster recover`: call `agent::backup`,
//! show progress on a terminal, print the result.

use std::path::Path;
use std::time::Duration;

use agent::backup::{self, RestoreSpec};
use agent::output::{json, Format};
use client::Client;
use coord::store::snapshot::Summary;
use coord::types::SnapshotMeta;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use serde_json::json;

/// A spinner on stderr with the elapsed time and a message; indicatif hides it when
/// stderr is not a terminal, so scripts and logs see only the result.
fn spinner(msg: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_style(ProgressStyle::with_template("{spinner} [{elapsed}] {msg}").expect("progress template"));
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// Progress of an offline operation: a step name and a count.
fn step_message(what: &str, n: u64) -> String {
    if n == 0 {
        what.to_string()
    } else {
        format!("{what}: {n}")
    }
}

fn index(meta: &SnapshotMeta) -> Option<u64> {
    meta.last_log_id.map(|l| l.index)
}

fn summary_json(meta: &SnapshotMeta, s: &Summary) -> serde_json::Value {
    json!({
        "version": s.version, "revision": s.revision, "index": index(meta),
        "size_bytes": s.file_bytes, "records": s.records, "records_by_area": s.records_by_area,
        "sha256": s.sha256,
    })
}

pub async fn save(c: &Client, f: Format, file: &Path) -> anyhow::Result<()> {
    let pb = spinner("waiting for the leader");
    let r = backup::save(c, file, &|n| pb.set_message(format!("received {}", HumanBytes(n)))).await;
    pb.finish_and_clear();
    let (meta, s) = r?;
    if f == Format::Json {
        let mut v = summary_json(&meta, &s);
        v["file"] = json!(file.display().to_string());
        json(&v);
    } else {
        println!(
            "Snapshot saved to {}: revision {}, index {}, {} records, {} ({} bytes), sha256 {}",
            file.display(),
            s.revision,
            agent::output::opt(index(&meta)),
            s.records,
            HumanBytes(s.file_bytes),
            s.file_bytes,
            s.sha256
        );
    }
    Ok(())
}

pub fn inspect(f: Format, file: &Path) -> anyhow::Result<()> {
    let pb = spinner("reading and checking the checksum");
    let r = backup::inspect(file, &|n| pb.set_message(format!("checked records: {n}")));
    pb.finish_and_clear();
    let (meta, s) = r?;
    if f == Format::Json {
        json(&summary_json(&meta, &s));
        return Ok(());
    }
    println!("file:      {}", file.display());
    println!("version:   {}", s.version);
    println!("revision:  {}", s.revision);
    println!("index:     {}", agent::output::opt(index(&meta)));
    println!("size:      {} ({} bytes)", HumanBytes(s.file_bytes), s.file_bytes);
    println!("sha256:    {} (verified)", s.sha256);
    println!("records:   {}", s.records);
    let width = s.records_by_area.keys().map(|k| k.len()).max().unwrap_or(0);
    for (area, n) in &s.records_by_area {
        println!("  {area:<width$}  {n}");
    }
    Ok(())
}

pub async fn restore(f: Format, spec: RestoreSpec) -> anyhow::Result<()> {
    let pb = spinner("restoring");
    let dir = spec.data_dir.clone();
    let file = spec.file.clone();
    let r = backup::restore(spec, &|what, n| pb.set_message(step_message(what, n))).await;
    pb.finish_and_clear();
    let r = r?;
    let o = &r.outcome;
    if f == Format::Json {
        json(&json!({
            "cluster_id": r.cluster_id, "node_id": o.node_id, "data_dir": dir.display().to_string(),
            "revision": o.revision, "index": o.last_log_id.map(|l| l.index), "records": o.snapshot.records,
            "manager_token": r.manager_token, "worker_token": r.worker_token,
        }));
        return Ok(());
    }
    println!(
        "Restored {} (revision {}, {} records) into {} as node {}, the only master of the new cluster {}.",
        file.display(),
        o.revision,
        o.snapshot.records,
        dir.display(),
        o.node_id,
        r.cluster_id
    );
    println!();
    println!("Start it:");
    println!("    cluster start --data-dir {}", dir.display());
    println!();
    println!("The old cluster's tokens are refused. To add a manager (master):");
    println!("    cluster join --data-dir DIR --listen IP:PORT --token {} {}", r.manager_token, r.advertise);
    println!();
    println!("To add a worker:");
    println!("    cluster join --data-dir DIR --listen IP:PORT --token {} {}", r.worker_token, r.advertise);
    Ok(())
}

pub async fn recover(f: Format, data_dir: &Path, force: bool) -> anyhow::Result<()> {
    let pb = spinner("asking the other voters");
    let r = backup::recover(data_dir, force, &|what, n| pb.set_message(step_message(what, n))).await;
    pb.finish_and_clear();
    let r = r?;
    let o = &r.outcome;
    if f == Format::Json {
        json(&json!({
            "cluster_id": r.cluster_id, "node_id": r.node_id, "voters_before": r.probe.voters,
            "answered": r.probe.answered.iter().map(|a| &a.addr).collect::<Vec<_>>(), "silent": r.probe.silent, "applied_from_log": o.applied_from_log,
            "revision": o.revision, "index": o.last_log_id.map(|l| l.index),
        }));
        return Ok(());
    }
    println!(
        "Node {} is now the only voter of cluster {} ({} of the {} voters it knew were reachable; {} did not answer).",
        r.node_id,
        r.cluster_id,
        r.probe.reachable(),
        r.probe.voters,
        if r.probe.silent.is_empty() { "none".to_string() } else { r.probe.silent.join(", ") }
    );
    println!(
        "Applied {} log entries that were not applied yet; the state is at revision {}, index {}.",
        o.applied_from_log,
        o.revision,
        agent::output::opt(o.last_log_id.map(|l| l.index))
    );
    println!();
    println!("Start it:");
    println!("    cluster start --data-dir {}", data_dir.display());
    println!("Then add masters with a token from `cluster token manager --endpoints {}`.", r.advertise);
    println!("Never start the old masters again: wipe their data dirs and join them afresh.");
    Ok(())
}
