//! The task runner: the agent's half of services. It follows the assignment stream of
//! any master, starts each task assigned to this node as a process in a cgroup of its own
//! and a sandbox directory, kills what the leader no longer wants, runs health checks,
//! and reports every change until a master confirms it is committed.
//!
//! - [`cgroup`]: the task's group and limits (v2 or v1), kill, OOM.
//! - `sandbox`: `<data-dir>/tasks/<id>/` with `stdout`, `stderr` and `task.json`.
//! - `health`: HTTP, TCP and COMMAND checks and Marathon's rules for them.
//!
//! Tasks outlive the agent: a process is started in a session of its own and is not
//! killed when the agent exits. A restarted agent reads the sandboxes, adopts the tasks
//! whose process still runs (pid and start time match), reports the others lost, and
//! then reconciles with the leader's assignment: a task it runs that is no longer
//! assigned here (replaced while this node was cut off) is killed, as Swarm does.
//!
//! An assignment carries the log index it was read at; the runner never acts on one
//! older than the last it acted on (kept in `tasks/index`), so a lagging master cannot
//! make it kill a task it just started.

pub mod cgroup;
mod health;
mod logs;
pub mod sandbox;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use client::Client;
use proto::clusterpb as pb;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use cgroup::{Cgroups, Limits, TaskGroup};
use sandbox::{Ended, Record};

/// How long a task has between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(3);
/// Ended tasks whose logs are kept (the newest); older ones keep only `task.json`, which
/// still stops the id from being started again.
pub const ENDED_LOGS_KEPT: usize = 50;

/// Everything the runner needs from the daemon.
pub struct RunnerConfig {
    pub node_id: u64,
    pub data_dir: PathBuf,
    /// `None` only when the node runs with `--no-cgroups`.
    pub cgroups: Option<Cgroups>,
    /// Why this agent refuses tasks (no writable cgroups and no `--no-cgroups`).
    pub refuse: Option<String>,
    /// The HOST the tasks see.
    pub host: String,
    /// The masters to talk to (kept current by the agent session).
    pub masters: Arc<Mutex<Vec<String>>>,
    pub tls: pki::ClientTls,
    /// TEST ONLY: leave replaced tasks running (the fault suite's canary).
    pub canary_keep_replaced: bool,
}

enum Event {
    Assignments(pb::Assignments),
    Exited { id: String, code: Option<i32>, signal: Option<i32> },
    Health(health::Verdict),
}

struct Managed {
    rec: Record,
    assigned: Option<pb::AssignedTask>,
    /// We are stopping it (asked, or no longer assigned).
    killing: bool,
    kill_reason: String,
    checks: Vec<JoinHandle<()>>,
    verdicts: Vec<Option<bool>>,
    /// What was last queued for the masters.
    healthy: Option<bool>,
}

impl Managed {
    fn new(rec: Record, assigned: Option<pb::AssignedTask>) -> Managed {
        Managed {
            rec,
            assigned,
            killing: false,
            kill_reason: String::new(),
            checks: Vec::new(),
            verdicts: Vec::new(),
            healthy: None,
        }
    }
}

/// Statuses waiting to be confirmed, newest per task.
type Pending = Arc<Mutex<BTreeMap<String, pb::TaskStatus>>>;

pub struct Runner {
    cfg: RunnerConfig,
    tasks: BTreeMap<String, Managed>,
    last_index: u64,
    pending: Pending,
    report_now: Arc<tokio::sync::Notify>,
    tx: mpsc::UnboundedSender<Event>,
    health_tx: mpsc::UnboundedSender<health::Verdict>,
}

fn status(id: &str, state: &str, healthy: Option<bool>, reason: &str, exit_code: Option<i32>) -> pb::TaskStatus {
    pb::TaskStatus { task_id: id.to_string(), state: state.to_string(), healthy, reason: reason.to_string(), exit_code }
}

fn index_path(data_dir: &Path) -> PathBuf {
    sandbox::tasks_dir(data_dir).join("index")
}

