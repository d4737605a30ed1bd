//! A task's sandbox, `<data-dir>/tasks/<task id>/`: its `stdout` and `stderr` (rotated
//! at a bounded size), and `task.json`, what a restarted agent needs to find the task
//! again (pid and its start time, cgroup paths, and how it ended).

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::cgroup::TaskGroup;

/// A log file is rotated past this size; this many old ones are kept (`stdout.1` …).
pub const LOG_MAX_BYTES: u64 = 10 << 20;
pub const LOG_KEEP: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ended {
    /// finished, failed, killed or lost.
    pub state: String,
    pub reason: String,
    pub exit_code: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub service: String,
    pub pid: i32,
    /// The process's start time (clock ticks since boot, /proc/<pid>/stat field 22):
    /// with the pid, it tells our process from a later one that got the same pid.
    pub start_ticks: u64,
    pub group: Option<TaskGroup>,
    pub ended: Option<Ended>,
}

pub fn tasks_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tasks")
}

pub fn dir(data_dir: &Path, id: &str) -> PathBuf {
    tasks_dir(data_dir).join(id)
}

pub fn save(data_dir: &Path, r: &Record) -> io::Result<()> {
    let d = dir(data_dir, &r.id);
    let tmp = d.join("task.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(r).map_err(io::Error::other)?)?;
    std::fs::rename(tmp, d.join("task.json"))
}

/// Every task recorded in the data dir.
pub fn load_all(data_dir: &Path) -> Vec<Record> {
    let Ok(rd) = std::fs::read_dir(tasks_dir(data_dir)) else { return Vec::new() };
    let mut out: Vec<Record> = rd
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("task.json")).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// `pid`'s state letter and start time, from one read of /proc/<pid>/stat.
fn stat(pid: i32) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    let mut rest = stat.get(stat.rfind(')')? + 2..)?.split_whitespace();
    let state = rest.next()?.to_string();
    Some((state, rest.nth(18)?.parse().ok()?))
}

/// The start time of `pid`, if it is alive.
pub fn start_ticks(pid: i32) -> Option<u64> {
    stat(pid).map(|(_, t)| t)
}

/// Whether `pid` is still the process recorded with `ticks` (and not a zombie).
pub fn alive(pid: i32, ticks: u64) -> bool {
    matches!(stat(pid), Some((state, t)) if t == ticks && state != "Z" && state != "X")
}

/// Deletes the logs of ended tasks but the `keep` that ended last (by when `task.json`
/// was written), so a task that fails in a loop cannot fill the disk.
pub fn prune_logs(data_dir: &Path, keep: usize) {
    let mut ended: Vec<(std::time::SystemTime, PathBuf)> = load_all(data_dir)
        .into_iter()
        .filter(|r| r.ended.is_some())
        .filter_map(|r| {
            let d = dir(data_dir, &r.id);
            let t = std::fs::metadata(d.join("task.json")).and_then(|m| m.modified()).ok()?;
            Some((t, d))
        })
        .collect();
    ended.sort_by_key(|e| std::cmp::Reverse(e.0));
    for (_, d) in ended.into_iter().skip(keep) {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("stdout") || name.starts_with("stderr") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Copy-and-truncate rotation: the task keeps its descriptor (opened for append), so
/// nothing is cut off mid-stream but the lines written during the copy.
pub fn rotate_if_big(path: &Path) -> io::Result<bool> {
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if len <= LOG_MAX_BYTES {
        return Ok(false);
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("log").to_string();
    let old = |i: usize| path.with_file_name(format!("{name}.{i}"));
    for i in (1..LOG_KEEP).rev() {
        if old(i).exists() {
            std::fs::rename(old(i), old(i + 1))?;
        }
    }
    std::fs::copy(path, old(1))?;
    std::fs::OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_big_log_rotates_and_old_ones_are_bounded() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("stdout");
        for round in 0..(LOG_KEEP + 2) {
            std::fs::write(&p, vec![b'a' + round as u8; LOG_MAX_BYTES as usize + 1]).unwrap();
            assert!(rotate_if_big(&p).unwrap());
            assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
        }
        assert!(!rotate_if_big(&p).unwrap(), "an empty log stays");
        let kept: Vec<_> = (1..=LOG_KEEP + 1).filter(|i| p.with_file_name(format!("stdout.{i}")).exists()).collect();
        assert_eq!(kept, (1..=LOG_KEEP).collect::<Vec<_>>());
        let newest = std::fs::read(p.with_file_name("stdout.1")).unwrap();
        assert_eq!(newest[0], b'a' + (LOG_KEEP + 1) as u8);
    }

    #[test]
    fn only_the_newest_ended_tasks_keep_their_logs() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..5 {
            let id = format!("t.{i}");
            std::fs::create_dir_all(dir(d.path(), &id)).unwrap();
            std::fs::write(dir(d.path(), &id).join("stdout"), "x").unwrap();
            let ended = (i != 4).then(|| Ended { state: "failed".into(), reason: String::new(), exit_code: Some(1) });
            save(d.path(), &Record { id, service: "/t".into(), pid: 1, start_ticks: 1, group: None, ended }).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        prune_logs(d.path(), 2);
        let has_log = |i: usize| dir(d.path(), &format!("t.{i}")).join("stdout").exists();
        assert_eq!((0..5).map(has_log).collect::<Vec<_>>(), vec![false, false, true, true, true], "t.4 still runs");
        assert!(dir(d.path(), "t.0").join("task.json").exists(), "the record stays");
    }

    #[test]
    fn our_own_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = std::process::id() as i32;
        let t = start_ticks(me).unwrap();
        assert!(alive(me, t));
        assert!(!alive(me, t + 1));
        assert!(!alive(i32::MAX, t));
    }
}
