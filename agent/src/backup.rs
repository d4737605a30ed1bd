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
    // The snapshot holds the cluster CA's key and the join secrets: owner only.
    let mut out = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&part)
    }
    .with_context(|| format!("create {}", part.display()))?;
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

/// Reads the whole file and checks its checksum (reporting records read); the header and
/// the counts it holds.
pub fn inspect(path: &Path, progress: snapshot::RecordProgress<'_>) -> anyhow::Result<(SnapshotMeta, Summary)> {
    snapshot::verify_with(path, progress).with_context(|| format!("{} is not a valid snapshot file", path.display()))
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
    /// Lifetime of the new node's certificate.
    pub cert_validity: Duration,
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
    let existed = spec.data_dir.exists();
    daemon::require_empty_dir(&spec.data_dir)?;
    // The dir was empty or absent: on failure, leave it so for another attempt.
    let undo = |e: anyhow::Error| {
        if existed {
            if let Ok(entries) = std::fs::read_dir(&spec.data_dir) {
                for e in entries.flatten() {
                    let p = e.path();
                    let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
                }
            }
        } else {
            let _ = std::fs::remove_dir_all(&spec.data_dir);
        }
        e
    };
    let cluster = ClusterMeta {
        cluster_id: daemon::hex_id(),
        manager_secret: daemon::secret(),
        worker_secret: daemon::secret(),
        next_node_id: 0,
    };
    // A new CA too: certificates of the old cluster mean nothing to the new one.
    let now = std::time::SystemTime::now();
    let ca = pki::cert::Ca::generate(&cluster.cluster_id, now)?;
    let record = coord::cluster::CaRecord {
        cert: ca.cert.to_vec(),
        key: ca.key_der(),
        trusted: vec![ca.cert.to_vec()],
        bridges: vec![],
    };
    let info = NodeInfo { addr: advertise.clone(), name: spec.name.clone().unwrap_or_default() };
    let done = offline::restore(&spec.file, &spec.data_dir, info, cluster.clone(), record, progress)
        .await
        .with_context(|| format!("restore {}", spec.file.display()));
    let outcome = done.map_err(undo)?;
    daemon::write_node_pki(&spec.data_dir, &ca, &cluster.cluster_id, outcome.node_id, &advertise, spec.cert_validity)
        .map_err(undo)?;
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
        http_listen: None,
        dns: None,
    };
    daemon::write_node_file(&spec.data_dir, &file).map_err(undo)?;
    Ok(Restored {
        manager_token: coord::token::format_token(&ca.digest(), &cluster.manager_secret),
        worker_token: coord::token::format_token(&ca.digest(), &cluster.worker_secret),
        cluster_id: cluster.cluster_id,
        advertise,
        outcome,
    })
}

/// How the other voters answered before a recovery.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Voters of the last membership this node saw, itself included if it votes.
    pub voters: usize,
    /// Whether this node is one of them (a learner is not).
    pub me_voter: bool,
    /// Other voters that answered as themselves, members of this cluster.
    pub answered: Vec<Answer>,
    /// Other voters that did not.
    pub silent: Vec<String>,
}

/// A voter that answered the probe.
#[derive(Debug, Clone)]
pub struct Answer {
    pub node_id: u64,
    pub addr: String,
    pub last_log_index: Option<u64>,
    /// Whether its membership still includes the recovering node.
    pub knows_me: bool,
}

