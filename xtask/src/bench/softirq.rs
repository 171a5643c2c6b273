//! softirq benchmark: a SYN flood (hping3 --flood, bounded by `timeout`, pinned to the last
//! CPU) from one network namespace to nginx in another, over a veth pair we create. Phases of
//! equal length: nothing attached, `tracer softirq-top` (default: sampled timing),
//! `tracer softirq-top --exact`, libbpf-tools `softirqs`, in rotated rounds.
//! For each phase: packets/s the server received (veth rx_packets), and — with
//! kernel.bpf_stats_enabled — run_time_ns / run_cnt of every BPF program the tool loaded
//! (bpftool prog show), so the per-event kernel cost is compared under the same load.

use std::{
    collections::BTreeMap,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::common::median;
use crate::util::release_bin;
use testbed::{netns::NetnsPair, nginx::Nginx};

const FLOOD_SECS: u32 = 5;
/// The untraced flood rate varies by a few % between rounds on these VMs; medians of 9
/// paired rounds resolve differences of about 1 %.
const ROUNDS: usize = 9;
/// `Phase::round` of the flood run with bpf_stats on, for per-event costs only.
const COST_ROUND: usize = usize::MAX;
const UNTRACED: &str = "no tracing";
const OURS: &str = "tracer softirq-top";
const OURS_EXACT: &str = "tracer softirq-top --exact";
const THEIRS: &str = "libbpf-tools softirqs";
const LIBBPF_SOFTIRQS: &str = "/usr/sbin/softirqs";

/// The flood's two namespaces and the nginx it targets.
struct Net {
    pair: NetnsPair,
    _nginx: Nginx,
    /// The CPU hping3 runs on (and with it the receive path's softirqs).
    cpu: u32,
}

impl Net {
    fn create() -> Result<Self> {
        let pair = NetnsPair::create("bench")?;
        let nginx = Nginx::start(Some(&pair.server), &pair.server_addr, 80)?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        Ok(Self {
            pair,
            _nginx: nginx,
            cpu: cpus - 1,
        })
    }

    /// Floods for FLOOD_SECS; returns packets/s received by the server.
    fn flood(&self) -> Result<f64> {
        Ok(self
            .pair
            .syn_flood_on(80, FLOOD_SECS, Some(self.cpu))?
            .received_pps())
    }
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status();
}

/// Every loaded BPF program: id → (name, run_time_ns, run_cnt). bpftool here cannot say which
/// process owns a program, so a phase takes the programs that appeared after its tool started.
fn prog_list() -> BTreeMap<u32, (String, u64, u64)> {
    super::bpf_stats::programs()
        .into_iter()
        .map(|(id, p)| (id, (p.name, p.run_time_ns, p.run_cnt)))
        .collect()
}

/// The softirq-related programs among `ids`, summed per name.
fn prog_stats(ids: &[u32]) -> BTreeMap<String, (u64, u64)> {
    let mut stats = BTreeMap::new();
    for (id, (name, t, c)) in prog_list() {
        if ids.contains(&id) {
            let e = stats.entry(name).or_insert((0, 0));
            e.0 += t;
            e.1 += c;
        }
    }
    stats
}

fn is_softirq_prog(name: &str) -> bool {
    name.starts_with("softirq_") || name.starts_with("sched_switch")
}

struct Phase {
    name: &'static str,
    round: usize,
    pps: f64,
    /// name → (run_time_ns, run_cnt) during the flood.
    progs: BTreeMap<String, (u64, u64)>,
}

/// Starts `cmd`, waits until its programs are loaded, floods, and stops it with SIGINT.
fn phase_with(name: &'static str, net: &Net, mut cmd: Command) -> Result<Phase> {
    let existing = prog_list();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut ids: Vec<u32> = Vec::new();
    // Wait until its entry and exit programs are loaded (and a moment more for the rest).
    while ids.len() < 2 {
        if Instant::now() > deadline || child.try_wait()?.is_some() {
            let _ = child.kill();
            bail!("{name} did not load its programs");
        }
        thread::sleep(Duration::from_millis(200));
        ids = prog_list()
            .into_iter()
            .filter(|(id, (n, _, _))| !existing.contains_key(id) && is_softirq_prog(n))
            .map(|(id, _)| id)
            .collect();
    }
    thread::sleep(Duration::from_millis(500));
    ids = prog_list()
        .into_iter()
        .filter(|(id, (n, _, _))| !existing.contains_key(id) && is_softirq_prog(n))
        .map(|(id, _)| id)
        .collect();
    let before = prog_stats(&ids);
    let pps = net.flood()?;
    let after = prog_stats(&ids);
    signal(pid, "INT");
    let _ = child.wait();
    let progs = super::bpf_stats::progs_delta(&before, &after);
    Ok(Phase {
        name,
        round: 0,
        pps,
        progs,
    })
}

/// `tracer softirq-top` as the setup `name` runs it.
fn ours(tracer: &std::path::Path, name: &str) -> Command {
    let mut cmd = Command::new(tracer);
    cmd.args(["softirq-top", "-b", "1"]);
    if name == OURS_EXACT {
        cmd.arg("--exact");
    }
    cmd
}

fn per_event(progs: &BTreeMap<String, (u64, u64)>, prefix: &str) -> Option<(f64, u64)> {
    let (t, c) = progs
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .fold((0u64, 0u64), |(t, c), (_, (t2, c2))| (t + t2, c + c2));
    (c > 0).then(|| (t as f64 / c as f64, c))
}

pub fn run() -> Result<()> {
    for cmd in ["hping3", "bpftool", "ip"] {
        if Command::new("which")
            .arg(cmd)
            .stdout(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            bail!("{cmd} is not installed (cargo xtask setup installs it)");
        }
    }
    let tracer = release_bin("tracer");
    let stats_path = "/proc/sys/kernel/bpf_stats_enabled";
    let old_stats =
        std::fs::read_to_string(stats_path).context("cannot read bpf_stats_enabled (root?)")?;
    // Packet rates are measured with bpf_stats off: the kernel's accounting itself costs two
    // clock reads per program run, which no user pays. One more flood per tool with it on
    // gives the per-event cost.
    std::fs::write(stats_path, "0").context("cannot set bpf_stats_enabled")?;
    let result = (|| -> Result<(Vec<Phase>, u32)> {
        let net = Net::create()?;
        let mut phases = Vec::new();
        // Rounds of every setup, rotated each round, so that drift of the flood rate over the run
        // (other load, caches, the CPU's clock) falls on every setup alike; the pps loss is the
        // median of per-round ratios against that round's untraced flood.
        let setups: Vec<&str> = if std::path::Path::new(LIBBPF_SOFTIRQS).exists() {
            vec![UNTRACED, OURS, OURS_EXACT, THEIRS]
        } else {
            vec![UNTRACED, OURS, OURS_EXACT]
        };
        for round in 0..ROUNDS {
            for i in 0..setups.len() {
                let name = setups[(i + round) % setups.len()];
                let phase = match name {
                    OURS | OURS_EXACT => phase_with(name, &net, ours(&tracer, name))?,
                    THEIRS => {
                        let mut theirs = Command::new(LIBBPF_SOFTIRQS);
                        theirs.args(["1"]);
                        phase_with(THEIRS, &net, theirs)?
                    }
                    _ => Phase {
                        name: UNTRACED,
                        round,
                        pps: net.flood()?,
                        progs: BTreeMap::new(),
                    },
                };
                phases.push(Phase { round, ..phase });
            }
        }
        std::fs::write(stats_path, "1").context("cannot enable bpf_stats")?;
        for name in [OURS, OURS_EXACT] {
            phases.push(Phase {
                round: COST_ROUND,
                ..phase_with(name, &net, ours(&tracer, name))?
            });
        }
        if setups.contains(&THEIRS) {
            let mut theirs = Command::new(LIBBPF_SOFTIRQS);
            theirs.args(["1"]);
            phases.push(Phase {
                round: COST_ROUND,
                ..phase_with(THEIRS, &net, theirs)?
            });
        }
        Ok((phases, net.cpu))
    })();
    let _ = std::fs::write(stats_path, old_stats.trim());
    let (phases, flood_cpu) = result?;

    let untraced: BTreeMap<usize, f64> = phases
        .iter()
        .filter(|p| p.name == UNTRACED)
        .map(|p| (p.round, p.pps))
        .collect();
    println!(
        "SYN flood (hping3 --flood over veth to nginx, 2 namespaces, hping3 on CPU {}): {ROUNDS} rounds of {FLOOD_SECS} s per setup, order rotated",
        flood_cpu
    );
    println!(
        "{:<28} {:>12} {:>21} {:>12} {:>16} {:>14} {:>16}",
        "SETUP", "RX PPS", "MIN-MAX", "PPS VS NONE", "NS/SOFTIRQ", "SOFTIRQS", "NS/SCHED_SWITCH"
    );
    let mut names: Vec<&str> = Vec::new();
    for p in &phases {
        if !names.contains(&p.name) {
            names.push(p.name);
        }
    }
    for name in names {
        let runs: Vec<&Phase> = phases
            .iter()
            .filter(|p| p.name == name && p.round != COST_ROUND)
            .collect();
        let costs: Vec<&Phase> = phases
            .iter()
            .filter(|p| p.name == name && p.round == COST_ROUND)
            .collect();
        let pps: Vec<f64> = runs.iter().map(|p| p.pps).collect();
        let ratios: Vec<f64> = runs
            .iter()
            .filter_map(|p| untraced.get(&p.round).map(|base| p.pps / base - 1.0))
            .collect();
        let mut progs: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for p in &costs {
            for (k, (t, c)) in &p.progs {
                let e = progs.entry(k.clone()).or_default();
                e.0 += t;
                e.1 += c;
            }
        }
        let entry = per_event(&progs, "softirq_entry");
        let exit = per_event(&progs, "softirq_exit");
        let switch = per_event(&progs, "sched_switch");
        let per_softirq = match (entry, exit) {
            (Some((e, _)), Some((x, _))) => format!("{:.0} ({:.0}+{:.0})", e + x, e, x),
            _ => "-".into(),
        };
        let min = pps.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = pps.iter().cloned().fold(0.0, f64::max);
        println!(
            "{:<28} {:>12.0} {:>21} {:>11.1}% {:>16} {:>14} {:>16}",
            name,
            median(pps),
            format!("{min:.0}-{max:.0}"),
            median(ratios) * 100.0,
            per_softirq,
            entry
                .map(|(_, n)| n.to_string())
                .unwrap_or_else(|| "-".into()),
            switch
                .map(|(t, _)| format!("{t:.0}"))
                .unwrap_or_else(|| "-".into()),
        );
        if !progs.is_empty() {
            let list: Vec<String> = progs
                .iter()
                .map(|(k, (t, c))| {
                    format!(
                        "{k} {c} runs {:.0} ns",
                        if *c > 0 { *t as f64 / *c as f64 } else { 0.0 }
                    )
                })
                .collect();
            println!("    {}", list.join("; "));
        }
    }
    println!(
        "RX PPS: median over rounds. PPS VS NONE: median of per-round ratios against that round's untraced flood."
    );
    println!(
        "NS/SOFTIRQ: kernel time of the entry + exit programs per softirq (bpf_stats run_time_ns / run_cnt, one more flood with bpf_stats on; the rounds above ran with it off)."
    );
    Ok(())
}
