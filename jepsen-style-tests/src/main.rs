//! `jepsen-style-tests`: run fault-injection tests against a real multi-process cluster,
//! re-check stored histories, print fault schedules, clean up leftovers.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use jepsen_style_tests::checker::{self, Verdict};
use jepsen_style_tests::history;
use jepsen_style_tests::run::{self, RunOpts};
use jepsen_style_tests::schedule::{self, Nemesis};
use jepsen_style_tests::workload::Kind;
use std::path::PathBuf;
use std::time::Duration;

/// Fault-injection runs against a real multi-process cluster (Jepsen's method).
///
/// `run` starts one `cluster` process per network namespace through `init` and `join`,
/// runs concurrent clients from the host, injects faults on a schedule derived from the
/// seed, heals, runs a liveness phase, checks the history and writes a report folder
/// (history.jsonl, nodes/*.log, summary.json, latency.svg, schedule.json, faults.json).
/// Needs root (namespaces, iptables). Exit status: 0 valid, 1 anomaly, 2 unknown,
/// 3 the run itself failed.
#[derive(Parser)]
#[command(name = "jepsen-style-tests", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one test and check it.
    Run(RunArgs),
    /// Check a stored history.jsonl again (e.g. with a longer search timeout).
    Check {
        #[arg(long, value_enum, default_value_t = Kind::Register)]
        workload: Kind,
        /// Seconds the linearizability search may take before the verdict is unknown.
        #[arg(long, default_value_t = 300)]
        check_timeout: u64,
        history: PathBuf,
    },
    /// Print the fault schedule a seed gives, as JSON (the run uses exactly this).
    Schedule {
        #[arg(long, value_delimiter = ',', default_value = "partition-majority")]
        nemesis: Vec<Nemesis>,
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// Worker-only agents (what kill-agent chooses from).
        #[arg(long, default_value_t = 0)]
        workers: usize,
        #[arg(long, default_value_t = 120)]
        time: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Remove namespaces, bridges and iptables rules left by runs that were killed -9.
    Cleanup,
    /// Print a markdown table (workload × nemesis → ops, ok/fail/info, verdict, longest
    /// window without a successful operation) from report folders' summary.json files.
    Table { summaries: Vec<PathBuf> },
}

#[derive(clap::Args)]
struct RunArgs {
    #[arg(long, value_enum, default_value_t = Kind::Register)]
    workload: Kind,
    /// Comma-separated: none, partition-one, partition-majority, partition-majorities-ring,
    /// primaries, kill, pause, clock, member, kill-agent (a worker-only agent; needs
    /// --workers). Several take turns.
    #[arg(long, value_delimiter = ',', default_value = "partition-majority")]
    nemesis: Vec<Nemesis>,
    /// Masters (each in its own namespace).
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Worker-only agents, faulted only by kill-agent [default: 2 for the registry and
    /// tasks workloads, else 0].
    #[arg(long)]
    workers: Option<usize>,
    /// Seconds of the fault phase (the heal and liveness phase come after).
    #[arg(long, default_value_t = 60)]
    time: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Turn on coord's deliberately unsafe leader-local reads: the run must find anomalies.
    #[arg(long)]
    canary: bool,
    /// Concurrent clients, spread over the masters.
    #[arg(long, default_value_t = 10)]
    concurrency: usize,
    /// Target operations per second over all clients.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// A client gives up on a request after this long (a write then becomes info).
    #[arg(long, default_value_t = 1_000)]
    client_timeout_ms: u64,
    /// Seconds of the liveness phase after the heal.
    #[arg(long, default_value_t = 10)]
    liveness: u64,
    /// Register operations per key before clients move to fresh keys.
    #[arg(long, default_value_t = 300)]
    ops_per_key: u64,
    /// Seconds the linearizability search may take before the verdict is unknown.
    #[arg(long, default_value_t = 300)]
    check_timeout: u64,
    /// Report folder [default: store/<workload>-<nemeses>-s<seed>-<unix time>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// The cluster binary [default: next to this binary].
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Keep the nodes' data dirs in the report folder.
    #[arg(long)]
    keep_data: bool,
}

fn main() {
    let cli = Cli::parse();
    // Whatever happens, the namespaces, processes and rules go away.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        jepsen_style_tests::net::cleanup();
        // A panic anywhere (a client task included) invalidates the run: stop here
        // rather than carry on against a cluster that was just torn down.
        std::process::exit(3);
    }));
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let code = rt.block_on(async {
        tokio::spawn(async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("sigterm");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            eprintln!("jepsen: interrupted; cleaning up namespaces, processes and iptables rules");
            jepsen_style_tests::net::cleanup();
            std::process::exit(130);
        });
        match main_cmd(cli.cmd).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("jepsen-style-tests: {e:#}");
                3
            }
        }
    });
    jepsen_style_tests::net::cleanup();
    std::process::exit(code);
}

fn exit_code(v: Verdict) -> i32 {
    match v {
        Verdict::Valid => 0,
        Verdict::Invalid => 1,
        Verdict::Unknown => 2,
    }
}

