//! Two network namespaces joined by a veth pair, for real network traffic (SYN floods, HTTP
//! load) that never leaves the machine: every address lives only inside the namespaces created
//! here. Dropping the pair deletes both namespaces (and with them the veth ends), also when a
//! test fails or panics. Pairs left behind by a killed run are removed by the next
//! [`NetnsPair::create`].
//!
//! ```ignore
//! let net = NetnsPair::create("sq")?;
//! let nginx = Nginx::start(Some(&net.server), &net.server_addr, 80)?;
//! let flood = net.syn_flood(80, 3)?;
//! ```

use std::{
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

const PREFIX: &str = "tracer-";

/// A server and a client namespace, joined by a veth pair with a /24 of their own.
pub struct NetnsPair {
    pub server: String,
    pub client: String,
    /// Interface names inside the namespaces.
    pub server_dev: String,
    pub client_dev: String,
    pub server_addr: String,
    pub client_addr: String,
}

/// What one SYN flood did.
#[derive(Clone, Copy, Debug)]
pub struct Flood {
    /// Packets hping3 says it sent.
    pub sent: u64,
    /// Packets the server's veth end received meanwhile.
    pub received: u64,
    /// How long the flood ran.
    pub elapsed: Duration,
}

impl Flood {
    /// Packets per second the server received.
    pub fn received_pps(&self) -> f64 {
        self.received as f64 / self.elapsed.as_secs_f64()
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Deletes namespaces of ours whose process is gone (a run killed before cleanup).
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        // tracer-<tag>-<pid>-<n>-{srv,cli}
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').nth(1).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

impl NetnsPair {
    /// Creates `tracer-<tag>-<pid>-<n>-srv` and `...-cli`; `tag` is a few letters naming the
    /// user (test module or benchmark).
    pub fn create(tag: &str) -> Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        remove_stale();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let base = format!("{PREFIX}{tag}-{pid}-{n}");
        // Interface names are at most 15 bytes.
        let dev = format!("t{}{}", pid % 100_000, n % 100);
        let subnet = format!("10.{}.{}", 200 + (n / 250) % 50, n % 250 + 1);
        let pair = Self {
            server: format!("{base}-srv"),
            client: format!("{base}-cli"),
            server_dev: format!("{dev}s"),
            client_dev: format!("{dev}c"),
            server_addr: format!("{subnet}.1"),
            client_addr: format!("{subnet}.2"),
        };
        // From here on, Drop cleans up whatever part was made.
        ip(&["netns", "add", &pair.server])?;
        ip(&["netns", "add", &pair.client])?;
        ip(&[
            "link",
            "add",
            &pair.server_dev,
            "netns",
            &pair.server,
            "type",
            "veth",
            "peer",
            "name",
            &pair.client_dev,
            "netns",
            &pair.client,
        ])?;
        for (ns, dev, addr) in [
            (&pair.server, &pair.server_dev, &pair.server_addr),
            (&pair.client, &pair.client_dev, &pair.client_addr),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }

    /// A command that runs `program` inside namespace `ns`.
    pub fn cmd_in(ns: &str, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, program]);
        cmd
    }

    pub fn server_cmd(&self, program: &str) -> Command {
        Self::cmd_in(&self.server, program)
    }

    pub fn client_cmd(&self, program: &str) -> Command {
        Self::cmd_in(&self.client, program)
    }

    /// Packets the server's veth end has received so far.
    pub fn server_rx_packets(&self) -> Result<u64> {
        let path = format!("/sys/class/net/{}/statistics/rx_packets", self.server_dev);
        let out = self
            .server_cmd("cat")
            .arg(&path)
            .output()
            .context("cannot read the server's rx_packets")?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .with_context(|| format!("cannot parse {path} in {}", self.server))
    }

    /// A SYN flood from the client to `port` on the server at the fastest rate, stopped after
    /// `seconds` by `timeout` (hping3 --flood has no count), so it ends by itself.
    pub fn syn_flood(&self, port: u16, seconds: u32) -> Result<Flood> {
        self.syn_flood_on(port, seconds, None)
    }

    /// `syn_flood` with hping3 pinned to `cpu`: with veth, the receive side's softirqs run on
    /// the sender's CPU, so pinning keeps the whole flood on one CPU and its rate steadier
    /// (benchmarks compare rates).
    pub fn syn_flood_on(&self, port: u16, seconds: u32, cpu: Option<u32>) -> Result<Flood> {
        let before = self.server_rx_packets()?;
        let started = Instant::now();
        let mut cmd = match cpu {
            Some(cpu) => {
                let mut cmd = self.client_cmd("taskset");
                cmd.args(["-c", &cpu.to_string(), "timeout"]);
                cmd
            }
            None => self.client_cmd("timeout"),
        };
        let out = cmd
            .args(["-s", "INT", &seconds.to_string(), "hping3", "-S", "-p"])
            .arg(port.to_string())
            .args(["--flood", "-q", &self.server_addr])
            .stdin(Stdio::null())
            .output()
            .context("cannot run hping3 (cargo xtask setup installs it)")?;
        let elapsed = started.elapsed();
        if elapsed > Duration::from_secs(seconds as u64 + 5) {
            bail!("the flood did not stop after {seconds} s");
        }
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let sent = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("hping3 said: {}", text.trim()))?;
        Ok(Flood {
            sent,
            received: self.server_rx_packets()?.saturating_sub(before),
            elapsed,
        })
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        // Deleting a namespace destroys its veth end, and a veth pair dies with either end.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.client])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.server])
            .status();
    }
}
