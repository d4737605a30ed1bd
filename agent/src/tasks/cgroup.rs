//! One cgroup per task, with its limits, on cgroup v2 where the host has a usable unified
//! hierarchy and on v1 otherwise (one hierarchy per controller: cpu, memory, pids,
//! freezer). Everything is a file write under a root given at construction, so the unit
//! tests run both versions over a directory that stands in for /sys/fs/cgroup.
//!
//! Written directly rather than through cgroups-rs: we need a configurable root for those
//! tests, the v1 freeze–kill–thaw sequence, and the OOM counters of both versions, which
//! are a few lines each.
//!
//! - v2: `<root>/cluster.slice/node-<id>/<task>`, with `cpu`, `memory` and `pids`
//!   enabled down the path; `cpu.max`, `memory.max`, `memory.oom.group=1`, `pids.max`;
//!   kill by `cgroup.kill`; OOM from `memory.events`.
//! - v1: `<mount>/<the agent's own group>/cluster-node-<id>/<task>` in each hierarchy;
//!   `cpu.cfs_quota_us`/`cpu.cfs_period_us`, `memory.limit_in_bytes`, `pids.max`; kill by
//!   freezing, SIGKILL to every member, thawing; OOM from `memory.oom_control`.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Processes a task may have at once (fork bombs stop here).
pub const PIDS_MAX: u64 = 4096;
/// The CFS period; a task's quota is its share of it.
pub const CPU_PERIOD_US: u64 = 100_000;

const V1_CONTROLLERS: [&str; 4] = ["cpu", "memory", "pids", "freezer"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub cpus_milli: u64,
    pub mem_mb: u64,
    pub pids_max: u64,
}

impl Limits {
    /// cpus in µs per [`CPU_PERIOD_US`]; at least 1 ms, the kernel's minimum.
    pub fn cpu_quota_us(&self) -> u64 {
        (self.cpus_milli * CPU_PERIOD_US / 1000).max(1000)
    }

    pub fn mem_bytes(&self) -> u64 {
        self.mem_mb * 1024 * 1024
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    V2 {
        root: PathBuf,
    },
    /// Controller → the directory its hierarchy is mounted at, and the agent's own group
    /// in it (tasks go below).
    V1 {
        mounts: BTreeMap<String, (PathBuf, String)>,
    },
}

/// Where this agent makes task groups.
#[derive(Debug, Clone)]
pub struct Cgroups {
    pub hierarchy: Hierarchy,
    pub node_id: u64,
}

/// A task's group: one directory (v2) or one per controller (v1). Recorded in the
/// task's sandbox so that a restarted agent finds it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskGroup {
    pub v2: bool,
    /// v2: one path; v1: controller → path.
    pub paths: BTreeMap<String, PathBuf>,
}

fn write(p: &Path, v: &str) -> io::Result<()> {
    std::fs::write(p, v).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))
}

/// `key value` lines (memory.events, memory.oom_control) → the value of `key`.
fn flat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

