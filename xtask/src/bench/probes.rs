//! Probes on demand: nginx throughput on loopback under wrk with no probe, with tracer's
//! funccount uprobe on ngx_http_process_request (on its default rung, uprobe_multi where the
//! kernel has it, and forced onto per-offset perf-event uprobes), and with the bpftrace
//! equivalent (same probe), one run each; the per-hit cost derived from the worker's CPU time.
//! Then attach and detach time of funccount (both rungs) and bpftrace for 1, 10 and 50 nginx
//! uprobes.
//! Targets: per-hit overhead <= bpftrace's; detaching 50 probes < 1 s.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use testbed::nginx::{NGINX, Nginx};

use super::{
    bpf_stats::{StatsEnabled, ns_per_run},
    common::{Attached, process_cpu_seconds, release_bin},
};

const PROBE_FN: &str = "ngx_http_process_request";
const WRK_SECS: u32 = 5;
const ROUNDS: usize = 3;

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
        "{:<30} {:>10} {:>9} {:>14} {:>14} {:>10}",
        "probe", "req/s", "change", "worker us/req", "per-hit cost", "bpf prog"
    );
    let _stats = StatsEnabled::new()?;
    let bt_program = format!("uprobe:{NGINX}:{PROBE_FN} {{ @ = count(); }}");
    let dir = std::env::temp_dir();
    let tools: [(&str, Vec<&str>); 3] = [
        ("tracer funccount (default)", vec!["funccount", &target]),
        (
            "tracer --attach uprobe",
            vec!["funccount", "--attach", "uprobe", &target],
        ),
        ("bpftrace @ = count()", vec![]),
    ];
    // Rounds interleave the tools so that drift on the shared VM hits them alike.
    let mut costs: Vec<Vec<f64>> = vec![Vec::new(); tools.len()];
    for round in 1..=ROUNDS {
        let (base, base_cpu) = measure(&nginx)?;
        println!(
            "{:<30} {base:>10.0} {:>9} {base_cpu:>14.2} {:>14}",
            format!("none (round {round})"),
            "-",
            "-"
        );
        for (i, (name, args)) in tools.iter().enumerate() {
            let mut cmd = if args.is_empty() {
                bpftrace(&bt_program)
            } else {
                tracer(args)
            };
            let attached = match Attached::spawn_to(
                &mut cmd,
                Some(dir.join("tracer-bench-probes.out")),
                ready,
            ) {
                Ok(a) => a,
                Err(e) => {
                    println!("{name:<30} skipped: {e:#}");
                    continue;
                }
            };
            // bpftrace says "Attaching" before it attaches: give it time to finish.
            std::thread::sleep(Duration::from_millis(500));
            let (rps, cpu) = measure(&nginx)?;
            let bpf_ns = ns_per_run(attached.pid());
            attached.stop()?;
            costs[i].push(cpu - base_cpu);
            println!(
                "{name:<30} {rps:>10.0} {:>+8.1}% {cpu:>14.2} {:>11.2} us {:>10}",
                (rps - base) / base * 100.0,
                cpu - base_cpu,
                bpf_ns.map_or("-".into(), |ns| format!("{ns:.0} ns"))
            );
        }
    }
    println!("median per-hit cost over {ROUNDS} rounds:");
    for ((name, _), mut c) in tools.iter().zip(costs) {
        c.sort_by(f64::total_cmp);
        if let Some(median) = c.get(c.len() / 2) {
            println!("  {name:<28} {median:>8.2} us");
        }
    }
    write_loop()?;

    // Attach and detach times for several uprobes at once.
    let out = Command::new(release_bin("tracer"))
        .args(["tplist", "-l", NGINX, "ngx_http_*"])
        .output()?;
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    println!();
    println!(
        "{:<10} {:<14} {:>12} {:>12}",
        "uprobes", "tool", "attach s", "detach s"
    );
    println!(
        "(tracer: default rung, uprobe_multi where the kernel has it; tracer-uprobe: --attach uprobe)"
    );
    for n in [1usize, 10, 50] {
        if names.len() < n {
            bail!("only {} ngx_http_* functions in {NGINX}", names.len());
        }
        let specs: Vec<String> = names[..n]
            .iter()
            .map(|f| format!("u:{NGINX}:{f}"))
            .collect();
        for (tool, force) in [("tracer", None), ("tracer-uprobe", Some("uprobe"))] {
            let mut args = vec!["funccount".to_string(), "-v".to_string()];
            if let Some(m) = force {
                args.extend(["--attach".to_string(), m.to_string()]);
            }
            args.extend(specs.iter().cloned());
            let mut cmd = Command::new(release_bin("tracer"));
            let (attach, detach) = attach_detach(cmd.args(&args), Ready::Stderr)?;
            println!("{n:<10} {tool:<14} {attach:>12.3} {detach:>12.3}");
        }
        let probes: Vec<String> = names[..n]
            .iter()
            .map(|f| format!("uprobe:{NGINX}:{f}"))
            .collect();
        let program = format!("{} {{ @[probe] = count(); }}", probes.join(","));
        match attach_detach(
            Command::new("bpftrace").args(["-e", &program]),
            Ready::PerfFds(n),
        ) {
            Ok((attach, detach)) => {
                println!("{n:<10} {:<14} {attach:>12.3} {detach:>12.3}", "bpftrace")
            }
            Err(e) => println!("{n:<10} {:<14} failed: {e:#}", "bpftrace"),
        }
    }
    drop(nginx);
    Ok(())
}

