//! Probes on demand: nginx throughput on loopback under wrk with no probe, with tracer's
//! funccount uprobe on ngx_http_process_request, and with the bpftrace equivalent (same probe),
//! one run each; the per-hit cost derived from the throughput drop. Then attach and detach time
//! of funccount (and bpftrace) for 1, 10 and 50 nginx uprobes.
//! Targets: per-hit overhead <= bpftrace's; detaching 50 probes < 1 s.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::common::{Attached, release_bin};

const NGINX: &str = "/usr/sbin/nginx";
const PROBE_FN: &str = "ngx_http_process_request";
const WRK_SECS: u32 = 5;

struct Nginx {
    child: std::process::Child,
    dir: std::path::PathBuf,
    port: u16,
}

impl Nginx {
    fn start() -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = std::env::temp_dir().join(format!("tracer-bench-nginx-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; client_body_temp_path {d}/b; proxy_temp_path {d}/p; \
             fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n\
             server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"ok\\n\"; }} }} }}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf)?;
        let child = Command::new(NGINX)
            .args([
                "-p",
                &format!("{d}/"),
                "-c",
                &format!("{d}/nginx.conf"),
                "-e",
                &format!("{d}/error.log"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start nginx")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !dir.join("nginx.pid").exists() {
            if Instant::now() > deadline {
                bail!("nginx did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { child, dir, port })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Requests per second from one wrk run (1 thread, 8 connections).
fn wrk(port: u16) -> Result<f64> {
    let out = Command::new("wrk")
        .args([
            "-t1",
            "-c8",
            &format!("-d{WRK_SECS}s"),
            &format!("http://127.0.0.1:{port}/"),
        ])
        .output()
        .context("cannot run wrk (cargo xtask setup installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            l.strip_prefix("Requests/sec:")
                .and_then(|v| v.trim().parse().ok())
        })
        .with_context(|| format!("no Requests/sec in wrk output: {text}"))
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
    let nginx = Nginx::start()?;
    let target = format!("u:{NGINX}:{PROBE_FN}");
    println!(
        "nginx 1 worker on 127.0.0.1:{}, wrk -t1 -c8 -d{WRK_SECS}s, one run each; probe {PROBE_FN} (1 hit per request)",
        nginx.port
    );
    println!(
        "{:<36} {:>10} {:>10} {:>14}",
        "probe", "req/s", "change", "per-hit cost"
    );
    let base = wrk(nginx.port)?;
    println!("{:<36} {base:>10.0} {:>10} {:>14}", "none", "-", "-");
    let bt_program = format!("uprobe:{NGINX}:{PROBE_FN} {{ @ = count(); }}");
    for (name, mut cmd) in [
        ("tracer funccount (uprobe)", tracer(&["funccount", &target])),
        ("bpftrace @ = count()", bpftrace(&bt_program)),
    ] {
        let attached = match Attached::spawn_to(&mut cmd, None, ready) {
            Ok(a) => a,
            Err(e) => {
                println!("{name:<36} skipped: {e:#}");
                continue;
            }
        };
        let rps = wrk(nginx.port)?;
        attached.stop()?;
        // One hit per request and a CPU-bound single worker: the extra time per request is
        // the cost of one uprobe hit (trap, BPF program, return).
        let per_hit_us = (1.0 / rps - 1.0 / base) * 1e6;
        println!(
            "{name:<36} {rps:>10.0} {:>+9.1}% {per_hit_us:>11.2} us",
            (rps - base) / base * 100.0
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
        let (attach, detach) = attach_detach(Command::new(release_bin("tracer")).args(&args))?;
        println!("{n:<10} {:<12} {attach:>12.3} {detach:>12.3}", "tracer");
        let probes: Vec<String> = names[..n]
            .iter()
            .map(|f| format!("uprobe:{NGINX}:{f}"))
            .collect();
        let program = format!("{} {{ @[probe] = count(); }}", probes.join(","));
        match attach_detach(Command::new("bpftrace").args(["-e", &program])) {
            Ok((attach, detach)) => {
                println!("{n:<10} {:<12} {attach:>12.3} {detach:>12.3}", "bpftrace")
            }
            Err(e) => println!("{n:<10} {:<12} failed: {e:#}", "bpftrace"),
        }
    }
    drop(nginx);
    Ok(())
}

/// Seconds from start to attached (the tool's ready line: load + resolve + attach), and from
/// SIGINT to exit (detach + unload).
fn attach_detach(cmd: &mut Command) -> Result<(f64, f64)> {
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start tool")?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let attached = loop {
        match lines.next() {
            Some(Ok(line)) if ready(&line) => break start.elapsed().as_secs_f64(),
            Some(_) => continue,
            None => bail!("tool exited before attaching"),
        }
    };
    // bpftrace prints "Attaching N probes..." before attaching them: wait until its probes
    // show up as links would need bpftool; give both tools the same short grace instead.
    std::thread::sleep(Duration::from_millis(200));
    let stop = Instant::now();
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    std::thread::spawn(move || for _ in lines.by_ref() {});
    child.wait()?;
    Ok((attached, stop.elapsed().as_secs_f64()))
}
