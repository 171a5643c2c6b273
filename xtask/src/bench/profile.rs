//! profile's sampling overhead: a fixed CPU-bound job (a shell counting loop: fixed work, not
//! fixed time) run with no profiler, with `tracer profile` at 49/99/997 Hz on all CPUs (kernel +
//! user stacks, counted in the kernel), and with `perf record -F 99 -a -g` followed by the
//! `perf script` that turns its per-sample file into stacks. Reports the job's CPU and wall time,
//! the profiler's own CPU time and peak RSS, and perf's post-processing cost.

use std::{
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result};

use super::common::{Attached, RunTimes, median, process_cpu_seconds, release_bin, timed};

const ROUNDS: usize = 3;
/// Iterations of the shell loop: about 2-4 s of one CPU here.
const LOOPS: u32 = 1_500_000;

fn job() -> Command {
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        &format!("i=0; while [ $i -lt {LOOPS} ]; do i=$((i+1)); done"),
    ]);
    cmd
}

/// Peak resident set size of a running process (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

struct Row {
    name: String,
    job: Vec<RunTimes>,
    tool_cpu: Vec<f64>,
    rss: Vec<f64>,
    post: Vec<f64>,
    note: String,
}

pub fn run() -> Result<()> {
    let tracer = release_bin("tracer");
    println!(
        "fixed job: sh loop of {LOOPS} iterations; median of {ROUNDS} rounds; overhead = extra job CPU time"
    );
    println!(
        "(the sampling interrupt and the BPF program run on the job's CPU, charged to the job)"
    );
    let base: Vec<RunTimes> = (0..ROUNDS)
        .map(|_| timed(&mut job()))
        .collect::<Result<_>>()?;
    let base_cpu = median(base.iter().map(|r| r.cpu).collect());
    let mut rows = vec![Row {
        name: "no profiler".into(),
        job: base,
        tool_cpu: vec![],
        rss: vec![],
        post: vec![],
        note: String::new(),
    }];

    for hz in ["49", "99", "997"] {
        let mut row = Row {
            name: format!("tracer profile -F {hz}"),
            job: vec![],
            tool_cpu: vec![],
            rss: vec![],
            post: vec![],
            note: String::new(),
        };
        for _ in 0..ROUNDS {
            let mut cmd = Command::new(&tracer);
            cmd.args(["profile", "-F", hz, "--json", "--top", "5"])
                .stdout(Stdio::null());
            let attached = Attached::spawn_to(&mut cmd, None, |l| l.contains("Hit Ctrl-C"))?;
            let pid = attached.pid();
            let cpu_before = process_cpu_seconds(pid);
            row.job.push(timed(&mut job())?);
            // Stopping includes symbolizing and printing: that is the tool's cost too.
            let started = Instant::now();
            let rss = peak_rss_mib(pid);
            let cpu_mid = process_cpu_seconds(pid);
            let stderr = attached.stop()?;
            row.post.push(started.elapsed().as_secs_f64());
            row.tool_cpu.push(cpu_mid - cpu_before);
            row.rss.push(rss);
            if let Some(line) = stderr.lines().find(|l| l.contains("lost")) {
                row.note = line.to_string();
            }
        }
        rows.push(row);
    }

    if Command::new("perf")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let dir = std::env::temp_dir().join("tracer-bench-profile");
        std::fs::create_dir_all(&dir)?;
        let data = dir.join("perf.data");
        let mut row = Row {
            name: "perf record -F 99 -a -g + script".into(),
            job: vec![],
            tool_cpu: vec![],
            rss: vec![],
            post: vec![],
            note: String::new(),
        };
        for _ in 0..ROUNDS {
            let mut cmd = Command::new("perf");
            cmd.args(["record", "-F", "99", "-a", "-g", "-o"])
                .arg(&data)
                .stdout(Stdio::null());
            // perf prints nothing when ready; its first mmap of the ring is quick. Give it 1 s.
            let mut child = cmd
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start perf record")?;
            std::thread::sleep(std::time::Duration::from_secs(1));
            let cpu_before = process_cpu_seconds(child.id());
            row.job.push(timed(&mut job())?);
            let rss = peak_rss_mib(child.id());
            row.tool_cpu
                .push(process_cpu_seconds(child.id()) - cpu_before);
            row.rss.push(rss);
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            child.wait()?;
            let started = Instant::now();
            let script = Command::new("perf")
                .arg("script")
                .arg("-i")
                .arg(&data)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            row.post.push(started.elapsed().as_secs_f64());
            let size = std::fs::metadata(&data).map(|m| m.len()).unwrap_or(0);
            row.note = format!(
                "perf.data {:.1} MiB, perf script {}",
                size as f64 / 1048576.0,
                script
            );
        }
        rows.push(row);
    } else {
        println!(
            "perf not installed: skipping the perf comparison (cargo xtask setup installs it)"
        );
    }

    println!(
        "{:<34} {:>7} {:>8} {:>9} {:>9} {:>8} {:>8}  note",
        "profiler", "wall s", "job cpu", "overhead", "tool cpu", "rss MiB", "post s"
    );
    for row in &rows {
        let cpu = median(row.job.iter().map(|r| r.cpu).collect());
        let wall = median(row.job.iter().map(|r| r.wall).collect());
        let overhead = if row.tool_cpu.is_empty() {
            "-".into()
        } else {
            format!("{:+.1}%", (cpu - base_cpu) / base_cpu * 100.0)
        };
        let opt = |v: &Vec<f64>, digits: usize| {
            if v.is_empty() {
                "-".into()
            } else {
                format!("{:.*}", digits, median(v.clone()))
            }
        };
        println!(
            "{:<34} {wall:>7.3} {cpu:>8.3} {overhead:>9} {:>9} {:>8} {:>8}  {}",
            row.name,
            opt(&row.tool_cpu, 3),
            opt(&row.rss, 1),
            opt(&row.post, 3),
            row.note
        );
    }
    Ok(())
}