impl Cgroups {
    /// The host's hierarchy, if this process may write to it: v2 when the unified
    /// hierarchy offers cpu, memory and pids; else v1 when all four controllers are
    /// mounted. `Err` says what is missing.
    pub fn detect(node_id: u64) -> Result<Cgroups, String> {
        let mounts = std::fs::read_to_string("/proc/self/mounts").map_err(|e| format!("/proc/self/mounts: {e}"))?;
        let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("/proc/self/cgroup: {e}"))?;
        let h = Self::from_proc(&mounts, &own, |p| std::fs::read_to_string(p.join("cgroup.controllers")).ok())?;
        let c = Cgroups { hierarchy: h, node_id };
        c.probe()?;
        Ok(c)
    }

    /// Decides the hierarchy from /proc/self/mounts and /proc/self/cgroup text;
    /// `controllers(dir)` reads a v2 directory's `cgroup.controllers`.
    pub fn from_proc(
        mounts: &str,
        own: &str,
        controllers: impl Fn(&Path) -> Option<String>,
    ) -> Result<Hierarchy, String> {
        let mut v1: BTreeMap<String, (PathBuf, String)> = BTreeMap::new();
        let own_v1: BTreeMap<&str, &str> = own
            .lines()
            .filter_map(|l| {
                let mut it = l.splitn(3, ':');
                let (_, ctrls, path) = (it.next()?, it.next()?, it.next()?);
                Some(ctrls.split(',').map(move |c| (c, path)).collect::<Vec<_>>())
            })
            .flatten()
            .collect();
        for line in mounts.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 {
                continue;
            }
            let (dir, fstype, opts) = (f[1], f[2], f[3]);
            if fstype == "cgroup2" {
                let dir = PathBuf::from(dir);
                let have = controllers(&dir).unwrap_or_default();
                let have: Vec<&str> = have.split_whitespace().collect();
                if ["cpu", "memory", "pids"].iter().all(|c| have.contains(c)) {
                    return Ok(Hierarchy::V2 { root: dir });
                }
            } else if fstype == "cgroup" {
                for o in opts.split(',') {
                    if V1_CONTROLLERS.contains(&o) {
                        let base = own_v1.get(o).copied().unwrap_or("/").to_string();
                        v1.insert(o.to_string(), (PathBuf::from(dir), base));
                    }
                }
            }
        }
        let missing: Vec<&str> = V1_CONTROLLERS.iter().copied().filter(|c| !v1.contains_key(*c)).collect();
        if missing.is_empty() {
            Ok(Hierarchy::V1 { mounts: v1 })
        } else {
            Err(format!(
                "no usable cgroup hierarchy: the unified (v2) hierarchy lacks cpu, memory or pids, and the v1 \
                 controllers {missing:?} are not mounted"
            ))
        }
    }

    /// The directory of this agent's groups in hierarchy `ctrl` (v2: `ctrl` ignored).
    fn node_dir(&self, ctrl: &str) -> PathBuf {
        match &self.hierarchy {
            Hierarchy::V2 { root } => root.join("cluster.slice").join(format!("node-{}", self.node_id)),
            Hierarchy::V1 { mounts } => {
                let (dir, own) = &mounts[ctrl];
                dir.join(own.trim_start_matches('/')).join(format!("cluster-node-{}", self.node_id))
            }
        }
    }

    /// Makes the node's parent groups and checks they are writable.
    pub fn probe(&self) -> Result<(), String> {
        let err = |e: io::Error| format!("cgroups are not writable: {e}");
        match &self.hierarchy {
            Hierarchy::V2 { root } => {
                let node = self.node_dir("");
                std::fs::create_dir_all(&node)
                    .map_err(|e| err(io::Error::new(e.kind(), format!("{}: {e}", node.display()))))?;
                // Controllers must be enabled in every ancestor's subtree_control.
                let mut dir = root.clone();
                for part in ["cluster.slice".to_string(), format!("node-{}", self.node_id)] {
                    write(&dir.join("cgroup.subtree_control"), "+cpu +memory +pids").map_err(err)?;
                    dir = dir.join(part);
                }
                write(&dir.join("cgroup.subtree_control"), "+cpu +memory +pids").map_err(err)?;
            }
            Hierarchy::V1 { .. } => {
                for c in V1_CONTROLLERS {
                    let d = self.node_dir(c);
                    std::fs::create_dir_all(&d)
                        .map_err(|e| err(io::Error::new(e.kind(), format!("{}: {e}", d.display()))))?;
                }
            }
        }
        Ok(())
    }

    /// Makes the task's group with its limits.
    pub fn create(&self, task_id: &str, limits: Limits) -> io::Result<TaskGroup> {
        let mut paths = BTreeMap::new();
        match &self.hierarchy {
            Hierarchy::V2 { .. } => {
                let d = self.node_dir("").join(task_id);
                std::fs::create_dir_all(&d)?;
                write(&d.join("cpu.max"), &format!("{} {CPU_PERIOD_US}", limits.cpu_quota_us()))?;
                write(&d.join("memory.max"), &limits.mem_bytes().to_string())?;
                write(&d.join("memory.oom.group"), "1")?;
                write(&d.join("pids.max"), &limits.pids_max.to_string())?;
                paths.insert("unified".to_string(), d);
                Ok(TaskGroup { v2: true, paths })
            }
            Hierarchy::V1 { .. } => {
                for c in V1_CONTROLLERS {
                    let d = self.node_dir(c).join(task_id);
                    std::fs::create_dir_all(&d)?;
                    paths.insert(c.to_string(), d);
                }
                let p = |c: &str, f: &str| paths[c].join(f);
                write(&p("cpu", "cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                write(&p("cpu", "cpu.cfs_quota_us"), &limits.cpu_quota_us().to_string())?;
                write(&p("memory", "memory.limit_in_bytes"), &limits.mem_bytes().to_string())?;
                write(&p("pids", "pids.max"), &limits.pids_max.to_string())?;
                Ok(TaskGroup { v2: false, paths })
            }
        }
    }
}

impl TaskGroup {
    /// The `cgroup.procs` files a new process writes itself into.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.paths.values().map(|d| d.join("cgroup.procs")).collect()
    }

    fn main_dir(&self) -> &Path {
        if self.v2 {
            &self.paths["unified"]
        } else {
            // freezer holds every process of the task, like the others.
            &self.paths["freezer"]
        }
    }

    /// The processes in the group (empty if it is gone).
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.main_dir().join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Whether the kernel's OOM killer struck inside the group.
    pub fn oom_killed(&self) -> bool {
        if self.v2 {
            let ev = std::fs::read_to_string(self.paths["unified"].join("memory.events")).unwrap_or_default();
            flat_value(&ev, "oom_kill").unwrap_or(0) > 0
        } else {
            let oc = std::fs::read_to_string(self.paths["memory"].join("memory.oom_control")).unwrap_or_default();
            flat_value(&oc, "oom_kill").unwrap_or(0) > 0 || flat_value(&oc, "under_oom").unwrap_or(0) > 0
        }
    }

    /// Sends `sig` to every process in the group.
    pub fn signal_all(&self, sig: i32) {
        for pid in self.pids() {
            // SAFETY: kill(2) with a pid read from the group; a pid that exited meanwhile
            // gets ESRCH, which is fine.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    /// Kills every process in the group, so none can escape by forking: v2 writes
    /// `cgroup.kill`; v1 freezes the group, kills each member, thaws.
    pub async fn kill_all(&self) {
        if self.v2 {
            if write(&self.paths["unified"].join("cgroup.kill"), "1").is_ok() {
                return;
            }
            // Kernels before 5.14 have no cgroup.kill.
            self.signal_all(libc::SIGKILL);
            return;
        }
        let state = self.paths["freezer"].join("freezer.state");
        let frozen = write(&state, "FROZEN").is_ok();
        if frozen {
            for _ in 0..100 {
                let s = std::fs::read_to_string(&state).unwrap_or_default();
                if s.trim() == "FROZEN" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        self.signal_all(libc::SIGKILL);
        if frozen {
            let _ = write(&state, "THAWED");
        }
    }

    /// Removes the group once its last process is gone (rmdir fails while one is still
    /// exiting); gives up after 10 s.
    pub async fn remove_when_empty(&self) {
        for _ in 0..100 {
            if self.pids().is_empty() {
                self.remove();
                if self.paths.values().all(|d| !d.exists()) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tracing::warn!(group = ?self.paths, "a task's cgroup could not be removed");
    }

    /// Removes the (empty) group directories.
    pub fn remove(&self) {
        for d in self.paths.values() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { cpus_milli: 250, mem_mb: 64, pids_max: PIDS_MAX };

    #[test]
    fn v2_is_chosen_only_when_the_unified_hierarchy_has_the_controllers() {
        let mounts = "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n";
        let full = |_: &Path| Some("cpuset cpu io memory pids".to_string());
        assert_eq!(
            Cgroups::from_proc(mounts, "0::/user.slice\n", full).unwrap(),
            Hierarchy::V2 { root: "/sys/fs/cgroup".into() }
        );
        // This machine's kind: an empty unified hierarchy beside v1 controllers.
        let mounts = "cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n\
                      cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n\
                      cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0\n\
                      cgroup /sys/fs/cgroup/freezer cgroup rw,relatime,freezer 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n";
        let own = "4:memory:/process_api/abc\n1:cpu:/\n0::/\n";
        let h = Cgroups::from_proc(mounts, own, |_| Some(String::new())).unwrap();
        let Hierarchy::V1 { mounts } = h else { panic!("{h:?}") };
        assert_eq!(mounts["memory"], (PathBuf::from("/sys/fs/cgroup/memory"), "/process_api/abc".to_string()));
        assert_eq!(mounts["cpu"].1, "/");
        let e = Cgroups::from_proc("cgroup /x cgroup rw,cpu 0 0\n", "", |_| None).unwrap_err();
        assert!(e.contains("\"memory\""), "{e}");
    }

    #[test]
    fn v2_groups_get_their_limits_and_controllers_are_enabled_down_the_path() {
        let root = tempfile::tempdir().unwrap();
        let c = Cgroups { hierarchy: Hierarchy::V2 { root: root.path().to_path_buf() }, node_id: 7 };
        c.probe().unwrap();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(&root.path().join("cgroup.subtree_control")), "+cpu +memory +pids");
        assert_eq!(read(&root.path().join("cluster.slice/node-7/cgroup.subtree_control")), "+cpu +memory +pids");
        let g = c.create("web.1", LIMITS).unwrap();
        let d = root.path().join("cluster.slice/node-7/web.1");
        assert_eq!(read(&d.join("cpu.max")), "25000 100000");
        assert_eq!(read(&d.join("memory.max")), (64u64 << 20).to_string());
        assert_eq!(read(&d.join("memory.oom.group")), "1");
        assert_eq!(read(&d.join("pids.max")), "4096");
        assert_eq!(g.procs_files(), vec![d.join("cgroup.procs")]);
        std::fs::write(d.join("memory.events"), "low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\n").unwrap();
        assert!(!g.oom_killed());
        std::fs::write(d.join("memory.events"), "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n").unwrap();
        assert!(g.oom_killed());
        std::fs::write(d.join("cgroup.procs"), "").unwrap();
        tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(g.kill_all());
        assert_eq!(read(&d.join("cgroup.kill")), "1", "v2 kills through cgroup.kill");
    }

    #[test]
    fn v1_groups_live_below_the_agents_own_group_in_each_hierarchy() {
        let root = tempfile::tempdir().unwrap();
        let mut mounts = BTreeMap::new();
        for c in V1_CONTROLLERS {
            mounts.insert(
                c.to_string(),
                (root.path().join(c), if c == "memory" { "/sandbox".into() } else { "/".into() }),
            );
        }
        let c = Cgroups { hierarchy: Hierarchy::V1 { mounts }, node_id: 3 };
        c.probe().unwrap();
        let g = c.create("web.2", Limits { cpus_milli: 1500, mem_mb: 128, pids_max: 100 }).unwrap();
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(root.path().join("cpu/cluster-node-3/web.2/cpu.cfs_quota_us")), "150000");
        assert_eq!(read(root.path().join("cpu/cluster-node-3/web.2/cpu.cfs_period_us")), "100000");
        assert_eq!(
            read(root.path().join("memory/sandbox/cluster-node-3/web.2/memory.limit_in_bytes")),
            (128u64 << 20).to_string()
        );
        assert_eq!(read(root.path().join("pids/cluster-node-3/web.2/pids.max")), "100");
        assert_eq!(g.procs_files().len(), 4);
        let oc = root.path().join("memory/sandbox/cluster-node-3/web.2/memory.oom_control");
        std::fs::write(&oc, "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n").unwrap();
        assert!(!g.oom_killed());
        std::fs::write(&oc, "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n").unwrap();
        assert!(g.oom_killed());
        // Freeze, kill, thaw: the state file ends thawed.
        let fz = root.path().join("freezer/cluster-node-3/web.2");
        std::fs::write(fz.join("cgroup.procs"), "").unwrap();
        tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(g.kill_all());
        assert_eq!(std::fs::read_to_string(fz.join("freezer.state")).unwrap(), "THAWED");
    }
}
