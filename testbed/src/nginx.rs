//! Debian's nginx (/usr/sbin/nginx) as a test server, on 127.0.0.1 or inside a network namespace
//! (see [`crate::netns`]), with a throw-away configuration: pid file, logs and temp paths live in
//! a temporary directory, so nothing of the system's nginx setup is read or written. One worker;
//! it answers every request with "ok". Dropping it stops nginx and removes the directory.
//!
//! ```ignore
//! let nginx = Nginx::start_local()?;                 // 127.0.0.1, a free port
//! let url = nginx.url();
//! let nginx = Nginx::start(Some(&net.server), &net.server_addr, 80)?;  // in a namespace
//! ```

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::netns::NetnsPair;

pub const NGINX: &str = "/usr/sbin/nginx";

pub struct Nginx {
    child: Child,
    pub dir: PathBuf,
    pub addr: String,
    pub port: u16,
}

/// A TCP port that was free on 127.0.0.1 a moment ago.
pub fn free_local_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("no free local port")?;
    Ok(listener.local_addr()?.port())
}

impl Nginx {
    /// nginx on 127.0.0.1 at a free port.
    pub fn start_local() -> Result<Self> {
        Self::start(None, "127.0.0.1", free_local_port()?)
    }

    /// nginx listening on `addr:port`, inside namespace `netns` when given. Returns once it
    /// listens (nginx writes its pid file after binding).
    pub fn start(netns: Option<&str>, addr: &str, port: u16) -> Result<Self> {
        Self::start_with(netns, addr, port, false)
    }

    /// nginx on 127.0.0.1 at a free port, logging every request to `access.log` in its
    /// directory (ground truth for request counts; see `access_log_lines`).
    pub fn start_local_logged() -> Result<Self> {
        Self::start_with(None, "127.0.0.1", free_local_port()?, true)
    }

    /// `http://ADDR:PORT/`
    pub fn url(&self) -> String {
        format!("http://{}:{}/", self.addr, self.port)
    }

    /// Lines in the access log (written when each request completes).
    pub fn access_log_lines(&self) -> usize {
        std::fs::read_to_string(self.dir.join("access.log"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    fn start_with(netns: Option<&str>, addr: &str, port: u16, access_log: bool) -> Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tracer-nginx-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let d = dir.display();
        let access_log = if access_log {
            format!("{d}/access.log")
        } else {
            "off".to_string()
        };
        let config = format!(
            "worker_processes 1;\n\
             daemon off;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n\
               access_log {access_log};\n\
               default_type text/plain;\n\
               client_body_temp_path {d}/body;\n\
               proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n\
               uwsgi_temp_path {d}/uwsgi;\n\
               scgi_temp_path {d}/scgi;\n\
               server {{\n\
                 listen {addr}:{port} backlog=4096;\n\
                 location / {{ return 200 \"ok\\n\"; }}\n\
               }}\n\
             }}\n"
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config)
            .with_context(|| format!("cannot write {}", conf.display()))?;
        let conf = conf.display().to_string();
        let log = format!("{d}/error.log");
        let prefix = format!("{d}/");
        let mut cmd = match netns {
            Some(ns) => NetnsPair::cmd_in(ns, NGINX),
            None => Command::new(NGINX),
        };
        let child = cmd
            .args(["-p", &prefix, "-c", &conf, "-e", &log])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start nginx (cargo xtask setup installs it)")?;
        let mut nginx = Self {
            child,
            dir,
            addr: addr.to_string(),
            port,
        };
        let pid_file = nginx.dir.join("nginx.pid");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if pid_file.exists() {
                return Ok(nginx);
            }
            if let Ok(Some(status)) = nginx.child.try_wait() {
                let log = std::fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default();
                bail!("nginx exited ({status}): {}", log.trim());
            }
            if Instant::now() >= deadline {
                bail!("nginx did not start listening within 10 s");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The master process (or `ip netns exec`, which execs into it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The (single) worker process: the one that serves requests and runs probed functions.
    /// The master listens before it forks the worker, so a started nginx may not have one yet
    /// (seen under qemu's TCG): wait a few seconds for it.
    pub fn worker(&self) -> Result<u32> {
        let pid = self.pid();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))?;
            if let Some(worker) = children
                .split_whitespace()
                .next()
                .and_then(|p| p.parse().ok())
            {
                return Ok(worker);
            }
            if Instant::now() > deadline {
                bail!("nginx (pid {pid}) has no worker after 10 s");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: fast shutdown of master and workers.
        crate::terminate(&mut self.child, Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `curl` N times; fails unless every request got `expected` status.
pub fn curl(url: &str, n: usize, extra: &[&str], expected: &str) -> Result<()> {
    for _ in 0..n {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
            ])
            .args(extra)
            .arg(url)
            .output()
            .context("cannot run curl (cargo xtask setup installs it)")?;
        let code = String::from_utf8_lossy(&out.stdout).to_string();
        if code != expected {
            bail!("curl got HTTP {code}, expected {expected}");
        }
    }
    Ok(())
}

/// nginx logs a request when it finishes it, just after the response: wait for the lines.
pub fn wait_access_log(nginx: &Nginx, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while nginx.access_log_lines() < n && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let lines = nginx.access_log_lines();
    if lines != n {
        bail!("nginx access log has {lines} lines, expected {n}");
    }
    Ok(())
}
