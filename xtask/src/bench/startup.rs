//! Startup budget: the whole-process cost of a short job, tracer against libbpf-tools doing the
//! same one (`softirq-top -b 1 1` vs `softirqs 1 1`, `runqlat 1 1` vs `runqlat 1 1`): CPU time
//! (user + system, from wait4) and peak RSS, for the glibc and the static musl build. What a
//! fleet pays every time a tool is started by a script or an agent.

use std::{path::PathBuf, process::Command, process::Stdio};

use anyhow::{Result, bail};

use super::common::{RunTimes, median};
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

/// The hidden first argument that makes xtask the measuring launcher of `measure_child`.
pub const MEASURE: &str = "__measure-child";

/// Runs `cmd` (output discarded) through a freshly started xtask that forks and execs it, and
/// returns the launcher's wait4 figures for it.
///
/// Not wait4 on our own child: Rust spawns with vfork semantics, and the kernel keeps the
/// exec'ing process's old address-space peak in its ru_maxrss, so every job measured from
/// this (15 MiB) process read as 15.3 MiB. The fresh launcher's fork child starts from a
/// ~1 MiB copy, the same floor for every row.
pub(super) fn quiet_timed(cmd: &mut Command) -> Result<RunTimes> {
    let start = std::time::Instant::now();
    let out = Command::new(std::env::current_exe()?)
        .arg(MEASURE)
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stderr(Stdio::inherit())
        .output()?;
    let wall = start.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<f64> = text
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    match (out.status.success(), fields.as_slice()) {
        (true, [pid, cpu, rss_kib]) => Ok(RunTimes {
            pid: *pid as u32,
            wall,
            cpu: *cpu,
            max_rss_mib: rss_kib / 1024.0,
        }),
        _ => bail!("{cmd:?} failed: {text}"),
    }
}

/// The launcher (`xtask __measure-child PROGRAM ARGS...`): forks, execs the program with its
/// output on /dev/null, and prints "PID CPU_SECONDS MAXRSS_KIB" of that child; exits 1 if
/// the child failed.
pub fn measure_child(argv: &[String]) -> ! {
    use std::{ffi::CString, os::fd::AsRawFd};
    if argv.is_empty() {
        eprintln!("xtask {MEASURE}: give the program to run");
        std::process::exit(2);
    }
    let args: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(a.as_str()).expect("argument with NUL"))
        .collect();
    let mut ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let null = std::fs::File::options()
        .write(true)
        .open("/dev/null")
        .expect("/dev/null");
    // SAFETY: single-threaded here; the child only calls async-signal-safe functions
    // (dup2, execvp, _exit) before exec.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe {
            libc::dup2(null.as_raw_fd(), 1);
            libc::dup2(null.as_raw_fd(), 2);
            libc::execvp(ptrs[0], ptrs.as_ptr());
            libc::_exit(127);
        }
    }
    let mut status = 0;
    // SAFETY: zeroed rusage is valid; wait4 on our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    println!(
        "{pid} {} {}",
        secs(usage.ru_utime) + secs(usage.ru_stime),
        usage.ru_maxrss
    );
    let ok = pid > 0 && rc == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    std::process::exit(if ok { 0 } else { 1 })
}
