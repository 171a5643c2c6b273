//! Probes on demand: nginx throughput on loopback under wrk with no probe, with tracer's
//! funccount uprobe on ngx_http_process_request, and with the bpftrace equivalent (same probe),
//! one run each; the per-hit cost derived from the throughput drop. Then attach and detach time
//! of funccount (and bpftrace) for 1, 10 and 50 nginx uprobes.
//! Targets: per-hit overhead <= bpftrace's; detaching 50 probes < 1 s.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use testbed::nginx::{NGINX, Nginx};

use super::common::{Attached, process_cpu_seconds, release_bin};

const PROBE_FN: &str = "ngx_http_process_request";
const WRK_SECS: u32 = 5;

/// One wrk run: requests per second, and the nginx worker's CPU microseconds per request
/// (less sensitive than throughput to whatever else the machine runs).
fn measure(nginx: &Nginx) -> Result<(f64, f64)> {
    let worker = nginx.worker()?;
    let cpu_before = process_cpu_seconds(worker);
    let out = Command::new("wrk")
        .args(["-t1", "-c8", &format!("-d{WRK_SECS}s"), &nginx.url()])
        .output()
        .context("cannot run wrk (cargo xtask setup installs it)")?;
    let cpu = process_cpu_seconds(worker) - cpu_before;
    let text = String::from_utf8_lossy(&out.stdout);
    let requests: f64 = text
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in")
                .and_then(|(n, _)| n.trim().parse().ok())
        })
        .with_context(|| format!("no request count in wrk output: {text}"))?;
    let rps = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("Requests/sec:")
                .and_then(|v| v.trim().parse().ok())
        })
        .with_context(|| format!("no Requests/sec in wrk output: {text}"))?;
    Ok((rps, cpu / requests * 1e6))
}

fn tracer(args: &[&str]) -> Command {
    let mut cmd = Command::new(release_bin("tracer"));
    cmd.args(args).stdout(Stdio::null());
    cmd
}

fn bpftrace(program: &str) -> Command {
    let mut cmd = Command::new("bpftrace");
    cmd.args(["-e", program]).stdout(Stdio::null());
    cmd
}

fn ready(line: &str) -> bool {
    line.contains("Hit Ctrl-C") || line.contains("Attaching")
}

pub fn run() -> Result<()> {
    let nginx = Nginx::start_local()?;
    let target = format!("u:{NGINX}:{PROBE_FN}");
    println!(
        "nginx 1 worker on 127.0.0.1:{}, wrk -t1 -c8 -d{WRK_SECS}s, one run each; probe {PROBE_FN} (1 hit per request)",
        nginx.port
    );
    println!(
        "per-hit cost = extra nginx worker CPU per request (the BPF program runs in the worker)"
    );
    println!(
        "{:<30} {:>10} {:>9} {:>14} {:>14}",
        "probe", "req/s", "change", "worker us/req", "per-hit cost"
    );
    let (base, base_cpu) = measure(&nginx)?;
    println!(
        "{:<30} {base:>10.0} {:>9} {base_cpu:>14.2} {:>14}",
        "none", "-", "-"
    );
    let bt_program = format!("uprobe:{NGINX}:{PROBE_FN} {{ @ = count(); }}");
    let dir = std::env::temp_dir();
    for (name, mut cmd) in [
        ("tracer funccount (uprobe)", tracer(&["funccount", &target])),
        ("bpftrace @ = count()", bpftrace(&bt_program)),
    ] {
        let attached =
            match Attached::spawn_to(&mut cmd, Some(dir.join("tracer-bench-probes.out")), ready) {
                Ok(a) => a,
                Err(e) => {
                    println!("{name:<30} skipped: {e:#}");
                    continue;
                }
            };
        // bpftrace says "Attaching" before it attaches: give it time to finish.
        std::thread::sleep(Duration::from_millis(500));
        let (rps, cpu) = measure(&nginx)?;
        attached.stop()?;
        println!(
            "{name:<30} {rps:>10.0} {:>+8.1}% {cpu:>14.2} {:>11.2} us",
            (rps - base) / base * 100.0,
            cpu - base_cpu
        );
    }

    // Attach and detach times for several uprobes at once.
    let out = Command::new(release_bin("tracer"))
        .args(["tplist", "-b", NGINX, "ngx_http_*"])
        .output()?;
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    println!();
    println!(
        "{:<10} {:<12} {:>12} {:>12}",
        "uprobes", "tool", "attach s", "detach s"
    );
    for n in [1usize, 10, 50] {
        if names.len() < n {
            bail!("only {} ngx_http_* functions in {NGINX}", names.len());
        }
        let specs: Vec<String> = names[..n]
            .iter()
            .map(|f| format!("u:{NGINX}:{f}"))
            .collect();
        let mut args = vec!["funccount".to_string()];
        args.extend(specs);
        let (attach, detach) = attach_detach(Command::new(release_bin("tracer")).args(&args), n)?;
        println!("{n:<10} {:<12} {attach:>12.3} {detach:>12.3}", "tracer");
        let probes: Vec<String> = names[..n]
            .iter()
            .map(|f| format!("uprobe:{NGINX}:{f}"))
            .collect();
        let program = format!("{} {{ @[probe] = count(); }}", probes.join(","));
        match attach_detach(Command::new("bpftrace").args(["-e", &program]), n) {
            Ok((attach, detach)) => {
                println!("{n:<10} {:<12} {attach:>12.3} {detach:>12.3}", "bpftrace")
            }
            Err(e) => println!("{n:<10} {:<12} failed: {e:#}", "bpftrace"),
        }
    }
    drop(nginx);
    Ok(())
}

/// Seconds from start until the tool holds `n` uprobe attachments (see `perf_fds`; the same
/// signal for tracer and bpftrace, whose "Attaching" line comes before it attaches), and from
/// SIGINT to exit (detach + unload).
fn attach_detach(cmd: &mut Command, n: usize) -> Result<(f64, f64)> {
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start tool")?;
    let pid = child.id();
    let deadline = start + Duration::from_secs(120);
    let attached = loop {
        if perf_fds(pid) >= n {
            break start.elapsed().as_secs_f64();
        }
        if let Some(status) = child.try_wait()? {
            bail!("tool exited ({status}) before attaching {n} probes");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("tool did not attach {n} probes within 120 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    std::thread::sleep(Duration::from_millis(500));
    // Detach time counts from the SIGINT that worked: bpftrace can miss one that arrives while
    // it is still setting up, so it is repeated every 2 s.
    let first = Instant::now();
    loop {
        let stop = Instant::now();
        let _ = Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status();
        while stop.elapsed() < Duration::from_secs(2) {
            if child.try_wait()?.is_some() {
                return Ok((attached, stop.elapsed().as_secs_f64()));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if first.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("tool did not exit within 120 s of SIGINT");
        }
    }
}

/// Attached uprobes of a process: its perf-event fds, or its BPF link fds (aya keeps only the
/// link, which holds the perf event), whichever there are more of.
fn perf_fds(pid: u32) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    let targets: Vec<String> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .collect();
    let count = |kind: &str| targets.iter().filter(|t| t.contains(kind)).count();
    count("perf_event").max(count("bpf_link"))
}