/// The per-hit cost where nothing else runs in the probed process: `tracer-workload write N`
/// (N write(2)s to /dev/null) with and without a probe on libc's write, system-wide, as its own
/// CPU time (user + system, from the kernel's child accounting). Several interleaved rounds;
/// the least time of each configuration is its cost with the least interference.
fn write_loop() -> Result<()> {
    const CALLS: u64 = 200_000;
    const LOOP_ROUNDS: usize = 5;
    let tools: [(&str, Vec<&str>); 4] = [
        ("none", vec![]),
        (
            "tracer funccount (default)",
            vec!["funccount", "u:libc:write"],
        ),
        (
            "tracer --attach uprobe",
            vec!["funccount", "--attach", "uprobe", "u:libc:write"],
        ),
        ("bpftrace @ = count()", vec![]),
    ];
    let mut best = [f64::MAX; 4];
    let mut bpf_ns: [Option<f64>; 4] = [None; 4];
    for _ in 0..LOOP_ROUNDS {
        for (i, (_, args)) in tools.iter().enumerate() {
            let out = Some(std::env::temp_dir().join("tracer-bench-probes.out"));
            let attached = match i {
                0 => None,
                3 => Some(Attached::spawn_to(
                    &mut bpftrace("uprobe:libc:write { @ = count(); }"),
                    out,
                    ready,
                )?),
                _ => Some(Attached::spawn_to(&mut tracer(args), out, ready)?),
            };
            if i == 3 {
                std::thread::sleep(Duration::from_millis(500));
            }
            let cpu = children_cpu_seconds();
            let status = Command::new(release_bin("tracer-workload"))
                .args(["write", &CALLS.to_string()])
                .status()?;
            if !status.success() {
                bail!("tracer-workload write failed: {status}");
            }
            let cpu = children_cpu_seconds() - cpu;
            best[i] = best[i].min(cpu / CALLS as f64 * 1e6);
            if let Some(a) = attached {
                bpf_ns[i] = ns_per_run(a.pid()).or(bpf_ns[i]);
                a.stop()?;
            }
        }
    }
    println!();
    println!(
        "write(2) loop, {CALLS} calls, probe on libc write (system-wide), least of {LOOP_ROUNDS} rounds:"
    );
    let names: Vec<&str> = tools.iter().map(|(name, _)| *name).collect();
    print_loop_costs(&names, &best, &bpf_ns, &[None, None, None, None]);
    Ok(())
}

/// The table of a loop benchmark: per configuration (the first one unprobed) its least time
/// per call, the extra over the first (the per-hit cost) and its programs' bpf_stats cost, or
/// why it could not run.
fn print_loop_costs(
    names: &[&str],
    best: &[f64],
    bpf_ns: &[Option<f64>],
    failed: &[Option<String>],
) {
    println!(
        "{:<42} {:>12} {:>14} {:>10}",
        "probe", "us/call", "per-hit cost", "bpf prog"
    );
    for (i, name) in names.iter().enumerate() {
        if let Some(e) = &failed[i] {
            let first = e.lines().next().unwrap_or("");
            println!("{name:<42} failed: {first}");
            continue;
        }
        let cost = if i == 0 {
            "-".to_string()
        } else {
            format!("{:.2} us", best[i] - best[0])
        };
        println!(
            "{name:<42} {:>12.3} {cost:>14} {:>10}",
            best[i],
            bpf_ns[i].map_or("-".into(), |ns| format!("{ns:.0} ns"))
        );
    }
}

