//! profile's sampling overhead: a fixed CPU-bound job (a shell counting loop: fixed work, not
//! fixed time; Debian's dash, built without frame pointers) run with no profiler, with `tracer
//! profile` at 49/99/997 Hz on all CPUs with user stacks walked by frame pointers (`--call-graph
//! fp`, counted in the kernel) and unwound from copies (`--call-graph dwarf`, the default), and
//! with `perf record -a --call-graph dwarf` at the same rates followed by the `perf script` that
//! turns its per-sample file into stacks. Reports the job's CPU and wall time, the profiler's
//! own CPU time and peak RSS, and the time from stop to stacks (tracer: symbolizing and writing
//! an SVG; perf: perf script). Then the nginx case: a worker under wrk, profiled at 499 Hz.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::common::{Attached, RunTimes, median, process_cpu_seconds, release_bin, timed};

const ROUNDS: usize = 3;
/// Iterations of the shell loop: about 2-4 s of one CPU here.
const LOOPS: u32 = 1_500_000;
const RATES: [&str; 3] = ["49", "99", "997"];

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

#[derive(Default)]
struct Row {
    name: String,
    job: Vec<RunTimes>,
    tool_cpu: Vec<f64>,
    rss: Vec<f64>,
    post: Vec<f64>,
    note: String,
}

/// One round of `tracer ARGS` around `work` (the job, or a sleep while a load runs): the
/// tool's CPU while attached, its peak RSS, and stop-to-exit time (symbolizing, writing).
fn tracer_round(
    row: &mut Row,
    args: &[&str],
    work: &mut dyn FnMut() -> Result<Option<RunTimes>>,
) -> Result<()> {
    let mut cmd = Command::new(release_bin("tracer"));
    cmd.args(args).stdout(Stdio::null());
    let attached = Attached::spawn_to(&mut cmd, None, |l| l.contains("Hit Ctrl-C"))?;
    let pid = attached.pid();
    let cpu_before = process_cpu_seconds(pid);
    if let Some(times) = work()? {
        row.job.push(times);
    }
    let cpu_mid = process_cpu_seconds(pid);
    let started = Instant::now();
    let (stderr, rss) = attached.stop_measured()?;
    row.post.push(started.elapsed().as_secs_f64());
    row.tool_cpu.push(cpu_mid - cpu_before);
    row.rss.push(rss);
    if let Some(line) = stderr
        .lines()
        .find(|l| l.contains("lost") || l.contains("frame pointers instead"))
    {
        row.note = line.to_string();
    }
    Ok(())
}

/// One round of `perf record ARGS -o DATA` around `work`, then `perf script`.
fn perf_round(
    row: &mut Row,
    args: &[&str],
    data: &Path,
    work: &mut dyn FnMut() -> Result<Option<RunTimes>>,
) -> Result<()> {
    let mut child = Command::new("perf")
        .args(["record", "-q"])
        .args(args)
        .arg("-o")
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start perf record")?;
    // perf prints nothing when ready; its first mmap of the ring is quick. Give it 1 s.
    std::thread::sleep(Duration::from_secs(1));
    let cpu_before = process_cpu_seconds(child.id());
    if let Some(times) = work()? {
        row.job.push(times);
    }
    row.tool_cpu
        .push(process_cpu_seconds(child.id()) - cpu_before);
    row.rss.push(peak_rss_mib(child.id()));
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    child.wait()?;
    let started = Instant::now();
    let script = Command::new("perf")
        .arg("script")
        .arg("-i")
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    row.post.push(started.elapsed().as_secs_f64());
    let size = std::fs::metadata(data).map(|m| m.len()).unwrap_or(0);
    row.note = format!(
        "perf.data {:.1} MiB, perf script {}",
        size as f64 / 1048576.0,
        script
    );
    Ok(())
}