/// Runs the runner until the process exits.
pub async fn run(cfg: RunnerConfig) {
    std::fs::create_dir_all(sandbox::tasks_dir(&cfg.data_dir)).ok();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (health_tx, mut health_rx) = mpsc::unbounded_channel::<health::Verdict>();
    let last_index =
        std::fs::read_to_string(index_path(&cfg.data_dir)).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    let mut r = Runner {
        cfg,
        tasks: BTreeMap::new(),
        last_index,
        pending: Arc::default(),
        report_now: Arc::default(),
        tx: tx.clone(),
        health_tx,
    };
    r.recover();
    tokio::spawn(report_loop(client_source(&r.cfg), r.cfg.node_id, r.pending.clone(), r.report_now.clone()));
    tokio::spawn(watch_loop(client_source(&r.cfg), r.cfg.node_id, tx.clone()));
    tokio::spawn(logs::serve_loop(r.cfg.masters.clone(), r.cfg.tls.clone(), r.cfg.node_id, r.cfg.data_dir.clone()));
    let fwd = tx.clone();
    tokio::spawn(async move {
        while let Some(v) = health_rx.recv().await {
            if fwd.send(Event::Health(v)).is_err() {
                return;
            }
        }
    });
    let mut rotate = tokio::time::interval(Duration::from_secs(5));
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            Some(e) = rx.recv() => match e {
                Event::Assignments(a) => r.reconcile(a).await,
                Event::Exited { id, code, signal } => r.exited(&id, code, signal),
                Event::Health(v) => r.health(v),
            },
            _ = rotate.tick() => {
                r.rotate_logs();
                ticks += 1;
                if ticks.is_multiple_of(12) {
                    sandbox::prune_logs(&r.cfg.data_dir, ENDED_LOGS_KEPT);
                }
            }
        }
    }
}

type ClientSource = Arc<dyn Fn() -> Option<Client> + Send + Sync>;

fn client_source(cfg: &RunnerConfig) -> ClientSource {
    let (masters, tls) = (cfg.masters.clone(), cfg.tls.clone());
    Arc::new(move || {
        let m = masters.lock().expect("masters").clone();
        (!m.is_empty()).then(|| Client::new(m, tls.clone()))
    })
}