/// The per-hit cost of a USDT probe with one argument read: python3.11's
/// `python:function__entry` (semaphore-guarded) while a script calls one function `CALLS`
/// times, as the interpreter's own CPU time (time.process_time) per call, with no probe,
/// tracer's `argdist --count ... arg2` (the line number: one argument decoded from its SDT
/// spec) and bpftrace's `@[arg2] = count()`, then both again with an in-kernel string filter
/// on the function's name (`--filter 'arg1 == "known_fn"'`, bpftrace's
/// `/str(arg1) == "known_fn"/`: every call passes, so the cost is the read and compare), each
/// attached with `-p` (semaphores are set per process). Rounds interleave the
/// configurations; the least time of each is its cost.
pub fn usdt_loop() -> Result<()> {
    use std::io::{BufRead as _, BufReader, Write as _};
    const CALLS: u64 = 100_000;
    const LOOP_ROUNDS: usize = 5;
    const ENTRY: &str = "usdt:/usr/bin/python3.11:python:function__entry";
    let _stats = StatsEnabled::new()?;
    let script = "import sys, time\n\
                  def known_fn(i):\n    return i + 1\n\
                  print('ready', flush=True)\n\
                  for line in sys.stdin:\n\
                  \x20   n = int(line)\n\
                  \x20   sys.settrace(lambda *a: None)\n\
                  \x20   t = time.process_time()\n\
                  \x20   for i in range(n):\n\
                  \x20       known_fn(i)\n\
                  \x20   t = time.process_time() - t\n\
                  \x20   sys.settrace(None)\n\
                  \x20   print(t, flush=True)\n";
    let mut python = match Command::new("/usr/bin/python3.11")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
    {
        Ok(p) => p,
        Err(e) => {
            println!("\nUSDT: skipped, no python3.11 ({e}; cargo xtask setup installs it)");
            return Ok(());
        }
    };
    let pid = python.id().to_string();
    let mut stdin = python.stdin.take().expect("piped");
    let mut lines = BufReader::new(python.stdout.take().expect("piped")).lines();
    lines.next().transpose()?;
    let mut call = |n: u64| -> Result<f64> {
        writeln!(stdin, "{n}")?;
        let line = lines.next().transpose()?.context("python3.11 exited")?;
        line.trim()
            .parse::<f64>()
            .with_context(|| format!("python3.11 said '{line}'"))
    };
    let bt_program = format!("{ENTRY} {{ @[arg2] = count(); }}");
    let bt_filtered = format!("{ENTRY} /str(arg1) == \"known_fn\"/ {{ @[arg2] = count(); }}");
    let filter = r#"arg1 == "known_fn""#;
    let names = [
        "none",
        "tracer argdist --count arg2",
        "bpftrace @[arg2] = count()",
        "tracer ... --filter 'arg1 == \"known_fn\"'",
        "bpftrace /str(arg1) == \"known_fn\"/",
    ];
    let mut best = [f64::MAX; 5];
    let mut bpf_ns: [Option<f64>; 5] = [None; 5];
    let mut failed: [Option<String>; 5] = Default::default();
    for _ in 0..LOOP_ROUNDS {
        for i in 0..names.len() {
            if failed[i].is_some() {
                continue;
            }
            let out = Some(std::env::temp_dir().join("tracer-bench-usdt.out"));
            let attached = match i {
                0 => None,
                1 => Some(Attached::spawn_to(
                    &mut tracer(&["argdist", "-p", &pid, "--count", ENTRY, "arg2"]),
                    out,
                    ready,
                )),
                3 => Some(Attached::spawn_to(
                    &mut tracer(&[
                        "argdist", "-p", &pid, "--count", ENTRY, "arg2", "--filter", filter,
                    ]),
                    out,
                    ready,
                )),
                _ => {
                    let mut cmd = bpftrace(if i == 2 { &bt_program } else { &bt_filtered });
                    cmd.args(["-p", &pid]);
                    Some(Attached::spawn_to(&mut cmd, out, ready))
                }
            };
            let attached = match attached.transpose() {
                Ok(a) => a,
                Err(e) => {
                    failed[i] = Some(format!("{e:#}"));
                    continue;
                }
            };
            if i == 2 || i == 4 {
                // bpftrace says "Attaching" before it attaches: give it time to finish.
                std::thread::sleep(Duration::from_millis(500));
            }
            let secs = call(CALLS)?;
            best[i] = best[i].min(secs / CALLS as f64 * 1e6);
            if let Some(a) = attached {
                bpf_ns[i] = ns_per_run(a.pid()).or(bpf_ns[i]);
                a.stop()?;
            }
        }
    }
    drop(stdin);
    let _ = python.kill();
    let _ = python.wait();
    println!();
    println!(
        "USDT {ENTRY} (semaphore), python3.11 calling one function {CALLS} times, least of {LOOP_ROUNDS} rounds:"
    );
    print_loop_costs(&names, &best, &bpf_ns, &failed);
    Ok(())
}

/// User + system CPU seconds of all waited-for children so far.
fn children_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// When a tool counts as attached.
enum Ready {
    /// It holds this many uprobe attachments (see `perf_fds`): for bpftrace, whose "Attaching"
    /// line comes before it attaches.
    PerfFds(usize),
    /// It printed "Hit Ctrl-C" on stderr (tracer, after attaching; a uprobe_multi link is one
    /// fd for any number of probes, so fds cannot tell).
    Stderr,
}

/// Seconds from start until the tool is attached (see `Ready`), and from SIGINT to exit
/// (detach + unload).
fn attach_detach(cmd: &mut Command, ready: Ready) -> Result<(f64, f64)> {
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(match ready {
            Ready::Stderr => Stdio::piped(),
            Ready::PerfFds(_) => Stdio::null(),
        })
        .spawn()
        .context("cannot start tool")?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    if let Some(stderr) = child.stderr.take() {
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("Hit Ctrl-C") {
                    let _ = tx.send(());
                }
            }
        });
    }
    let deadline = start + Duration::from_secs(120);
    let attached = loop {
        let done = match ready {
            Ready::PerfFds(n) => perf_fds(pid) >= n,
            Ready::Stderr => rx.try_recv().is_ok(),
        };
        if done {
            break start.elapsed().as_secs_f64();
        }
        if let Some(status) = child.try_wait()? {
            bail!("tool exited ({status}) before attaching");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("tool did not attach within 120 s");
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
