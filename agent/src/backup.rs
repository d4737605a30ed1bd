//! Backup, restore and quorum-loss recovery: `cluster snapshot save|inspect|restore` and
//! `cluster recover`. Saving talks to a running cluster; restoring and recovering work on
//! a stopped node's data dir (`coord::store::offline`) and then write its `node.json`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use client::{Client, Role, Settings};
use coord::cluster::ClusterMeta;
use coord::store::offline::{self, Outcome, Progress, Voter};
use coord::store::snapshot::{self, Summary};
use coord::types::{NodeInfo, SnapshotMeta};
use futures::StreamExt;

use crate::daemon::{self, NodeFile};

/// Streams a consistent snapshot from the leader into `path`: written to `path.part`,
/// synced, verified by its checksum, then renamed over `path`. `progress` gets the bytes
/// received so far.
pub async fn save(c: &Client, path: &Path, progress: &(dyn Fn(u64) + Sync)) -> anyhow::Result<(SnapshotMeta, Summary)> {
    use std::io::Write;
    let part = part_path(path);
    let mut out = std::fs::File::create(&part).with_context(|| format!("create {}", part.display()))?;
    let received = async {
        let mut s = c.save_snapshot().await?;
        let mut n = 0u64;
        while let Some(chunk) = s.next().await {
            let chunk = chunk?;
            out.write_all(&chunk).with_context(|| format!("write {}", part.display()))?;
            n += chunk.len() as u64;
            progress(n);
        }
        out.sync_all()?;
        anyhow::Ok(())
    }
    .await;
    drop(out);
    let verified = received.and_then(|()| {
        snapshot::verify(&part).context("the snapshot received does not verify (the stream broke off or was corrupted)")
    });
    match verified {
        Ok(v) => {
            std::fs::rename(&part, path).with_context(|| format!("rename to {}", path.display()))?;
            sync_parent(path)?;
            Ok(v)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            Err(e)
        }
    }
}

fn part_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".part");
    PathBuf::from(p)
}

fn sync_parent(path: &Path) -> std::io::Result<()> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(parent)?.sync_all()
}

/// Reads the whole file and checks its checksum; the header and the counts it holds.
pub fn inspect(path: &Path) -> anyhow::Result<(SnapshotMeta, Summary)> {
    snapshot::verify(path).with_context(|| format!("{} is not a valid snapshot file", path.display()))
}

/// What `snapshot restore` is given.
#[derive(Debug, Clone)]
pub struct RestoreSpec {
    pub file: PathBuf,
    /// Must be empty or absent.
    pub data_dir: PathBuf,
    pub listen: String,
    pub advertise: Option<String>,
    pub name: Option<String>,
}

/// What a restore made: a one-node cluster under a new identity.
#[derive(Debug, Clone)]
pub struct Restored {
    pub cluster_id: String,
    pub manager_token: String,
    pub worker_token: String,
    pub advertise: String,
    pub outcome: Outcome,
}

/// Builds a new one-node cluster in `spec.data_dir` from a snapshot file, with a new
/// cluster id and new join secrets (the old cluster's tokens are refused by it). Start
/// it with `cluster start --data-dir DIR`.
pub async fn restore(spec: RestoreSpec, progress: Progress<'_>) -> anyhow::Result<Restored> {
    let (listen, advertise) = daemon::resolve_addrs(&spec.listen, spec.advertise.as_deref())?;
    if !spec.file.is_file() {
        bail!("snapshot file {} not found", spec.file.display());
    }
    daemon::require_empty_dir(&spec.data_dir)?;
    let cluster = ClusterMeta {
        cluster_id: daemon::hex_id(),
        manager_secret: daemon::secret(),
        worker_secret: daemon::secret(),
        next_node_id: 0,
    };
    let info = NodeInfo { addr: advertise.clone(), name: spec.name.clone().unwrap_or_default() };
    let done = offline::restore(&spec.file, &spec.data_dir, info, cluster.clone(), progress)
        .await
        .with_context(|| format!("restore {}", spec.file.display()));
    let outcome = match done {
        Ok(o) => o,
        Err(e) => {
            // The dir was empty: leave it usable for another attempt.
            let _ = std::fs::remove_dir_all(&spec.data_dir);
            return Err(e);
        }
    };
    let file = NodeFile {
        node_id: outcome.node_id,
        name: spec.name.unwrap_or_else(|| format!("node-{}", outcome.node_id)),
        cluster_id: cluster.cluster_id.clone(),
        role: Role::Manager,
        listen,
        advertise: advertise.clone(),
        init: None,
        node_secret: daemon::secret(),
        no_worker: false,
        agent: Default::default(),
        masters: vec![advertise.clone()],
    };
    daemon::write_node_file(&spec.data_dir, &file)?;
    Ok(Restored {
        manager_token: coord::token::format_token(&cluster.cluster_id, &cluster.manager_secret),
        worker_token: coord::token::format_token(&cluster.cluster_id, &cluster.worker_secret),
        cluster_id: cluster.cluster_id,
        advertise,
        outcome,
    })
}

