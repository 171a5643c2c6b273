//! sched benchmark: what the scheduler views cost per context switch, against libbpf-tools.
//!
//! The load is a context-switch microbenchmark: `tracer-workload pingpong N` bounces a byte
//! between two processes pinned to one CPU (two switches and two wakeups per round trip).
//! Phases: nothing attached, then each tool alone (tracer runqlat, libbpf-tools runqlat,
//! tracer cpudist, libbpf-tools cpudist, tracer ktop), then nothing again. For each phase:
//! ns per round trip (median of runs) and, with kernel.bpf_stats_enabled, run_time_ns /
//! run_cnt of the tool's sched_switch program and of all its programs per switch.

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::util::release_bin;

const ROUND_TRIPS: u64 = 100_000;
const RUNS: usize = 5;
const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

pub fn run() -> Result<()> {
    let tracer = release_bin("tracer");
    let workload = release_bin("tracer-workload");
    for bin in [&tracer, &workload] {
        if !bin.exists() {
            bail!("{} missing: run 'cargo xtask build' first", bin.display());
        }
    }
    let stats_before = std::fs::read_to_string(BPF_STATS).unwrap_or_default();
    std::fs::write(BPF_STATS, "1")
        .context("cannot enable kernel.bpf_stats_enabled (run as root)")?;
    let result = phases(&tracer, &workload);
    let _ = std::fs::write(BPF_STATS, stats_before.trim());
    let phases = result?;
    let base = phases.first().map(|p| p.rtt_ns).unwrap_or(1.0);
    println!(
        "context-switch ping-pong: {ROUND_TRIPS} round trips x {RUNS} runs, both processes on CPU 0 \
         (2 sched_switch + 2 wakeups per round trip)"
    );
    println!(
        "{:<26} {:>10} {:>9} {:>16} {:>16} {:>12}",
        "PHASE", "NS/RTT", "SLOWDOWN", "SWITCH NS/EVENT", "ALL NS/SWITCH", "SWITCHES"
    );
    for p in &phases {
        let slowdown = (p.rtt_ns / base - 1.0) * 100.0;
        let (switch_cost, all_cost, switches) = match p.switch {
            Some((time, count)) if count > 0 => (
                format!("{:.1}", time as f64 / count as f64),
                format!("{:.1}", p.all_time as f64 / count as f64),
                count.to_string(),
            ),
            _ => ("-".into(), "-".into(), "-".into()),
        };
        println!(
            "{:<26} {:>10.0} {:>8.1}% {:>16} {:>16} {:>12}",
            p.name, p.rtt_ns, slowdown, switch_cost, all_cost, switches
        );
    }
    Ok(())
}

struct Phase {
    name: String,
    /// Median ns per round trip.
    rtt_ns: f64,
    /// (run_time_ns, run_cnt) of the tool's sched_switch program during the runs.
    switch: Option<(u64, u64)>,
    /// run_time_ns of all the tool's programs during the runs.
    all_time: u64,
}

fn phases(tracer: &Path, workload: &Path) -> Result<Vec<Phase>> {
    let tracer = tracer.to_string_lossy().into_owned();
    let tools: Vec<(&str, Vec<String>)> = vec![
        ("tracer runqlat", vec![tracer.clone(), "runqlat".into()]),
        ("libbpf-tools runqlat", vec!["/usr/sbin/runqlat".into()]),
        ("tracer cpudist", vec![tracer.clone(), "cpudist".into()]),
        ("libbpf-tools cpudist", vec!["/usr/sbin/cpudist".into()]),
        (
            "tracer ktop",
            vec![tracer.clone(), "ktop".into(), "--json".into(), "1".into()],
        ),
    ];
    let mut phases = vec![Phase {
        name: "nothing attached".into(),
        rtt_ns: pingpong(workload)?,
        switch: None,
        all_time: 0,
    }];
    for (name, argv) in tools {
        if !Path::new(&argv[0]).exists() {
            println!("{name}: {} not installed, skipped", argv[0]);
            continue;
        }
        phases.push(with_tool(name, &argv, workload)?);
    }
    phases.push(Phase {
        name: "nothing attached (again)".into(),
        rtt_ns: pingpong(workload)?,
        switch: None,
        all_time: 0,
    });
    Ok(phases)
}

fn with_tool(name: &str, argv: &[String], workload: &Path) -> Result<Phase> {
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    while prog_stats(pid).is_empty() {
        if Instant::now() > deadline || child.try_wait()?.is_some() {
            let _ = child.kill();
            bail!("{name} did not load its programs");
        }
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_millis(500));
    let before = prog_stats(pid);
    let rtt_ns = pingpong(workload);
    let after = prog_stats(pid);
    let _ = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status();
    let _ = child.wait();
    let rtt_ns = rtt_ns?;
    let delta = |k: &String| {
        let (t1, c1) = after[k];
        let (t0, c0) = before.get(k).copied().unwrap_or((0, 0));
        (t1.saturating_sub(t0), c1.saturating_sub(c0))
    };
    let switch = after
        .keys()
        .filter(|k| is_switch(k))
        .map(delta)
        .max_by_key(|(_, c)| *c);
    let all_time = after.keys().map(|k| delta(k).0).sum();
    Ok(Phase {
        name: name.into(),
        rtt_ns,
        switch,
        all_time,
    })
}

/// The sched_switch program, by the (15-character) names tracer and libbpf-tools give it:
/// `runqlat_switch_`, `ktop_switch_btf`, `sched_switch`, `handle_sched_sw`, `handle_switch`.
fn is_switch(name: &str) -> bool {
    name.contains("_sw") && !name.contains("wak")
}

/// Median ns per round trip over RUNS runs of the ping-pong.
fn pingpong(workload: &Path) -> Result<f64> {
    let mut results = Vec::new();
    for _ in 0..RUNS {
        let out = Command::new("taskset")
            .args(["-c", "0"])
            .arg(workload)
            .args(["pingpong", &ROUND_TRIPS.to_string()])
            .output()
            .context("cannot run taskset tracer-workload pingpong")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let ns: f64 = text
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("unexpected pingpong output: {text}"))?;
        results.push(ns);
    }
    results.sort_by(f64::total_cmp);
    Ok(results[results.len() / 2])
}

/// run_time_ns and run_cnt of every BPF program owned by `pid`, keyed by program name.
fn prog_stats(pid: u32) -> BTreeMap<String, (u64, u64)> {
    super::bpf_stats::stats_of(pid)
        .into_iter()
        .map(|(name, p)| (name, (p.run_time_ns, p.run_cnt)))
        .collect()
}
