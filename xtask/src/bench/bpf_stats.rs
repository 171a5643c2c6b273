//! Kernel-side cost of BPF programs: `kernel.bpf_stats_enabled` makes the kernel account
//! run_time_ns / run_cnt per program; a tool's programs are found through its file descriptors
//! (/proc/PID/fdinfo has `prog_id:` lines), since bpftool 7.1 cannot say which process owns one.

use std::{collections::BTreeMap, process::Command};

use anyhow::{Context as _, Result};
use serde_json::Value;

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Turns run-time accounting on for as long as it lives, then restores the previous setting.
pub struct StatsEnabled {
    previous: String,
}

impl StatsEnabled {
    pub fn new() -> Result<Self> {
        let previous = std::fs::read_to_string(STATS_SYSCTL)
            .context("cannot read bpf_stats_enabled (root?)")?;
        std::fs::write(STATS_SYSCTL, "1").context("cannot enable bpf_stats")?;
        Ok(Self { previous })
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        let _ = std::fs::write(STATS_SYSCTL, self.previous.trim());
    }
}

/// One loaded program's counters.
#[derive(Clone, Debug, Default)]
pub struct ProgStats {
    pub name: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// Every loaded BPF program by id (`bpftool prog show --json`).
pub fn programs() -> BTreeMap<u32, ProgStats> {
    let Ok(out) = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
    else {
        return BTreeMap::new();
    };
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    json.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let id = p["id"].as_u64()? as u32;
            Some((
                id,
                ProgStats {
                    name: p["name"].as_str().unwrap_or("?").to_string(),
                    run_time_ns: p["run_time_ns"].as_u64().unwrap_or(0),
                    run_cnt: p["run_cnt"].as_u64().unwrap_or(0),
                },
            ))
        })
        .collect()
}

/// Ids of the BPF programs process `pid` holds open.
pub fn program_ids_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|entry| {
            let text = std::fs::read_to_string(entry.path()).ok()?;
            text.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|id| id.trim().parse().ok())
        })
        .collect()
}

/// The counters of `pid`'s programs, summed per program name.
pub fn stats_of(pid: u32) -> BTreeMap<String, ProgStats> {
    let ids = program_ids_of(pid);
    let mut by_name: BTreeMap<String, ProgStats> = BTreeMap::new();
    for (id, p) in programs() {
        if ids.contains(&id) {
            let e = by_name.entry(p.name.clone()).or_insert_with(|| ProgStats {
                name: p.name.clone(),
                ..Default::default()
            });
            e.run_time_ns += p.run_time_ns;
            e.run_cnt += p.run_cnt;
        }
    }
    by_name
}

/// Average kernel nanoseconds per run over all of `pid`'s programs (None when none ran).
pub fn ns_per_run(pid: u32) -> Option<f64> {
    let (t, c) = stats_of(pid)
        .values()
        .fold((0, 0), |(t, c), p| (t + p.run_time_ns, c + p.run_cnt));
    (c > 0).then(|| t as f64 / c as f64)
}

/// Program name → (run_time_ns, run_cnt).
pub type Progs = BTreeMap<String, (u64, u64)>;

/// What each program of `after` ran since `before` (a program new since then counts from 0).
pub fn progs_delta(before: &Progs, after: &Progs) -> Progs {
    after
        .iter()
        .map(|(k, (t, c))| {
            let (t0, c0) = before.get(k).copied().unwrap_or((0, 0));
            (k.clone(), (t - t0, c - c0))
        })
        .collect()
}
