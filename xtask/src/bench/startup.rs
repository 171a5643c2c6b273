//! Startup budget: the whole-process cost of a short job, tracer against libbpf-tools doing the
//! same one (`softirq-top -b 1 1` vs `softirqs 1 1`, `runqlat 1 1` vs `runqlat 1 1`): CPU time
//! (user + system, from wait4) and peak RSS, for the glibc and the static musl build. What a
//! fleet pays every time a tool is started by a script or an agent.

use std::{path::PathBuf, process::Command, process::Stdio};

use anyhow::{Result, bail};

use super::common::{RunTimes, median, timed};
use crate::{dist, util::release_bin};

const ROUNDS: usize = 7;

struct Job {
    name: &'static str,
    tracer: &'static [&'static str],
    peer: &'static str,
    peer_args: &'static [&'static str],
}

const JOBS: &[Job] = &[
    Job {
        name: "softirqs, 1 s interval, 1 report",
        tracer: &["softirq-top", "-b", "1", "1"],
        peer: "/usr/sbin/softirqs",
        peer_args: &["1", "1"],
    },
    Job {
        name: "runqlat, 1 s interval, 1 report",
        tracer: &["runqlat", "1", "1"],
        peer: "/usr/sbin/runqlat",
        peer_args: &["1", "1"],
    },
];

pub fn run() -> Result<()> {
    dist::dist()?;
    let builds: [(&str, PathBuf); 2] = [
        ("tracer (glibc)", release_bin("tracer")),
        ("tracer (musl, static)", dist::static_binary()),
    ];
    println!(
        "{ROUNDS} rounds each, interleaved; median CPU (user+sys) and median peak RSS per process"
    );
    for job in JOBS {
        if !std::path::Path::new(job.peer).exists() {
            bail!(
                "{} is missing: cargo xtask setup installs libbpf-tools",
                job.peer
            );
        }
        let mut rows: Vec<(String, Vec<RunTimes>)> = builds
            .iter()
            .map(|(name, _)| (name.to_string(), Vec::new()))
            .chain([(format!("libbpf-tools {}", job.peer), Vec::new())])
            .collect();
        for _ in 0..ROUNDS {
            for (i, (_, bin)) in builds.iter().enumerate() {
                rows[i]
                    .1
                    .push(quiet_timed(Command::new(bin).args(job.tracer))?);
            }
            let peer = builds.len();
            rows[peer]
                .1
                .push(quiet_timed(Command::new(job.peer).args(job.peer_args))?);
        }
        let stats = |runs: &[RunTimes]| {
            (
                median(runs.iter().map(|r| r.cpu).collect()),
                median(runs.iter().map(|r| r.max_rss_mib).collect()),
            )
        };
        let (peer_cpu, peer_rss) = stats(&rows[builds.len()].1);
        println!("-- {}", job.name);
        println!(
            "{:<44} {:>9} {:>8} {:>10} {:>9}",
            "", "CPU s", "× peer", "RSS MiB", "Δ MiB"
        );
        for (name, runs) in &rows {
            let (cpu, rss) = stats(runs);
            println!(
                "{name:<44} {cpu:>9.3} {:>8.2} {rss:>10.1} {:>+9.1}",
                cpu / peer_cpu,
                rss - peer_rss
            );
        }
    }
    Ok(())
}

fn quiet_timed(cmd: &mut Command) -> Result<RunTimes> {
    timed(cmd.stdout(Stdio::null()).stderr(Stdio::null()))
}