async fn main_cmd(cmd: Cmd) -> Result<i32> {
    match cmd {
        Cmd::Run(a) => {
            if a.nodes == 0 || a.nodes > 9 {
                bail!("--nodes must be 1..9");
            }
            if a.concurrency == 0 {
                bail!("--concurrency must be at least 1");
            }
            let nem_label = a.nemesis.iter().map(|n| n.name()).collect::<Vec<_>>().join(",");
            let out = a.out.unwrap_or_else(|| {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                PathBuf::from("store").join(format!(
                    "{}-{}-s{}{}-{t}",
                    a.workload.name(),
                    nem_label,
                    a.seed,
                    if a.canary { "-canary" } else { "" }
                ))
            });
            let bin = match a.bin {
                Some(b) => b,
                None => std::env::current_exe()?.parent().context("exe dir")?.join("cluster"),
            };
            let workers = a.workers.unwrap_or(if matches!(a.workload, Kind::Registry | Kind::Tasks) { 2 } else { 0 });
            if workers == 0 && a.nemesis.contains(&Nemesis::KillAgent) {
                bail!("the kill-agent nemesis needs worker-only agents: pass --workers N");
            }
            let s = run::run(RunOpts {
                workload: a.workload,
                nemeses: a.nemesis,
                nodes: a.nodes,
                workers,
                time_s: a.time,
                seed: a.seed,
                canary: a.canary,
                concurrency: a.concurrency,
                rate: a.rate,
                client_timeout_ms: a.client_timeout_ms,
                liveness_s: a.liveness,
                ops_per_key: a.ops_per_key,
                check_timeout_s: a.check_timeout,
                out,
                bin,
                keep_data: a.keep_data,
            })
            .await?;
            println!(
                "{} × {}: {} ops (ok {}, fail {}, info {}), longest without ok {:.1}s, liveness {}, verdict {:?}",
                s.workload.name(),
                nem_label,
                s.ops.total,
                s.ops.all.ok,
                s.ops.all.fail,
                s.ops.all.info,
                s.longest_without_ok_s,
                if s.liveness.ok { "ok".to_string() } else { format!("FAILED (missing {:?})", s.liveness.missing) },
                s.verdict
            );
            for c in &s.checks {
                println!("  {}: {:?}", c.checker, c.verdict);
                for a in c.anomalies.iter().take(5) {
                    println!("    {a}");
                }
            }
            println!("report: {}", s.report_dir);
            Ok(exit_code(s.verdict))
        }
        Cmd::Check { workload, check_timeout, history: path } => {
            let ops = history::read_jsonl(&path)?;
            let calls = history::pair(&ops)?;
            let r = match workload {
                Kind::Register => checker::register::check(&calls, Duration::from_secs(check_timeout)),
                Kind::Set => checker::set::check(&calls),
                Kind::Ipam => checker::ipam::check(&calls),
                Kind::Registry => bail!("the registry check needs the run's events and faults; read summary.json"),
                Kind::Tasks => {
                    let f = path.with_file_name("tasks-final.json");
                    let text = std::fs::read_to_string(&f).with_context(|| format!("{}", f.display()))?;
                    let fin = serde_json::from_str(&text).with_context(|| format!("{}", f.display()))?;
                    checker::tasks::check(&calls, &fin, jepsen_style_tests::tasks::INITIAL)
                }
                Kind::Watch | Kind::Lock | Kind::Lease | Kind::Election => {
                    bail!("this check needs the run's committed history and heal time; read summary.json")
                }
            };
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(exit_code(r.verdict))
        }
        Cmd::Schedule { nemesis, nodes, workers, time, seed } => {
            println!("{}", serde_json::to_string_pretty(&schedule::plan(&nemesis, nodes, workers, time, seed))?);
            Ok(0)
        }
        Cmd::Table { summaries } => {
            println!("| workload | nemesis | canary | nodes | seconds | ops | ok | fail | info | verdict | anomalies | longest without ok |");
            println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
            for p in summaries {
                let p = if p.is_dir() { p.join("summary.json") } else { p };
                let text = std::fs::read_to_string(&p).with_context(|| format!("{}", p.display()))?;
                let s: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}", p.display()))?;
                let anomalies: usize = s["checks"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|c| {
                                c["stats"]["keys_invalid"]
                                    .as_u64()
                                    .unwrap_or(c["anomalies"].as_array().map_or(0, |x| x.len() as u64))
                                    as usize
                            })
                            .sum()
                    })
                    .unwrap_or(0);
                let nem: Vec<&str> =
                    s["nemeses"].as_array().map(|a| a.iter().filter_map(|x| x.as_str()).collect()).unwrap_or_default();
                println!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} s |",
                    s["workload"].as_str().unwrap_or("?"),
                    nem.join(", "),
                    if s["canary"].as_bool().unwrap_or(false) { "on" } else { "off" },
                    s["nodes"],
                    s["time_s"],
                    s["ops"]["total"],
                    s["ops"]["ok"],
                    s["ops"]["fail"],
                    s["ops"]["info"],
                    s["verdict"].as_str().unwrap_or("?"),
                    anomalies,
                    s["longest_without_ok_s"].as_f64().unwrap_or(f64::NAN),
                );
            }
            Ok(0)
        }
        Cmd::Cleanup => {
            let removed = jepsen_style_tests::net::cleanup_leftovers()?;
            if removed.is_empty() {
                println!("nothing to clean up");
            }
            for r in removed {
                println!("removed {r}");
            }
            Ok(0)
        }
    }
}
