//! Test network: one network namespace per node, each with its own IP on a veth pair
//! plugged into a bridge on the host. Clients run on the host and reach every node over
//! the bridge; partitions are iptables DROP rules inside the nodes' namespaces, so they cut
//! node-to-node traffic and never the clients' view.
//!
//! Everything created is recorded in one process-wide ledger, and [`cleanup`] undoes it:
//! it runs at the end of a run, from the Ctrl-C/SIGTERM handler and from the panic hook.
//! `jepsen-style-tests cleanup` removes leftovers of runs that were killed with -9.

use anyhow::{bail, Context, Result};
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// Every name we create starts with this, so leftovers can be found.
pub const PREFIX: &str = "jst";

#[derive(Default)]
struct Ledger {
    namespaces: Vec<String>,
    /// Host ends of the veth pairs (deleting one end deletes the pair; a namespace's
    /// teardown in the kernel can lag, so they are removed explicitly).
    veths: Vec<String>,
    bridge: Option<String>,
    /// Host iptables rules, as the argument list after -I/-D CHAIN.
    host_rules: Vec<(String, Vec<String>)>,
    /// Processes to kill (SIGCONT first: they may be stopped).
    pids: Vec<i32>,
}

static LEDGER: Mutex<Option<Ledger>> = Mutex::new(None);

fn ledger<R>(f: impl FnOnce(&mut Ledger) -> R) -> R {
    let mut g = LEDGER.lock().unwrap_or_else(|e| e.into_inner());
    f(g.get_or_insert_with(Ledger::default))
}

pub fn track_pid(pid: i32) {
    ledger(|l| l.pids.push(pid));
}

pub fn untrack_pid(pid: i32) {
    ledger(|l| l.pids.retain(|p| *p != pid));
}