fn perf_available() -> bool {
    Command::new("perf")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn run() -> Result<()> {
    let dir = std::env::temp_dir().join("tracer-bench-profile");
    std::fs::create_dir_all(&dir)?;
    let svg = dir.join("profile.svg").display().to_string();
    let data = dir.join("perf.data");
    println!(
        "fixed job: sh loop of {LOOPS} iterations; median of {ROUNDS} rounds; overhead = extra job CPU time"
    );
    println!(
        "(the sampling interrupt and the BPF program, with its stack copy, run on the job's CPU, charged to the job)"
    );
    let base: Vec<RunTimes> = (0..ROUNDS)
        .map(|_| timed(&mut job()))
        .collect::<Result<_>>()?;
    let base_cpu = median(base.iter().map(|r| r.cpu).collect());
    let mut rows = vec![Row {
        name: "no profiler".into(),
        job: base,
        ..Default::default()
    }];
    let mut run_job = || timed(&mut job()).map(Some);
    for hz in RATES {
        for mode in ["fp", "dwarf"] {
            let mut row = Row {
                name: format!("tracer profile -F {hz} --call-graph {mode}"),
                ..Default::default()
            };
            for _ in 0..ROUNDS {
                tracer_round(
                    &mut row,
                    &[
                        "profile",
                        "-F",
                        hz,
                        "--call-graph",
                        mode,
                        "--json",
                        "--top",
                        "5",
                        "--svg",
                        &svg,
                    ],
                    &mut run_job,
                )?;
            }
            rows.push(row);
        }
        if perf_available() {
            let mut row = Row {
                name: format!("perf record -F {hz} -a --call-graph dwarf + script"),
                ..Default::default()
            };
            for _ in 0..ROUNDS {
                perf_round(
                    &mut row,
                    &["-F", hz, "-a", "--call-graph", "dwarf"],
                    &data,
                    &mut run_job,
                )?;
            }
            rows.push(row);
        }
    }
    if !perf_available() {
        println!(
            "perf not installed: skipping the perf comparison (cargo xtask setup installs it)"
        );
    }
    print_rows(&rows, base_cpu);
    nginx(&svg, &data)
}

fn print_rows(rows: &[Row], base_cpu: f64) {
    println!(
        "{:<46} {:>7} {:>8} {:>9} {:>9} {:>8} {:>8}  note",
        "profiler", "wall s", "job cpu", "overhead", "tool cpu", "rss MiB", "post s"
    );
    for row in rows {
        let cpu = median(row.job.iter().map(|r| r.cpu).collect());
        let wall = median(row.job.iter().map(|r| r.wall).collect());
        let overhead = if row.tool_cpu.is_empty() || row.job.is_empty() {
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
            "{:<46} {wall:>7.3} {cpu:>8.3} {overhead:>9} {:>9} {:>8} {:>8}  {}",
            row.name,
            opt(&row.tool_cpu, 3),
            opt(&row.rss, 1),
            opt(&row.post, 3),
            row.note
        );
    }
}

/// Debian's nginx (no frame pointers) under wrk, one worker profiled at 499 Hz for 5 s: the
/// tool's CPU, peak RSS and stop-to-stacks time, tracer (fp and dwarf) against perf.
fn nginx(svg: &str, data: &Path) -> Result<()> {
    if !Path::new(testbed::nginx::NGINX).exists() || Command::new("wrk").arg("-v").output().is_err()
    {
        println!("nginx or wrk missing: skipping the nginx case (cargo xtask setup installs them)");
        return Ok(());
    }
    let nginx = testbed::nginx::Nginx::start_local()?;
    let worker = nginx.worker()?.to_string();
    let mut load = Command::new("wrk")
        .args(["-t1", "-c8", "-d600s", &nginx.url()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start wrk")?;
    std::thread::sleep(Duration::from_secs(1));
    let mut sleep5 = || {
        std::thread::sleep(Duration::from_secs(5));
        Ok(None)
    };
    let mut rows = Vec::new();
    for mode in ["fp", "dwarf"] {
        let mut row = Row {
            name: format!("tracer profile -p W -F 499 --call-graph {mode}"),
            ..Default::default()
        };
        for _ in 0..ROUNDS {
            tracer_round(
                &mut row,
                &[
                    "profile",
                    "-p",
                    &worker,
                    "-F",
                    "499",
                    "--call-graph",
                    mode,
                    "--folded",
                    "--svg",
                    svg,
                ],
                &mut sleep5,
            )?;
        }
        rows.push(row);
    }
    if perf_available() {
        let mut row = Row {
            name: "perf record -p W -F 499 --call-graph dwarf + script".into(),
            ..Default::default()
        };
        for _ in 0..ROUNDS {
            perf_round(
                &mut row,
                &["-p", &worker, "-F", "499", "--call-graph", "dwarf"],
                data,
                &mut sleep5,
            )?;
        }
        rows.push(row);
    }
    let _ = load.kill();
    let _ = load.wait();
    println!("\nnginx worker under wrk -t1 -c8, 5 s per round, median of {ROUNDS}:");
    print_rows(&rows, f64::NAN);
    Ok(())
}