/// Follows the assignment stream of any master, moving on when it breaks.
async fn watch_loop(clients: ClientSource, node_id: u64, tx: mpsc::UnboundedSender<Event>) {
    loop {
        if let Some(c) = clients() {
            match c.watch_assignments(node_id).await {
                Ok(mut stream) => loop {
                    match stream.message().await {
                        Ok(Some(a)) => {
                            if tx.send(Event::Assignments(a)).is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            warn!("assignment stream broke: {e}");
                            break;
                        }
                    }
                },
                Err(e) => warn!("assignment stream: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Sends pending statuses until a master confirms them; a status that changed meanwhile
/// stays pending.
async fn report_loop(clients: ClientSource, node_id: u64, pending: Pending, now: Arc<tokio::sync::Notify>) {
    loop {
        let batch: Vec<pb::TaskStatus> = pending.lock().expect("pending").values().cloned().collect();
        if batch.is_empty() {
            tokio::select! {
                _ = now.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        let ok = match clients() {
            Some(c) => match c.report_tasks(node_id, batch.clone()).await {
                Ok(_) => true,
                Err(e) => {
                    warn!(statuses = batch.len(), "reporting task statuses failed, will retry: {e}");
                    false
                }
            },
            None => false,
        };
        if ok {
            let mut p = pending.lock().expect("pending");
            for s in batch {
                if p.get(&s.task_id) == Some(&s) {
                    p.remove(&s.task_id);
                }
            }
        } else {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

impl Runner {
    fn queue(&self, s: pb::TaskStatus) {
        self.pending.lock().expect("pending").insert(s.task_id.clone(), s);
        self.report_now.notify_one();
    }

    /// Reads the sandboxes: adopts tasks still running, reports lost the ones whose
    /// process is gone.
    fn recover(&mut self) {
        for mut rec in sandbox::load_all(&self.cfg.data_dir) {
            if rec.ended.is_none() {
                if sandbox::alive(rec.pid, rec.start_ticks) {
                    info!(task = %rec.id, pid = rec.pid, "adopting a task that kept running while the agent was away");
                    self.watch_adopted(&rec);
                } else {
                    let e = Ended {
                        state: "lost".into(),
                        reason: "its process ended while the agent was not running".into(),
                        exit_code: None,
                    };
                    warn!(task = %rec.id, "task lost while the agent was away");
                    if let Some(g) = &rec.group {
                        tokio::spawn({
                            let g = g.clone();
                            async move {
                                g.kill_all().await;
                                g.remove_when_empty().await;
                            }
                        });
                    }
                    rec.ended = Some(e.clone());
                    let _ = sandbox::save(&self.cfg.data_dir, &rec);
                    self.queue(status(&rec.id, &e.state, None, &e.reason, None));
                }
            }
            self.tasks.insert(rec.id.clone(), Managed::new(rec, None));
        }
    }

    async fn reconcile(&mut self, a: pb::Assignments) {
        if a.applied_index < self.last_index {
            return;
        }
        if a.applied_index > self.last_index {
            self.last_index = a.applied_index;
            let _ = std::fs::write(index_path(&self.cfg.data_dir), self.last_index.to_string());
        }
        let wanted: BTreeSet<String> = a.tasks.iter().map(|t| t.id.clone()).collect();
        for t in a.tasks {
            match self.tasks.get_mut(&t.id) {
                None if t.kill => {
                    // Never started here: nothing to stop.
                    self.queue(status(&t.id, "killed", None, "killed before it started", None));
                }
                None => self.start(t),
                Some(m) => {
                    if let Some(e) = &m.rec.ended {
                        // Ended here; the masters have not recorded it yet.
                        let s = status(&t.id, &e.state, None, &e.reason, e.exit_code);
                        self.queue(s);
                        continue;
                    }
                    let first_sight = m.assigned.is_none();
                    let kill = t.kill;
                    let leader_state = t.state.clone();
                    if first_sight {
                        // Adopted after a restart: health checks start again.
                        m.assigned = Some(t.clone());
                        self.start_checks(&t.id);
                    }
                    if kill {
                        self.kill(&t.id, "killed by the scheduler");
                    } else if first_sight || matches!(leader_state.as_str(), "staging" | "starting") {
                        let healthy = self.tasks[&t.id].healthy;
                        self.queue(status(&t.id, "running", healthy, "", None));
                    }
                }
            }
        }
        let stale: Vec<String> = self
            .tasks
            .iter()
            .filter(|(id, m)| m.rec.ended.is_none() && !m.killing && !wanted.contains(*id))
            .map(|(id, _)| id.clone())
            .collect();
        if self.cfg.canary_keep_replaced {
            return;
        }
        for id in stale {
            info!(task = %id, "killing a task the leader no longer assigns here (it was replaced)");
            self.kill(&id, "no longer assigned to this node (replaced elsewhere)");
        }
    }

    fn env(&self, t: &pb::AssignedTask, dir: &Path) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()),
            ("HOME".into(), dir.display().to_string()),
            ("LANG".into(), "C.UTF-8".into()),
        ];
        env.extend(t.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let ports: Vec<String> = t.ports.iter().map(u32::to_string).collect();
        for (i, p) in ports.iter().enumerate() {
            env.push((format!("PORT{i}"), p.clone()));
            if let Some(n) = t.port_names.get(i).filter(|n| !n.is_empty()) {
                env.push((format!("PORT_{}", n.to_uppercase().replace('-', "_")), p.clone()));
            }
        }
        if let Some(p) = ports.first() {
            env.push(("PORT".into(), p.clone()));
        }
        env.push(("PORTS".into(), ports.join(",")));
        env.push(("HOST".into(), self.cfg.host.clone()));
        env.push(("TASK_ID".into(), t.id.clone()));
        env.push(("MESOS_TASK_ID".into(), t.id.clone()));
        env.push(("SERVICE_ID".into(), t.service.clone()));
        env.push(("MARATHON_APP_ID".into(), t.service.clone()));
        env.push(("MESOS_SANDBOX".into(), dir.display().to_string()));
        if !t.ip.is_empty() {
            env.push(("TASK_IP".into(), t.ip.clone()));
        }
        env
    }

    fn start(&mut self, t: pb::AssignedTask) {
        let id = t.id.clone();
        let spawned = match &self.cfg.refuse {
            Some(why) => Err(anyhow::anyhow!("{why}")),
            None => self.spawn(&t),
        };
        match spawned {
            Ok(rec) => {
                info!(task = %id, pid = rec.pid, "task started");
                self.tasks.insert(id.clone(), Managed::new(rec, Some(t)));
                self.start_checks(&id);
                self.queue(status(&id, "running", None, "", None));
            }
            Err(e) => {
                warn!(task = %id, "task failed to start: {e:#}");
                let reason = format!("failed to start: {e:#}");
                let rec = Record {
                    id: id.clone(),
                    service: t.service.clone(),
                    pid: 0,
                    start_ticks: 0,
                    group: None,
                    ended: Some(Ended { state: "failed".into(), reason: reason.clone(), exit_code: None }),
                };
                let _ = std::fs::create_dir_all(sandbox::dir(&self.cfg.data_dir, &id));
                let _ = sandbox::save(&self.cfg.data_dir, &rec);
                self.tasks.insert(id.clone(), Managed::new(rec, Some(t)));
                self.queue(status(&id, "failed", None, &reason, None));
            }
        }
    }

    fn spawn(&self, t: &pb::AssignedTask) -> anyhow::Result<Record> {
        use anyhow::Context;
        let dir = sandbox::dir(&self.cfg.data_dir, &t.id);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let open = |name: &str| std::fs::OpenOptions::new().create(true).append(true).open(dir.join(name));
        let (stdout, stderr) = (open("stdout")?, open("stderr")?);
        let mut cmd = if !t.cmd.is_empty() {
            let mut c = std::process::Command::new("/bin/sh");
            c.arg("-c").arg(&t.cmd);
            c
        } else {
            let mut c = std::process::Command::new(t.args.first().context("no cmd and no args")?);
            c.args(&t.args[1..]);
            c
        };
        cmd.env_clear().envs(self.env(t, &dir)).current_dir(&dir);
        cmd.stdin(std::process::Stdio::null()).stdout(stdout).stderr(stderr);
        // Made last: every error before the spawn returns with nothing to undo.
        let group = match &self.cfg.cgroups {
            Some(c) => Some(
                c.create(&t.id, Limits { cpus_milli: t.cpus_milli, mem_mb: t.mem_mb, pids_max: cgroup::PIDS_MAX })
                    .context("creating the task's cgroup")?,
            ),
            None => None,
        };
        // Prepared here: between fork and exec only async-signal-safe calls are allowed.
        let procs: Vec<CString> = group
            .as_ref()
            .map(|g| g.procs_files())
            .unwrap_or_default()
            .iter()
            .map(|p| CString::new(p.as_os_str().as_encoded_bytes()).expect("no NUL in a path"))
            .collect();
        // SAFETY: the closure runs in the child before exec and calls only setsid, open,
        // write and close on buffers prepared beforehand.
        unsafe {
            cmd.pre_exec(move || {
                // A session of its own: the agent's exit or its signals do not reach it.
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                for p in &procs {
                    let fd = libc::open(p.as_ptr(), libc::O_WRONLY);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // "0" moves the writing process, before it can fork.
                    let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    if n != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let cleanup = |group: &Option<TaskGroup>| {
            if let Some(g) = group.clone() {
                tokio::spawn(async move {
                    g.kill_all().await;
                    g.remove_when_empty().await;
                });
            }
        };
        let mut child = match tokio::process::Command::from(cmd).spawn() {
            Ok(c) => c,
            Err(e) => {
                cleanup(&group);
                return Err(anyhow::Error::new(e).context("starting the process"));
            }
        };
        let pid = child.id().unwrap_or(0) as i32;
        let rec = Record {
            id: t.id.clone(),
            service: t.service.clone(),
            pid,
            start_ticks: sandbox::start_ticks(pid).unwrap_or(0),
            group: group.clone(),
            ended: None,
        };
        if let Err(e) = sandbox::save(&self.cfg.data_dir, &rec) {
            // Unrecorded, it could not be found again after a restart: stop it now.
            let _ = child.start_kill();
            cleanup(&group);
            return Err(anyhow::Error::new(e).context("recording the task"));
        }
        let (tx, id) = (self.tx.clone(), t.id.clone());
        tokio::spawn(async move {
            use std::os::unix::process::ExitStatusExt;
            let (code, signal) = match child.wait().await {
                Ok(s) => (s.code(), s.signal()),
                Err(_) => (None, None),
            };
            let _ = tx.send(Event::Exited { id, code, signal });
        });
        Ok(rec)
    }

    /// An adopted task is not our child: its end shows as the pid going away.
    fn watch_adopted(&self, rec: &Record) {
        let (tx, id, pid, ticks) = (self.tx.clone(), rec.id.clone(), rec.pid, rec.start_ticks);
        tokio::spawn(async move {
            while sandbox::alive(pid, ticks) {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            let _ = tx.send(Event::Exited { id, code: None, signal: None });
        });
    }

    fn start_checks(&mut self, id: &str) {
        let Some(m) = self.tasks.get(id) else { return };
        let Some(t) = m.assigned.clone() else { return };
        if t.health_checks.is_empty() || m.rec.ended.is_some() {
            return;
        }
        let dir = sandbox::dir(&self.cfg.data_dir, id);
        let env = self.env(&t, &dir);
        let handles = health::start(&t, env, dir, self.health_tx.clone());
        let m = self.tasks.get_mut(id).expect("checked");
        for h in m.checks.drain(..) {
            h.abort();
        }
        m.verdicts = vec![None; t.health_checks.len()];
        m.checks = handles;
    }

    fn health(&mut self, v: health::Verdict) {
        let Some(m) = self.tasks.get_mut(&v.task_id) else { return };
        if m.rec.ended.is_some() || m.killing {
            return;
        }
        if let Some(slot) = m.verdicts.get_mut(v.check) {
            *slot = Some(v.healthy);
        }
        // Healthy when every check passes; unhealthy when any fails.
        let now = if m.verdicts.contains(&Some(false)) {
            Some(false)
        } else if m.verdicts.iter().all(|x| *x == Some(true)) {
            Some(true)
        } else {
            None
        };
        if now.is_some() && now != m.healthy {
            m.healthy = now;
            info!(task = %v.task_id, healthy = ?now, why = %v.why, "health changed");
            let s = status(&v.task_id, "running", now, &v.why, None);
            self.queue(s);
        }
    }

    /// SIGTERM to the whole task, SIGKILL to what is left after the grace period.
    fn kill(&mut self, id: &str, reason: &str) {
        let Some(m) = self.tasks.get_mut(id) else { return };
        if m.killing || m.rec.ended.is_some() {
            return;
        }
        m.killing = true;
        m.kill_reason = reason.to_string();
        for h in m.checks.drain(..) {
            h.abort();
        }
        let (group, pid, ticks) = (m.rec.group.clone(), m.rec.pid, m.rec.start_ticks);
        tokio::spawn(async move {
            match &group {
                Some(g) => g.signal_all(libc::SIGTERM),
                // SAFETY: the task leads its own process group (setsid); a negative pid
                // signals that group.
                None => unsafe {
                    libc::kill(-pid, libc::SIGTERM);
                },
            }
            tokio::time::sleep(KILL_GRACE).await;
            match &group {
                Some(g) => g.kill_all().await,
                // Only if it is still our process: its pid (and group id) may be another
                // task's by now.
                // SAFETY: as above.
                None if sandbox::alive(pid, ticks) => unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                },
                None => {}
            }
        });
    }

    fn exited(&mut self, id: &str, code: Option<i32>, signal: Option<i32>) {
        let Some(m) = self.tasks.get_mut(id) else { return };
        if m.rec.ended.is_some() {
            return;
        }
        for h in m.checks.drain(..) {
            h.abort();
        }
        let oom = m.rec.group.as_ref().is_some_and(|g| g.oom_killed());
        let (state, reason) = if m.killing {
            ("killed", m.kill_reason.clone())
        } else if oom {
            ("failed", "OOM killed".to_string())
        } else {
            match (code, signal) {
                (Some(0), _) => ("finished", "exited with code 0".to_string()),
                (Some(c), _) => ("failed", format!("exited with code {c}")),
                (None, Some(s)) => ("failed", format!("killed by signal {s}")),
                (None, None) => ("failed", "exited while adopted (exit code unknown)".to_string()),
            }
        };
        info!(task = %id, state, reason = %reason, "task ended");
        let e = Ended { state: state.to_string(), reason: reason.clone(), exit_code: code };
        m.rec.ended = Some(e);
        let _ = sandbox::save(&self.cfg.data_dir, &m.rec);
        if let Some(g) = m.rec.group.clone() {
            // The main process is gone; anything it left behind goes too.
            tokio::spawn(async move {
                g.kill_all().await;
                g.remove_when_empty().await;
            });
        }
        self.queue(status(id, state, None, &reason, code));
    }

    fn rotate_logs(&self) {
        for (id, m) in &self.tasks {
            if m.rec.ended.is_some() {
                continue;
            }
            let dir = sandbox::dir(&self.cfg.data_dir, id);
            for f in ["stdout", "stderr"] {
                if let Err(e) = sandbox::rotate_if_big(&dir.join(f)) {
                    warn!(task = %id, "rotating {f}: {e}");
                }
            }
        }
    }
}