/// How the other voters answered before a recovery.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Voters of the last membership this node saw, itself included.
    pub voters: usize,
    /// Other voters that answered as members of this cluster.
    pub answered: Vec<String>,
    /// Other voters that did not.
    pub silent: Vec<String>,
}

impl Probe {
    /// This node counts: it is alive, only stopped.
    pub fn reachable(&self) -> usize {
        self.answered.len() + 1
    }

    pub fn quorum(&self) -> usize {
        self.voters / 2 + 1
    }
}

/// What a recovery did.
#[derive(Debug, Clone)]
pub struct Recovered {
    pub node_id: u64,
    pub cluster_id: String,
    pub advertise: String,
    pub probe: Probe,
    pub outcome: Outcome,
}

/// Makes the stopped master in `data_dir` the single voter of its cluster, keeping its
/// data. Refused while a quorum of the voters it last saw answers (counting itself),
/// unless `force`: then the cluster is not lost, and the dead members should be removed
/// with `cluster leave` instead. Start it afterwards with `cluster start`.
pub async fn recover(data_dir: &Path, force: bool, progress: Progress<'_>) -> anyhow::Result<Recovered> {
    let mut file = daemon::read_node_file(data_dir)?;
    if file.role != Role::Manager {
        bail!("node {} is a worker: only a master holds the cluster's state", file.node_id);
    }
    let members = offline::members(data_dir).context("read the membership")?;
    if !members.iter().any(|(id, _, _)| *id == file.node_id) {
        bail!("node {} is not a member of the cluster its data dir last saw", file.node_id);
    }
    let others: Vec<String> =
        members.iter().filter(|(id, _, voter)| *voter && *id != file.node_id).map(|(_, n, _)| n.addr.clone()).collect();
    let me_voter = members.iter().any(|(id, _, voter)| *voter && *id == file.node_id);
    let voters = others.len() + usize::from(me_voter);
    let probe = probe(&others, &file.cluster_id, voters).await;
    if probe.reachable() >= probe.quorum() && !force {
        bail!(
            "refused: {} of the {} voters are reachable ({} and this node), a quorum of {}; the cluster is not lost. \
             Remove dead masters with `cluster leave NODE_ID` instead, or give --force if those answers cannot be trusted",
            probe.reachable(),
            probe.voters,
            probe.answered.join(", "),
            probe.quorum()
        );
    }
    let me = Voter { node_id: file.node_id, info: NodeInfo { addr: file.advertise.clone(), name: file.name.clone() } };
    let outcome = offline::recover(data_dir, me, progress).await.context("recover")?;
    file.masters = vec![file.advertise.clone()];
    daemon::write_node_file(data_dir, &file)?;
    Ok(Recovered { node_id: file.node_id, cluster_id: file.cluster_id, advertise: file.advertise, probe, outcome })
}

/// Asks each address for its status (1 s each, all at once); an answer counts only if
/// it comes from a member of `cluster_id`.
async fn probe(others: &[String], cluster_id: &str, voters: usize) -> Probe {
    let settings = Settings {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Some(Duration::from_secs(1)),
        follow_leader: false,
        ..Settings::default()
    };
    let asks = others.iter().map(|addr| {
        let c = Client::with_settings([addr.clone()], settings.clone());
        async move {
            let ok = matches!(c.status().await, Ok(s) if s.cluster_id == cluster_id);
            (addr.clone(), ok)
        }
    });
    let (mut answered, mut silent) = (Vec::new(), Vec::new());
    for (addr, ok) in futures::future::join_all(asks).await {
        if ok {
            answered.push(addr);
        } else {
            silent.push(addr);
        }
    }
    Probe { voters, answered, silent }
}