/// Runs a command, failing with its stderr.
pub fn sh(prog: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {prog} (is it installed? `make jepsen-deps` installs it)"))?;
    if !out.status.success() {
        bail!("{prog} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub struct Net {
    pub id: String,
    pub bridge: String,
    pub host_ip: String,
    pub ips: Vec<String>,
    pub namespaces: Vec<String>,
}

impl Net {
    /// Creates the bridge and `nodes` namespaces. Needs root.
    pub fn create(nodes: usize) -> Result<Net> {
        if unsafe { libc::geteuid() } != 0 {
            bail!("network namespaces and iptables need root: run as root (or with sudo)");
        }
        let id = format!("{PREFIX}{}", std::process::id() % 100_000);
        // A /24 on 10.231.x.0 not already routed here.
        let routes = sh("ip", &["-4", "-o", "addr"]).unwrap_or_default();
        let mut third = std::process::id() % 250;
        for _ in 0..250 {
            if !routes.contains(&format!("10.231.{third}.")) {
                break;
            }
            third = (third + 1) % 250;
        }
        let host_ip = format!("10.231.{third}.1");
        let bridge = format!("{id}b");
        sh("ip", &["link", "add", &bridge, "type", "bridge"])?;
        ledger(|l| l.bridge = Some(bridge.clone()));
        sh("ip", &["addr", "add", &format!("{host_ip}/24"), "dev", &bridge])?;
        sh("ip", &["link", "set", &bridge, "up"])?;
        // With br_netfilter loaded, bridged frames cross the host's FORWARD chain, which
        // Docker and firewalls often set to DROP.
        let rule: Vec<String> = ["-i", &bridge, "-o", &bridge, "-j", "ACCEPT", "-m", "comment", "--comment", &id]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let args: Vec<&str> = ["-I", "FORWARD"].into_iter().chain(rule.iter().map(|s| s.as_str())).collect();
        if sh("iptables", &args).is_ok() {
            ledger(|l| l.host_rules.push(("FORWARD".into(), rule)));
        }
        let mut net = Net { id: id.clone(), bridge: bridge.clone(), host_ip, ips: vec![], namespaces: vec![] };
        for i in 0..nodes {
            let ns = format!("{id}n{}", i + 1);
            let veth = format!("{id}v{}", i + 1);
            let ip = format!("10.231.{third}.{}", 11 + i);
            sh("ip", &["netns", "add", &ns])?;
            ledger(|l| l.namespaces.push(ns.clone()));
            sh("ip", &["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            ledger(|l| l.veths.push(veth.clone()));
            sh("ip", &["link", "set", &veth, "master", &bridge, "up"])?;
            sh("ip", &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            sh("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            sh("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
            net.ips.push(ip);
            net.namespaces.push(ns);
        }
        Ok(net)
    }

    /// Drops all traffic from the listed peers inside node i's namespace (replacing any
    /// earlier grudge of node i).
    pub fn set_grudge(&self, i: usize, peers: &[usize]) -> Result<()> {
        let ns = &self.namespaces[i];
        sh("ip", &["netns", "exec", ns, "iptables", "-F", "INPUT"])?;
        for &p in peers {
            sh("ip", &["netns", "exec", ns, "iptables", "-A", "INPUT", "-s", &self.ips[p], "-j", "DROP"])?;
        }
        Ok(())
    }

    pub fn heal(&self) -> Result<()> {
        for ns in &self.namespaces {
            sh("ip", &["netns", "exec", ns, "iptables", "-F", "INPUT"])?;
        }
        Ok(())
    }
}

/// Kills every tracked process and removes every namespace, the bridge and host rules.
/// Idempotent, and safe to call from a signal or panic path.
pub fn cleanup() {
    let l = LEDGER.lock().unwrap_or_else(|e| e.into_inner()).take();
    let Some(l) = l else { return };
    for pid in &l.pids {
        unsafe {
            libc::kill(*pid, libc::SIGCONT);
            libc::kill(*pid, libc::SIGKILL);
        }
    }
    for ns in &l.namespaces {
        kill_namespace(ns);
        let _ = sh("ip", &["netns", "del", ns]);
    }
    for v in &l.veths {
        let _ = sh("ip", &["link", "del", v]);
    }
    if let Some(b) = &l.bridge {
        let _ = sh("ip", &["link", "del", b]);
    }
    for (chain, rule) in &l.host_rules {
        let args: Vec<&str> = ["-D", chain.as_str()].into_iter().chain(rule.iter().map(|s| s.as_str())).collect();
        let _ = sh("iptables", &args);
    }
}

fn kill_namespace(ns: &str) {
    if let Ok(pids) = sh("ip", &["netns", "pids", ns]) {
        for p in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            unsafe {
                libc::kill(p, libc::SIGCONT);
                libc::kill(p, libc::SIGKILL);
            }
        }
    }
}

/// Removes what runs killed with -9 left behind: namespaces and bridges named jst*, and
/// host FORWARD rules carrying a jst* comment. Returns what it removed.
pub fn cleanup_leftovers() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for line in sh("ip", &["netns", "list"])?.lines() {
        let ns = line.split_whitespace().next().unwrap_or("");
        if ns.starts_with(PREFIX) {
            kill_namespace(ns);
            sh("ip", &["netns", "del", ns])?;
            removed.push(format!("namespace {ns}"));
        }
    }
    for line in sh("ip", &["-o", "link", "show"])?.lines() {
        // "25: jst123v2@if2: <...>"
        let name = line.split(':').nth(1).map(|s| s.trim()).unwrap_or("");
        let name = name.split('@').next().unwrap_or("");
        if name.starts_with(PREFIX) {
            sh("ip", &["link", "del", name])?;
            removed.push(format!("link {name}"));
        }
    }
    if let Ok(rules) = sh("iptables", &["-S", "FORWARD"]) {
        for r in rules.lines().filter(|r| r.starts_with("-A FORWARD") && r.contains(&format!("--comment {PREFIX}"))) {
            let mut args: Vec<&str> = r.split_whitespace().collect();
            args[0] = "-D";
            sh("iptables", &args)?;
            removed.push(format!("iptables rule {r}"));
        }
    }
    Ok(removed)
}