impl Probe {
    /// This node counts if it votes: it is alive, only stopped.
    pub fn reachable(&self) -> usize {
        self.answered.len() + usize::from(self.me_voter)
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
/// data; start it afterwards with `cluster start`. Unless `force`, refused when:
/// - a quorum of the voters it last saw answers (counting itself): the cluster is not
///   lost, and dead members should be removed with `cluster leave` instead;
/// - this node is a learner (it may lack acknowledged writes);
/// - a voter that answers holds more of the log (recover that one instead), or already
///   runs the cluster without this node (it was recovered first, or this node removed).
///
/// A node that is already the only voter (a recovery that was interrupted) goes ahead.
pub async fn recover(data_dir: &Path, force: bool, progress: Progress<'_>) -> anyhow::Result<Recovered> {
    let mut file = daemon::read_node_file(data_dir)?;
    if file.role != Role::Manager {
        bail!("node {} is a worker: only a master holds the cluster's state", file.node_id);
    }
    let seen = offline::last_seen(data_dir).await.context("read the data dir")?;
    let Some((_, _, me_voter)) = seen.members.iter().find(|(id, _, _)| *id == file.node_id) else {
        bail!("node {} is not a member of the cluster its data dir last saw", file.node_id);
    };
    let others: Vec<(u64, String)> = seen
        .members
        .iter()
        .filter(|(id, _, voter)| *voter && *id != file.node_id)
        .map(|(id, n, _)| (*id, n.addr.clone()))
        .collect();
    let me_voter = *me_voter;
    let voters = others.len() + usize::from(me_voter);
    let tls = daemon::load_node_credential(data_dir)?.client()?;
    let probe = probe(&others, &file.cluster_id, file.node_id, voters, me_voter, tls).await;
    if !force {
        refuse_unless_lost(&probe, seen.last_log_index)?;
    }
    let me = Voter { node_id: file.node_id, info: NodeInfo { addr: file.advertise.clone(), name: file.name.clone() } };
    let outcome = offline::recover(data_dir, me, progress).await.context("recover")?;
    file.masters = vec![file.advertise.clone()];
    daemon::write_node_file(data_dir, &file)?;
    Ok(Recovered { node_id: file.node_id, cluster_id: file.cluster_id, advertise: file.advertise, probe, outcome })
}

/// The checks `--force` skips.
fn refuse_unless_lost(p: &Probe, my_last_index: Option<u64>) -> anyhow::Result<()> {
    if p.me_voter && p.voters == 1 {
        return Ok(()); // already the only voter: finishing is harmless
    }
    let addrs: Vec<&str> = p.answered.iter().map(|a| a.addr.as_str()).collect();
    if p.reachable() >= p.quorum() {
        bail!(
            "refused: {} of the {} voters are reachable ({}{}), a quorum of {}: the cluster is not lost. \
             Start this node again, and remove dead masters with `cluster leave NODE_ID`",
            p.reachable(),
            p.voters,
            addrs.join(", "),
            if p.me_voter { " and this node" } else { "" },
            p.quorum()
        );
    }
    if !p.me_voter {
        bail!(
            "refused: this node is a learner, which may lack writes the voters acknowledged; recover a \
             surviving voter instead, or give --force to accept that"
        );
    }
    if let Some(a) = p.answered.iter().find(|a| !a.knows_me) {
        bail!(
            "refused: node {} at {} already runs the cluster without this node (it was recovered, or this node \
             was removed); wipe this data dir and join that cluster with a manager token",
            a.node_id,
            a.addr
        );
    }
    if let Some(a) = p.answered.iter().find(|a| a.last_log_index > my_last_index) {
        bail!(
            "refused: node {} at {} holds more of the log (index {}, this node {}); stop it and recover that \
             node instead, or give --force to lose what only it holds",
            a.node_id,
            a.addr,
            crate::output::opt(a.last_log_index),
            crate::output::opt(my_last_index)
        );
    }
    Ok(())
}

/// Asks each voter for its status (1 s each, all at once); an answer counts only if it
/// comes from that very node of `cluster_id`.
async fn probe(
    others: &[(u64, String)],
    cluster_id: &str,
    me: u64,
    voters: usize,
    me_voter: bool,
    tls: client::ClientTls,
) -> Probe {
    let settings = Settings {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Some(Duration::from_secs(1)),
        follow_leader: false,
        ..Settings::default()
    };
    let asks = others.iter().map(|(id, addr)| {
        let c = Client::with_settings([addr.clone()], tls.clone(), settings.clone());
        async move {
            match c.status().await {
                Ok(s) if s.cluster_id == cluster_id && s.node_id == *id => Ok(Answer {
                    node_id: *id,
                    addr: addr.clone(),
                    last_log_index: s.last_log_index,
                    knows_me: s.members.iter().any(|m| m.node_id == me),
                }),
                _ => Err(addr.clone()),
            }
        }
    });
    let (mut answered, mut silent) = (Vec::new(), Vec::new());
    for r in futures::future::join_all(asks).await {
        match r {
            Ok(a) => answered.push(a),
            Err(addr) => silent.push(addr),
        }
    }
    Probe { voters, me_voter, answered, silent }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(node_id: u64, last: u64, knows_me: bool) -> Answer {
        Answer { node_id, addr: format!("10.0.0.{node_id}:2379"), last_log_index: Some(last), knows_me }
    }

    fn probe(voters: usize, me_voter: bool, answered: Vec<Answer>) -> Probe {
        Probe { voters, me_voter, answered, silent: vec![] }
    }

    fn refusal(p: &Probe, mine: u64) -> Option<String> {
        refuse_unless_lost(p, Some(mine)).err().map(|e| e.to_string())
    }

    #[test]
    fn a_reachable_quorum_refuses_and_a_lost_one_does_not() {
        let r = refusal(&probe(3, true, vec![answer(2, 10, true)]), 10).expect("2 of 3 is a quorum");
        assert!(r.contains("2 of the 3 voters are reachable") && r.contains("and this node"), "{r}");
        let r = refusal(&probe(5, true, vec![answer(2, 10, true), answer(3, 10, true)]), 10).expect("3 of 5");
        assert!(r.contains("quorum of 3"), "{r}");
        assert_eq!(refusal(&probe(3, true, vec![]), 10), None, "1 of 3: lost");
        assert_eq!(refusal(&probe(5, true, vec![answer(2, 9, true)]), 10), None, "2 of 5: lost");
    }

    #[test]
    fn only_a_voter_counts_itself_and_a_learner_is_refused() {
        // A learner and one of three voters answering: 1 of 3, lost, but a learner may lack
        // acknowledged writes.
        let r = refusal(&probe(3, false, vec![answer(2, 10, true)]), 10).expect("learner");
        assert!(r.contains("learner"), "{r}");
        // Two of three voters answering a learner is a quorum, and says so without "and this node".
        let r = refusal(&probe(3, false, vec![answer(2, 10, true), answer(3, 10, true)]), 10).expect("quorum");
        assert!(r.contains("2 of the 3") && !r.contains("and this node"), "{r}");
    }

    #[test]
    fn a_survivor_with_more_log_or_already_recovered_is_refused() {
        let r = refusal(&probe(5, true, vec![answer(2, 11, true)]), 10).expect("node 2 is ahead");
        assert!(r.contains("node 2") && r.contains("holds more of the log"), "{r}");
        let r = refusal(&probe(5, true, vec![answer(2, 10, false)]), 10).expect("node 2 was recovered");
        assert!(r.contains("without this node"), "{r}");
    }

    #[test]
    fn the_only_voter_finishes_an_interrupted_recovery() {
        assert_eq!(refusal(&probe(1, true, vec![]), 10), None);
    }
}
